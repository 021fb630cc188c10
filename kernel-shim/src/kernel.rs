//! The kernel-shim kernel: intake of the loader's hand-off and the scenario's checks.
//!
//! [`intake`] follows the entry protocol (`docs/ENTRY.md`) in the order it demands: validate the
//! registers and `BootInfo`, bring up early memory *inside scratch only* (avoiding every range
//! in use at entry), let the caller reserve what the previous kernel preserved, and only then
//! build the frame allocator's final state and the heap (outside scratch). It then proves that
//! every early allocation lay in scratch. The shim is also bootable cold by PVH, in which case
//! it declares the cold-boot scratch itself, as the loader does.

use crate::incoming::{Blackout, early_avoid, inside_scratch};
use core::fmt;
use loader::handoff::{BootInfo, BootInfoError, InUseKind};
use loader::image::{MAX_SCRATCH_RANGES, normalise_scratch};
use loader::layout::{COLD_BOOT_SCRATCH, HEAP_PAGES};
use loader::{Handoff, KexecImage};
use qemu_platform::addr::{MIB, PhysRange};
use qemu_platform::cmdline::{Cmdline, CmdlineTooLong};
use qemu_platform::frame::FrameAllocator;
use qemu_platform::machine::early::{EarlyError, EarlyMemory};
use qemu_platform::machine::entry::{
    BootEntry, BootSource, boot_stack, boot_stack_used_bytes, image_range,
};
use qemu_platform::machine::heap::{self, HeapError};
use qemu_platform::machine::{cpu, phys, time};
use qemu_platform::memmap::MemoryMap;
use qemu_platform::protocol::SCENARIO_KEY;
use qemu_platform::pvh::{PvhBootInfo, PvhError};
use qemu_platform::{phase, verdict_fail, verdict_pass};

/// A kernel that has taken over the machine: what it was told and what it set up.
pub struct Intake {
    /// The validated `BootInfo` (`None` after a cold PVH boot).
    pub boot_info: Option<BootInfo>,
    /// The memory map.
    pub memory_map: MemoryMap,
    /// Scratch memory (sorted, merged).
    pub scratch: heapless::Vec<PhysRange, MAX_SCRATCH_RANGES>,
    /// The command line.
    pub cmdline: Cmdline,
    /// The handover image, if the previous kernel left one.
    pub handover: Option<PhysRange>,
    /// An ELF file passed on for the next kexec, if any (reserved): `BootInfo.initrd_*`, or
    /// PVH module 0 after a cold boot.
    pub initrd: Option<PhysRange>,
    /// The frame allocator, with the in-use ranges, the handover, the initrd, whatever the
    /// caller reserved, and the early allocations reserved.
    pub frames: FrameAllocator<'static>,
    /// Everything the early bump allocator handed out (inside scratch, reserved).
    pub early_used: PhysRange,
    /// The global heap (outside scratch).
    pub heap: PhysRange,
    /// The hand-off's timestamps (`None` after a cold boot).
    pub blackout: Option<Blackout>,
    /// The TSC frequency passed down the chain (0 = unknown).
    pub tsc_hz: u64,
}

/// Why intake failed. `E` is the caller's reservation error.
#[derive(Debug)]
pub enum IntakeError<E> {
    /// The entry registers or the `BootInfo` are not trustworthy.
    BootInfo(BootInfoError),
    /// The PVH start info (cold boot) is not usable.
    Pvh(PvhError),
    /// The command line is too long.
    Cmdline(CmdlineTooLong),
    /// Early memory could not be set up.
    Early(EarlyError),
    /// Reserving preserved memory failed.
    Preserved(E),
    /// An early allocation lay outside scratch (a bug this check exists to catch).
    EarlyOutsideScratch {
        /// What the bump allocator used.
        used: PhysRange,
    },
    /// The heap could not be set up.
    Heap(HeapError),
}

impl<E: fmt::Display> fmt::Display for IntakeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntakeError::BootInfo(error) => write!(f, "{error}"),
            IntakeError::Pvh(error) => write!(f, "{error}"),
            IntakeError::Cmdline(error) => write!(f, "{error}"),
            IntakeError::Early(error) => write!(f, "early memory: {error}"),
            IntakeError::Preserved(error) => write!(f, "reserving preserved memory: {error}"),
            IntakeError::EarlyOutsideScratch { used } => {
                write!(f, "early allocations {used} lie outside scratch")
            }
            IntakeError::Heap(error) => write!(f, "{error}"),
        }
    }
}

/// Takes over the machine from the entry registers (see the module documentation).
/// `reserve_preserved` runs while only the bump allocator (in scratch) may be used: it must
/// reserve, through `EarlyMemory::frames`, everything the previous kernel preserved. It is not
/// called after a cold boot.
pub fn intake<E>(
    entry: &BootEntry,
    reserve_preserved: impl FnOnce(&mut EarlyMemory, &BootInfo) -> Result<(), E>,
) -> Result<Intake, IntakeError<E>> {
    // EarlyMemory avoids the running image and the first MiB by itself.
    let (boot_info, memory_map, scratch, cmdline, avoid, initrd) = match entry.source {
        BootSource::Kexec { rdi, rsi, rdx } => {
            let info = BootInfo::read_at_entry(&phys::IdentityMap, rdi, rsi, rdx)
                .map_err(IntakeError::BootInfo)?;
            let memory_map = info.memory_map().map_err(IntakeError::BootInfo)?;
            let mut scratch_list: heapless::Vec<PhysRange, MAX_SCRATCH_RANGES> =
                heapless::Vec::new();
            for range in info.scratch() {
                // `validate` bounded the count by the array's length.
                let _ = scratch_list.push(range);
            }
            let scratch = normalise_scratch(&scratch_list).map_err(|_| {
                IntakeError::BootInfo(BootInfoError::ScratchNotPageAligned { index: 0 })
            })?;
            let cmdline = Cmdline::new(info.cmdline()).map_err(IntakeError::Cmdline)?;
            let avoid = early_avoid(&info);
            let initrd = info.initrd();
            (Some(info), memory_map, scratch, cmdline, avoid, initrd)
        }
        BootSource::Pvh { start_info } => {
            let boot =
                PvhBootInfo::read(&phys::IdentityMap, start_info).map_err(IntakeError::Pvh)?;
            let mut scratch = heapless::Vec::new();
            let _ = scratch.push(COLD_BOOT_SCRATCH);
            let mut avoid = heapless::Vec::new();
            // The modules are the only live data in scratch besides this image.
            for module in &boot.modules {
                let _ = avoid.push(*module);
            }
            // Module 0 (`-initrd`) is an ELF this kernel may kexec, as the loader's is.
            let initrd = boot.modules.first().copied();
            (None, boot.memory_map, scratch, boot.cmdline, avoid, initrd)
        }
    };
    let handover = boot_info.as_ref().and_then(BootInfo::handover);

    // SAFETY: by the entry protocol, scratch holds nothing live outside the in-use ranges, the
    // handover image and the initrd, all of which are in `avoid` (after a cold boot: nothing
    // but this image and the modules). Called once.
    let mut early =
        unsafe { EarlyMemory::new(&memory_map, &scratch, &avoid) }.map_err(IntakeError::Early)?;
    if let Some(info) = &boot_info {
        reserve_preserved(&mut early, info).map_err(IntakeError::Preserved)?;
    }
    let (mut frames, early_used) = early.finish();
    if !inside_scratch(early_used, &scratch) {
        return Err(IntakeError::EarlyOutsideScratch { used: early_used });
    }
    let heap =
        heap::init_from_frames(&mut frames, HEAP_PAGES, &scratch).map_err(IntakeError::Heap)?;
    let blackout = boot_info
        .as_ref()
        .map(|info| Blackout::new(info, entry.entry_tsc));
    // A cold boot measures the TSC itself, as the loader does.
    let tsc_hz = match &boot_info {
        Some(info) => info.tsc_hz,
        None => time::calibrate_tsc_hz().unwrap_or(0),
    };
    Ok(Intake {
        boot_info,
        memory_map,
        scratch,
        cmdline,
        handover,
        initrd,
        frames,
        early_used,
        heap,
        blackout,
        tsc_hz,
    })
}

/// The main function of both kernel-shim binaries.
pub fn main(entry: &BootEntry) -> ! {
    let intake = match intake(entry, |_, _| Ok::<(), core::convert::Infallible>(())) {
        Ok(intake) => intake,
        Err(error) => verdict_fail!("kernel-shim: intake failed: {error}"),
    };
    let ready_tsc = cpu::rdtsc();
    report(&intake, entry);

    let scenario = intake.cmdline.get(SCENARIO_KEY).unwrap_or("");
    let Some(blackout) = intake.blackout else {
        verdict_pass!(
            "kernel-shim booted cold by PVH (scenario {scenario:?}): no hand-off to check"
        )
    };
    let copy_us = blackout.micros(blackout.copy_cycles());
    let intake_us = blackout.micros(blackout.intake_cycles(ready_tsc));
    phase!(
        "blackout: copy {copy_us} us ({} cycles), jump {} us, intake {intake_us} us (TSC {} MHz)",
        blackout.copy_cycles(),
        blackout.micros(blackout.jump_cycles()),
        blackout.tsc_hz / 1_000_000
    );
    match scenario {
        "relaunch" => relaunch(intake),
        "empty" | "overlap" => {
            if intake.handover.is_some() {
                verdict_fail!(
                    "scenario {scenario}: expected no handover image, got {:?}",
                    intake.handover
                );
            }
            verdict_pass!(
                "kexec into kernel-shim at {}: blackout copy {copy_us} us + intake {intake_us} us",
                image_range().start()
            )
        }
        other => verdict_fail!("scenario {other:?} is not implemented in the kernel-shim yet"),
    }
}

/// The `relaunch` scenario: kexec this same kernel again from the ELF the loader passed on,
/// in place over the running image (the shim acting as a loader, as in a chain). The second
/// instance (`hop=2` on its command line) passes.
fn relaunch(mut intake: Intake) -> ! {
    let hop: u32 = intake
        .cmdline
        .get("hop")
        .and_then(|hop| hop.parse().ok())
        .unwrap_or(1);
    if hop >= 2 {
        verdict_pass!("kernel-shim kexeced itself in place and came up again (hop {hop})")
    }
    let Some(initrd) = intake.initrd.filter(|range| phys::is_accessible(*range)) else {
        verdict_fail!(
            "relaunch: no usable ELF passed on as initrd ({:?})",
            intake.initrd
        )
    };
    // SAFETY: the initrd is identity mapped (checked above) and reserved in the frame
    // allocator (intake avoided and reserved it), so nothing writes it while we read it.
    let elf = unsafe { phys::slice(initrd) };
    let image = match KexecImage::load(elf, &intake.scratch, &intake.memory_map) {
        Ok(image) => image,
        Err(error) => verdict_fail!("relaunch: {error}"),
    };
    let own_image = image_range();
    if let Some(dest) = image.destinations().find(|dest| dest.overlaps(own_image)) {
        phase!("relaunch: destination {dest} overlaps the running kernel-shim {own_image}");
    }
    let cmdline = alloc::format!("{SCENARIO_KEY}=relaunch hop={}", hop.saturating_add(1));
    let handoff = Handoff {
        handover: None,
        initrd: Some(initrd),
        cmdline: cmdline.as_bytes(),
        tsc_hz: intake.tsc_hz,
    };
    let ready = match image.prepare(&handoff, &mut intake.frames) {
        Ok(ready) => ready,
        Err(error) => verdict_fail!("relaunch: cannot hand over: {error}"),
    };
    phase!(
        "relaunch: hop {hop} kexecs into {}; trampoline {}, boot info {}",
        ready.image().entry(),
        ready.plan().trampoline,
        ready.plan().boot_info
    );
    ready.execute()
}

fn report(intake: &Intake, entry: &BootEntry) {
    let how = match entry.source {
        BootSource::Kexec { rsi, .. } => {
            let version = intake.boot_info.as_ref().map_or(0, |info| info.version);
            phase!(
                "kernel-shim: entered by kexec; image {}; BootInfo v{version} at {rsi:#x}",
                image_range()
            );
            "kexec"
        }
        BootSource::Pvh { .. } => {
            phase!("kernel-shim: booted cold by PVH; image {}", image_range());
            "pvh"
        }
    };
    phase!(
        "received ({how}): {} memory regions, {} MiB RAM, scratch {:?}, handover {:?}, initrd {:?}, command line \"{}\"",
        intake.memory_map.regions().len(),
        intake.memory_map.ram_len_bytes() / MIB,
        intake.scratch.as_slice(),
        intake.handover,
        intake.initrd,
        intake.cmdline
    );
    if let Some(info) = &intake.boot_info {
        for (kind, range) in info.in_use() {
            let name = InUseKind::from_u32(kind).map_or("unknown", InUseKind::name);
            phase!("in use at entry: {range} {name}");
        }
    }
    phase!(
        "memory: early allocations {} inside scratch; {} of {} pages free; heap {}; stack {} of {} KiB used",
        intake.early_used,
        intake.frames.free_page_count(),
        intake.frames.ram_page_count(),
        intake.heap,
        boot_stack_used_bytes() / 1024,
        boot_stack().len_bytes() / 1024
    );
}
