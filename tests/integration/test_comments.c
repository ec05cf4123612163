/* Comments end to end through the generated client against the real server and store: the
 * access matrix of every method (the video's owner, a user it is shared with, another user, an
 * administrator, no token; public and private videos), threads, cascades, the orders, windows
 * and pages, the duration bound, notifications, live events on the video's topic, the rate
 * limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "accounts.h"
#include "comments.h"
#include "events.h"
#include "lagoon_stubs.h"
#include "testserver.h"
#include "videos.h"

#define WAIT_MS 5000

static test_app *T;
static lagoon_client *C;

/* ann owns the videos; bob gets shares of them; cat is another user; root administers; dan
 * is mentioned. */
static uint64_t ann, bob, cat, root, dan;
static char ann_tok[65], bob_tok[65], cat_tok[65], root_tok[65], dan_tok[65];

/* Rows of ~20-40 KB: kept off the test's stack. */
static lagoon_v1_Video V;
static lagoon_v1_Comment M;
static lagoon_v1_AddCommentRequest ADD;
static lagoon_v1_ReplyCommentRequest REPLY;
static lagoon_v1_UpdateCommentRequest UPD;
static lagoon_v1_ListCommentsResponse LIST;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->comments.max_events = 100000; /* the tests add many comments without moving the clock */
}

static void start(void (*tweak_fn)(app_config *, rpc_config *))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_TEACHER, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_STUDENT, bob_tok);
    cat = test_verified_user(T, C, "cat", lagoon_v1_Role_STUDENT, cat_tok);
    dan = test_verified_user(T, C, "dan", lagoon_v1_Role_STUDENT, dan_tok);
    root = test_admin_user(T, C, "root", root_tok);
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pb_release(lagoon_v1_ListCommentsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* (test_has_violation, testserver.h, on this file's client) */
#define has_violation(field) test_has_violation(C, (field))

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

/* A video of ann's through Videos/Create: its id. */
static uint64_t video(int pub, uint32_t duration_seconds)
{
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "Etude op. 10 no. %u", duration_seconds);
    snprintf(r.url, sizeof(r.url), "https://www.youtube.com/watch?v=abc");
    r.duration_seconds = duration_seconds;
    r.is_public = pub;
    lagoon_set_token(C, ann_tok);
    int st = lagoon_Videos_Create(C, &r, &V);
    if (st != LAGOON_OK)
        fail_msg("Create: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    return V.id;
}

typedef struct share_op {
    uint64_t video, user;
} share_op;

static int do_share(store_txn *t, void *arg, store_error *err)
{
    const share_op *op = arg;
    lagoon_v1_VideoShare s = lagoon_v1_VideoShare_init_zero;
    s.video_id = op->video;
    s.user_id = op->user;
    s.created_at = T->clock_ms;
    return store_insert(t, &lagoon_table_video_shares, &s, NULL, err);
}

/* Shares video with user (a row, as Videos/Share stores it). */
static void share(uint64_t video_id, uint64_t user)
{
    share_op op = {video_id, user};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_share, &op, &err), LAGOON_OK);
}

static int add_range(const char *tok, uint64_t video_id, const char *text, uint32_t at_ms, uint32_t end_ms)
{
    memset(&ADD, 0, sizeof(ADD));
    ADD.video_id = video_id;
    snprintf(ADD.content, sizeof(ADD.content), "%s", text);
    ADD.at_ms = at_ms;
    ADD.has_end_ms = end_ms != 0;
    ADD.end_ms = end_ms;
    lagoon_set_token(C, tok);
    return lagoon_Comments_Add(C, &ADD, &M);
}

static int add(const char *tok, uint64_t video_id, const char *text, uint32_t at_ms)
{
    return add_range(tok, video_id, text, at_ms, 0);
}

/* A comment that must be stored: its id. */
static uint64_t add_ok(const char *tok, uint64_t video_id, const char *text, uint32_t at_ms)
{
    EXPECT(add(tok, video_id, text, at_ms), LAGOON_OK, NULL);
    return M.id;
}

static int reply(const char *tok, uint64_t parent, const char *text)
{
    memset(&REPLY, 0, sizeof(REPLY));
    REPLY.parent_id = parent;
    snprintf(REPLY.content, sizeof(REPLY.content), "%s", text);
    lagoon_set_token(C, tok);
    return lagoon_Comments_Reply(C, &REPLY, &M);
}

static uint64_t reply_ok(const char *tok, uint64_t parent, const char *text)
{
    EXPECT(reply(tok, parent, text), LAGOON_OK, NULL);
    return M.id;
}

static int update_text(const char *tok, uint64_t id, const char *text)
{
    memset(&UPD, 0, sizeof(UPD));
    UPD.comment_id = id;
    UPD.has_content = true;
    snprintf(UPD.content, sizeof(UPD.content), "%s", text);
    lagoon_set_token(C, tok);
    return lagoon_Comments_Update(C, &UPD, &M);
}

static int del(const char *tok, uint64_t id)
{
    lagoon_v1_CommentIdRequest r = {.comment_id = id};
    lagoon_v1_CommentsEmpty e;
    lagoon_set_token(C, tok);
    return lagoon_Comments_Delete(C, &r, &e);
}

static int resolve(const char *tok, uint64_t id, int yes)
{
    lagoon_v1_CommentIdRequest r = {.comment_id = id};
    lagoon_set_token(C, tok);
    return yes ? lagoon_Comments_Resolve(C, &r, &M) : lagoon_Comments_Reopen(C, &r, &M);
}

static int follow(const char *tok, uint64_t video_id, int yes)
{
    lagoon_v1_FollowVideoRequest r = {.video_id = video_id};
    lagoon_v1_CommentsEmpty e;
    lagoon_set_token(C, tok);
    return yes ? lagoon_Comments_Follow(C, &r, &e) : lagoon_Comments_Unfollow(C, &r, &e);
}

static void list_reset(void)
{
    pb_release(lagoon_v1_ListCommentsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
}

static int list(const char *tok, const lagoon_v1_ListCommentsRequest *r)
{
    list_reset();
    lagoon_set_token(C, tok);
    return lagoon_Comments_List(C, r, &LIST);
}

static int list_video(const char *tok, uint64_t video_id, lagoon_v1_ListCommentsRequest_Order order)
{
    lagoon_v1_ListCommentsRequest r = {.video_id = video_id, .order = order};
    return list(tok, &r);
}

static int window(const char *tok, const lagoon_v1_ListCommentWindowRequest *r)
{
    list_reset();
    lagoon_set_token(C, tok);
    return lagoon_Comments_ListWindow(C, r, &LIST);
}

static int replies(const char *tok, uint64_t id)
{
    lagoon_v1_ListRepliesRequest r = {.comment_id = id};
    list_reset();
    lagoon_set_token(C, tok);
    return lagoon_Comments_ListReplies(C, &r, &LIST);
}

/* The listed comments' ids are want[0..n). */
static void expect_ids(const uint64_t *want, size_t n, int line)
{
    if (LIST.comments_count != n)
        fail_msg("line %d: %u comments listed, expected %zu", line, (unsigned)LIST.comments_count, n);
    for (size_t i = 0; i < n; i++)
        if (LIST.comments[i].id != want[i])
            fail_msg("line %d: comment %zu is %llu, expected %llu", line, i, (unsigned long long)LIST.comments[i].id,
                     (unsigned long long)want[i]);
}
#define EXPECT_IDS(...)                                                                                 \
    do {                                                                                                \
        const uint64_t want_[] = {__VA_ARGS__};                                                         \
        expect_ids(want_, sizeof(want_) / sizeof(want_[0]), __LINE__);                                  \
    } while (0)

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(int *)arg)++;
    return LAGOON_OK;
}

/* Rows of the comments table under u64 key in index idx. */
static int comment_rows(const store_index *idx, uint64_t key)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, key);
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_comments, .index = idx, .prefix = prefix.buf,
                     .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    int n = 0;
    store_page page;
    assert_int_equal(store_scan(t, &q, count_row, &n, &page, &err), LAGOON_OK);
    store_read_end(t);
    return n;
}

static int comment_exists(uint64_t id)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = store_get(t, &lagoon_table_comments, id, &M, &err);
    store_read_end(t);
    assert_true(st == LAGOON_OK || st == LAGOON_NOT_FOUND);
    return st == LAGOON_OK;
}

/* ---- Add, List: the order by moment, the bounds ---------------------------------------------------- */

static void test_add_and_list_by_moment(void **state)
{
    (void)state;
    uint64_t v = video(0, 0);
    uint64_t c5 = add_ok(ann_tok, v, "the ending", 5000);
    assert_int_equal(M.author_id, ann);
    assert_int_equal(M.video_id, v);
    assert_int_equal(M.at_ms, 5000);
    assert_int_equal(M.created_at, T->clock_ms);
    assert_string_equal(M.content, "the ending");
    test_clock_advance(T, 10);
    uint64_t c1a = add_ok(ann_tok, v, "bar 3 rushes", 1000);
    test_clock_advance(T, 10);
    EXPECT(add_range(ann_tok, v, "bars 3-5", 1000, 4000), LAGOON_OK, NULL);
    uint64_t c1b = M.id;
    assert_int_equal(M.end_ms, 4000);
    test_clock_advance(T, 10);
    uint64_t c0 = add_ok(ann_tok, v, "overall: lovely tone", 0);

    EXPECT(list_video(ann_tok, v, lagoon_v1_ListCommentsRequest_Order_MOMENT), LAGOON_OK, NULL);
    EXPECT_IDS(c0, c1a, c1b, c5);
    EXPECT(list_video(ann_tok, v, lagoon_v1_ListCommentsRequest_Order_ORDER_UNSPECIFIED), LAGOON_OK, NULL);
    EXPECT_IDS(c0, c1a, c1b, c5);
    assert_string_equal(LIST.comments[1].content, "bar 3 rushes");
    assert_string_equal(LIST.next_page_token, "");
    EXPECT(list_video(ann_tok, v, lagoon_v1_ListCommentsRequest_Order_NEWEST), LAGOON_OK, NULL);
    EXPECT_IDS(c0, c1b, c1a, c5);
    lagoon_v1_ListCommentsRequest bad = {.video_id = v, .order = 9};
    EXPECT(list(ann_tok, &bad), LAGOON_INVALID_ARGUMENT, "order");
}

static void test_bounds_and_duration(void **state)
{
    (void)state;
    uint64_t v = video(0, 60); /* one minute */
    EXPECT(add(ann_tok, v, "", 0), LAGOON_INVALID_ARGUMENT, "content");
    static char big[5002 * 2];
    memset(big, 0, sizeof(big));
    for (int i = 0; i < 5000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2); /* 5000 characters of 2 bytes: allowed */
    EXPECT(add(ann_tok, v, big, 0), LAGOON_OK, NULL);
    big[10000] = 'e'; /* 5001 */
    EXPECT(add(ann_tok, v, big, 0), LAGOON_INVALID_ARGUMENT, "content");
    memset(&ADD, 0, sizeof(ADD));
    ADD.video_id = v;
    snprintf(ADD.content, sizeof(ADD.content), "x");
    memset(ADD.category, 'c', 51);
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Comments_Add(C, &ADD, &M), LAGOON_INVALID_ARGUMENT, "category");
    ADD.category[50] = '\0';
    EXPECT(lagoon_Comments_Add(C, &ADD, &M), LAGOON_OK, NULL);
    assert_int_equal(strlen(M.category), 50);
    /* A range ends after it starts. */
    EXPECT(add_range(ann_tok, v, "x", 3000, 3000), LAGOON_INVALID_ARGUMENT, "end_ms");
    /* Within the video's duration: the last millisecond is in, the next is not. */
    EXPECT(add(ann_tok, v, "the last note", 60000), LAGOON_OK, NULL);
    EXPECT(add(ann_tok, v, "x", 60001), LAGOON_INVALID_ARGUMENT, "at_ms");
    EXPECT(add_range(ann_tok, v, "x", 59000, 60001), LAGOON_INVALID_ARGUMENT, "end_ms");
    EXPECT(add_range(ann_tok, v, "x", 59000, 60000), LAGOON_OK, NULL);
    /* So does an Update's moment. */
    memset(&UPD, 0, sizeof(UPD));
    UPD.comment_id = M.id;
    UPD.has_at_ms = true;
    UPD.at_ms = 61000;
    UPD.has_end_ms = true;
    UPD.end_ms = 0;
    EXPECT(lagoon_Comments_Update(C, &UPD, &M), LAGOON_INVALID_ARGUMENT, "at_ms");
    /* A video of unknown duration takes any moment up to the rules' 24 h. */
    uint64_t unknown = video(0, 0);
    EXPECT(add(ann_tok, unknown, "x", 86400000), LAGOON_OK, NULL);
    EXPECT(add(ann_tok, unknown, "x", 86400001), LAGOON_INVALID_ARGUMENT, "at_ms");
    /* An unknown video. */
    EXPECT(add(ann_tok, 987654321, "x", 0), LAGOON_NOT_FOUND, "video_id");
}

/* ---- the access matrix ---------------------------------------------------------------------------- */

/* Every method without a token. */
static void test_anonymous(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    uint64_t c = add_ok(ann_tok, v, "public remark", 0);
    EXPECT(add(NULL, v, "x", 0), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(reply(NULL, c, "x"), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(update_text(NULL, c, "x"), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(del(NULL, c), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(resolve(NULL, c, 1), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(resolve(NULL, c, 0), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(list_video(NULL, v, 0), LAGOON_UNAUTHENTICATED, NULL);
    lagoon_v1_ListCommentWindowRequest w = {.video_id = v, .to_ms = 1000};
    EXPECT(window(NULL, &w), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(replies(NULL, c), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(follow(NULL, v, 1), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(follow(NULL, v, 0), LAGOON_UNAUTHENTICATED, NULL);
    assert_true(comment_exists(c));
}

/* Reading and adding: whoever may read the video; anyone else is told it does not exist. */
static void test_read_and_add_matrix(void **state)
{
    (void)state;
    uint64_t priv = video(0, 0), pub = video(1, 0);
    share(priv, bob);
    uint64_t pc = add_ok(ann_tok, priv, "private remark", 0);
    add_ok(ann_tok, pub, "public remark", 0);
    struct {
        const char *tok;
        int priv_code;
    } who[] = {{ann_tok, LAGOON_OK}, {bob_tok, LAGOON_OK}, {cat_tok, LAGOON_NOT_FOUND}, {root_tok, LAGOON_OK}};
    for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
        int code = who[i].priv_code;
        const char *field = code == LAGOON_OK ? NULL : "video_id";
        EXPECT(add(who[i].tok, priv, "x", 0), code, field);
        EXPECT(list_video(who[i].tok, priv, 0), code, field);
        lagoon_v1_ListCommentWindowRequest w = {.video_id = priv, .to_ms = 1000};
        EXPECT(window(who[i].tok, &w), code, field);
        EXPECT(replies(who[i].tok, pc), code, code == LAGOON_OK ? NULL : "comment_id");
        EXPECT(reply(who[i].tok, pc, "x"), code, code == LAGOON_OK ? NULL : "parent_id");
        EXPECT(follow(who[i].tok, priv, 1), code, field);
        /* A public video: everyone signed in. */
        EXPECT(add(who[i].tok, pub, "x", 0), LAGOON_OK, NULL);
        EXPECT(list_video(who[i].tok, pub, 0), LAGOON_OK, NULL);
        EXPECT(follow(who[i].tok, pub, 1), LAGOON_OK, NULL);
    }
    /* cat's refusals are those of a video that does not exist, word for word. */
    EXPECT(list_video(cat_tok, priv, 0), LAGOON_NOT_FOUND, "video_id");
    char hidden[600];
    snprintf(hidden, sizeof(hidden), "%s", lagoon_last_error(C)->detail.message);
    EXPECT(list_video(cat_tok, 987654321, 0), LAGOON_NOT_FOUND, "video_id");
    assert_string_equal(hidden, lagoon_last_error(C)->detail.message);
    /* Only ann's, bob's and root's comments exist on the private video: 1 + 3. */
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, priv), 1 + 3 + 3 /* their replies */);
}

/* Update: the author only. Delete: the author, the video's owner, an administrator. Resolve and
 * Reopen: the author or the video's owner. Another reader is refused (PERMISSION_DENIED); one who
 * may not read the video is told it does not exist. */
static void test_change_matrix(void **state)
{
    (void)state;
    uint64_t priv = video(0, 0), pub = video(1, 0);
    share(priv, bob);
    uint64_t mine = add_ok(bob_tok, priv, "bob's question", 0);
    EXPECT(update_text(ann_tok, mine, "x"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(update_text(root_tok, mine, "x"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(update_text(cat_tok, mine, "x"), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(update_text(bob_tok, mine, "bob's question, clearer"), LAGOON_OK, NULL);
    assert_string_equal(M.content, "bob's question, clearer");
    assert_int_equal(M.edited_at, T->clock_ms);
    for (int yes = 1; yes >= 0; yes--) {
        EXPECT(resolve(cat_tok, mine, yes), LAGOON_NOT_FOUND, "comment_id");
        EXPECT(resolve(root_tok, mine, yes), LAGOON_PERMISSION_DENIED, NULL);
        EXPECT(resolve(ann_tok, mine, yes), LAGOON_OK, NULL);
        assert_int_equal(M.resolved, yes);
        EXPECT(resolve(bob_tok, mine, yes), LAGOON_OK, NULL); /* again: no change */
        assert_int_equal(M.resolved, yes);
    }
    EXPECT(del(cat_tok, mine), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(del(bob_tok, mine), LAGOON_OK, NULL);
    assert_false(comment_exists(mine));
    EXPECT(del(bob_tok, mine), LAGOON_NOT_FOUND, "comment_id");
    uint64_t c2 = add_ok(bob_tok, priv, "another", 0), c3 = add_ok(bob_tok, priv, "and another", 0);
    EXPECT(del(ann_tok, c2), LAGOON_OK, NULL);  /* the video's owner */
    EXPECT(del(root_tok, c3), LAGOON_OK, NULL); /* an administrator */
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, priv), 0);

    /* On a public video cat reads everything but changes nothing of others'. */
    uint64_t pc = add_ok(bob_tok, pub, "public question", 0);
    EXPECT(update_text(cat_tok, pc, "x"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del(cat_tok, pc), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(resolve(cat_tok, pc, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(resolve(cat_tok, pc, 0), LAGOON_PERMISSION_DENIED, NULL);
    uint64_t cats = add_ok(cat_tok, pub, "cat's own", 0);
    EXPECT(resolve(cat_tok, cats, 1), LAGOON_OK, NULL);
    EXPECT(resolve(bob_tok, cats, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del(cat_tok, cats), LAGOON_OK, NULL);
    assert_true(comment_exists(pc));
    /* A comment that never existed reads the same as a hidden one. */
    EXPECT(update_text(bob_tok, 987654321, "x"), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(del(bob_tok, 987654321), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(resolve(bob_tok, 987654321, 1), LAGOON_NOT_FOUND, "comment_id");
}

static int do_unshare(store_txn *t, void *arg, store_error *err)
{
    const share_op *op = arg;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, op->video);
    store_key_u64(&k, op->user);
    uint64_t id;
    lagoon_v1_VideoShare s;
    int st = store_get_by(t, &lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, &k, &id, &s, err);
    return st == LAGOON_OK ? store_delete(t, &lagoon_table_video_shares, id, err) : st;
}

/* Losing the share hides the video's comments, one's own too, at the next call. */
static void test_share_removed_hides(void **state)
{
    (void)state;
    uint64_t priv = video(0, 0);
    share(priv, cat);
    uint64_t c = add_ok(cat_tok, priv, "while shared", 0);
    EXPECT(list_video(cat_tok, priv, 0), LAGOON_OK, NULL);
    EXPECT_IDS(c);
    share_op op = {priv, cat};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_unshare, &op, &err), LAGOON_OK);
    EXPECT(list_video(cat_tok, priv, 0), LAGOON_NOT_FOUND, "video_id");
    EXPECT(update_text(cat_tok, c, "still mine?"), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(del(cat_tok, c), LAGOON_NOT_FOUND, "comment_id");
    EXPECT(replies(cat_tok, c), LAGOON_NOT_FOUND, "comment_id");
    assert_true(comment_exists(c));
    assert_string_equal(M.content, "while shared");
}

/* A retry with the same idempotency key gets the first comment and adds none; once that comment
 * is deleted, the retry runs again instead of bringing back its words. */
static void test_idempotent_add(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    lagoon_set_idempotency_key(C, "add-key-1");
    uint64_t first = add_ok(bob_tok, v, "only once", 0);
    lagoon_set_idempotency_key(C, "add-key-1");
    assert_int_equal(add_ok(bob_tok, v, "only once", 0), first);
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, v), 1);
    lagoon_set_idempotency_key(C, "reply-key-1");
    uint64_t r = reply_ok(cat_tok, first, "a reply, once");
    lagoon_set_idempotency_key(C, "reply-key-1");
    assert_int_equal(reply_ok(cat_tok, first, "a reply, once"), r);
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, v), 2);
    EXPECT(del(bob_tok, first), LAGOON_OK, NULL);
    lagoon_set_idempotency_key(C, "add-key-1");
    uint64_t again = add_ok(bob_tok, v, "only once", 0);
    assert_true(again != first);
    lagoon_set_idempotency_key(C, "reply-key-1");
    EXPECT(reply(cat_tok, first, "a reply, once"), LAGOON_NOT_FOUND, "parent_id");
}

/* ---- threads ------------------------------------------------------------------------------------------ */

static void test_threads(void **state)
{
    (void)state;
    uint64_t v = video(1, 0), other = video(1, 0);
    uint64_t top = add_ok(ann_tok, v, "watch the left hand", 2500);
    test_clock_advance(T, 10);
    uint64_t r1 = reply_ok(bob_tok, top, "like this?");
    assert_int_equal(M.parent_id, top);
    assert_int_equal(M.root_id, top);
    assert_int_equal(M.video_id, v);
    assert_int_equal(M.at_ms, 2500); /* the thread's moment */
    test_clock_advance(T, 10);
    uint64_t r2 = reply_ok(ann_tok, r1, "yes, exactly");
    assert_int_equal(M.parent_id, r1); /* the parent is kept... */
    assert_int_equal(M.root_id, top);  /* ...and the thread is the top-level comment's */
    test_clock_advance(T, 10);
    uint64_t r3 = reply_ok(cat_tok, r2, "agreed");
    assert_int_equal(M.root_id, top);
    /* The thread from any of its comments, oldest first; the video's list shows the top only. */
    EXPECT(replies(cat_tok, top), LAGOON_OK, NULL);
    EXPECT_IDS(r1, r2, r3);
    EXPECT(replies(cat_tok, r2), LAGOON_OK, NULL);
    EXPECT_IDS(r1, r2, r3);
    EXPECT(list_video(cat_tok, v, 0), LAGOON_OK, NULL);
    EXPECT_IDS(top);
    assert_int_equal(LIST.comments[0].reply_count, 3);
    EXPECT(list_video(cat_tok, v, lagoon_v1_ListCommentsRequest_Order_NEWEST), LAGOON_OK, NULL);
    EXPECT_IDS(top);
    /* The parent's video, given explicitly, must be it. */
    memset(&REPLY, 0, sizeof(REPLY));
    REPLY.parent_id = top;
    REPLY.video_id = other;
    snprintf(REPLY.content, sizeof(REPLY.content), "wrong video");
    lagoon_set_token(C, bob_tok);
    EXPECT(lagoon_Comments_Reply(C, &REPLY, &M), LAGOON_INVALID_ARGUMENT, "video_id");
    REPLY.video_id = v;
    EXPECT(lagoon_Comments_Reply(C, &REPLY, &M), LAGOON_OK, NULL);
    EXPECT(reply(bob_tok, 987654321, "x"), LAGOON_NOT_FOUND, "parent_id");
    EXPECT(replies(bob_tok, 987654321), LAGOON_NOT_FOUND, "comment_id");
    /* A reply has its thread's moment. */
    memset(&UPD, 0, sizeof(UPD));
    UPD.comment_id = r1;
    UPD.has_at_ms = true;
    UPD.at_ms = 10;
    lagoon_set_token(C, bob_tok);
    EXPECT(lagoon_Comments_Update(C, &UPD, &M), LAGOON_INVALID_ARGUMENT, "at_ms");
}

/* ---- cascades -------------------------------------------------------------------------------------- */

static void test_delete_cascades(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    uint64_t top = add_ok(ann_tok, v, "thread", 0);
    uint64_t r1 = reply_ok(bob_tok, top, "r1");
    uint64_t r1a = reply_ok(cat_tok, r1, "r1a");
    uint64_t r1b = reply_ok(ann_tok, r1a, "r1b"); /* below r1 through r1a */
    uint64_t r2 = reply_ok(cat_tok, top, "r2");
    /* A reply goes with the replies below it; its siblings stay. */
    EXPECT(del(bob_tok, r1), LAGOON_OK, NULL);
    assert_false(comment_exists(r1));
    assert_false(comment_exists(r1a));
    assert_false(comment_exists(r1b));
    assert_true(comment_exists(r2));
    EXPECT(replies(ann_tok, top), LAGOON_OK, NULL);
    EXPECT_IDS(r2);
    EXPECT(list_video(ann_tok, v, 0), LAGOON_OK, NULL);
    assert_int_equal(LIST.comments[0].reply_count, 1);
    /* A top-level comment goes with its whole thread. */
    uint64_t r3 = reply_ok(bob_tok, r2, "r3");
    EXPECT(del(ann_tok, top), LAGOON_OK, NULL);
    assert_false(comment_exists(top));
    assert_false(comment_exists(r2));
    assert_false(comment_exists(r3));
    assert_int_equal(comment_rows(lagoon_index_comments_by_root_time, top), 0);
    /* A video goes with its comments. */
    uint64_t keep = add_ok(ann_tok, v, "kept until the video goes", 0);
    reply_ok(bob_tok, keep, "and this");
    uint64_t v2 = video(1, 0);
    uint64_t elsewhere = add_ok(bob_tok, v2, "another video's", 0);
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, v), 2);
    /* Both videos' topics have a log (their comments' events) and a position. */
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_feeds), 2);
    size_t logged = test_count_rows(T, &lagoon_table_topic_events);
    lagoon_v1_DeleteVideoRequest dr = {.video_id = v};
    lagoon_v1_VideosEmpty e;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Videos_Delete(C, &dr, &e), LAGOON_OK, NULL);
    assert_int_equal(comment_rows(lagoon_index_comments_by_video, v), 0);
    assert_false(comment_exists(keep));
    assert_true(comment_exists(elsewhere));
    /* The deleted video's topic log goes with it; the other's stays (its one event). */
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_feeds), 1);
    assert_true(logged > 1);
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_events), 1);
}

/* ---- windows and pages -------------------------------------------------------------------------------- */

static void test_windows_and_pages(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    uint64_t ids[10];
    for (int i = 0; i < 10; i++) {
        ids[i] = add_ok(ann_tok, v, "marker", (uint32_t)i * 1000);
        test_clock_advance(T, 1);
    }
    reply_ok(bob_tok, ids[3], "a reply is in no window");
    /* [from, to): the start is in, the end is not. */
    lagoon_v1_ListCommentWindowRequest w = {.video_id = v, .from_ms = 2000, .to_ms = 5000};
    EXPECT(window(cat_tok, &w), LAGOON_OK, NULL);
    EXPECT_IDS(ids[2], ids[3], ids[4]);
    assert_string_equal(LIST.next_page_token, "");
    w.from_ms = 2001;
    w.to_ms = 5001;
    EXPECT(window(cat_tok, &w), LAGOON_OK, NULL);
    EXPECT_IDS(ids[3], ids[4], ids[5]);
    /* Cursor pages of a window, then its end. */
    w.from_ms = 1000;
    w.to_ms = 6000;
    w.page_size = 2;
    EXPECT(window(cat_tok, &w), LAGOON_OK, NULL);
    EXPECT_IDS(ids[1], ids[2]);
    static char token[801];
    int pages = 1;
    uint64_t seen[10];
    size_t nseen = 0;
    for (; LIST.next_page_token[0] != '\0' && pages < 10; pages++) {
        for (pb_size_t i = 0; i < LIST.comments_count; i++)
            seen[nseen++] = LIST.comments[i].id;
        snprintf(token, sizeof(token), "%s", LIST.next_page_token);
        snprintf(w.page_token, sizeof(w.page_token), "%s", token);
        EXPECT(window(cat_tok, &w), LAGOON_OK, NULL);
    }
    for (pb_size_t i = 0; i < LIST.comments_count; i++)
        seen[nseen++] = LIST.comments[i].id;
    assert_int_equal(nseen, 5);
    for (size_t i = 0; i < nseen; i++)
        assert_int_equal(seen[i], ids[1 + i]);
    assert_int_equal(pages, 3);
    /* Numbered pages. */
    memset(&w, 0, sizeof(w));
    w.video_id = v;
    w.to_ms = 10000;
    w.page = 2;
    w.per_page = 3;
    EXPECT(window(cat_tok, &w), LAGOON_OK, NULL);
    EXPECT_IDS(ids[3], ids[4], ids[5]);
    lagoon_v1_ListCommentsRequest lr = {.video_id = v, .page = 4, .per_page = 3};
    EXPECT(list(cat_tok, &lr), LAGOON_OK, NULL);
    EXPECT_IDS(ids[9]);
    lr.order = lagoon_v1_ListCommentsRequest_Order_NEWEST;
    lr.page = 1;
    EXPECT(list(cat_tok, &lr), LAGOON_OK, NULL);
    EXPECT_IDS(ids[9], ids[8], ids[7]);
    /* Cursor pages of the whole list: every comment once. */
    memset(&lr, 0, sizeof(lr));
    lr.video_id = v;
    lr.page_size = 4;
    nseen = 0;
    for (int i = 0; i < 5; i++) {
        EXPECT(list(cat_tok, &lr), LAGOON_OK, NULL);
        for (pb_size_t j = 0; j < LIST.comments_count && nseen < 10; j++)
            seen[nseen++] = LIST.comments[j].id;
        if (LIST.next_page_token[0] == '\0')
            break;
        snprintf(lr.page_token, sizeof(lr.page_token), "%s", LIST.next_page_token);
    }
    assert_int_equal(nseen, 10);
    for (size_t i = 0; i < nseen; i++)
        assert_int_equal(seen[i], ids[i]);
    /* Bad paging and windows. */
    memset(&w, 0, sizeof(w));
    w.video_id = v;
    w.from_ms = 5000;
    w.to_ms = 5000;
    EXPECT(window(cat_tok, &w), LAGOON_INVALID_ARGUMENT, "to_ms");
    w.to_ms = 6000;
    w.page_size = 101;
    EXPECT(window(cat_tok, &w), LAGOON_INVALID_ARGUMENT, "page_size");
    memset(&lr, 0, sizeof(lr));
    lr.video_id = v;
    snprintf(lr.page_token, sizeof(lr.page_token), "forged");
    EXPECT(list(cat_tok, &lr), LAGOON_INVALID_ARGUMENT, "page_token");
}

/* ---- notifications -------------------------------------------------------------------------------------- */

static lagoon_v1_ListNotificationsResponse NOTES;

static void list_notes(const char *tok)
{
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &NOTES);
    memset(&NOTES, 0, sizeof(NOTES));
    lagoon_set_token(C, tok);
    lagoon_v1_ListNotificationsRequest req = lagoon_v1_ListNotificationsRequest_init_zero;
    req.unread_only = true;
    assert_int_equal(lagoon_Notifications_List(C, &req, &NOTES), LAGOON_OK);
}

/* The user's unread notifications of type about video_id, and the count of the last one. */
static int notes_of(const char *tok, lagoon_v1_Notification_Type type, uint64_t video_id, uint32_t *count)
{
    list_notes(tok);
    int n = 0;
    for (pb_size_t i = 0; i < NOTES.notifications_count; i++) {
        const lagoon_v1_Notification *no = &NOTES.notifications[i];
        if (no->type == type && no->related_id == video_id) {
            n++;
            if (count)
                *count = no->count;
        }
    }
    return n;
}

static void test_notifications(void **state)
{
    (void)state;
    uint64_t priv = video(0, 0), pub = video(1, 0);
    share(priv, bob);
    /* The owner, on others' comments: one per video while unread. */
    uint64_t c = add_ok(bob_tok, priv, "first", 0);
    add_ok(bob_tok, priv, "second", 1000);
    uint32_t count = 0;
    assert_int_equal(notes_of(ann_tok, lagoon_v1_Notification_Type_VIDEO_COMMENT, priv, &count), 1);
    assert_int_equal(count, 2);
    assert_string_equal(NOTES.notifications[0].title, "bob commented on your video");
    add_ok(ann_tok, priv, "my own", 0); /* not for one's own */
    assert_int_equal(notes_of(ann_tok, lagoon_v1_Notification_Type_VIDEO_COMMENT, priv, &count), 1);
    assert_int_equal(count, 2);
    add_ok(bob_tok, pub, "on the other video", 0);
    assert_int_equal(notes_of(ann_tok, lagoon_v1_Notification_Type_VIDEO_COMMENT, pub, &count), 1);
    assert_int_equal(count, 1);
    /* The parent's author, on a reply. */
    reply_ok(ann_tok, c, "answer");
    assert_int_equal(notes_of(bob_tok, lagoon_v1_Notification_Type_COMMENT_REPLY, priv, NULL), 1);
    /* A mention: only of a user who may read the video, and once per comment. */
    add_ok(bob_tok, priv, "@dan and @cat, see this", 0);
    assert_int_equal(notes_of(dan_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, priv, NULL), 0);
    assert_int_equal(notes_of(cat_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, priv, NULL), 0);
    add_ok(bob_tok, pub, "@dan, @DAN and @dan. again; mail dan@example.com; @nobody_here", 0);
    assert_int_equal(notes_of(dan_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, pub, NULL), 1);
    assert_string_equal(NOTES.notifications[0].title, "bob mentioned you in a comment");
    share(priv, dan);
    add_ok(bob_tok, priv, "now @dan may", 0);
    assert_int_equal(notes_of(dan_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, priv, NULL), 1);
    /* At most COMMENTS_MENTIONS_MAX names per comment: cat, the sixth, is plain text. */
    add_ok(bob_tok, pub, "@ann @root @xxx @yyy @zzz @cat", 0);
    assert_int_equal(notes_of(cat_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, pub, NULL), 0);
    add_ok(bob_tok, pub, "@cat", 0);
    assert_int_equal(notes_of(cat_tok, lagoon_v1_Notification_Type_COMMENT_MENTION, pub, NULL), 1);
    /* A reply to the comment of someone who lost the video tells them nothing. */
    uint64_t mine = add_ok(dan_tok, priv, "dan's, while shared", 0);
    share_op op = {priv, dan};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_unshare, &op, &err), LAGOON_OK);
    reply_ok(ann_tok, mine, "answer to dan");
    assert_int_equal(notes_of(dan_tok, lagoon_v1_Notification_Type_COMMENT_REPLY, priv, NULL), 0);
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &NOTES);
    memset(&NOTES, 0, sizeof(NOTES));
}

/* Kept responses go with the video: a retried Add after the video's deletion runs again (and
 * finds no video) instead of answering a comment that is gone; a no-op Resolve's too. */
static void test_retries_after_video_delete(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    lagoon_set_idempotency_key(C, "vd-add");
    uint64_t c = add_ok(bob_tok, v, "on a video about to go", 0);
    EXPECT(resolve(bob_tok, c, 1), LAGOON_OK, NULL);
    lagoon_set_idempotency_key(C, "vd-resolve");
    EXPECT(resolve(bob_tok, c, 1), LAGOON_OK, NULL); /* a no-op, kept */
    lagoon_set_token(C, ann_tok);
    lagoon_v1_DeleteVideoRequest dr = {v};
    lagoon_v1_VideosEmpty empty;
    assert_int_equal(lagoon_Videos_Delete(C, &dr, &empty), LAGOON_OK);
    lagoon_set_idempotency_key(C, "vd-add");
    EXPECT(add(bob_tok, v, "on a video about to go", 0), LAGOON_NOT_FOUND, "video_id");
    lagoon_set_idempotency_key(C, "vd-resolve");
    EXPECT(resolve(bob_tok, c, 1), LAGOON_NOT_FOUND, "comment_id");
}

/* A video cut shorter than a comment's moment: the comment's text can still be edited (only a
 * changed moment is checked against the duration). */
static int do_shorten(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    int st = store_get(t, &lagoon_table_videos, *(const uint64_t *)arg, v, err);
    v->duration_seconds = 30;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_videos, v, err);
    free(v);
    return st;
}

static void test_edit_after_video_shortened(void **state)
{
    (void)state;
    uint64_t v = video(1, 60);
    uint64_t c = add_ok(bob_tok, v, "at fifty seconds", 50000);
    uint64_t r = reply_ok(cat_tok, c, "a reply to it");
    store_error err;
    assert_int_equal(store_write(T->app->db, do_shorten, &v, &err), LAGOON_OK);
    EXPECT(update_text(bob_tok, c, "at fifty seconds, edited"), LAGOON_OK, NULL);
    EXPECT(update_text(cat_tok, r, "the reply, edited"), LAGOON_OK, NULL);
}

static int count_member_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    const lagoon_v1_TopicMember *m = row;
    if (m->topic.kind == lagoon_v1_Topic_Kind_VIDEO)
        ++*(int *)arg;
    return LAGOON_OK;
}

/* user's memberships of video topics, on disk. */
static int video_follows(uint64_t user)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    store_txn *t;
    store_error err;
    store_page page;
    int n = 0;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    assert_int_equal(store_scan(t, &q, count_member_row, &n, &page, &err), LAGOON_OK);
    store_read_end(t);
    return n;
}

/* A video that goes with its owner's deleted account takes its followers' follows with it (and
 * the kept responses about its comments). */
static void test_owner_account_deleted_ends_follows(void **state)
{
    (void)state;
    char et[65];
    test_verified_user(T, C, "eve", lagoon_v1_Role_STUDENT, et);
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "eve's etude");
    snprintf(r.url, sizeof(r.url), "https://www.youtube.com/watch?v=eve");
    r.is_public = true;
    lagoon_set_token(C, et);
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
    uint64_t v = V.id;
    EXPECT(follow(cat_tok, v, 1), LAGOON_OK, NULL);
    lagoon_set_idempotency_key(C, "eve-gone");
    add_ok(cat_tok, v, "before eve goes", 0);
    assert_int_equal(video_follows(cat), 1);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, et);
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_feeds), 1);
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &ue), LAGOON_OK);
    assert_int_equal(video_follows(cat), 0);
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_feeds), 0); /* its video's topic went too */
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_events), 0);
    lagoon_set_idempotency_key(C, "eve-gone");
    EXPECT(add(cat_tok, v, "before eve goes", 0), LAGOON_NOT_FOUND, "video_id");
}

/* ---- live events on the video's topic -------------------------------------------------------------------- */

typedef struct device {
    lagoon_client *c;
    lagoon_stream *s;
} device;

static void subscribe(device *d, const char *tok)
{
    d->c = test_client(T);
    lagoon_set_token(d->c, tok);
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    assert_int_equal(lagoon_Events_Subscribe(d->c, &req, &d->s), LAGOON_OK);
}

/* The next event of d that is of the video's topic (others, of the user's own log, skipped). */
static void next_video_event(device *d, uint64_t video_id, lagoon_v1_Event *ev)
{
    for (int i = 0; i < 100; i++) {
        int r = lagoon_stream_recv_timeout(d->s, ev, WAIT_MS);
        if (r != 1)
            fail_msg("no event (%d): %s", r, lagoon_last_error(d->c)->detail.message);
        if (ev->has_topic && ev->topic.kind == lagoon_v1_Topic_Kind_VIDEO && ev->topic.id == video_id)
            return;
    }
    fail_msg("no event of the video's topic");
}

/* ev is the comment event action of comment id on video_id, showing text. */
static void check_comment_event(const lagoon_v1_Event *ev, uint64_t video_id, lagoon_v1_CommentEvent_Action action,
                                uint64_t id, const char *text)
{
    assert_int_equal(ev->which_payload, lagoon_v1_Event_comment_tag);
    assert_int_equal(ev->payload.comment.action, action);
    assert_int_equal(ev->payload.comment.comment.id, id);
    assert_int_equal(ev->payload.comment.comment.video_id, video_id);
    assert_string_equal(ev->payload.comment.comment.content, text);
}

static void expect_comment_event(device *d, uint64_t video_id, lagoon_v1_CommentEvent_Action action, uint64_t id,
                                 const char *text, lagoon_v1_Event *ev)
{
    next_video_event(d, video_id, ev);
    check_comment_event(ev, video_id, action, id, text);
}

static void test_live_events(void **state)
{
    (void)state;
    uint64_t v = video(0, 0);
    share(v, bob);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    device d;
    subscribe(&d, bob_tok);
    /* Following while subscribed: the stream takes the topic without reconnecting. */
    EXPECT(follow(bob_tok, v, 1), LAGOON_OK, NULL);
    EXPECT(follow(bob_tok, v, 1), LAGOON_OK, NULL); /* again: no change */
    next_video_event(&d, v, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_true(ev->payload.membership.joined);
    /* A new comment arrives filled in; an edit shows the new text; a deletion only ids. */
    uint64_t c = add_ok(ann_tok, v, "watch bar 12", 12000);
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_ADDED, c, "watch bar 12", ev);
    assert_int_equal(ev->payload.comment.comment.author_id, ann);
    assert_int_equal(ev->payload.comment.comment.at_ms, 12000);
    EXPECT(update_text(ann_tok, c, "watch bar 13"), LAGOON_OK, NULL);
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_EDITED, c, "watch bar 13", ev);
    EXPECT(resolve(ann_tok, c, 1), LAGOON_OK, NULL);
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_RESOLVED, c, "watch bar 13", ev);
    assert_true(ev->payload.comment.comment.resolved);
    EXPECT(resolve(ann_tok, c, 0), LAGOON_OK, NULL);
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_REOPENED, c, "watch bar 13", ev);
    uint64_t r = reply_ok(ann_tok, c, "see the fingering");
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_ADDED, r, "see the fingering", ev);
    assert_int_equal(ev->payload.comment.comment.root_id, c);
    EXPECT(del(ann_tok, c), LAGOON_OK, NULL);
    expect_comment_event(&d, v, lagoon_v1_CommentEvent_Action_DELETED, c, "", ev);
    /* Unfollowed: nothing more of the video's topic. */
    EXPECT(follow(bob_tok, v, 0), LAGOON_OK, NULL);
    next_video_event(&d, v, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_false(ev->payload.membership.joined);
    lagoon_stream_cancel(d.s);
    lagoon_close(d.c);

    /* Follow needs the video; Unfollow reveals nothing and always succeeds. */
    EXPECT(follow(cat_tok, v, 1), LAGOON_NOT_FOUND, "video_id");
    EXPECT(follow(cat_tok, v, 0), LAGOON_OK, NULL);
    free(ev);
}

/* Events logged as references replay as the comment is at the time: a comment deleted since
 * shows only its ids, whatever the event. */
static void test_replay_after_delete(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    EXPECT(follow(bob_tok, v, 1), LAGOON_OK, NULL);
    uint64_t kept = add_ok(ann_tok, v, "kept", 0);
    uint64_t gone = add_ok(ann_tok, v, "secret words", 0);
    EXPECT(update_text(ann_tok, kept, "kept, edited"), LAGOON_OK, NULL);
    EXPECT(update_text(ann_tok, gone, "more secret words"), LAGOON_OK, NULL);
    EXPECT(del(ann_tok, gone), LAGOON_OK, NULL);
    device d;
    d.c = test_client(T);
    lagoon_set_token(d.c, bob_tok);
    static lagoon_v1_SubscribeRequest req;
    memset(&req, 0, sizeof(req));
    req.topics_count = 1;
    req.topics[0].has_topic = true;
    req.topics[0].topic.kind = lagoon_v1_Topic_Kind_VIDEO;
    req.topics[0].topic.id = v;
    assert_int_equal(lagoon_Events_Subscribe(d.c, &req, &d.s), LAGOON_OK);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    struct {
        lagoon_v1_CommentEvent_Action action;
        uint64_t id;
        const char *text;
    } want[] = {{lagoon_v1_CommentEvent_Action_ADDED, kept, "kept, edited"},
                {lagoon_v1_CommentEvent_Action_DELETED, gone, ""},
                {lagoon_v1_CommentEvent_Action_EDITED, kept, "kept, edited"},
                {lagoon_v1_CommentEvent_Action_DELETED, gone, ""},
                {lagoon_v1_CommentEvent_Action_DELETED, gone, ""}};
    size_t got = 0;
    for (int i = 0; i < 20 && got < sizeof(want) / sizeof(want[0]); i++) {
        next_video_event(&d, v, ev);
        if (ev->which_payload == lagoon_v1_Event_membership_tag)
            continue;
        check_comment_event(ev, v, want[got].action, want[got].id, want[got].text);
        got++;
    }
    assert_int_equal(got, sizeof(want) / sizeof(want[0]));
    lagoon_stream_cancel(d.s);
    lagoon_close(d.c);
    free(ev);
}

static int do_unshare_and_prune(store_txn *t, void *arg, store_error *err)
{
    const share_op *op = arg;
    int st = do_unshare(t, arg, err);
    return st == LAGOON_OK ? comments_video_readers_changed(t, T->app, op->video, err) : st;
}

/* A follower who loses the video stops getting its events once the losing write calls
 * comments_video_readers_changed; the others keep theirs. */
static void test_follower_losing_access(void **state)
{
    (void)state;
    uint64_t priv = video(0, 0), pub = video(1, 0);
    share(priv, bob);
    share(priv, cat);
    EXPECT(follow(bob_tok, priv, 1), LAGOON_OK, NULL);
    EXPECT(follow(bob_tok, pub, 1), LAGOON_OK, NULL);
    EXPECT(follow(cat_tok, priv, 1), LAGOON_OK, NULL);
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    assert_non_null(ev);
    device d;
    subscribe(&d, bob_tok);
    /* The stream starts with the topics bob follows: both, before the share goes. */
    int joined = 0;
    for (int i = 0; i < 10 && joined < 2; i++) {
        int r = lagoon_stream_recv_timeout(d.s, ev, WAIT_MS);
        if (r != 1)
            fail_msg("no event (%d)", r);
        if (ev->which_payload == lagoon_v1_Event_membership_tag && ev->payload.membership.joined)
            joined++;
    }
    assert_int_equal(joined, 2);
    share_op op = {priv, bob};
    store_error err;
    assert_int_equal(store_write(T->app->db, do_unshare_and_prune, &op, &err), LAGOON_OK);
    next_video_event(&d, priv, ev);
    assert_int_equal(ev->which_payload, lagoon_v1_Event_membership_tag);
    assert_false(ev->payload.membership.joined);
    /* The private video's next comment does not reach bob: the public one's comes first. */
    add_ok(ann_tok, priv, "not for bob any more", 0);
    uint64_t c = add_ok(ann_tok, pub, "for everyone", 0);
    for (int i = 0; i < 100; i++) {
        int r = lagoon_stream_recv_timeout(d.s, ev, WAIT_MS);
        if (r != 1)
            fail_msg("no event (%d)", r);
        if (!ev->has_topic || ev->which_payload == lagoon_v1_Event_membership_tag)
            continue;
        break;
    }
    check_comment_event(ev, pub, lagoon_v1_CommentEvent_Action_ADDED, c, "for everyone");
    lagoon_stream_cancel(d.s);
    lagoon_close(d.c);
    /* cat still follows the private video. */
    assert_int_equal(follow(cat_tok, priv, 1), LAGOON_OK);
    int members = 0;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, lagoon_v1_Topic_Kind_VIDEO);
    store_key_u64(&prefix, priv);
    store_txn *t;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_topic_members, .index = lagoon_index_topic_members_by_topic,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    store_page page;
    assert_int_equal(store_scan(t, &q, count_row, &members, &page, &err), LAGOON_OK);
    store_read_end(t);
    assert_int_equal(members, 1);
    free(ev);
}

static int join_groups(store_txn *t, void *arg, store_error *err)
{
    uint64_t user = *(const uint64_t *)arg;
    int st = LAGOON_OK;
    for (uint64_t g = 1; g < EVENTS_MAX_TOPICS_PER_USER && st == LAGOON_OK; g++) {
        lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, g};
        st = events_topic_join(t, T->app, user, &tp, err);
    }
    return st;
}

/* Following counts against the topics a user may belong to. */
static void test_follow_cap(void **state)
{
    (void)state;
    uint64_t a = video(1, 0), b = video(1, 0);
    store_error err;
    assert_int_equal(store_write(T->app->db, join_groups, &cat, &err), LAGOON_OK);
    EXPECT(follow(cat_tok, a, 1), LAGOON_OK, NULL); /* the last one */
    EXPECT(follow(cat_tok, b, 1), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(follow(cat_tok, a, 0), LAGOON_OK, NULL);
    EXPECT(follow(cat_tok, b, 1), LAGOON_OK, NULL);
}

/* ---- the rate limit --------------------------------------------------------------------------------- */

static void tweak_limited(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->comments.max_events = 3;
}

static int setup_limited(void **state)
{
    (void)state;
    start(tweak_limited);
    return 0;
}

static void test_rate_limit(void **state)
{
    (void)state;
    uint64_t v = video(1, 0);
    lagoon_set_idempotency_key(C, "limited-1");
    uint64_t c = add_ok(bob_tok, v, "one", 0);
    /* A retry answered with the first response does not count, nor does a refused call. */
    for (int i = 0; i < 3; i++) {
        lagoon_set_idempotency_key(C, "limited-1");
        assert_int_equal(add_ok(bob_tok, v, "one", 0), c);
    }
    EXPECT(add(bob_tok, 987654321, "x", 0), LAGOON_NOT_FOUND, "video_id");
    EXPECT(add(bob_tok, v, "", 0), LAGOON_INVALID_ARGUMENT, "content");
    reply_ok(bob_tok, c, "two");
    add_ok(bob_tok, v, "three", 0);
    EXPECT(add(bob_tok, v, "four", 0), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_int_equal(lagoon_last_error(C)->detail.retry_after_ms, 60000);
    EXPECT(reply(bob_tok, c, "four"), LAGOON_RESOURCE_EXHAUSTED, NULL);
    /* Per user: cat still may. */
    add_ok(cat_tok, v, "cat's first", 0);
    /* Edits are not creations. */
    EXPECT(update_text(bob_tok, c, "one, edited"), LAGOON_OK, NULL);
    /* The minute over, bob may again. */
    test_clock_advance(T, 30000);
    EXPECT(add(bob_tok, v, "four", 0), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_int_equal(lagoon_last_error(C)->detail.retry_after_ms, 30000);
    test_clock_advance(T, 30000);
    add_ok(bob_tok, v, "four", 0);
    assert_int_equal(comment_rows(lagoon_index_comments_by_author, bob), 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_add_and_list_by_moment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_and_duration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anonymous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_and_add_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_share_removed_hides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_windows_and_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_after_video_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner_account_deleted_ends_follows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edit_after_video_shortened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_live_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_after_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follower_losing_access, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follow_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup_limited, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
