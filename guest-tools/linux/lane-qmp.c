// lane-qmp: a small QMP client for the real-KVM lane (L1 has no python or socat).
//
// usage: lane-qmp SOCKET STEP...
//   Connects to the QMP server on the unix socket SOCKET (retrying for up to 20 s while it does
//   not exist yet), reads the greeting, negotiates (qmp_capabilities), then runs the steps:
//     '{"execute": ...}'  send this command, wait for its reply (events are skipped); an "error"
//                         reply ends lane-qmp with status 1
//     wait-migrate        poll query-migrate every 50 ms until "completed" (status 1 on "failed")
//     wait-status=S       poll query-status every 50 ms until its status is S
//     sleep=MS            wait MS milliseconds
//   Every reply is printed as "qmp: <reply>". Status: 0 when every step was done, 1 for an error
//   reply or a failed migration, 2 for usage or connection errors. The caller's time budget bounds
//   the polling steps.
// Build: gcc -O2 -static -o lane-qmp lane-qmp.c
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_TRIES 400  // x 50 ms = 20 s
#define LINE_MAX_BYTES (64 * 1024)

static int fd = -1;
static char pending[LINE_MAX_BYTES];
static size_t pending_len;

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

static int write_all(const char *buf, size_t len) {
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

// Reads one line (without its CR LF) into `line`; -1 at end of stream or on an error.
static int read_line(char *line, size_t size) {
  for (;;) {
    char *end = memchr(pending, '\n', pending_len);
    if (end != NULL) {
      size_t len = (size_t)(end - pending);
      size_t copy = len < size - 1 ? len : size - 1;
      memcpy(line, pending, copy);
      line[copy] = 0;
      if (copy > 0 && line[copy - 1] == '\r') line[copy - 1] = 0;
      memmove(pending, end + 1, pending_len - len - 1);
      pending_len -= len + 1;
      return 0;
    }
    if (pending_len == sizeof pending) pending_len = 0;  // an absurd line: drop it
    ssize_t n = read(fd, pending + pending_len, sizeof pending - pending_len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    pending_len += (size_t)n;
  }
}

// `text` without blanks, so that `"status": "x"` and `"status":"x"` compare alike.
static void squeeze(const char *text, char *out, size_t size) {
  size_t o = 0;
  for (; *text && o + 1 < size; text++)
    if (*text != ' ' && *text != '\t') out[o++] = *text;
  out[o] = 0;
}

static int contains(const char *line, const char *needle) {
  static char squeezed[LINE_MAX_BYTES];
  squeeze(line, squeezed, sizeof squeezed);
  return strstr(squeezed, needle) != NULL;
}

// Sends `command` and reads until its reply; returns 0 for "return", 1 for "error", -1 when the
// connection ended first. The reply is left in `reply`.
static int execute(const char *command, char *reply, size_t size, int quiet) {
  if (write_all(command, strlen(command)) < 0 || write_all("\r\n", 2) < 0) {
    fprintf(stderr, "lane-qmp: writing %s: %s\n", command, strerror(errno));
    return -1;
  }
  for (;;) {
    if (read_line(reply, size) < 0) {
      fprintf(stderr, "lane-qmp: the connection ended before the reply to %s\n", command);
      return -1;
    }
    int is_return = contains(reply, "{\"return\":");
    int is_error = contains(reply, "{\"error\":");
    if (!is_return && !is_error) continue;  // an event
    if (!quiet || is_error) {
      printf("qmp: %s\n", reply);
      fflush(stdout);
    }
    return is_error ? 1 : 0;
  }
}

static int connect_socket(const char *path) {
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof address.sun_path) {
    fprintf(stderr, "lane-qmp: socket path too long: %s\n", path);
    return -1;
  }
  strcpy(address.sun_path, path);
  for (int attempt = 0; attempt < CONNECT_TRIES; attempt++) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      perror("lane-qmp: socket");
      return -1;
    }
    if (connect(s, (struct sockaddr *)&address, sizeof address) == 0) return s;
    int error = errno;
    close(s);
    if (error != ENOENT && error != ECONNREFUSED) {
      fprintf(stderr, "lane-qmp: connecting to %s: %s\n", path, strerror(error));
      return -1;
    }
    sleep_ms(50);
  }
  fprintf(stderr, "lane-qmp: no QMP server at %s within 20 s\n", path);
  return -1;
}

// Polls `command` until its reply holds `done` (0) or `failed` (1).
static int poll_until(const char *command, const char *done, const char *failed) {
  static char reply[LINE_MAX_BYTES];
  for (;;) {
    int rc = execute(command, reply, sizeof reply, 1);
    if (rc != 0) return rc < 0 ? 2 : 1;
    if (contains(reply, done)) {
      printf("qmp: %s\n", reply);
      fflush(stdout);
      return 0;
    }
    if (failed != NULL && contains(reply, failed)) {
      printf("qmp: %s\n", reply);
      fflush(stdout);
      return 1;
    }
    sleep_ms(50);
  }
}

int main(int argc, char **argv) {
  static char reply[LINE_MAX_BYTES];
  if (argc < 2) {
    fprintf(stderr, "usage: lane-qmp SOCKET STEP...\n");
    return 2;
  }
  fd = connect_socket(argv[1]);
  if (fd < 0) return 2;
  if (read_line(reply, sizeof reply) < 0 || !contains(reply, "{\"QMP\":")) {
    fprintf(stderr, "lane-qmp: no QMP greeting from %s\n", argv[1]);
    return 2;
  }
  int rc = execute("{\"execute\": \"qmp_capabilities\"}", reply, sizeof reply, 1);
  if (rc != 0) return rc < 0 ? 2 : 1;
  for (int i = 2; i < argc; i++) {
    const char *step = argv[i];
    if (strcmp(step, "wait-migrate") == 0) {
      rc = poll_until("{\"execute\": \"query-migrate\"}", "\"status\":\"completed\"",
                      "\"status\":\"failed\"");
    } else if (strncmp(step, "wait-status=", 12) == 0) {
      char done[256];
      snprintf(done, sizeof done, "\"status\":\"%s\"", step + 12);
      rc = poll_until("{\"execute\": \"query-status\"}", done, NULL);
    } else if (strncmp(step, "sleep=", 6) == 0) {
      sleep_ms(strtol(step + 6, NULL, 10));
      rc = 0;
    } else if (step[0] == '{') {
      rc = execute(step, reply, sizeof reply, 0);
      if (rc < 0) rc = 2;
    } else {
      fprintf(stderr, "lane-qmp: unknown step %s\n", step);
      rc = 2;
    }
    if (rc != 0) {
      fprintf(stderr, "lane-qmp: step %s failed\n", step);
      return rc;
    }
  }
  return 0;
}
