//! Writers for the two images a transform rewrites: pagemap-<pid>.img and
//! the raw pages-<id>.img. Files are staged under a temporary name in the
//! destination directory and renamed into place only when the caller commits,
//! so a transform can prepare every file before touching the dump.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use super::error::ImageError;
use super::framing::{HeadMagic, HEAD_MAGIC, PAGEMAP_MAGIC};
use super::pagemap::{PE_LAZY, PE_PARENT, PE_PRESENT};
use super::proto::{PagemapEntry, PagemapHead};
use super::PagemapWriter;
use super::PAGE_SIZE;

/// One pagemap entry to write. Data offsets are implicit: PE_PRESENT runs own
/// consecutive slices of the pages file in entry order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpec {
    pub vaddr: u64,
    pub pages: u64,
    pub flags: u32,
}

impl RunSpec {
    pub fn end(&self) -> u64 {
        self.vaddr
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }
}

/// A file written under a temporary name next to `dest`. `commit` renames it
/// into place; dropping it uncommitted removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// rename(2) replaces `dest` atomically: readers see the old or the new
    /// file, never a half-written one. An old file still mapped by a reader
    /// stays valid (its inode lives on until unmapped).
    pub fn commit(mut self) -> Result<(), ImageError> {
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| ImageError::io(&self.dest, "cannot rename new image into place", &e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover temp file is harmless to CRIU.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to a temp file beside `dest` and syncs it.
pub fn stage_bytes(dest: &Path, bytes: &[u8]) -> Result<Staged, ImageError> {
    stage_with(dest, |out| out.write_all(bytes))
}

/// Streams `chunks` (in order) into a staged raw pages file; returns the
/// staged file and its length. Pages files have no magic at all.
pub fn stage_pages<'a, I>(dest: &Path, chunks: I) -> Result<(Staged, u64), ImageError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut len = 0u64;
    let staged = stage_with(dest, |out| {
        for chunk in chunks {
            out.write_all(chunk)?;
            len = len.saturating_add(chunk.len() as u64);
        }
        Ok(())
    })?;
    Ok((staged, len))
}

/// Encodes and stages a pagemap image at `dest`.
pub fn stage_pagemap(
    dest: &Path,
    head: HeadMagic,
    style: PagemapWriter,
    pages_id: u32,
    runs: &[RunSpec],
) -> Result<Staged, ImageError> {
    let bytes =
        encode_pagemap(head, style, pages_id, runs).map_err(|msg| ImageError::new(dest, msg))?;
    stage_bytes(dest, &bytes)
}

/// The bytes of a pagemap image. Runs are checked the way the reader checks
/// them, so we never write an image we (or CRIU) would refuse.
///
/// `style` says how each entry carries its page count: as the CRIU that wrote
/// the input did (4.1.1: field 2 only; 4.2: field 2 = 0 and field 5), so the
/// output still tells which page-server wire format goes with it; `Either`
/// writes both, for a reader of either version.
pub fn encode_pagemap(
    head: HeadMagic,
    style: PagemapWriter,
    pages_id: u32,
    runs: &[RunSpec],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(16 + runs.len() * 24);
    if head == HeadMagic::Present {
        out.extend_from_slice(&HEAD_MAGIC.to_le_bytes());
    }
    out.extend_from_slice(&PAGEMAP_MAGIC.to_le_bytes());
    let head_entry = PagemapHead {
        pages_id: Some(pages_id),
    };
    push_entry(&mut out, &head_entry.encode_to_vec())?;
    let mut prev_end = 0u64;
    for (idx, run) in runs.iter().enumerate() {
        check_run(run, prev_end).map_err(|why| format!("pagemap entry {idx}: {why}"))?;
        prev_end = run.end();
        let compat = u32::try_from(run.pages).map_err(|_| {
            format!(
                "pagemap entry {idx} at {:#x}: {} pages do not fit the u32 count CRIU 4.1.1 reads",
                run.vaddr, run.pages
            )
        })?;
        let (compat_nr_pages, nr_pages) = match style {
            PagemapWriter::Criu411 => (Some(compat), None),
            PagemapWriter::Criu42 => (Some(0), Some(run.pages)),
            PagemapWriter::Either => (Some(compat), Some(run.pages)),
        };
        let entry = PagemapEntry {
            vaddr: Some(run.vaddr),
            compat_nr_pages,
            in_parent: None,
            flags: Some(run.flags),
            nr_pages,
        };
        push_entry(&mut out, &entry.encode_to_vec())?;
    }
    Ok(out)
}

fn push_entry(out: &mut Vec<u8>, body: &[u8]) -> Result<(), String> {
    let len = u32::try_from(body.len()).map_err(|_| "entry too large".to_string())?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

fn check_run(run: &RunSpec, prev_end: u64) -> Result<(), String> {
    let at = run.vaddr;
    if at % PAGE_SIZE != 0 {
        return Err(format!("vaddr {at:#x} is not page aligned"));
    }
    if run.pages == 0 {
        return Err(format!("entry at {at:#x} has 0 pages"));
    }
    if run
        .pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| at.checked_add(len))
        .is_none()
    {
        return Err(format!("entry at {at:#x} overflows the address space"));
    }
    if at < prev_end {
        return Err(format!(
            "entry at {at:#x} is unsorted or overlaps the previous one (ends {prev_end:#x})"
        ));
    }
    let f = run.flags;
    let known = PE_PARENT | PE_LAZY | PE_PRESENT;
    if f == 0 || f & !known != 0 || (f & PE_PARENT != 0 && f != PE_PARENT) {
        return Err(format!("entry at {at:#x} has invalid flags {f:#x}"));
    }
    Ok(())
}

/// Creates a unique temp file beside `dest`, runs `fill`, syncs, and returns it staged.
fn stage_with(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<Staged, ImageError> {
    let tmp = temp_name(dest)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ImageError::io(&tmp, "cannot create temporary image", &e))?;
    // From here on, dropping `staged` on an error removes the temp file.
    let staged = Staged {
        tmp,
        dest: dest.to_path_buf(),
        committed: false,
    };
    let mut out = BufWriter::with_capacity(1 << 20, file);
    fill(&mut out).map_err(|e| ImageError::io(&staged.tmp, "cannot write image", &e))?;
    let file = out
        .into_inner()
        .map_err(|e| ImageError::io(&staged.tmp, "cannot write image", e.error()))?;
    // Sync before rename so a crash cannot leave the new name on empty data.
    file.sync_all()
        .map_err(|e| ImageError::io(&staged.tmp, "cannot sync image", &e))?;
    Ok(staged)
}

fn temp_name(dest: &Path) -> Result<PathBuf, ImageError> {
    let name = dest
        .file_name()
        .ok_or_else(|| ImageError::new(dest, "image path has no file name"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    // Unique per process and call, so concurrent transforms never collide.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!(".tmp-{}-{seq}", std::process::id()));
    Ok(dest.with_file_name(tmp))
}
