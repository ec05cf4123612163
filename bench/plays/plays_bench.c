/* plays-bench: durable play interactions per second through Plays/Report streams from many
 * simulated players, with the latency of history reads by other users alongside.
 *
 *   plays-bench [--players 1000] [--batch 50] [--window 2] [--seconds 10] [--readers 1]
 *
 * lagoond's stack in process over a fresh store in a temporary directory with durable commits
 * (sync full: an ack means the batch is on disk). Seeded in the store: a public video of 24 h,
 * `players` users with sessions, and 4 reader users with 50 history entries each. Each player
 * is a connection of its own (the async client, all on one event loop): Plays/Start, then one
 * Report stream that sends batches of `batch` PROGRESS interactions, at most `window` of them
 * unacknowledged, the next as soon as an ack comes. Beside them `readers` threads with
 * blocking clients read the readers' histories (Plays/ListHistory, a page of 20) one call at a
 * time. After one second of warm-up, `seconds` are measured: interactions acknowledged as
 * stored per second, the store's commits in that time, and the history reads' mean, p50 and
 * p99. Every loop is bounded; everything it creates is removed. */
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account_tokens.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"

#define PLAYERS_MAX 10000
#define READERS 4          /* users whose histories are read */
#define READER_ENTRIES 50  /* entries in each */
#define WARMUP_S 1
#define STEP_MS 1000u      /* media time between two interactions */
#define VIDEO_S 86400u

typedef struct bench bench;

typedef struct player {
    bench *b;
    lagoon_async *c;
    lagoon_acall *call;
    lagoon_v1_Play play;  /* Start's response */
    uint32_t next_seq;    /* of the next interaction to send */
    uint32_t inflight;    /* batches unacknowledged */
    int64_t last_ms;      /* client time of the last interaction sent */
    int closed, done;
} player;

struct bench {
    struct event_base *base;
    player *p;
    int n, done;
    uint32_t batch, window;
    int measuring, stopping;
    uint64_t stored, stored_measured, acks_measured, errors;
    char first_error[600]; /* status name and the server's message (512 bytes) */
    atomic_int readers_measure, readers_stop;
    store *db;
    uint64_t t0_us, t1_us;     /* the measured window */
    store_counters c0, c1;     /* the store's counters at its ends */
};

typedef struct seed {
    int n;
    uint64_t video, owner;
    uint64_t *ids;                          /* players then readers */
    char (*tokens)[ACCOUNT_TOKEN_CHARS + 1]; /* the same order */
    lagoon_v1_Video *v;
} seed;

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- seeding (not measured) ---------------------------------------------------------------------- */

static int seed_rows(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_Session s = lagoon_v1_Session_init_zero;
    char name[32], email[64];
    int st = LAGOON_OK;
    for (int i = 0; i < sd->n + READERS + 1 && st == LAGOON_OK; i++) {
        memset(&s, 0, sizeof(s));
        snprintf(name, sizeof(name), i < sd->n ? "p%d" : i < sd->n + READERS ? "r%d" : "owner%d", i);
        snprintf(email, sizeof(email), "%s@bench.invalid", name);
        s.role = lagoon_v1_Role_STUDENT;
        s.verified = true;
        char tok[ACCOUNT_TOKEN_CHARS + 1];
        bench_session_tokens(&s, i < sd->n + READERS ? sd->tokens[i] : tok);
        st = bench_seed_user(t, name, email, lagoon_v1_Role_STUDENT, &s, i < sd->n + READERS ? &sd->ids[i] : &sd->owner,
                             err);
    }
    memset(sd->v, 0, sizeof(*sd->v));
    sd->v->owner_id = sd->owner;
    snprintf(sd->v->title, sizeof(sd->v->title), "A long concert");
    snprintf(sd->v->url, sizeof(sd->v->url), "https://www.youtube.com/watch?v=concert");
    sd->v->duration_seconds = VIDEO_S;
    sd->v->is_public = true;
    sd->v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
    sd->v->status = lagoon_v1_Video_Status_READY;
    sd->v->created_at = sd->v->updated_at = 1;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_videos, sd->v, &sd->video, err);
    /* The readers' histories: external videos, one entry each. */
    for (int r = 0; r < READERS && st == LAGOON_OK; r++)
        for (int e = 0; e < READER_ENTRIES && st == LAGOON_OK; e++) {
            lagoon_v1_PlayPosition pos = lagoon_v1_PlayPosition_init_zero;
            pos.user_id = sd->ids[sd->n + r];
            snprintf(pos.external_id, sizeof(pos.external_id), "yt:%d", e);
            pos.position_ms = 60000;
            pos.plays = 1;
            pos.last_played_at = 1000 + e;
            st = store_insert(t, &lagoon_table_play_positions, &pos, NULL, err);
        }
    return st;
}

/* ---- the players ---------------------------------------------------------------------------------- */

static lagoon_v1_ReportRequest batch_msg; /* encoded before each send returns: one buffer for all */

static void fill_batch(player *p)
{
    bench *b = p->b;
    int64_t now = wall_ms();
    if (now < p->last_ms)
        now = p->last_ms;
    memset(&batch_msg, 0, sizeof(batch_msg));
    batch_msg.play_id = p->play.id;
    batch_msg.interactions_count = (pb_size_t)b->batch;
    for (uint32_t i = 0; i < b->batch; i++) {
        lagoon_v1_PlayInteraction *x = &batch_msg.interactions[i];
        x->seq = p->next_seq;
        x->type = p->next_seq == 1 ? lagoon_v1_PlayInteraction_Type_PLAY : lagoon_v1_PlayInteraction_Type_PROGRESS;
        x->position_ms = (p->next_seq - 1) * STEP_MS % (VIDEO_S * 1000u);
        x->client_time_ms = now;
        p->next_seq++;
    }
    p->last_ms = now;
}

static void player_fail(player *p, int status, const lagoon_v1_ResponseMeta *meta)
{
    bench *b = p->b;
    b->errors++;
    if (b->first_error[0] == '\0')
        snprintf(b->first_error, sizeof(b->first_error), "%s: %s", lagoon_status_name(status),
                 meta ? meta->message : "");
}

static void player_end(player *p)
{
    bench *b = p->b;
    if (p->done)
        return;
    p->done = 1;
    if (++b->done == b->n)
        event_base_loopbreak(b->base);
}

/* Sends batches until the window is full, or half-closes once the run is over. */
static void player_fill(player *p)
{
    bench *b = p->b;
    if (b->stopping) {
        if (p->inflight == 0 && !p->closed) {
            p->closed = 1;
            lagoon_async_close_send(p->call);
        }
        return;
    }
    while (p->inflight < b->window) {
        fill_batch(p);
        if (lagoon_async_send(p->call, &batch_msg) != 0) {
            player_fail(p, LAGOON_UNAVAILABLE, NULL);
            return;
        }
        p->inflight++;
    }
}

static void on_ack(lagoon_acall *call, const void *msg, void *arg)
{
    (void)call;
    player *p = arg;
    bench *b = p->b;
    const lagoon_v1_PlayAck *ack = msg;
    if (p->inflight > 0)
        p->inflight--;
    b->stored += ack->stored;
    if (b->measuring) {
        b->stored_measured += ack->stored;
        b->acks_measured++;
    }
    player_fill(p);
}

static void on_report_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    player *p = arg;
    if (status != LAGOON_OK)
        player_fail(p, status, meta);
    player_end(p);
}

static const lagoon_async_handlers report_handlers = {on_ack, on_report_done};

static void on_started(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    player *p = arg;
    if (status != LAGOON_OK) {
        player_fail(p, status, meta);
        player_end(p);
        return;
    }
    p->next_seq = 1;
    fill_batch(p);
    p->call = lagoon_async_Plays_Report(p->c, &batch_msg, &report_handlers, p);
    if (p->call == NULL) {
        player_fail(p, LAGOON_UNAVAILABLE, NULL);
        player_end(p);
        return;
    }
    p->inflight = 1;
    player_fill(p);
}

/* ---- the history readers ------------------------------------------------------------------------- */

typedef struct reader {
    bench *b;
    uint16_t port;
    seed *sd;
    bench_stats us;
    uint64_t failed;
} reader;

static void *read_loop(void *arg)
{
    reader *r = arg;
    lagoon_client *c = NULL;
    if (lagoon_connect("127.0.0.1", r->port, NULL, &c, NULL) != LAGOON_OK)
        return NULL;
    static _Thread_local lagoon_v1_ListHistoryResponse resp;
    lagoon_v1_ListHistoryRequest req = lagoon_v1_ListHistoryRequest_init_zero;
    req.page_size = 20;
    /* Bounded: at most 10 minutes of calls at any rate, or until told to stop. */
    uint64_t t_end = bench_now_us() + 600ull * 1000000;
    for (uint64_t i = 0; !atomic_load(&r->b->readers_stop) && bench_now_us() < t_end; i++) {
        lagoon_set_token(c, r->sd->tokens[r->sd->n + (int)(i % READERS)]);
        uint64_t t0 = bench_now_us();
        int st = lagoon_Plays_ListHistory(c, &req, &resp);
        uint64_t d = bench_now_us() - t0;
        if (st != LAGOON_OK || resp.entries_count != 20)
            r->failed++;
        else if (atomic_load(&r->b->readers_measure))
            bench_stats_add(&r->us, d);
        if (st == LAGOON_OK)
            pb_release(lagoon_v1_ListHistoryResponse_fields, &resp);
    }
    lagoon_close(c);
    return NULL;
}

/* ---- the run ------------------------------------------------------------------------------------- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bench *b = arg;
    if (!b->measuring && !b->stopping) {
        b->measuring = 1;
        atomic_store(&b->readers_measure, 1);
        store_counters_get(b->db, &b->c0);
        b->t0_us = bench_now_us();
        return;
    }
    b->t1_us = bench_now_us();
    store_counters_get(b->db, &b->c1);
    atomic_store(&b->readers_measure, 0);
    b->measuring = 0;
    b->stopping = 1;
    for (int i = 0; i < b->n; i++)
        if (!b->p[i].done && b->p[i].call)
            player_fill(&b->p[i]);
}

static int parse(int argc, char **argv, int *players, uint32_t *batch, uint32_t *window, int *seconds, int *readers)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "--players") == 0 && v >= 1 && v <= PLAYERS_MAX)
            *players = (int)v;
        else if (strcmp(argv[i], "--batch") == 0 && v >= 1 && v <= 100)
            *batch = (uint32_t)v;
        else if (strcmp(argv[i], "--window") == 0 && v >= 1 && v <= 16)
            *window = (uint32_t)v;
        else if (strcmp(argv[i], "--seconds") == 0 && v >= 1 && v <= 600)
            *seconds = (int)v;
        else if (strcmp(argv[i], "--readers") == 0 && v >= 0 && v <= 8)
            *readers = (int)v;
        else
            return -1;
    }
    return argc % 2 == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    int players = 1000, seconds = 10, nreaders = 1;
    uint32_t batch = 50, window = 2;
    if (parse(argc, argv, &players, &batch, &window, &seconds, &nreaders) != 0) {
        fprintf(stderr, "usage: plays-bench [--players 1..%d] [--batch 1..100] [--window 1..16] [--seconds 1..600] "
                        "[--readers 0..8]\n",
                PLAYERS_MAX);
        return 2;
    }
    log_set_level(LOG_WARN);
    bench_stack stack;
    memset(&stack, 0, sizeof(stack));
    app_config acfg = {0};
    acfg.sync = STORE_SYNC_FULL;        /* durable: what is measured */
    acfg.plays.max_events = 10000000;   /* the players report far faster than a person would */
    seed sd = {.n = players};
    sd.ids = calloc((size_t)players + READERS, sizeof(uint64_t));
    sd.tokens = calloc((size_t)players + READERS, sizeof(*sd.tokens));
    sd.v = malloc(sizeof(*sd.v));
    bench b;
    memset(&b, 0, sizeof(b));
    b.n = players;
    b.batch = batch;
    b.window = window;
    b.p = calloc((size_t)players, sizeof(player));
    atomic_init(&b.readers_measure, 0);
    atomic_init(&b.readers_stop, 0);
    reader *rd = calloc((size_t)nreaders + 1, sizeof(reader));
    pthread_t th[8];
    int started = 0, rc = 1;
    store_error serr;
    rpc_config cfg;
    if (sd.ids == NULL || sd.tokens == NULL || sd.v == NULL || b.p == NULL || rd == NULL ||
        bench_stack_open(&stack, "/tmp/lagoon-playsbench-XXXXXX", &acfg) != 0)
        goto out;
    if (store_write(stack.app->db, seed_rows, &sd, &serr) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", serr.message);
        goto out;
    }
    bench_stack_config(&stack, &cfg);
    cfg.max_connections_per_address = (uint32_t)players + 64; /* every player connects from 127.0.0.1 */
    if (bench_stack_serve(&stack, &cfg) != 0)
        goto out;
    uint16_t port = bench_stack_port(&stack);
    b.db = stack.app->db;
    b.base = event_base_new();
    char err[256];
    for (int i = 0; i < players; i++) {
        player *p = &b.p[i];
        p->b = &b;
        if (lagoon_async_connect(b.base, "127.0.0.1", port, NULL, &p->c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "player %d: %s\n", i, err);
            goto out;
        }
        lagoon_async_set_token(p->c, sd.tokens[i]);
        lagoon_v1_StartPlayRequest s = lagoon_v1_StartPlayRequest_init_zero;
        s.video_id = sd.video;
        snprintf(s.session_id, sizeof(s.session_id), "bench-%d", i);
        if (lagoon_async_Plays_Start(p->c, &s, &p->play, on_started, p) != LAGOON_OK)
            goto out;
    }
    for (int i = 0; i < nreaders; i++) {
        rd[i] = (reader){.b = &b, .port = port, .sd = &sd};
        if (bench_stats_init(&rd[i].us, 1u << 20) != 0 || pthread_create(&th[i], NULL, read_loop, &rd[i]) != 0)
            goto out;
        started++;
    }
    struct event *warm = evtimer_new(b.base, on_timer, &b), *stop = evtimer_new(b.base, on_timer, &b);
    struct timeval tw = {WARMUP_S, 0}, ts = {WARMUP_S + seconds, 0}, limit = {WARMUP_S + seconds + 30, 0};
    evtimer_add(warm, &tw);
    evtimer_add(stop, &ts);
    event_base_loopexit(b.base, &limit);
    event_base_dispatch(b.base);
    event_free(warm);
    event_free(stop);
    atomic_store(&b.readers_stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    double secs = (double)(b.t1_us - b.t0_us) / 1e6;
    uint64_t commits = b.c1.batches - b.c0.batches, ops = b.c1.ops_ok - b.c0.ops_ok;
    printf("players %d, batch %u, window %u, %d s measured (%.2f s), sync full\n", players, batch, window, seconds,
           secs);
    printf("durable interactions/s: %.0f (%llu acks, %llu stored in the window; %llu stored in all)\n",
           secs > 0 ? (double)b.stored_measured / secs : 0, (unsigned long long)b.acks_measured,
           (unsigned long long)b.stored_measured, (unsigned long long)b.stored);
    printf("store: %.0f commits/s, %.1f writes per commit\n", secs > 0 ? (double)commits / secs : 0,
           commits ? (double)ops / (double)commits : 0);
    printf("errors: %llu%s%s\n", (unsigned long long)b.errors, b.errors ? ", first: " : "", b.first_error);
    for (int i = 0; i < started; i++) {
        double ms[3];
        size_t n = rd[i].us.n;
        bench_stats_ms(&rd[i].us, ms);
        printf("history reader %d: %zu ListHistory calls (%llu failed), mean %.3f ms, p50 %.3f ms, p99 %.3f ms\n", i, n,
               (unsigned long long)rd[i].failed, ms[0], ms[1], ms[2]);
        bench_stats_free(&rd[i].us);
    }
    started = 0;
    rc = b.errors || b.stored_measured == 0 ? 1 : 0;
out:
    atomic_store(&b.readers_stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < players && b.p; i++)
        if (b.p[i].c)
            lagoon_async_free(b.p[i].c);
    if (b.base)
        event_base_free(b.base);
    free(b.p);
    free(sd.ids);
    free(sd.tokens);
    free(sd.v);
    free(rd);
    if (bench_stack_stop(&stack) != 0)
        rc = 1;
    return rc;
}
