/* realtime-bench: how long after a Send is acknowledged its recipient's subscription has the
 * event, with many subscribers connected.
 *
 *   realtime-bench [--subscribers 1000] [--messages 5000] [--in-flight 8]
 *
 * Seeds `subscribers` users with sessions straight through the store, starts lagoond's stack
 * in this process on an ephemeral port (durable commits), connects one async client per
 * subscriber with Events/Subscribe open, then one sender sends `messages` text messages, round
 * robin over the subscribers, `in-flight` at a time. For each message it records when the Send
 * was issued, acknowledged, and when the recipient's stream delivered it; it reports p50/p99/max
 * of ack->event and send->event. Bounded; removes what it creates.
 *
 *   realtime-bench --topic 1000 [--messages 200] [--interval-ms 20] [--rounds 200]
 *
 * Topic mode. Seeds `topic` users, all members of one large topic, the first two also of a
 * small one. First the store work of a publish: `rounds` publishes alternating between the two
 * topics (no subscriber connected), each timed (store_write, durable) and its changed rows
 * counted from the store's commit announcements; for reference, a few rounds of the same event
 * written to every member's own log, as realtime did before topics. Then every member
 * subscribes, and one publisher thread publishes `messages` events to the large topic, one
 * every `interval-ms`; it reports p50/p99/max over every (event, member) pair of commit->event
 * (store_write returned) and publish->event (store_write called). */
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "accounts.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "events.h"
#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "log.h"

#define MAX_SUBSCRIBERS 5000
#define MAX_MESSAGES 1000000
#define MAX_TOPIC_DELIVERIES 50000000 /* topic mode: messages x members kept for the report */
#define MAX_ROUNDS 100000
#define USER_LOG_ROUNDS 5              /* topic mode: the per-member fan-out, for reference */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- seeding ------------------------------------------------------------------------------------ */

typedef struct seed {
    int n;
    uint64_t *ids;
    char (*tokens)[ACCOUNT_TOKEN_CHARS + 1];
} seed;

static int seed_users(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    for (int i = 0; i < sd->n; i++) {
        char email[64], name[32];
        snprintf(email, sizeof(email), "u%d@bench.invalid", i);
        snprintf(name, sizeof(name), "user%d", i);
        lagoon_v1_Session s = lagoon_v1_Session_init_zero;
        /* Replays regenerate the tokens: they are only read after the commit. */
        bench_session_tokens(&s, sd->tokens[i]);
        s.verified = true; /* the sender writes first */
        int st = bench_seed_user(t, name, email, lagoon_v1_Role_STUDENT, &s, &sd->ids[i], err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

/* ---- the run ------------------------------------------------------------------------------------ */

typedef struct run {
    struct event_base *base;
    int nsubs, nmsgs, in_flight, sent, acked, delivered, subscribed;
    uint64_t *send_at, *ack_at, *event_at; /* by message id (ids start at 1 in a fresh store) */
    uint64_t *user_ids;
    lagoon_async *sender;
    lagoon_v1_SendMessageRequest req;
    lagoon_v1_DirectMessage *resps;
    uint64_t errors;
} run;

typedef struct sub {
    run *r;
    lagoon_async *c;
} sub;

static void on_event(lagoon_acall *call, const void *msg, void *arg)
{
    (void)call;
    sub *s = arg;
    run *r = s->r;
    const lagoon_v1_Event *ev = msg;
    if (ev->which_payload == lagoon_v1_Event_subscribed_tag) {
        if (++r->subscribed == r->nsubs)
            event_base_loopbreak(r->base);
        return;
    }
    if (ev->which_payload != lagoon_v1_Event_message_tag)
        return;
    uint64_t id = ev->payload.message.message.id;
    if (id > 0 && id <= (uint64_t)r->nmsgs && r->event_at[id] == 0) {
        r->event_at[id] = bench_now_us();
        if (++r->delivered == r->nmsgs)
            event_base_loopbreak(r->base);
    }
}

static void on_sub_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    (void)arg;
    if (status != LAGOON_OK && status != LAGOON_UNAVAILABLE && status != LAGOON_CANCELLED)
        fprintf(stderr, "subscription ended: %s %s\n", lagoon_status_name(status), meta->message);
}

static void send_next(run *r);

static void on_sent(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    run *r = arg;
    if (status != LAGOON_OK) {
        if (r->errors++ == 0)
            fprintf(stderr, "send: %s %s\n", lagoon_status_name(status), meta->message);
    }
    r->acked++;
    send_next(r);
}

/* Each Send carries which message it is, for its timings. */
typedef struct pending {
    run *r;
    int slot;
    uint64_t started;
} pending;

static void on_sent_slot(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    pending *p = arg;
    run *r = p->r;
    uint64_t t = bench_now_us();
    uint64_t id = r->resps[p->slot].id;
    if (status == LAGOON_OK && id > 0 && id <= (uint64_t)r->nmsgs) {
        r->send_at[id] = p->started;
        r->ack_at[id] = t;
    }
    free(p);
    on_sent(status, meta, r);
}

static void send_next(run *r)
{
    if (r->sent >= r->nmsgs)
        return;
    int i = r->sent++;
    pending *p = malloc(sizeof(*p));
    p->r = r;
    p->slot = i;
    p->started = bench_now_us();
    r->req.recipient_id = r->user_ids[1 + i % r->nsubs];
    if (lagoon_async_Messages_Send(r->sender, &r->req, &r->resps[i], on_sent_slot, p) != LAGOON_OK) {
        free(p);
        r->errors++;
    }
}

static void report(const char *what, int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_i64);
    if (n == 0)
        return;
    printf("| %-14s | %6d | %8.3f | %8.3f | %8.3f |\n", what, n, v[n / 2] / 1000.0, v[(int)(n * 0.99)] / 1000.0,
           v[n - 1] / 1000.0);
}

/* ---- topic mode ---------------------------------------------------------------------------------- */

typedef struct changes {
    pthread_mutex_t mu;
    uint64_t rows; /* rows changed by the commits announced */
} changes;

static void count_changes(void *arg, const store_change *ch, size_t n)
{
    (void)ch; /* only their number */
    changes *c = arg;
    pthread_mutex_lock(&c->mu);
    c->rows += n;
    pthread_mutex_unlock(&c->mu);
}

typedef struct publish {
    app *a;
    lagoon_v1_Topic topic;
    const uint64_t *members; /* user-log mode: append to each of these logs instead */
    int nmembers;
    lagoon_v1_Event ev;
    uint64_t seq;            /* of the last publish */
} publish;

static void bench_event(lagoon_v1_Event *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->which_payload = lagoon_v1_Event_topic_text_tag;
    ev->payload.topic_text.author_id = 1;
    snprintf(ev->payload.topic_text.text, sizeof(ev->payload.topic_text.text), "how long does this take to arrive?");
}

static int publish_one(store_txn *t, void *arg, store_error *err)
{
    publish *p = arg;
    bench_event(&p->ev);
    if (p->members == NULL) {
        int st = events_topic_publish(t, p->a, &p->topic, &p->ev, err);
        p->seq = p->ev.seq;
        return st;
    }
    int st = LAGOON_OK;
    for (int i = 0; i < p->nmembers && st == LAGOON_OK; i++) {
        bench_event(&p->ev);
        st = events_append(t, p->a, p->members[i], &p->ev, err);
    }
    return st;
}

typedef struct joins {
    app *a;
    const uint64_t *ids;
    int n;
    lagoon_v1_Topic small, large;
} joins;

static int join_all(store_txn *t, void *arg, store_error *err)
{
    joins *j = arg;
    int st = LAGOON_OK;
    for (int i = 0; i < j->n && st == LAGOON_OK; i++) {
        st = events_topic_join(t, j->a, j->ids[i], &j->large, err);
        if (st == LAGOON_OK && i < 2)
            st = events_topic_join(t, j->a, j->ids[i], &j->small, err);
    }
    return st;
}

/* Publishes rounds events to p's topic (or logs): their mean and p50 store_write time and rows. */
static int store_work(app *a, changes *ch, publish *p, int rounds, const char *what)
{
    int64_t *us = calloc((size_t)rounds, sizeof(int64_t));
    if (us == NULL)
        return -1;
    pthread_mutex_lock(&ch->mu);
    uint64_t rows0 = ch->rows;
    pthread_mutex_unlock(&ch->mu);
    int64_t sum = 0;
    store_error err;
    for (int i = 0; i < rounds; i++) {
        uint64_t t0 = bench_now_us();
        if (store_write(a->db, publish_one, p, &err) != LAGOON_OK) {
            fprintf(stderr, "publish: %s\n", err.message);
            free(us);
            return -1;
        }
        us[i] = (int64_t)(bench_now_us() - t0);
        sum += us[i];
    }
    pthread_mutex_lock(&ch->mu); /* announced before store_write returns */
    uint64_t rows = ch->rows - rows0;
    pthread_mutex_unlock(&ch->mu);
    qsort(us, (size_t)rounds, sizeof(*us), cmp_i64);
    printf("| %-26s | %6d | %10.1f | %8.1f | %8.1f |\n", what, rounds, (double)rows / rounds, (double)sum / rounds,
           (double)us[rounds / 2]);
    free(us);
    return 0;
}

typedef struct trun {
    struct event_base *base;
    int nsubs, nmsgs, interval_ms, subscribed;
    uint64_t large_id;
    uint64_t *event_at;           /* [(seq - 1) * nsubs + member] */
    uint64_t *pub_at, *commit_at; /* by seq */
    uint64_t delivered, repeats;
    app *a;
} trun;

typedef struct tsub {
    trun *r;
    int i;
    lagoon_async *c;
} tsub;

static void on_topic_event(lagoon_acall *call, const void *msg, void *arg)
{
    (void)call;
    tsub *s = arg;
    trun *r = s->r;
    const lagoon_v1_Event *ev = msg;
    if (ev->which_payload == lagoon_v1_Event_subscribed_tag) {
        if (++r->subscribed == r->nsubs)
            event_base_loopbreak(r->base);
        return;
    }
    if (ev->which_payload != lagoon_v1_Event_topic_text_tag || !ev->has_topic || ev->topic.id != r->large_id ||
        ev->seq < 1 || ev->seq > (uint64_t)r->nmsgs)
        return;
    uint64_t *at = &r->event_at[(ev->seq - 1) * (uint64_t)r->nsubs + (uint64_t)s->i];
    if (*at) {
        r->repeats++;
        return;
    }
    *at = bench_now_us();
    if (++r->delivered == (uint64_t)r->nmsgs * (uint64_t)r->nsubs)
        event_base_loopbreak(r->base);
}

static void *publisher(void *arg)
{
    trun *r = arg;
    publish p;
    memset(&p, 0, sizeof(p));
    p.a = r->a;
    p.topic.kind = lagoon_v1_Topic_Kind_GROUP;
    p.topic.id = r->large_id;
    store_error err;
    for (int i = 0; i < r->nmsgs; i++) {
        uint64_t t0 = bench_now_us();
        if (store_write(r->a->db, publish_one, &p, &err) != LAGOON_OK) {
            fprintf(stderr, "publish: %s\n", err.message);
            break;
        }
        uint64_t t1 = bench_now_us();
        if (p.seq >= 1 && p.seq <= (uint64_t)r->nmsgs) {
            r->pub_at[p.seq] = t0;
            r->commit_at[p.seq] = t1;
        }
        struct timespec ts = {r->interval_ms / 1000, (long)(r->interval_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int topic_live(trun *r, tsub *subs, uint16_t port, seed *sd);

static int topic_mode(app *a, uint16_t port, seed *sd, int nsubs, int nmsgs, int interval_ms, int rounds)
{
    lagoon_v1_Topic small = {lagoon_v1_Topic_Kind_GROUP, 2}, large = {lagoon_v1_Topic_Kind_GROUP, 1};
    joins j = {a, sd->ids, nsubs, small, large};
    store_error serr;
    if (store_write(a->db, join_all, &j, &serr) != LAGOON_OK) {
        fprintf(stderr, "join: %s\n", serr.message);
        return 1;
    }
    /* The store work of one publish, with nobody subscribed. */
    changes ch = {PTHREAD_MUTEX_INITIALIZER, 0};
    if (store_subscribe(a->db, count_changes, &ch, &serr) != LAGOON_OK)
        return 1;
    publish ps, pl, pu;
    memset(&ps, 0, sizeof(ps));
    ps.a = a;
    ps.topic = small;
    pl = ps;
    pl.topic = large;
    pu = ps;
    pu.members = sd->ids;
    pu.nmembers = nsubs;
    printf("store work per publish (durable store_write; rows = rows changed in the commit)\n\n");
    printf("| %-26s | %6s | %10s | %8s | %8s |\n", "publish to", "rounds", "rows each", "mean us", "p50 us");
    printf("|----------------------------|--------|------------|----------|----------|\n");
    char what_l[64], what_u[64];
    snprintf(what_l, sizeof(what_l), "topic of %d members", nsubs);
    snprintf(what_u, sizeof(what_u), "%d members' own logs", nsubs);
    for (int i = 0; i < 2; i++) { /* alternating halves, so both see the same machine */
        if (store_work(a, &ch, &ps, rounds / 2, "topic of 2 members") != 0 ||
            store_work(a, &ch, &pl, rounds / 2, what_l) != 0)
            return 1;
    }
    if (store_work(a, &ch, &pu, USER_LOG_ROUNDS, what_u) != 0)
        return 1;
    store_unsubscribe(a->db, count_changes, &ch);

    /* Delivery to every member, live. */
    trun r;
    memset(&r, 0, sizeof(r));
    r.base = event_base_new();
    r.nsubs = nsubs;
    r.nmsgs = nmsgs;
    r.interval_ms = interval_ms;
    r.a = a;
    r.large_id = 3; /* the live run's topic (below) */
    r.event_at = calloc((size_t)nmsgs * (size_t)nsubs, sizeof(uint64_t));
    r.pub_at = calloc((size_t)nmsgs + 1, sizeof(uint64_t));
    r.commit_at = calloc((size_t)nmsgs + 1, sizeof(uint64_t));
    tsub *subs = calloc((size_t)nsubs, sizeof(*subs));
    int rc = 1;
    if (r.event_at != NULL && r.pub_at != NULL && r.commit_at != NULL && subs != NULL)
        rc = topic_live(&r, subs, port, sd);
    for (int i = 0; i < nsubs && subs != NULL; i++)
        if (subs[i].c != NULL)
            lagoon_async_free(subs[i].c);
    event_base_free(r.base);
    free(subs);
    free(r.event_at);
    free(r.pub_at);
    free(r.commit_at);
    return rc;
}

/* Subscribes every member, joins them to the live topic, publishes, reports. */
static int topic_live(trun *r, tsub *subs, uint16_t port, seed *sd)
{
    int nsubs = r->nsubs, nmsgs = r->nmsgs, interval_ms = r->interval_ms;
    app *a = r->a;
    store_error serr;
    const lagoon_async_handlers h = {on_topic_event, on_sub_done};
    lagoon_v1_SubscribeRequest sreq = lagoon_v1_SubscribeRequest_init_zero;
    char err[256];
    for (int i = 0; i < nsubs; i++) {
        subs[i].r = r;
        subs[i].i = i;
        if (lagoon_async_connect(r->base, "127.0.0.1", port, NULL, &subs[i].c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "subscriber %d: %s\n", i, err);
            return 1;
        }
        lagoon_async_set_token(subs[i].c, sd->tokens[i]);
        if (lagoon_async_Events_Subscribe(subs[i].c, &sreq, &h, &subs[i]) == NULL)
            return 1;
    }
    struct timeval limit = {60, 0};
    event_base_loopexit(r->base, &limit);
    event_base_dispatch(r->base);
    if (r->subscribed != nsubs) {
        fprintf(stderr, "only %d of %d subscriptions started\n", r->subscribed, nsubs);
        return 1;
    }
    /* A fresh topic for the live run, so that its seqs are 1..messages; every member joins it
     * while subscribed (the joins reach the open streams). */
    lagoon_v1_Topic live = {lagoon_v1_Topic_Kind_GROUP, r->large_id};
    joins jl = {a, sd->ids, nsubs, live, live}; /* joining twice is a no-op */
    if (store_write(a->db, join_all, &jl, &serr) != LAGOON_OK) {
        fprintf(stderr, "join: %s\n", serr.message);
        return 1;
    }
    pthread_t th;
    uint64_t t0 = bench_now_us();
    pthread_create(&th, NULL, publisher, r);
    struct timeval limit2 = {120, 0};
    event_base_loopexit(r->base, &limit2);
    event_base_dispatch(r->base);
    pthread_join(th, NULL);
    double secs = (double)(bench_now_us() - t0) / 1e6;
    size_t total = (size_t)nmsgs * (size_t)nsubs;
    int64_t *ack = calloc(total, sizeof(int64_t)), *snd = calloc(total, sizeof(int64_t));
    if (ack == NULL || snd == NULL) {
        free(ack);
        free(snd);
        return 1;
    }
    int n = 0;
    for (int q = 1; q <= nmsgs; q++) {
        for (int i = 0; i < nsubs && r->commit_at[q]; i++) {
            uint64_t at = r->event_at[(size_t)(q - 1) * (size_t)nsubs + (size_t)i];
            if (at == 0)
                continue;
            int64_t d = (int64_t)at - (int64_t)r->commit_at[q];
            ack[n] = d < 0 ? 0 : d; /* the event may beat store_write's return */
            snd[n] = (int64_t)at - (int64_t)r->pub_at[q];
            n++;
        }
    }
    printf("\nlive: %d members subscribed, %d events published every %d ms to the topic, %llu of %zu deliveries "
           "(%llu repeats), %.1f s\n\n",
           nsubs, nmsgs, interval_ms, (unsigned long long)r->delivered, total, (unsigned long long)r->repeats, secs);
    printf("| %-14s | %6s | %8s | %8s | %8s |\n", "latency", "n", "p50 ms", "p99 ms", "max ms");
    printf("|----------------|--------|----------|----------|----------|\n");
    report("commit->event", ack, n);
    report("publish->event", snd, n);
    free(ack);
    free(snd);
    return r->delivered == total && r->repeats == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int nsubs = 1000, nmsgs = 5000, in_flight = 8, topic = 0, interval_ms = 20, rounds = 200, msgs_given = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--topic") == 0)
            topic = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--interval-ms") == 0)
            interval_ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--subscribers") == 0)
            nsubs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--messages") == 0)
            nmsgs = atoi(argv[i + 1]), msgs_given = 1;
        else if (strcmp(argv[i], "--in-flight") == 0)
            in_flight = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: realtime-bench [--subscribers N] [--messages N] [--in-flight N]\n"
                            "       realtime-bench --topic MEMBERS [--messages N] [--interval-ms N] [--rounds N]\n");
            return 2;
        }
    }
    if (topic) {
        if (topic < 2 || topic > MAX_SUBSCRIBERS || interval_ms < 0 || interval_ms > 10000 || rounds < 2 ||
            rounds > MAX_ROUNDS) {
            fprintf(stderr, "realtime-bench: topic 2..%d members, interval-ms 0..10000, rounds 2..%d\n",
                    MAX_SUBSCRIBERS, MAX_ROUNDS);
            return 2;
        }
        nsubs = topic - 1; /* seeded: nsubs + 1 users, all of them members */
        if (!msgs_given)
            nmsgs = 200;
        if ((uint64_t)nmsgs * (uint64_t)topic > MAX_TOPIC_DELIVERIES) {
            fprintf(stderr, "realtime-bench: messages x members at most %d\n", MAX_TOPIC_DELIVERIES);
            return 2;
        }
    }
    if (nsubs < 1 || nsubs > MAX_SUBSCRIBERS || nmsgs < 1 || nmsgs > MAX_MESSAGES || in_flight < 1 || in_flight > 1000) {
        fprintf(stderr, "realtime-bench: subscribers 1..%d, messages 1..%d, in-flight 1..1000\n", MAX_SUBSCRIBERS,
                MAX_MESSAGES);
        return 2;
    }
    /* One socket per subscriber, client and server side, in this process. */
    struct rlimit rl = {(rlim_t)(2 * nsubs + 256), (rlim_t)(2 * nsubs + 256)};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        perror("setrlimit (needs 2 fds per subscriber)");
        return 1;
    }
    log_set_level(LOG_WARN);
    app_config acfg = {0}; /* durable commits: sync full */
    acfg.sends.max_events = UINT32_MAX; /* one user sends them all: delivery is measured, not the limit */
    bench_stack stack;
    memset(&stack, 0, sizeof(stack)); /* bench_stack_stop undoes only what was done */
    if (bench_stack_open(&stack, "/tmp/lagoon-rtbench-XXXXXX", &acfg) != 0) {
        bench_stack_stop(&stack);
        return 1;
    }
    app *a = stack.app;
    seed sd = {nsubs + 1, calloc((size_t)nsubs + 1, sizeof(uint64_t)),
               calloc((size_t)nsubs + 1, ACCOUNT_TOKEN_CHARS + 1)};
    store_error serr;
    if (store_write(a->db, seed_users, &sd, &serr) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", serr.message);
        return 1;
    }
    rpc_config cfg;
    bench_stack_config(&stack, &cfg);
    /* Every subscriber connects from 127.0.0.1: one address, many connections. */
    cfg.max_connections_per_address = (uint32_t)nsubs + 16;
    cfg.on_drain = app_on_drain;
    if (bench_stack_serve(&stack, &cfg) != 0) {
        bench_stack_stop(&stack);
        return 1;
    }
    uint16_t port = bench_stack_port(&stack);
    int rc = 0;
    if (topic) {
        rc = topic_mode(a, port, &sd, topic, nmsgs, interval_ms, rounds);
        goto done;
    }

    run r;
    memset(&r, 0, sizeof(r));
    r.base = event_base_new();
    r.nsubs = nsubs;
    r.nmsgs = nmsgs;
    r.in_flight = in_flight;
    r.user_ids = sd.ids;
    r.send_at = calloc((size_t)nmsgs + 1, sizeof(uint64_t));
    r.ack_at = calloc((size_t)nmsgs + 1, sizeof(uint64_t));
    r.event_at = calloc((size_t)nmsgs + 1, sizeof(uint64_t));
    r.resps = calloc((size_t)nmsgs, sizeof(*r.resps));
    sub *subs = calloc((size_t)nsubs, sizeof(*subs));
    const lagoon_async_handlers h = {on_event, on_sub_done};
    lagoon_v1_SubscribeRequest sreq = lagoon_v1_SubscribeRequest_init_zero;
    char err[256];
    for (int i = 0; i < nsubs; i++) {
        subs[i].r = &r;
        if (lagoon_async_connect(r.base, "127.0.0.1", port, NULL, &subs[i].c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "subscriber %d: %s\n", i, err);
            return 1;
        }
        lagoon_async_set_token(subs[i].c, sd.tokens[1 + i]);
        if (lagoon_async_Events_Subscribe(subs[i].c, &sreq, &h, &subs[i]) == NULL)
            return 1;
    }
    struct timeval limit = {60, 0};
    event_base_loopexit(r.base, &limit);
    event_base_dispatch(r.base); /* until every subscription said it is live */
    if (r.subscribed != nsubs) {
        fprintf(stderr, "only %d of %d subscriptions started\n", r.subscribed, nsubs);
        return 1;
    }
    if (lagoon_async_connect(r.base, "127.0.0.1", port, NULL, &r.sender, err, sizeof(err)) != LAGOON_OK)
        return 1;
    lagoon_async_set_token(r.sender, sd.tokens[0]);
    r.req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(r.req.content.text.text, sizeof(r.req.content.text.text), "how long does this take to arrive?");
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < in_flight; i++)
        send_next(&r);
    struct timeval limit2 = {120, 0};
    event_base_loopexit(r.base, &limit2);
    event_base_dispatch(r.base);
    double secs = (double)(bench_now_us() - t0) / 1e6;

    int64_t *ack = calloc((size_t)nmsgs, sizeof(int64_t)), *snd = calloc((size_t)nmsgs, sizeof(int64_t));
    int n = 0;
    for (int id = 1; id <= nmsgs; id++) {
        if (r.ack_at[id] && r.event_at[id]) {
            int64_t d = (int64_t)r.event_at[id] - (int64_t)r.ack_at[id];
            ack[n] = d < 0 ? 0 : d; /* the event may beat the acknowledgement */
            snd[n] = (int64_t)r.event_at[id] - (int64_t)r.send_at[id];
            n++;
        }
    }
    printf("subscribers %d, messages %d (%d delivered, %llu errors), %d in flight, %.0f sends/s\n\n", nsubs, nmsgs,
           r.delivered, (unsigned long long)r.errors, in_flight, nmsgs / secs);
    printf("| %-14s | %6s | %8s | %8s | %8s |\n", "latency", "n", "p50 ms", "p99 ms", "max ms");
    printf("|----------------|--------|----------|----------|----------|\n");
    report("ack -> event", ack, n);
    report("send -> event", snd, n);

    for (int i = 0; i < nsubs; i++)
        lagoon_async_free(subs[i].c);
    lagoon_async_free(r.sender);
    event_base_free(r.base);
    free(ack);
    free(snd);
    free(subs);
    free(r.send_at);
    free(r.ack_at);
    free(r.event_at);
    free(r.resps);
done:
    free(sd.ids);
    free(sd.tokens);
    return bench_stack_stop(&stack) == 0 ? rc : 1;
}
