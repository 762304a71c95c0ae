//! Reader for CRIU image directories: just what a lazy-pages daemon needs
//! (process tree, VMAs, pagemaps with their parent chains, page data).

mod chain;
mod dump;
mod error;
pub mod framing;
mod identity;
mod inventory;
mod memory;
mod mm;
pub mod open;
mod pagemap;
mod pages;
pub mod proto;
mod pstree;
mod style;
mod watch;
pub mod writer;

/// CRIU uses the runtime page size; x86_64 is the only target.
pub const PAGE_SIZE: u64 = 4096;

pub use chain::{parent_dir, PARENT_LINK};
pub use dump::Dump;
pub use error::ImageError;
pub use framing::HeadMagic;
pub use identity::dump_identity;
pub use inventory::{Inventory, INVENTORY_FILE};
pub use memory::{LazyExtent, TaskMemory, TaskSummary};
pub use mm::{mm_file_name, Vma};
pub use pagemap::{
    pagemap_file_name, pages_file_name, parse_pagemap, PageRun, Pagemap, PE_LAZY, PE_PARENT,
    PE_PRESENT,
};
pub use pstree::{core_file_name, Task, TaskState, PSTREE_FILE};
pub use style::{classify, pagemap_writer_of, PagemapWriter};
pub use watch::Watched;

// The fault engine shares Arc<Dump> across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dump>();
    assert_send_sync::<TaskMemory>();
};
