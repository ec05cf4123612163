/* Party: watch parties through the real server. The members are simulated clients, each with a
 * clock of its own (seconds off the server's) and one-way delays of 10-150 ms each way, drawn
 * from a seeded generator: a client pretends it sent a frame `up` ms before the server got it
 * and saw the answer `down` ms after the server sent it, by the times it stamps and reports.
 * The server's clock is the test's (test_app), so every number here is exact and repeatable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lagoon_stubs.h"
#include "testserver.h"

#include "party.h"
#include "scheduler.h"

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

/* Simulated members per test, clock exchanges per member, frames read while waiting for one. */
#define SIMS 6
#define PINGS 24
#define FRAMES_MAX 4000
#define RECV_MS 5000
/* Agreement: samples after a scheduled start, and the bound on their spread (p99). */
#define SAMPLES 200
#define AGREE_MS 50

static test_app *T;
static lagoon_client *C;
static uint64_t seed = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
}

typedef struct sim {
    uint64_t uid;
    lagoon_client *c;
    lagoon_stream *s;
    int64_t offset;           /* the client's clock minus the server's (ms) */
    int64_t est_offset;       /* its estimate of server minus client */
    int64_t best_delay;       /* the round trip of that estimate's exchange */
    int64_t seen_at;          /* server time it saw its state (frame arrival plus its down delay) */
    lagoon_v1_PartyCorrection corr; /* its last correction */
    lagoon_v1_PartyState st;  /* the newest state it has */
    lagoon_v1_PartyRefusal ref; /* its last refusal */
    uint32_t up_base, down_base; /* its one-way delays: base plus jitter, within 10..150 ms */
    int refusals, corrections;
    uint32_t members_seen, items_seen;
    int ended;
    char name[16];
    char tok[65];
} sim;

static sim S[SIMS];
static lagoon_v1_PartyServerFrame F;
static lagoon_v1_PartyClientFrame CF;
static uint64_t group_id;

static uint32_t delay(uint32_t base)
{
    uint32_t d = base + (uint32_t)(rnd() % 100);
    return d > 150 ? 150 : d;
}

static int64_t now(void)
{
    return T->clock_ms;
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void users(void)
{
    C = test_client(T);
    for (int i = 0; i < SIMS; i++) {
        sim *m = &S[i];
        memset(m, 0, sizeof(*m));
        snprintf(m->name, sizeof(m->name), "sim%d", i);
        m->uid = test_verified_user(T, C, m->name, lagoon_v1_Role_STUDENT, m->tok);
        m->offset = (int64_t)(rnd() % 20000) - 10000; /* within +-10 s */
        m->up_base = 10 + (uint32_t)(rnd() % 20); /* asymmetric by up to 20 ms, jittered by up to 99 */
        m->down_base = 10 + (uint32_t)(rnd() % 20);
        m->best_delay = INT64_MAX;
    }
    lagoon_v1_CreateGroupRequest g = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(g.name, sizeof(g.name), "watchers");
    g.visibility = lagoon_v1_Group_Visibility_PUBLIC;
    lagoon_v1_Group grp;
    lagoon_set_token(C, S[0].tok);
    EXPECT(lagoon_Groups_Create(C, &g, &grp), LAGOON_OK, NULL);
    group_id = grp.id;
    for (int i = 1; i < SIMS - 1; i++) { /* the last sim stays outside the group */
        lagoon_v1_GroupRequest r = {.group_id = group_id};
        lagoon_v1_GroupMember gm;
        lagoon_set_token(C, S[i].tok);
        EXPECT(lagoon_Groups_Join(C, &r, &gm), LAGOON_OK, NULL);
    }
}

/* The scheduler's thread idles (an hour between looks): grace jobs run when a test runs them
 * (run_jobs), so what ended when is decided by the test alone. */
static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->sched_poll_ms = 3600 * 1000;
}

/* Runs the jobs due at the test's clock: how many ran. */
static uint32_t run_jobs(void)
{
    uint32_t ran = 0;
    store_error err;
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
    return ran;
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(tweak);
    users();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < SIMS; i++)
        if (S[i].c)
            lagoon_close(S[i].c);
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* A party of one item of duration_ms (an external URL) in the group, started by sims[0]. */
static uint64_t start_party(int who, uint32_t items, lagoon_v1_PartyState_Policy policy, int expect)
{
    lagoon_v1_StartPartyRequest r = lagoon_v1_StartPartyRequest_init_zero;
    r.group_id = group_id;
    r.items = calloc(items, sizeof(*r.items));
    r.items_count = (pb_size_t)items;
    for (uint32_t i = 0; i < items; i++) {
        snprintf(r.items[i].url, sizeof(r.items[i].url), "https://example.com/v/%u", i);
        r.items[i].duration_ms = 600000;
        snprintf(r.items[i].title, sizeof(r.items[i].title), "item %u", i);
    }
    r.policy = policy;
    lagoon_v1_PartyState p = lagoon_v1_PartyState_init_zero;
    lagoon_set_token(C, S[who].tok);
    int st = lagoon_Party_Start(C, &r, &p);
    free(r.items);
    r.items = NULL;
    r.items_count = 0;
    assert_int_equal(st, expect);
    return p.id;
}

/* ---- the simulated client ---------------------------------------------------------------------- */

/* Takes frame F as m sees it. */
static void take(sim *m)
{
    switch (F.which_body) {
    case lagoon_v1_PartyServerFrame_state_tag:
        if (F.body.state.version > m->st.version || F.body.state.ended) { /* never an older state */
            m->st = F.body.state;
            m->seen_at = now() + delay(m->down_base);
        }
        if (F.body.state.ended)
            m->ended = 1;
        break;
    case lagoon_v1_PartyServerFrame_refusal_tag:
        m->ref = F.body.refusal;
        m->refusals++;
        break;
    case lagoon_v1_PartyServerFrame_correction_tag:
        m->corr = F.body.correction;
        m->corrections++;
        break;
    case lagoon_v1_PartyServerFrame_member_tag:
        m->members_seen++;
        break;
    case lagoon_v1_PartyServerFrame_item_tag:
        m->items_seen++;
        break;
    default:
        break;
    }
}

/* Reads m's frames until cond(m) holds (bounded). 1 if it did. */
static int until(sim *m, int (*cond)(const sim *, uint64_t), uint64_t arg)
{
    for (int i = 0; i < FRAMES_MAX; i++) {
        if (cond(m, arg))
            return 1;
        memset(&F, 0, sizeof(F));
        if (lagoon_stream_recv_timeout(m->s, &F, RECV_MS) != 1)
            return cond(m, arg);
        take(m);
    }
    return cond(m, arg);
}

static int has_version(const sim *m, uint64_t v)
{
    return m->st.version >= v;
}

static int has_refusals(const sim *m, uint64_t n)
{
    return (uint64_t)m->refusals >= n;
}

static int has_corrections(const sim *m, uint64_t n)
{
    return (uint64_t)m->corrections >= n;
}

static int has_ended(const sim *m, uint64_t unused)
{
    (void)unused;
    return m->ended;
}

static void push(sim *m)
{
    assert_int_equal(lagoon_Party_Join_send(m->s, &CF), LAGOON_OK);
    memset(&CF, 0, sizeof(CF));
}

static int join(sim *m, uint64_t party_id)
{
    if (m->c == NULL)
        m->c = test_client(T);
    lagoon_set_token(m->c, m->tok);
    memset(&m->st, 0, sizeof(m->st));
    m->refusals = m->corrections = 0;
    m->members_seen = m->items_seen = 0;
    m->ended = 0;
    lagoon_v1_PartyClientFrame j = lagoon_v1_PartyClientFrame_init_zero;
    j.which_command = lagoon_v1_PartyClientFrame_join_tag;
    j.command.join.party_id = party_id;
    assert_int_equal(lagoon_Party_Join(m->c, &j, &m->s), LAGOON_OK);
    if (!until(m, has_version, 1)) { /* refused: the stream ended */
        int st = lagoon_stream_finish(m->s, NULL);
        m->s = NULL;
        return st;
    }
    return LAGOON_OK;
}

/* Leaves the party for good (half-close) and waits for the server to end the stream: its
 * status (OK), or -1 if it did not end. */
static int leave(sim *m)
{
    if (m->s == NULL)
        return LAGOON_OK;
    (void)lagoon_stream_close_send(m->s);
    int ended = 0;
    for (int i = 0; i < FRAMES_MAX && !ended; i++) {
        memset(&F, 0, sizeof(F));
        int r = lagoon_stream_recv_timeout(m->s, &F, RECV_MS);
        if (r == 1)
            take(m);
        else
            ended = 1;
    }
    int st = lagoon_stream_finish(m->s, NULL);
    m->s = NULL;
    return ended ? st : -1;
}

/* Drops the connection's stream (a lost network): still a member, no longer present. */
static void disconnect(sim *m)
{
    if (m->s)
        lagoon_stream_cancel(m->s);
    m->s = NULL;
}

/* A ping answered: every frame the server sent m before it has been read, and the version
 * that holds every command m sent before. */
static uint64_t fence(sim *m)
{
    CF.which_command = lagoon_v1_PartyClientFrame_ping_tag;
    CF.command.ping.client_time = -1;
    push(m);
    for (int i = 0; i < FRAMES_MAX; i++) {
        memset(&F, 0, sizeof(F));
        assert_int_equal(lagoon_stream_recv_timeout(m->s, &F, RECV_MS), 1);
        if (F.which_body == lagoon_v1_PartyServerFrame_pong_tag && F.body.pong.client_time == -1)
            return F.body.pong.version;
        take(m);
    }
    fail_msg("no pong");
    return 0;
}

static void all_at(int n, uint64_t v);

/* After a command of m: the sims in [0, n) have its outcome (commands from several connections
 * are ordered by their arrival, which the test does not control). */
static void settle(sim *m, int n)
{
    all_at(n, fence(m));
}

/* PINGS NTP exchanges, keeping the lowest-delay one of all m made so far (a client keeps
 * exchanging now and then), then the round trip told to the server. */
static void clock_sync(sim *m)
{
    for (int k = 0; k <= PINGS; k++) {
        int64_t up = delay(m->up_base), down = delay(m->down_base);
        int64_t t0 = now() + m->offset - up; /* sent `up` ms before the server has it */
        CF.which_command = lagoon_v1_PartyClientFrame_ping_tag;
        CF.command.ping.client_time = t0;
        CF.command.ping.rtt_ms = m->best_delay == INT64_MAX ? 0 : (uint32_t)m->best_delay;
        push(m);
        int got = 0;
        for (int i = 0; i < FRAMES_MAX && !got; i++) {
            memset(&F, 0, sizeof(F));
            assert_int_equal(lagoon_stream_recv_timeout(m->s, &F, RECV_MS), 1);
            if (F.which_body == lagoon_v1_PartyServerFrame_pong_tag && F.body.pong.client_time == t0)
                got = 1;
            else
                take(m);
        }
        assert_true(got);
        int64_t t1 = F.body.pong.received_at, t2 = F.body.pong.sent_at;
        int64_t t3 = now() + m->offset + down; /* seen `down` ms after the server sent it */
        int64_t d = (t3 - t0) - (t2 - t1);
        if (k < PINGS && d < m->best_delay) {
            m->best_delay = d;
            m->est_offset = ((t1 - t0) + (t2 - t3)) / 2;
        }
        test_clock_advance(T, 150); /* the next exchange later: the bucket refills meanwhile */
    }
    int64_t err = m->est_offset + m->offset;
    assert_true(err > -75 && err < 75); /* half the asymmetry at most */
}

/* Where m's player should be at true server time t: the formula of docs/API.md, on m's clock. */
static int64_t client_position(const sim *m, int64_t t)
{
    int64_t client_now = t + m->offset;
    int64_t server_now = client_now + m->est_offset;
    const lagoon_v1_PartyState *s = &m->st;
    if (!s->playing || server_now <= s->position_at)
        return s->position_ms;
    return s->position_ms + (int64_t)((double)(server_now - s->position_at) * s->rate);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* After the sims in [0, n) have the same version: their computed positions from the scheduled
 * start on agree within AGREE_MS at p99. Returns the p99 spread. */
static int64_t agreement(int n, int moving)
{
    const lagoon_v1_PartyState *ref = &S[0].st;
    for (int i = 1; i < n; i++)
        assert_int_equal(S[i].st.version, ref->version);
    int64_t from = ref->position_at > now() ? ref->position_at : now();
    static int64_t spread[SAMPLES];
    for (int k = 0; k < SAMPLES; k++) {
        int64_t t = from + 10 + (int64_t)k * 37;
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (int i = 0; i < n; i++) {
            int64_t p = client_position(&S[i], t);
            lo = p < lo ? p : lo;
            hi = p > hi ? p : hi;
        }
        spread[k] = hi - lo;
    }
    if (moving) { /* the positions do advance, at the party's rate */
        int64_t a = client_position(&S[0], from + 1000), b = client_position(&S[0], from + 2000);
        assert_true(b - a > (int64_t)(ref->rate * 1000) - AGREE_MS && b - a < (int64_t)(ref->rate * 1000) + AGREE_MS);
    }
    qsort(spread, SAMPLES, sizeof(spread[0]), cmp64);
    int64_t p99 = spread[SAMPLES * 99 / 100];
    if (p99 > AGREE_MS)
        for (int i = 0; i < n; i++)
            print_message("%s: offset %lld, estimate off by %lld (round trip %lld)\n", S[i].name,
                          (long long)S[i].offset, (long long)(S[i].est_offset + S[i].offset),
                          (long long)S[i].best_delay);
    assert_true(p99 <= AGREE_MS);
    return p99;
}

/* Every sim in [0, n) reads until version v. */
static void all_at(int n, uint64_t v)
{
    for (int i = 0; i < n; i++)
        assert_true(until(&S[i], has_version, v));
}

static void command(sim *m, pb_size_t which)
{
    CF.base_version = m->st.version;
    CF.which_command = which;
    push(m);
}

/* ---- tests --------------------------------------------------------------------------------------- */

/* Play, seek, rate and pause among members with clocks seconds apart and jittered delays: their
 * computed positions agree once the scheduled start has passed; the start is far enough ahead. */
static void test_sync_after_every_change(void **state)
{
    (void)state;
    int n = SIMS - 1;
    uint64_t pid = start_party(0, 2, lagoon_v1_PartyState_Policy_DONT_WAIT, LAGOON_OK);
    for (int i = 0; i < n; i++) {
        assert_int_equal(join(&S[i], pid), LAGOON_OK);
        clock_sync(&S[i]);
    }
    assert_int_equal(S[n - 1].items_seen, 2);
    assert_int_equal(S[n - 1].members_seen, (uint32_t)n);
    all_at(n, S[n - 1].st.version);
    int64_t max_rtt = 0;
    for (int i = 0; i < n; i++)
        max_rtt = S[i].best_delay > max_rtt ? S[i].best_delay : max_rtt;

    command(&S[1], lagoon_v1_PartyClientFrame_play_tag);
    int64_t sent = now();
    uint64_t v = S[1].st.version + 1;
    all_at(n, v);
    assert_true(S[0].st.playing);
    assert_true(S[0].st.position_at - sent >= PARTY_START_LEAD_MIN_MS);
    assert_true(S[0].st.position_at - sent >= max_rtt + PARTY_START_MARGIN_MS);
    for (int i = 0; i < n; i++) /* everyone heard of the start before it */
        assert_true(S[i].seen_at < S[i].st.position_at);
    int64_t p1 = agreement(n, 1);

    test_clock_advance(T, 5000);
    CF.command.seek.position_ms = 120000;
    command(&S[2], lagoon_v1_PartyClientFrame_seek_tag);
    all_at(n, ++v);
    assert_int_equal(S[0].st.position_ms, 120000);
    int64_t p2 = agreement(n, 1);

    test_clock_advance(T, 3000);
    for (int i = 0; i < n; i++) /* more exchanges while watching: better estimates */
        clock_sync(&S[i]);
    all_at(n, v);
    CF.command.set_rate.rate = 1.5;
    command(&S[3], lagoon_v1_PartyClientFrame_set_rate_tag);
    all_at(n, ++v);
    assert_true(S[0].st.rate == 1.5);
    int64_t p3 = agreement(n, 1);

    test_clock_advance(T, 2000);
    lagoon_v1_PartyState rated = S[0].st;
    command(&S[0], lagoon_v1_PartyClientFrame_pause_tag);
    all_at(n, ++v);
    assert_false(S[0].st.playing);
    /* paused where the party was when the server got the pause */
    assert_int_equal(S[0].st.position_ms, party_position_at(&rated, now()));
    assert_true(S[0].st.position_ms > 120000 + 2000 * 3 / 2);
    int64_t p4 = agreement(n, 0);
    print_message("p99 spread of the computed positions (ms): play %lld, seek %lld, rate %lld, pause %lld\n",
                  (long long)p1, (long long)p2, (long long)p3, (long long)p4);

    /* ended by a controller: every stream ends, the rows go */
    command(&S[4], lagoon_v1_PartyClientFrame_end_tag);
    for (int i = 0; i < n; i++)
        assert_true(until(&S[i], has_ended, 0));
    for (int i = 0; i < n; i++) {
        lagoon_stream_finish(S[i].s, NULL);
        S[i].s = NULL;
    }
    lagoon_v1_PartyIdRequest g = {.party_id = pid};
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[0].tok);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_NOT_FOUND, "party_id");
}

/* Stale commands: a seek or a next based on a version the position has moved since is refused
 * with the state; pause and rate apply on top. */
static void test_stale_commands(void **state)
{
    (void)state;
    uint64_t pid = start_party(0, 3, lagoon_v1_PartyState_Policy_DONT_WAIT, LAGOON_OK);
    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    all_at(2, S[1].st.version);
    uint64_t base = S[1].st.version;

    CF.command.seek.position_ms = 1000;
    command(&S[0], lagoon_v1_PartyClientFrame_seek_tag);
    all_at(2, base + 1);
    /* B's seek was based on `base`: the position moved since */
    CF.base_version = base;
    CF.which_command = lagoon_v1_PartyClientFrame_seek_tag;
    CF.command.seek.position_ms = 5000;
    push(&S[1]);
    assert_true(until(&S[1], has_refusals, 1));
    assert_int_equal(S[1].ref.code, LAGOON_ABORTED);
    assert_int_equal(S[1].ref.version, base + 1);
    /* the refusal came with the state: B's is the current one */
    assert_true(until(&S[1], has_version, base + 1));
    assert_int_equal(S[1].st.position_ms, 1000);

    /* play, then a pause and a rate based on the old version: applied on top */
    command(&S[0], lagoon_v1_PartyClientFrame_play_tag);
    all_at(2, base + 2);
    test_clock_advance(T, 1000);
    CF.base_version = base;
    CF.which_command = lagoon_v1_PartyClientFrame_set_rate_tag;
    CF.command.set_rate.rate = 2.0;
    push(&S[1]);
    all_at(2, base + 3);
    assert_true(S[0].st.rate == 2.0);
    CF.base_version = base;
    CF.which_command = lagoon_v1_PartyClientFrame_pause_tag;
    push(&S[1]);
    all_at(2, base + 4);
    assert_false(S[0].st.playing);

    /* two "next" on the same version: the later is stale (it would skip two items) */
    uint64_t v = S[0].st.version;
    CF.base_version = v;
    CF.which_command = lagoon_v1_PartyClientFrame_next_tag;
    push(&S[0]);
    all_at(2, v + 1);
    CF.base_version = v;
    CF.which_command = lagoon_v1_PartyClientFrame_next_tag;
    push(&S[1]);
    assert_true(until(&S[1], has_refusals, 2));
    assert_int_equal(S[1].ref.code, LAGOON_ABORTED);
    assert_int_equal(S[0].st.index, 1);
    /* a jump names its item: applied on top of any version */
    CF.base_version = base;
    CF.which_command = lagoon_v1_PartyClientFrame_jump_tag;
    CF.command.jump.index = 2;
    push(&S[1]);
    all_at(2, v + 2);
    assert_int_equal(S[0].st.index, 2);
    /* a version from the future */
    CF.base_version = v + 100;
    CF.which_command = lagoon_v1_PartyClientFrame_pause_tag;
    push(&S[1]);
    assert_true(until(&S[1], has_refusals, 3));
    assert_string_equal(S[1].ref.field, "base_version");
    command(&S[0], lagoon_v1_PartyClientFrame_end_tag);
    assert_true(until(&S[1], has_ended, 0));
    leave(&S[0]);
    leave(&S[1]);
}

/* One bad command gets INVALID_ARGUMENT naming the field and the stream goes on. */
static void expect_refusal(sim *m, int code, const char *field)
{
    uint64_t n = (uint64_t)m->refusals + 1;
    assert_true(until(m, has_refusals, n));
    assert_int_equal(m->ref.code, code);
    if (field)
        assert_string_equal(m->ref.field, field);
}

static void test_bad_input_and_limits(void **state)
{
    (void)state;
    /* the sim outside the group sees no party, and cannot start one */
    uint64_t pid = start_party(0, 2, lagoon_v1_PartyState_Policy_DONT_WAIT, LAGOON_OK);
    assert_int_equal(join(&S[SIMS - 1], pid), LAGOON_NOT_FOUND);
    lagoon_v1_StartPartyRequest r = lagoon_v1_StartPartyRequest_init_zero;
    r.group_id = group_id;
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[SIMS - 1].tok);
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_INVALID_ARGUMENT, "items");
    lagoon_v1_PartyItem it = {.duration_ms = 0};
    r.items = &it;
    r.items_count = 1;
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_INVALID_ARGUMENT, "items[0].url");
    assert_true(test_has_violation(C, "items[0].duration_ms"));
    snprintf(it.url, sizeof(it.url), "https://example.com/x");
    it.duration_ms = 1000;
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_NOT_FOUND, "group_id");
    r.index = 1;
    lagoon_set_token(C, S[1].tok);
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_INVALID_ARGUMENT, "index");
    r.items = NULL;
    r.items_count = 0;

    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    sim *m = &S[1];
    CF.command.seek.position_ms = 600001;
    command(m, lagoon_v1_PartyClientFrame_seek_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "seek.position_ms");
    CF.command.set_rate.rate = 4.5;
    command(m, lagoon_v1_PartyClientFrame_set_rate_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "set_rate.rate");
    CF.command.set_rate.rate = 0.2;
    command(m, lagoon_v1_PartyClientFrame_set_rate_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "set_rate.rate");
    CF.command.jump.index = 2;
    command(m, lagoon_v1_PartyClientFrame_jump_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "jump.index");
    command(m, lagoon_v1_PartyClientFrame_previous_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "previous");
    CF.command.settings.rate_threshold_ms = 5000;
    command(m, lagoon_v1_PartyClientFrame_settings_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "settings.rate_threshold_ms");
    CF.command.report.position_ms = -1;
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    expect_refusal(m, LAGOON_INVALID_ARGUMENT, "report.position_ms");
    CF.command.control.restricted = true;
    command(m, lagoon_v1_PartyClientFrame_control_tag);
    expect_refusal(m, LAGOON_PERMISSION_DENIED, "control");
    /* the stream is still open: a good command works */
    uint64_t v = m->st.version;
    CF.command.seek.position_ms = 600000;
    command(m, lagoon_v1_PartyClientFrame_seek_tag);
    assert_true(until(m, has_version, v + 1));

    /* position reports: one per PARTY_REPORT_INTERVAL_MS */
    test_clock_advance(T, 1000);
    CF.command.report.position_ms = 10;
    CF.command.report.measured_at = now();
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    CF.command.report.position_ms = 10;
    CF.command.report.measured_at = now();
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    expect_refusal(m, LAGOON_RESOURCE_EXHAUSTED, "report");

    /* commands: PARTY_COMMANDS_BURST at once (the clock still), then RESOURCE_EXHAUSTED */
    test_clock_advance(T, 10000);
    int before = m->refusals;
    for (int i = 0; i < PARTY_COMMANDS_BURST + 5; i++) {
        CF.command.ping.client_time = i;
        command(m, lagoon_v1_PartyClientFrame_ping_tag);
    }
    assert_true(until(m, has_refusals, (uint64_t)before + 5));
    assert_int_equal(m->ref.code, LAGOON_RESOURCE_EXHAUSTED);
    assert_true(m->ref.retry_after_ms > 0);
    test_clock_advance(T, 1000);
    v = m->st.version;
    command(m, lagoon_v1_PartyClientFrame_play_tag);
    assert_true(until(m, has_version, v + 1));
    assert_int_equal(m->refusals, before + 5);

    /* at most PARTY_GROUP_PARTIES_MAX parties in a group */
    for (int i = 1; i < PARTY_GROUP_PARTIES_MAX; i++)
        start_party(2, 1, 0, LAGOON_OK);
    start_party(2, 1, 0, LAGOON_RESOURCE_EXHAUSTED);
    /* ... until those nobody joined pass their grace period (the one S[1] is in stays) */
    assert_int_equal(leave(m), LAGOON_OK);
    test_clock_advance(T, PARTY_GRACE_MS);
    uint64_t again = start_party(2, 1, 0, LAGOON_OK);
    assert_int_equal(join(&S[1], pid), LAGOON_NOT_FOUND); /* its grace passed too */
    assert_int_equal(join(&S[1], again), LAGOON_OK);
    command(&S[1], lagoon_v1_PartyClientFrame_end_tag);
    assert_true(until(&S[1], has_ended, 0));
    leave(&S[1]);
}

/* DONT_WAIT: a late joiner and a buffering member catch up alone. WAIT_FOR_EVERYONE: either
 * holds the party until it is ready, then the party starts again, scheduled. */
static void test_policies(void **state)
{
    (void)state;
    uint64_t pid = start_party(0, 1, lagoon_v1_PartyState_Policy_DONT_WAIT, LAGOON_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(join(&S[i], pid), LAGOON_OK);
        clock_sync(&S[i]);
        command(&S[i], lagoon_v1_PartyClientFrame_ready_tag);
        settle(&S[i], i + 1);
    }
    command(&S[0], lagoon_v1_PartyClientFrame_play_tag);
    settle(&S[0], 3);
    assert_true(S[0].st.playing);
    lagoon_v1_PartyState playing = S[0].st;
    test_clock_advance(T, 4000);
    /* a late joiner: the party goes on as it was */
    assert_int_equal(join(&S[3], pid), LAGOON_OK);
    clock_sync(&S[3]);
    all_at(4, S[3].st.version);
    assert_true(S[0].st.playing);
    assert_int_equal(S[0].st.position_at, playing.position_at);
    assert_int_equal(S[0].st.position_ms, playing.position_ms);
    agreement(4, 1);
    /* a member buffers: nobody else is interrupted */
    command(&S[1], lagoon_v1_PartyClientFrame_buffering_tag);
    settle(&S[1], 4);
    assert_true(S[0].st.playing);
    assert_int_equal(S[0].st.position_at, playing.position_at);

    /* WAIT_FOR_EVERYONE: the buffering one holds the party */
    CF.command.settings.policy = lagoon_v1_PartyState_Policy_WAIT_FOR_EVERYONE;
    command(&S[0], lagoon_v1_PartyClientFrame_settings_tag);
    settle(&S[0], 4);
    assert_false(S[0].st.playing);
    assert_true(S[0].st.waiting);
    int64_t held = S[0].st.position_ms;
    test_clock_advance(T, 3000);
    command(&S[1], lagoon_v1_PartyClientFrame_ready_tag);
    settle(&S[1], 4);
    assert_false(S[0].st.playing); /* the late joiner never said ready */
    command(&S[3], lagoon_v1_PartyClientFrame_ready_tag);
    int64_t sent = now();
    settle(&S[3], 4);
    assert_true(S[0].st.playing);
    assert_false(S[0].st.waiting);
    assert_int_equal(S[0].st.position_ms, held);
    assert_true(S[0].st.position_at - sent >= PARTY_START_LEAD_MIN_MS);
    agreement(4, 1);
    /* a late joiner under WAIT_FOR_EVERYONE: the party waits for it */
    test_clock_advance(T, 2000);
    assert_int_equal(join(&S[4], pid), LAGOON_OK);
    all_at(5, S[4].st.version);
    assert_false(S[0].st.playing);
    assert_true(S[0].st.waiting);
    command(&S[4], lagoon_v1_PartyClientFrame_ready_tag);
    settle(&S[4], 5);
    assert_true(S[0].st.playing);

    /* drift: a member far off is told to seek, a little off to change its rate a little */
    test_clock_advance(T, 2000);
    sim *m = &S[2];
    int64_t at = now() - 100;
    CF.command.report.measured_at = at;
    CF.command.report.position_ms = party_position_at(&m->st, at) + 1000;
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    assert_true(until(m, has_corrections, 1));
    assert_int_equal(m->corr.kind, lagoon_v1_PartyCorrection_Kind_SEEK);
    assert_int_equal(m->corr.drift_ms, 1000);
    test_clock_advance(T, PARTY_REPORT_INTERVAL_MS);
    at = now() - 100;
    CF.command.report.measured_at = at;
    CF.command.report.position_ms = party_position_at(&m->st, at) + 200;
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    assert_true(until(m, has_corrections, 2));
    assert_int_equal(m->corr.kind, lagoon_v1_PartyCorrection_Kind_RATE);
    assert_true(m->corr.rate < 1.0 && m->corr.rate > 0.7); /* ahead: slower for a while */
    assert_int_equal(m->corr.duration_ms, PARTY_RATE_CORRECTION_MS);
    test_clock_advance(T, PARTY_REPORT_INTERVAL_MS);
    at = now() - 100;
    CF.command.report.measured_at = at;
    CF.command.report.position_ms = party_position_at(&m->st, at) - 30; /* within the threshold */
    command(m, lagoon_v1_PartyClientFrame_report_tag);
    fence(m);
    assert_int_equal(m->corrections, 2);
    /* measured at the ends of time (hostile clocks): not compared, no overflow (UBSan) */
    const int64_t ends[] = {INT64_MIN, INT64_MAX};
    for (int k = 0; k < 2; k++) {
        test_clock_advance(T, PARTY_REPORT_INTERVAL_MS);
        CF.command.report.measured_at = ends[k];
        CF.command.report.position_ms = 10;
        command(m, lagoon_v1_PartyClientFrame_report_tag);
        fence(m); /* taken at this clock, not the next one */
    }
    assert_int_equal(m->corrections, 2);
    assert_int_equal(m->refusals, 0);
    command(&S[0], lagoon_v1_PartyClientFrame_end_tag);
    for (int i = 0; i < 5; i++)
        leave(&S[i]);
}

/* Hosting passes to the longest-present member; the starter may restrict control. */
static void test_host_and_control(void **state)
{
    (void)state;
    uint64_t pid = start_party(0, 1, 0, LAGOON_OK);
    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    test_clock_advance(T, 10);
    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    test_clock_advance(T, 10);
    assert_int_equal(join(&S[2], pid), LAGOON_OK);
    all_at(3, S[2].st.version);
    assert_int_equal(S[2].st.host_id, S[0].uid);
    disconnect(&S[0]); /* the host's connection goes */
    uint64_t gone = S[2].st.version + 1;
    assert_true(until(&S[1], has_version, gone) && until(&S[2], has_version, gone));
    assert_int_equal(S[1].st.host_id, S[1].uid);
    assert_int_equal(S[1].st.members_present, 2);
    /* back: present again, but the newest; B stays host */
    test_clock_advance(T, 10);
    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    all_at(3, S[0].st.version);
    assert_int_equal(S[0].st.host_id, S[1].uid);

    /* the starter restricts control to itself and C */
    CF.command.control.restricted = true;
    CF.command.control.controllers[0] = S[2].uid;
    CF.command.control.controllers_count = 1;
    command(&S[0], lagoon_v1_PartyClientFrame_control_tag);
    all_at(3, S[0].st.version + 1);
    assert_true(S[1].st.control_restricted);
    command(&S[1], lagoon_v1_PartyClientFrame_play_tag);
    expect_refusal(&S[1], LAGOON_PERMISSION_DENIED, "play");
    command(&S[1], lagoon_v1_PartyClientFrame_end_tag);
    expect_refusal(&S[1], LAGOON_PERMISSION_DENIED, "end");
    command(&S[2], lagoon_v1_PartyClientFrame_play_tag);
    all_at(3, S[2].st.version + 1);
    assert_true(S[1].st.playing);
    /* B leaves for good (half-close): the others see it go */
    uint64_t v = S[0].st.version;
    assert_int_equal(leave(&S[1]), LAGOON_OK);
    assert_true(until(&S[0], has_version, v + 1));
    assert_int_equal(S[0].st.host_id, S[2].uid); /* longest present of those left */
    command(&S[2], lagoon_v1_PartyClientFrame_end_tag);
    assert_true(until(&S[0], has_ended, 0));
    leave(&S[0]);
    leave(&S[2]);
}

/* A video of the user of tok through Videos/Create: its id. */
static uint64_t video(const char *tok, int pub, uint32_t seconds)
{
    lagoon_v1_CreateVideoRequest *r = calloc(1, sizeof(*r));
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    assert_true(r && v);
    snprintf(r->title, sizeof(r->title), "Nocturne in E flat");
    snprintf(r->url, sizeof(r->url), "https://www.youtube.com/watch?v=nocturne");
    r->duration_seconds = seconds;
    r->is_public = pub;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Videos_Create(C, r, v), LAGOON_OK, NULL);
    uint64_t id = v->id;
    free(r);
    free(v);
    return id;
}

/* Lagoon videos as items: one the group may watch, its duration and title taken from it; and a
 * member who leaves the group is out of the party at its next command. */
static void test_videos_and_group_members(void **state)
{
    (void)state;
    uint64_t pub = video(S[0].tok, 1, 120), mine = video(S[0].tok, 0, 0), theirs = video(S[1].tok, 0, 60);
    lagoon_v1_StartPartyRequest r = lagoon_v1_StartPartyRequest_init_zero;
    lagoon_v1_PartyItem items[2];
    memset(items, 0, sizeof(items));
    r.group_id = group_id;
    r.items = items;
    r.items_count = 2;
    items[0].video_id = pub;
    items[1].video_id = theirs; /* private, not shared with the starter */
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[0].tok);
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_NOT_FOUND, "items[1].video_id");
    items[1].video_id = mine; /* the starter's own, of unknown duration */
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_INVALID_ARGUMENT, "items[1].duration_ms");
    items[1].duration_ms = 5000;
    EXPECT(lagoon_Party_Start(C, &r, &p), LAGOON_OK, NULL);
    r.items = NULL;
    r.items_count = 0;
    assert_int_equal(join(&S[0], p.id), LAGOON_OK);
    assert_int_equal(join(&S[4], p.id), LAGOON_OK);
    fence(&S[0]);
    assert_int_equal(S[0].items_seen, 2);
    CF.command.seek.position_ms = 120001; /* the video's 120 s, and no more */
    command(&S[0], lagoon_v1_PartyClientFrame_seek_tag);
    expect_refusal(&S[0], LAGOON_INVALID_ARGUMENT, "seek.position_ms");

    /* the owner removes S[4] from the group: its next command ends its stream */
    lagoon_v1_GroupUserRequest gr = {.group_id = group_id, .user_id = S[4].uid};
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, S[0].tok);
    EXPECT(lagoon_Groups_Remove(C, &gr, &ge), LAGOON_OK, NULL);
    uint64_t v = S[0].st.version;
    command(&S[4], lagoon_v1_PartyClientFrame_pause_tag);
    assert_int_equal(leave(&S[4]), LAGOON_NOT_FOUND);
    assert_true(until(&S[0], has_version, v + 1)); /* it left the party */
    assert_int_equal(S[0].st.members_present, 1);
    command(&S[0], lagoon_v1_PartyClientFrame_end_tag);
    assert_true(until(&S[0], has_ended, 0));
    leave(&S[0]);
    lagoon_v1_GroupRequest jr = {.group_id = group_id};
    lagoon_v1_GroupMember gm;
    lagoon_set_token(C, S[4].tok);
    EXPECT(lagoon_Groups_Join(C, &jr, &gm), LAGOON_OK, NULL);
}

/* A text to the group's chat from the user of tok: its media position (checks its party). */
static int64_t chat(const char *tok, const char *text, uint64_t party_id)
{
    lagoon_v1_SendGroupMessageRequest *r = calloc(1, sizeof(*r));
    lagoon_v1_GroupMessage *m = calloc(1, sizeof(*m));
    assert_true(r && m);
    r->group_id = group_id;
    r->which_content = lagoon_v1_SendGroupMessageRequest_text_tag;
    snprintf(r->content.text.text, sizeof(r->content.text.text), "%s", text);
    lagoon_set_token(C, tok);
    EXPECT(lagoon_GroupChat_Send(C, r, m), LAGOON_OK, NULL);
    assert_int_equal(m->party_id, party_id);
    int64_t pos = m->media_position_ms;
    free(r);
    free(m);
    return pos;
}

/* A subscription of the user of tok, once it follows the group's topic (on *client). */
static lagoon_stream *subscribe(const char *tok, lagoon_client **client, lagoon_v1_Event *ev)
{
    *client = test_client(T);
    lagoon_set_token(*client, tok);
    lagoon_v1_SubscribeRequest sr = lagoon_v1_SubscribeRequest_init_zero;
    lagoon_stream *sub;
    assert_int_equal(lagoon_Events_Subscribe(*client, &sr, &sub), LAGOON_OK);
    int joined = 0;
    for (int i = 0; i < 50 && !joined; i++) {
        assert_int_equal(lagoon_stream_recv_timeout(sub, ev, RECV_MS), 1);
        joined = ev->which_payload == lagoon_v1_Event_membership_tag && ev->topic.id == group_id;
    }
    assert_true(joined);
    return sub;
}

/* Reads sub until the event `tag` of party pid (party_started or party_ended) is in *ev: 1, or
 * 0 if the stream had none within RECV_MS of the last event. */
static int await_party_event(lagoon_stream *sub, lagoon_v1_Event *ev, pb_size_t tag, uint64_t pid)
{
    for (int i = 0; i < 200; i++) {
        memset(ev, 0, sizeof(*ev));
        if (lagoon_stream_recv_timeout(sub, ev, RECV_MS) != 1)
            return 0;
        if (ev->which_payload == tag && tag == lagoon_v1_Event_party_started_tag &&
            ev->payload.party_started.party_id == pid)
            return 1;
        if (ev->which_payload == tag && tag == lagoon_v1_Event_party_ended_tag && ev->payload.party_ended.party_id == pid)
            return 1;
    }
    return 0;
}

/* A restart mid-party: the state is read back as it was stored, the members rejoin and go on;
 * a group member's subscription saw the party start. */
static void test_restart_mid_party(void **state)
{
    (void)state;
    lagoon_client *sc;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    /* the subscription follows the group's topic before the party starts */
    lagoon_stream *sub = subscribe(S[3].tok, &sc, ev);
    uint64_t pid = start_party(0, 2, 0, LAGOON_OK);
    assert_true(await_party_event(sub, ev, lagoon_v1_Event_party_started_tag, pid));
    assert_int_equal(ev->payload.party_started.starter_id, S[0].uid);
    free(ev);
    lagoon_stream_cancel(sub);
    lagoon_close(sc);

    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    all_at(2, S[1].st.version);
    CF.command.jump.index = 1;
    command(&S[0], lagoon_v1_PartyClientFrame_jump_tag);
    all_at(2, S[0].st.version + 1);
    command(&S[0], lagoon_v1_PartyClientFrame_play_tag);
    all_at(2, S[0].st.version + 1);
    CF.command.set_rate.rate = 0.5;
    command(&S[1], lagoon_v1_PartyClientFrame_set_rate_tag);
    all_at(2, S[1].st.version + 1);
    lagoon_v1_PartyState before = S[0].st;

    for (int i = 0; i < 2; i++) {
        disconnect(&S[i]);
        lagoon_close(S[i].c);
        S[i].c = NULL;
    }
    lagoon_close(C);
    test_clock_advance(T, 2000);
    test_app_restart(T, tweak);
    C = test_client(T);
    lagoon_v1_PartyIdRequest g = {.party_id = pid};
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[1].tok);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_OK, NULL);
    /* stored as the last change left it (the disconnects were changes too) */
    assert_true(p.version >= before.version);
    assert_int_equal(p.index, 1);
    assert_true(p.playing);
    assert_true(p.rate == 0.5);
    assert_int_equal(party_position_at(&p, now()), party_position_at(&before, now()));

    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    assert_int_equal(S[1].items_seen, 2);
    assert_int_equal(S[1].members_seen, 2);
    assert_true(S[1].st.version > p.version);
    assert_int_equal(S[1].st.members_present, 1);
    assert_int_equal(S[1].st.host_id, S[1].uid);
    assert_int_equal(party_position_at(&S[1].st, now() + 500), party_position_at(&before, now() + 500));
    /* the group's chat goes on beside it: a message sent now reads "at <position>" */
    test_clock_advance(T, 3000);
    assert_int_equal(chat(S[2].tok, "what a chord", pid), party_position_at(&before, now()));
    /* the grace period: with nobody present for PARTY_GRACE_MS the party ends */
    assert_int_equal(leave(&S[1]), LAGOON_OK);
    test_clock_advance(T, PARTY_GRACE_MS);
    assert_int_equal(join(&S[1], pid), LAGOON_NOT_FOUND);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_NOT_FOUND, "party_id");
    assert_int_equal(chat(S[2].tok, "and after", 0), 0); /* no party runs: no stamp */
}

/* The grace period runs out on its own: a party its last member left ends PARTY_GRACE_MS later
 * (its grace job), with nobody coming back to Join or Start; the group's members see it end.
 * While someone is present the job only looks again. */
static void test_grace_ends_the_party(void **state)
{
    (void)state;
    lagoon_client *sc;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    lagoon_stream *sub = subscribe(S[3].tok, &sc, ev);
    uint64_t pid = start_party(0, 1, 0, LAGOON_OK);
    assert_true(await_party_event(sub, ev, lagoon_v1_Event_party_started_tag, pid));
    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    /* present past the grace period of its start: the job runs and the party stays */
    test_clock_advance(T, PARTY_GRACE_MS + 1000);
    assert_true(run_jobs() >= 1);
    lagoon_v1_PartyIdRequest g = {.party_id = pid};
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[1].tok);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_OK, NULL);
    assert_int_equal(p.members_present, 1);

    assert_int_equal(leave(&S[0]), LAGOON_OK);
    test_clock_advance(T, PARTY_GRACE_MS - 1);
    run_jobs();
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_OK, NULL); /* within its grace period */
    test_clock_advance(T, 1);
    assert_true(run_jobs() >= 1);
    assert_true(await_party_event(sub, ev, lagoon_v1_Event_party_ended_tag, pid));
    assert_int_equal(ev->payload.party_ended.group_id, group_id);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_NOT_FOUND, "party_id");
    free(ev);
    lagoon_stream_cancel(sub);
    lagoon_close(sc);
}

/* The server stops while a member is connected (its departure never stored, as after kill -9):
 * read back, the party counts nobody present, and ends a grace period after the restart if
 * nobody rejoins, instead of holding one of the group's PARTY_GROUP_PARTIES_MAX for ever. */
static void test_restart_with_members_connected(void **state)
{
    (void)state;
    uint64_t pid = start_party(0, 1, 0, LAGOON_OK);
    assert_int_equal(join(&S[0], pid), LAGOON_OK);
    assert_int_equal(join(&S[1], pid), LAGOON_OK);
    fence(&S[0]);
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
    for (int i = 0; i < 2; i++) { /* their connections went with the server */
        lagoon_stream_cancel(S[i].s);
        S[i].s = NULL;
        lagoon_close(S[i].c);
        S[i].c = NULL;
    }
    lagoon_v1_PartyIdRequest g = {.party_id = pid};
    lagoon_v1_PartyState p;
    lagoon_set_token(C, S[1].tok);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_OK, NULL);
    test_clock_advance(T, PARTY_GRACE_MS);
    assert_true(run_jobs() >= 1); /* the start's job: nobody is connected, the grace period starts */
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_OK, NULL);
    assert_int_equal(p.members_present, 0);
    test_clock_advance(T, PARTY_GRACE_MS);
    assert_true(run_jobs() >= 1);
    EXPECT(lagoon_Party_Get(C, &g, &p), LAGOON_NOT_FOUND, "party_id");
}

/* Four calls at once on a connection: for test_refused_joins_free_their_calls. */
#define FEW_CALLS 4
static void tweak_few_calls(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    cfg->max_concurrent_calls = FEW_CALLS;
}

/* A Join refused at its first frame ends on both sides: the client library ends its half of the
 * call (a CANCEL), so its id does not stay in use on the server (it did until the connection
 * closed or stream-idle-timeout-ms passed, and a fifth refused Join on one connection was a
 * protocol violation that closed it). */
static void test_refused_joins_free_their_calls(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_few_calls);
    lagoon_client *c = test_client(t);
    char tok[65];
    test_verified_user(t, c, "solo", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(c, tok);
    for (int i = 0; i < 3 * FEW_CALLS; i++) {
        lagoon_v1_PartyClientFrame j = lagoon_v1_PartyClientFrame_init_zero;
        j.which_command = i % 2 ? lagoon_v1_PartyClientFrame_join_tag : lagoon_v1_PartyClientFrame_play_tag;
        j.command.join.party_id = 424242;
        lagoon_stream *s;
        assert_int_equal(lagoon_Party_Join(c, &j, &s), LAGOON_OK);
        memset(&F, 0, sizeof(F));
        assert_int_equal(lagoon_stream_recv_timeout(s, &F, RECV_MS), 0); /* refused: ended */
        assert_int_equal(lagoon_stream_finish(s, NULL), i % 2 ? LAGOON_NOT_FOUND : LAGOON_INVALID_ARGUMENT);
    }
    lagoon_v1_PartyIdRequest g = {.party_id = 424242};
    lagoon_v1_PartyState p;
    assert_int_equal(lagoon_Party_Get(c, &g, &p), LAGOON_NOT_FOUND); /* the connection goes on */
    lagoon_close(c);
    test_app_free(t);
}

/* A party of at most this many members: for test_members_cap (the real cap, 1 000, is the bench's). */
#define FEW_MEMBERS 3
static void tweak_few_members(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->party_members_max = FEW_MEMBERS;
}

/* Reads s until a state newer than *v with `present` members present (its version into *v). */
static void await_present(lagoon_stream *s, uint64_t *v, uint32_t present)
{
    for (int k = 0; k < FRAMES_MAX; k++) {
        memset(&F, 0, sizeof(F));
        assert_int_equal(lagoon_stream_recv_timeout(s, &F, RECV_MS), 1);
        if (F.which_body != lagoon_v1_PartyServerFrame_state_tag || F.body.state.version <= *v)
            continue;
        *v = F.body.state.version;
        if (F.body.state.members_present == present)
            return;
    }
    fail_msg("no state with %u members present", (unsigned)present);
}

/* A Join beyond the party's members cap is RESOURCE_EXHAUSTED; a member that dropped its
 * connection still counts (it may come back), one that left does not. */
static void test_members_cap(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_few_members);
    lagoon_client *c = test_client(t);
    static char tok[FEW_MEMBERS + 1][65];
    lagoon_client *mc[FEW_MEMBERS + 1];
    lagoon_stream *ms[FEW_MEMBERS + 1];
    for (int i = 0; i <= FEW_MEMBERS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "crowd%d", i);
        test_verified_user(t, c, name, lagoon_v1_Role_STUDENT, tok[i]);
        mc[i] = test_client(t);
        lagoon_set_token(mc[i], tok[i]);
    }
    lagoon_v1_CreateGroupRequest g = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(g.name, sizeof(g.name), "crowd");
    g.visibility = lagoon_v1_Group_Visibility_PUBLIC;
    lagoon_v1_Group grp;
    lagoon_set_token(c, tok[0]);
    EXPECT(lagoon_Groups_Create(c, &g, &grp), LAGOON_OK, NULL);
    for (int i = 1; i <= FEW_MEMBERS; i++) {
        lagoon_v1_GroupRequest r = {.group_id = grp.id};
        lagoon_v1_GroupMember gm;
        lagoon_set_token(c, tok[i]);
        EXPECT(lagoon_Groups_Join(c, &r, &gm), LAGOON_OK, NULL);
    }
    lagoon_v1_StartPartyRequest r = lagoon_v1_StartPartyRequest_init_zero;
    lagoon_v1_PartyItem it = {.duration_ms = 1000};
    snprintf(it.url, sizeof(it.url), "https://example.com/crowd");
    r.group_id = grp.id;
    r.items = &it;
    r.items_count = 1;
    lagoon_v1_PartyState p;
    lagoon_set_token(c, tok[0]);
    EXPECT(lagoon_Party_Start(c, &r, &p), LAGOON_OK, NULL);
    r.items = NULL;
    r.items_count = 0;
    lagoon_v1_PartyClientFrame j = lagoon_v1_PartyClientFrame_init_zero;
    j.which_command = lagoon_v1_PartyClientFrame_join_tag;
    j.command.join.party_id = p.id;
    /* joins: the first FEW_MEMBERS get their state, the next is refused */
    for (int i = 0; i <= FEW_MEMBERS; i++) {
        assert_int_equal(lagoon_Party_Join(mc[i], &j, &ms[i]), LAGOON_OK);
        memset(&F, 0, sizeof(F));
        int got = 0;
        for (int k = 0; k < FRAMES_MAX && !got; k++) {
            if (lagoon_stream_recv_timeout(ms[i], &F, RECV_MS) != 1)
                break;
            got = F.which_body == lagoon_v1_PartyServerFrame_state_tag;
        }
        assert_int_equal(got, i < FEW_MEMBERS);
        if (i == FEW_MEMBERS) {
            assert_int_equal(lagoon_stream_finish(ms[i], NULL), LAGOON_RESOURCE_EXHAUSTED);
            ms[i] = NULL;
        }
    }
    /* one drops its connection: still a member, the newcomer is still refused */
    uint64_t v = 0;
    await_present(ms[0], &v, FEW_MEMBERS);
    lagoon_stream_cancel(ms[1]);
    ms[1] = NULL;
    await_present(ms[0], &v, FEW_MEMBERS - 1);
    assert_int_equal(lagoon_Party_Join(mc[FEW_MEMBERS], &j, &ms[FEW_MEMBERS]), LAGOON_OK);
    memset(&F, 0, sizeof(F));
    while (lagoon_stream_recv_timeout(ms[FEW_MEMBERS], &F, RECV_MS) == 1)
        assert_int_not_equal(F.which_body, lagoon_v1_PartyServerFrame_state_tag);
    assert_int_equal(lagoon_stream_finish(ms[FEW_MEMBERS], NULL), LAGOON_RESOURCE_EXHAUSTED);
    /* one leaves for good: room for the newcomer */
    CF.which_command = lagoon_v1_PartyClientFrame_leave_tag;
    assert_int_equal(lagoon_Party_Join_send(ms[2], &CF), LAGOON_OK);
    memset(&CF, 0, sizeof(CF));
    while (lagoon_stream_recv_timeout(ms[2], &F, RECV_MS) == 1)
        ;
    assert_int_equal(lagoon_stream_finish(ms[2], NULL), LAGOON_OK);
    ms[2] = NULL;
    await_present(ms[0], &v, FEW_MEMBERS - 2);
    assert_int_equal(lagoon_Party_Join(mc[FEW_MEMBERS], &j, &ms[FEW_MEMBERS]), LAGOON_OK);
    await_present(ms[0], &v, FEW_MEMBERS - 1);
    /* the newcomer deletes its account (its member row goes) and drops: the party goes on for
     * the others, and its state is stored (an insert of the gone member's row failed it) */
    lagoon_v1_DeleteAccountRequest d = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(d.password, sizeof(d.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(c, tok[FEW_MEMBERS]);
    EXPECT(lagoon_Users_DeleteAccount(c, &d, &ue), LAGOON_OK, NULL);
    lagoon_stream_cancel(ms[FEW_MEMBERS]);
    ms[FEW_MEMBERS] = NULL;
    await_present(ms[0], &v, FEW_MEMBERS - 2);
    lagoon_set_token(c, tok[0]);
    EXPECT(lagoon_Party_Get(c, &(lagoon_v1_PartyIdRequest){.party_id = p.id}, &p), LAGOON_OK, NULL);
    assert_int_equal(p.members_present, FEW_MEMBERS - 2);
    assert_true(p.version >= v);
    for (int i = 0; i <= FEW_MEMBERS; i++) {
        if (ms[i])
            lagoon_stream_cancel(ms[i]);
        lagoon_close(mc[i]);
    }
    lagoon_close(c);
    test_app_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_after_every_change),
        cmocka_unit_test(test_stale_commands),
        cmocka_unit_test(test_bad_input_and_limits),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_host_and_control),
        cmocka_unit_test(test_videos_and_group_members),
        cmocka_unit_test(test_restart_mid_party),
        cmocka_unit_test(test_grace_ends_the_party),
        cmocka_unit_test(test_restart_with_members_connected),
        cmocka_unit_test(test_refused_joins_free_their_calls),
        cmocka_unit_test(test_members_cap),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
