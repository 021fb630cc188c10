//! The Xen PVH boot protocol's start-of-day information (`hvm_start_info`).
//!
//! QEMU's `-kernel` boots our ELF images through the PVH entry note; the entry code receives the
//! physical address of an `hvm_start_info` in `%ebx`. This module owns reading that structure
//! (version 1: magic `0x336ec578`, module list, command line, memory map) out of physical
//! memory into owned, validated values: a [`MemoryMap`], a [`Cmdline`] and the module ranges.
//! None of those source bytes is reserved in the memory map, so a kernel reads them once, first,
//! before it allocates anything.
//!
//! Memory is read through [`PhysReader`], so the parser is tested on the host with fake memory.

use crate::addr::{PhysAddr, PhysRange};
use crate::cmdline::{CMDLINE_MAX_BYTES, Cmdline};
use crate::memmap::{MAX_MEMORY_REGIONS, MemoryMap, MemoryMapError, RawMemoryEntry};
use core::fmt;
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// The most modules kept (QEMU passes at most one: the `-initrd` file).
pub const MAX_MODULES: usize = 4;

/// Reads physical memory. Implemented over the identity map on bare metal and over a buffer in
/// host tests.
pub trait PhysReader {
    /// Fills `buf` with the bytes at `addr..addr + buf.len()`, or fails if that range is not
    /// readable.
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), UnreadableMemory>;
}

/// A physical range that cannot be read (outside what the reader can reach).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnreadableMemory {
    /// First byte asked for.
    pub addr: u64,
    /// Bytes asked for.
    pub len_bytes: u64,
}

/// `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h), version 1.
#[derive(Clone, Copy, Debug, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct StartInfoRaw {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_modlist_entry`.
#[derive(Clone, Copy, Debug, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct ModlistEntryRaw {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

/// `struct hvm_memmap_table_entry`.
#[derive(Clone, Copy, Debug, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct MemmapEntryRaw {
    addr: u64,
    size: u64,
    type_number: u32,
    reserved: u32,
}

/// Why the start info cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PvhError {
    /// A structure it points at is not readable.
    Unreadable(UnreadableMemory),
    /// `magic` is not [`HVM_START_MAGIC`].
    BadMagic {
        /// The value found.
        value: u32,
    },
    /// `version` is 0: no memory map in the start info (QEMU always passes version 1).
    NoMemoryMap {
        /// The value found.
        version: u32,
    },
    /// `memmap_entries` is more than [`MAX_MEMORY_REGIONS`].
    TooManyMemmapEntries {
        /// The value found.
        count: u32,
    },
    /// The memory map is invalid.
    MemoryMap(MemoryMapError),
    /// `nr_modules` is more than [`MAX_MODULES`].
    TooManyModules {
        /// The value found.
        count: u32,
    },
    /// Module `index` wraps past 2^64.
    ModuleWraps {
        /// Which module.
        index: usize,
    },
    /// The command line has no NUL within [`CMDLINE_MAX_BYTES`].
    CmdlineTooLong,
}

impl From<UnreadableMemory> for PvhError {
    fn from(error: UnreadableMemory) -> PvhError {
        PvhError::Unreadable(error)
    }
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PvhError::Unreadable(UnreadableMemory { addr, len_bytes }) => {
                write!(
                    f,
                    "hvm_start_info: cannot read {len_bytes} bytes at {addr:#x}"
                )
            }
            PvhError::BadMagic { value } => {
                write!(
                    f,
                    "hvm_start_info.magic is {value:#x}, expected {HVM_START_MAGIC:#x}"
                )
            }
            PvhError::NoMemoryMap { version } => {
                write!(
                    f,
                    "hvm_start_info.version is {version}: no memory map (need 1)"
                )
            }
            PvhError::TooManyMemmapEntries { count } => write!(
                f,
                "hvm_start_info.memmap_entries is {count}, more than {MAX_MEMORY_REGIONS}"
            ),
            PvhError::MemoryMap(error) => write!(f, "hvm_start_info memory map: {error}"),
            PvhError::TooManyModules { count } => {
                write!(
                    f,
                    "hvm_start_info.nr_modules is {count}, more than {MAX_MODULES}"
                )
            }
            PvhError::ModuleWraps { index } => {
                write!(f, "hvm_start_info module {index} wraps past 2^64")
            }
            PvhError::CmdlineTooLong => {
                write!(
                    f,
                    "hvm_start_info command line longer than {CMDLINE_MAX_BYTES} bytes"
                )
            }
        }
    }
}

/// What a PVH boot tells a kernel, copied out of the firmware's memory.
#[derive(Clone, Debug)]
pub struct PvhBootInfo {
    /// The normalised memory map.
    pub memory_map: MemoryMap,
    /// The command line (`-append`).
    pub cmdline: Cmdline,
    /// The modules' physical ranges; module 0 is QEMU's `-initrd` file.
    pub modules: heapless::Vec<PhysRange, MAX_MODULES>,
    /// The ACPI RSDP, if the firmware gave one.
    pub rsdp: Option<PhysAddr>,
}

fn read_struct<T: FromBytes + KnownLayout + Immutable, const N: usize>(
    memory: &impl PhysReader,
    addr: PhysAddr,
) -> Result<T, UnreadableMemory> {
    let mut bytes = [0u8; N];
    memory.read(addr, &mut bytes)?;
    T::read_from_prefix(&bytes)
        .map(|(value, _)| value)
        .map_err(|_| UnreadableMemory {
            addr: addr.as_u64(),
            len_bytes: N as u64,
        })
}

fn entry_addr(base: u64, index: usize, entry_len_bytes: u64) -> Result<PhysAddr, UnreadableMemory> {
    (index as u64)
        .checked_mul(entry_len_bytes)
        .and_then(|offset| base.checked_add(offset))
        .map(PhysAddr::new)
        .ok_or(UnreadableMemory {
            addr: base,
            len_bytes: entry_len_bytes,
        })
}

impl PvhBootInfo {
    /// Reads and validates the start info at `start_info`.
    pub fn read(memory: &impl PhysReader, start_info: PhysAddr) -> Result<PvhBootInfo, PvhError> {
        let info: StartInfoRaw = read_struct::<_, 56>(memory, start_info)?;
        if info.magic != HVM_START_MAGIC {
            return Err(PvhError::BadMagic { value: info.magic });
        }
        if info.version < 1 {
            return Err(PvhError::NoMemoryMap {
                version: info.version,
            });
        }

        let memmap_count = info.memmap_entries as usize;
        if memmap_count > MAX_MEMORY_REGIONS {
            return Err(PvhError::TooManyMemmapEntries {
                count: info.memmap_entries,
            });
        }
        let mut raw_entries: heapless::Vec<RawMemoryEntry, MAX_MEMORY_REGIONS> =
            heapless::Vec::new();
        for index in 0..memmap_count {
            let addr = entry_addr(info.memmap_paddr, index, 24)?;
            let entry: MemmapEntryRaw = read_struct::<_, 24>(memory, addr)?;
            // Bounded by the check above: cannot overflow.
            let _ = raw_entries.push(RawMemoryEntry {
                addr: entry.addr,
                len_bytes: entry.size,
                type_number: entry.type_number,
            });
        }
        let memory_map =
            MemoryMap::from_entries_with_ram(raw_entries).map_err(PvhError::MemoryMap)?;

        let module_count = info.nr_modules as usize;
        if module_count > MAX_MODULES {
            return Err(PvhError::TooManyModules {
                count: info.nr_modules,
            });
        }
        let mut modules = heapless::Vec::new();
        for index in 0..module_count {
            let addr = entry_addr(info.modlist_paddr, index, 32)?;
            let entry: ModlistEntryRaw = read_struct::<_, 32>(memory, addr)?;
            let range = PhysRange::new(PhysAddr::new(entry.paddr), entry.size)
                .ok_or(PvhError::ModuleWraps { index })?;
            let _ = modules.push(range);
        }

        let cmdline = if info.cmdline_paddr == 0 {
            Cmdline::default()
        } else {
            read_cmdline(memory, PhysAddr::new(info.cmdline_paddr))?
        };

        let rsdp = (info.rsdp_paddr != 0).then_some(PhysAddr::new(info.rsdp_paddr));
        Ok(PvhBootInfo {
            memory_map,
            cmdline,
            modules,
            rsdp,
        })
    }
}

/// Reads a NUL-terminated command line in small chunks, so that a short line near the end of
/// readable memory does not make us read far past it.
fn read_cmdline(memory: &impl PhysReader, addr: PhysAddr) -> Result<Cmdline, PvhError> {
    const CHUNK_BYTES: usize = 64;
    let mut line: heapless::Vec<u8, CMDLINE_MAX_BYTES> = heapless::Vec::new();
    let mut offset = 0u64;
    while line.len() < CMDLINE_MAX_BYTES {
        let mut chunk = [0u8; CHUNK_BYTES];
        let at = addr.checked_add(offset).ok_or(UnreadableMemory {
            addr: addr.as_u64(),
            len_bytes: offset,
        })?;
        memory.read(at, &mut chunk)?;
        for &byte in &chunk {
            if byte == 0 {
                return Cmdline::new(&line).map_err(|_| PvhError::CmdlineTooLong);
            }
            if line.push(byte).is_err() {
                return Err(PvhError::CmdlineTooLong);
            }
        }
        offset = offset.saturating_add(CHUNK_BYTES as u64);
    }
    Err(PvhError::CmdlineTooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::MemoryKind;

    /// A little physical memory starting at address 0.
    struct FakeMemory(Vec<u8>);

    impl FakeMemory {
        fn put(&mut self, addr: usize, bytes: &[u8]) {
            self.0[addr..addr + bytes.len()].copy_from_slice(bytes);
        }
    }

    impl PhysReader for FakeMemory {
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

    fn start_info(magic: u32, nr_modules: u32, memmap_entries: u32, cmdline: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&magic.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&nr_modules.to_le_bytes());
        bytes.extend_from_slice(&0x200u64.to_le_bytes()); // modlist
        bytes.extend_from_slice(&cmdline.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes()); // rsdp
        bytes.extend_from_slice(&0x400u64.to_le_bytes()); // memmap
        bytes.extend_from_slice(&memmap_entries.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    fn memmap_entry(addr: u64, size: u64, type_number: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&addr.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&type_number.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    fn machine() -> FakeMemory {
        let mut memory = FakeMemory(vec![0; 0x1000]);
        memory.put(0x100, &start_info(HVM_START_MAGIC, 1, 3, 0x300));
        let mut module = Vec::new();
        module.extend_from_slice(&0x7f0_0000u64.to_le_bytes());
        module.extend_from_slice(&0x1_2345u64.to_le_bytes());
        module.extend_from_slice(&[0; 16]);
        memory.put(0x200, &module);
        memory.put(0x300, b"scenario=empty\0");
        memory.put(0x400, &memmap_entry(0x10_0000, 0x7f0_0000, 1));
        memory.put(0x418, &memmap_entry(0, 0x9_fc00, 1));
        memory.put(0x430, &memmap_entry(0x1_0000_0000, 0, 1)); // microvm's bogus entry
        memory
    }

    #[test]
    fn reads_what_qemu_passes() {
        let info = PvhBootInfo::read(&machine(), PhysAddr::new(0x100)).unwrap();
        assert_eq!(info.cmdline.get("scenario"), Some("empty"));
        assert_eq!(
            info.modules.as_slice(),
            &[PhysRange::new(PhysAddr::new(0x7f0_0000), 0x1_2345).unwrap()]
        );
        assert_eq!(info.memory_map.regions().len(), 2);
        assert!(
            info.memory_map
                .regions()
                .iter()
                .all(|region| region.kind == MemoryKind::Ram)
        );
        assert_eq!(info.rsdp, None);
    }

    #[test]
    fn rejects_bad_magic_and_counts() {
        let mut memory = machine();
        memory.put(0x100, &start_info(0x1234, 1, 3, 0x300));
        assert_eq!(
            PvhBootInfo::read(&memory, PhysAddr::new(0x100)).unwrap_err(),
            PvhError::BadMagic { value: 0x1234 }
        );
        memory.put(0x100, &start_info(HVM_START_MAGIC, 1, 1000, 0x300));
        assert_eq!(
            PvhBootInfo::read(&memory, PhysAddr::new(0x100)).unwrap_err(),
            PvhError::TooManyMemmapEntries { count: 1000 }
        );
        memory.put(0x100, &start_info(HVM_START_MAGIC, 9, 3, 0x300));
        assert_eq!(
            PvhBootInfo::read(&memory, PhysAddr::new(0x100)).unwrap_err(),
            PvhError::TooManyModules { count: 9 }
        );
        assert!(matches!(
            PvhBootInfo::read(&memory, PhysAddr::new(0xff0)),
            Err(PvhError::Unreadable(_))
        ));
    }

    #[test]
    fn rejects_unterminated_cmdline() {
        let mut memory = FakeMemory(vec![b'x'; 0x2000]);
        let good = machine();
        memory.0[..0x1000].copy_from_slice(&good.0);
        // A line that runs on past the longest we accept, with no NUL.
        memory.put(0x100, &start_info(HVM_START_MAGIC, 1, 3, 0x1000));
        assert_eq!(
            PvhBootInfo::read(&memory, PhysAddr::new(0x100)).unwrap_err(),
            PvhError::CmdlineTooLong
        );
    }
}
