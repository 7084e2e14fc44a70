/* libfuzzer_rt.h - internals shared by the libFuzzer shim and its libc subset
 * (docs/libfuzzer-targets.md). None of this is compiled with coverage instrumentation. */
#ifndef SNAPVMM_LIBFUZZER_RT_H
#define SNAPVMM_LIBFUZZER_RT_H
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CRASH codes (the fuzzer files them as `kind:crash,code:N`). */
#define LIBFUZZER_CRASH_ABORT 0x1001u         /* abort() */
#define LIBFUZZER_CRASH_ASSERT 0x1002u        /* a failed assert() */
#define LIBFUZZER_CRASH_HEAP_OVERFLOW 0x1003u /* a heap block's redzone was overwritten */
#define LIBFUZZER_CRASH_DOUBLE_FREE 0x1004u   /* free()/realloc() of a freed block */
#define LIBFUZZER_CRASH_BAD_FREE 0x1005u      /* free()/realloc() of a pointer malloc never returned */
#define LIBFUZZER_CRASH_EXIT 0x1006u          /* exit() during a run (libFuzzer: "fuzz target exited") */

/* Reports a crash with the pc the fuzzer files it under (the harness's call site, not ours)
 * and never returns. Before the snapshot there is no run to blame: message and exit 29. */
__attribute__((noreturn)) void libfuzzer_crash(uint32_t code, uint64_t pc, const char *message);
/* Whether printf-family output reaches the serial console now (always before the snapshot,
 * during runs only with `printf=1` on the kernel command line). */
bool libfuzzer_output_enabled(void);
/* Decided once, before the snapshot, by the shim's main. */
void libfuzzer_output_configure(void);
/* Checks every live heap block's redzone (run end); reports a crash on damage. */
void libfuzzer_heap_check(void);
/* The formatter behind the printf family: calls `emit` for each output chunk. */
int libfuzzer_format(void (*emit)(void *context, const char *text, size_t length), void *context,
                     const char *format, va_list args);

#define LIBFUZZER_CALLER() ((uint64_t)(uintptr_t)__builtin_return_address(0))
#endif
