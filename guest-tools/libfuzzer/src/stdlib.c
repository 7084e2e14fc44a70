/* stdlib.c - numbers, sorting and the rest of stdlib.h (the heap is malloc.c, abort() crash.c). */
#include "rt.h"
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

int abs(int x) { return x < 0 ? -x : x; }
long labs(long x) { return x < 0 ? -x : x; }
long long llabs(long long x) { return x < 0 ? -x : x; }

div_t div(int numerator, int denominator)
{
    return (div_t){numerator / denominator, numerator % denominator};
}

ldiv_t ldiv(long numerator, long denominator)
{
    return (ldiv_t){numerator / denominator, numerator % denominator};
}

/* The magnitude of a number in `base` (0: C prefixes), its sign, and where it ended. */
static unsigned long long parse_unsigned(const char *s, char **end, int base, bool *negative, bool *overflow)
{
    const char *at = s;
    while (isspace((unsigned char)*at))
        at++;
    *negative = false;
    *overflow = false;
    if (*at == '+' || *at == '-')
        *negative = *at++ == '-';
    if ((base == 0 || base == 16) && at[0] == '0' && (at[1] == 'x' || at[1] == 'X') && isxdigit((unsigned char)at[2])) {
        at += 2;
        base = 16;
    } else if (base == 0) {
        base = *at == '0' ? 8 : 10;
    }
    if (base < 2 || base > 36) {
        errno = EINVAL;
        if (end)
            *end = (char *)s;
        return 0;
    }
    unsigned long long value = 0;
    const char *digits = at;
    for (;; at++) {
        int digit;
        if (isdigit((unsigned char)*at))
            digit = *at - '0';
        else if (isalpha((unsigned char)*at))
            digit = tolower((unsigned char)*at) - 'a' + 10;
        else
            break;
        if (digit >= base)
            break;
        if (__builtin_mul_overflow(value, (unsigned)base, &value) || __builtin_add_overflow(value, (unsigned)digit, &value))
            *overflow = true;
    }
    if (end)
        *end = (char *)(at == digits ? s : at);
    return *overflow ? ULLONG_MAX : value;
}

unsigned long long strtoull(const char *s, char **end, int base)
{
    bool negative, overflow;
    unsigned long long value = parse_unsigned(s, end, base, &negative, &overflow);
    if (overflow) {
        errno = ERANGE;
        return ULLONG_MAX;
    }
    return negative ? -value : value;
}

unsigned long strtoul(const char *s, char **end, int base)
{
    return strtoull(s, end, base);
}

long long strtoll(const char *s, char **end, int base)
{
    bool negative, overflow;
    unsigned long long value = parse_unsigned(s, end, base, &negative, &overflow);
    if (!negative && (overflow || value > (unsigned long long)LLONG_MAX)) {
        errno = ERANGE;
        return LLONG_MAX;
    }
    if (negative && (overflow || value > (unsigned long long)LLONG_MAX + 1)) {
        errno = ERANGE;
        return LLONG_MIN;
    }
    return negative ? (long long)(0 - value) : (long long)value;
}

long strtol(const char *s, char **end, int base)
{
    return strtoll(s, end, base);
}

int atoi(const char *s) { return (int)strtol(s, NULL, 10); }
long atol(const char *s) { return strtol(s, NULL, 10); }
long long atoll(const char *s) { return strtoll(s, NULL, 10); }

/* A fixed seed, so every run of the same input does the same thing; the state is part of the
 * snapshot, so it restarts with every run. */
static unsigned long long rand_state = 1;

void srand(unsigned seed)
{
    rand_state = seed;
}

int rand(void)
{
    rand_state = rand_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int)(rand_state >> 33);
}

static void swap_bytes(uint8_t *a, uint8_t *b, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        uint8_t t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

/* Heapsort: no recursion, no allocation, O(n log n) whatever the input (a fuzzer finds the
 * quadratic cases of a naive quicksort). */
static void sift_down(uint8_t *base, size_t root, size_t count, size_t size, int (*compare)(const void *, const void *))
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= count)
            return;
        if (child + 1 < count && compare(base + child * size, base + (child + 1) * size) < 0)
            child++;
        if (compare(base + root * size, base + child * size) >= 0)
            return;
        swap_bytes(base + root * size, base + child * size, size);
        root = child;
    }
}

void qsort(void *base, size_t count, size_t size, int (*compare)(const void *, const void *))
{
    uint8_t *bytes = base;
    if (count < 2 || size == 0)
        return;
    for (size_t i = count / 2; i-- > 0;)
        sift_down(bytes, i, count, size, compare);
    for (size_t end = count - 1; end > 0; end--) {
        swap_bytes(bytes, bytes + end * size, size);
        sift_down(bytes, 0, end, size, compare);
    }
}

void *bsearch(const void *key, const void *base, size_t count, size_t size, int (*compare)(const void *, const void *))
{
    const uint8_t *bytes = base;
    while (count) {
        const uint8_t *middle = bytes + (count / 2) * size;
        int order = compare(key, middle);
        if (order == 0)
            return (void *)middle;
        if (order > 0) {
            bytes = middle + size;
            count -= count / 2 + 1;
        } else {
            count /= 2;
        }
    }
    return NULL;
}

char *getenv(const char *name)
{
    /* No environment in a bare-metal target. */
    (void)name;
    return NULL;
}
