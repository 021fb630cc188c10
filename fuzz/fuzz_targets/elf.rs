//! The loader's ELF parser and segment placement: raw bytes, or an ELF64 assembled from
//! arbitrary program headers so inputs reach the placement checks. An accepted image must
//! place every segment inside RAM and inside one scratch range, with no two segments sharing
//! a byte, its file bytes inside the file, and the entry inside an executable segment; staging
//! it must reproduce the file bytes and verify against its own digests.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use loader::KexecImage;
use qemu_platform::addr::{PhysAddr, PhysRange};
use qemu_platform::memmap::{MemoryMap, RawMemoryEntry};

#[derive(Arbitrary, Debug)]
struct Segment {
    kind: u8,
    flags: u8,
    /// Page within the interesting window, and an offset inside it.
    page: u16,
    byte: u16,
    file_len: u16,
    extra_mem: u16,
    offset_delta: i16,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built {
        entry_segment: u8,
        entry_byte: u16,
        segments: Vec<Segment>,
        tweak: Option<(u8, u8)>,
    },
}

const PHDR_SIZE: usize = 56;
const EHDR_SIZE: usize = 64;

fn build(
    entry_segment: u8,
    entry_byte: u16,
    segments: &[Segment],
    tweak: Option<(u8, u8)>,
) -> Vec<u8> {
    let count = segments.len().min(40);
    let data_at = EHDR_SIZE + count * PHDR_SIZE;
    let mut elf = vec![0u8; data_at];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
    elf[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    elf[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    elf[56..58].copy_from_slice(&(count as u16).to_le_bytes());
    let mut entry = 0u64;
    for (index, segment) in segments.iter().take(count).enumerate() {
        // Destinations around scratch's edges: [0, 80 MiB).
        let paddr = u64::from(segment.page % 20480) * 4096 + u64::from(segment.byte % 4096);
        let file_len = u64::from(segment.file_len % 8192);
        let offset = (elf.len() as i64 + i64::from(segment.offset_delta % 64)).max(0) as u64;
        let mem_len = file_len + u64::from(segment.extra_mem);
        elf.resize(elf.len() + file_len as usize, 0x90);
        let at = EHDR_SIZE + index * PHDR_SIZE;
        let kind = match segment.kind % 8 {
            0..=4 => 1u32,
            5 => 4,
            6 => 2,
            _ => 3,
        };
        let phdr = &mut elf[at..at + PHDR_SIZE];
        phdr[0..4].copy_from_slice(&kind.to_le_bytes());
        phdr[4..8].copy_from_slice(&u32::from(segment.flags % 8).to_le_bytes());
        phdr[8..16].copy_from_slice(&offset.to_le_bytes());
        phdr[16..24].copy_from_slice(&paddr.to_le_bytes());
        phdr[24..32].copy_from_slice(&paddr.to_le_bytes());
        phdr[32..40].copy_from_slice(&file_len.to_le_bytes());
        phdr[40..48].copy_from_slice(&mem_len.to_le_bytes());
        phdr[48..56].copy_from_slice(&4096u64.to_le_bytes());
        if index == usize::from(entry_segment) % count.max(1) {
            entry = paddr + u64::from(entry_byte) % mem_len.max(1);
        }
    }
    elf[24..32].copy_from_slice(&entry.to_le_bytes());
    if let Some((at, value)) = tweak {
        let at = usize::from(at) % elf.len();
        elf[at] ^= value;
    }
    elf
}

fuzz_target!(|input: Input| {
    let elf = match &input {
        Input::Raw(bytes) => bytes.clone(),
        Input::Built {
            entry_segment,
            entry_byte,
            segments,
            tweak,
        } => build(*entry_segment, *entry_byte, segments, *tweak),
    };
    // RAM [0, 640 KiB) and [1 MiB, 128 MiB); scratch [1 MiB, 64 MiB).
    let map = MemoryMap::from_entries([
        RawMemoryEntry {
            addr: 0,
            len_bytes: 0xa_0000,
            type_number: 1,
        },
        RawMemoryEntry {
            addr: 0x10_0000,
            len_bytes: 127 << 20,
            type_number: 1,
        },
    ])
    .unwrap();
    let scratch = [PhysRange::new(PhysAddr::new(1 << 20), 63 << 20).unwrap()];
    let Ok(parsed) = loader::elf::parse(&elf, &map, &scratch) else {
        return;
    };
    let mut placed: Vec<PhysRange> = Vec::new();
    for segment in &parsed.segments {
        let footprint = segment.dest.page_footprint().expect("footprint");
        assert!(
            map.is_ram(footprint) && scratch[0].contains_range(footprint),
            "segment outside RAM/scratch"
        );
        assert!(
            !placed.iter().any(|p| p.overlaps(segment.dest)),
            "segments share a byte"
        );
        assert!(segment.file_len_bytes <= segment.dest.len_bytes());
        assert!(
            segment.file_bytes(&elf).is_some(),
            "file bytes outside the file"
        );
        placed.push(segment.dest);
    }
    assert!(
        parsed
            .segments
            .iter()
            .any(|s| s.flags & 1 != 0 && s.dest.contains(parsed.entry)),
        "entry outside code"
    );
    let image = KexecImage::load(&elf, &scratch, &map).expect("a parsed image stages");
    image.verify().expect("fresh staging verifies");
    for (staged, segment) in image.segments().iter().zip(&parsed.segments) {
        assert_eq!(Some(staged.staged()), segment.file_bytes(&elf));
    }
});
