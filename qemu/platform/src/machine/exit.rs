//! Ending a run: the verdict line on the console, then QEMU's isa-debug-exit device.

use crate::protocol::{EXIT_CODE_FAIL, EXIT_CODE_PASS, VERDICT_FAIL, VERDICT_PASS};
use core::fmt;
use x86_64::instructions::port::Port;

/// The isa-debug-exit device's I/O port (the runner passes `iobase=0xf4`).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

/// Makes QEMU exit with status `(code << 1) | 1`. Without the device (not under the runner)
/// the write does nothing and the CPU halts.
pub fn exit_qemu(code: u32) -> ! {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is the isa-debug-exit device the runner configures, or nothing; the
    // write touches no memory.
    unsafe { port.write(code) };
    super::cpu::halt_forever()
}

/// Prints `verdict: pass <summary>` and exits QEMU with the pass code; but if the boot stack
/// overflowed, the run cannot be trusted and this is a fail verdict instead.
pub fn pass(summary: fmt::Arguments<'_>) -> ! {
    if super::entry::boot_stack_overflowed() {
        fail(format_args!(
            "the boot stack overflowed (would have passed: {summary})"
        ));
    }
    super::serial::_print(format_args!("{VERDICT_PASS} {summary}\n"));
    exit_qemu(EXIT_CODE_PASS)
}

/// Prints `verdict: fail <reason>` and exits QEMU with the fail code.
pub fn fail(reason: fmt::Arguments<'_>) -> ! {
    super::serial::_print(format_args!("{VERDICT_FAIL} {reason}\n"));
    exit_qemu(EXIT_CODE_FAIL)
}
