/* console.c - COM1 output and a small printf. */
#include "rt.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20

/* Each port access is a VM exit (~30 us from CPL3 on kvm_pvm): poll the LSR once per FIFO load. */
static uint32_t tx_credit;

void rt_putc(char c)
{
    if (tx_credit == 0) {
        while (!(rt_inb(COM1_LSR) & LSR_THR_EMPTY)) {
        }
        const struct rt_boot_info *info = rt_boot_info();
        tx_credit = (info && info->serial_tx_burst) ? info->serial_tx_burst : 1;
    }
    rt_outb(COM1, (uint8_t)c);
    tx_credit--;
}

void rt_print(const char *s)
{
    while (*s)
        rt_putc(*s++);
}

/* Output goes either to COM1 (buf == NULL) or into a bounded buffer. */
struct sink {
    char *buf;
    size_t size, length;
};

static void emit(struct sink *out, char c)
{
    if (!out->buf)
        rt_putc(c);
    else if (out->length + 1 < out->size)
        out->buf[out->length] = c;
    out->length++;
}

static void emit_padded(struct sink *out, const char *s, size_t len, int width, int left, char pad)
{
    int fill = width > (int)len ? width - (int)len : 0;
    if (!left)
        while (fill-- > 0)
            emit(out, pad);
    for (size_t i = 0; i < len; i++)
        emit(out, s[i]);
    if (left)
        while (fill-- > 0)
            emit(out, ' ');
}

static void format(struct sink *out, const char *fmt, va_list args)
{
    while (*fmt) {
        if (*fmt != '%') {
            emit(out, *fmt++);
            continue;
        }
        fmt++;
        int left = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int longs = 0;
        for (;; fmt++) {
            if (*fmt == 'l' || *fmt == 'z')
                longs++;
            else if (*fmt != 'h')
                break;
        }
        char conversion = *fmt;
        if (conversion == 0)
            break;
        fmt++;
        char digits[24];
        size_t n = 0;
        uint64_t value;
        int negative = 0;
        unsigned base = 10;
        const char *hex = "0123456789abcdef";
        switch (conversion) {
        case 'c':
            digits[0] = (char)va_arg(args, int);
            emit_padded(out, digits, 1, width, left, ' ');
            continue;
        case 's': {
            const char *s = va_arg(args, const char *);
            if (!s)
                s = "(null)";
            emit_padded(out, s, strlen(s), width, left, ' ');
            continue;
        }
        case 'd':
        case 'i': {
            int64_t v = longs ? va_arg(args, int64_t) : va_arg(args, int);
            negative = v < 0;
            value = negative ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            break;
        }
        case 'u':
            value = longs ? va_arg(args, uint64_t) : va_arg(args, unsigned);
            break;
        case 'X':
            hex = "0123456789ABCDEF";
            /* fall through */
        case 'x':
            value = longs ? va_arg(args, uint64_t) : va_arg(args, unsigned);
            base = 16;
            break;
        case 'p':
            value = (uint64_t)(uintptr_t)va_arg(args, void *);
            base = 16;
            emit(out, '0');
            emit(out, 'x');
            break;
        default:
            emit(out, '%');
            emit(out, conversion);
            continue;
        }
        do {
            digits[sizeof(digits) - 1 - n++] = hex[value % base];
            value /= base;
        } while (value);
        if (negative) {
            if (pad == '0') {
                emit(out, '-');
                width--;
            } else {
                digits[sizeof(digits) - 1 - n++] = '-';
            }
        }
        emit_padded(out, &digits[sizeof(digits) - n], n, width, left, left ? ' ' : pad);
    }
}

int rt_vprintf(const char *fmt, va_list args)
{
    struct sink out = {NULL, 0, 0};
    format(&out, fmt, args);
    return (int)out.length;
}

int rt_printf(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int n = rt_vprintf(fmt, args);
    va_end(args);
    return n;
}

int rt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    struct sink out = {buf, size, 0};
    va_list args;
    va_start(args, fmt);
    format(&out, fmt, args);
    va_end(args);
    if (size > 0)
        buf[out.length < size ? out.length : size - 1] = 0;
    return (int)out.length;
}
