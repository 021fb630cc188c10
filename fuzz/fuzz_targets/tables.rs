//! The session and file tables and the handler records framing: arbitrary table bytes in an
//! otherwise valid image, sealed, through the full parse and every accessor.
#![no_main]

use arbitrary::Arbitrary;
use handover::Handover;
use handover::image::build::{HandlerDraft, write_tree};
use handover::image::schema::RangeEntry;
use handover_fuzz::*;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    sessions: Vec<u8>,
    files: Vec<u8>,
    records: Vec<Vec<u8>>,
    versions: [u8; 3],
}

fuzz_target!(|input: Input| {
    let ram = [RangeEntry::from_range(ram())];
    let scratch = [RangeEntry::from_range(scratch())];
    let names = ["alpha", "beta", "memfd"];
    let count = input.records.len().min(names.len());
    let handlers: Vec<HandlerDraft> = (0..count)
        .map(|i| HandlerDraft {
            name: names[i],
            version: u32::from(input.versions[i]),
        })
        .collect();
    let values = values(&ram, &scratch, &input.sessions, &input.files, &handlers);
    let image = seal(write_tree(&values, |node, out| {
        out.extend_from_slice(&input.records[node])
    }));
    if Handover::parse(image.as_bytes()).is_ok() {
        handover::sim::check_accepted(image.as_bytes());
    }
});
