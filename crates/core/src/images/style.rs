//! Which CRIU wrote a dump's pagemaps, read off the raw first entry (the reader
//! normalises the page count, so it cannot tell).
//!
//! CRIU 4.2 writes `compat_nr_pages` (field 2) = 0 and `nr_pages` (field 5);
//! 4.1.1 writes field 2 only. A pagemap carrying both with field 2 != 0 was made
//! to be readable by both and says nothing about its origin.

use super::framing::{read_image, PAGEMAP_MAGIC};
use super::proto::PagemapEntry;
use super::Dump;

/// What the first pagemap entry of a task says about its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagemapWriter {
    /// Field 5 present, field 2 absent or 0.
    Criu42,
    /// Field 5 absent.
    Criu411,
    /// Both fields carry the count: written for either version.
    Either,
}

pub fn pagemap_writer_of(dump: &Dump) -> Option<PagemapWriter> {
    let head = dump.inventory().head;
    dump.tasks.iter().find_map(|task| {
        let memory = dump.memory(task.pid)?;
        let (pagemap, _) = memory.chain().next()?;
        let file = read_image(&pagemap.path, PAGEMAP_MAGIC, head).ok()??;
        // Entry 0 is the PagemapHead.
        let entry = file.entries().nth(1)?.ok()?;
        let raw: PagemapEntry = file.decode(&entry).ok()?;
        Some(classify(&raw))
    })
}

pub fn classify(raw: &PagemapEntry) -> PagemapWriter {
    match (raw.nr_pages, raw.compat_nr_pages) {
        (None, _) => PagemapWriter::Criu411,
        (Some(_), None | Some(0)) => PagemapWriter::Criu42,
        (Some(_), Some(_)) => PagemapWriter::Either,
    }
}
