//! Per-task counters and the fault-latency histogram.
//!
//! Every lazy page of a task ends in exactly one bucket, so at the end
//! `total == faulted + background + exists + dropped` (plus `pending + in_flight` while
//! running); `zero` is informational (all ZEROPAGE answers, lazy or not).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    pub total: AtomicU64,
    pub faulted: AtomicU64,
    pub background: AtomicU64,
    pub prefetched: AtomicU64,
    pub zero: AtomicU64,
    pub exists: AtomicU64,
    pub dropped: AtomicU64,
}

impl TaskCounters {
    pub fn add(counter: &AtomicU64, pages: u64) {
        if pages > 0 {
            counter.fetch_add(pages, Relaxed);
        }
    }
}

/// Snapshot of one task (one uffd). Forked children share the image `pid` and name
/// their `parent` task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Engine-wide id of this uffd's task entry.
    pub task: u32,
    /// Image pid (the pid in the dump; children of FORK inherit the parent's).
    pub pid: u32,
    /// Task id of the entry this one was forked from.
    pub parent: Option<u32>,
    /// Lazy pages this task started with.
    pub total: u64,
    /// Copied to serve a fault.
    pub faulted: u64,
    /// Copied by background fill.
    pub background: u64,
    /// Of `background`, copied because a working set named them (`--prefetch-ws`).
    /// Not part of the reconciliation.
    pub prefetched: u64,
    /// Pages answered with UFFDIO_ZEROPAGE (lazy pages the dump lacks, and faults on
    /// never-dumped pages). Not part of the reconciliation.
    pub zero: u64,
    /// Lazy pages found already present (EEXIST).
    pub exists: u64,
    /// Lazy pages dropped by MADV_DONTNEED, munmap, or task exit.
    pub dropped: u64,
    pub pending: u64,
    pub in_flight: u64,
    pub exited: bool,
    /// Retired: nothing left, uffd closed.
    pub done: bool,
}

impl TaskStats {
    /// True when every lazy page is accounted for exactly once.
    pub fn reconciles(&self) -> bool {
        self.total
            == self.faulted
                + self.background
                + self.exists
                + self.dropped
                + self.pending
                + self.in_flight
    }
}

const BUCKETS: usize = 24;

/// Fault latency (fault message read -> page filled), power-of-two microsecond buckets.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&self, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        let idx = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| (if i == 0 { 1 } else { 1u64 << i }, b.load(Relaxed)))
                .collect(),
            sum_us: self.sum_us.load(Relaxed),
            max_us: self.max_us.load(Relaxed),
        }
    }
}

/// Histogram snapshot: `buckets[i] = (upper bound in µs, exclusive, count)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub buckets: Vec<(u64, u64)>,
    pub sum_us: u64,
    pub max_us: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// Upper bound (µs) of the bucket holding the `p`-th percentile (0..=100).
    pub fn percentile_us(&self, p: f64) -> u64 {
        let want = ((self.count() as f64) * p / 100.0).ceil() as u64;
        let mut seen = 0;
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= want.max(1) {
                return bound;
            }
        }
        self.max_us
    }
}

/// Everything `Engine::stats` reports.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub tasks: Vec<TaskStats>,
    pub fault_latency: LatencySnapshot,
    /// Fault notifications the policy layer did not get because its queue was full.
    pub dropped_fault_events: u64,
    pub restore_finished: bool,
    pub elapsed: Duration,
}

/// What `Engine::join` returns.
pub type EngineSummary = EngineStats;

impl EngineStats {
    /// Sum over all tasks (task/pid/parent fields are meaningless there).
    pub fn totals(&self) -> TaskStats {
        let mut t = TaskStats::default();
        for s in &self.tasks {
            t.total += s.total;
            t.faulted += s.faulted;
            t.background += s.background;
            t.prefetched += s.prefetched;
            t.zero += s.zero;
            t.exists += s.exists;
            t.dropped += s.dropped;
            t.pending += s.pending;
            t.in_flight += s.in_flight;
        }
        t
    }
}
