/* Reused read transactions (store.c, "Reads"): each thread keeps a reset read transaction per
 * store and renews it for its next read. These tests hold the rules that reuse must keep: a
 * renewed transaction sees the latest commit, a second read on a thread gets a snapshot of its
 * own, the map still grows, store_close frees the transactions of living and exited threads,
 * a thread's exit gives its transaction back, and stores open and close many times in one
 * process. Real LMDB files in temporary directories; ASan/LSan builds check the frees. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store_internal.h"
#include "store_test_util.h"

/* The users table of the test schema (the first one), by position so that this file does not
 * depend on how the test tables are named. */
static const store_table *users(void)
{
    const store_table *t = test_schema()->tables[0];
    assert_string_equal(t->name, "users");
    return t;
}

/* LAGOON_OK when user id is visible to a new read on this thread. */
static int read_user(store *s, uint64_t id, tuser *u)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(s, &t, &err);
    if (st)
        return st;
    tuser local;
    st = store_get(t, users(), id, u ? u : &local, &err);
    store_read_end(t);
    return st;
}

/* ---- A helper thread that reads on command and stays alive in between ------------------- */

enum { CMD_NONE, CMD_READ, CMD_EXIT };

typedef struct helper {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    store *s;      /* CMD_READ: the store */
    uint64_t id;   /* CMD_READ: the user to read */
    int cmd;       /* what to do next, CMD_NONE once done */
    int status;    /* CMD_READ: read_user's result */
} helper;

static void *helper_main(void *arg)
{
    helper *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (h->cmd == CMD_NONE)
            pthread_cond_wait(&h->cv, &h->mu);
        if (h->cmd == CMD_EXIT)
            break;
        pthread_mutex_unlock(&h->mu);
        int st = read_user(h->s, h->id, NULL);
        pthread_mutex_lock(&h->mu);
        h->status = st;
        h->cmd = CMD_NONE;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

static void helper_start(helper *h)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    assert_int_equal(pthread_create(&h->th, NULL, helper_main, h), 0);
}

/* The helper reads user id from s; returns the status. */
static int helper_read(helper *h, store *s, uint64_t id)
{
    pthread_mutex_lock(&h->mu);
    h->s = s;
    h->id = id;
    h->cmd = CMD_READ;
    pthread_cond_broadcast(&h->cv);
    while (h->cmd != CMD_NONE)
        pthread_cond_wait(&h->cv, &h->mu);
    int st = h->status;
    pthread_mutex_unlock(&h->mu);
    return st;
}

/* Ends the helper thread and waits for it (its exit destructor has run when this returns). */
static void helper_stop(helper *h)
{
    pthread_mutex_lock(&h->mu);
    h->cmd = CMD_EXIT;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->th, NULL);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
}

/* ---- Tests ---------------------------------------------------------------------------------- */

/* A read after a write on the same thread sees the write, every time, with one transaction
 * reused for all the reads. */
static void test_read_after_write_same_thread(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    store_error err;
    assert_int_equal(store_readers_cached(s), 0);
    for (int i = 0; i < 50; i++) {
        char name[32];
        snprintf(name, sizeof(name), "u%d", i);
        uint64_t id;
        assert_int_equal(add_user(s, name, NULL, i, &id, &err), LAGOON_OK);
        tuser u;
        assert_int_equal(read_user(s, id, &u), LAGOON_OK);
        assert_string_equal(u.name, name);
        assert_int_equal(read_user(s, id + 1, NULL), LAGOON_NOT_FOUND);
    }
    assert_int_equal(store_readers_cached(s), 1);
    store_close(s);
    tmpdir_remove(dir);
}

/* A second read while the thread's first is open is a snapshot of its own: it sees a write that
 * committed after the first began, the first does not, and they end in either order. */
static void test_nested_reads(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    store_error err;
    uint64_t a, b, c;
    assert_int_equal(add_user(s, "a", NULL, 1, &a, &err), LAGOON_OK);
    helper h;
    helper_start(&h);
    for (int order = 0; order < 2; order++) {
        store_txn *t1, *t2;
        tuser u;
        assert_int_equal(store_read_begin(s, &t1, &err), LAGOON_OK);
        /* Another thread writes while t1 is open (this one may not: store_write with a read
         * open on the same thread is not allowed). */
        char name[8];
        snprintf(name, sizeof(name), "b%d", order);
        assert_int_equal(add_user(s, name, NULL, 2, &b, &err), LAGOON_OK);
        assert_int_equal(store_read_begin(s, &t2, &err), LAGOON_OK);
        assert_ptr_not_equal(t1, t2);
        assert_int_equal(store_get(t1, users(), a, &u, &err), LAGOON_OK);
        assert_int_equal(store_get(t1, users(), b, &u, &err), LAGOON_NOT_FOUND);
        assert_int_equal(store_get(t2, users(), b, &u, &err), LAGOON_OK);
        assert_string_equal(u.name, name);
        if (order == 0) {
            store_read_end(t2);
            store_read_end(t1);
        } else {
            store_read_end(t1);
            store_read_end(t2);
        }
        /* The helper's read, on its own cached transaction, sees both. */
        assert_int_equal(helper_read(&h, s, b), LAGOON_OK);
    }
    /* The next read reuses the cached transaction and sees a later write. */
    assert_int_equal(add_user(s, "c", NULL, 3, &c, &err), LAGOON_OK);
    assert_int_equal(read_user(s, c, NULL), LAGOON_OK);
    assert_int_equal(store_readers_cached(s), 2); /* this thread and the helper */
    helper_stop(&h);
    assert_int_equal(store_readers_cached(s), 1);
    store_close(s);
    tmpdir_remove(dir);
}

/* Many threads read while the writer commits: a read that begins after a write returned always
 * sees it (a renewed transaction is never an old snapshot). */
enum { RACE_READERS = 4, RACE_WRITES = 150 };

typedef struct race {
    store *s;
    _Atomic uint64_t committed; /* id of the last user whose store_write returned */
    atomic_int stop;
    atomic_int stale;           /* reads that missed a committed user: must stay 0 */
    atomic_int failed;          /* reads that could not begin: must stay 0 */
    pthread_barrier_t parked;   /* readers done, still alive */
    pthread_barrier_t leave;
} race;

static void *race_reader(void *arg)
{
    race *r = arg;
    for (int i = 0; i < 2000000 && !atomic_load(&r->stop); i++) {
        uint64_t want = atomic_load(&r->committed);
        int st = read_user(r->s, want ? want : 1, NULL);
        if (want && st == LAGOON_NOT_FOUND)
            atomic_fetch_add(&r->stale, 1);
        else if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
            atomic_fetch_add(&r->failed, 1);
    }
    pthread_barrier_wait(&r->parked);
    pthread_barrier_wait(&r->leave);
    return NULL;
}

static void test_readers_while_writer_commits(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    race r = {.s = open_test_store(dir, NULL)};
    pthread_barrier_init(&r.parked, NULL, RACE_READERS + 1);
    pthread_barrier_init(&r.leave, NULL, RACE_READERS + 1);
    pthread_t th[RACE_READERS];
    for (int i = 0; i < RACE_READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_reader, &r), 0);
    store_error err;
    for (int i = 0; i < RACE_WRITES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "w%d", i);
        uint64_t id;
        assert_int_equal(add_user(r.s, name, NULL, i, &id, &err), LAGOON_OK);
        atomic_store(&r.committed, id);
    }
    atomic_store(&r.stop, 1);
    pthread_barrier_wait(&r.parked);
    assert_int_equal(atomic_load(&r.stale), 0);
    assert_int_equal(atomic_load(&r.failed), 0);
    /* One cached transaction per reader thread, however many reads each made. */
    assert_int_equal(store_readers_cached(r.s), RACE_READERS);
    pthread_barrier_wait(&r.leave);
    for (int i = 0; i < RACE_READERS; i++)
        pthread_join(th[i], NULL);
    /* Each exiting thread gave its transaction back. */
    assert_int_equal(store_readers_cached(r.s), 0);
    pthread_barrier_destroy(&r.parked);
    pthread_barrier_destroy(&r.leave);
    store_close(r.s);
    tmpdir_remove(dir);
}

/* store_close with cached transactions on threads that still run and on threads that are gone;
 * a thread that outlives the store and exits later; the same directory reopened, read by the
 * same threads. ASan/LSan builds catch a transaction left unfreed or freed twice. */
static void test_close_with_cached_readers(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    store_error err;
    uint64_t id;
    assert_int_equal(add_user(s, "first", NULL, 1, &id, &err), LAGOON_OK);

    helper gone, live, late;
    helper_start(&gone);
    helper_start(&live);
    helper_start(&late);
    assert_int_equal(helper_read(&gone, s, id), LAGOON_OK);
    assert_int_equal(helper_read(&live, s, id), LAGOON_OK);
    assert_int_equal(helper_read(&late, s, id), LAGOON_OK);
    assert_int_equal(read_user(s, id, NULL), LAGOON_OK);
    assert_int_equal(store_readers_cached(s), 4);
    helper_stop(&gone);
    assert_int_equal(store_readers_cached(s), 3);
    /* Closed while two helpers and this thread keep cached transactions. */
    store_close(s);
    /* This one exits with an entry naming the closed store: it must not touch it. */
    helper_stop(&late);

    s = open_test_store(dir, NULL);
    uint64_t id2;
    assert_int_equal(add_user(s, "second", NULL, 2, &id2, &err), LAGOON_OK);
    assert_int_equal(store_readers_cached(s), 0);
    assert_int_equal(helper_read(&live, s, id2), LAGOON_OK);
    assert_int_equal(helper_read(&live, s, id), LAGOON_OK);
    assert_int_equal(read_user(s, id2, NULL), LAGOON_OK);
    assert_int_equal(store_readers_cached(s), 2);
    helper_stop(&live);
    assert_int_equal(store_readers_cached(s), 1);
    store_close(s);
    tmpdir_remove(dir);
}

/* The map grows while threads keep reset transactions (and one reads all along); afterwards
 * every one of them reads the rows written into the grown map. */
typedef struct growth_reader {
    store *s;
    atomic_int stop;
    atomic_int errors;
    atomic_int reads;
} growth_reader;

static void *growth_read_loop(void *arg)
{
    growth_reader *g = arg;
    for (int i = 0; i < 2000000 && !atomic_load(&g->stop); i++) {
        int st = read_user(g->s, 1, NULL);
        if (st != LAGOON_OK)
            atomic_fetch_add(&g->errors, 1);
        atomic_fetch_add(&g->reads, 1);
    }
    return NULL;
}

typedef struct bulk_arg {
    int base, count;
    uint64_t last;
} bulk_arg;

/* count users with long emails (~110 bytes, unique like the names): a few hundred of them
 * outgrow a tiny map. */
static int w_bulk_users(store_txn *t, void *arg, store_error *err)
{
    bulk_arg *b = arg;
    for (int i = 0; i < b->count; i++) {
        tuser u = lagoon_test_v1_TUser_init_zero;
        snprintf(u.name, sizeof(u.name), "bulk%d", b->base + i);
        snprintf(u.email, sizeof(u.email), "%0100d@example.org", b->base + i);
        int st = store_insert(t, users(), &u, &b->last, err);
        if (st)
            return st;
    }
    return LAGOON_OK;
}

static void test_map_growth_with_cached_readers(void **state)
{
    (void)state;
    enum { IDLE = 3 };
    char *dir = tmpdir_make();
    store_config cfg = {.map_size_initial = STORE_MAP_SIZE_MIN};
    store *s = open_test_store(dir, &cfg);
    store_error err;
    uint64_t first;
    assert_int_equal(add_user(s, "first", NULL, 0, &first, &err), LAGOON_OK);
    assert_int_equal(first, 1);
    helper idle[IDLE];
    for (int i = 0; i < IDLE; i++) {
        helper_start(&idle[i]);
        assert_int_equal(helper_read(&idle[i], s, first), LAGOON_OK);
    }
    assert_int_equal(read_user(s, first, NULL), LAGOON_OK);
    growth_reader g = {.s = s};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, growth_read_loop, &g), 0);

    store_counters c0, c1;
    store_counters_get(s, &c0);
    bulk_arg b = {0};
    for (int batch = 0; batch < 40; batch++) {
        b.base = batch * 20;
        b.count = 20;
        assert_int_equal(store_write(s, w_bulk_users, &b, &err), LAGOON_OK);
    }
    atomic_store(&g.stop, 1);
    pthread_join(th, NULL);
    store_counters_get(s, &c1);
    assert_true(c1.map_growths > c0.map_growths);
    assert_true(c1.map_size > STORE_MAP_SIZE_MIN);
    assert_int_equal(atomic_load(&g.errors), 0);
    assert_true(atomic_load(&g.reads) > 0);

    /* The idle transactions, reset through every resize, renew on the grown map. */
    for (int i = 0; i < IDLE; i++) {
        assert_int_equal(helper_read(&idle[i], s, b.last), LAGOON_OK);
        assert_int_equal(helper_read(&idle[i], s, first), LAGOON_OK);
    }
    tuser u;
    assert_int_equal(read_user(s, b.last, &u), LAGOON_OK);
    assert_string_equal(u.name, "bulk799");
    assert_int_equal(store_readers_cached(s), IDLE + 1);
    for (int i = 0; i < IDLE; i++)
        helper_stop(&idle[i]);
    uint64_t problems = 99;
    assert_int_equal(store_verify(s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    store_close(s);
    tmpdir_remove(dir);
}

/* Stores opened and closed many times in one process, several at once and more than a thread
 * keeps transactions for (STORE_THREAD_READERS): every read sees its own store's rows. */
static void test_reopen_and_many_stores(void **state)
{
    (void)state;
    enum { NSTORES = STORE_THREAD_READERS + 2, ROUNDS = 3 };
    char *dirs[NSTORES];
    for (int i = 0; i < NSTORES; i++)
        dirs[i] = tmpdir_make();
    store_error err;
    for (int round = 0; round < ROUNDS; round++) {
        store *s[NSTORES];
        uint64_t ids[NSTORES];
        for (int i = 0; i < NSTORES; i++) {
            s[i] = open_test_store(dirs[i], NULL);
            char name[32];
            snprintf(name, sizeof(name), "s%d-r%d", i, round);
            assert_int_equal(add_user(s[i], name, NULL, round, &ids[i], &err), LAGOON_OK);
            /* Each store holds round + 1 users, with ids 1..round + 1. */
            assert_int_equal(ids[i], (uint64_t)round + 1);
        }
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < NSTORES; i++) {
                tuser u;
                char name[32];
                snprintf(name, sizeof(name), "s%d-r%d", i, round);
                assert_int_equal(read_user(s[i], ids[i], &u), LAGOON_OK);
                assert_string_equal(u.name, name);
                assert_int_equal(read_user(s[i], ids[i] + 1, NULL), LAGOON_NOT_FOUND);
            }
        }
        /* This thread keeps transactions for the last STORE_THREAD_READERS stores it read. */
        unsigned cached = 0;
        for (int i = 0; i < NSTORES; i++) {
            unsigned n = store_readers_cached(s[i]);
            assert_true(n <= 1);
            cached += n;
        }
        assert_int_equal(cached, STORE_THREAD_READERS);
        assert_int_equal(store_readers_cached(s[NSTORES - 1]), 1);
        assert_int_equal(store_readers_cached(s[0]), 0);
        for (int i = 0; i < NSTORES; i++)
            store_close(s[i]);
    }
    for (int i = 0; i < NSTORES; i++)
        tmpdir_remove(dirs[i]);
}

/* With a small reader table, only its share is kept in idle transactions; the threads beyond
 * it still read, each read with a transaction of its own. */
static void test_reader_table_share(void **state)
{
    (void)state;
    enum { MAX_READERS = 8, THREADS = 6 };
    char *dir = tmpdir_make();
    store_config cfg = {.max_readers = MAX_READERS};
    store *s = open_test_store(dir, &cfg);
    store_error err;
    uint64_t id;
    assert_int_equal(add_user(s, "x", NULL, 0, &id, &err), LAGOON_OK);
    helper h[THREADS];
    for (int i = 0; i < THREADS; i++) {
        helper_start(&h[i]);
        assert_int_equal(helper_read(&h[i], s, id), LAGOON_OK);
    }
    assert_int_equal(store_readers_cached(s), MAX_READERS / STORE_READERS_CACHED_SHARE);
    /* Again, and with a write between: the threads without reuse see it too. */
    uint64_t id2;
    assert_int_equal(add_user(s, "y", NULL, 1, &id2, &err), LAGOON_OK);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(helper_read(&h[i], s, id2), LAGOON_OK);
    for (int i = 0; i < THREADS; i++)
        helper_stop(&h[i]);
    assert_int_equal(store_readers_cached(s), 0);
    /* The slots came back: this thread still gets one. */
    assert_int_equal(read_user(s, id2, NULL), LAGOON_OK);
    assert_int_equal(store_readers_cached(s), 1);
    store_close(s);
    tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_after_write_same_thread),
        cmocka_unit_test(test_nested_reads),
        cmocka_unit_test(test_readers_while_writer_commits),
        cmocka_unit_test(test_close_with_cached_readers),
        cmocka_unit_test(test_map_growth_with_cached_readers),
        cmocka_unit_test(test_reopen_and_many_stores),
        cmocka_unit_test(test_reader_table_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
