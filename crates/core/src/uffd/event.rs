//! Batched reads of uffd messages, turned into owned values.

use std::os::fd::OwnedFd;

use userfaultfd::{Event, EventBuffer, Uffd};

use super::{uffd_into_owned, UffdError};

/// One message from a uffd. Addresses are run-time addresses of the task.
#[derive(Debug)]
pub enum UffdEvent {
    Fault {
        addr: u64,
        write: bool,
    },
    /// The task forked; `uffd` is the child's new descriptor, already installed in us.
    Fork {
        uffd: OwnedFd,
    },
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    Remove {
        start: u64,
        end: u64,
    },
    Unmap {
        start: u64,
        end: u64,
    },
    /// A message code this build does not know; reading it already completed it.
    Unknown(u8),
}

impl UffdEvent {
    pub fn is_fault(&self) -> bool {
        matches!(self, UffdEvent::Fault { .. })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// `n` messages were appended.
    Read(usize),
    /// Nothing queued (EAGAIN).
    Empty,
    /// read returned 0: the uffd has no mm behind it any more.
    Closed,
}

/// Reads one batch (up to the buffer's size) and appends it to `out`.
pub fn read_events(
    uffd: &Uffd,
    buf: &mut EventBuffer,
    out: &mut Vec<UffdEvent>,
) -> Result<ReadStatus, UffdError> {
    let events = match uffd.read_events(buf) {
        Ok(events) => events,
        Err(userfaultfd::Error::ReadEof) => return Ok(ReadStatus::Closed),
        Err(e) => return Err(UffdError::Read(e.to_string())),
    };
    let before = out.len();
    for event in events {
        out.push(match event {
            Ok(event) => convert(event),
            Err(userfaultfd::Error::UnrecognizedEvent(code)) => UffdEvent::Unknown(code),
            Err(e) => return Err(UffdError::Read(e.to_string())),
        });
    }
    Ok(match out.len() - before {
        0 => ReadStatus::Empty,
        n => ReadStatus::Read(n),
    })
}

fn convert(event: Event) -> UffdEvent {
    match event {
        Event::Pagefault { rw, addr, .. } => UffdEvent::Fault {
            addr: addr as u64,
            write: rw == userfaultfd::ReadWrite::Write,
        },
        // The kernel installed this descriptor for us while we read the FORK message.
        Event::Fork { uffd } => UffdEvent::Fork {
            uffd: uffd_into_owned(uffd),
        },
        Event::Remap { from, to, len } => UffdEvent::Remap {
            from: from as u64,
            to: to as u64,
            len: len as u64,
        },
        Event::Remove { start, end } => UffdEvent::Remove {
            start: start as u64,
            end: end as u64,
        },
        Event::Unmap { start, end } => UffdEvent::Unmap {
            start: start as u64,
            end: end as u64,
        },
    }
}
