/* Auth service: registration, sign-in, sessions, email verification, password reset.
 *
 * Shape of a call: the handler validates on the loop thread (and reads what it needs in a
 * short read transaction); password hashing goes to the hash lane (rpc_call_defer); the change
 * is one write function (app_write_call, app.h) that fills the response in the transaction or
 * refuses with store_fail. What a call carries across those steps lives in the call's memory
 * (rpc_call_alloc), wiped when the call is freed: it holds tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "accounts.h"
#include "lagoon_handlers.h"

/* Refusals that more than one step gives (the hash job, or the write after the account
 * changed). */
#define WRONG_PASSWORD "wrong login or password"
#define DEACTIVATED "this account is deactivated"
#define TOKEN_INVALID "is invalid, expired or already used"

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

/* A single-use token for user, made at now, in the same transaction, and the email carrying
 * it. */
static int issue_token(store_txn *t, const app *a, const lagoon_v1_User *u, lagoon_v1_OneTimeToken_Kind kind,
                       const char *text, const uint8_t *hash, int64_t now, store_error *err)
{
    lagoon_v1_OneTimeToken tok = lagoon_v1_OneTimeToken_init_zero;
    tok.user_id = u->id;
    tok.kind = kind;
    memcpy(tok.token_hash, hash, ACCOUNT_HASH_BYTES);
    tok.created_at = now;
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
    st = account_queue_email(t, now, u->email,
                             kind == lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL ? "Verify your email address"
                                                                             : "Reset your password",
                             body, err);
    sodium_memzero(body, sizeof(body)); /* it holds the token */
    return st;
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

/* What Register adds to its request. The password itself is read from the request (which the
 * RPC layer wipes: it is a secret field). */
typedef struct register_args {
    lagoon_v1_Role role;                  /* the request's, defaulted */
    int64_t created_at;                   /* when the request was accepted */
    char password_hash[ACCOUNT_HASH_MAX]; /* by register_hash */
    char token[ACCOUNT_TOKEN_CHARS + 1];  /* the email verification code */
    uint8_t token_hash[ACCOUNT_HASH_BYTES];
} register_args;

static void register_wipe(void *p) { sodium_memzero(p, sizeof(register_args)); }

static int register_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_RegisterRequest *req = in->req;
    const register_args *r = in->args;
    lagoon_v1_User u = lagoon_v1_User_init_zero;
    snprintf(u.email, sizeof(u.email), "%s", req->email);
    snprintf(u.username, sizeof(u.username), "%s", req->username);
    snprintf(u.full_name, sizeof(u.full_name), "%s", req->full_name);
    snprintf(u.password_hash, sizeof(u.password_hash), "%s", r->password_hash);
    u.role = r->role;
    u.created_at = u.updated_at = r->created_at;
    u.active = true;
    int st = store_insert(t, &lagoon_table_users, &u, NULL, err);
    if (st == LAGOON_OK)
        st = issue_token(t, in->a, &u, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, r->token, r->token_hash, in->now,
                         err);
    if (st == LAGOON_OK)
        account_profile(&u, resp);
    return st;
}

static int register_hash(rpc_call *call, void *arg)
{
    register_args *r = arg;
    const lagoon_v1_RegisterRequest *req = rpc_call_request(call);
    app *a = app_of(call);
    app_hook_point(a, APP_HOOK_HASH);
    if (account_hash_password(a, req->password, r->password_hash) != 0)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    return app_write_call(call, register_write, r);
}

int handle_Auth_Register(rpc_call *call, const lagoon_v1_RegisterRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)resp; /* register_write fills it */
    app *a = app_of(call);
    account_check(call, "email", wire_email_problem(req->email));
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
    uint32_t wait = limiter_take(account_limits_of(a)->registrations, key, now);
    if (wait)
        return too_many(call, wait, "registrations from this address");
    /* Report taken names up front, both at once; the unique indexes decide in the end. */
    lagoon_v1_User other;
    store_error err;
    if (find_user(a, req->email, &other, &err) == LAGOON_OK)
        rpc_call_violation(call, "email", "is already registered");
    if (find_user(a, req->username, &other, &err) == LAGOON_OK)
        rpc_call_violation(call, "username", "is taken");
    if (rpc_call_violations(call))
        return rpc_call_error(call, LAGOON_ALREADY_EXISTS, "email or username already in use");

    register_args *r = rpc_call_alloc(call, sizeof(*r), register_wipe);
    if (r == NULL)
        return app_out_of_memory(call);
    r->role = role;
    r->created_at = now;
    account_token_new(r->token, r->token_hash);
    return rpc_call_defer(call, RPC_LANE_HASH, register_hash, NULL, r);
}

/* ---- sessions' tokens: Login, Refresh ---------------------------------------------------------- */

/* A session's new tokens and their hashes (the only form the store keeps). */
typedef struct session_tokens {
    char access[ACCOUNT_TOKEN_CHARS + 1], refresh[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t access_hash[ACCOUNT_HASH_BYTES], refresh_hash[ACCOUNT_HASH_BYTES];
} session_tokens;

static void tokens_new(session_tokens *k)
{
    account_token_new(k->access, k->access_hash);
    account_token_new(k->refresh, k->refresh_hash);
}

/* Stores k's hashes and their expiries from now in s. */
static void tokens_set(const session_tokens *k, const app *a, int64_t now, lagoon_v1_Session *s)
{
    memcpy(s->access_hash, k->access_hash, ACCOUNT_HASH_BYTES);
    memcpy(s->refresh_hash, k->refresh_hash, ACCOUNT_HASH_BYTES);
    s->access_expires_at = now + (int64_t)a->cfg.access_ttl_s * 1000;
    s->refresh_expires_at = now + (int64_t)a->cfg.refresh_ttl_s * 1000;
}

/* The answer of a sign-in or a refresh: the tokens of session s, and its user. */
static void tokens_answer(const session_tokens *k, const lagoon_v1_Session *s, const lagoon_v1_User *u,
                          lagoon_v1_TokenPair *resp)
{
    snprintf(resp->access_token, sizeof(resp->access_token), "%s", k->access);
    snprintf(resp->refresh_token, sizeof(resp->refresh_token), "%s", k->refresh);
    resp->access_expires_at = s->access_expires_at;
    resp->refresh_expires_at = s->refresh_expires_at;
    resp->has_user = true;
    account_profile(u, &resp->user);
}

/* ---- Login -------------------------------------------------------------------------------- */

typedef struct login_args {
    session_tokens tokens;            /* made once the password is verified */
    app *a;                           /* for login_drop, which has no call */
    account_signin *signin;           /* the attempt as the throttle counts it: login_after settles
                                       * it, so it is apart from these read-only arguments */
    int found, active;                /* what the handler read of the account */
    uint64_t user_id;
    char hash[ACCOUNT_HASH_MAX];      /* the hash the password is verified against */
    char new_hash[ACCOUNT_HASH_MAX];  /* "" unless the hash is upgraded */
    char peer[64];                    /* the client's address, for the session row */
} login_args;

static void login_wipe(void *p) { sodium_memzero(p, sizeof(login_args)); }

/* The call ended before its hash: no password was tried. */
static void login_drop(void *arg)
{
    login_args *l = arg;
    account_signin_cancel(l->a, l->signin);
}

/* A new session for l->user_id. The password was verified outside this transaction, so the
 * account may have changed since: the session is created only if the user still exists, is
 * active and still has the hash that was verified (otherwise a sign-in racing a deactivation,
 * a password reset or a deletion would outlive it); else the call is refused and nothing is
 * written. */
static int login_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const login_args *l = in->args;
    lagoon_v1_User u;
    int st = store_get(t, &lagoon_table_users, l->user_id, &u, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_UNAUTHENTICATED, NULL, WRONG_PASSWORD);
    if (st != LAGOON_OK)
        return st;
    if (strcmp(u.password_hash, l->hash) != 0) {
        /* Another sign-in may have upgraded the outdated hash this one verified (the same
         * password, a new string): that is not a wrong password, but it cannot be told apart
         * from a change here. The client is asked to try again, and nothing is counted. */
        if (l->new_hash[0])
            return store_fail(err, LAGOON_ABORTED, NULL, "the account changed during sign-in: try again");
        return store_fail(err, LAGOON_UNAUTHENTICATED, NULL, WRONG_PASSWORD);
    }
    if (!u.active)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, DEACTIVATED);
    u.last_login = in->now;
    if (l->new_hash[0])
        snprintf(u.password_hash, sizeof(u.password_hash), "%s", l->new_hash);
    st = store_update(t, &lagoon_table_users, &u, err);
    if (st == LAGOON_OK)
        st = account_trim_sessions(t, l->user_id, in->now, in->a->cfg.max_sessions, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_Session s = lagoon_v1_Session_init_zero;
    s.user_id = l->user_id;
    tokens_set(&l->tokens, in->a, in->now, &s);
    s.created_at = in->now;
    snprintf(s.peer, sizeof(s.peer), "%s", l->peer);
    s.role = u.role;
    s.verified = u.verified;
    st = store_insert(t, &lagoon_table_sessions, &s, NULL, err);
    if (st == LAGOON_OK)
        tokens_answer(&l->tokens, &s, &u, resp);
    return st;
}

/* How the attempt counts, once its write is durable. */
static int login_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)resp;
    const login_args *l = in->args;
    app *a = app_of(call);
    if (status == LAGOON_OK)
        account_signin_ok(a, l->signin, app_now(a));
    else if (status == LAGOON_UNAUTHENTICATED)
        account_signin_failed(a, l->signin); /* replaced (or deleted) after the check: wrong now */
    else
        account_signin_cancel(a, l->signin); /* the password was right */
    return status;
}

static int login_verify(rpc_call *call, void *arg)
{
    login_args *l = arg;
    const lagoon_v1_LoginRequest *req = rpc_call_request(call);
    app *a = l->a;
    app_hook_point(a, APP_HOOK_HASH);
    /* An unknown login is checked against a dummy hash: it costs the same as a wrong password. */
    int ok = account_verify_password(l->found ? l->hash : account_dummy_hash(a), req->password) && l->found;
    if (ok && account_needs_rehash(a, l->hash) && account_hash_password(a, req->password, l->new_hash) != 0)
        l->new_hash[0] = '\0';
    if (!ok) {
        account_signin_failed(a, l->signin);
        return rpc_call_error(call, LAGOON_UNAUTHENTICATED, WRONG_PASSWORD);
    }
    if (!l->active) {
        account_signin_cancel(a, l->signin);
        return rpc_call_error(call, LAGOON_PERMISSION_DENIED, DEACTIVATED);
    }
    app_hook_point(a, APP_HOOK_LOGIN_VERIFIED);
    tokens_new(&l->tokens);
    int st = app_write_call_then(call, login_write, l, login_after);
    if (st != RPC_PENDING)
        account_signin_cancel(a, l->signin);
    return st;
}

int handle_Auth_Login(rpc_call *call, const lagoon_v1_LoginRequest *req, lagoon_v1_TokenPair *resp)
{
    (void)resp; /* login_write fills it */
    app *a = app_of(call); /* login and password present: rules in auth.proto */
    login_args *l = rpc_call_alloc(call, sizeof(*l), login_wipe);
    account_signin *signin = rpc_call_alloc(call, sizeof(*signin), NULL);
    if (l == NULL || signin == NULL)
        return app_out_of_memory(call);
    l->a = a;
    l->signin = signin;
    lagoon_v1_User u;
    store_error err;
    if (find_user(a, req->login, &u, &err) == LAGOON_OK) {
        l->found = 1;
        l->active = u.active;
        l->user_id = u.id;
        snprintf(l->hash, sizeof(l->hash), "%s", u.password_hash);
        account_signin_user(signin->account, u.id);
    } else {
        /* Unknown logins are throttled by name too, folded like the indexes fold them. */
        snprintf(signin->account, sizeof(signin->account), "login:%s", req->login);
        for (char *p = signin->account; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
    }
    app_peer_address(call, l->peer, sizeof(l->peer));
    app_peer_key(call, signin->address);
    /* Counted now, before the hash: the attempts pipelined behind this one see it. */
    uint32_t wait = account_signin_begin(a, signin, app_now(a));
    if (wait)
        return too_many(call, wait, "failed sign-ins");
    int st = rpc_call_defer(call, RPC_LANE_HASH, login_verify, login_drop, l);
    if (st != RPC_PENDING)
        account_signin_cancel(a, signin);
    return st;
}

/* ---- Refresh ------------------------------------------------------------------------------ */

typedef struct refresh_args {
    session_tokens tokens;                  /* the session's next pair */
    uint8_t presented[ACCOUNT_HASH_BYTES];  /* the hash of the refresh token sent */
} refresh_args;

static void refresh_wipe(void *p) { sodium_memzero(p, sizeof(refresh_args)); }

static int refresh_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const refresh_args *r = in->args;
    store_key k;
    store_key_reset(&k);
    store_key_raw(&k, r->presented, ACCOUNT_HASH_BYTES);
    lagoon_v1_Session s;
    int st = store_get_by(t, &lagoon_table_sessions, lagoon_index_sessions_by_refresh, &k, NULL, &s, err);
    if (st == LAGOON_NOT_FOUND) {
        /* Not current: if it was once, someone replays a stolen token. End that session. */
        lagoon_v1_UsedRefresh used;
        st = store_get_by(t, &lagoon_table_used_refresh, lagoon_index_used_refresh_by_hash, &k, NULL, &used, err);
        if (st == LAGOON_NOT_FOUND)
            return store_fail(err, LAGOON_UNAUTHENTICATED, NULL, "unknown refresh token");
        if (st == LAGOON_OK)
            st = store_delete(t, &lagoon_table_sessions, used.session_id, err);
        if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
            return st;
        return app_refuse_kept(in, LAGOON_UNAUTHENTICATED, NULL,
                               "refresh token already used: the session is revoked, sign in again");
    }
    if (st != LAGOON_OK)
        return st;
    if (s.refresh_expires_at <= in->now) {
        st = store_delete(t, &lagoon_table_sessions, s.id, err);
        return st != LAGOON_OK ? st
                               : app_refuse_kept(in, LAGOON_UNAUTHENTICATED, NULL, "refresh token expired: sign in again");
    }
    lagoon_v1_User u;
    st = store_get(t, &lagoon_table_users, s.user_id, &u, err);
    if (st != LAGOON_OK)
        return st;
    if (!u.active) {
        /* A deactivation deletes the sessions in its own transaction; one found here anyway
         * (stored before that rule) ends now, like every other session of the account. */
        st = account_revoke_sessions(t, u.id, 0, err);
        return st != LAGOON_OK ? st : app_refuse_kept(in, LAGOON_PERMISSION_DENIED, NULL, DEACTIVATED);
    }
    lagoon_v1_UsedRefresh used = lagoon_v1_UsedRefresh_init_zero;
    used.session_id = s.id;
    memcpy(used.refresh_hash, r->presented, ACCOUNT_HASH_BYTES);
    used.expires_at = s.refresh_expires_at;
    st = store_insert(t, &lagoon_table_used_refresh, &used, NULL, err);
    if (st != LAGOON_OK)
        return st;
    tokens_set(&r->tokens, in->a, in->now, &s);
    s.role = u.role;
    s.verified = u.verified;
    st = store_update(t, &lagoon_table_sessions, &s, err);
    if (st == LAGOON_OK)
        tokens_answer(&r->tokens, &s, &u, resp);
    return st;
}

int handle_Auth_Refresh(rpc_call *call, const lagoon_v1_RefreshRequest *req, lagoon_v1_TokenPair *resp)
{
    (void)resp; /* refresh_write fills it */
    uint8_t presented[ACCOUNT_HASH_BYTES];
    if (account_token_hash(req->refresh_token, presented) != 0)
        return rpc_call_error(call, LAGOON_UNAUTHENTICATED, "malformed refresh token");
    refresh_args *r = rpc_call_alloc(call, sizeof(*r), refresh_wipe);
    if (r == NULL)
        return app_out_of_memory(call);
    memcpy(r->presented, presented, sizeof(presented));
    tokens_new(&r->tokens);
    return app_write_call(call, refresh_write, r);
}

/* ---- Logout, LogoutAll, Me ------------------------------------------------------------------ */

static int logout_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    int st = store_delete(t, &lagoon_table_sessions, in->who.session_id, err);
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* already ended: signed out all the same */
}

static int logout_all_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    return account_revoke_sessions(t, in->who.user_id, 0, err);
}

int handle_Auth_Logout(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, logout_write, NULL);
}

int handle_Auth_LogoutAll(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, logout_all_write, NULL);
}

int handle_Auth_Me(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_UserProfile *resp)
{
    (void)req;
    lagoon_v1_User u;
    store_error err;
    int st = read_user(app_of(call), rpc_call_caller(call)->user_id, &u, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    account_profile(&u, resp);
    return LAGOON_OK;
}

/* ---- tokens sent by email: VerifyEmail, ResetPassword ---------------------------------------- */

typedef struct token_args {
    uint8_t hash[ACCOUNT_HASH_BYTES];  /* of the token sent */
    char new_hash[ACCOUNT_HASH_MAX];   /* ResetPassword: by reset_hash */
} token_args;

static void token_wipe(void *p) { sodium_memzero(p, sizeof(token_args)); }

/* The user of the emailed token of kind with this hash, into *u, the token consumed (single
 * use). A token not found (or of another kind) refuses the call; an expired one is consumed
 * all the same and refuses it with that change kept, leaving u->id 0. */
static int token_user(store_txn *t, const app_write_in *in, lagoon_v1_OneTimeToken_Kind kind, lagoon_v1_User *u,
                      store_error *err)
{
    const token_args *k = in->args;
    store_key key;
    store_key_reset(&key);
    store_key_raw(&key, k->hash, ACCOUNT_HASH_BYTES);
    lagoon_v1_OneTimeToken tok;
    u->id = 0;
    int st = store_get_by(t, &lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_hash, &key, NULL, &tok,
                          err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && tok.kind != kind))
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "token", TOKEN_INVALID);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_one_time_tokens, tok.id, err);
    if (st != LAGOON_OK)
        return st;
    if (tok.expires_at <= in->now)
        return app_refuse_kept(in, LAGOON_INVALID_ARGUMENT, "token", TOKEN_INVALID);
    return store_get(t, &lagoon_table_users, tok.user_id, u, err);
}

static int verify_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    lagoon_v1_User u;
    int st = token_user(t, in, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, &u, err);
    if (st != LAGOON_OK || u.id == 0)
        return st;
    u.verified = true;
    u.updated_at = in->now;
    st = store_update(t, &lagoon_table_users, &u, err);
    return st == LAGOON_OK ? account_sync_sessions(t, &u, err) : st;
}

/* The call's token_args with the hash of the token sent, or NULL with the call's error set. */
static token_args *token_args_new(rpc_call *call, const char *text)
{
    uint8_t hash[ACCOUNT_HASH_BYTES];
    if (account_token_hash(text, hash) != 0) {
        rpc_call_violation(call, "token", "is malformed");
        return NULL;
    }
    token_args *k = rpc_call_alloc(call, sizeof(*k), token_wipe);
    if (k == NULL) {
        app_out_of_memory(call);
        return NULL;
    }
    memcpy(k->hash, hash, sizeof(hash));
    return k;
}

int handle_Auth_VerifyEmail(rpc_call *call, const lagoon_v1_VerifyEmailRequest *req, lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    token_args *k = token_args_new(call, req->token);
    if (k == NULL)
        return rpc_call_violations(call) ? LAGOON_INVALID_ARGUMENT : LAGOON_RESOURCE_EXHAUSTED;
    return app_write_call(call, verify_write, k);
}

static int reset_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const token_args *k = in->args;
    lagoon_v1_User u;
    int st = token_user(t, in, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD, &u, err);
    if (st != LAGOON_OK || u.id == 0)
        return st;
    snprintf(u.password_hash, sizeof(u.password_hash), "%s", k->new_hash);
    u.updated_at = in->now;
    st = store_update(t, &lagoon_table_users, &u, err);
    if (st == LAGOON_OK) /* a reset signs out every device */
        st = account_revoke_sessions(t, u.id, 0, err);
    return st;
}

static int reset_hash(rpc_call *call, void *arg)
{
    token_args *k = arg;
    const lagoon_v1_ResetPasswordRequest *req = rpc_call_request(call);
    if (account_hash_password(app_of(call), req->new_password, k->new_hash) != 0)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    return app_write_call(call, reset_write, k);
}

/* Whether the token with this hash is a live one of kind, and its user into *u. */
static int token_known(app *a, const uint8_t hash[ACCOUNT_HASH_BYTES], lagoon_v1_OneTimeToken_Kind kind,
                       lagoon_v1_User *u)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(a->db, &t, &err) != LAGOON_OK)
        return 0;
    store_key k;
    store_key_reset(&k);
    store_key_raw(&k, hash, ACCOUNT_HASH_BYTES);
    lagoon_v1_OneTimeToken tok;
    int known = store_get_by(t, &lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_hash, &k, NULL, &tok,
                             &err) == LAGOON_OK &&
                tok.kind == kind && tok.expires_at > app_now(a) &&
                store_get(t, &lagoon_table_users, tok.user_id, u, &err) == LAGOON_OK;
    store_read_end(t);
    return known;
}

int handle_Auth_ResetPassword(rpc_call *call, const lagoon_v1_ResetPasswordRequest *req,
                              lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    token_args *k = token_args_new(call, req->token);
    if (k == NULL)
        return rpc_call_violations(call) ? LAGOON_INVALID_ARGUMENT : LAGOON_RESOURCE_EXHAUSTED;
    /* Check the new password against the account's names before paying for a hash. */
    lagoon_v1_User u;
    if (!token_known(app_of(call), k->hash, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD, &u))
        return rpc_call_violation(call, "token", TOKEN_INVALID);
    if (!account_check(call, "new_password", account_password_problem(req->new_password, u.email, u.username)))
        return LAGOON_INVALID_ARGUMENT;
    return rpc_call_defer(call, RPC_LANE_HASH, reset_hash, NULL, k);
}

/* ---- ResendVerification, ForgotPassword: new tokens by email -------------------------------- */

/* The key of the caller's address in the email budget (app.resets). */
static void mail_key(rpc_call *call, char *key, size_t cap)
{
    char addr[APP_PEER_KEY_MAX];
    app_peer_key(call, addr);
    snprintf(key, cap, "mail:%s", addr);
}

#define ALREADY_VERIFIED "the email address is already verified"

typedef struct resend_args {
    char limit_key[96];  /* the address's email budget */
    int64_t taken_ms;    /* when the email was counted in it */
    char token[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t token_hash[ACCOUNT_HASH_BYTES];
} resend_args;

static void resend_wipe(void *p) { sodium_memzero(p, sizeof(resend_args)); }

static int resend_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const resend_args *r = in->args;
    lagoon_v1_User u;
    int st = store_get(t, &lagoon_table_users, in->who.user_id, &u, err);
    if (st != LAGOON_OK)
        return st;
    if (u.verified)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, ALREADY_VERIFIED);
    st = drop_tokens(t, u.id, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, err);
    if (st == LAGOON_OK)
        st = issue_token(t, in->a, &u, lagoon_v1_OneTimeToken_Kind_VERIFY_EMAIL, r->token, r->token_hash, in->now,
                         err);
    return st;
}

/* The email was counted before it was queued; when none went out after all, it is given back. */
static int resend_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)resp;
    const resend_args *r = in->args;
    if (status != LAGOON_OK)
        limiter_refund(account_limits_of(app_of(call))->resets, r->limit_key, r->taken_ms);
    return status;
}

int handle_Auth_ResendVerification(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)req;
    (void)resp;
    app *a = app_of(call);
    /* The request's own precondition first: a request that cannot send mail is answered as
     * such and costs none of the budget. (The write checks again: the flag may change.) */
    lagoon_v1_User u;
    store_error err;
    int st = read_user(a, rpc_call_caller(call)->user_id, &u, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    if (u.verified)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, ALREADY_VERIFIED);
    resend_args *r = rpc_call_alloc(call, sizeof(*r), resend_wipe);
    if (r == NULL)
        return app_out_of_memory(call);
    /* The email is counted now, before it is queued (requests in flight at once see each
     * other's), and given back if none goes out. */
    mail_key(call, r->limit_key, sizeof(r->limit_key));
    r->taken_ms = app_now(a);
    uint32_t wait = limiter_take(account_limits_of(a)->resets, r->limit_key, r->taken_ms);
    if (wait)
        return too_many(call, wait, "email requests from this address");
    account_token_new(r->token, r->token_hash);
    st = app_write_call_then(call, resend_write, r, resend_after);
    if (st != RPC_PENDING)
        limiter_refund(account_limits_of(a)->resets, r->limit_key, r->taken_ms);
    return st;
}

/* ForgotPassword's write outlives its call, which is answered before the write runs: its state
 * is its own (malloc), not the call's, and it is not an app_write_call. */
typedef struct forgot_op {
    const app *a;
    int64_t now;
    char email[256];
    char token[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t token_hash[ACCOUNT_HASH_BYTES];
} forgot_op;

static int forgot_write(store_txn *t, void *arg, store_error *err)
{
    const forgot_op *op = arg;
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
        st = issue_token(t, op->a, &u, lagoon_v1_OneTimeToken_Kind_RESET_PASSWORD, op->token, op->token_hash, op->now,
                         err);
    return st;
}

static void forgot_free(void *arg, int status, const store_error *err)
{
    (void)status;
    (void)err;
    sodium_memzero(arg, sizeof(forgot_op));
    free(arg);
}

int handle_Auth_ForgotPassword(rpc_call *call, const lagoon_v1_ForgotPasswordRequest *req,
                               lagoon_v1_AuthEmpty *resp)
{
    (void)resp;
    app *a = app_of(call); /* the email's syntax: a rule in auth.proto */
    /* Every valid request counts, whether or not an email goes out: counting only those that
     * send would tell, by when the limit comes, which addresses have accounts. */
    char key[96];
    mail_key(call, key, sizeof(key));
    int64_t now = app_now(a);
    uint32_t wait = limiter_take(account_limits_of(a)->resets, key, now);
    if (wait)
        return too_many(call, wait, "email requests from this address");
    forgot_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        limiter_refund(account_limits_of(a)->resets, key, now); /* unrelated to the address: tells nothing */
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    op->a = a;
    op->now = now;
    snprintf(op->email, sizeof(op->email), "%s", req->email);
    account_token_new(op->token, op->token_hash);
    /* The answer is the same, and as fast, whether or not the address exists: it is given
     * now, without waiting for the write (which only finds out). */
    store_error err;
    if (store_submit(a->db, forgot_write, op, forgot_free, op, &err) != LAGOON_OK)
        forgot_free(op, LAGOON_OK, NULL);
    return LAGOON_OK;
}
