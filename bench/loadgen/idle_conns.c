/* lagoon-idle-conns: what an idle connection costs the server.
 *
 *   lagoon-idle-conns --pid PID [--host H] [--port P] [--count N] [--hold S]
 *
 * Reads the server's VmRSS (/proc/PID/status), opens N connections, sends each the preface
 * and reads its SETTINGS frame (so the server has fully set the connection up), waits a
 * moment, reads VmRSS again and prints the growth per connection. Then it holds them --hold
 * seconds (default 1) and closes them. Needs N + a few file descriptors (ulimit -n); the server
 * needs as many, and --max-connections above N.
 *
 * Everything is bounded: connecting stops at the first failure, reading SETTINGS gives up after
 * IDLE_SETTINGS_TIMEOUT_MS. The figure is the process's resident memory: the kernel's socket
 * structures are not in it (idle sockets hold no buffer pages). Exit status 0 when every connection got its SETTINGS, 1 otherwise,
 * 2 on bad usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IDLE_MAX_COUNT 100000
#define IDLE_SETTINGS_TIMEOUT_MS 30000
#define IDLE_SETTLE_MS 500 /* lets the server finish its side (timers, buffers) */
#define FRAME_SETTINGS 8
#define FRAME_GOAWAY 7

typedef struct idle_conn {
    int fd;
    uint8_t got[64]; /* the first bytes from the server: a SETTINGS frame is 33 */
    size_t n;
    int done; /* 1 SETTINGS read, -1 GOAWAY or closed */
} idle_conn;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* VmRSS of pid in KiB, or -1. */
static long rss_kib(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Reads what is there; marks the connection done once a whole first frame arrived. */
static void conn_read(idle_conn *c)
{
    for (;;) {
        ssize_t r = read(c->fd, c->got + c->n, sizeof(c->got) - c->n);
        if (r == 0) {
            c->done = -1;
            return;
        }
        if (r < 0) {
            if (errno != EAGAIN && errno != EINTR)
                c->done = -1;
            return;
        }
        c->n += (size_t)r;
        if (c->n >= 16) {
            uint32_t len = (uint32_t)c->got[0] << 24 | (uint32_t)c->got[1] << 16 | (uint32_t)c->got[2] << 8 | c->got[3];
            if (c->got[4] != FRAME_SETTINGS) {
                c->done = -1;
                return;
            }
            if (c->n >= (size_t)len + 4 || c->n == sizeof(c->got)) {
                c->done = 1;
                return;
            }
        }
        if (c->n == sizeof(c->got))
            return;
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long port = 7420, count = 10000, pid = 0;
    double hold = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            port = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--count") == 0)
            count = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--pid") == 0)
            pid = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--hold") == 0)
            hold = strtod(argv[i + 1], NULL);
        else {
            fprintf(stderr, "lagoon-idle-conns: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (argc % 2 == 0 || pid <= 0 || port <= 0 || port > 65535 || count <= 0 || count > IDLE_MAX_COUNT ||
        !(hold >= 0 && hold <= 600)) {
        fprintf(stderr, "usage: lagoon-idle-conns --pid PID [--host H] [--port P] [--count N<=%d] [--hold S<=600]\n",
                IDLE_MAX_COUNT);
        return 2;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "lagoon-idle-conns: --host must be a numeric IPv4 address\n");
        return 2;
    }
    idle_conn *conns = calloc((size_t)count, sizeof(*conns));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (conns == NULL || ep < 0) {
        fprintf(stderr, "lagoon-idle-conns: out of memory\n");
        return 1;
    }
    long before = rss_kib(pid);
    if (before < 0) {
        fprintf(stderr, "lagoon-idle-conns: cannot read /proc/%ld/status\n", pid);
        return 1;
    }

    long opened = 0;
    uint64_t t_start = now_ms();
    for (; opened < count; opened++) {
        idle_conn *c = &conns[opened];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            fprintf(stderr, "lagoon-idle-conns: connection %ld: %s\n", opened + 1, strerror(errno));
            if (c->fd >= 0)
                close(c->fd);
            break;
        }
        if (write(c->fd, "LGN1", 4) != 4) {
            fprintf(stderr, "lagoon-idle-conns: preface on connection %ld: %s\n", opened + 1, strerror(errno));
            close(c->fd);
            break;
        }
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data = {.ptr = c}};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }

    /* Read every SETTINGS frame, bounded in time. */
    long settled = 0, refused = 0;
    uint64_t deadline = now_ms() + IDLE_SETTINGS_TIMEOUT_MS;
    struct epoll_event evs[256];
    while (settled + refused < opened && now_ms() < deadline) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            idle_conn *c = evs[i].data.ptr;
            if (c->done)
                continue;
            conn_read(c);
            if (c->done) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                if (c->done > 0)
                    settled++;
                else
                    refused++;
            }
        }
    }
    uint64_t t_ready = now_ms();
    sleep_ms(IDLE_SETTLE_MS);
    long after = rss_kib(pid);
    printf("connections  %ld opened, %ld got SETTINGS, %ld refused or closed, in %.2f s\n", opened, settled, refused,
           (double)(t_ready - t_start) / 1000.0);
    printf("server RSS   %ld KiB before, %ld KiB after: +%ld KiB\n", before, after, after - before);
    if (settled > 0)
        printf("per conn     %.2f KiB (%.0f bytes)\n", (double)(after - before) / (double)settled,
               (double)(after - before) * 1024.0 / (double)settled);
    if (hold > 0)
        sleep_ms((unsigned)(hold * 1000));
    for (long i = 0; i < opened; i++)
        close(conns[i].fd);
    close(ep);
    free(conns);
    return settled == count ? 0 : 1;
}
