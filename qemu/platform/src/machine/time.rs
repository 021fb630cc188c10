//! Measuring the TSC frequency against the PIT, to turn timestamps into microseconds.
//!
//! The loader measures once and hands the figure to the next kernel in `BootInfo`, so a kexec
//! chain calibrates once per cold boot.

use x86_64::instructions::port::Port;

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// How long the calibration waits.
const CALIBRATION_MICROS: u64 = 5_000;

const PIT_CHANNEL2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PC_SPEAKER_CONTROL: u16 = 0x61;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
const PIT_CHANNEL2_ONESHOT: u8 = 0xb0;
const SPEAKER_GATE2: u8 = 0x01;
const SPEAKER_DATA: u8 = 0x02;
const GATE2_OUTPUT: u8 = 0x20;

/// The TSC frequency in Hz, measured over 5 ms of PIT channel 2, or `None` if the PIT never
/// counted down (no PIT on this machine).
pub fn calibrate_tsc_hz() -> Option<u64> {
    let mut speaker = Port::<u8>::new(PC_SPEAKER_CONTROL);
    let mut command = Port::<u8>::new(PIT_COMMAND);
    let mut channel2 = Port::<u8>::new(PIT_CHANNEL2_DATA);
    let latch = PIT_HZ * CALIBRATION_MICROS / 1_000_000;

    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT's channel 2, its command register and the
    // speaker control on the PC platform. We gate channel 2 with the speaker output off, program
    // a one-shot count and poll its output; this touches no memory and no other device, and the
    // speaker control byte is restored afterwards.
    let (start, end, saved) = unsafe {
        let saved = speaker.read();
        speaker.write((saved & !SPEAKER_DATA) | SPEAKER_GATE2);
        command.write(PIT_CHANNEL2_ONESHOT);
        channel2.write((latch & 0xff) as u8);
        channel2.write((latch >> 8) as u8);
        let start = super::cpu::rdtsc();
        let mut counted_down = false;
        for _ in 0..50_000_000u32 {
            if speaker.read() & GATE2_OUTPUT != 0 {
                counted_down = true;
                break;
            }
        }
        let end = super::cpu::rdtsc();
        (start, if counted_down { Some(end) } else { None }, saved)
    };
    // SAFETY: as above: restores the speaker control byte read before.
    unsafe { speaker.write(saved) };
    let cycles = end?.checked_sub(start)?;
    cycles
        .checked_mul(1_000_000)
        .map(|scaled| scaled / CALIBRATION_MICROS)
}
