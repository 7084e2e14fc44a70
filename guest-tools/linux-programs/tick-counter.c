/*
 * tick-counter - a Linux program that keeps counting, for moving a running guest between VMMs.
 *
 *   tick-counter [PERIOD_MS]   (default 100)
 *
 * Prints "tick-counter: start pid=P clockevent=E clocksource=S" once (E and S from sysfs, "?" when
 * it cannot be read: the kernel's timer device and clock, e.g. lapic-deadline and kvm-clock), then every PERIOD_MS (nanosleep: the kernel's timer
 * interrupts and clock must work) one line
 *
 *   tick N ms=T mem=ok
 *
 * with N = 1, 2, 3, ... (the count lives in this process's memory), T the CLOCK_MONOTONIC
 * milliseconds since the start, and "mem=ok" when the 4 MiB pattern the program keeps in its
 * heap still holds what it wrote there: each tick checks one 64 KiB slice and rewrites it with
 * the tick's generation. A slice that does not hold the expected words prints
 * "tick-counter: MEMORY MISMATCH ..." and exits 3; a monotonic clock that went backwards prints
 * "tick-counter: CLOCK WENT BACK ..." and exits 4. Each line is one write(2) of the whole line.
 * Runs until killed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_BYTES (4u << 20)
#define SLICE_BYTES (64u << 10)
#define WORDS_PER_SLICE (SLICE_BYTES / sizeof(uint64_t))
#define SLICES (PATTERN_BYTES / SLICE_BYTES)

/* The word at index `index` of the pattern written in generation `generation`. */
static uint64_t pattern_word(uint64_t index, uint64_t generation) {
    uint64_t x = (index + 1) * 0x9e3779b97f4a7c15ull ^ (generation * 0xbf58476d1ce4e5b9ull);
    x ^= x >> 31;
    return x;
}

static uint64_t monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/* The first line of the file `path` without its newline, or "?". */
static void read_first_line(const char *path, char *out, size_t size) {
    FILE *file = fopen(path, "r");
    if (file == NULL || fgets(out, (int)size, file) == NULL) {
        snprintf(out, size, "?");
    } else {
        out[strcspn(out, "\n")] = 0;
    }
    if (file != NULL) fclose(file);
}

static void write_line(const char *line) {
    size_t left = strlen(line);
    while (left > 0) {
        ssize_t written = write(STDOUT_FILENO, line, left);
        if (written < 0) {
            if (errno == EINTR) continue;
            exit(2);
        }
        line += written;
        left -= (size_t)written;
    }
}

int main(int argc, char **argv) {
    long period_ms = 100;
    if (argc > 2 || (argc == 2 && (period_ms = strtol(argv[1], NULL, 10)) <= 0)) {
        write_line("usage: tick-counter [PERIOD_MS]\n");
        return 1;
    }
    uint64_t *pattern = malloc(PATTERN_BYTES);
    /* The generation each slice was last written with. */
    uint64_t *written_in = calloc(SLICES, sizeof(uint64_t));
    if (pattern == NULL || written_in == NULL) {
        write_line("tick-counter: out of memory\n");
        return 2;
    }
    for (uint64_t i = 0; i < PATTERN_BYTES / sizeof(uint64_t); i++) pattern[i] = pattern_word(i, 0);

    char line[160], clockevent[48], clocksource[48];
    read_first_line("/sys/devices/system/clockevents/clockevent0/current_device", clockevent,
                    sizeof clockevent);
    read_first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource", clocksource,
                    sizeof clocksource);
    snprintf(line, sizeof line, "tick-counter: start pid=%d clockevent=%s clocksource=%s\n",
             (int)getpid(), clockevent, clocksource);
    write_line(line);
    const uint64_t start_ms = monotonic_ms();
    uint64_t last_ms = 0;
    const struct timespec period = {period_ms / 1000, (period_ms % 1000) * 1000000L};
    for (uint64_t tick = 1;; tick++) {
        struct timespec left = period;
        while (nanosleep(&left, &left) != 0 && errno == EINTR) {
        }
        uint64_t slice = tick % SLICES;
        uint64_t *words = pattern + slice * WORDS_PER_SLICE;
        for (uint64_t w = 0; w < WORDS_PER_SLICE; w++) {
            uint64_t index = slice * WORDS_PER_SLICE + w;
            uint64_t expected = pattern_word(index, written_in[slice]);
            if (words[w] != expected) {
                snprintf(line, sizeof line,
                         "tick-counter: MEMORY MISMATCH at tick %llu word %llu: 0x%llx, expected 0x%llx\n",
                         (unsigned long long)tick, (unsigned long long)index,
                         (unsigned long long)words[w], (unsigned long long)expected);
                write_line(line);
                return 3;
            }
        }
        for (uint64_t w = 0; w < WORDS_PER_SLICE; w++)
            words[w] = pattern_word(slice * WORDS_PER_SLICE + w, tick);
        written_in[slice] = tick;

        uint64_t ms = monotonic_ms() - start_ms;
        if (ms < last_ms) {
            snprintf(line, sizeof line, "tick-counter: CLOCK WENT BACK at tick %llu: %llu ms after %llu ms\n",
                     (unsigned long long)tick, (unsigned long long)ms, (unsigned long long)last_ms);
            write_line(line);
            return 4;
        }
        last_ms = ms;
        snprintf(line, sizeof line, "tick %llu ms=%llu mem=ok\n", (unsigned long long)tick,
                 (unsigned long long)ms);
        write_line(line);
    }
}
