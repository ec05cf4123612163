#define _XOPEN_SOURCE 700
#include "store_test_util.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

char *tmpdir_make(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/lagoon-store-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tmpdir_remove(char *dir)
{
    if (!dir)
        return;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

store *open_test_store(const char *dir, const store_config *cfg)
{
    store_config c = {0};
    if (cfg)
        c = *cfg;
    if (!c.schema)
        c.schema = test_schema();
    store *s = NULL;
    store_error err;
    int st = store_open(dir, &c, &s, &err);
    if (st)
        fail_msg("store_open(%s): %s", dir, err.message);
    return s;
}

typedef struct ins_arg {
    const store_table *tab;
    void *row;
    uint64_t id;
} ins_arg;

static int w_insert(store_txn *t, void *a, store_error *err)
{
    ins_arg *x = a;
    return store_insert(t, x->tab, x->row, &x->id, err);
}

int add_row(store *s, const store_table *tab, void *row, uint64_t *id, store_error *err)
{
    ins_arg a = {tab, row, 0};
    int st = store_write(s, w_insert, &a, err);
    if (id)
        *id = st ? 0 : a.id;
    return st;
}

int add_user(store *s, const char *name, const char *email, int64_t created, uint64_t *id,
             store_error *err)
{
    tuser u = lagoon_test_v1_TUser_init_zero;
    snprintf(u.name, sizeof(u.name), "%s", name);
    snprintf(u.email, sizeof(u.email), "%s", email ? email : "");
    u.created_at = created;
    return add_row(s, &lagoon_test_table_users, &u, id, err);
}

int add_video(store *s, uint64_t owner, int64_t created, size_t blob_len, uint64_t *id,
              store_error *err)
{
    tvideo v = lagoon_test_v1_TVideo_init_zero;
    v.owner_id = owner;
    v.created_at = created;
    snprintf(v.title, sizeof(v.title), "video at %lld", (long long)created);
    v.blob.size = (pb_size_t)blob_len;
    for (size_t i = 0; i < blob_len; i++)
        v.blob.bytes[i] = (uint8_t)(i * 31 + created);
    return add_row(s, &lagoon_test_table_videos, &v, id, err);
}

int add_comment(store *s, uint64_t video, uint64_t author, uint64_t *id, store_error *err)
{
    tcomment c = lagoon_test_v1_TComment_init_zero;
    c.video_id = video;
    c.author_id = author;
    snprintf(c.text, sizeof(c.text), "nice");
    return add_row(s, &lagoon_test_table_comments, &c, id, err);
}

int add_share(store *s, uint64_t video, uint64_t user, uint64_t *id, store_error *err)
{
    tshare sh = lagoon_test_v1_TShare_init_zero;
    sh.video_id = video;
    sh.user_id = user;
    return add_row(s, &lagoon_test_table_shares, &sh, id, err);
}

typedef struct del_arg {
    const store_table *tab;
    uint64_t id;
} del_arg;

static int w_delete(store_txn *t, void *a, store_error *err)
{
    del_arg *d = a;
    return store_delete(t, d->tab, d->id, err);
}

int del_row(store *s, const store_table *tab, uint64_t id, store_error *err)
{
    del_arg d = {tab, id};
    return store_write(s, w_delete, &d, err);
}

int row_exists(store *s, const store_table *tab, uint64_t id)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(s, &t, &err), LAGOON_OK);
    void *row = calloc(1, tab->row_size);
    assert_non_null(row);
    int st = store_get(t, tab, id, row, &err);
    store_row_release(tab, row);
    free(row);
    store_read_end(t);
    assert_true(st == LAGOON_OK || st == LAGOON_NOT_FOUND);
    return st == LAGOON_OK;
}

typedef struct collect {
    uint64_t *ids;
    size_t n, max;
} collect;

static int collect_row(void *arg, uint64_t id, const void *row)
{
    (void)row;
    collect *c = arg;
    if (c->n < c->max)
        c->ids[c->n] = id;
    c->n++;
    return LAGOON_OK;
}

size_t scan_all(store *s, const store_query *q0, uint64_t *ids, size_t max)
{
    collect c = {ids, 0, max};
    store_query q = *q0;
    store_page page;
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int pages = 0; pages < 100000; pages++) {
        q.page_token = token;
        store_txn *t;
        store_error err;
        assert_int_equal(store_read_begin(s, &t, &err), LAGOON_OK);
        int st = store_scan(t, &q, collect_row, &c, &page, &err);
        store_read_end(t);
        if (st)
            fail_msg("store_scan: %s", err.message);
        if (!page.next_page_token[0])
            break;
        snprintf(token, sizeof(token), "%s", page.next_page_token);
    }
    return c.n < max ? c.n : max;
}
