/* account_tokens: see account_tokens.h. */
#include "account_tokens.h"

#include <string.h>

#include <sodium.h>

void account_token_new(char text[ACCOUNT_TOKEN_CHARS + 1], uint8_t hash[ACCOUNT_HASH_BYTES])
{
    uint8_t raw[ACCOUNT_TOKEN_BYTES];
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(text, ACCOUNT_TOKEN_CHARS + 1, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    crypto_generichash(hash, ACCOUNT_HASH_BYTES, raw, sizeof(raw), NULL, 0);
    sodium_memzero(raw, sizeof(raw));
}

int account_token_hash(const char *text, uint8_t hash[ACCOUNT_HASH_BYTES])
{
    uint8_t raw[ACCOUNT_TOKEN_BYTES];
    size_t n = 0;
    if (strlen(text) != ACCOUNT_TOKEN_CHARS ||
        sodium_base642bin(raw, sizeof(raw), text, ACCOUNT_TOKEN_CHARS, NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        n != sizeof(raw))
        return -1;
    crypto_generichash(hash, ACCOUNT_HASH_BYTES, raw, sizeof(raw), NULL, 0);
    sodium_memzero(raw, sizeof(raw));
    return 0;
}
