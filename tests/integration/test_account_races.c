/* Accounts under adversity, through the real server: sign-ins abandoned before their password
 * hash runs (their state, plaintext password included, must be freed: under ASan the leak
 * checker at exit fails this program otherwise), a sign-in racing a deactivation or a
 * password reset (it must not leave a live session), failed sign-ins from many client
 * addresses (they slow the guessers without locking the owner out), and the limits under
 * pressure: pipelined guesses and emails, full limiter tables, a known address's expiry and a
 * clock that steps back.
 *
 * The races are made deterministic with the app's test hook: a job is held at a named point
 * (APP_HOOK_*) while the test changes the world under it, then let go. Client addresses are
 * 127.0.0.x: a socket bound to one of them reaches the server on 127.0.0.1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "accounts.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define PASSWORD TEST_PASSWORD
#define GATE_WAIT_MS 10000 /* a held job or a test waiting on one gives up after this */
#define REPLY_WAIT_MS 10000

/* ---- the gate: holds jobs at one hook point ---------------------------------------------- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int point;    /* the enum app_hook point that holds (0: none) */
    int open;     /* held jobs may go on */
    int held;     /* jobs that arrived at the point while it held */
    int hits[4];  /* arrivals at each point */
} gate;

static gate G = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, {0}};

static void gate_hook(void *arg, int point)
{
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    if (point > 0 && point < 4)
        g->hits[point]++;
    if (point == g->point && !g->open) {
        g->held++;
        pthread_cond_broadcast(&g->cv);
        struct timespec until;
        test_deadline_in(&until, GATE_WAIT_MS);
        while (!g->open && pthread_cond_timedwait(&g->cv, &g->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&g->mu);
}

/* Holds the jobs that reach point from now on. */
static void gate_close(int point)
{
    pthread_mutex_lock(&G.mu);
    G.point = point;
    G.open = 0;
    G.held = 0;
    memset(G.hits, 0, sizeof(G.hits));
    pthread_mutex_unlock(&G.mu);
}

/* Waits until n jobs are held; 1 if they are. */
static int gate_wait_held_n(int n)
{
    pthread_mutex_lock(&G.mu);
    struct timespec until;
    test_deadline_in(&until, GATE_WAIT_MS);
    while (G.held < n && pthread_cond_timedwait(&G.cv, &G.mu, &until) != ETIMEDOUT)
        ;
    int held = G.held;
    pthread_mutex_unlock(&G.mu);
    return held >= n;
}

static int gate_wait_held(void)
{
    return gate_wait_held_n(1);
}

static void gate_open(void)
{
    pthread_mutex_lock(&G.mu);
    G.open = 1;
    G.point = 0;
    pthread_cond_broadcast(&G.cv);
    pthread_mutex_unlock(&G.mu);
}

static int gate_hits(int point)
{
    pthread_mutex_lock(&G.mu);
    int n = G.hits[point];
    pthread_mutex_unlock(&G.mu);
    return n;
}

/* ---- raw calls from a chosen client address ----------------------------------------------- */

/* Connects from src (an address of 127.0.0.0/8) to the server and reads its SETTINGS. */
static int connect_from(uint16_t port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, src, &a.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    raw_send(fd, WIRE_PREFACE, WIRE_PREFACE_LEN);
    uint8_t buf[256];
    wire_frame f = {0};
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, REPLY_WAIT_MS), 1);
    assert_int_equal(f.type, WIRE_SETTINGS);
    return fd;
}

static void send_request(int fd, uint32_t id, const wire_method *m, const void *req)
{
    uint8_t pb[2048];
    long n = wire_encode(m->request, req, pb, sizeof(pb), NULL);
    assert_true(n >= 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, m->id, NULL, 0, pb, (size_t)n);
}

static void send_login(int fd, uint32_t id, const char *login, const char *password)
{
    lagoon_v1_LoginRequest req = lagoon_v1_LoginRequest_init_zero;
    snprintf(req.login, sizeof(req.login), "%s", login);
    snprintf(req.password, sizeof(req.password), "%s", password);
    send_request(fd, id, &lagoon_method_Auth_Login, &req);
}

/* The status of the next RESPONSE (other frames are skipped), its call id in *id, its
 * retry_after_ms in *retry (may be NULL). Fails the test if none comes. */
static uint32_t read_any_status(int fd, uint32_t *id, uint32_t *retry)
{
    static uint8_t buf[1 << 16];
    for (int frames = 0; frames < 64; frames++) {
        wire_frame f = {0};
        if (raw_read_frame(fd, buf, sizeof(buf), &f, REPLY_WAIT_MS) != 1)
            break;
        if (f.type != WIRE_RESPONSE)
            continue;
        *id = f.call_id;
        if (retry != NULL) {
            lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
            wire_violation v;
            *retry = 0;
            if (f.meta_len && wire_decode(&lagoon_v1_ResponseMeta_info, f.meta, f.meta_len, &meta, &v) == 0)
                *retry = meta.retry_after_ms;
        }
        return f.code;
    }
    fail_msg("no response");
    return 0;
}

/* The status of call id's RESPONSE (others are skipped). */
static uint32_t read_status(int fd, uint32_t id, uint32_t *retry)
{
    for (int calls = 0; calls < 64; calls++) {
        uint32_t got = 0;
        uint32_t st = read_any_status(fd, &got, retry);
        if (got == id)
            return st;
    }
    fail_msg("no response to call %u", id);
    return 0;
}

/* One Login from src: its status (and retry_after_ms). */
static uint32_t login_from(test_app *t, const char *src, const char *login, const char *password,
                           uint32_t *retry)
{
    int fd = connect_from(t->srv.port, src);
    send_login(fd, 1, login, password);
    uint32_t st = read_status(fd, 1, retry);
    close(fd);
    return st;
}

/* ---- helpers on the store ---------------------------------------------------------------- */

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(int *)arg)++;
    return LAGOON_OK;
}

static int sessions_of(test_app *t, uint64_t user_id)
{
    store_txn *txn;
    store_error err;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = &lagoon_table_sessions, .index = lagoon_index_sessions_by_user, .prefix = prefix.buf,
                     .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    int n = 0;
    assert_int_equal(store_read_begin(t->app->db, &txn, &err), LAGOON_OK);
    assert_int_equal(store_scan(txn, &q, count_row, &n, &page, &err), LAGOON_OK);
    store_read_end(txn);
    return n;
}

static test_app *g_app; /* the server calls_open looks at */

/* Exactly *(unsigned *)arg calls are open on the server. */
static int calls_open(void *arg)
{
    return rpc_server_active_calls(g_app->srv.server) == *(const unsigned *)arg;
}

/* ---- sign-ins abandoned before their hash -------------------------------------------------- */

#define ABANDONED 16 /* per kind; within the default hash queue (64) */

static void tweak_one_hash_worker(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    /* Sign-ins in flight count until they succeed: let all of these be in flight at once. */
    acfg->login_failures.max_events = 1000;
    cfg->hash_workers = 1;
    acfg->hook = gate_hook;
    acfg->hook_arg = &G;
}

static void test_abandoned_sign_ins_free_their_state(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_one_hash_worker);
    g_app = t;
    lagoon_client *c = test_client(t);
    char token[65];
    test_user(c, "leaky", 0, token);

    /* The one hash worker is held by the first Login; the others queue behind it. */
    gate_close(APP_HOOK_HASH);
    int fd = connect_from(t->srv.port, "127.0.0.1");
    for (uint32_t i = 0; i < ABANDONED; i++)
        send_login(fd, 1 + 2 * i, "leaky", PASSWORD);
    assert_true(gate_wait_held());
    /* Registers queue behind them too. */
    int fd2 = connect_from(t->srv.port, "127.0.0.1");
    for (uint32_t i = 0; i < ABANDONED; i++) {
        lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
        snprintf(req.email, sizeof(req.email), "gone%u@example.com", i);
        snprintf(req.username, sizeof(req.username), "gone%u", i);
        snprintf(req.password, sizeof(req.password), "%s", PASSWORD);
        send_request(fd2, 1 + 2 * i, &lagoon_method_Auth_Register, &req);
    }
    unsigned want = 2 * ABANDONED;
    assert_true(test_wait_for(calls_open, &want, REPLY_WAIT_MS));
    /* The Logins are abandoned by a disconnect, the Registers by CANCEL. */
    close(fd);
    for (uint32_t i = 0; i < ABANDONED; i++)
        raw_send_frame(fd2, WIRE_CANCEL, 0, 1 + 2 * i, 0, NULL, 0, NULL, 0);
    /* Every one of them has ended (the held one too: its client is gone) before any of the
     * queued jobs got its turn. */
    want = 0;
    assert_true(test_wait_for(calls_open, &want, REPLY_WAIT_MS));
    close(fd2);
    gate_open();
    /* A sign-in queued after them: when it is answered, the abandoned jobs have had their
     * turn, and none of them ran (only the held one and this one hashed). Their state was
     * freed by the drop function: LeakSanitizer checks at exit. */
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "leaky");
    snprintf(lr.password, sizeof(lr.password), "%s", PASSWORD);
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &tp), LAGOON_OK);
    assert_int_equal(gate_hits(APP_HOOK_HASH), 2);
    lagoon_close(c);
    test_app_free(t);
}

/* ---- a sign-in racing a deactivation or a password reset ------------------------------------ */

static void tweak_gate(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    cfg->hash_workers = 2; /* one held, one for the reset's own hash */
    acfg->hook = gate_hook;
    acfg->hook_arg = &G;
}

/* Lets the held Login of held_login go on: it must end with `want` and leave user_id without
 * a session. */
static void release_login(test_app *t, int fd, uint32_t want, uint64_t user_id)
{
    gate_open();
    assert_int_equal(read_status(fd, 1, NULL), want);
    close(fd);
    assert_int_equal(sessions_of(t, user_id), 0);
}

/* Starts a Login of `login` on a new connection and holds it after its password matched. */
static int held_login(test_app *t, const char *login, const char *password)
{
    gate_close(APP_HOOK_LOGIN_VERIFIED);
    int fd = connect_from(t->srv.port, "127.0.0.1");
    send_login(fd, 1, login, password);
    assert_true(gate_wait_held());
    return fd;
}

static void test_sign_in_racing_deactivation_and_reset(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_gate);
    lagoon_client *c = test_client(t);
    store_error err;
    if (account_create_admin(t->app, "boss@example.com", "boss", "an admin passphrase", NULL, &err) != LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "boss");
    snprintf(lr.password, sizeof(lr.password), "an admin passphrase");
    lagoon_v1_TokenPair admin;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &admin), LAGOON_OK);
    char token[65];
    uint64_t racy = test_user(c, "racy", 0, token);

    /* Deactivated between the password check and the session's write: no session. */
    int fd = held_login(t, "racy", PASSWORD);
    lagoon_set_token(c, admin.access_token);
    lagoon_v1_SetActiveRequest sa = {racy, false};
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    assert_int_equal(sessions_of(t, racy), 0);
    release_login(t, fd, LAGOON_PERMISSION_DENIED, racy);
    sa.active = true;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    lagoon_set_token(c, NULL);

    /* The password reset between the check and the write: the old password is wrong now. */
    fd = held_login(t, "racy", PASSWORD);
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    lagoon_v1_AuthEmpty e;
    snprintf(fr.email, sizeof(fr.email), "racy@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &e), LAGOON_OK);
    char code[44];
    assert_true(test_mail_code(t, "racy@example.com", "Reset your password", code, REPLY_WAIT_MS));
    lagoon_v1_ResetPasswordRequest rq = lagoon_v1_ResetPasswordRequest_init_zero;
    snprintf(rq.token, sizeof(rq.token), "%s", code);
    snprintf(rq.new_password, sizeof(rq.new_password), "a brand new passphrase");
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &e), LAGOON_OK);
    release_login(t, fd, LAGOON_UNAUTHENTICATED, racy);

    /* Deleted between the check and the write: as if it never existed. */
    snprintf(lr.login, sizeof(lr.login), "racy");
    snprintf(lr.password, sizeof(lr.password), "a brand new passphrase");
    lagoon_v1_TokenPair own;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &own), LAGOON_OK);
    fd = held_login(t, "racy", "a brand new passphrase");
    lagoon_set_token(c, own.access_token);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    lagoon_v1_UsersEmpty ue;
    snprintf(dr.password, sizeof(dr.password), "a brand new passphrase");
    assert_int_equal(lagoon_Users_DeleteAccount(c, &dr, &ue), LAGOON_OK);
    release_login(t, fd, LAGOON_UNAUTHENTICATED, racy);
    lagoon_close(c);
    test_app_free(t);
}

/* Two sign-ins that both verified an outdated hash and both upgrade it: the second to write
 * finds the first's new hash. That is no wrong password: it is asked to retry (ABORTED),
 * without a session and without counting as a failure. */
static void tweak_gate_stronger(app_config *acfg, rpc_config *cfg)
{
    tweak_gate(acfg, cfg);
    acfg->pwhash_opslimit = 2; /* more than the tests' minimum: existing hashes are outdated */
}

static void test_sign_ins_racing_a_hash_upgrade(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_gate);
    lagoon_client *c = test_client(t);
    char token[65];
    uint64_t id = test_user(c, "twice", 0, token);
    lagoon_close(c);
    test_app_restart(t, tweak_gate_stronger);
    int before = sessions_of(t, id);
    gate_close(APP_HOOK_LOGIN_VERIFIED);
    int fd = connect_from(t->srv.port, "127.0.0.1");
    send_login(fd, 1, "twice", PASSWORD);
    send_login(fd, 3, "twice", PASSWORD);
    assert_true(gate_wait_held_n(2));
    gate_open();
    uint32_t a, b;
    uint32_t sa = read_any_status(fd, &a, NULL);
    uint32_t sb = read_any_status(fd, &b, NULL);
    close(fd);
    assert_int_equal(a + b, 4);
    /* Whichever wrote first (the replies may come in either order). */
    assert_true((sa == LAGOON_OK && sb == LAGOON_ABORTED) || (sa == LAGOON_ABORTED && sb == LAGOON_OK));
    assert_int_equal(sessions_of(t, id), before + 1);
    /* The retry signs in with the upgraded hash. */
    assert_int_equal(login_from(t, "127.0.0.1", "twice", PASSWORD, NULL), LAGOON_OK);
    test_app_free(t);
}

/* ---- failed sign-ins from many addresses ---------------------------------------------------- */

static void tweak_defaults(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->registrations.max_events = 1000; /* the sign-in limits keep their defaults */
}

static void addr(char *out, size_t cap, int n)
{
    snprintf(out, cap, "127.0.0.%d", n);
}

static void test_others_failures_do_not_lock_the_owner_out(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_defaults);
    lagoon_client *c = test_client(t); /* from 127.0.0.1 */
    char token[65], a[32];
    test_user(c, "owner", 0, token); /* signs in once from 127.0.0.1: a known address */
    uint32_t retry = 0;

    /* One address, one account: 5 failures, then that pair waits 1 s, doubling. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(login_from(t, "127.0.0.2", "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    /* The owner elsewhere is not held by it, from a known address or a new one. */
    assert_int_equal(login_from(t, "127.0.0.1", "owner", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(login_from(t, "127.0.0.3", "owner", PASSWORD, NULL), LAGOON_OK);
    test_clock_advance(t, 1000);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 2000);

    /* Spread out: 6 failures so far, then 4 from each of 23 more addresses and 2 from
     * another, 100 in all: the account's ceiling. Now a new address waits, the owner's from
     * it too; the owner's known addresses do not. */
    for (int n = 10; n < 34; n++) {
        addr(a, sizeof(a), n);
        for (int i = 0; i < (n < 33 ? 4 : 2); i++)
            assert_int_equal(login_from(t, a, "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    }
    assert_int_equal(login_from(t, "127.0.0.34", "owner", "wrong password!", &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    assert_int_equal(login_from(t, "127.0.0.50", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    assert_int_equal(login_from(t, "127.0.0.1", "owner", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(login_from(t, "127.0.0.3", "owner", PASSWORD, NULL), LAGOON_OK);
    /* 15 minutes after the first failure with no wait owed, the counts are forgotten. */
    test_clock_advance(t, 16LL * 60 * 1000);
    assert_int_equal(login_from(t, "127.0.0.50", "owner", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, NULL), LAGOON_OK);

    /* One address (a NAT) over many accounts: 50 failures, then that address waits, except
     * for accounts that signed in from it before. */
    test_user(c, "neighbour", 0, token);
    assert_int_equal(login_from(t, "127.0.0.60", "owner", PASSWORD, NULL), LAGOON_OK);
    char ghost[32];
    for (int i = 0; i < 50; i++) {
        snprintf(ghost, sizeof(ghost), "ghost%d", i);
        assert_int_equal(login_from(t, "127.0.0.60", ghost, PASSWORD, NULL), LAGOON_UNAUTHENTICATED);
    }
    assert_int_equal(login_from(t, "127.0.0.60", "ghost99", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    assert_int_equal(login_from(t, "127.0.0.60", "neighbour", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(login_from(t, "127.0.0.60", "owner", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(login_from(t, "127.0.0.61", "neighbour", PASSWORD, NULL), LAGOON_OK);

    /* Wrong current passwords count for the caller's address like failed sign-ins. */
    lagoon_set_token(c, token);
    lagoon_v1_ChangePasswordRequest cp = lagoon_v1_ChangePasswordRequest_init_zero;
    lagoon_v1_UsersEmpty ue;
    snprintf(cp.current_password, sizeof(cp.current_password), "wrong password!");
    snprintf(cp.new_password, sizeof(cp.new_password), "a different passphrase");
    for (int i = 0; i < 5; i++)
        assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &ue), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &ue), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(login_from(t, "127.0.0.1", "neighbour", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(login_from(t, "127.0.0.61", "neighbour", PASSWORD, NULL), LAGOON_OK);
    lagoon_close(c);
    test_app_free(t);
}

/* ---- the limits under pressure ------------------------------------------------------------- */

/* A request with the caller's access token in its metadata. */
static void send_authed(int fd, uint32_t id, const wire_method *m, const char *token, const void *req)
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", token);
    uint8_t mb[256], pb[2048];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    long n = req != NULL ? wire_encode(m->request, req, pb, sizeof(pb), NULL) : 0;
    assert_true(ml > 0 && n >= 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, m->id, mb, (size_t)ml, req != NULL ? pb : NULL,
                   (size_t)n);
}

/* Reads the replies to n calls (in any order) and counts their statuses: counts[0] those
 * with `a`, counts[1] with `b`, counts[2] any other. */
static void count_replies(int fd, int n, uint32_t a, uint32_t b, int counts[3])
{
    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < n; i++) {
        uint32_t id;
        uint32_t st = read_any_status(fd, &id, NULL);
        counts[st == a ? 0 : st == b ? 1 : 2]++;
    }
}

/* With the hash lane held (gate_close(APP_HOOK_HASH) and one job held), n calls pipelined on
 * fd: waits until every one of them has been through its handler (a call without a hash
 * sent after them, id `sentinel`, is answered), then lets the lane go and counts the n
 * replies as count_replies does (b being RESOURCE_EXHAUSTED). */
static void release_when_handled(int fd, int n, uint32_t sentinel, uint32_t a, int counts[3])
{
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, sentinel, lagoon_method_Auth_Me.id, NULL, 0, NULL, 0);
    int early[3] = {0, 0, 0};
    for (int i = 0; i <= n; i++) {
        uint32_t id;
        uint32_t st = read_any_status(fd, &id, NULL);
        if (id == sentinel)
            break;
        early[st == a ? 0 : st == LAGOON_RESOURCE_EXHAUSTED ? 1 : 2]++;
    }
    gate_open();
    count_replies(fd, n - early[0] - early[1] - early[2], a, LAGOON_RESOURCE_EXHAUSTED, counts);
    for (int k = 0; k < 3; k++)
        counts[k] += early[k];
}

/* The one hash worker can be held, so that pipelined calls all reach their handlers while
 * the first one's password is being checked. */
static void tweak_held_hash(app_config *acfg, rpc_config *cfg)
{
    tweak_defaults(acfg, cfg);
    cfg->hash_workers = 1;
    acfg->hook = gate_hook;
    acfg->hook_arg = &G;
}

#define PIPELINED 40

/* Pipelined wrong passwords from one address to one account: the pair allows 5 failures, and
 * attempts in flight count, so 5 are tried and the others refused before their hash. The
 * same for the current password of ChangePassword. (Counted only after the hash, all 40
 * were tried.) */
static void test_pipelined_guesses_count_before_their_hash(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_held_hash);
    lagoon_client *c = test_client(t);
    char token[65];
    test_user(c, "owner", 0, token);

    gate_close(APP_HOOK_HASH);
    int fd = connect_from(t->srv.port, "127.0.0.2");
    for (uint32_t i = 0; i < PIPELINED; i++)
        send_login(fd, 1 + 2 * i, "owner", "wrong password!");
    assert_true(gate_wait_held());
    int counts[3];
    release_when_handled(fd, PIPELINED, 1 + 2 * PIPELINED, LAGOON_UNAUTHENTICATED, counts);
    close(fd);
    print_message("pipelined Logins: %d wrong, %d refused, %d other\n", counts[0], counts[1], counts[2]);
    assert_int_equal(counts[0], 5);
    assert_int_equal(counts[1], PIPELINED - 5);

    /* ChangePassword's current password, pipelined on the owner's own session. */
    gate_close(APP_HOOK_HASH);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero; /* a hash to hold the lane */
    snprintf(lr.login, sizeof(lr.login), "nobody");
    snprintf(lr.password, sizeof(lr.password), "wrong password!");
    int fd2 = connect_from(t->srv.port, "127.0.0.3");
    send_request(fd2, 1, &lagoon_method_Auth_Login, &lr);
    assert_true(gate_wait_held());
    lagoon_v1_ChangePasswordRequest cp = lagoon_v1_ChangePasswordRequest_init_zero;
    snprintf(cp.current_password, sizeof(cp.current_password), "wrong password!");
    snprintf(cp.new_password, sizeof(cp.new_password), "a different passphrase");
    int fd3 = connect_from(t->srv.port, "127.0.0.3");
    for (uint32_t i = 0; i < PIPELINED; i++)
        send_authed(fd3, 1 + 2 * i, &lagoon_method_Users_ChangePassword, token, &cp);
    release_when_handled(fd3, PIPELINED, 1 + 2 * PIPELINED, LAGOON_INVALID_ARGUMENT, counts);
    close(fd3);
    assert_int_equal(read_status(fd2, 1, NULL), LAGOON_UNAUTHENTICATED);
    close(fd2);
    print_message("pipelined ChangePasswords: %d wrong, %d refused, %d other\n", counts[0], counts[1], counts[2]);
    assert_int_equal(counts[0], 5);
    assert_int_equal(counts[1], PIPELINED - 5);
    lagoon_close(c);
    test_app_free(t);
}

/* Attempts abandoned before their hash (CANCEL) tried no password: they are taken back, and
 * the pair still has its 5. */
static void test_abandoned_attempts_are_taken_back(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_held_hash);
    g_app = t;
    lagoon_client *c = test_client(t);
    char token[65];
    test_user(c, "owner", 0, token);
    gate_close(APP_HOOK_HASH);
    int hold = connect_from(t->srv.port, "127.0.0.9");
    send_login(hold, 1, "nobody", "wrong password!");
    assert_true(gate_wait_held());
    int fd = connect_from(t->srv.port, "127.0.0.2");
    for (uint32_t i = 0; i < 5; i++)
        send_login(fd, 1 + 2 * i, "owner", "wrong password!");
    unsigned want = 6;
    assert_true(test_wait_for(calls_open, &want, REPLY_WAIT_MS));
    /* The pair's 5 are all in flight: a sixth waits. */
    assert_int_equal(login_from(t, "127.0.0.2", "owner", "wrong password!", NULL), LAGOON_RESOURCE_EXHAUSTED);
    for (uint32_t i = 0; i < 5; i++)
        raw_send_frame(fd, WIRE_CANCEL, 0, 1 + 2 * i, 0, NULL, 0, NULL, 0);
    want = 1;
    assert_true(test_wait_for(calls_open, &want, REPLY_WAIT_MS));
    gate_open();
    assert_int_equal(read_status(hold, 1, NULL), LAGOON_UNAUTHENTICATED);
    /* Queued behind the cancelled jobs: once it is answered, they have been dropped. */
    send_login(hold, 3, "nobody", "wrong password!");
    assert_int_equal(read_status(hold, 3, NULL), LAGOON_UNAUTHENTICATED);
    close(hold);
    close(fd);
    for (int i = 0; i < 5; i++)
        assert_int_equal(login_from(t, "127.0.0.2", "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    lagoon_close(c);
    test_app_free(t);
}

static int g_mail_want; /* emails test_mail_count must reach for mail_arrived */
static const char *g_mail_to;

static int mail_arrived(void *arg)
{
    return test_mail_count(arg, g_mail_to) >= g_mail_want;
}

/* Pipelined ResendVerification: the budget (10 emails an hour per address) is counted before
 * each email is queued, so 10 go out and 30 are refused. (Counted only once the email was
 * written, all 40 went out.) */
static void test_pipelined_emails_stay_in_budget(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_defaults);
    lagoon_client *c = test_client(t);
    char token[65];
    test_user(c, "victim", 0, token); /* unverified: one email so far */
    int fd = connect_from(t->srv.port, "127.0.0.4");
    for (uint32_t i = 0; i < PIPELINED; i++)
        send_authed(fd, 1 + 2 * i, &lagoon_method_Auth_ResendVerification, token, NULL);
    int counts[3];
    count_replies(fd, PIPELINED, LAGOON_OK, LAGOON_RESOURCE_EXHAUSTED, counts);
    print_message("pipelined ResendVerification: %d sent, %d refused, %d other\n", counts[0], counts[1], counts[2]);
    assert_int_equal(counts[0], 10);
    assert_int_equal(counts[1], PIPELINED - 10);
    g_mail_to = "victim@example.com";
    g_mail_want = 11;
    assert_true(test_wait_for(mail_arrived, t, REPLY_WAIT_MS));
    /* Every write was done before its reply: no more are queued. */
    assert_int_equal(test_mail_count(t, "victim@example.com"), 11);
    /* ForgotPassword shares the budget: spent. */
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    snprintf(fr.email, sizeof(fr.email), "victim@example.com");
    send_request(fd, 1 + 2 * PIPELINED, &lagoon_method_Auth_ForgotPassword, &fr);
    uint32_t retry = 0;
    assert_int_equal(read_status(fd, 1 + 2 * PIPELINED, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 3600 * 1000);
    close(fd);
    lagoon_close(c);
    test_app_free(t);
}

static void tweak_two_emails(app_config *acfg, rpc_config *cfg)
{
    tweak_defaults(acfg, cfg);
    acfg->resets.max_events = 2;
}

/* ResendVerifications pipelined behind the VerifyEmail that makes them pointless: none sends.
 * Each is FAILED_PRECONDITION, whether its handler already saw the address verified (not
 * counted) or only its write did (counted, then given back), or RESOURCE_EXHAUSTED while the
 * budget (2 here) is held by those in flight; and the budget is whole after. */
static void test_resend_that_finds_verified_is_given_back(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_two_emails);
    lagoon_client *c = test_client(t);
    char token[65], code[44];
    test_user(c, "late", 0, token);
    assert_true(test_mail_code(t, "late@example.com", "Verify", code, REPLY_WAIT_MS));
    int fd = connect_from(t->srv.port, "127.0.0.7");
    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    send_request(fd, 1, &lagoon_method_Auth_VerifyEmail, &vr);
    for (uint32_t i = 1; i <= 8; i++)
        send_authed(fd, 1 + 2 * i, &lagoon_method_Auth_ResendVerification, token, NULL);
    int counts[3] = {0, 0, 0};
    for (int i = 0; i < 9; i++) { /* in any order */
        uint32_t id;
        uint32_t st = read_any_status(fd, &id, NULL);
        if (id == 1)
            assert_int_equal(st, LAGOON_OK);
        else
            counts[st == LAGOON_FAILED_PRECONDITION ? 0 : st == LAGOON_RESOURCE_EXHAUSTED ? 1 : 2]++;
    }
    print_message("ResendVerification behind VerifyEmail: %d verified already, %d refused, %d other\n", counts[0],
                  counts[1], counts[2]);
    assert_int_equal(counts[2], 0);
    assert_true(counts[0] >= 2);
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    snprintf(fr.email, sizeof(fr.email), "late@example.com");
    for (uint32_t i = 0; i < 3; i++)
        send_request(fd, 101 + 2 * i, &lagoon_method_Auth_ForgotPassword, &fr);
    count_replies(fd, 3, LAGOON_OK, LAGOON_RESOURCE_EXHAUSTED, counts);
    close(fd);
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 1);
    lagoon_close(c);
    test_app_free(t);
}

static void tweak_few_registrations(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->registrations.max_events = 10;
}

/* Registrations pipelined on two connections (two loop threads) of one address: 10 pass the
 * limit, created or taken, and the rest are refused. */
static void test_pipelined_registrations_stay_in_budget(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_few_registrations);
    int fds[2] = {connect_from(t->srv.port, "127.0.0.5"), connect_from(t->srv.port, "127.0.0.5")};
    for (uint32_t i = 0; i < PIPELINED; i++) {
        lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
        snprintf(req.email, sizeof(req.email), "many%u@example.com", i % 8); /* some taken */
        snprintf(req.username, sizeof(req.username), "many%u", i % 8);
        snprintf(req.password, sizeof(req.password), "%s", PASSWORD);
        send_request(fds[i % 2], 1 + 2 * (i / 2), &lagoon_method_Auth_Register, &req);
    }
    int passed = 0, refused = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < PIPELINED / 2; i++) {
            uint32_t id;
            uint32_t st = read_any_status(fds[k], &id, NULL);
            passed += st == LAGOON_OK || st == LAGOON_ALREADY_EXISTS;
            refused += st == LAGOON_RESOURCE_EXHAUSTED;
        }
        close(fds[k]);
    }
    print_message("pipelined Registers: %d passed the limit, %d refused\n", passed, refused);
    assert_int_equal(passed, 10);
    assert_int_equal(refused, PIPELINED - 10);
    test_app_free(t);
}

static void advance_days(test_app *t, double days)
{
    test_clock_advance(t, (int64_t)(days * 24 * 3600 * 1000));
}

/* An address stays known for 30 days after the LAST sign-in from it: the owner signed in on
 * day 0 and day 29, and on day 30.5, with the account's ceiling reached by others, still signs
 * in from it. (Counted from the first sign-in it had expired on day 30.) */
static void test_known_address_lasts_from_the_last_sign_in(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_defaults);
    lagoon_client *c = test_client(t);
    char token[65], a[32];
    test_user(c, "owner", 0, token); /* day 0, from 127.0.0.1 */
    advance_days(t, 29);
    assert_int_equal(login_from(t, "127.0.0.1", "owner", PASSWORD, NULL), LAGOON_OK);
    advance_days(t, 1.5);
    for (int n = 10; n < 35; n++) { /* 25 addresses, 4 each: the account's 100 */
        addr(a, sizeof(a), n);
        for (int i = 0; i < 4; i++)
            assert_int_equal(login_from(t, a, "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    }
    uint32_t retry = 0;
    assert_int_equal(login_from(t, "127.0.0.35", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(login_from(t, "127.0.0.1", "owner", PASSWORD, NULL), LAGOON_OK);
    /* And 30 days after that last one, it is forgotten: the owner waits like anyone. */
    advance_days(t, 30);
    for (int n = 10; n < 35; n++) {
        addr(a, sizeof(a), n);
        for (int i = 0; i < 4; i++)
            assert_int_equal(login_from(t, a, "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    }
    assert_int_equal(login_from(t, "127.0.0.1", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    lagoon_close(c);
    test_app_free(t);
}

#define SMALL_TABLES 64

static void tweak_small_tables(app_config *acfg, rpc_config *cfg)
{
    tweak_defaults(acfg, cfg);
    acfg->limiter_keys = SMALL_TABLES;
}

/* Unknown logins from fd's address, names prefix0, prefix1, ...: n pipelined, wrong. Returns
 * how many were tried (UNAUTHENTICATED); the first refusal's retry_after_ms in *retry. */
static int guess_logins(int fd, const char *prefix, int n, uint32_t *retry)
{
    char login[40];
    for (int i = 0; i < n; i++) {
        snprintf(login, sizeof(login), "%s%d", prefix, i);
        send_login(fd, 1 + 2 * (uint32_t)i, login, "wrong password!");
    }
    int tried = 0;
    *retry = 0;
    for (int i = 0; i < n; i++) {
        uint32_t id, r = 0;
        uint32_t st = read_any_status(fd, &id, &r);
        tried += st == LAGOON_UNAUTHENTICATED;
        if (st == LAGOON_RESOURCE_EXHAUSTED && *retry == 0)
            *retry = r;
    }
    return tried;
}

/* Limiter tables of 64 keys here (100 000 by default). Keys that expired make room for new ones
 * (before, a full table stopped tracking new keys: a real account's pair went unlimited);
 * when every key is live, a new key waits until the oldest expires, instead of going
 * unlimited. */
static void test_full_limiter_tables_evict_then_fail_closed(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_small_tables);
    lagoon_client *c = test_client(t);
    char token[65], prefix[16];
    test_user(c, "owner", 0, token);
    test_user(c, "neighbour", 0, token);
    uint32_t retry = 0;
    /* 10 rounds of 20 unknown logins, each round after the last one's window: 200 keys. */
    int fd = connect_from(t->srv.port, "127.0.0.2");
    for (int round = 0; round < 10; round++) {
        snprintf(prefix, sizeof(prefix), "g%d_", round);
        assert_int_equal(guess_logins(fd, prefix, 20, &retry), 20);
        test_clock_advance(t, 16LL * 60 * 1000);
    }
    close(fd);
    /* A real account's pair is still limited. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(login_from(t, "127.0.0.3", "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(login_from(t, "127.0.0.3", "owner", "wrong password!", &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);

    /* Now live keys only, from two addresses (each under its own limit of 50): the tables
     * fill up, and the next new key is refused until the oldest key expires, 15 minutes from
     * now (the clock stands still). */
    int tried = 0;
    fd = connect_from(t->srv.port, "127.0.0.4");
    tried += guess_logins(fd, "h", 40, &retry);
    close(fd);
    assert_int_equal(retry, 0);
    fd = connect_from(t->srv.port, "127.0.0.5");
    tried += guess_logins(fd, "i", 40, &retry);
    close(fd);
    print_message("full tables: %d of 80 new keys tried, then retry_after_ms %u\n", tried, retry);
    assert_true(tried < SMALL_TABLES);
    assert_int_equal(retry, 15 * 60 * 1000);
    assert_int_equal(login_from(t, "127.0.0.6", "neighbour", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 15 * 60 * 1000);
    test_clock_advance(t, 15LL * 60 * 1000);
    assert_int_equal(login_from(t, "127.0.0.6", "neighbour", PASSWORD, NULL), LAGOON_OK);
    lagoon_close(c);
    test_app_free(t);
}

/* A clock that steps back 60 days: the wait owed stays the policy's (1 s here), where the
 * 32-bit difference used to wrap to about 10 days; and the count is forgotten 15 minutes
 * later as usual. */
static void test_waits_bounded_when_the_clock_steps_back(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_defaults);
    lagoon_client *c = test_client(t);
    char token[65];
    test_user(c, "owner", 0, token);
    for (int i = 0; i < 5; i++)
        assert_int_equal(login_from(t, "127.0.0.2", "owner", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    uint32_t retry = 0;
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    advance_days(t, -60);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, &retry), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(retry, 1000);
    test_clock_advance(t, 16LL * 60 * 1000);
    assert_int_equal(login_from(t, "127.0.0.2", "owner", PASSWORD, NULL), LAGOON_OK);
    /* The email budget too: spent, then 60 days back, it waits at most its hour. */
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    lagoon_v1_AuthEmpty e;
    snprintf(fr.email, sizeof(fr.email), "owner@example.com");
    for (int i = 0; i < 10; i++)
        assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &e), LAGOON_OK);
    advance_days(t, -60);
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &e), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 3600 * 1000);
    lagoon_close(c);
    test_app_free(t);
}

/* The per-address limits' key: IPv4 as such, IPv6 by its /64 (the loopback has one IPv6
 * address, so this is checked on the function the server uses, app_address_key). */
static void test_address_keys_group_ipv6_by_64(void **state)
{
    (void)state;
    static const struct {
        const char *peer, *key;
    } cases[] = {
        {"127.0.0.2:5555", "127.0.0.2"},
        {"203.0.113.9:1", "203.0.113.9"},
        {"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "2001:db8:1:2::/64"},
        {"[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"},
        {"[2001:db8:1:3::1]:443", "2001:db8:1:3::/64"},
        {"[::1]:80", "::/64"},
        {"[::ffff:198.51.100.7]:80", "198.51.100.7"},
        {"[fe80::1%eth0]:80", "fe80::1%eth0"}, /* a host inet_pton does not read: as it is */
        {"-", "-"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char key[APP_PEER_KEY_MAX];
        app_address_key(cases[i].peer, key);
        if (strcmp(key, cases[i].key) != 0)
            fail_msg("%s: key %s, want %s", cases[i].peer, key, cases[i].key);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abandoned_sign_ins_free_their_state),
        cmocka_unit_test(test_sign_in_racing_deactivation_and_reset),
        cmocka_unit_test(test_sign_ins_racing_a_hash_upgrade),
        cmocka_unit_test(test_others_failures_do_not_lock_the_owner_out),
        cmocka_unit_test(test_pipelined_guesses_count_before_their_hash),
        cmocka_unit_test(test_abandoned_attempts_are_taken_back),
        cmocka_unit_test(test_pipelined_emails_stay_in_budget),
        cmocka_unit_test(test_resend_that_finds_verified_is_given_back),
        cmocka_unit_test(test_pipelined_registrations_stay_in_budget),
        cmocka_unit_test(test_known_address_lasts_from_the_last_sign_in),
        cmocka_unit_test(test_full_limiter_tables_evict_then_fail_closed),
        cmocka_unit_test(test_waits_bounded_when_the_clock_steps_back),
        cmocka_unit_test(test_address_keys_group_ipv6_by_64),
    };
    return cmocka_run_group_tests_name("account_races", tests, NULL, NULL);
}
