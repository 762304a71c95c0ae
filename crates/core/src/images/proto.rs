//! Protobuf messages of the CRIU images we read, as prost derives (no protoc).
//! Only the fields the daemon uses are declared; prost skips the rest.
//!
//! proto2 `required` fields are declared `optional` here: prost would silently
//! default a missing required field, and we want our own error naming the file
//! instead. Repeated scalars are declared unpacked because that is what CRIU
//! (protobuf-c) writes; prost's decoder accepts both encodings either way.

/// `images/inventory.proto` `inventory_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InventoryEntry {
    #[prost(uint32, optional, tag = "1")]
    pub img_version: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub fdinfo_per_id: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub ns_per_id: Option<bool>,
    #[prost(uint32, optional, tag = "5")]
    pub root_cg_set: Option<u32>,
    #[prost(int32, optional, tag = "6")]
    pub lsmtype: Option<i32>,
    #[prost(uint64, optional, tag = "8")]
    pub dump_uptime: Option<u64>,
    #[prost(uint32, optional, tag = "9")]
    pub pre_dump_mode: Option<u32>,
    #[prost(bool, optional, tag = "10")]
    pub tcp_close: Option<bool>,
    #[prost(uint32, optional, tag = "11")]
    pub network_lock_method: Option<u32>,
    #[prost(string, optional, tag = "13")]
    pub dump_criu_run_id: Option<String>,
    #[prost(bool, optional, tag = "14")]
    pub allow_uprobes: Option<bool>,
}

/// `images/pstree.proto` `pstree_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PstreeEntry {
    #[prost(uint32, optional, tag = "1")]
    pub pid: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub ppid: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub pgid: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub sid: Option<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    pub threads: Vec<u32>,
}

/// `images/mm.proto` `mm_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MmEntry {
    #[prost(uint64, optional, tag = "1")]
    pub mm_start_code: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub mm_end_code: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub mm_start_data: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub mm_end_data: Option<u64>,
    #[prost(uint64, optional, tag = "5")]
    pub mm_start_stack: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub mm_start_brk: Option<u64>,
    #[prost(uint64, optional, tag = "7")]
    pub mm_brk: Option<u64>,
    #[prost(uint64, optional, tag = "8")]
    pub mm_arg_start: Option<u64>,
    #[prost(uint64, optional, tag = "9")]
    pub mm_arg_end: Option<u64>,
    #[prost(uint64, optional, tag = "10")]
    pub mm_env_start: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    pub mm_env_end: Option<u64>,
    #[prost(uint32, optional, tag = "12")]
    pub exe_file_id: Option<u32>,
    #[prost(uint64, repeated, packed = "false", tag = "13")]
    pub mm_saved_auxv: Vec<u64>,
    #[prost(message, repeated, tag = "14")]
    pub vmas: Vec<VmaEntry>,
    #[prost(int32, optional, tag = "15")]
    pub dumpable: Option<i32>,
    #[prost(bool, optional, tag = "17")]
    pub thp_disabled: Option<bool>,
}

/// `images/vma.proto` `vma_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmaEntry {
    #[prost(uint64, optional, tag = "1")]
    pub start: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub end: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub pgoff: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub shmid: Option<u64>,
    #[prost(uint32, optional, tag = "5")]
    pub prot: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub flags: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub status: Option<u32>,
    #[prost(sint64, optional, tag = "8")]
    pub fd: Option<i64>,
    #[prost(uint64, optional, tag = "9")]
    pub madv: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub fdflags: Option<u32>,
}

/// `images/pagemap.proto` `pagemap_head`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapHead {
    #[prost(uint32, optional, tag = "1")]
    pub pages_id: Option<u32>,
}

/// `images/pagemap.proto` `pagemap_entry`. Field 2 is the v4.1.1 page count,
/// which v4.2 writers set to 0 in favour of the 64-bit field 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapEntry {
    #[prost(uint64, optional, tag = "1")]
    pub vaddr: Option<u64>,
    #[prost(uint32, optional, tag = "2")]
    pub compat_nr_pages: Option<u32>,
    #[prost(bool, optional, tag = "3")]
    pub in_parent: Option<bool>,
    #[prost(uint32, optional, tag = "4")]
    pub flags: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub nr_pages: Option<u64>,
}

/// `images/core.proto` `core_entry`, reduced to the task core.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CoreEntry {
    #[prost(message, optional, tag = "3")]
    pub tc: Option<TaskCoreEntry>,
}

/// `images/core.proto` `task_core_entry`, reduced to the task state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskCoreEntry {
    #[prost(uint32, optional, tag = "1")]
    pub task_state: Option<u32>,
}
