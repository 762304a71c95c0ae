//! UFFDIO_COPY / UFFDIO_ZEROPAGE with an exact account of what happened.
//!
//! The kernel reports partial progress as EAGAIN with the byte count in the struct, and
//! reports "first page already there" / "no VMA" / "task gone" through errno. The
//! `userfaultfd` crate casts a negative `copy` to usize and drops ZEROPAGE's count, so
//! the engine could neither resume a partial fill nor tell a race from a bug; hence
//! these wrappers.
//!
//! ENOENT is asked twice. A fill can pass the kernel's "event unread" check on entry,
//! then wait for the mmap lock behind an mremap or munmap and find the VMA gone: ENOENT
//! while the REMAP/UNMAP that explains it is still unread (seen on Linux 6.18: a fill
//! job dropped a page an mremap was moving, and the moved page read as zeros). Callers
//! must not let the uffd's messages be read while a fill ioctl is under way (the engine's
//! gate: fills hold it shared, the fault thread reads only holding it exclusively), so
//! the ordering in `run_fill` makes the second answer exact (`FillOutcome::Unmapped`).

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use userfaultfd::Uffd;

use super::raw::{
    uffdio_copy, uffdio_poison, uffdio_zeropage, UffdioCopy, UffdioPoison, UffdioRange,
    UffdioZeropage,
};
use super::UffdError;

/// What a fill ioctl did. Everything that is not a bug in our bookkeeping is an outcome,
/// not an error, so callers decide per kind (retry, wake, drop, retire the task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillOutcome {
    /// All `bytes` filled (and waiters woken).
    Done(u64),
    /// Stopped after `bytes` (> 0): the rest needs another call, which will tell why.
    Partial(u64),
    /// The first page is already present (EEXIST). The kernel does not wake for it.
    Exists,
    /// No registered VMA covers the range, or it spans two VMAs (ENOENT), and no event
    /// that could explain it is unread: answered twice (see the module docs), with the
    /// caller keeping the uffd's messages unread in between.
    Unmapped,
    /// EAGAIN with no progress: a fork/remap/remove/unmap event is still unread, so the
    /// kernel refuses to touch the address space until the event is consumed.
    Changing,
    /// The task's mm is gone (ESRCH, or ENOSPC on older kernels): it exited.
    Gone,
}

/// UFFDIO_COPY `src` to run-time address `dst` (both page multiples), waking waiters.
pub fn copy(uffd: &Uffd, dst: u64, src: &[u8]) -> Result<FillOutcome, UffdError> {
    let len = src.len() as u64;
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len,
        mode: 0,
        copy: 0,
    };
    run_fill("UFFDIO_COPY", dst, len, || {
        arg.copy = 0;
        // SAFETY: `arg` is a valid uffdio_copy; `src` outlives the call and the kernel only
        // reads `len` bytes from it; `dst` lies in the *target* mm, never dereferenced here.
        let res = unsafe { uffdio_copy(uffd.as_raw_fd(), &mut arg) };
        (res, arg.copy)
    })
}

/// UFFDIO_ZEROPAGE `[dst, dst + len)`, waking waiters.
pub fn zeropage(uffd: &Uffd, dst: u64, len: u64) -> Result<FillOutcome, UffdError> {
    let mut arg = UffdioZeropage {
        range: UffdioRange { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    run_fill("UFFDIO_ZEROPAGE", dst, len, || {
        arg.zeropage = 0;
        // SAFETY: `arg` is a valid uffdio_zeropage that lives across the call.
        let res = unsafe { uffdio_zeropage(uffd.as_raw_fd(), &mut arg) };
        (res, arg.zeropage)
    })
}

/// UFFDIO_POISON `[dst, dst + len)`, waking waiters: an access there then raises SIGBUS
/// instead of faulting. For pages that will never be served, so that a task touching one
/// dies loudly rather than reading zeros once the uffd is closed.
pub fn poison(uffd: &Uffd, dst: u64, len: u64) -> Result<FillOutcome, UffdError> {
    let mut arg = UffdioPoison {
        range: UffdioRange { start: dst, len },
        mode: 0,
        updated: 0,
    };
    run_fill("UFFDIO_POISON", dst, len, || {
        arg.updated = 0;
        // SAFETY: `arg` is a valid uffdio_poison that lives across the call.
        let res = unsafe { uffdio_poison(uffd.as_raw_fd(), &mut arg) };
        (res, arg.updated)
    })
}

/// How a `poison_span` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoisonEnd {
    /// Every page of the span is poisoned or was present already.
    Done,
    /// An unread fork/remap/remove/unmap event blocks every ioctl from `at` on: whoever
    /// reads the uffd must consume it before the rest can be poisoned.
    Blocked { at: u64 },
    /// The task is gone.
    Gone,
}

/// Poisons every page of `[start, end)` that is not present (EEXIST skips one page;
/// a hole with no VMA is stepped over by halving). Returns the pages poisoned.
pub fn poison_span(uffd: &Uffd, start: u64, end: u64) -> Result<(u64, PoisonEnd), UffdError> {
    const PAGE: u64 = crate::ranges::PAGE_SIZE;
    let mut at = start;
    let mut step = end.saturating_sub(at);
    let mut poisoned = 0;
    while at < end {
        let len = step.min(end - at);
        match poison(uffd, at, len)? {
            FillOutcome::Done(_) => {
                poisoned += len / PAGE;
                at += len;
                step = end - at;
            }
            FillOutcome::Partial(bytes) => {
                let bytes = crate::ranges::page_floor(bytes).clamp(PAGE, len);
                poisoned += bytes / PAGE;
                at += bytes;
            }
            // Present already (its copy landed), or not ours to poison any more.
            FillOutcome::Exists => at += PAGE,
            FillOutcome::Unmapped if len > PAGE => {
                step = crate::ranges::page_floor(len / 2).max(PAGE)
            }
            FillOutcome::Unmapped => {
                at += PAGE;
                step = end.saturating_sub(at);
            }
            FillOutcome::Changing => return Ok((poisoned, PoisonEnd::Blocked { at })),
            FillOutcome::Gone => return Ok((poisoned, PoisonEnd::Gone)),
        }
    }
    Ok((poisoned, PoisonEnd::Done))
}

/// Issues a fill ioctl until it answers with something other than EINTR, and asks an
/// ENOENT once more. `call` issues it once and returns its result with the count the
/// kernel wrote back (it resets the count first).
fn run_fill(
    op: &'static str,
    dst: u64,
    len: u64,
    mut call: impl FnMut() -> (nix::Result<i32>, i64),
) -> Result<FillOutcome, UffdError> {
    let mut asked_again = false;
    loop {
        let (res, done) = call();
        match classify(res.map(|_| ()), done, len) {
            // Why asking again tells an unread event from a VMA that is gone: mremap and
            // munmap raise the uffd's "changing" count in the same mmap-locked step that
            // takes the VMA away, and lower it only once their REMAP/UNMAP has been read;
            // every fill ioctl answers EAGAIN on entry while the count is up. An ENOENT
            // saw the VMA gone, so the count went up before it, and nobody reads messages
            // until we return: EAGAIN now means the event is still unread (the caller
            // keeps the pages for the event to move or drop), ENOENT again means no event
            // explains it (or one was read before the caller looked the range up).
            Some(FillOutcome::Unmapped) if !asked_again => asked_again = true,
            Some(outcome) => return Ok(outcome),
            None if res == Err(Errno::EINTR) => continue,
            None => return Err(failure(op, dst, len, res)),
        }
    }
}

/// Maps (ioctl result, written-back count) to an outcome; None = real error or EINTR.
fn classify(res: nix::Result<()>, done: i64, len: u64) -> Option<FillOutcome> {
    let errno = match res {
        Ok(()) => return Some(FillOutcome::Done(if done > 0 { done as u64 } else { len })),
        Err(e) => e,
    };
    // Progress wins over the errno: the kernel turns any short fill into EAGAIN + count.
    if done > 0 {
        return Some(FillOutcome::Partial(done as u64));
    }
    match errno {
        Errno::EAGAIN => Some(FillOutcome::Changing),
        Errno::EEXIST => Some(FillOutcome::Exists),
        Errno::ENOENT => Some(FillOutcome::Unmapped),
        Errno::ESRCH | Errno::ENOSPC => Some(FillOutcome::Gone),
        _ => None,
    }
}

fn failure(op: &'static str, addr: u64, len: u64, res: nix::Result<i32>) -> UffdError {
    UffdError::Ioctl {
        op,
        addr,
        len,
        errno: res.err().unwrap_or(Errno::UnknownErrno),
    }
}
