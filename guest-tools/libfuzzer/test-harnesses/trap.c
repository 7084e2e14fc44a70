// trap.c - __builtin_trap() (ud2, #UD) behind three dependent byte compares: the fuzzer has to
// find "TRP" one byte at a time (cli/tests/libfuzzer.rs).
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 3 && data[0] == 'T') {
        if (data[1] == 'R') {
            if (data[2] == 'P')
                __builtin_trap();
        }
    }
    return 0;
}
