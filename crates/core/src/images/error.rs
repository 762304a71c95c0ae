//! The one error type of the image reader. Every error names the file it is
//! about, so an operator can go straight to the offending image.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Displays as `"<path>: offset <N>: <message>"` or `"<path>: <message>"`, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{}", .path.display(), OffsetPrefix(*.offset), .message)]
pub struct ImageError {
    /// The file (or directory entry, e.g. `<dir>/parent`) the error is about.
    pub path: PathBuf,
    /// Byte offset of the offending entry (its length word) in `path`, if any.
    pub offset: Option<u64>,
    pub message: String,
    /// Set when the error came from a failed system call, so callers can tell
    /// e.g. "not found" apart from "malformed".
    pub io_kind: Option<io::ErrorKind>,
}

impl ImageError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        ImageError {
            path: path.to_path_buf(),
            offset: None,
            message: one_line(message.into()),
            io_kind: None,
        }
    }

    pub fn at(path: &Path, offset: u64, message: impl Into<String>) -> Self {
        ImageError {
            offset: Some(offset),
            ..ImageError::new(path, message)
        }
    }

    pub fn io(path: &Path, what: &str, err: &io::Error) -> Self {
        ImageError {
            io_kind: Some(err.kind()),
            ..ImageError::new(path, format!("{what}: {err}"))
        }
    }
}

struct OffsetPrefix(Option<u64>);

impl fmt::Display for OffsetPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(off) => write!(f, "offset {off}: "),
            None => Ok(()),
        }
    }
}

/// Messages may embed foreign text (OS errors, decoder errors); keep the
/// promised one-line format whatever they contain.
fn one_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.replace(['\n', '\r'], " ")
    } else {
        s
    }
}
