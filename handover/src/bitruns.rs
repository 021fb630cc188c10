//! Finding runs of set bits in a bitmap, 64 bits at a time: the tracker's leaves and the
//! memory map's bitmaps are both read this way.

/// Finds maximal runs of set bits across consecutive words of a bitmap.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RunScanner {
    /// Where the run still being read started.
    open: Option<u64>,
}

impl RunScanner {
    /// Feeds the word holding bit positions `[base, base + 64)` (bit `i` of the word is
    /// position `base + i`) and calls `emit(start, end)` for every run that ends in it.
    #[inline(always)]
    pub(crate) fn word(&mut self, base: u64, word: u64, mut emit: impl FnMut(u64, u64)) {
        // Nothing changes inside an empty word outside a run, or a full word inside one.
        if (word == 0 && self.open.is_none()) || (word == u64::MAX && self.open.is_some()) {
            return;
        }
        let mut consumed = 0u32;
        loop {
            let above = if consumed >= 64 {
                0
            } else {
                u64::MAX << consumed
            };
            match self.open {
                Some(start) => {
                    let zeros = !word & above;
                    if zeros == 0 {
                        return;
                    }
                    consumed = zeros.trailing_zeros();
                    self.open = None;
                    emit(start, base.wrapping_add(u64::from(consumed)));
                }
                None => {
                    let ones = word & above;
                    if ones == 0 {
                        return;
                    }
                    consumed = ones.trailing_zeros();
                    self.open = Some(base.wrapping_add(u64::from(consumed)));
                }
            }
        }
    }

    /// Ends a run still open at `end` (the bitmap ends, or the next word is not adjacent).
    #[inline(always)]
    pub(crate) fn close(&mut self, end: u64, mut emit: impl FnMut(u64, u64)) {
        if let Some(start) = self.open.take() {
            emit(start, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn runs(words: &[u64]) -> Vec<(u64, u64)> {
        let mut found = Vec::new();
        let mut scanner = RunScanner::default();
        for (i, &w) in words.iter().enumerate() {
            scanner.word(i as u64 * 64, w, |s, e| found.push((s, e)));
        }
        scanner.close(words.len() as u64 * 64, |s, e| found.push((s, e)));
        found
    }

    #[test]
    fn runs_across_words() {
        assert_eq!(runs(&[0b0110, 0]), [(1, 3)]);
        assert_eq!(runs(&[1 << 63, 1, 0]), [(63, 65)]);
        assert_eq!(runs(&[u64::MAX, u64::MAX]), [(0, 128)]);
        assert_eq!(runs(&[0x8000_0000_0000_0001, 0x3]), [(0, 1), (63, 66)]);
        assert!(runs(&[0, 0]).is_empty());
    }
}
