/*
 * simg_parse.h - the parser behind the demo fuzz target: "SIMG", a small chunked image format
 * with a planted bug several dependent comparisons deep. Included by the bare-metal target
 * (fuzz-targets/fuzz-demo.c, on the runtime) and by the native harness
 * (fuzz-targets/native/simg-stdin.c, for AFL++ and host tests), so both fuzz the same code.
 *
 * Format: "SIMG", a version byte (1 or 2), then (version 2) chunks of [type, length, data...]:
 *   'H' header   width, height, offset (>= 3 bytes): points the image at its pixel buffer
 *   'P' palette  up to 16 RGB entries
 *   'D' data     data[0] = 'Z': a run of data[1] pixels of value data[3], with the check byte
 *                data[2] == data[1] ^ 0xa5 (>= 4 bytes); anything else copies raw bytes
 *   'E' end
 * simg_parse returns 0 for an image it accepts, -1 otherwise.
 *
 * The bug: a run-length 'D' chunk before any 'H' chunk writes through the pixel pointer while it
 * is still NULL, at 0x40 + offset: a page fault (#PF, vector 14; SIGSEGV natively). Every step
 * towards it is its own comparison, so each gives new coverage a fuzzer can climb: the magic
 * byte by byte (4), the version (1), the chunk type (1), the chunk length fitting the input and
 * being >= 4 (2), the 'Z' (1), the check byte (1), a non-zero run (1).
 * A crashing input: "SIMG" 02 'D' 04 'Z' 10 b5 41.
 */
#ifndef SIMG_PARSE_H
#define SIMG_PARSE_H

#include <stddef.h>
#include <stdint.h>

void *memset(void *dst, int c, size_t n);

struct image {
    uint8_t *pixels;
    uint32_t width, height, offset;
    uint8_t palette[16][3];
    uint32_t palette_entries;
    uint32_t checksum;
};

static uint8_t pixel_buffer[64 * 64];

static int parse_header(struct image *img, const uint8_t *data, size_t length)
{
    if (length < 3)
        return -1;
    if (data[0] == 0 || data[0] > 64 || data[1] == 0 || data[1] > 64)
        return -1;
    img->width = data[0];
    img->height = data[1];
    img->offset = data[2];
    img->pixels = pixel_buffer;
    return 0;
}

static int parse_palette(struct image *img, const uint8_t *data, size_t length)
{
    size_t entries = length / 3;
    if (entries > 16)
        return -1;
    for (size_t i = 0; i < entries; i++) {
        img->palette[i][0] = data[3 * i];
        img->palette[i][1] = data[3 * i + 1];
        img->palette[i][2] = data[3 * i + 2];
    }
    img->palette_entries = (uint32_t)entries;
    return 0;
}

static int parse_data(struct image *img, const uint8_t *data, size_t length)
{
    if (length < 4)
        return -1;
    if (data[0] == 'Z') {
        uint8_t run = data[1];
        if ((uint8_t)(run ^ 0xa5) != data[2])
            return -1; /* bad check byte */
        /* BUG: no check that a header chunk set img->pixels up. */
        volatile uint8_t *out = (volatile uint8_t *)((uintptr_t)img->pixels + img->offset * 4096u + 64u);
        if (img->pixels && img->offset + run > sizeof(pixel_buffer))
            return -1;
        for (uint32_t i = 0; i < run; i++)
            out[i] = data[3];
        return 0;
    }
    if (!img->pixels)
        return -1;
    size_t capacity = (size_t)img->width * img->height;
    for (size_t i = 0; i + 1 < length && i < capacity; i++)
        img->pixels[i] = data[i + 1];
    return 0;
}

static int parse_chunks(struct image *img, const uint8_t *data, size_t length)
{
    size_t at = 0;
    while (at + 2 <= length) {
        uint8_t type = data[at];
        size_t chunk_length = data[at + 1];
        const uint8_t *chunk = data + at + 2;
        if (at + 2 + chunk_length > length)
            return -1; /* truncated */
        int result;
        switch (type) {
        case 'H':
            result = parse_header(img, chunk, chunk_length);
            break;
        case 'P':
            result = parse_palette(img, chunk, chunk_length);
            break;
        case 'D':
            result = parse_data(img, chunk, chunk_length);
            break;
        case 'E':
            return 0;
        default:
            result = -1;
            break;
        }
        if (result != 0)
            return result;
        for (size_t i = 0; i < chunk_length; i++)
            img->checksum = img->checksum * 31 + chunk[i];
        at += 2 + chunk_length;
    }
    return 0;
}

static int simg_parse(const uint8_t *data, size_t length)
{
    struct image img;
    memset(&img, 0, sizeof(img));
    /* The magic byte by byte: each matching byte is a new edge. */
    if (length < 5 || data[0] != 'S')
        return -1;
    if (data[1] != 'I')
        return -1;
    if (data[2] != 'M')
        return -1;
    if (data[3] != 'G')
        return -1;
    switch (data[4]) {
    case 1: /* version 1: a bare header, no chunks */
        return length >= 8 ? parse_header(&img, data + 5, 3) : -1;
    case 2:
        return parse_chunks(&img, data + 5, length - 5);
    default:
        return -1;
    }
}

#endif
