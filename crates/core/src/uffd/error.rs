use nix::errno::Errno;

/// A userfaultfd ioctl or read failed in a way that is neither progress nor a known
/// transient condition. Carries the address so logs can point at the page.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UffdError {
    #[error("{op} at {addr:#x} (+{len:#x}) failed: {errno}")]
    Ioctl {
        op: &'static str,
        addr: u64,
        len: u64,
        errno: Errno,
    },
    #[error("reading uffd events failed: {0}")]
    Read(String),
}
