/* coverage.c - the SanitizerCoverage trace-pc-guard callbacks of the harness: every edge bumps
 * an AFL-style 8-bit counter in the snapshot device's BAR4 (resource4), the map the fuzzer
 * clears and reads. The guards are numbered at start-up (the harness module's constructor, before
 * main and long before the SAVE), consecutive from 1 modulo the map size, as the bare-metal
 * runtime does (guest-tools/runtime/user/coverage.c). */
#include "agent.h"

/* Where counters go without a snapshot device (the agent then stops in main with a message). */
#define FALLBACK_MAP_SIZE 4096u
static uint8_t fallback_map[FALLBACK_MAP_SIZE];

static volatile uint8_t *coverage_map = fallback_map;
static uint32_t coverage_mask = FALLBACK_MAP_SIZE - 1;
static uint32_t next_guard_id = 1;
static size_t guard_count;

static void coverage_attach(void)
{
    struct agent_device *device = agent_device();
    if (!device)
        return;
    size_t size = device->coverage_size;
    /* The mask needs a power of two; BARs always are one. */
    if (size < FALLBACK_MAP_SIZE || (size & (size - 1)) || size > (1ull << 31))
        return;
    coverage_map = device->coverage;
    coverage_mask = (uint32_t)size - 1;
    agent_cmplog_attach(device);
}

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop)
{
    /* Called once per instrumented module, possibly more than once for the same guards. */
    if (start == stop || *start)
        return;
    if (coverage_map == fallback_map)
        coverage_attach();
    for (uint32_t *guard = start; guard < stop; guard++) {
        *guard = next_guard_id++ & coverage_mask;
        guard_count++;
    }
}

void __sanitizer_cov_trace_pc_guard(uint32_t *guard)
{
    /* AFL++'s "NeverZero" counter: 255 + 1 gives 1, so a hot edge never looks unvisited. */
    volatile uint8_t *counter = &coverage_map[*guard];
    uint8_t value = (uint8_t)(*counter + 1);
    *counter = (uint8_t)(value + (value == 0));
}

size_t agent_coverage_guards(void)
{
    return guard_count;
}

bool agent_coverage_in_bar4(void)
{
    return coverage_map != fallback_map;
}
