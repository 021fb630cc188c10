//! The restore API a kernel calls from its own early boot.
//!
//! 1. [`receive`], before the kernel allocates anything but scratch: validate the handover
//!    blob, check it against the boot memory map, and report every range to reserve (the
//!    preserved runs and the image itself). Nothing is reported unless the whole blob is valid:
//!    a refused handover leaves the kernel free to boot on without revival.
//! 2. [`attach`], once the allocator runs: give the orchestrator the incoming sessions, in
//!    storage sized from the validator's counts.
//! 3. Userspace retrieves sessions and files through the orchestrator's `ioctl`; when
//!    [`handover::luo::Incoming::is_complete`], the kernel frees the image's range.
//!
//! ```
//! # use handover::{PhysAddr, PhysRange, Handover};
//! # use handover::luo::{LiveUpdate, Limits};
//! # use handover::memfd::{MemfdFile, MemfdHandler};
//! # use handover::tracker::PreservationTracker;
//! # static MEMFD: MemfdHandler = MemfdHandler::new();
//! # let ram = [PhysRange::new(PhysAddr::new(1 << 20), 63 << 20).unwrap()];
//! # let mut previous: LiveUpdate<MemfdFile> =
//! #     LiveUpdate::with_tracker(Limits::default(), PreservationTracker::new(&ram, &[]).unwrap());
//! # previous.tracker_mut().unwrap().preserve_page(PhysAddr::new(16 << 20)).unwrap();
//! # let plan = previous.prepare_reboot().unwrap();
//! # let image = previous.build_image(&plan, |_| Some(PhysAddr::new(32 << 20))).unwrap();
//! # let blob: &'static [u8] = Box::leak(Box::new(image)).as_bytes();
//! // Early boot: `blob` is the handover the previous kernel left (found through the boot
//! // protocol), `ram` this kernel's boot memory map.
//! let mut reserved = Vec::new();
//! let handover = kernel_shim::restore::receive(blob, &ram, |range| reserved.push(range))?;
//! assert!(reserved.contains(&handover.image_range()));
//!
//! // Later, with an allocator: the orchestrator takes the sessions back.
//! let mut luo: LiveUpdate<MemfdFile> = LiveUpdate::new(Limits::default());
//! luo.register_handler(&MEMFD).unwrap();
//! kernel_shim::restore::attach(handover, &mut luo).unwrap();
//! assert!(luo.incoming().unwrap().is_complete()); // no sessions: the image can go
//! # Ok::<(), handover::FormatError>(())
//! ```

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use handover::image::Handover;
use handover::incoming::IncomingStorage;
use handover::luo::{Incoming, IncomingFileSlot, IncomingSessionState, LiveUpdate};
use handover::uapi::Errno;
use handover::{FormatError, PhysRange};

/// Validates `blob` (exactly the image's `totalsize` bytes, 4-byte aligned), checks its RAM
/// against `boot_ram` (canonical), and only then calls `reserve` with the image's range and
/// every preserved run. Allocates nothing.
pub fn receive<'a>(
    blob: &'a [u8],
    boot_ram: &[PhysRange],
    mut reserve: impl FnMut(PhysRange),
) -> Result<Handover<'a>, FormatError> {
    let handover = Handover::parse(blob)?;
    handover.check_boot_ram(boot_ram)?;
    reserve(handover.image_range());
    handover.memory_map().walk(|run| reserve(run.range()));
    Ok(handover)
}

/// The incoming side's storage: page claims, session and file states. It lives until the
/// next kexec, so [`attach`] leaks it.
struct IncomingStore<O> {
    pages: IncomingStorage,
    sessions: Vec<IncomingSessionState>,
    files: Vec<IncomingFileSlot<O>>,
}

/// Gives `luo` the sessions of `handover`, in storage sized from its counts (allocated now,
/// and kept for the kernel's lifetime).
pub fn attach<O: Clone + 'static>(
    handover: Handover<'static>,
    luo: &mut LiveUpdate<'_, 'static, O>,
) -> Result<(), Errno> {
    let (session_count, file_count) = Incoming::<O>::storage_for(&handover);
    let store: &'static mut IncomingStore<O> = Box::leak(Box::new(IncomingStore {
        pages: IncomingStorage::for_map(&handover.memory_map()),
        sessions: vec![IncomingSessionState::default(); session_count],
        files: (0..file_count).map(|_| IncomingFileSlot::new()).collect(),
    }));
    let pages = store
        .pages
        .pages(&handover.memory_map())
        .map_err(|_| Errno::ENOMEM)?;
    let incoming = Incoming::new(handover, pages, &mut store.sessions, &mut store.files)?;
    luo.attach_incoming(incoming);
    Ok(())
}
