//! Mappings the probes copy between: the source file (page cache) and a fresh anonymous
//! region registered for MISSING faults, i.e. what a lazily restored VMA looks like.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use userfaultfd::{Uffd, UffdBuilder};

pub const PAGE: usize = 4096;

pub struct Map {
    pub ptr: *mut u8,
    pub len: usize,
}

// The probes hand out disjoint page ranges of one mapping to several threads.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Drop for Map {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn check(ptr: *mut libc::c_void) -> io::Result<*mut u8> {
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ptr.cast())
    }
}

/// The whole file, read-only and shared, as the daemon maps a pages image. Not
/// populated: a source page-table miss is part of what the daemon pays too.
pub fn map_file(path: &str) -> io::Result<Map> {
    let f = File::open(path)?;
    let len = (f.metadata()?.len() as usize) / PAGE * PAGE;
    if len == 0 {
        return Err(io::Error::other(format!("{path}: smaller than a page")));
    }
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    Ok(Map {
        ptr: check(ptr)?,
        len,
    })
}

/// Reads every page once through read(2), so the file is in the page cache but not
/// mapped into our page tables.
pub fn warm_cache(path: &str) -> io::Result<()> {
    io::copy(&mut File::open(path)?, &mut io::sink())?;
    Ok(())
}

/// A private anonymous region of `len` bytes registered with a new userfaultfd.
pub fn registered_region(len: usize) -> io::Result<(Map, Uffd)> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    let map = Map {
        ptr: check(ptr)?,
        len,
    };
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(false)
        .user_mode_only(false)
        .create()
        .map_err(io::Error::other)?;
    uffd.register(map.ptr.cast(), len)
        .map_err(io::Error::other)?;
    Ok((map, uffd))
}

/// One UFFDIO_COPY of `len` bytes, retried on EAGAIN (no other process races us here).
pub fn copy(uffd: &Uffd, src: *const u8, dst: *mut u8, len: usize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let r = unsafe { uffd.copy(src.add(done).cast(), dst.add(done).cast(), len - done, true) };
        match r {
            Ok(n) if n > 0 => done += n,
            Ok(_) => return Err(io::Error::other("UFFDIO_COPY copied nothing")),
            Err(userfaultfd::Error::PartiallyCopied(n)) => done += n,
            Err(e) => return Err(io::Error::other(format!("UFFDIO_COPY: {e}"))),
        }
    }
    Ok(())
}

/// Maps `len` bytes of a file mapping at `ptr` into our page tables (MADV_POPULATE_READ).
pub fn populate(ptr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: `ptr..ptr+len` lies inside a live read-only mapping; populating only
    // faults its pages in.
    let r = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_READ) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A private anonymous buffer of `len` bytes, every page already touched (as a reused
/// read buffer is).
pub fn anon_buffer(len: usize) -> io::Result<Map> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    // SAFETY: a fresh anonymous mapping; nothing else refers to that range.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    Ok(Map {
        ptr: check(ptr)?,
        len,
    })
}
