//! A loaded kexec image: the next kernel's segments staged in heap buffers, with digests.
//!
//! [`KexecImage::load`] parses the ELF ([`crate::elf`]), copies each segment's file bytes into
//! a heap buffer and records the SHA-256 of each staged buffer. [`KexecImage::verify`]
//! recomputes them all, as Linux's purgatory does, and names the first damaged segment. Nothing
//! is written to the destinations until the trampoline runs (see [`crate::plan`] and
//! `crate::trampoline`), so a refused image leaves the running kernel intact.
//!
//! The staging buffers come from the global heap, which must lie outside scratch memory (the
//! platform places it there): the trampoline reads them while it overwrites scratch.
//! [`crate::plan::plan`] checks that no staged buffer overlaps a destination.

use crate::elf::{self, ElfError, MAX_LOAD_SEGMENTS, PF_X};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use qemu_platform::addr::{PhysAddr, PhysRange};
use qemu_platform::memmap::MemoryMap;
use sha2::{Digest, Sha256};

/// The most scratch ranges a kernel hands on.
pub const MAX_SCRATCH_RANGES: usize = 8;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Why an image cannot be loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LoadError {
    /// The ELF is malformed or misplaced.
    Elf(ElfError),
    /// The scratch list is unusable.
    Scratch(ScratchError),
    /// No heap memory to stage a segment.
    OutOfMemory {
        /// The program header whose segment did not fit.
        phdr_index: u16,
        /// Bytes asked for.
        len_bytes: u64,
    },
}

/// What is wrong with the declared scratch ranges.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScratchError {
    /// No scratch range at all.
    Empty,
    /// More than [`MAX_SCRATCH_RANGES`] ranges.
    TooMany,
    /// A range is empty or not page aligned.
    NotPageAligned {
        /// The range.
        range: PhysRange,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Elf(error) => write!(f, "{error}"),
            LoadError::Scratch(ScratchError::Empty) => write!(f, "no scratch memory declared"),
            LoadError::Scratch(ScratchError::TooMany) => {
                write!(f, "more than {MAX_SCRATCH_RANGES} scratch ranges")
            }
            LoadError::Scratch(ScratchError::NotPageAligned { range }) => {
                write!(f, "scratch range {range} is empty or not page aligned")
            }
            LoadError::OutOfMemory {
                phdr_index,
                len_bytes,
            } => write!(
                f,
                "out of heap memory staging program header {phdr_index} ({len_bytes} bytes)"
            ),
        }
    }
}

impl From<ElfError> for LoadError {
    fn from(error: ElfError) -> LoadError {
        LoadError::Elf(error)
    }
}

/// A staged segment whose digest no longer matches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VerifyError {
    /// Index in [`KexecImage::segments`].
    pub segment: usize,
    /// Its program header's index in the ELF.
    pub phdr_index: u16,
    /// Where it was to be loaded.
    pub dest: PhysRange,
    /// The digest recorded at load time.
    pub expected: Sha256Digest,
    /// The digest of the staged bytes now.
    pub actual: Sha256Digest,
}

/// Hex of a digest's first 8 bytes, for messages.
pub struct ShortDigest<'a>(pub &'a Sha256Digest);

impl fmt::Display for ShortDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {} (program header {}, destination {}) is damaged: sha256 {}… expected {}…",
            self.segment,
            self.phdr_index,
            self.dest,
            ShortDigest(&self.actual),
            ShortDigest(&self.expected)
        )
    }
}

/// One segment, staged.
pub struct StagedSegment {
    phdr_index: u16,
    dest: PhysRange,
    staged: Box<[u8]>,
    digest: Sha256Digest,
    executable: bool,
}

impl StagedSegment {
    /// Its program header's index in the ELF.
    pub fn phdr_index(&self) -> u16 {
        self.phdr_index
    }

    /// `[p_paddr, p_paddr + p_memsz)`.
    pub fn dest(&self) -> PhysRange {
        self.dest
    }

    /// Bytes copied from the staging buffer (`p_filesz`).
    pub fn file_len_bytes(&self) -> u64 {
        self.staged.len() as u64
    }

    /// Bytes zeroed after them (`p_memsz - p_filesz`).
    pub fn zero_len_bytes(&self) -> u64 {
        self.dest.len_bytes().saturating_sub(self.file_len_bytes())
    }

    /// The staged bytes.
    pub fn staged(&self) -> &[u8] {
        &self.staged
    }

    /// Where the staged bytes are. On bare metal the heap is identity mapped, so this is also
    /// their physical address.
    pub fn staged_addr(&self) -> PhysAddr {
        PhysAddr::new(self.staged.as_ptr().addr() as u64)
    }

    /// The SHA-256 recorded when the segment was staged.
    pub fn digest(&self) -> &Sha256Digest {
        &self.digest
    }

    /// Whether the segment is executable (`PF_X`).
    pub fn is_executable(&self) -> bool {
        self.executable
    }
}

/// The next kernel, parsed, checked and staged: ready to be verified and executed.
pub struct KexecImage {
    entry: PhysAddr,
    segments: Vec<StagedSegment>,
    scratch: heapless::Vec<PhysRange, MAX_SCRATCH_RANGES>,
    memory_map: MemoryMap,
}

impl KexecImage {
    /// Parses `elf`, checks every destination against `memory_map` and `scratch`, and stages
    /// every segment with its digest. Never panics on any input.
    pub fn load(
        elf: &[u8],
        scratch: &[PhysRange],
        memory_map: &MemoryMap,
    ) -> Result<KexecImage, LoadError> {
        let scratch = normalise_scratch(scratch).map_err(LoadError::Scratch)?;
        let parsed = elf::parse(elf, memory_map, &scratch)?;
        let mut segments = Vec::new();
        segments
            .try_reserve_exact(parsed.segments.len())
            .map_err(|_| LoadError::OutOfMemory {
                phdr_index: 0,
                len_bytes: MAX_LOAD_SEGMENTS as u64,
            })?;
        for segment in &parsed.segments {
            let out_of_memory = LoadError::OutOfMemory {
                phdr_index: segment.phdr_index,
                len_bytes: segment.file_len_bytes,
            };
            // `parse` checked the bytes are inside the file; this cannot fail.
            let bytes = segment.file_bytes(elf).ok_or(out_of_memory)?;
            let mut staged = Vec::new();
            staged
                .try_reserve_exact(bytes.len())
                .map_err(|_| out_of_memory)?;
            staged.extend_from_slice(bytes);
            let staged = staged.into_boxed_slice();
            let digest: Sha256Digest = Sha256::digest(&staged).into();
            segments.push(StagedSegment {
                phdr_index: segment.phdr_index,
                dest: segment.dest,
                staged,
                digest,
                executable: segment.flags & PF_X != 0,
            });
        }
        Ok(KexecImage {
            entry: parsed.entry,
            segments,
            scratch,
            memory_map: memory_map.clone(),
        })
    }

    /// Recomputes every staged segment's digest; the first mismatch is the error.
    pub fn verify(&self) -> Result<(), VerifyError> {
        for (index, segment) in self.segments.iter().enumerate() {
            let actual: Sha256Digest = Sha256::digest(&segment.staged).into();
            if actual != segment.digest {
                return Err(VerifyError {
                    segment: index,
                    phdr_index: segment.phdr_index,
                    dest: segment.dest,
                    expected: segment.digest,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Test hook (the `bad-kernel` scenario): flips one byte in the middle of staged segment
    /// `index` after its digest was recorded, as a stray write would. Returns the segment's
    /// destination, or `None` if there is no such segment or it has no file bytes.
    pub fn damage_staged_segment(&mut self, index: usize) -> Option<PhysRange> {
        let segment = self.segments.get_mut(index)?;
        let middle = segment.staged.len() / 2;
        let byte = segment.staged.get_mut(middle)?;
        *byte ^= 0x5a;
        Some(segment.dest)
    }

    /// The entry point (`e_entry`).
    pub fn entry(&self) -> PhysAddr {
        self.entry
    }

    /// The staged segments, in program-header order.
    pub fn segments(&self) -> &[StagedSegment] {
        &self.segments
    }

    /// The segments' destinations.
    pub fn destinations(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.segments.iter().map(StagedSegment::dest)
    }

    /// The scratch ranges (sorted, merged).
    pub fn scratch(&self) -> &[PhysRange] {
        &self.scratch
    }

    /// The memory map the image was checked against (handed to the next kernel).
    pub fn memory_map(&self) -> &MemoryMap {
        &self.memory_map
    }
}

/// Sorts and merges the scratch ranges; each must be page aligned and non-empty.
pub fn normalise_scratch(
    scratch: &[PhysRange],
) -> Result<heapless::Vec<PhysRange, MAX_SCRATCH_RANGES>, ScratchError> {
    if scratch.is_empty() {
        return Err(ScratchError::Empty);
    }
    let mut sorted: heapless::Vec<PhysRange, MAX_SCRATCH_RANGES> =
        heapless::Vec::from_slice(scratch).map_err(|_| ScratchError::TooMany)?;
    if let Some(&range) = sorted
        .iter()
        .find(|range| range.is_empty() || !range.is_page_aligned())
    {
        return Err(ScratchError::NotPageAligned { range });
    }
    sorted.sort_unstable();
    let mut merged: heapless::Vec<PhysRange, MAX_SCRATCH_RANGES> = heapless::Vec::new();
    for range in sorted {
        if let Some(last) = merged.last_mut()
            && range.start() <= last.end()
        {
            let end = last.end().max(range.end());
            *last = PhysRange::from_bounds(last.start(), end).unwrap_or(*last);
            continue;
        }
        // At most as many as the input, which fitted.
        let _ = merged.push(range);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{ElfBuilder, ram, scratch};

    #[test]
    fn stages_each_segment_with_its_digest() {
        let bytes = ElfBuilder::valid().bytes();
        let image = KexecImage::load(&bytes, &scratch(), &ram()).unwrap();
        assert_eq!(image.segments().len(), 2);
        let data = &image.segments()[1];
        assert_eq!(data.staged(), &bytes[0x2000..0x2800]);
        assert_eq!(data.zero_len_bytes(), 0x2800);
        assert_eq!(
            data.digest(),
            &<[u8; 32]>::from(Sha256::digest(&bytes[0x2000..0x2800]))
        );
        assert!(image.segments()[0].is_executable());
        image.verify().unwrap();
    }

    #[test]
    fn verify_names_the_damaged_segment() {
        let mut image = KexecImage::load(&ElfBuilder::valid().bytes(), &scratch(), &ram()).unwrap();
        let dest = image.damage_staged_segment(1).unwrap();
        let error = image.verify().unwrap_err();
        assert_eq!((error.segment, error.phdr_index, error.dest), (1, 2, dest));
        assert_ne!(error.expected, error.actual);
        assert!(error.to_string().starts_with(
            "segment 1 (program header 2, destination [0x1001000, 0x1004000)) is damaged"
        ));
        assert_eq!(image.damage_staged_segment(7), None);
    }

    #[test]
    fn scratch_is_checked_and_merged() {
        let range = |start: u64, end: u64| {
            PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
        };
        assert_eq!(normalise_scratch(&[]), Err(ScratchError::Empty));
        assert_eq!(
            normalise_scratch(&[range(0x1000, 0x1800)]),
            Err(ScratchError::NotPageAligned {
                range: range(0x1000, 0x1800)
            })
        );
        assert_eq!(
            normalise_scratch(&[
                range(0x3000, 0x5000),
                range(0x1000, 0x3000),
                range(0x8000, 0x9000)
            ])
            .unwrap()
            .as_slice(),
            &[range(0x1000, 0x5000), range(0x8000, 0x9000)]
        );
        let bytes = ElfBuilder::valid().bytes();
        assert!(matches!(
            KexecImage::load(&bytes, &[], &ram()),
            Err(LoadError::Scratch(ScratchError::Empty))
        ));
    }
}
