//! Opening image files safely: never block, never read without bound.
//!
//! Owns how every image file is opened. Promises: open() does not block (O_NONBLOCK:
//! a FIFO in place of an image would block open and read forever), anything that is
//! not a regular file, or a symlink to one, is refused with one line naming it, and a
//! metadata image read whole is at most `MAX_METADATA_BYTES` (a symlink to a huge file
//! cannot grow our memory without end). What may go wrong: the usual I/O errors, each
//! naming the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::error::ImageError;

/// Largest metadata image (inventory, pstree, core, mm, pagemap) read whole. CRIU's
/// biggest, a pagemap, takes ~24 bytes per run: 256 MiB is ten million runs.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Opens `path` for reading without blocking and checks it is a regular file (after
/// following symlinks). NotFound keeps its `io_kind`, so callers can treat a missing
/// optional image apart.
pub fn open_regular(path: &Path, what: &str) -> Result<File, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ImageError::io(path, &format!("cannot open {what}"), &e))?;
    let kind = file
        .metadata()
        .map_err(|e| ImageError::io(path, &format!("cannot stat {what}"), &e))?
        .file_type();
    if !kind.is_file() {
        let is = crate::option_file::kind_name(kind);
        return Err(ImageError::new(
            path,
            format!("{what} is {is}, not a regular file"),
        ));
    }
    Ok(file)
}

/// Reads a whole metadata image, refusing one larger than `MAX_METADATA_BYTES`.
pub fn read_metadata(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = open_regular(path, "image")?;
    let len = file
        .metadata()
        .map_err(|e| ImageError::io(path, "cannot stat image", &e))?
        .len();
    if len > MAX_METADATA_BYTES {
        return Err(too_big(path, len));
    }
    let mut data = Vec::with_capacity(len as usize);
    // Bounded even if the file grows while we read it.
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io(path, "cannot read image", &e))?;
    if data.len() as u64 > MAX_METADATA_BYTES {
        return Err(too_big(path, data.len() as u64));
    }
    Ok(data)
}

fn too_big(path: &Path, len: u64) -> ImageError {
    ImageError::new(
        path,
        format!(
            "image is {len} bytes, more than the {MAX_METADATA_BYTES} a metadata image may have"
        ),
    )
}

/// True for the error `open_regular` gives a missing file.
pub fn is_missing(e: &ImageError) -> bool {
    e.io_kind == Some(io::ErrorKind::NotFound)
}
