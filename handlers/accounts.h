/* accounts: the account tables and what the Auth and Users services share — tokens, password
 * hashing, validation rules, profile conversion. */
#ifndef LAGOON_ACCOUNTS_H
#define LAGOON_ACCOUNTS_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "lagoon_idl.h"

/* Tables (declared once, in accounts.c; registered in schema.c). */
extern const store_table accounts_users, accounts_sessions, accounts_used_refresh, accounts_tokens,
    accounts_outbox;
extern const store_index users_by_email, users_by_username, users_by_role, sessions_by_user,
    sessions_by_access, sessions_by_refresh, tokens_by_user, tokens_by_hash, used_by_hash, outbox_by_due;

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

/* ---- validation: each adds a field violation to the call and returns 0 if the value is bad --- */

int account_check_email(rpc_call *c, const char *field, const char *email);
int account_check_username(rpc_call *c, const char *field, const char *username);
/* Length, the common-password list, and not the email or username (case-insensitive). */
int account_check_password(rpc_call *c, const char *field, const char *password, const char *email,
                           const char *username);
/* Valid UTF-8 without control characters, at most max_chars code points; newlines allowed
 * when multiline. */
int account_check_text(rpc_call *c, const char *field, const char *s, size_t max_chars, int multiline);
int account_check_url(rpc_call *c, const char *field, const char *url);
int account_check_experience(rpc_call *c, const char *field, const char *level);

/* ---- rows ------------------------------------------------------------------------------------ */

void account_profile(const lagoon_v1_User *u, lagoon_v1_UserProfile *out);
void account_public(const lagoon_v1_User *u, lagoon_v1_PublicUser *out);

/* Queues an email in the outbox, in the caller's write transaction. */
int account_queue_email(store_txn *t, const app *a, const char *to, const char *subject, const char *body,
                        store_error *err);

/* Deletes every session of user_id but keep_session (0: all). Write transactions. */
int account_revoke_sessions(store_txn *t, uint64_t user_id, uint64_t keep_session, store_error *err);

#endif
