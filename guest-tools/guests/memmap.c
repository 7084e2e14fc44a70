/*
 * memmap - prints the memory the kernel gave the program and checks that it is usable:
 * writes and reads back the first and last word of every user RAM region (RAM above 4 GiB
 * included) and of the user stack. Exits 0, or 1 if a read-back differs.
 */
#include "rt.h"

extern char __user_start[], __user_image_end[], __user_stack_bottom[], __user_stack_top[];

static int check_word(volatile uint64_t *word)
{
    uint64_t pattern = 0x5a5a000000000000ull ^ (uint64_t)(uintptr_t)word;
    *word = pattern;
    return *word == pattern;
}

int main(void)
{
    const struct rt_boot_info *info = rt_boot_info();
    int failures = 0;
    rt_printf("memmap: ram %lu KiB, top 0x%lx, boot protocol %u, warnings 0x%x\n",
              (unsigned long)(info->ram_bytes >> 10), (unsigned long)info->ram_top, info->boot_protocol,
              info->warnings);
    rt_printf("memmap: image 0x%lx-0x%lx stack 0x%lx-0x%lx\n", (unsigned long)(uintptr_t)__user_start,
              (unsigned long)(uintptr_t)__user_image_end, (unsigned long)(uintptr_t)__user_stack_bottom,
              (unsigned long)(uintptr_t)__user_stack_top);
    failures += !check_word((volatile uint64_t *)(uintptr_t)__user_stack_bottom);
    for (uint32_t i = 0; i < info->user_region_count; i++) {
        const struct rt_mem_region *region = &info->user_regions[i];
        int ok = check_word((volatile uint64_t *)(uintptr_t)region->start) &&
                 check_word((volatile uint64_t *)(uintptr_t)(region->end - 8));
        failures += !ok;
        rt_printf("memmap: region %u 0x%lx-0x%lx (%lu MiB) %s\n", i, (unsigned long)region->start,
                  (unsigned long)region->end, (unsigned long)((region->end - region->start) >> 20),
                  ok ? "ok" : "BAD");
    }
    return failures ? 1 : 0;
}
