//! Events for the policy layer, delivered on a thread of their own.
//!
//! The fault path only appends to a bounded in-memory queue (a short mutex hold, never
//! a wait on the consumer); a notifier thread calls the user's callback. When the policy
//! layer is slow, fault notifications beyond the cap are dropped and counted: faults
//! are never delayed by the policy. Lifecycle events are rare and never dropped.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::TaskStats;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// Task `task` (image `pid`) faulted on `pages` lazy pages starting at run-time `addr`
    /// (coalesced over one read batch).
    Fault {
        pid: u32,
        task: u32,
        addr: u64,
        pages: u64,
    },
    TaskForked {
        pid: u32,
        parent: u32,
        child: u32,
    },
    TaskExited {
        pid: u32,
        task: u32,
    },
    /// The task has nothing left (or exited); its uffd is closed.
    TaskDone {
        pid: u32,
        task: u32,
        stats: TaskStats,
    },
    /// Lazy pages resolved so far (copied, present, or dropped) out of all known.
    Progress {
        done_pages: u64,
        total_pages: u64,
    },
    /// Something went wrong that the engine survived (or the fatal error, just before
    /// it stops).
    Error {
        message: String,
    },
    /// Something the restore goes on without (e.g. the guardian was lost).
    Warning {
        message: String,
    },
    /// The working set given to `Engine::prefetch` has been claimed to the last page
    /// (`pages` copied so far), `elapsed` after the engine started.
    WorkingSetFetched {
        pages: u64,
        elapsed: Duration,
    },
    /// Every task is done; `Engine::join` returns now.
    Finished,
}

pub type EventCallback = Box<dyn Fn(EngineEvent) + Send + Sync>;

const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Queue {
    faults: VecDeque<EngineEvent>,
    others: VecDeque<EngineEvent>,
    closed: bool,
}

pub(crate) struct Notifier {
    queue: Mutex<Queue>,
    ready: Condvar,
    fault_cap: usize,
    dropped: AtomicU64,
}

impl Notifier {
    pub fn new(fault_cap: usize) -> Self {
        Notifier {
            queue: Mutex::default(),
            ready: Condvar::new(),
            fault_cap,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a fault notification, or drops it if the policy layer is behind.
    pub fn fault(&self, event: EngineEvent) {
        let mut q = lock(&self.queue);
        if q.faults.len() >= self.fault_cap {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        q.faults.push_back(event);
        drop(q);
        self.ready.notify_one();
    }

    pub fn send(&self, event: EngineEvent) {
        lock(&self.queue).others.push_back(event);
        self.ready.notify_one();
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lets `run` return once the queue is drained.
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.ready.notify_one();
    }

    /// The notifier thread body; `progress` yields a Progress event when there is news.
    pub fn run(&self, callback: &EventCallback, progress: &mut dyn FnMut() -> Option<EngineEvent>) {
        loop {
            let (batch, closed) = {
                let mut q = lock(&self.queue);
                if q.faults.is_empty() && q.others.is_empty() && !q.closed {
                    q = self
                        .ready
                        .wait_timeout(q, PROGRESS_EVERY)
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                let mut batch: Vec<EngineEvent> = q.faults.drain(..).collect();
                batch.extend(q.others.drain(..));
                (batch, q.closed)
            };
            let progress = progress();
            // Progress first: a Finished in the batch must be the last thing delivered.
            for event in progress.into_iter().chain(batch) {
                // A panicking callback must not take event delivery down with it.
                let _ = catch_unwind(AssertUnwindSafe(|| callback(event)));
            }
            if closed && self.is_empty() {
                return;
            }
        }
    }

    fn is_empty(&self) -> bool {
        let q = lock(&self.queue);
        q.faults.is_empty() && q.others.is_empty()
    }
}

/// Locks ignoring poisoning: the protected data stays consistent across a panic in the
/// callback, which never runs under these locks.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
