/* groups-bench: what a GroupChat/Send costs as the group grows, and how fast it reaches the
 * group's live members.
 *
 *   groups-bench [--sizes 2,100,1000,10000] [--messages 300] [--live 1000] [--live-messages 100]
 *                [--interval-ms 20] [--mine-groups 128] [--mine-calls 50]
 *
 * Store work. For each size: a fresh store in a temporary directory (durable commits), `size`
 * users seeded straight through the store, all ACTIVE members of one public group (and of its
 * topic), as Groups leaves them; lagoond's stack in this process on an ephemeral port; then the
 * owner sends `messages` text messages one after the other through a blocking client. It reports
 * the rows each Send changed (the store's commit announcements: the message, the sender's member
 * row, the group, the topic event and feed; never a row per member), the Send's latency (mean,
 * p50, p99) and the throughput of one sender, then of SENDERS (16) connections sending the same
 * number at once (the group commit shares each durable commit among them). Target: the largest group's Send costs at most 2x
 * the smallest's.
 *
 * Delivery. A group of `live` + 1 members: `live` of them subscribe (Events/Subscribe, one async
 * client each, on this thread's event loop), and a sender thread sends `live-messages` messages,
 * one every `interval-ms`. Each message's text is its number, so a subscriber knows which one it
 * got; it reports p50/p99/max over every (message, member) pair of the time from the Send call
 * to the member's event. Target: p99 < 50 ms at 1 000 members.
 *
 * ListMine. A member of `--mine-groups` (128: the most a user can be in) groups, each with 1 001
 * messages it has not read, calls Groups/ListMine `--mine-calls` times: every group's unread
 * count is counted from the group's index and stops at 1 000 (shown "999+"), so this is the
 * worst case of that count.
 *
 * Every loop is bounded; everything it creates is removed. */
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "account_tokens.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "events.h"
#include "groups.h"
#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"

#define MAX_MEMBERS GROUPS_MEMBERS_MAX
#define MAX_MESSAGES 100000
#define MAX_LIVE 5000
#define MAX_DELIVERIES 10000000 /* live messages x members kept for the report */
#define WARMUP 10               /* unmeasured Sends before each measurement */

/* ---- seeding (not measured) ---------------------------------------------------------------------- */

typedef bench_group_seed seed; /* n users, all members; the first owns the group */

/* A stack over a fresh store holding a group of n members. 0 or -1. */
static int stack_with_group(bench_stack *stack, seed *sd, int n, uint32_t max_conns)
{
    app_config acfg = {0};              /* durable commits: sync full */
    acfg.sends.max_events = UINT32_MAX; /* one user sends them all: the Send is measured, not the limit */
    memset(stack, 0, sizeof(*stack));   /* bench_stack_stop undoes only what was done */
    sd->n = n;
    sd->prefix = "member";
    sd->ids = calloc((size_t)n, sizeof(uint64_t));
    sd->tokens = calloc((size_t)n, ACCOUNT_TOKEN_CHARS + 1);
    if (sd->ids == NULL || sd->tokens == NULL || bench_stack_open(stack, "/tmp/lagoon-groupsbench-XXXXXX", &acfg) != 0)
        return -1;
    sd->a = stack->app;
    store_error err;
    if (store_write(stack->app->db, bench_seed_group, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    rpc_config cfg;
    bench_stack_config(stack, &cfg);
    cfg.max_connections_per_address = max_conns; /* every subscriber connects from 127.0.0.1 */
    cfg.on_drain = app_on_drain;
    return bench_stack_serve(stack, &cfg);
}

static void seed_free(seed *sd)
{
    free(sd->ids);
    free(sd->tokens);
}

static lagoon_v1_SendGroupMessageRequest *send_req(uint64_t group)
{
    lagoon_v1_SendGroupMessageRequest *r = calloc(1, sizeof(*r));
    if (r != NULL) {
        r->group_id = group;
        r->which_content = lagoon_v1_SendGroupMessageRequest_text_tag;
    }
    return r;
}

/* ---- store work and throughput --------------------------------------------------------------------- */

typedef struct changes {
    pthread_mutex_t mu;
    uint64_t rows;
} changes;

static void count_changes(void *arg, const store_change *ch, size_t n)
{
    (void)ch;
    changes *c = arg;
    pthread_mutex_lock(&c->mu);
    c->rows += n;
    pthread_mutex_unlock(&c->mu);
}

/* Throughput with SENDERS connections of the owner sending at once (the store's group commit
 * shares a durable commit among them). */
#define SENDERS 16

typedef struct sender_run {
    const bench_stack *stack;
    const char *token;
    uint64_t group;
    int n, failed;
} sender_run;

static void *send_many(void *arg)
{
    sender_run *r = arg;
    lagoon_client *c = NULL;
    lagoon_v1_SendGroupMessageRequest *req = send_req(r->group);
    lagoon_v1_GroupMessage *resp = calloc(1, sizeof(*resp));
    r->failed = req == NULL || resp == NULL || bench_stack_connect(r->stack, r->token, &c) != 0;
    for (int i = 0; i < r->n && !r->failed; i++) {
        snprintf(req->content.text.text, sizeof(req->content.text.text), "concurrent %d", i);
        r->failed = lagoon_GroupChat_Send(c, req, resp) != LAGOON_OK;
    }
    if (c != NULL)
        lagoon_close(c);
    free(req);
    free(resp);
    return NULL;
}

/* SENDERS threads, messages Sends in all: sends per second, or -1. */
static double concurrent_rate(const bench_stack *stack, const seed *sd, int messages)
{
    sender_run runs[SENDERS];
    pthread_t th[SENDERS];
    int started = 0;
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < SENDERS; i++) {
        runs[i] = (sender_run){stack, sd->tokens[0], sd->group, messages / SENDERS + (i < messages % SENDERS), 0};
        if (pthread_create(&th[i], NULL, send_many, &runs[i]) != 0)
            break;
        started++;
    }
    int failed = started != SENDERS;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        failed |= runs[i].failed;
    }
    double secs = (double)(bench_now_us() - t0) / 1e6;
    return failed ? -1 : messages / secs;
}

static int run_size(int size, int messages, double *mean_ms)
{
    bench_stack stack;
    seed sd;
    memset(&sd, 0, sizeof(sd));
    lagoon_client *c = NULL;
    lagoon_v1_SendGroupMessageRequest *req = NULL;
    lagoon_v1_GroupMessage *resp = calloc(1, sizeof(*resp));
    bench_stats us;
    int failed = bench_stats_init(&us, (size_t)messages) != 0 || resp == NULL ||
                 stack_with_group(&stack, &sd, size, 64) != 0 ||
                 bench_stack_connect(&stack, sd.tokens[0], &c) != 0 || (req = send_req(sd.group)) == NULL;
    changes ch = {PTHREAD_MUTEX_INITIALIZER, 0};
    store_error err;
    if (!failed)
        failed = store_subscribe(stack.app->db, count_changes, &ch, &err) != LAGOON_OK;
    uint64_t t0 = 0, rows = 0;
    for (int i = -WARMUP; i < messages && !failed; i++) {
        if (i == 0) {
            pthread_mutex_lock(&ch.mu);
            ch.rows = 0;
            pthread_mutex_unlock(&ch.mu);
            t0 = bench_now_us();
        }
        snprintf(req->content.text.text, sizeof(req->content.text.text), "message %d to %d members", i, size);
        uint64_t t = bench_now_us();
        int st = lagoon_GroupChat_Send(c, req, resp);
        uint64_t d = bench_now_us() - t;
        if (st != LAGOON_OK) {
            fprintf(stderr, "Send: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
            failed = 1;
        } else if (i >= 0) {
            bench_stats_add(&us, d);
        }
    }
    double secs = (double)(bench_now_us() - t0) / 1e6;
    if (!failed) {
        pthread_mutex_lock(&ch.mu); /* announced before each Send's reply */
        rows = ch.rows;
        pthread_mutex_unlock(&ch.mu);
        store_unsubscribe(stack.app->db, count_changes, &ch);
        double ms[3];
        bench_stats_ms(&us, ms);
        *mean_ms = ms[0];
        double rate = concurrent_rate(&stack, &sd, messages);
        failed = rate < 0;
        printf("| %7d | %8d | %9.2f | %8.3f | %7.3f | %7.3f | %9.0f | %11.0f |\n", size, messages,
               (double)rows / messages, ms[0], ms[1], ms[2], messages / secs, rate);
        fflush(stdout);
    }
    if (c != NULL)
        lagoon_close(c);
    free(req);
    free(resp);
    bench_stats_free(&us);
    int stopped = bench_stack_stop(&stack);
    seed_free(&sd);
    return failed || stopped != 0 ? -1 : 0;
}

/* ---- ListMine at the unread cap ------------------------------------------------------------------ */

#define MINE_MESSAGES 1001 /* per group: one past the cap */

typedef struct mine_seed {
    int groups;
    uint64_t owner, member;
    lagoon_v1_Session sessions[2];
    app *a;
} mine_seed;

static int seed_mine(store_txn *t, void *arg, store_error *err)
{
    mine_seed *ms = arg;
    int st = bench_seed_user(t, "mine_owner", "mine_owner@bench.invalid", lagoon_v1_Role_STUDENT, &ms->sessions[0],
                             &ms->owner, err);
    if (st == LAGOON_OK)
        st = bench_seed_user(t, "mine_member", "mine_member@bench.invalid", lagoon_v1_Role_STUDENT, &ms->sessions[1],
                             &ms->member, err);
    lagoon_v1_Group *g = calloc(1, sizeof(*g));
    lagoon_v1_GroupMessage *m = calloc(1, sizeof(*m));
    if (g == NULL || m == NULL) {
        free(g);
        free(m);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    for (int i = 0; i < ms->groups && st == LAGOON_OK; i++) {
        memset(g, 0, sizeof(*g));
        g->owner_id = ms->owner;
        snprintf(g->name, sizeof(g->name), "busy group %d", i);
        g->visibility = lagoon_v1_Group_Visibility_PUBLIC;
        g->member_count = 2;
        g->created_at = g->last_activity_at = 1 + i;
        st = store_insert(t, &lagoon_table_groups, g, NULL, err);
        lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, g->id};
        for (int k = 0; k < 2 && st == LAGOON_OK; k++) {
            lagoon_v1_GroupMember gm = lagoon_v1_GroupMember_init_zero;
            gm.group_id = g->id;
            gm.user_id = k ? ms->member : ms->owner;
            gm.role = k ? lagoon_v1_GroupMember_Role_MEMBER : lagoon_v1_GroupMember_Role_OWNER;
            gm.state = lagoon_v1_GroupMember_State_ACTIVE;
            st = store_insert(t, &lagoon_table_group_members, &gm, NULL, err);
            if (st == LAGOON_OK)
                st = events_topic_join(t, ms->a, gm.user_id, &tp, err);
        }
        for (int k = 0; k < MINE_MESSAGES && st == LAGOON_OK; k++) {
            memset(m, 0, sizeof(*m));
            m->group_id = g->id;
            m->sender_id = ms->owner;
            m->which_content = lagoon_v1_GroupMessage_text_tag;
            snprintf(m->content.text.text, sizeof(m->content.text.text), "unread %d", k);
            st = store_insert(t, &lagoon_table_group_messages, m, NULL, err);
        }
    }
    free(g);
    free(m);
    return st;
}

static int run_mine(int groups, int calls)
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack));
    mine_seed ms;
    memset(&ms, 0, sizeof(ms));
    ms.groups = groups;
    char tokens[2][ACCOUNT_TOKEN_CHARS + 1];
    for (int i = 0; i < 2; i++) {
        bench_session_tokens(&ms.sessions[i], tokens[i]);
        ms.sessions[i].verified = true;
    }
    lagoon_client *c = NULL;
    bench_stats us;
    store_error err;
    int failed = bench_stats_init(&us, (size_t)calls) != 0 ||
                 bench_stack_open(&stack, "/tmp/lagoon-groupsbench-XXXXXX", NULL) != 0;
    if (!failed) {
        ms.a = stack.app;
        failed = store_write(stack.app->db, seed_mine, &ms, &err) != LAGOON_OK;
        if (failed)
            fprintf(stderr, "seed: %s\n", err.message);
    }
    failed = failed || bench_stack_serve(&stack, NULL) != 0 || bench_stack_connect(&stack, tokens[1], &c) != 0;
    lagoon_v1_ListMyGroupsRequest req = lagoon_v1_ListMyGroupsRequest_init_zero;
    for (int i = -WARMUP; i < calls && !failed; i++) {
        lagoon_v1_ListGroupsResponse resp;
        memset(&resp, 0, sizeof(resp));
        uint64_t t = bench_now_us();
        int st = lagoon_Groups_ListMine(c, &req, &resp);
        uint64_t d = bench_now_us() - t;
        if (st != LAGOON_OK || resp.groups_count != (pb_size_t)groups || resp.groups[0].unread != 1000) {
            fprintf(stderr, "ListMine: %s, %u groups\n", lagoon_status_name(st), (unsigned)resp.groups_count);
            failed = 1;
        } else if (i >= 0) {
            bench_stats_add(&us, d);
        }
        pb_release(lagoon_v1_ListGroupsResponse_fields, &resp);
    }
    if (!failed) {
        double ms3[3];
        bench_stats_ms(&us, ms3);
        printf("\nGroups/ListMine of a member of %d groups, each with %d unread (counted to 1000: \"999+\"), %d calls: "
               "mean %.2f ms, p50 %.2f ms, p99 %.2f ms\n",
               groups, MINE_MESSAGES, calls, ms3[0], ms3[1], ms3[2]);
    }
    if (c != NULL)
        lagoon_close(c);
    bench_stats_free(&us);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : -1;
}

/* ---- delivery to live members --------------------------------------------------------------------- */

typedef struct live {
    struct event_base *base;
    int nsubs, nmsgs, interval_ms, subscribed, sender_failed;
    uint64_t group;
    uint64_t *event_at; /* [message * nsubs + subscriber] */
    uint64_t *sent_at;  /* by message */
    uint64_t delivered, repeats;
    lagoon_client *sender;
} live;

typedef struct sub {
    live *r;
    int i;
    lagoon_async *c;
} sub;

static void on_event(lagoon_acall *call, const void *msg, void *arg)
{
    (void)call;
    sub *s = arg;
    live *r = s->r;
    const lagoon_v1_Event *ev = msg;
    if (ev->which_payload == lagoon_v1_Event_subscribed_tag) {
        if (++r->subscribed == r->nsubs)
            event_base_loopbreak(r->base);
        return;
    }
    if (ev->which_payload != lagoon_v1_Event_group_message_tag ||
        ev->payload.group_message.action != lagoon_v1_GroupMessageEvent_Action_SENT)
        return;
    int q = atoi(ev->payload.group_message.message.content.text.text);
    if (q < 0 || q >= r->nmsgs)
        return;
    uint64_t *at = &r->event_at[(size_t)q * (size_t)r->nsubs + (size_t)s->i];
    if (*at) {
        r->repeats++;
        return;
    }
    *at = bench_now_us();
    if (++r->delivered == (uint64_t)r->nmsgs * (uint64_t)r->nsubs)
        event_base_loopbreak(r->base);
}

static void on_sub_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    (void)meta;
    (void)arg;
    if (status != LAGOON_OK)
        fprintf(stderr, "subscription ended: %s\n", lagoon_status_name(status));
}

static void *sender(void *arg)
{
    live *r = arg;
    lagoon_v1_SendGroupMessageRequest *req = send_req(r->group);
    lagoon_v1_GroupMessage *resp = calloc(1, sizeof(*resp));
    for (int q = 0; q < r->nmsgs && req != NULL && resp != NULL; q++) {
        snprintf(req->content.text.text, sizeof(req->content.text.text), "%d", q);
        r->sent_at[q] = bench_now_us();
        int st = lagoon_GroupChat_Send(r->sender, req, resp);
        if (st != LAGOON_OK) {
            fprintf(stderr, "Send: %s %s\n", lagoon_status_name(st), lagoon_last_error(r->sender)->detail.message);
            r->sender_failed = 1;
            break;
        }
        struct timespec ts = {r->interval_ms / 1000, (long)(r->interval_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    free(req);
    free(resp);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int deliver(live *r, sub *subs, const bench_stack *stack, const seed *sd)
{
    const lagoon_async_handlers h = {on_event, on_sub_done};
    lagoon_v1_SubscribeRequest sreq = lagoon_v1_SubscribeRequest_init_zero;
    char err[256];
    uint16_t port = bench_stack_port(stack);
    for (int i = 0; i < r->nsubs; i++) {
        subs[i].r = r;
        subs[i].i = i;
        if (lagoon_async_connect(r->base, "127.0.0.1", port, NULL, &subs[i].c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "subscriber %d: %s\n", i, err);
            return -1;
        }
        lagoon_async_set_token(subs[i].c, sd->tokens[1 + i]);
        if (lagoon_async_Events_Subscribe(subs[i].c, &sreq, &h, &subs[i]) == NULL)
            return -1;
    }
    struct timeval limit = {60, 0};
    event_base_loopexit(r->base, &limit);
    event_base_dispatch(r->base);
    if (r->subscribed != r->nsubs) {
        fprintf(stderr, "only %d of %d subscriptions started\n", r->subscribed, r->nsubs);
        return -1;
    }
    if (bench_stack_connect(stack, sd->tokens[0], &r->sender) != 0)
        return -1;
    pthread_t th;
    uint64_t t0 = bench_now_us();
    if (pthread_create(&th, NULL, sender, r) != 0)
        return -1;
    struct timeval limit2 = {120, 0};
    event_base_loopexit(r->base, &limit2);
    event_base_dispatch(r->base);
    pthread_join(th, NULL);
    double secs = (double)(bench_now_us() - t0) / 1e6;
    size_t total = (size_t)r->nmsgs * (size_t)r->nsubs, n = 0;
    uint64_t *lat = calloc(total, sizeof(uint64_t));
    if (lat == NULL)
        return -1;
    for (size_t k = 0; k < total; k++) {
        uint64_t at = r->event_at[k], sent = r->sent_at[k / (size_t)r->nsubs];
        if (at)
            lat[n++] = at > sent ? at - sent : 0;
    }
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    printf("\ndelivery: %d live members, %d messages one every %d ms, %llu of %zu deliveries (%llu repeats), %.1f s\n\n",
           r->nsubs, r->nmsgs, r->interval_ms, (unsigned long long)r->delivered, total,
           (unsigned long long)r->repeats, secs);
    printf("| %-13s | %8s | %8s | %8s | %8s |\n", "latency", "n", "p50 ms", "p99 ms", "max ms");
    printf("|---------------|----------|----------|----------|----------|\n");
    if (n > 0)
        printf("| %-13s | %8zu | %8.2f | %8.2f | %8.2f |\n", "send -> event", n, (double)lat[(n - 1) / 2] / 1000.0,
               (double)lat[(size_t)(0.99 * (double)(n - 1))] / 1000.0, (double)lat[n - 1] / 1000.0);
    free(lat);
    return r->delivered == total && r->repeats == 0 && !r->sender_failed ? 0 : -1;
}

static int run_live(int members, int messages, int interval_ms)
{
    struct rlimit rl = {(rlim_t)(2 * members + 256), (rlim_t)(2 * members + 256)};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        perror("setrlimit (needs 2 fds per subscriber)");
        return -1;
    }
    bench_stack stack;
    seed sd;
    memset(&sd, 0, sizeof(sd));
    live r;
    memset(&r, 0, sizeof(r));
    r.nsubs = members;
    r.nmsgs = messages;
    r.interval_ms = interval_ms;
    r.base = event_base_new();
    r.event_at = calloc((size_t)messages * (size_t)members, sizeof(uint64_t));
    r.sent_at = calloc((size_t)messages, sizeof(uint64_t));
    sub *subs = calloc((size_t)members, sizeof(*subs));
    int rc = -1;
    if (r.base != NULL && r.event_at != NULL && r.sent_at != NULL && subs != NULL &&
        stack_with_group(&stack, &sd, members + 1, (uint32_t)members + 16) == 0) {
        r.group = sd.group;
        rc = deliver(&r, subs, &stack, &sd);
    }
    for (int i = 0; i < members && subs != NULL; i++)
        if (subs[i].c != NULL)
            lagoon_async_free(subs[i].c);
    if (r.sender != NULL)
        lagoon_close(r.sender);
    if (r.base != NULL)
        event_base_free(r.base);
    free(subs);
    free(r.event_at);
    free(r.sent_at);
    if (bench_stack_stop(&stack) != 0)
        rc = -1;
    seed_free(&sd);
    return rc;
}

int main(int argc, char **argv)
{
    char sizes[BENCH_SIZES_MAX] = "2,100,1000,10000";
    int messages = 300, live_members = 1000, live_messages = 100, interval_ms = 20, mine_groups = 128, mine_calls = 50;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            snprintf(sizes, sizeof(sizes), "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--messages") == 0)
            messages = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--live") == 0)
            live_members = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--live-messages") == 0)
            live_messages = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--interval-ms") == 0)
            interval_ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--mine-groups") == 0)
            mine_groups = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--mine-calls") == 0)
            mine_calls = atoi(argv[i + 1]);
        else
            argc = -1;
    }
    if (argc < 0 || argc % 2 == 0 || messages < 1 || messages > MAX_MESSAGES || live_members < 0 ||
        live_members > MAX_LIVE || live_messages < 1 || (uint64_t)live_messages * (uint64_t)live_members > MAX_DELIVERIES ||
        interval_ms < 0 || interval_ms > 10000 || mine_groups < 0 || mine_groups > EVENTS_MAX_TOPICS_PER_USER ||
        mine_calls < 1 || mine_calls > MAX_MESSAGES) {
        fprintf(stderr, "usage: groups-bench [--sizes N,N] [--messages 1..%d] [--live 0..%d] [--live-messages N] "
                        "[--interval-ms 0..10000] [--mine-groups 0..%d] [--mine-calls N]\n",
                MAX_MESSAGES, MAX_LIVE, EVENTS_MAX_TOPICS_PER_USER);
        return 2;
    }
    log_set_level(LOG_WARN);
    printf("GroupChat/Send by one member, one after the other (durable commits); rows = rows changed per Send;\n"
           "then the same number of Sends on %d connections at once\n\n", SENDERS);
    printf("| %7s | %8s | %9s | %8s | %7s | %7s | %9s | %11s |\n", "members", "messages", "rows each", "mean ms",
           "p50 ms", "p99 ms", "sends/s", "sends/s x16");
    printf("|---------|----------|-----------|----------|---------|---------|-----------|-------------|\n");
    double first = 0, last = 0;
    int nsizes = 0, firstn = 0, lastn = 0;
    for (char *p = sizes; *p && nsizes < BENCH_ROWS_MAX * 4;) {
        int size = atoi(p);
        if (size < 2 || size > MAX_MEMBERS) {
            fprintf(stderr, "groups-bench: sizes from 2 to %d\n", MAX_MEMBERS);
            return 2;
        }
        double mean = 0;
        if (run_size(size, messages, &mean) != 0)
            return 1;
        if (nsizes++ == 0)
            first = mean, firstn = size;
        last = mean, lastn = size;
        p = strchr(p, ',');
        if (p == NULL)
            break;
        p++;
    }
    if (nsizes > 1 && first > 0)
        printf("\nmean Send at %d members / at %d: %.2fx (target <= 2x)\n", lastn, firstn, last / first);
    if (mine_groups > 0 && run_mine(mine_groups, mine_calls) != 0)
        return 1;
    if (live_members > 0 && run_live(live_members, live_messages, interval_ms) != 0)
        return 1;
    return 0;
}
