/* store: opening, the writer thread (group commit), reads, map growth, subscribers. */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "lagoon_idl.h"

struct store_op {
    store_op *next;
    store_write_fn fn;
    void *arg;
    store_done_fn done;
    void *done_arg;
    int status;
    store_error err;
};

/* ---- Errors ---------------------------------------------------------------------------------- */

int store_fail(store_error *err, int code, const char *field, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

static void err_clear(store_error *err)
{
    if (!err)
        return;
    err->code = LAGOON_OK;
    err->field[0] = '\0';
    err->message[0] = '\0';
}

/* ---- Schema checks ------------------------------------------------------------------------ */

static int valid_name(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > STORE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

static int table_pos(const store_schema *sc, const store_table *tab)
{
    for (size_t i = 0; i < sc->ntables; i++)
        if (sc->tables[i] == tab)
            return (int)i;
    return -1;
}

static int check_schema(const store_schema *sc, store_error *err)
{
    if (!sc || (sc->ntables && !sc->tables))
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema", "no schema given");
    if (sc->ntables > STORE_MAX_TABLES)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema", "%zu tables, at most %d",
                          sc->ntables, STORE_MAX_TABLES);
    for (size_t i = 0; i < sc->ntables; i++) {
        const store_table *t = sc->tables[i];
        if (!t || !valid_name(t->name) || !t->msg || !t->row_size ||
            t->id_offset + sizeof(uint64_t) > t->row_size)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                              "table %zu is incompletely declared", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(sc->tables[j]->name, t->name) == 0)
                return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                                  "table name %s declared twice", t->name);
        if (t->nindexes > STORE_MAX_INDEXES || t->nfkeys > STORE_MAX_FKEYS)
            return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                              "table %s: too many indexes or foreign keys", t->name);
        for (size_t x = 0; x < t->nindexes; x++) {
            const store_index *ix = &t->indexes[x];
            if (!valid_name(ix->name) || !ix->key || !ix->field ||
                (ix->kind != STORE_UNIQUE && ix->kind != STORE_MULTI))
                return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                                  "table %s: index %zu is incompletely declared", t->name, x);
            for (size_t y = 0; y < x; y++)
                if (strcmp(t->indexes[y].name, ix->name) == 0)
                    return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                                      "table %s: index %s declared twice", t->name, ix->name);
        }
        for (size_t f = 0; f < t->nfkeys; f++) {
            const store_fkey *fk = &t->fkeys[f];
            int own_index = fk->by_parent >= t->indexes && fk->by_parent < t->indexes + t->nindexes;
            if (!fk->field || table_pos(sc, fk->parent) < 0 || !own_index ||
                fk->offset + sizeof(uint64_t) > t->row_size ||
                (fk->on_delete != STORE_RESTRICT && fk->on_delete != STORE_CASCADE))
                return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                                  "table %s: foreign key %zu is incompletely declared (its parent "
                                  "must be in the schema, by_parent one of the table's indexes)",
                                  t->name, f);
        }
    }
    return LAGOON_OK;
}

const store_table_rt *store_rt(const store *s, const store_table *tab)
{
    for (size_t i = 0; i < s->schema->ntables; i++)
        if (s->tables[i].decl == tab)
            return &s->tables[i];
    return NULL;
}

void store_txn_free(store_txn *t)
{
    free(t->changes);
    t->changes = NULL;
    if (t->recent) {
        for (size_t i = 0; i < t->s->schema->ntables; i++)
            free(t->recent[i]);
        free(t->recent);
        t->recent = NULL;
    }
}

/* ---- Resize gate ------------------------------------------------------------------------------ */

void store_gate_enter_read(store *s)
{
    pthread_mutex_lock(&s->gate_mu);
    while (s->gate_resizing)
        pthread_cond_wait(&s->gate_cv, &s->gate_mu);
    s->gate_readers++;
    pthread_mutex_unlock(&s->gate_mu);
}

void store_gate_leave_read(store *s)
{
    pthread_mutex_lock(&s->gate_mu);
    if (--s->gate_readers == 0)
        pthread_cond_broadcast(&s->gate_cv);
    pthread_mutex_unlock(&s->gate_mu);
}

/* Runs with no read transaction of this process open: LMDB's rule for mdb_env_set_mapsize. The
 * caller holds no write transaction either. bytes == 0 adopts another process's size. */
static int gate_resize(store *s, uint64_t bytes)
{
    pthread_mutex_lock(&s->gate_mu);
    while (s->gate_resizing) /* another thread adopts a size right now */
        pthread_cond_wait(&s->gate_cv, &s->gate_mu);
    s->gate_resizing = 1;
    while (s->gate_readers > 0)
        pthread_cond_wait(&s->gate_cv, &s->gate_mu);
    int rc = bytes ? kv_env_set_map_size(s->env, (size_t)bytes) : kv_env_adopt_size(s->env);
    kv_env_info info;
    if (rc == KV_OK && kv_env_info_get(s->env, &info) == KV_OK) {
        pthread_mutex_lock(&s->q_mu);
        s->map_size = info.map_size;
        s->counters.map_growths += bytes ? 1 : 0;
        pthread_mutex_unlock(&s->q_mu);
    }
    s->gate_resizing = 0;
    pthread_cond_broadcast(&s->gate_cv);
    pthread_mutex_unlock(&s->gate_mu);
    return rc;
}

/* Doubles the map (at least +16 MiB) up to the configured maximum. 0 when it grew. */
static int grow_map(store *s)
{
    pthread_mutex_lock(&s->q_mu);
    uint64_t cur = s->map_size;
    pthread_mutex_unlock(&s->q_mu);
    if (cur >= s->cfg.map_size_max)
        return -1;
    uint64_t next = cur * 2;
    if (next < cur + (16ull << 20))
        next = cur + (16ull << 20);
    if (next > s->cfg.map_size_max)
        next = s->cfg.map_size_max;
    return gate_resize(s, next) == KV_OK ? 0 : -1;
}

/* ---- Reads --------------------------------------------------------------------------------- */

/* Reused read transactions. Beginning an LMDB read transaction allocates and clears it (a few
 * KiB with this schema's number of databases), and most calls read twice. Instead each thread
 * keeps, per store, one read transaction that store_read_end resets and the next
 * store_read_begin renews (mdb_txn_reset / mdb_txn_renew): no allocation, and a renewed
 * transaction reads the latest commit exactly as a new one would.
 *
 * Ownership. The store owns the cached transactions of every thread (s->readers, under
 * readers_mu) and aborts them all in store_close before the environment closes, whether their
 * threads still run or are gone. A thread names its cached transactions in thread-local
 * entries {store id, reader} and follows an entry only for the store it is reading from, which
 * is open, so that reader still exists; an entry of a closed store is never followed, and since
 * ids are never reused it cannot match a store opened later at the same address. A thread that
 * exits gives its transactions back (a pthread key destructor), after checking under readers_mu
 * which of its stores are still open.
 *
 * What stays as it was:
 * - Map growth. A reset transaction holds no snapshot and nothing of the map (renewing copies
 *   the database roots from the current map again), so it is not active in the sense of
 *   mdb_env_set_mapsize; the resize gate counts begun reads only, and a resize still waits for
 *   every begun read to end.
 * - A second read on a thread while its first is open gets a transaction of its own (the
 *   cached one is in use), as does a read beyond the store's share of the reader table.
 * - The reader table. With MDB_NOTLS the slot belongs to the transaction, so each cached one
 *   keeps a slot while its thread lives and the store is open: at most readers_cap per store
 *   (STORE_READERS_CACHED_SHARE). */
struct store_reader {
    store_txn txn;             /* txn.reader == this; txn.kv NULL until the first read */
    atomic_int in_use;         /* 1 from store_read_begin to store_read_end (either thread) */
    store_reader *prev, *next; /* in the store's list */
};

typedef struct thread_readers {
    struct {
        uint64_t store_id; /* 0: a free entry */
        store_reader *r;   /* NULL: this thread reads from that store without reuse (share full) */
        uint64_t used;     /* tick of the last read, to choose the entry to give up */
    } e[STORE_THREAD_READERS];
    uint64_t tick;
    int armed; /* the exit destructor will run for this thread */
} thread_readers;

static _Thread_local thread_readers tls_readers;
static pthread_mutex_t readers_mu = PTHREAD_MUTEX_INITIALIZER;
static store *open_stores;     /* under readers_mu */
static uint64_t last_reader_id; /* under readers_mu */
static pthread_once_t readers_once = PTHREAD_ONCE_INIT;
static pthread_key_t readers_key;
static int readers_key_ok;

/* Under readers_mu. */
static store *open_store(uint64_t id)
{
    for (store *s = open_stores; s; s = s->next_open)
        if (s->reader_id == id)
            return s;
    return NULL;
}

/* Under readers_mu: unlinks r from s and frees it with its transaction. */
static void reader_free(store *s, store_reader *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->readers = r->next;
    if (r->next)
        r->next->prev = r->prev;
    s->readers_cached--;
    kv_txn_abort(r->txn.kv);
    free(r);
}

/* The pthread key destructor: the exiting thread's cached transactions of stores still open. */
static void thread_readers_exit(void *arg)
{
    thread_readers *tr = arg;
    pthread_mutex_lock(&readers_mu);
    for (int i = 0; i < STORE_THREAD_READERS; i++) {
        store *s = tr->e[i].store_id && tr->e[i].r ? open_store(tr->e[i].store_id) : NULL;
        /* One still in use is a read this thread never ended (or handed to another thread):
         * store_close frees it. */
        if (s && !atomic_load_explicit(&tr->e[i].r->in_use, memory_order_acquire))
            reader_free(s, tr->e[i].r);
        tr->e[i].store_id = 0;
        tr->e[i].r = NULL;
    }
    tr->armed = 0;
    pthread_mutex_unlock(&readers_mu);
}

static void readers_key_make(void)
{
    readers_key_ok = pthread_key_create(&readers_key, thread_readers_exit) == 0;
}

/* The first read of this thread from s (or the first after its entry was given up): a new cached
 * transaction, or NULL to read with one of its own. */
static store_reader *reader_attach(store *s, thread_readers *tr)
{
    pthread_once(&readers_once, readers_key_make);
    if (!readers_key_ok)
        return NULL; /* an exiting thread could not give its slot back */
    store_reader *r = NULL;
    pthread_mutex_lock(&readers_mu);
    if (!tr->armed) {
        if (pthread_setspecific(readers_key, tr) != 0)
            goto out;
        tr->armed = 1;
    }
    int slot = -1;
    for (int i = 0; i < STORE_THREAD_READERS; i++) {
        if (tr->e[i].store_id && !open_store(tr->e[i].store_id))
            tr->e[i].store_id = 0; /* that store closed and freed the reader */
        if (!tr->e[i].store_id && slot < 0)
            slot = i;
    }
    if (slot < 0) {
        /* Busy with more stores than entries: give up the least recently used entry whose
         * transaction is not in use (every entry left names an open store). */
        for (int i = 0; i < STORE_THREAD_READERS; i++)
            if ((!tr->e[i].r || !atomic_load_explicit(&tr->e[i].r->in_use, memory_order_acquire)) &&
                (slot < 0 || tr->e[i].used < tr->e[slot].used))
                slot = i;
        if (slot < 0)
            goto out;
        if (tr->e[slot].r)
            reader_free(open_store(tr->e[slot].store_id), tr->e[slot].r);
        tr->e[slot].store_id = 0;
    }
    tr->e[slot].used = ++tr->tick;
    if (s->readers_cached >= s->readers_cap) {
        /* The share is taken: remember that this thread reads s without reuse, so that its
         * next reads do not come back here. */
        tr->e[slot].store_id = s->reader_id;
        tr->e[slot].r = NULL;
        goto out;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        goto out;
    r->txn.s = s;
    r->txn.reader = r;
    r->next = s->readers;
    if (r->next)
        r->next->prev = r;
    s->readers = r;
    s->readers_cached++;
    tr->e[slot].store_id = s->reader_id;
    tr->e[slot].r = r;
out:
    pthread_mutex_unlock(&readers_mu);
    return r;
}

/* This thread's cached transaction for s, NULL when it has none. */
static store_reader *reader_for(store *s)
{
    thread_readers *tr = &tls_readers;
    for (int i = 0; i < STORE_THREAD_READERS; i++) {
        if (tr->e[i].store_id == s->reader_id) {
            tr->e[i].used = ++tr->tick;
            return tr->e[i].r;
        }
    }
    return reader_attach(s, tr);
}

/* Makes s known to reading threads (at the end of store_open): ids start at 1, and 0 marks a
 * free entry. */
static void readers_list(store *s, unsigned max_readers)
{
    pthread_mutex_lock(&readers_mu);
    s->reader_id = ++last_reader_id;
    s->readers_cap = max_readers / STORE_READERS_CACHED_SHARE;
    s->next_open = open_stores;
    open_stores = s;
    s->listed = 1;
    pthread_mutex_unlock(&readers_mu);
}

/* Before the environment closes: every cached transaction of every thread, living or gone. */
static void readers_unlist(store *s)
{
    pthread_mutex_lock(&readers_mu);
    if (s->listed) {
        store **p = &open_stores;
        while (*p != s)
            p = &(*p)->next_open;
        *p = s->next_open;
        s->listed = 0;
    }
    store_reader *next;
    for (store_reader *r = s->readers; r; r = next) {
        next = r->next;
        kv_txn_abort(r->txn.kv);
        free(r);
    }
    s->readers = NULL;
    s->readers_cached = 0;
    pthread_mutex_unlock(&readers_mu);
}

unsigned store_readers_cached(store *s)
{
    pthread_mutex_lock(&readers_mu);
    unsigned n = s->readers_cached;
    pthread_mutex_unlock(&readers_mu);
    return n;
}

/* Begins a read in *txn, or renews *txn when it is a reset transaction. */
static int txn_begin_read(store *s, kv_txn **txn, store_error *err)
{
    for (int attempt = 0;; attempt++) {
        store_gate_enter_read(s);
        int rc = *txn ? kv_txn_renew(*txn) : kv_txn_begin(s->env, NULL, KV_TXN_READ, txn);
        if (rc == KV_OK)
            return LAGOON_OK;
        store_gate_leave_read(s);
        if (rc == KV_RESIZED && attempt < 3) {
            gate_resize(s, 0); /* another process grew the map: follow it (a reset txn may stay) */
            continue;
        }
        if (*txn) {
            /* Whatever broke it, do not keep a transaction that could fail every next read. */
            kv_txn_abort(*txn);
            *txn = NULL;
        }
        return store_kv_fail(NULL, rc, err, "cannot start a read");
    }
}

int store_read_begin(store *s, store_txn **out, store_error *err)
{
    *out = NULL;
    store_reader *r = reader_for(s);
    if (r && !atomic_exchange_explicit(&r->in_use, 1, memory_order_acquire)) {
        int st = txn_begin_read(s, &r->txn.kv, err);
        if (st) {
            atomic_store_explicit(&r->in_use, 0, memory_order_release);
            return st;
        }
        *out = &r->txn;
        return LAGOON_OK;
    }
    /* A second read while this thread's first is open, or no transaction to reuse. */
    store_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = txn_begin_read(s, &t->kv, err);
    if (st) {
        free(t);
        return st;
    }
    t->s = s;
    *out = t;
    return LAGOON_OK;
}

void store_read_end(store_txn *t)
{
    if (!t)
        return;
    store *s = t->s;
    if (t->reader) {
        /* Reset before leaving the gate: a resize may start as soon as the gate is left. */
        kv_txn_reset(t->kv);
        store_gate_leave_read(s);
        atomic_store_explicit(&t->reader->in_use, 0, memory_order_release);
        return;
    }
    kv_txn_abort(t->kv);
    store_gate_leave_read(s);
    free(t);
}

/* ---- The writer ------------------------------------------------------------------------------ */

typedef struct change_list {
    store_change *v;
    size_t n, cap;
} change_list;

static int change_list_append(change_list *cl, const store_change *c, size_t n)
{
    if (n == 0)
        return 0;
    if (cl->n + n > cl->cap) {
        size_t cap = cl->cap ? cl->cap : 64;
        while (cap < cl->n + n)
            cap *= 2;
        store_change *v = realloc(cl->v, cap * sizeof(*v));
        if (!v)
            return -1;
        cl->v = v;
        cl->cap = cap;
    }
    memcpy(cl->v + cl->n, c, n * sizeof(*c));
    cl->n += n;
    return 0;
}

static void op_set(store_op *op, int status, const store_error *err)
{
    if (status < 0 || status > LAGOON_STATUS_MAX) {
        /* A write function returned something that is not a status: callers pass statuses
         * on to clients, so give them one that says "our bug". */
        op->err.field[0] = '\0';
        snprintf(op->err.message, sizeof(op->err.message), "write returned status %d", status);
        status = LAGOON_INTERNAL;
        err = &op->err;
    }
    op->status = status;
    if (err != &op->err) {
        if (err)
            op->err = *err;
        else
            err_clear(&op->err);
    }
    op->err.code = status;
    if (status != LAGOON_OK && !op->err.message[0])
        snprintf(op->err.message, sizeof(op->err.message), "write failed: %s",
                 lagoon_status_name(status));
}

enum batch_result { BATCH_DONE, BATCH_REPLAY, BATCH_NESTED };

/* Starts the batch's transaction. 0, or -1 with every op failed. */
static int batch_begin(store *s, store_op **ops, size_t n, kv_txn **parent)
{
    int rc;
    for (int attempt = 0;; attempt++) {
        rc = kv_txn_begin(s->env, NULL, 0, parent);
        if (rc == KV_RESIZED && attempt < 3) {
            gate_resize(s, 0);
            continue;
        }
        break;
    }
    if (rc) {
        store_error e;
        int st = store_kv_fail(NULL, rc, &e, "cannot start a write");
        for (size_t i = 0; i < n; i++)
            op_set(ops[i], st, &e);
        return -1;
    }
    return 0;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Commits the batch's transaction: a failure fails every op. Times the commit (its fsync) into
 * s->commit_ns for the histogram. */
static enum batch_result batch_commit(store *s, kv_txn *parent, store_op **ops, size_t n, int may_grow,
                                      change_list *changes)
{
    int64_t started = mono_ns();
    int rc = kv_txn_commit(parent);
    s->commit_ns = mono_ns() - started;
    if (rc == KV_MAP_FULL && may_grow)
        return BATCH_REPLAY;
    if (rc) {
        store_error e;
        int st = store_kv_fail(NULL, rc, &e, "cannot commit");
        for (size_t i = 0; i < n; i++)
            op_set(ops[i], st, &e);
        changes->n = 0;
    }
    return BATCH_DONE;
}

/* Runs ops[0..n) straight in one transaction. A nested transaction per op (run_nested) copies
 * every page the op touches that the batch has already changed, which for small writes costs
 * more than the writes themselves; without one, though, a failed op's changes cannot be dropped
 * alone. So: BATCH_NESTED when an op fails in a batch of several (nothing is committed; the
 * caller runs the batch again with run_nested: write functions redo the same work when run
 * again, as for a replay after the map grew). A batch of one needs no nesting at all: its
 * failure aborts the transaction. */
static enum batch_result run_flat(store *s, store_op **ops, size_t n, int may_grow,
                                  change_list *changes)
{
    kv_txn *txn;
    changes->n = 0;
    if (batch_begin(s, ops, n, &txn))
        return BATCH_DONE;
    for (size_t i = 0; i < n; i++) {
        store_op *op = ops[i];
        err_clear(&op->err);
        store_txn t = {.s = s, .kv = txn, .writable = 1};
        int st = op->fn(&t, op->arg, &op->err);
        int failed = st != LAGOON_OK || t.map_full || t.no_space;
        if (!failed && change_list_append(changes, t.changes, t.nchanges))
            failed = 2; /* out of memory: run_nested fails the batch as it would */
        store_txn_free(&t);
        if (!failed) {
            op_set(op, st, &op->err);
            continue;
        }
        kv_txn_abort(txn);
        changes->n = 0;
        if (t.map_full && may_grow)
            return BATCH_REPLAY;
        if (n > 1 || failed == 2)
            return BATCH_NESTED;
        if (t.map_full || t.no_space) /* whatever fn made of it, as run_nested says */
            st = STORE_FAIL(&op->err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                            t.map_full ? "the database is full (map size at its configured maximum)"
                                       : "no space left on the data disk");
        op_set(op, st, &op->err);
        return BATCH_DONE;
    }
    return batch_commit(s, txn, ops, n, may_grow, changes);
}

/* Runs ops[0..n) in one transaction, each in a nested one. BATCH_REPLAY when the map filled up
 * and it can still grow: nothing was committed and the caller grows the map and calls again. */
static enum batch_result run_nested(store *s, store_op **ops, size_t n, int may_grow,
                                    change_list *changes)
{
    kv_txn *parent;
    int rc;
    changes->n = 0;
    if (batch_begin(s, ops, n, &parent))
        return BATCH_DONE;
    for (size_t i = 0; i < n; i++) {
        store_op *op = ops[i];
        err_clear(&op->err);
        store_txn t = {.s = s, .writable = 1};
        rc = kv_txn_begin(s->env, parent, 0, &t.kv);
        if (rc) {
            if (rc == KV_MAP_FULL && may_grow) {
                kv_txn_abort(parent);
                return BATCH_REPLAY;
            }
            op_set(op, store_kv_fail(NULL, rc, &op->err, "cannot start a write"), &op->err);
            continue;
        }
        int st = op->fn(&t, op->arg, &op->err);
        if (t.map_full && may_grow) {
            kv_txn_abort(t.kv);
            store_txn_free(&t);
            kv_txn_abort(parent);
            return BATCH_REPLAY;
        }
        if (t.map_full || t.no_space) {
            /* Out of room (the map at its maximum, or the disk): whatever fn made of the
             * error, its transaction is unusable. */
            kv_txn_abort(t.kv);
            st = STORE_FAIL(&op->err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                            t.map_full ? "the database is full (map size at its configured maximum)"
                                       : "no space left on the data disk");
        } else if (st == LAGOON_OK) {
            rc = kv_txn_commit(t.kv);
            if (rc == KV_MAP_FULL && may_grow) {
                store_txn_free(&t);
                kv_txn_abort(parent);
                return BATCH_REPLAY;
            }
            if (rc) {
                st = store_kv_fail(NULL, rc, &op->err, "cannot commit a write");
            } else if (change_list_append(changes, t.changes, t.nchanges)) {
                /* The write is in the parent but could not be announced: fail the whole batch
                 * rather than commit changes that subscribers would never hear of. */
                store_txn_free(&t);
                kv_txn_abort(parent);
                store_error e;
                store_fail(&e, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
                for (size_t j = 0; j < n; j++)
                    op_set(ops[j], LAGOON_RESOURCE_EXHAUSTED, &e);
                changes->n = 0;
                return BATCH_DONE;
            }
        } else {
            kv_txn_abort(t.kv);
        }
        store_txn_free(&t);
        op_set(op, st, &op->err);
    }
    return batch_commit(s, parent, ops, n, may_grow, changes);
}

/* A batch: flat first, nested when an op of several failed (run_flat). */
static enum batch_result run_batch(store *s, store_op **ops, size_t n, int may_grow,
                                   change_list *changes)
{
    enum batch_result r = run_flat(s, ops, n, may_grow, changes);
    return r == BATCH_NESTED ? run_nested(s, ops, n, may_grow, changes) : r;
}

static void announce(store *s, const change_list *changes)
{
    if (changes->n == 0)
        return;
    pthread_mutex_lock(&s->sub_mu);
    for (size_t i = 0; i < s->nsubs; i++)
        s->subs[i].fn(s->subs[i].arg, changes->v, changes->n);
    pthread_mutex_unlock(&s->sub_mu);
}

/* The index of the first bound >= v among n ascending bounds; n when v is above them all. */
static unsigned bucket_of(const uint64_t *bounds, unsigned n, uint64_t v)
{
    unsigned b = 0;
    while (b < n && v > bounds[b])
        b++;
    return b;
}

/* A committed batch of ok writes into the histograms; q_mu is held (the counters' lock, which
 * the writer takes once per batch anyway). */
static void count_batch(store_counters *c, int64_t took_ns, uint64_t ok)
{
    static const uint64_t commit_bounds[STORE_COMMIT_NBUCKETS] = {STORE_COMMIT_BUCKETS_US};
    static const uint64_t batch_bounds[STORE_BATCH_NBUCKETS] = {STORE_BATCH_BUCKETS};
    uint64_t ns = took_ns > 0 ? (uint64_t)took_ns : 0;
    /* A bound of b us holds what rounds up to at most b us: 100.4 us is above the 100 us bound. */
    c->commit_us[bucket_of(commit_bounds, STORE_COMMIT_NBUCKETS, (ns + 999) / 1000)]++;
    c->commit_ns_sum += ns;
    c->batch_writes[bucket_of(batch_bounds, STORE_BATCH_NBUCKETS, ok)]++;
}

static void *writer_main(void *arg)
{
    store *s = arg;
    store_op **batch = s->batch;
    change_list changes = {0};
    for (;;) {
        pthread_mutex_lock(&s->q_mu);
        while (!s->q_head && !s->closing)
            pthread_cond_wait(&s->q_cv, &s->q_mu);
        if (!s->q_head && s->closing) {
            pthread_mutex_unlock(&s->q_mu);
            break;
        }
        /* Everything that queued up while the last batch was committing goes in this one:
         * that is the group commit, with no timer and no added latency. */
        size_t n = 0;
        while (s->q_head && n < s->cfg.max_batch) {
            batch[n++] = s->q_head;
            s->q_head = s->q_head->next;
            s->q_len--;
        }
        if (!s->q_head)
            s->q_tail = NULL;
        pthread_mutex_unlock(&s->q_mu);

        int may_grow = 1;
        while (run_batch(s, batch, n, may_grow, &changes) == BATCH_REPLAY) {
            if (grow_map(s) != 0)
                may_grow = 0; /* at the maximum: run once more, failing the ops that need room */
        }
        if (s->enc_cap > STORE_ENCODE_BUF_KEEP) { /* a rare large row: not kept */
            free(s->enc);
            s->enc = NULL;
            s->enc_cap = 0;
        }

        uint64_t ok = 0;
        for (size_t i = 0; i < n; i++)
            ok += batch[i]->status == LAGOON_OK;
        pthread_mutex_lock(&s->q_mu);
        s->counters.batches += ok > 0;
        s->counters.ops_ok += ok;
        s->counters.ops_failed += n - ok;
        if (ok > 0)
            count_batch(&s->counters, s->commit_ns, ok);
        pthread_mutex_unlock(&s->q_mu);

        announce(s, &changes);
        for (size_t i = 0; i < n; i++) {
            store_op *op = batch[i];
            op->done(op->done_arg, op->status, &op->err);
            free(op);
        }
    }
    free(changes.v);
    return NULL;
}

int store_submit(store *s, store_write_fn fn, void *arg, store_done_fn done, void *done_arg,
                 store_error *err)
{
    if (!fn || !done)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, NULL, "store_submit needs fn and done");
    if (s->cfg.read_only)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL, "the store is open read-only");
    store_op *op = calloc(1, sizeof(*op));
    if (!op)
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    op->fn = fn;
    op->arg = arg;
    op->done = done;
    op->done_arg = done_arg;
    pthread_mutex_lock(&s->q_mu);
    if (s->closing || s->q_len >= s->cfg.max_queue) {
        int closing = s->closing;
        pthread_mutex_unlock(&s->q_mu);
        free(op);
        if (closing)
            return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL, "the store is closing");
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          "too many writes waiting (%u); try again later", s->cfg.max_queue);
    }
    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    s->q_len++;
    pthread_cond_signal(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    return LAGOON_OK;
}

typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finished;
    int status;
    store_error *err;
} sync_wait;

static void sync_done(void *arg, int status, const store_error *err)
{
    sync_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    if (w->err)
        *w->err = *err;
    w->status = status;
    w->finished = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int store_write(store *s, store_write_fn fn, void *arg, store_error *err)
{
    store_error local;
    if (!err)
        err = &local;
    err_clear(err);
    if (s->writer_started && pthread_equal(pthread_self(), s->writer))
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                          "store_write called on the writer thread");
    sync_wait w = {.err = err};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int st = store_submit(s, fn, arg, sync_done, &w, err);
    if (st == LAGOON_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.finished)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        st = w.status;
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return st;
}

/* ---- Subscribers and counters -------------------------------------------------------------- */

int store_subscribe(store *s, store_subscriber_fn fn, void *arg, store_error *err)
{
    pthread_mutex_lock(&s->sub_mu);
    if (s->nsubs >= STORE_MAX_SUBSCRIBERS) {
        pthread_mutex_unlock(&s->sub_mu);
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "at most %d subscribers",
                          STORE_MAX_SUBSCRIBERS);
    }
    s->subs[s->nsubs].fn = fn;
    s->subs[s->nsubs].arg = arg;
    s->nsubs++;
    pthread_mutex_unlock(&s->sub_mu);
    return LAGOON_OK;
}

void store_unsubscribe(store *s, store_subscriber_fn fn, void *arg)
{
    pthread_mutex_lock(&s->sub_mu);
    for (size_t i = 0; i < s->nsubs; i++) {
        if (s->subs[i].fn == fn && s->subs[i].arg == arg) {
            memmove(&s->subs[i], &s->subs[i + 1], (s->nsubs - i - 1) * sizeof(s->subs[0]));
            s->nsubs--;
            break;
        }
    }
    pthread_mutex_unlock(&s->sub_mu);
}

void store_counters_get(store *s, store_counters *c)
{
    pthread_mutex_lock(&s->q_mu);
    *c = s->counters;
    c->map_size = s->map_size;
    pthread_mutex_unlock(&s->q_mu);
    /* Read from LMDB's meta page (mdb_env_info takes no lock a writer holds): the pages up to
     * the last one written, free pages inside that span included. */
    kv_env_info info;
    c->map_used = kv_env_info_get(s->env, &info) == KV_OK ? info.used_bytes : 0;
}

/* ---- Opening ----------------------------------------------------------------------------- */

static int fill_config(const store_config *in, store_config *c, store_error *err)
{
    *c = *in;
    if (!c->map_size_initial)
        c->map_size_initial = STORE_MAP_SIZE_DEFAULT;
    if (!c->map_size_max)
        c->map_size_max = STORE_MAP_SIZE_MAX_DEFAULT;
    if (!c->max_batch)
        c->max_batch = STORE_MAX_BATCH_DEFAULT;
    if (!c->max_queue)
        c->max_queue = STORE_MAX_QUEUE_DEFAULT;
    if (!c->max_readers)
        c->max_readers = STORE_MAX_READERS_DEFAULT;
    if (c->map_size_max > STORE_MAP_SIZE_MAX_LIMIT)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "map_size_max", "at most %llu bytes",
                          (unsigned long long)STORE_MAP_SIZE_MAX_LIMIT);
    if (c->map_size_initial < STORE_MAP_SIZE_MIN || c->map_size_initial > c->map_size_max)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "map_size_initial",
                          "must be between %llu bytes and map_size_max",
                          (unsigned long long)STORE_MAP_SIZE_MIN);
    if (c->max_batch > STORE_MAX_BATCH_LIMIT)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "max_batch", "at most %d",
                          STORE_MAX_BATCH_LIMIT);
    if (c->max_queue > STORE_MAX_QUEUE_LIMIT)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "max_queue", "at most %d",
                          STORE_MAX_QUEUE_LIMIT);
    if (c->max_readers > STORE_MAX_READERS_LIMIT)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "max_readers", "at most %d",
                          STORE_MAX_READERS_LIMIT);
    if (c->sync != STORE_SYNC_FULL && c->sync != STORE_SYNC_NONE)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "sync", "unknown durability mode");
    return LAGOON_OK;
}

static int open_dbs(store *s, kv_txn *txn, int create, store_error *err)
{
    char name[2 * STORE_NAME_MAX + 8];
    int rc = kv_db_open(txn, "meta", create, &s->meta);
    if (rc == KV_NOTFOUND)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                          "%s is not a Lagoon database (no meta records)", s->dir);
    if (rc)
        return store_kv_fail(NULL, rc, err, "meta");
    for (size_t i = 0; i < s->schema->ntables; i++) {
        store_table_rt *rt = &s->tables[i];
        const store_table *t = rt->decl;
        snprintf(name, sizeof(name), "t/%s", t->name);
        rc = kv_db_open(txn, name, create, &rt->rows);
        for (size_t x = 0; rc == KV_OK && x < t->nindexes; x++) {
            snprintf(name, sizeof(name), "i/%s/%s", t->name, t->indexes[x].name);
            rc = kv_db_open(txn, name, create, &rt->idx[x]);
        }
        if (rc == KV_NOTFOUND)
            return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                              "database %s is missing (open the store read-write once to create it)",
                              name);
        if (rc)
            return store_kv_fail(NULL, rc, err, name);
    }
    return LAGOON_OK;
}

static int meta_read(kv_txn *txn, kv_db meta, lagoon_v1_StoreMeta *m, store_error *err)
{
    kv_val key = {STORE_META_KEY, strlen(STORE_META_KEY)}, val;
    int rc = kv_get(txn, meta, key, &val);
    if (rc == KV_NOTFOUND)
        return LAGOON_NOT_FOUND;
    if (rc)
        return store_kv_fail(NULL, rc, err, "meta");
    wire_violation v;
    memset(m, 0, sizeof(*m));
    if (wire_decode_trusted(&lagoon_v1_StoreMeta_info, val.data, val.len, m, &v))
        return STORE_FAIL(err, LAGOON_DATA_LOSS, NULL, "meta record damaged: %s", v.description);
    return LAGOON_OK;
}

static int meta_write(store_txn *t, const lagoon_v1_StoreMeta *m, store_error *err)
{
    uint8_t buf[lagoon_v1_StoreMeta_size];
    long n = wire_encode(&lagoon_v1_StoreMeta_info, m, buf, sizeof(buf), NULL);
    if (n < 0)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "cannot encode the meta record");
    kv_val key = {STORE_META_KEY, strlen(STORE_META_KEY)}, val = {buf, (size_t)n};
    int rc = kv_put(t->kv, t->s->meta, key, val, 0);
    return rc ? store_kv_fail(t, rc, err, "meta") : LAGOON_OK;
}

int store_load_token_key(store *s, kv_txn *txn)
{
    lagoon_v1_StoreMeta m = lagoon_v1_StoreMeta_init_zero;
    store_error e;
    if (meta_read(txn, s->meta, &m, &e) != LAGOON_OK || m.token_key.size != STORE_TOKEN_KEY_BYTES)
        return -1;
    memcpy(s->token_key, m.token_key.bytes, STORE_TOKEN_KEY_BYTES);
    s->have_token_key = 1;
    return 0;
}

/* The first write transaction: create databases, create or check the meta record, migrate. */
static int open_write(store *s, store_error *err)
{
    store_txn t = {.s = s, .writable = 1};
    int rc = kv_txn_begin(s->env, NULL, 0, &t.kv);
    if (rc)
        return store_kv_fail(&t, rc, err, "cannot start the opening transaction");
    int st = open_dbs(s, t.kv, 1, err);
    lagoon_v1_StoreMeta m = lagoon_v1_StoreMeta_init_zero;
    if (st == LAGOON_OK) {
        st = meta_read(t.kv, s->meta, &m, err);
        if (st == LAGOON_NOT_FOUND) {
            memset(&m, 0, sizeof(m));
            m.format_version = STORE_FORMAT_VERSION;
            m.schema_version = s->schema->version;
            m.token_key.size = STORE_TOKEN_KEY_BYTES;
            randombytes_buf(m.token_key.bytes, STORE_TOKEN_KEY_BYTES);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            m.created_unix_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
            st = meta_write(&t, &m, err);
        } else if (st == LAGOON_OK) {
            if (m.format_version > STORE_FORMAT_VERSION)
                st = STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                                "%s was written by a newer Lagoon (store format %u, this build "
                                "reads up to %u): upgrade Lagoon to open it",
                                s->dir, (unsigned)m.format_version, STORE_FORMAT_VERSION);
            else if (m.schema_version > s->schema->version)
                st = STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                                "%s was written by a newer Lagoon (schema version %u, this build "
                                "knows up to %u): upgrade Lagoon to open it",
                                s->dir, (unsigned)m.schema_version, (unsigned)s->schema->version);
            /* Run older layouts forward one version at a time, all in this transaction: a
             * failed migration leaves the database as it was. */
            while (st == LAGOON_OK && m.schema_version < s->schema->version) {
                if (s->schema->migrate)
                    st = s->schema->migrate(&t, m.schema_version, s->schema->migrate_arg, err);
                if (st == LAGOON_OK) {
                    m.schema_version++;
                    st = meta_write(&t, &m, err);
                }
            }
            if (st == LAGOON_OK && m.token_key.size != STORE_TOKEN_KEY_BYTES) {
                m.token_key.size = STORE_TOKEN_KEY_BYTES;
                randombytes_buf(m.token_key.bytes, STORE_TOKEN_KEY_BYTES);
                st = meta_write(&t, &m, err);
            }
        }
    }
    if (st == LAGOON_OK) {
        rc = kv_txn_commit(t.kv);
        t.kv = NULL;
        if (rc)
            st = store_kv_fail(&t, rc, err, "cannot commit the opening transaction");
    }
    if (t.kv)
        kv_txn_abort(t.kv);
    store_txn_free(&t);
    if (st != LAGOON_OK && t.map_full)
        return -1; /* the caller grows the map and tries again */
    return st;
}

/* Takes the writer lock of s->dir without waiting: one read-write store per directory, so
 * that a tool cannot write behind a running server's back (the server's in-memory state, such
 * as sessions and rate limits, would not see it) and two servers never share a database. The
 * holder writes its pid into the file, for the message the next one gets. */
static int take_writer_lock(store *s, store_error *err)
{
    char path[sizeof(s->dir) + sizeof(STORE_WRITER_LOCK) + 1];
    snprintf(path, sizeof(path), "%s/" STORE_WRITER_LOCK, s->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "dir", "cannot open %s: %s", path,
                          strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[24] = "";
        ssize_t n = e == EWOULDBLOCK ? pread(fd, pid, sizeof(pid) - 1, 0) : -1;
        pid[n > 0 ? (size_t)n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "dir",
                              "lagoond%s%s%s is running on %s; stop it first (it holds its "
                              STORE_WRITER_LOCK ")",
                              pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "", s->dir);
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "dir", "cannot lock %s: %s", path,
                          strerror(e));
    }
    char pid[24];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    int hint_written = ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)len, 0) == len;
    (void)hint_written; /* the pid is only a hint for that message: the lock is what counts */
    s->lock_fd = fd;
    return LAGOON_OK;
}

static int open_read_only(store *s, store_error *err)
{
    kv_txn *txn;
    int rc = kv_txn_begin(s->env, NULL, KV_TXN_READ, &txn);
    if (rc)
        return store_kv_fail(NULL, rc, err, "cannot start a read");
    int st = open_dbs(s, txn, 0, err);
    lagoon_v1_StoreMeta m = lagoon_v1_StoreMeta_init_zero;
    if (st == LAGOON_OK)
        st = meta_read(txn, s->meta, &m, err);
    if (st == LAGOON_NOT_FOUND)
        st = STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL, "%s has no meta record", s->dir);
    if (st == LAGOON_OK && (m.format_version > STORE_FORMAT_VERSION ||
                            m.schema_version > s->schema->version))
        st = STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                        "%s was written by a newer Lagoon (format %u, schema %u): upgrade",
                        s->dir, (unsigned)m.format_version, (unsigned)m.schema_version);
    if (st == LAGOON_OK) {
        /* Committing the read transaction keeps the database handles it opened. */
        rc = kv_txn_commit(txn);
        if (rc)
            return store_kv_fail(NULL, rc, err, "cannot open databases");
        return LAGOON_OK;
    }
    kv_txn_abort(txn);
    return st;
}

int store_open(const char *dir, const store_config *cfg, store **out, store_error *err)
{
    err_clear(err);
    *out = NULL;
    if (!dir || !cfg)
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "dir", "no directory or configuration");
    if (sodium_init() < 0)
        return STORE_FAIL(err, LAGOON_INTERNAL, NULL, "libsodium cannot initialise");
    int st = check_schema(cfg->schema, err);
    if (st)
        return st;
    store *s = calloc(1, sizeof(*s));
    if (!s)
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    if ((st = fill_config(cfg, &s->cfg, err))) {
        free(s);
        return st;
    }
    size_t dlen = strlen(dir);
    if (dlen >= sizeof(s->dir)) {
        free(s);
        return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "dir", "path too long");
    }
    memcpy(s->dir, dir, dlen + 1);
    s->lock_fd = -1;
    s->schema = cfg->schema;
    s->tables = calloc(s->schema->ntables ? s->schema->ntables : 1, sizeof(*s->tables));
    pthread_mutex_init(&s->gate_mu, NULL);
    pthread_cond_init(&s->gate_cv, NULL);
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_cond_init(&s->q_cv, NULL);
    pthread_mutex_init(&s->sub_mu, NULL);
    if (!s->tables) {
        store_close(s);
        return STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    unsigned ndbs = 1;
    for (size_t i = 0; i < s->schema->ntables; i++) {
        store_table_rt *rt = &s->tables[i];
        rt->decl = s->schema->tables[i];
        ndbs += 1 + (unsigned)rt->decl->nindexes;
    }
    /* Reverse foreign keys: who points at each table, for deletes. */
    for (size_t i = 0; i < s->schema->ntables; i++) {
        const store_table *child = s->schema->tables[i];
        for (size_t f = 0; f < child->nfkeys; f++) {
            store_table_rt *prt = &s->tables[table_pos(s->schema, child->fkeys[f].parent)];
            if (prt->nrefs >= STORE_MAX_TABLES) {
                store_close(s);
                return STORE_FAIL(err, LAGOON_INVALID_ARGUMENT, "schema",
                                  "too many foreign keys point at table %s", prt->decl->name);
            }
            prt->refs[prt->nrefs].child = &s->tables[i];
            prt->refs[prt->nrefs].fk = &child->fkeys[f];
            prt->nrefs++;
        }
    }
    if (!s->cfg.read_only && mkdir(dir, 0750) != 0 && errno != EEXIST) {
        st = STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "dir", "cannot create %s: %s", dir,
                        strerror(errno));
        store_close(s);
        return st;
    }
    /* Before the environment is touched, so a refused open changes nothing. */
    if (!s->cfg.read_only && (st = take_writer_lock(s, err)) != LAGOON_OK) {
        store_close(s);
        return st;
    }
    kv_env_options o = {
        .map_size = (size_t)s->cfg.map_size_initial,
        /* Room for databases a newer build added, so tools can still list them. */
        .max_dbs = ndbs + 32,
        .max_readers = s->cfg.max_readers,
        .no_sync = s->cfg.sync == STORE_SYNC_NONE,
        .read_only = s->cfg.read_only,
    };
    int rc = kv_env_open(dir, &o, &s->env);
    if (rc) {
        st = rc == KV_CORRUPT
                 ? STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, NULL,
                              "%s: %s", dir, kv_strerror(rc))
                 : store_kv_fail(NULL, rc, err, dir);
        store_close(s);
        return st;
    }
    kv_env_info info;
    if (kv_env_info_get(s->env, &info) == KV_OK)
        s->map_size = info.map_size;
    if (s->cfg.read_only) {
        st = open_read_only(s, err);
    } else {
        while ((st = open_write(s, err)) == -1) {
            if (grow_map(s) != 0) {
                st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                                "the database is full (map size at its configured maximum)");
                break;
            }
        }
    }
    if (st == LAGOON_OK) {
        kv_txn *txn;
        if (kv_txn_begin(s->env, NULL, KV_TXN_READ, &txn) == KV_OK) {
            store_load_token_key(s, txn);
            kv_txn_abort(txn);
        }
    }
    if (st == LAGOON_OK && !s->cfg.read_only) {
        s->batch = calloc(s->cfg.max_batch, sizeof(*s->batch));
        if (!s->batch)
            st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        else if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
            st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "cannot start the writer thread");
        else
            s->writer_started = 1;
    }
    if (st != LAGOON_OK) {
        store_close(s);
        return st;
    }
    readers_list(s, kv_env_info_get(s->env, &info) == KV_OK ? info.max_readers : 0);
    *out = s;
    return LAGOON_OK;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->writer_started) {
        pthread_mutex_lock(&s->q_mu);
        s->closing = 1;
        pthread_cond_broadcast(&s->q_cv);
        pthread_mutex_unlock(&s->q_mu);
        pthread_join(s->writer, NULL);
    }
    readers_unlist(s); /* after the writer, whose exit gave back its own */
    kv_env_close(s->env);
    /* Only once everything is written and closed may another writer start. */
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_mutex_destroy(&s->gate_mu);
    pthread_cond_destroy(&s->gate_cv);
    pthread_mutex_destroy(&s->q_mu);
    pthread_cond_destroy(&s->q_cv);
    pthread_mutex_destroy(&s->sub_mu);
    free(s->batch);
    free(s->enc);
    free(s->tables);
    free(s);
}
