//! The preserved-memory map: its wire format, encoder, strict validator and walk.
//!
//! The map lists every preserved block (a naturally aligned group of `2^order` pages) as a
//! stream of *items* in increasing address order. Block space of each order is cut into aligned
//! windows of [`WINDOW_BLOCKS`] blocks; an item holds the blocks of one order that fall in one
//! window and are not interleaved with blocks of another order. Each item starts with a LEB128
//! header `(value << 3) | kind`:
//!
//! * `ORDER` (4): `value` is the new current order (initially 0); nothing else changes.
//! * For the block kinds, `value` is the gap in blocks from the end of the previous item
//!   (rounded up to the current order's alignment) to the item's first block `f`. Then a LEB128
//!   count, then a payload; offsets are in blocks from `f`, 16-bit little-endian:
//!   * `LIST` (0), count `n - 1`: `n - 1` offsets, strictly increasing. Blocks `f` and
//!     `f + offset`.
//!   * `BITMAP` (1), count `bits - 1`: `ceil(bits / 8)` bytes, LSB first; bit `i` is block
//!     `f + i`. Bits 0 and `bits - 1` are set, padding bits clear.
//!   * `RUNS` (2), count `r - 1`: the first run's `length - 1`, then `r - 1` pairs
//!     `(offset, length - 1)`. Runs are disjoint, in order, and never touch.
//!   * `FULL` (3), count `c - 1`: `c` whole windows, `f` window aligned. No payload.
//!
//! Canonical form, enforced by the validator: items are maximal (two consecutive items of one
//! order never share a window, two consecutive `FULL`s never touch); a completely preserved
//! window is `FULL`; any other item uses the smallest of `RUNS`, `LIST`, `BITMAP` (ties in that
//! order). Overlap is not expressible: each item starts at or after the previous one's end.
//!
//! The payloads are fixed-width, so validating and walking a window is a branch-free loop over
//! 16-bit words; the canonical-form check costs a few operations per window, not per block.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, PFN_LIMIT, PhysAddr, PhysRange, RangeList};
use crate::bitruns::RunScanner;

/// The largest block order the map (and the tracker) accepts: 2^30 pages, 4 TiB.
pub const MAX_ORDER: u8 = 30;
/// log2 of the window size in blocks.
pub const WINDOW_SHIFT: u32 = 16;
/// Blocks per window.
pub const WINDOW_BLOCKS: u64 = 1 << WINDOW_SHIFT;
/// The format version of the map stream this crate writes.
pub const MAP_VERSION: u32 = 1;

const KIND_LIST: u64 = 0;
const KIND_BITMAP: u64 = 1;
const KIND_RUNS: u64 = 2;
const KIND_FULL: u64 = 3;
const KIND_ORDER: u64 = 4;
const KIND_BITS: u32 = 3;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;

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
    /// A reserved item kind (5 to 7).
    ReservedKind,
    /// An order above [`MAX_ORDER`].
    OrderTooLarge,
    /// An `ORDER` item that does not change the order, or is not followed by a block item.
    RedundantOrder,
    /// An address computation overflowed or passed the 52-bit physical limit.
    AddressOverflow,
    /// Offsets not increasing, runs touching or overlapping, bitmap edge bits clear or padding
    /// set.
    BadPayload,
    /// An item reaching past the end of its window, or a `FULL` item not window aligned.
    OutsideWindow,
    /// Two items that must be one (same order and window, or touching `FULL`s).
    NotMerged,
    /// An item not in its smallest form (or a complete window not encoded `FULL`).
    NotSmallestForm,
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
            MapErrorKind::BadPayload => "offsets, runs or bitmap edges malformed",
            MapErrorKind::OutsideWindow => "item reaches outside its window",
            MapErrorKind::NotMerged => "items that must be one item",
            MapErrorKind::NotSmallestForm => "item not in its smallest form",
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
    /// Byte offset of the item at fault, from the start of the stream.
    pub offset: usize,
    /// The offending value (a frame number, order, gap or count, depending on `kind`).
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
    /// Runs the walk reports.
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
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, MapErrorKind> {
    let mut value = 0u64;
    for index in 0..10u32 {
        let Some(&byte) = bytes.get(pos.wrapping_add(index as usize)) else {
            return Err(MapErrorKind::Truncated);
        };
        if index == 9 && byte > 1 {
            return Err(MapErrorKind::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << 7u32.wrapping_mul(index);
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Bitmap,
    Runs,
    Full,
}

/// One decoded item. Payloads are borrowed from the stream.
enum Item<'a> {
    Order(u8),
    Blocks {
        kind: Kind,
        gap: u64,
        count: u64,
        payload: &'a [u8],
    },
}

/// Decodes the item at `*pos`, advancing it. Structural checks only.
fn read_item<'a>(stream: &'a [u8], pos: &mut usize) -> Result<Item<'a>, MapError> {
    let at = *pos;
    let header = read_varint(stream, pos).map_err(|k| err(k, at, 0))?;
    let value = header >> KIND_BITS;
    let kind = match header & KIND_MASK {
        KIND_LIST => Kind::List,
        KIND_BITMAP => Kind::Bitmap,
        KIND_RUNS => Kind::Runs,
        KIND_FULL => Kind::Full,
        KIND_ORDER => {
            if value > u64::from(MAX_ORDER) {
                return Err(err(MapErrorKind::OrderTooLarge, at, value));
            }
            return Ok(Item::Order(value as u8));
        }
        other => return Err(err(MapErrorKind::ReservedKind, at, other)),
    };
    let count = read_varint(stream, pos).map_err(|k| err(k, at, 0))?;
    // Everything in one item lies in one window, so every count is below the window size
    // (FULL counts windows, bounded by the frame space).
    let limit = if kind == Kind::Full {
        PFN_LIMIT >> WINDOW_SHIFT
    } else {
        WINDOW_BLOCKS
    };
    if count >= limit {
        return Err(err(MapErrorKind::OutsideWindow, at, count));
    }
    let payload_len = match kind {
        Kind::List => count.wrapping_mul(2),
        Kind::Bitmap => (count.wrapping_add(1)).div_ceil(8),
        Kind::Runs => count.wrapping_mul(4).wrapping_add(2),
        Kind::Full => 0,
    } as usize;
    let end = pos
        .checked_add(payload_len)
        .filter(|&e| e <= stream.len())
        .ok_or(err(MapErrorKind::Truncated, at, count))?;
    let payload = stream
        .get(*pos..end)
        .ok_or(err(MapErrorKind::Truncated, at, count))?;
    *pos = end;
    Ok(Item::Blocks {
        kind,
        gap: value,
        count,
        payload,
    })
}

/// The first block's frame: `align_up(cursor, 2^order) + (gap << order)`, checked.
#[inline(always)]
fn item_start(cursor: u64, gap: u64, order: u8) -> Option<u64> {
    let mask = (1u64 << order).wrapping_sub(1);
    let base = cursor.checked_add(mask)? & !mask;
    let offset = gap.checked_mul(1u64 << order)?;
    base.checked_add(offset).filter(|&start| start < PFN_LIMIT)
}

#[inline(always)]
fn u16_at(chunk: &[u8]) -> u64 {
    match chunk {
        [low, high, ..] => u64::from(u16::from_le_bytes([*low, *high])),
        _ => 0,
    }
}

/// Reads little-endian word `index` of a bitmap, zero-padded past its end.
#[inline(always)]
fn bitmap_word(bytes: &[u8], index: usize) -> u64 {
    let start = index.wrapping_mul(8);
    let mut word = [0u8; 8];
    match bytes.get(start..start.wrapping_add(8)) {
        Some(chunk) => word.copy_from_slice(chunk),
        None => {
            for (dst, src) in word.iter_mut().zip(bytes.get(start..).unwrap_or(&[])) {
                *dst = *src;
            }
        }
    }
    u64::from_le_bytes(word)
}

/// Calls `visit(offset, length)` for every maximal run of set bits of a bitmap of `bits` bits.
#[inline(always)]
fn for_each_bit_run(bytes: &[u8], bits: u64, mut visit: impl FnMut(u64, u64)) {
    let mut scanner = RunScanner::default();
    for (index, base) in (0..bytes.len().div_ceil(8)).zip((0u64..).step_by(64)) {
        scanner.word(base, bitmap_word(bytes, index), |start, end| {
            visit(start, end.wrapping_sub(start))
        });
    }
    scanner.close(bits, |start, end| visit(start, end.wrapping_sub(start)));
}

/// What an item holds: blocks, runs and span (in blocks from its first block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    blocks: u64,
    runs: u64,
    span: u64,
}

/// The item's shape, and whether its payload is well formed.
#[inline(always)]
fn shape(kind: Kind, count: u64, payload: &[u8]) -> (Shape, bool) {
    match kind {
        Kind::List => {
            // Branch-free: one compare and one add per offset.
            let mut previous = 0u64;
            let mut bad = false;
            let mut adjacent = 0u64;
            for chunk in payload.chunks_exact(2) {
                let offset = u16_at(chunk);
                bad |= offset <= previous;
                adjacent = adjacent.wrapping_add(u64::from(offset == previous.wrapping_add(1)));
                previous = offset;
            }
            let blocks = count.wrapping_add(1);
            (
                Shape {
                    blocks,
                    runs: blocks.wrapping_sub(adjacent),
                    span: previous.wrapping_add(1),
                },
                !bad,
            )
        }
        Kind::Runs => {
            let first_length = u16_at(payload).wrapping_add(1);
            let mut end = first_length;
            let mut blocks = first_length;
            let mut bad = false;
            for pair in payload.get(2..).unwrap_or(&[]).chunks_exact(4) {
                let offset = u16_at(pair);
                let length = u16_at(pair.get(2..).unwrap_or(&[])).wrapping_add(1);
                bad |= offset <= end;
                end = offset.wrapping_add(length);
                blocks = blocks.wrapping_add(length);
            }
            (
                Shape {
                    blocks,
                    runs: count.wrapping_add(1),
                    span: end,
                },
                !bad,
            )
        }
        Kind::Bitmap => {
            let bits = count.wrapping_add(1);
            let mut blocks = 0u64;
            let mut runs = 0u64;
            let mut carry = 0u64;
            for index in 0..payload.len().div_ceil(8) {
                let word = bitmap_word(payload, index);
                blocks = blocks.wrapping_add(u64::from(word.count_ones()));
                // A run starts at every set bit whose lower neighbour is clear.
                runs = runs.wrapping_add(u64::from((word & !((word << 1) | carry)).count_ones()));
                carry = word >> 63;
            }
            let last = bits.wrapping_sub(1);
            let last_byte = payload.get((last / 8) as usize).copied().unwrap_or(0);
            let edges =
                payload.first().is_some_and(|b| b & 1 != 0) && last_byte & (1u8 << (last % 8)) != 0;
            let padding = last_byte & !(u8::MAX >> 7u32.wrapping_sub((last % 8) as u32)) == 0;
            (
                Shape {
                    blocks,
                    runs,
                    span: bits,
                },
                edges && padding,
            )
        }
        Kind::Full => {
            let span = count.wrapping_add(1) << WINDOW_SHIFT;
            (
                Shape {
                    blocks: span,
                    runs: 1,
                    span,
                },
                true,
            )
        }
    }
}

/// Payload sizes of the three forms of a non-full item, with their counts.
fn costs(shape: Shape) -> [(Kind, u64); 3] {
    let runs = varint_len(shape.runs.wrapping_sub(1))
        .saturating_add(shape.runs.saturating_mul(4).saturating_sub(2));
    let list = varint_len(shape.blocks.wrapping_sub(1))
        .saturating_add(shape.blocks.saturating_mul(2).saturating_sub(2));
    let bitmap = varint_len(shape.span.wrapping_sub(1)).saturating_add(shape.span.div_ceil(8));
    [
        (Kind::Runs, runs),
        (Kind::List, list),
        (Kind::Bitmap, bitmap),
    ]
}

/// The canonical form of a non-full item: the smallest, ties in the order RUNS, LIST, BITMAP.
fn canonical_kind(shape: Shape) -> Kind {
    let mut best = (Kind::Runs, u64::MAX);
    for (kind, cost) in costs(shape) {
        if cost < best.1 {
            best = (kind, cost);
        }
    }
    best.0
}

/// Reports an item's runs as (offset in blocks from its first block, length in blocks).
#[inline(always)]
fn for_each_item_run(kind: Kind, count: u64, payload: &[u8], mut visit: impl FnMut(u64, u64)) {
    match kind {
        Kind::List => {
            visit(0, 1);
            for chunk in payload.chunks_exact(2) {
                visit(u16_at(chunk), 1);
            }
        }
        Kind::Runs => {
            visit(0, u16_at(payload).wrapping_add(1));
            for pair in payload.get(2..).unwrap_or(&[]).chunks_exact(4) {
                visit(
                    u16_at(pair),
                    u16_at(pair.get(2..).unwrap_or(&[])).wrapping_add(1),
                );
            }
        }
        Kind::Bitmap => for_each_bit_run(payload, count.wrapping_add(1), visit),
        Kind::Full => visit(0, count.wrapping_add(1) << WINDOW_SHIFT),
    }
}

// --- Validation -------------------------------------------------------------------------------

/// Checks reported ranges against RAM, scratch and the image. Ranges arrive in increasing
/// address order, so the cursors only move forward; the current RAM range and next scratch
/// range are cached as frame numbers so the common case is a few compares.
struct PlacementCheck<'a> {
    ram: &'a dyn RangeList,
    scratch: &'a dyn RangeList,
    ram_index: usize,
    scratch_index: usize,
    ram_start: u64,
    ram_end: u64,
    /// The first scratch range that ends after the last checked range (`u64::MAX`: none).
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

    /// Whether `[start, end)` lies in the cached RAM range and clear of scratch and the image,
    /// after moving the scratch cursor past `start` (ranges arrive in address order).
    #[inline(always)]
    fn clear(&mut self, start: u64, end: u64) -> bool {
        while self.scratch_end <= start {
            self.scratch_index = self.scratch_index.wrapping_add(1);
            self.load_scratch();
        }
        start >= self.ram_start
            && end <= self.ram_end
            && self.scratch_start >= end
            && (end <= self.image_start || start >= self.image_end)
    }

    /// The precise check of one range, moving the RAM cursor if needed.
    fn check(&mut self, start: u64, end: u64, offset: usize) -> Result<(), MapError> {
        if self.clear(start, end) {
            return Ok(());
        }
        if start < self.ram_start || end > self.ram_end {
            self.seek_ram(start, end, offset)?;
        }
        if start < self.image_end && self.image_start < end {
            return Err(err(MapErrorKind::OverlapsImage, offset, start));
        }
        if self.scratch_start < end {
            return Err(err(MapErrorKind::InScratch, offset, start));
        }
        Ok(())
    }

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

/// Validates a map stream: structure, canonical form, and placement of every preserved range
/// inside RAM and outside scratch and the image. Returns the totals the walk will report.
pub fn validate(stream: &[u8], bounds: &MapBounds<'_>) -> Result<MapCounts, MapError> {
    let mut counts = MapCounts::default();
    let mut placement = PlacementCheck::new(bounds);
    let mut order = 0u8;
    let mut cursor = 0u64;
    // The previous block item of the current order: (window, kind, end frame).
    let mut previous: Option<(u64, Kind, u64)> = None;
    let mut order_pending: Option<usize> = None;
    let mut pos = 0usize;
    while pos < stream.len() {
        let at = pos;
        let (kind, gap, count, payload) = match read_item(stream, &mut pos)? {
            Item::Order(new_order) => {
                if new_order == order || order_pending.is_some() {
                    return Err(err(MapErrorKind::RedundantOrder, at, u64::from(new_order)));
                }
                order = new_order;
                previous = None;
                order_pending = Some(at);
                continue;
            }
            Item::Blocks {
                kind,
                gap,
                count,
                payload,
            } => (kind, gap, count, payload),
        };
        order_pending = None;
        let first =
            item_start(cursor, gap, order).ok_or(err(MapErrorKind::AddressOverflow, at, gap))?;
        let first_block = first >> order;
        let window = first_block >> WINDOW_SHIFT;
        let (shape, well_formed) = shape(kind, count, payload);
        if !well_formed {
            return Err(err(MapErrorKind::BadPayload, at, first));
        }
        let window_offset = first_block & (WINDOW_BLOCKS.wrapping_sub(1));
        let fits = if kind == Kind::Full {
            window_offset == 0
        } else {
            window_offset.wrapping_add(shape.span) <= WINDOW_BLOCKS
        };
        if !fits {
            return Err(err(MapErrorKind::OutsideWindow, at, first));
        }
        let end = shape
            .span
            .checked_mul(1u64 << order)
            .and_then(|pages| first.checked_add(pages))
            .filter(|&e| e <= PFN_LIMIT)
            .ok_or(err(MapErrorKind::AddressOverflow, at, first))?;
        if let Some((previous_window, previous_kind, previous_end)) = previous {
            let touching_full =
                kind == Kind::Full && previous_kind == Kind::Full && previous_end == first;
            if previous_window == window || touching_full {
                return Err(err(MapErrorKind::NotMerged, at, first));
            }
        }
        if kind != Kind::Full && (shape.blocks >= WINDOW_BLOCKS || canonical_kind(shape) != kind) {
            return Err(err(MapErrorKind::NotSmallestForm, at, first));
        }
        if !placement.clear(first, end) {
            let mut result = Ok(());
            for_each_item_run(kind, count, payload, |offset, length| {
                let run_start = first.wrapping_add(offset << order);
                let run_end = run_start.wrapping_add(length << order);
                if result.is_ok() {
                    result = placement.check(run_start, run_end, at);
                }
            });
            result?;
        }
        let reported_runs = if kind == Kind::List {
            shape.blocks
        } else {
            shape.runs
        };
        counts.run_count = counts.run_count.wrapping_add(reported_runs);
        counts.block_count = counts.block_count.wrapping_add(shape.blocks);
        counts.page_count = counts.page_count.wrapping_add(shape.blocks << order);
        previous = Some((window, kind, end));
        cursor = end;
    }
    if let Some(at) = order_pending {
        return Err(err(MapErrorKind::RedundantOrder, at, u64::from(order)));
    }
    Ok(counts)
}

// --- Walk -------------------------------------------------------------------------------------

/// Reports every preserved run of a stream that [`validate`] accepted, in address order.
/// `LIST` items report each block as its own run; a run crossing a window boundary is reported
/// in pieces. On a stream that was not validated it stops at the first malformed item header
/// and returns its error; it never panics either way.
#[inline]
pub fn walk(stream: &[u8], mut visit: impl FnMut(FrameRun)) -> Result<(), MapError> {
    let mut order = 0u8;
    let mut cursor = 0u64;
    let mut pos = 0usize;
    while pos < stream.len() {
        let at = pos;
        match read_item(stream, &mut pos)? {
            Item::Order(new_order) => order = new_order,
            Item::Blocks {
                kind,
                gap,
                count,
                payload,
            } => {
                let first = item_start(cursor, gap, order).ok_or(err(
                    MapErrorKind::AddressOverflow,
                    at,
                    gap,
                ))?;
                let mut last_end = first;
                match kind {
                    Kind::List if order == 0 => {
                        // The hot loop of a sparse map: one load and one call per page.
                        visit(FrameRun::new(first, 1, 0));
                        for chunk in payload.chunks_exact(2) {
                            let frame = first.wrapping_add(u16_at(chunk));
                            visit(FrameRun::new(frame, 1, 0));
                            last_end = frame;
                        }
                        last_end = last_end.wrapping_add(1);
                    }
                    _ => for_each_item_run(kind, count, payload, |offset, length| {
                        let start = first.wrapping_add(offset << order);
                        visit(FrameRun::new(start, length, order));
                        last_end = start.wrapping_add(length << order);
                    }),
                }
                cursor = last_end;
            }
        }
    }
    Ok(())
}

/// Like [`walk`], but merges adjacent runs of the same order first, so each maximal run is
/// reported once (what the tracker had, before `LIST` items and window boundaries split it).
pub fn walk_merged(stream: &[u8], mut visit: impl FnMut(FrameRun)) -> Result<(), MapError> {
    let mut pending: Option<FrameRun> = None;
    walk(stream, |run| match pending.as_mut() {
        Some(p) if p.order == run.order && p.end_frame() == run.first_frame => {
            p.block_count = p.block_count.wrapping_add(run.block_count);
        }
        _ => {
            if let Some(done) = pending.replace(run) {
                visit(done);
            }
        }
    })?;
    if let Some(done) = pending {
        visit(done);
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

/// One item being assembled: runs of one order within one window, as (first block, length).
#[cfg(feature = "alloc")]
struct Pending {
    order: u8,
    window: u64,
    runs: Vec<(u64, u64)>,
}

#[cfg(feature = "alloc")]
struct Encoder {
    counts: MapCounts,
    out: Vec<u8>,
    order: u8,
    cursor: u64,
    /// Consecutive complete windows waiting to become one `FULL` item: (order, first window,
    /// window count).
    full: Option<(u8, u64, u64)>,
    pending: Option<Pending>,
}

#[cfg(feature = "alloc")]
impl Encoder {
    fn set_order(&mut self, order: u8) {
        if order != self.order {
            self.order = order;
            put_varint(&mut self.out, (u64::from(order) << KIND_BITS) | KIND_ORDER);
        }
    }

    fn header(&mut self, first_block: u64, kind: u64, count: u64) {
        let mask = (1u64 << self.order).wrapping_sub(1);
        let base = (self.cursor.wrapping_add(mask) & !mask) >> self.order;
        put_varint(
            &mut self.out,
            (first_block.wrapping_sub(base) << KIND_BITS) | kind,
        );
        put_varint(&mut self.out, count);
    }

    /// Adds a piece of a run that lies within one window.
    fn add(&mut self, order: u8, first_block: u64, length: u64) {
        let window = first_block >> WINDOW_SHIFT;
        if length == WINDOW_BLOCKS {
            self.flush_pending();
            match &mut self.full {
                Some((o, w, c)) if *o == order && w.wrapping_add(*c) == window => {
                    *c = c.wrapping_add(1)
                }
                _ => {
                    self.flush_full();
                    self.full = Some((order, window, 1));
                }
            }
            return;
        }
        self.flush_full();
        match &mut self.pending {
            Some(p) if p.order == order && p.window == window => p.runs.push((first_block, length)),
            _ => {
                self.flush_pending();
                self.pending = Some(Pending {
                    order,
                    window,
                    runs: alloc::vec![(first_block, length)],
                });
            }
        }
    }

    fn tally(&mut self, runs: u64, blocks: u64, order: u8) {
        self.counts.run_count = self.counts.run_count.wrapping_add(runs);
        self.counts.block_count = self.counts.block_count.wrapping_add(blocks);
        self.counts.page_count = self.counts.page_count.wrapping_add(blocks << order);
    }

    fn flush_full(&mut self) {
        if let Some((order, window, windows)) = self.full.take() {
            self.set_order(order);
            let first = window << WINDOW_SHIFT;
            self.header(first, KIND_FULL, windows.wrapping_sub(1));
            let blocks = windows << WINDOW_SHIFT;
            self.tally(1, blocks, order);
            self.cursor = (first.wrapping_add(windows << WINDOW_SHIFT)) << order;
        }
    }

    fn flush_pending(&mut self) {
        let Some(p) = self.pending.take() else { return };
        self.set_order(p.order);
        let first = p.runs.first().map_or(0, |r| r.0);
        let blocks = p.runs.iter().fold(0u64, |sum, r| sum.wrapping_add(r.1));
        let span = p
            .runs
            .last()
            .map_or(0, |r| r.0.wrapping_add(r.1).wrapping_sub(first));
        let shape = Shape {
            blocks,
            runs: p.runs.len() as u64,
            span,
        };
        let kind = canonical_kind(shape);
        let reported = if kind == Kind::List {
            blocks
        } else {
            shape.runs
        };
        self.tally(reported, blocks, p.order);
        match kind {
            Kind::Runs => {
                self.header(first, KIND_RUNS, shape.runs.wrapping_sub(1));
                for (index, &(start, length)) in p.runs.iter().enumerate() {
                    if index > 0 {
                        self.out
                            .extend_from_slice(&(start.wrapping_sub(first) as u16).to_le_bytes());
                    }
                    self.out
                        .extend_from_slice(&(length.wrapping_sub(1) as u16).to_le_bytes());
                }
            }
            Kind::List => {
                self.header(first, KIND_LIST, blocks.wrapping_sub(1));
                for &(start, length) in &p.runs {
                    for block in start..start.wrapping_add(length) {
                        if block != first {
                            self.out.extend_from_slice(
                                &(block.wrapping_sub(first) as u16).to_le_bytes(),
                            );
                        }
                    }
                }
            }
            Kind::Bitmap | Kind::Full => {
                self.header(first, KIND_BITMAP, span.wrapping_sub(1));
                let at = self.out.len();
                self.out
                    .resize(at.wrapping_add(span.div_ceil(8) as usize), 0);
                if let Some(bitmap) = self.out.get_mut(at..) {
                    for &(start, length) in &p.runs {
                        set_bits(bitmap, start.wrapping_sub(first), length);
                    }
                }
            }
        }
        self.cursor = (first.wrapping_add(span)) << p.order;
    }
}

/// Encodes sorted, disjoint, merged runs (as the tracker reports them) into the canonical
/// stream.
#[cfg(feature = "alloc")]
pub fn encode(runs: &[FrameRun]) -> Result<Vec<u8>, EncodeError> {
    encode_counted(runs).map(|(stream, _)| stream)
}

/// [`encode`], also returning the totals [`validate`] will find (runs as the walk reports
/// them).
#[cfg(feature = "alloc")]
pub fn encode_counted(runs: &[FrameRun]) -> Result<(Vec<u8>, MapCounts), EncodeError> {
    check_runs(runs)?;
    let mut encoder = Encoder {
        counts: MapCounts::default(),
        out: Vec::new(),
        order: 0,
        cursor: 0,
        full: None,
        pending: None,
    };
    for run in runs {
        // Split the run at window boundaries of its order.
        let mut block = run.first_frame >> run.order;
        let end = block.wrapping_add(run.block_count);
        while block < end {
            let window_end = ((block >> WINDOW_SHIFT).wrapping_add(1)) << WINDOW_SHIFT;
            let piece_end = window_end.min(end);
            encoder.add(run.order, block, piece_end.wrapping_sub(block));
            block = piece_end;
        }
    }
    encoder.flush_pending();
    encoder.flush_full();
    Ok((encoder.out, encoder.counts))
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
        let end = run
            .block_count
            .checked_mul(1u64 << (run.order & 63))
            .and_then(|pages| run.first_frame.checked_add(pages));
        let valid = run.order <= MAX_ORDER
            && run.block_count > 0
            && run.first_frame & (1u64 << run.order).wrapping_sub(1) == 0
            && end.is_some_and(|e| e <= PFN_LIMIT);
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

    static EMPTY: &[PhysRange] = &[];

    fn ram_all() -> Vec<PhysRange> {
        vec![PhysRange::new(PhysAddr::new(0x1000), 1 << 45).unwrap()]
    }

    fn bounds<'a>(ram: &'a &'a [PhysRange]) -> MapBounds<'a> {
        MapBounds {
            ram,
            scratch: &EMPTY,
            image: PhysRange::new(PhysAddr::new(1 << 46), 4096).unwrap(),
        }
    }

    fn roundtrip(runs: &[FrameRun]) -> Vec<u8> {
        let stream = encode(runs).unwrap();
        let ram = ram_all();
        let ram = ram.as_slice();
        let counts = validate(&stream, &bounds(&ram)).unwrap();
        // LIST items report single blocks and windows split runs: merged, the walk gives back
        // exactly the (merged) input.
        let mut merged = Vec::new();
        walk_merged(&stream, |r| merged.push(r)).unwrap();
        assert_eq!(merged, runs);
        let mut reported = 0u64;
        walk(&stream, |_| reported += 1).unwrap();
        assert_eq!(counts.run_count, reported);
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
    }

    #[test]
    fn empty_map() {
        assert!(roundtrip(&[]).is_empty());
    }

    #[test]
    fn contiguous_gigabyte_is_a_few_bytes() {
        let first = (1u64 << 30) / 4096 + 0x12345;
        let stream = roundtrip(&[FrameRun::new(first, 262_144, 0)]);
        assert!(stream.len() <= 16, "{} bytes", stream.len());
    }

    #[test]
    fn dense_region_becomes_a_bitmap() {
        let runs: Vec<FrameRun> = (0..1000u64)
            .map(|i| FrameRun::new(0x10000 + i * 2, 1, 0))
            .collect();
        let stream = roundtrip(&runs);
        assert!(stream.len() < 260, "{} bytes", stream.len());
    }

    #[test]
    fn sparse_pages_become_a_list() {
        let runs: Vec<FrameRun> = (0..1000u64)
            .map(|i| FrameRun::new(0x20000 + i * 60, 1, 0))
            .collect();
        let stream = roundtrip(&runs);
        assert!(stream.len() <= 2004, "{} bytes", stream.len());
    }

    #[test]
    fn runs_cross_windows_and_orders_interleave() {
        let runs = vec![
            FrameRun::new(0x100, 3, 0),
            FrameRun::new(0x104, 2, 2),
            FrameRun::new(0x10c, 1, 0),
            FrameRun::new(0x200, 1, 9),
            FrameRun::new(0x400, 5, 0),
            FrameRun::new(0x406, 1, 1),
            FrameRun::new(0xfff0, 0x30000, 0),
            FrameRun::new(0x1_0000_0000, 2, 17),
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
        let list = |gap: u64| ((gap << 3) | KIND_LIST) as u8;
        // Two single-block LIST items in the same window: must be one item.
        assert_eq!(
            validate_bytes(&[list(8), 0, list(1), 0]).unwrap_err().kind,
            MapErrorKind::NotMerged
        );
        // ORDER 0 at the start (redundant), ORDER at the end.
        assert_eq!(
            validate_bytes(&[KIND_ORDER as u8, list(8), 0])
                .unwrap_err()
                .kind,
            MapErrorKind::RedundantOrder
        );
        assert_eq!(
            validate_bytes(&[list(8), 0, ((1 << 3) | KIND_ORDER) as u8])
                .unwrap_err()
                .kind,
            MapErrorKind::RedundantOrder
        );
        // Reserved kind.
        assert_eq!(
            validate_bytes(&[5]).unwrap_err().kind,
            MapErrorKind::ReservedKind
        );
        // A LIST whose offsets do not increase.
        assert_eq!(
            validate_bytes(&[list(8), 2, 5, 0, 5, 0]).unwrap_err().kind,
            MapErrorKind::BadPayload
        );
        // Two adjacent blocks as a LIST: RUNS is as small and comes first.
        assert_eq!(
            validate_bytes(&[list(8), 1, 1, 0]).unwrap_err().kind,
            MapErrorKind::NotSmallestForm
        );
        // A bitmap whose last bit is clear.
        let bitmap = ((8u64 << 3) | KIND_BITMAP) as u8;
        assert_eq!(
            validate_bytes(&[bitmap, 7, 0b0101_0101]).unwrap_err().kind,
            MapErrorKind::BadPayload
        );
        // A truncated payload.
        assert_eq!(
            validate_bytes(&[list(8), 100, 1, 0]).unwrap_err().kind,
            MapErrorKind::Truncated
        );
        // A FULL item off a window boundary.
        let full = ((8u64 << 3) | KIND_FULL) as u8;
        assert_eq!(
            validate_bytes(&[full, 0]).unwrap_err().kind,
            MapErrorKind::OutsideWindow
        );
        // A LIST reaching past its window.
        assert_eq!(
            validate_bytes(&[0xf8, 0xff, 0x1f, 1, 0x10, 0])
                .unwrap_err()
                .kind,
            MapErrorKind::OutsideWindow
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
        // A list straddling scratch: only the precise per-run check accepts its parts.
        let around = encode(&[FrameRun::new(0x17e, 1, 0), FrameRun::new(0x191, 1, 0)]).unwrap();
        assert!(validate(&around, &b).is_ok());
    }
}
