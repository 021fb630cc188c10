//! The kexec entry protocol's data: [`BootInfo`], the magic numbers, and [`Handoff`].
//!
//! `docs/ENTRY.md` is the specification; this module is its implementation, shared by the
//! loader (which writes a `BootInfo` into scratch) and every next kernel (which reads and
//! validates it). `BootInfo` is a fixed-size `repr(C)` structure of little-endian integers with
//! no padding and no pointers, so it can be read as plain bytes from any address.

use crate::image::MAX_SCRATCH_RANGES;
use core::fmt;
use qemu_platform::addr::{PhysAddr, PhysRange};
use qemu_platform::memmap::{MAX_MEMORY_REGIONS, MemoryMap, MemoryMapError, RawMemoryEntry};
use qemu_platform::pvh::{PhysReader, UnreadableMemory};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `%rdx` at kexec entry.
pub const KEXEC_ENTRY_MAGIC: u64 = u64::from_le_bytes(*b"KEXEC-64");
/// `BootInfo::magic`.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"BOOTINFO");
/// The `BootInfo` layout version this code writes and reads.
pub const BOOT_INFO_VERSION: u32 = 1;
/// Capacity of `BootInfo::in_use`.
pub const MAX_IN_USE_RANGES: usize = 48;
/// Capacity of `BootInfo::cmdline`.
pub const BOOT_CMDLINE_MAX_BYTES: usize = 512;

/// One memory-map entry (e820 type numbers).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BootMemoryRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len_bytes: u64,
    /// e820 type (1 = RAM).
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

/// A physical range.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BootRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len_bytes: u64,
}

/// A range of scratch (or other) memory in use at entry, and what it holds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BootInUse {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len_bytes: u64,
    /// An [`InUseKind`] number (unknown numbers must still be avoided).
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

/// What an in-use range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InUseKind {
    /// A page footprint of one of the running kernel's `PT_LOAD` segments.
    KernelImage = 1,
    /// The identity-map page tables `%cr3` points at.
    PageTables = 2,
    /// The stack `%rsp` points into.
    Stack = 3,
    /// This `BootInfo`.
    BootInfo = 4,
    /// The trampoline page (code, GDT, copy list).
    Trampoline = 5,
    /// The ELF file of the next kernel passed on (`BootInfo::initrd_*`).
    Initrd = 6,
}

impl InUseKind {
    /// The kind for a number, if known.
    pub const fn from_u32(value: u32) -> Option<InUseKind> {
        match value {
            1 => Some(InUseKind::KernelImage),
            2 => Some(InUseKind::PageTables),
            3 => Some(InUseKind::Stack),
            4 => Some(InUseKind::BootInfo),
            5 => Some(InUseKind::Trampoline),
            6 => Some(InUseKind::Initrd),
            _ => None,
        }
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            InUseKind::KernelImage => "kernel",
            InUseKind::PageTables => "page-tables",
            InUseKind::Stack => "stack",
            InUseKind::BootInfo => "boot-info",
            InUseKind::Trampoline => "trampoline",
            InUseKind::Initrd => "initrd",
        }
    }
}

/// What the loader tells the next kernel (`%rsi` at entry). See `docs/ENTRY.md`.
#[derive(Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`BOOT_INFO_VERSION`].
    pub version: u32,
    /// `size_of::<BootInfo>()` for this version.
    pub size_bytes: u32,
    /// Physical address of the handover image; equals `%rdi`; 0 = none.
    pub handover_addr: u64,
    /// Its length in bytes (0 when there is none).
    pub handover_len_bytes: u64,
    /// Physical address of an ELF file passed on for the next kexec (QEMU's `-initrd`); 0 = none.
    pub initrd_addr: u64,
    /// Its length in bytes.
    pub initrd_len_bytes: u64,
    /// TSC frequency in Hz measured by the first kernel of the chain (0 = unknown).
    pub tsc_hz: u64,
    /// TSC at the loader's point of no return (interrupts off, about to jump to the trampoline).
    pub tsc_point_of_no_return: u64,
    /// TSC when the trampoline had copied and zeroed every segment, just before the jump.
    pub tsc_copy_done: u64,
    /// The entry point the loader jumped to.
    pub entry_addr: u64,
    /// Valid entries in `memory_map`.
    pub memory_region_count: u32,
    /// Valid entries in `scratch`.
    pub scratch_count: u32,
    /// Valid entries in `in_use`.
    pub in_use_count: u32,
    /// Valid bytes in `cmdline`.
    pub cmdline_len_bytes: u32,
    /// The memory map, sorted and merged.
    pub memory_map: [BootMemoryRegion; MAX_MEMORY_REGIONS],
    /// Scratch memory: holds nothing preserved; the next kernel allocates only here until it
    /// has reserved everything preserved.
    pub scratch: [BootRange; MAX_SCRATCH_RANGES],
    /// Ranges in use at entry that the next kernel's early allocator must avoid.
    pub in_use: [BootInUse; MAX_IN_USE_RANGES],
    /// The command line carried forward (not NUL terminated).
    pub cmdline: [u8; BOOT_CMDLINE_MAX_BYTES],
}

/// `size_of::<BootInfo>()`.
pub const BOOT_INFO_LEN_BYTES: usize = core::mem::size_of::<BootInfo>();

/// Why a `BootInfo` (or the entry registers) cannot be trusted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootInfoError {
    /// `%rdx` is not [`KEXEC_ENTRY_MAGIC`].
    BadEntryMagic {
        /// `%rdx`.
        value: u64,
    },
    /// The `BootInfo` cannot be read at `%rsi`.
    Unreadable(UnreadableMemory),
    /// `magic` is wrong.
    BadMagic {
        /// The value found.
        value: u64,
    },
    /// `version` is not one this code reads.
    UnsupportedVersion {
        /// The value found.
        value: u32,
    },
    /// `size_bytes` does not match the version's size.
    BadSize {
        /// The value found.
        value: u32,
    },
    /// A count exceeds its array.
    CountTooLarge {
        /// The count's field name.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// A range wraps past 2^64.
    RangeWraps {
        /// The array's field name.
        field: &'static str,
        /// The entry's index.
        index: usize,
    },
    /// `handover_addr` differs from `%rdi`.
    HandoverMismatch {
        /// `%rdi`.
        rdi: u64,
        /// `handover_addr`.
        handover_addr: u64,
    },
    /// A scratch range is empty or not page aligned.
    ScratchNotPageAligned {
        /// The entry's index.
        index: usize,
    },
    /// The memory map is invalid.
    MemoryMap(MemoryMapError),
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BootInfoError::BadEntryMagic { value } => {
                write!(
                    f,
                    "%rdx = {value:#x}, not the kexec entry magic {KEXEC_ENTRY_MAGIC:#x}"
                )
            }
            BootInfoError::Unreadable(UnreadableMemory { addr, len_bytes }) => {
                write!(f, "BootInfo: cannot read {len_bytes} bytes at {addr:#x}")
            }
            BootInfoError::BadMagic { value } => {
                write!(
                    f,
                    "BootInfo.magic = {value:#x}, expected {BOOT_INFO_MAGIC:#x}"
                )
            }
            BootInfoError::UnsupportedVersion { value } => {
                write!(
                    f,
                    "BootInfo.version = {value}, this kernel reads {BOOT_INFO_VERSION}"
                )
            }
            BootInfoError::BadSize { value } => {
                write!(
                    f,
                    "BootInfo.size_bytes = {value}, expected {BOOT_INFO_LEN_BYTES}"
                )
            }
            BootInfoError::CountTooLarge { field, value } => {
                write!(f, "BootInfo.{field} = {value} exceeds its array")
            }
            BootInfoError::RangeWraps { field, index } => {
                write!(f, "BootInfo.{field}[{index}] wraps past 2^64")
            }
            BootInfoError::HandoverMismatch { rdi, handover_addr } => write!(
                f,
                "%rdi = {rdi:#x} but BootInfo.handover_addr = {handover_addr:#x}"
            ),
            BootInfoError::ScratchNotPageAligned { index } => {
                write!(f, "BootInfo.scratch[{index}] is empty or not page aligned")
            }
            BootInfoError::MemoryMap(error) => write!(f, "BootInfo.memory_map: {error}"),
        }
    }
}

fn range_of(
    field: &'static str,
    index: usize,
    base: u64,
    len_bytes: u64,
) -> Result<PhysRange, BootInfoError> {
    PhysRange::new(PhysAddr::new(base), len_bytes).ok_or(BootInfoError::RangeWraps { field, index })
}

fn optional_range(base: u64, len_bytes: u64) -> Option<PhysRange> {
    if base == 0 {
        None
    } else {
        PhysRange::new(PhysAddr::new(base), len_bytes)
    }
}

impl BootInfo {
    /// An empty `BootInfo` with the magic, version and size filled in.
    pub fn new() -> BootInfo {
        let mut info = BootInfo::new_zeroed();
        info.magic = BOOT_INFO_MAGIC;
        info.version = BOOT_INFO_VERSION;
        info.size_bytes = BOOT_INFO_LEN_BYTES as u32;
        info
    }

    /// Checks the entry registers and reads and validates the `BootInfo` `%rsi` points at.
    pub fn read_at_entry(
        memory: &impl PhysReader,
        rdi: u64,
        rsi: u64,
        rdx: u64,
    ) -> Result<BootInfo, BootInfoError> {
        if rdx != KEXEC_ENTRY_MAGIC {
            return Err(BootInfoError::BadEntryMagic { value: rdx });
        }
        let mut info = BootInfo::new_zeroed();
        memory
            .read(PhysAddr::new(rsi), info.as_mut_bytes())
            .map_err(BootInfoError::Unreadable)?;
        info.validate()?;
        if info.handover_addr != rdi {
            return Err(BootInfoError::HandoverMismatch {
                rdi,
                handover_addr: info.handover_addr,
            });
        }
        Ok(info)
    }

    /// Checks magic, version, size, counts and that every range is representable.
    pub fn validate(&self) -> Result<(), BootInfoError> {
        if self.magic != BOOT_INFO_MAGIC {
            return Err(BootInfoError::BadMagic { value: self.magic });
        }
        if self.version != BOOT_INFO_VERSION {
            return Err(BootInfoError::UnsupportedVersion {
                value: self.version,
            });
        }
        if self.size_bytes as usize != BOOT_INFO_LEN_BYTES {
            return Err(BootInfoError::BadSize {
                value: self.size_bytes,
            });
        }
        let counts = [
            (
                "memory_region_count",
                self.memory_region_count,
                MAX_MEMORY_REGIONS,
            ),
            ("scratch_count", self.scratch_count, MAX_SCRATCH_RANGES),
            ("in_use_count", self.in_use_count, MAX_IN_USE_RANGES),
            (
                "cmdline_len_bytes",
                self.cmdline_len_bytes,
                BOOT_CMDLINE_MAX_BYTES,
            ),
        ];
        for (field, value, max) in counts {
            if value as usize > max {
                return Err(BootInfoError::CountTooLarge { field, value });
            }
        }
        range_of("handover", 0, self.handover_addr, self.handover_len_bytes)?;
        range_of("initrd", 0, self.initrd_addr, self.initrd_len_bytes)?;
        for (index, range) in self.scratch_entries().iter().enumerate() {
            let range = range_of("scratch", index, range.base, range.len_bytes)?;
            if range.is_empty() || !range.is_page_aligned() {
                return Err(BootInfoError::ScratchNotPageAligned { index });
            }
        }
        for (index, range) in self.in_use_entries().iter().enumerate() {
            range_of("in_use", index, range.base, range.len_bytes)?;
        }
        self.memory_map()?;
        Ok(())
    }

    /// The memory map, normalised again (a previous kernel is not trusted to have done it).
    pub fn memory_map(&self) -> Result<MemoryMap, BootInfoError> {
        let entries = self
            .memory_map
            .get(..self.memory_region_count as usize)
            .unwrap_or(&[]);
        MemoryMap::from_entries_with_ram(entries.iter().map(|region| RawMemoryEntry {
            addr: region.base,
            len_bytes: region.len_bytes,
            type_number: region.kind,
        }))
        .map_err(BootInfoError::MemoryMap)
    }

    fn scratch_entries(&self) -> &[BootRange] {
        self.scratch
            .get(..self.scratch_count as usize)
            .unwrap_or(&[])
    }

    fn in_use_entries(&self) -> &[BootInUse] {
        self.in_use.get(..self.in_use_count as usize).unwrap_or(&[])
    }

    /// The scratch ranges (valid after [`BootInfo::validate`]).
    pub fn scratch(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.scratch_entries()
            .iter()
            .filter_map(|range| PhysRange::new(PhysAddr::new(range.base), range.len_bytes))
    }

    /// The in-use ranges with their kind numbers (see [`InUseKind::from_u32`]).
    pub fn in_use(&self) -> impl Iterator<Item = (u32, PhysRange)> + '_ {
        self.in_use_entries().iter().filter_map(|range| {
            PhysRange::new(PhysAddr::new(range.base), range.len_bytes).map(|r| (range.kind, r))
        })
    }

    /// The handover image, if any.
    pub fn handover(&self) -> Option<PhysRange> {
        optional_range(self.handover_addr, self.handover_len_bytes)
    }

    /// The ELF file passed on for the next kexec, if any.
    pub fn initrd(&self) -> Option<PhysRange> {
        optional_range(self.initrd_addr, self.initrd_len_bytes)
    }

    /// The command line bytes.
    pub fn cmdline(&self) -> &[u8] {
        self.cmdline
            .get(..self.cmdline_len_bytes as usize)
            .unwrap_or(&[])
    }

    /// Appends an in-use range; `false` if the array is full.
    pub fn push_in_use(&mut self, kind: InUseKind, range: PhysRange) -> bool {
        let Some(slot) = self.in_use.get_mut(self.in_use_count as usize) else {
            return false;
        };
        *slot = BootInUse {
            base: range.start().as_u64(),
            len_bytes: range.len_bytes(),
            kind: kind as u32,
            reserved: 0,
        };
        self.in_use_count = self.in_use_count.saturating_add(1);
        true
    }
}

impl Default for BootInfo {
    fn default() -> BootInfo {
        BootInfo::new()
    }
}

/// What the running kernel hands to the next one besides the image itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Handoff<'a> {
    /// The handover image (`%rdi`); must lie outside scratch. `None` = no handover.
    pub handover: Option<PhysRange>,
    /// An ELF file the next kernel may kexec in turn (passed on as `BootInfo::initrd_*`).
    pub initrd: Option<PhysRange>,
    /// The command line to carry forward.
    pub cmdline: &'a [u8],
    /// The TSC frequency, if known (0 = unknown).
    pub tsc_hz: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl PhysReader for Bytes {
        fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), UnreadableMemory> {
            let start = addr.as_u64() as usize;
            let source = self
                .0
                .get(start..start + buf.len())
                .ok_or(UnreadableMemory {
                    addr: addr.as_u64(),
                    len_bytes: buf.len() as u64,
                })?;
            buf.copy_from_slice(source);
            Ok(())
        }
    }

    fn sample() -> BootInfo {
        let mut info = BootInfo::new();
        info.memory_map[0] = BootMemoryRegion {
            base: 0x10_0000,
            len_bytes: 0x7f0_0000,
            kind: 1,
            reserved: 0,
        };
        info.memory_region_count = 1;
        info.scratch[0] = BootRange {
            base: 0x10_0000,
            len_bytes: 0x3f0_0000,
        };
        info.scratch_count = 1;
        assert!(info.push_in_use(
            InUseKind::Stack,
            PhysRange::new(PhysAddr::new(0x20_0000), 0x4000).unwrap()
        ));
        info.cmdline[..14].copy_from_slice(b"scenario=empty");
        info.cmdline_len_bytes = 14;
        info.handover_addr = 0x600_0000;
        info.handover_len_bytes = 0x1000;
        info
    }

    #[test]
    fn layout_is_stable() {
        assert_eq!(BOOT_INFO_LEN_BYTES, 96 + 128 * 24 + 8 * 16 + 48 * 24 + 512);
        assert_eq!(
            core::mem::offset_of!(BootInfo, tsc_point_of_no_return),
            0x38
        );
        assert_eq!(core::mem::offset_of!(BootInfo, tsc_copy_done), 0x40);
    }

    #[test]
    fn round_trips_through_memory() {
        let info = sample();
        let mut memory = vec![0u8; 0x1000];
        memory.extend_from_slice(info.as_bytes());
        let read =
            BootInfo::read_at_entry(&Bytes(memory), 0x600_0000, 0x1000, KEXEC_ENTRY_MAGIC).unwrap();
        assert_eq!(read.cmdline(), b"scenario=empty");
        assert_eq!(read.memory_map().unwrap().ram_len_bytes(), 0x7f0_0000);
        assert_eq!(read.scratch().count(), 1);
        assert_eq!(read.in_use().next().unwrap().0, InUseKind::Stack as u32);
        assert_eq!(
            read.handover(),
            PhysRange::new(PhysAddr::new(0x600_0000), 0x1000)
        );
        assert_eq!(read.initrd(), None);
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        let memory = |info: &BootInfo| Bytes(info.as_bytes().to_vec());
        let read = |info: &BootInfo, rdi, rdx| BootInfo::read_at_entry(&memory(info), rdi, 0, rdx);
        let good = sample();
        assert_eq!(
            read(&good, 0x600_0000, 1),
            Err(BootInfoError::BadEntryMagic { value: 1 })
        );
        assert!(matches!(
            read(&good, 0, KEXEC_ENTRY_MAGIC),
            Err(BootInfoError::HandoverMismatch { .. })
        ));
        let mut bad = sample();
        bad.magic = 7;
        assert_eq!(
            read(&bad, 0x600_0000, KEXEC_ENTRY_MAGIC),
            Err(BootInfoError::BadMagic { value: 7 })
        );
        let mut bad = sample();
        bad.version = 2;
        assert!(matches!(
            bad.validate(),
            Err(BootInfoError::UnsupportedVersion { value: 2 })
        ));
        let mut bad = sample();
        bad.in_use_count = 49;
        assert!(matches!(
            bad.validate(),
            Err(BootInfoError::CountTooLarge {
                field: "in_use_count",
                ..
            })
        ));
        let mut bad = sample();
        bad.scratch[0].len_bytes = 0x800;
        assert_eq!(
            bad.validate(),
            Err(BootInfoError::ScratchNotPageAligned { index: 0 })
        );
        let mut bad = sample();
        bad.memory_region_count = 0;
        assert!(matches!(
            bad.validate(),
            Err(BootInfoError::MemoryMap(MemoryMapError::NoRam))
        ));
        let mut bad = sample();
        bad.initrd_addr = u64::MAX;
        bad.initrd_len_bytes = 2;
        assert_eq!(
            bad.validate(),
            Err(BootInfoError::RangeWraps {
                field: "initrd",
                index: 0
            })
        );
        // Short memory: unreadable, not a panic.
        assert!(matches!(
            BootInfo::read_at_entry(&Bytes(vec![0; 16]), 0, 0, KEXEC_ENTRY_MAGIC),
            Err(BootInfoError::Unreadable(_))
        ));
    }
}
