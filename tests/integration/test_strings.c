/* Strings from the wire, through the real server and store: wire_decode judges every string
 * field's bytes before any handler runs (rpc/wire.h), so a NUL can no longer cut a password or
 * an email after validation, undecodable UTF-8 is never stored and echoed to another user, and
 * bidi overrides do not reach message text. Requests are built by hand (a C client cannot send
 * a string with a NUL in it) and sent over raw sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "testserver.h"

#define REPLY_WAIT_MS 10000
#define PB_MAX 512 /* every hand-built message here is smaller */

static test_app *T;
static lagoon_client *C;
static uint64_t ann, bob;
static char ann_tok[65], bob_tok[65];

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_user(C, "bob", lagoon_v1_Role_STUDENT, bob_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- hand-built protobuf ------------------------------------------------------------------ */

typedef struct pbuf {
    uint8_t b[PB_MAX];
    size_t n;
} pbuf;

static void pb_varint(pbuf *w, uint64_t v)
{
    do {
        assert_true(w->n < sizeof(w->b));
        w->b[w->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void pb_uint(pbuf *w, uint32_t tag, uint64_t v)
{
    pb_varint(w, (uint64_t)tag << 3);
    pb_varint(w, v);
}

/* A length-delimited field: n bytes of s, NULs and all. */
static void pb_ld(pbuf *w, uint32_t tag, const void *s, size_t n)
{
    pb_varint(w, ((uint64_t)tag << 3) | 2);
    pb_varint(w, n);
    assert_true(n <= sizeof(w->b) - w->n);
    memcpy(w->b + w->n, s, n);
    w->n += n;
}

#define PB_LIT(w, tag, lit) pb_ld(w, tag, lit, sizeof(lit) - 1)

/* ---- raw calls ------------------------------------------------------------------------------ */

/* One unary call on its own connection: REQUEST with the metadata bytes and the payload, then
 * its RESPONSE. Returns the status; *out gets the ResponseMeta. */
static int raw_call_meta(const wire_method *m, const pbuf *meta, const pbuf *req, lagoon_v1_ResponseMeta *out)
{
    int fd = raw_connect(T->srv.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, m->id, meta ? meta->b : NULL, meta ? meta->n : 0,
                   req->b, req->n);
    static uint8_t buf[1 << 16];
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, REPLY_WAIT_MS), 1);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    memset(out, 0, sizeof(*out));
    wire_violation v;
    if (f.meta_len)
        assert_int_equal(wire_decode(&lagoon_v1_ResponseMeta_info, f.meta, f.meta_len, out, &v), 0);
    close(fd);
    return (int)f.code;
}

/* The same with RequestMeta carrying token (NULL: no metadata). */
static int raw_call(const wire_method *m, const char *token, const pbuf *req, lagoon_v1_ResponseMeta *out)
{
    pbuf meta = {.n = 0};
    if (token)
        pb_ld(&meta, 1, token, strlen(token));
    return raw_call_meta(m, token ? &meta : NULL, req, out);
}

/* The call was refused as INVALID_ARGUMENT with one violation of field whose description has
 * words. */
static void expect_refused(int status, const lagoon_v1_ResponseMeta *meta, const char *field, const char *words)
{
    if (status != LAGOON_INVALID_ARGUMENT)
        fail_msg("status %s (%s), want INVALID_ARGUMENT naming %s", lagoon_status_name(status), meta->message, field);
    assert_int_equal(meta->violations_count, 1);
    if (strcmp(meta->violations[0].field, field) != 0 || strstr(meta->violations[0].description, words) == NULL)
        fail_msg("violation \"%s\": \"%s\", want \"%s\": \"...%s...\"", meta->violations[0].field,
                 meta->violations[0].description, field, words);
}

static int raw_login(const char *login, const char *password, size_t password_len, lagoon_v1_ResponseMeta *out)
{
    pbuf req = {.n = 0};
    pb_ld(&req, 1, login, strlen(login));
    pb_ld(&req, 2, password, password_len);
    return raw_call(&lagoon_method_Auth_Login, NULL, &req, out);
}

/* The first page of the conversation of the token's user with other (pb_release it). */
static void conversation(const char *token, uint64_t other, lagoon_v1_ListMessagesResponse *resp)
{
    lagoon_set_token(C, token);
    lagoon_v1_ListMessagesRequest req = lagoon_v1_ListMessagesRequest_init_zero;
    req.other_user_id = other;
    memset(resp, 0, sizeof(*resp));
    assert_int_equal(lagoon_Messages_List(C, &req, resp), LAGOON_OK);
}

static pb_size_t conversation_size(const char *token, uint64_t other)
{
    lagoon_v1_ListMessagesResponse resp;
    conversation(token, other, &resp);
    pb_size_t n = resp.messages_count;
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    return n;
}

/* ---- item 10: a NUL cannot cut a string after it was validated ----------------------------- */

static void test_login_password_with_nul_is_refused(void **state)
{
    (void)state;
    test_user(C, "nina", lagoon_v1_Role_STUDENT, (char[65]){0});
    lagoon_v1_ResponseMeta meta;
    /* The real password signs in through this same path (so the refusal below is the NUL's). */
    assert_int_equal(raw_login("nina", TEST_PASSWORD, strlen(TEST_PASSWORD), &meta), LAGOON_OK);
    static const char nul_junk[] = TEST_PASSWORD "\0junk";
    int st = raw_login("nina", nul_junk, sizeof(nul_junk) - 1, &meta);
    expect_refused(st, &meta, "password", "NUL byte at offset 21");
    /* And in the login name. */
    static const char nul_login[] = "nina\0junk";
    pbuf req = {.n = 0};
    pb_ld(&req, 1, nul_login, sizeof(nul_login) - 1);
    PB_LIT(&req, 2, TEST_PASSWORD);
    st = raw_call(&lagoon_method_Auth_Login, NULL, &req, &meta);
    expect_refused(st, &meta, "login", "NUL byte at offset 4");
}

static void test_register_email_with_nul_is_refused(void **state)
{
    (void)state;
    static const char email[] = "nul@example.org\0evil";
    pbuf req = {.n = 0};
    pb_ld(&req, 1, email, sizeof(email) - 1);
    PB_LIT(&req, 2, "nul");
    PB_LIT(&req, 3, TEST_PASSWORD);
    lagoon_v1_ResponseMeta meta;
    int st = raw_call(&lagoon_method_Auth_Register, NULL, &req, &meta);
    expect_refused(st, &meta, "email", "NUL byte at offset 15");
    /* Nothing was registered: the truncated address and the name are still free. */
    assert_int_equal(raw_login("nul@example.org", TEST_PASSWORD, strlen(TEST_PASSWORD), &meta), LAGOON_UNAUTHENTICATED);
    req.n = 0;
    PB_LIT(&req, 1, "nul@example.org");
    PB_LIT(&req, 2, "nul");
    PB_LIT(&req, 3, TEST_PASSWORD);
    assert_int_equal(raw_call(&lagoon_method_Auth_Register, NULL, &req, &meta), LAGOON_OK);
    assert_int_equal(raw_login("nul", TEST_PASSWORD, strlen(TEST_PASSWORD), &meta), LAGOON_OK);
}

/* ---- items 9 and 15: what is stored and echoed to another user ------------------------------- */

/* A Send from ann to bob with text and client_message_id (lengths given: NULs allowed). */
static int send_raw(const char *text, size_t text_len, const char *id, size_t id_len, lagoon_v1_ResponseMeta *out)
{
    pbuf content = {.n = 0};
    pb_ld(&content, 1, text, text_len);
    pbuf req = {.n = 0};
    pb_uint(&req, 1, bob);
    pb_ld(&req, 2, content.b, content.n);
    if (id)
        pb_ld(&req, 5, id, id_len);
    return raw_call(&lagoon_method_Messages_Send, ann_tok, &req, out);
}

static void test_send_with_bad_strings_is_refused(void **state)
{
    (void)state;
    static const struct {
        const char *name, *text, *id;
        size_t text_len, id_len;
        const char *field, *words;
    } cases[] = {
        {"id not UTF-8", "hi", "\xc3\x28", 2, 2, "client_message_id", "not valid UTF-8"},
        {"id with a NUL", "hi", "id\0x", 2, 4, "client_message_id", "NUL byte at offset 2"},
        {"id with a lone continuation byte", "hi", "\x80", 2, 1, "client_message_id", "byte 0x80"},
        {"id with an overlong slash", "hi", "\xc0\xaf", 2, 2, "client_message_id", "overlong"},
        {"id with an escape", "hi", "\x1b[2J", 2, 4, "client_message_id", "U+001B"},
        {"text with U+202E", "invoice\xe2\x80\xae" "fdp.exe", NULL, 17, 0, "text.text", "bidirectional control U+202E"},
        {"text with U+2066", "a\xe2\x81\xa6z", NULL, 5, 0, "text.text", "U+2066"},
        {"text with a surrogate", "\xed\xa0\x80", NULL, 3, 0, "text.text", "surrogate"},
        {"text with a C1 control", "a\xc2\x9b" "31m", NULL, 6, 0, "text.text", "U+009B"},
        {"text with a NUL", "hello\0world", NULL, 11, 0, "text.text", "NUL byte at offset 5"},
    };
    pb_size_t before = conversation_size(bob_tok, ann);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        lagoon_v1_ResponseMeta meta;
        int st = send_raw(cases[i].text, cases[i].text_len, cases[i].id, cases[i].id_len, &meta);
        if (st != LAGOON_INVALID_ARGUMENT)
            fail_msg("%s: %s", cases[i].name, lagoon_status_name(st));
        expect_refused(st, &meta, cases[i].field, cases[i].words);
    }
    /* Nothing reached bob. */
    assert_int_equal(conversation_size(bob_tok, ann), before);
}

/* What the rule allows arrives byte for byte: tab, newline, every UTF-8 length, and the
 * direction marks that are not overrides. (Carriage return passes the wire rule; message text
 * refuses it in its handler.) */
static void test_send_with_fine_strings_round_trips(void **state)
{
    (void)state;
    static const char text[] = "line one\n\tcaf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xbb\n\xe2\x80\x8f\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d";
    static const char id[] = "c-\xc3\xa9-1";
    lagoon_v1_ResponseMeta meta;
    int st = send_raw(text, sizeof(text) - 1, id, sizeof(id) - 1, &meta);
    if (st != LAGOON_OK)
        fail_msg("%s: %s", lagoon_status_name(st), meta.message);
    lagoon_v1_ListMessagesResponse resp;
    conversation(bob_tok, ann, &resp);
    int found = 0;
    for (pb_size_t i = 0; i < resp.messages_count; i++) {
        const lagoon_v1_DirectMessage *m = &resp.messages[i];
        if (strcmp(m->client_message_id, id) == 0) {
            assert_int_equal(m->which_content, lagoon_v1_DirectMessage_text_tag);
            assert_string_equal(m->content.text.text, text);
            found = 1;
        }
    }
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    assert_true(found);
}

/* RequestMeta is judged by the same rule (its idempotency_key is kept with the reply). */
static void test_request_meta_with_bad_key_is_refused(void **state)
{
    (void)state;
    pbuf meta = {.n = 0};
    pb_ld(&meta, 1, ann_tok, strlen(ann_tok));
    PB_LIT(&meta, 3, "key\xff");
    pbuf req = {.n = 0};
    pb_uint(&req, 1, bob);
    lagoon_v1_ResponseMeta out;
    int st = raw_call_meta(&lagoon_method_Users_Get, &meta, &req, &out);
    assert_int_equal(st, LAGOON_INVALID_ARGUMENT);
    if (strstr(out.message, "idempotency_key") == NULL || strstr(out.message, "byte 0xFF at offset 3") == NULL)
        fail_msg("message: %s", out.message);
    /* The same call with a good key is answered. */
    meta.n = 0;
    pb_ld(&meta, 1, ann_tok, strlen(ann_tok));
    PB_LIT(&meta, 3, "key-1");
    assert_int_equal(raw_call_meta(&lagoon_method_Users_Get, &meta, &req, &out), LAGOON_OK);
}

/* ---- issue 11: a key that cannot be read is still a named violation --------------------------- */

static void test_truncated_key_is_a_named_violation(void **state)
{
    (void)state;
    pbuf req = {.n = 0};
    PB_LIT(&req, 1, "ann");
    req.b[req.n++] = 0x80; /* a key cut after its first byte */
    lagoon_v1_ResponseMeta meta;
    int st = raw_call(&lagoon_method_Auth_Login, NULL, &req, &meta);
    expect_refused(st, &meta, "#?", "truncated field key");
    /* Field number 0, and an unknown field with a wire type nanopb refuses. */
    req.n = 0;
    pb_uint(&req, 0, 1);
    st = raw_call(&lagoon_method_Auth_Login, NULL, &req, &meta);
    expect_refused(st, &meta, "#0", "field number 0");
    req.n = 0;
    pb_varint(&req, (9u << 3) | 3); /* field 9, start group */
    st = raw_call(&lagoon_method_Auth_Login, NULL, &req, &meta);
    expect_refused(st, &meta, "#9", "wire type");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login_password_with_nul_is_refused),
        cmocka_unit_test(test_register_email_with_nul_is_refused),
        cmocka_unit_test(test_send_with_bad_strings_is_refused),
        cmocka_unit_test(test_send_with_fine_strings_round_trips),
        cmocka_unit_test(test_request_meta_with_bad_key_is_refused),
        cmocka_unit_test(test_truncated_key_is_a_named_violation),
    };
    return cmocka_run_group_tests_name("strings", tests, setup, teardown);
}
