/*
 * agent.h - the snapvmm guest agent for Linux (docs/linux-targets.md): a static program that runs
 * a libFuzzer harness (LLVMFuzzerTestOneInput, optional LLVMFuzzerInitialize) in its own process
 * inside a Linux guest, on the snapshot device (PCI 1234:f987) mapped through sysfs.
 *
 * The agent's own code is not instrumented; only the harness is (clang
 * -fsanitize-coverage=trace-pc-guard,trace-cmp), and its callbacks are here (coverage.c,
 * cmplog.c).
 */
#ifndef SNAPVMM_LINUX_AGENT_H
#define SNAPVMM_LINUX_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "snapshot_device.h"

/* CRASH codes (the fuzzer files them as `kind:crash,code:N`, N in decimal). */
/* A fatal signal in a run: AGENT_CRASH_SIGNAL_BASE + the signal number, e.g. SIGSEGV (11) is
 * 0x200b = 8203, SIGABRT (6, abort() and failed assert()s) 0x2006 = 8198, SIGILL (4,
 * __builtin_trap()) 0x2004 = 8196, SIGBUS 0x2007, SIGFPE 0x2008, SIGTRAP 0x2005, SIGSYS 0x201f. */
#define AGENT_CRASH_SIGNAL_BASE 0x2000u
/* exit() during a run (libFuzzer: "fuzz target exited"): the bare-metal kit's code. */
#define AGENT_CRASH_EXIT 0x1006u

/* Exit statuses of the agent when it stops before its SAVE (nothing to fuzz). */
#define AGENT_EXIT_NO_DEVICE 2  /* no snapshot device, or its resources cannot be mapped */
#define AGENT_EXIT_SETUP 3      /* the input window or the signal handlers cannot be set up */
#define AGENT_EXIT_INIT_CRASH 4 /* a fatal signal or exit() before the SAVE */

/* The snapshot device as the agent mapped it (device.c). */
struct agent_device {
    char sysfs_dir[256];            /* /sys/bus/pci/devices/DDDD:BB:SS.F */
    volatile void *regs;            /* resource0: the registers (and the mirror page after them) */
    bool mirror;                    /* BAR0 + 0x1000 mirrors INPUT_LEN (read without a VM exit) */
    const volatile uint8_t *input;  /* resource2 */
    size_t input_size;
    volatile uint8_t *coverage;     /* resource4 */
    size_t coverage_size;
    volatile uint8_t *cmplog;       /* resource1, NULL on a device without it (QEMU's RFC) */
    size_t cmplog_size;
};

/* The device, mapped on first use (the coverage callbacks' constructor-time init comes first). */
struct agent_device *agent_device(void);
/* Why agent_device() returned NULL. */
const char *agent_device_error(void);
/* Bytes of input in BAR2 for this run. */
uint32_t agent_input_len(const struct agent_device *device);

/* The input window (input.c): the harness gets a read-only copy of the input that ends right
 * before an inaccessible page, as libFuzzer under ASan hands it an exactly-sized heap copy. */
int agent_input_window_setup(size_t capacity);
const uint8_t *agent_input_for_harness(const volatile uint8_t *input, size_t size);

/* Crash reporting (crash.c). */
int agent_crash_handlers_install(void);
/* Set right before the SAVE (part of the snapshot, so every run sees it set). */
extern volatile bool agent_running;
__attribute__((noreturn)) void agent_crash(uint32_t code, uint64_t pc);

/* Coverage (coverage.c), for the startup line. */
size_t agent_coverage_guards(void);
bool agent_coverage_in_bar4(void);
/* Comparison log (cmplog.c): attaches to BAR1 when the device has it. */
void agent_cmplog_attach(struct agent_device *device);
bool agent_cmplog_attached(void);

#endif
