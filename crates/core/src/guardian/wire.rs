//! The messages between a daemon and its guardian: one SOCK_SEQPACKET datagram each,
//! little-endian, first byte the kind. A datagram never splits or merges, so a reader
//! needs no framing state, and a task's uffd travels in the same datagram as its
//! description (SCM_RIGHTS), so the two can never be paired wrongly.
//!
//! Daemon -> guardian: `Claim` (first, on the resume socket), `Task` (+ uffd), `Ranges`
//! (more ranges of the last task), `Event`, `TaskDone`, `RestorePeer`,
//! `RestoreFinished`, `Quit`, `Abandon`.
//! Guardian -> daemon, once per connection: `Hello`, then the tasks it holds (`Task` +
//! uffd, `Ranges`), then `EndOfState`; or `Busy` when another daemon is connected; or
//! `Mismatch` when the claimed dump is not the one its tasks were restored from.

use std::io::IoSlice;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::engine::SpaceEvent;
use crate::ranges::{LazyRange, LazyRanges};

/// Largest datagram either side sends (well under the default socket buffer).
pub const MAX_MSG: usize = 64 * 1024;
/// Ranges per `Task`/`Ranges` datagram: 24 bytes each, so a datagram stays under MAX_MSG.
const RANGES_PER_MSG: usize = 2048;
pub const NO_PARENT: u32 = u32::MAX;

#[derive(Debug)]
pub enum Msg {
    /// `done_tasks`: tasks that had every page (or exited) before this hand-over.
    Hello {
        guardian_pid: u32,
        restore_finished: bool,
        restore_peer: i32,
        lost_daemon: i32,
        tasks: u32,
        done_tasks: u32,
    },
    Busy {
        daemon_pid: i32,
    },
    /// A resuming daemon's first word: the identity of the dump it would serve
    /// (`images::dump_identity`).
    Claim {
        dump_id: String,
    },
    /// The guardian's tasks come from another dump (its identity).
    Mismatch {
        dump_id: String,
    },
    /// `id` is the engine's task id; `fd` is set when received (always sent with one).
    Task {
        id: u32,
        pid: u32,
        parent: u32,
        ranges: Vec<LazyRange>,
        fd: Option<OwnedFd>,
    },
    Ranges {
        id: u32,
        ranges: Vec<LazyRange>,
    },
    EndOfState,
    Event {
        id: u32,
        event: SpaceEvent,
    },
    TaskDone {
        id: u32,
    },
    /// criu restore's pid and, when received, a copy of the daemon's end of its
    /// connection (always sent with one, by `send_restore_peer`).
    RestorePeer {
        pid: i32,
        conn: Option<OwnedFd>,
    },
    RestoreFinished,
    Quit,
    Abandon,
}

/// Sends one task as `Task` (+ its uffd) followed by as many `Ranges` as it needs.
pub fn send_task(
    sock: BorrowedFd<'_>,
    id: u32,
    pid: u32,
    parent: u32,
    uffd: BorrowedFd<'_>,
    ranges: &LazyRanges,
) -> nix::Result<()> {
    let all: Vec<LazyRange> = ranges.iter().collect();
    let mut chunks = all.chunks(RANGES_PER_MSG);
    let first = chunks.next().unwrap_or(&[]);
    let mut buf = vec![b'T'];
    put32(&mut buf, id);
    put32(&mut buf, pid);
    put32(&mut buf, parent);
    put_ranges(&mut buf, first);
    send(sock, &buf, Some(uffd.as_raw_fd()))?;
    for chunk in chunks {
        let mut buf = vec![b'R'];
        put32(&mut buf, id);
        put_ranges(&mut buf, chunk);
        send(sock, &buf, None)?;
    }
    Ok(())
}

/// Sends `RestorePeer` with a copy of our end of criu restore's connection.
pub fn send_restore_peer(sock: BorrowedFd<'_>, pid: i32, conn: BorrowedFd<'_>) -> nix::Result<()> {
    let mut buf = vec![b'P'];
    put32(&mut buf, pid as u32);
    send(sock, &buf, Some(conn.as_raw_fd()))
}

/// Sends any message but `Task` and `RestorePeer` (use `send_task`, `send_restore_peer`).
pub fn send_msg(sock: BorrowedFd<'_>, msg: &Msg) -> nix::Result<()> {
    let mut buf = Vec::with_capacity(32);
    match msg {
        Msg::Hello {
            guardian_pid,
            restore_finished,
            restore_peer,
            lost_daemon,
            tasks,
            done_tasks,
        } => {
            buf.push(b'H');
            put32(&mut buf, *guardian_pid);
            buf.push(u8::from(*restore_finished));
            put32(&mut buf, *restore_peer as u32);
            put32(&mut buf, *lost_daemon as u32);
            put32(&mut buf, *tasks);
            put32(&mut buf, *done_tasks);
        }
        Msg::Busy { daemon_pid } => {
            buf.push(b'B');
            put32(&mut buf, *daemon_pid as u32);
        }
        Msg::Claim { dump_id } | Msg::Mismatch { dump_id } => {
            buf.push(if matches!(msg, Msg::Claim { .. }) {
                b'C'
            } else {
                b'M'
            });
            put32(&mut buf, dump_id.len() as u32);
            buf.extend_from_slice(dump_id.as_bytes());
        }
        Msg::Task { .. } => return Err(Errno::EINVAL),
        Msg::Ranges { id, ranges } => {
            buf.push(b'R');
            put32(&mut buf, *id);
            put_ranges(&mut buf, ranges);
        }
        Msg::EndOfState => buf.push(b'S'),
        Msg::Event { id, event } => {
            buf.push(b'E');
            put32(&mut buf, *id);
            let (kind, a, b, c) = match *event {
                SpaceEvent::Remove { start, end } => (1, start, end, 0),
                SpaceEvent::Unmap { start, end } => (2, start, end, 0),
                SpaceEvent::Remap { from, to, len } => (3, from, to, len),
            };
            buf.push(kind);
            for v in [a, b, c] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        Msg::TaskDone { id } => {
            buf.push(b'D');
            put32(&mut buf, *id);
        }
        Msg::RestorePeer { .. } => return Err(Errno::EINVAL),
        Msg::RestoreFinished => buf.push(b'F'),
        Msg::Quit => buf.push(b'Q'),
        Msg::Abandon => buf.push(b'A'),
    }
    send(sock, &buf, None)
}

/// Receives one message; `Ok(None)` when the peer closed the connection. EAGAIN passes
/// through for non-blocking sockets. A malformed datagram is `EBADMSG`.
pub fn recv(sock: BorrowedFd<'_>) -> nix::Result<Option<Msg>> {
    thread_local! {
        // One buffer per thread: the guardian receives every event through here.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_MSG]);
    }
    BUF.with(|buf| recv_with(sock, &mut buf.borrow_mut()))
}

fn recv_with(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<Option<Msg>> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table for us alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err(Errno::EBADMSG);
        }
        (msg.bytes, fds)
    };
    if n == 0 {
        return Ok(None);
    }
    decode(&buf[..n], fds).map(Some).ok_or(Errno::EBADMSG)
}

fn decode(b: &[u8], mut fds: Vec<OwnedFd>) -> Option<Msg> {
    let mut r = Reader { b, at: 1 };
    let msg = match *b.first()? {
        b'H' => Msg::Hello {
            guardian_pid: r.u32()?,
            restore_finished: r.u8()? != 0,
            restore_peer: r.u32()? as i32,
            lost_daemon: r.u32()? as i32,
            tasks: r.u32()?,
            done_tasks: r.u32()?,
        },
        b'B' => Msg::Busy {
            daemon_pid: r.u32()? as i32,
        },
        kind @ (b'C' | b'M') => {
            let n = r.u32()? as usize;
            let dump_id = String::from_utf8(r.take(n)?.to_vec()).ok()?;
            if kind == b'C' {
                Msg::Claim { dump_id }
            } else {
                Msg::Mismatch { dump_id }
            }
        }
        b'T' => {
            if fds.len() != 1 {
                return None;
            }
            Msg::Task {
                id: r.u32()?,
                pid: r.u32()?,
                parent: r.u32()?,
                ranges: r.ranges()?,
                fd: fds.pop(),
            }
        }
        b'R' => Msg::Ranges {
            id: r.u32()?,
            ranges: r.ranges()?,
        },
        b'S' => Msg::EndOfState,
        b'E' => {
            let id = r.u32()?;
            let kind = r.u8()?;
            let (a, b, c) = (r.u64()?, r.u64()?, r.u64()?);
            let event = match kind {
                1 => SpaceEvent::Remove { start: a, end: b },
                2 => SpaceEvent::Unmap { start: a, end: b },
                3 => SpaceEvent::Remap {
                    from: a,
                    to: b,
                    len: c,
                },
                _ => return None,
            };
            Msg::Event { id, event }
        }
        b'D' => Msg::TaskDone { id: r.u32()? },
        b'P' => {
            if fds.len() != 1 {
                return None;
            }
            Msg::RestorePeer {
                pid: r.u32()? as i32,
                conn: fds.pop(),
            }
        }
        b'F' => Msg::RestoreFinished,
        b'Q' => Msg::Quit,
        b'A' => Msg::Abandon,
        _ => return None,
    };
    // Only `Task` and `RestorePeer` carry a descriptor; stray ones are closed as `fds` drops.
    (r.at == b.len()).then_some(msg)
}

fn send(sock: BorrowedFd<'_>, buf: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let iov = [IoSlice::new(buf)];
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage<'_>> = fds
        .as_ref()
        .map(|f| vec![ControlMessage::ScmRights(f)])
        .unwrap_or_default();
    loop {
        // MSG_NOSIGNAL: a dead guardian must be an error here, not a SIGPIPE that kills us.
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

fn put32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_ranges(buf: &mut Vec<u8>, ranges: &[LazyRange]) {
    put32(buf, ranges.len() as u32);
    for r in ranges {
        for v in [r.start, r.end, r.img_start] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
    }
    fn ranges(&mut self) -> Option<Vec<LazyRange>> {
        let n = self.u32()? as usize;
        if n > RANGES_PER_MSG {
            return None;
        }
        (0..n)
            .map(|_| Some(LazyRange::new(self.u64()?, self.u64()?, self.u64()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn task_with_many_ranges_round_trips() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let ranges: LazyRanges = (0..5000u64)
            .map(|i| LazyRange::new(i * 0x2000, i * 0x2000 + 0x1000, i * 0x1000))
            .collect();
        let (r, w) = nix::unistd::pipe().unwrap();
        let sender = std::thread::spawn(move || {
            send_task(a.as_fd(), 7, 42, NO_PARENT, r.as_fd(), &ranges).map(|_| ranges)
        });
        let mut got = LazyRanges::new();
        let Some(Msg::Task {
            id: 7,
            pid: 42,
            parent: NO_PARENT,
            ranges: first,
            fd: Some(_),
        }) = recv(b.as_fd()).unwrap()
        else {
            panic!()
        };
        first.into_iter().for_each(|r| assert!(got.insert(r)));
        while got.range_count() < 5000 {
            let Some(Msg::Ranges { id: 7, ranges }) = recv(b.as_fd()).unwrap() else {
                panic!()
            };
            ranges.into_iter().for_each(|r| assert!(got.insert(r)));
        }
        assert_eq!(got, sender.join().unwrap().unwrap());
        drop(w);
    }

    #[test]
    fn events_round_trip_and_garbage_is_refused() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let ev = SpaceEvent::Remap {
            from: 0x1000,
            to: 0x9000,
            len: 0x3000,
        };
        send_msg(a.as_fd(), &Msg::Event { id: 3, event: ev }).unwrap();
        assert!(
            matches!(recv(b.as_fd()).unwrap(), Some(Msg::Event { id: 3, event }) if event == ev)
        );
        send(a.as_fd(), b"E\x01", None).unwrap();
        assert_eq!(recv(b.as_fd()).unwrap_err(), Errno::EBADMSG);
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }
}
