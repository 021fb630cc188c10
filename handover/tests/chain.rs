//! Three kernels in simulation: state carried forward, changed, re-preserved; sessions the
//! middle kernel never retrieves come back as free memory in the last one; scratch and RAM are
//! declared again along the chain and the generation counts the handovers.

mod common;

use common::*;
use handover::luo::{Limits, LiveUpdate};
use handover::sim::{SimKernel, SimObject};
use handover::tracker::PreservationTracker;
use handover::*;

#[test]
fn state_survives_a_chain_and_unretrieved_sessions_are_released() {
    // Kernel 1: sessions "keep" (two memfds) and "drop" (one).
    let mut w = Outgoing::new(&[&MEMFD]);
    let (k1, f1) = w.memfd(1, 0, 3 * 4096);
    let (k2, _) = w.memfd(2, 4096, 5000);
    let (d1, drop_file) = w.memfd(3, 0, 2 * 4096);
    let drop_pages: Vec<PhysAddr> = drop_file
        .with(|m| m.pages().map(|(_, a)| a).collect())
        .unwrap();
    let keep_1 = read_all(&f1, &w.ram);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let keep = create_session(luo, k, b"keep").unwrap();
    preserve_fd(luo, k, keep, k1, 1).unwrap();
    preserve_fd(luo, k, keep, k2, 2).unwrap();
    let dropped = create_session(luo, k, b"drop").unwrap();
    preserve_fd(luo, k, dropped, d1, 1).unwrap();
    let (ram, image) = w.kexec();

    // Kernel 2: retrieves "keep" only, changes a file, adds one, preserves them again.
    let mut arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    assert_eq!(handover.generation(), 1);
    let scratch: Vec<PhysRange> = handover.scratch().iter().collect();
    let ram_ranges: Vec<PhysRange> = handover.ram().iter().collect();
    let mut store = IncomingStore::for_handover(&handover);
    let tracker = PreservationTracker::new(&ram_ranges, &scratch).unwrap();
    let mut luo = LiveUpdate::with_tracker(Limits::default(), tracker);
    luo.register_handler(&MEMFD).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let s = retrieve_session(&mut luo, &mut k, b"keep").unwrap();
    let r1 = retrieve_fd(&mut luo, &mut k, s, 1).unwrap();
    let r2 = retrieve_fd(&mut luo, &mut k, s, 2).unwrap();
    let file_1 = memfd_of(&k, r1);
    assert_eq!(read_all(&file_1, &arrival.ram), keep_1);
    file_1
        .with(|m| {
            m.write_at(
                100,
                b"changed by kernel 2",
                &mut arrival.frames,
                &mut arrival.ram,
            )
        })
        .unwrap()
        .unwrap();
    let changed_1 = read_all(&file_1, &arrival.ram);
    let changed_2 = read_all(&memfd_of(&k, r2), &arrival.ram);
    finish(&mut luo, &mut k, s, 0).unwrap();
    // "drop" was never retrieved: the image must stay until the next kexec.
    assert!(!luo.incoming().unwrap().is_complete());
    let (n3, new_file) = {
        let mut memfd = handover::memfd::Memfd::new();
        memfd
            .write_at(0, &pattern(9, 7000), &mut arrival.frames, &mut arrival.ram)
            .unwrap();
        let file = handover::memfd::MemfdFile::new(memfd);
        (k.open(SimObject::Memfd(file.clone())), file)
    };
    let new_contents = read_all(&new_file, &arrival.ram);
    let out = create_session(&mut luo, &mut k, b"keep").unwrap();
    preserve_fd(&mut luo, &mut k, out, r1, 1).unwrap();
    preserve_fd(&mut luo, &mut k, out, r2, 2).unwrap();
    preserve_fd(&mut luo, &mut k, out, n3, 3).unwrap();
    let plan = luo.prepare_reboot().unwrap();
    let frames = &mut arrival.frames;
    let image = luo
        .build_image(&plan, |pages| frames.allocate_contiguous(pages))
        .unwrap();
    let mut ram = arrival.ram;
    let dst = PhysRange::new(image.range().start(), image.as_bytes().len() as u64).unwrap();
    ram.slice_mut(dst).copy_from_slice(image.as_bytes());
    drop(luo);

    // Kernel 3: the state of kernel 2, the same scratch and RAM, generation 2, and the pages
    // of "drop" are free memory.
    let arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    assert_eq!(handover.generation(), 2);
    assert_eq!(handover.scratch().iter().collect::<Vec<_>>(), scratch);
    assert_eq!(handover.ram().iter().collect::<Vec<_>>(), ram_ranges);
    assert!(handover.find_session(b"drop").is_none());
    for page in &drop_pages {
        assert!(
            arrival.frames.is_free(*page),
            "{page} of an unretrieved session is still held"
        );
    }
    let mut store = IncomingStore::for_handover(&handover);
    let mut luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let s = retrieve_session(&mut luo, &mut k, b"keep").unwrap();
    let expected = [(1, changed_1), (2, changed_2), (3, new_contents)];
    for (token, contents) in expected {
        let fd = retrieve_fd(&mut luo, &mut k, s, token).unwrap();
        assert_eq!(
            read_all(&memfd_of(&k, fd), &arrival.ram),
            contents,
            "token {token}"
        );
    }
    finish(&mut luo, &mut k, s, 0).unwrap();
    assert!(luo.incoming().unwrap().is_complete());
}
