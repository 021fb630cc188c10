//! The one audited `unsafe` spot of this crate: opening a blob with fdt-rs.
//!
//! fdt-rs marks `DevTree::new` unsafe because it reads the buffer as a devicetree with
//! unchecked 32-bit loads; its parser also panics on malformed input (see
//! `shared/reference/platform.md`). This module is only called on blobs the validator in
//! `image::validate` has already proven canonical, and re-checks the two memory-safety
//! preconditions itself so the argument below stands on its own.
#![allow(unsafe_code)]

use fdt_rs::base::DevTree;

use crate::error::{FormatError, FormatErrorKind};
use crate::fdt::total_size;

/// Opens `blob` with fdt-rs.
pub(crate) fn open(blob: &[u8]) -> Result<DevTree<'_>, FormatError> {
    if !blob.as_ptr().cast::<u32>().is_aligned() {
        return Err(FormatError::new(
            FormatErrorKind::Misaligned,
            "blob",
            0,
            blob.as_ptr() as u64,
        ));
    }
    let total = total_size(blob)?;
    if total != blob.len() {
        return Err(FormatError::new(
            FormatErrorKind::BadHeader,
            "header.totalsize",
            4,
            total as u64,
        ));
    }
    // SAFETY: `DevTree::new` requires (1) a 32-bit aligned buffer, checked just above, and
    // (2) a buffer exactly `totalsize` bytes long, checked just above; both keep its unchecked
    // reads inside `blob`. That the contents are a well-formed devicetree (so its parser does
    // not panic) is guaranteed by the caller, which passes only validated blobs.
    unsafe { DevTree::new(blob) }
        .map_err(|_| FormatError::new(FormatErrorKind::ReaderDisagrees, "blob", 0, 0))
}
