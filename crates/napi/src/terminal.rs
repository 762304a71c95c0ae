//! What a daemon does when its terminal goes away (a closed terminal window, ssh gone).

use napi_derive::napi;

/// Points every standard descriptor whose terminal hung up at /dev/null; returns how
/// many. A live terminal is left alone (a SIGHUP sent by hand changes nothing).
///
/// A hung-up terminal answers every read, write and tcsetattr with EIO: a log line
/// would raise a stream error, and Node's exit aborts (SIGABRT) when it cannot restore
/// the terminal's mode. Node skips that restore for a descriptor that is no longer the
/// file it was at start-up, and writes to /dev/null succeed.
#[napi]
pub fn release_dead_terminal() -> napi::Result<u32> {
    let mut released = 0;
    let mut null = None;
    for fd in 0..=2 {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr writes a termios into our buffer or fails; fd is just a number.
        let dead = unsafe { libc::tcgetattr(fd, termios.as_mut_ptr()) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO);
        if !dead {
            continue;
        }
        if null.is_none() {
            null = Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map_err(crate::daemon::err)?,
            );
        }
        let null_fd = null.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: dup2 replaces descriptor `fd` (0-2) with a copy of our open /dev/null.
        if unsafe { libc::dup2(null_fd, fd) } == fd {
            released += 1;
        }
    }
    Ok(released)
}
