/*
 * snapshot-bench - the restore loop at its cheapest, for timing snapshot restores.
 *
 * Command line: rounds=N pages=K mode=restore|noop|loop|floor
 *               (defaults: rounds=1000 pages=1 mode=restore)
 *
 * The K pages are a fixed set: K consecutive pages of the heap, all written once before the SAVE
 * (so no round pays for a first touch). Each round writes one 8-byte word at the start of each of
 * the K pages, so exactly K distinct pages are dirty per round.
 *   mode=restore  SAVE once; each return from the SAVE reads RESTORES (one register read) and,
 *                 while fewer than N restores are done, dirties the K pages and RESTOREs.
 *   mode=noop     the floor: SAVE once, then a plain loop of N rounds with the same two device
 *                 accesses per round and no restore: the K page writes, a STATUS read where
 *                 restore mode writes RESTORE, and a RESTORES read where restore mode returns
 *                 from the SAVE. restore minus noop is the cost of the restores themselves.
 *   mode=loop     one VM exit per round, for the host's `snapvmm bench`: SAVE once (a plain
 *                 COMMAND write), then forever: dirty the K pages, RESTORE. The guest never reads
 *                 a register, so it cannot count; snapvmm stops it with --max-restores.
 *   mode=floor    the same loop with no restore: SAVE once, then N rounds of the K page writes and
 *                 one ARG register write (one exit, no action), then exit 0.
 * At the end it prints the TSC cycles from just before the SAVE to the end (the TSC keeps
 * running through restores), per round, and in microseconds if the TSC frequency could be
 * measured against the PIT (CPUID 0x15/0x16 are empty under KVM), then exits 0.
 *
 * Exit codes: 0 done; 1 snapshot device unusable; 2 bad command line; 3 not enough RAM for K
 * pages; 4 RESTORE returned; 5 RESTORES beyond N.
 */
#include "rt.h"

#define PAGE_WORDS 512u
#define PIT_HZ 1193182u
#define PIT_CALIBRATION_COUNT 23864u /* 20 ms */

enum failure { DEVICE = 1, BAD_ARGUMENTS = 2, NO_MEMORY = 3, RESTORE_RETURNED = 4, BAD_ROUND = 5 };

static inline uint64_t rdtsc(void)
{
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

/* TSC ticks per second from a 20 ms one-shot of PIT channel 2 (polled through port 0x61, one
 * VM exit per poll, so the result is good to a fraction of a percent); 0 if the PIT never fires. */
static uint64_t tsc_hz_from_pit(void)
{
    rt_outb(0x61, (uint8_t)((rt_inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
    rt_outb(0x43, 0xb0);                                      /* channel 2, lo/hi byte, mode 0 */
    rt_outb(0x42, PIT_CALIBRATION_COUNT & 0xff);
    rt_outb(0x42, PIT_CALIBRATION_COUNT >> 8);
    uint64_t start = rdtsc();
    for (unsigned polls = 0; polls < 100000; polls++)
        if (rt_inb(0x61) & 0x20)
            return (rdtsc() - start) * PIT_HZ / PIT_CALIBRATION_COUNT;
    return 0;
}

static bool parse_value(const char *token, const char *key, uint64_t *value)
{
    size_t length = strlen(key);
    if (strncmp(token, key, length) != 0 || token[length] != '=')
        return false;
    uint64_t v = 0;
    const char *p = token + length + 1;
    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (*p != ' ' && *p != 0)
        return false;
    *value = v;
    return true;
}

static uint64_t rounds = 1000, pages = 1;
static bool noop, loop_forever, floor_loop;

static bool parse_options(const char *p)
{
    while (*p) {
        if (*p == ' ') {
            p++;
            continue;
        }
        if (strncmp(p, "mode=restore", 12) == 0 && (p[12] == ' ' || p[12] == 0))
            noop = false;
        else if (strncmp(p, "mode=noop", 9) == 0 && (p[9] == ' ' || p[9] == 0))
            noop = true;
        else if (strncmp(p, "mode=loop", 9) == 0 && (p[9] == ' ' || p[9] == 0))
            loop_forever = true;
        else if (strncmp(p, "mode=floor", 10) == 0 && (p[10] == ' ' || p[10] == 0))
            floor_loop = true;
        else if (!parse_value(p, "rounds", &rounds) && !parse_value(p, "pages", &pages))
            return false;
        while (*p && *p != ' ')
            p++;
    }
    return rounds < (1ull << 32);
}

static void dirty(volatile uint64_t *buffer, uint64_t value)
{
    for (uint64_t i = 0; i < pages; i++)
        buffer[i * PAGE_WORDS] = value;
}

static int finish(uint64_t started, uint64_t tsc_hz)
{
    uint64_t cycles = rdtsc() - started;
    uint64_t per_round = rounds ? cycles / rounds : 0;
    rt_printf("snapshot-bench: mode=%s rounds=%lu pages=%lu: %lu TSC cycles, %lu per round", noop ? "noop" : "restore",
              (unsigned long)rounds, (unsigned long)pages, (unsigned long)cycles, (unsigned long)per_round);
    if (tsc_hz)
        rt_printf(", %lu.%02lu us per round (TSC %lu MHz)", (unsigned long)(per_round * 1000000 / tsc_hz),
                  (unsigned long)(per_round * 100000000 / tsc_hz % 100), (unsigned long)(tsc_hz / 1000000));
    rt_printf("\n");
    return 0;
}

int main(void)
{
    if (!parse_options(rt_cmdline())) {
        rt_printf("snapshot-bench: bad command line '%s'\nusage: rounds=N pages=K mode=restore|noop\n", rt_cmdline());
        return BAD_ARGUMENTS;
    }
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_printf("snapshot-bench: %s\n", rt_snapshot_strerror(error));
        return DEVICE;
    }
    volatile uint64_t *buffer = rt_alloc_pages(pages ? pages : 1);
    if (!buffer) {
        rt_printf("snapshot-bench: no room for %lu pages\n", (unsigned long)pages);
        return NO_MEMORY;
    }
    dirty(buffer, 0);
    uint64_t tsc_hz = tsc_hz_from_pit();
    volatile void *regs = rt_snapshot_registers();
    uint64_t started = rdtsc();

    if (loop_forever) {
        snapshot_command(regs, SNAPSHOT_CMD_SAVE);
        /* Every RESTORE lands here again: the counter below rolls back with RAM, so each round
         * writes different values only through the TSC. */
        for (;;) {
            dirty(buffer, rdtsc());
            snapshot_command(regs, SNAPSHOT_CMD_RESTORE);
        }
    }
    if (floor_loop) {
        snapshot_command(regs, SNAPSHOT_CMD_SAVE);
        for (uint64_t i = 0; i < rounds; i++) {
            dirty(buffer, rdtsc());
            snapshot_reg_write(regs, SNAPSHOT_REG_ARG, (uint32_t)i);
        }
        return finish(started, tsc_hz);
    }
    uint64_t round = rt_snapshot_save();
    if (noop) {
        for (round = 0; round < rounds; round++) {
            dirty(buffer, round + 1);
            (void)snapshot_reg_read(regs, SNAPSHOT_REG_STATUS);
            (void)snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_LO);
        }
        return finish(started, tsc_hz);
    }
    if (round == rounds)
        return finish(started, tsc_hz);
    if (round > rounds)
        return BAD_ROUND;
    dirty(buffer, round + 1);
    uint32_t status = rt_snapshot_restore();
    rt_printf("snapshot-bench: RESTORE returned in round %lu, status 0x%x\n", (unsigned long)round, status);
    return RESTORE_RETURNED;
}
