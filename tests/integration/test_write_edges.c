/* The write framework at its edges, through the real server: a write still queued when the
 * server has drained (its after hook runs before any module stops), identical idempotent calls
 * in one batch with another request under the same key and a failing write that makes the
 * batch run again nested, a call whose deadline passes while its write is queued (the write
 * still runs and a retry gets its response), and a retried Edit of a message deleted since
 * (the kept response goes with the message). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "accounts.h"
#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "testserver.h"


static test_app *T;

static void tweak_drain(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    cfg->drain_timeout_ms = 100;
}

/* A Login whose write is still queued when the server has drained: its after hook runs
 * inside app_close's store_close, after the accounts module (its limiters) was stopped. */
static void test_after_hook_at_shutdown(void **state)
{
    (void)state;
    T = test_app_new(tweak_drain);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "shut", 0, token);
    lagoon_close(c);
    test_hold h = TEST_HOLD_INIT;
    h.until_stopping = 1;
    test_hold_writer(T, &h);
    int fd = raw_connect(T->srv.port, 1);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "shut");
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    raw_send_call(fd, 1, &lagoon_method_Auth_Login, NULL, NULL, 0, &lagoon_v1_LoginRequest_info, &lr);
    usleep(200000); /* the hash job submits the write (join_workers waits for it anyway) */
    test_hold_stopping(&h);
    test_app_stop(T); /* the Login's after hook needs the accounts module: still there */
    close(fd);
    free(T);
}

/* Identical idempotent calls in one batch, another request under the same key, and a failing
 * write that makes the batch run again nested. */
static void test_idempotent_batch(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "batch", 0, token);
    int fd = raw_connect(T->srv.port, 1);
    test_hold h = TEST_HOLD_INIT;
    test_hold_writer(T, &h);
    lagoon_v1_UpdateProfileRequest a = lagoon_v1_UpdateProfileRequest_init_zero, b = a;
    a.has_full_name = b.has_full_name = true;
    snprintf(a.full_name, sizeof(a.full_name), "Alpha");
    snprintf(b.full_name, sizeof(b.full_name), "Beta");
    lagoon_v1_NotificationIdRequest nr = lagoon_v1_NotificationIdRequest_init_zero;
    nr.id = 999999;
    raw_send_call(fd, 1, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &a);
    raw_send_call(fd, 3, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &a);
    raw_send_call(fd, 5, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &b);
    raw_send_call(fd, 7, &lagoon_method_Notifications_MarkRead, token, "k1", 0, &lagoon_v1_NotificationIdRequest_info,
              &nr);
    raw_send_call(fd, 9, &lagoon_method_Users_UpdateProfile, token, "k2", 0, &lagoon_v1_UpdateProfileRequest_info, &b);
    /* The loop has taken them all (Me answered while held). */
    raw_send_call(fd, 11, &lagoon_method_Auth_Me, token, NULL, 0, NULL, NULL);
    uint32_t id = 0;
    char msg[256];
    assert_int_equal(raw_read_reply(fd, &id, msg, sizeof(msg)), LAGOON_OK);
    assert_int_equal(id, 11);
    test_hold_release(&h);
    uint32_t codes[12] = {0};
    for (int i = 0; i < 5; i++) {
        uint32_t code = raw_read_reply(fd, &id, msg, sizeof(msg));
        assert_true(id < 12);
        codes[id] = code;
    }
    assert_int_equal(codes[1], LAGOON_OK);
    assert_int_equal(codes[3], LAGOON_OK);
    assert_int_equal(codes[5], LAGOON_FAILED_PRECONDITION);
    assert_int_equal(codes[7], LAGOON_NOT_FOUND);
    assert_int_equal(codes[9], LAGOON_OK);
    close(fd);
    lagoon_close(c);
    test_app_free(T);
}

/* A call whose deadline passes, and whose connection closes, while its write is queued. */
static void test_deadline_while_queued(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "late", 0, token);
    int fd = raw_connect(T->srv.port, 1);
    test_hold h = TEST_HOLD_INIT;
    test_hold_writer(T, &h);
    lagoon_v1_UpdateProfileRequest a = lagoon_v1_UpdateProfileRequest_init_zero;
    a.has_full_name = true;
    snprintf(a.full_name, sizeof(a.full_name), "Late");
    a.set_instruments = true;
    a.instruments_count = 2;
    snprintf(a.instruments[0], sizeof(a.instruments[0]), "piano");
    snprintf(a.instruments[1], sizeof(a.instruments[1]), "cello");
    raw_send_call(fd, 1, &lagoon_method_Users_UpdateProfile, token, "dl", 50, &lagoon_v1_UpdateProfileRequest_info, &a);
    uint32_t id = 0;
    char msg[256];
    assert_int_equal(raw_read_reply(fd, &id, msg, sizeof(msg)), LAGOON_DEADLINE_EXCEEDED);
    close(fd);
    usleep(100000);
    test_hold_release(&h);
    assert_true(test_hold_wait(&h, &h.done));
    /* The write ran all the same; a retry gets its response. */
    lagoon_set_token(c, token);
    lagoon_set_idempotency_key(c, "dl");
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_UpdateProfile(c, &a, &p), LAGOON_OK);
    assert_string_equal(p.full_name, "Late");
    lagoon_close(c);
    test_app_free(T);
}

/* A message deleted after an Edit with a key: a retry of that Edit gets the deleted words. */
static void test_edit_retry_after_delete(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    lagoon_client *c = test_client(T);
    char ta[65], tb[65];
    test_verified_user(T, c, "sender", 0, ta);
    uint64_t b = test_user(c, "rcpt", 0, tb);
    lagoon_set_token(c, ta);
    lagoon_v1_SendMessageRequest sr = lagoon_v1_SendMessageRequest_init_zero;
    sr.recipient_id = b;
    sr.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(sr.content.text.text, sizeof(sr.content.text.text), "hello");
    lagoon_v1_DirectMessage m;
    assert_int_equal(lagoon_Messages_Send(c, &sr, &m), LAGOON_OK);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = m.id;
    snprintf(er.text, sizeof(er.text), "secret words");
    lagoon_set_idempotency_key(c, "edit-1");
    lagoon_v1_DirectMessage e;
    assert_int_equal(lagoon_Messages_Edit(c, &er, &e), LAGOON_OK);
    lagoon_set_idempotency_key(c, "");
    lagoon_v1_DeleteMessageRequest dr = lagoon_v1_DeleteMessageRequest_init_zero;
    dr.message_id = m.id;
    lagoon_v1_MessagesEmpty none;
    assert_int_equal(lagoon_Messages_Delete(c, &dr, &none), LAGOON_OK);
    lagoon_set_idempotency_key(c, "edit-1");
    memset(&e, 0, sizeof(e));
    int st = lagoon_Messages_Edit(c, &er, &e);
    /* The kept response went with the message: the retry runs, and finds nothing to edit. */
    assert_int_equal(st, LAGOON_NOT_FOUND);
    assert_string_equal(e.content.text.text, "");
    lagoon_close(c);
    test_app_free(T);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edit_retry_after_delete),
        cmocka_unit_test(test_idempotent_batch),
        cmocka_unit_test(test_deadline_while_queued),
        cmocka_unit_test(test_after_hook_at_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
