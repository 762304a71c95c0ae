//! The daemon's end of the guardian (see `mod.rs`): start one, or find one a dead
//! daemon left behind and take its tasks back; then journal to it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, socketpair, AddressFamily, SockFlag, SockType};

use crate::engine::{Journal, SpaceEvent};
use crate::ranges::LazyRanges;

use super::wire::{self, Msg, NO_PARENT};

/// How long a guardian may take to greet us (start-up, or handing over its tasks).
const GREETING: Duration = Duration::from_secs(10);

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
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("guardian at {path}: {what}")]
    Talk { path: PathBuf, what: String },
    #[error("a lazy-pages daemon (pid {daemon}) is already serving {dir} (its guardian answered on {path})")]
    Busy { daemon: i32, dir: PathBuf, path: PathBuf },
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
#[derive(Debug)]
pub struct GuardianLink {
    sock: OwnedFd,
    path: PathBuf,
    pid: u32,
    /// A failed send: the guardian is gone; later records are not attempted.
    lost: AtomicBool,
}

impl GuardianLink {
    /// Connects to the guardian a dead daemon left in `work_dir`, if one is there; it
    /// answers with the tasks it holds. None when there is no live guardian.
    pub fn find(work_dir: &Path) -> Result<Option<(GuardianLink, GuardianState)>, GuardianError> {
        let path = work_dir.join(super::SOCKET_NAME);
        let talk = |what: String| GuardianError::Talk { path: path.clone(), what };
        let sock = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(|e| talk(e.to_string()))?;
        let (addr, _dir) = super::unix_addr(&path).map_err(|e| talk(e.to_string()))?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {}
            // No guardian, or a stale socket of one that is gone.
            Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Ok(None),
            Err(e) => return Err(talk(format!("cannot connect: {e}"))),
        }
        let state = match greeting(sock.as_fd()) {
            Ok(state) => state,
            Err(Greeting::Busy(daemon)) => {
                return Err(GuardianError::Busy { daemon, dir: work_dir.to_path_buf(), path: path.clone() })
            }
            Err(Greeting::Bad(what)) => return Err(talk(what)),
        };
        let pid = state.guardian_pid;
        Ok(Some((GuardianLink { sock, path, pid, lost: AtomicBool::new(false) }, state)))
    }

    /// Starts a guardian for a new restore in `work_dir` (its own session), and waits
    /// until it listens on `lazy-pages.guardian`.
    pub fn spawn(work_dir: &Path, config: &GuardianConfig) -> Result<GuardianLink, GuardianError> {
        let path = work_dir.join(super::SOCKET_NAME);
        let spawn_err = |source| GuardianError::Spawn { program: config.program.clone(), source };
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| spawn_err(e.into()))?;
        let mut cmd = Command::new(&config.program);
        cmd.arg("--socket").arg(&path).arg("--resume-timeout-ms").arg(config.resume_timeout.as_millis().to_string());
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
        // Reaped here while we live; if we die first, init does it.
        std::thread::Builder::new().name("lazy-guardian-reaper".into()).spawn(move || child.wait()).ok();
        match greeting(ours.as_fd()) {
            Ok(_) => Ok(GuardianLink { sock: ours, path, pid, lost: AtomicBool::new(false) }),
            Err(Greeting::Busy(_)) => Err(spawn_err(std::io::Error::other("it answered busy"))),
            Err(Greeting::Bad(what)) => Err(spawn_err(std::io::Error::other(what))),
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
        let _ = self.send(&Msg::Quit);
    }

    /// This daemon cannot serve what it took over: the guardian poisons it now.
    pub fn abandon(&self) {
        let _ = self.send(&Msg::Abandon);
    }

    fn send(&self, msg: &Msg) -> Result<(), String> {
        self.check(|| wire::send_msg(self.sock.as_fd(), msg))
    }

    /// The first failure is reported; after it nothing more is sent or said.
    fn check(&self, res: impl FnOnce() -> nix::Result<()>) -> Result<(), String> {
        if self.lost.load(SeqCst) {
            return Ok(());
        }
        res().map_err(|e| {
            self.lost.store(true, SeqCst);
            self.lost_message(&e.to_string())
        })
    }

    fn lost_message(&self, why: &str) -> String {
        format!("lost the guardian (pid {}, {}): {why}", self.pid, self.path.display())
    }
}

impl Journal for GuardianLink {
    fn task(&self, id: u32, pid: u32, parent: Option<u32>, uffd: BorrowedFd<'_>, ranges: &LazyRanges) -> Result<(), String> {
        self.check(|| wire::send_task(self.sock.as_fd(), id, pid, parent.unwrap_or(NO_PARENT), uffd, ranges))
    }

    fn event(&self, id: u32, event: &SpaceEvent) -> Result<(), String> {
        self.send(&Msg::Event { id, event: *event })
    }

    fn task_done(&self, id: u32) -> Result<(), String> {
        self.send(&Msg::TaskDone { id })
    }
}

enum Greeting {
    Busy(i32),
    Bad(String),
}

/// Reads `Hello`, the tasks, `EndOfState` (or `Busy`).
fn greeting(sock: BorrowedFd<'_>) -> Result<GuardianState, Greeting> {
    let next = || -> Result<Msg, Greeting> {
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(GREETING.as_millis() as u32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => return Err(Greeting::Bad(format!("no answer within {} s", GREETING.as_secs()))),
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
        Msg::Hello { guardian_pid, restore_finished, restore_peer, lost_daemon, done_tasks, .. } => {
            (guardian_pid, restore_finished, restore_peer, lost_daemon, done_tasks)
        }
        Msg::Busy { daemon_pid } => return Err(Greeting::Busy(daemon_pid)),
        other => return Err(Greeting::Bad(format!("unexpected greeting {other:?}"))),
    };
    let mut tasks: Vec<ResumedTask> = Vec::new();
    loop {
        match next()? {
            Msg::Task { id, pid, parent, ranges, fd: Some(uffd) } => tasks.push(ResumedTask {
                id,
                pid,
                parent: (parent != NO_PARENT).then_some(parent),
                uffd,
                ranges: ranges.into_iter().collect(),
            }),
            Msg::Ranges { id, ranges } => {
                let task = tasks.iter_mut().find(|t| t.id == id).ok_or_else(|| Greeting::Bad(format!("ranges of unknown task {id}")))?;
                ranges.into_iter().for_each(|r| {
                    task.ranges.insert(r);
                });
            }
            Msg::EndOfState => break,
            other => return Err(Greeting::Bad(format!("unexpected message {other:?}"))),
        }
    }
    Ok(GuardianState { guardian_pid, restore_finished, restore_peer, lost_daemon, tasks, done_tasks })
}
