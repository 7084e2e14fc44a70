/* coverage.c - the SanitizerCoverage callbacks of fuzz targets built with clang's
 * -fsanitize-coverage=trace-pc-guard (runtime/README.md, "Coverage").
 *
 * The runtime itself is not instrumented. At start-up (the module constructor, before main and
 * before the SAVE) every guard gets an id: consecutive numbers from 1, modulo the map size. Each
 * instrumented edge then bumps the 8-bit hit counter map[id] in BAR4 (the snapshot device's
 * coverage map, host memory that the harness clears and reads, never part of the snapshot): one
 * load of the guard, one read-modify-write, no VM exit, no RAM page dirtied. */
#include "rt.h"

/* Where counters go when there is no snapshot device (plain runs, QEMU): a small map of our own. */
#define FALLBACK_MAP_SIZE 4096u
static uint8_t fallback_map[FALLBACK_MAP_SIZE];

/* Read by every callback; written only at start-up. Code that runs before the guards are
 * numbered (guard 0) lands in the fallback map. */
static uint8_t *coverage_map = fallback_map;
static uint32_t coverage_mask = FALLBACK_MAP_SIZE - 1;
static uint32_t next_guard_id = 1;
static uint32_t guard_count;

/* BAR4 when the snapshot device is there and mapped, found in the kernel's PCI scan (no VM
 * exit: the size comes from the BAR, which is what COVERAGE_SIZE reports). */
static void coverage_map_attach(void)
{
    const struct rt_pci_function *device = rt_pci_find(SNAPSHOT_DEVICE_VENDOR_ID, SNAPSHOT_DEVICE_DEVICE_ID);
    if (!device)
        return;
    volatile void *map = rt_pci_bar(device, SNAPSHOT_BAR_COVERAGE);
    uint64_t size = device->bars[SNAPSHOT_BAR_COVERAGE].size;
    /* The mask needs a power of two; BARs always are one. */
    if (!map || size < FALLBACK_MAP_SIZE || (size & (size - 1)) || size > (1ull << 31))
        return;
    coverage_map = (uint8_t *)(uintptr_t)map;
    coverage_mask = (uint32_t)size - 1;
}

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop)
{
    /* Called once per instrumented module, possibly more than once for the same guards. */
    if (start == stop || *start)
        return;
    if (coverage_map == fallback_map) {
        coverage_map_attach();
        rt_cmplog_attach();
    }
    for (uint32_t *guard = start; guard < stop; guard++) {
        *guard = next_guard_id++ & coverage_mask;
        guard_count++;
    }
}

void __sanitizer_cov_trace_pc_guard(uint32_t *guard)
{
    /* AFL++'s "NeverZero" counter: 255 + 1 gives 1, so a hot edge never looks unvisited. */
    uint8_t *counter = &coverage_map[*guard];
    uint8_t value = (uint8_t)(*counter + 1);
    *counter = (uint8_t)(value + (value == 0));
}

volatile uint8_t *rt_coverage_map(size_t *size, size_t *guards)
{
    if (size)
        *size = (size_t)coverage_mask + 1;
    if (guards)
        *guards = guard_count;
    return coverage_map;
}
