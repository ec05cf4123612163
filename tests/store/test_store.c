/* The store on real LMDB files in temporary directories: keys, every index kind, updates,
 * relations, pagination, group commit, map growth, schema versions. Crash, verify and backup
 * tests are in test_store_admin.c. */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "store_test_util.h"

typedef struct fixture {
    char *dir;
    store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = tmpdir_make();
    f->s = open_test_store(f->dir, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    store_close(f->s);
    tmpdir_remove(f->dir);
    free(f);
    return 0;
}

static int key_cmp(const store_key *a, const store_key *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->buf, b->buf, n);
    if (c)
        return c;
    return (a->len > b->len) - (a->len < b->len);
}

/* ---- Key encodings ------------------------------------------------------------------------ */

static void test_key_order_integers(void **state)
{
    (void)state;
    static const int64_t v[] = {INT64_MIN, -1000000, -2, -1, 0, 1, 2, 255, 256, 1000000, INT64_MAX};
    size_t n = sizeof(v) / sizeof(v[0]);
    for (size_t i = 0; i + 1 < n; i++) {
        store_key a, b;
        store_key_reset(&a);
        store_key_reset(&b);
        store_key_i64(&a, v[i]);
        store_key_i64(&b, v[i + 1]);
        assert_true(key_cmp(&a, &b) < 0);
        store_key_reset(&a);
        store_key_reset(&b);
        store_key_i64_desc(&a, v[i]);
        store_key_i64_desc(&b, v[i + 1]);
        assert_true(key_cmp(&a, &b) > 0);
        store_key_reset(&a);
        store_key_reset(&b);
        store_key_u64(&a, (uint64_t)v[i] + (1ull << 63));
        store_key_u64(&b, (uint64_t)v[i + 1] + (1ull << 63));
        assert_true(key_cmp(&a, &b) < 0);
    }
}

static void test_key_strings(void **state)
{
    (void)state;
    /* Byte strings in sorted order, embedded zeros included: their keys sort the same way. */
    static const struct {
        const char *p;
        size_t n;
    } s[] = {{"", 0}, {"\0", 1}, {"\0\0", 2}, {"\0\x01", 2}, {"a", 1},
             {"a\0", 2}, {"a\x01", 2}, {"ab", 2}, {"b", 1}, {"\xff", 1}};
    size_t n = sizeof(s) / sizeof(s[0]);
    for (size_t i = 0; i + 1 < n; i++) {
        store_key a, b;
        store_key_reset(&a);
        store_key_reset(&b);
        store_key_bytes(&a, s[i].p, s[i].n);
        store_key_bytes(&b, s[i + 1].p, s[i + 1].n);
        assert_true(key_cmp(&a, &b) < 0);
    }
    /* Composite keys cannot be confused by moving bytes between components. */
    store_key a, b;
    store_key_reset(&a);
    store_key_str(&a, "ab");
    store_key_str(&a, "c");
    store_key_reset(&b);
    store_key_str(&b, "abc");
    store_key_str(&b, "");
    assert_int_not_equal(key_cmp(&a, &b), 0);
    /* Folding makes case-variants equal and leaves other bytes alone. */
    store_key_reset(&a);
    store_key_reset(&b);
    store_key_str_fold(&a, "Alice@Example.COM");
    store_key_str_fold(&b, "alice@example.com");
    assert_int_equal(key_cmp(&a, &b), 0);
    store_key_reset(&a);
    store_key_reset(&b);
    store_key_str_fold(&a, "\xc3\x89");
    store_key_str_fold(&b, "\xc3\xa9");
    assert_int_not_equal(key_cmp(&a, &b), 0);
}

static void test_key_overflow(void **state)
{
    (void)state;
    static char big[STORE_KEY_MAX + 10];
    memset(big, 'x', sizeof(big) - 1);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, 1);
    store_key_str(&k, big);
    assert_int_equal(k.overflow, 1);
    assert_true(k.len <= STORE_KEY_MAX);
    store_key_u64(&k, 2);
    assert_int_equal(k.overflow, 1);
}

/* ---- Unique, sparse and multi indexes ---------------------------------------------------------- */

static void test_unique_index(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t alice, bob, x;
    assert_int_equal(add_user(f->s, "Alice", "alice@example.com", 1, &alice, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "bob", NULL, 2, &bob, &err), LAGOON_OK);
    assert_true(bob > alice);
    /* Case-insensitive name: a conflict names the field and leaves nothing. */
    assert_int_equal(add_user(f->s, "ALICE", NULL, 3, &x, &err), LAGOON_ALREADY_EXISTS);
    assert_string_equal(err.field, "name");
    assert_int_equal(err.code, LAGOON_ALREADY_EXISTS);
    assert_int_equal(add_user(f->s, "carol", "Alice@Example.com", 3, &x, &err),
                     LAGOON_ALREADY_EXISTS);
    assert_string_equal(err.field, "email");
    /* Sparse: two users without an email are fine. */
    assert_int_equal(add_user(f->s, "dave", NULL, 4, &x, &err), LAGOON_OK);

    store_txn *t;
    assert_int_equal(store_read_begin(f->s, &t, &err), LAGOON_OK);
    store_key k;
    store_key_reset(&k);
    store_key_str_fold(&k, "aLiCe");
    tuser u;
    uint64_t id = 0;
    assert_int_equal(store_get_by(t, &lagoon_test_table_users, lagoon_test_index_users_by_name, &k, &id, &u, &err),
                     LAGOON_OK);
    assert_int_equal(id, alice);
    assert_string_equal(u.name, "Alice");
    store_key_reset(&k);
    store_key_str_fold(&k, "carol");
    assert_int_equal(store_get_by(t, &lagoon_test_table_users, lagoon_test_index_users_by_name, &k, &id, NULL, &err),
                     LAGOON_NOT_FOUND);
    store_read_end(t);

    uint64_t ids[16];
    store_query q = {.table = &lagoon_test_table_users};
    assert_int_equal(scan_all(f->s, &q, ids, 16), 3); /* the failed inserts left no row */
}

static void test_multi_index_newest_first(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t u1, u2, v;
    assert_int_equal(add_user(f->s, "u1", NULL, 1, &u1, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "u2", NULL, 1, &u2, &err), LAGOON_OK);
    static const int64_t created[] = {50, -10, 300, 300, 7, 0};
    uint64_t vid[6];
    for (int i = 0; i < 6; i++)
        assert_int_equal(add_video(f->s, u1, created[i], 0, &vid[i], &err), LAGOON_OK);
    assert_int_equal(add_video(f->s, u2, 1000, 0, &v, &err), LAGOON_OK);

    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, u1);
    store_query q = {.table = &lagoon_test_table_videos, .index = lagoon_test_index_videos_by_owner,
                     .prefix = p.buf, .prefix_len = p.len};
    uint64_t ids[16];
    assert_int_equal(scan_all(f->s, &q, ids, 16), 6);
    /* Newest first; equal times by id. */
    const uint64_t want[] = {vid[2], vid[3], vid[0], vid[4], vid[5], vid[1]};
    for (int i = 0; i < 6; i++)
        assert_int_equal(ids[i], want[i]);
    q.reverse = 1;
    assert_int_equal(scan_all(f->s, &q, ids, 16), 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(ids[i], want[5 - i]);
    /* From a start key: videos of u1 at time 7 or older. */
    store_key st = p;
    store_key_i64_desc(&st, 7);
    q.reverse = 0;
    q.start = st.buf;
    q.start_len = st.len;
    assert_int_equal(scan_all(f->s, &q, ids, 16), 3);
    assert_int_equal(ids[0], vid[4]);
    /* Backward from a partial start key: its own entries are included. */
    store_key_reset(&st);
    st = p;
    store_key_i64_desc(&st, 50);
    q.start = st.buf;
    q.start_len = st.len;
    q.reverse = 1;
    assert_int_equal(scan_all(f->s, &q, ids, 16), 3);
    assert_int_equal(ids[0], vid[0]);
    assert_int_equal(ids[1], vid[3]);
    assert_int_equal(ids[2], vid[2]);
    /* A start outside the prefix is refused. */
    store_key_reset(&st);
    store_key_u64(&st, u2);
    q.start = st.buf;
    q.start_len = st.len;
    store_txn *t;
    store_error e2;
    store_page page;
    assert_int_equal(store_read_begin(f->s, &t, &e2), LAGOON_OK);
    assert_int_equal(store_scan(t, &q, NULL, NULL, &page, &e2), LAGOON_INVALID_ARGUMENT);
    store_read_end(t);
}

static void test_composite_join_index(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t u1, u2, v1, v2, sh;
    assert_int_equal(add_user(f->s, "u1", NULL, 1, &u1, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "u2", NULL, 1, &u2, &err), LAGOON_OK);
    assert_int_equal(add_video(f->s, u1, 1, 0, &v1, &err), LAGOON_OK);
    assert_int_equal(add_video(f->s, u1, 2, 0, &v2, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v1, u2, &sh, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v2, u2, &sh, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v1, u1, &sh, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v1, u2, &sh, &err), LAGOON_ALREADY_EXISTS);
    assert_string_equal(err.field, "user_id");
    assert_int_equal(add_share(f->s, v1, 999, &sh, &err), LAGOON_NOT_FOUND);
    assert_string_equal(err.field, "user_id");

    uint64_t ids[8];
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, v1);
    store_query q = {.table = &lagoon_test_table_shares, .index = lagoon_test_index_shares_by_video_user,
                     .prefix = p.buf, .prefix_len = p.len};
    assert_int_equal(scan_all(f->s, &q, ids, 8), 2); /* who shared v1 */
    store_key_reset(&p);
    store_key_u64(&p, u2);
    q.index = lagoon_test_index_shares_by_user;
    q.prefix = p.buf;
    q.prefix_len = p.len;
    assert_int_equal(scan_all(f->s, &q, ids, 8), 2); /* what u2 shared */
}

/* ---- Updates ------------------------------------------------------------------------------ */

typedef struct upd_arg {
    const store_table *tab;
    void *row;
} upd_arg;

static int w_update(store_txn *t, void *a, store_error *err)
{
    upd_arg *u = a;
    return store_update(t, u->tab, u->row, err);
}

static int lookup_name(store *s, const char *name, uint64_t *id)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(s, &t, &err), LAGOON_OK);
    store_key k;
    store_key_reset(&k);
    store_key_str_fold(&k, name);
    int st = store_get_by(t, &lagoon_test_table_users, lagoon_test_index_users_by_name, &k, id, NULL, &err);
    store_read_end(t);
    return st;
}

static void test_update_moves_entries(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t a, b, u3, v;
    assert_int_equal(add_user(f->s, "anna", "anna@x", 1, &a, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "ben", NULL, 2, &b, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "cleo", NULL, 3, &u3, &err), LAGOON_OK);
    assert_int_equal(add_video(f->s, a, 10, 0, &v, &err), LAGOON_OK);

    tuser u = lagoon_test_v1_TUser_init_zero;
    u.id = a;
    snprintf(u.name, sizeof(u.name), "%s", "Annabel");
    snprintf(u.email, sizeof(u.email), "%s", ""); /* leaves the sparse index */
    u.created_at = 1;
    upd_arg ua = {&lagoon_test_table_users, &u};
    assert_int_equal(store_write(f->s, w_update, &ua, &err), LAGOON_OK);
    uint64_t id;
    assert_int_equal(lookup_name(f->s, "anna", &id), LAGOON_NOT_FOUND);
    assert_int_equal(lookup_name(f->s, "annabel", &id), LAGOON_OK);
    assert_int_equal(id, a);
    /* The old email is free again. */
    uint64_t d;
    assert_int_equal(add_user(f->s, "dora", "ANNA@x", 4, &d, &err), LAGOON_OK);

    /* Moving onto a taken name fails and changes nothing. */
    snprintf(u.name, sizeof(u.name), "%s", "BEN");
    assert_int_equal(store_write(f->s, w_update, &ua, &err), LAGOON_ALREADY_EXISTS);
    assert_string_equal(err.field, "name");
    assert_int_equal(lookup_name(f->s, "annabel", &id), LAGOON_OK);
    assert_int_equal(id, a);
    assert_int_equal(lookup_name(f->s, "ben", &id), LAGOON_OK);
    assert_int_equal(id, b);
    /* Same name, other fields changed: keeps its own unique entry. */
    snprintf(u.name, sizeof(u.name), "%s", "Annabel");
    u.created_at = 99;
    assert_int_equal(store_write(f->s, w_update, &ua, &err), LAGOON_OK);

    /* A video changing owner moves between owners' lists. */
    tvideo vv = lagoon_test_v1_TVideo_init_zero;
    vv.id = v;
    vv.owner_id = b;
    vv.created_at = 10;
    upd_arg va = {&lagoon_test_table_videos, &vv};
    assert_int_equal(store_write(f->s, w_update, &va, &err), LAGOON_OK);
    uint64_t ids[4];
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, a);
    store_query q = {.table = &lagoon_test_table_videos, .index = lagoon_test_index_videos_by_owner,
                     .prefix = p.buf, .prefix_len = p.len};
    assert_int_equal(scan_all(f->s, &q, ids, 4), 0);
    store_key_reset(&p);
    store_key_u64(&p, b);
    assert_int_equal(scan_all(f->s, &q, ids, 4), 1);
    assert_int_equal(ids[0], v);
    /* ... but not to a user that does not exist. */
    vv.owner_id = 12345;
    assert_int_equal(store_write(f->s, w_update, &va, &err), LAGOON_NOT_FOUND);
    assert_string_equal(err.field, "owner_id");
    /* Updating a row that does not exist. */
    u.id = 777;
    assert_int_equal(store_write(f->s, w_update, &ua, &err), LAGOON_NOT_FOUND);

    uint64_t problems = 99;
    assert_int_equal(store_verify(f->s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
}

/* One write inserting a row and updating it again and again (the store then knows the stored
 * entries without reading the row back): every index entry moves each time, a failed update and
 * a delete in between change nothing of it, a changed foreign key is still checked. */
typedef struct rewrite_ids {
    uint64_t user, other, video;
    int conflict, bad_owner; /* the refused updates' statuses */
} rewrite_ids;

static int w_rewrite(store_txn *t, void *arg, store_error *err)
{
    rewrite_ids *r = arg;
    tuser o = lagoon_test_v1_TUser_init_zero;
    snprintf(o.name, sizeof(o.name), "olga");
    int st = store_insert(t, &lagoon_test_table_users, &o, &r->other, err);
    tuser u = lagoon_test_v1_TUser_init_zero;
    snprintf(u.name, sizeof(u.name), "eve");
    snprintf(u.email, sizeof(u.email), "eve@x");
    u.created_at = 5;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_test_table_users, &u, &r->user, err);
    /* Written last in its table: each update below knows the stored entries. */
    snprintf(u.name, sizeof(u.name), "Evelyn");
    u.email[0] = '\0'; /* leaves the sparse index */
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_test_table_users, &u, err);
    snprintf(u.name, sizeof(u.name), "Eva");
    snprintf(u.email, sizeof(u.email), "eva@y");
    u.created_at = 6;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_test_table_users, &u, err);
    /* Onto a taken name: refused, nothing changes. */
    snprintf(u.name, sizeof(u.name), "OLGA");
    r->conflict = store_update(t, &lagoon_test_table_users, &u, err);
    snprintf(u.name, sizeof(u.name), "Eva");
    u.created_at = 7;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_test_table_users, &u, err);
    /* A delete (it may cascade anywhere) in between. */
    tuser tmp = lagoon_test_v1_TUser_init_zero;
    snprintf(tmp.name, sizeof(tmp.name), "tmp");
    uint64_t tmp_id = 0;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_test_table_users, &tmp, &tmp_id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_test_table_users, tmp_id, err);
    u.created_at = 8;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_test_table_users, &u, err);
    tvideo v = lagoon_test_v1_TVideo_init_zero;
    v.owner_id = r->user;
    v.created_at = 10;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_test_table_videos, &v, &r->video, err);
    v.owner_id = r->other;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_test_table_videos, &v, err);
    v.owner_id = 12345; /* no such user: a changed foreign key is checked */
    r->bad_owner = store_update(t, &lagoon_test_table_videos, &v, err);
    return st;
}

static void test_rewrites_in_one_write(void **state)
{
    fixture *f = *state;
    store_error err;
    rewrite_ids r = {0};
    assert_int_equal(store_write(f->s, w_rewrite, &r, &err), LAGOON_OK);
    assert_int_equal(r.conflict, LAGOON_ALREADY_EXISTS);
    assert_int_equal(r.bad_owner, LAGOON_NOT_FOUND);
    uint64_t id;
    assert_int_equal(lookup_name(f->s, "eve", &id), LAGOON_NOT_FOUND);
    assert_int_equal(lookup_name(f->s, "evelyn", &id), LAGOON_NOT_FOUND);
    assert_int_equal(lookup_name(f->s, "tmp", &id), LAGOON_NOT_FOUND);
    assert_int_equal(lookup_name(f->s, "eva", &id), LAGOON_OK);
    assert_int_equal(id, r.user);
    assert_int_equal(lookup_name(f->s, "olga", &id), LAGOON_OK);
    assert_int_equal(id, r.other);
    /* The video moved to the other user's list. */
    uint64_t ids[4];
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, r.user);
    store_query q = {.table = &lagoon_test_table_videos, .index = lagoon_test_index_videos_by_owner,
                     .prefix = p.buf, .prefix_len = p.len};
    assert_int_equal(scan_all(f->s, &q, ids, 4), 0);
    store_key_reset(&p);
    store_key_u64(&p, r.other);
    assert_int_equal(scan_all(f->s, &q, ids, 4), 1);
    assert_int_equal(ids[0], r.video);
    /* Every entry where it belongs, none left behind (the old email's, the old names'). */
    uint64_t problems = 99;
    assert_int_equal(store_verify(f->s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    assert_int_equal(add_user(f->s, "someone", "EVE@x", 8, &id, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "eve", NULL, 9, &id, &err), LAGOON_OK);
}

/* ---- Relations and change announcements ---------------------------------------------------- */

typedef struct seen {
    pthread_mutex_t mu;
    store_change v[64];
    size_t n;
    unsigned calls;
} seen;

static void on_change(void *arg, const store_change *c, size_t n)
{
    seen *s = arg;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n && s->n < 64; i++)
        s->v[s->n++] = c[i];
    s->calls++;
    pthread_mutex_unlock(&s->mu);
}

static size_t count_kind(seen *s, const store_table *tab, enum store_change_kind kind)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += s->v[i].table == tab && s->v[i].kind == kind;
    return n;
}

static void test_foreign_keys_and_cascade(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t owner, other, v1, v2, c1, c2, c3, sh1, sh2, x;
    assert_int_equal(add_user(f->s, "owner", NULL, 1, &owner, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "other", NULL, 1, &other, &err), LAGOON_OK);
    /* A reference to a missing row is NOT_FOUND naming the field. */
    assert_int_equal(add_video(f->s, 4242, 1, 0, &x, &err), LAGOON_NOT_FOUND);
    assert_string_equal(err.field, "owner_id");
    assert_int_equal(add_video(f->s, owner, 1, 0, &v1, &err), LAGOON_OK);
    assert_int_equal(add_video(f->s, owner, 2, 0, &v2, &err), LAGOON_OK);
    assert_int_equal(add_comment(f->s, v1, other, &c1, &err), LAGOON_OK);
    assert_int_equal(add_comment(f->s, v2, other, &c2, &err), LAGOON_OK);
    assert_int_equal(add_comment(f->s, v2, owner, &c3, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v1, other, &sh1, &err), LAGOON_OK);
    assert_int_equal(add_share(f->s, v2, owner, &sh2, &err), LAGOON_OK);

    /* RESTRICT: "other" wrote comments, so it cannot go; nothing at all is deleted. */
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, other, &err), LAGOON_FAILED_PRECONDITION);
    assert_string_equal(err.field, "author_id");
    assert_true(row_exists(f->s, &lagoon_test_table_users, other));
    assert_true(row_exists(f->s, &lagoon_test_table_shares, sh1));

    seen sn = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(store_subscribe(f->s, on_change, &sn, &err), LAGOON_OK);
    /* RESTRICT holds even for a comment the cascade would remove: the owner's own comment c3
     * blocks the delete until it is gone. */
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, owner, &err), LAGOON_FAILED_PRECONDITION);
    assert_true(row_exists(f->s, &lagoon_test_table_videos, v2));
    assert_int_equal(del_row(f->s, &lagoon_test_table_comments, c3, &err), LAGOON_OK);
    /* CASCADE: the owner takes their videos, every comment on them (also other's), the
     * shares of those videos and their own shares. */
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, owner, &err), LAGOON_OK);
    assert_false(row_exists(f->s, &lagoon_test_table_users, owner));
    assert_false(row_exists(f->s, &lagoon_test_table_videos, v1));
    assert_false(row_exists(f->s, &lagoon_test_table_videos, v2));
    assert_false(row_exists(f->s, &lagoon_test_table_comments, c1));
    assert_false(row_exists(f->s, &lagoon_test_table_comments, c2));
    assert_false(row_exists(f->s, &lagoon_test_table_shares, sh1));
    assert_false(row_exists(f->s, &lagoon_test_table_shares, sh2));
    assert_true(row_exists(f->s, &lagoon_test_table_users, other));
    /* Deleting again: NOT_FOUND. */
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, owner, &err), LAGOON_NOT_FOUND);

    /* Subscribers heard every delete, once each, after the commits. */
    pthread_mutex_lock(&sn.mu);
    assert_int_equal(count_kind(&sn, &lagoon_test_table_comments, STORE_DELETED), 3);
    assert_int_equal(count_kind(&sn, &lagoon_test_table_users, STORE_DELETED), 1);
    assert_int_equal(count_kind(&sn, &lagoon_test_table_videos, STORE_DELETED), 2);
    assert_int_equal(count_kind(&sn, &lagoon_test_table_shares, STORE_DELETED), 2);
    assert_int_equal(sn.n, 8);
    pthread_mutex_unlock(&sn.mu);
    store_unsubscribe(f->s, on_change, &sn);
    assert_int_equal(add_user(f->s, "later", NULL, 1, &x, &err), LAGOON_OK);
    assert_int_equal(sn.n, 8); /* unsubscribed */

    uint64_t problems = 99;
    assert_int_equal(store_verify(f->s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
}

static void test_ids_never_reused(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t a, b, c;
    assert_int_equal(add_user(f->s, "a", NULL, 1, &a, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "b", NULL, 1, &b, &err), LAGOON_OK);
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, b, &err), LAGOON_OK);
    assert_int_equal(add_user(f->s, "c", NULL, 1, &c, &err), LAGOON_OK);
    assert_true(c > b);
    /* ... also across a reopen. */
    assert_int_equal(del_row(f->s, &lagoon_test_table_users, c, &err), LAGOON_OK);
    store_close(f->s);
    f->s = open_test_store(f->dir, NULL);
    uint64_t d;
    assert_int_equal(add_user(f->s, "d", NULL, 1, &d, &err), LAGOON_OK);
    assert_true(d > c);
}

/* ---- Pagination ------------------------------------------------------------------------------ */

typedef struct page_rows {
    uint64_t ids[STORE_PAGE_SIZE_MAX];
    size_t n;
} page_rows;

static int page_row(void *arg, uint64_t id, const void *row)
{
    (void)row;
    page_rows *p = arg;
    p->ids[p->n++] = id;
    return LAGOON_OK;
}

static int scan_page(store *s, const store_query *q, page_rows *rows, store_page *page,
                     store_error *err)
{
    store_txn *t;
    assert_int_equal(store_read_begin(s, &t, err), LAGOON_OK);
    rows->n = 0;
    int st = store_scan(t, q, page_row, rows, page, err);
    store_read_end(t);
    return st;
}

static void test_pages_with_inserts_between(void **state)
{
    fixture *f = *state;
    store_error err;
    char name[32];
    uint64_t id;
    for (int i = 0; i < 35; i++) {
        snprintf(name, sizeof(name), "user%d", i);
        assert_int_equal(add_user(f->s, name, NULL, i, &id, &err), LAGOON_OK);
    }
    /* By id, 10 per page; between pages, rows are added at the end and one row ahead of the
     * cursor is deleted: every row present at the end is seen exactly once, in order. */
    store_query q = {.table = &lagoon_test_table_users, .page_size = 10};
    page_rows rows;
    store_page page;
    uint64_t seenids[128];
    size_t nseen = 0;
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int p = 0; p < 20; p++) {
        q.page_token = token;
        assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
        for (size_t i = 0; i < rows.n; i++)
            seenids[nseen++] = rows.ids[i];
        if (p == 0) {
            for (int i = 0; i < 5; i++) {
                snprintf(name, sizeof(name), "late%d", i);
                assert_int_equal(add_user(f->s, name, NULL, 100, &id, &err), LAGOON_OK);
            }
            assert_int_equal(del_row(f->s, &lagoon_test_table_users, 25, &err), LAGOON_OK);
        }
        if (!page.next_page_token[0])
            break;
        assert_true(strlen(page.next_page_token) <= STORE_PAGE_TOKEN_MAX);
        snprintf(token, sizeof(token), "%s", page.next_page_token);
    }
    uint64_t all[128];
    store_query q2 = {.table = &lagoon_test_table_users, .page_size = 500};
    size_t nall = scan_all(f->s, &q2, all, 128);
    assert_int_equal(nall, 39);
    assert_int_equal(nseen, nall);
    for (size_t i = 0; i < nall; i++)
        assert_int_equal(seenids[i], all[i]);
    for (size_t i = 0; i + 1 < nall; i++)
        assert_true(all[i] < all[i + 1]);

    /* Newest first through an index, with a newer row (behind the cursor: not seen), an
     * older one (ahead: seen once) and a tie with the last row delivered (ordered by id, so
     * ahead: seen once). */
    uint64_t owner;
    assert_int_equal(add_user(f->s, "owner", NULL, 0, &owner, &err), LAGOON_OK);
    for (int i = 1; i <= 30; i++)
        assert_int_equal(add_video(f->s, owner, i * 10, 0, &id, &err), LAGOON_OK);
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, owner);
    store_query vq = {.table = &lagoon_test_table_videos, .index = lagoon_test_index_videos_by_owner,
                      .prefix = p.buf, .prefix_len = p.len, .page_size = 7};
    token[0] = '\0';
    uint64_t newer = 0, older = 0, tie = 0;
    int64_t last_time = INT64_MAX;
    uint64_t last_id = 0;
    size_t total = 0;
    for (int pg = 0; pg < 20; pg++) {
        vq.page_token = token;
        assert_int_equal(scan_page(f->s, &vq, &rows, &page, &err), LAGOON_OK);
        store_txn *t;
        assert_int_equal(store_read_begin(f->s, &t, &err), LAGOON_OK);
        for (size_t i = 0; i < rows.n; i++) {
            tvideo v;
            assert_int_equal(store_get(t, &lagoon_test_table_videos, rows.ids[i], &v, &err), LAGOON_OK);
            assert_true(v.created_at < last_time ||
                        (v.created_at == last_time && rows.ids[i] > last_id));
            last_time = v.created_at;
            last_id = rows.ids[i];
            assert_int_not_equal(rows.ids[i], newer);
            total++;
        }
        store_read_end(t);
        if (pg == 0) {
            assert_int_equal(last_time, 240);
            assert_int_equal(add_video(f->s, owner, 5000, 0, &newer, &err), LAGOON_OK);
            assert_int_equal(add_video(f->s, owner, 1, 0, &older, &err), LAGOON_OK);
            assert_int_equal(add_video(f->s, owner, 240, 0, &tie, &err), LAGOON_OK);
        }
        if (!page.next_page_token[0])
            break;
        snprintf(token, sizeof(token), "%s", page.next_page_token);
    }
    assert_int_equal(total, 32); /* 30 + older + tie, not newer */
    assert_int_equal(last_time, 1);
    (void)older;
    (void)tie;
}

/* A token does not show the key the page stopped at: it is sealed, not only signed (a list that
 * filters rows may stop at one its caller may not see). Two tokens of the same position differ. */
static void test_tokens_hide_their_key(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t id;
    const char *names[] = {"secretnameaaaa", "secretnamebbbb", "secretnamecccc"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(add_user(f->s, names[i], NULL, i, &id, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_test_table_users, .index = lagoon_test_index_users_by_name, .page_size = 1};
    page_rows rows;
    store_page page;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    char first[STORE_PAGE_TOKEN_MAX + 1];
    snprintf(first, sizeof(first), "%s", page.next_page_token);
    uint8_t raw[STORE_PAGE_TOKEN_MAX];
    size_t n;
    assert_int_equal(sodium_base642bin(raw, sizeof(raw), first, strlen(first), NULL, &n, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                     0);
    for (size_t i = 0; i + 10 <= n; i++)
        assert_false(memcmp(raw + i, "secretname", 10) == 0);
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_string_not_equal(first, page.next_page_token);
    q.page_token = first; /* and it still works */
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_int_equal(rows.n, 1);
}

static void test_hostile_tokens(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t id;
    char name[32];
    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof(name), "u%d", i);
        assert_int_equal(add_user(f->s, name, NULL, i, &id, &err), LAGOON_OK);
    }
    store_query q = {.table = &lagoon_test_table_users, .page_size = 5};
    page_rows rows;
    store_page page;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    char good[STORE_PAGE_TOKEN_MAX + 1];
    snprintf(good, sizeof(good), "%s", page.next_page_token);
    size_t glen = strlen(good);
    assert_true(glen > 8);
    /* The same query in reverse gives a token of another query. */
    store_query rq = q;
    rq.reverse = 1;
    assert_int_equal(scan_page(f->s, &rq, &rows, &page, &err), LAGOON_OK);
    char other[STORE_PAGE_TOKEN_MAX + 1];
    snprintf(other, sizeof(other), "%s", page.next_page_token);

    char flipped[STORE_PAGE_TOKEN_MAX + 1], truncated[STORE_PAGE_TOKEN_MAX + 1],
        extended[STORE_PAGE_TOKEN_MAX + 4], huge[2 * STORE_PAGE_TOKEN_MAX],
        random_b64[256];
    snprintf(flipped, sizeof(flipped), "%s", good);
    flipped[glen / 2] = flipped[glen / 2] == 'A' ? 'B' : 'A';
    snprintf(truncated, sizeof(truncated), "%s", good);
    truncated[glen - 3] = '\0';
    snprintf(extended, sizeof(extended), "%sAA", good);
    memset(huge, 'A', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    memset(random_b64, 'Q', 120);
    random_b64[120] = '\0';
    const char *bad[] = {"garbage!!", "A", "AAAA", "====", flipped, truncated, extended, huge,
                         other, random_b64, "\xff\xfe", "a b c"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        q.page_token = bad[i];
        memset(&err, 0, sizeof(err));
        assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
        assert_string_equal(err.field, "page_token");
        assert_int_equal(rows.n, 0);
    }
    /* Every strict prefix and every one-character change of a genuine token is refused. */
    char mut[STORE_PAGE_TOKEN_MAX + 1];
    for (size_t cut = 1; cut < glen; cut++) {
        snprintf(mut, sizeof(mut), "%.*s", (int)cut, good);
        q.page_token = mut;
        assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
    }
    for (size_t i = 0; i < glen; i++) {
        snprintf(mut, sizeof(mut), "%s", good);
        mut[i] = mut[i] == '-' ? '_' : '-';
        q.page_token = mut;
        assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
        assert_string_equal(err.field, "page_token");
    }
    /* The genuine token still works, and a restart keeps it valid (the key is stored). */
    q.page_token = good;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_int_equal(rows.n, 5);
    assert_int_equal(rows.ids[0], 6);
    store_close(f->s);
    f->s = open_test_store(f->dir, NULL);
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_int_equal(rows.ids[0], 6);
    /* A token of one database is forged for another. */
    char *dir2 = tmpdir_make();
    store *s2 = open_test_store(dir2, NULL);
    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof(name), "u%d", i);
        assert_int_equal(add_user(s2, name, NULL, i, &id, &err), LAGOON_OK);
    }
    assert_int_equal(scan_page(s2, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
    store_close(s2);
    tmpdir_remove(dir2);
}

static void test_offset_pages_and_limits(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t id;
    char name[32];
    for (int i = 0; i < 25; i++) {
        snprintf(name, sizeof(name), "u%d", i);
        assert_int_equal(add_user(f->s, name, NULL, i, &id, &err), LAGOON_OK);
    }
    page_rows rows;
    store_page page;
    store_query q = {.table = &lagoon_test_table_users, .page_size = 10};
    static const struct {
        uint32_t page;
        size_t n;
        uint64_t first;
    } want[] = {{1, 10, 1}, {2, 10, 11}, {3, 5, 21}, {4, 0, 0}};
    for (size_t i = 0; i < 4; i++) {
        q.page_number = want[i].page;
        assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
        assert_int_equal(rows.n, want[i].n);
        if (want[i].n)
            assert_int_equal(rows.ids[0], want[i].first);
        assert_string_equal(page.next_page_token, "");
    }
    q.reverse = 1;
    q.page_number = 3;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_int_equal(rows.n, 5);
    assert_int_equal(rows.ids[0], 5);

    /* Hostile sizes. */
    q.page_number = 0;
    q.page_size = STORE_PAGE_SIZE_MAX + 1;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "page_size");
    q.page_size = 0; /* default 50 */
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_OK);
    assert_int_equal(rows.n, 25);
    q.page_size = STORE_PAGE_SIZE_MAX;
    q.page_number = UINT32_MAX;
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "page_number");
    q.page_number = 2;
    q.page_token = "x";
    assert_int_equal(scan_page(f->s, &q, &rows, &page, &err), LAGOON_INVALID_ARGUMENT);
}

/* ---- Group commit -------------------------------------------------------------------------- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, released, done;
} gate;

static int w_block(store_txn *t, void *arg, store_error *err)
{
    (void)t;
    (void)err;
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->released)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return LAGOON_OK;
}

typedef struct batch_op {
    const char *name;  /* user to insert */
    const char *name2; /* then this one (may conflict) */
    int fail_with;     /* then fail explicitly with this status (0: no) */
    gate *g;
    int status;
    store_error err;
} batch_op;

static int w_batch_op(store_txn *t, void *arg, store_error *err)
{
    batch_op *o = arg;
    tuser u = lagoon_test_v1_TUser_init_zero;
    snprintf(u.name, sizeof(u.name), "%s", o->name);
    int st = store_insert(t, &lagoon_test_table_users, &u, NULL, err);
    if (st || !o->name2) {
        if (!st && o->fail_with)
            return store_fail(err, o->fail_with, "why", "told to fail");
        return st;
    }
    tuser u2 = lagoon_test_v1_TUser_init_zero;
    snprintf(u2.name, sizeof(u2.name), "%s", o->name2);
    return store_insert(t, &lagoon_test_table_users, &u2, NULL, err);
}

static void batch_done(void *arg, int status, const store_error *err)
{
    batch_op *o = arg;
    pthread_mutex_lock(&o->g->mu);
    o->status = status;
    o->err = *err;
    o->g->done++;
    pthread_cond_broadcast(&o->g->cv);
    pthread_mutex_unlock(&o->g->mu);
}

static void block_done(void *arg, int status, const store_error *err)
{
    (void)status;
    (void)err;
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->done++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void test_failing_call_in_batch(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t id;
    assert_int_equal(add_user(f->s, "taken", NULL, 0, &id, &err), LAGOON_OK);

    gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    /* Hold the writer inside a first batch so that the next calls queue up and are taken
     * together as one batch. */
    assert_int_equal(store_submit(f->s, w_block, &g, block_done, &g, &err), LAGOON_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    store_counters before;
    store_counters_get(f->s, &before);
    seen sn = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(store_subscribe(f->s, on_change, &sn, &err), LAGOON_OK);

    batch_op ops[] = {
        {"a", NULL, 0, &g, -1, {0}},
        {"b", "TAKEN", 0, &g, -1, {0}}, /* inserts b, then conflicts: b must vanish */
        {"c", NULL, 0, &g, -1, {0}},
        {"d", NULL, LAGOON_INVALID_ARGUMENT, &g, -1, {0}}, /* inserts d, then fails */
        {"e", "f", 0, &g, -1, {0}},
    };
    size_t n = sizeof(ops) / sizeof(ops[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(store_submit(f->s, w_batch_op, &ops[i], batch_done, &ops[i], &err),
                         LAGOON_OK);
    pthread_mutex_lock(&g.mu);
    g.released = 1;
    pthread_cond_broadcast(&g.cv);
    while (g.done < (int)n + 1)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);

    store_counters after;
    store_counters_get(f->s, &after);
    assert_int_equal(after.batches - before.batches, 2); /* the blocker's and ours */
    /* One announcement for the batch, with only what committed: a, c, e, f. */
    store_unsubscribe(f->s, on_change, &sn);
    assert_int_equal(sn.calls, 1);
    assert_int_equal(sn.n, 4);
    assert_int_equal(count_kind(&sn, &lagoon_test_table_users, STORE_INSERTED), 4);
    assert_int_equal(ops[0].status, LAGOON_OK);
    assert_int_equal(ops[1].status, LAGOON_ALREADY_EXISTS);
    assert_string_equal(ops[1].err.field, "name");
    assert_int_equal(ops[2].status, LAGOON_OK);
    assert_int_equal(ops[3].status, LAGOON_INVALID_ARGUMENT);
    assert_string_equal(ops[3].err.field, "why");
    assert_int_equal(ops[4].status, LAGOON_OK);
    static const struct {
        const char *name;
        int present;
    } want[] = {{"a", 1}, {"b", 0}, {"c", 1}, {"d", 0}, {"e", 1}, {"f", 1}, {"taken", 1}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_int_equal(lookup_name(f->s, want[i].name, &id) == LAGOON_OK, want[i].present);
    uint64_t problems = 99;
    assert_int_equal(store_verify(f->s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
}

static void test_queue_limit(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store_config cfg = {.max_queue = 2};
    store *s = open_test_store(dir, &cfg);
    store_error err;
    gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(store_submit(s, w_block, &g, block_done, &g, &err), LAGOON_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    /* The writer is busy: two more may wait, the third is refused at once. */
    batch_op ops[3] = {{"q1", NULL, 0, &g, -1, {0}}, {"q2", NULL, 0, &g, -1, {0}},
                       {"q3", NULL, 0, &g, -1, {0}}};
    assert_int_equal(store_submit(s, w_batch_op, &ops[0], batch_done, &ops[0], &err), LAGOON_OK);
    assert_int_equal(store_submit(s, w_batch_op, &ops[1], batch_done, &ops[1], &err), LAGOON_OK);
    assert_int_equal(store_submit(s, w_batch_op, &ops[2], batch_done, &ops[2], &err),
                     LAGOON_RESOURCE_EXHAUSTED);
    pthread_mutex_lock(&g.mu);
    g.released = 1;
    pthread_cond_broadcast(&g.cv);
    while (g.done < 3)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    assert_int_equal(ops[0].status, LAGOON_OK);
    assert_int_equal(ops[1].status, LAGOON_OK);
    assert_int_equal(ops[2].status, -1); /* never called */
    store_close(s);
    tmpdir_remove(dir);
}

/* Many threads writing at once: every write is answered, and batches hold several. */
typedef struct writer_arg {
    store *s;
    int thread;
    int ok;
} writer_arg;

static void *writer_thread(void *arg)
{
    writer_arg *w = arg;
    char name[32];
    store_error err;
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "t%d-%d", w->thread, i);
        uint64_t id;
        w->ok += add_user(w->s, name, NULL, i, &id, &err) == LAGOON_OK;
    }
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    fixture *f = *state;
    enum { N = 8 };
    pthread_t th[N];
    writer_arg w[N];
    store_counters before, after;
    store_counters_get(f->s, &before);
    for (int i = 0; i < N; i++) {
        w[i] = (writer_arg){f->s, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, writer_thread, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].ok, 50);
    }
    store_counters_get(f->s, &after);
    assert_int_equal(after.ops_ok - before.ops_ok, N * 50);
    uint64_t ids[512];
    store_query q = {.table = &lagoon_test_table_users};
    assert_int_equal(scan_all(f->s, &q, ids, 512), N * 50);
}

/* ---- Map growth and a full map ----------------------------------------------------------------- */

typedef struct reader_arg {
    store *s;
    volatile int stop;
    int reads;
} reader_arg;

static void *reader_thread(void *arg)
{
    reader_arg *r = arg;
    for (int i = 0; i < 1000000 && !r->stop; i++) {
        store_txn *t;
        store_error err;
        if (store_read_begin(r->s, &t, &err) != LAGOON_OK)
            continue;
        tvideo v;
        store_get(t, &lagoon_test_table_videos, (uint64_t)(i % 50) + 1, &v, &err);
        store_read_end(t);
        r->reads++;
    }
    return NULL;
}

typedef struct many_arg {
    uint64_t owner;
    int count, base;
} many_arg;

static int w_many_videos(store_txn *t, void *arg, store_error *err)
{
    many_arg *m = arg;
    for (int i = 0; i < m->count; i++) {
        tvideo v = lagoon_test_v1_TVideo_init_zero;
        v.owner_id = m->owner;
        v.created_at = m->base + i;
        v.blob.size = 4000;
        memset(v.blob.bytes, (m->base + i) & 0xff, 4000);
        int st = store_insert(t, &lagoon_test_table_videos, &v, NULL, err);
        if (st)
            return st;
    }
    return LAGOON_OK;
}

static void test_map_grows_from_tiny(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store_config cfg = {.map_size_initial = STORE_MAP_SIZE_MIN};
    store *s = open_test_store(dir, &cfg);
    store_error err;
    uint64_t owner;
    assert_int_equal(add_user(s, "owner", NULL, 0, &owner, &err), LAGOON_OK);
    reader_arg r = {.s = s};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader_thread, &r), 0);
    for (int b = 0; b < 30; b++) {
        many_arg m = {owner, 20, b * 20};
        assert_int_equal(store_write(s, w_many_videos, &m, &err), LAGOON_OK);
    }
    r.stop = 1;
    pthread_join(th, NULL);
    store_counters c;
    store_counters_get(s, &c);
    assert_true(c.map_growths >= 1);
    assert_true(c.map_size > STORE_MAP_SIZE_MIN);
    uint64_t ids[700];
    store_query q = {.table = &lagoon_test_table_videos};
    assert_int_equal(scan_all(s, &q, ids, 700), 600);
    uint64_t problems = 99;
    assert_int_equal(store_verify(s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    store_close(s);
    tmpdir_remove(dir);
}

static void test_full_map_refuses_writes_keeps_reads(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store_config cfg = {.map_size_initial = 256 << 10, .map_size_max = 1 << 20};
    store *s = open_test_store(dir, &cfg);
    store_error err;
    uint64_t owner, id;
    assert_int_equal(add_user(s, "owner", NULL, 0, &owner, &err), LAGOON_OK);
    int ok = 0, st = LAGOON_OK;
    for (int i = 0; i < 1000 && st == LAGOON_OK; i++) {
        st = add_video(s, owner, i, 8000, &id, &err);
        ok += st == LAGOON_OK;
    }
    assert_int_equal(st, LAGOON_RESOURCE_EXHAUSTED);
    assert_true(ok > 10);
    /* Reads keep working and see every acknowledged write. */
    uint64_t ids[1000];
    store_query q = {.table = &lagoon_test_table_videos};
    assert_int_equal(scan_all(s, &q, ids, 1000), (size_t)ok);
    assert_true(row_exists(s, &lagoon_test_table_users, owner));
    /* Deleting makes room again (LMDB reuses freed pages after the next commits). */
    for (int i = 0; i < ok; i++)
        assert_int_equal(del_row(s, &lagoon_test_table_videos, ids[i], &err), LAGOON_OK);
    assert_int_equal(add_video(s, owner, 1, 8000, &id, &err), LAGOON_OK);
    store_close(s);
    tmpdir_remove(dir);
}

/* Out of disk space, for real: the data file hits RLIMIT_FSIZE in a child process (the
 * kernel refuses to grow it, as with a full disk). Writes get RESOURCE_EXHAUSTED, reads go on,
 * and writes work again once there is room. The child reports through its exit status. */
static int disk_full_child(const char *dir)
{
    store_config cfg = {.schema = test_schema()};
    store *s;
    store_error err;
    if (store_open(dir, &cfg, &s, &err))
        return 20;
    uint64_t owner, id;
    if (add_user(s, "owner", NULL, 0, &owner, &err))
        return 21;
    char path[600];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    struct stat st;
    if (stat(path, &st))
        return 22;
    signal(SIGXFSZ, SIG_IGN); /* the write fails with EFBIG instead of killing us */
    /* Not a multiple of the page size: the write that crosses it is cut short, which LMDB
     * reports as EIO; the store must still see a full disk. */
    struct rlimit rl = {(rlim_t)st.st_size + (1 << 20) + 1000, RLIM_INFINITY};
    if (setrlimit(RLIMIT_FSIZE, &rl))
        return 23;
    int ok = 0, rc = LAGOON_OK;
    for (int i = 0; i < 1000 && rc == LAGOON_OK; i++) {
        rc = add_video(s, owner, i, 8000, &id, &err);
        ok += rc == LAGOON_OK;
    }
    if (rc != LAGOON_RESOURCE_EXHAUSTED)
        return 24;
    if (ok < 5)
        return 25;
    /* Another write fails the same way; reads see every acknowledged row. */
    if (add_video(s, owner, 1, 8000, &id, &err) != LAGOON_RESOURCE_EXHAUSTED)
        return 26;
    uint64_t ids[1000];
    store_query q = {.table = &lagoon_test_table_videos};
    if (scan_all(s, &q, ids, 1000) != (size_t)ok)
        return 27;
    rl.rlim_cur = RLIM_INFINITY;
    if (setrlimit(RLIMIT_FSIZE, &rl))
        return 28;
    if (add_video(s, owner, 1, 8000, &id, &err) != LAGOON_OK)
        return 29;
    uint64_t problems = 99;
    if (store_verify(s, NULL, &problems, &err) || problems)
        return 30;
    store_close(s);
    return 0;
}

static void test_disk_full_refuses_writes_keeps_reads(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(disk_full_child(dir));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    tmpdir_remove(dir);
}

/* ---- Schema versions ------------------------------------------------------------------------ */

static int migrations;
static uint32_t migrated_from;

static int migrate(store_txn *t, uint32_t from, void *arg, store_error *err)
{
    (void)arg;
    migrations++;
    migrated_from = from;
    tuser u = lagoon_test_v1_TUser_init_zero;
    snprintf(u.name, sizeof(u.name), "%s", "migrated");
    return store_insert(t, &lagoon_test_table_users, &u, NULL, err);
}

static void test_schema_versions(void **state)
{
    fixture *f = *state;
    store_error err;
    uint64_t id;
    assert_int_equal(add_user(f->s, "v1 user", NULL, 0, &id, &err), LAGOON_OK);
    store_close(f->s);
    f->s = NULL;

    test_schema_v2.migrate = migrate;
    migrations = 0;
    store_config cfg = {.schema = &test_schema_v2};
    f->s = open_test_store(f->dir, &cfg);
    assert_int_equal(migrations, 1);
    assert_int_equal(migrated_from, 1);
    assert_int_equal(lookup_name(f->s, "migrated", &id), LAGOON_OK);
    store_close(f->s);
    f->s = open_test_store(f->dir, &cfg);
    assert_int_equal(migrations, 1); /* once only */
    store_close(f->s);
    f->s = NULL;

    /* An older build refuses the newer database, clearly. */
    store_config old = {.schema = test_schema()};
    store *s = NULL;
    assert_int_equal(store_open(f->dir, &old, &s, &err), LAGOON_FAILED_PRECONDITION);
    assert_null(s);
    assert_non_null(strstr(err.message, "newer"));
    f->s = open_test_store(f->dir, &cfg);
    test_schema_v2.migrate = NULL;
}

static void test_bad_config(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = NULL;
    store_error err;
    static const struct {
        store_config cfg;
        const char *field;
    } bad[] = {
        {{.max_batch = STORE_MAX_BATCH_LIMIT + 1}, "max_batch"},
        {{.map_size_initial = 1024}, "map_size_initial"},
        {{.map_size_max = STORE_MAP_SIZE_MAX_LIMIT + 1}, "map_size_max"},
        {{.max_readers = STORE_MAX_READERS_LIMIT + 1}, "max_readers"},
        {{.sync = (enum store_sync)7}, "sync"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        store_config c = bad[i].cfg;
        c.schema = test_schema();
        assert_int_equal(store_open(dir, &c, &s, &err), LAGOON_INVALID_ARGUMENT);
        assert_string_equal(err.field, bad[i].field);
        assert_null(s);
    }
    tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_order_integers),
        cmocka_unit_test(test_key_strings),
        cmocka_unit_test(test_key_overflow),
        cmocka_unit_test_setup_teardown(test_unique_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_multi_index_newest_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_composite_join_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_moves_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewrites_in_one_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_keys_and_cascade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_never_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pages_with_inserts_between, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_hide_their_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offset_pages_and_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_call_in_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_map_grows_from_tiny),
        cmocka_unit_test(test_full_map_refuses_writes_keeps_reads),
        cmocka_unit_test(test_disk_full_refuses_writes_keeps_reads),
        cmocka_unit_test_setup_teardown(test_schema_versions, setup, teardown),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
