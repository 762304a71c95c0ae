//! `RemotePages`: a `PageSource` fetching from a lazy page server over TCP
//! (ours, `criu page-server --lazy-pages`, or `criu dump --lazy-pages`).
//!
//! One connection; GETs are pipelined, replies arrive in request order and a
//! reader thread lands them in per-request buffers. `pages()` asks for a span
//! (unless it is already asked for or arrived), waits a bounded time, and says
//! `Retry` if the bytes are not there yet; the engine asks again later.
//!
//! Faults first on the wire: a CRIU server answers strictly in order, so a
//! fault's GET waits behind every byte already requested. Background GETs are
//! therefore kept within a window of bytes on the wire, by default one sized to
//! keep the link busy with about `queue_target` of data ahead of a fault
//! (`client_window.rs`); fault GETs are sent at once. The engine does not say
//! which calls are faults: `pages()` treats spans of at most
//! `fault_span_pages` pages as faults, and `fetch(.., Priority)` lets a
//! caller say so explicitly.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use super::client_book::Priority;
use super::client_book::{Book, Limits, Sent};
use super::client_reader::{self, READ_TICK};
use super::client_window::Window;
use super::tls::{client_handshake, TlsClient, Wire};
use super::wire::{IovHeader, WireVersion};
use crate::engine::{PageData, PageSource, SourceError};
use crate::images::PAGE_SIZE;

/// Background claim size the daemon uses with a page server unless told otherwise:
/// each claim is one request (one GET while the window has room), and on a fast link
/// the per-request costs of both ends showed: 1 GiB over loopback took 0.45 s with
/// 256-page claims against 0.50 s with 64 (`npm run bench -- --only remote-fast`),
/// and CRIU's own page server (`criu dump --lazy-pages`) 0.73 s against 0.93 s. A fault
/// on a page of a claim in flight waits for that claim, but with read-ahead a claim's
/// bytes have mostly arrived when it is taken, and a fault landing in the one claim
/// under way is rare (256 of a GiB's 262,144 pages).
pub const REMOTE_CHUNK_PAGES: u64 = 256;

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Must match the server's CRIU version (no negotiation on this socket).
    pub version: WireVersion,
    pub connect_timeout: Duration,
    /// How long a fault call waits for its bytes before saying Retry (it blocks
    /// the engine's fault thread, so keep it short).
    pub fault_wait: Duration,
    /// How long a background call waits for room and for its bytes.
    pub background_wait: Duration,
    /// Background bytes on the wire at once: the most a fault queues behind.
    /// `ADAPTIVE_BUDGET` (the default): as few as keep the link busy, found
    /// from the replies' delays (see `queue_target`).
    pub background_budget: u64,
    /// With the adaptive budget: the queueing delay a fault may meet behind
    /// background bytes. Smaller risks leaving the link idle between replies.
    pub queue_target: Duration,
    /// Pages per GET (CRIU's own client asks at most 1024).
    pub max_request_pages: u64,
    /// Bytes of arrived data kept for later calls (and of buffers in total).
    pub cache_bytes: u64,
    /// Outstanding requests with no byte from the server for this long: fatal.
    pub stall_timeout: Duration,
    /// `pages()` calls of at most this many pages count as faults.
    pub fault_span_pages: u64,
    /// A CLOSE not answered within this is given up on.
    pub close_timeout: Duration,
    /// Zero: a dropped connection is fatal (right for CRIU, whose page server
    /// serves one session). Otherwise: reconnect to the same address for up to
    /// this long and ask again for everything not fully arrived.
    pub reconnect: Duration,
    /// Open a second connection for faults (`PrioritySource`), so they never
    /// queue behind background replies. Only for our page server: CRIU's
    /// serves exactly one connection.
    pub urgent_connection: bool,
    /// `--tls`: TLS on every connection (see `tls.rs`).
    pub tls: Option<Arc<TlsClient>>,
    /// Spans background fill announces ahead (`PageSource::read_ahead`); the
    /// background window decides how many of them actually go out. 0: none, one
    /// chunk per round trip.
    pub read_ahead: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            version: WireVersion::V42,
            connect_timeout: Duration::from_secs(10),
            fault_wait: Duration::from_millis(5),
            background_wait: Duration::from_secs(2),
            background_budget: RemoteConfig::ADAPTIVE_BUDGET,
            queue_target: Duration::from_micros(500),
            max_request_pages: 1024,
            cache_bytes: 16 << 20,
            stall_timeout: Duration::from_secs(60),
            fault_span_pages: 1,
            close_timeout: Duration::from_secs(5),
            reconnect: Duration::ZERO,
            urgent_connection: false,
            tls: None,
            read_ahead: 8,
        }
    }
}

impl RemoteConfig {
    /// `background_budget` value that has the client size it from measurements.
    pub const ADAPTIVE_BUDGET: u64 = 0;
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("page server {addr}: cannot resolve: {source}")]
    Resolve { addr: String, source: std::io::Error },
    #[error("page server {addr}: cannot connect: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("page server {addr}: {what}: {source}")]
    Setup { addr: SocketAddr, what: &'static str, source: std::io::Error },
    /// The TLS handshake failed (the message names the peer).
    #[error("{0}")]
    Tls(String),
}

/// State shared by callers and the reader thread.
pub(crate) struct Shared {
    pub peer: SocketAddr,
    pub config: RemoteConfig,
    book: Mutex<Book>,
    pub cond: Condvar,
    /// Serialises "record on the wire" + "write": wire order = queue order.
    writer: Mutex<Wire>,
    pub shutdown: AtomicBool,
}

pub struct RemotePages {
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl RemotePages {
    /// Connects to `addr` ("host:port"; every resolved address is tried, as CRIU does).
    pub fn connect(addr: &str, config: RemoteConfig) -> Result<RemotePages, ConnectError> {
        let addrs: Vec<SocketAddr> =
            addr.to_socket_addrs().map_err(|source| ConnectError::Resolve { addr: addr.to_string(), source })?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, config.connect_timeout) {
                Ok(stream) => return RemotePages::from_stream(stream, config),
                Err(e) => last = e,
            }
        }
        Err(ConnectError::Connect { addr: addr.to_string(), source: last })
    }

    /// Uses an already connected socket (like CRIU's `--ps-socket`).
    pub fn from_stream(stream: TcpStream, config: RemoteConfig) -> Result<RemotePages, ConnectError> {
        let peer = stream.peer_addr().map_err(|source| ConnectError::Setup {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            what: "getpeername",
            source,
        })?;
        let (writer, reader_stream) = prepare(stream, peer, &config)?;
        let window = match config.background_budget {
            RemoteConfig::ADAPTIVE_BUDGET => Window::adaptive(config.queue_target),
            bytes => Window::fixed(bytes),
        };
        let limits = Limits {
            max_request_pages: config.max_request_pages.clamp(1, config.version.max_nr_pages()),
            cache_bytes: config.cache_bytes,
            max_fault_requests: 64,
        };
        let shared = Arc::new(Shared {
            peer,
            config,
            book: Mutex::new(Book::new(limits, window)),
            cond: Condvar::new(),
            writer: Mutex::new(writer),
            shutdown: AtomicBool::new(false),
        });
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("lazy-ps-reader".into())
            .spawn(move || client_reader::run(&s, reader_stream))
            .map_err(|source| ConnectError::Setup { addr: peer, what: "starting the reader thread", source })?;
        Ok(RemotePages { shared, reader: Mutex::new(Some(reader)) })
    }

    /// Every request and the wire, in one line (for test failures).
    pub fn debug_dump(&self) -> String {
        self.shared.lock().debug_dump()
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.shared.config
    }

    /// The fatal error, if the connection already failed: the reader watches the
    /// socket even while nothing is asked, so a drop shows here at once (with
    /// `reconnect`, only once reconnecting gave up).
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// `pages()` with the caller saying whether a thread is blocked on the span.
    pub fn fetch<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        let len64 = len as u64;
        if len == 0 || len64 % PAGE_SIZE != 0 || img_addr % PAGE_SIZE != 0 {
            return Err(SourceError::Other { pid, img_addr, message: format!("bad span length {len:#x}") });
        }
        let s = &self.shared;
        let wait = match priority {
            Priority::Fault => s.config.fault_wait,
            Priority::Background => s.config.background_wait,
        };
        let deadline = Instant::now() + wait;
        let mut book = s.lock();
        // Find or make the requests holding the span, waiting (bounded) for room if need be.
        let parts = loop {
            s.check(&book, pid, img_addr)?;
            let before = book.admitted();
            let parts = book.cover(pid, img_addr, len64, priority);
            if book.admitted() != before {
                // Even when a later part found no room: what was admitted must go out.
                drop(book);
                s.pump();
                book = s.lock();
            }
            if let Some(parts) = parts {
                break parts;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Ok(PageData::Retry) };
            book = s.cond.wait_timeout(book, left).unwrap_or_else(PoisonError::into_inner).0;
        };
        loop {
            s.check(&book, pid, img_addr)?;
            let mut done = true;
            for id in &parts {
                match book.request(*id) {
                    None => return Ok(PageData::Retry),
                    Some(r) => done &= r.done(),
                }
            }
            if done {
                return Ok(match book.take_out(&parts, img_addr, len64, scratch) {
                    Some(start) => PageData::Bytes(&scratch[start..start + len]),
                    None => PageData::Retry,
                });
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Ok(PageData::Retry) };
            book = s.cond.wait_timeout(book, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Ends the session the way CRIU's daemon does: CLOSE, then wait for its
    /// i32 0 (after every outstanding reply). Further `pages()` calls fail.
    pub fn close(&self) -> Result<(), SourceError> {
        let s = &self.shared;
        {
            let mut w = s.write_lock();
            let mut book = s.lock();
            if let Some(message) = &book.fatal {
                return Err(SourceError::Other { pid: 0, img_addr: 0, message: message.clone() });
            }
            if book.closed || book.wire.contains(&Sent::Close) {
                return Ok(());
            }
            // Between connections the server has no session left to close,
            // and `close` comes only once nothing is outstanding.
            if book.lost {
                book.closed = true;
                drop(book);
                s.cond.notify_all();
                return Ok(());
            }
            book.close_sent();
            drop(book);
            let header = IovHeader::close().encode(s.config.version).map_err(|e| s.fail(e.to_string()))?;
            w.write_all(header.as_slice()).map_err(|e| s.fail(format!("page server {}: sending CLOSE: {e}", s.peer)))?;
        }
        let deadline = Instant::now() + s.config.close_timeout;
        let mut book = s.lock();
        while !book.closed && book.fatal.is_none() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(s.fail(format!("page server {} did not answer CLOSE within {:?}", s.peer, s.config.close_timeout)));
            };
            book = s.cond.wait_timeout(book, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        match &book.fatal {
            Some(message) => Err(SourceError::Other { pid: 0, img_addr: 0, message: message.clone() }),
            None => Ok(()),
        }
    }
}

/// Socket options (and TLS) for a (re)connected stream; returns the writer's
/// and the reader's handles.
pub(crate) fn prepare(stream: TcpStream, peer: SocketAddr, config: &RemoteConfig) -> Result<(Wire, Wire), ConnectError> {
    let setup = |what, r: std::io::Result<()>| r.map_err(|source| ConnectError::Setup { addr: peer, what, source });
    setup("TCP_NODELAY", stream.set_nodelay(true))?;
    let wire = match &config.tls {
        Some(tls) => client_handshake(stream, tls, peer).map_err(ConnectError::Tls)?,
        None => Wire::Plain(stream),
    };
    let stream = wire.socket();
    setup("read timeout", stream.set_read_timeout(Some(READ_TICK)))?;
    setup("write timeout", stream.set_write_timeout(Some(config.stall_timeout.max(Duration::from_millis(1)))))?;
    let reader = wire.try_clone().map_err(|source| ConnectError::Setup { addr: peer, what: "dup", source })?;
    Ok((wire, reader))
}

/// What `pages()` takes a call of `len` bytes for (the engine does not say).
pub(crate) fn priority_of(config: &RemoteConfig, len: usize) -> Priority {
    let fault = (len as u64) <= config.fault_span_pages.saturating_mul(PAGE_SIZE);
    if fault { Priority::Fault } else { Priority::Background }
}

impl PageSource for RemotePages {
    fn pages<'a>(&'a self, pid: u32, img_addr: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<PageData<'a>, SourceError> {
        self.fetch(pid, img_addr, len, scratch, priority_of(&self.shared.config, len))
    }

    /// Background GETs for the spans, as far as the background window has room
    /// (so a fault still queues behind at most about `queue_target` of them);
    /// never waits. Later `pages()` calls find them on the wire or arrived.
    fn will_need(&self, pid: u32, spans: &[(u64, usize)]) {
        let s = &self.shared;
        let mut book = s.lock();
        if book.fatal.is_some() || book.closed {
            return;
        }
        let admitted = book.admit_ahead(pid, spans);
        drop(book);
        if admitted {
            s.pump();
        }
    }

    fn read_ahead(&self) -> usize {
        self.shared.config.read_ahead
    }
}

impl Drop for RemotePages {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        let mut w = self.shared.write_lock();
        w.close_notify();
        let _ = w.shutdown(std::net::Shutdown::Both);
        drop(w);
        self.shared.cond.notify_all();
        if let Some(reader) = self.reader.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = reader.join();
        }
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lock(&self) -> MutexGuard<'_, Wire> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends whatever the book allows now, in the order it recorded it.
    pub fn pump(&self) {
        let mut w = self.write_lock();
        let segs = self.lock().plan_sends(Instant::now());
        if segs.is_empty() {
            return;
        }
        let mut bytes = Vec::with_capacity(segs.len() * self.config.version.header_len());
        for seg in &segs {
            match seg.header().encode(self.config.version) {
                Ok(h) => bytes.extend_from_slice(h.as_slice()),
                // Cannot happen: segments are capped to the layout's maximum.
                Err(e) => return drop(self.fail(format!("page server {}: {e}", self.peer))),
            }
        }
        if let Err(e) = w.write_all(&bytes) {
            if self.config.reconnect.is_zero() {
                drop(self.fail(format!("page server {}: sending {} requests: {e}", self.peer, segs.len())));
            } else {
                // Make sure the reader sees the loss too; it reconnects and
                // sends these again.
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// A new connection is up: from now on requests go to it.
    pub fn adopt(&self, stream: Wire) {
        let mut w = self.write_lock();
        *w = stream;
        self.lock().lost = false;
        drop(w);
        self.cond.notify_all();
        self.pump();
    }

    /// Records a fatal error (the first one wins) and wakes every waiter.
    fn fail(&self, message: String) -> SourceError {
        let mut book = self.lock();
        let message = book.fatal.get_or_insert(message).clone();
        drop(book);
        self.cond.notify_all();
        SourceError::Other { pid: 0, img_addr: 0, message }
    }

    fn check(&self, book: &Book, pid: u32, img_addr: u64) -> Result<(), SourceError> {
        if let Some(message) = &book.fatal {
            return Err(SourceError::Other { pid, img_addr, message: message.clone() });
        }
        if book.closed {
            return Err(SourceError::Other { pid, img_addr, message: format!("the session with page server {} is closed", self.peer) });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The engine's fault clusters span up to its fault_pages; the daemon sets
    // fault_span_pages to match, and a whole cluster must skip the window.
    #[test]
    fn a_fault_cluster_up_to_the_span_is_a_fault() {
        let config = RemoteConfig { fault_span_pages: 4, ..RemoteConfig::default() };
        let page = PAGE_SIZE as usize;
        assert_eq!(priority_of(&config, page), Priority::Fault);
        assert_eq!(priority_of(&config, 4 * page), Priority::Fault);
        assert_eq!(priority_of(&config, 5 * page), Priority::Background);
        assert_eq!(priority_of(&RemoteConfig::default(), 2 * page), Priority::Background);
    }
}
