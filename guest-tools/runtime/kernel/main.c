/* main.c - the kernel's boot sequence: memory map, PCI, page tables, GDT/TSS/IDT, enter CPL3.
 *
 * Runs once per boot, at CPL0 (emulated on kvm_pvm, so it is kept short). Everything the user
 * program reads is written here before the runtime's own page tables are loaded. */
#include "kernel.h"

/* Read-only for the user program, which finds it through rt_boot_info(). */
struct rt_boot_info rt_boot_info_page __attribute__((section(".rt_boot_info"), aligned(4096)));

#define SIZE_2M 0x200000ull
#define SIZE_1G 0x40000000ull
#define SIZE_4K 0x1000ull
/* Identity mapping with 4-level paging stops at the canonical-address hole. */
#define IDENTITY_LIMIT 0x0000800000000000ull

static NORETURN void boot_failure(const char *why)
{
    kputs("\nrt: boot failed: ");
    kputs(why);
    kputs("\nrt: exit code ");
    kput_dec(RT_EXIT_BOOT_ERROR);
    kputc('\n');
    kexit(RT_EXIT_BOOT_ERROR);
}

static bool in_ram(const struct machine_memory *mem, uint64_t start, uint64_t end)
{
    for (uint32_t i = 0; i < mem->count; i++)
        if (mem->ranges[i].start <= start && end <= mem->ranges[i].end)
            return true;
    return false;
}

/* What the kernel has mapped so far, to keep BARs from overlapping it (map_range needs that). */
#define MAX_MAPPED_RANGES (8 + RT_MAX_USER_REGIONS + RT_MAX_PCI_FUNCTIONS * 6)
static struct ram_range mapped[MAX_MAPPED_RANGES];
static uint32_t mapped_count, first_bar_range;

static bool map_and_record(uint64_t start, uint64_t end, uint64_t flags)
{
    if (mapped_count == MAX_MAPPED_RANGES || !map_range(start, end, flags))
        return false;
    mapped[mapped_count].start = start;
    mapped[mapped_count].end = end;
    mapped_count++;
    return true;
}

static void add_user_region(struct rt_boot_info *bi, uint64_t start, uint64_t end)
{
    if (end <= start)
        return;
    if (bi->user_region_count == RT_MAX_USER_REGIONS) {
        bi->warnings |= RT_WARN_REGIONS_TRUNCATED;
        return;
    }
    bi->user_regions[bi->user_region_count].start = start;
    bi->user_regions[bi->user_region_count].end = end;
    bi->user_region_count++;
}

/* Maps free RAM for the user program in 1 GiB steps, so that running out of page tables leaves a
 * usable prefix. Returns false once the pool is exhausted. */
static bool map_free_ram(struct rt_boot_info *bi, uint64_t start, uint64_t end)
{
    uint64_t mapped_end = start;
    while (mapped_end < end) {
        uint64_t step_end = (mapped_end & ~(SIZE_1G - 1)) + SIZE_1G;
        if (step_end > end)
            step_end = end;
        if (!map_range(mapped_end, step_end, PTE_USER | PTE_WRITE))
            break;
        mapped_end = step_end;
    }
    add_user_region(bi, start, mapped_end);
    if (mapped_end > start && mapped_count < MAX_MAPPED_RANGES) {
        mapped[mapped_count].start = start;
        mapped[mapped_count].end = mapped_end;
        mapped_count++;
    }
    if (mapped_end == end)
        return true;
    bi->warnings |= RT_WARN_RAM_UNMAPPED;
    return false;
}

static void map_bars(struct rt_boot_info *bi)
{
    first_bar_range = mapped_count;
    for (uint32_t i = 0; i < bi->pci_count; i++) {
        for (int b = 0; b < 6; b++) {
            struct rt_pci_bar *bar = &bi->pci[i].bars[b];
            if (!(bar->flags & RT_BAR_PRESENT) || (bar->flags & RT_BAR_IO) || bar->addr == 0)
                continue;
            uint64_t start = bar->addr & ~(SIZE_4K - 1);
            uint64_t end = (bar->addr + bar->size + SIZE_4K - 1) & ~(SIZE_4K - 1);
            if (end <= start || end > IDENTITY_LIMIT) {
                bi->warnings |= RT_WARN_BAR_UNMAPPED;
                continue;
            }
            /* Naturally aligned BARs rounded out to pages are either disjoint or nested: a BAR
             * inside the pages of an earlier one is already mapped; any other overlap is a
             * platform bug and the BAR stays unmapped. */
            bool already_mapped = false, conflict = false;
            for (uint32_t m = 0; m < mapped_count; m++) {
                if (start >= mapped[m].end || end <= mapped[m].start)
                    continue;
                if (m >= first_bar_range && start >= mapped[m].start && end <= mapped[m].end)
                    already_mapped = true;
                else
                    conflict = true;
            }
            /* Registers uncached; prefetchable BARs (the snapshot device's input and coverage
             * windows, backed by host RAM) write-back, since the fuzz loop lives in them. */
            uint64_t flags = PTE_USER | PTE_WRITE;
            if (!(bar->flags & RT_BAR_PREFETCHABLE))
                flags |= PTE_PCD | PTE_PWT;
            if (!conflict && (already_mapped || map_and_record(start, end, flags)))
                bar->flags |= RT_BAR_MAPPED;
            else
                bi->warnings |= RT_WARN_BAR_UNMAPPED;
        }
    }
}

static void build_page_tables(const struct machine_memory *mem, struct rt_boot_info *bi)
{
    uint64_t kernel_start = (uint64_t)(uintptr_t)__kernel_start;
    uint64_t kernel_end = (uint64_t)(uintptr_t)__kernel_end;
    uint64_t user_start = (uint64_t)(uintptr_t)__user_start;
    uint64_t user_ro_end = (uint64_t)(uintptr_t)__user_ro_end;
    uint64_t user_image_end = (uint64_t)(uintptr_t)__user_image_end;
    uint64_t stack_bottom = (uint64_t)(uintptr_t)__user_stack_bottom;
    uint64_t stack_top = (uint64_t)(uintptr_t)__user_stack_top;

    if (!in_ram(mem, kernel_start, kernel_end) || !in_ram(mem, user_start, stack_top))
        boot_failure("the runtime's image and stack do not fit in RAM");
    if (map_test_window()) {
        bi->test_window_pd = (uint64_t)(uintptr_t)test_window_pd_table;
        bi->test_window_pt = (uint64_t)(uintptr_t)test_window_pt_table;
    }
    /* Page 0 up to the kernel stays unmapped: NULL and small offsets from it fault.
     * The page below the stack is unmapped too: a stack overflow faults. */
    if (!map_and_record(kernel_start, kernel_end, PTE_WRITE) || !map_and_record(user_start, user_ro_end, PTE_USER) ||
        !map_and_record(user_ro_end, user_image_end, PTE_USER | PTE_WRITE) ||
        !map_and_record(stack_bottom, stack_top, PTE_USER | PTE_WRITE))
        boot_failure("cannot map the runtime's image");

    for (uint32_t i = 0; i < mem->count; i++) {
        uint64_t start = mem->ranges[i].start, end = mem->ranges[i].end;
        if (end <= stack_top)
            continue;
        if (start < stack_top)
            start = stack_top;
        if (end > IDENTITY_LIMIT)
            end = IDENTITY_LIMIT;
        if (start < end && !map_free_ram(bi, start, end))
            break;
    }
    map_bars(bi);
}

NORETURN void kernel_main(uint32_t protocol, uint64_t info)
{
    static struct machine_memory memory;
    struct rt_boot_info *bi = &rt_boot_info_page;

    bi->magic = RT_BOOT_INFO_MAGIC;
    bi->version = RT_BOOT_INFO_VERSION;
    bi->serial_tx_burst = serial_init();
    if (!parse_boot_info(protocol, info, &memory, bi))
        boot_failure("no usable memory map from the boot protocol");
    pci_scan(bi);
    build_page_tables(&memory, bi);
    load_cr3(page_tables_root());
    cpu_tables_load();
    fpu_sse_enable();
    pic_mask_all();
    enter_user((uint64_t)(uintptr_t)_ustart, (uint64_t)(uintptr_t)__user_stack_top, (uint64_t)(uintptr_t)bi);
}
