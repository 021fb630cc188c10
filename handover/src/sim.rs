//! A simulated machine for host tests, benchmarks and fuzzing: RAM as byte arrays with its own
//! memory map, a page allocator, and a kernel file table. Everything a handover carries can be
//! written into this RAM by one "kernel" and read back by the next, byte for byte.
//!
//! An access outside simulated RAM is a bug in the code under test, so it panics here: failing
//! loudly is this module's job.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used
)]

use alloc::vec;
use alloc::vec::Vec;

use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange};
use crate::fdtable::FdTable;
use crate::kernel::{FrameAllocator, PhysMemory};
use crate::memfd::{Memfd, MemfdFile, MemfdObject};
use crate::memmap::FrameRun;

/// Simulated physical RAM: one byte array per RAM range.
#[derive(Clone, Debug)]
pub struct SimRam {
    regions: Vec<(PhysRange, Vec<u8>)>,
}

impl SimRam {
    /// RAM with these ranges, zero-filled. Keep them small: every byte is allocated.
    pub fn new(ranges: &[PhysRange]) -> SimRam {
        SimRam {
            regions: ranges
                .iter()
                .map(|&r| (r, vec![0u8; r.len_bytes() as usize]))
                .collect(),
        }
    }

    /// The RAM ranges.
    pub fn ranges(&self) -> Vec<PhysRange> {
        self.regions.iter().map(|(r, _)| *r).collect()
    }

    fn locate(&self, addr: PhysAddr, len: usize) -> (usize, usize) {
        let range = PhysRange::new(addr, len as u64).expect("access wraps");
        for (index, (region, _)) in self.regions.iter().enumerate() {
            if region.contains_range(range) {
                return (index, (addr.as_u64() - region.start().as_u64()) as usize);
            }
        }
        panic!("access {range} outside simulated RAM");
    }

    /// The bytes of a range (which must lie in one RAM range).
    pub fn slice(&self, range: PhysRange) -> &[u8] {
        let (index, offset) = self.locate(range.start(), range.len_bytes() as usize);
        &self.regions[index].1[offset..offset + range.len_bytes() as usize]
    }

    /// The bytes of a range, mutable.
    pub fn slice_mut(&mut self, range: PhysRange) -> &mut [u8] {
        let (index, offset) = self.locate(range.start(), range.len_bytes() as usize);
        &mut self.regions[index].1[offset..offset + range.len_bytes() as usize]
    }

    /// Fills every byte outside `keep` with `pattern`: what a new kernel may find in memory it
    /// did not reserve. Tests use it to prove nothing outside the reserved ranges is relied on.
    pub fn scribble_except(&mut self, keep: &[PhysRange], pattern: u8) {
        let mut keep = keep.to_vec();
        keep.sort();
        for (region, bytes) in &mut self.regions {
            let base = region.start().as_u64();
            let end = region.end().as_u64();
            let mut cursor = base;
            for k in keep.iter().filter(|k| k.overlaps(*region)) {
                let k_start = k.start().as_u64().max(base);
                if k_start > cursor {
                    bytes[(cursor - base) as usize..(k_start - base) as usize].fill(pattern);
                }
                cursor = cursor.max(k.end().as_u64().min(end));
            }
            if cursor < end {
                bytes[(cursor - base) as usize..].fill(pattern);
            }
        }
    }
}

impl PhysMemory for SimRam {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) {
        let (index, offset) = self.locate(addr, buf.len());
        buf.copy_from_slice(&self.regions[index].1[offset..offset + buf.len()]);
    }

    fn write(&mut self, addr: PhysAddr, data: &[u8]) {
        let (index, offset) = self.locate(addr, data.len());
        self.regions[index].1[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// A page allocator over one range, handing out pages in address order (lowest first) so
/// files are physically contiguous when allocated in one go.
#[derive(Clone, Debug)]
pub struct SimFrames {
    free: alloc::collections::BTreeSet<u64>,
    total_pages: u64,
}

impl SimFrames {
    /// Every page of `range` free.
    pub fn new(range: PhysRange) -> SimFrames {
        let first = range.start().frame().as_u64();
        SimFrames {
            free: (first..first + range.page_count()).collect(),
            total_pages: range.page_count(),
        }
    }

    /// No free pages; pages enter with [`SimFrames::free_run`] (a receiving kernel's view).
    pub fn empty() -> SimFrames {
        SimFrames {
            free: Default::default(),
            total_pages: 0,
        }
    }

    /// Free pages.
    pub fn free_count(&self) -> u64 {
        self.free.len() as u64
    }

    /// Pages managed.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Marks a run of pages free (released by a finish, say).
    pub fn free_run(&mut self, run: FrameRun) {
        for frame in run.first_frame..run.end_frame() {
            assert!(self.free.insert(frame), "page {frame:#x} freed twice");
        }
    }

    /// Removes every page of `range` from the free pool (intake reserving a range).
    pub fn reserve(&mut self, range: PhysRange) {
        for frame in range.start().frame().as_u64()..range.end().frame().as_u64() {
            self.free.remove(&frame);
        }
    }

    /// Whether a page is free.
    pub fn is_free(&self, addr: PhysAddr) -> bool {
        self.free.contains(&addr.frame().as_u64())
    }

    /// `page_count` contiguous free pages, lowest first.
    pub fn allocate_contiguous(&mut self, page_count: u64) -> Option<PhysAddr> {
        let mut run_start = None;
        let mut run_len = 0u64;
        let mut previous = None;
        for &frame in &self.free {
            if previous.is_some_and(|p: u64| p + 1 == frame) {
                run_len += 1;
            } else {
                run_start = Some(frame);
                run_len = 1;
            }
            previous = Some(frame);
            if run_len == page_count {
                let start = run_start?;
                for f in start..start + page_count {
                    self.free.remove(&f);
                }
                return PhysAddr::new(start * PAGE_SIZE).into();
            }
        }
        None
    }
}

impl FrameAllocator for SimFrames {
    fn allocate_page(&mut self) -> Option<PhysAddr> {
        let frame = self.free.pop_first()?;
        Some(PhysAddr::new(frame * PAGE_SIZE))
    }

    fn free_page(&mut self, addr: PhysAddr) {
        assert!(
            self.free.insert(addr.frame().as_u64()),
            "page {addr} freed twice"
        );
    }
}

/// A kernel file object: a memfd, or something no handler accepts (like `/dev/null`).
#[derive(Clone, Debug)]
pub enum SimObject {
    /// A memfd.
    Memfd(MemfdFile),
    /// Not preservable; the number tells instances apart.
    Plain(u64),
}

impl SimObject {
    /// The memfd, if this is one.
    pub fn memfd(&self) -> Option<&MemfdFile> {
        match self {
            SimObject::Memfd(file) => Some(file),
            SimObject::Plain(_) => None,
        }
    }
}

impl MemfdObject for SimObject {
    fn with_memfd<R>(&self, f: impl FnOnce(&mut Memfd) -> R) -> Option<R> {
        self.memfd()?.with(f)
    }

    fn identity(&self) -> u64 {
        match self {
            SimObject::Memfd(file) => file.identity(),
            SimObject::Plain(n) => *n,
        }
    }

    fn from_memfd(memfd: Memfd) -> Self {
        SimObject::Memfd(MemfdFile::new(memfd))
    }
}

/// The simulated kernel's file table: the core's [`FdTable`] over [`SimObject`]s.
pub type SimKernel = FdTable<SimObject>;

/// Checks everything a receiving kernel can observe of an image [`crate::Handover::parse`]
/// accepted, and panics on the first inconsistency: every run inside RAM, outside scratch and
/// the image, in order and disjoint; counts equal to the walk; names and tokens sorted and
/// found by their lookups; the image canonical (rebuilding it gives the same bytes); and every
/// session and file retrieved and finished through a fresh orchestrator with the memfd handler
/// without a panic. Tests and fuzz targets share it.
pub fn check_accepted(blob: &[u8]) {
    use crate::fdtable::agent;
    use crate::image::Handover;
    use crate::image::build::OwnedParts;
    use crate::incoming::IncomingStorage;
    use crate::luo::{Incoming, IncomingFileSlot, IncomingSessionState, Limits, LiveUpdate};
    use crate::memfd::MemfdHandler;

    static MEMFD: MemfdHandler = MemfdHandler::new();

    let handover = Handover::parse(blob).expect("check_accepted needs an accepted image");
    let ram: Vec<PhysRange> = handover.ram().iter().collect();
    let scratch: Vec<PhysRange> = handover.scratch().iter().collect();
    let image = handover.image_range();
    assert!(
        ram.iter().any(|r| r.contains_range(image)),
        "image outside RAM"
    );
    assert!(
        !scratch.iter().any(|s| s.overlaps(image)),
        "image in scratch"
    );
    let (mut previous_end, mut pages, mut blocks, mut runs) = (0u64, 0u64, 0u64, 0u64);
    handover.memory_map().walk(|run| {
        let range = run.range();
        assert!(run.block_count > 0 && !range.is_empty(), "empty run");
        assert!(
            range.start().as_u64() >= previous_end,
            "runs overlap or are out of order"
        );
        assert!(
            ram.iter().any(|r| r.contains_range(range)),
            "run outside RAM"
        );
        assert!(!scratch.iter().any(|s| s.overlaps(range)), "run in scratch");
        assert!(!image.overlaps(range), "run over the image");
        previous_end = range.end().as_u64();
        pages += run.page_count();
        blocks += run.block_count;
        runs += 1;
    });
    let counts = handover.memory_map().counts();
    assert_eq!(
        (runs, blocks, pages),
        (counts.run_count, counts.block_count, counts.page_count)
    );

    let names: Vec<Vec<u8>> = handover.sessions().map(|s| s.name().to_vec()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sessions not sorted");
    for session in handover.sessions() {
        assert_eq!(
            handover.find_session(session.name()).map(|s| s.index()),
            Some(session.index())
        );
        let tokens: Vec<u64> = session.files().map(|f| f.token).collect();
        assert_eq!(tokens.len(), session.file_count());
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens not sorted");
        for file in session.files() {
            assert_eq!(
                session.find_file(file.token).map(|f| f.index),
                Some(file.index)
            );
        }
    }
    let rebuilt = OwnedParts::from_handover(&handover)
        .rebuild()
        .expect("an accepted image rebuilds");
    // Fuzzing builds accept any stored checksum (see `verify_checksum`): compare with the
    // input resealed, so only a real difference counts.
    let mut expected = crate::image::build::HandoverImage::from_bytes(blob);
    if cfg!(fuzzing) {
        expected.reseal();
    }
    assert!(
        rebuilt.as_bytes() == expected.as_bytes(),
        "an accepted image is not canonical"
    );

    let mut storage = IncomingStorage::for_map(&handover.memory_map());
    let mut session_states = vec![IncomingSessionState::default(); handover.session_count()];
    let mut file_slots: Vec<IncomingFileSlot<SimObject>> = (0..handover.file_count())
        .map(|_| IncomingFileSlot::new())
        .collect();
    let pages = storage
        .pages(&handover.memory_map())
        .expect("storage sized from the counts");
    let incoming = Incoming::new(handover, pages, &mut session_states, &mut file_slots)
        .expect("storage sized");
    let mut luo: LiveUpdate<SimObject> = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).expect("register");
    luo.attach_incoming(incoming);
    let mut kernel = SimKernel::new();
    for name in &names {
        let fd = agent::retrieve_session(&mut luo, &mut kernel, name)
            .expect("retrieve a listed session");
        let view = handover.find_session(name).expect("listed");
        for file in view.files() {
            let first = agent::retrieve_fd(&mut luo, &mut kernel, fd, file.token);
            // A failure is sticky: the same errno again.
            let again = agent::retrieve_fd(&mut luo, &mut kernel, fd, file.token);
            assert_eq!(first.err(), again.err(), "retrieve outcome not sticky");
        }
        agent::finish(&mut luo, &mut kernel, fd, 0).expect("finish");
    }
}
