/* pci.c - the PCI functions the kernel found, and configuration access from user mode. */
#include "rt.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc

size_t rt_pci_count(void)
{
    return rt_boot_info()->pci_count;
}

const struct rt_pci_function *rt_pci_function_at(size_t index)
{
    const struct rt_boot_info *info = rt_boot_info();
    return index < info->pci_count ? &info->pci[index] : NULL;
}

const struct rt_pci_function *rt_pci_find(uint16_t vendor_id, uint16_t device_id)
{
    const struct rt_boot_info *info = rt_boot_info();
    for (uint32_t i = 0; i < info->pci_count; i++)
        if (info->pci[i].vendor_id == vendor_id && info->pci[i].device_id == device_id)
            return &info->pci[i];
    return NULL;
}

volatile void *rt_pci_bar(const struct rt_pci_function *function, unsigned bar)
{
    if (!function || bar >= 6 || !(function->bars[bar].flags & RT_BAR_MAPPED))
        return NULL;
    return (volatile void *)(uintptr_t)function->bars[bar].addr;
}

static void select_register(const struct rt_pci_function *f, unsigned offset)
{
    rt_outl(PCI_CONFIG_ADDRESS, 0x80000000u | ((uint32_t)f->bus << 16) | ((uint32_t)f->slot << 11) |
                                    ((uint32_t)f->function << 8) | (offset & 0xfc));
}

uint32_t rt_pci_config_read32(const struct rt_pci_function *function, unsigned offset)
{
    select_register(function, offset);
    return rt_inl(PCI_CONFIG_DATA);
}

void rt_pci_config_write32(const struct rt_pci_function *function, unsigned offset, uint32_t value)
{
    select_register(function, offset);
    rt_outl(PCI_CONFIG_DATA, value);
}
