//! Frozen images of each format version. A reader of version N must keep reading every golden
//! file of version N-1; the writer of the current version must reproduce its golden file
//! byte for byte (so a format change is always a deliberate, versioned one).
//!
//! Regenerate after a deliberate change with
//! `cargo test -p handover --test golden -- --ignored regenerate`, and add a new file rather
//! than overwriting one of an older version.

mod common;

use common::*;
use handover::image::build::HandoverImage;
use handover::memfd::{MemfdHandler, MemfdRecord};
use handover::*;

static MEMFD_V1: MemfdHandler = MemfdHandler::with_write_version(1);

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The files, as the current writer produces them.
fn current() -> Vec<(&'static str, Vec<u8>)> {
    let image = reference_image(&MEMFD);
    let handover = Handover::parse(image.as_bytes()).unwrap();
    let record = |name: &[u8], token| {
        handover
            .find_session(name)
            .unwrap()
            .find_file(token)
            .unwrap()
            .record
            .to_vec()
    };
    let v2 = record(b"vm-17/state", 0xfeed);
    // The same file as a v1 record (written by a kernel configured for a v1 reader).
    let v1_image = {
        let image = reference_image_unsealed(&MEMFD_V1);
        let handover = Handover::parse(image.as_bytes()).unwrap();
        handover
            .find_session(b"vm-17/state")
            .unwrap()
            .find_file(0xfeed)
            .unwrap()
            .record
            .to_vec()
    };
    vec![
        ("image-format-v1.bin", image.as_bytes().to_vec()),
        ("memfd-record-v1.bin", v1_image),
        ("memfd-record-v2.bin", v2),
    ]
}

/// The reference image minus the seal, which a v1 record cannot carry.
fn reference_image_unsealed(handler: &'static MemfdHandler) -> HandoverImage {
    let mut w = Outgoing::new(&[handler]);
    let (a, _) = w.memfd(1, 0, 3 * 4096 + 100);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"vm-17/state").unwrap();
    preserve_fd(luo, k, s, a, 0xfeed).unwrap();
    w.kexec().1
}

#[test]
#[ignore = "writes the golden files"]
fn regenerate() {
    for (name, bytes) in current() {
        std::fs::write(golden(name), bytes).unwrap();
    }
}

#[test]
fn writer_reproduces_the_golden_files() {
    for (name, bytes) in current() {
        assert!(
            read(name) == bytes,
            "{name} changed: bump its version and add a new golden file"
        );
    }
}

#[test]
fn golden_image_v1_reads_back() {
    let blob = HandoverImage::from_bytes(&read("image-format-v1.bin"));
    let handover = Handover::parse(blob.as_bytes()).unwrap();
    assert_eq!(handover.format_version(), 1);
    assert_eq!(handover.session_count(), 3);
    let session = handover.find_session(b"vm-17/state").unwrap();
    assert_eq!(
        session.files().map(|f| f.token).collect::<Vec<_>>(),
        [3, 0xfeed]
    );
    let file = session.find_file(3).unwrap();
    assert_eq!(file.handler.name, "memfd");
    assert_eq!(file.handler.version, 2);
    let record = MemfdRecord::parse(file.record, file.handler.version).unwrap();
    assert_eq!(record.seals, handover::memfd::F_SEAL_SHRINK);
    assert_eq!(record.size, 2 * 4096 + 100);
    assert_eq!(
        record
            .extents()
            .map(|(first, _, count)| (first, count))
            .collect::<Vec<_>>(),
        [(2, 1)]
    );
    assert!(handover.find_session(&[0xc3, 0x28, b' ', 0x01]).is_some());
    let counts = handover.memory_map().counts();
    // 4 + 1 + 1 memfd pages, 2 order-2 blocks, 27 scattered pages.
    assert_eq!(counts.page_count, 6 + 8 + 27);
    check_accepted(blob.as_bytes());
}

#[test]
fn golden_memfd_records_read_back() {
    let v1 = read("memfd-record-v1.bin");
    let v2 = read("memfd-record-v2.bin");
    let r1 = MemfdRecord::parse(&v1, 1).unwrap();
    let r2 = MemfdRecord::parse(&v2, 2).unwrap();
    assert_eq!(
        (r1.version, r1.size, r1.pos, r1.seals),
        (1, 3 * 4096 + 100, 0, 0)
    );
    assert_eq!(
        (r2.version, r2.size, r2.pos, r2.seals),
        (2, 3 * 4096 + 100, 0, 0)
    );
    assert_eq!(
        r1.extents().collect::<Vec<_>>(),
        r2.extents().collect::<Vec<_>>()
    );
    assert_eq!(r1.page_count(), 4);
    // Version and length are tied: each layout is refused as the other.
    assert!(MemfdRecord::parse(&v1, 2).is_err());
    assert!(MemfdRecord::parse(&v2, 1).is_err());
}

/// Writes the fuzzers' seed corpora from images the test suite builds (run after a format
/// change: `cargo test -p handover --test golden -- --ignored write_fuzz_seeds`).
#[test]
#[ignore = "writes fuzz/corpus seeds"]
fn write_fuzz_seeds() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let reference = reference_image(&MEMFD);
    write("image", "reference", reference.as_bytes());
    write(
        "image",
        "v1-memfd-records",
        reference_image_unsealed(&MEMFD_V1).as_bytes(),
    );
    let empty = Outgoing::new(&[&MEMFD]).kexec().1;
    write("image", "empty", empty.as_bytes());
    let handover = Handover::parse(reference.as_bytes()).unwrap();
    write("memory_map", "reference", handover.memory_map().stream());
    // A map of every item kind: a FULL window, RUNS, a dense BITMAP, a LIST, two orders.
    let mut runs = vec![
        handover::memmap::FrameRun::new(0x10_0000, 0x2_0000, 0),
        handover::memmap::FrameRun::new(0x13_0000, 5, 0),
        handover::memmap::FrameRun::new(0x13_0010, 1, 2),
    ];
    runs.extend((0..200u64).map(|i| handover::memmap::FrameRun::new(0x14_0000 + 2 * i, 1, 0)));
    runs.extend((0..50u64).map(|i| handover::memmap::FrameRun::new(0x16_0000 + 100 * i, 1, 0)));
    write(
        "memory_map",
        "every-kind",
        &handover::memmap::encode(&runs).unwrap(),
    );
}
