/* malloc.c - the heap of libFuzzer targets. Its state is ordinary globals and its memory comes
 * from the runtime's page allocator (whose state is a global too), so the snapshot restore
 * resets the whole heap at the start of every run: no leak outlives a run.
 *
 * Every block is [header][data: size bytes][redzone: at least 16 bytes of REDZONE_BYTE] in a
 * power-of-two slot. A linear overflow write past the end lands in the redzone, which is checked
 * when the block is freed or reallocated and, for every block still live, when the run ends;
 * damage is reported as a crash (code LIBFUZZER_CRASH_HEAP_OVERFLOW, pc = where the block was
 * allocated). Double and invalid frees are crashes too. New memory is filled with 0xbe and freed
 * memory with 0xdd (as ASan does), so reads of uninitialised or freed data behave the same in
 * every run. Overflow reads are not detected. */
#include "rt.h"
#include "libfuzzer_rt.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_SIZE 4096u
#define ARENA_PAGES 256u /* 1 MiB taken from the page allocator at a time */
#define HEADER_SIZE 48u
#define MIN_REDZONE 16u
#define MIN_SLOT_SHIFT 5u  /* 32-byte slots */
#define MAX_SLOT_SHIFT 20u /* 1 MiB; larger blocks get their own pages and are not reused */
#define SLOT_CLASSES (MAX_SLOT_SHIFT - MIN_SLOT_SHIFT + 1u)
#define CLASS_UNIQUE 0xffffu /* a block that is never put on a free list */
#define MAX_ALLOCATION (1ull << 36)
#define MALLOC_FILL_LIMIT 4096u
#define REDZONE_CHECK_LIMIT 128u
#define MAGIC_LIVE 0x4c495645u  /* "LIVE" */
#define MAGIC_FREED 0x46524545u /* "FREE" */
#define REDZONE_BYTE 0xfdu
#define MALLOC_FILL_BYTE 0xbeu
#define FREE_FILL_BYTE 0xddu

struct block {
    uint32_t magic;
    uint32_t slot_class;
    uint64_t size;     /* what the caller asked for */
    uint64_t capacity; /* data + redzone */
    uint64_t alloc_pc;
    struct block *next_live, *prev_live; /* or, when freed, next_free in next_live */
};
_Static_assert(sizeof(struct block) <= HEADER_SIZE, "block header too large");

int errno;

static uint8_t *arena_next, *arena_end;
static uintptr_t heap_low = UINTPTR_MAX, heap_high;
static struct block *free_lists[SLOT_CLASSES];
static struct block *live_blocks;

static uint8_t *block_data(struct block *block)
{
    return (uint8_t *)block + HEADER_SIZE;
}

static struct block *block_of(void *pointer)
{
    return (struct block *)((uint8_t *)pointer - HEADER_SIZE);
}

/* `bytes` of fresh memory whose data area (after the header) is aligned to `alignment`. */
static struct block *arena_take(uint64_t bytes, uint64_t alignment)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        uintptr_t data = ((uintptr_t)arena_next + HEADER_SIZE + alignment - 1) & ~(uintptr_t)(alignment - 1);
        if (arena_next && data - HEADER_SIZE + bytes <= (uintptr_t)arena_end) {
            arena_next = (uint8_t *)(data - HEADER_SIZE + bytes);
            return (struct block *)(data - HEADER_SIZE);
        }
        uint64_t pages = (bytes + alignment + HEADER_SIZE + PAGE_SIZE - 1) / PAGE_SIZE;
        if (pages < ARENA_PAGES)
            pages = ARENA_PAGES;
        uint8_t *fresh = rt_alloc_pages(pages);
        if (!fresh)
            return NULL;
        arena_next = fresh;
        arena_end = fresh + pages * PAGE_SIZE;
        if ((uintptr_t)fresh < heap_low)
            heap_low = (uintptr_t)fresh;
        if ((uintptr_t)arena_end > heap_high)
            heap_high = (uintptr_t)arena_end;
    }
    return NULL;
}

static void live_insert(struct block *block)
{
    block->prev_live = NULL;
    block->next_live = live_blocks;
    if (live_blocks)
        live_blocks->prev_live = block;
    live_blocks = block;
}

static void live_remove(struct block *block)
{
    if (block->prev_live)
        block->prev_live->next_live = block->next_live;
    else
        live_blocks = block->next_live;
    if (block->next_live)
        block->next_live->prev_live = block->prev_live;
}

static void redzone_fill(struct block *block)
{
    uint64_t length = block->capacity - block->size;
    if (length > REDZONE_CHECK_LIMIT)
        length = REDZONE_CHECK_LIMIT;
    memset(block_data(block) + block->size, REDZONE_BYTE, length);
}

static void redzone_check(struct block *block)
{
    uint64_t length = block->capacity - block->size;
    if (length > REDZONE_CHECK_LIMIT)
        length = REDZONE_CHECK_LIMIT;
    const uint8_t *redzone = block_data(block) + block->size;
    for (uint64_t i = 0; i < length; i++)
        if (redzone[i] != REDZONE_BYTE)
            libfuzzer_crash(LIBFUZZER_CRASH_HEAP_OVERFLOW, block->alloc_pc,
                            "heap-buffer-overflow (a write past the end of a malloc'd block)");
}

static unsigned slot_class_for(uint64_t capacity)
{
    unsigned shift = MIN_SLOT_SHIFT;
    while ((1ull << shift) < capacity)
        shift++;
    return shift - MIN_SLOT_SHIFT;
}

static void *allocate(uint64_t size, uint64_t alignment, uint64_t pc)
{
    if (size > MAX_ALLOCATION) {
        errno = ENOMEM;
        return NULL;
    }
    uint64_t needed = size + MIN_REDZONE;
    struct block *block = NULL;
    unsigned slot_class = CLASS_UNIQUE;
    uint64_t capacity = needed;
    if (alignment <= 16 && needed <= (1ull << MAX_SLOT_SHIFT)) {
        slot_class = slot_class_for(needed);
        capacity = 1ull << (slot_class + MIN_SLOT_SHIFT);
        block = free_lists[slot_class];
        if (block)
            free_lists[slot_class] = block->next_live;
    }
    if (!block) {
        block = arena_take(HEADER_SIZE + capacity, alignment < 16 ? 16 : alignment);
        if (!block) {
            errno = ENOMEM;
            return NULL;
        }
    }
    block->magic = MAGIC_LIVE;
    block->slot_class = slot_class;
    block->size = size;
    block->capacity = capacity;
    block->alloc_pc = pc;
    live_insert(block);
    memset(block_data(block), MALLOC_FILL_BYTE, size < MALLOC_FILL_LIMIT ? size : MALLOC_FILL_LIMIT);
    redzone_fill(block);
    return block_data(block);
}

/* The block behind a pointer the harness hands back, or a crash report if it is not one. */
static struct block *owned_block(void *pointer, uint64_t pc)
{
    uintptr_t address = (uintptr_t)pointer;
    /* heap_high is 0 until the first allocation: then nothing is ours. */
    if (address % 16 || address >= heap_high || address < heap_low || address - heap_low < HEADER_SIZE)
        libfuzzer_crash(LIBFUZZER_CRASH_BAD_FREE, pc, "free() of a pointer malloc did not return");
    struct block *block = block_of(pointer);
    if (block->magic == MAGIC_FREED)
        libfuzzer_crash(LIBFUZZER_CRASH_DOUBLE_FREE, pc, "double free");
    if (block->magic != MAGIC_LIVE)
        libfuzzer_crash(LIBFUZZER_CRASH_BAD_FREE, pc, "free() of a pointer malloc did not return");
    return block;
}

static void release(struct block *block)
{
    redzone_check(block);
    live_remove(block);
    block->magic = MAGIC_FREED;
    memset(block_data(block), FREE_FILL_BYTE, block->size < MALLOC_FILL_LIMIT ? block->size : MALLOC_FILL_LIMIT);
    if (block->slot_class != CLASS_UNIQUE) {
        block->next_live = free_lists[block->slot_class];
        free_lists[block->slot_class] = block;
    }
}

__attribute__((noinline)) void *malloc(size_t size)
{
    return allocate(size, 16, LIBFUZZER_CALLER());
}

__attribute__((noinline)) void *calloc(size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *pointer = allocate(total, 16, LIBFUZZER_CALLER());
    if (pointer)
        memset(pointer, 0, total);
    return pointer;
}

static void *reallocate(void *pointer, size_t size, uint64_t pc)
{
    if (!pointer)
        return allocate(size, 16, pc);
    struct block *block = owned_block(pointer, pc);
    redzone_check(block);
    if (size + MIN_REDZONE <= block->capacity && size <= MAX_ALLOCATION) {
        if (size > block->size) {
            uint64_t grown = size - block->size;
            memset(block_data(block) + block->size, MALLOC_FILL_BYTE,
                   grown < MALLOC_FILL_LIMIT ? grown : MALLOC_FILL_LIMIT);
        }
        block->size = size;
        redzone_fill(block);
        return pointer;
    }
    void *moved = allocate(size, 16, pc);
    if (!moved)
        return NULL;
    memcpy(moved, pointer, block->size < size ? block->size : size);
    release(block);
    return moved;
}

__attribute__((noinline)) void *realloc(void *pointer, size_t size)
{
    return reallocate(pointer, size, LIBFUZZER_CALLER());
}

__attribute__((noinline)) void *reallocarray(void *pointer, size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return reallocate(pointer, total, LIBFUZZER_CALLER());
}

__attribute__((noinline)) void free(void *pointer)
{
    if (pointer)
        release(owned_block(pointer, LIBFUZZER_CALLER()));
}

static bool valid_alignment(size_t alignment)
{
    return alignment && !(alignment & (alignment - 1)) && alignment <= (1u << 20);
}

__attribute__((noinline)) void *aligned_alloc(size_t alignment, size_t size)
{
    if (!valid_alignment(alignment)) {
        errno = EINVAL;
        return NULL;
    }
    return allocate(size, alignment, LIBFUZZER_CALLER());
}

__attribute__((noinline)) void *memalign(size_t alignment, size_t size)
{
    if (!valid_alignment(alignment)) {
        errno = EINVAL;
        return NULL;
    }
    return allocate(size, alignment, LIBFUZZER_CALLER());
}

__attribute__((noinline)) int posix_memalign(void **result, size_t alignment, size_t size)
{
    if (!valid_alignment(alignment) || alignment % sizeof(void *))
        return EINVAL;
    void *pointer = allocate(size, alignment, LIBFUZZER_CALLER());
    if (!pointer)
        return ENOMEM;
    *result = pointer;
    return 0;
}

void libfuzzer_heap_check(void)
{
    for (struct block *block = live_blocks; block; block = block->next_live)
        redzone_check(block);
}
