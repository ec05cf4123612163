/* Auth service: registration, sign-in, sessions, email verification, password reset.
 *
 * Shape of a call: the handler validates on the loop thread (and reads what it needs in a
 * short read transaction); password hashing goes to a worker (rpc_call_defer); the change is
 * one durable write (app_write) whose completion fills the response. Each op struct carries a
 * call's state across those steps and is freed by the step that ends it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "accounts.h"
#include "lagoon_handlers.h"

#define COPY_STR(dst, src) snprintf((dst), sizeof(dst), "%s", (src))

/* ---- shared steps ------------------------------------------------------------------------- */

static int read_user(app *a, uint64_t id, lagoon_v1_User *u, store_error *err)
{
    store_txn *t;
    int st = store_read_begin(a->db, &t, err);
    if (st != LAGOON_OK)
        return st;
    st = store_get(t, &lagoon_table_users, id, u, err);
    store_read_end(t);
    return st;
}

/* Looks a user up by email (when login has an '@') or username. */
static int find_user(app *a, const char *login, lagoon_v1_User *u, store_error *err)
{
    store_txn *t;
    int st = store_read_begin(a->db, &t, err);
    if (st != LAGOON_OK)
        return st;
    store_key k;
    store_key_reset(&k);
    store_key_str_fold(&k, login);
    const store_index *idx = strchr(login, '@') ? lagoon_index_users_by_email : lagoon_index_users_by_username;
    st = store_get_by(t, &lagoon_table_users, idx, &k, NULL, u, err);
    store_read_end(t);
    return st;
}

static int too_many(rpc_call *call, uint32_t wait_ms, const char *what)
{
    rpc_call_retry_after(call, wait_ms);
    return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many %s; retry in %u s", what,
                          (wait_ms + 999) / 1000);
}

/* A single-use token for user, in the same transaction, and the email carrying it. */
static int issue_token(store_txn *t, const app *a, const lagoon_v1_User *u, lagoon_v1_OneTimeToken_Kind kind,
                       const char *text, const uint8_t *hash, store_error *err)
{
    lagoon_v1_OneTimeToken tok = lagoon_v1_OneTimeToken_init_zero;
    tok.user_id = u->id;
    tok.kind = kind;
    memcpy(tok.token_hash, hash, ACCOUNT_HASH_BYTES);
    tok.created_at = app_now(a);
    uint32_t ttl = kind == lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL ? a->cfg.verify_ttl_s : a->cfg.reset_ttl_s;
    tok.expires_at = tok.created_at + (int64_t)ttl * 1000;
    int st = store_insert(t, &lagoon_table_one_time_tokens, &tok, NULL, err);
    if (st != LAGOON_OK)
        return st;
    char body[1024];
    if (kind == lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL)
        snprintf(body, sizeof(body),
                 "Hello %s,\n\nTo verify your email address for Lagoon, enter this code in the app:\n\n"
                 "    %s\n\nor open lagoon://verify-email?token=%s\n\n"
                 "The code is valid for %u hours. If you did not sign up, ignore this message.",
                 u->username, text, text, ttl / 3600);
    else
        snprintf(body, sizeof(body),
                 "Hello %s,\n\nSomeone asked to reset the password of your Lagoon account. To choose a new "
                 "password, enter this code in the app:\n\n    %s\n\nor open lagoon://reset-password?token=%s\n\n"
                 "The code is valid for %u minutes and works once. If it was not you, ignore this message: "
                 "your password is unchanged.",
                 u->username, text, text, ttl / 60);
    return account_queue_email(t, a, u->email,
                               kind == lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL ? "Verify your email address"
                                                                               : "Reset your password",
                               body, err);
}

/* Deletes the user's tokens of one kind (a new one replaces them). */
typedef struct token_ids {
    uint64_t ids[64];
    uint32_t n;
    lagoon_v1_OneTimeToken_Kind kind;
} token_ids;

static int collect_token(void *arg, uint64_t id, const void *row)
{
    token_ids *l = arg;
    if (((const lagoon_v1_OneTimeToken *)row)->kind == l->kind && l->n < 64)
        l->ids[l->n++] = id;
    return LAGOON_OK;
}

static int drop_tokens(store_txn *t, uint64_t user_id, lagoon_v1_OneTimeToken_Kind kind, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    token_ids l = {.n = 0, .kind = kind};
    store_query q = {0};
    q.table = &lagoon_table_one_time_tokens;
    q.index = lagoon_index_one_time_tokens_by_user;
    q.prefix = prefix.buf;
    q.prefix_len = prefix.len;
    q.page_size = 64;
    store_page page;
    int st = store_scan(t, &q, collect_token, &l, &page, err);
    for (uint32_t i = 0; i < l.n && st == LAGOON_OK; i++)
        st = store_delete(t, &lagoon_table_one_time_tokens, l.ids[i], err);
    return st;
}

/* ---- Register -------------------------------------------------------------------------------- */

typedef struct register_op {
    app *a;
    lagoon_v1_UserProfile *resp;
    lagoon_v1_User user;
    char password[ACCOUNT_PASSWORD_MAX + 1];
    char token[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t token_hash[ACCOUNT_HASH_BYTES];
} register_op;

static void register_free(register_op *op)
{
    sodium_memzero(op->password, sizeof(op->password));
    free(op);
}

static void register_drop(void *op) { register_free(op); }

static int register_write(store_txn *t, void *arg, store_error *err)
{
    register_op *op = arg;
    lagoon_v1_User u = op->user; /* the write may be replayed: start from the request each time */
    uint64_t id;
    int st = store_insert(t, &lagoon_table_users, &u, &id, err);
    if (st == LAGOON_OK)
        st = issue_token(t, op->a, &u, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, op->token, op->token_hash, err);
    if (st == LAGOON_OK)
        op->user.id = id;
    return st;
}

static int register_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    register_op *op = arg;
    if (status == LAGOON_OK)
        account_profile(&op->user, op->resp);
    else
        status = app_store_error(call, status, err);
    register_free(op);
    return status;
}

static int register_hash(rpc_call *call, void *arg)
{
    register_op *op = arg;
    app_hook_point(op->a, APP_HOOK_HASH);
    if (account_hash_password(op->a, op->password, op->user.password_hash) != 0) {
        register_free(op);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    }
    sodium_memzero(op->password, sizeof(op->password));
    int st = app_write(call, register_write, op, register_done);
    if (st != RPC_PENDING)
        register_free(op);
    return st;
}

int handle_Auth_Register(rpc_call *call, const lagoon_v1_RegisterRequest *req, lagoon_v1_UserProfile *resp)
{
    app *a = app_of(call);
    account_check(call, "email", account_email_problem(req->email));
    account_check(call, "username", account_username_problem(req->username));
    account_check(call, "password", account_password_problem(req->password, req->email, req->username));
    account_check(call, "full_name", account_text_problem(req->full_name, 100, 0));
    lagoon_v1_Role role = req->role == lagoon_v1_Role_ROLE_UNSPECIFIED ? lagoon_v1_Role_STUDENT : req->role;
    if (role != lagoon_v1_Role_STUDENT && role != lagoon_v1_Role_TEACHER)
        rpc_call_violation(call, "role", "must be STUDENT or TEACHER");
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;

    /* The limit comes after validation (an invalid request is told what is wrong, and costs
     * nothing), and every request that gets this far counts, taken names too: whether an
     * email has an account is then learnt at most as fast as accounts can be made. The
     * check and the count are one step, so that concurrent requests cannot all pass it.
     * Nothing is given back, not even for a request abandoned before its hash: which
     * requests get that far (their names are free) is what the limit bounds. */
    char addr[APP_PEER_KEY_MAX], key[96];
    app_peer_key(call, addr);
    snprintf(key, sizeof(key), "reg:%s", addr);
    int64_t now = app_now(a);
    uint32_t wait = limiter_take(a->registrations, key, now);
    if (wait)
        return too_many(call, wait, "registrations from this address");
    /* Report taken names up front, both at once; the unique indexes decide in the end. */
    lagoon_v1_User *other = malloc(sizeof(*other));
    if (other == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    store_error err;
    if (find_user(a, req->email, other, &err) == LAGOON_OK)
        rpc_call_violation(call, "email", "is already registered");
    if (find_user(a, req->username, other, &err) == LAGOON_OK)
        rpc_call_violation(call, "username", "is taken");
    free(other);
    if (rpc_call_violations(call))
        return rpc_call_error(call, LAGOON_ALREADY_EXISTS, "email or username already in use");

    register_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    op->a = a;
    op->resp = resp;
    COPY_STR(op->user.email, req->email);
    COPY_STR(op->user.username, req->username);
    COPY_STR(op->user.full_name, req->full_name);
    op->user.role = role;
    op->user.created_at = op->user.updated_at = now;
    op->user.active = true;
    COPY_STR(op->password, req->password);
    account_token_new(op->token, op->token_hash);
    int st = rpc_call_defer(call, RPC_LANE_HASH, register_hash, register_drop, op);
    if (st != RPC_PENDING)
        register_free(op);
    return st;
}

/* ---- Login -------------------------------------------------------------------------------- */

/* What the sign-in's write found (the checks that must hold in the transaction that creates
 * the session). */
enum login_outcome { LOGIN_OK, LOGIN_WRONG, LOGIN_INACTIVE, LOGIN_UPGRADED };

typedef struct login_op {
    app *a;
    lagoon_v1_TokenPair *resp;
    int found, active;
    int outcome; /* enum login_outcome, set by session_create */
    uint64_t user_id;
    char hash[ACCOUNT_HASH_MAX];     /* the hash the password is verified against */
    char new_hash[ACCOUNT_HASH_MAX]; /* "" unless the hash is upgraded */
    char password[ACCOUNT_PASSWORD_MAX + 1]; /* wiped once verified */
    account_signin signin; /* the attempt, as the sign-in throttle counts it */
    char peer[64];         /* the client's address, for the session row */
    char access[ACCOUNT_TOKEN_CHARS + 1], refresh[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t access_hash[ACCOUNT_HASH_BYTES], refresh_hash[ACCOUNT_HASH_BYTES];
    int64_t now;
    lagoon_v1_User user;
} login_op;

static void login_free(login_op *op)
{
    sodium_memzero(op->password, sizeof(op->password));
    free(op);
}

/* The call ended before its hash: no password was tried. */
static void login_drop(void *arg)
{
    login_op *op = arg;
    account_signin_cancel(op->a, &op->signin);
    login_free(op);
}

/* A new session for op->user_id with op's tokens; fills op->user. The password was verified
 * outside this transaction, so the account may have changed since: the session is created
 * only if the user still exists, is active and still has the hash that was verified
 * (otherwise a sign-in racing a deactivation, a password reset or a deletion would outlive
 * it); else op->outcome says why and nothing is written. */
static int session_create(store_txn *t, login_op *op, store_error *err)
{
    lagoon_v1_User u;
    int st = store_get(t, &lagoon_table_users, op->user_id, &u, err);
    op->outcome = LOGIN_WRONG;
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    if (st != LAGOON_OK)
        return st;
    if (strcmp(u.password_hash, op->hash) != 0) {
        /* Another sign-in may have upgraded the outdated hash this one verified (the same
         * password, a new string): that is not a wrong password, but it cannot be told apart
         * from a change here. The client is asked to try again, and nothing is counted. */
        if (op->new_hash[0])
            op->outcome = LOGIN_UPGRADED;
        return LAGOON_OK;
    }
    op->outcome = LOGIN_INACTIVE;
    if (!u.active)
        return LAGOON_OK;
    op->outcome = LOGIN_OK;
    u.last_login = op->now;
    if (op->new_hash[0])
        COPY_STR(u.password_hash, op->new_hash);
    st = store_update(t, &lagoon_table_users, &u, err);
    if (st != LAGOON_OK)
        return st;
    st = account_trim_sessions(t, op->user_id, op->now, op->a->cfg.max_sessions, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_Session s = lagoon_v1_Session_init_zero;
    s.user_id = op->user_id;
    memcpy(s.access_hash, op->access_hash, ACCOUNT_HASH_BYTES);
    memcpy(s.refresh_hash, op->refresh_hash, ACCOUNT_HASH_BYTES);
    s.created_at = op->now;
    s.access_expires_at = op->now + (int64_t)op->a->cfg.access_ttl_s * 1000;
    s.refresh_expires_at = op->now + (int64_t)op->a->cfg.refresh_ttl_s * 1000;
    COPY_STR(s.peer, op->peer);
    s.role = u.role;
    s.verified = u.verified;
    st = store_insert(t, &lagoon_table_sessions, &s, NULL, err);
    if (st == LAGOON_OK)
        op->user = u;
    return st;
}

static void fill_tokens(const login_op *op, lagoon_v1_TokenPair *resp)
{
    COPY_STR(resp->access_token, op->access);
    COPY_STR(resp->refresh_token, op->refresh);
    resp->access_expires_at = op->now + (int64_t)op->a->cfg.access_ttl_s * 1000;
    resp->refresh_expires_at = op->now + (int64_t)op->a->cfg.refresh_ttl_s * 1000;
    resp->has_user = true;
    account_profile(&op->user, &resp->user);
}

static int login_write(store_txn *t, void *arg, store_error *err)
{
    return session_create(t, arg, err);
}

static int wrong_password(rpc_call *call)
{
    return rpc_call_error(call, LAGOON_UNAUTHENTICATED, "wrong login or password");
}

static int deactivated(rpc_call *call)
{
    return rpc_call_error(call, LAGOON_PERMISSION_DENIED, "this account is deactivated");
}

static int login_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    login_op *op = arg;
    if (status != LAGOON_OK) {
        account_signin_cancel(op->a, &op->signin); /* the password was right */
        status = app_store_error(call, status, err);
    } else if (op->outcome == LOGIN_OK) {
        account_signin_ok(op->a, &op->signin, app_now(op->a));
        fill_tokens(op, op->resp);
    } else if (op->outcome == LOGIN_INACTIVE) {
        account_signin_cancel(op->a, &op->signin);
        status = deactivated(call);
    } else if (op->outcome == LOGIN_UPGRADED) {
        account_signin_cancel(op->a, &op->signin);
        status = rpc_call_error(call, LAGOON_ABORTED, "the account changed during sign-in: try again");
    } else {
        /* The password was replaced (or the account deleted) after it was checked: it is
         * wrong now, and counts as such. */
        account_signin_failed(op->a, &op->signin);
        status = wrong_password(call);
    }
    login_free(op);
    return status;
}

static int login_verify(rpc_call *call, void *arg)
{
    login_op *op = arg;
    app *a = op->a;
    app_hook_point(a, APP_HOOK_HASH);
    /* An unknown login is checked against a dummy hash: it costs the same as a wrong password. */
    int ok = account_verify_password(op->found ? op->hash : account_dummy_hash(a), op->password) && op->found;
    if (ok && account_needs_rehash(a, op->hash) && account_hash_password(a, op->password, op->new_hash) != 0)
        op->new_hash[0] = '\0';
    sodium_memzero(op->password, sizeof(op->password)); /* not needed any more */
    if (!ok) {
        account_signin_failed(a, &op->signin);
        login_free(op);
        return wrong_password(call);
    }
    if (!op->active) {
        account_signin_cancel(a, &op->signin);
        login_free(op);
        return deactivated(call);
    }
    app_hook_point(a, APP_HOOK_LOGIN_VERIFIED);
    account_token_new(op->access, op->access_hash);
    account_token_new(op->refresh, op->refresh_hash);
    op->now = app_now(a);
    int st = app_write(call, login_write, op, login_done);
    if (st != RPC_PENDING) {
        account_signin_cancel(a, &op->signin);
        login_free(op);
    }
    return st;
}

int handle_Auth_Login(rpc_call *call, const lagoon_v1_LoginRequest *req, lagoon_v1_TokenPair *resp)
{
    app *a = app_of(call);
    if (req->login[0] == '\0')
        rpc_call_violation(call, "login", "is required (email or username)");
    if (req->password[0] == '\0')
        rpc_call_violation(call, "password", "is required");
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    login_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    op->a = a;
    op->resp = resp;
    store_error err;
    if (find_user(a, req->login, &op->user, &err) == LAGOON_OK) {
        op->found = 1;
        op->active = op->user.active;
        op->user_id = op->user.id;
        COPY_STR(op->hash, op->user.password_hash);
        account_signin_user(op->signin.account, op->user_id);
    } else {
        /* Unknown logins are throttled by name too, folded like the indexes fold them. */
        snprintf(op->signin.account, sizeof(op->signin.account), "login:%s", req->login);
        for (char *p = op->signin.account; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
    }
    app_peer_address(call, op->peer, sizeof(op->peer));
    app_peer_key(call, op->signin.address);
    /* Counted now, before the hash: the attempts pipelined behind this one see it. */
    uint32_t wait = account_signin_begin(a, &op->signin, app_now(a));
    if (wait) {
        login_free(op);
        return too_many(call, wait, "failed sign-ins");
    }
    COPY_STR(op->password, req->password);
    int st = rpc_call_defer(call, RPC_LANE_HASH, login_verify, login_drop, op);
    if (st != RPC_PENDING) {
        account_signin_cancel(a, &op->signin);
        login_free(op);
    }
    return st;
}

/* ---- Refresh ------------------------------------------------------------------------------ */

enum refresh_outcome { REFRESH_OK, REFRESH_UNKNOWN, REFRESH_EXPIRED, REFRESH_REUSED, REFRESH_INACTIVE };

typedef struct refresh_op {
    login_op l; /* new tokens and the resulting user */
    uint8_t presented[ACCOUNT_HASH_BYTES];
    int outcome;
} refresh_op;

static int refresh_write(store_txn *t, void *arg, store_error *err)
{
    refresh_op *op = arg;
    store_key k;
    store_key_reset(&k);
    store_key_raw(&k, op->presented, ACCOUNT_HASH_BYTES);
    lagoon_v1_Session s;
    int st = store_get_by(t, &lagoon_table_sessions, lagoon_index_sessions_by_refresh, &k, NULL, &s, err);
    if (st == LAGOON_NOT_FOUND) {
        /* Not current: if it was once, someone replays a stolen token. End that session. */
        lagoon_v1_UsedRefresh used;
        st = store_get_by(t, &lagoon_table_used_refresh, lagoon_index_used_refresh_by_hash, &k, NULL, &used, err);
        if (st == LAGOON_NOT_FOUND) {
            op->outcome = REFRESH_UNKNOWN;
            return LAGOON_OK;
        }
        if (st != LAGOON_OK)
            return st;
        op->outcome = REFRESH_REUSED;
        st = store_delete(t, &lagoon_table_sessions, used.session_id, err);
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    }
    if (st != LAGOON_OK)
        return st;
    if (s.refresh_expires_at <= op->l.now) {
        op->outcome = REFRESH_EXPIRED;
        return store_delete(t, &lagoon_table_sessions, s.id, err);
    }
    lagoon_v1_User u;
    st = store_get(t, &lagoon_table_users, s.user_id, &u, err);
    if (st != LAGOON_OK)
        return st;
    if (!u.active) {
        /* A deactivation deletes the sessions in its own transaction; one found here anyway
         * (stored before that rule) ends now, like every other session of the account. */
        op->outcome = REFRESH_INACTIVE;
        return account_revoke_sessions(t, u.id, 0, err);
    }
    lagoon_v1_UsedRefresh used = lagoon_v1_UsedRefresh_init_zero;
    used.session_id = s.id;
    memcpy(used.refresh_hash, op->presented, ACCOUNT_HASH_BYTES);
    used.expires_at = s.refresh_expires_at;
    st = store_insert(t, &lagoon_table_used_refresh, &used, NULL, err);
    if (st != LAGOON_OK)
        return st;
    memcpy(s.access_hash, op->l.access_hash, ACCOUNT_HASH_BYTES);
    memcpy(s.refresh_hash, op->l.refresh_hash, ACCOUNT_HASH_BYTES);
    s.access_expires_at = op->l.now + (int64_t)op->l.a->cfg.access_ttl_s * 1000;
    s.refresh_expires_at = op->l.now + (int64_t)op->l.a->cfg.refresh_ttl_s * 1000;
    s.role = u.role;
    s.verified = u.verified;
    st = store_update(t, &lagoon_table_sessions, &s, err);
    if (st == LAGOON_OK) {
        op->l.user = u;
        op->outcome = REFRESH_OK;
    }
    return st;
}

static int refresh_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    refresh_op *op = arg;
    if (status != LAGOON_OK)
        status = app_store_error(call, status, err);
    else if (op->outcome == REFRESH_OK)
        fill_tokens(&op->l, op->l.resp);
    else if (op->outcome == REFRESH_REUSED)
        status = rpc_call_error(call, LAGOON_UNAUTHENTICATED,
                                "refresh token already used: the session is revoked, sign in again");
    else if (op->outcome == REFRESH_EXPIRED)
        status = rpc_call_error(call, LAGOON_UNAUTHENTICATED, "refresh token expired: sign in again");
    else if (op->outcome == REFRESH_INACTIVE)
        status = rpc_call_error(call, LAGOON_PERMISSION_DENIED, "this account is deactivated");
    else
        status = rpc_call_error(call, LAGOON_UNAUTHENTICATED, "unknown refresh token");
    free(op);
    return status;
}

int handle_Auth_Refresh(rpc_call *call, const lagoon_v1_RefreshRequest *req, lagoon_v1_TokenPair *resp)
{
    refresh_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    if (account_token_hash(req->refresh_token, op->presented) != 0) {
        free(op);
        return rpc_call_error(call, LAGOON_UNAUTHENTICATED, "malformed refresh token");
    }
    op->l.a = app_of(call);
    op->l.resp = resp;
    op->l.now = app_now(op->l.a);
    account_token_new(op->l.access, op->l.access_hash);
    account_token_new(op->l.refresh, op->l.refresh_hash);
    int st = app_write(call, refresh_write, op, refresh_done);
    if (st != RPC_PENDING)
        free(op);
    return st;
}

/* ---- Logout, LogoutAll, Me ------------------------------------------------------------------ */

typedef struct session_op {
    uint64_t user_id, session_id;
} session_op;

static int logout_write(store_txn *t, void *arg, store_error *err)
{
    const session_op *op = arg;
    int st = store_delete(t, &lagoon_table_sessions, op->session_id, err);
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

static int logout_all_write(store_txn *t, void *arg, store_error *err)
{
    const session_op *op = arg;
    return account_revoke_sessions(t, op->user_id, 0, err);
}

static int session_op_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    free(arg);
    return status == LAGOON_OK ? LAGOON_OK : app_store_error(call, status, err);
}

static int session_write(rpc_call *call, store_write_fn fn)
{
    session_op *op = malloc(sizeof(*op));
    if (op == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    op->user_id = rpc_call_caller(call)->user_id;
    op->session_id = rpc_call_caller(call)->session_id;
    int st = app_write(call, fn, op, session_op_done);
    if (st != RPC_PENDING)
        free(op);
    return st;
}

int handle_Auth_Logout(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    return session_write(call, logout_write);
}

int handle_Auth_LogoutAll(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    return session_write(call, logout_all_write);
}

int handle_Auth_Me(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_UserProfile *resp)
{
    (void)req;
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    store_error err;
    int st = read_user(app_of(call), rpc_call_caller(call)->user_id, u, &err);
    if (st == LAGOON_OK)
        account_profile(u, resp);
    else
        st = app_store_error(call, st, &err);
    free(u);
    return st;
}

/* ---- tokens sent by email: VerifyEmail, ResetPassword ---------------------------------------- */

enum token_outcome { TOKEN_OK, TOKEN_INVALID };

typedef struct token_op {
    app *a;
    uint8_t hash[ACCOUNT_HASH_BYTES];
    lagoon_v1_OneTimeToken_Kind kind;
    int64_t now;
    int outcome;
    uint64_t user_id;                     /* ResetPassword: whose password */
    char new_hash[ACCOUNT_HASH_MAX];       /* ResetPassword */
    char password[ACCOUNT_PASSWORD_MAX + 1]; /* ResetPassword, until hashed */
} token_op;

static void token_free(token_op *op)
{
    sodium_memzero(op->password, sizeof(op->password));
    free(op);
}

static void token_drop(void *op) { token_free(op); }

/* Finds the live token of op's kind; consumes it (single use) and returns it in *tok. */
static int token_take(store_txn *t, token_op *op, lagoon_v1_OneTimeToken *tok, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_raw(&k, op->hash, ACCOUNT_HASH_BYTES);
    int st = store_get_by(t, &lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_hash, &k, NULL, tok, err);
    op->outcome = TOKEN_INVALID;
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    if (st != LAGOON_OK)
        return st;
    if (tok->kind != op->kind)
        return LAGOON_OK;
    st = store_delete(t, &lagoon_table_one_time_tokens, tok->id, err);
    if (st == LAGOON_OK && tok->expires_at > op->now)
        op->outcome = TOKEN_OK;
    return st;
}

/* Consumes op's token and loads its user: LAGOON_OK with op->outcome TOKEN_OK and *u, or
 * LAGOON_OK with TOKEN_INVALID, or the store's error. */
static int token_user(store_txn *t, token_op *op, lagoon_v1_User *u, store_error *err)
{
    lagoon_v1_OneTimeToken tok;
    int st = token_take(t, op, &tok, err);
    if (st != LAGOON_OK || op->outcome != TOKEN_OK)
        return st;
    return store_get(t, &lagoon_table_users, tok.user_id, u, err);
}

static int verify_write(store_txn *t, void *arg, store_error *err)
{
    token_op *op = arg;
    lagoon_v1_User u;
    int st = token_user(t, op, &u, err);
    if (st != LAGOON_OK || op->outcome != TOKEN_OK)
        return st;
    u.verified = true;
    u.updated_at = op->now;
    st = store_update(t, &lagoon_table_users, &u, err);
    return st == LAGOON_OK ? account_sync_sessions(t, &u, err) : st;
}

static int token_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    token_op *op = arg;
    if (status != LAGOON_OK)
        status = app_store_error(call, status, err);
    else if (op->outcome != TOKEN_OK)
        status = rpc_call_violation(call, "token", "is invalid, expired or already used");
    token_free(op);
    return status;
}

static token_op *token_op_new(rpc_call *call, const char *text, lagoon_v1_OneTimeToken_Kind kind)
{
    token_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    if (account_token_hash(text, op->hash) != 0) {
        rpc_call_violation(call, "token", "is malformed");
        free(op);
        return NULL;
    }
    op->a = app_of(call);
    op->kind = kind;
    op->now = app_now(op->a);
    return op;
}

int handle_Auth_VerifyEmail(rpc_call *call, const lagoon_v1_VerifyEmailRequest *req, lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    token_op *op = token_op_new(call, req->token, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL);
    if (op == NULL)
        return rpc_call_violations(call) ? LAGOON_INVALID_ARGUMENT : LAGOON_RESOURCE_EXHAUSTED;
    int st = app_write(call, verify_write, op, token_done);
    if (st != RPC_PENDING)
        token_free(op);
    return st;
}

static int reset_write(store_txn *t, void *arg, store_error *err)
{
    token_op *op = arg;
    lagoon_v1_User u;
    int st = token_user(t, op, &u, err);
    if (st != LAGOON_OK || op->outcome != TOKEN_OK)
        return st;
    COPY_STR(u.password_hash, op->new_hash);
    u.updated_at = op->now;
    st = store_update(t, &lagoon_table_users, &u, err);
    if (st == LAGOON_OK) /* a reset signs out every device */
        st = account_revoke_sessions(t, u.id, 0, err);
    return st;
}

static int reset_hash(rpc_call *call, void *arg)
{
    token_op *op = arg;
    if (account_hash_password(op->a, op->password, op->new_hash) != 0) {
        token_free(op);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    }
    sodium_memzero(op->password, sizeof(op->password));
    int st = app_write(call, reset_write, op, token_done);
    if (st != RPC_PENDING)
        token_free(op);
    return st;
}

int handle_Auth_ResetPassword(rpc_call *call, const lagoon_v1_ResetPasswordRequest *req,
                              lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    token_op *op = token_op_new(call, req->token, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD);
    if (op == NULL)
        return rpc_call_violations(call) ? LAGOON_INVALID_ARGUMENT : LAGOON_RESOURCE_EXHAUSTED;
    /* Check the new password against the account's names before paying for a hash. */
    store_txn *t;
    store_error err;
    lagoon_v1_OneTimeToken tok;
    lagoon_v1_User *u = malloc(sizeof(*u));
    int st = u ? store_read_begin(op->a->db, &t, &err) : LAGOON_RESOURCE_EXHAUSTED;
    int known = 0;
    if (st == LAGOON_OK) {
        store_key k;
        store_key_reset(&k);
        store_key_raw(&k, op->hash, ACCOUNT_HASH_BYTES);
        known = store_get_by(t, &lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_hash, &k, NULL, &tok,
                             &err) == LAGOON_OK &&
                tok.kind == op->kind && tok.expires_at > op->now &&
                store_get(t, &lagoon_table_users, tok.user_id, u, &err) == LAGOON_OK;
        store_read_end(t);
    }
    if (!known) {
        free(u);
        token_free(op);
        return rpc_call_violation(call, "token", "is invalid, expired or already used");
    }
    int strong = account_check(call, "new_password", account_password_problem(req->new_password, u->email, u->username));
    free(u);
    if (!strong) {
        token_free(op);
        return LAGOON_INVALID_ARGUMENT;
    }
    COPY_STR(op->password, req->new_password);
    st = rpc_call_defer(call, RPC_LANE_HASH, reset_hash, token_drop, op);
    if (st != RPC_PENDING)
        token_free(op);
    return st;
}

/* ---- ResendVerification, ForgotPassword: new tokens by email -------------------------------- */

typedef struct mail_op {
    app *a;
    char limit_key[96];         /* the address's email budget */
    int64_t taken_ms;           /* when the email was counted in it */
    uint64_t user_id;           /* ResendVerification */
    char email[256];            /* ForgotPassword */
    char token[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t token_hash[ACCOUNT_HASH_BYTES];
    int already_verified;
} mail_op;

static int resend_write(store_txn *t, void *arg, store_error *err)
{
    mail_op *op = arg;
    lagoon_v1_User u;
    int st = store_get(t, &lagoon_table_users, op->user_id, &u, err);
    if (st != LAGOON_OK)
        return st;
    op->already_verified = u.verified;
    if (u.verified)
        return LAGOON_OK;
    st = drop_tokens(t, u.id, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, err);
    if (st == LAGOON_OK)
        st = issue_token(t, op->a, &u, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, op->token, op->token_hash, err);
    return st;
}

static int already_verified(rpc_call *call)
{
    return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, "the email address is already verified");
}

static int resend_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    mail_op *op = arg;
    /* The email was counted before it was queued; none went out after all: it is given back. */
    if (status != LAGOON_OK || op->already_verified)
        limiter_refund(op->a->resets, op->limit_key, op->taken_ms);
    if (status != LAGOON_OK)
        status = app_store_error(call, status, err);
    else if (op->already_verified)
        status = already_verified(call);
    free(op);
    return status;
}

/* The key of the caller's address in the email budget (app.resets). */
static void mail_key(rpc_call *call, char *key, size_t cap)
{
    char addr[APP_PEER_KEY_MAX];
    app_peer_key(call, addr);
    snprintf(key, cap, "mail:%s", addr);
}

int handle_Auth_ResendVerification(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    app *a = app_of(call);
    /* The request's own precondition first: a request that cannot send mail is answered as
     * such and costs none of the budget. (The write checks again: the flag may change.) */
    int st;
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    store_error err;
    st = read_user(a, rpc_call_caller(call)->user_id, u, &err);
    int verified = st == LAGOON_OK && u->verified;
    free(u);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    if (verified)
        return already_verified(call);
    /* The email is counted now, before it is queued (requests in flight at once see each
     * other's), and given back if none goes out. */
    char key[96];
    mail_key(call, key, sizeof(key));
    int64_t now = app_now(a);
    uint32_t wait = limiter_take(a->resets, key, now);
    if (wait)
        return too_many(call, wait, "email requests from this address");
    mail_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        limiter_refund(a->resets, key, now);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    op->a = a;
    COPY_STR(op->limit_key, key);
    op->taken_ms = now;
    op->user_id = rpc_call_caller(call)->user_id;
    account_token_new(op->token, op->token_hash);
    st = app_write(call, resend_write, op, resend_done);
    if (st != RPC_PENDING) {
        limiter_refund(a->resets, key, now);
        free(op);
    }
    return st;
}

static int forgot_write(store_txn *t, void *arg, store_error *err)
{
    mail_op *op = arg;
    store_key k;
    store_key_reset(&k);
    store_key_str_fold(&k, op->email);
    lagoon_v1_User u;
    int st = store_get_by(t, &lagoon_table_users, lagoon_index_users_by_email, &k, NULL, &u, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u.active))
        return LAGOON_OK; /* nothing to send, and nothing to tell */
    if (st == LAGOON_OK)
        st = drop_tokens(t, u.id, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD, err);
    if (st == LAGOON_OK)
        st = issue_token(t, op->a, &u, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD, op->token, op->token_hash, err);
    return st;
}

static void forgot_done(void *arg, int status, const store_error *err)
{
    (void)status;
    (void)err;
    free(arg);
}

int handle_Auth_ForgotPassword(rpc_call *call, const lagoon_v1_ForgotPasswordRequest *req,
                               lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    app *a = app_of(call);
    if (!account_check(call, "email", account_email_problem(req->email)))
        return LAGOON_INVALID_ARGUMENT;
    /* Every valid request counts, whether or not an email goes out: counting only those that
     * send would tell, by when the limit comes, which addresses have accounts. */
    char key[96];
    mail_key(call, key, sizeof(key));
    int64_t now = app_now(a);
    uint32_t wait = limiter_take(a->resets, key, now);
    if (wait)
        return too_many(call, wait, "email requests from this address");
    mail_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        limiter_refund(a->resets, key, now); /* unrelated to the address: tells nothing */
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    op->a = a;
    COPY_STR(op->email, req->email);
    account_token_new(op->token, op->token_hash);
    /* The answer is the same, and as fast, whether or not the address exists: it is given
     * now, without waiting for the write (which only finds out). */
    store_error err;
    if (store_submit(a->db, forgot_write, op, forgot_done, op, &err) != LAGOON_OK)
        free(op);
    return LAGOON_OK;
}
