//! `PageSource` over a dump on local disk: a span's bytes are read with pread into the
//! caller's reused scratch buffer, then copied into the task by UFFDIO_COPY.
//!
//! Copying straight from the mmap'd images instead saves that read's copy, but maps
//! every page of the image into the daemon (page-table work per page, and a 4 GiB image
//! is 4 GiB of mapped page cache, which reclaim must unmap before it can take it, at exit
//! too). Measured on this VM with its page cache full (a 4 GiB restore then has to
//! reclaim as it goes), ours --jobs 1, daemon CPU in four interleaved pairs: mapped
//! 6.0 / 3.6 / 2.7 / 3.7 s, pread 5.1 / 2.6 / 2.1 / 2.0 s; at 1 GiB 0.53 / 0.68 / 0.48 s
//! against 0.47 / 0.47 / 0.49 s. `criu lazy-pages` reads too. Spans that cross runs or
//! chain levels are read piece by piece. Every read is checked against a change of
//! the file (`images/watch.rs`), so the process never gets bytes of a changed image.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::{PageData, PageSource, Priority, SourceError};
use crate::images::{Dump, Watched, PAGE_SIZE};

pub struct LocalPages {
    dump: Arc<Dump>,
    /// Every pages file a span may be read from, by path, watched for changes: a file
    /// truncated and regrown while served reads as zeros, so every read is checked
    /// before its bytes go on (`images/watch.rs`).
    files: HashMap<PathBuf, Watched>,
}

impl LocalPages {
    /// Fails when a lazy range has no bytes in the images (a `criu dump --lazy-pages`
    /// dump keeps them in the source's memory): serving it locally would hand the
    /// restored process wrong memory; or when a pages file cannot be watched (open for
    /// writing elsewhere, or changed since the dump was opened).
    pub fn new(dump: Arc<Dump>) -> Result<Self, String> {
        let mut files = HashMap::new();
        for task in &dump.tasks {
            let Some(memory) = dump.memory(task.pid) else {
                continue;
            };
            if let Some(ext) = memory.lazy_extents().into_iter().find(|e| !e.has_data) {
                return Err(format!(
                    "{}: task {} has lazy pages at {:#x} whose bytes are not in the images \
                     (made by `criu dump --lazy-pages`?); serve them from the dumping host with --page-server",
                    dump.dir.display(),
                    task.pid,
                    ext.start
                ));
            }
            for watched in memory.watch_files().map_err(|e| e.to_string())? {
                files.insert(watched.path().to_path_buf(), watched);
            }
        }
        Ok(LocalPages { dump, files })
    }

    pub fn dump(&self) -> &Arc<Dump> {
        &self.dump
    }
}

impl PageSource for LocalPages {
    /// Synchronous underneath: a local read completes at once, so never `Pending`.
    /// A pages file that changed while served is an error naming it (the engine then
    /// ends the restore and poisons what it could not serve).
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        _: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        let memory = self
            .dump
            .memory(pid)
            .ok_or(SourceError::Missing { pid, img_addr, len })?;
        // The buffer is reused from call to call: grow it, never clear it (every byte
        // handed out is read first). The bytes go to its first page-aligned offset, so
        // the read and the copy out of it each touch whole pages.
        let page = PAGE_SIZE as usize;
        if scratch.len() < len + page {
            scratch.resize(len + page, 0);
        }
        let at = scratch.as_ptr().align_offset(page).min(page);
        let buf = &mut scratch[at..at + len];
        memory
            .read_span(img_addr, buf, |path, offset, piece| {
                match self.files.get(path) {
                    Some(file) => file.read_exact_at(offset, piece),
                    None => Err(crate::images::ImageError::new(
                        path,
                        "pages file is not watched (not opened when serving began)",
                    )),
                }
            })
            .map_err(|e| SourceError::Other {
                pid,
                img_addr,
                message: e.to_string(),
            })?;
        Ok(PageData::Bytes(&scratch[at..at + len]))
    }
}
