//! Rebase: turn a full dump into an incremental dump on top of an earlier
//! dump of the same process tree. Every present page whose bytes equal the
//! parent chain's page at the same address becomes a PE_PARENT hole, as
//! `criu dump --track-mem --prev-images-dir` would have written it; the
//! pages file keeps only the other pages. CRIU's pre-dump needs soft-dirty
//! tracking, which some kernels lack; comparing bytes needs nothing.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::images::writer::{stage_pagemap, stage_pages, RunSpec, Staged};
use crate::images::{
    pagemap_file_name, parent_dir, Dump, ImageError, Pagemap, TaskMemory, PAGE_SIZE, PARENT_LINK,
    PE_PARENT,
};

use super::{canonical, relative_path, run_bytes};

/// What happened to one task's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRebase {
    pub pid: u32,
    /// False if the parent dump has no memory images for this pid: nothing
    /// could be moved (e.g. the process was born between the two dumps).
    pub in_parent_dump: bool,
    /// Pages with bytes in this dir's pages file, before and after.
    pub present_before: u64,
    pub present_after: u64,
    /// Pages now found through the parent link.
    pub moved_to_parent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebaseReport {
    pub dir: PathBuf,
    pub parent: PathBuf,
    /// Target written into `<dir>/parent` (relative to `dir`).
    pub link: PathBuf,
    pub tasks: Vec<TaskRebase>,
    /// Bytes dropped from the pages files of `dir`.
    pub bytes_saved: u64,
}

/// The new pagemap and pages data of one task, borrowing the old pages.
struct Plan<'a> {
    pagemap: &'a Pagemap,
    runs: Vec<RunSpec>,
    data: Vec<&'a [u8]>,
    report: TaskRebase,
}

/// Rewrites `dir` in place. Nothing in `dir` changes until every new file
/// has been written; see [`commit`] for the order of the final renames.
pub fn rebase(dir: &Path, parent: &Path) -> Result<RebaseReport, ImageError> {
    let link_path = dir.join(PARENT_LINK);
    match std::fs::symlink_metadata(&link_path) {
        Ok(_) => {
            return Err(ImageError::new(
                &link_path,
                "dump already has a parent; rebase needs a full dump",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io(&link_path, "cannot stat parent link", &e)),
    }
    let dir_abs = canonical(dir)?;
    let parent_abs = canonical(parent)?;
    check_no_loop(&dir_abs, &parent_abs)?;

    let dump = Dump::open(dir)?;
    let base = Dump::open(parent)?;
    let head = dump.inventory().head;
    // Keep the input's page-count encoding: it tells which CRIU goes with it.
    let style =
        crate::images::pagemap_writer_of(&dump).unwrap_or(crate::images::PagemapWriter::Either);

    let mut plans = Vec::new();
    let mut pages_ids = BTreeSet::new();
    for task in dump.tasks.iter().filter(|t| !t.is_zombie()) {
        let Some(memory) = dump.memory(task.pid) else {
            continue;
        };
        let plan = plan_task(memory, base.memory(task.pid))?;
        // Two pagemaps sharing one pages file cannot be rewritten one by one.
        if !pages_ids.insert(plan.pagemap.pages_id) {
            return Err(ImageError::new(
                &plan.pagemap.path,
                format!(
                    "pages file {} is shared with another task's pagemap",
                    plan.pagemap.pages_file_name()
                ),
            ));
        }
        plans.push(plan);
    }

    let mut staged = Vec::new();
    for plan in plans.iter().filter(|p| p.report.moved_to_parent > 0) {
        let pagemap = stage_pagemap(
            &plan.pagemap.path,
            head,
            style,
            plan.pagemap.pages_id,
            &plan.runs,
        )?;
        let pages_path = dir.join(plan.pagemap.pages_file_name());
        let (pages, _) = stage_pages(&pages_path, plan.data.iter().copied())?;
        staged.push((pagemap, pages));
    }
    let link = relative_path(&dir_abs, &parent_abs);
    commit(staged, &link_path, &link)?;

    let tasks: Vec<TaskRebase> = plans.into_iter().map(|p| p.report).collect();
    let bytes_saved = tasks
        .iter()
        .map(|t| t.moved_to_parent.saturating_mul(PAGE_SIZE))
        .fold(0u64, u64::saturating_add);
    Ok(RebaseReport {
        dir: dir.to_path_buf(),
        parent: parent.to_path_buf(),
        link,
        tasks,
        bytes_saved,
    })
}

/// Renames pagemaps first, then pages files, then creates the link. Until
/// the link exists a reader (ours or CRIU) fails loudly on the PE_PARENT
/// entries of a new pagemap, rather than mixing a new pagemap with an old
/// pages file's offsets and restoring wrong bytes silently.
fn commit(staged: Vec<(Staged, Staged)>, link_path: &Path, link: &Path) -> Result<(), ImageError> {
    let (pagemaps, pages): (Vec<Staged>, Vec<Staged>) = staged.into_iter().unzip();
    for file in pagemaps.into_iter().chain(pages) {
        file.commit()?;
    }
    std::os::unix::fs::symlink(link, link_path)
        .map_err(|e| ImageError::io(link_path, "cannot create parent link", &e))
}

/// The parent's own chain must not lead back to `dir`, or the link we are
/// about to create would close a loop.
fn check_no_loop(dir: &Path, parent: &Path) -> Result<(), ImageError> {
    let mut cur = parent.to_path_buf();
    let mut seen = BTreeSet::new();
    loop {
        if cur == dir {
            return Err(ImageError::new(
                parent,
                format!("parent is, or descends from, {} itself", dir.display()),
            ));
        }
        if !seen.insert(cur.clone()) {
            return Err(ImageError::new(&cur, "parent chain loops back on itself"));
        }
        match parent_dir(&cur)? {
            Some(next) => cur = canonical(&next)?,
            None => return Ok(()),
        }
    }
}

/// Splits each present run at the boundaries between pages equal to the
/// parent's and pages that differ; equal stretches become PE_PARENT.
fn plan_task<'a>(
    memory: &'a TaskMemory,
    base: Option<&'a TaskMemory>,
) -> Result<Plan<'a>, ImageError> {
    let (pagemap, _) = memory.chain().next().ok_or_else(|| {
        ImageError::new(
            Path::new(&pagemap_file_name(memory.pid)),
            "task has no pagemap",
        )
    })?;
    let mut plan = Plan {
        pagemap,
        runs: Vec::with_capacity(pagemap.runs.len()),
        data: Vec::new(),
        report: TaskRebase {
            pid: memory.pid,
            in_parent_dump: base.is_some(),
            present_before: 0,
            present_after: 0,
            moved_to_parent: 0,
        },
    };
    for run in &pagemap.runs {
        if run.is_parent() {
            return Err(ImageError::at(
                &pagemap.path,
                run.entry_offset,
                "entry is already PE_PARENT; rebase needs a full dump",
            ));
        }
        let spec = RunSpec {
            vaddr: run.vaddr,
            pages: run.pages,
            flags: run.flags,
        };
        if !run.is_present() {
            // Lazy-only: no bytes here to compare, keep it as it is.
            plan.runs.push(spec);
            continue;
        }
        plan.report.present_before = plan.report.present_before.saturating_add(run.pages);
        let bytes = run_bytes(memory, pagemap, run)?;
        match base {
            Some(base) => plan.split_run(spec, bytes, base),
            None => plan.keep(spec, bytes),
        }
    }
    Ok(plan)
}

impl<'a> Plan<'a> {
    fn split_run(&mut self, run: RunSpec, bytes: &'a [u8], base: &TaskMemory) {
        let ps = PAGE_SIZE as usize;
        let mut stretch_start = 0usize;
        let mut stretch_same = None;
        for (idx, page) in bytes.chunks_exact(ps).enumerate() {
            let addr = run.vaddr + idx as u64 * PAGE_SIZE;
            let same = base.page(addr) == Some(page);
            match stretch_same {
                Some(prev) if prev == same => {}
                Some(prev) => {
                    self.push_stretch(run, bytes, stretch_start, idx, prev);
                    stretch_start = idx;
                    stretch_same = Some(same);
                }
                None => stretch_same = Some(same),
            }
        }
        if let Some(same) = stretch_same {
            let pages = bytes.len() / ps;
            self.push_stretch(run, bytes, stretch_start, pages, same);
        }
    }

    /// Pages [from, to) of `run`, all equal to the parent's or all different.
    fn push_stretch(&mut self, run: RunSpec, bytes: &'a [u8], from: usize, to: usize, same: bool) {
        let ps = PAGE_SIZE as usize;
        let spec = RunSpec {
            vaddr: run.vaddr + from as u64 * PAGE_SIZE,
            pages: (to - from) as u64,
            flags: run.flags,
        };
        if !same {
            self.keep(spec, bytes.get(from * ps..to * ps).unwrap_or_default());
            return;
        }
        self.report.moved_to_parent = self.report.moved_to_parent.saturating_add(spec.pages);
        // Holes are PE_PARENT alone, never with PE_LAZY: the lazy daemon
        // serves only this dir's pages, and restore fills holes eagerly.
        match self.runs.last_mut() {
            Some(prev) if prev.flags == PE_PARENT && prev.end() == spec.vaddr => {
                prev.pages += spec.pages;
            }
            _ => self.runs.push(RunSpec {
                flags: PE_PARENT,
                ..spec
            }),
        }
    }

    fn keep(&mut self, spec: RunSpec, bytes: &'a [u8]) {
        self.report.present_after = self.report.present_after.saturating_add(spec.pages);
        self.runs.push(spec);
        self.data.push(bytes);
    }
}
