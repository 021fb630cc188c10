//! The global heap (`alloc`), carved from physical frames once the frame allocator exists.
//!
//! The heap is placed *outside* scratch memory: the kexec loader stages the next kernel's
//! segments in heap buffers, and those must survive while the trampoline copies segments into
//! scratch. [`init_from_frames`] takes the ranges to keep out of (scratch) from the caller.

use crate::addr::PhysRange;
use crate::frame::FrameAllocator;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Why the heap could not be set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeapError {
    /// `init_from_frames` was called twice.
    AlreadyInitialised,
    /// No run of free frames of the requested size outside the avoided ranges.
    OutOfMemory {
        /// Pages asked for.
        page_count: u64,
    },
    /// The frames found are not reachable through the identity map.
    NotMapped {
        /// The range found.
        range: PhysRange,
    },
}

impl fmt::Display for HeapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HeapError::AlreadyInitialised => write!(f, "heap initialised twice"),
            HeapError::OutOfMemory { page_count } => {
                write!(f, "no {page_count} contiguous free pages for the heap")
            }
            HeapError::NotMapped { range } => {
                write!(f, "heap range {range} is not identity mapped")
            }
        }
    }
}

/// Allocates `page_count` contiguous pages that share no page with `avoid` and makes them the
/// global heap. Returns the heap's range.
pub fn init_from_frames(
    frames: &mut FrameAllocator<'_>,
    page_count: u64,
    avoid: &[PhysRange],
) -> Result<PhysRange, HeapError> {
    let mappable =
        PhysRange::from_bounds(crate::addr::PhysAddr::ZERO, super::phys::IDENTITY_MAP_END)
            .unwrap_or(PhysRange::EMPTY);
    if INITIALISED.load(Ordering::Acquire) {
        return Err(HeapError::AlreadyInitialised);
    }
    let range = frames
        .alloc_contiguous_in(page_count, mappable, avoid)
        .ok_or(HeapError::OutOfMemory { page_count })?;
    if !super::phys::is_accessible(range) {
        // Cannot happen (the window is the identity map); give the pages back if it did.
        let _ = frames.free_range(range);
        return Err(HeapError::NotMapped { range });
    }
    // One CPU, interrupts off: nothing can initialise the heap between the load and this store.
    INITIALISED.store(true, Ordering::Release);
    // SAFETY: `range` was just allocated from the frame allocator, so it is ours alone; it is
    // identity mapped (checked above) and never freed, so it lives as long as the heap. The
    // INITIALISED flag makes this the only time the heap is given memory.
    let memory = unsafe { super::phys::slice_mut(range) };
    // SAFETY: as above: `memory` is unused, valid, exclusively owned memory that outlives the
    // heap (it is never freed), which is what `Heap::init` requires.
    unsafe { HEAP.lock().init(memory.as_mut_ptr(), memory.len()) };
    Ok(range)
}

/// Bytes currently allocated from the heap.
pub fn used_bytes() -> usize {
    HEAP.lock().used()
}

/// Bytes currently free in the heap.
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}
