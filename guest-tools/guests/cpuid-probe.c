/* cpuid-probe: SAVE, then print the CPU's brand string (CPUID 0x80000002-0x80000004) and exit 0.
 * Resumed from a snapshot on disk it continues after the SAVE, so it prints the brand string of
 * the CPU model the resumed vCPU was given: the test of snapshots that carry their CPUID. */
#include "rt.h"

static void cpuid(uint32_t leaf, uint32_t out[4])
{
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3]) : "a"(leaf), "c"(0));
}

int main(void)
{
    int error = rt_snapshot_open();
    if (error) {
        rt_printf("cpuid-probe: %s\n", rt_snapshot_strerror(error));
        return 1;
    }
    rt_snapshot_save();
    uint32_t words[12 + 1] = {0};
    for (uint32_t i = 0; i < 3; i++)
        cpuid(0x80000002u + i, &words[4 * i]);
    char brand[49];
    for (size_t i = 0; i < 48; i++)
        brand[i] = (char)(words[i / 4] >> (8 * (i % 4)));
    brand[48] = 0;
    rt_printf("cpuid-probe: brand [%s]\n", brand);
    return 0;
}
