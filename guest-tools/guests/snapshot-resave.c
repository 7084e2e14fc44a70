/*
 * snapshot-resave - a new SAVE after restores replaces the snapshot, generation after generation.
 *
 * Generation g fills K pages and a global with values of g, SAVEs, then R times scribbles over
 * them and RESTOREs; every return from the SAVE checks that the pages and the global hold
 * generation g's values (never a scribble, never an older generation's). After R restores it
 * moves to generation g + 1 (new values, a new SAVE) until G generations are done.
 *
 * This is what the remap strategy's SAVE over a remapped RAM must get right: the snapshot memory
 * is updated in place with the pages written since the last restore only.
 *
 * Command line: generations=G (4) rounds=R (50) pages=K (16, at most 256).
 * Exit codes: 0 success; 1 device not usable; 2 bad command line; 3 no memory; 4 a page word
 * wrong; 5 the global wrong; 6 RESTORE returned.
 */
#include "rt.h"

enum failure {
    DEVICE = 1,
    BAD_CMDLINE = 2,
    NO_MEMORY = 3,
    PAGE_WRONG = 4,
    GLOBAL_WRONG = 5,
    RESTORE_RETURNED = 6,
};

#define WORDS_PER_PAGE (4096 / 8)

static volatile uint64_t generation;
static volatile uint64_t generation_mark;

static uint64_t value_of(uint64_t gen, uint64_t page, uint64_t word)
{
    return (gen + 1) * 0x9e3779b97f4a7c15ull ^ (page << 32) ^ word;
}

static bool option(const char *key, uint64_t *value)
{
    const char *text = rt_cmdline_value(key);
    if (!text)
        return true;
    uint64_t parsed = 0;
    if (*text < '0' || *text > '9')
        return false;
    while (*text >= '0' && *text <= '9')
        parsed = parsed * 10 + (uint64_t)(*text++ - '0');
    *value = parsed;
    return true;
}

int main(void)
{
    uint64_t generations = 4, rounds = 50, pages = 16;
    if (!option("generations", &generations) || !option("rounds", &rounds) || !option("pages", &pages) ||
        pages == 0 || pages > 256 || generations == 0) {
        rt_printf("snapshot-resave: bad command line: %s\n", rt_cmdline());
        return BAD_CMDLINE;
    }
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_printf("snapshot-resave: %s\n", rt_snapshot_strerror(error));
        return DEVICE;
    }
    volatile uint64_t *buffer = rt_alloc_pages(pages);
    if (!buffer)
        return NO_MEMORY;

    for (;;) {
        uint64_t gen = generation;
        for (uint64_t page = 0; page < pages; page++)
            for (uint64_t word = 0; word < WORDS_PER_PAGE; word++)
                buffer[page * WORDS_PER_PAGE + word] = value_of(gen, page, word);
        generation_mark = ~gen;

        uint64_t restores = rt_snapshot_save();
        /* Every return lands here, the first after the SAVE, the others after a RESTORE. */
        gen = generation;
        if (generation_mark != ~gen) {
            rt_printf("snapshot-resave: generation %lu: global 0x%lx\n", (unsigned long)gen,
                      (unsigned long)generation_mark);
            return GLOBAL_WRONG;
        }
        for (uint64_t page = 0; page < pages; page++)
            for (uint64_t word = 0; word < WORDS_PER_PAGE; word++)
                if (buffer[page * WORDS_PER_PAGE + word] != value_of(gen, page, word)) {
                    rt_printf("snapshot-resave: generation %lu, restore %lu: page %lu word %lu is 0x%lx\n",
                              (unsigned long)gen, (unsigned long)restores, (unsigned long)page,
                              (unsigned long)word, (unsigned long)buffer[page * WORDS_PER_PAGE + word]);
                    return PAGE_WRONG;
                }
        if (restores < rounds) {
            /* Scribble over every page (a different pattern each round) and the global. */
            for (uint64_t page = 0; page < pages; page++)
                buffer[page * WORDS_PER_PAGE + (restores + page) % WORDS_PER_PAGE] = ~restores;
            generation_mark = restores;
            generation = gen + 1000;
            rt_snapshot_restore();
            return RESTORE_RETURNED;
        }
        generation = gen + 1;
        if (generation == generations) {
            rt_printf("snapshot-resave: %lu generations of %lu restores ok\n", (unsigned long)generations,
                      (unsigned long)rounds);
            return 0;
        }
    }
}
