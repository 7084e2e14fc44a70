/* main.c - the libFuzzer shim: the runtime's main() for a harness that defines
 * LLVMFuzzerTestOneInput (and maybe LLVMFuzzerInitialize). Initialisation runs once, before
 * the snapshot; every run is one LLVMFuzzerTestOneInput on the input in BAR2, then a check of the
 * heap's redzones, then DONE. */
#include "rt.h"
#include "libfuzzer_rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in libFuzzer, so weak: NULL when the harness does not define it. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* libFuzzer passes the real argv; ours is the program name, as libFuzzer's argv[0] would be. */
static char program_name[] = "snapvmm-target";
static char *fuzzer_argv[] = {program_name, NULL};
static int fuzzer_argc = 1;

int main(void)
{
    libfuzzer_output_configure();
    if (LLVMFuzzerInitialize) {
        char **argv = fuzzer_argv;
        LLVMFuzzerInitialize(&fuzzer_argc, &argv);
    }
    for (;;) {
        size_t size;
        /* The first call SAVEs: everything above happened once, before the snapshot. */
        const uint8_t *data = rt_fuzz_input(&size);
        /* libFuzzer's return value is 0, or -1 to keep the input out of the corpus; neither is a
         * verdict, so the run ends normally either way. */
        (void)LLVMFuzzerTestOneInput(data, size);
        libfuzzer_heap_check();
        rt_fuzz_done(0);
    }
}
