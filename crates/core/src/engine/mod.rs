//! The fault engine: serves every restored task's uffd until all lazy pages are in.
//!
//! # Threads
//! * **fault thread** (`FaultLoop`): epoll over all uffds + a control eventfd. The only
//!   reader of uffd messages; serves faults itself (copy the faulting page, or a short
//!   cluster after it, or map the zero page), applies FORK/REMAP/REMOVE/UNMAP, retires
//!   finished tasks (closes their uffd). It asks the page source and never waits on it: a
//!   fault whose bytes are not in yet waits in `fetching` with its claim in flight until
//!   the source's waker pokes the control eventfd (invariant 8).
//! * **background fill** (`config.jobs` threads): claims one chunk at a time and
//!   copies it: working-set pages (`prefetch`) as soon as their task arrives (every
//!   page, in address order, with `early_fill`); after `restore_finished`, the working
//!   set first, then policy hints, then address order, each job in its own stripe of
//!   the task (`stripes.rs`).
//! * Fill threads run as SCHED_IDLE once no working set is left to prefetch, and the
//!   fault thread at nice -10 where allowed (`niceness.rs`), so a woken fault thread
//!   never waits for a CPU behind the fill.
//! * **notifier**: delivers `EngineEvent`s to the callback, so a slow policy layer never
//!   delays a fault.
//!
//! # Locking (per task)
//! `state` (mutex) holds pending ranges, in-flight claims and parked faults; it is only
//! held for bookkeeping, never across an ioctl or a source read. `gate` (rwlock around
//! the uffd) orders fills against address-space events: fills hold it shared from
//! reading their claim's current pieces until the ioctl returned; the fault thread holds
//! it exclusively while it reads a message batch and applies the events in it. The gate
//! lets a waiting writer in before any new reader (`gate.rs`; std's RwLock let back-to-
//! back background chunks starve the fault thread for up to ~100 ms), and background
//! fill copies in bounded slices, handing the gate over between them, so reading a
//! batch waits for at most one slice's ioctl (64 pages, ~60 µs).
//!
//! # Invariants
//! 1. **Each lazy page is copied at most once.** A page leaves `pending` only by being
//!    claimed under the state lock; a claim is owned by exactly one thread until it
//!    ends, and whatever it could not copy goes back to pending. EEXIST is counted as
//!    `exists`, never as a copy.
//! 2. **No stale data after MADV_DONTNEED.** Reading a REMOVE message lets the madvise
//!    caller go on to zap the span; a COPY into it issued after that read would
//!    resurrect dump-time bytes. Reads happen under the exclusive gate and drop the span
//!    from pending *and* from in-flight claims before the gate is released; fills only
//!    issue ioctls for their claim's pieces as they are under the shared gate. So every
//!    COPY into the span either completed before the read (and is then zapped) or sees
//!    the span gone. The fault thread applies a batch's events before serving its
//!    faults for the same reason.
//! 3. **EAGAIN means "event unread", not failure.** While a FORK/REMAP/REMOVE/UNMAP
//!    message is queued the kernel refuses fills with EAGAIN. The unfilled rest of the
//!    claim goes back to pending (still under the shared gate, so the event is applied
//!    to it afterwards); background fill then waits for the fault thread to bump the
//!    work generation, and a fault is retried after the next drain, with backoff.
//! 4. **FORK gives the child exactly what it lacks.** The kernel refuses the parent's
//!    fills from the moment it copies the mm until the FORK message is read, and no
//!    fill is mid-ioctl while the gate is exclusive; so pending + in-flight at read time
//!    is exactly the set of lazy pages missing in the child.
//! 5. **ENOENT before RESTORE_FINISHED is "not yet".** A task's uffd arrives before the
//!    restorer registers its VMAs, so working-set prefetch (and early fill) may run
//!    ahead of registration. Only then is ENOENT taken as "retry": the pages stay
//!    pending (and first in the working set). Anywhere else ENOENT means the VMA is gone and the
//!    pages are dropped; dropping a not-yet-registered page would leave it to be
//!    answered with the zero page once it faults.
//!    ENOENT is only believed when asked twice under one hold of the shared gate
//!    (`uffd/fill.rs`): a fill the kernel let in just before an mremap/munmap took the
//!    VMA away answers ENOENT while the REMAP/UNMAP is still unread, and dropping then
//!    lost pages the REMAP was moving (they read as zeros at their new place). The
//!    second ask answers EAGAIN while the event is unread, so invariant 3 applies.
//! 6. **Each lazy page is counted exactly once, by whoever takes it out of the
//!    task's state, under the state lock.** Pending pages are counted when they leave
//!    pending; an in-flight claim's pages by its copier when it settles the claim, or,
//!    if the task exits first (exit, kill, exec, a fill or fault meeting ESRCH), by the
//!    exit path, which counts every claim still in flight as dropped and takes it away.
//!    A copier that finds its claim taken when its ioctls return counts nothing: the
//!    pages it may have copied into the dying mm were counted already. REMOVE/UNMAP
//!    take pages out of claims only under the exclusive gate, so never mid-ioctl.
//! 7. **On record before acted on.** With a journal (`journal.rs`, the guardian), a
//!    task's uffd and ranges are recorded before the task is watched, and an
//!    address-space event before it is applied (still under the exclusive gate, so the
//!    record and the read are one step for every fill). A successor that resumes from
//!    the record never copies into a range the process dropped, and finds every uffd.
//! 8. **No thread waits on the page source while holding anything a fault needs.**
//!    `PageSource::pages` returns at once (`source.rs`): bytes, or `Pending`. The
//!    fault thread keeps a pending fault's claim in flight (so nobody else copies
//!    those pages, and REMOVE/UNMAP/FORK/exit act on the claim as on any other: the
//!    bytes, when they come, are copied only into what the claim still holds) and goes
//!    on; the source's waker pokes it, and it asks again. So faults of any number of
//!    tasks are with the source at once, each costing one fetch, not a queue of them.
//!    Background fill waits for its claim's bytes with no lock held; a fault on one of
//!    its pages parks in `awaited` and asks the source to hurry the span.

mod background;
mod config;
mod drain;
mod error;
mod fault_loop;
mod gate;
mod inflight;
mod journal;
mod niceness;
mod notify;
mod read_ahead;
mod serve;
mod shared;
mod source;
mod stats;
mod stripes;
mod task;
mod transfer;
mod unserved;
mod working_set;

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::EngineConfig;
pub use error::{EngineError, UnservedNote};
pub use journal::{Journal, SpaceEvent};
pub use notify::{EngineEvent, EventCallback};
pub use source::{PageData, PageSource, Priority, SourceError, Waker};
pub use stats::{EngineStats, EngineSummary, LatencySnapshot, TaskStats};
pub use working_set::{PageRun, TaskWorkingSet};

use crate::ranges::{page_ceil, page_floor, LazyRanges, PAGE_SIZE};
use fault_loop::FaultLoop;
use notify::lock;
use shared::{Hint, Shared};

/// Handle to a running engine. Dropping it shuts the engine down (pages still unserved
/// are poisoned: see `unserved.rs`).
pub struct Engine {
    shared: Arc<Shared>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    poisoned: std::sync::atomic::AtomicBool,
}

impl Engine {
    /// Starts the fault, background-fill and notifier threads. No task yet.
    pub fn start(
        source: Arc<dyn PageSource>,
        config: EngineConfig,
        events: EventCallback,
    ) -> Result<Engine, EngineError> {
        let shared = Arc::new(Shared::new(source, config.normalized())?);
        // Weak: the source lives in `shared`, so a strong reference would be a cycle.
        let weak = Arc::downgrade(&shared);
        shared.source.set_waker(Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.source_completed();
            }
        }));
        let mut threads = Vec::new();
        // A thread that panics must not leave faulting tasks waiting forever on a
        // daemon that looks alive: it fails the engine, which stops and reports it.
        let guarded = shared.clone();
        let spawn = move |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            let shared = guarded.clone();
            let body = move || {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    shared.fail(EngineError::ThreadPanicked(name));
                }
            };
            std::thread::Builder::new()
                .name(format!("lazy-{name}"))
                .spawn(body)
                .map(|h| (name, h))
                .map_err(EngineError::Setup)
        };
        let s = shared.clone();
        threads.push(spawn(
            "faults",
            Box::new(move || {
                niceness::fault_thread();
                FaultLoop::new(s).run()
            }),
        )?);
        for job in 0..shared.config.jobs {
            let s = shared.clone();
            threads.push(spawn("fill", Box::new(move || background::run(s, job)))?);
        }
        let s = shared.clone();
        threads.push(spawn(
            "notify",
            Box::new(move || {
                let mut last = (u64::MAX, u64::MAX);
                s.notifier.run(&events, &mut || s.progress(&mut last));
            }),
        )?);
        Ok(Engine {
            shared,
            threads: Mutex::new(threads),
            poisoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Hands over task `pid`'s uffd (API already negotiated, as CRIU sends it) with its
    /// lazy ranges. Returns the engine's id for this task entry.
    pub fn add_task(
        &self,
        pid: u32,
        uffd: OwnedFd,
        ranges: LazyRanges,
    ) -> Result<u32, EngineError> {
        let uffd = crate::uffd::uffd_from_owned(uffd);
        let task = self.shared.add_task(pid, None, uffd, ranges)?;
        self.shared.poke();
        Ok(task.id)
    }

    /// Puts every task added from now on, and every address-space event, on record
    /// before acting on it (`journal.rs`). Call before `add_task`.
    pub fn set_journal(&self, journal: Arc<dyn journal::Journal>) {
        self.shared.set_journal(journal);
    }

    /// Takes over a task another daemon was serving when it died: `ranges` are the lazy
    /// pages it had not been told were dropped (pages it copied meanwhile are found
    /// present: EEXIST). Wakes every thread of the task blocked on a fault whose message
    /// the dead daemon read: its fault comes again and is served here.
    pub fn add_resumed_task(
        &self,
        pid: u32,
        parent: Option<u32>,
        uffd: OwnedFd,
        ranges: LazyRanges,
    ) -> Result<u32, EngineError> {
        let uffd = crate::uffd::uffd_from_owned(uffd);
        let task = self.shared.add_task(pid, parent, uffd, ranges)?;
        // The whole user address space, not just the lazy ranges: the dead daemon may
        // have read a fault on a never-dumped page too. Waking costs nothing where no
        // thread waits; UFFDIO_WAKE refuses addresses below mmap_min_addr.
        const USER_START: u64 = 0x1_0000;
        const USER_END: u64 = 0x7fff_ffff_f000;
        if let Some(uffd) = task.gate_shared().as_ref() {
            // A task that exited meanwhile refuses (ESRCH); nothing waits there then.
            if let Err(e) = crate::uffd::wake(uffd, USER_START, USER_END - USER_START) {
                self.shared.notifier.send(EngineEvent::Warning {
                    message: format!("task {} (pid {pid}): {e}", task.id),
                });
            }
        }
        self.shared.poke();
        Ok(task.id)
    }

    /// criu restore sent RESTORE_FINISHED: background fill may start, and tasks with
    /// nothing left may retire.
    pub fn restore_finished(&self) {
        self.shared.restore_finished.store(true, SeqCst);
        self.shared.bump_work();
        self.shared.poke();
    }

    /// Policy hint: fill `pages` pages of image task `pid` from run-time `addr` before
    /// anything else (applies to forked children of `pid` too).
    pub fn prioritize(&self, pid: u32, addr: u64, pages: u64) {
        let start = page_floor(addr);
        let end = page_ceil(addr.saturating_add(pages.saturating_mul(PAGE_SIZE)));
        if start < end {
            self.shared.push_hint(Hint {
                pid,
                addr: start,
                end,
            });
        }
    }

    /// Working sets to fetch first: each as soon as its task's uffd arrives, ahead of
    /// policy hints and the general background fill.
    pub fn prefetch(&self, sets: &[TaskWorkingSet]) {
        self.shared.prefetch.add(sets);
        self.shared.bump_work();
    }

    /// With `EngineConfig::record_working_set`: every dump task's lazy-page faults so
    /// far, in order.
    pub fn recorded_working_set(&self) -> Vec<TaskWorkingSet> {
        self.shared.fault_log.working_sets()
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats()
    }

    /// True once every task is done (after `restore_finished`).
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(SeqCst)
    }

    /// Stops all threads; pending pages stay unserved (and are poisoned when the
    /// engine is joined or dropped), so this is for aborts.
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    /// Waits up to `timeout` for the engine to finish or stop; true if it did.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        self.shared.wait_stopped(timeout)
    }

    /// Waits until every task has nothing pending or in flight (or exited), then stops
    /// the threads and returns the final stats.
    pub fn join(self) -> Result<EngineSummary, EngineError> {
        self.shared.wait_stopped(None);
        let stopped = self.stop_threads();
        let unserved = self.poison_unserved();
        let err = match (lock(&self.shared.fatal).take(), stopped) {
            (Some(err), _) | (None, Err(err)) => err,
            (None, Ok(())) if !self.shared.finished.load(SeqCst) => EngineError::ShutDown,
            (None, Ok(())) => return Ok(self.shared.stats()),
        };
        Err(match unserved {
            Some(u) if u.pages > 0 => EngineError::Unserved {
                source: Box::new(err),
                note: UnservedNote {
                    pages: u.pages,
                    poisoned: u.poisoned,
                    poison_error: u.error,
                },
            },
            _ => err,
        })
    }

    /// Once, after the threads stopped and before the uffds close: poison what an
    /// unfinished engine leaves unserved.
    fn poison_unserved(&self) -> Option<unserved::Unserved> {
        if self.shared.finished.load(SeqCst) || self.poisoned.swap(true, SeqCst) {
            return None;
        }
        Some(unserved::poison_unserved(&self.shared))
    }

    fn stop_threads(&self) -> Result<(), EngineError> {
        self.shared.stop();
        self.shared.notifier.close();
        let mut panicked = None;
        for (name, handle) in lock(&self.threads).drain(..) {
            if handle.join().is_err() {
                panicked = Some(name);
            }
        }
        panicked.map_or(Ok(()), |name| Err(EngineError::ThreadPanicked(name)))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop_threads();
        self.poison_unserved();
    }
}
