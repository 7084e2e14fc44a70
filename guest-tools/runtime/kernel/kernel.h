/*
 * kernel.h - internal interfaces of the runtime's kernel.
 *
 * Everything here runs at CPL0, which kvm_pvm executes in KVM's instruction emulator
 * (~0.5 us per instruction): keep loops short, and compile with -mgeneral-regs-only.
 */
#ifndef SNAPVMM_RT_KERNEL_H
#define SNAPVMM_RT_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt_abi.h"

#define NORETURN __attribute__((noreturn))

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

/* ---- console.c: COM1 output and the debug-exit port */
/* 115200 8N1 with FIFOs; returns how many bytes may follow one "transmitter empty". */
uint32_t serial_init(void);
void kputc(char c);
void kputs(const char *s);
void kput_hex(uint64_t v, int digits);
void kput_dec(uint64_t v);
NORETURN void kexit(uint32_t code);

/* ---- boot_info.c: the memory map and command line from the boot protocol */
#define KERNEL_MAX_RAM_RANGES 32
struct ram_range {
    uint64_t start, end;
};
struct machine_memory {
    uint32_t count;
    struct ram_range ranges[KERNEL_MAX_RAM_RANGES]; /* usable RAM, sorted, merged */
};
/* Returns false if the boot structure is unusable. */
bool parse_boot_info(uint32_t protocol, uint64_t info, struct machine_memory *mem,
                     struct rt_boot_info *out);

/* ---- pci.c */
void pci_scan(struct rt_boot_info *out);

/* ---- paging.c */
#define PTE_PRESENT 0x1ull
#define PTE_WRITE 0x2ull
#define PTE_USER 0x4ull
#define PTE_PWT 0x8ull
#define PTE_PCD 0x10ull
#define PTE_ACCESSED 0x20ull
#define PTE_DIRTY 0x40ull
#define PTE_LARGE 0x80ull
/* Maps [start, end) (rounded out to 4 KiB) identity with the leaf flags given, using 2 MiB pages
 * where alignment allows. The range must not overlap anything mapped before (callers check).
 * Returns false if the page-table pool ran out. */
bool map_range(uint64_t start, uint64_t end, uint64_t leaf_flags);
uint64_t page_tables_root(void);
/* Creates the page-table test window (rt_abi.h): a PD and a PT with no leaf entries, reachable
 * by the RT_SYS_SET_PTE/PDE services. Call before the rest of the mapping so that it never
 * lacks tables. Returns false if the pool ran out. */
bool map_test_window(void);
extern uint64_t *test_window_pd_table, *test_window_pt_table;

/* ---- cpu.c: GDT, TSS, IDT, FPU/SSE, PIC */
void cpu_tables_load(void);
/* CR0.MP/NE set, EM/TS clear; CR4.OSFXSR/OSXMMEXCPT set: SSE works at CPL3 on any KVM. */
void fpu_sse_enable(void);
void pic_mask_all(void);

/* ---- entry.S */
NORETURN void enter_user(uint64_t rip, uint64_t rsp, uint64_t arg);
extern const uint8_t service_entry[]; /* the #BP gate: kernel services, else a breakpoint */
void load_cr3(uint64_t cr3);
void load_gdt_and_segments(const void *gdtr);
extern const uint8_t exception_stubs[];  /* 32 stubs, EXCEPTION_STUB_SIZE bytes apart */
#define EXCEPTION_STUB_SIZE 16
/* Set by the RT_SYS_FUZZ_REPORTING service (rt_fuzz_input, before its SAVE). */
extern volatile uint32_t fuzz_reporting;

/* ---- fault.c */
struct exception_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;
    uint64_t rip, cs, rflags, rsp, ss; /* pushed by the CPU */
};
NORETURN void kernel_exception(struct exception_frame *frame);

/* ---- main.c */
extern struct rt_boot_info rt_boot_info_page;

/* ---- string helpers (kernel-local; the user runtime has its own) */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);

/* Linker-script symbols */
extern char __kernel_start[], __kernel_end[];
extern char __user_start[], __user_ro_end[], __user_image_end[];
extern char __user_stack_bottom[], __user_stack_top[];
extern char _ustart[];

#endif
