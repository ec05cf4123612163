/* Threads end to end through the generated client against the real server and store: the
 * access matrix (group member, non-member, author, group admin, site administrator,
 * anonymous; public and private groups, the public feed), replies one level deep, the lists
 * and their order (pinned first, then last activity), lock and pin rules, reactions toggled by
 * several clients at once (counts equal a recount), follows and the collapsed THREAD_REPLY
 * notification, live events on the thread's topic, views once per user per hour, the
 * cascades (thread, group, account) on disk, and bad input naming its field. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "events.h"
#include "lagoon_stubs.h"
#include "testserver.h"
#include "threads.h"

#define WAIT_MS 5000

static test_app *T;
static lagoon_client *C;

/* own owns the groups; adm is a group admin; mem a member; out stays outside; root is a site
 * administrator. */
static uint64_t own, adm, mem, out, root;
static char own_tok[65], adm_tok[65], mem_tok[65], out_tok[65], root_tok[65];

static lagoon_v1_Thread TH;
static lagoon_v1_ThreadReply RP;
static lagoon_v1_ThreadsEmpty TE;
static lagoon_v1_ReactThreadResponse RR;
static lagoon_v1_ListThreadsResponse LT;
static lagoon_v1_ListThreadRepliesResponse LR;
static lagoon_v1_ListReactionsResponse LX;

/* test_expect, with the violations printed when the status is not the one expected. */
static void expect_on(lagoon_client *c, int st, int code, const char *field, int line)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    for (pb_size_t i = 0; st != code && i < m->violations_count; i++)
        print_message("violation %s: %s\n", m->violations[i].field, m->violations[i].description);
    test_expect(c, st, code, field, line);
}
#define EXPECT(st, code, field) expect_on(C, (st), (code), (field), __LINE__)
#define PUB lagoon_v1_Group_Visibility_PUBLIC
#define PRIV lagoon_v1_Group_Visibility_PRIVATE

static void release_lists(void)
{
    pb_release(lagoon_v1_ListThreadsResponse_fields, &LT);
    memset(&LT, 0, sizeof(LT));
    pb_release(lagoon_v1_ListThreadRepliesResponse_fields, &LR);
    memset(&LR, 0, sizeof(LR));
    pb_release(lagoon_v1_ListReactionsResponse_fields, &LX);
    memset(&LX, 0, sizeof(LX));
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    C = test_client(T);
    own = test_verified_user(T, C, "own", lagoon_v1_Role_STUDENT, own_tok);
    adm = test_verified_user(T, C, "adm", lagoon_v1_Role_STUDENT, adm_tok);
    mem = test_verified_user(T, C, "mem", lagoon_v1_Role_STUDENT, mem_tok);
    out = test_verified_user(T, C, "out", lagoon_v1_Role_STUDENT, out_tok);
    root = test_admin_user(T, C, "root", root_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    release_lists();
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* Each test starts a minute later: the per-user budgets are fresh. */
static void fresh(void)
{
    test_clock_advance(T, 61 * 1000);
}

/* ---- helpers ------------------------------------------------------------------------------------ */

static uint64_t group(const char *name, lagoon_v1_Group_Visibility vis)
{
    lagoon_v1_CreateGroupRequest r = lagoon_v1_CreateGroupRequest_init_zero;
    lagoon_v1_Group g;
    lagoon_v1_GroupMember m;
    snprintf(r.name, sizeof(r.name), "%s", name);
    r.visibility = vis;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Create(C, &r, &g), LAGOON_OK, NULL);
    for (int i = 0; i < 2; i++) {
        lagoon_v1_GroupUserRequest inv = {g.id, i ? mem : adm};
        lagoon_set_token(C, own_tok);
        EXPECT(lagoon_Groups_Invite(C, &inv, &m), LAGOON_OK, NULL);
        lagoon_v1_GroupRequest acc = {g.id};
        lagoon_set_token(C, i ? mem_tok : adm_tok);
        EXPECT(lagoon_Groups_AcceptInvite(C, &acc, &m), LAGOON_OK, NULL);
    }
    lagoon_v1_SetGroupRoleRequest sr = {g.id, adm, lagoon_v1_GroupMember_Role_ADMIN};
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_SetRole(C, &sr, &m), LAGOON_OK, NULL);
    return g.id;
}

static lagoon_v1_CreateThreadRequest CR;

static void create_req(uint64_t gid, const char *title)
{
    memset(&CR, 0, sizeof(CR));
    CR.group_id = gid;
    snprintf(CR.title, sizeof(CR.title), "%s", title);
    snprintf(CR.text, sizeof(CR.text), "how do I play bar 12?");
    CR.has_video = true;
    snprintf(CR.video.url, sizeof(CR.video.url), "https://example.com/q.mp4");
    CR.video.duration_seconds = 30;
}

static int create(const char *tok, uint64_t gid, const char *title)
{
    create_req(gid, title);
    lagoon_set_token(C, tok);
    return lagoon_Threads_Create(C, &CR, &TH);
}

static uint64_t created(const char *tok, uint64_t gid, const char *title)
{
    EXPECT(create(tok, gid, title), LAGOON_OK, NULL);
    return TH.id;
}

static int get(const char *tok, uint64_t id)
{
    lagoon_v1_ThreadIdRequest r = {id};
    lagoon_set_token(C, tok);
    return lagoon_Threads_Get(C, &r, &TH);
}

static int by_id(const char *tok, uint64_t id, int (*fn)(lagoon_client *, const lagoon_v1_ThreadIdRequest *,
                                                         lagoon_v1_ThreadsEmpty *))
{
    lagoon_v1_ThreadIdRequest r = {id};
    lagoon_set_token(C, tok);
    return fn(C, &r, &TE);
}

static int del(const char *tok, uint64_t id)
{
    return by_id(tok, id, lagoon_Threads_Delete);
}

static int flag(const char *tok, uint64_t id, int lock, int on)
{
    lagoon_v1_SetThreadFlagRequest r = {id, on};
    lagoon_set_token(C, tok);
    return lock ? lagoon_Threads_Lock(C, &r, &TH) : lagoon_Threads_Pin(C, &r, &TH);
}

static int update(const char *tok, uint64_t id, const char *title)
{
    lagoon_v1_UpdateThreadRequest r = lagoon_v1_UpdateThreadRequest_init_zero;
    r.thread_id = id;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "%s", title);
    lagoon_set_token(C, tok);
    return lagoon_Threads_Update(C, &r, &TH);
}

static lagoon_v1_ReplyThreadRequest RQ;

static int reply(const char *tok, uint64_t tid, uint64_t parent, const char *text)
{
    memset(&RQ, 0, sizeof(RQ));
    RQ.thread_id = tid;
    RQ.parent_id = parent;
    snprintf(RQ.text, sizeof(RQ.text), "%s", text);
    lagoon_set_token(C, tok);
    return lagoon_Threads_Reply(C, &RQ, &RP);
}

static uint64_t replied(const char *tok, uint64_t tid, uint64_t parent, const char *text)
{
    EXPECT(reply(tok, tid, parent, text), LAGOON_OK, NULL);
    return RP.id;
}

static int del_reply(const char *tok, uint64_t id)
{
    lagoon_v1_ReplyIdRequest r = {id};
    lagoon_set_token(C, tok);
    return lagoon_Threads_DeleteReply(C, &r, &TE);
}

static int react_on(lagoon_client *c, const char *tok, uint64_t tid, uint64_t rid, lagoon_v1_ThreadReaction type,
                    lagoon_v1_ReactThreadResponse *resp)
{
    lagoon_v1_ReactThreadRequest r = {tid, rid, type};
    lagoon_set_token(c, tok);
    return lagoon_Threads_React(c, &r, resp);
}

static int react(const char *tok, uint64_t tid, uint64_t rid, lagoon_v1_ThreadReaction type)
{
    return react_on(C, tok, tid, rid, type, &RR);
}

static int list_place(const char *tok, uint64_t gid, uint32_t size, const char *token)
{
    release_lists();
    lagoon_v1_ListThreadsRequest r = lagoon_v1_ListThreadsRequest_init_zero;
    r.group_id = gid;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    return lagoon_Threads_List(C, &r, &LT);
}

static int list_user(const char *tok, uint64_t user)
{
    release_lists();
    lagoon_v1_ListUserThreadsRequest r = lagoon_v1_ListUserThreadsRequest_init_zero;
    r.user_id = user;
    lagoon_set_token(C, tok);
    return lagoon_Threads_ListByUser(C, &r, &LT);
}

static int list_replies(const char *tok, uint64_t tid, uint32_t size, const char *token)
{
    release_lists();
    lagoon_v1_ListRepliesThreadRequest r = lagoon_v1_ListRepliesThreadRequest_init_zero;
    r.thread_id = tid;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    return lagoon_Threads_ListReplies(C, &r, &LR);
}

static int list_reactions(lagoon_client *c, const char *tok, uint64_t tid, uint64_t rid,
                          lagoon_v1_ThreadReaction type, const char *token, lagoon_v1_ListReactionsResponse *resp)
{
    lagoon_v1_ListReactionsRequest r = lagoon_v1_ListReactionsRequest_init_zero;
    r.thread_id = tid;
    r.reply_id = rid;
    r.type = type;
    r.page_size = 200;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(c, tok);
    return lagoon_Threads_ListReactions(c, &r, resp);
}

/* The count of type in a count list (0 when absent). */
static uint32_t count_of(const lagoon_v1_ReactionCount *counts, pb_size_t n, lagoon_v1_ThreadReaction type)
{
    for (pb_size_t i = 0; i < n; i++)
        if (counts[i].type == type)
            return counts[i].count;
    return 0;
}

/* Whether the listed threads contain id. */
static int listed(uint64_t id)
{
    for (pb_size_t i = 0; i < LT.threads_count; i++)
        if (LT.threads[i].id == id)
            return 1;
    return 0;
}

/* ---- access ------------------------------------------------------------------------------------- */

/* Who sees, posts, edits and deletes, for a private group's thread, a public group's and the
 * public feed's. */
static void test_access_matrix(void **state)
{
    (void)state;
    fresh();
    uint64_t priv = group("private band", PRIV), pub = group("public band", PUB);
    uint64_t tp = created(mem_tok, priv, "private question");
    uint64_t tq = created(mem_tok, pub, "public group question");
    uint64_t tf = created(mem_tok, 0, "feed question");
    assert_true(TH.following); /* the author follows their own thread */
    assert_int_equal(TH.follower_count, 1);

    /* Reading: a private group's thread does not exist for a non-member. */
    EXPECT(get(mem_tok, tp), LAGOON_OK, NULL);
    assert_true(TH.following);
    EXPECT(get(adm_tok, tp), LAGOON_OK, NULL);
    assert_false(TH.following);
    EXPECT(get(root_tok, tp), LAGOON_OK, NULL);
    EXPECT(get(out_tok, tp), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(get(out_tok, tq), LAGOON_OK, NULL);
    EXPECT(get(out_tok, tf), LAGOON_OK, NULL);
    EXPECT(get("", tf), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(list_place(out_tok, priv, 0, NULL), LAGOON_NOT_FOUND, "group_id");
    EXPECT(list_place("", 0, 0, NULL), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(list_place(adm_tok, priv, 0, NULL), LAGOON_OK, NULL);
    assert_true(listed(tp));
    EXPECT(list_place(out_tok, pub, 0, NULL), LAGOON_OK, NULL);
    assert_true(listed(tq));
    EXPECT(list_user(out_tok, mem), LAGOON_OK, NULL);
    assert_false(listed(tp));
    assert_true(listed(tq) && listed(tf));
    EXPECT(list_user(own_tok, mem), LAGOON_OK, NULL);
    assert_true(listed(tp) && listed(tq) && listed(tf));
    EXPECT(list_replies(out_tok, tp, 0, NULL), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(reply(out_tok, tp, 0, "let me in"), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(react(out_tok, tp, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(by_id(out_tok, tp, lagoon_Threads_Follow), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(by_id(out_tok, tp, lagoon_Threads_Watch), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(del(out_tok, tp), LAGOON_NOT_FOUND, "thread_id");

    /* Posting: a group's members; a non-member who sees a public group is refused. */
    EXPECT(create(out_tok, priv, "x"), LAGOON_NOT_FOUND, "group_id");
    EXPECT(create(out_tok, pub, "x"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(create(out_tok, 999999, "x"), LAGOON_NOT_FOUND, "group_id");
    EXPECT(reply(out_tok, tq, 0, "outsider"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(react(out_tok, tq, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(reply(out_tok, tf, 0, "anyone on the feed"), LAGOON_OK, NULL);
    EXPECT(reply(root_tok, tp, 0, "an administrator"), LAGOON_OK, NULL);
    EXPECT(by_id(out_tok, tq, lagoon_Threads_Follow), LAGOON_OK, NULL); /* anyone who sees it */

    /* Editing: the author only. */
    EXPECT(update(adm_tok, tp, "renamed"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(update(root_tok, tp, "renamed"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(update(mem_tok, tp, "renamed"), LAGOON_OK, NULL);
    assert_string_equal(TH.title, "renamed");
    assert_true(TH.edited_at > 0);

    /* Deleting: the author, a group admin (group threads), an administrator. */
    uint64_t by_adm = created(own_tok, priv, "the owner's");
    EXPECT(del(mem_tok, by_adm), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del(adm_tok, by_adm), LAGOON_OK, NULL);
    EXPECT(get(own_tok, by_adm), LAGOON_NOT_FOUND, "thread_id");
    uint64_t feed2 = created(own_tok, 0, "feed, the owner's");
    EXPECT(del(adm_tok, feed2), LAGOON_PERMISSION_DENIED, NULL); /* no group: no group admin */
    EXPECT(del(root_tok, feed2), LAGOON_OK, NULL);
    EXPECT(del(mem_tok, tp), LAGOON_OK, NULL);
    EXPECT(del(mem_tok, tp), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(del("", tq), LAGOON_UNAUTHENTICATED, NULL);
}

/* ---- replies --------------------------------------------------------------------------------------- */

/* One level of nesting shown (root_id), the parent kept; counts; edit and delete as for comments. */
static void test_replies(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("replies", PUB);
    uint64_t t = created(own_tok, g, "nesting");
    uint64_t r1 = replied(mem_tok, t, 0, "first");
    test_clock_advance(T, 10);
    uint64_t r2 = replied(adm_tok, t, r1, "to the first");
    assert_int_equal(RP.root_id, r1);
    assert_int_equal(RP.parent_id, r1);
    test_clock_advance(T, 10);
    uint64_t r3 = replied(mem_tok, t, r2, "to the second");
    assert_int_equal(RP.root_id, r1); /* shown under the top-level reply */
    assert_int_equal(RP.parent_id, r2); /* what it answered is kept */
    test_clock_advance(T, 10);
    uint64_t r4 = replied(adm_tok, t, 0, "second top-level");
    EXPECT(get(mem_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.reply_count, 4);
    assert_int_equal(TH.last_activity_at, RP.created_at);

    /* Oldest first, in pages. */
    EXPECT(list_replies(mem_tok, t, 3, NULL), LAGOON_OK, NULL);
    assert_int_equal(LR.replies_count, 3);
    assert_int_equal(LR.replies[0].id, r1);
    assert_int_equal(LR.replies[0].reply_count, 2);
    assert_int_equal(LR.replies[1].id, r2);
    assert_int_equal(LR.replies[2].id, r3);
    char token[801];
    snprintf(token, sizeof(token), "%s", LR.next_page_token);
    assert_true(token[0] != '\0');
    EXPECT(list_replies(mem_tok, t, 3, token), LAGOON_OK, NULL);
    assert_int_equal(LR.replies_count, 1);
    assert_int_equal(LR.replies[0].id, r4);
    assert_string_equal(LR.next_page_token, "");

    /* Edit: the author only; a text reply keeps some text. */
    lagoon_v1_UpdateReplyRequest ur = {r2, "edited"};
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Threads_UpdateReply(C, &ur, &RP), LAGOON_PERMISSION_DENIED, NULL);
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Threads_UpdateReply(C, &ur, &RP), LAGOON_OK, NULL);
    assert_string_equal(RP.text, "edited");
    assert_true(RP.edited_at > 0);
    lagoon_v1_UpdateReplyRequest empty = {r2, ""};
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Threads_UpdateReply(C, &empty, &RP), LAGOON_INVALID_ARGUMENT, "text");

    /* Delete: a nested reply goes with those below it, counted off its root and thread. */
    EXPECT(del_reply(out_tok, r2), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del_reply(mem_tok, r2), LAGOON_PERMISSION_DENIED, NULL); /* r3's author, not r2's */
    EXPECT(del_reply(adm_tok, r2), LAGOON_OK, NULL);
    EXPECT(list_replies(mem_tok, t, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LR.replies_count, 2);
    assert_int_equal(LR.replies[0].id, r1);
    assert_int_equal(LR.replies[0].reply_count, 0);
    EXPECT(get(mem_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.reply_count, 2);
    /* A top-level reply goes with its nested ones; the thread's author may delete any reply. */
    replied(adm_tok, t, r1, "under the first again");
    EXPECT(del_reply(own_tok, r1), LAGOON_OK, NULL);
    EXPECT(get(mem_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.reply_count, 1);
    EXPECT(del_reply(adm_tok, r3), LAGOON_NOT_FOUND, "reply_id");
    /* A parent from another thread is no parent. */
    uint64_t other = created(own_tok, g, "another");
    EXPECT(reply(mem_tok, other, r4, "wrong thread"), LAGOON_NOT_FOUND, "parent_id");
}

/* ---- lock and pin ----------------------------------------------------------------------------------- */

static void test_lock_and_pin(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("moderated", PRIV);
    uint64_t a = created(mem_tok, g, "a");
    test_clock_advance(T, 10);
    uint64_t b = created(mem_tok, g, "b");
    test_clock_advance(T, 10);
    uint64_t c = created(mem_tok, g, "c");
    /* By last activity, newest first; a reply moves a thread up. */
    EXPECT(list_place(mem_tok, g, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LT.threads_count, 3);
    assert_int_equal(LT.threads[0].id, c);
    assert_int_equal(LT.threads[2].id, a);
    test_clock_advance(T, 10);
    replied(adm_tok, a, 0, "bump");
    EXPECT(list_place(mem_tok, g, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LT.threads[0].id, a);
    assert_int_equal(LT.threads[1].id, c);
    assert_int_equal(LT.threads[2].id, b);

    /* Pin: group admins and administrators; pinned first whatever the activity. */
    EXPECT(flag(mem_tok, b, 0, 1), LAGOON_PERMISSION_DENIED, NULL); /* the author is no admin */
    EXPECT(flag(out_tok, b, 0, 1), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(flag(adm_tok, b, 0, 1), LAGOON_OK, NULL);
    assert_true(TH.pinned);
    EXPECT(flag(adm_tok, b, 0, 1), LAGOON_OK, NULL); /* again: no change */
    EXPECT(list_place(mem_tok, g, 2, NULL), LAGOON_OK, NULL);
    assert_int_equal(LT.threads_count, 2);
    assert_int_equal(LT.threads[0].id, b);
    assert_int_equal(LT.threads[1].id, a);
    char token[801];
    snprintf(token, sizeof(token), "%s", LT.next_page_token);
    EXPECT(list_place(mem_tok, g, 2, token), LAGOON_OK, NULL);
    assert_int_equal(LT.threads_count, 1);
    assert_int_equal(LT.threads[0].id, c);
    EXPECT(flag(root_tok, b, 0, 0), LAGOON_OK, NULL);
    EXPECT(list_place(mem_tok, g, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LT.threads[0].id, a);

    /* Lock: no new replies, from anyone, until unlocked. */
    EXPECT(flag(mem_tok, a, 1, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(flag(own_tok, a, 1, 1), LAGOON_OK, NULL); /* the group's owner */
    assert_true(TH.locked);
    EXPECT(reply(mem_tok, a, 0, "too late"), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(reply(adm_tok, a, 0, "too late"), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(react(mem_tok, a, 0, lagoon_v1_ThreadReaction_THANKS), LAGOON_OK, NULL); /* reactions go on */
    EXPECT(flag(adm_tok, a, 1, 0), LAGOON_OK, NULL);
    EXPECT(reply(mem_tok, a, 0, "open again"), LAGOON_OK, NULL);

    /* The public feed: administrators only, whatever one's groups. */
    uint64_t f = created(own_tok, 0, "feed");
    EXPECT(flag(own_tok, f, 0, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(flag(adm_tok, f, 1, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(flag(root_tok, f, 0, 1), LAGOON_OK, NULL);
    EXPECT(flag(root_tok, f, 1, 1), LAGOON_OK, NULL);
    EXPECT(list_place(out_tok, 0, 1, NULL), LAGOON_OK, NULL);
    assert_int_equal(LT.threads[0].id, f);
    assert_true(LT.threads[0].pinned && LT.threads[0].locked);
    EXPECT(flag(root_tok, f, 0, 0), LAGOON_OK, NULL);
}

/* ---- reactions -------------------------------------------------------------------------------------- */

static void test_reaction_toggle(void **state)
{
    (void)state;
    fresh();
    uint64_t t = created(own_tok, 0, "react to me");
    uint64_t r = replied(mem_tok, t, 0, "and me");
    EXPECT(react(mem_tok, t, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_OK, NULL);
    assert_true(RR.added);
    assert_int_equal(count_of(RR.reactions, RR.reactions_count, lagoon_v1_ThreadReaction_LIKE), 1);
    EXPECT(react(mem_tok, t, 0, lagoon_v1_ThreadReaction_HELPFUL), LAGOON_OK, NULL);
    EXPECT(react(out_tok, t, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_OK, NULL);
    assert_int_equal(count_of(RR.reactions, RR.reactions_count, lagoon_v1_ThreadReaction_LIKE), 2);
    EXPECT(react(mem_tok, t, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_OK, NULL); /* toggled off */
    assert_false(RR.added);
    assert_int_equal(count_of(RR.reactions, RR.reactions_count, lagoon_v1_ThreadReaction_LIKE), 1);
    assert_int_equal(count_of(RR.reactions, RR.reactions_count, lagoon_v1_ThreadReaction_HELPFUL), 1);
    /* A reply's counts are its own. */
    EXPECT(react(own_tok, t, r, lagoon_v1_ThreadReaction_LOVE), LAGOON_OK, NULL);
    assert_int_equal(RR.reactions_count, 1);
    EXPECT(get(mem_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.reactions_count, 2);
    assert_int_equal(count_of(TH.reactions, TH.reactions_count, lagoon_v1_ThreadReaction_LOVE), 0);
    /* Who reacted: of one type, or of all. */
    EXPECT(list_reactions(C, mem_tok, t, 0, lagoon_v1_ThreadReaction_LIKE, NULL, &LX), LAGOON_OK, NULL);
    assert_int_equal(LX.reactions_count, 1);
    assert_int_equal(LX.reactions[0].user_id, out);
    release_lists();
    EXPECT(list_reactions(C, mem_tok, t, 0, lagoon_v1_ThreadReaction_THREAD_REACTION_UNSPECIFIED, NULL, &LX),
           LAGOON_OK, NULL);
    assert_int_equal(LX.reactions_count, 2);
    release_lists();
    EXPECT(list_reactions(C, mem_tok, t, r, lagoon_v1_ThreadReaction_THREAD_REACTION_UNSPECIFIED, NULL, &LX),
           LAGOON_OK, NULL);
    assert_int_equal(LX.reactions_count, 1);
    assert_int_equal(LX.reactions[0].user_id, own);
    release_lists();
    /* A retry with the call's idempotency key gets the first answer: it does not toggle back. */
    for (int i = 0; i < 2; i++) {
        lagoon_set_idempotency_key(C, "wow-once");
        EXPECT(react(adm_tok, t, 0, lagoon_v1_ThreadReaction_WOW), LAGOON_OK, NULL);
        assert_true(RR.added);
        assert_int_equal(count_of(RR.reactions, RR.reactions_count, lagoon_v1_ThreadReaction_WOW), 1);
    }
    EXPECT(get(adm_tok, t), LAGOON_OK, NULL);
    assert_int_equal(count_of(TH.reactions, TH.reactions_count, lagoon_v1_ThreadReaction_WOW), 1);
    /* A reply of another thread is no target. */
    uint64_t t2 = created(own_tok, 0, "another");
    EXPECT(react(own_tok, t2, r, lagoon_v1_ThreadReaction_LOVE), LAGOON_NOT_FOUND, "reply_id");
    EXPECT(list_reactions(C, mem_tok, t2, r, 0, NULL, &LX), LAGOON_NOT_FOUND, "reply_id");
}

/* Several clients toggle at once on one thread and one reply: every count equals a recount of
 * the rows, and each user's reaction of a type is there iff it toggled it an odd number of
 * times. */
#define RACERS 6
#define TOGGLES 40

typedef struct racer {
    lagoon_client *c;
    char tok[65];
    uint64_t user;
    uint64_t thread, reply;
    int toggles[2][THREADS_REACTION_TYPES + 1]; /* per target (thread, reply) and type */
    int failures;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    lagoon_v1_ReactThreadResponse resp;
    for (int i = 0; i < TOGGLES; i++) {
        int on_reply = (i / 3 + (int)r->user) % 2;
        lagoon_v1_ThreadReaction type = (lagoon_v1_ThreadReaction)(1 + (i * 5 + (int)r->user) % THREADS_REACTION_TYPES);
        if (react_on(r->c, r->tok, r->thread, on_reply ? r->reply : 0, type, &resp) == LAGOON_OK)
            r->toggles[on_reply][type]++;
        else
            r->failures++;
    }
    return NULL;
}

/* The rows of a target of type, counted through ListReactions' pages. */
static uint32_t recount(uint64_t tid, uint64_t rid, lagoon_v1_ThreadReaction type)
{
    uint32_t n = 0;
    char token[801] = "";
    for (int page = 0; page < 100; page++) {
        lagoon_v1_ListReactionsResponse resp = lagoon_v1_ListReactionsResponse_init_zero;
        EXPECT(list_reactions(C, own_tok, tid, rid, type, token, &resp), LAGOON_OK, NULL);
        for (pb_size_t i = 0; i < resp.reactions_count; i++)
            assert_int_equal(resp.reactions[i].type, type);
        n += resp.reactions_count;
        snprintf(token, sizeof(token), "%s", resp.next_page_token);
        pb_release(lagoon_v1_ListReactionsResponse_fields, &resp);
        if (token[0] == '\0')
            break;
    }
    return n;
}

static void test_concurrent_toggles(void **state)
{
    (void)state;
    fresh();
    uint64_t t = created(own_tok, 0, "race");
    uint64_t rp = replied(own_tok, t, 0, "race on the reply too");
    size_t before = test_count_rows(T, &lagoon_table_thread_reactions);
    racer *rs = calloc(RACERS, sizeof(*rs));
    assert_non_null(rs);
    for (int i = 0; i < RACERS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "racer%d", i);
        rs[i].c = test_client(T);
        rs[i].user = test_user(rs[i].c, name, lagoon_v1_Role_STUDENT, rs[i].tok);
        rs[i].thread = t;
        rs[i].reply = rp;
    }
    pthread_t th[RACERS];
    for (int i = 0; i < RACERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race, &rs[i]), 0);
    for (int i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    size_t present = 0;
    EXPECT(get(own_tok, t), LAGOON_OK, NULL);
    lagoon_v1_Thread *thread = malloc(sizeof(*thread));
    assert_non_null(thread);
    *thread = TH;
    lagoon_v1_ListThreadRepliesResponse lr = lagoon_v1_ListThreadRepliesResponse_init_zero;
    release_lists();
    EXPECT(list_replies(own_tok, t, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LR.replies_count, 1);
    for (int target = 0; target < 2; target++) {
        for (int type = 1; type <= THREADS_REACTION_TYPES; type++) {
            uint32_t want = 0;
            for (int i = 0; i < RACERS; i++) {
                assert_int_equal(rs[i].failures, 0);
                want += (uint32_t)(rs[i].toggles[target][type] % 2);
            }
            uint32_t stored = target ? count_of(LR.replies[0].reactions, LR.replies[0].reactions_count,
                                                (lagoon_v1_ThreadReaction)type)
                                     : count_of(thread->reactions, thread->reactions_count,
                                                (lagoon_v1_ThreadReaction)type);
            assert_int_equal(stored, want);
            assert_int_equal(recount(t, target ? rp : 0, (lagoon_v1_ThreadReaction)type), want);
            present += want;
        }
    }
    assert_true(present > 0);
    assert_int_equal(test_count_rows(T, &lagoon_table_thread_reactions) - before, present);
    pb_release(lagoon_v1_ListThreadRepliesResponse_fields, &lr);
    free(thread);
    for (int i = 0; i < RACERS; i++)
        lagoon_close(rs[i].c);
    free(rs);
}

/* ---- follows and notifications ---------------------------------------------------------------------- */

/* The user's unread THREAD_REPLY notifications of thread tid: how many, and the count of the
 * last one. */
static int thread_notes(const char *tok, uint64_t tid, uint32_t *count, uint64_t *id)
{
    lagoon_v1_ListNotificationsRequest r = lagoon_v1_ListNotificationsRequest_init_zero;
    r.unread_only = true;
    r.page_size = 100;
    lagoon_v1_ListNotificationsResponse resp = lagoon_v1_ListNotificationsResponse_init_zero;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Notifications_List(C, &r, &resp), LAGOON_OK, NULL);
    int n = 0;
    for (pb_size_t i = 0; i < resp.notifications_count; i++) {
        const lagoon_v1_Notification *x = &resp.notifications[i];
        if (x->type == lagoon_v1_Notification_Type_THREAD_REPLY && x->related_id == tid) {
            n++;
            *count = x->count;
            *id = x->id;
        }
    }
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
    return n;
}

static void test_follow_notifications(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("followers", PRIV);
    uint64_t t = created(own_tok, g, "follow me");
    lagoon_set_token(C, adm_tok);
    EXPECT(by_id(adm_tok, t, lagoon_Threads_Follow), LAGOON_OK, NULL);
    EXPECT(by_id(adm_tok, t, lagoon_Threads_Follow), LAGOON_OK, NULL); /* again: no change */
    EXPECT(get(adm_tok, t), LAGOON_OK, NULL);
    assert_true(TH.following);
    assert_int_equal(TH.follower_count, 2);
    for (int i = 0; i < 3; i++)
        replied(mem_tok, t, 0, "a reply");
    uint32_t count = 0;
    uint64_t nid = 0;
    /* Collapsed per thread while unread: one notification counting three replies. */
    assert_int_equal(thread_notes(adm_tok, t, &count, &nid), 1);
    assert_int_equal(count, 3);
    assert_int_equal(thread_notes(own_tok, t, &count, &nid), 1); /* the author follows */
    assert_int_equal(count, 3);
    assert_int_equal(thread_notes(mem_tok, t, &count, &nid), 0); /* never one's own replies */
    /* Read, then a new reply: a new notification. */
    lagoon_v1_NotificationIdRequest mr = {nid};
    lagoon_v1_NotificationsEmpty ne;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Notifications_MarkRead(C, &mr, &ne), LAGOON_OK, NULL);
    assert_int_equal(thread_notes(own_tok, t, &count, &nid), 0);
    replied(adm_tok, t, 0, "after reading");
    assert_int_equal(thread_notes(own_tok, t, &count, &nid), 1);
    assert_int_equal(count, 1);
    assert_int_equal(thread_notes(adm_tok, t, &count, &nid), 1);
    assert_int_equal(count, 3); /* its own reply did not count */
    /* Unfollowed: no more. A follower who left the private group is not told either. */
    EXPECT(by_id(own_tok, t, lagoon_Threads_Unfollow), LAGOON_OK, NULL);
    EXPECT(by_id(own_tok, t, lagoon_Threads_Unfollow), LAGOON_OK, NULL);
    EXPECT(by_id(out_tok, t, lagoon_Threads_Unfollow), LAGOON_OK, NULL); /* reveals nothing */
    lagoon_v1_GroupRequest lv = {g};
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Groups_Leave(C, &lv, &ge), LAGOON_OK, NULL);
    replied(mem_tok, t, 0, "after unfollowing");
    assert_int_equal(thread_notes(own_tok, t, &count, &nid), 1);
    assert_int_equal(count, 1);
    assert_int_equal(thread_notes(adm_tok, t, &count, &nid), 1);
    assert_int_equal(count, 3);
    EXPECT(get(mem_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.follower_count, 1);
}

/* ---- live ------------------------------------------------------------------------------------------------ */

typedef struct device {
    lagoon_client *c;
    lagoon_stream *s;
} device;

/* The next event of d of thread tid's topic (others skipped). */
static void next_thread_event(device *d, uint64_t tid, lagoon_v1_Event *ev)
{
    for (int i = 0; i < 100; i++) {
        int r = lagoon_stream_recv_timeout(d->s, ev, WAIT_MS);
        if (r != 1)
            fail_msg("no event (%d): %s", r, lagoon_last_error(d->c)->detail.message);
        if (ev->has_topic && ev->topic.kind == lagoon_v1_Topic_Kind_THREAD && ev->topic.id == tid)
            return;
    }
    fail_msg("no event of the thread's topic");
}

/* A subscribed device of tok's user, watching thread tid; its joining event read. */
static device watching(const char *tok, uint64_t tid, lagoon_v1_Event *ev)
{
    device d = {test_client(T), NULL};
    lagoon_set_token(d.c, tok);
    lagoon_v1_SubscribeRequest sr = lagoon_v1_SubscribeRequest_init_zero;
    assert_int_equal(lagoon_Events_Subscribe(d.c, &sr, &d.s), LAGOON_OK);
    EXPECT(by_id(tok, tid, lagoon_Threads_Watch), LAGOON_OK, NULL);
    next_thread_event(&d, tid, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_true(ev->payload.membership.joined);
    return d;
}

static void test_live(void **state)
{
    (void)state;
    fresh();
    uint64_t t = created(own_tok, 0, "live");
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    device d = watching(out_tok, t, ev);
    /* A reply arrives filled in, then an edit, a reaction with the counts, a deletion. */
    uint64_t r = replied(mem_tok, t, 0, "live reply");
    next_thread_event(&d, t, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_thread_tag);
    assert_int_equal(ev->payload.thread.action, lagoon_v1_ThreadEvent_Action_REPLY_ADDED);
    assert_int_equal(ev->payload.thread.which_item, lagoon_v1_ThreadEvent_reply_tag);
    assert_int_equal(ev->payload.thread.item.reply.id, r);
    assert_string_equal(ev->payload.thread.item.reply.text, "live reply");
    EXPECT(react(mem_tok, t, 0, lagoon_v1_ThreadReaction_WOW), LAGOON_OK, NULL);
    next_thread_event(&d, t, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_thread_reaction_tag);
    assert_true(ev->payload.thread_reaction.added);
    assert_int_equal(ev->payload.thread_reaction.user_id, mem);
    assert_int_equal(count_of(ev->payload.thread_reaction.reactions, ev->payload.thread_reaction.reactions_count,
                              lagoon_v1_ThreadReaction_WOW),
                     1);
    EXPECT(flag(root_tok, t, 1, 1), LAGOON_OK, NULL);
    next_thread_event(&d, t, ev);
    assert_int_equal(ev->payload.thread.action, lagoon_v1_ThreadEvent_Action_THREAD_CHANGED);
    assert_true(ev->payload.thread.item.thread.locked);
    assert_string_equal(ev->payload.thread.item.thread.title, "live");
    EXPECT(del_reply(mem_tok, r), LAGOON_OK, NULL);
    next_thread_event(&d, t, ev);
    assert_int_equal(ev->payload.thread.action, lagoon_v1_ThreadEvent_Action_REPLY_DELETED);
    assert_int_equal(ev->payload.thread.item.reply.id, r);
    assert_string_equal(ev->payload.thread.item.reply.text, "");
    /* Unwatched: the stream leaves the topic. */
    EXPECT(by_id(out_tok, t, lagoon_Threads_Unwatch), LAGOON_OK, NULL);
    next_thread_event(&d, t, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_false(ev->payload.membership.joined);
    lagoon_stream_cancel(d.s);
    lagoon_close(d.c);
    free(ev);
}

/* A watcher at the topic cap: the group's deletion ends the watches of its threads
 * (threads_group_deleting), so the next Watch has room (and Watch at the cap would also end
 * memberships of threads gone without it). */
static void test_watch_cap_after_group_delete(void **state)
{
    (void)state;
    char tok[65];
    test_user(C, "watcher", lagoon_v1_Role_STUDENT, tok);
    uint64_t g = group("watched", PUB);
    lagoon_v1_GroupRequest jr = {g};
    lagoon_v1_GroupMember m;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Groups_Join(C, &jr, &m), LAGOON_OK, NULL); /* a topic of its own: the group's */
    int watched = 0, st = LAGOON_OK;
    for (int i = 0; i <= EVENTS_MAX_TOPICS_PER_USER && st == LAGOON_OK; i++) {
        if (i % THREADS_CREATES_PER_MINUTE == 0)
            fresh();
        uint64_t t = created(own_tok, g, "watch me");
        st = by_id(tok, t, lagoon_Threads_Watch);
        watched += st == LAGOON_OK;
    }
    EXPECT(st, LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_int_equal(watched, EVENTS_MAX_TOPICS_PER_USER - 1);
    lagoon_v1_DeleteGroupRequest dg = {g};
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Delete(C, &dg, &ge), LAGOON_OK, NULL);
    fresh();
    uint64_t f = created(own_tok, 0, "after the group");
    EXPECT(by_id(tok, f, lagoon_Threads_Watch), LAGOON_OK, NULL);
}

/* ---- views -------------------------------------------------------------------------------------------- */

static int view(const char *tok, uint64_t id, lagoon_v1_RecordThreadViewResponse *resp)
{
    lagoon_v1_ThreadIdRequest r = {id};
    lagoon_set_token(C, tok);
    return lagoon_Threads_RecordView(C, &r, resp);
}

static void test_views(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("viewers", PRIV);
    uint64_t t = created(own_tok, g, "watch this");
    lagoon_v1_RecordThreadViewResponse v;
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL);
    assert_true(v.counted);
    assert_int_equal(v.view_count, 1);
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL); /* within the hour: not again */
    assert_false(v.counted);
    assert_int_equal(v.view_count, 1);
    EXPECT(view(adm_tok, t, &v), LAGOON_OK, NULL);
    assert_int_equal(v.view_count, 2);
    EXPECT(view(out_tok, t, &v), LAGOON_NOT_FOUND, "thread_id");
    test_clock_advance(T, 3600 * 1000 - 1000);
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL);
    assert_false(v.counted);
    test_clock_advance(T, 1000);
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL); /* an hour after the counted one */
    assert_true(v.counted);
    assert_int_equal(v.view_count, 3);
    EXPECT(get(own_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.view_count, 3);
    /* Rows past the hour go, THREADS_VIEWS_TRIMMED per counted view, oldest first: own's view
     * takes adm's row (an hour old), root's an hour later mem's and own's. */
    EXPECT(view(own_tok, t, &v), LAGOON_OK, NULL);
    size_t rows = test_count_rows(T, &lagoon_table_thread_views);
    test_clock_advance(T, 3600 * 1000);
    EXPECT(view(root_tok, t, &v), LAGOON_OK, NULL); /* a row more, and two stale ones fewer */
    assert_true(v.counted);
    assert_int_equal(test_count_rows(T, &lagoon_table_thread_views), rows + 1 - THREADS_VIEWS_TRIMMED);
    EXPECT(view(adm_tok, t, &v), LAGOON_OK, NULL); /* its row went: a view as from no row */
    assert_true(v.counted);
    assert_int_equal(v.view_count, 6);
}

/* ---- cascades ------------------------------------------------------------------------------------------ */

static size_t rows_of_threads(void)
{
    return test_count_rows(T, &lagoon_table_threads) + test_count_rows(T, &lagoon_table_thread_replies) +
           test_count_rows(T, &lagoon_table_thread_reactions) + test_count_rows(T, &lagoon_table_thread_follows) +
           test_count_rows(T, &lagoon_table_thread_views);
}

/* Adds to thread t a reply, a nested reply, reactions on both, a follow and a view: 6 rows. */
static void populate(uint64_t t)
{
    uint64_t r = replied(mem_tok, t, 0, "reply");
    replied(adm_tok, t, r, "nested");
    EXPECT(react(mem_tok, t, 0, lagoon_v1_ThreadReaction_LIKE), LAGOON_OK, NULL);
    EXPECT(react(adm_tok, t, r, lagoon_v1_ThreadReaction_LIKE), LAGOON_OK, NULL);
    EXPECT(by_id(adm_tok, t, lagoon_Threads_Follow), LAGOON_OK, NULL);
    lagoon_v1_RecordThreadViewResponse v;
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL);
}

static void test_cascades(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("to be deleted", PUB);
    size_t base = rows_of_threads();
    /* A thread's delete takes its replies, reactions, follows and views. */
    uint64_t t = created(own_tok, g, "going");
    populate(t);
    assert_int_equal(rows_of_threads() - base, 1 + 1 + 6);
    EXPECT(del(own_tok, t), LAGOON_OK, NULL);
    assert_int_equal(rows_of_threads(), base);
    /* A group's delete takes its threads and everything under them. */
    populate(created(own_tok, g, "in the group"));
    populate(created(mem_tok, g, "in the group too"));
    assert_int_equal(rows_of_threads() - base, 2 * 8);
    lagoon_v1_DeleteGroupRequest dg = {g};
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Delete(C, &dg, &ge), LAGOON_OK, NULL);
    assert_int_equal(rows_of_threads(), base);
    EXPECT(list_user(own_tok, mem), LAGOON_OK, NULL);
    for (pb_size_t i = 0; i < LT.threads_count; i++)
        assert_int_not_equal(LT.threads[i].group_id, g);

    /* An account's delete takes its threads; its replies and reactions on others' threads go
     * off their counts. */
    char gone_tok[65];
    uint64_t gone = test_user(C, "leaver", lagoon_v1_Role_STUDENT, gone_tok);
    uint64_t kept = created(own_tok, 0, "stays");
    uint64_t r = replied(own_tok, kept, 0, "stays too");
    uint64_t gr = replied(gone_tok, kept, 0, "the leaver's reply");
    replied(own_tok, kept, gr, "under the leaver's reply");
    replied(gone_tok, kept, r, "the leaver's nested reply");
    EXPECT(react(gone_tok, kept, 0, lagoon_v1_ThreadReaction_LOVE), LAGOON_OK, NULL);
    EXPECT(react(gone_tok, kept, r, lagoon_v1_ThreadReaction_LOVE), LAGOON_OK, NULL);
    EXPECT(react(own_tok, kept, 0, lagoon_v1_ThreadReaction_LOVE), LAGOON_OK, NULL);
    EXPECT(by_id(gone_tok, kept, lagoon_Threads_Follow), LAGOON_OK, NULL);
    uint64_t theirs = created(gone_tok, 0, "the leaver's thread");
    populate(theirs);
    EXPECT(get(own_tok, kept), LAGOON_OK, NULL);
    assert_int_equal(TH.reply_count, 4);
    lagoon_v1_DeleteAccountRequest da = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(da.password, sizeof(da.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, gone_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &da, &ue), LAGOON_OK, NULL);
    EXPECT(get(own_tok, theirs), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(get(own_tok, kept), LAGOON_OK, NULL);
    assert_int_equal(TH.reply_count, 1); /* r stays; the leaver's, and the one under it, go */
    assert_int_equal(count_of(TH.reactions, TH.reactions_count, lagoon_v1_ThreadReaction_LOVE), 1);
    assert_int_equal(TH.follower_count, 1); /* the author's own: the leaver's follow is counted off */
    assert_int_equal(recount(kept, 0, lagoon_v1_ThreadReaction_LOVE), 1);
    EXPECT(list_replies(own_tok, kept, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LR.replies_count, 1);
    assert_int_equal(LR.replies[0].id, r);
    assert_int_equal(LR.replies[0].reply_count, 0);
    assert_int_equal(LR.replies[0].reactions_count, 0);
    EXPECT(list_user(own_tok, gone), LAGOON_OK, NULL);
    assert_int_equal(LT.threads_count, 0);
    EXPECT(del(own_tok, kept), LAGOON_OK, NULL);
    assert_int_equal(rows_of_threads(), base);
}

/* ---- bad input ----------------------------------------------------------------------------------------- */

static void test_bad_input(void **state)
{
    (void)state;
    fresh();
    char *long_text = malloc(5002);
    assert_non_null(long_text);
    /* Each refused Create costs no budget: more than THREADS_CREATES_PER_MINUTE of them. */
    create_req(0, "");
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "title");
    memset(long_text, 'x', 201);
    long_text[201] = '\0';
    create_req(0, long_text);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "title");
    create_req(0, "line\nbreak");
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "title");
    memset(long_text, 'y', 5001);
    long_text[5001] = '\0';
    create_req(0, "ok");
    snprintf(CR.text, sizeof(CR.text), "%s", long_text);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "text");
    create_req(0, "ok");
    CR.has_video = false;
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video");
    create_req(0, "ok");
    CR.video.url[0] = '\0';
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video");
    create_req(0, "ok");
    CR.video.video_id = 1;
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video.url");
    create_req(0, "ok");
    CR.video.duration_seconds = 0;
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video.duration_seconds");
    create_req(0, "ok");
    CR.video.duration_seconds = 86401;
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video.duration_seconds");
    create_req(0, "ok");
    snprintf(CR.video.url, sizeof(CR.video.url), "ftp://example.com/v");
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_INVALID_ARGUMENT, "video.url");
    create_req(0, "ok");
    CR.video.url[0] = '\0';
    CR.video.duration_seconds = 0;
    CR.video.video_id = 987654;
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_NOT_FOUND, "video.video_id");

    /* A Lagoon video: one's own or a public one, not a private one shared with the poster. */
    lagoon_v1_CreateVideoRequest vr = lagoon_v1_CreateVideoRequest_init_zero;
    snprintf(vr.title, sizeof(vr.title), "scales");
    snprintf(vr.url, sizeof(vr.url), "https://example.com/scales.mp4");
    vr.duration_seconds = 42;
    lagoon_v1_Video v;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Videos_Create(C, &vr, &v), LAGOON_OK, NULL);
    lagoon_v1_ShareVideoRequest shr = {v.id, mem};
    lagoon_v1_VideosEmpty ve;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Videos_Share(C, &shr, &ve), LAGOON_OK, NULL);
    create_req(0, "shared with me");
    CR.video = (lagoon_v1_ThreadVideo){.video_id = v.id};
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_PERMISSION_DENIED, NULL);
    lagoon_set_token(C, out_tok);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_NOT_FOUND, "video.video_id");
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Threads_Create(C, &CR, &TH), LAGOON_OK, NULL);
    assert_int_equal(TH.video.video_id, v.id);
    assert_int_equal(TH.video.duration_seconds, 42);
    uint64_t t = TH.id;

    /* Replies, reactions, lists. */
    EXPECT(reply(mem_tok, t, 0, ""), LAGOON_INVALID_ARGUMENT, "text");
    EXPECT(reply(mem_tok, 0, 0, "x"), LAGOON_INVALID_ARGUMENT, "thread_id");
    snprintf(RQ.text, sizeof(RQ.text), "%s", long_text);
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Threads_Reply(C, &RQ, &RP), LAGOON_INVALID_ARGUMENT, "text");
    memset(&RQ, 0, sizeof(RQ));
    RQ.thread_id = t;
    RQ.has_video = true;
    snprintf(RQ.video.url, sizeof(RQ.video.url), "https://example.com/answer.mp4");
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Threads_Reply(C, &RQ, &RP), LAGOON_INVALID_ARGUMENT, "video.duration_seconds");
    RQ.video.duration_seconds = 12;
    EXPECT(lagoon_Threads_Reply(C, &RQ, &RP), LAGOON_OK, NULL); /* a video reply, no text */
    EXPECT(reply(mem_tok, t, 424242, "x"), LAGOON_NOT_FOUND, "parent_id");
    EXPECT(react(mem_tok, t, 0, 0), LAGOON_INVALID_ARGUMENT, "type");
    EXPECT(react(mem_tok, t, 0, (lagoon_v1_ThreadReaction)99), LAGOON_INVALID_ARGUMENT, "type");
    EXPECT(react(mem_tok, t, 424242, lagoon_v1_ThreadReaction_LIKE), LAGOON_NOT_FOUND, "reply_id");
    EXPECT(list_place(mem_tok, 0, 101, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    EXPECT(list_place(mem_tok, 0, 0, "forged"), LAGOON_INVALID_ARGUMENT, "page_token");
    EXPECT(list_replies(mem_tok, t, 101, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    EXPECT(update(mem_tok, t, ""), LAGOON_INVALID_ARGUMENT, "title");
    EXPECT(get(mem_tok, 0), LAGOON_INVALID_ARGUMENT, "thread_id");
    free(long_text);
}

/* ---- budgets -------------------------------------------------------------------------------------------- */

static void test_create_budget(void **state)
{
    (void)state;
    fresh();
    for (int i = 0; i < THREADS_CREATES_PER_MINUTE; i++)
        created(adm_tok, 0, "many");
    EXPECT(create(adm_tok, 0, "one too many"), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(create(mem_tok, 0, "someone else's budget"), LAGOON_OK, NULL);
    fresh();
    uint64_t t = created(adm_tok, 0, "a minute later");
    for (int i = 0; i < THREADS_REPLIES_PER_MINUTE; i++)
        replied(adm_tok, t, 0, "again");
    EXPECT(reply(adm_tok, t, 0, "one reply too many"), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(reply(adm_tok, t, 0, ""), LAGOON_INVALID_ARGUMENT, "text"); /* told even past the budget */
    EXPECT(reply(mem_tok, t, 0, "someone else's budget"), LAGOON_OK, NULL);
}

/* ---- access lost, group deleted, account deleted ----------------------------------------------------- */

/* A member who watches a private group's thread and then leaves the group (or is removed)
 * leaves the thread's topic with it: its later replies do not reach them live (Get is
 * NOT_FOUND to them). A site administrator who is not a member keeps watching. */
static void test_watch_after_leave(void **state)
{
    (void)state;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    for (int removed = 0; removed < 2; removed++) {
        fresh();
        uint64_t g = group(removed ? "removed from" : "left", PRIV);
        uint64_t t = created(own_tok, g, "secret thread");
        uint64_t other = created(own_tok, 0, "a public one"); /* a watch that stays */
        device d = watching(mem_tok, t, ev);
        EXPECT(by_id(mem_tok, other, lagoon_Threads_Watch), LAGOON_OK, NULL);
        EXPECT(by_id(root_tok, t, lagoon_Threads_Watch), LAGOON_OK, NULL);
        lagoon_v1_GroupsEmpty ge;
        if (removed) {
            lagoon_v1_GroupUserRequest rr = {g, mem};
            lagoon_set_token(C, own_tok);
            EXPECT(lagoon_Groups_Remove(C, &rr, &ge), LAGOON_OK, NULL);
        } else {
            lagoon_v1_GroupRequest lr = {g};
            lagoon_set_token(C, mem_tok);
            EXPECT(lagoon_Groups_Leave(C, &lr, &ge), LAGOON_OK, NULL);
        }
        EXPECT(get(mem_tok, t), LAGOON_NOT_FOUND, "thread_id");
        /* The next event of the thread's topic is the end of the membership, not the reply. */
        next_thread_event(&d, t, ev);
        if (ev->which_payload == lagoon_v1_Event_thread_tag)
            fail_msg("ex-member got action %d text \"%s\"", ev->payload.thread.action,
                     ev->payload.thread.item.reply.text);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
        assert_false(ev->payload.membership.joined);
        replied(adm_tok, t, 0, "members only: the secret");
        /* The public thread's topic still reaches them, after the reply above was sent (its
         * joining event went by, skipped, while waiting for the private thread's). */
        replied(adm_tok, other, 0, "for everyone");
        next_thread_event(&d, other, ev);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_thread_tag);
        assert_string_equal(ev->payload.thread.item.reply.text, "for everyone");
        lagoon_stream_cancel(d.s);
        lagoon_close(d.c);
        /* The administrator still watches the private thread; the ex-member may watch no more. */
        EXPECT(by_id(mem_tok, t, lagoon_Threads_Watch), LAGOON_NOT_FOUND, "thread_id");
        EXPECT(by_id(root_tok, t, lagoon_Threads_Unwatch), LAGOON_OK, NULL);
        EXPECT(by_id(mem_tok, other, lagoon_Threads_Unwatch), LAGOON_OK, NULL);
    }
    free(ev);
}

/* A Reply (and a Create) retried with its idempotency key after the thread's private group was
 * deleted runs again (NOT_FOUND) instead of answering the kept reply or thread. */
static void test_kept_reply_after_group_delete(void **state)
{
    (void)state;
    fresh();
    uint64_t g = group("kept", PRIV);
    lagoon_set_idempotency_key(C, "kept-create-1");
    uint64_t t = created(own_tok, g, "kept");
    lagoon_set_idempotency_key(C, "kept-reply-1");
    EXPECT(reply(mem_tok, t, 0, "kept words"), LAGOON_OK, NULL);
    lagoon_v1_DeleteGroupRequest dg = {g};
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Delete(C, &dg, &ge), LAGOON_OK, NULL);
    EXPECT(get(mem_tok, t), LAGOON_NOT_FOUND, "thread_id");
    lagoon_set_idempotency_key(C, "kept-reply-1");
    EXPECT(reply(mem_tok, t, 0, "kept words"), LAGOON_NOT_FOUND, "thread_id");
    lagoon_set_idempotency_key(C, "kept-create-1");
    EXPECT(create(own_tok, g, "kept"), LAGOON_NOT_FOUND, "group_id");
}

/* Follow, Unfollow, Watch and Unwatch share a per-user budget; a view within the hour of the
 * caller's counted one is answered without a write. */
static void test_toggle_budget(void **state)
{
    (void)state;
    fresh();
    uint64_t t = created(own_tok, 0, "toggled");
    for (int i = 0; i < THREADS_TOGGLES_PER_MINUTE; i++)
        EXPECT(by_id(mem_tok, t, i % 2 ? lagoon_Threads_Unfollow : lagoon_Threads_Follow), LAGOON_OK, NULL);
    EXPECT(by_id(mem_tok, t, lagoon_Threads_Watch), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(by_id(mem_tok, t, lagoon_Threads_Unwatch), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(by_id(mem_tok, t, lagoon_Threads_Follow), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(by_id(adm_tok, t, lagoon_Threads_Watch), LAGOON_OK, NULL); /* another user's budget */
    EXPECT(by_id(adm_tok, t, lagoon_Threads_Unwatch), LAGOON_OK, NULL);
    fresh();
    EXPECT(by_id(mem_tok, t, lagoon_Threads_Follow), LAGOON_OK, NULL);
    EXPECT(get(own_tok, t), LAGOON_OK, NULL);
    assert_int_equal(TH.follower_count, 2);
    lagoon_v1_RecordThreadViewResponse v;
    EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL);
    assert_true(v.counted);
    store_counters before, after;
    store_counters_get(T->app->db, &before);
    for (int i = 0; i < 20; i++) {
        EXPECT(view(mem_tok, t, &v), LAGOON_OK, NULL);
        assert_false(v.counted);
        assert_int_equal(v.view_count, 1);
    }
    store_counters_get(T->app->db, &after);
    assert_int_equal(after.ops_ok + after.ops_failed, before.ops_ok + before.ops_failed);
    EXPECT(view(out_tok, 999999999, &v), LAGOON_NOT_FOUND, "thread_id");
}

/* A public group made private: its threads' watchers who no longer see them (a non-member, a
 * member who left while it was public) leave their topics before the next event, which still
 * reaches its members. */
static void test_watch_after_private(void **state)
{
    (void)state;
    fresh();
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    char ex_tok[65];
    test_user(C, "exmember", lagoon_v1_Role_STUDENT, ex_tok);
    uint64_t g = group("open, then closed", PUB);
    uint64_t t = created(own_tok, g, "watched from outside");
    lagoon_v1_GroupRequest gr = {g};
    lagoon_v1_GroupMember m;
    lagoon_v1_GroupsEmpty ge;
    lagoon_set_token(C, ex_tok);
    EXPECT(lagoon_Groups_Join(C, &gr, &m), LAGOON_OK, NULL);
    device d[3] = {watching(out_tok, t, ev), watching(ex_tok, t, ev), watching(mem_tok, t, ev)};
    lagoon_set_token(C, ex_tok);
    EXPECT(lagoon_Groups_Leave(C, &gr, &ge), LAGOON_OK, NULL); /* still sees it: public */
    replied(adm_tok, t, 0, "while public");
    for (int i = 0; i < 3; i++) {
        next_thread_event(&d[i], t, ev);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_thread_tag);
    }
    lagoon_v1_UpdateGroupRequest ur = lagoon_v1_UpdateGroupRequest_init_zero;
    ur.group_id = g;
    ur.has_visibility = true;
    ur.visibility = PRIV;
    lagoon_v1_Group gg;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &gg), LAGOON_OK, NULL);
    replied(adm_tok, t, 0, "members only now");
    for (int i = 0; i < 2; i++) {
        next_thread_event(&d[i], t, ev);
        if (ev->which_payload == lagoon_v1_Event_thread_tag)
            fail_msg("outsider %d got \"%s\"", i, ev->payload.thread.item.reply.text);
        assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
        assert_false(ev->payload.membership.joined);
    }
    next_thread_event(&d[2], t, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_thread_tag);
    assert_string_equal(ev->payload.thread.item.reply.text, "members only now");
    for (int i = 0; i < 3; i++) {
        lagoon_stream_cancel(d[i].s);
        lagoon_close(d[i].c);
    }
    EXPECT(by_id(out_tok, t, lagoon_Threads_Watch), LAGOON_NOT_FOUND, "thread_id");
    EXPECT(by_id(mem_tok, t, lagoon_Threads_Unwatch), LAGOON_OK, NULL);
    free(ev);
}

/* A user follows at most THREADS_USER_FOLLOWS_MAX threads, their own included: Create still
 * follows the author's new thread past it, Follow is refused until they unfollow one. */
static void test_user_follows_cap(void **state)
{
    (void)state;
    char tok[65];
    test_user(C, "prolific", lagoon_v1_Role_STUDENT, tok);
    uint64_t first = 0, last = 0;
    for (int i = 0; i <= THREADS_USER_FOLLOWS_MAX; i++) {
        if (i % THREADS_CREATES_PER_MINUTE == 0)
            fresh();
        last = created(tok, 0, "mine");
        first = first ? first : last;
    }
    EXPECT(get(tok, first), LAGOON_OK, NULL);
    assert_true(TH.following);
    fresh();
    uint64_t other = created(own_tok, 0, "someone else's");
    EXPECT(by_id(tok, other, lagoon_Threads_Follow), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(by_id(tok, first, lagoon_Threads_Unfollow), LAGOON_OK, NULL);
    EXPECT(by_id(tok, first, lagoon_Threads_Unfollow), LAGOON_OK, NULL);
    EXPECT(by_id(tok, other, lagoon_Threads_Follow), LAGOON_RESOURCE_EXHAUSTED, NULL); /* still 1 000 */
    EXPECT(get(tok, last), LAGOON_OK, NULL);
    assert_true(TH.following);
    EXPECT(by_id(tok, last, lagoon_Threads_Unfollow), LAGOON_OK, NULL);
    EXPECT(by_id(tok, other, lagoon_Threads_Follow), LAGOON_OK, NULL);
    EXPECT(by_id(tok, other, lagoon_Threads_Follow), LAGOON_OK, NULL); /* again: no change, no refusal */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_matrix),   cmocka_unit_test(test_replies),
        cmocka_unit_test(test_lock_and_pin),    cmocka_unit_test(test_reaction_toggle),
        cmocka_unit_test(test_concurrent_toggles), cmocka_unit_test(test_follow_notifications),
        cmocka_unit_test(test_live),            cmocka_unit_test(test_watch_cap_after_group_delete),
        cmocka_unit_test(test_views),
        cmocka_unit_test(test_cascades),        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_create_budget),   cmocka_unit_test(test_watch_after_leave),
        cmocka_unit_test(test_kept_reply_after_group_delete), cmocka_unit_test(test_toggle_budget),
        cmocka_unit_test(test_watch_after_private), cmocka_unit_test(test_user_follows_cap),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
