/* videos-search-bench: Videos/Search in stores of 1 000 and 1 000 000 videos, through the real
 * server and a blocking client on loopback.
 *
 *   videos-search-bench [--sizes 1000,1000000] [--searches 2000]
 *
 * For each size: a fresh store in a temporary directory (sync none: seeding speed; searches
 * are reads), one user with a session made in the store, size - MATCHES videos titled "Take"
 * seeded straight through the store with the word rows Videos/Create writes for that title
 * (t, ta, tak, take), then lagoond's stack in this process on an ephemeral port, and MATCHES
 * videos created through Videos/Create ("Nocturne in E flat", piece "Nocturne op. 9 no. 2",
 * composer "Chopin"). Each query below is then searched `searches` times (first page of
 * PAGE): the time of a query should not grow with the number of videos that do not match it.
 * Every loop is bounded; everything it creates is removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>

#include "accounts.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "videos.h"

#define MATCHES 100      /* videos that match "nocturne" */
#define PAGE 50          /* page_size of every search */
#define SEED_BATCH 10000 /* filler videos per seeding transaction */
#define WARMUP 20        /* unmeasured searches before each query's */
#define SIZE_MAX_VIDEOS 10000000ull

/* The queries, and the videos the first page holds. */
static const struct {
    const char *query, *why;
    uint32_t expect;
} queries[] = {
    {"nocturne", "one word, 100 match", PAGE},
    {"noct flat chopin", "three words, 100 match", PAGE},
    {"take", "one word, all but 100 match", PAGE},
    {"nocturne take", "100 candidates, none match", 0},
    {"zebra", "no candidate", 0},
};
#define NQUERIES (sizeof(queries) / sizeof(queries[0]))
_Static_assert(NQUERIES <= BENCH_ROWS_MAX, "a row of bench_sweep's results per query");

/* ---- seeding (not measured) ---------------------------------------------------------------------- */

typedef struct seed {
    uint64_t user;
    uint64_t from, count; /* the filler videos of this batch */
    lagoon_v1_Session session;
    lagoon_v1_Video *v; /* a row on the heap (~37 KB) */
} seed;

static int seed_user(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    return bench_seed_user(t, "bench_search", "search@bench.invalid", lagoon_v1_Role_STUDENT, &sd->session,
                           &sd->user, err);
}

/* Filler videos as Videos/Create would write them for the title "Take", created at ms
 * 1..size: the row, and one VideoWord per prefix of "take". */
static int seed_fillers(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    static const char *const prefixes[] = {"t", "ta", "tak", "take"};
    for (uint64_t i = 0; i < sd->count; i++) {
        lagoon_v1_Video *v = sd->v;
        memset(v, 0, sizeof(*v));
        v->owner_id = sd->user;
        snprintf(v->title, sizeof(v->title), "Take");
        snprintf(v->url, sizeof(v->url), "https://www.youtube.com/watch?v=%llu", (unsigned long long)(sd->from + i));
        v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
        v->status = lagoon_v1_Video_Status_READY;
        v->is_public = (sd->from + i) % 2;
        v->created_at = v->updated_at = (int64_t)(sd->from + i + 1);
        int st = store_insert(t, &lagoon_table_videos, v, NULL, err);
        for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]) && st == LAGOON_OK; p++) {
            lagoon_v1_VideoWord w = {.video_id = v->id, .created_at = v->created_at};
            snprintf(w.prefix, sizeof(w.prefix), "%s", prefixes[p]);
            st = store_insert(t, &lagoon_table_video_words, &w, NULL, err);
        }
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

static int seed_store(app *a, uint64_t size, seed *sd, char *token)
{
    store_error err;
    bench_session_tokens(&sd->session, token);
    if (store_write(a->db, seed_user, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    uint64_t t0 = bench_now_us(), fillers = size - MATCHES;
    for (uint64_t done = 0; done < fillers; done += sd->count) {
        sd->from = done;
        sd->count = fillers - done < SEED_BATCH ? fillers - done : SEED_BATCH;
        if (store_write(a->db, seed_fillers, sd, &err) != LAGOON_OK) {
            fprintf(stderr, "seed: %s\n", err.message);
            return -1;
        }
    }
    fprintf(stderr, "seeded %llu videos in %.1f s\n", (unsigned long long)fillers, (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

/* ---- through the server ----------------------------------------------------------------------------- */

static void create_matches(lagoon_client *c, lagoon_v1_Video *v)
{
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "Nocturne in E flat");
    snprintf(r.piece_name, sizeof(r.piece_name), "Nocturne op. 9 no. 2");
    snprintf(r.composer, sizeof(r.composer), "Chopin");
    snprintf(r.url, sizeof(r.url), "https://www.youtube.com/watch?v=nocturne");
    for (int i = 0; i < MATCHES; i++) {
        r.is_public = i % 2;
        int st = lagoon_Videos_Create(c, &r, v);
        if (st != LAGOON_OK) {
            fprintf(stderr, "create: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
            exit(1);
        }
    }
}

/* Mean, p50 and p99 of `searches` first pages of query qi, in ms, into out[3]. */
static void bench_query(lagoon_client *c, size_t qi, int searches, bench_stats *us, double out[3])
{
    static lagoon_v1_SearchVideosRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.query, sizeof(r.query), "%s", queries[qi].query);
    r.page_size = PAGE;
    bench_stats_reset(us);
    /* WARMUP calls first, not measured: the pages the query reads come into memory. */
    for (int i = -WARMUP; i < searches; i++) {
        lagoon_v1_ListVideosResponse resp;
        memset(&resp, 0, sizeof(resp));
        uint64_t t = bench_now_us();
        int st = lagoon_Videos_Search(c, &r, &resp);
        uint64_t d = bench_now_us() - t;
        if (st != LAGOON_OK || resp.videos_count != queries[qi].expect) {
            fprintf(stderr, "search %s: %s %s (%u videos)\n", queries[qi].query, lagoon_status_name(st),
                    lagoon_last_error(c)->detail.message, (unsigned)resp.videos_count);
            exit(1);
        }
        pb_release(lagoon_v1_ListVideosResponse_fields, &resp);
        if (i >= 0)
            bench_stats_add(us, d);
    }
    bench_stats_ms(us, out);
}

/* One store of size videos: the results of every query into res[query][mean, p50, p99]. */
static int run_size(uint64_t size, int searches, bench_stats *us, double res[][3])
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack)); /* bench_stack_stop undoes only what was done */
    seed sd;
    memset(&sd, 0, sizeof(sd));
    sd.v = malloc(sizeof(*sd.v));
    char token[ACCOUNT_TOKEN_CHARS + 1];
    lagoon_client *c = NULL;
    if (sd.v == NULL || bench_stack_open(&stack, "/tmp/lagoon-searchbench-XXXXXX", NULL) != 0 ||
        seed_store(stack.app, size, &sd, token) != 0 || bench_stack_serve(&stack, NULL) != 0 ||
        bench_stack_connect(&stack, token, &c) != 0) {
        free(sd.v);
        bench_stack_stop(&stack);
        return -1;
    }
    create_matches(c, sd.v);
    for (size_t q = 0; q < NQUERIES; q++) {
        bench_query(c, q, searches, us, res[q]);
        printf("| %-18s | %-28s | %9llu | %7d | %8.3f | %7.3f | %7.3f |\n", queries[q].query, queries[q].why,
               (unsigned long long)size, searches, res[q][0], res[q][1], res[q][2]);
        fflush(stdout);
    }
    lagoon_close(c);
    free(sd.v);
    return bench_stack_stop(&stack);
}

int main(int argc, char **argv)
{
    bench_sweep sw = {.sizes = "1000,1000000", .count = 2000};
    if (bench_sweep_args(&sw, argc, argv, "videos-search-bench", "searches") != 0)
        return 2;
    log_set_level(LOG_WARN);
    printf("| %-18s | %-28s | %9s | %7s | %8s | %7s | %7s |\n", "query", "", "videos", "calls", "mean ms", "p50 ms",
           "p99 ms");
    printf("|--------------------|------------------------------|-----------|---------|----------|---------|---------|\n");
    int rc = bench_sweep_run(&sw, "videos-search-bench", 2 * MATCHES, SIZE_MAX_VIDEOS, run_size);
    if (rc == 0 && sw.n > 1) {
        printf("\nmean time at %llu videos / at %llu:\n", (unsigned long long)sw.last_size,
               (unsigned long long)sw.first_size);
        for (size_t q = 0; q < NQUERIES; q++)
            printf("  %-18s %.2fx\n", queries[q].query, sw.last[q][0] / sw.first[q][0]);
    }
    return rc;
}
