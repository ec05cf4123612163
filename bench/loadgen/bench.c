/* lagoon-bench: load generator for a Lagoon server, on the asynchronous client.
 *
 *   lagoon-bench --scenario NAME [--host H] [--port P] [--connections C] [--depth D]
 *                [--threads T] [--duration S | --calls N] [--warmup S] [--rate R]
 *                [--payload BYTES] [--json] [--spin] [--no-decode]
 *                [--sweep START:STEP:MAX [--out FILE]] [--data DIR | --tokens FILE]
 *   lagoon-bench --mix NAME:WEIGHT,... [options]
 *   lagoon-bench --list
 *   lagoon-bench seed --data DIR --users N --messages M [--conversations K]   (seed.c)
 *
 * Closed loop (no --rate): C connections, each keeping D calls in flight; a call's latency is
 * measured from its send. Open loop (--rate R): calls are due at fixed intervals, R per second
 * over all threads, spread round-robin over the connections; latency is measured from the time
 * a call was due, not from when it left, so a server that stalls is charged for every call that
 * waited behind the stall (no coordinated omission). Calls that were due but never sent by the
 * end (the generator ran out of slots) are reported as "not sent": the offered rate was not
 * reached.
 *
 * Threads. Each thread has its own event_base and its share of the connections; statistics are
 * per thread and merged at the end, so threads share nothing while measuring. On a 2-core
 * machine running lagoond too, 2 threads drive it hardest (docs/PERFORMANCE.md).
 *
 * The sweep (--sweep) runs the open loop at each rate in turn, writes one line per step to
 * --out for sweep.gp, and stops at the first step that misses its rate by more than 5 % or whose
 * p99 passes 100 ms.
 *
 * Every run stops by itself: after warm-up + duration (plus at most BENCH_DRAIN_MS for answers
 * in flight), or after N calls, bounded by BENCH_MAX_RUN_S.
 *
 * Mixes (the `mixed` scenario, or --mix): each call picks its kind at random by weight; the
 * report gives the whole and then every kind apart (latency, throughput, errors), so that a
 * slow kind (login) and the fast ones beside it can be read from one run.
 *
 * Scenarios that act as users read the tokens of a database seeded by `lagoon-bench seed`
 * (--data DIR, or --tokens FILE).
 *
 * Exit status: 0 done; 1 the run failed (cannot connect, every connection lost); 2 usage.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "hist.h"
#include "lagoon_async.h"
#include "scenario.h"
#include "seed.h"
#include "wire.h"

#define BENCH_EXIT_FAILED 1
#define BENCH_EXIT_USAGE 2

#define BENCH_DRAIN_MS 5000            /* after the end, time answers in flight get */
#define BENCH_MAX_RUN_S 600.0          /* hard bound on one run, whatever the options */
#define BENCH_MAX_CONNECTIONS 20000u   /* below the usual fd limit; lagoond's default cap */
#define BENCH_MAX_DEPTH 1024u          /* the server's default max_concurrent_calls */
#define BENCH_MAX_THREADS 64u
#define BENCH_OPEN_SLOTS 4096u         /* open loop: calls in flight per thread, at most */
#define BENCH_SWEEP_MAX_STEPS 200u
/* A sweep step is saturated when it reaches less than this share of the offered rate, or when
 * more than (1 - this) of the due calls failed or were never sent. */
#define BENCH_SATURATED 0.95
/* ... or when its p99 passes this: the queue is growing, not the throughput. */
#define BENCH_SWEEP_MAX_P99_US 100000.0

typedef struct bench_opts {
    char host[64];
    uint16_t port;
    const char *cacert;   /* --cacert: TLS, the server's certificate checked against this CA file */
    const char *name;     /* the scenario's name, or the --mix spec */
    bench_mix mix;        /* the kinds of call and their weights (one kind for most scenarios) */
    bench_params params;
    unsigned connections; /* over all threads */
    unsigned depth;       /* closed loop: calls in flight per connection */
    unsigned threads;
    double duration_s;    /* measured time; ignored with calls */
    uint64_t calls;       /* measured calls, over all threads; 0 = use duration_s */
    double warmup_s;
    double rate;          /* open loop: calls per second over all threads; 0 = closed loop */
    int json;
    int spin;             /* --spin: poll without sleeping (see usage) */
    int no_decode;        /* --no-decode: response bodies are not decoded (see usage) */
    int sweep;            /* --sweep given */
    double sweep_start, sweep_step, sweep_max;
    const char *sweep_out;
} bench_opts;

typedef struct bthread bthread;

typedef struct bconn {
    lagoon_async *c;
    unsigned in_flight; /* calls of ours not yet answered */
} bconn;

/* One call in flight: where its answer goes and when it started. */
typedef struct bslot {
    bthread *t;
    bconn *conn;
    uint64_t start_ns;  /* closed loop: sent; open loop: due */
    int measured;       /* started inside the measured window */
    unsigned kind;      /* index into the mix of the call in flight */
    struct bslot *next; /* free list (open loop) */
} bslot;

/* What one thread measured; merged over threads for the report. */
typedef struct bstats {
    hist lat;                                 /* every answered measured call, any status */
    hist lag;  /* open loop: how late each measured call left after its due time (the generator's own delay) */
    uint64_t status[LAGOON_STATUS_MAX + 1];   /* answered measured calls by status */
    uint64_t not_sent;   /* open loop: due inside the window but never sent (no free slot) */
    uint64_t send_failed;                     /* the client refused the call (connection broken) */
    uint64_t unfinished; /* measured calls still unanswered when the drain ended */
    uint64_t bad;        /* answered OK but not with what the scenario expected (BAD_ANSWER) */
    double window_s;     /* measured time: duration, or first to last answer with --calls */
    /* Per kind of a mix (index as in bench_mix): latency of every answered measured call, and
     * its OK and other answers. */
    hist kind_lat[BENCH_MIX_MAX];
    uint64_t kind_ok[BENCH_MIX_MAX], kind_err[BENCH_MIX_MAX];
} bstats;

struct bthread {
    const bench_opts *o;
    unsigned index;
    struct event_base *base;
    struct event *timer; /* end of the run, then end of the drain */
    struct event *tick;  /* open loop: next call due */
    bconn *conns;
    unsigned nconns;
    bslot *slots;
    unsigned nslots;
    bslot *free_slots;
    /* Where every answer of this thread is decoded. One buffer serves all calls in flight: the
     * client decodes a response into it just before that call's done callback, on this thread,
     * so two decodes never overlap, and the buffer outlives every call as the API requires.
     * A buffer per call (an EchoResponse is 16 KiB) would spread 13 MB of decodes over the
     * cache at 50 x 16 calls and make the generator, not the server, the bottleneck. */
    void *resp;
    void *req[BENCH_MIX_MAX]; /* each kind's request scratch */
    bench_ctx ctx;       /* what scenarios keep per thread: random state, calls issued */
    unsigned rr;         /* next connection, round-robin */
    uint64_t outstanding;
    uint64_t quota;      /* with --calls: this thread's share */
    uint64_t measured_issued;
    uint64_t t0_ns;      /* start of the measured window */
    uint64_t t_end_ns;   /* end of the window; UINT64_MAX with --calls until the quota is met */
    uint64_t last_done_ns;
    double interval_ns;  /* open loop: between due times */
    uint64_t k;          /* open loop: index of the next due call */
    int starved;         /* open loop: a due call waits for a free slot */
    uint64_t start_ns;
    int stopping;        /* no new calls */
    int draining;        /* the drain timer is armed */
    int exit;            /* the loop should return (for --spin, which polls) */
    bstats st;
    char err[320];
    int failed;
};

static pthread_barrier_t start_barrier;

static void call_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg);
static void tick_cb(evutil_socket_t fd, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timeval ns_tv(uint64_t ns)
{
    struct timeval tv = {(time_t)(ns / 1000000000u), (suseconds_t)((ns % 1000000000u) / 1000u)};
    return tv;
}

static void stats_init(bstats *s)
{
    memset(s, 0, sizeof(*s));
    hist_init(&s->lat);
    hist_init(&s->lag);
    for (size_t k = 0; k < BENCH_MIX_MAX; k++)
        hist_init(&s->kind_lat[k]);
}

static void stats_merge(bstats *dst, const bstats *src)
{
    hist_merge(&dst->lat, &src->lat);
    hist_merge(&dst->lag, &src->lag);
    for (int i = 0; i <= LAGOON_STATUS_MAX; i++)
        dst->status[i] += src->status[i];
    dst->not_sent += src->not_sent;
    dst->send_failed += src->send_failed;
    dst->unfinished += src->unfinished;
    dst->bad += src->bad;
    for (size_t k = 0; k < BENCH_MIX_MAX; k++) {
        if (src->kind_lat[k].total)
            hist_merge(&dst->kind_lat[k], &src->kind_lat[k]);
        dst->kind_ok[k] += src->kind_ok[k];
        dst->kind_err[k] += src->kind_err[k];
    }
    if (src->window_s > dst->window_s)
        dst->window_s = src->window_s;
}

/* ---- the event loop of one thread ------------------------------------------------------------- */

static int thread_done(const bthread *t)
{
    return t->stopping && t->outstanding == 0;
}

static void thread_exit(bthread *t)
{
    t->exit = 1;
    event_base_loopexit(t->base, NULL);
}

static void thread_maybe_exit(bthread *t)
{
    if (thread_done(t))
        thread_exit(t);
}

/* No more calls: closed loop stops re-issuing, open loop counts what it still owed. */
static void thread_stop(bthread *t, uint64_t now)
{
    if (t->stopping)
        return;
    t->stopping = 1;
    if (t->quota == 0) /* cut short by a failure: only the time that was measured */
        t->st.window_s = now > t->t0_ns ? (double)((now < t->t_end_ns ? now : t->t_end_ns) - t->t0_ns) / 1e9 : 0;
    else
        t->st.window_s = (double)(t->last_done_ns > t->t0_ns ? t->last_done_ns - t->t0_ns : 0) / 1e9;
    if (t->o->rate > 0 && t->quota == 0) {
        /* Calls due inside the window that never left: the offered rate was not met. */
        uint64_t end = t->t_end_ns < now ? t->t_end_ns : now;
        double k_end = ceil((double)(end - t->start_ns) / t->interval_ns);  /* first due at or after end */
        double k_t0 = ceil((double)(t->t0_ns - t->start_ns) / t->interval_ns); /* first measured */
        double k_from = (double)t->k > k_t0 ? (double)t->k : k_t0;
        if (k_end > k_from)
            t->st.not_sent += (uint64_t)(k_end - k_from);
    }
    if (t->tick)
        event_del(t->tick);
    if (!thread_done(t)) {
        t->draining = 1;
        struct timeval tv = ns_tv((uint64_t)BENCH_DRAIN_MS * 1000000u);
        evtimer_add(t->timer, &tv);
    }
    thread_maybe_exit(t);
}

/* The next connection that still takes calls, round-robin; NULL if none does. */
static bconn *next_conn(bthread *t)
{
    for (unsigned i = 0; i < t->nconns; i++) {
        bconn *bc = &t->conns[t->rr++ % t->nconns];
        if (!lagoon_async_broken(bc->c))
            return bc;
    }
    return NULL;
}

/* Sends one call on bc from slot s, started (or due) at start. 0, or -1 if it could not. */
static int issue(bthread *t, bconn *bc, bslot *s, uint64_t start)
{
    s->conn = bc;
    s->start_ns = start;
    s->measured = start >= t->t0_ns;
    if (t->quota && s->measured) {
        if (t->measured_issued >= t->quota)
            return -1;
        t->measured_issued++;
    }
    size_t k = bench_mix_pick(&t->o->mix, &t->ctx);
    s->kind = (unsigned)k;
    t->ctx.seq++;
    int st = t->o->mix.kind[k]->issue(bc->c, &t->ctx, t->req[k], t->resp, call_done, s);
    if (st != LAGOON_OK) {
        if (s->measured)
            t->st.send_failed++;
        return -1;
    }
    bc->in_flight++;
    t->outstanding++;
    return 0;
}

/* Open loop: sends every call that is due now, while slots last. */
static void pump(bthread *t)
{
    uint64_t now = now_ns();
    while (!t->stopping) {
        uint64_t due = t->start_ns + (uint64_t)((double)t->k * t->interval_ns);
        if (due > now) {
            struct timeval tv = ns_tv(due - now);
            evtimer_add(t->tick, &tv);
            return;
        }
        if (due >= t->t_end_ns || (t->quota && t->measured_issued >= t->quota)) {
            thread_stop(t, now);
            return;
        }
        bslot *s = t->free_slots;
        t->starved = s == NULL;
        if (s == NULL)
            return; /* a call's answer frees a slot and calls pump again */
        bconn *bc = next_conn(t);
        if (bc == NULL) {
            snprintf(t->err, sizeof(t->err), "every connection was lost");
            t->failed = 1;
            thread_stop(t, now);
            return;
        }
        t->free_slots = s->next;
        t->k++;
        if (due >= t->t0_ns)
            hist_record(&t->st.lag, now - due);
        if (issue(t, bc, s, due) != 0) {
            s->next = t->free_slots;
            t->free_slots = s;
        }
    }
}

static void call_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    (void)meta;
    bslot *s = arg;
    bthread *t = s->t;
    uint64_t now = now_ns();
    s->conn->in_flight--;
    t->outstanding--;
    const bench_scenario *kind = t->o->mix.kind[s->kind];
    /* Check the answer and free what decoding allocated, measured or not. */
    int bad = status == LAGOON_OK && t->resp && kind->finish && kind->finish(&t->o->params, t->resp) != 0;
    if (s->measured && now <= t->t_end_ns) {
        uint64_t ns = now - s->start_ns;
        hist_record(&t->st.lat, ns);
        hist_record(&t->st.kind_lat[s->kind], ns);
        if (bad)
            t->st.bad++;
        else
            t->st.status[status >= 0 && status <= LAGOON_STATUS_MAX ? status : LAGOON_UNKNOWN]++;
        if (status == LAGOON_OK && !bad)
            t->st.kind_ok[s->kind]++;
        else
            t->st.kind_err[s->kind]++;
        t->last_done_ns = now;
    }
    if (t->o->rate > 0) {
        s->next = t->free_slots;
        t->free_slots = s;
        if (t->starved) /* otherwise the tick is armed for the next due call */
            pump(t);
    } else if (!t->stopping) {
        if (now >= t->t_end_ns) {
            thread_stop(t, now);
        } else if (issue(t, s->conn, s, now) != 0 && t->outstanding == 0) {
            /* The quota is met, or every connection refused its next call. */
            if (!(t->quota && t->measured_issued >= t->quota)) {
                snprintf(t->err, sizeof(t->err), "every connection was lost");
                t->failed = 1;
            }
            thread_stop(t, now);
        }
    }
    thread_maybe_exit(t);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bthread *t = arg;
    if (!t->stopping) {
        thread_stop(t, now_ns());
        return;
    }
    /* The drain is over: what is still in flight is counted, and dropped with the connections. */
    t->st.unfinished += t->outstanding;
    thread_exit(t);
}

static void thread_free(bthread *t)
{
    for (unsigned i = 0; i < t->nconns; i++)
        lagoon_async_free(t->conns[i].c);
    free(t->conns);
    free(t->slots);
    free(t->resp);
    for (size_t k = 0; k < BENCH_MIX_MAX; k++)
        free(t->req[k]);
    if (t->tick)
        event_free(t->tick);
    if (t->timer)
        event_free(t->timer);
    if (t->base)
        event_base_free(t->base);
}

static int thread_setup(bthread *t)
{
    const bench_opts *o = t->o;
    struct event_config *cfg = event_config_new();
    if (cfg == NULL)
        return -1;
    /* Open-loop due times need better than the millisecond of epoll's timeout. */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    t->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    t->timer = t->base ? evtimer_new(t->base, timer_cb, t) : NULL;
    t->tick = t->base ? evtimer_new(t->base, tick_cb, t) : NULL;
    t->conns = calloc(t->nconns, sizeof(*t->conns));
    if (t->timer == NULL || t->tick == NULL || t->conns == NULL) {
        snprintf(t->err, sizeof(t->err), "out of memory");
        return -1;
    }
    t->ctx.p = &o->params;
    t->ctx.rng = 0x9E3779B97F4A7C15ull * (t->index + 1) ^ (uint64_t)now_ns();
    if (t->ctx.rng == 0)
        t->ctx.rng = 1;
    size_t resp_size = 0; /* one buffer for any kind's response */
    for (size_t k = 0; k < o->mix.n; k++) {
        const bench_scenario *sc = o->mix.kind[k];
        t->req[k] = calloc(1, sc->req_size ? sc->req_size : 1);
        if (t->req[k] == NULL) {
            snprintf(t->err, sizeof(t->err), "out of memory");
            return -1;
        }
        if (sc->prepare(&o->params, t->req[k], t->err, sizeof(t->err)) != 0)
            return -1;
        if (sc->resp_size > resp_size)
            resp_size = sc->resp_size;
    }
    t->nslots = o->rate > 0 ? BENCH_OPEN_SLOTS : t->nconns * o->depth;
    t->slots = calloc(t->nslots, sizeof(*t->slots));
    t->resp = resp_size && !o->no_decode ? calloc(1, resp_size) : NULL;
    if (t->slots == NULL || (resp_size && !o->no_decode && t->resp == NULL)) {
        snprintf(t->err, sizeof(t->err), "out of memory for %u call slots", t->nslots);
        return -1;
    }
    for (unsigned i = 0; i < t->nslots; i++) {
        t->slots[i].t = t;
        t->slots[i].next = i + 1 < t->nslots ? &t->slots[i + 1] : NULL;
    }
    t->free_slots = t->nslots ? &t->slots[0] : NULL;
    for (unsigned i = 0; i < t->nconns; i++) {
        char err[256];
        lagoon_async_options ao = {0};
        ao.tls = o->cacert != NULL;
        ao.tls_ca_file = o->cacert;
        if (lagoon_async_connect(t->base, o->host, o->port, &ao, &t->conns[i].c, err, sizeof(err)) != LAGOON_OK) {
            snprintf(t->err, sizeof(t->err), "connection %u: %.256s", i, err);
            return -1;
        }
    }
    return 0;
}

static void *thread_main(void *arg)
{
    bthread *t = arg;
    const bench_opts *o = t->o;
    stats_init(&t->st);
    int ok = thread_setup(t) == 0;
    if (!ok)
        t->failed = 1;
    pthread_barrier_wait(&start_barrier);
    if (!ok)
        return NULL;

    t->start_ns = now_ns();
    t->t0_ns = t->start_ns + (uint64_t)(o->warmup_s * 1e9);
    t->t_end_ns = o->calls ? UINT64_MAX : t->t0_ns + (uint64_t)(o->duration_s * 1e9);
    double limit_s = o->calls ? BENCH_MAX_RUN_S : o->warmup_s + o->duration_s;
    struct timeval tv = ns_tv((uint64_t)(limit_s * 1e9));
    evtimer_add(t->timer, &tv);
    if (o->rate > 0) {
        t->interval_ns = 1e9 * (double)o->threads / o->rate;
        pump(t);
    } else {
        for (unsigned d = 0; d < o->depth; d++)
            for (unsigned i = 0; i < t->nconns; i++)
                if (issue(t, &t->conns[i], &t->slots[d * t->nconns + i], t->start_ns) != 0)
                    break;
        if (t->outstanding == 0) {
            snprintf(t->err, sizeof(t->err), "no call could be sent");
            t->failed = 1;
            return NULL;
        }
    }
    if (o->spin) {
        /* Never sleep: a sleeping thread pays the machine's wake-up latency on every call. */
        while (!t->exit && event_base_loop(t->base, EVLOOP_NONBLOCK) >= 0)
            ;
    } else {
        event_base_dispatch(t->base);
    }
    if (!t->stopping) /* the loop ended on its own: nothing left to wait for */
        thread_stop(t, now_ns());
    return NULL;
}

/* ---- one run: threads, then merged statistics ------------------------------------------------- */

static int run_once(const bench_opts *o, bstats *out, char *err, size_t errlen)
{
    bthread *ts = calloc(o->threads, sizeof(*ts));
    pthread_t *ids = calloc(o->threads, sizeof(*ids));
    if (ts == NULL || ids == NULL) {
        free(ts);
        free(ids);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_barrier_init(&start_barrier, NULL, o->threads);
    unsigned started = 0;
    for (unsigned i = 0; i < o->threads; i++) {
        ts[i].o = o;
        ts[i].index = i;
        ts[i].nconns = o->connections / o->threads + (i < o->connections % o->threads ? 1 : 0);
        if (o->calls)
            ts[i].quota = o->calls / o->threads + (i < o->calls % o->threads ? 1 : 0);
    }
    for (unsigned i = 0; i < o->threads; i++) {
        if (pthread_create(&ids[i], NULL, thread_main, &ts[i]) != 0)
            break;
        started++;
    }
    int rc = 0;
    if (started < o->threads) {
        /* The barrier would never open: this is fatal before any measurement. */
        fprintf(stderr, "lagoon-bench: cannot start %u threads\n", o->threads);
        exit(BENCH_EXIT_FAILED);
    }
    stats_init(out);
    for (unsigned i = 0; i < o->threads; i++) {
        pthread_join(ids[i], NULL);
        if (ts[i].failed && rc == 0) {
            snprintf(err, errlen, "thread %u: %.300s", i, ts[i].err);
            rc = -1;
        }
        stats_merge(out, &ts[i].st);
        thread_free(&ts[i]);
    }
    pthread_barrier_destroy(&start_barrier);
    free(ts);
    free(ids);
    return rc;
}

/* ---- reports ---------------------------------------------------------------------------------- */

static const double quantiles[] = {0.5, 0.9, 0.99, 0.999};
static const char *const quantile_names[] = {"p50", "p90", "p99", "p99.9"};
#define NQUANTILES (sizeof(quantiles) / sizeof(quantiles[0]))

static uint64_t stats_ok(const bstats *s) { return s->status[LAGOON_OK]; }

static uint64_t stats_errors(const bstats *s)
{
    uint64_t n = s->send_failed + s->unfinished + s->bad;
    for (int i = 1; i <= LAGOON_STATUS_MAX; i++)
        n += s->status[i];
    return n;
}

static double stats_throughput(const bstats *s)
{
    return s->window_s > 0 ? (double)stats_ok(s) / s->window_s : 0.0;
}

static double us(uint64_t ns) { return (double)ns / 1000.0; }

static void mode_text(const bench_opts *o, char *buf, size_t len)
{
    if (o->rate > 0)
        snprintf(buf, len, "open loop at %.0f calls/s, %u connections", o->rate, o->connections);
    else
        snprintf(buf, len, "closed loop, %u connections x %u in flight", o->connections, o->depth);
}

static void report_text(const bench_opts *o, const bstats *s)
{
    char mode[128];
    mode_text(o, mode, sizeof(mode));
    printf("lagoon-bench %s: %s, %u thread%s, ", o->name, mode, o->threads, o->threads == 1 ? "" : "s");
    if (o->calls)
        printf("%llu calls", (unsigned long long)o->calls);
    else
        printf("%.1f s", o->duration_s);
    printf(" after %.1f s warm-up%s%s\n", o->warmup_s, o->no_decode ? ", bodies not decoded" : "",
           o->spin ? ", spinning" : "");
    printf("  calls        %llu ok, %llu errors in %.2f s\n", (unsigned long long)stats_ok(s),
           (unsigned long long)stats_errors(s), s->window_s);
    printf("  throughput   %.0f calls/s\n", stats_throughput(s));
    printf("  latency us  ");
    for (size_t i = 0; i < NQUANTILES; i++)
        printf(" %s %.1f ", quantile_names[i], us(hist_quantile(&s->lat, quantiles[i])));
    printf(" max %.1f  mean %.1f\n", us(s->lat.max_ns), hist_mean(&s->lat) / 1000.0);
    if (o->rate > 0)
        printf("  send lag us  p50 %.1f  p99 %.1f  max %.1f  (due time to send: the generator's share)\n",
               us(hist_quantile(&s->lag, 0.5)), us(hist_quantile(&s->lag, 0.99)), us(s->lag.max_ns));
    if (stats_errors(s) || s->not_sent) {
        printf("  errors      ");
        for (int i = 1; i <= LAGOON_STATUS_MAX; i++)
            if (s->status[i])
                printf(" %s %llu", lagoon_status_name(i), (unsigned long long)s->status[i]);
        if (s->bad)
            printf(" BAD_ANSWER %llu", (unsigned long long)s->bad);
        if (s->send_failed)
            printf(" client-refused %llu", (unsigned long long)s->send_failed);
        if (s->unfinished)
            printf(" unanswered %llu", (unsigned long long)s->unfinished);
        if (s->not_sent)
            printf(" (not sent, offered rate not reached: %llu)", (unsigned long long)s->not_sent);
        printf("\n");
    }
    if (o->mix.n > 1) {
        printf("  by kind       share    ok/s   errors     p50 us     p90 us     p99 us   p99.9 us     max us\n");
        for (size_t k = 0; k < o->mix.n; k++) {
            const hist *h = &s->kind_lat[k];
            printf("  %-13s %4.1f %% %7.0f %8llu", o->mix.kind[k]->name,
                   s->lat.total ? 100.0 * (double)h->total / (double)s->lat.total : 0.0,
                   s->window_s > 0 ? (double)s->kind_ok[k] / s->window_s : 0.0, (unsigned long long)s->kind_err[k]);
            for (size_t i = 0; i < NQUANTILES; i++)
                printf(" %10.1f", us(hist_quantile(h, quantiles[i])));
            printf(" %10.1f\n", us(h->max_ns));
        }
    }
}

static void report_json(const bench_opts *o, const bstats *s)
{
    printf("{\"scenario\":\"%s\",\"mode\":\"%s\",\"connections\":%u,\"depth\":%u,\"threads\":%u,"
           "\"rate\":%.0f,\"payload\":%u,\"decode\":%s,\"spin\":%s,\"warmup_s\":%.3f,\"window_s\":%.3f,\"ok\":%llu,\"errors\":%llu,"
           "\"throughput\":%.1f,\"latency_us\":{",
           o->name, o->rate > 0 ? "open" : "closed", o->connections, o->rate > 0 ? 0 : o->depth, o->threads,
           o->rate, o->params.payload, o->no_decode ? "false" : "true", o->spin ? "true" : "false", o->warmup_s, s->window_s, (unsigned long long)stats_ok(s),
           (unsigned long long)stats_errors(s), stats_throughput(s));
    for (size_t i = 0; i < NQUANTILES; i++)
        printf("\"%s\":%.1f,", quantile_names[i], us(hist_quantile(&s->lat, quantiles[i])));
    printf("\"max\":%.1f,\"mean\":%.1f},", us(s->lat.max_ns), hist_mean(&s->lat) / 1000.0);
    if (o->rate > 0)
        printf("\"send_lag_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f},", us(hist_quantile(&s->lag, 0.5)),
               us(hist_quantile(&s->lag, 0.99)), us(s->lag.max_ns));
    printf("\"errors_by_status\":{");
    const char *sep = "";
    for (int i = 1; i <= LAGOON_STATUS_MAX; i++) {
        if (s->status[i]) {
            printf("%s\"%s\":%llu", sep, lagoon_status_name(i), (unsigned long long)s->status[i]);
            sep = ",";
        }
    }
    if (s->bad) {
        printf("%s\"BAD_ANSWER\":%llu", sep, (unsigned long long)s->bad);
        sep = ",";
    }
    if (s->send_failed) {
        printf("%s\"CLIENT_REFUSED\":%llu", sep, (unsigned long long)s->send_failed);
        sep = ",";
    }
    if (s->unfinished)
        printf("%s\"UNANSWERED\":%llu", sep, (unsigned long long)s->unfinished);
    printf("},\"not_sent\":%llu,\"kinds\":{", (unsigned long long)s->not_sent);
    for (size_t k = 0; k < o->mix.n; k++) {
        const hist *h = &s->kind_lat[k];
        printf("%s\"%s\":{\"weight\":%u,\"ok\":%llu,\"errors\":%llu,\"throughput\":%.1f,\"latency_us\":{", k ? "," : "",
               o->mix.kind[k]->name, o->mix.weight[k], (unsigned long long)s->kind_ok[k],
               (unsigned long long)s->kind_err[k], s->window_s > 0 ? (double)s->kind_ok[k] / s->window_s : 0.0);
        for (size_t i = 0; i < NQUANTILES; i++)
            printf("\"%s\":%.1f,", quantile_names[i], us(hist_quantile(h, quantiles[i])));
        printf("\"max\":%.1f,\"mean\":%.1f}}", us(h->max_ns), hist_mean(h) / 1000.0);
    }
    printf("}}\n");
}

/* ---- sweep: open-loop rate steps up to saturation --------------------------------------------- */

static int sweep(bench_opts *o)
{
    FILE *f = fopen(o->sweep_out, "w");
    if (f == NULL) {
        fprintf(stderr, "lagoon-bench: %s: %s\n", o->sweep_out, strerror(errno));
        return BENCH_EXIT_FAILED;
    }
    fprintf(f, "# lagoon-bench sweep: scenario %s, %u connections, %u threads, %.1f s per step\n",
            o->name, o->connections, o->threads, o->duration_s);
    fprintf(f, "# offered_per_s achieved_per_s p50_us p90_us p99_us p999_us max_us errors not_sent\n");
    if (!o->json)
        printf("%12s %12s %9s %9s %9s %9s %9s %8s %9s\n", "offered/s", "achieved/s", "p50 us", "p90 us",
               "p99 us", "p99.9 us", "max us", "errors", "not sent");
    int rc = 0;
    unsigned steps = 0;
    for (double r = o->sweep_start; r <= o->sweep_max + 1e-9 && steps < BENCH_SWEEP_MAX_STEPS;
         r += o->sweep_step, steps++) {
        o->rate = r;
        bstats s;
        char err[400];
        if (run_once(o, &s, err, sizeof(err)) != 0) {
            fprintf(stderr, "lagoon-bench: rate %.0f: %s\n", r, err);
            rc = BENCH_EXIT_FAILED;
            break;
        }
        double got = stats_throughput(&s);
        double p[NQUANTILES];
        for (size_t i = 0; i < NQUANTILES; i++)
            p[i] = us(hist_quantile(&s.lat, quantiles[i]));
        fprintf(f, "%.0f %.1f %.1f %.1f %.1f %.1f %.1f %llu %llu\n", r, got, p[0], p[1], p[2], p[3],
                us(s.lat.max_ns), (unsigned long long)stats_errors(&s), (unsigned long long)s.not_sent);
        fflush(f);
        if (o->json)
            report_json(o, &s);
        else
            printf("%12.0f %12.0f %9.1f %9.1f %9.1f %9.1f %9.1f %8llu %9llu\n", r, got, p[0], p[1], p[2], p[3],
                   us(s.lat.max_ns), (unsigned long long)stats_errors(&s), (unsigned long long)s.not_sent);
        fflush(stdout);
        double due = r * o->duration_s;
        if (got < BENCH_SATURATED * r || p[2] > BENCH_SWEEP_MAX_P99_US ||
            (double)(stats_errors(&s) + s.not_sent) > (1.0 - BENCH_SATURATED) * due) {
            if (!o->json)
                printf("saturated at an offered %.0f calls/s (achieved %.0f)\n", r, got);
            break;
        }
    }
    fclose(f);
    if (!o->json)
        printf("data: %s\n", o->sweep_out);
    return rc;
}

/* ---- command line ----------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lagoon-bench --scenario NAME [options]\n"
            "       lagoon-bench --mix NAME:WEIGHT,... [options]\n"
            "       lagoon-bench --list\n"
            "       lagoon-bench seed --data DIR --users N --messages M [--conversations K] (seed --help)\n\n"
            "  --host H             server address (default 127.0.0.1)\n"
            "  --cacert FILE        TLS (a server with --tls-cert), its certificate checked against this CA\n"
            "  --port P             server port (default 7420)\n"
            "  --scenario NAME      what to call (--list shows them)\n"
            "  --mix SPEC           a weighted mix of scenarios instead, e.g. login:10,get_user:90;\n"
            "                       reported as a whole and per kind\n"
            "  --data DIR           a database seeded by lagoon-bench seed: its users' tokens\n"
            "                       (DIR/%s), for the scenarios that act as users\n"
            "  --tokens FILE        the tokens file itself (same format)\n"
            "  --connections C      connections over all threads (default 50, at most %u)\n"
            "  --depth D            closed loop: calls in flight per connection (default 1, at most %u)\n"
            "  --threads T          event-loop threads, each with its share of connections (default 1;\n"
            "                       2 on a 2-core machine: see docs/PERFORMANCE.md)\n"
            "  --duration S         measured seconds (default 10)\n"
            "  --calls N            measure N calls instead of a duration\n"
            "  --warmup S           seconds before measuring (default 2)\n"
            "  --rate R             open loop: R calls/s over all connections; latency counts from\n"
            "                       each call's due time\n"
            "  --payload BYTES      echo payload size (default 16)\n"
            "  --json               one JSON object per run instead of the table\n"
            "  --no-decode          do not decode response bodies (frames, statuses and metadata\n"
            "                       still are): takes the client's decoding out of the figures\n"
            "  --spin               poll the sockets and timers without sleeping: removes the\n"
            "                       wake-up latency of the generator from open-loop figures, at\n"
            "                       the cost of one busy core per thread\n"
            "  --sweep A:STEP:MAX   open-loop rates A, A+STEP, ... up to MAX or saturation\n"
            "  --out FILE           sweep data file (default sweep.dat), for sweep.gp\n",
            BENCH_SEED_TOKENS_FILE, BENCH_MAX_CONNECTIONS, BENCH_MAX_DEPTH);
}

static void list_scenarios(void)
{
    for (size_t i = 0; i < bench_nscenarios; i++)
        printf("  %-14s %s%s\n", bench_scenarios[i].name, bench_scenarios[i].what,
               bench_scenarios[i].needs_data ? " [--data]" : "");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_uint(const char *s, double lo, double hi, uint64_t *out)
{
    double v;
    if (parse_double(s, lo, hi, &v) != 0 || v != floor(v))
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int bad(const char *flag, const char *val, const char *want)
{
    fprintf(stderr, "lagoon-bench: %s %s: expected %s\n", flag, val ? val : "(missing)", want);
    return BENCH_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    bench_opts o;
    memset(&o, 0, sizeof(o));
    snprintf(o.host, sizeof(o.host), "127.0.0.1");
    o.port = 7420;
    o.connections = 50;
    o.depth = 1;
    o.threads = 1;
    o.duration_s = 10;
    o.warmup_s = 2;
    o.params.payload = 16;
    o.sweep_out = "sweep.dat";
    const char *scenario = NULL, *mix = NULL, *data_dir = NULL, *tokens = NULL;

    if (argc > 1 && strcmp(argv[1], "seed") == 0)
        return bench_seed_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        char *flag = argv[i], *val = NULL;
        char *eq = strchr(flag, '=');
        if (strncmp(flag, "--", 2) == 0 && eq) {
            *eq = '\0';
            val = eq + 1;
        }
        int is_bool = strcmp(flag, "--json") == 0 || strcmp(flag, "--spin") == 0 || strcmp(flag, "--no-decode") == 0 || strcmp(flag, "--list") == 0 || strcmp(flag, "--help") == 0 ||
                      strcmp(flag, "-h") == 0;
        if (!is_bool && val == NULL) {
            if (i + 1 >= argc)
                return bad(flag, NULL, "a value");
            val = argv[++i];
        }
        if (val == NULL)
            val = ""; /* a switch: no value */
        uint64_t u;
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            usage(stdout);
            printf("\nscenarios:\n");
            list_scenarios();
            return 0;
        } else if (strcmp(flag, "--list") == 0) {
            list_scenarios();
            return 0;
        } else if (strcmp(flag, "--json") == 0) {
            o.json = 1;
        } else if (strcmp(flag, "--spin") == 0) {
            o.spin = 1;
        } else if (strcmp(flag, "--no-decode") == 0) {
            o.no_decode = 1;
        } else if (strcmp(flag, "--host") == 0) {
            if (strlen(val) >= sizeof(o.host))
                return bad(flag, val, "a shorter address");
            snprintf(o.host, sizeof(o.host), "%s", val);
        } else if (strcmp(flag, "--cacert") == 0) {
            o.cacert = val;
        } else if (strcmp(flag, "--port") == 0) {
            if (parse_uint(val, 1, 65535, &u) != 0)
                return bad(flag, val, "a port 1..65535");
            o.port = (uint16_t)u;
        } else if (strcmp(flag, "--scenario") == 0) {
            scenario = val;
        } else if (strcmp(flag, "--mix") == 0) {
            mix = val;
        } else if (strcmp(flag, "--data") == 0) {
            data_dir = val;
        } else if (strcmp(flag, "--tokens") == 0) {
            tokens = val;
        } else if (strcmp(flag, "--connections") == 0) {
            if (parse_uint(val, 1, BENCH_MAX_CONNECTIONS, &u) != 0)
                return bad(flag, val, "1..20000");
            o.connections = (unsigned)u;
        } else if (strcmp(flag, "--depth") == 0) {
            if (parse_uint(val, 1, BENCH_MAX_DEPTH, &u) != 0)
                return bad(flag, val, "1..1024");
            o.depth = (unsigned)u;
        } else if (strcmp(flag, "--threads") == 0) {
            if (parse_uint(val, 1, BENCH_MAX_THREADS, &u) != 0)
                return bad(flag, val, "1..64");
            o.threads = (unsigned)u;
        } else if (strcmp(flag, "--duration") == 0) {
            if (parse_double(val, 0.01, BENCH_MAX_RUN_S, &o.duration_s) != 0)
                return bad(flag, val, "seconds, 0.01..600");
        } else if (strcmp(flag, "--calls") == 0) {
            if (parse_uint(val, 1, 1e12, &o.calls) != 0)
                return bad(flag, val, "a count");
        } else if (strcmp(flag, "--warmup") == 0) {
            if (parse_double(val, 0, 60, &o.warmup_s) != 0)
                return bad(flag, val, "seconds, 0..60");
        } else if (strcmp(flag, "--rate") == 0) {
            if (parse_double(val, 1, 1e8, &o.rate) != 0)
                return bad(flag, val, "calls per second, 1..1e8");
        } else if (strcmp(flag, "--payload") == 0) {
            if (parse_uint(val, 0, 1 << 24, &u) != 0)
                return bad(flag, val, "a byte count");
            o.params.payload = (uint32_t)u;
        } else if (strcmp(flag, "--sweep") == 0) {
            if (sscanf(val, "%lf:%lf:%lf", &o.sweep_start, &o.sweep_step, &o.sweep_max) != 3 ||
                !(o.sweep_start >= 1) || !(o.sweep_step >= 1) || !(o.sweep_max >= o.sweep_start) ||
                o.sweep_max > 1e8)
                return bad(flag, val, "START:STEP:MAX rates, START and STEP >= 1");
            o.sweep = 1;
        } else if (strcmp(flag, "--out") == 0) {
            o.sweep_out = val;
        } else {
            fprintf(stderr, "lagoon-bench: unknown option %s\n", flag);
            usage(stderr);
            return BENCH_EXIT_USAGE;
        }
    }
    char err[400];
    if ((scenario == NULL) == (mix == NULL)) {
        fprintf(stderr, "lagoon-bench: give --scenario or --mix (one of them)\n");
        usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (scenario) {
        const bench_scenario *sc = bench_scenario_find(scenario);
        if (sc == NULL) {
            fprintf(stderr, "lagoon-bench: unknown scenario %s; there are:\n", scenario);
            list_scenarios();
            return BENCH_EXIT_USAGE;
        }
        o.name = sc->name;
        if (bench_mix_of(sc, &o.mix, err, sizeof(err)) != 0) {
            fprintf(stderr, "lagoon-bench: %s: %s\n", sc->name, err);
            return BENCH_EXIT_USAGE;
        }
    } else {
        o.name = mix;
        if (bench_mix_parse(mix, &o.mix, err, sizeof(err)) != 0) {
            fprintf(stderr, "lagoon-bench: --mix %s: %s\n", mix, err);
            return BENCH_EXIT_USAGE;
        }
    }
    if (o.threads > o.connections)
        o.threads = o.connections;
    if (o.sweep && o.calls)
        return bad("--sweep", "with --calls", "a --duration per step instead");
    if (data_dir && tokens)
        return bad("--tokens", tokens, "either --data or --tokens, not both");

    /* The seeded users, for the scenarios that act as them: read once, shared by all threads. */
    static bench_data data;
    if (data_dir || tokens) {
        char path[1200];
        if (data_dir)
            snprintf(path, sizeof(path), "%s/%s", data_dir, BENCH_SEED_TOKENS_FILE);
        if (bench_data_load(data_dir ? path : tokens, &data, err, sizeof(err)) != 0) {
            fprintf(stderr, "lagoon-bench: %s\n", err);
            return BENCH_EXIT_USAGE;
        }
        o.params.data = &data;
    }

    /* Options the scenarios judge (payload size, seeded data) are checked once, before any
     * connection. */
    for (size_t k = 0; k < o.mix.n; k++) {
        const bench_scenario *sc = o.mix.kind[k];
        void *scratch = calloc(1, sc->req_size ? sc->req_size : 1);
        if (scratch == NULL || sc->prepare(&o.params, scratch, err, sizeof(err)) != 0) {
            fprintf(stderr, "lagoon-bench: %s\n", scratch ? err : "out of memory");
            free(scratch);
            bench_data_free(&data);
            return BENCH_EXIT_USAGE;
        }
        free(scratch);
    }

    if (o.sweep)
        return sweep(&o);
    bstats s = {0}; /* run_once may fail before it fills s */
    int rc = run_once(&o, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "lagoon-bench: %s\n", err);
    if (rc != 0 && s.lat.total == 0)
        return BENCH_EXIT_FAILED; /* nothing was measured: no report */
    if (o.json)
        report_json(&o, &s);
    else
        report_text(&o, &s);
    return rc == 0 ? 0 : BENCH_EXIT_FAILED;
}
