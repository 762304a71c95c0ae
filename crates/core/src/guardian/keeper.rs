//! The guardian process itself (`lazy-pages-guardian`): holds a duplicate of every uffd
//! of a restore so that the kernel cannot zero-fill unserved pages when the daemon dies.
//!
//! One thread, one poll over: the connected daemon, the resume socket, and a signalfd.
//! * Daemon connected: it journals tasks (with their uffds), address-space events,
//!   retired tasks, the restore's progress; the keeper applies each to its copy of the
//!   task's lazy ranges. It never reads a uffd then: it is not on the fault path.
//! * Daemon gone without `Quit`: orphaned. A daemon that connects to the resume socket
//!   within the resume timeout gets every held uffd back with its ranges (the keeper
//!   keeps its own copies until told `Quit`, so a second death is covered too).
//!   Otherwise every lazy page not yet present is poisoned (EEXIST marks those that are
//!   in), one line says how many, and the keeper exits 1.
//!
//! What may go wrong: a daemon killed between reading an event and journaling it (a few
//! microseconds) loses that event; a kernel without UFFDIO_POISON (< 6.6) cannot be
//! protected, which the line then says.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
};

use crate::engine::SpaceEvent;
use crate::ranges::LazyRanges;
use crate::uffd::{self, PoisonEnd, ReadStatus, Uffd, UffdEvent};

use super::wire::{self, Msg, NO_PARENT};

pub struct KeeperConfig {
    /// The resume socket (`<work dir>/lazy-pages.guardian`).
    pub socket: PathBuf,
    pub resume_timeout: Duration,
    /// Where the one line goes (appended); stderr when None.
    pub log: Option<PathBuf>,
    /// The identity of the dump being restored (`images::dump_identity`); a daemon that
    /// claims another is not handed the tasks. None: whatever the first claim says.
    pub dump_id: Option<String>,
}

struct Held {
    id: u32,
    pid: u32,
    parent: u32,
    uffd: OwnedFd,
    ranges: LazyRanges,
}

struct Keeper {
    config: KeeperConfig,
    tasks: Vec<Held>,
    restore_finished: bool,
    restore_peer: i32,
    /// Tasks that had every page (or exited) while a daemon served them.
    done_tasks: u32,
    /// Our copy of the daemon's end of criu restore's connection, until the restore
    /// finished: criu's RESTORE_FINISHED must not meet a closed socket (EPIPE: criu
    /// kills the restored tree) when the daemon dies before it.
    restore_conn: Option<OwnedFd>,
    daemon: Option<(OwnedFd, i32)>,
    /// The last daemon that went away without `Quit`.
    lost: i32,
    orphaned_at: Option<Instant>,
}

/// Runs the guardian for the daemon on `first` (a connected SOCK_SEQPACKET); returns
/// the process exit status.
pub fn run(first: OwnedFd, config: KeeperConfig) -> i32 {
    let mut keeper = Keeper {
        config,
        tasks: Vec::new(),
        restore_finished: false,
        restore_peer: 0,
        done_tasks: 0,
        restore_conn: None,
        daemon: None,
        lost: 0,
        orphaned_at: None,
    };
    match keeper.serve(first) {
        Ok(code) => {
            let _ = std::fs::remove_file(&keeper.config.socket);
            code
        }
        Err(e) => {
            // Whatever failed, unserved pages must not be left to zero-fill.
            let why = format!("internal error ({e})");
            keeper.poison_and_say(&why);
            let _ = std::fs::remove_file(&keeper.config.socket);
            2
        }
    }
}

impl Keeper {
    fn serve(&mut self, first: OwnedFd) -> Result<i32, String> {
        let mask = terminating_signals();
        mask.thread_block()
            .map_err(|e| format!("blocking signals: {e}"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        let listener = self
            .listen()
            .map_err(|e| format!("{}: cannot listen: {e}", self.config.socket.display()))?;
        let pid = peer_pid(&first);
        self.hand_over(&first)
            .map_err(|e| format!("greeting daemon pid {pid}: {e}"))?;
        self.daemon = Some((first, pid));
        loop {
            let timeout = match self.orphaned_at {
                Some(at) => {
                    let left = self.config.resume_timeout.saturating_sub(at.elapsed());
                    if left.is_zero() {
                        let why = format!(
                            "daemon pid {} died and no daemon resumed within {} s",
                            self.lost,
                            self.config.resume_timeout.as_secs()
                        );
                        self.poison_and_say(&why);
                        return Ok(1);
                    }
                    PollTimeout::try_from(left.as_millis().min(60_000) as u32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let (daemon_ready, listener_ready, signalled) = {
                let mut fds = vec![
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                ];
                if let Some((d, _)) = &self.daemon {
                    fds.push(PollFd::new(d.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (fds.get(2).is_some_and(hit), hit(&fds[0]), hit(&fds[1]))
            };
            if signalled {
                if let Ok(Some(info)) = sigfd.read_signal() {
                    if let Some(code) = self.on_signal(info.ssi_signo as i32) {
                        return Ok(code);
                    }
                }
            }
            if daemon_ready {
                if let Some(code) = self.from_daemon() {
                    return Ok(code);
                }
            }
            if listener_ready {
                self.accept(&listener);
            }
        }
    }

    fn listen(&self) -> nix::Result<OwnedFd> {
        let path = &self.config.socket;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            }
            _ => {}
        }
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let (addr, _dir) = super::unix_addr(path)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        // Born 0600 (umask), not chmod'ed after the bind: a chmod by path would follow a
        // symlink swapped in meanwhile by whoever else can write the work dir. Peers are
        // checked by uid too; the mode keeps strangers from connecting at all.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = bind(sock.as_raw_fd(), &addr);
        nix::sys::stat::umask(old);
        bound?;
        listen(&sock, Backlog::new(4)?)?;
        Ok(sock)
    }

    /// Greets a daemon: what it missed (nothing for a new restore), then its tasks, each
    /// renumbered in order so that they get the same ids in the daemon's new engine.
    fn hand_over(&mut self, sock: &OwnedFd) -> nix::Result<()> {
        self.tasks.sort_by_key(|t| t.id);
        let renumber: Vec<(u32, u32)> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i as u32))
            .collect();
        for (i, t) in self.tasks.iter_mut().enumerate() {
            t.id = i as u32;
            t.parent = renumber
                .iter()
                .find(|(old, _)| *old == t.parent)
                .map_or(NO_PARENT, |&(_, new)| new);
        }
        let hello = Msg::Hello {
            guardian_pid: std::process::id(),
            restore_finished: self.restore_finished,
            restore_peer: self.restore_peer,
            lost_daemon: self.lost,
            tasks: self.tasks.len() as u32,
            done_tasks: self.done_tasks,
        };
        wire::send_msg(sock.as_fd(), &hello)?;
        for t in &self.tasks {
            wire::send_task(
                sock.as_fd(),
                t.id,
                t.pid,
                t.parent,
                t.uffd.as_fd(),
                &t.ranges,
            )?;
        }
        wire::send_msg(sock.as_fd(), &Msg::EndOfState)
    }

    /// One message from the daemon; Some(exit status) when the keeper is done.
    fn from_daemon(&mut self) -> Option<i32> {
        let (sock, pid) = self.daemon.as_ref()?;
        let pid = *pid;
        let msg = match wire::recv(sock.as_fd()) {
            Err(Errno::EAGAIN | Errno::EINTR) => return None,
            Ok(Some(msg)) => msg,
            // Closed without `Quit`, or unreadable: the daemon is gone.
            Ok(None) | Err(_) => {
                self.daemon = None;
                self.lost = pid;
                if self.tasks.is_empty() {
                    return Some(0);
                }
                self.orphaned_at = Some(Instant::now());
                return None;
            }
        };
        match msg {
            Msg::Task {
                id,
                pid,
                parent,
                ranges,
                fd: Some(uffd),
            } => {
                // A resumed daemon re-journals the tasks it was handed: same id, same
                // uffd context; keep the newest descriptor and ranges.
                self.tasks.retain(|t| t.id != id);
                self.tasks.push(Held {
                    id,
                    pid,
                    parent,
                    uffd,
                    ranges: ranges.into_iter().collect(),
                });
            }
            Msg::Ranges { id, ranges } => {
                if let Some(t) = self.tasks.iter_mut().find(|t| t.id == id) {
                    ranges.into_iter().for_each(|r| {
                        t.ranges.insert(r);
                    });
                }
            }
            Msg::Event { id, event } => {
                if let Some(t) = self.tasks.iter_mut().find(|t| t.id == id) {
                    event.apply(&mut t.ranges);
                }
            }
            Msg::TaskDone { id } => {
                let before = self.tasks.len();
                self.tasks.retain(|t| t.id != id);
                self.done_tasks += (before - self.tasks.len()) as u32;
            }
            Msg::RestorePeer { pid, conn } => {
                self.restore_peer = pid;
                self.restore_conn = conn;
            }
            Msg::RestoreFinished => {
                self.restore_finished = true;
                self.restore_conn = None;
            }
            Msg::Quit => return Some(0),
            Msg::Abandon => {
                self.poison_and_say(&format!(
                    "daemon pid {pid} could not resume (its page source is gone)"
                ));
                return Some(1);
            }
            _ => {}
        }
        None
    }

    fn accept(&mut self, listener: &OwnedFd) {
        let Ok(fd) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) else {
            return;
        };
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        let conn: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let me = nix::unistd::geteuid().as_raw();
        let Ok(cred) = getsockopt(&conn, sockopt::PeerCredentials) else {
            return;
        };
        if cred.uid() != 0 && cred.uid() != me {
            return;
        }
        // A daemon says which dump it would serve before it gets anything: the tasks we
        // hold must get their own dump's bytes back. A refusal changes nothing here (no
        // new orphan clock, no lost daemon), so the right dump can still resume. Read
        // before any answer: closing on an unread claim would reset the connection
        // (ECONNRESET) before the peer could read why.
        let Some(claim) = read_claim(&conn) else {
            return;
        };
        if let Some((_, pid)) = &self.daemon {
            let _ = wire::send_msg(conn.as_fd(), &Msg::Busy { daemon_pid: *pid });
            return;
        }
        match &self.config.dump_id {
            Some(ours) if *ours != claim && !self.tasks.is_empty() => {
                let _ = wire::send_msg(
                    conn.as_fd(),
                    &Msg::Mismatch {
                        dump_id: ours.clone(),
                    },
                );
                return;
            }
            // Nothing held: the claimant's restore is the one we guard from now on.
            _ => self.config.dump_id = Some(claim),
        }
        if self.hand_over(&conn).is_ok() {
            self.daemon = Some((conn, cred.pid()));
            self.orphaned_at = None;
        }
    }

    /// A terminating signal: with a daemon serving, leave quietly (the daemon goes on
    /// without us); orphaned, poison now rather than let the uffds close unprotected.
    fn on_signal(&mut self, signo: i32) -> Option<i32> {
        if signo == libc::SIGHUP || signo == libc::SIGPIPE {
            return None;
        }
        if self.daemon.is_some() || self.tasks.is_empty() {
            return Some(0);
        }
        let name =
            Signal::try_from(signo).map_or_else(|_| signo.to_string(), |s| s.as_str().to_string());
        self.poison_and_say(&format!(
            "daemon pid {} died and the guardian got {name}",
            self.lost
        ));
        Some(1)
    }

    fn poison_and_say(&mut self, why: &str) {
        let tasks = self.tasks.len();
        let mut poisoned = 0;
        let mut failure = None;
        let mut queue: Vec<Held> = std::mem::take(&mut self.tasks);
        while let Some(task) = queue.pop() {
            match poison_task(task, &mut queue) {
                Ok(n) => poisoned += n,
                Err(e) => failure = Some(e),
            }
        }
        let line = match failure {
            None => format!(
                "lazy-pages guardian: {why}: poisoned {poisoned} unserved lazy pages of {tasks} tasks: a restored process that touches one gets SIGBUS, never zeros"
            ),
            Some(e) => format!(
                "lazy-pages guardian: {why}: poisoned {poisoned} unserved lazy pages of {tasks} tasks, then poisoning failed ({e}): the rest read zeros"
            ),
        };
        self.say(&line);
    }

    fn say(&self, line: &str) {
        let written = self.config.log.as_ref().is_some_and(|path| {
            open_own_log(path)
                .and_then(|mut f| writeln!(f, "{line}"))
                .is_ok()
        });
        if !written {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

/// The daemon's -o file, appended to as the daemon opened it (src/out-file.ts): never
/// through a symlink planted in a shared work dir, nor into a FIFO, a hard link or a
/// file another user owns. Refused: the line goes to stderr instead.
fn open_own_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    if !meta.is_file() || !ours || meta.nlink() != 1 {
        return Err(std::io::Error::other("not our own regular file"));
    }
    Ok(file)
}

/// Poisons every page of `task`'s ranges that is not present. Unread events (the kernel
/// refuses fills while one is queued) are read and applied first: dropped ranges are
/// not poisoned, a forked child joins `queue` with the same ranges.
fn poison_task(task: Held, queue: &mut Vec<Held>) -> Result<u64, String> {
    let uffd: Uffd = uffd::uffd_from_owned(task.uffd);
    let mut ranges = task.ranges;
    let mut buf = uffd::EventBuffer::new(64);
    let mut poisoned = 0;
    let mut cursor = 0u64;
    let mut stalls = 0;
    loop {
        let next = ranges.iter().find(|r| r.end > cursor);
        let Some(r) = next else { break };
        let (pages, end) =
            uffd::poison_span(&uffd, cursor.max(r.start), r.end).map_err(|e| e.to_string())?;
        poisoned += pages;
        match end {
            PoisonEnd::Done => cursor = r.end,
            PoisonEnd::Gone => break,
            PoisonEnd::Blocked { at } => {
                // Bounded: a task whose address space stays "changing" for seconds is
                // not one we can help any more.
                stalls = if at == cursor { stalls + 1 } else { 0 };
                if stalls > 2000 || !apply_unread(&uffd, &mut buf, &mut ranges, task.pid, queue) {
                    break;
                }
                // The event may have moved or dropped what lies ahead: look again from here.
                cursor = at;
            }
        }
    }
    Ok(poisoned)
}

/// Reads what is queued on a uffd nobody else reads any more; false if the task is gone.
fn apply_unread(
    uffd: &Uffd,
    buf: &mut uffd::EventBuffer,
    ranges: &mut LazyRanges,
    pid: u32,
    queue: &mut Vec<Held>,
) -> bool {
    let mut events = Vec::new();
    match uffd::read_events(uffd, buf, &mut events) {
        Ok(ReadStatus::Read(_)) => {}
        // EAGAIN with nothing to read: the event is being delivered; try again.
        Ok(ReadStatus::Empty) => std::thread::sleep(Duration::from_millis(1)),
        Ok(ReadStatus::Closed) | Err(_) => return false,
    }
    for event in events {
        match event {
            UffdEvent::Remove { start, end } => {
                let _ = uffd::unregister(uffd, start, end.saturating_sub(start));
                SpaceEvent::Remove { start, end }.apply(ranges);
            }
            UffdEvent::Unmap { start, end } => {
                SpaceEvent::Unmap { start, end }.apply(ranges);
            }
            UffdEvent::Remap { from, to, len } => {
                SpaceEvent::Remap { from, to, len }.apply(ranges);
            }
            UffdEvent::Fork { uffd } => queue.push(Held {
                id: u32::MAX,
                pid,
                parent: NO_PARENT,
                uffd,
                ranges: ranges.clone(),
            }),
            // Poisoning its page wakes the faulting thread; other faults are on pages that
            // are not lazy and zero-fill once the uffd closes, as they should.
            UffdEvent::Fault { .. } | UffdEvent::Unknown(_) => {}
        }
    }
    true
}

/// Signals that end a process by default, taken through the signalfd instead.
fn terminating_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGPIPE,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSTKFLT,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
    ] {
        set.add(s);
    }
    set
}

/// The claim a connecting daemon sends first; None for a peer that says anything else,
/// or nothing within a second (the keeper serves nobody else meanwhile).
fn read_claim(conn: &OwnedFd) -> Option<String> {
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(1000u16)).ok()? == 0 {
        return None;
    }
    match wire::recv(conn.as_fd()) {
        Ok(Some(Msg::Claim { dump_id })) => Some(dump_id),
        _ => None,
    }
}

fn peer_pid(sock: &OwnedFd) -> i32 {
    getsockopt(sock, sockopt::PeerCredentials).map_or(0, |c| c.pid())
}
