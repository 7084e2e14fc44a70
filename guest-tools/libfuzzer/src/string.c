/* string.c - the string.h functions the runtime's own string.c (memcpy, memmove, memset, memcmp,
 * strlen, strcmp, strncmp) does not already provide. */
#include "rt.h"
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

int bcmp(const void *a, const void *b, size_t n)
{
    /* clang turns `memcmp(...) == 0` into bcmp. */
    return memcmp(a, b, n);
}

void *memchr(const void *s, int c, size_t n)
{
    const uint8_t *p = s;
    for (size_t i = 0; i < n; i++)
        if (p[i] == (uint8_t)c)
            return (void *)(p + i);
    return NULL;
}

void *memrchr(const void *s, int c, size_t n)
{
    const uint8_t *p = s;
    while (n--)
        if (p[n] == (uint8_t)c)
            return (void *)(p + n);
    return NULL;
}

void *memmem(const void *haystack, size_t haystack_len, const void *needle, size_t needle_len)
{
    if (needle_len == 0)
        return (void *)haystack;
    const uint8_t *h = haystack;
    for (size_t i = 0; i + needle_len <= haystack_len; i++)
        if (h[i] == *(const uint8_t *)needle && memcmp(h + i, needle, needle_len) == 0)
            return (void *)(h + i);
    return NULL;
}

void *mempcpy(void *dst, const void *src, size_t n)
{
    return (uint8_t *)memcpy(dst, src, n) + n;
}

size_t strnlen(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n])
        n++;
    return n;
}

int strcasecmp(const char *a, const char *b)
{
    for (;; a++, b++) {
        int x = tolower((unsigned char)*a), y = tolower((unsigned char)*b);
        if (x != y || !x)
            return x - y;
    }
}

int strncasecmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int x = tolower((unsigned char)a[i]), y = tolower((unsigned char)b[i]);
        if (x != y || !x)
            return x - y;
    }
    return 0;
}

int strcoll(const char *a, const char *b)
{
    return strcmp(a, b);
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)s;
        if (!*s)
            return NULL;
    }
}

char *strchrnul(const char *s, int c)
{
    while (*s && *s != (char)c)
        s++;
    return (char *)s;
}

char *strrchr(const char *s, int c)
{
    const char *found = NULL;
    for (;; s++) {
        if (*s == (char)c)
            found = s;
        if (!*s)
            return (char *)found;
    }
}

char *strstr(const char *haystack, const char *needle)
{
    size_t needle_len = strlen(needle);
    for (; *haystack; haystack++)
        if (strncmp(haystack, needle, needle_len) == 0)
            return (char *)haystack;
    return needle_len ? NULL : (char *)haystack;
}

char *strcasestr(const char *haystack, const char *needle)
{
    size_t needle_len = strlen(needle);
    for (; *haystack; haystack++)
        if (strncasecmp(haystack, needle, needle_len) == 0)
            return (char *)haystack;
    return needle_len ? NULL : (char *)haystack;
}

size_t strspn(const char *s, const char *accept)
{
    size_t n = 0;
    while (s[n] && strchr(accept, s[n]))
        n++;
    return n;
}

size_t strcspn(const char *s, const char *reject)
{
    size_t n = 0;
    while (s[n] && !strchr(reject, s[n]))
        n++;
    return n;
}

char *strpbrk(const char *s, const char *accept)
{
    s += strcspn(s, accept);
    return *s ? (char *)s : NULL;
}

char *strtok_r(char *s, const char *delim, char **state)
{
    if (!s)
        s = *state;
    if (!s)
        return NULL;
    s += strspn(s, delim);
    if (!*s) {
        *state = NULL;
        return NULL;
    }
    char *end = s + strcspn(s, delim);
    if (*end)
        *end++ = '\0';
    else
        end = NULL;
    *state = end;
    return s;
}

char *strtok(char *s, const char *delim)
{
    static char *state;
    return strtok_r(s, delim, &state);
}

char *strsep(char **string, const char *delim)
{
    char *start = *string;
    if (!start)
        return NULL;
    char *end = start + strcspn(start, delim);
    if (*end)
        *end++ = '\0';
    else
        end = NULL;
    *string = end;
    return start;
}

char *stpcpy(char *dst, const char *src)
{
    while ((*dst = *src++))
        dst++;
    return dst;
}

char *strcpy(char *dst, const char *src)
{
    stpcpy(dst, src);
    return dst;
}

char *stpncpy(char *dst, const char *src, size_t n)
{
    size_t length = strnlen(src, n);
    memcpy(dst, src, length);
    memset(dst + length, 0, n - length);
    return dst + length;
}

char *strncpy(char *dst, const char *src, size_t n)
{
    stpncpy(dst, src, n);
    return dst;
}

char *strcat(char *dst, const char *src)
{
    strcpy(dst + strlen(dst), src);
    return dst;
}

char *strncat(char *dst, const char *src, size_t n)
{
    char *end = dst + strlen(dst);
    size_t length = strnlen(src, n);
    memcpy(end, src, length);
    end[length] = '\0';
    return dst;
}

size_t strlcpy(char *dst, const char *src, size_t size)
{
    size_t length = strlen(src);
    if (size) {
        size_t copied = length < size - 1 ? length : size - 1;
        memcpy(dst, src, copied);
        dst[copied] = '\0';
    }
    return length;
}

size_t strlcat(char *dst, const char *src, size_t size)
{
    size_t used = strnlen(dst, size);
    if (used == size)
        return size + strlen(src);
    return used + strlcpy(dst + used, src, size - used);
}

char *strdup(const char *s)
{
    return strndup(s, strlen(s));
}

char *strndup(const char *s, size_t n)
{
    size_t length = strnlen(s, n);
    char *copy = malloc(length + 1);
    if (copy) {
        memcpy(copy, s, length);
        copy[length] = '\0';
    }
    return copy;
}

char *strerror(int error)
{
    (void)error;
    static char message[] = "error";
    return message;
}
