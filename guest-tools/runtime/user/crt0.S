/* crt0.S - where the kernel enters the user program: CPL3, RDI = &rt_boot_info,
 * RSP = top of the user stack (16-byte aligned). */
#include "rt_abi.h"

        .section .text.ustart, "ax"
        .globl _ustart
        .type _ustart, @function
_ustart:
        xor %ebp, %ebp
        fninit
        ldmxcsr default_mxcsr(%rip)
        call rt_start
        ud2

        .section .rodata
        .balign 4
default_mxcsr:
        .long 0x1f80

        .section .note.GNU-stack, "", @progbits
