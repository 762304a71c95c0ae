//! Read-ahead from a page server into a real userfaultfd: background fill announces
//! the spans after each claim, the client fetches them ahead, and meanwhile faults take
//! pages out of announced spans and MADV_DONTNEED drops announced spans the fill then
//! never asks for. Every byte must be as dumped (or zero where dropped), every lazy page
//! accounted once, and the session must still close cleanly with unused spans cached.

#[allow(dead_code)]
mod engine_support;
mod remote_support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_support::{check_page, Recorder, Region, Rng, PS};
use lazy_pages_core::engine::{
    Engine, EngineConfig, PageData, PageSource, Priority, SourceError, Waker,
};
use lazy_pages_core::images::Dump;
use lazy_pages_core::ranges::{LazyRange, LazyRanges};
use lazy_pages_core::remote::{PageServerConfig, RemoteConfig, RemotePages, WireVersion};
use remote_support::images::{big_vma, entry, page_bytes, Fixture};
use remote_support::{expected, serve, LAZY};

/// Dump-time address of the first lazy run; a second run follows after a gap.
const IMG: u64 = 0x100000;
const RUN1: usize = 6000;
const GAP: usize = 16;
const RUN2: usize = 2000;
/// `Fixture`'s page tag: what `page_bytes` needs to know the dumped bytes.
const TAG: u8 = 0xA0;

/// The client, recording what the engine announced and asked for.
struct Watched {
    client: RemotePages,
    announced: AtomicUsize,
    asked: Mutex<Vec<(u64, usize)>>,
}

impl PageSource for Watched {
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        let got = self.client.pages(pid, img_addr, len, scratch, priority)?;
        if matches!(got, PageData::Bytes(_)) {
            self.asked.lock().unwrap().push((img_addr, len));
        }
        Ok(got)
    }

    fn will_need(&self, pid: u32, spans: &[(u64, usize)]) {
        self.announced.fetch_add(spans.len(), SeqCst);
        self.client.will_need(pid, spans);
    }

    fn set_waker(&self, waker: Waker) {
        self.client.set_waker(waker);
    }

    fn hurry(&self, pid: u32, img_addr: u64, len: usize) {
        self.client.hurry(pid, img_addr, len);
    }

    fn read_ahead_bytes(&self) -> u64 {
        self.client.read_ahead_bytes()
    }
}

#[test]
fn read_ahead_with_faults_and_removes_serves_every_byte_once() {
    let run2 = IMG + ((RUN1 + GAP) * PS) as u64;
    let fixture = Fixture::new(
        big_vma(),
        &[
            entry(IMG, RUN1 as u64, LAZY),
            entry(run2, RUN2 as u64, LAZY),
        ],
    );
    let dump = Dump::open(&fixture.dir()).unwrap();
    let server = serve(
        &dump,
        PageServerConfig {
            address: "127.0.0.1".parse().unwrap(),
            version: WireVersion::V42,
            ..PageServerConfig::default()
        },
    );
    let client = RemotePages::connect(
        &server.target(),
        RemoteConfig {
            version: WireVersion::V42,
            ..RemoteConfig::default()
        },
    )
    .unwrap();
    assert!(
        client.read_ahead_bytes() > 1 << 20,
        "read-ahead is on by default"
    );
    let source = Arc::new(Watched {
        client,
        announced: AtomicUsize::new(0),
        asked: Mutex::new(Vec::new()),
    });

    // The region mirrors the dump: the gap is a hole that is not lazy.
    let pages = RUN1 + GAP + RUN2;
    let region = Region::new(pages);
    let img_of = |i: usize| IMG + (i * PS) as u64;
    let lazy = |i: usize| i < RUN1 || i >= RUN1 + GAP;
    let mut ranges = LazyRanges::new();
    assert!(ranges.insert(LazyRange::new(region.addr, region.page_addr(RUN1), IMG)));
    assert!(ranges.insert(LazyRange::new(
        region.page_addr(RUN1 + GAP),
        region.page_addr(pages),
        run2
    )));

    let config = EngineConfig {
        jobs: 1,
        chunk_pages: 64,
        fault_pages: 1,
        ..EngineConfig::default()
    };
    let rec = Recorder::default();
    let engine = Engine::start(source.clone(), config, rec.callback()).unwrap();
    engine.add_task(1, region.uffd(), ranges).unwrap();
    engine.restore_finished();

    // Dropped spans, spread over the region so the fill has announced (or fetched)
    // some of them when the REMOVE arrives and reaches others later.
    let mut removed = vec![false; pages];
    let addr = region.addr;
    let dropper = std::thread::spawn(move || {
        let mut spans = Vec::new();
        for k in 1..12usize {
            let (at, n) = (k * 650 + 3, 40 + k * 7);
            // SAFETY: a span of our own live test region; the engine sees the REMOVE.
            let rc = unsafe {
                libc::madvise(
                    (addr + (at * PS) as u64) as *mut libc::c_void,
                    n * PS,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(rc, 0);
            spans.push((at, n));
            std::thread::sleep(Duration::from_micros(300));
        }
        spans
    });
    // Faults on random pages all over, racing the fill, its read-ahead and the drops.
    // A page not dropped must read as dumped, whoever brought it.
    let mut rng = Rng(0x5eed);
    let touches: Vec<usize> = (0..3000)
        .map(|_| rng.below(pages as u64) as usize)
        .filter(|&i| lazy(i))
        .collect();
    let toucher = std::thread::spawn(move || {
        let mut bad = Vec::new();
        for i in touches {
            let want = page_bytes(IMG + (i * PS) as u64, TAG);
            // SAFETY: page i of the live test region (unmapped only after this joins).
            if let Err((b, got, w)) = unsafe { check_page(addr + (i * PS) as u64, |b| want[b]) } {
                bad.push((
                    i,
                    format!("touched page {i} byte {b}: got {got:#x} want {w:#x}"),
                ));
            }
        }
        bad
    });
    let spans = dropper.join().unwrap();
    for &(at, n) in &spans {
        removed[at..at + n].iter_mut().for_each(|r| *r = true);
    }
    // A touched page dropped before or after its touch may read zero; no other may.
    let bad: Vec<String> = toucher
        .join()
        .unwrap()
        .into_iter()
        .filter(|(i, _)| !removed[*i])
        .map(|(_, m)| m)
        .collect();
    assert_eq!(bad, Vec::<String>::new());

    assert!(
        engine.wait(Some(Duration::from_secs(60))),
        "engine did not finish: {:?}",
        engine.stats()
    );
    let summary = engine.join().expect("engine failed");
    let task = &summary.tasks[0];
    assert_eq!(task.total, (RUN1 + RUN2) as u64);
    assert!(task.reconciles(), "{task:?}");
    assert_eq!(
        task.faulted + task.background + task.dropped,
        task.total,
        "every lazy page once: {task:?}"
    );
    assert_eq!(
        (task.exists, task.pending, task.in_flight),
        (0, 0, 0),
        "{task:?}"
    );
    assert!(task.faulted > 0 && task.background > 0, "{task:?}");

    for i in 0..pages {
        let want = if lazy(i) && !removed[i] {
            expected(&dump, 1, img_of(i), PS)
        } else {
            vec![0u8; PS]
        };
        // SAFETY: page i of the live region.
        if let Err((b, got, w)) = unsafe { check_page(region.page_addr(i), |b| want[b]) } {
            panic!(
                "page {i} (lazy {}, removed {}) byte {b}: got {got:#x} want {w:#x}",
                lazy(i),
                removed[i]
            );
        }
    }
    // The fill announced spans beyond the ones it went on to ask for.
    let asked = source.asked.lock().unwrap().len();
    assert!(
        source.announced.load(SeqCst) > asked,
        "announced {} spans, asked {asked}",
        source.announced.load(SeqCst)
    );
    source.client.close().unwrap();
    drop(source);
    let summary = server.join().unwrap();
    assert_eq!((summary.sessions, summary.failed_sessions), (1, 0));
}
