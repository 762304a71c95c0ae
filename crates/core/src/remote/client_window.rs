//! How many background bytes may be on the wire. A fault's GET waits behind
//! whatever of them has not yet left the bottleneck: on one connection the server
//! answers in order, and with an urgent connection they still sit ahead of its
//! reply in the bottleneck's queue. Too few and the link idles between replies;
//! each byte beyond what the path holds is a byte a fault queues behind.
//!
//! Fixed: a configured byte count. Adaptive (the default): a model of the path in
//! the spirit of BBR. Two numbers, each measured, not guessed:
//! * the round trip (`min_rtt`): the lowest delay from a GET to its reply header
//!   over the last one or two 10 s epochs (queueing only ever adds to it);
//! * the delivery rate (`max_rate`): for every reply, the bytes that landed between
//!   its GET going out and its data landing, over that time; the highest of the last
//!   ten or so round trips (a reply held back by jitter gives a low sample, the one
//!   bunched behind it a high one: the maximum is what the path can do).
//!
//! The window is `gain * rate * min_rtt` (the bandwidth-delay product: exactly what
//! keeps the link busy) plus `rate * (queue + jitter)`: a small queue so the link
//! never waits for a GET, and the path's measured delay variation, so a path whose
//! delay jitters by a millisecond does not idle at every late reply. A fault then
//! waits about one round trip plus that queue.
//! * Start-up: gain 2.89 (BBR's 2/ln 2), so the window grows about that much every
//!   round trip until the rate stops growing (by 25 % over three rounds), as TCP's
//!   slow start would; a long path reaches a window of megabytes in a few rounds.
//! * Then gain 1, except one round in eight at 1.25: that round probes for more
//!   rate (a link that got faster shows a higher sample); the queue it builds
//!   drains in the next.
//! Samples from GETs sent while background did not fill the window (read-ahead had
//! nothing more to ask) only ever raise the rate: a low one says nothing of the path.
//!
//! A delay-only controller (the previous one: grow while the delay is under a
//! 0.5 ms target) read a millisecond of jitter as queue and sat at its floor:
//! four pages per round trip, 1.3 MB/s at a 10 ms round trip.

use std::time::{Duration, Instant};

use crate::images::PAGE_SIZE;

/// Bounds of the adaptive window. The floor still moves a few pages per round
/// trip; the ceiling covers 1.25 GB/s at a 50 ms round trip, and bounds the
/// client's buffers (the book keeps up to twice the window).
const MIN_BYTES: u64 = 4 * PAGE_SIZE;
const MAX_BYTES: u64 = 64 << 20;
/// Where the adaptive window starts: two milliseconds at 1 Gbit/s (a fault meets at
/// most that before the first round trip has measured the path).
const START_BYTES: u64 = 256 << 10;
/// Segments per window: with several on the wire, the next GET goes out when one
/// lands while the rest keep the link busy for the round trip. As few as do that
/// (`Model::segments`): a server may pay for every GET whatever its size, and
/// CRIU's dump-side page server pays a lot (it tees the pipe holding the pages up to
/// the first one asked for and throws that part away; pipes there are up to 8 MiB):
/// with four segments per window at a sub-millisecond round trip it spent most of
/// its time on that.
const MAX_SEGMENTS: u64 = 64;
/// The round trip is the minimum over the current and the previous epoch, so a
/// path that became slower for good is learnt within two epochs.
const RTT_EPOCH: Duration = Duration::from_secs(10);
/// Rate samples are kept for this many round trips (at least `MIN_RATE_SPAN`).
const RATE_ROUNDS: u32 = 10;
const MIN_RATE_SPAN: Duration = Duration::from_millis(50);
const STARTUP_GAIN: f64 = 2.89;
const PROBE_GAIN: f64 = 1.25;
const CYCLE_ROUNDS: u64 = 8;
/// Start-up ends after this many rounds in which the rate grew by less than 25 %.
const FULL_ROUNDS: u32 = 3;

pub(crate) struct Window {
    bytes: u64,
    adaptive: Option<Model>,
}

struct Model {
    /// Queue allowed ahead of a fault beyond the path's jitter.
    queue: Duration,
    min_rtt: BaseDelay,
    /// Mean deviation of the round trip samples from their smoothed mean (as TCP's
    /// rttvar), seconds.
    rtt_mean: f64,
    rtt_dev: f64,
    rate: MaxRate,
    /// Bytes landed so far, background and faults (every byte shows the path's rate).
    delivered: u64,
    /// Background waits for room right now: the window is the limit.
    limited: bool,
    startup: bool,
    full_rate: f64,
    full_rounds: u32,
    /// A round ends when a GET sent after it began lands: at `round_end` delivered.
    round_end: u64,
    rounds: u64,
}

impl Window {
    pub fn fixed(bytes: u64) -> Window {
        Window {
            bytes: bytes.max(PAGE_SIZE),
            adaptive: None,
        }
    }

    pub fn adaptive(queue: Duration) -> Window {
        let model = Model {
            queue: queue.max(Duration::from_micros(10)),
            min_rtt: BaseDelay::default(),
            rtt_mean: 0.0,
            rtt_dev: 0.0,
            rate: MaxRate::default(),
            delivered: 0,
            limited: false,
            startup: true,
            full_rate: 0.0,
            full_rounds: 0,
            round_end: 0,
            rounds: 0,
        };
        Window {
            bytes: START_BYTES,
            adaptive: Some(model),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes landed so far: a GET records it when it goes out (`Mark`).
    pub fn mark(&self) -> Mark {
        match &self.adaptive {
            Some(m) => Mark {
                delivered: m.delivered,
                app_limited: !m.limited,
            },
            None => Mark::default(),
        }
    }

    /// Pages the next background GET may carry with `used` pages in `gets` GETs
    /// already on the wire, or None to wait. An empty wire always takes one, so a
    /// window below a segment still moves.
    pub fn room(&self, used: u64, gets: u64, max_request_pages: u64) -> Option<u64> {
        let cap = (self.bytes / PAGE_SIZE).max(1);
        match self.adaptive {
            // Whatever is left, in one GET: the budget is a plain byte count.
            None => (used == 0 || used < cap)
                .then(|| max_request_pages.min(cap.saturating_sub(used)).max(1)),
            // Whole segments only: slivers would cost a request each for no gain.
            // Counted in GETs, not bytes: segments cut from a larger window a moment
            // ago must not block the next one, or the wire runs dry and the link
            // idles for a round trip.
            Some(ref m) => {
                let cap = self.bytes.div_ceil(PAGE_SIZE).max(1);
                let segments = m.segments();
                // Rounded up: on a short path a window is a few pages, and segments
                // rounded down would leave it short of the bandwidth-delay product.
                let seg = cap.div_ceil(segments).clamp(1, max_request_pages.max(1));
                (gets == 0 || (gets < segments && used < cap)).then_some(seg)
            }
        }
    }

    /// Whether background is held back for room (after each send plan).
    pub fn set_limited(&mut self, limited: bool) {
        if let Some(m) = &mut self.adaptive {
            m.limited = limited;
        }
    }

    /// A reply header arrived `delay` after its GET went out: a round trip sample.
    pub fn rtt_sample(&mut self, now: Instant, delay: Duration) {
        let Some(m) = &mut self.adaptive else { return };
        m.min_rtt.update(now, delay);
        let d = delay.as_secs_f64();
        if m.rtt_mean == 0.0 {
            m.rtt_mean = d;
        } else {
            m.rtt_dev += ((d - m.rtt_mean).abs() - m.rtt_dev) / 4.0;
            m.rtt_mean += (d - m.rtt_mean) / 8.0;
        }
    }

    /// The data of a GET (sent at `sent`, stamped `mark`) of `bytes` landed at `now`.
    pub fn landed(&mut self, now: Instant, sent: Instant, mark: Mark, bytes: u64) {
        let Some(m) = &mut self.adaptive else { return };
        m.delivered += bytes;
        let elapsed = now.saturating_duration_since(sent).as_secs_f64();
        let rtt = m.min_rtt.get().unwrap_or(Duration::from_millis(1));
        if elapsed > 0.0 {
            let rate = (m.delivered - mark.delivered) as f64 / elapsed;
            if !mark.app_limited || rate > m.rate.get() {
                let span = (rtt * RATE_ROUNDS).max(MIN_RATE_SPAN);
                m.rate.update(now, rate, span);
            }
        }
        if mark.delivered >= m.round_end {
            m.round_end = m.delivered;
            m.rounds += 1;
            m.round_ended();
        }
        self.bytes = m.window(rtt).unwrap_or(self.bytes);
    }
}

/// What a GET carries from the moment it went out to its reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    delivered: u64,
    /// Background did not fill the window then: its rate sample may be low for
    /// want of asking, not for want of path.
    app_limited: bool,
}

impl Model {
    fn round_ended(&mut self) {
        if !self.startup {
            return;
        }
        let rate = self.rate.get();
        if rate >= self.full_rate * 1.25 {
            self.full_rate = rate;
            self.full_rounds = 0;
        } else if self.limited {
            // Only a round that asked for all the window allowed says the rate stopped.
            self.full_rounds += 1;
            if self.full_rounds >= FULL_ROUNDS {
                self.startup = false;
            }
        }
    }

    fn window(&self, rtt: Duration) -> Option<u64> {
        let rate = self.rate.get();
        if rate <= 0.0 {
            return None;
        }
        let gain = match (self.startup, self.rounds % CYCLE_ROUNDS) {
            (true, _) => STARTUP_GAIN,
            (false, 0) => PROBE_GAIN,
            _ => 1.0,
        };
        let jitter = self.rtt_dev.min(rtt.as_secs_f64());
        let bytes = rate * (gain * rtt.as_secs_f64() + self.queue.as_secs_f64() + jitter);
        Some(bytes.clamp(MIN_BYTES as f64, MAX_BYTES as f64) as u64)
    }

    /// Segments that keep the link busy: while one lands, the others must cover the
    /// round trip, so about 1 + round trip / queue of them; at least two, so one is
    /// always on the wire.
    fn segments(&self) -> u64 {
        let base = self.min_rtt.get().unwrap_or_default().as_secs_f64();
        let n = 1.0 + (base / self.queue.as_secs_f64()).ceil();
        (n as u64).clamp(2, MAX_SEGMENTS)
    }
}

/// Lowest delay seen over roughly the last one to two epochs.
#[derive(Default)]
struct BaseDelay {
    current: Option<Duration>,
    previous: Option<Duration>,
    epoch_start: Option<Instant>,
}

impl BaseDelay {
    fn update(&mut self, now: Instant, delay: Duration) {
        let start = *self.epoch_start.get_or_insert(now);
        if now.duration_since(start) >= RTT_EPOCH {
            self.previous = self.current.take();
            self.epoch_start = Some(now);
        }
        self.current = Some(self.current.map_or(delay, |c| c.min(delay)));
    }

    /// The lower of this epoch's and the previous one's minimum.
    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }
}

/// Highest rate seen over roughly the last one to two spans (a span being ten round
/// trips): the same two-epoch scheme as `BaseDelay`, upside down.
#[derive(Default)]
struct MaxRate {
    current: f64,
    previous: f64,
    epoch_start: Option<Instant>,
}

impl MaxRate {
    fn update(&mut self, now: Instant, rate: f64, span: Duration) {
        let start = *self.epoch_start.get_or_insert(now);
        if now.duration_since(start) >= span {
            self.previous = self.current;
            self.current = 0.0;
            self.epoch_start = Some(now);
        }
        self.current = self.current.max(rate);
    }

    fn get(&self) -> f64 {
        self.current.max(self.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A path: a link of `rate` bytes/s (None: only the far end's pace limits), a
    /// round trip `rtt` whose one-way delays each jitter by up to `jitter` (order
    /// kept, as TCP delivers), and a server that spends `per_request` on each GET.
    struct Path {
        rate: f64,
        rtt: Duration,
        jitter: Duration,
        per_request: Duration,
    }

    struct Outcome {
        busy: f64,
        /// Median and worst time a fault GET sent as background goes out would wait
        /// beyond the round trip (the background bytes still ahead of it at the
        /// bottleneck).
        queue: Duration,
        worst: Duration,
        window: u64,
    }

    /// Background always waiting; measured over the second half of `secs`.
    fn simulate(path: &Path, secs: f64) -> Outcome {
        let t0 = Instant::now();
        let mut w = Window::adaptive(Duration::from_micros(500));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut jitter = |max: Duration| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            max.mul_f64((rng % 1000) as f64 / 1000.0)
        };
        let (mut now, mut link_free, mut up_last, mut down_last, mut used) = (t0, t0, t0, t0, 0u64);
        // (sent, mark, header arrives, data landed, pages)
        let mut wire: VecDeque<(Instant, Mark, Instant, Instant, u64)> = VecDeque::new();
        let (mut busy, mut waits) = (0.0, Vec::new());
        let half = t0 + Duration::from_secs_f64(secs / 2.0);
        while now < t0 + Duration::from_secs_f64(secs) {
            while let Some(pages) = w.room(used, wire.len() as u64, 1024) {
                let mark = w.mark();
                let at_server = (now + path.rtt / 2 + jitter(path.jitter)).max(up_last);
                up_last = at_server;
                let start = at_server.max(link_free) + path.per_request;
                link_free = start + Duration::from_secs_f64((pages * PAGE_SIZE) as f64 / path.rate);
                let header = (start + path.rtt / 2 + jitter(path.jitter)).max(down_last);
                let landed = (link_free + path.rtt / 2).max(header);
                down_last = landed;
                if now >= half {
                    // A fault sent now reaches the server at `at_server` and is
                    // answered once the link is free of what is ahead of it.
                    waits.push(link_free.saturating_duration_since(at_server));
                }
                wire.push_back((now, mark, header, landed, pages));
                used += pages;
                w.set_limited(true);
            }
            let (sent, mark, header, landed, pages) = wire.pop_front().unwrap();
            w.rtt_sample(header, header - sent);
            w.landed(landed, sent, mark, pages * PAGE_SIZE);
            if sent >= half {
                busy += (pages * PAGE_SIZE) as f64 / path.rate;
            }
            used -= pages;
            now = landed;
        }
        waits.sort();
        let queue = waits.get(waits.len() / 2).copied().unwrap_or_default();
        let worst = waits.last().copied().unwrap_or_default();
        Outcome {
            busy: busy / (secs / 2.0),
            queue,
            worst,
            window: w.bytes(),
        }
    }

    fn describe(p: &Path, o: &Outcome) -> String {
        format!(
            "{:.0} Mbit/s, rtt {:?} ± {:?}, {:?} a GET: busy {:.3}, fault queue median {:?} worst {:?}, window {}",
            p.rate * 8e-6,
            p.rtt,
            p.jitter,
            p.per_request,
            o.busy,
            o.queue,
            o.worst,
            o.window
        )
    }

    #[test]
    fn fills_links_of_any_speed_and_round_trip_with_a_small_queue() {
        let ms = Duration::from_millis;
        for (rate, rtt_us) in [
            (12.5e6, 1000),
            (125e6, 50),
            (125e6, 2000),
            (125e6, 10_000),
            (125e6, 50_000),
            (1.25e9, 100),
            (1.25e9, 1000),
            (1.25e9, 10_000),
        ] {
            let p = Path {
                rate,
                rtt: Duration::from_micros(rtt_us),
                jitter: Duration::ZERO,
                per_request: Duration::ZERO,
            };
            let o = simulate(&p, 4.0);
            let what = describe(&p, &o);
            eprintln!("{what}");
            assert!(o.busy > 0.9, "{what}");
            // About the queue target (0.5 ms) and the segment just sent (counted whole
            // here, as if the fault came right behind it), more in the one probing
            // round in eight: a fault waits about one round trip plus this.
            assert!(o.queue < ms(2), "{what}");
            assert!(o.worst < p.rtt / 2 + ms(2), "{what}");
        }
    }

    #[test]
    fn a_millisecond_of_jitter_does_not_collapse_the_window() {
        let ms = Duration::from_millis;
        for (rate, rtt) in [
            (125e6, ms(2)),
            (125e6, ms(10)),
            (125e6, ms(50)),
            (1.25e9, ms(10)),
        ] {
            let p = Path {
                rate,
                rtt,
                jitter: ms(1),
                per_request: Duration::ZERO,
            };
            let o = simulate(&p, 6.0);
            let what = describe(&p, &o);
            eprintln!("{what}");
            assert!(o.busy > 0.8, "{what}");
            assert!(o.queue < rtt / 2 + ms(1), "{what}");
        }
    }

    #[test]
    fn a_server_that_pays_per_request_gets_few_large_gets() {
        // CRIU's dump-side page server pays per GET for the position of its first page
        // in the pipe that holds it: tens of microseconds on this VM, whatever the size.
        for (rate, rtt_us, cost_us) in [
            (1.25e9, 100, 50),
            (1.25e9, 100, 100),
            (125e6, 100, 100),
            (125e6, 10_000, 100),
        ] {
            let p = Path {
                rate,
                rtt: Duration::from_micros(rtt_us),
                jitter: Duration::ZERO,
                per_request: Duration::from_micros(cost_us),
            };
            let o = simulate(&p, 3.0);
            let what = describe(&p, &o);
            eprintln!("{what}");
            // Two segments a window at these round trips: each GET's cost is paid
            // once per half window, so the link carries data 70-85 % of the time.
            assert!(o.busy > 0.7, "{what}");
            assert!(o.queue < Duration::from_millis(2), "{what}");
        }
    }

    #[test]
    fn fixed_window_sends_what_is_left_of_it_in_one_get() {
        let w = Window::fixed(64 * PAGE_SIZE);
        assert_eq!(
            (w.room(0, 0, 1024), w.room(60, 1, 1024), w.room(64, 1, 1024)),
            (Some(64), Some(4), None)
        );
        assert_eq!(
            Window::fixed(0).room(0, 0, 1024),
            Some(1),
            "an empty wire always takes a page"
        );
    }
}
