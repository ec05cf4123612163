/* Comments service: time-stamped, threaded comments on videos.
 *
 * Storage. One row per comment (comments.proto): a top-level comment has a moment in the video
 * (at_ms, an optional end_ms) and is indexed by moment and by time under its video; a reply is
 * indexed under its thread's root only, so that a video's markers and windows cost the same
 * whatever the length of its discussions. A thread is one level deep (every reply's root_id is
 * the top-level comment, parent_id what it answered), which keeps a video's or an account's
 * cascade at a fixed depth whatever the thread's shape.
 *
 * Access. Whoever may read the video (videos_readable: its owner, those it is shared with,
 * every signed-in user for a public video, administrators) may read and add comments; to anyone
 * else a comment does not exist (NOT_FOUND naming the request's field). What may be done to one
 * comment is a policy of relations (access.h): its author (owner), the video's owner (member),
 * an administrator.
 *
 * Events. A change is published to the video's topic (Topic VIDEO, the video's id) as a
 * reference, the comment's ids; comments_fill_event turns it into the comment as it is when the
 * router sends it. Viewers follow the topic with Follow. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_content.h"
#include "comments.h"
#include "events.h"
#include "lagoon_handlers.h"
#include "paging.h"
#include "videos.h"

/* ---- the module: the creation limiter, the event filler ---------------------------------------- */

static int comments_start(app *a, void **state, rpc_error *err)
{
    /* "N per minute" from the first: past N, wait until that minute is over. */
    return app_budget_start(a, a->cfg.comments, 0, 60 * 1000, state, err);
}

static int comments_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                               store_error *err);

const app_module comments_module = {
    .name = "comments",
    .start = comments_start,
    .stop = app_budget_stop,
    .fill_event = comments_fill_event, /* comment events are logged as references */
};

/* Add and Reply per user (APP_SETTINGS comments-per-minute). */
static limiter *create_limiter(const app *a)
{
    return app_state(a, &comments_module);
}

/* ---- events ------------------------------------------------------------------------------------ */

/* The ids a comment event carries: what it refers to, and all a DELETED event shows. */
static void comment_ids(lagoon_v1_Comment *dst, const lagoon_v1_Comment *src)
{
    dst->id = src->id;
    dst->video_id = src->video_id;
    dst->author_id = src->author_id;
    dst->parent_id = src->parent_id;
    dst->root_id = src->root_id;
}

/* c's change on its video's topic, as a reference (comments_fill_event fills it in). */
static int publish(store_txn *t, const app *a, const lagoon_v1_Comment *c, lagoon_v1_CommentEvent_Action action,
                   store_error *err)
{
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* ~20 KiB: its type can hold a whole comment */
    if (ev == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    ev->which_payload = lagoon_v1_Event_comment_tag;
    ev->payload.comment.action = action;
    ev->payload.comment.has_comment = true;
    comment_ids(&ev->payload.comment.comment, c);
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_VIDEO, c->video_id};
    int st = events_topic_publish(t, a, &tp, ev, err);
    free(ev);
    return st;
}

/* The router's side of publish (app_module.fill_event): an event goes out with the comment as
 * it is now; one whose comment was deleted since (or with its video, its thread or its
 * author) as DELETED with the ids. It recognises only publish's events: a comment payload on a
 * VIDEO topic of the comment's own video, and a row that matches the whole reference, so that
 * another event with a colliding id never shows a comment. */
static int comments_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                               store_error *err)
{
    if (ev->which_payload != lagoon_v1_Event_comment_tag || !ev->payload.comment.has_comment || !ev->has_topic ||
        ev->topic.kind != lagoon_v1_Topic_Kind_VIDEO || ev->topic.id != ev->payload.comment.comment.video_id ||
        ev->payload.comment.action == lagoon_v1_CommentEvent_Action_DELETED)
        return LAGOON_OK;
    const lagoon_v1_Comment *ref = &ev->payload.comment.comment;
    out->seq = ev->seq;
    out->created_at = ev->created_at;
    out->has_topic = true;
    out->topic = ev->topic;
    out->which_payload = lagoon_v1_Event_comment_tag;
    lagoon_v1_CommentEvent *ce = &out->payload.comment;
    ce->action = ev->payload.comment.action;
    ce->has_comment = true;
    int st = store_get(t, &lagoon_table_comments, ref->id, &ce->comment, err);
    const lagoon_v1_Comment *c = &ce->comment;
    if (st == LAGOON_OK && (c->video_id != ref->video_id || c->author_id != ref->author_id ||
                            c->parent_id != ref->parent_id || c->root_id != ref->root_id))
        st = LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_Comment_info, &ce->comment);
        ce->action = lagoon_v1_CommentEvent_Action_DELETED;
        comment_ids(&ce->comment, ref);
        st = LAGOON_OK;
    }
    *filled = st == LAGOON_OK;
    return st;
}

/* ---- notifications ------------------------------------------------------------------------------ */

/* Copies src into dst[cap], cut on a UTF-8 character boundary, with "..." when cut. */
static void cut_text(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap);
    if (n < cap) {
        memcpy(dst, src, n + 1);
        return;
    }
    size_t cut = cap - 4; /* room for "..." and the NUL */
    while (cut > 0 && ((unsigned char)src[cut] & 0xC0) == 0x80)
        cut--;
    snprintf(dst, cap, "%.*s...", (int)cut, src);
}

/* Whom one comment notifies: each user once. */
typedef struct notified {
    uint64_t ids[3 + COMMENTS_MENTIONS_MAX]; /* the author, the parent's author, the owner, mentions */
    size_t n;
} notified;

static int was_notified(const notified *nd, uint64_t id)
{
    for (size_t i = 0; i < nd->n; i++)
        if (nd->ids[i] == id)
            return 1;
    return 0;
}

/* What every notification of c shows: who, and the video's title (never the comment's words,
 * which a later Delete or Update would leave behind in the notification). */
typedef struct note_text {
    const char *who;                   /* the author's username */
    char video[200];                   /* the video's title, cut to fit */
} note_text;

static int note(store_txn *t, const app_write_in *in, uint64_t user, lagoon_v1_Notification_Type type,
                const char *what, const note_text *nt, uint64_t video_id, const char *key, store_error *err)
{
    char title[200];
    snprintf(title, sizeof(title), "%s %s", nt->who, what);
    return events_notify(t, in->a, user, type, title, nt->video, video_id, key, 0, NULL, err);
}

/* Whether user u may read video id now (*reads): only those learn of a comment. */
static int user_reads_video(store_txn *t, const lagoon_v1_User *u, uint64_t video_id, int *reads, store_error *err)
{
    rpc_caller who = {.user_id = u->id, .role = (uint8_t)u->role, .verified = u->verified,
                      .grants = app_grants((uint8_t)u->role, u->verified)};
    int st = videos_readable(t, &who, video_id, NULL, NULL, NULL, err);
    *reads = st == LAGOON_OK;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

/* COMMENT_MENTION to each user c mentions (the first COMMENTS_MENTIONS_MAX distinct names)
 * who may read the video and has not been notified of c already. */
static int notify_mentions(store_txn *t, const app_write_in *in, const lagoon_v1_Comment *c, const note_text *nt,
                           notified *nd, store_error *err)
{
    char names[COMMENTS_MENTIONS_MAX][CHAT_USERNAME_MAX + 1];
    size_t nnames = chat_mentions(c->content, names, COMMENTS_MENTIONS_MAX); /* the chats' rule */
    if (nnames == 0)
        return LAGOON_OK;
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (size_t i = 0; i < nnames && st == LAGOON_OK; i++) {
        store_key k;
        store_key_reset(&k);
        store_key_str_fold(&k, names[i]);
        st = store_get_by(t, &lagoon_table_users, lagoon_index_users_by_username, &k, NULL, u, err);
        if (st == LAGOON_NOT_FOUND) {
            st = LAGOON_OK; /* not a user: plain text */
            continue;
        }
        if (st != LAGOON_OK || !u->active || was_notified(nd, u->id))
            continue;
        /* Only someone who may read the video learns of the comment. */
        int reads = 0;
        st = user_reads_video(t, u, c->video_id, &reads, err);
        if (st == LAGOON_OK && reads)
            st = note(t, in, u->id, lagoon_v1_Notification_Type_COMMENT_MENTION, "mentioned you in a comment", nt,
                      c->video_id, "", err);
        if (st == LAGOON_OK && !reads)
            continue;
        if (st == LAGOON_OK)
            nd->ids[nd->n++] = u->id;
    }
    free(u);
    return st;
}

/* The notifications of new comment c on video v: the parent's author on a reply
 * (COMMENT_REPLY), the video's owner (VIDEO_COMMENT, one per video while unread), the users it
 * mentions (COMMENT_MENTION); never its author, and each user once. */
static int notify_comment(store_txn *t, const app_write_in *in, const lagoon_v1_Video *v, const lagoon_v1_Comment *c,
                          uint64_t parent_author, store_error *err)
{
    lagoon_v1_User *author = malloc(sizeof(*author));
    if (author == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, c->author_id, author, err);
    note_text nt = {.who = author->username};
    cut_text(nt.video, sizeof(nt.video), v->title);
    notified nd = {{c->author_id}, 1};
    if (st == LAGOON_OK && parent_author != 0 && !was_notified(&nd, parent_author)) {
        /* Only if the parent's author may still read the video (a share may have ended). */
        lagoon_v1_User *pa = malloc(sizeof(*pa));
        int reads = 0;
        if (pa == NULL) {
            st = store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        } else {
            st = store_get(t, &lagoon_table_users, parent_author, pa, err);
            if (st == LAGOON_OK && pa->active)
                st = user_reads_video(t, pa, v->id, &reads, err);
            else if (st == LAGOON_NOT_FOUND)
                st = LAGOON_OK;
            free(pa);
        }
        if (st == LAGOON_OK && reads)
            st = note(t, in, parent_author, lagoon_v1_Notification_Type_COMMENT_REPLY, "replied to your comment", &nt,
                      v->id, "", err);
        nd.ids[nd.n++] = parent_author;
    }
    if (st == LAGOON_OK && !was_notified(&nd, v->owner_id)) {
        char key[40];
        snprintf(key, sizeof(key), "vc:%llu", (unsigned long long)v->id);
        st = note(t, in, v->owner_id, lagoon_v1_Notification_Type_VIDEO_COMMENT, "commented on your video", &nt,
                  v->id, key, err);
        nd.ids[nd.n++] = v->owner_id;
    }
    if (st == LAGOON_OK)
        st = notify_mentions(t, in, c, &nt, &nd, err);
    free(author);
    return st;
}

/* ---- access ------------------------------------------------------------------------------------ */

/* A comment with what its policies need of its video. */
typedef struct comment_res {
    const lagoon_v1_Comment *c;
    uint64_t video_owner;
} comment_res;

static int is_video_owner(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)err;
    *holds = ((const comment_res *)res)->video_owner == who->user_id;
    return LAGOON_OK;
}

/* The policies are checked only once videos_readable let the caller read the video
 * (comment_for): every caller that gets here may read the comment. */
static int reads_video(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)who;
    (void)res;
    (void)err;
    *holds = 1;
    return LAGOON_OK;
}

#define COMMENT_READERS (APP_REL_OWNER | APP_REL_ADMIN | APP_REL_MEMBER | APP_REL_SHARED)
#define COMMENT_RESOLVERS {[APP_REL_MEMBER_BIT] = is_video_owner, [APP_REL_SHARED_BIT] = reads_video}

static const app_policy edit_policy = {
    .grants = {[APP_READ] = COMMENT_READERS, [APP_CHANGE] = APP_REL_OWNER},
    .resolve = COMMENT_RESOLVERS,
    .not_found = "no such comment",
    .denied = {[APP_CHANGE] = "only its author can edit a comment"},
};

static const app_policy delete_policy = {
    .grants = {[APP_READ] = COMMENT_READERS, [APP_CHANGE] = APP_REL_OWNER | APP_REL_MEMBER | APP_REL_ADMIN},
    .resolve = COMMENT_RESOLVERS,
    .not_found = "no such comment",
    .denied = {[APP_CHANGE] = "only its author, the video's owner or an administrator can delete a comment"},
};

static const app_policy resolve_policy = {
    .grants = {[APP_READ] = COMMENT_READERS, [APP_CHANGE] = APP_REL_OWNER | APP_REL_MEMBER},
    .resolve = COMMENT_RESOLVERS,
    .not_found = "no such comment",
    .denied = {[APP_CHANGE] = "only its author or the video's owner can resolve or reopen a comment"},
};

/* Reads comment id (the request's `field`) into c and its video into v when the caller may
 * read the video, else NOT_FOUND naming field; then checks the policy's APP_CHANGE (p NULL:
 * reading is enough). */
static int comment_for(store_txn *t, const app_write_in *in, uint64_t id, const char *field, const app_policy *p,
                       lagoon_v1_Comment *c, lagoon_v1_Video *v, store_error *err)
{
    int st = store_get(t, &lagoon_table_comments, id, c, err);
    if (st == LAGOON_OK)
        st = videos_readable(t, &in->who, c->video_id, field, v, NULL, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such comment");
    if (st != LAGOON_OK || p == NULL)
        return st;
    comment_res r = {c, v->owner_id};
    return app_check(t, &in->who, p, APP_CHANGE, &r, c->author_id, err);
}

/* ---- Add, Reply -------------------------------------------------------------------------------- */

/* A moment must lie within the video when its duration is known. */
static int moment_check(const lagoon_v1_Video *v, uint32_t at_ms, uint32_t end_ms, store_error *err)
{
    if (v->duration_seconds == 0)
        return LAGOON_OK;
    uint64_t max = (uint64_t)v->duration_seconds * 1000;
    if (at_ms > max)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "at_ms", "must be within the video (at most %llu)",
                          (unsigned long long)max);
    if (end_ms > max)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "end_ms", "must be within the video (at most %llu)",
                          (unsigned long long)max);
    return LAGOON_OK;
}

/* Stores new comment c (built in the response) on video v, publishes it and notifies. */
static int comment_create(store_txn *t, const app_write_in *in, const lagoon_v1_Video *v, lagoon_v1_Comment *c,
                          uint64_t parent_author, store_error *err)
{
    c->author_id = in->who.user_id;
    c->created_at = in->now;
    int st = store_insert(t, &lagoon_table_comments, c, NULL, err);
    if (st == LAGOON_OK)
        st = publish(t, in->a, c, lagoon_v1_CommentEvent_Action_ADDED, err);
    if (st == LAGOON_OK)
        st = notify_comment(t, in, v, c, parent_author, err);
    /* A retry with the call's key gets this response while the comment lasts (Delete drops it). */
    if (st == LAGOON_OK)
        app_result_shows(in, c->id);
    return st;
}

static int add_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_AddCommentRequest *req = in->req;
    lagoon_v1_Comment *c = resp;
    lagoon_v1_Video *v = calloc(1, sizeof(*v)); /* ~37 KiB */
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    uint32_t end_ms = req->has_end_ms ? req->end_ms : 0;
    int st = videos_readable(t, &in->who, req->video_id, "video_id", v, NULL, err);
    if (st == LAGOON_OK)
        st = moment_check(v, req->at_ms, end_ms, err);
    if (st == LAGOON_OK) {
        c->video_id = req->video_id;
        APP_STRCPY(c->content, req->content);
        APP_STRCPY(c->category, req->category);
        c->at_ms = req->at_ms;
        c->end_ms = end_ms;
        st = comment_create(t, in, v, c, 0, err);
    }
    free(v);
    return st;
}

static int reply_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_ReplyCommentRequest *req = in->req;
    lagoon_v1_Comment *c = resp;
    lagoon_v1_Comment *parent = malloc(sizeof(*parent)), *root = malloc(sizeof(*root));
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (parent == NULL || root == NULL || v == NULL) {
        free(parent);
        free(root);
        free(v);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = comment_for(t, in, req->parent_id, "parent_id", NULL, parent, v, err);
    if (st == LAGOON_OK && req->video_id != 0 && req->video_id != parent->video_id)
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, "video_id", "the parent comment is on another video");
    /* Replies to replies join the same thread: its root is the top-level comment. */
    uint64_t root_id = st == LAGOON_OK && parent->root_id ? parent->root_id : req->parent_id;
    if (st == LAGOON_OK)
        st = root_id == parent->id ? (*root = *parent, LAGOON_OK)
                                   : store_get(t, &lagoon_table_comments, root_id, root, err);
    if (st == LAGOON_OK && root->reply_count >= COMMENTS_THREAD_MAX)
        st = store_fail(err, LAGOON_FAILED_PRECONDITION, "parent_id", "a thread has at most %d replies",
                        COMMENTS_THREAD_MAX);
    if (st == LAGOON_OK) {
        root->reply_count++;
        st = store_update(t, &lagoon_table_comments, root, err);
    }
    if (st == LAGOON_OK) {
        c->video_id = parent->video_id;
        APP_STRCPY(c->content, req->content);
        APP_STRCPY(c->category, req->category);
        c->at_ms = root->at_ms; /* the thread's moment */
        c->end_ms = root->end_ms;
        c->parent_id = parent->id;
        c->root_id = root_id;
        st = comment_create(t, in, v, c, parent->author_id, err);
    }
    free(parent);
    free(root);
    free(v);
    return st;
}

/* Every comment is a write on the single writer and a notification: a per-user budget keeps
 * one account from flooding either (app_write_call_limited: only a call that stores a comment
 * counts). */
static int create_call(rpc_call *call, app_write_fn fn)
{
    return app_write_call_limited(call, fn, create_limiter(app_of(call)), "comment", "comments");
}

int handle_Comments_Add(rpc_call *call, const lagoon_v1_AddCommentRequest *req, lagoon_v1_Comment *resp)
{
    (void)resp;
    if (req->has_end_ms && req->end_ms <= req->at_ms)
        return rpc_call_violation(call, "end_ms", "must be after at_ms");
    return create_call(call, add_write);
}

int handle_Comments_Reply(rpc_call *call, const lagoon_v1_ReplyCommentRequest *req, lagoon_v1_Comment *resp)
{
    (void)req; /* (its rules in comments.proto checked it) */
    (void)resp;
    return create_call(call, reply_write);
}

/* ---- Update, Resolve, Reopen ------------------------------------------------------------------- */

/* The comment is read into the response and stored from there. */
static int update_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateCommentRequest *req = in->req;
    lagoon_v1_Comment *c = resp;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = comment_for(t, in, req->comment_id, "comment_id", &edit_policy, c, v, err);
    if (st == LAGOON_OK && c->parent_id != 0 && (req->has_at_ms || req->has_end_ms))
        st = store_fail(err, LAGOON_INVALID_ARGUMENT, req->has_at_ms ? "at_ms" : "end_ms",
                        "a reply has its thread's moment");
    if (st == LAGOON_OK) {
        if (req->has_content)
            APP_STRCPY(c->content, req->content);
        if (req->has_category)
            APP_STRCPY(c->category, req->category);
        if (req->has_at_ms)
            c->at_ms = req->at_ms;
        if (req->has_end_ms)
            c->end_ms = req->end_ms;
        if (c->end_ms != 0 && c->end_ms <= c->at_ms)
            st = store_fail(err, LAGOON_INVALID_ARGUMENT, "end_ms", "must be after at_ms");
    }
    /* Only a moment that changes is checked against the duration: a video cut shorter since
     * must not stop its comments' text from being edited. */
    if (st == LAGOON_OK && (req->has_at_ms || req->has_end_ms))
        st = moment_check(v, c->at_ms, c->end_ms, err);
    if (st == LAGOON_OK) {
        c->edited_at = in->now;
        st = store_update(t, &lagoon_table_comments, c, err);
    }
    if (st == LAGOON_OK) {
        st = publish(t, in->a, c, lagoon_v1_CommentEvent_Action_EDITED, err);
        app_result_shows(in, c->id); /* Delete drops the kept response with the comment */
    }
    free(v);
    return st;
}

int handle_Comments_Update(rpc_call *call, const lagoon_v1_UpdateCommentRequest *req, lagoon_v1_Comment *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, update_write, NULL);
}

/* Resolve (args non-NULL) or Reopen: changes and publishes only when the state changes, so a
 * second call is a no-op that answers the comment. */
static int resolve_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CommentIdRequest *req = in->req;
    int resolve = in->args != NULL;
    lagoon_v1_Comment *c = resp;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = comment_for(t, in, req->comment_id, "comment_id", &resolve_policy, c, v, err);
    free(v);
    if (st == LAGOON_OK)
        app_result_shows(in, c->id); /* a no-op's kept response goes with the comment too */
    if (st != LAGOON_OK || (int)c->resolved == resolve)
        return st;
    c->resolved = resolve;
    c->resolved_at = resolve ? in->now : 0;
    st = store_update(t, &lagoon_table_comments, c, err);
    if (st == LAGOON_OK)
        st = publish(t, in->a, c,
                     resolve ? lagoon_v1_CommentEvent_Action_RESOLVED : lagoon_v1_CommentEvent_Action_REOPENED, err);
    return st;
}

/* resolve_write's flag: its args pointer set or not (no state of its own). */
static const int resolving = 1;

int handle_Comments_Resolve(rpc_call *call, const lagoon_v1_CommentIdRequest *req, lagoon_v1_Comment *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, resolve_write, &resolving);
}

int handle_Comments_Reopen(rpc_call *call, const lagoon_v1_CommentIdRequest *req, lagoon_v1_Comment *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, resolve_write, NULL);
}

/* ---- Delete -------------------------------------------------------------------------------------- */

/* The ids of a deleted comment and of the replies that go with it. */
typedef struct id_set {
    uint64_t ids[COMMENTS_THREAD_MAX + 1];
    size_t n;
} id_set;

static int add_id(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)t;
    id_set *s = arg;
    if (s->n >= sizeof(s->ids) / sizeof(s->ids[0])) /* never: Reply keeps the thread cap */
        return store_fail(err, LAGOON_INTERNAL, NULL, "thread larger than %d replies", COMMENTS_THREAD_MAX);
    s->ids[s->n++] = id;
    return LAGOON_OK;
}

/* Adds to s the ids of idx's rows under key id. */
static int add_ids_under(store_txn *t, const store_index *idx, uint64_t id, id_set *s, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, id);
    store_query q = {.table = &lagoon_table_comments, .index = idx, .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, add_id, s, err);
}

/* The methods whose kept responses show a comment (app_result_shows). */
static const wire_method *const showing_methods[] = {
    &lagoon_method_Comments_Add,     &lagoon_method_Comments_Reply,  &lagoon_method_Comments_Update,
    &lagoon_method_Comments_Resolve, &lagoon_method_Comments_Reopen,
};

/* A top-level comment goes with its thread (the root_id reference cascades); a reply with the
 * replies below it, found through by_parent and counted off its thread. */
static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_CommentIdRequest *req = in->req;
    lagoon_v1_Comment *c = malloc(sizeof(*c)), *root = malloc(sizeof(*root));
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    id_set *gone = malloc(sizeof(*gone));
    if (c == NULL || root == NULL || v == NULL || gone == NULL) {
        free(c);
        free(root);
        free(v);
        free(gone);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    gone->n = 0;
    int st = comment_for(t, in, req->comment_id, "comment_id", &delete_policy, c, v, err);
    if (st == LAGOON_OK) {
        gone->ids[0] = c->id;
        gone->n = 1;
        if (c->root_id == 0) {
            st = add_ids_under(t, lagoon_index_comments_by_root_time, c->id, gone, err);
        } else {
            /* Breadth first: each id's direct replies join the set, until none is left. */
            for (size_t i = 0; i < gone->n && st == LAGOON_OK; i++)
                st = add_ids_under(t, lagoon_index_comments_by_parent, gone->ids[i], gone, err);
        }
    }
    /* A retry of a call that showed one of them runs again instead of bringing it back. */
    for (size_t i = 0; i < gone->n && st == LAGOON_OK; i++)
        for (size_t m = 0; m < sizeof(showing_methods) / sizeof(showing_methods[0]) && st == LAGOON_OK; m++)
            st = app_forget_results(t, showing_methods[m], gone->ids[i], err);
    if (st == LAGOON_OK && c->root_id != 0) {
        for (size_t i = gone->n; i-- > 0 && st == LAGOON_OK;)
            st = store_delete(t, &lagoon_table_comments, gone->ids[i], err);
        if (st == LAGOON_OK)
            st = store_get(t, &lagoon_table_comments, c->root_id, root, err);
        if (st == LAGOON_OK) {
            root->reply_count = root->reply_count > gone->n ? root->reply_count - (uint32_t)gone->n : 0;
            st = store_update(t, &lagoon_table_comments, root, err);
        }
    } else if (st == LAGOON_OK) {
        st = store_delete(t, &lagoon_table_comments, c->id, err);
    }
    if (st == LAGOON_OK)
        st = publish(t, in->a, c, lagoon_v1_CommentEvent_Action_DELETED, err);
    free(c);
    free(root);
    free(v);
    free(gone);
    return st;
}

int handle_Comments_Delete(rpc_call *call, const lagoon_v1_CommentIdRequest *req, lagoon_v1_CommentsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}

/* ---- Follow, Unfollow ---------------------------------------------------------------------------- */

static int follow_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_FollowVideoRequest *req = in->req;
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_VIDEO, req->video_id};
    int st = videos_readable(t, &in->who, req->video_id, "video_id", NULL, NULL, err);
    return st == LAGOON_OK ? events_topic_join(t, in->a, in->who.user_id, &tp, err) : st;
}

/* Leaving needs no access: it reveals nothing, and a follower who lost the video may go. */
static int unfollow_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_FollowVideoRequest *req = in->req;
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_VIDEO, req->video_id};
    return events_topic_leave(t, in->a, in->who.user_id, &tp, err);
}

int handle_Comments_Follow(rpc_call *call, const lagoon_v1_FollowVideoRequest *req, lagoon_v1_CommentsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, follow_write, NULL);
}

int handle_Comments_Unfollow(rpc_call *call, const lagoon_v1_FollowVideoRequest *req, lagoon_v1_CommentsEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, unfollow_write, NULL);
}

/* Forgets the kept responses that show comment id (one of a video being deleted). */
static int forget_shown(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)arg;
    int st = LAGOON_OK;
    for (size_t m = 0; m < sizeof(showing_methods) / sizeof(showing_methods[0]) && st == LAGOON_OK; m++)
        st = app_forget_results(t, showing_methods[m], id, err);
    return st;
}

int comments_video_deleting(store_txn *t, uint64_t video_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, video_id);
    store_query q = {.table = &lagoon_table_comments, .index = lagoon_index_comments_by_video,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, forget_shown, NULL, err);
}

/* comments_video_readers_changed's state. */
typedef struct prune {
    const app *a;
    lagoon_v1_Topic topic;
    lagoon_v1_User *u; /* room for each member's row */
} prune;

/* Ends member row id's membership if its user may no longer read the video. */
static int prune_member(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    prune *p = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_users, m.user_id, p->u, err);
    if (st != LAGOON_OK)
        return st;
    rpc_caller who = {.user_id = p->u->id, .role = (uint8_t)p->u->role, .verified = p->u->verified,
                      .grants = app_grants((uint8_t)p->u->role, p->u->verified)};
    st = videos_readable(t, &who, p->topic.id, NULL, NULL, NULL, err);
    return st == LAGOON_NOT_FOUND ? events_topic_leave(t, p->a, m.user_id, &p->topic, err) : st;
}

/* Ends member row id's membership, whoever it is (the video goes). */
static int end_member(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    prune *p = arg;
    lagoon_v1_TopicMember m;
    int st = store_get(t, &lagoon_table_topic_members, id, &m, err);
    return st == LAGOON_OK ? events_topic_leave(t, p->a, m.user_id, &p->topic, err) : st;
}

int comments_video_going(store_txn *t, const app *a, uint64_t video_id, store_error *err)
{
    int st = comments_video_deleting(t, video_id, err);
    if (st != LAGOON_OK)
        return st;
    prune p = {a, {lagoon_v1_Topic_Kind_VIDEO, video_id}, NULL};
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)p.topic.kind);
    store_key_u64(&prefix, video_id);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_topic,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, end_member, &p, err);
}

int comments_video_readers_changed(store_txn *t, const app *a, uint64_t video_id, store_error *err)
{
    prune p = {a, {lagoon_v1_Topic_Kind_VIDEO, video_id}, malloc(sizeof(lagoon_v1_User))};
    if (p.u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)p.topic.kind);
    store_key_u64(&prefix, video_id);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_topic,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    int st = app_each_id(t, &q, prune_member, &p, err);
    free(p.u);
    return st;
}

/* ---- lists ----------------------------------------------------------------------------------------- */

/* The end of a window: rows at or past `to` are left out, and once one is seen (the scan is
 * in moment order) every later one is too, so the page is the last. */
typedef struct window_end {
    uint32_t to;
    int passed;
} window_end;

static int add_comment(void *arg, void *item, const void *row)
{
    window_end *w = arg;
    const lagoon_v1_Comment *c = row;
    if (w != NULL && c->at_ms >= w->to) {
        w->passed = 1;
        return 0;
    }
    *(lagoon_v1_Comment *)item = *c;
    return 1;
}

static paging_list list_paging(uint32_t size, uint32_t per_page, const char *token, uint32_t page)
{
    paging_list l = {.size = page ? per_page : size, .size_field = page ? "per_page" : "page_size",
                     .token = token, .number = page, .resp = &lagoon_v1_ListCommentsResponse_info,
                     .items_tag = lagoon_v1_ListCommentsResponse_comments_tag, .item = add_comment,
                     .item_size = sizeof(lagoon_v1_Comment)};
    return l;
}

/* One page of l in one read transaction, once the caller may read the video: video_id, or
 * (video_id 0) the video of comment comment_id, whose thread the page is then (prefix is set
 * to its root). A video or comment the caller may not read is NOT_FOUND naming field. */
static int list_page(rpc_call *call, paging_list *l, store_key *prefix, uint64_t video_id, uint64_t comment_id,
                     const char *field, lagoon_v1_ListCommentsResponse *resp)
{
    int st = paging_check(call, l);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    lagoon_v1_Comment *c = comment_id ? malloc(sizeof(*c)) : NULL;
    if (comment_id && c == NULL) {
        store_read_end(t);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (c != NULL) {
        st = store_get(t, &lagoon_table_comments, comment_id, c, &err);
        if (st == LAGOON_OK) {
            video_id = c->video_id;
            store_key_reset(prefix);
            store_key_u64(prefix, c->root_id ? c->root_id : c->id);
            l->query.prefix = prefix->buf;
            l->query.prefix_len = prefix->len;
        }
    }
    if (st == LAGOON_OK)
        st = videos_readable(t, rpc_call_caller(call), video_id, field, NULL, NULL, &err);
    if (st == LAGOON_NOT_FOUND)
        st = store_fail(&err, LAGOON_NOT_FOUND, field, comment_id ? "no such comment" : "no such video");
    if (st == LAGOON_OK)
        st = paging_scan(t, l, &err);
    store_read_end(t);
    free(c);
    resp->comments = l->items; /* FT_POINTER: freed with the call */
    resp->comments_count = (pb_size_t)l->count;
    if (st == LAGOON_OK)
        APP_STRCPY(resp->next_page_token, l->next_page_token);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

int handle_Comments_List(rpc_call *call, const lagoon_v1_ListCommentsRequest *req, lagoon_v1_ListCommentsResponse *resp)
{
    paging_list l = list_paging(req->page_size, req->per_page, req->page_token, req->page);
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->video_id);
    int newest = req->order == lagoon_v1_ListCommentsRequest_Order_NEWEST;
    l.query.table = &lagoon_table_comments;
    l.query.index = newest ? lagoon_index_comments_by_video_time : lagoon_index_comments_by_video_moment;
    l.query.reverse = newest;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    return list_page(call, &l, &prefix, req->video_id, 0, "video_id", resp);
}

int handle_Comments_ListWindow(rpc_call *call, const lagoon_v1_ListCommentWindowRequest *req,
                               lagoon_v1_ListCommentsResponse *resp)
{
    if (req->to_ms <= req->from_ms)
        return rpc_call_violation(call, "to_ms", "must be after from_ms");
    window_end w = {req->to_ms, 0};
    paging_list l = list_paging(req->page_size, req->per_page, req->page_token, req->page);
    l.arg = &w;
    store_key prefix, start;
    store_key_reset(&prefix);
    store_key_u64(&prefix, req->video_id);
    start = prefix;
    store_key_u32(&start, req->from_ms);
    l.query.table = &lagoon_table_comments;
    l.query.index = lagoon_index_comments_by_video_moment;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    l.query.start = start.buf;
    l.query.start_len = start.len;
    int st = list_page(call, &l, &prefix, req->video_id, 0, "video_id", resp);
    if (st == LAGOON_OK && w.passed)
        resp->next_page_token[0] = '\0';
    return st;
}

int handle_Comments_ListReplies(rpc_call *call, const lagoon_v1_ListRepliesRequest *req,
                                lagoon_v1_ListCommentsResponse *resp)
{
    paging_list l = list_paging(req->page_size, req->per_page, req->page_token, req->page);
    store_key prefix;
    l.query.table = &lagoon_table_comments;
    l.query.index = lagoon_index_comments_by_root_time;
    return list_page(call, &l, &prefix, 0, req->comment_id, "comment_id", resp);
}
