//! Read-ahead for background fill: after a fill thread claims a chunk, it tells the
//! page source which spans background fill will most likely ask for next, so a
//! source whose bytes take a round trip (a page server) can have them on the wire
//! or already arrived by then, instead of fetching one chunk per round trip.
//!
//! Only claims of the address-order fill announce (they are the ones whose next
//! claims are known: the pending pages after the cursor); a policy hint's claim is
//! followed by another hint's or by the cursor's, elsewhere.
//!
//! Owns nothing: it only peeks at the task's pending pages (claims nothing, copies
//! nothing), so every invariant of the engine holds as before. What it promises: the
//! spans it names are the claim itself followed by the next pending pages of the job's
//! stripe (`stripes.rs`) or of the queued policy hints, up to the source's budget in
//! bytes (about its window), cut at chunk-aligned addresses, so the next claims fall inside
//! announced spans (the source serves a claim from part of a span, or from several)
//! unless a fault or an address-space event changed the pending pages meanwhile. What
//! may go wrong: an announced span is never
//! asked for (a fault took part of it, MADV_DONTNEED dropped it, the task exited);
//! the source then fetched bytes for nothing, which its own limits bound (the remote
//! client: its background window and cache). Sources that do not want read-ahead
//! (`PageSource::read_ahead_bytes` = 0, the local images) cost one virtual call per claim.

use crate::ranges::{Claim, LazyRanges, PAGE_SIZE};

use super::notify::lock;
use super::shared::{Hint, Shared};
use super::task::Task;
use super::transfer::Copier;

/// Announces `claim` (just taken by fill job `job` of `task`) and the spans after it in
/// the job's stripe, up to the source's read-ahead budget in bytes.
pub(crate) fn announce(shared: &Shared, task: &Task, claim: &Claim, who: Copier, job: usize) {
    let budget = shared.source.read_ahead_bytes();
    if budget == 0 || !matches!(who, Copier::Background | Copier::Early) {
        return;
    }
    let chunk = shared.config.chunk_pages.max(1) * PAGE_SIZE;
    let mut spans = Spans {
        list: vec![(claim.img_start, claim.len() as usize)],
        bytes: claim.len(),
        open: None,
        chunk,
    };
    {
        let st = task.state();
        let Some((cursor, end)) = st
            .stripes
            .ahead(job)
            .filter(|&(cursor, _)| cursor == claim.end)
        else {
            // Not the job's address-order claim (whose end is its stripe's cursor) but a
            // policy hint's: what comes next is the rest of the hints, not the pages
            // after this claim.
            drop(st);
            return announce_hints(shared, spans, budget, task.pid);
        };
        spans.take_from(&st.pending, cursor, end, budget);
    }
    shared.source.will_need(task.pid, &spans.list);
    // Near the end of this task's stripe: the next tasks' first pages, in the order the
    // fill goes on to them (task order), so the link stays busy across the change of
    // task instead of draining and starting again (a round trip or more per task).
    let mut left = budget.saturating_sub(spans.bytes);
    for next in shared.all_tasks().iter().filter(|t| t.id > task.id) {
        if left == 0 {
            break;
        }
        let st = next.state();
        if st.exited || st.retired || st.pending.is_empty() {
            continue;
        }
        // A job that has not been in the task yet starts at its beginning.
        let (cursor, end) = st.stripes.ahead(job).unwrap_or((0, u64::MAX));
        let mut more = Spans {
            list: Vec::new(),
            bytes: 0,
            open: None,
            chunk,
        };
        more.take_from(&st.pending, cursor, end, left);
        drop(st);
        left = left.saturating_sub(more.bytes);
        shared.source.will_need(next.pid, &more.list);
    }
}

/// After a hint's claim: the pending pages of the hints queued now (the rest of this
/// one first), in the order the fill will take them. With a source a round trip away,
/// a fill that asked for each hint's chunk only when it got to it spent that round trip
/// per chunk: with four processes faulting at random, the neighbourhood policy's hints
/// were most of the fill, and a 10 ms path carried 3 MB/s.
fn announce_hints(shared: &Shared, mut spans: Spans, budget: u64, pid: u32) {
    // A copy of the queue: the hints lock is never held with a task's state lock taken
    // after it (`hinted_claim` takes them the other way round, one after the other).
    let hints: Vec<Hint> = lock(&shared.hints).iter().copied().collect();
    let tasks = shared.all_tasks();
    // One task per announcement (`will_need` names one pid): the claim's. Other
    // tasks' hints are announced when the fill claims one of them.
    for hint in hints.into_iter().filter(|h| h.pid == pid) {
        if spans.full(budget) {
            break;
        }
        for task in tasks.iter().filter(|t| t.pid == hint.pid) {
            let st = task.state();
            if st.exited || st.retired {
                continue;
            }
            spans.take_from(&st.pending, hint.addr, hint.end, budget);
            break;
        }
    }
    shared.source.will_need(pid, &spans.list);
}

/// Most spans one announcement names: random faults leave pending pieces of a few
/// pages, and a budget of a few MiB then takes hundreds of them.
const MAX_SPANS: usize = 1024;

/// Spans being put together: each within one chunk-aligned stretch, joining pending
/// pieces that run on (in run-time and dump-time addresses alike).
struct Spans {
    list: Vec<(u64, usize)>,
    bytes: u64,
    /// The span being grown: (start, end, img_start), run-time addresses.
    open: Option<(u64, u64, u64)>,
    chunk: u64,
}

impl Spans {
    /// The pending pages of `[cursor, end)`, until the budget is used.
    fn take_from(&mut self, pending: &LazyRanges, cursor: u64, end: u64, budget: u64) {
        for range in pending.iter_from(cursor) {
            let mut at = range.start;
            let stop = range.end.min(end);
            while at < stop && !self.full(budget) {
                at = self.add(at, stop, range.img_addr(at));
            }
            if range.end >= end || self.full(budget) {
                break;
            }
        }
        self.close();
    }

    fn full(&self, budget: u64) -> bool {
        self.bytes >= budget || self.list.len() >= MAX_SPANS
    }

    /// Takes pending pages from `at` (dump-time `img`) up to `stop`; returns where it got to.
    /// Spans end at multiples of the chunk size, so the announcements of successive
    /// claims name the same spans (already asked for) and only the far end is new: a
    /// span cut from each claim's end would add a sliver of a request per claim.
    fn add(&mut self, at: u64, stop: u64, img: u64) -> u64 {
        if let Some((start, end, img_start)) = self.open {
            let limit = self.boundary_after(start);
            // Only where the pages run on: a gap may hold pages that are not lazy (a
            // page server refuses a GET for those), and dump-time addresses run on across
            // it all the same (CRIU restores every VMA at its dump-time address).
            let bridges = at == end && img == img_start + (at - start) && at < limit;
            if bridges {
                let next = stop.min(limit);
                self.open = Some((start, next, img_start));
                if next == limit {
                    self.close();
                }
                return next;
            }
            self.close();
        }
        let limit = self.boundary_after(at);
        let next = stop.min(limit);
        self.open = Some((at, next, img));
        if next == limit {
            self.close();
        }
        next
    }

    fn boundary_after(&self, addr: u64) -> u64 {
        (addr / self.chunk + 1) * self.chunk
    }

    fn close(&mut self) {
        if let Some((start, end, img)) = self.open.take() {
            self.list.push((img, (end - start) as usize));
            self.bytes += end - start;
        }
    }
}
