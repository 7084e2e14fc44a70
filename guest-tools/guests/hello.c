/* hello - prints a greeting with the privilege level it runs at and the RAM it found, exits 0. */
#include "rt.h"

int main(void)
{
    const struct rt_boot_info *info = rt_boot_info();
    uint64_t ram_mib = (info->ram_bytes + (1u << 20) - 1) >> 20;
    rt_printf("Hello from snapvmm's guest runtime: running at CPL %u, RAM %lu MiB\n", rt_cpl(),
              (unsigned long)ram_mib);
    return 0;
}
