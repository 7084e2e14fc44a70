/* input.c - the input window: the harness gets a copy of the input that ends exactly where a
 * read-only mapping ends, with an inaccessible page after it, so that reading one byte past the
 * input, or writing to it ("the target modified its const input"), is a SIGSEGV, as with
 * libFuzzer's exactly-sized heap copy under ASan. One memfd is mapped twice: read-write for the
 * agent's copy, read-only (followed by a PROT_NONE guard page) for the harness. Set up and
 * touched once before the SAVE, so runs take no page faults and change no page tables. */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent.h"

static uint8_t *window_end;   /* the harness's read-only view, where the guard page starts */
static uint8_t *writable_end; /* the agent's read-write view of the same pages */
static size_t window_capacity;

int agent_input_window_setup(size_t capacity)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    capacity = (capacity + page - 1) / page * page;
    int fd = memfd_create("snapvmm-input", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)capacity) != 0) {
        close(fd);
        return -1;
    }
    /* Address space for the read-only view plus the guard page, then the view over it. */
    uint8_t *area = mmap(NULL, capacity + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *writable = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (area == MAP_FAILED || writable == MAP_FAILED) {
        close(fd);
        return -1;
    }
    if (mmap(area, capacity, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        close(fd);
        return -1;
    }
    close(fd);
    /* Allocate every page now (shmem pages exist once written) and map both views. */
    memset(writable, 0, capacity);
    volatile uint8_t sink = 0;
    for (size_t offset = 0; offset < capacity; offset += page)
        sink ^= area[offset];
    (void)sink;
    window_end = area + capacity;
    writable_end = writable + capacity;
    window_capacity = capacity;
    return 0;
}

const uint8_t *agent_input_for_harness(const volatile uint8_t *input, size_t size)
{
    if (!window_end || size > window_capacity)
        return (const uint8_t *)(uintptr_t)input;
    /* BAR2 does not change during a run: a plain copy. */
    memcpy(writable_end - size, (const void *)(uintptr_t)input, size);
    return window_end - size;
}
