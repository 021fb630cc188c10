//! The receiving side's record of preserved memory and of who has taken it back.
//!
//! After intake has reserved every preserved range, the next kernel builds an
//! [`IncomingPages`] from the validated map, in storage it provides (sized by
//! [`IncomingPages::storage_for`] from the validator's counts; the crate allocates nothing).
//! Handlers then *claim* the blocks their records name: a claim of memory that was never
//! preserved, with another order, or already claimed, is refused with a typed error, so a
//! record cannot hand one page to two owners. Lookups are binary searches over the runs.

use core::fmt;

use crate::addr::{PAGE_SHIFT, PageFrame, PhysAddr};
use crate::image::MemoryMap;
use crate::memmap::FrameRun;

/// One preserved run and where its claim bits start. Storage for [`IncomingPages`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IncomingRun {
    first_frame: u64,
    block_count: u64,
    /// Index of the run's first block in the claim bitmap.
    first_bit: u64,
    order: u8,
}

impl IncomingRun {
    fn end_frame(&self) -> u64 {
        self.first_frame
            .wrapping_add(self.block_count << (self.order & 63))
    }

    /// The run.
    pub fn run(&self) -> FrameRun {
        FrameRun::new(self.first_frame, self.block_count, self.order)
    }
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// The storage given to [`IncomingPages::new`] is smaller than [`IncomingPages::storage_for`].
    StorageTooSmall,
    /// Nothing was preserved at this address.
    NotPreserved {
        /// The address.
        addr: PhysAddr,
    },
    /// The address was preserved with another block order, or is not a block start.
    OrderMismatch {
        /// The address.
        addr: PhysAddr,
        /// The order asked for.
        order: u8,
        /// The order it was preserved with.
        preserved_order: u8,
    },
    /// The claimed blocks run past the preserved run they start in.
    PastRun {
        /// The address.
        addr: PhysAddr,
        /// Blocks asked for.
        block_count: u64,
    },
    /// A block is already claimed.
    AlreadyClaimed {
        /// The first claimed block in the request.
        addr: PhysAddr,
    },
    /// A block to release is not claimed.
    NotClaimed {
        /// The first unclaimed block.
        addr: PhysAddr,
    },
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClaimError::StorageTooSmall => write!(f, "incoming page storage too small"),
            ClaimError::NotPreserved { addr } => write!(f, "{addr} was not preserved"),
            ClaimError::OrderMismatch {
                addr,
                order,
                preserved_order,
            } => write!(
                f,
                "{addr} asked as order {order} but preserved as order {preserved_order} (or not a block start)"
            ),
            ClaimError::PastRun { addr, block_count } => {
                write!(
                    f,
                    "{block_count} blocks at {addr} run past the preserved run"
                )
            }
            ClaimError::AlreadyClaimed { addr } => write!(f, "{addr} is already claimed"),
            ClaimError::NotClaimed { addr } => write!(f, "{addr} is not claimed"),
        }
    }
}

/// Preserved memory on the receiving side, and which of it has been claimed.
pub struct IncomingPages<'s> {
    runs: &'s mut [IncomingRun],
    claimed: &'s mut [u64],
    claimed_blocks: u64,
    total_blocks: u64,
}

/// How much storage an [`IncomingPages`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncomingStorageSize {
    /// Entries of [`IncomingRun`].
    pub runs: usize,
    /// Words of claim bitmap.
    pub claim_words: usize,
}

fn frame_addr(frame: u64) -> PhysAddr {
    PageFrame::new(frame)
        .addr()
        .unwrap_or(PhysAddr::new(u64::MAX))
}

impl<'s> IncomingPages<'s> {
    /// The storage a map needs: one [`IncomingRun`] per run, one bit per block.
    pub fn storage_for(map: &MemoryMap<'_>) -> IncomingStorageSize {
        let counts = map.counts();
        IncomingStorageSize {
            runs: usize::try_from(counts.run_count).unwrap_or(usize::MAX),
            claim_words: usize::try_from(counts.block_count.div_ceil(64)).unwrap_or(usize::MAX),
        }
    }

    /// Records every run of `map` in the given storage, all unclaimed.
    pub fn new(
        map: &MemoryMap<'_>,
        runs: &'s mut [IncomingRun],
        claimed: &'s mut [u64],
    ) -> Result<IncomingPages<'s>, ClaimError> {
        let needed = Self::storage_for(map);
        let (Some(runs), Some(claimed)) = (
            runs.get_mut(..needed.runs),
            claimed.get_mut(..needed.claim_words),
        ) else {
            return Err(ClaimError::StorageTooSmall);
        };
        claimed.fill(0);
        // Merged runs: a claim may span blocks the map stored in separate items.
        let mut index = 0usize;
        let mut next_bit = 0u64;
        map.walk_merged(|run| {
            if let Some(slot) = runs.get_mut(index) {
                *slot = IncomingRun {
                    first_frame: run.first_frame,
                    block_count: run.block_count,
                    first_bit: next_bit,
                    order: run.order,
                };
            }
            index = index.wrapping_add(1);
            next_bit = next_bit.wrapping_add(run.block_count);
        });
        let runs = runs.get_mut(..index).ok_or(ClaimError::StorageTooSmall)?;
        Ok(IncomingPages {
            runs,
            claimed,
            claimed_blocks: 0,
            total_blocks: next_bit,
        })
    }

    /// Blocks preserved in total.
    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Blocks claimed so far.
    pub fn claimed_blocks(&self) -> u64 {
        self.claimed_blocks
    }

    /// The run containing `frame`, if any.
    fn run_at(&self, frame: u64) -> Option<&IncomingRun> {
        let index = self.runs.partition_point(|r| r.end_frame() <= frame);
        self.runs.get(index).filter(|r| r.first_frame <= frame)
    }

    /// Whether the page containing `addr` was preserved.
    pub fn is_preserved(&self, addr: PhysAddr) -> bool {
        self.run_at(addr.as_u64() >> PAGE_SHIFT).is_some()
    }

    /// Whether the block containing `addr` is claimed.
    pub fn is_claimed(&self, addr: PhysAddr) -> bool {
        let frame = addr.as_u64() >> PAGE_SHIFT;
        self.run_at(frame).is_some_and(|run| {
            let bit = run
                .first_bit
                .wrapping_add((frame.wrapping_sub(run.first_frame)) >> run.order);
            self.test(bit)
        })
    }

    /// Locates `block_count` blocks of `order` at `addr` inside one run: (first bit, count).
    fn locate(&self, addr: PhysAddr, block_count: u64, order: u8) -> Result<u64, ClaimError> {
        let frame = addr.as_u64() >> PAGE_SHIFT;
        let run = self
            .run_at(frame)
            .ok_or(ClaimError::NotPreserved { addr })?;
        let offset = frame.wrapping_sub(run.first_frame);
        let aligned =
            addr.is_page_aligned() && offset & ((1u64 << (run.order & 63)).wrapping_sub(1)) == 0;
        if run.order != order || !aligned {
            return Err(ClaimError::OrderMismatch {
                addr,
                order,
                preserved_order: run.order,
            });
        }
        let first_block = offset >> order;
        let fits = first_block
            .checked_add(block_count)
            .is_some_and(|end| end <= run.block_count && block_count > 0);
        if !fits {
            return Err(ClaimError::PastRun { addr, block_count });
        }
        Ok(run.first_bit.wrapping_add(first_block))
    }

    /// Takes ownership of `block_count` blocks of `2^order` pages at `addr`. All or nothing.
    pub fn claim(&mut self, addr: PhysAddr, block_count: u64, order: u8) -> Result<(), ClaimError> {
        let bit = self.locate(addr, block_count, order)?;
        if let Some(taken) = self.first_with(bit, block_count, true) {
            let frame =
                (addr.as_u64() >> PAGE_SHIFT).wrapping_add(taken.wrapping_sub(bit) << order);
            return Err(ClaimError::AlreadyClaimed {
                addr: frame_addr(frame),
            });
        }
        self.set(bit, block_count, true);
        self.claimed_blocks = self.claimed_blocks.wrapping_add(block_count);
        Ok(())
    }

    /// Gives back blocks claimed by [`IncomingPages::claim`] (to undo a failed restore).
    pub fn unclaim(
        &mut self,
        addr: PhysAddr,
        block_count: u64,
        order: u8,
    ) -> Result<(), ClaimError> {
        let bit = self.locate(addr, block_count, order)?;
        if let Some(free) = self.first_with(bit, block_count, false) {
            let frame = (addr.as_u64() >> PAGE_SHIFT).wrapping_add(free.wrapping_sub(bit) << order);
            return Err(ClaimError::NotClaimed {
                addr: frame_addr(frame),
            });
        }
        self.set(bit, block_count, false);
        self.claimed_blocks = self.claimed_blocks.wrapping_sub(block_count);
        Ok(())
    }

    /// Calls `visit` for every maximal stretch of unclaimed blocks, in address order.
    pub fn for_each_unclaimed(&self, mut visit: impl FnMut(FrameRun)) {
        for run in self.runs.iter() {
            let mut block = 0u64;
            while block < run.block_count {
                let bit = run.first_bit.wrapping_add(block);
                let claimed = self.test(bit);
                let mut end = block.wrapping_add(1);
                while end < run.block_count && self.test(run.first_bit.wrapping_add(end)) == claimed
                {
                    end = end.wrapping_add(1);
                }
                if !claimed {
                    visit(FrameRun::new(
                        run.first_frame.wrapping_add(block << run.order),
                        end.wrapping_sub(block),
                        run.order,
                    ));
                }
                block = end;
            }
        }
    }

    fn test(&self, bit: u64) -> bool {
        self.claimed
            .get((bit / 64) as usize)
            .is_some_and(|w| w & (1u64 << (bit % 64)) != 0)
    }

    /// The first bit in `[bit, bit + count)` equal to `value`.
    fn first_with(&self, bit: u64, count: u64, value: bool) -> Option<u64> {
        let end = bit.wrapping_add(count);
        let mut position = bit;
        while position < end {
            let word = self
                .claimed
                .get((position / 64) as usize)
                .copied()
                .unwrap_or(0);
            let word = if value { word } else { !word };
            let low = (position % 64) as u32;
            let span = (end.wrapping_sub(position)).min(64u64.wrapping_sub(u64::from(low)));
            let mask = if span >= 64 {
                u64::MAX
            } else {
                ((1u64 << span).wrapping_sub(1)) << low
            };
            let hits = word & mask;
            if hits != 0 {
                return Some((position & !63).wrapping_add(u64::from(hits.trailing_zeros())));
            }
            position = position.wrapping_add(span);
        }
        None
    }

    fn set(&mut self, bit: u64, count: u64, value: bool) {
        let end = bit.wrapping_add(count);
        let mut position = bit;
        while position < end {
            let low = (position % 64) as u32;
            let span = (end.wrapping_sub(position)).min(64u64.wrapping_sub(u64::from(low)));
            let mask = if span >= 64 {
                u64::MAX
            } else {
                ((1u64 << span).wrapping_sub(1)) << low
            };
            if let Some(word) = self.claimed.get_mut((position / 64) as usize) {
                if value {
                    *word |= mask;
                } else {
                    *word &= !mask;
                }
            }
            position = position.wrapping_add(span);
        }
    }
}

/// Owned storage for [`IncomingPages`], sized for a map.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct IncomingStorage {
    /// Run entries.
    pub runs: alloc::vec::Vec<IncomingRun>,
    /// Claim bitmap.
    pub claimed: alloc::vec::Vec<u64>,
}

#[cfg(feature = "alloc")]
impl IncomingStorage {
    /// Storage sized for `map`.
    pub fn for_map(map: &MemoryMap<'_>) -> IncomingStorage {
        let size = IncomingPages::storage_for(map);
        IncomingStorage {
            runs: alloc::vec![IncomingRun::default(); size.runs],
            claimed: alloc::vec![0; size.claim_words],
        }
    }

    /// An [`IncomingPages`] over this storage.
    pub fn pages<'s>(&'s mut self, map: &MemoryMap<'_>) -> Result<IncomingPages<'s>, ClaimError> {
        IncomingPages::new(map, &mut self.runs, &mut self.claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysRange;
    use crate::image::Handover;
    use crate::image::build::{ImageParts, build_image};

    const MIB: u64 = 1 << 20;

    /// A map of: 16 order-0 pages at 8 MiB, two order-2 blocks at 9 MiB, one order-9 block at
    /// 10 MiB.
    fn handover_image() -> crate::image::build::HandoverImage {
        let ram = [PhysRange::new(PhysAddr::new(MIB), 31 * MIB).unwrap()];
        let runs = [
            FrameRun::new(0x800, 16, 0),
            FrameRun::new(0x900, 2, 2),
            FrameRun::new(0xa00, 1, 9),
        ];
        let parts = ImageParts {
            generation: 1,
            ram: &ram,
            scratch: &[],
            runs: &runs,
            handlers: &[],
            sessions: &[],
            files: &[],
            records: &[],
        };
        build_image(&parts, |_| Some(PhysAddr::new(16 * MIB))).unwrap()
    }

    fn at(frame: u64) -> PhysAddr {
        PhysAddr::new(frame << PAGE_SHIFT)
    }

    #[test]
    fn claims_check_preservation_order_and_ownership() {
        let image = handover_image();
        let handover = Handover::parse(image.as_bytes()).unwrap();
        let map = handover.memory_map();
        let mut storage = IncomingStorage::for_map(&map);
        let mut pages = storage.pages(&map).unwrap();
        assert_eq!(pages.total_blocks(), 16 + 2 + 1);

        assert_eq!(
            pages.claim(at(0x7ff), 1, 0),
            Err(ClaimError::NotPreserved { addr: at(0x7ff) })
        );
        assert_eq!(
            pages.claim(at(0x900), 1, 0),
            Err(ClaimError::OrderMismatch {
                addr: at(0x900),
                order: 0,
                preserved_order: 2
            })
        );
        // Inside an order-2 block but not at its start.
        assert_eq!(
            pages.claim(at(0x901), 1, 2),
            Err(ClaimError::OrderMismatch {
                addr: at(0x901),
                order: 2,
                preserved_order: 2
            })
        );
        assert_eq!(
            pages.claim(at(0x80e), 3, 0),
            Err(ClaimError::PastRun {
                addr: at(0x80e),
                block_count: 3
            })
        );
        pages.claim(at(0x804), 4, 0).unwrap();
        assert!(pages.is_claimed(at(0x805)) && !pages.is_claimed(at(0x808)));
        assert_eq!(
            pages.claim(at(0x802), 4, 0),
            Err(ClaimError::AlreadyClaimed { addr: at(0x804) })
        );
        assert_eq!(pages.claimed_blocks(), 4);
        pages.claim(at(0x904), 1, 2).unwrap();
        pages.claim(at(0xa00), 1, 9).unwrap();
        assert_eq!(
            pages.unclaim(at(0x808), 1, 0),
            Err(ClaimError::NotClaimed { addr: at(0x808) })
        );
        pages.unclaim(at(0x806), 2, 0).unwrap();
        let mut left = alloc::vec::Vec::new();
        pages.for_each_unclaimed(|run| left.push(run));
        assert_eq!(
            left,
            [
                FrameRun::new(0x800, 4, 0),
                FrameRun::new(0x806, 10, 0),
                FrameRun::new(0x900, 1, 2)
            ]
        );
    }

    #[test]
    fn storage_must_fit_the_counts() {
        let image = handover_image();
        let handover = Handover::parse(image.as_bytes()).unwrap();
        let map = handover.memory_map();
        let size = IncomingPages::storage_for(&map);
        let mut runs = alloc::vec![IncomingRun::default(); size.runs - 1];
        let mut claimed = alloc::vec![0u64; size.claim_words];
        assert_eq!(
            IncomingPages::new(&map, &mut runs, &mut claimed).err(),
            Some(ClaimError::StorageTooSmall)
        );
    }
}
