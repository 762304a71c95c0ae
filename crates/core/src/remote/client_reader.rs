//! The client's reader thread: takes replies off the socket in wire order and
//! lands their data straight in the waiting request's buffer (one copy, kernel
//! to buffer). Anything out of step or a silent peer is fatal: the message is
//! recorded for every later `pages()` call. A dropped connection is fatal too,
//! unless `reconnect` is set: then the thread reconnects and the book asks
//! again for everything that had not fully arrived.
//!
//! A connection that ends before any reply, right after it was made, was refused:
//! CRIU's protocol has no refusal message, so our page server closes a connection it
//! has no room for before reading anything, and says so only in its log. Such an
//! end is reported as a refusal ("server full?"), not as a drop mid-transfer.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};

use super::tls::Wire;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use super::client::{prepare, Shared};
use super::client_book::Sent;
use super::wire::{IovHeader, CLOSE_REPLY_LEN, MAX_HEADER_LEN};
use crate::images::PAGE_SIZE;

/// Why a read stopped short.
enum Stop {
    /// EOF; `got` bytes of the item had arrived.
    Eof { got: usize },
    /// `shutdown` was set (our own close or drop).
    Shutdown,
    /// The peer sent nothing for `stall_timeout`.
    Stalled(String),
    /// A socket error (reset, ...): the connection is gone.
    Failed(String, io::ErrorKind),
}

/// Why reading replies ended badly.
enum End {
    /// The connection broke (EOF, reset): another one may resume.
    Lost(String),
    Fatal(String),
}

pub(crate) fn run(shared: &Shared, mut stream: Wire) {
    let outcome = loop {
        match read_replies(shared, &mut stream) {
            Ok(()) => break Ok(()),
            Err(End::Lost(why)) if !shared.config.reconnect.is_zero() => {
                match resume(shared, why) {
                    Ok(Some(next)) => stream = next,
                    Ok(None) => break Ok(()),
                    Err(message) => break Err(message),
                }
            }
            Err(End::Lost(message) | End::Fatal(message)) => break Err(message),
        }
    };
    let mut book = shared.lock();
    match outcome {
        Ok(()) => book.closed = true,
        Err(message) => {
            if book.fatal.is_none() {
                book.fatal = Some(message);
            }
        }
    }
    drop(book);
    shared.cond.notify_all();
    shared.wake();
}

/// How often a lost connection is tried again.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// After a lost connection: requeue what was on the wire, then (once some
/// request wants bytes) connect again to the same address until `reconnect`
/// runs out. Ok(None): the session was closed meanwhile.
fn resume(shared: &Shared, why: String) -> Result<Option<Wire>, String> {
    let peer = shared.peer;
    {
        let mut book = shared.lock();
        if book.wire.contains(&Sent::Close) {
            // A CLOSE was under way: there is nothing to resume.
            return Err(why);
        }
        book.lost = true;
        book.requeue();
    }
    shared.cond.notify_all();
    let mut deadline: Option<Instant> = None;
    let mut last = why;
    loop {
        if shared.shutdown.load(SeqCst) {
            return Err(format!(
                "connection to page server {peer} was shut down while reconnecting"
            ));
        }
        let book = shared.lock();
        if book.closed {
            return Ok(None);
        }
        if !book.wants_data() {
            // Idle: the clock runs only while someone waits for pages.
            deadline = None;
            drop(shared.cond.wait_timeout(book, READ_TICK));
            continue;
        }
        drop(book);
        let now = Instant::now();
        let end = *deadline.get_or_insert(now + shared.config.reconnect);
        if now >= end {
            return Err(format!(
                "page server {peer} gone for {} s (last: {last})",
                shared.config.reconnect.as_secs_f64()
            ));
        }
        let attempt = shared
            .config
            .connect_timeout
            .min(end - now)
            .min(Duration::from_secs(1));
        match connect(shared, peer, attempt) {
            Ok((writer, reader)) => {
                shared.adopt(writer);
                return Ok(Some(reader));
            }
            Err(e) => last = e,
        }
        std::thread::sleep(RECONNECT_EVERY);
    }
}

fn connect(shared: &Shared, peer: SocketAddr, timeout: Duration) -> Result<(Wire, Wire), String> {
    let stream = TcpStream::connect_timeout(&peer, timeout.max(Duration::from_millis(1)))
        .map_err(|e| e.to_string())?;
    prepare(stream, peer, &shared.config).map_err(|e| e.to_string())
}

fn read_replies(shared: &Shared, stream: &mut Wire) -> Result<(), End> {
    let peer = shared.peer;
    let hlen = shared.config.version.header_len();
    let mut head = [0u8; MAX_HEADER_LEN];
    let began = Instant::now();
    let mut answered = false;
    loop {
        // Nothing answered and the connection just made: an end now is a refusal.
        let fresh = !answered && began.elapsed() < REFUSED_WITHIN;
        let describe = |stop, what: &str| {
            if fresh {
                refused(shared, stop, what)
            } else {
                describe(shared, stop, what)
            }
        };
        // The first 4 bytes are either a header's cmd or the i32 CLOSE reply;
        // which one is due is known only once they arrive (CLOSE may be sent
        // while this read is already waiting).
        read_full(shared, stream, &mut head[..CLOSE_REPLY_LEN], false)
            .map_err(|s| describe(s, "a reply header"))?;
        answered = true;
        if shared.lock().wire.front() == Some(&Sent::Close) {
            let code = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            shared.lock().wire.pop_front();
            return match code {
                0 => Ok(()),
                _ => Err(End::Fatal(format!(
                    "page server {peer} answered CLOSE with {code}"
                ))),
            };
        }
        read_full(shared, stream, &mut head[CLOSE_REPLY_LEN..hlen], true)
            .map_err(|s| describe(s, "a reply header"))?;
        let reply = IovHeader::decode(shared.config.version, &head[..hlen])
            .map_err(|e| End::Fatal(format!("page server {peer}: {e}")))?;
        let mut landing = shared
            .lock()
            .land(&reply, Instant::now())
            .map_err(|why| End::Fatal(format!("page server {peer} {why}")))?;
        let bytes = (landing.pages * PAGE_SIZE) as usize;
        let start = landing.start;
        let what = format!(
            "{} pages of task {} at {:#x}",
            landing.pages, landing.seg.pid, landing.seg.vaddr
        );
        let read = match landing
            .buf
            .as_mut()
            .and_then(|b| b.get_mut(start..start + bytes))
        {
            Some(dst) => read_full(shared, stream, dst, true),
            None => discard(shared, stream, bytes),
        };
        // Give the buffer back before reporting, so the book stays consistent.
        let mut book = shared.lock();
        book.landed(landing, read.is_ok(), Instant::now());
        drop(book);
        read.map_err(|s| describe(s, &what))?;
        shared.cond.notify_all();
        shared.pump();
        shared.wake();
    }
}

/// Fills `buf`, waking every socket timeout tick to notice shutdown and a
/// peer that went silent with requests outstanding. `partial`: `buf` continues a
/// reply already begun (its header is in, so its request is no longer counted as
/// on the wire), which a silent peer must not leave hanging either.
fn read_full(
    shared: &Shared,
    stream: &mut Wire,
    buf: &mut [u8],
    partial: bool,
) -> Result<(), Stop> {
    let mut got = 0;
    let mut last_byte = Instant::now();
    while got < buf.len() {
        if shared.shutdown.load(SeqCst) {
            return Err(Stop::Shutdown);
        }
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(Stop::Eof { got }),
            Ok(n) => {
                got += n;
                last_byte = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let waiting = partial || got > 0 || shared.lock().on_wire() > 0;
                if waiting && last_byte.elapsed() >= shared.config.stall_timeout {
                    return Err(Stop::Stalled(format!(
                        "sent nothing for {:?}",
                        shared.config.stall_timeout
                    )));
                }
                if !waiting {
                    last_byte = Instant::now();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Stop::Failed(e.to_string(), e.kind())),
        }
    }
    Ok(())
}

/// Reads and drops `len` bytes (data for a request that no longer exists).
fn discard(shared: &Shared, stream: &mut Wire, len: usize) -> Result<(), Stop> {
    let mut sink = [0u8; 16 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(sink.len());
        read_full(shared, stream, &mut sink[..n], true)?;
        left -= n;
    }
    Ok(())
}

/// How soon after connecting a close before any reply counts as a refusal. Our page
/// server cuts an established session for room only after it has been idle a second
/// (`server_admission::MIN_IDLE`); a refusal comes at once.
const REFUSED_WITHIN: Duration = super::server_admission::MIN_IDLE;

/// The connection ended before any reply, right after it was made (or failed).
fn refused(shared: &Shared, stop: Stop, what: &str) -> End {
    let peer = shared.peer;
    let outstanding = shared.lock().on_wire();
    match stop {
        Stop::Eof { got: 0 } | Stop::Failed(_, io::ErrorKind::ConnectionReset) => End::Lost(format!(
            "page server {peer} closed the connection right after connect, before answering anything: it refused us (server full?) ({outstanding} requests unanswered)"
        )),
        // Anything else (a stall, a close mid-reply) is described as what it is.
        stop => describe(shared, stop, what),
    }
}

fn describe(shared: &Shared, stop: Stop, what: &str) -> End {
    let peer = shared.peer;
    let outstanding = shared.lock().on_wire();
    match stop {
        Stop::Eof { got: 0 } if what == "a reply header" => End::Lost(format!(
            "page server {peer} closed the connection ({outstanding} requests unanswered)"
        )),
        Stop::Eof { got } => End::Lost(format!(
            "page server {peer} closed the connection in the middle of {what} ({got} bytes in)"
        )),
        Stop::Shutdown => End::Fatal(format!("connection to page server {peer} was shut down")),
        Stop::Stalled(why) => End::Fatal(format!(
            "page server {peer}: reading {what}: {why} ({outstanding} requests unanswered)"
        )),
        Stop::Failed(why, _) => End::Lost(format!(
            "page server {peer}: reading {what}: {why} ({outstanding} requests unanswered)"
        )),
    }
}

/// Socket read timeout: how often a blocked read looks at the flags.
pub(crate) const READ_TICK: Duration = Duration::from_millis(200);
