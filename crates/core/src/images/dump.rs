//! The entry point: a whole images directory, read and validated up front so
//! nothing on the fault path can hit a malformed image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::chain::open_levels;
use super::error::ImageError;
use super::inventory::{read_inventory, Inventory};
use super::memory::{TaskMemory, TaskSummary};
use super::mm::read_vmas;
use super::pstree::{read_pstree, Task};

#[derive(Debug)]
pub struct Dump {
    pub dir: PathBuf,
    /// Every process of the pstree, zombies included, in image order.
    pub tasks: Vec<Task>,
    inventory: Inventory,
    /// Non-zombie tasks only.
    memory: BTreeMap<u32, TaskMemory>,
}

impl Dump {
    /// Reads and validates everything: inventory, pstree, core, mm, the
    /// pagemap chain and pages files (mapped) of every non-zombie task.
    pub fn open(dir: &Path) -> Result<Dump, ImageError> {
        let inventory = read_inventory(dir)?;
        let tasks = read_pstree(dir, inventory.head)?;
        let mut memory = BTreeMap::new();
        for task in tasks.iter().filter(|t| !t.is_zombie()) {
            let vmas = read_vmas(dir, task.pid, inventory.head)?;
            let levels = open_levels(dir, task.pid, inventory.head)?;
            memory.insert(task.pid, TaskMemory::new(task.pid, vmas, levels));
        }
        Ok(Dump {
            dir: dir.to_path_buf(),
            tasks,
            inventory,
            memory,
        })
    }

    /// None for zombies and unknown pids.
    pub fn memory(&self, pid: u32) -> Option<&TaskMemory> {
        self.memory.get(&pid)
    }

    /// One summary per live (non-zombie) task, in pstree order.
    pub fn summary(&self) -> Vec<TaskSummary> {
        self.tasks
            .iter()
            .filter_map(|t| self.memory.get(&t.pid))
            .map(TaskMemory::summary)
            .collect()
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn task(&self, pid: u32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.pid == pid)
    }
}
