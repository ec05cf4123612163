/* comments-bench: the comments of a 30 s window (Comments/ListWindow) and a page by moment
 * (Comments/List, MOMENT) on a video of 100 comments and on one of 100 000, through the real
 * server and a blocking client on loopback.
 *
 *   comments-bench [--sizes 100,100000] [--calls 2000]
 *
 * For each size: a fresh store in a temporary directory (sync none: seeding speed; the calls
 * measured are reads), one user with a session made in the store, one public video of an hour,
 * and `size` top-level comments seeded straight through the store as Comments/Add writes them:
 * WINDOW_COMMENTS of them in the window [WINDOW_FROM_MS, WINDOW_FROM_MS + 30 s), the others
 * spread over the rest of the hour. Every size's window thus holds the same comments, and a
 * first page by moment is PAGE comments at every size: the time of either should not grow with
 * the comments around it. Every loop is bounded; everything it creates is removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>

#include "account_tokens.h"
#include "accounts.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "comments.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"

#define VIDEO_MS (3600u * 1000u)     /* the video's length */
#define WINDOW_FROM_MS (600u * 1000u) /* the window measured: [10:00, 10:30) */
#define WINDOW_MS (30u * 1000u)
#define WINDOW_COMMENTS 20           /* comments in it, at every size */
#define PAGE 50                      /* page_size of every List */
#define SEED_BATCH 10000             /* comments per seeding transaction */
#define WARMUP 20                    /* unmeasured calls before each measurement */
#define SIZE_MAX_COMMENTS 10000000ull

/* ---- seeding (not measured) ---------------------------------------------------------------------- */

typedef struct seed {
    uint64_t user, video;
    uint64_t size;             /* comments in all */
    uint64_t from, count;      /* the comments of this batch */
    lagoon_v1_Session session;
    lagoon_v1_Video *v;        /* rows on the heap (~37 KB, ~20 KB) */
    lagoon_v1_Comment *c;
} seed;

static int seed_user_video(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    int st = bench_seed_user(t, "bench_comments", "comments@bench.invalid", lagoon_v1_Role_STUDENT, &sd->session,
                             &sd->user, err);
    memset(sd->v, 0, sizeof(*sd->v));
    sd->v->owner_id = sd->user;
    snprintf(sd->v->title, sizeof(sd->v->title), "Etude");
    snprintf(sd->v->url, sizeof(sd->v->url), "https://www.youtube.com/watch?v=etude");
    sd->v->duration_seconds = VIDEO_MS / 1000;
    sd->v->is_public = true;
    sd->v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
    sd->v->status = lagoon_v1_Video_Status_READY;
    sd->v->created_at = sd->v->updated_at = 1;
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_videos, sd->v, &sd->video, err) : st;
}

/* The moment of comment i of n: the first WINDOW_COMMENTS inside the window, the others
 * spread evenly over the rest of the video. */
static uint32_t moment(uint64_t i, uint64_t n)
{
    if (i < WINDOW_COMMENTS)
        return WINDOW_FROM_MS + (uint32_t)(i * (WINDOW_MS / WINDOW_COMMENTS));
    uint64_t outside = VIDEO_MS - WINDOW_MS, k = i - WINDOW_COMMENTS;
    uint64_t at = k * outside / (n - WINDOW_COMMENTS);
    return (uint32_t)(at < WINDOW_FROM_MS ? at : at + WINDOW_MS);
}

static int seed_comments(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_Comment *c = sd->c;
    for (uint64_t i = sd->from; i < sd->from + sd->count; i++) {
        memset(c, 0, sizeof(*c));
        c->video_id = sd->video;
        c->author_id = sd->user;
        snprintf(c->content, sizeof(c->content), "comment %llu: the left hand is late here",
                 (unsigned long long)i);
        c->at_ms = moment(i, sd->size);
        c->created_at = (int64_t)i + 1;
        int st = store_insert(t, &lagoon_table_comments, c, NULL, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

static int seed_store(app *a, seed *sd, char *token)
{
    store_error err;
    bench_session_tokens(&sd->session, token);
    if (store_write(a->db, seed_user_video, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    uint64_t t0 = bench_now_us();
    for (uint64_t done = 0; done < sd->size; done += sd->count) {
        sd->from = done;
        sd->count = sd->size - done < SEED_BATCH ? sd->size - done : SEED_BATCH;
        if (store_write(a->db, seed_comments, sd, &err) != LAGOON_OK) {
            fprintf(stderr, "seed: %s\n", err.message);
            return -1;
        }
    }
    fprintf(stderr, "seeded %llu comments in %.1f s\n", (unsigned long long)sd->size,
            (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

/* ---- through the server ----------------------------------------------------------------------------- */

enum { M_WINDOW, M_MOMENT, M_NEWEST, NMEASURES };
static const char *const measure_names[NMEASURES] = {"ListWindow 30 s", "List MOMENT page", "List NEWEST page"};
_Static_assert(NMEASURES <= BENCH_ROWS_MAX, "a row of bench_sweep's results per measure");

/* One call of measure m; the comments it listed, or -1. */
static int call(lagoon_client *c, int m, uint64_t video)
{
    lagoon_v1_ListCommentsResponse resp;
    memset(&resp, 0, sizeof(resp));
    int st;
    if (m == M_WINDOW) {
        lagoon_v1_ListCommentWindowRequest r = {.video_id = video, .from_ms = WINDOW_FROM_MS,
                                                .to_ms = WINDOW_FROM_MS + WINDOW_MS, .page_size = PAGE};
        st = lagoon_Comments_ListWindow(c, &r, &resp);
    } else {
        lagoon_v1_ListCommentsRequest r = {.video_id = video, .page_size = PAGE,
                                           .order = m == M_NEWEST ? lagoon_v1_ListCommentsRequest_Order_NEWEST
                                                                  : lagoon_v1_ListCommentsRequest_Order_MOMENT};
        st = lagoon_Comments_List(c, &r, &resp);
    }
    int n = st == LAGOON_OK ? (int)resp.comments_count : -1;
    if (st != LAGOON_OK)
        fprintf(stderr, "%s: %s %s\n", measure_names[m], lagoon_status_name(st), lagoon_last_error(c)->detail.message);
    pb_release(lagoon_v1_ListCommentsResponse_fields, &resp);
    return n;
}

/* Mean, p50 and p99 of `calls` calls of measure m, in ms, into out[3]. */
static int bench_measure(lagoon_client *c, int m, uint64_t video, int calls, bench_stats *us, double out[3])
{
    int expect = m == M_WINDOW ? WINDOW_COMMENTS : PAGE;
    bench_stats_reset(us);
    for (int i = -WARMUP; i < calls; i++) {
        uint64_t t = bench_now_us();
        int n = call(c, m, video);
        uint64_t d = bench_now_us() - t;
        if (n != expect) {
            fprintf(stderr, "%s: %d comments, expected %d\n", measure_names[m], n, expect);
            return -1;
        }
        if (i >= 0)
            bench_stats_add(us, d);
    }
    bench_stats_ms(us, out);
    return 0;
}

/* One store of a video with size comments: res[measure][mean, p50, p99]. */
static int run_size(uint64_t size, int calls, bench_stats *us, double res[][3])
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack)); /* bench_stack_stop undoes only what was done */
    seed sd;
    memset(&sd, 0, sizeof(sd));
    sd.size = size;
    sd.v = malloc(sizeof(*sd.v));
    sd.c = malloc(sizeof(*sd.c));
    char token[ACCOUNT_TOKEN_CHARS + 1];
    lagoon_client *c = NULL;
    int failed = sd.v == NULL || sd.c == NULL ||
                 bench_stack_open(&stack, "/tmp/lagoon-commentsbench-XXXXXX", NULL) != 0 ||
                 seed_store(stack.app, &sd, token) != 0 || bench_stack_serve(&stack, NULL) != 0 ||
                 bench_stack_connect(&stack, token, &c) != 0;
    for (int m = 0; m < NMEASURES && !failed; m++) {
        failed = bench_measure(c, m, sd.video, calls, us, res[m]) != 0;
        if (!failed)
            printf("| %-18s | %9llu | %7d | %8.3f | %7.3f | %7.3f |\n", measure_names[m], (unsigned long long)size,
                   calls, res[m][0], res[m][1], res[m][2]);
        fflush(stdout);
    }
    if (c != NULL)
        lagoon_close(c);
    free(sd.v);
    free(sd.c);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : -1;
}

int main(int argc, char **argv)
{
    bench_sweep sw = {.sizes = "100,100000", .count = 2000};
    if (bench_sweep_args(&sw, argc, argv, "comments-bench", "calls") != 0)
        return 2;
    log_set_level(LOG_WARN);
    printf("| %-18s | %9s | %7s | %8s | %7s | %7s |\n", "call", "comments", "calls", "mean ms", "p50 ms", "p99 ms");
    printf("|--------------------|-----------|---------|----------|---------|---------|\n");
    int rc = bench_sweep_run(&sw, "comments-bench", 2 * PAGE, SIZE_MAX_COMMENTS, run_size);
    if (rc == 0 && sw.n > 1) {
        printf("\nmean time at %llu comments / at %llu:\n", (unsigned long long)sw.last_size,
               (unsigned long long)sw.first_size);
        for (int m = 0; m < NMEASURES; m++)
            printf("  %-18s %.2fx\n", measure_names[m], sw.last[m][0] / sw.first[m][0]);
    }
    return rc;
}
