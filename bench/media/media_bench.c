/* media-bench: range-request throughput of the media listener (handlers/tools/media_http.c),
 * and the same client against any other server of the same file (nginx: bench/media/range_bench.sh).
 *
 *   media-bench serve --data DIR --mib N
 *       Opens an app on DIR (a fresh one), makes a user and an uploaded video whose sd.mp4 is N MiB
 *       of random bytes, starts the media listener on 127.0.0.1 (an ephemeral port), prints
 *       "url <signed URL>" and "file <path>" and serves until its standard input closes.
 *   media-bench load --url URL --size BYTES [--conns 8] [--seconds 5] [--range KIB]
 *       Keep-alive HTTP/1.1 over --conns connections (one thread, poll), each asking again and
 *       again for a random aligned --range KiB (default 256) of a file of --size bytes; every
 *       answer must be 206 with that many bytes. Prints requests/s and MiB/s of body bytes.
 *
 * The client reads bodies into a buffer it throws away: both servers pay the same client. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "lagoon_tables.h"
#include "media_files.h"
#include "media_http.h"
#include "media_sign.h"
#include "store.h"

#define BENCH_CONNS_MAX 256
#define BENCH_RESPONSE_HEAD_MAX 4096
#define BENCH_URL_MAX 1024

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *arg(int argc, char **argv, const char *name, const char *dflt)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return dflt;
}

/* ---- serve -------------------------------------------------------------------------------- */

typedef struct seed {
    uint64_t user, video;
    uint64_t bytes;
} seed;

static int seed_write(store_txn *t, void *arg, store_error *err)
{
    seed *s = arg;
    static lagoon_v1_User u;
    memset(&u, 0, sizeof(u));
    snprintf(u.email, sizeof(u.email), "bench@example.com");
    snprintf(u.username, sizeof(u.username), "bench");
    u.active = true;
    int st = store_insert(t, &lagoon_table_users, &u, &s->user, err);
    if (st != LAGOON_OK)
        return st;
    static lagoon_v1_Video v;
    memset(&v, 0, sizeof(v));
    v.owner_id = s->user;
    snprintf(v.title, sizeof(v.title), "bench");
    v.source = lagoon_v1_Video_Source_UPLOAD;
    v.status = lagoon_v1_Video_Status_READY;
    v.media_files = MEDIA_FILE_SD;
    v.media_bytes = s->bytes;
    return store_insert(t, &lagoon_table_videos, &v, &s->video, err);
}

static int write_random(const char *path, uint64_t bytes)
{
    if (media_mkdirs(path) != LAGOON_OK)
        return -1;
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    static unsigned char buf[1 << 20];
    for (uint64_t done = 0; done < bytes; done += sizeof(buf)) {
        randombytes_buf(buf, sizeof(buf));
        size_t n = bytes - done < sizeof(buf) ? (size_t)(bytes - done) : sizeof(buf);
        if (fwrite(buf, 1, n, f) != n) {
            fclose(f);
            return -1;
        }
    }
    return fclose(f);
}

static int serve(int argc, char **argv)
{
    const char *data = arg(argc, argv, "--data", NULL);
    uint64_t mib = strtoull(arg(argc, argv, "--mib", "64"), NULL, 10);
    if (data == NULL || mib == 0 || mib > 4096) {
        fprintf(stderr, "usage: media-bench serve --data DIR --mib N (1-4096)\n");
        return 2;
    }
    app_config cfg = {0};
    cfg.sync = STORE_SYNC_NONE;
    cfg.media_url_ttl_s = 24 * 3600;
    app *a;
    rpc_error rerr;
    if (app_open(data, &cfg, &a, &rerr) != RPC_OK) {
        fprintf(stderr, "media-bench: %s\n", rerr.message);
        return 1;
    }
    seed s = {.bytes = mib << 20};
    store_error err;
    char path[MEDIA_PATH_MAX], rel[MEDIA_RELPATH_MAX + 1], url[BENCH_URL_MAX];
    media_key key;
    media_http *h = NULL;
    int rc = 1;
    if (store_write(a->db, seed_write, &s, &err) != LAGOON_OK) {
        fprintf(stderr, "media-bench: %s\n", err.message);
    } else if (media_video_path(a, s.user, s.video, MEDIA_SD, path, sizeof(path)) != LAGOON_OK ||
               write_random(path, s.bytes) != 0) {
        fprintf(stderr, "media-bench: cannot write the file: %s\n", strerror(errno));
    } else if (media_key_load(a->data_dir, &key, rerr.message, sizeof(rerr.message)) != LAGOON_OK ||
               media_http_start("127.0.0.1", 0, a, &h, &rerr) != RPC_OK) {
        fprintf(stderr, "media-bench: %s\n", rerr.message);
    } else {
        char base[64];
        snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)media_http_port(h));
        media_video_relpath(s.user, s.video, MEDIA_SD, rel, sizeof(rel));
        media_url(&key, base, rel, app_now(a) / 1000 + 24 * 3600, 0, url, sizeof(url));
        printf("url %s\nfile %s\nrel %s\n", url, path, rel);
        fflush(stdout);
        char line[16];
        while (fgets(line, sizeof(line), stdin) != NULL)
            continue; /* until the script closes the pipe */
        rc = 0;
    }
    media_http_stop(h);
    app_close(a);
    return rc;
}

/* ---- load --------------------------------------------------------------------------------- */

typedef struct conn {
    int fd;
    int in_body;        /* reading the body (else the head) */
    size_t head_len;
    uint64_t body_left; /* bytes of the current body still to read */
    char head[BENCH_RESPONSE_HEAD_MAX];
} conn;

static unsigned long long requests, body_bytes, errors;
static char host[64], target[BENCH_URL_MAX];
static uint16_t port;
static uint64_t file_size, range_bytes;

static int connect_to(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

static void send_request(conn *c)
{
    uint64_t slots = file_size / range_bytes;
    uint64_t off = ((uint64_t)random() % (slots ? slots : 1)) * range_bytes;
    char req[BENCH_URL_MAX + 256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=%llu-%llu\r\n\r\n", target, host,
                     (unsigned long long)off, (unsigned long long)(off + range_bytes - 1));
    if (write(c->fd, req, (size_t)n) != n) {
        perror("write");
        exit(1);
    }
    c->head_len = 0;
    c->in_body = 0;
}

/* Reads what is there; a complete answer counts and the next request goes out. */
static void on_readable(conn *c)
{
    static char sink[1 << 20];
    if (!c->in_body) {
        ssize_t r = read(c->fd, c->head + c->head_len, sizeof(c->head) - 1 - c->head_len);
        if (r <= 0) {
            fprintf(stderr, "media-bench: the server closed a connection\n");
            exit(1);
        }
        c->head_len += (size_t)r;
        c->head[c->head_len] = '\0';
        char *end = strstr(c->head, "\r\n\r\n");
        if (end == NULL) {
            if (c->head_len >= sizeof(c->head) - 1) {
                fprintf(stderr, "media-bench: response head too long\n");
                exit(1);
            }
            return;
        }
        if (strncmp(c->head, "HTTP/1.1 206", 12) != 0)
            errors++;
        char *cl = strcasestr(c->head, "\r\nContent-Length:");
        uint64_t len = cl ? strtoull(cl + 17, NULL, 10) : 0;
        size_t extra = c->head_len - (size_t)(end + 4 - c->head);
        if (len != range_bytes)
            errors++;
        body_bytes += extra;
        c->body_left = len - extra;
        c->in_body = 1;
    } else {
        size_t want = c->body_left < sizeof(sink) ? (size_t)c->body_left : sizeof(sink);
        ssize_t r = read(c->fd, sink, want);
        if (r <= 0) {
            fprintf(stderr, "media-bench: the server closed a connection mid-body\n");
            exit(1);
        }
        c->body_left -= (uint64_t)r;
        body_bytes += (uint64_t)r;
    }
    if (c->in_body && c->body_left == 0) {
        requests++;
        send_request(c);
    }
}

static int load(int argc, char **argv)
{
    const char *url = arg(argc, argv, "--url", NULL);
    file_size = strtoull(arg(argc, argv, "--size", "0"), NULL, 10);
    int conns = atoi(arg(argc, argv, "--conns", "8"));
    double seconds = atof(arg(argc, argv, "--seconds", "5"));
    range_bytes = strtoull(arg(argc, argv, "--range", "256"), NULL, 10) * 1024;
    if (url == NULL || strncmp(url, "http://", 7) != 0 || file_size < range_bytes || conns < 1 ||
        conns > BENCH_CONNS_MAX || seconds <= 0 || range_bytes == 0) {
        fprintf(stderr, "usage: media-bench load --url http://IP:PORT/path --size BYTES [--conns N (1-%d)] "
                        "[--seconds S] [--range KIB]\n",
                BENCH_CONNS_MAX);
        return 2;
    }
    const char *hp = url + 7, *slash = strchr(hp, '/'), *colon = strchr(hp, ':');
    if (slash == NULL || colon == NULL || colon > slash || (size_t)(colon - hp) >= sizeof(host)) {
        fprintf(stderr, "media-bench: want http://IP:PORT/path\n");
        return 2;
    }
    memcpy(host, hp, (size_t)(colon - hp));
    port = (uint16_t)atoi(colon + 1);
    snprintf(target, sizeof(target), "%s", slash);
    srandom(12345);
    static conn cs[BENCH_CONNS_MAX];
    static struct pollfd pf[BENCH_CONNS_MAX];
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_to();
        pf[i] = (struct pollfd){.fd = cs[i].fd, .events = POLLIN};
        send_request(&cs[i]);
    }
    double start = now_s(), end = start + seconds;
    while (now_s() < end) {
        int n = poll(pf, (nfds_t)conns, 1000);
        if (n < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        for (int i = 0; i < conns && n > 0; i++)
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
                on_readable(&cs[i]);
    }
    double took = now_s() - start;
    printf("requests/s %.0f MiB/s %.1f requests %llu errors %llu conns %d range_kib %llu\n", (double)requests / took,
           (double)body_bytes / took / (1 << 20), requests, errors, conns, (unsigned long long)(range_bytes / 1024));
    for (int i = 0; i < conns; i++)
        close(cs[i].fd);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return serve(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "load") == 0)
        return load(argc, argv);
    fprintf(stderr, "usage: media-bench serve|load ... (see bench/media/media_bench.c)\n");
    return 2;
}
