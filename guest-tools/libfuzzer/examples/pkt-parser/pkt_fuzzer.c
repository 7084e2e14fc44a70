// pkt_fuzzer.c - libFuzzer harness for a small "PKT" configuration-bundle parser.
//
// Written the way an outside project's OSS-Fuzz harness is: plain C, the parser and the
// LLVMFuzzerTestOneInput entry point in one file, libc only (malloc, memcmp, strncmp, ...).
// Build natively with `clang -g -fsanitize=fuzzer,address pkt_fuzzer.c`, or for snapvmm with
// `snapvmm build-target pkt_fuzzer.c -o pkt.elf`.
//
// Format: "PKT1", a version byte (1 or 2), a record count, then records of
// [tag u8][length u8][payload]. Tags:
//   'S' setting  "name=value"           (copied to the heap; version 2: lowercase names only)
//   'X' extension "ext:" [n] [entries]  (n entries of 1 byte in version 1, 2 bytes in version 2)
//   'E' end
//
// PLANTED BUG: for version 2 the entry table is allocated with n bytes (the version 1 size) but
// filled with n 16-bit entries: a heap buffer overflow write once n >= 1.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct setting {
    char *name;
    char *value;
};

struct bundle {
    uint8_t version;
    struct setting settings[8];
    size_t setting_count;
    uint8_t *entries;
    size_t entry_count;
};

static void bundle_free(struct bundle *b)
{
    for (size_t i = 0; i < b->setting_count; i++) {
        free(b->settings[i].name);
        free(b->settings[i].value);
    }
    free(b->entries);
}

static int parse_setting(struct bundle *b, const uint8_t *p, size_t len)
{
    const uint8_t *eq = memchr(p, '=', len);
    if (!eq || eq == p || b->setting_count == 8)
        return -1;
    size_t name_len = (size_t)(eq - p);
    if (b->version == 2) {
        for (size_t i = 0; i < name_len; i++)
            if (p[i] >= 'A' && p[i] <= 'Z')
                return -1;
    }
    size_t value_len = len - name_len - 1;
    struct setting *s = &b->settings[b->setting_count];
    s->name = malloc(name_len + 1);
    s->value = malloc(value_len + 1);
    if (!s->name || !s->value) {
        free(s->name);
        free(s->value);
        return -1;
    }
    memcpy(s->name, p, name_len);
    s->name[name_len] = '\0';
    memcpy(s->value, eq + 1, value_len);
    s->value[value_len] = '\0';
    b->setting_count++;
    if (strncmp(s->name, "mode", 4) == 0 && strcmp(s->value, "strict") != 0 && strcmp(s->value, "lax") != 0)
        return -1;
    return 0;
}

static int parse_extension(struct bundle *b, const uint8_t *p, size_t len)
{
    if (len < 5 || strncmp((const char *)p, "ext:", 4) != 0 || b->entries)
        return -1;
    size_t n = p[4];
    size_t entry_size = b->version == 2 ? 2 : 1;
    if (5 + n * entry_size > len)
        return -1;
    b->entries = malloc(n ? n : 1); /* BUG: n * entry_size */
    if (!b->entries)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (entry_size == 2) {
            uint16_t v = (uint16_t)(p[5 + 2 * i] | p[6 + 2 * i] << 8);
            memcpy(b->entries + 2 * i, &v, 2);
        } else {
            b->entries[i] = p[5 + i];
        }
    }
    b->entry_count = n;
    return 0;
}

static int parse_bundle(struct bundle *b, const uint8_t *data, size_t size)
{
    if (size < 6 || memcmp(data, "PKT1", 4) != 0)
        return -1;
    b->version = data[4];
    if (b->version != 1 && b->version != 2)
        return -1;
    size_t records = data[5];
    size_t at = 6;
    for (size_t r = 0; r < records; r++) {
        if (at + 2 > size)
            return -1;
        uint8_t tag = data[at], len = data[at + 1];
        at += 2;
        if (len > size - at)
            return -1;
        int result;
        switch (tag) {
        case 'S':
            result = parse_setting(b, data + at, len);
            break;
        case 'X':
            result = parse_extension(b, data + at, len);
            break;
        case 'E':
            return 0;
        default:
            result = -1;
        }
        if (result != 0)
            return result;
        at += len;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bundle b;
    memset(&b, 0, sizeof b);
    int result = parse_bundle(&b, data, size);
    bundle_free(&b);
    return result == 0 ? 0 : -1;
}
