/* accounts: the account tables and what the Auth and Users services share — tokens, password
 * hashing, validation rules, profile conversion. */
#ifndef LAGOON_ACCOUNTS_H
#define LAGOON_ACCOUNTS_H

#include <stddef.h>
#include <stdint.h>

#include "account_tokens.h" /* tokens: account_token_new, account_token_hash */
#include "app.h"
#include "lagoon_idl.h"
/* The account tables (users, sessions, used_refresh, one_time_tokens, outbox) are declared in
 * idl/lagoon/v1/accounts.proto: lagoon_table_users, lagoon_index_users_by_email, ... */
#include "lagoon_tables.h"

/* ---- the accounts module: its rate limiters ----------------------------------------------------- */

/* The sign-in, registration and email budgets of Auth and Users (their policies are
 * app_config's: login_failures, registrations, resets, ...). accounts_module (in
 * handlers/services/modules.c) creates them at start and frees them at stop. */
typedef struct account_limits {
    limiter *login_pair, *login_account, *login_address; /* the three sign-in policies */
    limiter *login_known;                                /* (account, address) pairs that signed in recently */
    limiter *registrations, *resets;                     /* per address */
} account_limits;

extern const app_module accounts_module;

/* The app's account limiters (accounts_module started: always, in a running server). */
static inline account_limits *account_limits_of(const app *a)
{
    return app_state(a, &accounts_module);
}

/* ---- passwords -------------------------------------------------------------------------------- */

#define ACCOUNT_PASSWORD_MIN 10  /* characters (code points) */
#define ACCOUNT_PASSWORD_MAX 256 /* bytes: the request's bound */
#define ACCOUNT_HASH_MAX 129     /* User.password_hash: crypto_pwhash_STRBYTES (128) and a spare NUL */

/* Argon2id with the app's limits. 0, or -1 when out of memory. Worker threads only (slow). */
int account_hash_password(const app *a, const char *password, char out[ACCOUNT_HASH_MAX]);
/* 1 if password matches hash. Worker threads only. */
int account_verify_password(const char *hash, const char *password);
/* 1 if hash was made with other limits than the app's (upgrade it at the next login). */
int account_needs_rehash(const app *a, const char *hash);
/* A hash of a random password, verified against when the login names no user, so that an
 * unknown login takes as long as a wrong password. */
const char *account_dummy_hash(const app *a);

/* ---- failed sign-ins (app_config.login_*_failures) -------------------------------------------- */

/* One password attempt (a Login, or the current password of ChangePassword or DeleteAccount),
 * counted as a failure from when it starts (account_signin_begin) until its outcome is known:
 * attempts in flight at once cannot all pass a check that none of them has counted yet. Then
 * exactly one of account_signin_failed, _ok or _cancel says how it ended (each does nothing
 * for an attempt that is not pending). Thread-safe; the struct is the caller's. */
#define ACCOUNT_SIGNIN_KEY_MAX 272 /* "login:" + a 254-byte login + NUL, rounded up */
typedef struct account_signin {
    /* Set by the caller before begin: what is signed in to, "user:<id>" (account_signin_user)
     * or "login:<login, lower-cased>" for a login that names no account (so that guessing
     * at one is throttled too); and the client's address (app_peer_key). */
    char account[ACCOUNT_SIGNIN_KEY_MAX];
    char address[APP_PEER_KEY_MAX];
    int64_t started_ms; /* when begin counted it */
    int pending;        /* counted by begin, its outcome not given yet */
} account_signin;

void account_signin_user(char out[ACCOUNT_SIGNIN_KEY_MAX], uint64_t user_id);
/* 0 if the attempt may go on, and it is counted (for the (account, address) pair, the
 * account and the address, as if it failed); else the milliseconds to wait, and nothing is
 * counted: the longest of the pair's, the account's and the address's waits, except that a
 * known pair (its last sign-in less than APP_KNOWN_ADDRESS_MS ago) owes only its own (its
 * attempts still count for the account and the address). */
uint32_t account_signin_begin(app *a, account_signin *s, int64_t now);
/* The password was wrong: the attempt stays counted. */
void account_signin_failed(app *a, account_signin *s);
/* The password was right and a session made: clears the pair's failures, takes the attempt
 * back from the account's and the address's counts, and makes the pair known (until
 * APP_KNOWN_ADDRESS_MS after now). */
void account_signin_ok(app *a, account_signin *s, int64_t now);
/* No wrong password was tried (the call ended before its hash ran, a queue was full, or the
 * password was right but nothing came of it: a deactivated account, a current password
 * accepted, a store error): takes the attempt back from all three counts. */
void account_signin_cancel(app *a, account_signin *s);

/* ---- validation: NULL if the value is acceptable, else why not (static text, or per-thread
 * text valid until the next call on the thread). Email and URL syntax are the rules'
 * (wire_email_problem, wire_url_problem in rpc/wire.h). ---------------------------------- */

/* 3-50 of A-Z a-z 0-9 _ . -, starting with a letter or digit (so never an email address). */
const char *account_username_problem(const char *username);
/* Length, the common-password list, and not the email or username (case-insensitive). */
const char *account_password_problem(const char *password, const char *email, const char *username);
/* Valid UTF-8 without control characters, at most max_chars code points; newline and tab
 * allowed when multiline. */
const char *account_text_problem(const char *s, size_t max_chars, int multiline);
/* Adds problem as a violation of field (when not NULL); returns 1 if there was none. */
int account_check(rpc_call *c, const char *field, const char *problem);

/* ---- rows ------------------------------------------------------------------------------------ */

void account_profile(const lagoon_v1_User *u, lagoon_v1_UserProfile *out);
void account_public(const lagoon_v1_User *u, lagoon_v1_PublicUser *out);

/* Queues an email in the outbox, in the caller's write transaction, as of now (the write's
 * in->now: a replayed write queues the same row). */
int account_queue_email(store_txn *t, int64_t now, const char *to, const char *subject, const char *body,
                        store_error *err);

/* Creates an active, verified administrator, validated like Register (INVALID_ARGUMENT naming
 * the field otherwise). Blocking: hashes the password and waits for the durable write, so for
 * tools and tests, not loop threads. */
int account_create_admin(app *a, const char *email, const char *username, const char *password, uint64_t *id,
                         store_error *err);

/* Deletes every session of user_id but keep_session (0: all). Write transactions. */
int account_revoke_sessions(store_txn *t, uint64_t user_id, uint64_t keep_session, store_error *err);
/* Before a new session of user_id: deletes the user's sessions whose refresh token expired
 * before now, then the oldest until fewer than max remain (max <= STORE_PAGE_SIZE_MAX). */
int account_trim_sessions(store_txn *t, uint64_t user_id, int64_t now, uint32_t max, store_error *err);
/* Copies u's role and verified flag into each of its sessions (what app_authenticate reads);
 * call it in the transaction that changed either on the User row. */
int account_sync_sessions(store_txn *t, const lagoon_v1_User *u, store_error *err);

#endif
