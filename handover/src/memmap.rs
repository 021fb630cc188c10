//! The preserved-memory map: its wire format, encoder, strict validator and walk.
//!
//! The map lists every preserved block as a stream of items in increasing address order. Each
//! item starts with a LEB128 header `(value << 2) | kind`:
//!
//! * `RUN` (0): `value` is the gap in blocks from the end of the previous item (rounded up to the
//!   current order's alignment); then LEB128 `count - 1`. `count` adjacent blocks of the current
//!   order.
//! * `BITMAP` (1): gap as for `RUN`; then LEB128 `bits - 2`; then `ceil(bits / 8)` bytes, LSB
//!   first. Bit `i` set means block `start + i` is preserved. The first and last bits are set and
//!   the padding bits are clear.
//! * `ORDER` (2): `value` is the new current order (initially 0). Changes nothing else.
//! * kind 3 is reserved.
//!
//! One canonical encoding exists for each set of blocks, and the validator enforces it: runs are
//! maximal; same-order runs separated by at most [`CLUSTER_GAP_BLOCKS`] form a cluster; a
//! cluster is one `BITMAP` exactly when that is strictly smaller than its `RUN` items. This keeps
//! dense regions near one bit per page, contiguous regions at a few bytes per run, and sparse
//! pages at about three bytes each. `docs/FORMAT.md` gives the full rules.
//!
//! Gaps are measured from the previous end rounded up to the current order's alignment, so every
//! representable block is aligned and no two items can overlap: overlap is not expressible.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, PFN_LIMIT, PhysAddr, PhysRange, RangeList};

/// The largest block order the map (and the tracker) accepts: 2^30 pages, 4 TiB.
pub const MAX_ORDER: u8 = 30;
/// Same-order runs at most this many blocks apart belong to one cluster.
pub const CLUSTER_GAP_BLOCKS: u64 = 32;
/// The format version of the map stream this crate writes.
pub const MAP_VERSION: u32 = 1;

const KIND_RUN: u64 = 0;
const KIND_BITMAP: u64 = 1;
const KIND_ORDER: u64 = 2;
const KIND_MASK: u64 = 3;
const KIND_SHIFT: u32 = 2;
/// A bitmap never spans more than 2^40 blocks (the whole frame space at order 0).
const MAX_BITMAP_BITS: u64 = PFN_LIMIT;

/// A run of `block_count` adjacent blocks of `2^order` pages starting at frame `first_frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRun {
    /// The first page frame of the first block.
    pub first_frame: u64,
    /// How many blocks.
    pub block_count: u64,
    /// log2 of the pages per block.
    pub order: u8,
}

impl FrameRun {
    /// A run. Callers keep `first_frame + (block_count << order)` within [`PFN_LIMIT`].
    pub const fn new(first_frame: u64, block_count: u64, order: u8) -> FrameRun {
        FrameRun {
            first_frame,
            block_count,
            order,
        }
    }

    /// Pages covered.
    pub const fn page_count(self) -> u64 {
        self.block_count.wrapping_shl(self.order as u32)
    }

    /// One past the last frame.
    pub const fn end_frame(self) -> u64 {
        self.first_frame.wrapping_add(self.page_count())
    }

    /// The physical address of the first page.
    pub const fn start(self) -> PhysAddr {
        PhysAddr::new(self.first_frame.wrapping_shl(PAGE_SHIFT))
    }

    /// The physical range covered. Walks only report runs below [`PFN_LIMIT`].
    pub fn range(self) -> PhysRange {
        PhysRange::new(self.start(), self.page_count().wrapping_shl(PAGE_SHIFT)).unwrap_or_default()
    }
}

/// What is wrong in a map stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapErrorKind {
    /// The stream ends inside an item.
    Truncated,
    /// A LEB128 number is longer than 10 bytes, overflows 64 bits, or is not minimal.
    BadVarint,
    /// The reserved item kind 3.
    ReservedKind,
    /// An order above [`MAX_ORDER`].
    OrderTooLarge,
    /// An `ORDER` item that does not change the order, or is not followed by a block item.
    RedundantOrder,
    /// An address computation overflowed or passed the 52-bit physical limit.
    AddressOverflow,
    /// Two same-order runs touch: they must be one run.
    RunsNotMerged,
    /// A bitmap whose first or last bit is clear, or whose padding is not zero.
    BitmapEdges,
    /// A gap inside a bitmap, or between a bitmap and a neighbour, breaks the cluster rule.
    ClusterBoundary,
    /// The cluster is encoded in the larger of the two forms.
    NotSmallestForm,
    /// A bitmap longer than the limit.
    BitmapTooLong,
    /// A preserved range is not inside one RAM range.
    OutsideRam,
    /// A preserved range overlaps a scratch region.
    InScratch,
    /// A preserved range overlaps the handover image itself.
    OverlapsImage,
}

impl MapErrorKind {
    /// A short description.
    pub const fn describe(self) -> &'static str {
        match self {
            MapErrorKind::Truncated => "stream ends inside an item",
            MapErrorKind::BadVarint => "malformed or non-minimal LEB128 number",
            MapErrorKind::ReservedKind => "reserved item kind",
            MapErrorKind::OrderTooLarge => "order above the maximum",
            MapErrorKind::RedundantOrder => "ORDER item that changes nothing",
            MapErrorKind::AddressOverflow => "address beyond the 52-bit physical limit",
            MapErrorKind::RunsNotMerged => "adjacent same-order runs not merged",
            MapErrorKind::BitmapEdges => "bitmap edge bit clear or padding set",
            MapErrorKind::ClusterBoundary => "gap breaks the cluster rule",
            MapErrorKind::NotSmallestForm => "cluster not in its smallest form",
            MapErrorKind::BitmapTooLong => "bitmap too long",
            MapErrorKind::OutsideRam => "preserved range outside RAM",
            MapErrorKind::InScratch => "preserved range overlaps scratch",
            MapErrorKind::OverlapsImage => "preserved range overlaps the handover image",
        }
    }
}

/// A map stream rejection: what, where (byte offset in the stream) and the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapError {
    /// What is wrong.
    pub kind: MapErrorKind,
    /// Byte offset of the item (or byte) at fault, from the start of the stream.
    pub offset: usize,
    /// The offending value (a frame number, order, gap or length, depending on `kind`).
    pub value: u64,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory map byte {}: {} (value {:#x})",
            self.offset,
            self.kind.describe(),
            self.value
        )
    }
}

const fn err(kind: MapErrorKind, offset: usize, value: u64) -> MapError {
    MapError {
        kind,
        offset,
        value,
    }
}

/// Totals of a validated map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    /// Runs the walk reports (runs inside bitmaps count one each).
    pub run_count: u64,
    /// Blocks preserved, all orders.
    pub block_count: u64,
    /// Pages preserved, all orders.
    pub page_count: u64,
}

/// The physical layout a map is checked against.
#[derive(Clone, Copy)]
pub struct MapBounds<'a> {
    /// RAM: canonical list (sorted, disjoint, page aligned).
    pub ram: &'a dyn RangeList,
    /// Scratch: canonical list.
    pub scratch: &'a dyn RangeList,
    /// Where the handover image lies.
    pub image: PhysRange,
}

// --- LEB128 -----------------------------------------------------------------------------------

/// Bytes in the minimal LEB128 encoding of `value` (1 to 10).
#[inline(always)]
pub(crate) const fn varint_len(value: u64) -> u64 {
    let bits = 64u32.wrapping_sub((value | 1).leading_zeros());
    (bits as u64).div_ceil(7)
}

#[cfg(feature = "alloc")]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a minimal LEB128 number at `*pos`, advancing it.
#[inline(always)]
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, MapErrorKind> {
    let Some(&first) = bytes.get(*pos) else {
        return Err(MapErrorKind::Truncated);
    };
    if first < 0x80 {
        *pos = pos.wrapping_add(1);
        return Ok(u64::from(first));
    }
    read_varint_slow(bytes, pos)
}

#[inline(never)]
fn read_varint_slow(bytes: &[u8], pos: &mut usize) -> Result<u64, MapErrorKind> {
    let mut value = 0u64;
    for index in 0..10u32 {
        let Some(&byte) = bytes.get(pos.wrapping_add(index as usize)) else {
            return Err(MapErrorKind::Truncated);
        };
        let payload = u64::from(byte & 0x7f);
        if index == 9 && byte > 1 {
            return Err(MapErrorKind::BadVarint);
        }
        value |= payload << 7u32.wrapping_mul(index);
        if byte & 0x80 == 0 {
            if index > 0 && byte == 0 {
                return Err(MapErrorKind::BadVarint);
            }
            *pos = pos.wrapping_add(index as usize).wrapping_add(1);
            return Ok(value);
        }
    }
    Err(MapErrorKind::BadVarint)
}

// --- Items ------------------------------------------------------------------------------------

/// One decoded item. Bitmap bytes are borrowed from the stream.
enum Item<'a> {
    Run {
        gap: u64,
        count: u64,
    },
    Bitmap {
        gap: u64,
        bits: u64,
        bytes: &'a [u8],
    },
    Order(u8),
}

/// Decodes the item at `*pos`, advancing it. Structural checks only.
#[inline(always)]
fn read_item<'a>(stream: &'a [u8], pos: &mut usize) -> Result<Item<'a>, MapError> {
    let at = *pos;
    let header = read_varint(stream, pos).map_err(|k| err(k, at, 0))?;
    let value = header >> KIND_SHIFT;
    match header & KIND_MASK {
        KIND_RUN => {
            let count_at = *pos;
            let count_minus_one = read_varint(stream, pos).map_err(|k| err(k, count_at, 0))?;
            let count = count_minus_one.checked_add(1).ok_or(err(
                MapErrorKind::AddressOverflow,
                count_at,
                count_minus_one,
            ))?;
            Ok(Item::Run { gap: value, count })
        }
        KIND_BITMAP => {
            let bits_at = *pos;
            let bits_minus_two = read_varint(stream, pos).map_err(|k| err(k, bits_at, 0))?;
            let bits = bits_minus_two
                .checked_add(2)
                .filter(|&b| b <= MAX_BITMAP_BITS)
                .ok_or(err(MapErrorKind::BitmapTooLong, bits_at, bits_minus_two))?;
            let len = usize::try_from(bits.div_ceil(8))
                .map_err(|_| err(MapErrorKind::BitmapTooLong, bits_at, bits))?;
            let bytes_at = *pos;
            let end =
                bytes_at
                    .checked_add(len)
                    .ok_or(err(MapErrorKind::Truncated, bytes_at, bits))?;
            let bytes =
                stream
                    .get(bytes_at..end)
                    .ok_or(err(MapErrorKind::Truncated, bytes_at, bits))?;
            *pos = end;
            Ok(Item::Bitmap {
                gap: value,
                bits,
                bytes,
            })
        }
        KIND_ORDER => {
            if value > u64::from(MAX_ORDER) {
                return Err(err(MapErrorKind::OrderTooLarge, at, value));
            }
            Ok(Item::Order(value as u8))
        }
        _ => Err(err(MapErrorKind::ReservedKind, at, header)),
    }
}

/// `align_up(cursor, 2^order) + (gap << order)`, checked against the frame limit.
#[inline(always)]
fn item_start(cursor: u64, gap: u64, order: u8) -> Option<u64> {
    let mask = (1u64 << order).wrapping_sub(1);
    let base = cursor.checked_add(mask)? & !mask;
    let offset = gap.checked_mul(1u64 << order)?;
    base.checked_add(offset).filter(|&start| start < PFN_LIMIT)
}

/// `start + (count << order)`, checked against the frame limit.
#[inline(always)]
fn item_end(start: u64, count: u64, order: u8) -> Option<u64> {
    let pages = count.checked_mul(1u64 << order)?;
    start.checked_add(pages).filter(|&end| end <= PFN_LIMIT)
}

/// Reads little-endian word `index` of a bitmap, zero-padded past its end.
#[inline(always)]
fn bitmap_word(bytes: &[u8], index: usize) -> u64 {
    let start = index.wrapping_mul(8);
    match bytes.get(start..start.wrapping_add(8)) {
        Some(chunk) => {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            u64::from_le_bytes(word)
        }
        None => {
            let mut word = [0u8; 8];
            let tail = bytes.get(start..).unwrap_or(&[]);
            for (dst, src) in word.iter_mut().zip(tail) {
                *dst = *src;
            }
            u64::from_le_bytes(word)
        }
    }
}

/// Calls `visit(offset_in_blocks, length_in_blocks)` for every maximal run of set bits.
#[inline(always)]
fn for_each_bit_run(
    bytes: &[u8],
    bits: u64,
    mut visit: impl FnMut(u64, u64) -> Result<(), MapError>,
) -> Result<(), MapError> {
    let words = bytes.len().div_ceil(8);
    let mut open: Option<u64> = None;
    for (index, base) in (0..words).zip((0u64..).step_by(64)) {
        let word = bitmap_word(bytes, index);
        if (word == 0 && open.is_none()) || (word == u64::MAX && open.is_some()) {
            continue;
        }
        let mut consumed = 0u32;
        loop {
            let above = if consumed >= 64 {
                0
            } else {
                u64::MAX << consumed
            };
            match open {
                Some(start) => {
                    let zeros = !word & above;
                    if zeros == 0 {
                        break;
                    }
                    consumed = zeros.trailing_zeros();
                    let end = base.wrapping_add(u64::from(consumed));
                    open = None;
                    visit(start, end.wrapping_sub(start))?;
                }
                None => {
                    let ones = word & above;
                    if ones == 0 {
                        break;
                    }
                    consumed = ones.trailing_zeros();
                    open = Some(base.wrapping_add(u64::from(consumed)));
                }
            }
        }
    }
    if let Some(start) = open {
        visit(start, bits.wrapping_sub(start))?;
    }
    Ok(())
}

// --- Validation -------------------------------------------------------------------------------

/// Checks each reported range against RAM, scratch and the image. Ranges arrive in increasing
/// address order, so the RAM and scratch cursors only move forward, and the current RAM range
/// and next scratch range are cached as frame numbers for the common case.
struct PlacementCheck<'a> {
    ram: &'a dyn RangeList,
    scratch: &'a dyn RangeList,
    ram_index: usize,
    scratch_index: usize,
    ram_start: u64,
    ram_end: u64,
    /// The first scratch range that ends after the last checked run (`u64::MAX`: none left).
    scratch_start: u64,
    scratch_end: u64,
    image_start: u64,
    image_end: u64,
}

/// A range as frame numbers, the end rounded up.
fn frames(range: PhysRange) -> (u64, u64) {
    (
        range.start().frame().as_u64(),
        range.end().as_u64().div_ceil(PAGE_SIZE),
    )
}

impl<'a> PlacementCheck<'a> {
    fn new(bounds: &MapBounds<'a>) -> Self {
        let (image_start, image_end) = frames(bounds.image);
        let mut check = PlacementCheck {
            ram: bounds.ram,
            scratch: bounds.scratch,
            ram_index: 0,
            scratch_index: 0,
            ram_start: 0,
            ram_end: 0,
            scratch_start: u64::MAX,
            scratch_end: u64::MAX,
            image_start,
            image_end,
        };
        check.load_scratch();
        check
    }

    fn load_scratch(&mut self) {
        (self.scratch_start, self.scratch_end) = self
            .scratch
            .range_at(self.scratch_index)
            .map_or((u64::MAX, u64::MAX), frames);
    }

    #[inline(always)]
    fn check(&mut self, start: u64, end: u64, offset: usize) -> Result<(), MapError> {
        if start < self.ram_start || end > self.ram_end {
            self.seek_ram(start, end, offset)?;
        }
        if start < self.image_end && self.image_start < end {
            return Err(err(MapErrorKind::OverlapsImage, offset, start));
        }
        while self.scratch_end <= start {
            self.scratch_index = self.scratch_index.wrapping_add(1);
            self.load_scratch();
        }
        if self.scratch_start < end {
            return Err(err(MapErrorKind::InScratch, offset, start));
        }
        Ok(())
    }

    #[inline(never)]
    fn seek_ram(&mut self, start: u64, end: u64, offset: usize) -> Result<(), MapError> {
        while let Some(range) = self.ram.range_at(self.ram_index) {
            let (range_start, range_end) = frames(range);
            if range_end <= start {
                self.ram_index = self.ram_index.wrapping_add(1);
                continue;
            }
            if range_start <= start && end <= range_end {
                self.ram_start = range_start;
                self.ram_end = range_end;
                return Ok(());
            }
            break;
        }
        Err(err(MapErrorKind::OutsideRam, offset, start))
    }
}

/// The list-form cost of the cluster being read, to check the smallest-form rule at its end.
struct ClusterCost {
    first_start: u64,
    first_gap: u64,
    end: u64,
    list_bytes: u64,
    runs: u64,
}

/// Validates a map stream: structure, canonical form, and placement of every preserved range
/// inside RAM and outside scratch and the image. Returns the totals the walk will report.
pub fn validate(stream: &[u8], bounds: &MapBounds<'_>) -> Result<MapCounts, MapError> {
    let mut counts = MapCounts::default();
    let mut placement = PlacementCheck::new(bounds);
    let mut order = 0u8;
    let mut cursor = 0u64;
    // Whether the previous item was a block item of the current order, and which kind.
    let mut previous_kind: Option<u64> = None;
    let mut cluster: Option<ClusterCost> = None;
    let mut pos = 0usize;
    let mut last_order_at: Option<usize> = None;

    while pos < stream.len() {
        let at = pos;
        let item = read_item(stream, &mut pos)?;
        let item_bytes = pos.wrapping_sub(at) as u64;
        match item {
            Item::Order(new_order) => {
                if new_order == order || last_order_at.is_some() {
                    return Err(err(MapErrorKind::RedundantOrder, at, u64::from(new_order)));
                }
                close_cluster(cluster.take(), order, at)?;
                order = new_order;
                previous_kind = None;
                last_order_at = Some(at);
            }
            Item::Run { gap, count } => {
                last_order_at = None;
                let start = item_start(cursor, gap, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    gap,
                ))?;
                let end = item_end(start, count, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    count,
                ))?;
                match previous_kind {
                    Some(kind) if gap <= CLUSTER_GAP_BLOCKS => {
                        if gap == 0 {
                            return Err(err(MapErrorKind::RunsNotMerged, at, start));
                        }
                        if kind == KIND_BITMAP {
                            return Err(err(MapErrorKind::ClusterBoundary, at, gap));
                        }
                        if let Some(c) = cluster.as_mut() {
                            c.end = end;
                            c.list_bytes = c.list_bytes.saturating_add(item_bytes);
                            c.runs = c.runs.wrapping_add(1);
                        }
                    }
                    _ => {
                        close_cluster(cluster.take(), order, at)?;
                        cluster = Some(ClusterCost {
                            first_start: start,
                            first_gap: gap,
                            end,
                            list_bytes: item_bytes,
                            runs: 1,
                        });
                    }
                }
                placement.check(start, end, at)?;
                counts.run_count = counts.run_count.wrapping_add(1);
                counts.block_count = counts.block_count.wrapping_add(count);
                counts.page_count = counts.page_count.wrapping_add(end.wrapping_sub(start));
                cursor = end;
                previous_kind = Some(KIND_RUN);
            }
            Item::Bitmap { gap, bits, bytes } => {
                last_order_at = None;
                if previous_kind.is_some() && gap <= CLUSTER_GAP_BLOCKS {
                    return Err(err(MapErrorKind::ClusterBoundary, at, gap));
                }
                close_cluster(cluster.take(), order, at)?;
                let start = item_start(cursor, gap, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    gap,
                ))?;
                let end = item_end(start, bits, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    bits,
                ))?;
                check_bitmap_edges(bytes, bits, at)?;
                // The list form: the first run pays this item's gap, later runs their own.
                let mut list_bytes = 0u64;
                let mut previous_end = 0u64;
                let mut first = true;
                let mut runs_counted = 0u64;
                let mut blocks_counted = 0u64;
                for_each_bit_run(bytes, bits, |offset, length| {
                    let gap_here = if first {
                        gap
                    } else {
                        offset.wrapping_sub(previous_end)
                    };
                    if !first && gap_here > CLUSTER_GAP_BLOCKS {
                        return Err(err(MapErrorKind::ClusterBoundary, at, gap_here));
                    }
                    first = false;
                    list_bytes = list_bytes
                        .saturating_add(varint_len(gap_here << KIND_SHIFT))
                        .saturating_add(varint_len(length.wrapping_sub(1)));
                    previous_end = offset.wrapping_add(length);
                    let run_start = start.wrapping_add(offset << order);
                    let run_end = start.wrapping_add(previous_end << order);
                    placement.check(run_start, run_end, at)?;
                    runs_counted = runs_counted.wrapping_add(1);
                    blocks_counted = blocks_counted.wrapping_add(length);
                    Ok(())
                })?;
                if item_bytes >= list_bytes {
                    return Err(err(MapErrorKind::NotSmallestForm, at, item_bytes));
                }
                counts.run_count = counts.run_count.wrapping_add(runs_counted);
                counts.block_count = counts.block_count.wrapping_add(blocks_counted);
                counts.page_count = counts.page_count.wrapping_add(blocks_counted << order);
                cursor = end;
                previous_kind = Some(KIND_BITMAP);
            }
        }
    }
    if let Some(at) = last_order_at {
        return Err(err(MapErrorKind::RedundantOrder, at, u64::from(order)));
    }
    close_cluster(cluster, order, stream.len())?;
    Ok(counts)
}

/// Checks a closed list cluster: a bitmap of the same blocks must not be strictly smaller.
fn close_cluster(cluster: Option<ClusterCost>, order: u8, at: usize) -> Result<(), MapError> {
    let Some(c) = cluster else {
        return Ok(());
    };
    if c.runs < 2 {
        return Ok(());
    }
    let bits = c.end.wrapping_sub(c.first_start) >> order;
    if bitmap_cost(c.first_gap, bits) < c.list_bytes {
        return Err(err(MapErrorKind::NotSmallestForm, at, c.list_bytes));
    }
    Ok(())
}

/// Bytes of a `BITMAP` item with this gap and span.
#[inline]
fn bitmap_cost(gap: u64, bits: u64) -> u64 {
    varint_len((gap << KIND_SHIFT) | KIND_BITMAP)
        .saturating_add(varint_len(bits.wrapping_sub(2)))
        .saturating_add(bits.div_ceil(8))
}

/// Bytes of a `RUN` item.
#[cfg(feature = "alloc")]
#[inline]
fn run_cost(gap: u64, count: u64) -> u64 {
    varint_len(gap << KIND_SHIFT).saturating_add(varint_len(count.wrapping_sub(1)))
}

fn check_bitmap_edges(bytes: &[u8], bits: u64, at: usize) -> Result<(), MapError> {
    let first_set = bytes.first().is_some_and(|b| b & 1 != 0);
    let last_bit = bits.wrapping_sub(1);
    let last_byte = bytes.get((last_bit / 8) as usize).copied().unwrap_or(0);
    let last_set = last_byte & (1u8 << (last_bit % 8)) != 0;
    let padding = last_byte & !(u8::MAX >> 7u32.wrapping_sub((last_bit % 8) as u32));
    if !first_set || !last_set || padding != 0 {
        return Err(err(MapErrorKind::BitmapEdges, at, bits));
    }
    Ok(())
}

// --- Walk -------------------------------------------------------------------------------------

/// Reports every preserved run of a stream that [`validate`] accepted, in address order. On a
/// stream that was not validated it stops at the first malformed item and returns its error;
/// it never panics either way.
#[inline]
pub fn walk(stream: &[u8], mut visit: impl FnMut(FrameRun)) -> Result<(), MapError> {
    let mut order = 0u8;
    let mut cursor = 0u64;
    let mut pos = 0usize;
    while pos < stream.len() {
        let at = pos;
        match read_item(stream, &mut pos)? {
            Item::Order(new_order) => order = new_order,
            Item::Run { gap, count } => {
                let start = item_start(cursor, gap, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    gap,
                ))?;
                cursor = item_end(start, count, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    count,
                ))?;
                visit(FrameRun::new(start, count, order));
            }
            Item::Bitmap { gap, bits, bytes } => {
                let start = item_start(cursor, gap, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    gap,
                ))?;
                cursor = item_end(start, bits, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    bits,
                ))?;
                for_each_bit_run(bytes, bits, |offset, length| {
                    visit(FrameRun::new(
                        start.wrapping_add(offset << order),
                        length,
                        order,
                    ));
                    Ok(())
                })?;
            }
        }
    }
    Ok(())
}

// --- Encoding ---------------------------------------------------------------------------------

/// Why a list of runs cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Run `index` is empty, misaligned, above [`MAX_ORDER`] or past the frame limit.
    InvalidRun {
        /// Index into the input.
        index: usize,
    },
    /// Run `index` starts before the previous run ends.
    NotSorted {
        /// Index into the input.
        index: usize,
    },
    /// Run `index` touches the previous run and has the same order: they must be merged.
    NotMerged {
        /// Index into the input.
        index: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::InvalidRun { index } => write!(f, "run {index} is invalid"),
            EncodeError::NotSorted { index } => {
                write!(f, "run {index} overlaps or precedes its predecessor")
            }
            EncodeError::NotMerged { index } => {
                write!(f, "run {index} must be merged into its predecessor")
            }
        }
    }
}

/// Encodes sorted, disjoint, merged runs into the canonical stream.
#[cfg(feature = "alloc")]
pub fn encode(runs: &[FrameRun]) -> Result<Vec<u8>, EncodeError> {
    check_runs(runs)?;
    let mut out = Vec::new();
    let mut order = 0u8;
    let mut cursor = 0u64;
    let mut index = 0usize;
    while let Some(&first) = runs.get(index) {
        if first.order != order {
            order = first.order;
            put_varint(&mut out, (u64::from(order) << KIND_SHIFT) | KIND_ORDER);
        }
        let first_gap = gap_blocks(cursor, first.first_frame, order);
        // Extend the cluster while the next run has the same order and a small gap.
        let mut list_bytes = run_cost(first_gap, first.block_count);
        let mut next = index.wrapping_add(1);
        let mut previous = first;
        while let Some(&run) = runs.get(next) {
            if run.order != order {
                break;
            }
            let gap = (run.first_frame.wrapping_sub(previous.end_frame())) >> order;
            if gap > CLUSTER_GAP_BLOCKS {
                break;
            }
            list_bytes = list_bytes.saturating_add(run_cost(gap, run.block_count));
            previous = run;
            next = next.wrapping_add(1);
        }
        let cluster = runs.get(index..next).unwrap_or(&[]);
        let bits = (previous.end_frame().wrapping_sub(first.first_frame)) >> order;
        if cluster.len() >= 2 && bitmap_cost(first_gap, bits) < list_bytes {
            put_bitmap(&mut out, first_gap, bits, cluster, order);
        } else {
            let mut end = cursor;
            for run in cluster {
                let gap = gap_blocks(end, run.first_frame, order);
                put_varint(&mut out, (gap << KIND_SHIFT) | KIND_RUN);
                put_varint(&mut out, run.block_count.wrapping_sub(1));
                end = run.end_frame();
            }
        }
        cursor = previous.end_frame();
        index = next;
    }
    Ok(out)
}

/// Gap in blocks from `cursor` (rounded up to the order's alignment) to `start`.
#[cfg(feature = "alloc")]
fn gap_blocks(cursor: u64, start: u64, order: u8) -> u64 {
    let mask = (1u64 << order).wrapping_sub(1);
    let base = cursor.wrapping_add(mask) & !mask;
    start.wrapping_sub(base) >> order
}

#[cfg(feature = "alloc")]
fn put_bitmap(out: &mut Vec<u8>, gap: u64, bits: u64, cluster: &[FrameRun], order: u8) {
    put_varint(out, (gap << KIND_SHIFT) | KIND_BITMAP);
    put_varint(out, bits.wrapping_sub(2));
    let origin = cluster.first().map_or(0, |r| r.first_frame);
    let bytes_at = out.len();
    let len = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    out.resize(bytes_at.wrapping_add(len), 0);
    let Some(bitmap) = out.get_mut(bytes_at..) else {
        return;
    };
    for run in cluster {
        let first = (run.first_frame.wrapping_sub(origin)) >> order;
        set_bits(bitmap, first, run.block_count);
    }
}

/// Sets bits `[first, first + count)` of a little-endian bitmap.
#[cfg(feature = "alloc")]
fn set_bits(bitmap: &mut [u8], first: u64, count: u64) {
    let mut bit = first;
    let end = first.wrapping_add(count);
    while bit < end {
        let byte_index = (bit / 8) as usize;
        if bit.is_multiple_of(8) && end.wrapping_sub(bit) >= 8 {
            let whole = (end.wrapping_sub(bit) / 8) as usize;
            if let Some(bytes) = bitmap.get_mut(byte_index..byte_index.wrapping_add(whole)) {
                bytes.fill(0xff);
            }
            bit = bit.wrapping_add((whole as u64).wrapping_mul(8));
            continue;
        }
        if let Some(byte) = bitmap.get_mut(byte_index) {
            *byte |= 1 << (bit % 8);
        }
        bit = bit.wrapping_add(1);
    }
}

#[cfg(feature = "alloc")]
fn check_runs(runs: &[FrameRun]) -> Result<(), EncodeError> {
    let mut previous: Option<FrameRun> = None;
    for (index, &run) in runs.iter().enumerate() {
        let valid = run.order <= MAX_ORDER
            && run.block_count > 0
            && run.first_frame & (1u64 << run.order).wrapping_sub(1) == 0
            && item_end(run.first_frame, run.block_count, run.order).is_some();
        if !valid {
            return Err(EncodeError::InvalidRun { index });
        }
        if let Some(p) = previous {
            if run.first_frame < p.end_frame() {
                return Err(EncodeError::NotSorted { index });
            }
            if run.first_frame == p.end_frame() && run.order == p.order {
                return Err(EncodeError::NotMerged { index });
            }
        }
        previous = Some(run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    const GIB: u64 = 1 << 30;

    fn ram_all() -> Vec<PhysRange> {
        vec![PhysRange::new(PhysAddr::new(0x1000), 1 << 45).unwrap()]
    }

    static EMPTY: &[PhysRange] = &[];

    fn ram_ref<'a>(ram: &'a &'a [PhysRange]) -> &'a dyn RangeList {
        ram
    }

    fn bounds<'a>(ram: &'a &'a [PhysRange]) -> MapBounds<'a> {
        MapBounds {
            ram: ram_ref(ram),
            scratch: &EMPTY,
            image: PhysRange::new(PhysAddr::new(1 << 46), 4096).unwrap(),
        }
    }

    fn roundtrip(runs: &[FrameRun]) -> Vec<u8> {
        let stream = encode(runs).unwrap();
        let ram = ram_all();
        let ram = ram.as_slice();
        let counts = validate(&stream, &bounds(&ram)).unwrap();
        let mut seen = Vec::new();
        walk(&stream, |r| seen.push(r)).unwrap();
        assert_eq!(seen, runs);
        assert_eq!(counts.run_count, runs.len() as u64);
        assert_eq!(
            counts.block_count,
            runs.iter().map(|r| r.block_count).sum::<u64>()
        );
        assert_eq!(
            counts.page_count,
            runs.iter().map(|r| r.page_count()).sum::<u64>()
        );
        stream
    }

    #[test]
    fn varints_are_minimal() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len() as u64, varint_len(v));
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Ok(v));
            assert_eq!(pos, out.len());
        }
        assert_eq!(
            read_varint(&[0x80, 0x00], &mut 0),
            Err(MapErrorKind::BadVarint)
        );
        assert_eq!(read_varint(&[0x80], &mut 0), Err(MapErrorKind::Truncated));
        assert_eq!(
            read_varint(&[0xff; 10], &mut 0),
            Err(MapErrorKind::BadVarint)
        );
        assert_eq!(
            read_varint(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                &mut 0
            ),
            Err(MapErrorKind::BadVarint)
        );
    }

    #[test]
    fn empty_map() {
        assert!(roundtrip(&[]).is_empty());
    }

    #[test]
    fn contiguous_gigabyte_is_a_few_bytes() {
        let first = (GIB + 0x1234_5000) >> 12;
        let stream = roundtrip(&[FrameRun::new(first, 262_144, 0)]);
        assert!(stream.len() <= 8, "{} bytes", stream.len());
    }

    #[test]
    fn dense_region_becomes_a_bitmap() {
        let runs: Vec<FrameRun> = (0..1000u64)
            .map(|i| FrameRun::new(0x10000 + i * 2, 1, 0))
            .collect();
        let stream = roundtrip(&runs);
        // 1999 bits → 250 bytes + headers.
        assert!(stream.len() < 260, "{} bytes", stream.len());
    }

    #[test]
    fn sparse_pages_stay_runs() {
        let runs: Vec<FrameRun> = (0..1000u64)
            .map(|i| FrameRun::new(0x10000 + i * 200, 1, 0))
            .collect();
        let stream = roundtrip(&runs);
        // Three bytes a page: two of header (gap 199), one of count; the first gap is larger.
        assert_eq!(stream.len(), 3001);
    }

    #[test]
    fn mixed_orders() {
        let runs = vec![
            FrameRun::new(0x100, 3, 0),
            FrameRun::new(0x104, 2, 2),
            FrameRun::new(0x10c, 1, 0),
            FrameRun::new(0x200, 1, 9),
            FrameRun::new(0x400, 5, 0),
            FrameRun::new(0x406, 1, 1),
        ];
        roundtrip(&runs);
    }

    #[test]
    fn encoder_rejects_bad_input() {
        assert_eq!(
            encode(&[FrameRun::new(1, 1, 1)]),
            Err(EncodeError::InvalidRun { index: 0 })
        );
        assert_eq!(
            encode(&[FrameRun::new(4, 0, 0)]),
            Err(EncodeError::InvalidRun { index: 0 })
        );
        assert_eq!(
            encode(&[FrameRun::new(4, 2, 0), FrameRun::new(5, 1, 0)]),
            Err(EncodeError::NotSorted { index: 1 })
        );
        assert_eq!(
            encode(&[FrameRun::new(4, 2, 0), FrameRun::new(6, 1, 0)]),
            Err(EncodeError::NotMerged { index: 1 })
        );
    }

    fn validate_bytes(stream: &[u8]) -> Result<MapCounts, MapError> {
        let ram = ram_all();
        let ram = ram.as_slice();
        validate(stream, &bounds(&ram))
    }

    #[test]
    fn validator_rejects_non_canonical_forms() {
        // Two touching runs: RUN gap 16 count 1, RUN gap 0 count 1.
        assert_eq!(
            validate_bytes(&[16 << 2, 0, 0, 0]).unwrap_err().kind,
            MapErrorKind::RunsNotMerged
        );
        // ORDER 0 at the start (redundant), ORDER at the end.
        assert_eq!(
            validate_bytes(&[2, (16 << 2), 0]).unwrap_err().kind,
            MapErrorKind::RedundantOrder
        );
        assert_eq!(
            validate_bytes(&[16 << 2, 0, (1 << 2) | 2])
                .unwrap_err()
                .kind,
            MapErrorKind::RedundantOrder
        );
        // Reserved kind.
        assert_eq!(
            validate_bytes(&[3]).unwrap_err().kind,
            MapErrorKind::ReservedKind
        );
        // A bitmap whose last bit is clear.
        assert_eq!(
            validate_bytes(&[(16 << 2) | 1, 6, 0b0101_0101])
                .unwrap_err()
                .kind,
            MapErrorKind::BitmapEdges
        );
        // A bitmap that would be smaller as runs: bits 0 and 9 set.
        assert_eq!(
            validate_bytes(&[(16 << 2) | 1, 8, 0b1, 0b10])
                .unwrap_err()
                .kind,
            MapErrorKind::NotSmallestForm
        );
        // Runs that would be smaller as a bitmap: 8 alternating pages.
        let mut list = vec![16 << 2, 0];
        for _ in 0..7 {
            list.extend_from_slice(&[1 << 2, 0]);
        }
        assert_eq!(
            validate_bytes(&list).unwrap_err().kind,
            MapErrorKind::NotSmallestForm
        );
        // Truncated bitmap.
        assert_eq!(
            validate_bytes(&[(16 << 2) | 1, 100, 0xff])
                .unwrap_err()
                .kind,
            MapErrorKind::Truncated
        );
    }

    #[test]
    fn validator_checks_placement() {
        let ram = vec![PhysRange::new(PhysAddr::new(0x100000), 0x100000).unwrap()];
        let scratch = vec![PhysRange::new(PhysAddr::new(0x180000), 0x10000).unwrap()];
        let image = PhysRange::new(PhysAddr::new(0x1c0000), 0x1000).unwrap();
        let (ram, scratch) = (ram.as_slice(), scratch.as_slice());
        let b = MapBounds {
            ram: &ram,
            scratch: &scratch,
            image,
        };
        let at = |frame: u64, count: u64| encode(&[FrameRun::new(frame, count, 0)]).unwrap();
        assert!(validate(&at(0x100, 0x10), &b).is_ok());
        assert_eq!(
            validate(&at(0xff, 2), &b).unwrap_err().kind,
            MapErrorKind::OutsideRam
        );
        assert_eq!(
            validate(&at(0x1ff, 2), &b).unwrap_err().kind,
            MapErrorKind::OutsideRam
        );
        assert_eq!(
            validate(&at(0x17f, 2), &b).unwrap_err().kind,
            MapErrorKind::InScratch
        );
        assert_eq!(
            validate(&at(0x1c0, 1), &b).unwrap_err().kind,
            MapErrorKind::OverlapsImage
        );
        assert!(validate(&at(0x1c1, 1), &b).is_ok());
    }
}
