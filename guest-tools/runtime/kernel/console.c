/* console.c - COM1 output and the debug-exit port, for the kernel's (rare) messages. */
#include "kernel.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define DEBUG_EXIT_PORT 0xf4

void kputc(char c)
{
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {
    }
    outb(COM1, (uint8_t)c);
}

void kputs(const char *s)
{
    while (*s)
        kputc(*s++);
}

void kput_hex(uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    kputs("0x");
    for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4)
        kputc(hex[(v >> shift) & 0xf]);
}

void kput_dec(uint64_t v)
{
    char buf[21];
    int i = sizeof(buf) - 1;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    kputs(&buf[i]);
}

NORETURN void kexit(uint32_t code)
{
    outl(DEBUG_EXIT_PORT, code);
    /* No debug-exit device: stop here for good (interrupts are off). */
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* gcc may emit calls to these for struct copies and zeroing. */
void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}
