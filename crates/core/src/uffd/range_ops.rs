//! WAKE and UNREGISTER (through the `userfaultfd` crate) and fd adoption.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use userfaultfd::Uffd;

use super::UffdError;

/// Takes ownership of a uffd received from elsewhere (restore socket, FORK event).
pub fn uffd_from_owned(fd: OwnedFd) -> Uffd {
    // SAFETY: `fd` is an open descriptor we own; ownership moves into the Uffd, which
    // closes it exactly once on drop.
    unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) }
}

/// Releases a `Uffd` into an `OwnedFd`.
///
/// Never use `Uffd::into_raw_fd` for this: in userfaultfd 0.9 it returns the number and
/// then runs `Drop`, closing the descriptor it just handed out.
pub fn uffd_into_owned(uffd: Uffd) -> OwnedFd {
    let uffd = std::mem::ManuallyDrop::new(uffd);
    // SAFETY: ManuallyDrop suppresses the Uffd's close, so the OwnedFd becomes the sole
    // owner of this open descriptor.
    unsafe { OwnedFd::from_raw_fd(uffd.as_raw_fd()) }
}

/// The engine multiplexes every uffd on one epoll, so a blocking read would stall all
/// tasks. CRIU's uffds are already non-blocking; this makes sure of it for any other
/// caller.
pub fn set_nonblocking(fd: impl AsFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// Wakes threads blocked on faults in `[start, start + len)`. Needed after EEXIST: the
/// page is there but the kernel only wakes for pages the failing ioctl itself filled.
pub fn wake(uffd: &Uffd, start: u64, len: u64) -> Result<(), UffdError> {
    uffd.wake(start as *mut libc::c_void, len as usize)
        .map_err(|e| crate_error("UFFDIO_WAKE", start, len, e))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnregisterOutcome {
    Done,
    /// ENOMEM: the mm is already gone, i.e. the task exited.
    Gone,
}

/// Unregisters `[start, start + len)` so later faults there are plain anonymous faults.
pub fn unregister(uffd: &Uffd, start: u64, len: u64) -> Result<UnregisterOutcome, UffdError> {
    match uffd.unregister(start as *mut libc::c_void, len as usize) {
        Ok(()) => Ok(UnregisterOutcome::Done),
        Err(e) if errno_of(&e) == Some(libc::ENOMEM) => Ok(UnregisterOutcome::Gone),
        Err(e) => Err(crate_error("UFFDIO_UNREGISTER", start, len, e)),
    }
}

// The crate is built against an older nix, so its Errno is a different type; compare
// by number.
fn errno_of(e: &userfaultfd::Error) -> Option<i32> {
    match e {
        userfaultfd::Error::SystemError(errno) => Some(*errno as i32),
        _ => None,
    }
}

fn crate_error(op: &'static str, addr: u64, len: u64, e: userfaultfd::Error) -> UffdError {
    UffdError::Ioctl {
        op,
        addr,
        len,
        errno: errno_of(&e).map_or(Errno::UnknownErrno, Errno::from_raw),
    }
}
