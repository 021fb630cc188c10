//! The identity map the loader builds for the next kernel (in scratch, see `docs/ENTRY.md`).
//!
//! Layout of the `2 + n` pages starting at the tables' base: page 0 is the PML4, page 1 the
//! PDPT, pages `2..2+n` the page directories, each mapping 1 GiB with 2 MiB pages. `n` is the
//! number of GiB needed to cover RAM, so one PDPT (512 GiB) is the limit.

use qemu_platform::addr::{LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr};

const ENTRIES_PER_TABLE: u64 = 512;
const GIB: u64 = 1 << 30;
const PRESENT_WRITABLE: u64 = 0x3;
const LARGE_PAGE: u64 = 0x80;

/// Pages needed to identity map `[0, map_end)` (rounded up to whole GiB, at least one), or
/// `None` past 512 GiB.
pub const fn identity_map_page_count(map_end: PhysAddr) -> Option<u64> {
    let gib = map_end.as_u64().div_ceil(GIB);
    let gib = if gib == 0 { 1 } else { gib };
    if gib > ENTRIES_PER_TABLE {
        None
    } else {
        Some(2 + gib)
    }
}

/// How many bytes the map built for `map_end` covers.
pub const fn identity_map_end(map_end: PhysAddr) -> PhysAddr {
    let gib = map_end.as_u64().div_ceil(GIB);
    PhysAddr::new(if gib == 0 {
        GIB
    } else {
        gib.saturating_mul(GIB)
    })
}

/// Writes the identity map of `[0, map_end)` into `tables`, which will live at physical
/// address `base` (page aligned). `tables` must hold exactly `identity_map_page_count(map_end)`
/// pages of 512 entries; returns `false` (writing nothing) otherwise.
pub fn build_identity_map(tables: &mut [u64], base: PhysAddr, map_end: PhysAddr) -> bool {
    let Some(page_count) = identity_map_page_count(map_end) else {
        return false;
    };
    let words_per_page = ENTRIES_PER_TABLE as usize;
    if tables.len() as u64 != page_count * ENTRIES_PER_TABLE || !base.is_page_aligned() {
        return false;
    }
    tables.fill(0);
    let table_addr = |page: u64| base.as_u64() + page * PAGE_SIZE;
    let directory_count = page_count - 2;
    let (pml4, rest) = tables.split_at_mut(words_per_page);
    let (pdpt, directories) = rest.split_at_mut(words_per_page);
    pml4[0] = table_addr(1) | PRESENT_WRITABLE;
    for (gib, entry) in pdpt.iter_mut().take(directory_count as usize).enumerate() {
        *entry = table_addr(2 + gib as u64) | PRESENT_WRITABLE;
    }
    for (index, entry) in directories.iter_mut().enumerate() {
        *entry = (index as u64 * LARGE_PAGE_SIZE) | PRESENT_WRITABLE | LARGE_PAGE;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB page.
    fn translate(tables: &[u64], base: u64, virt: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| tables[((table - base) / 8 + index) as usize];
        let pml4e = entry(base, (virt >> 39) & 511);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = entry(pml4e & !0xfff, (virt >> 30) & 511);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = entry(pdpte & !0xfff, (virt >> 21) & 511);
        if pde & 1 == 0 || pde & LARGE_PAGE == 0 {
            return None;
        }
        Some((pde & !(LARGE_PAGE_SIZE - 1) & !0xfff) + (virt & (LARGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn maps_everything_below_the_end_one_to_one() {
        let end = PhysAddr::new(0x1_2000_0000); // 4.5 GiB
        let pages = identity_map_page_count(end).unwrap();
        assert_eq!(pages, 2 + 5);
        let base = 0x20_0000u64;
        let mut tables = vec![0u64; (pages * 512) as usize];
        assert!(build_identity_map(&mut tables, PhysAddr::new(base), end));
        for virt in [
            0u64,
            0x1234,
            0x10_0000,
            0x7fff_ffff,
            0xfee0_0000,
            0x1_1fff_ffff,
            0x1_3fff_f000,
        ] {
            assert_eq!(translate(&tables, base, virt), Some(virt), "{virt:#x}");
        }
        assert_eq!(translate(&tables, base, 0x1_4000_0000), None);
        assert_eq!(identity_map_end(end), PhysAddr::new(0x1_4000_0000));
    }

    #[test]
    fn refuses_wrong_sizes() {
        assert_eq!(identity_map_page_count(PhysAddr::new(0)), Some(3));
        assert_eq!(identity_map_page_count(PhysAddr::new(513 << 30)), None);
        let mut tables = vec![0u64; 512];
        assert!(!build_identity_map(
            &mut tables,
            PhysAddr::new(0x1000),
            PhysAddr::new(1 << 30)
        ));
        let mut tables = vec![0u64; 3 * 512];
        assert!(!build_identity_map(
            &mut tables,
            PhysAddr::new(0x1001),
            PhysAddr::new(1 << 30)
        ));
    }
}
