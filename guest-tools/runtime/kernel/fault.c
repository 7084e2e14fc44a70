/* fault.c - report a CPU exception on COM1 and stop the VM through the debug-exit port.
 *
 * User-mode exceptions exit with RT_EXIT_USER_EXCEPTION + vector; exceptions in the kernel
 * itself, and interrupts that nothing here should ever receive, with RT_EXIT_KERNEL_FAULT.
 * In a fuzz run (the program asked for RT_SYS_FUZZ_REPORTING and a snapshot exists) a user
 * exception goes to the snapshot device instead, silently: EXCEPTION with ARG = vector and
 * FAULT_PC = the faulting RIP, and the VMM (harness) restores the snapshot. */
#include "kernel.h"
#include "snapshot_device.h"

static const char *const vector_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 floating point", "#AC alignment check",
    "#MC machine check", "#XM SIMD floating point", "#VE virtualization", "#CP control protection",
    "reserved 22", "reserved 23", "reserved 24", "reserved 25", "reserved 26", "reserved 27",
    "#HV hypervisor injection", "#VC VMM communication", "#SX security", "reserved 31",
};

static volatile int handling_exception;

static void put_register(const char *name, uint64_t value)
{
    kputs(name);
    kputc(' ');
    kput_hex(value, 16);
}

static void put_page_fault_cause(uint64_t error)
{
    kputs(" (");
    kputs(error & 1 ? "protection" : "not-present");
    kputs(error & 2 ? " write" : " read");
    kputs(error & 4 ? " user" : " supervisor");
    if (error & 16)
        kputs(" instruction-fetch");
    if (error & 8)
        kputs(" reserved-bit");
    kputc(')');
}

/* BAR0 of the snapshot device as the kernel's PCI scan found and mapped it, or NULL. */
static volatile void *snapshot_registers(void)
{
    const struct rt_boot_info *bi = &rt_boot_info_page;
    for (uint32_t i = 0; i < bi->pci_count && i < RT_MAX_PCI_FUNCTIONS; i++) {
        const struct rt_pci_function *function = &bi->pci[i];
        const struct rt_pci_bar *bar = &function->bars[SNAPSHOT_BAR_REGISTERS];
        if (function->vendor_id == SNAPSHOT_DEVICE_VENDOR_ID && function->device_id == SNAPSHOT_DEVICE_DEVICE_ID &&
            (bar->flags & RT_BAR_MAPPED))
            return (volatile void *)(uintptr_t)bar->addr;
    }
    return NULL;
}

/* EXCEPTION to the snapshot device. Returns only if nothing restored the VM (no snapshot yet, or a
 * VMM that does not know the command): then the exception is reported as outside a fuzz run. */
static void report_to_snapshot_device(const struct exception_frame *f, uint32_t vector)
{
    volatile void *regs = snapshot_registers();
    if (!regs || !(snapshot_reg_read(regs, SNAPSHOT_REG_STATUS) & SNAPSHOT_STATUS_SNAPSHOT_EXISTS))
        return;
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_LO, (uint32_t)f->rip);
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_HI, (uint32_t)(f->rip >> 32));
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, vector);
    snapshot_command(regs, SNAPSHOT_CMD_EXCEPTION);
}

NORETURN void kernel_exception(struct exception_frame *f)
{
    if (handling_exception)
        kexit(RT_EXIT_KERNEL_FAULT);
    handling_exception = 1;

    uint64_t vector = f->vector & 31;
    bool from_user = (f->cs & 3) == 3;
    /* #GP with EXT and IDT set: an external interrupt beyond the 32-entry IDT. */
    bool stray_interrupt = vector == 13 && (f->error_code & 3) == 3;
    uint32_t code = (from_user && !stray_interrupt) ? RT_EXIT_USER_EXCEPTION + (uint32_t)vector
                                                    : RT_EXIT_KERNEL_FAULT;
    if (fuzz_reporting && from_user && !stray_interrupt)
        report_to_snapshot_device(f, (uint32_t)vector);

    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));

    kputs("\nrt: ");
    if (stray_interrupt) {
        kputs("unexpected interrupt, vector ");
        kput_dec(f->error_code >> 3);
        kputs(from_user ? " (in user mode)\n" : " (in kernel mode)\n");
    } else {
        kputs(from_user ? "user exception: vector " : "KERNEL exception: vector ");
        kput_dec(vector);
        kputs(" (");
        kputs(vector_names[vector]);
        kputs("), error code ");
        kput_hex(f->error_code, 4);
        if (vector == 14)
            put_page_fault_cause(f->error_code);
        kputc('\n');
    }
    kputs("rt:   ");
    put_register("rip", f->rip);
    kputs(" cs ");
    kput_hex(f->cs, 4);
    put_register(" rflags", f->rflags);
    kputs("\nrt:   ");
    put_register("rsp", f->rsp);
    kputs(" ss ");
    kput_hex(f->ss, 4);
    put_register(" cr2", cr2);
    kputs("\nrt:   ");
    put_register("rax", f->rax);
    put_register(" rbx", f->rbx);
    put_register(" rcx", f->rcx);
    kputs("\nrt:   ");
    put_register("rdx", f->rdx);
    put_register(" rsi", f->rsi);
    put_register(" rdi", f->rdi);
    kputs("\nrt:   ");
    put_register("rbp", f->rbp);
    put_register(" r8 ", f->r8);
    put_register(" r9 ", f->r9);
    kputs("\nrt:   ");
    put_register("r10", f->r10);
    put_register(" r11", f->r11);
    put_register(" r12", f->r12);
    kputs("\nrt:   ");
    put_register("r13", f->r13);
    put_register(" r14", f->r14);
    put_register(" r15", f->r15);
    kputs("\nrt: exit code ");
    kput_dec(code);
    kputc('\n');
    kexit(code);
}
