//! Timestamp-counter arithmetic.

/// `cycles` of a `tsc_hz` clock in microseconds, rounded down (0 if the frequency is unknown).
pub const fn cycles_to_micros(cycles: u64, tsc_hz: u64) -> u64 {
    if tsc_hz == 0 {
        return 0;
    }
    let micros = (cycles as u128 * 1_000_000) / tsc_hz as u128;
    if micros > u64::MAX as u128 {
        u64::MAX
    } else {
        micros as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_without_overflow() {
        assert_eq!(cycles_to_micros(2_450, 2_450_000_000), 1);
        assert_eq!(cycles_to_micros(u64::MAX, 1), u64::MAX);
        assert_eq!(cycles_to_micros(123, 0), 0);
    }
}
