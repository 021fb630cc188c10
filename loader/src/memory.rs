//! Memory for preserved state: the RAM list a handover is built against, and page allocation
//! for files that must stay out of scratch (scratch is where the next kernel boots, so nothing
//! preserved may live there).

use handover::kernel::FrameAllocator as PageSource;
use handover::{PhysAddr, PhysRange};
use qemu_platform::frame::FrameAllocator;
use qemu_platform::memmap::MemoryMap;

/// At most this many RAM ranges (the memory map's own limit).
pub const MAX_RAM_RANGES: usize = qemu_platform::memmap::MAX_MEMORY_REGIONS;

/// The machine's RAM as whole pages, sorted and merged: the canonical list a handover records
/// and a preservation tracker is built over. Allocates nothing (early intake uses it).
pub fn ram_ranges(map: &MemoryMap) -> heapless::Vec<PhysRange, MAX_RAM_RANGES> {
    let mut ranges: heapless::Vec<PhysRange, MAX_RAM_RANGES> = heapless::Vec::new();
    for range in map
        .ram()
        .map(PhysRange::pages_within)
        .filter(|r| !r.is_empty())
    {
        match ranges.last_mut() {
            Some(last) if last.end() >= range.start() => {
                if let Some(merged) =
                    PhysRange::from_bounds(last.start(), range.end().max(last.end()))
                {
                    *last = merged;
                }
            }
            // The map has at most as many RAM regions as this list has room.
            _ => {
                let _ = ranges.push(range);
            }
        }
    }
    ranges
}

/// Pages for preserved files: from the frame allocator, never in scratch.
pub struct FilePages<'a, 'f> {
    frames: &'a mut FrameAllocator<'f>,
    /// Where to look: from the end of the lowest scratch range to the end of RAM.
    within: PhysRange,
    scratch: &'a [PhysRange],
}

impl<'a, 'f> FilePages<'a, 'f> {
    /// Allocation from `frames`, outside `scratch`.
    pub fn new(frames: &'a mut FrameAllocator<'f>, scratch: &'a [PhysRange]) -> Self {
        let end = frames.ram().last().map_or(PhysAddr::ZERO, |r| r.end());
        let start = scratch.first().map_or(PhysAddr::ZERO, |s| s.end());
        let within = PhysRange::from_bounds(start, end).unwrap_or(PhysRange::EMPTY);
        FilePages {
            frames,
            within,
            scratch,
        }
    }

    /// `page_count` contiguous pages outside scratch (for a handover image), or `None`.
    pub fn allocate_contiguous(&mut self, page_count: u64) -> Option<PhysRange> {
        self.frames
            .alloc_contiguous_in(page_count, self.within, self.scratch)
    }

    /// The frame allocator underneath.
    pub fn frames(&mut self) -> &mut FrameAllocator<'f> {
        self.frames
    }

    /// Returns a range to the free pool.
    pub fn free_range(&mut self, range: PhysRange) {
        // Only ever called with ranges this type handed out.
        let _ = self.frames.free_range(range);
    }
}

impl PageSource for FilePages<'_, '_> {
    fn allocate_page(&mut self) -> Option<PhysAddr> {
        self.allocate_contiguous(1).map(|range| range.start())
    }

    fn free_page(&mut self, addr: PhysAddr) {
        if let Some(page) = PhysRange::new(addr, handover::PAGE_SIZE) {
            self.free_range(page);
        }
    }
}
