//! The one panic handler of every image: a fail verdict naming the panic, then exit.

use crate::protocol::{EXIT_CODE_FAIL, VERDICT_FAIL};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    super::serial::_print_unlocked(format_args!("{VERDICT_FAIL} panic: {info}\n"));
    super::exit::exit_qemu(EXIT_CODE_FAIL)
}
