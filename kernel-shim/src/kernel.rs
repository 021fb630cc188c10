//! The kernel-shim kernel: intake of the loader's hand-off and the scenario's checks.
//!
//! [`intake`] follows the entry protocol (`docs/ENTRY.md`) in the order it demands: validate the
//! registers and `BootInfo`, bring up early memory *inside scratch only* (avoiding every range
//! in use at entry), let the caller reserve what the previous kernel preserved, and only then
//! build the frame allocator's final state and the heap (outside scratch). It then proves that
//! every early allocation lay in scratch. The shim is also bootable cold by PVH, in which case
//! it declares the cold-boot scratch itself, as the loader does.

use crate::incoming::{Blackout, early_avoid, inside_scratch};
use crate::restore;
use core::fmt;
use handover::fdt;
use handover::fdtable::agent;
use handover::image::Handover;
use handover::luo::{Limits, LiveUpdate};
use handover::memfd::{MemfdHandler, MemfdRecord};
use handover::tracker::PreservationTracker;
use handover::{FormatError, FormatErrorKind, PhysAddr};
use loader::handoff::{BootInfo, BootInfoError, InUseKind};
use loader::image::{MAX_SCRATCH_RANGES, normalise_scratch};
use loader::layout::{COLD_BOOT_SCRATCH, HEAP_PAGES};
use loader::memory::{FilePages, ram_ranges};
use loader::reboot::{Orchestrator, RebootContext, stage_kexec};
use loader::workload::{self, Files, SessionSpec};
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
/// reserve, through `EarlyMemory::frames`, everything the previous kernel preserved. It gets
/// the boot memory map intake already read from the `BootInfo`. It is not called after a cold
/// boot.
pub fn intake<E>(
    entry: &BootEntry,
    reserve_preserved: impl FnOnce(&mut EarlyMemory, &BootInfo, &MemoryMap) -> Result<(), E>,
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
        reserve_preserved(&mut early, info, &memory_map).map_err(IntakeError::Preserved)?;
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

/// What intake found at the handover address: a validated image, already reserved, or the
/// reason it was refused.
// One value on the stack during early intake, before any heap exists: boxing the large
// variant is not an option there.
#[allow(clippy::large_enum_variant)]
enum Received {
    None,
    Accepted(Handover<'static>),
    Refused(FormatError),
}

/// The intake hook: find the handover through the `BootInfo`, validate it, and reserve what it
/// preserves. Runs while only scratch may be allocated from: it allocates nothing at all.
fn receive_handover(early: &mut EarlyMemory, info: &BootInfo, memory_map: &MemoryMap) -> Received {
    let Some(range) = info.handover() else {
        return Received::None;
    };
    let blob = match handover_blob(range) {
        Ok(blob) => blob,
        Err(error) => return Received::Refused(error),
    };
    let ram = ram_ranges(memory_map);
    match restore::receive(blob, &ram, |preserved| {
        early.frames().reserve(preserved);
    }) {
        Ok(handover) => Received::Accepted(handover),
        Err(error) => Received::Refused(error),
    }
}

fn refusal(kind: FormatErrorKind, field: &'static str, value: u64) -> FormatError {
    FormatError {
        kind,
        field,
        offset: 0,
        value,
    }
}

/// The handover image's bytes: exactly `totalsize` of them, read in place.
fn handover_blob(range: PhysRange) -> Result<&'static [u8], FormatError> {
    let header = PhysRange::new(range.start(), 40)
        .filter(|h| range.contains_range(*h) && phys::is_accessible(range));
    let Some(header) = header else {
        return Err(refusal(
            FormatErrorKind::Truncated,
            "handover range",
            range.len_bytes(),
        ));
    };
    // SAFETY: the range is identity mapped (checked above) and reserved at entry (intake
    // avoids and reserves the handover image), so nothing writes it while the slice lives.
    let total = fdt::total_size(unsafe { phys::slice(header) })?;
    let blob = PhysRange::new(range.start(), total as u64)
        .filter(|blob| range.contains_range(*blob))
        .ok_or(refusal(
            FormatErrorKind::BadHeader,
            "header.totalsize",
            total as u64,
        ))?;
    // SAFETY: as above; `blob` lies inside the checked range.
    Ok(unsafe { phys::slice(blob) })
}

static MEMFD: MemfdHandler = MemfdHandler::new();

/// The main function of both kernel-shim binaries.
pub fn main(entry: &BootEntry) -> ! {
    let mut received = Received::None;
    let intake = match intake(entry, |early, info, memory_map| {
        received = receive_handover(early, info, memory_map);
        Ok::<(), core::convert::Infallible>(())
    }) {
        Ok(intake) => intake,
        Err(error) => verdict_fail!("kernel-shim: intake failed: {error}"),
    };
    let ready_tsc = cpu::rdtsc();
    report(&intake, entry);

    // The scenario name, copied out so `intake` can move on.
    let scenario: heapless::String<32> =
        heapless::String::try_from(intake.cmdline.get(SCENARIO_KEY).unwrap_or(""))
            .unwrap_or_default();
    let scenario = scenario.as_str();
    let Some(blackout) = intake.blackout else {
        verdict_pass!(
            "kernel-shim booted cold by PVH (scenario {scenario:?}): no hand-off to check"
        )
    };
    let copy_us = blackout.micros(blackout.copy_cycles());
    let intake_us = blackout.micros(blackout.intake_cycles(ready_tsc));
    phase!(
        "blackout: copy {copy_us} us ({} cycles), jump {} us, intake {intake_us} us ({} cycles, validating and reserving the handover included; TSC {} MHz)",
        blackout.copy_cycles(),
        blackout.micros(blackout.jump_cycles()),
        blackout.intake_cycles(ready_tsc),
        blackout.tsc_hz / 1_000_000
    );
    let timing = alloc::format!("blackout copy {copy_us} us + intake {intake_us} us");
    let handover = match (received, scenario) {
        (Received::Refused(error), "corrupt") => {
            phase!("handover refused: {error}");
            verdict_pass!(
                "refused the damaged handover ({}), booted on without revival; every early allocation ({}) lay in scratch",
                error.kind.describe(),
                intake.early_used
            )
        }
        (Received::Accepted(_), "corrupt") => {
            verdict_fail!("corrupt: a damaged handover was accepted")
        }
        (Received::None, "relaunch") => relaunch(intake),
        (Received::None, _) => verdict_fail!("scenario {scenario}: the loader left no handover"),
        (Received::Refused(error), _) => verdict_fail!("handover refused: {error}"),
        (Received::Accepted(handover), _) => handover,
    };
    let counts = handover.memory_map().counts();
    phase!(
        "handover: generation {}, {} sessions, {} files; {} pages preserved in {} runs, image {}; validated and reserved during intake",
        handover.generation(),
        handover.session_count(),
        handover.file_count(),
        counts.page_count,
        counts.run_count,
        handover.image_range()
    );
    let mut kernel = match Kernel::new(intake, handover) {
        Ok(kernel) => kernel,
        Err(error) => verdict_fail!("kernel-shim: {error}"),
    };
    match scenario {
        "empty" => {
            kernel.release_finished();
            if handover.session_count() != 0 {
                verdict_fail!(
                    "empty: the handover has {} sessions",
                    handover.session_count()
                );
            }
            kernel.check_nothing_left();
            verdict_pass!("nothing to restore: the handover held no session; {timing}")
        }
        "basic" | "overlap" => restore_all(kernel, &workload::basic(), &timing),
        "many" => restore_all(kernel, &workload::many(), &timing),
        "chain" => chain(kernel, &timing),
        "unfinished" => unfinished(kernel, &timing),
        other => verdict_fail!("scenario {other:?} does not expect a handover"),
    }
}

/// A kernel that took a handover: its memory, its orchestrator and its file table.
struct Kernel {
    intake: Intake,
    handover: Handover<'static>,
    luo: &'static mut Orchestrator,
    files: Files,
}

impl Kernel {
    fn new(intake: Intake, handover: Handover<'static>) -> Result<Kernel, alloc::string::String> {
        let ram = ram_ranges(&intake.memory_map);
        let tracker = PreservationTracker::new(&ram, &intake.scratch)
            .map_err(|e| alloc::format!("tracker: {e}"))?;
        let luo: &'static mut Orchestrator = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            LiveUpdate::with_tracker(Limits::default(), tracker),
        ));
        luo.register_handler(&MEMFD)
            .map_err(|e| alloc::format!("register memfd handler: {e}"))?;
        restore::attach(handover, luo)
            .map_err(|e| alloc::format!("attach the incoming sessions: {e}"))?;
        Ok(Kernel {
            intake,
            handover,
            luo,
            files: Files::new(),
        })
    }

    /// Frees what finishes released, and the image once every session is finished.
    fn release_finished(&mut self) {
        for run in core::mem::take(&mut self.files.released) {
            if let Err(error) = self.intake.frames.free_range(run.range()) {
                verdict_fail!("releasing {} of a finished session: {error}", run.range());
            }
        }
        if self.luo.incoming().is_some_and(|i| i.is_complete()) {
            let image = self.handover.image_range();
            if let Err(error) = self.intake.frames.free_range(image) {
                verdict_fail!("releasing the handover image {image}: {error}");
            }
        }
    }

    /// Every preserved page now belongs to a restored file: none is left unclaimed.
    fn check_nothing_left(&self) {
        let Some(incoming) = self.luo.incoming() else {
            return;
        };
        let (claimed, total) = (
            incoming.pages().claimed_blocks(),
            incoming.pages().total_blocks(),
        );
        if claimed != total {
            verdict_fail!(
                "{} of {total} preserved blocks were never claimed by a file",
                total - claimed
            );
        }
    }

    /// Free pages plus the pages restored files hold: constant along a chain unless a page
    /// leaks.
    fn accounted_pages(&self, fds: impl IntoIterator<Item = i32>) -> u64 {
        self.intake.frames.free_page_count() + workload::file_pages(&self.files, fds)
    }

    /// Kexecs the next kernel (this image again, from the ELF passed on) with a handover.
    fn kexec(mut self) -> ! {
        let Some(initrd) = self
            .intake
            .initrd
            .filter(|range| phys::is_accessible(*range))
        else {
            verdict_fail!(
                "no usable ELF passed on as initrd ({:?})",
                self.intake.initrd
            )
        };
        // SAFETY: the initrd is identity mapped (checked above) and reserved (intake avoided
        // and reserved it), so nothing writes it while we read it.
        let elf = unsafe { phys::slice(initrd) };
        let cmdline = self.intake.cmdline.as_bytes();
        let handoff = Handoff {
            handover: None,
            initrd: Some(initrd),
            cmdline,
            tsc_hz: self.intake.tsc_hz,
        };
        let context = RebootContext {
            luo: self.luo,
            frames: &mut self.intake.frames,
            scratch: &self.intake.scratch,
            memory_map: &self.intake.memory_map,
            elf,
        };
        match stage_kexec(context, handoff, |_, _| {}) {
            Ok(staged) => {
                phase!(
                    "kexec: handover image {} (generation {}); jumping to {}",
                    staged.handover,
                    self.handover.generation() + 1,
                    staged.ready.image().entry()
                );
                staged.ready.execute()
            }
            Err(error) => verdict_fail!("kexec refused: {error}"),
        }
    }
}

/// `basic`, `overlap`, `many`: retrieve every session, check every byte, finish, and account
/// for every page.
fn restore_all(mut kernel: Kernel, sessions: &[SessionSpec], timing: &str) -> ! {
    let memory = phys::IdentityMap;
    let mut fds = alloc::vec::Vec::new();
    for session in sessions {
        let retrieved =
            match workload::retrieve_and_verify(session, kernel.luo, &mut kernel.files, &memory, 0)
            {
                Ok(retrieved) => retrieved,
                Err(error) => verdict_fail!("restore: {error}"),
            };
        if let Err(errno) = agent::finish(kernel.luo, &mut kernel.files, retrieved.session_fd, 0) {
            verdict_fail!("finish {:?}: {errno}", session.name.escape_ascii());
        }
        if let Err(errno) =
            agent::close_session(kernel.luo, &mut kernel.files, retrieved.session_fd)
        {
            verdict_fail!("close {:?}: {errno}", session.name.escape_ascii());
        }
        fds.extend(retrieved.file_fds);
    }
    if kernel.handover.session_count() != sessions.len() {
        verdict_fail!(
            "the handover has {} sessions, expected {}",
            kernel.handover.session_count(),
            sessions.len()
        );
    }
    kernel.check_nothing_left();
    kernel.release_finished();
    let image = kernel.handover.image_range();
    if !kernel.intake.frames.is_free(image.start().frame()) {
        verdict_fail!("the handover image {image} was not released after every session finished");
    }
    let file_count: usize = sessions.iter().map(|s| s.files.len()).sum();
    verdict_pass!(
        "restored {} sessions and {file_count} files, {} KiB, every byte verified; {} pages held by files, {} free; {timing}",
        sessions.len(),
        workload::total_bytes(sessions) / 1024,
        workload::file_pages(&kernel.files, fds.iter().copied()),
        kernel.intake.frames.free_page_count()
    )
}

/// `chain`: kernel `h` of the chain (the handover's generation) checks the stamps of hops
/// `1..h`, stamps hop `h`, checks that no page leaked since the first shim (free pages plus
/// file pages stay constant), and kexecs the next kernel, until the tenth kexec.
fn chain(mut kernel: Kernel, timing: &str) -> ! {
    let hop = kernel.handover.generation();
    let memory = phys::IdentityMap;
    let (state, state_fd) = match workload::retrieve_state(
        workload::CHAIN_STATE,
        kernel.luo,
        &mut kernel.files,
        &memory,
    ) {
        Ok(state) => state,
        Err(error) => verdict_fail!("chain: {error}"),
    };
    let (previous_hop, baseline) = (
        state.first().copied().unwrap_or(u64::MAX),
        state.get(1).copied().unwrap_or(0),
    );
    if previous_hop + 1 != hop {
        verdict_fail!(
            "chain: the state file says hop {previous_hop} came before, but this is generation {hop}"
        );
    }
    let sessions = workload::chain();
    let mut held = alloc::vec::Vec::new();
    for session in &sessions {
        let retrieved = match workload::retrieve_and_verify(
            session,
            kernel.luo,
            &mut kernel.files,
            &memory,
            hop - 1,
        ) {
            Ok(retrieved) => retrieved,
            Err(error) => verdict_fail!("chain hop {hop}: {error}"),
        };
        if let Err(errno) = agent::finish(kernel.luo, &mut kernel.files, retrieved.session_fd, 0)
            .and_then(|()| {
                agent::close_session(kernel.luo, &mut kernel.files, retrieved.session_fd)
            })
        {
            verdict_fail!("chain hop {hop}: finish: {errno}");
        }
        held.push(retrieved.file_fds);
    }
    kernel.check_nothing_left();
    kernel.release_finished();
    // Change every file: stamp hop `hop`.
    {
        let mut pages = FilePages::new(&mut kernel.intake.frames, &kernel.intake.scratch);
        let mut memory = phys::IdentityMap;
        for (session, fds) in sessions.iter().zip(&held) {
            for (spec, &fd) in session.files.iter().zip(fds) {
                let stamped = kernel
                    .files
                    .object(fd)
                    .and_then(|f| f.with(|m| spec.stamp(m, hop, &mut pages, &mut memory)));
                if !matches!(stamped, Some(Ok(()))) {
                    verdict_fail!(
                        "chain hop {hop}: stamping file {:#x} failed: {stamped:?}",
                        spec.token
                    );
                }
            }
        }
    }
    let all_fds = || held.iter().flatten().copied().chain([state_fd]);
    let accounted = kernel.accounted_pages(all_fds());
    phase!(
        "chain hop {hop}: verified the stamps of hops 1..{hop}, stamped hop {hop}; {} free + {} file pages = {accounted} (baseline {baseline})",
        kernel.intake.frames.free_page_count(),
        workload::file_pages(&kernel.files, all_fds())
    );
    if hop > 1 && accounted != baseline {
        verdict_fail!(
            "chain hop {hop}: {accounted} pages accounted for, {baseline} at hop 1: {} pages leaked",
            baseline as i64 - accounted as i64
        );
    }
    if hop >= workload::CHAIN_LENGTH {
        verdict_pass!(
            "{hop} kexecs: every kernel verified, changed and re-preserved the files; free + file pages stayed {accounted} (no page leaked); last {timing}"
        );
    }
    // Carry the state forward: this hop, and the baseline from hop 1.
    let baseline = if hop == 1 { accounted } else { baseline };
    let mut state_bytes = [0u8; 16];
    state_bytes[..8].copy_from_slice(&hop.to_le_bytes());
    state_bytes[8..].copy_from_slice(&baseline.to_le_bytes());
    {
        let mut pages = FilePages::new(&mut kernel.intake.frames, &kernel.intake.scratch);
        let mut memory = phys::IdentityMap;
        let written = kernel
            .files
            .object(state_fd)
            .and_then(|f| f.with(|m| m.write_at(0, &state_bytes, &mut pages, &mut memory)));
        if !matches!(written, Some(Ok(()))) {
            verdict_fail!("chain hop {hop}: updating the state file failed: {written:?}");
        }
    }
    for (session, fds) in sessions.iter().zip(&held) {
        if let Err(error) = workload::preserve_again(session, fds, kernel.luo, &mut kernel.files) {
            verdict_fail!("chain hop {hop}: {error}");
        }
    }
    let state_session = SessionSpec {
        name: workload::CHAIN_STATE.to_vec(),
        files: alloc::vec![workload::state_file()],
    };
    if let Err(error) =
        workload::preserve_again(&state_session, &[state_fd], kernel.luo, &mut kernel.files)
    {
        verdict_fail!("chain hop {hop}: {error}");
    }
    kernel.kexec()
}

/// `unfinished`: kernel 2 (generation 1) retrieves `kept` and never touches `abandoned`, noting
/// where its pages are; kernel 3 (generation 2) finds those pages free.
fn unfinished(mut kernel: Kernel, timing: &str) -> ! {
    let memory = phys::IdentityMap;
    let (kept, abandoned) = workload::unfinished();
    match kernel.handover.generation() {
        1 => {
            // Where `abandoned`'s pages are, read from its records without retrieving it.
            let mut ranges = alloc::vec::Vec::new();
            let Some(view) = kernel.handover.find_session(&abandoned.name) else {
                verdict_fail!("unfinished: no session \"abandoned\" in the handover")
            };
            for file in view.files() {
                let record = match MemfdRecord::parse(file.record, file.handler.version) {
                    Ok(record) => record,
                    Err(error) => verdict_fail!("unfinished: {error}"),
                };
                for (_, phys, count) in record.extents() {
                    ranges.extend_from_slice(&[phys.as_u64(), count]);
                }
            }
            let retrieved = match workload::retrieve_and_verify(
                &kept,
                kernel.luo,
                &mut kernel.files,
                &memory,
                0,
            ) {
                Ok(retrieved) => retrieved,
                Err(error) => verdict_fail!("unfinished: {error}"),
            };
            if let Err(errno) =
                agent::finish(kernel.luo, &mut kernel.files, retrieved.session_fd, 0).and_then(
                    |()| agent::close_session(kernel.luo, &mut kernel.files, retrieved.session_fd),
                )
            {
                verdict_fail!("unfinished: finish: {errno}");
            }
            kernel.release_finished();
            if kernel.luo.incoming().is_some_and(|i| i.is_complete()) {
                verdict_fail!("unfinished: an unretrieved session should keep the image");
            }
            phase!(
                "unfinished: kept restored; \"abandoned\" ({} page ranges) left unretrieved, kexecing on",
                ranges.len() / 2
            );
            if let Err(error) =
                workload::preserve_again(&kept, &retrieved.file_fds, kernel.luo, &mut kernel.files)
            {
                verdict_fail!("unfinished: {error}");
            }
            let mut pages = FilePages::new(&mut kernel.intake.frames, &kernel.intake.scratch);
            let mut memory = phys::IdentityMap;
            if let Err(error) = workload::preserve_state(
                workload::UNFINISHED_STATE,
                &ranges,
                kernel.luo,
                &mut kernel.files,
                &mut pages,
                &mut memory,
            ) {
                verdict_fail!("unfinished: {error}");
            }
            kernel.kexec()
        }
        2 => {
            if kernel.handover.find_session(&abandoned.name).is_some() {
                verdict_fail!("unfinished: the session never retrieved was carried to kernel 3");
            }
            let (ranges, _) = match workload::retrieve_state(
                workload::UNFINISHED_STATE,
                kernel.luo,
                &mut kernel.files,
                &memory,
            ) {
                Ok(state) => state,
                Err(error) => verdict_fail!("unfinished: {error}"),
            };
            let retrieved = match workload::retrieve_and_verify(
                &kept,
                kernel.luo,
                &mut kernel.files,
                &memory,
                0,
            ) {
                Ok(retrieved) => retrieved,
                Err(error) => verdict_fail!("unfinished: {error}"),
            };
            let _ = agent::finish(kernel.luo, &mut kernel.files, retrieved.session_fd, 0);
            kernel.release_finished();
            let mut checked = 0u64;
            for pair in ranges.chunks_exact(2) {
                let (start, count) = (pair[0], pair[1]);
                for page in 0..count {
                    let frame = PhysAddr::new(start + page * handover::PAGE_SIZE).frame();
                    if !kernel.intake.frames.is_free(frame) {
                        verdict_fail!(
                            "unfinished: page {frame:?} of the abandoned session is not free in kernel 3"
                        );
                    }
                    checked += 1;
                }
            }
            if checked == 0 {
                verdict_fail!("unfinished: no abandoned page to check");
            }
            verdict_pass!(
                "the session kernel 2 never retrieved was released: its {checked} pages are free memory in kernel 3, and \"kept\" arrived intact; {timing}"
            )
        }
        other => verdict_fail!("unfinished: unexpected generation {other}"),
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
