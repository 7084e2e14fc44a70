/* A libFuzzer harness with a large initialised state: LLVMFuzzerInitialize fills 192 MiB before
 * the SAVE (like a target that loads a big data set), each run reads a little of it. */
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define STATE_BYTES (192u << 20)
static uint8_t *state;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    state = malloc(STATE_BYTES);
    if (!state)
        return 1;
    for (size_t i = 0; i < STATE_BYTES; i += 64)
        state[i] = (uint8_t)(i >> 12) | 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!state || size < 4)
        return 0;
    uint32_t at;
    memcpy(&at, data, 4);
    at %= STATE_BYTES;
    if (state[at] == 0x7f && size > 8 && data[4] == 'X')
        state[at] = data[5];
    return 0;
}
