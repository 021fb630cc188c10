//! The memory-map stream alone: validate against a fixed layout; an accepted stream walks to
//! runs inside RAM, clear of scratch and the image, disjoint and in order, with the counts the
//! validator reported, and re-encodes to the same bytes.
#![no_main]

use handover::memmap::{self, MapBounds};
use handover::{PhysAddr, PhysRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|stream: &[u8]| {
    let ram = [
        PhysRange::new(PhysAddr::new(0x1000), (1 << 34) - 0x1000).unwrap(),
        PhysRange::new(PhysAddr::new(1 << 35), 1 << 30).unwrap(),
    ];
    let scratch = [PhysRange::new(PhysAddr::new(1 << 30), 1 << 24).unwrap()];
    let image = PhysRange::new(PhysAddr::new(1 << 31), 1 << 16).unwrap();
    let (ram, scratch) = (&ram[..], &scratch[..]);
    let bounds = MapBounds {
        ram: &ram,
        scratch: &scratch,
        image,
    };
    let Ok(counts) = memmap::validate(stream, &bounds) else {
        return;
    };
    let (mut end, mut runs, mut blocks, mut pages) = (0u64, 0u64, 0u64, 0u64);
    memmap::walk(stream, |run| {
        let range = run.range();
        assert!(run.first_frame >= end, "overlap or disorder");
        assert!(ram.iter().any(|r| r.contains_range(range)), "outside RAM");
        assert!(!scratch.iter().any(|s| s.overlaps(range)) && !image.overlaps(range));
        end = run.end_frame();
        runs += 1;
        blocks += run.block_count;
        pages += run.page_count();
    })
    .expect("a validated stream walks");
    assert_eq!(
        (runs, blocks, pages),
        (counts.run_count, counts.block_count, counts.page_count)
    );
    let mut merged = Vec::new();
    memmap::walk_merged(stream, |run| merged.push(run)).unwrap();
    assert_eq!(
        memmap::encode(&merged).expect("walk output encodes"),
        stream,
        "not canonical"
    );
});
