//! `PageServer`: serves the lazy pages of a normal dump over TCP, speaking what
//! `criu page-server --lazy-pages` speaks, so a real `criu lazy-pages
//! --page-server` (or our `RemotePages`) can fetch from it.
//!
//! Unlike CRIU it validates every request (an unknown pid or a non-lazy address
//! ends that session instead of crashing or hanging the server) and can serve
//! many sessions (`keep_serving`), one thread each, so one dump can feed several
//! restores. Even without it, one client may open several connections (a
//! bulk and an urgent one, see `PrioritySource`). Memory use does not depend on the image size: page data goes from
//! the pages file to the socket with sendfile.
//!
//! Hostile or idle peers cannot lock real clients out: a request must be complete
//! within `request_timeout` of its first byte and a reply taken within
//! `reply_timeout`, one address holds at most `max_sessions_per_peer` sessions,
//! when every slot is taken the session waiting longest on its client (idle, else
//! not draining a reply) makes room, and with `--tls` connections still in their
//! handshake have a bound of their own, so they never take an authenticated
//! client's place (`server_admission.rs`). A connection refused is closed before
//! anything is read from it (CRIU's protocol has no refusal message; our client
//! tells such a close from a drop) and the event says why ("server full (N
//! sessions...)").
//!
//! The process must ignore SIGPIPE (Rust binaries and Node both do): sendfile
//! to a socket whose peer vanished raises it and has no MSG_NOSIGNAL.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::lazy_index::LazyIndex;
use super::server_admission::{Admission, Limits, SessionSlot};
use super::server_session::{ServerSession, SessionStats};
use super::tls::{server_handshake, TlsServer, Wire};
use super::wire::WireVersion;
use crate::images::Dump;

/// How often the accept loop looks at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// Without `keep_serving`: connections at once from the one client (its bulk
/// and urgent connections, plus room for a reconnect racing the old one).
const ONE_CLIENT_SESSIONS: usize = 4;

#[derive(Debug, Clone)]
pub struct PageServerConfig {
    /// Default 0.0.0.0, like CRIU.
    pub address: IpAddr,
    /// 0 = ephemeral; see `PageServer::local_addr`.
    pub port: u16,
    pub version: WireVersion,
    /// false: serve one client then stop (CRIU's behaviour): while its first
    /// session lasts, further connections from the same IP (our client's
    /// urgent connection) are served too; the server stops when all end. The
    /// client is the first to authenticate (`--tls`: a peer failing its
    /// handshake before it is turned away, and the server serves on).
    pub keep_serving: bool,
    /// Replies carry at most this many pages (CRIU's client asks <= 1024).
    pub max_request_pages: u64,
    /// Sessions served at once; when all are taken, the longest-idle session
    /// (idle >= 1 s), else the one longest on a reply its client does not drain
    /// (>= 1 s), is cut to make room, else the new one is closed at accept.
    pub max_sessions: usize,
    /// Sessions one peer address may hold at once.
    pub max_sessions_per_peer: usize,
    /// `--tls`: connections still in their handshake, from any address, counted
    /// apart from sessions; at the bound the oldest is cut for a new one.
    pub max_handshakes: usize,
    /// A request must be complete within this of its first byte (a client trickling
    /// its header is cut). Waiting for a request is not bounded: clients connect long
    /// before they ask (a daemon waiting for `criu restore`, `--fill-delay`).
    pub request_timeout: Duration,
    /// A client that reads nothing for this long is dropped.
    pub send_timeout: Duration,
    /// A reply must be taken whole within this: a client reading too slowly (a
    /// tiny receive buffer drained a trickle at a time) is dropped.
    pub reply_timeout: Duration,
    /// `--tls`: each session starts with a TLS handshake (see `tls.rs`); a
    /// client that fails it ends that session only.
    pub tls: Option<Arc<TlsServer>>,
}

impl Default for PageServerConfig {
    fn default() -> Self {
        PageServerConfig {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            version: WireVersion::V42,
            keep_serving: false,
            max_request_pages: 1024,
            max_sessions: 64,
            max_sessions_per_peer: 32,
            max_handshakes: 64,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ServerEvent {
    SessionStarted {
        peer: SocketAddr,
    },
    /// `error` is None for a clean end (CLOSE or EOF).
    SessionEnded {
        peer: SocketAddr,
        stats: SessionStats,
        error: Option<String>,
    },
    /// Turned away at accept (too many sessions, or socket setup failed).
    Refused {
        peer: SocketAddr,
        reason: String,
    },
}

pub type ServerCallback = Arc<dyn Fn(ServerEvent) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("page server: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("page server on {addr}: {what}: {source}")]
    Io {
        addr: SocketAddr,
        what: &'static str,
        source: io::Error,
    },
    #[error("page server: {0}")]
    Images(io::Error),
}

/// Totals over every session, returned when the server stops. A session is an
/// authenticated connection (with `--tls`, one whose handshake succeeded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeSummary {
    pub sessions: u64,
    pub failed_sessions: u64,
    /// `--tls`: connections that never became a session (a failed, stalled or cut
    /// handshake, or refused after it).
    pub rejected: u64,
    pub requests: u64,
    pub pages: u64,
}

pub struct PageServer {
    listener: TcpListener,
    local: SocketAddr,
    index: Arc<LazyIndex>,
    config: PageServerConfig,
    events: ServerCallback,
    stop: Arc<AtomicBool>,
}

/// Stops a running server from another thread: no new sessions, live ones cut.
#[derive(Clone)]
pub struct ServerStopper(Arc<AtomicBool>);

impl ServerStopper {
    pub fn stop(&self) {
        self.0.store(true, SeqCst);
    }
}

impl PageServer {
    /// Opens the pages files and listens. Nothing is served until `run`.
    pub fn bind(
        dump: &Dump,
        config: PageServerConfig,
        events: ServerCallback,
    ) -> Result<PageServer, ServerError> {
        let index = Arc::new(LazyIndex::build(dump).map_err(ServerError::Images)?);
        let addr = SocketAddr::new(config.address, config.port);
        // std sets SO_REUSEADDR on Unix, as CRIU does.
        let listener =
            TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| ServerError::Io {
            addr,
            what: "getsockname",
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Io {
                addr: local,
                what: "setting the listener non-blocking",
                source,
            })?;
        Ok(PageServer {
            listener,
            local,
            index,
            config,
            events,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Pids the server can serve (live tasks with lazy data).
    pub fn pids(&self) -> Vec<u32> {
        self.index.pids()
    }

    pub fn stopper(&self) -> ServerStopper {
        ServerStopper(self.stop.clone())
    }

    /// Serves until stopped, or, without `keep_serving`, until the first
    /// client's sessions have all ended (other clients are refused meanwhile).
    pub fn run(self) -> Result<ServeSummary, ServerError> {
        let totals = Arc::new(Totals::default());
        let one_client = !self.config.keep_serving;
        let limits = Limits {
            max_sessions: self.config.max_sessions,
            max_per_peer: if one_client {
                ONE_CLIENT_SESSIONS
            } else {
                self.config.max_sessions_per_peer
            },
            max_handshakes: self.config.max_handshakes,
            one_client,
        };
        let live = Arc::new(Mutex::new(Admission::new(limits)));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        let result = loop {
            if self.stop.load(SeqCst) {
                break Ok(());
            }
            // One client: done once it was chosen and every connection has ended.
            let chosen = lock(&live).client_chosen();
            if one_client && chosen {
                threads.retain(|t| !t.is_finished());
                if threads.is_empty() {
                    break Ok(());
                }
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(conn) => conn,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    wait_readable(&self.listener, TICK);
                    continue;
                }
                // Per-connection failures (ECONNABORTED, EMFILE...) must not stop a server.
                Err(e) if (self.config.keep_serving || chosen) && is_transient(&e) => {
                    std::thread::sleep(TICK);
                    continue;
                }
                Err(source) => {
                    break Err(ServerError::Io {
                        addr: self.local,
                        what: "accept",
                        source,
                    })
                }
            };
            threads.retain(|t| !t.is_finished());
            if let Err(e) = self.prepare(&stream) {
                (self.events)(ServerEvent::Refused {
                    peer,
                    reason: format!("socket setup failed: {e}"),
                });
                continue;
            }
            let clone = match stream.try_clone() {
                Ok(clone) => clone,
                Err(e) => {
                    (self.events)(ServerEvent::Refused {
                        peer,
                        reason: format!("socket setup failed: {e}"),
                    });
                    continue;
                }
            };
            // With TLS nobody is known until the handshake ends: the connection
            // waits among the handshakes, and becomes a session after it.
            let authenticated = self.config.tls.is_none();
            let slot = {
                let mut admission = lock(&live);
                let admitted = if authenticated {
                    admission.admit(peer.ip())
                } else {
                    admission.admit_handshake(peer.ip())
                };
                if let Err(why) = admitted {
                    drop(admission);
                    // Dropped unread: the client sees the close before any reply.
                    drop((stream, clone));
                    (self.events)(ServerEvent::Refused {
                        peer,
                        reason: why.to_string(),
                    });
                    continue;
                }
                next_id += 1;
                admission.insert(next_id, clone, peer.ip(), authenticated)
            };
            let job = SessionJob {
                slot,
                id: next_id,
                stream: Some(stream),
                peer,
                authenticated,
                index: self.index.clone(),
                config: self.config.clone(),
                events: self.events.clone(),
                totals: totals.clone(),
                live: live.clone(),
            };
            match std::thread::Builder::new()
                .name("lazy-ps-session".into())
                .spawn(move || job.run())
            {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    (self.events)(ServerEvent::Refused {
                        peer,
                        reason: format!("cannot start a thread: {e}"),
                    });
                    if let Some(s) = lock(&live).remove(next_id) {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    continue;
                }
            }
        };
        drop(self.listener);
        wait_sessions(&self.stop, threads, &live);
        result.map(|()| totals.summary())
    }

    fn prepare(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(self.config.send_timeout.max(Duration::from_millis(1))))
    }
}

/// Waits for the session threads; once stopped, cuts the live sessions (an
/// idle client would otherwise hold its thread, and this wait, forever).
fn wait_sessions(stop: &AtomicBool, mut threads: Vec<JoinHandle<()>>, live: &Mutex<Admission>) {
    loop {
        threads.retain(|t| !t.is_finished());
        if threads.is_empty() {
            return;
        }
        if stop.load(SeqCst) {
            lock(live).cut_all();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct SessionJob {
    slot: Arc<SessionSlot>,
    id: u64,
    /// Taken when the session starts.
    stream: Option<TcpStream>,
    peer: SocketAddr,
    /// Plain TCP: from the start; TLS: once the handshake succeeded and admission
    /// took it as a session.
    authenticated: bool,
    index: Arc<LazyIndex>,
    config: PageServerConfig,
    events: ServerCallback,
    totals: Arc<Totals>,
    live: Arc<Mutex<Admission>>,
}

impl SessionJob {
    fn run(mut self) {
        (self.events)(ServerEvent::SessionStarted { peer: self.peer });
        let mut stats = SessionStats::default();
        let Some(sock) = self.stream.take() else {
            return;
        };
        let stream = match &self.config.tls {
            None => Ok(Wire::Plain(sock)),
            // On this session's thread: a stalled handshake holds up no one else.
            Some(tls) => server_handshake(sock, tls, self.peer),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) if self.slot.evicted() => {
                let why = format!(
                    "client {}: TLS handshake cut: {} handshakes under way, the oldest made room",
                    self.peer, self.config.max_handshakes
                );
                return self.end(stats, Some(why));
            }
            Err(error) => return self.end(stats, Some(error)),
        };
        if !self.authenticated {
            if let Err(why) = lock(&self.live).authenticate(self.id) {
                // Nothing was read past the handshake: the client sees a close before any reply.
                let mut stream = stream;
                stream.close_notify();
                return self.end(
                    stats,
                    Some(format!(
                        "client {}: refused after the TLS handshake: {why}",
                        self.peer
                    )),
                );
            }
            self.authenticated = true;
        }
        let mut session = ServerSession {
            stream,
            peer: self.peer,
            index: &self.index,
            version: self.config.version,
            max_request_pages: self.config.max_request_pages,
            request_timeout: self.config.request_timeout,
            reply_timeout: self.config.reply_timeout,
            slot: &self.slot,
        };
        let mut error = session.run(&mut stats).err().map(|e| e.to_string());
        if error.is_none() {
            session.stream.close_notify();
        }
        drop(session);
        if self.slot.evicted() {
            let why = if error
                .as_deref()
                .is_some_and(|e| e.contains("sending pages"))
            {
                "not draining a reply"
            } else {
                "idle"
            };
            error = Some(format!("client {}: {why} while every session slot was taken: closed to make room for a new client", self.peer));
        }
        self.end(stats, error);
    }

    fn end(&self, stats: SessionStats, error: Option<String>) {
        lock(&self.live).remove(self.id);
        if self.authenticated {
            self.totals.add(&stats, error.is_some());
        } else {
            self.totals.rejected.fetch_add(1, SeqCst);
        }
        (self.events)(ServerEvent::SessionEnded {
            peer: self.peer,
            stats,
            error,
        });
    }
}

#[derive(Default)]
struct Totals {
    sessions: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    requests: AtomicU64,
    pages: AtomicU64,
}

impl Totals {
    fn add(&self, stats: &SessionStats, failed: bool) {
        self.sessions.fetch_add(1, SeqCst);
        self.failed.fetch_add(u64::from(failed), SeqCst);
        self.requests.fetch_add(stats.requests, SeqCst);
        self.pages.fetch_add(stats.pages, SeqCst);
    }

    fn summary(&self) -> ServeSummary {
        ServeSummary {
            sessions: self.sessions.load(SeqCst),
            failed_sessions: self.failed.load(SeqCst),
            rejected: self.rejected.load(SeqCst),
            requests: self.requests.load(SeqCst),
            pages: self.pages.load(SeqCst),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
        )
    )
}

/// Sleeps until the listener has a connection or `tick` passed.
fn wait_readable(listener: &TcpListener, tick: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(tick.as_millis()).unwrap_or(u16::MAX);
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
