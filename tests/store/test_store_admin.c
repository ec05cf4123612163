/* The store's integrity tools and durability: verify against a deliberately corrupted index,
 * hot backup restored and verified, stats, the lagoon-admin command line, and a process killed
 * with SIGKILL in the middle of batches losing no acknowledged write. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "store_test_util.h"

/* Runs store_admin_main with argv and captures what it prints. Returns the exit status. */
static int admin(char **out, int argc, ...)
{
    char *argv[8] = {"lagoon-admin"};
    va_list ap;
    va_start(ap, argc);
    for (int i = 1; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    size_t len;
    FILE *f = open_memstream(out, &len);
    assert_non_null(f);
    int rc = store_admin_main(argc, argv, test_schema(), f, f);
    fclose(f);
    return rc;
}

static void fill(store *s, uint64_t *users, uint64_t *videos)
{
    store_error err;
    char name[32];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof(name), "user%d", i);
        assert_int_equal(add_user(s, name, i == 1 ? "x@y" : NULL, i, &users[i], &err), LAGOON_OK);
    }
    for (int i = 0; i < 10; i++)
        assert_int_equal(add_video(s, users[i % 5], i, 10, &videos[i], &err), LAGOON_OK);
    uint64_t c;
    assert_int_equal(add_comment(s, videos[0], users[1], &c, &err), LAGOON_OK);
}

/* Opens the environment with LMDB directly, as a damaged disk or a buggy build would. */
static void corrupt(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi byname, byowner, users;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 64), 0);
    assert_int_equal(mdb_env_set_mapsize(env, 64ull << 20), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0640), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "i/users/by_name", 0, &byname), 0);
    assert_int_equal(mdb_dbi_open(txn, "i/videos/by_owner", 0, &byowner), 0);
    assert_int_equal(mdb_dbi_open(txn, "t/users", 0, &users), 0);
    MDB_cursor *c;
    MDB_val k, v;
    /* 1. A row loses its unique entry. */
    assert_int_equal(mdb_cursor_open(txn, byname, &c), 0);
    assert_int_equal(mdb_cursor_get(c, &k, &v, MDB_FIRST), 0);
    assert_int_equal(mdb_cursor_del(c, 0), 0);
    mdb_cursor_close(c);
    /* 2. An entry points at a row that does not exist. */
    uint8_t ghost[8] = {0, 0, 0, 0, 0, 0, 0x03, 0xe7};
    MDB_val gk = {3, "zz"}, gv = {8, ghost};
    assert_int_equal(mdb_put(txn, byname, &gk, &gv, 0), 0);
    /* 3. An entry whose key no longer matches its row's fields. */
    assert_int_equal(mdb_cursor_open(txn, byowner, &c), 0);
    assert_int_equal(mdb_cursor_get(c, &k, &v, MDB_LAST), 0);
    uint8_t key[64], val[8];
    assert_true(k.mv_size <= sizeof(key));
    memcpy(key, k.mv_data, k.mv_size);
    memcpy(val, v.mv_data, 8);
    size_t klen = k.mv_size;
    assert_int_equal(mdb_cursor_del(c, 0), 0);
    mdb_cursor_close(c);
    key[10] ^= 0x40; /* inside the timestamp */
    MDB_val nk = {klen, key}, nv = {8, val};
    assert_int_equal(mdb_put(txn, byowner, &nk, &nv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void test_verify_catches_corruption(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    store_error err;
    uint64_t problems = 99;
    assert_int_equal(store_verify(s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    store_close(s);

    char *out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", dir), 0);
    assert_non_null(strstr(out, "no problems found"));
    free(out);

    corrupt(dir);

    s = open_test_store(dir, NULL);
    size_t len;
    char *report = NULL;
    FILE *f = open_memstream(&report, &len);
    assert_int_equal(store_verify(s, f, &problems, &err), LAGOON_OK);
    fclose(f);
    /* The moved entry counts twice: its row has no entry, and the entry matches no row. */
    assert_int_equal(problems, 4);
    assert_non_null(strstr(report, "missing from index by_name"));
    assert_non_null(strstr(report, "missing from index by_owner"));
    assert_non_null(strstr(report, "points at users 999, which does not exist"));
    assert_non_null(strstr(report, "does not match the row's owner_id"));
    free(report);
    store_close(s);

    /* The command line says the same, with a non-zero exit status. */
    out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", dir), 1);
    assert_non_null(strstr(out, "4 problem(s) found"));
    assert_non_null(strstr(out, "users: 5 rows, INCONSISTENT"));
    free(out);
    tmpdir_remove(dir);
}

static void test_verify_dangling_foreign_key(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    store_close(s);
    /* Remove a user row behind the store's back: its videos now point at nothing, and its
     * index entries at a missing row. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi rows;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 64), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0640), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "t/users", 0, &rows), 0);
    uint8_t k[8] = {0, 0, 0, 0, 0, 0, 0, (uint8_t)users[0]};
    MDB_val key = {8, k};
    assert_int_equal(mdb_del(txn, rows, &key, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    char *out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", dir), 1);
    assert_non_null(strstr(out, "but there is no such users row"));
    free(out);
    tmpdir_remove(dir);
}

/* A stored row whose bytes are not a valid message: reads say DATA_LOSS, verify names it. */
static void test_damaged_row(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    store_close(s);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi rows;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 64), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0640), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "t/videos", 0, &rows), 0);
    uint8_t k[8] = {0, 0, 0, 0, 0, 0, 0, (uint8_t)videos[3]};
    static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}; /* length past the end */
    MDB_val key = {8, k}, val = {sizeof(junk), (void *)junk};
    assert_int_equal(mdb_put(txn, rows, &key, &val, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = open_test_store(dir, NULL);
    store_txn *t;
    store_error err;
    tvideo v;
    assert_int_equal(store_read_begin(s, &t, &err), LAGOON_OK);
    assert_int_equal(store_get(t, &lagoon_test_table_videos, videos[3], &v, &err), LAGOON_DATA_LOSS);
    assert_int_equal(store_get(t, &lagoon_test_table_videos, videos[4], &v, &err), LAGOON_OK);
    store_read_end(t);
    size_t len;
    char *report = NULL;
    uint64_t problems = 0;
    FILE *f = open_memstream(&report, &len);
    assert_int_equal(store_verify(s, f, &problems, &err), LAGOON_OK);
    fclose(f);
    assert_true(problems >= 1);
    assert_non_null(strstr(report, "the row cannot be decoded"));
    free(report);
    store_close(s);
    tmpdir_remove(dir);
}

typedef struct bg_writer {
    store *s;
    int ok;
} bg_writer;

static void *bg_write(void *arg)
{
    bg_writer *w = arg;
    char name[32];
    store_error err;
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "bg%d", i);
        uint64_t id;
        w->ok += add_user(w->s, name, NULL, i, &id, &err) == LAGOON_OK;
    }
    return NULL;
}

static void test_backup_restored_and_verified(void **state)
{
    (void)state;
    char *dir = tmpdir_make(), *bdir = tmpdir_make(), *b2 = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    store_error err;
    /* Hot: writes go on during the copy. */
    bg_writer w = {s, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, bg_write, &w), 0);
    assert_int_equal(store_backup(s, bdir, &err), LAGOON_OK);
    pthread_join(th, NULL);
    assert_int_equal(w.ok, 300);
    /* A backup never overwrites. */
    assert_int_equal(store_backup(s, bdir, &err), LAGOON_FAILED_PRECONDITION);
    store_close(s);

    /* Restore: point a store at the copy. */
    s = open_test_store(bdir, NULL);
    uint64_t problems = 99;
    assert_int_equal(store_verify(s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    for (int i = 0; i < 10; i++)
        assert_true(row_exists(s, &lagoon_test_table_videos, videos[i]));
    uint64_t ids[400];
    store_query q = {.table = &lagoon_test_table_users};
    size_t n = scan_all(s, &q, ids, 400);
    assert_true(n >= 5 && n <= 5 + 300);
    /* The restored store takes writes, with ids after everything it holds. */
    uint64_t id;
    assert_int_equal(add_user(s, "after restore", NULL, 0, &id, &err), LAGOON_OK);
    assert_true(id > ids[n - 1]);
    store_close(s);

    /* The command line: backup, then verify the copy. */
    char *out = NULL;
    char b2sub[600];
    snprintf(b2sub, sizeof(b2sub), "%s/copy", b2);
    assert_int_equal(admin(&out, 6, "backup", "--data", dir, "--out", b2sub), 0);
    free(out);
    out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", b2sub), 0);
    assert_non_null(strstr(out, "users: 305 rows, ok"));
    free(out);
    tmpdir_remove(dir);
    tmpdir_remove(bdir);
    tmpdir_remove(b2);
}

static void test_stats_and_usage(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    store_close(s);
    char *out = NULL;
    assert_int_equal(admin(&out, 4, "stats", "--data", dir), 0);
    assert_non_null(strstr(out, "t/videos"));
    assert_non_null(strstr(out, "i/users/by_name"));
    assert_non_null(strstr(out, "map size"));
    /* t/videos holds 10 rows. */
    char *line = strstr(out, "t/videos");
    unsigned long long entries = 0;
    assert_int_equal(sscanf(line, "t/videos %llu", &entries), 1);
    assert_int_equal(entries, 10);
    free(out);
    /* Usage errors: exit status 2. */
    static const char *bad[][4] = {
        {"verify", NULL, NULL, NULL},   {"frobnicate", "--data", "x", NULL},
        {"backup", "--data", "x", NULL}, {"stats", "--data", NULL, NULL},
        {"verify", "--bogus", "x", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int argc = 1;
        while (argc < 5 && bad[i][argc - 1])
            argc++;
        char *argv[6] = {"lagoon-admin"};
        for (int a = 1; a < argc; a++)
            argv[a] = (char *)bad[i][a - 1];
        size_t len;
        out = NULL;
        FILE *f = open_memstream(&out, &len);
        assert_int_equal(store_admin_main(argc, argv, test_schema(), f, f), 2);
        fclose(f);
        free(out);
    }
    /* Not a database at all. */
    out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", "/nonexistent/lagoon"), 1);
    free(out);
    tmpdir_remove(dir);
}

/* ---- SIGKILL in the middle of batches --------------------------------------------------------- */

typedef struct child_writer {
    store *s;
    int fd;
    int thread;
} child_writer;

static void *child_write(void *arg)
{
    child_writer *w = arg;
    char name[32];
    store_error err;
    for (int i = 0; i < 1000000; i++) {
        snprintf(name, sizeof(name), "k%d-%d", w->thread, i);
        uint64_t id;
        if (add_user(w->s, name, NULL, i, &id, &err) != LAGOON_OK)
            _exit(3);
        /* Acknowledged: only now does the parent hear of it (8-byte writes to a pipe are
         * atomic). */
        if (write(w->fd, &id, sizeof(id)) != sizeof(id))
            _exit(4);
    }
    return NULL;
}

static void test_sigkill_loses_no_acknowledged_write(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        store_config cfg = {.schema = test_schema(), .sync = STORE_SYNC_FULL};
        store *s;
        store_error err;
        if (store_open(dir, &cfg, &s, &err))
            _exit(2);
        enum { N = 8 };
        pthread_t th[N];
        child_writer w[N];
        for (int i = 0; i < N; i++) {
            w[i] = (child_writer){s, p[1], i};
            pthread_create(&th[i], NULL, child_write, &w[i]);
        }
        for (int i = 0; i < N; i++)
            pthread_join(th[i], NULL);
        _exit(0);
    }
    close(p[1]);
    enum { WANT = 400, MAX_IDS = 200000 };
    uint64_t *ids = malloc(MAX_IDS * sizeof(*ids));
    assert_non_null(ids);
    size_t n = 0;
    /* Wait for a few hundred acknowledgements (bounded: 30 s of silence fails the test). */
    while (n < WANT) {
        struct pollfd pfd = {p[0], POLLIN, 0};
        int r = poll(&pfd, 1, 30000);
        assert_true(r > 0);
        ssize_t got = read(p[0], &ids[n], sizeof(ids[0]));
        assert_int_equal(got, sizeof(ids[0]));
        n++;
    }
    /* A hot backup by another process (lagoon-admin) while the writer process runs. */
    size_t acked_before_backup = n;
    char *bdir = tmpdir_make();
    char bsub[600];
    snprintf(bsub, sizeof(bsub), "%s/copy", bdir);
    char *out = NULL;
    assert_int_equal(admin(&out, 6, "backup", "--data", dir, "--out", bsub), 0);
    free(out);

    assert_int_equal(kill(pid, SIGKILL), 0);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* Acknowledgements already in the pipe count too. */
    for (;;) {
        ssize_t got = read(p[0], &ids[n], sizeof(ids[0]));
        if (got <= 0 || n + 1 >= MAX_IDS)
            break;
        assert_int_equal(got, sizeof(ids[0]));
        n++;
    }
    close(p[0]);

    /* Reopen (clears the dead process's reader slot) and find every acknowledged row. */
    store *s = open_test_store(dir, NULL);
    for (size_t i = 0; i < n; i++)
        if (!row_exists(s, &lagoon_test_table_users, ids[i]))
            fail_msg("acknowledged users row %llu lost (%zu acknowledged)",
                     (unsigned long long)ids[i], n);
    store_error err;
    uint64_t problems = 99;
    assert_int_equal(store_verify(s, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    /* And the store goes on. */
    uint64_t id;
    assert_int_equal(add_user(s, "after the crash", NULL, 0, &id, &err), LAGOON_OK);
    store_close(s);

    /* The backup is consistent and holds everything acknowledged before it started. */
    out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", bsub), 0);
    free(out);
    s = open_test_store(bsub, NULL);
    for (size_t i = 0; i < acked_before_backup; i++)
        assert_true(row_exists(s, &lagoon_test_table_users, ids[i]));
    store_close(s);
    tmpdir_remove(bdir);
    free(ids);
    tmpdir_remove(dir);
}

/* ---- stale reader slots ----------------------------------------------------------------------- */

typedef struct slot_count {
    pid_t pid;
    int n;
} slot_count;

/* mdb_reader_list prints a header, then one line per live slot: "pid thread txnid". */
static int count_slot(const char *line, void *arg)
{
    slot_count *c = arg;
    long pid = 0;
    if (sscanf(line, "%ld", &pid) == 1 && pid == (long)c->pid)
        c->n++;
    return 0;
}

static int read_byte(int fd, char *c)
{
    return (int)read(fd, c, 1);
}

/* Reader slots of pid in the lock table of the environment in dir, looked at directly. */
static int reader_slots_of(const char *dir, pid_t pid)
{
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 256), 0);
    assert_int_equal(mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0640), 0);
    slot_count c = {pid, 0};
    assert_true(mdb_reader_list(env, count_slot, &c) >= 0);
    mdb_env_close(env);
    return c.n;
}

static const store_config read_only_cfg = {.read_only = 1};

/* A child that opens the store (read-only with `read`, as lagoon-admin does, and then a read
 * transaction; read-write without, as lagoond does); it reports on the pipe and waits to be
 * killed. */
static pid_t holder(const char *dir, int read)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        store_config cfg = {.schema = test_schema(), .read_only = read};
        store *s;
        store_txn *t;
        store_error err;
        if (store_open(dir, &cfg, &s, &err) != LAGOON_OK)
            _exit(2);
        if (read && store_read_begin(s, &t, &err) != LAGOON_OK)
            _exit(2);
        if (write(p[1], "r", 1) != 1)
            _exit(3);
        sleep(30);
        _exit(0);
    }
    close(p[1]);
    char c;
    /* EOF instead of a byte: the child could not open the store. */
    assert_int_equal(read_byte(p[0], &c), 1);
    close(p[0]);
    return pid;
}

static void test_stale_readers_cleared_at_open(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store_close(open_test_store(dir, NULL));
    /* The situation that matters: the server keeps the database open while another process
     * (a lagoon-admin backup, say) dies in the middle of a read. (When nobody holds the
     * database, LMDB's first opener resets the whole reader table anyway.) */
    pid_t keeper = holder(dir, 0);
    pid_t reader = holder(dir, 1);
    kill(reader, SIGKILL);
    waitpid(reader, NULL, 0);
    /* LMDB does not notice a dead reader by itself: its slot would pin old pages... */
    assert_int_equal(reader_slots_of(dir, reader), 1);
    /* ...until a store opens (mdb_reader_check), read-only here since the server has it. */
    store_close(open_test_store(dir, &read_only_cfg));
    assert_int_equal(reader_slots_of(dir, reader), 0);
    kill(keeper, SIGKILL);
    waitpid(keeper, NULL, 0);
    tmpdir_remove(dir);
}

/* ---- one writer per directory ----------------------------------------------------------------- */

static void expect_writer_refused(const char *dir, const char *pid_text)
{
    store_config cfg = {.schema = test_schema()};
    store *s = NULL;
    store_error err;
    assert_int_equal(store_open(dir, &cfg, &s, &err), LAGOON_FAILED_PRECONDITION);
    assert_null(s);
    assert_string_equal(err.field, "dir");
    if (!strstr(err.message, "is running on") || !strstr(err.message, "stop it first") ||
        !strstr(err.message, dir) || (pid_text && !strstr(err.message, pid_text)))
        fail_msg("unexpected refusal: %s", err.message);
}

/* A read-write store locks its directory: a second writer, in this process or another, is
 * refused at once with a message that says what to do, while read-only opens (lagoon-admin
 * verify, backup, stats) go on. kill -9 of the holder frees the directory. */
static void test_one_writer_per_directory(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    store *s = open_test_store(dir, NULL);
    uint64_t users[5], videos[10];
    fill(s, users, videos);
    char mypid[32];
    snprintf(mypid, sizeof(mypid), "(pid %ld)", (long)getpid());
    expect_writer_refused(dir, mypid);
    /* The refused open changed nothing: the holder keeps writing and its data is intact. */
    uint64_t id;
    store_error err;
    assert_int_equal(add_user(s, "still writing", NULL, 0, &id, &err), LAGOON_OK);
    char *out = NULL;
    assert_int_equal(admin(&out, 4, "verify", "--data", dir), 0);
    assert_non_null(strstr(out, "users: 6 rows, ok"));
    free(out);
    store_close(open_test_store(dir, &read_only_cfg));
    store_close(s);
    /* Closing releases the lock. */
    s = open_test_store(dir, NULL);
    store_close(s);

    /* Another process holds it, then dies without closing anything. */
    pid_t pid = holder(dir, 0);
    char theirs[32];
    snprintf(theirs, sizeof(theirs), "(pid %ld)", (long)pid);
    expect_writer_refused(dir, theirs);
    out = NULL;
    assert_int_equal(admin(&out, 4, "stats", "--data", dir), 0);
    free(out);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    s = open_test_store(dir, NULL);
    assert_true(row_exists(s, &lagoon_test_table_users, id));
    store_close(s);
    tmpdir_remove(dir);
}

/* The installed tool itself: its exit statuses. (It carries the application schema, so its
 * work on a real database is tested with the application, in tests/integration.) */
static int run_binary_out(const char *args, const char *stderr_to, char *out, size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s %s 2>%s", LAGOON_ADMIN_PATH, args, stderr_to);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* Standard output and error together. */
static int run_binary(const char *args, char *out, size_t cap)
{
    return run_binary_out(args, "&1", out, cap);
}

static void test_lagoon_admin_binary(void **state)
{
    (void)state;
    static char out[65536];
    assert_int_equal(run_binary("verify --data /nonexistent/lagoon", out, sizeof(out)), 1);
    assert_int_equal(run_binary("bogus", out, sizeof(out)), 2);
    assert_non_null(strstr(out, "usage: lagoon-admin"));
    assert_non_null(strstr(out, "create-admin"));
    /* Asked for, the usage goes to standard output (stderr is dropped here) with status 0. */
    static const char *const help[] = {"--help", "-h", "create-admin --help"};
    for (size_t i = 0; i < sizeof(help) / sizeof(help[0]); i++) {
        int st = run_binary_out(help[i], "/dev/null", out, sizeof(out));
        if (st != 0 || !strstr(out, "create-admin --data DIR"))
            fail_msg("%s: status %d, output: %s", help[i], st, out);
        if (i < 2 && !strstr(out, "verify"))
            fail_msg("%s: no verify in: %s", help[i], out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_catches_corruption),
        cmocka_unit_test(test_verify_dangling_foreign_key),
        cmocka_unit_test(test_damaged_row),
        cmocka_unit_test(test_backup_restored_and_verified),
        cmocka_unit_test(test_stats_and_usage),
        cmocka_unit_test(test_sigkill_loses_no_acknowledged_write),
        cmocka_unit_test(test_stale_readers_cleared_at_open),
        cmocka_unit_test(test_one_writer_per_directory),
        cmocka_unit_test(test_lagoon_admin_binary),
    };
    return cmocka_run_group_tests_name("store_admin", tests, NULL, NULL);
}
