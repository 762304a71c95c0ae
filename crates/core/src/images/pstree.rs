//! pstree.img (the processes to expect) and each process's core-<pid>.img
//! (only for its state: zombies have no memory to serve).

use std::collections::BTreeSet;
use std::path::Path;

use super::error::ImageError;
use super::framing::{read_image, read_required, HeadMagic, CORE_MAGIC, PSTREE_MAGIC};
use super::proto::{CoreEntry, PstreeEntry};

pub const PSTREE_FILE: &str = "pstree.img";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Alive,
    Zombie,
    Stopped,
}

/// One process of the dump. Pids are the ones recorded in the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// Thread ids, leader first; threads share the process's memory images.
    pub threads: Vec<u32>,
    pub state: TaskState,
}

impl Task {
    pub fn is_zombie(&self) -> bool {
        self.state == TaskState::Zombie
    }
}

pub fn core_file_name(pid: u32) -> String {
    format!("core-{pid}.img")
}

/// Reads the process tree in image order (parents before children).
pub fn read_pstree(dir: &Path, head: HeadMagic) -> Result<Vec<Task>, ImageError> {
    let path = dir.join(PSTREE_FILE);
    let entries = read_required(&path, PSTREE_MAGIC, head)?.decode_all::<PstreeEntry>()?;
    if entries.is_empty() {
        return Err(ImageError::new(&path, "process tree holds no process"));
    }
    let mut seen = BTreeSet::new();
    let mut tasks = Vec::with_capacity(entries.len());
    for (offset, entry) in entries {
        let field = |value: Option<u32>, name: &str| {
            value.ok_or_else(|| ImageError::at(&path, offset, format!("pstree entry lacks {name}")))
        };
        let pid = field(entry.pid, "pid")?;
        if pid == 0 {
            return Err(ImageError::at(&path, offset, "pstree entry has pid 0"));
        }
        if !seen.insert(pid) {
            return Err(ImageError::at(
                &path,
                offset,
                format!("pid {pid} appears twice"),
            ));
        }
        let ppid = field(entry.ppid, "ppid")?;
        let pgid = field(entry.pgid, "pgid")?;
        let sid = field(entry.sid, "sid")?;
        let state = read_task_state(dir, pid, head)?;
        tasks.push(Task {
            pid,
            ppid,
            pgid,
            sid,
            threads: entry.threads,
            state,
        });
    }
    Ok(tasks)
}

/// A missing core image means alive: only the standalone lazy page server
/// looks at task states, and it needs them only to skip zombies.
fn read_task_state(dir: &Path, pid: u32, head: HeadMagic) -> Result<TaskState, ImageError> {
    let path = dir.join(core_file_name(pid));
    let Some(file) = read_image(&path, CORE_MAGIC, head)? else {
        return Ok(TaskState::Alive);
    };
    let mut entries = file.decode_all::<CoreEntry>()?;
    if entries.len() > 1 {
        return Err(ImageError::new(
            &path,
            format!("image holds {} entries, expected one", entries.len()),
        ));
    }
    let Some((offset, core)) = entries.pop() else {
        return Ok(TaskState::Alive);
    };
    match core.tc.and_then(|tc| tc.task_state) {
        None | Some(1) => Ok(TaskState::Alive),
        Some(2) => Ok(TaskState::Zombie),
        Some(3) => Ok(TaskState::Stopped),
        Some(s) => Err(ImageError::at(
            &path,
            offset,
            format!("unknown task_state {s}"),
        )),
    }
}
