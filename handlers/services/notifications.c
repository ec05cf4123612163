/* Notifications service: a user's notifications, newest first. Features create them with
 * events_notify (events.h), which also publishes them to the user's subscriptions. */
#include <stdio.h>

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

/* ---- changes: write functions (app.h), each answering an empty response ------------------------ */

/* A notification is its user's alone (an administrator's neither): anyone else's is NOT_FOUND
 * as none is, so that its existence does not leak. */
static const app_policy note_policy = {
    .grants = {[APP_READ] = APP_REL_OWNER, [APP_CHANGE] = APP_REL_OWNER},
    .not_found = "no such notification",
};

enum note_change { NOTE_MARK_READ, NOTE_DELETE };

/* MarkRead and Delete: the caller's notification req->id, changed. */
static int change_own_note(store_txn *t, const app_write_in *in, enum note_change change, store_error *err)
{
    const lagoon_v1_NotificationIdRequest *req = in->req;
    lagoon_v1_Notification n;
    int st = store_get(t, &lagoon_table_notifications, req->id, &n, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, NULL, "%s", note_policy.not_found);
    if (st == LAGOON_OK)
        st = app_check(t, &in->who, &note_policy, APP_CHANGE, &n, n.user_id, err);
    if (st != LAGOON_OK)
        return st;
    return change == NOTE_DELETE ? events_notification_delete(t, in->a, &n, err)
                                 : events_notification_mark_read(t, in->a, &n, err);
}

static int mark_read_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    return change_own_note(t, in, NOTE_MARK_READ, err);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    return change_own_note(t, in, NOTE_DELETE, err);
}

static int mark_all_read_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    return events_notifications_all_read(t, in->a, in->who.user_id, err);
}

int handle_Notifications_MarkRead(rpc_call *call, const lagoon_v1_NotificationIdRequest *req,
                                  lagoon_v1_NotificationsEmpty *resp)
{
    (void)req; /* id: required, by its rule in events.proto */
    (void)resp;
    return app_write_call(call, mark_read_write, NULL);
}

int handle_Notifications_MarkAllRead(rpc_call *call, const lagoon_v1_NotificationsEmpty *req,
                                     lagoon_v1_NotificationsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, mark_all_read_write, NULL);
}

int handle_Notifications_Delete(rpc_call *call, const lagoon_v1_NotificationIdRequest *req,
                                lagoon_v1_NotificationsEmpty *resp)
{
    (void)req; /* id: required, by its rule in events.proto */
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}
