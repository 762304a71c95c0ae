use crate::uffd::UffdError;

use super::SourceError;

/// Failures that stop the engine. Per-task kernel answers (task exited, range gone) are
/// not errors; they show up in stats and events.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("setting up the engine: {0}")]
    Setup(#[source] std::io::Error),
    #[error("task {pid}: {source}")]
    Uffd {
        pid: u32,
        #[source]
        source: UffdError,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("task {pid}: page source returned {got} bytes for {want} at {img_addr:#x}")]
    ShortData {
        pid: u32,
        img_addr: u64,
        got: usize,
        want: usize,
    },
    #[error("the engine is shutting down or finished; task {pid} not added")]
    Closed { pid: u32 },
    #[error("engine thread {0} panicked")]
    ThreadPanicked(&'static str),
    #[error("the engine was shut down before every task finished")]
    ShutDown,
    #[error("{source}; {note}")]
    Unserved {
        #[source]
        source: Box<EngineError>,
        note: UnservedNote,
    },
}

/// What an unfinished engine did with the pages it never served (`unserved.rs`).
#[derive(Debug, Clone)]
pub struct UnservedNote {
    pub pages: u64,
    pub poisoned: u64,
    pub poison_error: Option<UffdError>,
}

impl std::fmt::Display for UnservedNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} lazy pages were never served: ", self.pages)?;
        match &self.poison_error {
            Some(e) => write!(
                f,
                "poisoning them failed ({e}), so the restored processes read zeros there"
            ),
            None if self.poisoned == self.pages => write!(
                f,
                "all poisoned: a restored process that touches one gets SIGBUS, never zeros"
            ),
            None => write!(
                f,
                "{} poisoned (SIGBUS on touch); the rest belonged to tasks that were exiting",
                self.poisoned
            ),
        }
    }
}
