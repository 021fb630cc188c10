//! The outgoing physical-page preservation tracker.
//!
//! Owns the set of physical blocks (naturally aligned groups of `2^order` pages) the running
//! kernel wants the next kernel to keep. It answers "is this page preserved" in O(1), refuses
//! double preservation and overlap with a typed error, and lists its content as maximal runs of
//! same-order blocks in address order, which is what [`crate::memmap`] serializes.
//!
//! Layout: one occupancy bit per page, in 4 KiB leaves of 32,768 bits (128 MiB of memory each),
//! found through a flat directory sized to the highest RAM address, so a lookup is two loads and
//! a sequential caller hits a cached leaf. Every preserved page sets its bit, whatever its block
//! order, which makes overlap detection a bit test. Blocks of order 1 and above are also kept in
//! an ordered map (start frame → order) so that serialization can tell them from order-0 pages.
//! Preservation is refused outside RAM and inside scratch: scratch is where the next kernel boots
//! and allocates before it has read the handover, so nothing preserved may live there.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PAGE_SHIFT, PFN_LIMIT, PageFrame, PhysAddr, PhysRange, is_canonical_range_list};
use crate::bitruns::RunScanner;
use crate::memmap::{FrameRun, MAX_ORDER};

const LEAF_SHIFT: u32 = 15;
const LEAF_WORDS: usize = 1 << (LEAF_SHIFT - 6);
const LEAF_PAGES: u64 = 1 << LEAF_SHIFT;
type Leaf = [u64; LEAF_WORDS];
/// Directory value meaning "no leaf allocated".
const NO_LEAF: u32 = u32::MAX;

/// Why a preservation request was refused. Every variant names the block it was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackerError {
    /// The RAM or scratch list given at construction is not sorted, page aligned and disjoint.
    InvalidLayout,
    /// The address is not aligned to the block size of its order.
    Unaligned {
        /// The requested address.
        addr: PhysAddr,
        /// The requested order.
        order: u8,
    },
    /// The order is above [`MAX_ORDER`].
    OrderTooLarge {
        /// The requested order.
        order: u8,
    },
    /// A length is not a whole number of pages, or a range overflows.
    InvalidLength {
        /// The requested start.
        addr: PhysAddr,
        /// The requested length in bytes.
        len_bytes: u64,
    },
    /// Part of the block is not RAM.
    OutsideRam {
        /// The first page of the block that is not RAM.
        addr: PhysAddr,
    },
    /// Part of the block lies in a scratch region.
    InScratch {
        /// The first page of the block inside scratch.
        addr: PhysAddr,
    },
    /// Exactly this block is already preserved.
    AlreadyPreserved {
        /// The block's address.
        addr: PhysAddr,
        /// The block's order.
        order: u8,
    },
    /// The block overlaps a different preserved block.
    Overlaps {
        /// The requested address.
        addr: PhysAddr,
        /// The requested order.
        order: u8,
        /// The start of the preserved block it overlaps.
        existing: PhysAddr,
        /// The order of the preserved block it overlaps.
        existing_order: u8,
    },
    /// Nothing is preserved at this address.
    NotPreserved {
        /// The address.
        addr: PhysAddr,
    },
    /// Something is preserved here, but not a block of this order starting here.
    OrderMismatch {
        /// The requested address.
        addr: PhysAddr,
        /// The requested order.
        order: u8,
        /// Where the preserved block containing the address starts.
        preserved_start: PhysAddr,
        /// The order it was preserved with.
        preserved_order: u8,
    },
    /// The tracker could not allocate its own bookkeeping.
    OutOfMemory,
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TrackerError::InvalidLayout => {
                write!(
                    f,
                    "RAM/scratch lists must be sorted, page aligned and disjoint"
                )
            }
            TrackerError::Unaligned { addr, order } => {
                write!(f, "{addr} is not aligned to an order-{order} block")
            }
            TrackerError::OrderTooLarge { order } => {
                write!(f, "order {order} exceeds the maximum {MAX_ORDER}")
            }
            TrackerError::InvalidLength { addr, len_bytes } => {
                write!(
                    f,
                    "range at {addr} of {len_bytes:#x} bytes is not whole pages"
                )
            }
            TrackerError::OutsideRam { addr } => write!(f, "page {addr} is not RAM"),
            TrackerError::InScratch { addr } => write!(f, "page {addr} lies in scratch"),
            TrackerError::AlreadyPreserved { addr, order } => {
                write!(f, "order-{order} block at {addr} is already preserved")
            }
            TrackerError::Overlaps {
                addr,
                order,
                existing,
                existing_order,
            } => write!(
                f,
                "order-{order} block at {addr} overlaps the preserved order-{existing_order} block at {existing}"
            ),
            TrackerError::NotPreserved { addr } => write!(f, "{addr} is not preserved"),
            TrackerError::OrderMismatch {
                addr,
                order,
                preserved_start,
                preserved_order,
            } => {
                write!(
                    f,
                    "{addr} is not an order-{order} preservation: it lies in the order-{preserved_order} block at {preserved_start}"
                )
            }
            TrackerError::OutOfMemory => write!(f, "tracker bookkeeping allocation failed"),
        }
    }
}

/// The set of preserved blocks of the running kernel.
pub struct PreservationTracker {
    ram: Vec<PhysRange>,
    scratch: Vec<PhysRange>,
    /// Frame ranges `[start, end)` where preservation is allowed: RAM minus scratch, sorted.
    allowed: Vec<(u64, u64)>,
    /// The allowed range the last lookup hit, as (start, length) so one compare checks it.
    hint_start: u64,
    hint_len: u64,
    /// Leaf number → index into `leaves`, or [`NO_LEAF`].
    directory: Vec<u32>,
    leaves: Vec<Leaf>,
    cached_leaf_number: u64,
    cached_leaf: usize,
    /// Blocks of order ≥ 1: first frame → order.
    large_blocks: BTreeMap<u64, u8>,
    /// Pages covered by `large_blocks`. Order-0 pages are not counted on the hot path (a
    /// counter there would add a store-to-load dependency to every call); they are counted by
    /// population count when asked.
    large_block_pages: u64,
}

/// `1 << order` as a page count. `order` ≤ [`MAX_ORDER`] < 64 is checked by every caller.
#[inline(always)]
const fn block_pages(order: u8) -> u64 {
    1u64 << (order & 63)
}

impl PreservationTracker {
    /// A tracker for a machine with these RAM ranges, refusing preservation inside `scratch`.
    /// Both lists must be canonical: sorted, page aligned, non-empty and disjoint.
    pub fn new(ram: &[PhysRange], scratch: &[PhysRange]) -> Result<Self, TrackerError> {
        if !is_canonical_range_list(ram) || !is_canonical_range_list(scratch) {
            return Err(TrackerError::InvalidLayout);
        }
        let mut allowed = Vec::new();
        for range in ram {
            let mut start = range.start().frame().as_u64();
            let end = range.end().frame().as_u64();
            for hole in scratch {
                let hole_start = hole.start().frame().as_u64();
                let hole_end = hole.end().frame().as_u64();
                if hole_end <= start || hole_start >= end {
                    continue;
                }
                if hole_start > start {
                    allowed.push((start, hole_start));
                }
                start = start.max(hole_end);
            }
            if start < end {
                allowed.push((start, end));
            }
        }
        let highest_frame = ram.last().map_or(0, |r| r.end().frame().as_u64());
        let directory_len = usize::try_from(highest_frame.div_ceil(LEAF_PAGES))
            .map_err(|_| TrackerError::OutOfMemory)?;
        Ok(PreservationTracker {
            ram: ram.to_vec(),
            scratch: scratch.to_vec(),
            allowed,
            hint_start: 0,
            hint_len: 0,
            directory: vec![NO_LEAF; directory_len],
            leaves: Vec::new(),
            cached_leaf_number: u64::MAX,
            cached_leaf: 0,
            large_blocks: BTreeMap::new(),
            large_block_pages: 0,
        })
    }

    /// The RAM ranges the tracker was built for.
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram
    }

    /// The scratch ranges nothing may be preserved in.
    pub fn scratch(&self) -> &[PhysRange] {
        &self.scratch
    }

    /// Number of preserved pages, all orders together. Costs a pass over the bitmap leaves
    /// (32 KiB of bitmap per 1 GiB of RAM the tracker has touched).
    pub fn page_count(&self) -> u64 {
        self.leaves
            .iter()
            .flat_map(|leaf| leaf.iter())
            .fold(0u64, |sum, word| {
                sum.wrapping_add(u64::from(word.count_ones()))
            })
    }

    /// Number of preserved blocks (an order-k block counts once). Same cost as
    /// [`PreservationTracker::page_count`].
    pub fn block_count(&self) -> u64 {
        let order0_pages = self.page_count().wrapping_sub(self.large_block_pages);
        order0_pages.wrapping_add(self.large_blocks.len() as u64)
    }

    /// Preserves one page (an order-0 block).
    #[inline]
    pub fn preserve_page(&mut self, addr: PhysAddr) -> Result<(), TrackerError> {
        self.preserve_block(addr, 0)
    }

    /// Preserves the naturally aligned block of `2^order` pages at `addr`.
    #[inline]
    pub fn preserve_block(&mut self, addr: PhysAddr, order: u8) -> Result<(), TrackerError> {
        if order == 0 && addr.is_page_aligned() {
            let frame = addr.as_u64() >> PAGE_SHIFT;
            // The hot path: one compare for the allowed range, one for the cached leaf.
            if frame.wrapping_sub(self.hint_start) < self.hint_len {
                let (word, bit) = self.word_mut(frame)?;
                if *word & bit == 0 {
                    *word |= bit;
                    return Ok(());
                }
            }
        }
        self.preserve_block_slow(addr, order)
    }

    #[cold]
    #[inline(never)]
    fn preserve_block_slow(&mut self, addr: PhysAddr, order: u8) -> Result<(), TrackerError> {
        let (frame, pages) = self.check_block(addr, order)?;
        self.check_allowed(frame, pages)?;
        if let Some(conflict) = self.first_set(frame, pages) {
            return Err(self.conflict_error(addr, order, conflict));
        }
        self.set_range(frame, pages, true)?;
        if order > 0 {
            self.large_blocks.insert(frame, order);
            self.large_block_pages = self.large_block_pages.wrapping_add(pages);
        }
        Ok(())
    }

    /// Releases the block preserved at `addr` with exactly this order.
    pub fn unpreserve_block(&mut self, addr: PhysAddr, order: u8) -> Result<(), TrackerError> {
        let (frame, pages) = self.check_block(addr, order)?;
        self.check_is_block(addr, frame, order)?;
        self.set_range(frame, pages, false)?;
        if order > 0 {
            self.large_blocks.remove(&frame);
            self.large_block_pages = self.large_block_pages.wrapping_sub(pages);
        }
        Ok(())
    }

    /// Releases one page preserved as an order-0 block.
    pub fn unpreserve_page(&mut self, addr: PhysAddr) -> Result<(), TrackerError> {
        self.unpreserve_block(addr, 0)
    }

    /// Preserves every page of a page-aligned range, as order-0 pages. All or nothing.
    pub fn preserve_range(&mut self, range: PhysRange) -> Result<(), TrackerError> {
        let (frame, pages) = Self::check_range(range)?;
        if pages == 0 {
            return Ok(());
        }
        self.check_allowed(frame, pages)?;
        if let Some(conflict) = self.first_set(frame, pages) {
            return Err(self.conflict_error(page_addr(conflict), 0, conflict));
        }
        self.set_range(frame, pages, true)
    }

    /// Releases every page of a range preserved page by page (order 0). All or nothing.
    pub fn unpreserve_range(&mut self, range: PhysRange) -> Result<(), TrackerError> {
        let (frame, pages) = Self::check_range(range)?;
        if pages == 0 {
            return Ok(());
        }
        let end = frame.wrapping_add(pages);
        if let Some(missing) = self.first_clear(frame, pages) {
            return Err(TrackerError::NotPreserved {
                addr: page_addr(missing),
            });
        }
        if let Some((start, order)) = self.large_block_within(frame, end) {
            return Err(TrackerError::OrderMismatch {
                addr: page_addr(start.max(frame)),
                order: 0,
                preserved_start: page_addr(start),
                preserved_order: order,
            });
        }
        self.set_range(frame, pages, false)
    }

    /// Preserves a discontiguous array of pages as order-0 blocks. All or nothing: on the first
    /// refusal every page this call preserved is released again.
    pub fn preserve_pages(&mut self, pages: &[PhysAddr]) -> Result<(), (usize, TrackerError)> {
        for (index, &page) in pages.iter().enumerate() {
            if let Err(error) = self.preserve_page(page) {
                for &done in pages.get(..index).unwrap_or(&[]) {
                    // Cannot fail: this call preserved it just now.
                    let _ = self.unpreserve_page(done);
                }
                return Err((index, error));
            }
        }
        Ok(())
    }

    /// Releases a discontiguous array of order-0 pages. All or nothing.
    pub fn unpreserve_pages(&mut self, pages: &[PhysAddr]) -> Result<(), (usize, TrackerError)> {
        for (index, &page) in pages.iter().enumerate() {
            if let Err(error) = self.unpreserve_page(page) {
                for &done in pages.get(..index).unwrap_or(&[]) {
                    let _ = self.preserve_page(done);
                }
                return Err((index, error));
            }
        }
        Ok(())
    }

    /// Whether the page containing `addr` is preserved, as part of a block of any order.
    pub fn is_preserved(&self, addr: PhysAddr) -> bool {
        let frame = addr.as_u64() >> PAGE_SHIFT;
        self.test(frame)
    }

    /// The preserved block containing `addr`, as (start, order), if any.
    pub fn block_containing(&self, addr: PhysAddr) -> Option<(PhysAddr, u8)> {
        let frame = addr.as_u64() >> PAGE_SHIFT;
        if !self.test(frame) {
            return None;
        }
        match self.large_block_covering(frame) {
            Some((start, order)) => Some((page_addr(start), order)),
            None => Some((page_addr(frame), 0)),
        }
    }

    /// Every preservation as maximal runs of adjacent same-order blocks, in address order.
    pub fn runs(&self) -> Vec<FrameRun> {
        let mut runs = Vec::new();
        let mut merger = RunMerger { runs: &mut runs };
        let mut scanner = RunScanner::default();
        let mut previous_leaf: Option<u64> = None;
        for (leaf_number, &leaf_index) in (0u64..).zip(self.directory.iter()) {
            let Some(leaf) = self.leaves.get(leaf_index as usize) else {
                continue;
            };
            // A run cannot continue across a leaf that is not allocated.
            if previous_leaf.map(|p| p.wrapping_add(1)) != Some(leaf_number) {
                let end = previous_leaf.map_or(0, |p| p.wrapping_add(1) << LEAF_SHIFT);
                scanner.close(end, |start, end| {
                    self.split_occupied(start, end, &mut merger)
                });
            }
            previous_leaf = Some(leaf_number);
            let leaf_base = leaf_number << LEAF_SHIFT;
            for (word_base, &word) in (leaf_base..).step_by(64).zip(leaf.iter()) {
                scanner.word(word_base, word, |start, end| {
                    self.split_occupied(start, end, &mut merger)
                });
            }
        }
        let end = previous_leaf.map_or(0, |p| p.wrapping_add(1) << LEAF_SHIFT);
        scanner.close(end, |start, end| {
            self.split_occupied(start, end, &mut merger)
        });
        runs
    }

    /// Splits the occupied frames `[start, end)` into order-0 stretches and large blocks.
    fn split_occupied(&self, start: u64, end: u64, merger: &mut RunMerger<'_>) {
        let mut position = start;
        if !self.large_blocks.is_empty() {
            for (&block_start, &order) in self.large_blocks.range(start..end) {
                if block_start > position {
                    merger.push(FrameRun::new(
                        position,
                        block_start.wrapping_sub(position),
                        0,
                    ));
                }
                merger.push(FrameRun::new(block_start, 1, order));
                position = block_start.wrapping_add(block_pages(order));
            }
        }
        if position < end {
            merger.push(FrameRun::new(position, end.wrapping_sub(position), 0));
        }
    }

    fn check_block(&self, addr: PhysAddr, order: u8) -> Result<(u64, u64), TrackerError> {
        if order > MAX_ORDER {
            return Err(TrackerError::OrderTooLarge { order });
        }
        if !addr.is_aligned_to_order(order) {
            return Err(TrackerError::Unaligned { addr, order });
        }
        let frame = addr.as_u64() >> PAGE_SHIFT;
        let pages = block_pages(order);
        match frame.checked_add(pages) {
            Some(end) if end <= PFN_LIMIT => Ok((frame, pages)),
            _ => Err(TrackerError::OutsideRam { addr }),
        }
    }

    fn check_range(range: PhysRange) -> Result<(u64, u64), TrackerError> {
        if !range.is_page_aligned() {
            return Err(TrackerError::InvalidLength {
                addr: range.start(),
                len_bytes: range.len_bytes(),
            });
        }
        Ok((range.start().frame().as_u64(), range.page_count()))
    }

    /// Checks that `[frame, frame + pages)` lies in one allowed range, and caches that range.
    fn check_allowed(&mut self, frame: u64, pages: u64) -> Result<(), TrackerError> {
        let end = frame.wrapping_add(pages);
        let index = self
            .allowed
            .partition_point(|&(_, allowed_end)| allowed_end <= frame);
        match self.allowed.get(index) {
            Some(&(start, allowed_end)) if start <= frame && end <= allowed_end => {
                self.hint_start = start;
                self.hint_len = allowed_end.wrapping_sub(start);
                Ok(())
            }
            // The block starts in this allowed range and runs past its end.
            Some(&(start, allowed_end)) if start <= frame => {
                Err(self.not_allowed_error(allowed_end))
            }
            Some(&(start, _)) if start < end => Err(self.not_allowed_error(frame)),
            _ => Err(self.not_allowed_error(frame)),
        }
    }

    /// Says why `frame` is not allowed: scratch, or not RAM.
    fn not_allowed_error(&self, frame: u64) -> TrackerError {
        let addr = page_addr(frame);
        if self.scratch.iter().any(|s| s.contains(addr)) {
            TrackerError::InScratch { addr }
        } else {
            TrackerError::OutsideRam { addr }
        }
    }

    fn conflict_error(&self, addr: PhysAddr, order: u8, conflict_frame: u64) -> TrackerError {
        let (existing, existing_order) = match self.large_block_covering(conflict_frame) {
            Some((start, existing_order)) => (start, existing_order),
            None => (conflict_frame, 0),
        };
        if page_addr(existing) == addr && existing_order == order {
            TrackerError::AlreadyPreserved { addr, order }
        } else {
            TrackerError::Overlaps {
                addr,
                order,
                existing: page_addr(existing),
                existing_order,
            }
        }
    }

    /// Checks that a block of exactly `order` starts at `frame`.
    fn check_is_block(&self, addr: PhysAddr, frame: u64, order: u8) -> Result<(), TrackerError> {
        if !self.test(frame) {
            return Err(TrackerError::NotPreserved { addr });
        }
        let covering = self.large_block_covering(frame);
        let matches = match covering {
            Some((start, found)) => start == frame && found == order,
            None => order == 0,
        };
        if matches {
            return Ok(());
        }
        let (preserved_start, preserved_order) = covering.unwrap_or((frame, 0));
        Err(TrackerError::OrderMismatch {
            addr,
            order,
            preserved_start: page_addr(preserved_start),
            preserved_order,
        })
    }

    /// The large block (order ≥ 1) covering `frame`, if any.
    fn large_block_covering(&self, frame: u64) -> Option<(u64, u8)> {
        let (&start, &order) = self.large_blocks.range(..=frame).next_back()?;
        (frame < start.wrapping_add(block_pages(order))).then_some((start, order))
    }

    /// A large block intersecting `[start, end)`, if any.
    fn large_block_within(&self, start: u64, end: u64) -> Option<(u64, u8)> {
        if let Some(found) = self.large_block_covering(start) {
            return Some(found);
        }
        self.large_blocks
            .range(start..end)
            .next()
            .map(|(&s, &o)| (s, o))
    }

    /// The word holding `frame`'s bit, allocating its leaf, and the bit's mask.
    #[inline(always)]
    fn word_mut(&mut self, frame: u64) -> Result<(&mut u64, u64), TrackerError> {
        let leaf_number = frame >> LEAF_SHIFT;
        if leaf_number != self.cached_leaf_number {
            self.cached_leaf = self.leaf_for(leaf_number)?;
            self.cached_leaf_number = leaf_number;
        }
        let word_index = ((frame >> 6) as usize) & (LEAF_WORDS - 1);
        let word = self
            .leaves
            .get_mut(self.cached_leaf)
            .and_then(|leaf| leaf.get_mut(word_index))
            .ok_or(TrackerError::OutOfMemory)?;
        Ok((word, 1u64 << (frame & 63)))
    }

    /// The leaf index for a leaf number, allocating an empty leaf on first use.
    #[inline(never)]
    fn leaf_for(&mut self, leaf_number: u64) -> Result<usize, TrackerError> {
        let slot = usize::try_from(leaf_number)
            .ok()
            .and_then(|n| self.directory.get_mut(n))
            .ok_or(TrackerError::OutsideRam {
                addr: page_addr(leaf_number << LEAF_SHIFT),
            })?;
        if *slot == NO_LEAF {
            let index = u32::try_from(self.leaves.len()).map_err(|_| TrackerError::OutOfMemory)?;
            self.leaves
                .try_reserve(1)
                .map_err(|_| TrackerError::OutOfMemory)?;
            self.leaves.push([0; LEAF_WORDS]);
            *slot = index;
        }
        Ok(*slot as usize)
    }

    fn leaf(&self, leaf_number: u64) -> Option<&Leaf> {
        let index = *self.directory.get(usize::try_from(leaf_number).ok()?)?;
        self.leaves.get(index as usize)
    }

    fn test(&self, frame: u64) -> bool {
        let word_index = ((frame >> 6) as usize) & (LEAF_WORDS - 1);
        self.leaf(frame >> LEAF_SHIFT)
            .and_then(|leaf| leaf.get(word_index))
            .is_some_and(|word| word & (1u64 << (frame & 63)) != 0)
    }

    /// Calls `visit(leaf, first_word, mask_per_word...)` over the words covering the range.
    /// Returns the first frame in `[frame, frame + pages)` whose bit equals `want`.
    fn first_with(&self, frame: u64, pages: u64, want: bool) -> Option<u64> {
        let end = frame.wrapping_add(pages);
        let mut position = frame;
        while position < end {
            let leaf_number = position >> LEAF_SHIFT;
            let leaf_end = (leaf_number.wrapping_add(1) << LEAF_SHIFT).min(end);
            match self.leaf(leaf_number) {
                None => {
                    if !want {
                        return Some(position);
                    }
                    position = leaf_end;
                }
                Some(leaf) => {
                    while position < leaf_end {
                        let word_index = ((position >> 6) as usize) & (LEAF_WORDS - 1);
                        let word = leaf.get(word_index).copied().unwrap_or(0);
                        let word = if want { word } else { !word };
                        let low = (position & 63) as u32;
                        let span = leaf_end
                            .wrapping_sub(position)
                            .min(64u64.wrapping_sub(u64::from(low)));
                        let mask = span_mask(low, span);
                        let hits = word & mask;
                        if hits != 0 {
                            return Some(
                                (position & !63).wrapping_add(u64::from(hits.trailing_zeros())),
                            );
                        }
                        position = position.wrapping_add(span);
                    }
                }
            }
        }
        None
    }

    fn first_set(&self, frame: u64, pages: u64) -> Option<u64> {
        self.first_with(frame, pages, true)
    }

    fn first_clear(&self, frame: u64, pages: u64) -> Option<u64> {
        self.first_with(frame, pages, false)
    }

    /// Sets or clears every bit of `[frame, frame + pages)`.
    fn set_range(&mut self, frame: u64, pages: u64, value: bool) -> Result<(), TrackerError> {
        let end = frame.wrapping_add(pages);
        let mut position = frame;
        while position < end {
            let leaf_number = position >> LEAF_SHIFT;
            let leaf_end = (leaf_number.wrapping_add(1) << LEAF_SHIFT).min(end);
            let index = self.leaf_for(leaf_number)?;
            let leaf = self
                .leaves
                .get_mut(index)
                .ok_or(TrackerError::OutOfMemory)?;
            while position < leaf_end {
                let word_index = ((position >> 6) as usize) & (LEAF_WORDS - 1);
                let low = (position & 63) as u32;
                let span = leaf_end
                    .wrapping_sub(position)
                    .min(64u64.wrapping_sub(u64::from(low)));
                let mask = span_mask(low, span);
                if let Some(word) = leaf.get_mut(word_index) {
                    if value {
                        *word |= mask;
                    } else {
                        *word &= !mask;
                    }
                }
                position = position.wrapping_add(span);
            }
        }
        Ok(())
    }
}

/// Bits `[low, low + span)` of a word; `low + span` ≤ 64 by construction.
#[inline(always)]
fn span_mask(low: u32, span: u64) -> u64 {
    let ones = if span >= 64 {
        u64::MAX
    } else {
        (1u64 << span).wrapping_sub(1)
    };
    ones << (low & 63)
}

#[inline(always)]
fn page_addr(frame: u64) -> PhysAddr {
    PageFrame::new(frame)
        .addr()
        .unwrap_or(PhysAddr::new(u64::MAX))
}

/// Appends runs, merging a run into the previous one when both have the same order and touch.
struct RunMerger<'a> {
    runs: &'a mut Vec<FrameRun>,
}

impl RunMerger<'_> {
    fn push(&mut self, run: FrameRun) {
        if let Some(last) = self.runs.last_mut()
            && last.order == run.order
            && last.end_frame() == run.first_frame
        {
            last.block_count = last.block_count.wrapping_add(run.block_count);
            return;
        }
        self.runs.push(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    fn tracker() -> PreservationTracker {
        // RAM [1 MiB, 1 GiB) and [2 GiB, 3 GiB); scratch [16 MiB, 32 MiB).
        PreservationTracker::new(
            &[range(MIB, 1023 * MIB), range(2048 * MIB, 1024 * MIB)],
            &[range(16 * MIB, 16 * MIB)],
        )
        .unwrap()
    }

    fn a(x: u64) -> PhysAddr {
        PhysAddr::new(x)
    }

    #[test]
    fn page_preservation_and_query() {
        let mut t = tracker();
        t.preserve_page(a(64 * MIB)).unwrap();
        assert!(t.is_preserved(a(64 * MIB + 100)));
        assert!(!t.is_preserved(a(64 * MIB + 4096)));
        assert_eq!(
            t.preserve_page(a(64 * MIB)),
            Err(TrackerError::AlreadyPreserved {
                addr: a(64 * MIB),
                order: 0
            })
        );
        assert_eq!(t.page_count(), 1);
        t.unpreserve_page(a(64 * MIB)).unwrap();
        assert!(!t.is_preserved(a(64 * MIB)));
        assert_eq!(
            t.unpreserve_page(a(64 * MIB)),
            Err(TrackerError::NotPreserved { addr: a(64 * MIB) })
        );
        assert_eq!(t.page_count(), 0);
    }

    #[test]
    fn refuses_scratch_holes_and_misalignment() {
        let mut t = tracker();
        assert_eq!(
            t.preserve_page(a(20 * MIB)),
            Err(TrackerError::InScratch { addr: a(20 * MIB) })
        );
        assert_eq!(
            t.preserve_page(a(0)),
            Err(TrackerError::OutsideRam { addr: a(0) })
        );
        assert_eq!(
            t.preserve_page(a(1536 * MIB)),
            Err(TrackerError::OutsideRam {
                addr: a(1536 * MIB)
            })
        );
        assert_eq!(
            t.preserve_page(a(64 * MIB + 1)),
            Err(TrackerError::Unaligned {
                addr: a(64 * MIB + 1),
                order: 0
            })
        );
        assert_eq!(
            t.preserve_block(a(64 * MIB + 4096), 1),
            Err(TrackerError::Unaligned {
                addr: a(64 * MIB + 4096),
                order: 1
            })
        );
        assert_eq!(
            t.preserve_block(a(0), 31),
            Err(TrackerError::OrderTooLarge { order: 31 })
        );
        // Ranges that straddle the start of scratch, and the end of RAM.
        assert_eq!(
            t.preserve_range(range(15 * MIB, 2 * MIB)),
            Err(TrackerError::InScratch { addr: a(16 * MIB) })
        );
        assert_eq!(
            t.preserve_range(range(1023 * MIB, 2 * MIB)),
            Err(TrackerError::OutsideRam {
                addr: a(1024 * MIB)
            })
        );
        assert_eq!(t.page_count(), 0);
    }

    #[test]
    fn overlaps_between_orders_are_refused() {
        let mut t = tracker();
        t.preserve_block(a(64 * MIB), 9).unwrap(); // 2 MiB
        assert_eq!(
            t.preserve_page(a(64 * MIB + 8192)),
            Err(TrackerError::Overlaps {
                addr: a(64 * MIB + 8192),
                order: 0,
                existing: a(64 * MIB),
                existing_order: 9
            })
        );
        assert_eq!(
            t.preserve_block(a(64 * MIB), 9),
            Err(TrackerError::AlreadyPreserved {
                addr: a(64 * MIB),
                order: 9
            })
        );
        t.preserve_page(a(68 * MIB)).unwrap();
        assert_eq!(
            t.preserve_block(a(68 * MIB), 2),
            Err(TrackerError::Overlaps {
                addr: a(68 * MIB),
                order: 2,
                existing: a(68 * MIB),
                existing_order: 0
            })
        );
        // Releasing with the wrong order names the real block.
        assert_eq!(
            t.unpreserve_page(a(64 * MIB + 8192)),
            Err(TrackerError::OrderMismatch {
                addr: a(64 * MIB + 8192),
                order: 0,
                preserved_start: a(64 * MIB),
                preserved_order: 9
            })
        );
        assert_eq!(
            t.unpreserve_block(a(68 * MIB), 1),
            Err(TrackerError::OrderMismatch {
                addr: a(68 * MIB),
                order: 1,
                preserved_start: a(68 * MIB),
                preserved_order: 0
            })
        );
        t.unpreserve_block(a(64 * MIB), 9).unwrap();
        assert_eq!(t.page_count(), 1);
    }

    #[test]
    fn ranges_and_page_arrays_are_all_or_nothing() {
        let mut t = tracker();
        t.preserve_page(a(100 * MIB + 5 * 4096)).unwrap();
        assert!(matches!(
            t.preserve_range(range(100 * MIB, MIB)),
            Err(TrackerError::Overlaps { .. } | TrackerError::AlreadyPreserved { .. })
        ));
        assert_eq!(t.page_count(), 1);
        let pages = [
            a(200 * MIB),
            a(300 * MIB),
            a(100 * MIB + 5 * 4096),
            a(400 * MIB),
        ];
        assert_eq!(t.preserve_pages(&pages).unwrap_err().0, 2);
        assert!(!t.is_preserved(a(200 * MIB)));
        assert!(!t.is_preserved(a(300 * MIB)));
        assert_eq!(t.page_count(), 1);
        // Spanning several leaves (128 MiB each).
        t.preserve_range(range(120 * MIB, 300 * MIB)).unwrap();
        assert_eq!(t.page_count(), 1 + 300 * 256);
        assert!(t.unpreserve_range(range(119 * MIB, 2 * MIB)).is_err());
        t.unpreserve_range(range(120 * MIB, 300 * MIB)).unwrap();
        assert_eq!(t.page_count(), 1);
        assert!(matches!(
            t.preserve_range(range(1000 * MIB, 100 * MIB)),
            Err(TrackerError::OutsideRam { .. })
        ));
    }

    #[test]
    fn runs_split_orders_and_merge_neighbours() {
        let mut t = tracker();
        // Order-0 pages around and between two adjacent order-9 blocks.
        for p in 0..10u64 {
            t.preserve_page(a(60 * MIB + p * 4096)).unwrap();
        }
        t.preserve_block(a(62 * MIB), 9).unwrap();
        t.preserve_block(a(64 * MIB), 9).unwrap();
        t.preserve_page(a(66 * MIB)).unwrap();
        // Across a leaf boundary (128 MiB).
        t.preserve_range(range(128 * MIB - 8192, 16384)).unwrap();
        let runs = t.runs();
        let frame = |x: u64| x >> 12;
        assert_eq!(
            runs,
            vec![
                FrameRun::new(frame(60 * MIB), 10, 0),
                FrameRun::new(frame(62 * MIB), 2, 9),
                FrameRun::new(frame(66 * MIB), 1, 0),
                FrameRun::new(frame(128 * MIB - 8192), 4, 0),
            ]
        );
        assert_eq!(
            t.block_containing(a(64 * MIB + 4096)),
            Some((a(64 * MIB), 9))
        );
        assert_eq!(t.block_containing(a(66 * MIB)), Some((a(66 * MIB), 0)));
        assert_eq!(t.block_containing(a(67 * MIB)), None);
    }

    #[test]
    fn runs_end_at_absent_leaves_and_the_last_leaf() {
        let mut t = tracker();
        // A run filling a whole leaf, then a gap leaf, then a run touching the end of RAM.
        t.preserve_range(range(256 * MIB, 128 * MIB)).unwrap();
        t.preserve_range(range(3072 * MIB - 8192, 8192)).unwrap();
        let runs = t.runs();
        assert_eq!(
            runs,
            vec![
                FrameRun::new((256 * MIB) >> 12, 32768, 0),
                FrameRun::new((3072 * MIB - 8192) >> 12, 2, 0),
            ]
        );
    }

    #[test]
    fn rejects_non_canonical_layouts() {
        assert_eq!(
            PreservationTracker::new(&[range(MIB, MIB), range(MIB, MIB)], &[]).err(),
            Some(TrackerError::InvalidLayout)
        );
    }
}
