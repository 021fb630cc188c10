//! Damaged handovers are refused with a typed error, never a panic.
//!
//! The reference image is a few KiB. Sweep 1 flips every bit and truncates at every length:
//! the checksum must catch each one. Sweep 2 re-seals the checksum after each flip, so the
//! validator itself is exercised: every flipped image is either rejected or accepted with every
//! accessor consistent (and then it must be the canonical image of what it says).

mod common;

use common::*;
use handover::image::build::HandoverImage;
use handover::*;

/// Miri runs this crate's tests; the full sweeps would take it hours, so it samples.
fn stride() -> usize {
    if cfg!(miri) { 97 } else { 1 }
}

#[test]
fn reference_image_is_small_and_valid() {
    let image = reference().clone();
    assert!(
        image.as_bytes().len() < 4096,
        "{} bytes",
        image.as_bytes().len()
    );
    check_accepted(image.as_bytes());
}

#[test]
fn every_bit_flip_and_truncation_is_rejected() {
    let image = reference().clone();
    let bytes = image.as_bytes();
    for len in (0..bytes.len()).step_by(stride()) {
        let truncated = HandoverImage::from_bytes(&bytes[..len]);
        assert!(
            Handover::parse(truncated.as_bytes()).is_err(),
            "truncation to {len} accepted"
        );
    }
    for bit in (0..bytes.len() * 8).step_by(stride()) {
        let mut damaged = image.clone();
        damaged.as_bytes_mut()[bit / 8] ^= 1 << (bit % 8);
        let error = Handover::parse(damaged.as_bytes()).expect_err("bit flip accepted");
        // Every rejection names a field and lies inside the blob.
        assert!(!error.field.is_empty());
        assert!(error.offset <= bytes.len(), "{error}");
    }
}

#[test]
fn every_resealed_bit_flip_is_rejected_or_consistent() {
    let image = reference().clone();
    let bytes = image.as_bytes().to_vec();
    let mut accepted = 0usize;
    let mut kinds = std::collections::BTreeMap::new();
    for bit in (0..bytes.len() * 8).step_by(stride()) {
        let mut damaged = image.clone();
        damaged.as_bytes_mut()[bit / 8] ^= 1 << (bit % 8);
        damaged.reseal();
        match Handover::parse(damaged.as_bytes()) {
            Ok(_) => {
                accepted += 1;
                check_accepted(damaged.as_bytes());
            }
            Err(error) => *kinds.entry(format!("{:?}", error.kind)).or_insert(0usize) += 1,
        }
    }
    // Flips inside opaque bytes (record contents, the generation) are legitimately accepted.
    assert!(
        accepted > 0 && accepted < bytes.len() * 8 / 2,
        "accepted {accepted}"
    );
    eprintln!("accepted {accepted}; rejections by kind: {kinds:?}");
}

#[test]
fn checksum_is_enforced() {
    // The fuzz build skips the checksum comparison; a normal build must not.
    let image = reference().clone();
    let mut damaged = image.clone();
    let last = damaged.as_bytes().len() - 1;
    damaged.as_bytes_mut()[last] ^= 0x40;
    let error = Handover::parse(damaged.as_bytes()).unwrap_err();
    assert!(
        matches!(error.kind, FormatErrorKind::ChecksumMismatch { .. }),
        "{error}"
    );
    assert!(handover::image::verify_checksum(damaged.as_bytes()).is_err());
}

#[test]
fn misaligned_blobs_are_refused() {
    let image = reference().clone();
    let mut shifted = vec![0u8; image.as_bytes().len() + 8];
    let base = shifted.as_ptr() as usize;
    let offset = (0..8).find(|o| (base + o) % 4 == 1).unwrap();
    shifted[offset..offset + image.as_bytes().len()].copy_from_slice(image.as_bytes());
    let error = Handover::parse(&shifted[offset..offset + image.as_bytes().len()]).unwrap_err();
    assert_eq!(error.kind, FormatErrorKind::Misaligned);
}
