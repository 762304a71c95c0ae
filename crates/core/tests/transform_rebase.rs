//! rebase(): a full dump becomes an incremental one on top of an earlier dump.

mod images_support;

use std::path::{Path, PathBuf};

use images_support::*;
use lazy_pages_core::images::proto::PagemapEntry;
use lazy_pages_core::images::{Dump, PE_LAZY, PE_PARENT, PE_PRESENT};
use lazy_pages_core::transform::rebase;

const LP: u32 = PE_LAZY | PE_PRESENT;
const BASE: u64 = 0x10000;

/// `root/name`: a dump of the given (pid, ppid) tasks, all alive.
fn dump_dir(root: &Path, name: &str, tasks: &[(u32, u32)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    inventory(&dir, 2);
    pstree(&dir, tasks);
    for &(pid, _) in tasks {
        core(&dir, pid, 1);
        mm(&dir, pid, big_vma());
    }
    dir
}

/// Pagemap plus a pages file whose page at `addr` is `page_bytes(addr, tag(addr))`.
fn level_with(
    dir: &Path,
    pid: u32,
    pages_id: u32,
    entries: &[PagemapEntry],
    tag: impl Fn(u64) -> u8,
) {
    pagemap(dir, pid, pages_id, entries);
    let mut data = Vec::new();
    for e in entries {
        if e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT != 0 {
            let pages = e
                .nr_pages
                .unwrap_or(u64::from(e.compat_nr_pages.unwrap_or(0)));
            for i in 0..pages {
                let addr = e.vaddr.unwrap() + i * PS;
                data.extend(page_bytes(addr, tag(addr)));
            }
        }
    }
    write(&dir.join(format!("pages-{pages_id}.img")), &data);
}

/// (vaddr, pages, flags) of a task's top-level pagemap.
fn runs(dir: &Path, pid: u32) -> Vec<(u64, u64, u32)> {
    let dump = Dump::open(dir).unwrap();
    let mem = dump.memory(pid).unwrap();
    let (pagemap, _) = mem.chain().next().unwrap();
    pagemap
        .runs
        .iter()
        .map(|r| (r.vaddr, r.pages, r.flags))
        .collect()
}

fn read_all(dir: &Path, pid: u32, addr: u64, pages: u64) -> Vec<u8> {
    let dump = Dump::open(dir).unwrap();
    let mut buf = vec![0u8; (pages * PS) as usize];
    dump.memory(pid)
        .unwrap()
        .read_pages(addr, &mut buf)
        .unwrap();
    buf
}

fn page(i: u64) -> u64 {
    BASE + i * PS
}

#[test]
fn identical_pages_become_parent_holes() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a, 1, 1, &[entry(BASE, 8, LP)], 0xA0);
    // Pages 2, 3 and 6 changed since A.
    let changed = |addr: u64| [page(2), page(3), page(6)].contains(&addr);
    level_with(&b, 1, 1, &[entry(BASE, 8, LP)], |addr| {
        if changed(addr) {
            0xB0
        } else {
            0xA0
        }
    });
    let before = read_all(&b, 1, BASE, 8);

    let report = rebase(&b, &a).unwrap();

    assert_eq!(report.link, Path::new("../A"));
    assert_eq!(
        std::fs::read_link(b.join("parent")).unwrap(),
        Path::new("../A")
    );
    assert_eq!(report.tasks.len(), 1);
    let t = &report.tasks[0];
    assert_eq!((t.pid, t.in_parent_dump), (1, true));
    assert_eq!(
        (t.present_before, t.present_after, t.moved_to_parent),
        (8, 3, 5)
    );
    assert_eq!(report.bytes_saved, 5 * PS);
    assert_eq!(
        runs(&b, 1),
        vec![
            (page(0), 2, PE_PARENT),
            (page(2), 2, LP),
            (page(4), 2, PE_PARENT),
            (page(6), 1, LP),
            (page(7), 1, PE_PARENT),
        ]
    );
    assert_eq!(
        std::fs::metadata(b.join("pages-1.img")).unwrap().len(),
        3 * PS
    );
    assert_eq!(read_all(&b, 1, BASE, 8), before);
}

#[test]
fn eager_flags_kept_and_adjacent_holes_merged() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    let entries = [
        entry(page(0), 2, PE_PRESENT),
        entry(page(2), 3, LP),
        entry(page(5), 2, PE_PRESENT),
    ];
    level(&a, 1, 1, &entries, 0xA0);
    // Only the last page differs: the first two runs merge into one hole.
    level_with(&b, 1, 1, &entries, |addr| {
        if addr == page(6) {
            0xB0
        } else {
            0xA0
        }
    });
    let before = read_all(&b, 1, BASE, 7);

    rebase(&b, &a).unwrap();

    assert_eq!(
        runs(&b, 1),
        vec![(page(0), 6, PE_PARENT), (page(6), 1, PE_PRESENT)]
    );
    assert_eq!(read_all(&b, 1, BASE, 7), before);
}

#[test]
fn pages_the_parent_lacks_stay() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    // A: page 0 eager, page 1 lazy-only (no bytes), pages 2-3 not dumped.
    level(
        &a,
        1,
        1,
        &[entry(page(0), 1, PE_PRESENT), entry(page(1), 1, PE_LAZY)],
        0xA0,
    );
    level(
        &b,
        1,
        1,
        &[entry(page(0), 4, LP), entry(page(8), 2, PE_LAZY)],
        0xA0,
    );
    let before = read_all(&b, 1, BASE, 4);

    let report = rebase(&b, &a).unwrap();

    assert_eq!(report.tasks[0].moved_to_parent, 1);
    assert_eq!(
        runs(&b, 1),
        vec![
            (page(0), 1, PE_PARENT),
            (page(1), 3, LP),
            (page(8), 2, PE_LAZY)
        ]
    );
    assert_eq!(read_all(&b, 1, BASE, 4), before);
}

#[test]
fn parent_chain_is_followed() {
    let root = tempfile::tempdir().unwrap();
    let a0 = dump_dir(root.path(), "A0", &[(1, 0)]);
    let a1 = dump_dir(root.path(), "A1", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a0, 1, 1, &[entry(BASE, 4, LP)], 0xA0);
    // A1 is incremental: pages 0-1 in A0, pages 2-3 rewritten.
    level_with(
        &a1,
        1,
        1,
        &[entry(page(0), 2, PE_PARENT), entry(page(2), 2, LP)],
        |_| 0xA1,
    );
    std::os::unix::fs::symlink("../A0", a1.join("parent")).unwrap();
    // B: page 0 as in A0, page 2 as in A1, pages 1 and 3 new.
    let tag = |addr: u64| match addr {
        a if a == page(0) => 0xA0,
        a if a == page(2) => 0xA1,
        _ => 0xB0,
    };
    level_with(&b, 1, 1, &[entry(BASE, 4, LP)], tag);
    let before = read_all(&b, 1, BASE, 4);

    let report = rebase(&b, &a1).unwrap();

    assert_eq!(report.tasks[0].moved_to_parent, 2);
    assert_eq!(
        runs(&b, 1),
        vec![
            (page(0), 1, PE_PARENT),
            (page(1), 1, LP),
            (page(2), 1, PE_PARENT),
            (page(3), 1, LP),
        ]
    );
    assert_eq!(read_all(&b, 1, BASE, 4), before);
}

#[test]
fn tasks_missing_from_parent_and_zombies() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0), (2, 1), (3, 1)]);
    core(&b, 3, 2); // zombie: no memory images
    level(&a, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    level(&b, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    level(&b, 2, 2, &[entry(BASE, 2, LP)], 0xA0);

    let report = rebase(&b, &a).unwrap();

    let tasks: Vec<_> = report
        .tasks
        .iter()
        .map(|t| (t.pid, t.in_parent_dump, t.moved_to_parent))
        .collect();
    assert_eq!(tasks, vec![(1, true, 2), (2, false, 0)]);
    assert_eq!(runs(&b, 1), vec![(BASE, 2, PE_PARENT)]);
    assert_eq!(runs(&b, 2), vec![(BASE, 2, LP)]);
    assert_eq!(std::fs::metadata(b.join("pages-1.img")).unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(b.join("pages-2.img")).unwrap().len(),
        2 * PS
    );
}

#[test]
fn a_4_1_1_style_pagemap_stays_4_1_1_style() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a, 1, 1, &[entry_411(BASE, 3, LP)], 0xA0);
    level_with(&b, 1, 1, &[entry_411(BASE, 3, LP)], |a| {
        if a == page(1) {
            0xB0
        } else {
            0xA0
        }
    });

    rebase(&b, &a).unwrap();

    let bytes = std::fs::read(b.join("pagemap-1.img")).unwrap();
    let expected = pagemap_bytes(
        1,
        &[
            entry_411(page(0), 1, PE_PARENT),
            entry_411(page(1), 1, LP),
            entry_411(page(2), 1, PE_PARENT),
        ],
    );
    assert_eq!(bytes, expected);
}

#[test]
fn nothing_shared_still_links() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    level(&b, 1, 1, &[entry(BASE, 2, LP)], 0xB0);
    let pagemap_before = std::fs::read(b.join("pagemap-1.img")).unwrap();

    let report = rebase(&b, &a).unwrap();

    assert_eq!(report.bytes_saved, 0);
    assert_eq!(
        std::fs::read(b.join("pagemap-1.img")).unwrap(),
        pagemap_before
    );
    assert!(b.join("parent").is_dir());
}

#[test]
fn refuses_incremental_and_self_and_loops() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    level(&b, 1, 1, &[entry(BASE, 2, LP)], 0xA0);

    let err = rebase(&b, &b).unwrap_err();
    assert!(err.to_string().contains("descends from"), "{err}");

    // A parent whose own chain leads back to B.
    std::os::unix::fs::symlink("../B", a.join("parent")).unwrap();
    let err = rebase(&b, &a).unwrap_err();
    assert!(err.to_string().contains("descends from"), "{err}");
    std::fs::remove_file(a.join("parent")).unwrap();

    rebase(&b, &a).unwrap();
    let err = rebase(&b, &a).unwrap_err();
    assert_eq!(err.path, b.join("parent"));
    assert!(err.message.contains("already has a parent"), "{err}");
}

#[test]
fn errors_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A", &[(1, 0)]);
    let b = dump_dir(root.path(), "B", &[(1, 0)]);
    level(&a, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    level(&b, 1, 1, &[entry(BASE, 2, LP)], 0xA0);

    let missing = root.path().join("nope");
    let err = rebase(&b, &missing).unwrap_err();
    assert_eq!(err.path, missing);

    // Truncated pages file in the parent.
    write(&a.join("pages-1.img"), &[0u8; 100]);
    let err = rebase(&b, &a).unwrap_err();
    assert_eq!(err.path, a.join("pages-1.img"));
    assert!(!b.join("parent").exists());

    // Garbage pagemap in the dump itself; nothing is changed.
    level(&a, 1, 1, &[entry(BASE, 2, LP)], 0xA0);
    write(&b.join("pagemap-1.img"), b"garbage!");
    let err = rebase(&b, &a).unwrap_err();
    assert_eq!(err.path, b.join("pagemap-1.img"));
    assert!(std::fs::symlink_metadata(b.join("parent")).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}
