//! Fuzz targets for the page server's wire, both header sizes (CRIU 4.1.1: 24 bytes,
//! 4.2: 32): the header codec, and a real `PageServer` fed random request streams
//! over TCP, its replies compared byte for byte with a model of what it must answer.

#[path = "../../core/tests/images_support/mod.rs"]
mod images_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bolero::{check, TypeGenerator};
use images_support::{big_vma, entry, range_bytes, Fixture, PS};
use lazy_pages_core::images::{Dump, PE_LAZY, PE_PRESENT};
use lazy_pages_core::remote::wire::{PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_GET};
use lazy_pages_core::remote::{IovHeader, PageServer, PageServerConfig, WireVersion};

#[derive(Debug, TypeGenerator)]
struct HeaderInput {
    bytes: [u8; 32],
    len: u8,
}

#[test]
fn wire_headers() {
    check!().with_type::<HeaderInput>().for_each(|input| {
        for version in [WireVersion::V411, WireVersion::V42] {
            let len = input.len as usize % 33;
            let hlen = version.header_len();
            match IovHeader::decode(version, &input.bytes[..len]) {
                Err(_) => assert!(len < hlen, "a full header always decodes"),
                Ok(h) => {
                    assert!(len >= hlen);
                    let again = h.encode(version).expect("a decoded header encodes");
                    assert_eq!(
                        again.as_slice(),
                        &input.bytes[..hlen],
                        "decode then encode gives the same bytes"
                    );
                    let reply = h.get_reply(h.nr_pages);
                    assert_eq!(
                        (reply.vaddr, reply.dst_id, reply.nr_pages),
                        (h.vaddr, h.dst_id, h.nr_pages)
                    );
                }
            }
        }
    });
}

/// pid 1's lazy runs in the fixture served below: (first page, pages).
const LAZY: [(u64, u64); 2] = [(0x10_0000, 8), (0x20_0000, 3)];
/// A present run that is not lazy: never served.
const EAGER: (u64, u64) = (0x30_0000, 2);
const TAG: u8 = 0xA0;
const MAX_PAGES: u64 = 5;

struct Served {
    addr: SocketAddr,
    _fixture: Fixture,
}

/// One server per wire version for the whole run (keep-serving, loopback).
fn server(version: WireVersion) -> &'static Served {
    static V411: OnceLock<Served> = OnceLock::new();
    static V42: OnceLock<Served> = OnceLock::new();
    let cell = if version == WireVersion::V411 {
        &V411
    } else {
        &V42
    };
    cell.get_or_init(|| {
        let lazy = PE_LAZY | PE_PRESENT;
        let entries = [
            entry(LAZY[0].0, LAZY[0].1, lazy),
            entry(LAZY[1].0, LAZY[1].1, lazy),
            entry(EAGER.0, EAGER.1, PE_PRESENT),
        ];
        let fixture = Fixture::new(big_vma(), &entries);
        let dump = Dump::open(&fixture.dir()).expect("fixture dump");
        let config = PageServerConfig {
            address: "127.0.0.1".parse().unwrap(),
            version,
            keep_serving: true,
            max_request_pages: MAX_PAGES,
            ..PageServerConfig::default()
        };
        let server = PageServer::bind(&dump, config, Arc::new(|_| {})).expect("bind");
        let addr = server.local_addr();
        std::thread::spawn(move || server.run());
        Served {
            addr,
            _fixture: fixture,
        }
    })
}

/// One request, mostly plausible (a known pid, an address near a lazy run).
#[derive(Debug, TypeGenerator)]
struct Request {
    cmd: u8,
    pid: u8,
    run: u8,
    page: i8,
    unaligned: bool,
    pages: u16,
    /// Replaces the whole header with these bytes.
    raw: Option<[u8; 32]>,
}

#[derive(Debug, TypeGenerator)]
struct Session {
    requests: Vec<Request>,
    /// Bytes after the last request: a header cut short.
    tail: Vec<u8>,
}

/// What the server must answer to `h`: Some(bytes) and go on, or None: the session ends
/// here (CLOSE answered, or an invalid request ended it with no reply).
fn model(version: WireVersion, h: &IovHeader, out: &mut Vec<u8>) -> bool {
    match h.cmd {
        PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
            out.extend(0i32.to_le_bytes());
            false
        }
        PS_IOV_GET => {
            let run = LAZY
                .iter()
                .find(|(start, pages)| h.vaddr >= *start && h.vaddr < start + pages * PS);
            let valid = h.dst_id == 1 && h.vaddr % PS == 0 && h.nr_pages > 0;
            let Some((start, pages)) = run.filter(|_| valid) else {
                return false;
            };
            let left = (start + pages * PS - h.vaddr) / PS;
            let n = h.nr_pages.min(left).min(MAX_PAGES);
            out.extend(h.get_reply(n).encode(version).unwrap().as_slice());
            out.extend(range_bytes(h.vaddr, n, TAG));
            true
        }
        _ => false,
    }
}

/// Sends `session` to the server of `version` and compares its replies with the model.
fn exchange(version: WireVersion, session: &Session) {
    let served = server(version);
    {
        let hlen = version.header_len();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        let mut open = true;
        for r in &session.requests {
            // Nothing after the request that ends the session: bytes the server never
            // reads make its close a reset, which may discard replies still queued (TCP,
            // not the server: found by libFuzzer as "replies differ").
            if !open {
                break;
            }
            let bytes: Vec<u8> = match r.raw {
                Some(raw) => raw[..hlen].to_vec(),
                None => {
                    let cmd = [
                        PS_IOV_GET,
                        PS_IOV_GET,
                        PS_IOV_GET,
                        PS_IOV_CLOSE,
                        PS_IOV_FORCE_CLOSE,
                        1,
                    ][r.cmd as usize % 6];
                    let runs = [LAZY[0], LAZY[1], EAGER];
                    let (start, _) = runs[r.run as usize % runs.len()];
                    // Mostly from a page before the run to a little past it; now and then anywhere.
                    let page = if r.page < -100 {
                        i64::from(r.page) * 1000
                    } else {
                        i64::from(r.page.rem_euclid(12)) - 1
                    };
                    let vaddr =
                        start.wrapping_add_signed(page * PS as i64) + u64::from(r.unaligned);
                    let h = IovHeader {
                        cmd,
                        pad: 0,
                        nr_pages: u64::from(r.pages % 12),
                        vaddr,
                        dst_id: u64::from(r.pid % 3),
                    };
                    h.encode(version).unwrap().as_slice().to_vec()
                }
            };
            wire.extend(&bytes);
            open = model(
                version,
                &IovHeader::decode(version, &bytes).unwrap(),
                &mut expected,
            );
        }
        if open {
            wire.extend(session.tail.iter().take(hlen - 1));
        }
        let mut sock = TcpStream::connect(served.addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may cut the session before reading everything: that is fine.
        let _ = sock.write_all(&wire);
        let _ = sock.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        match sock.read_to_end(&mut got) {
            Ok(_) => {}
            // A reset after an invalid request, once the replies before it are read.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("reading replies: {e} (a hung server?)"),
        }
        assert!(
            got == expected,
            "replies differ: got {} bytes, expected {}",
            got.len(),
            expected.len()
        );
    }
}

// check!() is called in the #[test] itself: cargo-bolero finds a target by its function.
#[test]
fn page_server_v411() {
    check!()
        .with_type::<Session>()
        .for_each(|session| exchange(WireVersion::V411, session));
}

#[test]
fn page_server_v42() {
    check!()
        .with_type::<Session>()
        .for_each(|session| exchange(WireVersion::V42, session));
}
