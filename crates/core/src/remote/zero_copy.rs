//! Page data from the pages image to the socket without passing through our
//! memory: sendfile(2) from the file descriptor straight into the TCP socket.
//!
//! Why sendfile rather than splice through a pipe: for file -> socket it is the
//! same zero-copy path (the kernel hands page-cache pages to the socket), in one
//! syscall per chunk, with no pipe to size (so no CAP_SYS_RESOURCE and no
//! fs.pipe-max-size trap, cf. CRIU's own pipe bug) and no pipe to drain on error.
//! An explicit offset leaves the file position alone, so sessions share one fd.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Largest count handed to one sendfile call (the kernel caps at ~2 GiB anyway;
/// smaller chunks keep each call's blocking time short).
const CHUNK: u64 = 1 << 20;

/// Sends `header` and marks more data to follow, so header and pages leave in
/// the same segments once the first sendfile runs.
pub fn send_header(sock: BorrowedFd<'_>, header: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < header.len() {
        let rest = &header[sent..];
        // SAFETY: `rest` is a live slice for the duration of the call and the
        // kernel only reads `rest.len()` bytes from it; `sock` is a valid fd
        // borrowed for this call.
        let n = sent_bytes(|| unsafe { libc::send(sock.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_MORE | libc::MSG_NOSIGNAL) })?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        sent += n;
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `offset` to `sock`. A blocking socket's
/// SO_SNDTIMEO bounds each call; a file shorter than expected is an error.
pub fn send_file_range(sock: BorrowedFd<'_>, file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("file offset {offset:#x} too large")))?;
    let mut left = len;
    while left > 0 {
        let count = left.min(CHUNK) as usize;
        // SAFETY: both fds are valid for the call (borrowed); `off` is a live
        // local the kernel reads and advances; no userspace buffer is involved.
        let n = sent_bytes(|| unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) })?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("pages file ends at {off:#x}, {left} bytes short")));
        }
        left -= n as u64;
    }
    Ok(())
}

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
        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading (send timeout)")
    } else {
        err
    }
}
