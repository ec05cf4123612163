/* store tables: key encodings, generic row operations with index and foreign-key upkeep,
 * scans and page tokens. Every table goes through this code; none has code of its own. */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>
#include <sodium.h>

#include "lagoon_idl.h"

/* ---- Key encodings -------------------------------------------------------------------------- */

void store_key_reset(store_key *k)
{
    k->len = 0;
    k->overflow = 0;
}

static void key_append(store_key *k, const void *p, size_t n)
{
    if (k->overflow || n > STORE_KEY_MAX - k->len) {
        k->overflow = 1;
        return;
    }
    memcpy(k->buf + k->len, p, n);
    k->len += n;
}

static void be64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

void store_key_u64(store_key *k, uint64_t v)
{
    uint8_t b[8];
    be64(b, v);
    key_append(k, b, 8);
}

void store_key_u32(store_key *k, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    key_append(k, b, 4);
}

void store_key_i64(store_key *k, int64_t v)
{
    store_key_u64(k, (uint64_t)v ^ (1ull << 63));
}

void store_key_i64_desc(store_key *k, int64_t v)
{
    store_key_u64(k, ~((uint64_t)v ^ (1ull << 63)));
}

/* 0x00 is escaped as 0x00 0xFF and the string ends with 0x00 0x01: the terminator sorts below
 * every continuation, so order is byte order and no string can pass for a prefix of another. */
static void key_escaped(store_key *k, const uint8_t *p, size_t n, int fold)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (fold && c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        if (c == 0) {
            static const uint8_t esc[2] = {0x00, 0xFF};
            key_append(k, esc, 2);
        } else {
            key_append(k, &c, 1);
        }
    }
    static const uint8_t end[2] = {0x00, 0x01};
    key_append(k, end, 2);
}

void store_key_bytes(store_key *k, const void *p, size_t n)
{
    key_escaped(k, p, n, 0);
}

void store_key_str(store_key *k, const char *s)
{
    key_escaped(k, (const uint8_t *)s, strlen(s), 0);
}

void store_key_str_fold(store_key *k, const char *s)
{
    key_escaped(k, (const uint8_t *)s, strlen(s), 1);
}

void store_key_raw(store_key *k, const void *p, size_t n)
{
    key_append(k, p, n);
}

/* ---- Row helpers ----------------------------------------------------------------------------- */

static uint64_t row_u64(const void *row, size_t off)
{
    uint64_t v;
    memcpy(&v, (const char *)row + off, sizeof(v));
    return v;
}

static void row_set_u64(void *row, size_t off, uint64_t v)
{
    memcpy((char *)row + off, &v, sizeof(v));
}

void store_row_release(const store_table *tab, void *row)
{
    if (row && tab->msg->has_pointers)
        pb_release(tab->msg->desc, row);
}

/* Encodes row into the store's encode buffer (store.enc), in one pass: its size is computed
 * only when the buffer is too small, which then grows to fit. *out is valid until the next
 * encode. */
static int row_encode(store_txn *t, const store_table *tab, const void *row, const uint8_t **out,
                      size_t *len, store_error *err)
{
    store *s = t->s;
    const char *why = NULL;
    long n = s->enc_cap ? wire_encode(tab->msg, row, s->enc, s->enc_cap, &why) : -1;
    if (n < 0) {
        long need = wire_encoded_size(tab->msg, row);
        if (need < 0)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL, "%s row cannot be encoded",
                              tab->name);
        if ((unsigned long)need > STORE_ROW_MAX)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL,
                              "%s row is %ld bytes, at most %u", tab->name, need, STORE_ROW_MAX);
        if ((size_t)need > s->enc_cap) { /* else it fit, and failed for another reason */
            size_t cap = s->enc_cap ? s->enc_cap : STORE_ENCODE_BUF_MIN;
            while (cap < (size_t)need)
                cap *= 2;
            uint8_t *b = malloc(cap);
            if (!b)
                return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
            free(s->enc);
            s->enc = b;
            s->enc_cap = cap;
            n = wire_encode(tab->msg, row, s->enc, s->enc_cap, &why);
        }
        if (n != need)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL,
                              "%s row cannot be encoded: %s", tab->name, why ? why : "?");
    }
    *out = s->enc;
    *len = (size_t)n;
    return LAGOON_OK;
}

static int row_decode(const store_table *tab, kv_val v, void *row, store_error *err)
{
    /* wire_decode sets the defaults itself, touching only what it needs (not the bytes of
     * large buffers), so the row is not cleared here. */
    wire_violation viol;
    if (wire_decode_trusted(tab->msg, v.data, v.len, row, &viol))
        return STORE_FAIL(err, LAGOON_DATA_LOSS, NULL, "stored %s row cannot be decoded: %s",
                          tab->name, viol.description);
    return LAGOON_OK;
}

int store_index_entry(const store_table *tab, size_t x, const void *row, uint64_t id, store_key *k)
{
    const store_index *ix = &tab->indexes[x];
    store_key_reset(k);
    if (!ix->key(row, k))
        return 0;
    if (ix->kind == STORE_MULTI)
        store_key_u64(k, id);
    return k->overflow ? -1 : 1;
}

static int need_rt(store_txn *t, const store_table *tab, const store_table_rt **rt,
                   store_error *err)
{
    *rt = tab ? store_rt(t->s, tab) : NULL;
    if (!*rt)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "table %s is not in the store's schema",
                          tab ? tab->name : "(null)");
    return LAGOON_OK;
}

static int need_write(store_txn *t, store_error *err)
{
    if (!t->writable)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "write attempted in a read transaction");
    return LAGOON_OK;
}

static int record(store_txn *t, const store_table *tab, uint64_t id, enum store_change_kind kind,
                  store_error *err)
{
    if (t->nchanges == t->cap_changes) {
        size_t cap = t->cap_changes ? t->cap_changes * 2 : 8;
        store_change *v = realloc(t->changes, cap * sizeof(*v));
        if (!v)
            return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        t->changes = v;
        t->cap_changes = cap;
    }
    t->changes[t->nchanges++] = (store_change){tab, id, kind};
    return LAGOON_OK;
}

static int get_raw(store_txn *t, kv_db db, uint64_t id, kv_val *v, store_error *err,
                   const char *what)
{
    uint8_t k[8];
    be64(k, id);
    int rc = kv_get(t->kv, db, (kv_val){k, 8}, v);
    if (rc == KV_NOTFOUND)
        return LAGOON_NOT_FOUND;
    return rc ? store_kv_fail(t, rc, err, what) : LAGOON_OK;
}

/* Foreign keys of row must resolve. Only the changed ones when old_fk (the stored row's values,
 * tab->nfkeys of them) is given. */
static int check_fkeys(store_txn *t, const store_table *tab, const void *row, const uint64_t *old_fk,
                       store_error *err)
{
    for (size_t f = 0; f < tab->nfkeys; f++) {
        const store_fkey *fk = &tab->fkeys[f];
        uint64_t pid = row_u64(row, fk->offset);
        if (old_fk && old_fk[f] == pid)
            continue;
        if (pid == 0 && fk->optional)
            continue;
        const store_table_rt *prt;
        int st = need_rt(t, fk->parent, &prt, err);
        if (st)
            return st;
        kv_val v;
        st = get_raw(t, prt->rows, pid, &v, err, fk->parent->name);
        if (st == LAGOON_NOT_FOUND)
            return STORE_FAIL(err, LAGOON_NOT_FOUND, fk->field, "%s: no %s row with id %llu",
                              fk->field, fk->parent->name, (unsigned long long)pid);
        if (st)
            return st;
    }
    return LAGOON_OK;
}

static int conflict(const store_table *tab, const store_index *ix, store_error *err)
{
    return STORE_FAIL(err, LAGOON_ALREADY_EXISTS, ix->field, "a %s row with this %s already exists",
                      tab->name, ix->field);
}

static int too_long(const store_table *tab, const store_index *ix, store_error *err)
{
    return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, ix->field,
                      "%s is too long to be indexed (%s.%s keys are at most %d bytes)", ix->field,
                      tab->name, ix->name, STORE_KEY_MAX);
}

static uint64_t key_id(kv_val v)
{
    return v.len == 8 ? get_be64(v.data) : 0;
}

/* ---- Recent rows (store_recent in store_internal.h) ------------------------------------------- */

/* The remembered row id of tab in t, or NULL. */
static store_recent *recent_find(store_txn *t, const store_table_rt *rt, uint64_t id)
{
    store_recent *r = t->recent ? t->recent[rt - t->s->tables] : NULL;
    return r && r->id == id ? r : NULL;
}

/* Starts remembering a row of rt's table as written (recent_key for each index, then
 * recent_done). NULL when memory is short: the next update then reads the row. */
static store_recent *recent_slot(store_txn *t, const store_table_rt *rt)
{
    size_t slot = (size_t)(rt - t->s->tables);
    if (!t->recent && !(t->recent = calloc(t->s->schema->ntables, sizeof(*t->recent))))
        return NULL;
    store_recent *r = t->recent[slot];
    if (!r && !(r = t->recent[slot] = malloc(sizeof(*r))))
        return NULL;
    r->id = 0;
    r->used = 0;
    r->full = 0;
    return r;
}

/* Index x's entry of the row (NULL: it has none). */
static void recent_key(store_recent *r, size_t x, const store_key *k)
{
    if (!r)
        return;
    r->has[x] = k != NULL;
    if (!k)
        return;
    if (k->len > sizeof(r->keys) - r->used) {
        r->full = 1; /* not remembered: the next update reads the row */
        return;
    }
    memcpy(r->keys + r->used, k->buf, k->len);
    r->off[x] = r->used;
    r->len[x] = (uint16_t)k->len;
    r->used = (uint16_t)(r->used + k->len);
}

static void recent_done(store_recent *r, const store_table *tab, uint64_t id, const void *row)
{
    if (!r || r->full)
        return;
    for (size_t f = 0; f < tab->nfkeys; f++)
        r->fk[f] = row_u64(row, tab->fkeys[f].offset);
    r->id = id;
}

/* A delete may cascade into any table: nothing is remembered after one. */
static void recent_forget_all(store_txn *t)
{
    for (size_t i = 0; t->recent && i < t->s->schema->ntables; i++)
        if (t->recent[i])
            t->recent[i]->id = 0;
}

/* ---- Insert / get / update / delete ------------------------------------------------------------ */

static int next_id(store_txn *t, const store_table *tab, uint64_t *id, store_error *err)
{
    char key[sizeof(STORE_SEQ_PREFIX) + STORE_NAME_MAX];
    int kl = snprintf(key, sizeof(key), STORE_SEQ_PREFIX "%s", tab->name);
    kv_val v;
    uint64_t last = 0;
    int rc = kv_get(t->kv, t->s->meta, (kv_val){key, (size_t)kl}, &v);
    if (rc == KV_OK && v.len == 8)
        last = get_be64(v.data);
    else if (rc != KV_NOTFOUND && rc != KV_OK)
        return store_kv_fail(t, rc, err, "sequence");
    uint8_t b[8];
    be64(b, last + 1);
    rc = kv_put(t->kv, t->s->meta, (kv_val){key, (size_t)kl}, (kv_val){b, 8}, 0);
    if (rc)
        return store_kv_fail(t, rc, err, "sequence");
    *id = last + 1;
    return LAGOON_OK;
}

int store_insert(store_txn *t, const store_table *tab, void *row, uint64_t *id_out,
                 store_error *err)
{
    const store_table_rt *rt;
    int st = need_write(t, err);
    if (!st)
        st = need_rt(t, tab, &rt, err);
    if (st)
        return st;
    /* Validate everything before the first write, so that a failing insert leaves nothing
     * behind even when its caller goes on and commits. */
    if ((st = check_fkeys(t, tab, row, NULL, err)))
        return st;
    uint64_t id = 0;
    kv_val v;
    {
        /* The id is not known yet; MULTI entries never conflict and UNIQUE ones do not
         * contain the id, so a provisional 0 checks everything. */
        for (size_t x = 0; x < tab->nindexes; x++) {
            store_key k;
            int has = store_index_entry(tab, x, row, 0, &k);
            if (has < 0)
                return too_long(tab, &tab->indexes[x], err);
            if (has && tab->indexes[x].kind == STORE_UNIQUE) {
                int rc = kv_get(t->kv, rt->idx[x], (kv_val){k.buf, k.len}, &v);
                if (rc == KV_OK)
                    return conflict(tab, &tab->indexes[x], err);
                if (rc != KV_NOTFOUND)
                    return store_kv_fail(t, rc, err, tab->indexes[x].name);
            }
        }
    }
    if ((st = next_id(t, tab, &id, err)))
        return st;
    row_set_u64(row, tab->id_offset, id);
    const uint8_t *buf;
    size_t len;
    if ((st = row_encode(t, tab, row, &buf, &len, err)))
        return st;
    uint8_t idk[8];
    be64(idk, id);
    int rc = kv_put(t->kv, rt->rows, (kv_val){idk, 8}, (kv_val){buf, len}, KV_NOOVERWRITE);
    if (rc)
        return store_kv_fail(t, rc, err, tab->name);
    store_recent *recent = recent_slot(t, rt);
    for (size_t x = 0; x < tab->nindexes; x++) {
        store_key k;
        int has = store_index_entry(tab, x, row, id, &k) == 1;
        recent_key(recent, x, has ? &k : NULL);
        if (!has)
            continue;
        rc = kv_put(t->kv, rt->idx[x], (kv_val){k.buf, k.len}, (kv_val){idk, 8}, 0);
        if (rc)
            return store_kv_fail(t, rc, err, tab->indexes[x].name);
    }
    if ((st = record(t, tab, id, STORE_INSERTED, err)))
        return st;
    recent_done(recent, tab, id, row);
    if (id_out)
        *id_out = id;
    return LAGOON_OK;
}

int store_get(store_txn *t, const store_table *tab, uint64_t id, void *row, store_error *err)
{
    const store_table_rt *rt;
    int st = need_rt(t, tab, &rt, err);
    if (st)
        return st;
    kv_val v;
    st = get_raw(t, rt->rows, id, &v, err, tab->name);
    if (st == LAGOON_NOT_FOUND)
        return STORE_FAIL(err, LAGOON_NOT_FOUND, NULL, "no %s row with id %llu", tab->name,
                          (unsigned long long)id);
    if (st)
        return st;
    return row_decode(tab, v, row, err);
}

static int index_pos(const store_table *tab, const store_index *idx)
{
    if (idx < tab->indexes || idx >= tab->indexes + tab->nindexes)
        return -1;
    return (int)(idx - tab->indexes);
}

int store_get_by(store_txn *t, const store_table *tab, const store_index *idx, const store_key *key,
                 uint64_t *id_out, void *row, store_error *err)
{
    const store_table_rt *rt;
    int st = need_rt(t, tab, &rt, err);
    if (st)
        return st;
    int x = index_pos(tab, idx);
    if (x < 0 || idx->kind != STORE_UNIQUE)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "store_get_by needs a unique index of %s",
                          tab->name);
    if (key->overflow)
        return too_long(tab, idx, err);
    kv_val v;
    int rc = kv_get(t->kv, rt->idx[x], (kv_val){key->buf, key->len}, &v);
    if (rc == KV_NOTFOUND)
        return STORE_FAIL(err, LAGOON_NOT_FOUND, NULL, "no %s row with this %s", tab->name,
                          idx->field);
    if (rc)
        return store_kv_fail(t, rc, err, idx->name);
    uint64_t id = key_id(v);
    if (id_out)
        *id_out = id;
    if (!row)
        return LAGOON_OK;
    st = store_get(t, tab, id, row, err);
    if (st == LAGOON_NOT_FOUND)
        return STORE_FAIL(err, LAGOON_DATA_LOSS, NULL, "index %s.%s points at missing row %llu",
                          tab->name, idx->name, (unsigned long long)id);
    return st;
}

int store_update(store_txn *t, const store_table *tab, const void *row, store_error *err)
{
    const store_table_rt *rt;
    int st = need_write(t, err);
    if (!st)
        st = need_rt(t, tab, &rt, err);
    if (st)
        return st;
    uint64_t id = row_u64(row, tab->id_offset);
    /* The stored row's index entries and foreign keys: remembered when this write wrote the
     * row last (recent_done), else from the row, read into uncleared memory (decoding sets what
     * it reads; a memset would cost the whole struct, 16 KiB for a message). */
    store_recent *recent = recent_find(t, rt, id);
    void *old = NULL;
    int have_old = 0;
    uint64_t old_fk[STORE_MAX_FKEYS];
    store_key *oldk = malloc(2 * tab->nindexes * sizeof(*oldk) + 1);
    int *oldh = calloc(2 * tab->nindexes + 1, sizeof(*oldh));
    store_key *newk = oldk + tab->nindexes;
    int *newh = oldh + tab->nindexes;
    if (!recent)
        old = malloc(tab->row_size);
    if ((!recent && !old) || !oldk || !oldh) {
        st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        goto out;
    }
    if (recent) {
        memcpy(old_fk, recent->fk, tab->nfkeys * sizeof(old_fk[0]));
        for (size_t x = 0; x < tab->nindexes; x++) {
            store_key_reset(&oldk[x]);
            oldh[x] = recent->has[x];
            if (oldh[x])
                store_key_raw(&oldk[x], recent->keys + recent->off[x], recent->len[x]);
        }
        recent->id = 0; /* until this update has written the row (recent_done below) */
    } else {
        if ((st = store_get(t, tab, id, old, err)))
            goto out;
        have_old = 1;
        for (size_t f = 0; f < tab->nfkeys; f++)
            old_fk[f] = row_u64(old, tab->fkeys[f].offset);
        for (size_t x = 0; x < tab->nindexes; x++)
            oldh[x] = store_index_entry(tab, x, old, id, &oldk[x]);
    }
    if ((st = check_fkeys(t, tab, row, old_fk, err)))
        goto out;
    /* Validate: new keys fit, and changed unique keys are free. */
    for (size_t x = 0; x < tab->nindexes; x++) {
        newh[x] = store_index_entry(tab, x, row, id, &newk[x]);
        if (newh[x] < 0) {
            st = too_long(tab, &tab->indexes[x], err);
            goto out;
        }
        int same = oldh[x] == newh[x] &&
                   (newh[x] == 0 || (oldk[x].len == newk[x].len &&
                                     memcmp(oldk[x].buf, newk[x].buf, newk[x].len) == 0));
        if (same) {
            newh[x] = 2; /* unchanged: leave the entry alone */
            continue;
        }
        if (newh[x] == 1 && tab->indexes[x].kind == STORE_UNIQUE) {
            kv_val v;
            int rc = kv_get(t->kv, rt->idx[x], (kv_val){newk[x].buf, newk[x].len}, &v);
            if (rc == KV_OK && key_id(v) != id) {
                st = conflict(tab, &tab->indexes[x], err);
                goto out;
            }
            if (rc != KV_OK && rc != KV_NOTFOUND) {
                st = store_kv_fail(t, rc, err, tab->indexes[x].name);
                goto out;
            }
        }
    }
    const uint8_t *buf;
    size_t len;
    if ((st = row_encode(t, tab, row, &buf, &len, err)))
        goto out;
    uint8_t idk[8];
    be64(idk, id);
    int rc = kv_put(t->kv, rt->rows, (kv_val){idk, 8}, (kv_val){buf, len}, 0);
    if (rc) {
        st = store_kv_fail(t, rc, err, tab->name);
        goto out;
    }
    /* Remove every changed entry first, then add: two indexes' entries never interact, but an
     * entry moving within one unique index must not trip over itself. */
    for (size_t x = 0; x < tab->nindexes; x++) {
        if (newh[x] == 2 || oldh[x] != 1)
            continue;
        rc = kv_del(t->kv, rt->idx[x], (kv_val){oldk[x].buf, oldk[x].len});
        if (rc && rc != KV_NOTFOUND) {
            st = store_kv_fail(t, rc, err, tab->indexes[x].name);
            goto out;
        }
    }
    for (size_t x = 0; x < tab->nindexes; x++) {
        if (newh[x] != 1)
            continue;
        rc = kv_put(t->kv, rt->idx[x], (kv_val){newk[x].buf, newk[x].len}, (kv_val){idk, 8}, 0);
        if (rc) {
            st = store_kv_fail(t, rc, err, tab->indexes[x].name);
            goto out;
        }
    }
    st = record(t, tab, id, STORE_UPDATED, err);
    if (st == LAGOON_OK) {
        store_recent *r = recent_slot(t, rt);
        for (size_t x = 0; x < tab->nindexes; x++)
            recent_key(r, x, newh[x] ? &newk[x] : NULL);
        recent_done(r, tab, id, row);
    }
out:
    if (have_old)
        store_row_release(tab, old);
    free(old);
    free(oldk);
    free(oldh);
    return st;
}

/* Ids of the rows of child table rt whose foreign key fk holds parent_id, found through
 * fk->by_parent (keys that start with the parent id). */
static int children(store_txn *t, const store_table_rt *crt, const store_fkey *fk,
                    uint64_t parent_id, uint64_t **ids, size_t *n, store_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    int x = index_pos(crt->decl, fk->by_parent);
    uint8_t prefix[8];
    be64(prefix, parent_id);
    kv_cursor *c;
    int rc = kv_cursor_open(t->kv, crt->idx[x], &c);
    if (rc)
        return store_kv_fail(t, rc, err, fk->by_parent->name);
    kv_val k = {prefix, 8}, v;
    int st = LAGOON_OK;
    for (rc = kv_cursor_get(c, &k, &v, KV_SEEK); rc == KV_OK; rc = kv_cursor_get(c, &k, &v, KV_NEXT)) {
        if (k.len < 8 || memcmp(k.data, prefix, 8) != 0)
            break;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(*ids, cap * sizeof(*nv));
            if (!nv) {
                st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
                break;
            }
            *ids = nv;
        }
        (*ids)[(*n)++] = key_id(v);
    }
    if (st == LAGOON_OK && rc != KV_OK && rc != KV_NOTFOUND)
        st = store_kv_fail(t, rc, err, fk->by_parent->name);
    kv_cursor_close(c);
    if (st) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return st;
}

/* Check pass of a delete: would it hit a RESTRICT anywhere down the cascade? */
static int delete_check(store_txn *t, const store_table_rt *rt, uint64_t id, int depth,
                        store_error *err)
{
    if (depth > STORE_CASCADE_DEPTH_MAX)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                          "cascade from %s deeper than %d levels", rt->decl->name,
                          STORE_CASCADE_DEPTH_MAX);
    for (size_t r = 0; r < rt->nrefs; r++) {
        const store_fkey *fk = rt->refs[r].fk;
        uint64_t *ids;
        size_t n;
        int st = children(t, rt->refs[r].child, fk, id, &ids, &n, err);
        if (st)
            return st;
        if (n && fk->on_delete == STORE_RESTRICT) {
            free(ids);
            return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, fk->field,
                              "%s row %llu is still referenced by %zu %s row(s) through %s",
                              rt->decl->name, (unsigned long long)id, n,
                              rt->refs[r].child->decl->name, fk->field);
        }
        for (size_t i = 0; i < n && st == LAGOON_OK; i++)
            st = delete_check(t, rt->refs[r].child, ids[i], depth + 1, err);
        free(ids);
        if (st)
            return st;
    }
    return LAGOON_OK;
}

/* Apply pass: children first (their foreign keys point at this row), then the row. A row
 * reached twice (through two foreign keys) is simply gone the second time. */
static int delete_apply(store_txn *t, const store_table_rt *rt, uint64_t id, int depth,
                        store_error *err)
{
    const store_table *tab = rt->decl;
    for (size_t r = 0; r < rt->nrefs; r++) {
        uint64_t *ids;
        size_t n;
        int st = children(t, rt->refs[r].child, rt->refs[r].fk, id, &ids, &n, err);
        for (size_t i = 0; i < n && st == LAGOON_OK; i++)
            st = delete_apply(t, rt->refs[r].child, ids[i], depth + 1, err);
        free(ids);
        if (st)
            return st;
    }
    kv_val v;
    int st = get_raw(t, rt->rows, id, &v, err, tab->name);
    if (st == LAGOON_NOT_FOUND && depth > 0)
        return LAGOON_OK;
    if (st == LAGOON_NOT_FOUND)
        return STORE_FAIL(err, LAGOON_NOT_FOUND, NULL, "no %s row with id %llu", tab->name,
                          (unsigned long long)id);
    if (st)
        return st;
    void *row = calloc(1, tab->row_size);
    if (!row)
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    if ((st = row_decode(tab, v, row, err))) {
        free(row);
        return st;
    }
    for (size_t x = 0; x < tab->nindexes && st == LAGOON_OK; x++) {
        store_key k;
        if (store_index_entry(tab, x, row, id, &k) != 1)
            continue;
        int rc = kv_del(t->kv, rt->idx[x], (kv_val){k.buf, k.len});
        if (rc && rc != KV_NOTFOUND)
            st = store_kv_fail(t, rc, err, tab->indexes[x].name);
    }
    store_row_release(tab, row);
    free(row);
    if (st)
        return st;
    uint8_t idk[8];
    be64(idk, id);
    int rc = kv_del(t->kv, rt->rows, (kv_val){idk, 8});
    if (rc)
        return store_kv_fail(t, rc, err, tab->name);
    return record(t, tab, id, STORE_DELETED, err);
}

int store_delete(store_txn *t, const store_table *tab, uint64_t id, store_error *err)
{
    const store_table_rt *rt;
    int st = need_write(t, err);
    if (!st)
        st = need_rt(t, tab, &rt, err);
    if (st)
        return st;
    kv_val v;
    st = get_raw(t, rt->rows, id, &v, err, tab->name);
    if (st == LAGOON_NOT_FOUND)
        return STORE_FAIL(err, LAGOON_NOT_FOUND, NULL, "no %s row with id %llu", tab->name,
                          (unsigned long long)id);
    if (st)
        return st;
    if ((st = delete_check(t, rt, id, 0, err)))
        return st;
    recent_forget_all(t);
    return delete_apply(t, rt, id, 0, err);
}

/* ---- Scans ---------------------------------------------------------------------------------- */

static int has_prefix(kv_val k, const uint8_t *p, size_t n)
{
    return k.len >= n && (n == 0 || memcmp(k.data, p, n) == 0);
}

static int key_eq(kv_val k, const uint8_t *p, size_t n)
{
    return k.len == n && memcmp(k.data, p, n) == 0;
}

/* A fingerprint of everything that defines the query, so that a token only continues the query
 * that produced it. */
static uint64_t query_fingerprint(const store_query *q)
{
    crypto_generichash_state h;
    uint8_t out[8];
    crypto_generichash_init(&h, NULL, 0, sizeof(out));
    crypto_generichash_update(&h, (const uint8_t *)q->table->name, strlen(q->table->name) + 1);
    const char *ix = q->index ? q->index->name : "";
    crypto_generichash_update(&h, (const uint8_t *)ix, strlen(ix) + 1);
    uint8_t rev = q->reverse ? 1 : 0;
    crypto_generichash_update(&h, &rev, 1);
    uint8_t len[8];
    be64(len, q->prefix_len);
    crypto_generichash_update(&h, len, 8);
    if (q->prefix_len)
        crypto_generichash_update(&h, q->prefix, q->prefix_len);
    if (q->start_len)
        crypto_generichash_update(&h, q->start, q->start_len);
    crypto_generichash_final(&h, out, sizeof(out));
    return get_be64(out);
}

/* A token is sealed (crypto_secretbox: XSalsa20-Poly1305, a random nonce first), not only
 * MACed: the key inside names the row the page stopped at, and a list that filters rows as it
 * reads (Videos/ListByUser, Videos/Search) may stop at a row its caller may not see. */
#define TOKEN_SEAL_BYTES (crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES)
#define TOKEN_RAW_MAX (lagoon_v1_StorePageToken_size + TOKEN_SEAL_BYTES)
_Static_assert(STORE_TOKEN_KEY_BYTES == crypto_secretbox_KEYBYTES, "the token key is the box's key");

static int token_make(store *s, uint64_t fp, kv_val after, char *out, size_t cap,
                      store_error *err)
{
    lagoon_v1_StorePageToken tok = lagoon_v1_StorePageToken_init_zero;
    if (after.len > sizeof(tok.after.bytes))
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "key too long for a page token");
    tok.query = fp;
    tok.after.size = (pb_size_t)after.len;
    memcpy(tok.after.bytes, after.data, after.len);
    uint8_t plain[lagoon_v1_StorePageToken_size], raw[TOKEN_RAW_MAX];
    long n = wire_encode(&lagoon_v1_StorePageToken_info, &tok, plain, sizeof(plain), NULL);
    if (n < 0)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "cannot encode a page token");
    randombytes_buf(raw, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(raw + crypto_secretbox_NONCEBYTES, plain, (unsigned long long)n, raw, s->token_key);
    n += TOKEN_SEAL_BYTES;
    if (sodium_base64_encoded_len((size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING) > cap)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "page token too long");
    sodium_bin2base64(out, cap, raw, (size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return LAGOON_OK;
}

static int bad_token(store_error *err, const char *why)
{
    return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "page_token", "invalid page token: %s", why);
}

static int token_open(store *s, const char *token, uint64_t fp, lagoon_v1_StorePageToken *tok,
                      store_error *err)
{
    size_t len = strnlen(token, STORE_PAGE_TOKEN_MAX + 1);
    if (len > STORE_PAGE_TOKEN_MAX)
        return bad_token(err, "too long");
    uint8_t raw[TOKEN_RAW_MAX];
    size_t n;
    if (sodium_base642bin(raw, sizeof(raw), token, len, NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return bad_token(err, "not base64url");
    if (n <= TOKEN_SEAL_BYTES)
        return bad_token(err, "too short");
    uint8_t plain[TOKEN_RAW_MAX];
    if (!s->have_token_key ||
        crypto_secretbox_open_easy(plain, raw + crypto_secretbox_NONCEBYTES,
                                   (unsigned long long)(n - crypto_secretbox_NONCEBYTES), raw, s->token_key) != 0)
        return bad_token(err, "not issued by this server");
    n -= TOKEN_SEAL_BYTES;
    wire_violation v;
    memset(tok, 0, sizeof(*tok));
    if (wire_decode_trusted(&lagoon_v1_StorePageToken_info, plain, n, tok, &v))
        return bad_token(err, "damaged");
    if (tok->query != fp)
        return bad_token(err, "it belongs to another query");
    return LAGOON_OK;
}

/* The smallest key greater than every key starting with p[0..n): p with its last non-0xFF byte
 * incremented and the rest cut. 0 when there is none (p is all 0xFF). */
static size_t prefix_successor(const uint8_t *p, size_t n, uint8_t *out)
{
    while (n > 0 && p[n - 1] == 0xFF)
        n--;
    if (n == 0)
        return 0;
    memcpy(out, p, n);
    out[n - 1]++;
    return n;
}

/* Positions c on the first entry of the scan; KV_NOTFOUND when there is none. */
static int scan_position(kv_cursor *c, const store_query *q, const uint8_t *after, size_t after_len,
                         int have_after, kv_val *k, kv_val *v)
{
    int rc;
    if (have_after || (q->start_len && !q->reverse)) {
        /* Forward from a start key: the first key >= start (keys extending start included).
         * From a token, either way: strictly after the last key delivered. */
        const uint8_t *p = have_after ? after : q->start;
        size_t n = have_after ? after_len : q->start_len;
        *k = (kv_val){p, n};
        rc = kv_cursor_get(c, k, v, KV_SEEK);
        if (!q->reverse) {
            if (rc == KV_OK && have_after && key_eq(*k, p, n))
                rc = kv_cursor_get(c, k, v, KV_NEXT);
            return rc;
        }
        if (rc == KV_NOTFOUND)
            return kv_cursor_get(c, k, v, KV_LAST);
        if (rc == KV_OK)
            rc = kv_cursor_get(c, k, v, KV_PREV);
        return rc;
    }
    /* Backward from the end of a range: the last key starting with start (inclusive, keys
     * extending it included) or with the prefix. */
    const uint8_t *bound = q->start_len ? q->start : q->prefix;
    size_t bound_len = q->start_len ? q->start_len : q->prefix_len;
    if (q->reverse) {
        uint8_t succ[STORE_KEY_MAX + 8];
        size_t sn = bound_len ? prefix_successor(bound, bound_len, succ) : 0;
        if (!sn)
            return kv_cursor_get(c, k, v, KV_LAST);
        *k = (kv_val){succ, sn};
        rc = kv_cursor_get(c, k, v, KV_SEEK);
        if (rc == KV_NOTFOUND)
            return kv_cursor_get(c, k, v, KV_LAST);
        if (rc == KV_OK)
            rc = kv_cursor_get(c, k, v, KV_PREV);
        return rc;
    }
    if (!q->prefix_len)
        return kv_cursor_get(c, k, v, KV_FIRST);
    *k = (kv_val){q->prefix, q->prefix_len};
    return kv_cursor_get(c, k, v, KV_SEEK);
}

int store_scan(store_txn *t, const store_query *q, store_row_fn fn, void *arg, store_page *page,
               store_error *err)
{
    page->count = 0;
    page->next_page_token[0] = '\0';
    const store_table_rt *rt;
    int st = need_rt(t, q->table, &rt, err);
    if (st)
        return st;
    const store_table *tab = q->table;
    int x = -1;
    if (q->index && (x = index_pos(tab, q->index)) < 0)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "index is not one of table %s", tab->name);
    uint32_t size = q->page_size ? q->page_size : STORE_PAGE_SIZE_DEFAULT;
    if (size > STORE_PAGE_SIZE_MAX)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "page_size", "page_size is at most %d",
                          STORE_PAGE_SIZE_MAX);
    int have_token = q->page_token && q->page_token[0];
    if (have_token && q->page_number)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "page_number",
                          "give either page_token or page_number, not both");
    if (q->prefix_len > STORE_KEY_MAX + 8 || q->start_len > STORE_KEY_MAX + 8)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL, "scan prefix or start too long");
    if (q->start_len && !has_prefix((kv_val){q->start, q->start_len}, q->prefix, q->prefix_len))
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL, "scan start is outside its prefix");
    uint64_t skip = 0;
    if (q->page_number) {
        skip = (uint64_t)(q->page_number - 1) * size;
        if (skip > STORE_OFFSET_MAX)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "page_number",
                              "page %u is too deep for offset paging (at most %d rows are "
                              "skipped): use page tokens",
                              q->page_number, STORE_OFFSET_MAX);
    }
    uint64_t fp = query_fingerprint(q);
    lagoon_v1_StorePageToken tok = lagoon_v1_StorePageToken_init_zero;
    if (have_token) {
        if ((st = token_open(t->s, q->page_token, fp, &tok, err)))
            return st;
        if (!has_prefix((kv_val){tok.after.bytes, tok.after.size}, q->prefix, q->prefix_len))
            return bad_token(err, "outside the query's range");
    }

    kv_db db = x >= 0 ? rt->idx[x] : rt->rows;
    kv_cursor *c;
    int rc = kv_cursor_open(t->kv, db, &c);
    if (rc)
        return store_kv_fail(t, rc, err, tab->name);
    void *row = calloc(1, tab->row_size);
    uint8_t last[STORE_KEY_MAX + 8];
    size_t last_len = 0;
    if (!row) {
        kv_cursor_close(c);
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    kv_val k, v;
    enum kv_cursor_op step = q->reverse ? KV_PREV : KV_NEXT;
    rc = scan_position(c, q, tok.after.bytes, have_token ? tok.after.size : 0, have_token, &k, &v);
    for (; rc == KV_OK && skip > 0 && has_prefix(k, q->prefix, q->prefix_len); skip--)
        rc = kv_cursor_get(c, &k, &v, step);
    while (rc == KV_OK && page->count < size && has_prefix(k, q->prefix, q->prefix_len)) {
        uint64_t id;
        kv_val rv = v;
        if (x >= 0) {
            id = key_id(v);
            st = fn ? get_raw(t, rt->rows, id, &rv, err, tab->name) : LAGOON_OK; /* fn NULL: keys only */
            if (st == LAGOON_NOT_FOUND)
                st = STORE_FAIL(err, LAGOON_DATA_LOSS, NULL,
                                "index %s.%s points at missing row %llu (run lagoon-admin verify)",
                                tab->name, q->index->name, (unsigned long long)id);
            if (st)
                break;
        } else {
            id = key_id(k);
        }
        if (k.len > sizeof(last)) {
            st = STORE_FAIL(err, LAGOON_DATA_LOSS, NULL, "oversized key in %s", tab->name);
            break;
        }
        memcpy(last, k.data, k.len);
        last_len = k.len;
        if (fn && (st = row_decode(tab, rv, row, err)))
            break;
        st = fn ? fn(arg, id, row) : LAGOON_OK;
        if (fn)
            store_row_release(tab, row);
        if (st) {
            if (err && err->code != st)
                store_fail(err, st, NULL, "scan stopped: %s", lagoon_status_name(st));
            break;
        }
        page->count++;
        rc = kv_cursor_get(c, &k, &v, step);
    }
    if (st == LAGOON_OK && rc != KV_OK && rc != KV_NOTFOUND)
        st = store_kv_fail(t, rc, err, tab->name);
    /* A next page exists only if the entry after the last one delivered is still in range;
     * offset paging has page numbers instead. */
    if (st == LAGOON_OK && rc == KV_OK && page->count == size && !q->page_number &&
        has_prefix(k, q->prefix, q->prefix_len))
        st = token_make(t->s, fp, (kv_val){last, last_len}, page->next_page_token,
                        sizeof(page->next_page_token), err);
    free(row);
    kv_cursor_close(c);
    return st;
}
