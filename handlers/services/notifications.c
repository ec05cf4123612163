/* Notifications service: a user's notifications, newest first. Features create them with
 * events_notify (events.h), which also publishes them to the user's subscriptions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "lagoon_handlers.h"
#include "paging.h"

static int add_note(void *arg, void *item, const void *row)
{
    (void)arg;
    *(lagoon_v1_Notification *)item = *(const lagoon_v1_Notification *)row;
    return 1;
}

static const store_index *note_index(int unread_only)
{
    return unread_only ? lagoon_index_notifications_unread : lagoon_index_notifications_by_user_time;
}

int handle_Notifications_List(rpc_call *call, const lagoon_v1_ListNotificationsRequest *req,
                              lagoon_v1_ListNotificationsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    paging_list l = {.size = req->page_size, .token = req->page_token,
                     .resp = &lagoon_v1_ListNotificationsResponse_info,
                     .items_tag = lagoon_v1_ListNotificationsResponse_notifications_tag,
                     .query = {.table = &lagoon_table_notifications, .index = note_index(req->unread_only),
                               .prefix = prefix.buf, .prefix_len = prefix.len, .reverse = 1},
                     .item = add_note, .item_size = sizeof(*resp->notifications)};
    int st = paging_read(call, &l);
    resp->notifications = l.items;
    resp->notifications_count = (pb_size_t)l.count;
    snprintf(resp->next_page_token, sizeof(resp->next_page_token), "%s", l.next_page_token);
    return st;
}

int handle_Notifications_UnreadCount(rpc_call *call, const lagoon_v1_NotificationsEmpty *req,
                                     lagoon_v1_UnreadCountResponse *resp)
{
    (void)req;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, rpc_call_caller(call)->user_id);
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    lagoon_v1_UserFeed f;
    st = store_get_by(t, &lagoon_table_user_feeds, lagoon_index_user_feeds_by_user, &k, NULL, &f, &err);
    store_read_end(t);
    if (st == LAGOON_OK)
        resp->unread = f.unread_notifications;
    return st == LAGOON_OK || st == LAGOON_NOT_FOUND ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- changes ------------------------------------------------------------------------------------ */

enum note_action { NOTE_READ, NOTE_DELETE, NOTE_READ_ALL };

typedef struct note_op {
    const app *a;
    rpc_caller who;
    uint64_t user_id, id;
    int action;
    int missing;
} note_op;

static int unread_of(void *arg, uint64_t id, const void *row)
{
    (void)row;
    uint64_t *ids = arg;
    if (ids[0] < STORE_PAGE_SIZE_MAX)
        ids[1 + ids[0]++] = id;
    return LAGOON_OK;
}

static int note_write(store_txn *t, void *arg, store_error *err)
{
    note_op *op = arg;
    op->missing = 0;
    if (op->action == NOTE_READ_ALL) {
        /* Page by page: each page is marked read and so leaves the unread index. */
        uint64_t *ids = malloc((1 + STORE_PAGE_SIZE_MAX) * sizeof(uint64_t));
        if (ids == NULL)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        store_key prefix;
        store_key_reset(&prefix);
        store_key_u64(&prefix, op->user_id);
        int st;
        uint64_t marked = 0;
        do {
            ids[0] = 0;
            store_query q = {0};
            q.table = &lagoon_table_notifications;
            q.index = note_index(1);
            q.prefix = prefix.buf;
            q.prefix_len = prefix.len;
            q.page_size = STORE_PAGE_SIZE_MAX;
            store_page page;
            st = store_scan(t, &q, unread_of, ids, &page, err);
            for (uint64_t i = 0; i < ids[0] && st == LAGOON_OK; i++) {
                lagoon_v1_Notification n;
                st = store_get(t, &lagoon_table_notifications, ids[1 + i], &n, err);
                if (st == LAGOON_OK) {
                    n.is_read = true;
                    st = store_update(t, &lagoon_table_notifications, &n, err);
                    marked++;
                }
            }
        } while (st == LAGOON_OK && ids[0] == STORE_PAGE_SIZE_MAX);
        free(ids);
        if (st != LAGOON_OK)
            return st;
        store_key_reset(&prefix);
        store_key_u64(&prefix, op->user_id);
        lagoon_v1_UserFeed f;
        st = store_get_by(t, &lagoon_table_user_feeds, lagoon_index_user_feeds_by_user, &prefix, NULL, &f, err);
        if (st == LAGOON_NOT_FOUND)
            return LAGOON_OK;
        f.unread_notifications = 0;
        if (st == LAGOON_OK)
            st = store_update(t, &lagoon_table_user_feeds, &f, err);
        /* The other devices clear their badge; nothing to tell when nothing was unread. */
        if (st == LAGOON_OK && marked > 0)
            st = events_notification_changed(t, op->a, op->user_id, lagoon_v1_NotificationStateEvent_Change_ALL_READ,
                                             0, err);
        return st;
    }
    lagoon_v1_Notification n;
    int st = store_get(t, &lagoon_table_notifications, op->id, &n, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && app_access(&op->who, n.user_id, 0, APP_CHANGE, 0) != LAGOON_OK)) {
        op->missing = 1; /* someone else's is as good as none */
        return LAGOON_OK;
    }
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_NotificationStateEvent_Change change = lagoon_v1_NotificationStateEvent_Change_READ;
    if (op->action == NOTE_READ) {
        if (n.is_read)
            return LAGOON_OK;
        n.is_read = true;
        st = store_update(t, &lagoon_table_notifications, &n, err);
    } else {
        int was_unread = !n.is_read;
        change = lagoon_v1_NotificationStateEvent_Change_DELETED;
        st = store_delete(t, &lagoon_table_notifications, n.id, err);
        if (st != LAGOON_OK || !was_unread)
            return st == LAGOON_OK ? events_notification_changed(t, op->a, op->user_id, change, n.id, err) : st;
        n.is_read = false;
    }
    if (st != LAGOON_OK)
        return st;
    /* One fewer unread. */
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, op->user_id);
    lagoon_v1_UserFeed f;
    st = store_get_by(t, &lagoon_table_user_feeds, lagoon_index_user_feeds_by_user, &k, NULL, &f, err);
    if (st == LAGOON_OK && f.unread_notifications > 0) {
        f.unread_notifications--;
        st = store_update(t, &lagoon_table_user_feeds, &f, err);
    }
    if (st == LAGOON_NOT_FOUND)
        st = LAGOON_OK;
    /* The user's other devices update the notification and their badge. */
    return st == LAGOON_OK ? events_notification_changed(t, op->a, op->user_id, change, n.id, err) : st;
}

static int note_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    note_op *op = arg;
    if (status != LAGOON_OK)
        status = app_store_error(call, status, err);
    else if (op->missing)
        status = rpc_call_error(call, LAGOON_NOT_FOUND, "no such notification");
    free(op);
    return status;
}

static int note_change(rpc_call *call, uint64_t id, int action)
{
    if (action != NOTE_READ_ALL && id == 0)
        return rpc_call_violation(call, "id", "is required");
    note_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    op->a = app_of(call);
    op->who = *rpc_call_caller(call);
    op->user_id = op->who.user_id;
    op->id = id;
    op->action = action;
    int st = app_write(call, note_write, op, note_done);
    if (st != RPC_PENDING)
        free(op);
    return st;
}

int handle_Notifications_MarkRead(rpc_call *call, const lagoon_v1_NotificationIdRequest *req,
                                  lagoon_v1_NotificationsEmpty *resp)
{
    (void)resp;
    return note_change(call, req->id, NOTE_READ);
}

int handle_Notifications_MarkAllRead(rpc_call *call, const lagoon_v1_NotificationsEmpty *req,
                                     lagoon_v1_NotificationsEmpty *resp)
{
    (void)req;
    (void)resp;
    return note_change(call, 0, NOTE_READ_ALL);
}

int handle_Notifications_Delete(rpc_call *call, const lagoon_v1_NotificationIdRequest *req,
                                lagoon_v1_NotificationsEmpty *resp)
{
    (void)resp;
    return note_change(call, req->id, NOTE_DELETE);
}
