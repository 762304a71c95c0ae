//! Noticing that a pages image changes while its pages are served.
//!
//! Owns the check every served byte passes: the local source reads a span with pread
//! and then `check`s before handing it on; the page server `check`s before and after
//! each reply it sends from the file. A pages image truncated and regrown under us reads
//! as zeros (a hole), not as an error, so without this the restored process would get
//! zeros where its data was.
//!
//! How: a read lease (F_SETLEASE F_RDLCK) on our own open of the file. The kernel
//! breaks it before anyone else's open for writing or truncate goes ahead, and holds
//! that writer off until the lease is gone (we never give it back: it goes when the
//! server or restore ends, or after fs.lease-break-time, 45 s by default). F_GETLEASE
//! shows a break at once, so a read that a later check finds still leased read the
//! bytes the file held when it was opened. Where no lease can be had (a filesystem
//! without leases, fs.leases-enable=0, a file we neither own nor have CAP_LEASE for),
//! size, mtime and ctime are compared with fstat instead: then any metadata change
//! (chmod, a link or unlink) counts as a change too.
//!
//! Promises: once a change is seen every later check fails, with one line naming the
//! file. What may go wrong: a file already open for writing by someone else cannot be
//! leased and is refused (it could change at any moment); a break leaves the writer
//! waiting until we are gone; a reply that takes longer than fs.lease-break-time to
//! send could carry changed bytes (the check after it then ends the session).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use super::error::ImageError;

/// fcntl's F_SETSIG (<fcntl.h>, Linux); the libc crate does not export it.
const F_SETSIG: libc::c_int = 10;

/// What a file looked like: fstat's identity, size and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(file: &File, path: &Path) -> Result<Stamp, ImageError> {
        let m = file
            .metadata()
            .map_err(|e| ImageError::io(path, "cannot stat pages file", &e))?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// How `now` differs, for the error; None when it does not.
    fn differs(&self, now: &Stamp) -> Option<String> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("it is another file now".into())
        } else if self.size != now.size {
            Some(format!(
                "its size went from {} to {} bytes",
                self.size, now.size
            ))
        } else if self.mtime != now.mtime {
            Some("it was written to (mtime changed)".into())
        } else if self.ctime != now.ctime {
            Some("it was truncated, written or its metadata changed (ctime changed)".into())
        } else {
            None
        }
    }
}

/// Our own open of a pages image, watched for changes.
#[derive(Debug)]
pub struct Watched {
    file: File,
    path: PathBuf,
    /// Holding a read lease (else: fstat comparisons).
    leased: bool,
    opened: Stamp,
    changed: AtomicBool,
}

impl Watched {
    /// Watches the file `opened` (open as `path`, which looked like `stamp` when it was
    /// opened). Opens it again through /proc/self/fd, so the lease is ours alone (a
    /// lease belongs to one open file description) and the inode is the same one.
    pub fn new(opened: &File, path: &Path, stamp: Stamp) -> Result<Watched, ImageError> {
        let proc = format!("/proc/self/fd/{}", opened.as_raw_fd());
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&proc)
            .map_err(|e| {
                ImageError::io(
                    path,
                    &format!("cannot open the pages file again through {proc} to watch it"),
                    &e,
                )
            })?;
        let leased = take_lease(&file, path)?;
        let watched = Watched {
            file,
            path: path.to_path_buf(),
            leased,
            opened: stamp,
            changed: AtomicBool::new(false),
        };
        // Anything between the first open and the lease shows in the times.
        let now = Stamp::of(&watched.file, path)?;
        if let Some(how) = stamp.differs(&now) {
            return Err(watched.fail(&how));
        }
        Ok(watched)
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ok while the file is as it was opened (see the module header for what that
    /// covers); once it fails it always fails.
    pub fn check(&self) -> Result<(), ImageError> {
        if self.changed.load(SeqCst) {
            return Err(self.fail("it changed earlier"));
        }
        if self.leased {
            // SAFETY: F_GETLEASE on a descriptor we own; no pointers involved.
            let lease = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
            if lease != libc::F_RDLCK {
                return Err(self.fail(
                    "someone opened it for writing or truncated it (its read lease was broken)",
                ));
            }
            return Ok(());
        }
        let now = Stamp::of(&self.file, &self.path)?;
        match self.opened.differs(&now) {
            Some(how) => Err(self.fail(&how)),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, then checks: Ok means they are the bytes
    /// the file held when it was opened.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check()?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            ImageError::io(
                &self.path,
                &format!("cannot read {} bytes at offset {offset:#x}", buf.len()),
                &e,
            )
        })?;
        self.check()
    }

    fn fail(&self, how: &str) -> ImageError {
        self.changed.store(true, SeqCst);
        ImageError::new(
            &self.path,
            format!(
                "pages image changed while being served: {how}; its pages can no longer be trusted"
            ),
        )
    }
}

/// Takes a read lease on `file`: true if held, false if this file or filesystem
/// cannot have one (then fstat stands in). The kernel signals a break to the lease
/// holder (SIGIO by default, which would kill us); we look with F_GETLEASE instead,
/// so the signal goes nowhere: SIGURG (ignored by default) for the instant between
/// taking the lease and clearing its owner.
fn take_lease(file: &File, path: &Path) -> Result<bool, ImageError> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let set = unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) < 0 {
            return Ok(false);
        }
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK)
    };
    if set < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Err(ImageError::new(
                path,
                "pages image is open for writing by another process: it could change while served; refusing to serve it",
            )),
            // EINVAL (no leases here), EACCES (not ours, no CAP_LEASE), ENOLCK...
            _ => Ok(false),
        };
    }
    // SAFETY: as above; owner 0 means "signal nobody".
    if unsafe { libc::fcntl(fd, libc::F_SETOWN, 0) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(ImageError::io(
            path,
            "cannot clear the owner of the pages file's lease",
            &e,
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages-1.img");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let file = File::open(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn a_truncate_breaks_the_lease_and_every_later_read_fails() {
        let (_dir, path, file) = image(&[7u8; 8192]);
        let w = Watched::new(&file, &path, Stamp::of(&file, &path).unwrap()).unwrap();
        assert!(w.leased, "root on a local filesystem gets a lease");
        let mut buf = [0u8; 4096];
        w.read_exact_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        // The truncate waits until the lease is gone; it breaks it at once.
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(p)
                .unwrap()
        });
        while w.check().is_ok() {
            std::thread::yield_now();
        }
        let err = w.read_exact_at(0, &mut buf).unwrap_err().to_string();
        assert!(
            err.contains("pages-1.img") && err.contains("changed while being served"),
            "{err}"
        );
        drop(w);
        writer.join().unwrap();
    }

    #[test]
    fn a_file_open_for_writing_is_refused() {
        let (_dir, path, file) = image(&[1u8; 4096]);
        let _writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = Watched::new(&file, &path, Stamp::of(&file, &path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("open for writing"), "{err}");
    }
}
