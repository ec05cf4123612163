/* lagoon-store-bench: point reads and durable writes per second through the store alone, at
 * several table sizes, next to the raw fsync rate of the same disk.
 *
 *   lagoon-store-bench [--dir DIR] [--rows N[,N...]] [--writers N] [--readers N] [--seconds S]
 *
 * DIR (default /tmp) must be on the disk to measure; the benchmark works in a fresh directory
 * under it and removes it afterwards. Every phase stops by itself after --seconds (default 3)
 * or a fixed number of operations, whichever comes first; loading stops after 300 s.
 *
 * Loading uses STORE_SYNC_NONE and big batches (it is setup, not measurement); the measured
 * writes run with STORE_SYNC_FULL: each is acknowledged only after its batch is fsynced.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "lagoon_bench_tables.h"
#include "lagoon_idl.h"
#include "store.h"

/* The benchmark table (bench_users: a unique index and an ordered one, like a users table) is
 * declared in idl/lagoon/bench/v1/store_bench.proto. */
typedef lagoon_bench_v1_BenchUser row_t;

static const store_schema bench_schema = {lagoon_bench_tables, LAGOON_BENCH_TABLES_COUNT, 1, NULL, NULL};

/* ---- Helpers ----------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fill_row(row_t *r, const char *prefix, uint64_t n)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof(r->name), "%s%010llu", prefix, (unsigned long long)n);
    snprintf(r->email, sizeof(r->email), "%s%llu@example.com", prefix, (unsigned long long)n);
    r->created_at = (int64_t)(1700000000000LL + (int64_t)n);
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: enough to spread point reads over the table. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* ---- Raw fsync rate ---------------------------------------------------------------------- */

static double fsync_rate(const char *dir, double seconds)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/fsync-probe", dir);
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0) {
        perror("fsync probe");
        return 0;
    }
    char buf[4096];
    memset(buf, 'x', sizeof(buf));
    double t0 = now_s();
    long n = 0;
    while (n < 100000 && now_s() - t0 < seconds) { /* bounded twice: count and time */
        buf[0] = (char)n;
        if (pwrite(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf) || fdatasync(fd) != 0) {
            perror("fsync probe");
            break;
        }
        n++;
    }
    double t = now_s() - t0;
    close(fd);
    unlink(path);
    return (double)n / t;
}

/* ---- Loading ----------------------------------------------------------------------------- */

typedef struct load_arg {
    uint64_t from, count;
} load_arg;

static int w_load(store_txn *t, void *arg, store_error *err)
{
    load_arg *a = arg;
    for (uint64_t i = 0; i < a->count; i++) {
        row_t r;
        fill_row(&r, "u", a->from + i);
        int st = store_insert(t, &lagoon_bench_table_bench_users, &r, NULL, err);
        if (st)
            return st;
    }
    return LAGOON_OK;
}

static uint64_t load(store *s, uint64_t rows, double max_seconds, double *took)
{
    double t0 = now_s();
    uint64_t done = 0;
    store_error err;
    while (done < rows && now_s() - t0 < max_seconds) {
        load_arg a = {done, rows - done < 5000 ? rows - done : 5000};
        if (store_write(s, w_load, &a, &err)) {
            fprintf(stderr, "load: %s\n", err.message);
            break;
        }
        done += a.count;
    }
    *took = now_s() - t0;
    return done;
}

/* ---- Point reads ------------------------------------------------------------------------ */

typedef struct reader {
    store *s;
    uint64_t rows;
    double deadline;
    uint64_t max_ops;
    uint64_t ops, misses;
    uint64_t seed;
} reader;

static void *read_loop(void *arg)
{
    reader *r = arg;
    row_t row;
    store_error err;
    for (uint64_t i = 0; i < r->max_ops; i++) {
        if ((i & 255) == 0 && now_s() > r->deadline)
            break;
        uint64_t id = rng_next(&r->seed) % r->rows + 1;
        store_txn *t;
        if (store_read_begin(r->s, &t, &err))
            break;
        if (store_get(t, &lagoon_bench_table_bench_users, id, &row, &err))
            r->misses++;
        store_read_end(t);
        r->ops++;
    }
    return NULL;
}

static double point_reads(store *s, uint64_t rows, int nthreads, double seconds, uint64_t *misses)
{
    pthread_t th[256];
    reader rd[256];
    double t0 = now_s();
    for (int i = 0; i < nthreads; i++) {
        rd[i] = (reader){s, rows, t0 + seconds, 20000000, 0, 0, 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)};
        pthread_create(&th[i], NULL, read_loop, &rd[i]);
    }
    uint64_t ops = 0;
    *misses = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        ops += rd[i].ops;
        *misses += rd[i].misses;
    }
    return (double)ops / (now_s() - t0);
}

/* ---- Durable writes ---------------------------------------------------------------------- */

typedef struct writer {
    store *s;
    int id;
    double deadline;
    uint64_t max_ops;
    uint64_t ops, failed;
} writer;

typedef struct one_arg {
    row_t row;
} one_arg;

static int w_one(store_txn *t, void *arg, store_error *err)
{
    one_arg *a = arg;
    return store_insert(t, &lagoon_bench_table_bench_users, &a->row, NULL, err);
}

/* Names of measured writes: unique across phases and threads. */
static atomic_uint_fast64_t write_seq;

static void *write_loop(void *arg)
{
    writer *w = arg;
    store_error err;
    for (uint64_t i = 0; i < w->max_ops && now_s() < w->deadline; i++) {
        one_arg a;
        fill_row(&a.row, "w", atomic_fetch_add(&write_seq, 1));
        if (store_write(w->s, w_one, &a, &err))
            w->failed++;
        else
            w->ops++;
    }
    return NULL;
}

static double durable_writes(store *s, int nthreads, double seconds, double *per_batch,
                             uint64_t *failed)
{
    pthread_t th[1024];
    writer wr[1024];
    store_counters c0, c1;
    store_counters_get(s, &c0);
    double t0 = now_s();
    for (int i = 0; i < nthreads; i++) {
        wr[i] = (writer){s, i, t0 + seconds, 1000000, 0, 0};
        pthread_create(&th[i], NULL, write_loop, &wr[i]);
    }
    uint64_t ops = 0;
    *failed = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        ops += wr[i].ops;
        *failed += wr[i].failed;
    }
    double rate = (double)ops / (now_s() - t0);
    store_counters_get(s, &c1);
    uint64_t batches = c1.batches - c0.batches;
    *per_batch = batches ? (double)(c1.ops_ok - c0.ops_ok) / (double)batches : 0;
    return rate;
}

/* ---- Main -------------------------------------------------------------------------------- */

static void machine(const char *dir)
{
    struct utsname u;
    uname(&u);
    char model[256] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *p = strchr(line, ':');
                if (p) {
                    snprintf(model, sizeof(model), "%s", p + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    printf("machine: %s %s, %ld CPUs (%s), data dir %s\n", u.sysname, u.release,
           sysconf(_SC_NPROCESSORS_ONLN), model, dir);
}

int main(int argc, char **argv)
{
    const char *base = "/tmp";
    char rows_arg[256] = "1000,1000000";
    int writers = 64, readers = 0;
    double seconds = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            base = argv[++i];
        else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
            snprintf(rows_arg, sizeof(rows_arg), "%s", argv[++i]);
        else if (strcmp(argv[i], "--writers") == 0 && i + 1 < argc)
            writers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--readers") == 0 && i + 1 < argc)
            readers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--dir DIR] [--rows N[,N...]] [--writers N] [--readers N] "
                            "[--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (writers < 1 || writers > 1024 || readers < 0 || readers > 256 || seconds <= 0 ||
        seconds > 600) {
        fprintf(stderr, "writers 1..1024, readers 0..256, seconds 0..600\n");
        return 2;
    }
    if (readers == 0)
        readers = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (readers > 256)
        readers = 256;

    char work[4096];
    snprintf(work, sizeof(work), "%s/lagoon-store-bench-XXXXXX", base);
    if (!mkdtemp(work)) {
        perror(work);
        return 1;
    }
    machine(base);
    double load1 = 0;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &load1) != 1)
            load1 = 0;
        fclose(la);
    }
    printf("load average (1 min) at start: %.2f%s\n", load1,
           load1 > 0.5 ? "  (the machine is busy: numbers will be noisy)" : "");

    int status = 0;
    for (char *tok = strtok(rows_arg, ","); tok; tok = strtok(NULL, ",")) {
        uint64_t rows = strtoull(tok, NULL, 10);
        if (rows == 0 || rows > 100000000)
            continue;
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s/db-%llu", work, (unsigned long long)rows);
        store_config cfg = {.schema = &bench_schema, .sync = STORE_SYNC_NONE,
                            .max_batch = STORE_MAX_BATCH_LIMIT};
        store *s;
        store_error err;
        if (store_open(dir, &cfg, &s, &err)) {
            fprintf(stderr, "open: %s\n", err.message);
            status = 1;
            break;
        }
        double took;
        uint64_t loaded = load(s, rows, 300, &took);
        store_close(s);
        printf("\n%llu rows: loaded %llu in %.1f s (%.0f rows/s, sync=none)\n",
               (unsigned long long)rows, (unsigned long long)loaded, took, (double)loaded / took);

        cfg.sync = STORE_SYNC_FULL;
        cfg.max_batch = 0;
        if (store_open(dir, &cfg, &s, &err)) {
            fprintf(stderr, "reopen: %s\n", err.message);
            status = 1;
            break;
        }
        uint64_t misses;
        double r1 = point_reads(s, loaded, 1, seconds, &misses);
        printf("  point reads, 1 thread:    %10.0f /s\n", r1);
        double rn = point_reads(s, loaded, readers, seconds, &misses);
        printf("  point reads, %d threads:  %10.0f /s%s\n", readers, rn,
               misses ? "  (MISSES: bug)" : "");
        /* The disk's own rate, measured right before and right after the writes it is compared
         * with; the ratios use the higher of the two, so a disk that was briefly slower during
         * one measurement cannot flatter them. */
        double fs = fsync_rate(work, seconds);
        double per_batch;
        uint64_t failed;
        double w1 = durable_writes(s, 1, seconds, &per_batch, &failed);
        double wn1 = per_batch;
        uint64_t failed1 = failed;
        double wn = durable_writes(s, writers, seconds, &per_batch, &failed);
        failed += failed1;
        double fs2 = fsync_rate(work, seconds);
        printf("  raw fdatasync of a 4 KiB write: %.0f /s before, %.0f /s after the writes\n", fs,
               fs2);
        if (fs2 > fs)
            fs = fs2;
        printf("  durable writes, 1 writer:    %8.0f /s (%.1f per batch) = %.2f x fsync rate\n",
               w1, wn1, w1 / fs);
        printf("  durable writes, %d writers: %8.0f /s (%.1f per batch) = %.1f x fsync rate%s\n",
               writers, wn, per_batch, wn / fs, failed ? "  (FAILURES)" : "");
        store_counters c;
        store_counters_get(s, &c);
        printf("  map size %.1f MiB after %llu growths\n", (double)c.map_size / 1048576.0,
               (unsigned long long)c.map_growths);
        store_close(s);
        if (misses || failed)
            status = 1;
    }
    nftw(work, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return status;
}
