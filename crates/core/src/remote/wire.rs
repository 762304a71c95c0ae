//! The `page_server_iov` header of CRIU's page-server socket, in both layouts
//! (CRIU 4.1.1: 24 bytes; 4.2: 32 bytes). There is no version negotiation on
//! this socket, so both sides must be told which layout to speak.

use crate::images::PE_PRESENT;

/// Command numbers (low 16 bits of `cmd`; the high 16 bits carry PE_* flags).
pub const PS_IOV_ADD: u32 = 1;
pub const PS_IOV_HOLE: u32 = 2;
pub const PS_IOV_OPEN: u32 = 3;
pub const PS_IOV_OPEN2: u32 = 4;
pub const PS_IOV_PARENT: u32 = 5;
pub const PS_IOV_ADD_F: u32 = 6;
pub const PS_IOV_GET: u32 = 7;
pub const PS_IOV_CLOSE: u32 = 0x1023;
pub const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

/// What a server puts in `cmd` of a GET reply: ADD_F with PE_PRESENT (0x00040006).
pub const GET_REPLY_CMD: u32 = (PE_PRESENT << 16) | PS_IOV_ADD_F;

/// Reply to CLOSE / FORCE_CLOSE: one i32, always 0.
pub const CLOSE_REPLY_LEN: usize = 4;

/// Longest header of any layout.
pub const MAX_HEADER_LEN: usize = 32;

/// Header layout on the wire; fixed by the CRIU version of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireVersion {
    /// CRIU 4.1.1 and older: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id.
    V411,
    /// CRIU 4.2: u32 cmd, 4 bytes padding, u64 nr_pages, u64 vaddr, u64 dst_id.
    V42,
}

impl WireVersion {
    pub const fn header_len(self) -> usize {
        match self {
            WireVersion::V411 => 24,
            WireVersion::V42 => 32,
        }
    }

    /// Largest page count the layout can carry.
    pub const fn max_nr_pages(self) -> u64 {
        match self {
            WireVersion::V411 => u32::MAX as u64,
            WireVersion::V42 => u64::MAX,
        }
    }
}

impl std::fmt::Display for WireVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireVersion::V411 => "CRIU 4.1.1 (24-byte header)",
            WireVersion::V42 => "CRIU 4.2 (32-byte header)",
        })
    }
}

/// One `page_server_iov`, layout-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IovHeader {
    /// (flags << 16) | command.
    pub cmd: u32,
    /// v4.2 padding word; CRIU's server echoes it in replies, so we keep it.
    pub pad: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    /// GET: the raw pid. OPEN/ADD*: (id << 8) | type.
    pub dst_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("header needs {want} bytes, got {got}")]
    Short { want: usize, got: usize },
    #[error("nr_pages {nr_pages} does not fit the {version} layout")]
    TooManyPages { nr_pages: u64, version: WireVersion },
}

/// An encoded header: `MAX_HEADER_LEN` bytes of storage, `len` of them used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBytes {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl HeaderBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl IovHeader {
    /// A lazy-pages request, as `criu lazy-pages --page-server` sends it.
    pub fn get(pid: u32, vaddr: u64, nr_pages: u64) -> IovHeader {
        IovHeader {
            cmd: PS_IOV_GET,
            pad: 0,
            nr_pages,
            vaddr,
            dst_id: u64::from(pid),
        }
    }

    pub fn close() -> IovHeader {
        IovHeader {
            cmd: PS_IOV_CLOSE,
            ..IovHeader::default()
        }
    }

    /// The reply header to this GET carrying `nr_pages`: everything echoed but cmd.
    pub fn get_reply(&self, nr_pages: u64) -> IovHeader {
        IovHeader {
            cmd: GET_REPLY_CMD,
            nr_pages,
            ..*self
        }
    }

    /// Low 16 bits of `cmd`.
    pub fn command(&self) -> u32 {
        self.cmd & 0xffff
    }

    /// High 16 bits of `cmd` (PE_* flags).
    pub fn flags(&self) -> u32 {
        self.cmd >> 16
    }

    pub fn encode(&self, version: WireVersion) -> Result<HeaderBytes, WireError> {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        bytes[0..4].copy_from_slice(&self.cmd.to_le_bytes());
        match version {
            WireVersion::V411 => {
                let nr = u32::try_from(self.nr_pages).map_err(|_| WireError::TooManyPages {
                    nr_pages: self.nr_pages,
                    version,
                })?;
                bytes[4..8].copy_from_slice(&nr.to_le_bytes());
                bytes[8..16].copy_from_slice(&self.vaddr.to_le_bytes());
                bytes[16..24].copy_from_slice(&self.dst_id.to_le_bytes());
            }
            WireVersion::V42 => {
                bytes[4..8].copy_from_slice(&self.pad.to_le_bytes());
                bytes[8..16].copy_from_slice(&self.nr_pages.to_le_bytes());
                bytes[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
                bytes[24..32].copy_from_slice(&self.dst_id.to_le_bytes());
            }
        }
        Ok(HeaderBytes {
            bytes,
            len: version.header_len(),
        })
    }

    /// Decodes the first `version.header_len()` bytes of `buf`.
    pub fn decode(version: WireVersion, buf: &[u8]) -> Result<IovHeader, WireError> {
        let want = version.header_len();
        let b = buf.get(..want).ok_or(WireError::Short {
            want,
            got: buf.len(),
        })?;
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        Ok(match version {
            WireVersion::V411 => IovHeader {
                cmd: u32_at(0),
                pad: 0,
                nr_pages: u64::from(u32_at(4)),
                vaddr: u64_at(8),
                dst_id: u64_at(16),
            },
            WireVersion::V42 => IovHeader {
                cmd: u32_at(0),
                pad: u32_at(4),
                nr_pages: u64_at(8),
                vaddr: u64_at(16),
                dst_id: u64_at(24),
            },
        })
    }
}
