//! Which of a task's pending pages each background fill job takes next.
//!
//! Jobs fill in address order, each in its own stretch of the task ("stripe"), as far
//! from the others as the work allows. Two jobs copying neighbouring chunks meet in the
//! kernel: a restored process's page-table page covers 2 MiB (8 chunks of 64 pages), and
//! UFFDIO_COPY takes that page's PTE lock for every page it installs, so jobs taking
//! chunks from one shared cursor spent their time queueing on each other there (perf:
//! `__pv_queued_spin_lock_slowpath` under `mfill_atomic_install_pte`) and two jobs
//! filled no faster than one. The raw probe gives each thread its own half and scales.
//!
//! A job without a stripe takes the upper half of the largest stripe another job still
//! has (measured in pending pages), so the jobs start far apart and finish together; the
//! first job takes the whole task. Stripes only steer: claims stay exclusive (they come
//! out of `pending` under the task's state lock), so overlapping or stale stripes cost
//! locality, never correctness.

use crate::ranges::{Claim, LazyRanges};

/// [cursor, end): where a job goes on in a task, and where its stretch ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stripe {
    cursor: u64,
    end: u64,
}

/// Every job's stripe in one task.
#[derive(Debug, Default)]
pub(crate) struct Stripes {
    by_job: Vec<Option<Stripe>>,
}

/// Not worth splitting a stripe for less than this many chunks.
const MIN_STEAL_CHUNKS: u64 = 4;

impl Stripes {
    /// Claims up to `chunk` pages for `job`: the next pending pages of its stripe, or of
    /// a new stripe when that one is used up. None once nothing is pending.
    pub fn take(&mut self, pending: &mut LazyRanges, job: usize, chunk: u64) -> Option<Claim> {
        if self.by_job.len() <= job {
            self.by_job.resize(job + 1, None);
        }
        if let Some(s) = self.by_job[job] {
            if let Some(claim) = pending.take_within(s.cursor, s.end, chunk) {
                self.by_job[job] = Some(Stripe {
                    cursor: claim.end,
                    end: s.end,
                });
                return Some(claim);
            }
        }
        let s = self.pick(pending, job, chunk);
        let claim = pending.take_within(s.cursor, s.end, chunk)?;
        self.by_job[job] = Some(Stripe {
            cursor: claim.end,
            end: s.end,
        });
        Some(claim)
    }

    /// Where `job` goes on in this task and where its stripe ends, if it has one
    /// (read-ahead peeks at it: `read_ahead.rs`).
    pub fn ahead(&self, job: usize) -> Option<(u64, u64)> {
        self.by_job
            .get(job)
            .copied()
            .flatten()
            .map(|s| (s.cursor, s.end))
    }

    /// A new stripe for `job`: the upper half of the fullest other stripe, or the whole
    /// task when none is worth splitting.
    fn pick(&mut self, pending: &LazyRanges, job: usize, chunk: u64) -> Stripe {
        self.by_job[job] = None;
        let fullest = (0..self.by_job.len())
            .filter_map(|j| self.by_job[j].map(|s| (j, s, pending.pages_within(s.cursor, s.end))))
            .max_by_key(|&(_, _, pages)| pages);
        if let Some((other, s, pages)) = fullest {
            if pages >= MIN_STEAL_CHUNKS * chunk.max(1) {
                if let Some(mid) = pending
                    .nth_page_from(s.cursor, pages / 2)
                    .filter(|&m| m < s.end)
                {
                    self.by_job[other] = Some(Stripe {
                        cursor: s.cursor,
                        end: mid,
                    });
                    return Stripe {
                        cursor: mid,
                        end: s.end,
                    };
                }
            }
        }
        Stripe {
            cursor: 0,
            end: u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::{LazyRange, PAGE_SIZE};

    fn pending(ranges: &[(u64, u64)]) -> LazyRanges {
        let mut p = LazyRanges::new();
        for &(s, e) in ranges {
            assert!(p.insert(LazyRange::new(s * PAGE_SIZE, e * PAGE_SIZE, s * PAGE_SIZE)));
        }
        p
    }

    #[test]
    fn one_job_goes_in_address_order_and_wraps_to_pages_put_back() {
        let mut p = pending(&[(0, 10), (20, 30)]);
        let mut s = Stripes::default();
        let mut got = Vec::new();
        while let Some(c) = s.take(&mut p, 0, 4) {
            got.push((c.start / PAGE_SIZE, c.end / PAGE_SIZE));
            if got.len() == 2 {
                // A claim that could not be copied goes back behind the cursor.
                p.insert(LazyRange::new(0, 4 * PAGE_SIZE, 0));
            }
        }
        assert_eq!(
            got,
            vec![
                (0, 4),
                (4, 8),
                (8, 10),
                (20, 24),
                (24, 28),
                (28, 30),
                (0, 4)
            ]
        );
    }

    #[test]
    fn a_second_job_starts_half_way_and_the_jobs_never_claim_a_page_twice() {
        let mut p = pending(&[(0, 1000), (2000, 3000)]);
        let mut s = Stripes::default();
        let first = s.take(&mut p, 0, 16).unwrap();
        let second = s.take(&mut p, 1, 16).unwrap();
        assert_eq!(first.start, 0);
        // Half of the 1984 pages left after the first claim: 992 pages from page 16.
        assert_eq!(second.start / PAGE_SIZE, 2008);
        let mut seen = vec![false; 3000];
        for c in [first, second] {
            (c.start / PAGE_SIZE..c.end / PAGE_SIZE).for_each(|pg| seen[pg as usize] = true);
        }
        let mut job = 0;
        let mut near = 0;
        let mut last = [first.end, second.end];
        while let Some(c) = s.take(&mut p, job, 16) {
            for pg in c.start / PAGE_SIZE..c.end / PAGE_SIZE {
                assert!(!seen[pg as usize], "page {pg} claimed twice");
                seen[pg as usize] = true;
            }
            let other = last[1 - job];
            if c.start.abs_diff(other) < 512 * PAGE_SIZE {
                near += 1;
            }
            last[job] = c.end;
            job = 1 - job;
        }
        assert_eq!(seen.iter().filter(|&&x| x).count(), 2000);
        // Only at the very end (steals of the last few chunks) are the jobs neighbours.
        assert!(
            near <= 2 * MIN_STEAL_CHUNKS as usize + 2,
            "{near} claims next to the other job's"
        );
    }

    #[test]
    fn a_job_that_runs_dry_steals_the_upper_half_of_the_fullest_stripe() {
        let mut p = pending(&[(0, 400)]);
        let mut s = Stripes::default();
        s.take(&mut p, 0, 10).unwrap(); // job 0: [0, MAX)
        s.take(&mut p, 1, 10).unwrap(); // job 1: [205, MAX), job 0: [10, 205)
                                        // Job 1 finishes its part.
        while s.by_job[1].is_some_and(|st| p.pages_within(st.cursor, st.end) > 0) {
            s.take(&mut p, 1, 10).unwrap();
        }
        let c = s.take(&mut p, 1, 10).unwrap();
        // Job 0 had [10, 205) = 195 pages: job 1 takes from the middle of them.
        assert_eq!(c.start / PAGE_SIZE, 10 + 97);
        assert_eq!(
            s.by_job[0],
            Some(Stripe {
                cursor: 10 * PAGE_SIZE,
                end: 107 * PAGE_SIZE
            })
        );
    }
}
