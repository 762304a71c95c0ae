//! Files named by options and read whole (TLS certificates, keys, CA and CRL files),
//! under the rule the images follow (`images/open.rs`).
//!
//! Promises: opening never blocks (O_NONBLOCK: a FIFO in place of a certificate hung
//! start-up, deaf to SIGTERM, as its reader was a native thread), anything that is not
//! a regular file (or a symlink to one: the name is the user's) is refused, and at most
//! the caller's cap is read, even from a file that grows meanwhile (/dev/zero or a 3 GB
//! sparse file asked for a 4 GiB allocation and aborted). What may go wrong: each case
//! is an `OptionFileError` whose message reads after "OPTION FILE: ".

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OptionFileError {
    /// Opening failed: the file is missing or unreadable (a default path may be skipped then).
    #[error("cannot open: {0}")]
    Open(io::Error),
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {len} bytes, more than the {max} it may have")]
    TooBig { len: u64, max: u64 },
    #[error("cannot read: {0}")]
    Read(io::Error),
}

/// What a file that is not regular is, for one line naming it.
pub fn kind_name(kind: FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The whole content of `path`, a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, OptionFileError> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(OptionFileError::Open)?;
    let meta = file.metadata().map_err(OptionFileError::Read)?;
    if !meta.file_type().is_file() {
        return Err(OptionFileError::NotRegular(kind_name(meta.file_type())));
    }
    if meta.len() > max {
        return Err(OptionFileError::TooBig {
            len: meta.len(),
            max,
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(OptionFileError::Read)?;
    if data.len() as u64 > max {
        return Err(OptionFileError::TooBig {
            len: data.len() as u64,
            max,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_big_files_are_refused_without_blocking_or_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            read_regular(&fifo, 1 << 20),
            Err(OptionFileError::NotRegular("a FIFO"))
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1 << 20),
            Err(OptionFileError::NotRegular("a character device"))
        ));
        let sparse = dir.path().join("sparse");
        File::create(&sparse).unwrap().set_len(3 << 30).unwrap();
        assert!(
            matches!(read_regular(&sparse, 1 << 20), Err(OptionFileError::TooBig { len, .. }) if len == 3 << 30)
        );
        std::fs::write(dir.path().join("ok"), b"pem").unwrap();
        assert_eq!(read_regular(&dir.path().join("ok"), 3).unwrap(), b"pem");
        assert!(matches!(
            read_regular(&dir.path().join("missing"), 3),
            Err(OptionFileError::Open(_))
        ));
    }
}
