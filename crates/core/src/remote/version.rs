//! Which page-server layout a dump's CRIU speaks: the one of the CRIU that
//! wrote its pagemaps (see `images::style`).

use crate::images::Dump;
pub use crate::images::{classify, pagemap_writer_of, PagemapWriter};

use super::wire::WireVersion;

/// The layout the CRIU that wrote `dump` speaks, from the first task whose
/// pagemap has an entry. None when no pagemap has one, or when it was written
/// for either version (then the caller must be told).
pub fn wire_version_of(dump: &Dump) -> Option<WireVersion> {
    match pagemap_writer_of(dump)? {
        PagemapWriter::Criu42 => Some(WireVersion::V42),
        PagemapWriter::Criu411 => Some(WireVersion::V411),
        PagemapWriter::Either => None,
    }
}
