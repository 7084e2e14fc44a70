/* linux-fuzz-demo.c - a libFuzzer harness for a Linux target, written as for clang
 * -fsanitize=fuzzer (nothing snapvmm-specific), with a planted bug.
 *
 * It parses a "record": the bytes 'S' 'N' 'A' 'P', a kind byte, and a payload. Each known kind
 * has a statistics slot that counts its records; LLVMFuzzerInitialize allocates the table once
 * (before the snapshot) with slots for kinds 0 and 1 only. The planted bug: the kind byte is not
 * checked, and any other kind finds no slot, so counting the record writes through a NULL
 * pointer: a SIGSEGV in parse_record. The magic bytes are compared one at a time, so coverage
 * (and the comparison log) lead the fuzzer to them byte by byte. Built as a native libFuzzer
 * program (clang -fsanitize=fuzzer linux-fuzz-demo.c) it crashes the same way. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

struct kind_stats {
    size_t *records; /* NULL for kinds nobody registered */
    size_t bytes;
};

/* One entry per kind value; only kinds 0 and 1 are registered. */
static struct kind_stats *stats;
static size_t kind0_records, kind1_records;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    stats = calloc(256, sizeof(*stats));
    if (!stats)
        abort();
    stats[0].records = &kind0_records;
    stats[1].records = &kind1_records;
    return 0;
}

static int parse_record(const uint8_t *data, size_t size)
{
    if (size < 5)
        return -1;
    if (data[0] != 'S')
        return -1;
    if (data[1] != 'N')
        return -1;
    if (data[2] != 'A')
        return -1;
    if (data[3] != 'P')
        return -1;
    uint8_t kind = data[4];
    /* The bug: `kind` is not checked against the registered kinds. */
    struct kind_stats *entry = &stats[kind];
    (*entry->records)++;
    entry->bytes += size - 5;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_record(data, size);
    return 0;
}
