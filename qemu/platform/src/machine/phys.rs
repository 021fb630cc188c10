//! Raw access to physical memory through the identity map.
//!
//! Both entry paths run on the platform's static page tables, which map `[0, 4 GiB)` one to one,
//! so a physical address below [`IDENTITY_MAP_END`] is also a valid pointer value, except
//! address 0, the null pointer: no access may start there (PVH puts its memory map in page 0,
//! so the rest of page 0 is readable).

use crate::addr::{PhysAddr, PhysRange};
use crate::pvh::{PhysReader, UnreadableMemory};

/// One past the last byte the platform's boot page tables map.
pub const IDENTITY_MAP_END: PhysAddr = PhysAddr::new(4 << 30);

/// Whether every byte of `range` is mapped and the range does not start at address 0.
pub fn is_accessible(range: PhysRange) -> bool {
    range.start() != PhysAddr::ZERO && range.end() <= IDENTITY_MAP_END
}

fn pointer(addr: PhysAddr) -> *mut u8 {
    // The identity map makes the physical address the pointer value. `usize` is 64 bits here.
    core::ptr::with_exposed_provenance_mut(addr.as_u64() as usize)
}

/// The bytes of `range` as a slice.
///
/// # Safety
/// `range` must be accessible ([`is_accessible`]) and, for as long as the slice lives, no one
/// may write to it.
pub unsafe fn slice<'a>(range: PhysRange) -> &'a [u8] {
    debug_assert!(is_accessible(range) || range.is_empty());
    // SAFETY: the caller guarantees the range is mapped (so the pointer is non-null, aligned
    // for u8 and valid for `len` bytes) and not written while the slice lives.
    unsafe { core::slice::from_raw_parts(pointer(range.start()), range.len_bytes() as usize) }
}

/// The bytes of `range` as a mutable slice.
///
/// # Safety
/// `range` must be accessible ([`is_accessible`]) and owned by the caller alone (for example
/// freshly allocated from the frame allocator) for as long as the slice lives.
pub unsafe fn slice_mut<'a>(range: PhysRange) -> &'a mut [u8] {
    debug_assert!(is_accessible(range) || range.is_empty());
    // SAFETY: the caller guarantees the range is mapped and that nothing else reads or writes
    // it while the slice lives.
    unsafe { core::slice::from_raw_parts_mut(pointer(range.start()), range.len_bytes() as usize) }
}

/// The `word_count` 64-bit words at `addr` as a mutable slice.
///
/// # Safety
/// As [`slice_mut`] for the `8 * word_count` bytes at `addr`, and `addr` must be 8-byte
/// aligned.
pub unsafe fn words_mut<'a>(addr: PhysAddr, word_count: usize) -> &'a mut [u64] {
    debug_assert!(addr.is_aligned(8));
    // SAFETY: the caller guarantees alignment, mapping and exclusive ownership of the bytes;
    // every bit pattern is a valid u64.
    unsafe { core::slice::from_raw_parts_mut(pointer(addr).cast::<u64>(), word_count) }
}

/// Reads physical memory through the identity map (firmware tables, the boot info).
pub struct IdentityMap;

impl PhysReader for IdentityMap {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), UnreadableMemory> {
        let unreadable = UnreadableMemory {
            addr: addr.as_u64(),
            len_bytes: buf.len() as u64,
        };
        let range = PhysRange::new(addr, buf.len() as u64).ok_or(unreadable)?;
        if !is_accessible(range) {
            return Err(unreadable);
        }
        // SAFETY: the range is mapped (checked above). We only copy bytes out; on this single
        // CPU with interrupts off nothing writes the source while we read it, and `buf` is a
        // distinct Rust allocation, so the two do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(pointer(addr).cast_const(), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }
}

/// The handover core's byte access to physical memory, through the identity map: what the
/// memfd handler reads and writes file pages with.
impl handover::kernel::PhysMemory for IdentityMap {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) {
        // Same access as `PhysReader::read`; the core's contract is that callers only name
        // memory they own, so an unmapped address is a caller bug.
        let result = PhysReader::read(self, addr, buf);
        debug_assert!(result.is_ok(), "read of unmapped {addr}");
    }

    fn write(&mut self, addr: PhysAddr, data: &[u8]) {
        let Some(range) = PhysRange::new(addr, data.len() as u64) else {
            return;
        };
        if !is_accessible(range) {
            debug_assert!(false, "write to unmapped {range}");
            return;
        }
        // SAFETY: the range is mapped (checked above), and the core's `PhysMemory` contract is
        // that callers only write pages they own (a file's own pages), so nothing else holds a
        // reference to these bytes; `data` is a Rust slice, distinct from physical pages the
        // allocator handed out to a file.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), pointer(addr), data.len());
        }
    }
}
