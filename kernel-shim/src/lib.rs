//! The incoming side of a kexec: the kernel the loader jumps into.
//!
//! - [`incoming`]: pure helpers over the loader's `BootInfo` (blackout timing, what early
//!   allocation must avoid), host-tested;
//! - `kernel` (bare metal only): [`kernel::intake`] turns the entry registers into a running
//!   kernel (validated `BootInfo`, early memory in scratch, frame allocator, heap) and
//!   [`kernel::main`] is the image's main function (both `kernel-shim` binaries).
//!
//! The shim can kexec again: it links the `loader` library, and the `Intake` it builds holds
//! everything `KexecImage::load` / `prepare` need (memory map, scratch, frames, the ELF passed
//! on as `initrd`).
#![cfg_attr(not(test), no_std)]

#[cfg(target_os = "none")]
extern crate alloc;

pub mod incoming;
#[cfg(target_os = "none")]
pub mod kernel;
