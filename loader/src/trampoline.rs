//! The point of no return: writing the hand-off into scratch and jumping to the trampoline.
//!
//! [`KexecImage::prepare`] plans the hand-off ([`crate::plan`]) and writes the page tables, the
//! `BootInfo` and the trampoline page into the frames the plan allocated. [`ReadyKexec::execute`]
//! disables interrupts, records the TSC and jumps to the trampoline, which runs from its own
//! page and needs nothing of the running kernel:
//!
//! 1. loads its own GDT (in its page: the old kernel's GDT may be overwritten);
//! 2. switches `%cr3` to the new identity map and `%rsp` to the new stack (both in scratch,
//!    outside every destination): the old page tables and stack may be overwritten too;
//! 3. copies every segment with memmove semantics and zeroes its bss;
//! 4. stores the TSC into `BootInfo::tsc_copy_done`, loads `%rdi`, `%rsi`, `%rdx` and jumps to
//!    the entry point.
//!
//! The trampoline code is position independent (only `%rip`-relative references inside the
//! copied block) and finds its parameters at [`PARAMS_OFFSET`] in its own page.

use crate::elf::MAX_LOAD_SEGMENTS;
use crate::handoff::{BOOT_INFO_LEN_BYTES, BootInfo, Handoff};
use crate::image::KexecImage;
use crate::pagetable::build_identity_map;
use crate::plan::{KexecPlan, PrepareError, plan};
use core::mem::offset_of;
use qemu_platform::addr::PhysAddr;
use qemu_platform::frame::FrameAllocator;
use qemu_platform::machine::phys;
use zerocopy::{Immutable, IntoBytes};

/// Where the parameters start in the trampoline page; the code must fit below.
pub const PARAMS_OFFSET: usize = 0x800;

/// One copy, as the trampoline reads it.
#[derive(Clone, Copy, Default, IntoBytes, Immutable)]
#[repr(C)]
struct TrampolineSegment {
    src: u64,
    dest: u64,
    copy_len_bytes: u64,
    zero_len_bytes: u64,
}

/// The trampoline's parameters, at [`PARAMS_OFFSET`] in its page.
#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct TrampolineParams {
    /// Null, 64-bit code (0x08), data (0x10).
    gdt: [u64; 3],
    gdt_pad: [u16; 3],
    /// `lgdt` operand: limit then base, contiguous.
    gdt_limit: u16,
    gdt_base: u64,
    cr3: u64,
    stack_top: u64,
    entry: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    /// Where to store the TSC when the copy is done (`BootInfo::tsc_copy_done`).
    tsc_copy_done_addr: u64,
    segment_count: u64,
    reserved: u64,
    segments: [TrampolineSegment; MAX_LOAD_SEGMENTS],
}

const _: () = assert!(PARAMS_OFFSET + size_of::<TrampolineParams>() <= 4096);

core::arch::global_asm!(
    r#"
    .pushsection .text.loader_trampoline, "ax", @progbits
    .balign 16
    .global loader_trampoline_start
loader_trampoline_start:
    cli
    cld
    lea r15, [rip + loader_trampoline_start]
    add r15, {params}
    lgdt [r15 + {gdt_limit}]
    mov rax, [r15 + {cr3}]
    mov cr3, rax
    mov rsp, [r15 + {stack_top}]
    push 0x08
    lea rax, [rip + 20f]
    push rax
    retfq
20:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov r14, [r15 + {segment_count}]
    lea r13, [r15 + {segments}]
21:
    test r14, r14
    jz 26f
    mov rsi, [r13]
    mov rdi, [r13 + 8]
    mov rcx, [r13 + 16]
    /* Backwards only if the destination starts inside the source. */
    cmp rdi, rsi
    jbe 22f
    lea rax, [rsi + rcx]
    cmp rdi, rax
    jae 22f
    lea rsi, [rsi + rcx - 1]
    lea rdi, [rdi + rcx - 1]
    std
    rep movsb
    cld
    jmp 23f
22:
    /* Forwards, 8 bytes per iteration, then the tail. A plain loop rather than `rep movsq`:
       QEMU's TCG runs a rep-string instruction one iteration per dispatch, about 10x slower. */
    mov rdx, rcx
    shr rcx, 3
    jz 28f
27:
    mov rax, [rsi]
    mov [rdi], rax
    add rsi, 8
    add rdi, 8
    dec rcx
    jnz 27b
28:
    mov rcx, rdx
    and rcx, 7
    rep movsb
23:
    mov rdi, [r13 + 8]
    add rdi, [r13 + 16]
    mov rcx, [r13 + 24]
    xor eax, eax
    mov rdx, rcx
    shr rcx, 3
    jz 30f
29:
    mov [rdi], rax
    add rdi, 8
    dec rcx
    jnz 29b
30:
    mov rcx, rdx
    and rcx, 7
    rep stosb
    add r13, 32
    dec r14
    jmp 21b
26:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbx, [r15 + {tsc_copy_done_addr}]
    mov [rbx], rax
    mov rax, [r15 + {entry}]
    mov rdi, [r15 + {rdi}]
    mov rsi, [r15 + {rsi}]
    mov rdx, [r15 + {rdx}]
    xor ebx, ebx
    xor ecx, ecx
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    jmp rax
    .global loader_trampoline_end
loader_trampoline_end:
    .popsection
    "#,
    params = const PARAMS_OFFSET,
    gdt_limit = const offset_of!(TrampolineParams, gdt_limit),
    cr3 = const offset_of!(TrampolineParams, cr3),
    stack_top = const offset_of!(TrampolineParams, stack_top),
    entry = const offset_of!(TrampolineParams, entry),
    rdi = const offset_of!(TrampolineParams, rdi),
    rsi = const offset_of!(TrampolineParams, rsi),
    rdx = const offset_of!(TrampolineParams, rdx),
    tsc_copy_done_addr = const offset_of!(TrampolineParams, tsc_copy_done_addr),
    segment_count = const offset_of!(TrampolineParams, segment_count),
    segments = const offset_of!(TrampolineParams, segments),
);

unsafe extern "C" {
    static loader_trampoline_start: u8;
    static loader_trampoline_end: u8;
}

/// The trampoline's code bytes in the running image.
fn trampoline_code() -> &'static [u8] {
    let start = &raw const loader_trampoline_start;
    let end = (&raw const loader_trampoline_end).addr();
    let len = end.saturating_sub(start.addr());
    // SAFETY: both symbols are defined by the global_asm above around the trampoline's code,
    // in the same section, start before end; the code is read-only text of the running image,
    // mapped and never written.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// A hand-off written to memory, waiting for the jump.
pub struct ReadyKexec {
    plan: KexecPlan,
    /// Kept alive: the trampoline copies from its staged buffers.
    image: KexecImage,
}

impl KexecImage {
    /// Verifies the image, plans the hand-off ([`crate::plan::plan`]) and writes the page
    /// tables, the `BootInfo` and the trampoline page. The running kernel is still intact
    /// afterwards; only [`ReadyKexec::execute`] destroys it.
    pub fn prepare(
        self,
        handoff: &Handoff<'_>,
        frames: &mut FrameAllocator<'_>,
    ) -> Result<ReadyKexec, PrepareError> {
        let code = trampoline_code();
        if code.len() > PARAMS_OFFSET {
            // The assembler cannot check this (jump relaxation makes the length unknown to it).
            return Err(PrepareError::TrampolineTooLarge {
                len_bytes: code.len(),
            });
        }
        let plan = plan(&self, handoff, frames)?;

        let table_words = (plan.page_tables.len_bytes() / 8) as usize;
        // SAFETY: the plan allocated these pages from the frame allocator just now, so they are
        // ours alone; they lie in scratch RAM below the identity map's end (the allocator is
        // clamped to it) and are page aligned.
        let tables = unsafe { phys::words_mut(plan.page_tables.start(), table_words) };
        let built = build_identity_map(tables, plan.page_tables.start(), plan.map_end);
        debug_assert!(built, "the plan sized the tables for this map");

        // SAFETY: as above, freshly allocated pages that are ours alone.
        let boot_info = unsafe { phys::slice_mut(plan.boot_info) };
        boot_info.fill(0);
        if let Some(slot) = boot_info.get_mut(..BOOT_INFO_LEN_BYTES) {
            slot.copy_from_slice(plan.boot_info_value.as_bytes());
        }

        let params = trampoline_params(&plan);
        // SAFETY: as above, a freshly allocated page that is ours alone.
        let page = unsafe { phys::slice_mut(plan.trampoline) };
        page.fill(0);
        if let Some(slot) = page.get_mut(..code.len()) {
            slot.copy_from_slice(code);
        }
        let params_bytes = params.as_bytes();
        if let Some(slot) = page.get_mut(PARAMS_OFFSET..PARAMS_OFFSET + params_bytes.len()) {
            slot.copy_from_slice(params_bytes);
        }
        Ok(ReadyKexec { plan, image: self })
    }
}

fn trampoline_params(plan: &KexecPlan) -> TrampolineParams {
    let params_addr = plan.trampoline.start().as_u64() + PARAMS_OFFSET as u64;
    let mut segments = [TrampolineSegment::default(); MAX_LOAD_SEGMENTS];
    for (slot, copy) in segments.iter_mut().zip(&plan.copies) {
        *slot = TrampolineSegment {
            src: copy.src.as_u64(),
            dest: copy.dest.as_u64(),
            copy_len_bytes: copy.copy_len_bytes,
            zero_len_bytes: copy.zero_len_bytes,
        };
    }
    TrampolineParams {
        // The same descriptors as the platform's boot GDT, accessed bits preset.
        gdt: [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff],
        gdt_pad: [0; 3],
        gdt_limit: (3 * 8 - 1) as u16,
        gdt_base: params_addr + offset_of!(TrampolineParams, gdt) as u64,
        cr3: plan.registers.cr3,
        stack_top: plan.registers.rsp,
        entry: plan.registers.rip,
        rdi: plan.registers.rdi,
        rsi: plan.registers.rsi,
        rdx: plan.registers.rdx,
        tsc_copy_done_addr: plan.boot_info.start().as_u64()
            + offset_of!(BootInfo, tsc_copy_done) as u64,
        segment_count: plan.copies.len() as u64,
        reserved: 0,
        segments,
    }
}

impl ReadyKexec {
    /// Where everything was placed.
    pub fn plan(&self) -> &KexecPlan {
        &self.plan
    }

    /// The image being executed.
    pub fn image(&self) -> &KexecImage {
        &self.image
    }

    /// The point of no return: interrupts off, TSC recorded, jump to the trampoline.
    pub fn execute(self) -> ! {
        qemu_platform::machine::cpu::disable_interrupts();
        // The copy overwrites this image's IDT and stubs: fault cleanly instead.
        qemu_platform::machine::exceptions::disarm();
        let trampoline = self.plan.trampoline.start().as_u64();
        let tsc_slot = PhysAddr::new(
            self.plan.boot_info.start().as_u64()
                + offset_of!(BootInfo, tsc_point_of_no_return) as u64,
        );
        // Never dropped: the staged buffers must stay where they are while the trampoline
        // reads them.
        core::mem::forget(self);
        let tsc = qemu_platform::machine::cpu::rdtsc();
        // SAFETY: the BootInfo pages were allocated for this hand-off in `prepare` and are ours
        // alone; the slot is 8-byte aligned (the field's offset is a multiple of 8 and the
        // pages are page aligned) and identity mapped.
        unsafe { phys::words_mut(tsc_slot, 1)[0] = tsc };
        // SAFETY: `prepare` wrote the trampoline's code and parameters into this page, which no
        // copy overwrites (the plan placed it outside every destination); the trampoline needs
        // nothing from the running kernel (its own GDT, page tables and stack), and interrupts
        // are off. Control never comes back.
        unsafe { core::arch::asm!("jmp {}", in(reg) trampoline, options(noreturn)) }
    }
}
