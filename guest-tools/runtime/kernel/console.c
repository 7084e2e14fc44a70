/* console.c - COM1 output and the debug-exit port, for the kernel's (rare) messages. */
#include "kernel.h"

#define COM1 0x3f8
#define COM1_IER (COM1 + 1)
#define COM1_FCR (COM1 + 2)
#define COM1_IIR (COM1 + 2)
#define COM1_LCR (COM1 + 3)
#define COM1_MCR (COM1 + 4)
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define IIR_FIFO_ENABLED 0xc0
#define FIFO_DEPTH 16
#define DEBUG_EXIT_PORT 0xf4

static uint32_t tx_burst = 1, tx_credit;

uint32_t serial_init(void)
{
    outb(COM1_IER, 0x00);  /* no interrupts */
    outb(COM1_LCR, 0x80);  /* divisor latch */
    outb(COM1, 0x01);      /* 115200 baud */
    outb(COM1_IER, 0x00);
    outb(COM1_LCR, 0x03);  /* 8N1 */
    outb(COM1_FCR, 0xc7);  /* enable and clear the FIFOs */
    outb(COM1_MCR, 0x0b);  /* DTR, RTS, OUT2 */
    tx_burst = (inb(COM1_IIR) & IIR_FIFO_ENABLED) == IIR_FIFO_ENABLED ? FIFO_DEPTH : 1;
    tx_credit = 0;
    return tx_burst;
}

void kputc(char c)
{
    if (tx_credit == 0) {
        while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {
        }
        tx_credit = tx_burst;
    }
    outb(COM1, (uint8_t)c);
    tx_credit--;
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
