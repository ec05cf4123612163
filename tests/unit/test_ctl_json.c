/* ctl_schema and ctl_json (clients/ctl/ctl_schema.h): the schema built into the library read
 * back (methods, options, bounds), JSON <-> protobuf checked against nanopb's own encoder and
 * decoder on the generated structs, a schema of every scalar kind, maps and optional fields
 * written here as JSON (and encoded as a FileDescriptorSet by the codec itself, whose encoding
 * the round trips against nanopb vouch for), and hostile inputs in tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_schema.h"
#include "lagoon_idl.h"
#include "wire.h"

static ctl_schema *schema; /* the built-in one, for every test */
static ctl_schema *tschema; /* t.v1 below */

#define ERR_CAP 256

/* ---- helpers ------------------------------------------------------------------------------ */

static const ctl_message *msg(const ctl_schema *s, const char *name)
{
    const ctl_message *m = ctl_schema_message(s, name);
    if (m == NULL)
        fail_msg("no message %s", name);
    return m;
}

static const ctl_field *field(const ctl_message *m, const char *name)
{
    for (size_t i = 0; i < m->nfields; i++)
        if (strcmp(m->fields[i].name, name) == 0)
            return &m->fields[i];
    fail_msg("no field %s in %s", name, m->full_name);
    return NULL;
}

/* bytes -> compact JSON text (caller frees), or fails the test */
static char *decode_text(const ctl_message *m, const uint8_t *p, size_t n)
{
    char err[ERR_CAP];
    json_t *j = ctl_json_decode(m, p, n, err, sizeof err);
    if (j == NULL)
        fail_msg("decode %s: %s", m->full_name, err);
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    assert_non_null(text);
    return text;
}

/* JSON text -> bytes (out reset first), or fails the test */
static void encode_text(const ctl_message *m, const char *text, ctl_buf *out)
{
    char err[ERR_CAP];
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (j == NULL)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    out->len = 0;
    int rc = ctl_json_encode(m, j, out, err, sizeof err);
    json_decref(j);
    if (rc != 0)
        fail_msg("encode %s: %s", text, err);
}

/* JSON text that must be refused with exactly the error want */
static void encode_fails(const ctl_message *m, const char *text, const char *want)
{
    char err[ERR_CAP] = "";
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (j == NULL)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    ctl_buf out = {0};
    int rc = ctl_json_encode(m, j, &out, err, sizeof err);
    json_decref(j);
    if (rc != -1)
        fail_msg("%s was encoded (%zu bytes); wanted: %s", text, out.len, want);
    assert_int_equal(out.len, 0);
    ctl_buf_free(&out);
    if (strcmp(err, want) != 0)
        fail_msg("%s: error \"%s\", wanted \"%s\"", text, err, want);
}

/* bytes that must not decode, with an error starting with want */
static void decode_fails(const ctl_message *m, const char *bytes, size_t n, const char *want)
{
    char err[ERR_CAP] = "";
    json_t *j = ctl_json_decode(m, (const uint8_t *)bytes, n, err, sizeof err);
    if (j != NULL) {
        char *t = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        fail_msg("%zu bytes decoded as %s: %s; wanted: %s", n, m->full_name, t, want);
    }
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("error \"%s\", wanted \"%s...\"", err, want);
}

static void assert_text(const char *got, const char *want)
{
    if (strcmp(got, want) != 0)
        fail_msg("got  %s\nwant %s", got, want);
}

static void roundtrip_text(const ctl_message *m, const char *text)
{
    ctl_buf b = {0};
    encode_text(m, text, &b);
    char *back = decode_text(m, b.data, b.len);
    assert_text(back, text);
    free(back);
    ctl_buf_free(&b);
}

/* ---- the built-in schema -------------------------------------------------------------------- */

static void test_methods_by_every_name(void **state)
{
    (void)state;
    static const char *const forms[] = {"/lagoon.v1.Messages/Send", "lagoon.v1.Messages/Send",
                                        "lagoon.v1.Messages.Send", "Messages/Send", "Messages.Send"};
    const ctl_method *send = NULL;
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        const ctl_method *m = ctl_schema_method(schema, forms[i]);
        if (m == NULL)
            fail_msg("no method by %s", forms[i]);
        if (send == NULL)
            send = m;
        assert_ptr_equal(m, send);
    }
    assert_string_equal(send->path, "/lagoon.v1.Messages/Send");
    assert_string_equal(send->service, "lagoon.v1.Messages");
    assert_string_equal(send->name, "Send");
    assert_ptr_equal(send->input, msg(schema, "lagoon.v1.SendMessageRequest"));
    assert_ptr_equal(send->output, msg(schema, "lagoon.v1.DirectMessage"));
    assert_int_equal(send->access, lagoon_v1_Access_ACCESS_USER);
    assert_int_equal(send->idempotent, 0);
    assert_int_equal(send->client_streaming, 0);
    assert_int_equal(send->server_streaming, 0);

    static const char *const none[] = {"Messages/Nope", "Nope/Send", "Send", "/", "", "Messages/",
                                       "/Send", "lagoon.v2.Messages/Send", "essages/Send"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        if (ctl_schema_method(schema, none[i]) != NULL)
            fail_msg("%s found a method", none[i]);

    /* every method is found by its own path, and the list has each once */
    const ctl_method *const *all = NULL;
    size_t n = ctl_schema_methods(schema, &all);
    assert_true(n > 20);
    for (size_t i = 0; i < n; i++)
        assert_ptr_equal(ctl_schema_method(schema, all[i]->path), all[i]);
}

static void test_method_kinds_and_options(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int client, server, access, idempotent;
    } cases[] = {
        {"lagoon.v1.Events/Subscribe", 0, 1, 1, 0},
        {"lagoon.v1.Debug/EchoCollect", 1, 0, 0, 0},
        {"lagoon.v1.Debug/EchoChat", 1, 1, 0, 0},
        {"lagoon.v1.Debug/Echo", 0, 0, 0, 0},
        {"lagoon.v1.Messages/Edit", 0, 0, 1, 1},
        {"lagoon.v1.Messages/MarkRead", 0, 0, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ctl_method *m = ctl_schema_method(schema, cases[i].name);
        if (m == NULL)
            fail_msg("no method %s", cases[i].name);
        if (m->client_streaming != cases[i].client || m->server_streaming != cases[i].server ||
            m->access != cases[i].access || m->idempotent != cases[i].idempotent)
            fail_msg("%s: client %d server %d access %d idempotent %d", cases[i].name,
                     m->client_streaming, m->server_streaming, m->access, m->idempotent);
    }
}

static void test_fields_and_bounds(void **state)
{
    (void)state;
    const ctl_field *text = field(msg(schema, "lagoon.v1.TextContent"), "text");
    assert_int_equal(text->max_length, 16000);
    assert_int_equal(text->max_count, 0);
    const ctl_field *list = field(msg(schema, "lagoon.v1.ListMessagesResponse"), "messages");
    assert_int_equal(list->max_count, 200);
    assert_true(list->repeated);
    assert_ptr_equal(list->message, msg(schema, ".lagoon.v1.DirectMessage"));

    const ctl_message *dm = msg(schema, "DirectMessage"); /* without the package: unique */
    const ctl_field *rid = field(dm, "recipient_id");
    assert_string_equal(rid->json_name, "recipientId");
    assert_int_equal(rid->number, 4);
    assert_int_equal(rid->type, CTL_TYPE_UINT64);
    assert_int_equal(rid->oneof_index, -1);
    assert_null(rid->type_name);
    const ctl_field *video = field(dm, "video");
    assert_int_equal(video->oneof_index, 0);
    assert_string_equal(dm->oneofs[0], "content");
    assert_string_equal(video->type_name, "lagoon.v1.VideoContent");

    const ctl_field *src = field(msg(schema, "lagoon.v1.VideoContent"), "source");
    assert_int_equal(src->type, CTL_TYPE_ENUM);
    assert_ptr_equal(src->enumeration, ctl_schema_enum(schema, "lagoon.v1.VideoContent.Source"));
    assert_ptr_equal(ctl_schema_enum(schema, ".lagoon.v1.Access"), ctl_schema_enum(schema, "Access"));
    assert_non_null(ctl_schema_enum(schema, "Access"));

    const ctl_field *full = field(msg(schema, "lagoon.v1.UpdateProfileRequest"), "full_name");
    assert_true(full->proto3_optional);
    assert_true(full->oneof_index >= 0);
    assert_null(ctl_schema_message(schema, "lagoon.v1.Nope"));
    assert_null(ctl_schema_message(schema, "SendMessage"));
}

/* ---- against nanopb ------------------------------------------------------------------------- */

static void test_decode_send_request_as_nanopb_wrote_it(void **state)
{
    (void)state;
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = 9007199254740993u; /* 2^53 + 1: no double holds it */
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    strcpy(req.content.text.text, "h\xc3\xa9llo \xe2\x9c\x93\n\"q\"");
    strcpy(req.client_message_id, "c-1");
    uint8_t buf[256];
    long n = wire_encode(&lagoon_v1_SendMessageRequest_info, &req, buf, sizeof buf, NULL);
    assert_true(n > 0);
    char *text = decode_text(msg(schema, "lagoon.v1.SendMessageRequest"), buf, (size_t)n);
    assert_text(text, "{\"recipientId\":\"9007199254740993\",\"text\":{\"text\":\"h\xc3\xa9llo "
                      "\xe2\x9c\x93\\n\\\"q\\\"\"},\"clientMessageId\":\"c-1\"}");
    free(text);
}

static void test_decode_direct_message_as_nanopb_wrote_it(void **state)
{
    (void)state;
    const ctl_message *m = msg(schema, "lagoon.v1.DirectMessage");
    lagoon_v1_DirectMessage dm = lagoon_v1_DirectMessage_init_zero;
    dm.id = UINT64_MAX;
    dm.sender_id = 7;
    dm.which_content = lagoon_v1_DirectMessage_video_tag;
    strcpy(dm.content.video.url, "https://v.example/\xe6\x97\xa5");
    dm.content.video.source = lagoon_v1_VideoContent_Source_VEVO;
    dm.created_at = -1700000000123;
    dm.sender_event_seqs_count = 2;
    dm.sender_event_seqs[0] = 1;
    dm.sender_event_seqs[1] = (uint64_t)1 << 60;
    dm.events_tracked = true;
    uint8_t buf[512];
    long n = wire_encode(&lagoon_v1_DirectMessage_info, &dm, buf, sizeof buf, NULL);
    assert_true(n > 0);
    /* defaults (conversationId, lengthSeconds, editCount...) left out; number order */
    static const char want[] =
        "{\"id\":\"18446744073709551615\",\"senderId\":\"7\",\"video\":{\"url\":"
        "\"https://v.example/\xe6\x97\xa5\",\"source\":\"VEVO\"},\"createdAt\":\"-1700000000123\","
        "\"senderEventSeqs\":[\"1\",\"1152921504606846976\"],\"eventsTracked\":true}";
    char *text = decode_text(m, buf, (size_t)n);
    assert_text(text, want);
    free(text);

    /* a oneof member at its default is still there: an empty text is {} */
    lagoon_v1_DirectMessage empty = lagoon_v1_DirectMessage_init_zero;
    empty.which_content = lagoon_v1_DirectMessage_text_tag;
    n = wire_encode(&lagoon_v1_DirectMessage_info, &empty, buf, sizeof buf, NULL);
    assert_true(n > 0);
    text = decode_text(m, buf, (size_t)n);
    assert_text(text, "{\"text\":{}}");
    free(text);
    text = decode_text(m, buf, 0);
    assert_text(text, "{}");
    free(text);

    /* an enum number the schema does not know comes as the number */
    dm.content.video.source = (lagoon_v1_VideoContent_Source)9;
    n = wire_encode(&lagoon_v1_DirectMessage_info, &dm, buf, sizeof buf, NULL);
    assert_true(n > 0);
    text = decode_text(m, buf, (size_t)n);
    assert_non_null(strstr(text, "\"source\":9}"));
    free(text);
}

static void test_decode_presence_and_bytes(void **state)
{
    (void)state;
    /* proto3 optional: present at its default is shown, absent is not */
    lagoon_v1_UpdateProfileRequest up = lagoon_v1_UpdateProfileRequest_init_zero;
    up.has_full_name = true;
    up.has_bio = true;
    strcpy(up.bio, "x");
    uint8_t buf[512];
    long n = wire_encode(&lagoon_v1_UpdateProfileRequest_info, &up, buf, sizeof buf, NULL);
    assert_true(n > 0);
    char *text = decode_text(msg(schema, "lagoon.v1.UpdateProfileRequest"), buf, (size_t)n);
    assert_text(text, "{\"fullName\":\"\",\"bio\":\"x\"}");
    free(text);

    /* bytes: standard base64 with padding */
    static const struct {
        const char *raw;
        size_t n;
        const char *b64;
    } cases[] = {{"", 0, NULL}, {"f", 1, "Zg=="}, {"fo", 2, "Zm8="}, {"foo", 3, "Zm9v"},
                 {"\xfb\xff\xbf", 3, "+/+/"}, {"\0\0", 2, "AAA="}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lagoon_v1_EchoRequest er = lagoon_v1_EchoRequest_init_zero;
        memcpy(er.payload.bytes, cases[i].raw, cases[i].n);
        er.payload.size = (pb_size_t)cases[i].n;
        er.delay_ms = 5;
        n = wire_encode(&lagoon_v1_EchoRequest_info, &er, buf, sizeof buf, NULL);
        assert_true(n > 0);
        text = decode_text(msg(schema, "lagoon.v1.EchoRequest"), buf, (size_t)n);
        char want[64];
        if (cases[i].b64 != NULL)
            snprintf(want, sizeof want, "{\"payload\":\"%s\",\"delayMs\":5}", cases[i].b64);
        else
            snprintf(want, sizeof want, "{\"delayMs\":5}");
        assert_text(text, want);
        free(text);
    }
}

static void test_encode_is_what_nanopb_reads(void **state)
{
    (void)state;
    const ctl_message *m = msg(schema, "lagoon.v1.SendMessageRequest");
    ctl_buf b = {0};
    /* the .proto's names and the JSON names, a 64-bit string, an integer */
    encode_text(m, "{\"recipient_id\":\"18446744073709551615\",\"video\":{\"url\":\"https://y/\","
                   "\"lengthSeconds\":61,\"source\":\"YOUTUBE\"},\"clientMessageId\":\"\xc3\xa9\"}",
                &b);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    wire_violation v;
    if (wire_decode(&lagoon_v1_SendMessageRequest_info, b.data, b.len, &req, &v) != 0)
        fail_msg("wire_decode: %s: %s", v.field, v.description);
    assert_true(req.recipient_id == UINT64_MAX);
    assert_int_equal(req.which_content, lagoon_v1_SendMessageRequest_video_tag);
    assert_string_equal(req.content.video.url, "https://y/");
    assert_int_equal(req.content.video.length_seconds, 61);
    assert_int_equal(req.content.video.source, lagoon_v1_VideoContent_Source_YOUTUBE);
    assert_string_equal(req.client_message_id, "\xc3\xa9");

    /* the same bytes as nanopb's, for a message with every kind the IDL has */
    const ctl_message *dmm = msg(schema, "lagoon.v1.DirectMessage");
    encode_text(dmm, "{\"id\":9007199254740993,\"recipientId\":null,"
                     "\"text\":{\"text\":\"hi\"},\"createdAt\":-5,\"editedAt\":\"-9223372036854775808\","
                     "\"edit_count\":3,\"senderEventSeqs\":[1,\"2\"],\"recipientEventSeqs\":[],"
                     "\"eventsTracked\":true}",
                &b);
    lagoon_v1_DirectMessage dm = lagoon_v1_DirectMessage_init_zero;
    dm.id = 9007199254740993u;
    dm.which_content = lagoon_v1_DirectMessage_text_tag;
    strcpy(dm.content.text.text, "hi");
    dm.created_at = -5;
    dm.edited_at = INT64_MIN;
    dm.edit_count = 3;
    dm.sender_event_seqs_count = 2;
    dm.sender_event_seqs[0] = 1;
    dm.sender_event_seqs[1] = 2;
    dm.events_tracked = true;
    uint8_t want[256];
    long n = wire_encode(&lagoon_v1_DirectMessage_info, &dm, want, sizeof want, NULL);
    assert_true(n > 0);
    assert_int_equal(b.len, (size_t)n);
    assert_memory_equal(b.data, want, (size_t)n);

    /* enums by number; bytes in every spelling */
    encode_text(msg(schema, "lagoon.v1.VideoContent"), "{\"source\":2}", &b);
    lagoon_v1_VideoContent vc = lagoon_v1_VideoContent_init_zero;
    assert_int_equal(wire_decode(&lagoon_v1_VideoContent_info, b.data, b.len, &vc, &v), 0);
    assert_int_equal(vc.source, lagoon_v1_VideoContent_Source_VEVO);
    static const char *const spellings[] = {"+/+/AA==", "-_-_AA==", "+/+/AA", "-_-_AA"};
    for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"payload\":\"%s\"}", spellings[i]);
        encode_text(msg(schema, "lagoon.v1.EchoRequest"), text, &b);
        lagoon_v1_EchoRequest er = lagoon_v1_EchoRequest_init_zero;
        assert_int_equal(wire_decode(&lagoon_v1_EchoRequest_info, b.data, b.len, &er, &v), 0);
        assert_int_equal(er.payload.size, 4);
        assert_memory_equal(er.payload.bytes, "\xfb\xff\xbf\x00", 4);
    }
    ctl_buf_free(&b);
    assert_null(b.data);
}

static void test_encode_appends(void **state)
{
    (void)state;
    const ctl_message *m = msg(schema, "lagoon.v1.TextContent");
    ctl_buf b = {0};
    char err[ERR_CAP];
    json_t *j = json_pack("{s:s}", "text", "a");
    assert_int_equal(ctl_json_encode(m, j, &b, err, sizeof err), 0);
    assert_int_equal(ctl_json_encode(m, j, &b, err, sizeof err), 0);
    json_decref(j);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "\x0a\x01" "a\x0a\x01" "a", 6);
    /* a failed encode leaves what was there */
    j = json_pack("{s:i}", "text", 1);
    assert_int_equal(ctl_json_encode(m, j, &b, err, sizeof err), -1);
    json_decref(j);
    assert_int_equal(b.len, 6);
    ctl_buf_free(&b);
}

static void test_encode_errors(void **state)
{
    (void)state;
    const ctl_message *send = msg(schema, "lagoon.v1.SendMessageRequest");
    const ctl_message *dm = msg(schema, "lagoon.v1.DirectMessage");
    const ctl_message *echo = msg(schema, "lagoon.v1.EchoRequest");
    static const struct {
        int which; /* 0 send, 1 dm, 2 echo */
        const char *json, *err;
    } cases[] = {
        {0, "{\"recipientId\":1,\"nope\":2}", "unknown field \"nope\" in lagoon.v1.SendMessageRequest"},
        {0, "{\"text\":{\"txt\":\"a\"}}", "text: unknown field \"txt\" in lagoon.v1.TextContent"},
        {0, "{\"recipientId\":true}", "recipientId: expected an integer"},
        {0, "{\"recipientId\":\"12a\"}", "recipientId: \"12a\" is not an integer"},
        {0, "{\"recipientId\":1.5}", "recipientId: 1.5 is not an integer"},
        {0, "{\"recipientId\":-1}", "recipientId: -1 is out of range [0, 18446744073709551615]"},
        {0, "{\"recipientId\":\"-1\"}", "recipientId: -1 is out of range [0, 18446744073709551615]"},
        {0, "{\"recipientId\":\"18446744073709551616\"}", "recipientId: \"18446744073709551616\" is not an integer"},
        {0, "{\"recipientId\":1,\"recipient_id\":1}", "recipientId: given twice (as \"recipientId\" and \"recipient_id\")"},
        {0, "{\"text\":{\"text\":5}}", "text.text: expected a string"},
        {0, "{\"text\":\"hi\"}", "text: expected an object (lagoon.v1.TextContent)"},
        {0, "{\"text\":{\"text\":\"a\"},\"image\":{}}", "image: only one of oneof content may be set (text is set too)"},
        {0, "{\"text\":{\"text\":\"a\"},\"image\":null}", NULL}, /* null is not set */
        {0, "{\"video\":{\"source\":\"VIMEO\"}}", "video.source: \"VIMEO\" is not a value of lagoon.v1.VideoContent.Source"},
        {0, "{\"video\":{\"source\":true}}", "video.source: expected a value of lagoon.v1.VideoContent.Source (a name or a number)"},
        {0, "{\"video\":{\"lengthSeconds\":4294967296}}", "video.lengthSeconds: 4294967296 is out of range [0, 4294967295]"},
        {0, "{\"video\":{\"source\":2147483648}}", "video.source: 2147483648 is out of range [-2147483648, 2147483647]"},
        {0, "[1]", "expected an object (lagoon.v1.SendMessageRequest)"},
        {1, "{\"createdAt\":\"9223372036854775808\"}", "createdAt: 9223372036854775808 is out of range [-9223372036854775808, 9223372036854775807]"},
        {1, "{\"senderEventSeqs\":5}", "senderEventSeqs: expected an array"},
        {1, "{\"senderEventSeqs\":[1,null]}", "senderEventSeqs[1]: an item cannot be null"},
        {1, "{\"senderEventSeqs\":[1,-2]}", "senderEventSeqs[1]: -2 is out of range [0, 18446744073709551615]"},
        {1, "{\"eventsTracked\":1}", "eventsTracked: expected true or false"},
        {2, "{\"payload\":\"Zm9v!\"}", "payload: not valid base64"},
        {2, "{\"payload\":\"Zg=\"}", "payload: not valid base64"},
        {2, "{\"payload\":\"Z\"}", "payload: not valid base64"},
        {2, "{\"payload\":\"Zm9v\\n\"}", "payload: not valid base64"},
        {2, "{\"payload\":7}", "payload: expected a base64 string"},
    };
    const ctl_message *ms[] = {send, dm, echo};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].err != NULL) {
            encode_fails(ms[cases[i].which], cases[i].json, cases[i].err);
        } else {
            ctl_buf b = {0};
            encode_text(ms[cases[i].which], cases[i].json, &b);
            ctl_buf_free(&b);
        }
    }
}

static void test_decode_malformed(void **state)
{
    (void)state;
    const ctl_message *send = msg(schema, "lagoon.v1.SendMessageRequest");
    static const struct {
        const char *bytes;
        size_t n;
        const char *err; /* the start of the error */
    } cases[] = {
        {"\x08\x80", 2, "recipientId: malformed: "},                        /* truncated varint */
        {"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11, "recipientId: malformed: "}, /* 11 bytes */
        {"\x09\x01\x02\x03\x04\x05\x06\x07\x08", 9, "recipientId: malformed: wire type 1"},
        {"\x12\x05\x0a\x01", 4, "text: malformed: length 5 past the end (2 bytes left)"},
        {"\x12\x02\x0a\x05", 4, "text.text: malformed: length 5 past the end (0 bytes left)"},
        {"\x12\x02\x08\x01", 4, "text.text: malformed: wire type 0"},
        {"\x10\x01", 2, "text: malformed: wire type 0 for a message"},
        {"\x2a\x02\xc3\x28", 4, "clientMessageId: not valid UTF-8"},
        {"\x7a\x09\x01", 3, "malformed: #15: length 9 past the end"}, /* unknown, too long */
        {"\x7b", 1, "malformed: #15: "},                                 /* a group */
        {"\x00", 1, "malformed: field number 0"},
        {"\x80", 1, "malformed: "},                                      /* a truncated tag */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        decode_fails(send, cases[i].bytes, cases[i].n, cases[i].err);
    /* unknown fields are skipped; a field twice: the last wins; a oneof: the last member */
    static const uint8_t ok[] = {0x08, 0x01, 0x78, 0x05, 0x7a, 0x01, 0x00, 0x08, 0x02,
                                 0x12, 0x01, 0x00, 0x1a, 0x00};
    char *text = decode_text(send, ok, sizeof ok);
    assert_text(text, "{\"recipientId\":\"2\",\"image\":{}}");
    free(text);
    /* a message in two pieces is merged */
    static const uint8_t merged[] = {0x22, 0x02, 0x10, 0x03, 0x22, 0x02, 0x18, 0x01};
    text = decode_text(send, merged, sizeof merged);
    assert_text(text, "{\"video\":{\"lengthSeconds\":3,\"source\":\"YOUTUBE\"}}");
    free(text);
}

/* Every prefix of data[0..n) decodes or fails with a message; the whole decodes. Each prefix
 * is an exact heap copy, so that ASan sees a read past its end. Returns the failures. */
static size_t decode_prefixes(const ctl_message *m, const uint8_t *data, size_t n)
{
    size_t fails = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        uint8_t *copy = malloc(cut > 0 ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, data, cut);
        char err[ERR_CAP] = "";
        json_t *j = ctl_json_decode(m, copy, cut, err, sizeof err);
        free(copy);
        if (j != NULL) {
            json_decref(j);
            continue;
        }
        if (cut == n)
            fail_msg("%s: the whole does not decode: %s", m->full_name, err);
        if (strstr(err, "malformed") == NULL)
            fail_msg("%s, %zu of %zu bytes: \"%s\"", m->full_name, cut, n, err);
        fails++;
    }
    return fails;
}

static void test_decode_every_prefix(void **state)
{
    (void)state;
    lagoon_v1_DirectMessage dm = lagoon_v1_DirectMessage_init_zero;
    dm.id = UINT64_MAX;
    dm.conversation_id = 300;
    dm.which_content = lagoon_v1_DirectMessage_image_tag;
    strcpy(dm.content.image.url, "https://i/\xc3\xa9");
    dm.content.image.width = 640;
    dm.created_at = -1;
    strcpy(dm.client_message_id, "abc");
    dm.recipient_event_seqs_count = 3;
    dm.recipient_event_seqs[0] = 1;
    dm.recipient_event_seqs[1] = 1u << 20;
    dm.recipient_event_seqs[2] = UINT64_MAX;
    dm.events_tracked = true;
    uint8_t buf[512];
    long n = wire_encode(&lagoon_v1_DirectMessage_info, &dm, buf, sizeof buf, NULL);
    assert_true(n > 40);
    /* a cut inside a value fails; at a field's end it is a shorter message */
    assert_true(decode_prefixes(msg(schema, "lagoon.v1.DirectMessage"), buf, (size_t)n) > (size_t)n / 2);

    /* a repeated field's item is named by its index */
    char err[ERR_CAP] = "";
    static const uint8_t bad_seq[] = {0x68, 0x01, 0x6d, 0, 0, 0, 0};
    assert_null(ctl_json_decode(msg(schema, "lagoon.v1.DirectMessage"), bad_seq, sizeof bad_seq, err, sizeof err));
    assert_string_equal(err, "senderEventSeqs[1]: malformed: wire type 5 for a field of type 4");
    static const uint8_t bad_item[] = {0x0a, 0x00, 0x0a, 0x02, 0x08, 0x80};
    assert_null(ctl_json_decode(msg(schema, "lagoon.v1.ListMessagesResponse"), bad_item, sizeof bad_item, err, sizeof err));
    if (strncmp(err, "messages[1].id: malformed: ", 27) != 0)
        fail_msg("error: %s", err);

    ctl_buf b = {0};
    encode_text(msg(tschema, "t.v1.Scalars"),
                "{\"d\":1.5,\"f\":2,\"s64\":\"-3\",\"fx32\":4,\"nums\":[1,-1],\"countByName\":{\"a\":\"1\"},"
                "\"opt\":0,\"inner\":{\"child\":{\"name\":\"n\"}},\"ids\":{\"7\":{}},\"fx64\":\"5\"}",
                &b);
    assert_true(decode_prefixes(msg(tschema, "t.v1.Scalars"), b.data, b.len) > b.len / 2);
    ctl_buf_free(&b);
}

/* ---- a schema written here ------------------------------------------------------------------ */

/* t.v1: every scalar kind, a map, an optional, a recursive message, an enum, two services named
 * Svc (u.v1 too) for the short name. As google.protobuf.FileDescriptorSet JSON. */
static const char tv1_json[] =
    "{\"file\":[{\"name\":\"t.proto\",\"package\":\"t.v1\",\"syntax\":\"proto3\","
    "\"messageType\":[{\"name\":\"Scalars\",\"field\":["
    "{\"name\":\"d\",\"number\":1,\"type\":\"TYPE_DOUBLE\"},"
    "{\"name\":\"f\",\"number\":2,\"type\":\"TYPE_FLOAT\"},"
    "{\"name\":\"i32\",\"number\":3,\"type\":\"TYPE_INT32\"},"
    "{\"name\":\"s32\",\"number\":4,\"type\":\"TYPE_SINT32\"},"
    "{\"name\":\"s64\",\"number\":5,\"type\":\"TYPE_SINT64\"},"
    "{\"name\":\"fx32\",\"number\":6,\"type\":\"TYPE_FIXED32\"},"
    "{\"name\":\"sfx64\",\"number\":7,\"type\":\"TYPE_SFIXED64\"},"
    "{\"name\":\"b\",\"number\":8,\"type\":\"TYPE_BOOL\"},"
    "{\"name\":\"nums\",\"number\":9,\"label\":\"LABEL_REPEATED\",\"type\":\"TYPE_SINT32\"},"
    "{\"name\":\"count_by_name\",\"number\":10,\"label\":\"LABEL_REPEATED\",\"type\":\"TYPE_MESSAGE\","
    "\"typeName\":\".t.v1.Scalars.CountByNameEntry\"},"
    "{\"name\":\"opt\",\"number\":11,\"type\":\"TYPE_INT32\",\"oneofIndex\":0,\"proto3Optional\":true},"
    "{\"name\":\"inner\",\"number\":12,\"type\":\"TYPE_MESSAGE\",\"typeName\":\".t.v1.Inner\"},"
    "{\"name\":\"kind\",\"number\":13,\"type\":\"TYPE_ENUM\",\"typeName\":\".t.v1.Kind\"},"
    "{\"name\":\"names\",\"number\":14,\"label\":\"LABEL_REPEATED\",\"type\":\"TYPE_STRING\"},"
    "{\"name\":\"by_id\",\"number\":15,\"label\":\"LABEL_REPEATED\",\"type\":\"TYPE_MESSAGE\","
    "\"typeName\":\".t.v1.Scalars.ByIdEntry\",\"jsonName\":\"ids\"},"
    "{\"name\":\"fx64\",\"number\":16,\"type\":\"TYPE_FIXED64\"},"
    "{\"name\":\"sfx32\",\"number\":17,\"type\":\"TYPE_SFIXED32\"}],"
    "\"nestedType\":[{\"name\":\"CountByNameEntry\",\"field\":["
    "{\"name\":\"key\",\"number\":1,\"type\":\"TYPE_STRING\"},"
    "{\"name\":\"value\",\"number\":2,\"type\":\"TYPE_INT64\"}],\"options\":{\"mapEntry\":true}},"
    "{\"name\":\"ByIdEntry\",\"field\":["
    "{\"name\":\"key\",\"number\":1,\"type\":\"TYPE_UINT64\"},"
    "{\"name\":\"value\",\"number\":2,\"type\":\"TYPE_MESSAGE\",\"typeName\":\".t.v1.Inner\"}],"
    "\"options\":{\"mapEntry\":true}}],"
    "\"oneofDecl\":[{\"name\":\"_opt\"}]},"
    "{\"name\":\"Inner\",\"field\":[{\"name\":\"name\",\"number\":1,\"type\":\"TYPE_STRING\"},"
    "{\"name\":\"child\",\"number\":2,\"type\":\"TYPE_MESSAGE\",\"typeName\":\".t.v1.Inner\"}]}],"
    "\"enumType\":[{\"name\":\"Kind\",\"value\":[{\"name\":\"KIND_ZERO\",\"number\":0},"
    "{\"name\":\"KIND_ONE\",\"number\":1},{\"name\":\"KIND_NEG\",\"number\":-1}]}],"
    "\"service\":[{\"name\":\"Svc\",\"method\":[{\"name\":\"Get\",\"inputType\":\".t.v1.Inner\","
    "\"outputType\":\".t.v1.Scalars\",\"serverStreaming\":true}]}]},"
    "{\"name\":\"u.proto\",\"package\":\"u.v1\",\"service\":[{\"name\":\"Svc\",\"method\":[{\"name\":"
    "\"Get\",\"inputType\":\".t.v1.Inner\",\"outputType\":\".t.v1.Inner\",\"clientStreaming\":true}]}]}]}";

/* A FileDescriptorSet from its JSON, through the built-in schema's descriptor.proto. */
static void set_from_json(const char *text, ctl_buf *out)
{
    encode_text(msg(schema, "google.protobuf.FileDescriptorSet"), text, out);
}

static void test_own_schema(void **state)
{
    (void)state;
    const ctl_message *s = msg(tschema, "t.v1.Scalars");
    assert_string_equal(field(s, "count_by_name")->json_name, "countByName");
    assert_string_equal(field(s, "by_id")->json_name, "ids");
    assert_true(field(s, "count_by_name")->message->map_entry);
    assert_string_equal(field(s, "count_by_name")->message->full_name, "t.v1.Scalars.CountByNameEntry");
    /* Svc is in two packages: only the full names find it */
    assert_null(ctl_schema_method(tschema, "Svc/Get"));
    const ctl_method *t = ctl_schema_method(tschema, "t.v1.Svc.Get");
    const ctl_method *u = ctl_schema_method(tschema, "/u.v1.Svc/Get");
    assert_non_null(t);
    assert_non_null(u);
    assert_true(t != u);
    assert_true(t->server_streaming && !t->client_streaming && t->access == -1);
    assert_true(u->client_streaming && !u->server_streaming);
    const ctl_method *const *all = NULL;
    assert_int_equal(ctl_schema_methods(tschema, &all), 2);
    assert_ptr_equal(all[0], t);
    assert_ptr_equal(all[1], u);
}

static void test_own_schema_roundtrips(void **state)
{
    (void)state;
    const ctl_message *s = msg(tschema, "t.v1.Scalars");
    /* canonical text comes back as it went */
    roundtrip_text(s, "{\"d\":1.5,\"f\":-0.25,\"i32\":-7,\"s32\":-2147483648,\"s64\":\"-9223372036854775808\","
                      "\"fx32\":4294967295,\"sfx64\":\"-1\",\"b\":true,\"nums\":[0,-1,1,-300],"
                      "\"countByName\":{\"a\":\"1\",\"\xc3\xa9\":\"-2\"},\"opt\":0,"
                      "\"inner\":{\"name\":\"x\",\"child\":{\"child\":{}}},\"kind\":\"KIND_NEG\","
                      "\"names\":[\"\",\"b\"],\"ids\":{\"18446744073709551615\":{\"name\":\"m\"},\"0\":{}},"
                      "\"fx64\":\"18446744073709551615\",\"sfx32\":-2}");
    roundtrip_text(s, "{\"d\":\"NaN\",\"f\":\"-Infinity\"}");
    roundtrip_text(s, "{\"d\":\"Infinity\"}");
    roundtrip_text(s, "{}");
    /* defaults are left out; numbers given as strings and reals; enum numbers */
    ctl_buf b = {0};
    encode_text(s, "{\"d\":0,\"i32\":\"-5\",\"s64\":7,\"fx32\":\"3\",\"b\":false,\"nums\":[],"
                   "\"count_by_name\":{},\"kind\":1,\"sfx64\":2e3,\"fx64\":\"0\",\"sfx32\":1.0}",
                &b);
    char *text = decode_text(s, b.data, b.len);
    assert_text(text, "{\"i32\":-5,\"s64\":\"7\",\"fx32\":3,\"sfx64\":\"2000\",\"kind\":\"KIND_ONE\",\"sfx32\":1}");
    free(text);
    /* unpacked repeated scalars read as packed ones do; a map entry without its value */
    static const uint8_t unpacked[] = {0x48, 0x01, 0x48, 0x02, 0x4a, 0x01, 0x03, 0x52, 0x03, 0x0a, 0x01, 0x6b};
    text = decode_text(s, unpacked, sizeof unpacked);
    assert_text(text, "{\"nums\":[-1,1,-2],\"countByName\":{\"k\":\"0\"}}");
    free(text);
    ctl_buf_free(&b);

    static const struct {
        const char *bytes;
        size_t n;
        const char *err; /* the start of the error */
    } malformed[] = {
        {"\x4a\x02\x80", 3, "nums: malformed: length 2 past the end (1 bytes left)"},
        {"\x4a\x01\x80", 3, "nums: malformed: "},                /* a varint cut in a packed run */
        {"\x50\x01", 2, "countByName: malformed: wire type 0 for a map"},
        {"\x52\x02\x08\x01", 4, "countByName: malformed: wire type 0 for a field of type 9"},
        {"\x52\x02\x12\x01", 4, "countByName: malformed: "},     /* the value's length */
        {"\x52\x03\x0a\x01\xff", 5, "countByName: not valid UTF-8"},
        {"\x35\x01\x02", 3, "fx32: malformed: "},                /* fixed32 cut */
        {"\x09\x01\x02\x03", 4, "d: malformed: "},              /* double cut */
        {"\x15\x00\x00\x80", 4, "f: malformed: "},              /* float cut */
        {"\x62\x02\x12\x01", 4, "inner.child: malformed: length 1 past the end"},
        {"\x7a\x04\x12\x02\x0a\x05", 6, "ids.name: malformed: length 5 past the end"}, /* a value */
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
        decode_fails(s, malformed[i].bytes, malformed[i].n, malformed[i].err);

    static const struct {
        const char *json, *err;
    } bad[] = {
        {"{\"i32\":2147483648}", "i32: 2147483648 is out of range [-2147483648, 2147483647]"},
        {"{\"i32\":\"-2147483649\"}", "i32: -2147483649 is out of range [-2147483648, 2147483647]"},
        {"{\"f\":1e39}", "f: 1e+39 is out of range for a float"},
        {"{\"d\":\"one\"}", "d: \"one\" is not a number"},
        {"{\"d\":true}", "d: expected a number"},
        {"{\"countByName\":[]}", "countByName: expected an object (a map)"},
        {"{\"countByName\":{\"a\":null}}", "countByName[\"a\"]: a map value cannot be null"},
        {"{\"countByName\":{\"a\":\"x\"}}", "countByName[\"a\"]: \"x\" is not an integer"},
        {"{\"ids\":{\"-1\":{}}}", "ids[\"-1\"]: -1 is out of range [0, 18446744073709551615]"},
        {"{\"ids\":{\"1\":{\"nope\":1}}}", "ids[\"1\"]: unknown field \"nope\" in t.v1.Inner"},
        {"{\"nums\":[1,\"x\"]}", "nums[1]: \"x\" is not an integer"},
        {"{\"names\":[\"a\",1]}", "names[1]: expected a string"},
        {"{\"inner\":{\"child\":{\"name\":false}}}", "inner.child.name: expected a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        encode_fails(s, bad[i].json, bad[i].err);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    const ctl_message *inner = msg(tschema, "t.v1.Inner");
    /* JSON: depth CTL_SCHEMA_MAX_NESTING passes, one more does not */
    for (int extra = 0; extra < 2; extra++) {
        int depth = CTL_SCHEMA_MAX_NESTING + extra;
        size_t cap = (size_t)depth * 10 + 8, n = 0;
        char *text = malloc(cap);
        assert_non_null(text);
        text[n++] = '{';
        for (int i = 0; i < depth; i++)
            n += (size_t)snprintf(text + n, cap - n, "\"child\":{");
        for (int i = 0; i <= depth; i++)
            text[n++] = '}';
        text[n] = '\0';
        char err[ERR_CAP] = "";
        json_t *j = json_loads(text, 0, NULL);
        assert_non_null(j);
        ctl_buf b = {0};
        int rc = ctl_json_encode(inner, j, &b, err, sizeof err);
        json_decref(j);
        assert_int_equal(rc, extra ? -1 : 0);
        if (extra)
            assert_non_null(strstr(err, ": nested deeper than 32"));
        /* and the bytes of one level more than the limit do not decode */
        if (!extra) {
            uint8_t *deeper = malloc(b.len + 2);
            assert_non_null(deeper);
            deeper[0] = 0x12;
            deeper[1] = (uint8_t)b.len;
            assert_true(b.len < 128);
            memcpy(deeper + 2, b.data, b.len);
            json_t *ok = ctl_json_decode(inner, b.data, b.len, err, sizeof err);
            assert_non_null(ok);
            json_decref(ok);
            assert_null(ctl_json_decode(inner, deeper, b.len + 2, err, sizeof err));
            assert_non_null(strstr(err, ": nested deeper than 32"));
            free(deeper);
        }
        ctl_buf_free(&b);
        free(text);
    }
}

/* ---- malformed descriptor sets -------------------------------------------------------------- */

static void test_schema_truncated(void **state)
{
    (void)state;
    char err[ERR_CAP];
    ctl_schema *s = NULL;
    /* Every prefix fails or, cut between two files, reads as a smaller set; none crashes. The
     * set's last byte gone is always malformed. */
    size_t len = lagoon_schema_size, fails = 0;
    for (size_t cut = 1; cut < len; cut += cut + 64 < len ? 13 : 1) {
        /* an exact copy: ASan sees a read past its end */
        uint8_t *copy = malloc(cut);
        assert_non_null(copy);
        memcpy(copy, lagoon_schema, cut);
        err[0] = '\0';
        int rc = ctl_schema_load(copy, cut, &s, err, sizeof err);
        free(copy);
        if (rc == 0) {
            ctl_schema_free(s);
            continue;
        }
        assert_null(s);
        assert_true(err[0] != '\0');
        fails++;
    }
    assert_true(fails > 1000);
    assert_int_equal(ctl_schema_load(lagoon_schema, len - 1, &s, err, sizeof err), -1);
    if (strncmp(err, "malformed descriptor set: ", 26) != 0)
        fail_msg("error: %s", err);
    assert_int_equal(ctl_schema_load(lagoon_schema, CTL_SCHEMA_MAX_BYTES + 1u, &s, err, sizeof err), -1);
    assert_string_equal(err, "descriptor set of 16777217 bytes (at most 16777216)");
    /* the empty set is a schema of nothing */
    assert_int_equal(ctl_schema_load(NULL, 0, &s, err, sizeof err), 0);
    assert_null(ctl_schema_method(s, "a/b"));
    ctl_schema_free(s);
}

static void test_schema_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json, *err;
    } cases[] = {
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
         "\"number\":1,\"type\":\"TYPE_MESSAGE\",\"typeName\":\".p.Nowhere\"}]}]}]}",
         "p.M.x: message type .p.Nowhere not found"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
         "\"number\":1,\"type\":\"TYPE_ENUM\",\"typeName\":\".p.M\"}]}]}]}",
         "p.M.x: enum type .p.M not found"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\"}],\"service\":[{\"name\":\"S\","
         "\"method\":[{\"name\":\"A\",\"inputType\":\".p.M\",\"outputType\":\".p.N\"}]}]}]}",
         "/p.S/A: message type .p.N not found"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
         "\"number\":1,\"type\":\"TYPE_INT32\"},{\"name\":\"y\",\"number\":1,\"type\":\"TYPE_INT32\"}]}]}]}",
         "malformed descriptor set: p.M: field number 1 used twice"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
         "\"number\":1,\"type\":\"TYPE_INT32\",\"oneofIndex\":0}]}]}]}",
         "malformed descriptor set: p.M.x: oneof index 0 out of range"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\"},{\"name\":\"M\"}]}]}",
         "malformed descriptor set: message p.M defined twice"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
         "\"number\":1}]}]}]}",
         "malformed descriptor set: a field without a name, number or type"},
        {"{\"file\":[{\"package\":\"p\",\"messageType\":[{\"name\":\"E\",\"field\":[{\"name\":\"key\","
         "\"number\":1,\"type\":\"TYPE_DOUBLE\"}],\"options\":{\"mapEntry\":true}}]}]}",
         "malformed descriptor set: p.E: a map entry is a scalar key 1 and a value 2"},
        {"{\"file\":[{\"messageType\":[{\"field\":[]}]}]}",
         "malformed descriptor set: a message without a name in (root)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ctl_buf b = {0};
        set_from_json(cases[i].json, &b);
        char err[ERR_CAP] = "";
        ctl_schema *s = NULL;
        int rc = ctl_schema_load(b.data, b.len, &s, err, sizeof err);
        ctl_buf_free(&b);
        if (rc != -1) {
            ctl_schema_free(s);
            fail_msg("case %zu loaded", i);
        }
        if (strcmp(err, cases[i].err) != 0)
            fail_msg("case %zu: \"%s\", wanted \"%s\"", i, err, cases[i].err);
    }

    /* raw bytes the JSON cannot say */
    static const struct {
        const char *bytes;
        size_t n;
        const char *err;
    } raw[] = {
        {"\x0a\x05\x12\x03p", 5, "malformed descriptor set: file: "},          /* length past end */
        {"\x0a\x04\x22\x02\x0a\x05", 6, "malformed descriptor set: message: "}, /* nested */
        {"\x10\x01", 2, NULL},                                                 /* unknown: skipped */
        {"\x08\x01", 2, "malformed descriptor set: file: wrong wire type 0"},
        {"\x13", 1, "malformed descriptor set: descriptor set: "},             /* a group */
        {"\x0a\x03\x12\x01\x00", 5, "malformed descriptor set: file: NUL in a name"},
        {"\x0a\x03\x98\x06\x01", 5, NULL},                                     /* unknown in a file */
        {"\x0a\x02\x12\x01", 4, "malformed descriptor set: file: "},
        {"\x0a\x02\x13\x01", 4, "malformed descriptor set: file: "},           /* package as a group */
        {"\x00", 1, "malformed descriptor set: descriptor set: field number 0"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        char err[ERR_CAP] = "";
        ctl_schema *s = NULL;
        int rc = ctl_schema_load((const uint8_t *)raw[i].bytes, raw[i].n, &s, err, sizeof err);
        if (raw[i].err == NULL) {
            if (rc != 0)
                fail_msg("raw case %zu: %s", i, err);
            ctl_schema_free(s);
            continue;
        }
        if (rc != -1) {
            ctl_schema_free(s);
            fail_msg("raw case %zu loaded", i);
        }
        if (strncmp(err, raw[i].err, strlen(raw[i].err)) != 0)
            fail_msg("raw case %zu: \"%s\", wanted \"%s...\"", i, err, raw[i].err);
    }
}

/* The error loading the set of JSON text (which must fail), into err. */
static void load_fails(const char *text, char *err, size_t cap)
{
    ctl_buf b = {0};
    set_from_json(text, &b);
    ctl_schema *s = NULL;
    int rc = ctl_schema_load(b.data, b.len, &s, err, cap);
    ctl_buf_free(&b);
    if (rc != -1) {
        ctl_schema_free(s);
        fail_msg("loaded: %.200s", text);
    }
}

static void test_schema_limits(void **state)
{
    (void)state;
    /* a message of 4096 fields loads, of 4097 not (CTL_SCHEMA_MAX_FIELDS) */
    for (int extra = 0; extra < 2; extra++) {
        int n = 4096 + extra;
        size_t cap = (size_t)n * 64 + 128, len = 0;
        char *text = malloc(cap);
        assert_non_null(text);
        len += (size_t)snprintf(text, cap, "{\"file\":[{\"messageType\":[{\"name\":\"M\",\"field\":[");
        for (int i = 1; i <= n; i++)
            len += (size_t)snprintf(text + len, cap - len, "%s{\"name\":\"f%d\",\"number\":%d,\"type\":5}",
                                    i > 1 ? "," : "", i, i);
        snprintf(text + len, cap - len, "]}]}]}");
        char err[ERR_CAP] = "";
        if (!extra) {
            ctl_buf b = {0};
            set_from_json(text, &b);
            ctl_schema *s = NULL;
            if (ctl_schema_load(b.data, b.len, &s, err, sizeof err) != 0)
                fail_msg("4096 fields: %s", err);
            assert_int_equal(msg(s, "M")->nfields, 4096);
            assert_string_equal(field(msg(s, "M"), "f4096")->json_name, "f4096");
            ctl_schema_free(s);
            ctl_buf_free(&b);
        } else {
            load_fails(text, err, sizeof err);
            assert_string_equal(err, "malformed descriptor set: more than 4096 fields in a message");
        }
        free(text);
    }
    /* a name of 1024 bytes loads, of 1025 not (CTL_SCHEMA_MAX_NAME) */
    char name[1026], text[1200], err[ERR_CAP] = "";
    memset(name, 'a', sizeof name - 1);
    name[1025] = '\0';
    snprintf(text, sizeof text, "{\"file\":[{\"messageType\":[{\"name\":\"%s\"}]}]}", name);
    load_fails(text, err, sizeof err);
    assert_string_equal(err, "malformed descriptor set: message: 1025 bytes (at most 1024)");
    name[1024] = '\0';
    snprintf(text, sizeof text, "{\"file\":[{\"messageType\":[{\"name\":\"%s\"}]}]}", name);
    ctl_buf b = {0};
    set_from_json(text, &b);
    ctl_schema *s = NULL;
    assert_int_equal(ctl_schema_load(b.data, b.len, &s, err, sizeof err), 0);
    assert_non_null(ctl_schema_message(s, name));
    ctl_schema_free(s);
    ctl_buf_free(&b);
}

/* Puts the varint v in front of buf[0..*n) (cap bytes): its length prefix, or a tag. */
static void prepend_varint(uint8_t *buf, size_t *n, size_t cap, uint64_t v)
{
    uint8_t tmp[10];
    size_t k = 0;
    do {
        tmp[k++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    assert_true(*n + k <= cap);
    memmove(buf + k, buf, *n);
    memcpy(buf, tmp, k);
    *n += k;
}

static void test_schema_nesting_limit(void **state)
{
    (void)state;
    /* messages nested CTL_SCHEMA_MAX_NESTING deep load; one more does not (built as bytes:
     * JSON that deep is past the codec's own limit) */
    for (int extra = 0; extra < 2; extra++) {
        int depth = CTL_SCHEMA_MAX_NESTING + extra;
        uint8_t buf[1024];
        size_t n = 0;
        for (int i = depth - 1; i >= 0; i--) {
            char name[8];
            int len = snprintf(name, sizeof name, "M%d", i);
            if (n > 0) { /* the one inside as DescriptorProto.nested_type (3) */
                prepend_varint(buf, &n, sizeof buf, n);
                prepend_varint(buf, &n, sizeof buf, 3 << 3 | 2);
            }
            assert_true(n + (size_t)len + 2 <= sizeof buf);
            memmove(buf + 2 + len, buf, n);
            buf[0] = 1 << 3 | 2; /* name */
            buf[1] = (uint8_t)len;
            memcpy(buf + 2, name, (size_t)len);
            n += 2 + (size_t)len;
        }
        prepend_varint(buf, &n, sizeof buf, n);
        prepend_varint(buf, &n, sizeof buf, 4 << 3 | 2); /* FileDescriptorProto.message_type */
        prepend_varint(buf, &n, sizeof buf, n);
        prepend_varint(buf, &n, sizeof buf, 1 << 3 | 2); /* FileDescriptorSet.file */
        char err[ERR_CAP] = "";
        ctl_schema *s = NULL;
        int rc = ctl_schema_load(buf, n, &s, err, sizeof err);
        if (!extra) {
            if (rc != 0)
                fail_msg("depth %d: %s", depth, err);
            char deepest[256];
            size_t k = 0;
            for (int i = 0; i < depth; i++)
                k += (size_t)snprintf(deepest + k, sizeof deepest - k, "%sM%d", i ? "." : "", i);
            assert_non_null(ctl_schema_message(s, deepest));
            assert_non_null(ctl_schema_message(s, ".M0.M1.M2"));
            assert_null(ctl_schema_message(s, "M31")); /* no package: its name is the full one */
            ctl_schema_free(s);
        } else {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(err, "malformed descriptor set: messages nested deeper than 32"));
        }
    }
}

static int setup(void **state)
{
    (void)state;
    char err[ERR_CAP];
    if (ctl_schema_load(lagoon_schema, lagoon_schema_size, &schema, err, sizeof err) != 0) {
        fprintf(stderr, "built-in schema: %s\n", err);
        return -1;
    }
    ctl_buf b = {0};
    const ctl_message *fds = ctl_schema_message(schema, "google.protobuf.FileDescriptorSet");
    json_t *j = json_loads(tv1_json, 0, NULL);
    int rc = fds != NULL && j != NULL ? ctl_json_encode(fds, j, &b, err, sizeof err) : -1;
    json_decref(j);
    if (rc == 0)
        rc = ctl_schema_load(b.data, b.len, &tschema, err, sizeof err);
    ctl_buf_free(&b);
    if (rc != 0) {
        fprintf(stderr, "t.v1: %s\n", rc == 0 ? "" : err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ctl_schema_free(schema);
    ctl_schema_free(tschema);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_methods_by_every_name),
        cmocka_unit_test(test_method_kinds_and_options),
        cmocka_unit_test(test_fields_and_bounds),
        cmocka_unit_test(test_decode_send_request_as_nanopb_wrote_it),
        cmocka_unit_test(test_decode_direct_message_as_nanopb_wrote_it),
        cmocka_unit_test(test_decode_presence_and_bytes),
        cmocka_unit_test(test_encode_is_what_nanopb_reads),
        cmocka_unit_test(test_encode_appends),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_decode_every_prefix),
        cmocka_unit_test(test_own_schema),
        cmocka_unit_test(test_own_schema_roundtrips),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_schema_truncated),
        cmocka_unit_test(test_schema_errors),
        cmocka_unit_test(test_schema_nesting_limit),
        cmocka_unit_test(test_schema_limits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
