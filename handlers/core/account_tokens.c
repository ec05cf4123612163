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

/* The value of a base64url character, or -1. */
static int b64url(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* text (ACCOUNT_TOKEN_CHARS base64url characters, no padding) into raw; -1 for any other
 * character or for unused low bits that are not zero, so that each token has one spelling
 * (as sodium_base642bin decides, at a tenth of its cost: every authenticated call decodes a
 * token, and the text is the caller's own, so its decoding need not be constant-time). */
static int token_decode(const char *text, uint8_t raw[ACCOUNT_TOKEN_BYTES])
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < ACCOUNT_TOKEN_CHARS; i++) {
        int v = b64url((unsigned char)text[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            raw[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n == ACCOUNT_TOKEN_BYTES && (acc & ((1u << bits) - 1)) == 0 ? 0 : -1;
}

int account_token_hash(const char *text, uint8_t hash[ACCOUNT_HASH_BYTES])
{
    uint8_t raw[ACCOUNT_TOKEN_BYTES];
    if (strlen(text) != ACCOUNT_TOKEN_CHARS || token_decode(text, raw) != 0)
        return -1;
    crypto_generichash(hash, ACCOUNT_HASH_BYTES, raw, sizeof(raw), NULL, 0);
    sodium_memzero(raw, sizeof(raw));
    return 0;
}
