//! Kernel structs and ioctl numbers for the fill ioctls (facts §3.1, x86_64) and
//! UFFDIO_POISON (Linux 6.6+).

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_copy` (40 bytes). `copy` is written back by the kernel: bytes copied, or
/// a negated errno when nothing was copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage` (32 bytes); `zeropage` is written back like `copy` above.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_poison` (32 bytes); `updated` is written back like `copy` above.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioPoison {
    pub range: UffdioRange,
    pub mode: u64,
    pub updated: i64,
}

const UFFDIO: u8 = 0xAA;

// 0xC028AA03 and 0xC020AA04: nix derives them from the type letter, number and size.
nix::ioctl_readwrite!(uffdio_copy, UFFDIO, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, UFFDIO, 0x04, UffdioZeropage);
nix::ioctl_readwrite!(uffdio_poison, UFFDIO, 0x08, UffdioPoison);

const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioPoison>() == 32);
