/*
 * snapshot-basic - one SAVE, one RESTORE, and what must hold around them.
 *
 * Before the SAVE: the device is found and checked, no snapshot exists yet, and a RESTORE without
 * one fails (STATUS bit 2) and returns. Then SAVE; the first return changes a global, a stack
 * variable, ARG and a byte of the coverage map, and restores. The second return must see the
 * global, the stack variable and ARG as they were at the SAVE, the coverage byte as written
 * (BAR4 is host memory, not part of the snapshot), RESTORES = 1 and STATUS "snapshot exists".
 *
 * Exit codes: 0 success; 1 device not usable; 2 STATUS/RESTORES wrong before the SAVE;
 * 3 RESTORE without a snapshot did not fail; 4 STATUS wrong after the SAVE; 5 RESTORE returned;
 * 6 global not rolled back; 7 stack not rolled back; 8 RESTORES wrong after the restore;
 * 9 STATUS wrong after the restore; 10 ARG not rolled back; 11 coverage map rolled back;
 * 12 more than one restore seen.
 */
#include "rt.h"

enum failure {
    DEVICE = 1,
    STATE_BEFORE_SAVE = 2,
    RESTORE_WITHOUT_SNAPSHOT = 3,
    STATUS_AFTER_SAVE = 4,
    RESTORE_RETURNED = 5,
    GLOBAL_NOT_ROLLED_BACK = 6,
    STACK_NOT_ROLLED_BACK = 7,
    RESTORES_WRONG = 8,
    STATUS_AFTER_RESTORE = 9,
    ARG_NOT_ROLLED_BACK = 10,
    COVERAGE_ROLLED_BACK = 11,
    TOO_MANY_RESTORES = 12,
};

#define GLOBAL_AT_SAVE 0x11111111u
#define GLOBAL_CHANGED 0x22222222u
#define STACK_AT_SAVE 0x3333333333333333ull
#define ARG_AT_SAVE 0x5a5a0001u
#define ARG_CHANGED 0xa5a50002u
#define COVERAGE_MARK 0x77

static volatile uint32_t global_value = GLOBAL_AT_SAVE;

static int fail(enum failure code, const char *what, uint64_t value)
{
    rt_printf("snapshot-basic: FAIL: %s (0x%lx)\n", what, (unsigned long)value);
    return code;
}

/* The stack variable lives in this frame, below main's: the snapshot must restore the stack. */
static __attribute__((noinline)) int save_and_check(volatile void *regs, volatile uint8_t *coverage)
{
    volatile uint64_t on_stack = STACK_AT_SAVE;
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, ARG_AT_SAVE);
    coverage[0] = 0;

    uint64_t restores = rt_snapshot_save();
    uint32_t status = rt_snapshot_status();

    if (restores == 0) {
        rt_printf("snapshot-basic: first return from SAVE, status 0x%x\n", status);
        if (!(status & SNAPSHOT_STATUS_SNAPSHOT_EXISTS) || (status & SNAPSHOT_STATUS_COMMAND_FAILED))
            return fail(STATUS_AFTER_SAVE, "STATUS after SAVE", status);
        global_value = GLOBAL_CHANGED;
        on_stack = ~STACK_AT_SAVE;
        snapshot_reg_write(regs, SNAPSHOT_REG_ARG, ARG_CHANGED);
        coverage[0] = COVERAGE_MARK;
        rt_printf("snapshot-basic: changed global, stack, ARG and coverage; RESTORE\n");
        status = rt_snapshot_restore();
        return fail(RESTORE_RETURNED, "RESTORE returned, STATUS", status);
    }

    uint32_t arg = snapshot_reg_read(regs, SNAPSHOT_REG_ARG);
    rt_printf("snapshot-basic: SAVE returned again: restores %lu, status 0x%x, global 0x%x, stack 0x%lx, "
              "ARG 0x%x, coverage[0] 0x%x\n",
              (unsigned long)restores, status, global_value, (unsigned long)on_stack, arg, coverage[0]);
    if (restores > 1)
        return fail(TOO_MANY_RESTORES, "restores", restores);
    if (global_value != GLOBAL_AT_SAVE)
        return fail(GLOBAL_NOT_ROLLED_BACK, "global variable not rolled back", global_value);
    if (on_stack != STACK_AT_SAVE)
        return fail(STACK_NOT_ROLLED_BACK, "stack variable not rolled back", on_stack);
    if (rt_snapshot_restores() != 1)
        return fail(RESTORES_WRONG, "RESTORES after one restore", rt_snapshot_restores());
    if (!(status & SNAPSHOT_STATUS_SNAPSHOT_EXISTS) || (status & SNAPSHOT_STATUS_COMMAND_FAILED))
        return fail(STATUS_AFTER_RESTORE, "STATUS after the restore", status);
    if (arg != ARG_AT_SAVE)
        return fail(ARG_NOT_ROLLED_BACK, "ARG (device state) not rolled back", arg);
    if (coverage[0] != COVERAGE_MARK)
        return fail(COVERAGE_ROLLED_BACK, "coverage map (BAR4) was rolled back", coverage[0]);
    rt_printf("snapshot-basic: PASS: the global and the stack rolled back and execution continued after the "
              "SAVE\n");
    return 0;
}

int main(void)
{
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK)
        return fail(DEVICE, rt_snapshot_strerror(error), (uint64_t)(int64_t)error);

    uint32_t status = rt_snapshot_status();
    uint64_t restores = rt_snapshot_restores();
    uint32_t input_length;
    const volatile uint8_t *input = rt_input(&input_length);
    size_t coverage_size;
    volatile uint8_t *coverage = rt_coverage(&coverage_size);
    rt_printf("snapshot-basic: device at %p, status 0x%x, restores %lu, input %p (%u bytes), coverage %p "
              "(%lu bytes)\n",
              rt_snapshot_registers(), status, (unsigned long)restores, (const void *)input, input_length,
              (void *)coverage, (unsigned long)coverage_size);
    if (status & SNAPSHOT_STATUS_SNAPSHOT_EXISTS)
        return fail(STATE_BEFORE_SAVE, "a snapshot exists before the first SAVE, STATUS", status);
    if (restores != 0)
        return fail(STATE_BEFORE_SAVE, "RESTORES before the first SAVE", restores);

    status = rt_snapshot_restore();
    if (!(status & SNAPSHOT_STATUS_COMMAND_FAILED))
        return fail(RESTORE_WITHOUT_SNAPSHOT, "RESTORE without a snapshot did not fail, STATUS", status);
    rt_printf("snapshot-basic: RESTORE without a snapshot failed as it should (status 0x%x)\n", status);

    return save_and_check(rt_snapshot_registers(), coverage);
}
