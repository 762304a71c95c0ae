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
    ShortData { pid: u32, img_addr: u64, got: usize, want: usize },
    #[error("the engine is shutting down or finished; task {pid} not added")]
    Closed { pid: u32 },
    #[error("engine thread {0} panicked")]
    ThreadPanicked(&'static str),
    #[error("the engine was shut down before every task finished")]
    ShutDown,
    #[error("{source}; {pages} lazy pages were never served: {}", poisoned_note(*.poisoned, *.pages, .poison_error))]
    Unserved {
        #[source]
        source: Box<EngineError>,
        pages: u64,
        poisoned: u64,
        poison_error: Option<UffdError>,
    },
}

fn poisoned_note(poisoned: u64, pages: u64, error: &Option<UffdError>) -> String {
    match error {
        Some(e) => format!("poisoning them failed ({e}), so the restored processes read zeros there"),
        None if poisoned == pages => "all poisoned: a restored process that touches one gets SIGBUS, never zeros".into(),
        None => format!("{poisoned} poisoned (SIGBUS on touch); the rest belonged to tasks that were exiting"),
    }
}
