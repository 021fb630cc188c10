//! The whole handover image along the kernel-shim's path: read `totalsize` from the header,
//! take that many bytes, validate (the checksum comparison is skipped under `cfg(fuzzing)` so
//! mutations reach the validator; `checksum_is_enforced` proves normal builds compare it), then
//! read everything the API exposes. An accepted image must be consistent and canonical.
#![no_main]

use handover::Handover;
use handover::image::build::HandoverImage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = handover::fdt::total_size(data).map_or(data.len(), |n| n.min(data.len()));
    let blob = HandoverImage::from_bytes(&data[..len]);
    if Handover::parse(blob.as_bytes()).is_ok() {
        handover::sim::check_accepted(blob.as_bytes());
    }
});
