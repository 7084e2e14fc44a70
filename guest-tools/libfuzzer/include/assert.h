/* assert.h - a failed assertion is reported to the fuzzer as a crash (CRASH, code 0x1002). */
#ifndef SNAPVMM_LIBC_ASSERT_H
#define SNAPVMM_LIBC_ASSERT_H

#ifdef __cplusplus
extern "C" {
#endif
__attribute__((noreturn)) void __assert_fail(const char *expression, const char *file, unsigned line,
                                             const char *function);
#ifdef __cplusplus
}
#endif
#endif

#undef assert
#ifdef NDEBUG
#define assert(expression) ((void)0)
#else
#define assert(expression)                                                                         \
    ((expression) ? (void)0 : __assert_fail(#expression, __FILE__, __LINE__, __func__))
#endif
#if !defined(__cplusplus) && __STDC_VERSION__ >= 201112L && !defined(static_assert)
#define static_assert _Static_assert
#endif
