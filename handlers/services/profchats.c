/* ProfessionalChats service: sessions hosted by experts, curated by administrators, with seats
 * and a waiting list.
 *
 * Hosts. A teacher, or a user an administrator marked as an expert (SetExpert: one experts row,
 * nothing in the user's own row).
 *
 * Curation. DRAFT -> SUBMITTED (the host) -> PUBLISHED (an administrator approves) or REJECTED
 * (with a reason; the host may change it and submit again) -> LIVE (the host starts it) ->
 * ENDED (the host ends it); DRAFT, SUBMITTED, REJECTED and PUBLISHED may be CANCELLED (the host
 * or an administrator). Every change is an action (from which states, by whom, what it does)
 * run by one write function. Sessions not published yet exist only for their host and
 * administrators (NOT_FOUND for anyone else).
 *
 * Seats. Register takes a seat while registered < capacity, else a place at the end of the
 * waiting list (position from the session's counter); Unregister of a seat promotes the first
 * in line (lowest position) in the same transaction and notifies them. Every registration is a
 * write on the store's one writer, so concurrent ones are serialised: the count can never pass
 * the capacity and the line keeps arrival order.
 *
 * Reminders: as a video chat's (scheduler.h), from approval to the start, for the registered
 * attendees. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "lagoon_handlers.h"
#include "paging.h"
#include "profchats.h"
#include "scheduler.h"
#include "signalling.h"

typedef lagoon_v1_ProChat pchat;
typedef lagoon_v1_ProChatSeat seat;
#define PSTATE(s) lagoon_v1_ProChat_State_##s
#define SEAT(s) lagoon_v1_ProChatSeat_Status_##s
#define BIT(s) (1u << PSTATE(s))

static int is_admin(const rpc_caller *who)
{
    return who->role == lagoon_v1_Role_ADMIN;
}

/* Published and later sessions are public (to signed-in users); earlier ones are the host's and
 * the administrators' — a cancelled one too unless it was published first (published_at), so
 * that cancelling a draft or a rejected session does not show it to everyone. */
static int visible(const pchat *c, const rpc_caller *who)
{
    return c->host_id == who->user_id || is_admin(who) ||
           ((BIT(PUBLISHED) | BIT(LIVE) | BIT(ENDED)) & (1u << c->state)) ||
           (c->state == PSTATE(CANCELLED) && c->published_at != 0);
}

static int chat_for(store_txn *t, const rpc_caller *who, uint64_t id, pchat *c, store_error *err)
{
    int st = store_get(t, &lagoon_table_pro_chats, id, c, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !visible(c, who)))
        return store_fail(err, LAGOON_NOT_FOUND, "chat_id", "no such professional chat");
    return st;
}

static int seat_get(store_txn *t, uint64_t chat_id, uint64_t user_id, seat *s, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, chat_id);
    store_key_u64(&k, user_id);
    return store_get_by(t, &lagoon_table_pro_chat_seats, lagoon_index_pro_chat_seats_by_chat_user, &k, NULL, s, err);
}

static void line_prefix(store_key *k, uint64_t chat_id, lagoon_v1_ProChatSeat_Status status)
{
    store_key_reset(k);
    store_key_u64(k, chat_id);
    store_key_u32(k, (uint32_t)status);
}

typedef struct place_count {
    uint64_t position;
    uint32_t n;
} place_count;

static int count_before(void *arg, uint64_t id, const void *row)
{
    (void)id;
    place_count *pc = arg;
    if (((const seat *)row)->position > pc->position)
        return LAGOON_CANCELLED; /* the line is in position order: done */
    pc->n++;
    return LAGOON_OK;
}

/* The session as who may see it: the recording for the host and registered attendees only. */
static void view_of(const pchat *c, int sees_recording, lagoon_v1_ProChatView *v)
{
    v->has_chat = true;
    v->chat = *c;
    if (!sees_recording)
        v->chat.recording_url[0] = '\0';
    v->seats_left = c->registered < c->capacity ? c->capacity - c->registered : 0;
}

static int view_fill(store_txn *t, const rpc_caller *who, const pchat *c, lagoon_v1_ProChatView *v, store_error *err)
{
    seat s;
    int st = seat_get(t, c->id, who->user_id, &s, err);
    if (st == LAGOON_NOT_FOUND) {
        view_of(c, c->host_id == who->user_id, v);
        return LAGOON_OK;
    }
    if (st != LAGOON_OK)
        return st;
    view_of(c, c->host_id == who->user_id || s.status == SEAT(REGISTERED), v);
    v->my_status = s.status;
    if (s.status != SEAT(WAITING))
        return LAGOON_OK;
    store_key prefix;
    line_prefix(&prefix, c->id, SEAT(WAITING));
    store_query q = {.table = &lagoon_table_pro_chat_seats, .index = lagoon_index_pro_chat_seats_by_chat_status,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    place_count pc = {s.position, 0};
    store_page page;
    st = store_scan(t, &q, count_before, &pc, &page, err);
    v->my_place = pc.n;
    return st == LAGOON_CANCELLED ? LAGOON_OK : st;
}

int profchats_may_join(store_txn *t, uint64_t user_id, uint64_t chat_id, store_error *err)
{
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    rpc_caller who = {.user_id = user_id}; /* not an administrator: only the host and attendees join */
    int st = chat_for(t, &who, chat_id, c, err);
    seat s;
    if (st == LAGOON_OK && c->state != PSTATE(LIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the professional chat is not live");
    if (st == LAGOON_OK && c->host_id != user_id) {
        st = seat_get(t, chat_id, user_id, &s, err);
        if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && s.status != SEAT(REGISTERED)))
            st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the host and registered attendees may join");
    }
    free(c);
    return st;
}

/* ---- notifications and reminders ------------------------------------------------------------ */

/* "<title><what>" on character boundaries: the session's title cut first (a byte count such as
 * "%.150s" could split a character and leave the notification's text invalid UTF-8). */
static void chat_title(const pchat *c, const char *what, char title[200])
{
    char head[151], text[264];
    app_copy_utf8(head, sizeof(head), c->title);
    snprintf(text, sizeof(text), "%s%s", head, what);
    app_copy_utf8(title, 200, text);
}

typedef struct seat_note {
    const app *a;
    uint64_t chat_id;
    lagoon_v1_Notification_Type type;
    const char *title;
} seat_note;

static int note_seat(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const seat_note *sn = arg;
    seat s;
    int st = store_get(t, &lagoon_table_pro_chat_seats, id, &s, err);
    return st == LAGOON_OK ? events_notify(t, sn->a, s.user_id, sn->type, sn->title, "", sn->chat_id, "", 0, NULL, err)
                           : st;
}

/* Notifies the seats of c with status (REGISTERED or WAITING). */
static int notify_seats(store_txn *t, const app *a, const pchat *c, lagoon_v1_ProChatSeat_Status status,
                        lagoon_v1_Notification_Type type, const char *what, store_error *err)
{
    char title[200];
    chat_title(c, what, title);
    store_key prefix;
    line_prefix(&prefix, c->id, status);
    store_query q = {.table = &lagoon_table_pro_chat_seats, .index = lagoon_index_pro_chat_seats_by_chat_status,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    seat_note sn = {a, c->id, type, title};
    return app_each_id(t, &q, note_seat, &sn, err);
}

static int notify_host(store_txn *t, const app *a, const pchat *c, lagoon_v1_Notification_Type type, const char *what,
                       store_error *err)
{
    char title[200];
    chat_title(c, what, title);
    return events_notify(t, a, c->host_id, type, title, "", c->id, "", 0, NULL, err);
}

static int reminders_put(store_txn *t, const app *a, int64_t now, const pchat *c, store_error *err)
{
    int64_t before = c->start_at - (int64_t)a->cfg.reminder_lead_ms;
    int st = before > now ? sched_put(t, now, lagoon_v1_JobKind_PRO_CHAT_REMINDER, c->id, PROFCHATS_SLOT_BEFORE, before,
                                      err)
                          : LAGOON_OK;
    if (st == LAGOON_OK)
        st = sched_put(t, now, lagoon_v1_JobKind_PRO_CHAT_REMINDER, c->id, PROFCHATS_SLOT_AT_START, c->start_at, err);
    return st;
}

static int profchats_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran,
                             store_error *err)
{
    if (job->kind != lagoon_v1_JobKind_PRO_CHAT_REMINDER)
        return LAGOON_OK;
    *ran = 1;
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_pro_chats, job->owner_id, c, err);
    if (st == LAGOON_NOT_FOUND) {
        st = LAGOON_OK;
    } else if (st == LAGOON_OK && c->state == PSTATE(PUBLISHED)) {
        char what[64];
        snprintf(what, sizeof(what), " starts in %u minutes", (unsigned)(a->cfg.reminder_lead_ms / 60000));
        int before = job->slot == PROFCHATS_SLOT_BEFORE;
        lagoon_v1_Notification_Type type =
            before ? lagoon_v1_Notification_Type_PRO_CHAT_REMINDER : lagoon_v1_Notification_Type_PRO_CHAT_STARTED;
        st = notify_seats(t, a, c, SEAT(REGISTERED), type, before ? what : " starts now", err);
        if (st == LAGOON_OK)
            st = notify_host(t, a, c, type, before ? what : " starts now: start it", err);
    }
    free(c);
    return st;
}

/* A day from the first: the window of the Create budget. */
#define PROFCHATS_BUDGET_WINDOW_MS (24u * 3600u * 1000u)

/* The state: the per-user budget of Create (app_config.pro_chats). */
static int profchats_start(app *a, void **state, rpc_error *err)
{
    return app_budget_start(a, a->cfg.pro_chats, 0, PROFCHATS_BUDGET_WINDOW_MS, state, err);
}

const app_module profchats_module = {
    .name = "profchats",
    .start = profchats_start,
    .stop = app_budget_stop,
    .run_job = profchats_run_job,
};

/* ---- experts and Create ----------------------------------------------------------------------- */

static int expert_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_SetExpertRequest *req = in->req;
    lagoon_v1_ExpertStatus *out = resp;
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, req->user_id, u, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u->active))
        st = store_fail(err, LAGOON_NOT_FOUND, "user_id", "no such user");
    free(u);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, req->user_id);
    uint64_t id = 0;
    int found = LAGOON_NOT_FOUND;
    if (st == LAGOON_OK) {
        found = store_get_by(t, &lagoon_table_experts, lagoon_index_experts_by_user, &k, &id, NULL, err);
        if (found != LAGOON_OK && found != LAGOON_NOT_FOUND)
            st = found;
    }
    if (st == LAGOON_OK && req->expert && found == LAGOON_NOT_FOUND) {
        lagoon_v1_Expert e = {0, req->user_id, in->who.user_id, in->now};
        st = store_insert(t, &lagoon_table_experts, &e, NULL, err);
    } else if (st == LAGOON_OK && !req->expert && found == LAGOON_OK) {
        st = store_delete(t, &lagoon_table_experts, id, err);
    }
    out->user_id = req->user_id;
    out->expert = req->expert;
    return st;
}

int handle_ProfessionalChats_SetExpert(rpc_call *call, const lagoon_v1_SetExpertRequest *req,
                                       lagoon_v1_ExpertStatus *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, expert_write, NULL);
}

static int may_host(store_txn *t, const rpc_caller *who, store_error *err)
{
    if (who->role == lagoon_v1_Role_TEACHER)
        return LAGOON_OK;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, who->user_id);
    int st = store_get_by(t, &lagoon_table_experts, lagoon_index_experts_by_user, &k, NULL, NULL, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only teachers and experts host professional chats");
    return st;
}

static int start_problem(int64_t start_at, int64_t now, store_error *err)
{
    if (start_at <= now)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be in the future");
    if (start_at > now + PROFCHATS_AHEAD_MAX_MS)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "start_at", "must be within a year");
    return LAGOON_OK;
}

static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CreateProChatRequest *req = in->req;
    int st = may_host(t, &in->who, err);
    if (st == LAGOON_OK)
        st = start_problem(req->start_at, in->now, err);
    if (st != LAGOON_OK)
        return st;
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    wire_init(&lagoon_v1_ProChat_info, c);
    c->host_id = in->who.user_id;
    app_copy_utf8(c->title, sizeof(c->title), req->title);
    app_copy_utf8(c->topic, sizeof(c->topic), req->topic);
    app_copy_utf8(c->category, sizeof(c->category), req->category);
    app_copy_utf8(c->description, sizeof(c->description), req->description);
    c->capacity = req->capacity;
    c->start_at = req->start_at;
    c->duration_minutes = req->duration_minutes;
    c->state = PSTATE(DRAFT);
    c->created_at = c->updated_at = in->now;
    st = store_insert(t, &lagoon_table_pro_chats, c, NULL, err);
    if (st == LAGOON_OK) {
        view_of(c, 1, resp);
        app_result_shows(in, c->id);
    }
    free(c);
    return st;
}

/* Every draft can go to the administrators' review queue: a per-user daily budget keeps one
 * account from flooding it (app_write_call_limited: only a call that stores a session counts). */
int handle_ProfessionalChats_Create(rpc_call *call, const lagoon_v1_CreateProChatRequest *req,
                                    lagoon_v1_ProChatView *resp)
{
    (void)req;
    (void)resp;
    return app_write_call_limited(call, create_write, app_state(app_of(call), &profchats_module), "pchat",
                                  "professional chats");
}

/* ---- actions on a session ------------------------------------------------------------------- */

enum who { BY_HOST = 1, BY_ADMIN = 2, BY_EITHER = 3, BY_ANYONE = 4 /* who may see it */ };

/* One change of a session: the states it applies to, who may make it, and what it does to c
 * (loaded; stored after it returns). */
typedef struct action {
    uint32_t from; /* BIT(state)s */
    enum who who;
    const char *refused; /* FAILED_PRECONDITION's text in another state */
    int (*apply)(store_txn *t, const app_write_in *in, pchat *c, store_error *err);
} action;

/* act_write reads every request of these as a ProChatIdRequest. */
#define PROFCHATS_STARTS_WITH_ID(type)                                                                                 \
    _Static_assert(offsetof(type, chat_id) == offsetof(lagoon_v1_ProChatIdRequest, chat_id), #type " starts with chat_id")
PROFCHATS_STARTS_WITH_ID(lagoon_v1_UpdateProChatRequest);
PROFCHATS_STARTS_WITH_ID(lagoon_v1_RejectProChatRequest);
PROFCHATS_STARTS_WITH_ID(lagoon_v1_FeatureProChatRequest);
PROFCHATS_STARTS_WITH_ID(lagoon_v1_SetRecordingRequest);
#undef PROFCHATS_STARTS_WITH_ID

static int act_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ProChatIdRequest *req = in->req; /* every request of these starts with chat_id */
    const action *ac = in->args;
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = chat_for(t, &in->who, req->chat_id, c, err);
    int host = st == LAGOON_OK && c->host_id == in->who.user_id;
    if (st == LAGOON_OK && ac->who != BY_ANYONE && !((ac->who & BY_HOST) && host) &&
        !((ac->who & BY_ADMIN) && is_admin(&in->who)))
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                        ac->who == BY_HOST ? "only the host can do this" : "only the host or an administrator can do this");
    if (st == LAGOON_OK && !(ac->from & (1u << c->state)))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "%s", ac->refused);
    if (st == LAGOON_OK) {
        c->updated_at = in->now;
        st = ac->apply(t, in, c, err);
    }
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_pro_chats, c, err);
    if (st == LAGOON_OK)
        st = view_fill(t, &in->who, c, resp, err);
    free(c);
    return st;
}

static int update_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    (void)t;
    const lagoon_v1_UpdateProChatRequest *req = in->req;
    if (req->has_start_at) {
        int st = start_problem(req->start_at, in->now, err);
        if (st != LAGOON_OK)
            return st;
        c->start_at = req->start_at;
    }
    if (req->has_title)
        app_copy_utf8(c->title, sizeof(c->title), req->title);
    if (req->has_topic)
        app_copy_utf8(c->topic, sizeof(c->topic), req->topic);
    if (req->has_category)
        app_copy_utf8(c->category, sizeof(c->category), req->category);
    if (req->has_description)
        app_copy_utf8(c->description, sizeof(c->description), req->description);
    if (req->has_capacity)
        c->capacity = req->capacity; /* no seats before publication */
    if (req->has_duration_minutes)
        c->duration_minutes = req->duration_minutes;
    return LAGOON_OK;
}

static int submit_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    (void)t;
    int st = start_problem(c->start_at, in->now, err);
    if (st == LAGOON_OK) {
        c->state = PSTATE(SUBMITTED);
        c->reject_reason[0] = '\0';
    }
    return st;
}

static int approve_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    if (c->start_at <= in->now)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "its start time has passed");
    c->state = PSTATE(PUBLISHED);
    c->published_at = in->now;
    int st = reminders_put(t, in->a, in->now, c, err);
    return st == LAGOON_OK ? notify_host(t, in->a, c, lagoon_v1_Notification_Type_PRO_CHAT_REVIEWED, " was published", err)
                           : st;
}

static int reject_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    const lagoon_v1_RejectProChatRequest *req = in->req;
    c->state = PSTATE(REJECTED);
    app_copy_utf8(c->reject_reason, sizeof(c->reject_reason), req->reason);
    return notify_host(t, in->a, c, lagoon_v1_Notification_Type_PRO_CHAT_REVIEWED, " was not approved", err);
}

static int feature_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    (void)t;
    (void)err;
    c->featured = ((const lagoon_v1_FeatureProChatRequest *)in->req)->featured;
    return LAGOON_OK;
}

static int cancel_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    c->state = PSTATE(CANCELLED);
    int st = sched_cancel_owner(t, lagoon_v1_JobKind_PRO_CHAT_REMINDER, c->id, err);
    if (st == LAGOON_OK)
        st = notify_seats(t, in->a, c, SEAT(REGISTERED), lagoon_v1_Notification_Type_PRO_CHAT_CANCELLED,
                          " was cancelled", err);
    if (st == LAGOON_OK)
        st = notify_seats(t, in->a, c, SEAT(WAITING), lagoon_v1_Notification_Type_PRO_CHAT_CANCELLED, " was cancelled",
                          err);
    return st;
}

static int start_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    c->state = PSTATE(LIVE);
    c->started_at = in->now;
    int st = sched_cancel_owner(t, lagoon_v1_JobKind_PRO_CHAT_REMINDER, c->id, err);
    return st == LAGOON_OK ? notify_seats(t, in->a, c, SEAT(REGISTERED), lagoon_v1_Notification_Type_PRO_CHAT_STARTED,
                                          " starts now", err)
                           : st;
}

static int end_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    (void)t;
    (void)err;
    c->state = PSTATE(ENDED);
    c->ended_at = in->now;
    return LAGOON_OK;
}

static int recording_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    (void)t;
    (void)err;
    APP_STRCPY(c->recording_url, ((const lagoon_v1_SetRecordingRequest *)in->req)->recording_url);
    return LAGOON_OK;
}

static const action update_ac = {BIT(DRAFT) | BIT(REJECTED), BY_HOST,
                                 "only a draft or rejected session can be changed", update_apply};
static const action submit_ac = {BIT(DRAFT) | BIT(REJECTED), BY_HOST,
                                 "only a draft or rejected session can be submitted", submit_apply};
static const action approve_ac = {BIT(SUBMITTED), BY_ADMIN, "only a submitted session can be approved", approve_apply};
static const action reject_ac = {BIT(SUBMITTED), BY_ADMIN, "only a submitted session can be rejected", reject_apply};
static const action feature_ac = {BIT(PUBLISHED) | BIT(LIVE), BY_ADMIN,
                                  "only a published or live session can be featured", feature_apply};
static const action cancel_ac = {BIT(DRAFT) | BIT(SUBMITTED) | BIT(REJECTED) | BIT(PUBLISHED), BY_EITHER,
                                 "only a session that has not started can be cancelled", cancel_apply};
static const action start_ac = {BIT(PUBLISHED), BY_HOST, "only a published session can be started", start_apply};
static const action end_ac = {BIT(LIVE), BY_HOST, "only a live session can be ended", end_apply};
static const action recording_ac = {BIT(ENDED), BY_HOST, "a recording is attached after the end", recording_apply};

#define PROFCHATS_ACTION(method, req_type, ac)                                                                        \
    int handle_ProfessionalChats_##method(rpc_call *call, const req_type *req, lagoon_v1_ProChatView *resp)           \
    {                                                                                                                  \
        (void)req;                                                                                                     \
        (void)resp;                                                                                                    \
        return app_write_call(call, act_write, &(ac));                                                                 \
    }
PROFCHATS_ACTION(Update, lagoon_v1_UpdateProChatRequest, update_ac)
PROFCHATS_ACTION(Submit, lagoon_v1_ProChatIdRequest, submit_ac)
PROFCHATS_ACTION(Approve, lagoon_v1_ProChatIdRequest, approve_ac)
PROFCHATS_ACTION(Reject, lagoon_v1_RejectProChatRequest, reject_ac)
PROFCHATS_ACTION(SetFeatured, lagoon_v1_FeatureProChatRequest, feature_ac)
PROFCHATS_ACTION(Cancel, lagoon_v1_ProChatIdRequest, cancel_ac)
PROFCHATS_ACTION(Start, lagoon_v1_ProChatIdRequest, start_ac)
PROFCHATS_ACTION(SetRecording, lagoon_v1_SetRecordingRequest, recording_ac)
#undef PROFCHATS_ACTION

/* Once the end is durable, the call's streams end too. */
static int end_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)resp;
    if (status == LAGOON_OK)
        signalling_call_ended(app_of(call), lagoon_v1_CallKind_PRO_CHAT,
                              ((const lagoon_v1_ProChatIdRequest *)in->req)->chat_id);
    return status;
}

int handle_ProfessionalChats_End(rpc_call *call, const lagoon_v1_ProChatIdRequest *req, lagoon_v1_ProChatView *resp)
{
    (void)req;
    (void)resp;
    return app_write_call_then(call, act_write, &end_ac, end_after);
}

/* ---- seats ---------------------------------------------------------------------------------- */

static int reconcile(store_txn *t, const app *a, pchat *c, store_error *err);

static int register_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    if (c->host_id == in->who.user_id)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the host does not register");
    seat s;
    int st = seat_get(t, c->id, in->who.user_id, &s, err);
    if (st == LAGOON_OK)
        return store_fail(err, LAGOON_ALREADY_EXISTS, "chat_id", "you are already registered or waiting");
    if (st != LAGOON_NOT_FOUND)
        return st;
    if (c->registered >= c->capacity) {
        st = reconcile(t, in->a, c, err); /* a seat of a deleted account is free again */
        if (st != LAGOON_OK)
            return st;
    }
    if (c->registered >= c->capacity && c->waiting >= PROFCHATS_WAITING_MAX)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "the session and its waiting list are full");
    s = (seat)lagoon_v1_ProChatSeat_init_zero;
    s.chat_id = c->id;
    s.user_id = in->who.user_id;
    s.start_at = c->start_at;
    s.created_at = in->now;
    if (c->registered < c->capacity) {
        s.status = SEAT(REGISTERED);
        c->registered++;
    } else {
        s.status = SEAT(WAITING);
        s.position = ++c->next_position;
        c->waiting++;
    }
    return store_insert(t, &lagoon_table_pro_chat_seats, &s, NULL, err);
}

/* The first in line takes the seat that freed up. */
static int promote(store_txn *t, const app *a, pchat *c, store_error *err)
{
    store_key prefix;
    line_prefix(&prefix, c->id, SEAT(WAITING));
    store_query q = {.table = &lagoon_table_pro_chat_seats, .index = lagoon_index_pro_chat_seats_by_chat_status,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = 1};
    app_id_page *page = malloc(sizeof(*page));
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = app_scan_ids(t, &q, page, err);
    seat s;
    if (st == LAGOON_OK && page->n == 1)
        st = store_get(t, &lagoon_table_pro_chat_seats, page->ids[0], &s, err);
    if (st == LAGOON_OK && page->n == 1) {
        s.status = SEAT(REGISTERED);
        s.position = 0;
        c->waiting--;
        c->registered++;
        st = store_update(t, &lagoon_table_pro_chat_seats, &s, err);
        if (st == LAGOON_OK) {
            char title[200];
            chat_title(c, ": a seat is yours", title);
            st = events_notify(t, a, s.user_id, lagoon_v1_Notification_Type_PRO_CHAT_SEAT, title, "", c->id, "", 0,
                               NULL, err);
        }
    }
    free(page);
    return st;
}

_Static_assert(PROFCHATS_CAPACITY_MAX <= STORE_PAGE_SIZE_MAX && PROFCHATS_WAITING_MAX <= STORE_PAGE_SIZE_MAX,
               "one page of ids counts a session's seats or its line");

/* The seats of c with status, counted from the index (one page holds them all). */
static int count_seats(store_txn *t, const pchat *c, lagoon_v1_ProChatSeat_Status status, uint32_t *n,
                       store_error *err)
{
    store_key prefix;
    line_prefix(&prefix, c->id, status);
    store_query q = {.table = &lagoon_table_pro_chat_seats, .index = lagoon_index_pro_chat_seats_by_chat_status,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    app_id_page *page = malloc(sizeof(*page));
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = app_scan_ids(t, &q, page, err);
    *n = page->n;
    free(page);
    return st;
}

/* c's counters from its seats, and every free seat to the first in line. A seat also frees
 * without Unregister: deleting an attendee's account deletes the row (its reference cascades)
 * and no counter; recounting here, where seats are given, picks that up. */
static int reconcile(store_txn *t, const app *a, pchat *c, store_error *err)
{
    int st = count_seats(t, c, SEAT(REGISTERED), &c->registered, err);
    if (st == LAGOON_OK)
        st = count_seats(t, c, SEAT(WAITING), &c->waiting, err);
    for (uint32_t turn = 0; st == LAGOON_OK && turn < c->capacity && c->registered < c->capacity && c->waiting > 0;
         turn++)
        st = promote(t, a, c, err);
    return st;
}

static int unregister_apply(store_txn *t, const app_write_in *in, pchat *c, store_error *err)
{
    seat s;
    int st = seat_get(t, c->id, in->who.user_id, &s, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "you are neither registered nor waiting");
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_pro_chat_seats, s.id, err);
    return st == LAGOON_OK ? reconcile(t, in->a, c, err) : st;
}

static const action register_ac = {BIT(PUBLISHED), BY_ANYONE, "registration is open while the session is published",
                                   register_apply};
static const action unregister_ac = {BIT(PUBLISHED) | BIT(LIVE), BY_ANYONE, "the session is over", unregister_apply};

int handle_ProfessionalChats_Register(rpc_call *call, const lagoon_v1_ProChatIdRequest *req,
                                      lagoon_v1_ProChatView *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, act_write, &register_ac);
}

/* Once an Unregister is durable, the caller is out of the session's call too (when live and
 * connected). */
static int unregister_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)resp;
    if (status == LAGOON_OK)
        signalling_user_removed(app_of(call), lagoon_v1_CallKind_PRO_CHAT,
                                ((const lagoon_v1_ProChatIdRequest *)in->req)->chat_id, in->who.user_id,
                                LAGOON_PERMISSION_DENIED, "you unregistered from this session");
    return status;
}

int handle_ProfessionalChats_Unregister(rpc_call *call, const lagoon_v1_ProChatIdRequest *req,
                                        lagoon_v1_ProChatView *resp)
{
    (void)req;
    (void)resp;
    return app_write_call_then(call, act_write, &unregister_ac, unregister_after);
}

int handle_ProfessionalChats_Get(rpc_call *call, const lagoon_v1_ProChatIdRequest *req, lagoon_v1_ProChatView *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        store_read_end(t);
        return app_out_of_memory(call);
    }
    st = chat_for(t, rpc_call_caller(call), req->chat_id, c, &err);
    if (st == LAGOON_OK)
        st = view_fill(t, rpc_call_caller(call), c, resp, &err);
    store_read_end(t);
    free(c);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- lists ---------------------------------------------------------------------------------- */

/* A session row as an item: arg non-NULL = the caller hosts it (ListHosted) and sees the recording. */
static int add_chat(void *arg, void *item, const void *row)
{
    view_of(row, arg != NULL, item);
    return 1;
}

/* A seat row: the session is read after the page; the seat's status is the caller's. */
static int add_seat(void *arg, void *item, const void *row)
{
    (void)arg;
    const seat *s = row;
    lagoon_v1_ProChatView *v = item;
    v->chat.id = s->chat_id;
    v->my_status = s->status;
    return 1;
}

static int list_page(rpc_call *call, const lagoon_v1_ListProChatsRequest *req, lagoon_v1_ListProChatsResponse *resp,
                     paging_list *l)
{
    l->size = req->page_size;
    l->token = req->page_token;
    l->resp = &lagoon_v1_ListProChatsResponse_info;
    l->items_tag = lagoon_v1_ListProChatsResponse_chats_tag;
    l->item_size = sizeof(lagoon_v1_ProChatView);
    int st = paging_read(call, l);
    resp->chats = l->items; /* FT_POINTER: freed with the call */
    resp->chats_count = (pb_size_t)l->count;
    APP_STRCPY(resp->next_page_token, l->next_page_token);
    return st;
}

/* One state's sessions by start, from `from` on (0: all), of category (""): all. */
static int list_state(rpc_call *call, const lagoon_v1_ListProChatsRequest *req, lagoon_v1_ListProChatsResponse *resp,
                      lagoon_v1_ProChat_State state, int64_t from)
{
    store_key prefix, start;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)state);
    if (req->category[0])
        store_key_str(&prefix, req->category);
    start = prefix;
    store_key_i64(&start, from);
    paging_list l = {.item = add_chat};
    l.query.table = &lagoon_table_pro_chats;
    l.query.index = req->category[0] ? lagoon_index_pro_chats_by_state_category : lagoon_index_pro_chats_by_state;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.start = start.buf;
    l.query.start_len = start.len;
    return list_page(call, req, resp, &l);
}

int handle_ProfessionalChats_ListPublished(rpc_call *call, const lagoon_v1_ListProChatsRequest *req,
                                           lagoon_v1_ListProChatsResponse *resp)
{
    return list_state(call, req, resp, PSTATE(PUBLISHED), app_now(app_of(call)));
}

int handle_ProfessionalChats_ListSubmitted(rpc_call *call, const lagoon_v1_ListProChatsRequest *req,
                                           lagoon_v1_ListProChatsResponse *resp)
{
    return list_state(call, req, resp, PSTATE(SUBMITTED), INT64_MIN);
}

int handle_ProfessionalChats_ListHosted(rpc_call *call, const lagoon_v1_ListProChatsRequest *req,
                                        lagoon_v1_ListProChatsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    paging_list l = {.item = add_chat, .arg = (void *)call};
    l.query.table = &lagoon_table_pro_chats;
    l.query.index = lagoon_index_pro_chats_by_host;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.reverse = 1;
    return list_page(call, req, resp, &l);
}

int handle_ProfessionalChats_ListRegistered(rpc_call *call, const lagoon_v1_ListProChatsRequest *req,
                                            lagoon_v1_ListProChatsResponse *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, who->user_id);
    paging_list l = {.item = add_seat};
    l.query.table = &lagoon_table_pro_chat_seats;
    l.query.index = lagoon_index_pro_chat_seats_by_user_start;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    int st = list_page(call, req, resp, &l);
    if (st != LAGOON_OK || resp->chats_count == 0)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    pchat *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        store_read_end(t);
        return app_out_of_memory(call);
    }
    pb_size_t n = 0;
    for (pb_size_t i = 0; i < resp->chats_count && st == LAGOON_OK; i++) {
        lagoon_v1_ProChatSeat_Status status = resp->chats[i].my_status;
        st = store_get(t, &lagoon_table_pro_chats, resp->chats[i].chat.id, c, &err);
        if (st == LAGOON_NOT_FOUND) {
            st = LAGOON_OK; /* deleted since the page was read */
            continue;
        }
        if (st == LAGOON_OK) {
            memset(&resp->chats[n], 0, sizeof(resp->chats[n]));
            view_of(c, status == SEAT(REGISTERED), &resp->chats[n]);
            resp->chats[n++].my_status = status;
        }
    }
    store_read_end(t);
    free(c);
    resp->chats_count = n;
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}
