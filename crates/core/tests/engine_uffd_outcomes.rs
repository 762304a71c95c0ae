//! The kernel answers the engine's error handling relies on, checked on a real uffd.

mod engine_support;

use std::time::Duration;

use engine_support::*;
use lazy_pages_core::uffd::{self, EventBuffer, FillOutcome, ReadStatus, UffdEvent};

fn handle(region: &Region) -> uffd::Uffd {
    uffd::uffd_from_owned(region.uffd())
}

#[test]
fn copy_and_zeropage_outcomes() {
    let region = Region::new(8);
    let u = handle(&region);
    let page = vec![0xabu8; PS];
    let four = vec![0xcdu8; 4 * PS];

    assert_eq!(uffd::copy(&u, region.page_addr(2), &page).unwrap(), FillOutcome::Done(PS as u64));
    // First page already there: EEXIST, nothing copied.
    assert_eq!(uffd::copy(&u, region.page_addr(2), &page).unwrap(), FillOutcome::Exists);
    assert_eq!(uffd::zeropage(&u, region.page_addr(2), PS as u64).unwrap(), FillOutcome::Exists);
    // Stops in front of the existing page: EAGAIN with a byte count = Partial.
    assert_eq!(uffd::copy(&u, region.page_addr(0), &four).unwrap(), FillOutcome::Partial(2 * PS as u64));
    assert_eq!(uffd::zeropage(&u, region.page_addr(3), 2 * PS as u64).unwrap(), FillOutcome::Done(2 * PS as u64));
    // SAFETY: pages of the live region that are now filled.
    unsafe {
        assert_eq!(check_page(region.page_addr(0), |_| 0xcd), Ok(()));
        assert_eq!(check_page(region.page_addr(2), |_| 0xab), Ok(()));
        assert_eq!(check_page(region.page_addr(4), |_| 0), Ok(()));
    }
    // Outside any registered range: ENOENT = Unmapped.
    let other = Region::new(1);
    assert_eq!(uffd::copy(&u, other.addr, &page).unwrap(), FillOutcome::Unmapped);
    assert_eq!(uffd::zeropage(&u, other.addr, PS as u64).unwrap(), FillOutcome::Unmapped);
    // Real errors stay errors, with the address in the message.
    let err = uffd::copy(&u, region.page_addr(5) + 1, &page).unwrap_err();
    assert!(err.to_string().contains(&format!("{:#x}", region.page_addr(5) + 1)), "{err}");
}

#[test]
fn unread_remove_event_makes_copy_answer_changing() {
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
    assert_eq!(uffd::copy(&u, region.page_addr(2), &page).unwrap(), FillOutcome::Changing);

    let mut buf = EventBuffer::new(8);
    let mut events = Vec::new();
    assert_eq!(uffd::read_events(&u, &mut buf, &mut events).unwrap(), ReadStatus::Read(1));
    assert!(matches!(events[0], UffdEvent::Remove { start, end } if start == addr && end == addr + PS as u64));
    assert_eq!(madviser.join().unwrap(), 0);
    assert_eq!(uffd::copy(&u, region.page_addr(2), &page).unwrap(), FillOutcome::Done(PS as u64));
    assert_eq!(uffd::read_events(&u, &mut buf, &mut events).unwrap(), ReadStatus::Empty);
}
