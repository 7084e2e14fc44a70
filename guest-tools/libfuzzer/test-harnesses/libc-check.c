// libc-check.c - the libc subset checked from inside a target: LLVMFuzzerInitialize runs every
// check once and prints `libc-check: N checks passed` (or each failure, then exits 1); every
// run then exercises the heap (cli/tests/libfuzzer.rs runs it under `snapvmm run`).
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int checks, failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("libc-check: FAILED line %d: %s\n", __LINE__, #cond);                          \
        }                                                                                          \
    } while (0)

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void check_strings(void)
{
    char buffer[64];
    CHECK(strlen("hello") == 5);
    CHECK(strnlen("hello", 3) == 3);
    CHECK(strcmp("abc", "abd") < 0 && strcmp("abc", "abc") == 0);
    CHECK(strncmp("abcdef", "abcxyz", 3) == 0 && strncmp("abcdef", "abcxyz", 4) < 0);
    CHECK(strcasecmp("HeLLo", "hello") == 0 && strncasecmp("ABx", "aby", 2) == 0);
    CHECK(memcmp("\x01\x02", "\x01\x03", 2) < 0);
    const char *text = "key=value;other=1";
    CHECK(strchr(text, '=') == text + 3 && strrchr(text, '=') == text + 15 && !strchr(text, '#'));
    CHECK(strchr(text, '\0') == text + strlen(text));
    CHECK(strstr(text, "other") == text + 10 && !strstr(text, "missing") && strstr(text, "") == text);
    CHECK(memchr(text, ';', strlen(text)) == text + 9 && !memchr(text, ';', 9));
    CHECK(memmem(text, strlen(text), "=1", 2) == text + 15);
    CHECK(strspn("aabbc", "ab") == 4 && strcspn("hello world", " ") == 5 && strpbrk("abc", "xc") != NULL);
    strcpy(buffer, "abc");
    strcat(buffer, "def");
    CHECK(strcmp(buffer, "abcdef") == 0);
    strncpy(buffer, "xy", 5);
    CHECK(buffer[0] == 'x' && buffer[1] == 'y' && buffer[2] == 0 && buffer[4] == 0 && buffer[5] == 'f');
    CHECK(strlcpy(buffer, "truncated", 4) == 9 && strcmp(buffer, "tru") == 0);
    memset(buffer, 'z', 10);
    memmove(buffer + 2, buffer, 5);
    CHECK(buffer[9] == 'z');
    memcpy(buffer, "0123456789", 10);
    memmove(buffer + 1, buffer, 8);
    CHECK(memcmp(buffer, "0012345679", 10) == 0);
    char tokens[] = "a,b,,c";
    char *state, *first = strtok_r(tokens, ",", &state), *second = strtok_r(NULL, ",", &state);
    char *third = strtok_r(NULL, ",", &state);
    CHECK(first && second && third && strcmp(first, "a") == 0 && strcmp(second, "b") == 0 && strcmp(third, "c") == 0);
    CHECK(strtok_r(NULL, ",", &state) == NULL);
    char *copy = strdup("duplicate");
    CHECK(copy && strcmp(copy, "duplicate") == 0);
    free(copy);
    copy = strndup("duplicate", 3);
    CHECK(copy && strcmp(copy, "dup") == 0);
    free(copy);
    CHECK(isdigit('7') && !isdigit('a') && isalpha('Q') && isspace('\n') && toupper('a') == 'A' && tolower('Z') == 'z');
}

static void check_numbers(void)
{
    char *end;
    CHECK(atoi("  -42x") == -42);
    CHECK(strtol("0x1fZ", &end, 0) == 31 && *end == 'Z');
    CHECK(strtol("0777", NULL, 0) == 511 && strtoul("777", NULL, 8) == 511);
    CHECK(strtoll("-9223372036854775808", NULL, 10) == LLONG_MIN);
    errno = 0;
    CHECK(strtoll("9223372036854775808", NULL, 10) == LLONG_MAX && errno == ERANGE);
    CHECK(strtoull("18446744073709551615", NULL, 10) == ULLONG_MAX);
    CHECK(strtol("xyz", &end, 10) == 0 && strcmp(end, "xyz") == 0);
    CHECK(abs(-3) == 3 && labs(-4L) == 4 && div(7, 2).rem == 1);
    int values[] = {5, -1, 9, 3, 3, 0, 12, -7};
    qsort(values, 8, sizeof values[0], compare_ints);
    int sorted[] = {-7, -1, 0, 3, 3, 5, 9, 12};
    CHECK(memcmp(values, sorted, sizeof sorted) == 0);
    int key = 9;
    CHECK(bsearch(&key, values, 8, sizeof values[0], compare_ints) == &values[6]);
    key = 4;
    CHECK(bsearch(&key, values, 8, sizeof values[0], compare_ints) == NULL);
    int r1 = rand(), r2 = rand();
    CHECK(r1 >= 0 && r2 >= 0 && r1 != r2);
}

static void check_formatting(void)
{
    char buffer[128];
    CHECK(snprintf(buffer, sizeof buffer, "%d|%5d|%-5d|%05d|%+d", -12, 34, 56, 78, 9) == 24);
    CHECK(strcmp(buffer, "-12|   34|56   |00078|+9") == 0);
    snprintf(buffer, sizeof buffer, "%x|%X|%#x|%o|%p|%c|%%", 255u, 255u, 255u, 8u, (void *)0x1000, 'z');
    CHECK(strcmp(buffer, "ff|FF|0xff|10|0x1000|z|%") == 0);
    snprintf(buffer, sizeof buffer, "%s|%.3s|%8s|%-4s|%s", "abc", "abcdef", "right", "l", (char *)NULL);
    CHECK(strcmp(buffer, "abc|abc|   right|l   |(null)") == 0);
    snprintf(buffer, sizeof buffer, "%lu|%lld|%zu|%hhu|%" PRIu64 "|%" PRIx32, 4000000000ul, -5000000000ll,
             (size_t)7, 300, (uint64_t)1 << 40, 0xabcu);
    CHECK(strcmp(buffer, "4000000000|-5000000000|7|44|1099511627776|abc") == 0);
    snprintf(buffer, sizeof buffer, "%*d|%.*d|%.0d", 4, 1, 3, 2, 0);
    CHECK(strcmp(buffer, "   1|002|") == 0);
    CHECK(snprintf(buffer, 4, "%s", "truncate") == 8 && strcmp(buffer, "tru") == 0);
    CHECK(snprintf(NULL, 0, "%d", 12345) == 5);
    /* No floating point: the conversion is shown as written (and its argument not consumed). */
    CHECK(snprintf(buffer, sizeof buffer, "x%5.1fy", 1.5) == 7 && strcmp(buffer, "x%5.1fy") == 0);
    CHECK(sprintf(buffer, "%s-%d", "n", 1) == 3 && strcmp(buffer, "n-1") == 0);
    CHECK(fopen("/etc/passwd", "r") == NULL && errno == ENOENT);
    CHECK(fprintf(stderr, "%s", "") == 0 && fflush(stdout) == 0);
    ssize_t written = write(STDOUT_FILENO, "", 0);
    CHECK(written == 0 && write(5, "x", 1) == -1 && errno == EBADF);
}

static void check_heap(void)
{
    char *a = malloc(10), *b = malloc(100), *c = calloc(50, 4);
    CHECK(a && b && c && a != b && ((uintptr_t)a % 16) == 0 && ((uintptr_t)b % 16) == 0);
    int zero = 1;
    for (int i = 0; i < 200; i++)
        zero &= ((unsigned char *)c)[i] == 0;
    CHECK(zero);
    memcpy(a, "123456789", 10);
    a = realloc(a, 5000);
    CHECK(a && strcmp(a, "123456789") == 0);
    a = realloc(a, 3);
    CHECK(a && memcmp(a, "123", 3) == 0);
    free(a);
    free(b);
    free(c);
    free(NULL);
    /* Through volatile: clang may assume an allocation whose result is only compared succeeds. */
    void *volatile huge = calloc(SIZE_MAX / 2, 4);
    CHECK(huge == NULL);
    huge = malloc(SIZE_MAX);
    CHECK(huge == NULL);
    void *aligned = aligned_alloc(4096, 100);
    CHECK(aligned && ((uintptr_t)aligned % 4096) == 0);
    free(aligned);
    void *big = malloc(3 << 20);
    CHECK(big != NULL);
    memset(big, 1, 3 << 20);
    free(big);
    void *zero_size = malloc(0);
    CHECK(zero_size != NULL);
    free(zero_size);
    /* Many small blocks, freed and reused. */
    for (int round = 0; round < 4; round++) {
        void *blocks[64];
        for (int i = 0; i < 64; i++)
            blocks[i] = malloc((size_t)(i * 13 % 200));
        for (int i = 0; i < 64; i++)
            free(blocks[i]);
    }
    CHECK(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    check_strings();
    check_numbers();
    check_formatting();
    check_heap();
    if (failures) {
        printf("libc-check: %d of %d checks FAILED\n", failures, checks);
        exit(1);
    }
    printf("libc-check: %d checks passed\n", checks);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    assert(copy != NULL);
    memcpy(copy, data, size);
    copy[size] = '\0';
    char *words = strdup(copy);
    free(copy);
    free(words);
    return 0;
}
