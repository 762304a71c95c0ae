//! Malformed or incomplete dumps: every error names the file (and the entry
//! offset where there is one), and nothing panics.

mod images_support;

use std::os::unix::fs::symlink;

use images_support::*;
use lazy_pages_core::images::framing::{MM_MAGIC, PAGEMAP_MAGIC};
use lazy_pages_core::images::proto::{PagemapEntry, PagemapHead};
use lazy_pages_core::images::{Dump, ImageError, PE_LAZY, PE_PARENT, PE_PRESENT};
use prost::Message;

fn ok_fixture() -> Fixture {
    Fixture::new(big_vma(), &[entry(0x10000, 2, 6), entry(0x20000, 1, 4)])
}

fn open_err(f: &Fixture) -> String {
    let err: ImageError = Dump::open(&f.dir()).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.starts_with(&*f.dir().to_string_lossy()), "{text}");
    text
}

fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

/// Byte offset of pagemap entry `n` (0 = head) in a pagemap written by `pagemap_bytes`.
fn entry_offset(bytes: &[u8], n: usize) -> u64 {
    let mut pos = 8;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4 + len;
    }
    pos as u64
}

fn write_pagemap(f: &Fixture, entries: &[PagemapEntry]) -> Vec<u8> {
    let bytes = pagemap_bytes(1, entries);
    write(&f.path("pagemap-1.img"), &bytes);
    bytes
}

#[test]
fn display_format() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("mm-1.img")).unwrap();
    bytes[0] ^= 0xff;
    write(&f.path("mm-1.img"), &bytes);
    let err = Dump::open(&f.dir()).unwrap_err();
    assert_eq!(err.offset, Some(0));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: offset 0: bad head magic 0x545643e6, expected 0x54564319",
            f.path("mm-1.img").display()
        )
    );
}

#[test]
fn wrong_head_magic() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("pstree.img")).unwrap();
    bytes[3] = 0;
    write(&f.path("pstree.img"), &bytes);
    assert_has(&open_err(&f), &["pstree.img: offset 0: bad head magic"]);
}

#[test]
fn wrong_type_magic() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("mm-1.img")).unwrap();
    bytes[4..8].copy_from_slice(&PAGEMAP_MAGIC.to_le_bytes());
    write(&f.path("mm-1.img"), &bytes);
    assert_has(
        &open_err(&f),
        &["mm-1.img: offset 4: bad type magic 0x56084025, expected 0x57492820"],
    );
}

#[test]
fn inventory_problems() {
    let f = ok_fixture();
    inventory(&f.dir(), 3);
    assert_has(&open_err(&f), &["inventory.img: unsupported img_version 3"]);
    // The inventory has no head magic: one there is a bad type magic.
    write(&f.path("inventory.img"), &image(true, 0x5831_3116, &[]));
    assert_has(&open_err(&f), &["inventory.img: offset 0: bad type magic"]);
    std::fs::remove_file(f.path("inventory.img")).unwrap();
    assert_has(&open_err(&f), &["inventory.img: image file is missing"]);
}

#[test]
fn missing_required_images() {
    for (name, expect) in [
        ("pstree.img", "pstree.img"),
        ("mm-1.img", "mm-1.img"),
        ("pagemap-1.img", "pagemap-1.img"),
    ] {
        let f = ok_fixture();
        std::fs::remove_file(f.path(name)).unwrap();
        let err = Dump::open(&f.dir()).unwrap_err();
        assert_eq!(err.io_kind, Some(std::io::ErrorKind::NotFound));
        assert_has(&err.to_string(), &[expect, "missing"]);
    }
}

#[test]
fn truncated_length_word() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("pagemap-1.img")).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[5, 0]);
    write(&f.path("pagemap-1.img"), &bytes);
    assert_has(
        &open_err(&f),
        &[&format!(
            "pagemap-1.img: offset {end}: truncated entry length word (2 of 4 bytes)"
        )],
    );
}

#[test]
fn entry_past_eof() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("pagemap-1.img")).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[20, 0, 0, 0, 8, 1]);
    write(&f.path("pagemap-1.img"), &bytes);
    assert_has(
        &open_err(&f),
        &[&format!(
            "pagemap-1.img: offset {end}: entry length 20 exceeds the 2 bytes left"
        )],
    );
}

#[test]
fn hostile_lengths() {
    let f = ok_fixture();
    let mut bytes = std::fs::read(f.path("pstree.img")).unwrap();
    bytes.truncate(8);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    write(&f.path("pstree.img"), &bytes);
    assert_has(
        &open_err(&f),
        &["pstree.img: offset 8: entry length 4294967295 exceeds the 0 bytes left"],
    );

    let f = ok_fixture();
    let bytes = write_pagemap(&f, &[entry(0x10000, u64::MAX, 6)]);
    assert_has(
        &open_err(&f),
        &[
            &format!("pagemap-1.img: offset {}: ", entry_offset(&bytes, 1)),
            "overflows",
        ],
    );

    let f = ok_fixture();
    let bytes = write_pagemap(&f, &[entry(u64::MAX - 0xfff, 1, 6)]);
    assert_has(
        &open_err(&f),
        &[
            &format!("pagemap-1.img: offset {}: ", entry_offset(&bytes, 1)),
            "overflows",
        ],
    );

    // Huge but representable: the pages file cannot hold it.
    let f = ok_fixture();
    write_pagemap(&f, &[entry(0x10000, 1 << 40, 6)]);
    assert_has(
        &open_err(&f),
        &[
            "pages-1.img: pages file holds only",
            "pagemap-1.img entry at offset",
        ],
    );
}

#[test]
fn garbage_protobuf() {
    let f = ok_fixture();
    let mut bodies = vec![PagemapHead { pages_id: Some(1) }.encode_to_vec()];
    bodies.push(vec![0xff, 0xff, 0xff]);
    let bytes = image(true, PAGEMAP_MAGIC, &bodies);
    write(&f.path("pagemap-1.img"), &bytes);
    assert_has(
        &open_err(&f),
        &[&format!(
            "pagemap-1.img: offset {}: bad protobuf entry",
            entry_offset(&bytes, 1)
        )],
    );
}

#[test]
fn bad_pagemap_entries() {
    let cases: Vec<(Vec<PagemapEntry>, usize, &str)> = vec![
        (
            vec![entry(0x20000, 1, 6), entry(0x10000, 1, 6)],
            2,
            "not sorted",
        ),
        (
            vec![entry(0x10000, 4, 6), entry(0x12000, 4, 6)],
            2,
            "overlaps",
        ),
        (vec![entry(0x10800, 1, 6)], 1, "not page aligned"),
        (vec![entry(0x10000, 0, 6)], 1, "0 pages"),
        (vec![entry(0x10000, 1, 0x10)], 1, "unknown bits"),
        (vec![entry(0x10000, 1, 0)], 1, "flags 0x0"),
        (
            vec![entry(0x10000, 1, PE_PARENT | PE_LAZY)],
            1,
            "combine PE_PARENT",
        ),
        (
            vec![entry(0x10000, 1, PE_PARENT | PE_PRESENT)],
            1,
            "combine PE_PARENT",
        ),
        (
            vec![PagemapEntry {
                vaddr: Some(0x10000),
                ..Default::default()
            }],
            1,
            "lacks nr_pages",
        ),
        (
            vec![PagemapEntry {
                nr_pages: Some(1),
                ..Default::default()
            }],
            1,
            "lacks vaddr",
        ),
    ];
    for (entries, bad, what) in cases {
        let f = ok_fixture();
        let bytes = write_pagemap(&f, &entries);
        pages_for(&f.dir(), 1, &entries, 0);
        let text = open_err(&f);
        assert_has(
            &text,
            &[
                &format!("pagemap-1.img: offset {}: ", entry_offset(&bytes, bad)),
                what,
            ],
        );
    }
}

#[test]
fn pagemap_without_head() {
    let f = ok_fixture();
    write(&f.path("pagemap-1.img"), &image(true, PAGEMAP_MAGIC, &[]));
    assert_has(&open_err(&f), &["pagemap-1.img: pagemap has no head entry"]);
}

#[test]
fn pages_past_end_of_pages_file() {
    let f = ok_fixture();
    let bytes = std::fs::read(f.path("pagemap-1.img")).unwrap();
    let data = std::fs::read(f.path("pages-1.img")).unwrap();
    write(&f.path("pages-1.img"), &data[..data.len() - 1]);
    // The second entry (third page) is the one that does not fit.
    assert_has(
        &open_err(&f),
        &[
            "pages-1.img: pages file holds only 12287 bytes",
            &format!("pagemap-1.img entry at offset {}", entry_offset(&bytes, 2)),
        ],
    );
}

#[test]
fn missing_pages_file() {
    let f = ok_fixture();
    std::fs::remove_file(f.path("pages-1.img")).unwrap();
    assert_has(
        &open_err(&f),
        &["pages-1.img: pages file is missing", "pagemap-1.img"],
    );
}

#[test]
fn dangling_parent_link() {
    let f = ok_fixture();
    symlink("../no-such-dump", f.path("parent")).unwrap();
    let text = open_err(&f);
    assert_has(
        &text,
        &[&format!(
            "{}: dangling parent link",
            f.path("parent").display()
        )],
    );

    let f = ok_fixture();
    write(&f.path("elsewhere"), b"not a dir");
    symlink("elsewhere", f.path("parent")).unwrap();
    assert_has(&open_err(&f), &["parent: parent is not a directory"]);
}

#[test]
fn parent_range_not_covered() {
    // No parent at all.
    let f = ok_fixture();
    let entries = [entry(0x10000, 2, 6), entry(0x30000, 3, PE_PARENT)];
    let bytes = write_pagemap(&f, &entries);
    pages_for(&f.dir(), 1, &entries, 0);
    assert_has(
        &open_err(&f),
        &[&format!(
            "pagemap-1.img: offset {}: PE_PARENT range 0x30000-0x33000 not found in parent chain",
            entry_offset(&bytes, 2)
        )],
    );

    // A parent that covers only part of it, or holds no bytes for it.
    for parent_entries in [
        vec![entry(0x30000, 1, PE_PRESENT), entry(0x32000, 1, PE_PRESENT)],
        vec![entry(0x30000, 3, PE_LAZY)],
    ] {
        let f = ok_fixture();
        write_pagemap(&f, &entries);
        pages_for(&f.dir(), 1, &entries, 0);
        let parent = f.path("p");
        std::fs::create_dir(&parent).unwrap();
        level(&parent, 1, 1, &parent_entries, 1);
        symlink("p", f.path("parent")).unwrap();
        assert_has(
            &open_err(&f),
            &["pagemap-1.img: offset", "not found in parent chain"],
        );
    }
}

#[test]
fn missing_mm_for_live_task_but_not_for_zombie() {
    let f = ok_fixture();
    pstree(&f.dir(), &[(1, 0), (2, 1)]);
    core(&f.dir(), 2, 2);
    Dump::open(&f.dir()).unwrap();
    core(&f.dir(), 2, 1);
    assert_has(&open_err(&f), &["mm-2.img: image file is missing"]);
    core(&f.dir(), 2, 9);
    assert_has(
        &open_err(&f),
        &["core-2.img: offset 8: unknown task_state 9"],
    );
}

#[test]
fn bad_pstree_and_mm() {
    let f = ok_fixture();
    pstree(&f.dir(), &[(1, 0), (1, 0)]);
    assert_has(
        &open_err(&f),
        &["pstree.img: offset", "pid 1 appears twice"],
    );
    write(&f.path("pstree.img"), &image(true, 0x5027_3030, &[]));
    assert_has(
        &open_err(&f),
        &["pstree.img: process tree holds no process"],
    );

    let f = ok_fixture();
    mm(
        &f.dir(),
        1,
        vec![
            vma(0x20000, 0x30000, ANON_PRIVATE),
            vma(0x10000, 0x28000, ANON_PRIVATE),
        ],
    );
    assert_has(
        &open_err(&f),
        &["mm-1.img: offset 8: vma #1 0x10000-0x28000 is not after"],
    );
    mm(&f.dir(), 1, vec![vma(0x20000, 0x20000, ANON_PRIVATE)]);
    assert_has(&open_err(&f), &["mm-1.img: offset 8: vma #0", "empty"]);
    write(&f.path("mm-1.img"), &image(true, MM_MAGIC, &[]));
    assert_has(&open_err(&f), &["mm-1.img: image holds no mm entry"]);
}

#[test]
fn empty_and_short_files() {
    let f = ok_fixture();
    write(&f.path("mm-1.img"), &[]);
    assert_has(
        &open_err(&f),
        &["mm-1.img: offset 0: file too short for its head magic"],
    );
    write(&f.path("mm-1.img"), &[0x19, 0x43, 0x56, 0x54, 0x20]);
    assert_has(
        &open_err(&f),
        &["mm-1.img: offset 4: file too short for its type magic"],
    );
}

/// Every prefix and a set of byte flips of a valid pagemap: errors or success,
/// never a panic.
#[test]
fn fuzz_pagemap_never_panics() {
    let f = ok_fixture();
    let good = std::fs::read(f.path("pagemap-1.img")).unwrap();
    for cut in 0..good.len() {
        write(&f.path("pagemap-1.img"), &good[..cut]);
        let _ = Dump::open(&f.dir());
    }
    for pos in 0..good.len() {
        for val in [0x00, 0x7f, 0x80, 0xff] {
            let mut bytes = good.clone();
            bytes[pos] = val;
            write(&f.path("pagemap-1.img"), &bytes);
            if let Ok(dump) = Dump::open(&f.dir()) {
                let mem = dump.memory(1).unwrap();
                let _ = mem.lazy_extents();
                let _ = mem.summary();
                let mut buf = vec![0u8; 3 * PS as usize];
                let _ = mem.read_pages(0x10000, &mut buf);
                let _ = mem.pages_slice(0x10000, u64::MAX);
                let _ = mem.page(u64::MAX);
            }
        }
    }
}
