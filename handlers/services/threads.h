/* threads: the Threads service's tables (idl/lagoon/v1/threads.proto: threads, thread_replies,
 * thread_reactions, thread_follows, thread_views, generated into lagoon_tables.h), its limits
 * and its module: the per-user write budgets and the filling of thread events on thread topics
 * (Topic.THREAD, the thread's id). */
#ifndef LAGOON_THREADS_H
#define LAGOON_THREADS_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Replies in one thread, nested ones included: bounds what deleting a thread's replies costs in
 * one transaction and what a Reply may add (FAILED_PRECONDITION past it). */
#define THREADS_REPLIES_MAX 10000
/* Nested replies under one top-level reply: bounds the walk that deletes a nested reply with
 * the replies below it (FAILED_PRECONDITION past it, as for comments). */
#define THREADS_NESTED_MAX 1000
/* Followers of one thread: every new reply notifies each of them in the reply's own write, so
 * this bounds the rows one Reply writes (Follow is RESOURCE_EXHAUSTED past it; the author's
 * own follow at Create never is). */
#define THREADS_FOLLOWERS_MAX 1000
/* Threads one user follows, their own included: Follow is RESOURCE_EXHAUSTED at it (Create's
 * follow of the author's own thread never is), so that deleting the account walks at most this
 * many follows of others' threads (to count them off) besides its own threads, which it walks
 * anyway. Checked by skipping this many index keys, once per Follow. */
#define THREADS_USER_FOLLOWS_MAX 1000
/* Watchers of one group thread from outside the group (while it is public): when the group is
 * made private, the thread's next event walks its watchers (its group's members, at most
 * GROUPS_MEMBERS_MAX, and these) to end the watches of those who no longer see it, so this
 * bounds that walk (Watch is RESOURCE_EXHAUSTED past it). */
#define THREADS_OUTSIDE_WATCHERS_MAX 1000
/* View rows (thread_views) of a thread older than the views interval that each counted view
 * deletes, oldest first: such a row counts for nothing (a view then counts again, as with no
 * row), and trimming them at twice the rate rows are added keeps a thread's rows near the
 * number of its viewers of about the last hour instead of everyone who ever viewed it, which
 * is what deleting the thread costs. */
#define THREADS_VIEWS_TRIMMED 2
/* The reaction types (ThreadReaction without UNSPECIFIED): the size of every count list
 * (max_count of the reactions fields in threads.options and events.options). */
#define THREADS_REACTION_TYPES 6

/* Per-user write budgets, "N per minute" from the first (LIMITER_BUDGET): threads created,
 * replies, reaction toggles. Each Create and Reply may notify up to THREADS_FOLLOWERS_MAX
 * users; a toggle is a write on the single writer. Refused calls and retries cost nothing
 * (app_write_call_limited). */
#define THREADS_CREATES_PER_MINUTE 10
#define THREADS_REPLIES_PER_MINUTE 30
#define THREADS_REACTIONS_PER_MINUTE 120
/* Follow, Unfollow, Watch and Unwatch together, per user per minute: each stores a row or a
 * topic membership with its event, and a client opening and closing threads needs a few a
 * minute; a loop of them is RESOURCE_EXHAUSTED past it. */
#define THREADS_TOGGLES_PER_MINUTE 60

extern const app_module threads_module;

/* The key of the by_place index (threads.proto): group_id, 0 for a pinned thread and 1 for
 * the others, last_activity_at descending. */
int threads_place_key(const void *row, store_key *k);

/* Call in the transaction that deletes account in->who (Users/DeleteAccount), before the
 * delete: its replies, reactions and follows on threads that stay are deleted here, through
 * Threads' own delete paths, so that those threads' reply, reaction and follower counts stay
 * exact (a cascade would leave them counted), and the watchers of its own threads leave their
 * topics. Costs a few rows per reply, reaction and follow of the account (rows the account's
 * cascade would delete in the same transaction anyway). */
int threads_user_deleting(store_txn *t, const app_write_in *in, uint64_t user_id, store_error *err);

/* Call in the transaction that ends user_id's access to group group_id's content (the user
 * left or was removed, while the group is private): ends the user's memberships of the topics
 * of that group's threads that the user no longer sees (a site administrator, or anyone for a
 * public group, still sees them), so that their replies and reactions stop reaching the user
 * live (a membership is not checked again when an event is sent). A watch of a public group's
 * thread stays, counted as one from outside the group (Thread.outside_watchers, ended past
 * THREADS_OUTSIDE_WATCHERS_MAX), so that the group made private ends it at the thread's next
 * event. Walks the user's thread topics only: at most EVENTS_MAX_TOPICS_PER_USER. */
int threads_group_access_lost(store_txn *t, const app_write_in *in, uint64_t user_id, uint64_t group_id,
                              store_error *err);

/* Call in the transaction that deletes group group_id (Groups/Delete, or its owner's account
 * deletion), before the delete whose cascade takes its threads: for each of them, what
 * Threads/Delete does besides the row (its kept responses and its replies' are forgotten, so a
 * retried Reply or Create is NOT_FOUND instead of the words of a deleted thread; its watchers
 * get THREAD_DELETED and leave its topic). Costs a few rows per thread and per reply of the
 * group, as the cascade does. */
int threads_group_deleting(store_txn *t, const app_write_in *in, uint64_t group_id, store_error *err);

#endif
