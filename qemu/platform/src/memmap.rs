//! The typed, validated physical memory map.
//!
//! Firmware tables (the PVH `hvm_memmap_table_entry` array, an e820 table) and the loader's
//! `BootInfo` both describe memory as a list of `(address, length, type)` entries that may come
//! unsorted, overlapping, or with bogus zero-length entries (QEMU's microvm emits one). This
//! module owns turning such a list into a [`MemoryMap`]: sorted by address, without holes inside
//! a region, adjacent regions of the same kind merged, zero-length entries dropped, and overlaps
//! resolved so that the more restrictive kind wins (reserved memory listed inside RAM is
//! reserved; this is what Linux's e820 sanitiser does too). Entries that wrap past 2^64 are an
//! error, not something to guess about.
//!
//! No function here panics on any input.

use crate::addr::{PhysAddr, PhysRange};
use core::fmt;

/// The most regions a [`MemoryMap`] holds (and the most raw entries it accepts). QEMU emits
/// fewer than ten; 128 matches Linux's `E820_MAX_ENTRIES_ZEROPAGE`.
pub const MAX_MEMORY_REGIONS: usize = 128;

/// What a region of physical memory is. The discriminants are the e820 / PVH type numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u32)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved by firmware or devices (also used for every type number we do not know).
    Reserved = 2,
    /// ACPI tables, reclaimable once the OS has read them.
    AcpiReclaimable = 3,
    /// ACPI non-volatile storage: must be preserved.
    AcpiNvs = 4,
    /// Memory with errors.
    Unusable = 5,
    /// Persistent memory.
    Persistent = 7,
}

impl MemoryKind {
    /// The kind for an e820 / PVH type number. Unknown numbers are treated as reserved: memory
    /// we do not understand is memory we must not touch.
    pub const fn from_e820(type_number: u32) -> MemoryKind {
        match type_number {
            1 => MemoryKind::Ram,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Unusable,
            7 => MemoryKind::Persistent,
            _ => MemoryKind::Reserved,
        }
    }

    /// The e820 / PVH type number.
    pub const fn as_e820(self) -> u32 {
        self as u32
    }

    /// Which kind wins where two entries overlap: RAM loses to everything, and kinds that
    /// forbid more win over kinds that forbid less.
    const fn precedence(self) -> u8 {
        match self {
            MemoryKind::Ram => 0,
            MemoryKind::AcpiReclaimable => 1,
            MemoryKind::Persistent => 2,
            MemoryKind::AcpiNvs => 3,
            MemoryKind::Reserved => 4,
            MemoryKind::Unusable => 5,
        }
    }
}

/// One raw entry as firmware (or a previous kernel) describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawMemoryEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes (zero-length entries are dropped).
    pub len_bytes: u64,
    /// e820 / PVH type number.
    pub type_number: u32,
}

/// One region of a normalised [`MemoryMap`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemoryRegion {
    /// The bytes the region covers (never empty).
    pub range: PhysRange,
    /// What they are.
    pub kind: MemoryKind,
}

/// Why a list of entries is not a memory map.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemoryMapError {
    /// Entry `index` runs past 2^64.
    EntryWraps {
        /// Position of the entry in the input.
        index: usize,
        /// Its address.
        addr: u64,
        /// Its length.
        len_bytes: u64,
    },
    /// More entries (or, after resolving overlaps, regions) than [`MAX_MEMORY_REGIONS`].
    TooManyEntries {
        /// How many there were (at least).
        count: usize,
    },
    /// The map has no RAM at all.
    NoRam,
}

impl fmt::Display for MemoryMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryMapError::EntryWraps {
                index,
                addr,
                len_bytes,
            } => write!(
                f,
                "memory map entry {index} (addr {addr:#x}, len {len_bytes:#x}) wraps past 2^64"
            ),
            MemoryMapError::TooManyEntries { count } => write!(
                f,
                "memory map has {count} entries, more than the {MAX_MEMORY_REGIONS} supported"
            ),
            MemoryMapError::NoRam => write!(f, "memory map has no RAM"),
        }
    }
}

/// A sorted, merged, validated physical memory map.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    regions: heapless::Vec<MemoryRegion, MAX_MEMORY_REGIONS>,
}

impl MemoryMap {
    /// Normalises raw entries (see the module documentation).
    pub fn from_entries<I>(entries: I) -> Result<MemoryMap, MemoryMapError>
    where
        I: IntoIterator<Item = RawMemoryEntry>,
    {
        // Keep the non-empty entries, validated.
        let mut kept: heapless::Vec<MemoryRegion, MAX_MEMORY_REGIONS> = heapless::Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            if entry.len_bytes == 0 {
                continue;
            }
            let range = PhysRange::new(PhysAddr::new(entry.addr), entry.len_bytes).ok_or(
                MemoryMapError::EntryWraps {
                    index,
                    addr: entry.addr,
                    len_bytes: entry.len_bytes,
                },
            )?;
            let region = MemoryRegion {
                range,
                kind: MemoryKind::from_e820(entry.type_number),
            };
            if kept.push(region).is_err() {
                return Err(MemoryMapError::TooManyEntries {
                    count: index.saturating_add(1),
                });
            }
        }

        // Every start and end is a boundary; between two consecutive boundaries the covering
        // entries are the same, so each elementary interval gets exactly one kind.
        let mut bounds: heapless::Vec<u64, { 2 * MAX_MEMORY_REGIONS }> = heapless::Vec::new();
        for region in &kept {
            // Capacity is twice the entry capacity: these pushes cannot fail.
            let _ = bounds.push(region.range.start().as_u64());
            let _ = bounds.push(region.range.end().as_u64());
        }
        bounds.sort_unstable();

        let mut map = MemoryMap::default();
        for pair in bounds.windows(2) {
            let [start, end] = *pair else { continue };
            // Equal neighbours (shared boundaries) give empty pieces: skip them.
            let Some(piece) = PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end))
                .filter(|piece| !piece.is_empty())
            else {
                continue;
            };
            let winner = kept
                .iter()
                .filter(|region| region.range.contains_range(piece))
                .map(|region| region.kind)
                .max_by_key(|kind| kind.precedence());
            if let Some(kind) = winner {
                map.append_merging(MemoryRegion { range: piece, kind })?;
            }
        }
        Ok(map)
    }

    /// Appends a region that starts at or after the last one, merging it into the last one when
    /// they touch and have the same kind.
    fn append_merging(&mut self, region: MemoryRegion) -> Result<(), MemoryMapError> {
        if let Some(last) = self.regions.last_mut()
            && last.kind == region.kind
            && last.range.end() == region.range.start()
            && let Some(merged) = PhysRange::from_bounds(last.range.start(), region.range.end())
        {
            last.range = merged;
            return Ok(());
        }
        self.regions
            .push(region)
            .map_err(|_| MemoryMapError::TooManyEntries {
                count: MAX_MEMORY_REGIONS.saturating_add(1),
            })
    }

    /// Like [`MemoryMap::from_entries`], and also requires at least one RAM region.
    pub fn from_entries_with_ram<I>(entries: I) -> Result<MemoryMap, MemoryMapError>
    where
        I: IntoIterator<Item = RawMemoryEntry>,
    {
        let map = MemoryMap::from_entries(entries)?;
        if map.ram().next().is_none() {
            return Err(MemoryMapError::NoRam);
        }
        Ok(map)
    }

    /// The regions, sorted by address, never overlapping, never empty.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// The RAM regions (byte exact, not rounded to pages).
    pub fn ram(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.regions
            .iter()
            .filter(|region| region.kind == MemoryKind::Ram)
            .map(|region| region.range)
    }

    /// Whether every byte of `range` is RAM. An empty range is not "in RAM".
    pub fn is_ram(&self, range: PhysRange) -> bool {
        // Touching RAM regions were merged, so a contiguous stretch of RAM is one region.
        !range.is_empty() && self.ram().any(|ram| ram.contains_range(range))
    }

    /// One past the last byte of RAM (zero if there is none).
    pub fn ram_end(&self) -> PhysAddr {
        self.ram()
            .map(PhysRange::end)
            .max()
            .unwrap_or(PhysAddr::ZERO)
    }

    /// Total RAM in bytes.
    pub fn ram_len_bytes(&self) -> u64 {
        self.ram()
            .fold(0u64, |total, range| total.saturating_add(range.len_bytes()))
    }

    /// Total whole RAM pages (each region rounded inward to pages).
    pub fn ram_page_count(&self) -> u64 {
        self.ram().fold(0u64, |total, range| {
            total.saturating_add(range.pages_within().page_count())
        })
    }

    /// The map with everything at or above `limit` cut off (regions straddling it are trimmed).
    /// Used to restrict allocation to what the identity map covers.
    pub fn clamped(&self, limit: PhysAddr) -> MemoryMap {
        let mut map = MemoryMap::default();
        for region in &self.regions {
            let Some(below) = PhysRange::from_bounds(PhysAddr::ZERO, limit) else {
                continue;
            };
            let range = region.range.intersection(below);
            if !range.is_empty() {
                // At most as many regions as `self`: cannot overflow.
                let _ = map.regions.push(MemoryRegion {
                    range,
                    kind: region.kind,
                });
            }
        }
        map
    }

    /// The raw entries of this map (to hand it to the next kernel).
    pub fn entries(&self) -> impl Iterator<Item = RawMemoryEntry> + '_ {
        self.regions.iter().map(|region| RawMemoryEntry {
            addr: region.range.start().as_u64(),
            len_bytes: region.range.len_bytes(),
            type_number: region.kind.as_e820(),
        })
    }
}

impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, region) in self.regions.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {:?}", region.range, region.kind)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64, len_bytes: u64, type_number: u32) -> RawMemoryEntry {
        RawMemoryEntry {
            addr,
            len_bytes,
            type_number,
        }
    }

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    #[test]
    fn sorts_merges_and_drops_zero_length_entries() {
        // What QEMU's pc machine reports for 128 MiB, shuffled, plus microvm's bogus entry and a
        // split RAM range that must merge back.
        let map = MemoryMap::from_entries([
            entry(0x10_0000, 0x40_0000, 1),
            entry(0, 0x9_fc00, 1),
            entry(0x50_0000, 0x7b0_0000, 1),
            entry(0xfffc_0000, 0x4_0000, 2),
            entry(0x9_fc00, 0x400, 2),
            entry(0x8000_0000, 0, 1),
        ])
        .unwrap();
        assert_eq!(
            map.regions(),
            &[
                MemoryRegion {
                    range: range(0, 0x9_fc00),
                    kind: MemoryKind::Ram
                },
                MemoryRegion {
                    range: range(0x9_fc00, 0xa_0000),
                    kind: MemoryKind::Reserved
                },
                MemoryRegion {
                    range: range(0x10_0000, 0x800_0000),
                    kind: MemoryKind::Ram
                },
                MemoryRegion {
                    range: range(0xfffc_0000, 0x1_0000_0000),
                    kind: MemoryKind::Reserved
                },
            ]
        );
        assert_eq!(map.ram_end(), PhysAddr::new(0x800_0000));
        assert!(map.is_ram(range(0x10_0000, 0x800_0000)));
        assert!(!map.is_ram(range(0x9_f000, 0xa_1000)));
        assert!(!map.is_ram(range(0x10_0000, 0x10_0000)));
        assert_eq!(map.ram_page_count(), 0x9f + 0x7f00);
    }

    #[test]
    fn reserved_inside_ram_wins() {
        let map =
            MemoryMap::from_entries([entry(0, 0x10_0000, 1), entry(0x4_0000, 0x1000, 2)]).unwrap();
        assert_eq!(
            map.regions(),
            &[
                MemoryRegion {
                    range: range(0, 0x4_0000),
                    kind: MemoryKind::Ram
                },
                MemoryRegion {
                    range: range(0x4_0000, 0x4_1000),
                    kind: MemoryKind::Reserved
                },
                MemoryRegion {
                    range: range(0x4_1000, 0x10_0000),
                    kind: MemoryKind::Ram
                },
            ]
        );
    }

    #[test]
    fn unknown_types_are_reserved_and_wrapping_is_an_error() {
        let map = MemoryMap::from_entries([entry(0, 0x1000, 99)]).unwrap();
        assert_eq!(map.regions()[0].kind, MemoryKind::Reserved);
        assert_eq!(
            MemoryMap::from_entries([entry(0, 1, 1), entry(u64::MAX, 2, 1)]).unwrap_err(),
            MemoryMapError::EntryWraps {
                index: 1,
                addr: u64::MAX,
                len_bytes: 2
            }
        );
        assert_eq!(
            MemoryMap::from_entries_with_ram([entry(0, 0x1000, 2)]).unwrap_err(),
            MemoryMapError::NoRam
        );
    }

    #[test]
    fn too_many_entries_is_an_error() {
        let entries = (0..=MAX_MEMORY_REGIONS as u64).map(|i| entry(i * 0x2000, 0x1000, 1));
        assert!(matches!(
            MemoryMap::from_entries(entries),
            Err(MemoryMapError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn clamping_trims_straddling_regions() {
        let map = MemoryMap::from_entries([entry(0, 0x2000, 1), entry(0x3000, 0x2000, 1)]).unwrap();
        let clamped = map.clamped(PhysAddr::new(0x4000));
        assert_eq!(
            clamped.ram().collect::<Vec<_>>(),
            [range(0, 0x2000), range(0x3000, 0x4000)]
        );
    }

    #[test]
    fn entries_round_trip() {
        let map = MemoryMap::from_entries([entry(0, 0x2000, 1), entry(0x2000, 0x1000, 4)]).unwrap();
        let again = MemoryMap::from_entries(map.entries()).unwrap();
        assert_eq!(map.regions(), again.regions());
    }
}
