//! split(): a copy of a dump without its lazy page data.

mod images_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use images_support::*;
use lazy_pages_core::images::{Dump, LazyExtent, PE_LAZY, PE_PARENT, PE_PRESENT};
use lazy_pages_core::transform::{rebase, split};

const LP: u32 = PE_LAZY | PE_PRESENT;
const BASE: u64 = 0x10000;

fn page(i: u64) -> u64 {
    BASE + i * PS
}

/// `root/name`: task 1 alive, task 2 a zombie, plus images a transform must
/// copy untouched (a shmem pagemap and its pages file among them).
fn dump_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    inventory(&dir, 2);
    pstree(&dir, &[(1, 0), (2, 1)]);
    core(&dir, 1, 1);
    core(&dir, 2, 2);
    mm(&dir, 1, big_vma());
    write(&dir.join("fdinfo-2.img"), b"opaque image bytes");
    write(&dir.join("pagemap-shmem-77.img"), b"shmem pagemap");
    write(&dir.join("pages-9.img"), &[0x5a; 4096]);
    write(&dir.join("dump.log"), b"log");
    write(&dir.join("lazy-pages.socket"), b"");
    dir
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn runs(dir: &Path) -> Vec<(u64, u64, u32)> {
    let dump = Dump::open(dir).unwrap();
    let (pagemap, _) = dump.memory(1).unwrap().chain().next().unwrap();
    pagemap
        .runs
        .iter()
        .map(|r| (r.vaddr, r.pages, r.flags))
        .collect()
}

#[test]
fn lazy_bytes_are_left_out() {
    let root = tempfile::tempdir().unwrap();
    let dir = dump_dir(root.path(), "full");
    let entries = [
        entry(page(0), 2, PE_PRESENT),
        entry(page(2), 8, LP),
        entry(page(10), 1, PE_PRESENT),
        entry(page(20), 3, PE_LAZY),
    ];
    level(&dir, 1, 4, &entries, 0xA0);
    let out = root.path().join("out");

    let report = split(&dir, &out).unwrap();

    let mut expected = names(&dir);
    expected.remove("dump.log");
    expected.remove("lazy-pages.socket");
    assert_eq!(names(&out), expected);
    for same in [
        "inventory.img",
        "pstree.img",
        "core-1.img",
        "core-2.img",
        "mm-1.img",
        "fdinfo-2.img",
        "pagemap-shmem-77.img",
        "pages-9.img",
    ] {
        assert_eq!(
            std::fs::read(out.join(same)).unwrap(),
            std::fs::read(dir.join(same)).unwrap(),
            "{same}"
        );
    }
    assert_eq!(
        runs(&out),
        vec![
            (page(0), 2, PE_PRESENT),
            (page(2), 8, PE_LAZY),
            (page(10), 1, PE_PRESENT),
            (page(20), 3, PE_LAZY),
        ]
    );
    assert_eq!(
        std::fs::metadata(out.join("pages-4.img")).unwrap().len(),
        3 * PS
    );

    let dump = Dump::open(&out).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(
        mem.lazy_extents(),
        vec![
            LazyExtent {
                start: page(2),
                pages: 8,
                has_data: false
            },
            LazyExtent {
                start: page(20),
                pages: 3,
                has_data: false
            },
        ]
    );
    assert_eq!(
        mem.page(page(1)).unwrap(),
        page_bytes(page(1), 0xA0).as_slice()
    );
    assert_eq!(
        mem.page(page(10)).unwrap(),
        page_bytes(page(10), 0xA0).as_slice()
    );
    assert!(mem.page(page(2)).is_none());

    assert_eq!(report.tasks.len(), 1);
    assert_eq!(
        (report.tasks[0].lazy_pages, report.tasks[0].present_pages),
        (8, 3)
    );
    let total = |d: &Path, skip: &[&str]| -> u64 {
        names(d)
            .iter()
            .filter(|n| !skip.contains(&n.as_str()))
            .map(|n| std::fs::metadata(d.join(n)).unwrap().len())
            .sum()
    };
    assert_eq!(
        report.bytes_in,
        total(&dir, &["dump.log", "lazy-pages.socket"])
    );
    assert_eq!(report.bytes_out, total(&out, &[]));
    assert_eq!(report.files, names(&out).len() as u64);
    assert!(report.bytes_in - report.bytes_out >= 8 * PS);
    // Nothing left behind next to the output.
    assert_eq!(names(root.path()), ["full", "out"].map(String::from).into());
}

#[test]
fn split_of_incremental_dump_keeps_the_chain() {
    let root = tempfile::tempdir().unwrap();
    let a = dump_dir(root.path(), "A");
    let b = dump_dir(root.path(), "B");
    level(&a, 1, 1, &[entry(page(0), 4, LP)], 0xA0);
    level(
        &b,
        1,
        1,
        &[entry(page(0), 2, PE_PRESENT), entry(page(2), 2, LP)],
        0xA0,
    );
    rebase(&b, &a).unwrap();
    assert_eq!(runs(&b), vec![(page(0), 4, PE_PARENT)]);
    // Change B so that it has a lazy run of its own again.
    write(
        &b.join("pagemap-1.img"),
        &pagemap_bytes(1, &[entry(page(0), 2, PE_PARENT), entry(page(2), 2, LP)]),
    );
    pages_for(&b, 1, &[entry(page(2), 2, LP)], 0xB0);

    // Deeper than B, so the relative link must be re-aimed.
    std::fs::create_dir(root.path().join("nested")).unwrap();
    let out = root.path().join("nested/out");
    split(&b, &out).unwrap();

    assert_eq!(
        std::fs::read_link(out.join("parent")).unwrap(),
        Path::new("../../A")
    );
    assert_eq!(
        runs(&out),
        vec![(page(0), 2, PE_PARENT), (page(2), 2, PE_LAZY)]
    );
    let dump = Dump::open(&out).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(
        mem.page(page(1)).unwrap(),
        page_bytes(page(1), 0xA0).as_slice()
    );
    assert!(mem.page(page(2)).is_none());
}

#[test]
fn output_must_be_new_or_empty() {
    let root = tempfile::tempdir().unwrap();
    let dir = dump_dir(root.path(), "full");
    level(&dir, 1, 1, &[entry(page(0), 2, LP)], 0xA0);

    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    write(&out.join("x"), b"x");
    let err = split(&dir, &out).unwrap_err();
    assert_eq!(err.path, out);
    assert!(err.message.contains("not empty"), "{err}");

    std::fs::remove_file(out.join("x")).unwrap();
    split(&dir, &out).unwrap(); // empty dir is fine
    assert!(out.join("pagemap-1.img").is_file());

    let err = split(&dir, &dir.join("inner")).unwrap_err();
    assert!(err.message.contains("inside the images dir"), "{err}");
}

#[test]
fn failures_leave_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let dir = dump_dir(root.path(), "full");
    level(&dir, 1, 1, &[entry(page(0), 2, LP)], 0xA0);
    std::fs::create_dir(dir.join("subdir")).unwrap();
    let out = root.path().join("out");

    let err = split(&dir, &out).unwrap_err();
    assert_eq!(err.path, dir.join("subdir"));
    assert_eq!(names(root.path()), ["full"].map(String::from).into());

    std::fs::remove_dir(dir.join("subdir")).unwrap();
    write(&dir.join("pages-1.img"), &[0u8; 10]);
    let err = split(&dir, &out).unwrap_err();
    assert_eq!(err.path, dir.join("pages-1.img"));
    assert_eq!(names(root.path()), ["full"].map(String::from).into());
}
