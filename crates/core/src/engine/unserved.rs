//! What happens to pages that will never be served.
//!
//! Once the engine stops without finishing (a fatal error, an abort), closing a task's
//! uffd would make the kernel fill every page it still lacks with zeros on first touch:
//! the process would run on with memory that silently differs from the dump. Before the
//! uffds close, every pending and in-flight page is poisoned instead (UFFDIO_POISON), so
//! a touch raises SIGBUS. Runs only after all engine threads have stopped, so nothing
//! else issues ioctls or reads events meanwhile.

use crate::ranges::LazyRange;
use crate::uffd::{self, PoisonEnd, UffdError};

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
            // Blocked: an unread event stops every ioctl now that nobody reads it.
            match uffd::poison_span(uffd, range.start, range.end) {
                Ok((pages, end)) => {
                    out.poisoned += pages;
                    if end != PoisonEnd::Done {
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
