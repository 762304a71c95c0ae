//! State shared by the engine's threads and its handle.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::ranges::LazyRanges;
use crate::uffd::Uffd;

use super::journal::Journal;
use super::notify::{lock, Notifier};
use super::stats::{EngineStats, LatencyHistogram};
use super::task::Task;
use super::working_set::{FaultLog, PrefetchQueues};
use super::{EngineConfig, EngineError, EngineEvent, PageSource};

/// Epoll token of the control eventfd; task tokens are task ids.
pub(crate) const CONTROL_TOKEN: u64 = u64::MAX;
const MAX_HINTS: usize = 256;

/// A policy request: fill `[addr, end)` of image task `pid` before anything else.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hint {
    pub pid: u32,
    pub addr: u64,
    pub end: u64,
}

pub(crate) struct Shared {
    pub config: EngineConfig,
    pub source: Arc<dyn PageSource>,
    /// Indexed by task id; retired tasks stay for the stats.
    pub tasks: RwLock<Vec<Arc<Task>>>,
    pub epoll: Epoll,
    /// Wakes the fault thread: new task, awaited fault settled, task to retire, stop.
    pub control: EventFd,
    /// Faults the fault thread has with the page source (asked, answered `Pending`):
    /// while any, a completion pokes it (invariant 8).
    pub faults_fetching: AtomicUsize,
    pub restore_finished: AtomicBool,
    pub stopping: AtomicBool,
    pub finished: AtomicBool,
    /// Bumped whenever background fill may find new work or a change it waited for
    /// (events drained, pages put back, restore finished, stop).
    work: Mutex<u64>,
    work_changed: Condvar,
    done: Mutex<bool>,
    done_changed: Condvar,
    pub hints: Mutex<VecDeque<Hint>>,
    /// Working-set spans to fetch first, from the moment each task arrives.
    pub prefetch: PrefetchQueues,
    /// Lazy-page faults in order, when `config.record_working_set`.
    pub fault_log: FaultLog,
    pub fatal: Mutex<Option<EngineError>>,
    pub notifier: Notifier,
    pub latency: LatencyHistogram,
    pub started: Instant,
    /// Where tasks and address-space events are put on record before they are acted
    /// on (`journal.rs`); None without a guardian, or once it failed.
    journal: Mutex<Option<Arc<dyn Journal>>>,
}

impl Shared {
    pub fn new(source: Arc<dyn PageSource>, config: EngineConfig) -> Result<Self, EngineError> {
        let setup = |e: nix::Error| EngineError::Setup(e.into());
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(setup)?;
        let control =
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(setup)?;
        epoll
            .add(
                &control,
                EpollEvent::new(EpollFlags::EPOLLIN, CONTROL_TOKEN),
            )
            .map_err(setup)?;
        let fault_cap = config.fault_event_queue;
        Ok(Shared {
            config,
            source,
            tasks: RwLock::default(),
            epoll,
            control,
            faults_fetching: AtomicUsize::new(0),
            restore_finished: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            work: Mutex::new(0),
            work_changed: Condvar::new(),
            done: Mutex::new(false),
            done_changed: Condvar::new(),
            hints: Mutex::default(),
            prefetch: PrefetchQueues::default(),
            fault_log: FaultLog::default(),
            fatal: Mutex::new(None),
            notifier: Notifier::new(fault_cap),
            latency: LatencyHistogram::default(),
            started: Instant::now(),
            journal: Mutex::new(None),
        })
    }

    pub fn task(&self, id: u32) -> Option<Arc<Task>> {
        self.tasks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)
            .cloned()
    }

    pub fn all_tasks(&self) -> Vec<Arc<Task>> {
        self.tasks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Creates a task entry for `uffd` and starts watching it.
    pub fn add_task(
        &self,
        pid: u32,
        parent: Option<u32>,
        uffd: Uffd,
        pending: LazyRanges,
    ) -> Result<Arc<Task>, EngineError> {
        if self.stopping.load(SeqCst) {
            return Err(EngineError::Closed { pid });
        }
        crate::uffd::set_nonblocking(&uffd).map_err(|e| EngineError::Setup(e.into()))?;
        let mut tasks = self.tasks.write().unwrap_or_else(|e| e.into_inner());
        let id = tasks.len() as u32;
        // On record before the task is watched, so before any of its pages is served.
        self.journal(|j| j.task(id, pid, parent, uffd.as_fd(), &pending));
        self.epoll
            .add(&uffd, EpollEvent::new(EpollFlags::EPOLLIN, u64::from(id)))
            .map_err(|e| EngineError::Setup(e.into()))?;
        let task = Arc::new(Task::new(id, pid, parent, uffd, pending));
        tasks.push(task.clone());
        drop(tasks);
        self.bump_work();
        Ok(task)
    }

    pub fn set_journal(&self, journal: Arc<dyn Journal>) {
        *lock(&self.journal) = Some(journal);
    }

    /// Puts something on record; a journal that fails is dropped with one warning.
    pub fn journal(&self, record: impl FnOnce(&dyn Journal) -> Result<(), String>) {
        let Some(journal) = lock(&self.journal).clone() else {
            return;
        };
        if let Err(e) = record(&*journal) {
            *lock(&self.journal) = None;
            self.notifier.send(EngineEvent::Warning {
                message: format!("{e}; serving on without a guardian: if this daemon dies now, unserved pages read as zeros"),
            });
        }
    }

    pub fn poke(&self) {
        let _ = self.control.write(1);
    }

    /// The page source's waker: a fetch completed (or the source failed). Fill jobs
    /// waiting for their claim's bytes wait on the work generation; the fault thread,
    /// if it has faults with the source, on its eventfd.
    pub fn source_completed(&self) {
        self.bump_work();
        if self.faults_fetching.load(SeqCst) > 0 {
            self.poke();
        }
    }

    pub fn work_generation(&self) -> u64 {
        *lock(&self.work)
    }

    pub fn bump_work(&self) {
        *lock(&self.work) += 1;
        self.work_changed.notify_all();
    }

    /// Waits until the work generation differs from `seen` (or `timeout`); returns it.
    pub fn wait_work(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = lock(&self.work);
        let (guard, _) = self
            .work_changed
            .wait_timeout_while(guard, timeout, |g| {
                *g == seen && !self.stopping.load(SeqCst)
            })
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    pub fn push_hint(&self, hint: Hint) {
        let mut hints = lock(&self.hints);
        if hints.len() >= MAX_HINTS {
            hints.pop_front();
        }
        hints.push_back(hint);
        drop(hints);
        self.bump_work();
    }

    pub fn task_exited(&self, task: &Task) {
        self.notifier.send(EngineEvent::TaskExited {
            pid: task.pid,
            task: task.id,
        });
        self.poke();
    }

    /// Records the first fatal error and stops the engine.
    pub fn fail(&self, err: EngineError) {
        self.notifier.send(EngineEvent::Error {
            message: err.to_string(),
        });
        lock(&self.fatal).get_or_insert(err);
        self.stop();
    }

    /// Every task is done.
    pub fn finish(&self) {
        if !self.finished.swap(true, SeqCst) {
            self.notifier.send(EngineEvent::Finished);
        }
        self.stop();
    }

    pub fn stop(&self) {
        self.stopping.store(true, SeqCst);
        self.poke();
        self.bump_work();
        *lock(&self.done) = true;
        self.done_changed.notify_all();
    }

    pub fn wait_stopped(&self, timeout: Option<Duration>) -> bool {
        let guard = lock(&self.done);
        match timeout {
            None => *self
                .done_changed
                .wait_while(guard, |d| !*d)
                .unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                *self
                    .done_changed
                    .wait_timeout_while(guard, t, |d| !*d)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        }
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            tasks: self.all_tasks().iter().map(|t| t.snapshot()).collect(),
            fault_latency: self.latency.snapshot(),
            dropped_fault_events: self.notifier.dropped(),
            restore_finished: self.restore_finished.load(SeqCst),
            elapsed: self.started.elapsed(),
        }
    }

    /// Progress event if anything changed since `last`.
    pub fn progress(&self, last: &mut (u64, u64)) -> Option<EngineEvent> {
        let totals = self.stats().totals();
        let now = (
            totals
                .total
                .saturating_sub(totals.pending + totals.in_flight),
            totals.total,
        );
        (now != *last).then(|| {
            *last = now;
            EngineEvent::Progress {
                done_pages: now.0,
                total_pages: now.1,
            }
        })
    }
}
