//! One local lazy restore, end to end: images -> socket -> per-task uffds ->
//! engine -> done. Runs on a thread of the caller's choosing (the binding uses a
//! native thread, never the JS one); policy talks to it through `SessionHandle`.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{
    Engine, EngineConfig, EngineError, EngineEvent, EngineSummary, PageSource, TaskWorkingSet,
    UnservedNote,
};
use crate::guardian::link::{GuardianConfig, GuardianError, GuardianLink, GuardianState};
use crate::images::{Dump, ImageError, TaskState};
use crate::ranges::{LazyRange, LazyRanges};
use crate::restore_socket::{RestoreConn, RestoreError, RestoreListener, TaskMsg};

/// How often blocking waits wake up to look at the abort flag: bounds how long a
/// dead `criu restore` or an abort goes unnoticed.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Images(#[from] ImageError),
    #[error("{0}")]
    Source(String),
    #[error("{path}: cannot listen: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Restore(#[from] RestoreError),
    #[error("criu restore sent task {pid}, which is not a live task of the dump in {dir}")]
    UnknownTask { pid: i32, dir: PathBuf },
    /// The handshake contradicts the pstree: nothing of it can be served safely.
    #[error("criu restore sent task {pid} {problem} (dump in {dir})")]
    BadTask {
        pid: i32,
        problem: String,
        dir: PathBuf,
    },
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Guardian(#[from] GuardianError),
    #[error("resuming from the guardian (pid {guardian}): {source}; the guardian poisons every page still missing: a restored process that touches one gets SIGBUS")]
    ResumeFailed {
        guardian: u32,
        #[source]
        source: Box<SessionError>,
    },
    #[error("aborted")]
    Aborted,
    #[error("{source}; {note}")]
    Unserved {
        #[source]
        source: Box<SessionError>,
        note: UnservedNote,
    },
}

/// Lifecycle of a session, for logs, progress and stats.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    Connected {
        peer_pid: i32,
        peer_uid: u32,
    },
    /// A connection from a stranger (neither root nor our uid), turned away.
    Rejected {
        message: String,
    },
    Task {
        pid: u32,
        task: u32,
        lazy_pages: u64,
    },
    Zombie {
        pid: u32,
    },
    RestoreFinished,
    /// A guardian was started for this restore.
    Guarded {
        guardian_pid: u32,
    },
    /// This daemon took over from `lost_daemon`, which died: `tasks` uffds came back
    /// from the guardian.
    Resumed {
        guardian_pid: u32,
        lost_daemon: i32,
        tasks: u32,
        restore_finished: bool,
    },
    /// The guardian died or stopped reading: crash safety ends here (said once, when it
    /// happens).
    GuardianLost {
        message: String,
    },
    Engine(EngineEvent),
}

pub type SessionCallback = Arc<dyn Fn(SessionEvent) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// None: wait for `criu restore` forever (what `criu lazy-pages` does).
    pub connect_timeout: Option<Duration>,
    /// Bounds the whole handshake, from the connect to RESTORE_FINISHED (None: forever,
    /// as `criu lazy-pages` waits); a peer that stalls anywhere in it is dropped.
    pub handshake_timeout: Option<Duration>,
    /// Serve only faults for this long after restore finished, then start the
    /// background fill (lets a warming-up process have the whole bandwidth).
    pub fill_delay: Duration,
    /// Fetched first, from the moment each task's uffd arrives (`--prefetch-ws`).
    pub prefetch: Arc<Vec<TaskWorkingSet>>,
    pub engine: EngineConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            connect_timeout: None,
            handshake_timeout: Some(Duration::from_secs(120)),
            fill_delay: Duration::ZERO,
            prefetch: Arc::default(),
            engine: EngineConfig::default(),
        }
    }
}

/// Shared with the policy layer while the session runs.
#[derive(Default)]
pub struct SessionHandle {
    engine: Mutex<Option<Arc<Engine>>>,
    abort: AtomicBool,
    recorded: Mutex<Option<Vec<TaskWorkingSet>>>,
}

impl SessionHandle {
    pub fn prioritize(&self, pid: u32, addr: u64, pages: u64) {
        if let Some(engine) = self.engine() {
            engine.prioritize(pid, addr, pages);
        }
    }

    pub fn stats(&self) -> Option<crate::engine::EngineStats> {
        self.engine().map(|e| e.stats())
    }

    /// Stop serving: pending pages stay unserved, so the restored tasks would see
    /// zeros; callers use it only when the restore is lost anyway.
    pub fn abort(&self) {
        self.abort.store(true, SeqCst);
        if let Some(engine) = self.engine() {
            engine.shutdown();
        }
    }

    /// After a successful run with `EngineConfig::record_working_set`: the faults of
    /// every dump task, in order.
    pub fn recorded_working_set(&self) -> Option<Vec<TaskWorkingSet>> {
        self.recorded.lock().ok().and_then(|r| r.clone())
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.lock().ok().and_then(|e| e.clone())
    }

    fn check_abort(&self) -> Result<(), SessionError> {
        if self.abort.load(SeqCst) {
            Err(SessionError::Aborted)
        } else {
            Ok(())
        }
    }
}

/// Where the lazy pages come from.
pub enum PageOrigin {
    /// The pages images next to the metadata (a normal dump).
    Local,
    /// A lazy page server ("host:port"): `criu dump --lazy-pages --port`,
    /// `criu page-server --lazy-pages`, or `lazy-pages page-server`.
    Remote {
        addr: String,
        config: crate::remote::RemoteConfig,
    },
}

/// A dump validated and a socket listening: `criu restore --lazy-pages` may start.
pub struct Session {
    dump: Arc<Dump>,
    source: Arc<dyn PageSource>,
    /// Kept to say goodbye (PS_IOV_CLOSE) so the serving side ends cleanly.
    remote: Option<Remote>,
    start: Start,
    guardian: Option<Arc<GuardianLink>>,
    /// Said once before serving (e.g. a stranger's socket where our guardian's goes).
    warnings: Vec<String>,
    /// Where the lock's record is kept (`workdir_lock::note`).
    work_dir: PathBuf,
}

/// How the restore reaches us.
enum Start {
    /// A new restore: `criu restore` connects to `lazy-pages.socket`.
    Listen(RestoreListener),
    /// A daemon serving this work dir died; its guardian handed its tasks back.
    Resume(GuardianState),
}

/// The remote source, kept to close it.
enum Remote {
    One(Arc<crate::remote::RemotePages>),
    /// `urgent_connection`: a bulk and a fault connection.
    Two(Arc<crate::remote::PrioritySource>),
}

impl Remote {
    fn close(&self) -> Result<(), crate::engine::SourceError> {
        match self {
            Remote::One(r) => r.close(),
            Remote::Two(r) => r.close(),
        }
    }

    fn failure(&self) -> Option<String> {
        match self {
            Remote::One(r) => r.failure(),
            Remote::Two(r) => r.failure(),
        }
    }
}

impl Session {
    /// Reads and checks every image before binding, so bad images fail before any
    /// restore can connect. With `guardian`, finds the guardian of a daemon that died
    /// serving this work dir and resumes from it (nothing is bound then), or starts a
    /// new guardian before listening.
    pub fn prepare(
        images_dir: &Path,
        work_dir: &Path,
        origin: PageOrigin,
        guardian: Option<&GuardianConfig>,
    ) -> Result<Session, SessionError> {
        let dump = Arc::new(Dump::open(images_dir)?);
        let mut warnings = Vec::new();
        // Only needed with a guardian: which dump its tasks were restored from.
        let dump_id = match guardian {
            Some(_) => crate::images::dump_identity(images_dir)?,
            None => String::new(),
        };
        let found = match guardian {
            Some(_) => match GuardianLink::find(work_dir, images_dir, &dump_id) {
                // Someone else's socket: never adopted; our own guardian replaces it.
                Err(e @ GuardianError::Stranger { .. }) => {
                    warnings.push(e.to_string());
                    None
                }
                other => other?,
            },
            None => None,
        };
        let (link, resume) = match found {
            Some((link, state)) if !state.tasks.is_empty() => (Some(link), Some(state)),
            // A guardian with nothing to hand over serves a new restore just as well.
            Some((link, _)) => (Some(link), None),
            None => (None, None),
        };
        let source = match Self::source(&dump, origin) {
            Ok(source) => source,
            Err(e) => {
                return Err(match (&link, &resume) {
                    (Some(link), Some(_)) => {
                        link.abandon();
                        SessionError::ResumeFailed {
                            guardian: link.pid(),
                            source: Box::new(e),
                        }
                    }
                    _ => e,
                })
            }
        };
        let (source, remote) = source;
        let (start, link) = match resume {
            Some(state) => (Start::Resume(state), link),
            None => {
                // The guardian listens before we do: no uffd can arrive unprotected.
                let link = match (link, guardian) {
                    (Some(link), _) => Some(link),
                    (None, Some(config)) => Some(GuardianLink::spawn(work_dir, config, &dump_id)?),
                    (None, None) => None,
                };
                let listener =
                    RestoreListener::bind(work_dir).map_err(|source| SessionError::Listen {
                        path: work_dir.join(crate::restore_socket::SOCKET_NAME),
                        source,
                    })?;
                (Start::Listen(listener), link)
            }
        };
        Ok(Session {
            dump,
            source,
            remote,
            start,
            guardian: link.map(Arc::new),
            warnings,
            work_dir: work_dir.to_path_buf(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn source(
        dump: &Arc<Dump>,
        origin: PageOrigin,
    ) -> Result<(Arc<dyn PageSource>, Option<Remote>), SessionError> {
        Ok(match origin {
            PageOrigin::Local => (
                Arc::new(
                    crate::local_pages::LocalPages::new(dump.clone())
                        .map_err(SessionError::Source)?,
                ),
                None,
            ),
            // Connect before listening: a page server that is not there fails the
            // daemon before any restore depends on it.
            PageOrigin::Remote { addr, config } if config.urgent_connection => {
                let remote = Arc::new(
                    crate::remote::PrioritySource::connect(&addr, config)
                        .map_err(|e| SessionError::Source(e.to_string()))?,
                );
                (remote.clone(), Some(Remote::Two(remote)))
            }
            PageOrigin::Remote { addr, config } => {
                let remote = Arc::new(
                    crate::remote::RemotePages::connect(&addr, config)
                        .map_err(|e| SessionError::Source(e.to_string()))?,
                );
                (remote.clone(), Some(Remote::One(remote)))
            }
        })
    }

    /// Resuming from a guardian: (its pid, the daemon that died, tasks handed back,
    /// tasks the dead daemon had finished).
    pub fn resuming(&self) -> Option<(u32, i32, usize, u32)> {
        match &self.start {
            Start::Resume(state) => Some((
                state.guardian_pid,
                state.lost_daemon,
                state.tasks.len(),
                state.done_tasks,
            )),
            Start::Listen(_) => None,
        }
    }

    /// Lines to log as warnings before serving.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn guardian_pid(&self) -> Option<u32> {
        self.guardian.as_ref().map(|g| g.pid())
    }

    /// Where criu restore connects (None when resuming: nothing listens then).
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.start {
            Start::Listen(listener) => Some(listener.path()),
            Start::Resume(_) => None,
        }
    }

    pub fn dump(&self) -> &Arc<Dump> {
        &self.dump
    }

    /// Serves one restore to the end. Returns the final stats once every task has
    /// all its pages (or exited).
    pub fn run(
        mut self,
        config: SessionConfig,
        handle: Arc<SessionHandle>,
        events: SessionCallback,
    ) -> Result<EngineSummary, SessionError> {
        let result = self.run_engine(&config, &handle, &events);
        // Whatever the outcome, this daemon did not die mid-restore.
        crate::workdir_lock::note(&self.work_dir, "ended");
        // Ended in order: every page is in, or our engine poisoned what it could not
        // serve (a resume that could not take its tasks over abandoned them first).
        if let Some(guardian) = &self.guardian {
            guardian.quit();
        }
        result
    }

    fn run_engine(
        &mut self,
        config: &SessionConfig,
        handle: &Arc<SessionHandle>,
        events: &SessionCallback,
    ) -> Result<EngineSummary, SessionError> {
        let resumed = match &mut self.start {
            Start::Resume(state) => Some(std::mem::replace(
                state,
                GuardianState {
                    guardian_pid: state.guardian_pid,
                    restore_finished: false,
                    restore_peer: 0,
                    lost_daemon: 0,
                    tasks: Vec::new(),
                    done_tasks: 0,
                },
            )),
            Start::Listen(_) => None,
        };
        let mut conn = match resumed {
            Some(_) => None,
            None => {
                if let Some(pid) = self.guardian_pid() {
                    events(SessionEvent::Guarded { guardian_pid: pid });
                }
                let conn = self.accept(config, handle, events)?;
                let peer = conn.peer();
                // On record first: a re-run after our death says this restore died.
                crate::workdir_lock::note(&self.work_dir, &format!("connected {}", peer.pid));
                events(SessionEvent::Connected {
                    peer_pid: peer.pid,
                    peer_uid: peer.uid,
                });
                Some(conn)
            }
        };

        let engine_events = events.clone();
        let engine = Engine::start(
            self.source.clone(),
            config.engine.clone(),
            Box::new(move |e| engine_events(SessionEvent::Engine(e))),
        );
        let engine = Arc::new(match engine {
            Ok(engine) => engine,
            Err(e) => return Err(self.abandon_if(resumed.is_some(), e.into())),
        });
        if let Some(guardian) = &self.guardian {
            let lost = events.clone();
            guardian.watch(move |message| {
                let message = format!("{message}; serving on without a guardian: if this daemon dies now, unserved pages read as zeros");
                lost(SessionEvent::GuardianLost { message })
            });
            engine.set_journal(guardian.clone());
        }
        engine.prefetch(&config.prefetch);
        *handle.engine.lock().map_err(|_| SessionError::Aborted)? = Some(engine.clone());

        let result = match (conn.as_mut(), resumed) {
            (Some(conn), _) => self.serve(conn, &engine, config, handle, events),
            (None, Some(state)) => self.serve_resumed(state, &engine, handle, events),
            (None, None) => unreachable!("a session either listens or resumes"),
        };
        if result.is_err() {
            engine.shutdown();
        }
        // Take the engine back from the handle so join owns the only reference.
        handle
            .engine
            .lock()
            .map_err(|_| SessionError::Aborted)?
            .take();
        let engine = wait_unique(engine);
        if let Err(err) = result {
            // Joining poisons what the restore will never get; say how much.
            return Err(match engine.join() {
                Err(EngineError::Unserved { note, .. }) => SessionError::Unserved {
                    source: Box::new(err),
                    note,
                },
                _ => err,
            });
        }
        let recorded = config
            .engine
            .record_working_set
            .then(|| engine.recorded_working_set());
        let summary = engine.join()?;
        if let Ok(mut slot) = handle.recorded.lock() {
            *slot = recorded;
        }
        if let Some(remote) = &self.remote {
            remote
                .close()
                .map_err(|e| SessionError::Source(e.to_string()))?;
        }
        Ok(summary)
    }

    /// Puts a session-level fact on the guardian's record; a lost guardian is one warning.
    fn record(
        &self,
        events: &SessionCallback,
        send: impl FnOnce(&GuardianLink) -> Result<(), String>,
    ) {
        if let Some(guardian) = &self.guardian {
            if let Err(message) = send(guardian) {
                let message = format!("{message}; serving on without a guardian: if this daemon dies now, unserved pages read as zeros");
                events(SessionEvent::Engine(EngineEvent::Warning { message }));
            }
        }
    }

    /// A resume that fails before its engine holds every task tells the guardian to
    /// poison them now (closing our copies alone would change nothing, and the guardian
    /// would wait out its timeout).
    fn abandon_if(&self, resuming: bool, err: SessionError) -> SessionError {
        match &self.guardian {
            Some(guardian) if resuming => {
                guardian.abandon();
                SessionError::ResumeFailed {
                    guardian: guardian.pid(),
                    source: Box::new(err),
                }
            }
            _ => err,
        }
    }

    /// Serves the tasks a guardian handed back. criu restore is gone (or going): there is
    /// no socket; the fill starts once the restorer is done (it registers each task's
    /// ranges after sending its uffd), with no fill delay.
    fn serve_resumed(
        &self,
        state: GuardianState,
        engine: &Engine,
        handle: &SessionHandle,
        events: &SessionCallback,
    ) -> Result<(), SessionError> {
        let count = state.tasks.len() as u32;
        for task in state.tasks {
            let lazy_pages = task.ranges.pages();
            let id = match engine.add_resumed_task(task.pid, task.parent, task.uffd, task.ranges) {
                Ok(id) if id == task.id => id,
                Ok(id) => {
                    let e = SessionError::Source(format!(
                        "resumed task {} came back as task {id}",
                        task.id
                    ));
                    return Err(self.abandon_if(true, e));
                }
                Err(e) => return Err(self.abandon_if(true, e.into())),
            };
            events(SessionEvent::Task {
                pid: task.pid,
                task: id,
                lazy_pages,
            });
        }
        events(SessionEvent::Resumed {
            guardian_pid: state.guardian_pid,
            lost_daemon: state.lost_daemon,
            tasks: count,
            restore_finished: state.restore_finished,
        });
        if !state.restore_finished {
            // ENOENT means "not registered yet" until then (engine invariant 5).
            while state.restore_peer > 0 && still_running(state.restore_peer) {
                handle.check_abort()?;
                self.check_source()?;
                std::thread::sleep(TICK);
            }
            self.record(events, |g| g.restore_finished());
            events(SessionEvent::RestoreFinished);
        }
        engine.restore_finished();
        while !engine.wait(Some(TICK)) {
            handle.check_abort()?;
        }
        Ok(())
    }

    fn accept(
        &self,
        config: &SessionConfig,
        handle: &SessionHandle,
        events: &SessionCallback,
    ) -> Result<RestoreConn, SessionError> {
        let Start::Listen(listener) = &self.start else {
            return Err(SessionError::Aborted);
        };
        let deadline = config
            .connect_timeout
            .map(|t| std::time::Instant::now() + t);
        let mut rejected = Vec::new();
        loop {
            handle.check_abort()?;
            self.check_source()?;
            let mut on_reject = |e: &RestoreError| {
                rejected.push(e.to_string());
                events(SessionEvent::Rejected {
                    message: e.to_string(),
                });
            };
            match listener.accept_with(Some(TICK), &mut on_reject) {
                Err(RestoreError::Timeout(what)) => {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        let secs = config.connect_timeout.unwrap_or_default().as_secs();
                        let mut msg = format!("{what} on {} ({secs} s)", listener.path().display());
                        if !rejected.is_empty() {
                            msg = format!("{msg}; meanwhile {}", rejected.join("; "));
                        }
                        return Err(RestoreError::Timeout(msg).into());
                    }
                }
                other => return Ok(other?),
            }
        }
    }

    fn serve(
        &self,
        conn: &mut RestoreConn,
        engine: &Engine,
        config: &SessionConfig,
        handle: &SessionHandle,
        events: &SessionCallback,
    ) -> Result<(), SessionError> {
        let deadline = config.handshake_timeout.map(|t| Instant::now() + t);
        let mut seen = HashSet::new();
        // CRIU sends one message per pstree entry, zombies included, threads not.
        for _ in 0..self.dump.tasks.len() {
            let msg = self.recv_task(conn, config, deadline, handle)?;
            let pid = match &msg {
                TaskMsg::Zombie { pid } | TaskMsg::Live { pid, .. } => *pid,
            };
            if !seen.insert(pid) {
                return Err(self.bad_task(pid, "twice"));
            }
            match msg {
                TaskMsg::Zombie { pid } => {
                    self.check_zombie(pid)?;
                    events(SessionEvent::Zombie { pid: pid as u32 })
                }
                TaskMsg::Live { pid, uffd } => {
                    let ranges = self.lazy_ranges(pid)?;
                    let lazy_pages = ranges.pages();
                    let task = engine.add_task(pid as u32, uffd, ranges)?;
                    events(SessionEvent::Task {
                        pid: pid as u32,
                        task,
                        lazy_pages,
                    });
                }
            }
        }
        // Only now, with every uffd in: if we die before RESTORE_FINISHED, the guardian's
        // copy of the connection lets criu's marker through, and criu resumes the tree
        // for a successor to serve. Had it been there from the start, a death
        // mid-handshake would let criu send the remaining uffds into a socket nobody
        // reads: those tasks would run and zero-fill once the guardian let go. Without
        // it criu's next send fails, and criu kills the tree it restored: loud.
        let peer = conn.peer();
        self.record(events, |g| g.restore_peer(peer.pid, conn.as_fd()));
        loop {
            handle.check_abort()?;
            self.check_source()?;
            match conn.wait_finished(Some(TICK)) {
                Ok(()) => break,
                Err(RestoreError::BadMarker(word)) => return Err(self.extra_task(word)),
                Err(RestoreError::Timeout(what)) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(self.handshake_timeout(what, config).into());
                    }
                    // A dead engine (fatal error) must not leave us waiting on criu.
                    if engine.wait(Some(Duration::ZERO)) && !engine.is_finished() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.record(events, |g| g.restore_finished());
        events(SessionEvent::RestoreFinished);
        let fill_at = std::time::Instant::now() + config.fill_delay;
        while std::time::Instant::now() < fill_at {
            handle.check_abort()?;
            // A page server that went away during the delay: say so now, not when it ends.
            self.check_source()?;
            // A dead engine must not keep the restore waiting out the delay: its faults
            // would hang unserved, and nothing would be poisoned, until the delay ends.
            if engine.wait(Some(Duration::ZERO)) && !engine.is_finished() {
                return Ok(());
            }
            std::thread::sleep(
                TICK.min(fill_at.saturating_duration_since(std::time::Instant::now())),
            );
        }
        engine.restore_finished();
        while !engine.wait(Some(TICK)) {
            handle.check_abort()?;
        }
        Ok(())
    }

    fn recv_task(
        &self,
        conn: &mut RestoreConn,
        config: &SessionConfig,
        deadline: Option<Instant>,
        handle: &SessionHandle,
    ) -> Result<TaskMsg, SessionError> {
        loop {
            handle.check_abort()?;
            match conn.recv_task(Some(TICK)) {
                Err(RestoreError::Timeout(what)) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(self.handshake_timeout(what, config).into());
                    }
                }
                other => return Ok(other?),
            }
        }
    }

    fn handshake_timeout(&self, what: String, config: &SessionConfig) -> RestoreError {
        let secs = config.handshake_timeout.unwrap_or_default().as_secs();
        RestoreError::Timeout(format!(
            "{what} (the handshake on {} must end within {secs} s)",
            self.socket_path().unwrap_or(Path::new("?")).display()
        ))
    }

    /// A remote page source that already failed (e.g. its connection dropped while
    /// nothing was asked) ends the session at once instead of at the next request.
    fn check_source(&self) -> Result<(), SessionError> {
        match self.remote.as_ref().and_then(Remote::failure) {
            Some(message) => Err(SessionError::Source(message)),
            None => Ok(()),
        }
    }

    fn bad_task(&self, pid: i32, problem: &str) -> SessionError {
        SessionError::BadTask {
            pid,
            problem: problem.to_string(),
            dir: self.dump.dir.clone(),
        }
    }

    /// A live task announced as a zombie would get none of its pages, silently.
    fn check_zombie(&self, pid: i32) -> Result<(), SessionError> {
        match u32::try_from(pid).ok().and_then(|p| self.dump.task(p)) {
            Some(task) if task.state == TaskState::Zombie => Ok(()),
            Some(_) => Err(self.bad_task(pid, "as a zombie, but it is a live process in the pstree: it would get none of its pages")),
            None => Err(self.bad_task(pid, "as a zombie, but it is not in the pstree")),
        }
    }

    /// Where RESTORE_FINISHED was due, another task message came.
    fn extra_task(&self, word: u32) -> SessionError {
        let pid = word as i32;
        // Anything that cannot be a pid (pid_max is at most 2^22) is just a wrong marker.
        if pid == 0 || pid.unsigned_abs() > 1 << 22 {
            return RestoreError::BadMarker(word).into();
        }
        let n = self.dump.tasks.len();
        self.bad_task(
            pid.saturating_abs(),
            &format!("after all {n} tasks of the pstree: more tasks than the dump has"),
        )
    }

    fn lazy_ranges(&self, pid: i32) -> Result<LazyRanges, SessionError> {
        let unknown = || SessionError::UnknownTask {
            pid,
            dir: self.dump.dir.clone(),
        };
        let task = u32::try_from(pid)
            .ok()
            .and_then(|p| self.dump.task(p))
            .ok_or_else(unknown)?;
        if task.state == TaskState::Zombie {
            return Err(unknown());
        }
        let memory = self.dump.memory(task.pid).ok_or_else(unknown)?;
        // CRIU restores every VMA at its dump-time address, so run-time = image address.
        Ok(memory
            .lazy_extents()
            .into_iter()
            .map(|e| {
                LazyRange::new(
                    e.start,
                    e.start + e.pages * crate::images::PAGE_SIZE,
                    e.start,
                )
            })
            .collect())
    }
}

/// The policy layer may hold a clone for a moment (prioritize/stats); wait it out.
fn wait_unique(mut engine: Arc<Engine>) -> Engine {
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => return e,
            Err(shared) => {
                engine = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// `pid` exists and is not a zombie.
pub(crate) fn still_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}
