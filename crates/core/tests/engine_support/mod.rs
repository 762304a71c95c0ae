//! Shared pieces of the engine tests: a registered anonymous region in this process,
//! an in-memory page source with a known pattern, and an event recorder.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazy_pages_core::engine::{
    EngineEvent, EventCallback, PageData, PageSource, Priority, SourceError, Waker,
};
use lazy_pages_core::ranges::{LazyRange, LazyRanges, PAGE_SIZE};
use userfaultfd::{FeatureFlags, UffdBuilder};

pub const PS: usize = PAGE_SIZE as usize;
/// Dump-time base of the test "image"; deliberately not the run-time address.
pub const IMG_BASE: u64 = 0x5500_0000_0000;

/// Byte `i` of the dumped page at `img_page`; never 0, so zero-fill is detectable.
/// Pure arithmetic: safe to call in a forked child.
pub fn pattern(img_page: u64, i: usize) -> u8 {
    let x = (img_page >> 12)
        .wrapping_mul(0x9e37_79b1)
        .wrapping_add(i as u64 * 31);
    ((x ^ (x >> 11)) as u8) | 1
}

/// An anonymous private mapping, unmapped on drop.
pub struct Region {
    pub addr: u64,
    pub pages: usize,
}

impl Region {
    pub fn new(pages: usize) -> Self {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Region {
            addr: p as u64,
            pages,
        }
    }

    pub fn page_addr(&self, i: usize) -> u64 {
        self.addr + (i * PS) as u64
    }

    /// Registers the region MISSING on a new uffd with all non-cooperative events.
    pub fn uffd(&self) -> OwnedFd {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(
                FeatureFlags::EVENT_FORK
                    | FeatureFlags::EVENT_REMAP
                    | FeatureFlags::EVENT_REMOVE
                    | FeatureFlags::EVENT_UNMAP,
            )
            .create()
            .expect("userfaultfd");
        uffd.register(self.addr as *mut libc::c_void, self.pages * PS)
            .expect("register");
        lazy_pages_core::uffd::uffd_into_owned(uffd)
    }
}

impl Region {
    /// After a test moved or unmapped pages `[i, i + n)` away: maps a fresh anonymous
    /// range there again, so the region is whole and its Drop unmaps only what is ours.
    /// Tests run on parallel threads, and any of them (or malloc) may be handed the hole
    /// meanwhile; then this returns false and the region is leaked instead: unmapping
    /// the whole range would pull memory from under another thread (SIGSEGV in CI once).
    #[must_use]
    pub fn refill(&mut self, i: usize, n: usize, prot: libc::c_int) -> bool {
        let at = self.page_addr(i);
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                n * PS,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p as u64 == at {
            return true;
        }
        if p != libc::MAP_FAILED {
            // An old kernel that ignores NOREPLACE put it elsewhere: not ours to keep.
            // SAFETY: the mapping just created, nothing refers to it.
            unsafe { libc::munmap(p, n * PS) };
        }
        self.pages = 0;
        false
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.pages > 0 {
            // SAFETY: unmapping our own mapping, whole again (see `refill`).
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.pages * PS) };
        }
    }
}

/// Reads page at `addr` (faulting it in if needed) and compares it with `expected`.
/// Returns the index of the first mismatching byte.
///
/// # Safety
/// `addr` must be a mapped, readable page.
pub unsafe fn check_page(addr: u64, expected: impl Fn(usize) -> u8) -> Result<(), (usize, u8, u8)> {
    let p = addr as *const u8;
    for i in 0..PS {
        let got = std::ptr::read_volatile(p.add(i));
        let want = expected(i);
        if got != want {
            return Err((i, got, want));
        }
    }
    Ok(())
}

/// Which pages of a region are lazy, and which of those the dump has bytes for.
#[derive(Clone)]
pub struct Layout {
    pub lazy: Vec<bool>,
    pub present: Vec<bool>,
}

impl Layout {
    pub fn new(
        pages: usize,
        lazy: impl Fn(usize) -> bool,
        present: impl Fn(usize) -> bool,
    ) -> Self {
        Layout {
            lazy: (0..pages).map(&lazy).collect(),
            present: (0..pages).map(|i| lazy(i) && present(i)).collect(),
        }
    }

    pub fn all(pages: usize) -> Self {
        Self::new(pages, |_| true, |_| true)
    }

    pub fn lazy_pages(&self) -> u64 {
        self.lazy.iter().filter(|&&l| l).count() as u64
    }

    /// Lazy ranges for a region at `base`: runs of lazy pages, dump address IMG_BASE + off.
    pub fn ranges(&self, base: u64) -> LazyRanges {
        let mut set = LazyRanges::new();
        let mut i = 0;
        while i < self.lazy.len() {
            if !self.lazy[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.lazy.len() && self.lazy[i] {
                i += 1;
            }
            let off = (start * PS) as u64;
            assert!(set.insert(LazyRange::new(
                base + off,
                base + (i * PS) as u64,
                IMG_BASE + off
            )));
        }
        set
    }

    /// Expected byte `b` of page `i` after a full restore.
    pub fn expected(&self, i: usize, b: usize) -> u8 {
        if self.present[i] {
            pattern(IMG_BASE + (i * PS) as u64, b)
        } else {
            0
        }
    }
}

/// In-memory dump: pattern bytes for present pages, counting what it served.
pub struct PatternSource {
    data: Vec<u8>,
    present: Vec<bool>,
    /// Times each page was served (Pending answers are not counted).
    pub served: Vec<AtomicU32>,
    /// Answer Pending to this many requests first (waking the engine at once, as a
    /// source whose fetch completed right away would).
    pub retries: AtomicI64,
    waker: Mutex<Option<Waker>>,
    /// Sleep per request, to widen race windows.
    pub delay: Option<Duration>,
    /// First page index of every request served, in order.
    pub log: Mutex<Vec<usize>>,
}

impl PatternSource {
    pub fn new(layout: &Layout) -> Self {
        let n = layout.lazy.len();
        let mut data = vec![0u8; n * PS];
        for i in 0..n {
            if layout.present[i] {
                for b in 0..PS {
                    data[i * PS + b] = pattern(IMG_BASE + (i * PS) as u64, b);
                }
            }
        }
        PatternSource {
            data,
            present: layout.present.clone(),
            served: (0..n).map(|_| AtomicU32::new(0)).collect(),
            retries: AtomicI64::new(0),
            waker: Mutex::new(None),
            delay: None,
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn served(&self, i: usize) -> u32 {
        self.served[i].load(SeqCst)
    }
}

impl PageSource for PatternSource {
    fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap() = Some(waker);
    }

    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        _scratch: &'a mut Vec<u8>,
        _: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        let off = img_addr.checked_sub(IMG_BASE).map(|o| o as usize);
        let Some(off) = off.filter(|o| o % PS == 0 && len % PS == 0 && o + len <= self.data.len())
        else {
            return Err(SourceError::Missing { pid, img_addr, len });
        };
        if self.retries.fetch_sub(1, SeqCst) > 0 {
            if let Some(wake) = self.waker.lock().unwrap().clone() {
                wake();
            }
            return Ok(PageData::Pending);
        }
        let pages = off / PS..(off + len) / PS;
        self.log.lock().unwrap().push(off / PS);
        for i in pages.clone() {
            self.served[i].fetch_add(1, SeqCst);
        }
        if pages.clone().all(|i| !self.present[i]) {
            return Ok(PageData::Zero);
        }
        Ok(PageData::Bytes(&self.data[off..off + len]))
    }
}

/// Collects engine events.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<EngineEvent>>>);

impl Recorder {
    pub fn callback(&self) -> EventCallback {
        let events = self.0.clone();
        Box::new(move |e| events.lock().unwrap().push(e))
    }

    pub fn events(&self) -> Vec<EngineEvent> {
        self.0.lock().unwrap().clone()
    }
}

/// Touches every page in `pages` order from a thread, returning mismatches.
pub fn touch_pages(
    base: u64,
    layout: Arc<Layout>,
    order: Vec<usize>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut bad = Vec::new();
        for i in order {
            // SAFETY: page i of a live test region.
            if let Err((b, got, want)) =
                unsafe { check_page(base + (i * PS) as u64, |b| layout.expected(i, b)) }
            {
                bad.push(format!("page {i} byte {b}: got {got:#x} want {want:#x}"));
            }
        }
        bad
    })
}

/// Deterministic shuffled page order.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// fork(2) for tests whose own process is the "restored task": a raw syscall (not glibc's
/// fork, which holds malloc locks across it while this same process's engine needs malloc
/// to read the FORK message), and with CLONE_FILES. The fd table is shared, not copied:
/// the fork copies it before the address space, so a copied table would hold an extra
/// reference to the task's uffd; if the engine then retired (closed) it mid-fork, the
/// uffd would never be released and the fork would wait forever for a FORK message
/// nobody reads (engine_fork hung like that). In production the restored task holds no
/// copy of the daemon's uffd, so this only matters here.
/// Returns 0 in the child, which must only read memory, write to shared memory and
/// `_exit`.
///
/// # Safety
/// The child runs with a copy of this process's memory in which other threads' locks may
/// be held: it must not allocate, lock, or unwind. It must not close fds (they are shared).
pub unsafe fn fork_sharing_fds() -> libc::pid_t {
    // SAFETY: clone with fork semantics apart from CLONE_FILES; the caller upholds the rest.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    assert!(pid >= 0, "clone: {}", std::io::Error::last_os_error());
    pid as libc::pid_t
}

/// A small xorshift generator: repeatable random choices for the engine tests.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
