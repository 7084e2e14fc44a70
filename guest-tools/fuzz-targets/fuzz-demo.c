/*
 * fuzz-demo - the demo fuzz target: the SIMG image parser (simg/simg_parse.h) with its planted
 * bug, on the runtime's fuzz API. A run parses the input (BAR2) and ends with DONE (ARG 0 for an
 * accepted image, 1 for a rejected one); the bug ends it with a #PF that the runtime reports to
 * the device as EXCEPTION vector 14 (FAULT_PC = the faulting store in parse_data, inlined into
 * parse_chunks).
 *
 * Prints nothing per run. Command line: input=HEX (the input to use when INPUT_LEN is 0, e.g.
 * under plain `snapvmm run`, which writes no input; at most 256 bytes), e.g. the crashing
 * input: input=5349030410b54100.
 */
#include "rt.h"
#include "simg/simg_parse.h"

#define BUILTIN_INPUT_MAX 256

static uint8_t builtin_input[BUILTIN_INPUT_MAX];
static size_t builtin_length;

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* input=HEX into builtin_input; aborts on malformed or oversized values. */
static void parse_builtin_input(void)
{
    const char *hex = rt_cmdline_value("input");
    if (!hex)
        return;
    while (*hex && *hex != ' ') {
        int high = hex_digit(hex[0]), low = high < 0 ? -1 : hex_digit(hex[1]);
        if (low < 0 || builtin_length == BUILTIN_INPUT_MAX)
            rt_abort("fuzz-demo: input= takes at most 256 bytes as pairs of hex digits");
        builtin_input[builtin_length++] = (uint8_t)(high << 4 | low);
        hex += 2;
    }
}

int main(void)
{
    parse_builtin_input();
    for (;;) {
        size_t size;
        const uint8_t *data = rt_fuzz_input(&size);
        if (size == 0) {
            data = builtin_input;
            size = builtin_length;
        }
        /* Like a libFuzzer harness, the run's result is 0 whatever the parser said: a non-zero
         * result costs the run one more exit (the ARG write before DONE). */
        (void)simg_parse(data, size);
        rt_fuzz_done(0);
    }
}
