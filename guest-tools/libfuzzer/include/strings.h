/* strings.h - the freestanding libc subset of snapvmm's libFuzzer targets. */
#ifndef SNAPVMM_LIBC_STRINGS_H
#define SNAPVMM_LIBC_STRINGS_H
#include <string.h>
#endif
