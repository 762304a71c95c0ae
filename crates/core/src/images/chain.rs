//! Pre-dump parent chains: `<dir>/parent` (normally a symlink made by
//! `--prev-images-dir`) points to the previous dump, whose pagemap holds the
//! pages this one marks PE_PARENT.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::framing::HeadMagic;
use super::pagemap::{pagemap_file_name, read_pagemap, Pagemap};
use super::pages::PagesFile;

pub const PARENT_LINK: &str = "parent";

/// One directory of a task's chain: its pagemap and the pages file it names.
#[derive(Debug)]
pub struct Level {
    pub pagemap: Pagemap,
    pub pages: PagesFile,
}

/// The parent images dir of `dir`, if any. ENOENT on the entry itself means
/// no parent; anything else that stops us from using it is an error, as in
/// CRIU (a dangling link must not silently drop the parent's pages).
pub fn parent_dir(dir: &Path) -> Result<Option<PathBuf>, ImageError> {
    let link = dir.join(PARENT_LINK);
    match std::fs::symlink_metadata(&link) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(&link, "cannot stat parent link", &e)),
    }
    // Following the link resolves a relative target against `dir`, as CRIU's
    // openat(images dir, "parent") does.
    let meta = std::fs::metadata(&link).map_err(|e| {
        let what = if e.kind() == io::ErrorKind::NotFound {
            "dangling parent link"
        } else {
            "cannot open parent"
        };
        ImageError::io(&link, what, &e)
    })?;
    if !meta.is_dir() {
        return Err(ImageError::new(&link, "parent is not a directory"));
    }
    Ok(Some(link))
}

/// Opens every level of `pid`'s chain starting at `top`, whose pagemap must
/// exist. The chain ends at the first parent without that pagemap.
pub fn open_levels(top: &Path, pid: u32, head: HeadMagic) -> Result<Vec<Level>, ImageError> {
    let top_pagemap = read_pagemap(top, pid, head)?.ok_or_else(|| ImageError {
        io_kind: Some(io::ErrorKind::NotFound),
        ..ImageError::new(&top.join(pagemap_file_name(pid)), "image file is missing")
    })?;
    let mut levels = vec![open_level(top, top_pagemap)?];
    let mut visited = BTreeSet::new();
    visited.insert(canonical(top)?);
    let mut dir = top.to_path_buf();
    while let Some(parent) = parent_dir(&dir)? {
        if !visited.insert(canonical(&parent)?) {
            return Err(ImageError::new(
                &parent,
                "parent chain loops back on itself",
            ));
        }
        let Some(pagemap) = read_pagemap(&parent, pid, head)? else {
            break;
        };
        levels.push(open_level(&parent, pagemap)?);
        dir = parent;
    }
    check_parent_coverage(&levels)?;
    Ok(levels)
}

fn open_level(dir: &Path, pagemap: Pagemap) -> Result<Level, ImageError> {
    let pages = PagesFile::open(dir, &pagemap)?;
    Ok(Level { pagemap, pages })
}

fn canonical(dir: &Path) -> Result<PathBuf, ImageError> {
    std::fs::canonicalize(dir).map_err(|e| ImageError::io(dir, "cannot resolve images dir", &e))
}

/// Every PE_PARENT run of a level must be covered by data-carrying or
/// PE_PARENT runs of the next level; checking each level this way proves the
/// whole chain resolves, so lookups never meet a hole later.
fn check_parent_coverage(levels: &[Level]) -> Result<(), ImageError> {
    for (idx, level) in levels.iter().enumerate() {
        let parent = levels.get(idx + 1).map(|l| &l.pagemap);
        for run in level.pagemap.runs.iter().filter(|r| r.is_parent()) {
            let missing = match parent {
                Some(parent) => first_uncovered(parent, run.vaddr, run.end()),
                None => Some(run.vaddr),
            };
            if let Some(addr) = missing {
                return Err(ImageError::at(
                    &level.pagemap.path,
                    run.entry_offset,
                    format!(
                        "PE_PARENT range {:#x}-{:#x} not found in parent chain (first missing page {addr:#x})",
                        run.vaddr,
                        run.end()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// First address of [start, end) that `parent` has no readable page for.
fn first_uncovered(parent: &Pagemap, start: u64, end: u64) -> Option<u64> {
    let mut cur = start;
    let mut idx = parent.first_ending_after(cur);
    while cur < end {
        let Some(run) = parent.runs.get(idx).filter(|r| r.vaddr <= cur) else {
            return Some(cur);
        };
        if !(run.is_present() || run.is_parent()) {
            return Some(cur);
        }
        cur = run.end();
        idx += 1;
    }
    None
}
