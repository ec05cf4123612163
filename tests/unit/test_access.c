/* app_access: the one resource-check rule every service uses, as a table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "app.h"

static void test_access_table(void **state)
{
    (void)state;
    static const rpc_caller owner = {.user_id = 7, .role = lagoon_v1_Role_STUDENT, .verified = 1, .session_id = 1},
                            other = {.user_id = 8, .role = lagoon_v1_Role_TEACHER, .verified = 1, .session_id = 2},
                            admin = {.user_id = 1, .role = lagoon_v1_Role_ADMIN, .verified = 1, .session_id = 3},
                            anonymous = {0};
    static const struct {
        const rpc_caller *who;
        int shared;
        enum app_action action;
        int flags;
        int want;
    } rows[] = {
        {&owner, 0, APP_READ, 0, LAGOON_OK},
        {&owner, 0, APP_CHANGE, 0, LAGOON_OK},
        {&other, 0, APP_READ, 0, LAGOON_NOT_FOUND},
        {&other, 0, APP_CHANGE, 0, LAGOON_NOT_FOUND},
        {&other, 1, APP_READ, 0, LAGOON_OK},
        {&other, 1, APP_CHANGE, 0, LAGOON_PERMISSION_DENIED},
        {&admin, 0, APP_READ, 0, LAGOON_NOT_FOUND},
        {&admin, 0, APP_CHANGE, APP_ADMIN_OVERRIDE, LAGOON_OK},
        {&other, 0, APP_CHANGE, APP_ADMIN_OVERRIDE, LAGOON_NOT_FOUND},
        {&anonymous, 0, APP_READ, APP_ADMIN_OVERRIDE, LAGOON_NOT_FOUND},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        assert_int_equal(app_access(rows[i].who, 7, rows[i].shared, rows[i].action, rows[i].flags), rows[i].want);
    /* Owner id 0 is nobody: an anonymous caller does not own it. */
    assert_int_equal(app_access(&anonymous, 0, 0, APP_READ, 0), LAGOON_NOT_FOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_access_table)};
    return cmocka_run_group_tests_name("access", tests, NULL, NULL);
}
