//! Faults plus background fill on a real userfaultfd, no address-space events.

mod engine_support;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use lazy_pages_core::engine::{Engine, EngineConfig, EngineEvent, EngineSummary};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn finish(engine: Engine) -> EngineSummary {
    assert!(
        engine.wait(WAIT),
        "engine did not finish: {:?}",
        engine.stats()
    );
    engine.join().expect("engine failed")
}

fn verify_region(region: &Region, layout: &Layout) {
    for i in 0..region.pages {
        // SAFETY: page i of a live region.
        if let Err((b, got, want)) =
            unsafe { check_page(region.page_addr(i), |b| layout.expected(i, b)) }
        {
            panic!(
                "page {i} (lazy {}, present {}) byte {b}: got {got:#x} want {want:#x}",
                layout.lazy[i], layout.present[i]
            );
        }
    }
}

#[test]
fn faults_and_background_fill_every_page_once() {
    let pages = 2048;
    let layout = Arc::new(Layout::new(pages, |i| i % 7 != 3, |i| i % 11 != 5));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    let rec = Recorder::default();
    let config = EngineConfig {
        jobs: 2,
        chunk_pages: 32,
        fault_pages: 4,
        ..EngineConfig::default()
    };
    let engine = Engine::start(source.clone(), config, rec.callback()).unwrap();
    engine
        .add_task(1234, region.uffd(), layout.ranges(region.addr))
        .unwrap();

    // Faults before RESTORE_FINISHED are served by the fault thread alone.
    let early: Vec<_> = (0..3)
        .map(|t| {
            touch_pages(
                region.addr,
                layout.clone(),
                shuffled(pages, t + 1)[..300].to_vec(),
            )
        })
        .collect();
    for t in early {
        assert_eq!(t.join().unwrap(), Vec::<String>::new());
    }
    assert!(engine.stats().tasks[0].faulted > 0);
    assert_eq!(
        engine.stats().tasks[0].background,
        0,
        "background fill must wait for restore_finished"
    );

    let late: Vec<_> = (0..4)
        .map(|t| touch_pages(region.addr, layout.clone(), shuffled(pages, t + 10)))
        .collect();
    engine.restore_finished();
    for t in late {
        assert_eq!(t.join().unwrap(), Vec::<String>::new());
    }
    let summary = finish(engine);
    verify_region(&region, &layout);

    let task = &summary.tasks[0];
    assert_eq!(task.pid, 1234);
    assert_eq!(task.total, layout.lazy_pages());
    assert_eq!(task.faulted + task.background, task.total, "{task:?}");
    assert_eq!(
        (task.exists, task.dropped, task.pending, task.in_flight),
        (0, 0, 0, 0)
    );
    assert!(task.reconciles() && task.done && !task.exited);
    assert!(
        task.zero > 0,
        "faults on never-dumped pages are zero-filled"
    );
    for i in 0..pages {
        assert_eq!(
            source.served(i),
            u32::from(layout.lazy[i]),
            "page {i} served count"
        );
    }
    assert!(summary.fault_latency.count() > 0);

    let events = rec.events();
    assert!(events
        .iter()
        .any(|e| matches!(e, EngineEvent::Fault { pid: 1234, .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, EngineEvent::TaskDone { pid: 1234, .. })));
    assert_eq!(events.last(), Some(&EngineEvent::Finished));
}

#[test]
fn source_retry_then_data_still_completes() {
    let pages = 256;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(PatternSource::new(&layout));
    source.retries.store(40, SeqCst);
    let region = Region::new(pages);
    let engine = Engine::start(
        source.clone(),
        EngineConfig {
            chunk_pages: 16,
            ..EngineConfig::default()
        },
        Recorder::default().callback(),
    )
    .unwrap();
    engine
        .add_task(1, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    let toucher = touch_pages(
        region.addr,
        layout.clone(),
        shuffled(pages, 3)[..64].to_vec(),
    );
    engine.restore_finished();
    assert_eq!(toucher.join().unwrap(), Vec::<String>::new());
    let summary = finish(engine);
    verify_region(&region, &layout);
    let task = &summary.tasks[0];
    assert_eq!(task.faulted + task.background, pages as u64);
    assert!(source.retries.load(SeqCst) < 0, "every Retry was consumed");
    assert!((0..pages).all(|i| source.served(i) == 1));
}

#[test]
fn prioritized_range_is_filled_first() {
    let pages = 512;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    let engine = Engine::start(
        source.clone(),
        EngineConfig {
            chunk_pages: 8,
            ..EngineConfig::default()
        },
        Recorder::default().callback(),
    )
    .unwrap();
    engine
        .add_task(9, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    engine.prioritize(9, region.page_addr(400), 32);
    engine.restore_finished();
    finish(engine);
    verify_region(&region, &layout);
    let log = source.log.lock().unwrap().clone();
    assert_eq!(
        &log[..4],
        &[400, 408, 416, 424],
        "hinted chunks first: {log:?}"
    );
}

#[test]
fn several_tasks_and_empty_tasks_finish() {
    let layout = Arc::new(Layout::all(64));
    let source = Arc::new(PatternSource::new(&layout));
    let regions: Vec<Region> = (0..3).map(|_| Region::new(64)).collect();
    let rec = Recorder::default();
    let engine = Engine::start(
        source.clone(),
        EngineConfig {
            jobs: 3,
            ..EngineConfig::default()
        },
        rec.callback(),
    )
    .unwrap();
    for (pid, r) in regions.iter().enumerate() {
        engine
            .add_task(pid as u32 + 1, r.uffd(), layout.ranges(r.addr))
            .unwrap();
    }
    // A task with no lazy pages retires as soon as restore is finished.
    let empty = Region::new(4);
    engine
        .add_task(99, empty.uffd(), Default::default())
        .unwrap();
    engine.restore_finished();
    let summary = finish(engine);
    for r in &regions {
        verify_region(r, &layout);
    }
    assert_eq!(summary.tasks.len(), 4);
    assert!(summary.tasks.iter().all(|t| t.done && t.reconciles()));
    assert_eq!(
        summary.totals().background + summary.totals().faulted,
        3 * 64
    );
    let done = rec
        .events()
        .iter()
        .filter(|e| matches!(e, EngineEvent::TaskDone { .. }))
        .count();
    assert_eq!(done, 4);
}

#[test]
fn no_tasks_finishes_at_restore_finished() {
    let layout = Layout::all(1);
    let engine = Engine::start(
        Arc::new(PatternSource::new(&layout)),
        EngineConfig::default(),
        Recorder::default().callback(),
    )
    .unwrap();
    engine.restore_finished();
    let summary = finish(engine);
    assert!(summary.tasks.is_empty());
}
