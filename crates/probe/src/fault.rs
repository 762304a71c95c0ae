//! Raw fault round trip: one thread reads pages of a registered region in random order;
//! a handler thread reads each fault event and UFFDIO_COPYs that one page from the file.
//! The reader times each first touch, so this is the floor under any daemon's fault path.

use std::io;
use std::time::Instant;

use userfaultfd::Event;

use crate::mem::{copy, map_file, registered_region, warm_cache, PAGE};

pub fn run(path: &str, faults: usize) -> io::Result<String> {
    warm_cache(path)?;
    let src = map_file(path)?;
    let (dst, uffd) = registered_region(src.len)?;
    let pages = src.len / PAGE;
    let order = random_pages(pages, faults.min(pages));
    let mut lat_ns: Vec<u64> = Vec::with_capacity(order.len());
    std::thread::scope(|s| -> io::Result<()> {
        let (src, dst, uffd, count) = (&src, &dst, &uffd, order.len());
        let handler = s.spawn(move || -> io::Result<()> {
            // Exactly one event per touched page: the reader waits for each before the next.
            for _ in 0..count {
                match uffd.read_event().map_err(io::Error::other)? {
                    Some(Event::Pagefault { addr, .. }) => {
                        let off = (addr as usize - dst.ptr as usize) / PAGE * PAGE;
                        unsafe { copy(uffd, src.ptr.add(off), dst.ptr.add(off), PAGE)? };
                    }
                    other => {
                        return Err(io::Error::other(format!("unexpected uffd event {other:?}")))
                    }
                }
            }
            Ok(())
        });
        for &p in &order {
            let at = unsafe { dst.ptr.add(p * PAGE) };
            let t = Instant::now();
            unsafe { std::ptr::read_volatile(at) };
            lat_ns.push(t.elapsed().as_nanos() as u64);
        }
        handler.join().expect("probe fault handler panicked")
    })?;
    let list = lat_ns
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    lat_ns.sort_unstable();
    let q = |f: f64| lat_ns[((lat_ns.len() - 1) as f64 * f).round() as usize] as f64 / 1000.0;
    Ok(format!(
        r#"{{"mode":"fault","faults":{},"p50_us":{:.2},"p99_us":{:.2},"max_us":{:.2},"lat_ns":[{list}]}}"#,
        lat_ns.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    ))
}

/// `n` distinct page indices in random order (partial Fisher-Yates, xorshift: a fixed
/// seed keeps runs comparable).
fn random_pages(pages: usize, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..pages).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x % (pages - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all
}
