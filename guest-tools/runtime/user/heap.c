/* heap.c - page allocation from the heap (user_regions[0]). */
#include "rt.h"

#define PAGE_SIZE 4096u

static uint64_t heap_next, heap_end;

void *rt_alloc_pages(size_t pages)
{
    const struct rt_boot_info *info = rt_boot_info();
    if (heap_end == 0) {
        if (info->user_region_count == 0)
            return NULL;
        heap_next = (info->user_regions[0].start + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
        heap_end = info->user_regions[0].end;
    }
    if (pages > (heap_end - heap_next) / PAGE_SIZE)
        return NULL;
    void *block = (void *)(uintptr_t)heap_next;
    heap_next += (uint64_t)pages * PAGE_SIZE;
    return block;
}
