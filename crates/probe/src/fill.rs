//! Raw fill throughput: T threads UFFDIO_COPY `chunk`-page pieces of a page-cache file
//! into a registered anonymous region, each thread its own contiguous share (as the
//! daemon's --jobs split the work). Best of `repeat` runs, each on a fresh region.

use std::io;
use std::sync::Barrier;
use std::time::Instant;

use crate::mem::{copy, map_file, registered_region, warm_cache, PAGE};

pub fn run(path: &str, threads: usize, chunk_pages: usize, repeat: usize) -> io::Result<String> {
    warm_cache(path)?;
    let mut best = f64::INFINITY;
    let mut bytes = 0;
    for _ in 0..repeat {
        // A fresh source mapping too: its page-table misses are part of the cost.
        let src = map_file(path)?;
        let (dst, uffd) = registered_region(src.len)?;
        bytes = src.len;
        let pages = src.len / PAGE;
        let share = pages.div_ceil(threads);
        let barrier = Barrier::new(threads + 1);
        let secs = std::thread::scope(|s| -> io::Result<f64> {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (src, dst, uffd, barrier) = (&src, &dst, &uffd, &barrier);
                    s.spawn(move || -> io::Result<()> {
                        let (first, end) = ((t * share).min(pages), ((t + 1) * share).min(pages));
                        barrier.wait();
                        let mut p = first;
                        while p < end {
                            let n = chunk_pages.min(end - p);
                            unsafe {
                                copy(uffd, src.ptr.add(p * PAGE), dst.ptr.add(p * PAGE), n * PAGE)?
                            };
                            p += n;
                        }
                        Ok(())
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for w in workers {
                w.join().expect("probe fill thread panicked")?;
            }
            Ok(start.elapsed().as_secs_f64())
        })?;
        best = best.min(secs);
    }
    let gbps = bytes as f64 / 1e9 / best;
    Ok(format!(
        r#"{{"mode":"fill","threads":{threads},"chunk_pages":{chunk_pages},"bytes":{bytes},"secs":{best:.6},"gbps":{gbps:.4}}}"#
    ))
}
