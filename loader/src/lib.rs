//! The kexec loader library: load the next kernel's ELF into staging buffers, verify it, and
//! hand the machine over to it.
//!
//! - [`elf`]: the strict ELF64 parser (fuzzed, never panics);
//! - [`image`]: [`KexecImage`]: staged segments with SHA-256 digests, `verify`;
//! - [`handoff`]: the entry protocol's `BootInfo` and magic numbers (`docs/ENTRY.md`), shared
//!   with every next kernel;
//! - [`layout`]: link addresses, scratch and heap sizes of a cold-booted chain;
//! - [`pagetable`]: the identity map for the next kernel; [`plan`]: where everything goes;
//! - `trampoline` (bare metal only): `KexecImage::prepare` writes the hand-off,
//!   `ReadyKexec::execute` jumps.
//!
//! The flow is `KexecImage::load` → `verify` (optional: `prepare` verifies again) →
//! `prepare` → `execute`. Everything before `execute` leaves the running kernel intact.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod elf;
pub mod handoff;
pub mod image;
pub mod layout;
pub mod memory;
pub mod pagetable;
pub mod plan;
#[cfg(target_os = "none")]
pub mod reboot;
#[cfg(target_os = "none")]
pub mod trampoline;
pub mod workload;

pub use handoff::{BootInfo, Handoff};
pub use image::{KexecImage, LoadError, VerifyError};
pub use plan::PrepareError;
