/* videochats-bench: 10 000 video chats scheduled with reminders through VideoChats/Schedule,
 * then (1) VideoChats/ListUpcoming of a user invited to 1 000 of them against one invited to
 * 10, and (2) the durable scheduler running all 20 000 reminder jobs (two per chat: before the
 * start and at it), through the real server and a blocking client on loopback.
 *
 *   videochats-bench [--chats 10000] [--calls 2000]
 *
 * A fresh store in a temporary directory (sync none: seeding speed), an organizer, a "heavy"
 * user invited to 1 000 chats, a "light" one invited to 10, and 100 other users who share the
 * rest (each chat invites two people: three participant rows, three notifications per job).
 * The chats start one minute apart from an hour on, on an injected clock that the bench moves:
 * first the lists are timed (everything upcoming; the heavy and light users' calls in turn on
 * one connection, so that the shared machine's load weighs on both alike; and the heavy user's
 * page of 50, the default), then the clock
 * jumps past the last start and sched_run_due runs every due job, a tick (SCHED_TICK_JOBS_MAX
 * jobs, one write batch) at a time; its time per job and per tick is the scheduler's cost. The
 * scheduler's own thread idles (an hour between looks) so that only the timed ticks run jobs.
 * Every loop is bounded; everything it creates is removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account_tokens.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "scheduler.h"

#define WARMUP 20
#define FILLERS 100          /* users who share the chats the heavy and light ones are not in */
#define HEAVY_CHATS 1000     /* chats the heavy user is invited to */
#define LIGHT_CHATS 10
#define CHATS_MAX 1000000
#define MIN_MS (60LL * 1000)

static int64_t bench_clock_ms;

static int64_t bench_clock(void *arg)
{
    (void)arg;
    return __atomic_load_n(&bench_clock_ms, __ATOMIC_SEQ_CST);
}

/* organizer, heavy, light, then the fillers: ids and sessions. */
#define USERS (3 + FILLERS)
typedef struct seed {
    uint64_t ids[USERS];
    lagoon_v1_Session sessions[USERS];
} seed;

static int seed_rows(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    int st = LAGOON_OK;
    for (int i = 0; i < USERS && st == LAGOON_OK; i++) {
        char name[32], email[64];
        snprintf(name, sizeof(name), "bench_user_%d", i);
        snprintf(email, sizeof(email), "%s@bench.invalid", name);
        sd->sessions[i].role = lagoon_v1_Role_STUDENT;
        sd->sessions[i].verified = true;
        st = bench_seed_user(t, name, email, lagoon_v1_Role_STUDENT, &sd->sessions[i], &sd->ids[i], err);
    }
    return st;
}

/* Chat i invites two: the heavy user for the first HEAVY_CHATS, the light one for every
 * chats/LIGHT_CHATS-th, fillers otherwise. */
static int schedule_all(lagoon_client *c, const seed *sd, int chats)
{
    static lagoon_v1_ScheduleChatRequest r;
    static lagoon_v1_VideoChatView v;
    int light_every = chats / LIGHT_CHATS;
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < chats; i++) {
        memset(&r, 0, sizeof(r));
        snprintf(r.title, sizeof(r.title), "Call %d", i);
        r.start_at = bench_clock_ms + 60 * MIN_MS + (int64_t)i * MIN_MS;
        r.duration_minutes = 30;
        r.user_ids[0] = i < HEAVY_CHATS ? sd->ids[1] : sd->ids[3 + i % FILLERS];
        r.user_ids[1] = i % light_every == light_every - 1 ? sd->ids[2] : sd->ids[3 + (i + 1) % FILLERS];
        r.user_ids_count = 2;
        int st = lagoon_VideoChats_Schedule(c, &r, &v);
        pb_release(lagoon_v1_VideoChatView_fields, &v);
        memset(&v, 0, sizeof(v));
        if (st != LAGOON_OK) {
            fprintf(stderr, "Schedule: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
            return -1;
        }
    }
    fprintf(stderr, "scheduled %d chats (%d reminder jobs) in %.1f s\n", chats, 2 * chats,
            (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

/* One ListUpcoming call (a page of `size`) of the client's user, whose page must hold `want`
 * chats: its time in us into st (when st is not NULL). */
static int list_once(lagoon_client *c, uint32_t size, uint32_t want, bench_stats *st)
{
    static lagoon_v1_ListChatsResponse resp;
    lagoon_v1_ListChatsRequest r = lagoon_v1_ListChatsRequest_init_zero;
    r.page_size = size;
    uint64_t t = bench_now_us();
    int rc = lagoon_VideoChats_ListUpcoming(c, &r, &resp);
    uint64_t d = bench_now_us() - t;
    uint32_t got = resp.chats_count;
    pb_release(lagoon_v1_ListChatsResponse_fields, &resp);
    memset(&resp, 0, sizeof(resp));
    if (rc != LAGOON_OK || got != want) {
        fprintf(stderr, "ListUpcoming: %s, %u chats, expected %u\n", lagoon_status_name(rc), got, want);
        return -1;
    }
    if (st != NULL)
        bench_stats_add(st, d);
    return 0;
}

/* Mean, p50, p99 (ms) of `calls` ListUpcoming calls of the heavy user (token th) and as many of
 * the light one (tl), pages of `size` (holding want_h and want_l chats), in turn on the same
 * connection: heavy, light, heavy, ... so that the machine's load (shared cores) and the
 * connection's loop thread weigh on both alike. (On two connections the tails followed the
 * connection, whichever user it carried: its loop thread's share of the busy cores.) */
static int bench_pair(lagoon_client *c, const char *th, const char *tl, uint32_t size, uint32_t want_h,
                      uint32_t want_l, int calls, bench_stats *hs, bench_stats *ls, double out_h[3], double out_l[3])
{
    bench_stats_reset(hs);
    bench_stats_reset(ls);
    for (int i = -WARMUP; i < calls; i++) {
        lagoon_set_token(c, th);
        if (list_once(c, size, want_h, i >= 0 ? hs : NULL) != 0)
            return -1;
        lagoon_set_token(c, tl);
        if (list_once(c, size, want_l, i >= 0 ? ls : NULL) != 0)
            return -1;
    }
    bench_stats_ms(hs, out_h);
    bench_stats_ms(ls, out_l);
    return 0;
}

/* The client's user's page of `size` alone (the heavy user's default page of 50). */
static int bench_list(lagoon_client *c, uint32_t size, uint32_t want, int calls, bench_stats *us, double out[3])
{
    bench_stats_reset(us);
    for (int i = -WARMUP; i < calls; i++)
        if (list_once(c, size, want, i >= 0 ? us : NULL) != 0)
            return -1;
    bench_stats_ms(us, out);
    return 0;
}

static int bench_scheduler(app *a, int chats)
{
    __atomic_store_n(&bench_clock_ms, bench_clock_ms + (int64_t)(chats + 120) * MIN_MS, __ATOMIC_SEQ_CST);
    uint64_t total = 0, worst = 0, t0 = bench_now_us();
    uint32_t ticks = 0, ran_all = 0;
    for (int guard = 0; guard < 2 * chats / SCHED_TICK_JOBS_MAX + 10; guard++) {
        uint32_t ran = 0;
        store_error err;
        uint64_t t = bench_now_us();
        if (sched_run_due(a, 0, &ran, &err) != LAGOON_OK) {
            fprintf(stderr, "sched_run_due: %s\n", err.message);
            return -1;
        }
        uint64_t d = bench_now_us() - t;
        if (ran == 0)
            break;
        ticks++;
        ran_all += ran;
        total += d;
        if (d > worst)
            worst = d;
    }
    if (ran_all != (uint32_t)(2 * chats)) {
        fprintf(stderr, "scheduler ran %u jobs, expected %d\n", ran_all, 2 * chats);
        return -1;
    }
    printf("\n| scheduler | due jobs | ticks | total s | us per job | mean ms per tick | worst tick ms |\n");
    printf("|-----------|----------|-------|---------|------------|------------------|---------------|\n");
    printf("| sched_run_due | %u | %u | %.2f | %.1f | %.2f | %.2f |\n", ran_all, ticks,
           (double)(bench_now_us() - t0) / 1e6, (double)total / ran_all, (double)total / ticks / 1000.0,
           (double)worst / 1000.0);
    return 0;
}

int main(int argc, char **argv)
{
    int chats = 10000, calls = 2000;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--chats") == 0)
            chats = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--calls") == 0)
            calls = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: videochats-bench [--chats N] [--calls N]\n");
            return 2;
        }
    }
    if (chats < HEAVY_CHATS + LIGHT_CHATS || chats > CHATS_MAX || calls < 1 || calls > BENCH_COUNT_MAX) {
        fprintf(stderr, "videochats-bench: chats %d..%d, calls 1..%d\n", HEAVY_CHATS + LIGHT_CHATS, CHATS_MAX,
                BENCH_COUNT_MAX);
        return 2;
    }
    log_set_level(LOG_WARN);
    bench_clock_ms = 1795000000000LL;
    app_config acfg = {0};
    acfg.sync = STORE_SYNC_NONE;
    acfg.clock = bench_clock;
    acfg.sched_poll_ms = 3600 * 1000;
    acfg.video_chats.max_events = CHATS_MAX; /* one organizer schedules them all */
    bench_stack stack;
    memset(&stack, 0, sizeof(stack));
    static seed sd;
    char tokens[3][ACCOUNT_TOKEN_CHARS + 1], spare[ACCOUNT_TOKEN_CHARS + 1];
    for (int i = 0; i < USERS; i++)
        bench_session_tokens(&sd.sessions[i], i < 3 ? tokens[i] : spare);
    lagoon_client *c = NULL;
    bench_stats us = {0}, us2 = {0};
    store_error err;
    int failed = bench_stats_init(&us, (size_t)calls) != 0 || bench_stats_init(&us2, (size_t)calls) != 0 ||
                 bench_stack_open(&stack, "/tmp/lagoon-videochatsbench-XXXXXX", &acfg) != 0 ||
                 store_write(stack.app->db, seed_rows, &sd, &err) != LAGOON_OK || bench_stack_serve(&stack, NULL) != 0 ||
                 bench_stack_connect(&stack, tokens[0], &c) != 0;
    if (!failed)
        failed = schedule_all(c, &sd, chats) != 0;
    /* The same page (10 chats) for both, so that only what the user has differs, the two users'
     * calls in turn; pages of 5 too, where both pages carry a next-page token (the light user's
     * page of 10 is its last, without one); and the heavy user's default page of 50. */
    double heavy[3], light[3], heavy50[3], heavy5[3], light5[3];
    if (!failed)
        failed = bench_pair(c, tokens[1], tokens[2], LIGHT_CHATS, LIGHT_CHATS, LIGHT_CHATS, calls, &us, &us2, heavy,
                            light) != 0 ||
                 bench_pair(c, tokens[1], tokens[2], 5, 5, 5, calls, &us, &us2, heavy5, light5) != 0;
    if (!failed) {
        lagoon_set_token(c, tokens[1]);
        failed = bench_list(c, 0, 50, calls, &us, heavy50) != 0;
    }
    if (!failed) {
        printf("| ListUpcoming | chats of the user | page | calls | mean ms | p50 ms | p99 ms |\n");
        printf("|--------------|-------------------|------|-------|---------|--------|--------|\n");
        printf("| heavy | %d | %d | %d | %.3f | %.3f | %.3f |\n", HEAVY_CHATS, LIGHT_CHATS, calls, heavy[0], heavy[1],
               heavy[2]);
        printf("| light | %d | %d | %d | %.3f | %.3f | %.3f |\n", LIGHT_CHATS, LIGHT_CHATS, calls, light[0], light[1],
               light[2]);
        printf("| heavy | %d | 50 | %d | %.3f | %.3f | %.3f |\n", HEAVY_CHATS, calls, heavy50[0], heavy50[1],
               heavy50[2]);
        printf("| heavy | %d | 5 | %d | %.3f | %.3f | %.3f |\n", HEAVY_CHATS, calls, heavy5[0], heavy5[1], heavy5[2]);
        printf("| light | %d | 5 | %d | %.3f | %.3f | %.3f |\n", LIGHT_CHATS, calls, light5[0], light5[1], light5[2]);
        printf("\nmean time with %d chats / with %d: %.2fx (pages of %d), %.2fx (pages of 5)\n", HEAVY_CHATS,
               LIGHT_CHATS, heavy[0] / light[0], LIGHT_CHATS, heavy5[0] / light5[0]);
        /* The median as well: on shared cores a few calls delayed by others' work (p99 of several
         * ms against a p50 of 0.2) move a mean of calls this short more than the list does. */
        printf("median time with %d chats / with %d: %.2fx (pages of %d), %.2fx (pages of 5)\n", HEAVY_CHATS,
               LIGHT_CHATS, heavy[1] / light[1], LIGHT_CHATS, heavy5[1] / light5[1]);
        failed = bench_scheduler(stack.app, chats) != 0;
    }
    fflush(stdout);
    if (c)
        lagoon_close(c);
    bench_stats_free(&us);
    bench_stats_free(&us2);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : 1;
}
