/* unistd.h - only what a bare-metal target can do: write(1 or 2, ...) goes where printf goes
 * (stdio.h); other descriptors fail with EBADF. There are no files, processes or sleeping. */
#ifndef SNAPVMM_LIBC_UNISTD_H
#define SNAPVMM_LIBC_UNISTD_H
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif
#define STDIN_FILENO 0
#define STDOUT_FILENO 1
#define STDERR_FILENO 2
ssize_t write(int descriptor, const void *data, size_t size);
pid_t getpid(void);
#ifdef __cplusplus
}
#endif
#endif
