//! Who gets a session slot of the page server, and who gives one up.
//!
//! Owns the table of live sessions: each one's stream (to cut it), peer address and
//! `SessionSlot` (idle or busy, and since when). Promises: one peer address never holds
//! more than `max_per_peer` sessions; when every slot is taken, the session that has
//! waited longest for a request (at least `MIN_IDLE`) is cut to make room, so idle or
//! trickling connections cannot lock real clients out. A session being served is never
//! cut. What may go wrong: under a flood from many addresses, an idle legitimate
//! client (a restore not yet started, a `--fill-delay`) may be cut; our client
//! resumes with `--reconnect`.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A session idle for less than this is never cut: a client between two requests of
/// a transfer is busy, not idle.
pub const MIN_IDLE: Duration = Duration::from_secs(1);

const BUSY: u64 = u64::MAX;

/// One session's state, shared by its thread and the acceptor.
#[derive(Debug)]
pub struct SessionSlot {
    epoch: Instant,
    /// Milliseconds since `epoch` when the session last became idle (accept or the end
    /// of a reply), or BUSY while a request is being served.
    idle_since: AtomicU64,
    evicted: AtomicBool,
}

impl SessionSlot {
    fn new(epoch: Instant) -> Self {
        let slot = SessionSlot { epoch, idle_since: AtomicU64::new(0), evicted: AtomicBool::new(false) };
        slot.idle();
        slot
    }

    /// Waiting for the next request (or for the rest of one).
    pub fn idle(&self) {
        self.idle_since.store(self.epoch.elapsed().as_millis() as u64, SeqCst);
    }

    /// A complete request is in: serving it.
    pub fn busy(&self) {
        self.idle_since.store(BUSY, SeqCst);
    }

    /// Cut by the acceptor to make room; the session reports why it ended.
    pub fn evicted(&self) -> bool {
        self.evicted.load(SeqCst)
    }

    /// How long it has been idle, None while busy.
    fn idle_for(&self) -> Option<Duration> {
        match self.idle_since.load(SeqCst) {
            BUSY => None,
            since => Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(since))),
        }
    }
}

struct Live {
    stream: TcpStream,
    ip: IpAddr,
    slot: Arc<SessionSlot>,
}

/// The acceptor's table of live sessions.
pub struct Admission {
    epoch: Instant,
    max_sessions: usize,
    max_per_peer: usize,
    live: HashMap<u64, Live>,
}

/// Why a new connection gets no session.
pub enum Refusal {
    PeerCap(usize),
    Full(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PeerCap(n) => write!(f, "{n} sessions from this address already (the most one address may hold)"),
            Refusal::Full(n) => write!(f, "{n} sessions already running, none idle for {} s to make room", MIN_IDLE.as_secs()),
        }
    }
}

impl Admission {
    pub fn new(max_sessions: usize, max_per_peer: usize) -> Self {
        Admission { epoch: Instant::now(), max_sessions: max_sessions.max(1), max_per_peer: max_per_peer.max(1), live: HashMap::new() }
    }

    /// Makes room for a session from `ip` if it may have one: Ok = admit it (call
    /// `insert`). Cutting an idle session to make room happens here.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let from_peer = self.live.values().filter(|l| l.ip == ip).count();
        if from_peer >= self.max_per_peer {
            return Err(Refusal::PeerCap(from_peer));
        }
        if self.live.len() < self.max_sessions {
            return Ok(());
        }
        let longest = self
            .live
            .iter()
            .filter_map(|(id, l)| l.slot.idle_for().filter(|&d| d >= MIN_IDLE).map(|d| (d, *id)))
            .max();
        let Some((_, id)) = longest else { return Err(Refusal::Full(self.live.len())) };
        if let Some(victim) = self.live.remove(&id) {
            victim.slot.evicted.store(true, SeqCst);
            let _ = victim.stream.shutdown(Shutdown::Both);
        }
        Ok(())
    }

    /// Registers an admitted session; its thread gets the returned slot.
    pub fn insert(&mut self, id: u64, stream: TcpStream, ip: IpAddr) -> Arc<SessionSlot> {
        let slot = Arc::new(SessionSlot::new(self.epoch));
        self.live.insert(id, Live { stream, ip, slot: slot.clone() });
        slot
    }

    /// The session's thread ended (or never started).
    pub fn remove(&mut self, id: u64) -> Option<TcpStream> {
        self.live.remove(&id).map(|l| l.stream)
    }

    /// Cuts every live session (the server is stopping).
    pub fn cut_all(&self) {
        for l in self.live.values() {
            let _ = l.stream.shutdown(Shutdown::Both);
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

    #[test]
    fn the_longest_idle_session_makes_room_and_busy_ones_never_do() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = Admission::new(2, 2);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let old = a.insert(1, pair(&l), ip);
        let busy = a.insert(2, pair(&l), "127.0.0.3".parse().unwrap());
        busy.busy();
        // Nobody idle long enough yet: full.
        assert!(matches!(a.admit("127.0.0.4".parse().unwrap()), Err(Refusal::Full(2))));
        std::thread::sleep(MIN_IDLE + Duration::from_millis(50));
        assert!(a.admit("127.0.0.4".parse().unwrap()).is_ok());
        assert!(old.evicted() && !busy.evicted());
        // The per-address cap holds whatever is free.
        a.insert(3, pair(&l), ip);
        a.insert(4, pair(&l), ip);
        assert!(matches!(a.admit(ip), Err(Refusal::PeerCap(2))));
    }
}
