//! Our RemotePages against our PageServer over loopback, plus raw-socket checks
//! of what the server does with bad requests and of the client's wire order.

mod remote_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use lazy_pages_core::engine::{PageData, PageSource};
use lazy_pages_core::images::Dump;
use lazy_pages_core::remote::wire::{GET_REPLY_CMD, PS_IOV_ADD_F};
use lazy_pages_core::remote::{
    IovHeader, PageServerConfig, Priority, PrioritySource, RemoteConfig, RemotePages, ServerEvent,
    WireVersion,
};
use remote_support::*;

fn cfg(version: WireVersion, keep_serving: bool) -> PageServerConfig {
    PageServerConfig {
        address: "127.0.0.1".parse().unwrap(),
        version,
        keep_serving,
        ..PageServerConfig::default()
    }
}

fn client(target: &str, version: WireVersion) -> RemotePages {
    RemotePages::connect(
        target,
        RemoteConfig {
            version,
            ..RemoteConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn every_lazy_page_arrives_intact_in_both_layouts() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    for version in [WireVersion::V411, WireVersion::V42] {
        let server = serve(&dump, cfg(version, false));
        let c = client(&server.target(), version);
        // Odd chunk sizes: spans that cross run ends get clamped and re-asked.
        for (chunk, priority) in [
            (1, Priority::Fault),
            (7, Priority::Background),
            (300, Priority::Background),
        ] {
            let pages = fetch_and_compare_all(&c, &dump, chunk, priority);
            assert_eq!(pages, 2 * (2000 + 3 + 5 + 1), "{version:?} chunk {chunk}");
        }
        c.close().unwrap();
        drop(c);
        let summary = server.join().unwrap();
        assert_eq!(
            (summary.sessions, summary.failed_sessions),
            (1, 0),
            "{version:?}"
        );
    }
}

#[test]
fn server_clamps_at_run_end_and_cap_and_client_asks_for_the_rest() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(
        &dump,
        PageServerConfig {
            max_request_pages: 100,
            ..cfg(WireVersion::V42, false)
        },
    );
    let config = RemoteConfig {
        background_budget: 64 << 20,
        max_request_pages: 4096,
        ..RemoteConfig::default()
    };
    let c = RemotePages::connect(&server.target(), config).unwrap();
    // 2000 pages in one GET: the server's cap clamps each reply to 100.
    let got = fetch(&c, 2, 0x20000, 2000 * 4096, Priority::Background).unwrap();
    assert!(got == expected(&dump, 2, 0x20000, 2000 * 4096));
    // Two adjacent runs (3 + 5 pages) in one GET: clamped at the first run's end.
    let got = fetch(&c, 1, 0x900000, 8 * 4096, Priority::Background).unwrap();
    assert!(got == expected(&dump, 1, 0x900000, 8 * 4096));
    c.close().unwrap();
    drop(c);
    wait_until(|| !server.ended().is_empty());
    let (stats, error) = server.ended().remove(0);
    assert_eq!(error, None);
    // 20 replies of 100 (19 clamped) + 3 (clamped) + 5.
    assert_eq!((stats.requests, stats.pages, stats.clamped), (22, 2008, 20));
    server.join().unwrap();
}

#[test]
fn clamped_replies_are_counted_by_the_server() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, true));
    let c = RemotePages::connect(
        &server.target(),
        RemoteConfig {
            background_budget: 64 << 20,
            ..RemoteConfig::default()
        },
    )
    .unwrap();
    fetch(&c, 1, 0x900000, 8 * 4096, Priority::Background).unwrap();
    c.close().unwrap();
    drop(c);
    wait_until(|| !server.ended().is_empty());
    let (stats, error) = server.ended().remove(0);
    assert_eq!(error, None);
    assert_eq!(
        (
            stats.requests,
            stats.pages,
            stats.clamped,
            stats.closed_by_request
        ),
        (2, 8, 1, true)
    );
}

fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not met within 5 s");
}

/// Sends one raw header and returns everything the server sends back before it closes.
fn raw_exchange(target: &str, version: WireVersion, header: IovHeader) -> Vec<u8> {
    let mut s = TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(header.encode(version).unwrap().as_slice())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("server must close, not hang");
    out
}

#[test]
fn invalid_requests_close_only_that_session() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, true));
    let t = server.target();
    let bad = [
        IovHeader::get(99, 0x20000, 1),    // unknown pid
        IovHeader::get(1, 0x10000, 1),     // eager run, not lazy
        IovHeader::get(1, 0x5000_0000, 1), // never dumped
        IovHeader::get(1, 0x20000, 0),     // zero pages
        IovHeader::get(1, 0x20010, 1),     // not page aligned
        IovHeader {
            dst_id: 1 << 40,
            ..IovHeader::get(1, 0x20000, 1)
        }, // pid out of range
        IovHeader {
            cmd: PS_IOV_ADD_F,
            ..IovHeader::get(1, 0x20000, 1)
        }, // image-receiving command
    ];
    for h in bad {
        assert_eq!(
            raw_exchange(&t, WireVersion::V42, h),
            Vec::<u8>::new(),
            "{h:?}"
        );
    }
    wait_until(|| server.ended().len() == bad.len());
    assert!(server.ended().iter().all(|(_, e)| e
        .as_deref()
        .is_some_and(|e| e.contains("closing the session"))));
    // The server is still fine for the next client.
    let c = client(&t, WireVersion::V42);
    assert_eq!(
        fetch_and_compare_all(&c, &dump, 64, Priority::Background),
        2 * 2009
    );
    drop(c);
    let summary = server.stop().unwrap();
    assert_eq!(summary.failed_sessions, bad.len() as u64);
}

#[test]
fn a_valid_raw_get_gets_header_and_pages_then_close_gets_zero() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V411, false));
    let mut s = TcpStream::connect(server.target()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let get = IovHeader::get(2, 0x900000 + 4096, 10);
    s.write_all(get.encode(WireVersion::V411).unwrap().as_slice())
        .unwrap();
    let mut head = [0u8; 24];
    s.read_exact(&mut head).unwrap();
    let reply = IovHeader::decode(WireVersion::V411, &head).unwrap();
    assert_eq!(
        reply,
        IovHeader {
            cmd: GET_REPLY_CMD,
            nr_pages: 2,
            ..get
        }
    );
    let mut data = vec![0u8; 2 * 4096];
    s.read_exact(&mut data).unwrap();
    assert!(data == expected(&dump, 2, 0x900000 + 4096, 2 * 4096));
    s.write_all(
        IovHeader::close()
            .encode(WireVersion::V411)
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, 0i32.to_le_bytes());
    let summary = server.join().unwrap();
    assert_eq!(
        (summary.sessions, summary.requests, summary.pages),
        (1, 1, 2)
    );
}

#[test]
fn one_session_servers_refuse_a_second_client() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, false));
    let t = server.target();
    let c = client(&t, WireVersion::V42);
    fetch(&c, 1, 0xa00000, 4096, Priority::Fault).unwrap();
    // Another IP is another client: closed at once, without a word.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), &t, None);
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    other
        .read_to_end(&mut rest)
        .expect("server must close, not hang");
    assert!(rest.is_empty());
    drop(c);
    let events = server.events.clone();
    let summary = server.join().unwrap();
    assert_eq!((summary.sessions, summary.failed_sessions), (1, 0));
    let refused =
        events.lock().unwrap().iter().any(
            |e| matches!(e, ServerEvent::Refused { reason, .. } if reason.contains("one client")),
        );
    assert!(refused, "the other client is reported refused");
    // All sessions ended: the listener is gone.
    assert!(TcpStream::connect(&t).is_err());
}

/// Every lazy page of the dump through `source` in `chunk_pages` spans, asked for at
/// `priority`.
fn source_compare_all(
    source: &dyn PageSource,
    woken: &Wakes,
    dump: &Dump,
    chunk_pages: u64,
    priority: Priority,
) -> u64 {
    compare_all(dump, chunk_pages, |pid, addr, len| {
        source_fetch(source, woken, pid, addr, len, priority)
    })
}

#[test]
fn a_one_client_server_serves_a_bulk_and_an_urgent_connection_then_exits() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, false));
    let config = RemoteConfig {
        urgent_connection: true,
        ..RemoteConfig::default()
    };
    let source = PrioritySource::connect(&server.target(), config).unwrap();
    // Faults (1 page: the urgent connection) while background spans (64
    // pages: the bulk one) stream; every byte checked on both.
    let woken = attach_waker(&source);
    std::thread::scope(|scope| {
        let (source, dump, woken) = (&source, &dump, &woken);
        let faults =
            scope.spawn(move || source_compare_all(source, woken, dump, 1, Priority::Fault));
        assert_eq!(
            source_compare_all(source, woken, dump, 64, Priority::Background),
            2 * 2009
        );
        assert_eq!(faults.join().unwrap(), 2 * 2009);
    });
    source.close().unwrap();
    drop(source);
    // No stop: the server ends by itself once both sessions have.
    let summary = server.join().unwrap();
    assert_eq!(
        (summary.sessions, summary.failed_sessions, summary.pages),
        (2, 0, 2 * 2 * 2009)
    );
}

#[test]
fn concurrent_sessions_with_keep_serving() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, true));
    let t = server.target();
    std::thread::scope(|scope| {
        for i in 0..8u64 {
            let (t, dump) = (&t, &dump);
            scope.spawn(move || {
                let c = client(t, WireVersion::V42);
                assert_eq!(
                    fetch_and_compare_all(&c, dump, 1 + i * 37, Priority::Background),
                    2 * 2009
                );
                c.close().unwrap();
            });
        }
    });
    wait_until(|| server.ended().len() == 8);
    let summary = server.stop().unwrap();
    assert_eq!((summary.sessions, summary.failed_sessions), (8, 0));
}

#[test]
fn stop_cuts_idle_sessions() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let server = serve(&dump, cfg(WireVersion::V42, true));
    let idle = TcpStream::connect(server.target()).unwrap();
    wait_until(|| server.events.lock().unwrap().len() == 1);
    let summary = server.stop().unwrap();
    assert_eq!(summary.sessions, 1);
    drop(idle);
}

#[test]
fn peer_close_is_fatal_and_names_the_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 32];
        let _ = (&s).read(&mut buf); // take the request, then hang up
    });
    let c = client(&addr.to_string(), WireVersion::V42);
    let err = fetch(&c, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("page server {addr} closed the connection")),
        "{err}"
    );
    // Every later call fails the same way, at once.
    let mut scratch = Vec::new();
    let err2 = c
        .pages(1, 0x30000, 4096, &mut scratch, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(err2.contains("closed the connection"), "{err2}");
    t.join().unwrap();
}

#[test]
fn out_of_order_reply_is_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 32];
        s.read_exact(&mut buf).unwrap();
        let wrong = IovHeader::get(1, 0x77000, 1).get_reply(1);
        s.write_all(wrong.encode(WireVersion::V42).unwrap().as_slice())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let c = client(&addr.to_string(), WireVersion::V42);
    let err = fetch(&c, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(err.contains("oldest request is task 1 at 0x20000"), "{err}");
    t.join().unwrap();
}

/// Reads GET headers (no replies) until `n` arrived or 300 ms of silence.
fn headers_seen(s: &mut TcpStream, n: usize) -> Vec<IovHeader> {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 32];
    while out.len() < n && s.read_exact(&mut buf).is_ok() {
        out.push(IovHeader::decode(WireVersion::V42, &buf).unwrap());
    }
    out
}

#[test]
fn background_bytes_on_the_wire_stay_within_budget_and_faults_go_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = RemoteConfig {
        background_budget: 256 * 1024,
        ..RemoteConfig::default()
    };
    let c = RemotePages::connect(&addr.to_string(), config).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let mut scratch = Vec::new();
    // A 1024-page background span: only 64 pages (256 KiB) may go out.
    assert!(matches!(
        c.fetch(1, 0x100000, 1024 * 4096, &mut scratch, Priority::Background)
            .unwrap(),
        PageData::Pending
    ));
    let seen = headers_seen(&mut s, 10);
    assert_eq!(seen, vec![IovHeader::get(1, 0x100000, 64)]);
    // More background is refused while the budget is used up...
    assert!(matches!(
        c.fetch(1, 0x900000, 64 * 4096, &mut scratch, Priority::Background)
            .unwrap(),
        PageData::Pending
    ));
    assert_eq!(headers_seen(&mut s, 10), vec![]);
    // ...but a fault goes out immediately.
    assert!(matches!(
        c.pages(1, 0x800000, 4096, &mut scratch, Priority::Fault)
            .unwrap(),
        PageData::Pending
    ));
    assert_eq!(
        headers_seen(&mut s, 10),
        vec![IovHeader::get(1, 0x800000, 1)]
    );
    // Answer the first background GET: the next 64 pages of that span go out.
    let reply = IovHeader::get(1, 0x100000, 64).get_reply(64);
    s.write_all(reply.encode(WireVersion::V42).unwrap().as_slice())
        .unwrap();
    s.write_all(&vec![0xAB; 64 * 4096]).unwrap();
    assert_eq!(
        headers_seen(&mut s, 10),
        vec![IovHeader::get(1, 0x100000 + 64 * 4096, 64)]
    );
}

fn reconnecting(target: &str, reconnect: Duration) -> RemotePages {
    RemotePages::connect(
        target,
        RemoteConfig {
            reconnect,
            background_budget: 16 * 4096,
            ..RemoteConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn server_stopped_and_restarted_mid_transfer_every_byte_arrives_once_and_right() {
    let tmp = two_task_dump();
    let dump = Dump::open(tmp.path()).unwrap();
    let first = serve(&dump, cfg(WireVersion::V42, true));
    let port = first.addr.port();
    let c = reconnecting(&first.target(), Duration::from_secs(10));
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
        // Cut the live session mid-transfer; nothing listens for a while.
        std::thread::sleep(Duration::from_millis(30));
        assert!(!fetcher.is_finished(), "the cut must come mid-transfer");
        first.stop().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let second = serve(
            &dump,
            PageServerConfig {
                port,
                ..cfg(WireVersion::V42, true)
            },
        );
        assert_eq!(fetcher.join().unwrap(), 3 * 2 * (2000 + 3 + 5 + 1));
        c.close().unwrap();
        wait_until(|| {
            second
                .ended()
                .iter()
                .any(|(s, e)| s.closed_by_request && e.is_none())
        });
    });
}

#[test]
fn a_reply_cut_mid_data_is_asked_again_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let get = IovHeader::get(1, 0x20000, 4);
    let t = std::thread::spawn(move || {
        let reply = get.get_reply(4).encode(WireVersion::V42).unwrap();
        let mut head = [0u8; 32];
        // First connection: half the pages, garbage, then hang up.
        let (mut s, _) = listener.accept().unwrap();
        s.read_exact(&mut head).unwrap();
        assert_eq!(IovHeader::decode(WireVersion::V42, &head).unwrap(), get);
        s.write_all(reply.as_slice()).unwrap();
        s.write_all(&[0xEE; 2 * 4096]).unwrap();
        drop(s);
        // Second: the same GET again, answered in full.
        let (mut s, _) = listener.accept().unwrap();
        s.read_exact(&mut head).unwrap();
        assert_eq!(IovHeader::decode(WireVersion::V42, &head).unwrap(), get);
        s.write_all(reply.as_slice()).unwrap();
        s.write_all(&[0x5A; 4 * 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let c = reconnecting(&addr.to_string(), Duration::from_secs(5));
    let got = fetch(&c, 1, 0x20000, 4 * 4096, Priority::Fault).unwrap();
    assert!(
        got.iter().all(|&b| b == 0x5A),
        "only the whole second reply may be served"
    );
    t.join().unwrap();
}

#[test]
fn a_server_gone_past_the_reconnect_window_is_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        drop(listener); // nobody listens any more
        let mut buf = [0u8; 32];
        let _ = (&s).read(&mut buf);
    });
    let c = reconnecting(&addr.to_string(), Duration::from_millis(500));
    let err = fetch(&c, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("page server {addr} gone for 0.5 s")),
        "{err}"
    );
    t.join().unwrap();
}

/// A header and then nothing, right after connecting: a stall while reading the pages,
/// said as such (not as a refusal, nor as a header that never came).
#[test]
fn a_reply_header_with_no_data_is_a_stall_while_reading_the_pages() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 24];
        s.read_exact(&mut buf).unwrap();
        buf[..4].copy_from_slice(&GET_REPLY_CMD.to_le_bytes());
        s.write_all(&buf).unwrap();
        // Then nothing, the connection held open until the client gives up.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let config = RemoteConfig {
        version: WireVersion::V411,
        stall_timeout: Duration::from_secs(1),
        ..RemoteConfig::default()
    };
    let c = RemotePages::connect(&addr.to_string(), config).unwrap();
    let err = fetch(&c, 1, 0x20000, 4096, Priority::Fault)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reading 1 pages of task 1 at 0x20000: sent nothing for 1s"),
        "{err} {}",
        c.debug_dump()
    );
    drop(c);
    t.join().unwrap();
}
