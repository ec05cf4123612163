/* account_tokens: the tokens of sessions and emailed codes, shared by the RPC layer's token
 * check (app_authenticate, app.c) and the Auth service (accounts.h includes this header).
 *
 * 32 random bytes, sent as 43 base64url characters, stored as BLAKE2b-256: the database never
 * holds a usable token. Needs sodium_init (app_open calls it). */
#ifndef LAGOON_ACCOUNT_TOKENS_H
#define LAGOON_ACCOUNT_TOKENS_H

#include <stdint.h>

#define ACCOUNT_TOKEN_BYTES 32
#define ACCOUNT_TOKEN_CHARS 43
#define ACCOUNT_HASH_BYTES 32

/* A new random token (text, NUL-terminated) and its hash. */
void account_token_new(char text[ACCOUNT_TOKEN_CHARS + 1], uint8_t hash[ACCOUNT_HASH_BYTES]);
/* The hash of a token the client sent; -1 if it is not a well-formed token. */
int account_token_hash(const char *text, uint8_t hash[ACCOUNT_HASH_BYTES]);

#endif
