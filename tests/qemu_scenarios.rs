//! One test per QEMU scenario: each builds the bare-metal images (once per process), boots the
//! loader with the scenario's kernel-shim in QEMU and asserts the guest's pass verdict and
//! QEMU's pass exit status. A missing QEMU or target is installed or reported as a failure,
//! never skipped.

fn assert_passes(name: &str) {
    let outcome = qemu_runner::run_for_test(name);
    assert!(
        outcome.passed(),
        "{}\n--- serial ---\n{}",
        outcome.result_line(),
        outcome.serial
    );
}

#[test]
fn empty() {
    assert_passes("empty");
}

#[test]
fn overlap() {
    assert_passes("overlap");
}

#[test]
fn relaunch() {
    assert_passes("relaunch");
}

#[test]
fn bad_kernel() {
    assert_passes("bad-kernel");
}

#[test]
fn bad_elf() {
    assert_passes("bad-elf");
}

#[test]
fn basic() {
    assert_passes("basic");
}

#[test]
fn many() {
    assert_passes("many");
}

#[test]
fn chain() {
    assert_passes("chain");
}

#[test]
fn unfinished() {
    assert_passes("unfinished");
}

#[test]
fn corrupt() {
    assert_passes("corrupt");
}

#[test]
fn fault() {
    assert_passes("fault");
}
