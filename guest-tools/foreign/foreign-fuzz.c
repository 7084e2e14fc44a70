/*
 * foreign-fuzz - a fuzz target written as if outside this project, following only the snapshot
 * device's ABI (issue 9's acceptance): its own PVH entry, GDT and page tables
 * (foreign/common/entry.S), no IDT and no TSS, its own PCI scan, its input from BAR2/INPUT_LEN
 * and its own coverage: hand-placed AFL-style edges written into BAR4
 * (map[(cur ^ prev) & mask]++, prev = cur >> 1, with a fixed random id per location).
 *
 * A small command interpreter with three planted bugs, each behind three byte comparisons (the
 * first shared) that each give a new edge:
 *   "FCR"  -> CRASH through the device, code 0xc0de, FAULT_PC = the crash site
 *   "FXP"  -> a write to 0x10000000000 (not mapped: the tables stop at 4 GiB): #PF with no IDT,
 *             i.e. a triple fault
 *   "FHN"  -> a loop that never ends (the harness's timeout)
 * Everything else ends the run with DONE. Seven distinct byte values to find in all, each one
 * step of coverage: with havoc mutations some 10^5 executions each at most, minutes at
 * thousands of executions per second.
 *
 * An empty input (plain `snapvmm run`: nothing writes BAR2) uses `bug=crash|exception|hang|none`
 * from the command line (default none). Prints one line before the SAVE, nothing per run.
 * Exit codes (port 0xf4, only before the SAVE): 7 no usable snapshot device.
 */
#include "foreign.h"

#define CRASH_CODE 0xc0de
#define WILD_ADDRESS 0x10000000000ull

static volatile uint8_t *coverage;
static uint32_t coverage_mask;
static uint32_t previous_location;

/* One edge: the AFL recipe, by hand. */
#define EDGE(id)                                                                                   \
    do {                                                                                           \
        uint32_t here = (id);                                                                      \
        coverage[(here ^ previous_location) & coverage_mask]++;                                    \
        previous_location = here >> 1;                                                             \
    } while (0)

static struct snapshot_device device;

static NORETURN void report_crash(uint32_t code)
{
    uint64_t pc = (uint64_t)(uintptr_t)__builtin_return_address(0);
    snap_write(&device, SNAP_REG_FAULT_PC_LO, (uint32_t)pc);
    snap_write(&device, SNAP_REG_FAULT_PC_HI, (uint32_t)(pc >> 32));
    snap_write(&device, SNAP_REG_ARG, code);
    snap_command(&device, SNAP_CMD_CRASH);
    serial_puts("foreign-fuzz: CRASH was not taken\n");
    debug_exit(9);
}

static void done(void)
{
    snap_command(&device, SNAP_CMD_DONE);
    /* Without a harness DONE restores too; only a VMM without DONE gets here. */
    snap_command(&device, SNAP_CMD_RESTORE);
    serial_puts("foreign-fuzz: neither DONE nor RESTORE restored the VM\n");
    debug_exit(10);
}

static __attribute__((noinline)) void crash_branch(const volatile uint8_t *d, uint32_t n)
{
    EDGE(0x5c1d);
    if (n < 3 || d[2] != 'R')
        return;
    EDGE(0x2e91);
    report_crash(CRASH_CODE);
}

static __attribute__((noinline)) void exception_branch(const volatile uint8_t *d, uint32_t n)
{
    EDGE(0x0ad4);
    if (n < 3 || d[2] != 'P')
        return;
    EDGE(0x39e8);
    *(volatile uint64_t *)(uintptr_t)WILD_ADDRESS = 1;
}

static __attribute__((noinline)) void hang_branch(const volatile uint8_t *d, uint32_t n)
{
    EDGE(0x48c6);
    if (n < 3 || d[2] != 'N')
        return;
    EDGE(0x6f05);
    for (;;)
        __asm__ volatile("" ::: "memory");
}

static void run(const volatile uint8_t *d, uint32_t n)
{
    previous_location = 0;
    EDGE(0x3a41);
    if (n < 2)
        return;
    if (d[0] != 'F')
        return;
    EDGE(0x0f17);
    switch (d[1]) {
    case 'C':
        crash_branch(d, n);
        break;
    case 'X':
        exception_branch(d, n);
        break;
    case 'H':
        hang_branch(d, n);
        break;
    default:
        EDGE(0x23cd);
        break;
    }
}

static const uint8_t builtin_crash[] = "FCR";
static const uint8_t builtin_exception[] = "FXP";
static const uint8_t builtin_hang[] = "FHN";

NORETURN void foreign_main(const struct hvm_start_info *info)
{
    serial_init();
    const char *cmdline = pvh_cmdline(info);
    const uint8_t *builtin = NULL;
    uint32_t builtin_length = 0;
    if (cmdline_is(cmdline, "bug", "crash")) {
        builtin = builtin_crash;
        builtin_length = sizeof(builtin_crash) - 1;
    } else if (cmdline_is(cmdline, "bug", "exception")) {
        builtin = builtin_exception;
        builtin_length = sizeof(builtin_exception) - 1;
    } else if (cmdline_is(cmdline, "bug", "hang")) {
        builtin = builtin_hang;
        builtin_length = sizeof(builtin_hang) - 1;
    }
    if (snapshot_find(&device) != SNAPSHOT_FOUND) {
        serial_puts("foreign-fuzz: no usable snapshot device\n");
        debug_exit(7);
    }
    coverage = device.coverage;
    coverage_mask = (uint32_t)(device.coverage_size - 1);
    serial_puts("foreign-fuzz: ready, coverage map ");
    serial_put_dec(device.coverage_size);
    serial_puts(" bytes\n");

    snap_command(&device, SNAP_CMD_SAVE);
    /* Every run starts here. */
    uint32_t length = snap_read(&device, SNAP_REG_INPUT_LEN);
    const volatile uint8_t *input = device.input;
    if (length > device.input_size)
        length = (uint32_t)device.input_size;
    if (length == 0 && builtin) {
        input = builtin;
        length = builtin_length;
    }
    run(input, length);
    done();
    debug_exit(10);
}
