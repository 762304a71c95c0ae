//! Background fill: copy whatever nobody faulted on.
//!
//! Each step claims one bounded chunk, fetches it without holding any lock, and copies
//! it under the task's shared gate, one `transfer::SLICE_PAGES` ioctl at a time. A fault
//! never waits for more than one such ioctl: the fault thread serves faults on its own
//! and only needs the exclusive gate to read messages; once it asks for it, fill hands
//! it over after the ioctl under way (`gate.rs`) and re-reads its claim afterwards.
//!
//! Order: working-set pages (`--prefetch-ws`), then policy hints, then every task's
//! pending pages in address order. The working set goes before hints because it is
//! known to be needed, where a hint is a guess from the neighbourhood of one fault
//! (on a scattered working set, hints ahead of it starved it: 1.5x slower first
//! pass in the bench's working-set scenario). Before RESTORE_FINISHED only the working
//! set is fetched (the restored tasks are not running yet, so those pages are in place
//! before the process first needs them), unless `early_fill` says to fetch everything
//! then: the restore's own last steps run on one CPU, and a fill that waits for them
//! leaves the others idle (a 1 GiB restore spends ~40 ms there).
//!
//! Where in a task each job claims: `stripes.rs` (jobs far apart, not chunk by chunk
//! behind one cursor).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ranges::Claim;

use super::notify::lock;
use super::shared::{Hint, Shared};
use super::task::{Task, TaskState};
use super::transfer::{fill_claim, Copier, Fill};
use super::{EngineError, EngineEvent, PageData, Priority};

/// How long a job with nothing to claim sleeps when nothing will be due sooner (new
/// work wakes it earlier: `Shared::bump_work`).
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How long to wait for the fault thread to drain the event that made COPY return
/// EAGAIN before trying again anyway.
const CHANGING_WAIT: Duration = Duration::from_millis(10);
/// Longest wait for a claim's bytes between two asks: a safety net only, the source's
/// waker ends the wait when anything completes.
const SOURCE_WAIT: Duration = Duration::from_millis(50);
/// Before RESTORE_FINISHED a task's uffd arrives before the restorer registers its
/// VMAs; how long to leave a task alone after ENOENT said "not registered yet".
const UNREGISTERED_WAIT: Duration = Duration::from_millis(1);

pub(crate) fn run(shared: Arc<Shared>, job: usize) {
    let mut scratch = Vec::new();
    let mut forgot_absent = false;
    let mut idle_policy = false;
    while !shared.stopping.load(SeqCst) {
        let generation = shared.work_generation();
        let finished = shared.restore_finished.load(SeqCst);
        if finished && !forgot_absent {
            forget_absent_working_sets(&shared);
            forgot_absent = true;
        }
        if shared.prefetch.just_emptied() {
            let pages = shared
                .all_tasks()
                .iter()
                .map(|t| t.counters.prefetched.load(Relaxed))
                .sum();
            shared.notifier.send(EngineEvent::WorkingSetFetched {
                pages,
                elapsed: shared.started.elapsed(),
            });
        }
        match next_claim(&shared, finished, job) {
            Some((task, id, claim, who)) => {
                // A working set is known to be needed: it is fetched at normal priority,
                // ahead of the restore's own last steps; what comes after it gives way
                // (`niceness.rs`). Bench, working-set scenario: first loop 0.33 s with the
                // prefetch at normal priority, 0.68 s with it as SCHED_IDLE. (No claim
                // comes before the working set is known: it is set before any task.)
                if !idle_policy
                    && !matches!(who, Copier::Prefetch { .. })
                    && shared.prefetch.is_empty()
                {
                    super::niceness::fill_thread(job, shared.config.jobs);
                    idle_policy = true;
                }
                super::read_ahead::announce(&shared, &task, &claim, who, job);
                fill_one(&shared, &task, id, claim, who, generation, &mut scratch)
            }
            // Working-set pages wait for registration, which sends no wake-up: poll.
            None if !finished && !shared.prefetch.is_empty() => {
                shared.wait_work(generation, UNREGISTERED_WAIT);
            }
            None => {
                shared.wait_work(generation, idle_wait(&shared, Instant::now()));
            }
        }
    }
}

/// How long a job with nothing to claim may sleep: until the first task that is only
/// being left alone for a while (the pause between registration probes) may be
/// claimed from again, at most IDLE_WAIT. Those windows end without a
/// wake-up (a probe's answer does wake the jobs: `fill_one`);
/// sleeping the full IDLE_WAIT through them left one of two jobs idle for 50 ms at a
/// time while the other probed (perf sched, 1 GiB --jobs 2: about 100 ms of a 0.3 s
/// restore with both CPUs idle and pages still pending).
fn idle_wait(shared: &Shared, now: Instant) -> Duration {
    let due = shared
        .all_tasks()
        .iter()
        .filter_map(|task| {
            let st = task.state();
            if st.exited || st.retired || st.pending.is_empty() {
                return None;
            }
            st.prefetch_not_before.filter(|&t| t > now)
        })
        .min();
    due.map_or(IDLE_WAIT, |t| (t - now).min(IDLE_WAIT))
}

/// After RESTORE_FINISHED every task has arrived: a working set whose task did not
/// would keep the queue from ever running dry. (One whose task exits later is dropped
/// by `next_claim`.)
fn forget_absent_working_sets(shared: &Shared) {
    if shared.prefetch.is_empty() {
        return;
    }
    // Task states first, the queue lock after: next_claim holds a state lock while it
    // takes the queue lock, so taking them the other way round could deadlock.
    let live: Vec<u32> = shared
        .all_tasks()
        .iter()
        .filter(|t| {
            t.parent.is_none() && {
                let st = t.state();
                !st.exited && !st.retired
            }
        })
        .map(|t| t.pid)
        .collect();
    shared.prefetch.retain(|pid| live.contains(&pid));
}

/// Claims the next chunk and says who copies it.
fn next_claim(
    shared: &Shared,
    restore_finished: bool,
    job: usize,
) -> Option<(Arc<Task>, u64, Claim, Copier)> {
    let chunk = shared.config.chunk_pages;
    let tasks = shared.all_tasks();
    let now = Instant::now();
    if !shared.prefetch.is_empty() {
        // Forked children share the parent's pid but not its future: the working set
        // is the dump task's own.
        for task in tasks.iter().filter(|t| t.parent.is_none()) {
            let mut st = task.state();
            if st.exited || st.retired {
                // Lock order as in `claim`: this task's state, then the queues.
                shared.prefetch.retain(|pid| pid != task.pid);
                continue;
            }
            if !restore_finished
                && (st.probe_in_flight.is_some() || st.prefetch_not_before.is_some_and(|t| t > now))
            {
                continue;
            }
            let probing = !restore_finished && !st.prefetch_registered;
            if let Some(claim) =
                shared
                    .prefetch
                    .claim(task.pid, &mut st.pending, if probing { 1 } else { chunk })
            {
                let id = st.inflight.add(claim);
                // Other fill threads leave the task alone until the probe answered.
                st.probe_in_flight = probing.then_some(id);
                return Some((
                    task.clone(),
                    id,
                    claim,
                    Copier::Prefetch {
                        early: !restore_finished,
                    },
                ));
            }
        }
    }
    if !restore_finished {
        return if shared.config.early_fill {
            early_claim(&tasks, job, chunk, now)
        } else {
            None
        };
    }
    if let Some(found) = hinted_claim(shared, &tasks, chunk) {
        return Some((found.0, found.1, found.2, Copier::Background));
    }
    for task in &tasks {
        let mut st = task.state();
        if st.exited || st.retired {
            continue;
        }
        let st = &mut *st;
        if let Some(claim) = st.stripes.take(&mut st.pending, job, chunk) {
            let id = st.inflight.add(claim);
            return Some((task.clone(), id, claim, Copier::Background));
        }
    }
    None
}

/// Before RESTORE_FINISHED (with `early_fill`): address-order chunks as after it, but a
/// task is probed one page at a time until a copy shows its VMAs registered (invariant
/// 5), exactly as early prefetch does.
fn early_claim(
    tasks: &[Arc<Task>],
    job: usize,
    chunk: u64,
    now: Instant,
) -> Option<(Arc<Task>, u64, Claim, Copier)> {
    for task in tasks {
        let mut st = task.state();
        if st.exited
            || st.retired
            || st.probe_in_flight.is_some()
            || st.prefetch_not_before.is_some_and(|t| t > now)
        {
            continue;
        }
        let probing = !st.prefetch_registered;
        let st = &mut *st;
        if let Some(claim) = st
            .stripes
            .take(&mut st.pending, job, if probing { 1 } else { chunk })
        {
            let id = st.inflight.add(claim);
            st.probe_in_flight = probing.then_some(id);
            return Some((task.clone(), id, claim, Copier::Early));
        }
    }
    None
}

/// Policy hints, most recent last; a hint outlives its first chunk.
fn hinted_claim(
    shared: &Shared,
    tasks: &[Arc<Task>],
    chunk: u64,
) -> Option<(Arc<Task>, u64, Claim)> {
    loop {
        let hint = lock(&shared.hints).pop_front()?;
        for task in tasks.iter().filter(|t| t.pid == hint.pid) {
            let mut st = task.state();
            if st.exited || st.retired {
                continue;
            }
            if let Some(claim) = st.pending.take_within(hint.addr, hint.end, chunk) {
                let id = st.inflight.add(claim);
                drop(st);
                if claim.end < hint.end {
                    lock(&shared.hints).push_front(Hint {
                        addr: claim.end,
                        ..hint
                    });
                }
                return Some((task.clone(), id, claim));
            }
        }
    }
}

fn fill_one(
    shared: &Shared,
    task: &Task,
    id: u64,
    claim: Claim,
    who: Copier,
    generation: u64,
    scratch: &mut Vec<u8>,
) {
    let priority = match who {
        Copier::Prefetch { .. } => Priority::WorkingSet,
        _ => Priority::Background,
    };
    // Invariant 8: the claim stays in flight while its bytes are on their way (nobody
    // else fetches or copies them; a fault on one of them parks in `awaited` and hurries
    // the source), and this job waits with no lock held, woken by the source's waker.
    let fetched = loop {
        let seen = shared.work_generation();
        let fetched = shared.source.pages(
            task.pid,
            claim.img_start,
            claim.len() as usize,
            scratch,
            priority,
        );
        if !matches!(fetched, Ok(PageData::Pending)) {
            break fetched;
        }
        if shared.stopping.load(SeqCst) || !task.state().inflight.has(id) {
            // Stopping: unserved pages are poisoned from pending and in flight alike.
            // Claim gone: the task exited and its exit counted the pages.
            return;
        }
        shared.wait_work(seen, SOURCE_WAIT);
    };
    let fill = match fetched {
        Ok(PageData::Bytes(data)) if data.len() as u64 == claim.len() => Fill::Bytes {
            img_start: claim.img_start,
            data,
        },
        Ok(PageData::Zero) => Fill::Zero,
        Ok(PageData::Pending) => unreachable!("waited for above"),
        Ok(PageData::Bytes(data)) => {
            let got = data.len();
            put_back(&mut task.state(), id);
            let want = claim.len() as usize;
            return shared.fail(EngineError::ShortData {
                pid: task.pid,
                img_addr: claim.img_start,
                got,
                want,
            });
        }
        Err(e) => {
            put_back(&mut task.state(), id);
            return shared.fail(e.into());
        }
    };
    let Some(report) = fill_claim(shared, task, id, fill, who) else {
        let probe_answered = task.state().answered(id);
        if probe_answered {
            shared.bump_work();
        }
        return;
    };
    let mut st = task.state();
    let probe_answered = st.answered(id);
    let early = matches!(who, Copier::Prefetch { early: true } | Copier::Early);
    let not_yet = early && !report.leftover.is_empty() && !report.gone && report.error.is_none();
    if not_yet {
        st.prefetch_not_before = Some(Instant::now() + UNREGISTERED_WAIT);
        st.prefetch_registered = false;
    } else if early && report.filled > 0 {
        st.prefetch_not_before = None;
        st.prefetch_registered = true;
    }
    let notify = !st.awaited.is_empty() || st.pending.is_empty();
    drop(st);
    if notify {
        // Parked faults may be settled now, or the task may be ready to retire.
        shared.poke();
    }
    if not_yet && matches!(who, Copier::Prefetch { .. }) {
        // Back in pending already; a working set's pages go back to its front too, so
        // they go first once the restorer has registered their VMA.
        shared
            .prefetch
            .put_front(task.pid, report.leftover.iter().map(|r| (r.start, r.end)));
    }
    if probe_answered {
        // Jobs that found the task probed may claim from it again (after the page is
        // back in front, or the next probe would be another page's).
        shared.bump_work();
    }
    if not_yet {
        return;
    }
    if !report.leftover.is_empty() && !report.gone && report.error.is_none() {
        // EAGAIN: an event is unread. Wait for the fault thread to drain it rather than
        // spinning on the same pages.
        shared.wait_work(generation, CHANGING_WAIT);
    }
}

/// Claim `id` was not filled: its pages go back to pending (and a probe counts as answered).
fn put_back(st: &mut TaskState, id: u64) {
    let pieces = st.inflight.finish(id);
    st.put_back(pieces);
    let _ = st.answered(id);
}
