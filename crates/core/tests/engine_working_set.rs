//! Working sets on a real userfaultfd: recording faults in order, and prefetching a
//! working set from the moment a task arrives, before its region is even registered.

mod engine_support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::*;
use lazy_pages_core::engine::{Engine, EngineConfig, EngineEvent, PageRun, TaskWorkingSet};
use userfaultfd::{FeatureFlags, UffdBuilder};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn run(region: &Region, i: usize, pages: u64) -> PageRun {
    PageRun {
        addr: region.page_addr(i),
        pages,
    }
}

/// Whether page `i` of `region` is resident (without touching it).
fn resident(region: &Region, i: usize) -> bool {
    let mut vec = 0u8;
    // SAFETY: mincore on one page of our own live mapping into a one-byte vector.
    let rc = unsafe { libc::mincore(region.page_addr(i) as *mut libc::c_void, PS, &mut vec) };
    assert_eq!(rc, 0);
    vec & 1 == 1
}

/// A uffd with nothing registered yet, and a duplicate of it for the engine.
fn unregistered_uffd() -> (userfaultfd::Uffd, OwnedFd) {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(
            FeatureFlags::EVENT_FORK
                | FeatureFlags::EVENT_REMAP
                | FeatureFlags::EVENT_REMOVE
                | FeatureFlags::EVENT_UNMAP,
        )
        .create()
        .expect("userfaultfd");
    // SAFETY: dup returns a new descriptor that nothing else owns.
    let engine_fd = unsafe { OwnedFd::from_raw_fd(libc::dup(uffd.as_raw_fd())) };
    (uffd, engine_fd)
}

#[test]
fn records_lazy_faults_in_first_touch_order() {
    let pages = 256;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    let config = EngineConfig {
        record_working_set: true,
        ..EngineConfig::default()
    };
    let engine = Engine::start(source, config, Recorder::default().callback()).unwrap();
    engine
        .add_task(77, region.uffd(), layout.ranges(region.addr))
        .unwrap();

    // One thread, so the kernel reports faults in exactly this order; 3 twice faults once.
    let touched = touch_pages(region.addr, layout.clone(), vec![7, 3, 8, 9, 3, 200]);
    assert_eq!(touched.join().unwrap(), Vec::<String>::new());
    let recorded = engine.recorded_working_set();
    assert_eq!(
        recorded,
        vec![TaskWorkingSet {
            pid: 77,
            runs: vec![
                run(&region, 7, 1),
                run(&region, 3, 1),
                run(&region, 8, 2),
                run(&region, 200, 1)
            ]
        }]
    );

    engine.restore_finished();
    assert!(engine.wait(WAIT));
    let summary = engine.join().unwrap();
    assert_eq!(summary.tasks[0].faulted, 5);
    assert!(summary.tasks[0].reconciles());
}

/// One probe at a time even when a probe takes longer than the pause between probes:
/// with a page source that takes 3 ms a request, a second fill job used to probe the
/// working set's next page while the first probe was still out, and every such page was
/// fetched again once the VMA was registered.
#[test]
fn a_slow_probe_keeps_the_other_jobs_off_the_task_until_it_answers() {
    let pages = 64;
    let layout = Arc::new(Layout::all(pages));
    let mut source = PatternSource::new(&layout);
    source.delay = Some(Duration::from_millis(3));
    let source = Arc::new(source);
    let region = Region::new(pages);
    let (uffd, engine_fd) = unregistered_uffd();
    let engine = Engine::start(
        source.clone(),
        EngineConfig {
            jobs: 2,
            ..EngineConfig::default()
        },
        Recorder::default().callback(),
    )
    .unwrap();
    engine.prefetch(&[TaskWorkingSet {
        pid: 5,
        runs: vec![run(&region, 30, 8)],
    }]);
    engine
        .add_task(5, engine_fd, layout.ranges(region.addr))
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    uffd.register(region.addr as *mut libc::c_void, pages * PS)
        .expect("register");
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().tasks[0].prefetched < 8 {
        assert!(
            Instant::now() < deadline,
            "working set not fetched: {:?}",
            engine.stats().tasks[0]
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    engine.restore_finished();
    assert!(engine.wait(WAIT));
    let t = &engine.join().unwrap().tasks[0];
    assert_eq!(
        (t.background, t.prefetched, t.dropped),
        (pages as u64, 8, 0)
    );
    // Unregistered for 60 ms at 3 ms a probe: page 30 was asked for many times, and
    // nothing else more than once.
    assert!(
        source.served(30) > 3,
        "page 30 served {} times",
        source.served(30)
    );
    let again: Vec<(usize, u32)> = (0..pages)
        .filter(|&i| i != 30 && source.served(i) != 1)
        .map(|i| (i, source.served(i)))
        .collect();
    assert!(
        again.is_empty(),
        "pages fetched more than once (page, times): {again:?}"
    );
}

#[test]
fn prefetch_waits_for_registration_then_fills_the_working_set_before_restore_finished() {
    let pages = 512;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    // As CRIU sends it: the uffd arrives before the restorer registers the VMA.
    let (uffd, engine_fd) = unregistered_uffd();
    let rec = Recorder::default();
    let engine = Engine::start(
        source.clone(),
        EngineConfig {
            jobs: 2,
            ..EngineConfig::default()
        },
        rec.callback(),
    )
    .unwrap();
    let ws = [
        TaskWorkingSet {
            pid: 5,
            runs: vec![
                run(&region, 300, 4),
                run(&region, 10, 1),
                run(&region, 100, 20),
            ],
        },
        // Another dump task that never arrives: ignored.
        TaskWorkingSet {
            pid: 6,
            runs: vec![run(&region, 0, 1)],
        },
    ];
    engine.prefetch(&ws);
    engine
        .add_task(5, engine_fd, layout.ranges(region.addr))
        .unwrap();

    // Not registered yet: every COPY answers ENOENT, and no page may be given up.
    std::thread::sleep(Duration::from_millis(50));
    let t = &engine.stats().tasks[0];
    assert_eq!(
        (t.background, t.dropped, t.pending + t.in_flight),
        (0, 0, pages as u64),
        "{t:?}"
    );

    uffd.register(region.addr as *mut libc::c_void, pages * PS)
        .expect("register");
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().tasks[0].prefetched < 25 {
        assert!(
            Instant::now() < deadline,
            "working set not fetched: {:?}",
            engine.stats().tasks[0]
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = &engine.stats().tasks[0];
    assert_eq!(
        (t.prefetched, t.background, t.faulted, t.dropped),
        (25, 25, 0, 0),
        "only the working set before restore finished: {t:?}"
    );
    for i in 0..pages {
        let in_ws = (300..304).contains(&i) || i == 10 || (100..120).contains(&i);
        assert_eq!(resident(&region, i), in_ws, "page {i}");
    }
    engine.restore_finished();
    assert!(engine.wait(WAIT));
    let summary = engine.join().unwrap();
    // Pid 6 never arrived: the working set counts as fetched once the restore finished.
    assert!(
        rec.events()
            .iter()
            .any(|e| matches!(e, EngineEvent::WorkingSetFetched { pages: 25, .. })),
        "{:?}",
        rec.events()
    );
    let touched = touch_pages(region.addr, layout.clone(), (0..pages).collect());
    assert_eq!(touched.join().unwrap(), Vec::<String>::new());
    let t = &summary.tasks[0];
    assert_eq!(
        (t.background, t.prefetched, t.dropped),
        (pages as u64, 25, 0)
    );
    assert!(t.reconciles());
    // While the VMA was unregistered, only the working set's first page was asked for
    // again and again (one page per retry); everything else exactly once.
    assert!(source.served(300) >= 1);
    let again: Vec<usize> = (0..pages)
        .filter(|&i| i != 300 && source.served(i) != 1)
        .collect();
    assert!(again.is_empty(), "pages fetched more than once: {again:?}");
}

#[test]
fn early_fill_waits_for_registration_then_fills_everything_before_restore_finished() {
    let pages = 2048;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    // As CRIU sends it: the uffd arrives before the restorer registers the VMA.
    let (uffd, engine_fd) = unregistered_uffd();
    let config = EngineConfig {
        jobs: 2,
        chunk_pages: 32,
        early_fill: true,
        ..EngineConfig::default()
    };
    let engine = Engine::start(source.clone(), config, Recorder::default().callback()).unwrap();
    engine
        .add_task(5, engine_fd, layout.ranges(region.addr))
        .unwrap();

    // Not registered yet: every COPY answers ENOENT, and no page may be given up (a
    // one-page probe may be in flight when the stats are taken).
    std::thread::sleep(Duration::from_millis(50));
    let t = &engine.stats().tasks[0];
    assert_eq!(
        (t.background, t.dropped, t.pending + t.in_flight),
        (0, 0, pages as u64),
        "{t:?}"
    );

    // Registered in two steps, as the restorer registers VMA after VMA.
    uffd.register(region.page_addr(1024) as *mut libc::c_void, 1024 * PS)
        .expect("register upper half");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        engine.stats().tasks[0].dropped,
        0,
        "pages of a VMA not registered yet were given up"
    );
    uffd.register(region.addr as *mut libc::c_void, 1024 * PS)
        .expect("register lower half");
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().tasks[0].pending > 0 || engine.stats().tasks[0].in_flight > 0 {
        assert!(
            Instant::now() < deadline,
            "not filled before restore finished: {:?}",
            engine.stats().tasks[0]
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for i in 0..pages {
        assert!(
            resident(&region, i),
            "page {i} not in before restore finished"
        );
    }
    engine.restore_finished();
    assert!(engine.wait(WAIT));
    let summary = engine.join().unwrap();
    let touched = touch_pages(region.addr, layout.clone(), (0..pages).collect());
    assert_eq!(touched.join().unwrap(), Vec::<String>::new());
    let t = &summary.tasks[0];
    assert_eq!(
        (t.background, t.faulted, t.prefetched, t.dropped, t.exists),
        (pages as u64, 0, 0, 0, 0),
        "{t:?}"
    );
    assert!(t.reconciles());
}
