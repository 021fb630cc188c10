//! Everything that only exists on the bare-metal target: the entry paths, port I/O devices
//! (COM1, isa-debug-exit, the PIT), CPU instructions, raw physical memory, the global heap and
//! the panic handler.
//!
//! This is where the platform's `unsafe` lives, in small modules, each block with a `SAFETY:`
//! comment naming what it relies on. Built only for `target_os = "none"`.

pub mod cpu;
pub mod early;
pub mod entry;
pub mod exceptions;
pub mod exit;
pub mod heap;
mod panic;
pub mod phys;
pub mod serial;
pub mod time;
