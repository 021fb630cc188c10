//! Structure-aware: builds a well-formed image from arbitrary parts (preserved blocks of mixed
//! orders, sessions with arbitrary names, files of several handlers with arbitrary records), so
//! the fuzzer starts past the checksum and the container. The built image must validate,
//! rebuild byte-identically and read back consistently; then the input's mutations are applied
//! and the checksum re-sealed, so the validator itself is exercised on near-valid images.
#![no_main]

use arbitrary::Arbitrary;
use handover::Handover;
use handover::image::build::{
    FileDraft, HandlerDraft, HandoverImage, ImageParts, SessionDraft, build_image,
};
use handover::image::schema::SessionName;
use handover::memmap::FrameRun;
use handover_fuzz::*;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct FileSpec {
    token: u64,
    handler: u8,
    record: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct SessionSpec {
    name: Vec<u8>,
    files: Vec<FileSpec>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    generation: u64,
    /// (gap in pages, order, block count) of each preserved run, in address order.
    blocks: Vec<(u16, u8, u8)>,
    handlers: Vec<(u8, u8)>,
    sessions: Vec<SessionSpec>,
    /// (byte offset, value to xor) applied after building.
    mutations: Vec<(u16, u8)>,
}

const HANDLER_NAMES: [&str; 4] = ["memfd", "aa", "z.z", "vfio-pci,1"];

fuzz_target!(|input: Input| {
    let ram_range = ram();
    let ram = [ram_range];
    let scratch = [scratch()];
    // Runs from 40 MiB up, below 3 GiB; the image sits at 32 MiB.
    let mut runs: Vec<FrameRun> = Vec::new();
    let mut cursor = (40 * MIB) >> 12;
    for &(gap, order, count) in &input.blocks {
        let order = order % 12;
        let align = 1u64 << order;
        let first = (cursor + u64::from(gap)).div_ceil(align) * align;
        let count = u64::from(count % 64) + 1;
        let end = first + (count << order);
        if end > (3 << 30) >> 12 {
            break;
        }
        match runs.last_mut() {
            Some(last) if last.order == order && last.end_frame() == first => {
                last.block_count += count
            }
            _ => runs.push(FrameRun::new(first, count, order)),
        }
        cursor = end;
    }
    let mut handlers: Vec<HandlerDraft> = Vec::new();
    for &(name, version) in input.handlers.iter().take(HANDLER_NAMES.len()) {
        let name = HANDLER_NAMES[usize::from(name) % HANDLER_NAMES.len()];
        if !handlers.iter().any(|h| h.name == name) {
            handlers.push(HandlerDraft {
                name,
                version: u32::from(version % 4) + 1,
            });
        }
    }
    let mut sessions = Vec::new();
    let mut files = Vec::new();
    let mut records = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for spec in &input.sessions {
        let Some(name) = SessionName::new(&spec.name) else {
            continue;
        };
        if !names.insert(name) {
            continue;
        }
        let first = files.len();
        let mut tokens = std::collections::BTreeSet::new();
        for file in &spec.files {
            if handlers.is_empty() || !tokens.insert(file.token) {
                continue;
            }
            let start = records.len();
            records.extend_from_slice(&file.record);
            let handler = usize::from(file.handler) % handlers.len();
            files.push(FileDraft {
                token: file.token,
                handler,
                record: start..records.len(),
            });
        }
        sessions.push(SessionDraft {
            name,
            files: first..files.len(),
        });
    }
    let parts = ImageParts {
        generation: input.generation,
        ram: &ram,
        scratch: &scratch,
        runs: &runs,
        handlers: &handlers,
        sessions: &sessions,
        files: &files,
        records: &records,
    };
    let image = build_image(&parts, |_| Some(image_at())).expect("well-formed parts build");
    handover::sim::check_accepted(image.as_bytes());

    if input.mutations.is_empty() {
        return;
    }
    let mut damaged = HandoverImage::from_bytes(image.as_bytes());
    let len = damaged.as_bytes().len();
    for &(offset, xor) in &input.mutations {
        damaged.as_bytes_mut()[usize::from(offset) % len] ^= xor;
    }
    damaged.reseal();
    if Handover::parse(damaged.as_bytes()).is_ok() {
        handover::sim::check_accepted(damaged.as_bytes());
    }
});
