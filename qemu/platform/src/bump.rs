//! The early bump allocator, and finding room for it in scratch memory.
//!
//! A kernel entered by kexec must not touch memory the previous kernel preserved until it has
//! reserved all of it, and it learns what is preserved only by reading the handover. Until then
//! it allocates only from *scratch* memory, which the handover protocol guarantees holds nothing
//! preserved, and only from the part of scratch that is not in use at entry (its own image,
//! the page tables and stack the loader built, the boot info). [`largest_free_gap`] finds that
//! room; [`BumpAllocator`] hands it out front to back and reports the exact range it used, so
//! the kernel can prove every early allocation lay in scratch and then reserve that range.

use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange};

/// Hands out memory front to back from one fixed window; never frees.
#[derive(Clone, Copy, Debug)]
pub struct BumpAllocator {
    window: PhysRange,
    next: PhysAddr,
}

impl BumpAllocator {
    /// An allocator confined to `window`.
    pub const fn new(window: PhysRange) -> BumpAllocator {
        BumpAllocator {
            window,
            next: window.start(),
        }
    }

    /// `len_bytes` bytes aligned to `align` (a power of two), or `None` if the window is full.
    /// Zero-length requests get an empty range.
    pub fn alloc(&mut self, len_bytes: u64, align: u64) -> Option<PhysRange> {
        if !align.is_power_of_two() {
            return None;
        }
        let start = self.next.align_up(align)?;
        let range = PhysRange::new(start, len_bytes)?;
        if !self.window.contains_range(range) {
            return None;
        }
        self.next = range.end();
        Some(range)
    }

    /// `page_count` whole pages, page aligned.
    pub fn alloc_pages(&mut self, page_count: u64) -> Option<PhysRange> {
        self.alloc(page_count.checked_mul(PAGE_SIZE)?, PAGE_SIZE)
    }

    /// The window the allocator is confined to.
    pub const fn window(&self) -> PhysRange {
        self.window
    }

    /// Everything handed out so far: `[window start, next free byte)`.
    pub fn used_range(&self) -> PhysRange {
        PhysRange::from_bounds(self.window.start(), self.next).unwrap_or(PhysRange::EMPTY)
    }

    /// Bytes still available (before alignment losses).
    pub fn remaining_bytes(&self) -> u64 {
        self.window
            .end()
            .as_u64()
            .saturating_sub(self.next.as_u64())
    }
}

/// Calls `each` with every page-aligned gap of `within` (each range rounded inward to pages)
/// that shares no page with any range of `avoid`, in address order per `within` range.
pub fn for_each_free_gap(
    within: &[PhysRange],
    avoid: &[PhysRange],
    mut each: impl FnMut(PhysRange),
) {
    for window in within.iter().map(|range| range.pages_within()) {
        let mut position = window.start();
        while position < window.end() {
            // The avoided page span that starts first among those not yet behind us.
            let next_block = avoid
                .iter()
                .filter(|range| !range.is_empty())
                .filter_map(|range| range.page_footprint())
                .filter(|footprint| footprint.end() > position && footprint.start() < window.end())
                .min_by_key(|footprint| footprint.start());
            match next_block {
                None => {
                    if let Some(gap) = PhysRange::from_bounds(position, window.end()) {
                        each(gap);
                    }
                    break;
                }
                Some(block) => {
                    if block.start() > position
                        && let Some(gap) = PhysRange::from_bounds(position, block.start())
                    {
                        each(gap);
                    }
                    position = block.end();
                }
            }
        }
    }
}

/// The largest page-aligned gap of `within` that shares no page with `avoid` (the lowest one
/// among equals), or `None` if there is no whole free page.
pub fn largest_free_gap(within: &[PhysRange], avoid: &[PhysRange]) -> Option<PhysRange> {
    let mut best: Option<PhysRange> = None;
    for_each_free_gap(within, avoid, |gap| {
        if best.is_none_or(|best| gap.len_bytes() > best.len_bytes()) {
            best = Some(gap);
        }
    });
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    #[test]
    fn bump_stays_in_its_window_and_reports_its_use() {
        let mut bump = BumpAllocator::new(range(0x1000, 0x5000));
        assert_eq!(bump.alloc(10, 8), Some(range(0x1000, 0x100a)));
        assert_eq!(bump.alloc_pages(2), Some(range(0x2000, 0x4000)));
        assert_eq!(bump.alloc(0x1001, 1), None, "does not fit");
        assert_eq!(bump.alloc(8, 3), None, "alignment must be a power of two");
        assert_eq!(bump.used_range(), range(0x1000, 0x4000));
        assert_eq!(bump.remaining_bytes(), 0x1000);
        assert_eq!(bump.alloc(0x1000, 0x1000), Some(range(0x4000, 0x5000)));
        assert_eq!(bump.alloc(1, 1), None);
        assert_eq!(bump.alloc(0, 1), Some(range(0x5000, 0x5000)));
    }

    #[test]
    fn gaps_avoid_every_touched_page() {
        let scratch = [range(0x10_0000, 0x400_0000)];
        let in_use = [
            range(0x100_0000, 0x104_0123), // kernel image, partial last page
            range(0x10_0000, 0x10_2000),   // page tables at the bottom
            range(0x300_0000, 0x300_1000), // boot info
            range(0x300_0800, 0x300_2000), // trampoline, overlapping the previous
        ];
        let mut gaps = Vec::new();
        for_each_free_gap(&scratch, &in_use, |gap| gaps.push(gap));
        assert_eq!(
            gaps,
            [
                range(0x10_2000, 0x100_0000),
                range(0x104_1000, 0x300_0000),
                range(0x300_2000, 0x400_0000),
            ]
        );
        assert_eq!(
            largest_free_gap(&scratch, &in_use),
            Some(range(0x104_1000, 0x300_0000))
        );
        assert_eq!(largest_free_gap(&scratch, &scratch), None);
        assert_eq!(largest_free_gap(&[range(0x10, 0x20)], &[]), None);
    }
}
