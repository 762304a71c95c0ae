//! Split: copy a dump without its lazy page data, as `criu dump --lazy-pages`
//! would have written it. Lazy runs (PE_LAZY|PE_PRESENT) become PE_LAZY
//! only, and the pages file keeps only the eager pages; `criu restore
//! --lazy-pages` then restores from the copy, with the lazy pages coming from
//! a page server that still has the original dump.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::images::writer::{stage_pagemap, stage_pages, RunSpec};
use crate::images::{pagemap_file_name, Dump, ImageError, TaskMemory, PARENT_LINK, PE_PRESENT};

use super::{canonical, canonical_new, relative_path, run_bytes};

/// Left out of the copy: the daemon's socket and CRIU's logs are per run,
/// not part of the dump.
const SOCKET_NAME: &str = "lazy-pages.socket";
const LOG_SUFFIX: &str = ".log";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSplit {
    pub pid: u32,
    /// Pages whose bytes were left out (they must come from a page server).
    pub lazy_pages: u64,
    /// Pages still carried by the copy's pages file.
    pub present_pages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitReport {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub tasks: Vec<TaskSplit>,
    /// Files written to `out`, symlinks included.
    pub files: u64,
    /// Bytes of the files of `dir` that were considered (logs and socket excluded).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Builds the copy in a temporary sibling of `out` and renames it into place
/// at the end, so `out` is either absent (or empty) or complete.
pub fn split(dir: &Path, out: &Path) -> Result<SplitReport, ImageError> {
    let dir_abs = canonical(dir)?;
    let out_abs = canonical_new(out)?;
    if out_abs.starts_with(&dir_abs) {
        return Err(ImageError::new(
            out,
            "output must not be inside the images dir",
        ));
    }
    check_out_free(out)?;
    let dump = Dump::open(dir)?;
    let tmp = TempDir::create(&out_abs)?;

    let mut report = SplitReport {
        dir: dir.to_path_buf(),
        out: out.to_path_buf(),
        tasks: Vec::new(),
        files: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut rewritten = BTreeSet::new();
    for task in dump.tasks.iter().filter(|t| !t.is_zombie()) {
        let Some(memory) = dump.memory(task.pid) else {
            continue;
        };
        let (task_report, names) = split_task(&dump, memory, &tmp.path, &mut report)?;
        for name in names {
            if !rewritten.insert(name.clone()) {
                return Err(ImageError::new(
                    &dir.join(&name),
                    "image is shared by two tasks' pagemaps",
                ));
            }
        }
        report.tasks.push(task_report);
    }
    copy_rest(dir, &dir_abs, &out_abs, &tmp.path, &rewritten, &mut report)?;
    tmp.commit(out)?;
    Ok(report)
}

/// `out` may not exist yet, or be an empty directory (rename replaces it).
fn check_out_free(out: &Path) -> Result<(), ImageError> {
    match fs::read_dir(out) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(ImageError::new(out, "output directory is not empty")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(out, "cannot use output directory", &e)),
    }
}

/// Writes the task's new pagemap and pages file into `tmp`; returns the
/// names of the two files it replaces.
fn split_task(
    dump: &Dump,
    memory: &TaskMemory,
    tmp: &Path,
    report: &mut SplitReport,
) -> Result<(TaskSplit, [OsString; 2]), ImageError> {
    let (pagemap, _) = memory.chain().next().ok_or_else(|| {
        ImageError::new(
            &dump.dir.join(pagemap_file_name(memory.pid)),
            "task has no pagemap",
        )
    })?;
    let mut task = TaskSplit {
        pid: memory.pid,
        lazy_pages: 0,
        present_pages: 0,
    };
    let mut runs = Vec::with_capacity(pagemap.runs.len());
    let mut data = Vec::new();
    for run in &pagemap.runs {
        let mut spec = RunSpec {
            vaddr: run.vaddr,
            pages: run.pages,
            flags: run.flags,
        };
        if run.is_lazy() {
            // Drop the bytes; PE_LAZY alone says "ask the page server".
            if run.is_present() {
                task.lazy_pages = task.lazy_pages.saturating_add(run.pages);
            }
            spec.flags = run.flags & !PE_PRESENT;
        } else if run.is_present() {
            let bytes = run_bytes(memory, pagemap, run)?;
            data.push(bytes);
            task.present_pages = task.present_pages.saturating_add(run.pages);
        }
        runs.push(spec);
    }
    let pagemap_name = pagemap_file_name(memory.pid);
    let pages_name = pagemap.pages_file_name();
    let head = dump.inventory().head;
    // Keep the input's page-count encoding: it tells which CRIU goes with it.
    let style =
        crate::images::pagemap_writer_of(dump).unwrap_or(crate::images::PagemapWriter::Either);
    let staged = stage_pagemap(
        &tmp.join(&pagemap_name),
        head,
        style,
        pagemap.pages_id,
        &runs,
    )?;
    staged.commit()?;
    let (staged, len) = stage_pages(&tmp.join(&pages_name), data)?;
    staged.commit()?;
    report.bytes_out = report
        .bytes_out
        .saturating_add(len)
        .saturating_add(file_len(&tmp.join(&pagemap_name))?);
    report.bytes_in = report
        .bytes_in
        .saturating_add(file_len(&pagemap.path)?)
        .saturating_add(len_if_exists(&dump.dir.join(&pages_name))?);
    report.files += 2;
    Ok((task, [pagemap_name.into(), pages_name.into()]))
}

/// Copies every other entry of `dir`: regular files byte for byte, symlinks
/// as symlinks (the parent link re-aimed so it still reaches the same dir).
fn copy_rest(
    dir: &Path,
    dir_abs: &Path,
    out_abs: &Path,
    tmp: &Path,
    skip: &BTreeSet<OsString>,
    report: &mut SplitReport,
) -> Result<(), ImageError> {
    let entries =
        fs::read_dir(dir).map_err(|e| ImageError::io(dir, "cannot list images dir", &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(dir, "cannot list images dir", &e))?;
        let name = entry.file_name();
        let src = entry.path();
        if skip.contains(&name) || is_per_run(&name) {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| ImageError::io(&src, "cannot stat", &e))?;
        let dest = tmp.join(&name);
        if kind.is_symlink() {
            let target =
                fs::read_link(&src).map_err(|e| ImageError::io(&src, "cannot read link", &e))?;
            let target = if name == PARENT_LINK {
                reaim_link(&src, &target, dir_abs, out_abs)?
            } else {
                target
            };
            std::os::unix::fs::symlink(&target, &dest)
                .map_err(|e| ImageError::io(&dest, "cannot create link", &e))?;
        } else if kind.is_file() {
            let len = fs::copy(&src, &dest).map_err(|e| {
                ImageError::io(&src, &format!("cannot copy to {}", dest.display()), &e)
            })?;
            report.bytes_in = report.bytes_in.saturating_add(len);
            report.bytes_out = report.bytes_out.saturating_add(len);
        } else {
            return Err(ImageError::new(
                &src,
                "not a regular file or symlink; a dump dir holds only images",
            ));
        }
        report.files += 1;
    }
    Ok(())
}

fn is_per_run(name: &OsString) -> bool {
    let name = name.to_string_lossy();
    name == SOCKET_NAME || name.ends_with(LOG_SUFFIX)
}

/// A relative link resolves against its own dir, so re-derive it from `out`
/// (for the usual sibling layout this gives back the same `../<prev>`).
fn reaim_link(
    src: &Path,
    target: &Path,
    dir_abs: &Path,
    out_abs: &Path,
) -> Result<PathBuf, ImageError> {
    if target.is_absolute() {
        return Ok(target.to_path_buf());
    }
    let resolved = canonical(&dir_abs.join(target))
        .map_err(|e| ImageError::new(src, format!("cannot resolve parent link: {}", e.message)))?;
    Ok(relative_path(out_abs, &resolved))
}

/// A pages file may be absent when its pagemap has no present entry.
fn len_if_exists(path: &Path) -> Result<u64, ImageError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ImageError::io(path, "cannot stat", &e)),
    }
}

fn file_len(path: &Path) -> Result<u64, ImageError> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| ImageError::io(path, "cannot stat", &e))
}

/// The copy under construction; removed unless committed.
struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    fn create(out_abs: &Path) -> Result<TempDir, ImageError> {
        let mut name = OsString::from(".");
        name.push(out_abs.file_name().unwrap_or_default());
        name.push(format!(".tmp-{}", std::process::id()));
        let path = out_abs.with_file_name(name);
        fs::create_dir(&path)
            .map_err(|e| ImageError::io(&path, "cannot create temporary output dir", &e))?;
        Ok(TempDir {
            path,
            committed: false,
        })
    }

    /// rename(2) of a directory onto an absent or empty one is atomic.
    fn commit(mut self, out: &Path) -> Result<(), ImageError> {
        fs::rename(&self.path, out)
            .map_err(|e| ImageError::io(out, "cannot move finished copy into place", &e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort cleanup of a half-built copy.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
