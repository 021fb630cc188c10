//! The rejection type of the handover image validator.
//!
//! A [`FormatError`] says what was wrong ([`FormatErrorKind`]), in which field (a path such as
//! `/luo/sessions[].name`), at which byte offset of the blob, and the offending value. It is
//! `Copy` and allocation-free so the receiving kernel can report it before it has a heap.

use core::fmt;

use crate::memmap::MapErrorKind;

/// What is wrong with a handover image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatErrorKind {
    /// The blob is shorter than a header, or than its header says.
    Truncated,
    /// The blob does not start on a 4-byte boundary (the devicetree reader needs it).
    Misaligned,
    /// Not a flattened devicetree (wrong magic).
    BadMagic,
    /// A header field has a value the canonical layout does not allow.
    BadHeader,
    /// The stored checksum does not match the bytes; `value` is the stored one.
    ChecksumMismatch {
        /// The checksum computed over the blob.
        computed: u32,
    },
    /// An unknown, misplaced or out-of-order structure token.
    BadToken,
    /// A node other than the one the schema requires here.
    UnexpectedNode,
    /// A property other than the one the schema requires here.
    UnexpectedProperty,
    /// A node or property name with characters or length the format forbids.
    BadName,
    /// Padding bytes that are not zero.
    BadPadding,
    /// The string table is not the canonical one (first-use order, no duplicates, no slack).
    BadStringTable,
    /// A property value has the wrong length for its type.
    BadLength,
    /// A component version this reader does not read.
    UnsupportedVersion,
    /// A compatible string other than this format's.
    Incompatible,
    /// Entries that must be strictly increasing are not (this includes duplicates).
    NotSorted,
    /// A stored count or offset disagrees with the data.
    CountMismatch,
    /// A range list that is not sorted, page aligned, non-empty and disjoint.
    BadRangeList,
    /// A physical range outside the RAM the image was built against.
    OutsideRam,
    /// Two physical ranges overlap (for example the image and scratch).
    Overlap,
    /// A count above this reader's limit.
    LimitExceeded,
    /// An index that refers to no entry.
    BadReference,
    /// A reserved field that is not zero.
    ReservedNotZero,
    /// A session name that is empty, unterminated or has bytes after its terminator.
    BadSessionName,
    /// The memory-map stream is malformed.
    Map(MapErrorKind),
    /// The devicetree reader refused a blob the validator accepted (a validator bug).
    ReaderDisagrees,
}

impl FormatErrorKind {
    /// A short description.
    pub fn describe(&self) -> &'static str {
        match self {
            FormatErrorKind::Truncated => "truncated",
            FormatErrorKind::Misaligned => "blob not 4-byte aligned",
            FormatErrorKind::BadMagic => "not a flattened devicetree",
            FormatErrorKind::BadHeader => "non-canonical header field",
            FormatErrorKind::ChecksumMismatch { .. } => "checksum mismatch",
            FormatErrorKind::BadToken => "bad structure token",
            FormatErrorKind::UnexpectedNode => "unexpected node",
            FormatErrorKind::UnexpectedProperty => "unexpected property",
            FormatErrorKind::BadName => "bad name",
            FormatErrorKind::BadPadding => "non-zero padding",
            FormatErrorKind::BadStringTable => "non-canonical string table",
            FormatErrorKind::BadLength => "wrong value length",
            FormatErrorKind::UnsupportedVersion => "unsupported version",
            FormatErrorKind::Incompatible => "incompatible format",
            FormatErrorKind::NotSorted => "not strictly increasing",
            FormatErrorKind::CountMismatch => "count or offset disagrees with the data",
            FormatErrorKind::BadRangeList => "range list not sorted, aligned and disjoint",
            FormatErrorKind::OutsideRam => "range outside RAM",
            FormatErrorKind::Overlap => "ranges overlap",
            FormatErrorKind::LimitExceeded => "limit exceeded",
            FormatErrorKind::BadReference => "reference to a missing entry",
            FormatErrorKind::ReservedNotZero => "reserved field not zero",
            FormatErrorKind::BadSessionName => "bad session name",
            FormatErrorKind::Map(kind) => kind.describe(),
            FormatErrorKind::ReaderDisagrees => "devicetree reader disagrees with the validator",
        }
    }
}

/// A handover image rejection: what, where, and the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// What is wrong.
    pub kind: FormatErrorKind,
    /// The field at fault, as a path in the image (`header.totalsize`, `/luo/files[].token`).
    pub field: &'static str,
    /// Byte offset in the blob of the value at fault.
    pub offset: usize,
    /// The offending value, or the value found where another was required.
    pub value: u64,
}

impl FormatError {
    pub(crate) const fn new(
        kind: FormatErrorKind,
        field: &'static str,
        offset: usize,
        value: u64,
    ) -> FormatError {
        FormatError {
            kind,
            field,
            offset,
            value,
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handover rejected at byte {:#x}, {} = {:#x}: {}",
            self.offset,
            self.field,
            self.value,
            self.kind.describe()
        )?;
        if let FormatErrorKind::ChecksumMismatch { computed } = self.kind {
            write!(f, " (computed {computed:#010x})")?;
        }
        Ok(())
    }
}
