//! Test-only writer of synthetic CRIU image directories (prost-encoded).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lazy_pages_core::images::framing::{
    CORE_MAGIC, HEAD_MAGIC, INVENTORY_MAGIC, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC,
};
use lazy_pages_core::images::proto::{
    CoreEntry, InventoryEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry, TaskCoreEntry,
    VmaEntry,
};
use lazy_pages_core::images::{PAGE_SIZE, PE_PRESENT};
use prost::Message;

pub const PS: u64 = PAGE_SIZE;
/// MAP_PRIVATE | MAP_ANONYMOUS: a lazy-able mapping.
pub const ANON_PRIVATE: u32 = 0x22;
/// MAP_PRIVATE only: a private file mapping, never lazy.
pub const FILE_PRIVATE: u32 = 0x02;

/// Frames `bodies` as an image: optional head magic, type magic, `u32 len | body`.
pub fn image(head: bool, type_magic: u32, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    if head {
        out.extend_from_slice(&HEAD_MAGIC.to_le_bytes());
    }
    out.extend_from_slice(&type_magic.to_le_bytes());
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

pub fn inventory(dir: &Path, img_version: u32) {
    let inv = InventoryEntry {
        img_version: Some(img_version),
        fdinfo_per_id: Some(true),
        ..Default::default()
    };
    write(
        &dir.join("inventory.img"),
        &image(false, INVENTORY_MAGIC, &[inv.encode_to_vec()]),
    );
}

/// (pid, ppid) per process, root first.
pub fn pstree(dir: &Path, tasks: &[(u32, u32)]) {
    let bodies: Vec<Vec<u8>> = tasks
        .iter()
        .map(|&(pid, ppid)| {
            PstreeEntry {
                pid: Some(pid),
                ppid: Some(ppid),
                pgid: Some(pid),
                sid: Some(pid),
                threads: vec![pid],
            }
            .encode_to_vec()
        })
        .collect();
    write(&dir.join("pstree.img"), &image(true, PSTREE_MAGIC, &bodies));
}

pub fn core(dir: &Path, pid: u32, task_state: u32) {
    let core = CoreEntry {
        tc: Some(TaskCoreEntry {
            task_state: Some(task_state),
        }),
    };
    write(
        &dir.join(format!("core-{pid}.img")),
        &image(true, CORE_MAGIC, &[core.encode_to_vec()]),
    );
}

pub fn vma(start: u64, end: u64, flags: u32) -> VmaEntry {
    VmaEntry {
        start: Some(start),
        end: Some(end),
        pgoff: Some(0),
        shmid: Some(0),
        prot: Some(3),
        flags: Some(flags),
        status: Some(0x1),
        fd: Some(-1),
        madv: None,
        fdflags: None,
    }
}

pub fn mm(dir: &Path, pid: u32, vmas: Vec<VmaEntry>) {
    let mm = MmEntry {
        vmas,
        ..Default::default()
    };
    write(
        &dir.join(format!("mm-{pid}.img")),
        &image(true, MM_MAGIC, &[mm.encode_to_vec()]),
    );
}

/// A v4.2-style entry: field 2 = 0, field 5 = count.
pub fn entry(vaddr: u64, pages: u64, flags: u32) -> PagemapEntry {
    PagemapEntry {
        vaddr: Some(vaddr),
        compat_nr_pages: Some(0),
        in_parent: None,
        flags: Some(flags),
        nr_pages: Some(pages),
    }
}

/// A v4.1.1-style entry: field 2 = count, no field 5.
pub fn entry_411(vaddr: u64, pages: u32, flags: u32) -> PagemapEntry {
    PagemapEntry {
        vaddr: Some(vaddr),
        compat_nr_pages: Some(pages),
        in_parent: None,
        flags: Some(flags),
        nr_pages: None,
    }
}

pub fn pagemap_bytes(pages_id: u32, entries: &[PagemapEntry]) -> Vec<u8> {
    let mut bodies = vec![PagemapHead {
        pages_id: Some(pages_id),
    }
    .encode_to_vec()];
    bodies.extend(entries.iter().map(|e| e.encode_to_vec()));
    image(true, PAGEMAP_MAGIC, &bodies)
}

pub fn pagemap(dir: &Path, pid: u32, pages_id: u32, entries: &[PagemapEntry]) {
    write(
        &dir.join(format!("pagemap-{pid}.img")),
        &pagemap_bytes(pages_id, entries),
    );
}

/// Content of the page at `addr` as written by dump level `tag`: recognisable
/// so tests can tell which run and which level bytes came from.
pub fn page_bytes(addr: u64, tag: u8) -> Vec<u8> {
    let mut page = vec![tag; PS as usize];
    page[..8].copy_from_slice(&addr.to_le_bytes());
    page
}

pub fn range_bytes(addr: u64, pages: u64, tag: u8) -> Vec<u8> {
    (0..pages)
        .flat_map(|i| page_bytes(addr + i * PS, tag))
        .collect()
}

/// The pages file matching `entries`: bytes of the PE_PRESENT ones, in order.
pub fn pages_for(dir: &Path, pages_id: u32, entries: &[PagemapEntry], tag: u8) {
    let mut data = Vec::new();
    for e in entries {
        let flags = e.flags.unwrap_or(if e.in_parent == Some(true) {
            0
        } else {
            PE_PRESENT
        });
        if flags & PE_PRESENT != 0 {
            let pages = e
                .nr_pages
                .unwrap_or(u64::from(e.compat_nr_pages.unwrap_or(0)));
            data.extend(range_bytes(e.vaddr.unwrap_or(0), pages, tag));
        }
    }
    write(&dir.join(format!("pages-{pages_id}.img")), &data);
}

/// Pagemap + matching pages file for one level of one task.
pub fn level(dir: &Path, pid: u32, pages_id: u32, entries: &[PagemapEntry], tag: u8) {
    pagemap(dir, pid, pages_id, entries);
    pages_for(dir, pages_id, entries, tag);
}

/// A complete single-task dump (pid 1) in a fresh temp dir.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
}

impl Fixture {
    pub fn new(vmas: Vec<VmaEntry>, entries: &[PagemapEntry]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        inventory(dir, 2);
        pstree(dir, &[(1, 0)]);
        core(dir, 1, 1);
        mm(dir, 1, vmas);
        level(dir, 1, 1, entries, 0xA0);
        Fixture { tmp }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// One big VMA covering everything the tests use.
pub fn big_vma() -> Vec<VmaEntry> {
    vec![vma(0x10000, 0x1000_0000, ANON_PRIVATE)]
}
