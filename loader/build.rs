//! Links the bare-metal `loader` binary with the platform's linker script at 1 MiB.
//! Host builds (tests, clippy) are left untouched.

use std::path::PathBuf;

/// Where the loader is linked and loaded: the first MiB is legacy PC memory.
const LOADER_BASE: u64 = 0x10_0000;

fn main() {
    let template = PathBuf::from(env("CARGO_MANIFEST_DIR")).join("../qemu/platform/image.ld");
    println!("cargo:rerun-if-changed={}", template.display());
    println!("cargo:rerun-if-changed=build.rs");
    if env("CARGO_CFG_TARGET_OS") != "none" {
        return;
    }
    let script = std::fs::read_to_string(&template)
        .unwrap_or_else(|error| panic!("reading {}: {error}", template.display()))
        .replace("@IMAGE_BASE@", &format!("{LOADER_BASE:#x}"));
    let out = PathBuf::from(env("OUT_DIR")).join("loader.ld");
    std::fs::write(&out, script)
        .unwrap_or_else(|error| panic!("writing {}: {error}", out.display()));
    println!("cargo:rustc-link-arg-bin=loader=-T{}", out.display());
    println!("cargo:rustc-link-arg-bin=loader=--no-pie");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}
