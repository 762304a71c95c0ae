//! `--tls` between our RemotePages and our PageServer over loopback, with a
//! test PKI made by openssl (scripts/make-test-certs.sh): every byte compared
//! with the images, several TLS sessions at once, the urgent connection, a
//! reconnect; and each kind of bad peer failing with one line that names it,
//! while the server keeps serving everyone else.

mod remote_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lazy_pages_core::images::Dump;
use lazy_pages_core::remote::{
    PageServerConfig, Priority, PrioritySource, RemoteConfig, RemotePages, TlsClient, TlsFiles,
    TlsServer, WireVersion,
};
use remote_support::*;

/// The test PKI, made once per test binary.
fn pki() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-test-certs.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-test-certs.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn files(name: &str) -> TlsFiles {
    let p = |f: &str| Some(pki().join(f));
    TlsFiles {
        cacert: p("ca.pem"),
        cacrl: p("crl.pem"),
        cert: p(&format!("{name}.pem")),
        key: p(&format!("{name}.key")),
        no_cn_verify: false,
    }
}

fn server_tls(name: &str, address: Option<&str>) -> Arc<TlsServer> {
    Arc::new(TlsServer::new(&files(name), address).unwrap())
}

fn client_tls(name: &str) -> Arc<TlsClient> {
    Arc::new(TlsClient::new(&files(name), "127.0.0.1").unwrap())
}

fn cfg(keep_serving: bool, tls: Arc<TlsServer>) -> PageServerConfig {
    PageServerConfig {
        address: "127.0.0.1".parse().unwrap(),
        keep_serving,
        tls: Some(tls),
        ..PageServerConfig::default()
    }
}

fn client_cfg(tls: Arc<TlsClient>) -> RemoteConfig {
    RemoteConfig {
        tls: Some(tls),
        ..RemoteConfig::default()
    }
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const ALL_PAGES: u64 = 2 * (2000 + 3 + 5 + 1);

#[test]
fn every_lazy_page_arrives_intact_over_tls_in_both_layouts() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    for version in [WireVersion::V411, WireVersion::V42] {
        let server = serve(
            &dump,
            PageServerConfig {
                version,
                ..cfg(false, server_tls("server", Some("127.0.0.1")))
            },
        );
        let c = RemotePages::connect(
            &server.target(),
            RemoteConfig {
                version,
                ..client_cfg(client_tls("client"))
            },
        )
        .unwrap();
        for (chunk, priority) in [
            (1, Priority::Fault),
            (7, Priority::Background),
            (1024, Priority::Background),
        ] {
            assert_eq!(
                fetch_and_compare_all(&c, &dump, chunk, priority),
                ALL_PAGES,
                "{version:?} chunk {chunk}"
            );
        }
        c.close().unwrap();
        drop(c);
        let summary = server.join().unwrap();
        assert_eq!(
            (summary.sessions, summary.failed_sessions),
            (1, 0),
            "{version:?}: {:?}",
            summary
        );
    }
}

#[test]
fn several_tls_sessions_at_once_with_keep_serving() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(true, server_tls("server", None)));
    let t = server.target();
    let tls = client_tls("client");
    std::thread::scope(|scope| {
        for i in 0..6u64 {
            let (t, dump, tls) = (&t, &dump, tls.clone());
            scope.spawn(move || {
                let c = RemotePages::connect(t, client_cfg(tls)).unwrap();
                assert_eq!(
                    fetch_and_compare_all(&c, dump, 1 + i * 97, Priority::Background),
                    ALL_PAGES
                );
                c.close().unwrap();
            });
        }
    });
    wait_until(|| server.ended().len() == 6);
    assert!(
        server
            .ended()
            .iter()
            .all(|(s, e)| e.is_none() && s.closed_by_request),
        "{:?}",
        server.ended()
    );
    let summary = server.stop().unwrap();
    assert_eq!((summary.sessions, summary.failed_sessions), (6, 0));
}

#[test]
fn urgent_connection_over_tls() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(false, server_tls("server", Some("127.0.0.1"))));
    let source = PrioritySource::connect(
        &server.target(),
        RemoteConfig {
            urgent_connection: true,
            ..client_cfg(client_tls("client"))
        },
    )
    .unwrap();
    // One page at a time, as faults: the urgent connection carries them.
    let woken = attach_waker(&source);
    let pages = compare_all(&dump, 1, |pid, addr, len| {
        source_fetch(&source, &woken, pid, addr, len, Priority::Fault)
    });
    assert_eq!(pages, ALL_PAGES);
    source.close().unwrap();
    drop(source);
    let summary = server.join().unwrap();
    assert_eq!(
        (summary.sessions, summary.failed_sessions),
        (2, 0),
        "a bulk and an urgent TLS session"
    );
}

#[test]
fn reconnect_over_tls_after_the_server_restarts_mid_transfer() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let first = serve(&dump, cfg(true, server_tls("server", None)));
    let port = first.addr.port();
    let config = RemoteConfig {
        reconnect: Duration::from_secs(10),
        background_budget: 16 * 4096,
        ..client_cfg(client_tls("client"))
    };
    let c = RemotePages::connect(&first.target(), config).unwrap();
    std::thread::scope(|scope| {
        let fetcher = scope.spawn(|| {
            let mut pages = 0;
            for (chunk, priority) in [
                (1, Priority::Fault),
                (7, Priority::Background),
                (300, Priority::Background),
            ] {
                pages += fetch_and_compare_all(&c, &dump, chunk, priority);
            }
            pages
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(!fetcher.is_finished(), "the cut must come mid-transfer");
        first.stop().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let second = serve(
            &dump,
            PageServerConfig {
                port,
                ..cfg(true, server_tls("server", None))
            },
        );
        assert_eq!(fetcher.join().unwrap(), 3 * ALL_PAGES);
        c.close().unwrap();
        wait_until(|| {
            second
                .ended()
                .iter()
                .any(|(s, e)| s.closed_by_request && e.is_none())
        });
    });
}

/// A TLS client `name` against a TLS server: the client's error (the server
/// is checked to have served a good client after the bad one).
fn bad_client(name: &str, server: &Running) -> String {
    match RemotePages::connect(&server.target(), client_cfg(client_tls(name))) {
        Ok(c) => fetch(&c, 1, 0x20000, 4096, Priority::Fault)
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    }
}

fn assert_still_serving(server: &Running, dump: &Dump) {
    let c = RemotePages::connect(&server.target(), client_cfg(client_tls("client"))).unwrap();
    assert_eq!(
        fetch_and_compare_all(&c, dump, 64, Priority::Background),
        ALL_PAGES
    );
    c.close().unwrap();
}

fn server_error_for(server: &Running, needle: &str) -> String {
    let has = |e: &String| e.to_lowercase().contains(needle);
    wait_until(|| {
        server
            .ended()
            .iter()
            .any(|(_, e)| e.as_ref().is_some_and(has))
    });
    server
        .ended()
        .into_iter()
        .filter_map(|(_, e)| e)
        .find(has)
        .unwrap()
}

#[test]
fn bad_client_certificates_fail_that_session_only() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(true, server_tls("server", Some("127.0.0.1"))));
    // (client certificate, what the server's line says)
    for (name, why) in [
        ("stranger", "unknownissuer"),
        ("expired", "expired"),
        ("revoked", "revoked"),
        ("wrongname", "not valid for name \"127.0.0.1\""),
    ] {
        let err = bad_client(name, &server);
        assert!(
            err.contains("page server 127.0.0.1:") && !err.contains('\n'),
            "{name}: {err}"
        );
        let line = server_error_for(&server, why);
        assert!(
            line.starts_with("client 127.0.0.1:") && !line.contains('\n'),
            "{name}: {line}"
        );
        assert_still_serving(&server, &dump);
    }
    let summary = server.stop().unwrap();
    assert_eq!(
        (summary.sessions, summary.failed_sessions, summary.rejected),
        (4, 0, 4)
    );
}

#[test]
fn bad_server_certificates_are_refused_by_the_client() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    for (name, why) in [
        ("stranger", "unknownissuer"),
        ("expired", "expired"),
        ("revoked", "revoked"),
        ("wrongname", "not valid for name \"127.0.0.1\""),
    ] {
        let server = serve(&dump, cfg(true, server_tls(name, None)));
        let err = RemotePages::connect(&server.target(), client_cfg(client_tls("client")))
            .err()
            .expect(name)
            .to_string();
        assert!(
            err.starts_with(&format!(
                "page server {}: TLS handshake failed",
                server.target()
            )),
            "{name}: {err}"
        );
        assert!(
            err.to_lowercase().contains(why) && !err.contains('\n'),
            "{name}: {err}"
        );
        // The server saw our alert and dropped that session.
        wait_until(|| server.ended().iter().any(|(_, e)| e.is_some()));
    }
    // --tls-no-cn-verify accepts the wrong name (and nothing else).
    let server = serve(&dump, cfg(false, server_tls("wrongname", None)));
    let tls = Arc::new(
        TlsClient::new(
            &TlsFiles {
                no_cn_verify: true,
                ..files("client")
            },
            "127.0.0.1",
        )
        .unwrap(),
    );
    let c = RemotePages::connect(&server.target(), client_cfg(tls)).unwrap();
    assert_eq!(
        fetch_and_compare_all(&c, &dump, 256, Priority::Background),
        ALL_PAGES
    );
    c.close().unwrap();
}

#[test]
fn plaintext_against_tls_fails_both_ways_with_one_line() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    // A plaintext client against a TLS server: the server drops it, serves on.
    let server = serve(&dump, cfg(true, server_tls("server", None)));
    let plain = RemotePages::connect(&server.target(), RemoteConfig::default()).unwrap();
    let err = fetch(&plain, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(err.contains("page server 127.0.0.1:"), "{err}");
    let line = server_error_for(&server, "tls handshake failed");
    assert!(
        line.contains("not speaking TLS") && !line.contains('\n'),
        "{line}"
    );
    assert_still_serving(&server, &dump);
    drop(server);
    // A TLS client against a plaintext server.
    let server = serve(
        &dump,
        PageServerConfig {
            keep_serving: true,
            tls: None,
            ..cfg(true, server_tls("server", None))
        },
    );
    let err = RemotePages::connect(&server.target(), client_cfg(client_tls("client")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "page server {}: TLS handshake failed",
            server.target()
        )) && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn a_stalled_handshake_times_out_on_either_end() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    // A "server" that accepts and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut tls = TlsClient::new(&files("client"), "127.0.0.1").unwrap();
    tls.handshake_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = RemotePages::connect(&addr.to_string(), client_cfg(Arc::new(tls)))
        .err()
        .unwrap()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.starts_with(&format!(
            "page server {addr}: TLS handshake failed: no handshake within"
        )),
        "{err}"
    );
    drop(held.join());
    // A "client" that connects and says nothing: that session ends, others go on.
    let mut stls = TlsServer::new(&files("server"), None).unwrap();
    stls.handshake_timeout = Duration::from_millis(500);
    let server = serve(&dump, cfg(true, Arc::new(stls)));
    let mut silent = TcpStream::connect(server.target()).unwrap();
    assert_still_serving(&server, &dump);
    let line = server_error_for(&server, "no handshake within");
    assert!(line.starts_with("client 127.0.0.1:"), "{line}");
    // The server closed on it.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = silent.write_all(b"x");
    let mut buf = [0u8; 1];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
}

/// A proxy that passes everything through but flips one byte of the server's
/// stream once `after` bytes have gone by: the record it lands in fails to open.
fn tampering_proxy(target: String, after: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(target).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut s2);
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
        let (mut from, mut to) = (server, client);
        let mut seen = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if seen <= after && after < seen + n {
                buf[after - seen] ^= 0x5a;
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = up.join();
    });
    (addr, handle)
}

#[test]
fn a_record_altered_on_the_way_is_fatal_and_names_the_peer() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(true, server_tls("server", None)));
    // Well past the handshake (a few KiB): inside page data.
    let (proxy, handle) = tampering_proxy(server.target(), 200 << 10);
    let c = RemotePages::connect(&proxy, client_cfg(client_tls("client"))).unwrap();
    let err = (0..2000u64)
        .step_by(64)
        .find_map(|page| {
            fetch(
                &c,
                1,
                0x20000 + page * 4096,
                64 * 4096,
                Priority::Background,
            )
            .err()
        })
        .expect("an altered record must not pass")
        .to_string();
    assert!(
        err.contains(&format!("page server {proxy}")) && err.contains("TLS") && !err.contains('\n'),
        "{err}"
    );
    drop(c);
    handle.join().unwrap();
    // The server is unharmed.
    assert_still_serving(&server, &dump);
}

#[test]
fn half_finished_handshakes_from_the_clients_own_address_do_not_lock_it_out() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(true, server_tls("server", None)));
    // 64 connections from the client's own address that begin a ClientHello (a
    // record header promising 512 bytes) and never finish it.
    let mut pending = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(server.target()).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
        pending.push(s);
    }
    // Each was either taken in (its handshake waits) or turned away.
    let seen = |e: &lazy_pages_core::remote::ServerEvent| {
        matches!(
            e,
            lazy_pages_core::remote::ServerEvent::SessionStarted { .. }
                | lazy_pages_core::remote::ServerEvent::Refused { .. }
        )
    };
    wait_until(|| {
        server
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen(e))
            .count()
            >= 64
    });
    // The real client, from the same address, with no --reconnect: admitted at once.
    let c = RemotePages::connect(&server.target(), client_cfg(client_tls("client"))).unwrap();
    assert_eq!(
        fetch_and_compare_all(&c, &dump, 256, Priority::Background),
        ALL_PAGES
    );
    c.close().unwrap();
    // It took the place of the oldest handshake, which is told why.
    let line = server_error_for(&server, "tls handshake cut");
    assert!(
        line.starts_with("client 127.0.0.1:") && line.contains("64 handshakes under way"),
        "{line}"
    );
}

#[test]
fn a_one_client_tls_server_serves_on_after_a_bad_peer_and_ends_with_its_client() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(false, server_tls("server", None)));
    // A peer from another address that does not speak TLS comes first.
    let mut bad = connect_from("127.0.0.2".parse().unwrap(), &server.target(), None);
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let line = server_error_for(&server, "tls handshake failed");
    assert!(line.starts_with("client 127.0.0.2:"), "{line}");
    // The server is still there for its one client, which it picks now.
    let c = RemotePages::connect(&server.target(), client_cfg(client_tls("client"))).unwrap();
    assert_eq!(
        fetch_and_compare_all(&c, &dump, 256, Priority::Background),
        ALL_PAGES
    );
    // Another address is turned away while it is served.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), &server.target(), None);
    other
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(matches!(other.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    c.close().unwrap();
    drop(c);
    let target = server.target();
    let summary = server.join().unwrap();
    assert_eq!(
        (summary.sessions, summary.failed_sessions, summary.rejected),
        (1, 0, 1),
        "{summary:?}"
    );
    assert!(
        TcpStream::connect(&target).is_err(),
        "the server ended with its client"
    );
}
