//! Reading well-formed synthetic dumps.

mod images_support;

use images_support::*;
use lazy_pages_core::images::proto::{PagemapEntry, PstreeEntry};
use lazy_pages_core::images::{Dump, LazyExtent, TaskState, PE_LAZY, PE_PARENT, PE_PRESENT};
use prost::Message;

const TAG: u8 = 0xA0;

/// Three VMAs (two lazy-able anon, one private file) and runs that start,
/// end and lie outside them.
fn plain_dump() -> Fixture {
    let vmas = vec![
        vma(0x10000, 0x20000, ANON_PRIVATE),
        vma(0x30000, 0x40000, ANON_PRIVATE),
        vma(0x50000, 0x60000, FILE_PRIVATE),
    ];
    let entries = [
        entry(0x10000, 2, PE_PRESENT),
        entry(0x12000, 2, PE_LAZY | PE_PRESENT),
        entry(0x1e000, 20, PE_LAZY | PE_PRESENT), // ends in B, crosses the gap
        entry(0x3f000, 6, PE_LAZY | PE_PRESENT),  // last page in B, rest past it
        entry(0x46000, 1, PE_LAZY | PE_PRESENT),  // entirely outside any VMA
        entry(0x50000, 1, PE_PRESENT),
    ];
    Fixture::new(vmas, &entries)
}

#[test]
fn lazy_extents_are_cut_at_vma_edges() {
    let f = plain_dump();
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();
    let ext = |start, pages| LazyExtent {
        start,
        pages,
        has_data: true,
    };
    assert_eq!(
        mem.lazy_extents(),
        vec![
            ext(0x12000, 2),
            ext(0x1e000, 2),
            ext(0x30000, 2),
            ext(0x3f000, 1)
        ]
    );
}

#[test]
fn page_bytes_come_from_the_right_offsets() {
    let f = plain_dump();
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();

    assert_eq!(
        mem.pages_slice(0x12000, 2).unwrap(),
        range_bytes(0x12000, 2, TAG).as_slice()
    );
    assert_eq!(
        mem.pages_slice(0x20000, 3).unwrap(),
        range_bytes(0x20000, 3, TAG).as_slice()
    );
    assert_eq!(
        mem.pages_slice(0x50000, 1).unwrap(),
        page_bytes(0x50000, TAG).as_slice()
    );
    // Crosses two runs: not one contiguous slice.
    assert!(mem.pages_slice(0x11000, 2).is_none());
    // Past the end of a run, and outside any run.
    assert!(mem.pages_slice(0x3f000, 7).is_none());
    assert!(mem.pages_slice(0x60000, 1).is_none());
    assert!(mem.pages_slice(0x12000, 0).is_none());

    assert_eq!(
        mem.page(0x50123).unwrap(),
        page_bytes(0x50000, TAG).as_slice()
    );
    assert!(mem.page(0x47000).is_none());

    let mut buf = vec![0u8; 4 * PS as usize];
    mem.read_pages(0x10000, &mut buf).unwrap();
    assert_eq!(buf, range_bytes(0x10000, 4, TAG));

    // Unaligned and crossing a run boundary.
    let mut small = [0u8; 16];
    mem.read_pages(0x12000 - 8, &mut small).unwrap();
    assert_eq!(&small[..8], &[0xA0; 8]);
    assert_eq!(&small[8..], &0x12000u64.to_le_bytes());

    let mut gap = vec![0u8; 2 * PS as usize];
    let err = mem.read_pages(0x44000, &mut gap).unwrap_err().to_string();
    assert!(
        err.contains("pagemap-1.img") && err.contains("0x45000") && err.contains("not dumped"),
        "{err}"
    );
}

#[test]
fn summary_counts_pages() {
    let f = plain_dump();
    let dump = Dump::open(&f.dir()).unwrap();
    let s = dump.summary();
    assert_eq!(s.len(), 1);
    let s = s[0];
    assert_eq!(
        (s.pid, s.vmas, s.pages, s.lazy, s.in_parent, s.present),
        (1, 3, 32, 29, 0, 32)
    );
    assert_eq!(s.bytes, 32 * PS);
    assert_eq!(dump.memory(1).unwrap().summary(), s);
}

#[test]
fn criu_42_and_411_entries_agree() {
    let a = Fixture::new(big_vma(), &[entry(0x10000, 3, 6), entry(0x20000, 1, 4)]);
    let b = Fixture::new(
        big_vma(),
        &[entry_411(0x10000, 3, 6), entry_411(0x20000, 1, 4)],
    );
    // A writer targeting both versions: field 2 and field 5 both hold the count.
    let mut both = entry(0x10000, 3, 6);
    both.compat_nr_pages = Some(3);
    let c = Fixture::new(big_vma(), &[both, entry(0x20000, 1, 4)]);
    for f in [&a, &b, &c] {
        let dump = Dump::open(&f.dir()).unwrap();
        let mem = dump.memory(1).unwrap();
        let runs: Vec<_> = mem
            .chain()
            .next()
            .unwrap()
            .0
            .runs
            .iter()
            .map(|r| (r.vaddr, r.pages, r.flags))
            .collect();
        assert_eq!(runs, vec![(0x10000, 3, 6), (0x20000, 1, 4)]);
        assert_eq!(
            mem.pages_slice(0x20000, 1).unwrap(),
            page_bytes(0x20000, TAG).as_slice()
        );
    }
}

#[test]
fn missing_flags_mean_present() {
    let mut e = entry_411(0x10000, 2, 0);
    e.flags = None;
    let f = Fixture::new(big_vma(), &[e]);
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(mem.chain().next().unwrap().0.runs[0].flags, PE_PRESENT);
    assert_eq!(
        mem.page(0x11000).unwrap(),
        page_bytes(0x11000, TAG).as_slice()
    );
}

#[test]
fn worked_example_bytes_decode() {
    // facts §1.2: head pages_id=1, one entry 0x7f0000001000, 3 pages, flags 6.
    // The facts give the entry's length word as 0x0f, but its body (as
    // printed, and as any protobuf encoder produces it) is 14 bytes; taken
    // literally, the facts' bytes end one byte short of that length.
    let facts: Vec<u8> = vec![
        0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, 0x02, 0x00, 0x00, 0x00, 0x08, 0x01, 0x0f,
        0x00, 0x00, 0x00, 0x08, 0x80, 0xa0, 0x80, 0x80, 0x80, 0xe0, 0x1f, 0x10, 0x00, 0x20, 0x06,
        0x28, 0x03,
    ];
    let body = &facts[18..];
    assert_eq!(body.len(), 14);
    let decoded = PagemapEntry::decode(body).unwrap();
    assert_eq!(decoded, entry(0x7f00_0000_1000, 3, 6));
    let mut bytes = facts.clone();
    bytes[14] = 0x0e;
    // Our writer produces exactly these bytes.
    assert_eq!(pagemap_bytes(1, &[entry(0x7f00_0000_1000, 3, 6)]), bytes);

    let f = Fixture::new(
        vec![vma(0x7f00_0000_0000, 0x7f00_0001_0000, ANON_PRIVATE)],
        &[],
    );
    write(&f.path("pages-1.img"), &range_bytes(0x7f00_0000_1000, 3, 7));
    write(&f.path("pagemap-1.img"), &facts);
    let err = Dump::open(&f.dir()).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "pagemap-1.img: offset 14: entry length 15 exceeds the 14 bytes left in the file"
        ),
        "{err}"
    );

    write(&f.path("pagemap-1.img"), &bytes);
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();
    let (pagemap, pages_path) = mem.chain().next().unwrap();
    assert_eq!(pagemap.pages_id, 1);
    assert!(pages_path.ends_with("pages-1.img"));
    let run = pagemap.runs[0];
    assert_eq!(
        (run.vaddr, run.pages, run.flags, run.data_offset),
        (0x7f00_0000_1000, 3, 6, Some(0))
    );
    assert_eq!(
        mem.lazy_extents(),
        vec![LazyExtent {
            start: 0x7f00_0000_1000,
            pages: 3,
            has_data: true
        }]
    );
    assert_eq!(
        mem.page(0x7f00_0000_3000).unwrap(),
        page_bytes(0x7f00_0000_3000, 7).as_slice()
    );
}

#[test]
fn lazy_only_runs_have_no_data() {
    // `criu dump --lazy-pages`: flags 2, the bytes stay in the source process.
    let f = Fixture::new(
        big_vma(),
        &[
            entry(0x10000, 1, PE_PRESENT),
            entry(0x11000, 2, PE_LAZY),
            entry(0x13000, 1, PE_PRESENT),
        ],
    );
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();
    assert_eq!(
        mem.lazy_extents(),
        vec![LazyExtent {
            start: 0x11000,
            pages: 2,
            has_data: false
        }]
    );
    assert!(mem.page(0x11000).is_none());
    // The next PRESENT run's bytes follow the previous ones directly.
    assert_eq!(
        mem.page(0x13000).unwrap(),
        page_bytes(0x13000, TAG).as_slice()
    );
    let mut buf = vec![0u8; PS as usize];
    let err = mem.read_pages(0x12000, &mut buf).unwrap_err().to_string();
    assert!(
        err.contains("pagemap-1.img: offset ") && err.contains("no data"),
        "{err}"
    );
    let s = mem.summary();
    assert_eq!((s.pages, s.lazy, s.present, s.bytes), (4, 2, 2, 2 * PS));
}

#[test]
fn zombies_and_stopped_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    inventory(dir, 2);
    pstree(dir, &[(1, 0), (2, 1), (3, 1)]);
    core(dir, 1, 1);
    core(dir, 2, 2); // zombie: no mm, no pagemap
    core(dir, 3, 3); // stopped: has memory
    for pid in [1, 3] {
        mm(dir, pid, big_vma());
        level(dir, pid, pid + 10, &[entry(0x10000, 1, 6)], pid as u8);
    }
    let dump = Dump::open(dir).unwrap();
    let states: Vec<_> = dump
        .tasks
        .iter()
        .map(|t| (t.pid, t.ppid, t.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (1, 0, TaskState::Alive),
            (2, 1, TaskState::Zombie),
            (3, 1, TaskState::Stopped)
        ]
    );
    assert!(dump.memory(2).is_none());
    assert!(dump.memory(4).is_none());
    assert_eq!(
        dump.memory(3).unwrap().page(0x10000).unwrap(),
        page_bytes(0x10000, 3).as_slice()
    );
    let pids: Vec<_> = dump.summary().iter().map(|s| s.pid).collect();
    assert_eq!(pids, vec![1, 3]);
}

#[test]
fn missing_core_means_alive_and_packed_threads_decode() {
    let f = Fixture::new(big_vma(), &[entry(0x10000, 1, 6)]);
    std::fs::remove_file(f.path("core-1.img")).unwrap();
    // Hand-encode a pstree entry with packed threads (field 5, wire type 2).
    let mut body = PstreeEntry {
        pid: Some(1),
        ppid: Some(0),
        pgid: Some(1),
        sid: Some(1),
        threads: vec![],
    }
    .encode_to_vec();
    body.extend_from_slice(&[0x2a, 0x02, 0x01, 0x05]);
    write(
        &f.path("pstree.img"),
        &image(
            true,
            lazy_pages_core::images::framing::PSTREE_MAGIC,
            &[body],
        ),
    );
    let dump = Dump::open(&f.dir()).unwrap();
    assert_eq!(dump.tasks[0].state, TaskState::Alive);
    assert_eq!(dump.tasks[0].threads, vec![1, 5]);
}

#[test]
fn img_version_1_has_no_head_magic() {
    use lazy_pages_core::images::framing::{CORE_MAGIC, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC};
    let f = Fixture::new(big_vma(), &[entry(0x10000, 1, 6)]);
    inventory(&f.dir(), 1);
    for (name, magic) in [
        ("pstree.img", PSTREE_MAGIC),
        ("core-1.img", CORE_MAGIC),
        ("mm-1.img", MM_MAGIC),
        ("pagemap-1.img", PAGEMAP_MAGIC),
    ] {
        let bytes = std::fs::read(f.path(name)).unwrap();
        assert_eq!(bytes[4..8], magic.to_le_bytes());
        write(&f.path(name), &bytes[4..]);
    }
    let dump = Dump::open(&f.dir()).unwrap();
    assert_eq!(dump.inventory().img_version, 1);
    assert_eq!(
        dump.memory(1).unwrap().page(0x10000).unwrap(),
        page_bytes(0x10000, TAG).as_slice()
    );
}

#[test]
fn empty_pagemap_needs_no_pages_file() {
    let f = Fixture::new(big_vma(), &[]);
    std::fs::remove_file(f.path("pages-1.img")).unwrap();
    let dump = Dump::open(&f.dir()).unwrap();
    let mem = dump.memory(1).unwrap();
    assert!(mem.lazy_extents().is_empty());
    assert!(mem.page(0x10000).is_none());
    assert_eq!(mem.summary().pages, 0);
    assert!(mem
        .chain()
        .all(|(p, _)| p.runs.iter().all(|r| r.flags & PE_PARENT == 0)));
}
