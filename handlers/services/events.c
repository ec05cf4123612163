/* events: the event log, the realtime router, and the Events service. See events.h.
 *
 * The seam. One router thread handles, in one FIFO queue, both the commit announcements of new
 * events and the subscriptions that start. A subscription with `since` replays the log from
 * there, a page at a time and only while its connection keeps up (its backlog under half the
 * limit), so a long absence is caught up at the reader's pace. While it replays, live events
 * pass it by: the replay reaches them. The replay step that finds the end of the log switches
 * it to live; everything committed after that step's read is announced later in the queue and
 * delivered live, and anything announced later but already replayed is recognised by its seq
 * (<= the subscriber's last sent) and skipped. Per-user seqs increase in commit order, so that
 * comparison is exact: no gap, no duplicate. A live subscriber whose backlog passes the limit
 * is ended with RESOURCE_EXHAUSTED; it resumes from the log with `since`. */
#include "events.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lagoon_handlers.h"
#include "log.h"
#include "messages.h"
#include "realtime.h"

#define EVENTS_PURGE_PER_APPEND 8   /* old events trimmed per append: bounded work per write */
#define EVENTS_AGE_CHECK 16         /* every 16th append of a user also trims by age */
#define EVENTS_REPLAY_PAGE 200      /* events read per page while replaying */
#define EVENTS_TYPING_MS 5000       /* how long a typing indicator shows */
#define ROUTER_BUCKETS 1024         /* subscriber tables, by user, session and connection */
#define ROUTER_REPLAY_POLL_MS 5     /* how often paused replays look at their readers again */
#define ROUTER_USER_TURN EVENTS_USER_TURN
#define ROUTER_LANE_MAX EVENTS_LANE_MAX
#define ROUTER_TYPING_QUEUE_MAX 4096 /* typing commands waiting for the router; more are dropped
                                      * (a typing indicator is ephemeral, never logged) */
#define ROUTER_EPHEMERAL_MAX 256    /* a topic's ephemeral events allocated (queued or in lanes),
                                     * each a whole Event (large: it can hold a message); more
                                     * are dropped, as they are ephemeral */
#define ROUTER_TICK_MS 1000         /* how often access-token expiry is checked: a stream outlives
                                     * its token by at most this */

/* ---- the log --------------------------------------------------------------------------------- */

static int feed_get(store_txn *t, uint64_t user, lagoon_v1_UserFeed *f, int *exists, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, user);
    int st = store_get_by(t, &lagoon_table_user_feeds, lagoon_index_user_feeds_by_user, &k, NULL, f, err);
    *exists = st == LAGOON_OK;
    if (st == LAGOON_NOT_FOUND) {
        memset(f, 0, sizeof(*f));
        f->user_id = user;
        st = LAGOON_OK;
    }
    return st;
}

static int feed_put(store_txn *t, lagoon_v1_UserFeed *f, int exists, store_error *err)
{
    return exists ? store_update(t, &lagoon_table_user_feeds, f, err)
                  : store_insert(t, &lagoon_table_user_feeds, f, NULL, err);
}

/* q over index ix of tab limited to user's entries (the key's first field), page_size a page;
 * prefix holds the key's bytes and must outlive q. */
static void user_query(store_query *q, store_key *prefix, const store_table *tab, const store_index *ix, uint64_t user,
                       uint32_t page_size)
{
    store_key_reset(prefix);
    store_key_u64(prefix, user);
    *q = (store_query){.table = tab, .index = ix, .prefix = prefix->buf, .prefix_len = prefix->len,
                       .page_size = page_size};
}

/* A log: a user's or a topic's. Its rows are in table, found in index by prefix + seq. */
typedef struct event_log {
    const store_table *table;
    const store_index *index;
    store_key prefix;                                    /* user id, or topic kind + id */
    const lagoon_v1_Event *(*event_of)(const void *row); /* the event in a row of table */
} event_log;

static const lagoon_v1_Event *user_event_of(const void *row)
{
    return &((const lagoon_v1_UserEvent *)row)->event;
}

static const lagoon_v1_Event *topic_event_of(const void *row)
{
    return &((const lagoon_v1_TopicEvent *)row)->event;
}

static void user_log(event_log *lg, uint64_t user)
{
    lg->table = &lagoon_table_user_events;
    lg->index = lagoon_index_user_events_by_user_seq;
    lg->event_of = user_event_of;
    store_key_reset(&lg->prefix);
    store_key_u64(&lg->prefix, user);
}

static void topic_log(event_log *lg, uint32_t kind, uint64_t id)
{
    lg->table = &lagoon_table_topic_events;
    lg->index = lagoon_index_topic_events_by_topic_seq;
    lg->event_of = topic_event_of;
    store_key_reset(&lg->prefix);
    store_key_u32(&lg->prefix, kind);
    store_key_u64(&lg->prefix, id);
}

/* The row of seq in lg: its id (row decoded when not NULL), or 0. */
static uint64_t log_row(store_txn *t, const event_log *lg, uint64_t seq, void *row, store_error *err)
{
    store_key k = lg->prefix;
    store_key_u64(&k, seq);
    uint64_t id = 0;
    if (store_get_by(t, lg->table, lg->index, &k, &id, row, err) != LAGOON_OK)
        return 0;
    return id;
}

/* The event row of (user, seq): its id, or 0. */
static uint64_t event_id(store_txn *t, uint64_t user, uint64_t seq, lagoon_v1_UserEvent *row, store_error *err)
{
    event_log lg;
    user_log(&lg, user);
    return log_row(t, &lg, seq, row, err);
}

/* Retention, a few events per append so that writes stay bounded: by count on every append
 * (which needs only ids), by the age of the oldest on every EVENTS_AGE_CHECK-th (which needs
 * the oldest row decoded: into a buffer of lg's table allocated then, so that the other
 * appends allocate nothing and the appended row is left as it is). *first moves past what is
 * gone. */
static int log_trim(store_txn *t, const app *a, const event_log *lg, uint64_t *first, uint64_t last,
                    store_error *err)
{
    int64_t now = app_now(a);
    int check_age = last % EVENTS_AGE_CHECK == 0;
    void *row = NULL;
    if (check_age && *first < last && (row = malloc(lg->table->row_size)) == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (int i = 0; i < EVENTS_PURGE_PER_APPEND && st == LAGOON_OK && *first < last; i++) {
        uint64_t kept = last - *first + 1;
        if (kept <= a->cfg.event_retention_count && !check_age)
            break;
        uint64_t id = log_row(t, lg, *first, row, err);
        if (id && kept <= a->cfg.event_retention_count &&
            now - lg->event_of(row)->created_at <= (int64_t)a->cfg.event_retention_s * 1000)
            break;
        if (id)
            st = store_delete(t, lg->table, id, err);
        (*first)++;
    }
    free(row);
    return st;
}

/* Zeroes the size bytes at p but the len bytes at offset at, which the caller fills: a row's
 * defaults (proto3: all zero) without clearing a 17 KiB event that is copied or built over. */
static void zero_around(void *p, size_t size, size_t at, size_t len)
{
    memset(p, 0, at);
    memset((char *)p + at + len, 0, size - at - len);
}

void events_row_init(lagoon_v1_UserEvent *row, uint64_t user_id, pb_size_t which, const wire_msginfo *payload_info)
{
    zero_around(row, sizeof(*row), offsetof(lagoon_v1_UserEvent, event), sizeof(row->event));
    row->user_id = user_id;
    row->has_event = true;
    lagoon_v1_Event *e = &row->event;
    zero_around(e, sizeof(*e), offsetof(lagoon_v1_Event, payload), sizeof(e->payload));
    e->which_payload = which;
    /* The oneof's members share the union's storage: only the chosen one is set to its
     * defaults (a whole-row wire_init walks every member, the message's text buffer too). */
    wire_init(payload_info, &e->payload);
}

/* Appends row (its event's payload set) to row->user_id's log, whose feed f was read in t
 * (exists: stored): the event gets the next seq (f->last_seq after) and the time; the log is
 * trimmed and f written. */
static int log_append(store_txn *t, const app *a, lagoon_v1_UserEvent *row, lagoon_v1_UserFeed *f, int exists,
                      store_error *err)
{
    row->id = 0;
    row->event.seq = ++f->last_seq;
    row->event.created_at = app_now(a);
    if (f->first_seq == 0)
        f->first_seq = f->last_seq;
    int st = store_insert(t, &lagoon_table_user_events, row, NULL, err);
    event_log lg;
    user_log(&lg, row->user_id);
    if (st == LAGOON_OK)
        st = log_trim(t, a, &lg, &f->first_seq, f->last_seq, err);
    return st == LAGOON_OK ? feed_put(t, f, exists, err) : st;
}

int events_append_row(store_txn *t, const app *a, lagoon_v1_UserEvent *row, store_error *err)
{
    lagoon_v1_UserFeed f;
    int exists;
    int st = feed_get(t, row->user_id, &f, &exists, err);
    return st == LAGOON_OK ? log_append(t, a, row, &f, exists, err) : st;
}

int events_append(store_txn *t, const app *a, uint64_t user_id, lagoon_v1_Event *ev, store_error *err)
{
    lagoon_v1_UserEvent *row = malloc(sizeof(*row));
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    zero_around(row, sizeof(*row), offsetof(lagoon_v1_UserEvent, event), sizeof(row->event));
    row->user_id = user_id;
    row->has_event = true;
    row->event = *ev;
    int st = events_append_row(t, a, row, err);
    ev->seq = row->event.seq;
    ev->created_at = row->event.created_at;
    free(row);
    return st;
}

/* A row for an event of user_id's log with payload which (events_row_init), or NULL when
 * memory is short. On the heap: a row can hold a whole message. */
static lagoon_v1_UserEvent *row_new(uint64_t user_id, pb_size_t which, const wire_msginfo *payload_info)
{
    lagoon_v1_UserEvent *row = malloc(sizeof(*row));
    if (row != NULL)
        events_row_init(row, user_id, which, payload_info);
    return row;
}

/* ---- topics ------------------------------------------------------------------------------------- */

static void topic_key(store_key *k, const lagoon_v1_Topic *topic)
{
    store_key_reset(k);
    store_key_u32(k, (uint32_t)topic->kind);
    store_key_u64(k, topic->id);
}

static int topic_feed_get(store_txn *t, const lagoon_v1_Topic *topic, lagoon_v1_TopicFeed *f, int *exists,
                          store_error *err)
{
    store_key k;
    topic_key(&k, topic);
    int st = store_get_by(t, &lagoon_table_topic_feeds, lagoon_index_topic_feeds_by_topic, &k, NULL, f, err);
    *exists = st == LAGOON_OK;
    if (st == LAGOON_NOT_FOUND) {
        memset(f, 0, sizeof(*f));
        f->has_topic = true;
        f->topic = *topic;
        st = LAGOON_OK;
    }
    return st;
}

static int topic_valid(const lagoon_v1_Topic *topic, store_error *err)
{
    if (topic->kind <= lagoon_v1_Topic_Kind_KIND_UNSPECIFIED || topic->kind > _lagoon_v1_Topic_Kind_MAX ||
        topic->id == 0)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "topic", "a topic needs a defined kind and an id");
    return LAGOON_OK;
}

int events_topic_publish(store_txn *t, const app *a, const lagoon_v1_Topic *topic, lagoon_v1_Event *ev,
                         store_error *err)
{
    int st = topic_valid(topic, err);
    lagoon_v1_TopicFeed f;
    int exists = 0;
    if (st == LAGOON_OK)
        st = topic_feed_get(t, topic, &f, &exists, err);
    if (st != LAGOON_OK)
        return st;
    ev->seq = ++f.last_seq;
    ev->created_at = app_now(a);
    ev->has_topic = true;
    ev->topic = *topic;
    if (f.first_seq == 0)
        f.first_seq = ev->seq;
    lagoon_v1_TopicEvent *row = malloc(sizeof(*row));
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    zero_around(row, sizeof(*row), offsetof(lagoon_v1_TopicEvent, event), sizeof(row->event));
    row->has_topic = true;
    row->topic = *topic;
    row->has_event = true;
    row->event = *ev;
    st = store_insert(t, &lagoon_table_topic_events, row, NULL, err);
    event_log lg;
    topic_log(&lg, (uint32_t)topic->kind, topic->id);
    if (st == LAGOON_OK)
        st = log_trim(t, a, &lg, &f.first_seq, f.last_seq, err);
    free(row);
    if (st == LAGOON_OK)
        st = exists ? store_update(t, &lagoon_table_topic_feeds, &f, err)
                    : store_insert(t, &lagoon_table_topic_feeds, &f, NULL, err);
    return st;
}

int events_topic_forget(store_txn *t, const app *a, const lagoon_v1_Topic *topic, store_error *err)
{
    (void)a;
    lagoon_v1_TopicFeed f;
    int exists = 0;
    int st = topic_valid(topic, err);
    if (st == LAGOON_OK)
        st = topic_feed_get(t, topic, &f, &exists, err);
    if (st != LAGOON_OK || !exists)
        return st;
    /* The kept events are first_seq..last_seq (fewer where retention's age rule went first):
     * at most the retention count, so this is bounded like the log itself. */
    event_log lg;
    topic_log(&lg, (uint32_t)topic->kind, topic->id);
    for (uint64_t seq = f.first_seq ? f.first_seq : 1; seq <= f.last_seq && st == LAGOON_OK; seq++) {
        store_key k = lg.prefix;
        store_key_u64(&k, seq);
        uint64_t id = 0;
        st = store_get_by(t, lg.table, lg.index, &k, &id, NULL, err);
        if (st == LAGOON_OK)
            st = store_delete(t, lg.table, id, err);
        else if (st == LAGOON_NOT_FOUND)
            st = LAGOON_OK;
    }
    return st == LAGOON_OK ? store_delete(t, &lagoon_table_topic_feeds, f.id, err) : st;
}

static int member_get(store_txn *t, uint64_t user, const lagoon_v1_Topic *topic, lagoon_v1_TopicMember *m,
                      uint64_t *id, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, user);
    store_key_u32(&k, (uint32_t)topic->kind);
    store_key_u64(&k, topic->id);
    return store_get_by(t, &lagoon_table_topic_members, lagoon_index_topic_members_by_user, &k, id, m, err);
}

/* Visits user's memberships (at most EVENTS_MAX_TOPICS_PER_USER: the join cap), by topic. */
static int scan_memberships(store_txn *t, uint64_t user, store_row_fn fn, void *arg, store_error *err)
{
    store_key prefix;
    store_query q;
    user_query(&q, &prefix, &lagoon_table_topic_members, lagoon_index_topic_members_by_user, user,
               EVENTS_MAX_TOPICS_PER_USER);
    store_page page;
    return store_scan(t, &q, fn, arg, &page, err);
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    ++*(unsigned *)arg;
    return LAGOON_OK;
}

int events_topic_join(store_txn *t, const app *a, uint64_t user_id, const lagoon_v1_Topic *topic, store_error *err)
{
    (void)a;
    lagoon_v1_TopicMember m;
    uint64_t id;
    int st = topic_valid(topic, err);
    if (st == LAGOON_OK)
        st = member_get(t, user_id, topic, &m, &id, err);
    if (st != LAGOON_NOT_FOUND)
        return st; /* a member already, or an error */
    unsigned n = 0;
    st = scan_memberships(t, user_id, count_row, &n, err);
    if (st != LAGOON_OK)
        return st;
    if (n >= EVENTS_MAX_TOPICS_PER_USER)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, "topic", "a user belongs to at most %d topics",
                          EVENTS_MAX_TOPICS_PER_USER);
    lagoon_v1_TopicFeed f;
    int exists;
    st = topic_feed_get(t, topic, &f, &exists, err);
    if (st != LAGOON_OK)
        return st;
    memset(&m, 0, sizeof(m));
    m.user_id = user_id;
    m.has_topic = true;
    m.topic = *topic;
    m.joined_seq = f.last_seq;
    return store_insert(t, &lagoon_table_topic_members, &m, NULL, err);
}

int events_topic_leave(store_txn *t, const app *a, uint64_t user_id, const lagoon_v1_Topic *topic, store_error *err)
{
    (void)a;
    lagoon_v1_TopicMember m;
    uint64_t id;
    int st = member_get(t, user_id, topic, &m, &id, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_topic_members, id, err);
    return st;
}

/* ---- notifications ------------------------------------------------------------------------------ */

int events_notify(store_txn *t, const app *a, uint64_t user_id, lagoon_v1_Notification_Type type, const char *title,
                  const char *content, uint64_t related_id, const char *collapse_key, uint64_t message_id,
                  events_noted *out, store_error *err)
{
    /* The feed is read once for the unread count and the log position, and written once. */
    lagoon_v1_UserFeed f;
    int exists;
    int st = feed_get(t, user_id, &f, &exists, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_UserEvent *row = row_new(user_id, lagoon_v1_Event_notification_tag, &lagoon_v1_NotificationEvent_info);
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    /* The notification is read, stored and logged in place, in its event: no copy. */
    row->event.payload.notification.has_notification = true;
    lagoon_v1_Notification *n = &row->event.payload.notification.notification;
    st = LAGOON_NOT_FOUND;
    if (collapse_key && collapse_key[0]) {
        store_key k;
        store_key_reset(&k);
        store_key_u64(&k, user_id);
        store_key_str(&k, collapse_key);
        st = store_get_by(t, &lagoon_table_notifications, lagoon_index_notifications_by_collapse_key, &k, NULL, n, err);
    }
    int collapsed = st == LAGOON_OK;
    if (st == LAGOON_NOT_FOUND) {
        /* n is still at its defaults: a lookup that finds nothing decodes nothing. */
        n->user_id = user_id;
        n->type = type;
        n->related_id = related_id;
        snprintf(n->collapse_key, sizeof(n->collapse_key), "%s", collapse_key ? collapse_key : "");
        st = LAGOON_OK;
    }
    if (st == LAGOON_OK) {
        n->count++;
        n->created_at = app_now(a);
        n->snippet_message_id = message_id;
        /* Whole characters: a title built from a long name must not end in half of one. */
        app_copy_utf8(n->title, sizeof(n->title), title);
        app_copy_utf8(n->content, sizeof(n->content), content);
        st = collapsed ? store_update(t, &lagoon_table_notifications, n, err)
                       : store_insert(t, &lagoon_table_notifications, n, NULL, err);
    }
    if (st == LAGOON_OK) {
        if (!collapsed)
            f.unread_notifications++;
        uint64_t id = n->id; /* the row is the log's buffer from here */
        st = log_append(t, a, row, &f, exists, err);
        if (out != NULL) {
            out->notification_id = id;
            out->seq = f.last_seq;
        }
    }
    free(row);
    return st;
}

/* Stores changed notification n and logs it for its user's devices; *seq (may be NULL) gets
 * the event's seq. */
static int note_publish(store_txn *t, const app *a, const lagoon_v1_Notification *n, uint64_t *seq, store_error *err)
{
    int st = store_update(t, &lagoon_table_notifications, n, err);
    lagoon_v1_UserFeed f;
    int exists;
    if (st == LAGOON_OK)
        st = feed_get(t, n->user_id, &f, &exists, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_UserEvent *row = row_new(n->user_id, lagoon_v1_Event_notification_tag, &lagoon_v1_NotificationEvent_info);
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    row->event.payload.notification.has_notification = true;
    row->event.payload.notification.notification = *n;
    st = log_append(t, a, row, &f, exists, err);
    if (seq != NULL)
        *seq = f.last_seq;
    free(row);
    return st;
}

int events_message_edited(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, const char *snippet,
                          uint64_t *seq, store_error *err)
{
    *seq = 0;
    if (m->notification_id == 0)
        return LAGOON_OK; /* stored before notifications recorded their message: left as it is */
    lagoon_v1_Notification n;
    int st = store_get(t, &lagoon_table_notifications, m->notification_id, &n, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && n.snippet_message_id != m->id))
        return LAGOON_OK; /* deleted by its owner, or it shows a later message */
    if (st != LAGOON_OK)
        return st;
    snprintf(n.content, sizeof(n.content), "%s", snippet);
    return note_publish(t, a, &n, seq, err);
}

/* What a notification state event does to its user's unread count first. */
enum unread_change { UNREAD_SAME, UNREAD_ONE_FEWER, UNREAD_NONE };

/* A notification state event with the user's unread count after `unread` (count: COUNT_CHANGED's):
 * the feed is read and written once, for the count and the log position alike. */
static int publish_state(store_txn *t, const app *a, uint64_t user_id, lagoon_v1_NotificationStateEvent_Change change,
                         uint64_t notification_id, uint32_t count, enum unread_change unread, store_error *err)
{
    lagoon_v1_UserFeed f;
    int exists;
    int st = feed_get(t, user_id, &f, &exists, err);
    if (st != LAGOON_OK)
        return st;
    if (unread == UNREAD_NONE || (unread == UNREAD_ONE_FEWER && f.unread_notifications == 0))
        f.unread_notifications = 0;
    else if (unread == UNREAD_ONE_FEWER)
        f.unread_notifications--;
    lagoon_v1_UserEvent *row =
        row_new(user_id, lagoon_v1_Event_notification_state_tag, &lagoon_v1_NotificationStateEvent_info);
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    lagoon_v1_NotificationStateEvent *ns = &row->event.payload.notification_state;
    ns->change = change;
    ns->notification_id = notification_id;
    ns->unread = f.unread_notifications;
    ns->count = count;
    st = log_append(t, a, row, &f, exists, err);
    free(row);
    return st;
}

int events_notification_changed(store_txn *t, const app *a, uint64_t user_id,
                                lagoon_v1_NotificationStateEvent_Change change, uint64_t notification_id,
                                store_error *err)
{
    return publish_state(t, a, user_id, change, notification_id, 0, UNREAD_SAME, err);
}

int events_notification_mark_read(store_txn *t, const app *a, lagoon_v1_Notification *n, store_error *err)
{
    if (n->is_read)
        return LAGOON_OK; /* nothing changes, nothing to tell */
    n->is_read = true;
    int st = store_update(t, &lagoon_table_notifications, n, err);
    /* The user's other devices update the notification and their badge. */
    return st == LAGOON_OK ? publish_state(t, a, n->user_id, lagoon_v1_NotificationStateEvent_Change_READ, n->id, 0,
                                           UNREAD_ONE_FEWER, err)
                           : st;
}

int events_notification_read(store_txn *t, const app *a, uint64_t user_id, const char *collapse_key,
                             store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, user_id);
    store_key_str(&k, collapse_key);
    lagoon_v1_Notification n;
    int st = store_get_by(t, &lagoon_table_notifications, lagoon_index_notifications_by_collapse_key, &k, NULL, &n, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    /* The user's other devices clear the badge as they would for Notifications/MarkRead. */
    return st == LAGOON_OK ? events_notification_mark_read(t, a, &n, err) : st;
}

int events_notification_delete(store_txn *t, const app *a, const lagoon_v1_Notification *n, store_error *err)
{
    int st = store_delete(t, &lagoon_table_notifications, n->id, err);
    return st == LAGOON_OK ? publish_state(t, a, n->user_id, lagoon_v1_NotificationStateEvent_Change_DELETED, n->id, 0,
                                           n->is_read ? UNREAD_SAME : UNREAD_ONE_FEWER, err)
                           : st;
}

int events_notifications_all_read(store_txn *t, const app *a, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_query q;
    user_query(&q, &prefix, &lagoon_table_notifications, lagoon_index_notifications_unread, user_id,
               STORE_PAGE_SIZE_MAX);
    app_id_page page; /* 4 KiB of ids: the writer thread's stack has room */
    uint64_t marked = 0;
    int st;
    /* Page by page from the start: each page is marked read and so leaves the unread index;
     * bounded by the user's unread notifications. */
    do {
        st = app_scan_ids(t, &q, &page, err);
        for (uint32_t i = 0; i < page.n && st == LAGOON_OK; i++) {
            lagoon_v1_Notification n;
            st = store_get(t, &lagoon_table_notifications, page.ids[i], &n, err);
            if (st == LAGOON_OK) {
                n.is_read = true;
                st = store_update(t, &lagoon_table_notifications, &n, err);
                marked++;
            }
        }
    } while (st == LAGOON_OK && page.n == STORE_PAGE_SIZE_MAX);
    if (st != LAGOON_OK)
        return st;
    /* The other devices clear their badge; nothing to tell when nothing was unread. */
    if (marked > 0)
        return publish_state(t, a, user_id, lagoon_v1_NotificationStateEvent_Change_ALL_READ, 0, 0, UNREAD_NONE, err);
    lagoon_v1_UserFeed f;
    int exists;
    st = feed_get(t, user_id, &f, &exists, err);
    if (st != LAGOON_OK || !exists || f.unread_notifications == 0)
        return st;
    f.unread_notifications = 0;
    return store_update(t, &lagoon_table_user_feeds, &f, err);
}

/* ---- a deleted message's words ------------------------------------------------------------------ */

/* Events are logged after the message's created_at (taken before its write was queued): this
 * much earlier still counts, for a wall clock stepped back meanwhile. */
#define EVENTS_SCRUB_SLACK_MS 60000

typedef struct scrub {
    const lagoon_v1_DirectMessage *m;
    int64_t since;           /* events older than this cannot be the message's */
    uint64_t ids[EVENTS_REPLAY_PAGE]; /* event rows to rewrite, from this page */
    uint32_t n;
    int done;                /* reached events older than since */
    uint64_t prev_id, prev_seq; /* the event visited before (one seq later: a reverse scan) */
    int prev_note;           /* ... was a notification about m's conversation */
    unsigned notes;          /* notification events of m found */
    int adjust;              /* a notification event found also adjusts its notification (rows
                              * from before the message row named its notification) */
} scrub;

static int is_message_event(const lagoon_v1_Event *e, uint64_t message_id)
{
    return e->which_payload == lagoon_v1_Event_message_tag && e->payload.message.has_message &&
           e->payload.message.message.id == message_id &&
           e->payload.message.action != lagoon_v1_MessageEvent_Action_DELETED;
}

static int scrub_visit(void *arg, uint64_t id, const void *row)
{
    scrub *sc = arg;
    const lagoon_v1_Event *e = &((const lagoon_v1_UserEvent *)row)->event;
    if (e->created_at < sc->since) {
        sc->done = 1;
        return LAGOON_CANCELLED;
    }
    int shows_m = e->which_payload == lagoon_v1_Event_notification_tag &&
                  e->payload.notification.notification.snippet_message_id == sc->m->id;
    if (shows_m) /* a notification event that shows m's snippet (sent or edited) */
        sc->ids[sc->n++] = id;
    if (is_message_event(e, sc->m->id)) {
        sc->ids[sc->n++] = id;
        /* The notification Send logged right after the message (same transaction, next seq). */
        if (e->payload.message.action == lagoon_v1_MessageEvent_Action_SENT && sc->prev_note &&
            sc->prev_seq == e->seq + 1 && sc->n < EVENTS_REPLAY_PAGE &&
            !(sc->n >= 2 && sc->ids[sc->n - 2] == sc->prev_id)) { /* not already taken as shows_m */
            sc->ids[sc->n++] = sc->prev_id;
            sc->notes++;
        }
    }
    sc->prev_id = id;
    sc->prev_seq = e->seq;
    sc->prev_note = e->which_payload == lagoon_v1_Event_notification_tag &&
                    e->payload.notification.notification.type == lagoon_v1_Notification_Type_DIRECT_MESSAGE &&
                    e->payload.notification.notification.related_id == sc->m->conversation_id;
    /* Room for this page's worst case (a message and its notification) on the next visit. */
    return sc->n + 2 > EVENTS_REPLAY_PAGE ? LAGOON_CANCELLED : LAGOON_OK;
}

/* Notification n (read in t, changed here) counted the deleted message m: it counts one fewer and
 * goes when that was its last; it loses its content if that still shows m's snippet: by
 * snippet_message_id, or for a notification from before that was recorded (0) when its content
 * is words (NULL: never; may be n->content). Published either way. */
static int scrub_note_row(store_txn *t, const app *a, lagoon_v1_Notification *n, uint64_t message_id,
                          const char *words, store_error *err)
{
    if (n->count <= 1)
        return events_notification_delete(t, a, n, err);
    n->count--;
    if (n->snippet_message_id ? n->snippet_message_id == message_id : words != NULL && strcmp(n->content, words) == 0) {
        n->content[0] = '\0';
        n->snippet_message_id = 0;
        return note_publish(t, a, n, NULL, err); /* no words left in it to log */
    }
    /* It shows a later message's words: logging it whole would put them in an event that message's
     * row does not list (and its Delete would miss), so the change goes out as a count. */
    int st = store_update(t, &lagoon_table_notifications, n, err);
    return st == LAGOON_OK ? publish_state(t, a, n->user_id, lagoon_v1_NotificationStateEvent_Change_COUNT_CHANGED,
                                           n->id, n->count, UNREAD_SAME, err)
                           : st;
}

/* The notification a logged notification event of the deleted message m names. */
static int scrub_notification(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m,
                              const lagoon_v1_Notification *logged, store_error *err)
{
    lagoon_v1_Notification n;
    int st = store_get(t, &lagoon_table_notifications, logged->id, &n, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* deleted by its owner meanwhile */
    return scrub_note_row(t, a, &n, m->id, logged->content, err);
}

/* Rewrites one logged event of the deleted message m: a message event keeps only the ids (as a
 * DELETED event), a notification event loses its content (and with adjust, the notification it
 * names counts m no more). */
static int scrub_event(store_txn *t, const app *a, const lagoon_v1_DirectMessage *mm, int adjust, uint64_t id,
                       lagoon_v1_UserEvent *row, store_error *err)
{
    int st = store_get(t, &lagoon_table_user_events, id, row, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    lagoon_v1_Event *e = &row->event;
    if (e->which_payload == lagoon_v1_Event_notification_tag) {
        if (adjust && row->user_id == e->payload.notification.notification.user_id)
            st = scrub_notification(t, a, mm, &e->payload.notification.notification, err);
        e->payload.notification.notification.content[0] = '\0';
        e->payload.notification.notification.snippet_message_id = 0;
    } else if (e->which_payload == lagoon_v1_Event_message_tag) {
        lagoon_v1_DirectMessage *m = &e->payload.message.message;
        uint64_t mid = m->id, conv = m->conversation_id, from = m->sender_id, to = m->recipient_id;
        wire_init(&lagoon_v1_MessageEvent_info, &e->payload.message);
        e->payload.message.action = lagoon_v1_MessageEvent_Action_DELETED;
        e->payload.message.has_message = true;
        m->id = mid;
        m->conversation_id = conv;
        m->sender_id = from;
        m->recipient_id = to;
    }
    return st == LAGOON_OK ? store_update(t, &lagoon_table_user_events, row, err) : st;
}

/* 1 if a notification's content is the snippet of text: all of it, or a cut of it and "...". */
static int shows_words(const char *content, const char *text)
{
    size_t n = strlen(content);
    if (n == 0)
        return 0;
    if (strcmp(content, text) == 0)
        return 1;
    return n > 3 && strcmp(content + n - 3, "...") == 0 && strncmp(content, text, n - 3) == 0;
}

typedef struct note_search {
    const lagoon_v1_DirectMessage *m;
    int64_t since;
    uint64_t ids[EVENTS_REPLAY_PAGE];
    uint32_t n;
} note_search;

static int note_with_words(void *arg, uint64_t id, const void *row)
{
    note_search *ns = arg;
    const lagoon_v1_Notification *n = row;
    if (n->created_at < ns->since)
        return LAGOON_CANCELLED; /* older than the message: it cannot show it */
    if (n->type == lagoon_v1_Notification_Type_DIRECT_MESSAGE && n->related_id == ns->m->conversation_id &&
        (n->snippet_message_id == 0 || n->snippet_message_id == ns->m->id) &&
        shows_words(n->content, ns->m->content.text.text) && ns->n < EVENTS_REPLAY_PAGE)
        ns->ids[ns->n++] = id;
    return LAGOON_OK;
}

/* The recipient's notifications updated since m was sent (newest first, one page: bounded)
 * that show m's words, when the log no longer links m to its notification. */
static int scrub_notes_by_words(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, store_error *err)
{
    note_search ns = {.m = m, .since = m->created_at - EVENTS_SCRUB_SLACK_MS, .n = 0}; /* 1.6 KiB: on the stack */
    store_key prefix;
    store_query q;
    user_query(&q, &prefix, &lagoon_table_notifications, lagoon_index_notifications_by_user_time, m->recipient_id,
               EVENTS_REPLAY_PAGE);
    q.reverse = 1;
    store_page page;
    int st = store_scan(t, &q, note_with_words, &ns, &page, err);
    if (st == LAGOON_CANCELLED)
        st = LAGOON_OK;
    for (uint32_t i = 0; i < ns.n && st == LAGOON_OK; i++) {
        lagoon_v1_Notification n;
        st = store_get(t, &lagoon_table_notifications, ns.ids[i], &n, err);
        if (st == LAGOON_OK)
            st = scrub_note_row(t, a, &n, m->id, n.content, err);
    }
    return st;
}

/* Scans user's log newest first back to the time m was sent and rewrites m's events. */
static int scrub_log(store_txn *t, const app *a, uint64_t user, const lagoon_v1_DirectMessage *m, int adjust,
                     lagoon_v1_UserEvent *row, unsigned *notes, store_error *err)
{
    scrub sc = {.m = m, .adjust = adjust, .since = m->created_at - EVENTS_SCRUB_SLACK_MS}; /* 1.7 KiB: on the stack */
    store_key prefix;
    int st = LAGOON_OK;
    /* Bounded: each page moves back through the user's log, which holds at most the retention
     * count; a page ends early only when its rewrite list is full, and the next one starts
     * right below the last event visited. */
    for (int first = 1; st == LAGOON_OK && !sc.done; first = 0) {
        store_query q;
        user_query(&q, &prefix, &lagoon_table_user_events, lagoon_index_user_events_by_user_seq, user,
                   EVENTS_REPLAY_PAGE);
        q.reverse = 1;
        store_key start = prefix;
        if (!first) {
            if (sc.prev_seq <= 1)
                break; /* the first seq was visited */
            store_key_u64(&start, sc.prev_seq - 1);
            q.start = start.buf;
            q.start_len = start.len;
        }
        store_page page;
        sc.n = 0;
        st = store_scan(t, &q, scrub_visit, &sc, &page, err);
        if (st == LAGOON_CANCELLED)
            st = LAGOON_OK;
        else if (st == LAGOON_OK && page.next_page_token[0] == '\0')
            sc.done = 1; /* the start of the log */
        for (uint32_t i = 0; i < sc.n && st == LAGOON_OK; i++)
            st = scrub_event(t, a, m, adjust, sc.ids[i], row, err);
    }
    *notes += sc.notes;
    return st;
}

/* The events of m that its row lists in user's log: looked up by seq, no scan. */
static int scrub_listed(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, uint64_t user,
                        const uint64_t *seqs, pb_size_t n, lagoon_v1_UserEvent *row, store_error *err)
{
    int st = LAGOON_OK;
    for (pb_size_t i = 0; i < n && st == LAGOON_OK; i++) {
        uint64_t id = event_id(t, user, seqs[i], NULL, err);
        if (id) /* else trimmed by retention already */
            st = scrub_event(t, a, m, 0, id, row, err);
    }
    return st;
}

/* The notification m's row names counts it no more (its row was never reused: ids are not). */
static int scrub_counted(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, store_error *err)
{
    lagoon_v1_Notification n;
    int st = store_get(t, &lagoon_table_notifications, m->notification_id, &n, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* deleted by its owner meanwhile */
    return scrub_note_row(t, a, &n, m->id, NULL, err);
}

int events_message_deleted(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, store_error *err)
{
    lagoon_v1_UserEvent *row = malloc(sizeof(*row));
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    /* A row that names its notification: that one is adjusted, once; else (a row from before)
     * the log links m to it. */
    int adjust = m->notification_id == 0;
    unsigned notes = 0;
    int st;
    if (m->events_tracked) {
        st = scrub_listed(t, a, m, m->sender_id, m->sender_event_seqs, m->sender_event_seqs_count, row, err);
        if (st == LAGOON_OK)
            st = scrub_listed(t, a, m, m->recipient_id, m->recipient_event_seqs, m->recipient_event_seqs_count, row,
                              err);
    } else {
        st = scrub_log(t, a, m->sender_id, m, adjust, row, &notes, err);
        if (st == LAGOON_OK && m->recipient_id != m->sender_id)
            st = scrub_log(t, a, m->recipient_id, m, adjust, row, &notes, err);
    }
    free(row);
    if (st == LAGOON_OK && !adjust)
        st = scrub_counted(t, a, m, err);
    /* Its notification event is no longer kept (retention): find the notification by its words. */
    else if (st == LAGOON_OK && notes == 0 && m->which_content == lagoon_v1_DirectMessage_text_tag)
        st = scrub_notes_by_words(t, a, m, err);
    return st;
}

/* ---- the router --------------------------------------------------------------------------------- */

typedef struct subscriber {
    struct subscriber *next;   /* chain of the user's bucket */
    struct subscriber *snext;  /* chain of the session's bucket */
    struct subscriber *cnext;  /* chain of the connection's bucket */
    uint64_t id;               /* never reused: the cancel callback names it by id */
    uint64_t user_id;
    uint64_t session_id;       /* the session the stream was opened with (0: none known) */
    int64_t expires_at;        /* ms since the epoch: the expiry of the access token it was opened
                                * with (read when the call started; 0: not known yet) */
    uint64_t conn_key;         /* hash of peer: the connection's bucket */
    char peer[80];             /* "address:port" of the connection, unique while it is open */
    uint64_t since;
    lagoon_v1_TopicPosition *cursor; /* the request's topic positions until the start */
    pb_size_t ncursor;
    uint64_t last_sent;        /* seq of the last event of the user's log delivered */
    int log_behind;            /* catching up from the user's log; its live events pass it by */
    struct tsub *topics;       /* the topics it follows (the user's memberships) */
    int replaying;             /* in the replaying list: its log or a topic is catching up */
    struct subscriber *rnext;  /* list of replaying subscribers */
    uint64_t turn;             /* the router turn turn_events counts in */
    unsigned turn_events;      /* events delivered to it in that turn */
    rpc_call *call;
} subscriber;

enum cmd_kind {
    CMD_EVENT, CMD_ADD, CMD_REMOVE, CMD_TYPING, CMD_SESSION_END, CMD_SHUTDOWN,
    CMD_TOPIC_EVENT, CMD_TOPIC_EPHEMERAL, CMD_JOIN, CMD_LEAVE
};

typedef struct cmd {
    struct cmd *next;
    int kind;
    uint64_t id;               /* EVENT, TOPIC_EVENT: event row id; REMOVE: subscriber id;
                                * SESSION_END: session id; JOIN, LEAVE: membership row id */
    uint64_t to, from, conv;   /* TYPING */
    subscriber *sub;           /* ADD */
    uint32_t tkind;            /* TOPIC_*: the topic */
    uint64_t tid;
    lagoon_v1_Event *ev;       /* TOPIC_EPHEMERAL: the event (owned) */
    uint64_t eph;              /* TOPIC_EPHEMERAL: its stamp, increasing in router order */
} cmd;

/* A subscriber's following of one topic: in the router's chains by topic and by membership row,
 * and in its subscriber's list. Positions per topic make a topic's delivery exact on its own:
 * an event goes to it when its seq is last_sent + 1; lower is a repeat (skipped), higher means
 * one was missed (it replays the topic's log). */
typedef struct tsub {
    struct tsub *tnext;        /* chain of the topic's bucket */
    struct tsub *mnext;        /* chain of the membership's bucket */
    struct tsub *snext;        /* the subscriber's list */
    subscriber *s;
    uint32_t kind;
    uint64_t topic_id;
    uint64_t member_id;        /* the TopicMember row: its deletion (leave) ends this */
    uint64_t last_sent;        /* the topic's seq last delivered (or joined at) */
    uint64_t last_eph;         /* stamp of the last ephemeral event delivered */
    int replaying;             /* catching up from the topic's log; live events pass it by */
} tsub;

/* A lane's queue (head, tail, n): appends c. */
static void q_append(cmd **head, cmd **tail, unsigned *n, cmd *c)
{
    c->next = NULL;
    if (*tail)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
    ++*n;
}

/* Takes the first command of a non-empty lane's queue. */
static cmd *q_pop(cmd **head, cmd **tail, unsigned *n)
{
    cmd *c = *head;
    *head = c->next;
    if (*head == NULL)
        *tail = NULL;
    --*n;
    return c;
}

/* A topic's events waiting for delivery, in order. Every turn a topic gets EVENTS_TOPIC_TURN_SENDS
 * sends; an event to more subscribers than that stays at the head, and the next turn continues
 * it (the positions skip those that have it), so a topic with many members cannot hold up the
 * router for more than that per turn. */
typedef struct tlane {
    struct tlane *next;        /* hash chain, by topic */
    struct tlane *anext;       /* list of topic lanes */
    uint32_t kind;
    uint64_t id;
    cmd *head, *tail;
    unsigned n;                /* at most ROUTER_LANE_MAX */
} tlane;

/* Fair delivery. Every router turn (one batch of commands) delivers at most ROUTER_USER_TURN
 * events to each user's subscriptions; the rest of a busy user's events wait, in order, in the
 * user's lane, which gets ROUTER_USER_TURN more every turn, round robin with the other lanes.
 * So one user's flood costs everyone else at most ROUTER_USER_TURN events' fan-out (each at
 * most EVENTS_MAX_SUBSCRIPTIONS_PER_USER sends) per turn. While a user has a lane, all of its
 * new events join it: its order is kept. */
typedef struct lane {
    struct lane *next;         /* hash chain, by user id */
    struct lane *anext;        /* list of lanes (all have work) */
    uint64_t user_id;
    cmd *head, *tail;          /* EVENT and TYPING commands for the user, in order */
    unsigned n;                /* commands in it, at most ROUTER_LANE_MAX */
} lane;

struct realtime {
    app *a;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cmd *head, *tail;
    int stopping;
    uint64_t next_sub_id;      /* under mu */
    unsigned typing_queued;    /* under mu: TYPING commands in head, at most ROUTER_TYPING_QUEUE_MAX */
    unsigned eph_alloc;        /* under mu: TOPIC_EPHEMERAL commands allocated, at most ROUTER_EPHEMERAL_MAX */
    /* Router thread only from here. */
    subscriber *buckets[ROUTER_BUCKETS];  /* by user id */
    subscriber *sbuckets[ROUTER_BUCKETS]; /* by session id: a session's end finds its streams */
    subscriber *cbuckets[ROUTER_BUCKETS]; /* by connection: the per-connection cap */
    subscriber *replaying;
    lane *lanes[ROUTER_BUCKETS];         /* by user id */
    lane *active;                        /* every lane */
    uint64_t turn;                       /* batches taken so far */
    atomic_uint nsubs;                   /* registered subscribers (atomic: realtime_counts reads it) */
    int64_t next_expiry;                 /* no subscriber's token expires before this (ms); 0 = none */
    int shut;                            /* streams ended for a drain: new ones end at once */
    tsub *tbuckets[ROUTER_BUCKETS];      /* by topic */
    tsub *mbuckets[ROUTER_BUCKETS];      /* by membership row id: a leave finds its followings */
    atomic_uint ntsubs;                  /* followings registered (atomic: realtime_counts reads it) */
    /* The subscribers' backlog at the last sample (sample_backlog; atomic: realtime_backlog
     * reads it): bytes summed over them, and the largest. */
    atomic_size_t backlog_sum, backlog_max;
    int64_t backlog_sampled_ms;          /* when (monotonic ms) */
    tlane *tlanes[ROUTER_BUCKETS];       /* by topic */
    tlane *tactive;                      /* every topic lane */
    uint64_t eph_stamp;                  /* ephemeral topic events stamped so far */
    lagoon_v1_Event *filled;             /* the event being sent, as its service filled it */
};

static unsigned topic_bucket(uint32_t kind, uint64_t id)
{
    return (unsigned)((id * 0x9E3779B97F4A7C15ULL + kind) >> 32) % ROUTER_BUCKETS;
}

/* Appends c to the router's queue; rt->mu is held. */
static void queue_locked(realtime *rt, cmd *c)
{
    c->next = NULL;
    if (rt->tail)
        rt->tail->next = c;
    else
        rt->head = c;
    rt->tail = c;
    pthread_cond_signal(&rt->cv);
}

static void post(realtime *rt, cmd *c)
{
    pthread_mutex_lock(&rt->mu);
    queue_locked(rt, c);
    pthread_mutex_unlock(&rt->mu);
}

static void post_simple(realtime *rt, int kind, uint64_t id)
{
    cmd *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        log_msg(LOG_ERROR, "realtime: out of memory queueing a command");
        return;
    }
    c->kind = kind;
    c->id = id;
    post(rt, c);
}

/* Store subscriber (writer thread): queue the new events, and the ends of sessions (every way a
 * session ends deletes its row; cascades from a deleted user are announced too). Must not
 * block: a brief lock. */
static void on_commit(void *arg, const store_change *ch, size_t n)
{
    realtime *rt = arg;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].table == &lagoon_table_user_events && ch[i].kind == STORE_INSERTED)
            post_simple(rt, CMD_EVENT, ch[i].id);
        else if (ch[i].table == &lagoon_table_sessions && ch[i].kind == STORE_DELETED)
            post_simple(rt, CMD_SESSION_END, ch[i].id);
        else if (ch[i].table == &lagoon_table_topic_events && ch[i].kind == STORE_INSERTED)
            post_simple(rt, CMD_TOPIC_EVENT, ch[i].id);
        else if (ch[i].table == &lagoon_table_topic_members && ch[i].kind == STORE_INSERTED)
            post_simple(rt, CMD_JOIN, ch[i].id);
        else if (ch[i].table == &lagoon_table_topic_members && ch[i].kind == STORE_DELETED)
            post_simple(rt, CMD_LEAVE, ch[i].id);
    }
}

/* FNV-1a: spreads "address:port" over the connection buckets. */
static uint64_t peer_key(const char *peer)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)peer; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static void sub_link(realtime *rt, subscriber *s)
{
    s->next = rt->buckets[s->user_id % ROUTER_BUCKETS];
    rt->buckets[s->user_id % ROUTER_BUCKETS] = s;
    s->snext = rt->sbuckets[s->session_id % ROUTER_BUCKETS];
    rt->sbuckets[s->session_id % ROUTER_BUCKETS] = s;
    s->cnext = rt->cbuckets[s->conn_key % ROUTER_BUCKETS];
    rt->cbuckets[s->conn_key % ROUTER_BUCKETS] = s;
    rt->nsubs++;
    if (s->expires_at && (rt->next_expiry == 0 || s->expires_at < rt->next_expiry))
        rt->next_expiry = s->expires_at;
}

/* Adds a following of topic (kind, id) from pos to s (membership row member_id); NULL when out
 * of memory. */
static tsub *tsub_add(realtime *rt, subscriber *s, uint32_t kind, uint64_t id, uint64_t member_id, uint64_t pos)
{
    tsub *ts = calloc(1, sizeof(*ts));
    if (ts == NULL)
        return NULL;
    ts->s = s;
    ts->kind = kind;
    ts->topic_id = id;
    ts->member_id = member_id;
    ts->last_sent = pos;
    ts->last_eph = rt->eph_stamp; /* ephemeral events from before it do not reach it */
    unsigned b = topic_bucket(kind, id);
    ts->tnext = rt->tbuckets[b];
    rt->tbuckets[b] = ts;
    ts->mnext = rt->mbuckets[member_id % ROUTER_BUCKETS];
    rt->mbuckets[member_id % ROUTER_BUCKETS] = ts;
    ts->snext = s->topics;
    s->topics = ts;
    rt->ntsubs++;
    return ts;
}

/* Takes ts out of the topic's and the membership's chains (not out of its subscriber's list). */
static void tsub_unlink(realtime *rt, tsub *ts)
{
    for (tsub **p = &rt->tbuckets[topic_bucket(ts->kind, ts->topic_id)]; *p; p = &(*p)->tnext) {
        if (*p == ts) {
            *p = ts->tnext;
            break;
        }
    }
    for (tsub **p = &rt->mbuckets[ts->member_id % ROUTER_BUCKETS]; *p; p = &(*p)->mnext) {
        if (*p == ts) {
            *p = ts->mnext;
            break;
        }
    }
    rt->ntsubs--;
}

static void replaying_remove(realtime *rt, subscriber *s)
{
    for (subscriber **p = &rt->replaying; *p; p = &(*p)->rnext) {
        if (*p == s) {
            *p = s->rnext;
            break;
        }
    }
    s->replaying = 0;
}

/* Unlinks s, already out of its user's bucket, from everything else. */
static void sub_unlink_rest(realtime *rt, subscriber *s)
{
    rt->nsubs--;
    for (subscriber **p = &rt->sbuckets[s->session_id % ROUTER_BUCKETS]; *p; p = &(*p)->snext) {
        if (*p == s) {
            *p = s->snext;
            break;
        }
    }
    for (subscriber **p = &rt->cbuckets[s->conn_key % ROUTER_BUCKETS]; *p; p = &(*p)->cnext) {
        if (*p == s) {
            *p = s->cnext;
            break;
        }
    }
    if (s->replaying)
        replaying_remove(rt, s);
    while (s->topics) {
        tsub *ts = s->topics;
        s->topics = ts->snext;
        tsub_unlink(rt, ts);
        free(ts);
    }
}

static void sub_unlink(realtime *rt, subscriber *s)
{
    for (subscriber **p = &rt->buckets[s->user_id % ROUTER_BUCKETS]; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    sub_unlink_rest(rt, s);
}

/* Finishes an unlinked subscriber's call and frees it. */
static void sub_finish(subscriber *s, int status, const char *message)
{
    if (message)
        rpc_call_error(s->call, status, "%s", message);
    rpc_call_finish(s->call, status);
    free(s->cursor);
    free(s);
}

/* Ends a subscription from the router's side. */
static void sub_end(realtime *rt, subscriber *s, int status, const char *message)
{
    sub_unlink(rt, s);
    sub_finish(s, status, message);
}

/* Sends ev to s; ends s if its reader has fallen too far behind. 0 if s lives on. */
static int sub_send(realtime *rt, subscriber *s, const lagoon_v1_Event *ev)
{
    if (rpc_call_send(s->call, ev) != 0) {
        sub_end(rt, s, LAGOON_CANCELLED, NULL);
        return -1;
    }
    if (ev->seq && !ev->has_topic) /* a topic's position is its following's (tsub) */
        s->last_sent = ev->seq;
    if (rpc_call_backlog(s->call) > rt->a->cfg.subscriber_backlog) {
        char msg[160];
        snprintf(msg, sizeof(msg), "subscriber too slow: resubscribe with since=%llu to continue",
                 (unsigned long long)s->last_sent);
        sub_end(rt, s, LAGOON_RESOURCE_EXHAUSTED, msg);
        return -1;
    }
    return 0;
}

/* Switches a live subscriber to replay from its last sent seq: it missed an event (the row was
 * trimmed before delivery read it, or its lane overflowed). The replay reads the log after
 * last_sent and ends the stream with OUT_OF_RANGE when the log no longer has the next event,
 * so a gap is never silent. */
static void replaying_add(realtime *rt, subscriber *s)
{
    if (s->replaying)
        return;
    s->replaying = 1;
    s->rnext = rt->replaying;
    rt->replaying = s;
}

static void sub_to_replay(realtime *rt, subscriber *s)
{
    s->log_behind = 1;
    replaying_add(rt, s);
}

/* The same for one topic of a subscriber: it replays that topic's log from its position. */
static void tsub_to_replay(realtime *rt, tsub *ts)
{
    ts->replaying = 1;
    replaying_add(rt, ts->s);
}

/* Every live subscriber of user catches up from the log. */
static void user_to_replay(realtime *rt, uint64_t user_id)
{
    for (subscriber *s = rt->buckets[user_id % ROUTER_BUCKETS]; s; s = s->next)
        if (s->user_id == user_id)
            sub_to_replay(rt, s);
}

/* ev as it is sent: filled in by its service when the log holds a reference
 * (app_module.fill_event), in rt->filled; NULL if that failed (err). */
static const lagoon_v1_Event *event_out(realtime *rt, store_txn *t, const lagoon_v1_Event *ev, store_error *err)
{
    const lagoon_v1_Event *sent;
    return app_fill_event(rt->a, t, ev, rt->filled, &sent, err) == LAGOON_OK ? sent : NULL;
}

static void route_row(realtime *rt, store_txn *t, const lagoon_v1_UserEvent *row)
{
    const lagoon_v1_Event *ev = NULL; /* filled once, for the first subscriber that needs it */
    int unfilled = 0;
    for (subscriber *s = rt->buckets[row->user_id % ROUTER_BUCKETS], *next; s; s = next) {
        next = s->next;
        if (s->user_id != row->user_id || s->log_behind || row->event.seq <= s->last_sent)
            continue;
        if (row->event.seq == s->last_sent + 1 && ev == NULL && !unfilled) {
            store_error err;
            ev = event_out(rt, t, &row->event, &err);
            unfilled = ev == NULL;
        }
        if (row->event.seq == s->last_sent + 1 && ev != NULL)
            sub_send(rt, s, ev);
        else /* an event before this one never reached it, or this one could not be filled: the
              * replay reads it again, and ends the stream with the reason if it fails again */
            sub_to_replay(rt, s);
    }
}

static void route_event(realtime *rt, store_txn *t, uint64_t id, lagoon_v1_UserEvent *row)
{
    store_error err;
    if (store_get(t, &lagoon_table_user_events, id, row, &err) == LAGOON_OK)
        route_row(rt, t, row);
    /* else trimmed already: the next event (the append that trimmed it) shows the gap to
     * route_row, which switches the subscribers that needed it to replay */
}

typedef struct replay {
    realtime *rt;
    store_txn *t;
    subscriber *s;
    tsub *ts;   /* the topic replayed; NULL: the user's log */
    const event_log *lg;
    int dead;   /* the subscription ended while replaying */
    int paused; /* its reader is behind: continue later */
} replay;

static int replay_one(void *arg, uint64_t id, const void *row)
{
    (void)id;
    replay *r = arg;
    const lagoon_v1_Event *ev = r->lg->event_of(row);
    uint64_t pos = r->ts ? r->ts->last_sent : r->s->last_sent;
    if (ev->seq != pos + 1) {
        /* Retention trimmed the next event before this subscriber got it. */
        char msg[240];
        if (r->ts)
            snprintf(msg, sizeof(msg),
                     "events of topic %u/%llu after %llu are no longer kept (next kept %llu): reload it, then "
                     "subscribe without its position",
                     (unsigned)r->ts->kind, (unsigned long long)r->ts->topic_id, (unsigned long long)pos,
                     (unsigned long long)ev->seq);
        else
            snprintf(msg, sizeof(msg),
                     "events after %llu are no longer kept (next kept %llu): reload, then subscribe without since",
                     (unsigned long long)pos, (unsigned long long)ev->seq);
        sub_end(r->rt, r->s, LAGOON_OUT_OF_RANGE, msg);
        r->dead = 1;
        return LAGOON_CANCELLED;
    }
    store_error err;
    const lagoon_v1_Event *out = event_out(r->rt, r->t, ev, &err);
    if (out == NULL) {
        char msg[sizeof(err.message) + 120];
        snprintf(msg, sizeof(msg), "event %llu could not be read (%s): resubscribe from the last position seen",
                 (unsigned long long)ev->seq, err.message);
        sub_end(r->rt, r->s, LAGOON_UNAVAILABLE, msg);
        r->dead = 1;
        return LAGOON_CANCELLED;
    }
    if (r->ts) /* before the send, which may end (and free) the subscriber */
        r->ts->last_sent = ev->seq;
    if (sub_send(r->rt, r->s, out) != 0) {
        r->dead = 1;
        return LAGOON_CANCELLED;
    }
    if (rpc_call_backlog(r->s->call) > r->rt->a->cfg.subscriber_backlog / 2) {
        r->paused = 1;
        return LAGOON_CANCELLED; /* stop this page here; the position is last_sent */
    }
    return LAGOON_OK;
}

/* One page of one source of s (its log when ts is NULL, else that topic's) after its position:
 * -1 if s ended, 0 if the source caught up (it is live from here: see the seam, at the top),
 * 1 if there is more (or the reader is behind). */
static int replay_source(realtime *rt, store_txn *t, subscriber *s, tsub *ts)
{
    event_log lg;
    if (ts)
        topic_log(&lg, ts->kind, ts->topic_id);
    else
        user_log(&lg, s->user_id);
    store_key start = lg.prefix;
    store_key_u64(&start, (ts ? ts->last_sent : s->last_sent) + 1);
    store_query q = {0};
    q.table = lg.table;
    q.index = lg.index;
    q.prefix = lg.prefix.buf;
    q.prefix_len = lg.prefix.len;
    q.start = start.buf;
    q.start_len = start.len;
    q.page_size = EVENTS_REPLAY_PAGE;
    replay r = {rt, t, s, ts, &lg, 0, 0};
    store_page page;
    store_error err;
    memset(&err, 0, sizeof(err)); /* a callback's CANCELLED leaves it as it is */
    int st = store_scan(t, &q, replay_one, &r, &page, &err);
    if (r.dead)
        return -1;
    if (r.paused || (st != LAGOON_OK && st != LAGOON_CANCELLED) || page.next_page_token[0] != '\0')
        return 1;
    if (ts)
        ts->replaying = 0;
    else
        s->log_behind = 0;
    return 0;
}

/* One replay step for s: sends events of its log and of its replaying topics after their
 * positions while the reader keeps up. s leaves the replaying list when all have caught up. */
static void replay_step(realtime *rt, subscriber *s)
{
    store_txn *t;
    store_error err;
    if (rpc_call_backlog(s->call) > rt->a->cfg.subscriber_backlog / 2)
        return; /* still draining */
    if (store_read_begin(rt->a->db, &t, &err) != LAGOON_OK)
        return; /* try again at the next step */
    int more = 0;
    if (s->log_behind) {
        int r = replay_source(rt, t, s, NULL);
        if (r < 0) {
            store_read_end(t);
            return;
        }
        more |= r;
    }
    for (tsub *ts = s->topics; ts; ts = ts->snext) {
        if (!ts->replaying)
            continue;
        if (rpc_call_backlog(s->call) > rt->a->cfg.subscriber_backlog / 2) {
            more = 1;
            break;
        }
        int r = replay_source(rt, t, s, ts);
        if (r < 0) {
            store_read_end(t);
            return;
        }
        more |= r;
    }
    store_read_end(t);
    if (!more)
        replaying_remove(rt, s);
}

/* Subscribers of user (or of the connection with this peer) already registered: the caps. */
static unsigned user_subs(const realtime *rt, uint64_t user_id)
{
    unsigned n = 0;
    for (const subscriber *s = rt->buckets[user_id % ROUTER_BUCKETS]; s; s = s->next)
        n += s->user_id == user_id;
    return n;
}

static unsigned conn_subs(const realtime *rt, uint64_t key, const char *peer)
{
    unsigned n = 0;
    for (const subscriber *s = rt->cbuckets[key % ROUTER_BUCKETS]; s; s = s->cnext)
        n += s->conn_key == key && strcmp(s->peer, peer) == 0;
    return n;
}

#define SESSION_ENDED_MSG "session ended (signed out, revoked, password changed or reset, account deactivated or deleted)"

/* The session s was opened with, as of t: 0 if it lives and the token s was opened with has not
 * expired, else the status it ends with (message in msg). Checked here as well as by
 * SESSION_END, so that a session that ended between the call's token check and this start
 * cannot leave a stream open: its deletion committed either before this read or after, and
 * then its announcement comes later in the queue. */
static int session_check(realtime *rt, store_txn *t, subscriber *s, char *msg, size_t cap)
{
    if (s->session_id == 0)
        return 0;
    lagoon_v1_Session sess;
    store_error err;
    int st = store_get(t, &lagoon_table_sessions, s->session_id, &sess, &err);
    if (st == LAGOON_NOT_FOUND) {
        snprintf(msg, cap, "%s: sign in again", SESSION_ENDED_MSG);
        return LAGOON_UNAUTHENTICATED;
    }
    if (st != LAGOON_OK) {
        snprintf(msg, cap, "%.150s", err.message);
        return LAGOON_UNAVAILABLE;
    }
    if (s->expires_at == 0) /* the session was not found when the call started */
        s->expires_at = sess.access_expires_at;
    if (s->expires_at <= app_now(rt->a)) {
        snprintf(msg, cap, "access token expired: refresh it, then subscribe again");
        return LAGOON_UNAUTHENTICATED;
    }
    return 0;
}

/* Tells s it follows topic (kind, id) from seq on (joined), or no longer. 0 if s lives on. */
static int send_membership(realtime *rt, subscriber *s, uint32_t kind, uint64_t id, int joined, uint64_t seq)
{
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* an Event can hold a whole message: not on the stack */
    if (ev == NULL) {
        sub_end(rt, s, LAGOON_UNAVAILABLE, "out of memory: resubscribe with your positions");
        return -1;
    }
    ev->which_payload = lagoon_v1_Event_membership_tag;
    ev->payload.membership.joined = joined;
    ev->payload.membership.seq = seq;
    ev->has_topic = true;
    ev->topic.kind = (lagoon_v1_Topic_Kind)kind;
    ev->topic.id = id;
    ev->created_at = app_now(rt->a);
    int r = sub_send(rt, s, ev);
    free(ev);
    return r;
}

typedef struct membership {
    uint64_t id;
    uint32_t kind;
    uint64_t topic_id;
    uint64_t joined_seq;
} membership;

typedef struct memberships {
    membership m[EVENTS_MAX_TOPICS_PER_USER];
    unsigned n;
} memberships;

static int collect_member(void *arg, uint64_t id, const void *row)
{
    memberships *ms = arg;
    const lagoon_v1_TopicMember *m = row;
    if (ms->n >= EVENTS_MAX_TOPICS_PER_USER)
        return LAGOON_CANCELLED;
    ms->m[ms->n++] = (membership){id, (uint32_t)m->topic.kind, m->topic.id, m->joined_seq};
    return LAGOON_OK;
}

/* The position s continues topic m from: with resume, the client's (not before the join), or
 * the join when the client has none; live only, the topic's newest. 0, or the status s ends with
 * (message in msg). */
static int topic_position(const subscriber *s, const membership *m, const lagoon_v1_TopicFeed *f, int resume,
                          uint64_t *pos, char *msg, size_t cap)
{
    *pos = f->last_seq;
    if (!resume)
        return 0;
    *pos = m->joined_seq;
    int given = 0; /* the client sent a position for this topic */
    for (pb_size_t i = 0; i < s->ncursor; i++) {
        const lagoon_v1_TopicPosition *c = &s->cursor[i];
        if ((uint32_t)c->topic.kind == m->kind && c->topic.id == m->topic_id) {
            given = 1;
            if (c->seq > *pos)
                *pos = c->seq;
        }
    }
    /* Without a position of its own the client asked for what is kept: from the join, or from
     * the oldest event kept when retention has passed the join (the membership event that
     * follows `subscribed` says where). Only a position the client holds must be exact. */
    if (!given && *pos < f->last_seq && f->first_seq > *pos + 1)
        *pos = f->first_seq - 1;
    if (*pos > f->last_seq) {
        snprintf(msg, cap, "topic %u/%llu: seq %llu is ahead of its log (at %llu): reload it, then subscribe "
                 "without its position", (unsigned)m->kind, (unsigned long long)m->topic_id,
                 (unsigned long long)*pos, (unsigned long long)f->last_seq);
        return LAGOON_OUT_OF_RANGE;
    }
    if (*pos < f->last_seq && f->first_seq > *pos + 1) {
        snprintf(msg, cap, "events of topic %u/%llu after %llu are no longer kept (oldest %llu): reload it, then "
                 "subscribe without its position", (unsigned)m->kind, (unsigned long long)m->topic_id,
                 (unsigned long long)*pos, (unsigned long long)f->first_seq);
        return LAGOON_OUT_OF_RANGE;
    }
    return 0;
}

/* Registers the followings of s's user's topics as of t, each from its position, those behind
 * to replay. 0, or the status s ends with (message in msg). */
static int topics_start(realtime *rt, store_txn *t, subscriber *s, int resume, char *msg, size_t cap)
{
    memberships *ms = malloc(sizeof(*ms));
    if (ms == NULL) {
        snprintf(msg, cap, "out of memory");
        return LAGOON_UNAVAILABLE;
    }
    ms->n = 0;
    store_error err;
    int st = scan_memberships(t, s->user_id, collect_member, ms, &err);
    if (st != LAGOON_OK && st != LAGOON_CANCELLED) {
        snprintf(msg, cap, "%.150s", err.message);
        free(ms);
        return LAGOON_UNAVAILABLE;
    }
    st = 0;
    for (unsigned i = 0; i < ms->n && st == 0; i++) {
        lagoon_v1_Topic topic = {(lagoon_v1_Topic_Kind)ms->m[i].kind, ms->m[i].topic_id};
        lagoon_v1_TopicFeed f;
        int exists;
        uint64_t pos = 0;
        if (topic_feed_get(t, &topic, &f, &exists, &err) != LAGOON_OK) {
            snprintf(msg, cap, "%.150s", err.message);
            st = LAGOON_UNAVAILABLE;
            break;
        }
        st = topic_position(s, &ms->m[i], &f, resume, &pos, msg, cap);
        if (st != 0)
            break;
        tsub *ts = tsub_add(rt, s, ms->m[i].kind, ms->m[i].topic_id, ms->m[i].id, pos);
        if (ts == NULL) {
            snprintf(msg, cap, "out of memory");
            st = LAGOON_UNAVAILABLE;
        } else if (pos < f.last_seq) {
            tsub_to_replay(rt, ts);
        }
    }
    free(ms);
    return st;
}

/* Registers s, tells it where the log stands, and starts its replay if it has one. */
static void sub_start(realtime *rt, subscriber *s)
{
    store_txn *t;
    store_error err;
    char msg[200];
    if (rt->shut) { /* arrived after the drain began: it would only hold the drain open */
        sub_finish(s, LAGOON_UNAVAILABLE, "server shutting down: reconnect and resubscribe with since");
        return;
    }
    if (user_subs(rt, s->user_id) >= EVENTS_MAX_SUBSCRIPTIONS_PER_USER) {
        snprintf(msg, sizeof(msg), "at most %d open subscriptions per user: cancel one first",
                 EVENTS_MAX_SUBSCRIPTIONS_PER_USER);
        sub_finish(s, LAGOON_RESOURCE_EXHAUSTED, msg);
        return;
    }
    if (conn_subs(rt, s->conn_key, s->peer) >= EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION) {
        snprintf(msg, sizeof(msg), "at most %d open subscriptions per connection: cancel one first",
                 EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION);
        sub_finish(s, LAGOON_RESOURCE_EXHAUSTED, msg);
        return;
    }
    if (store_read_begin(rt->a->db, &t, &err) != LAGOON_OK) {
        sub_finish(s, LAGOON_UNAVAILABLE, err.message);
        return;
    }
    int st = session_check(rt, t, s, msg, sizeof(msg));
    if (st != 0) {
        store_read_end(t);
        sub_finish(s, st, msg);
        return;
    }
    sub_link(rt, s);
    lagoon_v1_UserFeed f;
    int exists;
    feed_get(t, s->user_id, &f, &exists, &err);
    /* The user's topics as of the same read: a join or leave committed after it is announced
     * later in the queue (CMD_JOIN, CMD_LEAVE). */
    int resume = s->since != 0 || s->ncursor > 0;
    st = topics_start(rt, t, s, resume, msg, sizeof(msg));
    store_read_end(t);
    free(s->cursor);
    s->cursor = NULL;
    if (st != 0) {
        sub_end(rt, s, st, msg);
        return;
    }
    /* since 0 (with topic positions) replays what the user's log keeps, from its start. */
    if (s->since > f.last_seq || (s->since != 0 && f.first_seq > s->since + 1)) {
        snprintf(msg, sizeof(msg),
                 s->since > f.last_seq ? "since=%llu is ahead of the log (at %llu): reload, then subscribe without since"
                                       : "events after %llu are no longer kept (oldest %llu): reload, then subscribe "
                                         "without since",
                 (unsigned long long)s->since, (unsigned long long)(s->since > f.last_seq ? f.last_seq : f.first_seq));
        sub_end(rt, s, LAGOON_OUT_OF_RANGE, msg);
        return;
    }
    lagoon_v1_Event hello = lagoon_v1_Event_init_zero;
    hello.which_payload = lagoon_v1_Event_subscribed_tag;
    hello.payload.subscribed.current_seq = f.last_seq;
    hello.created_at = app_now(rt->a);
    s->last_sent = resume ? s->since : f.last_seq;
    if (resume && s->since == 0 && f.first_seq > 1)
        s->last_sent = f.first_seq - 1; /* since 0: from the oldest the log keeps */
    if (sub_send(rt, s, &hello) != 0)
        return;
    /* Where each topic continues from: the client keeps these as its positions. */
    for (tsub *ts = s->topics; ts; ts = ts->snext)
        if (send_membership(rt, s, ts->kind, ts->topic_id, 1, ts->last_sent) != 0)
            return;
    if (resume && s->since < f.last_seq)
        sub_to_replay(rt, s);
    if (s->replaying)
        replay_step(rt, s);
}

/* Unlinks and returns the subscriber with this id, or NULL (already ended). */
static subscriber *sub_take(realtime *rt, uint64_t id)
{
    for (int b = 0; b < ROUTER_BUCKETS; b++) {
        for (subscriber **p = &rt->buckets[b]; *p; p = &(*p)->next) {
            subscriber *s = *p;
            if (s->id == id) {
                *p = s->next;
                sub_unlink_rest(rt, s);
                return s;
            }
        }
    }
    return NULL;
}

/* A session ended: so do the streams opened with it. */
static void session_end(realtime *rt, uint64_t session_id)
{
    for (subscriber *s = rt->sbuckets[session_id % ROUTER_BUCKETS], *next; s; s = next) {
        next = s->snext;
        if (s->session_id != session_id)
            continue;
        char msg[240];
        snprintf(msg, sizeof(msg), "%s: sign in again, then resubscribe with since=%llu", SESSION_ENDED_MSG,
                 (unsigned long long)s->last_sent);
        sub_end(rt, s, LAGOON_UNAUTHENTICATED, msg);
    }
}

/* Ends the streams whose access token has expired by now. A full pass only when the earliest
 * expiry is due, which also recomputes it. */
static void expire_due(realtime *rt)
{
    if (rt->nsubs == 0 || rt->next_expiry == 0)
        return;
    int64_t now = app_now(rt->a);
    if (now < rt->next_expiry)
        return;
    int64_t next = 0;
    for (int b = 0; b < ROUTER_BUCKETS; b++) {
        for (subscriber *s = rt->buckets[b], *n; s; s = n) {
            n = s->next;
            if (s->expires_at && s->expires_at <= now) {
                char msg[160];
                snprintf(msg, sizeof(msg), "access token expired: refresh it, then resubscribe with since=%llu",
                         (unsigned long long)s->last_sent);
                sub_end(rt, s, LAGOON_UNAUTHENTICATED, msg);
            } else if (s->expires_at && (next == 0 || s->expires_at < next)) {
                next = s->expires_at;
            }
        }
    }
    rt->next_expiry = next;
}

/* The subscribers' backlog for /metrics, at most every ROUTER_TICK_MS: a walk of them all, a
 * relaxed load pair each (rpc_call_backlog), so its cost does not depend on the event rate.
 * (Streams sharing a connection each count its queued output.) */
static void sample_backlog(realtime *rt)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (rt->backlog_sampled_ms != 0 && now - rt->backlog_sampled_ms < ROUTER_TICK_MS)
        return;
    rt->backlog_sampled_ms = now;
    size_t sum = 0, max = 0;
    for (int b = 0; rt->nsubs > 0 && b < ROUTER_BUCKETS; b++) {
        for (const subscriber *s = rt->buckets[b]; s; s = s->next) {
            size_t n = rpc_call_backlog(s->call);
            sum += n;
            max = n > max ? n : max;
        }
    }
    atomic_store_explicit(&rt->backlog_sum, sum, memory_order_relaxed);
    atomic_store_explicit(&rt->backlog_max, max, memory_order_relaxed);
}

static void route_typing(realtime *rt, const cmd *c)
{
    lagoon_v1_Event ev = lagoon_v1_Event_init_zero;
    ev.which_payload = lagoon_v1_Event_typing_tag;
    ev.payload.typing.user_id = c->from;
    ev.payload.typing.conversation_id = c->conv;
    ev.payload.typing.expires_in_ms = EVENTS_TYPING_MS;
    ev.created_at = app_now(rt->a);
    for (subscriber *s = rt->buckets[c->to % ROUTER_BUCKETS], *next; s; s = next) {
        next = s->next;
        if (s->user_id == c->to)
            sub_send(rt, s, &ev);
    }
}

/* The user's budget in this turn: -1 if nobody listens, 0 if it is spent, else 1. */
static int user_budget(const realtime *rt, uint64_t user_id)
{
    int listening = 0;
    for (const subscriber *s = rt->buckets[user_id % ROUTER_BUCKETS]; s; s = s->next) {
        if (s->user_id != user_id)
            continue;
        listening = 1;
        if (s->turn == rt->turn && s->turn_events >= ROUTER_USER_TURN)
            return 0;
    }
    return listening ? 1 : -1;
}

static void user_charge(realtime *rt, uint64_t user_id)
{
    for (subscriber *s = rt->buckets[user_id % ROUTER_BUCKETS]; s; s = s->next) {
        if (s->user_id != user_id)
            continue;
        if (s->turn != rt->turn) {
            s->turn = rt->turn;
            s->turn_events = 0;
        }
        s->turn_events++;
    }
}

static lane *lane_find(const realtime *rt, uint64_t user_id)
{
    lane *l = rt->lanes[user_id % ROUTER_BUCKETS];
    while (l != NULL && l->user_id != user_id)
        l = l->next;
    return l;
}

/* Queues c behind the user's earlier events; 0, or -1 when c is not queued (the caller frees
 * it). A full lane (or no memory) takes no more: typing is dropped, and for an event the user's
 * live subscriptions switch to replay, which reads it from the log, so memory per user stays
 * bounded and no event is lost unseen. */
static int lane_push(realtime *rt, uint64_t user_id, cmd *c)
{
    lane *l = lane_find(rt, user_id);
    if (l != NULL && l->n >= ROUTER_LANE_MAX) {
        if (c->kind == CMD_EVENT)
            user_to_replay(rt, user_id);
        return -1;
    }
    if (l == NULL) {
        l = calloc(1, sizeof(*l));
        if (l == NULL) {
            log_msg(LOG_ERROR, "realtime: out of memory queueing events of user %llu", (unsigned long long)user_id);
            if (c->kind == CMD_EVENT)
                user_to_replay(rt, user_id);
            return -1;
        }
        l->user_id = user_id;
        l->next = rt->lanes[user_id % ROUTER_BUCKETS];
        rt->lanes[user_id % ROUTER_BUCKETS] = l;
        l->anext = rt->active;
        rt->active = l;
    }
    q_append(&l->head, &l->tail, &l->n, c);
    return 0;
}

static void lane_free(realtime *rt, lane *l)
{
    for (lane **p = &rt->lanes[l->user_id % ROUTER_BUCKETS]; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            break;
        }
    }
    while (l->head) {
        cmd *c = l->head;
        l->head = c->next;
        free(c);
    }
    free(l);
}

/* One turn of every lane: what is left of each user's ROUTER_USER_TURN in this turn (the batch
 * may have spent some), so a user gets at most ROUTER_USER_TURN per turn in all; empty lanes go. */
static void lanes_turn(realtime *rt, lagoon_v1_UserEvent *row)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(rt->a->db, &t, &err) != LAGOON_OK)
        return; /* again at the next turn */
    for (lane **p = &rt->active; *p;) {
        lane *l = *p;
        for (int k = 0; k < ROUTER_USER_TURN && l->head && user_budget(rt, l->user_id) != 0; k++) {
            user_charge(rt, l->user_id);
            cmd *c = q_pop(&l->head, &l->tail, &l->n);
            if (c->kind == CMD_EVENT)
                route_event(rt, t, c->id, row);
            else
                route_typing(rt, c);
            free(c);
        }
        if (l->head == NULL) {
            *p = l->anext;
            lane_free(rt, l);
        } else {
            p = &l->anext;
        }
    }
    store_read_end(t);
}

/* An event or typing command for user_id in the batch: delivered now within the user's
 * budget, else queued in its lane. 1 if c was kept (queued), 0 if the caller frees it. */
static int deliver_or_queue(realtime *rt, store_txn *t, uint64_t user_id, cmd *c, const lagoon_v1_UserEvent *row)
{
    int budget = user_budget(rt, user_id);
    if (budget < 0)
        return 0; /* nobody listens (a later subscriber replays it or does not want it) */
    if (budget > 0 && lane_find(rt, user_id) == NULL) {
        user_charge(rt, user_id);
        if (row != NULL)
            route_row(rt, t, row);
        else
            route_typing(rt, c);
        return 0;
    }
    return lane_push(rt, user_id, c) == 0;
}

/* ---- topics in the router ---- */

static void cmd_free(realtime *rt, cmd *c)
{
    if (c->kind == CMD_TOPIC_EPHEMERAL) {
        pthread_mutex_lock(&rt->mu);
        rt->eph_alloc--;
        pthread_mutex_unlock(&rt->mu);
        free(c->ev);
    }
    free(c);
}

static int topic_followed(const realtime *rt, uint32_t kind, uint64_t id)
{
    for (const tsub *ts = rt->tbuckets[topic_bucket(kind, id)]; ts; ts = ts->tnext)
        if (ts->kind == kind && ts->topic_id == id)
            return 1;
    return 0;
}

/* Every live following of the topic catches up from its log (it missed an event). */
static void topic_to_replay(realtime *rt, uint32_t kind, uint64_t id)
{
    for (tsub *ts = rt->tbuckets[topic_bucket(kind, id)]; ts; ts = ts->tnext)
        if (ts->kind == kind && ts->topic_id == id && !ts->replaying)
            tsub_to_replay(rt, ts);
}

/* Queues c (a TOPIC_EVENT or TOPIC_EPHEMERAL with its topic set) in its topic's lane; 0, or -1
 * when it is not queued (the caller frees it): a full lane drops an ephemeral event, and for a
 * stored one switches the topic's live followings to replay, which reads it from the log. */
static int tlane_push(realtime *rt, cmd *c)
{
    unsigned b = topic_bucket(c->tkind, c->tid);
    tlane *l = rt->tlanes[b];
    while (l != NULL && (l->kind != c->tkind || l->id != c->tid))
        l = l->next;
    if (l == NULL) {
        l = calloc(1, sizeof(*l));
        if (l == NULL)
            log_msg(LOG_ERROR, "realtime: out of memory queueing events of a topic");
        else {
            l->kind = c->tkind;
            l->id = c->tid;
            l->next = rt->tlanes[b];
            rt->tlanes[b] = l;
            l->anext = rt->tactive;
            rt->tactive = l;
        }
    }
    if (l == NULL || l->n >= ROUTER_LANE_MAX) {
        if (c->kind == CMD_TOPIC_EVENT)
            topic_to_replay(rt, c->tkind, c->tid);
        return -1;
    }
    q_append(&l->head, &l->tail, &l->n, c);
    return 0;
}

static void tlane_free(realtime *rt, tlane *l)
{
    for (tlane **p = &rt->tlanes[topic_bucket(l->kind, l->id)]; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            break;
        }
    }
    while (l->head) {
        cmd *c = l->head;
        l->head = c->next;
        cmd_free(rt, c);
    }
    free(l);
}

/* Sends the head command c of topic lane l (ev: its event) to the topic's followings that lack
 * it, while *sends is under EVENTS_TOPIC_TURN_SENDS: 1 when all have it, 0 when the budget ran
 * out first (the next turn continues: positions and stamps skip those that have it). */
static int topic_fan(realtime *rt, const tlane *l, const cmd *c, const lagoon_v1_Event *ev, unsigned *sends)
{
    tsub *ts = rt->tbuckets[topic_bucket(l->kind, l->id)];
    while (ts != NULL) {
        tsub *next = ts->tnext;
        if (ts->kind != l->kind || ts->topic_id != l->id) {
            ts = next;
            continue;
        }
        if (c->kind == CMD_TOPIC_EVENT) {
            if (ts->replaying || ev->seq <= ts->last_sent) {
                ts = next;
                continue;
            }
            if (ev->seq != ts->last_sent + 1) {
                tsub_to_replay(rt, ts); /* an event before this one never reached it */
                ts = next;
                continue;
            }
            if (*sends >= EVENTS_TOPIC_TURN_SENDS)
                return 0;
            ts->last_sent = ev->seq;
        } else {
            if (ts->last_eph >= c->eph) {
                ts = next;
                continue;
            }
            if (*sends >= EVENTS_TOPIC_TURN_SENDS)
                return 0;
            ts->last_eph = c->eph;
        }
        (*sends)++;
        if (sub_send(rt, ts->s, ev) != 0) {
            /* It ended and its followings left the chains, next perhaps among them: start the
             * chain again (those served are skipped). Bounded: each restart ends a subscriber. */
            ts = rt->tbuckets[topic_bucket(l->kind, l->id)];
            continue;
        }
        ts = next;
    }
    return 1;
}

/* One turn of every topic lane, EVENTS_TOPIC_TURN_SENDS sends each; empty lanes go. */
static void topic_lanes_turn(realtime *rt, lagoon_v1_TopicEvent *row)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(rt->a->db, &t, &err) != LAGOON_OK)
        return; /* again at the next turn */
    for (tlane **p = &rt->tactive; *p;) {
        tlane *l = *p;
        unsigned sends = 0;
        while (l->head) {
            cmd *c = l->head;
            const lagoon_v1_Event *ev = c->ev;
            if (c->kind == CMD_TOPIC_EVENT) {
                /* A row trimmed already: the next event shows the gap to those that needed it.
                 * One its service could not fill: its followings read it again by replay. */
                ev = store_get(t, &lagoon_table_topic_events, c->id, row, &err) == LAGOON_OK ? &row->event : NULL;
                if (ev != NULL && (ev = event_out(rt, t, ev, &err)) == NULL)
                    topic_to_replay(rt, l->kind, l->id);
            }
            if (ev != NULL && !topic_fan(rt, l, c, ev, &sends))
                break;
            cmd_free(rt, q_pop(&l->head, &l->tail, &l->n));
        }
        if (l->head == NULL) {
            *p = l->anext;
            tlane_free(rt, l);
        } else {
            p = &l->anext;
        }
    }
    store_read_end(t);
}

/* Membership row id was inserted: the user's open streams follow its topic from its join. A
 * stream started after the commit has it already (same row id). */
static void topic_join(realtime *rt, uint64_t id)
{
    store_txn *t;
    store_error err;
    lagoon_v1_TopicMember m;
    if (store_read_begin(rt->a->db, &t, &err) != LAGOON_OK) {
        log_msg(LOG_ERROR, "realtime: cannot read a topic membership: %s", err.message);
        return;
    }
    int st = store_get(t, &lagoon_table_topic_members, id, &m, &err);
    store_read_end(t);
    if (st != LAGOON_OK)
        return; /* left again already: its deletion comes next in the queue */
    for (subscriber *s = rt->buckets[m.user_id % ROUTER_BUCKETS], *next; s; s = next) {
        next = s->next;
        if (s->user_id != m.user_id)
            continue;
        int has = 0;
        for (const tsub *ts = s->topics; ts && !has; ts = ts->snext)
            has = ts->member_id == id;
        if (has)
            continue;
        if (tsub_add(rt, s, (uint32_t)m.topic.kind, m.topic.id, id, m.joined_seq) == NULL) {
            sub_end(rt, s, LAGOON_UNAVAILABLE, "out of memory: resubscribe with your positions");
            continue;
        }
        send_membership(rt, s, (uint32_t)m.topic.kind, m.topic.id, 1, m.joined_seq);
    }
}

/* Membership row id was deleted: its followings end, each told so. */
static void topic_leave(realtime *rt, uint64_t id)
{
    tsub *ts = rt->mbuckets[id % ROUTER_BUCKETS];
    while (ts != NULL) {
        if (ts->member_id != id) {
            ts = ts->mnext;
            continue;
        }
        subscriber *s = ts->s;
        uint32_t kind = ts->kind;
        uint64_t topic = ts->topic_id, pos = ts->last_sent;
        tsub_unlink(rt, ts);
        for (tsub **p = &s->topics; *p; p = &(*p)->snext) {
            if (*p == ts) {
                *p = ts->snext;
                break;
            }
        }
        free(ts);
        send_membership(rt, s, kind, topic, 0, pos);
        ts = rt->mbuckets[id % ROUTER_BUCKETS]; /* the chain changed */
    }
}

static void end_all(realtime *rt, int status, const char *message)
{
    for (int b = 0; b < ROUTER_BUCKETS; b++) {
        subscriber *s;
        while ((s = rt->buckets[b]) != NULL) {
            rt->buckets[b] = s->next;
            sub_unlink_rest(rt, s);
            sub_finish(s, status, message);
        }
    }
}

static void *router_main(void *arg)
{
    realtime *rt = arg;
    lagoon_v1_UserEvent *row = malloc(sizeof(*row));
    lagoon_v1_TopicEvent *trow = malloc(sizeof(*trow));
    for (;;) {
        /* Paused replays continue as their readers drain: look again every few ms. */
        for (subscriber *s = rt->replaying, *next; s; s = next) {
            next = s->rnext;
            replay_step(rt, s);
        }
        expire_due(rt);
        sample_backlog(rt);
        app_hook_point(rt->a, APP_HOOK_ROUTER_TURN);
        pthread_mutex_lock(&rt->mu);
        int lanes = rt->active != NULL || rt->tactive != NULL;
        if (rt->head == NULL && !rt->stopping && !lanes && (rt->replaying != NULL || rt->nsubs > 0)) {
            /* Wake up for the replays, or to look at the tokens' expiry. */
            long wait_ms = rt->replaying != NULL ? ROUTER_REPLAY_POLL_MS : ROUTER_TICK_MS;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (wait_ms % 1000) * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&rt->cv, &rt->mu, &ts);
        }
        while (rt->head == NULL && !rt->stopping && !lanes && rt->replaying == NULL && rt->nsubs == 0)
            pthread_cond_wait(&rt->cv, &rt->mu);
        cmd *batch = rt->head;
        rt->head = rt->tail = NULL;
        rt->typing_queued = 0; /* they are in the batch now, bounded by the lanes' cap from here */
        int stop = rt->stopping && batch == NULL;
        rt->turn++;
        pthread_mutex_unlock(&rt->mu);
        if (stop)
            break;
        store_txn *t = NULL;
        store_error err;
        while (batch) {
            cmd *c = batch;
            batch = c->next;
            int kept = 0;
            switch (c->kind) {
            case CMD_EVENT:
                /* Nobody is listening: nothing to read. (A subscriber that arrives later gets
                 * these from the log by replay, or does not want them: see the seam.) */
                if (rt->nsubs == 0)
                    break;
                /* One read transaction for a run of events. */
                if (t == NULL && store_read_begin(rt->a->db, &t, &err) != LAGOON_OK)
                    t = NULL;
                if (t != NULL && row != NULL && store_get(t, &lagoon_table_user_events, c->id, row, &err) == LAGOON_OK)
                    kept = deliver_or_queue(rt, t, row->user_id, c, row);
                break;
            case CMD_ADD:
                if (t != NULL) { /* the start must see every commit announced before it */
                    store_read_end(t);
                    t = NULL;
                }
                sub_start(rt, c->sub);
                break;
            case CMD_REMOVE: {
                subscriber *s = sub_take(rt, c->id);
                if (s != NULL)
                    sub_finish(s, LAGOON_CANCELLED, NULL);
                break;
            }
            case CMD_TYPING:
                kept = deliver_or_queue(rt, NULL, c->to, c, NULL);
                break;
            case CMD_TOPIC_EVENT:
                /* Into its topic's lane, delivered at the end of this turn within its budget. */
                if (rt->ntsubs == 0)
                    break;
                if (t == NULL && store_read_begin(rt->a->db, &t, &err) != LAGOON_OK)
                    t = NULL;
                if (t != NULL && trow != NULL &&
                    store_get(t, &lagoon_table_topic_events, c->id, trow, &err) == LAGOON_OK) {
                    c->tkind = (uint32_t)trow->topic.kind;
                    c->tid = trow->topic.id;
                    kept = topic_followed(rt, c->tkind, c->tid) && tlane_push(rt, c) == 0;
                }
                break;
            case CMD_TOPIC_EPHEMERAL:
                c->eph = ++rt->eph_stamp;
                kept = topic_followed(rt, c->tkind, c->tid) && tlane_push(rt, c) == 0;
                break;
            case CMD_JOIN:
                topic_join(rt, c->id);
                break;
            case CMD_LEAVE:
                topic_leave(rt, c->id);
                break;
            case CMD_SESSION_END:
                session_end(rt, c->id);
                break;
            case CMD_SHUTDOWN:
                rt->shut = 1;
                end_all(rt, LAGOON_UNAVAILABLE, "server shutting down: reconnect and resubscribe with since");
                break;
            }
            if (c->kind != CMD_EVENT && c->kind != CMD_TOPIC_EVENT && t != NULL) {
                store_read_end(t);
                t = NULL;
            }
            if (!kept)
                cmd_free(rt, c);
        }
        if (t != NULL)
            store_read_end(t);
        if (rt->active != NULL && row != NULL)
            lanes_turn(rt, row);
        if (rt->tactive != NULL && trow != NULL)
            topic_lanes_turn(rt, trow);
    }
    end_all(rt, LAGOON_UNAVAILABLE, "server shutting down: reconnect and resubscribe with since");
    while (rt->active != NULL) {
        lane *l = rt->active;
        rt->active = l->anext;
        lane_free(rt, l);
    }
    while (rt->tactive != NULL) {
        tlane *l = rt->tactive;
        rt->tactive = l->anext;
        tlane_free(rt, l);
    }
    free(row);
    free(trow);
    return NULL;
}

int realtime_start(app *a, realtime **out, rpc_error *err)
{
    *out = NULL;
    realtime *rt = calloc(1, sizeof(*rt));
    lagoon_v1_Event *filled = malloc(sizeof(*filled));
    if (rt == NULL || filled == NULL) {
        free(rt);
        free(filled);
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    rt->a = a;
    rt->filled = filled;
    pthread_mutex_init(&rt->mu, NULL);
    pthread_cond_init(&rt->cv, NULL);
    if (app_start_commit_worker(a, on_commit, rt, router_main, &rt->thread, "realtime router", err) != RPC_OK) {
        free(rt->filled);
        free(rt);
        return RPC_ERR;
    }
    *out = rt;
    return RPC_OK;
}

void realtime_shutdown_streams(realtime *rt)
{
    if (rt != NULL)
        post_simple(rt, CMD_SHUTDOWN, 0);
}

void realtime_stop(realtime *rt)
{
    if (rt == NULL)
        return;
    store_unsubscribe(rt->a->db, on_commit, rt);
    pthread_mutex_lock(&rt->mu);
    rt->stopping = 1;
    pthread_cond_signal(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
    pthread_join(rt->thread, NULL);
    while (rt->head) { /* commands that came after the last pass */
        cmd *c = rt->head;
        rt->head = c->next;
        if (c->kind == CMD_ADD) {
            rpc_call_finish(c->sub->call, LAGOON_UNAVAILABLE);
            free(c->sub->cursor);
            free(c->sub);
        }
        cmd_free(rt, c);
    }
    pthread_cond_destroy(&rt->cv);
    pthread_mutex_destroy(&rt->mu);
    free(rt->filled);
    free(rt);
}

/* ---- Events service ------------------------------------------------------------------------------ */

static void subscribe_cancelled(rpc_call *call, void *arg)
{
    (void)call;
    /* The id, not the subscriber: the router may have ended and freed it meanwhile. */
    post_simple(app_of(call)->rt, CMD_REMOVE, (uint64_t)(uintptr_t)arg);
}

int handle_Events_Subscribe(rpc_call *call, const lagoon_v1_SubscribeRequest *req)
{
    realtime *rt = app_of(call)->rt;
    subscriber *s = calloc(1, sizeof(*s));
    cmd *c = calloc(1, sizeof(*c));
    if (s == NULL || c == NULL) {
        free(s);
        free(c);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    pthread_mutex_lock(&rt->mu);
    s->id = ++rt->next_sub_id;
    pthread_mutex_unlock(&rt->mu);
    s->user_id = rpc_call_caller(call)->user_id;
    s->session_id = rpc_call_caller(call)->session_id;
    /* The expiry of the token this call was made with: its session's right after the token was
     * checked, on this thread. Read here, not when the router starts the stream, so that a
     * Refresh committed meanwhile (a new token, a later expiry) does not extend it. */
    store_txn *t;
    store_error err;
    lagoon_v1_Session sess;
    if (s->session_id && store_read_begin(app_of(call)->db, &t, &err) == LAGOON_OK) {
        if (store_get(t, &lagoon_table_sessions, s->session_id, &sess, &err) == LAGOON_OK)
            s->expires_at = sess.access_expires_at;
        store_read_end(t);
    }
    snprintf(s->peer, sizeof(s->peer), "%s", rpc_call_peer(call));
    s->conn_key = peer_key(s->peer);
    s->since = req->since;
    /* The cursor's count is bounded by its max_count, EVENTS_MAX_TOPICS_PER_USER (decoding
     * refuses more). */
    _Static_assert(sizeof(req->topics) / sizeof(req->topics[0]) == EVENTS_MAX_TOPICS_PER_USER,
                   "SubscribeRequest.topics max_count is EVENTS_MAX_TOPICS_PER_USER");
    if (req->topics_count > 0) {
        s->cursor = malloc(req->topics_count * sizeof(*s->cursor));
        if (s->cursor == NULL) {
            free(s);
            free(c);
            return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
        }
        memcpy(s->cursor, req->topics, req->topics_count * sizeof(*s->cursor));
        s->ncursor = req->topics_count;
    }
    s->call = call;
    rpc_call_on_cancel(call, subscribe_cancelled, (void *)(uintptr_t)s->id);
    c->kind = CMD_ADD;
    c->sub = s;
    post(rt, c);
    return RPC_PENDING;
}

int handle_Events_Typing(rpc_call *call, const lagoon_v1_TypingRequest *req, lagoon_v1_EventsEmpty *resp)
{
    (void)resp;
    uint64_t me = rpc_call_caller(call)->user_id;
    if (req->other_user_id == 0 || req->other_user_id == me)
        return rpc_call_violation(call, "other_user_id", "must be another user");
    /* Only to a conversation partner: the two must have a conversation. */
    store_txn *t;
    store_error err;
    app *a = app_of(call);
    int st = store_read_begin(a->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, me < req->other_user_id ? me : req->other_user_id);
    store_key_u64(&k, me < req->other_user_id ? req->other_user_id : me);
    lagoon_v1_Conversation conv;
    st = store_get_by(t, &lagoon_table_conversations, lagoon_index_conversations_by_pair, &k, NULL, &conv, &err);
    store_read_end(t);
    if (st == LAGOON_NOT_FOUND)
        return rpc_call_error(call, LAGOON_NOT_FOUND, "no conversation with this user");
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    c->kind = CMD_TYPING;
    c->to = req->other_user_id;
    c->from = me;
    c->conv = conv.id;
    /* Typing is not logged and not rate-limited: past ROUTER_TYPING_QUEUE_MAX waiting for the
     * router it is dropped (the sender's next Typing shows it again), so it cannot grow the
     * router's queue without bound. */
    realtime *rt = a->rt;
    pthread_mutex_lock(&rt->mu);
    int queued = rt->typing_queued < ROUTER_TYPING_QUEUE_MAX;
    if (queued) {
        rt->typing_queued++;
        queue_locked(rt, c);
    }
    pthread_mutex_unlock(&rt->mu);
    if (!queued)
        free(c);
    return LAGOON_OK;
}

int events_topic_ephemeral(app *a, const lagoon_v1_Topic *topic, const lagoon_v1_Event *ev)
{
    realtime *rt = a->rt;
    cmd *c = calloc(1, sizeof(*c));
    lagoon_v1_Event *copy = malloc(sizeof(*copy));
    if (c == NULL || copy == NULL) {
        free(c);
        free(copy);
        return -1;
    }
    *copy = *ev;
    copy->seq = 0;
    copy->created_at = app_now(a);
    copy->has_topic = true;
    copy->topic = *topic;
    c->kind = CMD_TOPIC_EPHEMERAL;
    c->tkind = (uint32_t)topic->kind;
    c->tid = topic->id;
    c->ev = copy;
    /* Ephemeral: past ROUTER_EPHEMERAL_MAX allocated it is dropped (the next ping shows the
     * state again), so that a flood costs bounded memory. */
    pthread_mutex_lock(&rt->mu);
    int queued = rt->eph_alloc < ROUTER_EPHEMERAL_MAX;
    if (queued) {
        rt->eph_alloc++;
        queue_locked(rt, c);
    }
    pthread_mutex_unlock(&rt->mu);
    if (!queued) {
        free(copy);
        free(c);
    }
    return 0;
}

void realtime_counts(realtime *rt, unsigned *subscribers, unsigned *followings)
{
    *subscribers = atomic_load_explicit(&rt->nsubs, memory_order_relaxed);
    *followings = atomic_load_explicit(&rt->ntsubs, memory_order_relaxed);
}

void realtime_backlog(realtime *rt, size_t *sum, size_t *max)
{
    /* The last sample outlives the last subscriber (the idle router takes none): none, none queued. */
    int any = atomic_load_explicit(&rt->nsubs, memory_order_relaxed) > 0;
    *sum = any ? atomic_load_explicit(&rt->backlog_sum, memory_order_relaxed) : 0;
    *max = any ? atomic_load_explicit(&rt->backlog_max, memory_order_relaxed) : 0;
}
