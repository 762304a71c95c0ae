//! Who gets a session slot of the page server, and who gives one up.
//!
//! Owns the table of live connections: each one's stream (to cut it), peer address,
//! whether it is authenticated, and its `SessionSlot` (idle or serving, and since
//! when). With `--tls` a connection is unauthenticated until its handshake ends; plain
//! TCP connections are authenticated at accept (there is nothing else to check).
//!
//! Promises:
//! * authenticated sessions: one peer address never holds more than `max_per_peer`,
//!   and there are at most `max_sessions`; when every slot is taken, the session that
//!   has waited longest for its client (idle for a request, at least `MIN_IDLE`; else
//!   a reply the client has not drained for `MIN_STUCK`) is cut to make room, so idle,
//!   trickling or slowly-reading connections cannot lock real clients out;
//! * unauthenticated connections never count against authenticated clients: they
//!   have their own bound (`max_handshakes`, any address), and when it is reached the
//!   oldest is cut (it had the longest to finish its handshake);
//! * one-client servers (no `keep_serving`) pick their client at its first
//!   authenticated session, so a peer failing the handshake first changes nothing.
//!
//! What may go wrong: under a flood from many addresses, an idle legitimate client
//! (a restore not yet started, a `--fill-delay`), or one whose link is so slow that a
//! reply takes longer than `MIN_STUCK`, may be cut; our client resumes with
//! `--reconnect`. A flood of handshakes may cut a real client's handshake: it is
//! refused and retries under `--reconnect` like any lost connection.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A session idle for less than this is never cut: a client between two requests of
/// a transfer is busy, not idle.
pub const MIN_IDLE: Duration = Duration::from_secs(1);

/// A reply still going out after this long is waiting on its reader: such a session
/// may be cut when the server is full (idle ones go first). A full-size reply (4 MiB)
/// takes this long only below about 32 Mbit/s.
pub const MIN_STUCK: Duration = Duration::from_secs(1);

/// Set in `SessionSlot::since` while a request is being served.
const SERVING: u64 = 1 << 63;

/// One session's state, shared by its thread and the acceptor.
#[derive(Debug)]
pub struct SessionSlot {
    epoch: Instant,
    /// Milliseconds since `epoch` when the session last became idle (accept or the
    /// end of a reply) or began serving a request, with `SERVING` set while serving.
    /// One word, so the acceptor never reads a state with another state's time.
    since: AtomicU64,
    evicted: AtomicBool,
}

impl SessionSlot {
    fn new(epoch: Instant) -> Self {
        let slot = SessionSlot {
            epoch,
            since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
        };
        slot.idle();
        slot
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 & !SERVING
    }

    /// Waiting for the next request (or for the rest of one).
    pub fn idle(&self) {
        self.since.store(self.now(), SeqCst);
    }

    /// A complete request is in: serving it (until `idle` again).
    pub fn busy(&self) {
        self.since.store(self.now() | SERVING, SeqCst);
    }

    /// Cut by the acceptor to make room; the session reports why it ended.
    pub fn evicted(&self) -> bool {
        self.evicted.load(SeqCst)
    }

    /// How long the session has waited on its client, if long enough to be cut for
    /// room: (true, d) idle for a request, (false, d) a reply not drained. Idle ranks
    /// first: a client reading a reply, even slowly, is at least taking pages.
    fn waiting(&self) -> Option<(bool, Duration)> {
        let since = self.since.load(SeqCst);
        let for_ = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(since & !SERVING));
        match since & SERVING {
            0 => (for_ >= MIN_IDLE).then_some((true, for_)),
            _ => (for_ >= MIN_STUCK).then_some((false, for_)),
        }
    }
}

struct Live {
    stream: TcpStream,
    ip: IpAddr,
    authenticated: bool,
    slot: Arc<SessionSlot>,
}

/// The bounds `Admission` keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_per_peer: usize,
    pub max_handshakes: usize,
    /// Serve one client (the first authenticated address) only.
    pub one_client: bool,
}

/// The acceptor's table of live connections.
pub struct Admission {
    epoch: Instant,
    limits: Limits,
    /// One-client servers: the client, once its first session authenticated.
    client: Option<IpAddr>,
    live: HashMap<u64, Live>,
}

/// Why a connection gets no session.
#[derive(Debug)]
pub enum Refusal {
    PeerCap(usize),
    Full(usize),
    OtherClient(IpAddr),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PeerCap(n) => write!(f, "{n} sessions from this address already (the most one address may hold)"),
            Refusal::Full(n) => write!(
                f,
                "server full ({n} sessions, none idle for {} s nor stuck on a reply for {} s to make room)",
                MIN_IDLE.as_secs(),
                MIN_STUCK.as_secs()
            ),
            Refusal::OtherClient(ip) => write!(f, "serving one client ({ip}) only"),
        }
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_sessions: limits.max_sessions.max(1),
            max_per_peer: limits.max_per_peer.max(1),
            max_handshakes: limits.max_handshakes.max(1),
            ..limits
        };
        Admission {
            epoch: Instant::now(),
            limits,
            client: None,
            live: HashMap::new(),
        }
    }

    /// Makes room for an authenticated session from `ip` if it may have one: Ok =
    /// admit it (`insert` with authenticated, or `authenticate`). Cutting a session
    /// to make room happens here.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_client(ip)?;
        let from_peer = self
            .live
            .values()
            .filter(|l| l.authenticated && l.ip == ip)
            .count();
        if from_peer >= self.limits.max_per_peer {
            return Err(Refusal::PeerCap(from_peer));
        }
        let count = self.live.values().filter(|l| l.authenticated).count();
        if count < self.limits.max_sessions {
            return Ok(());
        }
        let victim = self
            .live
            .iter()
            .filter(|(_, l)| l.authenticated)
            .filter_map(|(id, l)| l.slot.waiting().map(|w| (w, *id)))
            .max();
        let Some((_, id)) = victim else {
            return Err(Refusal::Full(count));
        };
        self.cut(id);
        Ok(())
    }

    /// Makes room for an unauthenticated connection (a TLS handshake to come): only
    /// the one-client rule and the handshake bound apply; at the bound the oldest
    /// handshake is cut.
    pub fn admit_handshake(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_client(ip)?;
        let pending = self.live.iter().filter(|(_, l)| !l.authenticated);
        if pending.clone().count() >= self.limits.max_handshakes {
            // Ids grow with each accept: the smallest is the oldest.
            if let Some(oldest) = pending.map(|(id, _)| *id).min() {
                self.cut(oldest);
            }
        }
        Ok(())
    }

    /// A handshake ended well: the connection becomes a session if `admit` lets it.
    /// Refused, it stays unauthenticated (the caller ends it).
    pub fn authenticate(&mut self, id: u64) -> Result<(), Refusal> {
        let Some(ip) = self.live.get(&id).map(|l| l.ip) else {
            return Ok(());
        };
        self.admit(ip)?;
        self.chose(ip);
        if let Some(l) = self.live.get_mut(&id) {
            l.authenticated = true;
        }
        Ok(())
    }

    /// Registers an admitted connection; its thread gets the returned slot.
    pub fn insert(
        &mut self,
        id: u64,
        stream: TcpStream,
        ip: IpAddr,
        authenticated: bool,
    ) -> Arc<SessionSlot> {
        if authenticated {
            self.chose(ip);
        }
        let slot = Arc::new(SessionSlot::new(self.epoch));
        self.live.insert(
            id,
            Live {
                stream,
                ip,
                authenticated,
                slot: slot.clone(),
            },
        );
        slot
    }

    /// One-client servers: whether the client is known (its first session began).
    pub fn client_chosen(&self) -> bool {
        self.client.is_some()
    }

    /// The connection's thread ended (or never started).
    pub fn remove(&mut self, id: u64) -> Option<TcpStream> {
        self.live.remove(&id).map(|l| l.stream)
    }

    /// Cuts every live connection (the server is stopping).
    pub fn cut_all(&self) {
        for l in self.live.values() {
            let _ = l.stream.shutdown(Shutdown::Both);
        }
    }

    fn check_client(&self, ip: IpAddr) -> Result<(), Refusal> {
        match self.client {
            Some(client) if self.limits.one_client && client != ip => {
                Err(Refusal::OtherClient(client))
            }
            _ => Ok(()),
        }
    }

    fn chose(&mut self, ip: IpAddr) {
        if self.limits.one_client {
            self.client.get_or_insert(ip);
        }
    }

    /// Cuts a connection for room; its thread sees the flag and says why it ended.
    fn cut(&mut self, id: u64) {
        if let Some(victim) = self.live.remove(&id) {
            victim.slot.evicted.store(true, SeqCst);
            let _ = victim.stream.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(listener: &TcpListener) -> TcpStream {
        let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.accept().unwrap();
        c
    }

    fn limits(max_sessions: usize, max_per_peer: usize, max_handshakes: usize) -> Limits {
        Limits {
            max_sessions,
            max_per_peer,
            max_handshakes,
            one_client: false,
        }
    }

    #[test]
    fn the_longest_idle_session_makes_room_then_a_stuck_reply_and_fresh_ones_never_do() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = Admission::new(limits(2, 2, 2));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let old = a.insert(1, pair(&l), ip, true);
        let busy = a.insert(2, pair(&l), "127.0.0.3".parse().unwrap(), true);
        busy.busy();
        // Nobody waiting long enough yet: full, and the log says so.
        let full = a.admit("127.0.0.4".parse().unwrap()).unwrap_err();
        assert!(
            matches!(full, Refusal::Full(2))
                && full.to_string().starts_with("server full (2 sessions"),
            "{full}"
        );
        std::thread::sleep(MIN_IDLE.max(MIN_STUCK) + Duration::from_millis(50));
        // Idle goes first, then the reply nobody drains.
        assert!(a.admit("127.0.0.4".parse().unwrap()).is_ok());
        assert!(old.evicted() && !busy.evicted());
        a.insert(3, pair(&l), ip, true);
        assert!(a.admit("127.0.0.4".parse().unwrap()).is_ok());
        assert!(busy.evicted());
        // The per-address cap holds whatever is free.
        a.insert(4, pair(&l), ip, true);
        assert!(matches!(a.admit(ip), Err(Refusal::PeerCap(2))));
    }

    #[test]
    fn handshakes_have_their_own_bound_and_the_oldest_makes_room() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = Admission::new(limits(4, 1, 2));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = a.insert(1, pair(&l), ip, false);
        let second = a.insert(2, pair(&l), ip, false);
        // Handshakes do not count against the address: a session is still admitted.
        assert!(a.admit(ip).is_ok());
        assert!(a.admit_handshake(ip).is_ok());
        assert!(first.evicted() && !second.evicted());
        a.insert(3, pair(&l), ip, false);
        assert!(a.authenticate(3).is_ok());
        // Now the address holds its one session: the next handshake to end is refused.
        assert!(matches!(a.authenticate(2), Err(Refusal::PeerCap(1))));
    }

    #[test]
    fn a_one_client_server_picks_its_client_at_the_first_authenticated_session() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = Admission::new(Limits {
            one_client: true,
            ..limits(4, 4, 4)
        });
        let (bad, good): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        a.insert(1, pair(&l), bad, false);
        assert!(a.admit_handshake(good).is_ok());
        a.insert(2, pair(&l), good, false);
        a.remove(1);
        assert!(!a.client_chosen());
        assert!(a.authenticate(2).is_ok());
        assert!(a.client_chosen());
        assert!(matches!(
            a.admit_handshake(bad),
            Err(Refusal::OtherClient(_))
        ));
    }
}
