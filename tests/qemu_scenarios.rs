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

/// One test per scenario, and the list checked against the runner's table.
macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                assert_passes($name);
            }
        )*

        /// A scenario added to the runner's table must get its test here too.
        #[test]
        fn every_scenario_has_a_test() {
            let mut tested = vec![$($name),*];
            let mut listed: Vec<&str> =
                qemu_runner::scenario::SCENARIOS.iter().map(|s| s.name).collect();
            tested.sort_unstable();
            listed.sort_unstable();
            assert_eq!(tested, listed);
        }
    };
}

scenario_tests! {
    basic => "basic",
    empty => "empty",
    many => "many",
    chain => "chain",
    overlap => "overlap",
    unfinished => "unfinished",
    corrupt => "corrupt",
    bad_kernel => "bad-kernel",
    relaunch => "relaunch",
    fault => "fault",
    bad_elf => "bad-elf",
}
