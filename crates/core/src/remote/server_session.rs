//! One lazy client connection on the server side: read a header, answer it
//! completely, read the next (strictly sequential, like CRIU's server, so
//! replies come back in request order). Any invalid request ends the session
//! with no reply, which is what a real CRIU page server does too. A reply the
//! client does not take within `reply_timeout` ends the session too: a reader that
//! trickles would otherwise hold its slot, busy, for as long as it likes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::lazy_index::{Invalid, LazyIndex};
use super::server_admission::SessionSlot;
use super::tls::Wire;
use super::wire::{
    IovHeader, WireVersion, MAX_HEADER_LEN, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_GET,
};
use crate::images::PAGE_SIZE;

/// What one session did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub requests: u64,
    pub pages: u64,
    /// Replies that carried fewer pages than asked (end of a run, or the cap).
    pub clamped: u64,
    /// The client sent CLOSE (else it just disconnected, also fine).
    pub closed_by_request: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client {peer}: invalid request ({0}); closing the session", peer = .1)]
    Invalid(Invalid, SocketAddr),
    #[error("client {peer}: unsupported command {cmd:#x} (only PS_IOV_GET and CLOSE in lazy mode); closing the session")]
    Unsupported { peer: SocketAddr, cmd: u32 },
    #[error("client {peer}: {error}; ending the session")]
    Changed { peer: SocketAddr, error: String },
    #[error("client {peer}: {what}: {source}")]
    Io {
        peer: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
}

pub(crate) struct ServerSession<'a> {
    pub stream: Wire,
    pub peer: SocketAddr,
    pub index: &'a LazyIndex,
    pub version: WireVersion,
    pub max_request_pages: u64,
    /// A request begun must be complete within this.
    pub request_timeout: Duration,
    /// A reply must be sent whole within this (the client must read it).
    pub reply_timeout: Duration,
    pub slot: &'a SessionSlot,
}

impl ServerSession<'_> {
    /// Serves until the client closes or sends CLOSE (Ok), or misbehaves (Err).
    /// `stats` is filled as it goes, so a failed session still reports progress.
    pub fn run(&mut self, stats: &mut SessionStats) -> Result<(), SessionError> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let len = self.version.header_len();
        loop {
            self.slot.idle();
            if !self.read_header(&mut buf[..len])? {
                return Ok(());
            }
            self.slot.busy();
            // Cannot fail: the slice has exactly the layout's length.
            let Ok(header) = IovHeader::decode(self.version, &buf[..len]) else {
                return Ok(());
            };
            match header.cmd {
                PS_IOV_GET => self.serve_get(&header, stats)?,
                PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                    self.stream
                        .write_all(&0i32.to_le_bytes())
                        .map_err(|e| self.io("replying to CLOSE", e))?;
                    stats.closed_by_request = true;
                    return Ok(());
                }
                cmd => {
                    return Err(SessionError::Unsupported {
                        peer: self.peer,
                        cmd,
                    })
                }
            }
        }
    }

    fn serve_get(
        &mut self,
        header: &IovHeader,
        stats: &mut SessionStats,
    ) -> Result<(), SessionError> {
        let span = self
            .index
            .locate(
                header.dst_id,
                header.vaddr,
                header.nr_pages,
                self.max_request_pages,
            )
            .map_err(|why| SessionError::Invalid(why, self.peer))?;
        // Cannot fail: the count is clamped to max_request_pages (<= u32::MAX).
        let reply = header
            .get_reply(span.pages)
            .encode(self.version)
            .map_err(|e| {
                self.io(
                    "encoding the reply",
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            })?;
        let what = format!(
            "sending pages for task {} at {:#x} (+{} pages)",
            header.dst_id, header.vaddr, span.pages
        );
        // A pages image changed under us (truncated and regrown reads as zeros) must
        // never go out as pages: checked before the send, and after it, so a change
        // during it ends the session too (`images/watch.rs` says what the lease covers).
        let changed = |e: crate::images::ImageError| SessionError::Changed {
            peer: self.peer,
            error: e.to_string(),
        };
        span.file.check().map_err(changed)?;
        let deadline = Instant::now() + self.reply_timeout;
        self.stream
            .send_reply(
                reply.as_slice(),
                span.file.file(),
                span.offset,
                span.pages * PAGE_SIZE,
                deadline,
            )
            .map_err(|e| {
                let e = match e.kind() {
                    io::ErrorKind::TimedOut if Instant::now() >= deadline => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{e}: not taken within {:?}", self.reply_timeout),
                    ),
                    _ => e,
                };
                self.io(
                    &format!(
                        "{what} from {} at offset {:#x}",
                        span.path.display(),
                        span.offset
                    ),
                    e,
                )
            })?;
        span.file.check().map_err(changed)?;
        stats.requests += 1;
        stats.pages += span.pages;
        if span.pages < header.nr_pages {
            stats.clamped += 1;
        }
        Ok(())
    }

    /// Ok(false) on a clean EOF before the first byte of a header. Waiting for the
    /// first byte is unbounded; the rest must come within `request_timeout`.
    fn read_header(&mut self, buf: &mut [u8]) -> Result<bool, SessionError> {
        let mut got = 0;
        let mut deadline: Option<Instant> = None;
        let result = loop {
            if got == buf.len() {
                break Ok(true);
            }
            if got > 0 {
                let end = *deadline.get_or_insert_with(|| Instant::now() + self.request_timeout);
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{got} of {} bytes in {:?}", buf.len(), self.request_timeout),
                    );
                    break Err(self.io("reading a request header (too slow)", e));
                }
                if let Err(e) = self.stream.socket().set_read_timeout(Some(left)) {
                    break Err(self.io("setting the request deadline", e));
                }
            }
            match self.stream.read(&mut buf[got..]) {
                Ok(0) if got == 0 => break Ok(false),
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("after {got} of {} bytes", buf.len()),
                    );
                    break Err(self.io("reading a request header", e));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The deadline's own timeout: checked at the top of the loop.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && deadline.is_some() => {}
                Err(e) => break Err(self.io("reading a request header", e)),
            }
        };
        // Only a header that came in pieces set a timeout; the next waits unbounded again.
        if deadline.is_some() {
            if let Err(e) = self.stream.socket().set_read_timeout(None) {
                return Err(self.io("clearing the request deadline", e));
            }
        }
        result
    }

    fn io(&self, what: &str, source: io::Error) -> SessionError {
        SessionError::Io {
            peer: self.peer,
            what: what.to_string(),
            source,
        }
    }
}
