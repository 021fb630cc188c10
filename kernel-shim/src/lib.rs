//! The incoming side of a kexec: the kernel the loader jumps into.
//!
//! - [`restore`]: the intake and restore API any kernel calls from its own early boot —
//!   [`restore::receive`] validates the handover and reports what to reserve before anything
//!   is allocated, [`restore::attach`] hands the sessions to the orchestrator once the
//!   allocator runs (its documentation has a worked example);
//! - [`incoming`]: pure helpers over the loader's `BootInfo` (blackout timing, what early
//!   allocation must avoid), host-tested;
//! - `kernel` (bare metal only): `kernel::intake` turns the entry registers into a running
//!   kernel (validated `BootInfo`, early memory in scratch, frame allocator, heap) and
//!   `kernel::main` is the image's main function (both `kernel-shim` binaries).
//!
//! The shim can kexec again: it links the `loader` library (`loader::reboot::stage_kexec` runs
//! the reboot step, writes the handover and stages the jump), and the `Intake` it builds holds
//! everything that needs (memory map, scratch, frames, the ELF passed on as `initrd`).
#![cfg_attr(not(test), no_std)]

#[cfg(target_os = "none")]
extern crate alloc;

pub mod incoming;
#[cfg(target_os = "none")]
pub mod kernel;
pub mod restore;
