/* account_tokens: the token decoder against libsodium's base64url decoder (sodium_base642bin,
 * URL-safe, no padding): for texts of the base64url alphabet it accepts what libsodium accepts
 * and hashes the same bytes; any other byte is refused (libsodium 1.0.18 takes some bytes
 * >= 0x80 for digits, which would give a token more than one spelling). Random tokens and
 * every single-character change of them: all 255 byte values at every position, the unused
 * low bits of the last character included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "account_tokens.h"

/* The decision of libsodium, and the hash of what it decodes. */
static int reference(const char *text, uint8_t hash[ACCOUNT_HASH_BYTES])
{
    uint8_t raw[ACCOUNT_TOKEN_BYTES];
    size_t n = 0;
    if (strlen(text) != ACCOUNT_TOKEN_CHARS ||
        sodium_base642bin(raw, sizeof(raw), text, ACCOUNT_TOKEN_CHARS, NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        n != sizeof(raw))
        return -1;
    crypto_generichash(hash, ACCOUNT_HASH_BYTES, raw, sizeof(raw), NULL, 0);
    return 0;
}

static int in_alphabet(const char *text)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    return strspn(text, alphabet) == strlen(text);
}

static void same_verdict(const char *text)
{
    uint8_t want[ACCOUNT_HASH_BYTES], got[ACCOUNT_HASH_BYTES];
    int w = in_alphabet(text) ? reference(text, want) : -1, g = account_token_hash(text, got);
    if (g != w)
        fail_msg("\"%s\": libsodium %d, account_token_hash %d", text, w, g);
    if (w == 0)
        assert_memory_equal(got, want, sizeof(want));
}

static void test_matches_libsodium(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    int accepted_variants = 0;
    for (int round = 0; round < 20; round++) {
        char text[ACCOUNT_TOKEN_CHARS + 1];
        uint8_t hash[ACCOUNT_HASH_BYTES];
        account_token_new(text, hash);
        uint8_t again[ACCOUNT_HASH_BYTES];
        assert_int_equal(account_token_hash(text, again), 0);
        assert_memory_equal(again, hash, sizeof(hash));
        for (int pos = 0; pos < ACCOUNT_TOKEN_CHARS; pos++) {
            char orig = text[pos];
            for (int c = 1; c < 256; c++) {
                text[pos] = (char)c;
                same_verdict(text);
                if (pos == ACCOUNT_TOKEN_CHARS - 1 && account_token_hash(text, again) == 0)
                    accepted_variants++;
            }
            text[pos] = orig;
        }
    }
    /* The last character carries 4 bits and 2 unused ones: 16 of its 64 letters spell a token. */
    assert_int_equal(accepted_variants, 20 * 16);
    same_verdict("");
    same_verdict("short");
    char longer[ACCOUNT_TOKEN_CHARS + 2];
    memset(longer, 'A', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    same_verdict(longer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_matches_libsodium)};
    return cmocka_run_group_tests_name("tokens", tests, NULL, NULL);
}
