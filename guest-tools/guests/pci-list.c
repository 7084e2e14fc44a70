/*
 * pci-list - one line per PCI function the kernel found on bus 0:
 *   pci 00:SS.F VVVV:DDDD class CCSSPP [barN=KIND@ADDRESS/SIZE ...]
 * KIND is io, mem32 or mem64, with "-pref" for prefetchable BARs and "-unmapped" for memory BARs
 * the kernel could not map. Then, for devices it knows, a line read through the mapped BAR0 from
 * user mode. Exits 0.
 */
#include "rt.h"

#define SNAPSHOT_VENDOR 0x1234
#define SNAPSHOT_DEVICE 0xf987
#define QEMU_EDU_VENDOR 0x1234
#define QEMU_EDU_DEVICE 0x11e8

static void print_bar(unsigned index, const struct rt_pci_bar *bar)
{
    const char *kind = (bar->flags & RT_BAR_IO) ? "io" : (bar->flags & RT_BAR_MEM64) ? "mem64" : "mem32";
    rt_printf(" bar%u=%s%s%s@0x%lx/0x%lx", index, kind, (bar->flags & RT_BAR_PREFETCHABLE) ? "-pref" : "",
              (!(bar->flags & RT_BAR_IO) && !(bar->flags & RT_BAR_MAPPED)) ? "-unmapped" : "",
              (unsigned long)bar->addr, (unsigned long)bar->size);
}

int main(void)
{
    size_t count = rt_pci_count();
    for (size_t i = 0; i < count; i++) {
        const struct rt_pci_function *f = rt_pci_function_at(i);
        rt_printf("pci %02x:%02x.%x %04x:%04x class %02x%02x%02x", f->bus, f->slot, f->function, f->vendor_id,
                  f->device_id, f->class_code, f->subclass, f->prog_if);
        for (unsigned b = 0; b < 6; b++)
            if (f->bars[b].flags & RT_BAR_PRESENT)
                print_bar(b, &f->bars[b]);
        rt_printf("\n");
    }
    rt_printf("pci: %lu functions\n", (unsigned long)count);

    const struct rt_pci_function *snapshot = rt_pci_find(SNAPSHOT_VENDOR, SNAPSHOT_DEVICE);
    volatile uint32_t *regs = snapshot ? rt_pci_bar(snapshot, 0) : NULL;
    if (regs)
        rt_printf("snapshot device: magic 0x%08x abi version %u\n", regs[0], regs[0x18 / 4]);
    const struct rt_pci_function *edu = rt_pci_find(QEMU_EDU_VENDOR, QEMU_EDU_DEVICE);
    volatile uint32_t *edu_regs = edu ? rt_pci_bar(edu, 0) : NULL;
    if (edu_regs)
        rt_printf("edu device: id 0x%08x\n", edu_regs[0]);
    if (rt_boot_info()->warnings)
        rt_printf("pci: kernel warnings 0x%x\n", rt_boot_info()->warnings);
    return 0;
}
