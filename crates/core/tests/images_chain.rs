//! Pre-dump parent chains: PE_PARENT runs resolved through `parent` links.

mod images_support;

use std::os::unix::fs::symlink;
use std::path::Path;

use images_support::*;
use lazy_pages_core::images::proto::PagemapEntry;
use lazy_pages_core::images::{Dump, PE_LAZY, PE_PARENT, PE_PRESENT};

/// A parent images dir `name` next to the top dir, linked relatively as
/// `--prev-images-dir ../name` would.
fn parent_level(top: &Path, name: &str, entries: &[PagemapEntry], tag: u8) -> std::path::PathBuf {
    let dir = top.parent().unwrap().join(name);
    std::fs::create_dir(&dir).unwrap();
    inventory(&dir, 2);
    level(&dir, 1, 1, entries, tag);
    dir
}

fn link(from_dir: &Path, target: &str) {
    symlink(target, from_dir.join("parent")).unwrap();
}

fn read(mem: &lazy_pages_core::images::TaskMemory, addr: u64, pages: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (pages * PS) as usize];
    mem.read_pages(addr, &mut buf).unwrap();
    buf
}

#[test]
fn two_levels() {
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("top");
    std::fs::create_dir(&top).unwrap();
    inventory(&top, 2);
    pstree(&top, &[(1, 0)]);
    mm(&top, 1, big_vma());
    level(
        &top,
        1,
        1,
        &[
            entry(0x10000, 4, PE_PARENT),
            entry(0x14000, 1, PE_PRESENT),
            entry(0x20000, 1, PE_LAZY | PE_PRESENT),
        ],
        0xA0,
    );
    parent_level(&top, "pre1", &[entry(0x10000, 8, PE_PRESENT)], 0xB1);
    link(&top, "../pre1");

    let dump = Dump::open(&top).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(mem.chain().count(), 2);
    assert_eq!(
        mem.pages_slice(0x10000, 4).unwrap(),
        range_bytes(0x10000, 4, 0xB1).as_slice()
    );
    // This dir's own copy wins over the parent's.
    assert_eq!(
        mem.page(0x14000).unwrap(),
        page_bytes(0x14000, 0xA0).as_slice()
    );
    // Pages the parent has but this dump did not keep are not dumped.
    assert!(mem.page(0x15000).is_none());
    // A slice may not span two levels.
    assert!(mem.pages_slice(0x13000, 2).is_none());
    let mut want = page_bytes(0x13000, 0xB1);
    want.extend(page_bytes(0x14000, 0xA0));
    assert_eq!(read(mem, 0x13000, 2), want);
    let s = mem.summary();
    assert_eq!(
        (s.pages, s.in_parent, s.present, s.lazy, s.bytes),
        (6, 4, 2, 1, 2 * PS)
    );
}

#[test]
fn three_levels() {
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("top");
    std::fs::create_dir(&top).unwrap();
    inventory(&top, 2);
    pstree(&top, &[(1, 0)]);
    mm(&top, 1, big_vma());
    level(
        &top,
        1,
        3,
        &[entry(0x10000, 8, PE_PARENT), entry(0x18000, 1, 6)],
        0xA0,
    );
    let pre2 = parent_level(
        &top,
        "pre2",
        &[entry(0x10000, 2, PE_PRESENT), entry(0x12000, 6, PE_PARENT)],
        0xB2,
    );
    parent_level(
        &top,
        "pre1",
        &[entry(0x10000, 4, PE_PRESENT), entry(0x14000, 4, PE_PRESENT)],
        0xB1,
    );
    link(&top, "../pre2");
    // An absolute link on the middle level.
    symlink(root.path().join("pre1"), pre2.join("parent")).unwrap();

    let dump = Dump::open(&top).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(mem.chain().count(), 3);
    assert_eq!(
        mem.page(0x10000).unwrap(),
        page_bytes(0x10000, 0xB2).as_slice()
    );
    assert_eq!(
        mem.page(0x11000).unwrap(),
        page_bytes(0x11000, 0xB2).as_slice()
    );
    assert_eq!(
        mem.page(0x12000).unwrap(),
        page_bytes(0x12000, 0xB1).as_slice()
    );
    assert_eq!(
        mem.page(0x17000).unwrap(),
        page_bytes(0x17000, 0xB1).as_slice()
    );
    assert_eq!(
        mem.pages_slice(0x12000, 2).unwrap(),
        range_bytes(0x12000, 2, 0xB1).as_slice()
    );
    assert_eq!(
        mem.pages_slice(0x14000, 4).unwrap(),
        range_bytes(0x14000, 4, 0xB1).as_slice()
    );
    // Crosses two runs of the oldest level.
    assert!(mem.pages_slice(0x13000, 2).is_none());
    let mut want = range_bytes(0x10000, 2, 0xB2);
    want.extend(range_bytes(0x12000, 6, 0xB1));
    want.extend(page_bytes(0x18000, 0xA0));
    assert_eq!(read(mem, 0x10000, 9), want);
}

#[test]
fn legacy_in_parent() {
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("top");
    std::fs::create_dir(&top).unwrap();
    inventory(&top, 2);
    pstree(&top, &[(1, 0)]);
    mm(&top, 1, big_vma());
    // Pre-flags images: in_parent instead of PE_PARENT, no flags field at all.
    let legacy = |vaddr, pages, in_parent| PagemapEntry {
        vaddr: Some(vaddr),
        compat_nr_pages: Some(pages),
        in_parent: Some(in_parent),
        flags: None,
        nr_pages: None,
    };
    level(
        &top,
        1,
        1,
        &[legacy(0x10000, 2, true), legacy(0x12000, 1, false)],
        0xA0,
    );
    parent_level(&top, "pre", &[legacy(0x10000, 3, false)], 0xB1);
    link(&top, "../pre");

    let dump = Dump::open(&top).unwrap();
    let mem = dump.memory(1).unwrap();
    let flags: Vec<_> = mem
        .chain()
        .next()
        .unwrap()
        .0
        .runs
        .iter()
        .map(|r| r.flags)
        .collect();
    assert_eq!(flags, vec![PE_PARENT, PE_PRESENT]);
    assert_eq!(
        read(mem, 0x11000, 2),
        [page_bytes(0x11000, 0xB1), page_bytes(0x12000, 0xA0)].concat()
    );
}

#[test]
fn parent_without_pagemap_ends_chain() {
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("top");
    std::fs::create_dir(&top).unwrap();
    inventory(&top, 2);
    pstree(&top, &[(1, 0)]);
    mm(&top, 1, big_vma());
    level(&top, 1, 1, &[entry(0x10000, 1, 6)], 0xA0);
    let other = root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    // Its own parent is dangling, but the chain never gets that far.
    symlink("nowhere", other.join("parent")).unwrap();
    link(&top, "../other");
    let dump = Dump::open(&top).unwrap();
    assert_eq!(dump.memory(1).unwrap().chain().count(), 1);
}

#[test]
fn parent_loop_is_an_error() {
    let f = Fixture::new(big_vma(), &[entry(0x10000, 1, PE_PARENT)]);
    link(&f.dir(), ".");
    let err = Dump::open(&f.dir()).unwrap_err().to_string();
    assert!(err.contains("parent") && err.contains("loops"), "{err}");
}
