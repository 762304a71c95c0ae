//! One process's dumped memory: its VMAs and its pagemap chain, with the
//! lookups the fault engine needs (binary searches, no I/O).

use super::chain::Level;
use super::error::ImageError;
use super::mm::Vma;
use super::pagemap::PageRun;
use super::PAGE_SIZE;

#[derive(Debug)]
pub struct TaskMemory {
    pub pid: u32,
    /// Sorted, non-overlapping.
    pub vmas: Vec<Vma>,
    /// levels[0] is the images dir itself, then its parent, and so on.
    pub(crate) levels: Vec<Level>,
}

/// A range the daemon must serve: dump-time address, page count, and whether
/// this dump's pages file has its bytes (false for `dump --lazy-pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyExtent {
    pub start: u64,
    pub pages: u64,
    pub has_data: bool,
}

/// Page counts of a task's top-level pagemap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskSummary {
    pub pid: u32,
    pub vmas: u64,
    /// All runs of the top-level pagemap.
    pub pages: u64,
    pub lazy: u64,
    pub in_parent: u64,
    pub present: u64,
    /// Bytes of this dir's pages file used by the task (present * 4096).
    pub bytes: u64,
}

/// Where the bytes of an address live, after following PE_PARENT.
enum Lookup<'a> {
    /// The bytes from the address up to the end of the narrowest run crossed.
    Data(&'a [u8]),
    /// A run covers the address but holds no bytes (PE_LAZY without PE_PRESENT).
    NoData(&'a Level, &'a PageRun),
    /// No run of this level covers the address.
    NotDumped(&'a Level),
}

impl TaskMemory {
    pub(crate) fn new(pid: u32, vmas: Vec<Vma>, levels: Vec<Level>) -> TaskMemory {
        TaskMemory { pid, vmas, levels }
    }

    /// Each level's pagemap and pages file path, top level first.
    pub fn chain(&self) -> impl Iterator<Item = (&super::pagemap::Pagemap, &std::path::Path)> {
        self.levels
            .iter()
            .map(|l| (&l.pagemap, l.pages.path.as_path()))
    }

    /// Lazy ranges of this task: PE_LAZY runs of the top level, cut at VMA
    /// edges (a run part outside any VMA is dropped); in address order.
    pub fn lazy_extents(&self) -> Vec<LazyExtent> {
        let mut out = Vec::new();
        let Some(top) = self.levels.first() else {
            return out;
        };
        for run in top.pagemap.runs.iter().filter(|r| r.is_lazy()) {
            let end = run.end();
            let first = self.vmas.partition_point(|v| v.end <= run.vaddr);
            for vma in self.vmas.iter().skip(first).take_while(|v| v.start < end) {
                let start = vma.start.max(run.vaddr);
                let stop = vma.end.min(end);
                out.push(LazyExtent {
                    start,
                    pages: stop.saturating_sub(start) / PAGE_SIZE,
                    has_data: run.is_present(),
                });
            }
        }
        out
    }

    /// Like `pages_slice`, but read with pread into `buf` (whose length gives the span):
    /// false when the span does not lie in one data-carrying run of one level, or on a
    /// read error (the caller then falls back to the mapping, which reports it).
    pub fn read_run(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        let mut limit = u64::MAX;
        for level in &self.levels {
            let Some(run) = level.pagemap.run_at(vaddr) else { return false };
            limit = limit.min(run.end());
            if run.is_parent() {
                continue;
            }
            let Some(base) = run.data_offset else { return false };
            let fits = vaddr.checked_add(buf.len() as u64).is_some_and(|end| end <= limit);
            return match vaddr.checked_sub(run.vaddr).and_then(|d| base.checked_add(d)) {
                Some(off) if fits => level.pages.read_at(off, buf).is_ok(),
                _ => false,
            };
        }
        false
    }

    /// Zero-copy: the bytes of [vaddr, vaddr+pages*4096) if they lie in ONE
    /// data-carrying run of one level (following PE_PARENT); None otherwise.
    pub fn pages_slice(&self, vaddr: u64, pages: u64) -> Option<&[u8]> {
        let len = usize::try_from(pages.checked_mul(PAGE_SIZE)?).ok()?;
        if len == 0 {
            return None;
        }
        match self.lookup(vaddr) {
            Lookup::Data(bytes) => bytes.get(..len),
            _ => None,
        }
    }

    /// The bytes of one dumped page, or None if the dump has no bytes for it
    /// (never dumped: it reads as zero; or lazy-only: the data is elsewhere).
    pub fn page(&self, vaddr: u64) -> Option<&[u8]> {
        self.pages_slice(vaddr & !(PAGE_SIZE - 1), 1)
    }

    /// Fills `buf` with the dumped bytes from `vaddr` on, following parents
    /// and crossing runs and levels; errors if any byte has no dumped data.
    pub fn read_pages(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let mut addr = vaddr;
        let mut rest = buf;
        while !rest.is_empty() {
            let bytes = match self.lookup(addr) {
                Lookup::Data(bytes) if !bytes.is_empty() => bytes,
                other => return Err(self.missing(addr, other)),
            };
            let n = bytes.len().min(rest.len());
            let (head, tail) = rest.split_at_mut(n);
            head.copy_from_slice(bytes.get(..n).unwrap_or_default());
            rest = tail;
            addr = addr.checked_add(n as u64).ok_or_else(|| {
                ImageError::new(
                    &self.top_path(),
                    format!("read past the end of the address space at {addr:#x}"),
                )
            })?;
        }
        Ok(())
    }

    pub fn summary(&self) -> TaskSummary {
        let mut s = TaskSummary {
            pid: self.pid,
            vmas: self.vmas.len() as u64,
            ..TaskSummary::default()
        };
        let runs = self
            .levels
            .first()
            .map(|l| l.pagemap.runs.as_slice())
            .unwrap_or_default();
        for run in runs {
            s.pages = s.pages.saturating_add(run.pages);
            if run.is_lazy() {
                s.lazy = s.lazy.saturating_add(run.pages);
            }
            if run.is_parent() {
                s.in_parent = s.in_parent.saturating_add(run.pages);
            }
            if run.is_present() {
                s.present = s.present.saturating_add(run.pages);
            }
        }
        s.bytes = s.present.saturating_mul(PAGE_SIZE);
        s
    }

    /// The error for an address `lookup` found no bytes for.
    fn missing(&self, addr: u64, lookup: Lookup<'_>) -> ImageError {
        match lookup {
            Lookup::NoData(level, run) => ImageError::at(
                &level.pagemap.path,
                run.entry_offset,
                format!(
                    "page {addr:#x} has no data in the images (entry {:#x}-{:#x}, flags {:#x})",
                    run.vaddr,
                    run.end(),
                    run.flags
                ),
            ),
            Lookup::NotDumped(level) => ImageError::new(
                &level.pagemap.path,
                format!("page {addr:#x} was not dumped"),
            ),
            Lookup::Data(_) => {
                ImageError::new(&self.top_path(), format!("page {addr:#x} was not dumped"))
            }
        }
    }

    fn top_path(&self) -> std::path::PathBuf {
        self.levels
            .first()
            .map(|l| l.pagemap.path.clone())
            .unwrap_or_default()
    }

    /// Follows `addr` down the chain. The returned data stops at the end of
    /// the narrowest run crossed, so it never mixes levels: a PE_PARENT run
    /// only vouches for the parent's bytes inside its own bounds.
    fn lookup(&self, addr: u64) -> Lookup<'_> {
        let mut limit = u64::MAX;
        for level in &self.levels {
            let Some(run) = level.pagemap.run_at(addr) else {
                return Lookup::NotDumped(level);
            };
            limit = limit.min(run.end());
            if run.is_parent() {
                continue;
            }
            let Some(base) = run.data_offset else {
                return Lookup::NoData(level, run);
            };
            // Pagemap validation guarantees these cannot fail; a None here
            // degrades to "no data" rather than a panic.
            let bytes = addr
                .checked_sub(run.vaddr)
                .and_then(|delta| base.checked_add(delta))
                .zip(limit.checked_sub(addr))
                .and_then(|(off, len)| level.pages.bytes(off, len));
            return match bytes {
                Some(bytes) => Lookup::Data(bytes),
                None => Lookup::NoData(level, run),
            };
        }
        // A PE_PARENT run at the last level; open-time validation rules it out.
        match self.levels.last() {
            Some(level) => Lookup::NotDumped(level),
            None => Lookup::Data(&[]),
        }
    }
}
