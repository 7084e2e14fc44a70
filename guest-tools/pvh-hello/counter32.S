/*
 * counter32.S - a 32-bit protected-mode guest (CPL0, paging off) that counts on COM1, for the
 * QEMU migration tests: a stream saved at any moment resumes with the exact next number.
 *
 * An ELF32 image with a Multiboot v1 header and a Xen PVH note, like pvh-hello: QEMU boots it
 * through Multiboot (pc, q35) or PVH (microvm), snapvmm through PVH. It loads its own GDT (flat
 * code 0x08, data 0x10) so that its segment state is its own whoever booted it, prints
 * `counter32: start`, then `count32 N` (N = 1, 2, ...) lines for ever, a delay loop between lines.
 * The counter lives in .data (RAM), the loop's registers are reloaded from memory every line.
 */
        .set MULTIBOOT_MAGIC, 0x1badb002
        .set MULTIBOOT_FLAGS, 0x00000003
        .set XEN_ELFNOTE_PHYS32_ENTRY, 18
        .set COM1, 0x3f8
        .set LSR_THR_EMPTY, 0x20
        .set DELAY, 3000

        .section .multiboot, "a"
        .balign 4
        .long MULTIBOOT_MAGIC
        .long MULTIBOOT_FLAGS
        .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

        .section .note.Xen, "a", @note
        .balign 4
        .long 4
        .long 4
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .long pvh_start
        .balign 4

        .section .text
        .code32
        .globl _start
_start:
pvh_start:
        cli
        lgdt gdt_descriptor
        ljmp $0x08, $reload_cs
reload_cs:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs
        mov $stack_top, %esp
        call serial_init
        mov $started, %esi
        call serial_puts
count_loop:
        mov $DELAY, %ecx
1:      dec %ecx
        jnz 1b
        incl counter
        mov $prefix, %esi
        call serial_puts
        mov counter, %eax
        call serial_put_dec
        mov $'\n', %al
        call serial_putc
        jmp count_loop

/* 115200 8N1, FIFOs on, interrupts off. */
serial_init:
        mov $COM1 + 1, %dx
        xor %al, %al
        outb %al, %dx
        mov $COM1 + 3, %dx
        mov $0x80, %al
        outb %al, %dx
        mov $COM1 + 0, %dx
        mov $1, %al
        outb %al, %dx
        mov $COM1 + 1, %dx
        xor %al, %al
        outb %al, %dx
        mov $COM1 + 3, %dx
        mov $0x03, %al
        outb %al, %dx
        mov $COM1 + 2, %dx
        mov $0xc7, %al
        outb %al, %dx
        mov $COM1 + 4, %dx
        mov $0x0b, %al
        outb %al, %dx
        ret

/* AL = byte */
serial_putc:
        mov %al, %ah
        mov $COM1 + 5, %dx
1:      inb %dx, %al
        test $LSR_THR_EMPTY, %al
        jz 1b
        mov $COM1, %dx
        mov %ah, %al
        outb %al, %dx
        ret

/* ESI = NUL-terminated string */
serial_puts:
        lodsb
        test %al, %al
        jz 2f
        call serial_putc
        jmp serial_puts
2:      ret

/* EAX = value, printed in decimal */
serial_put_dec:
        mov $digits_end, %edi
        mov $10, %ebx
1:      xor %edx, %edx
        div %ebx
        add $'0', %dl
        dec %edi
        mov %dl, (%edi)
        test %eax, %eax
        jnz 1b
        mov %edi, %esi
        jmp serial_puts

        .section .rodata
started:        .asciz "counter32: start\n"
prefix:         .asciz "count32 "
        .balign 8
gdt:
        .quad 0
        .quad 0x00cf9a000000ffff                /* 0x08: flat 32-bit code */
        .quad 0x00cf92000000ffff                /* 0x10: flat data */
gdt_end:
gdt_descriptor:
        .word gdt_end - gdt - 1
        .long gdt

        .section .data
        .balign 4
counter:        .long 0
digits:         .skip 11
digits_end:     .byte 0

        .section .bss
        .balign 16
        .skip 4096
stack_top:

        .section .note.GNU-stack, "", @progbits
