//! Links the two bare-metal kernel-shim binaries with the platform's linker script:
//! `kernel-shim` at 16 MiB (clear of the loader) and `kernel-shim-overlap` at 1 MiB, right over
//! the running loader (the `overlap` scenario). Host builds are left untouched.

use std::path::PathBuf;

/// (binary, physical load address)
const IMAGES: [(&str, u64); 2] = [
    ("kernel-shim", 0x100_0000),
    ("kernel-shim-overlap", 0x10_0000),
];

fn main() {
    let template = PathBuf::from(env("CARGO_MANIFEST_DIR")).join("../qemu/platform/image.ld");
    println!("cargo:rerun-if-changed={}", template.display());
    println!("cargo:rerun-if-changed=build.rs");
    if env("CARGO_CFG_TARGET_OS") != "none" {
        return;
    }
    let template_text = std::fs::read_to_string(&template)
        .unwrap_or_else(|error| panic!("reading {}: {error}", template.display()));
    for (bin, base) in IMAGES {
        let script = template_text.replace("@IMAGE_BASE@", &format!("{base:#x}"));
        let out = PathBuf::from(env("OUT_DIR")).join(format!("{bin}.ld"));
        std::fs::write(&out, script)
            .unwrap_or_else(|error| panic!("writing {}: {error}", out.display()));
        println!("cargo:rustc-link-arg-bin={bin}=-T{}", out.display());
        println!("cargo:rustc-link-arg-bin={bin}=--no-pie");
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}
