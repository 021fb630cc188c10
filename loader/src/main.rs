//! The `loader` image: booted cold by QEMU (PVH), it loads the next kernel's ELF from the
//! `-initrd` module, verifies it and kexecs into it. The scenario (`scenario=NAME` on the
//! command line) decides what it does; see `qemu-runner`'s scenario table.
//!
//! Memory layout (see `docs/ENTRY.md`): the loader is linked at 1 MiB; scratch is
//! `[1 MiB, 64 MiB)` and holds the kernel images, the hand-off structures and the next
//! kernel's early allocations; the heap (and so the staged segments) lies above scratch.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod kernel {
    use handover::luo::{Limits, LiveUpdate};
    use handover::memfd::MemfdHandler;
    use handover::tracker::PreservationTracker;
    use loader::image::ShortDigest;
    use loader::layout::{COLD_BOOT_SCRATCH as SCRATCH, HEAP_PAGES};
    use loader::memory::{FilePages, ram_ranges};
    use loader::reboot::{Orchestrator, RebootContext, RebootError, stage_kexec};
    use loader::workload::{self, Files, SessionSpec};
    use loader::{Handoff, KexecImage, PrepareError};
    use qemu_platform::addr::{MIB, PhysRange};
    use qemu_platform::frame::FrameAllocator;
    use qemu_platform::machine::early::EarlyMemory;
    use qemu_platform::machine::entry::{
        BootEntry, BootSource, boot_stack_used_bytes, image_range,
    };
    use qemu_platform::machine::{heap, phys, time};
    use qemu_platform::memmap::MemoryMap;
    use qemu_platform::protocol::SCENARIO_KEY;
    use qemu_platform::pvh::PvhBootInfo;
    use qemu_platform::{phase, verdict_fail, verdict_pass};

    qemu_platform::entry_point!(main);

    /// What the loader knows after bring-up.
    struct Loader {
        memory_map: MemoryMap,
        cmdline: qemu_platform::cmdline::Cmdline,
        module: PhysRange,
        tsc_hz: u64,
    }

    fn main(entry: &BootEntry) -> ! {
        let BootSource::Pvh { start_info } = entry.source else {
            verdict_fail!(
                "the loader must be booted cold through PVH, not {:?}",
                entry.source
            )
        };
        let boot = match PvhBootInfo::read(&phys::IdentityMap, start_info) {
            Ok(boot) => boot,
            Err(error) => verdict_fail!("loader: {error}"),
        };
        let own_image = image_range();
        phase!(
            "loader: booted by PVH; image {own_image}, {} MiB RAM, command line \"{}\"",
            boot.memory_map.ram_len_bytes() / MIB,
            boot.cmdline
        );
        let Some(scenario) = boot.cmdline.get(SCENARIO_KEY) else {
            verdict_fail!("no {SCENARIO_KEY}=NAME on the command line")
        };
        let Some(&module) = boot.modules.first() else {
            verdict_fail!("no -initrd module: the next kernel's ELF must be passed as -initrd")
        };
        if !phys::is_accessible(module) {
            verdict_fail!("the -initrd module {module} is not identity mapped");
        }
        if !boot.memory_map.is_ram(SCRATCH) {
            verdict_fail!("scratch {SCRATCH} is not all RAM: give the guest at least 128 MiB");
        }

        // SAFETY: everything the firmware handed us (start info, memory map, command line) has
        // been copied out; the only live memory in scratch is this image (which EarlyMemory
        // avoids) and the module, passed as in use.
        let early = match unsafe { EarlyMemory::new(&boot.memory_map, &[SCRATCH], &[module]) } {
            Ok(early) => early,
            Err(error) => verdict_fail!("loader: early memory: {error}"),
        };
        let (mut frames, early_used) = early.finish();
        let heap_range = match heap::init_from_frames(&mut frames, HEAP_PAGES, &[SCRATCH]) {
            Ok(range) => range,
            Err(error) => verdict_fail!("loader: {error}"),
        };
        let tsc_hz = time::calibrate_tsc_hz().unwrap_or(0);
        phase!(
            "memory: {} of {} pages free; frame bitmap {early_used}; heap {heap_range}; TSC {} MHz",
            frames.free_page_count(),
            frames.ram_page_count(),
            tsc_hz / 1_000_000
        );
        let loader = Loader {
            memory_map: boot.memory_map,
            cmdline: boot.cmdline.clone(),
            module,
            tsc_hz,
        };
        match scenario {
            // `relaunch` tests the jump alone: no handover, and the next kernel kexecs itself.
            "relaunch" => kexec(&loader, &mut frames),
            "bad-elf" => bad_elf(&loader),
            "fault" => fault(),
            "empty" => hand_over(&loader, &mut frames, &[], Tamper::None, false),
            "basic" | "overlap" => hand_over(
                &loader,
                &mut frames,
                &workload::basic(),
                Tamper::None,
                false,
            ),
            "many" => hand_over(&loader, &mut frames, &workload::many(), Tamper::None, false),
            "chain" => hand_over(&loader, &mut frames, &workload::chain(), Tamper::None, true),
            "unfinished" => {
                let (kept, abandoned) = workload::unfinished();
                hand_over(
                    &loader,
                    &mut frames,
                    &[kept, abandoned],
                    Tamper::None,
                    false,
                )
            }
            "corrupt" => hand_over(
                &loader,
                &mut frames,
                &workload::basic(),
                Tamper::Image,
                false,
            ),
            "bad-kernel" => hand_over(
                &loader,
                &mut frames,
                &workload::basic(),
                Tamper::Kernel,
                false,
            ),
            other => verdict_fail!("unknown scenario {other:?}"),
        }
    }

    /// The exception self-test: a load from 64 GiB, outside the identity map, must reach the
    /// platform's #PF handler, which reports it (with `%cr2`) and ends the run.
    fn fault() -> ! {
        const UNMAPPED: u64 = 64 << 30;
        qemu_platform::machine::exceptions::expect(14);
        phase!("fault: loading from {UNMAPPED:#x}, which no page table maps");
        // SAFETY: the load faults before it reads anything (the address is outside the
        // identity map); the #PF handler never returns here, and it ends the run.
        unsafe {
            core::arch::asm!(
                "mov {value}, qword ptr [{addr}]",
                addr = in(reg) UNMAPPED,
                value = out(reg) _,
                options(nostack, readonly)
            )
        };
        verdict_fail!("fault: the load from {UNMAPPED:#x} did not fault")
    }

    /// What a scenario damages after the reboot step sealed everything.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Tamper {
        None,
        /// Flip one bit in the middle of the sealed handover image (`corrupt`).
        Image,
        /// Damage staged segment 0 of the next kernel after its digest (`bad-kernel`).
        Kernel,
    }

    static MEMFD: MemfdHandler = MemfdHandler::new();

    /// Plays the userspace agent (creates `sessions` through `/dev/liveupdate`, fills and
    /// preserves their files; with `chain_state`, also the chain's state file), then kexecs
    /// with a handover.
    fn hand_over(
        loader: &Loader,
        frames: &mut FrameAllocator<'static>,
        sessions: &[SessionSpec],
        tamper: Tamper,
        chain_state: bool,
    ) -> ! {
        let ram = ram_ranges(&loader.memory_map);
        let tracker = match PreservationTracker::new(&ram, &[SCRATCH]) {
            Ok(tracker) => tracker,
            Err(error) => verdict_fail!("loader: tracker: {error}"),
        };
        let luo: &'static mut Orchestrator = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            LiveUpdate::with_tracker(Limits::default(), tracker),
        ));
        if let Err(errno) = luo.register_handler(&MEMFD) {
            verdict_fail!("loader: register memfd handler: {errno}");
        }
        let mut files = Files::new();
        let mut memory = phys::IdentityMap;
        let scratch = [SCRATCH];
        let mut pages = FilePages::new(frames, &scratch);
        let created =
            match workload::create_and_preserve(sessions, luo, &mut files, &mut pages, &mut memory)
            {
                Ok(created) => created,
                Err(error) => verdict_fail!("loader: {error}"),
            };
        // A chain starts its state file: no hop done yet, no page-count baseline.
        if chain_state
            && let Err(error) = workload::preserve_state(
                workload::CHAIN_STATE,
                &[0, 0],
                luo,
                &mut files,
                &mut pages,
                &mut memory,
            )
        {
            verdict_fail!("loader: {error}");
        }
        let file_count: usize = sessions.iter().map(|s| s.files.len()).sum();
        phase!(
            "preserved {} sessions, {file_count} files, {} KiB of contents in {} pages",
            sessions.len(),
            workload::total_bytes(sessions) / 1024,
            luo.tracker().map_or(0, |t| t.page_count())
        );
        let context = RebootContext {
            luo: &mut *luo,
            frames: &mut *frames,
            scratch: &scratch,
            memory_map: &loader.memory_map,
            elf: module_bytes(loader),
        };
        let staged = stage_kexec(context, handoff(loader), |image, blob| match tamper {
            Tamper::None => {}
            Tamper::Image => {
                let middle = blob.len() / 2;
                if let Some(byte) = blob.get_mut(middle) {
                    *byte ^= 0x10;
                }
                phase!("corrupt: flipped bit 4 of byte {middle} of the sealed handover image");
            }
            Tamper::Kernel => {
                if let Some(dest) = image.damage_staged_segment(0) {
                    phase!(
                        "bad-kernel: damaged staged segment 0 (destination {dest}) after its digest was recorded"
                    );
                }
            }
        });
        match (staged, tamper) {
            (Ok(staged), Tamper::Kernel) => {
                let _ = staged;
                verdict_fail!("bad-kernel: the loader accepted a damaged kernel")
            }
            (Err(RebootError::Prepare(PrepareError::Verify(error))), Tamper::Kernel) => {
                refused_kernel(luo, &files, sessions, &created, frames, &error)
            }
            (Err(error), _) => verdict_fail!("loader: kexec refused: {error}"),
            (Ok(staged), _) => {
                let plan = staged.ready.plan();
                phase!(
                    "handover image {} (generation 1); trampoline {}, boot info {}; loader stack {} KiB used; jumping to {}",
                    staged.handover,
                    plan.trampoline,
                    plan.boot_info,
                    boot_stack_used_bytes() / 1024,
                    staged.ready.image().entry()
                );
                staged.ready.execute()
            }
        }
    }

    /// `bad-kernel`: the loader refused to jump and rolled the reboot step back. Prove the
    /// outgoing state is intact: nothing frozen, exactly the files' pages preserved, every
    /// byte of every file as written, and the sessions still open for business.
    fn refused_kernel(
        luo: &mut Orchestrator,
        files: &Files,
        sessions: &[SessionSpec],
        created: &[workload::SessionFds],
        frames: &FrameAllocator<'static>,
        error: &loader::VerifyError,
    ) -> ! {
        phase!("loader refused to jump: {error}");
        if luo.is_frozen() {
            verdict_fail!("bad-kernel: sessions still frozen after the rollback");
        }
        let mut all_fds = alloc::vec::Vec::new();
        for (session, fds) in sessions.iter().zip(created) {
            if let Err(mismatch) =
                workload::verify_held(session, &fds.file_fds, files, &phys::IdentityMap, 0)
            {
                verdict_fail!("bad-kernel: state damaged by the rollback: {mismatch}");
            }
            all_fds.extend(fds.file_fds.iter().copied());
        }
        let preserved = luo.tracker().map_or(0, |t| t.page_count());
        let held = workload::file_pages(files, all_fds.iter().copied());
        if preserved != held {
            verdict_fail!("bad-kernel: {preserved} pages preserved but the files hold {held}");
        }
        let mut probe = Files::new();
        match handover::fdtable::agent::create_session(luo, &mut probe, b"after-rollback") {
            Ok(_) => {}
            Err(errno) => {
                verdict_fail!("bad-kernel: sessions not usable after the rollback: {errno}")
            }
        }
        verdict_pass!(
            "loader refused the damaged kernel (segment {} digest mismatch), rolled the reboot step back and re-verified {} files ({held} pages preserved, {} free)",
            error.segment,
            all_fds.len(),
            frames.free_page_count()
        )
    }

    fn module_bytes(loader: &Loader) -> &'static [u8] {
        // SAFETY: the module was checked to be identity mapped, and it is reserved in the frame
        // allocator (EarlyMemory took it as in use), so nothing allocates over it or writes it.
        unsafe { phys::slice(loader.module) }
    }

    fn load(loader: &Loader, elf: &[u8]) -> KexecImage {
        match KexecImage::load(elf, &[SCRATCH], &loader.memory_map) {
            Ok(image) => image,
            Err(error) => verdict_fail!("loader refused the next kernel: {error}"),
        }
    }

    fn describe(image: &KexecImage) {
        phase!(
            "loaded next kernel: entry {}, {} segments",
            image.entry(),
            image.segments().len()
        );
        for (index, segment) in image.segments().iter().enumerate() {
            phase!(
                "segment {index}: program header {} -> {}, {} bytes + {} zeroed, sha256 {}…",
                segment.phdr_index(),
                segment.dest(),
                segment.file_len_bytes(),
                segment.zero_len_bytes(),
                ShortDigest(segment.digest())
            );
        }
    }

    fn handoff(loader: &Loader) -> Handoff<'_> {
        Handoff {
            handover: None,
            initrd: Some(loader.module),
            cmdline: loader.cmdline.as_bytes(),
            tsc_hz: loader.tsc_hz,
        }
    }

    fn kexec(loader: &Loader, frames: &mut FrameAllocator<'static>) -> ! {
        let image = load(loader, module_bytes(loader));
        describe(&image);
        let handoff = handoff(loader);
        // `prepare` verifies every staged segment against its digest before it plans.
        let ready = match image.prepare(&handoff, frames) {
            Ok(ready) => ready,
            Err(error) => verdict_fail!("loader: cannot hand over: {error}"),
        };
        phase!(
            "verified the sha256 of {} staged segments",
            ready.image().segments().len()
        );
        let plan = ready.plan();
        phase!(
            "hand-off: trampoline {}, boot info {}, stack {}, page tables {} mapping [0, {}); loader stack {} KiB used; jumping to {}",
            plan.trampoline,
            plan.boot_info,
            plan.stack,
            plan.page_tables,
            plan.map_end,
            boot_stack_used_bytes() / 1024,
            ready.image().entry()
        );
        ready.execute()
    }

    /// One malformation of the good ELF and the field whose rejection it must cause.
    struct Malformation {
        what: &'static str,
        field: &'static str,
        apply: fn(&mut alloc::vec::Vec<u8>, usize),
    }

    fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
        if let Some(slot) = bytes.get_mut(offset..offset + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn get_u64(bytes: &[u8], offset: usize) -> u64 {
        bytes
            .get(offset..offset + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// The file offset of the first PT_LOAD program header of a well-formed ELF.
    fn first_load_phdr(elf: &[u8]) -> Option<usize> {
        let phoff = usize::try_from(get_u64(elf, 32)).ok()?;
        let phnum = usize::from(u16::from_le_bytes(elf.get(56..58)?.try_into().ok()?));
        (0..phnum)
            .map(|index| phoff + index * 56)
            .find(|&offset| elf.get(offset..offset + 4) == Some(&1u32.to_le_bytes()[..]))
    }

    fn bad_elf(loader: &Loader) -> ! {
        let good = module_bytes(loader);
        let Some(phdr) = first_load_phdr(good) else {
            verdict_fail!("bad-elf: the -initrd ELF has no PT_LOAD")
        };
        let malformations = [
            Malformation {
                what: "truncated header",
                field: "e_ident",
                apply: |elf, _| elf.truncate(40),
            },
            Malformation {
                what: "wrong machine",
                field: "e_machine",
                apply: |elf, _| elf[18] = 3,
            },
            Malformation {
                what: "not executable type",
                field: "e_type",
                apply: |elf, _| elf[16] = 3,
            },
            Malformation {
                what: "p_filesz > p_memsz",
                field: "p_filesz",
                apply: |elf, phdr| {
                    let memsz = get_u64(elf, phdr + 40);
                    put_u64(elf, phdr + 32, memsz + 1);
                },
            },
            Malformation {
                what: "segment past end of file",
                field: "p_offset",
                apply: |elf, phdr| {
                    let len = elf.len() as u64;
                    put_u64(elf, phdr + 8, len);
                },
            },
            Malformation {
                what: "destination outside RAM",
                field: "p_paddr",
                apply: |elf, phdr| {
                    put_u64(elf, phdr + 16, 0x40_0000_0000);
                    put_u64(elf, phdr + 24, 0x40_0000_0000);
                },
            },
            Malformation {
                what: "destination outside scratch",
                field: "p_paddr",
                apply: |elf, phdr| {
                    put_u64(elf, phdr + 16, 0x500_0000);
                    put_u64(elf, phdr + 24, 0x500_0000);
                },
            },
            Malformation {
                what: "entry outside code",
                field: "e_entry",
                apply: |elf, _| put_u64(elf, 24, 0x20),
            },
        ];
        for malformation in &malformations {
            let mut elf = alloc::vec::Vec::from(good);
            (malformation.apply)(&mut elf, phdr);
            match KexecImage::load(&elf, &[SCRATCH], &loader.memory_map) {
                Ok(_) => verdict_fail!("bad-elf: {}: the loader accepted it", malformation.what),
                Err(loader::LoadError::Elf(error)) if error.field == malformation.field => {
                    phase!("bad-elf: {}: refused: {error}", malformation.what)
                }
                Err(error) => verdict_fail!(
                    "bad-elf: {}: refused for the wrong reason (expected field {}): {error}",
                    malformation.what,
                    malformation.field
                ),
            }
        }
        verdict_pass!(
            "loader refused {} malformed ELF images, each naming the bad field",
            malformations.len()
        )
    }
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "the loader is a bare-metal image: build it with --target x86_64-unknown-none (see `cargo qemu`)"
    );
}
