/* main.c - the libFuzzer shim: the runtime's main() for a harness that defines
 * LLVMFuzzerTestOneInput (and maybe LLVMFuzzerInitialize). Initialisation runs once, before
 * the snapshot; every run copies the input from BAR2 to the end of the input window, calls
 * LLVMFuzzerTestOneInput, checks the heap's redzones and ends with DONE. */
#include "rt.h"
#include "libfuzzer_rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in libFuzzer, so weak: NULL when the harness does not define it. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* libFuzzer passes the real argv; ours is the program name, as libFuzzer's argv[0] would be. */
static char program_name[] = "snapvmm-target";
static char *fuzzer_argv[] = {program_name, NULL};
static int fuzzer_argc = 1;

/* The input window: INPUT_WINDOW_PAGES read-only pages in the runtime's page-table test window
 * (rt_abi.h), backed by heap pages, with the next page left unmapped. The input is copied (through
 * the backing pages' identity mapping) so that it ends exactly where the window ends: reading one
 * byte past it is a #PF, and so is writing to it (libFuzzer's "the target modified its const
 * input"), as with libFuzzer's exactly-sized heap copy under ASan. Set up once, before the
 * snapshot; no page table changes afterwards, so a restore has no page-table page to put back. */
#define PAGE_SIZE 4096u
#define INPUT_WINDOW_PAGES 256u /* 1 MiB, BAR2's default size */
static uint8_t *input_window_end;
static uint8_t *input_backing_end;

static void input_window_setup(void)
{
    uint8_t *backing = rt_alloc_pages(INPUT_WINDOW_PAGES);
    if (!backing)
        return;
    for (uint64_t page = 0; page <= INPUT_WINDOW_PAGES; page++) {
        uint64_t va = RT_TEST_WINDOW_BASE + page * PAGE_SIZE;
        /* The page after the window stays not present: the guard. */
        uint64_t pte = page < INPUT_WINDOW_PAGES
                           ? rt_pte_for((uint64_t)(uintptr_t)backing + page * PAGE_SIZE) & ~(uint64_t)RT_PTE_WRITE
                           : 0;
        if (rt_sys_set_pte(va, pte) == (uint64_t)RT_SYS_ERROR)
            return;
    }
    input_window_end = (uint8_t *)(uintptr_t)(RT_TEST_WINDOW_BASE + INPUT_WINDOW_PAGES * PAGE_SIZE);
    input_backing_end = backing + INPUT_WINDOW_PAGES * PAGE_SIZE;
}

/* The input as the harness sees it: a copy ending at the window's guard page (or BAR2 itself
 * when there is no window or the input is larger than it). */
static const uint8_t *input_for_harness(const uint8_t *input, size_t size)
{
    if (!input_window_end || size > INPUT_WINDOW_PAGES * PAGE_SIZE)
        return input;
    memcpy(input_backing_end - size, input, size);
    return input_window_end - size;
}

int main(void)
{
    libfuzzer_output_configure();
    input_window_setup();
    if (LLVMFuzzerInitialize) {
        char **argv = fuzzer_argv;
        LLVMFuzzerInitialize(&fuzzer_argc, &argv);
    }
    for (;;) {
        size_t size;
        /* The first call SAVEs: everything above happened once, before the snapshot. */
        const uint8_t *data = input_for_harness(rt_fuzz_input(&size), size);
        /* libFuzzer's return value is 0, or -1 to keep the input out of the corpus; neither is a
         * verdict, so the run ends normally either way. */
        (void)LLVMFuzzerTestOneInput(data, size);
        libfuzzer_heap_check();
        rt_fuzz_done(0);
    }
}
