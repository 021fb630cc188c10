//! The physical frame allocator: one bit per 4 KiB frame of RAM.
//!
//! The bitmap's storage comes from the caller (on bare metal: the early bump allocator, inside
//! scratch memory), so the allocator itself never allocates. A set bit means "not available":
//! not RAM, reserved, or allocated; a clear bit is a free RAM frame. The allocator keeps an
//! exact count of free frames, which a scenario compares across kexecs to prove no page leaked.
//!
//! Frees are checked: freeing a frame that is not RAM or is already free is an error, not a
//! silent corruption of the count. No function here panics on any input.

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, PageFrame, PhysAddr, PhysRange};
use crate::memmap::{MAX_MEMORY_REGIONS, MemoryMap};
use core::fmt;

const BITS_PER_WORD: u64 = 64;

/// Why a frame-allocator operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameError {
    /// The storage given to [`FrameAllocator::new`] is too small for the map.
    StorageTooSmall {
        /// 64-bit words needed.
        needed_words: usize,
        /// 64-bit words given.
        given_words: usize,
    },
    /// A range passed to a free is not page aligned.
    NotPageAligned {
        /// The range.
        range: PhysRange,
    },
    /// A frame passed to a free is not RAM.
    NotRam {
        /// The frame.
        frame: PageFrame,
    },
    /// A frame passed to a free is already free (a double free).
    AlreadyFree {
        /// The frame.
        frame: PageFrame,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::StorageTooSmall {
                needed_words,
                given_words,
            } => write!(
                f,
                "frame bitmap needs {needed_words} words, storage has {given_words}"
            ),
            FrameError::NotPageAligned { range } => write!(f, "free of unaligned range {range}"),
            FrameError::NotRam { frame } => {
                write!(f, "free of page {frame:?}, which is not RAM")
            }
            FrameError::AlreadyFree { frame } => {
                write!(f, "double free of page {frame:?}")
            }
        }
    }
}

/// The number of 64-bit bitmap words [`FrameAllocator::new`] needs for `map`.
pub fn bitmap_words_for(map: &MemoryMap) -> usize {
    let frame_limit = map.ram_end().as_u64() >> PAGE_SHIFT;
    usize::try_from(frame_limit.div_ceil(BITS_PER_WORD)).unwrap_or(usize::MAX)
}

/// A bitmap allocator of 4 KiB physical frames.
pub struct FrameAllocator<'a> {
    /// Bit `i` of word `w` describes frame `64 * w + i`; set = not available.
    bitmap: &'a mut [u64],
    /// Frames at or above this do not exist for the allocator.
    frame_limit: u64,
    /// Page-aligned RAM (each RAM region rounded inward), to validate frees.
    ram: heapless::Vec<PhysRange, MAX_MEMORY_REGIONS>,
    ram_page_count: u64,
    free_page_count: u64,
    /// Where the next single-page search starts (next fit).
    next_hint: u64,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator over the RAM of `map`, every RAM frame free, with its bitmap in `storage`
    /// (at least [`bitmap_words_for`] words; its previous contents do not matter).
    pub fn new(map: &MemoryMap, storage: &'a mut [u64]) -> Result<FrameAllocator<'a>, FrameError> {
        let needed_words = bitmap_words_for(map);
        if storage.len() < needed_words {
            return Err(FrameError::StorageTooSmall {
                needed_words,
                given_words: storage.len(),
            });
        }
        storage.fill(u64::MAX);
        let mut allocator = FrameAllocator {
            bitmap: storage,
            frame_limit: map.ram_end().as_u64() >> PAGE_SHIFT,
            ram: heapless::Vec::new(),
            ram_page_count: 0,
            free_page_count: 0,
            next_hint: 0,
        };
        for ram in map.ram() {
            let pages = ram.pages_within();
            if pages.is_empty() {
                continue;
            }
            // A map has at most MAX_MEMORY_REGIONS regions: cannot overflow.
            let _ = allocator.ram.push(pages);
            let first = pages.start().frame().as_u64();
            let end = pages.end().frame().as_u64();
            allocator.clear_range(first, end);
            allocator.ram_page_count = allocator.ram_page_count.saturating_add(pages.page_count());
        }
        allocator.free_page_count = allocator.ram_page_count;
        Ok(allocator)
    }

    /// Takes every page that `range` touches out of the free pool (whether it was free or
    /// not) and returns how many pages were free before. Pages that are not RAM are ignored.
    pub fn reserve(&mut self, range: PhysRange) -> u64 {
        let Some((first, end)) = self.frame_span(range) else {
            return 0;
        };
        let newly_reserved = self.set_range(first, end);
        self.free_page_count = self.free_page_count.saturating_sub(newly_reserved);
        newly_reserved
    }

    /// One free page, or `None` when memory is exhausted.
    pub fn alloc_page(&mut self) -> Option<PageFrame> {
        let frame = self
            .next_free(self.next_hint, self.frame_limit)
            .or_else(|| self.next_free(0, self.next_hint.min(self.frame_limit)))?;
        self.set_range(frame, frame.saturating_add(1));
        self.free_page_count = self.free_page_count.saturating_sub(1);
        self.next_hint = frame.saturating_add(1);
        Some(PageFrame::new(frame))
    }

    /// `page_count` physically contiguous free pages (lowest address first), or `None`.
    pub fn alloc_contiguous(&mut self, page_count: u64) -> Option<PhysRange> {
        let everything =
            PhysRange::from_bounds(PhysAddr::ZERO, PageFrame::new(self.frame_limit).addr()?)?;
        self.alloc_contiguous_in(page_count, everything, &[])
    }

    /// `page_count` contiguous free pages inside `within` that share no page with any range of
    /// `avoid` (lowest address first), or `None`.
    pub fn alloc_contiguous_in(
        &mut self,
        page_count: u64,
        within: PhysRange,
        avoid: &[PhysRange],
    ) -> Option<PhysRange> {
        if page_count == 0 {
            return None;
        }
        let window = within.pages_within();
        let low = window.start().frame().as_u64();
        let high = window.end().frame().as_u64().min(self.frame_limit);
        let mut position = low;
        while position < high {
            let start = self.next_free(position, high)?;
            if let Some(blocking_end) = avoid_end_containing(avoid, start) {
                position = blocking_end;
                continue;
            }
            let mut end = self.next_used(start, high);
            if let Some(next_avoid) = next_avoid_start(avoid, start) {
                end = end.min(next_avoid);
            }
            if end.saturating_sub(start) >= page_count {
                self.set_range(start, start.saturating_add(page_count));
                self.free_page_count = self.free_page_count.saturating_sub(page_count);
                return PhysRange::from_frames(PageFrame::new(start), page_count);
            }
            position = end.max(start.saturating_add(1));
        }
        None
    }

    /// Returns one allocated page to the free pool.
    pub fn free_page(&mut self, frame: PageFrame) -> Result<(), FrameError> {
        let range = PhysRange::from_frames(frame, 1).ok_or(FrameError::NotRam { frame })?;
        self.free_range(range)
    }

    /// Returns every page of the page-aligned `range` to the free pool. Either all pages are
    /// freed or, on error, none is.
    pub fn free_range(&mut self, range: PhysRange) -> Result<(), FrameError> {
        if !range.is_page_aligned() {
            return Err(FrameError::NotPageAligned { range });
        }
        if range.is_empty() {
            return Ok(());
        }
        if !self.ram.iter().any(|ram| ram.contains_range(range)) {
            // Name the first page that is not RAM.
            let frame = (range.start().frame().as_u64()..range.end().frame().as_u64())
                .map(PageFrame::new)
                .find(|frame| {
                    !frame
                        .addr()
                        .is_some_and(|a| self.ram.iter().any(|ram| ram.contains(a)))
                })
                .unwrap_or(range.start().frame());
            return Err(FrameError::NotRam { frame });
        }
        let first = range.start().frame().as_u64();
        let end = range.end().frame().as_u64();
        if let Some(frame) = self.next_free(first, end) {
            return Err(FrameError::AlreadyFree {
                frame: PageFrame::new(frame),
            });
        }
        self.clear_range(first, end);
        self.free_page_count = self.free_page_count.saturating_add(range.page_count());
        Ok(())
    }

    /// Free RAM pages right now (exact).
    pub fn free_page_count(&self) -> u64 {
        self.free_page_count
    }

    /// Whole RAM pages the allocator manages (free or not).
    pub fn ram_page_count(&self) -> u64 {
        self.ram_page_count
    }

    /// Whether `frame` is a free RAM frame.
    pub fn is_free(&self, frame: PageFrame) -> bool {
        !self.is_used(frame.as_u64())
    }

    /// The page-aligned RAM ranges the allocator manages.
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram
    }

    /// The frames `[first, end)` of the pages `range` touches, clipped to the frame limit.
    fn frame_span(&self, range: PhysRange) -> Option<(u64, u64)> {
        if range.is_empty() {
            return None;
        }
        let footprint = range.page_footprint()?;
        let first = footprint.start().frame().as_u64();
        let end = footprint.end().frame().as_u64().min(self.frame_limit);
        (first < end).then_some((first, end))
    }

    fn is_used(&self, frame: u64) -> bool {
        if frame >= self.frame_limit {
            return true;
        }
        let (word, bit) = split(frame);
        self.bitmap
            .get(word)
            .is_none_or(|bits| bits & (1 << bit) != 0)
    }

    /// Marks frames `[first, end)` unavailable a word at a time; returns how many were free.
    fn set_range(&mut self, first: u64, end: u64) -> u64 {
        let mut newly_set = 0u64;
        for_each_word_span(first, end.min(self.frame_limit), |word, mask| {
            if let Some(bits) = self.bitmap.get_mut(word) {
                newly_set = newly_set.saturating_add(u64::from((!*bits & mask).count_ones()));
                *bits |= mask;
            }
        });
        newly_set
    }

    /// Marks frames `[first, end)` free a word at a time (frames past the limit stay
    /// unavailable).
    fn clear_range(&mut self, first: u64, end: u64) {
        for_each_word_span(first, end.min(self.frame_limit), |word, mask| {
            if let Some(bits) = self.bitmap.get_mut(word) {
                *bits &= !mask;
            }
        });
    }

    /// The first free frame in `[from, to)`, skipping full words at a time.
    fn next_free(&self, from: u64, to: u64) -> Option<u64> {
        let to = to.min(self.frame_limit);
        let mut frame = from;
        while frame < to {
            let (word, bit) = split(frame);
            let bits = *self.bitmap.get(word)?;
            let free_at_or_above = !bits >> bit;
            if free_at_or_above != 0 {
                let candidate = frame.saturating_add(u64::from(free_at_or_above.trailing_zeros()));
                return (candidate < to).then_some(candidate);
            }
            frame = (word as u64)
                .saturating_add(1)
                .saturating_mul(BITS_PER_WORD);
        }
        None
    }

    /// The first unavailable frame in `[from, to)`, or `to`.
    fn next_used(&self, from: u64, to: u64) -> u64 {
        let to = to.min(self.frame_limit);
        let mut frame = from;
        while frame < to {
            let (word, bit) = split(frame);
            let Some(&bits) = self.bitmap.get(word) else {
                return frame;
            };
            let used_at_or_above = bits >> bit;
            if used_at_or_above != 0 {
                return frame
                    .saturating_add(u64::from(used_at_or_above.trailing_zeros()))
                    .min(to);
            }
            frame = (word as u64)
                .saturating_add(1)
                .saturating_mul(BITS_PER_WORD);
        }
        to
    }
}

/// Calls `each(word, mask)` for the bitmap words covering frames `[first, end)`, `mask` having
/// the bits of those frames in that word.
fn for_each_word_span(first: u64, end: u64, mut each: impl FnMut(usize, u64)) {
    let mut frame = first;
    while frame < end {
        let (word, bit) = split(frame);
        let span = (BITS_PER_WORD - bit).min(end - frame);
        let mask = if span == BITS_PER_WORD {
            u64::MAX
        } else {
            ((1u64 << span) - 1) << bit
        };
        each(word, mask);
        frame += span;
    }
}

fn split(frame: u64) -> (usize, u64) {
    (
        usize::try_from(frame / BITS_PER_WORD).unwrap_or(usize::MAX),
        frame % BITS_PER_WORD,
    )
}

/// The frame span `[first, end)` of the pages an avoided range touches.
fn avoid_frames(range: &PhysRange) -> Option<(u64, u64)> {
    if range.is_empty() {
        return None;
    }
    let footprint = range.page_footprint()?;
    Some((
        footprint.start().frame().as_u64(),
        footprint.end().frame().as_u64(),
    ))
}

/// If `frame` lies in a page of an avoided range, the first frame past that range.
fn avoid_end_containing(avoid: &[PhysRange], frame: u64) -> Option<u64> {
    avoid
        .iter()
        .filter_map(avoid_frames)
        .filter(|&(first, end)| first <= frame && frame < end)
        .map(|(_, end)| end)
        .max()
}

/// The first frame of the nearest avoided range that starts after `frame`.
fn next_avoid_start(avoid: &[PhysRange], frame: u64) -> Option<u64> {
    avoid
        .iter()
        .filter_map(avoid_frames)
        .map(|(first, _)| first)
        .filter(|&first| first > frame)
        .min()
}

/// The page count of `len_bytes`, rounded up.
pub const fn pages_for(len_bytes: u64) -> u64 {
    len_bytes.div_ceil(PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::RawMemoryEntry;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    fn map() -> MemoryMap {
        // Two RAM regions with a hole and a reserved page, one of them not page aligned.
        MemoryMap::from_entries([
            RawMemoryEntry {
                addr: 0,
                len_bytes: 0x9_fc00,
                type_number: 1,
            },
            RawMemoryEntry {
                addr: 0x10_0000,
                len_bytes: 0x30_0000,
                type_number: 1,
            },
            RawMemoryEntry {
                addr: 0x20_0000,
                len_bytes: 0x1000,
                type_number: 2,
            },
        ])
        .unwrap()
    }

    fn recount(allocator: &FrameAllocator<'_>) -> u64 {
        (0..allocator.frame_limit)
            .filter(|&frame| !allocator.is_used(frame))
            .count() as u64
    }

    #[test]
    fn counts_ram_pages_exactly() {
        let map = map();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let allocator = FrameAllocator::new(&map, &mut storage).unwrap();
        // 0x9f pages below the hole (the partial page dropped), 0x300 pages above minus one.
        assert_eq!(allocator.ram_page_count(), 0x9f + 0x2ff);
        assert_eq!(allocator.free_page_count(), recount(&allocator));
        assert!(!allocator.is_free(PhysAddr::new(0x9_f000).frame()));
        assert!(!allocator.is_free(PhysAddr::new(0x20_0000).frame()));
        assert!(!allocator.is_free(PhysAddr::new(0x40_0000).frame()));
    }

    #[test]
    fn storage_must_be_large_enough() {
        let map = map();
        let mut storage = vec![0u64; 1];
        assert!(matches!(
            FrameAllocator::new(&map, &mut storage),
            Err(FrameError::StorageTooSmall { .. })
        ));
    }

    #[test]
    fn reserve_alloc_free_keep_the_count_exact() {
        let map = map();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut allocator = FrameAllocator::new(&map, &mut storage).unwrap();
        let initial = allocator.free_page_count();

        assert_eq!(allocator.reserve(range(0, 0x10_0000)), 0x9f);
        assert_eq!(
            allocator.reserve(range(0, 0x10_0000)),
            0,
            "reserving twice takes nothing"
        );
        // A partial page reserves the whole page.
        assert_eq!(allocator.reserve(range(0x10_0001, 0x10_0002)), 1);

        let page = allocator.alloc_page().unwrap();
        assert_eq!(page.addr(), Some(PhysAddr::new(0x10_1000)));
        let run = allocator.alloc_contiguous(0xfe).unwrap();
        assert_eq!(run, range(0x10_2000, 0x20_0000));
        // The next run must skip the reserved page at 2 MiB.
        let run2 = allocator.alloc_contiguous(2).unwrap();
        assert_eq!(run2, range(0x20_1000, 0x20_3000));
        assert_eq!(allocator.free_page_count(), recount(&allocator));

        allocator.free_page(page).unwrap();
        assert_eq!(
            allocator.free_page(page),
            Err(FrameError::AlreadyFree { frame: page })
        );
        allocator.free_range(run).unwrap();
        allocator.free_range(run2).unwrap();
        assert_eq!(allocator.free_page_count(), initial - 0x9f - 1);
        assert_eq!(allocator.free_page_count(), recount(&allocator));
    }

    #[test]
    fn bad_frees_change_nothing() {
        let map = map();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut allocator = FrameAllocator::new(&map, &mut storage).unwrap();
        let run = allocator.alloc_contiguous(4).unwrap();
        let before = allocator.free_page_count();
        assert!(matches!(
            allocator.free_range(range(0x9_f000, 0xa_1000)),
            Err(FrameError::NotRam { .. })
        ));
        assert!(matches!(
            allocator.free_range(range(0x1_0000, 0x1_0800)),
            Err(FrameError::NotPageAligned { .. })
        ));
        // Half of this range is free already: nothing may be freed.
        let overlapping = range(run.start().as_u64(), run.end().as_u64() + 0x2000);
        assert!(matches!(
            allocator.free_range(overlapping),
            Err(FrameError::AlreadyFree { .. })
        ));
        assert_eq!(allocator.free_page_count(), before);
        assert_eq!(allocator.free_page_count(), recount(&allocator));
    }

    #[test]
    fn constrained_allocation_stays_inside_and_avoids() {
        let map = map();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut allocator = FrameAllocator::new(&map, &mut storage).unwrap();
        let within = range(0x10_0000, 0x18_0000);
        let avoid = [range(0x10_0800, 0x10_4000), range(0x10_6000, 0x10_7000)];
        // 0x104000..0x106000 is only two pages: a run of three must come after the second.
        let run = allocator.alloc_contiguous_in(3, within, &avoid).unwrap();
        assert_eq!(run, range(0x10_7000, 0x10_a000));
        let small = allocator.alloc_contiguous_in(2, within, &avoid).unwrap();
        assert_eq!(small, range(0x10_4000, 0x10_6000));
        assert_eq!(allocator.alloc_contiguous_in(0x100, within, &avoid), None);
        assert_eq!(allocator.alloc_contiguous_in(0, within, &avoid), None);
        assert_eq!(allocator.free_page_count(), recount(&allocator));
    }

    #[test]
    fn exhaustion_returns_none() {
        let map = MemoryMap::from_entries([RawMemoryEntry {
            addr: 0,
            len_bytes: 0x3000,
            type_number: 1,
        }])
        .unwrap();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut allocator = FrameAllocator::new(&map, &mut storage).unwrap();
        assert!(allocator.alloc_page().is_some());
        assert!(allocator.alloc_page().is_some());
        assert!(allocator.alloc_page().is_some());
        assert!(allocator.alloc_page().is_none());
        assert_eq!(allocator.free_page_count(), 0);
        allocator.free_page(PageFrame::new(1)).unwrap();
        assert_eq!(allocator.alloc_page(), Some(PageFrame::new(1)));
    }
}
