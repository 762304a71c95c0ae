//! mm-<pid>.img: the VMA list, used to cut lazy runs at VMA edges (the
//! restorer registers whole VMAs with userfaultfd).

use std::path::Path;

use super::error::ImageError;
use super::framing::{read_required, HeadMagic, MM_MAGIC};
use super::proto::{MmEntry, VmaEntry};
use super::PAGE_SIZE;

const MAP_PRIVATE: u32 = 0x02;
const MAP_ANONYMOUS: u32 = 0x20;
const MAP_LOCKED: u32 = 0x2000;
const MAP_HUGETLB: u32 = 0x40000;

const VMA_AREA_VSYSCALL: u32 = 0x4;
const VMA_AREA_VDSO: u32 = 0x8;
const VMA_AREA_VVAR: u32 = 0x1000;

/// One dumped mapping, `[start, end)`. `flags` are x86 MAP_* values, `status`
/// CRIU's VMA_* bits, `madv` a bitmap of MADV_* numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub shmid: u64,
    pub prot: u32,
    pub flags: u32,
    pub status: u32,
    pub madv: u64,
}

impl Vma {
    /// Whether the restorer registers this VMA with userfaultfd, i.e. whether
    /// its pages can be served lazily (CRIU's `vma_entry_can_be_lazy`).
    pub fn lazy_able(&self) -> bool {
        let want = MAP_ANONYMOUS | MAP_PRIVATE;
        self.flags & want == want
            && self.flags & (MAP_LOCKED | MAP_HUGETLB) == 0
            && self.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) == 0
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

pub fn mm_file_name(pid: u32) -> String {
    format!("mm-{pid}.img")
}

/// Reads and validates the VMAs of `pid`: page aligned, non-empty, sorted,
/// non-overlapping. A missing file is an error (CRIU's daemon crashes on it).
pub fn read_vmas(dir: &Path, pid: u32, head: HeadMagic) -> Result<Vec<Vma>, ImageError> {
    let path = dir.join(mm_file_name(pid));
    let file = read_required(&path, MM_MAGIC, head)?;
    let mut entries = file.decode_all::<MmEntry>()?;
    let (offset, mm) = match entries.len() {
        1 => entries.remove(0),
        0 => return Err(ImageError::new(&path, "image holds no mm entry")),
        n => {
            return Err(ImageError::new(
                &path,
                format!("image holds {n} entries, expected exactly one"),
            ))
        }
    };
    let mut vmas: Vec<Vma> = Vec::with_capacity(mm.vmas.len());
    for (index, raw) in mm.vmas.iter().enumerate() {
        let vma = convert(raw)
            .map_err(|msg| ImageError::at(&path, offset, format!("vma #{index}: {msg}")))?;
        if let Some(prev) = vmas.last() {
            if vma.start < prev.end {
                return Err(ImageError::at(
                    &path,
                    offset,
                    format!(
                        "vma #{index} {:#x}-{:#x} is not after the previous vma {:#x}-{:#x}",
                        vma.start, vma.end, prev.start, prev.end
                    ),
                ));
            }
        }
        vmas.push(vma);
    }
    Ok(vmas)
}

fn convert(raw: &VmaEntry) -> Result<Vma, String> {
    let need64 = |v: Option<u64>, name: &str| v.ok_or_else(|| format!("lacks {name}"));
    let need32 = |v: Option<u32>, name: &str| v.ok_or_else(|| format!("lacks {name}"));
    let vma = Vma {
        start: need64(raw.start, "start")?,
        end: need64(raw.end, "end")?,
        pgoff: need64(raw.pgoff, "pgoff")?,
        shmid: need64(raw.shmid, "shmid")?,
        prot: need32(raw.prot, "prot")?,
        flags: need32(raw.flags, "flags")?,
        status: need32(raw.status, "status")?,
        madv: raw.madv.unwrap_or(0),
    };
    if vma.start % PAGE_SIZE != 0 || vma.end % PAGE_SIZE != 0 {
        return Err(format!(
            "{:#x}-{:#x} is not page aligned",
            vma.start, vma.end
        ));
    }
    if vma.start >= vma.end {
        return Err(format!(
            "{:#x}-{:#x} is empty or reversed",
            vma.start, vma.end
        ));
    }
    Ok(vma)
}
