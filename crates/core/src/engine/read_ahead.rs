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
//! stripe (`stripes.rs`), cut exactly as `Stripes::take` will cut them, so the next claims
//! match the announced spans one to one unless a fault or an address-space event
//! changed the pending pages meanwhile. What may go wrong: an announced span is never
//! asked for (a fault took part of it, MADV_DONTNEED dropped it, the task exited);
//! the source then fetched bytes for nothing, which its own limits bound (the remote
//! client: its background window and cache). Sources that do not want read-ahead
//! (`PageSource::read_ahead_bytes` = 0, the local images) cost one virtual call per claim.

use crate::ranges::{Claim, PAGE_SIZE};

/// Most spans announced after one claim (a 64 MiB window of 1 MiB chunks).
const MAX_SPANS: usize = 64;

use super::shared::Shared;
use super::task::Task;
use super::transfer::Copier;

/// Announces `claim` (just taken by fill job `job` of `task`) and the spans after it in
/// the job's stripe, cut as `Stripes::take` will cut them.
pub(crate) fn announce(shared: &Shared, task: &Task, claim: &Claim, who: Copier, job: usize) {
    let budget = shared.source.read_ahead_bytes();
    if budget == 0 || !matches!(who, Copier::Background | Copier::Early) {
        return;
    }
    let chunk = shared.config.chunk_pages.max(1) * PAGE_SIZE;
    // The claim itself, then as many chunks as the source's budget holds (at least one
    // more, so the next claim's bytes are always on their way).
    let depth = (budget.div_ceil(chunk) as usize).clamp(1, MAX_SPANS) + 1;
    let mut spans = Vec::with_capacity(depth);
    spans.push((claim.img_start, claim.len() as usize));
    {
        let st = task.state();
        let Some((cursor, end)) = st.stripes.ahead(job).filter(|&(cursor, _)| cursor == claim.end) else {
            // Not the job's address-order claim (whose end is its stripe's cursor) but a
            // policy hint's: the fill goes elsewhere next, so spans after this claim
            // would only be fetched early, kept, evicted and fetched again.
            return;
        };
        'ranges: for range in st.pending.iter_from(cursor) {
            let mut at = range.start;
            let stop = range.end.min(end);
            while at < stop {
                if spans.len() >= depth {
                    break 'ranges;
                }
                let next = stop.min(at + chunk);
                spans.push((range.img_addr(at), (next - at) as usize));
                at = next;
            }
            if range.end >= end {
                break;
            }
        }
    }
    shared.source.will_need(task.pid, &spans);
}
