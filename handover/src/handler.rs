//! The file-handler interface: how one kind of file is preserved, frozen, written into the
//! handover, and taken back.
//!
//! A handler is registered by the embedding kernel and named by a versioned compatible string
//! (`memfd-v2`). It writes records in its current version and reads every version from
//! [`FileHandler::oldest_readable_version`] up to it, so a kernel can take state from a
//! predecessor one record version older (Linux accepts only the exact string).
//!
//! Lifecycle (outgoing): `can_preserve` → `preserve` … `freeze` (at the reboot step, in
//! preservation order; `unfreeze` in reverse if a later step fails) → `serialize`;
//! `unpreserve` when the session closes. Incoming: `retrieve` (once per file; its outcome is
//! sticky), then `can_finish` on every file and `finish` on each when the session finishes.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::fmt;

use crate::incoming::IncomingPages;
use crate::memmap::FrameRun;
#[cfg(feature = "alloc")]
use crate::tracker::PreservationTracker;
use crate::uapi::Errno;

/// A handler's name and record version; displays as `name-vN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compatible {
    /// The name: 1 to 31 of `[a-z0-9,._+-]`.
    pub name: &'static str,
    /// The record version.
    pub version: u32,
}

impl fmt::Display for Compatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-v{}", self.name, self.version)
    }
}

/// A kind of preservable file. `O` is the embedding kernel's file-object handle.
pub trait FileHandler<O> {
    /// The name and the record version this handler writes.
    fn compatible(&self) -> Compatible;

    /// The oldest record version [`FileHandler::retrieve`] accepts.
    fn oldest_readable_version(&self) -> u32;

    /// Whether this handler can preserve `object` (the first handler that says yes wins).
    fn can_preserve(&self, object: &O) -> bool;

    /// A key equal for every handle to the same underlying object (an inode, say), so the
    /// same object cannot be preserved twice.
    fn identity(&self, object: &O) -> u64;

    /// Starts preserving `object`: pins its state and preserves its pages.
    #[cfg(feature = "alloc")]
    fn preserve(&self, object: &O, tracker: &mut PreservationTracker) -> Result<(), Errno>;

    /// Undoes [`FileHandler::preserve`] (the session closed). Must not fail.
    #[cfg(feature = "alloc")]
    fn unpreserve(&self, object: &O, tracker: &mut PreservationTracker);

    /// The reboot step: final state is captured; userspace can no longer change the file.
    #[cfg(feature = "alloc")]
    fn freeze(&self, object: &O, tracker: &mut PreservationTracker) -> Result<(), Errno> {
        let _ = (object, tracker);
        Ok(())
    }

    /// Undoes [`FileHandler::freeze`] after a later step of the reboot failed.
    #[cfg(feature = "alloc")]
    fn unfreeze(&self, object: &O, tracker: &mut PreservationTracker) {
        let _ = (object, tracker);
    }

    /// Appends the frozen file's record (in [`FileHandler::compatible`]'s version) to `out`.
    #[cfg(feature = "alloc")]
    fn serialize(&self, object: &O, out: &mut Vec<u8>) -> Result<(), Errno>;

    /// Restores a file from its record, claiming the pages it owns.
    fn retrieve(
        &self,
        record: &[u8],
        version: u32,
        pages: &mut IncomingPages<'_>,
    ) -> Result<O, Errno>;

    /// Whether the file may finish now (`retrieved` is the object if the retrieve succeeded).
    fn can_finish(&self, record: &[u8], version: u32, retrieved: Option<&O>) -> bool {
        let _ = (record, version, retrieved);
        true
    }

    /// Ends the previous kernel's ownership of the file. If it was never retrieved (or the
    /// retrieve failed), the handler claims what the record owns and hands it to `release`,
    /// which returns it to the kernel as free memory. Must not fail.
    fn finish(
        &self,
        record: &[u8],
        version: u32,
        retrieved: Option<&O>,
        pages: &mut IncomingPages<'_>,
        release: &mut dyn FnMut(FrameRun),
    );
}
