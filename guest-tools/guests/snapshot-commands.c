/*
 * snapshot-commands - DONE and CRASH, the commands a fuzz harness answers.
 *
 * SAVE with ARG set; every return prints the input's length (rt_input) and checks that ARG
 * (device state) is the SAVE's. The first return says DONE, which without a harness means
 * RESTORE. The second return (RESTORES = 1) reports CRASH with code 0x2a. Plain `snapvmm run` stops there (a crash with no harness to record it: status 71,
 * "guest reported a crash (code 0x2a)"); a harness records the crash and restores, and the third
 * return (RESTORES = 2) exits 0.
 *
 * Exit codes: 0 the crash was restored (harness); 1 device not usable; 2 DONE returned;
 * 3 CRASH returned; 4 RESTORES wrong; 5 ARG not rolled back.
 */
#include "rt.h"

#define CRASH_CODE 0x2a
#define ARG_AT_SAVE 0x600d

int main(void)
{
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_printf("snapshot-commands: %s\n", rt_snapshot_strerror(error));
        return 1;
    }
    volatile void *regs = rt_snapshot_registers();
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, ARG_AT_SAVE);

    uint64_t restores = rt_snapshot_save();
    uint32_t length;
    const volatile uint8_t *input = rt_input(&length);
    uint32_t arg = snapshot_reg_read(regs, SNAPSHOT_REG_ARG);
    rt_printf("snapshot-commands: return %lu from SAVE: input %u bytes (first 0x%02x), ARG 0x%x\n",
              (unsigned long)restores, length, length ? input[0] : 0, arg);
    if (arg != ARG_AT_SAVE) {
        rt_printf("snapshot-commands: FAIL: ARG not rolled back\n");
        return 5;
    }
    switch (restores) {
    case 0: {
        rt_printf("snapshot-commands: DONE\n");
        uint32_t status = rt_done();
        rt_printf("snapshot-commands: FAIL: DONE returned, status 0x%x\n", status);
        return 2;
    }
    case 1: {
        rt_printf("snapshot-commands: DONE came back as a restore; CRASH 0x%x\n", CRASH_CODE);
        uint32_t status = rt_crash(CRASH_CODE);
        rt_printf("snapshot-commands: FAIL: CRASH returned, status 0x%x\n", status);
        return 3;
    }
    case 2:
        rt_printf("snapshot-commands: the crash was recorded and restored\n");
        return 0;
    default:
        rt_printf("snapshot-commands: FAIL: %lu restores\n", (unsigned long)restores);
        return 4;
    }
}
