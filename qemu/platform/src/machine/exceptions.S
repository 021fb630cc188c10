/*
 * CPU exception stubs, vectors 0-31 (AT&T syntax). Each stub makes the stack uniform
 * (a zero where the CPU pushes no error code), pushes its vector and jumps to the common
 * path, which calls
 *     qemu_platform_exception(vector, error_code, rip, cr2)
 * on the same stack. That never returns: an exception in these images is a fail verdict
 * (or the expected one of the `fault` self-test), never something to resume from.
 */

        .pushsection .text.qemu_platform_exceptions, "ax", @progbits

        .macro EXCEPTION_STUB vector, cpu_pushes_error_code
        .balign 16
qemu_platform_exception_stub_\vector:
        .if \cpu_pushes_error_code == 0
        pushq $0
        .endif
        pushq $\vector
        jmp qemu_platform_exception_common
        .endm

        /* The CPU pushes an error code for #DF(8), #TS(10), #NP(11), #SS(12), #GP(13),
         * #PF(14), #AC(17), #CP(21), #VC(29) and #SX(30). */
        .irp v, 0, 1, 2, 3, 4, 5, 6, 7, 9, 15, 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31
        EXCEPTION_STUB \v, 0
        .endr
        .irp v, 8, 10, 11, 12, 13, 14, 17, 21, 29, 30
        EXCEPTION_STUB \v, 1
        .endr

qemu_platform_exception_common:
        cld
        mov (%rsp), %rdi                    /* vector */
        mov 8(%rsp), %rsi                   /* error code */
        mov 16(%rsp), %rdx                  /* faulting %rip, from the CPU's frame */
        mov %cr2, %rcx
        and $-16, %rsp                      /* the SysV call alignment */
        call qemu_platform_exception
1:      cli
        hlt
        jmp 1b

        .popsection

/* Stub addresses, indexed by vector, for the IDT builder. */
        .pushsection .rodata.qemu_platform_exception_stubs, "a", @progbits
        .balign 8
        .global qemu_platform_exception_stubs
qemu_platform_exception_stubs:
        .irp v, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
        .quad qemu_platform_exception_stub_\v
        .endr
        .popsection
