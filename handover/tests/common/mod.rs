//! Shared harness: a simulated machine, ioctl helpers, a scripted test handler, and a "kexec"
//! that moves a sealed image through simulated RAM into a fresh receiving kernel.
#![allow(dead_code, unused_imports)]

use std::cell::RefCell;

use handover::handler::{Compatible, FileHandler};
use handover::image::build::HandoverImage;
use handover::incoming::{IncomingPages, IncomingStorage};
use handover::luo::{Incoming, IncomingFileSlot, IncomingSessionState, Limits, LiveUpdate, Target};
use handover::memfd::{Memfd, MemfdFile, MemfdHandler};
use handover::memmap::FrameRun;
use handover::sim::{SimFrames, SimKernel, SimObject, SimRam};
use handover::tracker::PreservationTracker;
use handover::uapi::*;
use handover::*;
use zerocopy::{FromBytes, IntoBytes};

pub const MIB: u64 = 1 << 20;

pub fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

/// RAM [1 MiB, 25 MiB) with scratch [1 MiB, 9 MiB): files live in [9 MiB, 25 MiB). Small, so
/// the simulated RAM (every byte of it allocated) stays cheap under Miri too.
pub fn layout() -> (Vec<PhysRange>, Vec<PhysRange>) {
    (vec![range(MIB, 24 * MIB)], vec![range(MIB, 8 * MIB)])
}

/// Where the page allocator hands out file pages (lowest first).
pub fn file_area() -> PhysRange {
    range(9 * MIB, 16 * MIB)
}

pub static MEMFD: MemfdHandler = MemfdHandler::new();

/// A handler for `SimObject::Plain(n)` with n ≥ 100, scripted to fail on demand, logging
/// every hook call.
pub struct Scripted {
    pub log: RefCell<Vec<String>>,
    pub fail_freeze: Option<u64>,
    pub fail_retrieve: Option<u64>,
    pub busy: RefCell<Option<u64>>,
}

impl Scripted {
    pub fn new() -> Scripted {
        Scripted {
            log: RefCell::new(Vec::new()),
            fail_freeze: None,
            fail_retrieve: None,
            busy: RefCell::new(None),
        }
    }

    fn note(&self, what: &str, n: u64) {
        self.log.borrow_mut().push(format!("{what} {n}"));
    }

    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.log.borrow_mut())
    }
}

fn plain(object: &SimObject) -> Option<u64> {
    match object {
        SimObject::Plain(n) if *n >= 100 => Some(*n),
        _ => None,
    }
}

impl FileHandler<SimObject> for Scripted {
    fn compatible(&self) -> Compatible {
        Compatible {
            name: "scripted",
            version: 1,
        }
    }
    fn oldest_readable_version(&self) -> u32 {
        1
    }
    fn can_preserve(&self, object: &SimObject) -> bool {
        plain(object).is_some()
    }
    fn identity(&self, object: &SimObject) -> u64 {
        plain(object).unwrap_or(0)
    }
    fn preserve(&self, object: &SimObject, _: &mut PreservationTracker) -> Result<(), Errno> {
        self.note("preserve", plain(object).unwrap());
        Ok(())
    }
    fn unpreserve(&self, object: &SimObject, _: &mut PreservationTracker) {
        self.note("unpreserve", plain(object).unwrap());
    }
    fn freeze(&self, object: &SimObject, _: &mut PreservationTracker) -> Result<(), Errno> {
        let n = plain(object).unwrap();
        self.note("freeze", n);
        if self.fail_freeze == Some(n) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }
    fn unfreeze(&self, object: &SimObject, _: &mut PreservationTracker) {
        self.note("unfreeze", plain(object).unwrap());
    }
    fn serialize(&self, object: &SimObject, out: &mut Vec<u8>) -> Result<(), Errno> {
        out.extend_from_slice(&plain(object).unwrap().to_le_bytes());
        Ok(())
    }
    fn retrieve(
        &self,
        record: &[u8],
        _: u32,
        _: &mut IncomingPages<'_>,
    ) -> Result<SimObject, Errno> {
        let n = u64::from_le_bytes(record.try_into().map_err(|_| Errno::EINVAL)?);
        self.note("retrieve", n);
        if self.fail_retrieve == Some(n) {
            Err(Errno::EIO)
        } else {
            Ok(SimObject::Plain(n))
        }
    }
    fn can_finish(&self, record: &[u8], _: u32, _: Option<&SimObject>) -> bool {
        let n = u64::from_le_bytes(record.try_into().unwrap());
        *self.busy.borrow() != Some(n)
    }
    fn finish(
        &self,
        record: &[u8],
        _: u32,
        retrieved: Option<&SimObject>,
        _: &mut IncomingPages<'_>,
        _: &mut dyn FnMut(FrameRun),
    ) {
        let n = u64::from_le_bytes(record.try_into().unwrap());
        self.note(
            if retrieved.is_some() {
                "finish-retrieved"
            } else {
                "finish-unretrieved"
            },
            n,
        );
    }
}

// --- ioctl helpers ------------------------------------------------------------------------------

pub type Luo<'h, 'i> = LiveUpdate<'h, 'i, SimObject>;

pub fn name_field(name: &[u8]) -> [u8; 64] {
    let mut field = [0u8; 64];
    field[..name.len()].copy_from_slice(name);
    field
}

pub use handover::fdtable::agent::{
    close_session as close, create_session, finish, preserve_fd, retrieve_fd, retrieve_session,
};

pub fn session(k: &SimKernel, fd: i32) -> Target {
    Target::Session(k.session(fd).expect("session fd"))
}

// --- memfds ---------------------------------------------------------------------------------

/// Deterministic contents: byte i of file `seed` is a hash of (seed, i).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B)) >> 7) as u8)
        .collect()
}

/// A memfd of `len` bytes of `pattern(seed)` written at `offset`.
pub fn memfd_with(
    ram: &mut SimRam,
    frames: &mut SimFrames,
    seed: u64,
    offset: u64,
    len: usize,
) -> MemfdFile {
    let mut memfd = Memfd::new();
    memfd
        .write_at(offset, &pattern(seed, len), frames, ram)
        .unwrap();
    MemfdFile::new(memfd)
}

pub fn read_all(file: &MemfdFile, ram: &SimRam) -> Vec<u8> {
    file.with(|m| {
        let mut buf = vec![0u8; m.size() as usize];
        m.read_at(0, &mut buf, ram);
        buf
    })
    .unwrap()
}

// --- kexec --------------------------------------------------------------------------------------

/// The outgoing kernel: its RAM, page allocator, file table and orchestrator.
pub struct Outgoing<'h> {
    pub ram: SimRam,
    pub frames: SimFrames,
    pub kernel: SimKernel,
    pub luo: Luo<'h, 'static>,
}

impl<'h> Outgoing<'h> {
    pub fn new(handlers: &[&'h dyn FileHandler<SimObject>]) -> Outgoing<'h> {
        Self::with_limits(handlers, Limits::default())
    }

    pub fn with_limits(
        handlers: &[&'h dyn FileHandler<SimObject>],
        limits: Limits,
    ) -> Outgoing<'h> {
        let (ram, scratch) = layout();
        let tracker = PreservationTracker::new(&ram, &scratch).unwrap();
        let mut luo = LiveUpdate::with_tracker(limits, tracker);
        for handler in handlers {
            luo.register_handler(*handler).unwrap();
        }
        Outgoing {
            ram: SimRam::new(&ram),
            frames: SimFrames::new(file_area()),
            kernel: SimKernel::new(),
            luo,
        }
    }

    pub fn memfd(&mut self, seed: u64, offset: u64, len: usize) -> (i32, MemfdFile) {
        let file = memfd_with(&mut self.ram, &mut self.frames, seed, offset, len);
        let fd = self.kernel.open(SimObject::Memfd(file.clone()));
        (fd, file)
    }

    /// Runs the reboot step and seals an image into simulated RAM. Returns the RAM and image.
    pub fn kexec(mut self) -> (SimRam, HandoverImage) {
        let plan = self.luo.prepare_reboot().expect("reboot step");
        let frames = &mut self.frames;
        let image = self
            .luo
            .build_image(&plan, |pages| frames.allocate_contiguous(pages))
            .expect("image");
        let mut ram = self.ram;
        let dst = PhysRange::new(image.range().start(), image.as_bytes().len() as u64).unwrap();
        ram.slice_mut(dst).copy_from_slice(image.as_bytes());
        (ram, image)
    }
}

/// What the receiving kernel found: the blob copied out of RAM (aligned), its free pages.
pub struct Arrival {
    pub ram: SimRam,
    pub blob: HandoverImage,
    pub frames: SimFrames,
}

/// The receiving kernel's intake: reads the image from RAM at `at`, validates it, reserves
/// everything preserved and the image, and hands the rest of RAM outside scratch to the
/// allocator. Memory nobody reserved is scribbled over first, as a new kernel would.
pub fn arrive(mut ram: SimRam, at: PhysAddr) -> Arrival {
    let header = ram.slice(PhysRange::new(at, 40).unwrap()).to_vec();
    let len = handover::fdt::total_size(&header).unwrap();
    let blob = HandoverImage::from_bytes(ram.slice(PhysRange::new(at, len as u64).unwrap()));
    let handover = Handover::parse(blob.as_bytes()).expect("valid handover");
    handover.check_boot_ram(&ram.ranges()).unwrap();
    let mut keep = vec![handover.image_range()];
    handover.memory_map().walk(|run| keep.push(run.range()));
    ram.scribble_except(&keep, 0xA5);
    let mut frames = SimFrames::new(file_area());
    for range in &keep {
        frames.reserve(*range);
    }
    Arrival { ram, blob, frames }
}

/// Storage for an incoming side.
pub struct IncomingStore {
    pub pages: IncomingStorage,
    pub sessions: Vec<IncomingSessionState>,
    pub files: Vec<IncomingFileSlot<SimObject>>,
}

impl IncomingStore {
    pub fn for_handover(handover: &Handover<'_>) -> IncomingStore {
        let (sessions, files) = Incoming::<SimObject>::storage_for(handover);
        IncomingStore {
            pages: IncomingStorage::for_map(&handover.memory_map()),
            sessions: vec![IncomingSessionState::default(); sessions],
            files: (0..files).map(|_| IncomingFileSlot::new()).collect(),
        }
    }

    pub fn attach<'i>(&'i mut self, handover: Handover<'i>, luo: &mut Luo<'_, 'i>) {
        let map = handover.memory_map();
        let pages = self.pages.pages(&map).unwrap();
        let incoming = Incoming::new(handover, pages, &mut self.sessions, &mut self.files).unwrap();
        luo.attach_incoming(incoming);
    }
}

/// Reads a file's bytes back from the object a retrieve returned.
pub fn memfd_of(k: &SimKernel, fd: i32) -> MemfdFile {
    k.object(fd)
        .and_then(|o| o.memfd())
        .cloned()
        .expect("memfd fd")
}

pub fn u32_at(bytes: &[u8]) -> u32 {
    u32::read_from_bytes(&bytes[..4]).unwrap()
}

// --- reference image -------------------------------------------------------------------------------

/// The reference image of the default memfd handler, built once per test binary (building it
/// costs Miri tens of seconds).
pub fn reference() -> &'static HandoverImage {
    static IMAGE: std::sync::OnceLock<HandoverImage> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| reference_image(&MEMFD))
}

/// A small image exercising every part of the format: two orders of preserved blocks, a
/// bitmap cluster, sparse and dense memfds, a session without files, arbitrary name bytes.
pub fn reference_image(memfd: &'static MemfdHandler) -> HandoverImage {
    let mut w = Outgoing::new(&[memfd]);
    let (a, _) = w.memfd(1, 0, 3 * 4096 + 100);
    let (b, file_b) = w.memfd(2, 2 * 4096, 100);
    file_b
        .with(|m| m.add_seals(handover::memfd::F_SEAL_SHRINK))
        .unwrap()
        .unwrap();
    let (c, _) = w.memfd(3, 0, 10);
    {
        let tracker = w.luo.tracker_mut().unwrap();
        // Two order-2 blocks and a dense scatter of single pages.
        tracker.preserve_block(PhysAddr::new(16 * MIB), 2).unwrap();
        tracker
            .preserve_block(PhysAddr::new(16 * MIB + 16384), 2)
            .unwrap();
        for i in 0..40u64 {
            if i % 3 != 1 {
                tracker
                    .preserve_page(PhysAddr::new(18 * MIB + i * 4096))
                    .unwrap();
            }
        }
    }
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s1 = create_session(luo, k, b"vm-17/state").unwrap();
    preserve_fd(luo, k, s1, a, 0xfeed).unwrap();
    preserve_fd(luo, k, s1, b, 3).unwrap();
    let s2 = create_session(luo, k, &[0xc3, 0x28, b' ', 0x01]).unwrap();
    preserve_fd(luo, k, s2, c, u64::MAX).unwrap();
    create_session(luo, k, b"empty").unwrap();
    w.kexec().1
}

#[allow(unused_imports)]
pub use handover::sim::check_accepted;
