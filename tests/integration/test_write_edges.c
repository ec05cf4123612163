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

#define WAIT_MS 10000

static test_app *T;

typedef struct hold {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, released, done;
    int until_modules_stopped;
    int stopping; /* the test is about to stop the server (atomic) */
} hold;

static void deadline_in(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int hold_write(store_txn *t, void *arg, store_error *err)
{
    (void)t;
    (void)err;
    hold *h = arg;
    if (h->until_modules_stopped) {
        h->running = 1;
        /* Until the test stops the server (bounded), then past the drain's 100 ms: app_close
         * has started, and would have stopped the modules by now if it did not wait for the
         * writer's queue. */
        for (int i = 0; i < 10000 && !__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE); i++)
            usleep(1000);
        usleep(400000);
        return LAGOON_OK;
    }
    struct timespec ts;
    deadline_in(&ts, WAIT_MS);
    pthread_mutex_lock(&h->mu);
    h->running = 1;
    pthread_cond_broadcast(&h->cv);
    while (!h->released && pthread_cond_timedwait(&h->cv, &h->mu, &ts) == 0)
        ;
    pthread_mutex_unlock(&h->mu);
    return LAGOON_OK;
}

static void hold_done(void *arg, int status, const store_error *err)
{
    (void)status;
    (void)err;
    hold *h = arg;
    pthread_mutex_lock(&h->mu);
    h->done = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static int hold_wait(hold *h, const int *flag)
{
    struct timespec ts;
    deadline_in(&ts, WAIT_MS);
    pthread_mutex_lock(&h->mu);
    while (!*flag && pthread_cond_timedwait(&h->cv, &h->mu, &ts) == 0)
        ;
    int set = *flag;
    pthread_mutex_unlock(&h->mu);
    return set;
}

static void hold_release(hold *h)
{
    pthread_mutex_lock(&h->mu);
    h->released = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void send_call(int fd, uint32_t id, const wire_method *m, const char *token, const char *key, uint32_t timeout,
                      const wire_msginfo *info, const void *body)
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", token ? token : "");
    snprintf(meta.idempotency_key, sizeof(meta.idempotency_key), "%s", key ? key : "");
    meta.timeout_ms = timeout;
    uint8_t mb[512];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    assert_true(ml >= 0);
    static uint8_t pb[1 << 16];
    long pl = 0;
    if (body) {
        pl = wire_encode(info, body, pb, sizeof(pb), NULL);
        assert_true(pl >= 0);
    }
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, m->id, mb, (size_t)ml, body ? pb : NULL, (size_t)pl);
}

static uint32_t read_reply(int fd, uint32_t *id, char *msg, size_t cap)
{
    static uint8_t buf[1 << 16];
    for (int frames = 0; frames < 64; frames++) {
        wire_frame f = {0};
        if (raw_read_frame(fd, buf, sizeof(buf), &f, WAIT_MS) != 1)
            break;
        if (f.type == WIRE_RESPONSE) {
            *id = f.call_id;
            if (msg)
                raw_meta_message(&f, msg, cap);
            return f.code;
        }
    }
    fail_msg("no response");
    return 0;
}

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
    T = calloc(1, sizeof(*T));
    test_app_start(T, tweak_drain);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "shut", 0, token);
    lagoon_close(c);
    hold h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 1};
    store_error err;
    assert_int_equal(store_submit(T->app->db, hold_write, &h, hold_done, &h, &err), LAGOON_OK);
    int fd = raw_connect(T->srv.port, 1);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "shut");
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    send_call(fd, 1, &lagoon_method_Auth_Login, NULL, NULL, 0, &lagoon_v1_LoginRequest_info, &lr);
    usleep(200000); /* the hash job submits the write (join_workers waits for it anyway) */
    __atomic_store_n(&h.stopping, 1, __ATOMIC_RELEASE);
    test_app_stop(T); /* the Login's after hook needs the accounts module: still there */
    close(fd);
    free(T);
}

/* Identical idempotent calls in one batch, another request under the same key, and a failing
 * write that makes the batch run again nested. */
static void test_idempotent_batch(void **state)
{
    (void)state;
    T = calloc(1, sizeof(*T));
    test_app_start(T, test_tweak_shared);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "batch", 0, token);
    int fd = raw_connect(T->srv.port, 1);
    hold h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};
    store_error err;
    assert_int_equal(store_submit(T->app->db, hold_write, &h, hold_done, &h, &err), LAGOON_OK);
    assert_true(hold_wait(&h, &h.running));
    lagoon_v1_UpdateProfileRequest a = lagoon_v1_UpdateProfileRequest_init_zero, b = a;
    a.has_full_name = b.has_full_name = true;
    snprintf(a.full_name, sizeof(a.full_name), "Alpha");
    snprintf(b.full_name, sizeof(b.full_name), "Beta");
    lagoon_v1_NotificationIdRequest nr = lagoon_v1_NotificationIdRequest_init_zero;
    nr.id = 999999;
    send_call(fd, 1, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &a);
    send_call(fd, 3, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &a);
    send_call(fd, 5, &lagoon_method_Users_UpdateProfile, token, "k1", 0, &lagoon_v1_UpdateProfileRequest_info, &b);
    send_call(fd, 7, &lagoon_method_Notifications_MarkRead, token, "k1", 0, &lagoon_v1_NotificationIdRequest_info,
              &nr);
    send_call(fd, 9, &lagoon_method_Users_UpdateProfile, token, "k2", 0, &lagoon_v1_UpdateProfileRequest_info, &b);
    /* The loop has taken them all (Me answered while held). */
    send_call(fd, 11, &lagoon_method_Auth_Me, token, NULL, 0, NULL, NULL);
    uint32_t id = 0;
    char msg[256];
    assert_int_equal(read_reply(fd, &id, msg, sizeof(msg)), LAGOON_OK);
    assert_int_equal(id, 11);
    hold_release(&h);
    uint32_t codes[12] = {0};
    for (int i = 0; i < 5; i++) {
        uint32_t code = read_reply(fd, &id, msg, sizeof(msg));
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
    test_app_stop(T);
    free(T);
}

/* A call whose deadline passes, and whose connection closes, while its write is queued. */
static void test_deadline_while_queued(void **state)
{
    (void)state;
    T = calloc(1, sizeof(*T));
    test_app_start(T, test_tweak_shared);
    lagoon_client *c = test_client(T);
    char token[65];
    test_user(c, "late", 0, token);
    int fd = raw_connect(T->srv.port, 1);
    hold h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};
    store_error err;
    assert_int_equal(store_submit(T->app->db, hold_write, &h, hold_done, &h, &err), LAGOON_OK);
    assert_true(hold_wait(&h, &h.running));
    lagoon_v1_UpdateProfileRequest a = lagoon_v1_UpdateProfileRequest_init_zero;
    a.has_full_name = true;
    snprintf(a.full_name, sizeof(a.full_name), "Late");
    a.set_instruments = true;
    a.instruments_count = 2;
    snprintf(a.instruments[0], sizeof(a.instruments[0]), "piano");
    snprintf(a.instruments[1], sizeof(a.instruments[1]), "cello");
    send_call(fd, 1, &lagoon_method_Users_UpdateProfile, token, "dl", 50, &lagoon_v1_UpdateProfileRequest_info, &a);
    uint32_t id = 0;
    char msg[256];
    assert_int_equal(read_reply(fd, &id, msg, sizeof(msg)), LAGOON_DEADLINE_EXCEEDED);
    close(fd);
    usleep(100000);
    hold_release(&h);
    assert_true(hold_wait(&h, &h.done));
    /* The write ran all the same; a retry gets its response. */
    lagoon_set_token(c, token);
    lagoon_set_idempotency_key(c, "dl");
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_UpdateProfile(c, &a, &p), LAGOON_OK);
    assert_string_equal(p.full_name, "Late");
    lagoon_close(c);
    test_app_stop(T);
    free(T);
}

/* A message deleted after an Edit with a key: a retry of that Edit gets the deleted words. */
static void test_edit_retry_after_delete(void **state)
{
    (void)state;
    T = calloc(1, sizeof(*T));
    test_app_start(T, test_tweak_shared);
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
    test_app_stop(T);
    free(T);
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
