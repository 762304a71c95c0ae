//! FORK: a forked child gets its own uffd and exactly the lazy pages it lacks.
//!
//! fork() makes every uffd of this process with EVENT_FORK report the child, so these
//! tests live in their own binary and run one at a time.

mod engine_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_support::*;
use lazy_pages_core::engine::{Engine, EngineConfig, EngineEvent};

static SERIAL: Mutex<()> = Mutex::new(());
const WAIT: Option<Duration> = Some(Duration::from_secs(60));

/// Forks a child that reads every page of the region and reports (mismatching pages,
/// first bad page) in a shared page; returns (child pid, that page).
fn fork_checker(region: &Region, layout: &Layout) -> (libc::pid_t, *mut u32) {
    // SAFETY: a fresh shared anonymous page (never registered with a uffd).
    let report = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PS,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(report, libc::MAP_FAILED);
    let report = report.cast::<u32>();
    // SAFETY: the child only reads memory, does arithmetic, writes the shared page and
    // _exit(2)s: nothing that needs locks or allocation held by the parent's other threads.
    let pid = unsafe { fork_sharing_fds() };
    if pid == 0 {
        let mut bad = 0u32;
        let mut first = u32::MAX;
        for i in (0..region.pages).rev() {
            // SAFETY: page i of the region, inherited by this child.
            if unsafe { check_page(region.page_addr(i), |b| layout.expected(i, b)) }.is_err() {
                bad += 1;
                first = first.min(i as u32);
            }
        }
        // SAFETY: the shared page is ours and 3 words fit; then exit without unwinding.
        unsafe {
            report.write_volatile(bad);
            report.add(1).write_volatile(first);
            report.add(2).write_volatile(REPORTED);
            libc::_exit(0);
        }
    }
    (pid, report)
}

/// Written last by a checker, so a child that died early is told apart.
const REPORTED: u32 = 0x600d;

fn child_report(pid: libc::pid_t, report: *mut u32) -> (u32, u32) {
    let mut status = 0;
    // SAFETY: reaping our own child, then reading and unmapping the page it wrote.
    let (bad, first, done) = unsafe {
        libc::waitpid(pid, &mut status, 0);
        let words = (
            report.read_volatile(),
            report.add(1).read_volatile(),
            report.add(2).read_volatile(),
        );
        libc::munmap(report.cast(), PS);
        words
    };
    assert_eq!(
        done, REPORTED,
        "child died without reporting (status {status:#x})"
    );
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    (bad, first)
}

#[test]
fn child_forked_before_restore_finished() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pages = 384;
    let layout = Arc::new(Layout::new(pages, |i| i % 9 != 4, |i| i % 5 != 2));
    let source = Arc::new(PatternSource::new(&layout));
    let region = Region::new(pages);
    let rec = Recorder::default();
    let engine = Engine::start(
        source,
        EngineConfig {
            chunk_pages: 8,
            ..EngineConfig::default()
        },
        rec.callback(),
    )
    .unwrap();
    let parent_id = engine
        .add_task(77, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    // The parent has part of its pages when it forks; the child must get the rest.
    assert_eq!(
        touch_pages(region.addr, layout.clone(), (0..100).collect())
            .join()
            .unwrap(),
        Vec::<String>::new()
    );

    let (child, fd) = fork_checker(&region, &layout);
    let (bad, first) = child_report(child, fd);
    assert_eq!(bad, 0, "child saw {bad} wrong pages, first {first}");
    engine.restore_finished();
    assert!(engine.wait(WAIT), "{:?}", engine.stats());
    let summary = engine.join().unwrap();
    assert_eq!(
        touch_pages(region.addr, layout.clone(), (0..pages).collect())
            .join()
            .unwrap(),
        Vec::<String>::new()
    );

    assert_eq!(summary.tasks.len(), 2, "{summary:?}");
    let parent = &summary.tasks[parent_id as usize];
    let kid = summary
        .tasks
        .iter()
        .find(|t| t.parent == Some(parent_id))
        .expect("child task");
    assert_eq!(kid.pid, 77, "children are served from the parent's images");
    assert!(
        parent.reconciles() && kid.reconciles(),
        "{parent:?} {kid:?}"
    );
    assert_eq!(parent.faulted + parent.background, parent.total);
    assert_eq!(
        kid.total,
        parent.total - parent_faulted_before_fork(&layout, 100)
    );
    assert!(rec
        .events()
        .iter()
        .any(|e| matches!(e, EngineEvent::TaskForked { pid: 77, .. })));
}

/// Lazy pages among the first `n` (all faulted in by the parent before it forked).
fn parent_faulted_before_fork(layout: &Layout, n: usize) -> u64 {
    layout.lazy[..n].iter().filter(|&&l| l).count() as u64
}

#[test]
fn children_forked_during_background_fill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pages = 512;
    let layout = Arc::new(Layout::new(pages, |i| i % 6 != 1, |i| i % 10 != 3));
    let iters = std::env::var("LAZY_RACE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    for iter in 0..iters {
        let source = Arc::new(PatternSource::new(&layout));
        let region = Region::new(pages);
        let config = EngineConfig {
            jobs: 2,
            chunk_pages: 4,
            ..EngineConfig::default()
        };
        let engine = Engine::start(source, config, Recorder::default().callback()).unwrap();
        engine
            .add_task(5, region.uffd(), layout.ranges(region.addr))
            .unwrap();
        engine.restore_finished();
        std::thread::sleep(Duration::from_micros(100 * (iter as u64 % 7)));
        let (child, fd) = fork_checker(&region, &layout);
        let (bad, first) = child_report(child, fd);
        assert_eq!(
            bad, 0,
            "iteration {iter}: child saw {bad} wrong pages, first {first}"
        );
        assert!(engine.wait(WAIT), "{:?}", engine.stats());
        let summary = engine.join().unwrap();
        assert_eq!(
            touch_pages(region.addr, layout.clone(), (0..pages).collect())
                .join()
                .unwrap(),
            Vec::<String>::new()
        );
        assert!(summary.tasks.iter().all(|t| t.reconciles()), "{summary:?}");
        assert_eq!(
            summary.tasks.iter().map(|t| t.exists).sum::<u64>(),
            0,
            "{summary:?}"
        );
    }
}

#[test]
fn child_that_exits_at_once_is_retired_with_its_pages_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pages = 256;
    let layout = Arc::new(Layout::all(pages));
    let region = Region::new(pages);
    let rec = Recorder::default();
    let engine = Engine::start(
        Arc::new(PatternSource::new(&layout)),
        EngineConfig::default(),
        rec.callback(),
    )
    .unwrap();
    let parent_id = engine
        .add_task(3, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    // SAFETY: the child exits immediately.
    let child = unsafe { fork_sharing_fds() };
    if child == 0 {
        // SAFETY: leaving the child without running any Rust code.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    engine.restore_finished();
    assert!(engine.wait(WAIT), "{:?}", engine.stats());
    let summary = engine.join().unwrap();
    let kid = summary
        .tasks
        .iter()
        .find(|t| t.parent == Some(parent_id))
        .expect("child task");
    assert!(kid.exited && kid.done && kid.reconciles(), "{kid:?}");
    assert_eq!(kid.total, pages as u64);
    assert!(kid.dropped > 0, "{kid:?}");
    let parent = &summary.tasks[parent_id as usize];
    assert_eq!(parent.background, pages as u64);
    assert!(rec
        .events()
        .iter()
        .any(|e| matches!(e, EngineEvent::TaskExited { task, .. } if *task == kid.task)));
    assert_eq!(
        touch_pages(region.addr, layout, (0..pages).collect())
            .join()
            .unwrap(),
        Vec::<String>::new()
    );
}
