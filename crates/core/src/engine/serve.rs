//! Serving one fault on the fault thread.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Instant;

use crate::ranges::{page_floor, PAGE_SIZE};
use crate::uffd::{self, FillOutcome};

use super::fault_loop::{FaultLoop, Fetching};
use super::stats::TaskCounters;
use super::task::Task;
use super::transfer::{fill_claim, Copier, Fill};
use super::{EngineError, PageData, Priority};

impl FaultLoop {
    /// Resolves a fault at `addr`: copy it if it is a pending lazy page, leave it to the
    /// background copy already bringing it, or map the zero page.
    pub(crate) fn serve(&mut self, task: &Arc<Task>, addr: u64, read_at: Instant, attempt: u32) {
        let page = page_floor(addr);
        let claim = {
            let mut st = task.state();
            if st.exited || st.retired {
                return;
            }
            let lazy = st.pending.contains(page) || st.inflight.contains(page);
            if lazy
                && attempt == 0
                && task.parent.is_none()
                && self.shared.config.record_working_set
            {
                self.shared.fault_log.record(task.pid, page);
            }
            match st
                .pending
                .take_cluster(page, self.shared.config.fault_pages)
            {
                Some(claim) => (st.inflight.add(claim), claim),
                None if st.inflight.contains(page) => {
                    // That copy wakes the thread; if it gets put back instead, the
                    // recheck below serves the page. A background claim may still be
                    // waiting for its bytes: the source fetches this page first
                    // (asked after the state lock is let go).
                    let hurry = (attempt == 0 && !st.awaited.contains(&page))
                        .then(|| st.inflight.img_addr_of(page))
                        .flatten();
                    if !st.awaited.contains(&page) {
                        st.awaited.push(page);
                    }
                    if !self.awaiting.contains(&task.id) {
                        self.awaiting.push(task.id);
                    }
                    drop(st);
                    if let Some(img) = hurry {
                        self.shared.source.hurry(task.pid, img, PAGE_SIZE as usize);
                    }
                    return;
                }
                None => {
                    drop(st);
                    return self.serve_zero(task, page, read_at, attempt);
                }
            }
        };
        let (id, claim) = claim;
        self.fetch(
            task,
            Fetching {
                task: task.id,
                id,
                claim,
                page,
                read_at,
                attempt,
            },
        );
    }

    /// Asks the source for a fault's claim and copies it if the bytes are there; if the
    /// source answers `Pending`, keeps the claim in flight and the fault in `fetching`
    /// (invariant 8): the source's waker brings the fault thread back to it.
    pub(crate) fn fetch(&mut self, task: &Arc<Task>, f: Fetching) {
        let Fetching {
            id,
            claim,
            page,
            read_at,
            attempt,
            ..
        } = f;
        if !task.state().inflight.has(id) {
            // The task exited (or its claim was dropped whole) while the bytes were on
            // their way: its exit counted the pages.
            return;
        }
        // Counted before asking: a completion that lands between the source's answer
        // and our bookkeeping must still poke us.
        self.shared.faults_fetching.fetch_add(1, SeqCst);
        let fetched = self.shared.source.pages(
            task.pid,
            claim.img_start,
            claim.len() as usize,
            &mut self.scratch,
            Priority::Fault,
        );
        if matches!(fetched, Ok(PageData::Pending)) {
            self.fetching.push(f);
            return;
        }
        self.shared.faults_fetching.fetch_sub(1, SeqCst);
        let fill = match fetched {
            Ok(PageData::Bytes(data)) if data.len() as u64 == claim.len() => Fill::Bytes {
                img_start: claim.img_start,
                data,
            },
            Ok(PageData::Zero) => Fill::Zero,
            Ok(PageData::Pending) => unreachable!("handled above"),
            Ok(PageData::Bytes(data)) => {
                let got = data.len();
                self.put_back(task, id);
                let want = claim.len() as usize;
                return self.shared.fail(EngineError::ShortData {
                    pid: task.pid,
                    img_addr: claim.img_start,
                    got,
                    want,
                });
            }
            Err(e) => {
                self.put_back(task, id);
                return self.shared.fail(e.into());
            }
        };
        let Some(report) = fill_claim(&self.shared, task, id, fill, Copier::Fault) else {
            return;
        };
        if report.left_over(page) {
            if !report.gone && report.error.is_none() {
                self.defer(task.id, page, attempt + 1, read_at);
            }
            return;
        }
        self.shared.latency.record(read_at.elapsed());
        self.notes
            .push((task.id, task.pid, claim.start, claim.pages()));
    }

    /// Asks again for every fault the source answered `Pending`.
    pub(crate) fn run_fetching(&mut self) {
        if self.fetching.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.fetching);
        self.shared.faults_fetching.fetch_sub(waiting.len(), SeqCst);
        for f in waiting {
            match self.shared.task(f.task) {
                Some(task) => self.fetch(&task, f),
                None => {}
            }
        }
    }

    fn put_back(&self, task: &Task, id: u64) {
        let mut st = task.state();
        let pieces = st.inflight.finish(id);
        st.put_back(pieces);
    }

    /// A fault on a page that is not lazy (never dumped, dropped, or already copied).
    fn serve_zero(&mut self, task: &Arc<Task>, page: u64, read_at: Instant, attempt: u32) {
        let outcome = {
            let gate = task.gate_shared();
            let Some(uffd) = gate.as_ref() else { return };
            let outcome = uffd::zeropage(uffd, page, PAGE_SIZE);
            // Already present (a copy won the race) or no longer registered (REMOVE):
            // either way the thread must be woken to retry its access.
            if matches!(outcome, Ok(FillOutcome::Exists | FillOutcome::Unmapped)) {
                let _ = uffd::wake(uffd, page, PAGE_SIZE);
            }
            outcome
        };
        match outcome {
            Ok(FillOutcome::Done(_) | FillOutcome::Partial(_)) => {
                TaskCounters::add(&task.counters.zero, 1);
                self.shared.latency.record(read_at.elapsed());
            }
            Ok(FillOutcome::Exists | FillOutcome::Unmapped) => {
                self.shared.latency.record(read_at.elapsed())
            }
            Ok(FillOutcome::Changing) => self.defer(task.id, page, attempt + 1, read_at),
            Ok(FillOutcome::Gone) => self.exit_task(task),
            Err(e) => self.shared.fail(EngineError::Uffd {
                pid: task.pid,
                source: e,
            }),
        }
    }
}
