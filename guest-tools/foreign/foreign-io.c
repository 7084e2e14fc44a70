/*
 * foreign-io - a test kernel written the way kernels outside this project are (issue 8): its own
 * PVH entry, GDT and page tables (foreign/common/entry.S: 2 MiB user pages with Accessed/Dirty
 * CLEAR, no IDT, TR never loaded), running at CPL3 with RFLAGS.IOPL=3 and doing port I/O there:
 * COM1 polled with in/out, PCI configuration through 0xCF8/0xCFC, the debug-exit port 0xf4.
 *
 * With the snapshot device (found by its own PCI scan, BAR0 mapped uncached): SAVE once, then
 * each round (= RESTORES) checks that the previous round's writes were rolled back -- the K
 * pages, a global, and (with A/D clear) that the PD entries of the pages are back to A/D clear,
 * as the guest saw them at the SAVE -- then writes one word into each of its K pages and
 * RESTOREs. After `rounds` rounds it prints a summary and exits 0 through port 0xf4.
 * Without the device (QEMU's microvm): prints a counter, for ever (or `ticks` times, then exit 0).
 *
 * Command line (PVH cmdline): rounds=N (1000) pages=K (10, at most 512) stride=S (pages between
 * two written pages: 1 = consecutive 4 KiB pages; 512 = one page per 2 MiB page, so that every
 * written page has its own PD entry whose A/D bits the round sets) ad=0|1 (0: A/D clear as built;
 * 1: A/D preset in every entry before the SAVE) print=P (a line every P rounds; 0 = none)
 * ticks=T (without the device: stop after T lines; 0 = for ever).
 *
 * The written pages start at 16 MiB; the memory map must cover them.
 * Exit codes (port 0xf4): 0 success; 1 bad command line; 2 the pages are not RAM; 3 RESTORE
 * returned; 4 a page was not rolled back; 5 a PD entry's A/D bits were not rolled back; 6 the
 * global was not rolled back; 7 the snapshot device is unusable (BARs above 4 GiB, bad MAGIC);
 * 8 RESTORES jumped (a round missing or repeated); 9 a round's write did not set the A/D bits of
 * its page's PD entry (a stale translation survived a restore).
 */
#include "foreign.h"

#define BUFFER_BASE 0x1000000ull /* 16 MiB */
#define PAGE 4096ull
#define MAX_PAGES 512

/* .data: rolled back by each restore to its value at the SAVE. */
static volatile uint64_t round_marker = 0x5eed;

static uint64_t option(const char *cmdline, const char *key, uint64_t fallback, uint64_t max)
{
    uint64_t value;
    if (!cmdline_number(cmdline, key, &value))
        return fallback;
    if (value > max) {
        serial_puts("foreign-io: ");
        serial_puts(key);
        serial_puts(" too large\n");
        debug_exit(1);
    }
    return value;
}

static volatile uint64_t *word_of(uint64_t page, uint64_t stride, uint64_t round)
{
    return (volatile uint64_t *)(uintptr_t)(BUFFER_BASE + page * stride * PAGE + (round % 512) * 8);
}

static NORETURN void count_for_ever(uint64_t ticks)
{
    serial_puts("foreign-io: no snapshot device: counting\n");
    for (uint64_t tick = 1; ticks == 0 || tick <= ticks; tick++) {
        serial_puts("foreign-io: tick ");
        serial_put_dec(tick);
        serial_puts("\n");
    }
    debug_exit(0);
}

static NORETURN void fail(uint32_t code, const char *what, uint64_t round, uint64_t detail)
{
    serial_puts("foreign-io: FAIL: ");
    serial_puts(what);
    serial_puts(" (round ");
    serial_put_dec(round);
    serial_puts(", ");
    serial_put_hex(detail);
    serial_puts(")\n");
    debug_exit(code);
}

NORETURN void foreign_main(const struct hvm_start_info *info)
{
    serial_init();
    const char *cmdline = pvh_cmdline(info);
    uint64_t rounds = option(cmdline, "rounds", 1000, 1ull << 40);
    uint64_t pages = option(cmdline, "pages", 10, MAX_PAGES);
    uint64_t stride = option(cmdline, "stride", 1, 512);
    uint64_t preset = option(cmdline, "ad", 0, 1);
    uint64_t print = option(cmdline, "print", 0, 1ull << 40);
    uint64_t ticks = option(cmdline, "ticks", 0, 1ull << 40);
    if (stride == 0)
        stride = 1;
    if (preset)
        page_tables_preset_accessed_dirty();
    serial_puts("foreign-io: CPL3, IOPL=3, no TR, no IDT; page tables with A/D ");
    serial_puts(preset ? "preset\n" : "clear\n");

    struct snapshot_device device;
    int found = snapshot_find(&device);
    if (found == SNAPSHOT_ABSENT)
        count_for_ever(ticks);
    if (found != SNAPSHOT_FOUND)
        fail(7, "snapshot device unusable", 0, (uint64_t)found);
    uint64_t span_end = BUFFER_BASE + (pages ? (pages - 1) * stride * PAGE + PAGE : 0);
    if (!pvh_ram_covers(info, BUFFER_BASE, span_end))
        fail(2, "the written pages are not RAM (give more memory)", 0, span_end);
    serial_puts("foreign-io: snapshot device found; ");
    serial_put_dec(rounds);
    serial_puts(" rounds of ");
    serial_put_dec(pages);
    serial_puts(" pages, stride ");
    serial_put_dec(stride);
    serial_puts("\n");

    /* The A/D bits of the written pages' PD entries as the SAVE sees them: what every round must
     * find again. (Reading the tables only sets A on the image's own entry, set long ago.) */
    uint64_t saved_flags = pages ? *pd_entry_for(BUFFER_BASE) & (PTE_ACCESSED | PTE_DIRTY) : 0;

    snap_command(&device, SNAP_CMD_SAVE);
    uint64_t round = snap_read(&device, SNAP_REG_RESTORES_LO);

    if (round_marker != 0x5eed)
        fail(6, "global not rolled back", round, round_marker);
    if (round > 0) {
        /* The PD entries first: reading the pages sets their Accessed bits again. */
        for (uint64_t page = 0; page < pages; page++) {
            uint64_t flags = *pd_entry_for(BUFFER_BASE + page * stride * PAGE) & (PTE_ACCESSED | PTE_DIRTY);
            if (flags != saved_flags)
                fail(5, "PD entry A/D bits not rolled back", round, flags);
        }
        for (uint64_t page = 0; page < pages; page++) {
            if (*word_of(page, stride, round - 1) != 0)
                fail(4, "page not rolled back", round, BUFFER_BASE + page * stride * PAGE);
        }
    }
    if (print && round % print == 0) {
        serial_puts("foreign-io: round ");
        serial_put_dec(round);
        serial_puts("\n");
    }
    if (round >= rounds) {
        if (round != rounds)
            fail(8, "RESTORES jumped", round, rounds);
        serial_puts("foreign-io: ");
        serial_put_dec(rounds);
        serial_puts(" rounds ok\n");
        debug_exit(0);
    }
    round_marker = round + 1;
    for (uint64_t page = 0; page < pages; page++)
        *word_of(page, stride, round) = (round + 1) << 16 | page;
    /* What the CPU does on every round alike: a write sets Accessed and Dirty in the entry that
     * maps the page. A VMM whose restore leaves a stale translation behind skips it. */
    for (uint64_t page = 0; page < pages; page++) {
        uint64_t flags = *pd_entry_for(BUFFER_BASE + page * stride * PAGE) & (PTE_ACCESSED | PTE_DIRTY);
        if (flags != (PTE_ACCESSED | PTE_DIRTY))
            fail(9, "a write did not set the PD entry's A/D bits", round, flags);
    }
    snap_command(&device, SNAP_CMD_RESTORE);
    fail(3, "RESTORE returned", round, snap_read(&device, SNAP_REG_STATUS));
}
