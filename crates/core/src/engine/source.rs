//! Where page bytes come from, and the contract every source keeps with the engine.
//!
//! # The contract: ask, never wait
//! `PageSource::pages` returns at once. A source that has the bytes (the local images,
//! which read them synchronously; a remote source whose reply has arrived) returns
//! them; one that must fetch them starts the fetch and answers `Pending`. When any
//! fetch completes (or the source fails) it calls the `Waker` the engine gave it, from
//! whatever thread noticed, and the engine asks again: the second ask finds the bytes
//! (or `Pending` again, if what completed was someone else's). So the fault thread
//! never waits on the network: it keeps the fault's claim in flight, goes on serving
//! other tasks' faults, and copies when woken (invariant 8 in `mod.rs`).
//!
//! Every ask says who waits (`Priority`): a fault (a thread is blocked on the page),
//! the working set (known to be needed soon), or background fill. A source with a
//! queue (a page server's wire) sends faults first; a fault for a span already asked
//! for at a lower priority is not asked twice: the source promotes what it has.
//!
//! What may go wrong: a source that answers `Pending` and never wakes would leave a
//! fault waiting forever; so a source must wake on completion *and* on failure, and the
//! engine also re-asks on its own idle tick as a safety net (never as the normal path).

use std::sync::Arc;

/// Who waits for a span: its place in a source's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A thread of the restored process is blocked on it: first, never held back.
    Fault,
    /// A recorded working set (`--prefetch-ws`): needed soon, ahead of the rest.
    WorkingSet,
    /// Background fill: within whatever the source allows in flight.
    Background,
}

/// Answer of a `PageSource` for one span.
#[derive(Debug)]
pub enum PageData<'a> {
    /// Exactly the requested `len` bytes (borrowed from the source, or in `scratch`).
    Bytes(&'a [u8]),
    /// The dump has no such pages: the span reads as zeros.
    Zero,
    /// Asked for, not here yet: the source calls the waker when something completes;
    /// ask again then.
    Pending,
}

/// Called by a source whenever a fetch completes or the source fails. Cheap and
/// non-blocking: it only wakes engine threads.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Why a source could not answer. Fatal for the restore: a lazy page with no bytes
/// would otherwise be silently zero-filled.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("task {pid}: pages at {img_addr:#x} (+{len:#x}) are not in the images")]
    Missing { pid: u32, img_addr: u64, len: usize },
    #[error("task {pid}: reading pages at {img_addr:#x} (+{len:#x}): {source}")]
    Io {
        pid: u32,
        img_addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("task {pid}: pages at {img_addr:#x}: {message}")]
    Other {
        pid: u32,
        img_addr: u64,
        message: String,
    },
}

/// Supplies the bytes of dumped pages.
pub trait PageSource: Send + Sync {
    /// Bytes for [img_addr, img_addr + len) of image task `pid` (len a multiple of 4096,
    /// img_addr = dump-time address), borrowed from the source or written into
    /// `scratch`; or `Pending` (see the module's contract). Never blocks on anything
    /// but a local read.
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError>;

    /// The engine's waker, given once before the first `pages` call. Sources that
    /// never answer `Pending` ignore it.
    fn set_waker(&self, _waker: Waker) {}

    /// A thread now waits on [img_addr, img_addr + len) of `pid`, which background
    /// fill asked for earlier (at a lower priority) and still waits for: fetch it
    /// first. Must not block; sources without a queue ignore it.
    fn hurry(&self, _pid: u32, _img_addr: u64, _len: usize) {}

    /// Read-ahead hint: these spans of image task `pid` ((img_addr, len), in the
    /// order they will be asked for) are likely to be asked for soon. A source whose
    /// bytes take a while to arrive (a page server) may start fetching them now, if
    /// that is cheap and keeps within its limits; nothing is promised, and a span
    /// may never be asked for (a fault or MADV_DONTNEED got there first). Must not
    /// block. Local sources ignore it.
    fn will_need(&self, _pid: u32, _spans: &[(u64, usize)]) {}

    /// How many bytes background fill should announce through `will_need` ahead of
    /// each claim (the claim itself first); 0, the default: none. A remote source
    /// says about what it can keep in flight (its window), so read-ahead never starves
    /// the link on a long path.
    fn read_ahead_bytes(&self) -> u64 {
        0
    }
}
