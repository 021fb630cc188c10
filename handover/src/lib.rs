//! The kexec handover core: preserve named sessions of files, and the physical pages behind
//! them, across a kexec, and take them back in the next kernel with nothing lost.
//!
//! This crate is pure: no asm, no port I/O, no global state. It builds for the host (where it
//! is tested against [`sim`], a simulated machine) and for `x86_64-unknown-none`; the
//! receiving side (validate, walk, retrieve) needs no allocator (`--no-default-features`).
//!
//! Outgoing kernel:
//! - [`tracker::PreservationTracker`] records preserved blocks of any order, ranges and page
//!   arrays, refusing overlaps, holes and scratch;
//! - [`luo::LiveUpdate`] is `/dev/liveupdate`: [`luo::LiveUpdate::ioctl`] takes the command
//!   number and argument bytes of [`uapi`], sessions hold files through
//!   [`handler::FileHandler`]s such as [`memfd::MemfdHandler`];
//! - at the reboot step, [`luo::LiveUpdate::prepare_reboot`] freezes everything and
//!   [`luo::LiveUpdate::build_image`] writes the handover image ([`image::build`]).
//!
//! Next kernel, before it allocates anything:
//! - [`Handover::parse`] proves the image well formed (see `docs/FORMAT.md`) and opens it;
//! - [`image::MemoryMap::walk`] reports every preserved run, to reserve;
//! - then [`incoming::IncomingPages`] and [`luo::Incoming`], in storage sized from the counts,
//!   give sessions and files back through the same `ioctl`.
//!
//! ```
//! use handover::{Handover, PhysAddr, PhysRange};
//! use handover::luo::{LiveUpdate, Limits};
//! use handover::memfd::MemfdHandler;
//! use handover::sim::SimObject;
//! use handover::tracker::PreservationTracker;
//!
//! static MEMFD: MemfdHandler = MemfdHandler::new();
//! let ram = [PhysRange::new(PhysAddr::new(1 << 20), 63 << 20).unwrap()];
//! let scratch = [PhysRange::new(PhysAddr::new(1 << 20), 7 << 20).unwrap()];
//!
//! // The outgoing kernel: preserve a page, freeze, write the image at 32 MiB.
//! let tracker = PreservationTracker::new(&ram, &scratch).unwrap();
//! let mut luo: LiveUpdate<SimObject> = LiveUpdate::with_tracker(Limits::default(), tracker);
//! luo.register_handler(&MEMFD).unwrap();
//! luo.tracker_mut().unwrap().preserve_page(PhysAddr::new(16 << 20)).unwrap();
//! let plan = luo.prepare_reboot().unwrap();
//! let image = luo.build_image(&plan, |_pages| Some(PhysAddr::new(32 << 20))).unwrap();
//!
//! // The next kernel: validate, then reserve what was preserved, and the image.
//! let handover = Handover::parse(image.as_bytes()).unwrap();
//! let mut reserved = vec![handover.image_range()];
//! handover.memory_map().walk(|run| reserved.push(run.range()));
//! assert_eq!(reserved[1], PhysRange::new(PhysAddr::new(16 << 20), 4096).unwrap());
//! ```
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
mod bitruns;
pub mod crc32c;
pub mod error;
pub mod fdt;
#[cfg(feature = "alloc")]
pub mod fdtable;
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
