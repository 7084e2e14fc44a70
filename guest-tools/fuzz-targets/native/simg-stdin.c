/*
 * simg-stdin - the demo target's parser (../simg/simg_parse.h) as a native program: reads one
 * input from stdin (at most 1 MiB) and parses it. Exit 0 accepted, 1 rejected; the planted bug
 * ends it with SIGSEGV. Built by build.rs with gcc for host tests; for AFL++ compile it with
 * afl-cc (fork-server mode), and with __AFL_FUZZ_TESTCASE_LEN defined by afl-cc it runs in
 * persistent mode with shared-memory inputs.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../simg/simg_parse.h"

#define MAX_INPUT (1 << 20)

#ifdef __AFL_FUZZ_TESTCASE_LEN
__AFL_FUZZ_INIT();

int main(void)
{
    __AFL_INIT();
    const unsigned char *buffer = __AFL_FUZZ_TESTCASE_BUF;
    while (__AFL_LOOP(100000)) {
        size_t length = (size_t)__AFL_FUZZ_TESTCASE_LEN;
        simg_parse(buffer, length);
    }
    return 0;
}
#else
static uint8_t input[MAX_INPUT];

int main(void)
{
    size_t length = 0;
    ssize_t got = 0;
    while (length < MAX_INPUT && (got = read(0, input + length, MAX_INPUT - length)) > 0)
        length += (size_t)got;
    if (got < 0) {
        perror("simg-stdin: read");
        return 2;
    }
    return simg_parse(input, length) == 0 ? 0 : 1;
}
#endif
