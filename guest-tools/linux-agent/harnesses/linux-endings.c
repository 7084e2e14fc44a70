/* linux-endings.c - the ways a run of a Linux harness can end under the guest agent, one per
 * input (tests/tests/real_kvm_linux_agent.rs replays each with `snapvmm repro`). Inputs of two
 * bytes '!' X choose the ending; every other input returns normally. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Keeps clang from proving the recursion or the writes pointless. */
static volatile uint8_t sink;

static size_t recurse(size_t depth)
{
    volatile uint8_t frame[256];
    frame[0] = (uint8_t)depth;
    if (depth == SIZE_MAX) /* never: the stack ends first */
        return frame[0];
    return recurse(depth + 1) + frame[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size != 2 || data[0] != '!')
        return 0;
    switch (data[1]) {
    case 'a': /* SIGABRT */
        abort();
    case 't': /* ud2: SIGILL */
        __builtin_trap();
    case 'e': /* libFuzzer: "fuzz target exited" */
        exit(3);
    case 'r': /* one byte past the input: the guard page after the input window, SIGSEGV */
        sink = data[size];
        return 0;
    case 'w': /* the input is read-only: SIGSEGV */
        *(volatile uint8_t *)(uintptr_t)data = 0;
        return 0;
    case 's': /* a stack overflow: SIGSEGV, handled on the agent's alternate stack */
        sink = (uint8_t)recurse(0);
        return 0;
    default:
        return 0;
    }
}
