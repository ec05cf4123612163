/* Teaching service: student-teacher relationships, progress records, progress over time.
 *
 * Relationships. One row per (student, teacher) pair (the unique by_pair index). A student asks
 * a teacher (Request) or a teacher invites a student (Invite): the row is PENDING, with who
 * asked (requester) and who answers (addressee). Only the addressee accepts (ACTIVE) or
 * declines (DECLINED); either side removes an ACTIVE one (REMOVED). Asking again after
 * DECLINED or REMOVED makes the same row PENDING again, so a pair never has two rows.
 *
 * Records. Only a teacher with an ACTIVE relationship creates one, for a video of the student
 * that the teacher may read (videos_readable). Access is a policy of relations (access.h): the
 * author (owner) and administrators change it; the student reads it too; to anyone else it does
 * not exist (NOT_FOUND).
 *
 * Summaries. Per student (teacher_id 0) and per pair, one row each, changed in the record's
 * transaction: counts and sums (the averages), and the newest TEACHING_RECENT_MAX values of
 * each score with their records (latest and the trend). A create appends; an update or a
 * delete adjusts the sums and rebuilds the recent values from the newest records, which reads
 * about TEACHING_RECENT_MAX records, more only when few records have a score. Reading a
 * summary is one row whatever the history. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "events.h"
#include "paging.h"
#include "teaching.h"
#include "videos.h"

/* A request's or invitation's limiter window: a day from the first. */
#define TEACHING_REQUEST_WINDOW_MS (24u * 3600u * 1000u)

typedef lagoon_v1_TeachingRelationship relation;
typedef lagoon_v1_ProgressRecord record;
typedef lagoon_v1_ProgressSummary summary;

/* ---- the module: the request limiter -------------------------------------------------------- */

static int teaching_start(app *a, void **state, rpc_error *err)
{
    return app_budget_start(a, a->cfg.teaching_requests, 20, TEACHING_REQUEST_WINDOW_MS, state, err);
}

const app_module teaching_module = {
    .name = "teaching",
    .start = teaching_start,
    .stop = app_budget_stop,
};

static limiter *request_limiter(const app *a)
{
    return app_state(a, &teaching_module);
}

/* ---- relationships ---------------------------------------------------------------------------- */

/* User id into u when it exists and is active; else NOT_FOUND naming field. */
static int active_user(store_txn *t, uint64_t id, const char *field, lagoon_v1_User *u, store_error *err)
{
    int st = store_get(t, &lagoon_table_users, id, u, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u->active))
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such user");
    return st;
}

/* The notification of r's change to user: "<who's username> <what>". */
static int notify(store_txn *t, const app_write_in *in, uint64_t user, lagoon_v1_Notification_Type type,
                  const char *what, uint64_t related_id, store_error *err)
{
    lagoon_v1_User *me = malloc(sizeof(*me));
    if (me == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, in->who.user_id, me, err);
    if (st == LAGOON_OK) {
        char title[200];
        snprintf(title, sizeof(title), "%s %s", me->username, what);
        st = events_notify(t, in->a, user, type, title, "", related_id, "", 0, NULL, err);
    }
    free(me);
    return st;
}

/* Opens the pair (student, teacher) as asked by the caller (who is one of them): a new row,
 * or the pair's declined or removed row pending again. field names the other party. */
static int pair_open(store_txn *t, const app_write_in *in, uint64_t student, uint64_t teacher,
                     lagoon_v1_TeachingRelationship_Initiator initiator, const char *field, relation *r,
                     store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, student);
    store_key_u64(&k, teacher);
    int st = store_get_by(t, &lagoon_table_teaching_relationships, lagoon_index_teaching_relationships_by_pair, &k,
                          NULL, r, err);
    if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
        return st;
    int exists = st == LAGOON_OK;
    if (exists && r->status == lagoon_v1_TeachingRelationship_Status_PENDING)
        return store_fail(err, LAGOON_ALREADY_EXISTS, field, "a request between you is already pending");
    if (exists && r->status == lagoon_v1_TeachingRelationship_Status_ACTIVE)
        return store_fail(err, LAGOON_ALREADY_EXISTS, field, "the relationship is already active");
    if (!exists) {
        wire_init(&lagoon_v1_TeachingRelationship_info, r);
        r->student_id = student;
        r->teacher_id = teacher;
        r->created_at = in->now;
    }
    r->status = lagoon_v1_TeachingRelationship_Status_PENDING;
    r->initiator = initiator;
    r->requester_id = in->who.user_id;
    r->addressee_id = in->who.user_id == student ? teacher : student;
    r->updated_at = in->now;
    st = exists ? store_update(t, &lagoon_table_teaching_relationships, r, err)
                : store_insert(t, &lagoon_table_teaching_relationships, r, NULL, err);
    if (st == LAGOON_OK)
        st = notify(t, in, r->addressee_id, lagoon_v1_Notification_Type_TEACHING_REQUEST,
                    initiator == lagoon_v1_TeachingRelationship_Initiator_STUDENT_REQUEST
                        ? "asked you to be their teacher"
                        : "invited you to be their student",
                    r->id, err);
    return st;
}

static int request_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_TeacherRequest *req = in->req;
    if (req->teacher_id == in->who.user_id)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "teacher_id", "cannot be yourself");
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = active_user(t, req->teacher_id, "teacher_id", u, err);
    if (st == LAGOON_OK && u->role != lagoon_v1_Role_TEACHER)
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, "teacher_id", "is not a teacher");
    free(u);
    if (st == LAGOON_OK)
        st = pair_open(t, in, in->who.user_id, req->teacher_id, lagoon_v1_TeachingRelationship_Initiator_STUDENT_REQUEST,
                       "teacher_id", resp, err);
    return st;
}

static int invite_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_StudentInvite *req = in->req;
    /* A teacher invites: the access level also admits administrators, who are no teachers (and
     * whom no student can Request). */
    if (in->who.role != lagoon_v1_Role_TEACHER)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only a teacher can invite a student");
    if (req->student_id == in->who.user_id)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "student_id", "cannot be yourself");
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = active_user(t, req->student_id, "student_id", u, err);
    free(u);
    if (st == LAGOON_OK)
        st = pair_open(t, in, req->student_id, in->who.user_id, lagoon_v1_TeachingRelationship_Initiator_TEACHER_INVITE,
                       "student_id", resp, err);
    return st;
}

/* Each request notifies another user: a per-user daily budget keeps one account from
 * spamming teachers (or students) with requests (app_write_call_limited: only a call that
 * stores a request counts). */
static int request_call(rpc_call *call, app_write_fn fn)
{
    return app_write_call_limited(call, fn, request_limiter(app_of(call)), "teach", "teaching requests");
}

int handle_Teaching_Request(rpc_call *call, const lagoon_v1_TeacherRequest *req, lagoon_v1_TeachingRelationship *resp)
{
    (void)req;
    (void)resp;
    return request_call(call, request_write);
}

int handle_Teaching_Invite(rpc_call *call, const lagoon_v1_StudentInvite *req, lagoon_v1_TeachingRelationship *resp)
{
    (void)req;
    (void)resp;
    return request_call(call, invite_write);
}

/* What a change of status is: the status it needs, the one it makes, whether only the
 * addressee may make it, and its notification (to the other party; none when what is NULL). */
typedef struct transition {
    lagoon_v1_TeachingRelationship_Status from, to;
    int addressee_only;
    const char *what;
    const char *refused; /* FAILED_PRECONDITION's text when the status is not `from` */
} transition;

static const transition accept_tr = {lagoon_v1_TeachingRelationship_Status_PENDING,
                                     lagoon_v1_TeachingRelationship_Status_ACTIVE, 1, "accepted your request",
                                     "only a pending request can be accepted"};
static const transition decline_tr = {lagoon_v1_TeachingRelationship_Status_PENDING,
                                      lagoon_v1_TeachingRelationship_Status_DECLINED, 1, "declined your request",
                                      "only a pending request can be declined"};
static const transition remove_tr = {lagoon_v1_TeachingRelationship_Status_ACTIVE,
                                     lagoon_v1_TeachingRelationship_Status_REMOVED, 0, NULL,
                                     "only an active relationship can be removed"};

/* Accept, Decline, Remove: in->args is the transition. To a user who is neither party the
 * relationship does not exist. */
static int transition_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_RelationshipIdRequest *req = in->req;
    const transition *tr = in->args;
    relation *r = resp;
    uint64_t me = in->who.user_id;
    int st = store_get(t, &lagoon_table_teaching_relationships, req->relationship_id, r, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && r->student_id != me && r->teacher_id != me))
        return store_fail(err, LAGOON_NOT_FOUND, "relationship_id", "no such relationship");
    if (st != LAGOON_OK)
        return st;
    if (r->status != tr->from)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "%s", tr->refused);
    if (tr->addressee_only && r->addressee_id != me)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the addressee can answer a request");
    r->status = tr->to;
    r->updated_at = in->now;
    st = store_update(t, &lagoon_table_teaching_relationships, r, err);
    if (st == LAGOON_OK && tr->what != NULL)
        st = notify(t, in, r->requester_id, lagoon_v1_Notification_Type_TEACHING_ANSWER, tr->what, r->id, err);
    return st;
}

int handle_Teaching_Accept(rpc_call *call, const lagoon_v1_RelationshipIdRequest *req,
                           lagoon_v1_TeachingRelationship *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, transition_write, &accept_tr);
}

int handle_Teaching_Decline(rpc_call *call, const lagoon_v1_RelationshipIdRequest *req,
                            lagoon_v1_TeachingRelationship *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, transition_write, &decline_tr);
}

int handle_Teaching_Remove(rpc_call *call, const lagoon_v1_RelationshipIdRequest *req,
                           lagoon_v1_TeachingRelationship *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, transition_write, &remove_tr);
}

/* ---- relationship lists ---------------------------------------------------------------------- */

static int add_relation(void *arg, void *item, const void *row)
{
    (void)arg;
    *(relation *)item = *(const relation *)row;
    return 1;
}

/* One page of idx's rows under (the caller, status), the newest change first. */
static int list_relations(rpc_call *call, const lagoon_v1_ListRelationshipsRequest *req,
                          lagoon_v1_ListRelationshipsResponse *resp, const store_index *idx,
                          lagoon_v1_TeachingRelationship_Status status)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    store_key_u32(&prefix, (uint32_t)status);
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListRelationshipsResponse_info,
                     .items_tag = lagoon_v1_ListRelationshipsResponse_relationships_tag, .item = add_relation,
                     .item_size = sizeof(relation)};
    l.query.table = &lagoon_table_teaching_relationships;
    l.query.index = idx;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.reverse = 1;
    int st = paging_read(call, &l);
    resp->relationships = l.items; /* FT_POINTER: freed with the call */
    resp->relationships_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

int handle_Teaching_ListMyTeachers(rpc_call *call, const lagoon_v1_ListRelationshipsRequest *req,
                                   lagoon_v1_ListRelationshipsResponse *resp)
{
    return list_relations(call, req, resp, lagoon_index_teaching_relationships_by_student_status,
                          lagoon_v1_TeachingRelationship_Status_ACTIVE);
}

int handle_Teaching_ListMyStudents(rpc_call *call, const lagoon_v1_ListRelationshipsRequest *req,
                                   lagoon_v1_ListRelationshipsResponse *resp)
{
    return list_relations(call, req, resp, lagoon_index_teaching_relationships_by_teacher_status,
                          lagoon_v1_TeachingRelationship_Status_ACTIVE);
}

int handle_Teaching_ListIncoming(rpc_call *call, const lagoon_v1_ListRelationshipsRequest *req,
                                 lagoon_v1_ListRelationshipsResponse *resp)
{
    return list_relations(call, req, resp, lagoon_index_teaching_relationships_by_addressee_status,
                          lagoon_v1_TeachingRelationship_Status_PENDING);
}

int handle_Teaching_ListOutgoing(rpc_call *call, const lagoon_v1_ListRelationshipsRequest *req,
                                 lagoon_v1_ListRelationshipsResponse *resp)
{
    return list_relations(call, req, resp, lagoon_index_teaching_relationships_by_requester_status,
                          lagoon_v1_TeachingRelationship_Status_PENDING);
}

/* The relationship row's student, into the page's user slot (filled in after the scan). */
static int add_student_id(void *arg, void *item, const void *row)
{
    (void)arg;
    ((lagoon_v1_PublicUser *)item)->id = ((const relation *)row)->student_id;
    return 1;
}

int teaching_list_students(rpc_call *call, const lagoon_v1_ListUsersRequest *req, lagoon_v1_ListUsersResponse *resp)
{
    if (req->name_prefix[0] != '\0' || req->instrument_prefix[0] != '\0')
        return rpc_call_violation(call, req->name_prefix[0] ? "name_prefix" : "instrument_prefix",
                                  "ListTeachers' search only");
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    store_key_u32(&prefix, (uint32_t)lagoon_v1_TeachingRelationship_Status_ACTIVE);
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListUsersResponse_info, .items_tag = lagoon_v1_ListUsersResponse_users_tag,
                     .item = add_student_id, .item_size = sizeof(lagoon_v1_PublicUser)};
    l.query.table = &lagoon_table_teaching_relationships;
    l.query.index = lagoon_index_teaching_relationships_by_teacher_status;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.reverse = 1;
    int st = paging_check(call, &l);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL) {
        store_read_end(t);
        return app_out_of_memory(call);
    }
    st = paging_scan(t, &l, &err);
    /* The students' rows in the same snapshot; a deactivated one is left out of the page. */
    lagoon_v1_PublicUser *items = l.items;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < l.count && st == LAGOON_OK; i++) {
        st = store_get(t, &lagoon_table_users, items[i].id, u, &err);
        if (st == LAGOON_OK && u->active)
            account_public(u, &items[kept++]);
    }
    store_read_end(t);
    free(u);
    resp->users = l.items; /* FT_POINTER: freed with the call */
    resp->users_count = (pb_size_t)kept;
    if (st == LAGOON_OK)
        APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- summaries ------------------------------------------------------------------------------- */

/* Score i of r (ProgressSummary.scores order) into *v; 0 when r has none. */
static int score_of(const record *r, int i, uint32_t *v)
{
    switch (i) {
    case 0:
        *v = r->rating;
        return r->rating != 0;
    case 1:
        *v = r->technique;
        return r->has_technique;
    case 2:
        *v = r->musicality;
        return r->has_musicality;
    case 3:
        *v = r->rhythm;
        return r->has_rhythm;
    default:
        *v = r->overall;
        return r->has_overall;
    }
}

/* average, latest and trend from count, sum and the recent values. */
static void score_derive(lagoon_v1_ScoreSummary *s)
{
    s->average = s->count ? (double)s->sum / (double)s->count : 0.0;
    s->latest = s->recent_count ? s->recent[s->recent_count - 1] : 0;
    s->has_trend = s->recent_count >= TEACHING_RECENT_MAX;
    s->trend = 0.0;
    if (s->has_trend) {
        double older = 0.0, newer = 0.0;
        for (int i = 0; i < TEACHING_TREND_SPAN; i++) {
            older += s->recent[i];
            newer += s->recent[TEACHING_TREND_SPAN + i];
        }
        s->trend = (newer - older) / TEACHING_TREND_SPAN;
    }
}

/* Appends the value of record id, the newest, dropping the oldest past TEACHING_RECENT_MAX. */
static void recent_push(lagoon_v1_ScoreSummary *s, uint32_t v, uint64_t id)
{
    if (s->recent_count == TEACHING_RECENT_MAX) {
        memmove(s->recent, s->recent + 1, (TEACHING_RECENT_MAX - 1) * sizeof(s->recent[0]));
        memmove(s->recent_ids, s->recent_ids + 1, (TEACHING_RECENT_MAX - 1) * sizeof(s->recent_ids[0]));
        s->recent_count = s->recent_ids_count = TEACHING_RECENT_MAX - 1;
    }
    s->recent[s->recent_count++] = v;
    s->recent_ids[s->recent_ids_count++] = id;
}

/* The summary of (student, teacher) into s, or an empty one (s->id 0) when there is none. */
static int summary_load(store_txn *t, uint64_t student, uint64_t teacher, summary *s, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, student);
    store_key_u64(&k, teacher);
    int st = store_get_by(t, &lagoon_table_progress_summaries, lagoon_index_progress_summaries_by_key, &k, NULL, s,
                          err);
    if (st != LAGOON_NOT_FOUND)
        return st;
    wire_init(&lagoon_v1_ProgressSummary_info, s);
    /* wire_init leaves a repeated field's items alone (its count is 0): these are counted. */
    memset(s->scores, 0, sizeof(s->scores));
    s->student_id = student;
    s->teacher_id = teacher;
    s->scores_count = TEACHING_SCORES;
    return LAGOON_OK;
}

/* The values score i of s must keep: its newest TEACHING_RECENT_MAX, or all it has. */
static uint32_t recent_wanted(const lagoon_v1_ScoreSummary *sc)
{
    return sc->count < TEACHING_RECENT_MAX ? sc->count : TEACHING_RECENT_MAX;
}

/* Rebuilds the recent values of the scores in mask (bit i: score i) of s from the newest
 * records of (student, teacher) (teacher 0: all), once the change is stored and the counts are
 * right: reads records newest first until each of those scores has recent_wanted values (so a
 * score that few records have is not searched for past its last one) or none are left. */
static int recent_rebuild(store_txn *t, summary *s, unsigned mask, store_error *err)
{
    lagoon_v1_ScoreSummary *sc = s->scores;
    if (mask == 0)
        return LAGOON_OK;
    for (int i = 0; i < TEACHING_SCORES; i++)
        if (mask & (1u << i))
            sc[i].recent_count = sc[i].recent_ids_count = 0;
    app_id_page *page = malloc(sizeof(*page));
    record *r = malloc(sizeof(*r));
    if (page == NULL || r == NULL) {
        free(page);
        free(r);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, s->student_id);
    if (s->teacher_id)
        store_key_u64(&prefix, s->teacher_id);
    store_query q = {.table = &lagoon_table_progress_records,
                     .index = s->teacher_id ? lagoon_index_progress_records_by_student_teacher
                                            : lagoon_index_progress_records_by_student,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .reverse = 1,
                     .page_size = STORE_PAGE_SIZE_MAX};
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int full = 1, st = LAGOON_OK;
    for (int i = 0; i < TEACHING_SCORES; i++)
        full = full && (!(mask & (1u << i)) || recent_wanted(&sc[i]) == 0);
    /* Newest first into the arrays, reversed at the end (oldest first, as recent_push keeps). */
    while (st == LAGOON_OK && !full) {
        q.page_token = token;
        st = app_scan_ids(t, &q, page, err);
        for (uint32_t n = 0; n < page->n && st == LAGOON_OK && !full; n++) {
            st = store_get(t, &lagoon_table_progress_records, page->ids[n], r, err);
            full = 1;
            for (int i = 0; i < TEACHING_SCORES && st == LAGOON_OK; i++) {
                if (!(mask & (1u << i)))
                    continue;
                uint32_t v;
                if (sc[i].recent_count < recent_wanted(&sc[i]) && score_of(r, i, &v)) {
                    sc[i].recent[sc[i].recent_count++] = v;
                    sc[i].recent_ids[sc[i].recent_ids_count++] = r->id;
                }
                full = full && sc[i].recent_count >= recent_wanted(&sc[i]);
            }
        }
        memcpy(token, page->next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    for (int i = 0; i < TEACHING_SCORES; i++)
        for (pb_size_t a = 0, b = sc[i].recent_count; (mask & (1u << i)) && b > 0 && a < b - 1; a++, b--) {
            uint32_t v = sc[i].recent[a];
            sc[i].recent[a] = sc[i].recent[b - 1];
            sc[i].recent[b - 1] = v;
            uint64_t id = sc[i].recent_ids[a];
            sc[i].recent_ids[a] = sc[i].recent_ids[b - 1];
            sc[i].recent_ids[b - 1] = id;
        }
    free(page);
    free(r);
    return st;
}

static int in_recent(const lagoon_v1_ScoreSummary *sc, uint64_t id)
{
    for (pb_size_t k = 0; k < sc->recent_ids_count; k++)
        if (sc->recent_ids[k] == id)
            return 1;
    return 0;
}

/* Applies one record change to the summary of (student, teacher): old (NULL: created) leaves,
 * new_r (NULL: deleted) comes. Both are of that pair. Only the scores whose recent values the
 * change can move are rebuilt: a record among them changed or went, or a record gained a score
 * (it may belong among them). defer: no rebuild (a bulk delete rebuilds each summary once, at
 * its end: summaries_rebuild). */
static int summary_apply(store_txn *t, int64_t now, uint64_t student, uint64_t teacher, const record *old,
                         const record *new_r, int defer, store_error *err)
{
    summary *s = malloc(sizeof(*s));
    if (s == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = summary_load(t, student, teacher, s, err);
    if (st == LAGOON_OK) {
        if (old == NULL)
            s->count++;
        else if (new_r == NULL)
            s->count--;
        for (int i = 0; i < TEACHING_SCORES; i++) {
            uint32_t v;
            if (old != NULL && score_of(old, i, &v)) {
                s->scores[i].count--;
                s->scores[i].sum -= v;
            }
            if (new_r != NULL && score_of(new_r, i, &v)) {
                s->scores[i].count++;
                s->scores[i].sum += v;
                if (old == NULL)
                    recent_push(&s->scores[i], v, new_r->id);
            }
        }
        unsigned mask = 0;
        for (int i = 0; i < TEACHING_SCORES && old != NULL; i++) {
            uint32_t v;
            int had = score_of(old, i, &v), has = new_r != NULL && score_of(new_r, i, &v);
            if ((had && in_recent(&s->scores[i], old->id)) || (has && !had))
                mask |= 1u << i;
        }
        if (!defer)
            st = recent_rebuild(t, s, mask, err);
    }
    if (st == LAGOON_OK) {
        for (int i = 0; i < TEACHING_SCORES; i++)
            score_derive(&s->scores[i]);
        s->updated_at = now;
        st = s->id ? store_update(t, &lagoon_table_progress_summaries, s, err)
                   : store_insert(t, &lagoon_table_progress_summaries, s, NULL, err);
    }
    free(s);
    return st;
}

/* The student's summary and the pair's, after the record change is stored. */
static int summaries_apply(store_txn *t, int64_t now, const record *old, const record *new_r, store_error *err)
{
    const record *r = new_r ? new_r : old;
    int st = summary_apply(t, now, r->student_id, 0, old, new_r, 0, err);
    if (st == LAGOON_OK)
        st = summary_apply(t, now, r->student_id, r->teacher_id, old, new_r, 0, err);
    return st;
}

/* The summaries a bulk delete changed, rebuilt once each at its end. */
typedef struct summary_key {
    uint64_t student, teacher;
} summary_key;

typedef struct summary_keys {
    summary_key *k;
    size_t n, cap;
} summary_keys;

static int key_cmp(const void *a, const void *b)
{
    const summary_key *x = a, *y = b;
    if (x->student != y->student)
        return x->student < y->student ? -1 : 1;
    return x->teacher < y->teacher ? -1 : x->teacher > y->teacher;
}

static int keys_add(summary_keys *ks, uint64_t student, uint64_t teacher)
{
    for (size_t i = ks->n; i-- > 0 && i + 8 >= ks->n;) /* records come grouped: the last few */
        if (ks->k[i].student == student && ks->k[i].teacher == teacher)
            return 0;
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? ks->cap * 2 : 64;
        void *k = realloc(ks->k, cap * sizeof(*ks->k));
        if (k == NULL)
            return -1;
        ks->k = k;
        ks->cap = cap;
    }
    ks->k[ks->n].student = student;
    ks->k[ks->n].teacher = teacher;
    ks->n++;
    return 0;
}

/* Rebuilds every score's recent values and derived figures of summary (student, teacher). */
static int summary_rebuild(store_txn *t, int64_t now, uint64_t student, uint64_t teacher, store_error *err)
{
    summary *s = malloc(sizeof(*s));
    if (s == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = summary_load(t, student, teacher, s, err);
    if (st == LAGOON_OK && s->id != 0) {
        st = recent_rebuild(t, s, (1u << TEACHING_SCORES) - 1, err);
        for (int i = 0; i < TEACHING_SCORES && st == LAGOON_OK; i++)
            score_derive(&s->scores[i]);
        s->updated_at = now;
        if (st == LAGOON_OK)
            st = store_update(t, &lagoon_table_progress_summaries, s, err);
    }
    free(s);
    return st;
}

/* Deletes the records of idx under key id one by one, taking each out of its summaries' counts
 * and sums, so that a cascade that follows finds none (it would leave the summaries counting
 * them); then rebuilds each summary it changed once. The pair summaries of a teacher whose
 * account goes (skip_teacher) are left to their cascade. */
static int records_delete_under(store_txn *t, int64_t now, const store_index *idx, uint64_t id,
                                uint64_t skip_teacher, store_error *err)
{
    summary_keys ks = {0};
    app_id_page *page = malloc(sizeof(*page)); /* 4 KiB */
    record *r = malloc(sizeof(*r));
    if (page == NULL || r == NULL) {
        free(page);
        free(r);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, id);
    store_query q = {.table = &lagoon_table_progress_records, .index = idx, .prefix = prefix.buf,
                     .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int st;
    do {
        q.page_token = token;
        st = app_scan_ids(t, &q, page, err);
        for (uint32_t i = 0; i < page->n && st == LAGOON_OK; i++) {
            st = store_get(t, &lagoon_table_progress_records, page->ids[i], r, err);
            if (st == LAGOON_OK)
                st = app_forget_results(t, &lagoon_method_Teaching_CreateRecord, r->id, err);
            if (st == LAGOON_OK)
                st = store_delete(t, &lagoon_table_progress_records, r->id, err);
            if (st == LAGOON_OK)
                st = summary_apply(t, now, r->student_id, 0, r, NULL, 1, err);
            if (st == LAGOON_OK && r->teacher_id != skip_teacher)
                st = summary_apply(t, now, r->student_id, r->teacher_id, r, NULL, 1, err);
            if (st == LAGOON_OK &&
                (keys_add(&ks, r->student_id, 0) != 0 ||
                 (r->teacher_id != skip_teacher && keys_add(&ks, r->student_id, r->teacher_id) != 0)))
                st = store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        }
        memcpy(token, page->next_page_token, sizeof(token));
    } while (st == LAGOON_OK && token[0] != '\0');
    if (ks.n > 1)
        qsort(ks.k, ks.n, sizeof(*ks.k), key_cmp);
    for (size_t i = 0; i < ks.n && st == LAGOON_OK; i++)
        if (i == 0 || ks.k[i].student != ks.k[i - 1].student || ks.k[i].teacher != ks.k[i - 1].teacher)
            st = summary_rebuild(t, now, ks.k[i].student, ks.k[i].teacher, err);
    free(ks.k);
    free(page);
    free(r);
    return st;
}

int teaching_video_deleting(store_txn *t, int64_t now, uint64_t video_id, store_error *err)
{
    return records_delete_under(t, now, lagoon_index_progress_records_by_video, video_id, 0, err);
}

/* Forgets the kept CreateRecord responses of the records of user_id as a student (they go with
 * the account's cascade, which knows nothing of kept responses). */
static int forget_record(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)arg;
    return app_forget_results(t, &lagoon_method_Teaching_CreateRecord, id, err);
}

static int forget_student_records(store_txn *t, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = &lagoon_table_progress_records, .index = lagoon_index_progress_records_by_student,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, forget_record, NULL, err);
}

int teaching_user_deleting(store_txn *t, int64_t now, uint64_t user_id, store_error *err)
{
    /* As a student its records and summaries go with it (their references cascade): only the
     * kept responses need forgetting. As a teacher its records leave its students' summaries
     * over all teachers (the pair summaries go with the account). */
    int st = forget_student_records(t, user_id, err);
    return st == LAGOON_OK ? records_delete_under(t, now, lagoon_index_progress_records_by_teacher, user_id, user_id, err)
                           : st;
}

/* ---- records ---------------------------------------------------------------------------------- */

static int is_student(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)err;
    *holds = ((const record *)res)->student_id == who->user_id;
    return LAGOON_OK;
}

/* The author (owner) and administrators change a record; its student reads it; no one else
 * learns it exists. */
static const app_policy record_policy = {
    .grants = {[APP_READ] = APP_REL_OWNER | APP_REL_ADMIN | APP_REL_SHARED,
               [APP_CHANGE] = APP_REL_OWNER | APP_REL_ADMIN},
    .resolve = {[APP_REL_SHARED_BIT] = is_student},
    .not_found = "no such record",
    .denied = {[APP_CHANGE] = "only its author or an administrator can change a record"},
};

/* Record id into r when the caller may do action to it; NOT_FOUND naming record_id else. */
static int record_for(store_txn *t, const rpc_caller *who, uint64_t id, enum app_action action, record *r,
                      store_error *err)
{
    int st = store_get(t, &lagoon_table_progress_records, id, r, err);
    if (st == LAGOON_OK)
        st = app_check(t, who, &record_policy, action, r, r->teacher_id, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, "record_id", "no such record");
    return st;
}

/* Every comment id must be a comment of video_id ("comment_ids[i]" names the first that is not). */
static int comments_of_video(store_txn *t, const uint64_t *ids, size_t n, uint64_t video_id, store_error *err)
{
    lagoon_v1_Comment *c = malloc(sizeof(*c));
    if (c == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (size_t i = 0; i < n && st == LAGOON_OK; i++) {
        st = store_get(t, &lagoon_table_comments, ids[i], c, err);
        if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && c->video_id != video_id)) {
            char field[40]; /* "comment_ids[" and any size_t */
            snprintf(field, sizeof(field), "comment_ids[%zu]", i);
            st = store_fail(err, LAGOON_INVALID_ARGUMENT, field, "is not a comment of the record's video");
        }
    }
    free(c);
    return st;
}

static int has_score(const record *r)
{
    return r->has_technique || r->has_musicality || r->has_rhythm || r->has_overall;
}

static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CreateRecordRequest *req = in->req;
    record *r = resp;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, req->student_id);
    store_key_u64(&k, in->who.user_id);
    relation *rel = malloc(sizeof(*rel));
    lagoon_v1_Video *v = calloc(1, sizeof(*v)); /* ~37 KiB */
    if (rel == NULL || v == NULL) {
        free(rel);
        free(v);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = store_get_by(t, &lagoon_table_teaching_relationships, lagoon_index_teaching_relationships_by_pair, &k,
                          NULL, rel, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && rel->status != lagoon_v1_TeachingRelationship_Status_ACTIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "you are not an active teacher of this student");
    if (st == LAGOON_OK)
        st = videos_readable(t, &in->who, req->video_id, "video_id", v, NULL, err);
    if (st == LAGOON_OK && v->owner_id != req->student_id)
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, "video_id", "is not the student's video");
    if (st == LAGOON_OK)
        st = comments_of_video(t, req->comment_ids, req->comment_ids_count, req->video_id, err);
    if (st == LAGOON_OK) {
        r->student_id = req->student_id;
        r->teacher_id = in->who.user_id;
        r->video_id = req->video_id;
        r->rating = req->rating;
        r->has_technique = req->has_technique;
        r->technique = req->technique;
        r->has_musicality = req->has_musicality;
        r->musicality = req->musicality;
        r->has_rhythm = req->has_rhythm;
        r->rhythm = req->rhythm;
        r->has_overall = req->has_overall;
        r->overall = req->overall;
        APP_STRCPY(r->notes, req->notes);
        memcpy(r->comment_ids, req->comment_ids, req->comment_ids_count * sizeof(r->comment_ids[0]));
        r->comment_ids_count = req->comment_ids_count;
        r->created_at = r->updated_at = in->now;
        st = store_insert(t, &lagoon_table_progress_records, r, NULL, err);
    }
    if (st == LAGOON_OK)
        st = summaries_apply(t, in->now, NULL, r, err);
    if (st == LAGOON_OK)
        st = notify(t, in, r->student_id, lagoon_v1_Notification_Type_PROGRESS_RECORD, "recorded your progress", r->id,
                    err);
    if (st == LAGOON_OK)
        app_result_shows(in, r->id); /* DeleteRecord drops the kept response */
    free(rel);
    free(v);
    return st;
}

int handle_Teaching_CreateRecord(rpc_call *call, const lagoon_v1_CreateRecordRequest *req, lagoon_v1_ProgressRecord *resp)
{
    (void)resp;
    if (!req->has_technique && !req->has_musicality && !req->has_rhythm && !req->has_overall)
        return rpc_call_violation(call, "technique", "at least one of technique, musicality, rhythm, overall is required");
    return app_write_call(call, create_write, NULL);
}

static int update_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateRecordRequest *req = in->req;
    record *r = resp;
    record *old = malloc(sizeof(*old));
    if (old == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = record_for(t, &in->who, req->record_id, APP_CHANGE, r, err);
    if (st == LAGOON_OK) {
        *old = *r;
        if (req->has_rating)
            r->rating = req->rating;
#define TEACHING_SET(f)                                                                                                \
    do {                                                                                                               \
        if (req->clear_##f)                                                                                            \
            r->has_##f = false, r->f = 0;                                                                              \
        if (req->has_##f)                                                                                              \
            r->has_##f = true, r->f = req->f;                                                                          \
    } while (0)
        TEACHING_SET(technique);
        TEACHING_SET(musicality);
        TEACHING_SET(rhythm);
        TEACHING_SET(overall);
#undef TEACHING_SET
        if (req->has_notes)
            APP_STRCPY(r->notes, req->notes);
        if (req->set_comment_ids) {
            memcpy(r->comment_ids, req->comment_ids, req->comment_ids_count * sizeof(r->comment_ids[0]));
            r->comment_ids_count = req->comment_ids_count;
            st = comments_of_video(t, r->comment_ids, r->comment_ids_count, r->video_id, err);
        }
    }
    if (st == LAGOON_OK && !has_score(r))
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, "technique",
                        "at least one of technique, musicality, rhythm, overall is required");
    if (st == LAGOON_OK) {
        r->updated_at = in->now;
        st = store_update(t, &lagoon_table_progress_records, r, err);
    }
    if (st == LAGOON_OK)
        st = summaries_apply(t, in->now, old, r, err);
    free(old);
    return st;
}

int handle_Teaching_UpdateRecord(rpc_call *call, const lagoon_v1_UpdateRecordRequest *req, lagoon_v1_ProgressRecord *resp)
{
    (void)resp;
    if (!req->set_comment_ids && req->comment_ids_count)
        return rpc_call_violation(call, "set_comment_ids", "must be true to change comment_ids");
    return app_write_call(call, update_write, NULL);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_RecordIdRequest *req = in->req;
    record *r = malloc(sizeof(*r));
    if (r == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = record_for(t, &in->who, req->record_id, APP_CHANGE, r, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_Teaching_CreateRecord, r->id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_progress_records, r->id, err);
    if (st == LAGOON_OK)
        st = summaries_apply(t, in->now, r, NULL, err);
    free(r);
    return st;
}

int handle_Teaching_DeleteRecord(rpc_call *call, const lagoon_v1_RecordIdRequest *req, lagoon_v1_TeachingEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}

int handle_Teaching_GetRecord(rpc_call *call, const lagoon_v1_RecordIdRequest *req, lagoon_v1_ProgressRecord *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = record_for(t, rpc_call_caller(call), req->record_id, APP_READ, resp, &err);
    store_read_end(t);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- record lists ---------------------------------------------------------------------------- */

/* The rows of a scan the caller may read (a video's records hold others'). */
static int add_record(void *arg, void *item, const void *row)
{
    const rpc_caller *who = arg;
    const record *r = row;
    if (who != NULL && r->student_id != who->user_id && r->teacher_id != who->user_id &&
        who->role != lagoon_v1_Role_ADMIN)
        return 0;
    *(record *)item = *r;
    return 1;
}

/* One page, newest first, of idx's rows under (a, b) (b 0: under a). */
static int list_records(rpc_call *call, const lagoon_v1_ListRecordsRequest *req, lagoon_v1_ListRecordsResponse *resp,
                        const store_index *idx, uint64_t a, uint64_t b, const rpc_caller *filter)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, a);
    if (b)
        store_key_u64(&prefix, b);
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListRecordsResponse_info,
                     .items_tag = lagoon_v1_ListRecordsResponse_records_tag, .item = add_record,
                     .arg = (void *)filter, .item_size = sizeof(record)};
    l.query.table = &lagoon_table_progress_records;
    l.query.index = idx;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.reverse = 1;
    int st = paging_read(call, &l);
    resp->records = l.items; /* FT_POINTER: freed with the call */
    resp->records_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

static int is_admin(const rpc_caller *who)
{
    return who->role == lagoon_v1_Role_ADMIN;
}

int handle_Teaching_ListStudentRecords(rpc_call *call, const lagoon_v1_ListRecordsRequest *req,
                                       lagoon_v1_ListRecordsResponse *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    uint64_t student = req->student_id ? req->student_id : who->user_id;
    if (student != who->user_id && !is_admin(who))
        return rpc_call_error(call, LAGOON_NOT_FOUND, "no such student's records");
    if (req->teacher_id && req->video_id)
        return rpc_call_violation(call, "video_id", "use either teacher_id or video_id, not both");
    if (req->teacher_id)
        return list_records(call, req, resp, lagoon_index_progress_records_by_student_teacher, student,
                            req->teacher_id, NULL);
    if (req->video_id)
        return list_records(call, req, resp, lagoon_index_progress_records_by_student_video, student, req->video_id,
                            NULL);
    return list_records(call, req, resp, lagoon_index_progress_records_by_student, student, 0, NULL);
}

int handle_Teaching_ListTeacherRecords(rpc_call *call, const lagoon_v1_ListRecordsRequest *req,
                                       lagoon_v1_ListRecordsResponse *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    uint64_t teacher = req->teacher_id ? req->teacher_id : who->user_id;
    if (teacher != who->user_id && !is_admin(who))
        return rpc_call_error(call, LAGOON_NOT_FOUND, "no such teacher's records");
    if (req->video_id)
        return rpc_call_violation(call, "video_id", "not a filter of a teacher's records");
    if (req->student_id)
        return list_records(call, req, resp, lagoon_index_progress_records_by_teacher_student, teacher,
                            req->student_id, NULL);
    return list_records(call, req, resp, lagoon_index_progress_records_by_teacher, teacher, 0, NULL);
}

int handle_Teaching_ListVideoRecords(rpc_call *call, const lagoon_v1_ListRecordsRequest *req,
                                     lagoon_v1_ListRecordsResponse *resp)
{
    if (req->video_id == 0)
        return rpc_call_violation(call, "video_id", "is required");
    if (req->student_id || req->teacher_id)
        return rpc_call_violation(call, req->student_id ? "student_id" : "teacher_id", "not a filter of a video's records");
    return list_records(call, req, resp, lagoon_index_progress_records_by_video, req->video_id, 0,
                        rpc_call_caller(call));
}

int handle_Teaching_GetSummary(rpc_call *call, const lagoon_v1_GetSummaryRequest *req, lagoon_v1_ProgressSummary *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    uint64_t student = req->student_id ? req->student_id : who->user_id;
    /* The student's own, a pair's to its teacher, any to an administrator. */
    store_error err;
    if (student != who->user_id && !is_admin(who) && req->teacher_id != who->user_id)
        return app_store_error(call, store_fail(&err, LAGOON_NOT_FOUND, "student_id", "no such summary"), &err);
    store_txn *t;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = summary_load(t, student, req->teacher_id, resp, &err);
    store_read_end(t);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}
