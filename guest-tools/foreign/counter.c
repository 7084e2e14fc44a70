/*
 * counter - a guest that counts on COM1 at CPL3, for the QEMU migration tests: a stream saved at
 * any moment must resume with the exact next number, in QEMU or in snapvmm, never from the start.
 * Built on foreign/common (own PVH entry, GDT and page tables; the `-tss` variant loads a TSS whose
 * I/O bitmap allows every port, which CPL3 port I/O on kvm_pvm needs).
 *
 * Prints `counter: start` once, then `count N` lines (N = 1, 2, ...) for ever (or `ticks` of them,
 * then exit 0 through port 0xf4).
 *
 * Command line (PVH cmdline, all optional):
 *   delay=D   spin iterations between lines (default 2000000)
 *   ticks=T   stop after T lines (0 = for ever)
 *   fill=M    before counting, fill M MiB from 16 MiB with a pattern of each word's address
 *             (dense, non-zero RAM); every line then checks 64 KiB of it, in turn, and a
 *             difference prints `counter: fill BAD at ADDR` and exits 4
 *   save=K    with snapvmm's snapshot device: SAVE right after line K, then print
 *             `counter: after save K` (the first thing a resumed snapshot prints)
 *   peek=1    after each count line, `peek 0x...`: the 8 bytes at 0xFFFFFFF0 (the reset vector
 *             in the firmware QEMU's pc/q35 map below 4 GiB; all ones where nothing is mapped)
 * Exit codes: 0 ticks done; 2 the fill range is not RAM; 4 the fill pattern changed; 7 the
 * snapshot device is unusable.
 */
#include "foreign.h"

#define FILL_BASE 0x1000000ull /* 16 MiB */
#define FILL_MAX_MIB 3000ull
#define CHECK_BYTES 0x10000ull
#define PATTERN 0x5a5a5a5a5a5a5a5aull

static uint64_t option(const char *cmdline, const char *key, uint64_t fallback)
{
    uint64_t value;
    return cmdline_number(cmdline, key, &value) ? value : fallback;
}

static inline uint64_t pattern_at(uint64_t address)
{
    return address ^ PATTERN;
}

static void fill(uint64_t bytes)
{
    for (uint64_t a = FILL_BASE; a < FILL_BASE + bytes; a += 8)
        *(volatile uint64_t *)(uintptr_t)a = pattern_at(a);
}

/* Checks the `chunk`-th 64 KiB of the filled range (wrapping). */
static void check(uint64_t bytes, uint64_t chunk)
{
    uint64_t start = FILL_BASE + (chunk * CHECK_BYTES) % bytes;
    uint64_t end = start + CHECK_BYTES > FILL_BASE + bytes ? FILL_BASE + bytes : start + CHECK_BYTES;
    for (uint64_t a = start; a < end; a += 8) {
        if (*(volatile uint64_t *)(uintptr_t)a != pattern_at(a)) {
            serial_puts("counter: fill BAD at ");
            serial_put_hex(a);
            serial_puts("\n");
            debug_exit(4);
        }
    }
}

NORETURN void foreign_main(const struct hvm_start_info *info)
{
    serial_init();
    const char *cmdline = pvh_cmdline(info);
    uint64_t delay = option(cmdline, "delay", 2000000);
    uint64_t ticks = option(cmdline, "ticks", 0);
    uint64_t fill_mib = option(cmdline, "fill", 0);
    uint64_t save_at = option(cmdline, "save", 0);
    uint64_t peek = option(cmdline, "peek", 0);
    if (fill_mib > FILL_MAX_MIB)
        fill_mib = FILL_MAX_MIB;
    uint64_t fill_bytes = fill_mib << 20;
    serial_puts("counter: start\n");
    if (fill_bytes) {
        if (!pvh_ram_covers(info, FILL_BASE, FILL_BASE + fill_bytes)) {
            serial_puts("counter: the fill range is not RAM\n");
            debug_exit(2);
        }
        fill(fill_bytes);
        serial_puts("counter: filled ");
        serial_put_dec(fill_mib);
        serial_puts(" MiB\n");
    }
    struct snapshot_device device;
    bool have_device = false;
    if (save_at) {
        int found = snapshot_find(&device);
        if (found == SNAPSHOT_UNUSABLE) {
            serial_puts("counter: snapshot device unusable\n");
            debug_exit(7);
        }
        have_device = found == SNAPSHOT_FOUND;
    }
    for (uint64_t n = 1; ticks == 0 || n <= ticks; n++) {
        for (volatile uint64_t spin = 0; spin < delay; spin++) {
        }
        if (fill_bytes)
            check(fill_bytes, n);
        serial_puts("count ");
        serial_put_dec(n);
        serial_puts("\n");
        if (peek) {
            serial_puts("peek ");
            serial_put_hex(*(volatile uint64_t *)(uintptr_t)0xfffffff0ull);
            serial_puts("\n");
        }
        if (have_device && n == save_at) {
            snap_command(&device, SNAP_CMD_SAVE);
            serial_puts("counter: after save ");
            serial_put_dec(n);
            serial_puts("\n");
        }
    }
    debug_exit(0);
}
