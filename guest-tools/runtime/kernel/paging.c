/* paging.c - the runtime's identity-mapped page tables.
 *
 * Every entry has its Accessed (and, in leaves, Dirty) bit preset, so that the CPU's page walk
 * never writes to a page-table page: snapshots track dirty pages, and under a shadow MMU a
 * write to a page-table page is also expensive. Tables come from a zeroed pool in .bss. */
#include "kernel.h"

#define POOL_PAGES 96
#define ENTRIES 512
#define ADDRESS_MASK 0x000ffffffffff000ull
#define SIZE_2M 0x200000ull
#define SIZE_4K 0x1000ull
#define TABLE_FLAGS (PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_ACCESSED)

static uint64_t pool[POOL_PAGES][ENTRIES] __attribute__((aligned(4096)));
static uint32_t pool_used;
static uint64_t *pml4;

static uint64_t *alloc_table(void)
{
    if (pool_used == POOL_PAGES)
        return NULL;
    return pool[pool_used++];
}

/* The table that entry `index` of `table` points to, created if absent; NULL if the entry is a
 * large page or the pool is empty. */
static uint64_t *next_table(uint64_t *table, unsigned index)
{
    uint64_t entry = table[index];
    if (entry & PTE_PRESENT)
        return (entry & PTE_LARGE) ? NULL : (uint64_t *)(uintptr_t)(entry & ADDRESS_MASK);
    uint64_t *next = alloc_table();
    if (next)
        table[index] = (uint64_t)(uintptr_t)next | TABLE_FLAGS;
    return next;
}

/* Writes `count` consecutive leaf entries; the loop is unrolled because every instruction here is
 * emulated on kvm_pvm (~0.5 us each) and a BAR can take hundreds of entries. */
static void fill_entries(uint64_t *entry, unsigned count, uint64_t value, uint64_t step)
{
#pragma GCC unroll 8
    for (unsigned i = 0; i < count; i++) {
        entry[i] = value;
        value += step;
    }
}

bool map_range(uint64_t start, uint64_t end, uint64_t leaf_flags)
{
    if (!pml4 && !(pml4 = alloc_table()))
        return false;
    uint64_t flags = leaf_flags | PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
    uint64_t addr = start & ~(SIZE_4K - 1);
    while (addr < end) {
        uint64_t *pdpt = next_table(pml4, (addr >> 39) & 511);
        uint64_t *pd = pdpt ? next_table(pdpt, (addr >> 30) & 511) : NULL;
        if (!pd)
            return false;
        unsigned index = (addr >> 21) & 511;
        if ((addr & (SIZE_2M - 1)) == 0 && end - addr >= SIZE_2M) {
            uint64_t count = (end - addr) / SIZE_2M;
            if (count > ENTRIES - index)
                count = ENTRIES - index;
            fill_entries(&pd[index], (unsigned)count, addr | flags | PTE_LARGE, SIZE_2M);
            addr += count * SIZE_2M;
            continue;
        }
        uint64_t *pt = next_table(pd, index);
        if (!pt)
            return false;
        index = (addr >> 12) & 511;
        uint64_t count = (end - addr + SIZE_4K - 1) / SIZE_4K;
        if (count > ENTRIES - index)
            count = ENTRIES - index;
        fill_entries(&pt[index], (unsigned)count, addr | flags, SIZE_4K);
        addr += count * SIZE_4K;
    }
    return true;
}

/* Read by the RT_SYS_SET_PTE/PDE handlers in entry.S. */
uint64_t *test_window_pd_table, *test_window_pt_table;

bool map_test_window(void)
{
    if (!pml4 && !(pml4 = alloc_table()))
        return false;
    uint64_t base = RT_TEST_WINDOW_BASE;
    uint64_t *pdpt = next_table(pml4, (base >> 39) & 511);
    uint64_t *pd = pdpt ? next_table(pdpt, (base >> 30) & 511) : NULL;
    uint64_t *pt = pd ? next_table(pd, (base >> 21) & 511) : NULL;
    if (!pt)
        return false;
    test_window_pd_table = pd;
    test_window_pt_table = pt;
    return true;
}

uint64_t page_tables_root(void)
{
    return (uint64_t)(uintptr_t)pml4;
}
