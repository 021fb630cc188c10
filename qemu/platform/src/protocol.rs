//! The guest ↔ runner protocol, shared by the images and `qemu-runner` so both sides use the
//! same words and numbers.
//!
//! The guest prints `phase: <text>` lines while it works and ends with exactly one
//! `verdict: pass <summary>` or `verdict: fail <reason>` line, then exits through QEMU's
//! isa-debug-exit device with [`EXIT_CODE_PASS`] or [`EXIT_CODE_FAIL`]. The runner passes a
//! scenario only if it saw the pass verdict *and* the pass exit status.

/// Prefix of a progress line.
pub const PHASE: &str = "phase:";
/// Prefix of the pass verdict line.
pub const VERDICT_PASS: &str = "verdict: pass";
/// Prefix of the fail verdict line.
pub const VERDICT_FAIL: &str = "verdict: fail";
/// The value written to isa-debug-exit on pass.
pub const EXIT_CODE_PASS: u32 = 0x10;
/// The value written to isa-debug-exit on fail.
pub const EXIT_CODE_FAIL: u32 = 0x11;
/// The command-line key that names the scenario (`scenario=NAME`).
pub const SCENARIO_KEY: &str = "scenario";

/// QEMU's exit status after the guest writes `code` to isa-debug-exit: `(code << 1) | 1`.
pub const fn qemu_exit_status(code: u32) -> i32 {
    ((code << 1) | 1) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_distinct_and_never_zero() {
        assert_eq!(qemu_exit_status(EXIT_CODE_PASS), 33);
        assert_eq!(qemu_exit_status(EXIT_CODE_FAIL), 35);
    }
}
