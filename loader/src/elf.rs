//! A strict ELF64 parser for kexec images: x86_64, `ET_EXEC`, `PT_LOAD` segments, nothing more.
//!
//! The input is untrusted (it is fuzzed): every offset and size computation is checked, and
//! every rejection is an [`ElfError`] naming the field, its file offset and its value. What the
//! parser accepts is exactly what the trampoline can load without relocation:
//!
//! - ELF64, little endian, version 1, `ET_EXEC`, `EM_X86_64`, `e_phentsize == 56`;
//! - no `PT_DYNAMIC` or `PT_INTERP` (nothing to relocate or interpret);
//! - 1 to [`MAX_LOAD_SEGMENTS`] `PT_LOAD` segments with `p_memsz > 0` (empty ones are
//!   skipped), each with `p_filesz <= p_memsz`, its file bytes inside the file, and
//!   `p_vaddr == p_paddr` (the next kernel starts on an identity map);
//! - each destination's page footprint inside RAM and inside one scratch range, destinations
//!   not overlapping each other (two segments may share a page, not a byte);
//! - `e_entry` inside an executable `PT_LOAD`.
//!
//! Other program headers (`PT_NOTE`, `PT_GNU_STACK`, ...) are ignored.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

use core::fmt;
use qemu_platform::addr::{PhysAddr, PhysRange};
use qemu_platform::memmap::MemoryMap;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// The most `PT_LOAD` segments an image may have (the trampoline's copy list is this long).
pub const MAX_LOAD_SEGMENTS: usize = 32;

const PHDR_LEN_BYTES: u64 = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PN_XNUM: u16 = 0xffff;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
/// `p_flags` bit: executable.
pub const PF_X: u32 = 1;

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Ehdr {
    e_ident: [u8; 16],
    e_type: U16,
    e_machine: U16,
    e_version: U32,
    e_entry: U64,
    e_phoff: U64,
    e_shoff: U64,
    e_flags: U32,
    e_ehsize: U16,
    e_phentsize: U16,
    e_phnum: U16,
    e_shentsize: U16,
    e_shnum: U16,
    e_shstrndx: U16,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Phdr {
    p_type: U32,
    p_flags: U32,
    p_offset: U64,
    p_vaddr: U64,
    p_paddr: U64,
    p_filesz: U64,
    p_memsz: U64,
    p_align: U64,
}

// File offsets of the header fields we check, for error messages.
const OFF_EI_MAG: u64 = 0;
const OFF_EI_CLASS: u64 = 4;
const OFF_EI_DATA: u64 = 5;
const OFF_EI_VERSION: u64 = 6;
const OFF_E_TYPE: u64 = 16;
const OFF_E_MACHINE: u64 = 18;
const OFF_E_VERSION: u64 = 20;
const OFF_E_ENTRY: u64 = 24;
const OFF_E_PHOFF: u64 = 32;
const OFF_E_PHENTSIZE: u64 = 54;
const OFF_E_PHNUM: u64 = 56;
// Offsets inside a program header.
const OFF_P_TYPE: u64 = 0;
const OFF_P_OFFSET: u64 = 8;
const OFF_P_VADDR: u64 = 16;
const OFF_P_PADDR: u64 = 24;
const OFF_P_FILESZ: u64 = 32;
const OFF_P_MEMSZ: u64 = 40;

/// What is wrong with the field an [`ElfError`] names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ElfProblem {
    /// The structure holding the field runs past the end of the file.
    Truncated {
        /// The file's length.
        file_len_bytes: u64,
    },
    /// The value must be exactly `expected`.
    Unsupported {
        /// The only accepted value.
        expected: u64,
    },
    /// A program header of a type that needs relocation or an interpreter.
    NeedsDynamicLinking,
    /// No `PT_LOAD` segment with bytes in memory.
    NoLoadSegments,
    /// More than [`MAX_LOAD_SEGMENTS`] `PT_LOAD` segments.
    TooManyLoadSegments,
    /// `p_filesz > p_memsz`.
    FileszExceedsMemsz {
        /// The segment's `p_memsz`.
        memsz: u64,
    },
    /// The segment's file bytes run past the end of the file (or past 2^64).
    OutsideFile {
        /// The file's length.
        file_len_bytes: u64,
    },
    /// The destination runs past 2^64.
    AddressOverflow,
    /// `p_vaddr != p_paddr`: the image is not linked for an identity map.
    VirtualNotPhysical {
        /// The segment's `p_paddr`.
        paddr: u64,
    },
    /// The destination's pages are not all RAM.
    OutsideRam,
    /// The destination's pages are not inside one scratch range.
    OutsideScratch,
    /// The destination overlaps another segment's.
    OverlapsSegment {
        /// The other segment's program header index.
        other_phdr: u16,
    },
    /// `e_entry` is not inside an executable `PT_LOAD` segment.
    EntryNotInCode,
}

/// A rejected ELF image: which field, where, what value, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ElfError {
    /// The field's name (`e_machine`, `p_filesz`, ...).
    pub field: &'static str,
    /// The program header it belongs to, if any.
    pub phdr: Option<u16>,
    /// The field's offset in the file.
    pub offset: u64,
    /// The field's value.
    pub value: u64,
    /// What is wrong with it.
    pub problem: ElfProblem,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ELF ")?;
        if let Some(index) = self.phdr {
            write!(f, "program header {index} ")?;
        }
        write!(
            f,
            "field {} at file offset {:#x} = {:#x}: ",
            self.field, self.offset, self.value
        )?;
        match self.problem {
            ElfProblem::Truncated { file_len_bytes } => {
                write!(f, "runs past the end of the {file_len_bytes}-byte file")
            }
            ElfProblem::Unsupported { expected } => write!(f, "unsupported, must be {expected:#x}"),
            ElfProblem::NeedsDynamicLinking => {
                write!(
                    f,
                    "PT_DYNAMIC/PT_INTERP: the image needs relocation, which kexec does not do"
                )
            }
            ElfProblem::NoLoadSegments => write!(f, "no PT_LOAD segment with bytes in memory"),
            ElfProblem::TooManyLoadSegments => {
                write!(f, "more than {MAX_LOAD_SEGMENTS} PT_LOAD segments")
            }
            ElfProblem::FileszExceedsMemsz { memsz } => write!(f, "exceeds p_memsz {memsz:#x}"),
            ElfProblem::OutsideFile { file_len_bytes } => {
                write!(
                    f,
                    "segment bytes run past the end of the {file_len_bytes}-byte file"
                )
            }
            ElfProblem::AddressOverflow => write!(f, "destination runs past 2^64"),
            ElfProblem::VirtualNotPhysical { paddr } => {
                write!(
                    f,
                    "differs from p_paddr {paddr:#x}: not linked for an identity map"
                )
            }
            ElfProblem::OutsideRam => write!(f, "destination pages are not all RAM"),
            ElfProblem::OutsideScratch => {
                write!(f, "destination pages are not inside scratch memory")
            }
            ElfProblem::OverlapsSegment { other_phdr } => {
                write!(f, "destination overlaps program header {other_phdr}'s")
            }
            ElfProblem::EntryNotInCode => write!(f, "not inside an executable PT_LOAD segment"),
        }
    }
}

/// One `PT_LOAD` segment to load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoadSegment {
    /// Its program header's index.
    pub phdr_index: u16,
    /// Where its file bytes start in the file.
    pub file_offset: u64,
    /// `p_filesz`: bytes copied from the file.
    pub file_len_bytes: u64,
    /// `[p_paddr, p_paddr + p_memsz)`: where it goes; the bytes past `p_filesz` are zeroed.
    pub dest: PhysRange,
    /// `p_flags`.
    pub flags: u32,
}

/// A parsed, placement-checked kexec image.
#[derive(Clone, Debug)]
pub struct ParsedElf {
    /// `e_entry` (physical: the image is identity linked).
    pub entry: PhysAddr,
    /// The `PT_LOAD` segments with bytes in memory, in program-header order.
    pub segments: heapless::Vec<LoadSegment, MAX_LOAD_SEGMENTS>,
}

fn header_error(field: &'static str, offset: u64, value: u64, problem: ElfProblem) -> ElfError {
    ElfError {
        field,
        phdr: None,
        offset,
        value,
        problem,
    }
}

/// Parses `elf` and checks every segment's placement against `ram` and `scratch` (sorted,
/// merged ranges).
pub fn parse(elf: &[u8], ram: &MemoryMap, scratch: &[PhysRange]) -> Result<ParsedElf, ElfError> {
    let file_len_bytes = elf.len() as u64;
    let (ehdr, _) = Elf64Ehdr::read_from_prefix(elf).map_err(|_| {
        header_error(
            "e_ident",
            OFF_EI_MAG,
            file_len_bytes,
            ElfProblem::Truncated { file_len_bytes },
        )
    })?;

    let ident = ehdr.e_ident;
    let [m0, m1, m2, m3, class, data, version, ..] = ident;
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    let expected_magic = u32::from_le_bytes(*b"\x7fELF");
    let exact = |field, offset, value: u64, expected: u64| {
        if value == expected {
            Ok(())
        } else {
            Err(header_error(
                field,
                offset,
                value,
                ElfProblem::Unsupported { expected },
            ))
        }
    };
    exact(
        "e_ident[EI_MAG]",
        OFF_EI_MAG,
        u64::from(magic),
        u64::from(expected_magic),
    )?;
    exact(
        "e_ident[EI_CLASS]",
        OFF_EI_CLASS,
        u64::from(class),
        u64::from(ELFCLASS64),
    )?;
    exact(
        "e_ident[EI_DATA]",
        OFF_EI_DATA,
        u64::from(data),
        u64::from(ELFDATA2LSB),
    )?;
    exact(
        "e_ident[EI_VERSION]",
        OFF_EI_VERSION,
        u64::from(version),
        u64::from(EV_CURRENT),
    )?;
    exact(
        "e_type",
        OFF_E_TYPE,
        u64::from(ehdr.e_type.get()),
        u64::from(ET_EXEC),
    )?;
    exact(
        "e_machine",
        OFF_E_MACHINE,
        u64::from(ehdr.e_machine.get()),
        u64::from(EM_X86_64),
    )?;
    exact(
        "e_version",
        OFF_E_VERSION,
        u64::from(ehdr.e_version.get()),
        u64::from(EV_CURRENT),
    )?;
    exact(
        "e_phentsize",
        OFF_E_PHENTSIZE,
        u64::from(ehdr.e_phentsize.get()),
        PHDR_LEN_BYTES,
    )?;

    let phnum = ehdr.e_phnum.get();
    if phnum == PN_XNUM {
        // Extended numbering keeps the real count in section header 0: not for kernels.
        return Err(header_error(
            "e_phnum",
            OFF_E_PHNUM,
            u64::from(phnum),
            ElfProblem::Unsupported {
                expected: u64::from(u16::MAX.saturating_sub(1)),
            },
        ));
    }
    let phoff = ehdr.e_phoff.get();
    let table_end = u64::from(phnum)
        .checked_mul(PHDR_LEN_BYTES)
        .and_then(|table_len| phoff.checked_add(table_len))
        .filter(|&end| end <= file_len_bytes);
    if table_end.is_none() {
        return Err(header_error(
            "e_phoff",
            OFF_E_PHOFF,
            phoff,
            ElfProblem::Truncated { file_len_bytes },
        ));
    }

    let mut segments: heapless::Vec<LoadSegment, MAX_LOAD_SEGMENTS> = heapless::Vec::new();
    for index in 0..phnum {
        // In bounds: the whole table was checked against the file above.
        let phdr_offset = phoff.saturating_add(u64::from(index).saturating_mul(PHDR_LEN_BYTES));
        let field_error = |field: &'static str, field_offset: u64, value: u64, problem| ElfError {
            field,
            phdr: Some(index),
            offset: phdr_offset.saturating_add(field_offset),
            value,
            problem,
        };
        let phdr = usize::try_from(phdr_offset)
            .ok()
            .and_then(|start| elf.get(start..))
            .and_then(|rest| Elf64Phdr::read_from_prefix(rest).ok())
            .map(|(phdr, _)| phdr)
            .ok_or_else(|| {
                field_error(
                    "p_type",
                    OFF_P_TYPE,
                    phdr_offset,
                    ElfProblem::Truncated { file_len_bytes },
                )
            })?;

        let p_type = phdr.p_type.get();
        if p_type == PT_DYNAMIC || p_type == PT_INTERP {
            return Err(field_error(
                "p_type",
                OFF_P_TYPE,
                u64::from(p_type),
                ElfProblem::NeedsDynamicLinking,
            ));
        }
        if p_type != PT_LOAD {
            continue;
        }
        let filesz = phdr.p_filesz.get();
        let memsz = phdr.p_memsz.get();
        if filesz > memsz {
            return Err(field_error(
                "p_filesz",
                OFF_P_FILESZ,
                filesz,
                ElfProblem::FileszExceedsMemsz { memsz },
            ));
        }
        let offset = phdr.p_offset.get();
        match offset.checked_add(filesz) {
            Some(end) if end <= file_len_bytes => {}
            _ => {
                return Err(field_error(
                    "p_offset",
                    OFF_P_OFFSET,
                    offset,
                    ElfProblem::OutsideFile { file_len_bytes },
                ));
            }
        }
        if memsz == 0 {
            continue;
        }
        let paddr = phdr.p_paddr.get();
        let vaddr = phdr.p_vaddr.get();
        if vaddr != paddr {
            return Err(field_error(
                "p_vaddr",
                OFF_P_VADDR,
                vaddr,
                ElfProblem::VirtualNotPhysical { paddr },
            ));
        }
        let dest = PhysRange::new(PhysAddr::new(paddr), memsz).ok_or_else(|| {
            field_error("p_memsz", OFF_P_MEMSZ, memsz, ElfProblem::AddressOverflow)
        })?;
        let footprint = dest.page_footprint().ok_or_else(|| {
            field_error("p_memsz", OFF_P_MEMSZ, memsz, ElfProblem::AddressOverflow)
        })?;
        if !ram.is_ram(footprint) {
            return Err(field_error(
                "p_paddr",
                OFF_P_PADDR,
                paddr,
                ElfProblem::OutsideRam,
            ));
        }
        if !scratch.iter().any(|range| range.contains_range(footprint)) {
            return Err(field_error(
                "p_paddr",
                OFF_P_PADDR,
                paddr,
                ElfProblem::OutsideScratch,
            ));
        }
        if let Some(other) = segments.iter().find(|other| other.dest.overlaps(dest)) {
            return Err(field_error(
                "p_paddr",
                OFF_P_PADDR,
                paddr,
                ElfProblem::OverlapsSegment {
                    other_phdr: other.phdr_index,
                },
            ));
        }
        let segment = LoadSegment {
            phdr_index: index,
            file_offset: offset,
            file_len_bytes: filesz,
            dest,
            flags: phdr.p_flags.get(),
        };
        if segments.push(segment).is_err() {
            return Err(field_error(
                "p_type",
                OFF_P_TYPE,
                u64::from(p_type),
                ElfProblem::TooManyLoadSegments,
            ));
        }
    }

    if segments.is_empty() {
        return Err(header_error(
            "e_phnum",
            OFF_E_PHNUM,
            u64::from(phnum),
            ElfProblem::NoLoadSegments,
        ));
    }
    let entry = PhysAddr::new(ehdr.e_entry.get());
    if !segments
        .iter()
        .any(|segment| segment.flags & PF_X != 0 && segment.dest.contains(entry))
    {
        return Err(header_error(
            "e_entry",
            OFF_E_ENTRY,
            entry.as_u64(),
            ElfProblem::EntryNotInCode,
        ));
    }
    Ok(ParsedElf { entry, segments })
}

impl LoadSegment {
    /// The segment's file bytes in `elf` (the file [`parse`] accepted).
    pub fn file_bytes<'a>(&self, elf: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.file_offset).ok()?;
        let len = usize::try_from(self.file_len_bytes).ok()?;
        elf.get(start..start.checked_add(len)?)
    }

    /// Bytes past the file bytes that are zeroed (`p_memsz - p_filesz`).
    pub fn zero_len_bytes(&self) -> u64 {
        self.dest.len_bytes().saturating_sub(self.file_len_bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use qemu_platform::memmap::RawMemoryEntry;

    /// Builds a small valid ELF: two PT_LOAD segments (code at 16 MiB, data+bss after it), a
    /// PT_NOTE, and the file bytes after the headers.
    pub(crate) struct ElfBuilder {
        pub(crate) ehdr: [u8; 64],
        pub(crate) phdrs: Vec<[u8; 56]>,
        pub(crate) body: Vec<u8>,
    }

    pub(crate) fn phdr(
        p_type: u32,
        flags: u32,
        offset: u64,
        addr: u64,
        filesz: u64,
        memsz: u64,
    ) -> [u8; 56] {
        let mut bytes = [0u8; 56];
        bytes[0..4].copy_from_slice(&p_type.to_le_bytes());
        bytes[4..8].copy_from_slice(&flags.to_le_bytes());
        bytes[8..16].copy_from_slice(&offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&addr.to_le_bytes());
        bytes[24..32].copy_from_slice(&addr.to_le_bytes());
        bytes[32..40].copy_from_slice(&filesz.to_le_bytes());
        bytes[40..48].copy_from_slice(&memsz.to_le_bytes());
        bytes[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        bytes
    }

    impl ElfBuilder {
        pub(crate) fn valid() -> ElfBuilder {
            let mut ehdr = [0u8; 64];
            ehdr[0..4].copy_from_slice(b"\x7fELF");
            ehdr[4] = 2;
            ehdr[5] = 1;
            ehdr[6] = 1;
            ehdr[16..18].copy_from_slice(&2u16.to_le_bytes());
            ehdr[18..20].copy_from_slice(&62u16.to_le_bytes());
            ehdr[20..24].copy_from_slice(&1u32.to_le_bytes());
            ehdr[24..32].copy_from_slice(&0x100_0010u64.to_le_bytes());
            ehdr[32..40].copy_from_slice(&64u64.to_le_bytes());
            ehdr[52..54].copy_from_slice(&64u16.to_le_bytes());
            ehdr[54..56].copy_from_slice(&56u16.to_le_bytes());
            let body_offset = 0x1000u64;
            let phdrs = vec![
                phdr(PT_LOAD, 5, body_offset, 0x100_0000, 0x1000, 0x1000),
                phdr(4, 4, body_offset, 0x100_0000, 0x10, 0x10),
                phdr(PT_LOAD, 6, body_offset + 0x1000, 0x100_1000, 0x800, 0x3000),
            ];
            let mut body = vec![0u8; 0x1800];
            for (index, byte) in body.iter_mut().enumerate() {
                *byte = (index % 251) as u8;
            }
            ElfBuilder { ehdr, phdrs, body }
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut ehdr = self.ehdr;
            ehdr[56..58].copy_from_slice(&(self.phdrs.len() as u16).to_le_bytes());
            let mut bytes = ehdr.to_vec();
            for phdr in &self.phdrs {
                bytes.extend_from_slice(phdr);
            }
            bytes.resize(0x1000, 0);
            bytes.extend_from_slice(&self.body);
            bytes
        }
    }

    pub(crate) fn ram() -> MemoryMap {
        MemoryMap::from_entries([
            RawMemoryEntry {
                addr: 0,
                len_bytes: 0x9_fc00,
                type_number: 1,
            },
            RawMemoryEntry {
                addr: 0x10_0000,
                len_bytes: 0x7f0_0000,
                type_number: 1,
            },
        ])
        .unwrap()
    }

    pub(crate) fn scratch() -> [PhysRange; 1] {
        [PhysRange::from_bounds(PhysAddr::new(0x10_0000), PhysAddr::new(0x400_0000)).unwrap()]
    }

    fn parse_bytes(bytes: &[u8]) -> Result<ParsedElf, ElfError> {
        parse(bytes, &ram(), &scratch())
    }

    #[test]
    fn accepts_a_well_formed_image() {
        let parsed = parse_bytes(&ElfBuilder::valid().bytes()).unwrap();
        assert_eq!(parsed.entry, PhysAddr::new(0x100_0010));
        assert_eq!(parsed.segments.len(), 2, "PT_NOTE is not loaded");
        let data = parsed.segments[1];
        assert_eq!(data.phdr_index, 2);
        assert_eq!(
            data.dest,
            PhysRange::new(PhysAddr::new(0x100_1000), 0x3000).unwrap()
        );
        assert_eq!(data.file_len_bytes, 0x800);
        assert_eq!(data.zero_len_bytes(), 0x2800);
    }

    fn rejected(mutate: impl FnOnce(&mut ElfBuilder)) -> ElfError {
        let mut builder = ElfBuilder::valid();
        mutate(&mut builder);
        parse_bytes(&builder.bytes()).unwrap_err()
    }

    #[test]
    fn names_field_offset_and_value() {
        let error = rejected(|b| b.ehdr[18..20].copy_from_slice(&3u16.to_le_bytes()));
        assert_eq!(error.field, "e_machine");
        assert_eq!(error.offset, 18);
        assert_eq!(error.value, 3);
        assert_eq!(
            error.to_string(),
            "ELF field e_machine at file offset 0x12 = 0x3: unsupported, must be 0x3e"
        );

        let error = rejected(|b| b.phdrs[2][32..40].copy_from_slice(&0x4000u64.to_le_bytes()));
        assert_eq!(
            error.to_string(),
            "ELF program header 2 field p_filesz at file offset 0xd0 = 0x4000: exceeds p_memsz 0x3000"
        );
    }

    #[test]
    fn rejects_each_header_field() {
        assert_eq!(rejected(|b| b.ehdr[0] = 0).field, "e_ident[EI_MAG]");
        assert_eq!(rejected(|b| b.ehdr[4] = 1).field, "e_ident[EI_CLASS]");
        assert_eq!(rejected(|b| b.ehdr[5] = 2).field, "e_ident[EI_DATA]");
        assert_eq!(rejected(|b| b.ehdr[6] = 0).field, "e_ident[EI_VERSION]");
        assert_eq!(rejected(|b| b.ehdr[16] = 3).field, "e_type");
        assert_eq!(rejected(|b| b.ehdr[20] = 0).field, "e_version");
        assert_eq!(rejected(|b| b.ehdr[54] = 32).field, "e_phentsize");
        let error = rejected(|b| b.ehdr[32..40].copy_from_slice(&0xfff0u64.to_le_bytes()));
        assert_eq!(
            (error.field, error.problem),
            (
                "e_phoff",
                ElfProblem::Truncated {
                    file_len_bytes: 0x2800
                }
            )
        );
        let error = rejected(|b| b.ehdr[32..40].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert_eq!(error.field, "e_phoff");
        let error = rejected(|b| b.ehdr[24..32].copy_from_slice(&0x100_1010u64.to_le_bytes()));
        assert_eq!(
            (error.field, error.problem),
            ("e_entry", ElfProblem::EntryNotInCode)
        );
    }

    #[test]
    fn rejects_each_segment_problem() {
        let error = rejected(|b| b.phdrs[0][8..16].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert_eq!((error.field, error.phdr), ("p_offset", Some(0)));
        let error = rejected(|b| b.phdrs[2][8..16].copy_from_slice(&0x2001u64.to_le_bytes()));
        assert_eq!(
            error.problem,
            ElfProblem::OutsideFile {
                file_len_bytes: 0x2800
            }
        );
        let error = rejected(|b| b.phdrs[0][16..24].copy_from_slice(&0x200_0000u64.to_le_bytes()));
        assert_eq!(
            error.problem,
            ElfProblem::VirtualNotPhysical { paddr: 0x100_0000 }
        );
        let error = rejected(|b| b.phdrs[2][40..48].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert_eq!(
            (error.field, error.problem),
            ("p_memsz", ElfProblem::AddressOverflow)
        );
        // Below RAM's hole, in the legacy area: not RAM.
        let error = rejected(|b| b.phdrs[2] = phdr(PT_LOAD, 6, 0x1000, 0xa_0000, 0x10, 0x10));
        assert_eq!(error.problem, ElfProblem::OutsideRam);
        let error = rejected(|b| b.phdrs[2] = phdr(PT_LOAD, 6, 0x1000, 0x500_0000, 0x10, 0x10));
        assert_eq!(error.problem, ElfProblem::OutsideScratch);
        let error = rejected(|b| b.phdrs[2] = phdr(PT_LOAD, 6, 0x1000, 0x100_0800, 0x10, 0x10));
        assert_eq!(error.problem, ElfProblem::OverlapsSegment { other_phdr: 0 });
        let error = rejected(|b| b.phdrs[1] = phdr(PT_DYNAMIC, 6, 0x1000, 0, 0, 0));
        assert_eq!(error.problem, ElfProblem::NeedsDynamicLinking);
        let error = rejected(|b| {
            b.phdrs = (0..33)
                .map(|i| phdr(PT_LOAD, 5, 0x1000, 0x100_0000 + i * 0x1000, 0x10, 0x10))
                .collect()
        });
        assert_eq!(error.problem, ElfProblem::TooManyLoadSegments);
        let error = rejected(|b| b.phdrs.clear());
        assert_eq!(error.problem, ElfProblem::NoLoadSegments);
        let mut bytes = ElfBuilder::valid().bytes();
        bytes[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(parse_bytes(&bytes).unwrap_err().field, "e_phnum");
    }

    #[test]
    fn segments_may_share_a_page_but_not_a_byte() {
        let mut builder = ElfBuilder::valid();
        builder.phdrs[0] = phdr(PT_LOAD, 5, 0x1000, 0x100_0000, 0x800, 0x800);
        builder.phdrs[2] = phdr(PT_LOAD, 6, 0x1800, 0x100_0800, 0x800, 0x800);
        assert!(parse_bytes(&builder.bytes()).is_ok());
    }

    #[test]
    fn short_inputs_never_panic() {
        let bytes = ElfBuilder::valid().bytes();
        for len in 0..bytes.len() {
            assert!(parse_bytes(&bytes[..len]).is_err());
        }
        // Flip every byte of the headers one at a time: any outcome but a panic is fine.
        for index in 0..(64 + 3 * 56) {
            let mut mutated = bytes.clone();
            mutated[index] ^= 0xff;
            let _ = parse_bytes(&mutated);
        }
    }
}
