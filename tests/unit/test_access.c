/* app_check (access.h): the one evaluation of every service's access policy, as tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "app.h"

/* ---- app_check ---------------------------------------------------------------------------- */

/* A resource of the tests: its members and who it is shared with, by user id. */
typedef struct thing {
    uint64_t member, shared_with, pupil_of; /* pupil_of: the owner's teacher */
} thing;

static int resolver_calls;

static int is_member(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)err;
    resolver_calls++;
    *holds = ((const thing *)res)->member == who->user_id;
    return LAGOON_OK;
}

static int is_shared(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)err;
    resolver_calls++;
    *holds = ((const thing *)res)->shared_with == who->user_id;
    return LAGOON_OK;
}

static int teaches(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    resolver_calls++;
    if (who->user_id == 99) /* a lookup that fails: its status is the check's */
        return store_fail(err, LAGOON_UNAVAILABLE, NULL, "lookup failed");
    *holds = ((const thing *)res)->pupil_of == who->user_id;
    return LAGOON_OK;
}

/* Members and those it is shared with see it; the owner, its owner's teacher and an
 * administrator change it. */
static const app_policy policy = {
    .grants = {[APP_READ] = APP_REL_OWNER | APP_REL_MEMBER | APP_REL_SHARED | APP_REL_TEACHER | APP_REL_ADMIN,
               [APP_CHANGE] = APP_REL_OWNER | APP_REL_TEACHER | APP_REL_ADMIN},
    .resolve = {[APP_REL_MEMBER_BIT] = is_member, [APP_REL_SHARED_BIT] = is_shared, [APP_REL_TEACHER_BIT] = teaches},
    .not_found = "no such thing",
    .denied = {[APP_CHANGE] = "only its owner may change it"},
};

/* The owner alone, for everything (a notification). */
static const app_policy private_policy = {
    .grants = {[APP_READ] = APP_REL_OWNER, [APP_CHANGE] = APP_REL_OWNER},
    .not_found = "no such note",
};

static void test_policy_table(void **state)
{
    (void)state;
    const thing th = {.member = 20, .shared_with = 21, .pupil_of = 22};
    static const struct {
        uint64_t user;
        uint8_t role;
        const app_policy *p;
        enum app_action action;
        int want;
        const char *message;
    } rows[] = {
        {7, lagoon_v1_Role_STUDENT, &policy, APP_READ, LAGOON_OK, ""},
        {7, lagoon_v1_Role_STUDENT, &policy, APP_CHANGE, LAGOON_OK, ""},
        {20, lagoon_v1_Role_STUDENT, &policy, APP_READ, LAGOON_OK, ""},
        {20, lagoon_v1_Role_STUDENT, &policy, APP_CHANGE, LAGOON_PERMISSION_DENIED, "only its owner may change it"},
        {21, lagoon_v1_Role_STUDENT, &policy, APP_READ, LAGOON_OK, ""},
        {21, lagoon_v1_Role_STUDENT, &policy, APP_CHANGE, LAGOON_PERMISSION_DENIED, "only its owner may change it"},
        {22, lagoon_v1_Role_TEACHER, &policy, APP_CHANGE, LAGOON_OK, ""},
        {23, lagoon_v1_Role_STUDENT, &policy, APP_READ, LAGOON_NOT_FOUND, "no such thing"},
        {23, lagoon_v1_Role_STUDENT, &policy, APP_CHANGE, LAGOON_NOT_FOUND, "no such thing"},
        {1, lagoon_v1_Role_ADMIN, &policy, APP_CHANGE, LAGOON_OK, ""},
        {0, 0, &policy, APP_READ, LAGOON_NOT_FOUND, "no such thing"},
        {99, lagoon_v1_Role_STUDENT, &policy, APP_CHANGE, LAGOON_UNAVAILABLE, "lookup failed"},
        {7, lagoon_v1_Role_STUDENT, &private_policy, APP_CHANGE, LAGOON_OK, ""},
        {1, lagoon_v1_Role_ADMIN, &private_policy, APP_READ, LAGOON_NOT_FOUND, "no such note"},
        {20, lagoon_v1_Role_STUDENT, &private_policy, APP_CHANGE, LAGOON_NOT_FOUND, "no such note"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        rpc_caller who = {.user_id = rows[i].user, .role = rows[i].role};
        store_error err = {0};
        int st = app_check(NULL, &who, rows[i].p, rows[i].action, &th, 7, &err);
        assert_int_equal(st, rows[i].want);
        if (st != LAGOON_OK)
            assert_string_equal(err.message, rows[i].message);
    }
}

/* Relations that need data are looked up only while undecided. */
static void test_resolvers_run_only_when_needed(void **state)
{
    (void)state;
    const thing th = {.member = 20, .shared_with = 21, .pupil_of = 22};
    store_error err;
    rpc_caller owner = {.user_id = 7}, admin = {.user_id = 1, .role = lagoon_v1_Role_ADMIN}, member = {.user_id = 20};
    resolver_calls = 0;
    assert_int_equal(app_check(NULL, &owner, &policy, APP_CHANGE, &th, 7, &err), LAGOON_OK);
    assert_int_equal(app_check(NULL, &admin, &policy, APP_READ, &th, 7, &err), LAGOON_OK);
    assert_int_equal(resolver_calls, 0);
    /* The member: CHANGE asks the teacher resolver only (refused), then READ finds membership
     * with the first resolver and stops. */
    assert_int_equal(app_check(NULL, &member, &policy, APP_CHANGE, &th, 7, &err), LAGOON_PERMISSION_DENIED);
    assert_int_equal(resolver_calls, 2);
    /* A policy without resolvers never calls any. */
    resolver_calls = 0;
    assert_int_equal(app_check(NULL, &member, &private_policy, APP_CHANGE, &th, 7, &err), LAGOON_NOT_FOUND);
    assert_int_equal(resolver_calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_policy_table),
                                       cmocka_unit_test(test_resolvers_run_only_when_needed)};
    return cmocka_run_group_tests_name("access", tests, NULL, NULL);
}
