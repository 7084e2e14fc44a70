/*
 * pvh_entry.S - PVH entry for the `<guest>-pvh.elf` variants (QEMU -kernel, snapvmm's PVH path).
 *
 * Entered in 32-bit protected mode with paging off and EBX = hvm_start_info. Switches to long
 * mode on static identity page tables (0..4 GiB, 2 MiB pages, A/D preset), then joins the
 * 64-bit entry path.
 */
#include "rt_abi.h"

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
#define EFER_SCE 0x1
#define EFER_LME 0x100

        .section .note.pvh, "a", @note
        .balign 4
        .long 4                         /* namesz */
        .long 8                         /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .quad pvh_entry32
        .balign 4

        .section .text
        .code32
        .globl pvh_entry32
        .type pvh_entry32, @function
pvh_entry32:
        cli
        cld
        mov %ebx, %esi
        lgdt pvh_gdtr
        mov %cr4, %eax
        or $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
        mov %eax, %cr4
        mov $pvh_pml4, %eax
        mov %eax, %cr3
        mov $MSR_EFER, %ecx
        rdmsr
        or $(EFER_LME | EFER_SCE), %eax
        wrmsr
        mov %cr0, %eax
        and $~(CR0_EM | CR0_TS), %eax
        or $(CR0_PG | CR0_WP | CR0_NE | CR0_MP | CR0_PE), %eax
        mov %eax, %cr0
        ljmp $0x08, $pvh_entry64

        .code64
pvh_entry64:
        mov $0x10, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov %eax, %fs
        mov %eax, %gs
        mov %esi, %esi
        mov $RT_BOOT_PVH, %edi
        jmp kernel_entry_common

        .section .data
        .balign 8
pvh_gdt:
        .quad 0
        .quad 0x00af9b000000ffff        /* 0x08 code, 64-bit */
        .quad 0x00cf93000000ffff        /* 0x10 data */
pvh_gdt_end:
pvh_gdtr:
        .word pvh_gdt_end - pvh_gdt - 1
        .long pvh_gdt

        .balign 4096
pvh_pml4:
        .quad pvh_pdpt + 0x23           /* present, write, accessed */
        .fill 511, 8, 0
pvh_pdpt:
        .quad pvh_pd + 0x0000 + 0x23
        .quad pvh_pd + 0x1000 + 0x23
        .quad pvh_pd + 0x2000 + 0x23
        .quad pvh_pd + 0x3000 + 0x23
        .fill 508, 8, 0
pvh_pd:
        .set page, 0
        .rept 2048
        .quad (page << 21) | 0xe3       /* present, write, accessed, dirty, 2 MiB */
        .set page, page + 1
        .endr

        .section .note.GNU-stack, "", @progbits
