/* messages-bench: Messages/Send (durable), Messages/List and Messages/MarkRead in conversations
 * of 1 000 and 1 000 000 messages, through the real server and clients on loopback.
 *
 *   messages-bench [--sizes 1000,1000000] [--seconds 5] [--connections 50] [--lists 2000]
 *                  [--markreads 100]
 *
 * For each size: a fresh store in a temporary directory, one conversation seeded with that many
 * messages straight through the store (bulk transactions; seeding is not what is measured), then
 * lagoond's stack in this process on an ephemeral port with durable commits (sync=full).
 *   List: a blocking client reads the newest page (50 messages) `lists` times, then a catch-up
 *         page (50 messages after an id in the middle) `lists` times.
 *   MarkRead: a blocking client marks the conversation read one message further `markreads`
 *         times, from the oldest: each call leaves nearly the whole conversation unread after it.
 *   Send: `connections` async clients, one text message in flight each, for `seconds`.
 * It also measures the disk's fsyncs per second in the same directory, for the group-commit
 * ratio. Every loop is bounded; everything it creates is removed. */
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pb_decode.h>

#include "accounts.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "messages.h"

#define SEED_BATCH 20000   /* messages per seeding transaction */
#define MAX_SAMPLES 4000000 /* latency samples kept per measurement */
#define PAGE 50

/* ---- latency samples ---------------------------------------------------------------------------- */

/* Milliseconds at percentile p, rounded to the nearest rank (samples sorted first). */
static double pct(const bench_stats *s, double p)
{
    if (s->n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(s->n - 1) + 0.5);
    return s->us[i] / 1000.0;
}

static void report(const char *what, uint64_t size, bench_stats *s, double seconds)
{
    qsort(s->us, s->n, sizeof(s->us[0]), bench_cmp_u32);
    printf("| %-16s | %9llu | %9zu | %10.0f | %7.3f | %7.3f | %7.3f |\n", what, (unsigned long long)size, s->n,
           (double)s->n / seconds, pct(s, 50), pct(s, 99), pct(s, 100));
    fflush(stdout);
    bench_stats_reset(s);
}

/* ---- seeding, straight through the store ------------------------------------------------------- */

typedef struct seed {
    uint64_t a, b, conv;
    uint64_t from, count;
    uint64_t count_all; /* messages seeded */
    uint64_t last_id;
    lagoon_v1_Session session;
} seed;

static int seed_users(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_User u = lagoon_v1_User_init_zero;
    snprintf(u.password_hash, sizeof(u.password_hash), "unused");
    u.role = lagoon_v1_Role_STUDENT;
    u.active = true;
    u.verified = true;
    snprintf(u.email, sizeof(u.email), "a@bench.invalid");
    snprintf(u.username, sizeof(u.username), "bench_a");
    int st = store_insert(t, &lagoon_table_users, &u, &sd->a, err);
    snprintf(u.email, sizeof(u.email), "b@bench.invalid");
    snprintf(u.username, sizeof(u.username), "bench_b");
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_users, &u, &sd->b, err);
    lagoon_v1_Conversation c = {0, sd->a, sd->b, 1};
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_conversations, &c, &sd->conv, err);
    for (int i = 0; i < 2 && st == LAGOON_OK; i++) {
        lagoon_v1_ConversationMember m = lagoon_v1_ConversationMember_init_zero;
        m.conversation_id = sd->conv;
        m.user_id = i ? sd->b : sd->a;
        m.other_user_id = i ? sd->a : sd->b;
        st = store_insert(t, &lagoon_table_conversation_members, &m, NULL, err);
    }
    return st;
}

static int seed_messages(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_DirectMessage m = lagoon_v1_DirectMessage_init_zero;
    m.conversation_id = sd->conv;
    m.which_content = lagoon_v1_DirectMessage_text_tag;
    for (uint64_t i = 0; i < sd->count; i++) {
        uint64_t n = sd->from + i;
        m.id = 0;
        m.sender_id = n % 2 ? sd->b : sd->a;
        m.recipient_id = n % 2 ? sd->a : sd->b;
        m.created_at = (int64_t)n;
        snprintf(m.content.text.text, sizeof(m.content.text.text), "seeded message number %llu",
                 (unsigned long long)n);
        int st = store_insert(t, &lagoon_table_direct_messages, &m, &sd->last_id, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

/* The member rows as Sends would have left them: both wrote, the last message, nothing read. */
static int seed_members(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    for (int i = 0; i < 2; i++) {
        store_key k;
        store_key_reset(&k);
        store_key_u64(&k, sd->conv);
        store_key_u64(&k, i ? sd->b : sd->a);
        lagoon_v1_ConversationMember m;
        int st = store_get_by(t, &lagoon_table_conversation_members, lagoon_index_conversation_members_by_conv_user, &k,
                              NULL, &m, err);
        if (st != LAGOON_OK)
            return st;
        m.last_message_id = sd->last_id;
        m.unread = (uint32_t)(i ? (sd->count_all + 1) / 2 : sd->count_all / 2); /* a sends the even ones */
        m.other_wrote = true;
        st = store_update(t, &lagoon_table_conversation_members, &m, err);
        if (st != LAGOON_OK)
            return st;
    }
    return LAGOON_OK;
}

/* A session for user a, made in the store: the benchmark measures messages, not Argon2. */
static int seed_session(store_txn *t, void *arg, store_error *err)
{
    return store_insert(t, &lagoon_table_sessions, &((seed *)arg)->session, NULL, err);
}

static int do_seed(app *a, uint64_t size, seed *sd, char *token)
{
    store_error err;
    if (store_write(a->db, seed_users, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    uint64_t t0 = bench_now_us();
    for (uint64_t done = 0; done < size; done += sd->count) {
        sd->from = done;
        sd->count = size - done < SEED_BATCH ? size - done : SEED_BATCH;
        if (store_write(a->db, seed_messages, sd, &err) != LAGOON_OK) {
            fprintf(stderr, "seed: %s\n", err.message);
            return -1;
        }
    }
    fprintf(stderr, "seeded %llu messages in %.1f s\n", (unsigned long long)size, (double)(bench_now_us() - t0) / 1e6);
    sd->count_all = size;
    if (store_write(a->db, seed_members, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    memset(&sd->session, 0, sizeof(sd->session));
    bench_session_tokens(&sd->session, token);
    sd->session.user_id = sd->a;
    return store_write(a->db, seed_session, sd, &err) == LAGOON_OK ? 0 : -1;
}

/* ---- Send, from many async clients --------------------------------------------------------------- */

typedef struct sender {
    struct send_bench *b;
    lagoon_async *c;
    lagoon_v1_SendMessageRequest req;
    lagoon_v1_DirectMessage resp;
    uint64_t started;
} sender;

typedef struct send_bench {
    struct event_base *base;
    uint64_t deadline;
    bench_stats *s;
    uint64_t errors;
    int open;
} send_bench;

static void send_one(sender *sn);

static void send_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    sender *sn = arg;
    uint64_t t = bench_now_us();
    if (status == LAGOON_OK)
        bench_stats_add(sn->b->s, t - sn->started);
    else if (sn->b->errors++ == 0)
        fprintf(stderr, "send: %s %s\n", lagoon_status_name(status), meta->message);
    if (t < sn->b->deadline)
        send_one(sn);
    else if (--sn->b->open == 0)
        event_base_loopexit(sn->b->base, NULL);
}

static void send_one(sender *sn)
{
    sn->started = bench_now_us();
    if (lagoon_async_Messages_Send(sn->c, &sn->req, &sn->resp, send_done, sn) != LAGOON_OK &&
        --sn->b->open == 0)
        event_base_loopexit(sn->b->base, NULL);
}

static void bench_send(uint16_t port, const char *token, uint64_t to, int conns, int seconds, bench_stats *s,
                       uint64_t size)
{
    send_bench b = {event_base_new(), 0, s, 0, conns};
    sender *sn = calloc((size_t)conns, sizeof(*sn));
    for (int i = 0; i < conns; i++) {
        char err[256];
        sn[i].b = &b;
        if (lagoon_async_connect(b.base, "127.0.0.1", port, NULL, &sn[i].c, err, sizeof(err)) != LAGOON_OK) {
            fprintf(stderr, "connect: %s\n", err);
            exit(1);
        }
        lagoon_async_set_token(sn[i].c, token);
        sn[i].req.recipient_id = to;
        sn[i].req.which_content = lagoon_v1_SendMessageRequest_text_tag;
        snprintf(sn[i].req.content.text.text, sizeof(sn[i].req.content.text.text),
                 "a benchmark message from connection %d", i);
    }
    uint64_t t0 = bench_now_us();
    b.deadline = t0 + (uint64_t)seconds * 1000000u;
    for (int i = 0; i < conns; i++)
        send_one(&sn[i]);
    struct timeval limit = {seconds + 30, 0};
    event_base_loopexit(b.base, &limit);
    event_base_dispatch(b.base);
    double elapsed = (double)(bench_now_us() - t0) / 1e6;
    char what[32];
    snprintf(what, sizeof(what), "Send x%d", conns);
    report(what, size, s, elapsed);
    if (b.errors)
        fprintf(stderr, "send errors: %llu\n", (unsigned long long)b.errors);
    for (int i = 0; i < conns; i++)
        lagoon_async_free(sn[i].c);
    free(sn);
    event_base_free(b.base);
}

/* ---- List, from a blocking client ------------------------------------------------------------------ */

/* A blocking client signed in with token; exits on failure. */
static lagoon_client *blocking_client(uint16_t port, const char *token)
{
    lagoon_client *c;
    lagoon_error err;
    if (lagoon_connect("127.0.0.1", port, NULL, &c, &err) != LAGOON_OK) {
        fprintf(stderr, "connect: %s\n", err.detail.message);
        exit(1);
    }
    lagoon_set_token(c, token);
    return c;
}

static void bench_list(uint16_t port, const char *token, uint64_t other, uint64_t since, int n, bench_stats *s,
                       uint64_t size, const char *what)
{
    lagoon_client *c = blocking_client(port, token);
    lagoon_v1_ListMessagesRequest req = lagoon_v1_ListMessagesRequest_init_zero;
    req.other_user_id = other;
    req.page_size = PAGE;
    req.since = since;
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < n; i++) {
        lagoon_v1_ListMessagesResponse resp = lagoon_v1_ListMessagesResponse_init_zero;
        uint64_t t = bench_now_us();
        int st = lagoon_Messages_List(c, &req, &resp);
        if (st != LAGOON_OK || resp.messages_count != PAGE) {
            fprintf(stderr, "list: %s %s (%u messages)\n", lagoon_status_name(st),
                    lagoon_last_error(c)->detail.message, (unsigned)resp.messages_count);
            exit(1);
        }
        bench_stats_add(s, bench_now_us() - t);
        pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    }
    report(what, size, s, (double)(bench_now_us() - t0) / 1e6);
    lagoon_close(c);
}

/* ---- MarkRead, from a blocking client ------------------------------------------------------------ */

/* User a reads b's messages one at a time from the oldest: seeded message n has id first + n and
 * b sent the odd ones. */
static void bench_markread(uint16_t port, const char *token, uint64_t other, uint64_t first, int n, bench_stats *s,
                           uint64_t size)
{
    lagoon_client *c = blocking_client(port, token);
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < n && 2 * (uint64_t)i + 1 < size; i++) {
        lagoon_v1_MarkReadRequest req = {other, first + 2 * (uint64_t)i + 1};
        lagoon_v1_MarkReadResponse resp;
        uint64_t t = bench_now_us();
        int st = lagoon_Messages_MarkRead(c, &req, &resp);
        if (st != LAGOON_OK || resp.unread != size / 2 - (uint64_t)i - 1) {
            fprintf(stderr, "markread: %s %s (%u unread)\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message,
                    (unsigned)resp.unread);
            exit(1);
        }
        bench_stats_add(s, bench_now_us() - t);
    }
    report("MarkRead +1", size, s, (double)(bench_now_us() - t0) / 1e6);
    lagoon_close(c);
}

/* ---- the disk ------------------------------------------------------------------------------------- */

static double fsyncs_per_second(const char *dir)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/fsync-probe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 0;
    char block[4096];
    memset(block, 'f', sizeof(block));
    uint64_t t0 = bench_now_us(), n = 0;
    while (bench_now_us() - t0 < 2000000u && n < 100000) {
        if (pwrite(fd, block, sizeof(block), 0) != (ssize_t)sizeof(block) || fdatasync(fd) != 0)
            break;
        n++;
    }
    double r = (double)n / ((double)(bench_now_us() - t0) / 1e6);
    close(fd);
    unlink(path);
    return r;
}

/* ---- main ---------------------------------------------------------------------------------------- */

static int run_size(uint64_t size, int conns, int seconds, int lists, int markreads, bench_stats *s, double *fsyncs)
{
    bench_stack stack;
    if (bench_stack_dir(&stack, "/tmp/lagoon-msgbench-XXXXXX") != 0)
        return -1;
    *fsyncs = fsyncs_per_second(stack.dir); /* before the store is in the directory */
    app_config acfg = {0}; /* durable commits: sync full */
    acfg.sends.max_events = UINT32_MAX; /* one user sends them all: the writer is measured, not the limit */
    seed sd;
    memset(&sd, 0, sizeof(sd));
    char token[ACCOUNT_TOKEN_CHARS + 1];
    if (bench_stack_open(&stack, NULL, &acfg) != 0 || do_seed(stack.app, size, &sd, token) != 0 ||
        bench_stack_serve(&stack, NULL) != 0) {
        bench_stack_stop(&stack);
        return -1;
    }
    uint16_t port = bench_stack_port(&stack);

    bench_list(port, token, sd.b, 0, lists, s, size, "List newest 50");
    bench_list(port, token, sd.b, sd.last_id - size / 2, lists, s, size, "List since mid");
    bench_markread(port, token, sd.b, sd.last_id - size + 1, markreads, s, size);
    bench_send(port, token, sd.b, conns, seconds, s, size);

    return bench_stack_stop(&stack);
}

int main(int argc, char **argv)
{
    char sizes[256] = "1000,1000000";
    int seconds = 5, conns = 50, lists = 2000, markreads = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            snprintf(sizes, sizeof(sizes), "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--connections") == 0)
            conns = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--lists") == 0)
            lists = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--markreads") == 0)
            markreads = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: messages-bench [--sizes N,N] [--seconds S] [--connections C] [--lists N] "
                            "[--markreads N]\n");
            return 2;
        }
    }
    if (seconds < 1 || seconds > 600 || conns < 1 || conns > 1000 || lists < 1 || lists > 1000000 || markreads < 1 ||
        markreads > 100000) {
        fprintf(stderr, "messages-bench: seconds 1..600, connections 1..1000, lists 1..1000000, markreads 1..100000\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    bench_stats s;
    if (bench_stats_init(&s, MAX_SAMPLES) != 0)
        return 1;
    printf("| %-16s | %9s | %9s | %10s | %7s | %7s | %7s |\n", "operation", "messages", "calls", "calls/s",
           "p50 ms", "p99 ms", "max ms");
    printf("|------------------|-----------|-----------|------------|---------|---------|---------|\n");
    double fsyncs = 0;
    for (char *tok = strtok(sizes, ","); tok; tok = strtok(NULL, ",")) {
        uint64_t size = strtoull(tok, NULL, 10);
        int rc = size < 2 * PAGE || size > 100000000ull ? 2 : run_size(size, conns, seconds, lists, markreads, &s, &fsyncs) ? 1 : 0;
        if (rc == 2)
            fprintf(stderr, "messages-bench: sizes from %d to 100000000\n", 2 * PAGE);
        if (rc != 0) {
            bench_stats_free(&s);
            return rc;
        }
    }
    printf("\ndisk: %.0f fdatasync/s in the same directory\n", fsyncs);
    bench_stats_free(&s);
    return 0;
}
