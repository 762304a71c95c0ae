//! The guardian: a second, small process that keeps a restore safe from its daemon's
//! death.
//!
//! # Why
//! The kernel zero-fills every page a uffd never got once the *last* descriptor of that
//! uffd is closed. If the daemon is the only holder, `kill -9`, the OOM killer or a
//! crash in native code silently hand the restored processes zeros. A second process
//! holding a duplicate of every uffd keeps the context alive: faults simply wait.
//!
//! # What it owns
//! * `keeper.rs`, the guardian process (`lazy-pages-guardian`): no Node, no engine, one
//!   thread, a few MiB. Its own session and process group, so a hang-up or a signal to
//!   the daemon's group does not reach it. It holds a duplicate of every uffd and its
//!   own copy of each task's lazy ranges until the restore completes.
//! * `link.rs`, the daemon's end: starts the guardian before the daemon listens (or
//!   finds one left by a dead daemon and resumes from it), and is the engine's
//!   `Journal`: every uffd is handed over before any of its pages is served, every
//!   REMOVE/UNMAP/REMAP is on record before it is applied, and a forked child's uffd
//!   with its ranges before the child is served.
//! * `wire.rs`, the messages between them (SOCK_SEQPACKET, SCM_RIGHTS).
//!
//! # What it promises
//! * The guardian is never on the fault path: it reads no uffd while a daemon serves.
//! * The daemon dies without saying `Quit`: the guardian waits `--resume-timeout` for
//!   the same command to be run again (it finds `lazy-pages.guardian` in the work dir),
//!   hands the uffds and ranges back, and keeps guarding the new daemon. No resume in
//!   time: every lazy page not present is poisoned (UFFDIO_POISON; EEXIST marks those
//!   that are in), one line says how many, exit 1. A restored process gets SIGBUS on an
//!   unserved page, never zeros.
//! * The guardian killed alone changes nothing for a healthy daemon (one warning).
//!
//! # What may go wrong
//! * Daemon and guardian both killed by -9: nothing holds the uffds; the kernel
//!   zero-fills. No userspace process can cover that.
//! * An event read in the microseconds between a daemon's read and its record of it is
//!   lost with that daemon (a REMOVE'd range could get dump-time bytes back; a forked
//!   child's uffd is closed and its unserved pages zero-fill).

pub mod keeper;
pub mod link;
pub mod wire;

/// The resume socket, relative to the work dir (next to `lazy-pages.socket`).
pub const SOCKET_NAME: &str = "lazy-pages.guardian";

/// The address of the socket at `path`. sun_path holds 107 bytes; a deeper work dir is
/// reached through /proc/self/fd/<dir>/<name>, and the returned directory must stay
/// open until the bind or connect is done.
pub(crate) fn unix_addr(
    path: &std::path::Path,
) -> std::io::Result<(nix::sys::socket::UnixAddr, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((nix::sys::socket::UnixAddr::new(path)?, None));
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (std::fs::File::open(dir)?, name),
        _ => return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
    };
    let short = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok((nix::sys::socket::UnixAddr::new(&short)?, Some(dir)))
}
