/* Test support: see testserver.h. */
#include "testserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include "accounts.h" /* account_create_admin: test_admin_user */
#include "lagoon_handlers.h"
#include "lagoon_idl.h"
#include "log.h"

void test_config(rpc_config *cfg)
{
    rpc_config_defaults(cfg);
    cfg->listen_port = 0;
    cfg->threads = 2;
    cfg->workers = 2;
    cfg->drain_timeout_ms = 2000;
    const char *lvl = getenv("LAGOON_TEST_LOG");
    log_set_level(lvl ? log_level_parse(lvl) : LOG_WARN);
}

static void *server_main(void *arg)
{
    test_server *t = arg;
    rpc_error err;
    t->run_status = rpc_server_run(t->server, &err);
    if (t->run_status != RPC_OK)
        fprintf(stderr, "rpc_server_run: %s\n", err.message);
    return NULL;
}

void test_server_start(test_server *t, const rpc_config *cfg, const rpc_route *routes, size_t nroutes)
{
    rpc_config def;
    if (cfg == NULL) {
        test_config(&def);
        cfg = &def;
    }
    if (routes == NULL) {
        routes = lagoon_routes;
        nroutes = lagoon_routes_count;
    }
    memset(t, 0, sizeof(*t));
    rpc_error err;
    int r = rpc_server_new(cfg, routes, nroutes, &t->server, &err);
    if (r != RPC_OK)
        fail_msg("rpc_server_new: %s", err.message);
    t->port = rpc_server_port(t->server);
    pthread_t *th = malloc(sizeof(*th));
    assert_non_null(th);
    assert_int_equal(pthread_create(th, NULL, server_main, t), 0);
    t->thread = th;
}

void test_server_stop(test_server *t)
{
    rpc_server_stop(t->server);
    pthread_join(*(pthread_t *)t->thread, NULL);
    free(t->thread);
    assert_int_equal(t->run_status, RPC_OK);
    rpc_server_free(t->server);
    t->server = NULL;
}

int test_wait_for(int (*cond)(void *), void *arg, uint32_t timeout_ms)
{
    for (uint32_t waited = 0;; waited += 10) {
        int v = cond(arg);
        if (v || waited >= timeout_ms)
            return v;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* ---- raw protocol ------------------------------------------------------------------------ */

void raw_send(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the server may have closed on us: the caller checks what it reads */
        p += n;
        len -= (size_t)n;
    }
}

void raw_send_frame(int fd, uint8_t type, uint8_t flags, uint32_t call_id, uint32_t code,
                    const void *meta, size_t meta_len, const void *payload, size_t payload_len)
{
    uint8_t hdr[WIRE_HEADER_SIZE];
    assert_int_equal(wire_header_encode(hdr, type, flags, call_id, code, meta_len, payload_len), 0);
    raw_send(fd, hdr, sizeof(hdr));
    if (meta_len)
        raw_send(fd, meta, meta_len);
    if (payload_len)
        raw_send(fd, payload, payload_len);
}

static int read_exact(int fd, uint8_t *buf, size_t len, uint32_t timeout_ms)
{
    size_t got = 0;
    while (got < len) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)timeout_ms);
        if (r <= 0)
            return -1;
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == ECONNRESET ? 0 : -1;
        }
        got += (size_t)n;
    }
    return 1;
}

int raw_read_frame(int fd, uint8_t *buf, size_t cap, wire_frame *f, uint32_t timeout_ms)
{
    assert_true(cap >= WIRE_HEADER_SIZE);
    int r = read_exact(fd, buf, 4, timeout_ms);
    if (r <= 0)
        return r;
    uint32_t len = wire_get32(buf);
    if (len + 4 > cap)
        fail_msg("frame of %u bytes larger than the test buffer", len);
    r = read_exact(fd, buf + 4, len, timeout_ms);
    if (r <= 0)
        return r;
    wire_limits lim = {UINT32_MAX, UINT16_MAX};
    long n = wire_frame_parse(buf, len + 4, &lim, f, NULL);
    if (n != (long)len + 4)
        fail_msg("server sent a frame the codec rejects (%ld)", n);
    return 1;
}

int raw_wait_closed(int fd, uint32_t timeout_ms)
{
    uint8_t buf[65536];
    for (uint32_t waited = 0; waited < timeout_ms; waited += 100) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 100);
        if (r < 0)
            return 0;
        if (r == 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
    }
    return 0;
}

int raw_connect(uint16_t port, int preface)
{
    return raw_connect_small(port, preface, 0);
}

int raw_connect_small(uint16_t port, int preface, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A send that cannot proceed fails the test after 10 s instead of hanging it. */
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (preface) {
        raw_send(fd, WIRE_PREFACE, WIRE_PREFACE_LEN);
        uint8_t buf[256];
        wire_frame f = {0};
        assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
        assert_int_equal(f.type, WIRE_SETTINGS);
    }
    return fd;
}

void raw_meta_message(const wire_frame *f, char *out, size_t cap)
{
    lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
    wire_violation v;
    out[0] = '\0';
    if (f->meta_len && wire_decode(&lagoon_v1_ResponseMeta_info, f->meta, f->meta_len, &meta, &v) == 0)
        snprintf(out, cap, "%s", meta.message);
}

/* ---- a whole server ---------------------------------------------------------------------------- */

#include <dirent.h>
#include <stdatomic.h>
#include <sodium.h>

static int64_t test_clock(void *arg)
{
    return __atomic_load_n(&((test_app *)arg)->clock_ms, __ATOMIC_SEQ_CST);
}

void test_clock_advance(test_app *t, int64_t ms)
{
    __atomic_add_fetch(&t->clock_ms, ms, __ATOMIC_SEQ_CST);
}

static void app_boot(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    app_config acfg = {0};
    /* The cheapest Argon2id libsodium allows: tests hash many passwords. Never in production. */
    acfg.pwhash_opslimit = crypto_pwhash_OPSLIMIT_MIN;
    acfg.pwhash_memlimit = 8192 * 2;
    acfg.clock = test_clock;
    acfg.clock_arg = t;
    rpc_config cfg;
    test_config(&cfg);
    if (tweak)
        tweak(&acfg, &cfg);
    rpc_error err;
    if (app_open(t->dir, &acfg, &t->app, &err) != RPC_OK)
        fail_msg("app_open: %s", err.message);
    cfg.app = t->app;
    cfg.authenticate = app_authenticate;
    cfg.authenticate_arg = t->app;
    cfg.access_denied = app_access_denied;
    cfg.naccess_denied = APP_ACCESS_LEVELS;
    cfg.on_drain = app_on_drain;
    test_server_start(&t->srv, &cfg, NULL, 0);
}

void test_app_start(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/lagoon-test-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    t->clock_ms = 1795000000000LL; /* 2026-11-17, a fixed start */
    app_boot(t, tweak);
}

/* The shutdown order of lagoond: server, workers, app (store completions), then free. */
static void app_halt(test_app *t)
{
    rpc_server_stop(t->srv.server);
    pthread_join(*(pthread_t *)t->srv.thread, NULL);
    free(t->srv.thread);
    assert_int_equal(t->srv.run_status, RPC_OK);
    rpc_server_join_workers(t->srv.server);
    app_close(t->app);
    rpc_server_free(t->srv.server);
}

test_app *test_app_new(void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    test_app *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    test_app_start(t, tweak);
    return t;
}

void test_app_free(test_app *t)
{
    if (t == NULL)
        return;
    test_app_stop(t);
    free(t);
}

void test_app_restart(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    app_halt(t);
    app_boot(t, tweak);
}

void test_app_stop(test_app *t)
{
    app_halt(t);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

/* Reads a whole small file into a NUL-terminated heap buffer. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 65536);
    size_t n = buf ? fread(buf, 1, 65535, f) : 0;
    (void)n;
    fclose(f);
    return buf;
}

static int mail_scan(test_app *t, const char *to, const char *subject, char *code, int consume)
{
    char dir[128], path[512], want_to[300];
    snprintf(dir, sizeof(dir), "%s/mail/new", t->dir);
    snprintf(want_to, sizeof(want_to), "\nTo: <%s>\n", to);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        char *text = slurp(path);
        if (text == NULL)
            continue;
        int match = strstr(text, want_to) && (subject == NULL || strstr(text, subject));
        if (match) {
            found++;
            if (code != NULL) {
                /* The code stands alone on a line indented by four spaces. */
                const char *p = strstr(text, "\n    ");
                if (p != NULL) {
                    p += 5;
                    size_t n = strcspn(p, "\n");
                    snprintf(code, 44, "%.*s", (int)n, p);
                }
            }
            if (consume)
                unlink(path);
        }
        free(text);
        if (found && code != NULL)
            break;
    }
    closedir(d);
    return found;
}

int test_mail_code(test_app *t, const char *to, const char *subject, char *code, uint32_t timeout_ms)
{
    for (uint32_t waited = 0;; waited += 10) {
        if (mail_scan(t, to, subject, code, 1))
            return 1;
        if (waited >= timeout_ms)
            return 0;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int test_mail_count(test_app *t, const char *to)
{
    return mail_scan(t, to, NULL, NULL, 0);
}

/* ---- users through the real API ---------------------------------------------------------------- */

#include "lagoon_stubs.h"

lagoon_client *test_client(test_app *t)
{
    lagoon_client *c = NULL;
    lagoon_error err;
    if (lagoon_connect("127.0.0.1", t->srv.port, NULL, &c, &err) != LAGOON_OK)
        fail_msg("connect: %s", err.detail.message);
    return c;
}

uint64_t test_user(lagoon_client *c, const char *name, int role, char *token)
{
    lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
    snprintf(req.email, sizeof(req.email), "%s@example.com", name);
    snprintf(req.username, sizeof(req.username), "%s", name);
    snprintf(req.password, sizeof(req.password), "%s", TEST_PASSWORD);
    snprintf(req.full_name, sizeof(req.full_name), "Test %s", name);
    req.role = (lagoon_v1_Role)role;
    lagoon_v1_UserProfile p;
    int st = lagoon_Auth_Register(c, &req, &p);
    if (st != LAGOON_OK)
        fail_msg("register %s: %s", name, lagoon_last_error(c)->detail.message);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "%s", name);
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    lagoon_v1_TokenPair tp;
    st = lagoon_Auth_Login(c, &lr, &tp);
    if (st != LAGOON_OK)
        fail_msg("login %s: %s", name, lagoon_last_error(c)->detail.message);
    snprintf(token, 65, "%s", tp.access_token);
    return p.id;
}

uint64_t test_verified_user(test_app *t, lagoon_client *c, const char *name, int role, char *token)
{
    uint64_t id = test_user(c, name, role, token);
    char to[80], code[44];
    snprintf(to, sizeof(to), "%s@example.com", name);
    if (!test_mail_code(t, to, "Verify", code, 5000))
        fail_msg("no verification email for %s", name);
    lagoon_v1_VerifyEmailRequest req = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(req.token, sizeof(req.token), "%s", code);
    lagoon_v1_AuthEmpty out;
    if (lagoon_Auth_VerifyEmail(c, &req, &out) != LAGOON_OK)
        fail_msg("verify %s: %s", name, lagoon_last_error(c)->detail.message);
    return id;
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(size_t *)arg)++;
    return LAGOON_OK;
}

size_t test_count_rows(test_app *t, const store_table *tab)
{
    size_t n = 0;
    store_txn *txn;
    store_error err;
    assert_int_equal(store_read_begin(t->app->db, &txn, &err), LAGOON_OK);
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int pages = 0; pages < 1000; pages++) {
        store_query q = {.table = tab, .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        store_page page;
        assert_int_equal(store_scan(txn, &q, count_row, &n, &page, &err), LAGOON_OK);
        memcpy(token, page.next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    store_read_end(txn);
    return n;
}

void test_tweak_shared(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->registrations.max_events = 100000;
    acfg->resets.max_events = 100000;
    acfg->login_address_failures.max_events = 100000;
    acfg->sends.max_events = 100000;
}

/* ---- raw calls ------------------------------------------------------------------------------- */

#define TEST_WAIT_MS 10000

void raw_send_call(int fd, uint32_t id, const wire_method *m, const char *token, const char *key, uint32_t timeout_ms,
                   const wire_msginfo *info, const void *body)
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", token ? token : "");
    snprintf(meta.idempotency_key, sizeof(meta.idempotency_key), "%s", key ? key : "");
    meta.timeout_ms = timeout_ms;
    uint8_t mb[512];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    assert_true(ml >= 0);
    static uint8_t pb[1 << 16];
    long pl = 0;
    if (body) {
        pl = wire_encode(info, body, pb, sizeof(pb), NULL);
        assert_true(pl >= 0);
    }
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, m->id, mb, (size_t)ml, body ? pb : NULL, (size_t)pl);
}

uint32_t raw_read_reply(int fd, uint32_t *id, char *msg, size_t cap)
{
    static uint8_t buf[1 << 16];
    for (int frames = 0; frames < 64; frames++) {
        wire_frame f = {0};
        if (raw_read_frame(fd, buf, sizeof(buf), &f, TEST_WAIT_MS) != 1)
            break;
        if (f.type == WIRE_RESPONSE) {
            *id = f.call_id;
            if (msg)
                raw_meta_message(&f, msg, cap);
            return f.code;
        }
    }
    fail_msg("no response");
    return 0;
}

/* ---- the writer held ------------------------------------------------------------------------- */

void test_deadline_in(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Blocks the writer (tests only: writes must not block), bounded by TEST_WAIT_MS. */
static int hold_write(store_txn *t, void *arg, store_error *err)
{
    (void)t;
    (void)err;
    test_hold *h = arg;
    struct timespec ts;
    test_deadline_in(&ts, TEST_WAIT_MS);
    pthread_mutex_lock(&h->mu);
    h->running = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (h->until_stopping) {
        for (int i = 0; i < TEST_WAIT_MS && !__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE); i++)
            usleep(1000);
        usleep(400000);
        return LAGOON_OK;
    }
    pthread_mutex_lock(&h->mu);
    while (!h->released && pthread_cond_timedwait(&h->cv, &h->mu, &ts) == 0)
        ;
    pthread_mutex_unlock(&h->mu);
    return LAGOON_OK;
}

static void hold_done(void *arg, int status, const store_error *err)
{
    (void)status;
    (void)err;
    test_hold *h = arg;
    pthread_mutex_lock(&h->mu);
    h->done = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

void test_hold_writer(test_app *t, test_hold *h)
{
    store_error err;
    assert_int_equal(store_submit(t->app->db, hold_write, h, hold_done, h, &err), LAGOON_OK);
    assert_true(test_hold_wait(h, &h->running));
}

int test_hold_wait(test_hold *h, const int *flag)
{
    struct timespec ts;
    test_deadline_in(&ts, TEST_WAIT_MS);
    pthread_mutex_lock(&h->mu);
    while (!*flag && pthread_cond_timedwait(&h->cv, &h->mu, &ts) == 0)
        ;
    int set = *flag;
    pthread_mutex_unlock(&h->mu);
    return set;
}

void test_hold_release(test_hold *h)
{
    pthread_mutex_lock(&h->mu);
    h->released = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

void test_hold_stopping(test_hold *h)
{
    __atomic_store_n(&h->stopping, 1, __ATOMIC_RELEASE);
}

uint64_t test_send_text(lagoon_client *c, const char *token, uint64_t to, const char *text)
{
    lagoon_set_token(c, token);
    lagoon_v1_SendMessageRequest *req = calloc(1, sizeof(*req)); /* 16 KiB each: not on the stack */
    lagoon_v1_DirectMessage *m = calloc(1, sizeof(*m));
    if (req == NULL || m == NULL)
        fail_msg("out of memory");
    req->recipient_id = to;
    req->which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req->content.text.text, sizeof(req->content.text.text), "%s", text);
    int st = lagoon_Messages_Send(c, req, m);
    if (st != LAGOON_OK)
        fail_msg("send: %s", lagoon_last_error(c)->detail.message);
    uint64_t id = m->id;
    free(req);
    free(m);
    return id;
}

uint64_t test_admin_user(test_app *t, lagoon_client *c, const char *name, char *token)
{
    store_error err;
    char email[64];
    uint64_t id;
    snprintf(email, sizeof(email), "%s@example.com", name);
    if (account_create_admin(t->app, email, name, "an admin passphrase", &id, &err) != LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    lagoon_set_token(c, NULL);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "%s", name);
    snprintf(lr.password, sizeof(lr.password), "an admin passphrase");
    lagoon_v1_TokenPair tp;
    if (lagoon_Auth_Login(c, &lr, &tp) != LAGOON_OK)
        fail_msg("admin login: %s", lagoon_last_error(c)->detail.message);
    snprintf(token, 65, "%s", tp.access_token);
    return id;
}

int test_has_violation(lagoon_client *c, const char *field)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0)
            return 1;
    return 0;
}

void test_expect(lagoon_client *c, int st, int code, const char *field, int line)
{
    if (st != code)
        fail_msg("line %d: status %s, expected %s (%s)", line, lagoon_status_name(st), lagoon_status_name(code),
                 lagoon_last_error(c)->detail.message);
    if (field && !test_has_violation(c, field))
        fail_msg("line %d: no violation on %s (%s)", line, field, lagoon_last_error(c)->detail.message);
}
