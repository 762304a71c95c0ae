//! Turning a claim into pages in the task: the ioctl loop and its bookkeeping, shared by
//! the fault thread and background fill.

use crate::ranges::{page_floor, LazyRange, PAGE_SIZE};
use crate::uffd::{self, FillOutcome, Uffd, UffdError};

use super::shared::Shared;
use super::stats::TaskCounters;
use super::task::Task;
use super::EngineError;

/// Bytes for a claim: `Bytes` covers the claim's whole original span from `img_start`.
#[derive(Clone, Copy)]
pub(crate) enum Fill<'a> {
    Bytes { img_start: u64, data: &'a [u8] },
    Zero,
}

/// Who copies: decides the stats bucket, whether to yield the gate, and what ENOENT means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copier {
    Fault,
    Background,
    /// Background fill of working-set pages. `early`: before RESTORE_FINISHED, when the
    /// restorer may not have registered the VMA yet, so ENOENT means "not yet", not
    /// "gone": the pages must stay pending (dropping them would zero-fill them later).
    Prefetch {
        early: bool,
    },
    /// Background fill before RESTORE_FINISHED (`EngineConfig::early_fill`): ENOENT
    /// means "not registered yet", as for early prefetch.
    Early,
}

impl Copier {
    fn unregistered_is_retry(self) -> bool {
        matches!(self, Copier::Prefetch { early: true } | Copier::Early)
    }
}

#[derive(Debug, Default)]
pub(crate) struct FillReport {
    pub filled: u64,
    pub zeroed: u64,
    pub exists: u64,
    pub dropped: u64,
    /// Not filled because the address space is changing (EAGAIN) or on error/exit.
    pub leftover: Vec<LazyRange>,
    pub gone: bool,
    pub error: Option<UffdError>,
}

impl FillReport {
    pub fn left_over(&self, addr: u64) -> bool {
        self.leftover
            .iter()
            .any(|r| r.start <= addr && addr < r.end)
    }
}

/// Longest background UFFDIO_COPY/ZEROPAGE, in pages. The fault thread needs the gate
/// exclusively to read messages, and an ioctl cannot be interrupted, so this bounds how
/// long a fault can wait behind background fill (64 pages: ~60 µs here); between
/// slices a background copier lets a waiting fault thread in; while copies are slow the
/// slice shrinks (`slice` below), bounding the wait in time. Smaller slices cost a
/// syscall each: with 16 the same 1 GiB took ~20 ms more of one thread's time (the
/// probe's pread fill: 16 pages 257-267 ms, 64 pages 232-242 ms), which is what kept one
/// fill thread behind `criu lazy-pages` (which copies far larger spans at once).
pub(crate) const SLICE_PAGES: u64 = 64;

/// Fills claim `id` of `task` and settles its bookkeeping: filled pages are counted,
/// leftovers go back to pending (or count as dropped if the task is gone).
/// None when the claim no longer exists (the task exited meanwhile, and its exit
/// counted the claim as dropped).
pub(crate) fn fill_claim(
    shared: &Shared,
    task: &Task,
    id: u64,
    fill: Fill<'_>,
    who: Copier,
) -> Option<FillReport> {
    let mut total = FillReport::default();
    let mut first = true;
    loop {
        // Invariant 2: hold the gate shared from reading the pieces until the ioctls are
        // done, so no REMOVE can be read (and its span zapped) in between. When handing
        // the gate over between slices, the pieces are read again afterwards.
        let gate = task.gate_shared();
        let Some(uffd) = gate.as_ref() else {
            task.state().inflight.finish(id);
            return (!first).then_some(total);
        };
        let Some(pieces) = task.state().inflight.pieces(id) else {
            return (!first).then_some(total);
        };
        first = false;
        // Only background fill yields: the fault thread is the gate's one writer.
        let yield_now = || who != Copier::Fault && task.gate.writer_waiting();
        let (report, unfinished) =
            fill_pieces(uffd, &pieces, fill, who.unregistered_is_retry(), &yield_now);

        let mut st = task.state();
        if !st.inflight.has(id) {
            // Invariant 6: the task exited while these ioctls ran, and its exit counted
            // every page of this claim as dropped; counting them here too would count
            // them twice (whatever the kernel did with them, the task is gone).
            return None;
        }
        let c = &task.counters;
        TaskCounters::add(
            if who == Copier::Fault {
                &c.faulted
            } else {
                &c.background
            },
            report.filled,
        );
        if matches!(who, Copier::Prefetch { .. }) {
            TaskCounters::add(&c.prefetched, report.filled);
        }
        TaskCounters::add(&c.zero, report.zeroed);
        TaskCounters::add(&c.exists, report.exists);
        TaskCounters::add(&c.dropped, report.dropped);
        if let Some(rest) = unfinished {
            // Still under the shared gate: the claim now holds exactly what is left.
            let alive = st.inflight.narrow(id, &rest);
            total.absorb(report);
            drop(st);
            drop(gate);
            if !alive {
                return Some(total);
            }
            continue;
        }
        st.inflight.finish(id);
        if report.gone {
            let leftover: u64 = report.leftover.iter().map(LazyRange::pages).sum();
            TaskCounters::add(&c.dropped, leftover);
            if task.mark_exited(&mut st) {
                shared.task_exited(task);
            }
        } else {
            // Still under the shared gate: the event that caused EAGAIN is applied to
            // these pieces after they are back in pending, never before.
            st.put_back(report.leftover.iter().copied());
        }
        drop(st);
        drop(gate);
        if let Some(e) = &report.error {
            shared.fail(EngineError::Uffd {
                pid: task.pid,
                source: e.clone(),
            });
        }
        total.absorb(report);
        return Some(total);
    }
}

impl FillReport {
    fn absorb(&mut self, r: FillReport) {
        self.filled += r.filled;
        self.zeroed += r.zeroed;
        self.exists += r.exists;
        self.dropped += r.dropped;
        self.leftover.extend(r.leftover);
        self.gone |= r.gone;
        if self.error.is_none() {
            self.error = r.error;
        }
    }
}

/// Why `fill_piece` stopped early.
enum Stop {
    /// Changing, gone, or error at this address: the rest is leftover.
    Halted(u64),
    /// `yield_now` asked to let go of the gate; the rest is still to do.
    Yield(u64),
}

/// Issues COPY/ZEROPAGE over `pieces` until done or the kernel says stop. Checks
/// `yield_now` after each ioctl that leaves work; if it says so, returns the unhandled
/// rest as the second value (then the report has no leftover). With
/// `unregistered_is_retry`, ENOENT stops the fill and leaves the rest over instead of
/// dropping pages.
pub(crate) fn fill_pieces(
    uffd: &Uffd,
    pieces: &[LazyRange],
    fill: Fill<'_>,
    unregistered_is_retry: bool,
    yield_now: &dyn Fn() -> bool,
) -> (FillReport, Option<Vec<LazyRange>>) {
    let mut report = FillReport::default();
    for (i, piece) in pieces.iter().enumerate() {
        let more_after = i + 1 < pieces.len();
        match fill_piece(
            uffd,
            piece,
            fill,
            unregistered_is_retry,
            &mut report,
            yield_now,
        ) {
            Ok(()) => {
                if more_after && yield_now() {
                    return (report, Some(pieces[i + 1..].to_vec()));
                }
            }
            Err(Stop::Yield(at)) => {
                let mut rest: Vec<LazyRange> = piece.clip(at, piece.end).into_iter().collect();
                rest.extend(pieces[i + 1..].iter().copied());
                return (report, Some(rest));
            }
            Err(Stop::Halted(at)) => {
                report.leftover.extend(piece.clip(at, piece.end));
                report.leftover.extend(pieces[i + 1..].iter().copied());
                break;
            }
        }
    }
    (report, None)
}

/// Fills one piece, at most `SLICE_PAGES` per ioctl.
fn fill_piece(
    uffd: &Uffd,
    piece: &LazyRange,
    fill: Fill<'_>,
    unregistered_is_retry: bool,
    report: &mut FillReport,
    yield_now: &dyn Fn() -> bool,
) -> Result<(), Stop> {
    let mut cur = piece.start;
    // Shrinks when a span turns out to cross a VMA boundary (ENOENT for the whole call).
    let mut step = piece.len();
    while cur < piece.end {
        let len = step.min(slice::pages() * PAGE_SIZE).min(piece.end - cur);
        let started = std::time::Instant::now();
        let result = match fill {
            Fill::Bytes { img_start, data } => {
                let off = (piece.img_addr(cur) - img_start) as usize;
                match data.get(off..off + len as usize) {
                    Some(src) => uffd::copy(uffd, cur, src),
                    // Callers check the length; never index past the data.
                    None => return Err(Stop::Halted(cur)),
                }
            }
            Fill::Zero => uffd::zeropage(uffd, cur, len),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                report.error = Some(e);
                return Err(Stop::Halted(cur));
            }
        };
        match outcome {
            FillOutcome::Done(_) => {
                slice::took(len / PAGE_SIZE, started.elapsed());
                count_filled(report, fill, len);
                cur += len;
                step = piece.end - cur;
            }
            FillOutcome::Partial(bytes) => {
                let bytes = page_floor(bytes).min(len);
                if bytes == 0 {
                    return Err(Stop::Halted(cur));
                }
                count_filled(report, fill, bytes);
                cur += bytes;
            }
            FillOutcome::Exists => {
                // The kernel only wakes for pages it filled; a thread may sleep on this one.
                let _ = uffd::wake(uffd, cur, PAGE_SIZE);
                report.exists += 1;
                cur += PAGE_SIZE;
                step = piece.end - cur;
            }
            FillOutcome::Unmapped if unregistered_is_retry => return Err(Stop::Halted(cur)),
            FillOutcome::Unmapped if len > PAGE_SIZE => step = page_floor(len / 2).max(PAGE_SIZE),
            // Final: `uffd::copy` asked twice, and this gate hold keeps an unread REMAP or
            // UNMAP unread in between, so it would have answered EAGAIN (invariant 5).
            FillOutcome::Unmapped => {
                let _ = uffd::wake(uffd, cur, PAGE_SIZE);
                report.dropped += 1;
                cur += PAGE_SIZE;
            }
            FillOutcome::Changing => return Err(Stop::Halted(cur)),
            FillOutcome::Gone => {
                report.gone = true;
                return Err(Stop::Halted(cur));
            }
        }
        if cur < piece.end && yield_now() {
            return Err(Stop::Yield(cur));
        }
    }
    Ok(())
}

/// The slice size in use on this thread: `SLICE_PAGES` while copies are quick, smaller
/// while they are slow. A fault waits for the slice under way, so what must stay short
/// is its time, not its size; on this VM the time per page varies several-fold (pages
/// the host has to fault in again after free page reporting handed them back), and a
/// 64-page copy then took hundreds of µs.
mod slice {
    use std::cell::Cell;
    use std::time::Duration;

    use super::SLICE_PAGES;

    /// Aim: a slice takes at most this long.
    const TARGET: Duration = Duration::from_micros(100);
    const MIN_PAGES: u64 = 4;

    thread_local! {
        static PAGES: Cell<u64> = const { Cell::new(SLICE_PAGES) };
    }

    pub(super) fn pages() -> u64 {
        PAGES.with(Cell::get)
    }

    /// A copy of `pages` pages took `elapsed`: halve the slice after a slow full one,
    /// double it after a quick one.
    pub(super) fn took(pages: u64, elapsed: Duration) {
        PAGES.with(|p| {
            let now = p.get();
            if elapsed > TARGET && pages >= now {
                p.set((now / 2).max(MIN_PAGES));
            } else if elapsed < TARGET / 3 && pages >= now {
                p.set((now * 2).min(SLICE_PAGES));
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slow_copies_shrink_the_slice_and_quick_ones_grow_it_back() {
            std::thread::spawn(|| {
                assert_eq!(pages(), SLICE_PAGES);
                took(SLICE_PAGES, TARGET * 2);
                assert_eq!(pages(), SLICE_PAGES / 2);
                for _ in 0..10 {
                    took(pages(), TARGET * 2);
                }
                assert_eq!(pages(), MIN_PAGES);
                // A short copy (the end of a piece) says nothing about a full one.
                took(1, Duration::ZERO);
                assert_eq!(pages(), MIN_PAGES);
                for _ in 0..10 {
                    took(pages(), Duration::from_micros(10));
                }
                assert_eq!(pages(), SLICE_PAGES);
            })
            .join()
            .unwrap();
        }
    }
}

fn count_filled(report: &mut FillReport, fill: Fill<'_>, bytes: u64) {
    report.filled += bytes / PAGE_SIZE;
    if matches!(fill, Fill::Zero) {
        report.zeroed += bytes / PAGE_SIZE;
    }
}
