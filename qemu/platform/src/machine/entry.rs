//! The entry paths (`entry.S`) and the hand-off to the image's main function.
//!
//! An image names its main function with [`entry_point!`](crate::entry_point); the assembly
//! sets up long mode, the identity map, a GDT and a stack, then calls
//! `qemu_platform_rust_entry`, which initialises the console and calls that main with a
//! [`BootEntry`] saying how the image was entered.

use crate::addr::{PhysAddr, PhysRange};

core::arch::global_asm!(include_str!("entry.S"), options(att_syntax, raw));

/// How the image was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// Cold boot through the PVH note.
    Pvh {
        /// Physical address of the `hvm_start_info`.
        start_info: PhysAddr,
    },
    /// Entered at the ELF entry point by a kexec loader (protocol in `docs/ENTRY.md`). The
    /// registers are passed raw: checking them is the image's business.
    Kexec {
        /// `%rdi`: physical address of the handover image, 0 for none.
        rdi: u64,
        /// `%rsi`: physical address of the `BootInfo`.
        rsi: u64,
        /// `%rdx`: the entry magic.
        rdx: u64,
    },
}

/// What the entry code hands the image's main function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// How the image was entered.
    pub source: BootSource,
    /// The TSC read by the first instructions of the entry path.
    pub entry_tsc: u64,
}

const BOOT_SOURCE_PVH: u64 = 1;

unsafe extern "Rust" {
    /// The image's main function, defined by `entry_point!`.
    fn qemu_platform_image_main(entry: &BootEntry) -> !;
}

/// Called by `entry.S` on this image's own stack, page tables and GDT, interrupts off.
#[unsafe(no_mangle)]
extern "C" fn qemu_platform_rust_entry(
    source: u64,
    arg0: u64,
    arg1: u64,
    arg2: u64,
    entry_tsc: u64,
) -> ! {
    paint_boot_stack();
    super::serial::init();
    super::exceptions::install();
    let source = if source == BOOT_SOURCE_PVH {
        BootSource::Pvh {
            start_info: PhysAddr::new(arg0),
        }
    } else {
        BootSource::Kexec {
            rdi: arg0,
            rsi: arg1,
            rdx: arg2,
        }
    };
    let entry = BootEntry { source, entry_tsc };
    // SAFETY: `entry_point!` is the only way to define `qemu_platform_image_main`, and it
    // defines it with exactly this signature (a link error names the symbol if an image
    // forgot it).
    unsafe { qemu_platform_image_main(&entry) }
}

/// Names the image's main function, `fn(&BootEntry) -> !`, which the entry code calls.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[unsafe(export_name = "qemu_platform_image_main")]
        fn __qemu_platform_image_main(entry: &$crate::machine::entry::BootEntry) -> ! {
            let main: fn(&$crate::machine::entry::BootEntry) -> ! = $main;
            main(entry)
        }
    };
}

unsafe extern "C" {
    // The boot stack, defined in `entry.S`.
    static qemu_platform_boot_stack_bottom: u8;
    static qemu_platform_boot_stack_top: u8;
}

/// What unused boot-stack words hold, to measure the stack's high-water mark.
const STACK_PAINT: u64 = 0x5354_4143_4b21_2121;
/// Room left unpainted below the painting function's own frame.
const PAINT_MARGIN_BYTES: usize = 4096;

/// The boot stack's bounds (every image runs on it from entry to exit).
pub fn boot_stack() -> PhysRange {
    let bottom = (&raw const qemu_platform_boot_stack_bottom).addr() as u64;
    let top = (&raw const qemu_platform_boot_stack_top).addr() as u64;
    PhysRange::from_bounds(PhysAddr::new(bottom), PhysAddr::new(top)).unwrap_or(PhysRange::EMPTY)
}

/// Fills the unused part of the boot stack with [`STACK_PAINT`].
fn paint_boot_stack() {
    let marker = 0u8;
    let here = core::ptr::addr_of!(marker).addr();
    let stack = boot_stack();
    let bottom = stack.start().as_u64() as usize;
    let end = here.saturating_sub(PAINT_MARGIN_BYTES) & !7;
    let mut word = bottom;
    while word < end {
        // SAFETY: `[bottom, end)` is the part of the boot stack (memory of this image, identity
        // mapped, 8-byte aligned) more than PAINT_MARGIN_BYTES below this function's frame; we
        // run on this stack and call nothing while painting, and the target has no red zone,
        // so no live data is there.
        unsafe { core::ptr::with_exposed_provenance_mut::<u64>(word).write_volatile(STACK_PAINT) };
        word += 8;
    }
}

/// The most boot stack used so far, in bytes (from the top down to the deepest word that no
/// longer holds the paint).
pub fn boot_stack_used_bytes() -> u64 {
    let stack = boot_stack();
    let mut word = stack.start().as_u64() as usize;
    let top = stack.end().as_u64() as usize;
    while word < top {
        // SAFETY: the boot stack is this image's own memory, identity mapped and 8-byte
        // aligned; reading a word of it (used or not) has no side effect.
        let value = unsafe { core::ptr::with_exposed_provenance::<u64>(word).read_volatile() };
        if value != STACK_PAINT {
            break;
        }
        word += 8;
    }
    (top - word) as u64
}

/// Whether the boot stack's bottom word was overwritten: the stack (probably) overflowed into
/// the data below it, which holds the boot page tables.
pub fn boot_stack_overflowed() -> bool {
    boot_stack_used_bytes() >= boot_stack().len_bytes()
}

unsafe extern "C" {
    // Defined by the platform's linker script (`image.ld`) around everything the image loads.
    static __qemu_platform_image_start: u8;
    static __qemu_platform_image_end: u8;
}

/// The physical range the running image occupies: its code, data, bss, boot stack and boot
/// page tables (page aligned).
pub fn image_range() -> PhysRange {
    let start = (&raw const __qemu_platform_image_start).addr() as u64;
    let end = (&raw const __qemu_platform_image_end).addr() as u64;
    PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap_or(PhysRange::EMPTY)
}
