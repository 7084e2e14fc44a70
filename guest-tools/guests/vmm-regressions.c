/* vmm-regressions: guest-side reproductions of VMM bugs that were found and fixed; each mode
 * fails (exit code 1, or a VMM error) on a VMM with the bug and passes (exit 0) without it.
 *
 *   mode=rep-ins      `rep insb`/`rep insw` of the 16550 scratch register: every element must be
 *                     the value written there (the VMM once served only the first one).
 *   mode=bar-overlap  BAR2 moved over guest RAM and BAR4 moved inside BAR2 before a SAVE; then a
 *                     RESTORE must roll back a global and continue after the SAVE (the VMM once
 *                     failed the RESTORE with "cannot map BAR2 ... File exists").
 */
#include "rt.h"

#define COM1_SCRATCH 0x3ff
#define SNAPSHOT_VENDOR 0x1234
#define SNAPSHOT_DEVICE 0xf987
#define BAR2_CONFIG 0x18
#define BAR4_CONFIG 0x20

static int rep_ins(void)
{
    uint8_t bytes[8];
    uint16_t words[4];
    rt_outb(COM1_SCRATCH, 0x5a);
    void *to = bytes;
    size_t count = sizeof(bytes);
    __asm__ volatile("rep insb" : "+D"(to), "+c"(count) : "d"(COM1_SCRATCH) : "memory");
    to = words;
    count = 4;
    __asm__ volatile("rep insw" : "+D"(to), "+c"(count) : "d"(COM1_SCRATCH) : "memory");
    int bad = 0;
    for (size_t i = 0; i < sizeof(bytes); i++)
        bad |= bytes[i] != 0x5a;
    rt_printf("vmm-regressions: rep insb read %02x %02x %02x %02x %02x %02x %02x %02x\n", bytes[0], bytes[1],
              bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]);
    /* A 16-bit read of an 8-bit register: the low byte is the register. */
    for (size_t i = 0; i < 4; i++)
        bad |= (words[i] & 0xff) != 0x5a;
    rt_printf("vmm-regressions: rep insw read %04x %04x %04x %04x\n", words[0], words[1], words[2], words[3]);
    rt_printf("vmm-regressions: rep-ins %s\n", bad ? "FAIL" : "ok");
    return bad;
}

static void set_bar64(const struct rt_pci_function *device, unsigned offset, uint64_t address)
{
    rt_pci_config_write32(device, offset, (uint32_t)address);
    rt_pci_config_write32(device, offset + 4, (uint32_t)(address >> 32));
}

static volatile uint32_t rolled_back = 1;

static int bar_overlap(void)
{
    const struct rt_pci_function *device = rt_pci_find(SNAPSHOT_VENDOR, SNAPSHOT_DEVICE);
    int error = rt_snapshot_open();
    if (!device || error) {
        rt_printf("vmm-regressions: no snapshot device\n");
        return 1;
    }
    uint64_t bar2 = rt_pci_config_read32(device, BAR2_CONFIG) & ~0xfull;
    bar2 |= (uint64_t)rt_pci_config_read32(device, BAR2_CONFIG + 4) << 32;
    uint64_t bar4 = rt_pci_config_read32(device, BAR4_CONFIG) & ~0xfull;
    bar4 |= (uint64_t)rt_pci_config_read32(device, BAR4_CONFIG + 4) << 32;
    /* 32 MiB: guest RAM (the test runs with at least 64 MiB). BAR4 (64 KiB) inside BAR2 (1 MiB). */
    set_bar64(device, BAR2_CONFIG, 32ull << 20);
    set_bar64(device, BAR4_CONFIG, (32ull << 20) + 0x40000);
    uint64_t restores = rt_snapshot_save();
    if (restores == 0) {
        /* Back where the VMM put them: the RESTORE moves them over RAM again. */
        set_bar64(device, BAR2_CONFIG, bar2);
        set_bar64(device, BAR4_CONFIG, bar4);
        rolled_back = 2;
        uint32_t status = rt_snapshot_restore();
        rt_printf("vmm-regressions: RESTORE returned, STATUS 0x%x\n", status);
        return 1;
    }
    int bad = rolled_back != 1;
    rt_printf("vmm-regressions: bar-overlap after %lu restore(s): global %u, %s\n", (unsigned long)restores,
              rolled_back, bad ? "FAIL" : "ok");
    return bad;
}

int main(void)
{
    const char *mode = rt_cmdline_value("mode");
    if (mode && strcmp(mode, "rep-ins") == 0)
        return rep_ins();
    if (mode && strcmp(mode, "bar-overlap") == 0)
        return bar_overlap();
    rt_printf("vmm-regressions: mode=rep-ins|bar-overlap\n");
    return 2;
}
