//! How many background bytes may be on the wire. A fault's GET waits behind
//! all of them: on one connection the server answers in order, and with an
//! urgent connection they still sit ahead of its reply in the bottleneck's
//! queue. So this window is what a fault pays on top of the round trip, while
//! too small a window lets the link idle between replies.
//!
//! Fixed: a configured byte count. Adaptive (the default): a delay-based
//! controller in the spirit of TCP Vegas / LEDBAT, one level up. Each GET's
//! time to its reply header is the round trip plus the time everything asked
//! before it takes to arrive: exactly what a fault sent at that moment would
//! wait. Its minimum is the bare round trip (`base`); the excess is queue. The
//! window grows while the queue is under `target` and the window is what holds
//! background back, and shrinks above it. At equilibrium the link stays busy
//! (there is always some queue) with about `target` of data in front of a
//! fault, whatever the link's speed or round trip (the tests below simulate
//! 0.1-10 Gbit/s with 50 us-10 ms round trips).
//!
//! Like TCP, it starts by doubling per round trip until the queue reaches the
//! target: a low delay says only "more", not how much more, and on a long path
//! the gentle steps below would take seconds to get there.

use std::time::{Duration, Instant};

use crate::images::PAGE_SIZE;

/// Bounds of the adaptive window. The floor still moves a few pages per round
/// trip on a slow link; the ceiling covers ~10 Gbit/s with a few ms of round trip.
const MIN_BYTES: u64 = 4 * PAGE_SIZE;
const MAX_BYTES: u64 = 8 << 20;
/// Where the adaptive window starts: half a millisecond at 1 Gbit/s.
const START_BYTES: u64 = 64 << 10;
/// Segments per window: with several on the wire, the next GET goes out when one
/// lands while the rest keep the link busy for the round trip. As few as do that
/// (`Adaptive::segments`): a server may pay for every GET whatever its size, and
/// CRIU's dump-side page server pays a lot (it tees the pipe holding the pages up to
/// the first one asked for and throws that part away; pipes there are up to 8 MiB).
/// With four segments per window it spent most of its time on that: 1 GiB from
/// `criu dump --lazy-pages` over a veth took 1.7-3.0 s against 1.0-1.1 s with the
/// count below (`npm run bench -- --only remote-fast`).
const MAX_SEGMENTS: u64 = 8;
/// Past the start, a round trip's samples move the window by at most this
/// fraction of `target`'s worth of bytes. A change shows in the delays only a
/// round trip later; scaling the step by target / (base + target) keeps the loop
/// equally damped on short and long paths (an undamped one oscillates once the
/// round trip is a few times the target, and the link idles at each low).
const GAIN: f64 = 0.5;
/// The base delay is the minimum over the current and the previous epoch, so a
/// path that became slower for good is learnt within two epochs.
const BASE_EPOCH: Duration = Duration::from_secs(10);

pub(crate) struct Window {
    bytes: u64,
    adaptive: Option<Adaptive>,
}

struct Adaptive {
    target: Duration,
    base: BaseDelay,
    /// Background waits for room right now: the window is the limit, so growing it
    /// would be used (otherwise a low delay says nothing about a larger window).
    limited: bool,
    /// The queue has not reached the target yet: doubling.
    starting: bool,
}

impl Window {
    pub fn fixed(bytes: u64) -> Window {
        Window { bytes: bytes.max(PAGE_SIZE), adaptive: None }
    }

    pub fn adaptive(target: Duration) -> Window {
        let target = target.max(Duration::from_micros(10));
        Window { bytes: START_BYTES, adaptive: Some(Adaptive { target, base: BaseDelay::default(), limited: false, starting: true }) }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pages the next background GET may carry with `used` pages in `gets` GETs
    /// already on the wire, or None to wait. An empty wire always takes one, so a
    /// window below a segment still moves.
    pub fn room(&self, used: u64, gets: u64, max_request_pages: u64) -> Option<u64> {
        let cap = (self.bytes / PAGE_SIZE).max(1);
        match self.adaptive {
            // Whatever is left, in one GET: the budget is a plain byte count.
            None => (used == 0 || used < cap).then(|| max_request_pages.min(cap.saturating_sub(used)).max(1)),
            // Whole segments only: slivers would cost a request each for no gain.
            // Counted in GETs, not bytes: segments cut from a larger window a moment
            // ago must not block the next one, or the wire runs dry and the link
            // idles for a round trip (with two segments a window, a byte test did
            // that once every few GETs).
            Some(ref a) => {
                let segments = a.segments();
                let seg = (cap / segments).clamp(1, max_request_pages.max(1));
                (gets == 0 || (gets < segments && used < cap)).then_some(seg)
            }
        }
    }

    /// Whether background is held back for room (after each send plan).
    pub fn set_limited(&mut self, limited: bool) {
        if let Some(a) = &mut self.adaptive {
            a.limited = limited;
        }
    }

    /// A reply header arrived `delay` after its GET went out. Every GET tells the
    /// round trip; background ones steer the window (`bytes` = what it asked).
    pub fn sample(&mut self, now: Instant, delay: Duration, bytes: u64, background: bool) {
        let Some(a) = &mut self.adaptive else { return };
        let base = a.base.update(now, delay);
        if !background {
            return;
        }
        let queue = delay.saturating_sub(base).as_secs_f64();
        let target = a.target.as_secs_f64();
        if a.starting {
            if queue < target {
                if a.limited {
                    self.bytes = (self.bytes + bytes).min(MAX_BYTES);
                }
                return;
            }
            // Doubling overshoots by up to a round's growth; the window that gives
            // `queue` is about rate * (base + queue), so scale it to the target.
            a.starting = false;
            let base_s = base.as_secs_f64();
            let scaled = self.bytes as f64 * (base_s + target) / (base_s + queue);
            self.bytes = scaled.clamp(MIN_BYTES as f64, MAX_BYTES as f64) as u64;
            return;
        }
        // Queue beyond the target shrinks the window, less grows it; a sample
        // counts in proportion to its bytes, so a window's worth is one round.
        let error = ((target - queue) / target).clamp(-1.0, 1.0);
        if error > 0.0 && !a.limited {
            return;
        }
        let damping = target / (base.as_secs_f64() + target);
        let step = GAIN * damping * error * bytes as f64;
        self.bytes = (self.bytes as f64 + step).clamp(MIN_BYTES as f64, MAX_BYTES as f64) as u64;
    }
}

impl Adaptive {
    /// Segments that keep the link busy: while one lands, the others must cover the
    /// round trip. The window holds about rate * (base + target), so the rest of it
    /// covers the base delay with 1 + base / target segments; at least two, so one
    /// is always on the wire.
    fn segments(&self) -> u64 {
        let base = self.base.get().unwrap_or_default().as_secs_f64();
        let n = 1.0 + (base / self.target.as_secs_f64()).ceil();
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
    fn update(&mut self, now: Instant, delay: Duration) -> Duration {
        let start = *self.epoch_start.get_or_insert(now);
        if now.duration_since(start) >= BASE_EPOCH {
            self.previous = self.current.take();
            self.epoch_start = Some(now);
        }
        self.current = Some(self.current.map_or(delay, |c| c.min(delay)));
        self.get().unwrap_or(delay)
    }

    /// The base delay now: the lower of this epoch's and the previous one's minimum.
    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// One connection over a link of `rate` bytes/s and round trip `rtt`, with
    /// background always waiting: (link busy fraction, mean queueing delay a GET
    /// met, final window) over the second half of `secs`.
    fn simulate(rate: f64, rtt: Duration, secs: f64) -> (f64, Duration, u64) {
        simulate_server(rate, rtt, Duration::ZERO, secs)
    }

    /// As `simulate`, with a server that spends `per_request` on each GET before its
    /// reply goes out, one GET at a time; "busy" is then the share of the time the
    /// link carries page data.
    fn simulate_server(rate: f64, rtt: Duration, per_request: Duration, secs: f64) -> (f64, Duration, u64) {
        let t0 = Instant::now();
        let mut w = Window::adaptive(Duration::from_micros(500));
        let (mut now, mut link_free, mut used) = (t0, t0, 0u64);
        // (sent, header arrives, data landed, pages)
        let mut wire: VecDeque<(Instant, Instant, Instant, u64)> = VecDeque::new();
        let (mut busy, mut queued, mut samples) = (0.0, Duration::ZERO, 0u32);
        let half = t0 + Duration::from_secs_f64(secs / 2.0);
        while now < t0 + Duration::from_secs_f64(secs) {
            while let Some(pages) = w.room(used, wire.len() as u64, 1024) {
                let start = (now + rtt / 2).max(link_free) + per_request;
                link_free = start + Duration::from_secs_f64((pages * PAGE_SIZE) as f64 / rate);
                wire.push_back((now, start + rtt / 2, link_free + rtt / 2, pages));
                used += pages;
                w.set_limited(true);
            }
            let (sent, header, landed, pages) = wire.pop_front().unwrap();
            w.sample(header, header - sent, pages * PAGE_SIZE, true);
            if sent >= half {
                busy += (pages * PAGE_SIZE) as f64 / rate;
                queued += (header - sent).saturating_sub(rtt + per_request);
                samples += 1;
            }
            used -= pages;
            now = landed;
        }
        (busy / (secs / 2.0), queued / samples, w.bytes())
    }

    #[test]
    fn adaptive_window_fills_links_of_any_speed_with_about_the_target_queued() {
        for (rate, rtt_us) in [(12.5e6, 1000), (125e6, 50), (125e6, 2000), (125e6, 10000), (1.25e9, 100), (1.25e9, 1000)] {
            let (busy, queue, bytes) = simulate(rate, Duration::from_micros(rtt_us), 2.0);
            let what = format!("{} Mbit/s, rtt {rtt_us} us: busy {busy:.3}, queue {queue:?}, window {bytes}", rate * 8e-6);
            assert!(busy > 0.97, "{what}");
            assert!(queue < Duration::from_micros(1000), "{what}");
        }
    }

    #[test]
    fn a_server_that_pays_per_request_gets_few_large_gets() {
        // CRIU's dump-side page server pays per GET for the position of its first page
        // in the pipe that holds it (it tees the pipe up to there and throws that
        // away): tens of microseconds on this VM, whatever the GET's size.
        for (rate, rtt_us, cost_us) in [(1.25e9, 100, 50), (1.25e9, 100, 100), (125e6, 100, 100)] {
            let (busy, queue, bytes) = simulate_server(rate, Duration::from_micros(rtt_us), Duration::from_micros(cost_us), 2.0);
            let what = format!("{} Mbit/s, rtt {rtt_us} us, {cost_us} us a GET: busy {busy:.3}, queue {queue:?}, window {bytes}", rate * 8e-6);
            eprintln!("{what}");
            assert!(busy > 0.75, "{what}");
            assert!(queue < Duration::from_micros(1000), "{what}");
        }
    }

    #[test]
    fn fixed_window_sends_what_is_left_of_it_in_one_get() {
        let w = Window::fixed(64 * PAGE_SIZE);
        assert_eq!((w.room(0, 0, 1024), w.room(60, 1, 1024), w.room(64, 1, 1024)), (Some(64), Some(4), None));
        assert_eq!(Window::fixed(0).room(0, 0, 1024), Some(1), "an empty wire always takes a page");
    }
}
