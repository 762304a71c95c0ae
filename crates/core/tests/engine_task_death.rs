//! Tasks that exit, are killed, exec or munmap their memory while several fill threads
//! are copying into them: every lazy page must still be counted exactly once.
//!
//! Each "restored task" is a real child process with its own mm: it registers a region
//! of its own on a uffd it creates itself (as CRIU's restorer does) and hands the fd
//! over through the fd table it shares with this process (CLONE_FILES). This process
//! never touches those regions, so nothing here is registered in its own mm and the
//! children need no FORK handling. Before the fix, the exit path counted a claim that a
//! fill thread was still copying as dropped, and the fill thread then counted the same
//! pages as copied (`total` < the sum of the buckets).
//!
//! `LAZY_RACE_ITERS` sets the number of rounds (default 120, 4 children each).

mod engine_support;

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::*;
use lazy_pages_core::engine::{Engine, EngineConfig};
use std::os::fd::{FromRawFd, OwnedFd};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));
const PAGES: usize = 384;
const CHILDREN: usize = 4;

fn iterations(default: usize) -> usize {
    std::env::var("LAZY_RACE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spin(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

// The two uffd ioctls a restorer issues, spelled out so the child needs no library code.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}
nix::ioctl_readwrite!(uffdio_api, 0xAA, 0x3F, UffdioApi);
nix::ioctl_readwrite!(uffdio_register, 0xAA, 0x00, UffdioRegister);
const UFFD_API: u64 = 0xAA;
/// EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP, as CRIU asks for them.
const FEATURES: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6);
const MODE_MISSING: u64 = 1;

/// How a child ends its life mid-fill.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// `_exit` after touching some pages.
    Exit,
    /// Keeps touching pages until this process SIGKILLs it.
    Kill,
    /// execve(/bin/true): the mm it was restored into goes away.
    Exec,
    /// munmaps part of the region (maybe all of it), touches the rest, then exits.
    Munmap { at: usize, pages: usize },
}

/// Words in the page a child shares with this process.
#[repr(C)]
struct Mailbox {
    /// The child's uffd (a number in the shared fd table), or -errno.
    fd: AtomicI32,
    /// Set by this process once the engine has the uffd.
    go: AtomicU32,
    /// Pages the child read with the wrong bytes.
    bad: AtomicU32,
}

struct Child {
    pid: libc::pid_t,
    mailbox: *const Mailbox,
    death: Death,
    _region: Region,
}

/// Clones a child that registers `region` in its own mm on a uffd of its own, waits for
/// `go`, reads `order[..touch]` checking every byte, then dies as `death` says.
fn spawn(
    region: Region,
    order: &[usize],
    touch: usize,
    linger_us: u64,
    death: Death,
    exec: &ExecArgs,
) -> Child {
    // SAFETY: a fresh shared anonymous page, zeroed, big enough for a Mailbox.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PS,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    let mailbox = page as *const Mailbox;
    // SAFETY: the child only issues syscalls, reads memory, does arithmetic, writes the
    // shared page and leaves by _exit/execve: no allocation, no locks, no unwinding.
    let pid = unsafe { fork_sharing_fds() };
    if pid == 0 {
        // SAFETY: see above; every pointer is to memory this child inherited.
        unsafe { child_main(&*mailbox, &region, order, touch, linger_us, death, exec) }
    }
    Child {
        pid,
        mailbox,
        death,
        _region: region,
    }
}

/// argv/envp for the Exec death, built before any fork (the child must not allocate).
struct ExecArgs {
    path: CString,
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
}

impl ExecArgs {
    fn new() -> Box<Self> {
        let path = CString::new("/bin/true").unwrap();
        let mut args = Box::new(ExecArgs {
            path,
            argv: [std::ptr::null(); 2],
            envp: [std::ptr::null()],
        });
        args.argv[0] = args.path.as_ptr();
        args
    }
}

/// The child's whole life.
///
/// # Safety
/// Only in a child of `fork_sharing_fds`, with `region` inherited and unregistered.
unsafe fn child_main(
    mb: &Mailbox,
    region: &Region,
    order: &[usize],
    touch: usize,
    linger_us: u64,
    death: Death,
    exec: &ExecArgs,
) -> ! {
    let die = |code: i32| -> ! {
        // SAFETY: leaving without running any Rust code.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: plain syscalls on our own fd and our own mapping.
    let fd =
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as i32;
    if fd < 0 {
        mb.fd.store(-1, SeqCst);
        die(1);
    }
    let mut api = UffdioApi {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    let mut reg = UffdioRegister {
        start: region.addr,
        len: (region.pages * PS) as u64,
        mode: MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: the structs are the kernel's layout; the range is our own mapping.
    if unsafe { uffdio_api(fd, &mut api) }.is_err()
        || unsafe { uffdio_register(fd, &mut reg) }.is_err()
    {
        mb.fd.store(-2, SeqCst);
        die(1);
    }
    mb.fd.store(fd, SeqCst);
    while mb.go.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }
    let unmapped =
        |i: usize| matches!(death, Death::Munmap { at, pages } if (at..at + pages).contains(&i));
    let check = |i: usize| {
        // SAFETY: page i of our registered region, still mapped (unmapped ones are skipped).
        if unsafe {
            check_page(region.page_addr(i), |b| {
                pattern(IMG_BASE + (i * PS) as u64, b)
            })
        }
        .is_err()
        {
            mb.bad.fetch_add(1, SeqCst);
        }
    };
    for &i in &order[..touch] {
        check(i);
    }
    // clock_gettime is a vDSO call: no lock, no allocation.
    spin(linger_us);
    match death {
        Death::Exit => die(0),
        Death::Kill => loop {
            for &i in order {
                check(i);
            }
        },
        Death::Exec => {
            // SAFETY: argv/envp are NUL-terminated arrays of C strings built before the fork.
            unsafe { libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr()) };
            die(127)
        }
        Death::Munmap { at, pages } => {
            // SAFETY: unmapping part of our own region; nothing reads it afterwards.
            unsafe { libc::munmap(region.page_addr(at) as *mut libc::c_void, pages * PS) };
            for &i in order {
                if !unmapped(i) {
                    check(i);
                }
            }
            die(0)
        }
    }
}

/// Waits for a child, killing it if it is still alive after 30 s (a fault nobody served).
fn reap(pid: libc::pid_t, round: usize, k: usize) {
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: polling and reaping our own child.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if t0.elapsed() > Duration::from_secs(30) {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("round {round}: child {k} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_page_counted_once_when_tasks_die_mid_fill() {
    let layout = Layout::all(PAGES);
    let exec = ExecArgs::new();
    let mut rng = Rng(0xdead_beef_cafe);
    let mut deaths = [0usize; 4];
    let mut mid_fill = 0;
    let rounds = iterations(120);
    for round in 0..rounds {
        // A slow source stretches the fill over a few ms, so deaths land inside it.
        let mut source = PatternSource::new(&layout);
        source.delay = Some(Duration::from_micros(rng.below(300)));
        let source = Arc::new(source);
        let config = EngineConfig {
            jobs: 4,
            chunk_pages: 8 + rng.below(40),
            fault_pages: 1 + rng.below(4),
            ..EngineConfig::default()
        };
        let engine = Engine::start(source.clone(), config, Recorder::default().callback()).unwrap();
        let mut children = Vec::new();
        for k in 0..CHILDREN {
            let order = shuffled(PAGES, rng.below(u64::MAX));
            let touch = rng.below(PAGES as u64 / 8) as usize;
            let death = match rng.below(4) {
                0 => Death::Exit,
                1 => Death::Kill,
                2 => Death::Exec,
                _ => {
                    let at = rng.below(PAGES as u64) as usize;
                    Death::Munmap {
                        at,
                        pages: 1 + rng.below((PAGES - at) as u64) as usize,
                    }
                }
            };
            deaths[match death {
                Death::Exit => 0,
                Death::Kill => 1,
                Death::Exec => 2,
                Death::Munmap { .. } => 3,
            }] += 1;
            let region = Region::new(PAGES);
            let ranges = layout.ranges(region.addr);
            let child = spawn(region, &order, touch, rng.below(4000), death, &exec);
            // SAFETY: reading the child's mailbox, a live shared page.
            let mb = unsafe { &*child.mailbox };
            let t0 = Instant::now();
            let fd = loop {
                match mb.fd.load(SeqCst) {
                    0 if t0.elapsed() < Duration::from_secs(10) => std::thread::yield_now(),
                    fd => break fd,
                }
            };
            assert!(
                fd > 0,
                "round {round}: child {k} could not set up its uffd ({fd})"
            );
            // SAFETY: the child created this fd in the fd table we share and leaves it to us.
            let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
            engine.add_task(100 + k as u32, uffd, ranges).unwrap();
            children.push(child);
        }
        engine.restore_finished();
        for c in &children {
            // SAFETY: as above.
            unsafe { &*c.mailbox }.go.store(1, SeqCst);
        }
        for c in &children {
            if let Death::Kill = c.death {
                spin(rng.below(2000));
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(c.pid, libc::SIGKILL) };
            }
        }
        for (k, c) in children.iter().enumerate() {
            reap(c.pid, round, k);
            // SAFETY: the child is gone; its mailbox page is ours to read, then unmap.
            let bad = unsafe { &*c.mailbox }.bad.load(SeqCst);
            assert_eq!(
                bad, 0,
                "round {round}: child {k} ({:?}) read {bad} pages with wrong bytes",
                c.death
            );
            // SAFETY: as above; nothing refers to the page any more.
            unsafe { libc::munmap(c.mailbox as *mut libc::c_void, PS) };
        }
        assert!(
            engine.wait(WAIT),
            "round {round}: engine did not finish: {:?}",
            engine.stats()
        );
        let summary = engine
            .join()
            .unwrap_or_else(|e| panic!("round {round}: engine failed: {e}"));
        for (t, c) in summary.tasks.iter().zip(&children) {
            assert!(
                t.reconciles(),
                "round {round}: {:?} task counted a page twice or never: {t:?}",
                c.death
            );
            assert_eq!((t.pending, t.in_flight), (0, 0), "round {round}: {t:?}");
            assert_eq!(t.total, PAGES as u64);
            if t.dropped > 0 && t.dropped < t.total {
                mid_fill += 1;
            }
        }
    }
    eprintln!(
        "deaths: {} exit, {} kill, {} exec, {} munmap; {mid_fill} tasks lost pages mid-fill",
        deaths[0], deaths[1], deaths[2], deaths[3]
    );
    // Otherwise every death fell before or after the fill and this proved nothing
    // (about 1 task in 5 dies mid-fill here).
    assert!(
        mid_fill >= rounds / 20,
        "only {mid_fill} of {} tasks died mid-fill",
        rounds * CHILDREN
    );
}
