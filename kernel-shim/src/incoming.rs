//! What a kernel entered by kexec derives from the loader's `BootInfo` before it allocates.

use loader::handoff::BootInfo;
use loader::handoff::MAX_IN_USE_RANGES;
use qemu_platform::addr::PhysRange;
use qemu_platform::tsc::cycles_to_micros;

/// The hand-off's timestamps: the blackout is the time from the loader's point of no return
/// until the new kernel is ready; `copy` is the trampoline's part, `intake` the new kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blackout {
    /// TSC frequency (0 = unknown).
    pub tsc_hz: u64,
    /// TSC at the loader's point of no return.
    pub point_of_no_return: u64,
    /// TSC when the trampoline finished copying.
    pub copy_done: u64,
    /// TSC at the first instruction of the new kernel's entry path.
    pub entry: u64,
}

impl Blackout {
    /// The timestamps of `info` and the entry path's TSC.
    pub fn new(info: &BootInfo, entry_tsc: u64) -> Blackout {
        Blackout {
            tsc_hz: info.tsc_hz,
            point_of_no_return: info.tsc_point_of_no_return,
            copy_done: info.tsc_copy_done,
            entry: entry_tsc,
        }
    }

    /// Cycles the trampoline spent (point of no return → copy done).
    pub fn copy_cycles(&self) -> u64 {
        self.copy_done.saturating_sub(self.point_of_no_return)
    }

    /// Cycles from the copy's end to the new kernel's first instruction.
    pub fn jump_cycles(&self) -> u64 {
        self.entry.saturating_sub(self.copy_done)
    }

    /// Cycles from the new kernel's entry to `now`.
    pub fn intake_cycles(&self, now: u64) -> u64 {
        now.saturating_sub(self.entry)
    }

    /// `cycles` in microseconds (0 if the frequency is unknown).
    pub fn micros(&self, cycles: u64) -> u64 {
        cycles_to_micros(cycles, self.tsc_hz)
    }
}

/// The ranges the early allocator must avoid: every in-use range of `info` (whatever its kind,
/// known or not), the handover image and the initrd.
pub fn early_avoid(info: &BootInfo) -> heapless::Vec<PhysRange, { MAX_IN_USE_RANGES + 2 }> {
    let mut avoid = heapless::Vec::new();
    for range in info
        .in_use()
        .map(|(_, range)| range)
        .chain(info.handover())
        .chain(info.initrd())
    {
        // The capacity is the in-use array's plus two: cannot overflow.
        let _ = avoid.push(range);
    }
    avoid
}

/// Whether `used` lies inside one of `scratch` (an empty range always does).
pub fn inside_scratch(used: PhysRange, scratch: &[PhysRange]) -> bool {
    used.is_empty() || scratch.iter().any(|range| range.contains_range(used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loader::handoff::InUseKind;
    use qemu_platform::addr::PhysAddr;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    #[test]
    fn blackout_splits_into_copy_jump_and_intake() {
        let mut info = BootInfo::new();
        info.tsc_hz = 1_000_000_000;
        info.tsc_point_of_no_return = 1_000;
        info.tsc_copy_done = 51_000;
        let blackout = Blackout::new(&info, 52_000);
        assert_eq!(blackout.copy_cycles(), 50_000);
        assert_eq!(blackout.micros(blackout.copy_cycles()), 50);
        assert_eq!(blackout.jump_cycles(), 1_000);
        assert_eq!(blackout.intake_cycles(2_052_000), 2_000_000);
        // A TSC that went backwards gives zero, not a wrap.
        assert_eq!(Blackout::new(&info, 0).jump_cycles(), 0);
    }

    #[test]
    fn early_allocation_avoids_in_use_handover_and_initrd() {
        let mut info = BootInfo::new();
        assert!(info.push_in_use(InUseKind::KernelImage, range(0x100_0000, 0x102_0000)));
        info.handover_addr = 0x500_0000;
        info.handover_len_bytes = 0x1000;
        info.initrd_addr = 0x7e0_0000;
        info.initrd_len_bytes = 0x2_0000;
        assert_eq!(
            early_avoid(&info).as_slice(),
            &[
                range(0x100_0000, 0x102_0000),
                range(0x500_0000, 0x500_1000),
                range(0x7e0_0000, 0x7e2_0000)
            ]
        );
        let scratch = [range(0x10_0000, 0x400_0000)];
        assert!(inside_scratch(range(0x200_0000, 0x200_4000), &scratch));
        assert!(!inside_scratch(range(0x3ff_f000, 0x400_1000), &scratch));
        assert!(inside_scratch(PhysRange::EMPTY, &scratch));
    }
}
