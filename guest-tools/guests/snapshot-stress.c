/*
 * snapshot-stress - is every restore exact? One SAVE, then round after round of changes and a
 * RESTORE; each round starts at the SAVE again and checks that the previous round's changes are
 * gone before it makes its own.
 *
 * Command line (all optional): rounds=N pages=K seed=S pt=0|1 fpu=0|1 buffer=MiB check=C
 *   rounds  restores to do (default 100)
 *   pages   buffer pages dirtied per round (default 16), distinct, chosen by a PRNG seeded with
 *           seed + round: a random start and a random odd stride over a power-of-two number of
 *           pages, so that every round dirties a different set
 *   seed    PRNG seed (default 1)
 *   pt      1: also change page tables each round through the kernel's test window (rt_abi.h):
 *           remap a kernel PTE to another page and write through it, unmap one, map a page that
 *           was not mapped at the SAVE, edit a page table of the program's own at CPL3, and
 *           switch a PD entry to another page table
 *   fpu     1: take the SAVE with known values in xmm0-15, the x87 stack, MXCSR, the x87 control
 *           word and rbx/r12-r15, read them back right after it, and load other values before
 *           each RESTORE (the restore must bring the SAVE's values back)
 *   buffer  size of the buffer in MiB, a power of two (default 16)
 *   check   compare the whole buffer and stack area with their patterns every C rounds
 *           (default 256; 0: only at the end)
 *   verbose 1: print a line at the start of every round
 *
 * The round number is the device's RESTORES counter (host state): RAM, including this program's
 * variables, rolls back with every restore. Each round r, right after the SAVE returns:
 *   1. all of the program's .data and .bss equal a copy taken right before the SAVE; r > 0: the
 *      pages round r-1 dirtied (recomputed from its PRNG seed), the stack words it wrote in
 *      main's frame, 56 KiB of stack below it (deeper calls overwrite it), the page tables it changed (read through the window), and with fpu=1 the registers, all hold
 *      their values from the SAVE;
 *   2. every C rounds and at the end: the whole buffer and stack area;
 *   3. r == rounds: print "snapshot-stress: N rounds ok ..." and exit 0;
 *   4. check the words this round is about to change, change them, write the stack, set the
 *      global, (pt=1) change page tables, (fpu=1) load other register values, RESTORE.
 *
 * Exit codes: 0 ok; 1 snapshot device unusable; 2 bad command line; 3 buffer does not fit in RAM;
 * 4 RESTORES out of range; 5 a page dirtied by the previous round was not restored; 6 a word was
 * not at its SAVE value before this round changed it; 7 whole-buffer check failed; 8 stack area
 * not restored; 9 global data (.data/.bss) not restored; 10 SSE/x87/general registers not restored;
 * 11 reading through a window page shows the wrong page (stale translation after a restore);
 * 12 a page-table entry did not hold its SAVE value when changed (page-table RAM not restored);
 * 13 a page-table change had no effect; 14 a page behind the window not restored; 15 the
 * program's own page table not restored; 16 a kernel service failed; 17 RESTORE returned.
 * A translation that a restore failed to remove can also end in a page fault (exit 46) with
 * cr2 inside the window.
 */
#include "rt.h"

enum failure {
    DEVICE = 1,
    BAD_ARGUMENTS = 2,
    NO_MEMORY = 3,
    BAD_ROUND = 4,
    PREVIOUS_ROUND_NOT_RESTORED = 5,
    WORD_NOT_AT_SAVE_VALUE = 6,
    BUFFER_CHECK = 7,
    STACK_NOT_RESTORED = 8,
    GLOBAL_NOT_RESTORED = 9,
    REGISTERS_NOT_RESTORED = 10,
    STALE_TRANSLATION = 11,
    PAGE_TABLE_NOT_RESTORED = 12,
    PAGE_TABLE_CHANGE_INEFFECTIVE = 13,
    WINDOW_PAGE_NOT_RESTORED = 14,
    OWN_PAGE_TABLE_NOT_RESTORED = 15,
    SERVICE_FAILED = 16,
    RESTORE_RETURNED = 17,
};

#define PAGE_SIZE 4096u
#define PAGE_WORDS 512u
#define STACK_AREA_PAGES 8u
#define STACK_WORDS_PER_ROUND 2u
#define WINDOW_SLOTS 8u
#define DEEP_STACK_SKIP 0x2000u
#define DEEP_STACK_BYTES 0xe000u /* window pages mapped at the SAVE (kernel PT slots 0..7) */

struct options {
    uint64_t rounds, pages, seed, pt, fpu, buffer_mib, check, verbose;
};

static struct options options = {100, 16, 1, 0, 0, 16, 256, 0};
static uint64_t *buffer;
static uint64_t buffer_pages;
/* 0 at the SAVE; every round sets it. */
static volatile uint64_t round_marker;

/* ---- PRNG and patterns */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t round_seed(uint64_t round, uint64_t stream)
{
    uint64_t state = options.seed + round * 0x100000001b3ull + stream * 0x5851f42d4c957f2dull;
    return splitmix64(&state);
}

#define PATTERN_STEP 0x9e3779b97f4a7c15ull
/* The SAVE-time contents of word `index` of a region: a different value for every word. */
static uint64_t pattern(uint64_t salt, uint64_t index)
{
    return index * PATTERN_STEP + salt;
}
#define BUFFER_SALT 0x0123456789abcdefull
#define STACK_SALT 0x5bd1e9955bd1e995ull
#define WINDOW_SALT(kind) (0x7a3c000000000000ull ^ ((uint64_t)(kind) << 40))

static void fill_pattern(uint64_t *words, uint64_t count, uint64_t salt, uint64_t first_index)
{
    uint64_t value = pattern(salt, first_index);
    for (uint64_t i = 0; i < count; i++, value += PATTERN_STEP)
        words[i] = value;
}

/* The index of the first word that differs from the pattern, or `count`. */
static uint64_t check_pattern(const uint64_t *words, uint64_t count, uint64_t salt, uint64_t first_index)
{
    uint64_t value = pattern(salt, first_index);
    for (uint64_t i = 0; i < count; i++, value += PATTERN_STEP)
        if (words[i] != value)
            return i;
    return count;
}

static int report(enum failure code, uint64_t round, const char *what, uint64_t address, uint64_t expected,
                  uint64_t found)
{
    rt_printf("snapshot-stress: FAIL in round %lu: %s at 0x%lx: expected 0x%lx, found 0x%lx\n",
              (unsigned long)round, what, (unsigned long)address, (unsigned long)expected, (unsigned long)found);
    return code;
}

static int check_region(enum failure code, uint64_t round, const char *what, const uint64_t *words,
                        uint64_t count, uint64_t salt, uint64_t first_index)
{
    uint64_t bad = check_pattern(words, count, salt, first_index);
    if (bad == count)
        return 0;
    return report(code, round, what, (uint64_t)(uintptr_t)&words[bad], pattern(salt, first_index + bad),
                  words[bad]);
}

/* ---- the pages a round dirties: `pages` distinct pages, one word in each */

struct page_walk {
    uint64_t next_page, stride, mask, word_state;
};

static struct page_walk walk_start(uint64_t round)
{
    uint64_t state = round_seed(round, 1);
    struct page_walk walk;
    walk.mask = buffer_pages - 1;
    walk.next_page = splitmix64(&state) & walk.mask;
    walk.stride = (splitmix64(&state) & walk.mask) | 1; /* odd: distinct pages mod 2^n */
    walk.word_state = splitmix64(&state);
    return walk;
}

/* The next page of the round and, in *word, the word it changes. */
static uint64_t walk_next(struct page_walk *walk, uint64_t *word)
{
    uint64_t page = walk->next_page;
    walk->next_page = (walk->next_page + walk->stride) & walk->mask;
    *word = splitmix64(&walk->word_state) & (PAGE_WORDS - 1);
    return page;
}

static int check_previous_round_pages(uint64_t round)
{
    struct page_walk walk = walk_start(round - 1);
    for (uint64_t i = 0; i < options.pages; i++) {
        uint64_t word;
        uint64_t page = walk_next(&walk, &word);
        int failure = check_region(PREVIOUS_ROUND_NOT_RESTORED, round, "buffer page dirtied by the previous round",
                                   &buffer[page * PAGE_WORDS], PAGE_WORDS, BUFFER_SALT, page * PAGE_WORDS);
        if (failure)
            return failure;
    }
    return 0;
}

static int dirty_pages(uint64_t round)
{
    struct page_walk walk = walk_start(round);
    for (uint64_t i = 0; i < options.pages; i++) {
        uint64_t word;
        uint64_t index = walk_next(&walk, &word) * PAGE_WORDS + word;
        uint64_t expected = pattern(BUFFER_SALT, index);
        if (buffer[index] != expected)
            return report(WORD_NOT_AT_SAVE_VALUE, round, "buffer word before this round's write",
                          (uint64_t)(uintptr_t)&buffer[index], expected, buffer[index]);
        buffer[index] = ~expected;
    }
    return 0;
}

/* ---- the stack: an area in main's frame (checked), and a deeper scribble (not checked here;
 * --verify-restores compares all of RAM) */

static uint64_t stack_word_of_round(uint64_t round, unsigned n)
{
    return round_seed(round, 2 + n) % (STACK_AREA_PAGES * PAGE_WORDS);
}

static int check_stack_words(uint64_t *area, uint64_t round)
{
    for (unsigned n = 0; n < STACK_WORDS_PER_ROUND; n++) {
        uint64_t page = stack_word_of_round(round - 1, n) / PAGE_WORDS;
        int failure = check_region(STACK_NOT_RESTORED, round, "stack page written by the previous round",
                                   &area[page * PAGE_WORDS], PAGE_WORDS, STACK_SALT, page * PAGE_WORDS);
        if (failure)
            return failure;
    }
    return 0;
}

static __attribute__((noinline)) uint64_t stack_dive(unsigned depth, uint64_t value)
{
    volatile uint64_t frame[128];
    for (unsigned i = 0; i < 128; i += 16)
        frame[i] = value + i;
    uint64_t below = depth ? stack_dive(depth - 1, value * 3 + 1) : 0;
    return below + frame[0];
}

static void write_stack(uint64_t *area, uint64_t round)
{
    for (unsigned n = 0; n < STACK_WORDS_PER_ROUND; n++) {
        uint64_t index = stack_word_of_round(round, n);
        area[index] = ~pattern(STACK_SALT, index);
    }
    (void)stack_dive(15, round); /* 16 frames of ~1 KiB below this one */
}

/* ---- registers (fpu=1) */

struct register_image {
    uint64_t xmm[16][2]; /* offset 0 */
    uint64_t x87[8];     /* 256: doubles, in load order */
    uint32_t mxcsr;      /* 320 */
    uint16_t fcw;        /* 324 */
    uint16_t padding;
    uint64_t gpr[5]; /* 328: rbx, r12, r13, r14, r15 */
};

static const uint32_t default_mxcsr = 0x1f80;
static const uint16_t default_fcw = 0x037f;

static void make_register_image(struct register_image *image, uint64_t seed, uint32_t mxcsr, uint16_t fcw)
{
    uint64_t state = seed;
    for (unsigned i = 0; i < 16; i++) {
        image->xmm[i][0] = splitmix64(&state);
        image->xmm[i][1] = splitmix64(&state);
    }
    /* Finite doubles of moderate exponent: fldl/fstpl carries them through exactly. */
    for (unsigned i = 0; i < 8; i++) {
        uint64_t bits = splitmix64(&state);
        image->x87[i] = (bits & 0x800fffffffffffffull) | ((0x3f0ull + (bits >> 52) % 32) << 52);
    }
    image->mxcsr = mxcsr;
    image->fcw = fcw;
    image->padding = 0;
    for (unsigned i = 0; i < 5; i++)
        image->gpr[i] = splitmix64(&state);
}

#define LOAD_XMM(base)                                                                                          \
    "movdqu 0(%[" base "]), %%xmm0\n\tmovdqu 16(%[" base "]), %%xmm1\n\tmovdqu 32(%[" base "]), %%xmm2\n\t"    \
    "movdqu 48(%[" base "]), %%xmm3\n\tmovdqu 64(%[" base "]), %%xmm4\n\tmovdqu 80(%[" base "]), %%xmm5\n\t"   \
    "movdqu 96(%[" base "]), %%xmm6\n\tmovdqu 112(%[" base "]), %%xmm7\n\tmovdqu 128(%[" base "]), %%xmm8\n\t" \
    "movdqu 144(%[" base "]), %%xmm9\n\tmovdqu 160(%[" base "]), %%xmm10\n\t"                                   \
    "movdqu 176(%[" base "]), %%xmm11\n\tmovdqu 192(%[" base "]), %%xmm12\n\t"                                  \
    "movdqu 208(%[" base "]), %%xmm13\n\tmovdqu 224(%[" base "]), %%xmm14\n\t"                                  \
    "movdqu 240(%[" base "]), %%xmm15\n\t"
#define LOAD_X87_AND_CONTROL(base)                                                                              \
    "fldl 256(%[" base "])\n\tfldl 264(%[" base "])\n\tfldl 272(%[" base "])\n\tfldl 280(%[" base "])\n\t"     \
    "fldl 288(%[" base "])\n\tfldl 296(%[" base "])\n\tfldl 304(%[" base "])\n\tfldl 312(%[" base "])\n\t"     \
    "ldmxcsr 320(%[" base "])\n\tfldcw 324(%[" base "])\n\t"
#define LOAD_GPRS(base)                                                                                         \
    "mov 328(%[" base "]), %%rbx\n\tmov 336(%[" base "]), %%r12\n\tmov 344(%[" base "]), %%r13\n\t"            \
    "mov 352(%[" base "]), %%r14\n\tmov 360(%[" base "]), %%r15\n\t"
#define REGISTER_CLOBBERS                                                                                       \
    "memory", "cc", "rbx", "r12", "r13", "r14", "r15", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",  \
        "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)", "st(2)",   \
        "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"

/* SAVE with `in` in the registers; right after it (both returns) the registers go to `out` and
 * the defaults come back. Returns RESTORES_LO. */
static __attribute__((noinline)) uint32_t save_with_registers(volatile void *regs,
                                                               const struct register_image *in,
                                                               struct register_image *out)
{
    uint32_t restores;
    __asm__ volatile(LOAD_XMM("in") LOAD_X87_AND_CONTROL("in") LOAD_GPRS("in")
                     "movl %[save], (%[regs])\n\t"
                     "movl %c[restores_lo](%[regs]), %[restores]\n\t"
                     "mov %%rbx, 328(%[out])\n\tmov %%r12, 336(%[out])\n\tmov %%r13, 344(%[out])\n\t"
                     "mov %%r14, 352(%[out])\n\tmov %%r15, 360(%[out])\n\t"
                     "movdqu %%xmm0, 0(%[out])\n\tmovdqu %%xmm1, 16(%[out])\n\tmovdqu %%xmm2, 32(%[out])\n\t"
                     "movdqu %%xmm3, 48(%[out])\n\tmovdqu %%xmm4, 64(%[out])\n\tmovdqu %%xmm5, 80(%[out])\n\t"
                     "movdqu %%xmm6, 96(%[out])\n\tmovdqu %%xmm7, 112(%[out])\n\tmovdqu %%xmm8, 128(%[out])\n\t"
                     "movdqu %%xmm9, 144(%[out])\n\tmovdqu %%xmm10, 160(%[out])\n\t"
                     "movdqu %%xmm11, 176(%[out])\n\tmovdqu %%xmm12, 192(%[out])\n\t"
                     "movdqu %%xmm13, 208(%[out])\n\tmovdqu %%xmm14, 224(%[out])\n\t"
                     "movdqu %%xmm15, 240(%[out])\n\t"
                     "fstpl 256(%[out])\n\tfstpl 264(%[out])\n\tfstpl 272(%[out])\n\tfstpl 280(%[out])\n\t"
                     "fstpl 288(%[out])\n\tfstpl 296(%[out])\n\tfstpl 304(%[out])\n\tfstpl 312(%[out])\n\t"
                     "stmxcsr 320(%[out])\n\tfnstcw 324(%[out])\n\t"
                     "ldmxcsr %[mxcsr]\n\tfldcw %[fcw]\n\t"
                     : [restores] "=&r"(restores)
                     : [in] "r"(in), [out] "r"(out), [regs] "r"(regs), [save] "r"(SNAPSHOT_CMD_SAVE),
                       [restores_lo] "i"(SNAPSHOT_REG_RESTORES_LO), [mxcsr] "m"(default_mxcsr),
                       [fcw] "m"(default_fcw)
                     : REGISTER_CLOBBERS);
    return restores;
}

/* Loads `junk` into the registers and RESTOREs; returns only if the RESTORE did not happen. */
static __attribute__((noinline)) void restore_with_junk_registers(volatile void *regs,
                                                                  const struct register_image *junk)
{
    __asm__ volatile(LOAD_XMM("junk") LOAD_X87_AND_CONTROL("junk") LOAD_GPRS("junk")
                     "movl %[restore], (%[regs])\n\t"
                     "fninit\n\tldmxcsr %[mxcsr]\n\t"
                     :
                     : [junk] "r"(junk), [regs] "r"(regs), [restore] "r"(SNAPSHOT_CMD_RESTORE),
                       [mxcsr] "m"(default_mxcsr)
                     : REGISTER_CLOBBERS);
}

static int check_registers(const struct register_image *in, const struct register_image *out, uint64_t round)
{
    const char *name[5] = {"rbx", "r12", "r13", "r14", "r15"};
    for (unsigned i = 0; i < 16; i++)
        for (unsigned half = 0; half < 2; half++)
            if (out->xmm[i][half] != in->xmm[i][half]) {
                rt_printf("snapshot-stress: xmm%u (%s half) not restored\n", i, half ? "high" : "low");
                return report(REGISTERS_NOT_RESTORED, round, "xmm register", i, in->xmm[i][half],
                              out->xmm[i][half]);
            }
    for (unsigned i = 0; i < 8; i++)
        if (out->x87[i] != in->x87[7 - i])
            return report(REGISTERS_NOT_RESTORED, round, "x87 register st(i)", i, in->x87[7 - i], out->x87[i]);
    if (out->mxcsr != in->mxcsr)
        return report(REGISTERS_NOT_RESTORED, round, "MXCSR", 0, in->mxcsr, out->mxcsr);
    if (out->fcw != in->fcw)
        return report(REGISTERS_NOT_RESTORED, round, "x87 control word", 0, in->fcw, out->fcw);
    for (unsigned i = 0; i < 5; i++)
        if (out->gpr[i] != in->gpr[i]) {
            rt_printf("snapshot-stress: %s not restored\n", name[i]);
            return report(REGISTERS_NOT_RESTORED, round, "general register", i, in->gpr[i], out->gpr[i]);
        }
    return 0;
}

/* ---- page tables (pt=1) */

#define WINDOW(offset) ((uint64_t)RT_TEST_WINDOW_BASE + (offset))
#define PD_SLOT_OWN_TABLE 1u /* window + 2 MiB: the program's own page table at the SAVE */
#define PD_SLOT_NEW 2u       /* window + 4 MiB: not present at the SAVE */
#define SIZE_2M 0x200000ull

enum window_kind { KIND_A, KIND_B, KIND_C, KIND_D, KIND_COUNT };

struct window_state {
    /* Pages behind the window. A: kernel PT slots 0..7 at the SAVE; B: what a round remaps
     * them to. C: the own table's slots 0..7 at the SAVE; D: what a round switches to. */
    uint64_t *pages[KIND_COUNT][WINDOW_SLOTS];
    uint64_t *own_table;   /* PD slot 1 at the SAVE: entries 0..7 -> C */
    uint64_t *other_table; /* entries 0..7 -> D, linked only during rounds */
};

static struct window_state window;

static uint64_t window_page_salt(unsigned kind, unsigned slot)
{
    return WINDOW_SALT(kind) + (uint64_t)slot * 0x1000;
}

static uint64_t entry_for(const void *page)
{
    return rt_pte_for((uint64_t)(uintptr_t)page);
}

static int window_setup(void)
{
    const struct rt_boot_info *info = rt_boot_info();
    if (!info->test_window_pt || !info->test_window_pd) {
        rt_printf("snapshot-stress: the kernel has no page-table test window\n");
        return SERVICE_FAILED;
    }
    for (unsigned kind = 0; kind < KIND_COUNT; kind++)
        for (unsigned slot = 0; slot < WINDOW_SLOTS; slot++) {
            uint64_t *page = rt_alloc_pages(1);
            if (!page)
                return NO_MEMORY;
            fill_pattern(page, PAGE_WORDS, window_page_salt(kind, slot), 0);
            window.pages[kind][slot] = page;
        }
    window.own_table = rt_alloc_pages(1);
    window.other_table = rt_alloc_pages(1);
    if (!window.own_table || !window.other_table)
        return NO_MEMORY;
    memset(window.own_table, 0, PAGE_SIZE);
    memset(window.other_table, 0, PAGE_SIZE);
    for (unsigned slot = 0; slot < WINDOW_SLOTS; slot++) {
        window.own_table[slot] = entry_for(window.pages[KIND_C][slot]);
        window.other_table[slot] = entry_for(window.pages[KIND_D][slot]);
        if (rt_sys_set_pte(WINDOW(slot * PAGE_SIZE), entry_for(window.pages[KIND_A][slot])) != 0)
            return report(SERVICE_FAILED, 0, "kernel PT slot at boot (set_pte)", WINDOW(slot * PAGE_SIZE), 0, 1);
    }
    if (rt_sys_set_pde(WINDOW(PD_SLOT_OWN_TABLE * SIZE_2M), entry_for(window.own_table)) != 0)
        return report(SERVICE_FAILED, 0, "window PD slot at boot (set_pde)", WINDOW(SIZE_2M), 0, 1);
    return 0;
}

static int check_window_through(uint64_t round, uint64_t base, unsigned kind, const char *what)
{
    for (unsigned slot = 0; slot < WINDOW_SLOTS; slot++) {
        int failure = check_region(STALE_TRANSLATION, round, what,
                                   (const uint64_t *)(uintptr_t)(base + slot * PAGE_SIZE), PAGE_WORDS,
                                   window_page_salt(kind, slot), 0);
        if (failure)
            return failure;
    }
    return 0;
}

/* What the SAVE left: translations (read through the window) and memory (read directly). */
static int window_check(uint64_t round)
{
    int failure = check_window_through(round, WINDOW(0), KIND_A, "window page read through the kernel PT");
    if (!failure)
        failure = check_window_through(round, WINDOW(PD_SLOT_OWN_TABLE * SIZE_2M), KIND_C,
                                       "window page read through the program's own PT");
    for (unsigned kind = 0; kind < KIND_COUNT && !failure; kind++)
        for (unsigned slot = 0; slot < WINDOW_SLOTS && !failure; slot++)
            failure = check_region(WINDOW_PAGE_NOT_RESTORED, round, "page behind the window",
                                   window.pages[kind][slot], PAGE_WORDS, window_page_salt(kind, slot), 0);
    for (unsigned slot = 0; slot < PAGE_WORDS && !failure; slot++) {
        uint64_t own = slot < WINDOW_SLOTS ? entry_for(window.pages[KIND_C][slot]) : 0;
        uint64_t other = slot < WINDOW_SLOTS ? entry_for(window.pages[KIND_D][slot]) : 0;
        if (window.own_table[slot] != own)
            failure = report(OWN_PAGE_TABLE_NOT_RESTORED, round, "entry of the program's own PT",
                             (uint64_t)(uintptr_t)&window.own_table[slot], own, window.own_table[slot]);
        else if (window.other_table[slot] != other)
            failure = report(OWN_PAGE_TABLE_NOT_RESTORED, round, "entry of the program's second PT",
                             (uint64_t)(uintptr_t)&window.other_table[slot], other, window.other_table[slot]);
    }
    return failure;
}

/* Writes a round-specific value through `va` + `word` and checks it reached `target`. */
static int write_through(uint64_t round, uint64_t va, uint64_t *target, uint64_t word)
{
    volatile uint64_t *through = (volatile uint64_t *)(uintptr_t)va + word;
    uint64_t value = round_seed(round, 7) | 1;
    *through = value;
    if (target[word] != value)
        return report(PAGE_TABLE_CHANGE_INEFFECTIVE, round, "write through the changed translation",
                      (uint64_t)(uintptr_t)&target[word], value, target[word]);
    return 0;
}

/* Changes a translation and checks that the old entry was the SAVE's. */
static int change_entry(uint64_t round, uint64_t va, uint64_t new_entry, uint64_t expected_old, bool pde)
{
    uint64_t old = pde ? rt_sys_set_pde(va, new_entry) : rt_sys_set_pte(va, new_entry);
    if (old == (uint64_t)RT_SYS_ERROR)
        return report(SERVICE_FAILED, round, pde ? "set_pde" : "set_pte", va, expected_old, old);
    if (old != expected_old)
        return report(PAGE_TABLE_NOT_RESTORED, round, pde ? "window PD entry" : "kernel PT entry", va,
                      expected_old, old);
    return 0;
}

static int window_round(uint64_t round)
{
    uint64_t state = round_seed(round, 5);
    unsigned remapped = splitmix64(&state) % WINDOW_SLOTS;
    unsigned unmapped = (remapped + 1 + splitmix64(&state) % (WINDOW_SLOTS - 1)) % WINDOW_SLOTS;
    unsigned fresh = WINDOW_SLOTS + splitmix64(&state) % WINDOW_SLOTS; /* not present at the SAVE */
    unsigned edited = splitmix64(&state) % WINDOW_SLOTS;
    unsigned switched = (edited + 1 + splitmix64(&state) % (WINDOW_SLOTS - 1)) % WINDOW_SLOTS;
    uint64_t word = splitmix64(&state) % PAGE_WORDS;
    const uint64_t own_base = WINDOW(PD_SLOT_OWN_TABLE * SIZE_2M);
    const uint64_t new_base = WINDOW(PD_SLOT_NEW * SIZE_2M);
    uint64_t *const *pages_a = window.pages[KIND_A], *const *pages_b = window.pages[KIND_B];
    uint64_t *const *pages_c = window.pages[KIND_C], *const *pages_d = window.pages[KIND_D];

    /* Kernel PT: remap slot `remapped` A -> B, unmap slot `unmapped`, map a fresh slot onto the
     * B page of `unmapped`, writing through the new translations. */
    int failure = change_entry(round, WINDOW(remapped * PAGE_SIZE), entry_for(pages_b[remapped]),
                               entry_for(pages_a[remapped]), false);
    if (!failure)
        failure = write_through(round, WINDOW(remapped * PAGE_SIZE), pages_b[remapped], word);
    if (!failure)
        failure = change_entry(round, WINDOW(unmapped * PAGE_SIZE), 0, entry_for(pages_a[unmapped]), false);
    if (!failure)
        failure = change_entry(round, WINDOW(fresh * PAGE_SIZE), entry_for(pages_b[unmapped]), 0, false);
    if (!failure)
        failure = write_through(round, WINDOW(fresh * PAGE_SIZE), pages_b[unmapped], word);
    if (failure)
        return failure;
    if (rt_sys_set_pte(own_base, 0) != (uint64_t)RT_SYS_ERROR)
        return report(SERVICE_FAILED, round, "set_pte outside the kernel PT was accepted", own_base, 0, 0);

    /* The program's own PT, edited at CPL3: slot `edited` C -> D. */
    window.own_table[edited] = entry_for(pages_d[edited]);
    if (rt_sys_invlpg(own_base + edited * PAGE_SIZE) != 0)
        return report(SERVICE_FAILED, round, "invlpg", own_base + edited * PAGE_SIZE, 0, 1);
    failure = write_through(round, own_base + edited * PAGE_SIZE, pages_d[edited], word);

    /* PD: switch slot 1 to the second table (now D everywhere), and link the own table at a PD
     * slot that was empty at the SAVE; read and write through both. */
    if (!failure)
        failure = change_entry(round, own_base, entry_for(window.other_table), entry_for(window.own_table), true);
    if (!failure)
        failure = check_region(PAGE_TABLE_CHANGE_INEFFECTIVE, round, "page read through the switched PD entry",
                               (const uint64_t *)(uintptr_t)(own_base + switched * PAGE_SIZE), PAGE_WORDS,
                               window_page_salt(KIND_D, switched), 0);
    if (!failure)
        failure = change_entry(round, new_base, entry_for(window.own_table), 0, true);
    if (!failure)
        failure = write_through(round, new_base + switched * PAGE_SIZE, pages_c[switched], word);
    return failure;
}

/* ---- the program's own globals: all of .data and .bss, copied right before the SAVE */

extern char __user_ro_end[], __user_image_end[];

static int check_globals(const uint64_t *copy, uint64_t round)
{
    const uint64_t *live = (const uint64_t *)(uintptr_t)__user_ro_end;
    uint64_t words = (uint64_t)(__user_image_end - __user_ro_end) / 8;
    for (uint64_t i = 0; i < words; i++)
        if (live[i] != copy[i])
            return report(GLOBAL_NOT_RESTORED, round, "global data (.data/.bss)", (uint64_t)(uintptr_t)&live[i],
                          copy[i], live[i]);
    return 0;
}

/* ---- main */

static bool parse_u64(const char *s, size_t length, uint64_t *value)
{
    uint64_t v = 0;
    unsigned base = 10;
    if (length > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        length -= 2;
    }
    if (length == 0)
        return false;
    for (size_t i = 0; i < length; i++) {
        char c = s[i];
        unsigned digit;
        if (c >= '0' && c <= '9')
            digit = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            digit = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            digit = (unsigned)(c - 'A' + 10);
        else
            return false;
        if (v > (UINT64_MAX - digit) / base)
            return false;
        v = v * base + digit;
    }
    *value = v;
    return true;
}

static bool parse_options(const char *cmdline)
{
    static const struct {
        const char *name;
        uint64_t *value;
    } keys[] = {
        {"rounds", &options.rounds}, {"pages", &options.pages},       {"seed", &options.seed},
        {"pt", &options.pt},         {"fpu", &options.fpu},           {"buffer", &options.buffer_mib},
        {"check", &options.check},   {"verbose", &options.verbose},
    };
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *token = p;
        while (*p && *p != ' ')
            p++;
        size_t length = (size_t)(p - token);
        bool known = false;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            size_t name_length = strlen(keys[k].name);
            if (length > name_length && strncmp(token, keys[k].name, name_length) == 0 && token[name_length] == '=') {
                if (!parse_u64(token + name_length + 1, length - name_length - 1, keys[k].value))
                    return false;
                known = true;
            }
        }
        if (!known)
            return false;
    }
    return options.pt <= 1 && options.fpu <= 1 && options.buffer_mib > 0 &&
           (options.buffer_mib & (options.buffer_mib - 1)) == 0 && options.buffer_mib <= (1ull << 20) &&
           options.pages <= options.buffer_mib * 256 && options.rounds < (1ull << 32);
}

static inline uint64_t rdtsc(void)
{
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

static int full_check(uint64_t *stack_area, uint64_t round)
{
    int failure = check_region(BUFFER_CHECK, round, "whole-buffer check", buffer, buffer_pages * PAGE_WORDS,
                               BUFFER_SALT, 0);
    if (!failure)
        failure = check_region(STACK_NOT_RESTORED, round, "stack area check", stack_area,
                               STACK_AREA_PAGES * PAGE_WORDS, STACK_SALT, 0);
    return failure;
}

int main(void)
{
    if (!parse_options(rt_cmdline())) {
        rt_printf("snapshot-stress: bad command line '%s'\n"
                  "usage: rounds=N pages=K seed=S pt=0|1 fpu=0|1 buffer=MiB(power of two) check=C\n",
                  rt_cmdline());
        return BAD_ARGUMENTS;
    }
    int error = rt_snapshot_open();
    if (error != RT_SNAPSHOT_OK) {
        rt_printf("snapshot-stress: %s\n", rt_snapshot_strerror(error));
        return DEVICE;
    }
    buffer_pages = options.buffer_mib * 256;
    buffer = rt_alloc_pages(buffer_pages);
    if (!buffer) {
        rt_printf("snapshot-stress: no room for a %lu MiB buffer\n", (unsigned long)options.buffer_mib);
        return NO_MEMORY;
    }
    fill_pattern(buffer, buffer_pages * PAGE_WORDS, BUFFER_SALT, 0);
    uint64_t stack_area[STACK_AREA_PAGES * PAGE_WORDS];
    fill_pattern(stack_area, STACK_AREA_PAGES * PAGE_WORDS, STACK_SALT, 0);
    if (options.pt) {
        int failure = window_setup();
        if (!failure)
            failure = window_check(0);
        if (failure)
            return failure;
    }
    struct register_image saved_registers, registers_after_save, junk_registers;
    make_register_image(&saved_registers, round_seed(0, 100), 0x7f80 /* round toward zero */,
                        0x0f7f /* round toward zero, 64-bit precision */);
    round_marker = 0;
    uint64_t globals_size = (uint64_t)(__user_image_end - __user_ro_end);
    uint64_t *globals_at_save = rt_alloc_pages((globals_size + PAGE_SIZE - 1) / PAGE_SIZE);
    /* The stack below this frame that the rounds' deeper calls overwrite (stack_dive reaches
     * ~16 KiB down); the 8 KiB right below the stack pointer belong to the shallow calls around
     * the SAVE and the checks. */
    uint64_t stack_pointer;
    __asm__ volatile("mov %%rsp, %0" : "=r"(stack_pointer));
    const uint64_t *deep_stack = (const uint64_t *)(uintptr_t)((stack_pointer - DEEP_STACK_SKIP - DEEP_STACK_BYTES) & ~7ull);
    uint64_t *deep_stack_at_save = rt_alloc_pages(DEEP_STACK_BYTES / PAGE_SIZE);
    if (!globals_at_save || !deep_stack_at_save)
        return NO_MEMORY;
    rt_printf("snapshot-stress: rounds=%lu pages=%lu seed=%lu pt=%lu fpu=%lu buffer=%lu MiB at %p check=%lu\n",
              (unsigned long)options.rounds, (unsigned long)options.pages, (unsigned long)options.seed,
              (unsigned long)options.pt, (unsigned long)options.fpu, (unsigned long)options.buffer_mib,
              (void *)buffer, (unsigned long)options.check);
    volatile void *regs = rt_snapshot_registers();
    uint64_t started = rdtsc();
    memcpy(globals_at_save, __user_ro_end, globals_size);
    memcpy(deep_stack_at_save, deep_stack, DEEP_STACK_BYTES);

    /* ---- the snapshot; everything below runs once per round */
    uint64_t round = options.fpu ? save_with_registers(regs, &saved_registers, &registers_after_save)
                                 : rt_snapshot_save();
    if (round == 0 && options.fpu)
        round = (uint64_t)snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_HI) << 32;
    if (round > options.rounds)
        return report(BAD_ROUND, round, "RESTORES beyond the rounds asked for", 0, options.rounds, round);

    /* First, before anything here writes a global (printing does). */
    int failure = check_globals(globals_at_save, round);
    if (!failure && round_marker != 0)
        failure = report(GLOBAL_NOT_RESTORED, round, "global set by the previous round",
                         (uint64_t)(uintptr_t)&round_marker, 0, round_marker);
    if (options.verbose)
        rt_printf("snapshot-stress: round %lu\n", (unsigned long)round);
    if (!failure && options.fpu)
        failure = check_registers(&saved_registers, &registers_after_save, round);
    if (!failure && round > 0)
        failure = check_previous_round_pages(round);
    if (!failure && round > 0)
        failure = check_stack_words(stack_area, round);
    for (uint64_t i = 0; !failure && i < DEEP_STACK_BYTES / 8; i++)
        if (deep_stack[i] != deep_stack_at_save[i])
            failure = report(STACK_NOT_RESTORED, round, "stack below the SAVE's frame",
                             (uint64_t)(uintptr_t)&deep_stack[i], deep_stack_at_save[i], deep_stack[i]);
    if (!failure && options.pt && round > 0)
        failure = window_check(round);
    bool last = round == options.rounds;
    if (!failure && (last || (options.check && round % options.check == 0)))
        failure = full_check(stack_area, round);
    if (failure)
        return failure;

    if (last) {
        uint64_t cycles = rdtsc() - started;
        uint32_t status = rt_snapshot_status();
        rt_printf("snapshot-stress: %lu rounds ok (pages=%lu seed=%lu pt=%lu fpu=%lu buffer=%lu MiB); "
                  "%lu TSC cycles, %lu per round; status 0x%x\n",
                  (unsigned long)round, (unsigned long)options.pages, (unsigned long)options.seed,
                  (unsigned long)options.pt, (unsigned long)options.fpu, (unsigned long)options.buffer_mib,
                  (unsigned long)cycles, (unsigned long)(round ? cycles / round : 0), status);
        return 0;
    }

    /* ---- this round's changes */
    failure = dirty_pages(round);
    if (failure)
        return failure;
    write_stack(stack_area, round);
    round_marker = round + 1;
    if (options.pt) {
        failure = window_round(round);
        if (failure)
            return failure;
    }
    uint32_t status;
    if (options.fpu) {
        make_register_image(&junk_registers, round_seed(round, 101), 0x5fbf /* flags set, round up */,
                            0x027f /* 53-bit precision */);
        restore_with_junk_registers(regs, &junk_registers);
        status = rt_snapshot_status();
    } else {
        status = rt_snapshot_restore();
    }
    return report(RESTORE_RETURNED, round, "RESTORE returned; STATUS", 0, 0, status);
}
