/* agent.c - main() of the snapvmm guest agent for Linux (docs/linux-targets.md).
 *
 *   <harness program>      (no arguments; run by the guest init's run=NAME action)
 *
 * Maps the snapshot device through sysfs (device.c), sets up the input window (input.c) and the
 * crash handlers (crash.c), runs the harness's LLVMFuzzerInitialize once, locks the process's
 * pages in memory, and SAVEs. Every run starts right after that SAVE: it reads INPUT_LEN (from
 * the register mirror: no VM exit), copies the input into the window, calls
 * LLVMFuzzerTestOneInput and ends with DONE; the fuzzer then restores the whole VM (kernel
 * included) to the SAVE. Fatal signals and exit() in a run end it with CRASH.
 *
 * stdout and stderr are unbuffered (nothing pending in stdio at the SAVE is printed twice) and,
 * from the SAVE on, go to /dev/null: console output costs a VM exit per byte. Put
 * SNAPVMM_AGENT_VERBOSE=1 on the kernel command line (the kernel hands it to init's environment)
 * to keep the harness's output.
 *
 * Exit statuses (only before the SAVE): 2 no snapshot device, 3 set-up failed, 4 a fatal
 * signal or exit() before the SAVE; or what LLVMFuzzerInitialize passed to exit(). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in libFuzzer, so weak: NULL when the harness does not define it. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Sends stdout and stderr to /dev/null for the runs, unless SNAPVMM_AGENT_VERBOSE=1. */
static void quiet_runs(void)
{
    const char *verbose = getenv("SNAPVMM_AGENT_VERBOSE");
    if (verbose && strcmp(verbose, "1") == 0)
        return;
    int null = open("/dev/null", O_WRONLY);
    if (null < 0)
        return;
    fflush(NULL);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    close(null);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    const char *name = argc > 0 && argv[0] ? argv[0] : "linux-agent";
    struct agent_device *device = agent_device();
    if (!device) {
        fprintf(stderr, "linux-agent: %s: %s\n", name, agent_device_error());
        return AGENT_EXIT_NO_DEVICE;
    }
    if (agent_input_window_setup(device->input_size) != 0) {
        perror("linux-agent: the input window");
        return AGENT_EXIT_SETUP;
    }
    if (agent_crash_handlers_install() != 0) {
        perror("linux-agent: the crash handlers");
        return AGENT_EXIT_SETUP;
    }
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    /* Every page the process has is present from here on (no page faults in the runs for them);
     * failure only costs speed. */
    bool locked = mlockall(MCL_CURRENT) == 0;
    printf("linux-agent: %s: device %s, input %zu bytes, coverage %zu bytes%s (%zu guards), "
           "comparison log %s, pages %s; SAVE\n",
           name, device->sysfs_dir, device->input_size, device->coverage_size,
           agent_coverage_in_bar4() ? " in BAR4" : " NOT in BAR4", agent_coverage_guards(),
           agent_cmplog_attached() ? "in BAR1" : "none", locked ? "locked" : "not locked");
    if (!agent_coverage_in_bar4()) {
        fprintf(stderr, "linux-agent: the coverage map is not the device's (resource4 unusable)\n");
        return AGENT_EXIT_NO_DEVICE;
    }
    quiet_runs();
    /* ARG starts every run at 0; agent_running is part of the snapshot. */
    snapshot_reg_write(device->regs, SNAPSHOT_REG_ARG, 0);
    agent_running = true;
    snapshot_command(device->regs, SNAPSHOT_CMD_SAVE);
    /* Every run starts here, with the input the fuzzer put in BAR2. */
    for (;;) {
        size_t size = agent_input_len(device);
        const uint8_t *data = agent_input_for_harness(device->input, size);
        /* 0 or -1 (keep out of the corpus): neither is a verdict. */
        (void)LLVMFuzzerTestOneInput(data, size);
        snapshot_command(device->regs, SNAPSHOT_CMD_DONE);
        /* Only without a fuzzer: plain `snapvmm run` restores at DONE, so this is not reached
         * there either; a device that ignores DONE gets the next run on the same input. */
    }
}
