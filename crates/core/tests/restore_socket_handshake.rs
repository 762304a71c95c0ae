//! The restore socket against a client that behaves like `criu restore --lazy-pages`.

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use lazy_pages_core::restore_socket::{
    RestoreError, RestoreListener, TaskMsg, RESTORE_FINISHED, SOCKET_NAME,
};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use userfaultfd::UffdBuilder;

const T: Option<Duration> = Some(Duration::from_secs(5));

/// The pieces of CRIU's side of the protocol.
struct CriuClient(UnixStream);

impl CriuClient {
    fn connect(path: &Path) -> Self {
        CriuClient(UnixStream::connect(path).expect("connect"))
    }
    fn send_pid(&mut self, pid: i32) {
        self.0.write_all(&pid.to_ne_bytes()).unwrap();
    }
    fn send_fd(&mut self, fd: Option<&OwnedFd>) {
        let byte = [0u8];
        let iov = [IoSlice::new(&byte)];
        let fds = fd.map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage> = fds
            .as_ref()
            .map(|f| ControlMessage::ScmRights(f))
            .into_iter()
            .collect();
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    }
    fn send_live(&mut self, pid: i32, uffd: &OwnedFd) {
        self.send_pid(pid);
        self.send_fd(Some(uffd));
    }
    fn send_finished(&mut self) {
        self.0.write_all(&RESTORE_FINISHED.to_ne_bytes()).unwrap();
    }
}

fn new_uffd() -> OwnedFd {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .create()
        .expect("uffd");
    lazy_pages_core::uffd::uffd_into_owned(uffd)
}

fn fd_target(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn listener() -> (tempfile::TempDir, RestoreListener) {
    let dir = tempfile::tempdir().unwrap();
    let l = RestoreListener::bind(dir.path()).unwrap();
    (dir, l)
}

#[test]
fn full_handshake_like_criu() {
    let (dir, l) = listener();
    let path = dir.path().join(SOCKET_NAME);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let client = thread::spawn(move || {
        let mut c = CriuClient::connect(&path);
        let (a, b) = (new_uffd(), new_uffd());
        c.send_live(100, &a);
        c.send_pid(-101);
        c.send_live(102, &b);
        thread::sleep(Duration::from_millis(50));
        c.send_finished();
        c
    });
    let mut conn = l.accept(T).unwrap();
    assert_eq!(conn.peer().uid, 0);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(conn.recv_task(T).unwrap());
    }
    match &got[..] {
        [TaskMsg::Live { pid: 100, uffd: a }, TaskMsg::Zombie { pid: 101 }, TaskMsg::Live { pid: 102, uffd: b }] =>
        {
            assert!(fd_target(a).contains("userfaultfd"), "{}", fd_target(a));
            assert!(fd_target(b).contains("userfaultfd"));
        }
        other => panic!("unexpected messages {other:?}"),
    }
    assert!(!conn.is_finished());
    conn.wait_finished(T).unwrap();
    assert!(conn.is_finished());
    let _c = client.join().unwrap();
}

#[test]
fn hang_up_before_finished_is_an_error() {
    let (dir, l) = listener();
    let path = dir.path().join(SOCKET_NAME);
    let client = thread::spawn(move || {
        let mut c = CriuClient::connect(&path);
        c.send_live(7, &new_uffd());
        // Dropping the stream is what a crashed criu restore looks like.
    });
    let mut conn = l.accept(T).unwrap();
    assert!(matches!(
        conn.recv_task(T).unwrap(),
        TaskMsg::Live { pid: 7, .. }
    ));
    client.join().unwrap();
    let err = conn.wait_finished(T).unwrap_err();
    assert!(matches!(err, RestoreError::HungUp), "{err}");
    assert_eq!(
        err.to_string(),
        "criu restore closed the connection before restore finished"
    );
    assert!(matches!(conn.recv_task(T), Err(RestoreError::HungUp)));
}

#[test]
fn missing_fd_names_the_pid() {
    let (dir, l) = listener();
    let path = dir.path().join(SOCKET_NAME);
    let client = thread::spawn(move || {
        let mut c = CriuClient::connect(&path);
        c.send_pid(42);
        c.send_fd(None);
        c
    });
    let mut conn = l.accept(T).unwrap();
    let err = conn.recv_task(T).unwrap_err();
    assert!(
        matches!(err, RestoreError::BadUffd { pid: 42, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("42"));
    drop(client.join());
}

#[test]
fn truncated_pid_and_bad_marker() {
    let (dir, l) = listener();
    let path = dir.path().join(SOCKET_NAME);
    let client = thread::spawn(move || {
        let mut c = CriuClient::connect(&path);
        c.0.write_all(&0xdead_beef_u32.to_ne_bytes()).unwrap();
        c.0.write_all(&[1, 2]).unwrap();
    });
    let mut conn = l.accept(T).unwrap();
    assert!(matches!(
        conn.wait_finished(T),
        Err(RestoreError::BadMarker(0xdead_beef))
    ));
    client.join().unwrap();
    assert!(matches!(
        conn.recv_task(T),
        Err(RestoreError::Truncated {
            got: 2,
            want: 4,
            ..
        })
    ));
}

#[test]
fn timeouts_resume_partial_reads() {
    let (dir, l) = listener();
    assert!(matches!(
        l.accept(Some(Duration::from_millis(30))),
        Err(RestoreError::Timeout(_))
    ));
    let path = dir.path().join(SOCKET_NAME);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let mut c = CriuClient::connect(&path);
        let pid = 77i32.to_ne_bytes();
        c.0.write_all(&pid[..2]).unwrap();
        rx.recv().unwrap();
        c.0.write_all(&pid[2..]).unwrap();
        rx.recv().unwrap();
        c.send_fd(Some(&new_uffd()));
        rx.recv().unwrap();
        c.0.write_all(&RESTORE_FINISHED.to_ne_bytes()[..3]).unwrap();
        rx.recv().unwrap();
        c.0.write_all(&RESTORE_FINISHED.to_ne_bytes()[3..]).unwrap();
        c
    });
    let mut conn = l.accept(T).unwrap();
    let short = Some(Duration::from_millis(30));
    let start = Instant::now();
    assert!(matches!(
        conn.recv_task(short),
        Err(RestoreError::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(25));
    tx.send(()).unwrap();
    // The pid completes but its fd has not come yet.
    assert!(matches!(
        conn.recv_task(short),
        Err(RestoreError::Timeout(_))
    ));
    tx.send(()).unwrap();
    assert!(matches!(
        conn.recv_task(T).unwrap(),
        TaskMsg::Live { pid: 77, .. }
    ));
    assert!(!conn.poll_finished().unwrap());
    tx.send(()).unwrap();
    thread::sleep(Duration::from_millis(30));
    assert!(!conn.poll_finished().unwrap());
    tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.poll_finished().unwrap() {
        assert!(Instant::now() < deadline);
        let mut fds = [nix::poll::PollFd::new(
            conn.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8)).unwrap();
    }
    drop(client.join());
}

#[test]
fn stale_file_is_replaced_and_long_paths_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = PathBuf::from(dir.path());
    while deep.as_os_str().len() < 140 {
        deep.push("a-rather-long-directory-name");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join(SOCKET_NAME), b"stale").unwrap();
    let l = RestoreListener::bind(&deep).unwrap();
    assert!(std::fs::metadata(deep.join(SOCKET_NAME))
        .unwrap()
        .file_type()
        .is_socket());
    // criu connects with a relative name from inside the work dir; go through
    // /proc/self/fd to stay under sun_path's limit without chdir in a test.
    let d = std::fs::File::open(&deep).unwrap();
    let short = format!("/proc/self/fd/{}/{SOCKET_NAME}", d.as_raw_fd());
    let client = thread::spawn(move || {
        let mut c = CriuClient(UnixStream::connect(short).unwrap());
        c.send_pid(-5);
        c
    });
    let mut conn = l.accept(T).unwrap();
    assert!(matches!(
        conn.recv_task(T).unwrap(),
        TaskMsg::Zombie { pid: 5 }
    ));
    drop(client.join());
}

#[test]
fn foreign_uid_is_rejected_and_waiting_continues() {
    let (dir, l) = listener();
    let path = dir.path().join(SOCKET_NAME);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
    // SAFETY: the child only makes async-signal-safe calls (setuid, socket, connect,
    // nanosleep, _exit) before exiting.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        unsafe {
            if libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            use nix::sys::socket::SockaddrLike;
            let rc = libc::connect(s, addr.as_ptr().cast(), addr.len());
            libc::sleep(1);
            libc::_exit(if rc == 0 { 0 } else { 3 });
        }
    }
    let path2 = path.clone();
    let good = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let mut c = CriuClient::connect(&path2);
        c.send_pid(-9);
        c
    });
    let mut rejected = Vec::new();
    let mut conn = l
        .accept_with(T, &mut |e| rejected.push(e.to_string()))
        .unwrap();
    assert_eq!(conn.peer().uid, 0);
    assert!(matches!(
        conn.recv_task(T).unwrap(),
        TaskMsg::Zombie { pid: 9 }
    ));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("uid 65534"), "{rejected:?}");
    let mut status = 0;
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(libc::WEXITSTATUS(status), 0);
    drop(good.join());
}
