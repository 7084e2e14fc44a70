/* input-echo: a fuzz-style guest for tests of the VMM's library API. Every run reads its input
 * from BAR2 and writes what it derived from it into the BAR4 coverage map, where the host checks
 * it: bytes 0-3 the FNV-1a hash of the input, 4-7 its length, 8 its first byte (or 0xee when
 * empty). An input that starts with "HANG" loops for ever (the host's deadline must end it).
 * The run ends with DONE, code = the length's low byte. */
#include "rt.h"

static void put32(volatile uint8_t *map, size_t offset, uint32_t value)
{
    for (size_t i = 0; i < 4; i++)
        map[offset + i] = (uint8_t)(value >> (8 * i));
}

int main(void)
{
    size_t length;
    const uint8_t *input = rt_fuzz_input(&length);
    if (length >= 4 && input[0] == 'H' && input[1] == 'A' && input[2] == 'N' && input[3] == 'G')
        for (;;)
            __asm__ volatile("pause");
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ input[i]) * 16777619u;
    size_t size;
    volatile uint8_t *map = rt_coverage(&size);
    if (map && size >= 16) {
        put32(map, 0, hash);
        put32(map, 4, (uint32_t)length);
        map[8] = length ? input[0] : 0xee;
    }
    rt_fuzz_done((uint32_t)(length & 0xff));
}
