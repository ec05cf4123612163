/* teaching: the Teaching service's tables (idl/lagoon/v1/teaching.proto: teaching_relationships,
 * progress_records, progress_summaries, generated into lagoon_tables.h), its module (the
 * per-user limiter of requests and invitations, APP_SETTINGS teaching-requests-per-day) and
 * what Users needs of it: a teacher's active students. */
#ifndef LAGOON_TEACHING_H
#define LAGOON_TEACHING_H

#include "app.h"
#include "lagoon_handlers.h"
#include "lagoon_tables.h"

/* The values a summary keeps of each score (ProgressSummary.scores[i].recent): the trend is the
 * mean of the newest TEACHING_TREND_SPAN against the TEACHING_TREND_SPAN before. */
#define TEACHING_TREND_SPAN 5
#define TEACHING_RECENT_MAX (2 * TEACHING_TREND_SPAN)
/* The scores a summary has, in ProgressSummary.scores order: rating, technique, musicality,
 * rhythm, overall. */
#define TEACHING_SCORES 5

extern const app_module teaching_module;

/* Call in the transaction that deletes video video_id, before deleting it: deletes its
 * progress records and takes them out of the summaries (the records' cascade would delete
 * them without). Costs a summary update per record of the video. */
int teaching_video_deleting(store_txn *t, int64_t now, uint64_t video_id, store_error *err);

/* The same for account user_id, before deleting it: the records it wrote as a teacher leave
 * its students' summaries. */
int teaching_user_deleting(store_txn *t, int64_t now, uint64_t user_id, store_error *err);

/* Users/ListStudents: one page of the caller's active students (relationships ACTIVE with the
 * caller as teacher, the most recently accepted first), as public users. */
int teaching_list_students(rpc_call *call, const lagoon_v1_ListUsersRequest *req, lagoon_v1_ListUsersResponse *resp);

#endif
