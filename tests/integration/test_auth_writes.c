/* The Auth service's writes on the write framework (handlers/services/auth.c), through the real
 * server: refusals that keep what they changed (an expired refresh token ends its session, an
 * expired emailed code is used up, both answered as before), a Logout whose session an earlier
 * call of the same batch deleted (still OK), and the checks that are rules in auth.proto
 * (answered before the handler, so before any budget is spent). */
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
#include "testserver.h"

#define PASSWORD TEST_PASSWORD
#define WAIT_MS 10000 /* a reply, an email or the held write gives up after this */

static test_app *T;

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_app_free(T);
    return 0;
}

/* ---- the store -------------------------------------------------------------------------------- */

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(int *)arg)++;
    return LAGOON_OK;
}

/* Rows of table whose by_user index (idx) has user_id. */
static int rows_of(const store_table *table, const store_index *idx, uint64_t user_id)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = table, .index = idx, .prefix = prefix.buf, .prefix_len = prefix.len,
                     .page_size = STORE_PAGE_SIZE_MAX};
    store_txn *t;
    store_error err;
    store_page page;
    int n = 0;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    assert_int_equal(store_scan(t, &q, count_row, &n, &page, &err), LAGOON_OK);
    store_read_end(t);
    return n;
}

static int sessions_of(uint64_t user_id)
{
    return rows_of(&lagoon_table_sessions, lagoon_index_sessions_by_user, user_id);
}

static int codes_of(uint64_t user_id)
{
    return rows_of(&lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_user, user_id);
}

/* ---- tests -------------------------------------------------------------------------------------- */

/* Two Logouts of one session, both authenticated before either is written (the writer is
 * held), commit together: the second finds the session gone, and that is still a logout. */
static void test_logout_of_a_session_already_ended(void **state)
{
    (void)state;
    lagoon_client *c = test_client(T);
    char token[65];
    uint64_t id = test_user(c, "twice", 0, token);
    assert_int_equal(sessions_of(id), 1);
    int fd = raw_connect(T->srv.port, 1);
    test_hold h = TEST_HOLD_INIT;
    test_hold_writer(T, &h);
    raw_send_call(fd, 1, &lagoon_method_Auth_Logout, token, NULL, 0, NULL, NULL);
    raw_send_call(fd, 3, &lagoon_method_Auth_Logout, token, NULL, 0, NULL, NULL);
    raw_send_call(fd, 5, &lagoon_method_Auth_Me, token, NULL, 0, NULL, NULL);
    /* Me is answered while the writer is held: the loop has handled both Logouts before it. */
    uint32_t got = 0;
    assert_int_equal(raw_read_reply(fd, &got, NULL, 0), LAGOON_OK);
    assert_int_equal(got, 5);
    test_hold_release(&h);
    assert_true(test_hold_wait(&h, &h.done));
    uint32_t ids = 0;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(raw_read_reply(fd, &got, NULL, 0), LAGOON_OK);
        ids |= 1u << got;
    }
    assert_int_equal(ids, (1u << 1) | (1u << 3));
    close(fd);
    assert_int_equal(sessions_of(id), 0);
    lagoon_close(c);
}

/* A refresh token past its expiry is refused and its session ends with the refusal; an
 * emailed code past its expiry is refused and used up. Both are told as before. */
static void test_expired_tokens_are_used_up_by_their_refusal(void **state)
{
    (void)state;
    lagoon_client *c = test_client(T);
    char token[65], code[44];
    uint64_t id = test_user(c, "expiring", 0, token);
    assert_true(test_mail_code(T, "expiring@example.com", "Verify", code, WAIT_MS));
    assert_int_equal(codes_of(id), 1);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "expiring");
    snprintf(lr.password, sizeof(lr.password), "%s", PASSWORD);
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &tp), LAGOON_OK);
    assert_int_equal(sessions_of(id), 2);

    test_clock_advance(T, 30LL * 24 * 3600 * 1000 + 1);
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", tp.refresh_token);
    lagoon_v1_TokenPair next;
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &next), LAGOON_UNAUTHENTICATED);
    assert_string_equal(lagoon_last_error(c)->detail.message, "refresh token expired: sign in again");
    assert_int_equal(sessions_of(id), 1); /* that session, not the other */
    /* Gone: now it is unknown. */
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &next), LAGOON_UNAUTHENTICATED);
    assert_string_equal(lagoon_last_error(c)->detail.message, "unknown refresh token");

    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    lagoon_v1_AuthEmpty out;
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_INVALID_ARGUMENT);
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    assert_string_equal(m->message, "invalid argument: see violations");
    assert_int_equal(m->violations_count, 1);
    assert_string_equal(m->violations[0].field, "token");
    assert_string_equal(m->violations[0].description, "is invalid, expired or already used");
    assert_int_equal(codes_of(id), 0);
    lagoon_close(c);
}

/* Login's required fields and ForgotPassword's email are rules: every broken one is told at
 * once, before the handler runs, so a refused ForgotPassword costs none of the address's email
 * budget (10 an hour by default). */
static void test_rules_answer_before_the_handler(void **state)
{
    (void)state;
    test_app *t = test_app_new(NULL);
    lagoon_client *c = test_client(t);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &tp), LAGOON_INVALID_ARGUMENT);
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    assert_int_equal(m->violations_count, 2);
    assert_string_equal(m->violations[0].field, "login");
    assert_string_equal(m->violations[0].description, "is required");
    assert_string_equal(m->violations[1].field, "password");
    assert_string_equal(m->violations[1].description, "is required");

    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    lagoon_v1_AuthEmpty out;
    static const char *const bad[] = {"", "nobody", "a@b", "a..b@example.com", "a b@example.com", "@example.com",
                                      "a@example.c", "a@-example.com", "a@example..com", "a@@example.com",
                                      "a.@example.com", "a@example.com."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(fr.email, sizeof(fr.email), "%s", bad[i]);
        assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_INVALID_ARGUMENT);
        m = &lagoon_last_error(c)->detail;
        if (m->violations_count != 1 || strcmp(m->violations[0].field, "email") != 0 ||
            strcmp(m->violations[0].description, "is not a valid email address") != 0)
            fail_msg("\"%s\": %s", bad[i], m->message);
    }
    /* The budget is whole: ten valid requests pass, the eleventh waits. */
    snprintf(fr.email, sizeof(fr.email), "nobody@example.com");
    for (int i = 0; i < 10; i++)
        assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_RESOURCE_EXHAUSTED);
    lagoon_close(c);
    test_app_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logout_of_a_session_already_ended),
        cmocka_unit_test(test_expired_tokens_are_used_up_by_their_refusal),
        cmocka_unit_test(test_rules_answer_before_the_handler),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
