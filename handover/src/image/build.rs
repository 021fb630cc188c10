//! Building a handover image: the outgoing side.
//!
//! [`build_image`] turns [`ImageParts`] (layout, preserved runs, sessions, files and handler
//! records) into the one canonical blob the validator accepts. Session and file order in the
//! parts does not matter: the builder sorts them into the indexed tables. [`OwnedParts::from_handover`]
//! reads the parts back out of a validated image, so build → validate → rebuild is
//! byte-identical by construction and by test.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{U32, U64};

use super::schema::*;
use super::{Handover, compute_checksum};
use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange, is_canonical_range_list};
use crate::aligned::AlignedBytes;
use crate::fdt::{FdtWriter, is_valid_node_name};
use crate::memmap::{self, EncodeError, FrameRun, MAP_VERSION, MapCounts};

/// A file handler's identity in an image: its name (a node name) and the version of the
/// records it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerDraft<'p> {
    /// The handler's name, e.g. `memfd`: 1 to 31 of `[a-z0-9,._+-]`.
    pub name: &'p str,
    /// The version of its records.
    pub version: u32,
}

/// A file to record: its token, its handler (index into [`ImageParts::handlers`]) and where
/// its record lies in [`ImageParts::records`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDraft {
    /// The token it was preserved with.
    pub token: u64,
    /// Index into [`ImageParts::handlers`].
    pub handler: usize,
    /// Its record: a range of [`ImageParts::records`].
    pub record: Range<usize>,
}

/// A session to record: its name and its files, a range of [`ImageParts::files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDraft {
    /// Its name.
    pub name: SessionName,
    /// Its files (in any order): a range of [`ImageParts::files`].
    pub files: Range<usize>,
}

/// Everything an image holds.
#[derive(Clone, Copy, Debug)]
pub struct ImageParts<'p> {
    /// The chain position: the previous image's generation plus one (1 on a cold boot).
    pub generation: u64,
    /// RAM, canonical.
    pub ram: &'p [PhysRange],
    /// Scratch, canonical and inside RAM.
    pub scratch: &'p [PhysRange],
    /// The preserved runs, sorted, disjoint and merged (what the tracker reports).
    pub runs: &'p [FrameRun],
    /// The file handlers the files refer to.
    pub handlers: &'p [HandlerDraft<'p>],
    /// The sessions, in any order. Their file ranges follow each other and cover `files`.
    pub sessions: &'p [SessionDraft],
    /// Every file of every session.
    pub files: &'p [FileDraft],
    /// Every record, back to back.
    pub records: &'p [u8],
}

/// Why an image could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// RAM or scratch is not a canonical range list, RAM is empty, or scratch is not in RAM.
    BadLayout,
    /// Handler `index` has an invalid name or version 0.
    BadHandler {
        /// Index into the handlers.
        index: usize,
    },
    /// Two handlers share a name.
    DuplicateHandler {
        /// Index of the second one.
        index: usize,
    },
    /// Session file ranges that do not partition the files, or a record range out of bounds.
    BadDrafts,
    /// A file refers to a handler index that does not exist.
    BadHandlerReference {
        /// The session.
        session: SessionName,
        /// The file's token.
        token: u64,
    },
    /// Two sessions share a name.
    DuplicateSession {
        /// The name.
        name: SessionName,
    },
    /// Two files of a session share a token.
    DuplicateToken {
        /// The session.
        session: SessionName,
        /// The token.
        token: u64,
    },
    /// More sessions, files or handlers than the format allows.
    TooMany {
        /// Which table.
        what: &'static str,
    },
    /// The runs cannot be encoded.
    Map(EncodeError),
    /// The image is larger than a devicetree can describe (4 GiB).
    TooLarge,
    /// The placement callback failed or chose memory the image may not occupy.
    BadPlacement {
        /// The range offered.
        range: PhysRange,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::BadLayout => write!(f, "RAM/scratch layout is not canonical"),
            BuildError::BadDrafts => {
                write!(f, "session file ranges or record ranges are inconsistent")
            }
            BuildError::BadHandler { index } => {
                write!(f, "handler {index} has a bad name or version")
            }
            BuildError::DuplicateHandler { index } => write!(f, "handler {index} repeats a name"),
            BuildError::BadHandlerReference { session, token } => {
                write!(f, "file {token:#x} of session {session:?} names no handler")
            }
            BuildError::DuplicateSession { name } => write!(f, "session {name:?} appears twice"),
            BuildError::DuplicateToken { session, token } => {
                write!(f, "token {token:#x} appears twice in session {session:?}")
            }
            BuildError::TooMany { what } => write!(f, "too many {what}"),
            BuildError::Map(e) => write!(f, "memory map: {e}"),
            BuildError::TooLarge => write!(f, "image larger than 4 GiB"),
            BuildError::BadPlacement { range } => {
                write!(
                    f,
                    "image cannot be placed at {range}: not free RAM outside scratch"
                )
            }
        }
    }
}

/// A sealed image: 8-byte aligned bytes and the physical range they are meant for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverImage {
    bytes: AlignedBytes,
    range: PhysRange,
}

impl HandoverImage {
    /// The blob.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_bytes()
    }

    /// The blob, mutable (tests damage images this way).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.bytes.as_bytes_mut()
    }

    /// Where the image must be copied: `image-range`.
    pub fn range(&self) -> PhysRange {
        self.range
    }

    /// An aligned copy of arbitrary bytes (for receivers copying an image out of memory, and
    /// for tests and fuzzing, which build blobs by hand).
    pub fn from_bytes(bytes: &[u8]) -> HandoverImage {
        HandoverImage {
            bytes: AlignedBytes::from_bytes(bytes),
            range: PhysRange::default(),
        }
    }

    /// Recomputes and stores the checksum after the bytes were edited.
    pub fn reseal(&mut self) {
        let Ok(offset) = super::checksum_field(self.as_bytes()).map(|f| f.offset) else {
            return;
        };
        let crc = compute_checksum(self.as_bytes(), offset);
        if let Some(slot) = self.as_bytes_mut().get_mut(offset..offset.wrapping_add(4)) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Every property value of an image except the records, before it is written as a
/// devicetree. [`build_image`] computes these from [`ImageParts`]; tools and fuzzers may fill
/// them with anything to exercise the reader.
#[derive(Clone, Copy, Debug)]
pub struct TreeValues<'v> {
    /// `generation`.
    pub generation: u64,
    /// `/ram/ranges`.
    pub ram: &'v [RangeEntry],
    /// `/scratch/ranges`.
    pub scratch: &'v [RangeEntry],
    /// `/memory-map` counts.
    pub map_counts: MapCounts,
    /// `/memory-map/stream`.
    pub map_stream: &'v [u8],
    /// `/luo/sessions`, raw rows.
    pub sessions: &'v [u8],
    /// `/luo/files`, raw rows.
    pub files: &'v [u8],
    /// The handler nodes of `/luo`, in order.
    pub handlers: &'v [HandlerDraft<'v>],
}

/// A written but unsealed image: the bytes, and where the two values sealing fills in lie.
#[derive(Debug)]
pub struct UnsealedImage {
    bytes: AlignedBytes,
    checksum_at: usize,
    image_range_at: usize,
}

impl UnsealedImage {
    /// The blob's length.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Writes `image-range` and the checksum.
    pub fn seal(self, range: PhysRange) -> HandoverImage {
        let mut image = HandoverImage {
            bytes: self.bytes,
            range,
        };
        let entry = RangeEntry::from_range(range);
        let at = self.image_range_at;
        if let Some(slot) = image.as_bytes_mut().get_mut(at..at.saturating_add(16)) {
            slot.copy_from_slice(entry.as_bytes());
        }
        let at = self.checksum_at;
        let crc = compute_checksum(image.as_bytes(), at);
        if let Some(slot) = image.as_bytes_mut().get_mut(at..at.saturating_add(4)) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        image
    }
}

/// Writes the devicetree of an image in the canonical layout. `records(node, out)` appends the
/// `records` value of handler node `node` (so large record sets are written once, in place).
pub fn write_tree(
    values: &TreeValues<'_>,
    mut records: impl FnMut(usize, &mut AlignedBytes),
) -> UnsealedImage {
    // Room for everything up front, so the blob is written once without regrowing.
    let estimate = values
        .map_stream
        .len()
        .saturating_add(values.sessions.len())
        .saturating_add(values.files.len())
        .saturating_add(
            values
                .ram
                .len()
                .saturating_add(values.scratch.len())
                .saturating_mul(16),
        )
        .saturating_add(1024);
    let mut w = FdtWriter::with_capacity(estimate);
    w.begin_node(names::ROOT);
    let checksum_at = w.property(names::CHECKSUM, &[0; 4]);
    w.property_with(names::COMPATIBLE, |out| {
        out.extend_from_slice(COMPATIBLE.as_bytes());
        out.push(0);
    });
    w.property(names::FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes());
    w.property(names::GENERATION, &values.generation.to_le_bytes());
    let image_range_at = w.property(names::IMAGE_RANGE, &[0; 16]);
    for (node, rows) in [(names::RAM, values.ram), (names::SCRATCH, values.scratch)] {
        w.begin_node(node);
        w.property(names::VERSION, &RANGES_VERSION.to_le_bytes());
        w.property(names::RANGES, rows.as_bytes());
        w.end_node();
    }
    w.begin_node(names::MEMORY_MAP);
    w.property(names::VERSION, &MAP_VERSION.to_le_bytes());
    w.property(names::RUN_COUNT, &values.map_counts.run_count.to_le_bytes());
    w.property(
        names::BLOCK_COUNT,
        &values.map_counts.block_count.to_le_bytes(),
    );
    w.property(
        names::PAGE_COUNT,
        &values.map_counts.page_count.to_le_bytes(),
    );
    w.property(names::STREAM, values.map_stream);
    w.end_node();
    w.begin_node(names::LUO);
    w.property(names::VERSION, &LUO_VERSION.to_le_bytes());
    w.property(names::SESSIONS, values.sessions);
    w.property(names::FILES, values.files);
    for (node, handler) in values.handlers.iter().enumerate() {
        w.begin_node(handler.name);
        w.property(names::VERSION, &handler.version.to_le_bytes());
        w.property_with(names::RECORDS, |out| records(node, out));
        w.end_node();
    }
    w.end_node();
    w.end_node();
    UnsealedImage {
        bytes: w.finish(),
        checksum_at,
        image_range_at,
    }
}

/// Builds and seals an image. `place` receives the image's size in pages and returns the
/// page-aligned physical address the image will be copied to; it must be RAM outside scratch
/// and outside every preserved run (the builder checks).
pub fn build_image(
    parts: &ImageParts<'_>,
    place: impl FnOnce(u64) -> Option<PhysAddr>,
) -> Result<HandoverImage, BuildError> {
    check_layout(parts)?;
    check_handlers(parts.handlers)?;
    let tables = Tables::new(parts)?;
    let (stream, map_counts) = memmap::encode_counted(parts.runs).map_err(BuildError::Map)?;
    let ram: Vec<RangeEntry> = parts
        .ram
        .iter()
        .map(|&r| RangeEntry::from_range(r))
        .collect();
    let scratch: Vec<RangeEntry> = parts
        .scratch
        .iter()
        .map(|&r| RangeEntry::from_range(r))
        .collect();
    let values = TreeValues {
        generation: parts.generation,
        ram: &ram,
        scratch: &scratch,
        map_counts,
        map_stream: &stream,
        sessions: tables.sessions.as_bytes(),
        files: tables.files.as_bytes(),
        handlers: &tables.handlers,
    };
    let unsealed = write_tree(&values, |node, out| {
        for (entry, &file) in tables.files.iter().zip(&tables.file_order) {
            if entry.handler.get() as usize == node {
                out.extend_from_slice(parts.records.get(file.record.clone()).unwrap_or(&[]));
            }
        }
    });
    if u32::try_from(unsealed.len_bytes()).is_err() {
        return Err(BuildError::TooLarge);
    }
    let page_count_image = (unsealed.len_bytes() as u64).div_ceil(PAGE_SIZE);
    let len_bytes = page_count_image.saturating_mul(PAGE_SIZE);
    let start = place(page_count_image).unwrap_or(PhysAddr::new(u64::MAX));
    let range = PhysRange::new(start, len_bytes).ok_or(BuildError::BadPlacement {
        range: PhysRange::default(),
    })?;
    check_placement(parts, range)?;
    Ok(unsealed.seal(range))
}

fn check_layout(parts: &ImageParts<'_>) -> Result<(), BuildError> {
    let scratch_in_ram = parts
        .scratch
        .iter()
        .all(|s| parts.ram.iter().any(|r| r.contains_range(*s)));
    if parts.ram.is_empty()
        || parts.ram.len() > MAX_RANGES
        || parts.scratch.len() > MAX_RANGES
        || !is_canonical_range_list(parts.ram)
        || !is_canonical_range_list(parts.scratch)
        || !scratch_in_ram
    {
        return Err(BuildError::BadLayout);
    }
    Ok(())
}

fn check_handlers(handlers: &[HandlerDraft<'_>]) -> Result<(), BuildError> {
    if handlers.len() > MAX_HANDLERS {
        return Err(BuildError::TooMany { what: "handlers" });
    }
    for (index, handler) in handlers.iter().enumerate() {
        if handler.name.is_empty()
            || !is_valid_node_name(handler.name.as_bytes())
            || handler.version == 0
        {
            return Err(BuildError::BadHandler { index });
        }
        if handlers
            .get(..index)
            .unwrap_or(&[])
            .iter()
            .any(|h| h.name == handler.name)
        {
            return Err(BuildError::DuplicateHandler { index });
        }
    }
    Ok(())
}

/// Checks the image's own range: in one RAM range, clear of scratch and of every run.
fn check_placement(parts: &ImageParts<'_>, range: PhysRange) -> Result<(), BuildError> {
    let bad = BuildError::BadPlacement { range };
    if !range.start().is_page_aligned() || !parts.ram.iter().any(|r| r.contains_range(range)) {
        return Err(bad);
    }
    if parts.scratch.iter().any(|s| s.overlaps(range)) {
        return Err(bad);
    }
    let first = range.start().frame().as_u64();
    let end = range.end().frame().as_u64();
    let index = parts.runs.partition_point(|r| r.end_frame() <= first);
    if parts.runs.get(index).is_some_and(|r| r.first_frame < end) {
        return Err(bad);
    }
    Ok(())
}

/// The `/luo` tables in canonical order, and which draft each file row came from.
struct Tables<'p> {
    sessions: Vec<SessionEntry>,
    files: Vec<FileEntry>,
    /// `file_order[i]` is the draft of row `i` of `files`.
    file_order: Vec<&'p FileDraft>,
    handlers: Vec<HandlerDraft<'p>>,
}

impl<'p> Tables<'p> {
    fn new(parts: &ImageParts<'p>) -> Result<Tables<'p>, BuildError> {
        if parts.sessions.len() > MAX_SESSIONS {
            return Err(BuildError::TooMany { what: "sessions" });
        }
        if parts.files.len() > MAX_FILES {
            return Err(BuildError::TooMany { what: "files" });
        }
        // The session ranges partition the files; every record range is in bounds.
        let mut next = 0usize;
        for session in parts.sessions {
            if session.files.start != next || session.files.end < next {
                return Err(BuildError::BadDrafts);
            }
            next = session.files.end;
        }
        if next != parts.files.len()
            || parts
                .files
                .iter()
                .any(|f| parts.records.get(f.record.clone()).is_none())
        {
            return Err(BuildError::BadDrafts);
        }
        let mut order: Vec<&SessionDraft> = parts.sessions.iter().collect();
        order.sort_unstable_by_key(|s| s.name);
        for pair in order.windows(2) {
            if let [a, b] = pair
                && a.name == b.name
            {
                return Err(BuildError::DuplicateSession { name: a.name });
            }
        }
        // Handler nodes: only those some file uses, sorted by name.
        let mut used = vec![false; parts.handlers.len()];
        for session in &order {
            for file in parts.files.get(session.files.clone()).unwrap_or(&[]) {
                let slot = used
                    .get_mut(file.handler)
                    .ok_or(BuildError::BadHandlerReference {
                        session: session.name,
                        token: file.token,
                    })?;
                *slot = true;
            }
        }
        let mut node_order: Vec<usize> = (0..parts.handlers.len())
            .filter(|&i| used.get(i) == Some(&true))
            .collect();
        node_order.sort_unstable_by_key(|&i| parts.handlers.get(i).map(|h| h.name));
        let mut node_of = vec![0u32; parts.handlers.len()];
        for (node, &handler) in node_order.iter().enumerate() {
            if let Some(slot) = node_of.get_mut(handler) {
                *slot = node as u32;
            }
        }
        let handlers: Vec<HandlerDraft<'p>> = node_order
            .iter()
            .filter_map(|&i| parts.handlers.get(i).copied())
            .collect();

        let mut sessions = Vec::with_capacity(order.len());
        let mut files = Vec::with_capacity(parts.files.len());
        let mut file_order: Vec<&'p FileDraft> = Vec::with_capacity(parts.files.len());
        let mut record_ends = vec![0u64; handlers.len()];
        for session in order {
            let first_file = files.len() as u32;
            let start = file_order.len();
            file_order.extend(parts.files.get(session.files.clone()).unwrap_or(&[]));
            let session_files = file_order.get_mut(start..).unwrap_or(&mut []);
            session_files.sort_unstable_by_key(|f| f.token);
            for pair in session_files.windows(2) {
                if let [a, b] = pair
                    && a.token == b.token
                {
                    return Err(BuildError::DuplicateToken {
                        session: session.name,
                        token: a.token,
                    });
                }
            }
            for file in session_files.iter() {
                let node = node_of.get(file.handler).copied().unwrap_or(0);
                let end = record_ends
                    .get_mut(node as usize)
                    .ok_or(BuildError::TooMany { what: "handlers" })?;
                let len = file.record.len() as u64;
                files.push(FileEntry {
                    token: U64::new(file.token),
                    record_offset: U64::new(*end),
                    record_len: U64::new(len),
                    handler: U32::new(node),
                    flags: U32::new(0),
                });
                *end = end.saturating_add(len);
            }
            sessions.push(SessionEntry {
                name: *session.name.field(),
                first_file: U32::new(first_file),
                file_count: U32::new((files.len() as u32).wrapping_sub(first_file)),
            });
        }
        Ok(Tables {
            sessions,
            files,
            file_order,
            handlers,
        })
    }
}

/// The parts of a validated image, owned, so it can be rebuilt.
#[derive(Clone, Debug)]
pub struct OwnedParts<'a> {
    /// The generation.
    pub generation: u64,
    /// RAM.
    pub ram: Vec<PhysRange>,
    /// Scratch.
    pub scratch: Vec<PhysRange>,
    /// Preserved runs, merged.
    pub runs: Vec<FrameRun>,
    /// Handler nodes.
    pub handlers: Vec<HandlerDraft<'a>>,
    /// Sessions.
    pub sessions: Vec<SessionDraft>,
    /// Files of all sessions.
    pub files: Vec<FileDraft>,
    /// Records of all files.
    pub records: Vec<u8>,
    /// Where the image lies.
    pub image_range: PhysRange,
}

impl<'a> OwnedParts<'a> {
    /// Reads every part out of a validated image through its accessors.
    pub fn from_handover(handover: &Handover<'a>) -> OwnedParts<'a> {
        let mut runs = Vec::new();
        handover.memory_map().walk_merged(|run| runs.push(run));
        let handlers = handover
            .handlers()
            .iter()
            .map(|h| HandlerDraft {
                name: h.name,
                version: h.version,
            })
            .collect();
        let mut sessions = Vec::new();
        let mut files = Vec::new();
        let mut records = Vec::new();
        for session in handover.sessions() {
            let Some(name) = SessionName::new(session.name()) else {
                continue;
            };
            let first = files.len();
            for file in session.files() {
                let start = records.len();
                records.extend_from_slice(file.record);
                files.push(FileDraft {
                    token: file.token,
                    handler: file.handler_index,
                    record: start..records.len(),
                });
            }
            sessions.push(SessionDraft {
                name,
                files: first..files.len(),
            });
        }
        OwnedParts {
            generation: handover.generation(),
            ram: handover.ram().iter().collect(),
            scratch: handover.scratch().iter().collect(),
            runs,
            handlers,
            sessions,
            files,
            records,
            image_range: handover.image_range(),
        }
    }

    /// Borrows the parts for [`build_image`].
    pub fn as_parts(&self) -> ImageParts<'_> {
        ImageParts {
            generation: self.generation,
            ram: &self.ram,
            scratch: &self.scratch,
            runs: &self.runs,
            handlers: &self.handlers,
            sessions: &self.sessions,
            files: &self.files,
            records: &self.records,
        }
    }

    /// Builds the image again at the same place.
    pub fn rebuild(&self) -> Result<HandoverImage, BuildError> {
        build_image(&self.as_parts(), |_| Some(self.image_range.start()))
    }
}
