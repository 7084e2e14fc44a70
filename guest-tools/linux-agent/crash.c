/* crash.c - how a run's failures reach the fuzzer: fatal signals (SIGSEGV, SIGABRT from abort()
 * and assert(), SIGILL from __builtin_trap(), SIGBUS, SIGFPE, SIGTRAP, SIGSYS) are caught on an
 * alternate stack (a stack overflow is a SIGSEGV too) and reported as CRASH with the code
 * AGENT_CRASH_SIGNAL_BASE + the signal number and FAULT_PC = the interrupted instruction; exit()
 * during a run is CRASH AGENT_CRASH_EXIT. Before the SAVE the same events stop the agent with a
 * message: there is no run to blame. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include "agent.h"

volatile bool agent_running;

static const int fatal_signals[] = {SIGSEGV, SIGABRT, SIGILL, SIGBUS, SIGFPE, SIGTRAP, SIGSYS};
/* Big enough for the handler however deep the harness's stack overflowed. */
static uint8_t alternate_stack[64 * 1024] __attribute__((aligned(16)));

__attribute__((noreturn)) void agent_crash(uint32_t code, uint64_t pc)
{
    struct agent_device *device = agent_device();
    if (device) {
        snapshot_reg_write(device->regs, SNAPSHOT_REG_FAULT_PC_LO, (uint32_t)pc);
        snapshot_reg_write(device->regs, SNAPSHOT_REG_FAULT_PC_HI, (uint32_t)(pc >> 32));
        snapshot_reg_write(device->regs, SNAPSHOT_REG_ARG, code);
        snapshot_command(device->regs, SNAPSHOT_CMD_CRASH);
    }
    /* Only without a fuzzer: plain `snapvmm run` stops the VM at a CRASH. */
    static const char message[] = "linux-agent: CRASH was not taken by the VMM\n";
    (void)!write(STDERR_FILENO, message, sizeof(message) - 1);
    _exit(AGENT_EXIT_INIT_CRASH);
}

static void on_fatal_signal(int signal, siginfo_t *info, void *context)
{
    (void)info;
    uint64_t pc = (uint64_t)((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP];
    if (agent_running)
        agent_crash(AGENT_CRASH_SIGNAL_BASE + (uint32_t)signal, pc);
    /* Before the SAVE: the harness's initialisation failed. Async-signal-safe output only. */
    char message[128];
    int length = snprintf(message, sizeof(message),
                          "linux-agent: signal %d at pc 0x%llx before the SAVE\n", signal,
                          (unsigned long long)pc);
    if (length > 0)
        (void)!write(STDERR_FILENO, message, (size_t)length);
    _exit(AGENT_EXIT_INIT_CRASH);
}

static void on_exit_during_run(void)
{
    if (agent_running)
        agent_crash(AGENT_CRASH_EXIT, (uint64_t)(uintptr_t)__builtin_return_address(0));
}

int agent_crash_handlers_install(void)
{
    stack_t stack = {.ss_sp = alternate_stack, .ss_size = sizeof(alternate_stack)};
    if (sigaltstack(&stack, NULL) != 0)
        return -1;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_fatal_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigfillset(&action.sa_mask);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        if (sigaction(fatal_signals[i], &action, NULL) != 0)
            return -1;
    return atexit(on_exit_during_run) == 0 ? 0 : -1;
}
