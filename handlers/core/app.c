/* app: shared handler state and the write glue. See app.h. */
#include "app.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

/* Only the shared layer's headers: the services include app.h, never the other way round. */
#include "account_tokens.h"
#include "lagoon_tables.h" /* sessions, users: what app_authenticate reads */
#include "log.h"
#include "mailer.h"
#include "realtime.h"
#include "scheduler.h"
#include "schema.h"

static void policy_default(limiter_policy *p, uint32_t max, uint32_t window_ms, uint32_t base, uint32_t cap)
{
    if (p->max_events == 0)
        p->max_events = max;
    if (p->window_ms == 0)
        p->window_ms = window_ms;
    if (p->base_delay_ms == 0)
        p->base_delay_ms = base;
    if (p->max_delay_ms == 0)
        p->max_delay_ms = cap;
}

void app_config_defaults(app_config *c)
{
    app_settings_defaults(c);
    if (c->access_ttl_s == 0)
        c->access_ttl_s = 24 * 3600;
    if (c->refresh_ttl_s == 0)
        c->refresh_ttl_s = 30 * 24 * 3600;
    if (c->verify_ttl_s == 0)
        c->verify_ttl_s = 24 * 3600;
    if (c->reset_ttl_s == 0)
        c->reset_ttl_s = 3600;
    if (c->max_sessions > STORE_PAGE_SIZE_MAX)
        c->max_sessions = STORE_PAGE_SIZE_MAX;
    if (c->subscriber_backlog == 0)
        c->subscriber_backlog = 1u << 20;
    policy_default(&c->login_failures, 5, 15 * 60 * 1000, 1000, 15 * 60 * 1000);
    policy_default(&c->login_account_failures, 100, 15 * 60 * 1000, 1000, 15 * 60 * 1000);
    policy_default(&c->login_address_failures, 50, 15 * 60 * 1000, 1000, 15 * 60 * 1000);
    /* "N per hour" budgets: past N, wait until the hour (from the first) ends. */
    c->registrations.kind = LIMITER_BUDGET;
    c->resets.kind = LIMITER_BUDGET;
    policy_default(&c->registrations, 20, 3600 * 1000, 0, 0);
    policy_default(&c->resets, 10, 3600 * 1000, 0, 0);
    policy_default(&c->sends, 0 /* max_events: APP_SETTINGS */, 60 * 1000, 1000, 60 * 1000);
}

static _Thread_local int64_t pinned_now;

void app_now_pin(int64_t now)
{
    pinned_now = now;
}

int64_t app_now(const app *a)
{
    if (pinned_now != 0)
        return pinned_now;
    if (a->cfg.clock)
        return a->cfg.clock(a->cfg.clock_arg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- modules ---------------------------------------------------------------------------- */

static int module_start(app *a, const app_module *m, rpc_error *err)
{
    if (a->nmodules == APP_MODULES_MAX) {
        snprintf(err->message, sizeof(err->message), "more than %d modules", APP_MODULES_MAX);
        return RPC_ERR;
    }
    void *state = NULL;
    if (m->start && m->start(a, &state, err) != RPC_OK)
        return RPC_ERR;
    a->modules[a->nmodules] = m;
    a->module_state[a->nmodules++] = state;
    return RPC_OK;
}

/* The application's modules, then the tests' extra ones, in order. */
static int modules_start(app *a, rpc_error *err)
{
    for (size_t i = 0; i < app_modules_count; i++)
        if (module_start(a, app_modules[i], err) != RPC_OK)
            return RPC_ERR;
    for (size_t i = 0; i < a->cfg.nextra_modules; i++)
        if (module_start(a, a->cfg.extra_modules[i], err) != RPC_OK)
            return RPC_ERR;
    return RPC_OK;
}

void *app_state(const app *a, const app_module *m)
{
    for (size_t i = 0; i < a->nmodules; i++)
        if (a->modules[i] == m)
            return a->module_state[i];
    return NULL;
}

/* From the module lists, not a->modules: the router calls this while app_close stops modules. */
static int module_fill(const app_module *m, store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out,
                       const lagoon_v1_Event **sent, store_error *err)
{
    int filled = 0;
    int st = m->fill_event ? m->fill_event(t, ev, out, &filled, err) : LAGOON_OK;
    if (st == LAGOON_OK && filled)
        *sent = out;
    return st;
}

int app_fill_event(const app *a, store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out,
                   const lagoon_v1_Event **sent, store_error *err)
{
    *sent = ev;
    int st = LAGOON_OK;
    for (size_t i = 0; i < app_modules_count && st == LAGOON_OK && *sent == ev; i++)
        st = module_fill(app_modules[i], t, ev, out, sent, err);
    for (size_t i = 0; i < a->cfg.nextra_modules && st == LAGOON_OK && *sent == ev; i++)
        st = module_fill(a->cfg.extra_modules[i], t, ev, out, sent, err);
    return st;
}

int app_open(const char *data_dir, const app_config *cfg, app **out, rpc_error *err)
{
    *out = NULL;
    if (sodium_init() < 0) {
        snprintf(err->message, sizeof(err->message), "libsodium failed to initialise");
        return RPC_ERR;
    }
    app *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    a->cfg = *cfg;
    app_config_defaults(&a->cfg);
    snprintf(a->data_dir, sizeof(a->data_dir), "%s", data_dir);
    store_config sc = {0};
    sc.schema = app_schema();
    sc.sync = a->cfg.sync;
    store_error se;
    if (store_open(data_dir, &sc, &a->db, &se) != LAGOON_OK) {
        snprintf(err->message, sizeof(err->message), "cannot open the store: %.*s", 200, se.message);
        app_close(a);
        return RPC_ERR;
    }
    if (realtime_start(a, &a->rt, err) != RPC_OK) {
        app_close(a);
        return RPC_ERR;
    }
    char maildir[1100];
    snprintf(maildir, sizeof(maildir), "%s/mail", data_dir);
    /* The scheduler last: the jobs it runs belong to the modules. */
    if (mailer_start(a, maildir, &a->mail, err) != RPC_OK || modules_start(a, err) != RPC_OK ||
        sched_start(a, &a->jobs, err) != RPC_OK) {
        app_close(a);
        return RPC_ERR;
    }
    *out = a;
    return RPC_OK;
}

static int write_barrier(store_txn *t, void *arg, store_error *err)
{
    (void)t;
    (void)arg;
    (void)err;
    return LAGOON_OK;
}

void app_close(app *a)
{
    if (a == NULL)
        return;
    sched_stop(a->jobs); /* first: its jobs run in the modules */
    /* Writes still queued (a call the drain gave up on) finish first: their completions and
     * after hooks use the modules' state. The server has stopped, so nothing queues after
     * this barrier, and the writer runs the queue in order. */
    if (a->db != NULL) {
        store_error se;
        if (store_write(a->db, write_barrier, NULL, &se) != LAGOON_OK)
            log_msg(LOG_WARN, "app_close: the store's queue did not finish: %s", se.message);
    }
    while (a->nmodules > 0) {
        a->nmodules--;
        const app_module *m = a->modules[a->nmodules];
        if (m->stop)
            m->stop(a, a->module_state[a->nmodules]);
    }
    mailer_stop(a->mail);
    realtime_stop(a->rt);
    store_close(a->db);
    free(a);
}

int app_start_commit_worker(app *a, store_subscriber_fn on_commit, void *arg, void *(*main)(void *),
                            pthread_t *thread, const char *what, rpc_error *err)
{
    store_error se;
    if (store_subscribe(a->db, on_commit, arg, &se) != LAGOON_OK || pthread_create(thread, NULL, main, arg) != 0) {
        snprintf(err->message, sizeof(err->message), "cannot start the %s", what);
        store_unsubscribe(a->db, on_commit, arg);
        return RPC_ERR;
    }
    return RPC_OK;
}

void app_on_drain(void *arg)
{
    app *a = arg;
    realtime_shutdown_streams(a->rt);
    for (size_t i = a->nmodules; i-- > 0;)
        if (a->modules[i]->drain)
            a->modules[i]->drain(a, a->module_state[i]);
}

void app_peer_address(const rpc_call *c, char *out, size_t cap)
{
    snprintf(out, cap, "%s", rpc_call_peer(c));
    char *colon = strrchr(out, ':');
    if (colon != NULL && colon != out)
        *colon = '\0';
}

void app_address_key(const char *peer, char out[APP_PEER_KEY_MAX])
{
    /* The host: inside "[...]", or before the last ':'. */
    char host[INET6_ADDRSTRLEN + 16];
    const char *end = NULL;
    if (peer[0] == '[') {
        peer++;
        end = strchr(peer, ']');
    } else {
        end = strrchr(peer, ':');
    }
    size_t n = end != NULL ? (size_t)(end - peer) : strlen(peer);
    if (n >= sizeof(host))
        n = sizeof(host) - 1;
    memcpy(host, peer, n);
    host[n] = '\0';
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            memcpy(&a4, a6.s6_addr + 12, sizeof(a4));
            inet_ntop(AF_INET, &a4, out, APP_PEER_KEY_MAX);
            return;
        }
        memset(a6.s6_addr + 8, 0, 8);
        char net[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &a6, net, sizeof(net));
        snprintf(out, APP_PEER_KEY_MAX, "%s/64", net);
        return;
    }
    if (inet_pton(AF_INET, host, &a4) == 1) {
        inet_ntop(AF_INET, &a4, out, APP_PEER_KEY_MAX);
        return;
    }
    snprintf(out, APP_PEER_KEY_MAX, "%s", host);
}

void app_peer_key(const rpc_call *c, char out[APP_PEER_KEY_MAX])
{
    app_address_key(rpc_call_peer(c), out);
}

/* ---- authentication ----------------------------------------------------------------------- */

int app_authenticate(void *arg, const char *token, rpc_caller *out)
{
    app *a = arg;
    uint8_t hash[ACCOUNT_HASH_BYTES];
    if (account_token_hash(token, hash) != 0)
        return -1;
    store_txn *t;
    store_error err;
    if (store_read_begin(a->db, &t, &err) != LAGOON_OK) {
        log_msg(LOG_WARN, "authenticate: %s", err.message);
        return -1;
    }
    store_key k;
    store_key_reset(&k);
    store_key_raw(&k, hash, sizeof(hash));
    /* The session row carries the user's role and verified flag (kept in step by every write
     * that changes them), and exists only while the user is active (a deactivation deletes it):
     * one row answers. */
    lagoon_v1_Session s;
    int ok = store_get_by(t, &lagoon_table_sessions, lagoon_index_sessions_by_access, &k, NULL, &s, &err) == LAGOON_OK &&
             sodium_memcmp(s.access_hash, hash, sizeof(hash)) == 0 && s.access_expires_at > app_now(a);
    if (ok && s.role == lagoon_v1_Role_ROLE_UNSPECIFIED) {
        /* A session stored before sessions carried them (every user has a role): ask the user. */
        lagoon_v1_User *u = malloc(sizeof(*u));
        ok = u != NULL && store_get(t, &lagoon_table_users, s.user_id, u, &err) == LAGOON_OK && u->active;
        if (ok) {
            s.role = u->role;
            s.verified = u->verified;
        }
        free(u);
    }
    if (ok) {
        out->user_id = s.user_id;
        out->role = (uint8_t)s.role;
        out->verified = s.verified;
        out->session_id = s.id;
        out->grants = app_grants(out->role, out->verified);
    }
    store_read_end(t);
    return ok ? 0 : -1;
}

/* What Lagoon's access levels (idl/lagoon/v1/access.proto) mean: the RPC layer enforces the
 * grants, this says who holds them. */
uint32_t app_grants(uint8_t role, int verified)
{
    uint32_t g = RPC_GRANT(lagoon_v1_Access_ACCESS_USER);
    if (verified)
        g |= RPC_GRANT(lagoon_v1_Access_ACCESS_VERIFIED);
    if (role == lagoon_v1_Role_TEACHER || role == lagoon_v1_Role_ADMIN)
        g |= RPC_GRANT(lagoon_v1_Access_ACCESS_TEACHER);
    if (role == lagoon_v1_Role_ADMIN)
        g |= RPC_GRANT(lagoon_v1_Access_ACCESS_ADMIN);
    return g;
}

const char *const app_access_denied[APP_ACCESS_LEVELS] = {
    [lagoon_v1_Access_ACCESS_VERIFIED] = "this method needs a verified email address",
    [lagoon_v1_Access_ACCESS_TEACHER] = "this method is for teachers",
    [lagoon_v1_Access_ACCESS_ADMIN] = "this method is for administrators",
};

/* ---- writes --------------------------------------------------------------------------------- */

typedef struct page_scan {
    app_id_page *page;
    app_mark_fn mark;
    void *arg;
} page_scan;

static int page_id(void *arg, uint64_t id, const void *row)
{
    page_scan *ps = arg;
    app_id_page *p = ps->page;
    int m = ps->mark ? ps->mark(ps->arg, row) : 0;
    if (m < 0)
        return LAGOON_CANCELLED; /* ends the scan: the caller's verdict */
    if (p->n < STORE_PAGE_SIZE_MAX) {
        p->marked[p->n] = (uint8_t)m;
        p->ids[p->n++] = id;
    }
    return LAGOON_OK;
}

int app_scan_marked(store_txn *t, const store_query *q, app_mark_fn mark, void *arg, app_id_page *page,
                    store_error *err)
{
    store_page next;
    page_scan ps = {page, mark, arg};
    page->n = 0;
    page->next_page_token[0] = '\0';
    int st = store_scan(t, q, page_id, &ps, &next, err);
    if (st == LAGOON_CANCELLED)
        return LAGOON_OK; /* stopped by mark: no next page */
    if (st == LAGOON_OK)
        APP_STRCPY(page->next_page_token, next.next_page_token);
    return st;
}

int app_each_id(store_txn *t, store_query *q, app_id_fn fn, void *arg, store_error *err)
{
    app_id_page *page = malloc(sizeof(*page)); /* 4 KiB */
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    q->page_size = STORE_PAGE_SIZE_MAX;
    int st;
    do {
        q->page_token = token;
        st = app_scan_ids(t, q, page, err);
        for (uint32_t i = 0; i < page->n && st == LAGOON_OK; i++)
            st = fn(t, page->ids[i], arg, err);
        memcpy(token, page->next_page_token, sizeof(token));
    } while (st == LAGOON_OK && token[0] != '\0');
    q->page_token = NULL; /* token was this function's */
    free(page);
    return st;
}

int app_scan_ids(store_txn *t, const store_query *q, app_id_page *page, store_error *err)
{
    return app_scan_marked(t, q, NULL, NULL, page, err);
}

int app_store_error(rpc_call *call, int status, const store_error *err)
{
    if (err->field[0] && (status == LAGOON_INVALID_ARGUMENT || status == LAGOON_ALREADY_EXISTS ||
                          status == LAGOON_NOT_FOUND))
        rpc_call_violation(call, err->field, "%s", err->message);
    /* An INVALID_ARGUMENT naming a field reads like the handlers' and the rules' own: the
     * violation says what is wrong, the message points to it. */
    if (status == LAGOON_INVALID_ARGUMENT && err->field[0])
        return status;
    return rpc_call_error(call, status, "%s", err->message);
}

int app_budget_start(const app *a, limiter_policy p, uint32_t max_default, uint32_t window_default, void **state,
                     rpc_error *err)
{
    p.kind = LIMITER_BUDGET;
    if (p.max_events == 0)
        p.max_events = max_default;
    if (p.window_ms == 0)
        p.window_ms = window_default;
    *state = limiter_new(&p, a->cfg.limiter_keys);
    if (*state == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    return RPC_OK;
}

void app_budget_stop(app *a, void *state)
{
    (void)a;
    limiter_free(state);
}
