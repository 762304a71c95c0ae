//! images::writer: pagemaps both CRIU 4.1.1 and 4.2 read, staged writes.

mod images_support;

use images_support::*;
use lazy_pages_core::images::framing::HeadMagic;
use lazy_pages_core::images::proto::{PagemapEntry, PagemapHead};
use lazy_pages_core::images::writer::{encode_pagemap, stage_pagemap, stage_pages, RunSpec};
use lazy_pages_core::images::{Dump, PagemapWriter, PE_LAZY, PE_PARENT, PE_PRESENT};
use prost::Message;

fn spec(vaddr: u64, pages: u64, flags: u32) -> RunSpec {
    RunSpec {
        vaddr,
        pages,
        flags,
    }
}

#[test]
fn worked_example_with_both_counts() {
    let bytes = encode_pagemap(
        HeadMagic::Present,
        PagemapWriter::Either,
        1,
        &[spec(0x7f00_0000_1000, 3, 6)],
    )
    .unwrap();
    // Same as the v4.2 example of the facts sheet, except field 2 holds the
    // count (10 03) instead of 0, so CRIU 4.1.1 reads it too. The entry body
    // is 14 bytes (the sheet's length word 0x0f miscounts it).
    let expected: Vec<u8> = [
        &[
            0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, 0x02, 0, 0, 0, 0x08, 0x01, 0x0e, 0, 0,
            0,
        ][..],
        &[
            0x08, 0x80, 0xa0, 0x80, 0x80, 0x80, 0xe0, 0x1f, 0x10, 0x03, 0x20, 0x06, 0x28, 0x03,
        ],
    ]
    .concat();
    assert_eq!(bytes, expected);

    let no_head = encode_pagemap(HeadMagic::Absent, PagemapWriter::Either, 1, &[]).unwrap();
    assert_eq!(no_head[..4], [0x25, 0x40, 0x08, 0x56]);
    assert_eq!(
        PagemapHead::decode(&no_head[8..]).unwrap().pages_id,
        Some(1)
    );
}

#[test]
fn large_counts_and_bad_runs_are_refused() {
    let too_many = encode_pagemap(
        HeadMagic::Present,
        PagemapWriter::Either,
        1,
        &[spec(0, 1 << 32, PE_LAZY)],
    )
    .unwrap_err();
    assert!(too_many.contains("u32"), "{too_many}");
    let cases = [
        vec![spec(0x1000, 2, 4), spec(0x2000, 1, 4)],
        vec![spec(0x1001, 1, 4)],
        vec![spec(0x1000, 0, 4)],
        vec![spec(0x1000, 1, 0)],
        vec![spec(0x1000, 1, PE_PARENT | PE_LAZY)],
        vec![spec(0x1000, 1, 8)],
        vec![spec(!0xfff, 2, 4)],
    ];
    for runs in cases {
        assert!(
            encode_pagemap(HeadMagic::Present, PagemapWriter::Either, 1, &runs).is_err(),
            "{runs:?}"
        );
    }
}

#[test]
fn staged_files_appear_only_on_commit() {
    let fx = Fixture::new(big_vma(), &[entry(0x10000, 2, PE_PRESENT)]);
    let dest = fx.path("pagemap-1.img");
    let old = std::fs::read(&dest).unwrap();
    let staged = stage_pagemap(
        &dest,
        HeadMagic::Present,
        PagemapWriter::Either,
        1,
        &[spec(0x10000, 1, PE_PRESENT)],
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), old);
    drop(staged);
    assert_eq!(
        std::fs::read_dir(fx.dir()).unwrap().count(),
        6,
        "temp file removed"
    );

    let page = page_bytes(0x10000, 0xA0);
    let staged = stage_pagemap(
        &dest,
        HeadMagic::Present,
        PagemapWriter::Either,
        1,
        &[spec(0x10000, 1, PE_PRESENT)],
    )
    .unwrap();
    let (pages, len) = stage_pages(&fx.path("pages-1.img"), [page.as_slice()]).unwrap();
    assert_eq!(len, PS);
    staged.commit().unwrap();
    pages.commit().unwrap();
    let dump = Dump::open(&fx.dir()).unwrap();
    assert_eq!(
        dump.memory(1).unwrap().page(0x10000).unwrap(),
        page.as_slice()
    );
    let raw = std::fs::read(&dest).unwrap();
    let entry = PagemapEntry::decode(&raw[18..]).unwrap();
    assert_eq!((entry.compat_nr_pages, entry.nr_pages), (Some(1), Some(1)));
}
