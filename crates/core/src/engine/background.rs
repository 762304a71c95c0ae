//! Background fill: after RESTORE_FINISHED, copy whatever nobody faulted on.
//!
//! Each step claims one bounded chunk (policy hints first, then the first task with
//! pending pages, in address order), fetches it without holding any lock, and copies
//! it under the task's shared gate, one `transfer::SLICE_PAGES` ioctl at a time. A fault
//! never waits for more than one such ioctl: the fault thread serves faults on its own
//! and only needs the exclusive gate to read messages; once it asks for it, fill hands
//! it over after the ioctl under way (`gate.rs`) and re-reads its claim afterwards.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ranges::Claim;

use super::notify::lock;
use super::shared::{Hint, Shared};
use super::task::Task;
use super::transfer::{fill_claim, Copier, Fill};
use super::{EngineError, PageData};

const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How long to wait for the fault thread to drain the event that made COPY return
/// EAGAIN before trying again anyway.
const CHANGING_WAIT: Duration = Duration::from_millis(10);
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) fn run(shared: Arc<Shared>) {
    let mut scratch = Vec::new();
    while !shared.stopping.load(SeqCst) {
        let generation = shared.work_generation();
        if !shared.restore_finished.load(SeqCst) {
            shared.wait_work(generation, IDLE_WAIT);
            continue;
        }
        match next_claim(&shared) {
            Some((task, id, claim)) => fill_one(&shared, &task, id, claim, generation, &mut scratch),
            None => {
                shared.wait_work(generation, IDLE_WAIT);
            }
        }
    }
}

/// Claims the next chunk: hinted ranges first, then the first task with pending pages.
fn next_claim(shared: &Shared) -> Option<(Arc<Task>, u64, Claim)> {
    let chunk = shared.config.chunk_pages;
    let tasks = shared.all_tasks();
    loop {
        let Some(hint) = lock(&shared.hints).pop_front() else { break };
        for task in tasks.iter().filter(|t| t.pid == hint.pid) {
            let mut st = task.state();
            if st.exited || st.retired {
                continue;
            }
            if let Some(claim) = st.pending.take_within(hint.addr, hint.end, chunk) {
                let id = st.inflight.add(claim);
                drop(st);
                if claim.end < hint.end {
                    lock(&shared.hints).push_front(Hint { addr: claim.end, ..hint });
                }
                return Some((task.clone(), id, claim));
            }
        }
    }
    let now = Instant::now();
    for task in &tasks {
        let mut st = task.state();
        if st.exited || st.retired || st.not_before.is_some_and(|t| t > now) {
            continue;
        }
        let cursor = st.cursor;
        if let Some(claim) = st.pending.take_chunk(chunk, cursor) {
            st.cursor = Some(claim.end);
            let id = st.inflight.add(claim);
            return Some((task.clone(), id, claim));
        }
    }
    None
}

fn fill_one(shared: &Shared, task: &Task, id: u64, claim: Claim, generation: u64, scratch: &mut Vec<u8>) {
    let fill = match shared.source.pages(task.pid, claim.img_start, claim.len() as usize, scratch) {
        Ok(PageData::Bytes(data)) if data.len() as u64 == claim.len() => Fill::Bytes { img_start: claim.img_start, data },
        Ok(PageData::Zero) => Fill::Zero,
        Ok(PageData::Retry) => {
            // Put back without the gate: pieces and pending change together under the
            // state lock, which is all a FORK snapshot or REMOVE needs.
            let mut st = task.state();
            let pieces = st.inflight.finish(id);
            st.put_back(pieces);
            st.retry_backoff = (st.retry_backoff * 2).clamp(Duration::from_millis(1), MAX_RETRY_BACKOFF);
            st.not_before = Some(Instant::now() + st.retry_backoff);
            let notify = !st.awaited.is_empty();
            drop(st);
            if notify {
                shared.poke();
            }
            return;
        }
        Ok(PageData::Bytes(data)) => {
            let got = data.len();
            put_back(task, id);
            let want = claim.len() as usize;
            return shared.fail(EngineError::ShortData { pid: task.pid, img_addr: claim.img_start, got, want });
        }
        Err(e) => {
            put_back(task, id);
            return shared.fail(e.into());
        }
    };
    let Some(report) = fill_claim(shared, task, id, fill, Copier::Background) else { return };
    let mut st = task.state();
    st.retry_backoff = Duration::ZERO;
    let notify = !st.awaited.is_empty() || st.pending.is_empty();
    drop(st);
    if notify {
        // Parked faults may be settled now, or the task may be ready to retire.
        shared.poke();
    }
    if !report.leftover.is_empty() && !report.gone && report.error.is_none() {
        // EAGAIN: an event is unread. Wait for the fault thread to drain it rather than
        // spinning on the same pages.
        shared.wait_work(generation, CHANGING_WAIT);
    }
}

fn put_back(task: &Task, id: u64) {
    let mut st = task.state();
    let pieces = st.inflight.finish(id);
    st.put_back(pieces);
}
