/* Threads service: video threads (a question asked with a video), in a group or in the public
 * community feed, with replies, reactions, followers and views.
 *
 * Storage (threads.proto). A thread row carries its counts (replies, reactions per type,
 * views, followers), each kept exact in the transaction of the change that moves it: the single
 * writer serialises them, so concurrent toggles never lose one. A place's list (a group's, or
 * group 0's: the public feed) is one index, pinned first and then by last activity, so a page
 * costs the same whatever the number of threads. Replies are one level deep as shown: a reply
 * to a reply has the top-level reply as its root_id and keeps what it answered in parent_id,
 * as comments do, which keeps every cascade at a fixed depth.
 *
 * Access. A public-feed thread is seen by every signed-in user; a group's thread by whoever
 * sees the group's content: its ACTIVE members, everyone signed in for a public group, site
 * administrators. To anyone else it does not exist (NOT_FOUND naming the request's field).
 * Replying, reacting and posting in a group are for its members (and site administrators);
 * editing is the author's; deleting the author's, a group admin's (group threads) or an
 * administrator's; locking and pinning a group admin's or an administrator's (public feed:
 * administrators only).
 *
 * Events. Replies (added, edited, deleted), thread changes and reactions are published to the
 * thread's topic (Topic.THREAD, the thread's id; Threads/Watch joins it) as references, the
 * ids; threads_fill_event turns each into the reply, thread or counts as they are when the
 * router sends it. Followers (Follow; the author from Create) are notified of new replies,
 * one THREAD_REPLY per thread while unread.
 *
 * Who may watch. A topic membership is not checked again when an event is sent, so every
 * change that narrows who sees a thread ends the watches it takes away: Threads/Delete and a
 * group's deletion (thread_going), a member leaving or removed from a private group
 * (threads_group_access_lost), and a public group made private: the thread's next event first
 * walks its watchers when some came from outside the group (private_check). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "paging.h"
#include "threads.h"
#include "videos.h"

typedef lagoon_v1_Thread thread;
typedef lagoon_v1_ThreadReply reply;
typedef lagoon_v1_ThreadReactionRow reaction;

_Static_assert(sizeof(((thread *)0)->reactions) / sizeof(((thread *)0)->reactions[0]) == THREADS_REACTION_TYPES,
               "threads.options: Thread.reactions max_count is THREADS_REACTION_TYPES");
_Static_assert(sizeof(((reply *)0)->reactions) / sizeof(((reply *)0)->reactions[0]) == THREADS_REACTION_TYPES,
               "threads.options: ThreadReply.reactions max_count is THREADS_REACTION_TYPES");
_Static_assert(_lagoon_v1_ThreadReaction_MAX == THREADS_REACTION_TYPES, "one count slot per reaction type");

#define MINUTE_MS (60 * 1000)

/* ---- the module: the write budgets, the event filler ------------------------------------------- */

typedef struct threads_state {
    limiter *creates;   /* Create, THREADS_CREATES_PER_MINUTE per user */
    limiter *replies;   /* Reply, THREADS_REPLIES_PER_MINUTE */
    limiter *reactions; /* React, THREADS_REACTIONS_PER_MINUTE */
    limiter *toggles;   /* Follow, Unfollow, Watch, Unwatch together, THREADS_TOGGLES_PER_MINUTE */
} threads_state;

static limiter *budget(const app *a, uint32_t per_minute)
{
    limiter_policy p = {.kind = LIMITER_BUDGET, .max_events = per_minute, .window_ms = MINUTE_MS};
    return limiter_new(&p, a->cfg.limiter_keys);
}

static void threads_stop(app *a, void *state)
{
    (void)a;
    threads_state *s = state;
    if (s == NULL)
        return;
    limiter_free(s->creates);
    limiter_free(s->replies);
    limiter_free(s->reactions);
    limiter_free(s->toggles);
    free(s);
}

static int threads_start(app *a, void **state, rpc_error *err)
{
    threads_state *s = calloc(1, sizeof(*s));
    if (s != NULL) {
        s->creates = budget(a, THREADS_CREATES_PER_MINUTE);
        s->replies = budget(a, THREADS_REPLIES_PER_MINUTE);
        s->reactions = budget(a, THREADS_REACTIONS_PER_MINUTE);
        s->toggles = budget(a, THREADS_TOGGLES_PER_MINUTE);
    }
    if (s == NULL || s->creates == NULL || s->replies == NULL || s->reactions == NULL || s->toggles == NULL) {
        threads_stop(a, s);
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    *state = s;
    return RPC_OK;
}

static int threads_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                              store_error *err);

const app_module threads_module = {
    .name = "threads",
    .start = threads_start,
    .stop = threads_stop,
    .fill_event = threads_fill_event, /* thread events are logged as references */
};

static threads_state *state_of(const app *a)
{
    return app_state(a, &threads_module);
}

int threads_place_key(const void *row, store_key *k)
{
    const thread *th = row;
    store_key_u64(k, th->group_id);
    store_key_u32(k, th->pinned ? 0 : 1);
    store_key_i64_desc(k, th->last_activity_at);
    return 1;
}

/* ---- counts ------------------------------------------------------------------------------------ */

/* Moves the count of type in counts[*n] (kept in type order, types with none left out) by
 * delta (+1 or -1). */
static void count_move(lagoon_v1_ReactionCount *counts, pb_size_t *n, lagoon_v1_ThreadReaction type, int delta)
{
    pb_size_t i = 0;
    while (i < *n && counts[i].type < type)
        i++;
    if (i < *n && counts[i].type == type) {
        if (delta > 0)
            counts[i].count++;
        else if (counts[i].count > 0)
            counts[i].count--;
        if (counts[i].count == 0) {
            memmove(&counts[i], &counts[i + 1], (size_t)(*n - i - 1) * sizeof(counts[0]));
            (*n)--;
        }
        return;
    }
    if (delta < 0 || *n >= THREADS_REACTION_TYPES) /* never full: one slot per type */
        return;
    memmove(&counts[i + 1], &counts[i], (size_t)(*n - i) * sizeof(counts[0]));
    counts[i] = (lagoon_v1_ReactionCount){.type = type, .count = 1};
    (*n)++;
}

/* ---- who may ----------------------------------------------------------------------------------- */

/* What the caller may do in a place (a group, or the public feed: group 0). */
typedef struct place {
    int reads;    /* sees its threads */
    int posts;    /* creates threads, replies, reacts: anyone on the public feed, a group's members */
    int moderates; /* locks, pins, deletes others' threads: administrators; a group's admins */
    int private_group;
    int member;   /* an ACTIVE member of the group */
} place;

static int place_of(store_txn *t, const rpc_caller *who, uint64_t gid, place *p, store_error *err)
{
    int admin = who->role == lagoon_v1_Role_ADMIN;
    *p = (place){0};
    if (gid == 0) {
        *p = (place){.reads = 1, .posts = 1, .moderates = admin};
        return LAGOON_OK;
    }
    lagoon_v1_Group *g = malloc(sizeof(*g));
    if (g == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_groups, gid, g, err);
    int public_group = st == LAGOON_OK && g->visibility == lagoon_v1_Group_Visibility_PUBLIC;
    free(g);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_GroupMember m;
    st = groups_active_member(t, who, gid, NULL, &m, err);
    int member = st == LAGOON_OK;
    if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
        return st;
    int group_admin = member && (m.role == lagoon_v1_GroupMember_Role_OWNER || m.role == lagoon_v1_GroupMember_Role_ADMIN);
    *p = (place){.reads = member || public_group || admin, .posts = member || admin,
                 .moderates = admin || group_admin, .private_group = !public_group, .member = member};
    return LAGOON_OK;
}

/* Thread id (the request's field) into th, with what the caller may do in its place, when the
 * caller sees it; else NOT_FOUND naming field. */
static int thread_for(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, thread *th, place *p,
                      store_error *err)
{
    int st = store_get(t, &lagoon_table_threads, id, th, err);
    if (st == LAGOON_OK)
        st = place_of(t, who, th->group_id, p, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !p->reads))
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such thread");
    return st;
}

static int may_post(const place *p, store_error *err)
{
    if (p->posts)
        return LAGOON_OK;
    return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the group's members can post, reply or react in it");
}

/* thread_for on the request's thread_id, then may_post: a thread the caller replies or reacts in. */
static int thread_to_post(store_txn *t, const rpc_caller *who, uint64_t id, thread *th, place *p, store_error *err)
{
    int st = thread_for(t, who, id, "thread_id", th, p, err);
    return st == LAGOON_OK ? may_post(p, err) : st;
}

/* Reply id of thread th (the request's field) into r; NOT_FOUND naming field when it is not
 * one of th's. */
static int reply_of(store_txn *t, const thread *th, uint64_t id, const char *field, reply *r, store_error *err)
{
    int st = store_get(t, &lagoon_table_thread_replies, id, r, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && r->thread_id != th->id))
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such reply in this thread");
    return st;
}

/* The request's video, checked as far as the request alone can be: exactly one of video_id
 * and url, a url with its duration. field is the request's video field. */
static int video_problem(rpc_call *call, const lagoon_v1_ThreadVideo *v, const char *field)
{
    char name[64];
    if (v->video_id != 0 && v->url[0] != '\0') {
        snprintf(name, sizeof(name), "%s.url", field);
        return rpc_call_violation(call, name, "give either video_id or url, not both");
    }
    if (v->video_id == 0 && v->url[0] == '\0')
        return rpc_call_violation(call, field, "needs a video_id or a url");
    if (v->url[0] != '\0' && v->duration_seconds == 0) {
        snprintf(name, sizeof(name), "%s.duration_seconds", field);
        return rpc_call_violation(call, name, "is required with a url");
    }
    return LAGOON_OK;
}

/* A Lagoon video may be posted by whoever may share it: its owner (or an administrator), or
 * anyone for a public video; a private video shared with the caller is not the caller's to
 * show others. Its duration is taken from the video. */
static int video_check(store_txn *t, const app_write_in *in, lagoon_v1_ThreadVideo *v, store_error *err)
{
    if (v->video_id == 0)
        return LAGOON_OK;
    lagoon_v1_Video *row = malloc(sizeof(*row));
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int owner = 0;
    int st = videos_readable(t, &in->who, v->video_id, "video.video_id", row, &owner, err);
    if (st == LAGOON_OK && !owner && !row->is_public)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only your own videos and public ones can be posted");
    if (st == LAGOON_OK)
        v->duration_seconds = row->duration_seconds;
    free(row);
    return st;
}

/* ---- events ------------------------------------------------------------------------------------ */

static lagoon_v1_Topic thread_topic(uint64_t id)
{
    lagoon_v1_Topic tp = {.kind = lagoon_v1_Topic_Kind_THREAD, .id = id};
    return tp;
}

static void thread_ids(thread *dst, const thread *src)
{
    dst->id = src->id;
    dst->author_id = src->author_id;
    dst->group_id = src->group_id;
}

static void reply_ids(reply *dst, const reply *src)
{
    dst->id = src->id;
    dst->thread_id = src->thread_id;
    dst->author_id = src->author_id;
    dst->parent_id = src->parent_id;
    dst->root_id = src->root_id;
}

/* fn over each membership row of thread thread_id's topic: its watchers. */
static int each_watcher(store_txn *t, uint64_t thread_id, app_id_fn fn, void *arg, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)lagoon_v1_Topic_Kind_THREAD);
    store_key_u64(&prefix, thread_id);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_topic,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, fn, arg, err);
}

/* A walk over the watchers of a thread of group gid (private_check, outside_room). */
typedef struct watcher_walk {
    const app *a;
    uint64_t gid;
    lagoon_v1_User *u; /* room for a watcher's row */
    uint32_t outside;  /* watchers who are not the group's active members */
} watcher_walk;

/* Counts watcher row id in w->outside when it is not an active member of w's group. */
static int count_outside(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    watcher_walk *w = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    rpc_caller them = {.user_id = m.user_id};
    if (st == LAGOON_OK)
        st = groups_active_member(t, &them, w->gid, NULL, NULL, err);
    w->outside += st == LAGOON_NOT_FOUND;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

/* Ends watcher row id's watch when its user no longer sees w's group's threads. */
static int end_outside_watch(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    watcher_walk *w = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_users, m.user_id, w->u, err);
    if (st != LAGOON_OK)
        return st;
    rpc_caller them = {.user_id = m.user_id, .role = (uint8_t)w->u->role};
    place p = {0};
    st = place_of(t, &them, w->gid, &p, err);
    return st == LAGOON_OK && !p.reads ? events_topic_leave(t, w->a, m.user_id, &m.topic, err) : st;
}

/* Before each event of thread thread_id: when watchers came from outside its group while the
 * group was public (outside_watchers) and the group is private now, those who no longer see the
 * thread leave its topic first, so that the event does not reach them (a membership is not
 * checked again when an event is sent). Walks the thread's watchers once per such change: its
 * group's members and at most THREADS_OUTSIDE_WATCHERS_MAX others (and site administrators). */
static int private_check(store_txn *t, const app *a, uint64_t thread_id, store_error *err)
{
    thread *th = malloc(sizeof(*th));
    lagoon_v1_Group *g = malloc(sizeof(*g));
    watcher_walk w = {.a = a, .u = malloc(sizeof(lagoon_v1_User))};
    if (th == NULL || g == NULL || w.u == NULL) {
        free(th);
        free(g);
        free(w.u);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = store_get(t, &lagoon_table_threads, thread_id, th, err);
    int due = st == LAGOON_OK && th->outside_watchers > 0 && th->group_id != 0;
    if (due)
        st = store_get(t, &lagoon_table_groups, th->group_id, g, err);
    due = due && st == LAGOON_OK && g->visibility != lagoon_v1_Group_Visibility_PUBLIC;
    if (due) {
        w.gid = th->group_id;
        st = each_watcher(t, thread_id, end_outside_watch, &w, err);
    }
    if (due && st == LAGOON_OK) {
        th->outside_watchers = 0;
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    free(th);
    free(g);
    free(w.u);
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* (a thread going with its group) */
}

static int publish(store_txn *t, const app *a, uint64_t thread_id, lagoon_v1_Event *ev, store_error *err)
{
    lagoon_v1_Topic tp = thread_topic(thread_id);
    int st = private_check(t, a, thread_id, err);
    if (st == LAGOON_OK)
        st = events_topic_publish(t, a, &tp, ev, err);
    free(ev);
    return st;
}

static lagoon_v1_Event *event_new(pb_size_t which, store_error *err)
{
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* ~23 KiB: its type can hold a whole thread */
    if (ev == NULL)
        store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    else
        ev->which_payload = which;
    return ev;
}

static int publish_thread(store_txn *t, const app *a, const thread *th, lagoon_v1_ThreadEvent_Action action,
                          store_error *err)
{
    lagoon_v1_Event *ev = event_new(lagoon_v1_Event_thread_tag, err);
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    ev->payload.thread.action = action;
    ev->payload.thread.which_item = lagoon_v1_ThreadEvent_thread_tag;
    thread_ids(&ev->payload.thread.item.thread, th);
    return publish(t, a, th->id, ev, err);
}

static int publish_reply(store_txn *t, const app *a, const reply *r, lagoon_v1_ThreadEvent_Action action,
                         store_error *err)
{
    lagoon_v1_Event *ev = event_new(lagoon_v1_Event_thread_tag, err);
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    ev->payload.thread.action = action;
    ev->payload.thread.which_item = lagoon_v1_ThreadEvent_reply_tag;
    reply_ids(&ev->payload.thread.item.reply, r);
    return publish(t, a, r->thread_id, ev, err);
}

static int publish_reaction(store_txn *t, const app *a, const reaction *rr, int added, store_error *err)
{
    lagoon_v1_Event *ev = event_new(lagoon_v1_Event_thread_reaction_tag, err);
    if (ev == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    lagoon_v1_ThreadReactionEvent *re = &ev->payload.thread_reaction;
    re->thread_id = rr->thread_id;
    re->reply_id = rr->reply_id;
    re->user_id = rr->user_id;
    re->type = rr->type;
    re->added = added;
    return publish(t, a, rr->thread_id, ev, err);
}

/* A ThreadEvent reference as sent: the thread or reply as it is now, or its DELETED form with
 * the ids when it is gone (or the row found is not the one referred to). */
static int fill_thread_event(store_txn *t, const lagoon_v1_ThreadEvent *te, uint64_t topic_id,
                             lagoon_v1_ThreadEvent *oe, int *filled, store_error *err)
{
    int st;
    oe->action = te->action;
    if (te->which_item == lagoon_v1_ThreadEvent_reply_tag && te->item.reply.thread_id == topic_id &&
        te->action != lagoon_v1_ThreadEvent_Action_REPLY_DELETED) {
        const reply *ref = &te->item.reply;
        oe->which_item = lagoon_v1_ThreadEvent_reply_tag;
        reply *r = &oe->item.reply;
        st = store_get(t, &lagoon_table_thread_replies, ref->id, r, err);
        if (st == LAGOON_OK && (r->thread_id != ref->thread_id || r->author_id != ref->author_id ||
                                r->parent_id != ref->parent_id || r->root_id != ref->root_id))
            st = LAGOON_NOT_FOUND;
        if (st == LAGOON_NOT_FOUND) {
            wire_init(&lagoon_v1_ThreadReply_info, r);
            r->reactions_count = 0;
            oe->action = lagoon_v1_ThreadEvent_Action_REPLY_DELETED;
            reply_ids(r, ref);
            st = LAGOON_OK;
        }
    } else if (te->which_item == lagoon_v1_ThreadEvent_thread_tag && te->item.thread.id == topic_id &&
               te->action == lagoon_v1_ThreadEvent_Action_THREAD_CHANGED) {
        const thread *ref = &te->item.thread;
        oe->which_item = lagoon_v1_ThreadEvent_thread_tag;
        thread *th = &oe->item.thread;
        st = store_get(t, &lagoon_table_threads, ref->id, th, err);
        if (st == LAGOON_OK && (th->author_id != ref->author_id || th->group_id != ref->group_id))
            st = LAGOON_NOT_FOUND;
        if (st == LAGOON_NOT_FOUND) {
            wire_init(&lagoon_v1_Thread_info, th);
            th->reactions_count = 0;
            oe->action = lagoon_v1_ThreadEvent_Action_THREAD_DELETED;
            thread_ids(th, ref);
            st = LAGOON_OK;
        }
    } else {
        return LAGOON_OK; /* not one of publish's, or a DELETED event: sent as logged */
    }
    *filled = st == LAGOON_OK;
    return st;
}

/* A reaction event as sent: with its target's counts now (none when the target is gone). */
static int fill_reaction_event(store_txn *t, const lagoon_v1_ThreadReactionEvent *re,
                               lagoon_v1_ThreadReactionEvent *oe, int *filled, store_error *err)
{
    *oe = *re;
    oe->reactions_count = 0;
    int st;
    if (re->reply_id != 0) {
        reply *r = malloc(sizeof(*r));
        if (r == NULL)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        st = store_get(t, &lagoon_table_thread_replies, re->reply_id, r, err);
        if (st == LAGOON_OK && r->thread_id == re->thread_id) {
            memcpy(oe->reactions, r->reactions, sizeof(oe->reactions));
            oe->reactions_count = r->reactions_count;
        }
        free(r);
    } else {
        thread *th = malloc(sizeof(*th));
        if (th == NULL)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        st = store_get(t, &lagoon_table_threads, re->thread_id, th, err);
        if (st == LAGOON_OK) {
            memcpy(oe->reactions, th->reactions, sizeof(oe->reactions));
            oe->reactions_count = th->reactions_count;
        }
        free(th);
    }
    if (st == LAGOON_NOT_FOUND)
        st = LAGOON_OK;
    *filled = st == LAGOON_OK;
    return st;
}

/* The router's side of the publish functions (app_module.fill_event): only their events, a
 * thread or reaction payload on the THREAD topic of its own thread. */
static int threads_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                              store_error *err)
{
    if (!ev->has_topic || ev->topic.kind != lagoon_v1_Topic_Kind_THREAD)
        return LAGOON_OK;
    int is_thread = ev->which_payload == lagoon_v1_Event_thread_tag;
    if (!is_thread && (ev->which_payload != lagoon_v1_Event_thread_reaction_tag ||
                       ev->payload.thread_reaction.thread_id != ev->topic.id))
        return LAGOON_OK;
    out->seq = ev->seq;
    out->created_at = ev->created_at;
    out->has_topic = true;
    out->topic = ev->topic;
    out->which_payload = ev->which_payload;
    if (is_thread)
        return fill_thread_event(t, &ev->payload.thread, ev->topic.id, &out->payload.thread, filled, err);
    return fill_reaction_event(t, &ev->payload.thread_reaction, &out->payload.thread_reaction, filled, err);
}

/* ---- kept responses ------------------------------------------------------------------------------ */

/* The methods whose kept responses show a thread, and those that show a reply
 * (app_result_shows): a delete forgets them, so that a retry runs again. */
static const wire_method *const thread_methods[] = {
    &lagoon_method_Threads_Create, &lagoon_method_Threads_Update, &lagoon_method_Threads_Lock,
    &lagoon_method_Threads_Pin};
static const wire_method *const reply_methods[] = {&lagoon_method_Threads_Reply, &lagoon_method_Threads_UpdateReply};

static int forget(store_txn *t, const wire_method *const *m, size_t n, uint64_t id, store_error *err)
{
    int st = LAGOON_OK;
    for (size_t i = 0; i < n && st == LAGOON_OK; i++)
        st = app_forget_results(t, m[i], id, err);
    return st;
}

static int forget_reply(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)arg;
    return forget(t, reply_methods, sizeof(reply_methods) / sizeof(reply_methods[0]), id, err);
}

/* ---- Create, Get, Update --------------------------------------------------------------------------- */

static int follow_row(store_txn *t, uint64_t thread_id, uint64_t user_id, int64_t now, store_error *err)
{
    lagoon_v1_ThreadFollow f = {.thread_id = thread_id, .user_id = user_id, .created_at = now};
    return store_insert(t, &lagoon_table_thread_follows, &f, NULL, err);
}

/* The thread is built in the response and stored from there. */
static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CreateThreadRequest *req = in->req;
    thread *th = resp;
    place p = {0};
    int st = place_of(t, &in->who, req->group_id, &p, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !p.reads))
        return store_fail(err, LAGOON_NOT_FOUND, "group_id", "no such group");
    if (st == LAGOON_OK)
        st = may_post(&p, err);
    th->has_video = true;
    th->video = req->video;
    if (st == LAGOON_OK)
        st = video_check(t, in, &th->video, err);
    if (st != LAGOON_OK)
        return st;
    th->author_id = in->who.user_id;
    th->group_id = req->group_id;
    APP_STRCPY(th->title, req->title);
    APP_STRCPY(th->text, req->text);
    th->created_at = in->now;
    th->last_activity_at = in->now;
    th->follower_count = 1; /* the author follows their own thread */
    st = store_insert(t, &lagoon_table_threads, th, NULL, err);
    if (st == LAGOON_OK)
        st = follow_row(t, th->id, th->author_id, in->now, err);
    if (st == LAGOON_OK) {
        th->following = true; /* (never stored) */
        app_result_shows(in, th->id);
    }
    return st;
}

int handle_Threads_Create(rpc_call *call, const lagoon_v1_CreateThreadRequest *req, lagoon_v1_Thread *resp)
{
    (void)resp;
    int st = video_problem(call, &req->video, "video");
    if (st != LAGOON_OK)
        return st;
    return app_write_call_limited(call, create_write, state_of(app_of(call))->creates, "thread", "threads");
}

static int is_following(store_txn *t, uint64_t thread_id, uint64_t user_id, int *following, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, thread_id);
    store_key_u64(&k, user_id);
    int st = store_get_by(t, &lagoon_table_thread_follows, lagoon_index_thread_follows_by_thread_user, &k, NULL,
                          NULL, err);
    *following = st == LAGOON_OK;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

int handle_Threads_Get(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_Thread *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    place p = {0};
    const rpc_caller *who = rpc_call_caller(call);
    st = thread_for(t, who, req->thread_id, "thread_id", resp, &p, &err);
    int following = 0;
    if (st == LAGOON_OK)
        st = is_following(t, resp->id, who->user_id, &following, &err);
    resp->following = following;
    store_read_end(t);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

static int update_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateThreadRequest *req = in->req;
    thread *th = resp;
    place p = {0};
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    if (st == LAGOON_OK && th->author_id != in->who.user_id)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only its author can edit a thread");
    if (st != LAGOON_OK)
        return st;
    if (req->has_title)
        APP_STRCPY(th->title, req->title);
    if (req->has_text)
        APP_STRCPY(th->text, req->text);
    th->edited_at = in->now;
    st = store_update(t, &lagoon_table_threads, th, err);
    if (st == LAGOON_OK)
        st = publish_thread(t, in->a, th, lagoon_v1_ThreadEvent_Action_THREAD_CHANGED, err);
    if (st == LAGOON_OK)
        app_result_shows(in, th->id);
    return st;
}

int handle_Threads_Update(rpc_call *call, const lagoon_v1_UpdateThreadRequest *req, lagoon_v1_Thread *resp)
{
    (void)req; /* (its rules in threads.proto checked it) */
    (void)resp;
    return app_write_call(call, update_write, NULL);
}

/* ---- Lock, Pin ------------------------------------------------------------------------------------- */

/* lock_write's flag: its args pointer set (Lock) or not (Pin). */
static const int locking = 1;

/* Lock or Pin: changes and publishes only when the flag changes, so a repeat answers the thread
 * as it is. */
static int flag_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_SetThreadFlagRequest *req = in->req;
    int lock = in->args != NULL;
    thread *th = resp;
    place p = {0};
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    if (st == LAGOON_OK && !p.moderates)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                        th->group_id ? "only the group's admins and administrators can %s its threads"
                                     : "only administrators can %s public threads",
                        lock ? "lock" : "pin");
    if (st != LAGOON_OK)
        return st;
    app_result_shows(in, th->id);
    bool *flag = lock ? &th->locked : &th->pinned;
    if (*flag == req->on)
        return LAGOON_OK;
    *flag = req->on;
    st = store_update(t, &lagoon_table_threads, th, err); /* a pin moves it in its place's list */
    return st == LAGOON_OK ? publish_thread(t, in->a, th, lagoon_v1_ThreadEvent_Action_THREAD_CHANGED, err) : st;
}

int handle_Threads_Lock(rpc_call *call, const lagoon_v1_SetThreadFlagRequest *req, lagoon_v1_Thread *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, flag_write, &locking);
}

int handle_Threads_Pin(rpc_call *call, const lagoon_v1_SetThreadFlagRequest *req, lagoon_v1_Thread *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, flag_write, NULL);
}

/* ---- Delete ------------------------------------------------------------------------------------------ */

/* Ends member row id's membership of the topic in arg (its thread goes). */
static int end_watch(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    return st == LAGOON_OK ? events_topic_leave(t, in->a, m.user_id, &m.topic, err) : st;
}

/* What a thread's deletion does besides the row (whose cascade takes its replies, reactions,
 * follows and views): its kept responses are forgotten, its watchers leave its topic after its
 * THREAD_DELETED event. */
static int thread_going(store_txn *t, const app_write_in *in, const thread *th, store_error *err)
{
    int st = forget(t, thread_methods, sizeof(thread_methods) / sizeof(thread_methods[0]), th->id, err);
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, th->id);
    store_query q = {.table = &lagoon_table_thread_replies, .index = lagoon_index_thread_replies_by_thread_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    if (st == LAGOON_OK)
        st = app_each_id(t, &q, forget_reply, NULL, err);
    if (st == LAGOON_OK)
        st = publish_thread(t, in->a, th, lagoon_v1_ThreadEvent_Action_THREAD_DELETED, err);
    if (st == LAGOON_OK)
        st = each_watcher(t, th->id, end_watch, (void *)in, err);
    return st;
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ThreadIdRequest *req = in->req;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    if (st == LAGOON_OK && th->author_id != in->who.user_id && !p.moderates)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                        "only its author, the group's admins or an administrator can delete a thread");
    if (st == LAGOON_OK)
        st = thread_going(t, in, th, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_threads, th->id, err);
    free(th);
    return st;
}

int handle_Threads_Delete(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}

/* ---- lists ------------------------------------------------------------------------------------------ */

/* ListByUser's filter: a row of a group the caller does not see is left out. The last group
 * decided is remembered (an author's threads tend to come in runs of one group). */
typedef struct seen_filter {
    store_txn *t;
    const rpc_caller *who;
    uint64_t gid;  /* the last group decided; 0 = none yet */
    int reads;
    int st;        /* the first store error */
    store_error err;
} seen_filter;

static int add_thread(void *arg, void *item, const void *row)
{
    seen_filter *f = arg;
    const thread *th = row;
    if (f != NULL && th->group_id != 0) {
        if (f->gid != th->group_id) {
            place p = {0};
            int st = place_of(f->t, f->who, th->group_id, &p, &f->err);
            if (st != LAGOON_OK && f->st == LAGOON_OK && st != LAGOON_NOT_FOUND)
                f->st = st;
            f->gid = th->group_id;
            f->reads = st == LAGOON_OK && p.reads;
        }
        if (!f->reads)
            return 0;
    }
    *(thread *)item = *th;
    return 1;
}

static int add_reply(void *arg, void *item, const void *row)
{
    (void)arg;
    *(reply *)item = *(const reply *)row;
    return 1;
}

static int add_reaction(void *arg, void *item, const void *row)
{
    (void)arg;
    *(reaction *)item = *(const reaction *)row;
    return 1;
}

/* Reads one page of l in a read transaction once check(t, arg) passed: the response's items
 * and next page token. */
typedef int (*list_check_fn)(store_txn *t, const rpc_caller *who, const void *req, paging_list *l, store_error *err);

static int list_page(rpc_call *call, paging_list *l, list_check_fn check, const void *req, void **items,
                     pb_size_t *count, char *token, size_t token_cap)
{
    int st = paging_check(call, l);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    seen_filter *f = l->arg;
    if (f != NULL)
        f->t = t;
    st = check(t, rpc_call_caller(call), req, l, &err);
    if (st == LAGOON_OK)
        st = paging_scan(t, l, &err);
    if (st == LAGOON_OK && f != NULL && f->st != LAGOON_OK) {
        st = f->st;
        err = f->err;
    }
    store_read_end(t);
    *items = l->items; /* FT_POINTER: freed with the call */
    *count = (pb_size_t)l->count;
    if (st == LAGOON_OK)
        app_copy_str(token, token_cap, l->next_page_token);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

static int place_check(store_txn *t, const rpc_caller *who, const void *req, paging_list *l, store_error *err)
{
    (void)l;
    const lagoon_v1_ListThreadsRequest *r = req;
    place p = {0};
    int st = place_of(t, who, r->group_id, &p, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !p.reads))
        return store_fail(err, LAGOON_NOT_FOUND, "group_id", "no such group");
    return st;
}

static int no_check(store_txn *t, const rpc_caller *who, const void *req, paging_list *l, store_error *err)
{
    (void)t;
    (void)who;
    (void)req;
    (void)l;
    (void)err;
    return LAGOON_OK;
}

int handle_Threads_List(rpc_call *call, const lagoon_v1_ListThreadsRequest *req, lagoon_v1_ListThreadsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->group_id);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListThreadsResponse_info,
                     .items_tag = lagoon_v1_ListThreadsResponse_threads_tag, .item = add_thread,
                     .item_size = sizeof(thread),
                     .query = {.table = &lagoon_table_threads, .index = lagoon_index_threads_by_place,
                               .prefix = prefix.buf, .prefix_len = prefix.len}};
    void *items = NULL;
    int st = list_page(call, &l, place_check, req, &items, &resp->threads_count, resp->next_page_token,
                       sizeof(resp->next_page_token));
    resp->threads = items;
    return st;
}

int handle_Threads_ListByUser(rpc_call *call, const lagoon_v1_ListUserThreadsRequest *req,
                              lagoon_v1_ListThreadsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->user_id);
    seen_filter *f = rpc_call_alloc(call, sizeof(*f), NULL);
    if (f == NULL)
        return app_out_of_memory(call);
    memset(f, 0, sizeof(*f));
    f->who = rpc_call_caller(call);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListThreadsResponse_info,
                     .items_tag = lagoon_v1_ListThreadsResponse_threads_tag, .item = add_thread, .arg = f,
                     .item_size = sizeof(thread),
                     .query = {.table = &lagoon_table_threads, .index = lagoon_index_threads_by_author,
                               .prefix = prefix.buf, .prefix_len = prefix.len, .reverse = 1}};
    void *items = NULL;
    int st = list_page(call, &l, no_check, req, &items, &resp->threads_count, resp->next_page_token,
                       sizeof(resp->next_page_token));
    resp->threads = items;
    return st;
}

static int thread_check(store_txn *t, const rpc_caller *who, const void *req, paging_list *l, store_error *err)
{
    (void)l;
    const lagoon_v1_ListRepliesThreadRequest *r = req;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = thread_for(t, who, r->thread_id, "thread_id", th, &p, err);
    free(th);
    return st;
}

int handle_Threads_ListReplies(rpc_call *call, const lagoon_v1_ListRepliesThreadRequest *req,
                               lagoon_v1_ListThreadRepliesResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->thread_id);
    paging_list l = {.size = req->page_size, .token = req->page_token,
                     .resp = &lagoon_v1_ListThreadRepliesResponse_info,
                     .items_tag = lagoon_v1_ListThreadRepliesResponse_replies_tag, .item = add_reply,
                     .item_size = sizeof(reply),
                     .query = {.table = &lagoon_table_thread_replies,
                               .index = lagoon_index_thread_replies_by_thread_time, .prefix = prefix.buf,
                               .prefix_len = prefix.len}};
    void *items = NULL;
    int st = list_page(call, &l, thread_check, req, &items, &resp->replies_count, resp->next_page_token,
                       sizeof(resp->next_page_token));
    resp->replies = items;
    return st;
}

static int target_check(store_txn *t, const rpc_caller *who, const void *req, paging_list *l, store_error *err)
{
    (void)l;
    const lagoon_v1_ListReactionsRequest *r = req;
    thread *th = malloc(sizeof(*th));
    reply *rp = malloc(sizeof(*rp));
    if (th == NULL || rp == NULL) {
        free(th);
        free(rp);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    place p = {0};
    int st = thread_for(t, who, r->thread_id, "thread_id", th, &p, err);
    if (st == LAGOON_OK && r->reply_id != 0)
        st = reply_of(t, th, r->reply_id, "reply_id", rp, err);
    free(th);
    free(rp);
    return st;
}

int handle_Threads_ListReactions(rpc_call *call, const lagoon_v1_ListReactionsRequest *req,
                                 lagoon_v1_ListReactionsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->thread_id);
    store_key_u64(&prefix, req->reply_id);
    int typed = req->type != lagoon_v1_ThreadReaction_THREAD_REACTION_UNSPECIFIED;
    if (typed)
        store_key_u32(&prefix, (uint32_t)req->type);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListReactionsResponse_info,
                     .items_tag = lagoon_v1_ListReactionsResponse_reactions_tag, .item = add_reaction,
                     .item_size = sizeof(reaction),
                     .query = {.table = &lagoon_table_thread_reactions,
                               .index = typed ? lagoon_index_thread_reactions_by_target_type
                                              : lagoon_index_thread_reactions_by_target_user,
                               .prefix = prefix.buf, .prefix_len = prefix.len}};
    void *items = NULL;
    int st = list_page(call, &l, target_check, req, &items, &resp->reactions_count, resp->next_page_token,
                       sizeof(resp->next_page_token));
    resp->reactions = items;
    return st;
}

/* ---- Reply, UpdateReply, DeleteReply -------------------------------------------------------------- */

/* Notifies one follower (row id) of a new reply, unless it is the reply's author or no longer
 * sees the thread (a member who left a private group). */
typedef struct reply_note {
    const app_write_in *in;
    const thread *th;
    const reply *r;
    int private_group;
    char title[120];  /* "<username> replied in a thread you follow" */
    lagoon_v1_User *u; /* room for a follower's row */
} reply_note;

static int notify_follower(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    reply_note *n = arg;
    lagoon_v1_ThreadFollow f;
    int st = store_get(t, &lagoon_table_thread_follows, id, &f, err);
    if (st != LAGOON_OK || f.user_id == n->r->author_id)
        return st;
    if (n->private_group) {
        rpc_caller them = {.user_id = f.user_id};
        st = groups_active_member(t, &them, n->th->group_id, NULL, NULL, err);
        if (st == LAGOON_NOT_FOUND) { /* an administrator still sees it */
            st = store_get(t, &lagoon_table_users, f.user_id, n->u, err);
            if (st == LAGOON_OK && n->u->role != lagoon_v1_Role_ADMIN)
                return LAGOON_OK;
        }
        if (st != LAGOON_OK)
            return st;
    }
    char key[40];
    snprintf(key, sizeof(key), "tr:%llu", (unsigned long long)n->th->id);
    return events_notify(t, n->in->a, f.user_id, lagoon_v1_Notification_Type_THREAD_REPLY, n->title, n->th->title,
                         n->th->id, key, 0, NULL, err);
}

/* THREAD_REPLY to every follower of th but r's author: one per thread while unread (collapse
 * key "tr:<thread>"), showing who and the thread's title, never the reply's words (which an
 * edit or delete would leave behind). */
static int notify_followers(store_txn *t, const app_write_in *in, const thread *th, const reply *r, int private_group,
                            store_error *err)
{
    reply_note n = {.in = in, .th = th, .r = r, .private_group = private_group, .u = malloc(sizeof(lagoon_v1_User))};
    if (n.u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, r->author_id, n.u, err);
    if (st == LAGOON_OK)
        snprintf(n.title, sizeof(n.title), "%s replied in a thread you follow", n.u->username);
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, th->id);
    store_query q = {.table = &lagoon_table_thread_follows, .index = lagoon_index_thread_follows_by_thread_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    if (st == LAGOON_OK)
        st = app_each_id(t, &q, notify_follower, &n, err);
    free(n.u);
    return st;
}

/* The reply is built in the response and stored from there. */
static int reply_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ReplyThreadRequest *req = in->req;
    reply *r = resp;
    thread *th = malloc(sizeof(*th));
    reply *root = malloc(sizeof(*root));
    if (th == NULL || root == NULL) {
        free(th);
        free(root);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    place p = {0};
    int st = thread_to_post(t, &in->who, req->thread_id, th, &p, err);
    if (st == LAGOON_OK && th->locked)
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "the thread is locked");
    if (st == LAGOON_OK && th->reply_count >= THREADS_REPLIES_MAX)
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, "thread_id", "a thread has at most %d replies",
                        THREADS_REPLIES_MAX);
    /* A reply to a reply is shown under the top-level one (its root). */
    if (st == LAGOON_OK && req->parent_id != 0) {
        st = reply_of(t, th, req->parent_id, "parent_id", root, err);
        r->parent_id = req->parent_id;
        r->root_id = st == LAGOON_OK && root->root_id ? root->root_id : req->parent_id;
        if (st == LAGOON_OK && root->id != r->root_id)
            st = store_get(t, &lagoon_table_thread_replies, r->root_id, root, err);
        if (st == LAGOON_OK && root->reply_count >= THREADS_NESTED_MAX)
            st = store_fail(err, LAGOON_FAILED_PRECONDITION, "parent_id", "a reply has at most %d replies under it",
                            THREADS_NESTED_MAX);
        if (st == LAGOON_OK) {
            root->reply_count++;
            st = store_update(t, &lagoon_table_thread_replies, root, err);
        }
    }
    if (st == LAGOON_OK && req->has_video) {
        r->has_video = true;
        r->video = req->video;
        st = video_check(t, in, &r->video, err);
    }
    if (st == LAGOON_OK) {
        r->thread_id = th->id;
        r->author_id = in->who.user_id;
        APP_STRCPY(r->text, req->text);
        r->created_at = in->now;
        st = store_insert(t, &lagoon_table_thread_replies, r, NULL, err);
    }
    if (st == LAGOON_OK) {
        th->reply_count++;
        th->last_activity_at = in->now; /* moves it up its place's list */
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    if (st == LAGOON_OK)
        st = publish_reply(t, in->a, r, lagoon_v1_ThreadEvent_Action_REPLY_ADDED, err);
    if (st == LAGOON_OK)
        st = notify_followers(t, in, th, r, p.private_group, err);
    if (st == LAGOON_OK)
        app_result_shows(in, r->id); /* DeleteReply drops the kept response with the reply */
    free(th);
    free(root);
    return st;
}

int handle_Threads_Reply(rpc_call *call, const lagoon_v1_ReplyThreadRequest *req, lagoon_v1_ThreadReply *resp)
{
    (void)resp;
    if (req->text[0] == '\0' && !req->has_video)
        return rpc_call_violation(call, "text", "a reply needs text or a video");
    if (req->has_video) {
        int st = video_problem(call, &req->video, "video");
        if (st != LAGOON_OK)
            return st;
    }
    return app_write_call_limited(call, reply_write, state_of(app_of(call))->replies, "reply", "replies");
}

static int update_reply_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateReplyRequest *req = in->req;
    reply *r = resp;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = store_get(t, &lagoon_table_thread_replies, req->reply_id, r, err);
    if (st == LAGOON_OK)
        st = thread_for(t, &in->who, r->thread_id, "reply_id", th, &p, err);
    free(th);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, "reply_id", "no such reply");
    if (st == LAGOON_OK && r->author_id != in->who.user_id)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only its author can edit a reply");
    if (st == LAGOON_OK && req->text[0] == '\0' && !r->has_video)
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, "text", "a reply without a video needs text");
    if (st != LAGOON_OK)
        return st;
    APP_STRCPY(r->text, req->text);
    r->edited_at = in->now;
    st = store_update(t, &lagoon_table_thread_replies, r, err);
    if (st == LAGOON_OK)
        st = publish_reply(t, in->a, r, lagoon_v1_ThreadEvent_Action_REPLY_EDITED, err);
    if (st == LAGOON_OK)
        app_result_shows(in, r->id);
    return st;
}

int handle_Threads_UpdateReply(rpc_call *call, const lagoon_v1_UpdateReplyRequest *req, lagoon_v1_ThreadReply *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, update_reply_write, NULL);
}

/* The ids of a deleted reply and of the replies that go with it. */
typedef struct id_set {
    uint64_t ids[THREADS_NESTED_MAX + 1];
    size_t n;
} id_set;

static int add_id(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)t;
    id_set *s = arg;
    if (s->n >= sizeof(s->ids) / sizeof(s->ids[0])) /* never: Reply keeps the cap */
        return store_fail(err, LAGOON_INTERNAL, NULL, "more than %d replies under a reply", THREADS_NESTED_MAX);
    s->ids[s->n++] = id;
    return LAGOON_OK;
}

static int add_ids_under(store_txn *t, const store_index *idx, uint64_t id, id_set *s, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, id);
    store_query q = {.table = &lagoon_table_thread_replies, .index = idx, .prefix = prefix.buf,
                     .prefix_len = prefix.len};
    return app_each_id(t, &q, add_id, s, err);
}

/* Deletes reply r with the replies shown under it (a top-level reply: its root_id cascade) or
 * below it (a nested one: walked through by_parent), counts them off its thread and root, and
 * publishes REPLY_DELETED. Their reactions go by their cascade. */
static int reply_remove(store_txn *t, const app *a, const reply *r, store_error *err)
{
    id_set *gone = malloc(sizeof(*gone));
    thread *th = malloc(sizeof(*th));
    reply *root = malloc(sizeof(*root));
    if (gone == NULL || th == NULL || root == NULL) {
        free(gone);
        free(th);
        free(root);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    gone->ids[0] = r->id;
    gone->n = 1;
    int st = LAGOON_OK;
    if (r->root_id == 0) {
        st = add_ids_under(t, lagoon_index_thread_replies_by_root, r->id, gone, err);
    } else {
        /* Breadth first: each id's direct replies join the set, until none is left. */
        for (size_t i = 0; i < gone->n && st == LAGOON_OK; i++)
            st = add_ids_under(t, lagoon_index_thread_replies_by_parent, gone->ids[i], gone, err);
    }
    for (size_t i = 0; st == LAGOON_OK && i < gone->n; i++)
        st = forget_reply(t, gone->ids[i], NULL, err);
    if (st == LAGOON_OK && r->root_id != 0) {
        for (size_t i = gone->n; i-- > 0 && st == LAGOON_OK;)
            st = store_delete(t, &lagoon_table_thread_replies, gone->ids[i], err);
        if (st == LAGOON_OK)
            st = store_get(t, &lagoon_table_thread_replies, r->root_id, root, err);
        if (st == LAGOON_OK) {
            root->reply_count = root->reply_count > gone->n ? root->reply_count - (uint32_t)gone->n : 0;
            st = store_update(t, &lagoon_table_thread_replies, root, err);
        }
    } else if (st == LAGOON_OK) {
        st = store_delete(t, &lagoon_table_thread_replies, r->id, err); /* its nested replies cascade */
    }
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_threads, r->thread_id, th, err);
    if (st == LAGOON_OK) {
        th->reply_count = th->reply_count > gone->n ? th->reply_count - (uint32_t)gone->n : 0;
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    if (st == LAGOON_OK)
        st = publish_reply(t, a, r, lagoon_v1_ThreadEvent_Action_REPLY_DELETED, err);
    free(gone);
    free(th);
    free(root);
    return st;
}

/* As for comments: its author, the thread's author, the group's admins (a group thread) and
 * administrators may delete a reply. */
static int delete_reply_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ReplyIdRequest *req = in->req;
    reply *r = malloc(sizeof(*r));
    thread *th = calloc(1, sizeof(*th)); /* zeroed: no path reads an unset field */
    if (r == NULL || th == NULL) {
        free(r);
        free(th);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    place p = {0};
    int st = store_get(t, &lagoon_table_thread_replies, req->reply_id, r, err);
    if (st == LAGOON_OK)
        st = thread_for(t, &in->who, r->thread_id, "reply_id", th, &p, err);
    if (st == LAGOON_NOT_FOUND)
        st = store_fail(err, LAGOON_NOT_FOUND, "reply_id", "no such reply");
    if (st == LAGOON_OK && r->author_id != in->who.user_id && th->author_id != in->who.user_id && !p.moderates)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                        "only its author, the thread's author, the group's admins or an administrator can delete a "
                        "reply");
    if (st == LAGOON_OK)
        st = reply_remove(t, in->a, r, err);
    free(r);
    free(th);
    return st;
}

int handle_Threads_DeleteReply(rpc_call *call, const lagoon_v1_ReplyIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_reply_write, NULL);
}

/* ---- React --------------------------------------------------------------------------------------- */

/* Moves the counts of reaction rr's target (the thread th, or its reply) by delta, stores the
 * target, and copies its counts into out (may be NULL). */
static int target_counts(store_txn *t, thread *th, const reaction *rr, int delta,
                         lagoon_v1_ReactThreadResponse *out, store_error *err)
{
    if (rr->reply_id == 0) {
        count_move(th->reactions, &th->reactions_count, rr->type, delta);
        if (out != NULL) {
            memcpy(out->reactions, th->reactions, sizeof(out->reactions));
            out->reactions_count = th->reactions_count;
        }
        return store_update(t, &lagoon_table_threads, th, err);
    }
    reply *r = malloc(sizeof(*r));
    if (r == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_thread_replies, rr->reply_id, r, err);
    if (st == LAGOON_OK) {
        count_move(r->reactions, &r->reactions_count, rr->type, delta);
        if (out != NULL) {
            memcpy(out->reactions, r->reactions, sizeof(out->reactions));
            out->reactions_count = r->reactions_count;
        }
        st = store_update(t, &lagoon_table_thread_replies, r, err);
    }
    free(r);
    return st;
}

/* Adds the caller's reaction, or takes it away when it is there: the row and the count move in
 * one transaction, so the counts are always the rows' number. */
static int react_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ReactThreadRequest *req = in->req;
    lagoon_v1_ReactThreadResponse *out = resp;
    thread *th = malloc(sizeof(*th));
    reply *r = malloc(sizeof(*r));
    if (th == NULL || r == NULL) {
        free(th);
        free(r);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    place p = {0};
    int st = thread_to_post(t, &in->who, req->thread_id, th, &p, err);
    if (st == LAGOON_OK && req->reply_id != 0)
        st = reply_of(t, th, req->reply_id, "reply_id", r, err);
    free(r);
    reaction rr = {.thread_id = req->thread_id, .reply_id = req->reply_id, .user_id = in->who.user_id,
                   .type = req->type, .created_at = in->now};
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, rr.thread_id);
    store_key_u64(&k, rr.reply_id);
    store_key_u64(&k, rr.user_id);
    store_key_u32(&k, (uint32_t)rr.type);
    uint64_t id = 0;
    int added = 0;
    if (st == LAGOON_OK) {
        st = store_get_by(t, &lagoon_table_thread_reactions, lagoon_index_thread_reactions_by_target_user, &k, &id,
                          NULL, err);
        added = st == LAGOON_NOT_FOUND;
        if (st == LAGOON_OK)
            st = store_delete(t, &lagoon_table_thread_reactions, id, err);
        else if (added)
            st = store_insert(t, &lagoon_table_thread_reactions, &rr, NULL, err);
    }
    if (st == LAGOON_OK)
        st = target_counts(t, th, &rr, added ? 1 : -1, out, err);
    out->added = added;
    if (st == LAGOON_OK)
        st = publish_reaction(t, in->a, &rr, added, err);
    free(th);
    return st;
}

int handle_Threads_React(rpc_call *call, const lagoon_v1_ReactThreadRequest *req, lagoon_v1_ReactThreadResponse *resp)
{
    (void)req;
    (void)resp;
    return app_write_call_limited(call, react_write, state_of(app_of(call))->reactions, "react", "reactions");
}

/* ---- Follow, Unfollow, Watch, Unwatch --------------------------------------------------------------- */

static int count_id(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)t;
    (void)id;
    (void)err;
    (*(uint32_t *)arg)++;
    return LAGOON_OK;
}

/* RESOURCE_EXHAUSTED when user_id follows THREADS_USER_FOLLOWS_MAX threads: the cap-th entry
 * of its by_user follows exists (keys only, skipped one by one). */
static int follows_room(store_txn *t, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = &lagoon_table_thread_follows, .index = lagoon_index_thread_follows_by_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = 1,
                     .page_number = THREADS_USER_FOLLOWS_MAX};
    store_page page;
    int st = store_scan(t, &q, NULL, NULL, &page, err);
    if (st == LAGOON_OK && page.count > 0)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          "you follow %d threads, the most a user may: unfollow some first", THREADS_USER_FOLLOWS_MAX);
    return st;
}

static int follow_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ThreadIdRequest *req = in->req;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int following = 0;
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    if (st == LAGOON_OK)
        st = is_following(t, th->id, in->who.user_id, &following, err);
    if (st == LAGOON_OK && !following)
        st = follows_room(t, in->who.user_id, err);
    if (st == LAGOON_OK && !following && th->follower_count >= THREADS_FOLLOWERS_MAX) {
        /* The follows of deleted accounts went uncounted: recount before refusing. */
        store_key prefix;
        store_key_reset(&prefix);
        store_key_u64(&prefix, th->id);
        store_query q = {.table = &lagoon_table_thread_follows, .index = lagoon_index_thread_follows_by_thread_user,
                         .prefix = prefix.buf, .prefix_len = prefix.len};
        th->follower_count = 0;
        st = app_each_id(t, &q, count_id, &th->follower_count, err);
        if (st == LAGOON_OK && th->follower_count >= THREADS_FOLLOWERS_MAX)
            st = store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "a thread has at most %d followers",
                            THREADS_FOLLOWERS_MAX);
    }
    if (st == LAGOON_OK && !following) {
        st = follow_row(t, th->id, in->who.user_id, in->now, err);
        th->follower_count++;
        if (st == LAGOON_OK)
            st = store_update(t, &lagoon_table_threads, th, err);
    }
    free(th);
    return st;
}

/* Leaving needs no access: it reveals nothing, and a follower who lost the thread may go. */
static int unfollow_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ThreadIdRequest *req = in->req;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, req->thread_id);
    store_key_u64(&k, in->who.user_id);
    uint64_t id;
    int st = store_get_by(t, &lagoon_table_thread_follows, lagoon_index_thread_follows_by_thread_user, &k, &id, NULL,
                          err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_thread_follows, id, err);
    if (st != LAGOON_OK)
        return st;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    st = store_get(t, &lagoon_table_threads, req->thread_id, th, err);
    if (st == LAGOON_OK && th->follower_count > 0) {
        th->follower_count--;
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    free(th);
    return st;
}

/* Follow, Unfollow, Watch and Unwatch: each writes a row or a topic membership (and its event),
 * so a loop of them is held to the user's toggles budget. */
static int toggle(rpc_call *call, app_write_fn fn)
{
    return app_write_call_limited(call, fn, state_of(app_of(call))->toggles, "thread-toggle", "follows or watches");
}

int handle_Threads_Follow(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return toggle(call, follow_write);
}

int handle_Threads_Unfollow(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return toggle(call, unfollow_write);
}

static int is_watching(store_txn *t, uint64_t user_id, uint64_t thread_id, int *watching, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, user_id);
    store_key_u32(&k, (uint32_t)lagoon_v1_Topic_Kind_THREAD);
    store_key_u64(&k, thread_id);
    int st = store_get_by(t, &lagoon_table_topic_members, lagoon_index_topic_members_by_user, &k, NULL, NULL, err);
    *watching = st == LAGOON_OK;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

/* Counts one more watcher of th from outside its (public) group and stores th: at the cap the
 * count is taken again first (those who left or joined the group since were not counted off),
 * RESOURCE_EXHAUSTED when it is still full. */
static int outside_room(store_txn *t, const app *a, thread *th, store_error *err)
{
    int st = LAGOON_OK;
    if (th->outside_watchers >= THREADS_OUTSIDE_WATCHERS_MAX) {
        watcher_walk w = {.a = a, .gid = th->group_id};
        st = each_watcher(t, th->id, count_outside, &w, err);
        th->outside_watchers = w.outside;
        if (st == LAGOON_OK && th->outside_watchers >= THREADS_OUTSIDE_WATCHERS_MAX)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                              "a group's thread has at most %d watchers from outside the group",
                              THREADS_OUTSIDE_WATCHERS_MAX);
    }
    th->outside_watchers++;
    return st == LAGOON_OK ? store_update(t, &lagoon_table_threads, th, err) : st;
}

/* A walk over a user's thread-topic memberships (threads_group_access_lost; Watch at the cap,
 * with gid 0): the user as a caller, with their role, and the group that changed. */
typedef struct access_walk {
    const app_write_in *in;
    rpc_caller them;
    uint64_t gid;
} access_walk;

/* Ends membership row id when it is of a thread of group gid that the user no longer sees, or
 * of a thread that is gone (deleted by a cascade Threads does not run, from before
 * threads_group_deleting, whose watchers stayed members). */
static int end_unseen_watch(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const access_walk *w = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    if (st != LAGOON_OK)
        return st;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    st = store_get(t, &lagoon_table_threads, m.topic.id, th, err);
    int of_group = st == LAGOON_OK && th->group_id == w->gid;
    if (of_group)
        st = place_of(t, &w->them, w->gid, &p, err);
    /* Who still sees a public group's thread stays, counted as a watcher from outside it (past
     * the cap, the watch ends). */
    int outside = of_group && w->gid != 0 && st == LAGOON_OK && p.reads && !p.private_group && !p.member;
    if (outside)
        st = outside_room(t, w->in->a, th, err);
    free(th);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && of_group && !p.reads) ||
        (outside && st == LAGOON_RESOURCE_EXHAUSTED))
        return events_topic_leave(t, w->in->a, m.user_id, &m.topic, err);
    return st;
}

/* end_unseen_watch over each of w's user's thread-topic memberships: at most
 * EVENTS_MAX_TOPICS_PER_USER (the join cap). */
static int end_unseen_watches(store_txn *t, access_walk *w, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, w->them.user_id);
    store_key_u32(&prefix, (uint32_t)lagoon_v1_Topic_Kind_THREAD);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, end_unseen_watch, w, err);
}

static int watch_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ThreadIdRequest *req = in->req;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    /* A watcher from outside a public group is counted (private_check's walk). */
    int outside = st == LAGOON_OK && th->group_id != 0 && !p.private_group && !p.member;
    int watching = 0;
    if (outside)
        st = is_watching(t, in->who.user_id, th->id, &watching, err);
    if (st == LAGOON_OK && outside && !watching)
        st = outside_room(t, in->a, th, err);
    free(th);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_Topic tp = thread_topic(req->thread_id);
    st = events_topic_join(t, in->a, in->who.user_id, &tp, err);
    if (st != LAGOON_RESOURCE_EXHAUSTED)
        return st;
    /* At the topic cap: the caller's watches of threads gone since make room first, then the
     * join is tried once more. */
    access_walk w = {.in = in, .them = in->who, .gid = 0};
    st = end_unseen_watches(t, &w, err);
    return st == LAGOON_OK ? events_topic_join(t, in->a, in->who.user_id, &tp, err) : st;
}

static int unwatch_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_ThreadIdRequest *req = in->req;
    lagoon_v1_Topic tp = thread_topic(req->thread_id);
    return events_topic_leave(t, in->a, in->who.user_id, &tp, err);
}

int handle_Threads_Watch(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return toggle(call, watch_write);
}

int handle_Threads_Unwatch(rpc_call *call, const lagoon_v1_ThreadIdRequest *req, lagoon_v1_ThreadsEmpty *resp)
{
    (void)req;
    (void)resp;
    return toggle(call, unwatch_write);
}

/* ---- RecordView ------------------------------------------------------------------------------------- */

/* Up to THREADS_VIEWS_TRIMMED view rows of one thread past the interval (trim_views). */
typedef struct stale_views {
    uint64_t ids[THREADS_VIEWS_TRIMMED];
    uint32_t n;
    int64_t now;
} stale_views;

static int stale_view(void *arg, uint64_t id, const void *row)
{
    stale_views *s = arg;
    const lagoon_v1_ThreadView *v = row;
    if (s->n < THREADS_VIEWS_TRIMMED && videos_view_counts_again(v->counted_at, s->now))
        s->ids[s->n++] = id;
    return LAGOON_OK;
}

/* Deletes the oldest THREADS_VIEWS_TRIMMED view rows of thread_id that count for nothing now. */
static int trim_views(store_txn *t, uint64_t thread_id, int64_t now, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, thread_id);
    store_query q = {.table = &lagoon_table_thread_views, .index = lagoon_index_thread_views_by_thread_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = THREADS_VIEWS_TRIMMED};
    stale_views s = {.now = now};
    store_page page;
    int st = store_scan(t, &q, stale_view, &s, &page, err);
    for (uint32_t i = 0; i < s.n && st == LAGOON_OK; i++)
        st = store_delete(t, &lagoon_table_thread_views, s.ids[i], err);
    return st;
}

/* A view counts once per user per thread per VIDEOS_VIEW_INTERVAL_MS, the rule of video views
 * (videos_view_counts_again); opening the thread is the view, so there is no minimum watched. */
static int view_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ThreadIdRequest *req = in->req;
    lagoon_v1_RecordThreadViewResponse *out = resp;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = thread_for(t, &in->who, req->thread_id, "thread_id", th, &p, err);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, req->thread_id);
    store_key_u64(&k, in->who.user_id);
    lagoon_v1_ThreadView vw = lagoon_v1_ThreadView_init_zero;
    int seen = 0;
    if (st == LAGOON_OK) {
        st = store_get_by(t, &lagoon_table_thread_views, lagoon_index_thread_views_by_thread_user, &k, NULL, &vw, err);
        seen = st == LAGOON_OK;
        if (st == LAGOON_NOT_FOUND)
            st = LAGOON_OK;
    }
    int counts = !seen || videos_view_counts_again(vw.counted_at, in->now);
    if (st == LAGOON_OK && counts && seen) {
        vw.counted_at = in->now;
        st = store_update(t, &lagoon_table_thread_views, &vw, err);
    } else if (st == LAGOON_OK && counts) {
        vw = (lagoon_v1_ThreadView){.thread_id = req->thread_id, .user_id = in->who.user_id, .counted_at = in->now};
        st = store_insert(t, &lagoon_table_thread_views, &vw, NULL, err);
    }
    if (st == LAGOON_OK && counts) {
        th->view_count++;
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    if (st == LAGOON_OK && counts) /* (the caller's row is fresh now: never one of them) */
        st = trim_views(t, th->id, in->now, err);
    out->counted = st == LAGOON_OK && counts;
    out->view_count = th->view_count;
    free(th);
    return st;
}

/* The caller's view of thread id as it stands, read: *again set when it would count now (or
 * it is unknown), else resp answered (counted false). */
static int view_read(store_txn *t, const rpc_caller *who, uint64_t id, int64_t now,
                     lagoon_v1_RecordThreadViewResponse *resp, int *again, store_error *err)
{
    thread *th = calloc(1, sizeof(*th)); /* zeroed: read below even when thread_for failed */
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    place p = {0};
    int st = thread_for(t, who, id, "thread_id", th, &p, err);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, id);
    store_key_u64(&k, who->user_id);
    lagoon_v1_ThreadView vw = lagoon_v1_ThreadView_init_zero;
    if (st == LAGOON_OK)
        st = store_get_by(t, &lagoon_table_thread_views, lagoon_index_thread_views_by_thread_user, &k, NULL, &vw, err);
    *again = st != LAGOON_OK || videos_view_counts_again(vw.counted_at, now);
    resp->counted = false;
    resp->view_count = th->view_count;
    free(th);
    return st == LAGOON_NOT_FOUND && p.reads ? LAGOON_OK : st;
}

/* A view within the interval of the caller's last counted one is answered from a read, without
 * a write: opening a thread again and again costs the single writer nothing. */
int handle_Threads_RecordView(rpc_call *call, const lagoon_v1_ThreadIdRequest *req,
                              lagoon_v1_RecordThreadViewResponse *resp)
{
    const app *a = app_of(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(a->db, &t, &err);
    int again = 1;
    if (st == LAGOON_OK) {
        st = view_read(t, rpc_call_caller(call), req->thread_id, app_now(a), resp, &again, &err);
        store_read_end(t);
    }
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    return again ? app_write_call(call, view_write, NULL) : LAGOON_OK;
}

/* ---- account deletion ------------------------------------------------------------------------------ */

/* A reaction of the deleted account: counted off its target, then deleted. */
static int reaction_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    reaction rr;
    int st = store_get(t, &lagoon_table_thread_reactions, id, &rr, err);
    if (st == LAGOON_NOT_FOUND) /* went with a reply deleted before it */
        return LAGOON_OK;
    if (st != LAGOON_OK)
        return st;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    st = store_get(t, &lagoon_table_threads, rr.thread_id, th, err);
    if (st == LAGOON_OK)
        st = target_counts(t, th, &rr, -1, NULL, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_thread_reactions, id, err);
    if (st == LAGOON_OK)
        st = publish_reaction(t, in->a, &rr, 0, err);
    free(th);
    return st;
}

/* A reply of the deleted account: removed as DeleteReply would, unless it is gone already
 * (under one removed before it). */
static int reply_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    reply *r = malloc(sizeof(*r));
    if (r == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_thread_replies, id, r, err);
    if (st == LAGOON_OK)
        st = reply_remove(t, in->a, r, err);
    free(r);
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

/* A follow of the deleted account: counted off its thread, then deleted. */
static int follow_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)arg;
    lagoon_v1_ThreadFollow f;
    int st = store_get(t, &lagoon_table_thread_follows, id, &f, err);
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_threads, f.thread_id, th, err);
    if (st == LAGOON_OK && th->follower_count > 0) {
        th->follower_count--;
        st = store_update(t, &lagoon_table_threads, th, err);
    }
    free(th);
    return st == LAGOON_OK ? store_delete(t, &lagoon_table_thread_follows, id, err) : st;
}

/* A thread of the deleted account, or of a group being deleted: its watchers leave, its kept
 * responses are forgotten (the account's or the group's cascade deletes it). */
static int thread_id_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const app_write_in *in = arg;
    thread *th = malloc(sizeof(*th));
    if (th == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_threads, id, th, err);
    if (st == LAGOON_OK)
        st = thread_going(t, in, th, err);
    free(th);
    return st;
}

static int each_of_user(store_txn *t, const store_table *tab, const store_index *idx, uint64_t user_id,
                        app_id_fn fn, const app_write_in *in, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = tab, .index = idx, .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, fn, (void *)in, err);
}

int threads_user_deleting(store_txn *t, const app_write_in *in, uint64_t user_id, store_error *err)
{
    int st = each_of_user(t, &lagoon_table_thread_reactions, lagoon_index_thread_reactions_by_user, user_id,
                          reaction_going, in, err);
    if (st == LAGOON_OK)
        st = each_of_user(t, &lagoon_table_thread_replies, lagoon_index_thread_replies_by_author, user_id,
                          reply_going, in, err);
    if (st == LAGOON_OK)
        st = each_of_user(t, &lagoon_table_thread_follows, lagoon_index_thread_follows_by_user, user_id,
                          follow_going, in, err);
    if (st == LAGOON_OK)
        st = each_of_user(t, &lagoon_table_threads, lagoon_index_threads_by_author, user_id, thread_id_going,
                          in, err);
    return st;
}

/* ---- access lost, group deleted --------------------------------------------------------------------- */

int threads_group_access_lost(store_txn *t, const app_write_in *in, uint64_t user_id, uint64_t group_id,
                              store_error *err)
{
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    access_walk w = {.in = in, .them = {.user_id = user_id}, .gid = group_id};
    int st = store_get(t, &lagoon_table_users, user_id, u, err);
    if (st == LAGOON_OK)
        w.them.role = (uint8_t)u->role;
    free(u);
    if (st == LAGOON_NOT_FOUND) /* an account being deleted: its memberships go with it */
        return LAGOON_OK;
    if (st != LAGOON_OK || w.them.role == lagoon_v1_Role_ADMIN)
        return st;
    return end_unseen_watches(t, &w, err);
}

int threads_group_deleting(store_txn *t, const app_write_in *in, uint64_t group_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, group_id);
    store_query q = {.table = &lagoon_table_threads, .index = lagoon_index_threads_by_place, .prefix = prefix.buf,
                     .prefix_len = prefix.len};
    return app_each_id(t, &q, thread_id_going, (void *)in, err);
}
