//! CPU instructions the images need: the timestamp counter and halting.

/// The timestamp counter (`rdtsc`).
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter; it touches no memory and needs no CPU feature check on
    // x86_64 (every x86_64 CPU has a TSC, and we run at ring 0 where CR4.TSD cannot trap it).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Disables maskable interrupts.
pub fn disable_interrupts() {
    x86_64::instructions::interrupts::disable();
}
