//! inventory.img: read first, because its img_version decides whether the
//! other images carry the head magic.

use std::path::Path;

use super::error::ImageError;
use super::framing::{read_required, HeadMagic, INVENTORY_MAGIC};
use super::proto::InventoryEntry;

pub const INVENTORY_FILE: &str = "inventory.img";

#[derive(Debug, Clone)]
pub struct Inventory {
    pub img_version: u32,
    /// How every other image of the dump is framed.
    pub head: HeadMagic,
    pub entry: InventoryEntry,
}

pub fn read_inventory(dir: &Path) -> Result<Inventory, ImageError> {
    let path = dir.join(INVENTORY_FILE);
    // The inventory itself never has the head magic, whatever the version.
    let entry: InventoryEntry =
        read_required(&path, INVENTORY_MAGIC, HeadMagic::Absent)?.decode_single()?;
    let img_version = entry
        .img_version
        .ok_or_else(|| ImageError::new(&path, "inventory entry lacks img_version"))?;
    let head = match img_version {
        1 => HeadMagic::Absent,
        2 => HeadMagic::Present,
        v => {
            return Err(ImageError::new(
                &path,
                format!("unsupported img_version {v} (expected 1 or 2)"),
            ))
        }
    };
    // CRIU refuses images without per-id fdinfo ("too old"); restore would fail
    // later anyway, so say it now.
    if entry.fdinfo_per_id != Some(true) {
        return Err(ImageError::new(
            &path,
            "too old image: fdinfo_per_id is not set",
        ));
    }
    Ok(Inventory {
        img_version,
        head,
        entry,
    })
}
