//! An engine that stops before every page is in must not leave zeros behind: the pages
//! it never served are poisoned, so touching one raises SIGBUS.
//!
//! Forks a checker, so this lives in its own test binary (see engine_fork.rs).

mod engine_support;

use std::sync::Arc;

use engine_support::*;
use lazy_pages_core::engine::{
    Engine, EngineConfig, EngineError, PageData, PageSource, Priority, SourceError,
};

/// The pattern source, except that the pages from `fail_from` on cannot be read.
struct FailingSource {
    inner: PatternSource,
    fail_from: usize,
}

impl PageSource for FailingSource {
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        let first = ((img_addr - IMG_BASE) as usize) / PS;
        if first + len / PS > self.fail_from {
            return Err(SourceError::Other {
                pid,
                img_addr,
                message: "the disk went away".into(),
            });
        }
        self.inner.pages(pid, img_addr, len, scratch, priority)
    }
}

/// Reads one word of `addr` in a forked child; returns the signal that killed it, if any.
fn touch_in_child(addr: u64) -> Option<i32> {
    // SAFETY: the child only reads memory and _exit(2)s.
    let pid = unsafe { fork_sharing_fds() };
    if pid == 0 {
        // SAFETY: a page of the region this child inherited.
        let v = unsafe { std::ptr::read_volatile(addr as *const u64) };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(if v == 0 { 3 } else { 0 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Some(libc::WTERMSIG(status))
    } else {
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "child read zeros at {addr:#x}"
        );
        None
    }
}

#[test]
fn pages_left_unserved_by_a_failed_engine_raise_sigbus_instead_of_reading_zeros() {
    let pages = 64;
    let layout = Arc::new(Layout::all(pages));
    let source = Arc::new(FailingSource {
        inner: PatternSource::new(&layout),
        fail_from: 24,
    });
    let region = Region::new(pages);
    let config = EngineConfig {
        jobs: 1,
        chunk_pages: 8,
        ..EngineConfig::default()
    };
    let engine = Engine::start(source, config, Recorder::default().callback()).unwrap();
    engine
        .add_task(9, region.uffd(), layout.ranges(region.addr))
        .unwrap();
    engine.restore_finished();

    let err = engine
        .join()
        .expect_err("the source failed: the engine must fail");
    let EngineError::Unserved { note, .. } = &err else {
        panic!("want Unserved, got {err:?}");
    };
    // Fill goes in address order, 8 pages a claim: 0..24 got in, the claim at 24 failed.
    assert_eq!((note.pages, note.poisoned), (40, 40), "{err}");
    assert!(note.poison_error.is_none());
    assert!(
        err.to_string().contains("the disk went away") && err.to_string().contains("SIGBUS"),
        "{err}"
    );

    // The engine (and with it the uffd) is gone now.
    assert_eq!(
        touch_in_child(region.page_addr(3)),
        None,
        "a served page reads back"
    );
    assert_eq!(touch_in_child(region.page_addr(24)), Some(libc::SIGBUS));
    assert_eq!(touch_in_child(region.page_addr(63)), Some(libc::SIGBUS));
}
