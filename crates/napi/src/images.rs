//! `images` command and test helpers: read a dump without blocking the event loop.

use std::path::PathBuf;

use lazy_pages_core::images::{Dump, TaskSummary};
use napi::bindgen_prelude::{AsyncTask, Buffer};
use napi::{Env, Error, Status, Task};
use napi_derive::napi;

/// Per-task totals of a dump, as `lazy-pages images` prints them.
#[napi(object)]
pub struct ImageTaskSummary {
    pub pid: u32,
    pub vmas: f64,
    pub pages: f64,
    pub lazy: f64,
    pub in_parent: f64,
    pub present: f64,
    pub bytes: f64,
}

impl From<TaskSummary> for ImageTaskSummary {
    fn from(s: TaskSummary) -> Self {
        // f64 holds integers exactly up to 2^53 bytes (8 PiB): enough for any dump.
        ImageTaskSummary {
            pid: s.pid,
            vmas: s.vmas as f64,
            pages: s.pages as f64,
            lazy: s.lazy as f64,
            in_parent: s.in_parent as f64,
            present: s.present as f64,
            bytes: s.bytes as f64,
        }
    }
}

#[napi(object)]
pub struct ImageTask {
    pub pid: u32,
    pub ppid: u32,
    pub threads: Vec<u32>,
    pub state: String,
}

#[napi(object)]
pub struct ImageSummary {
    pub dir: String,
    pub tasks: Vec<ImageTask>,
    pub memory: Vec<ImageTaskSummary>,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, e.to_string())
}

pub struct ReadImages {
    dir: PathBuf,
}

impl Task for ReadImages {
    type Output = ImageSummary;
    type JsValue = ImageSummary;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let dump = Dump::open(&self.dir).map_err(invalid)?;
        let tasks = dump
            .tasks
            .iter()
            .map(|t| ImageTask {
                pid: t.pid,
                ppid: t.ppid,
                threads: t.threads.clone(),
                state: format!("{:?}", t.state).to_lowercase(),
            })
            .collect();
        Ok(ImageSummary {
            dir: self.dir.display().to_string(),
            tasks,
            memory: dump.summary().into_iter().map(Into::into).collect(),
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

/// Read and validate every image of a dump (pstree, mm, pagemaps, parent chain).
#[napi(ts_return_type = "Promise<ImageSummary>")]
pub fn read_images(dir: String) -> AsyncTask<ReadImages> {
    AsyncTask::new(ReadImages { dir: dir.into() })
}

pub struct ReadPages {
    dir: PathBuf,
    pid: u32,
    vaddr: u64,
    pages: u32,
}

impl Task for ReadPages {
    type Output = Vec<u8>;
    type JsValue = Buffer;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let dump = Dump::open(&self.dir).map_err(invalid)?;
        let memory = dump.memory(self.pid).ok_or_else(|| {
            invalid(format!(
                "{}: no memory images for pid {}",
                self.dir.display(),
                self.pid
            ))
        })?;
        let mut buf = vec![0u8; self.pages as usize * 4096];
        memory.read_pages(self.vaddr, &mut buf).map_err(invalid)?;
        Ok(buf)
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output.into())
    }
}

/// The dumped bytes of `pages` pages at `vaddr` (a dump-time address, as a
/// bigint) of task `pid`, following the parent chain. Rejects pages the dump lacks.
#[napi(ts_return_type = "Promise<Buffer>")]
pub fn read_pages(
    dir: String,
    pid: u32,
    vaddr: napi::bindgen_prelude::BigInt,
    pages: u32,
) -> napi::Result<AsyncTask<ReadPages>> {
    let (signed, vaddr, lossless) = vaddr.get_u64();
    if signed || !lossless {
        return Err(invalid("vaddr must be a non-negative 64-bit bigint"));
    }
    Ok(AsyncTask::new(ReadPages {
        dir: dir.into(),
        pid,
        vaddr,
        pages,
    }))
}
