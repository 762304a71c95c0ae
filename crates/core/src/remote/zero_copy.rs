//! Page data from the pages image to the socket without passing through our
//! memory: sendfile(2) from the file descriptor straight into the TCP socket.
//!
//! Why sendfile rather than splice through a pipe: for file -> socket it is the
//! same zero-copy path (the kernel hands page-cache pages to the socket), in one
//! syscall per chunk, with no pipe to size (so no CAP_SYS_RESOURCE and no
//! fs.pipe-max-size trap, cf. CRIU's own pipe bug) and no pipe to drain on error.
//! An explicit offset leaves the file position alone, so sessions share one fd.
//!
//! Every send here is bounded by a deadline for the whole reply (`arm_send`): a
//! client that reads, but too slowly to take a reply in time, is not waited on
//! forever one trickle at a time (SO_SNDTIMEO alone only bounds each call).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

/// Largest count handed to one sendfile call (the kernel caps at ~2 GiB anyway;
/// smaller chunks keep each call's blocking time short).
const CHUNK: u64 = 1 << 20;

/// Sends `header` and marks more data to follow, so header and pages leave in
/// the same segments once the first sendfile runs.
pub fn send_header(sock: BorrowedFd<'_>, header: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < header.len() {
        arm_send(sock, deadline)?;
        let rest = &header[sent..];
        // SAFETY: `rest` is a live slice for the duration of the call and the
        // kernel only reads `rest.len()` bytes from it; `sock` is a valid fd
        // borrowed for this call.
        let n = sent_bytes(|| unsafe {
            libc::send(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket accepted no bytes",
            ));
        }
        sent += n;
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `offset` to `sock`. A blocking socket's
/// SO_SNDTIMEO bounds each call; a file shorter than expected is an error.
pub fn send_file_range(
    sock: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    deadline: Instant,
) -> io::Result<()> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file offset {offset:#x} too large"),
        )
    })?;
    let mut left = len;
    while left > 0 {
        let count = left.min(CHUNK) as usize;
        arm_send(sock, deadline)?;
        // SAFETY: both fds are valid for the call (borrowed); `off` is a live
        // local the kernel reads and advances; no userspace buffer is involved.
        let n = sent_bytes(|| unsafe {
            libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count)
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pages file ends at {off:#x}, {left} bytes short"),
            ));
        }
        left -= n as u64;
    }
    Ok(())
}

/// Sets the socket's send timeout (SO_SNDTIMEO) to what is left until `deadline`, so
/// the next blocking send returns by then (with what it sent, or EAGAIN); past it, an
/// error of kind TimedOut. The caller restores its own timeout after the reply.
pub fn arm_send(sock: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, REPLY_LATE));
    }
    // A zero timeval means "no timeout": keep at least 1 us.
    let tv = libc::timeval {
        tv_sec: left.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(left.subsec_micros().max(u32::from(left.as_secs() == 0))),
    };
    // SAFETY: `tv` is a live local of the size passed; `sock` is a valid fd borrowed
    // for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a reply past its deadline reports (the session adds the bound).
pub const REPLY_LATE: &str = "the client did not take the reply in time (it reads too slowly)";

/// Runs a send-like syscall again while it is interrupted: its byte count, or the error.
fn sent_bytes(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(would_block_is_timeout(err));
        }
    }
}

/// A blocking socket reports an expired SO_SNDTIMEO as EAGAIN.
fn would_block_is_timeout(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading (send timeout)",
        )
    } else {
        err
    }
}
