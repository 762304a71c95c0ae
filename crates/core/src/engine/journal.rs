//! The engine's journal: what a second process must know to take over or protect a
//! restore if this one dies (`crate::guardian`).
//!
//! The engine calls it at exactly three points, each *before* acting, so that what it
//! acted on is always on record first: a task's uffd and lazy ranges before the task
//! is watched (so before any of its pages is served), an address-space event read from
//! a uffd before it is applied, and a retired task after its uffd is closed here. It is
//! never called on the fault or fill path. A journal that fails is dropped with one
//! warning and the restore goes on unprotected.

use std::os::fd::BorrowedFd;

use crate::ranges::LazyRanges;

/// An address-space event the fault thread read from a task's uffd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceEvent {
    /// MADV_DONTNEED: never copy into `[start, end)` again.
    Remove { start: u64, end: u64 },
    /// munmap: `[start, end)` is gone.
    Unmap { start: u64, end: u64 },
    /// mremap: pending pages of `[from, from + len)` now live at `to`.
    Remap { from: u64, to: u64, len: u64 },
}

impl SpaceEvent {
    /// Applies the event to a task's lazy ranges; returns the pages it dropped.
    pub fn apply(&self, ranges: &mut LazyRanges) -> u64 {
        match *self {
            SpaceEvent::Remove { start, end } | SpaceEvent::Unmap { start, end } => {
                ranges.remove(start, end)
            }
            SpaceEvent::Remap { from, to, len } => {
                ranges.remap(from, to, len);
                0
            }
        }
    }
}

pub trait Journal: Send + Sync {
    /// Task `id` (image pid `pid`, forked from task `parent`) is about to be served.
    fn task(
        &self,
        id: u32,
        pid: u32,
        parent: Option<u32>,
        uffd: BorrowedFd<'_>,
        ranges: &LazyRanges,
    ) -> Result<(), String>;
    /// `event` was read from task `id`'s uffd and is about to be applied.
    fn event(&self, id: u32, event: &SpaceEvent) -> Result<(), String>;
    /// Task `id` has every page (or exited) and its uffd is closed here.
    fn task_done(&self, id: u32) -> Result<(), String>;
}
