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
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt_abi.h"
#include "snapshot_device.h"

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
/* The value of `key=VALUE` in the command line (the first one at the start or after a space): a
 * pointer to VALUE, which ends at the next space or the end; NULL if the key is absent. */
const char *rt_cmdline_value(const char *key);
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

/* ---- memory: page-aligned bump allocation from user_regions[0] (the heap). Not zeroed, never
 * freed; NULL when the region is exhausted. The allocator's state is a global, so a snapshot
 * restore rolls allocations back with everything else. */
void *rt_alloc_pages(size_t pages);

/* ---- the snapshot device (PCI 1234:f987; the ABI is in snapshot_device.h) */
#define RT_SNAPSHOT_OK 0
#define RT_SNAPSHOT_NOT_FOUND (-1)   /* no 1234:f987 on bus 0 */
#define RT_SNAPSHOT_UNMAPPED (-2)    /* BAR0, BAR2 or BAR4 unassigned or not mapped by the kernel */
#define RT_SNAPSHOT_BAD_MAGIC (-3)
#define RT_SNAPSHOT_BAD_VERSION (-4) /* ABI version other than SNAPSHOT_ABI_VERSION */
/* Finds the device through the kernel's PCI scan, checks MAGIC and ABI_VERSION, and remembers
 * where BAR0/2/4 are mapped. Returns RT_SNAPSHOT_OK or one of the errors above. Every other
 * rt_snapshot_ and rt_ call below needs a successful open (they abort otherwise). */
int rt_snapshot_open(void);
const char *rt_snapshot_strerror(int error);
/* BAR0, for snapshot_reg_read/snapshot_reg_write/snapshot_command. */
volatile void *rt_snapshot_registers(void);
/* SAVE. Returns twice, like setjmp: 0 right after the snapshot is taken, and after each RESTORE
 * the number of restores since the SAVE (1, 2, ...), with all RAM and registers as at the SAVE.
 * Costs one register read (a VM exit) after the SAVE: RESTORES_HI is read only when RESTORES_LO
 * is 0, so the result is exact below 2^32 restores and 0 exactly on the first return;
 * rt_snapshot_restores() reads the full 64-bit counter. */
uint64_t rt_snapshot_save(void);
/* RESTORE. Does not return on success (execution continues in rt_snapshot_save); when it
 * returns (no snapshot, or the VMM failed) the result is the STATUS register. */
uint32_t rt_snapshot_restore(void);
uint32_t rt_snapshot_status(void);
uint64_t rt_snapshot_restores(void);
/* The input in BAR2 (host memory, not part of the snapshot) and its length (INPUT_LEN, capped to
 * the BAR size). */
const volatile uint8_t *rt_input(uint32_t *length);
/* The coverage map in BAR4 (host memory, not part of the snapshot) and its size in bytes. */
volatile uint8_t *rt_coverage(size_t *size);
/* CRASH with ARG = code: a harness records the input and restores; `snapvmm run` stops the VM.
 * Returns (with STATUS) only if the VMM did neither. */
uint32_t rt_crash(uint32_t code);
/* DONE (ARG is left as it is): a harness collects the coverage, loads the next input and
 * restores; `snapvmm run` restores. Returns (with STATUS) only if that failed. */
uint32_t rt_done(void);
/* Whether rt_snapshot_open() has succeeded. */
bool rt_snapshot_is_open(void);

/* ---- fuzz targets (runtime/README.md, "Fuzz targets"). A target is
 *     int main(void) { for (;;) { size_t n; const uint8_t *d = rt_fuzz_input(&n);
 *                                 parse(d, n); rt_fuzz_done(0); } }
 * or, without a loop of its own, `int main(void) { rt_fuzz_run(test_one_input); }`.
 * Build it as a fuzz target (fuzz-targets/, clang with coverage) so that its edges reach BAR4. */
/* The input of this run (BAR2) and its length (INPUT_LEN, capped to BAR2's size). The first call
 * opens the device (aborting with a message if it cannot), turns on exception reporting and
 * SAVEs: that is the snapshot point, every run starts inside this call. Costs one VM exit per
 * run (the INPUT_LEN read). */
const uint8_t *rt_fuzz_input(size_t *length);
/* Whether rt_fuzz_input has taken the snapshot (true in every run). */
bool rt_fuzz_running(void);
/* The target found a bug: FAULT_PC = the caller's return address, ARG = code, CRASH. A harness
 * records the input and restores; plain `snapvmm run` stops with status 71. Never returns (if
 * the VMM ignored the CRASH: message and exit RT_EXIT_ABORT). */
RT_NORETURN void rt_fuzz_crash(uint32_t code);
/* The run ended normally: ARG = code (written only when non-zero), DONE. A harness collects the
 * coverage and restores with the next input; plain `snapvmm run` restores. Never returns. */
RT_NORETURN void rt_fuzz_done(uint32_t code);
/* libFuzzer style: for ever, test_one_input(rt_fuzz_input) then rt_fuzz_done(its result). */
RT_NORETURN void rt_fuzz_run(int (*test_one_input)(const uint8_t *data, size_t size));
/* The map the coverage callbacks write (BAR4, or a 4 KiB fallback without the device), its size,
 * and how many guards the instrumented code has. */
volatile uint8_t *rt_coverage_map(size_t *size, size_t *guards);
/* Points the trace-cmp callbacks at the snapshot device's comparison log (BAR1), if there is one;
 * called with the coverage map's set-up, before main. */
void rt_cmplog_attach(void);

/* ---- kernel services (int3 with RAX = RT_SYS_MAGIC + number, see rt_abi.h) */
static inline uint64_t rt_syscall(uint64_t number, uint64_t arg0, uint64_t arg1)
{
    uint64_t result;
    __asm__ volatile("int3" : "=a"(result) : "a"(RT_SYS_MAGIC + number), "D"(arg0), "S"(arg1) : "memory");
    return result;
}
/* Sets the kernel's 4 KiB PTE for `va` (in [RT_TEST_WINDOW_BASE, + RT_TEST_WINDOW_PT_SPAN)) and
 * invalidates it. Returns the old entry, or (uint64_t)RT_SYS_ERROR if va is outside. */
static inline uint64_t rt_sys_set_pte(uint64_t va, uint64_t pte)
{
    return rt_syscall(RT_SYS_SET_PTE, va, pte);
}
/* Sets the window's PD entry for `va` (in [RT_TEST_WINDOW_BASE, + RT_TEST_WINDOW_SPAN)) and
 * reloads CR3. The entry is not checked: it may point at a page table the program built in its
 * own RAM (which the program can then edit directly, followed by rt_sys_invlpg). Returns the old
 * entry, or (uint64_t)RT_SYS_ERROR. */
static inline uint64_t rt_sys_set_pde(uint64_t va, uint64_t pde)
{
    return rt_syscall(RT_SYS_SET_PDE, va, pde);
}
/* invlpg `va` (inside the window). Returns 0, or (uint64_t)RT_SYS_ERROR. */
static inline uint64_t rt_sys_invlpg(uint64_t va)
{
    return rt_syscall(RT_SYS_INVLPG, va, 0);
}
/* Tell the kernel to report this program's CPU exceptions to the snapshot device once a snapshot
 * exists (rt_fuzz_input does this). */
static inline void rt_sys_fuzz_reporting(void)
{
    rt_syscall(RT_SYS_FUZZ_REPORTING, 0, 0);
}
/* Triple-faults the VM on purpose (an empty IDT, then #UD at CPL0), for tests of what a VMM or
 * a harness does with a guest that dies that way. Never returns. */
static inline RT_NORETURN void rt_sys_triple_fault(void)
{
    rt_syscall(RT_SYS_TRIPLE_FAULT, 0, 0);
    __builtin_unreachable();
}
/* CR0 (`which` = 0) or CR4 (4) as the kernel left them; (uint64_t)RT_SYS_ERROR otherwise. */
static inline uint64_t rt_sys_read_cr(uint64_t which)
{
    return rt_syscall(RT_SYS_READ_CR, which, 0);
}
/* A leaf or table entry for the window: present, writable, user, accessed, dirty. */
static inline uint64_t rt_pte_for(uint64_t physical)
{
    return (physical & RT_PTE_ADDRESS_MASK) | RT_PTE_PRESENT | RT_PTE_WRITE | RT_PTE_USER | RT_PTE_ACCESSED |
           RT_PTE_DIRTY;
}

/* ---- memory and strings (gcc may also call these on its own) */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

#endif
