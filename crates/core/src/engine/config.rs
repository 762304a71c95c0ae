/// Tuning knobs of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Background fill threads (at least 1).
    pub jobs: usize,
    /// Pages per background UFFDIO_COPY. Bounds how long a fault can wait for the
    /// per-task lock behind one background copy (64 pages = 256 KiB).
    pub chunk_pages: u64,
    /// Pages copied for one fault: the faulting page plus pending pages right after it
    /// (1..=16). Larger values trade fault latency for fewer faults on sequential access.
    pub fault_pages: u64,
    /// uffd messages read per read(2).
    pub event_batch: usize,
    /// Fault notifications kept for the policy layer before new ones are dropped.
    pub fault_event_queue: usize,
    /// Start background fill of every task as soon as its uffd arrives instead of at
    /// RESTORE_FINISHED (working-set pages first either way). The restore's last steps
    /// and the fill then overlap on different CPUs.
    pub early_fill: bool,
    /// Keep every lazy-page fault of the dump's own tasks, in order
    /// (`Engine::recorded_working_set`).
    pub record_working_set: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            jobs: 1,
            chunk_pages: 64,
            fault_pages: 1,
            event_batch: 64,
            fault_event_queue: 4096,
            early_fill: false,
            record_working_set: false,
        }
    }
}

impl EngineConfig {
    /// Clamps every knob into its supported range.
    pub(crate) fn normalized(mut self) -> Self {
        self.jobs = self.jobs.clamp(1, 64);
        self.chunk_pages = self.chunk_pages.clamp(1, 1024);
        self.fault_pages = self.fault_pages.clamp(1, 16);
        self.event_batch = self.event_batch.clamp(1, 1024);
        self.fault_event_queue = self.fault_event_queue.max(1);
        self
    }
}
