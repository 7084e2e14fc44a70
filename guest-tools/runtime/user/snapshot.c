/* snapshot.c - the snapshot device from user mode: every register access is one aligned 32-bit
 * load or store (snapshot_device.h), i.e. one VM exit; BAR2 and BAR4 are plain memory, and so is
 * snapvmm's register mirror, where INPUT_LEN is read without an exit. */
#include "rt.h"

static volatile void *registers;
/* The register mirror page (BAR0 + 0x1000), or the registers themselves on a device without it. */
static volatile void *host_registers;
static volatile uint8_t *input, *coverage;
static uint64_t input_size, coverage_size;

int rt_snapshot_open(void)
{
    const struct rt_pci_function *device = rt_pci_find(SNAPSHOT_DEVICE_VENDOR_ID, SNAPSHOT_DEVICE_DEVICE_ID);
    if (!device)
        return RT_SNAPSHOT_NOT_FOUND;
    volatile void *regs = rt_pci_bar(device, SNAPSHOT_BAR_REGISTERS);
    volatile void *in = rt_pci_bar(device, SNAPSHOT_BAR_INPUT);
    volatile void *cov = rt_pci_bar(device, SNAPSHOT_BAR_COVERAGE);
    if (!regs || !in || !cov)
        return RT_SNAPSHOT_UNMAPPED;
    if (snapshot_reg_read(regs, SNAPSHOT_REG_MAGIC) != SNAPSHOT_MAGIC)
        return RT_SNAPSHOT_BAD_MAGIC;
    if (snapshot_reg_read(regs, SNAPSHOT_REG_ABI_VERSION) != SNAPSHOT_ABI_VERSION)
        return RT_SNAPSHOT_BAD_VERSION;
    registers = regs;
    volatile void *mirror = (volatile uint8_t *)regs + SNAPSHOT_REGISTER_MIRROR;
    host_registers = snapshot_reg_read(mirror, SNAPSHOT_REG_MAGIC) == SNAPSHOT_MAGIC ? mirror : regs;
    input = in;
    coverage = cov;
    input_size = device->bars[SNAPSHOT_BAR_INPUT].size;
    coverage_size = device->bars[SNAPSHOT_BAR_COVERAGE].size;
    return RT_SNAPSHOT_OK;
}

const char *rt_snapshot_strerror(int error)
{
    switch (error) {
    case RT_SNAPSHOT_OK:
        return "ok";
    case RT_SNAPSHOT_NOT_FOUND:
        return "no snapshot device (PCI 1234:f987) on bus 0";
    case RT_SNAPSHOT_UNMAPPED:
        return "a snapshot device BAR is unassigned or not mapped";
    case RT_SNAPSHOT_BAD_MAGIC:
        return "the snapshot device's MAGIC is wrong";
    case RT_SNAPSHOT_BAD_VERSION:
        return "the snapshot device has an unknown ABI version";
    default:
        return "unknown error";
    }
}

bool rt_snapshot_is_open(void)
{
    return registers != NULL;
}

static volatile void *opened(void)
{
    if (!registers)
        rt_abort("snapshot device used before rt_snapshot_open() succeeded");
    return registers;
}

volatile void *rt_snapshot_registers(void)
{
    return opened();
}

uint64_t rt_snapshot_save(void)
{
    volatile void *regs = opened();
    snapshot_command(regs, SNAPSHOT_CMD_SAVE);
    /* Both returns land here. */
    uint64_t restores = snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_LO);
    if (restores == 0)
        restores = (uint64_t)snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_HI) << 32;
    return restores;
}

uint32_t rt_snapshot_restore(void)
{
    volatile void *regs = opened();
    snapshot_command(regs, SNAPSHOT_CMD_RESTORE);
    return snapshot_reg_read(regs, SNAPSHOT_REG_STATUS);
}

uint32_t rt_snapshot_status(void)
{
    return snapshot_reg_read(opened(), SNAPSHOT_REG_STATUS);
}

uint64_t rt_snapshot_restores(void)
{
    return snapshot_restores(opened());
}

const volatile uint8_t *rt_input(uint32_t *length)
{
    opened();
    uint32_t bytes = snapshot_reg_read(host_registers, SNAPSHOT_REG_INPUT_LEN);
    if (length)
        *length = bytes < input_size ? bytes : (uint32_t)input_size;
    return input;
}

volatile uint8_t *rt_coverage(size_t *size)
{
    opened();
    if (size)
        *size = (size_t)coverage_size;
    return coverage;
}

uint32_t rt_crash(uint32_t code)
{
    volatile void *regs = opened();
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, code);
    snapshot_command(regs, SNAPSHOT_CMD_CRASH);
    return snapshot_reg_read(regs, SNAPSHOT_REG_STATUS);
}

uint32_t rt_done(void)
{
    volatile void *regs = opened();
    snapshot_command(regs, SNAPSHOT_CMD_DONE);
    return snapshot_reg_read(regs, SNAPSHOT_REG_STATUS);
}
