//! The guardian's keeper against a real uffd of this process, with the test playing
//! the daemon: what it holds when the daemon goes away, what it poisons, what it hands
//! back. (The keeper runs on a thread here; in production it is its own process.)

mod engine_support;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use engine_support::*;
use lazy_pages_core::engine::SpaceEvent;
use lazy_pages_core::guardian::keeper::{self, KeeperConfig};
use lazy_pages_core::guardian::link::{GuardianError, GuardianLink};
use lazy_pages_core::guardian::wire::{self, Msg, NO_PARENT};
use lazy_pages_core::ranges::{LazyRange, LazyRanges};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    Data,
    Zero,
    Eio,
}

/// Reads page `i` of `region` from outside the fault path, as a debugger would.
fn read_page(region: &Region, i: usize) -> Seen {
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut buf = vec![0u8; PS];
    match std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, region.page_addr(i)) {
        Ok(()) if buf.iter().all(|&b| b == 0) => Seen::Zero,
        Ok(()) => Seen::Data,
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "page {i}: {e}");
            Seen::Eio
        }
    }
}

/// Starts a keeper on a thread; returns our (daemon) end and its exit status.
fn start_keeper(dir: &Path, resume_timeout: Duration) -> (OwnedFd, std::thread::JoinHandle<i32>) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let config = KeeperConfig {
        socket: dir.join("lazy-pages.guardian"),
        resume_timeout,
        log: Some(dir.join("log")),
        dump_id: None,
    };
    let keeper = std::thread::spawn(move || keeper::run(theirs, config));
    let Some(Msg::Hello { tasks: 0, .. }) = wire::recv(ours.as_fd()).unwrap() else {
        panic!("no hello")
    };
    assert!(matches!(
        wire::recv(ours.as_fd()).unwrap(),
        Some(Msg::EndOfState)
    ));
    (ours, keeper)
}

fn all_pages(region: &Region) -> LazyRanges {
    [LazyRange::new(
        region.addr,
        region.page_addr(region.pages),
        IMG_BASE,
    )]
    .into_iter()
    .collect()
}

/// Serves pages `[from, to)` of `region` as the daemon would.
fn copy_pages(uffd: &OwnedFd, region: &Region, from: usize, to: usize) {
    let uffd = lazy_pages_core::uffd::uffd_from_owned(uffd.try_clone().unwrap());
    let bytes = vec![0x5au8; (to - from) * PS];
    lazy_pages_core::uffd::copy(&uffd, region.page_addr(from), &bytes).unwrap();
}

#[test]
fn a_daemon_that_dies_unresumed_leaves_poison_never_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let region = Region::new(16);
    let uffd = region.uffd();
    let (daemon, keeper) = start_keeper(dir.path(), Duration::from_millis(300));

    wire::send_task(
        daemon.as_fd(),
        0,
        77,
        NO_PARENT,
        uffd.as_fd(),
        &all_pages(&region),
    )
    .unwrap();
    copy_pages(&uffd, &region, 0, 4);
    // MADV_DONTNEED of pages 8..10 as the daemon journals it: those must read as zeros,
    // not raise SIGBUS.
    let remove = SpaceEvent::Remove {
        start: region.page_addr(8),
        end: region.page_addr(10),
    };
    wire::send_msg(
        daemon.as_fd(),
        &Msg::Event {
            id: 0,
            event: remove,
        },
    )
    .unwrap();
    drop(uffd);
    drop(daemon); // the daemon dies: no Quit

    assert_eq!(keeper.join().unwrap(), 1, "no resume: poisoned, exit 1");
    let seen: Vec<Seen> = (0..16).map(|i| read_page(&region, i)).collect();
    let want: Vec<Seen> = (0..16)
        .map(|i| match i {
            0..4 => Seen::Data,
            8..10 => Seen::Zero,
            _ => Seen::Eio,
        })
        .collect();
    assert_eq!(seen, want);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("no daemon resumed within 0 s: poisoned 10 unserved lazy pages of 1 tasks"),
        "{log}"
    );
}

#[test]
fn a_resuming_daemon_gets_every_uffd_back_with_the_events_applied_and_a_second_is_turned_away() {
    let root = tempfile::tempdir().unwrap();
    // A work dir deeper than a sockaddr_un holds, as CRIU users have.
    let dir = root
        .path()
        .join("a-work-dir-nested-deeper-than-the-108-bytes-a-unix-socket-address-holds")
        .join("and-then-some");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(dir.join("lazy-pages.guardian").as_os_str().len() > 108);
    let dir = dir.as_path();
    let region = Region::new(16);
    let uffd = region.uffd();
    let (daemon, keeper) = start_keeper(dir, Duration::from_secs(30));

    let mut ranges = all_pages(&region);
    wire::send_task(daemon.as_fd(), 3, 77, NO_PARENT, uffd.as_fd(), &ranges).unwrap();
    wire::send_task(daemon.as_fd(), 5, 77, 3, uffd.as_fd(), &ranges).unwrap();
    wire::send_msg(daemon.as_fd(), &Msg::TaskDone { id: 3 }).unwrap();
    let unmap = SpaceEvent::Unmap {
        start: region.page_addr(0),
        end: region.page_addr(2),
    };
    let remap = SpaceEvent::Remap {
        from: region.page_addr(12),
        to: region.page_addr(2),
        len: 2 * PS as u64,
    };
    for event in [unmap, remap] {
        wire::send_msg(daemon.as_fd(), &Msg::Event { id: 5, event }).unwrap();
        event.apply(&mut ranges);
    }
    // criu restore's connection: the keeper holds a copy of our end until the restore finished.
    let (ours, criu) = std::os::unix::net::UnixStream::pair().unwrap();
    wire::send_restore_peer(daemon.as_fd(), 4242, ours.as_fd()).unwrap();
    drop(ours);
    drop(daemon);

    // The keeper notices the death on its own time; until then it answers busy.
    let (link, state) = loop {
        match GuardianLink::find(dir, dir, "dump-a") {
            Ok(Some(found)) => break found,
            Err(GuardianError::Busy { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        (
            state.restore_finished,
            state.restore_peer,
            state.lost_daemon
        ),
        (false, 4242, std::process::id() as i32)
    );
    assert_eq!(
        (state.tasks.len(), state.done_tasks),
        (1, 1),
        "the retired task was let go, and counted"
    );
    let task = &state.tasks[0];
    assert_eq!(
        (task.id, task.pid, task.parent),
        (0, 77, None),
        "renumbered from 0; its parent is gone"
    );
    assert_eq!(task.ranges, ranges);

    // With the daemon dead, criu's RESTORE_FINISHED still finds the socket open (no EPIPE,
    // which would make criu kill the tree it restored).
    (&criu)
        .write_all(&1u32.to_le_bytes())
        .expect("criu's end of its connection stays writable");
    match GuardianLink::find(dir, dir, "dump-a") {
        Err(GuardianError::Busy { daemon, .. }) => assert_eq!(daemon, std::process::id() as i32),
        other => panic!("a second daemon must be turned away, got {other:?}"),
    }
    link.quit();
    assert_eq!(keeper.join().unwrap(), 0);
    assert!(
        !dir.join("lazy-pages.guardian").exists(),
        "socket removed on exit"
    );
}

#[test]
fn a_daemon_with_another_dump_is_refused_and_the_guardian_keeps_holding_for_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let region = Region::new(8);
    let uffd = region.uffd();
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let config = KeeperConfig {
        socket: dir.join("lazy-pages.guardian"),
        resume_timeout: Duration::from_secs(30),
        log: Some(dir.join("log")),
        dump_id: Some("dump-x".into()),
    };
    let keeper = std::thread::spawn(move || keeper::run(theirs, config));
    assert!(matches!(
        wire::recv(ours.as_fd()).unwrap(),
        Some(Msg::Hello { tasks: 0, .. })
    ));
    assert!(matches!(
        wire::recv(ours.as_fd()).unwrap(),
        Some(Msg::EndOfState)
    ));
    wire::send_task(
        ours.as_fd(),
        0,
        77,
        NO_PARENT,
        uffd.as_fd(),
        &all_pages(&region),
    )
    .unwrap();
    drop(ours);

    let refused = loop {
        match GuardianLink::find(dir, Path::new("/images/y"), "dump-y") {
            Err(GuardianError::Busy { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => break other,
        }
    };
    match refused {
        Err(e @ GuardianError::OtherDump { .. }) => {
            let line = e.to_string();
            assert!(
                line.contains("another dump")
                    && line.contains("dump-x")
                    && line.contains("dump-y")
                    && line.contains("/images/y"),
                "{line}"
            );
        }
        other => panic!("another dump must be refused, got {other:?}"),
    }
    // Refused twice, undisturbed: the right dump still gets the task back.
    assert!(matches!(
        GuardianLink::find(dir, dir, "dump-y"),
        Err(GuardianError::OtherDump { .. })
    ));
    let (link, state) = GuardianLink::find(dir, dir, "dump-x")
        .unwrap()
        .expect("the guardian still holds the restore");
    assert_eq!(state.tasks.len(), 1);
    assert_eq!(
        state.lost_daemon,
        std::process::id() as i32,
        "the refused daemons were never taken for the lost one"
    );
    link.quit();
    assert_eq!(keeper.join().unwrap(), 0);
    assert!(!dir.join("log").exists(), "nothing poisoned, nothing said");
}
