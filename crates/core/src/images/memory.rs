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
enum Found<'a> {
    /// `len` bytes at `offset` of `level`'s pages file: from the address up to the end
    /// of the narrowest run crossed.
    Data {
        level: &'a Level,
        run: &'a PageRun,
        offset: u64,
        len: u64,
    },
    /// A run covers the address but holds no bytes (PE_LAZY without PE_PRESENT).
    NoData(&'a Level, &'a PageRun),
    /// No run of this level (None: no level at all) covers the address.
    NotDumped(Option<&'a Level>),
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

    /// Fills `buf` with the dumped bytes from `vaddr` on, like `read_pages`, but
    /// through `read(pages file, offset, piece)` for each piece (one run of one level)
    /// instead of the mapping: the serving path reads with pread and checks the file
    /// did not change (`local_pages.rs`). Errors if any byte has no dumped data.
    pub fn read_span(
        &self,
        vaddr: u64,
        buf: &mut [u8],
        mut read: impl FnMut(&std::path::Path, u64, &mut [u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let mut addr = vaddr;
        let mut rest = buf;
        while !rest.is_empty() {
            let (level, offset, avail) = match self.find(addr) {
                Found::Data {
                    level, offset, len, ..
                } if len > 0 => (level, offset, len),
                other => return Err(self.missing(addr, other)),
            };
            let n = usize::try_from(avail).unwrap_or(usize::MAX).min(rest.len());
            let (head, tail) = rest.split_at_mut(n);
            read(&level.pages.path, offset, head)?;
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

    /// The top level's pages file, watched for changes from now on (`watch.rs`).
    pub fn watch_top(&self) -> Result<Option<super::Watched>, ImageError> {
        Ok(self
            .levels
            .first()
            .map(|l| l.pages.watch())
            .transpose()?
            .flatten())
    }

    /// Every pages file of the chain, watched for changes from now on (`watch.rs`).
    pub fn watch_files(&self) -> Result<Vec<super::Watched>, ImageError> {
        self.levels
            .iter()
            .filter_map(|l| l.pages.watch().transpose())
            .collect()
    }

    /// Zero-copy: the bytes of [vaddr, vaddr+pages*4096) if they lie in ONE
    /// data-carrying run of one level (following PE_PARENT); None otherwise.
    pub fn pages_slice(&self, vaddr: u64, pages: u64) -> Option<&[u8]> {
        let len = usize::try_from(pages.checked_mul(PAGE_SIZE)?).ok()?;
        if len == 0 {
            return None;
        }
        self.lookup(vaddr).ok()?.get(..len)
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
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => return Err(self.missing(addr, Found::NotDumped(None))),
                Err(found) => return Err(self.missing(addr, found)),
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
    fn missing(&self, addr: u64, found: Found<'_>) -> ImageError {
        match found {
            Found::NoData(level, run) => ImageError::at(
                &level.pagemap.path,
                run.entry_offset,
                format!(
                    "page {addr:#x} has no data in the images (entry {:#x}-{:#x}, flags {:#x})",
                    run.vaddr,
                    run.end(),
                    run.flags
                ),
            ),
            Found::NotDumped(Some(level)) => ImageError::new(
                &level.pagemap.path,
                format!("page {addr:#x} was not dumped"),
            ),
            Found::NotDumped(None) | Found::Data { .. } => {
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

    /// The mapped bytes at `addr` (see `find`), or why there are none.
    fn lookup(&self, addr: u64) -> Result<&[u8], Found<'_>> {
        match self.find(addr) {
            Found::Data {
                level,
                run,
                offset,
                len,
            } => level
                .pages
                .bytes(offset, len)
                .ok_or(Found::NoData(level, run)),
            other => Err(other),
        }
    }

    /// Follows `addr` down the chain. The data found stops at the end of the
    /// narrowest run crossed, so it never mixes levels: a PE_PARENT run only
    /// vouches for the parent's bytes inside its own bounds.
    fn find(&self, addr: u64) -> Found<'_> {
        let mut limit = u64::MAX;
        for level in &self.levels {
            let Some(run) = level.pagemap.run_at(addr) else {
                return Found::NotDumped(Some(level));
            };
            limit = limit.min(run.end());
            if run.is_parent() {
                continue;
            }
            let Some(base) = run.data_offset else {
                return Found::NoData(level, run);
            };
            // Pagemap validation guarantees these cannot fail; a None here
            // degrades to "no data" rather than a panic.
            return match addr
                .checked_sub(run.vaddr)
                .and_then(|delta| base.checked_add(delta))
                .zip(limit.checked_sub(addr))
            {
                Some((offset, len)) => Found::Data {
                    level,
                    run,
                    offset,
                    len,
                },
                None => Found::NoData(level, run),
            };
        }
        // A PE_PARENT run at the last level; open-time validation rules it out.
        Found::NotDumped(self.levels.last())
    }
}
