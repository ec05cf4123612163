/* Groups service: groups, their members and roles.
 *
 * A group has one GroupMember row per user who belongs to it, asked to join it or was invited
 * (unique per (group, user)): ACTIVE, REQUESTED or INVITED, with a role (OWNER, ADMIN, MEMBER).
 * The group's owner_id and its OWNER row change together (TransferOwnership); member_count is
 * the number of ACTIVE rows, kept in the transaction that changes one. Each ACTIVE member is a
 * member of the group's topic (events_topic_join when the row becomes ACTIVE, events_topic_leave
 * when it goes), so that what is published to the group reaches every member's subscription.
 *
 * Who sees a group: a public group every signed-in user; a private group its ACTIVE and
 * INVITED members (and site administrators). To anyone else a private group does not exist
 * (NOT_FOUND), except that Join on its id asks to join. Acting as an admin of a group (Update,
 * Approve, Reject, Invite, Remove, the request and invitation lists) takes an ACTIVE OWNER or
 * ADMIN row; a member without it who sees the group is PERMISSION_DENIED. Every call reads the
 * rows it decides on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "groupchat.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "paging.h"
#include "threads.h"

typedef lagoon_v1_Group group;
typedef lagoon_v1_GroupMember member;

#define ROLE(r) lagoon_v1_GroupMember_Role_##r
#define STATE(s) lagoon_v1_GroupMember_State_##s

/* ---- the module: the Join/Invite limiter ------------------------------------------------------ */

static int groups_start(app *a, void **state, rpc_error *err)
{
    return app_budget_start(a, a->cfg.group_requests, GROUPS_REQUESTS_PER_HOUR, 3600u * 1000u, state, err);
}

const app_module groups_module = {
    .name = "groups",
    .start = groups_start,
    .stop = app_budget_stop,
};

/* Join and Invite: each may notify other users (a request its group's admins, an invitation
 * its invitee), so a per-user budget counts the calls that store something. */
static int request_call(rpc_call *call, app_write_fn fn)
{
    return app_write_call_limited(call, fn, app_state(app_of(call), &groups_module), "group",
                                  "join requests and invitations");
}

int groups_public_time_key(const void *row, store_key *k)
{
    const group *g = row;
    if (g->visibility != lagoon_v1_Group_Visibility_PUBLIC)
        return 0;
    store_key_i64(k, g->created_at);
    return 1;
}

int groups_public_name_key(const void *row, store_key *k)
{
    const group *g = row;
    if (g->visibility != lagoon_v1_Group_Visibility_PUBLIC)
        return 0;
    store_key_str_fold(k, g->name);
    return 1;
}

static lagoon_v1_Topic group_topic(uint64_t id)
{
    lagoon_v1_Topic topic = {.kind = lagoon_v1_Topic_Kind_GROUP, .id = id};
    return topic;
}

/* ---- rows ------------------------------------------------------------------------------------- */

/* User uid's row of group gid into m: LAGOON_OK, NOT_FOUND (none), or a read error. */
static int member_get(store_txn *t, uint64_t gid, uint64_t uid, member *m, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, gid);
    store_key_u64(&k, uid);
    return store_get_by(t, &lagoon_table_group_members, lagoon_index_group_members_by_group_user, &k, NULL, m, err);
}

static int is_admin_row(const member *m)
{
    return m->state == STATE(ACTIVE) && (m->role == ROLE(OWNER) || m->role == ROLE(ADMIN));
}

/* What the caller is to a group, read in the decision's transaction. */
typedef struct standing {
    int has_row; /* me holds the caller's row */
    member me;
} standing;

static int no_group(store_error *err)
{
    return store_fail(err, LAGOON_NOT_FOUND, "group_id", "no such group");
}

/* Reads group id into g and the caller's row into s when the caller may see the group; else
 * NOT_FOUND naming group_id (a missing group too). */
static int group_seen(store_txn *t, const rpc_caller *who, uint64_t id, group *g, standing *s, store_error *err)
{
    s->has_row = 0;
    int st = store_get(t, &lagoon_table_groups, id, g, err);
    if (st == LAGOON_NOT_FOUND)
        return no_group(err);
    if (st != LAGOON_OK)
        return st;
    st = member_get(t, id, who->user_id, &s->me, err);
    if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
        return st;
    s->has_row = st == LAGOON_OK;
    int member_sees = s->has_row && (s->me.state == STATE(ACTIVE) || s->me.state == STATE(INVITED));
    if (g->visibility == lagoon_v1_Group_Visibility_PUBLIC || member_sees || who->role == lagoon_v1_Role_ADMIN)
        return LAGOON_OK;
    return no_group(err);
}

/* group_seen, and the caller is an active owner or admin of it; else PERMISSION_DENIED. */
static int group_admin(store_txn *t, const rpc_caller *who, uint64_t id, group *g, standing *s, store_error *err)
{
    int st = group_seen(t, who, id, g, s, err);
    if (st == LAGOON_OK && !(s->has_row && is_admin_row(&s->me)))
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the group's owner and admins can do this");
    return st;
}

int groups_active_member(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, member *m,
                         store_error *err)
{
    member row;
    member *r = m ? m : &row;
    int st = member_get(t, id, who->user_id, r, err);
    if (st == LAGOON_OK && r->state != STATE(ACTIVE))
        st = LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such group");
    return st;
}

/* The rows of index ix of group_members under (id, state), counted up to cap (<=
 * STORE_PAGE_SIZE_MAX: one page of ids): the pending caps need no more than "at the cap". */
static int count_state(store_txn *t, const store_index *ix, uint64_t id, lagoon_v1_GroupMember_State state, uint32_t cap,
                       uint32_t *n, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, id);
    store_key_u32(&prefix, (uint32_t)state);
    store_query q = {.table = &lagoon_table_group_members, .index = ix, .prefix = prefix.buf,
                     .prefix_len = prefix.len, .page_size = cap};
    app_id_page page;
    int st = app_scan_ids(t, &q, &page, err);
    *n = page.n;
    return st;
}

/* RESOURCE_EXHAUSTED when group gid (by_group_state_role) or user uid (by_user) already has
 * its most pending rows of state; else LAGOON_OK. */
static int pending_room(store_txn *t, uint64_t gid, uint64_t uid, lagoon_v1_GroupMember_State state,
                        store_error *err)
{
    int requests = state == STATE(REQUESTED);
    uint32_t group_cap = requests ? GROUPS_PENDING_REQUESTS_MAX : GROUPS_PENDING_INVITATIONS_MAX;
    uint32_t user_cap = requests ? GROUPS_USER_REQUESTS_MAX : GROUPS_USER_INVITATIONS_MAX;
    uint32_t n = 0;
    int st = count_state(t, lagoon_index_group_members_by_group_state_role, gid, state, group_cap, &n, err);
    if (st == LAGOON_OK && n >= group_cap)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          requests ? "the group has %u join requests waiting, the most it may have"
                                   : "the group has %u invitations waiting, the most it may have",
                          group_cap);
    if (st == LAGOON_OK)
        st = count_state(t, lagoon_index_group_members_by_user, uid, state, user_cap, &n, err);
    if (st == LAGOON_OK && n >= user_cap)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          requests ? "you have %u join requests waiting, the most a user may have"
                                   : "the user has %u invitations waiting, the most a user may have",
                          user_cap);
    return st;
}

/* Makes m ACTIVE (a new row when m->id is 0): counts it in g, joins it to the group's topic,
 * and stores both. g is stored by the caller's write through this function only. */
static int activate(store_txn *t, const app_write_in *in, group *g, member *m, store_error *err)
{
    if (g->member_count >= GROUPS_MEMBERS_MAX)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "the group has %u members, the most it may have",
                          GROUPS_MEMBERS_MAX);
    m->state = STATE(ACTIVE);
    m->joined_at = in->now;
    m->invited_by = 0;
    if (m->role == ROLE(ROLE_UNSPECIFIED))
        m->role = ROLE(MEMBER);
    /* The chat from before joining is not unread. */
    int st = groupchat_newest(t, g->id, &m->read_up_to, err);
    if (st != LAGOON_OK)
        return st;
    st = m->id ? store_update(t, &lagoon_table_group_members, m, err)
                   : store_insert(t, &lagoon_table_group_members, m, NULL, err);
    lagoon_v1_Topic topic = group_topic(g->id);
    if (st == LAGOON_OK)
        st = events_topic_join(t, in->a, m->user_id, &topic, err);
    g->member_count++;
    g->last_activity_at = in->now;
    return st == LAGOON_OK ? store_update(t, &lagoon_table_groups, g, err) : st;
}

/* Deletes row m (of group g); an ACTIVE one is counted out and leaves the group's topic. */
static int member_drop(store_txn *t, const app_write_in *in, group *g, const member *m, store_error *err)
{
    int st = store_delete(t, &lagoon_table_group_members, m->id, err);
    if (st != LAGOON_OK || m->state != STATE(ACTIVE))
        return st;
    lagoon_v1_Topic topic = group_topic(g->id);
    st = events_topic_leave(t, in->a, m->user_id, &topic, err);
    if (st == LAGOON_OK) /* and its threads' topics, when it no longer sees them (a private group) */
        st = threads_group_access_lost(t, in, m->user_id, g->id, err);
    if (g->member_count > 0)
        g->member_count--;
    g->last_activity_at = in->now;
    return st == LAGOON_OK ? store_update(t, &lagoon_table_groups, g, err) : st;
}

/* Admins of a group told of one join request, at most: the owner first, then admins by join
 * time, so that a request costs a bounded number of rows whatever the number of admins. */
#define GROUPS_NOTIFIED_ADMINS_MAX 20

/* Notifies user of group g (unless the user muted the group: muted is the user's row's):
 * "<group name>: <what> <the caller's username>" or without the name when by_caller is 0. */
static int notify(store_txn *t, const app_write_in *in, const group *g, uint64_t user, int muted,
                  lagoon_v1_Notification_Type type, const char *what, int by_caller, store_error *err)
{
    if (muted)
        return LAGOON_OK;
    lagoon_v1_User *me = malloc(sizeof(*me));
    if (me == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = by_caller ? store_get(t, &lagoon_table_users, in->who.user_id, me, err) : LAGOON_OK;
    if (st == LAGOON_OK) {
        char title[600];
        snprintf(title, sizeof(title), "%s: %s%s%s", g->name, what, by_caller ? " " : "",
                 by_caller ? me->username : "");
        st = events_notify(t, in->a, user, type, title, "", g->id, "", 0, NULL, err);
    }
    free(me);
    return st;
}

typedef struct admins_ctx {
    const app_write_in *in;
    const group *g;
    uint32_t left;
} admins_ctx;

static int notify_admin(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    admins_ctx *c = arg;
    member m;
    int st = store_get(t, &lagoon_table_group_members, id, &m, err);
    if (st != LAGOON_OK || c->left == 0 || !is_admin_row(&m))
        return st;
    c->left--;
    return notify(t, c->in, c->g, m.user_id, m.muted, lagoon_v1_Notification_Type_GROUP_JOIN_REQUEST,
                  "a request to join from", 1, err);
}

/* The join request of the caller to g, to its first GROUPS_NOTIFIED_ADMINS_MAX admins. */
static int notify_admins(store_txn *t, const app_write_in *in, const group *g, store_error *err)
{
    admins_ctx c = {in, g, GROUPS_NOTIFIED_ADMINS_MAX};
    for (uint32_t role = ROLE(OWNER); role <= ROLE(ADMIN); role++) {
        store_key prefix;
        store_key_reset(&prefix);
        store_key_u64(&prefix, g->id);
        store_key_u32(&prefix, (uint32_t)STATE(ACTIVE));
        store_key_u32(&prefix, role);
        store_query q = {.table = &lagoon_table_group_members,
                         .index = lagoon_index_group_members_by_group_state_role,
                         .prefix = prefix.buf,
                         .prefix_len = prefix.len,
                         .page_size = GROUPS_NOTIFIED_ADMINS_MAX};
        app_id_page page;
        int st = app_scan_ids(t, &q, &page, err);
        for (uint32_t i = 0; i < page.n && st == LAGOON_OK; i++)
            st = notify_admin(t, page.ids[i], &c, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

/* The state a write works on: the group (~8 KB, on the heap) and the caller's standing. */
typedef struct group_work {
    group g;
    standing s;
    member target;
} group_work;

static group_work *work_new(store_error *err)
{
    group_work *w = calloc(1, sizeof(*w));
    if (w == NULL)
        store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    return w;
}

/* ---- Create, Get, Update, Delete ------------------------------------------------------------- */

/* The groups user owns, counted up to GROUPS_OWNED_MAX (one page of the by_owner index). */
static int owned_count(store_txn *t, uint64_t user, uint32_t *n, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user);
    store_query q = {.table = &lagoon_table_groups, .index = lagoon_index_groups_by_owner, .prefix = prefix.buf,
                     .prefix_len = prefix.len, .page_size = GROUPS_OWNED_MAX};
    app_id_page page;
    int st = app_scan_ids(t, &q, &page, err);
    *n = page.n;
    return st;
}

static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CreateGroupRequest *req = in->req;
    group *g = resp;
    uint32_t owned = 0;
    int st = owned_count(t, in->who.user_id, &owned, err);
    if (st != LAGOON_OK)
        return st;
    if (owned >= GROUPS_OWNED_MAX)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "you own %u groups, the most a user may own",
                          GROUPS_OWNED_MAX);
    g->owner_id = in->who.user_id;
    APP_STRCPY(g->name, req->name);
    APP_STRCPY(g->description, req->description);
    g->visibility = req->visibility;
    g->created_at = g->last_activity_at = in->now;
    st = store_insert(t, &lagoon_table_groups, g, NULL, err);
    if (st != LAGOON_OK)
        return st;
    app_result_shows(in, g->id); /* a retried Create answers this group while it lasts */
    member m = {.group_id = g->id, .user_id = in->who.user_id, .role = ROLE(OWNER)};
    return activate(t, in, g, &m, err);
}

int handle_Groups_Create(rpc_call *call, const lagoon_v1_CreateGroupRequest *req, lagoon_v1_Group *resp)
{
    (void)req; /* (its rules in groups.proto checked it) */
    (void)resp;
    return app_write_call(call, create_write, NULL);
}

int handle_Groups_Get(rpc_call *call, const lagoon_v1_GetGroupRequest *req, lagoon_v1_Group *resp)
{
    store_txn *t;
    store_error err;
    standing *s = malloc(sizeof(*s));
    if (s == NULL)
        return app_out_of_memory(call);
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        st = group_seen(t, rpc_call_caller(call), req->group_id, resp, s, &err);
        store_read_end(t);
    }
    free(s);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

static int update_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateGroupRequest *req = in->req;
    group *g = resp;
    standing s;
    int st = group_admin(t, &in->who, req->group_id, g, &s, err);
    if (st != LAGOON_OK)
        return st;
    if (req->has_name)
        APP_STRCPY(g->name, req->name);
    if (req->has_description)
        APP_STRCPY(g->description, req->description);
    if (req->has_visibility)
        g->visibility = req->visibility;
    g->last_activity_at = in->now;
    app_result_shows(in, g->id);
    return store_update(t, &lagoon_table_groups, g, err);
}

int handle_Groups_Update(rpc_call *call, const lagoon_v1_UpdateGroupRequest *req, lagoon_v1_Group *resp)
{
    (void)resp;
    if (req->has_visibility && req->visibility == lagoon_v1_Group_Visibility_VISIBILITY_UNSPECIFIED)
        return rpc_call_violation(call, "visibility", "must be PUBLIC or PRIVATE");
    return app_write_call(call, update_write, NULL);
}

/* Group delete: each active member leaves the topic; the members go by the cascade. */
static int leave_topic(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    member m;
    int st = store_get(t, &lagoon_table_group_members, id, &m, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_Topic topic = group_topic(m.group_id);
    return events_topic_leave(t, in->a, m.user_id, &topic, err);
}

/* A deleted group's topic log goes with it (events_topic_forget). Nothing is published to it in
 * the deleting transaction: the members' leaves (on their own logs) are what they are told. */
static int group_topic_forget(store_txn *t, const app_write_in *in, uint64_t id, store_error *err)
{
    lagoon_v1_Topic tp = group_topic(id);
    return events_topic_forget(t, in->a, &tp, err);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_DeleteGroupRequest *req = in->req;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = group_seen(t, &in->who, req->group_id, &w->g, &w->s, err);
    if (st == LAGOON_OK && w->g.owner_id != in->who.user_id && in->who.role != lagoon_v1_Role_ADMIN)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the group's owner can delete it");
    if (st == LAGOON_OK) {
        store_key prefix;
        store_key_reset(&prefix);
        store_key_u64(&prefix, w->g.id);
        store_key_u32(&prefix, (uint32_t)STATE(ACTIVE));
        store_query q = {.table = &lagoon_table_group_members,
                         .index = lagoon_index_group_members_by_group_state_role,
                         .prefix = prefix.buf,
                         .prefix_len = prefix.len};
        st = app_each_id(t, &q, leave_topic, (void *)in, err);
    }
    if (st == LAGOON_OK) /* nor a retried Edit its chat's words */
        st = groupchat_group_deleting(t, w->g.id, err);
    if (st == LAGOON_OK) /* nor a retried Reply its threads' */
        st = threads_group_deleting(t, in, w->g.id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_groups, w->g.id, err);
    if (st == LAGOON_OK) /* its topic's log (chat, party events) with it: the members left above */
        st = group_topic_forget(t, in, w->g.id, err);
    if (st == LAGOON_OK) /* a retried Create or Update must not bring it back */
        st = app_forget_results(t, &lagoon_method_Groups_Update, w->g.id, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_Groups_Create, w->g.id, err);
    free(w);
    return st;
}

int handle_Groups_Delete(rpc_call *call, const lagoon_v1_DeleteGroupRequest *req, lagoon_v1_GroupsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}

/* Account deletion: each of the user's rows goes by the cascade; what Leave (or, for a group it
 * owns, Delete) does besides is done here first. */
static int user_row_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = store_get(t, &lagoon_table_group_members, id, &w->target, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_groups, w->target.group_id, &w->g, err);
    if (st == LAGOON_OK && w->g.owner_id == w->target.user_id) {
        store_key prefix;
        store_key_reset(&prefix);
        store_key_u64(&prefix, w->g.id);
        store_key_u32(&prefix, (uint32_t)STATE(ACTIVE));
        store_query q = {.table = &lagoon_table_group_members,
                         .index = lagoon_index_group_members_by_group_state_role,
                         .prefix = prefix.buf,
                         .prefix_len = prefix.len};
        st = app_each_id(t, &q, leave_topic, (void *)in, err);
        if (st == LAGOON_OK) /* an admin's retried Update must not show the group it goes with */
            st = app_forget_results(t, &lagoon_method_Groups_Update, w->g.id, err);
        if (st == LAGOON_OK) /* nor a member's retried Edit its chat */
            st = groupchat_group_deleting(t, w->g.id, err);
        if (st == LAGOON_OK) /* nor a retried Reply its threads */
            st = threads_group_deleting(t, in, w->g.id, err);
        if (st == LAGOON_OK)
            st = group_topic_forget(t, in, w->g.id, err);
    } else if (st == LAGOON_OK) {
        st = member_drop(t, in, &w->g, &w->target, err);
    }
    free(w);
    return st;
}

int groups_user_deleting(store_txn *t, const app_write_in *in, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = &lagoon_table_group_members, .index = lagoon_index_group_members_by_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, user_row_going, (void *)in, err);
}

/* ---- the caller's own membership: Join, Leave, AcceptInvite, DeclineInvite ------------------- */

static int join_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_GroupRequest *req = in->req;
    member *m = resp;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    /* A private group is joined by request: its id is enough to ask (it is told out of band). */
    int st = store_get(t, &lagoon_table_groups, req->group_id, &w->g, err);
    if (st != LAGOON_OK) {
        free(w);
        return st == LAGOON_NOT_FOUND ? no_group(err) : st;
    }
    st = member_get(t, req->group_id, in->who.user_id, m, err);
    if (st == LAGOON_OK) {
        if (m->state == STATE(ACTIVE))
            st = store_fail(err, LAGOON_ALREADY_EXISTS, "group_id", "you are already a member of the group");
        else if (m->state == STATE(REQUESTED) && w->g.visibility != lagoon_v1_Group_Visibility_PUBLIC)
            st = store_fail(err, LAGOON_ALREADY_EXISTS, "group_id", "you have already asked to join the group");
        else /* INVITED: joining accepts the invitation; a request to a group made public since
              * is joined as any Join of a public group */
            st = activate(t, in, &w->g, m, err);
    } else if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_GroupMember_info, m);
        m->group_id = req->group_id;
        m->user_id = in->who.user_id;
        m->role = ROLE(MEMBER);
        if (w->g.visibility == lagoon_v1_Group_Visibility_PUBLIC) {
            st = activate(t, in, &w->g, m, err);
        } else {
            m->state = STATE(REQUESTED);
            m->joined_at = in->now;
            st = pending_room(t, w->g.id, m->user_id, STATE(REQUESTED), err);
            if (st == LAGOON_OK)
                st = store_insert(t, &lagoon_table_group_members, m, NULL, err);
            if (st == LAGOON_OK)
                st = notify_admins(t, in, &w->g, err);
        }
    }
    free(w);
    return st;
}

int handle_Groups_Join(rpc_call *call, const lagoon_v1_GroupRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)req;
    (void)resp;
    return request_call(call, join_write);
}

/* The caller's row of group req->group_id and the group, into w; NOT_FOUND when there is no row
 * (or no group), FAILED_PRECONDITION when its state is not want (0: any). */
static int own_row(store_txn *t, const app_write_in *in, group_work *w, lagoon_v1_GroupMember_State want, const char *not_in,
                   store_error *err)
{
    const lagoon_v1_GroupRequest *req = in->req;
    int st = store_get(t, &lagoon_table_groups, req->group_id, &w->g, err);
    if (st == LAGOON_OK)
        st = member_get(t, req->group_id, in->who.user_id, &w->s.me, err);
    if (st == LAGOON_NOT_FOUND)
        return no_group(err);
    if (st == LAGOON_OK && want && w->s.me.state != want)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "%s", not_in);
    return st;
}

static int leave_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = own_row(t, in, w, 0, NULL, err);
    if (st == LAGOON_OK && w->s.me.role == ROLE(OWNER))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL,
                        "the owner must transfer ownership or delete the group to leave it");
    if (st == LAGOON_OK)
        st = member_drop(t, in, &w->g, &w->s.me, err);
    free(w);
    return st;
}

int handle_Groups_Leave(rpc_call *call, const lagoon_v1_GroupRequest *req, lagoon_v1_GroupsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, leave_write, NULL);
}

/* AcceptInvite (args: &answer_accept) or DeclineInvite (&answer_decline). */
static const int answer_accept = 1, answer_decline = 0;

static int answer_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    int accepting = *(const int *)in->args;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = own_row(t, in, w, STATE(INVITED), "you have no invitation to the group", err);
    if (st == LAGOON_OK)
        st = accepting ? activate(t, in, &w->g, &w->s.me, err) : member_drop(t, in, &w->g, &w->s.me, err);
    if (st == LAGOON_OK && accepting)
        memcpy(resp, &w->s.me, sizeof(member));
    free(w);
    return st;
}

int handle_Groups_AcceptInvite(rpc_call *call, const lagoon_v1_GroupRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, answer_write, &answer_accept);
}

int handle_Groups_DeclineInvite(rpc_call *call, const lagoon_v1_GroupRequest *req, lagoon_v1_GroupsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, answer_write, &answer_decline);
}

/* ---- admins acting on a user: Approve, Reject, Invite, Remove, SetRole, TransferOwnership ---- */

/* group_admin for req's group, and the target user's row into w->target (NOT_FOUND naming
 * user_id when it has none). */
static int admin_and_target(store_txn *t, const app_write_in *in, group_work *w, store_error *err)
{
    const lagoon_v1_GroupUserRequest *req = in->req;
    int st = group_admin(t, &in->who, req->group_id, &w->g, &w->s, err);
    if (st != LAGOON_OK)
        return st;
    st = member_get(t, req->group_id, req->user_id, &w->target, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, "user_id", "the user is not in the group");
    return st;
}

/* Approve (args: &decide_approve) or Reject (&decide_reject) a join request. */
static const int decide_approve = 1, decide_reject = 0;

static int decide_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    int approving = *(const int *)in->args;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = admin_and_target(t, in, w, err);
    if (st == LAGOON_OK && w->target.state != STATE(REQUESTED))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the user has not asked to join the group");
    if (st == LAGOON_OK)
        st = approving ? activate(t, in, &w->g, &w->target, err) : member_drop(t, in, &w->g, &w->target, err);
    if (st == LAGOON_OK && approving)
        st = notify(t, in, &w->g, w->target.user_id, w->target.muted,
                    lagoon_v1_Notification_Type_GROUP_REQUEST_APPROVED, "your request to join was approved", 0, err);
    if (st == LAGOON_OK && approving)
        memcpy(resp, &w->target, sizeof(member));
    free(w);
    return st;
}

int handle_Groups_Approve(rpc_call *call, const lagoon_v1_GroupUserRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, decide_write, &decide_approve);
}

int handle_Groups_Reject(rpc_call *call, const lagoon_v1_GroupUserRequest *req, lagoon_v1_GroupsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, decide_write, &decide_reject);
}

static int invite_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_GroupUserRequest *req = in->req;
    member *m = resp;
    group_work *w = work_new(err);
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (w == NULL || u == NULL) {
        free(u);
        free(w);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = group_admin(t, &in->who, req->group_id, &w->g, &w->s, err);
    if (st == LAGOON_OK) {
        st = store_get(t, &lagoon_table_users, req->user_id, u, err);
        if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u->active))
            st = store_fail(err, LAGOON_NOT_FOUND, "user_id", "no such user");
    }
    if (st != LAGOON_OK) {
        free(u);
        free(w);
        return st;
    }
    st = member_get(t, req->group_id, req->user_id, m, err);
    if (st == LAGOON_OK) {
        if (m->state == STATE(REQUESTED)) /* asked already: inviting approves */
            st = activate(t, in, &w->g, m, err);
        else
            st = store_fail(err, LAGOON_ALREADY_EXISTS, "user_id",
                            m->state == STATE(ACTIVE) ? "the user is already a member of the group"
                                                      : "the user is already invited");
    } else if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_GroupMember_info, m);
        m->group_id = req->group_id;
        m->user_id = req->user_id;
        m->role = ROLE(MEMBER);
        m->state = STATE(INVITED);
        m->joined_at = in->now;
        m->invited_by = in->who.user_id;
        st = pending_room(t, m->group_id, m->user_id, STATE(INVITED), err);
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_group_members, m, NULL, err);
        if (st == LAGOON_OK)
            st = notify(t, in, &w->g, m->user_id, 0, lagoon_v1_Notification_Type_GROUP_INVITATION, "an invitation from",
                        1, err);
    }
    free(u);
    free(w);
    return st;
}

int handle_Groups_Invite(rpc_call *call, const lagoon_v1_GroupUserRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "user_id", "you cannot invite yourself");
    return request_call(call, invite_write);
}

/* Whether the caller (row me) outranks the target's role: the owner every other member, an
 * admin only members. */
static int outranks(const member *me, const member *target)
{
    if (me->role == ROLE(OWNER))
        return target->role != ROLE(OWNER);
    return me->role == ROLE(ADMIN) && target->role == ROLE(MEMBER);
}

static int remove_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = admin_and_target(t, in, w, err);
    /* An invitation is withdrawn the same way: an invitee who never answers would otherwise hold
     * a place of GROUPS_PENDING_INVITATIONS_MAX for good. Its invitee is not notified. */
    if (st == LAGOON_OK && w->target.state == STATE(INVITED)) {
        st = member_drop(t, in, &w->g, &w->target, err);
        free(w);
        return st;
    }
    if (st == LAGOON_OK && w->target.state != STATE(ACTIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the user is not a member of the group");
    if (st == LAGOON_OK && !outranks(&w->s.me, &w->target))
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                        w->target.role == ROLE(OWNER) ? "the owner cannot be removed"
                                                      : "only the owner can remove an admin");
    if (st == LAGOON_OK)
        st = member_drop(t, in, &w->g, &w->target, err);
    if (st == LAGOON_OK)
        st = notify(t, in, &w->g, w->target.user_id, w->target.muted, lagoon_v1_Notification_Type_GROUP_REMOVED,
                    "you were removed by", 1, err);
    free(w);
    return st;
}

int handle_Groups_Remove(rpc_call *call, const lagoon_v1_GroupUserRequest *req, lagoon_v1_GroupsEmpty *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "user_id", "use Leave to leave the group");
    return app_write_call(call, remove_write, NULL);
}

/* SetRole, read from "owner: admins; admins: members only" as whose role one may change: the
 * owner changes any other member's (makes and unmakes admins); an admin changes only a
 * MEMBER's (may make a member an admin, never demote another admin or touch the owner). OWNER
 * moves with TransferOwnership. */
static int role_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_SetGroupRoleRequest *req = in->req;
    lagoon_v1_GroupUserRequest target_req = {.group_id = req->group_id, .user_id = req->user_id};
    app_write_in sub = *in;
    sub.req = &target_req;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = admin_and_target(t, &sub, w, err);
    if (st == LAGOON_OK && w->target.state != STATE(ACTIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the user is not a member of the group");
    if (st == LAGOON_OK && !outranks(&w->s.me, &w->target))
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the owner can change an admin's role");
    if (st == LAGOON_OK && w->target.role != req->role) {
        w->target.role = req->role;
        st = store_update(t, &lagoon_table_group_members, &w->target, err);
        if (st == LAGOON_OK)
            st = notify(t, in, &w->g, w->target.user_id, w->target.muted, lagoon_v1_Notification_Type_GROUP_ROLE_CHANGED,
                        req->role == ROLE(ADMIN) ? "you were made an admin by" : "you were made a member by", 1, err);
    }
    if (st == LAGOON_OK)
        memcpy(resp, &w->target, sizeof(member));
    free(w);
    return st;
}

int handle_Groups_SetRole(rpc_call *call, const lagoon_v1_SetGroupRoleRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)resp;
    if (req->role == ROLE(OWNER))
        return rpc_call_violation(call, "role", "use TransferOwnership to make a member the owner");
    /* (The owner's own row would be refused as an admin's, with a message that does not fit.) */
    if (req->user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "user_id", "you cannot change your own role");
    return app_write_call(call, role_write, NULL);
}

/* The owner's row becomes ADMIN, the target's (an active member) OWNER, and the group's
 * owner_id follows. */
static int transfer_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    group *g = resp;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = admin_and_target(t, in, w, err);
    if (st == LAGOON_OK && w->s.me.role != ROLE(OWNER))
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the owner can transfer ownership");
    if (st == LAGOON_OK && w->target.state != STATE(ACTIVE))
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the user is not a member of the group");
    if (st == LAGOON_OK) {
        uint32_t owned = 0;
        st = owned_count(t, w->target.user_id, &owned, err);
        if (st == LAGOON_OK && owned >= GROUPS_OWNED_MAX)
            st = store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "the user owns %u groups, the most a user may own",
                            GROUPS_OWNED_MAX);
    }
    if (st == LAGOON_OK) {
        w->s.me.role = ROLE(ADMIN);
        w->target.role = ROLE(OWNER);
        w->g.owner_id = w->target.user_id;
        w->g.last_activity_at = in->now;
        st = store_update(t, &lagoon_table_group_members, &w->s.me, err);
    }
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_group_members, &w->target, err);
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_groups, &w->g, err);
    if (st == LAGOON_OK)
        memcpy(g, &w->g, sizeof(*g));
    free(w);
    return st;
}

int handle_Groups_TransferOwnership(rpc_call *call, const lagoon_v1_GroupUserRequest *req, lagoon_v1_Group *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "user_id", "you already own the group");
    return app_write_call(call, transfer_write, NULL);
}

/* ---- ListMembers ----------------------------------------------------------------------------- */

static int add_member(void *arg, void *item, const void *row)
{
    (void)arg;
    memcpy(item, row, sizeof(member));
    return 1;
}

int handle_Groups_ListMembers(rpc_call *call, const lagoon_v1_ListGroupMembersRequest *req,
                              lagoon_v1_ListGroupMembersResponse *resp)
{
    lagoon_v1_GroupMember_State state = req->state ? req->state : STATE(ACTIVE);
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->group_id);
    store_key_u32(&prefix, (uint32_t)state);
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListGroupMembersResponse_info,
                     .items_tag = lagoon_v1_ListGroupMembersResponse_members_tag,
                     .item = add_member, .item_size = sizeof(member)};
    l.query.table = &lagoon_table_group_members;
    l.query.index = lagoon_index_group_members_by_group_state_role;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    int st = paging_check(call, &l);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    group_work *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return app_out_of_memory(call);
    const rpc_caller *who = rpc_call_caller(call);
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        /* Requests and invitations are the admins' business; the members, everyone who sees it. */
        st = state == STATE(ACTIVE) ? group_seen(t, who, req->group_id, &w->g, &w->s, &err)
                                    : group_admin(t, who, req->group_id, &w->g, &w->s, &err);
        if (st == LAGOON_OK)
            st = paging_scan(t, &l, &err);
        store_read_end(t);
    }
    free(w);
    resp->members = l.items; /* FT_POINTER: freed with the call */
    resp->members_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    if (st != LAGOON_OK) {
        free(l.items);
        resp->members = NULL;
        resp->members_count = 0;
        return app_store_error(call, st, &err);
    }
    return LAGOON_OK;
}

/* ---- SetMuted ------------------------------------------------------------------------------- */

/* A muted group sends its member no notifications (its topic's events still arrive). */
static int muted_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_SetGroupMutedRequest *req = in->req;
    member *m = resp;
    lagoon_v1_GroupRequest own_req = {.group_id = req->group_id};
    app_write_in sub = *in;
    sub.req = &own_req;
    group_work *w = work_new(err);
    if (w == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = own_row(t, &sub, w, STATE(ACTIVE), "you are not a member of the group", err);
    if (st == LAGOON_OK && w->s.me.muted != req->muted) {
        w->s.me.muted = req->muted;
        st = store_update(t, &lagoon_table_group_members, &w->s.me, err);
    }
    if (st == LAGOON_OK)
        memcpy(m, &w->s.me, sizeof(*m));
    free(w);
    return st;
}

int handle_Groups_SetMuted(rpc_call *call, const lagoon_v1_SetGroupMutedRequest *req, lagoon_v1_GroupMember *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, muted_write, NULL);
}

/* ---- ListPublic, ListMine -------------------------------------------------------------------- */

static int add_group(void *arg, void *item, const void *row)
{
    (void)arg;
    memcpy(item, row, sizeof(group));
    return 1;
}

int handle_Groups_ListPublic(rpc_call *call, const lagoon_v1_ListPublicGroupsRequest *req,
                             lagoon_v1_ListGroupsResponse *resp)
{
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListGroupsResponse_info,
                     .items_tag = lagoon_v1_ListGroupsResponse_groups_tag,
                     .item = add_group, .item_size = sizeof(group)};
    l.query.table = &lagoon_table_groups;
    store_key prefix;
    store_key_reset(&prefix);
    if (req->name_prefix[0]) {
        /* The folded prefix as raw bytes: the index's keys are store_key_str_fold of the name,
         * whose bytes are the folded name's until its terminator. */
        char folded[sizeof(req->name_prefix)];
        size_t n = 0;
        for (; req->name_prefix[n] && n < sizeof(folded) - 1; n++) {
            char c = req->name_prefix[n];
            folded[n] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
        }
        store_key_raw(&prefix, folded, n);
        l.query.index = lagoon_index_groups_public_by_name;
        l.query.prefix = prefix.buf;
        l.query.prefix_len = prefix.len;
    } else {
        l.query.index = lagoon_index_groups_public_by_time;
        l.query.reverse = 1; /* newest first */
    }
    int st = paging_read(call, &l);
    resp->groups = l.items; /* FT_POINTER: freed with the call */
    resp->groups_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

/* ListMine: the caller's ACTIVE rows (at most one page: a user is in at most
 * EVENTS_MAX_TOPICS_PER_USER groups' topics), their groups sorted by last activity. */
typedef struct mine_ctx {
    store_txn *t;
    group *items;
    uint64_t *read_up_to; /* the caller's read position in items[i] */
    uint32_t n, cap;
    int st;
    store_error err;
} mine_ctx;

static int mine_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    mine_ctx *c = arg;
    const member *m = row;
    if (c->st != LAGOON_OK || c->n >= c->cap)
        return LAGOON_OK;
    int st = store_get(c->t, &lagoon_table_groups, m->group_id, &c->items[c->n], &c->err);
    if (st == LAGOON_OK)
        c->read_up_to[c->n++] = m->read_up_to;
    else if (st != LAGOON_NOT_FOUND)
        c->st = st;
    return LAGOON_OK;
}

static int by_activity(const void *a, const void *b)
{
    const group *x = a, *y = b;
    if (x->last_activity_at != y->last_activity_at)
        return x->last_activity_at > y->last_activity_at ? -1 : 1;
    return x->id > y->id ? -1 : x->id < y->id;
}

int handle_Groups_ListMine(rpc_call *call, const lagoon_v1_ListMyGroupsRequest *req, lagoon_v1_ListGroupsResponse *resp)
{
    (void)req;
    mine_ctx c = {.cap = paging_cap(&lagoon_v1_ListGroupsResponse_info, lagoon_v1_ListGroupsResponse_groups_tag)};
    c.items = calloc(c.cap, sizeof(group));
    c.read_up_to = calloc(c.cap, sizeof(*c.read_up_to));
    if (c.items == NULL || c.read_up_to == NULL) {
        free(c.items);
        free(c.read_up_to);
        return app_out_of_memory(call);
    }
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    store_key_u32(&prefix, (uint32_t)STATE(ACTIVE));
    store_query q = {.table = &lagoon_table_group_members, .index = lagoon_index_group_members_by_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = c.cap};
    store_page page;
    int st = store_read_begin(app_of(call)->db, &c.t, &c.err);
    if (st == LAGOON_OK) {
        st = store_scan(c.t, &q, mine_row, &c, &page, &c.err);
        if (st == LAGOON_OK)
            st = c.st;
        /* Each group's unread count, after the scan (its callback reads no other index): at
         * most GROUPCHAT_UNREAD_CAP index entries a group. */
        for (uint32_t i = 0; i < c.n && st == LAGOON_OK; i++) {
            st = groupchat_unread(c.t, c.items[i].id, c.read_up_to[i], &c.items[i].unread, &c.err);
            groupchat_unread_display(c.items[i].unread, c.items[i].unread_display, sizeof(c.items[i].unread_display));
        }
        store_read_end(c.t);
    }
    free(c.read_up_to);
    if (st != LAGOON_OK) {
        free(c.items);
        return app_store_error(call, st, &c.err);
    }
    qsort(c.items, c.n, sizeof(group), by_activity);
    resp->groups = c.items; /* FT_POINTER: freed with the call */
    resp->groups_count = (pb_size_t)c.n;
    return LAGOON_OK;
}
