//! The per-task gate: a read-write lock where a waiting writer really goes first.
//!
//! `std::sync::RwLock` blocks new readers while a writer waits, but when the last reader
//! leaves it clears the "writer waiting" state and wakes the writer, which then has to
//! win a race against any reader arriving in the meantime. Background fill re-takes the
//! shared gate microseconds after releasing it, long before the woken fault thread runs,
//! so the fault thread lost that race chunk after chunk: measured drains of 2-115 ms
//! behind a fill that never waited, i.e. faults served that late.
//!
//! Here a writer announces itself (`writers`) before it locks; readers that come later
//! wait until no writer is waiting or holding the gate, and background fill checks
//! `writer_waiting` between its ioctls to hand the gate over early. A writer therefore
//! waits for at most the ioctls already under way. It spins briefly first: those are
//! bounded (`transfer::SLICE_PAGES`), and a futex sleep plus wake-up on another CPU
//! costs about as much again.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use super::notify::lock;

/// How long a writer spins for readers to leave before sleeping.
const WRITER_SPIN: Duration = Duration::from_micros(200);
/// Busy tries before the writer starts yielding its CPU between tries (~1-2 µs).
const SPIN_TRIES: u32 = 64;

pub(crate) struct Gate<T> {
    lock: RwLock<T>,
    /// Writers waiting for or holding `lock`; readers stay out while it is non-zero.
    writers: AtomicU32,
    idle: Mutex<()>,
    writers_gone: Condvar,
}

pub(crate) struct GateWriteGuard<'a, T> {
    guard: Option<RwLockWriteGuard<'a, T>>,
    gate: &'a Gate<T>,
}

impl<T> Gate<T> {
    pub fn new(value: T) -> Self {
        Gate { lock: RwLock::new(value), writers: AtomicU32::new(0), idle: Mutex::new(()), writers_gone: Condvar::new() }
    }

    /// Shared access, after any writer that is waiting.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        if self.writers.load(SeqCst) != 0 {
            let mut idle = lock(&self.idle);
            while self.writers.load(SeqCst) != 0 {
                idle = self.writers_gone.wait(idle).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access; from now on no new reader gets in before this writer.
    pub fn write(&self) -> GateWriteGuard<'_, T> {
        self.writers.fetch_add(1, SeqCst);
        let deadline = Instant::now() + WRITER_SPIN;
        let mut tries = 0u32;
        let guard = loop {
            match self.lock.try_write() {
                Ok(g) => break g,
                Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(TryLockError::WouldBlock) if tries < SPIN_TRIES => std::hint::spin_loop(),
                // With more runnable threads than CPUs the reader we wait for may be
                // waiting for this very CPU: give it up now and then instead of
                // burning the whole spin (measured: a third of the fault thread's
                // time in this loop while a working set was prefetched).
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::yield_now(),
                Err(TryLockError::WouldBlock) => break self.lock.write().unwrap_or_else(|e| e.into_inner()),
            }
            tries += 1;
        };
        GateWriteGuard { guard: Some(guard), gate: self }
    }

    /// A writer is waiting (or holding the gate): a reader should let go soon.
    pub fn writer_waiting(&self) -> bool {
        self.writers.load(SeqCst) != 0
    }
}

impl<T> Deref for GateWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("gate guard")
    }
}

impl<T> DerefMut for GateWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("gate guard")
    }
}

impl<T> Drop for GateWriteGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.gate.writers.fetch_sub(1, SeqCst) == 1 {
            // Under `idle`, so a reader between its check and its wait cannot miss this.
            let _idle = lock(&self.gate.idle);
            self.gate.writers_gone.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A reader re-taking the gate back to back (as background fill does) must not keep
    /// a writer out: each write waits for about one read hold, not for luck.
    #[test]
    fn writer_is_not_starved_by_back_to_back_readers() {
        let gate = Arc::new(Gate::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let g = gate.read();
                    let until = Instant::now() + Duration::from_micros(100);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    drop(g);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        let mut worst = Duration::ZERO;
        for _ in 0..200 {
            let t = Instant::now();
            *gate.write() += 1;
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, SeqCst);
        reader.join().unwrap();
        assert_eq!(*gate.read(), 200);
        // One 100 µs read hold plus scheduling slack.
        assert!(worst < Duration::from_millis(20), "writer waited {worst:?}");
    }

    #[test]
    fn readers_wait_for_a_waiting_writer() {
        let gate = Arc::new(Gate::new(()));
        let r = gate.read();
        let writer = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _w = gate.write();
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        while !gate.writer_waiting() {
            std::thread::yield_now();
        }
        drop(r);
        let t = Instant::now();
        let _r2 = gate.read();
        // The writer got the gate first and held it ~20 ms.
        assert!(t.elapsed() >= Duration::from_millis(10));
        writer.join().unwrap();
    }
}
