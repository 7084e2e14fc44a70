/*
 * fuzz-paths - one fuzz target that ends a run every way a run can end, chosen by the input's
 * first byte, deterministically; for tests of the harness.
 *
 *   0 (and 7..255)  normal end: DONE with ARG 0 (7..255: DONE with ARG = the byte)
 *   1               CRASH through the device, code 0x51 (FAULT_PC = the call site)
 *   2               #UD (ud2)                 -> EXCEPTION, vector 6
 *   3               #DE (divide by zero)      -> EXCEPTION, vector 0
 *   4               #PF (write to 0x10)       -> EXCEPTION, vector 14
 *   5               triple fault (the kernel service RT_SYS_TRIPLE_FAULT)
 *   6               hang (a loop with no exit)
 *
 * An empty input (INPUT_LEN = 0, e.g. under plain `snapvmm run`, where nothing writes BAR2) takes
 * its outcome from the command line: `outcome=N` (default 0). Prints nothing per run; before
 * the SAVE it prints one line naming the command-line outcome.
 */
#include "rt.h"

#define CRASH_CODE 0x51

enum outcome {
    OUTCOME_DONE = 0,
    OUTCOME_CRASH = 1,
    OUTCOME_UD = 2,
    OUTCOME_DE = 3,
    OUTCOME_PF = 4,
    OUTCOME_TRIPLE_FAULT = 5,
    OUTCOME_HANG = 6,
};

static unsigned default_outcome;

/* `outcome=N` from the command line, 0 if absent or not a number below 256. */
static unsigned cmdline_outcome(void)
{
    const char *digit = rt_cmdline_value("outcome");
    if (!digit || *digit < '0' || *digit > '9')
        return 0;
    unsigned value = 0;
    for (; *digit >= '0' && *digit <= '9'; digit++) {
        value = value * 10 + (unsigned)(*digit - '0');
        if (value > 255)
            return 0;
    }
    return value;
}

static volatile uint32_t divisor; /* 0: the compiler cannot see the division by zero coming */

static int run_outcome(unsigned outcome)
{
    switch (outcome) {
    case OUTCOME_DONE:
        return 0;
    case OUTCOME_CRASH:
        rt_fuzz_crash(CRASH_CODE);
    case OUTCOME_UD:
        __asm__ volatile("ud2");
        break;
    case OUTCOME_DE: {
        uint32_t quotient = 1, remainder = 0, d = divisor;
        __asm__ volatile("divl %2" : "+a"(quotient), "+d"(remainder) : "rm"(d));
        return (int)quotient;
    }
    case OUTCOME_PF:
        *(volatile uint64_t *)(uintptr_t)0x10 = 1;
        break;
    case OUTCOME_TRIPLE_FAULT:
        rt_sys_triple_fault();
    case OUTCOME_HANG:
        for (;;)
            __asm__ volatile("" ::: "memory");
    default:
        return (int)outcome;
    }
    return -1; /* not reached: each fault above ends the run */
}

static int test_one_input(const uint8_t *data, size_t size)
{
    return run_outcome(size ? data[0] : default_outcome);
}

int main(void)
{
    default_outcome = cmdline_outcome();
    rt_printf("fuzz-paths: outcome %u for an empty input\n", default_outcome);
    rt_fuzz_run(test_one_input);
}
