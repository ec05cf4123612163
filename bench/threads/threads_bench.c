/* threads-bench: Threads/List of a group's feed of 100 threads and of 100 000, and a burst of
 * 10 000 reactions on one thread, through the real server and blocking clients on loopback.
 *
 *   threads-bench [--no-burst] [--sizes 100,100000] [--calls 2000]
 *
 * (--no-burst: the sweep alone, for a run under callgrind.)
 * The sweep: for each size a fresh store in a temporary directory (sync none: seeding speed; the
 * calls measured are reads), one user owning a public group (its ACTIVE owner row) and `size`
 * threads in it seeded straight through the store as Threads/Create writes them, PINNED of them
 * pinned, each with its own last activity. It times the first page (PAGE threads: the pinned,
 * then the most recently active) and the second page through its token: both should cost the
 * same whatever the threads around them.
 *
 * The burst: a store with sync full (every acknowledged write fsynced: what lagoond runs
 * with), one public-feed thread and BURST_USERS users with sessions seeded in the store;
 * BURST_CLIENTS connections, each on a thread of its own, send Threads/React for their share
 * of the users, every user once with each of BURST_TYPES types: BURST_USERS * BURST_TYPES
 * reactions. It prints the rate, then checks the thread's counts per type and the rows stored
 * against what was sent (exit 1 when they differ). Every loop is bounded; everything it
 * creates is removed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>

#include "account_tokens.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "threads.h"

#define PAGE 50               /* page_size of every List */
#define PINNED 3              /* pinned threads in the group, at every size */
#define SEED_BATCH 10000      /* threads per seeding transaction */
#define WARMUP 20             /* unmeasured calls before each measurement */
#define SIZE_MAX_THREADS 10000000ull

#define BURST_USERS 2000
#define BURST_TYPES 5         /* each user reacts with the first 5 types */
#define BURST_CLIENTS 32
#define BURST_REACTIONS (BURST_USERS * BURST_TYPES)
_Static_assert(BURST_TYPES <= THREADS_REACTION_TYPES, "one reaction of each type per user");

/* ---- the sweep: seeding (not measured) ----------------------------------------------------------- */

typedef struct seed {
    uint64_t user, group;
    uint64_t size;            /* threads in all */
    uint64_t from, count;     /* the threads of this batch */
    lagoon_v1_Session session;
    lagoon_v1_Group *g;       /* rows on the heap (~9 KB, ~23 KB) */
    lagoon_v1_Thread *th;
} seed;

static int seed_user_group(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    int st = bench_seed_user(t, "bench_threads", "threads@bench.invalid", lagoon_v1_Role_STUDENT, &sd->session,
                             &sd->user, err);
    memset(sd->g, 0, sizeof(*sd->g));
    sd->g->owner_id = sd->user;
    snprintf(sd->g->name, sizeof(sd->g->name), "Piano circle");
    sd->g->visibility = lagoon_v1_Group_Visibility_PUBLIC;
    sd->g->member_count = 1;
    sd->g->created_at = sd->g->last_activity_at = 1;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_groups, sd->g, &sd->group, err);
    lagoon_v1_GroupMember m = {.group_id = sd->group, .user_id = sd->user, .role = lagoon_v1_GroupMember_Role_OWNER,
                               .state = lagoon_v1_GroupMember_State_ACTIVE, .joined_at = 1};
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_group_members, &m, NULL, err) : st;
}

static int seed_threads(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_Thread *th = sd->th;
    for (uint64_t i = sd->from; i < sd->from + sd->count; i++) {
        memset(th, 0, sizeof(*th));
        th->author_id = sd->user;
        th->group_id = sd->group;
        snprintf(th->title, sizeof(th->title), "question %llu: how do I voice this chord?", (unsigned long long)i);
        snprintf(th->text, sizeof(th->text), "bars 12 to 16, the left hand");
        th->has_video = true;
        snprintf(th->video.url, sizeof(th->video.url), "https://example.com/q%llu.mp4", (unsigned long long)i);
        th->video.duration_seconds = 30;
        th->created_at = th->last_activity_at = (int64_t)i + 1;
        th->pinned = i % (sd->size / PINNED) == 0 && i / (sd->size / PINNED) < PINNED; /* spread out */
        th->follower_count = 1;
        int st = store_insert(t, &lagoon_table_threads, th, NULL, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

static int seed_store(app *a, seed *sd, char *token)
{
    store_error err;
    bench_session_tokens(&sd->session, token);
    if (store_write(a->db, seed_user_group, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    uint64_t t0 = bench_now_us();
    for (uint64_t done = 0; done < sd->size; done += sd->count) {
        sd->from = done;
        sd->count = sd->size - done < SEED_BATCH ? sd->size - done : SEED_BATCH;
        if (store_write(a->db, seed_threads, sd, &err) != LAGOON_OK) {
            fprintf(stderr, "seed: %s\n", err.message);
            return -1;
        }
    }
    fprintf(stderr, "seeded %llu threads in %.1f s\n", (unsigned long long)sd->size,
            (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

/* ---- the sweep: through the server ------------------------------------------------------------------ */

enum { M_FIRST, M_SECOND, NMEASURES };
static const char *const measure_names[NMEASURES] = {"List first page", "List second page"};
_Static_assert(NMEASURES <= BENCH_ROWS_MAX, "a row of bench_sweep's results per measure");

/* One List of group's feed from token (""), the next page's token into next; the threads
 * listed, or -1. The first page must start with the pinned threads. */
static int list(lagoon_client *c, uint64_t group, const char *token, char *next, size_t cap)
{
    lagoon_v1_ListThreadsResponse resp;
    memset(&resp, 0, sizeof(resp));
    lagoon_v1_ListThreadsRequest r = {.group_id = group, .page_size = PAGE};
    snprintf(r.page_token, sizeof(r.page_token), "%s", token);
    int st = lagoon_Threads_List(c, &r, &resp);
    int n = st == LAGOON_OK ? (int)resp.threads_count : -1;
    if (st != LAGOON_OK)
        fprintf(stderr, "List: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
    if (n > 0 && token[0] == '\0' && !(resp.threads[0].pinned && resp.threads[PINNED - 1].pinned))
        n = -1;
    if (next != NULL)
        snprintf(next, cap, "%s", resp.next_page_token);
    pb_release(lagoon_v1_ListThreadsResponse_fields, &resp);
    return n;
}

static int bench_measure(lagoon_client *c, int m, uint64_t group, int calls, bench_stats *us, double out[3])
{
    char second[STORE_PAGE_TOKEN_MAX + 1];
    if (list(c, group, "", second, sizeof(second)) != PAGE)
        return -1;
    bench_stats_reset(us);
    for (int i = -WARMUP; i < calls; i++) {
        uint64_t t = bench_now_us();
        int n = list(c, group, m == M_SECOND ? second : "", NULL, 0);
        uint64_t d = bench_now_us() - t;
        if (n != PAGE) {
            fprintf(stderr, "%s: %d threads, expected %d\n", measure_names[m], n, PAGE);
            return -1;
        }
        if (i >= 0)
            bench_stats_add(us, d);
    }
    bench_stats_ms(us, out);
    return 0;
}

static int run_size(uint64_t size, int calls, bench_stats *us, double res[][3])
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack)); /* bench_stack_stop undoes only what was done */
    seed sd;
    memset(&sd, 0, sizeof(sd));
    sd.size = size;
    sd.g = malloc(sizeof(*sd.g));
    sd.th = malloc(sizeof(*sd.th));
    char token[ACCOUNT_TOKEN_CHARS + 1];
    lagoon_client *c = NULL;
    int failed = sd.g == NULL || sd.th == NULL ||
                 bench_stack_open(&stack, "/tmp/lagoon-threadsbench-XXXXXX", NULL) != 0 ||
                 seed_store(stack.app, &sd, token) != 0 || bench_stack_serve(&stack, NULL) != 0 ||
                 bench_stack_connect(&stack, token, &c) != 0;
    for (int m = 0; m < NMEASURES && !failed; m++) {
        failed = bench_measure(c, m, sd.group, calls, us, res[m]) != 0;
        if (!failed)
            printf("| %-18s | %9llu | %7d | %8.3f | %7.3f | %7.3f |\n", measure_names[m], (unsigned long long)size,
                   calls, res[m][0], res[m][1], res[m][2]);
        fflush(stdout);
    }
    if (c != NULL)
        lagoon_close(c);
    free(sd.g);
    free(sd.th);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : -1;
}

/* ---- the burst ---------------------------------------------------------------------------------------- */

typedef struct burst {
    uint64_t thread;
    lagoon_v1_Session *sessions;              /* BURST_USERS */
    char (*tokens)[ACCOUNT_TOKEN_CHARS + 1];  /* their access tokens */
    uint64_t users[BURST_USERS];
    lagoon_v1_Thread *th;
} burst;

static int seed_burst(store_txn *t, void *arg, store_error *err)
{
    burst *b = arg;
    int st = LAGOON_OK;
    for (int i = 0; i < BURST_USERS && st == LAGOON_OK; i++) {
        char name[32], email[64];
        snprintf(name, sizeof(name), "reactor%d", i);
        snprintf(email, sizeof(email), "reactor%d@bench.invalid", i);
        st = bench_seed_user(t, name, email, lagoon_v1_Role_STUDENT, &b->sessions[i], &b->users[i], err);
    }
    memset(b->th, 0, sizeof(*b->th));
    b->th->author_id = b->users[0];
    snprintf(b->th->title, sizeof(b->th->title), "react to this");
    b->th->has_video = true;
    snprintf(b->th->video.url, sizeof(b->th->video.url), "https://example.com/burst.mp4");
    b->th->video.duration_seconds = 30;
    b->th->created_at = b->th->last_activity_at = 1;
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_threads, b->th, &b->thread, err) : st;
}

typedef struct reactor {
    const bench_stack *stack;
    const burst *b;
    int index;   /* this client's users: index, index + BURST_CLIENTS, ... */
    int sent, failed;
} reactor;

static void *react_all(void *arg)
{
    reactor *r = arg;
    lagoon_client *c;
    if (bench_stack_connect(r->stack, NULL, &c) != 0) {
        r->failed = BURST_REACTIONS;
        return NULL;
    }
    for (int u = r->index; u < BURST_USERS; u += BURST_CLIENTS) {
        lagoon_set_token(c, r->b->tokens[u]);
        for (int k = 1; k <= BURST_TYPES; k++) {
            lagoon_v1_ReactThreadRequest req = {.thread_id = r->b->thread, .type = (lagoon_v1_ThreadReaction)k};
            lagoon_v1_ReactThreadResponse resp;
            int st = lagoon_Threads_React(c, &req, &resp);
            if (st == LAGOON_OK && resp.added) {
                r->sent++;
            } else {
                if (r->failed++ == 0)
                    fprintf(stderr, "React: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
            }
        }
    }
    lagoon_close(c);
    return NULL;
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(uint64_t *)arg)++;
    return LAGOON_OK;
}

/* The rows of table tab, a page at a time (bounded by the pages a burst can fill). */
static int count_rows(app *a, const store_table *tab, uint64_t *n)
{
    store_txn *t;
    store_error err;
    *n = 0;
    if (store_read_begin(a->db, &t, &err) != LAGOON_OK)
        return -1;
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int st = LAGOON_OK;
    for (int page = 0; page < 10 * BURST_REACTIONS / STORE_PAGE_SIZE_MAX && st == LAGOON_OK; page++) {
        store_query q = {.table = tab, .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        store_page p;
        st = store_scan(t, &q, count_row, n, &p, &err);
        memcpy(token, p.next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    store_read_end(t);
    return st == LAGOON_OK ? 0 : -1;
}

static int run_burst(void)
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack));
    burst *b = calloc(1, sizeof(*b));
    reactor *rs = calloc(BURST_CLIENTS, sizeof(*rs));
    int failed = b == NULL || rs == NULL;
    if (!failed) {
        b->sessions = calloc(BURST_USERS, sizeof(*b->sessions));
        b->tokens = calloc(BURST_USERS, sizeof(*b->tokens));
        b->th = malloc(sizeof(*b->th));
        failed = b->sessions == NULL || b->tokens == NULL || b->th == NULL;
    }
    for (int i = 0; i < BURST_USERS && !failed; i++)
        bench_session_tokens(&b->sessions[i], b->tokens[i]);
    app_config acfg = {0};
    acfg.sync = STORE_SYNC_FULL;
    store_error err;
    failed = failed || bench_stack_open(&stack, "/tmp/lagoon-threadsburst-XXXXXX", &acfg) != 0 ||
             store_write(stack.app->db, seed_burst, b, &err) != LAGOON_OK || bench_stack_serve(&stack, NULL) != 0;
    pthread_t th[BURST_CLIENTS];
    int started = 0;
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < BURST_CLIENTS && !failed; i++) {
        rs[i] = (reactor){.stack = &stack, .b = b, .index = i};
        failed = pthread_create(&th[i], NULL, react_all, &rs[i]) != 0;
        started += !failed;
    }
    int sent = 0, refused = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        sent += rs[i].sent;
        refused += rs[i].failed;
    }
    double secs = (double)(bench_now_us() - t0) / 1e6;
    if (!failed) {
        printf("\nreaction burst on one thread: %d reactions from %d users over %d connections (sync full)\n", sent,
               BURST_USERS, BURST_CLIENTS);
        printf("  %.2f s, %.0f reactions/s, %d refused\n", secs, sent / secs, refused);
    }
    /* Exact: the thread's counts and the rows stored are what was sent. */
    lagoon_client *c = NULL;
    lagoon_v1_Thread *got = malloc(sizeof(*got));
    if (!failed && got != NULL && bench_stack_connect(&stack, b->tokens[0], &c) == 0) {
        lagoon_v1_ThreadIdRequest req = {b->thread};
        int st = lagoon_Threads_Get(c, &req, got);
        uint64_t rows = 0;
        failed = st != LAGOON_OK || count_rows(stack.app, &lagoon_table_thread_reactions, &rows) != 0;
        uint32_t total = 0;
        for (pb_size_t i = 0; !failed && i < got->reactions_count; i++) {
            printf("  type %d: %u\n", (int)got->reactions[i].type, got->reactions[i].count);
            failed = got->reactions[i].count != BURST_USERS;
            total += got->reactions[i].count;
        }
        failed = failed || got->reactions_count != BURST_TYPES || total != (uint32_t)sent ||
                 rows != (uint64_t)sent || sent != BURST_REACTIONS;
        printf("  counts %s: %u counted, %llu rows, %d sent\n", failed ? "WRONG" : "exact", total,
               (unsigned long long)rows, sent);
        lagoon_close(c);
    } else {
        failed = 1;
    }
    free(got);
    if (b != NULL) {
        free(b->sessions);
        free(b->tokens);
        free(b->th);
    }
    free(b);
    free(rs);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : -1;
}

int main(int argc, char **argv)
{
    bench_sweep sw = {.sizes = "100,100000", .count = 2000};
    int with_burst = !(argc > 1 && strcmp(argv[1], "--no-burst") == 0);
    if (!with_burst) {
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (bench_sweep_args(&sw, argc, argv, "threads-bench", "calls") != 0)
        return 2;
    log_set_level(LOG_WARN);
    printf("| %-18s | %9s | %7s | %8s | %7s | %7s |\n", "call", "threads", "calls", "mean ms", "p50 ms", "p99 ms");
    printf("|--------------------|-----------|---------|----------|---------|---------|\n");
    int rc = bench_sweep_run(&sw, "threads-bench", 2 * PAGE, SIZE_MAX_THREADS, run_size);
    if (rc == 0 && sw.n > 1) {
        printf("\nmean time at %llu threads / at %llu (target within 1.5x):\n", (unsigned long long)sw.last_size,
               (unsigned long long)sw.first_size);
        for (int m = 0; m < NMEASURES; m++)
            printf("  %-18s %.2fx\n", measure_names[m], sw.last[m][0] / sw.first[m][0]);
    }
    if (rc == 0 && with_burst)
        rc = run_burst() == 0 ? 0 : 1;
    return rc;
}
