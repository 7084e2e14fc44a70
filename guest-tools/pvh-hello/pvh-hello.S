/*
 * pvh-hello.S - a minimal 32-bit test kernel that knows nothing about snapvmm.
 *
 * An ELF32 image with a Multiboot v1 header and a Xen PVH note. QEMU's -kernel boots it through
 * Multiboot, snapvmm through PVH; either way it initialises COM1 like a bare-metal kernel would,
 * prints a line by polling the line status register, says which protocol it came in by, writes
 * 0 to the debug-exit port 0xf4 and halts.
 */
        .set MULTIBOOT_MAGIC, 0x1badb002
        .set MULTIBOOT_FLAGS, 0x00000003       /* page-align modules, provide memory info */
        .set MULTIBOOT_BOOTLOADER_MAGIC, 0x2badb002
        .set PVH_START_MAGIC, 0x336ec578
        .set XEN_ELFNOTE_PHYS32_ENTRY, 18
        .set COM1, 0x3f8
        .set LSR_THR_EMPTY, 0x20
        .set DEBUG_EXIT, 0xf4

        .section .multiboot, "a"
        .balign 4
        .long MULTIBOOT_MAGIC
        .long MULTIBOOT_FLAGS
        .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

        .section .note.Xen, "a", @note
        .balign 4
        .long 4                                 /* namesz */
        .long 4                                 /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .long pvh_start
        .balign 4

        .section .text
        .code32

        .globl _start
_start:                                         /* Multiboot: EAX = magic, EBX = info */
        cli
        mov $stack_top, %esp
        mov $via_unknown, %edi
        cmp $MULTIBOOT_BOOTLOADER_MAGIC, %eax
        jne 1f
        mov $via_multiboot, %edi
1:      jmp main

        .globl pvh_start
pvh_start:                                      /* PVH: EBX = hvm_start_info */
        cli
        mov $stack_top, %esp
        mov $via_unknown, %edi
        cmpl $PVH_START_MAGIC, (%ebx)
        jne main
        mov $via_pvh, %edi

main:
        call serial_init
        mov $greeting, %esi
        call serial_puts
        mov %edi, %esi
        call serial_puts
        mov $DEBUG_EXIT, %dx
        xor %eax, %eax
        outl %eax, %dx
halt:
        cli
        hlt
        jmp halt

/* 115200 8N1, FIFOs on, interrupts off. */
serial_init:
        mov $COM1 + 1, %dx                      /* IER: no interrupts */
        xor %al, %al
        outb %al, %dx
        mov $COM1 + 3, %dx                      /* LCR: DLAB */
        mov $0x80, %al
        outb %al, %dx
        mov $COM1 + 0, %dx                      /* divisor 1 = 115200 baud */
        mov $1, %al
        outb %al, %dx
        mov $COM1 + 1, %dx
        xor %al, %al
        outb %al, %dx
        mov $COM1 + 3, %dx                      /* LCR: 8 bits, no parity, 1 stop */
        mov $0x03, %al
        outb %al, %dx
        mov $COM1 + 2, %dx                      /* FCR: enable and clear FIFOs */
        mov $0xc7, %al
        outb %al, %dx
        mov $COM1 + 4, %dx                      /* MCR: DTR, RTS, OUT2 */
        mov $0x0b, %al
        outb %al, %dx
        ret

/* ESI = NUL-terminated string */
serial_puts:
        lodsb
        test %al, %al
        jz 2f
        mov %al, %ah
        mov $COM1 + 5, %dx
1:      inb %dx, %al                            /* wait for THR empty */
        test $LSR_THR_EMPTY, %al
        jz 1b
        mov $COM1, %dx
        mov %ah, %al
        outb %al, %dx
        jmp serial_puts
2:      ret

        .section .rodata
greeting:       .asciz "pvh-hello: Hello, world!\n"
via_multiboot:  .asciz "pvh-hello: entered through Multiboot v1\n"
via_pvh:        .asciz "pvh-hello: entered through PVH\n"
via_unknown:    .asciz "pvh-hello: entered through an unknown boot protocol\n"

        .section .bss
        .balign 16
        .skip 4096
stack_top:

        .section .note.GNU-stack, "", @progbits
