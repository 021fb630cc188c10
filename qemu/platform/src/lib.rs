//! Bare-metal platform code for the QEMU x86_64 PC machine, shared by the loader and the
//! kernel-shim images so that it exists once.
//!
//! Pure logic, built and unit-tested on the host too:
//! - [`addr`]: typed physical addresses and ranges;
//! - [`memmap`]: the validated memory map; [`pvh`]: reading PVH's `hvm_start_info`;
//!   [`cmdline`]: the command line;
//! - [`frame`]: the 4 KiB frame allocator; [`bump`]: the early bump allocator;
//! - [`protocol`]: the guest ↔ runner protocol; [`tsc`]: timestamp arithmetic.
//!
//! Bare-metal only (`machine`, `target_os = "none"`): the PVH and kexec entry paths, the COM1
//! console (`print!`, `println!`, `phase!`), `verdict_pass!` / `verdict_fail!` and QEMU's debug
//! exit, raw physical memory, the global heap, early memory bring-up and the panic handler.
//! Images link it with the platform's linker script (`image.ld`, see `docs/ENTRY.md`).
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod bump;
pub mod cmdline;
pub mod frame;
pub mod memmap;
pub mod protocol;
pub mod pvh;
pub mod tsc;

#[cfg(target_os = "none")]
pub mod machine;

/// Prints to the COM1 console.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::machine::serial::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the COM1 console.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! println {
    () => {
        $crate::machine::serial::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::machine::serial::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints a `phase: ...` progress line (the runner shows these as they arrive).
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! phase {
    ($($arg:tt)*) => {
        $crate::machine::serial::_print(format_args!(
            "{} {}\n",
            $crate::protocol::PHASE,
            format_args!($($arg)*)
        ))
    };
}

/// Prints `verdict: pass <summary>` and exits QEMU with the pass status.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! verdict_pass {
    ($($arg:tt)*) => {
        $crate::machine::exit::pass(format_args!($($arg)*))
    };
}

/// Prints `verdict: fail <reason>` and exits QEMU with the fail status.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! verdict_fail {
    ($($arg:tt)*) => {
        $crate::machine::exit::fail(format_args!($($arg)*))
    };
}
