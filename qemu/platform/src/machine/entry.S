/*
 * Entry paths of every bare-metal image (AT&T syntax).
 *
 * 1. PVH cold boot. QEMU's -kernel finds the Xen ELF note below and enters
 *    qemu_platform_pvh_entry32 in 32-bit protected mode, paging off, no stack,
 *    %ebx = physical address of the hvm_start_info.
 * 2. Kexec. A loader following docs/ENTRY.md jumps to the ELF e_entry,
 *    qemu_platform_kexec_entry64, in 64-bit mode with paging on and
 *    %rdi = handover image, %rsi = BootInfo, %rdx = entry magic.
 *
 * Both paths switch to this image's own page tables, GDT and stack (all inside
 * the image, so nothing the previous owner of the machine built is needed once
 * we are past the first few instructions) and call
 *     qemu_platform_rust_entry(source, arg0, arg1, arg2, entry_tsc)
 * which never returns.
 *
 * The identity map is static data: 4 page directories of 512 2 MiB pages cover
 * [0, 4 GiB). Building it at assembly time means neither path needs a loop, and
 * the tables are loaded from the ELF like any other data.
 */

        .set BOOT_SOURCE_PVH, 1
        .set BOOT_SOURCE_KEXEC, 2
        .set KERNEL_CS, 0x08
        .set KERNEL_DS, 0x10
        .set CR4_PAE, 1 << 5
        .set MSR_EFER, 0xc0000080
        .set EFER_LME, 1 << 8
        .set CR0_PE_PG, (1 << 0) | (1 << 31)
        .set CR0_CD_NW, (1 << 30) | (1 << 29)
        .set PTE_PRESENT_WRITABLE, 0x3
        .set PDE_LARGE_PAGE, 0x83           /* present, writable, 2 MiB page */
        .set BOOT_STACK_BYTES, 0x40000

/* The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18). QEMU 7.2 reads the descriptor
 * with the PT_NOTE's alignment, which must be 4: the section is 4-byte aligned and the
 * linker script gives it a PT_NOTE of its own. */
        .pushsection .note.Xen, "a", @note
        .balign 4
        .long 4                             /* n_namesz: "Xen\0" */
        .long 8                             /* n_descsz */
        .long 18                            /* n_type */
        .asciz "Xen"
        .balign 4
        .quad qemu_platform_pvh_entry32
        .balign 4
        .popsection

        .pushsection .text.qemu_platform_entry, "ax", @progbits

        .code32
        .global qemu_platform_pvh_entry32
qemu_platform_pvh_entry32:
        cli
        cld
        rdtsc                               /* the earliest timestamp of this boot */
        mov %eax, %edi
        mov %edx, %ebp
        mov $qemu_platform_boot_pml4, %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $CR4_PAE, %eax
        mov %eax, %cr4
        mov $MSR_EFER, %ecx
        rdmsr
        or $EFER_LME, %eax
        wrmsr
        /* Caches on: PVH leaves CR0.CD/NW unspecified and QEMU's option ROM keeps the
         * reset value (CD = NW = 1). TCG ignores them; hardware and KVM (on AMD, NPT honours
         * the guest's CD) run every access uncached, about a hundred times slower. */
        mov %cr0, %eax
        and $~CR0_CD_NW, %eax
        or $CR0_PE_PG, %eax
        mov %eax, %cr0
        lgdt qemu_platform_boot_gdt_ptr
        ljmp $KERNEL_CS, $1f

        .code64
1:      mov $KERNEL_DS, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        xor %eax, %eax
        mov %eax, %fs
        mov %eax, %gs
        lea qemu_platform_boot_stack_top(%rip), %rsp
        mov %ebp, %r8d                      /* entry_tsc = edx:eax of the first rdtsc */
        shl $32, %r8
        mov %edi, %eax
        or %rax, %r8
        mov %ebx, %esi                      /* arg0 = hvm_start_info (zero-extended) */
        mov $BOOT_SOURCE_PVH, %edi
        xor %edx, %edx
        xor %ecx, %ecx
        xor %ebp, %ebp
        call qemu_platform_rust_entry
2:      cli
        hlt
        jmp 2b

        .global qemu_platform_kexec_entry64
qemu_platform_kexec_entry64:
        cli
        cld
        mov %rdx, %r14                      /* entry magic; rdtsc clobbers rdx */
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, %r15                      /* entry_tsc */
        mov %rdi, %r12                      /* handover image */
        mov %rsi, %r13                      /* BootInfo */
        mov %cr0, %rax                      /* caches on, whatever the loader left */
        and $~CR0_CD_NW, %rax
        mov %rax, %cr0
        lea qemu_platform_boot_pml4(%rip), %rax
        mov %rax, %cr3
        lgdt qemu_platform_boot_gdt_ptr(%rip)
        lea qemu_platform_boot_stack_top(%rip), %rsp
        pushq $KERNEL_CS
        lea 3f(%rip), %rax
        pushq %rax
        lretq
3:      mov $KERNEL_DS, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        xor %eax, %eax
        mov %eax, %fs
        mov %eax, %gs
        mov $BOOT_SOURCE_KEXEC, %edi
        mov %r12, %rsi
        mov %r13, %rdx
        mov %r14, %rcx
        mov %r15, %r8
        xor %ebp, %ebp
        call qemu_platform_rust_entry
4:      cli
        hlt
        jmp 4b

        .popsection

/* GDT: null, 64-bit code, flat data. The accessed bits are preset so the CPU never
 * writes to the table when it loads a selector. */
        .pushsection .rodata.qemu_platform_gdt, "a", @progbits
        .balign 16
qemu_platform_boot_gdt:
        .quad 0
        .quad 0x00af9b000000ffff
        .quad 0x00cf93000000ffff
qemu_platform_boot_gdt_end:
        .balign 8
        .word 0, 0, 0                       /* pad so the base below is 8-byte aligned */
qemu_platform_boot_gdt_ptr:
        .word qemu_platform_boot_gdt_end - qemu_platform_boot_gdt - 1
        .quad qemu_platform_boot_gdt
        .popsection

        .pushsection .data.qemu_platform_page_tables, "aw", @progbits
        .balign 4096
        .global qemu_platform_boot_pml4
qemu_platform_boot_pml4:
        .quad qemu_platform_boot_pdpt + PTE_PRESENT_WRITABLE
        .fill 511, 8, 0
qemu_platform_boot_pdpt:
        .quad qemu_platform_boot_pd + 0x0000 + PTE_PRESENT_WRITABLE
        .quad qemu_platform_boot_pd + 0x1000 + PTE_PRESENT_WRITABLE
        .quad qemu_platform_boot_pd + 0x2000 + PTE_PRESENT_WRITABLE
        .quad qemu_platform_boot_pd + 0x3000 + PTE_PRESENT_WRITABLE
        .fill 508, 8, 0
qemu_platform_boot_pd:
        .set pd_index, 0
        .rept 2048
        .quad (pd_index << 21) | PDE_LARGE_PAGE
        .set pd_index, pd_index + 1
        .endr
        .popsection

        .pushsection .bss.qemu_platform_boot_stack, "aw", @nobits
        .balign 16
        .global qemu_platform_boot_stack_bottom
qemu_platform_boot_stack_bottom:
        .skip BOOT_STACK_BYTES
        .global qemu_platform_boot_stack_top
qemu_platform_boot_stack_top:
        .popsection
