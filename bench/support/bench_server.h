/* What the in-process benches share: lagoond's stack on an ephemeral loopback port over a fresh
 * store in a temporary directory (bench_stack), and latency samples reduced to mean, p50 and
 * p99 (bench_stats). Benches only: nothing here checks what a test would. */
#ifndef LAGOON_BENCH_SERVER_H
#define LAGOON_BENCH_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "lagoon.h"

#define BENCH_DIR_MAX 128 /* the temporary directory's path, template included */

typedef struct bench_stack {
    char dir[BENCH_DIR_MAX]; /* "" until bench_stack_dir made it */
    app *app;                /* NULL until bench_stack_open */
    rpc_server *srv;         /* NULL until bench_stack_serve */
    pthread_t th;            /* the thread in rpc_server_run */
} bench_stack;

/* Makes the temporary directory from tmpl ("/tmp/NAME-XXXXXX"); s is reset first. A bench that
 * looks at the directory before the store is in it (messages-bench's fsync rate) calls this
 * alone, then bench_stack_open. 0, or -1 with the reason on stderr. */
int bench_stack_dir(bench_stack *s, const char *tmpl);

/* Opens the app over the directory (bench_stack_dir's; made here from tmpl when there is none
 * yet) with acfg, NULL for a zero config with sync none (seeding speed; the calls measured are
 * reads). Seeding goes through s->app before bench_stack_serve. 0 or -1. */
int bench_stack_open(bench_stack *s, const char *tmpl, const app_config *acfg);

/* rpc_config_defaults on an ephemeral port, with the app and its authentication: the config
 * bench_stack_serve starts with when given NULL, for a bench that changes a field first. */
void bench_stack_config(const bench_stack *s, rpc_config *cfg);

/* Starts the server over lagoon_routes (cfg NULL: bench_stack_config's) on a thread of its own.
 * 0 or -1. */
int bench_stack_serve(bench_stack *s, const rpc_config *cfg);

uint16_t bench_stack_port(const bench_stack *s);

/* A blocking client on 127.0.0.1 with token set (NULL: none). 0 or -1. */
int bench_stack_connect(const bench_stack *s, const char *token, lagoon_client **out);

/* Undoes whatever of the above was done, in the order lagoond stops (server stopped and its
 * thread and workers joined before the app closes) and removes the directory. Safe on a stack
 * that failed half-way. 0, or -1 if the directory could not be removed. */
int bench_stack_stop(bench_stack *s);

/* Microseconds on the monotonic clock. */
uint64_t bench_now_us(void);

/* For qsort over uint32_t. */
int bench_cmp_u32(const void *a, const void *b);

/* Latency samples in microseconds, at most cap of them (the rest are dropped, never written
 * past the end). */
typedef struct bench_stats {
    uint32_t *us;
    size_t n, cap;
    uint64_t total_us; /* of the samples kept: for the mean */
} bench_stats;

/* 0, or -1 if the samples could not be allocated. */
int bench_stats_init(bench_stats *s, size_t cap);
void bench_stats_free(bench_stats *s);
/* Forgets the samples (the memory stays), for the next measurement. */
void bench_stats_reset(bench_stats *s);
/* Keeps one sample, clamped to UINT32_MAX microseconds; dropped when cap are kept. */
void bench_stats_add(bench_stats *s, uint64_t us);
/* Sorts the samples: out[0] mean, out[1] p50, out[2] p99, in milliseconds (p at index
 * (size_t)(p * (n - 1)), the nearest rank below). All 0 with no samples. */
void bench_stats_ms(bench_stats *s, double out[3]);

/* ---- the size sweep of comments-, teaching- and videos-search-bench ---- */

#define BENCH_SIZES_MAX 256     /* the --sizes list's characters */
#define BENCH_COUNT_MAX 1000000 /* the measured calls of one size, at most */
#define BENCH_ROWS_MAX 8        /* the measurements of one size, at most */

/* One size's run: count calls per measurement timed into us, row r's mean, p50 and p99 (ms)
 * into res[r]. 0, or non-zero to stop the sweep. */
typedef int (*bench_size_fn)(uint64_t size, int count, bench_stats *us, double res[][3]);

typedef struct bench_sweep {
    char sizes[BENCH_SIZES_MAX]; /* "N,N,..."; the default until --sizes */
    int count;                   /* calls per measurement; the default until --COUNT_OPT */
    /* After bench_sweep_run: the sizes run, the first and the last of them, their results. */
    int n;
    uint64_t first_size, last_size;
    double first[BENCH_ROWS_MAX][3], last[BENCH_ROWS_MAX][3];
} bench_sweep;

/* Parses `[--sizes N,N] [--COUNT_OPT N]` (count_opt without its dashes) into sw, which holds
 * the defaults; prints "usage: PROG [--sizes N,N] [--COUNT_OPT N]" or "PROG: COUNT_OPT
 * 1..BENCH_COUNT_MAX" and returns 2 when they are off, 0 otherwise. */
int bench_sweep_args(bench_sweep *sw, int argc, char **argv, const char *prog, const char *count_opt);

/* Runs fn for each size of sw->sizes in order, with samples for sw->count calls; a size
 * outside [min, max] stops the sweep with "PROG: sizes from MIN to MAX" (2), a non-zero fn or
 * no memory for the samples with 1. 0 when every size ran. */
int bench_sweep_run(bench_sweep *sw, const char *prog, uint64_t min, uint64_t max, bench_size_fn fn);

#endif
