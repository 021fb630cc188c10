//! Helpers shared by the fuzz targets: a fixed machine layout and image sealing.

use handover::image::build::{HandlerDraft, HandoverImage, TreeValues, UnsealedImage};
use handover::image::schema::RangeEntry;
use handover::memmap::MapCounts;
use handover::{PhysAddr, PhysRange};

pub const MIB: u64 = 1 << 20;

/// RAM of the fuzzed machine: [1 MiB, 4 GiB).
pub fn ram() -> PhysRange {
    PhysRange::new(PhysAddr::new(MIB), (4 << 30) - MIB).unwrap()
}

/// Scratch: [1 MiB, 17 MiB).
pub fn scratch() -> PhysRange {
    PhysRange::new(PhysAddr::new(MIB), 16 * MIB).unwrap()
}

/// Where fuzzed images claim to lie: 32 MiB.
pub fn image_at() -> PhysAddr {
    PhysAddr::new(32 * MIB)
}

/// Seals a written tree at [`image_at`], covering its pages.
pub fn seal(unsealed: UnsealedImage) -> HandoverImage {
    let len = (unsealed.len_bytes() as u64).div_ceil(4096) * 4096;
    unsealed.seal(PhysRange::new(image_at(), len).unwrap())
}

/// Tree values with the fixed layout, an empty map, and the given tables.
pub fn values<'v>(
    ram: &'v [RangeEntry],
    scratch: &'v [RangeEntry],
    sessions: &'v [u8],
    files: &'v [u8],
    handlers: &'v [HandlerDraft<'v>],
) -> TreeValues<'v> {
    TreeValues {
        generation: 1,
        ram,
        scratch,
        map_counts: MapCounts::default(),
        map_stream: &[],
        sessions,
        files,
        handlers,
    }
}
