/* foreign.c - the helpers of foreign.h, all at CPL3 (port I/O through IOPL=3). */
#include "foreign.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define DEBUG_EXIT_PORT 0xf4
#define PVH_MAGIC 0x336ec578u
#define E820_RAM 1
#define PCI_ADDRESS 0xcf8
#define PCI_DATA 0xcfc
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_HEADER_TYPE 0x0c
#define PCI_BAR(n) (0x10 + 4 * (n))

void serial_init(void)
{
    outb(COM1 + 1, 0x00); /* no interrupts */
    outb(COM1 + 3, 0x80); /* divisor latch */
    outb(COM1 + 0, 0x01); /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1 */
    outb(COM1 + 2, 0xc7); /* FIFOs on and cleared */
    outb(COM1 + 4, 0x03); /* DTR, RTS */
}

static void serial_putc(char c)
{
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {
    }
    outb(COM1, (uint8_t)c);
}

void serial_puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s);
    }
}

void serial_put_dec(uint64_t v)
{
    char digits[21];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        serial_putc(digits[--n]);
}

void serial_put_hex(uint64_t v)
{
    serial_puts("0x");
    int shift = 60;
    while (shift > 0 && !((v >> shift) & 0xf))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        serial_putc("0123456789abcdef"[(v >> shift) & 0xf]);
}

NORETURN void debug_exit(uint32_t code)
{
    outl(DEBUG_EXIT_PORT, code);
    for (;;)
        __asm__ volatile("pause");
}

const char *pvh_cmdline(const struct hvm_start_info *info)
{
    if (!info || info->magic != PVH_MAGIC || !info->cmdline_paddr || info->cmdline_paddr >= (1ull << 32))
        return "";
    return (const char *)(uintptr_t)info->cmdline_paddr;
}

bool pvh_ram_covers(const struct hvm_start_info *info, uint64_t start, uint64_t end)
{
    struct memmap_entry {
        uint64_t addr, size;
        uint32_t type, reserved;
    };
    if (!info || info->magic != PVH_MAGIC || info->version < 1 || !info->memmap_paddr ||
        info->memmap_paddr >= (1ull << 32) || info->memmap_entries > 128)
        return false;
    const struct memmap_entry *map = (const struct memmap_entry *)(uintptr_t)info->memmap_paddr;
    for (uint32_t i = 0; i < info->memmap_entries; i++)
        if (map[i].type == E820_RAM && map[i].addr <= start && end <= map[i].addr + map[i].size)
            return true;
    return false;
}

/* The value after `key=` (at the start or after a space), or NULL. */
static const char *cmdline_value(const char *cmdline, const char *key)
{
    size_t key_length = strlen(key);
    for (const char *at = cmdline; *at; at++) {
        if (at != cmdline && at[-1] != ' ')
            continue;
        size_t i = 0;
        while (i < key_length && at[i] == key[i])
            i++;
        if (i == key_length && at[i] == '=')
            return at + i + 1;
    }
    return NULL;
}

bool cmdline_number(const char *cmdline, const char *key, uint64_t *value)
{
    const char *at = cmdline_value(cmdline, key);
    if (!at)
        return false;
    unsigned base = 10;
    if (at[0] == '0' && at[1] == 'x') {
        base = 16;
        at += 2;
    }
    uint64_t result = 0;
    const char *start = at;
    for (; *at && *at != ' '; at++) {
        unsigned digit;
        if (*at >= '0' && *at <= '9')
            digit = (unsigned)(*at - '0');
        else if (base == 16 && *at >= 'a' && *at <= 'f')
            digit = (unsigned)(*at - 'a' + 10);
        else
            return false;
        if (result > (UINT64_MAX - digit) / base)
            return false;
        result = result * base + digit;
    }
    if (at == start)
        return false;
    *value = result;
    return true;
}

bool cmdline_is(const char *cmdline, const char *key, const char *word)
{
    const char *at = cmdline_value(cmdline, key);
    if (!at)
        return false;
    size_t i = 0;
    for (; word[i]; i++)
        if (at[i] != word[i])
            return false;
    return at[i] == 0 || at[i] == ' ';
}

static uint32_t pci_read(uint32_t slot, uint32_t function, uint32_t offset)
{
    outl(PCI_ADDRESS, 0x80000000u | slot << 11 | function << 8 | offset);
    return inl(PCI_DATA);
}

static void pci_write(uint32_t slot, uint32_t function, uint32_t offset, uint32_t value)
{
    outl(PCI_ADDRESS, 0x80000000u | slot << 11 | function << 8 | offset);
    outl(PCI_DATA, value);
}

/* Address and size of memory BAR `bar` (64-bit BARs span two slots), by the usual sizing: all
 * ones written, read back, restored, with memory decoding off meanwhile. */
static void pci_memory_bar(uint32_t slot, uint32_t function, unsigned bar, uint64_t *address, uint64_t *size)
{
    uint32_t low = pci_read(slot, function, PCI_BAR(bar));
    bool is_64 = (low & 0x6) == 0x4;
    uint32_t high = is_64 ? pci_read(slot, function, PCI_BAR(bar + 1)) : 0;
    uint32_t command = pci_read(slot, function, PCI_COMMAND) & 0xffff;
    pci_write(slot, function, PCI_COMMAND, command & ~PCI_COMMAND_MEMORY);
    pci_write(slot, function, PCI_BAR(bar), 0xffffffffu);
    uint64_t mask = pci_read(slot, function, PCI_BAR(bar)) & ~0xfu;
    pci_write(slot, function, PCI_BAR(bar), low);
    if (is_64) {
        pci_write(slot, function, PCI_BAR(bar + 1), 0xffffffffu);
        mask |= (uint64_t)pci_read(slot, function, PCI_BAR(bar + 1)) << 32;
        pci_write(slot, function, PCI_BAR(bar + 1), high);
    } else {
        mask |= 0xffffffff00000000ull;
    }
    pci_write(slot, function, PCI_COMMAND, command);
    *address = ((uint64_t)high << 32 | low) & ~0xfull;
    *size = mask ? ~mask + 1 : 0;
}

int snapshot_find(struct snapshot_device *device)
{
    for (uint32_t slot = 0; slot < 32; slot++) {
        if ((pci_read(slot, 0, 0) & 0xffff) == 0xffff)
            continue; /* empty slot (or no PCI at all) */
        uint32_t functions = (pci_read(slot, 0, PCI_HEADER_TYPE) >> 16) & 0x80 ? 8 : 1;
        for (uint32_t function = 0; function < functions; function++) {
            uint32_t id = pci_read(slot, function, 0);
            if ((id & 0xffff) != SNAP_VENDOR || id >> 16 != SNAP_DEVICE)
                continue;
            uint64_t registers, registers_size, input, input_size, coverage, coverage_size;
            pci_memory_bar(slot, function, 0, &registers, &registers_size);
            pci_memory_bar(slot, function, 2, &input, &input_size);
            pci_memory_bar(slot, function, 4, &coverage, &coverage_size);
            /* These page tables map 0..4 GiB only. */
            if (!registers || !input || !coverage || registers + registers_size > (1ull << 32) ||
                input + input_size > (1ull << 32) || coverage + coverage_size > (1ull << 32))
                return SNAPSHOT_UNUSABLE;
            device->registers = (volatile uint32_t *)(uintptr_t)registers;
            device->input = (const volatile uint8_t *)(uintptr_t)input;
            device->input_size = input_size;
            device->coverage = (volatile uint8_t *)(uintptr_t)coverage;
            device->coverage_size = coverage_size;
            if (snap_read(device, SNAP_REG_MAGIC) != SNAP_MAGIC)
                return SNAPSHOT_UNUSABLE;
            return SNAPSHOT_FOUND;
        }
    }
    return SNAPSHOT_ABSENT;
}

void page_tables_preset_accessed_dirty(void)
{
    /* Accessed in the table entries, Accessed and Dirty in the 2 MiB leaves. No TLB flush is
     * needed (nor possible at CPL3): setting these bits only spares the CPU its own writes. */
    foreign_pml4[0] |= PTE_ACCESSED;
    for (int i = 0; i < 4; i++)
        foreign_pdpt[i] |= PTE_ACCESSED;
    for (int i = 0; i < 4 * 512; i++)
        foreign_pd[i] |= PTE_ACCESSED | PTE_DIRTY;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
