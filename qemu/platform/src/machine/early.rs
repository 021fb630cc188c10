//! Early memory bring-up: the bump allocator in scratch, then the frame allocator.
//!
//! The order matters for a kernel entered by kexec. It may not touch anything outside scratch
//! until it has reserved every preserved range, so:
//!
//! 1. [`EarlyMemory::new`] finds the largest free gap of scratch (avoiding the ranges in use at
//!    entry and the running image), makes it the bump allocator's window, takes the frame
//!    bitmap from it and builds the [`FrameAllocator`] with every page of the bump window, the
//!    in-use ranges, the image and the first MiB reserved.
//! 2. The kernel reserves what it must keep (the handover, preserved memory) through
//!    [`EarlyMemory::frames`], allocating only through [`EarlyMemory::bump`] meanwhile.
//! 3. [`EarlyMemory::finish`] gives the unused tail of the bump window back and returns the
//!    frame allocator and the exact range the bump allocator used, which the kernel can check
//!    lies inside scratch.

use crate::addr::{MIB, PAGE_SIZE, PhysAddr, PhysRange};
use crate::bump::{BumpAllocator, largest_free_gap};
use crate::frame::{FrameAllocator, FrameError, bitmap_words_for};
use crate::memmap::MemoryMap;
use core::fmt;

/// The most scratch ranges and in-use ranges [`EarlyMemory::new`] considers.
pub const MAX_EARLY_RANGES: usize = 64;

/// Why early memory could not be set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EarlyError {
    /// More than [`MAX_EARLY_RANGES`] scratch or in-use ranges.
    TooManyRanges,
    /// No whole free page of RAM in scratch outside the in-use ranges.
    NoScratchRoom,
    /// The frame bitmap does not fit in the largest free gap of scratch.
    BitmapDoesNotFit {
        /// Bytes needed.
        needed_bytes: u64,
        /// The gap found.
        window: PhysRange,
    },
    /// The frame allocator refused its storage.
    Frame(FrameError),
}

impl fmt::Display for EarlyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EarlyError::TooManyRanges => {
                write!(f, "more than {MAX_EARLY_RANGES} scratch or in-use ranges")
            }
            EarlyError::NoScratchRoom => write!(f, "no free page of RAM in scratch"),
            EarlyError::BitmapDoesNotFit {
                needed_bytes,
                window,
            } => write!(
                f,
                "frame bitmap of {needed_bytes} bytes does not fit in the free scratch gap {window}"
            ),
            EarlyError::Frame(error) => write!(f, "frame allocator: {error}"),
        }
    }
}

/// The bump allocator and the frame allocator during bring-up.
pub struct EarlyMemory {
    bump: BumpAllocator,
    frames: FrameAllocator<'static>,
}

impl EarlyMemory {
    /// Sets up the bump allocator in scratch and the frame allocator over `map` (clamped to the
    /// identity map). See the module documentation for what is reserved.
    ///
    /// # Safety
    /// Every byte of `scratch` that is RAM and outside `in_use` (and outside the running image)
    /// must be unused: this function overwrites part of it with the frame bitmap. Call it once.
    pub unsafe fn new(
        map: &MemoryMap,
        scratch: &[PhysRange],
        in_use: &[PhysRange],
    ) -> Result<EarlyMemory, EarlyError> {
        let map = map.clamped(super::phys::IDENTITY_MAP_END);
        let low_memory = PhysRange::new(PhysAddr::ZERO, MIB).unwrap_or(PhysRange::EMPTY);
        let image = super::entry::image_range();

        let mut avoid: heapless::Vec<PhysRange, { MAX_EARLY_RANGES + 2 }> = heapless::Vec::new();
        for range in in_use.iter().copied().chain([image, low_memory]) {
            avoid.push(range).map_err(|_| EarlyError::TooManyRanges)?;
        }
        let mut scratch_ram: heapless::Vec<PhysRange, MAX_EARLY_RANGES> = heapless::Vec::new();
        for scratch_range in scratch {
            for ram in map.ram() {
                let piece = scratch_range.intersection(ram);
                if !piece.is_empty() {
                    scratch_ram
                        .push(piece)
                        .map_err(|_| EarlyError::TooManyRanges)?;
                }
            }
        }
        let window = largest_free_gap(&scratch_ram, &avoid).ok_or(EarlyError::NoScratchRoom)?;
        let mut bump = BumpAllocator::new(window);

        let word_count = bitmap_words_for(&map);
        let needed_bytes = (word_count as u64).saturating_mul(8);
        let bitmap = bump
            .alloc(needed_bytes, PAGE_SIZE)
            .filter(|range| super::phys::is_accessible(*range))
            .ok_or(EarlyError::BitmapDoesNotFit {
                needed_bytes,
                window,
            })?;
        // The bitmap is never freed: it stays reserved as part of the bump window's used range.
        // SAFETY: `bitmap` is bump-allocated (each byte handed out once) from unused scratch
        // outside every in-use range; it is page aligned and identity mapped (checked above).
        let storage = unsafe { super::phys::words_mut(bitmap.start(), word_count) };
        let mut frames = FrameAllocator::new(&map, storage).map_err(EarlyError::Frame)?;

        // The whole bump window is reserved up front, so the frame allocator and the bump
        // allocator can never hand out the same page; `finish` returns the unused tail.
        for range in avoid.iter().copied().chain([window]) {
            frames.reserve(range);
        }
        Ok(EarlyMemory { bump, frames })
    }

    /// The bump allocator: the only allocator to use until everything preserved is reserved.
    pub fn bump(&mut self) -> &mut BumpAllocator {
        &mut self.bump
    }

    /// The frame allocator, for reserving. Do not allocate from it until every preserved range
    /// is reserved.
    pub fn frames(&mut self) -> &mut FrameAllocator<'static> {
        &mut self.frames
    }

    /// `len_bytes` zeroed bytes from the bump allocator, aligned to `align`.
    pub fn alloc_zeroed(
        &mut self,
        len_bytes: u64,
        align: u64,
    ) -> Option<(PhysRange, &'static mut [u8])> {
        let range = self.bump.alloc(len_bytes, align)?;
        if !super::phys::is_accessible(range) && !range.is_empty() {
            return None;
        }
        // SAFETY: the bump allocator hands out each byte of its window once, and the window is
        // unused scratch RAM (see `new`), reserved in the frame allocator: the slice is ours
        // alone, mapped, and never freed.
        let bytes = unsafe { super::phys::slice_mut(range) };
        bytes.fill(0);
        Some((range, bytes))
    }

    /// Ends the early phase: returns the bump window's unused whole pages to the frame
    /// allocator and hands back the frame allocator and the range the bump allocator used
    /// (which stays reserved).
    pub fn finish(self) -> (FrameAllocator<'static>, PhysRange) {
        let EarlyMemory { bump, mut frames } = self;
        let used = bump.used_range();
        let window = bump.window();
        let unused_start = used.end().align_up(PAGE_SIZE).unwrap_or(window.end());
        if let Some(unused) = PhysRange::from_bounds(unused_start, window.end())
            && !unused.is_empty()
        {
            // The window was reserved whole in `new` and nothing else frees it: this cannot
            // fail, and if it did the pages would merely stay reserved.
            let _ = frames.free_range(unused);
        }
        (frames, used)
    }
}
