/* bench/worker.c: the worker the benchmarks run under baton.
 *
 * Written in C, compiled by the bench scripts with `cc -O2`, so that the time
 * from exec to main is a fraction of a millisecond and nothing in the worker
 * (a language runtime, an HTTP stack) blurs what baton itself costs.
 *
 * It does what a baton worker must and nothing else:
 *   - records when it started (first thing in main) and when it sent READY=1,
 *     in CLOCK_REALTIME nanoseconds, the clock baton's log timestamps use;
 *   - waits BW_READY_MS milliseconds (default 0), then sends READY=1 to
 *     $NOTIFY_SOCKET (a path, or "@name" for an abstract socket);
 *   - then, once the file BW_GO exists (if set; polled every 10 ms), writes
 *     BW_LINES lines (default 0) of about 90 bytes to stdout,
 *     each different (a counter), and a last line "bench-output-done";
 *   - then waits for SIGTERM or SIGINT and exits 0.
 *
 * BW_TIMES=DIR: append one line per process to DIR/times:
 *   "GEN SLOT PID START_NS READY_NS"  (GEN, SLOT from BATON_GENERATION/_WORKER)
 * written with one write(2) on an O_APPEND file, so lines never interleave.
 * BW_DONE=FILE: created once every output line was written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "bench-worker: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path) { errno = ENAMETOOLONG; die("NOTIFY_SOCKET"); }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    static const char msg[] = "READY=1\nSTATUS=bench worker ready";
    if (sendto(fd, msg, sizeof msg - 1, 0, (struct sockaddr *)&sa, len) < 0) die("sendto NOTIFY_SOCKET");
    close(fd);
}

static volatile sig_atomic_t stop;
static void on_stop(int sig) { (void)sig; stop = 1; }

int main(void) {
    long long start = now_ns();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    const char *v = getenv("BW_READY_MS");
    long ready_ms = v ? atol(v) : 0;
    if (ready_ms > 0) {
        struct timespec d = {ready_ms / 1000, (ready_ms % 1000) * 1000000L};
        while (nanosleep(&d, &d) < 0 && errno == EINTR && !stop) {}
    }
    long long ready = now_ns();
    notify_ready();

    const char *dir = getenv("BW_TIMES");
    if (dir) {
        char path[4096], line[256];
        snprintf(path, sizeof path, "%s/times", dir);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) die(path);
        const char *g = getenv("BATON_GENERATION"), *w = getenv("BATON_WORKER");
        int k = snprintf(line, sizeof line, "%s %s %d %lld %lld\n", g ? g : "-", w ? w : "-", (int)getpid(), start, ready);
        if (write(fd, line, (size_t)k) != k) die("write times");
        close(fd);
    }

    v = getenv("BW_LINES");
    long lines = v ? atol(v) : 0;
    const char *go = getenv("BW_GO");
    while (lines > 0 && go && access(go, F_OK) != 0 && !stop) {
        struct timespec d = {0, 10000000L};
        nanosleep(&d, NULL);
    }
    if (lines > 0) {
        static char buf[1 << 16];
        setvbuf(stdout, buf, _IOFBF, sizeof buf);
        for (long i = 0; i < lines && !stop; i++)
            printf("2026-01-01T00:00:00.%06ldZ 127.0.0.1 \"GET /api/items/%ld HTTP/1.1\" 200 %ld \"bench\" %ld.%03ldms\n",
                   i % 1000000, i, 1000 + i % 9000, i % 7, i % 1000);
        printf("bench-output-done\n");
        if (fflush(stdout) != 0) die("stdout");
        const char *done = getenv("BW_DONE");
        if (done) {
            int fd = open(done, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0) close(fd);
        }
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (!stop) sigsuspend(&old);
    return 0;
}
