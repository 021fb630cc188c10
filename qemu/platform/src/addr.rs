//! Typed physical addresses, page frames and ranges: the handover core's types
//! (`handover::addr`), one definition for the whole workspace, and the layout constants the
//! platform adds.

pub use handover::addr::{PAGE_SHIFT, PAGE_SIZE, PageFrame, PhysAddr, PhysRange};

/// The size of one large page in the identity maps the platform and the loader build (2 MiB).
pub const LARGE_PAGE_SIZE: u64 = 1 << 21;
/// One MiB, for layouts written in MiB.
pub const MIB: u64 = 1 << 20;
