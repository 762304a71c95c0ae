//! The fault thread: one epoll over every uffd plus the control eventfd.
//!
//! It is the only reader of uffd messages. Per readable uffd it reads one batch under
//! the task's exclusive gate (`drain.rs`), then serves that batch's faults
//! (`serve.rs`). Faults whose bytes the source does not have yet wait in `fetching`
//! with their claim in flight, and are asked for again when the source's waker pokes
//! (invariant 8); faults it cannot finish right now (EAGAIN) are deferred with a short
//! backoff; faults on pages a background claim is bringing are parked in the task's
//! `awaited` list and rechecked when that claim ends.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};

use crate::ranges::Claim;
use crate::uffd::EventBuffer;

use super::shared::{Shared, CONTROL_TOKEN};
use super::task::Task;
use super::{EngineError, EngineEvent};

/// Longest sleep when idle: bounds how late a retirement check can run.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Retirement checks walk every task: at most one per this interval.
const RETIRE_EVERY: Duration = Duration::from_millis(2);

/// A fault to serve again later.
pub(crate) struct Deferred {
    pub task: u32,
    pub addr: u64,
    pub due: Instant,
    pub attempt: u32,
    pub read_at: Instant,
}

/// A fault whose claim is in flight, waiting for the page source's bytes.
pub(crate) struct Fetching {
    pub task: u32,
    /// The claim (in the task's in-flight set) and what it was when taken.
    pub id: u64,
    pub claim: Claim,
    pub page: u64,
    pub read_at: Instant,
    pub attempt: u32,
}

pub(crate) struct FaultLoop {
    pub shared: Arc<Shared>,
    pub buf: EventBuffer,
    pub scratch: Vec<u8>,
    pub deferred: Vec<Deferred>,
    /// Faults with the page source (`Pending`), each holding its claim.
    pub fetching: Vec<Fetching>,
    /// Tasks with a non-empty `awaited` list.
    pub awaiting: Vec<u32>,
    /// Lazy faults of this round, for the policy layer: (task, pid, addr, pages).
    pub notes: Vec<(u32, u32, u64, u64)>,
    last_retire_check: Instant,
    /// A retirement check was skipped for coming too soon after the last one.
    retire_skipped: bool,
}

impl FaultLoop {
    pub fn new(shared: Arc<Shared>) -> Self {
        let batch = shared.config.event_batch;
        FaultLoop {
            shared,
            buf: EventBuffer::new(batch),
            scratch: Vec::new(),
            deferred: Vec::new(),
            fetching: Vec::new(),
            awaiting: Vec::new(),
            notes: Vec::new(),
            last_retire_check: Instant::now(),
            retire_skipped: false,
        }
    }

    pub fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut ready: Vec<(u32, EpollFlags)> = Vec::new();
        while !self.shared.stopping.load(SeqCst) {
            let n = match self.shared.epoll.wait(&mut events, self.timeout()) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    self.shared.fail(EngineError::Setup(e.into()));
                    break;
                }
            };
            ready.clear();
            for ev in &events[..n] {
                match ev.data() {
                    CONTROL_TOKEN => {
                        let _ = self.shared.control.read();
                    }
                    id => ready.push((id as u32, ev.events())),
                }
            }
            for &(id, flags) in &ready {
                if let Some(task) = self.shared.task(id) {
                    self.service(&task, flags);
                }
            }
            self.run_fetching();
            self.recheck_awaited();
            self.run_deferred();
            self.flush_notes();
            self.retire_tasks();
        }
    }

    /// Reads one batch from a readable uffd and serves its faults.
    fn service(&mut self, task: &Arc<Task>, flags: EpollFlags) {
        let read_at = Instant::now();
        let faults = self.drain(task);
        if faults.is_empty() && flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            // Nothing to read yet the fd reports hang-up/error: no mm behind it.
            self.exit_task(task);
        }
        for addr in faults {
            self.serve(task, addr, read_at, 0);
        }
    }

    pub fn exit_task(&self, task: &Task) {
        if task.mark_exited(&mut task.state()) {
            self.shared.task_exited(task);
        }
    }

    fn timeout(&self) -> EpollTimeout {
        let now = Instant::now();
        let mut wait = IDLE_WAIT;
        if let Some(due) = self.deferred.iter().map(|d| d.due).min() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        // Awaited faults are normally settled through the eventfd; poll as a safety net.
        if !self.awaiting.is_empty() {
            wait = wait.min(Duration::from_millis(5));
        }
        // A skipped check comes back as soon as it is allowed: the poke that asked for it
        // was consumed, and the last claims of a fill often land within RETIRE_EVERY of
        // each other (the last one's poke skipped, a 1 GiB --jobs 2 restore ended up to
        // 100 ms late: perf sched showed every thread idle with the work done).
        if self.retire_skipped {
            wait = wait.min(RETIRE_EVERY.saturating_sub(self.last_retire_check.elapsed()));
        }
        let ms = wait.as_micros().div_ceil(1000) as u32;
        EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::ZERO)
    }

    pub fn defer(&mut self, task: u32, addr: u64, attempt: u32, read_at: Instant) {
        // First retry right after the next drain; then back off, because an EAGAIN can
        // precede the event that explains it by a moment.
        let delay = if attempt <= 1 {
            Duration::ZERO
        } else {
            Duration::from_millis(1 << (attempt - 2).min(5))
        };
        self.deferred.push(Deferred {
            task,
            addr,
            due: Instant::now() + delay,
            attempt,
            read_at,
        });
    }

    fn run_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| d.due <= now);
        self.deferred = later;
        for d in due {
            if let Some(task) = self.shared.task(d.task) {
                self.serve(&task, d.addr, d.read_at, d.attempt);
            }
        }
    }

    fn recheck_awaited(&mut self) {
        for id in std::mem::take(&mut self.awaiting) {
            let Some(task) = self.shared.task(id) else {
                continue;
            };
            let pages = std::mem::take(&mut task.state().awaited);
            for addr in pages {
                self.serve(&task, addr, Instant::now(), 0);
            }
        }
    }

    fn flush_notes(&mut self) {
        self.notes.sort_unstable();
        let mut merged: Option<(u32, u32, u64, u64)> = None;
        for (task, pid, addr, pages) in self.notes.drain(..) {
            match merged.as_mut() {
                Some(m) if m.0 == task && m.2 + m.3 * 4096 >= addr => {
                    m.3 = m.3.max((addr - m.2) / 4096 + pages);
                }
                _ => {
                    if let Some((task, pid, addr, pages)) = merged.take() {
                        self.shared.notifier.fault(EngineEvent::Fault {
                            pid,
                            task,
                            addr,
                            pages,
                        });
                    }
                    merged = Some((task, pid, addr, pages));
                }
            }
        }
        if let Some((task, pid, addr, pages)) = merged {
            self.shared.notifier.fault(EngineEvent::Fault {
                pid,
                task,
                addr,
                pages,
            });
        }
    }

    /// Closes uffds of tasks that are finished; finishes the engine when none is left.
    fn retire_tasks(&mut self) {
        if self.last_retire_check.elapsed() < RETIRE_EVERY {
            self.retire_skipped = true;
            return;
        }
        self.retire_skipped = false;
        self.last_retire_check = Instant::now();
        let restore_finished = self.shared.restore_finished.load(SeqCst);
        let mut live = 0;
        let tasks = self.shared.all_tasks();
        let known = tasks.len();
        for task in tasks {
            let (retired, exited, quiet) = {
                let st = task.state();
                (st.retired, st.exited, st.is_quiet())
            };
            if retired {
                continue;
            }
            let deferred = self.deferred.iter().any(|d| d.task == task.id);
            if exited || (restore_finished && quiet && !deferred && self.final_drain(&task)) {
                self.retire(&task);
            } else {
                live += 1;
            }
        }
        // A final drain may have adopted a forked child (a FORK read just before the
        // parent's uffd closes): it is not in this pass, so finishing now would leave
        // it unserved. It gets its own look on the next pass.
        let adopted = self.shared.all_tasks().len() != known;
        if restore_finished && live == 0 && !adopted {
            self.shared.finish();
        }
    }

    /// Reads whatever is still queued (a FORK must not be lost by closing the uffd);
    /// true if the task is still quiet afterwards.
    fn final_drain(&mut self, task: &Arc<Task>) -> bool {
        let read_at = Instant::now();
        let faults = self.drain(task);
        let had_faults = !faults.is_empty();
        for addr in faults {
            self.serve(task, addr, read_at, 0);
        }
        let st = task.state();
        !had_faults
            && (st.exited || st.is_quiet())
            && !self.deferred.iter().any(|d| d.task == task.id)
    }

    fn retire(&mut self, task: &Task) {
        task.state().retired = true;
        if let Some(uffd) = task.gate_exclusive().take() {
            let _ = self.shared.epoll.delete(&uffd);
            // Closing wakes any fault still blocked; the kernel then serves it as an
            // ordinary anonymous fault (no lazy page is left to lose).
            drop(uffd);
        }
        self.shared.journal(|j| j.task_done(task.id));
        self.shared.notifier.send(EngineEvent::TaskDone {
            pid: task.pid,
            task: task.id,
            stats: task.snapshot(),
        });
    }
}
