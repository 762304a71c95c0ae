//! Offline transforms of CRIU image directories, producing the same image
//! shapes CRIU itself writes:
//! - [`rebase`]: a full dump becomes an incremental one on top of an earlier
//!   dump (what pre-dump + `dump --track-mem --prev-images-dir` would write;
//!   needed where the kernel lacks soft-dirty tracking, and handy to dedupe
//!   successive checkpoints);
//! - [`split`]: a copy of a dump without its lazy page data (what
//!   `dump --lazy-pages` writes), for serving those pages from elsewhere.

mod rebase;
mod split;

use std::path::{Component, Path, PathBuf};

use crate::images::{ImageError, PageRun, Pagemap, TaskMemory};

pub use rebase::{rebase, RebaseReport, TaskRebase};
pub use split::{split, SplitReport, TaskSplit};

/// Absolute, symlink-free form of an existing path, with the error naming it.
fn canonical(path: &Path) -> Result<PathBuf, ImageError> {
    std::fs::canonicalize(path).map_err(|e| ImageError::io(path, "cannot resolve directory", &e))
}

/// Canonical form of a path whose last component may not exist yet.
fn canonical_new(path: &Path) -> Result<PathBuf, ImageError> {
    let name = path
        .file_name()
        .ok_or_else(|| ImageError::new(path, "path has no final component"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(canonical(parent)?.join(name))
}

/// The relative path that leads from directory `from` to `to`; both must be
/// absolute and free of `.`/`..` (canonical). A relative link keeps working
/// when the whole tree of dumps is moved or copied elsewhere, which is why
/// CRIU users pass `--prev-images-dir ../<prev>`.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from
        .iter()
        .zip(to.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for comp in to.iter().skip(common) {
        out.push(comp.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use std::path::Path;

    #[test]
    fn relative_paths() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(rel("/d/B", "/d/A"), Path::new("../A"));
        assert_eq!(rel("/d/x/B", "/d/A"), Path::new("../../A"));
        assert_eq!(rel("/d", "/d/A/p"), Path::new("A/p"));
        assert_eq!(rel("/d", "/d"), Path::new("."));
        assert_eq!(rel("/", "/A"), Path::new("A"));
    }
}

/// The bytes of a PE_PRESENT run of this dir's pagemap, or an error naming the entry.
fn run_bytes<'a>(
    memory: &'a TaskMemory,
    pagemap: &Pagemap,
    run: &PageRun,
) -> Result<&'a [u8], ImageError> {
    memory.pages_slice(run.vaddr, run.pages).ok_or_else(|| {
        ImageError::at(
            &pagemap.path,
            run.entry_offset,
            format!("no bytes for entry {:#x}-{:#x}", run.vaddr, run.end()),
        )
    })
}
