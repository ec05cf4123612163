/* The paged-read helper (handlers/core/paging.h): its scans over the real store of a running
 * server (cursor and numbered pages, both directions, a key prefix, skipped rows, forged and
 * foreign tokens), its cap from the .options, and its violations through the list methods. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "paging.h"
#include "testserver.h"

#define TEACHERS 7
#define STUDENTS 3

static test_app *T;
static lagoon_client *C;
static uint64_t teachers[TEACHERS], students[STUDENTS];
static char teacher_tok[TEACHERS][65], student_tok[STUDENTS][65];

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    C = test_client(T);
    char name[16];
    for (int i = 0; i < TEACHERS; i++) {
        snprintf(name, sizeof(name), "teacher%d", i);
        teachers[i] = test_verified_user(T, C, name, lagoon_v1_Role_TEACHER, teacher_tok[i]);
    }
    for (int i = 0; i < STUDENTS; i++) {
        snprintf(name, sizeof(name), "student%d", i);
        students[i] = test_verified_user(T, C, name, lagoon_v1_Role_STUDENT, student_tok[i]);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

static int has_violation(const char *field, const char *description)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(C)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0 &&
            (description == NULL || strcmp(m->violations[i].description, description) == 0))
            return 1;
    return 0;
}

/* ---- the helper on the store ------------------------------------------------------------------ */

/* An item of these pages: a user's id and role. */
typedef struct user_item {
    uint64_t id;
    lagoon_v1_Role role;
} user_item;

/* Keeps every row, or (arg non-NULL) every row but the user *arg. */
static int user_of(void *arg, void *item, const void *row)
{
    const lagoon_v1_User *u = row;
    if (arg && u->id == *(const uint64_t *)arg)
        return 0;
    user_item *it = item;
    it->id = u->id;
    it->role = u->role;
    return 1;
}

/* A query of the users with role, by the users_by_role index (role, then username). */
static void by_role(paging_list *l, store_key *prefix, lagoon_v1_Role role, int reverse, uint32_t limit)
{
    memset(l, 0, sizeof(*l));
    store_key_reset(prefix);
    store_key_u32(prefix, (uint32_t)role);
    l->query.table = &lagoon_table_users;
    l->query.index = lagoon_index_users_by_role;
    l->query.prefix = prefix->buf;
    l->query.prefix_len = prefix->len;
    l->query.reverse = reverse;
    l->limit = limit; /* what paging_check would set for a request of page_size limit */
    l->resp = &lagoon_v1_ListUsersResponse_info;
    l->items_tag = lagoon_v1_ListUsersResponse_users_tag;
    l->item = user_of;
    l->item_size = sizeof(user_item);
}

/* One page of l in its own read transaction; its items are appended to out[*n]. */
static int scan(paging_list *l, user_item *out, int *n, int cap, store_error *err)
{
    store_txn *t;
    int st = store_read_begin(T->app->db, &t, err);
    assert_int_equal(st, LAGOON_OK);
    st = paging_scan(t, l, err);
    store_read_end(t);
    const user_item *items = l->items;
    for (uint32_t i = 0; st == LAGOON_OK && i < l->count; i++) {
        assert_true(*n < cap);
        out[(*n)++] = items[i];
    }
    free(l->items);
    l->items = NULL;
    return st;
}

/* Walks every cursor page of l (pages of its limit) into out; returns how many items. */
static int walk(paging_list *l, user_item *out, int cap)
{
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int n = 0;
    store_error err;
    for (int page = 0; page < 2 * cap + 1; page++) {
        l->token = token;
        int before = n;
        assert_int_equal(scan(l, out, &n, cap, &err), LAGOON_OK);
        assert_true(n - before <= (int)l->limit);
        if (l->next_page_token[0] == '\0')
            return n;
        assert_int_equal(n - before, l->limit); /* only a full page has a next one */
        snprintf(token, sizeof(token), "%s", l->next_page_token);
    }
    fail_msg("the walk did not end");
    return n;
}

static void test_cursor_pages_both_directions(void **state)
{
    (void)state;
    paging_list l;
    store_key prefix;
    user_item fwd[TEACHERS + 1] = {{0}}, rev[TEACHERS + 1] = {{0}};
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 0, 3);
    assert_int_equal(walk(&l, fwd, TEACHERS + 1), TEACHERS);
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 1, 3);
    assert_int_equal(walk(&l, rev, TEACHERS + 1), TEACHERS);
    /* The prefix holds the teachers only, in username order forward (teacher0 .. teacher6),
     * and reverse is the same rows backwards. */
    for (int i = 0; i < TEACHERS; i++) {
        assert_int_equal(fwd[i].role, lagoon_v1_Role_TEACHER);
        assert_int_equal(fwd[i].id, teachers[i]);
        assert_int_equal(rev[i].id, teachers[TEACHERS - 1 - i]);
    }
    /* Another prefix of the same index: the students, nothing else. */
    user_item st[STUDENTS + 1] = {{0}};
    by_role(&l, &prefix, lagoon_v1_Role_STUDENT, 0, 2);
    assert_int_equal(walk(&l, st, STUDENTS + 1), STUDENTS);
    for (int i = 0; i < STUDENTS; i++)
        assert_int_equal(st[i].id, students[i]);
}

static void test_numbered_pages_both_directions(void **state)
{
    (void)state;
    paging_list l;
    store_key prefix;
    store_error err;
    user_item got[TEACHERS] = {{0}};
    int n = 0;
    /* Page 2 of 3 a page: the fourth to the sixth teacher, and no token. */
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 0, 3);
    l.number = 2;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_OK);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(got[i].id, teachers[3 + i]);
    assert_string_equal(l.next_page_token, "");
    /* Page 3 of the reverse order: the one left, the first teacher. */
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 1, 3);
    l.number = 3;
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_OK);
    assert_int_equal(n, 1);
    assert_int_equal(got[0].id, teachers[0]);
    /* Past the end: an empty page, not an error. */
    l.number = 4;
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_OK);
    assert_int_equal(n, 0);
}

static void test_skipped_rows_and_tokens(void **state)
{
    (void)state;
    paging_list l;
    store_key prefix;
    store_error err;
    user_item got[TEACHERS] = {{0}};
    int n = 0;
    /* A row the item function leaves out takes no slot: the page is the other rows. */
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 0, TEACHERS);
    l.arg = &teachers[1];
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_OK);
    assert_int_equal(n, TEACHERS - 1);
    assert_int_equal(got[0].id, teachers[0]);
    assert_int_equal(got[1].id, teachers[2]);
    /* A forged token. */
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 0, 3);
    l.token = "forged-token";
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "page_token");
    /* A real token of another query (the reverse one, or another prefix) is refused too. */
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 0, 3);
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_OK);
    char token[STORE_PAGE_TOKEN_MAX + 1];
    snprintf(token, sizeof(token), "%s", l.next_page_token);
    assert_true(token[0] != '\0');
    by_role(&l, &prefix, lagoon_v1_Role_TEACHER, 1, 3);
    l.token = token;
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "page_token");
    by_role(&l, &prefix, lagoon_v1_Role_STUDENT, 0, 3);
    l.token = token;
    n = 0;
    assert_int_equal(scan(&l, got, &n, TEACHERS, &err), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "page_token");
}

/* ---- the cap from the .options ------------------------------------------------------------------ */

static void test_cap_is_the_options_max_count(void **state)
{
    (void)state;
    /* Each list response's repeated field: its generated bound, which max_count sets. */
    static const struct {
        const wire_msginfo *info;
        uint32_t tag, cap;
    } lists[] = {
        {&lagoon_v1_ListUsersResponse_info, lagoon_v1_ListUsersResponse_users_tag, 500},
        {&lagoon_v1_ListMessagesResponse_info, lagoon_v1_ListMessagesResponse_messages_tag, 200},
        {&lagoon_v1_ListConversationsResponse_info, lagoon_v1_ListConversationsResponse_conversations_tag, 100},
        {&lagoon_v1_ListNotificationsResponse_info, lagoon_v1_ListNotificationsResponse_notifications_tag, 500},
    };
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        uint32_t bound = 0;
        for (size_t f = 0; f < lists[i].info->nfields; f++)
            if (lists[i].info->fields[f].tag == lists[i].tag)
                bound = lists[i].info->fields[f].bound;
        assert_int_equal(bound, lists[i].cap);
        assert_int_equal(paging_cap(lists[i].info, lists[i].tag), lists[i].cap);
    }
    /* A bound above what one store page may hold is cut to STORE_PAGE_SIZE_MAX. */
    assert_true(lagoon_v1_ListMethodsResponse_info.fields[0].bound > STORE_PAGE_SIZE_MAX);
    assert_int_equal(paging_cap(&lagoon_v1_ListMethodsResponse_info, lagoon_v1_ListMethodsResponse_methods_tag),
                     STORE_PAGE_SIZE_MAX);

    /* Through the server: Notifications/List takes its cap from the same bound. */
    lagoon_set_token(C, student_tok[0]);
    lagoon_v1_ListNotificationsRequest req = lagoon_v1_ListNotificationsRequest_init_zero;
    lagoon_v1_ListNotificationsResponse resp = lagoon_v1_ListNotificationsResponse_init_zero;
    req.page_size = 500;
    assert_int_equal(lagoon_Notifications_List(C, &req, &resp), LAGOON_OK);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
    req.page_size = 501;
    assert_int_equal(lagoon_Notifications_List(C, &req, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_size", "at most 500"));
}

/* ---- through the list methods -------------------------------------------------------------------- */

static void test_notifications_pages_newest_first(void **state)
{
    (void)state;
    /* Each teacher writes to student0: one notification per sender, newest last written. */
    for (int i = 0; i < TEACHERS; i++) {
        lagoon_set_token(C, teacher_tok[i]);
        lagoon_v1_SendMessageRequest m = lagoon_v1_SendMessageRequest_init_zero;
        m.recipient_id = students[0];
        m.which_content = lagoon_v1_SendMessageRequest_text_tag;
        snprintf(m.content.text.text, sizeof(m.content.text.text), "from teacher %d", i);
        lagoon_v1_DirectMessage out;
        assert_int_equal(lagoon_Messages_Send(C, &m, &out), LAGOON_OK);
        test_clock_advance(T, 10);
    }
    lagoon_set_token(C, student_tok[0]);
    lagoon_v1_ListNotificationsRequest req = lagoon_v1_ListNotificationsRequest_init_zero;
    req.page_size = 3;
    uint64_t seen[TEACHERS + 1];
    int n = 0, pages = 0;
    for (int page = 0; page < TEACHERS + 1; page++) {
        lagoon_v1_ListNotificationsResponse resp = lagoon_v1_ListNotificationsResponse_init_zero;
        assert_int_equal(lagoon_Notifications_List(C, &req, &resp), LAGOON_OK);
        assert_true(resp.notifications_count <= 3);
        for (pb_size_t i = 0; i < resp.notifications_count && n < TEACHERS + 1; i++)
            seen[n++] = resp.notifications[i].created_at;
        snprintf(req.page_token, sizeof(req.page_token), "%s", resp.next_page_token);
        pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
        pages++;
        if (req.page_token[0] == '\0')
            break;
    }
    assert_int_equal(n, TEACHERS);
    assert_int_equal(pages, 3);
    for (int i = 1; i < n; i++)
        assert_true(seen[i] < seen[i - 1]); /* newest first: a reverse scan */
    /* A forged token names page_token. */
    snprintf(req.page_token, sizeof(req.page_token), "forged-token");
    lagoon_v1_ListNotificationsResponse resp = lagoon_v1_ListNotificationsResponse_init_zero;
    assert_int_equal(lagoon_Notifications_List(C, &req, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_token", NULL));
}

static void test_violations_at_once(void **state)
{
    (void)state;
    lagoon_set_token(C, student_tok[0]);
    lagoon_v1_ListUsersRequest ur = lagoon_v1_ListUsersRequest_init_zero;
    lagoon_v1_ListUsersResponse uresp = lagoon_v1_ListUsersResponse_init_zero;
    /* Every broken paging field at once. */
    ur.page_size = 501;
    ur.page = 1;
    snprintf(ur.page_token, sizeof(ur.page_token), "x");
    assert_int_equal(lagoon_Users_ListTeachers(C, &ur, &uresp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_size", "at most 500"));
    assert_true(has_violation("page", "use either page or page_token, not both"));
    /* A page too deep for offset paging names the request's field, page. */
    memset(&ur, 0, sizeof(ur));
    ur.page_size = 50;
    ur.page = STORE_OFFSET_MAX / 50 + 2;
    assert_int_equal(lagoon_Users_ListTeachers(C, &ur, &uresp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page", NULL));
    ur.page = STORE_OFFSET_MAX / 50 + 1; /* the deepest one: skips exactly the maximum */
    assert_int_equal(lagoon_Users_ListTeachers(C, &ur, &uresp), LAGOON_OK);
    assert_int_equal(uresp.users_count, 0);
    pb_release(lagoon_v1_ListUsersResponse_fields, &uresp);
    /* ListStudents (for teachers) checks the same fields. */
    lagoon_set_token(C, teacher_tok[0]);
    ur.page = STORE_OFFSET_MAX / 50 + 2;
    assert_int_equal(lagoon_Users_ListStudents(C, &ur, &uresp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page", NULL));
    /* Messages/List: per_page for numbered pages, with the cap of its own response. */
    lagoon_v1_ListMessagesRequest mr = lagoon_v1_ListMessagesRequest_init_zero;
    lagoon_v1_ListMessagesResponse mresp = lagoon_v1_ListMessagesResponse_init_zero;
    mr.other_user_id = students[0];
    mr.page = 1;
    mr.per_page = 201;
    assert_int_equal(lagoon_Messages_List(C, &mr, &mresp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("per_page", "at most 200"));
    mr.per_page = 200;
    mr.page = STORE_OFFSET_MAX / 200 + 2;
    assert_int_equal(lagoon_Messages_List(C, &mr, &mresp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cursor_pages_both_directions),
        cmocka_unit_test(test_numbered_pages_both_directions),
        cmocka_unit_test(test_skipped_rows_and_tokens),
        cmocka_unit_test(test_cap_is_the_options_max_count),
        cmocka_unit_test(test_notifications_pages_newest_first),
        cmocka_unit_test(test_violations_at_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
