/*
 * entry.S - boot code shared by the guests in foreign/ (not the runtime's: these guests are
 * written as a user of snapvmm would write a test kernel, following only the PVH boot protocol
 * and the snapshot device's ABI).
 *
 * PVH entry (32-bit protected mode, paging off, EBX = hvm_start_info): mask the legacy PIC, build
 * 4-level page tables identity-mapping 0..4 GiB with 2 MiB pages, every entry user + writable and
 * with the Accessed and Dirty bits CLEAR (the CPU sets them as pages are used), 3..4 GiB (the PCI
 * memory hole) uncached; enable SSE, PAE, long mode and paging; load a GDT and an EMPTY IDT; never
 * load TR; iretq to CPL3 with RFLAGS.IOPL=3 and call foreign_main(start_info). Any exception
 * from then on triple-faults (no IDT, no TSS): that is how these guests crash.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define CR0_PE 0x1
#define CR0_MP 0x2
#define CR0_EM 0x4
#define CR0_TS 0x8
#define CR0_NE 0x20
#define CR0_WP 0x10000
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define CR4_OSFXSR 0x200
#define CR4_OSXMMEXCPT 0x400
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define PTE_PRESENT_WRITE_USER 0x7
#define PTE_LARGE 0x80
#define PTE_UNCACHED 0x18               /* PCD | PWT */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_CS 0x1b
#define USER_DS 0x23
#define TSS_SELECTOR 0x28

        .section .note.pvh, "a", @note
        .balign 4
        .long 4
        .long 8
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .quad foreign_pvh_entry
        .balign 4

        .section .text.entry, "ax"
        .code32
        .globl foreign_pvh_entry
foreign_pvh_entry:
        cli
        cld
        mov %ebx, %esi                  /* hvm_start_info, kept for foreign_main */
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1

        /* PML4[0] -> PDPT; PDPT[0..3] -> the four PDs; PD entries: 2 MiB pages. All A/D clear. */
        mov $foreign_pdpt + PTE_PRESENT_WRITE_USER, %eax
        mov %eax, foreign_pml4
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $12, %eax
        add $foreign_pd + PTE_PRESENT_WRITE_USER, %eax
        mov %eax, foreign_pdpt(,%ecx,8)
        inc %ecx
        cmp $4, %ecx
        jne 1b
        xor %ecx, %ecx
2:      mov %ecx, %eax
        shl $21, %eax
        or $(PTE_PRESENT_WRITE_USER | PTE_LARGE), %eax
        cmp $1536, %ecx                 /* from 3 GiB on: MMIO (the snapshot device's BARs) */
        jb 3f
        or $PTE_UNCACHED, %eax
3:      mov %eax, foreign_pd(,%ecx,8)    /* the high halves stay 0 (.bss): all below 4 GiB */
        inc %ecx
        cmp $2048, %ecx
        jne 2b

        mov %cr4, %eax
        or $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
        mov %eax, %cr4
        mov $foreign_pml4, %eax
        mov %eax, %cr3
        mov $MSR_EFER, %ecx
        rdmsr
        or $EFER_LME, %eax
        wrmsr
        mov %cr0, %eax
        and $~(CR0_EM | CR0_TS), %eax
        or $(CR0_PG | CR0_WP | CR0_NE | CR0_MP | CR0_PE), %eax
        mov %eax, %cr0
        lgdt gdtr
        ljmp $KERNEL_CS, $long_mode

        .code64
long_mode:
        mov $KERNEL_DS, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        lidt empty_idtr
        mov $boot_stack_top, %rsp
#ifdef FOREIGN_LOAD_TSS
        /* The control variant (`<name>-tss`): a TSS whose I/O bitmap allows every port, the way
         * the bare-metal runtime does it; the guest is otherwise the same. */
        mov $tss, %rax
        mov %ax, gdt_tss + 2
        shr $16, %rax
        mov %al, gdt_tss + 4
        mov %ah, gdt_tss + 7
        shr $16, %rax
        mov %eax, gdt_tss + 8
        movw $tss_io_bitmap - tss, tss + 102
        movb $0xff, tss_io_bitmap + 8192
        mov $TSS_SELECTOR, %eax
        ltr %ax
#endif
        xor %eax, %eax
        mov %eax, %fs
        mov %eax, %gs
        pushq $USER_DS                  /* SS */
        pushq $foreign_user_stack_top   /* RSP */
        pushq $0x3002                   /* RFLAGS: IOPL=3, IF=0 */
        pushq $USER_CS                  /* CS */
        pushq $user_entry               /* RIP */
        mov %eax, %ds                   /* null data segments at CPL3 */
        mov %eax, %es
        iretq

user_entry:
        mov %esi, %edi                  /* foreign_main(start_info) */
        xor %ebp, %ebp
        call foreign_main
        ud2                             /* foreign_main does not return: triple fault if it does */

#ifdef FOREIGN_LOAD_TSS
        .section .data
#else
        .section .rodata
#endif
        .balign 8
gdt:
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00affa000000ffff        /* 0x18 user code, 64-bit (selector 0x1b) */
        .quad 0x00cff2000000ffff        /* 0x20 user data (selector 0x23) */
#ifdef FOREIGN_LOAD_TSS
gdt_tss:                                /* 0x28: available 64-bit TSS, base filled in at boot */
        .word tss_end - tss - 1
        .word 0
        .byte 0, 0x89, 0, 0
        .quad 0
#endif
gdt_end:
gdtr:
        .word gdt_end - gdt - 1
        .quad gdt
empty_idtr:
        .word 0
        .quad 0

        .section .bss
        .balign 4096
        .globl foreign_pml4, foreign_pdpt, foreign_pd
foreign_pml4:
        .skip 4096
foreign_pdpt:
        .skip 4096
foreign_pd:
        .skip 4 * 4096
boot_stack:
        .skip 4096
boot_stack_top:
        .globl foreign_user_stack_top
foreign_user_stack:
        .skip 65536
foreign_user_stack_top:
#ifdef FOREIGN_LOAD_TSS
        .balign 16
tss:
        .skip 104
tss_io_bitmap:
        .skip 8192 + 1
tss_end:
#endif

        .section .note.GNU-stack, "", @progbits
