//! Reading a uffd's messages and applying the address-space events they carry.
//!
//! Everything here runs with the task's gate held exclusively (invariant 2): reading a
//! REMOVE lets the madvise caller proceed to zap the span, so the span must already be
//! out of pending/in-flight before any fill can look at them again. Likewise a FORK
//! snapshot taken here sees no fill half-done (invariant 4).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::ranges::LazyRanges;
use crate::uffd::{self, ReadStatus, UffdEvent, UnregisterOutcome};

use super::fault_loop::FaultLoop;
use super::journal::SpaceEvent;
use super::task::Task;
use super::EngineEvent;

impl FaultLoop {
    /// Reads one batch from `task`'s uffd, applies its non-fault events, and returns the
    /// faulting addresses (served by the caller, after the events: a fault read before a
    /// REMOVE of its page must see the page as no longer lazy).
    pub(crate) fn drain(&mut self, task: &Arc<Task>) -> Vec<u64> {
        let mut faults = Vec::new();
        let mut children: Vec<(OwnedFd, LazyRanges)> = Vec::new();
        let mut exited = false;
        {
            let gate = task.gate_exclusive();
            let Some(uffd) = gate.as_ref() else {
                return faults;
            };
            let mut events = Vec::new();
            match uffd::read_events(uffd, &mut self.buf, &mut events) {
                Ok(ReadStatus::Read(_)) => {}
                Ok(ReadStatus::Empty) => return faults,
                Ok(ReadStatus::Closed) => exited = true,
                Err(e) => {
                    let message = format!(
                        "task {} (pid {}): {e}; treating it as exited",
                        task.id, task.pid
                    );
                    self.shared.notifier.send(EngineEvent::Error { message });
                    exited = true;
                }
            }
            let mut st = task.state();
            for event in events {
                if let Some(space) = space_event(&event) {
                    // On record first: a daemon that dies after acting on it must not
                    // leave a successor copying into a range the process dropped.
                    self.shared.journal(|j| j.event(task.id, &space));
                }
                match event {
                    UffdEvent::Fault { addr, .. } => faults.push(addr),
                    UffdEvent::Remap { from, to, len } => {
                        st.pending.remap(from, to, len);
                        st.inflight.remap(from, to, len);
                    }
                    UffdEvent::Remove { start, end } => {
                        // Unregister so later faults there are plain zero-fill faults that
                        // never reach us (CRIU does the same).
                        match uffd::unregister(uffd, start, end.saturating_sub(start)) {
                            Ok(UnregisterOutcome::Done) => {}
                            Ok(UnregisterOutcome::Gone) => exited = true,
                            Err(e) => self.shared.notifier.send(EngineEvent::Error {
                                message: format!("task {} (pid {}): {e}", task.id, task.pid),
                            }),
                        }
                        let dropped =
                            st.pending.remove(start, end) + st.inflight.remove(start, end);
                        super::stats::TaskCounters::add(&task.counters.dropped, dropped);
                    }
                    UffdEvent::Unmap { start, end } => {
                        let dropped =
                            st.pending.remove(start, end) + st.inflight.remove(start, end);
                        super::stats::TaskCounters::add(&task.counters.dropped, dropped);
                    }
                    UffdEvent::Fork { uffd } => {
                        // Pages in flight were not in the parent when it forked (the
                        // kernel refuses COPY until this message is read), so the child
                        // needs them as well as everything pending.
                        let mut ranges = st.pending.clone();
                        for piece in st.inflight.all_pieces() {
                            ranges.insert(piece);
                        }
                        children.push((uffd, ranges));
                    }
                    UffdEvent::Unknown(code) => self.shared.notifier.send(EngineEvent::Error {
                        message: format!(
                            "task {} (pid {}): unknown uffd message {code:#x}",
                            task.id, task.pid
                        ),
                    }),
                }
            }
            if exited && task.mark_exited(&mut st) {
                drop(st);
                self.shared.task_exited(task);
            }
        }
        self.shared.bump_work();
        for (fd, ranges) in children {
            self.adopt_child(task, fd, ranges);
        }
        faults
    }

    fn adopt_child(&mut self, parent: &Task, fd: OwnedFd, ranges: LazyRanges) {
        let uffd = uffd::uffd_from_owned(fd);
        match self
            .shared
            .add_task(parent.pid, Some(parent.id), uffd, ranges)
        {
            Ok(child) => self.shared.notifier.send(EngineEvent::TaskForked {
                pid: parent.pid,
                parent: parent.id,
                child: child.id,
            }),
            // The child's uffd is closed by the error path; its faults then zero-fill,
            // which is wrong for its lazy pages, so this is worth a loud report.
            Err(e) => self.shared.notifier.send(EngineEvent::Error {
                message: format!(
                    "task {} (pid {}): forked child lost: {e}",
                    parent.id, parent.pid
                ),
            }),
        }
    }
}

fn space_event(event: &UffdEvent) -> Option<SpaceEvent> {
    match *event {
        UffdEvent::Remove { start, end } => Some(SpaceEvent::Remove { start, end }),
        UffdEvent::Unmap { start, end } => Some(SpaceEvent::Unmap { start, end }),
        UffdEvent::Remap { from, to, len } => Some(SpaceEvent::Remap { from, to, len }),
        // A forked child is put on record with its uffd when it is adopted.
        UffdEvent::Fault { .. } | UffdEvent::Fork { .. } | UffdEvent::Unknown(_) => None,
    }
}
