//! pages-<id>.img: raw page bytes, mapped read-only (for inspection tools), and
//! opened again, watched, for serving (`watch.rs`; `local_pages.rs` says why pread).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::ImageError;
use super::pagemap::Pagemap;
use super::watch::{Stamp, Watched};

#[derive(Debug)]
pub struct PagesFile {
    pub path: PathBuf,
    /// None when no byte is needed or the file is empty (mmap of 0 bytes fails).
    map: Option<Mmap>,
    /// The same file, for `read_at` (reading without mapping), and how it looked when
    /// opened (what `watch` holds it to).
    file: Option<(File, Stamp)>,
}

impl PagesFile {
    /// Opens the pages file of `pagemap` (in `dir`) and checks that it holds
    /// every byte the pagemap's PE_PRESENT runs claim.
    pub fn open(dir: &Path, pagemap: &Pagemap) -> Result<PagesFile, ImageError> {
        let path = dir.join(pagemap.pages_file_name());
        let needed = pagemap.present_bytes();
        if needed == 0 {
            return Ok(PagesFile {
                path,
                map: None,
                file: None,
            });
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
        let stamp = Stamp::of(&file, &path)?;
        let len = stamp.size();
        if len < needed {
            return Err(short_file_error(&path, len, pagemap));
        }
        // SAFETY: the mapping is read-only and we never create a mutable view.
        // Serving never reads it (`watch` and pread do, so a changed file is an
        // error, not a SIGBUS or zeros); inspection tools that read through it
        // would SIGBUS on a tail someone truncated away meanwhile, a hazard of
        // every mmap-based reader.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ImageError::io(&path, "cannot mmap pages file", &e))?;
        Ok(PagesFile {
            path,
            map: Some(map),
            file: Some((file, stamp)),
        })
    }

    /// The file watched for changes from now on (`watch.rs`), held to how it looked
    /// when opened; None when no byte of it is needed.
    pub fn watch(&self) -> Result<Option<Watched>, ImageError> {
        self.file
            .as_ref()
            .map(|(file, stamp)| Watched::new(file, &self.path, *stamp))
            .transpose()
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
