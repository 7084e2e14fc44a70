// init-once.c - LLVMFuzzerInitialize runs once, before the snapshot: every run sees its state
// (and only its state: what the previous run changed is rolled back). Any deviation is abort().
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int initialize_calls;
static int runs_in_this_snapshot;
static char *greeting;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    initialize_calls++;
    greeting = strdup("initialized once");
    printf("init-once: LLVMFuzzerInitialize ran, argc %d, argv[0] %s\n", *argc, (*argv)[0]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    runs_in_this_snapshot++;
    if (initialize_calls != 1 || runs_in_this_snapshot != 1 || !greeting ||
        strcmp(greeting, "initialized once") != 0)
        abort();
    /* Dirty what Initialize set up: the next run must see it as Initialize left it. */
    greeting[0] = 'X';
    initialize_calls = 7;
    if (size == 1 && data[0] == 'Q')
        __builtin_trap();
    return 0;
}
