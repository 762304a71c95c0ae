//! The daemon's end of a real guardian process (the `lazy-pages-guardian` binary the
//! build puts in the repository root): a guardian that stops reading must not stall the
//! journal (issue 20, item 5), and its death is reported when it happens, once.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazy_pages_core::engine::{Journal, SpaceEvent};
use lazy_pages_core::guardian::link::{GuardianConfig, GuardianLink};
use lazy_pages_core::ranges::{LazyRange, LazyRanges};

fn guardian_program() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../lazy-pages-guardian"
    ));
    assert!(
        path.exists(),
        "{} is missing: `npm run build:guardian` builds it",
        path.display()
    );
    path
}

/// A guardian of our own for a fresh work dir, with the loss reports on `lost`.
fn start(dir: &std::path::Path) -> (Arc<GuardianLink>, mpsc::Receiver<(Instant, String)>) {
    let config = GuardianConfig {
        program: guardian_program(),
        resume_timeout: Duration::from_secs(30),
        log_file: Some(dir.join("log")),
    };
    let link = Arc::new(GuardianLink::spawn(dir, &config, "dump-a").unwrap());
    let (tx, rx) = mpsc::channel();
    link.watch(move |line| {
        let _ = tx.send((Instant::now(), line));
    });
    (link, rx)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X'))
    })
}

#[test]
fn a_stopped_guardian_costs_one_bounded_wait_then_is_ended_and_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (link, lost) = start(dir.path());
    let pid = link.pid();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let ranges: LazyRanges = [LazyRange::new(0x10000, 0x20000, 0)].into_iter().collect();
    link.task(0, 77, None, r.as_fd(), &ranges).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();

    // Far more records than the socket holds, as a process that drops and faults pages
    // in a loop makes; each on its own thread's clock (the engine writes them under a
    // task's gate). Done on a thread: with a blocking journal this never returns.
    let writer = {
        let link = link.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let start = Instant::now();
            for i in 0..20_000u64 {
                let t = Instant::now();
                link.event(
                    0,
                    &SpaceEvent::Remove {
                        start: 0x10000 + (i % 16) * 0x1000,
                        end: 0x11000 + (i % 16) * 0x1000,
                    },
                )
                .unwrap();
                slowest = slowest.max(t.elapsed());
            }
            (slowest, start.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the journal stalled behind a stopped guardian"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (slowest, total) = writer.join().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "one record waited {slowest:?}"
    );
    let (_, line) = lost
        .recv_timeout(Duration::from_secs(5))
        .expect("the loss is reported");
    assert!(
        line.contains(&format!("lost the guardian (pid {pid}")) && line.contains("ended"),
        "{line}"
    );
    // Ended, not left to wake up later with half a record.
    let gone = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(
            Instant::now() < gone,
            "the stopped guardian {pid} was not ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        lost.recv_timeout(Duration::from_millis(500)).is_err(),
        "said once"
    );
    eprintln!("20000 records behind a stopped guardian: {total:?} in all, slowest {slowest:?}");
}

#[test]
fn a_guardian_killed_is_reported_when_it_dies_not_at_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let (link, lost) = start(dir.path());
    let pid = link.pid();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (at, line) = lost
        .recv_timeout(Duration::from_secs(5))
        .expect("reported without any record written");
    assert!(
        line.contains(&format!("lost the guardian (pid {pid}")) && line.contains("died"),
        "{line}"
    );
    assert!(
        at - killed < Duration::from_secs(1),
        "reported {:?} after the kill",
        at - killed
    );
    // Later records are not attempted and say nothing more.
    link.event(
        0,
        &SpaceEvent::Unmap {
            start: 0,
            end: 0x1000,
        },
    )
    .unwrap();
    link.quit();
    assert!(
        lost.recv_timeout(Duration::from_millis(300)).is_err(),
        "said once"
    );
    eprintln!("guardian death reported {:?} after the kill", at - killed);
}

#[test]
fn quitting_is_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (link, lost) = start(dir.path());
    link.quit();
    assert!(
        lost.recv_timeout(Duration::from_millis(800)).is_err(),
        "a guardian told to quit is not lost"
    );
}
