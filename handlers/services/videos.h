/* videos: the Videos service's tables (idl/lagoon/v1/videos.proto: videos, video_shares,
 * video_views, video_words, generated into lagoon_tables.h) and what other services that hang
 * off a video (comments, plays, watch parties) need of it: who may see a video. */
#ifndef LAGOON_VIDEOS_H
#define LAGOON_VIDEOS_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Reads video id into *v (may be NULL) when the caller may read it: its owner, a user it is
 * shared with, every signed-in user for a public video, an administrator. Otherwise — and when
 * there is no such video — NOT_FOUND with err naming field (the request's field that holds the
 * id: "video_id"), never PERMISSION_DENIED, so that private videos do not leak. *owner (may be
 * NULL) tells whether the caller owns it (or administers: may act on any). Runs in the caller's
 * transaction t, read or write. */
int videos_readable(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, lagoon_v1_Video *v,
                    int *owner, store_error *err);

/* Inserts v (its id assigned into v->id) with its search words, in the caller's write: what
 * Videos/Create does, for services that create videos of their own (Uploads/Create). The
 * caller has filled and validated every field. */
int videos_insert(store_txn *t, lagoon_v1_Video *v, store_error *err);

/* View counting, one source for every service (Videos/RecordView, Plays): a view counts when
 * VIDEOS_VIEW_MIN_S seconds were watched, or half of a video shorter than VIDEOS_VIEW_SHORT_S
 * whose duration is known (videos.c), and a user's views of a video count once per
 * VIDEOS_VIEW_INTERVAL_MS. videos_view_long_enough says whether watched_s seconds of v are
 * enough; videos_count_view applies both rules in the caller's write: sets *counted and, when
 * the view counts, moves the user's VideoView forward and stores v with view_count + 1 (exact:
 * the single writer serialises the increments). */
int videos_view_long_enough(const lagoon_v1_Video *v, uint32_t watched_s);
/* The once-per-interval rule alone, for anything counted "like video views" (Threads' views
 * too): whether a user's view at now counts again after that user's last counted one at
 * counted_at (ms). */
int videos_view_counts_again(int64_t counted_at, int64_t now);
int videos_count_view(store_txn *t, lagoon_v1_Video *v, uint64_t user, uint32_t watched_s, int64_t now, int *counted,
                      store_error *err);

/* Call in the transaction that deletes account user_id, before the delete: its videos go by the
 * account's cascade, so what Videos/Delete does besides the rows is done here for each (the
 * kept responses about their comments, the follows of their comments); and the videos shared
 * with it get a new key_version, so that the media links it was handed stop (as Unshare's). */
int videos_user_deleting(store_txn *t, const app *a, uint64_t user_id, store_error *err);
/* Gives every video shared with user_id a new key_version, in t: the media links the user was
 * handed stop at once. For a deactivated account (Users/SetActive), whose shares stay. */
int videos_reader_revoke(store_txn *t, uint64_t user_id, store_error *err);

/* The Videos module: its state is the view counter's clock-free bookkeeping (none yet) and the
 * rate limits of its writes. */
extern const app_module videos_module;

#endif
