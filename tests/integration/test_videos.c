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
    store_error err;
    if (account_create_admin(T->app, "root@example.com", "root", "an admin passphrase", &root, &err) != LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    lagoon_set_token(C, NULL);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "root");
    snprintf(lr.password, sizeof(lr.password), "an admin passphrase");
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Login(C, &lr, &tp), LAGOON_OK);
    snprintf(root_tok, sizeof(root_tok), "%s", tp.access_token);
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

static int has_violation(const char *field)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(C)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0)
            return 1;
    return 0;
}

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_create_bounds),
        cmocka_unit_test(test_get_matrix),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
