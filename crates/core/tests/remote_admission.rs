//! Page-server admission against hostile peers, over real TCP on loopback (127.0.0.2
//! and 127.0.0.3 are other source addresses): readers that take their replies a
//! trickle at a time are cut at the reply bound and make room when every slot is
//! taken, and a client with no room is told it was refused, not that it was dropped.

mod remote_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazy_pages_core::images::Dump;
use lazy_pages_core::remote::wire::{IovHeader, PS_IOV_GET};
use lazy_pages_core::remote::{
    PageServerConfig, Priority, RemoteConfig, RemotePages, ServerEvent, WireVersion,
};
use remote_support::*;

const ALL_PAGES: u64 = 2 * (2000 + 3 + 5 + 1);

fn keep_serving() -> PageServerConfig {
    PageServerConfig {
        address: "127.0.0.1".parse().unwrap(),
        keep_serving: true,
        ..PageServerConfig::default()
    }
}

/// Waits for `f`, up to a generous `secs`.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Readers that each asked for a full-size reply (1024 pages) and take it 1 KiB per
/// tick: never silent long enough for a send timeout, never done.
struct Tricklers {
    /// Bytes each has read (u64::MAX once its connection ended).
    got: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const ENDED: u64 = u64::MAX;

impl Tricklers {
    fn start(target: &str, from: &[(Ipv4Addr, usize)]) -> Tricklers {
        let get = IovHeader {
            cmd: PS_IOV_GET,
            pad: 0,
            nr_pages: 1024,
            vaddr: 0x20000,
            dst_id: 1,
        }
        .encode(WireVersion::V42)
        .unwrap()
        .as_slice()
        .to_vec();
        let mut socks = Vec::new();
        for &(ip, n) in from {
            for _ in 0..n {
                let mut s = connect_from(ip, target, Some(4096));
                s.write_all(&get).unwrap();
                s.set_nonblocking(true).unwrap();
                socks.push(s);
            }
        }
        let got: Arc<Vec<AtomicU64>> = Arc::new(socks.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !st.load(SeqCst) {
                for (i, s) in socks.iter_mut().enumerate() {
                    if g[i].load(SeqCst) == ENDED {
                        continue;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => g[i].store(ENDED, SeqCst),
                        Ok(n) => drop(g[i].fetch_add(n as u64, SeqCst)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => g[i].store(ENDED, SeqCst),
                    }
                }
                // The trickle's pace: this is how slowly they read.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Tricklers {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Every one has its reply header: its session is serving it.
    fn all_served(&self) -> bool {
        self.got
            .iter()
            .all(|g| (1..ENDED).contains(&g.load(SeqCst)))
    }
}

impl Drop for Tricklers {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn errors(server: &Running) -> Vec<String> {
    server.ended().into_iter().filter_map(|(_, e)| e).collect()
}

#[test]
fn a_reader_too_slow_to_take_a_reply_is_cut_at_the_reply_bound() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, keep_serving());
    let slow = Tricklers::start(&server.target(), &[(Ipv4Addr::new(127, 0, 0, 2), 1)]);
    wait_until(20, "the reply to start", || slow.all_served());
    // The default bound is 10 s; it reads for 400 s at this pace if left alone.
    wait_until(40, "the slow reader to be cut", || {
        errors(&server)
            .iter()
            .any(|e| e.contains("reads too slowly"))
    });
    let line = errors(&server)
        .into_iter()
        .find(|e| e.contains("reads too slowly"))
        .unwrap();
    assert!(
        line.starts_with("client 127.0.0.2:")
            && line.contains("not taken within 10s")
            && !line.contains('\n'),
        "{line}"
    );
}

#[test]
fn slow_readers_in_every_slot_make_room_for_a_real_restore() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, keep_serving());
    // 64 = every slot; 32 each = the most one address may hold.
    let slow = Tricklers::start(
        &server.target(),
        &[
            (Ipv4Addr::new(127, 0, 0, 2), 32),
            (Ipv4Addr::new(127, 0, 0, 3), 32),
        ],
    );
    wait_until(30, "64 replies under way", || slow.all_served());
    // A real restore, which retries a refused connection (--reconnect).
    let config = RemoteConfig {
        reconnect: Duration::from_secs(60),
        ..RemoteConfig::default()
    };
    let client = RemotePages::connect(&server.target(), config).unwrap();
    assert_eq!(
        fetch_and_compare_all(&client, &dump, 256, Priority::Background),
        ALL_PAGES
    );
    client.close().unwrap();
    // It got in by cutting a reader, not by waiting for the bound.
    let cut = errors(&server)
        .into_iter()
        .filter(|e| e.contains("not draining a reply while every session slot was taken"))
        .count();
    assert!(cut >= 1, "{:?}", errors(&server));
}

#[test]
fn a_client_refused_for_room_is_told_it_was_refused_and_the_server_says_why() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(
        &dump,
        PageServerConfig {
            max_sessions_per_peer: 1,
            ..keep_serving()
        },
    );
    // The address's one session, held idle.
    let _held = TcpStream::connect(server.target()).unwrap();
    wait_until(20, "the held session", || {
        server
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ServerEvent::SessionStarted { .. }))
    });
    let client = RemotePages::connect(&server.target(), RemoteConfig::default()).unwrap();
    let err = fetch(&client, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    let target = server.target();
    assert!(
        err.contains(&format!(
            "page server {target} closed the connection right after connect"
        )),
        "{err}"
    );
    assert!(
        err.contains("refused us (server full?)") && !err.contains('\n'),
        "{err}"
    );
    let refused = server.events.lock().unwrap().iter().find_map(|e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("1 sessions from this address already")),
        "{refused:?}"
    );
}
