//! Shared by the remote_* tests: synthetic dumps, a server on a thread, and a
//! fetch loop that turns `Retry` into waiting.
#![allow(dead_code)]

pub mod criu;
#[path = "../images_support/mod.rs"]
pub mod images;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lazy_pages_core::engine::{PageData, PageSource, SourceError};
use lazy_pages_core::images::{Dump, PE_LAZY, PE_PRESENT};
use lazy_pages_core::remote::{
    PageServer, PageServerConfig, Priority, RemotePages, ServeSummary, ServerError, ServerEvent,
    ServerStopper,
};

use images::*;

pub const LAZY: u32 = PE_LAZY | PE_PRESENT;

/// Two tasks (pids 1 and 2), each with an eager run, a 2000-page lazy run
/// (longer than the 1024-page cap), two adjacent lazy runs, and a lone page.
pub fn two_task_dump() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    inventory(dir, 2);
    pstree(dir, &[(1, 0), (2, 1)]);
    for (pid, tag) in [(1u32, 0xA1u8), (2, 0xB2)] {
        core(dir, pid, 1);
        mm(dir, pid, big_vma());
        let entries = [
            entry(0x10000, 2, PE_PRESENT),
            entry(0x20000, 2000, LAZY),
            entry(0x900000, 3, LAZY),
            entry(0x903000, 5, LAZY),
            entry(0xa00000, 1, LAZY),
        ];
        level(dir, pid, pid, &entries, tag);
    }
    tmp
}

pub struct Running {
    pub addr: SocketAddr,
    pub stopper: ServerStopper,
    pub events: Arc<Mutex<Vec<ServerEvent>>>,
    handle: Option<JoinHandle<Result<ServeSummary, ServerError>>>,
}

impl Running {
    /// Loopback address of the server (it may listen on 0.0.0.0).
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    pub fn join(mut self) -> Result<ServeSummary, ServerError> {
        self.handle.take().unwrap().join().unwrap()
    }

    pub fn stop(self) -> Result<ServeSummary, ServerError> {
        self.stopper.stop();
        self.join()
    }

    pub fn ended(&self) -> Vec<(lazy_pages_core::remote::SessionStats, Option<String>)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ServerEvent::SessionEnded { stats, error, .. } => Some((*stats, error.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stopper.stop();
            let _ = h.join();
        }
    }
}

pub fn serve(dump: &Dump, config: PageServerConfig) -> Running {
    let events: Arc<Mutex<Vec<ServerEvent>>> = Arc::default();
    let sink = events.clone();
    let server = PageServer::bind(
        dump,
        config,
        Arc::new(move |e| sink.lock().unwrap().push(e)),
    )
    .unwrap();
    let addr = server.local_addr();
    let stopper = server.stopper();
    let handle = Some(std::thread::spawn(move || server.run()));
    Running {
        addr,
        stopper,
        events,
        handle,
    }
}

/// Fetches a span, waiting (bounded) until its bytes are in.
pub fn fetch(
    client: &RemotePages,
    pid: u32,
    addr: u64,
    len: usize,
    priority: Priority,
) -> Result<Vec<u8>, SourceError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scratch = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            client.wait_for(pid, addr, len, priority, left)?,
            "no data for task {pid} at {addr:#x} within 30 s: {}",
            client.debug_dump()
        );
        match client.fetch(pid, addr, len, &mut scratch, priority)? {
            PageData::Bytes(b) => return Ok(b.to_vec()),
            PageData::Zero => panic!("remote source said Zero"),
            // Taken by someone else between the two calls: ask again.
            PageData::Pending => {}
        }
    }
}

/// Counts the wake-ups of a source, as the engine's waker would take them.
pub type Wakes = Arc<(Mutex<u64>, Condvar)>;

/// Gives `source` its one waker (as the engine does once); every caller of
/// `source_fetch` on that source shares it.
pub fn attach_waker(source: &dyn PageSource) -> Wakes {
    let woken: Wakes = Arc::new((Mutex::new(0u64), Condvar::new()));
    let w = woken.clone();
    source.set_waker(Arc::new(move || {
        *w.0.lock().unwrap() += 1;
        w.1.notify_all();
    }));
    woken
}

/// `pages()` until bytes arrive (bounded), asking again whenever the source's
/// waker says something completed, as the engine does.
pub fn source_fetch(
    source: &dyn PageSource,
    woken: &Wakes,
    pid: u32,
    addr: u64,
    len: usize,
    priority: Priority,
) -> Vec<u8> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut scratch = Vec::new();
    loop {
        let seen = *woken.0.lock().unwrap();
        match source
            .pages(pid, addr, len, &mut scratch, priority)
            .unwrap()
        {
            PageData::Bytes(b) => return b.to_vec(),
            PageData::Zero => panic!("remote source said Zero"),
            PageData::Pending => {
                let left = deadline.checked_duration_since(std::time::Instant::now());
                let left = left
                    .unwrap_or_else(|| panic!("no data for task {pid} at {addr:#x} within 30 s"));
                let guard = woken.0.lock().unwrap();
                drop(
                    woken
                        .1
                        .wait_timeout_while(guard, left, |n| *n == seen)
                        .unwrap(),
                );
            }
        }
    }
}

/// What the dump holds for a span.
pub fn expected(dump: &Dump, pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dump.memory(pid)
        .unwrap()
        .read_pages(addr, &mut buf)
        .unwrap();
    buf
}

/// Fetches every lazy page of every task in chunks of `chunk_pages` (cut at
/// extent ends) and compares; returns the page count.
pub fn fetch_and_compare_all(
    client: &RemotePages,
    dump: &Dump,
    chunk_pages: u64,
    priority: Priority,
) -> u64 {
    compare_all(dump, chunk_pages, |pid, addr, len| {
        fetch(client, pid, addr, len, priority).unwrap()
    })
}

/// Walks every lazy page with data in `chunk_pages` spans (cut at extent ends),
/// checks what `fetch` returns against the dump; returns the page count.
pub fn compare_all(
    dump: &Dump,
    chunk_pages: u64,
    mut fetch: impl FnMut(u32, u64, usize) -> Vec<u8>,
) -> u64 {
    let mut total = 0;
    for task in &dump.tasks {
        let Some(memory) = dump.memory(task.pid) else {
            continue;
        };
        for ext in memory.lazy_extents().into_iter().filter(|e| e.has_data) {
            let mut page = 0;
            while page < ext.pages {
                let n = chunk_pages.min(ext.pages - page);
                let addr = ext.start + page * 4096;
                let len = (n * 4096) as usize;
                let got = fetch(task.pid, addr, len);
                assert!(
                    got == expected(dump, task.pid, addr, len),
                    "task {} at {addr:#x} (+{n} pages) differs",
                    task.pid
                );
                page += n;
                total += n;
            }
        }
    }
    total
}

/// Connects to `target` from `local`, with SO_RCVBUF set to `rcvbuf` before the
/// connect (so the window it advertises stays that small), if given.
pub fn connect_from(
    local: std::net::Ipv4Addr,
    target: &str,
    rcvbuf: Option<i32>,
) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let (from, to) = (
        sockaddr(std::net::SocketAddrV4::new(local, 0)),
        sockaddr(target.parse().unwrap()),
    );
    // SAFETY: a fresh socket owned by the returned stream; addresses and the option
    // value are live locals of the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        if let Some(size) = rcvbuf {
            let optlen = std::mem::size_of::<i32>() as libc::socklen_t;
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                optlen,
            );
            assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        }
        assert_eq!(
            libc::bind(fd, (&raw const from).cast(), len),
            0,
            "bind {local}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::connect(fd, (&raw const to).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}
