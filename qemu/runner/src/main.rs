//! `cargo qemu`: build the bare-metal images and boot scenarios in QEMU.
//!
//! ```text
//! cargo qemu                 run the default scenario
//! cargo qemu NAME [NAME...]  run these scenarios
//! cargo qemu --all           run every scenario
//! cargo qemu --list          list scenario names, one per line
//! cargo qemu --kvm ...       use KVM instead of TCG
//! cargo qemu -v ...          show every serial line, not only phase: lines
//! ```
//!
//! Exit status 0 exactly when every requested scenario passed; 1 when one failed or the
//! runner could not run; 2 on a usage error.

use qemu_runner::scenario::{DEFAULT_SCENARIO, SCENARIOS, Scenario, find};
use qemu_runner::{Options, Progress, Runner};
use std::process::ExitCode;

fn usage() -> String {
    let mut text = String::from(
        "usage: cargo qemu [--kvm] [-v] [--all | NAME...]\n       cargo qemu --list\n\nscenarios:\n",
    );
    for scenario in SCENARIOS {
        text.push_str(&format!(
            "  {:<12} {}\n",
            scenario.name, scenario.description
        ));
    }
    text.push_str(&format!("\nwithout a name: {DEFAULT_SCENARIO}\n"));
    text
}

fn main() -> ExitCode {
    let mut options = Options {
        quiet_build: false,
        ..Options::default()
    };
    let mut all = false;
    let mut names: Vec<String> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--list" => {
                for scenario in SCENARIOS {
                    println!("{}", scenario.name);
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            "--all" => all = true,
            "--kvm" => options.kvm = true,
            "-v" | "--verbose" => options.verbose = true,
            flag if flag.starts_with('-') => {
                eprint!("unknown option {flag}\n\n{}", usage());
                return ExitCode::from(2);
            }
            name => names.push(name.to_string()),
        }
    }
    let mut scenarios: Vec<&'static Scenario> = Vec::new();
    if all {
        scenarios.extend(SCENARIOS);
    }
    for name in &names {
        match find(name) {
            Some(scenario) => scenarios.push(scenario),
            None => {
                eprint!("unknown scenario {name:?}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(find(DEFAULT_SCENARIO));
    }
    if options.kvm && !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("qemu-runner: --kvm asked for but /dev/kvm does not exist");
        return ExitCode::FAILURE;
    }

    let runner = match Runner::new(options, &mut std::io::stdout()) {
        Ok(runner) => runner,
        Err(error) => {
            eprintln!("qemu-runner: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0usize;
    for scenario in &scenarios {
        let outcome = runner.run(scenario, &mut |progress| match progress {
            Progress::Booting(text) | Progress::Serial(text) => {
                println!("[{}] {text}", scenario.name)
            }
        });
        println!("{}", outcome.result_line());
        if !outcome.passed() {
            failed += 1;
        }
    }
    println!("{} passed, {} failed", scenarios.len() - failed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
