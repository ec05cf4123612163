/* party-bench: how fast a watch party's change reaches every member.
 *
 *   party-bench [--sizes 100,1000] [--commands 50] [--interval-ms 120]
 *
 * For each size: a fresh store in a temporary directory (durable commits), `size` users seeded
 * straight through the store as ACTIVE members of one public group; lagoond's stack in this
 * process on an ephemeral port; the first user starts a party (Party/Start) and the others join
 * it (Party/Join, one async client each, on this thread's event loop). Then the first joins too
 * (the party has `size` members) and, as the controller (a blocking client on a thread of its
 * own), sends `commands` seeks, one every
 * `interval-ms` (above the 1/PARTY_COMMANDS_PER_SECOND a member may send), each based on the
 * version it last saw. A seek is one version more, so a member knows from a state's version
 * which command it carries. It reports p50/p99/max over every (command, member) pair of the time
 * from the controller's send to the member's state frame: that includes the durable write, since
 * a change is sent once stored. "join s" is the time until every member has seen every join
 * (each join is sent to every present member: the joins cost members^2 frames in all); the
 * commands start after it.
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
#include "lagoon_async_stubs.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "party.h"

#define MAX_MEMBERS PARTY_MEMBERS_MAX
#define MAX_COMMANDS 10000
#define JOIN_WAIT_S 300  /* for every member's first state */
#define RUN_WAIT_S 600   /* for every command's delivery */

typedef struct run run;

typedef struct member {
    run *r;
    int i;
    lagoon_async *c;
    int joined;
    uint64_t version; /* the newest it saw */
} member;

struct run {
    struct event_base *base;
    int nmembers, ncommands, interval_ms;
    member *members;
    int joined;
    int settled;         /* members that have seen version v0 */
    uint64_t v0;         /* the version before the first command (the controller's join) */
    uint64_t *sent_at;   /* per command, us */
    uint64_t *state_at;  /* per (command, member), us; 0 = not yet */
    uint64_t delivered;
    lagoon_client *ctl;  /* the controller */
    lagoon_stream *ctl_stream;
    uint64_t party;
    int failed;
};

static void on_frame(lagoon_acall *call, const void *msg, void *arg)
{
    (void)call;
    member *m = arg;
    run *r = m->r;
    const lagoon_v1_PartyServerFrame *f = msg;
    if (f->which_body != lagoon_v1_PartyServerFrame_state_tag)
        return;
    if (!m->joined) {
        m->joined = 1;
        if (++r->joined == r->nmembers)
            event_base_loopbreak(r->base);
        return;
    }
    if (f->body.state.version > m->version) {
        if (r->v0 && m->version < r->v0 && f->body.state.version >= r->v0 && ++r->settled == r->nmembers)
            event_base_loopbreak(r->base); /* every join has reached everyone */
        m->version = f->body.state.version;
    }
    if (r->v0 == 0 || f->body.state.version <= r->v0)
        return; /* the members' joins */
    uint64_t q = f->body.state.version - r->v0 - 1;
    if (q >= (uint64_t)r->ncommands)
        return;
    uint64_t *at = &r->state_at[q * (uint64_t)r->nmembers + (uint64_t)m->i];
    if (*at == 0) {
        *at = bench_now_us();
        if (++r->delivered == (uint64_t)r->ncommands * (uint64_t)r->nmembers)
            event_base_loopbreak(r->base);
    }
}

static void on_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    (void)arg;
    if (status != LAGOON_OK && status != LAGOON_CANCELLED)
        fprintf(stderr, "Join ended: %s %s\n", lagoon_status_name(status), meta ? meta->message : "");
}

/* The controller's frames up to the state of version v (its own command's). 0 or -1. */
static int ctl_until(run *r, uint64_t v, lagoon_v1_PartyServerFrame *f)
{
    for (int i = 0; i < 100000; i++) {
        if (lagoon_stream_recv_timeout(r->ctl_stream, f, 30000) != 1)
            return -1;
        if (f->which_body == lagoon_v1_PartyServerFrame_refusal_tag) {
            fprintf(stderr, "controller refused: %s\n", f->body.refusal.message);
            return -1;
        }
        if (f->which_body == lagoon_v1_PartyServerFrame_state_tag && f->body.state.version >= v)
            return 0;
    }
    return -1;
}

static void *controller(void *arg)
{
    run *r = arg;
    lagoon_v1_PartyServerFrame *f = calloc(1, sizeof(*f));
    lagoon_v1_PartyClientFrame cmd = lagoon_v1_PartyClientFrame_init_zero;
    for (int q = 0; q < r->ncommands && f != NULL; q++) {
        cmd.base_version = r->v0 + (uint64_t)q;
        cmd.which_command = lagoon_v1_PartyClientFrame_seek_tag;
        cmd.command.seek.position_ms = (q % 2) ? 60000 : 30000;
        r->sent_at[q] = bench_now_us();
        if (lagoon_Party_Join_send(r->ctl_stream, &cmd) != LAGOON_OK || ctl_until(r, r->v0 + (uint64_t)q + 1, f) != 0) {
            fprintf(stderr, "controller: command %d failed\n", q);
            r->failed = 1;
            break;
        }
        struct timespec ts = {r->interval_ms / 1000, (long)(r->interval_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    free(f);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Starts the party, joins every member and the controller, runs the commands, prints the row. */
static int measure(run *r, const bench_stack *stack, const bench_group_seed *sd)
{
    if (bench_stack_connect(stack, sd->tokens[0], &r->ctl) != 0)
        return -1;
    lagoon_v1_StartPartyRequest sr = lagoon_v1_StartPartyRequest_init_zero;
    lagoon_v1_PartyItem item = lagoon_v1_PartyItem_init_zero;
    snprintf(item.url, sizeof(item.url), "https://example.com/film");
    item.duration_ms = 7200000;
    sr.group_id = sd->group;
    sr.items = &item;
    sr.items_count = 1;
    lagoon_v1_PartyState p;
    int st = lagoon_Party_Start(r->ctl, &sr, &p);
    sr.items = NULL;
    sr.items_count = 0;
    if (st != LAGOON_OK) {
        fprintf(stderr, "Start: %s\n", lagoon_status_name(st));
        return -1;
    }
    r->party = p.id;
    const lagoon_async_handlers h = {on_frame, on_done};
    lagoon_v1_PartyClientFrame join = lagoon_v1_PartyClientFrame_init_zero;
    join.which_command = lagoon_v1_PartyClientFrame_join_tag;
    join.command.join.party_id = p.id;
    char err[256];
    uint16_t port = bench_stack_port(stack);
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < r->nmembers; i++) {
        member *m = &r->members[i];
        m->r = r;
        m->i = i;
        if (lagoon_async_connect(r->base, "127.0.0.1", port, NULL, &m->c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "member %d: %s\n", i, err);
            return -1;
        }
        lagoon_async_set_token(m->c, sd->tokens[1 + i]);
        if (lagoon_async_Party_Join(m->c, &join, &h, m) == NULL)
            return -1;
    }
    struct timeval limit = {JOIN_WAIT_S, 0};
    event_base_loopexit(r->base, &limit);
    event_base_dispatch(r->base);
    if (r->joined != r->nmembers) {
        fprintf(stderr, "only %d of %d members joined\n", r->joined, r->nmembers);
        return -1;
    }
    /* The controller joins last: its join's version is v0, the state after the queue it gets
     * (earlier joins still being stored reach it first). */
    if (lagoon_Party_Join(r->ctl, &join, &r->ctl_stream) != LAGOON_OK)
        return -1;
    lagoon_v1_PartyServerFrame *f = calloc(1, sizeof(*f));
    uint64_t v = 0;
    int queue = 0;
    for (int i = 0; f != NULL && i < 100000 && v == 0; i++) {
        if (lagoon_stream_recv_timeout(r->ctl_stream, f, 30000) != 1)
            break;
        if (f->which_body == lagoon_v1_PartyServerFrame_item_tag)
            queue = 1;
        else if (queue && f->which_body == lagoon_v1_PartyServerFrame_state_tag)
            v = f->body.state.version;
    }
    free(f);
    if (v == 0)
        return -1;
    r->v0 = v;
    for (int i = 0; i < r->nmembers; i++) /* those that saw it already */
        if (r->members[i].version >= v)
            r->settled++;
    if (r->settled < r->nmembers) {
        struct timeval limit1 = {JOIN_WAIT_S, 0};
        event_base_loopexit(r->base, &limit1);
        event_base_dispatch(r->base);
    }
    if (r->settled != r->nmembers) {
        fprintf(stderr, "only %d of %d members saw every join\n", r->settled, r->nmembers);
        return -1;
    }
    double join_s = (double)(bench_now_us() - t0) / 1e6;
    pthread_t th;
    if (pthread_create(&th, NULL, controller, r) != 0)
        return -1;
    struct timeval limit2 = {RUN_WAIT_S, 0};
    event_base_loopexit(r->base, &limit2);
    event_base_dispatch(r->base);
    pthread_join(th, NULL);
    size_t total = (size_t)r->ncommands * (size_t)r->nmembers, n = 0;
    uint64_t *lat = calloc(total, sizeof(uint64_t));
    if (lat == NULL)
        return -1;
    for (size_t k = 0; k < total; k++) {
        uint64_t at = r->state_at[k], sent = r->sent_at[k / (size_t)r->nmembers];
        if (at)
            lat[n++] = at > sent ? at - sent : 0;
    }
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    if (n > 0)
        printf("| %7d | %8d | %8zu | %8.2f | %8.2f | %8.2f | %8.1f |\n", r->nmembers + 1, r->ncommands, n,
               (double)lat[(n - 1) / 2] / 1000.0, (double)lat[(size_t)(0.99 * (double)(n - 1))] / 1000.0,
               (double)lat[n - 1] / 1000.0, join_s);
    free(lat);
    return r->delivered == total && !r->failed ? 0 : -1;
}

/* A party of `members`: members - 1 async ones and the controller. */
static int run_size(int members, int commands, int interval_ms)
{
    struct rlimit rl; /* 2 fds per member: the soft limit raised, the hard one left for the next size */
    rlim_t need = (rlim_t)(2 * members + 256);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || (rl.rlim_cur < need && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)) {
        fprintf(stderr, "party-bench: needs %lu file descriptors (ulimit -n)\n", (unsigned long)need);
        return -1;
    }
    if (rl.rlim_cur < need) {
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            perror("setrlimit");
            return -1;
        }
    }
    bench_stack stack;
    memset(&stack, 0, sizeof(stack));
    bench_group_seed sd = {.n = members, .prefix = "watcher"}; /* the first owns the group and controls */
    run r;
    memset(&r, 0, sizeof(r));
    r.nmembers = members - 1; /* and the controller */
    r.ncommands = commands;
    r.interval_ms = interval_ms;
    r.base = event_base_new();
    r.members = calloc((size_t)members, sizeof(*r.members));
    r.sent_at = calloc((size_t)commands, sizeof(uint64_t));
    r.state_at = calloc((size_t)commands * (size_t)r.nmembers, sizeof(uint64_t));
    sd.ids = calloc((size_t)sd.n, sizeof(uint64_t));
    sd.tokens = calloc((size_t)sd.n, ACCOUNT_TOKEN_CHARS + 1);
    int rc = -1;
    app_config acfg = {0}; /* durable commits: sync full */
    store_error err;
    if (r.base && r.members && r.sent_at && r.state_at && sd.ids && sd.tokens &&
        bench_stack_open(&stack, "/tmp/lagoon-partybench-XXXXXX", &acfg) == 0) {
        sd.a = stack.app;
        if (store_write(stack.app->db, bench_seed_group, &sd, &err) != LAGOON_OK) {
            fprintf(stderr, "seed: %s\n", err.message);
        } else {
            rpc_config cfg;
            bench_stack_config(&stack, &cfg);
            cfg.max_connections_per_address = (uint32_t)members + 16; /* every member from 127.0.0.1 */
            cfg.on_drain = app_on_drain;
            if (bench_stack_serve(&stack, &cfg) == 0)
                rc = measure(&r, &stack, &sd);
        }
    }
    for (int i = 0; i < r.nmembers && r.members != NULL; i++)
        if (r.members[i].c != NULL)
            lagoon_async_free(r.members[i].c);
    if (r.ctl != NULL)
        lagoon_close(r.ctl); /* its stream too */
    if (r.base != NULL)
        event_base_free(r.base);
    free(r.members);
    free(r.sent_at);
    free(r.state_at);
    if (bench_stack_stop(&stack) != 0)
        rc = -1;
    free(sd.ids);
    free(sd.tokens);
    return rc;
}

int main(int argc, char **argv)
{
    char sizes[BENCH_SIZES_MAX] = "100,1000";
    int commands = 50, interval_ms = 120;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            snprintf(sizes, sizeof(sizes), "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--commands") == 0)
            commands = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--interval-ms") == 0)
            interval_ms = atoi(argv[i + 1]);
        else
            argc = -1;
    }
    if (argc < 0 || argc % 2 == 0 || commands < 1 || commands > MAX_COMMANDS ||
        interval_ms < 1000 / PARTY_COMMANDS_PER_SECOND || interval_ms > 10000) {
        fprintf(stderr, "usage: party-bench [--sizes N,N (2..%d)] [--commands 1..%d] [--interval-ms %d..10000]\n",
                MAX_MEMBERS, MAX_COMMANDS, 1000 / PARTY_COMMANDS_PER_SECOND);
        return 2;
    }
    log_set_level(LOG_WARN);
    printf("A seek by one member of a party, one every %d ms (durable commits): from its send to each other member's "
           "state\n\n",
           interval_ms);
    printf("| %7s | %8s | %8s | %8s | %8s | %8s | %8s |\n", "members", "commands", "n", "p50 ms", "p99 ms", "max ms",
           "join s");
    printf("|---------|----------|----------|----------|----------|----------|----------|\n");
    for (char *p = sizes; *p;) {
        int size = atoi(p);
        if (size < 2 || size > MAX_MEMBERS) {
            fprintf(stderr, "party-bench: sizes from 2 to %d\n", MAX_MEMBERS);
            return 2;
        }
        if (run_size(size, commands, interval_ms) != 0)
            return 1;
        p = strchr(p, ',');
        if (p == NULL)
            break;
        p++;
    }
    return 0;
}
