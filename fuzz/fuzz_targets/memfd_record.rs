//! The memfd handler's record, both versions: parse, and for an accepted record check its
//! invariants, claim its pages from a map that preserves all of RAM (all or nothing: a refused
//! claim leaves nothing claimed) and restore the file.
#![no_main]

use arbitrary::Arbitrary;
use handover::image::build::{ImageParts, build_image};
use handover::incoming::IncomingStorage;
use handover::memfd::{Memfd, MemfdRecord};
use handover::memmap::FrameRun;
use handover::{Handover, PAGE_SIZE, PhysAddr, PhysRange};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Raw bytes in a chosen version.
    Raw { version: u8, record: Vec<u8> },
    /// A record assembled from fields, so extents reach the checks and the claims: (file page
    /// step, physical page in the preserved area, page count) per extent.
    Fields {
        version: u8,
        pos: u64,
        size_pages: u16,
        seals: u8,
        flags: u8,
        extents: Vec<(u8, u16, u8)>,
    },
}

impl Input {
    fn bytes(&self) -> (u32, Vec<u8>) {
        match self {
            Input::Raw { version, record } => (u32::from(version % 4), record.clone()),
            Input::Fields {
                version,
                pos,
                size_pages,
                seals,
                flags,
                extents,
            } => {
                let version = u32::from(version % 2) + 1;
                let mut out = Vec::new();
                out.extend_from_slice(&pos.to_le_bytes());
                out.extend_from_slice(&(u64::from(*size_pages) * 4096).to_le_bytes());
                if version == 2 {
                    out.extend_from_slice(&u32::from(*seals).to_le_bytes());
                    out.extend_from_slice(&u32::from(flags & 1).to_le_bytes());
                }
                out.extend_from_slice(&(extents.len() as u64).to_le_bytes());
                let mut file_page = 0u64;
                for &(step, phys_page, count) in extents {
                    file_page += u64::from(step % 4);
                    let phys = (1 << 20) + u64::from(phys_page) * 4096;
                    let count = u64::from(count % 8);
                    out.extend_from_slice(&file_page.to_le_bytes());
                    out.extend_from_slice(&phys.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                    file_page += count;
                }
                (version, out)
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let (version, bytes) = input.bytes();
    let Ok(record) = MemfdRecord::parse(&bytes, version) else {
        return;
    };
    let size_pages = record.size.div_ceil(PAGE_SIZE);
    let mut previous_end = 0u64;
    for (first, phys, count) in record.extents() {
        assert!(count > 0 && first >= previous_end && first + count <= size_pages);
        assert!(phys.is_page_aligned());
        previous_end = first + count;
    }
    // A machine whose RAM [1 MiB, 257 MiB) is entirely preserved as order-0 pages.
    let ram = [PhysRange::new(PhysAddr::new(1 << 20), 256 << 20).unwrap()];
    let runs = [FrameRun::new(256, 65536 - 256 - 16, 0)];
    let parts = ImageParts {
        generation: 1,
        ram: &ram,
        scratch: &[],
        runs: &runs,
        handlers: &[],
        sessions: &[],
        files: &[],
        records: &[],
    };
    let image = build_image(&parts, |_| Some(PhysAddr::new(256 << 20))).unwrap();
    let handover = Handover::parse(image.as_bytes()).unwrap();
    let mut storage = IncomingStorage::for_map(&handover.memory_map());
    let mut pages = storage.pages(&handover.memory_map()).unwrap();
    match Memfd::from_record(&record, &mut pages) {
        Ok(memfd) => {
            assert_eq!(pages.claimed_blocks(), record.page_count());
            assert_eq!(memfd.populated_pages() as u64, record.page_count());
            assert_eq!(
                (memfd.size(), memfd.position(), memfd.seals()),
                (record.size, record.pos, record.seals)
            );
        }
        Err(_) => assert_eq!(pages.claimed_blocks(), 0, "a refused restore claimed pages"),
    }
});
