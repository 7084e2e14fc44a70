/*
 * rt.h - the API of the bare-metal guest runtime for user programs (CPL3).
 *
 * A program defines `int main(void)`; its return value is the exit code. It runs at CPL3 with
 * the I/O ports open (IOPL=3 and an all-allowing TSS I/O bitmap), so port I/O is one VM exit and
 * nothing else in here leaves user mode. See runtime/README.md.
 */
#ifndef SNAPVMM_RT_H
#define SNAPVMM_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "rt_abi.h"

#define RT_NORETURN __attribute__((noreturn))
#define RT_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- port I/O (each access is one VM exit) */
static inline void rt_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void rt_outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void rt_outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t rt_inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline uint16_t rt_inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline uint32_t rt_inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* ---- console (COM1) */
void rt_putc(char c);
void rt_print(const char *s);
/* %c %s %d %i %u %x %X %p %%, with flags '-' '0', a width, and the h/l/ll/z length modifiers. */
int rt_printf(const char *fmt, ...) RT_PRINTF(1, 2);
int rt_vprintf(const char *fmt, va_list args);
int rt_snprintf(char *buf, size_t size, const char *fmt, ...) RT_PRINTF(3, 4);

/* ---- ending the program */
/* Writes `code` to the debug-exit port 0xf4; keep it in 0..=RT_EXIT_USER_MAX. */
RT_NORETURN void rt_exit(uint32_t code);
/* Prints "rt: abort: <message>" and exits with RT_EXIT_ABORT. */
RT_NORETURN void rt_abort(const char *message);
#define RT_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            rt_abort("assertion failed: " #cond);                                                  \
    } while (0)

/* ---- machine information */
const struct rt_boot_info *rt_boot_info(void);
const char *rt_cmdline(void);
/* The privilege level the program runs at, from the CS selector's RPL. */
unsigned rt_cpl(void);

/* ---- PCI (enumerated by the kernel at boot; bus 0) */
size_t rt_pci_count(void);
const struct rt_pci_function *rt_pci_function_at(size_t index);
/* The first function with these IDs, or NULL. */
const struct rt_pci_function *rt_pci_find(uint16_t vendor_id, uint16_t device_id);
/* Where memory BAR `bar` is mapped for this program (uncached, or write-back if prefetchable),
 * or NULL if it is not a mapped memory BAR. */
volatile void *rt_pci_bar(const struct rt_pci_function *function, unsigned bar);
uint32_t rt_pci_config_read32(const struct rt_pci_function *function, unsigned offset);
void rt_pci_config_write32(const struct rt_pci_function *function, unsigned offset, uint32_t value);

/* ---- memory and strings (gcc may also call these on its own) */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

#endif
