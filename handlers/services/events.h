/* events: every user's event log, live delivery to subscriptions, and notifications.
 *
 * Features write events (and notifications) with the functions below inside the write
 * transaction of the change that causes them, so an event exists if and only if its change
 * committed. Delivery is driven by the store's commit announcements: a router thread reads the
 * new events and sends them to the user's live subscriptions (Events/Subscribe). A subscription
 * that starts with `since` first replays the log after it, then continues live, with no gap and
 * no duplicate at the seam (see events.c). */
#ifndef LAGOON_EVENTS_H
#define LAGOON_EVENTS_H

#include "app.h"
#include "lagoon_idl.h"
/* The tables (user_events, user_feeds, notifications) are declared in idl/lagoon/v1/events.proto:
 * lagoon_table_notifications, lagoon_index_notifications_unread, ... */
#include "lagoon_tables.h"

/* Subscription limits. Each open subscription costs the router one send per event of its user,
 * so without a cap one user with thousands of them turns every event into thousands of sends
 * on the one router thread and delays everyone else's events. A client needs one per signed-in
 * device (a second one briefly while it resubscribes), and one per connection: the caps leave
 * room for a few devices and tabs, and bound one event's fan-out to
 * EVENTS_MAX_SUBSCRIPTIONS_PER_USER sends. Beyond either, Subscribe ends at once with
 * RESOURCE_EXHAUSTED. */
#define EVENTS_MAX_SUBSCRIPTIONS_PER_USER 32
#define EVENTS_MAX_SUBSCRIPTIONS_PER_CONNECTION 8

/* Fair delivery (see events.c): each router turn takes at most EVENTS_USER_TURN events (and
 * typing indicators) of one user; the rest wait in the user's lane, in order. A lane holds at
 * most EVENTS_LANE_MAX of them (about 64 bytes each), so one user's flood costs bounded memory:
 * past it a typing indicator is dropped, and an event is not queued: the user's live
 * subscriptions switch to replay and read it from the log (ending with OUT_OF_RANGE if the log
 * no longer has it). */
#define EVENTS_USER_TURN 64
#define EVENTS_LANE_MAX 1024

/* Appends ev to user's log in t: assigns its seq and created_at, trims the log to the
 * retention limits. ev->payload must be set. ev is copied into the stored row (17 KiB: an
 * Event can hold a whole message); events_append_row builds it there instead. */
int events_append(store_txn *t, const app *a, uint64_t user_id, lagoon_v1_Event *ev, store_error *err);

/* events_append without the copy. events_row_init sets row (the caller's memory) to an event
 * of user_id's log whose payload is `which` (payload_info's type), every field at its default:
 * all but the payload union zeroed, the chosen member by wire_init, so that none of the other
 * members' buffers is cleared. The caller fills row->event.payload; events_append_row appends
 * it to row->user_id's log, assigning row->event.seq, .created_at and row->id; the row is
 * left as it was written, so the same event can go to another log next (set row->user_id). */
void events_row_init(lagoon_v1_UserEvent *row, uint64_t user_id, pb_size_t which, const wire_msginfo *payload_info);
int events_append_row(store_txn *t, const app *a, lagoon_v1_UserEvent *row, store_error *err);

/* What events_notify wrote. */
typedef struct events_noted {
    uint64_t notification_id; /* the notification created or collapsed into */
    uint64_t seq;             /* its event in the user's log */
} events_noted;

/* Creates a notification for user and logs its event: the one way features notify. With a
 * collapse_key, an unread notification with the same key is updated instead (count + 1, new
 * content and time), so ten messages make one notification, not ten. message_id is the direct
 * message whose snippet content is (0: none): recorded as its snippet_message_id. *out (may be
 * NULL) says what was written. */
int events_notify(store_txn *t, const app *a, uint64_t user_id, lagoon_v1_Notification_Type type, const char *title,
                  const char *content, uint64_t related_id, const char *collapse_key, uint64_t message_id,
                  events_noted *out, store_error *err);

/* Call in the transaction that edits direct message m (m with its new text): if the
 * notification m->notification_id still shows m's snippet, it shows snippet instead and the
 * change is logged; *seq gets that event's seq in the recipient's log (0: nothing changed). */
int events_message_edited(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, const char *snippet,
                          uint64_t *seq, store_error *err);

/* Marks read the unread notification of user with collapse_key, if any (a conversation read),
 * as events_notification_mark_read does. */
int events_notification_read(store_txn *t, const app *a, uint64_t user_id, const char *collapse_key,
                             store_error *err);

/* Notification n as read in t: if unread, marks it read (n too), counts one fewer unread and
 * publishes READ; already read, changes and publishes nothing. */
int events_notification_mark_read(store_txn *t, const app *a, lagoon_v1_Notification *n, store_error *err);

/* Deletes notification n (as read in t), counts one fewer unread if it was unread, and
 * publishes DELETED. */
int events_notification_delete(store_txn *t, const app *a, const lagoon_v1_Notification *n, store_error *err);

/* Marks every unread notification of user read (a page of STORE_PAGE_SIZE_MAX at a time,
 * bounded by the unread ones), sets the unread count to 0 and, when any was unread,
 * publishes ALL_READ. */
int events_notifications_all_read(store_txn *t, const app *a, uint64_t user_id, store_error *err);

/* Publishes a change of user's notifications (read, all read, deleted) with the unread count as
 * it stands in t, so that the user's other devices update their badge. */
int events_notification_changed(store_txn *t, const app *a, uint64_t user_id,
                                lagoon_v1_NotificationStateEvent_Change change, uint64_t notification_id,
                                store_error *err);

/* Call in the transaction that deletes direct message m (m as it was stored): removes its words
 * from everything a user can still read. Its events in both participants' logs (sent, edited)
 * become DELETED events carrying only ids, and the recipient's notification events showing it
 * lose their content. The notification it created or was collapsed into (m->notification_id)
 * counts one fewer (and is deleted when m was the last it counted) and loses its content if it
 * still shows m's snippet (snippet_message_id); either change is published. A row that lists
 * its events (events_tracked) costs one lookup per listed event: bounded by the edit cap. A
 * row stored before that was kept is found by scanning both logs back to the time m was sent
 * (at most the retention count), and its notification through the log (the notification event
 * after its sent event) or, when retention dropped that, among the recipient's notifications
 * updated since (one page) that show m's snippet. */
int events_message_deleted(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m, store_error *err);

/* ---- topics ----------------------------------------------------------------------------------
 * A topic (lagoon_v1_Topic: a kind and an id) has its own log: events_topic_publish writes one
 * TopicEvent row and updates one TopicFeed row, whatever the number of members, with the topic's
 * own seqs and the same retention as a user's log. Membership is data (TopicMember rows, written
 * by the services that own the topics through events_topic_join/leave): every live subscription
 * of a member receives the topic's events after the seq it joined at, next to the user's own
 * log; a join or leave committed while subscribed takes effect on the open streams when the
 * router reads its commit announcement (announced in commit order, so exact against the topic's
 * events: see events.c). Ephemeral events are never stored: events_topic_ephemeral hands them to
 * the live subscriptions of the topic's members only. */

/* Topics one user may belong to: each costs a subscription a position (the cursor in
 * SubscribeRequest.topics holds at most this many, its max_count) and a replay at resume.
 * A join beyond it is RESOURCE_EXHAUSTED. */
#define EVENTS_MAX_TOPICS_PER_USER 128

/* Fair delivery for topics: each router turn makes at most EVENTS_TOPIC_TURN_SENDS sends for
 * one topic (an event to many subscribers continues in the next turn where it stopped), so a
 * topic with thousands of live members delays other users and topics by a bounded amount. A
 * topic's lane holds at most EVENTS_LANE_MAX events waiting; past it, ephemeral ones are
 * dropped and its live subscribers switch to replay from the topic's log. */
#define EVENTS_TOPIC_TURN_SENDS 1024

/* Makes user a member of topic in t (already one: nothing changes). The member receives the
 * topic's events published after this transaction's view of its log. */
int events_topic_join(store_txn *t, const app *a, uint64_t user_id, const lagoon_v1_Topic *topic, store_error *err);

/* Ends user's membership of topic in t (not a member: nothing changes). */
int events_topic_leave(store_txn *t, const app *a, uint64_t user_id, const lagoon_v1_Topic *topic, store_error *err);

/* Appends ev to topic's log in t: one stored row whatever the member count. Assigns ev's seq,
 * created_at and topic; trims the topic's log to the retention limits. ev->payload must be set. */
int events_topic_publish(store_txn *t, const app *a, const lagoon_v1_Topic *topic, lagoon_v1_Event *ev,
                         store_error *err);

/* Deletes topic's log and its position in t: for the owner of a topic whose subject is deleted
 * (a group, a video, a thread), so that no event rows outlive it. Bounded by the log's retention
 * count. Memberships are not touched: the owner ends them (events_topic_leave) as it does
 * today. A later publish to the same topic starts a new log from seq 1. */
int events_topic_forget(store_txn *t, const app *a, const lagoon_v1_Topic *topic, store_error *err);

/* Hands ev (typing, presence, playback pings) to the live subscriptions of topic's members now:
 * never stored, never replayed; dropped when nobody follows the topic, when its lane is full,
 * or past 256 waiting in all (each is a whole Event). Any thread; ev is copied. 0 (also when
 * dropped: it is ephemeral), or -1 out of memory. */
int events_topic_ephemeral(app *a, const lagoon_v1_Topic *topic, const lagoon_v1_Event *ev);

/* The router thread that delivers these events (started and stopped by the app) is declared
 * in realtime.h. */

#endif
