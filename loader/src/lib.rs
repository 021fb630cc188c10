//! The kexec loader library.
#![no_std]
