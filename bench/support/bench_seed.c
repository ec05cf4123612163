/* See bench_seed.h. */
#include "bench_seed.h"

#include <stdio.h>
#include <string.h>

void bench_session_tokens(lagoon_v1_Session *s, char token[ACCOUNT_TOKEN_CHARS + 1])
{
    uint8_t refresh_hash[ACCOUNT_HASH_BYTES];
    char refresh[ACCOUNT_TOKEN_CHARS + 1];
    account_token_new(token, s->access_hash);
    account_token_new(refresh, refresh_hash);
    memcpy(s->refresh_hash, refresh_hash, sizeof(refresh_hash));
    s->access_expires_at = s->refresh_expires_at = INT64_MAX / 2;
}

int bench_seed_user(store_txn *t, const char *username, const char *email, lagoon_v1_Role role,
                    lagoon_v1_Session *s, uint64_t *id, store_error *err)
{
    lagoon_v1_User u = lagoon_v1_User_init_zero;
    snprintf(u.password_hash, sizeof(u.password_hash), "unused");
    snprintf(u.email, sizeof(u.email), "%s", email);
    snprintf(u.username, sizeof(u.username), "%s", username);
    u.role = role;
    u.active = u.verified = true;
    int st = store_insert(t, &lagoon_table_users, &u, id, err);
    s->user_id = *id;
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_sessions, s, NULL, err) : st;
}
