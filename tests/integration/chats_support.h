/* What test_videochats and test_profchats share: the notifications a user holds about a chat,
 * as stored, and the scheduler's due jobs run now. Include after cmocka.h, with T the test's
 * test_app. */
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

/* user's notifications of type about chat (related_id), as stored: one page of the user's,
 * more than any test makes. */
static size_t notes(uint64_t user, lagoon_v1_Notification_Type type, uint64_t chat)
{
    note_count nc = {type, chat, 0};
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user);
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_notifications, .index = lagoon_index_notifications_by_user_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    assert_int_equal(store_scan(t, &q, note_row, &nc, &page, &err), LAGOON_OK);
    assert_string_equal(page.next_page_token, "");
    store_read_end(t);
    return nc.n;
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
