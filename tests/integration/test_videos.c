/* Videos end to end through the generated client against the real server and store: the
 * access matrix of every method (owner, a user it is shared with, another user, an
 * administrator, no token; public and private videos), the cascades, the lists and their
 * paging, search over the word index, view counting with the injected clock, sharing. */
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
#include "lagoon_stubs.h"
#include "testserver.h"
#include "videos.h"

/* VIDEOS_VIEW_INTERVAL_MS in videos.c: a user's views of a video count once an hour. */
#define VIDEOS_TEST_HOUR_MS (3600LL * 1000)

static test_app *T;
static lagoon_client *C;

/* ann owns the videos; bob gets shares of them; cat is another user; root administers. */
static uint64_t ann, bob, cat, root;
static char ann_tok[65], bob_tok[65], cat_tok[65], root_tok[65];

/* Responses: a video row is ~37 KB, kept off the test's stack. */
static lagoon_v1_Video V;

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_TEACHER, bob_tok);
    cat = test_verified_user(T, C, "cat", lagoon_v1_Role_STUDENT, cat_tok);
    root = test_admin_user(T, C, "root", root_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* (test_has_violation, testserver.h, on this file's client) */
#define has_violation(field) test_has_violation(C, (field))

/* The call failed with code and a violation naming field. */
static void assert_refused(int st, int code, const char *field)
{
    if (st != code)
        fail_msg("status %s, expected %s (%s)", lagoon_status_name(st), lagoon_status_name(code),
                 lagoon_last_error(C)->detail.message);
    if (field && !has_violation(field))
        fail_msg("no violation on %s (%s)", field, lagoon_last_error(C)->detail.message);
}

static void video_request(lagoon_v1_CreateVideoRequest *r, const char *title, const char *piece, const char *composer,
                          int pub)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->title, sizeof(r->title), "%s", title);
    snprintf(r->url, sizeof(r->url), "https://www.youtube.com/watch?v=abc");
    snprintf(r->piece_name, sizeof(r->piece_name), "%s", piece ? piece : "");
    snprintf(r->composer, sizeof(r->composer), "%s", composer ? composer : "");
    r->is_public = pub;
}

/* A video of the user of tok (fails the test unless created): its id. */
static uint64_t create_full(const char *tok, const char *title, const char *piece, const char *composer, int pub)
{
    static lagoon_v1_CreateVideoRequest r;
    video_request(&r, title, piece, composer, pub);
    lagoon_set_token(C, tok);
    int st = lagoon_Videos_Create(C, &r, &V);
    if (st != LAGOON_OK)
        fail_msg("Create: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    return V.id;
}

static uint64_t create(const char *tok, const char *title, int pub)
{
    return create_full(tok, title, NULL, NULL, pub);
}

static int get(const char *tok, uint64_t id)
{
    lagoon_set_token(C, tok);
    lagoon_v1_GetVideoRequest r = {.video_id = id};
    return lagoon_Videos_Get(C, &r, &V);
}

static int update(const char *tok, const lagoon_v1_UpdateVideoRequest *r)
{
    lagoon_set_token(C, tok);
    return lagoon_Videos_Update(C, r, &V);
}

/* Update of the title alone. */
static int retitle(const char *tok, uint64_t id, const char *title)
{
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "%s", title);
    return update(tok, &r);
}

static int del(const char *tok, uint64_t id)
{
    lagoon_set_token(C, tok);
    lagoon_v1_DeleteVideoRequest r = {.video_id = id};
    lagoon_v1_VideosEmpty e;
    return lagoon_Videos_Delete(C, &r, &e);
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(int *)arg)++;
    return LAGOON_OK;
}

/* fn(arg) on every row of table whose index idx key starts with prefix. */
static void scan_prefix(const store_table *table, const store_index *idx, const store_key *prefix, store_row_fn fn,
                        void *arg)
{
    store_query q = {.table = table, .index = idx, .prefix = prefix->buf, .prefix_len = prefix->len,
                     .page_size = STORE_PAGE_SIZE_MAX};
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    for (int i = 0; i < 100; i++) { /* bounded: the tests keep fewer than 50 000 rows */
        store_page page;
        assert_int_equal(store_scan(t, &q, fn, arg, &page, &err), LAGOON_OK);
        static char tok[STORE_PAGE_TOKEN_MAX + 1];
        memcpy(tok, page.next_page_token, sizeof(tok));
        if (tok[0] == '\0')
            break;
        q.page_token = tok;
    }
    store_read_end(t);
}

/* The same, for the keys that start with u64 key. */
static void scan_rows(const store_table *table, const store_index *idx, uint64_t key, store_row_fn fn, void *arg)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, key);
    scan_prefix(table, idx, &prefix, fn, arg);
}

static int rows_of(const store_table *table, const store_index *idx, uint64_t key)
{
    int n = 0;
    scan_rows(table, idx, key, count_row, &n);
    return n;
}

static int words_of(uint64_t video)
{
    return rows_of(&lagoon_table_video_words, lagoon_index_video_words_by_video, video);
}

/* A list call's response (release with pb_release). */
static lagoon_v1_ListVideosResponse L;

static void list_release(void)
{
    pb_release(lagoon_v1_ListVideosResponse_fields, &L);
    memset(&L, 0, sizeof(L));
}

/* The ids of L, in order, into ids (at most n). */
static pb_size_t list_ids(uint64_t *ids, size_t n)
{
    for (pb_size_t i = 0; i < L.videos_count && i < n; i++)
        ids[i] = L.videos[i].id;
    return L.videos_count;
}

/* ---- Create, Get -------------------------------------------------------------------------------- */

static void test_create_and_get(void **state)
{
    (void)state;
    static lagoon_v1_CreateVideoRequest r;
    video_request(&r, "Etude op. 10 no. 1", "Etude", "Chopin", 0);
    snprintf(r.description, sizeof(r.description), "first try");
    snprintf(r.thumbnail_url, sizeof(r.thumbnail_url), "https://img.example.com/t.jpg");
    snprintf(r.practice_goals, sizeof(r.practice_goals), "even arpeggios");
    r.duration_seconds = 95;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
    uint64_t id = V.id;
    assert_true(id > 0);
    assert_int_equal(V.owner_id, ann);
    assert_int_equal(V.status, lagoon_v1_Video_Status_READY);
    assert_int_equal(V.source, lagoon_v1_Video_Source_EXTERNAL_URL);
    assert_int_equal(V.created_at, T->clock_ms);
    assert_int_equal(V.updated_at, T->clock_ms);
    assert_false(V.is_public);

    memset(&V, 0, sizeof(V));
    assert_int_equal(get(ann_tok, id), LAGOON_OK);
    assert_int_equal(V.id, id);
    assert_string_equal(V.title, "Etude op. 10 no. 1");
    assert_string_equal(V.description, "first try");
    assert_string_equal(V.url, "https://www.youtube.com/watch?v=abc");
    assert_string_equal(V.thumbnail_url, "https://img.example.com/t.jpg");
    assert_string_equal(V.piece_name, "Etude");
    assert_string_equal(V.composer, "Chopin");
    assert_string_equal(V.practice_goals, "even arpeggios");
    assert_int_equal(V.duration_seconds, 95);
    assert_int_equal(V.view_count, 0);

    assert_refused(get(ann_tok, id + 1000), LAGOON_NOT_FOUND, "video_id");
}

static void test_create_bounds(void **state)
{
    (void)state;
    static lagoon_v1_CreateVideoRequest r;
    lagoon_set_token(C, ann_tok);
    static const struct {
        const char *field;
        void (*bad)(lagoon_v1_CreateVideoRequest *r);
    } cases[] = {
        {"title", NULL},
        {"url", NULL},
        {"thumbnail_url", NULL},
        {"duration_seconds", NULL},
        {"piece_name", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        video_request(&r, "ok", NULL, NULL, 0);
        switch (i) {
        case 0:
            r.title[0] = '\0';
            break;
        case 1:
            snprintf(r.url, sizeof(r.url), "ftp://example.com/x");
            break;
        case 2:
            snprintf(r.thumbnail_url, sizeof(r.thumbnail_url), "not a url");
            break;
        case 3:
            r.duration_seconds = 86401;
            break;
        default:
            memset(r.piece_name, 'x', 256); /* 256 characters: one past the rule */
            r.piece_name[256] = '\0';
            break;
        }
        assert_refused(lagoon_Videos_Create(C, &r, &V), LAGOON_INVALID_ARGUMENT, cases[i].field);
    }
    /* A title of 255 characters (multi-byte ones) is accepted. */
    video_request(&r, "", NULL, NULL, 0);
    for (int i = 0; i < 255; i++)
        memcpy(r.title + 2 * i, "\xc3\xa9", 2);
    r.title[510] = '\0';
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
}

/* Get: who reads a private and a public video. */
static void test_get_matrix(void **state)
{
    (void)state;
    uint64_t priv = create(ann_tok, "private", 0);
    uint64_t pub = create(ann_tok, "public", 1);
    assert_int_equal(get(ann_tok, priv), LAGOON_OK);
    assert_int_equal(get(root_tok, priv), LAGOON_OK);
    assert_refused(get(cat_tok, priv), LAGOON_NOT_FOUND, "video_id");
    assert_string_equal(lagoon_last_error(C)->detail.message, "no such video");
    assert_refused(get(NULL, priv), LAGOON_UNAUTHENTICATED, NULL);
    assert_int_equal(get(cat_tok, pub), LAGOON_OK);
    assert_int_equal(get(bob_tok, pub), LAGOON_OK);
    assert_int_equal(get(root_tok, pub), LAGOON_OK);
    assert_refused(get(NULL, pub), LAGOON_UNAUTHENTICATED, NULL);
}

/* ---- Update, Delete ------------------------------------------------------------------------------ */

static void test_update_present_fields(void **state)
{
    (void)state;
    uint64_t id = create_full(ann_tok, "Old title", "Sonata", "Mozart", 0);
    int64_t created = V.created_at;
    test_clock_advance(T, 5000);
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "New title");
    r.has_duration_seconds = true;
    r.duration_seconds = 42;
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    assert_string_equal(V.title, "New title");
    assert_string_equal(V.piece_name, "Sonata"); /* absent: kept */
    assert_string_equal(V.composer, "Mozart");
    assert_int_equal(V.duration_seconds, 42);
    assert_int_equal(V.created_at, created);
    assert_int_equal(V.updated_at, T->clock_ms);
    assert_int_equal(get(ann_tok, id), LAGOON_OK);
    assert_string_equal(V.title, "New title");

    /* A present empty url or title is refused; an empty description is a change. */
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_url = true;
    assert_refused(update(ann_tok, &r), LAGOON_INVALID_ARGUMENT, "url");
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_title = true;
    assert_refused(update(ann_tok, &r), LAGOON_INVALID_ARGUMENT, "title");
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_is_public = true;
    r.is_public = true;
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    assert_true(V.is_public);
    assert_string_equal(V.title, "New title");
}

/* Update and Delete: the owner and an administrator change; a reader (public video) is
 * PERMISSION_DENIED; anyone else NOT_FOUND; no token UNAUTHENTICATED. */
static void test_update_delete_matrix(void **state)
{
    (void)state;
    uint64_t priv = create(ann_tok, "private one", 0);
    uint64_t pub = create(ann_tok, "public one", 1);
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.has_description = true;
    snprintf(r.description, sizeof(r.description), "changed");
    r.video_id = priv;
    assert_refused(update(cat_tok, &r), LAGOON_NOT_FOUND, "video_id");
    assert_refused(update(NULL, &r), LAGOON_UNAUTHENTICATED, NULL);
    assert_int_equal(update(root_tok, &r), LAGOON_OK);
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    r.video_id = pub;
    assert_refused(update(cat_tok, &r), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(update(bob_tok, &r), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(update(NULL, &r), LAGOON_UNAUTHENTICATED, NULL);
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);

    assert_refused(del(cat_tok, priv), LAGOON_NOT_FOUND, "video_id");
    assert_refused(del(cat_tok, pub), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(del(NULL, pub), LAGOON_UNAUTHENTICATED, NULL);
    assert_int_equal(get(ann_tok, pub), LAGOON_OK);
    assert_int_equal(del(root_tok, priv), LAGOON_OK);
    assert_int_equal(del(ann_tok, pub), LAGOON_OK);
    assert_refused(get(ann_tok, pub), LAGOON_NOT_FOUND, "video_id");
    assert_refused(del(ann_tok, pub), LAGOON_NOT_FOUND, "video_id");
}

/* A retry with the same key gets the first response and changes nothing; after a Delete the
 * kept response is gone and the retry runs again (NOT_FOUND). */
static void test_update_idempotent(void **state)
{
    (void)state;
    uint64_t id = create(ann_tok, "keyed", 0);
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "first");
    lagoon_set_idempotency_key(C, "update-key-1");
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    snprintf(r.title, sizeof(r.title), "second");
    assert_int_equal(update(ann_tok, &r), LAGOON_OK); /* no key: runs */
    snprintf(r.title, sizeof(r.title), "first");
    lagoon_set_idempotency_key(C, "update-key-1");
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    assert_string_equal(V.title, "first"); /* the first response... */
    assert_int_equal(get(ann_tok, id), LAGOON_OK);
    assert_string_equal(V.title, "second"); /* ...and nothing changed */
    assert_int_equal(del(ann_tok, id), LAGOON_OK);
    lagoon_set_idempotency_key(C, "update-key-1");
    assert_refused(update(ann_tok, &r), LAGOON_NOT_FOUND, "video_id");
}

/* Delete takes the video's words with it; an Update of the searched text replaces them. */
static void test_delete_cascades_words(void **state)
{
    (void)state;
    uint64_t id = create_full(ann_tok, "Ab", "C", "", 0);
    assert_int_equal(words_of(id), 3); /* a, ab, c */
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_composer = true;
    snprintf(r.composer, sizeof(r.composer), "Bach");
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    assert_int_equal(words_of(id), 7); /* + b, ba, bac, bach */
    r.has_composer = false;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "x");
    assert_int_equal(update(ann_tok, &r), LAGOON_OK);
    assert_int_equal(words_of(id), 6); /* x, c, b, ba, bac, bach */
    assert_int_equal(del(ann_tok, id), LAGOON_OK);
    assert_int_equal(words_of(id), 0);
    /* Every index entry of every table points at its row and back. */
    uint64_t problems = 1;
    store_error err;
    assert_int_equal(store_verify(T->app->db, stderr, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
}

/* Deleting the owner's account deletes their videos and what hangs off them. */
static void test_owner_account_deleted(void **state)
{
    (void)state;
    char tok[65];
    uint64_t dan = test_verified_user(T, C, "dan", lagoon_v1_Role_STUDENT, tok);
    uint64_t a = create_full(tok, "dan one", "x", "y", 0);
    uint64_t b = create(tok, "dan two", 1);
    assert_int_equal(rows_of(&lagoon_table_videos, lagoon_index_videos_by_owner_time, dan), 2);
    assert_true(words_of(a) > 0);
    lagoon_set_token(C, tok);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &ue), LAGOON_OK);
    assert_int_equal(rows_of(&lagoon_table_videos, lagoon_index_videos_by_owner_time, dan), 0);
    assert_int_equal(words_of(a), 0);
    assert_int_equal(words_of(b), 0);
    assert_refused(get(root_tok, b), LAGOON_NOT_FOUND, "video_id");
}

/* ---- lists -------------------------------------------------------------------------------------- */

static int list_mine(const char *tok, uint32_t size, const char *token, uint32_t page, uint32_t per_page)
{
    list_release();
    lagoon_set_token(C, tok);
    lagoon_v1_ListMyVideosRequest r = lagoon_v1_ListMyVideosRequest_init_zero;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    r.page = page;
    r.per_page = per_page;
    return lagoon_Videos_ListMine(C, &r, &L);
}

static int list_by_user(const char *tok, uint64_t user, uint32_t size, const char *token)
{
    list_release();
    lagoon_set_token(C, tok);
    lagoon_v1_ListUserVideosRequest r = lagoon_v1_ListUserVideosRequest_init_zero;
    r.user_id = user;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    return lagoon_Videos_ListByUser(C, &r, &L);
}

static int list_public(const char *tok, uint32_t size, const char *token, uint32_t page)
{
    list_release();
    lagoon_set_token(C, tok);
    lagoon_v1_ListPublicVideosRequest r = lagoon_v1_ListPublicVideosRequest_init_zero;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    r.page = page;
    r.per_page = page ? size : 0;
    return lagoon_Videos_ListPublic(C, &r, &L);
}

static void test_list_mine_pages(void **state)
{
    (void)state;
    char tok[65];
    test_verified_user(T, C, "eve", lagoon_v1_Role_STUDENT, tok);
    uint64_t v[5];
    for (int i = 0; i < 5; i++) {
        char title[20];
        snprintf(title, sizeof(title), "eve %d", i);
        v[i] = create(tok, title, i % 2);
        test_clock_advance(T, 1000);
    }
    /* Cursor pages, newest first. */
    uint64_t ids[5];
    static char next[801];
    assert_int_equal(list_mine(tok, 2, NULL, 0, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], v[4]);
    assert_int_equal(ids[1], v[3]);
    assert_true(L.next_page_token[0] != '\0');
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_int_equal(list_mine(tok, 2, next, 0, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], v[2]);
    assert_int_equal(ids[1], v[1]);
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_int_equal(list_mine(tok, 2, next, 0, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], v[0]);
    assert_string_equal(L.next_page_token, "");
    /* Numbered pages. */
    assert_int_equal(list_mine(tok, 0, NULL, 2, 2), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], v[2]);
    assert_int_equal(ids[1], v[1]);
    assert_string_equal(L.next_page_token, "");
    assert_int_equal(list_mine(tok, 0, NULL, 3, 2), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    /* Page size over the cap (ListVideosResponse.videos' max_count), a page with a token, a
     * forged token. */
    assert_refused(list_mine(tok, 101, NULL, 0, 0), LAGOON_INVALID_ARGUMENT, "page_size");
    assert_refused(list_mine(tok, 0, next, 2, 2), LAGOON_INVALID_ARGUMENT, "page");
    assert_refused(list_mine(tok, 2, "forged", 0, 0), LAGOON_INVALID_ARGUMENT, "page_token");
    assert_int_equal(list_mine(tok, 100, NULL, 0, 0), LAGOON_OK);
    assert_int_equal(L.videos_count, 5);
    /* Another user's list has none of them. */
    assert_int_equal(list_mine(cat_tok, 100, NULL, 0, 0), LAGOON_OK);
    for (pb_size_t i = 0; i < L.videos_count; i++)
        assert_int_not_equal(L.videos[i].owner_id, V.owner_id);
    list_release();
}

static void test_list_by_user_visibility(void **state)
{
    (void)state;
    char tok[65];
    uint64_t fay = test_verified_user(T, C, "fay", lagoon_v1_Role_STUDENT, tok);
    uint64_t priv = create(tok, "fay private", 0);
    test_clock_advance(T, 1000);
    uint64_t pub = create(tok, "fay public", 1);
    test_clock_advance(T, 1000);
    uint64_t ids[5];
    assert_int_equal(list_by_user(tok, fay, 10, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], pub);
    assert_int_equal(ids[1], priv);
    assert_int_equal(list_by_user(root_tok, fay, 10, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(list_by_user(cat_tok, fay, 10, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], pub);
    /* Filtered while scanning: the first page of one row is the public video, the second is
     * empty (the private one is left out) and the last. */
    assert_int_equal(list_by_user(cat_tok, fay, 1, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    static char next[801];
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_int_equal(list_by_user(cat_tok, fay, 1, next), LAGOON_OK);
    assert_int_equal(L.videos_count, 0);
    assert_refused(list_by_user(cat_tok, fay + 1000, 10, NULL), LAGOON_NOT_FOUND, "user_id");
    assert_refused(list_by_user(NULL, fay, 10, NULL), LAGOON_UNAUTHENTICATED, NULL);
    /* Made private: gone from others' lists at the next call. */
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = pub;
    r.has_is_public = true;
    assert_int_equal(update(tok, &r), LAGOON_OK);
    assert_int_equal(list_by_user(cat_tok, fay, 10, NULL), LAGOON_OK);
    assert_int_equal(L.videos_count, 0);
    assert_refused(get(cat_tok, pub), LAGOON_NOT_FOUND, "video_id");
    list_release();
}

static int share(const char *tok, uint64_t video, uint64_t user);

static int list_by_user_page(const char *tok, uint64_t user, uint32_t per_page, uint32_t page)
{
    list_release();
    lagoon_set_token(C, tok);
    lagoon_v1_ListUserVideosRequest r = lagoon_v1_ListUserVideosRequest_init_zero;
    r.user_id = user;
    r.per_page = per_page;
    r.page = page;
    return lagoon_Videos_ListByUser(C, &r, &L);
}

/* Another user's list shows nothing of the videos the caller may not read: the private ones are
 * passed over without filling pages (no run of empty pages counts them), numbered pages count
 * only visible videos, and a private video shared with the caller is listed in its place. */
static void test_list_by_user_hides_private_ones(void **state)
{
    (void)state;
    char tok[65];
    uint64_t gil = test_verified_user(T, C, "gil", lagoon_v1_Role_STUDENT, tok);
    uint64_t pub = create(tok, "gil public", 1);
    uint64_t priv[3];
    for (int i = 0; i < 3; i++) {
        test_clock_advance(T, 1000);
        priv[i] = create(tok, "gil private", 0); /* newer than the public one */
    }
    uint64_t ids[5];
    assert_int_equal(list_by_user(cat_tok, gil, 1, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], pub); /* the first page, not the fourth */
    assert_string_equal(L.next_page_token, ""); /* nothing visible after it */
    assert_int_equal(list_by_user_page(cat_tok, gil, 1, 1), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], pub);
    assert_int_equal(list_by_user_page(cat_tok, gil, 1, 2), LAGOON_OK);
    assert_int_equal(L.videos_count, 0);
    /* Shared with cat: listed, newest first. */
    assert_int_equal(share(tok, priv[1], cat), LAGOON_OK);
    assert_int_equal(list_by_user(cat_tok, gil, 10, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], priv[1]);
    assert_int_equal(ids[1], pub);
    assert_int_equal(list_by_user_page(cat_tok, gil, 1, 2), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], pub);
    list_release();
}

static void test_list_public(void **state)
{
    (void)state;
    test_clock_advance(T, 1000);
    uint64_t a = create(ann_tok, "feed a", 1);
    test_clock_advance(T, 1000);
    uint64_t hidden = create(ann_tok, "feed hidden", 0);
    test_clock_advance(T, 1000);
    uint64_t b = create(bob_tok, "feed b", 1);
    uint64_t ids[3];
    assert_int_equal(list_public(cat_tok, 2, NULL, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 2);
    assert_int_equal(ids[0], b);
    assert_int_equal(ids[1], a);
    assert_int_equal(list_public(cat_tok, 1, NULL, 2), LAGOON_OK); /* numbered */
    assert_int_equal(list_ids(ids, 3), 1);
    assert_int_equal(ids[0], a);
    /* Every video of the feed is public. */
    assert_int_equal(list_public(cat_tok, 100, NULL, 0), LAGOON_OK);
    for (pb_size_t i = 0; i < L.videos_count; i++) {
        assert_true(L.videos[i].is_public);
        assert_int_not_equal(L.videos[i].id, hidden);
    }
    assert_refused(list_public(NULL, 2, NULL, 0), LAGOON_UNAUTHENTICATED, NULL);
    list_release();
}

/* ---- Share, Unshare, ListShares ---------------------------------------------------------------- */

static int share(const char *tok, uint64_t video, uint64_t user)
{
    lagoon_set_token(C, tok);
    lagoon_v1_ShareVideoRequest r = {.video_id = video, .user_id = user};
    lagoon_v1_VideosEmpty e;
    return lagoon_Videos_Share(C, &r, &e);
}

static int unshare(const char *tok, uint64_t video, uint64_t user)
{
    lagoon_set_token(C, tok);
    lagoon_v1_UnshareVideoRequest r = {.video_id = video, .user_id = user};
    lagoon_v1_VideosEmpty e;
    return lagoon_Videos_Unshare(C, &r, &e);
}

static lagoon_v1_ListVideoSharesResponse S;

static int list_shares(const char *tok, uint64_t video, uint32_t size, const char *token)
{
    pb_release(lagoon_v1_ListVideoSharesResponse_fields, &S);
    memset(&S, 0, sizeof(S));
    lagoon_set_token(C, tok);
    lagoon_v1_ListVideoSharesRequest r = lagoon_v1_ListVideoSharesRequest_init_zero;
    r.video_id = video;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    return lagoon_Videos_ListShares(C, &r, &S);
}

static int list_shared_with_me(const char *tok, uint32_t size, const char *token, uint32_t page)
{
    list_release();
    lagoon_set_token(C, tok);
    lagoon_v1_ListSharedWithMeRequest r = lagoon_v1_ListSharedWithMeRequest_init_zero;
    r.page_size = page ? 0 : size;
    r.per_page = page ? size : 0;
    r.page = page;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    return lagoon_Videos_ListSharedWithMe(C, &r, &L);
}

/* Whether the user of tok has a VIDEO_SHARED notification about video. */
static int notified_of(const char *tok, uint64_t video)
{
    lagoon_set_token(C, tok);
    lagoon_v1_ListNotificationsRequest r = lagoon_v1_ListNotificationsRequest_init_zero;
    r.page_size = 500;
    lagoon_v1_ListNotificationsResponse resp;
    memset(&resp, 0, sizeof(resp));
    assert_int_equal(lagoon_Notifications_List(C, &r, &resp), LAGOON_OK);
    int found = 0;
    for (pb_size_t i = 0; i < resp.notifications_count; i++)
        if (resp.notifications[i].type == lagoon_v1_Notification_Type_VIDEO_SHARED &&
            resp.notifications[i].related_id == video) {
            found++;
            assert_string_equal(resp.notifications[i].title, "ann shared a video with you");
        }
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
    return found;
}

/* Sharing, unsharing and sharing again leaves one notification while it is unread; a retried
 * Create answers the first video (Create is idempotent) until that video is deleted. */
static void test_share_again_and_create_retried(void **state)
{
    (void)state;
    uint64_t v = create(ann_tok, "shared three times", 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(share(ann_tok, v, bob), LAGOON_OK);
        assert_int_equal(unshare(ann_tok, v, bob), LAGOON_OK);
    }
    assert_int_equal(notified_of(bob_tok, v), 1);
    lagoon_set_idempotency_key(C, "create-once");
    uint64_t first = create(ann_tok, "created once", 0);
    lagoon_set_idempotency_key(C, "create-once");
    assert_int_equal(create(ann_tok, "created once", 0), first);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_DeleteVideoRequest dr = {first};
    lagoon_v1_VideosEmpty e;
    assert_int_equal(lagoon_Videos_Delete(C, &dr, &e), LAGOON_OK);
    lagoon_set_idempotency_key(C, "create-once");
    assert_true(create(ann_tok, "created once", 0) != first);
}

static int set_active(uint64_t user, int active)
{
    lagoon_set_token(C, root_tok);
    lagoon_v1_SetActiveRequest r = {.user_id = user, .active = active};
    lagoon_v1_UserProfile p;
    return lagoon_Users_SetActive(C, &r, &p);
}

static void test_share_access_and_notification(void **state)
{
    (void)state;
    uint64_t priv = create(ann_tok, "Shared etude", 0);
    assert_refused(get(bob_tok, priv), LAGOON_NOT_FOUND, "video_id");
    assert_false(notified_of(bob_tok, priv));
    assert_int_equal(share(ann_tok, priv, bob), LAGOON_OK);
    assert_true(notified_of(bob_tok, priv));
    /* bob reads it now, but may not change or reshare it. */
    assert_int_equal(get(bob_tok, priv), LAGOON_OK);
    assert_int_equal(V.share_count, 0); /* the owner's business */
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = priv;
    r.has_description = true;
    assert_refused(update(bob_tok, &r), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(del(bob_tok, priv), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(share(bob_tok, priv, cat), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(unshare(bob_tok, priv, bob), LAGOON_PERMISSION_DENIED, NULL);
    assert_refused(list_shares(bob_tok, priv, 10, NULL), LAGOON_PERMISSION_DENIED, NULL);
    /* cat knows nothing of it. */
    assert_refused(share(cat_tok, priv, bob), LAGOON_NOT_FOUND, "video_id");
    assert_refused(unshare(cat_tok, priv, bob), LAGOON_NOT_FOUND, "video_id");
    assert_refused(list_shares(cat_tok, priv, 10, NULL), LAGOON_NOT_FOUND, "video_id");
    assert_refused(share(NULL, priv, cat), LAGOON_UNAUTHENTICATED, NULL);
    assert_refused(unshare(NULL, priv, bob), LAGOON_UNAUTHENTICATED, NULL);
    assert_refused(list_shares(NULL, priv, 10, NULL), LAGOON_UNAUTHENTICATED, NULL);
    /* An administrator shares, lists, unshares any video. */
    assert_int_equal(share(root_tok, priv, cat), LAGOON_OK);
    assert_int_equal(get(ann_tok, priv), LAGOON_OK);
    assert_int_equal(V.share_count, 2);
    assert_int_equal(list_shares(root_tok, priv, 10, NULL), LAGOON_OK);
    assert_int_equal(S.shares_count, 2);
    assert_int_equal(list_shares(ann_tok, priv, 1, NULL), LAGOON_OK);
    assert_int_equal(S.shares_count, 1);
    assert_true(S.shares[0].has_user);
    assert_int_equal(S.shares[0].user.id, bob); /* by user id */
    assert_string_equal(S.shares[0].user.username, "bob");
    assert_int_equal(S.shares[0].shared_at, T->clock_ms);
    static char next[801];
    snprintf(next, sizeof(next), "%s", S.next_page_token);
    assert_int_equal(list_shares(ann_tok, priv, 1, next), LAGOON_OK);
    assert_int_equal(S.shares_count, 1);
    assert_int_equal(S.shares[0].user.id, cat);
    assert_refused(list_shares(ann_tok, priv, 201, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    /* bob sees it among ann's videos; cat (shared by the administrator) too. */
    int listed = 0;
    assert_int_equal(list_by_user(bob_tok, ann, 100, NULL), LAGOON_OK);
    for (pb_size_t i = 0; i < L.videos_count; i++)
        listed += L.videos[i].id == priv;
    assert_int_equal(listed, 1);
    /* Losing the share takes effect at the next call. */
    assert_int_equal(unshare(root_tok, priv, cat), LAGOON_OK);
    assert_refused(get(cat_tok, priv), LAGOON_NOT_FOUND, "video_id");
    assert_int_equal(unshare(ann_tok, priv, bob), LAGOON_OK);
    assert_refused(get(bob_tok, priv), LAGOON_NOT_FOUND, "video_id");
    assert_refused(unshare(ann_tok, priv, bob), LAGOON_NOT_FOUND, "user_id");
    assert_int_equal(get(ann_tok, priv), LAGOON_OK);
    assert_int_equal(V.share_count, 0);
    assert_int_equal(list_by_user(bob_tok, ann, 100, NULL), LAGOON_OK);
    for (pb_size_t i = 0; i < L.videos_count; i++)
        assert_int_not_equal(L.videos[i].id, priv);
    list_release();
    pb_release(lagoon_v1_ListVideoSharesResponse_fields, &S);
}

static void test_share_errors(void **state)
{
    (void)state;
    uint64_t id = create(ann_tok, "to share", 0);
    assert_refused(share(ann_tok, id, ann), LAGOON_INVALID_ARGUMENT, "user_id");
    assert_refused(share(root_tok, id, ann), LAGOON_INVALID_ARGUMENT, "user_id"); /* the owner */
    assert_refused(share(ann_tok, id, 999999), LAGOON_NOT_FOUND, "user_id");
    assert_refused(share(ann_tok, id + 100000, bob), LAGOON_NOT_FOUND, "video_id");
    assert_int_equal(share(ann_tok, id, bob), LAGOON_OK);
    assert_refused(share(ann_tok, id, bob), LAGOON_ALREADY_EXISTS, "user_id");
    assert_non_null(strstr(lagoon_last_error(C)->detail.violations[0].description,
                           "the video is already shared with this user"));
    char tok[65];
    uint64_t gus = test_verified_user(T, C, "gus", lagoon_v1_Role_STUDENT, tok);
    assert_int_equal(set_active(gus, 0), LAGOON_OK);
    assert_refused(share(ann_tok, id, gus), LAGOON_NOT_FOUND, "user_id");
    assert_int_equal(set_active(gus, 1), LAGOON_OK);
    assert_int_equal(share(ann_tok, id, gus), LAGOON_OK);
    assert_int_equal(get(ann_tok, id), LAGOON_OK);
    assert_int_equal(V.share_count, 2);
}

/* ListSharedWithMe: newest share first, in both kinds of pages; a deleted video leaves it. */
static void test_list_shared_with_me(void **state)
{
    (void)state;
    char tok[65];
    uint64_t hal = test_verified_user(T, C, "hal", lagoon_v1_Role_STUDENT, tok);
    uint64_t a = create(ann_tok, "for hal a", 0);
    uint64_t b = create(bob_tok, "for hal b", 1);
    uint64_t c = create(ann_tok, "for hal c", 0);
    assert_int_equal(share(ann_tok, c, hal), LAGOON_OK); /* shared first, though newest */
    test_clock_advance(T, 1000);
    assert_int_equal(share(bob_tok, b, hal), LAGOON_OK);
    test_clock_advance(T, 1000);
    assert_int_equal(share(ann_tok, a, hal), LAGOON_OK);
    uint64_t ids[3];
    assert_int_equal(list_shared_with_me(tok, 10, NULL, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 3);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], b);
    assert_int_equal(ids[2], c);
    assert_int_equal(list_shared_with_me(tok, 2, NULL, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 2);
    static char next[801];
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_int_equal(list_shared_with_me(tok, 2, next, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 1);
    assert_int_equal(ids[0], c);
    assert_int_equal(list_shared_with_me(tok, 1, NULL, 2), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 1);
    assert_int_equal(ids[0], b);
    assert_int_equal(del(ann_tok, a), LAGOON_OK);
    assert_int_equal(list_shared_with_me(tok, 10, NULL, 0), LAGOON_OK);
    assert_int_equal(list_ids(ids, 3), 2);
    assert_int_equal(ids[0], b);
    assert_int_equal(list_shared_with_me(cat_tok, 100, NULL, 0), LAGOON_OK);
    for (pb_size_t i = 0; i < L.videos_count; i++)
        assert_true(L.videos[i].id != b && L.videos[i].id != c);
    assert_refused(list_shared_with_me(NULL, 10, NULL, 0), LAGOON_UNAUTHENTICATED, NULL);
    list_release();
}

/* Users and shares written straight into the store, to reach the share limit. */
typedef struct seed_shares {
    uint64_t video;
    int from, n;     /* users seed<from>..seed<from+n-1>, created and shared with */
    uint32_t count;  /* the video's share_count afterwards */
} seed_shares;

static int seed_shares_write(store_txn *t, void *arg, store_error *err)
{
    seed_shares *ss = arg;
    for (int i = ss->from; i < ss->from + ss->n; i++) {
        lagoon_v1_User u = lagoon_v1_User_init_zero;
        snprintf(u.email, sizeof(u.email), "seed%d@example.com", i);
        snprintf(u.username, sizeof(u.username), "seed%d", i);
        u.role = lagoon_v1_Role_STUDENT;
        u.active = true;
        int st = store_insert(t, &lagoon_table_users, &u, NULL, err);
        lagoon_v1_VideoShare sh = {.video_id = ss->video, .user_id = u.id, .created_at = 1};
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_video_shares, &sh, NULL, err);
        if (st != LAGOON_OK)
            return st;
    }
    lagoon_v1_Video *v = malloc(sizeof(*v));
    int st = store_get(t, &lagoon_table_videos, ss->video, v, err);
    if (st == LAGOON_OK) {
        v->share_count = ss->count;
        st = store_update(t, &lagoon_table_videos, v, err);
    }
    free(v);
    return st;
}

static void test_share_limit(void **state)
{
    (void)state;
    uint64_t id = create(ann_tok, "popular", 0);
    store_error err;
    /* 999 shares, though the count says 1000 (as after accounts were deleted): recounted. */
    seed_shares ss = {id, 0, 999, 1000};
    assert_int_equal(store_write(T->app->db, seed_shares_write, &ss, &err), LAGOON_OK);
    assert_int_equal(share(ann_tok, id, bob), LAGOON_OK); /* the 1000th (VIDEOS_SHARES_MAX) */
    assert_int_equal(get(ann_tok, id), LAGOON_OK);
    assert_int_equal(V.share_count, 1000);
    assert_refused(share(ann_tok, id, cat), LAGOON_FAILED_PRECONDITION, NULL);
    assert_int_equal(unshare(ann_tok, id, bob), LAGOON_OK);
    assert_int_equal(share(ann_tok, id, cat), LAGOON_OK);
    assert_int_equal(rows_of(&lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, id), 1000);
    /* Deleting the video deletes its shares. */
    assert_int_equal(del(ann_tok, id), LAGOON_OK);
    assert_int_equal(rows_of(&lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, id), 0);
}

/* Delete and Unshare retried with the same key are OK again, not NOT_FOUND. */
static void test_delete_unshare_retried(void **state)
{
    (void)state;
    uint64_t id = create(ann_tok, "retried", 0);
    assert_int_equal(share(ann_tok, id, bob), LAGOON_OK);
    lagoon_set_idempotency_key(C, "unshare-key-1");
    assert_int_equal(unshare(ann_tok, id, bob), LAGOON_OK);
    lagoon_set_idempotency_key(C, "unshare-key-1");
    assert_int_equal(unshare(ann_tok, id, bob), LAGOON_OK);
    assert_refused(unshare(ann_tok, id, bob), LAGOON_NOT_FOUND, "user_id"); /* without the key */
    lagoon_set_idempotency_key(C, "delete-key-1");
    assert_int_equal(del(ann_tok, id), LAGOON_OK);
    lagoon_set_idempotency_key(C, "delete-key-1");
    assert_int_equal(del(ann_tok, id), LAGOON_OK);
    assert_refused(del(ann_tok, id), LAGOON_NOT_FOUND, "video_id");
}

/* ---- the comments' followers ----------------------------------------------------------------- */

static int follow(const char *tok, uint64_t video)
{
    lagoon_set_token(C, tok);
    lagoon_v1_FollowVideoRequest r = {.video_id = video};
    lagoon_v1_CommentsEmpty e;
    return lagoon_Comments_Follow(C, &r, &e);
}

/* Members of the video's topic (Comments/Follow). */
static int followers(uint64_t video)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)lagoon_v1_Topic_Kind_VIDEO);
    store_key_u64(&prefix, video);
    int n = 0;
    scan_prefix(&lagoon_table_topic_members, lagoon_index_topic_members_by_topic, &prefix, count_row, &n);
    return n;
}

/* Unshare, made private and Delete end the follows of those who no longer read the video. */
static void test_followers_lose_the_video(void **state)
{
    (void)state;
    uint64_t pub = create(ann_tok, "followed public", 1);
    assert_int_equal(follow(cat_tok, pub), LAGOON_OK);
    assert_int_equal(follow(ann_tok, pub), LAGOON_OK);
    assert_int_equal(followers(pub), 2);
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = pub;
    r.has_is_public = true;
    assert_int_equal(update(ann_tok, &r), LAGOON_OK); /* made private */
    assert_int_equal(followers(pub), 1);              /* the owner's stays */

    uint64_t priv = create(ann_tok, "followed private", 0);
    assert_int_equal(share(ann_tok, priv, bob), LAGOON_OK);
    assert_int_equal(share(ann_tok, priv, cat), LAGOON_OK);
    assert_int_equal(follow(bob_tok, priv), LAGOON_OK);
    assert_int_equal(follow(cat_tok, priv), LAGOON_OK);
    assert_int_equal(followers(priv), 2);
    assert_int_equal(unshare(ann_tok, priv, bob), LAGOON_OK);
    assert_int_equal(followers(priv), 1); /* cat still reads it */
    assert_int_equal(del(ann_tok, priv), LAGOON_OK);
    assert_int_equal(followers(priv), 0);
    assert_int_equal(del(ann_tok, pub), LAGOON_OK);
    assert_int_equal(followers(pub), 0);
}

/* ---- RecordView -------------------------------------------------------------------------------- */

static lagoon_v1_RecordViewResponse R;

static int view(const char *tok, uint64_t video, uint32_t watched)
{
    lagoon_set_token(C, tok);
    lagoon_v1_RecordViewRequest r = {.video_id = video, .watched_seconds = watched};
    memset(&R, 0, sizeof(R));
    return lagoon_Videos_RecordView(C, &r, &R);
}

/* Counted: the call succeeded, counted the view, and the count is n. */
static void assert_view(int st, int counted, uint64_t n)
{
    if (st != LAGOON_OK)
        fail_msg("RecordView: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    assert_int_equal(R.counted, counted);
    assert_int_equal(R.view_count, n);
}

static uint64_t create_lasting(const char *tok, uint32_t seconds, int pub)
{
    static lagoon_v1_CreateVideoRequest r;
    video_request(&r, "timed", NULL, NULL, pub);
    r.duration_seconds = seconds;
    lagoon_set_token(C, tok);
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
    return V.id;
}

static void test_view_rules(void **state)
{
    (void)state;
    uint64_t id = create_lasting(ann_tok, 300, 1); /* long: 10 s count */
    assert_view(view(cat_tok, id, 9), 0, 0);
    assert_view(view(cat_tok, id, 10), 1, 1);
    assert_view(view(cat_tok, id, 300), 0, 1); /* once an hour */
    test_clock_advance(T, VIDEOS_TEST_HOUR_MS - 1);
    assert_view(view(cat_tok, id, 300), 0, 1);
    test_clock_advance(T, 1);
    assert_view(view(cat_tok, id, 10), 1, 2); /* an hour after the last counted one */
    assert_view(view(bob_tok, id, 10), 1, 3); /* per user */
    assert_view(view(ann_tok, id, 10), 1, 4);
    assert_int_equal(get(cat_tok, id), LAGOON_OK); /* readable at once */
    assert_int_equal(V.view_count, 4);

    uint64_t shrt = create_lasting(ann_tok, 7, 1); /* shorter than 20 s: half of it (3.5 s) */
    assert_view(view(cat_tok, shrt, 3), 0, 0);
    assert_view(view(cat_tok, shrt, 4), 1, 1);
    uint64_t nineteen = create_lasting(ann_tok, 19, 1);
    assert_view(view(cat_tok, nineteen, 9), 0, 0);
    assert_view(view(cat_tok, nineteen, 10), 1, 1);
    uint64_t unknown = create_lasting(ann_tok, 0, 1); /* unknown duration: 10 s */
    assert_view(view(cat_tok, unknown, 9), 0, 0);
    assert_view(view(cat_tok, unknown, 10), 1, 1);
    assert_refused(view(cat_tok, id, 86401), LAGOON_INVALID_ARGUMENT, "watched_seconds");
}

static void test_view_access(void **state)
{
    (void)state;
    uint64_t priv = create_lasting(ann_tok, 60, 0);
    assert_refused(view(cat_tok, priv, 30), LAGOON_NOT_FOUND, "video_id");
    assert_refused(view(bob_tok, priv, 30), LAGOON_NOT_FOUND, "video_id");
    assert_refused(view(NULL, priv, 30), LAGOON_UNAUTHENTICATED, NULL);
    assert_int_equal(share(ann_tok, priv, bob), LAGOON_OK);
    assert_view(view(bob_tok, priv, 30), 1, 1);
    assert_view(view(root_tok, priv, 30), 1, 2);
    assert_view(view(ann_tok, priv, 30), 1, 3);
    assert_int_equal(rows_of(&lagoon_table_video_views, lagoon_index_video_views_by_video_user, priv), 3);
    /* Deleting the video deletes its views and shares. */
    assert_int_equal(del(ann_tok, priv), LAGOON_OK);
    assert_int_equal(rows_of(&lagoon_table_video_views, lagoon_index_video_views_by_video_user, priv), 0);
    assert_int_equal(rows_of(&lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, priv), 0);
    assert_refused(view(ann_tok, priv, 30), LAGOON_NOT_FOUND, "video_id");
}

/* ---- Search ------------------------------------------------------------------------------------- */

static int search(const char *tok, const char *query, uint32_t size, const char *token)
{
    list_release();
    lagoon_set_token(C, tok);
    static lagoon_v1_SearchVideosRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.query, sizeof(r.query), "%s", query);
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    return lagoon_Videos_Search(C, &r, &L);
}

/* The number of videos the user of tok finds with query (one page of 100), or -1. */
static int found(const char *tok, const char *query)
{
    if (search(tok, query, 100, NULL) != LAGOON_OK)
        return -1;
    return (int)L.videos_count;
}

static void test_search_words(void **state)
{
    (void)state;
    uint64_t a = create_full(bob_tok, "Xylophonic Rhapsody, take 2", "Qwertzuiop", "\xc3\x89mile \xc3\x85ngstr\xc3\xb6m", 1);
    assert_int_equal(found(cat_tok, "xylo"), 1);
    assert_int_equal(L.videos[0].id, a);
    assert_int_equal(found(cat_tok, "XYLOPHONIC"), 1);      /* ASCII case folded */
    assert_int_equal(found(cat_tok, "xylophonicx"), 0);     /* longer than the word */
    assert_int_equal(found(cat_tok, "ylo"), 0);             /* not the start of a word */
    assert_int_equal(found(cat_tok, "rhap xylo"), 1);       /* every word, in any order */
    assert_int_equal(found(cat_tok, "xylo rhap qwe take 2"), 1);
    assert_int_equal(found(cat_tok, "xylo bach"), 0);
    assert_int_equal(found(cat_tok, "  qwertz!!"), 1);      /* the piece; punctuation separates */
    assert_int_equal(found(cat_tok, "\xc3\x85ngs"), 1);     /* the composer, bytes >= 0x80 as they are */
    assert_int_equal(found(cat_tok, "\xc3\xa5ngs"), 0);     /* no folding beyond ASCII */
    assert_int_equal(found(cat_tok, "\xc3\x89mi xylophonic"), 1);
    assert_int_equal(found(cat_tok, "zzzunmatched"), 0);
    assert_string_equal(L.next_page_token, "");

    /* A word longer than the index's prefixes (VIDEOS_PREFIX_MAX, 32 bytes) is checked whole. */
    create(bob_tok, "Supercalifragilisticexpialidociousness", 1);
    assert_int_equal(found(cat_tok, "supercalifragilisticexpialidociousness"), 1);
    assert_int_equal(found(cat_tok, "supercalifragilisticexpialidociousnesses"), 0);
    assert_int_equal(found(cat_tok, "supercalifragilisticexpialidoci"), 1);

    /* The words follow an Update of the text. */
    assert_int_equal(retitle(bob_tok, a, "Vibraphonic"), LAGOON_OK);
    assert_int_equal(found(cat_tok, "xylo"), 0);
    assert_int_equal(found(cat_tok, "vibra qwertz"), 1);
    assert_int_equal(del(bob_tok, a), LAGOON_OK);
    assert_int_equal(found(cat_tok, "vibra"), 0);

    /* Bad queries. */
    assert_refused(search(cat_tok, "!!! ...", 10, NULL), LAGOON_INVALID_ARGUMENT, "query");
    assert_refused(search(cat_tok, "a b c d e f g h i", 10, NULL), LAGOON_INVALID_ARGUMENT, "query");
    assert_int_equal(search(cat_tok, "a b c d e f g h", 10, NULL), LAGOON_OK); /* 8 words */
    assert_refused(search(cat_tok, "", 10, NULL), LAGOON_INVALID_ARGUMENT, "query");
    assert_refused(search(cat_tok, "two\nlines", 10, NULL), LAGOON_INVALID_ARGUMENT, "query");
    static char longq[801];
    memset(longq, 'a', 201); /* 201 characters: one past the rule */
    longq[201] = '\0';
    assert_refused(search(cat_tok, longq, 10, NULL), LAGOON_INVALID_ARGUMENT, "query");
    for (int i = 0; i < 200; i++) /* 200 characters, 400 bytes, one word longer than any prefix */
        memcpy(longq + 2 * i, "\xc3\xa9", 2);
    longq[400] = '\0';
    assert_int_equal(search(cat_tok, longq, 10, NULL), LAGOON_OK);
    assert_int_equal(L.videos_count, 0);
    assert_refused(search(cat_tok, "xylo", 101, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    assert_refused(search(cat_tok, "xylo", 10, "forged"), LAGOON_INVALID_ARGUMENT, "page_token");
    assert_refused(search(NULL, "xylo", 10, NULL), LAGOON_UNAUTHENTICATED, NULL);
    list_release();
}

static void test_search_visibility(void **state)
{
    (void)state;
    uint64_t priv = create(ann_tok, "Hiddenword private", 0);
    uint64_t pub = create(ann_tok, "Hiddenword public", 1);
    assert_int_equal(found(ann_tok, "hiddenword"), 2);
    assert_int_equal(found(root_tok, "hiddenword"), 2);
    assert_int_equal(found(cat_tok, "hiddenword"), 1);
    assert_int_equal(L.videos[0].id, pub);
    assert_int_equal(found(bob_tok, "hiddenword"), 1);
    assert_int_equal(share(ann_tok, priv, bob), LAGOON_OK);
    assert_int_equal(found(bob_tok, "hiddenword"), 2);
    assert_int_equal(unshare(ann_tok, priv, bob), LAGOON_OK);
    assert_int_equal(found(bob_tok, "hiddenword priv"), 0);
    list_release();
}

static void test_search_pages(void **state)
{
    (void)state;
    uint64_t v[5];
    for (int i = 0; i < 5; i++) {
        test_clock_advance(T, 1000);
        v[i] = create(i % 2 ? ann_tok : bob_tok, "Pagingword", 1);
    }
    uint64_t ids[5];
    static char next[801];
    assert_int_equal(search(cat_tok, "pagingword", 2, NULL), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], v[4]); /* newest first */
    assert_int_equal(ids[1], v[3]);
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_true(next[0] != '\0');
    assert_int_equal(search(cat_tok, "pagingword", 2, next), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 2);
    assert_int_equal(ids[0], v[2]);
    assert_int_equal(ids[1], v[1]);
    /* A token belongs to its query. */
    assert_refused(search(cat_tok, "other", 2, next), LAGOON_INVALID_ARGUMENT, "page_token");
    assert_int_equal(search(cat_tok, "pagingword", 2, next), LAGOON_OK);
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_int_equal(search(cat_tok, "pagingword", 2, next), LAGOON_OK);
    assert_int_equal(list_ids(ids, 5), 1);
    assert_int_equal(ids[0], v[0]);
    assert_string_equal(L.next_page_token, "");
    list_release();
}

/* 1 000 newer private videos of ann's with the word, written straight into the store. */
static int seed_private_words(store_txn *t, void *arg, store_error *err)
{
    const int64_t *at = arg;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    int st = v ? LAGOON_OK : LAGOON_RESOURCE_EXHAUSTED;
    for (int i = 0; i < 1000 && st == LAGOON_OK; i++) {
        memset(v, 0, sizeof(*v));
        v->owner_id = ann;
        snprintf(v->title, sizeof(v->title), "budgetword");
        snprintf(v->url, sizeof(v->url), "https://example.com/v");
        v->created_at = *at + i;
        st = store_insert(t, &lagoon_table_videos, v, NULL, err);
        lagoon_v1_VideoWord w = {.video_id = v->id, .created_at = v->created_at};
        snprintf(w.prefix, sizeof(w.prefix), "budgetword");
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_video_words, &w, NULL, err);
    }
    free(v);
    return st;
}

/* A call looks at no more than VIDEOS_SEARCH_SCAN_MAX (1 000) candidates: behind 1 000 that
 * cat may not read, the first page is empty with a token, and the next one finds the video. */
static void test_search_scan_budget(void **state)
{
    (void)state;
    uint64_t pub = create(bob_tok, "Budgetword", 1);
    int64_t at = T->clock_ms + 1;
    store_error err;
    assert_int_equal(store_write(T->app->db, seed_private_words, &at, &err), LAGOON_OK);
    assert_int_equal(search(cat_tok, "budgetword", 10, NULL), LAGOON_OK);
    assert_int_equal(L.videos_count, 0);
    static char next[801];
    snprintf(next, sizeof(next), "%s", L.next_page_token);
    assert_true(next[0] != '\0');
    assert_int_equal(search(cat_tok, "budgetword", 10, next), LAGOON_OK);
    assert_int_equal(L.videos_count, 1);
    assert_int_equal(L.videos[0].id, pub);
    assert_string_equal(L.next_page_token, "");
    /* The owner's first page is full: its candidates match. */
    assert_int_equal(search(ann_tok, "budgetword", 10, NULL), LAGOON_OK);
    assert_int_equal(L.videos_count, 10);
    list_release();
}

/* The methods not covered by the matrices above, without a token. */
static void test_anonymous(void **state)
{
    (void)state;
    static lagoon_v1_CreateVideoRequest r;
    video_request(&r, "anonymous", NULL, NULL, 1);
    lagoon_set_token(C, NULL);
    assert_refused(lagoon_Videos_Create(C, &r, &V), LAGOON_UNAUTHENTICATED, NULL);
    assert_refused(list_mine(NULL, 10, NULL, 0, 0), LAGOON_UNAUTHENTICATED, NULL);
    assert_refused(search(NULL, "anonymous", 10, NULL), LAGOON_UNAUTHENTICATED, NULL);
    list_release();
}

/* The video's word rows with an id at most max_id, and the highest id among them. */
typedef struct old_rows {
    uint64_t max_id;
    int n;
    uint64_t highest;
} old_rows;

static int count_old(void *arg, uint64_t id, const void *row)
{
    (void)row;
    old_rows *o = arg;
    o->n += id <= o->max_id;
    if (id > o->highest)
        o->highest = id;
    return LAGOON_OK;
}

static old_rows words_up_to(uint64_t video, uint64_t max_id)
{
    old_rows o = {max_id, 0, 0};
    scan_rows(&lagoon_table_video_words, lagoon_index_video_words_by_video, video, count_old, &o);
    return o;
}

/* An Update that changes one word rewrites that word's rows only: the others keep theirs. */
static void test_update_moves_changed_words(void **state)
{
    (void)state;
    uint64_t id = create(ann_tok, "Alpha beta", 0);
    old_rows before = words_up_to(id, UINT64_MAX);
    assert_int_equal(before.n, 9); /* a..alpha, b..beta */
    assert_int_equal(retitle(ann_tok, id, "alpha Gamma"), LAGOON_OK);
    assert_int_equal(words_of(id), 10);                       /* alpha's 5, gamma's 5 */
    assert_int_equal(words_up_to(id, before.highest).n, 5);  /* alpha's are the rows of before */
    assert_int_equal(found(cat_tok, "gamm"), 0);              /* private */
    assert_int_equal(found(ann_tok, "gamm alp"), 1);
    assert_int_equal(found(ann_tok, "beta alpha"), 0);
    list_release();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_create_bounds),
        cmocka_unit_test(test_get_matrix),
        cmocka_unit_test(test_update_present_fields),
        cmocka_unit_test(test_update_delete_matrix),
        cmocka_unit_test(test_update_idempotent),
        cmocka_unit_test(test_delete_cascades_words),
        cmocka_unit_test(test_owner_account_deleted),
        cmocka_unit_test(test_list_mine_pages),
        cmocka_unit_test(test_list_by_user_visibility),
        cmocka_unit_test(test_list_by_user_hides_private_ones),
        cmocka_unit_test(test_share_again_and_create_retried),
        cmocka_unit_test(test_list_public),
        cmocka_unit_test(test_share_access_and_notification),
        cmocka_unit_test(test_share_errors),
        cmocka_unit_test(test_list_shared_with_me),
        cmocka_unit_test(test_share_limit),
        cmocka_unit_test(test_delete_unshare_retried),
        cmocka_unit_test(test_followers_lose_the_video),
        cmocka_unit_test(test_view_rules),
        cmocka_unit_test(test_view_access),
        cmocka_unit_test(test_search_words),
        cmocka_unit_test(test_search_visibility),
        cmocka_unit_test(test_search_pages),
        cmocka_unit_test(test_search_scan_budget),
        cmocka_unit_test(test_anonymous),
        cmocka_unit_test(test_update_moves_changed_words),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
