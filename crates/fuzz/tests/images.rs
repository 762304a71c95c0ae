//! Fuzz targets for the image decoders: framing, protobuf messages, pagemaps.

#[path = "../../core/tests/images_support/mod.rs"]
mod images_support;

use std::path::Path;

use bolero::{check, TypeGenerator};
use lazy_pages_core::images::framing::{
    parse_image, CORE_MAGIC, HEAD_MAGIC, INVENTORY_MAGIC, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC,
};
use lazy_pages_core::images::proto::{
    CoreEntry, InventoryEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry, VmaEntry,
};
use lazy_pages_core::images::{
    parse_pagemap, HeadMagic, ImageError, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT,
};
use prost::Message;

const MAGICS: [u32; 5] = [
    INVENTORY_MAGIC,
    PSTREE_MAGIC,
    MM_MAGIC,
    PAGEMAP_MAGIC,
    CORE_MAGIC,
];

fn path() -> &'static Path {
    Path::new("/fuzz/image.img")
}

/// The promise every image error keeps: one line, naming the file.
fn assert_clean(e: &ImageError) {
    let text = e.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "multi-line error: {text:?}"
    );
    assert!(
        text.starts_with("/fuzz/image.img: "),
        "error does not name the file: {text}"
    );
}

#[derive(Debug, TypeGenerator)]
struct Framed {
    head: bool,
    kind: u8,
    /// Skip the valid magic prefix: the bytes are all random.
    raw: bool,
    entries: Vec<Vec<u8>>,
    tail: Vec<u8>,
}

#[test]
fn framing() {
    check!().with_type::<Framed>().for_each(|input| {
        let magic = MAGICS[input.kind as usize % MAGICS.len()];
        let head = if input.head {
            HeadMagic::Present
        } else {
            HeadMagic::Absent
        };
        let mut data = Vec::new();
        if !input.raw {
            if input.head {
                data.extend(HEAD_MAGIC.to_le_bytes());
            }
            data.extend(magic.to_le_bytes());
            for body in &input.entries {
                data.extend((body.len() as u32).to_le_bytes());
                data.extend(body);
            }
        }
        data.extend(&input.tail);
        let file = match parse_image(path(), data.clone(), magic, head) {
            Ok(file) => file,
            Err(e) => return assert_clean(&e),
        };
        let mut ok = Vec::new();
        let mut errors = 0;
        for entry in file.entries() {
            match entry {
                Ok(entry) => {
                    let start = entry.offset as usize + 4;
                    assert_eq!(
                        &data[start..start + entry.body.len()],
                        entry.body,
                        "an entry's body is where its offset says"
                    );
                    ok.push(entry.body.to_vec());
                }
                Err(e) => {
                    assert_clean(&e);
                    errors += 1;
                }
            }
        }
        assert!(errors <= 1, "the walk stops at its first error");
        if !input.raw && input.tail.is_empty() {
            assert_eq!(
                ok, input.entries,
                "well-framed entries come back as written"
            );
            assert_eq!(errors, 0);
        }
        // Whatever the entries hold, decoding them fails cleanly or succeeds.
        fn all<M: Message + Default>(file: &lazy_pages_core::images::framing::ImageFile) {
            if let Err(e) = file.decode_all::<M>() {
                assert_clean(&e);
            }
        }
        all::<InventoryEntry>(&file);
        all::<PstreeEntry>(&file);
        all::<MmEntry>(&file);
        all::<PagemapEntry>(&file);
        all::<CoreEntry>(&file);
        if let Err(e) = parse_pagemap(&file) {
            assert_clean(&e);
        }
    });
}

/// What decodes re-encodes to something that decodes to the same message.
fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
}

#[test]
fn proto_messages() {
    check!().with_type::<Vec<u8>>().for_each(|bytes| {
        roundtrip::<InventoryEntry>(bytes);
        roundtrip::<PstreeEntry>(bytes);
        roundtrip::<MmEntry>(bytes);
        roundtrip::<VmaEntry>(bytes);
        roundtrip::<PagemapHead>(bytes);
        roundtrip::<PagemapEntry>(bytes);
        roundtrip::<CoreEntry>(bytes);
    });
}

/// One pagemap entry, mostly plausible: page-aligned, after the previous one.
#[derive(Debug, TypeGenerator)]
struct Run {
    gap: u8,
    pages: u16,
    backwards: bool,
    unaligned: bool,
    /// 4.2 style (field 5) or 4.1.1 style (field 2).
    wide: bool,
    flags: u8,
    raw_flags: Option<u32>,
    in_parent: Option<bool>,
    no_vaddr: bool,
}

#[derive(Debug, TypeGenerator)]
struct PagemapInput {
    head: bool,
    pages_id: Option<u32>,
    runs: Vec<Run>,
    cut: Option<u16>,
}

#[test]
fn pagemap() {
    check!().with_type::<PagemapInput>().for_each(|input| {
        let mut addr = 0x10000u64;
        let mut entries = Vec::new();
        for run in &input.runs {
            let pages = u64::from(run.pages % 300);
            if run.backwards {
                addr = addr.saturating_sub(u64::from(run.gap) * PAGE_SIZE);
            } else {
                addr += u64::from(run.gap) * PAGE_SIZE;
            }
            let vaddr = if run.unaligned { addr + 1 } else { addr };
            let flags =
                [PE_PRESENT, PE_LAZY | PE_PRESENT, PE_PARENT, PE_LAZY, 0][run.flags as usize % 5];
            entries.push(PagemapEntry {
                vaddr: (!run.no_vaddr).then_some(vaddr),
                compat_nr_pages: Some(if run.wide { 0 } else { pages as u32 }),
                in_parent: run.in_parent,
                flags: Some(run.raw_flags.unwrap_or(flags)),
                nr_pages: run.wide.then_some(pages),
            });
            addr += pages * PAGE_SIZE;
        }
        let mut bodies = vec![PagemapHead {
            pages_id: input.pages_id,
        }
        .encode_to_vec()];
        bodies.extend(entries.iter().map(|e| e.encode_to_vec()));
        let mut data = images_support::image(input.head, PAGEMAP_MAGIC, &bodies);
        if let Some(cut) = input.cut {
            data.truncate(cut as usize % (data.len() + 1));
        }
        let head = if input.head {
            HeadMagic::Present
        } else {
            HeadMagic::Absent
        };
        let pagemap =
            match parse_image(path(), data, PAGEMAP_MAGIC, head).and_then(|f| parse_pagemap(&f)) {
                Ok(pagemap) => pagemap,
                Err(e) => return assert_clean(&e),
            };
        // What the fault engine relies on.
        let mut data_end = 0u64;
        let mut prev_end = 0u64;
        for run in &pagemap.runs {
            assert_eq!(run.vaddr % PAGE_SIZE, 0);
            assert!(run.pages > 0);
            assert!(run.vaddr >= prev_end, "sorted and not overlapping");
            prev_end = run.end();
            assert!(
                !(run.is_parent() && (run.is_present() || run.is_lazy())),
                "PE_PARENT stands alone"
            );
            if run.is_present() {
                assert_eq!(
                    run.data_offset,
                    Some(data_end),
                    "pages file offsets in order"
                );
                data_end += run.pages * PAGE_SIZE;
            } else {
                assert_eq!(run.data_offset, None);
            }
        }
        assert_eq!(pagemap.present_bytes(), data_end);
        if input.cut.is_none() {
            assert_eq!(
                pagemap.runs.len(),
                entries.len(),
                "every entry became a run"
            );
        }
    });
}
