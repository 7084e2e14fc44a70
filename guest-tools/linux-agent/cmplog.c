/* cmplog.c - the SanitizerCoverage trace-cmp callbacks of the harness: while the fuzzer has the
 * comparison log enabled (BAR1's ENABLE word), each comparison's operands are appended to it as a
 * `struct snapshot_cmplog_entry` (snapshot_device.h), for the fuzzer's input-to-state mutations.
 * Otherwise each callback is one load and a branch. The same format as the bare-metal runtime
 * (guest-tools/runtime/user/cmplog.c). */
#include "agent.h"

static volatile uint8_t *cmplog;
static uint32_t cmplog_capacity;

void agent_cmplog_attach(struct agent_device *device)
{
    if (!device->cmplog || device->cmplog_size <= SNAPSHOT_CMPLOG_ENTRIES)
        return;
    cmplog_capacity =
        (uint32_t)((device->cmplog_size - SNAPSHOT_CMPLOG_ENTRIES) / sizeof(struct snapshot_cmplog_entry));
    cmplog = device->cmplog;
}

bool agent_cmplog_attached(void)
{
    return cmplog != NULL;
}

static inline void record(uint8_t size, uint8_t flags, uint64_t first, uint64_t second, uint64_t site)
{
    volatile uint8_t *log = cmplog;
    if (!log || !*(volatile uint32_t *)(log + SNAPSHOT_CMPLOG_ENABLE))
        return;
    volatile uint32_t *count = (volatile uint32_t *)(log + SNAPSHOT_CMPLOG_COUNT);
    uint32_t index = *count;
    *count = index + 1;
    if (index >= cmplog_capacity)
        return;
    volatile struct snapshot_cmplog_entry *entry =
        (volatile struct snapshot_cmplog_entry *)(log + SNAPSHOT_CMPLOG_ENTRIES) + index;
    entry->size = size;
    entry->flags = flags;
    entry->reserved = 0;
    entry->site = (uint32_t)site;
    entry->first = first;
    entry->second = second;
}

#define SITE ((uint64_t)(uintptr_t)__builtin_return_address(0))

void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { record(1, 0, a, b, SITE); }
void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { record(2, 0, a, b, SITE); }
void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { record(4, 0, a, b, SITE); }
void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { record(8, 0, a, b, SITE); }
void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { record(1, SNAPSHOT_CMPLOG_CONST, a, b, SITE); }
void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { record(2, SNAPSHOT_CMPLOG_CONST, a, b, SITE); }
void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { record(4, SNAPSHOT_CMPLOG_CONST, a, b, SITE); }
void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { record(8, SNAPSHOT_CMPLOG_CONST, a, b, SITE); }

/* cases[0]: number of cases, cases[1]: width of val in bits, then the case values. */
void __sanitizer_cov_trace_switch(uint64_t val, uint64_t *cases)
{
    uint64_t count = cases[0] < 32 ? cases[0] : 32;
    uint8_t size = (uint8_t)(cases[1] / 8);
    if (size != 1 && size != 2 && size != 4 && size != 8)
        return;
    for (uint64_t i = 0; i < count; i++)
        record(size, SNAPSHOT_CMPLOG_CONST, val, cases[2 + i], SITE);
}
