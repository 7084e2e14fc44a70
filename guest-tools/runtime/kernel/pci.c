/* pci.c - enumerate bus 0 through configuration mechanism #1 and size the BARs.
 *
 * Every config access is a port exit (~13 us from CPL0 on kvm_pvm), so the address register is
 * only rewritten when it changes. */
#include "kernel.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define PCI_COMMAND 0x04
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_BAR0 0x10

static uint32_t current_address;

static void select_register(uint32_t slot, uint32_t function, uint32_t offset)
{
    uint32_t address = 0x80000000u | (slot << 11) | (function << 8) | (offset & 0xfc);
    if (address != current_address) {
        outl(PCI_CONFIG_ADDRESS, address);
        current_address = address;
    }
}

static uint32_t config_read(uint32_t slot, uint32_t function, uint32_t offset)
{
    select_register(slot, function, offset);
    return inl(PCI_CONFIG_DATA);
}

static void config_write(uint32_t slot, uint32_t function, uint32_t offset, uint32_t value)
{
    select_register(slot, function, offset);
    outl(PCI_CONFIG_DATA, value);
}

/* Sizes BAR `index` (and its upper half for a 64-bit BAR); returns how many slots it used. */
static int size_bar(uint32_t slot, uint32_t function, int index, struct rt_pci_bar *bars)
{
    uint32_t offset = PCI_BAR0 + 4 * (uint32_t)index;
    uint32_t original = config_read(slot, function, offset);
    config_write(slot, function, offset, 0xffffffffu);
    uint32_t mask = config_read(slot, function, offset);
    config_write(slot, function, offset, original);
    struct rt_pci_bar *bar = &bars[index];

    if (original & 1) { /* I/O */
        uint32_t size_mask = mask & ~3u;
        if (size_mask == 0)
            return 1;
        if ((size_mask & 0xffff0000u) == 0)
            size_mask |= 0xffff0000u; /* 16-bit decoders leave the upper half zero */
        bar->addr = original & ~3u;
        bar->size = (uint64_t)(~size_mask + 1);
        bar->flags = RT_BAR_PRESENT | RT_BAR_IO;
        return 1;
    }

    uint64_t addr = original & ~0xfu;
    uint64_t size_mask = mask & ~0xfu;
    uint32_t flags = RT_BAR_PRESENT;
    int used = 1;
    if (original & 0x8)
        flags |= RT_BAR_PREFETCHABLE;
    if (((original >> 1) & 3) == 2 && index < 5) {
        uint32_t original_high = config_read(slot, function, offset + 4);
        config_write(slot, function, offset + 4, 0xffffffffu);
        uint32_t mask_high = config_read(slot, function, offset + 4);
        config_write(slot, function, offset + 4, original_high);
        addr |= (uint64_t)original_high << 32;
        size_mask |= (uint64_t)mask_high << 32;
        flags |= RT_BAR_MEM64;
        used = 2;
    } else {
        size_mask |= 0xffffffff00000000ull;
    }
    if ((size_mask & 0xffffffffull) == 0 && !(flags & RT_BAR_MEM64))
        return used;
    uint64_t size = ~size_mask + 1;
    if (size == 0)
        return used;
    bar->addr = addr;
    bar->size = size;
    bar->flags = flags;
    return used;
}

static void scan_function(uint32_t slot, uint32_t function, uint32_t id, struct rt_boot_info *out)
{
    if (out->pci_count == RT_MAX_PCI_FUNCTIONS) {
        out->warnings |= RT_WARN_PCI_TRUNCATED;
        return;
    }
    struct rt_pci_function *f = &out->pci[out->pci_count++];
    uint32_t class_rev = config_read(slot, function, 0x08);
    uint32_t header = config_read(slot, function, 0x0c);
    uint32_t irq = config_read(slot, function, 0x3c);
    f->bus = 0;
    f->slot = (uint8_t)slot;
    f->function = (uint8_t)function;
    f->vendor_id = (uint16_t)id;
    f->device_id = (uint16_t)(id >> 16);
    f->revision = (uint8_t)class_rev;
    f->prog_if = (uint8_t)(class_rev >> 8);
    f->subclass = (uint8_t)(class_rev >> 16);
    f->class_code = (uint8_t)(class_rev >> 24);
    f->header_type = (uint8_t)(header >> 16);
    f->irq_line = (uint8_t)irq;
    f->irq_pin = (uint8_t)(irq >> 8);

    int bar_count = (f->header_type & 0x7f) == 0 ? 6 : (f->header_type & 0x7f) == 1 ? 2 : 0;
    if (bar_count == 0)
        return;
    /* Decoding stays off while the BARs hold all-ones. */
    uint32_t command = config_read(slot, function, PCI_COMMAND);
    config_write(slot, function, PCI_COMMAND, command & 0xffffu & ~(uint32_t)(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
    uint32_t enable = 0;
    for (int i = 0; i < bar_count;) {
        i += size_bar(slot, function, i, f->bars);
    }
    for (int i = 0; i < bar_count; i++) {
        if ((f->bars[i].flags & RT_BAR_PRESENT) && f->bars[i].addr != 0)
            enable |= (f->bars[i].flags & RT_BAR_IO) ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
    }
    /* Writing the low 16 bits leaves the status register's write-1-to-clear bits alone. */
    config_write(slot, function, PCI_COMMAND, (command & 0xffffu) | enable);
}

void pci_scan(struct rt_boot_info *out)
{
    current_address = 0;
    for (uint32_t slot = 0; slot < 32; slot++) {
        uint32_t id = config_read(slot, 0, 0x00);
        if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
            continue;
        bool multi_function = (config_read(slot, 0, 0x0c) >> 16) & 0x80;
        scan_function(slot, 0, id, out);
        if (!multi_function)
            continue;
        for (uint32_t function = 1; function < 8; function++) {
            uint32_t fid = config_read(slot, function, 0x00);
            if ((fid & 0xffff) != 0xffff && (fid & 0xffff) != 0)
                scan_function(slot, function, fid, out);
        }
    }
}
