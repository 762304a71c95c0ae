//! A page source whose bytes take D ms to arrive, as a page server's do: the fault
//! thread must not wait on it. Faults of several tasks are with the source at the
//! same time, each served in about one D, not one after the other; background fill
//! waits for its claims' bytes without holding up a fault; every page is copied once.

mod engine_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use engine_support::*;
use lazy_pages_core::engine::{
    Engine, EngineConfig, PageData, PageSource, Priority, SourceError, Waker,
};

/// The pattern source behind a delay: the first ask for a span starts its "fetch" (a
/// timer thread) and answers Pending; once the timer fired, the next ask gets the bytes.
struct Delayed {
    inner: PatternSource,
    delay: Duration,
    waker: Mutex<Option<Waker>>,
    /// (img_addr, len) -> arrived?
    fetches: Arc<Mutex<HashMap<(u64, usize), bool>>>,
    /// Fetches started, and the most ever outstanding at once.
    started: AtomicUsize,
    outstanding: Arc<AtomicUsize>,
    most_outstanding: Arc<AtomicUsize>,
    /// Spans asked for twice (a second fetch of a span already fetched).
    refetched: AtomicUsize,
    done: Mutex<Vec<(u64, usize)>>,
}

impl Delayed {
    fn new(inner: PatternSource, delay: Duration) -> Self {
        Delayed {
            inner,
            delay,
            waker: Mutex::new(None),
            fetches: Arc::default(),
            started: AtomicUsize::new(0),
            outstanding: Arc::default(),
            most_outstanding: Arc::default(),
            refetched: AtomicUsize::new(0),
            done: Mutex::new(Vec::new()),
        }
    }
}

impl PageSource for Delayed {
    fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap() = Some(waker);
    }

    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        let key = (img_addr, len);
        let mut fetches = self.fetches.lock().unwrap();
        match fetches.get(&key) {
            Some(true) => {
                fetches.remove(&key);
                drop(fetches);
                self.done.lock().unwrap().push(key);
                return self.inner.pages(pid, img_addr, len, scratch, priority);
            }
            Some(false) => return Ok(PageData::Pending),
            None => {}
        }
        if self.done.lock().unwrap().contains(&key) {
            self.refetched.fetch_add(1, SeqCst);
        }
        fetches.insert(key, false);
        drop(fetches);
        self.started.fetch_add(1, SeqCst);
        let now = self.outstanding.fetch_add(1, SeqCst) + 1;
        self.most_outstanding.fetch_max(now, SeqCst);
        let (fetches, outstanding, delay) =
            (self.fetches.clone(), self.outstanding.clone(), self.delay);
        let waker = self
            .waker
            .lock()
            .unwrap()
            .clone()
            .expect("the engine gives its waker before asking");
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            fetches.lock().unwrap().insert(key, true);
            outstanding.fetch_sub(1, SeqCst);
            waker();
        });
        Ok(PageData::Pending)
    }
}

#[test]
fn faults_of_four_tasks_are_with_the_source_at_once() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 5;
    let delay = Duration::from_millis(100);
    let pages = 64;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(Delayed::new(PatternSource::new(&layout), delay));
    let regions: Vec<Region> = (0..TASKS).map(|_| Region::new(pages)).collect();
    let rec = Recorder::default();
    // Faults only: no RESTORE_FINISHED yet, so no background fill.
    let engine = Engine::start(source.clone(), EngineConfig::default(), rec.callback()).unwrap();
    for (t, r) in regions.iter().enumerate() {
        engine
            .add_task(100 + t as u32, r.uffd(), layout.ranges(r.addr))
            .unwrap();
    }
    // Each round, one thread per task touches a page of its own at the same moment.
    let barrier = Arc::new(Barrier::new(TASKS));
    let touchers: Vec<_> = regions
        .iter()
        .enumerate()
        .map(|(t, r)| {
            let (addr, layout, barrier) = (r.addr, layout.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut took = Vec::new();
                for round in 0..ROUNDS {
                    let i = round * 7 + t;
                    barrier.wait();
                    let started = Instant::now();
                    // SAFETY: page i of a live test region.
                    let checked =
                        unsafe { check_page(addr + (i * PS) as u64, |b| layout.expected(i, b)) };
                    took.push(started.elapsed());
                    assert_eq!(checked, Ok(()), "task {t} page {i}");
                }
                took
            })
        })
        .collect();
    let took: Vec<Vec<Duration>> = touchers.into_iter().map(|t| t.join().unwrap()).collect();
    // Structural, so it holds on a loaded machine: the four faults of a round were
    // with the source together (a fault thread that waited for each would never have
    // more than one outstanding).
    assert_eq!(
        source.most_outstanding.load(SeqCst),
        TASKS,
        "faults of {TASKS} tasks with the source at once"
    );
    assert_eq!(
        source.started.load(SeqCst),
        TASKS * ROUNDS,
        "one fetch per fault"
    );
    assert_eq!(source.refetched.load(SeqCst), 0);
    // And in time: each fault took about one delay. Served one after another, the
    // last of each round would take four; allow a loaded machine two.
    let worst = took.iter().flatten().max().copied().unwrap();
    let mut all: Vec<Duration> = took.iter().flatten().copied().collect();
    all.sort();
    let median = all[all.len() / 2];
    assert!(
        median < delay * 3 / 2,
        "median fault {median:?} with a {delay:?} source: {took:?}"
    );
    assert!(
        worst < delay * 3,
        "slowest fault {worst:?} with a {delay:?} source: {took:?}"
    );

    engine.restore_finished();
    assert!(
        engine.wait(Some(Duration::from_secs(60))),
        "engine did not finish: {:?}",
        engine.stats()
    );
    let summary = engine.join().expect("engine failed");
    for (t, task) in summary.tasks.iter().enumerate() {
        assert_eq!(task.faulted, ROUNDS as u64, "task {t}: {task:?}");
        assert_eq!(
            task.faulted + task.background,
            task.total,
            "every page once: {task:?}"
        );
        assert!(task.reconciles(), "{task:?}");
    }
    for (t, r) in regions.iter().enumerate() {
        for i in 0..pages {
            // SAFETY: page i of a live region, filled by now.
            let checked = unsafe { check_page(r.page_addr(i), |b| layout.expected(i, b)) };
            assert_eq!(checked, Ok(()), "task {t} page {i}");
        }
    }
}

#[test]
fn a_fault_during_a_slow_fill_is_not_held_up_by_it() {
    // Background claims wait for their bytes (200 ms each); a fault elsewhere in the
    // same task must still be served in about one delay: the fill thread holds no lock
    // the fault needs while it waits.
    let delay = Duration::from_millis(200);
    let pages = 512;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(Delayed::new(PatternSource::new(&layout), delay));
    let region = Region::new(pages);
    let rec = Recorder::default();
    let config = EngineConfig {
        jobs: 1,
        chunk_pages: 16,
        ..EngineConfig::default()
    };
    let engine = Engine::start(source.clone(), config, rec.callback()).unwrap();
    engine
        .add_task(7, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    engine.restore_finished();
    // The fill's first claim is with the source by now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.started.load(SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the fill never asked the source");
        std::thread::yield_now();
    }
    let i = pages - 3;
    let started = Instant::now();
    // SAFETY: page i of the live region.
    let checked = unsafe { check_page(region.page_addr(i), |b| layout.expected(i, b)) };
    let took = started.elapsed();
    assert_eq!(checked, Ok(()));
    assert!(
        took < delay * 2,
        "fault took {took:?} beside a fill waiting {delay:?} per claim"
    );
    assert!(
        engine.wait(Some(Duration::from_secs(60))),
        "engine did not finish: {:?}",
        engine.stats()
    );
    let summary = engine.join().expect("engine failed");
    let task = &summary.tasks[0];
    assert_eq!(
        task.faulted + task.background,
        task.total,
        "every page once: {task:?}"
    );
    assert!(task.faulted >= 1 && task.reconciles(), "{task:?}");
    assert_eq!(source.refetched.load(SeqCst), 0);
}
