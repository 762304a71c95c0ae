//! Where page bytes come from: local images now, a TCP page server later.

/// Answer of a `PageSource` for one span.
#[derive(Debug)]
pub enum PageData<'a> {
    /// Exactly the requested `len` bytes (borrowed from an mmap'd image, or `scratch`).
    Bytes(&'a [u8]),
    /// The dump has no such pages: the span reads as zeros.
    Zero,
    /// Not available yet (e.g. still in transit); the engine asks again later.
    Retry,
}

/// Why a source could not answer. Fatal for the restore: a lazy page with no bytes
/// would otherwise be silently zero-filled.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("task {pid}: pages at {img_addr:#x} (+{len:#x}) are not in the images")]
    Missing { pid: u32, img_addr: u64, len: usize },
    #[error("task {pid}: reading pages at {img_addr:#x} (+{len:#x}): {source}")]
    Io {
        pid: u32,
        img_addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("task {pid}: pages at {img_addr:#x}: {message}")]
    Other { pid: u32, img_addr: u64, message: String },
}

/// Supplies the bytes of dumped pages.
pub trait PageSource: Send + Sync {
    /// Bytes for [img_addr, img_addr + len) of image task `pid` (len a multiple of 4096,
    /// img_addr = dump-time address), either borrowed zero-copy (e.g. from an mmap'd
    /// pages image) or written into `scratch`.
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<PageData<'a>, SourceError>;

    /// Read-ahead hint: these spans of image task `pid` ((img_addr, len), in the
    /// order they will be asked for) are likely to be asked for soon. A source whose
    /// bytes take a while to arrive (a page server) may start fetching them now, if
    /// that is cheap and keeps within its limits; nothing is promised, and a span
    /// may never be asked for (a fault or MADV_DONTNEED got there first). Must not
    /// block. Local sources ignore it.
    fn will_need(&self, _pid: u32, _spans: &[(u64, usize)]) {}

    /// How many spans background fill should announce through `will_need` after
    /// each claim (the claim itself first); 0, the default: none.
    fn read_ahead(&self) -> usize {
        0
    }
}
