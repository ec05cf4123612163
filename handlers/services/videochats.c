/* VideoChats service: scheduled and instant video chats, invitations and reminders.
 *
 * A chat is one video_chats row and one video_chat_participants row per person, the organizer
 * included (organizer: true, answer ACCEPTED). The participant rows carry the chat's start
 * time, so "my chats by start" is one index (by_user_start) whatever the user's role in them,
 * and a list page costs its own rows only. To anyone without a participant row a chat does not
 * exist (NOT_FOUND), administrators included.
 *
 * Reminders are two durable jobs (scheduler.h) per scheduled chat: video-chat-reminder-minutes
 * before the start (not when the chat starts sooner than that) and at the start. They are
 * written in the transaction that schedules the chat, moved by a time change, and deleted by
 * Cancel, Start, Delete; a job that finds its chat no longer SCHEDULED does nothing. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "paging.h"
#include "scheduler.h"
#include "signalling.h"
#include "videochats.h"

typedef lagoon_v1_VideoChat chat;
typedef lagoon_v1_VideoChatParticipant participant;
#define STATUS(s) lagoon_v1_VideoChat_Status_##s
#define ANSWER(s) lagoon_v1_VideoChatParticipant_Answer_##s

_Static_assert(VIDEOCHATS_INVITED_MAX == sizeof(((lagoon_v1_ScheduleChatRequest *)0)->user_ids) / sizeof(uint64_t),
               "VIDEOCHATS_INVITED_MAX is user_ids' max_count in videochats.options");

/* ---- rows --------------------------------------------------------------------------------- */

static void pair_key(store_key *k, uint64_t chat_id, uint64_t user_id)
{
    store_key_reset(k);
    store_key_u64(k, chat_id);
    store_key_u64(k, user_id);
}

static int participant_get(store_txn *t, uint64_t chat_id, uint64_t user_id, participant *p, store_error *err)
{
    store_key k;
    pair_key(&k, chat_id, user_id);
    return store_get_by(t, &lagoon_table_video_chat_participants, lagoon_index_video_chat_participants_by_chat_user,
                        &k, NULL, p, err);
}

/* Chat id into c, and the caller's participant row into p, when the caller is in it; else
 * NOT_FOUND naming chat_id. With organizer_only, a participant who is not the organizer is
 * PERMISSION_DENIED (they know the chat). */
static int chat_for(store_txn *t, uint64_t me, uint64_t id, int organizer_only, chat *c, participant *p,
                    store_error *err)
{
    int st = participant_get(t, id, me, p, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_video_chats, id, c, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, "chat_id", "no such video chat");
    if (st == LAGOON_OK && organizer_only && c->organizer_id != me)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the organizer can do this");
    return st;
}

int videochats_may_join(store_txn *t, uint64_t user_id, uint64_t chat_id, store_error *err)
{
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    participant p;
    int st = chat_for(t, user_id, chat_id, 0, c, &p, err);
    if (st == LAGOON_OK && c->status != STATUS(LIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the video chat is not live");
    free(c);
    return st;
}

/* The participant rows of a chat, at most VIDEOCHATS_GROUP_MEMBERS_MAX (all of them). */
typedef struct roster {
    participant *rows;
    uint32_t n;
} roster;

static int roster_add(void *arg, uint64_t id, const void *row)
{
    (void)id;
    roster *r = arg;
    if (r->n < VIDEOCHATS_GROUP_MEMBERS_MAX)
        r->rows[r->n++] = *(const participant *)row;
    return LAGOON_OK;
}

/* The query of chat_id's participant rows, all of them in one page (prefix holds the key: keep
 * it alive while the query is used). */
static store_query roster_query(store_key *prefix, uint64_t chat_id)
{
    store_key_reset(prefix);
    store_key_u64(prefix, chat_id);
    store_query q = {.table = &lagoon_table_video_chat_participants,
                     .index = lagoon_index_video_chat_participants_by_chat_user, .prefix = prefix->buf,
                     .prefix_len = prefix->len, .page_size = VIDEOCHATS_GROUP_MEMBERS_MAX};
    return q;
}

/* c->participant_count from the rows, not the stored count: deleting a participant's account
 * deletes its row (the reference cascades) and no count. The index's keys only. */
static int recount(store_txn *t, chat *c, store_error *err)
{
    store_key prefix;
    store_query q = roster_query(&prefix, c->id);
    store_page page;
    int st = store_scan(t, &q, NULL, NULL, &page, err);
    if (st == LAGOON_OK)
        c->participant_count = page.count;
    return st;
}

/* Reads chat_id's participants into r->rows (malloc'd; the caller frees or hands it on). */
static int roster_read(store_txn *t, uint64_t chat_id, roster *r, store_error *err)
{
    r->n = 0;
    r->rows = malloc(VIDEOCHATS_GROUP_MEMBERS_MAX * sizeof(*r->rows));
    if (r->rows == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    store_key prefix;
    store_query q = roster_query(&prefix, chat_id);
    store_page page;
    int st = store_scan(t, &q, roster_add, r, &page, err);
    if (st != LAGOON_OK) {
        free(r->rows);
        r->rows = NULL;
        r->n = 0;
    }
    return st;
}

/* The chat as the writes and Get answer it, for user me. */
static int view_fill(store_txn *t, const chat *c, uint64_t me, lagoon_v1_VideoChatView *v, store_error *err)
{
    roster r;
    int st = roster_read(t, c->id, &r, err);
    if (st != LAGOON_OK)
        return st;
    v->has_chat = true;
    v->chat = *c;
    v->chat.participant_count = r.n; /* the rows: see recount */
    v->participants = r.rows; /* FT_POINTER: freed with the response */
    v->participants_count = (pb_size_t)r.n;
    for (uint32_t i = 0; i < r.n; i++)
        if (r.rows[i].user_id == me)
            v->my_answer = r.rows[i].answer;
    return LAGOON_OK;
}

/* ---- notifications and reminders ------------------------------------------------------------ */

/* "<title><what>", cut to a notification title on character boundaries (the chat's title
 * first, so that what follows it is whole). */
static int notify_all(store_txn *t, const app *a, const chat *c, uint64_t except, int skip_declined,
                      lagoon_v1_Notification_Type type, const char *what, store_error *err)
{
    char title[200], head[151], text[sizeof(title) + 64];
    app_copy_utf8(head, sizeof(head), c->title);
    snprintf(text, sizeof(text), "%s%s", head, what);
    app_copy_utf8(title, sizeof(title), text);
    roster r;
    int st = roster_read(t, c->id, &r, err);
    for (uint32_t i = 0; i < r.n && st == LAGOON_OK; i++) {
        if (r.rows[i].user_id == except || (skip_declined && r.rows[i].answer == ANSWER(DECLINED)))
            continue;
        st = events_notify(t, a, r.rows[i].user_id, type, title, "", c->id, "", 0, NULL, err);
    }
    free(r.rows);
    return st;
}

/* The chat's reminders at its start time (both moved when they exist). */
static int reminders_put(store_txn *t, const app *a, int64_t now, const chat *c, store_error *err)
{
    int64_t before = c->start_at - (int64_t)a->cfg.reminder_lead_ms;
    int st = before > now ? sched_put(t, now, lagoon_v1_JobKind_VIDEO_CHAT_REMINDER, c->id, VIDEOCHATS_SLOT_BEFORE,
                                      before, err)
                          : sched_cancel(t, lagoon_v1_JobKind_VIDEO_CHAT_REMINDER, c->id, VIDEOCHATS_SLOT_BEFORE, err);
    if (st == LAGOON_OK)
        st = sched_put(t, now, lagoon_v1_JobKind_VIDEO_CHAT_REMINDER, c->id, VIDEOCHATS_SLOT_AT_START, c->start_at,
                       err);
    return st;
}

static int reminders_cancel(store_txn *t, uint64_t chat_id, store_error *err)
{
    return sched_cancel_owner(t, lagoon_v1_JobKind_VIDEO_CHAT_REMINDER, chat_id, err);
}

static int videochats_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran,
                              store_error *err)
{
    if (job->kind != lagoon_v1_JobKind_VIDEO_CHAT_REMINDER)
        return LAGOON_OK;
    *ran = 1;
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_video_chats, job->owner_id, c, err);
    if (st == LAGOON_NOT_FOUND) {
        st = LAGOON_OK; /* deleted with its organizer's account */
    } else if (st == LAGOON_OK && c->status == STATUS(SCHEDULED)) {
        char what[64];
        snprintf(what, sizeof(what), " starts in %u minutes", (unsigned)(a->cfg.reminder_lead_ms / 60000));
        st = job->slot == VIDEOCHATS_SLOT_BEFORE
                 ? notify_all(t, a, c, 0, 1, lagoon_v1_Notification_Type_VIDEO_CHAT_REMINDER, what, err)
                 : notify_all(t, a, c, 0, 1, lagoon_v1_Notification_Type_VIDEO_CHAT_STARTED, " starts now", err);
    }
    free(c);
    return st;
}

/* A day from the first: the window of the chat budget. */
#define VIDEOCHATS_BUDGET_WINDOW_MS (24u * 3600u * 1000u)

static int videochats_start(app *a, void **state, rpc_error *err)
{
    return app_budget_start(a, a->cfg.video_chats, 0, VIDEOCHATS_BUDGET_WINDOW_MS, state, err);
}

const app_module videochats_module = {
    .name = "videochats",
    .start = videochats_start,
    .stop = app_budget_stop,
    .run_job = videochats_run_job,
};

/* ---- Schedule and StartNow ------------------------------------------------------------------- */

/* What Schedule and StartNow share, from either request (its pointers are into it). */
typedef struct new_chat {
    const char *title, *description;
    int64_t start_at; /* 0: now, live */
    uint32_t duration_minutes;
    const uint64_t *user_ids;
    pb_size_t nusers;
    uint64_t group_id;
} new_chat;

static int participant_add(store_txn *t, const chat *c, uint64_t user_id, int organizer, store_error *err)
{
    participant p = lagoon_v1_VideoChatParticipant_init_zero;
    p.chat_id = c->id;
    p.user_id = user_id;
    p.organizer = organizer;
    p.answer = organizer ? ANSWER(ACCEPTED) : ANSWER(PENDING);
    p.start_at = c->start_at;
    return store_insert(t, &lagoon_table_video_chat_participants, &p, NULL, err);
}

static int invite_users(store_txn *t, chat *c, const new_chat *nc, store_error *err)
{
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (pb_size_t i = 0; i < nc->nusers && st == LAGOON_OK; i++) {
        char field[32];
        snprintf(field, sizeof(field), "user_ids[%u]", (unsigned)i);
        uint64_t id = nc->user_ids[i];
        if (id == c->organizer_id) {
            st = store_fail(err, LAGOON_INVALID_ARGUMENT, field, "the organizer is not invited");
            break;
        }
        for (pb_size_t j = 0; j < i && st == LAGOON_OK; j++)
            if (nc->user_ids[j] == id)
                st = store_fail(err, LAGOON_INVALID_ARGUMENT, field, "is listed twice");
        if (st != LAGOON_OK)
            break;
        st = store_get(t, &lagoon_table_users, id, u, err);
        if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u->active))
            st = store_fail(err, LAGOON_NOT_FOUND, field, "no such user");
        if (st == LAGOON_OK)
            st = participant_add(t, c, id, 0, err);
    }
    free(u);
    c->participant_count = 1 + nc->nusers;
    return st;
}

/* The group's active members (the organizer, who must be one, has a row already). */
typedef struct group_invite {
    const chat *c;
    uint32_t n;
} group_invite;

static int invite_member(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    group_invite *gi = arg;
    lagoon_v1_GroupMember m;
    int st = store_get(t, &lagoon_table_group_members, id, &m, err);
    if (st != LAGOON_OK || m.user_id == gi->c->organizer_id)
        return st;
    if (++gi->n >= VIDEOCHATS_GROUP_MEMBERS_MAX)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, "group_id",
                          "a group's video chat invites at most %d members", VIDEOCHATS_GROUP_MEMBERS_MAX);
    return participant_add(t, gi->c, m.user_id, 0, err);
}

static int invite_group(store_txn *t, const rpc_caller *who, chat *c, store_error *err)
{
    int st = groups_active_member(t, who, c->group_id, "group_id", NULL, err);
    if (st != LAGOON_OK)
        return st;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, c->group_id);
    store_key_u32(&prefix, (uint32_t)lagoon_v1_GroupMember_State_ACTIVE);
    store_query q = {.table = &lagoon_table_group_members, .index = lagoon_index_group_members_by_group_state_role,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    group_invite gi = {c, 0};
    st = app_each_id(t, &q, invite_member, &gi, err);
    c->participant_count = 1 + gi.n;
    return st;
}

static int create_write(store_txn *t, const app_write_in *in, const new_chat *nc, void *resp, store_error *err)
{
    if (nc->start_at != 0 && nc->start_at <= in->now)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be in the future");
    if (nc->start_at > in->now + VIDEOCHATS_AHEAD_MAX_MS)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be within a year");
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    wire_init(&lagoon_v1_VideoChat_info, c);
    c->organizer_id = in->who.user_id;
    app_copy_utf8(c->title, sizeof(c->title), nc->title);
    app_copy_utf8(c->description, sizeof(c->description), nc->description);
    c->start_at = nc->start_at ? nc->start_at : in->now;
    c->duration_minutes = nc->duration_minutes;
    c->status = nc->start_at ? STATUS(SCHEDULED) : STATUS(LIVE);
    c->started_at = nc->start_at ? 0 : in->now;
    c->group_id = nc->group_id;
    c->created_at = c->updated_at = in->now;
    int st = store_insert(t, &lagoon_table_video_chats, c, NULL, err);
    if (st == LAGOON_OK)
        st = participant_add(t, c, in->who.user_id, 1, err);
    if (st == LAGOON_OK)
        st = c->group_id ? invite_group(t, &in->who, c, err) : invite_users(t, c, nc, err);
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_video_chats, c, err); /* participant_count */
    if (st == LAGOON_OK && nc->start_at)
        st = reminders_put(t, in->a, in->now, c, err);
    if (st == LAGOON_OK)
        st = notify_all(t, in->a, c, in->who.user_id, 0,
                        nc->start_at ? lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION
                                     : lagoon_v1_Notification_Type_VIDEO_CHAT_STARTED,
                        nc->start_at ? ": you are invited" : " starts now", err);
    if (st == LAGOON_OK)
        st = view_fill(t, c, in->who.user_id, resp, err);
    if (st == LAGOON_OK)
        app_result_shows(in, c->id); /* Delete drops the kept response */
    free(c);
    return st;
}

static int schedule_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ScheduleChatRequest *req = in->req;
    new_chat nc = {req->title, req->description, req->start_at, req->duration_minutes, req->user_ids,
                   req->user_ids_count, req->group_id};
    return create_write(t, in, &nc, resp, err);
}

static int start_now_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_StartNowRequest *req = in->req;
    new_chat nc = {req->title, req->description, 0, req->duration_minutes, req->user_ids, req->user_ids_count,
                   req->group_id};
    return create_write(t, in, &nc, resp, err);
}

/* Each chat notifies up to VIDEOCHATS_INVITED_MAX people (or a group): a per-user daily budget
 * keeps one account from flooding others with invitations (app_write_call_limited: only a call
 * that stores a chat counts). */
static int create_call(rpc_call *call, app_write_fn fn, uint64_t group_id, pb_size_t nusers)
{
    if (group_id && nusers)
        return rpc_call_violation(call, "group_id", "use either user_ids or group_id, not both");
    return app_write_call_limited(call, fn, app_state(app_of(call), &videochats_module), "vchat", "video chats");
}

int handle_VideoChats_Schedule(rpc_call *call, const lagoon_v1_ScheduleChatRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)resp;
    return create_call(call, schedule_write, req->group_id, req->user_ids_count);
}

int handle_VideoChats_StartNow(rpc_call *call, const lagoon_v1_StartNowRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)resp;
    return create_call(call, start_now_write, req->group_id, req->user_ids_count);
}

/* ---- changes by the organizer ------------------------------------------------------------------ */

/* Every participant row's start time to the chat's; with reset, every answer but the
 * organizer's back to PENDING. */
static int roster_retime(store_txn *t, const chat *c, int reset, store_error *err)
{
    roster r;
    int st = roster_read(t, c->id, &r, err);
    for (uint32_t i = 0; i < r.n && st == LAGOON_OK; i++) {
        r.rows[i].start_at = c->start_at;
        if (reset && !r.rows[i].organizer) {
            r.rows[i].answer = ANSWER(PENDING);
            r.rows[i].answered_at = 0;
        }
        st = store_update(t, &lagoon_table_video_chat_participants, &r.rows[i], err);
    }
    free(r.rows);
    return st;
}

/* change_write reads every request of these as a ChatIdRequest. */
_Static_assert(offsetof(lagoon_v1_UpdateChatRequest, chat_id) == offsetof(lagoon_v1_ChatIdRequest, chat_id),
               "UpdateChatRequest starts with chat_id");

/* An organizer's change: in->args is its function, which changes c (loaded, the caller its
 * organizer) in t. */
typedef int (*change_fn)(store_txn *t, const app_write_in *in, chat *c, store_error *err);

static int change_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ChatIdRequest *req = in->req; /* every request of these starts with chat_id */
    change_fn fn = *(const change_fn *)in->args;
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    participant p;
    int st = chat_for(t, in->who.user_id, req->chat_id, 1, c, &p, err);
    if (st == LAGOON_OK)
        st = fn(t, in, c, err);
    if (st == LAGOON_OK && resp != NULL)
        st = view_fill(t, c, in->who.user_id, resp, err);
    free(c);
    return st;
}

static int change_call(rpc_call *call, change_fn fn)
{
    change_fn *arg = app_write_args(call, sizeof(*arg));
    if (arg == NULL)
        return app_out_of_memory(call);
    *arg = fn;
    return app_write_call(call, change_write, arg);
}

static int scheduled_only(const chat *c, store_error *err)
{
    return c->status == STATUS(SCHEDULED)
               ? LAGOON_OK
               : store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "only a scheduled video chat can be changed");
}

static int update_change(store_txn *t, const app_write_in *in, chat *c, store_error *err)
{
    const lagoon_v1_UpdateChatRequest *req = in->req;
    int st = scheduled_only(c, err);
    if (st != LAGOON_OK)
        return st;
    if (req->has_start_at && req->start_at <= in->now)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be in the future");
    if (req->has_start_at && req->start_at > in->now + VIDEOCHATS_AHEAD_MAX_MS)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be within a year");
    int retimed = req->has_start_at && req->start_at != c->start_at;
    if (req->has_title)
        app_copy_utf8(c->title, sizeof(c->title), req->title);
    if (req->has_description)
        app_copy_utf8(c->description, sizeof(c->description), req->description);
    if (req->has_duration_minutes)
        c->duration_minutes = req->duration_minutes;
    if (retimed)
        c->start_at = req->start_at;
    c->updated_at = in->now;
    st = store_update(t, &lagoon_table_video_chats, c, err);
    if (st == LAGOON_OK && retimed)
        st = roster_retime(t, c, 1, err);
    if (st == LAGOON_OK && retimed)
        st = reminders_put(t, in->a, in->now, c, err);
    if (st == LAGOON_OK)
        st = notify_all(t, in->a, c, in->who.user_id, 0, lagoon_v1_Notification_Type_VIDEO_CHAT_UPDATED,
                        retimed ? " has a new time: please answer again" : " was changed", err);
    return st;
}

static int cancel_change(store_txn *t, const app_write_in *in, chat *c, store_error *err)
{
    int st = scheduled_only(c, err);
    if (st != LAGOON_OK)
        return st;
    c->status = STATUS(CANCELLED);
    c->updated_at = in->now;
    st = store_update(t, &lagoon_table_video_chats, c, err);
    if (st == LAGOON_OK)
        st = reminders_cancel(t, c->id, err);
    if (st == LAGOON_OK)
        st = notify_all(t, in->a, c, in->who.user_id, 0, lagoon_v1_Notification_Type_VIDEO_CHAT_CANCELLED,
                        " was cancelled", err);
    return st;
}

/* Starts a scheduled chat, early or on time: its start becomes now. */
static int start_change(store_txn *t, const app_write_in *in, chat *c, store_error *err)
{
    if (c->status != STATUS(SCHEDULED))
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "only a scheduled video chat can be started");
    int retimed = c->start_at != in->now;
    c->status = STATUS(LIVE);
    c->start_at = c->started_at = c->updated_at = in->now;
    int st = store_update(t, &lagoon_table_video_chats, c, err);
    if (st == LAGOON_OK && retimed)
        st = roster_retime(t, c, 0, err);
    if (st == LAGOON_OK)
        st = reminders_cancel(t, c->id, err);
    if (st == LAGOON_OK)
        st = notify_all(t, in->a, c, in->who.user_id, 1, lagoon_v1_Notification_Type_VIDEO_CHAT_STARTED, " starts now",
                        err);
    return st;
}

static int end_change(store_txn *t, const app_write_in *in, chat *c, store_error *err)
{
    (void)in;
    if (c->status != STATUS(LIVE))
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "only a live video chat can be ended");
    c->status = STATUS(ENDED);
    c->ended_at = c->updated_at = in->now;
    return store_update(t, &lagoon_table_video_chats, c, err);
}

/* A past chat (ended, or scheduled and its planned end gone by) or a cancelled one. */
static int delete_change(store_txn *t, const app_write_in *in, chat *c, store_error *err)
{
    int past = c->status == STATUS(ENDED) || c->status == STATUS(CANCELLED) ||
               (c->status == STATUS(SCHEDULED) && c->start_at + (int64_t)c->duration_minutes * 60000 < in->now);
    if (!past)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "only a past or cancelled video chat can be deleted");
    int st = reminders_cancel(t, c->id, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_VideoChats_Schedule, c->id, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_VideoChats_StartNow, c->id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_video_chats, c->id, err); /* its participants cascade */
    return st;
}

int handle_VideoChats_Update(rpc_call *call, const lagoon_v1_UpdateChatRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)req;
    (void)resp;
    return change_call(call, update_change);
}

int handle_VideoChats_Cancel(rpc_call *call, const lagoon_v1_ChatIdRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)req;
    (void)resp;
    return change_call(call, cancel_change);
}

int handle_VideoChats_Start(rpc_call *call, const lagoon_v1_ChatIdRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)req;
    (void)resp;
    return change_call(call, start_change);
}

/* Once the end is durable, the call's streams end too. */
static int end_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)resp;
    if (status == LAGOON_OK)
        signalling_call_ended(app_of(call), lagoon_v1_CallKind_VIDEO_CHAT,
                              ((const lagoon_v1_ChatIdRequest *)in->req)->chat_id);
    return status;
}

int handle_VideoChats_End(rpc_call *call, const lagoon_v1_ChatIdRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)req;
    (void)resp;
    change_fn *arg = app_write_args(call, sizeof(*arg));
    if (arg == NULL)
        return app_out_of_memory(call);
    *arg = end_change;
    return app_write_call_then(call, change_write, arg, end_after);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    return change_write(t, in, NULL, err);
}

int handle_VideoChats_Delete(rpc_call *call, const lagoon_v1_ChatIdRequest *req, lagoon_v1_VideoChatsEmpty *resp)
{
    (void)req;
    (void)resp;
    change_fn *arg = app_write_args(call, sizeof(*arg));
    if (arg == NULL)
        return app_out_of_memory(call);
    *arg = delete_change;
    return app_write_call(call, delete_write, arg);
}

/* ---- answers and reads ---------------------------------------------------------------------- */

static int answer_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_AnswerChatRequest *req = in->req;
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    participant p;
    int st = chat_for(t, in->who.user_id, req->chat_id, 0, c, &p, err);
    if (st == LAGOON_OK && p.organizer)
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the organizer does not answer");
    if (st == LAGOON_OK && c->status != STATUS(SCHEDULED) && c->status != STATUS(LIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the video chat is over");
    if (st == LAGOON_OK) {
        p.answer = req->answer;
        p.answered_at = in->now;
        st = store_update(t, &lagoon_table_video_chat_participants, &p, err);
    }
    if (st == LAGOON_OK)
        st = view_fill(t, c, in->who.user_id, resp, err);
    free(c);
    return st;
}

int handle_VideoChats_Answer(rpc_call *call, const lagoon_v1_AnswerChatRequest *req, lagoon_v1_VideoChatView *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, answer_write, NULL);
}

int handle_VideoChats_Get(rpc_call *call, const lagoon_v1_ChatIdRequest *req, lagoon_v1_VideoChatView *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    uint64_t me = rpc_call_caller(call)->user_id;
    chat *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        store_read_end(t);
        return app_out_of_memory(call);
    }
    participant p;
    st = chat_for(t, me, req->chat_id, 0, c, &p, &err);
    if (st == LAGOON_OK)
        st = view_fill(t, c, me, resp, &err);
    store_read_end(t);
    free(c);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* A participant row: the item's answer and chat id (the chat is read after the page). */
static int add_item(void *arg, void *item, const void *row)
{
    (void)arg;
    const participant *p = row;
    lagoon_v1_VideoChatItem *it = item;
    it->has_chat = true;
    it->chat.id = p->chat_id;
    it->my_answer = p->answer;
    return 1;
}

/* One page of the caller's chats by start: upcoming (start >= now, soonest first) or past
 * (start < now, newest first). */
static int list_chats(rpc_call *call, const lagoon_v1_ListChatsRequest *req, lagoon_v1_ListChatsResponse *resp,
                      int past)
{
    uint64_t me = rpc_call_caller(call)->user_id;
    int64_t now = app_now(app_of(call));
    store_key prefix, start;
    store_key_reset(&prefix);
    store_key_u64(&prefix, me);
    start = prefix;
    store_key_i64(&start, past ? now - 1 : now);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListChatsResponse_info,
                     .items_tag = lagoon_v1_ListChatsResponse_chats_tag, .item = add_item,
                     .item_size = sizeof(lagoon_v1_VideoChatItem)};
    l.query.table = &lagoon_table_video_chat_participants;
    l.query.index = lagoon_index_video_chat_participants_by_user_start;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.start = start.buf;
    l.query.start_len = start.len;
    l.query.reverse = past;
    int st = paging_read(call, &l);
    lagoon_v1_VideoChatItem *items = l.items;
    resp->chats = items; /* FT_POINTER: freed with the call */
    resp->chats_count = 0;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    if (st != LAGOON_OK || l.count == 0)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    uint32_t n = 0;
    for (uint32_t i = 0; i < l.count && st == LAGOON_OK; i++) {
        lagoon_v1_VideoChatItem it = items[i];
        st = store_get(t, &lagoon_table_video_chats, it.chat.id, &items[n].chat, &err);
        if (st == LAGOON_NOT_FOUND) {
            st = LAGOON_OK; /* deleted since the page was read */
            continue;
        }
        if (st == LAGOON_OK)
            st = recount(t, &items[n].chat, &err);
        items[n].has_chat = true;
        items[n].my_answer = it.my_answer;
        n++;
    }
    store_read_end(t);
    resp->chats_count = (pb_size_t)n;
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

int handle_VideoChats_ListUpcoming(rpc_call *call, const lagoon_v1_ListChatsRequest *req,
                                   lagoon_v1_ListChatsResponse *resp)
{
    return list_chats(call, req, resp, 0);
}

int handle_VideoChats_ListPast(rpc_call *call, const lagoon_v1_ListChatsRequest *req, lagoon_v1_ListChatsResponse *resp)
{
    return list_chats(call, req, resp, 1);
}
