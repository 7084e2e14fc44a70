/*
 * coverage-check - checks the coverage instrumentation end to end, in the guest: the guards were
 * numbered at start-up, the callbacks write AFL-style 8-bit counters into BAR4 (or into the
 * runtime's fallback map when there is no snapshot device, e.g. under QEMU), and the counters
 * follow AFL++'s NeverZero rule.
 *
 * Only `one_edge` is instrumented (main and the helpers opt out), so the program has exactly one
 * guard. main calls one_edge 300 times: exactly one counter must change, from 0 to 45 (1..255,
 * then 255 + 1 = 1: ((300 - 1) mod 255) + 1).
 * Prints `coverage-check: PASS: map 0x... (BAR4|fallback), N bytes, 1 guard, counter[i] 0 -> 45`.
 * Exit codes: 0 pass; 1 the map is not BAR4 although the device is there; 2 not exactly one
 * guard; 3 not exactly one counter changed; 4 the counter is not 45.
 */
#include "rt.h"

#define NO_COVERAGE __attribute__((no_sanitize("coverage")))
#define CALLS 300
#define EXPECTED_COUNTER 45

__attribute__((noinline)) static void one_edge(volatile int *sink)
{
    *sink += 1;
}

NO_COVERAGE int main(void)
{
    size_t size, guards;
    volatile uint8_t *map = rt_coverage_map(&size, &guards);
    const struct rt_pci_function *device = rt_pci_find(SNAPSHOT_DEVICE_VENDOR_ID, SNAPSHOT_DEVICE_DEVICE_ID);
    volatile void *bar4 = device ? rt_pci_bar(device, SNAPSHOT_BAR_COVERAGE) : NULL;
    if (bar4 && (map != bar4 || size != device->bars[SNAPSHOT_BAR_COVERAGE].size)) {
        rt_printf("coverage-check: FAIL: map %p (%lu bytes) is not BAR4 %p\n", (void *)map, (unsigned long)size,
                  (void *)bar4);
        return 1;
    }
    if (guards != 1) {
        rt_printf("coverage-check: FAIL: %lu guards, expected 1\n", (unsigned long)guards);
        return 2;
    }
    /* BAR4 is host memory: nothing cleared it here, so compare against a copy. */
    static uint8_t before[65536];
    size_t compared = size < sizeof(before) ? size : sizeof(before);
    for (size_t i = 0; i < compared; i++)
        before[i] = map[i];
    volatile int sink = 0;
    for (int i = 0; i < CALLS; i++)
        one_edge(&sink);
    size_t changed = 0, at = 0;
    for (size_t i = 0; i < compared; i++) {
        if (map[i] != before[i]) {
            changed++;
            at = i;
        }
    }
    if (changed != 1) {
        rt_printf("coverage-check: FAIL: %lu counters changed, expected 1\n", (unsigned long)changed);
        return 3;
    }
    if (before[at] != 0 || map[at] != EXPECTED_COUNTER) {
        rt_printf("coverage-check: FAIL: counter[%lu] %u -> %u, expected 0 -> %u\n", (unsigned long)at, before[at],
                  map[at], EXPECTED_COUNTER);
        return 4;
    }
    rt_printf("coverage-check: PASS: map %p (%s), %lu bytes, 1 guard, counter[%lu] 0 -> %u\n", (void *)map,
              bar4 ? "BAR4" : "fallback", (unsigned long)size, (unsigned long)at, map[at]);
    return 0;
}
