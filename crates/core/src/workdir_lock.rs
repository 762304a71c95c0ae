//! One daemon per work dir: `lazy-pages.lock` in the work dir, flock(LOCK_EX|LOCK_NB)
//! held by the daemon process for its whole life, with the holder's pid written inside.
//!
//! Promises: while `WorkDirLock` lives, no other process gets it, so a second daemon is
//! refused before it touches the first's socket, log or pidfile. The kernel drops the
//! lock when its holder dies, even by `kill -9`, so a free lock means no live daemon
//! (what is left of a dead one may then be picked up or replaced). The file itself is
//! never removed: unlinking it would let two lockers hold two different inodes.
//! What may go wrong: a work dir we cannot write (one line naming the file), or a lock
//! held (the error names the holder's pid as read from the file).
//!
//! The file is also the holder's short record (`note`): its pid, then "connected <criu
//! restore's pid>" and "ended" as the session gets there. The next holder reads what the
//! last one left before it writes its own pid: a record that stops at "connected" is a
//! daemon that died mid-restore (`LockRecord::interrupted`), which a re-run says at once
//! instead of waiting out --connect-timeout for a restore that will never come.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK_NAME: &str = "lazy-pages.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another lazy-pages (pid {}) is serving work dir {dir}: it holds {LOCK_NAME}", pid.map_or("unknown".to_string(), |p| p.to_string()))]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("{}: cannot lock: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Held for as long as this lives; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct WorkDirLock {
    _file: File,
    /// What the previous holder left in the file.
    previous: String,
}

impl WorkDirLock {
    /// The previous holder died after criu restore connected and before its session
    /// ended: a line saying so (which daemon, which criu restore), else None.
    pub fn interrupted(&self) -> Option<String> {
        let mut lines = self.previous.lines();
        let daemon: u32 = lines.next()?.trim().parse().ok()?;
        let mut restore = None;
        for line in lines {
            match line.split_once(' ') {
                Some(("connected", pid)) => restore = pid.trim().parse::<i32>().ok(),
                _ if line == "ended" => return None,
                _ => {}
            }
        }
        let restore = restore?;
        let now = if crate::session::still_running(restore) {
            "is still running"
        } else {
            "is gone"
        };
        Some(format!(
            "the previous daemon (pid {daemon}) died after criu restore (pid {restore}) connected and before that restore finished: \
             its guardian held nothing to resume, and criu restore ends with its daemon (pid {restore} {now})"
        ))
    }
}

/// Adds `line` to the record in `<work_dir>/lazy-pages.lock` of the daemon that holds
/// it (this process). Best effort: without the file (a session run without the lock,
/// as in tests) nothing is noted, and a failure only makes a later warning less exact.
pub fn note(work_dir: &Path, line: &str) {
    let file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(work_dir.join(LOCK_NAME));
    if let Ok(mut file) = file {
        let _ = file.write_all(format!("\n{line}").as_bytes());
    }
}

/// Takes `<work_dir>/lazy-pages.lock` or says which pid holds it; never waits.
pub fn lock_work_dir(work_dir: &Path) -> Result<WorkDirLock, LockError> {
    let path = work_dir.join(LOCK_NAME);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // O_NOFOLLOW: a symlink planted here must not make us truncate its target.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LockError::Held {
                dir: work_dir.to_path_buf(),
                pid: read_pid(&mut file),
            });
        }
        return Err(io(err));
    }
    // A record is a few short lines; more is not ours to read.
    let mut previous = String::new();
    let _ = Read::by_ref(&mut file)
        .take(4096)
        .read_to_string(&mut previous);
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    // The pid alone, as before records were kept: readers of just the pid still work;
    // `note` starts each line with its own newline.
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(io)?;
    Ok(WorkDirLock {
        _file: file,
        previous,
    })
}

/// The holder writes its pid right after locking; a moment before that it is unknown.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_is_refused_with_the_holders_pid_and_gets_it_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_work_dir(dir.path()).unwrap();
        // flock is per open file description, so a second open in this process conflicts too.
        match lock_work_dir(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        lock_work_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_holder_that_died_after_criu_connected_is_told_to_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_work_dir(dir.path()).unwrap();
        assert_eq!(first.interrupted(), None);
        note(dir.path(), "connected 999999999");
        drop(first);
        let second = lock_work_dir(dir.path()).unwrap();
        let line = second.interrupted().expect("the first died mid-restore");
        assert!(
            line.contains(&format!("pid {}", std::process::id()))
                && line.contains("pid 999999999 is gone"),
            "{line}"
        );
        note(dir.path(), "connected 999999999");
        note(dir.path(), "ended");
        drop(second);
        assert_eq!(
            lock_work_dir(dir.path()).unwrap().interrupted(),
            None,
            "a session that ended is no news"
        );
    }
}
