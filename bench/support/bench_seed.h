/* Rows the in-process benches seed straight through the store before the server starts: a
 * user and a session whose access token the bench's client then sends. */
#ifndef LAGOON_BENCH_SEED_H
#define LAGOON_BENCH_SEED_H

#include <stdint.h>

#include "account_tokens.h"
#include "lagoon_tables.h"
#include "store.h"

/* Fresh access and refresh tokens for s, neither expiring within the run; the access token's
 * text into token (the refresh token's is not kept: no bench refreshes). */
void bench_session_tokens(lagoon_v1_Session *s, char token[ACCOUNT_TOKEN_CHARS + 1]);

/* Inserts an active, verified user (password hash unusable) with role, username and email,
 * its id into *id, and session s as that user's (s->user_id set; its other fields as the
 * caller left them). A store status. */
int bench_seed_user(store_txn *t, const char *username, const char *email, lagoon_v1_Role role,
                    lagoon_v1_Session *s, uint64_t *id, store_error *err);

#endif
