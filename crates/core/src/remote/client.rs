//! `RemotePages`: a `PageSource` fetching from a lazy page server over TCP
//! (ours, `criu page-server --lazy-pages`, or `criu dump --lazy-pages`).
//!
//! One connection; GETs are pipelined, replies arrive in request order and a
//! reader thread lands them in per-request buffers; a writer thread sends what the
//! book plans, so no caller ever blocks on the socket. `pages()` never waits
//! (`engine/source.rs`): it asks for a span (unless it is already asked for or
//! arrived) and answers `Pending` until its bytes are in; the reader calls the
//! engine's waker after every reply it lands, and on failure.
//!
//! Faults first on the wire: a CRIU server answers strictly in order, so a
//! fault's GET waits behind every byte already requested. Background GETs are
//! therefore kept within a window of bytes on the wire, sized to keep the link
//! busy and little more (`client_window.rs`); fault GETs are sent at once, and a
//! fault on a span background already asked for promotes the part not yet sent
//! instead of asking twice (`client_book.rs`). Callers say which they are
//! (`Priority`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client_book::{Book, Limits, Sent};
use super::client_reader::{self, READ_TICK};
use super::client_window::Window;
use super::tls::{client_handshake, TlsClient, Wire};
use super::wire::{IovHeader, WireVersion};
pub use crate::engine::Priority;
use crate::engine::{PageData, PageSource, SourceError, Waker};
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
    /// Background bytes on the wire at once: the most a fault queues behind.
    /// `ADAPTIVE_BUDGET` (the default): about one bandwidth-delay product, measured
    /// (`client_window.rs`).
    pub background_budget: u64,
    /// With the adaptive budget: the queue kept on top of the bandwidth-delay
    /// product (and the path's jitter), so the link never waits for a GET; a fault
    /// waits about a round trip plus this.
    pub queue_target: Duration,
    /// Pages per GET (CRIU's own client asks at most 1024).
    pub max_request_pages: u64,
    /// Bytes of arrived data kept for later calls (and of buffers in total).
    pub cache_bytes: u64,
    /// Outstanding requests with no byte from the server for this long: fatal.
    pub stall_timeout: Duration,
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
    /// Bytes background fill announces ahead (`PageSource::read_ahead_bytes`) at
    /// least; more while the window is larger. The background window decides how
    /// many of them actually go out. 0: none, one chunk per round trip.
    pub read_ahead: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            version: WireVersion::V42,
            connect_timeout: Duration::from_secs(10),
            background_budget: RemoteConfig::ADAPTIVE_BUDGET,
            queue_target: Duration::from_micros(500),
            max_request_pages: 1024,
            cache_bytes: 16 << 20,
            stall_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            reconnect: Duration::ZERO,
            urgent_connection: false,
            tls: None,
            read_ahead: 8 << 20,
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
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("page server {addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("page server {addr}: {what}: {source}")]
    Setup {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
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
    /// The engine's waker (`PageSource::set_waker`).
    waker: Mutex<Option<Waker>>,
    /// A send plan is due (`pump`); the writer thread takes it. Callers never write
    /// to the socket themselves: a peer that stops reading would block them there,
    /// and one of them is the engine's fault thread.
    send_due: Mutex<bool>,
    send_cond: Condvar,
    /// A second handle on the current socket, to shut it down from `drop` while the
    /// writer may be blocked in a write holding `writer`.
    kill: Mutex<Option<TcpStream>>,
}

pub struct RemotePages {
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RemotePages {
    /// Connects to `addr` ("host:port"; every resolved address is tried, as CRIU does).
    pub fn connect(addr: &str, config: RemoteConfig) -> Result<RemotePages, ConnectError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ConnectError::Resolve {
                addr: addr.to_string(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, config.connect_timeout) {
                Ok(stream) => return RemotePages::from_stream(stream, config),
                Err(e) => last = e,
            }
        }
        Err(ConnectError::Connect {
            addr: addr.to_string(),
            source: last,
        })
    }

    /// Uses an already connected socket (like CRIU's `--ps-socket`).
    pub fn from_stream(
        stream: TcpStream,
        config: RemoteConfig,
    ) -> Result<RemotePages, ConnectError> {
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
            max_request_pages: config
                .max_request_pages
                .clamp(1, config.version.max_nr_pages()),
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
            waker: Mutex::new(None),
            send_due: Mutex::new(false),
            send_cond: Condvar::new(),
            kill: Mutex::new(None),
        });
        shared.keep_kill_switch(&shared.write_lock());
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("lazy-ps-writer".into())
            .spawn(move || s.run_writer())
            .map_err(|source| ConnectError::Setup {
                addr: peer,
                what: "starting the writer thread",
                source,
            })?;
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("lazy-ps-reader".into())
            .spawn(move || client_reader::run(&s, reader_stream))
            .map_err(|source| ConnectError::Setup {
                addr: peer,
                what: "starting the reader thread",
                source,
            })?;
        Ok(RemotePages {
            shared,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
        })
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

    /// The bytes of a span if they are in, else `Pending` (having asked for them,
    /// or promoted them for a fault, as far as the limits allow now). Never waits.
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
            return Err(SourceError::Other {
                pid,
                img_addr,
                message: format!("bad span length {len:#x}"),
            });
        }
        let s = &self.shared;
        let mut book = s.lock();
        s.check(&book, pid, img_addr)?;
        let parts = s.cover(&mut book, pid, img_addr, len64, priority);
        // No room now: a landing frees some, and wakes the engine to ask again.
        let Some(parts) = parts else {
            return Ok(PageData::Pending);
        };
        Ok(match book.take_out(&parts, img_addr, len64, scratch) {
            Some(start) => PageData::Bytes(&scratch[start..start + len]),
            None => PageData::Pending,
        })
    }

    /// Waits (up to `timeout`) until [img_addr, img_addr + len) of `pid` is in, asking
    /// for it at `priority`; then `fetch` returns its bytes. For tools and tests: the
    /// engine never waits on a source.
    pub fn wait_for(
        &self,
        pid: u32,
        img_addr: u64,
        len: usize,
        priority: Priority,
        timeout: Duration,
    ) -> Result<bool, SourceError> {
        let s = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut book = s.lock();
        loop {
            s.check(&book, pid, img_addr)?;
            let parts = s.cover(&mut book, pid, img_addr, len as u64, priority);
            if parts.is_some_and(|p| book.span_ready(&p, img_addr, len as u64) == Some(true)) {
                return Ok(true);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(false);
            };
            book = s
                .cond
                .wait_timeout(book, left.min(READ_TICK))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
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
                return Err(SourceError::Other {
                    pid: 0,
                    img_addr: 0,
                    message: message.clone(),
                });
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
            let header = IovHeader::close()
                .encode(s.config.version)
                .map_err(|e| s.fail(e.to_string()))?;
            w.write_all(header.as_slice())
                .map_err(|e| s.fail(format!("page server {}: sending CLOSE: {e}", s.peer)))?;
        }
        let deadline = Instant::now() + s.config.close_timeout;
        let mut book = s.lock();
        while !book.closed && book.fatal.is_none() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(s.fail(format!(
                    "page server {} did not answer CLOSE within {:?}",
                    s.peer, s.config.close_timeout
                )));
            };
            book = s
                .cond
                .wait_timeout(book, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        match &book.fatal {
            Some(message) => Err(SourceError::Other {
                pid: 0,
                img_addr: 0,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Socket options (and TLS) for a (re)connected stream; returns the writer's
/// and the reader's handles.
pub(crate) fn prepare(
    stream: TcpStream,
    peer: SocketAddr,
    config: &RemoteConfig,
) -> Result<(Wire, Wire), ConnectError> {
    let setup = |what, r: std::io::Result<()>| {
        r.map_err(|source| ConnectError::Setup {
            addr: peer,
            what,
            source,
        })
    };
    setup("TCP_NODELAY", stream.set_nodelay(true))?;
    let wire = match &config.tls {
        Some(tls) => client_handshake(stream, tls, peer).map_err(ConnectError::Tls)?,
        None => Wire::Plain(stream),
    };
    let stream = wire.socket();
    setup("read timeout", stream.set_read_timeout(Some(READ_TICK)))?;
    setup(
        "write timeout",
        stream.set_write_timeout(Some(config.stall_timeout.max(Duration::from_millis(1)))),
    )?;
    let reader = wire.try_clone().map_err(|source| ConnectError::Setup {
        addr: peer,
        what: "dup",
        source,
    })?;
    Ok((wire, reader))
}

impl PageSource for RemotePages {
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        self.fetch(pid, img_addr, len, scratch, priority)
    }

    fn set_waker(&self, waker: Waker) {
        *self
            .shared
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    fn hurry(&self, pid: u32, img_addr: u64, len: usize) {
        let s = &self.shared;
        let promoted = s.lock().promote(pid, img_addr, len as u64);
        if promoted {
            s.pump();
        }
    }

    /// Background GETs for the spans, as far as the background window has room
    /// (so a fault still queues behind about a round trip's worth of them);
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

    /// At least the configured read-ahead, and the window whenever it is larger, so
    /// read-ahead never leaves a long path idle.
    fn read_ahead_bytes(&self) -> u64 {
        match self.shared.config.read_ahead {
            0 => 0,
            at_least => at_least.max(self.shared.lock().window_bytes()),
        }
    }
}

impl Drop for RemotePages {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        // First through the spare handle: the writer may be blocked in a write.
        if let Some(sock) = self
            .shared
            .kill
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        self.shared.send_cond.notify_all();
        if let Some(writer) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = writer.join();
        }
        let mut w = self.shared.write_lock();
        w.close_notify();
        let _ = w.shutdown(std::net::Shutdown::Both);
        drop(w);
        self.shared.cond.notify_all();
        if let Some(reader) = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
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

    /// `Book::cover`, then a send plan if that asked for or promoted anything (even when
    /// a later part found no room: what was admitted must go out).
    fn cover(
        &self,
        book: &mut Book,
        pid: u32,
        addr: u64,
        len: u64,
        priority: Priority,
    ) -> Option<Vec<u64>> {
        let before = (book.admitted(), book.urgent_parts());
        let parts = book.cover(pid, addr, len, priority);
        if (book.admitted(), book.urgent_parts()) != before {
            self.pump();
        }
        parts
    }

    /// Asks the writer thread to send whatever the book allows now. Never blocks.
    pub fn pump(&self) {
        *self.send_due.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.send_cond.notify_one();
    }

    /// The writer thread: sends each time a plan is due, until shutdown.
    fn run_writer(&self) {
        loop {
            let mut due = self.send_due.lock().unwrap_or_else(PoisonError::into_inner);
            while !*due && !self.shutdown.load(SeqCst) {
                due = self
                    .send_cond
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if self.shutdown.load(SeqCst) {
                return;
            }
            *due = false;
            drop(due);
            self.send_now();
        }
    }

    /// Keeps a handle on `wire`'s socket for `drop`.
    fn keep_kill_switch(&self, wire: &Wire) {
        *self.kill.lock().unwrap_or_else(PoisonError::into_inner) = wire.socket().try_clone().ok();
    }

    /// Sends whatever the book allows now, in the order it recorded it.
    fn send_now(&self) {
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
                drop(self.fail(format!(
                    "page server {}: sending {} requests: {e}",
                    self.peer,
                    segs.len()
                )));
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
        self.keep_kill_switch(&stream);
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
        self.wake();
        SourceError::Other {
            pid: 0,
            img_addr: 0,
            message,
        }
    }

    /// Something completed (or failed): wakes the engine to ask again.
    pub fn wake(&self) {
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(waker) = waker {
            waker();
        }
    }

    fn check(&self, book: &Book, pid: u32, img_addr: u64) -> Result<(), SourceError> {
        if let Some(message) = &book.fatal {
            return Err(SourceError::Other {
                pid,
                img_addr,
                message: message.clone(),
            });
        }
        if book.closed {
            return Err(SourceError::Other {
                pid,
                img_addr,
                message: format!("the session with page server {} is closed", self.peer),
            });
        }
        Ok(())
    }
}
