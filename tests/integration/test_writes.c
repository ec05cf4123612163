/* The write framework (handlers/core/app.h, app_write_call) through a real server: generic
 * idempotency of the methods marked (lagoon.v1.idempotent) — a retry with the same
 * RequestMeta.idempotency_key gets the first response and changes nothing, per caller and per
 * method, refused for another request, forgotten after APP_IDEMPOTENCY_TTL_MS and with the
 * user — and a method not marked, which runs again. */
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
#include "lagoon_tables.h"
#include "testserver.h"

static test_app *T;
static lagoon_client *C;

/* Tokens that outlive the days the clock is moved by. */
static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->access_ttl_s = acfg->refresh_ttl_s = 365u * 24 * 3600;
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

static int update_name(const char *key, const char *name, lagoon_v1_UserProfile *out)
{
    lagoon_v1_UpdateProfileRequest req = lagoon_v1_UpdateProfileRequest_init_zero;
    req.has_full_name = true;
    snprintf(req.full_name, sizeof(req.full_name), "%s", name);
    lagoon_set_idempotency_key(C, key);
    return lagoon_Users_UpdateProfile(C, &req, out);
}

static void stored_name(char *out, size_t cap)
{
    lagoon_v1_GetProfileRequest req = lagoon_v1_GetProfileRequest_init_zero;
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_GetProfile(C, &req, &p), LAGOON_OK);
    snprintf(out, cap, "%s", p.full_name);
}

/* Rows of the framework's table for idempotent results (of user_id, or all for 0), read from
 * the store. */
typedef struct result_count {
    uint64_t user_id;
    int n;
} result_count;

static int count_result(void *arg, uint64_t id, const void *row)
{
    (void)id;
    result_count *c = arg;
    const lagoon_v1_IdempotentResult *r = row;
    if (c->user_id == 0 || r->user_id == c->user_id)
        c->n++;
    return LAGOON_OK;
}

static int results_of(uint64_t user_id)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_idempotent_results, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    result_count c = {user_id, 0};
    assert_int_equal(store_scan(t, &q, count_result, &c, &page, &err), LAGOON_OK);
    assert_string_equal(page.next_page_token, ""); /* one page holds them all */
    store_read_end(t);
    return c.n;
}

static int results_kept(void)
{
    return results_of(0);
}

static void test_retry_returns_first_response(void **state)
{
    (void)state;
    char tok[65], name[128];
    test_user(C, "idem1", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    lagoon_v1_UserProfile first, again;
    assert_int_equal(update_name("profile-1", "First Name", &first), LAGOON_OK);
    assert_string_equal(first.full_name, "First Name");
    /* Another change, without a key, in between. */
    lagoon_v1_UserProfile other;
    assert_int_equal(update_name("", "Second Name", &other), LAGOON_OK);
    /* The retry gets the first response back and writes nothing. */
    test_clock_advance(T, 60 * 1000);
    assert_int_equal(update_name("profile-1", "First Name", &again), LAGOON_OK);
    assert_string_equal(again.full_name, "First Name");
    assert_int_equal(again.updated_at, first.updated_at);
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Second Name");
    /* The same key for another request is refused, and changes nothing either. */
    assert_int_equal(update_name("profile-1", "Third Name", &again), LAGOON_FAILED_PRECONDITION);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "different request"));
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Second Name");
    /* A new key runs. */
    assert_int_equal(update_name("profile-2", "Third Name", &again), LAGOON_OK);
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Third Name");
}

static void test_keys_are_per_caller(void **state)
{
    (void)state;
    char a_tok[65], b_tok[65];
    test_user(C, "idem2a", lagoon_v1_Role_STUDENT, a_tok);
    test_user(C, "idem2b", lagoon_v1_Role_STUDENT, b_tok);
    lagoon_v1_UserProfile p;
    lagoon_set_token(C, a_tok);
    assert_int_equal(update_name("shared-key", "Alice", &p), LAGOON_OK);
    /* The same key from another user is that user's own: it runs, for them. */
    lagoon_set_token(C, b_tok);
    assert_int_equal(update_name("shared-key", "Bob", &p), LAGOON_OK);
    assert_string_equal(p.full_name, "Bob");
    char name[128];
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Bob");
    lagoon_set_token(C, a_tok);
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Alice");
}

static void test_keys_expire(void **state)
{
    (void)state;
    char tok[65], name[128];
    test_user(C, "idem3", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    lagoon_v1_UserProfile p;
    assert_int_equal(update_name("expiring", "Before", &p), LAGOON_OK);
    assert_int_equal(update_name("", "Between", &p), LAGOON_OK);
    /* Just before the end of its time the key still answers with the first response. */
    test_clock_advance(T, APP_IDEMPOTENCY_TTL_MS - 1000);
    assert_int_equal(update_name("expiring", "Before", &p), LAGOON_OK);
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Between");
    /* After it, the same key runs again. */
    test_clock_advance(T, 2000);
    assert_int_equal(update_name("expiring", "Before", &p), LAGOON_OK);
    stored_name(name, sizeof(name));
    assert_string_equal(name, "Before");
    assert_true(p.updated_at > 0);
}

static void test_expired_results_are_purged(void **state)
{
    (void)state;
    char tok[65];
    test_user(C, "idem4", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    lagoon_v1_UserProfile p;
    char key[32];
    /* Everything recorded so far is far past its time after this. */
    test_clock_advance(T, 2 * APP_IDEMPOTENCY_TTL_MS);
    int before = results_kept();
    assert_true(before > 0);
    /* Each recording deletes up to APP_IDEMPOTENT_PURGE expired results: enough calls leave
     * only their own. */
    int calls = before / (APP_IDEMPOTENT_PURGE - 1) + 2;
    for (int i = 0; i < calls; i++) {
        snprintf(key, sizeof(key), "purge-%d", i);
        assert_int_equal(update_name(key, "Purger", &p), LAGOON_OK);
    }
    assert_int_equal(results_kept(), calls);
}

static void test_results_go_with_the_user(void **state)
{
    (void)state;
    char tok[65];
    uint64_t me = test_user(C, "idem5", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    lagoon_v1_UserProfile p;
    assert_int_equal(update_name("mine", "Leaving Soon", &p), LAGOON_OK);
    assert_int_equal(update_name("mine too", "Leaving Soon", &p), LAGOON_OK);
    assert_int_equal(results_of(me), 2);
    int before = results_kept();
    lagoon_v1_DeleteAccountRequest del = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(del.password, sizeof(del.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty empty;
    lagoon_set_idempotency_key(C, "");
    assert_int_equal(lagoon_Users_DeleteAccount(C, &del, &empty), LAGOON_OK);
    assert_int_equal(results_of(me), 0);
    assert_int_equal(results_kept(), before - 2);
}

/* A method not marked idempotent ignores the key: each call runs (Messages/Send keeps its own,
 * documented client_message_id; ChangePassword is not marked). */
static void test_unmarked_method_runs_again(void **state)
{
    (void)state;
    char tok[65];
    test_user(C, "idem6", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    int before = results_kept();
    lagoon_v1_ChangePasswordRequest req = lagoon_v1_ChangePasswordRequest_init_zero;
    snprintf(req.current_password, sizeof(req.current_password), "%s", TEST_PASSWORD);
    snprintf(req.new_password, sizeof(req.new_password), "%s", "another long passphrase");
    lagoon_v1_UsersEmpty empty;
    lagoon_set_idempotency_key(C, "pw-1");
    assert_int_equal(lagoon_Users_ChangePassword(C, &req, &empty), LAGOON_OK);
    /* The retry runs: the current password is now the new one, so it is wrong. */
    lagoon_set_idempotency_key(C, "pw-1");
    assert_int_equal(lagoon_Users_ChangePassword(C, &req, &empty), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(results_kept(), before);
    lagoon_set_idempotency_key(C, "");
}

/* Reflection tells clients which methods honour the key. */
static void test_reflection_says_which(void **state)
{
    (void)state;
    lagoon_v1_ListMethodsRequest req = lagoon_v1_ListMethodsRequest_init_zero;
    lagoon_v1_ListMethodsResponse resp;
    assert_int_equal(lagoon_Reflection_ListMethods(C, &req, &resp), LAGOON_OK);
    int seen = 0;
    for (pb_size_t i = 0; i < resp.methods_count; i++) {
        const lagoon_v1_MethodInfo *m = &resp.methods[i];
        if (strcmp(m->path, "/lagoon.v1.Users/UpdateProfile") == 0) {
            assert_true(m->idempotent);
            seen++;
        } else if (strcmp(m->path, "/lagoon.v1.Users/ChangePassword") == 0 ||
                   strcmp(m->path, "/lagoon.v1.Auth/Login") == 0) {
            assert_false(m->idempotent);
            seen++;
        }
    }
    assert_int_equal(seen, 3);
    pb_release(lagoon_v1_ListMethodsResponse_fields, &resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_returns_first_response),
        cmocka_unit_test(test_keys_are_per_caller),
        cmocka_unit_test(test_keys_expire),
        cmocka_unit_test(test_expired_results_are_purged),
        cmocka_unit_test(test_results_go_with_the_user),
        cmocka_unit_test(test_unmarked_method_runs_again),
        cmocka_unit_test(test_reflection_says_which),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
