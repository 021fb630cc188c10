//! The COM1 serial console (a 16550 UART at I/O port 0x3F8), behind a spin lock.
//!
//! The runner reads the guest's serial output as its protocol (`phase:` and `verdict:` lines),
//! so every line is written in one locked call.

use core::fmt::{self, Write};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// COM1's base I/O port on the PC platform.
pub const COM1_BASE: u16 = 0x3f8;

// Register offsets from the base port.
const DATA: u16 = 0; // transmit holding / divisor latch low
const INTERRUPT_ENABLE: u16 = 1; // interrupt enable / divisor latch high
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;

const LINE_CONTROL_DLAB: u8 = 0x80;
const LINE_CONTROL_8N1: u8 = 0x03;
const FIFO_ENABLE_CLEAR_14: u8 = 0xc7;
const MODEM_DTR_RTS: u8 = 0x03;
const LINE_STATUS_THR_EMPTY: u8 = 0x20;

/// A 16550 UART.
pub struct SerialPort {
    base: u16,
}

impl SerialPort {
    /// The UART at COM1.
    pub const fn com1() -> SerialPort {
        SerialPort { base: COM1_BASE }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        let mut port = Port::<u8>::new(self.base.wrapping_add(offset));
        // SAFETY: `base..base + 8` are the UART's registers on the QEMU PC machine; writing
        // them only configures or feeds the UART and has no effect on memory.
        unsafe { port.write(value) }
    }

    fn read_register(&mut self, offset: u16) -> u8 {
        let mut port = Port::<u8>::new(self.base.wrapping_add(offset));
        // SAFETY: as in `write_register`; reading the line status register has no side effect.
        unsafe { port.read() }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        self.write_register(INTERRUPT_ENABLE, 0);
        self.write_register(LINE_CONTROL, LINE_CONTROL_DLAB);
        self.write_register(DATA, 1); // divisor 1: 115200 baud
        self.write_register(INTERRUPT_ENABLE, 0);
        self.write_register(LINE_CONTROL, LINE_CONTROL_8N1);
        self.write_register(FIFO_CONTROL, FIFO_ENABLE_CLEAR_14);
        self.write_register(MODEM_CONTROL, MODEM_DTR_RTS);
    }

    /// Sends one byte, waiting for room in the transmitter.
    pub fn write_byte(&mut self, byte: u8) {
        // QEMU's UART is always ready; the bound keeps a wedged real UART from hanging us.
        for _ in 0..100_000 {
            if self.read_register(LINE_STATUS) & LINE_STATUS_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.write_register(DATA, byte);
    }
}

impl Write for SerialPort {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// The console every `print!` goes to.
pub static CONSOLE: Mutex<SerialPort> = Mutex::new(SerialPort::com1());

/// Initialises COM1. Called by the entry code before the image's main.
pub fn init() {
    CONSOLE.lock().init();
}

/// Writes formatted text to the console (the `print!` macros' back end).
pub fn _print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // Writing to the UART cannot fail.
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

/// Writes formatted text without taking the console lock: for the panic handler, which may run
/// while the lock is held by the code that panicked (single CPU, interrupts off: nothing else
/// can be writing at the same time).
pub fn _print_unlocked(args: fmt::Arguments<'_>) {
    let _ = SerialPort::com1().write_fmt(args);
}
