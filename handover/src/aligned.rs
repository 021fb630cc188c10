//! A growable byte buffer whose storage is 8-byte aligned.
//!
//! Handover images are built in one of these so the finished blob can be handed to the
//! devicetree reader (which needs 4-byte alignment) and copied to a page without another copy.

use alloc::vec::Vec;

use zerocopy::IntoBytes;

/// Bytes in 8-byte aligned storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// An empty buffer.
    pub fn new() -> AlignedBytes {
        AlignedBytes::default()
    }

    /// An empty buffer with room for `len` bytes.
    pub fn with_capacity(len: usize) -> AlignedBytes {
        AlignedBytes {
            words: Vec::with_capacity(len.div_ceil(8)),
            len: 0,
        }
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> AlignedBytes {
        let mut buffer = AlignedBytes::new();
        buffer.extend_from_slice(bytes);
        buffer
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.words.as_bytes().get(..self.len).unwrap_or(&[])
    }

    /// The bytes, mutable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        self.words.as_mut_bytes().get_mut(..len).unwrap_or(&mut [])
    }

    /// Grows (with zeros) or shrinks to `len` bytes.
    pub fn resize(&mut self, len: usize) {
        let words = len.div_ceil(8);
        if words > self.words.capacity() {
            let more = words.saturating_sub(self.words.len());
            // Amortised doubling, as `Vec` would.
            self.words.reserve(more.max(self.words.len()));
        }
        self.words.resize(words, 0);
        if len < self.len {
            // Keep the tail of the last word zero, so a later grow reads zeros.
            if let Some(tail) = self.words.as_mut_bytes().get_mut(len..) {
                tail.fill(0);
            }
        }
        self.len = len;
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.resize(start.saturating_add(bytes.len()));
        if let Some(slot) = self.as_bytes_mut().get_mut(start..) {
            slot.copy_from_slice(bytes);
        }
    }

    /// Appends one byte.
    pub fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }
}
