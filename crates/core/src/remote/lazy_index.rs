//! Where the server finds the bytes of a GET: per live task, the lazy runs that
//! carry data (flags LAZY|PRESENT, i.e. a normal dump) and the open pages file
//! they sit in, watched for changes (`images/watch.rs`: the session checks it around
//! every reply). Built once; lookups are binary searches with no I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::images::{Dump, Watched, PAGE_SIZE};

/// One servable run: `pages` pages from `vaddr`, at `offset` in the pages file.
#[derive(Debug, Clone, Copy)]
struct LazyRun {
    vaddr: u64,
    pages: u64,
    offset: u64,
}

impl LazyRun {
    fn end(&self) -> u64 {
        self.vaddr
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }
}

#[derive(Debug)]
struct TaskRuns {
    file: Arc<Watched>,
    path: PathBuf,
    /// Sorted, disjoint (the pagemap reader validated that).
    runs: Vec<LazyRun>,
}

#[derive(Debug)]
pub struct LazyIndex {
    tasks: HashMap<u32, TaskRuns>,
}

/// The answer to one valid GET: send `pages` pages from `offset` of `file`.
#[derive(Debug)]
pub struct Span<'a> {
    pub file: &'a Watched,
    pub path: &'a Path,
    pub offset: u64,
    pub pages: u64,
}

/// Why a GET cannot be served. CRIU's client treats any of these as fatal, and
/// so does its server (it closes the session), so we do the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("request for 0 pages at {vaddr:#x} of task {pid}")]
    NoPages { pid: u64, vaddr: u64 },
    #[error("task {pid} is not a live task of the dump")]
    UnknownTask { pid: u64 },
    #[error("task {pid}: {vaddr:#x} is not page aligned")]
    Unaligned { pid: u32, vaddr: u64 },
    #[error("task {pid}: {vaddr:#x} is not in a lazy range with data in the images")]
    NotLazy { pid: u32, vaddr: u64 },
}

impl LazyIndex {
    /// Opens the pages file of every live task that has lazy data. Lazy runs
    /// without data (`criu dump --lazy-pages` images) are left out: their bytes
    /// are not here, and serving the file offset would hand out wrong memory.
    pub fn build(dump: &Dump) -> std::io::Result<LazyIndex> {
        let mut files: HashMap<PathBuf, Arc<Watched>> = HashMap::new();
        let mut tasks = HashMap::new();
        for task in &dump.tasks {
            let Some(memory) = dump.memory(task.pid) else {
                continue;
            };
            let Some((pagemap, path)) = memory.chain().next() else {
                continue;
            };
            let runs: Vec<LazyRun> = pagemap
                .runs
                .iter()
                .filter(|r| r.is_lazy() && !r.is_parent())
                .filter_map(|r| {
                    Some(LazyRun {
                        vaddr: r.vaddr,
                        pages: r.pages,
                        offset: r.data_offset?,
                    })
                })
                .collect();
            if runs.is_empty() {
                continue;
            }
            let file = match files.get(path) {
                Some(file) => file.clone(),
                None => {
                    let as_io = |e: crate::images::ImageError| {
                        std::io::Error::new(
                            e.io_kind.unwrap_or(std::io::ErrorKind::InvalidData),
                            e.to_string(),
                        )
                    };
                    let file = memory.watch_top().map_err(as_io)?.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{}: no pages file", path.display()),
                        )
                    })?;
                    let file = Arc::new(file);
                    files.insert(path.to_path_buf(), file.clone());
                    file
                }
            };
            tasks.insert(
                task.pid,
                TaskRuns {
                    file,
                    path: path.to_path_buf(),
                    runs,
                },
            );
        }
        Ok(LazyIndex { tasks })
    }

    /// Pids with lazy data, sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.tasks.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Validates a GET for `nr_pages` at `vaddr` of `dst_id` and clamps the
    /// count to the end of the run holding `vaddr` and to `max_pages`, as CRIU
    /// clamps to the end of a page-pipe segment.
    pub fn locate(
        &self,
        dst_id: u64,
        vaddr: u64,
        nr_pages: u64,
        max_pages: u64,
    ) -> Result<Span<'_>, Invalid> {
        if nr_pages == 0 {
            return Err(Invalid::NoPages { pid: dst_id, vaddr });
        }
        let task = u32::try_from(dst_id)
            .ok()
            .and_then(|pid| Some((pid, self.tasks.get(&pid)?)));
        let Some((pid, task)) = task else {
            return Err(Invalid::UnknownTask { pid: dst_id });
        };
        if vaddr % PAGE_SIZE != 0 {
            return Err(Invalid::Unaligned { pid, vaddr });
        }
        let idx = task.runs.partition_point(|r| r.end() <= vaddr);
        let run = task
            .runs
            .get(idx)
            .filter(|r| r.vaddr <= vaddr)
            .ok_or(Invalid::NotLazy { pid, vaddr })?;
        let skip = (vaddr - run.vaddr) / PAGE_SIZE;
        let pages = nr_pages.min(run.pages - skip).min(max_pages.max(1));
        Ok(Span {
            file: &task.file,
            path: &task.path,
            offset: run.offset + skip * PAGE_SIZE,
            pages,
        })
    }
}
