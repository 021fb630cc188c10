//! CRC-32C (Castagnoli), the checksum that seals a handover image.
//!
//! Software slicing-by-8, so the core stays pure (no SSE4.2 instruction, no runtime CPU
//! detection). Parameters: polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final
//! XOR 0xFFFFFFFF, reflected input and output; the check value of `b"123456789"` is 0xE3069283.

const POLY_REFLECTED: u32 = 0x82F6_3B78;

// Evaluated at compile time only: an out-of-range index or overflow here fails the build.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn make_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut slice = 1;
    while slice < 8 {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[slice - 1][byte];
            tables[slice][byte] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            byte += 1;
        }
        slice += 1;
    }
    tables
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// Looks up one table entry. The index is a byte, so it is always within the 256 entries.
#[inline(always)]
#[allow(clippy::indexing_slicing)] // `usize::from(u8)` < 256 = the table length.
fn entry(slice: usize, index: u8) -> u32 {
    TABLES[slice & 7][usize::from(index)]
}

/// An incremental CRC-32C computation.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c {
    state: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A fresh computation.
    pub const fn new() -> Crc32c {
        Crc32c { state: !0 }
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let low = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) ^ crc;
            let [b0, b1, b2, b3] = low.to_le_bytes();
            crc = entry(7, b0)
                ^ entry(6, b1)
                ^ entry(5, b2)
                ^ entry(4, b3)
                ^ entry(3, word[4])
                ^ entry(2, word[5])
                ^ entry(1, word[6])
                ^ entry(0, word[7]);
        }
        for &byte in chunks.remainder() {
            crc = (crc >> 8) ^ entry(0, (crc as u8) ^ byte);
        }
        self.state = crc;
    }

    /// Feeds `count` zero bytes (used for the checksum field itself).
    pub fn update_zeros(&mut self, count: usize) {
        const ZEROS: [u8; 16] = [0; 16];
        let mut left = count;
        while left > 0 {
            let step = left.min(ZEROS.len());
            self.update(ZEROS.get(..step).unwrap_or(&[]));
            left = left.saturating_sub(step);
        }
    }

    /// The checksum of everything fed so far.
    pub const fn finish(self) -> u32 {
        !self.state
    }
}

/// The CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY_REFLECTED
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros and of 0xFF.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn sliced_matches_bitwise_at_every_length_and_split() {
        let data: alloc::vec::Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(97) >> 3) as u8)
            .collect();
        // Miri interprets every table lookup: it checks a sample of the lengths and splits.
        let step = if cfg!(miri) { 23 } else { 1 };
        for len in (0..data.len()).step_by(step) {
            assert_eq!(crc32c(&data[..len]), bitwise(&data[..len]), "len {len}");
        }
        for split in (0..64).step_by(step) {
            let mut crc = Crc32c::new();
            crc.update(&data[..split]);
            crc.update(&data[split..]);
            assert_eq!(crc.finish(), bitwise(&data));
        }
    }

    #[test]
    fn zeros_feed_like_zero_bytes() {
        let mut a = Crc32c::new();
        a.update(b"abc");
        a.update_zeros(37);
        let mut b = Crc32c::new();
        b.update(b"abc");
        b.update(&[0u8; 37]);
        assert_eq!(a.finish(), b.finish());
    }
}
