//! Scheduling priority of the engine's own threads: faults first, on the CPU too.
//!
//! A background fill thread never sleeps while pages are pending, so on a small machine
//! it holds a CPU that a woken fault thread (or the restored process itself, or the
//! policy layer) then waits for. A lower nice value is not enough: the scheduler lets a
//! running thread finish its time slice before a woken one of higher priority gets the
//! CPU, so with two fill threads on this 2-vCPU VM faults during the fill still waited
//! for a CPU (p99 4 ms, one scheduler tick, with nice +10). Threads of policy
//! SCHED_IDLE are preempted the moment any normal thread wakes, and a thread may put
//! itself there without privilege: fill threads do, so they run on whatever CPU time
//! nobody else wants. A restored process that keeps every CPU busy therefore gets its
//! pages by faulting (served at once) more than by the fill. The fault thread raises
//! its own priority (nice -10) where allowed (root or CAP_SYS_NICE).
//!
//! Nothing here can fail the engine: a priority that cannot be set is left as it is
//! (a fill thread then falls back to nice +10).

/// The fill threads' nice value, relative to none (absolute: setpriority sets it).
const FILL_NICE: i32 = 10;
/// The fault thread's nice value where the process may raise it.
const FAULT_NICE: i32 = -10;

/// Called by background fill thread `job` (of `jobs`) on itself.
pub(crate) fn fill_thread(job: usize, jobs: usize) {
    // SCHED_IDLE threads weigh almost nothing to the load balancer, which then leaves
    // two of them on one CPU (measured: two fill jobs no faster than one). With more
    // than one job each gets its own CPU of those the process may use instead; a single
    // job stays free to move to whichever CPU is idle.
    if jobs > 1 {
        pin_to_own_cpu(job);
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param; on Linux the pid argument is a thread id,
    // so this changes the calling thread's policy only.
    let idle = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) } == 0;
    if !idle {
        set_own(FILL_NICE.max(current()));
    }
}

/// Called by the fault thread on itself.
pub(crate) fn fault_thread() {
    set_own(FAULT_NICE.min(current()));
}

fn pin_to_own_cpu(job: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `allowed` is a live cpu_set_t of `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return;
    }
    // SAFETY: CPU_ISSET reads the set within its fixed size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect();
    if cpus.len() < 2 {
        return;
    }
    // SAFETY: as above; `one` holds a single CPU the process may already use.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpus[job % cpus.len()], &mut one) };
    // SAFETY: `one` is a live cpu_set_t of `size` bytes; pid 0 is this thread.
    let _ = unsafe { libc::sched_setaffinity(0, size, &one) };
}

fn current() -> i32 {
    // SAFETY: getpriority has no memory effects; on Linux PRIO_PROCESS with a thread id
    // reads that thread's nice value (gettid is the calling thread).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

fn set_own(nice: i32) {
    // SAFETY: as above; setpriority on our own thread id changes only this thread.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fill_thread_gives_way_to_every_normal_thread_and_only_it_changes() {
        let t = std::thread::spawn(|| {
            super::fill_thread(0, 1);
            // SAFETY: sched_getscheduler reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(libc::gettid()) }
        });
        assert_eq!(t.join().unwrap(), libc::SCHED_IDLE);
        // SAFETY: as above, for this thread.
        assert_eq!(
            unsafe { libc::sched_getscheduler(libc::gettid()) },
            libc::SCHED_OTHER,
            "only the calling thread changes"
        );
    }
}
