//! Property tests: any set of sessions, files and pages survives the handover byte for byte.

mod common;

use common::*;
use handover::luo::{Limits, LiveUpdate};
use handover::memmap::{self, FrameRun, MapBounds};
use handover::sim::SimKernel;
use handover::*;
use proptest::prelude::*;

/// Cases per property: Miri is orders of magnitude slower, so it runs a handful.
fn cases(normal: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 2 } else { normal },
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
struct FileSpec {
    token: u64,
    /// (offset, length, seed) writes: sparse files have holes between them.
    writes: Vec<(u64, usize, u64)>,
    position: u64,
    seals: u32,
}

#[derive(Clone, Debug)]
struct SessionSpec {
    name: Vec<u8>,
    files: Vec<FileSpec>,
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    (
        any::<u64>(),
        prop::collection::vec((0u64..40 * 4096, 0usize..9000, any::<u64>()), 0..4),
        any::<u64>(),
        prop::sample::select(vec![0u32, 0x2, 0x4, 0x6, 0x1f, 0x3f]),
    )
        .prop_map(|(token, writes, position, seals)| FileSpec {
            token,
            writes,
            position,
            seals,
        })
}

fn session_spec() -> impl Strategy<Value = SessionSpec> {
    (
        prop::collection::vec(1u8..=255, 1..64),
        prop::collection::vec(file_spec(), 0..4),
    )
        .prop_map(|(name, files)| SessionSpec { name, files })
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn sessions_files_and_pages_round_trip(
        sessions in prop::collection::vec(session_spec(), 0..5),
        extra_pages in prop::collection::vec(0u64..1024, 0..200),
    ) {
        let mut w = Outgoing::new(&[&MEMFD]);
        let mut expected = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for spec in &sessions {
            if !names.insert(spec.name.clone()) {
                continue;
            }
            let s = create_session(&mut w.luo, &mut w.kernel, &spec.name).unwrap();
            let mut tokens = std::collections::BTreeSet::new();
            for file in &spec.files {
                if !tokens.insert(file.token) {
                    continue;
                }
                let mut memfd = handover::memfd::Memfd::new();
                for &(offset, len, seed) in &file.writes {
                    memfd.write_at(offset, &pattern(seed, len), &mut w.frames, &mut w.ram).unwrap();
                }
                memfd.seek(file.position);
                memfd.add_seals(file.seals).unwrap();
                let handle = handover::memfd::MemfdFile::new(memfd);
                let contents = read_all(&handle, &w.ram);
                let fd = w.kernel.open(handover::sim::SimObject::Memfd(handle));
                preserve_fd(&mut w.luo, &mut w.kernel, s, fd, file.token).unwrap();
                expected.push((spec.name.clone(), file.token, contents, file.position, file.seals));
            }
        }
        // Other preserved memory, above the files (which start at 9 MiB, lowest first).
        for page in extra_pages {
            let _ = w.luo.tracker_mut().unwrap().preserve_page(PhysAddr::new(20 * MIB + page * 4096));
        }
        let runs_before = w.luo.tracker().unwrap().runs();
        let (ram, image) = w.kexec();

        let arrival = arrive(ram, image.range().start());
        let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
        let mut walked = Vec::new();
        handover.memory_map().walk_merged(|run| walked.push(run));
        // The walk reports what was preserved, plus nothing: the image is declared apart.
        prop_assert_eq!(&walked, &runs_before);
        check_accepted(arrival.blob.as_bytes());

        let mut store = IncomingStore::for_handover(&handover);
        let mut luo = LiveUpdate::new(Limits::default());
        luo.register_handler(&MEMFD).unwrap();
        store.attach(handover, &mut luo);
        let mut k = SimKernel::new();
        let mut session_fds = std::collections::BTreeMap::new();
        for (name, token, contents, position, seals) in &expected {
            let s = *session_fds
                .entry(name.clone())
                .or_insert_with(|| retrieve_session(&mut luo, &mut k, name).unwrap());
            let fd = retrieve_fd(&mut luo, &mut k, s, *token).unwrap();
            let file = memfd_of(&k, fd);
            prop_assert_eq!(&read_all(&file, &arrival.ram), contents);
            prop_assert_eq!(file.with(|m| (m.position(), m.seals())).unwrap(), (*position, *seals));
        }
        for (_, fd) in session_fds {
            finish(&mut luo, &mut k, fd, 0).unwrap();
        }
    }
}

fn runs_from_blocks(mut blocks: Vec<(u64, u8)>) -> Vec<FrameRun> {
    // Keep aligned, non-overlapping blocks; merge same-order neighbours into runs.
    blocks
        .iter_mut()
        .for_each(|(frame, order)| *frame &= !((1u64 << *order) - 1));
    blocks.sort();
    let mut runs: Vec<FrameRun> = Vec::new();
    let mut end = 0u64;
    for (frame, order) in blocks {
        if frame < end {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.order == order && last.end_frame() == frame => last.block_count += 1,
            _ => runs.push(FrameRun::new(frame, 1, order)),
        }
        end = frame + (1u64 << order);
    }
    runs
}

proptest! {
    #![proptest_config(cases(512))]

    /// The map codec alone, on dense, sparse and mixed-order sets.
    #[test]
    fn memory_map_round_trips(
        blocks in prop::collection::vec((0x100u64..0x4000, prop::sample::select(vec![0u8, 0, 0, 0, 1, 2, 9])), 0..400),
        dense_start in 0x5000u64..0x6000,
        dense in prop::collection::vec(any::<bool>(), 0..600),
    ) {
        let mut all = blocks;
        all.extend(dense.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| (dense_start + i as u64, 0u8)));
        let runs = runs_from_blocks(all);
        let stream = memmap::encode(&runs).unwrap();
        let ram = [range(0, 1 << 30)];
        let ram = &ram[..];
        let none: &[PhysRange] = &[];
        let bounds = MapBounds { ram: &ram, scratch: &none, image: range(1 << 29, 4096) };
        let counts = memmap::validate(&stream, &bounds).unwrap();
        let mut walked = Vec::new();
        memmap::walk_merged(&stream, |r| walked.push(r)).unwrap();
        prop_assert_eq!(&walked, &runs);
        let mut reported = 0u64;
        memmap::walk(&stream, |_| reported += 1).unwrap();
        prop_assert_eq!(counts.run_count, reported);
        // Canonical: re-encoding the walk gives the same bytes.
        prop_assert_eq!(memmap::encode(&walked).unwrap(), stream);
    }

    /// Random bytes never panic the map validator or walk, and whatever validates re-encodes
    /// to itself.
    #[test]
    fn memory_map_validator_survives_noise(stream in prop::collection::vec(any::<u8>(), 0..64)) {
        let ram = [range(0, 1 << 40)];
        let ram = &ram[..];
        let none: &[PhysRange] = &[];
        let bounds = MapBounds { ram: &ram, scratch: &none, image: range(1 << 41, 4096) };
        if memmap::validate(&stream, &bounds).is_ok() {
            let mut walked = Vec::new();
            memmap::walk_merged(&stream, |r| walked.push(r)).unwrap();
            prop_assert_eq!(memmap::encode(&walked).unwrap(), stream);
        }
    }
}
