/* Notifications' writes (MarkRead, MarkAllRead, Delete) retried with RequestMeta.idempotency_key:
 * a retry gets the first call's answer and changes nothing, a different request under a used
 * key is FAILED_PRECONDITION, keys are the caller's and per method, and a refusal is not kept.
 * Through the generated client against the real server and store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "testserver.h"

#define WAIT_MS 5000

static test_app *T;
static lagoon_client *C;

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
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

/* A reader and the two users who write to it: each sender's messages make one notification
 * (collapsed per conversation while unread). */
typedef struct inbox {
    uint64_t reader, senders[2];
    char reader_tok[65], sender_tok[2][65];
} inbox;

static void inbox_make(inbox *ib, const char *name)
{
    char user[32];
    snprintf(user, sizeof(user), "%s", name);
    ib->reader = test_verified_user(T, C, user, lagoon_v1_Role_STUDENT, ib->reader_tok);
    for (int i = 0; i < 2; i++) {
        snprintf(user, sizeof(user), "%s%d", name, i);
        ib->senders[i] = test_verified_user(T, C, user, lagoon_v1_Role_STUDENT, ib->sender_tok[i]);
    }
}

/* Sender i writes text to the reader. */
static void message_from(inbox *ib, int i, const char *text)
{
    lagoon_set_token(C, ib->sender_tok[i]);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = ib->reader;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "%s", text);
    lagoon_v1_DirectMessage m;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_OK);
}

/* The reader's notifications, newest first (at most 2 here). */
static pb_size_t reader_notes(inbox *ib, uint64_t ids[2], int unread_only)
{
    lagoon_set_token(C, ib->reader_tok);
    lagoon_v1_ListNotificationsRequest req = lagoon_v1_ListNotificationsRequest_init_zero;
    req.unread_only = unread_only;
    lagoon_v1_ListNotificationsResponse resp = lagoon_v1_ListNotificationsResponse_init_zero;
    assert_int_equal(lagoon_Notifications_List(C, &req, &resp), LAGOON_OK);
    pb_size_t n = resp.notifications_count;
    assert_true(n <= 2);
    for (pb_size_t i = 0; i < n; i++)
        ids[i] = resp.notifications[i].id;
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
    return n;
}

static uint32_t reader_unread(inbox *ib)
{
    lagoon_set_token(C, ib->reader_tok);
    lagoon_v1_NotificationsEmpty req = lagoon_v1_NotificationsEmpty_init_zero;
    lagoon_v1_UnreadCountResponse resp;
    assert_int_equal(lagoon_Notifications_UnreadCount(C, &req, &resp), LAGOON_OK);
    return resp.unread;
}

enum note_call { CALL_MARK_READ, CALL_DELETE, CALL_MARK_ALL_READ };

/* One call as token, with key (NULL: none); its status. */
static int note_call(const char *token, enum note_call which, uint64_t id, const char *key)
{
    lagoon_set_token(C, token);
    lagoon_set_idempotency_key(C, key);
    lagoon_v1_NotificationIdRequest req = {id};
    lagoon_v1_NotificationsEmpty none = lagoon_v1_NotificationsEmpty_init_zero, resp;
    switch (which) {
    case CALL_MARK_READ:
        return lagoon_Notifications_MarkRead(C, &req, &resp);
    case CALL_DELETE:
        return lagoon_Notifications_Delete(C, &req, &resp);
    default:
        return lagoon_Notifications_MarkAllRead(C, &none, &resp);
    }
}

/* A retried Delete gets the first answer (OK), where a new call finds nothing; the key under
 * another id is FAILED_PRECONDITION, and deletes nothing. */
static void test_retried_delete(void **state)
{
    (void)state;
    inbox ib;
    inbox_make(&ib, "ada");
    message_from(&ib, 0, "first");
    message_from(&ib, 1, "second");
    uint64_t ids[2] = {0, 0};
    assert_int_equal(reader_notes(&ib, ids, 0), 2);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0], "del-1"), LAGOON_OK);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0], "del-1"), LAGOON_OK);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0], NULL), LAGOON_NOT_FOUND);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[1], "del-1"), LAGOON_FAILED_PRECONDITION);
    uint64_t left[2] = {0, 0};
    assert_int_equal(reader_notes(&ib, left, 0), 1);
    assert_int_equal(left[0], ids[1]);
    assert_int_equal(reader_unread(&ib), 1);
    /* The same key on another method is another call's. */
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_READ, ids[1], "del-1"), LAGOON_OK);
    assert_int_equal(reader_unread(&ib), 0);
}

/* A retried MarkAllRead answers OK and leaves what arrived since unread; without the key it
 * runs again. */
static void test_retried_mark_all_read(void **state)
{
    (void)state;
    inbox ib;
    inbox_make(&ib, "bea");
    message_from(&ib, 0, "one");
    message_from(&ib, 1, "two");
    assert_int_equal(reader_unread(&ib), 2);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, "all-1"), LAGOON_OK);
    assert_int_equal(reader_unread(&ib), 0);
    message_from(&ib, 0, "three"); /* a new notification: the first one is read */
    assert_int_equal(reader_unread(&ib), 1);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, "all-1"), LAGOON_OK);
    assert_int_equal(reader_unread(&ib), 1);
    uint64_t ids[2] = {0, 0};
    assert_int_equal(reader_notes(&ib, ids, 1), 1);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, "all-2"), LAGOON_OK);
    assert_int_equal(reader_unread(&ib), 0);
}

/* A retried MarkRead changes nothing and tells the user's devices nothing: the next event a
 * device receives after it is the next message's. Under another id the key is refused. */
static void test_retried_mark_read(void **state)
{
    (void)state;
    inbox ib;
    inbox_make(&ib, "cyd");
    message_from(&ib, 0, "hello");
    message_from(&ib, 1, "hi");
    uint64_t ids[2] = {0, 0};
    assert_int_equal(reader_notes(&ib, ids, 1), 2);
    lagoon_client *dc = test_client(T);
    lagoon_set_token(dc, ib.reader_tok);
    lagoon_v1_SubscribeRequest sub = lagoon_v1_SubscribeRequest_init_zero;
    lagoon_stream *s;
    assert_int_equal(lagoon_Events_Subscribe(dc, &sub, &s), LAGOON_OK);
    lagoon_v1_Event ev;
    assert_int_equal(lagoon_stream_recv_timeout(s, &ev, WAIT_MS), 1);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_subscribed_tag);

    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_READ, ids[0], "read-1"), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(s, &ev, WAIT_MS), 1);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_notification_state_tag);
    assert_int_equal(ev.payload.notification_state.change, lagoon_v1_NotificationStateEvent_Change_READ);
    assert_int_equal(ev.payload.notification_state.notification_id, ids[0]);
    assert_int_equal(ev.payload.notification_state.unread, 1);
    uint64_t seq = ev.seq;

    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_READ, ids[0], "read-1"), LAGOON_OK);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_READ, ids[1], "read-1"), LAGOON_FAILED_PRECONDITION);
    assert_int_equal(reader_unread(&ib), 1);
    message_from(&ib, 0, "again");
    assert_int_equal(lagoon_stream_recv_timeout(s, &ev, WAIT_MS), 1);
    assert_int_equal(ev.which_payload, lagoon_v1_Event_message_tag);
    assert_int_equal(ev.seq, seq + 1); /* nothing logged in between */
    lagoon_stream_cancel(s);
    lagoon_close(dc);
}

/* Keys are the caller's: another user's call under the same key runs as its own (and finds no
 * notification of the reader's). A refusal is not kept: the key stays free for the next call. */
static void test_keys_are_the_callers_and_refusals_not_kept(void **state)
{
    (void)state;
    inbox ib;
    inbox_make(&ib, "dia");
    message_from(&ib, 0, "note");
    uint64_t ids[2] = {0, 0};
    assert_int_equal(reader_notes(&ib, ids, 0), 1);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_READ, ids[0], "shared-key"), LAGOON_OK);
    assert_int_equal(note_call(ib.sender_tok[0], CALL_MARK_READ, ids[0], "shared-key"), LAGOON_NOT_FOUND);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0] + 1000000, "miss-1"), LAGOON_NOT_FOUND);
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0], "miss-1"), LAGOON_OK);
    assert_int_equal(reader_notes(&ib, ids, 0), 0);
    /* A request its rules refuse (id is required) never reaches the write: nothing is kept, and
     * the key is free for a valid request. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(note_call(ib.reader_tok, i ? CALL_DELETE : CALL_MARK_READ, 0, "zero-1"),
                         LAGOON_INVALID_ARGUMENT);
        const lagoon_v1_ResponseMeta *m = &lagoon_last_error(C)->detail;
        assert_int_equal(m->violations_count, 1);
        assert_string_equal(m->violations[0].field, "id");
        assert_string_equal(m->violations[0].description, "is required");
    }
    assert_int_equal(note_call(ib.reader_tok, CALL_DELETE, ids[0] + 1000000, "zero-1"), LAGOON_NOT_FOUND);
}

/* A user who never had a notification (nor any event) has nothing to mark read: OK, with a key
 * and its retry too. */
static void test_mark_all_read_with_nothing(void **state)
{
    (void)state;
    inbox ib;
    inbox_make(&ib, "eli");
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, NULL), LAGOON_OK);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, "none-1"), LAGOON_OK);
    assert_int_equal(note_call(ib.reader_tok, CALL_MARK_ALL_READ, 0, "none-1"), LAGOON_OK);
    assert_int_equal(reader_unread(&ib), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retried_delete),
        cmocka_unit_test(test_retried_mark_all_read),
        cmocka_unit_test(test_retried_mark_read),
        cmocka_unit_test(test_keys_are_the_callers_and_refusals_not_kept),
        cmocka_unit_test(test_mark_all_read_with_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
