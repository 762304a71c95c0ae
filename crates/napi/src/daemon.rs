//! The lazy-pages daemon as a JS object: images are read and the socket bound off
//! the JS thread; the restore is served on native threads; JS only receives events
//! (through a threadsafe function) and sends policy hints. No fault ever waits for JS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazy_pages_core::engine::{
    EngineConfig, EngineEvent, EngineStats, PageRun, TaskStats, TaskWorkingSet,
};
use lazy_pages_core::guardian::link::GuardianConfig;
use lazy_pages_core::ranges::PAGE_SIZE;
use lazy_pages_core::remote::{RemoteConfig, TlsClient};
use lazy_pages_core::session::{PageOrigin, Session, SessionConfig, SessionEvent, SessionHandle};
use napi::bindgen_prelude::{AsyncTask, Object};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Error, Status, Task};
use napi_derive::napi;

#[napi(object)]
pub struct DaemonOptions {
    pub images_dir: String,
    pub work_dir: String,
    /// 0 or absent: wait for criu restore forever.
    pub connect_timeout_ms: Option<u32>,
    pub handshake_timeout_ms: Option<u32>,
    /// Serve only faults for this long after restore finished.
    pub fill_delay_ms: Option<u32>,
    /// Background fill threads.
    pub jobs: Option<u32>,
    /// Pages per background claim (absent: 64 locally, `REMOTE_CHUNK_PAGES` from a page server).
    pub chunk_pages: Option<u32>,
    /// Pages copied per fault (the faulting one plus pending pages after it).
    pub fault_pages: Option<u32>,
    /// "host:port" of a lazy page server; absent: pages from the local images.
    pub page_server: Option<String>,
    /// "4.1" or "4.2": the page server's wire format (absent: from the images).
    pub criu_version: Option<String>,
    /// With page_server: reconnect and resume for up to this long if the
    /// connection drops (0 or absent: a drop is fatal, as CRIU's server needs).
    pub reconnect_ms: Option<u32>,
    /// With page_server: a request, or a reply partly received, with no byte
    /// from the server for this long is fatal (absent: the client's default).
    pub stall_timeout_ms: Option<u32>,
    /// With page_server: a second connection for faults (our page server
    /// only: CRIU's takes one connection).
    pub urgent_connection: Option<bool>,
    /// With page_server: `--tls` (absent: plain TCP).
    pub tls: Option<crate::tls::TlsOptions>,
    /// Keep every lazy-page fault of the dump's tasks, in order
    /// (`recordedWorkingSet()` after `serve`).
    pub record_working_set: Option<bool>,
    /// Fetch these pages first, from the moment each task's uffd arrives.
    pub prefetch_working_set: Option<Vec<WorkingSetTask>>,
    /// The `lazy-pages-guardian` binary: started before listening, it holds every uffd
    /// so that this daemon's death never leaves zeros (absent: no guardian).
    pub guardian_program: Option<String>,
    /// How long the guardian waits for a resume after this daemon died.
    pub resume_timeout_ms: Option<u32>,
    /// The daemon's log file, where the guardian writes its line too.
    pub log_file: Option<String>,
}

/// This daemon took over from a guardian whose daemon died.
#[napi(object)]
pub struct ResumeInfo {
    pub guardian_pid: u32,
    /// The daemon that died (0: unknown).
    pub lost_daemon: i32,
    pub tasks: u32,
    /// Tasks the dead daemon had already finished (every page in, or exited).
    pub done_tasks: u32,
}

/// One dump task's working set: `pages[i]` pages from run-time address `addrs[i]`,
/// in the order the task first needed them.
#[napi(object)]
pub struct WorkingSetTask {
    pub pid: u32,
    pub addrs: Vec<f64>,
    pub pages: Vec<u32>,
}

/// Highest user address on any Linux we run on (57-bit virtual addresses).
const ADDR_LIMIT: f64 = (1u64 << 57) as f64;

fn to_working_set(sets: Vec<WorkingSetTask>) -> napi::Result<Vec<TaskWorkingSet>> {
    sets.into_iter()
        .map(|t| {
            if t.addrs.len() != t.pages.len() {
                return Err(err(format!(
                    "working set of pid {}: {} addresses but {} page counts",
                    t.pid,
                    t.addrs.len(),
                    t.pages.len()
                )));
            }
            let runs = t
                .addrs
                .iter()
                .zip(&t.pages)
                .map(|(&addr, &pages)| {
                    let page_aligned = addr.fract() == 0.0 && (addr as u64) % PAGE_SIZE == 0;
                    if !(addr >= 0.0 && addr < ADDR_LIMIT && page_aligned) || pages == 0 {
                        return Err(err(format!(
                            "working set of pid {}: bad run {addr} (+{pages} pages)",
                            t.pid
                        )));
                    }
                    Ok(PageRun {
                        addr: addr as u64,
                        pages: pages.into(),
                    })
                })
                .collect::<napi::Result<Vec<_>>>()?;
            Ok(TaskWorkingSet { pid: t.pid, runs })
        })
        .collect()
}

fn from_working_set(set: &TaskWorkingSet) -> WorkingSetTask {
    WorkingSetTask {
        pid: set.pid,
        addrs: set.runs.iter().map(|r| r.addr as f64).collect(),
        pages: set
            .runs
            .iter()
            .map(|r| r.pages.min(u32::MAX.into()) as u32)
            .collect(),
    }
}

#[napi(object)]
#[derive(Clone)]
pub struct TaskReport {
    /// Engine id of this uffd (forked children get their own).
    pub task: u32,
    /// Pid in the dump (forked children inherit their parent's).
    pub pid: u32,
    pub parent: Option<u32>,
    pub total: f64,
    pub faulted: f64,
    pub background: f64,
    /// Of `background`: working-set pages fetched first (`--prefetch-ws`).
    pub prefetched: f64,
    pub zero: f64,
    pub exists: f64,
    pub dropped: f64,
    pub pending: f64,
    pub in_flight: f64,
    pub exited: bool,
    pub done: bool,
}

impl From<&TaskStats> for TaskReport {
    fn from(s: &TaskStats) -> Self {
        TaskReport {
            task: s.task,
            pid: s.pid,
            parent: s.parent,
            total: s.total as f64,
            faulted: s.faulted as f64,
            background: s.background as f64,
            prefetched: s.prefetched as f64,
            zero: s.zero as f64,
            exists: s.exists as f64,
            dropped: s.dropped as f64,
            pending: s.pending as f64,
            in_flight: s.in_flight as f64,
            exited: s.exited,
            done: s.done,
        }
    }
}

#[napi(object)]
pub struct DaemonStats {
    pub tasks: Vec<TaskReport>,
    pub faults: f64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    pub fault_max_us: f64,
    pub dropped_fault_events: f64,
    pub restore_finished: bool,
    pub elapsed_ms: f64,
}

impl From<EngineStats> for DaemonStats {
    fn from(s: EngineStats) -> Self {
        let lat = &s.fault_latency;
        DaemonStats {
            tasks: s.tasks.iter().map(TaskReport::from).collect(),
            faults: lat.count() as f64,
            fault_p50_us: lat.percentile_us(50.0) as f64,
            fault_p99_us: lat.percentile_us(99.0) as f64,
            fault_max_us: lat.percentile_us(100.0) as f64,
            dropped_fault_events: s.dropped_fault_events as f64,
            restore_finished: s.restore_finished,
            elapsed_ms: s.elapsed.as_secs_f64() * 1000.0,
        }
    }
}

/// One event of a running daemon. `kind` says which fields are set.
#[napi(object)]
pub struct DaemonEvent {
    /// connected | rejected | guarded | resumed | task | zombie | restore-finished | fault | forked | exited | task-done | progress | working-set-fetched | warning | error | finished
    pub kind: String,
    pub pid: Option<u32>,
    pub task: Option<u32>,
    pub parent: Option<u32>,
    /// Run-time address (exact in a double: user addresses are below 2^57).
    pub addr: Option<f64>,
    pub pages: Option<f64>,
    pub done_pages: Option<f64>,
    pub total_pages: Option<f64>,
    pub message: Option<String>,
    pub stats: Option<TaskReport>,
    /// Since the restore connected.
    pub elapsed_ms: Option<f64>,
}

impl DaemonEvent {
    fn new(kind: &str) -> Self {
        DaemonEvent {
            kind: kind.into(),
            pid: None,
            task: None,
            parent: None,
            addr: None,
            pages: None,
            done_pages: None,
            total_pages: None,
            message: None,
            stats: None,
            elapsed_ms: None,
        }
    }
}

fn to_js_event(event: SessionEvent) -> DaemonEvent {
    match event {
        SessionEvent::Connected { peer_pid, peer_uid } => DaemonEvent {
            pid: u32::try_from(peer_pid).ok(),
            message: Some(format!("criu restore connected (pid {peer_pid}, uid {peer_uid})")),
            ..DaemonEvent::new("connected")
        },
        SessionEvent::Rejected { message } => DaemonEvent { message: Some(message), ..DaemonEvent::new("rejected") },
        SessionEvent::Task { pid, task, lazy_pages } => {
            DaemonEvent { pid: Some(pid), task: Some(task), pages: Some(lazy_pages as f64), ..DaemonEvent::new("task") }
        }
        SessionEvent::Zombie { pid } => DaemonEvent { pid: Some(pid), ..DaemonEvent::new("zombie") },
        SessionEvent::RestoreFinished => DaemonEvent::new("restore-finished"),
        SessionEvent::Guarded { guardian_pid } => DaemonEvent { pid: Some(guardian_pid), ..DaemonEvent::new("guarded") },
        SessionEvent::Resumed { guardian_pid, lost_daemon, tasks, restore_finished } => DaemonEvent {
            pid: Some(guardian_pid),
            message: Some(format!(
                "resumed: guardian pid {guardian_pid} handed over {tasks} tasks of daemon pid {lost_daemon}, which died{}",
                if restore_finished { "" } else { " before criu restore finished" }
            )),
            ..DaemonEvent::new("resumed")
        },
        SessionEvent::GuardianLost { message } => DaemonEvent { message: Some(message), ..DaemonEvent::new("guardian-lost") },
        SessionEvent::Engine(e) => match e {
            EngineEvent::Fault { pid, task, addr, pages } => DaemonEvent {
                pid: Some(pid),
                task: Some(task),
                addr: Some(addr as f64),
                pages: Some(pages as f64),
                ..DaemonEvent::new("fault")
            },
            EngineEvent::TaskForked { pid, parent, child } => {
                DaemonEvent { pid: Some(pid), parent: Some(parent), task: Some(child), ..DaemonEvent::new("forked") }
            }
            EngineEvent::TaskExited { pid, task } => DaemonEvent { pid: Some(pid), task: Some(task), ..DaemonEvent::new("exited") },
            EngineEvent::TaskDone { pid, task, stats } => DaemonEvent {
                pid: Some(pid),
                task: Some(task),
                stats: Some(TaskReport::from(&stats)),
                ..DaemonEvent::new("task-done")
            },
            EngineEvent::Progress { done_pages, total_pages } => DaemonEvent {
                done_pages: Some(done_pages as f64),
                total_pages: Some(total_pages as f64),
                ..DaemonEvent::new("progress")
            },
            EngineEvent::Error { message } => DaemonEvent { message: Some(message), ..DaemonEvent::new("error") },
            EngineEvent::Warning { message } => DaemonEvent { message: Some(message), ..DaemonEvent::new("warning") },
            EngineEvent::WorkingSetFetched { pages, elapsed } => DaemonEvent {
                pages: Some(pages as f64),
                elapsed_ms: Some(elapsed.as_secs_f64() * 1000.0),
                ..DaemonEvent::new("working-set-fetched")
            },
            EngineEvent::Finished => DaemonEvent::new("finished"),
        },
    }
}

pub(crate) fn err(e: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, e.to_string())
}

type EventFn = ThreadsafeFunction<DaemonEvent, (), DaemonEvent, Status, false, false, 1024>;

/// A prepared daemon: images validated, `lazy-pages.socket` listening.
#[napi]
pub struct LazyDaemon {
    session: Mutex<Option<Session>>,
    handle: Arc<SessionHandle>,
    config: SessionConfig,
    socket: Option<String>,
    resumed: Option<ResumeInfo>,
    guardian_pid: Option<u32>,
    tasks: u32,
    warnings: Vec<String>,
}

pub struct Prepare {
    options: Option<DaemonOptions>,
}

impl Task for Prepare {
    type Output = LazyDaemon;
    type JsValue = LazyDaemon;

    fn compute(&mut self) -> napi::Result<LazyDaemon> {
        let o = self
            .options
            .take()
            .ok_or_else(|| err("prepare ran twice"))?;
        let origin = match &o.page_server {
            None => PageOrigin::Local,
            Some(addr) => {
                let version =
                    crate::page_server::wire_version(o.criu_version.as_deref(), &o.images_dir)?;
                let reconnect = Duration::from_millis(o.reconnect_ms.unwrap_or(0).into());
                let urgent_connection = o.urgent_connection.unwrap_or(false);
                let defaults = RemoteConfig::default();
                let stall_timeout = o
                    .stall_timeout_ms
                    .filter(|&ms| ms > 0)
                    .map_or(defaults.stall_timeout, |ms| {
                        Duration::from_millis(ms.into())
                    });
                let tls = match &o.tls {
                    Some(t) => Some(Arc::new(
                        TlsClient::new(&t.files(), crate::tls::host_of(addr)).map_err(err)?,
                    )),
                    None => None,
                };
                let config = RemoteConfig {
                    version,
                    reconnect,
                    urgent_connection,
                    stall_timeout,
                    tls,
                    ..defaults
                };
                PageOrigin::Remote {
                    addr: addr.clone(),
                    config,
                }
            }
        };
        let guardian = o.guardian_program.as_ref().map(|program| GuardianConfig {
            program: PathBuf::from(program),
            resume_timeout: Duration::from_millis(o.resume_timeout_ms.unwrap_or(60_000).into()),
            log_file: o.log_file.as_ref().map(PathBuf::from),
        });
        let session = Session::prepare(
            &PathBuf::from(&o.images_dir),
            &PathBuf::from(&o.work_dir),
            origin,
            guardian.as_ref(),
        )
        .map_err(err)?;
        let ms = |v: Option<u32>| {
            v.filter(|&v| v > 0)
                .map(|v| Duration::from_millis(v.into()))
        };
        let defaults = EngineConfig::default();
        let config = SessionConfig {
            connect_timeout: ms(o.connect_timeout_ms),
            // 0 = forever, like --connect-timeout 0.
            handshake_timeout: ms(o.handshake_timeout_ms),
            fill_delay: ms(o.fill_delay_ms).unwrap_or_default(),
            prefetch: Arc::new(to_working_set(o.prefetch_working_set.unwrap_or_default())?),
            engine: EngineConfig {
                record_working_set: o.record_working_set.unwrap_or(false),
                // Fill from the moment each uffd arrives, unless told to hold the fill
                // back (--fill-delay) or to record faults (a working set is faults only).
                early_fill: o.fill_delay_ms.unwrap_or(0) == 0
                    && !o.record_working_set.unwrap_or(false),
                jobs: o.jobs.map_or(defaults.jobs, |v| v as usize),
                chunk_pages: o.chunk_pages.map_or(
                    if o.page_server.is_some() {
                        lazy_pages_core::remote::REMOTE_CHUNK_PAGES
                    } else {
                        defaults.chunk_pages
                    },
                    u64::from,
                ),
                fault_pages: o.fault_pages.map_or(defaults.fault_pages, u64::from),
                ..defaults
            },
        };
        Ok(LazyDaemon {
            socket: session.socket_path().map(|p| p.display().to_string()),
            resumed: session
                .resuming()
                .map(
                    |(guardian_pid, lost_daemon, tasks, done_tasks)| ResumeInfo {
                        guardian_pid,
                        lost_daemon,
                        tasks: tasks as u32,
                        done_tasks,
                    },
                ),
            guardian_pid: session.guardian_pid(),
            tasks: session.dump().tasks.len() as u32,
            warnings: session.warnings().to_vec(),
            session: Mutex::new(Some(session)),
            handle: Arc::new(SessionHandle::default()),
            config,
        })
    }

    fn resolve(&mut self, _env: Env, output: LazyDaemon) -> napi::Result<LazyDaemon> {
        Ok(output)
    }
}

/// Read and check the dump in `imagesDir`, then listen on `workDir/lazy-pages.socket`.
#[napi(ts_return_type = "Promise<LazyDaemon>")]
pub fn prepare_daemon(options: DaemonOptions) -> AsyncTask<Prepare> {
    AsyncTask::new(Prepare {
        options: Some(options),
    })
}

#[napi]
impl LazyDaemon {
    /// Where criu restore connects; null when resuming (nothing listens then).
    #[napi(getter)]
    pub fn socket_path(&self) -> Option<String> {
        self.socket.clone()
    }

    /// Set when this daemon resumes the restore of one that died.
    #[napi(getter)]
    pub fn resumed(&self) -> Option<ResumeInfo> {
        self.resumed.as_ref().map(|r| ResumeInfo {
            guardian_pid: r.guardian_pid,
            lost_daemon: r.lost_daemon,
            tasks: r.tasks,
            done_tasks: r.done_tasks,
        })
    }

    /// Lines to log as warnings before serving (e.g. a stranger's socket where our
    /// guardian's goes, which was ignored).
    #[napi(getter)]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The guardian holding this restore's uffds (null without one).
    #[napi(getter)]
    pub fn guardian_pid(&self) -> Option<u32> {
        self.guardian_pid
    }

    /// Processes in the dump's pstree: CRIU sends one message per process.
    #[napi(getter)]
    pub fn expected_tasks(&self) -> u32 {
        self.tasks
    }

    /// Serve one `criu restore --lazy-pages` on native threads. Resolves with the final
    /// stats when every task has all its pages (or exited); rejects on a failed restore.
    #[napi(
        ts_args_type = "onEvent: (event: DaemonEvent) => void",
        ts_return_type = "Promise<DaemonStats>"
    )]
    pub fn serve<'env>(&self, env: &'env Env, on_event: EventFn) -> napi::Result<Object<'env>> {
        let session = self
            .session
            .lock()
            .map_err(err)?
            .take()
            .ok_or_else(|| err("this daemon already served its restore"))?;
        let (deferred, promise) = env.create_deferred()?;
        let handle = self.handle.clone();
        let config = self.config.clone();
        let on_event = Arc::new(on_event);
        let events = on_event.clone();
        let callback = Arc::new(move |event: SessionEvent| {
            // Fault notices may be dropped when JS is behind (the engine counts them);
            // lifecycle events wait for room.
            let mode = if matches!(event, SessionEvent::Engine(EngineEvent::Fault { .. })) {
                ThreadsafeFunctionCallMode::NonBlocking
            } else {
                ThreadsafeFunctionCallMode::Blocking
            };
            events.call(to_js_event(event), mode);
        });
        std::thread::Builder::new()
            .name("lazy-session".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    session.run(config, handle, callback)
                }));
                drop(on_event);
                match result {
                    Ok(Ok(stats)) => deferred.resolve(move |_env| Ok(DaemonStats::from(stats))),
                    Ok(Err(e)) => deferred.reject(err(e)),
                    Err(_) => deferred.reject(err("internal error: the restore session panicked")),
                }
            })
            .map_err(err)?;
        Ok(promise)
    }

    /// Policy hint: fill these pages of dump task `pid` before others.
    #[napi]
    pub fn prioritize(&self, pid: u32, addr: f64, pages: u32) {
        if addr >= 0.0 && addr.is_finite() {
            self.handle.prioritize(pid, addr as u64, pages.into());
        }
    }

    /// Live counters while serving (null before criu restore connected).
    #[napi]
    pub fn stats(&self) -> Option<DaemonStats> {
        self.handle.stats().map(DaemonStats::from)
    }

    /// After `serve` resolved, with `recordWorkingSet`: each dump task's lazy-page
    /// faults in order (null otherwise).
    #[napi]
    pub fn recorded_working_set(&self) -> Option<Vec<WorkingSetTask>> {
        self.handle
            .recorded_working_set()
            .map(|sets| sets.iter().map(from_working_set).collect())
    }

    /// Give up: stop serving; every page not served yet is poisoned (SIGBUS on touch).
    #[napi]
    pub fn abort(&self) {
        self.handle.abort();
    }
}
