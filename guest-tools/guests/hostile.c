/*
 * hostile - a PRNG-driven guest that does what a hostile guest may do to the VMM's devices
 * between a SAVE and a RESTORE, and checks after every RESTORE that its own memory came back.
 *
 * Command line (all optional): seed=S rounds=N ports=P config=C regs=R writes=W buffer=PAGES
 *                              save_bars=B irq=0|1 verbose=0|1
 *   seed     PRNG seed (default 1); round r uses the stream seed + r, so a failing round can be
 *            replayed with the same seed
 *   save_bars where the snapshot device's BAR2/BAR4 are when the SAVE is taken (every RESTORE
 *            must bring that placement back): 0 where the kernel put them, 1 BAR2 over RAM, 2
 *            BAR4 inside BAR2, 3 BAR2 and BAR4 at one RAM address; default seed % 4
 *   rounds   restores to do (default 100)
 *   ports    random port accesses per round (default 48): half at the emulated devices' ports
 *            (COM1, i8042, CMOS, ACPI PM1, PCI 0xcf8-0xcff, 0x80), half anywhere in 0..0xffff;
 *            reads and writes of 1, 2 or 4 bytes with random values
 *   config   random PCI configuration writes per round (default 24): a random function (every
 *            one the kernel found, or any slot/function of bus 0), a random offset and width
 *            through 0xcf8/0xcfc; then the snapshot device's BARs are moved on purpose: BAR2
 *            and BAR4 over RAM, BAR4 inside BAR2 or on top of it, BAR0 over RAM, or anywhere
 *   regs     random snapshot-device register accesses per round (default 24): any offset of BAR0
 *            (mostly the first 64 bytes), width 1/2/4/8, random values; never a command
 *   writes   random 64-bit writes into the test buffer per round (default 64)
 *   buffer   pages in the test buffer (default 64), filled with a pattern before the SAVE
 *   irq      1: also write the interrupt controller and timer ports (PIC 0x20/0x21/0xa0/0xa1,
 *            ELCR 0x4d0/0x4d1, PIT 0x40-0x43, 0x61); off by default because a timer the guest
 *            programs and unmasks interrupts this runtime, which has no IDT entries for IRQs
 *            (exit 31), which is the guest's doing, not the VMM's
 *   verbose  1: print each round's BAR placement before its RESTORE
 *
 * Never written, because they end the VM legitimately: the debug-exit ports 0xf4-0xf7; at the
 * i8042 command port 0x64, the pulse-output commands 0xf0-0xff (0xfe resets) and 0xd1 (write
 * output port, whose bit 0 clear resets); at the ACPI PM1 control port 0x605, SLP_EN (bit 5 of
 * that byte: S5 powers off). Snapshot-device commands are written only on purpose: RESTORE ends
 * each round, and one round in eight ends with DONE instead (plain `snapvmm run` restores on
 * DONE).
 *
 * Each round, right after the SAVE returns (round = RESTORES): the test buffer must equal its
 * pattern (checksum against the one taken before the SAVE and recomputed from the pattern) and
 * a global set by every round must be back at its SAVE value. Then: buffer writes, register
 * accesses, port accesses, configuration writes and BAR moves, BAR0 and the command register
 * of the snapshot device put back (the RESTORE goes through BAR0), RESTORE.
 *
 * Ends with "hostile: seed=S rounds=N ok ..." and exit 0. Exit codes: 1 snapshot device
 * unusable; 2 bad command line; 3 no room for the buffer; 4 RESTORES out of range; 5 the test
 * buffer was not restored; 6 the global was not restored; 7 RESTORE/DONE returned.
 */
#include "rt.h"

enum failure {
    DEVICE = 1,
    BAD_ARGUMENTS = 2,
    NO_MEMORY = 3,
    BAD_ROUND = 4,
    BUFFER_NOT_RESTORED = 5,
    GLOBAL_NOT_RESTORED = 6,
    RESTORE_RETURNED = 7,
};

#define PAGE_SIZE 4096u
#define PAGE_WORDS 512u

struct options {
    uint64_t seed, rounds, ports, config, regs, writes, buffer_pages, save_bars, irq, verbose;
};

#define SAVE_BARS_FROM_SEED UINT64_MAX
static struct options options = {1, 100, 48, 24, 24, 64, 64, SAVE_BARS_FROM_SEED, 0, 0};
static uint64_t *buffer;
static uint64_t checksum_at_save;
/* 0 at the SAVE; every round sets it before it restores. */
static volatile uint64_t round_marker;

/* What the snapshot device looked like at boot, to put BAR0 back before each RESTORE. */
static const struct rt_pci_function *snapshot_function;
static uint32_t bar0_at_boot, command_at_boot;

/* ---- PRNG */

static uint64_t rng_state;

static uint64_t next_random(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t random_below(uint64_t bound)
{
    return bound ? next_random() % bound : 0;
}

/* ---- the test buffer */

static uint64_t pattern(uint64_t index)
{
    return (index + 1) * 0x9e3779b97f4a7c15ull ^ options.seed;
}

static uint64_t checksum(const uint64_t *words, uint64_t count)
{
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < count; i++)
        sum = (sum ^ words[i]) * 0x100000001b3ull + (sum >> 29);
    return sum;
}

static uint64_t expected_checksum(void)
{
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < options.buffer_pages * PAGE_WORDS; i++)
        sum = (sum ^ pattern(i)) * 0x100000001b3ull + (sum >> 29);
    return sum;
}

static int check_buffer(uint64_t round)
{
    uint64_t count = options.buffer_pages * PAGE_WORDS;
    uint64_t now = checksum(buffer, count);
    if (now == checksum_at_save && now == expected_checksum())
        return 0;
    for (uint64_t i = 0; i < count; i++)
        if (buffer[i] != pattern(i)) {
            rt_printf("hostile: FAIL: round %lu: buffer word %lu at %p is 0x%lx, expected 0x%lx\n",
                      (unsigned long)round, (unsigned long)i, (void *)&buffer[i], (unsigned long)buffer[i],
                      (unsigned long)pattern(i));
            return BUFFER_NOT_RESTORED;
        }
    rt_printf("hostile: FAIL: round %lu: buffer checksum 0x%lx, at the SAVE 0x%lx\n", (unsigned long)round,
              (unsigned long)now, (unsigned long)checksum_at_save);
    return BUFFER_NOT_RESTORED;
}

static void scribble_buffer(void)
{
    uint64_t count = options.buffer_pages * PAGE_WORDS;
    for (uint64_t i = 0; i < options.writes; i++)
        buffer[random_below(count)] = next_random();
}

/* ---- snapshot-device registers */

static void mmio_write(volatile uint8_t *at, unsigned width, uint64_t value)
{
    switch (width) {
    case 1: __asm__ volatile("movb %1, %0" : "=m"(*(volatile uint8_t *)at) : "q"((uint8_t)value)); break;
    case 2: __asm__ volatile("movw %1, %0" : "=m"(*(volatile uint16_t *)at) : "r"((uint16_t)value)); break;
    case 4: __asm__ volatile("movl %1, %0" : "=m"(*(volatile uint32_t *)at) : "r"((uint32_t)value)); break;
    default: __asm__ volatile("movq %1, %0" : "=m"(*(volatile uint64_t *)at) : "r"(value)); break;
    }
}

static void mmio_read(volatile uint8_t *at, unsigned width)
{
    uint64_t value;
    switch (width) {
    case 1: __asm__ volatile("movzbq %1, %0" : "=r"(value) : "m"(*(volatile uint8_t *)at)); break;
    case 2: __asm__ volatile("movzwq %1, %0" : "=r"(value) : "m"(*(volatile uint16_t *)at)); break;
    case 4: __asm__ volatile("movl %1, %k0" : "=r"(value) : "m"(*(volatile uint32_t *)at)); break;
    default: __asm__ volatile("movq %1, %0" : "=r"(value) : "m"(*(volatile uint64_t *)at)); break;
    }
    (void)value;
}

static void poke_registers(volatile uint8_t *regs)
{
    for (uint64_t i = 0; i < options.regs; i++) {
        unsigned width = 1u << random_below(4);
        uint64_t offset = random_below(4) ? random_below(0x40) : random_below(SNAPSHOT_REGISTERS_SIZE - 8);
        uint64_t value = next_random();
        /* A write covering all of COMMAND (offset 0) would be a command: keep bit 8 clear so the
         * value is never 0x1xx. */
        if (offset == 0 && width >= 4)
            value &= ~0x100ull;
        if (random_below(3))
            mmio_write(regs + offset, width, value);
        else
            mmio_read(regs + offset, width);
    }
}

/* ---- ports */

static bool irq_port(uint16_t port)
{
    return port == 0x20 || port == 0x21 || port == 0xa0 || port == 0xa1 || port == 0x4d0 || port == 0x4d1 ||
           (port >= 0x40 && port <= 0x43) || port == 0x61;
}

/* Makes a port write harmless where it would end the VM on purpose; false: do not write. The
 * VMM routes an access to the device whose range holds its first port. */
static bool defuse_port_write(uint16_t port, unsigned width, uint32_t *value)
{
    if (port >= 0xf4 && port <= 0xf7)
        return false;
    if (!options.irq && irq_port(port))
        return false;
    /* The i8042 and ACPI PM devices take a wide access byte by byte, at consecutive ports. */
    for (unsigned byte = 0; byte < width; byte++) {
        unsigned shift = 8 * byte;
        uint8_t at = (uint8_t)(*value >> shift);
        if (port + byte == 0x64 && (at >= 0xf0 || at == 0xd1))
            *value &= ~(0xffu << shift);
        if (port + byte == 0x605)
            *value &= ~(0x20u << shift);
    }
    return true;
}

static uint16_t random_port(void)
{
    static const struct {
        uint16_t base, length;
    } devices[] = {
        {0x3f8, 8}, {0x60, 5}, {0x70, 2}, {0x600, 6}, {0xcf8, 8}, {0x80, 1}, {0x20, 2}, {0x40, 4},
    };
    if (random_below(2))
        return (uint16_t)next_random();
    unsigned which = (unsigned)random_below(sizeof(devices) / sizeof(devices[0]));
    return (uint16_t)(devices[which].base + random_below(devices[which].length));
}

static void poke_ports(void)
{
    for (uint64_t i = 0; i < options.ports; i++) {
        uint16_t port = random_port();
        unsigned width = 1u << random_below(3);
        uint32_t value = (uint32_t)next_random();
        /* The TSS I/O bitmap ends at port 0xffff: an access past it is a #GP in the guest. */
        if ((uint32_t)port + width > 0x10000u)
            width = 1;
        if (random_below(4) == 0) {
            if ((port >= 0xf4 && port <= 0xf7) || (!options.irq && irq_port(port)))
                continue;
            if (width == 1)
                (void)rt_inb(port);
            else if (width == 2)
                (void)rt_inw(port);
            else
                (void)rt_inl(port);
            continue;
        }
        if (!defuse_port_write(port, width, &value))
            continue;
        if (width == 1)
            rt_outb(port, (uint8_t)value);
        else if (width == 2)
            rt_outw(port, (uint16_t)value);
        else
            rt_outl(port, value);
    }
}

/* ---- PCI configuration */

static uint32_t config_address(unsigned slot, unsigned function, unsigned offset)
{
    return 0x80000000u | (uint32_t)slot << 11 | (uint32_t)function << 8 | (offset & 0xfcu);
}

static void config_write(unsigned slot, unsigned function, unsigned offset, unsigned width, uint32_t value)
{
    rt_outl(0xcf8, config_address(slot, function, offset));
    uint16_t data_port = (uint16_t)(0xcfc + (offset & 3u));
    if (width == 1)
        rt_outb(data_port, (uint8_t)value);
    else if (width == 2)
        rt_outw(data_port, (uint16_t)value);
    else
        rt_outl(data_port, value);
}

static void snapshot_config_write(unsigned offset, uint32_t value)
{
    config_write(snapshot_function->slot, snapshot_function->function, offset, 4, value);
}

static void poke_config(void)
{
    size_t count = rt_pci_count();
    for (uint64_t i = 0; i < options.config; i++) {
        unsigned slot, function;
        if (count && random_below(4)) {
            const struct rt_pci_function *f = rt_pci_function_at((size_t)random_below(count));
            slot = f->slot;
            function = f->function;
        } else {
            slot = (unsigned)random_below(32);
            function = (unsigned)random_below(8);
        }
        unsigned width = 1u << random_below(3);
        unsigned offset = (unsigned)random_below(256) & ~(width - 1);
        config_write(slot, function, offset, width, (uint32_t)next_random());
    }
}

/* A size-aligned address inside RAM (below 4 GiB) for a BAR of `size` bytes, or 0. */
static uint64_t address_over_ram(uint64_t size)
{
    uint64_t top = rt_boot_info()->ram_bytes;
    if (top > 0xc0000000ull)
        top = 0xc0000000ull;
    if (size == 0 || size > top)
        return 0;
    return random_below(top / size) * size;
}

static void place_bar64(unsigned bar, uint64_t address)
{
    snapshot_config_write(0x10 + 4 * bar, (uint32_t)address);
    snapshot_config_write(0x14 + 4 * bar, (uint32_t)(address >> 32));
}

/* Moves BARs where a careful guest would not. Returns a short description for verbose output. */
static const char *move_bars(uint64_t *bar2, uint64_t *bar4)
{
    const struct rt_pci_bar *bars = snapshot_function->bars;
    uint64_t size2 = bars[SNAPSHOT_BAR_INPUT].size, size4 = bars[SNAPSHOT_BAR_COVERAGE].size;
    uint64_t larger = size2 > size4 ? size2 : size4;
    const char *what;
    *bar2 = bars[SNAPSHOT_BAR_INPUT].addr;
    *bar4 = bars[SNAPSHOT_BAR_COVERAGE].addr;
    switch (random_below(7)) {
    case 0:
        what = "BAR2 over RAM";
        *bar2 = address_over_ram(size2);
        break;
    case 1:
        what = "BAR4 over RAM";
        *bar4 = address_over_ram(size4);
        break;
    case 2:
        what = "BAR4 on BAR2";
        *bar4 = *bar2 & ~(size4 - 1);
        break;
    case 3:
        what = "BAR2 and BAR4 at one RAM address";
        *bar2 = *bar4 = address_over_ram(larger);
        break;
    case 4:
        what = "BAR0 over RAM, then back";
        snapshot_config_write(0x10, (uint32_t)address_over_ram(SNAPSHOT_REGISTERS_SIZE));
        break;
    case 5:
        what = "BAR2 and BAR4 anywhere";
        *bar2 = next_random() & 0x000fffffffffffffull;
        *bar4 = next_random() & 0x000fffffffffffffull;
        break;
    default:
        what = "BARs left where the random writes put them";
        return what;
    }
    if (size2)
        place_bar64(SNAPSHOT_BAR_INPUT, *bar2);
    if (size4)
        place_bar64(SNAPSHOT_BAR_COVERAGE, *bar4);
    return what;
}

/* Where BAR2/BAR4 sit at the SAVE (option save_bars). */
static const char *place_bars_for_save(void)
{
    const struct rt_pci_bar *bars = snapshot_function->bars;
    uint64_t size2 = bars[SNAPSHOT_BAR_INPUT].size, size4 = bars[SNAPSHOT_BAR_COVERAGE].size;
    uint64_t larger = size2 > size4 ? size2 : size4;
    rng_state = options.seed ^ 0x5a5e5a5e5a5e5a5eull;
    switch (options.save_bars) {
    case 1:
        place_bar64(SNAPSHOT_BAR_INPUT, address_over_ram(size2));
        return "BAR2 over RAM";
    case 2:
        place_bar64(SNAPSHOT_BAR_COVERAGE, bars[SNAPSHOT_BAR_INPUT].addr & ~(size4 - 1));
        return "BAR4 inside BAR2";
    case 3: {
        uint64_t address = address_over_ram(larger);
        place_bar64(SNAPSHOT_BAR_INPUT, address);
        place_bar64(SNAPSHOT_BAR_COVERAGE, address);
        return "BAR2 and BAR4 at one RAM address";
    }
    default:
        return "BARs where the kernel put them";
    }
}

/* The RESTORE goes through BAR0 at its boot address, with memory decoding on. */
static void put_bar0_back(void)
{
    snapshot_config_write(0x10, bar0_at_boot);
    config_write(snapshot_function->slot, snapshot_function->function, 0x04, 2, command_at_boot | 0x2u);
}

/* COM1 as the kernel set it up (8N1, no loopback, FIFO), so verbose lines come out. */
static void put_serial_back(void)
{
    rt_outb(0x3f9, 0x00);
    rt_outb(0x3fb, 0x03);
    rt_outb(0x3fc, 0x03);
    rt_outb(0x3fa, 0x07);
}

/* ---- command line */

static bool parse_u64(const char *s, size_t length, uint64_t *value)
{
    uint64_t v = 0;
    if (length == 0)
        return false;
    for (size_t i = 0; i < length; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned digit = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *value = v;
    return true;
}

static bool parse_options(const char *cmdline)
{
    static const struct {
        const char *name;
        uint64_t *value;
    } keys[] = {
        {"seed", &options.seed},     {"rounds", &options.rounds},        {"ports", &options.ports},
        {"config", &options.config}, {"regs", &options.regs},            {"writes", &options.writes},
        {"buffer", &options.buffer_pages}, {"irq", &options.irq},        {"verbose", &options.verbose},
        {"save_bars", &options.save_bars},
    };
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *token = p;
        while (*p && *p != ' ')
            p++;
        size_t length = (size_t)(p - token);
        bool known = false;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            size_t name_length = strlen(keys[k].name);
            if (length > name_length && strncmp(token, keys[k].name, name_length) == 0 && token[name_length] == '=') {
                if (!parse_u64(token + name_length + 1, length - name_length - 1, keys[k].value))
                    return false;
                known = true;
            }
        }
        if (!known)
            return false;
    }
    if (options.save_bars == SAVE_BARS_FROM_SEED)
        options.save_bars = options.seed % 4;
    return options.save_bars <= 3 && options.irq <= 1 && options.verbose <= 1 && options.buffer_pages > 0 &&
           options.buffer_pages <= (1u << 20) && options.rounds < (1ull << 32) && options.ports <= 1000000 &&
           options.config <= 1000000 && options.regs <= 1000000 && options.writes <= 100000000;
}

/* ---- main */

int main(void)
{
    if (!parse_options(rt_cmdline())) {
        rt_printf("hostile: bad command line '%s'\n"
                  "usage: seed=S rounds=N ports=P config=C regs=R writes=W buffer=PAGES save_bars=0-3 irq=0|1 "
                  "verbose=0|1\n",
                  rt_cmdline());
        return BAD_ARGUMENTS;
    }
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_printf("hostile: %s\n", rt_snapshot_strerror(error));
        return DEVICE;
    }
    snapshot_function = rt_pci_find(SNAPSHOT_DEVICE_VENDOR_ID, SNAPSHOT_DEVICE_DEVICE_ID);
    buffer = rt_alloc_pages(options.buffer_pages);
    if (!snapshot_function || !buffer) {
        rt_printf("hostile: no room for %lu buffer pages\n", (unsigned long)options.buffer_pages);
        return NO_MEMORY;
    }
    bar0_at_boot = rt_pci_config_read32(snapshot_function, 0x10);
    command_at_boot = rt_pci_config_read32(snapshot_function, 0x04) & 0xffffu;
    for (uint64_t i = 0; i < options.buffer_pages * PAGE_WORDS; i++)
        buffer[i] = pattern(i);
    checksum_at_save = checksum(buffer, options.buffer_pages * PAGE_WORDS);
    round_marker = 0;
    const char *placement = place_bars_for_save();
    rt_printf("hostile: seed=%lu rounds=%lu ports=%lu config=%lu regs=%lu writes=%lu buffer=%lu pages at %p irq=%lu\n"
              "hostile: at the SAVE: %s (BAR2 0x%x%08x, BAR4 0x%x%08x)\n",
              (unsigned long)options.seed, (unsigned long)options.rounds, (unsigned long)options.ports,
              (unsigned long)options.config, (unsigned long)options.regs, (unsigned long)options.writes,
              (unsigned long)options.buffer_pages, (void *)buffer, (unsigned long)options.irq, placement,
              rt_pci_config_read32(snapshot_function, 0x1c), rt_pci_config_read32(snapshot_function, 0x18) & ~0xfu,
              rt_pci_config_read32(snapshot_function, 0x24), rt_pci_config_read32(snapshot_function, 0x20) & ~0xfu);
    volatile uint8_t *regs = (volatile uint8_t *)rt_snapshot_registers();

    /* ---- the snapshot; everything below runs once per round */
    uint64_t round = rt_snapshot_save();
    if (round > options.rounds) {
        rt_printf("hostile: FAIL: RESTORES %lu beyond %lu rounds\n", (unsigned long)round,
                  (unsigned long)options.rounds);
        return BAD_ROUND;
    }
    if (round_marker != 0) {
        rt_printf("hostile: FAIL: round %lu: global 0x%lx, expected 0\n", (unsigned long)round,
                  (unsigned long)round_marker);
        return GLOBAL_NOT_RESTORED;
    }
    int failure = check_buffer(round);
    if (failure)
        return failure;
    if (round == options.rounds) {
        rt_printf("hostile: seed=%lu rounds=%lu save_bars=%lu ok: per round %lu port, %lu config, %lu register accesses, "
                  "%lu buffer writes, BAR moves; memory checked after every restore\n",
                  (unsigned long)options.seed, (unsigned long)round, (unsigned long)options.save_bars,
                  (unsigned long)options.ports,
                  (unsigned long)options.config, (unsigned long)options.regs, (unsigned long)options.writes);
        return 0;
    }

    rng_state = options.seed * 0x100000001b3ull + round;
    round_marker = round + 1;
    scribble_buffer();
    poke_registers(regs);
    poke_ports();
    poke_config();
    uint64_t bar2, bar4;
    const char *moved = move_bars(&bar2, &bar4);
    put_bar0_back();
    bool use_done = random_below(8) == 0;
    if (options.verbose) {
        put_serial_back();
        rt_printf("hostile: round %lu: %s (BAR2 0x%lx, BAR4 0x%lx), %s\n", (unsigned long)round, moved,
                  (unsigned long)bar2, (unsigned long)bar4, use_done ? "DONE" : "RESTORE");
    }
    snapshot_command(regs, use_done ? SNAPSHOT_CMD_DONE : SNAPSHOT_CMD_RESTORE);
    put_serial_back();
    rt_printf("hostile: FAIL: round %lu: %s returned, STATUS 0x%x\n", (unsigned long)round,
              use_done ? "DONE" : "RESTORE", snapshot_reg_read(regs, SNAPSHOT_REG_STATUS));
    return RESTORE_RETURNED;
}
