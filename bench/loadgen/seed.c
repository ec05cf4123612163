/* seed: `lagoon-bench seed`, and reading back what it made. See seed.h.
 *
 *   lagoon-bench seed --data DIR --users N --messages M [--conversations K] [--long L]
 *                     [--argon2-ops OPS --argon2-mem-kib KIB]
 *
 * Conversations. Conversation 0 is between user0 and user1 and holds L messages (the "long
 * conversation" list_messages reads; default all M when K is 1, else M/2); the other K-1
 * conversations pair user a with user (a+d) mod N for d = 1, 2, ... and share the remaining
 * messages round-robin. Senders alternate within a conversation. Member rows are written last,
 * consistent with what a Send would have left (last message, activity, everything read).
 *
 * Rows go through store_insert, so every index and foreign key is maintained exactly as the
 * server maintains them; only the RPC layer and the per-row fsync are skipped. No events or
 * notifications are written for seeded messages (they are history, not news).
 */
#include "seed.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "accounts.h"
#include "app.h"
#include "log.h"
#include "messages.h"

/* Rows per write transaction. Large enough that commits are a small share of the load, small
 * enough that a transaction's dirty pages stay well inside memory. */
#define SEED_USER_BATCH 5000u
#define SEED_MESSAGE_BATCH 20000u
#define SEED_CONV_BATCH 10000u
#define SEED_MAX_USERS 10000000ull
#define SEED_MAX_MESSAGES 1000000000ull

#define SEED_EXIT_FAILED 1
#define SEED_EXIT_USAGE 2

_Static_assert(BENCH_TOKEN_CHARS == ACCOUNT_TOKEN_CHARS, "token length differs from the server's");

typedef struct seed_conv {
    uint32_t a, b;         /* user indexes */
    uint64_t id;           /* conversation id */
    uint64_t count;        /* messages planned */
    uint64_t last_id;      /* newest message id (0: none) */
    int64_t last_at;       /* its created_at, ms */
} seed_conv;

typedef struct seed_plan {
    uint64_t users, messages, conversations, long_messages;
    uint64_t first_user_id;
    int64_t now_ms;
    char hash[ACCOUNT_HASH_MAX];                /* the one password hash every user shares */
    char (*tokens)[ACCOUNT_TOKEN_CHARS + 1];    /* by user index */
    seed_conv *convs;
    uint64_t from, count;                       /* the current batch */
    lagoon_v1_User user;                        /* scratch rows: a User is a few KiB */
    lagoon_v1_DirectMessage msg;                /* and a message 16 KiB */
} seed_plan;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- write functions (writer thread; may be replayed, so they only overwrite results) ---------- */

static int write_users(store_txn *t, void *arg, store_error *err)
{
    seed_plan *p = arg;
    for (uint64_t i = p->from; i < p->from + p->count; i++) {
        lagoon_v1_User *u = &p->user;
        *u = (lagoon_v1_User)lagoon_v1_User_init_zero;
        snprintf(u->email, sizeof(u->email), "user%llu@bench.invalid", (unsigned long long)i);
        snprintf(u->username, sizeof(u->username), "user%llu", (unsigned long long)i);
        snprintf(u->full_name, sizeof(u->full_name), "Bench User %llu", (unsigned long long)i);
        snprintf(u->password_hash, sizeof(u->password_hash), "%s", p->hash);
        u->role = lagoon_v1_Role_STUDENT;
        u->active = true;
        u->verified = true;
        u->created_at = u->updated_at = p->now_ms;
        uint64_t id;
        int st = store_insert(t, &lagoon_table_users, u, &id, err);
        if (st != LAGOON_OK)
            return st;
        if (i == 0)
            p->first_user_id = id;
        else if (id != p->first_user_id + i) /* scenarios compute ids from indexes */
            return store_fail(err, LAGOON_INTERNAL, NULL, "user%llu got id %llu, expected %llu",
                              (unsigned long long)i, (unsigned long long)id,
                              (unsigned long long)(p->first_user_id + i));
        lagoon_v1_Session s = lagoon_v1_Session_init_zero;
        char refresh[ACCOUNT_TOKEN_CHARS + 1];
        account_token_new(p->tokens[i], s.access_hash);
        account_token_new(refresh, s.refresh_hash);
        s.user_id = id;
        s.created_at = p->now_ms;
        s.access_expires_at = s.refresh_expires_at = p->now_ms + (int64_t)BENCH_SEED_TOKEN_TTL_S * 1000;
        snprintf(s.peer, sizeof(s.peer), "lagoon-bench seed");
        st = store_insert(t, &lagoon_table_sessions, &s, NULL, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

static int write_conversations(store_txn *t, void *arg, store_error *err)
{
    seed_plan *p = arg;
    for (uint64_t j = p->from; j < p->from + p->count; j++) {
        seed_conv *c = &p->convs[j];
        uint64_t ia = p->first_user_id + c->a, ib = p->first_user_id + c->b;
        lagoon_v1_Conversation row = lagoon_v1_Conversation_init_zero;
        row.user_low = ia < ib ? ia : ib;
        row.user_high = ia < ib ? ib : ia;
        row.created_at = p->now_ms - (int64_t)p->messages - 1000;
        int st = store_insert(t, &lagoon_table_conversations, &row, &c->id, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

/* Message g (0 .. messages-1): the long conversation's first, then the others round-robin. */
static void message_place(const seed_plan *p, uint64_t g, uint64_t *conv, uint64_t *k)
{
    if (g < p->long_messages) {
        *conv = 0;
        *k = g;
    } else {
        uint64_t n = g - p->long_messages, others = p->conversations - 1;
        *conv = 1 + n % others;
        *k = n / others;
    }
}

static int write_messages(store_txn *t, void *arg, store_error *err)
{
    seed_plan *p = arg;
    lagoon_v1_DirectMessage *m = &p->msg;
    for (uint64_t g = p->from; g < p->from + p->count; g++) {
        uint64_t j, k;
        message_place(p, g, &j, &k);
        seed_conv *c = &p->convs[j];
        *m = (lagoon_v1_DirectMessage)lagoon_v1_DirectMessage_init_zero;
        m->conversation_id = c->id;
        m->sender_id = p->first_user_id + (k % 2 ? c->b : c->a);
        m->recipient_id = p->first_user_id + (k % 2 ? c->a : c->b);
        m->which_content = lagoon_v1_DirectMessage_text_tag;
        snprintf(m->content.text.text, sizeof(m->content.text.text),
                 "seeded message %llu of conversation %llu", (unsigned long long)k, (unsigned long long)j);
        /* One ms apart, ending now: as if sent in order, all in the past. */
        m->created_at = p->now_ms - (int64_t)(p->messages - g);
        int st = store_insert(t, &lagoon_table_direct_messages, m, &c->last_id, err);
        if (st != LAGOON_OK)
            return st;
        c->last_at = m->created_at;
    }
    return LAGOON_OK;
}

static int write_members(store_txn *t, void *arg, store_error *err)
{
    seed_plan *p = arg;
    for (uint64_t j = p->from; j < p->from + p->count; j++) {
        const seed_conv *c = &p->convs[j];
        for (int side = 0; side < 2; side++) {
            lagoon_v1_ConversationMember mb = lagoon_v1_ConversationMember_init_zero;
            mb.conversation_id = c->id;
            mb.user_id = p->first_user_id + (side ? c->b : c->a);
            mb.other_user_id = p->first_user_id + (side ? c->a : c->b);
            mb.last_activity_at = c->last_id ? c->last_at : p->now_ms - (int64_t)p->messages - 1000;
            mb.last_message_id = c->last_id;
            mb.read_up_to = c->last_id;
            int st = store_insert(t, &lagoon_table_conversation_members, &mb, NULL, err);
            if (st != LAGOON_OK)
                return st;
        }
    }
    return LAGOON_OK;
}

/* Runs fn over [0, total) in batches of batch rows, one transaction each, with progress. */
static int write_batches(app *a, seed_plan *p, store_write_fn fn, uint64_t total, uint64_t batch, const char *what)
{
    double t0 = now_s(), last = t0;
    for (uint64_t done = 0; done < total; done += p->count) {
        p->from = done;
        p->count = total - done < batch ? total - done : batch;
        store_error err;
        if (store_write(a->db, fn, p, &err) != LAGOON_OK) {
            fprintf(stderr, "lagoon-bench seed: %s %llu..: %s\n", what, (unsigned long long)done, err.message);
            return -1;
        }
        if (now_s() - last > 5) {
            last = now_s();
            fprintf(stderr, "  %s: %llu of %llu\n", what, (unsigned long long)(done + p->count),
                    (unsigned long long)total);
        }
    }
    fprintf(stderr, "seeded %llu %s in %.1f s\n", (unsigned long long)total, what, now_s() - t0);
    return 0;
}

/* ---- planning ------------------------------------------------------------------------------------ */

/* Distinct pairs (a, a+d mod N) for d = 1, 2, ...: N of them per d while 2d < N, N/2 when
 * 2d == N. Conversation 0 is (0, 1). */
static uint64_t max_conversations(uint64_t n)
{
    return n * (n - 1) / 2;
}

static void plan_pairs(seed_plan *p)
{
    uint64_t n = p->users, j = 0;
    for (uint64_t d = 1; 2 * d <= n && j < p->conversations; d++) {
        uint64_t per = 2 * d < n ? n : n / 2;
        for (uint64_t a = 0; a < per && j < p->conversations; a++, j++) {
            p->convs[j].a = (uint32_t)a;
            p->convs[j].b = (uint32_t)((a + d) % n);
        }
    }
    for (uint64_t g = 0; g < p->messages; g++) { /* cheap next to writing: counts per conversation */
        uint64_t c, k;
        message_place(p, g, &c, &k);
        p->convs[c].count++;
    }
}

static int any_row(void *arg, uint64_t id, const void *row)
{
    (void)arg;
    (void)id;
    (void)row;
    return LAGOON_OK;
}

/* 1 if the users table has any row: seed fills fresh databases only. */
static int has_users(app *a, store_error *err)
{
    store_txn *t;
    if (store_read_begin(a->db, &t, err) != LAGOON_OK)
        return -1;
    store_query q = {0};
    q.table = &lagoon_table_users;
    q.page_size = 1;
    store_page page;
    int st = store_scan(t, &q, any_row, NULL, &page, err);
    store_read_end(t);
    if (st != LAGOON_OK)
        return -1;
    return page.count > 0;
}

static int write_files(const char *dir, const seed_plan *p)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, BENCH_SEED_TOKENS_FILE);
    /* Live credentials: readable by the owner only. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (uint64_t i = 0; i < p->users; i++)
        fprintf(f, "%s\n", p->tokens[i]);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", path, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, BENCH_SEED_INFO_FILE);
    f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "# written by lagoon-bench seed; read by lagoon-bench --data. %s holds live access\n"
               "# tokens of these users (a benchmark artifact: never seed a database real users use).\n",
            BENCH_SEED_TOKENS_FILE);
    fprintf(f, "users=%llu\nfirst_user_id=%llu\nmessages=%llu\nconversations=%llu\n", (unsigned long long)p->users,
            (unsigned long long)p->first_user_id, (unsigned long long)p->messages,
            (unsigned long long)p->conversations);
    fprintf(f, "long_user_a=0\nlong_user_b=1\nlong_messages=%llu\npassword=%s\n",
            (unsigned long long)(p->conversations ? p->convs[0].count : 0), BENCH_SEED_PASSWORD);
    return fclose(f) == 0 ? 0 : -1;
}

/* LMDB without fsync leaves the load in the page cache: one fsync of the files at the end
 * makes it durable before the benchmark's server opens it. */
static void sync_dir(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[1200];
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            (void)fsync(fd);
            close(fd);
        }
    }
}

static int usage(void)
{
    fprintf(stderr,
            "usage: lagoon-bench seed --data DIR --users N --messages M [--conversations K] [--long L]\n"
            "                         [--argon2-ops OPS] [--argon2-mem-kib KIB]\n\n"
            "Fills a fresh database in DIR offline (no server may be running on DIR): N users\n"
            "user<i> / user<i>@bench.invalid with password '%s' and one signed-in session\n"
            "each, K conversations (default min(N, pairs) when M > 0), M messages; conversation 0\n"
            "(user0-user1) holds L of them (default M if K = 1, else M/2).\n"
            "Writes DIR/%s (the access token of user i on line i+1: LIVE credentials, mode\n"
            "0600, a benchmark artifact) and DIR/%s.\n"
            "--argon2-ops/--argon2-mem-kib: as given to lagoond, so that logins need no rehash.\n",
            BENCH_SEED_PASSWORD, BENCH_SEED_TOKENS_FILE, BENCH_SEED_INFO_FILE);
    return SEED_EXIT_USAGE;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max)
        return -1;
    *out = v;
    return 0;
}

int bench_seed_main(int argc, char **argv)
{
    const char *dir = NULL;
    uint64_t users = 0, messages = UINT64_MAX, conversations = UINT64_MAX, long_messages = UINT64_MAX;
    uint64_t ops = 0, mem_kib = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0)
        {
            usage();
            return 0;
        }
        if (v == NULL) {
            fprintf(stderr, "lagoon-bench seed: %s wants a value\n", f);
            return usage();
        }
        i++;
        int bad = 0;
        if (strcmp(f, "--data") == 0)
            dir = v;
        else if (strcmp(f, "--users") == 0)
            bad = parse_u64(v, SEED_MAX_USERS, &users);
        else if (strcmp(f, "--messages") == 0)
            bad = parse_u64(v, SEED_MAX_MESSAGES, &messages);
        else if (strcmp(f, "--conversations") == 0)
            bad = parse_u64(v, UINT64_MAX - 1, &conversations);
        else if (strcmp(f, "--long") == 0)
            bad = parse_u64(v, SEED_MAX_MESSAGES, &long_messages);
        else if (strcmp(f, "--argon2-ops") == 0)
            bad = parse_u64(v, 16, &ops);
        else if (strcmp(f, "--argon2-mem-kib") == 0)
            bad = parse_u64(v, 4u << 20, &mem_kib);
        else {
            fprintf(stderr, "lagoon-bench seed: unknown option %s\n", f);
            return usage();
        }
        if (bad) {
            fprintf(stderr, "lagoon-bench seed: %s %s: not a valid number\n", f, v);
            return usage();
        }
    }
    if (dir == NULL || users == 0 || messages == UINT64_MAX) {
        fprintf(stderr, "lagoon-bench seed: --data, --users and --messages are required\n");
        return usage();
    }
    if (users < 2) {
        fprintf(stderr, "lagoon-bench seed: --users must be at least 2 (messages need two people)\n");
        return SEED_EXIT_USAGE;
    }
    if (conversations == UINT64_MAX)
        conversations = messages == 0 ? 0 : users < max_conversations(users) ? users : max_conversations(users);
    if (conversations > max_conversations(users) || (messages > 0 && conversations == 0)) {
        fprintf(stderr, "lagoon-bench seed: --conversations must be 1..%llu (pairs of %llu users) when there are messages\n",
                (unsigned long long)max_conversations(users), (unsigned long long)users);
        return SEED_EXIT_USAGE;
    }
    if (long_messages == UINT64_MAX)
        long_messages = conversations <= 1 ? messages : messages / 2;
    if (long_messages > messages || (conversations == 1 && long_messages != messages)) {
        fprintf(stderr, "lagoon-bench seed: --long must be at most --messages (and equal to it with one conversation)\n");
        return SEED_EXIT_USAGE;
    }

    log_set_level(LOG_WARN);
    seed_plan *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return SEED_EXIT_FAILED;
    p->users = users;
    p->messages = messages;
    p->conversations = conversations;
    p->long_messages = long_messages;
    p->tokens = calloc(users, sizeof(*p->tokens));
    p->convs = calloc(conversations ? conversations : 1, sizeof(*p->convs));
    int rc = SEED_EXIT_FAILED;
    app *a = NULL;
    if (p->tokens == NULL || p->convs == NULL) {
        fprintf(stderr, "lagoon-bench seed: out of memory\n");
        goto out;
    }
    plan_pairs(p);

    app_config cfg = {0};
    cfg.sync = STORE_SYNC_NONE; /* a bulk load: one fsync at the end (sync_dir) */
    cfg.pwhash_opslimit = ops;
    cfg.pwhash_memlimit = (size_t)mem_kib * 1024;
    rpc_error rerr;
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", dir, strerror(errno));
        goto out;
    }
    if (app_open(dir, &cfg, &a, &rerr) != RPC_OK) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", dir, rerr.message);
        a = NULL;
        goto out;
    }
    store_error err;
    int has = has_users(a, &err);
    if (has != 0) {
        fprintf(stderr, "lagoon-bench seed: %s: %s\n", dir,
                has < 0 ? err.message : "the database already has users; seed fills a fresh one only");
        goto out;
    }
    p->now_ms = app_now(a);
    double t0 = now_s();
    if (account_hash_password(a, BENCH_SEED_PASSWORD, p->hash) != 0) {
        fprintf(stderr, "lagoon-bench seed: out of memory hashing the password\n");
        goto out;
    }
    fprintf(stderr, "hashed the shared password once (Argon2id, the server's limits) in %.3f s\n", now_s() - t0);
    t0 = now_s();
    if (write_batches(a, p, write_users, users, SEED_USER_BATCH, "users (with a session each)") != 0 ||
        write_batches(a, p, write_conversations, conversations, SEED_CONV_BATCH, "conversations") != 0 ||
        write_batches(a, p, write_messages, messages, SEED_MESSAGE_BATCH, "messages") != 0 ||
        write_batches(a, p, write_members, conversations, SEED_CONV_BATCH / 2, "conversation member pairs") != 0 ||
        write_files(dir, p) != 0)
        goto out;
    app_close(a);
    a = NULL;
    sync_dir(dir);
    printf("seeded %s in %.1f s: %llu users (user0..user%llu, ids %llu..), %llu conversations, %llu messages "
           "(%llu in user0-user1)\ntokens: %s/%s (live credentials; delete with the database)\n",
           dir, now_s() - t0, (unsigned long long)users, (unsigned long long)(users - 1),
           (unsigned long long)p->first_user_id, (unsigned long long)conversations, (unsigned long long)messages,
           (unsigned long long)(conversations ? p->convs[0].count : 0), dir, BENCH_SEED_TOKENS_FILE);
    rc = 0;
out:
    if (a)
        app_close(a);
    if (p->tokens) /* they are credentials */
        sodium_memzero(p->tokens, users * sizeof(*p->tokens));
    free(p->tokens);
    free(p->convs);
    free(p);
    return rc;
}

/* ---- reading it back ---------------------------------------------------------------------------- */

int bench_data_load(const char *tokens_path, bench_data *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->first_user_id = 1;
    out->long_a = 0;
    out->long_b = 1;
    snprintf(out->password, sizeof(out->password), "%s", BENCH_SEED_PASSWORD);
    FILE *f = fopen(tokens_path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s (seed a database first: lagoon-bench seed --data DIR ...)", tokens_path,
                 strerror(errno));
        return -1;
    }
    size_t cap = 0;
    char line[128];
    while (fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n == 0)
            continue;
        if (n != BENCH_TOKEN_CHARS) {
            snprintf(err, errlen, "%s: line %zu is not a %d-character token", tokens_path, out->users + 1,
                     BENCH_TOKEN_CHARS);
            fclose(f);
            bench_data_free(out);
            return -1;
        }
        if (out->users == cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            void *t = realloc(out->tokens, ncap * sizeof(*out->tokens));
            if (t == NULL) {
                snprintf(err, errlen, "out of memory reading %s", tokens_path);
                fclose(f);
                bench_data_free(out);
                return -1;
            }
            out->tokens = t;
            cap = ncap;
        }
        memcpy(out->tokens[out->users++], line, BENCH_TOKEN_CHARS + 1);
    }
    fclose(f);
    if (out->users < 2) {
        snprintf(err, errlen, "%s: fewer than 2 tokens", tokens_path);
        bench_data_free(out);
        return -1;
    }
    /* The info file beside it, if any. */
    char info[1200];
    const char *slash = strrchr(tokens_path, '/');
    int dlen = slash ? (int)(slash - tokens_path) : 1;
    snprintf(info, sizeof(info), "%.*s/%s", dlen, slash ? tokens_path : ".", BENCH_SEED_INFO_FILE);
    f = fopen(info, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = '\0';
        const char *k = line, *v = eq + 1;
        unsigned long long u = strtoull(v, NULL, 10);
        if (strcmp(k, "first_user_id") == 0)
            out->first_user_id = u;
        else if (strcmp(k, "long_user_a") == 0)
            out->long_a = (size_t)u;
        else if (strcmp(k, "long_user_b") == 0)
            out->long_b = (size_t)u;
        else if (strcmp(k, "long_messages") == 0)
            out->long_messages = u;
        else if (strcmp(k, "password") == 0)
            snprintf(out->password, sizeof(out->password), "%s", v);
    }
    fclose(f);
    if (out->long_a >= out->users || out->long_b >= out->users || out->long_a == out->long_b) {
        snprintf(err, errlen, "%s: the long conversation's users are not in %s", info, tokens_path);
        bench_data_free(out);
        return -1;
    }
    return 0;
}

void bench_data_free(bench_data *d)
{
    free(d->tokens);
    d->tokens = NULL;
    d->users = 0;
}
