//! Typed physical addresses, page frames and ranges.
//!
//! Everything that names physical memory in this crate goes through these types, so that page
//! alignment and overflow are checked once, where a value enters, and never assumed later.

use core::fmt;

/// log2 of the page size. The handover is only defined between kernels with 4 KiB pages.
pub const PAGE_SHIFT: u32 = 12;
/// The page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Physical addresses are at most this many bits wide (x86_64's architectural maximum).
pub const PHYS_ADDR_BITS: u32 = 52;
/// One past the highest representable physical address.
pub const PHYS_ADDR_LIMIT: u64 = 1 << PHYS_ADDR_BITS;
/// One past the highest page frame number.
pub const PFN_LIMIT: u64 = PHYS_ADDR_LIMIT >> PAGE_SHIFT;

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// The address zero.
    pub const ZERO: PhysAddr = PhysAddr(0);

    /// Wraps a raw address. Any u64 is accepted; use [`PhysAddr::is_valid`] to check the range.
    pub const fn new(raw: u64) -> PhysAddr {
        PhysAddr(raw)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is below [`PHYS_ADDR_LIMIT`].
    pub const fn is_valid(self) -> bool {
        self.0 < PHYS_ADDR_LIMIT
    }

    /// Whether the address is a multiple of [`PAGE_SIZE`].
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & align.wrapping_sub(1) == 0
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

    /// Whether the address is aligned to a block of `2^order` pages.
    pub const fn is_aligned_to_order(self, order: u8) -> bool {
        let shift = PAGE_SHIFT.wrapping_add(order as u32);
        if shift >= 64 {
            return self.0 == 0;
        }
        self.0 & (1u64 << shift).wrapping_sub(1) == 0
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

    /// The first byte of the frame, or `None` if the frame is beyond [`PFN_LIMIT`].
    pub const fn addr(self) -> Option<PhysAddr> {
        if self.0 < PFN_LIMIT {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        } else {
            None
        }
    }
}

impl fmt::Debug for PageFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageFrame({:#x})", self.0)
    }
}

/// A half-open range of physical memory `[start, start + len_bytes)`.
///
/// A `PhysRange` obtained from [`PhysRange::new`] never wraps and ends at or below
/// [`PHYS_ADDR_LIMIT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysRange {
    start: PhysAddr,
    len_bytes: u64,
}

impl PhysRange {
    /// The empty range at address zero.
    pub const EMPTY: PhysRange = PhysRange {
        start: PhysAddr(0),
        len_bytes: 0,
    };

    /// A range, or `None` if it wraps or extends past [`PHYS_ADDR_LIMIT`].
    pub const fn new(start: PhysAddr, len_bytes: u64) -> Option<PhysRange> {
        match start.0.checked_add(len_bytes) {
            Some(end) if end <= PHYS_ADDR_LIMIT => Some(PhysRange { start, len_bytes }),
            _ => None,
        }
    }

    /// The range `[start, end)`, or `None` if `end < start` or it passes [`PHYS_ADDR_LIMIT`].
    pub const fn from_bounds(start: PhysAddr, end: PhysAddr) -> Option<PhysRange> {
        match end.0.checked_sub(start.0) {
            Some(len_bytes) => PhysRange::new(start, len_bytes),
            None => None,
        }
    }

    /// The range covering `page_count` pages from `frame`, if representable.
    pub const fn from_frames(frame: PageFrame, page_count: u64) -> Option<PhysRange> {
        let Some(start) = frame.addr() else {
            return None;
        };
        match page_count.checked_mul(PAGE_SIZE) {
            Some(len_bytes) => PhysRange::new(start, len_bytes),
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

    /// Whether `other` lies entirely inside this range.
    pub const fn contains_range(self, other: PhysRange) -> bool {
        other.start.0 >= self.start.0 && other.end().0 <= self.end().0
    }

    /// The bytes both ranges cover ([`PhysRange::EMPTY`] if none).
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
                len_bytes: end.wrapping_sub(start),
            }
        } else {
            PhysRange::EMPTY
        }
    }

    /// The smallest page-aligned range covering every page this range touches, or `None` if
    /// rounding up the end overflows.
    pub const fn page_footprint(self) -> Option<PhysRange> {
        let start = self.start.align_down(PAGE_SIZE);
        match self.end().align_up(PAGE_SIZE) {
            Some(end) => PhysRange::from_bounds(start, end),
            None => None,
        }
    }

    /// The whole pages inside this range ([`PhysRange::EMPTY`] if none).
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

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: PhysRange) -> bool {
        self.start.0 < other.end().0
            && other.start.0 < self.end().0
            && !self.is_empty()
            && !other.is_empty()
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

/// A list of physical ranges, however it is stored (native [`PhysRange`]s, or the
/// little-endian rows of a handover image).
pub trait RangeList {
    /// Number of ranges.
    fn range_count(&self) -> usize;
    /// The range at `index`, or `None` past the end (or if the stored range is invalid).
    fn range_at(&self, index: usize) -> Option<PhysRange>;
}

impl RangeList for &[PhysRange] {
    fn range_count(&self) -> usize {
        self.len()
    }

    fn range_at(&self, index: usize) -> Option<PhysRange> {
        self.get(index).copied()
    }
}

/// Whether `ranges` is sorted by start, page aligned, non-empty, and neither overlapping nor
/// touching (touching ranges must be merged): the canonical form of every range list in the
/// handover.
pub fn is_canonical_range_list(ranges: &[PhysRange]) -> bool {
    let mut previous_end: Option<PhysAddr> = None;
    for range in ranges {
        if range.is_empty() || !range.is_page_aligned() {
            return false;
        }
        if let Some(end) = previous_end
            && range.start() <= end
        {
            return false;
        }
        previous_end = Some(range.end());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_construction_rejects_wrap_and_limit() {
        assert!(PhysRange::new(PhysAddr::new(u64::MAX), 2).is_none());
        assert!(PhysRange::new(PhysAddr::new(PHYS_ADDR_LIMIT - 4096), 4096).is_some());
        assert!(PhysRange::new(PhysAddr::new(PHYS_ADDR_LIMIT - 4096), 4097).is_none());
        assert!(PhysRange::from_bounds(PhysAddr::new(10), PhysAddr::new(5)).is_none());
    }

    #[test]
    fn overlap_and_containment() {
        let a = PhysRange::new(PhysAddr::new(0x1000), 0x2000).unwrap();
        let b = PhysRange::new(PhysAddr::new(0x2000), 0x1000).unwrap();
        let c = PhysRange::new(PhysAddr::new(0x3000), 0x1000).unwrap();
        assert!(a.overlaps(b));
        assert!(!a.overlaps(c));
        assert!(a.contains_range(b));
        assert!(!a.contains_range(c));
        assert!(a.contains(PhysAddr::new(0x2fff)));
        assert!(!a.contains(PhysAddr::new(0x3000)));
    }

    #[test]
    fn order_alignment() {
        assert!(PhysAddr::new(0x200000).is_aligned_to_order(9));
        assert!(!PhysAddr::new(0x201000).is_aligned_to_order(9));
        assert!(PhysAddr::new(0).is_aligned_to_order(60));
        assert!(!PhysAddr::new(0x1000).is_aligned_to_order(60));
    }

    #[test]
    fn intersection_and_page_rounding() {
        let range = |start: u64, end: u64| {
            PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
        };
        assert_eq!(range(0, 10).intersection(range(5, 20)), range(5, 10));
        assert!(range(0, 10).intersection(range(10, 20)).is_empty());
        assert_eq!(
            range(0x1001, 0x2001).page_footprint(),
            Some(range(0x1000, 0x3000))
        );
        assert_eq!(range(0x1001, 0x3001).pages_within(), range(0x2000, 0x3000));
        assert!(range(0x1001, 0x1fff).pages_within().is_empty());
        assert_eq!(
            PhysAddr::new(0x1234).align_down(0x1000),
            PhysAddr::new(0x1000)
        );
        assert_eq!(
            PhysAddr::new(0x1234).align_up(0x1000),
            Some(PhysAddr::new(0x2000))
        );
        assert_eq!(PhysAddr::new(u64::MAX).align_up(0x1000), None);
        assert!(PhysAddr::new(0x40_0000).is_aligned(0x20_0000));
        assert_eq!(
            PhysRange::from_frames(PageFrame::new(2), 3),
            Some(range(0x2000, 0x5000))
        );
        assert!(PhysRange::from_frames(PageFrame::new(u64::MAX), 1).is_none());
    }

    #[test]
    fn canonical_range_lists() {
        let r = |s: u64, l: u64| PhysRange::new(PhysAddr::new(s), l).unwrap();
        assert!(is_canonical_range_list(&[r(0, 0x1000), r(0x2000, 0x1000)]));
        assert!(!is_canonical_range_list(&[r(0, 0x1000), r(0x1000, 0x1000)]));
        assert!(!is_canonical_range_list(&[r(0x2000, 0x1000), r(0, 0x1000)]));
        assert!(!is_canonical_range_list(&[r(0, 0x800)]));
        assert!(!is_canonical_range_list(&[r(0, 0)]));
    }
}
