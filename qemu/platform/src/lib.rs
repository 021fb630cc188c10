//! QEMU x86_64 platform code.
#![no_std]
