//! `rebase` and `split` commands: rewrite dumps on the libuv pool, since both
//! read and write whole pages files.

use std::path::PathBuf;

use lazy_pages_core::images::PAGE_SIZE;
use lazy_pages_core::transform;
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Error, Status, Task};
use napi_derive::napi;

// Counts are f64: exact for integers up to 2^53, far beyond any dump.

#[napi(object)]
pub struct RebaseTaskReport {
    pub pid: u32,
    /// False if the parent dump has no memory images for this pid.
    pub in_parent_dump: bool,
    pub present_before: f64,
    pub present_after: f64,
    pub moved_to_parent: f64,
}

#[napi(object)]
pub struct RebaseReport {
    pub dir: String,
    pub parent: String,
    /// Target of the `parent` symlink written into `dir`.
    pub link: String,
    pub tasks: Vec<RebaseTaskReport>,
    pub bytes_saved: f64,
}

#[napi(object)]
pub struct SplitTaskReport {
    pub pid: u32,
    /// Pages whose bytes were left out (to be served by a page server).
    pub lazy_pages: f64,
    pub present_pages: f64,
    pub lazy_bytes: f64,
}

#[napi(object)]
pub struct SplitReport {
    pub dir: String,
    pub out: String,
    pub tasks: Vec<SplitTaskReport>,
    pub files: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, e.to_string())
}

pub struct Rebase {
    dir: PathBuf,
    parent: PathBuf,
}

impl Task for Rebase {
    type Output = RebaseReport;
    type JsValue = RebaseReport;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let r = transform::rebase(&self.dir, &self.parent).map_err(failed)?;
        Ok(RebaseReport {
            dir: r.dir.display().to_string(),
            parent: r.parent.display().to_string(),
            link: r.link.display().to_string(),
            tasks: r
                .tasks
                .into_iter()
                .map(|t| RebaseTaskReport {
                    pid: t.pid,
                    in_parent_dump: t.in_parent_dump,
                    present_before: t.present_before as f64,
                    present_after: t.present_after as f64,
                    moved_to_parent: t.moved_to_parent as f64,
                })
                .collect(),
            bytes_saved: r.bytes_saved as f64,
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

/// Turn the full dump `dir` into an incremental dump on top of `parentDir`:
/// pages identical to the parent's become PE_PARENT, and `dir/parent` links to it.
#[napi(ts_return_type = "Promise<RebaseReport>")]
pub fn rebase_dump(dir: String, parent_dir: String) -> AsyncTask<Rebase> {
    AsyncTask::new(Rebase {
        dir: dir.into(),
        parent: parent_dir.into(),
    })
}

pub struct Split {
    dir: PathBuf,
    out: PathBuf,
}

impl Task for Split {
    type Output = SplitReport;
    type JsValue = SplitReport;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let r = transform::split(&self.dir, &self.out).map_err(failed)?;
        Ok(SplitReport {
            dir: r.dir.display().to_string(),
            out: r.out.display().to_string(),
            tasks: r
                .tasks
                .into_iter()
                .map(|t| SplitTaskReport {
                    pid: t.pid,
                    lazy_pages: t.lazy_pages as f64,
                    present_pages: t.present_pages as f64,
                    lazy_bytes: t.lazy_pages.saturating_mul(PAGE_SIZE) as f64,
                })
                .collect(),
            files: r.files as f64,
            bytes_in: r.bytes_in as f64,
            bytes_out: r.bytes_out as f64,
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

/// Copy the dump `dir` to `out` without its lazy page data, as
/// `criu dump --lazy-pages` would have written it.
#[napi(ts_return_type = "Promise<SplitReport>")]
pub fn split_dump(dir: String, out: String) -> AsyncTask<Split> {
    AsyncTask::new(Split {
        dir: dir.into(),
        out: out.into(),
    })
}
