/* boot_info.c - read the memory map and command line from the boot protocol's structure. */
#include "kernel.h"

/* Linux boot_params ("zero page") offsets, see Documentation/arch/x86/zero-page.rst */
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
#define E820_ENTRY_SIZE 20
#define E820_RAM 1

/* PVH hvm_start_info, see xen/include/public/arch-x86/hvm/start_info.h */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};

/* The boot-time identity map covers the first 4 GiB only. */
#define BOOT_MAPPED_LIMIT 0x100000000ull
#define PAGE_SIZE 4096ull

static void add_ram(struct machine_memory *mem, uint64_t addr, uint64_t size)
{
    uint64_t start = (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    uint64_t end = (addr + size) & ~(PAGE_SIZE - 1);
    if (size == 0 || addr + size < addr || end <= start)
        return;
    /* insert sorted; merge with overlapping or touching neighbours */
    uint32_t i = 0;
    while (i < mem->count && mem->ranges[i].end < start)
        i++;
    if (i < mem->count && mem->ranges[i].start <= end) {
        struct ram_range *r = &mem->ranges[i];
        if (start < r->start)
            r->start = start;
        if (end > r->end)
            r->end = end;
        while (i + 1 < mem->count && mem->ranges[i + 1].start <= r->end) {
            if (mem->ranges[i + 1].end > r->end)
                r->end = mem->ranges[i + 1].end;
            for (uint32_t j = i + 1; j + 1 < mem->count; j++)
                mem->ranges[j] = mem->ranges[j + 1];
            mem->count--;
        }
        return;
    }
    if (mem->count == KERNEL_MAX_RAM_RANGES)
        return;
    for (uint32_t j = mem->count; j > i; j--)
        mem->ranges[j] = mem->ranges[j - 1];
    mem->ranges[i].start = start;
    mem->ranges[i].end = end;
    mem->count++;
}

static void copy_cmdline(uint64_t paddr, struct rt_boot_info *out)
{
    if (paddr == 0 || paddr >= BOOT_MAPPED_LIMIT - RT_CMDLINE_MAX)
        return;
    const char *src = (const char *)(uintptr_t)paddr;
    size_t i = 0;
    while (i + 1 < RT_CMDLINE_MAX && src[i]) {
        out->cmdline[i] = src[i];
        i++;
    }
    out->cmdline[i] = 0;
}

static bool parse_linux_boot_params(uint64_t info, struct machine_memory *mem, struct rt_boot_info *out)
{
    if (info == 0 || info >= BOOT_MAPPED_LIMIT - 4096)
        return false;
    const uint8_t *bp = (const uint8_t *)(uintptr_t)info;
    uint32_t entries = bp[BP_E820_ENTRIES];
    if (entries > BP_E820_MAX)
        entries = BP_E820_MAX;
    for (uint32_t i = 0; i < entries; i++) {
        const uint8_t *e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;
        uint64_t addr, size;
        uint32_t type;
        __builtin_memcpy(&addr, e, 8);
        __builtin_memcpy(&size, e + 8, 8);
        __builtin_memcpy(&type, e + 16, 4);
        if (type == E820_RAM)
            add_ram(mem, addr, size);
    }
    uint32_t cmd_lo, cmd_hi;
    __builtin_memcpy(&cmd_lo, bp + BP_CMD_LINE_PTR, 4);
    __builtin_memcpy(&cmd_hi, bp + BP_EXT_CMD_LINE_PTR, 4);
    copy_cmdline(((uint64_t)cmd_hi << 32) | cmd_lo, out);
    return mem->count > 0;
}

static bool parse_pvh_start_info(uint64_t info, struct machine_memory *mem, struct rt_boot_info *out)
{
    if (info == 0 || info >= BOOT_MAPPED_LIMIT - sizeof(struct hvm_start_info))
        return false;
    const struct hvm_start_info *si = (const struct hvm_start_info *)(uintptr_t)info;
    if (si->magic != HVM_START_MAGIC || si->version < 1)
        return false;
    uint64_t count = si->memmap_entries;
    if (count > 128)
        count = 128;
    if (si->memmap_paddr == 0 ||
        si->memmap_paddr >= BOOT_MAPPED_LIMIT - count * sizeof(struct hvm_memmap_entry))
        return false;
    const struct hvm_memmap_entry *map = (const struct hvm_memmap_entry *)(uintptr_t)si->memmap_paddr;
    for (uint64_t i = 0; i < count; i++)
        if (map[i].type == E820_RAM)
            add_ram(mem, map[i].addr, map[i].size);
    copy_cmdline(si->cmdline_paddr, out);
    return mem->count > 0;
}

bool parse_boot_info(uint32_t protocol, uint64_t info, struct machine_memory *mem, struct rt_boot_info *out)
{
    bool ok;
    mem->count = 0;
    if (protocol == RT_BOOT_LINUX64)
        ok = parse_linux_boot_params(info, mem, out);
    else if (protocol == RT_BOOT_PVH)
        ok = parse_pvh_start_info(info, mem, out);
    else
        ok = false;
    if (!ok)
        return false;
    out->boot_protocol = protocol;
    out->ram_bytes = 0;
    for (uint32_t i = 0; i < mem->count; i++)
        out->ram_bytes += mem->ranges[i].end - mem->ranges[i].start;
    out->ram_top = mem->ranges[mem->count - 1].end;
    return true;
}
