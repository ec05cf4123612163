/* Topics end to end: a topic's events reach every member's live stream once, are stored once
 * whatever the member count, resume exactly next to the user's own log, follow joins and leaves
 * without reconnecting, and ephemeral ones are never replayed; through the generated client
 * against the real server and store. Membership and publishing go through events.h inside
 * store_write, as the services that own topics will. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "events.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define WAIT_MS 5000
#define MEMBERS 5      /* subscribed members in the fan-out test */
#define MANY 60        /* members of the large topic in the row-count test */

static test_app *T;
static lagoon_client *C;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->event_retention_count = 100000;
    acfg->subscriber_backlog = 64 * 1024;
}

static void start(void (*tweak_fn)(app_config *, rpc_config *))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- writing topics through events.h ---- */

typedef struct topic_op {
    lagoon_v1_Topic topic;
    const uint64_t *users;
    int n;
    int leave;
    const char *text;      /* publish: the text */
} topic_op;

static int do_members(store_txn *t, void *arg, store_error *err)
{
    const topic_op *op = arg;
    int st = LAGOON_OK;
    for (int i = 0; i < op->n && st == LAGOON_OK; i++)
        st = op->leave ? events_topic_leave(t, T->app, op->users[i], &op->topic, err)
                       : events_topic_join(t, T->app, op->users[i], &op->topic, err);
    return st;
}

static int do_publish(store_txn *t, void *arg, store_error *err)
{
    const topic_op *op = arg;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    ev->which_payload = lagoon_v1_Event_topic_text_tag;
    ev->payload.topic_text.author_id = 1;
    snprintf(ev->payload.topic_text.text, sizeof(ev->payload.topic_text.text), "%s", op->text);
    int st = events_topic_publish(t, T->app, &op->topic, ev, err);
    free(ev);
    return st;
}

static lagoon_v1_Topic topic(lagoon_v1_Topic_Kind kind, uint64_t id)
{
    lagoon_v1_Topic tp = {kind, id};
    return tp;
}

static void members(lagoon_v1_Topic tp, const uint64_t *users, int n, int leave)
{
    topic_op op = {tp, users, n, leave, NULL};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_members, &op, &err), LAGOON_OK);
}

static void publish(lagoon_v1_Topic tp, const char *text)
{
    topic_op op = {tp, NULL, 0, 0, text};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_publish, &op, &err), LAGOON_OK);
}

/* ---- streams ---- */

typedef struct device {
    lagoon_client *c;
    lagoon_stream *s;
    uint64_t current_seq;
} device;

static void subscribe_at(device *d, const char *token, const lagoon_v1_SubscribeRequest *req)
{
    d->c = test_client(T);
    lagoon_set_token(d->c, token);
    assert_int_equal(lagoon_Events_Subscribe(d->c, req, &d->s), LAGOON_OK);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    if (lagoon_stream_recv_timeout(d->s, ev, WAIT_MS) != 1)
        fail_msg("no subscribed event: %s", lagoon_last_error(d->c)->detail.message);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_subscribed_tag);
    d->current_seq = ev->payload.subscribed.current_seq;
    free(ev);
}

static void subscribe(device *d, const char *token)
{
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    subscribe_at(d, token, &req);
}

static void next_event(device *d, lagoon_v1_Event *ev)
{
    int r = lagoon_stream_recv_timeout(d->s, ev, WAIT_MS);
    if (r != 1)
        fail_msg("no event (%d): %s", r, lagoon_last_error(d->c)->detail.message);
}

static void unsubscribe(device *d)
{
    lagoon_stream_cancel(d->s);
    lagoon_close(d->c);
}

static int is_topic(const lagoon_v1_Event *ev, lagoon_v1_Topic tp)
{
    return ev->has_topic && ev->topic.kind == tp.kind && ev->topic.id == tp.id;
}

/* The next event is tp's membership event (joined, at seq). */
static void expect_membership(device *d, lagoon_v1_Topic tp, int joined, uint64_t seq, lagoon_v1_Event *ev)
{
    next_event(d, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_true(is_topic(ev, tp));
    assert_int_equal(ev->seq, 0);
    assert_int_equal(ev->payload.membership.joined, joined);
    assert_int_equal(ev->payload.membership.seq, seq);
}

/* The next event is tp's stored event seq with text. */
static void expect_topic_event(device *d, lagoon_v1_Topic tp, uint64_t seq, const char *text, lagoon_v1_Event *ev)
{
    next_event(d, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_topic_text_tag);
    assert_true(is_topic(ev, tp));
    assert_int_equal(ev->seq, seq);
    assert_string_equal(ev->payload.topic_text.text, text);
}

static uint64_t send_text(const char *token, uint64_t to, const char *text)
{
    lagoon_set_token(C, token);
    lagoon_v1_SendMessageRequest *req = calloc(1, sizeof(*req));
    lagoon_v1_DirectMessage *m = calloc(1, sizeof(*m));
    assert_true(req && m);
    req->recipient_id = to;
    req->which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req->content.text.text, sizeof(req->content.text.text), "%s", text);
    assert_int_equal(lagoon_Messages_Send(C, req, m), LAGOON_OK);
    uint64_t id = m->id;
    free(req);
    free(m);
    return id;
}

/* The next events of d are the message id (from the user's own log) and its notification:
 * nothing of a topic came in between. */
static void expect_own_message(device *d, uint64_t id, lagoon_v1_Event *ev)
{
    next_event(d, ev);
    assert_false(ev->has_topic);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev->payload.message.message.id, id);
    next_event(d, ev);
    assert_false(ev->has_topic);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_notification_tag);
}

/* ---- the tests ---- */

static void test_publish_reaches_each_member_once(void **state)
{
    (void)state;
    char tok[MEMBERS + 1][65];
    uint64_t ids[MEMBERS + 1];
    device d[MEMBERS + 1];
    for (int i = 0; i <= MEMBERS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fan%d", i);
        ids[i] = test_verified_user(T, C, name, 1, tok[i]);
        subscribe(&d[i], tok[i]);
    }
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 101);
    members(tp, ids, MEMBERS, 0); /* the last user is not a member */
    publish(tp, "one");
    publish(tp, "two");
    publish(tp, "three");
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    for (int i = 0; i < MEMBERS; i++) {
        expect_membership(&d[i], tp, 1, 0, ev);
        expect_topic_event(&d[i], tp, 1, "one", ev);
        expect_topic_event(&d[i], tp, 2, "two", ev);
        expect_topic_event(&d[i], tp, 3, "three", ev);
    }
    /* Once: the next thing each member sees is the next event, not a repeat. */
    publish(tp, "four");
    for (int i = 0; i < MEMBERS; i++)
        expect_topic_event(&d[i], tp, 4, "four", ev);
    /* The non-member saw none of it: its next event is its own message. */
    expect_own_message(&d[MEMBERS], send_text(tok[0], ids[MEMBERS], "only yours"), ev);
    for (int i = 0; i <= MEMBERS; i++)
        unsubscribe(&d[i]);
    free(ev);
}

/* ---- rows written per publish ---- */

typedef struct change_count {
    pthread_mutex_t mu;
    unsigned rows;      /* rows changed by the commits seen */
    unsigned user_rows; /* of them, in the users' logs and feeds */
} change_count;

static void count_changes(void *arg, const store_change *ch, size_t n)
{
    change_count *cc = arg;
    pthread_mutex_lock(&cc->mu);
    for (size_t i = 0; i < n; i++) {
        cc->rows++;
        cc->user_rows += ch[i].table == &lagoon_table_user_events || ch[i].table == &lagoon_table_user_feeds;
    }
    pthread_mutex_unlock(&cc->mu);
}

typedef struct seed {
    uint64_t ids[MANY];
    int n;
} seed;

static int seed_users(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    for (int i = 0; i < sd->n; i++) {
        lagoon_v1_User *u = calloc(1, sizeof(*u));
        if (u == NULL)
            return LAGOON_RESOURCE_EXHAUSTED;
        snprintf(u->email, sizeof(u->email), "m%d@topics.invalid", i);
        snprintf(u->username, sizeof(u->username), "member%d", i);
        snprintf(u->password_hash, sizeof(u->password_hash), "unused");
        u->role = lagoon_v1_Role_STUDENT;
        u->active = true;
        int st = store_insert(t, &lagoon_table_users, u, &sd->ids[i], err);
        free(u);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    ++*(unsigned *)arg;
    return LAGOON_OK;
}

/* Rows of tp's log, counted by scanning the store. */
static unsigned topic_rows(lagoon_v1_Topic tp)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_key k;
    store_key_reset(&k);
    store_key_u32(&k, (uint32_t)tp.kind);
    store_key_u64(&k, tp.id);
    store_query q = {0};
    q.table = &lagoon_table_topic_events;
    q.index = lagoon_index_topic_events_by_topic_seq;
    q.prefix = k.buf;
    q.prefix_len = k.len;
    q.page_size = 100;
    unsigned n = 0;
    store_page page;
    assert_int_equal(store_scan(t, &q, count_row, &n, &page, &err), LAGOON_OK);
    store_read_end(t);
    return n;
}

/* The rows one publish changes: the commit's changes, as the store announces them. */
static unsigned rows_of_publish(change_count *cc, lagoon_v1_Topic tp, unsigned *user_rows)
{
    pthread_mutex_lock(&cc->mu);
    cc->rows = cc->user_rows = 0;
    pthread_mutex_unlock(&cc->mu);
    publish(tp, "counted");
    pthread_mutex_lock(&cc->mu); /* announced before store_write returns */
    unsigned n = cc->rows;
    *user_rows = cc->user_rows;
    pthread_mutex_unlock(&cc->mu);
    return n;
}

static void test_rows_per_publish_independent_of_members(void **state)
{
    (void)state;
    seed *sd = calloc(1, sizeof(*sd));
    assert_non_null(sd);
    sd->n = MANY;
    store_error err;
    assert_int_equal(store_write(T->app->db, seed_users, sd, &err), LAGOON_OK);
    lagoon_v1_Topic small = topic(lagoon_v1_Topic_Kind_WATCH_PARTY, 7), large = topic(lagoon_v1_Topic_Kind_VIDEO, 7);
    members(small, sd->ids, 2, 0);
    members(large, sd->ids, MANY, 0);
    publish(small, "first"); /* the feed rows exist from here: later publishes update them */
    publish(large, "first");
    change_count cc = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
    assert_int_equal(store_subscribe(T->app->db, count_changes, &cc, &err), LAGOON_OK);
    unsigned small_user, large_user;
    unsigned small_rows = rows_of_publish(&cc, small, &small_user);
    unsigned large_rows = rows_of_publish(&cc, large, &large_user);
    store_unsubscribe(T->app->db, count_changes, &cc);
    /* One event row and the feed's update, whatever the member count; nothing per member. */
    assert_int_equal(small_rows, 2);
    assert_int_equal(large_rows, small_rows);
    assert_int_equal(small_user, 0);
    assert_int_equal(large_user, 0);
    assert_int_equal(topic_rows(small), 2);
    assert_int_equal(topic_rows(large), 2);
    /* Membership is data: joining twice changes nothing, leaving removes it. */
    members(large, sd->ids, 1, 0);
    members(large, sd->ids, MANY, 1);
    members(small, sd->ids, 2, 1);
    free(sd);
}

/* Resume across the user's log and two topics: exact, each source in order. */
static void test_resume_exact_across_log_and_topics(void **state)
{
    (void)state;
    char at[65], bt[65];
    uint64_t ann = test_verified_user(T, C, "rann", 1, at);
    test_verified_user(T, C, "rbob", 1, bt);
    lagoon_v1_Topic x = topic(lagoon_v1_Topic_Kind_GROUP, 201), y = topic(lagoon_v1_Topic_Kind_CONVERSATION, 202);
    publish(x, "x-before"); /* before the join: never ann's */
    members(x, &ann, 1, 0);
    members(y, &ann, 1, 0);
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    /* Memberships come by topic order of the store; either way, both at their join. */
    for (int i = 0; i < 2; i++) {
        next_event(&d, ev);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
        assert_int_equal(ev->payload.membership.seq, is_topic(ev, x) ? 1 : 0);
    }
    publish(x, "x2");
    publish(y, "y1");
    expect_topic_event(&d, x, 2, "x2", ev);
    expect_topic_event(&d, y, 1, "y1", ev);
    uint64_t m1 = send_text(bt, ann, "first");
    expect_own_message(&d, m1, ev);
    uint64_t since = ev->seq;
    unsubscribe(&d);
    /* Away: more of each source. */
    publish(x, "x3");
    publish(y, "y2");
    uint64_t m2 = send_text(bt, ann, "second");
    publish(y, "y3");
    publish(x, "x4");
    /* Back, with the position of each source. */
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.since = since;
    req.topics_count = 2;
    req.topics[0].has_topic = req.topics[1].has_topic = true;
    req.topics[0].topic = x;
    req.topics[0].seq = 2;
    req.topics[1].topic = y;
    req.topics[1].seq = 1;
    subscribe_at(&d, at, &req);
    for (int i = 0; i < 2; i++) {
        next_event(&d, ev);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
        assert_int_equal(ev->payload.membership.seq, is_topic(ev, x) ? 2 : 1);
    }
    /* Six events: each source's from its position + 1, consecutive, none twice. */
    uint64_t own = since, xs = 2, ys = 1;
    int got_m2 = 0;
    for (int i = 0; i < 6; i++) {
        next_event(&d, ev);
        if (is_topic(ev, x))
            assert_int_equal(ev->seq, ++xs);
        else if (is_topic(ev, y))
            assert_int_equal(ev->seq, ++ys);
        else {
            assert_false(ev->has_topic);
            assert_int_equal(ev->seq, ++own);
            got_m2 |= ev->which_payload == lagoon_v1_Event_message_tag && ev->payload.message.message.id == m2;
        }
    }
    assert_int_equal(xs, 4);
    assert_int_equal(ys, 3);
    assert_int_equal(own, since + 2);
    assert_true(got_m2);
    /* Then live, continuing each source. */
    publish(y, "y4");
    expect_topic_event(&d, y, 4, "y4", ev);
    unsubscribe(&d);
    free(ev);
}

static void test_join_while_subscribed_delivers(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "jann", 1, at);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_WATCH_PARTY, 301);
    publish(tp, "earlier");
    publish(tp, "earlier too");
    device d;
    subscribe(&d, at);
    members(tp, &ann, 1, 0);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 2, ev); /* from the join on: not what came before */
    publish(tp, "now");
    expect_topic_event(&d, tp, 3, "now", ev);
    unsubscribe(&d);
    free(ev);
}

static void test_leave_stops_delivery(void **state)
{
    (void)state;
    char at[65], bt[65];
    uint64_t u[2];
    u[0] = test_verified_user(T, C, "lann", 1, at);
    u[1] = test_verified_user(T, C, "lbob", 1, bt);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 401);
    members(tp, u, 2, 0);
    device a, b;
    subscribe(&a, at);
    subscribe(&b, bt);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&a, tp, 1, 0, ev);
    expect_membership(&b, tp, 1, 0, ev);
    publish(tp, "both");
    expect_topic_event(&a, tp, 1, "both", ev);
    expect_topic_event(&b, tp, 1, "both", ev);
    members(tp, u, 1, 1); /* ann leaves */
    expect_membership(&a, tp, 0, 1, ev);
    publish(tp, "bob only");
    expect_topic_event(&b, tp, 2, "bob only", ev);
    expect_own_message(&a, send_text(bt, u[0], "after leaving"), ev);
    /* Nor on resume: the cursor of a topic left is not a membership. */
    unsubscribe(&a);
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.topics_count = 1;
    req.topics[0].has_topic = true;
    req.topics[0].topic = tp;
    req.topics[0].seq = 1;
    req.since = ev->seq;
    subscribe_at(&a, at, &req);
    expect_own_message(&a, send_text(bt, u[0], "still not"), ev);
    unsubscribe(&a);
    unsubscribe(&b);
    free(ev);
}

static void test_ephemeral_reaches_live_only(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "eann", 1, at);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_VIDEO, 501);
    members(tp, &ann, 1, 0);
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 0, ev);
    lagoon_v1_Event *ping = calloc(1, sizeof(*ping));
    assert_non_null(ping);
    ping->which_payload = lagoon_v1_Event_topic_text_tag;
    snprintf(ping->payload.topic_text.text, sizeof(ping->payload.topic_text.text), "at 12.5 s");
    assert_int_equal(events_topic_ephemeral(T->app, &tp, ping), 0);
    next_event(&d, ev);
    assert_true(is_topic(ev, tp));
    assert_int_equal(ev->seq, 0);
    assert_string_equal(ev->payload.topic_text.text, "at 12.5 s");
    publish(tp, "kept");
    expect_topic_event(&d, tp, 1, "kept", ev);
    unsubscribe(&d);
    /* From before both: only the stored one comes back. */
    assert_int_equal(events_topic_ephemeral(T->app, &tp, ping), 0); /* nobody listens: gone */
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.topics_count = 1;
    req.topics[0].has_topic = true;
    req.topics[0].topic = tp;
    req.topics[0].seq = 0;
    subscribe_at(&d, at, &req);
    expect_membership(&d, tp, 1, 0, ev);
    expect_topic_event(&d, tp, 1, "kept", ev);
    publish(tp, "next");
    expect_topic_event(&d, tp, 2, "next", ev);
    unsubscribe(&d);
    free(ping);
    free(ev);
}

static void test_cursor_ahead_is_out_of_range(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "oann", 1, at);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 601);
    members(tp, &ann, 1, 0);
    publish(tp, "one");
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.topics_count = 1;
    req.topics[0].has_topic = true;
    req.topics[0].topic = tp;
    req.topics[0].seq = 5;
    lagoon_client *c = test_client(T);
    lagoon_set_token(c, at);
    lagoon_stream *s;
    assert_int_equal(lagoon_Events_Subscribe(c, &req, &s), LAGOON_OK);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    assert_int_equal(lagoon_stream_recv_timeout(s, ev, WAIT_MS), 0); /* ended, before the subscribed event */
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_OUT_OF_RANGE);
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "ahead of its log"));
    lagoon_close(c);
    free(ev);
}

/* A user's topics are capped: one join past EVENTS_MAX_TOPICS_PER_USER is refused, and a join
 * of a topic it already has changes nothing. */
typedef struct many_joins {
    uint64_t user;
    uint64_t first, n; /* topic ids first .. first + n - 1 */
    int status;        /* of the last join */
} many_joins;

static int join_many(store_txn *t, void *arg, store_error *err)
{
    many_joins *mj = arg;
    mj->status = LAGOON_OK;
    for (uint64_t i = 0; i < mj->n && mj->status == LAGOON_OK; i++) {
        lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_VIDEO, mj->first + i);
        mj->status = events_topic_join(t, T->app, mj->user, &tp, err);
    }
    return LAGOON_OK; /* keep what joined: the test looks at the last status */
}

static void test_join_cap(void **state)
{
    (void)state;
    char at[65];
    many_joins mj = {test_verified_user(T, C, "cann", 1, at), 1000, EVENTS_MAX_TOPICS_PER_USER, -1};
    store_error err;
    assert_int_equal(store_write(T->app->db, join_many, &mj, &err), LAGOON_OK);
    assert_int_equal(mj.status, LAGOON_OK);
    mj.first = 1000; /* all of them again: members already, nothing changes */
    assert_int_equal(store_write(T->app->db, join_many, &mj, &err), LAGOON_OK);
    assert_int_equal(mj.status, LAGOON_OK);
    mj.first = 5000;
    mj.n = 1;
    assert_int_equal(store_write(T->app->db, join_many, &mj, &err), LAGOON_OK);
    assert_int_equal(mj.status, LAGOON_RESOURCE_EXHAUSTED);
    /* A subscription follows all of them. */
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    for (int i = 0; i < EVENTS_MAX_TOPICS_PER_USER; i++) {
        next_event(&d, ev);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    }
    publish(topic(lagoon_v1_Topic_Kind_VIDEO, 1000 + EVENTS_MAX_TOPICS_PER_USER - 1), "last");
    expect_topic_event(&d, topic(lagoon_v1_Topic_Kind_VIDEO, 1000 + EVENTS_MAX_TOPICS_PER_USER - 1), 1, "last", ev);
    unsubscribe(&d);
    free(ev);
}

/* Resuming without a topic's position (joined while away) replays it from the join. */
static void test_resume_without_position_starts_at_join(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "wann", 1, at);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_CONVERSATION, 701);
    publish(tp, "before the join");
    device d;
    subscribe(&d, at);
    uint64_t since = d.current_seq;
    unsubscribe(&d);
    members(tp, &ann, 1, 0); /* while away */
    publish(tp, "after the join");
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.since = since;
    req.topics_count = 1; /* a position of another topic only: this one has none */
    req.topics[0].has_topic = true;
    req.topics[0].topic = topic(lagoon_v1_Topic_Kind_GROUP, 702);
    req.topics[0].seq = 0;
    subscribe_at(&d, at, &req);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 1, ev);
    expect_topic_event(&d, tp, 2, "after the join", ev);
    publish(tp, "live");
    expect_topic_event(&d, tp, 3, "live", ev);
    unsubscribe(&d);
    free(ev);
}

/* Retention short (5 events per log) for the next test. */
static void tweak_short(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->event_retention_count = 5;
    acfg->subscriber_backlog = 64 * 1024;
}

static int setup_short(void **state)
{
    (void)state;
    start(tweak_short);
    return 0;
}

/* Retention has passed both a member's join and the start of its own log: a resume that names
 * no position of that topic, and since 0, is told where each source starts (the oldest kept)
 * instead of being refused with no way to recover. A position the client does hold, older than
 * what is kept, is still OUT_OF_RANGE. */
static void test_resume_after_retention_passed_the_join(void **state)
{
    (void)state;
    char at[65], bt[65];
    uint64_t ann = test_verified_user(T, C, "rann", 1, at);
    test_verified_user(T, C, "rbob", 1, bt);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 801);
    members(tp, &ann, 1, 0);
    for (int i = 0; i < 30; i++)
        publish(tp, "old");
    for (int i = 0; i < 12; i++) /* ann's own log: 12 messages' events, 5 kept */
        send_text(bt, ann, "hello");
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.since = 0;
    req.topics_count = 1; /* a position of another topic only: resume mode, none for tp */
    req.topics[0].has_topic = true;
    req.topics[0].topic = topic(lagoon_v1_Topic_Kind_GROUP, 802);
    req.topics[0].seq = 0;
    device d;
    subscribe_at(&d, at, &req);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 25, ev); /* 26..30 are kept */
    /* The two sources replay side by side, each in order: tp from 26, ann's log from its
     * oldest kept event. */
    uint64_t next_topic = 26, first_own = 0, last_own = 0;
    for (int i = 0; i < 40 && (next_topic <= 30 || last_own < d.current_seq); i++) {
        next_event(&d, ev);
        if (is_topic(ev, tp)) {
            assert_int_equal(ev->which_payload, lagoon_v1_Event_topic_text_tag);
            assert_int_equal(ev->seq, next_topic++);
        } else {
            assert_false(ev->has_topic);
            if (first_own == 0)
                first_own = ev->seq;
            else
                assert_int_equal(ev->seq, last_own + 1);
            last_own = ev->seq;
        }
    }
    assert_int_equal(next_topic, 31);
    assert_int_equal(last_own, d.current_seq);
    assert_true(first_own > 1); /* the log's start was trimmed: what is kept came, from its oldest */
    unsubscribe(&d);
    /* The client's own position 10 of tp is older than what is kept: refused, naming it. */
    req.topics[0].topic = tp;
    req.topics[0].seq = 10;
    lagoon_client *c = test_client(T);
    lagoon_set_token(c, at);
    lagoon_stream *s;
    assert_int_equal(lagoon_Events_Subscribe(c, &req, &s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(s, ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_OUT_OF_RANGE);
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "no longer kept"));
    lagoon_close(c);
    free(ev);
}

/* ---- events logged as references (app_module.fill_event) ---- */

/* A service whose topic texts "ref:X" are references: it fills them in as "filled X" when they
 * are sent; "ref:broken" cannot be read. Other events are not its. */
static int ref_fill(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled, store_error *err)
{
    (void)t;
    if (ev->which_payload != lagoon_v1_Event_topic_text_tag || strncmp(ev->payload.topic_text.text, "ref:", 4) != 0)
        return LAGOON_OK;
    if (strcmp(ev->payload.topic_text.text, "ref:broken") == 0)
        return store_fail(err, LAGOON_INTERNAL, NULL, "row 7 is damaged");
    *out = *ev;
    snprintf(out->payload.topic_text.text, sizeof(out->payload.topic_text.text), "filled %s",
             ev->payload.topic_text.text + 4);
    *filled = 1;
    return LAGOON_OK;
}

static const app_module referencing = {.name = "referencing", .fill_event = ref_fill};
static const app_module *const referencing_modules[] = {&referencing};

static void tweak_referencing(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->extra_modules = referencing_modules;
    acfg->nextra_modules = 1;
}

static int setup_referencing(void **state)
{
    (void)state;
    start(tweak_referencing);
    return 0;
}

/* Live and replayed alike, a reference goes out as its service fills it and other events as
 * stored; one that cannot be filled ends the stream with the reason (never a silent gap). */
static void test_references_filled_when_sent(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "rann", 1, at);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_VIDEO, 801);
    members(tp, &ann, 1, 0);
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 0, ev);
    publish(tp, "ref:one");
    expect_topic_event(&d, tp, 1, "filled one", ev);
    publish(tp, "plain");
    expect_topic_event(&d, tp, 2, "plain", ev);
    unsubscribe(&d);
    /* Replayed (a resume after topic position 1): the same. */
    publish(tp, "ref:two");
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.topics_count = 1;
    req.topics[0].has_topic = true;
    req.topics[0].topic = tp;
    req.topics[0].seq = 1;
    subscribe_at(&d, at, &req);
    expect_membership(&d, tp, 1, 1, ev);
    expect_topic_event(&d, tp, 2, "plain", ev);
    expect_topic_event(&d, tp, 3, "filled two", ev);
    /* Live, one that cannot be read: read again from the log, then the stream ends, saying why. */
    publish(tp, "ref:broken");
    assert_int_equal(lagoon_stream_recv_timeout(d.s, ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_UNAVAILABLE);
    const char *msg = lagoon_last_error(d.c)->detail.message;
    assert_non_null(strstr(msg, "event 4 could not be read"));
    assert_non_null(strstr(msg, "row 7 is damaged"));
    lagoon_close(d.c);
    /* Replayed, the same end. */
    req.topics[0].seq = 3;
    subscribe_at(&d, at, &req);
    expect_membership(&d, tp, 1, 3, ev);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_UNAVAILABLE);
    assert_non_null(strstr(lagoon_last_error(d.c)->detail.message, "event 4 could not be read"));
    lagoon_close(d.c);
    free(ev);
}

static int do_publish_message_ref(store_txn *t, void *arg, store_error *err)
{
    const lagoon_v1_DirectMessage *m = arg;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    ev->which_payload = lagoon_v1_Event_message_tag;
    ev->payload.message.action = lagoon_v1_MessageEvent_Action_SENT;
    ev->payload.message.has_message = true;
    ev->payload.message.message.id = m->id;
    ev->payload.message.message.conversation_id = m->conversation_id;
    ev->payload.message.message.sender_id = m->sender_id;
    ev->payload.message.message.recipient_id = m->recipient_id;
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 901);
    int st = events_topic_publish(t, T->app, &tp, ev, err);
    free(ev);
    return st;
}

/* Messages fills only its own events: a topic's event that names a direct message by its ids
 * goes out as stored, without the message's words, to a member who is not in the conversation. */
static void test_message_references_only_in_own_logs(void **state)
{
    (void)state;
    char at[65], bt[65], ct[65];
    uint64_t ann = test_verified_user(T, C, "mann", 1, at);
    test_verified_user(T, C, "mbob", 1, bt);
    uint64_t cat = test_verified_user(T, C, "mcat", 1, ct);
    lagoon_set_token(C, bt);
    lagoon_v1_SendMessageRequest *req = calloc(1, sizeof(*req));
    lagoon_v1_DirectMessage *m = calloc(1, sizeof(*m));
    assert_true(req && m);
    req->recipient_id = cat;
    req->which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req->content.text.text, sizeof(req->content.text.text), "private between bob and cat");
    assert_int_equal(lagoon_Messages_Send(C, req, m), LAGOON_OK);
    lagoon_v1_Topic tp = topic(lagoon_v1_Topic_Kind_GROUP, 901);
    members(tp, &ann, 1, 0);
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    expect_membership(&d, tp, 1, 0, ev);
    store_error err;
    assert_int_equal(store_write(T->app->db, do_publish_message_ref, m, &err), LAGOON_OK);
    next_event(&d, ev);
    assert_true(is_topic(ev, tp));
    assert_int_equal(ev->which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev->payload.message.message.id, m->id);
    assert_string_equal(ev->payload.message.message.content.text.text, "");
    unsubscribe(&d);
    free(ev);
    free(req);
    free(m);
}

static int do_append_own(store_txn *t, void *arg, store_error *err)
{
    const topic_op *op = arg;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    ev->which_payload = lagoon_v1_Event_topic_text_tag;
    snprintf(ev->payload.topic_text.text, sizeof(ev->payload.topic_text.text), "%s", op->text);
    int st = events_append(t, T->app, op->users[0], ev, err);
    free(ev);
    return st;
}

/* The same in a user's own log: filled live, and one that cannot be filled ends the stream. */
static void test_references_in_own_log(void **state)
{
    (void)state;
    char at[65];
    uint64_t ann = test_verified_user(T, C, "oann", 1, at);
    device d;
    subscribe(&d, at);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    store_error err;
    topic_op op = {topic(lagoon_v1_Topic_Kind_GROUP, 1), &ann, 1, 0, "ref:mine"};
    assert_int_equal(store_write(T->app->db, do_append_own, &op, &err), LAGOON_OK);
    next_event(&d, ev);
    assert_false(ev->has_topic);
    assert_int_equal(ev->seq, d.current_seq + 1);
    assert_string_equal(ev->payload.topic_text.text, "filled mine");
    op.text = "ref:broken";
    assert_int_equal(store_write(T->app->db, do_append_own, &op, &err), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_UNAVAILABLE);
    assert_non_null(strstr(lagoon_last_error(d.c)->detail.message, "could not be read (row 7 is damaged)"));
    lagoon_close(d.c);
    free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_reaches_each_member_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_per_publish_independent_of_members, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_exact_across_log_and_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_while_subscribed_delivers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leave_stops_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ephemeral_reaches_live_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_ahead_is_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_without_position_starts_at_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_after_retention_passed_the_join, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_references_filled_when_sent, setup_referencing, teardown),
        cmocka_unit_test_setup_teardown(test_references_in_own_log, setup_referencing, teardown),
        cmocka_unit_test_setup_teardown(test_message_references_only_in_own_logs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
