//! Working sets: the lazy pages each task faulted on, in the order it first needed
//! them. One restore records them (`--record-ws`); a later restore of the same dump
//! fetches them first (`--prefetch-ws`), from the moment each task's uffd arrives,
//! so a process that runs the same way again finds its hot pages already in.
//!
//! CRIU restores every VMA at its dump-time address, so run-time addresses recorded
//! on one restore hold for the next; pages a working set names that are not pending
//! lazy pages of the task are skipped, so a stale or foreign file can waste a little
//! time but never put bytes anywhere they do not belong.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;

use crate::ranges::{page_floor, Claim, LazyRanges, PAGE_SIZE};

use super::notify::lock;

/// A run of `pages` pages from run-time address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u64,
}

impl PageRun {
    fn end(&self) -> u64 {
        self.addr
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }
}

/// One dump task's working set: runs in first-fault order, adjacent ones merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskWorkingSet {
    /// Image pid (the pid in the dump).
    pub pid: u32,
    pub runs: Vec<PageRun>,
}

impl TaskWorkingSet {
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }
}

/// Bounds the recorder's memory (16 bytes a fault: 64 MiB); later faults go unrecorded.
const MAX_RECORDED: usize = 4 << 20;

/// Faults in the order the fault thread saw them.
#[derive(Default)]
pub(crate) struct FaultLog {
    faults: Mutex<Vec<(u32, u64)>>,
}

impl FaultLog {
    pub fn record(&self, pid: u32, page: u64) {
        let mut faults = lock(&self.faults);
        if faults.len() < MAX_RECORDED {
            faults.push((pid, page_floor(page)));
        }
    }

    /// Per pid, in order of each pid's first fault; a page retried after EAGAIN counts once.
    pub fn working_sets(&self) -> Vec<TaskWorkingSet> {
        let faults = lock(&self.faults);
        let mut sets: Vec<TaskWorkingSet> = Vec::new();
        let mut index: HashMap<u32, usize> = HashMap::new();
        let mut seen: HashSet<(u32, u64)> = HashSet::new();
        for &(pid, page) in faults.iter() {
            if !seen.insert((pid, page)) {
                continue;
            }
            let i = *index.entry(pid).or_insert_with(|| {
                sets.push(TaskWorkingSet {
                    pid,
                    runs: Vec::new(),
                });
                sets.len() - 1
            });
            push_run(
                &mut sets[i].runs,
                PageRun {
                    addr: page,
                    pages: 1,
                },
            );
        }
        sets
    }
}

fn push_run(runs: &mut Vec<PageRun>, run: PageRun) {
    match runs.last_mut() {
        Some(last) if last.end() == run.addr => last.pages += run.pages,
        _ => runs.push(run),
    }
}

/// What is still to prefetch, per image pid: `[start, end)` spans in order.
pub(crate) struct PrefetchQueues {
    by_pid: Mutex<HashMap<u32, VecDeque<(u64, u64)>>>,
    /// Whether running dry has been reported (nothing to report before a working set).
    announced: AtomicBool,
}

impl Default for PrefetchQueues {
    fn default() -> Self {
        PrefetchQueues {
            by_pid: Mutex::default(),
            announced: AtomicBool::new(true),
        }
    }
}

impl PrefetchQueues {
    pub fn add(&self, sets: &[TaskWorkingSet]) {
        let mut by_pid = lock(&self.by_pid);
        if sets.iter().any(|s| s.pages() > 0) {
            self.announced.store(false, SeqCst);
        }
        for set in sets {
            let queue = by_pid.entry(set.pid).or_default();
            queue.extend(
                set.runs
                    .iter()
                    .filter(|r| r.pages > 0)
                    .map(|r| (page_floor(r.addr), r.end())),
            );
        }
        by_pid.retain(|_, q| !q.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.by_pid).is_empty()
    }

    /// True exactly once: the first time it is asked after a working set ran dry.
    pub fn just_emptied(&self) -> bool {
        let by_pid = lock(&self.by_pid);
        by_pid.is_empty() && !self.announced.swap(true, SeqCst)
    }

    /// Takes the next chunk of `pid`'s working set that is still pending. Spans with
    /// nothing pending (already faulted, dropped, or never lazy) are skipped for good.
    /// Lock order: the caller holds the task's state lock, then this one.
    pub fn claim(&self, pid: u32, pending: &mut LazyRanges, max_pages: u64) -> Option<Claim> {
        let mut by_pid = lock(&self.by_pid);
        let queue = by_pid.get_mut(&pid)?;
        let mut found = None;
        while let Some(&(start, end)) = queue.front() {
            if let Some(claim) = pending.take_within(start, end, max_pages) {
                if claim.end < end {
                    queue[0].0 = claim.end;
                } else {
                    queue.pop_front();
                }
                found = Some(claim);
                break;
            }
            queue.pop_front();
        }
        if queue.is_empty() {
            by_pid.remove(&pid);
        }
        found
    }

    /// Drops the working sets of pids `keep` says no: once the restore has finished,
    /// a pid that never arrived never will, and an exited task needs nothing.
    /// `keep` runs under the queue lock: it must not take a task's state lock.
    pub fn retain(&self, keep: impl Fn(u32) -> bool) {
        lock(&self.by_pid).retain(|&pid, _| keep(pid));
    }

    /// Puts spans that could not be filled yet back at the front of `pid`'s queue.
    pub fn put_front(&self, pid: u32, spans: impl DoubleEndedIterator<Item = (u64, u64)>) {
        let mut by_pid = lock(&self.by_pid);
        let queue = by_pid.entry(pid).or_default();
        for span in spans.rev() {
            queue.push_front(span);
        }
        if queue.is_empty() {
            by_pid.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::LazyRange;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn recording_keeps_first_fault_order_merges_neighbours_and_drops_repeats() {
        let log = FaultLog::default();
        for (pid, page) in [
            (7, 10 * P),
            (7, 11 * P),
            (8, 3 * P),
            (7, 2 * P + 5),
            (7, 11 * P),
            (7, 12 * P),
        ] {
            log.record(pid, page);
        }
        let sets = log.working_sets();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].pid, 7);
        let runs: Vec<(u64, u64)> = sets[0].runs.iter().map(|r| (r.addr / P, r.pages)).collect();
        assert_eq!(runs, vec![(10, 2), (2, 1), (12, 1)]);
        assert_eq!(
            sets[1],
            TaskWorkingSet {
                pid: 8,
                runs: vec![PageRun {
                    addr: 3 * P,
                    pages: 1
                }]
            }
        );
    }

    #[test]
    fn prefetch_claims_only_pending_pages_in_working_set_order() {
        let q = PrefetchQueues::default();
        q.add(&[TaskWorkingSet {
            pid: 1,
            runs: vec![
                PageRun {
                    addr: 50 * P,
                    pages: 4,
                },
                PageRun {
                    addr: 10 * P,
                    pages: 2,
                },
                PageRun {
                    addr: 900 * P,
                    pages: 1,
                },
            ],
        }]);
        let mut pending = LazyRanges::new();
        pending.insert(LazyRange::new(0, 100 * P, 0));
        pending.remove(51 * P, 52 * P);
        let mut got = Vec::new();
        while let Some(c) = q.claim(1, &mut pending, 2) {
            got.push((c.start / P, c.end / P));
        }
        // 51 was not pending; 900 is not a lazy page at all.
        assert_eq!(got, vec![(50, 51), (52, 54), (10, 12)]);
        assert!(q.is_empty());
        assert!(q.claim(2, &mut pending, 2).is_none());
    }

    #[test]
    fn put_front_retries_before_the_rest() {
        let q = PrefetchQueues::default();
        q.add(&[TaskWorkingSet {
            pid: 1,
            runs: vec![
                PageRun {
                    addr: 10 * P,
                    pages: 1,
                },
                PageRun {
                    addr: 20 * P,
                    pages: 1,
                },
            ],
        }]);
        let mut pending = LazyRanges::new();
        pending.insert(LazyRange::new(0, 100 * P, 0));
        let first = q.claim(1, &mut pending, 8).unwrap();
        pending.insert(LazyRange::new(first.start, first.end, first.start));
        q.put_front(1, [(first.start, first.end)].into_iter());
        assert_eq!(q.claim(1, &mut pending, 8).map(|c| c.start / P), Some(10));
        assert_eq!(q.claim(1, &mut pending, 8).map(|c| c.start / P), Some(20));
    }
}
