//! pages-<id>.img: raw page bytes, mapped read-only (for lookups and gathering),
//! and readable with pread (the fill path: `local_pages.rs` says why).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::ImageError;
use super::pagemap::Pagemap;

#[derive(Debug)]
pub struct PagesFile {
    pub path: PathBuf,
    /// None when no byte is needed or the file is empty (mmap of 0 bytes fails).
    map: Option<Mmap>,
    /// The same file, for `read_at` (reading without mapping).
    file: Option<File>,
}

impl PagesFile {
    /// Opens the pages file of `pagemap` (in `dir`) and checks that it holds
    /// every byte the pagemap's PE_PRESENT runs claim.
    pub fn open(dir: &Path, pagemap: &Pagemap) -> Result<PagesFile, ImageError> {
        let path = dir.join(pagemap.pages_file_name());
        let needed = pagemap.present_bytes();
        if needed == 0 {
            return Ok(PagesFile { path, map: None, file: None });
        }
        let file = super::open::open_regular(&path, "pages file").map_err(|e| match e.io_kind {
            Some(io::ErrorKind::NotFound) => ImageError {
                io_kind: e.io_kind,
                ..ImageError::new(
                    &path,
                    format!(
                        "pages file is missing, but {} has PE_PRESENT entries",
                        pagemap.path.display()
                    ),
                )
            },
            _ => e,
        })?;
        let len = file
            .metadata()
            .map_err(|e| ImageError::io(&path, "cannot stat pages file", &e))?
            .len();
        if len < needed {
            return Err(short_file_error(&path, len, pagemap));
        }
        // SAFETY: the mapping is read-only and we never create a mutable view.
        // Image files are not modified while a dump is served; if someone
        // truncated this file anyway, touching the lost tail would SIGBUS, a
        // hazard shared by every mmap-based reader and accepted here for
        // zero-copy faults.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ImageError::io(&path, "cannot mmap pages file", &e))?;
        Ok(PagesFile {
            path,
            map: Some(map),
            file: Some(file),
        })
    }

    /// Reads `buf.len()` bytes at `offset` with pread, without touching the mapping.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.file {
            Some(f) => f.read_exact_at(buf, offset),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no pages file")),
        }
    }

    /// `len` bytes at `offset`, or None if out of the file.
    pub fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let map = self.map.as_deref()?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        map.get(start..end)
    }
}

/// Names the first pagemap entry whose bytes fall past the end of the file.
fn short_file_error(path: &Path, len: u64, pagemap: &Pagemap) -> ImageError {
    let culprit = pagemap.runs.iter().find(|run| {
        run.data_offset
            .and_then(|off| off.checked_add(run.pages.checked_mul(super::PAGE_SIZE)?))
            .is_none_or(|end| end > len)
            && run.is_present()
    });
    let which = match culprit {
        Some(run) => format!(
            "{} entry at offset {} ({:#x}, {} pages) needs bytes up to {}",
            pagemap.path.display(),
            run.entry_offset,
            run.vaddr,
            run.pages,
            run.data_offset
                .unwrap_or(0)
                .saturating_add(run.pages.saturating_mul(super::PAGE_SIZE)),
        ),
        None => format!(
            "{} needs {} bytes",
            pagemap.path.display(),
            pagemap.present_bytes()
        ),
    };
    ImageError::new(
        path,
        format!("pages file holds only {len} bytes, but {which}"),
    )
}
