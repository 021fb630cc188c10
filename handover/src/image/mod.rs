//! The handover image: one flattened devicetree that carries everything the next kernel needs.
//!
//! This module owns the receiving side: [`Handover::parse`] runs the one validation pass that
//! proves a blob well-formed (header, token stream, string table, nesting, sizes, counts,
//! sorted indexes, and every physical range inside RAM and clear of scratch and of the image
//! itself) and then reads it with fdt-rs. After `parse` succeeds no accessor can fail or panic,
//! and nothing here allocates. The outgoing side is in [`build`].

#[cfg(feature = "alloc")]
pub mod build;
mod fdt_read;
pub mod schema;

use fdt_rs::prelude::*;
use zerocopy::FromBytes;
use zerocopy::byteorder::little_endian::{U32, U64};

use crate::addr::{PAGE_SIZE, PhysRange, RangeList};
use crate::crc32c::Crc32c;
use crate::error::{FormatError, FormatErrorKind as K};
use crate::fdt::{FdtReader, PropertyValue, is_valid_node_name};
use crate::memmap::{self, FrameRun, MAP_VERSION, MapBounds, MapCounts, MapError};
use schema::*;

/// One handler node of `/luo`: the handler's name, its record version and its records.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandlerData<'a> {
    /// The handler's name (its node name), e.g. `memfd`.
    pub name: &'a str,
    /// The version of every record under this node.
    pub version: u32,
    /// The records, concatenated in file-table order.
    pub records: &'a [u8],
}

/// A validated handover image.
#[derive(Clone, Copy, Debug)]
pub struct Handover<'a> {
    blob: &'a [u8],
    format_version: u32,
    generation: u64,
    image: PhysRange,
    ram: &'a [RangeEntry],
    scratch: &'a [RangeEntry],
    map_version: u32,
    map_stream: &'a [u8],
    map_counts: MapCounts,
    luo_version: u32,
    sessions: &'a [SessionEntry],
    files: &'a [FileEntry],
    handlers: [HandlerData<'a>; MAX_HANDLERS],
    handler_count: usize,
}

/// Verifies the CRC-32C of a handover blob (exactly `totalsize` bytes).
///
/// The checksum covers every byte of the blob, with the 4 bytes of the root's `checksum` value
/// (always the first property) counted as zero. [`Handover::parse`] calls this; a kernel that
/// verified the checksum itself, with a hardware CRC say, may call
/// [`Handover::parse_trusting_checksum`] instead.
pub fn verify_checksum(blob: &[u8]) -> Result<(), FormatError> {
    let stored = checksum_field(blob)?;
    let computed = compute_checksum(blob, stored.offset);
    let stored_value = u32_le(stored.bytes);
    // Fuzzing builds skip the comparison so mutated inputs reach the validator; the test
    // `checksum_is_enforced` proves normal builds do compare.
    if cfg!(fuzzing) {
        return Ok(());
    }
    if computed != stored_value {
        return Err(FormatError::new(
            K::ChecksumMismatch { computed },
            names::CHECKSUM,
            stored.offset,
            u64::from(stored_value),
        ));
    }
    Ok(())
}

/// Locates the checksum value: the first property of the root node.
fn checksum_field(blob: &[u8]) -> Result<PropertyValue<'_>, FormatError> {
    let mut reader = FdtReader::new(blob)?;
    reader.begin_node(names::ROOT)?;
    let value = reader.property(names::CHECKSUM)?;
    expect_len(value, 4, names::CHECKSUM)?;
    Ok(value)
}

/// The CRC-32C of `blob` with the 4 bytes at `field_offset` taken as zero.
pub(crate) fn compute_checksum(blob: &[u8], field_offset: usize) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(blob.get(..field_offset).unwrap_or(&[]));
    crc.update_zeros(4);
    crc.update(blob.get(field_offset.saturating_add(4)..).unwrap_or(&[]));
    crc.finish()
}

fn u32_le(bytes: &[u8]) -> u32 {
    U32::read_from_bytes(bytes).map_or(0, |v| v.get())
}

fn u64_le(bytes: &[u8]) -> u64 {
    U64::read_from_bytes(bytes).map_or(0, |v| v.get())
}

fn expect_len(
    value: PropertyValue<'_>,
    len: usize,
    field: &'static str,
) -> Result<(), FormatError> {
    if value.bytes.len() == len {
        Ok(())
    } else {
        Err(FormatError::new(
            K::BadLength,
            field,
            value.offset,
            value.bytes.len() as u64,
        ))
    }
}

/// Reads property `name`, reporting errors against the path `field`.
fn property<'a>(
    reader: &mut FdtReader<'a>,
    name: &'static str,
    field: &'static str,
) -> Result<PropertyValue<'a>, FormatError> {
    reader
        .property(name)
        .map_err(|e| FormatError { field, ..e })
}

fn read_u32(
    reader: &mut FdtReader<'_>,
    name: &'static str,
    field: &'static str,
) -> Result<(u32, usize), FormatError> {
    let value = property(reader, name, field)?;
    expect_len(value, 4, field)?;
    Ok((u32_le(value.bytes), value.offset))
}

fn read_u64(
    reader: &mut FdtReader<'_>,
    name: &'static str,
    field: &'static str,
) -> Result<(u64, usize), FormatError> {
    let value = property(reader, name, field)?;
    expect_len(value, 8, field)?;
    Ok((u64_le(value.bytes), value.offset))
}

fn read_version(
    reader: &mut FdtReader<'_>,
    name: &'static str,
    field: &'static str,
    oldest: u32,
    current: u32,
) -> Result<u32, FormatError> {
    let (version, offset) = read_u32(reader, name, field)?;
    if !version_supported(version, oldest, current) {
        return Err(FormatError::new(
            K::UnsupportedVersion,
            field,
            offset,
            u64::from(version),
        ));
    }
    Ok(version)
}

/// A table property as a slice of fixed-size rows.
fn table<'a, T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned>(
    value: PropertyValue<'a>,
    field: &'static str,
    max_rows: usize,
) -> Result<&'a [T], FormatError> {
    let rows = <[T]>::ref_from_bytes(value.bytes).map_err(|_| {
        FormatError::new(K::BadLength, field, value.offset, value.bytes.len() as u64)
    })?;
    if rows.len() > max_rows {
        return Err(FormatError::new(
            K::LimitExceeded,
            field,
            value.offset,
            rows.len() as u64,
        ));
    }
    Ok(rows)
}

impl RangeList for &[RangeEntry] {
    fn range_count(&self) -> usize {
        self.len()
    }

    fn range_at(&self, index: usize) -> Option<PhysRange> {
        self.get(index)?.range()
    }
}

/// Checks a stored range list is canonical (sorted, page aligned, non-empty, disjoint, not
/// touching) and returns it.
fn range_list<'a>(
    value: PropertyValue<'a>,
    field: &'static str,
) -> Result<&'a [RangeEntry], FormatError> {
    let rows: &[RangeEntry] = table(value, field, MAX_RANGES)?;
    let mut previous_end: Option<u64> = None;
    for (index, row) in rows.iter().enumerate() {
        let at = value.offset.wrapping_add(index.wrapping_mul(16));
        let range = row.range().ok_or(FormatError::new(
            K::BadRangeList,
            field,
            at,
            row.start.get(),
        ))?;
        if range.is_empty() || !range.is_page_aligned() {
            return Err(FormatError::new(
                K::BadRangeList,
                field,
                at,
                row.start.get(),
            ));
        }
        if previous_end.is_some_and(|end| range.start().as_u64() <= end) {
            return Err(FormatError::new(
                K::BadRangeList,
                field,
                at,
                row.start.get(),
            ));
        }
        previous_end = Some(range.end().as_u64());
    }
    Ok(rows)
}

/// Whether `range` lies inside one range of `list`.
fn inside_one(list: &[RangeEntry], range: PhysRange) -> bool {
    let index = list.partition_point(|r| r.range().is_some_and(|r| r.end() <= range.start()));
    list.get(index)
        .and_then(RangeEntry::range)
        .is_some_and(|r| r.contains_range(range))
}

/// Whether `range` overlaps any range of `list`.
fn overlaps_any(list: &[RangeEntry], range: PhysRange) -> bool {
    let index = list.partition_point(|r| r.range().is_some_and(|r| r.end() <= range.start()));
    list.get(index)
        .and_then(RangeEntry::range)
        .is_some_and(|r| r.overlaps(range))
}

/// What the validation pass learned, for the view to cross-check.
struct Validated {
    map_counts: MapCounts,
    handler_count: usize,
}

/// The validation pass. Walks the whole tree in schema order with the strict reader.
fn validate(blob: &[u8]) -> Result<Validated, FormatError> {
    if !blob.as_ptr().cast::<u32>().is_aligned() {
        return Err(FormatError::new(
            K::Misaligned,
            "blob",
            0,
            blob.as_ptr() as u64,
        ));
    }
    let mut r = FdtReader::new(blob)?;
    r.begin_node(names::ROOT)?;
    expect_len(r.property(names::CHECKSUM)?, 4, names::CHECKSUM)?;
    let compatible = r.property(names::COMPATIBLE)?;
    if compatible.bytes.strip_suffix(&[0]) != Some(COMPATIBLE.as_bytes()) {
        return Err(FormatError::new(
            K::Incompatible,
            names::COMPATIBLE,
            compatible.offset,
            compatible.bytes.len() as u64,
        ));
    }
    read_version(
        &mut r,
        names::FORMAT_VERSION,
        names::FORMAT_VERSION,
        FORMAT_OLDEST_READABLE,
        FORMAT_VERSION,
    )?;
    read_u64(&mut r, names::GENERATION, names::GENERATION)?;
    let image_value = r.property(names::IMAGE_RANGE)?;
    expect_len(image_value, 16, names::IMAGE_RANGE)?;
    let image_entry = RangeEntry::read_from_bytes(image_value.bytes)
        .map_err(|_| FormatError::new(K::BadLength, names::IMAGE_RANGE, image_value.offset, 0))?;
    let image_len_expected = (blob.len() as u64)
        .div_ceil(PAGE_SIZE)
        .saturating_mul(PAGE_SIZE);
    let image = image_entry
        .range()
        .filter(|r| r.start().is_page_aligned() && r.len_bytes() == image_len_expected)
        .ok_or(FormatError::new(
            K::BadLength,
            "image-range",
            image_value.offset,
            image_entry.len_bytes.get(),
        ))?;

    r.begin_node(names::RAM)?;
    read_version(
        &mut r,
        names::VERSION,
        "/ram/version",
        RANGES_OLDEST_READABLE,
        RANGES_VERSION,
    )?;
    let ram_value = property(&mut r, names::RANGES, "/ram/ranges")?;
    let ram = range_list(ram_value, "/ram/ranges")?;
    if ram.is_empty() {
        return Err(FormatError::new(
            K::BadRangeList,
            "/ram/ranges",
            ram_value.offset,
            0,
        ));
    }
    r.end_node(names::RAM)?;

    r.begin_node(names::SCRATCH)?;
    read_version(
        &mut r,
        names::VERSION,
        "/scratch/version",
        RANGES_OLDEST_READABLE,
        RANGES_VERSION,
    )?;
    let scratch_value = property(&mut r, names::RANGES, "/scratch/ranges")?;
    let scratch = range_list(scratch_value, "/scratch/ranges")?;
    for (index, row) in scratch.iter().enumerate() {
        if !row.range().is_some_and(|range| inside_one(ram, range)) {
            let at = scratch_value.offset.wrapping_add(index.wrapping_mul(16));
            return Err(FormatError::new(
                K::OutsideRam,
                "/scratch/ranges",
                at,
                row.start.get(),
            ));
        }
    }
    r.end_node(names::SCRATCH)?;

    if !inside_one(ram, image) {
        return Err(FormatError::new(
            K::OutsideRam,
            "image-range",
            image_value.offset,
            image.start().as_u64(),
        ));
    }
    if overlaps_any(scratch, image) {
        return Err(FormatError::new(
            K::Overlap,
            "image-range",
            image_value.offset,
            image.start().as_u64(),
        ));
    }

    r.begin_node(names::MEMORY_MAP)?;
    read_version(
        &mut r,
        names::VERSION,
        "/memory-map/version",
        MAP_OLDEST_READABLE,
        MAP_VERSION,
    )?;
    let (run_count, run_count_at) = read_u64(&mut r, names::RUN_COUNT, "/memory-map/run-count")?;
    let (block_count, block_count_at) =
        read_u64(&mut r, names::BLOCK_COUNT, "/memory-map/block-count")?;
    let (page_count, page_count_at) =
        read_u64(&mut r, names::PAGE_COUNT, "/memory-map/page-count")?;
    let stream = property(&mut r, names::STREAM, "/memory-map/stream")?;
    let bounds = MapBounds {
        ram: &ram,
        scratch: &scratch,
        image,
    };
    let map_counts =
        memmap::validate(stream.bytes, &bounds).map_err(|e| map_error(e, stream.offset))?;
    for (stored, actual, at, field) in [
        (
            run_count,
            map_counts.run_count,
            run_count_at,
            "/memory-map/run-count",
        ),
        (
            block_count,
            map_counts.block_count,
            block_count_at,
            "/memory-map/block-count",
        ),
        (
            page_count,
            map_counts.page_count,
            page_count_at,
            "/memory-map/page-count",
        ),
    ] {
        if stored != actual {
            return Err(FormatError::new(K::CountMismatch, field, at, stored));
        }
    }
    r.end_node(names::MEMORY_MAP)?;

    r.begin_node(names::LUO)?;
    read_version(
        &mut r,
        names::VERSION,
        "/luo/version",
        LUO_OLDEST_READABLE,
        LUO_VERSION,
    )?;
    let sessions_value = property(&mut r, names::SESSIONS, "/luo/sessions")?;
    let sessions: &[SessionEntry] = table(sessions_value, "/luo/sessions", MAX_SESSIONS)?;
    let files_value = property(&mut r, names::FILES, "/luo/files")?;
    let files: &[FileEntry] = table(files_value, "/luo/files", MAX_FILES)?;
    let mut handler_records = [0usize; MAX_HANDLERS];
    let mut handler_count = 0usize;
    let mut previous_name: &[u8] = &[];
    while r.at_begin_node() {
        let at = r.offset();
        let name = r.begin_any_node()?;
        let slot = handler_records
            .get_mut(handler_count)
            .ok_or(FormatError::new(
                K::LimitExceeded,
                "/luo handler nodes",
                at,
                handler_count as u64,
            ))?;
        if name.is_empty() || !is_valid_node_name(name) {
            return Err(FormatError::new(
                K::BadName,
                "/luo handler name",
                at,
                name.len() as u64,
            ));
        }
        if handler_count > 0 && name <= previous_name {
            return Err(FormatError::new(
                K::NotSorted,
                "/luo handler name",
                at,
                name.len() as u64,
            ));
        }
        previous_name = name;
        let (version, version_at) = read_u32(&mut r, names::VERSION, "/luo/<handler>/version")?;
        if version == 0 {
            return Err(FormatError::new(
                K::UnsupportedVersion,
                "/luo/<handler>/version",
                version_at,
                0,
            ));
        }
        *slot = property(&mut r, names::RECORDS, "/luo/<handler>/records")?
            .bytes
            .len();
        r.end_node("/luo/<handler>")?;
        handler_count = handler_count.wrapping_add(1);
    }
    r.end_node(names::LUO)?;
    r.end_node(names::ROOT)?;
    r.finish()?;

    validate_tables(
        sessions,
        sessions_value.offset,
        files,
        files_value.offset,
        &handler_records,
        handler_count,
    )?;
    Ok(Validated {
        map_counts,
        handler_count,
    })
}

fn map_error(error: MapError, stream_offset: usize) -> FormatError {
    FormatError::new(
        K::Map(error.kind),
        "/memory-map/stream",
        stream_offset.wrapping_add(error.offset),
        error.value,
    )
}

/// Checks the session and file tables: names, sort order, the session → file partition,
/// tokens, handler references and the record layout inside each handler's `records`.
fn validate_tables(
    sessions: &[SessionEntry],
    sessions_at: usize,
    files: &[FileEntry],
    files_at: usize,
    handler_records: &[usize; MAX_HANDLERS],
    handler_count: usize,
) -> Result<(), FormatError> {
    const SESSION_ROW: usize = core::mem::size_of::<SessionEntry>();
    const FILE_ROW: usize = core::mem::size_of::<FileEntry>();
    let mut next_file = 0usize;
    let mut previous: Option<&SessionEntry> = None;
    let mut record_ends = [0u64; MAX_HANDLERS];
    let mut referenced = [false; MAX_HANDLERS];
    for (index, session) in sessions.iter().enumerate() {
        let at = sessions_at.wrapping_add(index.wrapping_mul(SESSION_ROW));
        if SessionName::from_field(&session.name).is_none_or(|n| n.field() != &session.name) {
            return Err(FormatError::new(
                K::BadSessionName,
                "/luo/sessions[].name",
                at,
                index as u64,
            ));
        }
        if previous.is_some_and(|p| p.name >= session.name) {
            return Err(FormatError::new(
                K::NotSorted,
                "/luo/sessions[].name",
                at,
                index as u64,
            ));
        }
        previous = Some(session);
        let first = session.first_file.get() as usize;
        if first != next_file {
            return Err(FormatError::new(
                K::CountMismatch,
                "/luo/sessions[].first_file",
                at.wrapping_add(64),
                first as u64,
            ));
        }
        let count = session.file_count.get() as usize;
        let end = first
            .checked_add(count)
            .filter(|&end| end <= files.len())
            .ok_or(FormatError::new(
                K::CountMismatch,
                "/luo/sessions[].file_count",
                at.wrapping_add(68),
                count as u64,
            ))?;
        let session_files = files.get(first..end).unwrap_or(&[]);
        let mut previous_token: Option<u64> = None;
        for (offset, file) in session_files.iter().enumerate() {
            let file_index = first.wrapping_add(offset);
            let file_at = files_at.wrapping_add(file_index.wrapping_mul(FILE_ROW));
            let token = file.token.get();
            if previous_token.is_some_and(|p| p >= token) {
                return Err(FormatError::new(
                    K::NotSorted,
                    "/luo/files[].token",
                    file_at,
                    token,
                ));
            }
            previous_token = Some(token);
            if file.flags.get() != 0 {
                return Err(FormatError::new(
                    K::ReservedNotZero,
                    "/luo/files[].flags",
                    file_at.wrapping_add(28),
                    u64::from(file.flags.get()),
                ));
            }
            let handler = file.handler.get() as usize;
            if handler >= handler_count {
                return Err(FormatError::new(
                    K::BadReference,
                    "/luo/files[].handler",
                    file_at.wrapping_add(24),
                    handler as u64,
                ));
            }
            let (Some(record_end), Some(flag)) =
                (record_ends.get_mut(handler), referenced.get_mut(handler))
            else {
                return Err(FormatError::new(
                    K::BadReference,
                    "/luo/files[].handler",
                    file_at.wrapping_add(24),
                    handler as u64,
                ));
            };
            *flag = true;
            if file.record_offset.get() != *record_end {
                return Err(FormatError::new(
                    K::CountMismatch,
                    "/luo/files[].record_offset",
                    file_at.wrapping_add(8),
                    file.record_offset.get(),
                ));
            }
            *record_end = record_end
                .checked_add(file.record_len.get())
                .filter(|&e| e <= handler_records.get(handler).copied().unwrap_or(0) as u64)
                .ok_or(FormatError::new(
                    K::CountMismatch,
                    "/luo/files[].record_len",
                    file_at.wrapping_add(16),
                    file.record_len.get(),
                ))?;
        }
        next_file = end;
    }
    if next_file != files.len() {
        return Err(FormatError::new(
            K::CountMismatch,
            "/luo/files",
            files_at,
            files.len() as u64,
        ));
    }
    for handler in 0..handler_count {
        let records_len = handler_records.get(handler).copied().unwrap_or(0) as u64;
        let end = record_ends.get(handler).copied().unwrap_or(0);
        if end != records_len || !referenced.get(handler).copied().unwrap_or(false) {
            return Err(FormatError::new(
                K::CountMismatch,
                "/luo/<handler>/records",
                0,
                handler as u64,
            ));
        }
    }
    Ok(())
}

impl<'a> Handover<'a> {
    /// Verifies the checksum, validates the blob and opens it. `blob` must be exactly the
    /// image's `totalsize` bytes (see [`crate::fdt::total_size`]) and 4-byte aligned.
    pub fn parse(blob: &'a [u8]) -> Result<Handover<'a>, FormatError> {
        verify_checksum(blob)?;
        Self::parse_trusting_checksum(blob)
    }

    /// Like [`Handover::parse`], for a caller that has already run [`verify_checksum`] (or
    /// checked the CRC-32C in hardware). Everything else is validated.
    pub fn parse_trusting_checksum(blob: &'a [u8]) -> Result<Handover<'a>, FormatError> {
        let validated = validate(blob)?;
        Self::read(blob, &validated)
    }

    /// Reads the validated blob with fdt-rs into a view.
    fn read(blob: &'a [u8], validated: &Validated) -> Result<Handover<'a>, FormatError> {
        let disagrees = |field: &'static str| FormatError::new(K::ReaderDisagrees, field, 0, 0);
        let tree = fdt_read::open(blob)?;
        let mut view = Handover {
            blob,
            format_version: 0,
            generation: 0,
            image: PhysRange::default(),
            ram: &[],
            scratch: &[],
            map_version: 0,
            map_stream: &[],
            map_counts: validated.map_counts,
            luo_version: 0,
            sessions: &[],
            files: &[],
            handlers: [HandlerData::default(); MAX_HANDLERS],
            handler_count: 0,
        };
        let mut nodes = tree.nodes();
        while let Some(node) = nodes.next().map_err(|_| disagrees("node"))? {
            let node_name = node.name().map_err(|_| disagrees("node name"))?;
            let mut handler = HandlerData {
                name: node_name,
                ..HandlerData::default()
            };
            let mut props = node.props();
            while let Some(prop) = props.next().map_err(|_| disagrees("property"))? {
                let name = prop.name().map_err(|_| disagrees("property name"))?;
                let value: &'a [u8] = prop.raw();
                match (node_name, name) {
                    (names::ROOT, names::FORMAT_VERSION) => view.format_version = u32_le(value),
                    (names::ROOT, names::GENERATION) => view.generation = u64_le(value),
                    (names::ROOT, names::IMAGE_RANGE) => {
                        view.image = RangeEntry::read_from_bytes(value)
                            .ok()
                            .and_then(|e| e.range())
                            .ok_or(disagrees(names::IMAGE_RANGE))?;
                    }
                    (names::RAM, names::RANGES) => {
                        view.ram =
                            <[RangeEntry]>::ref_from_bytes(value).map_err(|_| disagrees("ram"))?;
                    }
                    (names::SCRATCH, names::RANGES) => {
                        view.scratch = <[RangeEntry]>::ref_from_bytes(value)
                            .map_err(|_| disagrees("scratch"))?;
                    }
                    (names::MEMORY_MAP, names::VERSION) => view.map_version = u32_le(value),
                    (names::MEMORY_MAP, names::STREAM) => view.map_stream = value,
                    (names::LUO, names::VERSION) => view.luo_version = u32_le(value),
                    (names::LUO, names::SESSIONS) => {
                        view.sessions = <[SessionEntry]>::ref_from_bytes(value)
                            .map_err(|_| disagrees("sessions"))?;
                    }
                    (names::LUO, names::FILES) => {
                        view.files =
                            <[FileEntry]>::ref_from_bytes(value).map_err(|_| disagrees("files"))?;
                    }
                    (
                        names::ROOT | names::RAM | names::SCRATCH | names::MEMORY_MAP | names::LUO,
                        _,
                    ) => {}
                    (_, names::VERSION) => handler.version = u32_le(value),
                    (_, names::RECORDS) => handler.records = value,
                    _ => return Err(disagrees("property")),
                }
            }
            if !matches!(
                node_name,
                names::ROOT | names::RAM | names::SCRATCH | names::MEMORY_MAP | names::LUO
            ) {
                let slot = view
                    .handlers
                    .get_mut(view.handler_count)
                    .ok_or(disagrees("handler"))?;
                *slot = handler;
                view.handler_count = view.handler_count.wrapping_add(1);
            }
        }
        if view.handler_count != validated.handler_count
            || view.ram.is_empty()
            || view.format_version == 0
        {
            return Err(disagrees("tree"));
        }
        Ok(view)
    }

    /// The whole blob.
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }

    /// The root format version the image was written with.
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// How many handovers precede this one in the chain (the first kernel writes 1).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the image lies in physical memory: page aligned, covering the blob. The receiver
    /// reserves it with the preserved memory and releases it when restore is done.
    pub fn image_range(&self) -> PhysRange {
        self.image
    }

    /// The RAM ranges the image was built against.
    pub fn ram(&self) -> Ranges<'a> {
        Ranges { rows: self.ram }
    }

    /// The scratch ranges: where the next kernel may boot and allocate before intake, and
    /// which it must declare again in its own handover.
    pub fn scratch(&self) -> Ranges<'a> {
        Ranges { rows: self.scratch }
    }

    /// Checks that every RAM range of the image lies in the receiving kernel's boot memory map
    /// (canonical list). A handover built for memory this machine does not have is refused.
    pub fn check_boot_ram(&self, boot_ram: &[PhysRange]) -> Result<(), FormatError> {
        for (index, range) in self.ram().iter().enumerate() {
            let slot = boot_ram.partition_point(|b| b.end() <= range.start());
            if !boot_ram.get(slot).is_some_and(|b| b.contains_range(range)) {
                return Err(FormatError::new(
                    K::OutsideRam,
                    "/ram/ranges (boot memory map)",
                    index,
                    range.start().as_u64(),
                ));
            }
        }
        Ok(())
    }

    /// The preserved-memory map.
    pub fn memory_map(&self) -> MemoryMap<'a> {
        MemoryMap {
            version: self.map_version,
            stream: self.map_stream,
            counts: self.map_counts,
        }
    }

    /// Version of the `/luo` tables.
    pub fn luo_version(&self) -> u32 {
        self.luo_version
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of files, all sessions together.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The session at `index` (sessions are in name order).
    pub fn session(&self, index: usize) -> Option<SessionView<'_>> {
        let entry = self.sessions.get(index)?;
        let first = entry.first_file.get() as usize;
        let end = first.wrapping_add(entry.file_count.get() as usize);
        let files = self.files.get(first..end)?;
        Some(SessionView {
            handover: self,
            index,
            entry,
            first_file: first,
            files,
        })
    }

    /// Every session, in name order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> {
        (0..self.sessions.len()).filter_map(|index| self.session(index))
    }

    /// The session named exactly `name` (without terminator), by binary search.
    pub fn find_session(&self, name: &[u8]) -> Option<SessionView<'_>> {
        let key = SessionName::new(name)?;
        let index = self
            .sessions
            .binary_search_by(|e| e.name.cmp(key.field()))
            .ok()?;
        self.session(index)
    }

    /// The file at global `index` of the file table, with its session index.
    pub fn file(&self, index: usize) -> Option<FileView<'_>> {
        let entry = self.files.get(index)?;
        let handler = self.handlers.get(entry.handler.get() as usize)?;
        let start = usize::try_from(entry.record_offset.get()).ok()?;
        let end = start.checked_add(usize::try_from(entry.record_len.get()).ok()?)?;
        let record = handler.records.get(start..end)?;
        Some(FileView {
            index,
            token: entry.token.get(),
            handler_index: entry.handler.get() as usize,
            handler,
            record,
        })
    }

    /// The handler nodes, in name order.
    pub fn handlers(&self) -> &[HandlerData<'a>] {
        self.handlers.get(..self.handler_count).unwrap_or(&[])
    }
}

/// A stored range list.
#[derive(Clone, Copy, Debug)]
pub struct Ranges<'a> {
    rows: &'a [RangeEntry],
}

impl<'a> Ranges<'a> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The ranges, in address order.
    pub fn iter(&self) -> impl Iterator<Item = PhysRange> + 'a {
        self.rows.iter().filter_map(RangeEntry::range)
    }

    /// The stored rows.
    pub fn rows(&self) -> &'a [RangeEntry] {
        self.rows
    }
}

/// The preserved-memory map of a validated image.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap<'a> {
    version: u32,
    stream: &'a [u8],
    counts: MapCounts,
}

impl<'a> MemoryMap<'a> {
    /// The stream's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The encoded stream.
    pub fn stream(&self) -> &'a [u8] {
        self.stream
    }

    /// Totals: runs the walk reports, blocks and pages.
    pub fn counts(&self) -> MapCounts {
        self.counts
    }

    /// Reports every preserved block exactly once with its order, in address order, without
    /// allocating: the fastest walk, for intake. Adjacent blocks may come as separate runs.
    /// Every run lies in the image's RAM, outside scratch and the image, and overlaps no
    /// other.
    pub fn walk(&self, visit: impl FnMut(FrameRun)) {
        // The stream was validated: the walk cannot meet an error.
        let _ = memmap::walk(self.stream, visit);
    }

    /// Like [`MemoryMap::walk`], with adjacent same-order runs merged into maximal runs.
    pub fn walk_merged(&self, visit: impl FnMut(FrameRun)) {
        let _ = memmap::walk_merged(self.stream, visit);
    }
}

/// A session of a validated image.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'h> {
    handover: &'h Handover<'h>,
    index: usize,
    entry: &'h SessionEntry,
    first_file: usize,
    files: &'h [FileEntry],
}

impl<'h> SessionView<'h> {
    /// The session's index in name order.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The name, without terminator.
    pub fn name(&self) -> &'h [u8] {
        let len = self.entry.name.iter().position(|&b| b == 0).unwrap_or(0);
        self.entry.name.get(..len).unwrap_or(&[])
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Global index of the session's first file in the file table.
    pub fn first_file(&self) -> usize {
        self.first_file
    }

    /// The files, in token order.
    pub fn files(&self) -> impl Iterator<Item = FileView<'h>> + 'h {
        let handover = self.handover;
        let first = self.first_file;
        (first..first.wrapping_add(self.files.len())).filter_map(move |index| handover.file(index))
    }

    /// The file preserved with `token`, by binary search.
    pub fn find_file(&self, token: u64) -> Option<FileView<'h>> {
        let offset = self
            .files
            .binary_search_by(|f| f.token.get().cmp(&token))
            .ok()?;
        self.handover.file(self.first_file.wrapping_add(offset))
    }
}

/// A file of a validated image.
#[derive(Clone, Copy, Debug)]
pub struct FileView<'h> {
    /// Global index in the file table.
    pub index: usize,
    /// The token it was preserved with.
    pub token: u64,
    /// Index of its handler node.
    pub handler_index: usize,
    /// Its handler node.
    pub handler: &'h HandlerData<'h>,
    /// Its record (opaque to the image; the handler parses it).
    pub record: &'h [u8],
}
