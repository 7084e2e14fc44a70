/* stdio.c - the printf family and the FILE stubs. Output goes to the serial console before the
 * snapshot and, during runs, only with `printf=1` on the kernel command line: every serial burst
 * is a VM exit, and harnesses print on error paths a fuzzer takes all the time. */
#include "rt.h"
#include "libfuzzer_rt.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct snapvmm_file {
    int descriptor;
};
static struct snapvmm_file standard_files[3] = {{0}, {1}, {2}};
#undef stdin
#undef stdout
#undef stderr
FILE *const stdin = &standard_files[0];
FILE *const stdout = &standard_files[1];
FILE *const stderr = &standard_files[2];

static bool output_in_runs;

void libfuzzer_output_configure(void)
{
    const char *value = rt_cmdline_value("printf");
    output_in_runs = value && value[0] == '1';
}

bool libfuzzer_output_enabled(void)
{
    return output_in_runs || !rt_fuzz_running();
}

/* ---- the formatter */

struct spec {
    bool left, zero, plus, space, alternate;
    int width, precision; /* precision < 0: none */
};

static void emit_repeated(void (*emit)(void *, const char *, size_t), void *context, char c, int count)
{
    char chunk[16];
    memset(chunk, c, sizeof chunk);
    while (count > 0) {
        int n = count < (int)sizeof chunk ? count : (int)sizeof chunk;
        emit(context, chunk, (size_t)n);
        count -= n;
    }
}

/* Emits `prefix` (sign or 0x), zero padding to the precision, and the digits, within the width. */
static int emit_number(void (*emit)(void *, const char *, size_t), void *context, const struct spec *spec,
                       const char *prefix, const char *digits, int digit_count)
{
    int prefix_length = (int)strlen(prefix);
    int zeros = spec->precision > digit_count ? spec->precision - digit_count : 0;
    if (spec->precision == 0 && digit_count == 1 && digits[0] == '0')
        digit_count = 0;
    int body = prefix_length + zeros + digit_count;
    int padding = spec->width > body ? spec->width - body : 0;
    if (spec->zero && !spec->left && spec->precision < 0) {
        zeros += padding;
        padding = 0;
    }
    if (!spec->left)
        emit_repeated(emit, context, ' ', padding);
    emit(context, prefix, (size_t)prefix_length);
    emit_repeated(emit, context, '0', zeros);
    emit(context, digits, (size_t)digit_count);
    if (spec->left)
        emit_repeated(emit, context, ' ', padding);
    return prefix_length + zeros + digit_count + padding;
}

static int emit_text(void (*emit)(void *, const char *, size_t), void *context, const struct spec *spec,
                     const char *text, size_t length)
{
    int padding = spec->width > (int)length ? spec->width - (int)length : 0;
    if (!spec->left)
        emit_repeated(emit, context, ' ', padding);
    emit(context, text, length);
    if (spec->left)
        emit_repeated(emit, context, ' ', padding);
    return (int)length + padding;
}

int libfuzzer_format(void (*emit)(void *, const char *, size_t), void *context, const char *format, va_list args)
{
    int total = 0;
    while (*format) {
        if (*format != '%') {
            const char *run = format;
            while (*format && *format != '%')
                format++;
            emit(context, run, (size_t)(format - run));
            total += (int)(format - run);
            continue;
        }
        const char *conversion_start = format;
        format++;
        struct spec spec = {.precision = -1};
        for (;; format++) {
            if (*format == '-')
                spec.left = true;
            else if (*format == '0')
                spec.zero = true;
            else if (*format == '+')
                spec.plus = true;
            else if (*format == ' ')
                spec.space = true;
            else if (*format == '#')
                spec.alternate = true;
            else
                break;
        }
        if (*format == '*') {
            spec.width = va_arg(args, int);
            if (spec.width < 0) {
                spec.left = true;
                spec.width = spec.width == INT32_MIN ? 0 : -spec.width;
            }
            format++;
        } else {
            while (*format >= '0' && *format <= '9' && spec.width < 100000)
                spec.width = spec.width * 10 + (*format++ - '0');
        }
        if (*format == '.') {
            format++;
            spec.precision = 0;
            if (*format == '*') {
                spec.precision = va_arg(args, int);
                format++;
            } else {
                while (*format >= '0' && *format <= '9' && spec.precision < 100000)
                    spec.precision = spec.precision * 10 + (*format++ - '0');
            }
        }
        int length_bits = 32; /* 8, 16, 32 or 64 */
        for (;; format++) {
            if (*format == 'h')
                length_bits = length_bits == 16 ? 8 : 16;
            else if (*format == 'l' || *format == 'z' || *format == 'j' || *format == 't' || *format == 'L' || *format == 'q')
                length_bits = 64;
            else
                break;
        }
        char conversion = *format;
        if (!conversion)
            break;
        format++;
        char digits[32];
        int count = 0;
        switch (conversion) {
        case 'd':
        case 'i': {
            long long value = length_bits == 64 ? va_arg(args, long long) : va_arg(args, int);
            if (length_bits == 16)
                value = (short)value;
            else if (length_bits == 8)
                value = (signed char)value;
            unsigned long long magnitude = value < 0 ? 0ull - (unsigned long long)value : (unsigned long long)value;
            do {
                digits[sizeof digits - 1 - count++] = (char)('0' + magnitude % 10);
                magnitude /= 10;
            } while (magnitude);
            const char *prefix = value < 0 ? "-" : spec.plus ? "+" : spec.space ? " " : "";
            total += emit_number(emit, context, &spec, prefix, digits + sizeof digits - count, count);
            break;
        }
        case 'u':
        case 'x':
        case 'X':
        case 'o':
        case 'p': {
            unsigned long long value;
            if (conversion == 'p') {
                value = (uintptr_t)va_arg(args, void *);
                spec.alternate = true;
            } else {
                value = length_bits == 64 ? va_arg(args, unsigned long long) : va_arg(args, unsigned);
                if (length_bits == 16)
                    value = (unsigned short)value;
                else if (length_bits == 8)
                    value = (unsigned char)value;
            }
            unsigned base = conversion == 'u' ? 10 : conversion == 'o' ? 8 : 16;
            const char *alphabet = conversion == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            bool nonzero = value != 0;
            do {
                digits[sizeof digits - 1 - count++] = alphabet[value % base];
                value /= base;
            } while (value);
            const char *prefix = "";
            if (spec.alternate && base == 16 && (nonzero || conversion == 'p'))
                prefix = conversion == 'X' ? "0X" : "0x";
            else if (spec.alternate && base == 8 && nonzero)
                prefix = "0";
            total += emit_number(emit, context, &spec, prefix, digits + sizeof digits - count, count);
            break;
        }
        case 'c': {
            char c = (char)va_arg(args, int);
            total += emit_text(emit, context, &spec, &c, 1);
            break;
        }
        case 's': {
            const char *s = va_arg(args, const char *);
            if (!s)
                s = "(null)";
            size_t length = spec.precision >= 0 ? strnlen(s, (size_t)spec.precision) : strlen(s);
            total += emit_text(emit, context, &spec, s, length);
            break;
        }
        case 'n':
            /* Writing through a format argument is refused, as in hardened libcs. */
            (void)va_arg(args, int *);
            break;
        case '%':
            emit(context, "%", 1);
            total++;
            break;
        default:
            /* Unknown (or floating point): shown as written. */
            emit(context, conversion_start, (size_t)(format - conversion_start));
            total += (int)(format - conversion_start);
            break;
        }
    }
    return total;
}

/* ---- console output */

struct console_buffer {
    char text[128];
    size_t used;
};

static void console_flush(struct console_buffer *buffer)
{
    buffer->text[buffer->used] = '\0';
    rt_print(buffer->text);
    buffer->used = 0;
}

static void console_emit(void *context, const char *text, size_t length)
{
    struct console_buffer *buffer = context;
    for (size_t i = 0; i < length; i++) {
        if (buffer->used == sizeof buffer->text - 1)
            console_flush(buffer);
        /* rt_print stops at a NUL: show it as a dot. */
        buffer->text[buffer->used++] = text[i] ? text[i] : '.';
    }
}

static void console_write(const char *text, size_t length)
{
    if (!libfuzzer_output_enabled())
        return;
    struct console_buffer buffer = {.used = 0};
    console_emit(&buffer, text, length);
    console_flush(&buffer);
}

int vfprintf(FILE *stream, const char *format, va_list args)
{
    (void)stream;
    if (!libfuzzer_output_enabled()) {
        /* Still count, for callers that use the result. */
        va_list copy;
        va_copy(copy, args);
        char none[1];
        int length = vsnprintf(none, 0, format, copy);
        va_end(copy);
        return length;
    }
    struct console_buffer buffer = {.used = 0};
    int length = libfuzzer_format(console_emit, &buffer, format, args);
    console_flush(&buffer);
    return length;
}

int vprintf(const char *format, va_list args)
{
    return vfprintf(stdout, format, args);
}

int printf(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int length = vfprintf(stdout, format, args);
    va_end(args);
    return length;
}

int fprintf(FILE *stream, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int length = vfprintf(stream, format, args);
    va_end(args);
    return length;
}

/* ---- formatting into memory */

struct memory_sink {
    char *buffer;
    size_t capacity; /* bytes that may be written, the NUL included */
    size_t used;
};

static void memory_emit(void *context, const char *text, size_t length)
{
    struct memory_sink *sink = context;
    for (size_t i = 0; i < length; i++, sink->used++)
        if (sink->used + 1 < sink->capacity)
            sink->buffer[sink->used] = text[i];
}

int vsnprintf(char *buffer, size_t size, const char *format, va_list args)
{
    struct memory_sink sink = {buffer, size, 0};
    int length = libfuzzer_format(memory_emit, &sink, format, args);
    if (size)
        buffer[sink.used < size ? sink.used : size - 1] = '\0';
    return length;
}

int vsprintf(char *buffer, const char *format, va_list args)
{
    /* Unbounded, as the C library's: a harness that overflows its buffer overflows it here too. */
    return vsnprintf(buffer, SIZE_MAX, format, args);
}

int snprintf(char *buffer, size_t size, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int length = vsnprintf(buffer, size, format, args);
    va_end(args);
    return length;
}

int sprintf(char *buffer, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int length = vsnprintf(buffer, SIZE_MAX, format, args);
    va_end(args);
    return length;
}

/* ---- the rest of the output functions */

int fputs(const char *s, FILE *stream)
{
    (void)stream;
    console_write(s, strlen(s));
    return 0;
}

int puts(const char *s)
{
    console_write(s, strlen(s));
    console_write("\n", 1);
    return 0;
}

int fputc(int c, FILE *stream)
{
    (void)stream;
    char byte = (char)c;
    console_write(&byte, 1);
    return (unsigned char)c;
}

int putc(int c, FILE *stream)
{
    return fputc(c, stream);
}

int putchar(int c)
{
    return fputc(c, stdout);
}

size_t fwrite(const void *data, size_t size, size_t count, FILE *stream)
{
    (void)stream;
    size_t total;
    if (__builtin_mul_overflow(size, count, &total))
        return 0;
    console_write(data, total);
    return count;
}

int fflush(FILE *stream)
{
    (void)stream;
    return 0;
}

void perror(const char *message)
{
    if (message && *message)
        fprintf(stderr, "%s: error %d\n", message, errno);
    else
        fprintf(stderr, "error %d\n", errno);
}

/* ---- no file system */

FILE *fopen(const char *path, const char *mode)
{
    (void)path;
    (void)mode;
    errno = ENOENT;
    return NULL;
}

int fclose(FILE *stream)
{
    (void)stream;
    return 0;
}

size_t fread(void *data, size_t size, size_t count, FILE *stream)
{
    (void)data;
    (void)size;
    (void)count;
    (void)stream;
    return 0;
}

int fgetc(FILE *stream)
{
    (void)stream;
    return EOF;
}

int getc(FILE *stream)
{
    return fgetc(stream);
}

char *fgets(char *buffer, int size, FILE *stream)
{
    (void)buffer;
    (void)size;
    (void)stream;
    return NULL;
}

int feof(FILE *stream)
{
    (void)stream;
    return 1;
}

int ferror(FILE *stream)
{
    (void)stream;
    return 0;
}

int fseek(FILE *stream, long offset, int whence)
{
    (void)stream;
    (void)offset;
    (void)whence;
    errno = EBADF;
    return -1;
}

long ftell(FILE *stream)
{
    (void)stream;
    errno = EBADF;
    return -1;
}

/* ---- unistd.h */

ssize_t write(int descriptor, const void *data, size_t size)
{
    if (descriptor != STDOUT_FILENO && descriptor != STDERR_FILENO) {
        errno = EBADF;
        return -1;
    }
    console_write(data, size);
    return (ssize_t)size;
}

pid_t getpid(void)
{
    return 1;
}
