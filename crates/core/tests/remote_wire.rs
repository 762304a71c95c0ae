//! page_server_iov codec (both CRIU layouts, golden bytes) and detecting the
//! layout a dump's CRIU speaks from its pagemaps.

mod images_support;

use images_support::*;
use lazy_pages_core::images::proto::PagemapEntry;
use lazy_pages_core::images::{Dump, PE_LAZY, PE_PRESENT};
use lazy_pages_core::remote::wire::{GET_REPLY_CMD, PS_IOV_CLOSE, PS_IOV_GET};
use lazy_pages_core::remote::{wire_version_of, IovHeader, WireError, WireVersion};

const VADDR: u64 = 0x7f00_0000_1000;

#[rustfmt::skip]
const GET_411: [u8; 24] = [
    0x07, 0, 0, 0,                                  // cmd PS_IOV_GET
    0x03, 0, 0, 0,                                  // nr_pages u32
    0x00, 0x10, 0, 0, 0x00, 0x7f, 0, 0,             // vaddr
    0xd2, 0x04, 0, 0, 0, 0, 0, 0,                   // dst_id = pid 1234
];

#[rustfmt::skip]
const GET_42: [u8; 32] = [
    0x07, 0, 0, 0,                                  // cmd
    0, 0, 0, 0,                                     // padding
    0x03, 0, 0, 0, 0, 0, 0, 0,                      // nr_pages u64
    0x00, 0x10, 0, 0, 0x00, 0x7f, 0, 0,             // vaddr
    0xd2, 0x04, 0, 0, 0, 0, 0, 0,                   // dst_id
];

#[test]
fn get_request_golden_bytes() {
    let get = IovHeader::get(1234, VADDR, 3);
    assert_eq!(get.encode(WireVersion::V411).unwrap().as_slice(), &GET_411);
    assert_eq!(get.encode(WireVersion::V42).unwrap().as_slice(), &GET_42);
    assert_eq!(IovHeader::decode(WireVersion::V411, &GET_411).unwrap(), get);
    assert_eq!(IovHeader::decode(WireVersion::V42, &GET_42).unwrap(), get);
    assert_eq!(get.command(), PS_IOV_GET);
}

#[test]
fn get_reply_golden_bytes_echo_everything_but_cmd() {
    let reply = IovHeader::get(1234, VADDR, 3).get_reply(2);
    assert_eq!(GET_REPLY_CMD, 0x0004_0006);
    assert_eq!((reply.command(), reply.flags()), (6, PE_PRESENT));
    let mut want = GET_411;
    want[..8].copy_from_slice(&[0x06, 0, 0x04, 0, 0x02, 0, 0, 0]);
    assert_eq!(reply.encode(WireVersion::V411).unwrap().as_slice(), &want);
    let mut want = GET_42;
    want[..16].copy_from_slice(&[0x06, 0, 0x04, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reply.encode(WireVersion::V42).unwrap().as_slice(), &want);
}

#[test]
fn close_golden_bytes() {
    let mut want = [0u8; 32];
    want[..4].copy_from_slice(&[0x23, 0x10, 0, 0]);
    assert_eq!(
        IovHeader::close()
            .encode(WireVersion::V42)
            .unwrap()
            .as_slice(),
        &want
    );
    assert_eq!(
        IovHeader::close()
            .encode(WireVersion::V411)
            .unwrap()
            .as_slice(),
        &want[..24]
    );
    assert_eq!(IovHeader::close().cmd, PS_IOV_CLOSE);
}

#[test]
fn round_trips_keep_every_field() {
    let samples = [
        IovHeader {
            cmd: 0xdead_beef,
            pad: 0,
            nr_pages: u64::from(u32::MAX),
            vaddr: u64::MAX,
            dst_id: u64::MAX,
        },
        IovHeader {
            cmd: 1,
            pad: 0,
            nr_pages: 0,
            vaddr: 0,
            dst_id: (77 << 8) | 1,
        },
    ];
    for h in samples {
        for v in [WireVersion::V411, WireVersion::V42] {
            let bytes = h.encode(v).unwrap();
            assert_eq!(bytes.as_slice().len(), v.header_len());
            assert_eq!(IovHeader::decode(v, bytes.as_slice()).unwrap(), h, "{v:?}");
        }
    }
    // v4.2 padding is carried (CRIU's server echoes it).
    let padded = IovHeader {
        pad: 0x1122_3344,
        ..samples[1]
    };
    let bytes = padded.encode(WireVersion::V42).unwrap();
    assert_eq!(
        IovHeader::decode(WireVersion::V42, bytes.as_slice()).unwrap(),
        padded
    );
}

#[test]
fn limits_are_errors_not_panics() {
    let big = IovHeader::get(1, 0, 1 << 32);
    assert!(matches!(
        big.encode(WireVersion::V411),
        Err(WireError::TooManyPages { .. })
    ));
    assert!(big.encode(WireVersion::V42).is_ok());
    assert_eq!(
        IovHeader::decode(WireVersion::V42, &GET_411),
        Err(WireError::Short { want: 32, got: 24 })
    );
    assert!(IovHeader::decode(WireVersion::V411, &[]).is_err());
}

fn dump_with(entries: &[PagemapEntry]) -> (Fixture, Dump) {
    let f = Fixture::new(big_vma(), entries);
    let dump = Dump::open(&f.dir()).unwrap();
    (f, dump)
}

#[test]
fn version_from_pagemap_fields() {
    let (_f, d) = dump_with(&[entry(0x20000, 3, PE_LAZY | PE_PRESENT)]);
    assert_eq!(wire_version_of(&d), Some(WireVersion::V42));
    let (_f, d) = dump_with(&[entry_411(0x20000, 3, PE_LAZY | PE_PRESENT)]);
    assert_eq!(wire_version_of(&d), Some(WireVersion::V411));
    // Written for both readers: says nothing about the CRIU version.
    let both = PagemapEntry {
        compat_nr_pages: Some(3),
        ..entry(0x20000, 3, PE_LAZY | PE_PRESENT)
    };
    let (_f, d) = dump_with(&[both]);
    assert_eq!(wire_version_of(&d), None);
    let (_f, d) = dump_with(&[]);
    assert_eq!(wire_version_of(&d), None);
}
