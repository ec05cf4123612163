/* The protocol byte by byte against the real server: hostile and broken input, limits,
 * timeouts. Every test reads what the server actually sent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define BUF 70000

static uint8_t rbuf[BUF];

/* Reads frames until one of type `type` arrives; fails the test on EOF or timeout. */
static wire_frame expect_frame(int fd, uint8_t type)
{
    wire_frame f;
    for (;;) {
        int r = raw_read_frame(fd, rbuf, sizeof(rbuf), &f, 5000);
        if (r != 1)
            fail_msg("expected a frame of type %u, got %s", type, r == 0 ? "EOF" : "nothing");
        if (f.type == type)
            return f;
    }
}

static void expect_goaway_and_close(int fd, const char *needle)
{
    wire_frame f = expect_frame(fd, WIRE_GOAWAY);
    char msg[600];
    raw_meta_message(&f, msg, sizeof(msg));
    if (strstr(msg, needle) == NULL)
        fail_msg("GOAWAY says '%s', expected it to mention '%s'", msg, needle);
    assert_true(raw_wait_closed(fd, 5000));
}

/* A RequestMeta with timeout_ms, encoded. */
static size_t meta_with_timeout(uint8_t *out, size_t cap, uint32_t timeout_ms, const char *token)
{
    lagoon_v1_RequestMeta m = lagoon_v1_RequestMeta_init_zero;
    m.timeout_ms = timeout_ms;
    snprintf(m.auth_token, sizeof(m.auth_token), "%s", token ? token : "");
    long n = wire_encode(&lagoon_v1_RequestMeta_info, &m, out, cap, NULL);
    assert_true(n >= 0);
    return (size_t)n;
}

static size_t echo_payload(uint8_t *out, size_t cap, uint32_t delay_ms)
{
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.delay_ms = delay_ms;
    req.payload.size = 3;
    memcpy(req.payload.bytes, "abc", 3);
    long n = wire_encode(&lagoon_v1_EchoRequest_info, &req, out, cap, NULL);
    assert_true(n > 0);
    return (size_t)n;
}

static void check_health(uint16_t port)
{
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", port, NULL, &c, NULL), LAGOON_OK);
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp;
    assert_int_equal(lagoon_Health_Check(c, &req, &resp), LAGOON_OK);
    lagoon_close(c);
}

static int setup(void **state)
{
    test_server *t = calloc(1, sizeof(*t));
    test_server_start(t, NULL, NULL, 0);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    test_server_stop(*state);
    free(*state);
    return 0;
}

/* ---- on the shared server ------------------------------------------------------------------ */

static void test_http_client_gets_plain_text(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 0);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(fd, http, strlen(http));
    char buf[512] = {0};
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    assert_non_null(strstr(buf, "This port speaks Lagoon RPC"));
    assert_int_equal(buf[got - 1], '\n');
    close(fd);
    check_health(t->port);
}

/* The SETTINGS frame of docs/PROTOCOL.md §8, byte for byte, from a server on the defaults. */
static void test_settings_bytes_as_documented(void **state)
{
    test_server *t = *state;
    static const uint8_t documented[] = {
        0x00, 0x00, 0x00, 0x2a, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x08, 0x01, 0x10, 0x80, 0x80, 0x80, 0x02, 0x18, 0x80, 0x08, 0x20, 0xe0, 0xa7, 0x12, 0x28, 0x80, 0x20,
        0x30, 0x80, 0x80, 0x80, 0x10, 0x38, 0xe0, 0xd4, 0x03, 0x40, 0xe0, 0xa7, 0x12,
    };
    int fd = raw_connect(t->port, 0);
    raw_send(fd, "LGN1", 4);
    uint8_t got[sizeof(documented)];
    size_t n = 0;
    while (n < sizeof(got)) {
        ssize_t r = recv(fd, got + n, sizeof(got) - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    assert_int_equal(n, sizeof(documented));
    assert_memory_equal(got, documented, sizeof(documented));
    close(fd);
}

static void test_ping_pong(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    const uint8_t payload[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    raw_send_frame(fd, WIRE_PING, 0, 0, 0, NULL, 0, payload, 8);
    wire_frame f = expect_frame(fd, WIRE_PONG);
    assert_int_equal(f.payload_len, 8);
    assert_memory_equal(f.payload, payload, 8);
    close(fd);
}

static void test_oversize_frame_refused_from_its_length(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    /* Only the 4 length bytes: the server must not wait for a 4 MiB body. */
    uint8_t len[4];
    wire_put32(len, (4u << 20) + 1);
    raw_send(fd, len, 4);
    expect_goaway_and_close(fd, "maximum frame size");
    close(fd);
}

static void test_malformed_headers_get_goaway(void **state)
{
    test_server *t = *state;
    static const struct {
        uint8_t type, flags;
        uint32_t call_id;
        const char *needle;
    } cases[] = {
        {0, 0, 1, "unknown frame type"},
        {9, 0, 1, "unknown frame type"},
        {WIRE_REQUEST, 0x40, 1, "unknown flag"},
        {WIRE_REQUEST, 0, 0, "call id 0"},
        {WIRE_PING, 0, 3, "non-zero call id"},
        {WIRE_RESPONSE, 0, 1, "server only"},
        {WIRE_MESSAGE, 0, 77, "not open"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = raw_connect(t->port, 1);
        uint8_t body[8] = {0};
        size_t blen = cases[i].type == WIRE_PING ? 8 : 0;
        raw_send_frame(fd, cases[i].type, cases[i].flags, cases[i].call_id, 0, NULL, 0, body, blen);
        expect_goaway_and_close(fd, cases[i].needle);
        close(fd);
    }
    check_health(t->port);
}

static void test_reused_call_id(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    uint8_t p[64];
    size_t n = echo_payload(p, sizeof(p), 300);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 5, lagoon_method_Debug_Echo.id, NULL, 0, p, n);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 5, lagoon_method_Debug_Echo.id, NULL, 0, p, n);
    expect_goaway_and_close(fd, "reuses");
    close(fd);
}

static void test_bad_protobuf_names_the_field(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    /* EchoRequest.payload (field 1, bytes) of 20000 bytes: over its 16384 bound. */
    static uint8_t big[20010];
    size_t n = 0;
    big[n++] = 0x0a;
    for (uint32_t v = 20000; ; v >>= 7) { /* varint length */
        big[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        if (v <= 0x7f)
            break;
    }
    memset(big + n, 'x', 20000);
    n += 20000;
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Debug_Echo.id, NULL, 0, big, n);
    wire_frame f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    assert_int_equal(f.code, LAGOON_INVALID_ARGUMENT);
    lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
    wire_violation v;
    assert_int_equal(wire_decode(&lagoon_v1_ResponseMeta_info, f.meta, f.meta_len, &meta, &v), 0);
    assert_int_equal(meta.violations_count, 1);
    assert_string_equal(meta.violations[0].field, "payload");
    if (strstr(meta.violations[0].description, "16384") == NULL)
        fail_msg("description: %s", meta.violations[0].description);

    /* Garbage: a truncated varint. */
    const uint8_t junk[] = {0x10, 0xff, 0xff};
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 2, lagoon_method_Debug_Echo.id, NULL, 0, junk,
                   sizeof(junk));
    f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 2);
    assert_int_equal(f.code, LAGOON_INVALID_ARGUMENT);
    char msg[600];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "delay_ms"));

    /* Malformed metadata. */
    const uint8_t badmeta[] = {0x0a, 0x50, 'x'};
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, lagoon_method_Debug_Echo.id, badmeta,
                   sizeof(badmeta), NULL, 0);
    f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 3);
    assert_int_equal(f.code, LAGOON_INVALID_ARGUMENT);
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "metadata"));

    /* The connection is still fine: bad payloads are call errors, not protocol errors. */
    uint8_t p[64];
    n = echo_payload(p, sizeof(p), 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 4, lagoon_method_Debug_Echo.id, NULL, 0, p, n);
    f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 4);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
}

static void test_unknown_method_raw(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 9, 0xdeadbeef, NULL, 0, NULL, 0);
    wire_frame f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 9);
    assert_int_equal(f.code, LAGOON_UNIMPLEMENTED);
    char msg[600];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "0xdeadbeef"));
    /* CANCEL of a call that is not open is ignored (it may have raced with the answer). */
    raw_send_frame(fd, WIRE_CANCEL, 0, 9, 0, NULL, 0, NULL, 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 10, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 10);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
}

static void test_server_enforces_deadline(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    uint8_t meta[64], p[64];
    size_t ml = meta_with_timeout(meta, sizeof(meta), 100, NULL);
    size_t n = echo_payload(p, sizeof(p), 3000);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Debug_Echo.id, meta, ml, p, n);
    wire_frame f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    assert_int_equal(f.code, LAGOON_DEADLINE_EXCEEDED);
    close(fd);
}

static void test_half_close_streaming_raw(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    uint8_t p[64];
    size_t n = echo_payload(p, sizeof(p), 0);
    /* Client streaming: REQUEST (first message), MESSAGE, then a bare half-close. */
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoCollect.id, NULL, 0, p, n);
    raw_send_frame(fd, WIRE_MESSAGE, 0, 1, 0, NULL, 0, p, n);
    raw_send_frame(fd, WIRE_MESSAGE, WIRE_FLAG_END_STREAM | WIRE_FLAG_NO_MESSAGE, 1, 0, NULL, 0, NULL, 0);
    wire_frame f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.code, LAGOON_OK);
    lagoon_v1_EchoCollectResponse resp;
    wire_violation v;
    assert_int_equal(wire_decode(&lagoon_v1_EchoCollectResponse_info, f.payload, f.payload_len, &resp, &v), 0);
    assert_int_equal(resp.count, 2);
    /* A MESSAGE on a call whose client side has ended (here: a server stream still
     * running) is a protocol violation. */
    lagoon_v1_EchoStreamRequest sreq = lagoon_v1_EchoStreamRequest_init_zero;
    sreq.count = 3;
    sreq.interval_ms = 500;
    long sn = wire_encode(&lagoon_v1_EchoStreamRequest_info, &sreq, p, sizeof(p), NULL);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 2, lagoon_method_Debug_EchoStream.id, NULL, 0, p,
                   (size_t)sn);
    raw_send_frame(fd, WIRE_MESSAGE, 0, 2, 0, NULL, 0, p, (size_t)sn);
    expect_goaway_and_close(fd, "after END_STREAM");
    close(fd);
}

/* ---- servers with small limits --------------------------------------------------------------- */

static test_server *g_server;

static int no_connections(void *arg)
{
    (void)arg;
    return rpc_server_connections(g_server->server) == 0;
}

static void test_max_concurrent_calls(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_concurrent_calls = 2;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    uint8_t p[64];
    size_t n = echo_payload(p, sizeof(p), 200);
    for (uint32_t id = 1; id <= 3; id++)
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Debug_Echo.id, NULL, 0, p, n);
    wire_frame f = expect_frame(fd, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 3);
    assert_int_equal(f.code, LAGOON_RESOURCE_EXHAUSTED);
    int seen = 0;
    for (int i = 0; i < 2; i++) {
        f = expect_frame(fd, WIRE_RESPONSE);
        assert_int_equal(f.code, LAGOON_OK);
        seen |= 1 << f.call_id;
    }
    assert_int_equal(seen, (1 << 1) | (1 << 2));
    close(fd);
    test_server_stop(&t);
}

static void test_metadata_limit(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_metadata_size = 64;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    uint8_t meta[100];
    memset(meta, 0, sizeof(meta));
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, meta, sizeof(meta),
                   NULL, 0);
    expect_goaway_and_close(fd, "maximum metadata size");
    close(fd);
    test_server_stop(&t);
}

static void test_too_many_connections(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_connections = 2;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    int a = raw_connect(t.port, 1), b = raw_connect(t.port, 1);
    lagoon_client *c = NULL;
    lagoon_error err;
    assert_int_equal(lagoon_connect("127.0.0.1", t.port, NULL, &c, &err), LAGOON_UNAVAILABLE);
    assert_null(c);
    assert_non_null(strstr(err.detail.message, "too many connections"));
    close(a);
    g_server = &t;
    /* Once one leaves, a new client gets in. */
    close(b);
    assert_true(test_wait_for(no_connections, NULL, 5000));
    assert_int_equal(lagoon_connect("127.0.0.1", t.port, NULL, &c, &err), LAGOON_OK);
    lagoon_close(c);
    test_server_stop(&t);
}

static void test_handshake_and_idle_timeouts(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.handshake_timeout_ms = 200;
    cfg.idle_timeout_ms = 1000;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    /* Says nothing: closed after the handshake timeout, without a word. */
    int silent = raw_connect(t.port, 0);
    assert_true(raw_wait_closed(silent, 5000));
    close(silent);
    /* Sends the preface, then idles: GOAWAY "idle timeout", then closed. */
    int idle = raw_connect(t.port, 1);
    expect_goaway_and_close(idle, "idle");
    close(idle);
    /* A connection with an open call is not idle, however quiet. */
    int busy = raw_connect(t.port, 1);
    lagoon_v1_EchoStreamRequest req = lagoon_v1_EchoStreamRequest_init_zero;
    req.count = 3;
    req.interval_ms = 700;
    uint8_t p[64];
    long n = wire_encode(&lagoon_v1_EchoStreamRequest_info, &req, p, sizeof(p), NULL);
    raw_send_frame(busy, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Debug_EchoStream.id, NULL, 0, p,
                   (size_t)n);
    wire_frame f = expect_frame(busy, WIRE_RESPONSE); /* after 2.1 s, past the idle timeout */
    assert_int_equal(f.code, LAGOON_OK);
    close(busy);
    test_server_stop(&t);
}

static void test_slow_reader_is_disconnected(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_frame_size = 65536;
    cfg.max_output_buffer = 256 * 1024;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    g_server = &t;
    int fd = raw_connect_small(t.port, 1, 4096);
    /* Bidi echo: keep sending 16 KiB messages and never read the echoes. */
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.payload.size = 16384;
    memset(req.payload.bytes, 'z', 16384);
    static uint8_t p[17000];
    long n = wire_encode(&lagoon_v1_EchoRequest_info, &req, p, sizeof(p), NULL);
    assert_true(n > 16384);
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoChat.id, NULL, 0, p, (size_t)n);
    for (int i = 0; i < 2000 && rpc_server_connections(t.server) > 0; i++)
        raw_send_frame(fd, WIRE_MESSAGE, 0, 1, 0, NULL, 0, p, (size_t)n);
    /* The server cut the connection instead of buffering 32 MB for it. */
    assert_true(test_wait_for(no_connections, NULL, 10000));
    close(fd);
    check_health(t.port);
    test_server_stop(&t);
}

/* Regression: a deadline and the stream's own end in the same loop iteration used to run the
 * cancel callback after the handler had freed its state (use-after-free under ASan). */
static void test_deadline_racing_stream_end(void **state)
{
    test_server *t = *state;
    int fd = raw_connect(t->port, 1);
    uint8_t meta[64], p[64];
    size_t ml = meta_with_timeout(meta, sizeof(meta), 20, NULL);
    lagoon_v1_EchoStreamRequest req = lagoon_v1_EchoStreamRequest_init_zero;
    req.count = 5;
    req.interval_ms = 20;
    long n = wire_encode(&lagoon_v1_EchoStreamRequest_info, &req, p, sizeof(p), NULL);
    for (uint32_t id = 1; id <= 50; id++)
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Debug_EchoStream.id, meta, ml, p,
                       (size_t)n);
    int responses = 0;
    wire_frame f;
    while (responses < 50 && raw_read_frame(fd, rbuf, sizeof(rbuf), &f, 5000) == 1)
        responses += f.type == WIRE_RESPONSE;
    assert_int_equal(responses, 50);
    close(fd);
    check_health(t->port);
}

/* Regression: an undecodable request whose error reply pushed the output over its cap freed
 * the call under the reply (use-after-free under ASan). */
static void test_bad_input_at_output_cap(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_frame_size = 4096;
    cfg.max_output_buffer = 65536;
    test_server t;
    test_server_start(&t, &cfg, NULL, 0);
    g_server = &t;
    /* A small receive buffer: the kernel would otherwise take megabytes of replies first. */
    int fd = raw_connect_small(t.port, 1, 4096);
    const uint8_t junk[] = {0xff};
    /* Never read: every error reply piles up until the cap closes the connection. Bounded in
     * count and in time. */
    time_t until = time(NULL) + 30;
    for (uint32_t id = 1; id <= 300000 && rpc_server_connections(t.server) > 0 && time(NULL) < until; id++)
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Debug_Echo.id, NULL, 0, junk,
                       sizeof(junk));
    assert_true(test_wait_for(no_connections, NULL, 10000));
    close(fd);
    check_health(t.port);
    test_server_stop(&t);
}

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_http_client_gets_plain_text),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_settings_bytes_as_documented),
        cmocka_unit_test(test_oversize_frame_refused_from_its_length),
        cmocka_unit_test(test_malformed_headers_get_goaway),
        cmocka_unit_test(test_reused_call_id),
        cmocka_unit_test(test_bad_protobuf_names_the_field),
        cmocka_unit_test(test_unknown_method_raw),
        cmocka_unit_test(test_server_enforces_deadline),
        cmocka_unit_test(test_half_close_streaming_raw),
        cmocka_unit_test(test_deadline_racing_stream_end),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_max_concurrent_calls),
        cmocka_unit_test(test_metadata_limit),
        cmocka_unit_test(test_too_many_connections),
        cmocka_unit_test(test_handshake_and_idle_timeouts),
        cmocka_unit_test(test_slow_reader_is_disconnected),
        cmocka_unit_test(test_bad_input_at_output_cap),
    };
    int failed = cmocka_run_group_tests_name("protocol", shared, setup, teardown);
    failed += cmocka_run_group_tests_name("limits", own, NULL, NULL);
    return failed;
}
