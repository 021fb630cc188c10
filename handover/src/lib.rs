//! The kexec handover core.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod addr;
#[cfg(feature = "alloc")]
pub mod aligned;
pub mod crc32c;
pub mod error;
pub mod fdt;
pub mod handler;
pub mod image;
pub mod incoming;
pub mod kernel;
pub mod luo;
pub mod memfd;
pub mod memmap;
#[cfg(feature = "alloc")]
pub mod sim;
#[cfg(feature = "alloc")]
pub mod tracker;
pub mod uapi;

pub use addr::{PAGE_SIZE, PageFrame, PhysAddr, PhysRange};
pub use error::{FormatError, FormatErrorKind};
pub use image::Handover;
