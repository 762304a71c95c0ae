//! `PageSource` over a dump on local disk: bytes come straight from the mmap'd
//! pages images, so a fault costs one UFFDIO_COPY and no userspace copy.

use std::sync::Arc;

use crate::engine::{PageData, PageSource, SourceError};
use crate::images::{Dump, PAGE_SIZE};

pub struct LocalPages {
    dump: Arc<Dump>,
}

impl LocalPages {
    /// Fails when a lazy range has no bytes in the images (a `criu dump --lazy-pages`
    /// dump keeps them in the source's memory): serving it locally would hand the
    /// restored process wrong memory.
    pub fn new(dump: Arc<Dump>) -> Result<Self, String> {
        for task in &dump.tasks {
            let Some(memory) = dump.memory(task.pid) else { continue };
            if let Some(ext) = memory.lazy_extents().into_iter().find(|e| !e.has_data) {
                return Err(format!(
                    "{}: task {} has lazy pages at {:#x} whose bytes are not in the images \
                     (made by `criu dump --lazy-pages`?); serve them from the dumping host with --page-server",
                    dump.dir.display(),
                    task.pid,
                    ext.start
                ));
            }
        }
        Ok(LocalPages { dump })
    }

    pub fn dump(&self) -> &Arc<Dump> {
        &self.dump
    }
}

impl PageSource for LocalPages {
    fn pages<'a>(&'a self, pid: u32, img_addr: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<PageData<'a>, SourceError> {
        let memory = self.dump.memory(pid).ok_or(SourceError::Missing { pid, img_addr, len })?;
        let pages = len as u64 / PAGE_SIZE;
        if let Some(bytes) = memory.pages_slice(img_addr, pages) {
            return Ok(PageData::Bytes(bytes));
        }
        // The span crosses runs or chain levels: gather it.
        scratch.clear();
        scratch.resize(len, 0);
        memory
            .read_pages(img_addr, scratch)
            .map_err(|e| SourceError::Other { pid, img_addr, message: e.to_string() })?;
        Ok(PageData::Bytes(scratch.as_slice()))
    }
}
