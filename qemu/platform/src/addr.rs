//! Typed physical addresses, page frames and ranges.
//!
//! Every value that names physical memory in the platform, the loader and the shim goes through
//! these types, so overflow and alignment are checked once, where a value enters. The API mirrors
//! `handover::addr` (same names, same half-open semantics) so the two convert through
//! `as_u64` without surprises; the platform does not depend on the handover crate because it sits
//! below it.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The page size in bytes (the frame allocator's granule).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// The size of one large page in the identity maps the platform and the loader build (2 MiB).
pub const LARGE_PAGE_SIZE: u64 = 1 << 21;
/// One MiB, for layouts written in MiB.
pub const MIB: u64 = 1 << 20;

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// The address zero.
    pub const ZERO: PhysAddr = PhysAddr(0);

    /// Wraps a raw address.
    pub const fn new(raw: u64) -> PhysAddr {
        PhysAddr(raw)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & align.wrapping_sub(1) == 0
    }

    /// Whether the address is a multiple of [`PAGE_SIZE`].
    pub const fn is_page_aligned(self) -> bool {
        self.is_aligned(PAGE_SIZE)
    }

    /// The page frame containing this address.
    pub const fn frame(self) -> PageFrame {
        PageFrame(self.0 >> PAGE_SHIFT)
    }

    /// `self + len_bytes`, or `None` on overflow.
    pub const fn checked_add(self, len_bytes: u64) -> Option<PhysAddr> {
        match self.0.checked_add(len_bytes) {
            Some(end) => Some(PhysAddr(end)),
            None => None,
        }
    }

    /// Rounded down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> PhysAddr {
        PhysAddr(self.0 & !align.wrapping_sub(1))
    }

    /// Rounded up to a multiple of `align` (a power of two), or `None` on overflow.
    pub const fn align_up(self, align: u64) -> Option<PhysAddr> {
        match self.0.checked_add(align.wrapping_sub(1)) {
            Some(bumped) => Some(PhysAddr(bumped & !align.wrapping_sub(1))),
            None => None,
        }
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A physical page frame number (the address shifted right by [`PAGE_SHIFT`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageFrame(u64);

impl PageFrame {
    /// Wraps a raw frame number.
    pub const fn new(pfn: u64) -> PageFrame {
        PageFrame(pfn)
    }

    /// The raw frame number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The first byte of the frame. Frame numbers come from addresses shifted right, so the
    /// shift back cannot lose bits for any frame this crate produces; a hand-made frame above
    /// 2^52 wraps, which [`PhysRange::from_frames`] rejects.
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
}

impl fmt::Debug for PageFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageFrame({:#x})", self.0)
    }
}

/// A half-open range of physical memory `[start, start + len_bytes)` that never wraps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysRange {
    start: PhysAddr,
    len_bytes: u64,
}

impl PhysRange {
    /// The empty range at zero.
    pub const EMPTY: PhysRange = PhysRange {
        start: PhysAddr(0),
        len_bytes: 0,
    };

    /// A range, or `None` if it wraps past 2^64.
    pub const fn new(start: PhysAddr, len_bytes: u64) -> Option<PhysRange> {
        match start.0.checked_add(len_bytes) {
            Some(_) => Some(PhysRange { start, len_bytes }),
            None => None,
        }
    }

    /// The range `[start, end)`, or `None` if `end < start`.
    pub const fn from_bounds(start: PhysAddr, end: PhysAddr) -> Option<PhysRange> {
        match end.0.checked_sub(start.0) {
            Some(len_bytes) => Some(PhysRange { start, len_bytes }),
            None => None,
        }
    }

    /// The `page_count` pages starting at `frame`, if representable.
    pub const fn from_frames(frame: PageFrame, page_count: u64) -> Option<PhysRange> {
        if frame.0 > (u64::MAX >> PAGE_SHIFT) {
            return None;
        }
        match page_count.checked_mul(PAGE_SIZE) {
            Some(len_bytes) => PhysRange::new(frame.addr(), len_bytes),
            None => None,
        }
    }

    /// First byte.
    pub const fn start(self) -> PhysAddr {
        self.start
    }

    /// Length in bytes.
    pub const fn len_bytes(self) -> u64 {
        self.len_bytes
    }

    /// One past the last byte. Cannot overflow: checked at construction.
    pub const fn end(self) -> PhysAddr {
        PhysAddr(self.start.0.wrapping_add(self.len_bytes))
    }

    /// Whether the range is empty.
    pub const fn is_empty(self) -> bool {
        self.len_bytes == 0
    }

    /// Whether both ends are page aligned.
    pub const fn is_page_aligned(self) -> bool {
        self.start.is_page_aligned() && self.len_bytes & (PAGE_SIZE - 1) == 0
    }

    /// Number of whole pages (the length divided by the page size, rounded down).
    pub const fn page_count(self) -> u64 {
        self.len_bytes >> PAGE_SHIFT
    }

    /// Whether `addr` lies inside the range.
    pub const fn contains(self, addr: PhysAddr) -> bool {
        addr.0 >= self.start.0 && addr.0 < self.end().0
    }

    /// Whether `other` lies entirely inside this range (an empty `other` inside or at the
    /// boundary counts).
    pub const fn contains_range(self, other: PhysRange) -> bool {
        other.start.0 >= self.start.0 && other.end().0 <= self.end().0
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: PhysRange) -> bool {
        self.start.0 < other.end().0
            && other.start.0 < self.end().0
            && !self.is_empty()
            && !other.is_empty()
    }

    /// The bytes both ranges cover (empty if they do not overlap).
    pub const fn intersection(self, other: PhysRange) -> PhysRange {
        let start = if self.start.0 > other.start.0 {
            self.start.0
        } else {
            other.start.0
        };
        let end = if self.end().0 < other.end().0 {
            self.end().0
        } else {
            other.end().0
        };
        if start < end {
            PhysRange {
                start: PhysAddr(start),
                len_bytes: end - start,
            }
        } else {
            PhysRange::EMPTY
        }
    }

    /// The smallest page-aligned range covering this one (its page footprint), or `None` if
    /// rounding the end up overflows.
    pub const fn page_footprint(self) -> Option<PhysRange> {
        let start = self.start.align_down(PAGE_SIZE);
        match self.end().align_up(PAGE_SIZE) {
            Some(end) => PhysRange::from_bounds(start, end),
            None => None,
        }
    }

    /// The largest page-aligned range inside this one (empty if it holds no whole page).
    pub const fn pages_within(self) -> PhysRange {
        let Some(start) = self.start.align_up(PAGE_SIZE) else {
            return PhysRange::EMPTY;
        };
        let end = self.end().align_down(PAGE_SIZE);
        match PhysRange::from_bounds(start, end) {
            Some(range) => range,
            None => PhysRange::EMPTY,
        }
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end().0)
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    #[test]
    fn construction_rejects_wrap() {
        assert!(PhysRange::new(PhysAddr::new(u64::MAX), 2).is_none());
        assert!(PhysRange::from_bounds(PhysAddr::new(10), PhysAddr::new(5)).is_none());
        assert!(PhysRange::from_frames(PageFrame::new(u64::MAX), 1).is_none());
        assert_eq!(
            PhysRange::from_frames(PageFrame::new(2), 3),
            Some(range(0x2000, 0x5000))
        );
    }

    #[test]
    fn overlap_and_intersection() {
        assert!(range(0, 10).overlaps(range(9, 20)));
        assert!(!range(0, 10).overlaps(range(10, 20)));
        assert!(!range(0, 10).overlaps(range(5, 5)));
        assert_eq!(range(0, 10).intersection(range(5, 20)), range(5, 10));
        assert!(range(0, 10).intersection(range(10, 20)).is_empty());
    }

    #[test]
    fn page_rounding() {
        assert_eq!(
            range(0x1001, 0x2001).page_footprint(),
            Some(range(0x1000, 0x3000))
        );
        assert_eq!(range(0x1001, 0x3001).pages_within(), range(0x2000, 0x3000));
        assert!(range(0x1001, 0x1fff).pages_within().is_empty());
        assert_eq!(range(u64::MAX - 5, u64::MAX).page_footprint(), None);
    }
}
