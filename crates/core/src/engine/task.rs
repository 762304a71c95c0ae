//! One uffd's worth of state: the pages still owed to one (possibly forked) task.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, RwLockReadGuard};
use std::time::Instant;

use crate::ranges::{LazyRange, LazyRanges};
use crate::uffd::Uffd;

use super::gate::{Gate, GateWriteGuard};
use super::inflight::InFlightSet;
use super::notify::lock;
use super::stats::{TaskCounters, TaskStats};
use super::stripes::Stripes;

pub(crate) struct Task {
    pub id: u32,
    /// Image pid: what the page source is asked for.
    pub pid: u32,
    pub parent: Option<u32>,
    /// The uffd, behind the lock that orders fills against address-space events (see
    /// the engine docs, invariant 2): fills hold it shared from reading their claim's
    /// pieces until the ioctl returned; the fault thread holds it exclusively while it
    /// reads messages and applies REMOVE/UNMAP/REMAP/FORK. `None` once retired. A
    /// waiting writer goes before new readers (`gate.rs`).
    pub gate: Gate<Option<Uffd>>,
    pub state: Mutex<TaskState>,
    pub counters: TaskCounters,
}

#[derive(Debug, Default)]
pub(crate) struct TaskState {
    pub pending: LazyRanges,
    pub inflight: InFlightSet,
    /// Faulting pages whose bytes a background claim is bringing; rechecked when it ends.
    pub awaited: Vec<u64>,
    /// Fill before RESTORE_FINISHED (early prefetch, early fill) skips the task until
    /// then: its VMAs were not registered yet.
    pub prefetch_not_before: Option<Instant>,
    /// An early prefetch copy succeeded since the last ENOENT. Until then early
    /// prefetch claims one page at a time, one claim in flight, so waiting for the
    /// restorer to register costs the page source one page per retry.
    pub prefetch_registered: bool,
    /// The claim id of that one probe while it is under way: other jobs leave the task
    /// alone until it answers, however long it takes (a time window alone let a second
    /// job probe the next page when a probe outlasted it, fetching that page twice).
    pub probe_in_flight: Option<u64>,
    /// Where each background job goes on in this task (`stripes.rs`).
    pub stripes: Stripes,
    pub exited: bool,
    pub retired: bool,
}

impl TaskState {
    /// Claim `id` is done with: if it was the probe, the task may be claimed from again
    /// (true: jobs sleeping for want of work should look again).
    pub fn answered(&mut self, id: u64) -> bool {
        let probe = self.probe_in_flight == Some(id);
        if probe {
            self.probe_in_flight = None;
        }
        probe
    }

    /// Nothing pending, in flight, or awaited.
    pub fn is_quiet(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty() && self.awaited.is_empty()
    }

    pub fn put_back(&mut self, pieces: impl IntoIterator<Item = LazyRange>) {
        for piece in pieces {
            self.pending.insert(piece);
        }
    }
}

impl Task {
    pub fn new(id: u32, pid: u32, parent: Option<u32>, uffd: Uffd, pending: LazyRanges) -> Self {
        let counters = TaskCounters::default();
        counters.total.store(pending.pages(), Relaxed);
        Task {
            id,
            pid,
            parent,
            gate: Gate::new(Some(uffd)),
            state: Mutex::new(TaskState {
                pending,
                ..TaskState::default()
            }),
            counters,
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, TaskState> {
        lock(&self.state)
    }

    pub fn gate_shared(&self) -> RwLockReadGuard<'_, Option<Uffd>> {
        self.gate.read()
    }

    pub fn gate_exclusive(&self) -> GateWriteGuard<'_, Option<Uffd>> {
        self.gate.write()
    }

    /// Marks the task exited and drops what it still owed; false if already exited.
    pub fn mark_exited(&self, st: &mut TaskState) -> bool {
        if st.exited {
            return false;
        }
        st.exited = true;
        let dropped = st.pending.clear() + st.inflight.clear();
        TaskCounters::add(&self.counters.dropped, dropped);
        st.awaited.clear();
        true
    }

    pub fn snapshot(&self) -> TaskStats {
        let st = self.state();
        let c = &self.counters;
        TaskStats {
            task: self.id,
            pid: self.pid,
            parent: self.parent,
            total: c.total.load(Relaxed),
            faulted: c.faulted.load(Relaxed),
            background: c.background.load(Relaxed),
            prefetched: c.prefetched.load(Relaxed),
            zero: c.zero.load(Relaxed),
            exists: c.exists.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            pending: st.pending.pages(),
            in_flight: st.inflight.pages(),
            exited: st.exited,
            done: st.retired,
        }
    }
}
