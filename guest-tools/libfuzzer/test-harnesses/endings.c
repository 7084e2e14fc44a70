// endings.c - every way a libFuzzer harness run can end on snapvmm, chosen by the input
// (cli/tests/libfuzzer.rs). "TRP" reaches __builtin_trap() through three dependent byte
// compares, so that the fuzzer has to find it; the one-byte commands are for `snapvmm repro`.
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Where blocks escape to, so that clang cannot drop the allocations as unused. */
static void *volatile sink;

static void wild_write(volatile uint8_t *p)
{
    *p = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 3 && data[0] == 'T') {
        if (data[1] == 'R') {
            if (data[2] == 'P')
                __builtin_trap();
        }
        return 0;
    }
    if (size != 2 || data[0] != '!')
        return 0;
    switch (data[1]) {
    case 'a':
        abort();
    case 's':
        assert(size == 3);
        return 0;
    case 'o': {
        char *block = malloc(8);
        sink = block;
        memset(sink, 'x', 9); /* one byte past the end */
        return 0;
    }
    case 'd': {
        sink = malloc(8);
        free(sink);
        free(sink);
        return 0;
    }
    case 'f': {
        char local;
        sink = &local;
        free(sink);
        return 0;
    }
    case 'w':
        wild_write((volatile uint8_t *)(uintptr_t)0x10);
        return 0;
    case 'e':
        exit(3);
    case 'r': /* one byte past the input */
        return data[size] == 'x';
    case 'm': /* writes to its const input */
        ((uint8_t *)(uintptr_t)data)[0] = 'M';
        return 0;
    default:
        return 0;
    }
}
