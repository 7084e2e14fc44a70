/* fuzz.c - the fuzz-target API (rt.h: rt_fuzz_*): one SAVE at the first request for an input,
 * then per run one INPUT_LEN read (from the register mirror: no VM exit on snapvmm) and the DONE,
 * CRASH or EXCEPTION that ends it.
 * Nothing here prints during a run: serial output costs a VM exit per FIFO load. */
#include "rt.h"

/* Part of the snapshot: every restored run sees it set, so it SAVEs only once. */
static bool fuzz_snapshot_taken;

static volatile void *fuzz_registers(void)
{
    int error = RT_SNAPSHOT_OK;
    if (!rt_snapshot_is_open())
        error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_print("\nrt: fuzz: ");
        rt_print(rt_snapshot_strerror(error));
        rt_abort("a fuzz target needs the snapshot device");
    }
    return rt_snapshot_registers();
}

const uint8_t *rt_fuzz_input(size_t *length)
{
    volatile void *regs = fuzz_registers();
    if (!fuzz_snapshot_taken) {
        /* Before the SAVE, so that every run starts in this state: exceptions of the target
         * go to the device from now on (once a snapshot exists), ARG starts at 0. */
        rt_sys_fuzz_reporting();
        snapshot_reg_write(regs, SNAPSHOT_REG_ARG, 0);
        fuzz_snapshot_taken = true;
        snapshot_command(regs, SNAPSHOT_CMD_SAVE);
        /* Every run starts here: the first one right after the SAVE, the others after a
         * restore, each with the input the harness put in BAR2. */
    }
    uint32_t bytes;
    const volatile uint8_t *input = rt_input(&bytes);
    if (length)
        *length = bytes;
    /* BAR2 does not change while a run executes: plain loads are fine. */
    return (const uint8_t *)(uintptr_t)input;
}

bool rt_fuzz_running(void)
{
    return fuzz_snapshot_taken;
}

static void set_fault_pc(volatile void *regs, uint64_t pc)
{
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_LO, (uint32_t)pc);
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_HI, (uint32_t)(pc >> 32));
}

__attribute__((noinline)) RT_NORETURN void rt_fuzz_crash(uint32_t code)
{
    uint64_t caller = (uint64_t)(uintptr_t)__builtin_return_address(0);
    volatile void *regs = fuzz_registers();
    set_fault_pc(regs, caller);
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, code);
    snapshot_command(regs, SNAPSHOT_CMD_CRASH);
    rt_printf("\nrt: fuzz: CRASH (code 0x%x, pc 0x%lx) was not taken by the VMM, status 0x%x\n", code,
              (unsigned long)caller, snapshot_reg_read(regs, SNAPSHOT_REG_STATUS));
    rt_exit(RT_EXIT_ABORT);
}

RT_NORETURN void rt_fuzz_done(uint32_t code)
{
    volatile void *regs = fuzz_registers();
    /* ARG is rolled back by every restore to its value at the SAVE (0): write it only when it
     * says something, which spares the common run a VM exit. */
    if (code)
        snapshot_reg_write(regs, SNAPSHOT_REG_ARG, code);
    snapshot_command(regs, SNAPSHOT_CMD_DONE);
    rt_printf("\nrt: fuzz: DONE was not taken by the VMM, status 0x%x\n",
              snapshot_reg_read(regs, SNAPSHOT_REG_STATUS));
    rt_exit(RT_EXIT_ABORT);
}

RT_NORETURN void rt_fuzz_run(int (*test_one_input)(const uint8_t *data, size_t size))
{
    for (;;) {
        size_t size;
        const uint8_t *data = rt_fuzz_input(&size);
        rt_fuzz_done((uint32_t)test_one_input(data, size));
    }
}
