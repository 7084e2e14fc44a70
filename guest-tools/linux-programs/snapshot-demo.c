/*
 * snapshot-demo - the snapshot device from a Linux user program.
 *
 *   snapshot-demo [RESOURCE0]   (default /sys/bus/pci/devices/0000:00:04.0/resource0)
 *
 * Maps the device's registers (BAR0) through sysfs, checks MAGIC and the ABI version, takes a
 * snapshot, changes a global and a local variable, and restores. SAVE "returns twice": the second
 * return (RESTORES = 1) must see both variables as they were at the SAVE. Prints one
 * "snapshot-demo: PASS: ..." or "snapshot-demo: FAIL: ..." line at the end.
 *
 * Exit codes: 0 pass; 1 usage; 2 cannot open/stat/map RESOURCE0; 3 MAGIC wrong; 4 ABI version
 * wrong; 5 STATUS after SAVE wrong; 6 RESTORE returned; 7 a variable did not roll back;
 * 8 unexpected RESTORES count after a restore.
 *
 * Output between the SAVE and the RESTORE survives the restore only if it left the VM (a serial
 * console does; a pipe to another process in the same VM is rolled back with it). stdout is
 * unbuffered so that nothing pending in stdio at the SAVE is printed twice.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot_device.h"

#define DEFAULT_RESOURCE0 "/sys/bus/pci/devices/0000:00:04.0/resource0"
#define REGISTERS_MAP_SIZE 4096

enum exit_code {
    EXIT_PASS = 0,
    EXIT_USAGE = 1,
    EXIT_MAP = 2,
    EXIT_MAGIC = 3,
    EXIT_VERSION = 4,
    EXIT_STATUS = 5,
    EXIT_RESTORE_RETURNED = 6,
    EXIT_NOT_ROLLED_BACK = 7,
    EXIT_RESTORES_COUNT = 8,
};

static volatile int demo_global = 1;

static int fail(enum exit_code code, const char *what)
{
    printf("snapshot-demo: FAIL: %s\n", what);
    return code;
}

static volatile void *map_registers(const char *path)
{
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        printf("snapshot-demo: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < REGISTERS_MAP_SIZE) {
        printf("snapshot-demo: %s is not a BAR of at least %d bytes\n", path, REGISTERS_MAP_SIZE);
        close(fd);
        return NULL;
    }
    void *regs = mmap(NULL, REGISTERS_MAP_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int mmap_errno = errno;
    close(fd);
    if (regs == MAP_FAILED) {
        printf("snapshot-demo: cannot mmap %s: %s\n", path, strerror(mmap_errno));
        return NULL;
    }
    return regs;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        printf("usage: snapshot-demo [RESOURCE0]\n");
        return EXIT_USAGE;
    }
    const char *path = argc == 2 ? argv[1] : DEFAULT_RESOURCE0;
    volatile void *regs = map_registers(path);
    if (!regs)
        return fail(EXIT_MAP, "cannot map the snapshot device's registers");

    uint32_t magic = snapshot_reg_read(regs, SNAPSHOT_REG_MAGIC);
    uint32_t version = snapshot_reg_read(regs, SNAPSHOT_REG_ABI_VERSION);
    printf("snapshot-demo: %s: magic 0x%08x, ABI version %u, status 0x%x\n", path, magic, version,
           snapshot_reg_read(regs, SNAPSHOT_REG_STATUS));
    if (magic != SNAPSHOT_MAGIC)
        return fail(EXIT_MAGIC, "MAGIC is not 0x534e4150: not snapvmm's snapshot device");
    if (version != SNAPSHOT_ABI_VERSION)
        return fail(EXIT_VERSION, "unsupported ABI version");

    volatile int demo_local = 10;
    printf("snapshot-demo: SAVE with global=%d local=%d\n", demo_global, demo_local);
    snapshot_command(regs, SNAPSHOT_CMD_SAVE);
    /* Reached twice: right after the SAVE, and again after the RESTORE below. */
    uint64_t restores = snapshot_restores(regs);
    uint32_t status = snapshot_reg_read(regs, SNAPSHOT_REG_STATUS);

    if (restores == 0) {
        if (!(status & SNAPSHOT_STATUS_SNAPSHOT_EXISTS) || (status & SNAPSHOT_STATUS_COMMAND_FAILED)) {
            printf("snapshot-demo: STATUS after SAVE is 0x%x\n", status);
            return fail(EXIT_STATUS, "SAVE did not take a snapshot");
        }
        demo_global = 2;
        demo_local = 20;
        printf("snapshot-demo: first return from SAVE; changed to global=%d local=%d; RESTORE\n", demo_global,
               demo_local);
        snapshot_command(regs, SNAPSHOT_CMD_RESTORE);
        printf("snapshot-demo: RESTORE returned, STATUS 0x%x\n", snapshot_reg_read(regs, SNAPSHOT_REG_STATUS));
        return fail(EXIT_RESTORE_RETURNED, "RESTORE did not roll the VM back");
    }

    printf("snapshot-demo: SAVE returned again (RESTORES %llu, STATUS 0x%x): global=%d local=%d\n",
           (unsigned long long)restores, status, demo_global, demo_local);
    if (restores != 1)
        return fail(EXIT_RESTORES_COUNT, "expected exactly one restore");
    if (demo_global != 1 || demo_local != 10)
        return fail(EXIT_NOT_ROLLED_BACK, "variables changed after the SAVE survived the RESTORE");
    printf("snapshot-demo: PASS: the variables rolled back and execution continued after the SAVE\n");
    return EXIT_PASS;
}
