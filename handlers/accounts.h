/* accounts: the account tables and what the Auth and Users services share — tokens, password
 * hashing, validation rules, profile conversion. */
#ifndef LAGOON_ACCOUNTS_H
#define LAGOON_ACCOUNTS_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "lagoon_idl.h"
/* The account tables (users, sessions, used_refresh, one_time_tokens, outbox) are declared in
 * idl/lagoon/v1/accounts.proto: lagoon_table_users, lagoon_index_users_by_email, ... */
#include "lagoon_tables.h"

/* ---- tokens: 32 random bytes, sent as 43 base64url characters, stored as BLAKE2b-256 ---------- */

#define ACCOUNT_TOKEN_BYTES 32
#define ACCOUNT_TOKEN_CHARS 43
#define ACCOUNT_HASH_BYTES 32

/* A new random token (text, NUL-terminated) and its hash. */
void account_token_new(char text[ACCOUNT_TOKEN_CHARS + 1], uint8_t hash[ACCOUNT_HASH_BYTES]);
/* The hash of a token the client sent; -1 if it is not a well-formed token. */
int account_token_hash(const char *text, uint8_t hash[ACCOUNT_HASH_BYTES]);

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

/* `account` names what is signed in to: "user:<id>" (account_signin_user), or "login:<login,
 * lower-cased>" for a login that names no account, so that guessing at one is throttled too.
 * `peer` is the client address (app_peer_address). Thread-safe. */
#define ACCOUNT_SIGNIN_KEY_MAX 272 /* "login:" + a 254-byte login + NUL, rounded up */
void account_signin_user(char out[ACCOUNT_SIGNIN_KEY_MAX], uint64_t user_id);
/* 0 if a password of account may be tried from peer now, else the milliseconds to wait: the
 * longest of the (account, address) pair's, the account's and the address's waits, except
 * that a known pair (it signed in within APP_KNOWN_ADDRESS_MS) owes only its own. */
uint32_t account_signin_wait(app *a, const char *account, const char *peer, int64_t now);
/* A wrong password: counts for the pair, the account and the address. */
void account_signin_failed(app *a, const char *account, const char *peer, int64_t now);
/* A sign-in: clears the pair's failures and makes the pair known. */
void account_signin_ok(app *a, const char *account, const char *peer, int64_t now);

/* ---- validation: NULL if the value is acceptable, else why not (static text, or per-thread
 * text valid until the next call on the thread) -------------------------------------------- */

const char *account_email_problem(const char *email);
/* 3-50 of A-Z a-z 0-9 _ . -, starting with a letter or digit (so never an email address). */
const char *account_username_problem(const char *username);
/* Length, the common-password list, and not the email or username (case-insensitive). */
const char *account_password_problem(const char *password, const char *email, const char *username);
/* Valid UTF-8 without control characters, at most max_chars code points; newline and tab
 * allowed when multiline. */
const char *account_text_problem(const char *s, size_t max_chars, int multiline);
const char *account_url_problem(const char *url);
const char *account_experience_problem(const char *level);
/* Adds problem as a violation of field (when not NULL); returns 1 if there was none. */
int account_check(rpc_call *c, const char *field, const char *problem);

/* ---- rows ------------------------------------------------------------------------------------ */

void account_profile(const lagoon_v1_User *u, lagoon_v1_UserProfile *out);
void account_public(const lagoon_v1_User *u, lagoon_v1_PublicUser *out);

/* Queues an email in the outbox, in the caller's write transaction. */
int account_queue_email(store_txn *t, const app *a, const char *to, const char *subject, const char *body,
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
