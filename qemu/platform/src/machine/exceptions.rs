//! CPU exceptions: an IDT for vectors 0–31 whose stubs (`exceptions.S`) end the run with a
//! fail verdict naming the exception, the faulting `%rip`, the error code and `%cr2` — instead
//! of a silent triple fault. The entry code installs it before the image's main runs.
//!
//! Nothing resumes after an exception. The one exception that is not a failure is the one a
//! self-test announced with [`expect`]: it ends the run with a pass verdict.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::protocol::{EXIT_CODE_FAIL, EXIT_CODE_PASS, VERDICT_FAIL, VERDICT_PASS};

core::arch::global_asm!(include_str!("exceptions.S"), options(att_syntax, raw));

const VECTORS: usize = 32;
/// `KERNEL_CS` of the GDT every entry path loads (`entry.S`).
const KERNEL_CS: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (interrupts stay off in the handler).
const INTERRUPT_GATE: u64 = 0x8e;
const NOTHING_EXPECTED: u8 = u8::MAX;

unsafe extern "C" {
    /// The stubs' addresses, by vector (`exceptions.S`).
    static qemu_platform_exception_stubs: [u64; VECTORS];
}

#[repr(C, align(16))]
struct Idt([[u64; 2]; VECTORS]);

static IDT: spin::Once<Idt> = spin::Once::new();
static EXPECTED_VECTOR: AtomicU8 = AtomicU8::new(NOTHING_EXPECTED);

/// A 16-byte long-mode gate descriptor for a handler at `addr`.
fn gate(addr: u64) -> [u64; 2] {
    let low = (addr & 0xffff)
        | (KERNEL_CS << 16)
        | (INTERRUPT_GATE << 40)
        | (((addr >> 16) & 0xffff) << 48);
    [low, addr >> 32]
}

/// Builds the IDT (once) and loads it.
pub fn install() {
    let idt = IDT.call_once(|| {
        // SAFETY: `qemu_platform_exception_stubs` is a read-only table of 32 addresses that
        // `exceptions.S` defines and the linker fills in; nothing writes it.
        let stubs = unsafe { &qemu_platform_exception_stubs };
        let mut gates = [[0u64; 2]; VECTORS];
        for (gate_slot, &stub) in gates.iter_mut().zip(stubs.iter()) {
            *gate_slot = gate(stub);
        }
        Idt(gates)
    });
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the table is a static that lives as long as the image, holds a valid interrupt
    // gate for each of vectors 0–31 pointing at stubs of this image, with the code selector of
    // the GDT every entry path loads; the stubs never return to the interrupted code.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

/// Drops the IDT (limit 0) before control leaves this image: after the copy into place
/// overwrites it, an exception must triple-fault rather than run whatever now lies where the
/// stubs were.
pub fn disarm() {
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: an empty IDT makes any exception a triple fault (QEMU stops under
    // `-no-reboot`); interrupts are off, so nothing else consults it.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

/// Announces that the next exception is `vector`, raised on purpose by a self-test: it ends
/// the run with a pass verdict instead of a fail.
pub fn expect(vector: u8) {
    EXPECTED_VECTOR.store(vector, Ordering::SeqCst);
}

/// The exception's mnemonic.
pub fn mnemonic(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        _ => "reserved",
    }
}

/// Called by the common stub with interrupts off, on the interrupted stack.
#[unsafe(no_mangle)]
extern "C" fn qemu_platform_exception(vector: u64, error_code: u64, rip: u64, cr2: u64) -> ! {
    let expected = u64::from(EXPECTED_VECTOR.load(Ordering::SeqCst)) == vector;
    let (verdict, code) = if expected {
        (VERDICT_PASS, EXIT_CODE_PASS)
    } else {
        (VERDICT_FAIL, EXIT_CODE_FAIL)
    };
    // Unlocked: the exception may have hit while the console lock was held.
    super::serial::_print_unlocked(format_args!(
        "{verdict} CPU exception {} (vector {vector}) at rip {rip:#x}, error code {error_code:#x}, cr2 {cr2:#x}{}\n",
        mnemonic(vector),
        if expected {
            ", as the self-test expected"
        } else {
            ""
        }
    ));
    super::exit::exit_qemu(code)
}
