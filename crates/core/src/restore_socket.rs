//! The unix socket `criu restore --lazy-pages` connects to (facts §2).
//!
//! CRIU's daemon blocks in accept/recv forever; ours must stay killable and must notice a
//! restore that died, so every wait here takes a timeout, the descriptors are exposed via
//! `AsFd` for callers that poll themselves, and partial reads survive a timeout (the next
//! call resumes where the last one stopped instead of desynchronising the stream).

use std::fs;
use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, recv, recvmsg, socket, sockopt, AddressFamily, Backlog,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// File name CRIU uses, relative to the shared work dir.
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// "FTSR" read as a little-endian u32: sent once all tasks are restored.
pub const RESTORE_FINISHED: u32 = 0x5253_5446;
const BACKLOG: i32 = 10;
/// Longest path a sockaddr_un holds, without the trailing NUL.
const SUN_PATH_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("criu restore closed the connection before restore finished")]
    HungUp,
    #[error("criu restore closed the connection in the middle of {what} ({got} of {want} bytes)")]
    Truncated {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("task {pid}: {reason}")]
    BadUffd { pid: i32, reason: String },
    #[error(
        "rejected a connection from pid {pid} uid {uid}: only root or uid {expected} may connect"
    )]
    PeerRejected { pid: i32, uid: u32, expected: u32 },
    #[error(
        "expected RESTORE_FINISHED ({RESTORE_FINISHED:#010x}) from criu restore, got {0:#010x}"
    )]
    BadMarker(u32),
}

impl RestoreError {
    fn io(what: &'static str, errno: Errno) -> Self {
        RestoreError::Io {
            what,
            source: io::Error::from(errno),
        }
    }
}

/// Credentials of the connected peer (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// One per-task message of the handshake.
#[derive(Debug)]
pub enum TaskMsg {
    /// A live task (image pid) and its uffd, API already negotiated by the restorer.
    Live { pid: i32, uffd: OwnedFd },
    /// A zombie: nothing to serve.
    Zombie { pid: i32 },
}

/// The listening socket; criu restore must find it before it starts.
#[derive(Debug)]
pub struct RestoreListener {
    sock: OwnedFd,
    path: PathBuf,
}

impl RestoreListener {
    /// Creates `<work_dir>/lazy-pages.socket` (replacing a stale one), mode 0600.
    pub fn bind(work_dir: &Path) -> io::Result<Self> {
        let path = work_dir.join(SOCKET_NAME);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let sock = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
        bind_path(&sock, work_dir, &path)?;
        // Peers are also checked by uid on accept; the mode keeps others from even
        // connecting. There is a short window before chmod, which that check covers.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        listen(&sock, Backlog::new(BACKLOG)?)?;
        Ok(RestoreListener { sock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for criu restore to connect; peers that are neither root nor our uid are
    /// turned away (and described in the timeout error if nobody else comes).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<RestoreConn, RestoreError> {
        let mut rejected = Vec::new();
        self.accept_with(timeout, &mut |e| rejected.push(e.to_string()))
            .map_err(|e| match e {
                RestoreError::Timeout(what) if !rejected.is_empty() => {
                    RestoreError::Timeout(format!("{what} (meanwhile {})", rejected.join("; ")))
                }
                e => e,
            })
    }

    /// Like `accept`, reporting each rejected peer to `on_reject` as it happens.
    pub fn accept_with(
        &self,
        timeout: Option<Duration>,
        on_reject: &mut dyn FnMut(&RestoreError),
    ) -> Result<RestoreConn, RestoreError> {
        let deadline = Deadline::new(timeout);
        let me = nix::unistd::geteuid().as_raw();
        loop {
            if !wait_readable(self.sock.as_fd(), &deadline)? {
                return Err(RestoreError::Timeout("criu restore to connect".into()));
            }
            let fd = match accept4(self.sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => fd,
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => return Err(RestoreError::io("accept on lazy-pages.socket", e)),
            };
            // SAFETY: accept4 just returned this descriptor and nothing else owns it.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let cred = getsockopt(&conn, sockopt::PeerCredentials)
                .map_err(|e| RestoreError::io("SO_PEERCRED", e))?;
            let peer = PeerCred {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
            };
            if peer.uid != 0 && peer.uid != me {
                on_reject(&RestoreError::PeerRejected {
                    pid: peer.pid,
                    uid: peer.uid,
                    expected: me,
                });
                continue;
            }
            return Ok(RestoreConn::new(conn, peer));
        }
    }
}

impl AsFd for RestoreListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// The one connection from criu restore.
#[derive(Debug)]
pub struct RestoreConn {
    sock: OwnedFd,
    peer: PeerCred,
    // A u32 read that a timeout interrupted; the next call continues it.
    word: [u8; 4],
    word_len: usize,
    // Pid whose fd message has not been read yet (a timeout hit between the two).
    pid_awaiting_fd: Option<i32>,
    finished: bool,
}

impl RestoreConn {
    fn new(sock: OwnedFd, peer: PeerCred) -> Self {
        RestoreConn {
            sock,
            peer,
            word: [0; 4],
            word_len: 0,
            pid_awaiting_fd: None,
            finished: false,
        }
    }

    pub fn peer(&self) -> PeerCred {
        self.peer
    }

    /// True once RESTORE_FINISHED was read; a hang-up after that is normal.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Reads the next per-task message (facts §2.3).
    pub fn recv_task(&mut self, timeout: Option<Duration>) -> Result<TaskMsg, RestoreError> {
        let deadline = Deadline::new(timeout);
        let pid = match self.pid_awaiting_fd.take() {
            Some(pid) => pid,
            None => {
                let pid = self.read_word("a task pid", &deadline, false)?.unwrap_or(0) as i32;
                if pid < 0 {
                    return Ok(TaskMsg::Zombie {
                        pid: pid.saturating_neg(),
                    });
                }
                pid
            }
        };
        if !wait_readable(self.sock.as_fd(), &deadline)? {
            self.pid_awaiting_fd = Some(pid);
            return Err(RestoreError::Timeout(format!("the uffd of task {pid}")));
        }
        let uffd = self.recv_fd(pid)?;
        Ok(TaskMsg::Live { pid, uffd })
    }

    /// Blocks (up to `timeout`) for RESTORE_FINISHED.
    pub fn wait_finished(&mut self, timeout: Option<Duration>) -> Result<(), RestoreError> {
        if self.finished {
            return Ok(());
        }
        let deadline = Deadline::new(timeout);
        let word = self
            .read_word("RESTORE_FINISHED", &deadline, false)?
            .unwrap_or(0);
        self.check_marker(word)
    }

    /// Non-blocking check for RESTORE_FINISHED: Ok(false) = not yet, Ok(true) = received;
    /// a hang-up before it is `HungUp`. Call when the fd polls readable.
    pub fn poll_finished(&mut self) -> Result<bool, RestoreError> {
        if self.finished {
            return Ok(true);
        }
        match self.read_word(
            "RESTORE_FINISHED",
            &Deadline::new(Some(Duration::ZERO)),
            true,
        )? {
            Some(word) => self.check_marker(word).map(|()| true),
            None => Ok(false),
        }
    }

    fn check_marker(&mut self, word: u32) -> Result<(), RestoreError> {
        if word != RESTORE_FINISHED {
            return Err(RestoreError::BadMarker(word));
        }
        self.finished = true;
        Ok(())
    }

    /// Reads 4 bytes; None only when `nonblocking` and they are not all there yet.
    fn read_word(
        &mut self,
        what: &'static str,
        deadline: &Deadline,
        nonblocking: bool,
    ) -> Result<Option<u32>, RestoreError> {
        while self.word_len < 4 {
            if !nonblocking && !wait_readable(self.sock.as_fd(), deadline)? {
                return Err(RestoreError::Timeout(format!("{what} from criu restore")));
            }
            // Never read past this word: the next byte may carry the SCM_RIGHTS fd, and a
            // plain recv over it would silently close that fd.
            match recv(
                self.sock.as_raw_fd(),
                &mut self.word[self.word_len..],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) if self.word_len == 0 => return Err(RestoreError::HungUp),
                Ok(0) => {
                    return Err(RestoreError::Truncated {
                        what,
                        got: self.word_len,
                        want: 4,
                    })
                }
                Ok(n) => self.word_len += n,
                Err(Errno::EAGAIN | Errno::EINTR) if nonblocking => return Ok(None),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(RestoreError::io("reading from criu restore", e)),
            }
        }
        self.word_len = 0;
        Ok(Some(u32::from_ne_bytes(self.word)))
    }

    /// Receives the 1-byte message carrying task `pid`'s uffd.
    fn recv_fd(&mut self, pid: i32) -> Result<OwnedFd, RestoreError> {
        let bad = |reason: &str| RestoreError::BadUffd {
            pid,
            reason: reason.to_string(),
        };
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!(std::os::fd::RawFd);
        let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
        let msg = match recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(msg) => msg,
            Err(Errno::EAGAIN | Errno::EINTR) => {
                self.pid_awaiting_fd = Some(pid);
                return Err(RestoreError::Timeout(format!("the uffd of task {pid}")));
            }
            Err(e) => return Err(RestoreError::io("receiving a uffd from criu restore", e)),
        };
        // Own every fd that arrived first, so all of them are closed on any error below.
        let mut fds: Vec<OwnedFd> = Vec::new();
        let cmsgs = msg
            .cmsgs()
            .map_err(|e| RestoreError::io("parsing the uffd control message", e))?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table for us alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.bytes == 0 {
            return Err(bad("criu restore hung up before sending its uffd"));
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(bad("the control message carrying the uffd was truncated"));
        }
        match fds.len() {
            1 => {
                let fd = fds.remove(0);
                check_is_uffd(&fd).map_err(|what| bad(&what))?;
                Ok(fd)
            }
            0 => Err(bad("the message after the pid carried no SCM_RIGHTS uffd")),
            n => Err(bad(&format!("expected one uffd, got {n} descriptors"))),
        }
    }
}

impl AsFd for RestoreConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A descriptor that is not a userfaultfd (a pipe, an eventfd, /dev/null) would fail on
/// its first ioctl, or look like a task that exited: refuse it here, saying what it is.
fn check_is_uffd(fd: &OwnedFd) -> Result<(), String> {
    let not = |what: &str| {
        Err(format!(
            "the descriptor it sent is {what}, not a userfaultfd"
        ))
    };
    let stat = match nix::sys::stat::fstat(fd.as_fd()) {
        Ok(stat) => stat,
        Err(e) => return not(&format!("unreadable (fstat: {e})")),
    };
    // Regular files, devices, pipes, sockets and directories have a file type; only an
    // anon inode may be a userfaultfd (its type bits are 0 or S_IFREG depending on the kernel).
    let kind = stat.st_mode & nix::libc::S_IFMT;
    if kind != 0 && kind != nix::libc::S_IFREG {
        return not(&describe_fd(fd));
    }
    // The anon inode's name tells userfaultfd from eventfd, signalfd, timerfd...
    let link = describe_fd(fd);
    if link != "anon_inode:[userfaultfd]" {
        return not(&link);
    }
    Ok(())
}

/// What /proc says the descriptor is ("anon_inode:[eventfd]", "pipe:[123]", a path).
fn describe_fd(fd: &OwnedFd) -> String {
    match fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) => target.display().to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Binds `path`; when it is too long for sun_path, binds the same file through
/// /proc/self/fd/<dir> so deep work dirs still work.
fn bind_path(sock: &OwnedFd, work_dir: &Path, path: &Path) -> io::Result<()> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        bind(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        return Ok(());
    }
    let dir = fs::File::open(work_dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd()));
    bind(sock.as_raw_fd(), &UnixAddr::new(&short)?)?;
    Ok(())
}

/// Absolute end of a wait; `None` waits forever.
struct Deadline(Option<Instant>);

impl Deadline {
    fn new(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| Instant::now() + t))
    }

    fn remaining(&self) -> PollTimeout {
        match self.0 {
            None => PollTimeout::NONE,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond remainder still waits instead of spinning.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms as u32).unwrap_or(PollTimeout::MAX)
            }
        }
    }
}

/// Polls `fd` for input (or hang-up) until the deadline; false = timed out.
fn wait_readable(fd: BorrowedFd<'_>, deadline: &Deadline) -> Result<bool, RestoreError> {
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, deadline.remaining()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(RestoreError::io("poll on lazy-pages.socket", e)),
        }
    }
}
