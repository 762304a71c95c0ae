//! `lazy-pages-guardian --socket PATH --resume-timeout-ms N [--log FILE] [--dump-id ID]`, started by
//! the lazy-pages daemon with its end of a SOCK_SEQPACKET pair on fd 3. Not meant to be
//! run by hand; see `lazy_pages_core::guardian`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use lazy_pages_core::guardian::keeper::{self, KeeperConfig};

fn main() {
    std::process::exit(match parse(std::env::args().skip(1)) {
        Ok(config) => {
            // SAFETY: the daemon that started us put its end of the socket pair on fd 3;
            // nothing else in this process refers to it.
            let first = unsafe { OwnedFd::from_raw_fd(3) };
            keeper::run(first, config)
        }
        Err(e) => {
            eprintln!("lazy-pages-guardian: {e} (started by the lazy-pages daemon; not meant to be run by hand)");
            2
        }
    })
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<KeeperConfig, String> {
    let (mut socket, mut timeout, mut log, mut dump_id) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--resume-timeout-ms" => {
                let v = value()?;
                timeout =
                    Some(Duration::from_millis(v.parse().map_err(|_| {
                        format!("--resume-timeout-ms {v}: not a number")
                    })?));
            }
            "--log" => log = Some(PathBuf::from(value()?)),
            "--dump-id" => dump_id = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    // fd 3 must be a socket: a stray run must not take some other descriptor for one.
    // SAFETY: only borrowed for the fstat; fd 3 stays open (or fstat reports EBADF).
    let fd3 = unsafe { std::os::fd::BorrowedFd::borrow_raw(3) };
    let st = nix::sys::stat::fstat(fd3).map_err(|e| format!("fd 3: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("fd 3 is not a socket".into());
    }
    Ok(KeeperConfig {
        socket: socket.ok_or("--socket is required")?,
        resume_timeout: timeout.ok_or("--resume-timeout-ms is required")?,
        log,
        dump_id,
    })
}
