//! The physical memory layout of a cold-booted chain (`docs/ENTRY.md` explains it).
//!
//! The images' link addresses (loader at 1 MiB, kernel-shim at 16 MiB, kernel-shim-overlap at
//! 1 MiB) are set by their `build.rs`: the `overlap` scenario's next kernel lies over the
//! loader by construction.

use qemu_platform::addr::{MIB, PAGE_SIZE, PhysAddr, PhysRange};

/// Scratch memory declared by the cold-booted loader and handed down the chain: kernel images,
/// hand-off structures (trampoline, boot info, stack, page tables) and every kernel's early
/// allocations live here; nothing preserved ever does.
pub const COLD_BOOT_SCRATCH: PhysRange = match PhysRange::new(PhysAddr::new(MIB), 63 * MIB) {
    Some(range) => range,
    None => PhysRange::EMPTY,
};

/// The heap each kernel carves outside scratch (it holds the staged segments of a kexec).
pub const HEAP_PAGES: u64 = 8 * MIB / PAGE_SIZE;
