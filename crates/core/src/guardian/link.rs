//! The daemon's end of the guardian (see `mod.rs`): start one, or find one a dead
//! daemon left behind and take its tasks back; then journal to it.
//!
//! A guardian is never allowed to stall the restore: a record waits at most
//! `JOURNAL_WAIT` for room on the socket (the journal is written under a task's gate,
//! so a guardian that stops reading would otherwise stall every fault of that task).
//! One that does not take it in time is ended (SIGKILL through its pidfd: a wedged
//! guardian that woke up later would act on a record it no longer has whole) and the
//! daemon serves on without one. A watcher thread says so the moment the guardian dies,
//! not at the next record.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, getsockopt, setsockopt, socket, socketpair, sockopt, AddressFamily, SockFlag, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::unistd::geteuid;

use crate::engine::{Journal, SpaceEvent};
use crate::ranges::LazyRanges;

use super::wire::{self, Msg, NO_PARENT};

/// How long a guardian may take to greet us (start-up, or handing over its tasks).
const GREETING: Duration = Duration::from_secs(10);
/// How long one record may wait for a guardian that does not read (SO_SNDTIMEO). The
/// socket buffers a few hundred records, so a live guardian never makes us wait.
const JOURNAL_WAIT: Duration = Duration::from_millis(500);
/// How often the watcher looks at whether it should stop.
const WATCH_TICK: Duration = Duration::from_millis(200);

type OnLost = Box<dyn Fn(String) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct GuardianConfig {
    /// The `lazy-pages-guardian` binary.
    pub program: PathBuf,
    /// How long a guardian whose daemon died waits for a resume before it poisons.
    pub resume_timeout: Duration,
    /// Where the guardian writes its line (the daemon's log file); None: our stderr.
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardianError {
    #[error("cannot start the guardian {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("guardian at {path}: {what}")]
    Talk { path: PathBuf, what: String },
    #[error("a lazy-pages daemon (pid {daemon}) is already serving {dir} (its guardian answered on {path})")]
    Busy {
        daemon: i32,
        dir: PathBuf,
        path: PathBuf,
    },
    #[error("{}: guardian pid {guardian} holds the restore of another dump (dump id {}, the images in {dir} are {}): not resuming it with these; the same command with the images that restore came from resumes it until the guardian's --resume-timeout", path.display(), short(theirs), short(ours), dir = dir.display())]
    OtherDump {
        path: PathBuf,
        guardian: i32,
        theirs: String,
        ours: String,
        dir: PathBuf,
    },
    /// `lazy-pages.guardian` is not our guardian's: never adopted, never handed a uffd.
    #[error("{}: not our guardian ({what}): ignored; starting our own", path.display())]
    Stranger { path: PathBuf, what: String },
}

/// A task the guardian handed back.
#[derive(Debug)]
pub struct ResumedTask {
    pub id: u32,
    pub pid: u32,
    pub parent: Option<u32>,
    pub uffd: OwnedFd,
    pub ranges: LazyRanges,
}

/// What a guardian told a daemon that connected to it.
#[derive(Debug)]
pub struct GuardianState {
    pub guardian_pid: u32,
    pub restore_finished: bool,
    /// `criu restore`'s pid, if the dead daemon had seen it (0: unknown).
    pub restore_peer: i32,
    /// The daemon that died (0: none).
    pub lost_daemon: i32,
    pub tasks: Vec<ResumedTask>,
    /// Tasks that already had every page (or exited) when the daemon died.
    pub done_tasks: u32,
}

/// The daemon's connection to its guardian; the engine's journal.
pub struct GuardianLink {
    sock: OwnedFd,
    path: PathBuf,
    pid: u32,
    /// To end a guardian that stopped reading without the risk of a reused pid.
    pidfd: Option<OwnedFd>,
    /// The guardian is gone (or was let go): later records are not attempted.
    lost: AtomicBool,
    /// Quit or Abandon was sent: its exit from then on is expected.
    done: AtomicBool,
    /// Where a loss is reported (`watch`); without one it is the caller's error.
    on_lost: Mutex<Option<OnLost>>,
}

impl std::fmt::Debug for GuardianLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardianLink")
            .field("path", &self.path)
            .field("pid", &self.pid)
            .field("lost", &self.lost)
            .finish()
    }
}

impl GuardianLink {
    /// Connects to the guardian a dead daemon left in `work_dir`, if one is there; it
    /// answers with the tasks it holds. None when there is no live guardian.
    ///
    /// The work dir may be writable by others (`-W /tmp`): a socket someone else bound
    /// there would be handed every uffd and criu restore's connection. So the socket file
    /// must be a socket (not a symlink) owned by our euid, and the process that accepted
    /// us must run as root or as us (SO_PEERCRED, checked before a byte of it is read);
    /// anything else is `Stranger`.
    ///
    /// `dump_id` is the identity of the dump we would serve (`images::dump_identity`),
    /// read as `images_dir`: a guardian holding another dump's tasks answers `OtherDump`
    /// and goes on holding them.
    pub fn find(
        work_dir: &Path,
        images_dir: &Path,
        dump_id: &str,
    ) -> Result<Option<(GuardianLink, GuardianState)>, GuardianError> {
        let path = work_dir.join(super::SOCKET_NAME);
        let talk = |what: String| GuardianError::Talk {
            path: path.clone(),
            what,
        };
        let stranger = |what: String| GuardianError::Stranger {
            path: path.clone(),
            what,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(talk(format!("cannot stat: {e}"))),
            Ok(meta) => meta,
        };
        let file = owned_socket(&meta);
        if let Err(Strange::NotASocket(what)) = &file {
            return Err(stranger(what.clone()));
        }
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| talk(e.to_string()))?;
        let (addr, _dir) = super::unix_addr(&path).map_err(|e| talk(e.to_string()))?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {}
            // No guardian, or a stale socket of one that is gone.
            Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Ok(None),
            Err(e) => return Err(talk(format!("cannot connect: {e}"))),
        }
        // The file may have been swapped since the lstat: the peer's credentials decide.
        let cred = getsockopt(&sock, sockopt::PeerCredentials)
            .map_err(|e| talk(format!("SO_PEERCRED: {e}")))?;
        let me = geteuid().as_raw();
        let peer = format!("answered by pid {} of uid {}", cred.pid(), cred.uid());
        if let Err(Strange::NotOurs(what)) = file {
            return Err(stranger(format!("{what}, {peer}")));
        }
        if cred.uid() != 0 && cred.uid() != me {
            return Err(stranger(format!("{peer}, not root or uid {me}")));
        }
        // A busy guardian answers and hangs up without reading: its answer says why.
        let _ = wire::send_msg(
            sock.as_fd(),
            &Msg::Claim {
                dump_id: dump_id.to_string(),
            },
        );
        let state = match greeting(sock.as_fd()) {
            Ok(state) => state,
            Err(Greeting::Busy(daemon)) => {
                return Err(GuardianError::Busy {
                    daemon,
                    dir: work_dir.to_path_buf(),
                    path: path.clone(),
                })
            }
            Err(Greeting::Mismatch(theirs)) => {
                let ours = dump_id.to_string();
                return Err(GuardianError::OtherDump {
                    path: path.clone(),
                    guardian: cred.pid(),
                    theirs,
                    ours,
                    dir: images_dir.to_path_buf(),
                });
            }
            Err(Greeting::Bad(what)) => return Err(talk(what)),
        };
        // Opened after the credentials were checked; a guardian that died and whose pid
        // was reused since would have hung up our socket, which the watcher then sees.
        let pidfd = pidfd_open(cred.pid());
        Ok(Some((
            GuardianLink::new(sock, path, state.guardian_pid, pidfd),
            state,
        )))
    }

    /// Starts a guardian for a new restore in `work_dir` (its own session), and waits
    /// until it listens on `lazy-pages.guardian`.
    /// `dump_id`: the identity of the dump served, which a resume must claim.
    pub fn spawn(
        work_dir: &Path,
        config: &GuardianConfig,
        dump_id: &str,
    ) -> Result<GuardianLink, GuardianError> {
        let path = work_dir.join(super::SOCKET_NAME);
        let spawn_err = |source| GuardianError::Spawn {
            program: config.program.clone(),
            source,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn_err(e.into()))?;
        let mut cmd = Command::new(&config.program);
        cmd.arg("--socket")
            .arg(&path)
            .arg("--resume-timeout-ms")
            .arg(config.resume_timeout.as_millis().to_string());
        cmd.arg("--dump-id").arg(dump_id);
        if let Some(log) = &config.log_file {
            cmd.arg("--log").arg(log);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let fd = theirs.as_raw_fd();
        // SAFETY: runs in the forked child before exec; setsid, dup2 and fcntl are
        // async-signal-safe and touch only that child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Its one line goes to our stderr when there is no log file: Node opens
                // fd 2 close-on-exec, and Stdio::inherit() leaves it so, which would hand
                // the guardian /dev/null (Rust's start-up fills a closed fd 2 with it).
                libc::fcntl(2, libc::F_SETFD, 0);
                // The guardian finds its daemon on fd 3 (dup2 clears close-on-exec).
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(theirs);
        let pid = child.id();
        // Before the reaper waits: until then the pid is our unreaped child's.
        let pidfd = pidfd_open(pid as i32);
        // Reaped here while we live; if we die first, init does it.
        std::thread::Builder::new()
            .name("lazy-guardian-reaper".into())
            .spawn(move || child.wait())
            .ok();
        match greeting(ours.as_fd()) {
            Ok(_) => Ok(GuardianLink::new(ours, path, pid, pidfd)),
            Err(Greeting::Busy(_) | Greeting::Mismatch(_)) => {
                Err(spawn_err(std::io::Error::other("it answered busy")))
            }
            Err(Greeting::Bad(what)) => Err(spawn_err(std::io::Error::other(what))),
        }
    }

    fn new(sock: OwnedFd, path: PathBuf, pid: u32, pidfd: Option<OwnedFd>) -> GuardianLink {
        // Records are sent blocking, but never wait longer than this for room.
        let wait = TimeVal::milliseconds(JOURNAL_WAIT.as_millis() as i64);
        let _ = setsockopt(&sock, sockopt::SendTimeout, &wait);
        GuardianLink {
            sock,
            path,
            pid,
            pidfd,
            lost: AtomicBool::new(false),
            done: AtomicBool::new(false),
            on_lost: Mutex::new(None),
        }
    }

    /// From now on a loss (the guardian died, or stopped reading) is reported once
    /// through `on_lost`, the moment it happens, and never as a record's error.
    pub fn watch(self: &Arc<Self>, on_lost: impl Fn(String) + Send + Sync + 'static) {
        if let Ok(mut slot) = self.on_lost.lock() {
            *slot = Some(Box::new(on_lost));
        }
        let link = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lazy-guardian-watch".into())
            .spawn(move || {
                let tick = PollTimeout::try_from(WATCH_TICK.as_millis() as u32)
                    .unwrap_or(PollTimeout::MAX);
                while !link.done.load(SeqCst) && !link.lost.load(SeqCst) {
                    // Only hang-ups matter (always reported): the guardian sends nothing after its greeting.
                    let mut fds = [PollFd::new(link.sock.as_fd(), PollFlags::empty())];
                    match poll(&mut fds, tick) {
                        Ok(0) | Err(Errno::EINTR) => continue,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                    if !link.done.load(SeqCst) {
                        link.report(link.lose("it died"));
                    }
                    return;
                }
            });
        if spawned.is_err() {
            // Without a watcher a death is still seen, at the next record.
            if let Ok(mut slot) = self.on_lost.lock() {
                slot.take();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// criu restore's pid (a resumed daemon waits for it before filling) and our end of
    /// its connection: the guardian holds a copy until the restore finished, so that
    /// criu's RESTORE_FINISHED still finds the socket open if this daemon dies first
    /// (else criu's send fails with EPIPE and criu kills the tree it just restored,
    /// and no resume is possible).
    pub fn restore_peer(&self, pid: i32, conn: BorrowedFd<'_>) -> Result<(), String> {
        self.check(|| wire::send_restore_peer(self.sock.as_fd(), pid, conn))
    }

    pub fn restore_finished(&self) -> Result<(), String> {
        self.send(&Msg::RestoreFinished)
    }

    /// The restore ended in order (every page in, or the unserved ones poisoned by the
    /// daemon itself): the guardian lets go and exits 0.
    pub fn quit(&self) {
        self.done.store(true, SeqCst);
        let _ = self.send(&Msg::Quit);
    }

    /// This daemon cannot serve what it took over: the guardian poisons it now.
    pub fn abandon(&self) {
        self.done.store(true, SeqCst);
        let _ = self.send(&Msg::Abandon);
    }

    fn send(&self, msg: &Msg) -> Result<(), String> {
        self.check(|| wire::send_msg(self.sock.as_fd(), msg))
    }

    /// The first failure is reported (through `watch`'s callback when there is one);
    /// after it nothing more is sent or said.
    fn check(&self, res: impl FnOnce() -> nix::Result<()>) -> Result<(), String> {
        if self.lost.load(SeqCst) {
            return Ok(());
        }
        match res() {
            Ok(()) => Ok(()),
            Err(Errno::EAGAIN) => {
                // SO_SNDTIMEO ran out: alive but not reading. End it, or it could wake
                // up later and act on a record that misses what we did meanwhile.
                // Marked lost first: the kill makes its socket hang up, and the
                // watcher must not get in with "it died" before this reason.
                let why = format!(
                    "it took in nothing for {} ms (stopped or wedged), so it was ended",
                    JOURNAL_WAIT.as_millis()
                );
                let line = self.lose(&why);
                self.kill();
                self.report_or_return(line)
            }
            Err(e) => self.report_or_return(self.lose(&e.to_string())),
        }
    }

    /// Marks the guardian lost; the line to say, the first time only.
    fn lose(&self, why: &str) -> Option<String> {
        if self.lost.swap(true, SeqCst) {
            return None;
        }
        Some(format!(
            "lost the guardian (pid {}, {}): {why}",
            self.pid,
            self.path.display()
        ))
    }

    /// Says `line` through `on_lost`; false when there is none to say it.
    fn report(&self, line: Option<String>) -> bool {
        let Some(line) = line else { return true };
        match self
            .on_lost
            .lock()
            .ok()
            .as_ref()
            .and_then(|slot| slot.as_ref())
        {
            Some(say) => {
                say(line);
                true
            }
            None => false,
        }
    }

    fn report_or_return(&self, line: Option<String>) -> Result<(), String> {
        match line {
            Some(line) if !self.report(Some(line.clone())) => Err(line),
            _ => Ok(()),
        }
    }

    fn kill(&self) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal reads only its arguments; a null siginfo is allowed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

impl Journal for GuardianLink {
    fn task(
        &self,
        id: u32,
        pid: u32,
        parent: Option<u32>,
        uffd: BorrowedFd<'_>,
        ranges: &LazyRanges,
    ) -> Result<(), String> {
        self.check(|| {
            wire::send_task(
                self.sock.as_fd(),
                id,
                pid,
                parent.unwrap_or(NO_PARENT),
                uffd,
                ranges,
            )
        })
    }

    fn event(&self, id: u32, event: &SpaceEvent) -> Result<(), String> {
        self.send(&Msg::Event { id, event: *event })
    }

    fn task_done(&self, id: u32) -> Result<(), String> {
        self.send(&Msg::TaskDone { id })
    }
}

enum Strange {
    NotASocket(String),
    NotOurs(String),
}

/// The socket file a guardian of ours binds: a socket, owned by our euid. A symlink, a
/// regular file or another user's socket is not one (for a socket, its peer is named
/// too, so the caller connects first: connecting sends nothing).
fn owned_socket(meta: &std::fs::Metadata) -> Result<(), Strange> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = geteuid().as_raw();
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a socket"
        };
        return Err(Strange::NotASocket(format!(
            "{what}, owned by uid {}",
            meta.uid()
        )));
    }
    if meta.uid() != me {
        return Err(Strange::NotOurs(format!(
            "a socket owned by uid {}, not uid {me}",
            meta.uid()
        )));
    }
    Ok(())
}

/// A descriptor for process `pid` that cannot come to mean another process.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor the kernel just made for us alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Enough of a dump id to tell two apart in a line.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

enum Greeting {
    Busy(i32),
    Mismatch(String),
    Bad(String),
}

/// Reads `Hello`, the tasks, `EndOfState` (or `Busy`).
fn greeting(sock: BorrowedFd<'_>) -> Result<GuardianState, Greeting> {
    let next = || -> Result<Msg, Greeting> {
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(GREETING.as_millis() as u32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => {
                return Err(Greeting::Bad(format!(
                    "no answer within {} s",
                    GREETING.as_secs()
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(Greeting::Bad(e.to_string())),
        }
        match wire::recv(sock) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(Greeting::Bad("closed the connection".into())),
            Err(e) => Err(Greeting::Bad(e.to_string())),
        }
    };
    let (guardian_pid, restore_finished, restore_peer, lost_daemon, done_tasks) = match next()? {
        Msg::Hello {
            guardian_pid,
            restore_finished,
            restore_peer,
            lost_daemon,
            done_tasks,
            ..
        } => (
            guardian_pid,
            restore_finished,
            restore_peer,
            lost_daemon,
            done_tasks,
        ),
        Msg::Busy { daemon_pid } => return Err(Greeting::Busy(daemon_pid)),
        Msg::Mismatch { dump_id } => return Err(Greeting::Mismatch(dump_id)),
        other => return Err(Greeting::Bad(format!("unexpected greeting {other:?}"))),
    };
    let mut tasks: Vec<ResumedTask> = Vec::new();
    loop {
        match next()? {
            Msg::Task {
                id,
                pid,
                parent,
                ranges,
                fd: Some(uffd),
            } => tasks.push(ResumedTask {
                id,
                pid,
                parent: (parent != NO_PARENT).then_some(parent),
                uffd,
                ranges: ranges.into_iter().collect(),
            }),
            Msg::Ranges { id, ranges } => {
                let task = tasks
                    .iter_mut()
                    .find(|t| t.id == id)
                    .ok_or_else(|| Greeting::Bad(format!("ranges of unknown task {id}")))?;
                ranges.into_iter().for_each(|r| {
                    task.ranges.insert(r);
                });
            }
            Msg::EndOfState => break,
            other => return Err(Greeting::Bad(format!("unexpected message {other:?}"))),
        }
    }
    Ok(GuardianState {
        guardian_pid,
        restore_finished,
        restore_peer,
        lost_daemon,
        tasks,
        done_tasks,
    })
}
