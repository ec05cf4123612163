/* Users: the field rules of UpdateProfile and SetRole (declared in users.proto, checked by the
 * RPC layer before the handler) and the checks left in the handler, with their exact
 * violations: every broken rule at once, nothing written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "accounts.h"
#include "lagoon_stubs.h"
#include "testserver.h"

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

/* The description of the violation of field, or NULL. */
static const char *violation(const char *field)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(C)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0)
            return m->violations[i].description;
    return NULL;
}

static void expect(const char *field, const char *description)
{
    const char *got = violation(field);
    if (got == NULL)
        fail_msg("no violation of %s", field);
    assert_string_equal(got, description);
}

static void test_profile_rules(void **state)
{
    (void)state;
    char tok[65];
    test_user(C, "rules1", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(C, tok);
    lagoon_v1_GetProfileRequest g = lagoon_v1_GetProfileRequest_init_zero;
    lagoon_v1_UserProfile before;
    assert_int_equal(lagoon_Users_GetProfile(C, &g, &before), LAGOON_OK);
    lagoon_v1_UpdateProfileRequest up = lagoon_v1_UpdateProfileRequest_init_zero;
    up.has_full_name = true;
    snprintf(up.full_name, sizeof(up.full_name), "two\tparts");
    up.has_profile_image_url = true;
    snprintf(up.profile_image_url, sizeof(up.profile_image_url), "ftp://x");
    up.has_bio = true;
    snprintf(up.bio, sizeof(up.bio), "line one\r\nline two");
    up.has_experience_level = true;
    snprintf(up.experience_level, sizeof(up.experience_level), "expert");
    up.instruments_count = 3;
    snprintf(up.instruments[0], sizeof(up.instruments[0]), "cello");
    up.instruments[1][0] = '\0';
    snprintf(up.instruments[2], sizeof(up.instruments[2]), "two\tparts");
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_UpdateProfile(C, &up, &p), LAGOON_INVALID_ARGUMENT);
    expect("full_name", "must not contain control characters");
    expect("profile_image_url", "must be an http:// or https:// URL without spaces");
    expect("bio", "must not contain control characters");
    expect("instruments[1]", "must not be empty");
    expect("instruments[2]", "must not contain control characters");
    expect("experience_level", "must be beginner, intermediate, advanced or professional");
    assert_null(violation("instruments[0]"));
    /* The handler's check (a flag that goes with the list) comes once the field rules pass. */
    assert_null(violation("set_instruments"));
    up.has_full_name = up.has_profile_image_url = up.has_bio = up.has_experience_level = false;
    up.instruments[1][0] = 'x';
    up.instruments[2][3] = '-';
    assert_int_equal(lagoon_Users_UpdateProfile(C, &up, &p), LAGOON_INVALID_ARGUMENT);
    expect("set_instruments", "must be true to change instruments");
    assert_int_equal(lagoon_last_error(C)->detail.violations_count, 1);
    /* Nothing was written; a valid request goes through, multi-line bio and all. */
    assert_int_equal(lagoon_Users_GetProfile(C, &g, &p), LAGOON_OK);
    assert_string_equal(p.full_name, before.full_name);
    assert_int_equal(p.updated_at, before.updated_at);
    memset(&up, 0, sizeof(up));
    up.has_bio = true;
    snprintf(up.bio, sizeof(up.bio), "line one\nline two");
    up.has_full_name = true;
    snprintf(up.full_name, sizeof(up.full_name), "Ünïcødé Näme");
    assert_int_equal(lagoon_Users_UpdateProfile(C, &up, &p), LAGOON_OK);
    assert_string_equal(p.bio, "line one\nline two");
}

static void test_set_role_rules(void **state)
{
    (void)state;
    char tok[65];
    uint64_t target = test_user(C, "rules2", lagoon_v1_Role_STUDENT, tok);
    lagoon_v1_SetRoleRequest sr = {target, (lagoon_v1_Role)0};
    lagoon_v1_PublicUser pu;
    /* A student may not call it at all: the access level comes before the rules. */
    lagoon_set_token(C, tok);
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_PERMISSION_DENIED);
    /* An administrator (lagoon-admin create-admin's own write) gets the rule's violation. */
    store_error err;
    assert_int_equal(account_create_admin(T->app, "boss@example.com", "boss", "an admin passphrase", NULL, &err),
                     LAGOON_OK);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "boss");
    snprintf(lr.password, sizeof(lr.password), "an admin passphrase");
    lagoon_v1_TokenPair at;
    assert_int_equal(lagoon_Auth_Login(C, &lr, &at), LAGOON_OK);
    lagoon_set_token(C, at.access_token);
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_INVALID_ARGUMENT);
    expect("role", "must be STUDENT, TEACHER or ADMIN");
    sr.role = (lagoon_v1_Role)9;
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_INVALID_ARGUMENT);
    expect("role", "must be STUDENT, TEACHER or ADMIN");
    sr.role = lagoon_v1_Role_TEACHER;
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_OK);
    assert_int_equal(pu.role, lagoon_v1_Role_TEACHER);
    /* Not (idempotent): a key changes nothing, each call sets the value it names. */
    lagoon_set_idempotency_key(C, "promote-1");
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_OK);
    sr.role = lagoon_v1_Role_STUDENT;
    lagoon_set_idempotency_key(C, "promote-1");
    assert_int_equal(lagoon_Users_SetRole(C, &sr, &pu), LAGOON_OK);
    assert_int_equal(pu.role, lagoon_v1_Role_STUDENT);
    lagoon_v1_GetUserRequest gr = {target};
    assert_int_equal(lagoon_Users_Get(C, &gr, &pu), LAGOON_OK);
    assert_int_equal(pu.role, lagoon_v1_Role_STUDENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile_rules),
        cmocka_unit_test(test_set_role_rules),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
