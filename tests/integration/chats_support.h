/* What test_videochats and test_profchats share: the notifications a user holds about a chat,
 * as stored (and whether their titles are UTF-8), and the scheduler's due jobs run now.
 * Include after cmocka.h, with T the test's test_app. */
#ifndef LAGOON_CHATS_SUPPORT_H
#define LAGOON_CHATS_SUPPORT_H

#include "lagoon_tables.h"
#include "scheduler.h"
/* testserver.h first, by the test (its second half has no include guard). */

static test_app *T;

typedef struct note_count {
    lagoon_v1_Notification_Type type;
    uint64_t related;
    size_t n;
} note_count;

static int note_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    note_count *nc = arg;
    const lagoon_v1_Notification *n = row;
    if (n->type == nc->type && n->related_id == nc->related)
        nc->n++;
    return LAGOON_OK;
}

/* Calls fn(arg, id, row) for each of user's stored notifications: one page of the user's, more
 * than any test makes. */
static void each_note(uint64_t user, store_row_fn fn, void *arg)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user);
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_notifications, .index = lagoon_index_notifications_by_user_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    assert_int_equal(store_scan(t, &q, fn, arg, &page, &err), LAGOON_OK);
    assert_string_equal(page.next_page_token, "");
    store_read_end(t);
}

/* user's notifications of type about chat (related_id), as stored. */
static size_t notes(uint64_t user, lagoon_v1_Notification_Type type, uint64_t chat)
{
    note_count nc = {type, chat, 0};
    each_note(user, note_row, &nc);
    return nc.n;
}

/* Whether the string is well-formed UTF-8 (no cut character, no stray continuation byte). */
static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0)
            return 0;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80)
                return 0;
    }
    return 1;
}

typedef struct note_titles {
    size_t n, bad;
} note_titles;

static int title_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    note_titles *nt = arg;
    nt->n++;
    nt->bad += !utf8_ok(((const lagoon_v1_Notification *)row)->title);
    return LAGOON_OK;
}

/* How many of user's stored notifications have a title that is not UTF-8; *n gets how many
 * there are. */
static size_t bad_titles(uint64_t user, size_t *n)
{
    note_titles nt = {0, 0};
    each_note(user, title_row, &nt);
    *n = nt.n;
    return nt.bad;
}

/* Runs the due jobs now, as the scheduler's thread would: how many ran. */
static uint32_t run_due(void)
{
    uint32_t ran = 0;
    store_error err;
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
    return ran;
}

#endif
