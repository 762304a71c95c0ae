//! pagemap-<pid>.img: which pages were dumped, with which flags, and where
//! their bytes sit in pages-<id>.img. Validated strictly on read so lookups
//! can trust the runs (sorted, disjoint, no overflow).

use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::framing::{read_image, HeadMagic, ImageFile, PAGEMAP_MAGIC};
use super::proto::{PagemapEntry, PagemapHead};
use super::PAGE_SIZE;

/// Content is in the parent image chain; no bytes in this pages file.
pub const PE_PARENT: u32 = 0x1;
/// May be restored lazily (post-copy).
pub const PE_LAZY: u32 = 0x2;
/// Content bytes are in this directory's pages file.
pub const PE_PRESENT: u32 = 0x4;

const PE_KNOWN: u32 = PE_PARENT | PE_LAZY | PE_PRESENT;

/// One pagemap entry, normalised: `flags` already include the legacy
/// `in_parent` and the "no flags means present" default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub pages: u64,
    pub flags: u32,
    /// Byte offset in pages-<id>.img, iff PE_PRESENT.
    pub data_offset: Option<u64>,
    /// Where this entry's length word is in the pagemap file, for errors.
    pub entry_offset: u64,
}

impl PageRun {
    /// Exclusive end address; cannot overflow once the pagemap is validated.
    pub fn end(&self) -> u64 {
        self.vaddr
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }

    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }

    pub fn is_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }

    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
}

#[derive(Debug, Clone)]
pub struct Pagemap {
    pub path: PathBuf,
    pub pages_id: u32,
    /// Sorted by address, non-overlapping.
    pub runs: Vec<PageRun>,
}

impl Pagemap {
    /// The run containing `vaddr`, by binary search.
    pub fn run_at(&self, vaddr: u64) -> Option<&PageRun> {
        let idx = self.runs.partition_point(|run| run.end() <= vaddr);
        self.runs.get(idx).filter(|run| run.vaddr <= vaddr)
    }

    /// Index of the first run ending after `addr`.
    pub fn first_ending_after(&self, addr: u64) -> usize {
        self.runs.partition_point(|run| run.end() <= addr)
    }

    /// Bytes the PE_PRESENT runs occupy in the pages file.
    pub fn present_bytes(&self) -> u64 {
        self.runs
            .iter()
            .rev()
            .find_map(|run| {
                Some(
                    run.data_offset?
                        .saturating_add(run.pages.saturating_mul(PAGE_SIZE)),
                )
            })
            .unwrap_or(0)
    }

    pub fn pages_file_name(&self) -> String {
        pages_file_name(self.pages_id)
    }
}

pub fn pagemap_file_name(pid: u32) -> String {
    format!("pagemap-{pid}.img")
}

pub fn pages_file_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// Reads `<dir>/pagemap-<pid>.img`; `Ok(None)` if it does not exist.
pub fn read_pagemap(dir: &Path, pid: u32, head: HeadMagic) -> Result<Option<Pagemap>, ImageError> {
    let path = dir.join(pagemap_file_name(pid));
    match read_image(&path, PAGEMAP_MAGIC, head)? {
        Some(file) => parse_pagemap(&file).map(Some),
        None => Ok(None),
    }
}

/// The runs of a pagemap image: each entry checked, sorted, non-overlapping, with
/// pages-file offsets assigned. Never panics, whatever the bytes (fuzzed: crates/fuzz).
pub fn parse_pagemap(file: &ImageFile) -> Result<Pagemap, ImageError> {
    let path = file.path();
    let mut entries = file.entries();
    let head_entry = entries
        .next()
        .ok_or_else(|| ImageError::new(path, "pagemap has no head entry"))??;
    let head: PagemapHead = file.decode(&head_entry)?;
    let pages_id = head
        .pages_id
        .ok_or_else(|| ImageError::at(path, head_entry.offset, "pagemap head lacks pages_id"))?;

    let mut runs: Vec<PageRun> = Vec::new();
    let mut data_end = 0u64;
    for entry in entries {
        let entry = entry?;
        let raw: PagemapEntry = file.decode(&entry)?;
        let err = |msg: String| ImageError::at(path, entry.offset, msg);
        let mut run = normalise(&raw, entry.offset).map_err(err)?;
        if let Some(prev) = runs.last() {
            if run.vaddr < prev.end() {
                let what = if run.vaddr < prev.vaddr {
                    "not sorted"
                } else {
                    "overlaps"
                };
                return Err(err(format!(
                    "entry {:#x}-{:#x} {what}: previous entry is {:#x}-{:#x}",
                    run.vaddr,
                    run.end(),
                    prev.vaddr,
                    prev.end()
                )));
            }
        }
        if run.is_present() {
            run.data_offset = Some(data_end);
            data_end = data_end
                .checked_add(run.pages.saturating_mul(PAGE_SIZE))
                .ok_or_else(|| err("pages file offset overflows".to_string()))?;
        }
        runs.push(run);
    }
    Ok(Pagemap {
        path: path.to_path_buf(),
        pages_id,
        runs,
    })
}

/// Checks one entry on its own and applies CRIU's flag normalisation.
fn normalise(raw: &PagemapEntry, entry_offset: u64) -> Result<PageRun, String> {
    let vaddr = raw.vaddr.ok_or("entry lacks vaddr")?;
    // v4.2 writes 0 in the u32 field and the real count in field 5.
    let pages = match (raw.nr_pages, raw.compat_nr_pages) {
        (Some(n), _) => n,
        (None, Some(n)) => u64::from(n),
        (None, None) => return Err("entry lacks nr_pages".to_string()),
    };
    let mut flags = raw.flags.unwrap_or(PE_PRESENT);
    if raw.in_parent == Some(true) {
        flags = raw.flags.unwrap_or(0) | PE_PARENT;
    }
    if vaddr % PAGE_SIZE != 0 {
        return Err(format!("vaddr {vaddr:#x} is not page aligned"));
    }
    if pages == 0 {
        return Err(format!("entry at {vaddr:#x} has 0 pages"));
    }
    pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| vaddr.checked_add(len))
        .ok_or_else(|| {
            format!("entry at {vaddr:#x} with {pages} pages overflows the address space")
        })?;
    check_flags(flags).map_err(|why| format!("entry at {vaddr:#x}: flags {flags:#x} {why}"))?;
    Ok(PageRun {
        vaddr,
        pages,
        flags,
        data_offset: None,
        entry_offset,
    })
}

/// Rejects combinations CRIU never writes, so the rest of the reader (and the
/// fault engine) can assume lazy pages never need the parent chain.
fn check_flags(flags: u32) -> Result<(), &'static str> {
    if flags & !PE_KNOWN != 0 {
        return Err("has unknown bits");
    }
    if flags == 0 {
        return Err("say nothing about where the pages are");
    }
    if flags & PE_PARENT != 0 && flags != PE_PARENT {
        return Err("combine PE_PARENT with other flags");
    }
    Ok(())
}
