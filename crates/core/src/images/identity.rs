//! A dump's identity: which dump a restore came from, so that a daemon resuming from a
//! guardian serves the same bytes the first daemon served (issue 20, item 2).
//!
//! Owns the digest. Promises: two dumps of different processes, or of the same process
//! at different times, get different identities (the process tree, registers, VMAs,
//! pagemaps and a sample of the page data all go in); a copy of a dump keeps its
//! identity (contents only: no inode, mtime or path), and nothing `criu restore` writes
//! into the images dir (logs, stats-restore.img) goes in, so a restore does not change
//! it. What may go wrong: an unreadable image (one line naming it); two dumps whose
//! page data differs only between the sampled blocks look alike, which only an
//! operator who rewrites page data in place could arrange.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ring::digest::{Context, SHA256};

use super::error::ImageError;
use super::open::{open_regular, read_metadata};

/// Blocks of page data sampled per pages image, evenly spaced (first and last included).
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 4096;

/// SHA-256, in hex, over the names and contents of the dump's metadata images
/// (inventory, pstree, core-*, mm-*, pagemap-*) and, for each pages-*.img, its size and
/// `SAMPLES` blocks of it.
pub fn dump_identity(dir: &Path) -> Result<String, ImageError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(dir, "cannot list the images dir", &e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|n| {
            n == "inventory.img"
                || n == "pstree.img"
                || (n.ends_with(".img")
                    && ["core-", "mm-", "pagemap-", "pages-"]
                        .iter()
                        .any(|p| n.starts_with(p)))
        })
        .collect();
    names.sort();
    let mut ctx = Context::new(&SHA256);
    for name in &names {
        let path = dir.join(name);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        if name.starts_with("pages-") {
            sample_pages(&path, &mut ctx)?;
        } else {
            let data = read_metadata(&path)?;
            ctx.update(&(data.len() as u64).to_le_bytes());
            ctx.update(&data);
        }
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn sample_pages(path: &Path, ctx: &mut Context) -> Result<(), ImageError> {
    let file = open_regular(path, "pages image")?;
    let len = file
        .metadata()
        .map_err(|e| ImageError::io(path, "cannot stat pages image", &e))?
        .len();
    ctx.update(&len.to_le_bytes());
    let blocks = len.div_ceil(SAMPLE_BYTES);
    let mut buf = vec![0u8; SAMPLE_BYTES as usize];
    for i in 0..SAMPLES.min(blocks) {
        // Evenly spread over the file, the first and the last block included.
        let block = if SAMPLES >= blocks {
            i
        } else {
            i * (blocks - 1) / (SAMPLES - 1)
        };
        let n = file
            .read_at(&mut buf, block * SAMPLE_BYTES)
            .map_err(|e| ImageError::io(path, "cannot read pages image", &e))?;
        ctx.update(&buf[..n]);
    }
    Ok(())
}
