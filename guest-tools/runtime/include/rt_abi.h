/*
 * rt_abi.h - the contract between the runtime's kernel (CPL0) and the user program (CPL3).
 *
 * The kernel fills one `struct rt_boot_info` before it enters the user program; the user program
 * sees it read-only. Included by C and by GNU as (only the #defines are visible to assembly).
 */
#ifndef SNAPVMM_RT_ABI_H
#define SNAPVMM_RT_ABI_H

/* Exit codes written to the debug-exit port 0xf4 (snapvmm exits with min(code, 63)). */
#define RT_EXIT_OK 0
#define RT_EXIT_USER_MAX 28          /* programs should keep their own codes in 0..=28 */
#define RT_EXIT_ABORT 29             /* rt_abort() in the user runtime */
#define RT_EXIT_BOOT_ERROR 30        /* the kernel could not set the machine up */
#define RT_EXIT_KERNEL_FAULT 31      /* CPU exception at CPL0, or an unexpected interrupt */
#define RT_EXIT_USER_EXCEPTION 32    /* + vector (0..31): CPU exception in the user program */

/* Segment selectors of the runtime's GDT. The layout also fits SYSRET (STAR[63:48] = 0x18)
 * and 64-bit SYSEXIT (SYSENTER_CS = 0x08). */
#define RT_SEL_KERNEL_CS 0x08
#define RT_SEL_KERNEL_DS 0x10
#define RT_SEL_USER_CS32 0x1b
#define RT_SEL_USER_DS 0x23
#define RT_SEL_USER_CS 0x2b
#define RT_SEL_USER_DS_SYSEXIT 0x33
#define RT_SEL_TSS 0x38

/* Physical (= virtual) layout fixed by the linker script. */
#define RT_KERNEL_BASE 0x100000
#define RT_USER_BASE 0x200000
#define RT_USER_STACK_SIZE 0x200000   /* build.rs reads this for the linker script */

/* Boot protocols the kernel was entered through. */
#define RT_BOOT_LINUX64 1            /* 64-bit ELF entry, RSI = Linux boot_params (snapvmm) */
#define RT_BOOT_PVH 2                /* PVH entry, EBX = hvm_start_info (QEMU -kernel, snapvmm) */

#define RT_BOOT_INFO_MAGIC 0x49425452u /* "RTBI" */
#define RT_BOOT_INFO_VERSION 2

#define RT_MAX_PCI_FUNCTIONS 32
#define RT_MAX_USER_REGIONS 8
#define RT_CMDLINE_MAX 256

/* rt_pci_bar.flags */
#define RT_BAR_PRESENT 0x1           /* the BAR is implemented (size != 0) */
#define RT_BAR_IO 0x2                /* I/O space (else memory) */
#define RT_BAR_MEM64 0x4             /* 64-bit memory BAR (occupies this slot and the next) */
#define RT_BAR_PREFETCHABLE 0x8
#define RT_BAR_MAPPED 0x10           /* memory BAR mapped for the user program at addr (identity) */

/* rt_boot_info.warnings */
#define RT_WARN_PCI_TRUNCATED 0x1    /* more PCI functions than RT_MAX_PCI_FUNCTIONS */
#define RT_WARN_RAM_UNMAPPED 0x2     /* some RAM could not be mapped (page-table pool exhausted) */
#define RT_WARN_BAR_UNMAPPED 0x4     /* some memory BAR could not be mapped */
#define RT_WARN_REGIONS_TRUNCATED 0x8

/* Kernel services: `int3` from CPL3 with RAX = RT_SYS_MAGIC + RT_SYS_*, RDI and RSI =
 * arguments; the result comes back in RAX, every other register (and RFLAGS) is preserved.
 * On kvm_pvm `int3` through its DPL3 gate is the one way from CPL3 to CPL0 short of a fault:
 * `int $n` raises #UD and `syscall` stays at CPL3. An int3 with any other RAX is a breakpoint
 * (exit 35). The CPL0 side is a few instructions of assembly (entry.S), since kvm_pvm emulates
 * each one (~0.6 us). */
#define RT_SYS_MAGIC 0x5359534300000000 /* "SYSC" in the high half */
#define RT_SYS_NOP 0       /* returns 0 */
#define RT_SYS_SET_PTE 1   /* RDI = va in the window's first 2 MiB, RSI = new 4 KiB PTE: old PTE */
#define RT_SYS_SET_PDE 2   /* RDI = va in the window, RSI = new PD entry, then CR3 reload: old PDE */
#define RT_SYS_INVLPG 3    /* RDI = va in the window: invlpg, returns 0 */
#define RT_SYS_FUZZ_REPORTING 4 /* from now on a user exception is reported to the snapshot
                                 * device (EXCEPTION) while a snapshot exists: returns 0 */
#define RT_SYS_TRIPLE_FAULT 5   /* loads an empty IDT and raises #UD at CPL0: never returns */
#define RT_SYS_READ_CR 6        /* RDI = 0 or 4: returns CR0 or CR4 (tests of the CPU set-up) */
#define RT_SYS_COUNT 7
#define RT_SYS_ERROR (-1)  /* (all ones in RAX) va outside the window, or no window */

/* The page-table test window: virtual addresses whose translation a program may change through
 * RT_SYS_SET_PTE / RT_SYS_SET_PDE, so that it can dirty page-table pages at CPL0 (and in tables
 * of its own) between a snapshot and a restore. The kernel gives the window one PD (1 GiB) whose
 * first entry points at one kernel PT (2 MiB of 4 KiB pages, all entries not present at boot);
 * rt_boot_info.test_window_pd/pt hold their physical addresses. Nothing else maps it. */
#define RT_TEST_WINDOW_BASE 0x400000000000 /* 64 TiB, PML4 slot 128 */
#define RT_TEST_WINDOW_PT_SPAN 0x200000    /* what the kernel PT covers */
#define RT_TEST_WINDOW_SPAN 0x40000000     /* what the PD covers */

/* Page-table entry bits, for the entries programs pass to RT_SYS_SET_PTE/PDE. Set ACCESSED and
 * DIRTY yourself: then the CPU's page walk never writes the table. */
#define RT_PTE_PRESENT 0x1
#define RT_PTE_WRITE 0x2
#define RT_PTE_USER 0x4
#define RT_PTE_ACCESSED 0x20
#define RT_PTE_DIRTY 0x40
#define RT_PTE_LARGE 0x80
#define RT_PTE_ADDRESS_MASK 0x000ffffffffff000

#ifndef __ASSEMBLER__
#include <stdint.h>

struct rt_pci_bar {
    uint64_t addr;   /* bus address (I/O port for I/O BARs); 0 = unassigned */
    uint64_t size;
    uint32_t flags;  /* RT_BAR_* */
    uint32_t reserved;
};

struct rt_pci_function {
    uint8_t bus, slot, function, header_type;
    uint16_t vendor_id, device_id;
    uint8_t class_code, subclass, prog_if, revision;
    uint8_t irq_line, irq_pin;
    uint16_t reserved;
    struct rt_pci_bar bars[6];
};

struct rt_mem_region {
    uint64_t start, end; /* [start, end) */
};

struct rt_boot_info {
    uint32_t magic;          /* RT_BOOT_INFO_MAGIC */
    uint32_t version;        /* RT_BOOT_INFO_VERSION */
    uint32_t boot_protocol;  /* RT_BOOT_* */
    uint32_t warnings;       /* RT_WARN_* */
    uint64_t ram_bytes;      /* usable RAM in the firmware memory map */
    uint64_t ram_top;        /* end of the highest usable RAM range */
    /* RAM mapped read-write for the user program, beyond its image and stack;
     * user_regions[0] starts right after the stack (the natural heap). */
    uint32_t user_region_count;
    uint32_t pci_count;
    /* Bytes COM1 takes after its line status says "transmitter empty": 16 with the FIFO the
     * kernel enabled, else 1. Lets printing poll the LSR once per burst, not once per byte. */
    uint32_t serial_tx_burst;
    uint32_t reserved;
    /* Physical addresses of the test window's PD and PT (0 if the kernel could not make them). */
    uint64_t test_window_pd, test_window_pt;
    struct rt_mem_region user_regions[RT_MAX_USER_REGIONS];
    struct rt_pci_function pci[RT_MAX_PCI_FUNCTIONS];
    char cmdline[RT_CMDLINE_MAX];
};
#endif

#endif
