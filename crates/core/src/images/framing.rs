//! CRIU image framing: optional head magic, type magic, then `u32 len | body`
//! protobuf entries until EOF. Image files other than pages files are small,
//! so they are read whole and walked in memory.

use std::io;
use std::path::{Path, PathBuf};

use super::error::ImageError;

/// "img-common": the first word of every image except inventory.img (and of
/// none at all when the inventory says img_version 1).
pub const HEAD_MAGIC: u32 = 0x5456_4319;

pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
pub const MM_MAGIC: u32 = 0x5749_2820;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
pub const CORE_MAGIC: u32 = 0x5505_3847;
pub const IDS_MAGIC: u32 = 0x5443_2030;

const WORD: usize = 4;

/// Whether image files start with [`HEAD_MAGIC`]; decided by the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadMagic {
    Present,
    Absent,
}

/// A whole image file, magic words checked.
pub struct ImageFile {
    path: PathBuf,
    data: Vec<u8>,
    body_start: usize,
}

/// One protobuf entry; `offset` is where its length word starts in the file.
pub struct Entry<'a> {
    pub offset: u64,
    pub body: &'a [u8],
}

/// Reads `path` and checks its magic words. `Ok(None)` if it does not exist:
/// whether that is acceptable depends on the image, so the caller decides.
pub fn read_image(
    path: &Path,
    type_magic: u32,
    head: HeadMagic,
) -> Result<Option<ImageFile>, ImageError> {
    let data = match super::open::read_metadata(path) {
        Ok(data) => data,
        Err(e) if super::open::is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_image(path, data, type_magic, head).map(Some)
}

/// The bytes of an image file (named `path` in errors), magic words checked. Never
/// panics, whatever the bytes (fuzzed: crates/fuzz).
pub fn parse_image(
    path: &Path,
    data: Vec<u8>,
    type_magic: u32,
    head: HeadMagic,
) -> Result<ImageFile, ImageError> {
    let mut pos = 0usize;
    if head == HeadMagic::Present {
        check_magic(path, &data, &mut pos, HEAD_MAGIC, "head")?;
    }
    check_magic(path, &data, &mut pos, type_magic, "type")?;
    Ok(ImageFile {
        path: path.to_path_buf(),
        data,
        body_start: pos,
    })
}

/// Like [`read_image`], but a missing file is an error naming it.
pub fn read_required(
    path: &Path,
    type_magic: u32,
    head: HeadMagic,
) -> Result<ImageFile, ImageError> {
    read_image(path, type_magic, head)?.ok_or_else(|| ImageError {
        io_kind: Some(io::ErrorKind::NotFound),
        ..ImageError::new(path, "image file is missing")
    })
}

fn check_magic(
    path: &Path,
    data: &[u8],
    pos: &mut usize,
    want: u32,
    which: &str,
) -> Result<(), ImageError> {
    let got = read_word(data, *pos).ok_or_else(|| {
        ImageError::at(
            path,
            *pos as u64,
            format!("file too short for its {which} magic"),
        )
    })?;
    if got != want {
        return Err(ImageError::at(
            path,
            *pos as u64,
            format!("bad {which} magic {got:#010x}, expected {want:#010x}"),
        ));
    }
    *pos += WORD;
    Ok(())
}

fn read_word(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(WORD)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

impl ImageFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in file order. Yields at most one error, then stops.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            file: self,
            pos: self.body_start,
            failed: false,
        }
    }

    /// Decodes every entry as `M`.
    pub fn decode_all<M: prost::Message + Default>(&self) -> Result<Vec<(u64, M)>, ImageError> {
        self.entries()
            .map(|entry| {
                let entry = entry?;
                Ok((entry.offset, self.decode(&entry)?))
            })
            .collect()
    }

    /// Decodes an image that must hold exactly one entry (inventory, mm).
    pub fn decode_single<M: prost::Message + Default>(&self) -> Result<M, ImageError> {
        let mut all = self.decode_all::<M>()?;
        match all.len() {
            1 => Ok(all.remove(0).1),
            0 => Err(ImageError::new(&self.path, "image holds no entry")),
            n => Err(ImageError::new(
                &self.path,
                format!("image holds {n} entries, expected exactly one"),
            )),
        }
    }

    pub fn decode<M: prost::Message + Default>(&self, entry: &Entry<'_>) -> Result<M, ImageError> {
        M::decode(entry.body).map_err(|e| {
            ImageError::at(&self.path, entry.offset, format!("bad protobuf entry: {e}"))
        })
    }
}

pub struct Entries<'a> {
    file: &'a ImageFile,
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.file.data.as_slice();
        if self.failed || self.pos >= data.len() {
            return None;
        }
        let result = next_entry(data, self.pos);
        match result {
            Ok((entry, next)) => {
                self.pos = next;
                Some(Ok(entry))
            }
            Err(message) => {
                self.failed = true;
                Some(Err(ImageError::at(
                    &self.file.path,
                    self.pos as u64,
                    message,
                )))
            }
        }
    }
}

/// Parses the entry at `pos` (which is before EOF); returns it and the next position.
fn next_entry(data: &[u8], pos: usize) -> Result<(Entry<'_>, usize), String> {
    let left = data.len().saturating_sub(pos);
    let len = read_word(data, pos)
        .ok_or_else(|| format!("truncated entry length word ({left} of {WORD} bytes)"))?;
    let body_start = pos + WORD;
    let body_left = left.saturating_sub(WORD);
    let body_end = usize::try_from(len)
        .ok()
        .and_then(|len| body_start.checked_add(len))
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            format!("entry length {len} exceeds the {body_left} bytes left in the file")
        })?;
    let body = data.get(body_start..body_end).unwrap_or_default();
    Ok((
        Entry {
            offset: pos as u64,
            body,
        },
        body_end,
    ))
}
