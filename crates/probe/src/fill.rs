//! Raw fill throughput: T threads UFFDIO_COPY `chunk`-page pieces of a page-cache file
//! into a registered anonymous region, each thread its own contiguous share (as the
//! daemon's --jobs split the work). Best of `repeat` runs, each on a fresh region.

use std::io;
use std::sync::Barrier;
use std::time::Instant;

use crate::mem::{anon_buffer, copy, map_file, populate, registered_region, warm_cache, PAGE};

pub fn run(
    path: &str,
    threads: usize,
    chunk_pages: usize,
    repeat: usize,
    populate_pages: usize,
    pread: bool,
) -> io::Result<String> {
    warm_cache(path)?;
    let mut best = f64::INFINITY;
    // CPU of the copying threads alone (no start-up, no cache warming).
    let mut best_cpu = f64::INFINITY;
    let mut bytes = 0;
    for _ in 0..repeat {
        // A fresh source mapping too: its page-table misses are part of the cost.
        let src = map_file(path)?;
        let (dst, uffd) = registered_region(src.len)?;
        bytes = src.len;
        let pages = src.len / PAGE;
        let share = pages.div_ceil(threads);
        let barrier = Barrier::new(threads + 1);
        let (secs, cpu) = std::thread::scope(|s| -> io::Result<(f64, f64)> {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (src, dst, uffd, barrier) = (&src, &dst, &uffd, &barrier);
                    s.spawn(move || -> io::Result<f64> {
                        let (first, end) = ((t * share).min(pages), ((t + 1) * share).min(pages));
                        barrier.wait();
                        // `pread`: CRIU's way, the bytes read into one reused buffer first.
                        let file = std::fs::File::open(path)?;
                        let buf = if pread {
                            Some(anon_buffer(chunk_pages * PAGE)?)
                        } else {
                            None
                        };
                        let cpu0 = thread_cpu_secs();
                        let mut p = first;
                        let mut populated = first;
                        while p < end {
                            let n = chunk_pages.min(end - p);
                            if populate_pages > 0 && p + n > populated {
                                let len = populate_pages.max(n).min(end - p);
                                populate(src.ptr.wrapping_add(p * PAGE), len * PAGE)?;
                                populated = p + len;
                            }
                            let from = match &buf {
                                Some(b) => {
                                    // SAFETY: `b` is a live private mapping of chunk_pages pages.
                                    let slice =
                                        unsafe { std::slice::from_raw_parts_mut(b.ptr, n * PAGE) };
                                    std::os::unix::fs::FileExt::read_exact_at(
                                        &file,
                                        slice,
                                        (p * PAGE) as u64,
                                    )?;
                                    b.ptr.cast_const()
                                }
                                None => unsafe { src.ptr.add(p * PAGE) },
                            };
                            unsafe { copy(uffd, from, dst.ptr.add(p * PAGE), n * PAGE)? };
                            p += n;
                        }
                        Ok(thread_cpu_secs() - cpu0)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut cpu = 0.0;
            for w in workers {
                cpu += w.join().expect("probe fill thread panicked")?;
            }
            Ok((start.elapsed().as_secs_f64(), cpu))
        })?;
        best = best.min(secs);
        best_cpu = best_cpu.min(cpu);
    }
    let gbps = bytes as f64 / 1e9 / best;
    Ok(format!(
        r#"{{"mode":"fill","threads":{threads},"chunk_pages":{chunk_pages},"populate_pages":{populate_pages},"pread":{pread},"bytes":{bytes},"secs":{best:.6},"cpu_secs":{best_cpu:.6},"gbps":{gbps:.4}}}"#
    ))
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
