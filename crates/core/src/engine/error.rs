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
}
