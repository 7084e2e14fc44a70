/*
 * simg_parse.h - the parser behind the demo fuzz target: SIMG, a small chunked image format
 * with a planted bug several dependent comparisons deep. Included by the bare-metal target
 * (fuzz-targets/fuzz-demo.c, on the runtime) and by the native harness
 * (fuzz-targets/native/simg-stdin.c, for AFL++ and host tests), so both fuzz the same code.
 *
 * Format: the magic "SI", then TLV chunks of [type, length, data...]:
 *   1 header   width, height, offset (>= 3 bytes): points the image at its pixel buffer
 *   2 palette  up to 16 RGB entries
 *   3 data     a run: data[0] pixels of value data[2], with the check byte
 *              data[1] == data[0] ^ 0xa5 (>= 4 bytes)
 *   4 end
 * simg_parse returns 0 for an image it accepts, -1 otherwise.
 *
 * The bug: a data chunk before any header chunk writes through the pixel pointer while it is still
 * NULL, at 0x40 + offset: a page fault (#PF, vector 14; SIGSEGV natively). Every step towards it
 * is its own comparison, so each gives new coverage a fuzzer can climb: the magic byte by byte
 * (2), the chunk type (1), the chunk length fitting the input and being >= 4 (2), the check
 * byte (1), a non-zero run (1, nearly always true). Three of them need one particular byte value
 * (1 in 256 for a random byte; the small chunk types are what havoc's arithmetic and
 * "interesting value" mutations produce often): with havoc mutations alone, without a dictionary
 * or comparison feedback, each such step takes some 10^4-10^5 executions, which is what "found
 * in about a minute at 5-10k executions per second" allows; a deeper chain would not be.
 * A crashing input: "SI" 03 04 10 b5 41 00.
 */
#ifndef SIMG_PARSE_H
#define SIMG_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void *memset(void *dst, int c, size_t n);

enum simg_chunk_type {
    SIMG_HEADER = 1,
    SIMG_PALETTE = 2,
    SIMG_DATA = 3,
    SIMG_END = 4,
};

struct image {
    uint8_t *pixels;
    uint32_t width, height, offset;
    uint8_t palette[16][3];
    uint32_t palette_entries;
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
    uint8_t run = data[0];
    if ((uint8_t)(run ^ 0xa5) != data[1])
        return -1; /* bad check byte */
    if (img->pixels && img->offset + run > img->width * img->height)
        return -1; /* past the image */
    /* BUG: no check that a header chunk set img->pixels up. */
    volatile uint8_t *out = (volatile uint8_t *)((uintptr_t)img->pixels + img->offset + 64u);
    for (uint32_t i = 0; i < run; i++)
        out[i] = data[2];
    return 0;
}

static int parse_chunks(struct image *img, const uint8_t *data, size_t length)
{
    size_t at = 0;
    while (at + 2 <= length) {
        uint8_t type = data[at];
        size_t chunk_length = data[at + 1];
        const uint8_t *chunk = data + at + 2;
        /* The type first, the length check in each case: a fuzzer that hits a chunk type sees
         * new coverage whatever the length byte says. */
        bool fits = at + 2 + chunk_length <= length;
        int result;
        switch (type) {
        case SIMG_HEADER:
            result = fits ? parse_header(img, chunk, chunk_length) : -1;
            break;
        case SIMG_PALETTE:
            result = fits ? parse_palette(img, chunk, chunk_length) : -1;
            break;
        case SIMG_DATA:
            result = fits ? parse_data(img, chunk, chunk_length) : -1;
            break;
        case SIMG_END:
            return 0;
        default:
            result = -1;
            break;
        }
        if (result != 0)
            return result;
        at += 2 + chunk_length;
    }
    return 0;
}

static int simg_parse(const uint8_t *data, size_t length)
{
    struct image img;
    memset(&img, 0, sizeof(img));
    /* The magic byte by byte: each matching byte is a new edge. */
    if (length < 2 || data[0] != 'S')
        return -1;
    if (data[1] != 'I')
        return -1;
    return parse_chunks(&img, data + 2, length - 2);
}

#endif
