/* crash.c - how a harness's own failures reach the fuzzer: abort(), assert(), exit() in a run,
 * and the heap checks, each a CRASH with its code and the harness's pc (libfuzzer_rt.h). */
#include "rt.h"
#include "libfuzzer_rt.h"
#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn)) void libfuzzer_crash(uint32_t code, uint64_t pc, const char *message)
{
    if (!rt_fuzz_running()) {
        /* Initialisation failed: `snapvmm fuzz` reports a target that ends before its SAVE. */
        rt_print("\nlibfuzzer: ");
        rt_print(message);
        rt_print(" before the snapshot\n");
        rt_exit(RT_EXIT_ABORT);
    }
    if (libfuzzer_output_enabled())
        rt_printf("\nlibfuzzer: %s (code 0x%x, pc 0x%lx)\n", message, code, (unsigned long)pc);
    volatile void *regs = rt_snapshot_registers();
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_LO, (uint32_t)pc);
    snapshot_reg_write(regs, SNAPSHOT_REG_FAULT_PC_HI, (uint32_t)(pc >> 32));
    snapshot_reg_write(regs, SNAPSHOT_REG_ARG, code);
    snapshot_command(regs, SNAPSHOT_CMD_CRASH);
    rt_print("\nlibfuzzer: the VMM did not take the CRASH\n");
    rt_exit(RT_EXIT_ABORT);
}

__attribute__((noinline)) void abort(void)
{
    libfuzzer_crash(LIBFUZZER_CRASH_ABORT, LIBFUZZER_CALLER(), "abort()");
}

__attribute__((noinline)) void __assert_fail(const char *expression, const char *file, unsigned line,
                                             const char *function)
{
    if (libfuzzer_output_enabled())
        fprintf(stderr, "%s:%u: %s: assertion `%s' failed\n", file, line, function, expression);
    libfuzzer_crash(LIBFUZZER_CRASH_ASSERT, LIBFUZZER_CALLER(), "assertion failed");
}

/* exit() in LLVMFuzzerInitialize ends the program (the fuzzer then reports that no snapshot was
 * taken); in a run libFuzzer calls it a crash ("fuzz target exited"), and so do we. */
__attribute__((noinline)) void exit(int status)
{
    if (rt_fuzz_running())
        libfuzzer_crash(LIBFUZZER_CRASH_EXIT, LIBFUZZER_CALLER(), "exit() during a run");
    rt_exit(status < 0 || status > RT_EXIT_USER_MAX ? RT_EXIT_USER_MAX : (uint32_t)status);
}

__attribute__((noinline)) void _Exit(int status)
{
    if (rt_fuzz_running())
        libfuzzer_crash(LIBFUZZER_CRASH_EXIT, LIBFUZZER_CALLER(), "_Exit() during a run");
    rt_exit(status < 0 || status > RT_EXIT_USER_MAX ? RT_EXIT_USER_MAX : (uint32_t)status);
}

int atexit(void (*function)(void))
{
    /* A fuzz target never exits normally: there is nothing to run the handlers at. */
    (void)function;
    return 0;
}
