/* groupchat: the GroupChat service's table (idl/lagoon/v1/groupchat.proto: group_messages,
 * generated into lagoon_tables.h) and what the Groups service needs of it: read positions and
 * unread counts, which are counted from the messages, never stored per member. */
#ifndef LAGOON_GROUPCHAT_H
#define LAGOON_GROUPCHAT_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Unread counts are exact up to GROUPCHAT_UNREAD_CAP - 1 (999); from there a count is
 * GROUPCHAT_UNREAD_CAP, shown as "999+". Counting stops there, so a count costs at most that
 * many index entries however far behind the member is (a Send writes no row per member). */
#define GROUPCHAT_UNREAD_CAP 1000
/* @username mentions notified per message (distinct names, in order of appearance; further
 * ones are plain text). Each costs the Send a user lookup, a membership lookup and a
 * notification. */
#define GROUPCHAT_MENTIONS_MAX 5

/* Typing indicators one member sends to one group: at most one each this many ms (more are
 * answered and dropped: the indicator shows for 5 s), so that a loop of Typing calls cannot keep
 * the router's ephemeral events, shared by every topic, to itself. The same bound holds for read
 * receipts of one position (MarkRead calls that move nothing). */
#define GROUPCHAT_TYPING_EVERY_MS 1000

/* The GroupChat module: the filling of group message events and the typing limiter (its Send
 * budget is the Messages module's limiter, under keys of its own). */
extern const app_module groupchat_module;

/* The newest message id of group gid in t (0: none). */
int groupchat_newest(store_txn *t, uint64_t gid, uint64_t *id, store_error *err);

/* The messages of group gid after read_up_to, counted up to GROUPCHAT_UNREAD_CAP, into *n. */
int groupchat_unread(store_txn *t, uint64_t gid, uint64_t read_up_to, uint32_t *n, store_error *err);

/* n (a groupchat_unread count) as shown: "0".."999", or "999+" at the cap. */
void groupchat_unread_display(uint32_t n, char *out, size_t cap);

/* Call in the transaction that deletes group gid, before the delete (whose cascade takes its
 * messages): forgets the kept responses of GroupChat/Edit that show its edited messages, so that
 * a retry runs again (NOT_FOUND) instead of answering words that are gone. Reads each of the
 * group's messages once (the cascade deletes each anyway). */
int groupchat_group_deleting(store_txn *t, uint64_t gid, store_error *err);

#endif
