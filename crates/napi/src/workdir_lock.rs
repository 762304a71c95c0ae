//! `lockWorkDir`: one daemon per work dir (core `workdir_lock`). The lock is kept in
//! this process until it exits, so JS cannot drop it by losing a reference.

use std::path::PathBuf;
use std::sync::Mutex;

use lazy_pages_core::workdir_lock::{lock_work_dir, WorkDirLock};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Error, Status, Task};
use napi_derive::napi;

/// Every lock this process took; released only by its exit.
static HELD: Mutex<Vec<WorkDirLock>> = Mutex::new(Vec::new());

pub struct LockWorkDir {
    dir: PathBuf,
}

impl Task for LockWorkDir {
    type Output = Option<String>;
    type JsValue = Option<String>;

    fn compute(&mut self) -> napi::Result<Option<String>> {
        let lock = lock_work_dir(&self.dir)
            .map_err(|e| Error::new(Status::GenericFailure, e.to_string()))?;
        let interrupted = lock.interrupted();
        HELD.lock()
            .map_err(|_| Error::new(Status::GenericFailure, "work dir lock list poisoned"))?
            .push(lock);
        Ok(interrupted)
    }

    fn resolve(&mut self, _env: Env, output: Option<String>) -> napi::Result<Option<String>> {
        Ok(output)
    }
}

/// Takes `<dir>/lazy-pages.lock` for the rest of this process's life, or rejects with
/// one line naming the pid that holds it. Never waits. Resolves to a line when the
/// previous holder died mid-restore (after criu restore connected), else null.
#[napi(ts_return_type = "Promise<string | null>")]
pub fn lock_work_dir_for_life(dir: String) -> AsyncTask<LockWorkDir> {
    AsyncTask::new(LockWorkDir { dir: dir.into() })
}
