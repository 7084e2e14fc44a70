/* device.c - finds the snapshot device (PCI 1234:f987) in sysfs and maps its resources:
 * resource0 (registers and the register mirror), resource1 (comparison log, optional),
 * resource2 (input), resource4 (coverage map). $SNAPVMM_DEVICE names the device's sysfs
 * directory when there is more than one (or to skip the scan). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define PCI_DEVICES "/sys/bus/pci/devices"
/* The registers and the mirror page after them. */
#define REGISTERS_MAP_SIZE 0x2000u

static struct agent_device device;
static bool device_tried;
static const char *device_problem = "not opened yet";
static char problem_text[512];

const char *agent_device_error(void)
{
    return device_problem;
}

static void problem(const char *format, const char *a, const char *b)
{
    snprintf(problem_text, sizeof(problem_text), format, a, b);
    device_problem = problem_text;
}

static unsigned long read_hex_file(const char *dir, const char *name)
{
    char path[512], text[32] = {0};
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, text, sizeof(text) - 1);
    close(fd);
    return got > 0 ? strtoul(text, NULL, 16) : 0;
}

static bool find_device(char *dir, size_t dir_size)
{
    const char *chosen = getenv("SNAPVMM_DEVICE");
    if (chosen && *chosen) {
        snprintf(dir, dir_size, "%s", chosen);
        return true;
    }
    DIR *devices = opendir(PCI_DEVICES);
    if (!devices) {
        problem("cannot list %s: %s", PCI_DEVICES, strerror(errno));
        return false;
    }
    bool found = false;
    struct dirent *entry;
    while (!found && (entry = readdir(devices))) {
        if (entry->d_name[0] == '.')
            continue;
        char candidate[256];
        snprintf(candidate, sizeof(candidate), "%s/%s", PCI_DEVICES, entry->d_name);
        if (read_hex_file(candidate, "vendor") == SNAPSHOT_DEVICE_VENDOR_ID &&
            read_hex_file(candidate, "device") == SNAPSHOT_DEVICE_DEVICE_ID) {
            snprintf(dir, dir_size, "%s", candidate);
            found = true;
        }
    }
    closedir(devices);
    if (!found)
        problem("no snapshot device (PCI %s) in %s", "1234:f987", PCI_DEVICES);
    return found;
}

/* Maps resourceN of the device, all of it or `limit` bytes; NULL when absent or unmappable. */
static void *map_resource(const char *dir, int bar, size_t limit, size_t *size, bool required)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/resource%d", dir, bar);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        if (required)
            problem("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
        if (required)
            problem("%s has no size%s", path, "");
        close(fd);
        return NULL;
    }
    size_t length = (size_t)st.st_size;
    if (limit && length > limit)
        length = limit;
    void *map = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (required)
            problem("cannot mmap %s: %s", path, strerror(map_errno));
        return NULL;
    }
    *size = length;
    return map;
}

struct agent_device *agent_device(void)
{
    if (device_tried)
        return device.regs ? &device : NULL;
    device_tried = true;
    if (!find_device(device.sysfs_dir, sizeof(device.sysfs_dir)))
        return NULL;
    size_t regs_size = 0;
    void *regs = map_resource(device.sysfs_dir, SNAPSHOT_BAR_REGISTERS, REGISTERS_MAP_SIZE, &regs_size, true);
    if (!regs)
        return NULL;
    if (regs_size < REGISTERS_MAP_SIZE || snapshot_reg_read(regs, SNAPSHOT_REG_MAGIC) != SNAPSHOT_MAGIC) {
        problem("%s/resource0: MAGIC is not 0x534e4150%s", device.sysfs_dir, "");
        munmap(regs, regs_size);
        return NULL;
    }
    void *input = map_resource(device.sysfs_dir, SNAPSHOT_BAR_INPUT, 0, &device.input_size, true);
    void *coverage = map_resource(device.sysfs_dir, SNAPSHOT_BAR_COVERAGE, 0, &device.coverage_size, true);
    if (!input || !coverage)
        return NULL;
    device.cmplog = map_resource(device.sysfs_dir, SNAPSHOT_BAR_CMPLOG, 0, &device.cmplog_size, false);
    device.input = input;
    device.coverage = coverage;
    device.mirror =
        snapshot_reg_read(regs, SNAPSHOT_REGISTER_MIRROR + SNAPSHOT_REG_MAGIC) == SNAPSHOT_MAGIC;
    device.regs = regs;
    device_problem = "";
    return &device;
}

uint32_t agent_input_len(const struct agent_device *dev)
{
    /* The mirror is memory on snapvmm (no VM exit); the register is the fallback. */
    uint32_t offset = dev->mirror ? SNAPSHOT_REGISTER_MIRROR + SNAPSHOT_REG_INPUT_LEN : SNAPSHOT_REG_INPUT_LEN;
    uint32_t length = snapshot_reg_read(dev->regs, offset);
    return length > dev->input_size ? (uint32_t)dev->input_size : length;
}
