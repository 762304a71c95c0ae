//! What happens to pages that will never be served.
//!
//! Once the engine stops without finishing (a fatal error, an abort), closing a task's
//! uffd would make the kernel fill every page it still lacks with zeros on first touch:
//! the process would run on with memory that silently differs from the dump. Before the
//! uffds close, every pending and in-flight page is poisoned instead (UFFDIO_POISON), so
//! a touch raises SIGBUS. Runs only after all engine threads have stopped, so nothing
//! else issues ioctls or reads events meanwhile.

use crate::ranges::{page_floor, LazyRange, PAGE_SIZE};
use crate::uffd::{self, FillOutcome, Uffd, UffdError};

use super::shared::Shared;

/// Pages of live tasks left unserved, and how many of them got poisoned.
#[derive(Debug, Default)]
pub(crate) struct Unserved {
    pub pages: u64,
    pub poisoned: u64,
    /// The kernel refused UFFDIO_POISON (before Linux 6.6: EINVAL).
    pub error: Option<UffdError>,
}

pub(crate) fn poison_unserved(shared: &Shared) -> Unserved {
    let mut out = Unserved::default();
    for task in shared.all_tasks() {
        let ranges: Vec<LazyRange> = {
            let st = task.state();
            if st.exited || st.retired {
                continue;
            }
            st.pending.iter().chain(st.inflight.all_pieces()).collect()
        };
        out.pages += ranges.iter().map(LazyRange::pages).sum::<u64>();
        if out.error.is_some() {
            continue;
        }
        let gate = task.gate_shared();
        let Some(uffd) = gate.as_ref() else { continue };
        for range in &ranges {
            match poison_range(uffd, range) {
                Ok((pages, more)) => {
                    out.poisoned += pages;
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
    }
    out
}

/// Poisons one range; returns the pages poisoned and whether the task can take more
/// (false: it is gone, or an unread event blocks every ioctl now that nobody reads it).
fn poison_range(uffd: &Uffd, range: &LazyRange) -> Result<(u64, bool), UffdError> {
    let mut cur = range.start;
    let mut step = range.len();
    let mut done = 0;
    while cur < range.end {
        let len = step.min(range.end - cur);
        match uffd::poison(uffd, cur, len)? {
            FillOutcome::Done(_) => {
                done += len / PAGE_SIZE;
                cur += len;
                step = range.end - cur;
            }
            FillOutcome::Partial(bytes) => {
                let bytes = page_floor(bytes).clamp(PAGE_SIZE, len);
                done += bytes / PAGE_SIZE;
                cur += bytes;
            }
            // Present already (its copy landed), or not ours to poison any more.
            FillOutcome::Exists => cur += PAGE_SIZE,
            FillOutcome::Unmapped if len > PAGE_SIZE => step = page_floor(len / 2).max(PAGE_SIZE),
            FillOutcome::Unmapped => cur += PAGE_SIZE,
            FillOutcome::Changing | FillOutcome::Gone => return Ok((done, false)),
        }
    }
    Ok((done, true))
}
