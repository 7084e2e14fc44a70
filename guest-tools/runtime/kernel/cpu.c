/* cpu.c - the runtime's GDT, TSS and IDT, the FPU/SSE enable, and masking the legacy PIC. */
#include "kernel.h"

struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
    /* All-zero I/O permission bitmap: every port is allowed at CPL3. kvm_pvm clears
     * RFLAGS.IOPL on every entry to CPL3, so the bitmap is what lets user code use in/out
     * there; elsewhere IOPL=3 already allows it. The last byte must be 0xff. */
    uint8_t iomap[8192 + 1];
} __attribute__((packed));

struct idt_gate {
    uint16_t offset_low, selector;
    uint8_t ist, type_attributes;
    uint16_t offset_middle;
    uint32_t offset_high, reserved;
} __attribute__((packed));

struct descriptor_pointer {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

#define GATE_INTERRUPT_DPL0 0x8e
#define GATE_INTERRUPT_DPL3 0xee
#define TSS_AVAILABLE 0x89
#define IST_CRITICAL 1 /* #DF, NMI and #MC run on their own stack */

/* Descriptors have their Accessed bit preset so that loading them never writes the GDT. */
static uint64_t gdt[9] __attribute__((aligned(16))) = {
    0,
    0x00af9b000000ffffull, /* 0x08 kernel code, 64-bit */
    0x00cf93000000ffffull, /* 0x10 kernel data */
    0x00cffb000000ffffull, /* 0x18 user code, 32-bit (SYSRET base) */
    0x00cff3000000ffffull, /* 0x20 user data */
    0x00affb000000ffffull, /* 0x28 user code, 64-bit */
    0x00cff3000000ffffull, /* 0x30 user data (64-bit SYSEXIT SS) */
    0,                     /* 0x38 TSS, low half */
    0,                     /* 0x40 TSS, high half */
};

static struct tss tss __attribute__((aligned(4096)));
static struct idt_gate idt[32] __attribute__((aligned(16)));
static uint8_t kernel_exception_stack[16384] __attribute__((aligned(16)));
static uint8_t critical_exception_stack[8192] __attribute__((aligned(16)));

void cpu_tables_load(void)
{
    tss.rsp[0] = (uint64_t)(uintptr_t)(kernel_exception_stack + sizeof(kernel_exception_stack));
    tss.ist[IST_CRITICAL - 1] = (uint64_t)(uintptr_t)(critical_exception_stack + sizeof(critical_exception_stack));
    tss.iomap_base = offsetof(struct tss, iomap);
    tss.iomap[8192] = 0xff;

    uint64_t base = (uint64_t)(uintptr_t)&tss;
    uint64_t limit = sizeof(tss) - 1;
    gdt[RT_SEL_TSS / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) | ((uint64_t)TSS_AVAILABLE << 40) |
                          (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[RT_SEL_TSS / 8 + 1] = base >> 32;

    struct descriptor_pointer gdtr = {sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt};
    load_gdt_and_segments(&gdtr);
    __asm__ volatile("ltr %w0" ::"r"(RT_SEL_TSS));

    for (unsigned vector = 0; vector < 32; vector++) {
        uint64_t handler = (uint64_t)(uintptr_t)(exception_stubs + vector * EXCEPTION_STUB_SIZE);
        /* int3 doubles as the kernel-service call (rt_abi.h); real breakpoints go on to the
         * stub. */
        if (vector == 3)
            handler = (uint64_t)(uintptr_t)service_entry;
        struct idt_gate *gate = &idt[vector];
        gate->offset_low = (uint16_t)handler;
        gate->selector = RT_SEL_KERNEL_CS;
        gate->ist = 0;
        /* #BP and #OF may be raised on purpose by user code (int3, into). */
        gate->type_attributes = (vector == 3 || vector == 4) ? GATE_INTERRUPT_DPL3 : GATE_INTERRUPT_DPL0;
        gate->offset_middle = (uint16_t)(handler >> 16);
        gate->offset_high = (uint32_t)(handler >> 32);
        gate->reserved = 0;
    }
    idt[2].ist = IST_CRITICAL;
    idt[8].ist = IST_CRITICAL;
    idt[18].ist = IST_CRITICAL;
    struct descriptor_pointer idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
}

void pic_mask_all(void)
{
    /* Nothing in this environment takes interrupts; on kvm_pvm user mode always runs with
     * interrupts enabled, so keep the legacy PIC quiet. (An interrupt vector >= 32 would hit
     * the IDT limit and be reported as a #GP with the EXT bit.) */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

#define CR0_MP 0x2ull
#define CR0_EM 0x4ull
#define CR0_TS 0x8ull
#define CR0_NE 0x20ull
#define CR4_OSFXSR 0x200ull
#define CR4_OSXMMEXCPT 0x400ull

void fpu_sse_enable(void)
{
    /* The program is compiled for x86-64, whose baseline is SSE2 (clang and gcc use xmm registers
     * for copies and floating point). On hardware KVM an SSE instruction with CR4.OSFXSR clear,
     * or with CR0.EM set, raises #UD; kvm_pvm runs it anyway, so forgetting this here would only
     * show in the real-KVM lane. Whatever the boot protocol left, set: CR0.MP (wait/fwait honour
     * TS), CR0.NE (native x87 error reporting), EM and TS clear; CR4.OSFXSR (fxsave/SSE allowed),
     * CR4.OSXMMEXCPT (SIMD exceptions as #XM). No XSAVE/AVX: XCR0 stays at its reset value. The
     * kernel itself stays general-registers-only (kvm_pvm emulates CPL0). */
    uint64_t cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 = (cr0 & ~(CR0_EM | CR0_TS)) | CR0_MP | CR0_NE;
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
}
