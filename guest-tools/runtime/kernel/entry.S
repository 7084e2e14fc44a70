/*
 * entry.S - the kernel's entry points, exception stubs and the switch to user mode.
 *
 * Only instructions that KVM's emulator runs at CPL0 on kvm_pvm are used here (measured, see
 * ../README.md): iretq to reach CPL3 (lretq to an outer privilege level is not emulated).
 */
#include "rt_abi.h"

        .section .text
        .code64

/* 64-bit ELF entry (snapvmm's contract, also the Linux 64-bit boot protocol):
 * long mode, CPL0, identity paging, RSI = boot_params with the e820 table. */
        .globl kernel_entry64
        .type kernel_entry64, @function
kernel_entry64:
        cli
        mov $RT_BOOT_LINUX64, %edi
        /* fall through; RSI already holds the boot structure */

/* EDI = RT_BOOT_*, RSI = physical address of the boot structure. */
        .globl kernel_entry_common
        .type kernel_entry_common, @function
kernel_entry_common:
        cld
        lea boot_stack_top(%rip), %rsp
        xor %ebp, %ebp
        call kernel_main
1:      cli
        hlt
        jmp 1b

/* enter_user(rip, rsp, arg): iretq to CPL3 with IOPL=3 and interrupts off; RDI = arg. */
        .globl enter_user
        .type enter_user, @function
enter_user:
        mov $RT_SEL_USER_DS, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %fs
        mov %eax, %gs
        pushq $RT_SEL_USER_DS           /* SS */
        push %rsi                       /* RSP */
        pushq $0x3002                   /* RFLAGS: IOPL=3, IF=0 */
        pushq $RT_SEL_USER_CS           /* CS */
        push %rdi                       /* RIP */
        mov %rdx, %rdi
        /* the program starts from a known register state */
        xor %eax, %eax
        xor %ebx, %ebx
        xor %ecx, %ecx
        xor %edx, %edx
        xor %esi, %esi
        xor %ebp, %ebp
        xor %r8d, %r8d
        xor %r9d, %r9d
        xor %r10d, %r10d
        xor %r11d, %r11d
        xor %r12d, %r12d
        xor %r13d, %r13d
        xor %r14d, %r14d
        xor %r15d, %r15d
        iretq

        .globl load_cr3
        .type load_cr3, @function
load_cr3:
        mov %rdi, %cr3
        ret

/* load_gdt_and_segments(gdtr): lgdt, reload the data segments, and CS through a far return
 * to the caller (same privilege level, which the emulator supports). */
        .globl load_gdt_and_segments
        .type load_gdt_and_segments, @function
load_gdt_and_segments:
        lgdt (%rdi)
        mov $RT_SEL_KERNEL_DS, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov %eax, %fs
        mov %eax, %gs
        pop %rax
        pushq $RT_SEL_KERNEL_CS
        push %rax
        lretq

/* The #BP gate (DPL3, on the RSP0 stack). RAX = RT_SYS_MAGIC + RT_SYS_*: a kernel service with
 * RDI/RSI as arguments and the result in RAX, every other register (and RFLAGS, through iretq)
 * preserved. Any other RAX: a breakpoint, reported like every exception. Each instruction here
 * is emulated on kvm_pvm (~0.6 us), hence assembly and no frame. */
        .globl service_entry
        .type service_entry, @function
service_entry:
        push %rcx
        movabs $-RT_SYS_MAGIC, %rcx
        add %rax, %rcx                  /* RCX = service number if RAX holds the magic */
        cmp $RT_SYS_SET_PTE, %rcx
        je set_pte
        cmp $RT_SYS_SET_PDE, %rcx
        je set_pde
        cmp $RT_SYS_INVLPG, %rcx
        je invalidate_page
        cmp $RT_SYS_FUZZ_REPORTING, %rcx
        je fuzz_reporting_on
        cmp $RT_SYS_TRIPLE_FAULT, %rcx
        je triple_fault
        cmp $RT_SYS_READ_CR, %rcx
        je read_control_register
        cmp $RT_SYS_NOP, %rcx
        jne breakpoint
        xor %eax, %eax
        pop %rcx
        iretq
breakpoint:
        pop %rcx
        jmp exception_stubs + 3 * 16    /* stub 3: stubs are 16 bytes apart */

/* RCX := offset of RDI in the window; out of range (or no window): error. */
set_pte:
        movabs $-RT_TEST_WINDOW_BASE, %rcx
        add %rdi, %rcx
        cmp $RT_TEST_WINDOW_PT_SPAN, %rcx
        jae service_error
        shr $12, %rcx
        mov test_window_pt_table(%rip), %rax
        test %rax, %rax
        jz service_error
        lea (%rax,%rcx,8), %rcx
        mov (%rcx), %rax
        mov %rsi, (%rcx)
        invlpg (%rdi)
        pop %rcx
        iretq

set_pde:
        movabs $-RT_TEST_WINDOW_BASE, %rcx
        add %rdi, %rcx
        cmp $RT_TEST_WINDOW_SPAN, %rcx
        jae service_error
        shr $21, %rcx
        mov test_window_pd_table(%rip), %rax
        test %rax, %rax
        jz service_error
        lea (%rax,%rcx,8), %rcx
        mov (%rcx), %rax
        mov %rsi, (%rcx)
        /* A PD entry covers 512 pages: a CR3 reload drops them all in one instruction. */
        mov %cr3, %rcx
        mov %rcx, %cr3
        pop %rcx
        iretq

invalidate_page:
        movabs $-RT_TEST_WINDOW_BASE, %rcx
        add %rdi, %rcx
        cmp $RT_TEST_WINDOW_SPAN, %rcx
        jae service_error
        invlpg (%rdi)
        xor %eax, %eax
        pop %rcx
        iretq

service_error:
        mov $RT_SYS_ERROR, %rax
        pop %rcx
        iretq

/* From now on kernel_exception reports user exceptions to the snapshot device (fault.c). */
fuzz_reporting_on:
        movl $1, fuzz_reporting(%rip)
        xor %eax, %eax
        pop %rcx
        iretq

/* CR0 (RDI = 0) or CR4 (RDI = 4), for programs that check the CPU set-up. */
read_control_register:
        cmp $4, %rdi
        je 1f
        test %rdi, %rdi
        jnz service_error
        mov %cr0, %rax
        pop %rcx
        iretq
1:      mov %cr4, %rax
        pop %rcx
        iretq

/* A deliberate triple fault, for tests of the harness: with an empty IDT the #UD cannot be
 * delivered (#GP), nor can that (#DF), and the CPU shuts down. */
triple_fault:
        lidt empty_idtr(%rip)
        ud2

        .section .rodata
        .balign 16
empty_idtr:
        .word 0
        .quad 0
        .section .text

/* 32 exception stubs, 16 bytes apart: push a dummy error code where the CPU pushes none, then
 * the vector. */
        .balign 16
        .globl exception_stubs
exception_stubs:
        .set vector, 0
        .rept 32
        .balign 16
        .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
        .else
        pushq $0
        .endif
        pushq $vector
        jmp exception_common
        .set vector, vector + 1
        .endr

exception_common:
        push %rax
        push %rbx
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %rbp
        push %r8
        push %r9
        push %r10
        push %r11
        push %r12
        push %r13
        push %r14
        push %r15
        cld
        mov %rsp, %rdi
        and $-16, %rsp
        call kernel_exception
1:      cli
        hlt
        jmp 1b

        .section .bss
        .balign 4
        .globl fuzz_reporting
fuzz_reporting:
        .long 0
        .balign 16
boot_stack:
        .skip 16384
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
