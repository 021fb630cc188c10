//! Names, versions, limits and fixed-size table entries of the handover image.
//!
//! This is the one place that spells the schema: the builder writes it, the validator checks
//! it and the view reads it. `docs/FORMAT.md` is its prose form.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::{PhysAddr, PhysRange};
use crate::uapi::LIVEUPDATE_SESSION_NAME_LENGTH;

/// The root `compatible` string.
pub const COMPATIBLE: &str = "kexec-handover-rs";
/// The root format version this crate writes.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest root format version this crate reads.
pub const FORMAT_OLDEST_READABLE: u32 = 1;
/// Version of the `/ram` and `/scratch` range lists.
pub const RANGES_VERSION: u32 = 1;
/// The oldest range-list version this crate reads.
pub const RANGES_OLDEST_READABLE: u32 = 1;
/// Version of the `/luo` session and file tables.
pub const LUO_VERSION: u32 = 1;
/// The oldest `/luo` version this crate reads.
pub const LUO_OLDEST_READABLE: u32 = 1;
/// The oldest memory-map version this crate reads.
pub const MAP_OLDEST_READABLE: u32 = 1;

/// At most this many RAM or scratch ranges.
pub const MAX_RANGES: usize = 1 << 16;
/// At most this many sessions in one image.
pub const MAX_SESSIONS: usize = 1 << 20;
/// At most this many files in one image, all sessions together.
pub const MAX_FILES: usize = 1 << 24;
/// At most this many file handlers (handler nodes) in one image.
pub const MAX_HANDLERS: usize = 16;

/// Node and property names, in schema order.
pub(crate) mod names {
    pub const ROOT: &str = "";
    pub const CHECKSUM: &str = "checksum";
    pub const COMPATIBLE: &str = "compatible";
    pub const FORMAT_VERSION: &str = "format-version";
    pub const GENERATION: &str = "generation";
    pub const IMAGE_RANGE: &str = "image-range";
    pub const RAM: &str = "ram";
    pub const SCRATCH: &str = "scratch";
    pub const VERSION: &str = "version";
    pub const RANGES: &str = "ranges";
    pub const MEMORY_MAP: &str = "memory-map";
    pub const RUN_COUNT: &str = "run-count";
    pub const BLOCK_COUNT: &str = "block-count";
    pub const PAGE_COUNT: &str = "page-count";
    pub const STREAM: &str = "stream";
    pub const LUO: &str = "luo";
    pub const SESSIONS: &str = "sessions";
    pub const FILES: &str = "files";
    pub const RECORDS: &str = "records";
}

/// A physical range as stored: `start` and `len_bytes`, little-endian.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RangeEntry {
    /// First byte.
    pub start: U64,
    /// Length in bytes.
    pub len_bytes: U64,
}

impl RangeEntry {
    /// The stored form of `range`.
    pub fn from_range(range: PhysRange) -> RangeEntry {
        RangeEntry {
            start: U64::new(range.start().as_u64()),
            len_bytes: U64::new(range.len_bytes()),
        }
    }

    /// The range, if representable.
    pub fn range(&self) -> Option<PhysRange> {
        PhysRange::new(PhysAddr::new(self.start.get()), self.len_bytes.get())
    }
}

/// One row of `/luo/sessions` (72 bytes). Rows are sorted by `name`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SessionEntry {
    /// The name: 1 to 63 bytes, then NUL, then zeros.
    pub name: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
    /// Index of the session's first row in `/luo/files`.
    pub first_file: U32,
    /// Number of the session's rows in `/luo/files`.
    pub file_count: U32,
}

/// One row of `/luo/files` (32 bytes). A session's rows are sorted by `token`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FileEntry {
    /// The token the file was preserved with.
    pub token: U64,
    /// Offset of the file's record within its handler's `records`.
    pub record_offset: U64,
    /// Length of the record.
    pub record_len: U64,
    /// Index of the handler node (children of `/luo`, in order).
    pub handler: U32,
    /// Reserved, zero.
    pub flags: U32,
}

/// A session name: the bytes before the NUL of a 64-byte name field.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionName {
    bytes: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
}

impl SessionName {
    /// A name from its bytes: 1 to 63 bytes, none of them NUL.
    pub fn new(name: &[u8]) -> Option<SessionName> {
        if name.is_empty() || name.len() >= LIVEUPDATE_SESSION_NAME_LENGTH || name.contains(&0) {
            return None;
        }
        let mut bytes = [0u8; LIVEUPDATE_SESSION_NAME_LENGTH];
        bytes.get_mut(..name.len())?.copy_from_slice(name);
        Some(SessionName { bytes })
    }

    /// A name from a 64-byte field as the ioctls and the table carry it: non-empty and
    /// NUL-terminated within the field. Bytes after the NUL are ignored here; the table
    /// validator requires them to be zero.
    pub fn from_field(field: &[u8; LIVEUPDATE_SESSION_NAME_LENGTH]) -> Option<SessionName> {
        let len = field.iter().position(|&b| b == 0)?;
        SessionName::new(field.get(..len)?)
    }

    /// The name's bytes, without the terminator.
    pub fn as_bytes(&self) -> &[u8] {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        self.bytes.get(..len).unwrap_or(&[])
    }

    /// The 64-byte zero-padded field.
    pub fn field(&self) -> &[u8; LIVEUPDATE_SESSION_NAME_LENGTH] {
        &self.bytes
    }
}

impl core::fmt::Debug for SessionName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Names are untrusted bytes: print them escaped, never raw.
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// Checks a stored component version against the range this reader reads.
pub(crate) fn version_supported(found: u32, oldest: u32, current: u32) -> bool {
    (oldest..=current).contains(&found)
}
