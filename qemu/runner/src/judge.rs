//! Deciding a run's outcome from the guest's serial output and QEMU's exit.
//!
//! A scenario passes only if the guest printed exactly one verdict line, that line is
//! `verdict: pass ...`, and QEMU exited with the pass status of isa-debug-exit. Everything else
//! (timeout, triple fault, no output, a fail verdict, a mismatch between verdict and status) is
//! a failure with a reason.

use qemu_platform::protocol::{
    EXIT_CODE_FAIL, EXIT_CODE_PASS, VERDICT_FAIL, VERDICT_PASS, qemu_exit_status,
};
use std::time::Duration;

/// How QEMU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuExit {
    /// It exited with this status.
    Status(i32),
    /// It was killed by a signal.
    Signal,
    /// It ran past the timeout and was killed.
    TimedOut(Duration),
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Passed, with the guest's summary.
    Pass(String),
    /// Failed, with the reason.
    Fail(String),
}

/// Judges a run from its serial output and exit.
pub fn judge(serial: &str, exit: QemuExit) -> Judgement {
    let pass_status = qemu_exit_status(EXIT_CODE_PASS);
    let fail_status = qemu_exit_status(EXIT_CODE_FAIL);
    let verdicts: Vec<&str> = serial
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| line.starts_with("verdict:"))
        .collect();

    let status = match exit {
        QemuExit::Status(status) => status,
        QemuExit::Signal => return Judgement::Fail("QEMU was killed by a signal".to_string()),
        QemuExit::TimedOut(after) => {
            let last = serial
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("(no output)");
            return Judgement::Fail(format!(
                "timed out after {} s; last line: {}",
                after.as_secs(),
                last.trim()
            ));
        }
    };
    match verdicts.as_slice() {
        [] if serial.trim().is_empty() => Judgement::Fail(format!("no output from the guest (QEMU exit status {status})")),
        [] if status == 0 => Judgement::Fail(
            "no verdict: the guest stopped without one (exit status 0: triple fault or shutdown, QEMU runs with -no-reboot)"
                .to_string(),
        ),
        [] => Judgement::Fail(format!("no verdict line (QEMU exit status {status})")),
        [verdict] => {
            // The keyword must be a whole word: `verdict: passive` is malformed.
            let rest_after = |prefix: &str| {
                verdict.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with(' '))
            };
            if let Some(summary) = rest_after(VERDICT_PASS) {
                if status == pass_status {
                    Judgement::Pass(summary.trim().to_string())
                } else {
                    Judgement::Fail(format!(
                        "pass verdict but QEMU exit status {status} (expected {pass_status})"
                    ))
                }
            } else if let Some(reason) = rest_after(VERDICT_FAIL) {
                if status == fail_status {
                    Judgement::Fail(reason.trim().to_string())
                } else {
                    Judgement::Fail(format!("{} (and QEMU exit status {status}, not {fail_status})", reason.trim()))
                }
            } else {
                Judgement::Fail(format!("malformed verdict line: {verdict}"))
            }
        }
        many => Judgement::Fail(format!("{} verdict lines (exactly one expected): {}", many.len(), many.join(" | "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: QemuExit = QemuExit::Status(33);
    const FAIL: QemuExit = QemuExit::Status(35);

    #[test]
    fn passes_only_with_pass_verdict_and_pass_status() {
        let serial = "phase: one\r\nverdict: pass all good\r\n";
        assert_eq!(judge(serial, PASS), Judgement::Pass("all good".to_string()));
        assert!(
            matches!(judge(serial, FAIL), Judgement::Fail(reason) if reason.contains("exit status 35"))
        );
        assert!(matches!(
            judge(serial, QemuExit::Status(0)),
            Judgement::Fail(_)
        ));
    }

    #[test]
    fn every_other_ending_fails_with_a_reason() {
        assert_eq!(
            judge("verdict: fail broken\n", FAIL),
            Judgement::Fail("broken".to_string())
        );
        assert!(
            matches!(judge("", QemuExit::Status(0)), Judgement::Fail(r) if r.contains("no output"))
        );
        assert!(
            matches!(judge("phase: x\n", QemuExit::Status(0)), Judgement::Fail(r) if r.contains("triple fault"))
        );
        assert!(matches!(
            judge("phase: x\n", QemuExit::TimedOut(Duration::from_secs(30))),
            Judgement::Fail(r) if r.contains("timed out after 30 s; last line: phase: x")
        ));
        assert!(matches!(
            judge("verdict: pass a\nverdict: pass b\n", PASS),
            Judgement::Fail(r) if r.starts_with("2 verdict lines")
        ));
        assert!(
            matches!(judge("verdict: maybe\n", PASS), Judgement::Fail(r) if r.contains("malformed"))
        );
        assert!(
            matches!(judge("verdict: passive\n", PASS), Judgement::Fail(r) if r.contains("malformed"))
        );
        assert!(matches!(
            judge("verdict: pass\n", QemuExit::Signal),
            Judgement::Fail(_)
        ));
    }
}
