/* stdio.h - output only. Before the snapshot (LLVMFuzzerInitialize) it goes to the serial console;
 * during fuzzing runs it is dropped (every serial burst is a VM exit) unless the kernel command
 * line says `printf=1` (e.g. `snapvmm repro --cmdline printf=1 ...`). There is no file system:
 * fopen() and friends fail. Formats: %d %i %u %x %X %o %c %s %p %%, flags - 0 + space #, width
 * and precision (also *), the hh h l ll z j t length modifiers; no floating point. */
#ifndef SNAPVMM_LIBC_STDIO_H
#define SNAPVMM_LIBC_STDIO_H
#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct snapvmm_file FILE;
extern FILE *const stdin;
extern FILE *const stdout;
extern FILE *const stderr;
#define stdin stdin
#define stdout stdout
#define stderr stderr
#define EOF (-1)
#define BUFSIZ 1024
#define SEEK_SET 0
#define SEEK_CUR 1
#define SEEK_END 2

int printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
int fprintf(FILE *stream, const char *format, ...) __attribute__((format(printf, 2, 3)));
int sprintf(char *buffer, const char *format, ...) __attribute__((format(printf, 2, 3)));
int snprintf(char *buffer, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
int vprintf(const char *format, va_list args);
int vfprintf(FILE *stream, const char *format, va_list args);
int vsprintf(char *buffer, const char *format, va_list args);
int vsnprintf(char *buffer, size_t size, const char *format, va_list args);
int puts(const char *s);
int fputs(const char *s, FILE *stream);
int putchar(int c);
int fputc(int c, FILE *stream);
int putc(int c, FILE *stream);
size_t fwrite(const void *data, size_t size, size_t count, FILE *stream);
int fflush(FILE *stream);
void perror(const char *message);
FILE *fopen(const char *path, const char *mode);
int fclose(FILE *stream);
size_t fread(void *data, size_t size, size_t count, FILE *stream);
int fgetc(FILE *stream);
int getc(FILE *stream);
char *fgets(char *buffer, int size, FILE *stream);
int feof(FILE *stream);
int ferror(FILE *stream);
int fseek(FILE *stream, long offset, int whence);
long ftell(FILE *stream);

#ifdef __cplusplus
}
#endif
#endif
