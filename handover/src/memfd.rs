//! The memfd handler: anonymous memory files whose contents live in preserved pages.
//!
//! [`Memfd`] is a memfd-like file (size, position, seals, sparse pages allocated on write);
//! [`MemfdHandler`] preserves it across a kexec. Only populated pages are preserved (a sparse
//! file stays sparse, unlike Linux which populates every hole), and pages populated after
//! `preserve` are preserved at the reboot step (`freeze`), so a late write is never lost (the
//! bug Linux fixed in 2026-02, luo.md §5.1 #6). While preserved the file's size is frozen.
//!
//! Record versions (little-endian; `docs/FORMAT.md` has the tables):
//! * v1: `pos u64, size u64, extent_count u64`, then extents. No seals.
//! * v2: `pos u64, size u64, seals u32, flags u32 (0), extent_count u64`, then extents.
//! * extent: `file_page u64, phys_addr u64, page_count u64`: pages `file_page..+page_count` of
//!   the file are the physical pages from `phys_addr`. Extents are sorted by `file_page`, do
//!   not overlap, are maximal (never mergeable with the next) and lie within the file's size.
//!
//! The writer writes v2 (or v1 when asked to, for a predecessor reader, if no seal is set);
//! the reader reads both.

#[cfg(feature = "alloc")]
use alloc::collections::BTreeMap;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::fmt;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::{PAGE_SIZE, PHYS_ADDR_LIMIT, PhysAddr};
use crate::incoming::{ClaimError, IncomingPages};
use crate::uapi::Errno;

/// The handler's name.
pub const MEMFD_NAME: &str = "memfd";
/// The record version written by default.
pub const MEMFD_VERSION: u32 = 2;
/// The oldest record version read.
pub const MEMFD_OLDEST_READABLE: u32 = 1;

/// `F_SEAL_SEAL`: no more seals may be added.
pub const F_SEAL_SEAL: u32 = 0x1;
/// `F_SEAL_SHRINK`: the file may not shrink.
pub const F_SEAL_SHRINK: u32 = 0x2;
/// `F_SEAL_GROW`: the file may not grow.
pub const F_SEAL_GROW: u32 = 0x4;
/// `F_SEAL_WRITE`: the contents may not change.
pub const F_SEAL_WRITE: u32 = 0x8;
/// `F_SEAL_FUTURE_WRITE`: no new writes.
pub const F_SEAL_FUTURE_WRITE: u32 = 0x10;
/// `F_SEAL_EXEC`: the exec bits may not change.
pub const F_SEAL_EXEC: u32 = 0x20;
/// Every seal a record may carry.
pub const ALL_SEALS: u32 =
    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC;
/// The largest file: 2^52 bytes (the physical address space).
pub const MAX_MEMFD_SIZE: u64 = PHYS_ADDR_LIMIT;

/// Record header, version 1 (24 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MemfdHeaderV1 {
    /// File position.
    pub pos: U64,
    /// File size in bytes.
    pub size: U64,
    /// Number of extents that follow.
    pub extent_count: U64,
}

/// Record header, version 2 (32 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MemfdHeaderV2 {
    /// File position.
    pub pos: U64,
    /// File size in bytes.
    pub size: U64,
    /// `F_SEAL_*` bits.
    pub seals: U32,
    /// Reserved, zero.
    pub flags: U32,
    /// Number of extents that follow.
    pub extent_count: U64,
}

/// One extent: `page_count` file pages from `file_page` live at `phys_addr` onwards (24 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct MemfdExtent {
    /// First page index within the file.
    pub file_page: U64,
    /// Physical address of that page.
    pub phys_addr: U64,
    /// Number of pages.
    pub page_count: U64,
}

/// What is wrong with a memfd record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// A version this reader does not read.
    UnsupportedVersion,
    /// Shorter than its header, or not exactly header plus extents.
    BadLength,
    /// Seal bits this reader does not know.
    UnknownSeals,
    /// The reserved `flags` field is not zero.
    ReservedFlags,
    /// The size exceeds [`MAX_MEMFD_SIZE`].
    SizeTooLarge,
    /// An extent with no pages.
    EmptyExtent,
    /// An extent whose physical address is not page aligned or passes the physical limit.
    BadPhysical,
    /// An extent that reaches past the file's size.
    PastEndOfFile,
    /// Extents out of order or overlapping.
    NotSorted,
    /// Two extents that continue each other in the file and in memory (must be one).
    NotMerged,
}

/// A memfd record rejection: what, where in the record, which value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// What is wrong.
    pub kind: RecordErrorKind,
    /// Byte offset in the record.
    pub offset: usize,
    /// The offending value.
    pub value: u64,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memfd record byte {}: {:?} (value {:#x})",
            self.offset, self.kind, self.value
        )
    }
}

impl RecordError {
    /// The errno a retrieve reports for this record: `EOPNOTSUPP` for what a newer kernel may
    /// write (unknown version or seals), `EINVAL` otherwise.
    pub fn errno(&self) -> Errno {
        match self.kind {
            RecordErrorKind::UnsupportedVersion | RecordErrorKind::UnknownSeals => {
                Errno::EOPNOTSUPP
            }
            _ => Errno::EINVAL,
        }
    }
}

/// A validated memfd record.
#[derive(Clone, Copy, Debug)]
pub struct MemfdRecord<'a> {
    /// The version it was written in.
    pub version: u32,
    /// File position.
    pub pos: u64,
    /// File size in bytes.
    pub size: u64,
    /// `F_SEAL_*` bits (always 0 in v1).
    pub seals: u32,
    /// The extents, sorted, disjoint and maximal.
    pub extents: &'a [MemfdExtent],
}

const EXTENT_LEN: usize = core::mem::size_of::<MemfdExtent>();

impl<'a> MemfdRecord<'a> {
    /// Parses and validates a record of the given version.
    pub fn parse(bytes: &'a [u8], version: u32) -> Result<MemfdRecord<'a>, RecordError> {
        let error = |kind, offset: usize, value: u64| RecordError {
            kind,
            offset,
            value,
        };
        let (pos, size, seals, extent_count, header_len) = match version {
            1 => {
                let (h, _) = MemfdHeaderV1::read_from_prefix(bytes)
                    .map_err(|_| error(RecordErrorKind::BadLength, 0, bytes.len() as u64))?;
                (h.pos.get(), h.size.get(), 0, h.extent_count.get(), 24usize)
            }
            2 => {
                let (h, _) = MemfdHeaderV2::read_from_prefix(bytes)
                    .map_err(|_| error(RecordErrorKind::BadLength, 0, bytes.len() as u64))?;
                if h.seals.get() & !ALL_SEALS != 0 {
                    return Err(error(
                        RecordErrorKind::UnknownSeals,
                        16,
                        u64::from(h.seals.get()),
                    ));
                }
                if h.flags.get() != 0 {
                    return Err(error(
                        RecordErrorKind::ReservedFlags,
                        20,
                        u64::from(h.flags.get()),
                    ));
                }
                (
                    h.pos.get(),
                    h.size.get(),
                    h.seals.get(),
                    h.extent_count.get(),
                    32usize,
                )
            }
            _ => {
                return Err(error(
                    RecordErrorKind::UnsupportedVersion,
                    0,
                    u64::from(version),
                ));
            }
        };
        if size > MAX_MEMFD_SIZE {
            return Err(error(RecordErrorKind::SizeTooLarge, 8, size));
        }
        let body = bytes.get(header_len..).unwrap_or(&[]);
        let expected = usize::try_from(extent_count)
            .ok()
            .and_then(|n| n.checked_mul(EXTENT_LEN));
        if expected != Some(body.len()) {
            return Err(error(
                RecordErrorKind::BadLength,
                header_len.wrapping_sub(8),
                extent_count,
            ));
        }
        let extents = <[MemfdExtent]>::ref_from_bytes(body)
            .map_err(|_| error(RecordErrorKind::BadLength, header_len, body.len() as u64))?;
        let size_pages = size.div_ceil(PAGE_SIZE);
        let mut previous: Option<&MemfdExtent> = None;
        for (index, extent) in extents.iter().enumerate() {
            let at = header_len.wrapping_add(index.wrapping_mul(EXTENT_LEN));
            let (first, phys, count) = (
                extent.file_page.get(),
                extent.phys_addr.get(),
                extent.page_count.get(),
            );
            if count == 0 {
                return Err(error(RecordErrorKind::EmptyExtent, at.wrapping_add(16), 0));
            }
            let phys_end = count
                .checked_mul(PAGE_SIZE)
                .and_then(|len| phys.checked_add(len));
            if phys % PAGE_SIZE != 0 || phys_end.is_none_or(|end| end > PHYS_ADDR_LIMIT) {
                return Err(error(
                    RecordErrorKind::BadPhysical,
                    at.wrapping_add(8),
                    phys,
                ));
            }
            if first.checked_add(count).is_none_or(|end| end > size_pages) {
                return Err(error(RecordErrorKind::PastEndOfFile, at, first));
            }
            if let Some(p) = previous {
                let previous_end = p.file_page.get().wrapping_add(p.page_count.get());
                if first < previous_end {
                    return Err(error(RecordErrorKind::NotSorted, at, first));
                }
                let previous_phys_end = p
                    .phys_addr
                    .get()
                    .wrapping_add(p.page_count.get().wrapping_mul(PAGE_SIZE));
                if first == previous_end && phys == previous_phys_end {
                    return Err(error(RecordErrorKind::NotMerged, at, first));
                }
            }
            previous = Some(extent);
        }
        Ok(MemfdRecord {
            version,
            pos,
            size,
            seals,
            extents,
        })
    }

    /// Each extent as (first file page, physical address, page count).
    pub fn extents(&self) -> impl Iterator<Item = (u64, PhysAddr, u64)> + 'a {
        self.extents.iter().map(|e| {
            (
                e.file_page.get(),
                PhysAddr::new(e.phys_addr.get()),
                e.page_count.get(),
            )
        })
    }

    /// Pages the record owns.
    pub fn page_count(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.page_count.get()))
    }

    /// Claims every extent from `pages`, all or nothing.
    pub fn claim(&self, pages: &mut IncomingPages<'_>) -> Result<(), ClaimError> {
        for (index, (_, phys, count)) in self.extents().enumerate() {
            if let Err(error) = pages.claim(phys, count, 0) {
                for (_, done, done_count) in self.extents().take(index) {
                    // Cannot fail: claimed just above by this call.
                    let _ = pages.unclaim(done, done_count, 0);
                }
                return Err(error);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
pub use object::*;

#[cfg(feature = "alloc")]
mod object {
    use super::*;
    use crate::addr::PAGE_SHIFT;
    use crate::handler::{Compatible, FileHandler};
    use crate::kernel::{FrameAllocator, PhysMemory};
    use crate::memmap::FrameRun;
    use crate::tracker::{PreservationTracker, TrackerError};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Page {
        addr: PhysAddr,
        /// Whether this page is currently preserved in the tracker.
        preserved: bool,
        /// Whether it was preserved by `freeze` (so `unfreeze` releases it).
        by_freeze: bool,
    }

    /// A memfd-like anonymous memory file: sparse pages, size, position, seals.
    #[derive(Debug, Default)]
    pub struct Memfd {
        size_bytes: u64,
        position: u64,
        seals: u32,
        pages: BTreeMap<u64, Page>,
        preserved: bool,
    }

    fn tracker_errno(error: TrackerError) -> Errno {
        match error {
            TrackerError::AlreadyPreserved { .. } | TrackerError::Overlaps { .. } => Errno::EBUSY,
            TrackerError::OutOfMemory => Errno::ENOMEM,
            _ => Errno::EINVAL,
        }
    }

    impl Memfd {
        /// An empty file.
        pub fn new() -> Memfd {
            Memfd::default()
        }

        /// Size in bytes.
        pub fn size(&self) -> u64 {
            self.size_bytes
        }

        /// The file position.
        pub fn position(&self) -> u64 {
            self.position
        }

        /// Sets the file position.
        pub fn seek(&mut self, position: u64) {
            self.position = position;
        }

        /// The `F_SEAL_*` bits.
        pub fn seals(&self) -> u32 {
            self.seals
        }

        /// Whether the file is preserved for the next kernel (its size is then frozen).
        pub fn is_preserved(&self) -> bool {
            self.preserved
        }

        /// Number of populated pages.
        pub fn populated_pages(&self) -> usize {
            self.pages.len()
        }

        /// Every populated page: (file page index, physical address), in file order.
        pub fn pages(&self) -> impl Iterator<Item = (u64, PhysAddr)> + '_ {
            self.pages.iter().map(|(&index, page)| (index, page.addr))
        }

        /// Adds seals (`fcntl(F_ADD_SEALS)`): `EINVAL` for unknown bits, `EPERM` once
        /// `F_SEAL_SEAL` is set.
        pub fn add_seals(&mut self, seals: u32) -> Result<(), Errno> {
            if seals & !ALL_SEALS != 0 {
                return Err(Errno::EINVAL);
            }
            if self.seals & F_SEAL_SEAL != 0 {
                return Err(Errno::EPERM);
            }
            self.seals |= seals;
            Ok(())
        }

        /// Writes `data` at byte `offset`, allocating pages on demand and growing the file.
        /// `EPERM` if sealed against it or if growing a preserved file; `EFBIG` past the
        /// maximum size; `ENOMEM` if pages run out (nothing changes then).
        pub fn write_at(
            &mut self,
            offset: u64,
            data: &[u8],
            frames: &mut dyn FrameAllocator,
            memory: &mut dyn PhysMemory,
        ) -> Result<(), Errno> {
            if self.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0 {
                return Err(Errno::EPERM);
            }
            let end = offset
                .checked_add(data.len() as u64)
                .filter(|&end| end <= MAX_MEMFD_SIZE)
                .ok_or(Errno::EFBIG)?;
            if end > self.size_bytes && (self.seals & F_SEAL_GROW != 0 || self.preserved) {
                return Err(Errno::EPERM);
            }
            if data.is_empty() {
                return Ok(());
            }
            let first_page = offset >> PAGE_SHIFT;
            let last_page = (end.wrapping_sub(1)) >> PAGE_SHIFT;
            // Allocate every missing page first, so a failure changes nothing.
            let mut fresh: Vec<u64> = Vec::new();
            for index in first_page..=last_page {
                if self.pages.contains_key(&index) {
                    continue;
                }
                let Some(addr) = frames.allocate_page() else {
                    for done in &fresh {
                        if let Some(page) = self.pages.remove(done) {
                            frames.free_page(page.addr);
                        }
                    }
                    return Err(Errno::ENOMEM);
                };
                memory.zero(addr, PAGE_SIZE as usize);
                self.pages.insert(
                    index,
                    Page {
                        addr,
                        preserved: false,
                        by_freeze: false,
                    },
                );
                fresh.push(index);
            }
            let mut written = 0usize;
            while written < data.len() {
                let at = offset.wrapping_add(written as u64);
                let within = (at % PAGE_SIZE) as usize;
                let step = (PAGE_SIZE as usize)
                    .wrapping_sub(within)
                    .min(data.len().wrapping_sub(written));
                if let (Some(page), Some(chunk)) = (
                    self.pages.get(&(at >> PAGE_SHIFT)),
                    data.get(written..written.wrapping_add(step)),
                ) {
                    memory.write(
                        PhysAddr::new(page.addr.as_u64().wrapping_add(within as u64)),
                        chunk,
                    );
                }
                written = written.wrapping_add(step);
            }
            self.size_bytes = self.size_bytes.max(end);
            Ok(())
        }

        /// Reads up to `buf.len()` bytes at `offset`; holes read as zeros. Returns the count
        /// read (short at the end of the file).
        pub fn read_at(&self, offset: u64, buf: &mut [u8], memory: &dyn PhysMemory) -> usize {
            let available = self.size_bytes.saturating_sub(offset);
            let len = (buf.len() as u64).min(available) as usize;
            let mut done = 0usize;
            while done < len {
                let at = offset.wrapping_add(done as u64);
                let within = (at % PAGE_SIZE) as usize;
                let step = (PAGE_SIZE as usize)
                    .wrapping_sub(within)
                    .min(len.wrapping_sub(done));
                if let Some(chunk) = buf.get_mut(done..done.wrapping_add(step)) {
                    match self.pages.get(&(at >> PAGE_SHIFT)) {
                        Some(page) => memory.read(
                            PhysAddr::new(page.addr.as_u64().wrapping_add(within as u64)),
                            chunk,
                        ),
                        None => chunk.fill(0),
                    }
                }
                done = done.wrapping_add(step);
            }
            len
        }

        /// Changes the size (`ftruncate`). Shrinking frees whole pages past the end and zeroes
        /// the tail of the last one. `EPERM` if sealed against it or preserved.
        pub fn set_size(
            &mut self,
            size_bytes: u64,
            frames: &mut dyn FrameAllocator,
            memory: &mut dyn PhysMemory,
        ) -> Result<(), Errno> {
            if size_bytes > MAX_MEMFD_SIZE {
                return Err(Errno::EFBIG);
            }
            let growing = size_bytes > self.size_bytes;
            let sealed = if growing { F_SEAL_GROW } else { F_SEAL_SHRINK };
            if size_bytes != self.size_bytes && (self.seals & sealed != 0 || self.preserved) {
                return Err(Errno::EPERM);
            }
            if !growing {
                let keep_pages = size_bytes.div_ceil(PAGE_SIZE);
                let dropped = self.pages.split_off(&keep_pages);
                for page in dropped.values() {
                    frames.free_page(page.addr);
                }
                let within = size_bytes % PAGE_SIZE;
                if within != 0
                    && let Some(page) = self.pages.get(&(size_bytes >> PAGE_SHIFT))
                {
                    let tail = PhysAddr::new(page.addr.as_u64().wrapping_add(within));
                    memory.zero(tail, (PAGE_SIZE.wrapping_sub(within)) as usize);
                }
            }
            self.size_bytes = size_bytes;
            Ok(())
        }

        /// Frees every page (closing the last reference). `EBUSY` while preserved.
        pub fn release(&mut self, frames: &mut dyn FrameAllocator) -> Result<(), Errno> {
            if self.preserved {
                return Err(Errno::EBUSY);
            }
            for page in core::mem::take(&mut self.pages).values() {
                frames.free_page(page.addr);
            }
            self.size_bytes = 0;
            Ok(())
        }

        /// Preserves every populated page and freezes the size. All or nothing.
        pub fn preserve(&mut self, tracker: &mut PreservationTracker) -> Result<(), Errno> {
            if self.preserved {
                return Err(Errno::EBUSY);
            }
            self.preserve_unpreserved(tracker, false)?;
            self.preserved = true;
            Ok(())
        }

        /// Preserves pages that are not yet preserved; on failure releases those this call
        /// preserved.
        fn preserve_unpreserved(
            &mut self,
            tracker: &mut PreservationTracker,
            by_freeze: bool,
        ) -> Result<(), Errno> {
            if self.pages.values().all(|page| page.preserved) {
                return Ok(());
            }
            let pending: Vec<u64> = self
                .pages
                .iter()
                .filter(|(_, page)| !page.preserved)
                .map(|(&index, _)| index)
                .collect();
            for (done, index) in pending.iter().enumerate() {
                let Some(page) = self.pages.get_mut(index) else {
                    continue;
                };
                if let Err(error) = tracker.preserve_page(page.addr) {
                    self.rollback(tracker, pending.get(..done).unwrap_or(&[]));
                    return Err(tracker_errno(error));
                }
                page.preserved = true;
                page.by_freeze = by_freeze;
            }
            Ok(())
        }

        fn rollback(&mut self, tracker: &mut PreservationTracker, indices: &[u64]) {
            for index in indices {
                if let Some(page) = self.pages.get_mut(index) {
                    let _ = tracker.unpreserve_page(page.addr);
                    page.preserved = false;
                    page.by_freeze = false;
                }
            }
        }

        /// Releases every preserved page and unfreezes the size.
        pub fn unpreserve(&mut self, tracker: &mut PreservationTracker) {
            for page in self.pages.values_mut() {
                if page.preserved {
                    let _ = tracker.unpreserve_page(page.addr);
                    page.preserved = false;
                    page.by_freeze = false;
                }
            }
            self.preserved = false;
        }

        /// The reboot step: preserves pages populated since `preserve`.
        pub fn freeze(&mut self, tracker: &mut PreservationTracker) -> Result<(), Errno> {
            if !self.preserved {
                return Err(Errno::EINVAL);
            }
            self.preserve_unpreserved(tracker, true)
        }

        /// Undoes [`Memfd::freeze`]: releases the pages it preserved.
        pub fn unfreeze(&mut self, tracker: &mut PreservationTracker) {
            for page in self.pages.values_mut() {
                if page.by_freeze {
                    let _ = tracker.unpreserve_page(page.addr);
                    page.preserved = false;
                    page.by_freeze = false;
                }
            }
        }

        /// Appends the record of a frozen file in `version` (1 or 2) to `out`. `EOPNOTSUPP`
        /// for v1 with seals set (v1 cannot carry them); `EINVAL` if a page is not preserved
        /// (the file is not frozen). On error `out` is unchanged.
        pub fn write_record(&self, version: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
            if self.pages.values().any(|p| !p.preserved) {
                return Err(Errno::EINVAL);
            }
            let start = out.len();
            let count_at = match version {
                1 if self.seals == 0 => {
                    let header = MemfdHeaderV1 {
                        pos: U64::new(self.position),
                        size: U64::new(self.size_bytes),
                        extent_count: U64::new(0),
                    };
                    out.extend_from_slice(header.as_bytes());
                    start.wrapping_add(16)
                }
                2 => {
                    let header = MemfdHeaderV2 {
                        pos: U64::new(self.position),
                        size: U64::new(self.size_bytes),
                        seals: U32::new(self.seals),
                        flags: U32::new(0),
                        extent_count: U64::new(0),
                    };
                    out.extend_from_slice(header.as_bytes());
                    start.wrapping_add(24)
                }
                _ => return Err(Errno::EOPNOTSUPP),
            };
            // Extents: maximal stretches contiguous both in the file and in memory.
            let mut count = 0u64;
            let mut current: Option<(u64, u64, u64)> = None;
            for (&index, page) in &self.pages {
                let addr = page.addr.as_u64();
                if let Some((first, phys, pages)) = current.as_mut()
                    && first.wrapping_add(*pages) == index
                    && phys.wrapping_add(pages.wrapping_mul(PAGE_SIZE)) == addr
                {
                    *pages = pages.wrapping_add(1);
                    continue;
                }
                if let Some(done) = current.replace((index, addr, 1)) {
                    push_extent(out, done);
                    count = count.wrapping_add(1);
                }
            }
            if let Some(done) = current {
                push_extent(out, done);
                count = count.wrapping_add(1);
            }
            if let Some(slot) = out.get_mut(count_at..count_at.wrapping_add(8)) {
                slot.copy_from_slice(&count.to_le_bytes());
            }
            Ok(())
        }

        /// Restores a file from a validated record, claiming its pages. All or nothing.
        pub fn from_record(
            record: &MemfdRecord<'_>,
            pages: &mut IncomingPages<'_>,
        ) -> Result<Memfd, Errno> {
            record.claim(pages).map_err(|_| Errno::EIO)?;
            let mut memfd = Memfd {
                size_bytes: record.size,
                position: record.pos,
                seals: record.seals,
                pages: BTreeMap::new(),
                preserved: false,
            };
            for (first, phys, count) in record.extents() {
                for offset in 0..count {
                    let addr =
                        PhysAddr::new(phys.as_u64().wrapping_add(offset.wrapping_mul(PAGE_SIZE)));
                    memfd.pages.insert(
                        first.wrapping_add(offset),
                        Page {
                            addr,
                            preserved: false,
                            by_freeze: false,
                        },
                    );
                }
            }
            Ok(memfd)
        }
    }

    /// A shared handle to a [`Memfd`] for single-threaded kernels and tests: every clone is the
    /// same file, and the identity is the allocation's address.
    #[derive(Clone, Debug, Default)]
    pub struct MemfdFile(alloc::rc::Rc<core::cell::RefCell<Memfd>>);

    impl MemfdFile {
        /// A handle to a new file.
        pub fn new(memfd: Memfd) -> MemfdFile {
            MemfdFile(alloc::rc::Rc::new(core::cell::RefCell::new(memfd)))
        }

        /// Runs `f` on the file. `None` if the file is already borrowed (a re-entrant call).
        pub fn with<R>(&self, f: impl FnOnce(&mut Memfd) -> R) -> Option<R> {
            self.0.try_borrow_mut().ok().map(|mut m| f(&mut m))
        }
    }

    impl MemfdObject for MemfdFile {
        fn with_memfd<R>(&self, f: impl FnOnce(&mut Memfd) -> R) -> Option<R> {
            self.with(f)
        }

        fn identity(&self) -> u64 {
            alloc::rc::Rc::as_ptr(&self.0) as usize as u64
        }

        fn from_memfd(memfd: Memfd) -> Self {
            MemfdFile::new(memfd)
        }
    }

    fn push_extent(out: &mut Vec<u8>, (first, phys, pages): (u64, u64, u64)) {
        let extent = MemfdExtent {
            file_page: U64::new(first),
            phys_addr: U64::new(phys),
            page_count: U64::new(pages),
        };
        out.extend_from_slice(extent.as_bytes());
    }

    /// What a kernel's file-object handle must offer for [`MemfdHandler`] to preserve it.
    pub trait MemfdObject: Sized {
        /// Runs `f` on the memfd behind the handle, or returns `None` if it is not a memfd.
        fn with_memfd<R>(&self, f: impl FnOnce(&mut Memfd) -> R) -> Option<R>;
        /// A key shared by every handle to the same memfd.
        fn identity(&self) -> u64;
        /// Wraps a restored memfd in a new handle.
        fn from_memfd(memfd: Memfd) -> Self;
    }

    /// The memfd file handler.
    #[derive(Clone, Copy, Debug)]
    pub struct MemfdHandler {
        write_version: u32,
    }

    impl Default for MemfdHandler {
        fn default() -> Self {
            Self::new()
        }
    }

    impl MemfdHandler {
        /// A handler writing the current record version.
        pub const fn new() -> MemfdHandler {
            MemfdHandler {
                write_version: MEMFD_VERSION,
            }
        }

        /// A handler writing `version` (1 or 2): v1 lets a predecessor kernel read the files,
        /// at the cost of refusing (`EOPNOTSUPP`) to freeze sealed ones.
        pub const fn with_write_version(version: u32) -> MemfdHandler {
            MemfdHandler {
                write_version: version,
            }
        }
    }

    impl<O: MemfdObject> FileHandler<O> for MemfdHandler {
        fn compatible(&self) -> Compatible {
            Compatible {
                name: MEMFD_NAME,
                version: self.write_version,
            }
        }

        fn oldest_readable_version(&self) -> u32 {
            MEMFD_OLDEST_READABLE
        }

        fn can_preserve(&self, object: &O) -> bool {
            object.with_memfd(|_| ()).is_some()
        }

        fn identity(&self, object: &O) -> u64 {
            object.identity()
        }

        fn preserve(&self, object: &O, tracker: &mut PreservationTracker) -> Result<(), Errno> {
            object
                .with_memfd(|m| m.preserve(tracker))
                .unwrap_or(Err(Errno::EINVAL))
        }

        fn unpreserve(&self, object: &O, tracker: &mut PreservationTracker) {
            object.with_memfd(|m| m.unpreserve(tracker));
        }

        fn freeze(&self, object: &O, tracker: &mut PreservationTracker) -> Result<(), Errno> {
            object
                .with_memfd(|m| m.freeze(tracker))
                .unwrap_or(Err(Errno::EINVAL))
        }

        fn unfreeze(&self, object: &O, tracker: &mut PreservationTracker) {
            object.with_memfd(|m| m.unfreeze(tracker));
        }

        fn serialize(&self, object: &O, out: &mut Vec<u8>) -> Result<(), Errno> {
            object
                .with_memfd(|m| m.write_record(self.write_version, out))
                .unwrap_or(Err(Errno::EINVAL))
        }

        fn retrieve(
            &self,
            record: &[u8],
            version: u32,
            pages: &mut IncomingPages<'_>,
        ) -> Result<O, Errno> {
            let parsed = MemfdRecord::parse(record, version).map_err(|e| e.errno())?;
            Memfd::from_record(&parsed, pages).map(O::from_memfd)
        }

        fn finish(
            &self,
            record: &[u8],
            version: u32,
            retrieved: Option<&O>,
            pages: &mut IncomingPages<'_>,
            release: &mut dyn FnMut(FrameRun),
        ) {
            if retrieved.is_some() {
                // The restored file owns its pages now.
                return;
            }
            let Ok(parsed) = MemfdRecord::parse(record, version) else {
                // Unreadable: its pages stay reserved until the next kexec, which does not
                // carry them (nothing is handed to two owners).
                return;
            };
            for (_, phys, count) in parsed.extents() {
                if pages.claim(phys, count, 0).is_ok() {
                    release(FrameRun::new(phys.as_u64() >> PAGE_SHIFT, count, 0));
                }
            }
        }
    }
}
