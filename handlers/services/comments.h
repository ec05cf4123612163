/* comments: the Comments service's table (idl/lagoon/v1/comments.proto: comments, generated
 * into lagoon_tables.h) and its module: the per-user limiter of comment creation
 * (APP_SETTINGS comments-per-minute) and the filling of comment events on video topics. */
#ifndef LAGOON_COMMENTS_H
#define LAGOON_COMMENTS_H

#include "app.h"
#include "lagoon_tables.h"

/* Replies in one thread (a top-level comment's): bounds what deleting a reply walks and what a
 * Reply may add (FAILED_PRECONDITION past it). */
#define COMMENTS_THREAD_MAX 1000
/* @username mentions notified per comment (distinct names, in order of appearance); further
 * ones are plain text. Each costs the write a user lookup and an access check. */
#define COMMENTS_MENTIONS_MAX 5

extern const app_module comments_module;

/* Call in the transaction that narrows who may read video video_id (a share removed, the video
 * made private, or deleted: then every membership goes, which would otherwise count against
 * EVENTS_MAX_TOPICS_PER_USER for ever): ends the video-topic membership (Comments/Follow) of every follower who may no
 * longer read it, so that its comment events stop reaching them (a membership is not checked
 * again when an event is sent). Costs a user and an access lookup per follower of the video. */
int comments_video_readers_changed(store_txn *t, const app *a, uint64_t video_id, store_error *err);

/* Call in the transaction that deletes video video_id, before the delete (whose cascade takes
 * its comments): forgets the kept responses of Add, Reply, Update, Resolve and Reopen that show
 * its comments, so that a retry runs again instead of answering a comment that is gone. Costs
 * a few index lookups per comment of the video. */
int comments_video_deleting(store_txn *t, uint64_t video_id, store_error *err);

/* comments_video_deleting, and the end of every membership of the video's topic: for a video
 * that goes by a cascade Videos does not run (its owner's account deleted). */
int comments_video_going(store_txn *t, const app *a, uint64_t video_id, store_error *err);

#endif
