/*
 * fuzz-magic - a bug behind two 8-byte magic values: comparison feedback's test target.
 *
 * The input's first 8 bytes must equal one 64-bit constant and the next 8 another (each one
 * comparison, so coverage gives no partial credit: by chance 2^-64 each); then a CRASH with code
 * 0x3a61. What `snapvmm fuzz` solves in seconds with its comparison log (input-to-state
 * replacement of the operands the target compared) and not at all without it.
 */
#include "rt.h"

#define FIRST_MAGIC 0x6b6f6f4c21796548ull  /* "Hey!Look" little-endian */
#define SECOND_MAGIC 0x1badb0021deadbeeull
#define CRASH_CODE 0x3a61

static uint64_t load64(const uint8_t *bytes)
{
    uint64_t value;
    __builtin_memcpy(&value, bytes, sizeof(value));
    return value;
}

static int test_one_input(const uint8_t *data, size_t size)
{
    if (size < 16)
        return 0;
    if (load64(data) != FIRST_MAGIC)
        return 0;
    if (load64(data + 8) != SECOND_MAGIC)
        return 0;
    rt_fuzz_crash(CRASH_CODE);
}

int main(void)
{
    rt_fuzz_run(test_one_input);
}
