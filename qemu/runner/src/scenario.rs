//! The scenario table: every scenario the guest knows, with what it needs to boot.
//!
//! To add a scenario: add a row here (name, description, memory, which shim image, timeout),
//! handle `scenario=NAME` in the loader (`loader/src/main.rs`) and, if the next kernel has
//! checks of its own, in `kernel_shim::kernel::main`; then add a `#[test]` in
//! `tests/qemu_scenarios.rs`.

use std::time::Duration;

/// Which next-kernel image QEMU gets as `-initrd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShimImage {
    /// `kernel-shim`, linked at 16 MiB, clear of the loader.
    Standard,
    /// `kernel-shim-overlap`, linked at 1 MiB, right over the running loader.
    Overlap,
}

impl ShimImage {
    /// The binary's name (under `target/x86_64-unknown-none/release/`).
    pub const fn bin_name(self) -> &'static str {
        match self {
            ShimImage::Standard => "kernel-shim",
            ShimImage::Overlap => "kernel-shim-overlap",
        }
    }
}

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The name passed as `scenario=NAME` and on `cargo qemu`'s command line.
    pub name: &'static str,
    /// What it checks.
    pub description: &'static str,
    /// Guest RAM (`-m`), in MiB.
    pub memory_mib: u32,
    /// The `-initrd` image.
    pub shim: ShimImage,
    /// How long the guest may run before it counts as hung.
    pub timeout: Duration,
}

/// The guest boots in well under a second under TCG; the margin is for loaded CI machines.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The scenario `cargo qemu` runs without arguments.
pub const DEFAULT_SCENARIO: &str = "basic";

/// Every scenario, in the order `--list` and `--all` use.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "basic",
        description: "several sessions of memfds (dense, sparse, multi-MiB) handed over once; every byte verified",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "empty",
        description: "a handover with no sessions: the next kernel boots with nothing to restore",
        memory_mib: 128,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "many",
        description: "300 sessions, 600 files, about 40 MiB preserved and verified",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "chain",
        description: "10 kexecs in a row; each kernel verifies, changes and re-preserves the files; no page leaks",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "overlap",
        description: "the next kernel is linked over the running loader's own code and data",
        memory_mib: 256,
        shim: ShimImage::Overlap,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "unfinished",
        description: "a session kernel 2 never retrieves is released in kernel 3: its pages are free memory",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "corrupt",
        description: "the sealed handover is damaged: the next kernel refuses it and boots on without revival",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "bad-kernel",
        description: "a staged segment is damaged after digesting: the loader refuses to jump, rolls back, re-verifies",
        memory_mib: 256,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "relaunch",
        description: "the kernel-shim kexecs itself again from the ELF passed on, in place over its running image",
        memory_mib: 128,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "fault",
        description: "a deliberate page fault reaches the exception handler, which names it, its rip and cr2",
        memory_mib: 128,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
    Scenario {
        name: "bad-elf",
        description: "malformed next-kernel ELFs are refused, each naming the bad field",
        memory_mib: 128,
        shim: ShimImage::Standard,
        timeout: TIMEOUT,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_default_exists() {
        for (index, scenario) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[..index]
                    .iter()
                    .all(|other| other.name != scenario.name),
                "{} twice",
                scenario.name
            );
            assert!(
                scenario.memory_mib >= 128,
                "{} needs scratch + heap + initrd",
                scenario.name
            );
        }
        assert!(find(DEFAULT_SCENARIO).is_some());
        assert!(find("nope").is_none());
    }
}
