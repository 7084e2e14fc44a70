// lane-chat: drive an interactive program (e.g. snapvmm with a guest shell on its serial port).
//
// usage: lane-chat STEP... -- PROGRAM [ARGS...]
//   STEP is one of
//     expect=TEXT   wait until TEXT appears in the program's output (after the previous match)
//     send=TEXT     write TEXT to the program's stdin; \n, \r, \t, \\ and \xHH are decoded
//     sleep=MS      wait MS milliseconds (still copying output)
//     close         close the program's stdin (EOF)
//     exit-within=MS  the program must exit within MS milliseconds (else it is killed and the
//                   step is unmet); must be the last step
// The program's stdout+stderr are copied to our stdout as they arrive. Steps run in order; once
// they are done the output is copied until the program exits. Exit status: the program's own
// (128+signal if killed), or 125 when the program ended before every step was done (the unmet
// step is named on stderr). The caller's time budget bounds the whole run.
// Build: gcc -O2 -static -o lane-chat lane-chat.c
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UNMET_STEP_STATUS 125
// Output kept for matching: enough for any marker that straddles reads.
#define WINDOW (64 * 1024)

static char window[WINDOW + 1];
static size_t window_len;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes the escapes of a send= step in place; returns the decoded length.
static size_t decode(char *s) {
  char *o = s;
  for (char *i = s; *i; i++) {
    if (*i != '\\' || i[1] == '\0') {
      *o++ = *i;
      continue;
    }
    i++;
    switch (*i) {
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'x':
        if (hex_digit(i[1]) >= 0 && hex_digit(i[2]) >= 0) {
          *o++ = (char)(hex_digit(i[1]) * 16 + hex_digit(i[2]));
          i += 2;
        } else {
          *o++ = 'x';
        }
        break;
      default: *o++ = *i; break;
    }
  }
  return (size_t)(o - s);
}

// Appends output to the match window, dropping the oldest half when it is full.
static void remember(const char *buf, size_t n) {
  if (n >= WINDOW) {
    buf += n - WINDOW / 2;
    n = WINDOW / 2;
  }
  if (window_len + n > WINDOW) {
    size_t drop = window_len + n - WINDOW / 2;
    if (drop > window_len) drop = window_len;
    memmove(window, window + drop, window_len - drop);
    window_len -= drop;
  }
  memcpy(window + window_len, buf, n);
  window_len += n;
  window[window_len] = '\0';
}

// Looks for TEXT in the window; on a match the window keeps only what follows it.
static int matched(const char *text) {
  size_t tlen = strlen(text);
  char *hit = memmem(window, window_len, text, tlen);  // memmem: the output may hold NUL bytes
  if (hit == NULL) return 0;
  size_t rest = (size_t)(hit - window) + tlen;
  memmove(window, window + rest, window_len - rest);
  window_len -= rest;
  window[window_len] = '\0';
  return 1;
}

int main(int argc, char **argv) {
  int sep = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      sep = i;
      break;
    }
  }
  if (sep == 0 || sep + 1 >= argc) {
    fprintf(stderr, "usage: lane-chat STEP... -- PROGRAM [ARGS...]\n");
    return 2;
  }
  for (int i = 1; i < sep; i++) {
    if (strncmp(argv[i], "expect=", 7) && strncmp(argv[i], "send=", 5) && strncmp(argv[i], "sleep=", 6) &&
        strncmp(argv[i], "exit-within=", 12) && strcmp(argv[i], "close")) {
      fprintf(stderr, "lane-chat: unknown step '%s'\n", argv[i]);
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);  // a program that exits early must not kill us on the next send
  setvbuf(stdout, NULL, _IONBF, 0);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
    perror("lane-chat: pipe");
    return 2;
  }
  pid_t child = fork();
  if (child < 0) {
    perror("lane-chat: fork");
    return 2;
  }
  if (child == 0) {
    if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0) _exit(126);
    execvp(argv[sep + 1], argv + sep + 1);
    fprintf(stderr, "lane-chat: cannot run %s: %s\n", argv[sep + 1], strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  int to_child = in[1], step = 1, pipe_open = 1, killed = 0;
  double sleep_until = 0, exit_deadline = 0;
  char buf[4096];
  while (pipe_open) {
    // Run every step that can run now.
    while (step < sep) {
      const char *s = argv[step];
      if (strncmp(s, "expect=", 7) == 0) {
        if (!matched(s + 7)) break;
      } else if (strncmp(s, "send=", 5) == 0) {
        size_t n = decode(argv[step] + 5);
        if (to_child < 0 || write_all(to_child, argv[step] + 5, n) < 0) {
          fprintf(stderr, "lane-chat: cannot send step %d: %s\n", step, strerror(errno));
          break;
        }
      } else if (strncmp(s, "exit-within=", 12) == 0) {
        if (exit_deadline == 0) exit_deadline = now_ms() + atof(s + 12);
        break;  // done when the program's output ends (it exited), see below
      } else if (strncmp(s, "sleep=", 6) == 0) {
        if (sleep_until == 0) sleep_until = now_ms() + atof(s + 6);
        if (now_ms() < sleep_until) break;
        sleep_until = 0;
      } else if (to_child >= 0) {
        close(to_child);
        to_child = -1;
      }
      step++;
    }
    if (exit_deadline != 0 && !killed && now_ms() > exit_deadline) {
      fprintf(stderr, "\nlane-chat: program did not exit in time (%s): killed\n", argv[step]);
      kill(child, SIGKILL);
      killed = 1;
    }
    struct pollfd p = {.fd = out[0], .events = POLLIN};
    int r = poll(&p, 1, sleep_until != 0 || exit_deadline != 0 ? 10 : 200);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      pipe_open = 0;
      continue;
    }
    write_all(1, buf, (size_t)n);
    remember(buf, (size_t)n);
  }
  // One last look: the final output may complete an expect step; the program has exited.
  while (step < sep && strncmp(argv[step], "expect=", 7) == 0 && matched(argv[step] + 7)) step++;
  if (step < sep && strncmp(argv[step], "exit-within=", 12) == 0 && exit_deadline != 0 && !killed) step++;
  int status = 0;
  waitpid(child, &status, 0);
  int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  fprintf(stderr, "\nlane-chat: program exit status %d\n", rc);
  if (step < sep) {
    fprintf(stderr, "lane-chat: program ended before step %d (%s) was done\n", step, argv[step]);
    return UNMET_STEP_STATUS;
  }
  return rc;
}
