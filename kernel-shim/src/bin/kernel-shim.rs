//! The kernel-shim image linked at 16 MiB, clear of the loader.
//! The kernel itself is `kernel_shim::kernel`; see `build.rs` for the link address.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
qemu_platform::entry_point!(kernel_shim::kernel::main);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "kernel-shim is a bare-metal image: build it with --target x86_64-unknown-none (see `cargo qemu`)"
    );
}
