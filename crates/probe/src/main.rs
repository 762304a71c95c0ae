//! `lazy-pages-probe`: what userfaultfd alone can do on this machine, so the benchmark
//! can report the daemon as a fraction of the raw limit measured in the same run.
//!
//!   lazy-pages-probe fill  --file F [--threads T] [--chunk-pages N] [--repeat R] [--populate-pages P] [--pread 1]
//!   lazy-pages-probe fault --file F [--faults N]
//!
//! Both print one JSON line on stdout. F is a file already in the page cache (the
//! bench passes the dump's pages image), mapped the same way the daemon maps it.
//! `--populate-pages P`: map the source P pages at a time (MADV_POPULATE_READ) ahead of
//! the copies instead of letting each copy fault its source pages in. `--pread 1`: read
//! each chunk into one reused buffer and copy from there (how `criu lazy-pages` does it).

mod fault;
mod fill;
mod mem;

use std::process::exit;

fn usage() -> ! {
    eprintln!("usage: lazy-pages-probe fill --file F [--threads T] [--chunk-pages N] [--repeat R] [--populate-pages P] [--pread 1]");
    eprintln!("       lazy-pages-probe fault --file F [--faults N]");
    exit(2)
}

/// `--name value` pairs after the subcommand; unknown names are a usage error.
struct Args {
    file: String,
    threads: usize,
    chunk_pages: usize,
    repeat: usize,
    faults: usize,
    populate_pages: usize,
    pread: bool,
}

fn parse(rest: &[String]) -> Args {
    let mut a = Args {
        file: String::new(),
        threads: 1,
        chunk_pages: 64,
        repeat: 3,
        faults: 4000,
        populate_pages: 0,
        pread: false,
    };
    let mut it = rest.iter();
    while let Some(name) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let num = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| usage())
        };
        match name.as_str() {
            "--file" => a.file = value.clone(),
            "--threads" => a.threads = num(),
            "--chunk-pages" => a.chunk_pages = num(),
            "--repeat" => a.repeat = num(),
            "--faults" => a.faults = num(),
            "--populate-pages" => a.populate_pages = num(),
            "--pread" => a.pread = num() == 1,
            _ => usage(),
        }
    }
    if a.file.is_empty() {
        usage()
    }
    a
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        usage()
    };
    let a = parse(rest);
    let out = match cmd.as_str() {
        "fill" => fill::run(
            &a.file,
            a.threads,
            a.chunk_pages,
            a.repeat,
            a.populate_pages,
            a.pread,
        ),
        "fault" => fault::run(&a.file, a.faults),
        _ => usage(),
    };
    match out {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("lazy-pages-probe: {e}");
            exit(1)
        }
    }
}
