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
 * of ack->event and send->event. Bounded; removes what it creates. */
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "accounts.h"
#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "log.h"

#define MAX_SUBSCRIBERS 5000
#define MAX_MESSAGES 1000000

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

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
        lagoon_v1_User u = lagoon_v1_User_init_zero;
        snprintf(u.email, sizeof(u.email), "u%d@bench.invalid", i);
        snprintf(u.username, sizeof(u.username), "user%d", i);
        snprintf(u.password_hash, sizeof(u.password_hash), "unused");
        u.role = lagoon_v1_Role_STUDENT;
        u.active = true;
        u.verified = true; /* the sender writes first */
        int st = store_insert(t, &lagoon_table_users, &u, &sd->ids[i], err);
        if (st != LAGOON_OK)
            return st;
        lagoon_v1_Session s = lagoon_v1_Session_init_zero;
        uint8_t rh[ACCOUNT_HASH_BYTES];
        char rt[ACCOUNT_TOKEN_CHARS + 1];
        /* Replays regenerate the tokens: they are only read after the commit. */
        account_token_new(sd->tokens[i], s.access_hash);
        account_token_new(rt, rh);
        memcpy(s.refresh_hash, rh, sizeof(rh));
        s.user_id = sd->ids[i];
        s.verified = true;
        s.access_expires_at = s.refresh_expires_at = INT64_MAX / 2;
        st = store_insert(t, &lagoon_table_sessions, &s, NULL, err);
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
        r->event_at[id] = now_us();
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
    uint64_t t = now_us();
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
    p->started = now_us();
    r->req.recipient_id = r->user_ids[1 + i % r->nsubs];
    if (lagoon_async_Messages_Send(r->sender, &r->req, &r->resps[i], on_sent_slot, p) != LAGOON_OK) {
        free(p);
        r->errors++;
    }
}

static void *serve(void *arg)
{
    rpc_error err;
    rpc_server_run(arg, &err);
    return NULL;
}

static void report(const char *what, int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_i64);
    if (n == 0)
        return;
    printf("| %-14s | %6d | %8.3f | %8.3f | %8.3f |\n", what, n, v[n / 2] / 1000.0, v[(int)(n * 0.99)] / 1000.0,
           v[n - 1] / 1000.0);
}

int main(int argc, char **argv)
{
    int nsubs = 1000, nmsgs = 5000, in_flight = 8;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--subscribers") == 0)
            nsubs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--messages") == 0)
            nmsgs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--in-flight") == 0)
            in_flight = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: realtime-bench [--subscribers N] [--messages N] [--in-flight N]\n");
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
    char dir[] = "/tmp/lagoon-rtbench-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    app_config acfg = {0};
    acfg.sends.max_events = UINT32_MAX; /* one user sends them all: delivery is measured, not the limit */
    app *a;
    rpc_error rerr;
    if (app_open(dir, &acfg, &a, &rerr) != RPC_OK) {
        fprintf(stderr, "%s\n", rerr.message);
        return 1;
    }
    seed sd = {nsubs + 1, calloc((size_t)nsubs + 1, sizeof(uint64_t)),
               calloc((size_t)nsubs + 1, ACCOUNT_TOKEN_CHARS + 1)};
    store_error serr;
    if (store_write(a->db, seed_users, &sd, &serr) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", serr.message);
        return 1;
    }
    rpc_config cfg;
    rpc_config_defaults(&cfg);
    cfg.listen_port = 0;
    cfg.app = a;
    cfg.authenticate = app_authenticate;
    cfg.authenticate_arg = a;
    cfg.on_drain = app_on_drain;
    rpc_server *srv;
    if (rpc_server_new(&cfg, lagoon_routes, lagoon_routes_count, &srv, &rerr) != RPC_OK) {
        fprintf(stderr, "%s\n", rerr.message);
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, serve, srv);
    uint16_t port = rpc_server_port(srv);

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
    uint64_t t0 = now_us();
    for (int i = 0; i < in_flight; i++)
        send_next(&r);
    struct timeval limit2 = {120, 0};
    event_base_loopexit(r.base, &limit2);
    event_base_dispatch(r.base);
    double secs = (double)(now_us() - t0) / 1e6;

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
    rpc_server_stop(srv);
    pthread_join(th, NULL);
    rpc_server_join_workers(srv);
    app_close(a);
    rpc_server_free(srv);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
