/* Realtime end to end: subscriptions (live, resumed, purged, too slow, capped, ended with their
 * session), typing, notifications, deleted messages' words, through the generated client
 * against the real server and store. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "accounts.h"
#include "events.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define WAIT_MS 5000

static test_app *T;
static lagoon_client *C;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->event_retention_count = 100000;
    acfg->subscriber_backlog = 64 * 1024;
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(tweak);
    C = test_client(T);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

typedef struct device {
    lagoon_client *c;
    lagoon_stream *s;
    uint64_t current_seq; /* from the subscribed event */
} device;

/* Subscribes (since 0: live) and reads the subscribed event. */
static void subscribe(device *d, const char *token, uint64_t since)
{
    d->c = test_client(T);
    lagoon_set_token(d->c, token);
    lagoon_v1_SubscribeRequest req = {since};
    assert_int_equal(lagoon_Events_Subscribe(d->c, &req, &d->s), LAGOON_OK);
    lagoon_v1_Event ev;
    if (lagoon_stream_recv_timeout(d->s, &ev, WAIT_MS) != 1)
        fail_msg("no subscribed event: %s", lagoon_last_error(d->c)->detail.message);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_subscribed_tag);
    assert_int_equal(ev.seq, 0);
    d->current_seq = ev.payload.subscribed.current_seq;
}

static void next_event(device *d, lagoon_v1_Event *ev)
{
    int r = lagoon_stream_recv_timeout(d->s, ev, WAIT_MS);
    if (r != 1)
        fail_msg("no event (%d): %s", r, lagoon_last_error(d->c)->detail.message);
}

/* The next event that is not a notification. */
static void next_non_notification(device *d, lagoon_v1_Event *ev)
{
    do
        next_event(d, ev);
    while (ev->which_payload == lagoon_v1_Event_notification_tag ||
           ev->which_payload == lagoon_v1_Event_notification_state_tag);
}

static void unsubscribe(device *d)
{
    lagoon_stream_cancel(d->s);
    lagoon_close(d->c);
}

static uint64_t send_text(const char *token, uint64_t to, const char *text)
{
    lagoon_set_token(C, token);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = to;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "%s", text);
    lagoon_v1_DirectMessage m;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_OK);
    return m.id;
}

static void test_live_to_two_devices(void **state)
{
    (void)state;
    char at[65], bt[65];
    uint64_t ann = test_verified_user(T, C, "ann", 1, at), bob = test_verified_user(T, C, "bob", 1, bt);
    device phone, tablet, bobs;
    subscribe(&phone, at, 0);
    subscribe(&tablet, at, 0);
    subscribe(&bobs, bt, 0);
    uint64_t id = send_text(bt, ann, "hi ann");
    lagoon_v1_Event e1, e2, e3;
    next_event(&phone, &e1);
    next_event(&tablet, &e2);
    for (int i = 0; i < 2; i++) {
        lagoon_v1_Event *e = i ? &e2 : &e1;
        assert_int_equal(e->which_payload, lagoon_v1_Event_message_tag);
        assert_int_equal(e->payload.message.action, lagoon_v1_MessageEvent_Action_SENT);
        assert_int_equal(e->payload.message.message.id, id);
        assert_string_equal(e->payload.message.message.content.text.text, "hi ann");
        assert_int_equal(e->seq, phone.current_seq + 1);
    }
    /* Then the notification, on both devices. */
    next_event(&phone, &e1);
    assert_int_equal(e1.which_payload, lagoon_v1_Event_notification_tag);
    assert_int_equal(e1.seq, phone.current_seq + 2);
    next_event(&tablet, &e2);
    assert_int_equal(e2.seq, e1.seq);
    /* The sender's own devices see the message too. */
    next_event(&bobs, &e3);
    assert_int_equal(e3.payload.message.message.id, id);
    /* Edits, deletes and reads are events too. */
    lagoon_set_token(C, bt);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = id;
    snprintf(er.text, sizeof(er.text), "hi ann!");
    lagoon_v1_DirectMessage m;
    assert_int_equal(lagoon_Messages_Edit(C, &er, &m), LAGOON_OK);
    next_non_notification(&phone, &e1);
    assert_int_equal(e1.payload.message.action, lagoon_v1_MessageEvent_Action_EDITED);
    assert_string_equal(e1.payload.message.message.content.text.text, "hi ann!");
    lagoon_set_token(C, at);
    lagoon_v1_MarkReadRequest mr = {bob, 0};
    lagoon_v1_MarkReadResponse mresp;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    next_non_notification(&bobs, &e3); /* bob's EDITED first */
    next_non_notification(&bobs, &e3);
    assert_int_equal(e3.which_payload, lagoon_v1_Event_read_tag);
    assert_int_equal(e3.payload.read.reader_id, ann);
    assert_int_equal(e3.payload.read.up_to_message_id, id);
    lagoon_set_token(C, bt);
    lagoon_v1_DeleteMessageRequest dr = {id};
    lagoon_v1_MessagesEmpty empty;
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
    next_non_notification(&tablet, &e2); /* EDITED */
    next_non_notification(&tablet, &e2); /* READ (her own, from the phone) */
    assert_int_equal(e2.which_payload, lagoon_v1_Event_read_tag);
    next_non_notification(&tablet, &e2);
    assert_int_equal(e2.payload.message.action, lagoon_v1_MessageEvent_Action_DELETED);
    assert_int_equal(e2.payload.message.message.id, id);
    unsubscribe(&phone);
    unsubscribe(&tablet);
    unsubscribe(&bobs);
}

static void test_resume_without_loss(void **state)
{
    (void)state;
    char ct[65], dt[65];
    uint64_t cid = test_verified_user(T, C, "cid", 1, ct), dia = test_verified_user(T, C, "dia", 1, dt);
    (void)dia;
    device d;
    subscribe(&d, ct, 0);
    send_text(dt, cid, "before");
    lagoon_v1_Event ev;
    next_event(&d, &ev);
    next_event(&d, &ev); /* the notification */
    uint64_t last_seen = ev.seq;
    unsubscribe(&d);
    /* Five events while away. */
    uint64_t ids[5];
    char text[16];
    for (int i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "away %d", i);
        ids[i] = send_text(dt, cid, text);
    }
    /* Resume: exactly what was missed, in order, then live. */
    subscribe(&d, ct, last_seen);
    assert_int_equal(d.current_seq, last_seen + 10); /* each send: message + notification */
    uint64_t seq = last_seen;
    for (int i = 0; i < 5; i++) {
        next_event(&d, &ev);
        assert_int_equal(ev.seq, ++seq);
        assert_int_equal(ev.which_payload, lagoon_v1_Event_message_tag);
        assert_int_equal(ev.payload.message.message.id, ids[i]);
        next_event(&d, &ev);
        assert_int_equal(ev.seq, ++seq);
        assert_int_equal(ev.which_payload, lagoon_v1_Event_notification_tag);
        assert_int_equal(ev.payload.notification.notification.count, (uint32_t)(i + 2)); /* collapsed */
    }
    uint64_t live = send_text(dt, cid, "live again");
    next_event(&d, &ev);
    assert_int_equal(ev.seq, seq + 1); /* no gap, no duplicate at the seam */
    assert_int_equal(ev.payload.message.message.id, live);
    unsubscribe(&d);
}

static void tweak_short_retention(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->event_retention_count = 10;
}

static void test_purged_since_is_out_of_range(void **state)
{
    (void)state;
    test_app *saved = T;
    lagoon_client *saved_c = C;
    test_app *t = test_app_new(tweak_short_retention);
    T = t;
    C = test_client(T);
    char et[65], ft[65];
    uint64_t eli = test_verified_user(T, C, "eli", 1, et);
    test_verified_user(T, C, "fay", 1, ft);
    for (int i = 0; i < 10; i++) /* 20 events for eli; 10 kept */
        send_text(ft, eli, "spam");
    device d;
    d.c = test_client(T);
    lagoon_set_token(d.c, et);
    lagoon_v1_SubscribeRequest req = {2};
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    lagoon_v1_Event ev;
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_OUT_OF_RANGE);
    assert_non_null(strstr(lagoon_last_error(d.c)->detail.message, "reload"));
    /* From a kept point it works. */
    req.since = 15;
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 1); /* subscribed */
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 1);
    assert_int_equal(ev.seq, 16);
    /* A since from the future is out of range too. */
    lagoon_stream_cancel(d.s);
    req.since = 1000;
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_OUT_OF_RANGE);
    lagoon_close(d.c);
    lagoon_close(C);
    test_app_free(t);
    T = saved;
    C = saved_c;
}

static void test_retention_by_age(void **state)
{
    (void)state;
    /* The shared server keeps 100000 events per user: only age can trim here. */
    char gt[65], ht[65];
    uint64_t gil = test_verified_user(T, C, "gil", 1, gt);
    test_verified_user(T, C, "hub", 1, ht);
    send_text(ht, gil, "old"); /* gil's seqs 1 (message) and 2 (notification) */
    test_clock_advance(T, 8LL * 24 * 3600 * 1000); /* past the 7-day default */
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero; /* the tokens expired meanwhile */
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    lagoon_v1_TokenPair tp;
    snprintf(lr.login, sizeof(lr.login), "hub");
    assert_int_equal(lagoon_Auth_Login(C, &lr, &tp), LAGOON_OK);
    snprintf(ht, sizeof(ht), "%s", tp.access_token);
    snprintf(lr.login, sizeof(lr.login), "gil");
    assert_int_equal(lagoon_Auth_Login(C, &lr, &tp), LAGOON_OK);
    snprintf(gt, sizeof(gt), "%s", tp.access_token);
    for (int i = 0; i < 7; i++) /* seqs 3..16: the age check at 16 trims 1 and 2 */
        send_text(ht, gil, "new");
    device d;
    d.c = test_client(T);
    lagoon_set_token(d.c, gt);
    lagoon_v1_SubscribeRequest req = {1};
    lagoon_v1_Event ev;
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_OUT_OF_RANGE);
    req.since = 2; /* everything after 2 is kept */
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 1); /* subscribed */
    assert_int_equal(ev.payload.subscribed.current_seq, 16);
    assert_int_equal(lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS), 1);
    assert_int_equal(ev.seq, 3);
    lagoon_stream_cancel(d.s);
    lagoon_close(d.c);
}

static void test_slow_reader_cut_off_then_resumes(void **state)
{
    (void)state;
    char gt[65], ht[65];
    uint64_t gus = test_verified_user(T, C, "gus", 1, gt);
    test_verified_user(T, C, "hal", 1, ht);
    /* A subscriber that reads nothing, over a raw socket. (Not with a tiny receive buffer:
     * reading what is queued afterwards would then crawl at a few KB per round trip.) */
    int fd = raw_connect(T->srv.port, 0);
    raw_send(fd, WIRE_PREFACE, WIRE_PREFACE_LEN);
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", gt);
    uint8_t mb[256];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Events_Subscribe.id, mb, (size_t)ml,
                   NULL, 0);
    /* The largest messages (4000 four-byte characters: 16 KB) until the server gives up on it:
     * the kernel's socket buffers take a few MB first. Bounded. */
    char *big = malloc(16001);
    for (int i = 0; i < 4000; i++)
        memcpy(big + 4 * i, "\xF0\x9F\x98\x80", 4); /* U+1F600 */
    big[16000] = '\0';
    int sent = 0;
    for (; sent < 3000; sent++) {
        send_text(ht, gus, big);
        if (sent % 10 == 9 && rpc_server_active_calls(T->srv.server) == 0)
            break; /* the subscription has ended */
    }
    free(big);
    assert_true(sent < 3000);
    /* Read what it got: events, then RESOURCE_EXHAUSTED telling where to resume. */
    static uint8_t buf[1 << 16];
    wire_frame f;
    uint64_t last = 0;
    int got_end = 0;
    while (!got_end && raw_read_frame(fd, buf, sizeof(buf), &f, WAIT_MS) == 1) {
        if (f.type == WIRE_SETTINGS)
            continue;
        if (f.type == WIRE_RESPONSE) {
            assert_int_equal(f.code, LAGOON_RESOURCE_EXHAUSTED);
            char msg[600];
            raw_meta_message(&f, msg, sizeof(msg));
            assert_non_null(strstr(msg, "since="));
            got_end = 1;
            break;
        }
        lagoon_v1_Event *ev = malloc(sizeof(*ev));
        wire_violation v;
        assert_int_equal(wire_decode(&lagoon_v1_Event_info, f.payload, f.payload_len, ev, &v), 0);
        if (ev->seq) {
            assert_int_equal(ev->seq, last ? last + 1 : ev->seq); /* in order, no gap */
            last = ev->seq;
        }
        free(ev);
    }
    close(fd);
    assert_true(got_end);
    /* Resume from the last event it read: everything else, no loss. */
    device d;
    subscribe(&d, gt, last);
    uint64_t end = d.current_seq;
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    for (uint64_t want = last + 1; want <= end; want++) {
        next_event(&d, ev);
        assert_int_equal(ev->seq, want);
    }
    free(ev);
    unsubscribe(&d);
}

static void test_typing_reaches_only_the_partner(void **state)
{
    (void)state;
    char it[65], jt[65], kt[65];
    uint64_t ivy = test_verified_user(T, C, "ivy", 1, it), jon = test_verified_user(T, C, "jon", 1, jt), kim = test_verified_user(T, C, "kim", 1, kt);
    send_text(it, jon, "hello");
    send_text(kt, ivy, "hey");
    device ivys, jons, kims;
    subscribe(&ivys, it, 0);
    subscribe(&jons, jt, 0);
    subscribe(&kims, kt, 0);
    lagoon_set_token(C, it);
    lagoon_v1_TypingRequest tr = {jon};
    lagoon_v1_EventsEmpty e;
    assert_int_equal(lagoon_Events_Typing(C, &tr, &e), LAGOON_OK);
    lagoon_v1_Event ev;
    next_event(&jons, &ev);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_typing_tag);
    assert_int_equal(ev.seq, 0); /* ephemeral: not in the log */
    assert_int_equal(ev.payload.typing.user_id, ivy);
    assert_true(ev.payload.typing.expires_in_ms > 0);
    /* Neither the typist nor a third user got it: their next event is a later message. */
    uint64_t to_ivy = send_text(jt, ivy, "marker");
    next_non_notification(&ivys, &ev);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev.payload.message.message.id, to_ivy);
    uint64_t to_kim = send_text(it, kim, "marker");
    next_non_notification(&kims, &ev);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev.payload.message.message.id, to_kim);
    /* No conversation, no typing. */
    lagoon_set_token(C, jt);
    tr.other_user_id = kim;
    assert_int_equal(lagoon_Events_Typing(C, &tr, &e), LAGOON_NOT_FOUND);
    unsubscribe(&ivys);
    unsubscribe(&jons);
    unsubscribe(&kims);
}

static uint32_t unread_count(const char *token)
{
    lagoon_set_token(C, token);
    lagoon_v1_NotificationsEmpty req = lagoon_v1_NotificationsEmpty_init_zero;
    lagoon_v1_UnreadCountResponse resp;
    assert_int_equal(lagoon_Notifications_UnreadCount(C, &req, &resp), LAGOON_OK);
    return resp.unread;
}

static lagoon_v1_ListNotificationsResponse notes;

static void list_notes(const char *token, int unread_only)
{
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
    lagoon_set_token(C, token);
    lagoon_v1_ListNotificationsRequest req = lagoon_v1_ListNotificationsRequest_init_zero;
    req.unread_only = unread_only;
    assert_int_equal(lagoon_Notifications_List(C, &req, &notes), LAGOON_OK);
}

static void test_notifications(void **state)
{
    (void)state;
    char lt[65], mt[65], nt[65];
    uint64_t lea = test_verified_user(T, C, "lea", 1, lt), max = test_verified_user(T, C, "max", 1, mt);
    test_verified_user(T, C, "ned", 1, nt);
    /* Ten messages make one notification, not ten. */
    for (int i = 0; i < 10; i++) {
        send_text(mt, lea, i == 9 ? "the latest" : "older");
        test_clock_advance(T, 10);
    }
    assert_int_equal(unread_count(lt), 1);
    list_notes(lt, 0);
    assert_int_equal(notes.notifications_count, 1);
    assert_int_equal(notes.notifications[0].count, 10);
    assert_int_equal(notes.notifications[0].type, lagoon_v1_Notification_Type_DIRECT_MESSAGE);
    assert_string_equal(notes.notifications[0].title, "New message from max");
    assert_string_equal(notes.notifications[0].content, "the latest");
    uint64_t first = notes.notifications[0].id;
    /* Read it; the next message starts a new one. Another sender has their own. */
    lagoon_set_token(C, lt);
    lagoon_v1_NotificationIdRequest idr = {first};
    lagoon_v1_NotificationsEmpty e;
    assert_int_equal(lagoon_Notifications_MarkRead(C, &idr, &e), LAGOON_OK);
    assert_int_equal(unread_count(lt), 0);
    send_text(mt, lea, "again");
    test_clock_advance(T, 10);
    send_text(nt, lea, "from ned");
    assert_int_equal(unread_count(lt), 2);
    list_notes(lt, 0);
    assert_int_equal(notes.notifications_count, 3);
    assert_string_equal(notes.notifications[0].content, "from ned"); /* newest first */
    list_notes(lt, 1);
    assert_int_equal(notes.notifications_count, 2);
    /* Someone else's notification does not exist for you. */
    lagoon_set_token(C, mt);
    assert_int_equal(lagoon_Notifications_MarkRead(C, &idr, &e), LAGOON_NOT_FOUND);
    assert_int_equal(lagoon_Notifications_Delete(C, &idr, &e), LAGOON_NOT_FOUND);
    /* Reading the conversation reads its notification. */
    lagoon_set_token(C, lt);
    lagoon_v1_MarkReadRequest mr = {max, 0};
    lagoon_v1_MarkReadResponse mresp;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    assert_int_equal(unread_count(lt), 1);
    /* Read all; delete one. */
    lagoon_set_token(C, lt);
    lagoon_v1_NotificationsEmpty none = lagoon_v1_NotificationsEmpty_init_zero;
    assert_int_equal(lagoon_Notifications_MarkAllRead(C, &none, &e), LAGOON_OK);
    assert_int_equal(unread_count(lt), 0);
    list_notes(lt, 1);
    assert_int_equal(notes.notifications_count, 0);
    lagoon_set_token(C, lt);
    assert_int_equal(lagoon_Notifications_Delete(C, &idr, &e), LAGOON_OK);
    list_notes(lt, 0);
    assert_int_equal(notes.notifications_count, 2);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
}

/* ---- a session's end ends its streams ------------------------------------------------------------ */

/* Signs name in once more: a second session (device). Its access token into access (65 bytes),
 * its refresh token into refresh (65 bytes) when not NULL. */
static void sign_in(const char *name, const char *password, char *access, char *refresh)
{
    lagoon_set_token(C, NULL);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "%s", name);
    snprintf(lr.password, sizeof(lr.password), "%s", password);
    lagoon_v1_TokenPair tp;
    if (lagoon_Auth_Login(C, &lr, &tp) != LAGOON_OK)
        fail_msg("login %s: %s", name, lagoon_last_error(C)->detail.message);
    snprintf(access, 65, "%s", tp.access_token);
    if (refresh)
        snprintf(refresh, 65, "%s", tp.refresh_token);
}

/* d's stream ends (no event before) with status, and a message containing want; d is closed. */
static void expect_end(device *d, int status, const char *want)
{
    lagoon_v1_Event ev;
    int r = lagoon_stream_recv_timeout(d->s, &ev, WAIT_MS);
    if (r != 0)
        fail_msg("the stream did not end (%d, event %d)", r, r == 1 ? (int)ev.which_payload : -1);
    assert_int_equal(lagoon_stream_finish(d->s, NULL), status);
    const char *msg = lagoon_last_error(d->c)->detail.message;
    if (strstr(msg, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", msg, want);
    lagoon_close(d->c);
}

/* d still delivers: a message from sender reaches it. */
static void expect_alive(device *d, const char *sender_token, uint64_t to)
{
    uint64_t id = send_text(sender_token, to, "still there?");
    lagoon_v1_Event ev;
    next_non_notification(d, &ev);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev.payload.message.message.id, id);
}

/* A new user signed in twice (tokens a1, a2), each session with a live subscription. */
static uint64_t two_sessions(const char *name, char *a1, char *a2, device *d1, device *d2)
{
    uint64_t id = test_verified_user(T, C, name, 1, a1);
    sign_in(name, TEST_PASSWORD, a2, NULL);
    subscribe(d1, a1, 0);
    subscribe(d2, a2, 0);
    return id;
}

static void test_logout_ends_that_sessions_streams(void **state)
{
    (void)state;
    char a1[65], a2[65], pt[65];
    device d1, d2;
    test_verified_user(T, C, "pia", 1, pt);
    uint64_t oli = two_sessions("oli", a1, a2, &d1, &d2);
    lagoon_set_token(C, a1);
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    assert_int_equal(lagoon_Auth_Logout(C, &e, &out), LAGOON_OK);
    expect_end(&d1, LAGOON_UNAUTHENTICATED, "session ended");
    expect_alive(&d2, pt, oli); /* the other session's stream goes on */
    unsubscribe(&d2);
}

static void test_logout_all_ends_every_stream(void **state)
{
    (void)state;
    char a1[65], a2[65];
    device d1, d2;
    two_sessions("quin", a1, a2, &d1, &d2);
    lagoon_set_token(C, a2);
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    assert_int_equal(lagoon_Auth_LogoutAll(C, &e, &out), LAGOON_OK);
    expect_end(&d1, LAGOON_UNAUTHENTICATED, "session ended");
    expect_end(&d2, LAGOON_UNAUTHENTICATED, "sign in again");
}

static void test_change_password_ends_other_sessions_streams(void **state)
{
    (void)state;
    char a1[65], a2[65], st[65];
    device d1, d2;
    test_verified_user(T, C, "sal", 1, st);
    uint64_t rex = two_sessions("rex", a1, a2, &d1, &d2);
    lagoon_set_token(C, a1);
    lagoon_v1_ChangePasswordRequest cp = lagoon_v1_ChangePasswordRequest_init_zero;
    snprintf(cp.current_password, sizeof(cp.current_password), "%s", TEST_PASSWORD);
    snprintf(cp.new_password, sizeof(cp.new_password), "a different passphrase");
    lagoon_v1_UsersEmpty out;
    assert_int_equal(lagoon_Users_ChangePassword(C, &cp, &out), LAGOON_OK);
    expect_end(&d2, LAGOON_UNAUTHENTICATED, "session ended");
    expect_alive(&d1, st, rex); /* the session that changed it stays */
    unsubscribe(&d1);
}

static void test_password_reset_ends_streams(void **state)
{
    (void)state;
    char a1[65], code[44];
    test_verified_user(T, C, "tia", 1, a1);
    device d;
    subscribe(&d, a1, 0);
    lagoon_set_token(C, NULL);
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    snprintf(fr.email, sizeof(fr.email), "tia@example.com");
    lagoon_v1_AuthEmpty out;
    assert_int_equal(lagoon_Auth_ForgotPassword(C, &fr, &out), LAGOON_OK);
    assert_true(test_mail_code(T, "tia@example.com", "Reset your password", code, WAIT_MS));
    lagoon_v1_ResetPasswordRequest rq = lagoon_v1_ResetPasswordRequest_init_zero;
    snprintf(rq.token, sizeof(rq.token), "%s", code);
    snprintf(rq.new_password, sizeof(rq.new_password), "a brand new passphrase");
    assert_int_equal(lagoon_Auth_ResetPassword(C, &rq, &out), LAGOON_OK);
    expect_end(&d, LAGOON_UNAUTHENTICATED, "session ended");
}

static void test_deactivation_ends_streams(void **state)
{
    (void)state;
    char ut[65], root[65];
    uint64_t uma = test_verified_user(T, C, "uma", 1, ut);
    store_error err;
    if (account_create_admin(T->app, "boss@example.com", "boss", "an admin passphrase", NULL, &err) != LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    sign_in("boss", "an admin passphrase", root, NULL);
    device d;
    subscribe(&d, ut, 0);
    lagoon_set_token(C, root);
    lagoon_v1_SetActiveRequest sa = {uma, false};
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_SetActive(C, &sa, &p), LAGOON_OK);
    expect_end(&d, LAGOON_UNAUTHENTICATED, "session ended");
}

static void test_account_deletion_ends_streams(void **state)
{
    (void)state;
    char vt[65];
    test_verified_user(T, C, "vic", 1, vt);
    device d;
    subscribe(&d, vt, 0);
    lagoon_set_token(C, vt);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty out;
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &out), LAGOON_OK);
    expect_end(&d, LAGOON_UNAUTHENTICATED, "session ended");
}

/* A message that went with its conversation (a participant deleted the account) comes as
 * DELETED in the other's replayed log, as a deleted message does. */
static void test_messages_of_a_deleted_account_replay_as_deleted(void **state)
{
    (void)state;
    char xt[65], yt[65];
    test_verified_user(T, C, "xan", 1, xt);
    uint64_t yul = test_verified_user(T, C, "yul", 1, yt);
    send_text(xt, yul, "before");
    device d;
    subscribe(&d, xt, 0);
    uint64_t from = d.current_seq;
    unsubscribe(&d);
    uint64_t id = send_text(xt, yul, "gone with yul");
    lagoon_set_token(C, yt);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty out;
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &out), LAGOON_OK);
    subscribe(&d, xt, from);
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    next_non_notification(&d, ev);
    assert_int_equal(ev->seq, from + 1);
    assert_int_equal(ev->payload.message.action, lagoon_v1_MessageEvent_Action_DELETED);
    assert_int_equal(ev->payload.message.message.id, id);
    assert_string_equal(ev->payload.message.message.content.text.text, "");
    free(ev);
    unsubscribe(&d);
}

static void test_refresh_token_reuse_ends_streams(void **state)
{
    (void)state;
    char wt[65], access[65], refresh[65], jt[65];
    uint64_t wes = test_verified_user(T, C, "wes", 1, wt);
    test_verified_user(T, C, "joy", 1, jt);
    sign_in("wes", TEST_PASSWORD, access, refresh);
    lagoon_set_token(C, NULL);
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", refresh);
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Refresh(C, &rr, &tp), LAGOON_OK);
    device d, other;
    subscribe(&d, tp.access_token, 0);
    subscribe(&other, wt, 0); /* another session of the same user */
    /* The old refresh token again: a thief. The session is revoked, and its stream ends. */
    assert_int_equal(lagoon_Auth_Refresh(C, &rr, &tp), LAGOON_UNAUTHENTICATED);
    expect_end(&d, LAGOON_UNAUTHENTICATED, "session ended");
    expect_alive(&other, jt, wes);
    unsubscribe(&other);
}

static void test_token_expiry_ends_streams(void **state)
{
    (void)state;
    char xt[65], yt[65];
    test_verified_user(T, C, "xia", 1, xt);
    device d;
    subscribe(&d, xt, 0);
    test_clock_advance(T, 25LL * 3600 * 1000); /* past the access token's 24 h */
    expect_end(&d, LAGOON_UNAUTHENTICATED, "expired");
    /* A fresh token subscribes again. */
    sign_in("xia", TEST_PASSWORD, yt, NULL);
    subscribe(&d, yt, 0);
    unsubscribe(&d);
}

/* ---- caps ------------------------------------------------------------------------------------ */

static void test_subscription_caps(void **state)
{
    (void)state;
    char zt[65], at[65];
    test_verified_user(T, C, "zed", 1, zt);
    test_verified_user(T, C, "abe", 1, at);
    enum { CONNS = EVENTS_MAX_SUBSCRIPTIONS_PER_USER / EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION };
    lagoon_client *conns[CONNS + 1];
    lagoon_stream *streams[CONNS + 1][EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION + 1];
    lagoon_v1_SubscribeRequest req = {0};
    lagoon_v1_Event ev;
    /* Up to the cap on each connection, until the user's cap. */
    lagoon_stream *extra;
    for (int c = 0; c < CONNS; c++) {
        conns[c] = test_client(T);
        lagoon_set_token(conns[c], zt);
        for (int i = 0; i < EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION; i++) {
            assert_int_equal(lagoon_Events_Subscribe(conns[c], &req, &streams[c][i]), LAGOON_OK);
            assert_int_equal(lagoon_stream_recv_timeout(streams[c][i], &ev, WAIT_MS), 1);
            assert_int_equal(ev.which_payload, lagoon_v1_Event_subscribed_tag);
        }
        if (c > 0)
            continue;
        /* One more on the full connection (the user is still under its cap). */
        assert_int_equal(lagoon_Events_Subscribe(conns[0], &req, &extra), LAGOON_OK);
        assert_int_equal(lagoon_stream_recv_timeout(extra, &ev, WAIT_MS), 0);
        assert_int_equal(lagoon_stream_finish(extra, NULL), LAGOON_RESOURCE_EXHAUSTED);
        assert_non_null(strstr(lagoon_last_error(conns[0])->detail.message, "per connection"));
    }
    /* One more for the user, on a connection of its own. */
    conns[CONNS] = test_client(T);
    lagoon_set_token(conns[CONNS], zt);
    assert_int_equal(lagoon_Events_Subscribe(conns[CONNS], &req, &extra), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(extra, &ev, WAIT_MS), 0);
    assert_int_equal(lagoon_stream_finish(extra, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(lagoon_last_error(conns[CONNS])->detail.message, "per user"));
    /* Another user is not affected, even on that connection. */
    lagoon_set_token(conns[CONNS], at);
    assert_int_equal(lagoon_Events_Subscribe(conns[CONNS], &req, &extra), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(extra, &ev, WAIT_MS), 1);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_subscribed_tag);
    lagoon_stream_cancel(extra);
    /* A cap, not a ban: after one ends, one more fits. */
    lagoon_stream_cancel(streams[0][0]);
    lagoon_set_token(conns[CONNS], zt);
    int ok = 0;
    for (int tries = 0; tries < 50 && !ok; tries++) { /* the cancel reaches the router first */
        assert_int_equal(lagoon_Events_Subscribe(conns[CONNS], &req, &extra), LAGOON_OK);
        ok = lagoon_stream_recv_timeout(extra, &ev, WAIT_MS) == 1;
        if (ok)
            lagoon_stream_cancel(extra);
        else
            lagoon_stream_finish(extra, NULL);
    }
    assert_true(ok);
    for (int c = 0; c <= CONNS; c++)
        lagoon_close(conns[c]);
}

/* ---- notifications on other devices; deleted words ----------------------------------------------- */

/* The next notification-state event of d. */
static void next_state(device *d, lagoon_v1_NotificationStateEvent *out)
{
    lagoon_v1_Event ev;
    for (int i = 0; i < 10; i++) {
        next_event(d, &ev);
        if (ev.which_payload == lagoon_v1_Event_notification_state_tag) {
            assert_true(ev.seq > 0); /* in the log: a device that was away replays it */
            *out = ev.payload.notification_state;
            return;
        }
    }
    fail_msg("no notification state event");
}

static void test_reading_notifications_reaches_other_devices(void **state)
{
    (void)state;
    char bt[65], ct[65], dt[65];
    uint64_t bea = test_verified_user(T, C, "bea", 1, bt);
    test_verified_user(T, C, "cal", 1, ct);
    test_verified_user(T, C, "dee", 1, dt);
    send_text(ct, bea, "one");
    send_text(dt, bea, "two"); /* another sender: another notification */
    send_text(ct, bea, "three");
    device phone, laptop;
    subscribe(&phone, bt, 0);
    subscribe(&laptop, bt, 0);
    list_notes(bt, 1);
    assert_int_equal(notes.notifications_count, 2);
    uint64_t first = notes.notifications[0].id;
    lagoon_set_token(C, bt);
    lagoon_v1_NotificationIdRequest idr = {first};
    lagoon_v1_NotificationsEmpty e;
    assert_int_equal(lagoon_Notifications_MarkRead(C, &idr, &e), LAGOON_OK);
    lagoon_v1_NotificationStateEvent s;
    for (int i = 0; i < 2; i++) { /* both devices, the one that read it too */
        next_state(i ? &laptop : &phone, &s);
        assert_int_equal(s.change, lagoon_v1_NotificationStateEvent_Change_READ);
        assert_int_equal(s.notification_id, first);
        assert_int_equal(s.unread, 1);
    }
    lagoon_set_token(C, bt);
    lagoon_v1_NotificationsEmpty none = lagoon_v1_NotificationsEmpty_init_zero;
    assert_int_equal(lagoon_Notifications_MarkAllRead(C, &none, &e), LAGOON_OK);
    next_state(&laptop, &s);
    assert_int_equal(s.change, lagoon_v1_NotificationStateEvent_Change_ALL_READ);
    assert_int_equal(s.unread, 0);
    lagoon_set_token(C, bt);
    assert_int_equal(lagoon_Notifications_Delete(C, &idr, &e), LAGOON_OK);
    next_state(&laptop, &s);
    assert_int_equal(s.change, lagoon_v1_NotificationStateEvent_Change_DELETED);
    assert_int_equal(s.notification_id, first);
    unsubscribe(&phone);
    unsubscribe(&laptop);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
}

/* Reading the conversation (Messages/MarkRead) reads its notification too: the user's other
 * devices hear it as they would from Notifications/MarkRead. */
static void test_reading_a_conversation_clears_the_badge_elsewhere(void **state)
{
    (void)state;
    char et[65], ft[65];
    uint64_t eve = test_verified_user(T, C, "kit", 1, et);
    uint64_t fay = test_verified_user(T, C, "lex", 1, ft);
    send_text(ft, eve, "hello");
    device laptop;
    subscribe(&laptop, et, 0);
    list_notes(et, 1);
    assert_int_equal(notes.notifications_count, 1);
    uint64_t note = notes.notifications[0].id;
    lagoon_set_token(C, et);
    lagoon_v1_MarkReadRequest mr = {fay, 0};
    lagoon_v1_MarkReadResponse mresp;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    lagoon_v1_NotificationStateEvent s;
    next_state(&laptop, &s);
    assert_int_equal(s.change, lagoon_v1_NotificationStateEvent_Change_READ);
    assert_int_equal(s.notification_id, note);
    assert_int_equal(s.unread, 0);
    unsubscribe(&laptop);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
}

static void delete_message(const char *token, uint64_t id)
{
    lagoon_set_token(C, token);
    lagoon_v1_DeleteMessageRequest dr = {id};
    lagoon_v1_MessagesEmpty empty;
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
}

/* Replays the last `kept` events of the user's log (all of them if fewer) and checks that none
 * shows word. */
static void log_lacks_last(const char *token, const char *word, uint64_t kept)
{
    device d;
    subscribe(&d, token, 0);
    uint64_t end = d.current_seq;
    unsubscribe(&d);
    uint64_t since = end > kept ? end - kept : 1;
    subscribe(&d, token, since);
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    for (uint64_t seq = since + 1; seq <= end; seq++) {
        next_event(&d, ev);
        assert_int_equal(ev->seq, seq);
        if (ev->which_payload == lagoon_v1_Event_message_tag)
            assert_null(strstr(ev->payload.message.message.content.text.text, word));
        if (ev->which_payload == lagoon_v1_Event_notification_tag)
            assert_null(strstr(ev->payload.notification.notification.content, word));
    }
    free(ev);
    unsubscribe(&d);
}

static void log_lacks(const char *token, const char *word)
{
    log_lacks_last(token, word, UINT64_MAX);
}

/* What the rows of a user's log hold on disk, not as the router fills them in when it sends
 * them: how many message events show word, and how many notification events. */
typedef struct stored_words {
    const char *word;
    unsigned messages, notifications;
} stored_words;

static int count_words(void *arg, uint64_t id, const void *row)
{
    (void)id;
    stored_words *w = arg;
    const lagoon_v1_Event *e = &((const lagoon_v1_UserEvent *)row)->event;
    if (e->which_payload == lagoon_v1_Event_message_tag &&
        strstr(e->payload.message.message.content.text.text, w->word) != NULL)
        w->messages++;
    if (e->which_payload == lagoon_v1_Event_notification_tag &&
        strstr(e->payload.notification.notification.content, w->word) != NULL)
        w->notifications++;
    return LAGOON_OK;
}

/* A query over user's log rows in seq order (prefix holds its key: keep it alive). */
static void log_query(store_query *q, store_key *prefix, uint64_t user)
{
    store_key_reset(prefix);
    store_key_u64(prefix, user);
    memset(q, 0, sizeof(*q));
    q->table = &lagoon_table_user_events;
    q->index = lagoon_index_user_events_by_user_seq;
    q->prefix = prefix->buf;
    q->prefix_len = prefix->len;
}

static stored_words stored_in_log(uint64_t user, const char *word)
{
    stored_words w = {word, 0, 0};
    store_key prefix;
    store_query q;
    log_query(&q, &prefix, user);
    q.page_size = STORE_PAGE_SIZE_MAX;
    store_txn *t;
    store_error err;
    store_page page;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    do {
        assert_int_equal(store_scan(t, &q, count_words, &w, &page, &err), LAGOON_OK);
        q.page_token = page.next_page_token;
    } while (page.next_page_token[0] != '\0');
    store_read_end(t);
    return w;
}

static void test_deleted_message_leaves_no_words(void **state)
{
    (void)state;
    char et[65], ft[65];
    uint64_t eve = test_verified_user(T, C, "eve", 1, et), fin = test_verified_user(T, C, "fin", 1, ft);
    /* Something first, so that the replay from 1 covers every later event. */
    send_text(et, fin, "hello fin");
    device d;
    subscribe(&d, et, 0);
    uint64_t m1 = send_text(ft, eve, "secret alpha");
    uint64_t m2 = send_text(ft, eve, "secret beta");
    /* An edit logs the words again. */
    lagoon_set_token(C, ft);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = m1;
    snprintf(er.text, sizeof(er.text), "secret alpha, edited");
    lagoon_v1_DirectMessage m;
    assert_int_equal(lagoon_Messages_Edit(C, &er, &m), LAGOON_OK);
    list_notes(et, 1);
    assert_int_equal(notes.notifications_count, 1);
    assert_int_equal(notes.notifications[0].count, 2);
    assert_string_equal(notes.notifications[0].content, "secret beta");
    uint64_t note = notes.notifications[0].id;
    /* The newest goes: the notification no longer shows it, and counts one. */
    delete_message(ft, m2);
    list_notes(et, 1);
    assert_int_equal(notes.notifications_count, 1);
    assert_int_equal(notes.notifications[0].count, 1);
    assert_null(strstr(notes.notifications[0].content, "beta"));
    assert_int_equal(unread_count(et), 1);
    /* The last one goes: no notification is left, none unread, and the devices hear of it. */
    delete_message(ft, m1);
    list_notes(et, 0);
    for (pb_size_t i = 0; i < notes.notifications_count; i++)
        assert_null(strstr(notes.notifications[i].content, "secret"));
    list_notes(et, 1);
    assert_int_equal(notes.notifications_count, 0);
    assert_int_equal(unread_count(et), 0);
    lagoon_v1_NotificationStateEvent s;
    next_state(&d, &s);
    assert_int_equal(s.change, lagoon_v1_NotificationStateEvent_Change_DELETED);
    assert_int_equal(s.notification_id, note);
    assert_int_equal(s.unread, 0);
    unsubscribe(&d);
    /* Neither log, replayed or on disk, shows the words. */
    log_lacks(et, "secret");
    log_lacks(ft, "secret");
    for (int i = 0; i < 2; i++) {
        stored_words w = stored_in_log(i ? fin : eve, "secret");
        assert_int_equal(w.messages + w.notifications, 0);
    }
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
}

static void test_deleted_words_leave_notification_after_log_trim(void **state)
{
    (void)state;
    test_app *saved = T;
    lagoon_client *saved_c = C;
    T = test_app_new(tweak_short_retention);
    C = test_client(T);
    char kt[65], lt[65], mt[65];
    test_verified_user(T, C, "kai", 1, kt);
    uint64_t lou = test_verified_user(T, C, "lou", 1, lt);
    test_verified_user(T, C, "mia", 1, mt);
    uint64_t id = send_text(kt, lou, "hidden words");
    for (int i = 0; i < 5; i++) /* lou's log keeps 10 events: the first two go */
        send_text(mt, lou, "filler");
    list_notes(lt, 1);
    assert_int_equal(notes.notifications_count, 2);
    delete_message(kt, id);
    list_notes(lt, 0);
    assert_int_equal(notes.notifications_count, 1);
    assert_string_equal(notes.notifications[0].content, "filler");
    assert_int_equal(unread_count(lt), 1);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
    lagoon_close(C);
    test_app_free(T);
    T = saved;
    C = saved_c;
}


/* ---- the router held at a turn: deterministic batches -------------------------------------- */

#define GATE_WAIT_MS 10000 /* a held router or a test waiting on it gives up after this */

/* Holds the router before it takes its next batch (APP_HOOK_ROUTER_TURN), so that everything
 * committed meanwhile reaches it in one batch. */
typedef struct router_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int closed; /* the router waits at its next turn */
    int held;   /* it is waiting now */
} router_gate;

static router_gate RG = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void gate_deadline(struct timespec *ts)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += GATE_WAIT_MS / 1000;
}

static void router_hook(void *arg, int point)
{
    router_gate *g = arg;
    if (point != APP_HOOK_ROUTER_TURN)
        return;
    pthread_mutex_lock(&g->mu);
    if (g->closed) {
        g->held = 1;
        pthread_cond_broadcast(&g->cv);
        struct timespec until;
        gate_deadline(&until);
        while (g->closed && pthread_cond_timedwait(&g->cv, &g->mu, &until) != ETIMEDOUT)
            ;
        g->held = 0;
    }
    pthread_mutex_unlock(&g->mu);
}

/* Closes the gate and waits until the router is held at it (it turns at least every
 * ROUTER_TICK_MS while anyone subscribes). */
static void router_hold(void)
{
    pthread_mutex_lock(&RG.mu);
    RG.closed = 1;
    struct timespec until;
    gate_deadline(&until);
    while (!RG.held && pthread_cond_timedwait(&RG.cv, &RG.mu, &until) != ETIMEDOUT)
        ;
    int held = RG.held;
    pthread_mutex_unlock(&RG.mu);
    assert_true(held);
}

static void router_release(void)
{
    pthread_mutex_lock(&RG.mu);
    RG.closed = 0;
    pthread_cond_broadcast(&RG.cv);
    pthread_mutex_unlock(&RG.mu);
}

static void tweak_gated(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->hook = router_hook;
    acfg->hook_arg = &RG;
}

static void tweak_gated_ret100(app_config *acfg, rpc_config *cfg)
{
    tweak_gated(acfg, cfg);
    acfg->event_retention_count = 100;
}

/* A fresh server with its own tweak for one test; restored by own_app_end. */
static void own_app(test_app **saved, lagoon_client **saved_c, void (*tw)(app_config *, rpc_config *))
{
    *saved = T;
    *saved_c = C;
    T = test_app_new(tw);
    C = test_client(T);
}

static void own_app_end(test_app *saved, lagoon_client *saved_c)
{
    lagoon_close(C);
    test_app_free(T);
    T = saved;
    C = saved_c;
}

/* The encoded RequestMeta of a call made as token, into mb[256]: its length. */
static long raw_meta(const char *token, uint8_t mb[256])
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", token);
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, 256, NULL);
    assert_true(ml > 0);
    return ml;
}

/* n calls of method with the same request, pipelined on one raw connection as token; waits
 * for every answer, each OK. */
static void pipeline(const char *token, uint32_t method, const wire_msginfo *info, const void *req, uint32_t n)
{
    int fd = raw_connect(T->srv.port, 1);
    uint8_t mb[256], pb[256];
    long ml = raw_meta(token, mb);
    long pl = wire_encode(info, req, pb, sizeof(pb), NULL);
    assert_true(ml > 0 && pl > 0);
    for (uint32_t i = 0; i < n; i++)
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 2 * i + 1, method, mb, (size_t)ml, pb, (size_t)pl);
    static uint8_t buf[1 << 16];
    wire_frame f;
    uint32_t answered = 0;
    while (answered < n && raw_read_frame(fd, buf, sizeof(buf), &f, WAIT_MS) == 1) {
        if (f.type != WIRE_RESPONSE)
            continue;
        assert_int_equal(f.code, LAGOON_OK);
        answered++;
    }
    close(fd);
    assert_int_equal(answered, n);
}

static void pipeline_sends(const char *token, uint64_t to, uint32_t n)
{
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = to;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "flood");
    pipeline(token, lagoon_method_Messages_Send.id, &lagoon_v1_SendMessageRequest_info, &req, n);
}

/* A fresh server (tweak tw) with gia, subscribed as d, and hap who writes to her: gia's id. */
static uint64_t gated_pair(test_app **saved, lagoon_client **saved_c, void (*tw)(app_config *, rpc_config *),
                           char gt[65], char ht[65], device *d)
{
    own_app(saved, saved_c, tw);
    uint64_t gia = test_verified_user(T, C, "gia", 1, gt);
    test_verified_user(T, C, "hap", 1, ht);
    subscribe(d, gt, 0);
    return gia;
}

/* Events of a held router's batch whose rows retention trimmed before delivery read them: the
 * subscriber does not skip them silently; it is switched to replay, which finds them gone and
 * ends the stream with OUT_OF_RANGE. (It used to get the later events only, and stay open.) */
static void test_trimmed_before_delivery_is_out_of_range(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    enum { SENDS = 60 }; /* 120 events for the recipient: retention keeps 100 */
    char gt[65], ht[65];
    device d;
    uint64_t gia = gated_pair(&saved, &saved_c, tweak_gated_ret100, gt, ht, &d);
    router_hold();
    pipeline_sends(ht, gia, SENDS);
    router_release();
    lagoon_v1_Event ev;
    uint64_t want = d.current_seq + 1;
    int r;
    for (int i = 0; i <= 2 * SENDS && (r = lagoon_stream_recv_timeout(d.s, &ev, WAIT_MS)) == 1; i++) {
        assert_int_equal(ev.seq, want); /* never a gap */
        want++;
    }
    assert_int_equal(r, 0);
    assert_int_equal(lagoon_stream_finish(d.s, NULL), LAGOON_OUT_OF_RANGE);
    assert_non_null(strstr(lagoon_last_error(d.c)->detail.message, "no longer kept"));
    lagoon_close(d.c);
    own_app_end(saved, saved_c);
}

/* A flood past a user's lane cap, all in one batch: the subscriber still gets every event once,
 * in order (the overflow is read from the log by replay), and the stream stays open. */
static void test_lane_overflow_replays_in_order(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    enum { SENDS = 600 }; /* 1 200 events for gia: past EVENTS_USER_TURN + EVENTS_LANE_MAX */
    char gt[65], ht[65];
    device d;
    uint64_t gia = gated_pair(&saved, &saved_c, tweak_gated, gt, ht, &d);
    router_hold();
    pipeline_sends(ht, gia, SENDS);
    router_release();
    lagoon_v1_Event ev;
    for (uint64_t want = d.current_seq + 1; want <= d.current_seq + 2 * SENDS; want++) {
        next_event(&d, &ev);
        assert_int_equal(ev.seq, want);
    }
    uint64_t id = send_text(ht, gia, "still live");
    next_non_notification(&d, &ev);
    assert_int_equal(ev.payload.message.message.id, id);
    unsubscribe(&d);
    own_app_end(saved, saved_c);
}

/* Typing beyond a user's lane cap is dropped: one batch of typing costs the router at most
 * EVENTS_USER_TURN + EVENTS_LANE_MAX commands of memory and sends. */
static void test_typing_flood_is_capped(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    enum { TYPINGS = 1500 };
    char gt[65], ht[65];
    device d;
    uint64_t gia = gated_pair(&saved, &saved_c, tweak_gated, gt, ht, &d);
    send_text(ht, gia, "hello");
    lagoon_v1_Event ev;
    next_event(&d, &ev); /* its message and notification */
    next_event(&d, &ev);
    router_hold();
    lagoon_v1_TypingRequest req = {gia};
    pipeline(ht, lagoon_method_Events_Typing.id, &lagoon_v1_TypingRequest_info, &req, TYPINGS);
    router_release();
    unsigned typing = 0;
    /* Until the stream is quiet: every typing indicator the router kept has been sent by then. */
    for (int i = 0; i < TYPINGS && lagoon_stream_recv_timeout(d.s, &ev, 1500) == 1; i++) {
        assert_int_equal(ev.which_payload, lagoon_v1_Event_typing_tag);
        typing++;
    }
    assert_int_equal(typing, EVENTS_USER_TURN + EVENTS_LANE_MAX);
    unsubscribe(&d);
    own_app_end(saved, saved_c);
}

/* Opens Events/Subscribe as token on raw connection fd, call id call_id, and reads its
 * subscribed event. */
static void raw_subscribe(int fd, uint32_t call_id, const char *token)
{
    uint8_t mb[256];
    long ml = raw_meta(token, mb);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, call_id, lagoon_method_Events_Subscribe.id, mb,
                   (size_t)ml, NULL, 0);
    static uint8_t buf[1 << 16];
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, WAIT_MS), 1);
    assert_int_equal(f.type, WIRE_MESSAGE);
    assert_int_equal(f.call_id, call_id);
}

/* A stream ends when the access token it was opened with expires, even when a Refresh (a new
 * token, a later expiry) commits before the router starts the stream. */
static void test_stream_keeps_its_tokens_expiry(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    char gt[65], ht[65], rt[65], at[65];
    device other, d;
    gated_pair(&saved, &saved_c, tweak_gated, gt, ht, &other); /* keeps the router turning */
    sign_in("hap", TEST_PASSWORD, at, rt);
    router_hold();
    d.c = test_client(T);
    lagoon_set_token(d.c, at);
    lagoon_v1_SubscribeRequest sr = {0};
    assert_int_equal(lagoon_Events_Subscribe(d.c, &sr, &d.s), LAGOON_OK);
    /* A later call on the same connection answered: the Subscribe handler has run. */
    lagoon_v1_HealthCheckRequest hr = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse hresp;
    assert_int_equal(lagoon_Health_Check(d.c, &hr, &hresp), LAGOON_OK);
    test_clock_advance(T, 12LL * 3600 * 1000);
    lagoon_set_token(C, NULL);
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", rt);
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Refresh(C, &rr, &tp), LAGOON_OK); /* its token: 36 h from the start */
    router_release();
    lagoon_v1_Event ev;
    next_event(&d, &ev);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_subscribed_tag);
    test_clock_advance(T, 13LL * 3600 * 1000); /* 25 h: past the first token's 24 h */
    expect_end(&d, LAGOON_UNAUTHENTICATED, "expired");
    expect_end(&other, LAGOON_UNAUTHENTICATED, "expired");
    own_app_end(saved, saved_c);
}

/* ---- a message's notification follows the message, not its words ------------------------------ */

static lagoon_v1_DirectMessage edit_text(const char *token, uint64_t id, const char *text, int want)
{
    lagoon_set_token(C, token);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = id;
    snprintf(er.text, sizeof(er.text), "%s", text);
    lagoon_v1_DirectMessage m;
    memset(&m, 0, sizeof(m));
    assert_int_equal(lagoon_Messages_Edit(C, &er, &m), want);
    return m;
}

static void notes_done(void)
{
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &notes);
    memset(&notes, 0, sizeof(notes));
}

/* The notification of a message shows its edited words, and after the message's events left
 * the log (retention), deleting it still removes the notification that counted it only, and
 * the badge with it. (The notification used to keep the original words, count 1, unread 2.) */
static void test_edited_then_trimmed_delete_clears_notification(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    own_app(&saved, &saved_c, tweak_short_retention);
    char kt[65], lt[65], mt[65];
    test_verified_user(T, C, "kai", 1, kt);
    uint64_t lou = test_verified_user(T, C, "lou", 1, lt);
    test_verified_user(T, C, "mia", 1, mt);
    uint64_t id = send_text(kt, lou, "original secret");
    lagoon_v1_DirectMessage e = edit_text(kt, id, "fixed", LAGOON_OK);
    assert_int_equal(e.edit_count, 1);
    assert_int_equal(e.notification_id, 0); /* bookkeeping stays on the server */
    assert_int_equal(e.sender_event_seqs_count + e.recipient_event_seqs_count, 0);
    list_notes(lt, 1);
    assert_int_equal(notes.notifications_count, 1);
    assert_string_equal(notes.notifications[0].content, "fixed");
    assert_int_equal(notes.notifications[0].snippet_message_id, id);
    for (int i = 0; i < 5; i++) /* lou's log keeps 10 events: kai's go */
        send_text(mt, lou, "filler");
    delete_message(kt, id);
    list_notes(lt, 0);
    assert_int_equal(notes.notifications_count, 1);
    assert_string_equal(notes.notifications[0].content, "filler");
    assert_int_equal(unread_count(lt), 1);
    notes_done();
    log_lacks_last(lt, "secret", 10);
    log_lacks_last(lt, "fixed", 10);
    own_app_end(saved, saved_c);
}

/* Three messages collapsed into one notification: deleting one it does not show lowers the
 * count and keeps the shown words; deleting the one it shows clears them; the last one takes
 * the notification and the badge. Editing a message it does not show changes nothing. */
static void test_collapsed_notification_counts_by_message(void **state)
{
    (void)state;
    char nt[65], ot[65];
    test_verified_user(T, C, "norvel", 1, nt);
    uint64_t oli = test_verified_user(T, C, "oswin", 1, ot);
    uint64_t first = send_text(nt, oli, "first words");
    uint64_t second = send_text(nt, oli, "second words");
    uint64_t third = send_text(nt, oli, "third words");
    list_notes(ot, 1);
    assert_int_equal(notes.notifications_count, 1);
    assert_int_equal(notes.notifications[0].count, 3);
    assert_string_equal(notes.notifications[0].content, "third words");
    edit_text(nt, first, "first edited", LAGOON_OK);
    list_notes(ot, 1);
    assert_string_equal(notes.notifications[0].content, "third words");
    delete_message(nt, first);
    list_notes(ot, 1);
    assert_int_equal(notes.notifications[0].count, 2);
    assert_string_equal(notes.notifications[0].content, "third words");
    delete_message(nt, third);
    list_notes(ot, 1);
    assert_int_equal(notes.notifications[0].count, 1);
    assert_string_equal(notes.notifications[0].content, "");
    assert_int_equal(notes.notifications[0].snippet_message_id, 0);
    delete_message(nt, second);
    list_notes(ot, 0);
    assert_int_equal(notes.notifications_count, 0);
    assert_int_equal(unread_count(ot), 0);
    notes_done();
    log_lacks(ot, "words");
    log_lacks(ot, "edited");
}

/* Edits per message are capped (each logs the whole text in two logs, and Delete rewrites every
 * one): the 11th is refused with a clear error, and Delete still removes every copy. */
static void test_edit_cap_bounds_delete(void **state)
{
    (void)state;
    char pt[65], qt[65];
    uint64_t pim = test_verified_user(T, C, "pim", 1, pt);
    uint64_t quo = test_verified_user(T, C, "qum", 1, qt);
    uint64_t id = send_text(pt, quo, "draft 0");
    char text[32];
    for (uint32_t i = 1; i <= 10; i++) {
        snprintf(text, sizeof(text), "draft %u", i);
        assert_int_equal(edit_text(pt, id, text, LAGOON_OK).edit_count, i);
    }
    edit_text(pt, id, "draft 11", LAGOON_FAILED_PRECONDITION);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "at most 10 times"));
    assert_int_equal(stored_in_log(quo, "draft").notifications, 11); /* sent, and each edit */
    delete_message(pt, id);
    log_lacks(pt, "draft");
    log_lacks(qt, "draft");
    for (int i = 0; i < 2; i++) {
        stored_words w = stored_in_log(i ? quo : pim, "draft");
        assert_int_equal(w.messages + w.notifications, 0);
    }
    list_notes(qt, 0);
    assert_int_equal(notes.notifications_count, 0);
    notes_done();
}

/* Message events are logged as references (the message's ids): a resume after an Edit shows
 * the edited message in the SENT event too, and after a Delete the message's events come as
 * DELETED, before the Delete's own. The log on disk holds the words only in the notification's
 * events, and after the Delete nowhere. */
static void expect_message_event(device *d, lagoon_v1_Event *ev, lagoon_v1_MessageEvent_Action action, uint64_t id,
                                 const char *text)
{
    next_non_notification(d, ev);

    assert_int_equal(ev->which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev->payload.message.action, action);
    assert_int_equal(ev->payload.message.message.id, id);
    assert_string_equal(ev->payload.message.message.content.text.text, text);
}

static void test_resume_across_edit_and_delete(void **state)
{
    (void)state;
    char vt[65], wt[65];
    uint64_t vic = test_verified_user(T, C, "viv", 1, vt), wes = test_verified_user(T, C, "wyn", 1, wt);
    send_text(vt, wes, "hello"); /* so that both logs have a position to resume from */
    device d;
    uint64_t from[2]; /* the logs' ends before: vic's, wyn's */
    for (int k = 0; k < 2; k++) {
        subscribe(&d, k ? wt : vt, 0);
        from[k] = d.current_seq;
        unsubscribe(&d);
    }
    uint64_t id = send_text(wt, vic, "first words");
    assert_int_equal(edit_text(wt, id, "second words", LAGOON_OK).edit_count, 1);
    for (int i = 0; i < 2; i++) {
        stored_words w = stored_in_log(i ? wes : vic, "words");
        assert_int_equal(w.messages, 0);
        assert_int_equal(w.notifications, i ? 0 : 2); /* the notification, sent and edited */
    }
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    subscribe(&d, vt, from[0]);
    expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_SENT, id, "second words");
    assert_int_equal(ev->seq, from[0] + 1);
    assert_int_equal(ev->payload.message.message.edit_count, 1);
    assert_int_equal(ev->payload.message.message.sender_id, wes);
    assert_int_equal(ev->payload.message.message.notification_id, 0); /* no bookkeeping */
    expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_EDITED, id, "second words");
    unsubscribe(&d);
    /* Live, the same. */
    subscribe(&d, vt, 0);
    uint64_t live = send_text(wt, vic, "live words");
    expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_SENT, live, "live words");
    unsubscribe(&d);
    delete_message(wt, id);
    for (int k = 0; k < 2; k++) {
        subscribe(&d, k ? wt : vt, from[k]);
        expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_DELETED, id, "");
        assert_int_equal(ev->payload.message.message.conversation_id != 0, 1);
        assert_int_equal(ev->payload.message.message.recipient_id, vic);
        expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_DELETED, id, ""); /* was EDITED */
        expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_SENT, live, "live words");
        expect_message_event(&d, ev, lagoon_v1_MessageEvent_Action_DELETED, id, ""); /* the Delete's */
        unsubscribe(&d);
    }
    stored_words w = stored_in_log(vic, "first");
    assert_int_equal(w.messages + w.notifications, 0);
    w = stored_in_log(vic, "second");
    assert_int_equal(w.messages + w.notifications, 0);
    free(ev);
}

typedef struct legacy_events {
    uint64_t message_id;
    uint64_t ids[64];
    unsigned n;
} legacy_events;

static int collect_message_events(void *arg, uint64_t id, const void *row)
{
    legacy_events *le = arg;
    const lagoon_v1_Event *e = &((const lagoon_v1_UserEvent *)row)->event;
    if (e->which_payload == lagoon_v1_Event_message_tag && e->payload.message.message.id == le->message_id &&
        le->n < sizeof(le->ids) / sizeof(le->ids[0]))
        le->ids[le->n++] = id;
    return LAGOON_OK;
}

/* The message's events in user's log hold the message whole, as they did before events were
 * references; with seqs (may be NULL), their seqs are added there (*n of them). */
static int make_legacy_events(store_txn *t, const lagoon_v1_DirectMessage *m, uint64_t user, uint64_t *seqs,
                              pb_size_t *n, store_error *err)
{
    legacy_events le = {.message_id = m->id};
    store_key prefix;
    store_query q;
    log_query(&q, &prefix, user);
    q.reverse = 1;
    q.page_size = 64;
    store_page page;
    int st = store_scan(t, &q, collect_message_events, &le, &page, err);
    lagoon_v1_UserEvent *row = malloc(sizeof(*row));
    if (row == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    for (unsigned i = 0; i < le.n && st == LAGOON_OK; i++) {
        st = store_get(t, &lagoon_table_user_events, le.ids[i], row, err);
        if (st == LAGOON_OK) {
            row->event.payload.message.message = *m;
            row->event.payload.message.message.notification_id = 0;
            row->event.payload.message.message.sender_event_seqs_count = 0;
            row->event.payload.message.message.recipient_event_seqs_count = 0;
            row->event.payload.message.message.events_tracked = false;
            st = store_update(t, &lagoon_table_user_events, row, err);
        }
        if (st == LAGOON_OK && seqs != NULL)
            seqs[(*n)++] = row->event.seq;
    }
    free(row);
    return st;
}

/* Message row id (arg) as rows stored before they recorded their notification and events, and
 * its events as they were logged then. */
static int make_legacy(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_DirectMessage *m = malloc(sizeof(*m));
    if (m == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = store_get(t, &lagoon_table_direct_messages, *(const uint64_t *)arg, m, err);
    m->notification_id = 0;
    m->sender_event_seqs_count = m->recipient_event_seqs_count = 0;
    m->events_tracked = false;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_direct_messages, m, err);
    if (st == LAGOON_OK)
        st = make_legacy_events(t, m, m->sender_id, NULL, NULL, err);
    if (st == LAGOON_OK)
        st = make_legacy_events(t, m, m->recipient_id, NULL, NULL, err);
    free(m);
    return st;
}

/* Message row id (arg) as rows stored after they listed their events but before events were
 * references: its message events hold it whole, and its row lists them with its notification's. */
static int make_tracked_legacy(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_DirectMessage *m = malloc(sizeof(*m));
    if (m == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = store_get(t, &lagoon_table_direct_messages, *(const uint64_t *)arg, m, err);
    if (st == LAGOON_OK)
        st = make_legacy_events(t, m, m->sender_id, m->sender_event_seqs, &m->sender_event_seqs_count, err);
    if (st == LAGOON_OK)
        st = make_legacy_events(t, m, m->recipient_id, m->recipient_event_seqs, &m->recipient_event_seqs_count,
                                err);
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_direct_messages, m, err);
    free(m);
    return st;
}

/* Rows from before: Delete still finds their words by scanning the logs, and their notification
 * through the log or, once retention dropped that, by its words. */
static void test_deleted_legacy_message_leaves_no_words(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    own_app(&saved, &saved_c, tweak_short_retention);
    char sot[65], tt[65], ut[65];
    uint64_t sol = test_verified_user(T, C, "sol", 1, sot);
    uint64_t tam = test_verified_user(T, C, "tam", 1, tt);
    test_verified_user(T, C, "ugo", 1, ut);
    store_error err;
    /* Its events still in the log, holding its words. */
    uint64_t id = send_text(sot, tam, "old hidden words");
    assert_int_equal(store_write(T->app->db, make_legacy, &id, &err), LAGOON_OK);
    assert_int_equal(stored_in_log(sol, "hidden").messages, 1);
    assert_int_equal(stored_in_log(tam, "hidden").messages, 1);
    delete_message(sot, id);
    log_lacks_last(tt, "hidden", 10);
    log_lacks_last(sot, "hidden", 10);
    for (int i = 0; i < 2; i++) {
        stored_words w = stored_in_log(i ? tam : sol, "hidden");
        assert_int_equal(w.messages + w.notifications, 0);
    }
    list_notes(tt, 0);
    assert_int_equal(notes.notifications_count, 0);
    /* Its events trimmed: the notification is found by its words. */
    id = send_text(sot, tam, "old secret words");
    assert_int_equal(store_write(T->app->db, make_legacy, &id, &err), LAGOON_OK);
    for (int i = 0; i < 5; i++)
        send_text(ut, tam, "filler");
    delete_message(sot, id);
    list_notes(tt, 0);
    assert_int_equal(notes.notifications_count, 1);
    assert_string_equal(notes.notifications[0].content, "filler");
    assert_int_equal(unread_count(tt), 1);
    notes_done();
    /* Listed, holding its words (edited too): Delete rewrites what the row lists. */
    id = send_text(sot, tam, "tracked old words");
    edit_text(sot, id, "tracked old words, edited", LAGOON_OK);
    assert_int_equal(store_write(T->app->db, make_tracked_legacy, &id, &err), LAGOON_OK);
    assert_int_equal(stored_in_log(sol, "tracked").messages, 2);
    assert_int_equal(stored_in_log(tam, "tracked").messages, 2);
    delete_message(sot, id);
    for (int i = 0; i < 2; i++) {
        stored_words w = stored_in_log(i ? tam : sol, "tracked");
        assert_int_equal(w.messages + w.notifications, 0);
    }
    own_app_end(saved, saved_c);
}

/* ---- fair delivery keeps each user's order --------------------------------------------------- */

/* Many sends pipelined on one raw connection commit in large batches, so the router receives
 * runs of a user's events longer than its per-turn share and queues the rest in the user's lane.
 * Whatever the batches, each subscriber gets every event once, in seq order. */
static void test_flood_keeps_order(void **state)
{
    (void)state;
    enum { SENDS = 300 };
    char gt[65], ht[65], it[65];
    uint64_t gia = test_verified_user(T, C, "gia", 1, gt), ike = test_verified_user(T, C, "ike", 1, it);
    test_verified_user(T, C, "hap", 1, ht);
    device flooded[4], quiet;
    for (int i = 0; i < 4; i++)
        subscribe(&flooded[i], gt, 0);
    subscribe(&quiet, it, 0);
    pipeline_sends(ht, gia, SENDS);
    /* Then another user's event (test_quiet_user_not_behind_a_flood asserts its order). */
    uint64_t to_ike = send_text(ht, ike, "not starved");
    lagoon_v1_Event ev;
    next_non_notification(&quiet, &ev);
    assert_int_equal(ev.payload.message.message.id, to_ike);
    /* Each send: a message and a notification (collapsed) for gia. */
    for (int i = 0; i < 4; i++) {
        for (uint64_t want = flooded[i].current_seq + 1; want <= flooded[i].current_seq + 2 * SENDS; want++) {
            next_event(&flooded[i], &ev);
            assert_int_equal(ev.seq, want);
        }
        unsubscribe(&flooded[i]);
    }
    unsubscribe(&quiet);
}

/* Fairness, asserted on order: the flooded user's and the quiet user's subscriptions share one
 * connection, so its frames show the order the router sent them in. With one batch holding a
 * 600-event flood for gia and then one message for ike, ike's message goes out within gia's
 * first turn (EVENTS_USER_TURN events), not after the whole flood. */
static void test_quiet_user_not_behind_a_flood(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    own_app(&saved, &saved_c, tweak_gated);
    enum { SENDS = 300 };
    char gt[65], ht[65], it[65];
    uint64_t gia = test_verified_user(T, C, "gia", 1, gt), ike = test_verified_user(T, C, "ike", 1, it);
    test_verified_user(T, C, "hap", 1, ht);
    int fd = raw_connect(T->srv.port, 1);
    raw_subscribe(fd, 1, gt);
    raw_subscribe(fd, 3, it);
    router_hold();
    pipeline_sends(ht, gia, SENDS);
    uint64_t to_ike = send_text(ht, ike, "not starved");
    router_release();
    static uint8_t buf[1 << 16];
    static lagoon_v1_Event ev;
    wire_frame f;
    unsigned gia_before = 0;
    int found = 0;
    for (int i = 0; i < 4 * SENDS && !found && raw_read_frame(fd, buf, sizeof(buf), &f, WAIT_MS) == 1; i++) {
        assert_int_equal(f.type, WIRE_MESSAGE);
        if (f.call_id == 1) {
            gia_before++;
            continue;
        }
        wire_violation v;
        assert_int_equal(wire_decode_trusted(&lagoon_v1_Event_info, f.payload, f.payload_len, &ev, &v), 0);
        found = ev.which_payload == lagoon_v1_Event_message_tag && ev.payload.message.message.id == to_ike;
        pb_release(lagoon_v1_Event_fields, &ev);
    }
    assert_true(found);
    assert_true(gia_before <= EVENTS_USER_TURN);
    close(fd);
    own_app_end(saved, saved_c);
}

/* ---- topics through a held router ---- */

typedef struct topic_burst {
    lagoon_v1_Topic topic;
    uint64_t user; /* joins it, when not 0 */
    int n;         /* events published */
} topic_burst;

static int write_topic_burst(store_txn *t, void *arg, store_error *err)
{
    const topic_burst *b = arg;
    int st = b->user ? events_topic_join(t, T->app, b->user, &b->topic, err) : LAGOON_OK;
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    for (int i = 0; i < b->n && st == LAGOON_OK; i++) {
        *ev = (lagoon_v1_Event)lagoon_v1_Event_init_zero;
        ev->which_payload = lagoon_v1_Event_topic_text_tag;
        snprintf(ev->payload.topic_text.text, sizeof(ev->payload.topic_text.text), "b");
        st = events_topic_publish(t, T->app, &b->topic, ev, err);
    }
    free(ev);
    return st;
}

/* The next event of d that is of a topic (a membership event is skipped) has seq want. */
static void next_topic_seq(device *d, uint64_t want, lagoon_v1_Event *ev)
{
    do
        next_event(d, ev);
    while (ev->which_payload == lagoon_v1_Event_membership_tag);
    assert_true(ev->has_topic);
    assert_int_equal(ev->seq, want);
}

/* One batch of a topic's events needing more sends than a turn makes (EVENTS_TOPIC_TURN_SENDS:
 * 2 devices x 600 events) continues in the next turns; one with more events than its lane holds
 * (EVENTS_LANE_MAX) is read from the topic's log. Either way every device gets every event once,
 * in order. */
static void test_topic_burst_keeps_order(void **state)
{
    (void)state;
    test_app *saved;
    lagoon_client *saved_c;
    own_app(&saved, &saved_c, tweak_gated);
    enum { TURNS = 600, OVERFLOW = EVENTS_LANE_MAX + 100 };
    char gt[65];
    topic_burst b = {{lagoon_v1_Topic_Kind_GROUP, 9}, test_verified_user(T, C, "gia", 1, gt), 0};
    store_error err;
    assert_int_equal(store_write(T->app->db, write_topic_burst, &b, &err), LAGOON_OK);
    device d[2];
    subscribe(&d[0], gt, 0);
    subscribe(&d[1], gt, 0);
    lagoon_v1_Event *ev = malloc(sizeof(*ev));
    assert_non_null(ev);
    b.user = 0;
    uint64_t seq = 0;
    for (int round = 0; round < 2; round++) {
        b.n = round ? OVERFLOW : TURNS;
        router_hold();
        assert_int_equal(store_write(T->app->db, write_topic_burst, &b, &err), LAGOON_OK);
        router_release();
        for (int i = 0; i < 2; i++)
            for (uint64_t want = seq + 1; want <= seq + (uint64_t)b.n; want++)
                next_topic_seq(&d[i], want, ev);
        seq += (uint64_t)b.n;
    }
    unsubscribe(&d[0]);
    unsubscribe(&d[1]);
    free(ev);
    own_app_end(saved, saved_c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_to_two_devices),
        cmocka_unit_test(test_resume_without_loss),
        cmocka_unit_test(test_purged_since_is_out_of_range),
        cmocka_unit_test(test_retention_by_age),
        cmocka_unit_test(test_slow_reader_cut_off_then_resumes),
        cmocka_unit_test(test_typing_reaches_only_the_partner),
        cmocka_unit_test(test_notifications),
        cmocka_unit_test(test_logout_ends_that_sessions_streams),
        cmocka_unit_test(test_logout_all_ends_every_stream),
        cmocka_unit_test(test_change_password_ends_other_sessions_streams),
        cmocka_unit_test(test_password_reset_ends_streams),
        cmocka_unit_test(test_deactivation_ends_streams),
        cmocka_unit_test(test_account_deletion_ends_streams),
        cmocka_unit_test(test_messages_of_a_deleted_account_replay_as_deleted),
        cmocka_unit_test(test_refresh_token_reuse_ends_streams),
        cmocka_unit_test(test_subscription_caps),
        cmocka_unit_test(test_reading_notifications_reaches_other_devices),
        cmocka_unit_test(test_reading_a_conversation_clears_the_badge_elsewhere),
        cmocka_unit_test(test_deleted_message_leaves_no_words),
        cmocka_unit_test(test_deleted_words_leave_notification_after_log_trim),
        cmocka_unit_test(test_flood_keeps_order),
        cmocka_unit_test(test_edited_then_trimmed_delete_clears_notification),
        cmocka_unit_test(test_collapsed_notification_counts_by_message),
        cmocka_unit_test(test_edit_cap_bounds_delete),
        cmocka_unit_test(test_deleted_legacy_message_leaves_no_words),
        cmocka_unit_test(test_resume_across_edit_and_delete),
        cmocka_unit_test(test_trimmed_before_delivery_is_out_of_range),
        cmocka_unit_test(test_lane_overflow_replays_in_order),
        cmocka_unit_test(test_typing_flood_is_capped),
        cmocka_unit_test(test_quiet_user_not_behind_a_flood),
        cmocka_unit_test(test_token_expiry_ends_streams),
        cmocka_unit_test(test_stream_keeps_its_tokens_expiry),
        cmocka_unit_test(test_topic_burst_keeps_order),
    };
    return cmocka_run_group_tests_name("events", tests, setup, teardown);
}
