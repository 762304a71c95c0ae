//! Driving real CRIU and the lpw workload for the interop tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lazy_pages_core::images::Dump;
use lazy_pages_core::remote::{PageServerConfig, Priority, RemoteConfig, RemotePages, WireVersion};

use super::{fetch, fetch_and_compare_all, serve};

/// CRIU runs one at a time: restores reuse pids and the tests share the box.
static CRIU_LOCK: Mutex<()> = Mutex::new(());

pub struct CriuEnv {
    pub criu: PathBuf,
    pub lpw: PathBuf,
    pub version: WireVersion,
}

pub struct LpwRun {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub images: PathBuf,
    pub pid: u32,
    _guard: std::sync::MutexGuard<'static, ()>,
}

pub struct Fetched {
    pub pages: u64,
    pub tasks: usize,
    pub elapsed: Duration,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

impl CriuEnv {
    pub fn detect() -> Option<CriuEnv> {
        let required = std::env::var("LP_REQUIRE_CRIU").is_ok_and(|v| v == "1");
        let skip = |why: String| -> Option<CriuEnv> {
            assert!(!required, "LP_REQUIRE_CRIU=1 but {why}");
            eprintln!("skipping CRIU interop: {why}");
            None
        };
        let criu = repo().join(".criu/bin/criu");
        let lpw = repo().join("build/workloads/lpw");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("not root".into());
        }
        if !criu.exists() || !lpw.exists() {
            return skip(format!("{} or {} missing", criu.display(), lpw.display()));
        }
        let pipe_max: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if pipe_max < 4 << 20 {
            return skip(format!(
                "fs.pipe-max-size is {pipe_max}; CRIU's page server needs >= 4 MiB (facts §6.1)"
            ));
        }
        let out = Command::new(&criu).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = if text.contains("Version: 4.2") {
            WireVersion::V42
        } else {
            WireVersion::V411
        };
        Some(CriuEnv { criu, lpw, version })
    }

    pub fn criu(&self) -> Command {
        Command::new(&self.criu)
    }

    /// Starts lpw, waits until it is ready, dumps it (normal dump) and waits
    /// until the dumped process is gone.
    pub fn dump_lpw(&self, name: &str, args: &[&str]) -> LpwRun {
        let guard = CRIU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("lp-remote-{name}-"))
            .tempdir()
            .unwrap();
        let state = tmp.path().join("state");
        let images = tmp.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let mut child = Command::new("setsid")
            .arg(&self.lpw)
            .args(args)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ready = state.join("ready-main.json");
        wait_for("lpw ready", Duration::from_secs(30), || ready.exists());
        let text = std::fs::read_to_string(&ready).unwrap();
        let pid: u32 = text
            .split("\"pid\":")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let status = self
            .criu()
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&images)
            .args(["-o", "dump.log"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "criu dump failed:\n{}",
            log_of(&images.join("dump.log"))
        );
        // Reap it (it may be our child), then make sure the pid is free for restore.
        let _ = child.wait();
        let dump = Dump::open(&images).unwrap();
        for task in &dump.tasks {
            let proc = PathBuf::from(format!("/proc/{}", task.pid));
            wait_for(
                "the dumped processes to disappear",
                Duration::from_secs(10),
                || !proc.exists(),
            );
        }
        LpwRun {
            tmp,
            state,
            images,
            pid,
            _guard: guard,
        }
    }
}

/// Whether something listens on TCP `port` (from /proc/net/tcp{,6}), so we can
/// wait for a one-session server without using up its session.
fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
                    && l.split_whitespace().nth(3) == Some("0A")
            })
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a spawned CRIU daemon if the test fails before waiting for it, so it
/// cannot outlive the test (or hold the test's output pipe open).
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_exit(child: &mut Child, what: &str, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl LpwRun {
    /// (a): `criu page-server --lazy-pages` over the dump; our client fetches
    /// every lazy page and compares with the images.
    pub fn fetch_all_via_criu_page_server(&self, env: &CriuEnv) -> Fetched {
        let port = free_port();
        let mut server = Reaper(
            env.criu()
                .args(["page-server", "--lazy-pages", "-D"])
                .arg(&self.images)
                .args([
                    "--address",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "-v4",
                    "-o",
                    "ps.log",
                ])
                .spawn()
                .unwrap(),
        );
        let log = self.images.join("ps.log");
        wait_for(
            "criu page-server to listen",
            Duration::from_secs(30),
            || listening(port),
        );
        let dump = Dump::open(&self.images).unwrap();
        let config = RemoteConfig {
            version: env.version,
            ..RemoteConfig::default()
        };
        let client = RemotePages::connect(&format!("127.0.0.1:{port}"), config).unwrap();
        let start = Instant::now();
        // A few single-page "faults" first, then everything in background chunks.
        let memory = dump.memory(self.pid).unwrap();
        let biggest = memory
            .lazy_extents()
            .into_iter()
            .max_by_key(|e| e.pages)
            .unwrap();
        for i in [0, 1, biggest.pages / 2, biggest.pages - 1] {
            let addr = biggest.start + i * 4096;
            let got = fetch(&client, self.pid, addr, 4096, Priority::Fault)
                .unwrap_or_else(|e| panic!("fault at {addr:#x}: {e}\n{}", log_of(&log)));
            assert!(
                got == super::expected(&dump, self.pid, addr, 4096),
                "fault page {addr:#x} differs"
            );
        }
        let pages = fetch_and_compare_all(&client, &dump, 64, Priority::Background);
        let elapsed = start.elapsed();
        client
            .close()
            .unwrap_or_else(|e| panic!("CLOSE: {e}\n{}", log_of(&log)));
        drop(client);
        let status = wait_exit(&mut server.0, "criu page-server", Duration::from_secs(30));
        assert!(
            status.success(),
            "criu page-server: {status}\n{}",
            log_of(&log)
        );
        Fetched {
            pages,
            tasks: dump.tasks.len(),
            elapsed,
        }
    }

    /// (b): our PageServer over the dump, `criu lazy-pages --page-server` and
    /// `criu restore --lazy-pages` over a copy; returns the workload's verdict.
    pub fn restore_via_our_page_server(&self, env: &CriuEnv) -> String {
        let copy = self.tmp.path().join("copy");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.images)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let dump = Dump::open(&self.images).unwrap();
        let config = PageServerConfig {
            address: "127.0.0.1".parse().unwrap(),
            version: env.version,
            keep_serving: false,
            ..PageServerConfig::default()
        };
        let server = serve(&dump, config);
        let port = server.addr.port().to_string();
        let mut daemon = Reaper(
            env.criu()
                .args([
                    "lazy-pages",
                    "--page-server",
                    "--address",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "-D",
                ])
                .arg(&copy)
                .args(["-v4", "-o", "lazy-pages.log"])
                .spawn()
                .unwrap(),
        );
        let socket = copy.join("lazy-pages.socket");
        wait_for("criu lazy-pages socket", Duration::from_secs(30), || {
            socket.exists()
        });
        let status = env
            .criu()
            .args(["restore", "--lazy-pages", "-d", "-D"])
            .arg(&copy)
            .args(["-o", "restore.log"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "criu restore failed:\n{}",
            log_of(&copy.join("restore.log"))
        );
        let status = wait_exit(&mut daemon.0, "criu lazy-pages", Duration::from_secs(120));
        assert!(
            status.success(),
            "criu lazy-pages: {status}\n{}",
            log_of(&copy.join("lazy-pages.log"))
        );
        let summary = server.join().unwrap();
        eprintln!("(b) our server: {summary:?}");
        assert_eq!(summary.failed_sessions, 0);
        assert!(summary.pages > 0);
        // Verify: the restored lpw checks every byte of its memory.
        verify_all(&self.state, self.pid)
    }
}

/// Page server for `restore_with_our_engine`.
pub enum Peer {
    /// Our PageServer over the dump.
    Ours,
    /// `criu page-server --lazy-pages` over the dump.
    Criu,
}

impl LpwRun {
    /// (c): our fault engine with `RemotePages` as its source, fed by `peer`,
    /// serving a real `criu restore --lazy-pages` of a copy of the dump.
    /// Returns the workload's verdict and the engine summary.
    pub fn restore_with_our_engine(
        &self,
        env: &CriuEnv,
        peer: Peer,
    ) -> (String, lazy_pages_core::engine::EngineSummary) {
        use lazy_pages_core::engine::{Engine, EngineConfig};
        use lazy_pages_core::ranges::LazyRange;
        use lazy_pages_core::restore_socket::{RestoreListener, TaskMsg};
        use std::sync::Arc;

        let copy = self.tmp.path().join("copy-c");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&self.images)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        let dump = Dump::open(&self.images).unwrap();
        let mut ours = None;
        let mut theirs = None;
        let target = match peer {
            Peer::Ours => {
                let cfg = PageServerConfig {
                    address: "127.0.0.1".parse().unwrap(),
                    version: env.version,
                    ..PageServerConfig::default()
                };
                let s = serve(&dump, cfg);
                let t = s.target();
                ours = Some(s);
                t
            }
            Peer::Criu => {
                let port = free_port();
                let child = env
                    .criu()
                    .args(["page-server", "--lazy-pages", "-D"])
                    .arg(&self.images)
                    .args([
                        "--address",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                        "-o",
                        "ps-c.log",
                    ])
                    .spawn()
                    .unwrap();
                wait_for(
                    "criu page-server to listen",
                    Duration::from_secs(30),
                    || listening(port),
                );
                theirs = Some(Reaper(child));
                format!("127.0.0.1:{port}")
            }
        };
        let listener = RestoreListener::bind(&copy).unwrap();
        let mut restore = Reaper(
            env.criu()
                .args(["restore", "--lazy-pages", "-d", "-D"])
                .arg(&copy)
                .args(["-o", "restore.log"])
                .spawn()
                .unwrap(),
        );
        let restore_log = copy.join("restore.log");
        let mut conn = listener.accept(Some(Duration::from_secs(30))).unwrap();
        // Like `criu lazy-pages`: connect to the page server once every uffd is in.
        let mut tasks = Vec::new();
        for _ in 0..dump.tasks.len() {
            let msg = conn.recv_task(Some(Duration::from_secs(30)));
            tasks.push(
                msg.unwrap_or_else(|e| panic!("from criu restore: {e}\n{}", log_of(&restore_log))),
            );
        }
        let config = RemoteConfig {
            version: env.version,
            ..RemoteConfig::default()
        };
        let source = Arc::new(RemotePages::connect(&target, config).unwrap());
        let engine =
            Engine::start(source.clone(), EngineConfig::default(), Box::new(|_| {})).unwrap();
        for msg in tasks {
            if let TaskMsg::Live { pid, uffd } = msg {
                let memory = dump.memory(pid as u32).unwrap();
                let ranges = memory
                    .lazy_extents()
                    .into_iter()
                    .map(|e| LazyRange::new(e.start, e.start + e.pages * 4096, e.start))
                    .collect();
                engine.add_task(pid as u32, uffd, ranges).unwrap();
            }
        }
        conn.wait_finished(Some(Duration::from_secs(60))).unwrap();
        engine.restore_finished();
        let status = wait_exit(&mut restore.0, "criu restore", Duration::from_secs(60));
        assert!(
            status.success(),
            "criu restore failed:\n{}",
            log_of(&copy.join("restore.log"))
        );
        let summary = engine.join().unwrap_or_else(|e| panic!("engine: {e}"));
        source.close().unwrap();
        drop(source);
        if let Some(s) = ours {
            assert_eq!(s.join().unwrap().failed_sessions, 0);
        }
        if let Some(mut child) = theirs {
            let st = wait_exit(&mut child.0, "criu page-server", Duration::from_secs(30));
            assert!(
                st.success(),
                "criu page-server: {st}\n{}",
                log_of(&self.images.join("ps-c.log"))
            );
        }
        (verify_all(&self.state, self.pid), summary)
    }
}

/// Asks every restored lpw process (the whole process group) to check its
/// memory; returns their verdicts, one line per role, "ok ..." when good.
fn verify_all(state: &Path, pgid: u32) -> String {
    let roles: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("ready-")?
                    .strip_suffix(".json")?
                    .to_string(),
            )
        })
        .collect();
    for role in &roles {
        let _ = std::fs::remove_file(state.join(format!("result-{role}.txt")));
    }
    let pgid = format!("-{pgid}");
    assert!(Command::new("kill")
        .args(["-USR1", "--", &pgid])
        .status()
        .unwrap()
        .success());
    let mut verdicts = Vec::new();
    for role in &roles {
        let result = state.join(format!("result-{role}.txt"));
        wait_for("the workload's verdicts", Duration::from_secs(60), || {
            result.exists()
        });
        std::thread::sleep(Duration::from_millis(50));
        verdicts.push(std::fs::read_to_string(&result).unwrap().trim().to_string());
    }
    let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
    let bad: Vec<&String> = verdicts.iter().filter(|v| !v.starts_with("ok")).collect();
    if bad.is_empty() {
        verdicts.join("\n")
    } else {
        format!("FAIL: {bad:?}")
    }
}
