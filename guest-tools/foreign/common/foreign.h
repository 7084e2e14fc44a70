/*
 * foreign.h - what the guests in foreign/ share: port I/O, a polled COM1, the debug-exit port,
 * the PVH start info (command line, memory map), a PCI configuration scan (mechanism #1) for the
 * snapshot device, and their own page tables. Everything here runs at CPL3 with IOPL=3.
 *
 * The snapshot device's ABI is written out below from its specification (PCI 1234:f987, BAR0
 * registers, BAR2 input, BAR4 coverage map), not taken from snapvmm's headers.
 */
#ifndef FOREIGN_H
#define FOREIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NORETURN __attribute__((noreturn))

/* ---- the snapshot device ABI (version 1, plus snapvmm's DONE and FAULT_PC extensions) */
#define SNAP_VENDOR 0x1234u
#define SNAP_DEVICE 0xf987u
#define SNAP_REG_COMMAND 0x00u
#define SNAP_REG_MAGIC 0x00u
#define SNAP_REG_STATUS 0x04u
#define SNAP_REG_RESTORES_LO 0x08u
#define SNAP_REG_INPUT_LEN 0x10u
#define SNAP_REG_ARG 0x14u
#define SNAP_REG_ABI_VERSION 0x18u
#define SNAP_REG_COVERAGE_SIZE 0x20u
#define SNAP_REG_FAULT_PC_LO 0x24u
#define SNAP_REG_FAULT_PC_HI 0x28u
#define SNAP_CMD_SAVE 0x101u
#define SNAP_CMD_RESTORE 0x102u
#define SNAP_CMD_CRASH 0x103u
#define SNAP_CMD_DONE 0x104u
#define SNAP_MAGIC 0x534e4150u

/* ---- port I/O */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* ---- COM1, polled */
void serial_init(void);
void serial_puts(const char *s);
void serial_put_dec(uint64_t v);
void serial_put_hex(uint64_t v);
/* Writes `code` to the debug-exit port 0xf4, then spins (no device there: nothing else ends a
 * CPL3 program; `hlt` would fault, i.e. triple-fault here). */
NORETURN void debug_exit(uint32_t code);

/* ---- PVH start info (hvm_start_info, version >= 1) */
struct hvm_start_info {
    uint32_t magic; /* 0x336ec578 */
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
};
/* The command line ("" if none or the start info is not PVH's). */
const char *pvh_cmdline(const struct hvm_start_info *info);
/* Whether [start, end) is usable RAM in the PVH memory map. */
bool pvh_ram_covers(const struct hvm_start_info *info, uint64_t start, uint64_t end);
/* `key=NUMBER` (decimal or 0x hex) in the command line; false if absent or malformed. */
bool cmdline_number(const char *cmdline, const char *key, uint64_t *value);
/* `key=WORD` compared with `word`. */
bool cmdline_is(const char *cmdline, const char *key, const char *word);

/* ---- the snapshot device through PCI configuration mechanism #1 (0xCF8/0xCFC) */
struct snapshot_device {
    volatile uint32_t *registers; /* BAR0 */
    const volatile uint8_t *input; /* BAR2 */
    uint64_t input_size;
    volatile uint8_t *coverage; /* BAR4 */
    uint64_t coverage_size;
};
#define SNAPSHOT_FOUND 0
#define SNAPSHOT_ABSENT 1   /* no 1234:f987 on bus 0 (QEMU's microvm has no PCI at all) */
#define SNAPSHOT_UNUSABLE 2 /* BARs unassigned, above 4 GiB (not mapped here), or bad MAGIC */
int snapshot_find(struct snapshot_device *device);
static inline uint32_t snap_read(const struct snapshot_device *d, uint32_t offset)
{
    return d->registers[offset / 4];
}
static inline void snap_write(const struct snapshot_device *d, uint32_t offset, uint32_t value)
{
    d->registers[offset / 4] = value;
}
/* A command: the memory clobber keeps every store before it (they must be in the snapshot). */
static inline void snap_command(const struct snapshot_device *d, uint32_t command)
{
    __asm__ volatile("movl %1, %0" : "=m"(d->registers[SNAP_REG_COMMAND / 4]) : "r"(command) : "memory");
}

/* ---- the page tables entry.S built (identity 0..4 GiB, 2 MiB pages, user, A/D clear) */
extern uint64_t foreign_pml4[512], foreign_pdpt[512], foreign_pd[4 * 512];
#define PTE_ACCESSED 0x20ull
#define PTE_DIRTY 0x40ull
/* Sets Accessed and Dirty in every entry (PML4, PDPT, the PDs), from CPL3: the tables are
 * user-writable. */
void page_tables_preset_accessed_dirty(void);
/* The PD entry that maps physical address `pa` (< 4 GiB). */
static inline volatile uint64_t *pd_entry_for(uint64_t pa)
{
    return &foreign_pd[pa >> 21];
}

/* ---- small string helpers (gcc may call memset/memcpy on its own) */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
size_t strlen(const char *s);

/* Each program defines this: called at CPL3 with the PVH start info; must not return. */
NORETURN void foreign_main(const struct hvm_start_info *info);

#endif
