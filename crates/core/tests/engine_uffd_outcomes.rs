//! The kernel answers the engine's error handling relies on, checked on a real uffd.

mod engine_support;

use std::sync::Mutex;
use std::time::Duration;

use engine_support::*;
use lazy_pages_core::uffd::{self, EventBuffer, FillOutcome, ReadStatus, UffdEvent};

/// One test at a time. These map, move and unmap registered ranges with every
/// non-cooperative event on, in one address space: run side by side, one test's new
/// mapping could land in the hole another's mremap left, registered on a uffd that
/// reads no UNMAP, and a later munmap there waited for that read forever (the remap
/// test hung in munmap twice on a loaded machine).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle(region: &Region) -> uffd::Uffd {
    uffd::uffd_from_owned(region.uffd())
}

#[test]
fn copy_and_zeropage_outcomes() {
    let _serial = serial();
    let region = Region::new(8);
    let u = handle(&region);
    let page = vec![0xabu8; PS];
    let four = vec![0xcdu8; 4 * PS];

    assert_eq!(
        uffd::copy(&u, region.page_addr(2), &page).unwrap(),
        FillOutcome::Done(PS as u64)
    );
    // First page already there: EEXIST, nothing copied.
    assert_eq!(
        uffd::copy(&u, region.page_addr(2), &page).unwrap(),
        FillOutcome::Exists
    );
    assert_eq!(
        uffd::zeropage(&u, region.page_addr(2), PS as u64).unwrap(),
        FillOutcome::Exists
    );
    // Stops in front of the existing page: EAGAIN with a byte count = Partial.
    assert_eq!(
        uffd::copy(&u, region.page_addr(0), &four).unwrap(),
        FillOutcome::Partial(2 * PS as u64)
    );
    assert_eq!(
        uffd::zeropage(&u, region.page_addr(3), 2 * PS as u64).unwrap(),
        FillOutcome::Done(2 * PS as u64)
    );
    // SAFETY: pages of the live region that are now filled.
    unsafe {
        assert_eq!(check_page(region.page_addr(0), |_| 0xcd), Ok(()));
        assert_eq!(check_page(region.page_addr(2), |_| 0xab), Ok(()));
        assert_eq!(check_page(region.page_addr(4), |_| 0), Ok(()));
    }
    // Outside any registered range: ENOENT = Unmapped.
    let other = Region::new(1);
    assert_eq!(
        uffd::copy(&u, other.addr, &page).unwrap(),
        FillOutcome::Unmapped
    );
    assert_eq!(
        uffd::zeropage(&u, other.addr, PS as u64).unwrap(),
        FillOutcome::Unmapped
    );
    // Real errors stay errors, with the address in the message.
    let err = uffd::copy(&u, region.page_addr(5) + 1, &page).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{:#x}", region.page_addr(5) + 1)),
        "{err}"
    );
}

#[test]
fn unread_remove_event_makes_copy_answer_changing() {
    let _serial = serial();
    let region = Region::new(4);
    let u = handle(&region);
    let addr = region.page_addr(0);
    // MADV_DONTNEED blocks in the kernel until its REMOVE message is read.
    let madviser = std::thread::spawn(move || {
        // SAFETY: page 0 of the live region.
        unsafe { libc::madvise(addr as *mut libc::c_void, PS, libc::MADV_DONTNEED) }
    });
    std::thread::sleep(Duration::from_millis(100));
    let page = vec![1u8; PS];
    assert_eq!(
        uffd::copy(&u, region.page_addr(2), &page).unwrap(),
        FillOutcome::Changing
    );

    let mut buf = EventBuffer::new(8);
    let mut events = Vec::new();
    assert_eq!(
        uffd::read_events(&u, &mut buf, &mut events).unwrap(),
        ReadStatus::Read(1)
    );
    assert!(
        matches!(events[0], UffdEvent::Remove { start, end } if start == addr && end == addr + PS as u64)
    );
    assert_eq!(madviser.join().unwrap(), 0);
    assert_eq!(
        uffd::copy(&u, region.page_addr(2), &page).unwrap(),
        FillOutcome::Done(PS as u64)
    );
    assert_eq!(
        uffd::read_events(&u, &mut buf, &mut events).unwrap(),
        ReadStatus::Empty
    );
}

/// What lets `uffd::copy` tell an mremap under way from a page that is gone for good
/// (it asks an ENOENT twice): while the REMAP is unread, a fill answers EAGAIN even at
/// the address the pages moved away from, where no VMA is left.
#[test]
fn unread_remap_makes_copy_at_the_old_place_answer_changing() {
    let _serial = serial();
    let mut region = Region::new(8);
    let u = handle(&region);
    let dest = Region::new(4);
    // SAFETY: plain mprotect of our own reservation.
    unsafe { libc::mprotect(dest.addr as *mut libc::c_void, 4 * PS, libc::PROT_NONE) };
    let (from, to) = (region.page_addr(2), dest.addr);
    // mremap blocks in the kernel until its REMAP message is read.
    let mover = std::thread::spawn(move || {
        // SAFETY: moves pages 2..6 of our region over our own reservation.
        unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                4 * PS,
                4 * PS,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            ) as u64
        }
    });
    // Queued means moved: the VMA change comes before the message.
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&u),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 10_000) },
        1,
        "no REMAP message within 10 s"
    );
    let page = vec![1u8; PS];
    assert_eq!(uffd::copy(&u, from, &page).unwrap(), FillOutcome::Changing);
    assert_eq!(uffd::copy(&u, to, &page).unwrap(), FillOutcome::Changing);

    let mut buf = EventBuffer::new(8);
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Read until mremap returns (it may also send UNMAP for the old range).
    while !mover.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "mremap still blocked; events so far: {events:?}"
        );
        if uffd::read_events(&u, &mut buf, &mut events).unwrap() == ReadStatus::Empty {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(mover.join().unwrap(), to);
    assert!(
        events.iter().any(|e| matches!(*e, UffdEvent::Remap { from: f, to: t, len } if f == from && t == to && len == 4 * PS as u64)),
        "{events:?}"
    );
    // Once read: nothing at the old place, the pages' new place is served.
    assert_eq!(uffd::copy(&u, from, &page).unwrap(), FillOutcome::Unmapped);
    assert_eq!(
        uffd::copy(&u, to, &page).unwrap(),
        FillOutcome::Done(PS as u64)
    );
    // SAFETY: page 0 of the moved span, just filled.
    assert_eq!(unsafe { check_page(to, |_| 1) }, Ok(()));
    // Closed before the regions go: unmapping registered pages would wait for an UNMAP
    // message nobody reads.
    drop(u);
    // And not unmapped at all: the test hung in that munmap on a loaded machine (waiting
    // for an UNMAP read), and twelve pages left to the process's exit cost nothing
    // (exit does not send UNMAP).
    region.pages = 0;
    let mut dest = dest;
    dest.pages = 0;
}
