//! The reboot step of a kexec with a handover, shared by every kernel of a chain (the loader
//! image and the kernel-shim): load the next kernel first (as `kexec -l` does), freeze the
//! sessions and write the handover image outside scratch, verify every staged segment against
//! its digest, and only then return the ready jump. Any failure before that point rolls the
//! reboot step back (sessions open, state intact, image pages freed) and says why.

use core::fmt;

use handover::fdt;
use handover::image::Handover;
use handover::image::build::BuildError;
use handover::luo::LiveUpdate;
use handover::memfd::MemfdFile;
use handover::uapi::Errno;
use handover::{FormatError, PhysRange};
use qemu_platform::frame::FrameAllocator;
use qemu_platform::machine::phys;
use qemu_platform::memmap::MemoryMap;

use crate::memory::FilePages;
use crate::trampoline::ReadyKexec;
use crate::{Handoff, KexecImage, LoadError, PrepareError};

/// The orchestrator of a kernel in this workspace: memfd files, `'static` handlers and
/// incoming storage.
pub type Orchestrator = LiveUpdate<'static, 'static, MemfdFile>;

/// Why a kexec was refused. Every variant leaves the running kernel as it was.
#[derive(Debug)]
pub enum RebootError {
    /// The next kernel's ELF was refused.
    Load(LoadError),
    /// A file refused to freeze (the freeze was rolled back).
    Freeze(Errno),
    /// The image could not be built or placed.
    Build(BuildError),
    /// The image written does not validate (a builder bug this check exists to catch).
    SelfCheck(FormatError),
    /// The hand-off could not be prepared: a damaged segment, or no room.
    Prepare(PrepareError),
}

impl fmt::Display for RebootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebootError::Load(error) => write!(f, "next kernel refused: {error}"),
            RebootError::Freeze(errno) => write!(f, "reboot step failed: freeze returned {errno}"),
            RebootError::Build(error) => write!(f, "handover image: {error}"),
            RebootError::SelfCheck(error) => {
                write!(f, "handover image failed its own check: {error}")
            }
            RebootError::Prepare(error) => write!(f, "{error}"),
        }
    }
}

/// Everything a kexec with a handover needs from the running kernel.
pub struct RebootContext<'a> {
    /// The orchestrator whose sessions are handed over.
    pub luo: &'a mut Orchestrator,
    /// The frame allocator (the image and the hand-off structures come from it).
    pub frames: &'a mut FrameAllocator<'static>,
    /// Scratch, as declared along the chain.
    pub scratch: &'a [PhysRange],
    /// The machine's memory map.
    pub memory_map: &'a MemoryMap,
    /// The next kernel's ELF file.
    pub elf: &'a [u8],
}

/// A staged kexec: the image's range, and the jump.
pub struct StagedKexec {
    /// Where the handover image lies.
    pub handover: PhysRange,
    /// The next kernel, ready to run.
    pub ready: ReadyKexec,
}

/// Runs the reboot step and stages the jump. `tamper` sees the loaded kernel and the sealed
/// image bytes in place just before the final verification (the `bad-kernel` and `corrupt`
/// scenarios damage one of them there; everyone else passes `|_, _| {}`).
pub fn stage_kexec(
    context: RebootContext<'_>,
    handoff: Handoff<'_>,
    tamper: impl FnOnce(&mut KexecImage, &mut [u8]),
) -> Result<StagedKexec, RebootError> {
    let RebootContext {
        luo,
        frames,
        scratch,
        memory_map,
        elf,
    } = context;
    // Load first, as `kexec -l` does: a bad kernel is refused before anything is frozen.
    let mut image = KexecImage::load(elf, scratch, memory_map).map_err(RebootError::Load)?;
    let plan = luo.prepare_reboot().map_err(RebootError::Freeze)?;
    let mut pages = FilePages::new(frames, scratch);
    let mut placed = None;
    let built = luo.build_image(&plan, |page_count| {
        let range = pages.allocate_contiguous(page_count)?;
        placed = Some(range);
        Some(range.start())
    });
    let roll_back =
        |luo: &mut Orchestrator, pages: &mut FilePages<'_, '_>, placed: Option<PhysRange>| {
            if let Some(range) = placed {
                pages.free_range(range);
            }
            luo.abort_reboot();
        };
    let sealed = match built {
        Ok(sealed) => sealed,
        Err(error) => {
            roll_back(luo, &mut pages, placed);
            return Err(RebootError::Build(error));
        }
    };
    let range = sealed.range();
    let blob_range = PhysRange::new(range.start(), sealed.as_bytes().len() as u64).unwrap_or(range);
    // SAFETY: `range` was just allocated to this image from free RAM outside scratch (which
    // the identity map covers), so these bytes are ours alone.
    let destination = unsafe { phys::slice_mut(blob_range) };
    destination.copy_from_slice(sealed.as_bytes());
    // Check what we hand over with the next kernel's own validator (it is cheap).
    if let Err(error) = Handover::parse(destination) {
        roll_back(luo, &mut pages, placed);
        return Err(RebootError::SelfCheck(error));
    }
    debug_assert_eq!(fdt::total_size(destination).ok(), Some(destination.len()));
    tamper(&mut image, destination);
    let handoff = Handoff {
        handover: Some(range),
        ..handoff
    };
    match image.prepare(&handoff, pages.frames()) {
        Ok(ready) => Ok(StagedKexec {
            handover: range,
            ready,
        }),
        Err(error) => {
            roll_back(luo, &mut pages, placed);
            Err(RebootError::Prepare(error))
        }
    }
}
