//! Making sure the machine has what a run needs: the bare-metal Rust target and QEMU.
//!
//! On a fresh machine `RUSTUP_AUTO_INSTALL=0` means the toolchain file installs nothing, and
//! QEMU is not there. We install what we can (the target with rustup; QEMU with apt when we
//! are root) and otherwise say the one command to run. A missing QEMU is always an error,
//! never a silent skip.

use crate::RunnerError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target the images are built for.
pub const TARGET: &str = "x86_64-unknown-none";
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Installs the bare-metal target if the toolchain lacks it.
pub fn ensure_target(workspace: &Path, log: &mut dyn Write) -> Result<(), RunnerError> {
    if target_installed(workspace)? {
        return Ok(());
    }
    let _ = writeln!(
        log,
        "qemu-runner: installing the {TARGET} target (rustup target add {TARGET})"
    );
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(workspace)
        .status()
        .map_err(|error| {
            RunnerError::Setup(format!(
                "cannot run rustup ({error}): run `rustup target add {TARGET}`"
            ))
        })?;
    if !status.success() || !target_installed(workspace)? {
        return Err(RunnerError::Setup(format!(
            "installing {TARGET} failed: run `rustup target add {TARGET}`"
        )));
    }
    Ok(())
}

fn target_installed(workspace: &Path) -> Result<bool, RunnerError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace)
        .output()
        .map_err(|error| RunnerError::Setup(format!("cannot run rustc: {error}")))?;
    if !output.status.success() {
        return Err(RunnerError::Setup(format!(
            "rustc --print sysroot failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    Ok(sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir())
}

/// The path of `qemu-system-x86_64`, installing it with apt when we are root.
pub fn ensure_qemu(log: &mut dyn Write) -> Result<PathBuf, RunnerError> {
    if let Some(path) = find_in_path(QEMU) {
        return Ok(path);
    }
    if !running_as_root() {
        return Err(RunnerError::Setup(format!(
            "{QEMU} not found: run `sudo apt-get install -y qemu-system-x86`"
        )));
    }
    let _ = writeln!(
        log,
        "qemu-runner: {QEMU} not found; installing qemu-system-x86 with apt-get"
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    if !install() {
        // A fresh machine's package lists may be empty or stale.
        let _ = writeln!(
            log,
            "qemu-runner: apt-get install failed; running apt-get update and retrying"
        );
        let updated = Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|status| status.success());
        if !updated || !install() {
            return Err(RunnerError::Setup(
                "installing qemu-system-x86 failed: run `apt-get update && apt-get install -y qemu-system-x86`"
                    .to_string(),
            ));
        }
    }
    find_in_path(QEMU).ok_or_else(|| {
        RunnerError::Setup(format!(
            "{QEMU} still not found after installing qemu-system-x86"
        ))
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn running_as_root() -> bool {
    // The effective user id is the second number on the `Uid:` line.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}
