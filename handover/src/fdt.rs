//! The flattened devicetree container: a writer of the canonical layout and a strict,
//! schema-driven reader that proves a blob has exactly that layout.
//!
//! The canonical layout (see `docs/FORMAT.md`): a 40-byte header, an empty memory reservation
//! block (one all-zero 16-byte entry) at offset 40, the structure block at offset 56 and the
//! strings block right after it, ending the blob. The structure block has no NOP tokens and
//! zero padding; the strings block holds each property name once, in order of first use. The
//! reader checks all of that while it walks the tree in the exact order the schema expects, so
//! after it succeeds no later reader (fdt-rs included) can meet a malformed token.

#[cfg(feature = "alloc")]
use crate::aligned::AlignedBytes;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use crate::error::{FormatError, FormatErrorKind as K};

/// `0xd00dfeed`, big-endian, at offset 0.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The devicetree version written and required.
pub const FDT_VERSION: u32 = 17;
/// The oldest devicetree version a reader of this blob must understand.
pub const FDT_LAST_COMPATIBLE_VERSION: u32 = 16;
/// Size of the header.
pub const HEADER_LEN: usize = 40;
/// Offset of the (empty) memory reservation block.
pub const MEM_RSVMAP_OFFSET: usize = HEADER_LEN;
/// Offset of the structure block.
pub const STRUCT_OFFSET: usize = MEM_RSVMAP_OFFSET + 16;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;

/// The longest node or property name this format uses or accepts.
pub const MAX_NAME_LEN: usize = 31;
/// How many distinct property names a blob may use.
const MAX_PROPERTY_NAMES: usize = 32;

const fn align4(n: usize) -> usize {
    (n.wrapping_add(3)) & !3
}

/// Whether `name` is a valid node name in this format: 1 to 31 of `[a-z0-9,._+-]`, or empty
/// for the root. (A subset of the devicetree specification's node-name characters.)
pub fn is_valid_node_name(name: &[u8]) -> bool {
    name.len() <= MAX_NAME_LEN
        && name
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b",._+-".contains(&c))
}

fn read_be32(blob: &[u8], offset: usize) -> Option<u32> {
    let bytes = blob.get(offset..offset.checked_add(4)?)?;
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    Some(u32::from_be_bytes(word))
}

/// The name a node is reported under in errors: `/` for the root.
fn node_field(name: &'static str) -> &'static str {
    if name.is_empty() { "/" } else { name }
}

/// Header field offsets.
mod header {
    pub const MAGIC: usize = 0;
    pub const TOTALSIZE: usize = 4;
    pub const OFF_DT_STRUCT: usize = 8;
    pub const OFF_DT_STRINGS: usize = 12;
    pub const OFF_MEM_RSVMAP: usize = 16;
    pub const VERSION: usize = 20;
    pub const LAST_COMP_VERSION: usize = 24;
    pub const BOOT_CPUID_PHYS: usize = 28;
    pub const SIZE_DT_STRINGS: usize = 32;
    pub const SIZE_DT_STRUCT: usize = 36;
}

/// Reads `totalsize` from a blob's header, after checking the magic. This is how a receiver
/// learns how many bytes to hand to [`crate::Handover::parse`].
pub fn total_size(blob: &[u8]) -> Result<usize, FormatError> {
    let magic = read_be32(blob, header::MAGIC).ok_or(FormatError::new(
        K::Truncated,
        "header.magic",
        0,
        blob.len() as u64,
    ))?;
    if magic != FDT_MAGIC {
        return Err(FormatError::new(
            K::BadMagic,
            "header.magic",
            0,
            u64::from(magic),
        ));
    }
    let total = read_be32(blob, header::TOTALSIZE).ok_or(FormatError::new(
        K::Truncated,
        "header.totalsize",
        header::TOTALSIZE,
        blob.len() as u64,
    ))?;
    Ok(total as usize)
}

// --- Writer -----------------------------------------------------------------------------------

/// Writes a devicetree in the canonical layout, straight into its final aligned buffer.
#[cfg(feature = "alloc")]
pub struct FdtWriter {
    blob: AlignedBytes,
    strings: Vec<u8>,
    /// (name, offset in `strings`) of every property name written so far.
    names: Vec<(&'static str, u32)>,
}

#[cfg(feature = "alloc")]
impl Default for FdtWriter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl FdtWriter {
    /// An empty writer.
    pub fn new() -> FdtWriter {
        Self::with_capacity(0)
    }

    /// An empty writer with room for a blob of about `len_bytes`.
    pub fn with_capacity(len_bytes: usize) -> FdtWriter {
        let mut blob = AlignedBytes::with_capacity(len_bytes);
        // Header and the empty reservation block, filled in by `finish`.
        blob.resize(STRUCT_OFFSET);
        FdtWriter {
            blob,
            strings: Vec::new(),
            names: Vec::new(),
        }
    }

    fn token(&mut self, token: u32) {
        self.blob.extend_from_slice(&token.to_be_bytes());
    }

    fn pad(&mut self) {
        self.blob.resize(align4(self.blob.len()));
    }

    /// Opens a node. The name must satisfy [`is_valid_node_name`] (the caller's schema does).
    pub fn begin_node(&mut self, name: &str) {
        self.token(FDT_BEGIN_NODE);
        self.blob.extend_from_slice(name.as_bytes());
        self.blob.push(0);
        self.pad();
    }

    /// Closes the innermost open node.
    pub fn end_node(&mut self) {
        self.token(FDT_END_NODE);
    }

    /// Adds a property to the open node. Returns the blob offset of its value, so fixed-size
    /// values can be patched later.
    pub fn property(&mut self, name: &'static str, value: &[u8]) -> usize {
        self.property_with(name, |out| out.extend_from_slice(value))
    }

    /// Adds a property whose value `write` appends to the blob directly (no staging copy).
    /// Returns the blob offset of the value.
    pub fn property_with(
        &mut self,
        name: &'static str,
        write: impl FnOnce(&mut AlignedBytes),
    ) -> usize {
        let name_offset = match self.names.iter().find(|(n, _)| *n == name) {
            Some(&(_, offset)) => offset,
            None => {
                let offset = self.strings.len() as u32;
                self.strings.extend_from_slice(name.as_bytes());
                self.strings.push(0);
                self.names.push((name, offset));
                offset
            }
        };
        self.token(FDT_PROP);
        let len_at = self.blob.len();
        self.blob.extend_from_slice(&[0; 4]);
        self.blob.extend_from_slice(&name_offset.to_be_bytes());
        let value_offset = self.blob.len();
        write(&mut self.blob);
        let len = (self.blob.len().saturating_sub(value_offset)) as u32;
        if let Some(slot) = self
            .blob
            .as_bytes_mut()
            .get_mut(len_at..len_at.saturating_add(4))
        {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        self.pad();
        value_offset
    }

    /// Ends the tree, appends the strings and fills in the header.
    pub fn finish(mut self) -> AlignedBytes {
        self.token(FDT_END);
        let off_dt_strings = self.blob.len();
        let size_dt_struct = off_dt_strings.saturating_sub(STRUCT_OFFSET);
        self.blob.extend_from_slice(&self.strings);
        let totalsize = self.blob.len();
        let header = [
            FDT_MAGIC,
            totalsize as u32,
            STRUCT_OFFSET as u32,
            off_dt_strings as u32,
            MEM_RSVMAP_OFFSET as u32,
            FDT_VERSION,
            FDT_LAST_COMPATIBLE_VERSION,
            0,
            self.strings.len() as u32,
            size_dt_struct as u32,
        ];
        for (field, slot) in header
            .iter()
            .zip(self.blob.as_bytes_mut().chunks_exact_mut(4))
        {
            slot.copy_from_slice(&field.to_be_bytes());
        }
        self.blob
    }
}

// --- Reader -----------------------------------------------------------------------------------

/// A property value located by the reader: its bytes and their offset in the blob.
#[derive(Clone, Copy, Debug)]
pub struct PropertyValue<'a> {
    /// The value.
    pub bytes: &'a [u8],
    /// Offset of the value's first byte in the blob.
    pub offset: usize,
}

/// Walks the structure block of a blob in schema order, checking every canonical-layout rule
/// on the way. Every method either consumes exactly what the schema expects next or returns an
/// error naming the offset.
pub struct FdtReader<'a> {
    blob: &'a [u8],
    pos: usize,
    struct_end: usize,
    strings_start: usize,
    /// Property names seen so far: (offset in the strings block, name).
    names: [(u32, &'static str); MAX_PROPERTY_NAMES],
    name_count: usize,
    /// Where the next new name must start in the strings block.
    next_string: usize,
    depth: u32,
}

impl<'a> FdtReader<'a> {
    /// Checks the header and the reservation block of `blob` (exactly `totalsize` bytes) and
    /// positions the reader at the first structure token.
    pub fn new(blob: &'a [u8]) -> Result<FdtReader<'a>, FormatError> {
        let totalsize = total_size(blob)?;
        if totalsize != blob.len() {
            return Err(FormatError::new(
                K::BadHeader,
                "header.totalsize",
                header::TOTALSIZE,
                totalsize as u64,
            ));
        }
        if blob.len() < STRUCT_OFFSET {
            return Err(FormatError::new(
                K::Truncated,
                "header",
                0,
                blob.len() as u64,
            ));
        }
        let field = |offset: usize| read_be32(blob, offset).unwrap_or(u32::MAX);
        let expect = |offset: usize, name: &'static str, want: u32| -> Result<(), FormatError> {
            let got = field(offset);
            if got == want {
                Ok(())
            } else {
                Err(FormatError::new(K::BadHeader, name, offset, u64::from(got)))
            }
        };
        expect(
            header::OFF_DT_STRUCT,
            "header.off_dt_struct",
            STRUCT_OFFSET as u32,
        )?;
        expect(
            header::OFF_MEM_RSVMAP,
            "header.off_mem_rsvmap",
            MEM_RSVMAP_OFFSET as u32,
        )?;
        expect(header::VERSION, "header.version", FDT_VERSION)?;
        expect(
            header::LAST_COMP_VERSION,
            "header.last_comp_version",
            FDT_LAST_COMPATIBLE_VERSION,
        )?;
        expect(header::BOOT_CPUID_PHYS, "header.boot_cpuid_phys", 0)?;
        let size_dt_struct = field(header::SIZE_DT_STRUCT) as usize;
        let struct_end = STRUCT_OFFSET
            .checked_add(size_dt_struct)
            .filter(|&end| end <= blob.len() && size_dt_struct.is_multiple_of(4))
            .ok_or(FormatError::new(
                K::BadHeader,
                "header.size_dt_struct",
                header::SIZE_DT_STRUCT,
                size_dt_struct as u64,
            ))?;
        expect(
            header::OFF_DT_STRINGS,
            "header.off_dt_strings",
            struct_end as u32,
        )?;
        let size_dt_strings = field(header::SIZE_DT_STRINGS) as usize;
        if struct_end.checked_add(size_dt_strings) != Some(blob.len()) {
            return Err(FormatError::new(
                K::BadHeader,
                "header.size_dt_strings",
                header::SIZE_DT_STRINGS,
                size_dt_strings as u64,
            ));
        }
        let reservation = blob.get(MEM_RSVMAP_OFFSET..STRUCT_OFFSET).unwrap_or(&[]);
        if let Some(index) = reservation.iter().position(|&b| b != 0) {
            return Err(FormatError::new(
                K::BadHeader,
                "mem_rsvmap",
                MEM_RSVMAP_OFFSET.wrapping_add(index),
                0,
            ));
        }
        Ok(FdtReader {
            blob,
            pos: STRUCT_OFFSET,
            struct_end,
            strings_start: struct_end,
            names: [(0, ""); MAX_PROPERTY_NAMES],
            name_count: 0,
            next_string: 0,
            depth: 0,
        })
    }

    /// The current offset in the blob.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn word(&self, offset: usize, field: &'static str) -> Result<u32, FormatError> {
        if offset
            .checked_add(4)
            .is_none_or(|end| end > self.struct_end)
        {
            return Err(FormatError::new(K::Truncated, field, offset, 0));
        }
        read_be32(self.blob, offset).ok_or(FormatError::new(K::Truncated, field, offset, 0))
    }

    fn peek_token(&self) -> Result<u32, FormatError> {
        self.word(self.pos, "token")
    }

    /// Checks that `[from, to)` is zero padding and that `to` is 4-byte aligned.
    fn check_padding(&self, from: usize, to: usize) -> Result<(), FormatError> {
        let padding =
            self.blob
                .get(from..to)
                .ok_or(FormatError::new(K::Truncated, "padding", from, 0))?;
        if let Some(index) = padding.iter().position(|&b| b != 0) {
            return Err(FormatError::new(
                K::BadPadding,
                "padding",
                from.wrapping_add(index),
                0,
            ));
        }
        Ok(())
    }

    /// Whether the next token opens a node.
    pub fn at_begin_node(&self) -> bool {
        self.peek_token().is_ok_and(|t| t == FDT_BEGIN_NODE)
    }

    /// Consumes a node opening and returns the node's name.
    pub fn begin_any_node(&mut self) -> Result<&'a [u8], FormatError> {
        let at = self.pos;
        let token = self.peek_token()?;
        if token != FDT_BEGIN_NODE {
            return Err(FormatError::new(K::BadToken, "token", at, u64::from(token)));
        }
        let name_at = at.wrapping_add(4);
        let rest = self
            .blob
            .get(name_at..self.struct_end)
            .ok_or(FormatError::new(K::Truncated, "node name", name_at, 0))?;
        let len = rest.iter().position(|&b| b == 0).ok_or(FormatError::new(
            K::Truncated,
            "node name",
            name_at,
            0,
        ))?;
        let name = rest.get(..len).unwrap_or(&[]);
        let root = self.depth == 0;
        if !is_valid_node_name(name) || (root != name.is_empty()) {
            return Err(FormatError::new(
                K::BadName,
                "node name",
                name_at,
                len as u64,
            ));
        }
        let end = name_at.wrapping_add(len).wrapping_add(1);
        let next = align4(end);
        if next > self.struct_end {
            return Err(FormatError::new(
                K::Truncated,
                "node name",
                name_at,
                len as u64,
            ));
        }
        self.check_padding(end, next)?;
        self.pos = next;
        self.depth = self.depth.saturating_add(1);
        Ok(name)
    }

    /// Consumes the opening of the node the schema requires next.
    pub fn begin_node(&mut self, name: &'static str) -> Result<(), FormatError> {
        let at = self.pos;
        let field = node_field(name);
        let found = self
            .begin_any_node()
            .map_err(|e| FormatError { field, ..e })?;
        if found != name.as_bytes() {
            return Err(FormatError::new(
                K::UnexpectedNode,
                field,
                at,
                found.len() as u64,
            ));
        }
        Ok(())
    }

    /// Consumes the property the schema requires next and returns its value.
    pub fn property(&mut self, name: &'static str) -> Result<PropertyValue<'a>, FormatError> {
        let at = self.pos;
        let token = self
            .peek_token()
            .map_err(|e| FormatError { field: name, ..e })?;
        if token != FDT_PROP {
            let kind = if token == FDT_BEGIN_NODE || token == FDT_END_NODE {
                K::UnexpectedNode
            } else {
                K::BadToken
            };
            return Err(FormatError::new(kind, name, at, u64::from(token)));
        }
        let len = self.word(at.wrapping_add(4), name)? as usize;
        let name_offset = self.word(at.wrapping_add(8), name)?;
        self.check_name(name, name_offset, at.wrapping_add(8))?;
        let value_at = at.wrapping_add(12);
        let value_end = value_at
            .checked_add(len)
            .filter(|&end| end <= self.struct_end)
            .ok_or(FormatError::new(K::Truncated, name, value_at, len as u64))?;
        let next = align4(value_end);
        if next > self.struct_end {
            return Err(FormatError::new(K::Truncated, name, value_at, len as u64));
        }
        self.check_padding(value_end, next)?;
        let bytes = self.blob.get(value_at..value_end).unwrap_or(&[]);
        self.pos = next;
        Ok(PropertyValue {
            bytes,
            offset: value_at,
        })
    }

    /// Checks a property's name offset against the canonical string table.
    fn check_name(
        &mut self,
        name: &'static str,
        offset: u32,
        at: usize,
    ) -> Result<(), FormatError> {
        let known = self.names.get(..self.name_count).unwrap_or(&[]);
        if let Some(&(seen_offset, _)) = known.iter().find(|(_, n)| *n == name) {
            return if seen_offset == offset {
                Ok(())
            } else {
                Err(FormatError::new(
                    K::BadStringTable,
                    name,
                    at,
                    u64::from(offset),
                ))
            };
        }
        // A new name must be stored next in the table, once.
        if offset as usize != self.next_string || self.name_count >= MAX_PROPERTY_NAMES {
            let kind = if known.iter().any(|&(o, _)| o == offset) {
                K::UnexpectedProperty
            } else {
                K::BadStringTable
            };
            return Err(FormatError::new(kind, name, at, u64::from(offset)));
        }
        let start = self.strings_start.wrapping_add(offset as usize);
        let stored = self.blob.get(start..).unwrap_or(&[]);
        let end = name.len();
        if stored.get(..end) != Some(name.as_bytes()) || stored.get(end) != Some(&0) {
            return Err(FormatError::new(
                K::UnexpectedProperty,
                name,
                at,
                u64::from(offset),
            ));
        }
        if let Some(slot) = self.names.get_mut(self.name_count) {
            *slot = (offset, name);
        }
        self.name_count = self.name_count.wrapping_add(1);
        self.next_string = self.next_string.wrapping_add(end).wrapping_add(1);
        Ok(())
    }

    /// Consumes the end of the current node, which must come next.
    pub fn end_node(&mut self, node: &'static str) -> Result<(), FormatError> {
        let at = self.pos;
        let node = node_field(node);
        let token = self
            .peek_token()
            .map_err(|e| FormatError { field: node, ..e })?;
        if token != FDT_END_NODE || self.depth == 0 {
            let kind = if token == FDT_PROP {
                K::UnexpectedProperty
            } else {
                K::UnexpectedNode
            };
            return Err(FormatError::new(kind, node, at, u64::from(token)));
        }
        self.pos = at.wrapping_add(4);
        self.depth = self.depth.wrapping_sub(1);
        Ok(())
    }

    /// Consumes the final `FDT_END`, which must end the structure block, and checks that the
    /// string table holds exactly the names used.
    pub fn finish(self) -> Result<(), FormatError> {
        let at = self.pos;
        let token = self.peek_token()?;
        if token != FDT_END || self.depth != 0 {
            return Err(FormatError::new(K::BadToken, "token", at, u64::from(token)));
        }
        if at.wrapping_add(4) != self.struct_end {
            return Err(FormatError::new(
                K::BadHeader,
                "header.size_dt_struct",
                at,
                0,
            ));
        }
        let strings_len = self.blob.len().wrapping_sub(self.strings_start);
        if self.next_string != strings_len {
            return Err(FormatError::new(
                K::BadStringTable,
                "strings",
                self.strings_start.wrapping_add(self.next_string),
                strings_len as u64,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small tree, and the blob ranges of its property values.
    fn sample() -> (Vec<u8>, Vec<core::ops::Range<usize>>) {
        let mut w = FdtWriter::new();
        let mut values = Vec::new();
        w.begin_node("");
        values.push(w.property("alpha", &[1, 2, 3])..3);
        w.begin_node("child");
        w.property("beta", &[]);
        values.push(w.property("alpha", &[9; 8])..8);
        w.end_node();
        w.end_node();
        // `property` returns blob offsets; each range here is (offset..len).
        let values = values
            .into_iter()
            .map(|r| r.start..r.start + r.end)
            .collect();
        (w.finish().as_bytes().to_vec(), values)
    }

    fn read(blob: &[u8]) -> Result<(), FormatError> {
        let mut r = FdtReader::new(blob)?;
        r.begin_node("")?;
        assert_eq!(r.property("alpha")?.bytes, &[1, 2, 3]);
        r.begin_node("child")?;
        r.property("beta")?;
        r.property("alpha")?;
        r.end_node("child")?;
        r.end_node("")?;
        r.finish()
    }

    #[test]
    fn writer_output_reads_back() {
        let (blob, _) = sample();
        read(&blob).unwrap();
        assert_eq!(total_size(&blob).unwrap(), blob.len());
    }

    #[test]
    fn every_truncation_and_container_bit_flip_is_rejected() {
        let (blob, values) = sample();
        // Miri samples the sweep (every flip costs it a full parse).
        let step = if cfg!(miri) { 11 } else { 1 };
        for len in (0..blob.len()).step_by(step) {
            assert!(read(&blob[..len]).is_err(), "truncated to {len}");
        }
        for bit in (0..blob.len() * 8).step_by(step) {
            // Property values are the schema's business, not the container's.
            if values.iter().any(|r| r.contains(&(bit / 8))) {
                continue;
            }
            let mut damaged = blob.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(read(&damaged).is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn rejects_non_canonical_string_tables_and_names() {
        assert!(is_valid_node_name(b"memory-map"));
        assert!(!is_valid_node_name(b"Memory"));
        assert!(!is_valid_node_name(b"a/b"));
        assert!(!is_valid_node_name(&[b'a'; 32]));
        // A reader that expects a different property name.
        let (blob, _) = sample();
        let mut r = FdtReader::new(&blob).unwrap();
        r.begin_node("").unwrap();
        assert_eq!(r.property("gamma").unwrap_err().kind, K::UnexpectedProperty);
    }
}
