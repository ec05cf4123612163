/* videochats: the VideoChats service (idl/lagoon/v1/videochats.proto: video_chats,
 * video_chat_participants) and what Signalling needs of it. */
#ifndef LAGOON_VIDEOCHATS_H
#define LAGOON_VIDEOCHATS_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Users one chat invites by id (ScheduleChatRequest.user_ids' max_items and max_count): each is
 * notified of every change, so the cap bounds one write's notifications. */
#define VIDEOCHATS_INVITED_MAX 50
/* A group's chat invites the group's active members, the organizer included, up to this many
 * (VideoChatView.participants' max_count); a larger group is FAILED_PRECONDITION. */
#define VIDEOCHATS_GROUP_MEMBERS_MAX 200
/* How far ahead a chat may be scheduled: a year and a day. */
#define VIDEOCHATS_AHEAD_MAX_MS (366LL * 24 * 3600 * 1000)
/* The reminder jobs' slots (JobKind VIDEO_CHAT_REMINDER, owner the chat). */
#define VIDEOCHATS_SLOT_BEFORE 0u
#define VIDEOCHATS_SLOT_AT_START 1u

/* The module: the per-user budget of Schedule and StartNow (app_config.video_chats, a limiter
 * of its own), and the chats' reminders (app_module.run_job). */
extern const app_module videochats_module;

/* Whether user_id may join chat_id's call (Signalling/Connect): LAGOON_OK when the chat is live
 * and the user its organizer or a participant; NOT_FOUND naming "chat_id" for anyone else (or
 * no such chat), FAILED_PRECONDITION when it is not live. */
int videochats_may_join(store_txn *t, uint64_t user_id, uint64_t chat_id, store_error *err);

#endif
