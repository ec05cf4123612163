/* profchats: the ProfessionalChats service (idl/lagoon/v1/profchats.proto: experts, pro_chats,
 * pro_chat_seats) and what Signalling needs of it. */
#ifndef LAGOON_PROFCHATS_H
#define LAGOON_PROFCHATS_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Seats of one session (CreateProChatRequest.capacity's max rule): the host talks with each
 * attendee in one call (SIGNALLING_ROOM_MAX), and a cancellation notifies every seat. */
#define PROFCHATS_CAPACITY_MAX 200
/* People on one session's waiting list: beyond, Register is RESOURCE_EXHAUSTED. */
#define PROFCHATS_WAITING_MAX 500
/* How far ahead a session may be planned: a year and a day. */
#define PROFCHATS_AHEAD_MAX_MS (366LL * 24 * 3600 * 1000)
/* The reminder jobs' slots (JobKind PRO_CHAT_REMINDER, owner the session). */
#define PROFCHATS_SLOT_BEFORE 0u
#define PROFCHATS_SLOT_AT_START 1u

/* The module: the per-user budget of Create (app_config.pro_chats, a limiter of its own), and
 * the sessions' reminders (app_module.run_job). */
extern const app_module profchats_module;

/* Whether user_id may join chat_id's call (Signalling/Connect): LAGOON_OK when the session is
 * live and the user its host or a registered attendee; NOT_FOUND naming "chat_id" when the user
 * may not see it, PERMISSION_DENIED when the user is neither, FAILED_PRECONDITION when it is
 * not live. */
int profchats_may_join(store_txn *t, uint64_t user_id, uint64_t chat_id, store_error *err);

#endif
