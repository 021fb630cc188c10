//! Placing the hand-off: where the trampoline, boot info, stack and page tables go, what the
//! trampoline copies, and what the next kernel's registers hold.
//!
//! Everything the trampoline or the next kernel touches after the point of no return must be
//! somewhere the segment copy cannot overwrite it. [`plan`] allocates each structure from free
//! frames in scratch, avoiding every destination (and the handover image and the initrd), and
//! checks that no staged buffer overlaps a destination. It is pure: it computes addresses and
//! the `BootInfo` value; `crate::trampoline` writes them and jumps.

use crate::elf::MAX_LOAD_SEGMENTS;
use crate::handoff::{
    BOOT_CMDLINE_MAX_BYTES, BOOT_INFO_LEN_BYTES, BootInfo, BootMemoryRegion, BootRange, Handoff,
    InUseKind, KEXEC_ENTRY_MAGIC,
};
use crate::image::{KexecImage, VerifyError};
use crate::pagetable::{identity_map_end, identity_map_page_count};
use alloc::boxed::Box;
use core::fmt;
use qemu_platform::addr::{PhysAddr, PhysRange};
use qemu_platform::frame::{FrameAllocator, pages_for};

/// Pages of the next kernel's initial stack.
pub const STACK_PAGES: u64 = 4;

/// The next kernel's registers at entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRegisters {
    /// Where the trampoline jumps (`e_entry`).
    pub rip: u64,
    /// Top of the stack in scratch, 16-byte aligned.
    pub rsp: u64,
    /// The identity map's PML4.
    pub cr3: u64,
    /// The handover image, 0 = none.
    pub rdi: u64,
    /// The `BootInfo`.
    pub rsi: u64,
    /// [`KEXEC_ENTRY_MAGIC`].
    pub rdx: u64,
}

/// One copy the trampoline performs (memmove semantics), followed by zero filling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentCopy {
    /// The staged bytes.
    pub src: PhysAddr,
    /// The destination.
    pub dest: PhysAddr,
    /// Bytes copied.
    pub copy_len_bytes: u64,
    /// Bytes zeroed after them.
    pub zero_len_bytes: u64,
}

/// Where everything goes.
#[derive(Clone, Debug)]
pub struct KexecPlan {
    /// The trampoline's page (code, GDT, copy list).
    pub trampoline: PhysRange,
    /// The `BootInfo`'s pages.
    pub boot_info: PhysRange,
    /// The next kernel's stack.
    pub stack: PhysRange,
    /// The identity map's pages (PML4 first).
    pub page_tables: PhysRange,
    /// One past what the identity map covers.
    pub map_end: PhysAddr,
    /// The `BootInfo` to write (its TSC fields are filled at run time).
    pub boot_info_value: Box<BootInfo>,
    /// The registers at entry.
    pub registers: EntryRegisters,
    /// The copies, in segment order.
    pub copies: heapless::Vec<SegmentCopy, MAX_LOAD_SEGMENTS>,
}

/// Why the hand-off cannot be prepared. Nothing has been written when this is returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrepareError {
    /// A staged segment is damaged.
    Verify(VerifyError),
    /// The handover image lies (partly) in scratch, which the next kernel reuses freely.
    HandoverInScratch {
        /// The handover image.
        handover: PhysRange,
    },
    /// Something that must survive the copy lies in a destination.
    OverlapsDestination {
        /// What ("handover image", "initrd").
        what: &'static str,
        /// Its range.
        range: PhysRange,
        /// The destination it overlaps.
        dest: PhysRange,
    },
    /// A staged buffer lies in a destination (the heap must be outside scratch).
    StagingOverlapsDestination {
        /// The segment's index.
        segment: usize,
        /// The staged buffer.
        staged: PhysRange,
        /// The destination it overlaps.
        dest: PhysRange,
    },
    /// The command line does not fit in `BootInfo`.
    CmdlineTooLong {
        /// Its length.
        len_bytes: usize,
    },
    /// RAM ends beyond what one PDPT maps (512 GiB).
    RamTooLarge {
        /// The end of RAM.
        ram_end: PhysAddr,
    },
    /// No free run of pages in scratch outside the destinations.
    NoRoomInScratch {
        /// For what.
        what: &'static str,
        /// Pages needed.
        page_count: u64,
    },
    /// More in-use ranges than `BootInfo` holds.
    TooManyInUseRanges,
    /// The trampoline's code does not fit below its parameters (a build defect).
    TrampolineTooLarge {
        /// The code's length.
        len_bytes: usize,
    },
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PrepareError::Verify(error) => write!(f, "verification failed: {error}"),
            PrepareError::HandoverInScratch { handover } => {
                write!(f, "handover image {handover} lies in scratch memory")
            }
            PrepareError::OverlapsDestination { what, range, dest } => {
                write!(f, "{what} {range} overlaps the destination {dest}")
            }
            PrepareError::StagingOverlapsDestination {
                segment,
                staged,
                dest,
            } => write!(
                f,
                "staged segment {segment} at {staged} overlaps the destination {dest}"
            ),
            PrepareError::CmdlineTooLong { len_bytes } => write!(
                f,
                "command line of {len_bytes} bytes exceeds {BOOT_CMDLINE_MAX_BYTES}"
            ),
            PrepareError::RamTooLarge { ram_end } => {
                write!(
                    f,
                    "RAM ends at {ram_end}, beyond the 512 GiB the identity map covers"
                )
            }
            PrepareError::NoRoomInScratch { what, page_count } => {
                write!(f, "no {page_count} free pages in scratch for the {what}")
            }
            PrepareError::TooManyInUseRanges => write!(f, "too many in-use ranges for BootInfo"),
            PrepareError::TrampolineTooLarge { len_bytes } => {
                write!(
                    f,
                    "the trampoline's code ({len_bytes} bytes) overlaps its parameters"
                )
            }
        }
    }
}

/// Frees what a failed plan allocated.
struct Allocations<'f, 'a> {
    frames: &'f mut FrameAllocator<'a>,
    taken: heapless::Vec<PhysRange, 4>,
}

impl Allocations<'_, '_> {
    fn take(
        &mut self,
        what: &'static str,
        page_count: u64,
        scratch: &[PhysRange],
        avoid: &[PhysRange],
    ) -> Result<PhysRange, PrepareError> {
        let range = scratch
            .iter()
            .find_map(|&within| self.frames.alloc_contiguous_in(page_count, within, avoid))
            .ok_or(PrepareError::NoRoomInScratch { what, page_count })?;
        if self.taken.push(range).is_err() {
            // Four slots for four structures: cannot happen; give the pages back if it did.
            let _ = self.frames.free_range(range);
            return Err(PrepareError::NoRoomInScratch { what, page_count });
        }
        Ok(range)
    }

    fn release(&mut self) {
        for range in self.taken.drain(..) {
            // Just allocated by us: freeing cannot fail.
            let _ = self.frames.free_range(range);
        }
    }
}

/// Verifies `image` and plans the hand-off, allocating the trampoline page, the `BootInfo`,
/// the stack and the page tables from free frames of scratch. On error nothing stays
/// allocated.
pub fn plan(
    image: &KexecImage,
    handoff: &Handoff<'_>,
    frames: &mut FrameAllocator<'_>,
) -> Result<KexecPlan, PrepareError> {
    image.verify().map_err(PrepareError::Verify)?;
    let scratch = image.scratch();

    // The pages of every destination: nothing that must survive the copy may be there.
    let mut avoid: heapless::Vec<PhysRange, { MAX_LOAD_SEGMENTS + 2 }> = heapless::Vec::new();
    for dest in image.destinations() {
        // `elf::parse` checked the footprint is representable.
        let _ = avoid.push(dest.page_footprint().unwrap_or(dest));
    }
    let dest_overlapping =
        |range: PhysRange| image.destinations().find(|dest| dest.overlaps(range));

    if let Some(handover) = handoff.handover {
        if scratch.iter().any(|range| range.overlaps(handover)) {
            return Err(PrepareError::HandoverInScratch { handover });
        }
        let _ = avoid.push(handover);
    }
    if let Some(initrd) = handoff.initrd {
        if let Some(dest) = dest_overlapping(initrd) {
            return Err(PrepareError::OverlapsDestination {
                what: "initrd",
                range: initrd,
                dest,
            });
        }
        let _ = avoid.push(initrd);
    }
    for (segment, staged) in image.segments().iter().enumerate() {
        let staged_range = PhysRange::new(staged.staged_addr(), staged.file_len_bytes())
            .unwrap_or(PhysRange::EMPTY);
        if let Some(dest) = dest_overlapping(staged_range) {
            return Err(PrepareError::StagingOverlapsDestination {
                segment,
                staged: staged_range,
                dest,
            });
        }
    }
    if handoff.cmdline.len() > BOOT_CMDLINE_MAX_BYTES {
        return Err(PrepareError::CmdlineTooLong {
            len_bytes: handoff.cmdline.len(),
        });
    }
    let ram_end = image.memory_map().ram_end();
    let table_pages =
        identity_map_page_count(ram_end).ok_or(PrepareError::RamTooLarge { ram_end })?;

    let mut allocations = Allocations {
        frames,
        taken: heapless::Vec::new(),
    };
    let placed = (|| {
        let trampoline = allocations.take("trampoline", 1, scratch, &avoid)?;
        let boot_info = allocations.take(
            "boot info",
            pages_for(BOOT_INFO_LEN_BYTES as u64),
            scratch,
            &avoid,
        )?;
        let stack = allocations.take("stack", STACK_PAGES, scratch, &avoid)?;
        let page_tables = allocations.take("page tables", table_pages, scratch, &avoid)?;
        Ok((trampoline, boot_info, stack, page_tables))
    })();
    let (trampoline, boot_info, stack, page_tables) = match placed {
        Ok(placed) => placed,
        Err(error) => {
            allocations.release();
            return Err(error);
        }
    };

    let info = match fill_boot_info(image, handoff, [trampoline, boot_info, stack, page_tables]) {
        Ok(info) => info,
        Err(error) => {
            allocations.release();
            return Err(error);
        }
    };

    let mut copies = heapless::Vec::new();
    for segment in image.segments() {
        // At most MAX_LOAD_SEGMENTS segments: cannot overflow.
        let _ = copies.push(SegmentCopy {
            src: segment.staged_addr(),
            dest: segment.dest().start(),
            copy_len_bytes: segment.file_len_bytes(),
            zero_len_bytes: segment.zero_len_bytes(),
        });
    }
    let registers = EntryRegisters {
        rip: image.entry().as_u64(),
        // The top of the stack is page aligned, so 16-byte aligned.
        rsp: stack.end().as_u64(),
        cr3: page_tables.start().as_u64(),
        rdi: handoff.handover.map_or(0, |range| range.start().as_u64()),
        rsi: boot_info.start().as_u64(),
        rdx: KEXEC_ENTRY_MAGIC,
    };
    Ok(KexecPlan {
        trampoline,
        boot_info,
        stack,
        page_tables,
        map_end: identity_map_end(ram_end),
        boot_info_value: info,
        registers,
        copies,
    })
}

fn fill_boot_info(
    image: &KexecImage,
    handoff: &Handoff<'_>,
    [trampoline, boot_info, stack, page_tables]: [PhysRange; 4],
) -> Result<Box<BootInfo>, PrepareError> {
    let mut info = Box::new(BootInfo::new());
    let handover = handoff.handover.unwrap_or(PhysRange::EMPTY);
    info.handover_addr = handover.start().as_u64();
    info.handover_len_bytes = handover.len_bytes();
    let initrd = handoff.initrd.unwrap_or(PhysRange::EMPTY);
    info.initrd_addr = initrd.start().as_u64();
    info.initrd_len_bytes = initrd.len_bytes();
    info.tsc_hz = handoff.tsc_hz;
    info.entry_addr = image.entry().as_u64();

    // The map holds at most MAX_MEMORY_REGIONS regions, the array's length.
    for (slot, entry) in info.memory_map.iter_mut().zip(image.memory_map().entries()) {
        *slot = BootMemoryRegion {
            base: entry.addr,
            len_bytes: entry.len_bytes,
            kind: entry.type_number,
            reserved: 0,
        };
        info.memory_region_count += 1;
    }
    // At most MAX_SCRATCH_RANGES, the array's length.
    for (slot, range) in info.scratch.iter_mut().zip(image.scratch()) {
        *slot = BootRange {
            base: range.start().as_u64(),
            len_bytes: range.len_bytes(),
        };
        info.scratch_count += 1;
    }
    let kernel = image.destinations().map(|dest| {
        (
            InUseKind::KernelImage,
            dest.page_footprint().unwrap_or(dest),
        )
    });
    let structures = [
        (InUseKind::PageTables, page_tables),
        (InUseKind::Stack, stack),
        (InUseKind::BootInfo, boot_info),
        (InUseKind::Trampoline, trampoline),
    ];
    let initrd = handoff.initrd.map(|range| (InUseKind::Initrd, range));
    for (kind, range) in kernel.chain(structures).chain(initrd) {
        if !info.push_in_use(kind, range) {
            return Err(PrepareError::TooManyInUseRanges);
        }
    }
    // Checked against the array's length by the caller.
    if let Some(slot) = info.cmdline.get_mut(..handoff.cmdline.len()) {
        slot.copy_from_slice(handoff.cmdline);
        info.cmdline_len_bytes = handoff.cmdline.len() as u32;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{ElfBuilder, ram, scratch};
    use qemu_platform::frame::bitmap_words_for;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    #[test]
    fn places_everything_in_scratch_away_from_destinations() {
        let image = KexecImage::load(&ElfBuilder::valid().bytes(), &scratch(), &ram()).unwrap();
        let map = ram();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut frames = FrameAllocator::new(&map, &mut storage).unwrap();
        // The running kernel occupies the bottom of scratch, like the loader at 1 MiB.
        frames.reserve(range(0, 0x100_0000));
        let free_before = frames.free_page_count();
        let handoff = Handoff {
            handover: Some(range(0x600_0000, 0x600_1000)),
            initrd: Some(range(0x7e0_0000, 0x7e2_0000)),
            cmdline: b"scenario=empty",
            tsc_hz: 1_000_000_000,
        };
        let plan = plan(&image, &handoff, &mut frames).unwrap();
        let structures = [
            plan.trampoline,
            plan.boot_info,
            plan.stack,
            plan.page_tables,
        ];
        for structure in structures {
            assert!(
                scratch()[0].contains_range(structure),
                "{structure} in scratch"
            );
            for dest in image.destinations() {
                assert!(
                    !dest.page_footprint().unwrap().overlaps(structure),
                    "{structure} vs {dest}"
                );
            }
        }
        assert_eq!(
            frames.free_page_count(),
            free_before - 1 - 2 - STACK_PAGES - 3
        );
        assert_eq!(plan.registers.rip, 0x100_0010);
        assert_eq!(plan.registers.rdi, 0x600_0000);
        assert_eq!(plan.registers.rsi, plan.boot_info.start().as_u64());
        assert_eq!(plan.registers.rsp % 16, 0);
        assert_eq!(plan.registers.rdx, KEXEC_ENTRY_MAGIC);
        assert_eq!(plan.copies.len(), 2);
        assert_eq!(plan.copies[1].zero_len_bytes, 0x2800);

        let info = &plan.boot_info_value;
        info.validate().unwrap();
        assert_eq!(info.cmdline(), b"scenario=empty");
        let kinds: Vec<u32> = info.in_use().map(|(kind, _)| kind).collect();
        assert_eq!(kinds, [1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(info.initrd(), handoff.initrd);
    }

    #[test]
    fn refuses_unsafe_hand_offs_and_frees_on_failure() {
        let map = ram();
        let mut storage = vec![0u64; bitmap_words_for(&map)];
        let mut frames = FrameAllocator::new(&map, &mut storage).unwrap();
        let free_before = frames.free_page_count();
        let mut image = KexecImage::load(&ElfBuilder::valid().bytes(), &scratch(), &ram()).unwrap();
        let in_scratch = Handoff {
            handover: Some(range(0x20_0000, 0x20_1000)),
            ..Handoff::default()
        };
        assert!(matches!(
            plan(&image, &in_scratch, &mut frames),
            Err(PrepareError::HandoverInScratch { .. })
        ));
        let initrd_over_kernel = Handoff {
            initrd: Some(range(0x100_0000, 0x100_2000)),
            ..Handoff::default()
        };
        assert!(matches!(
            plan(&image, &initrd_over_kernel, &mut frames),
            Err(PrepareError::OverlapsDestination { what: "initrd", .. })
        ));
        // Scratch full except the destinations: no room, and nothing leaks.
        frames.reserve(range(0, 0x100_0000));
        frames.reserve(range(0x100_4000, 0x800_0000));
        let reserved = frames.free_page_count();
        assert!(matches!(
            plan(&image, &Handoff::default(), &mut frames),
            Err(PrepareError::NoRoomInScratch {
                what: "trampoline",
                ..
            })
        ));
        assert_eq!(frames.free_page_count(), reserved);
        assert!(free_before > reserved);
        image.damage_staged_segment(0);
        assert!(matches!(
            plan(&image, &Handoff::default(), &mut frames),
            Err(PrepareError::Verify(_))
        ));
    }
}
