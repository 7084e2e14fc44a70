// lane-exec: run one real-KVM-lane job inside the outer Linux (L1) with a time budget.
//
// usage: lane-exec NAME BUDGET_SECONDS SCRIPT [STDIN_FILE]
//
// Runs `/bin/sh SCRIPT` in its own process group with stdout+stderr on a pipe, copies that
// output to our stdout, and frames it with markers that the host side parses:
//   @@LANE begin NAME budget=SECONDS
//   ...job output...
//   @@LANE end NAME rc=N timeout=0|1 nl=0|1 ms=ELAPSED
// rc is the exit status (128+signal when killed). timeout=1 means the budget ran out and the whole
// process group was killed. nl=0 means the output did not end with a newline, so lane-exec added
// one before the end marker (the host strips it again to give back the exact output).
// Build: gcc -O2 -static -o lane-exec lane-exec.c
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

// After the job's shell exits, how long stragglers that still hold the pipe may keep writing.
#define DRAIN_AFTER_EXIT_MS 1000

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // the console went away: nothing useful left to do with the output
    }
    buf += n;
    len -= (size_t)n;
  }
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: lane-exec NAME BUDGET_SECONDS SCRIPT [STDIN_FILE]\n");
    return 2;
  }
  const char *name = argv[1], *script = argv[3], *stdin_path = argc == 5 ? argv[4] : "/dev/null";
  char *end = NULL;
  double budget_s = strtod(argv[2], &end);
  if (end == argv[2] || *end != '\0' || budget_s <= 0) {
    fprintf(stderr, "lane-exec: bad budget '%s'\n", argv[2]);
    return 2;
  }
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("@@LANE begin %s budget=%s\n", name, argv[2]);

  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) {
    perror("lane-exec: pipe");
    return 2;
  }
  double start = now_ms();
  pid_t child = fork();
  if (child < 0) {
    perror("lane-exec: fork");
    return 2;
  }
  if (child == 0) {
    setpgid(0, 0);
    int in = open(stdin_path, O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0) {
      perror("lane-exec: child set-up");
      _exit(126);
    }
    execl("/bin/sh", "sh", script, (char *)NULL);
    perror("lane-exec: exec /bin/sh");
    _exit(127);
  }
  setpgid(child, child);  // also from the parent, so the group exists before any kill below
  close(out[1]);

  double deadline = start + budget_s * 1e3, drain_until = 0;
  int status = 0, exited = 0, timed_out = 0, pipe_open = 1;
  char last = '\n', buf[4096];
  while (pipe_open) {
    if (!exited && waitpid(child, &status, WNOHANG) == child) {
      exited = 1;
      drain_until = now_ms() + DRAIN_AFTER_EXIT_MS;
    }
    double limit = exited ? drain_until : deadline, left = limit - now_ms();
    if (left <= 0) {
      if (!exited) timed_out = 1;
      break;
    }
    struct pollfd p = {.fd = out[0], .events = POLLIN};
    int r = poll(&p, 1, left > 50 ? 50 : (int)left + 1);  // short slices so waitpid is checked
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      pipe_open = 0;
      continue;
    }
    write_all(1, buf, (size_t)n);
    last = buf[n - 1];
  }
  // Whatever is left of the job (or everything, after a timeout) goes: jobs must not leak into
  // the next one.
  kill(-child, SIGKILL);
  if (!exited) waitpid(child, &status, 0);
  close(out[0]);
  double elapsed = now_ms() - start;
  int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  int nl = last == '\n';
  printf("%s@@LANE end %s rc=%d timeout=%d nl=%d ms=%.0f\n", nl ? "" : "\n", name, rc, timed_out, nl,
         elapsed);
  return 0;
}
