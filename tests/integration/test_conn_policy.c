/* The connection policy of rpc/server.c through the raw protocol: the maximum connection age
 * (GOAWAY, calls finish within the grace, or end with UNAVAILABLE after it) and the keepalive
 * policy (SETTINGS carries it; a client that pings faster is sent GOAWAY and closed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>

#include "lagoon.h"
#include "lagoon_async.h"
#include "lagoon/v1/auth.pb.h"
#include "lagoon/v1/health.pb.h"
#include "lagoon/v1/rpc.pb.h"
#include "lagoon_idl.h"
#include "lagoon_stubs.h"
#include "testserver.h"

static uint8_t buf[1 << 16];

/* The next frame that is not a PONG, within 10 s; fails the test on EOF. */
static void next_frame(int fd, wire_frame *f)
{
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), f, 10000), 1);
        if (f->type != WIRE_PONG)
            return;
    }
    fail_msg("only PONGs");
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A client stream (Debug/EchoCollect, call 1) left open, known to be open once call 3 after
 * it is answered. */
static int open_stream(uint16_t port)
{
    int fd = raw_connect(port, 1);
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoCollect.id, NULL, 0, NULL, 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    wire_frame f;
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 3);
    assert_int_equal(f.code, LAGOON_OK);
    return fd;
}

static void test_max_age_goaway_lets_calls_finish(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_connection_age_ms = 1000;
    cfg.max_connection_age_grace_ms = 60000;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = open_stream(t.port);
    wire_frame f;
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_GOAWAY);
    assert_int_equal(f.code, 3); /* the last call accepted */
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "max_connection_age"));
    /* No new call on this connection... */
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 5, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    next_frame(fd, &f);
    assert_int_equal(f.call_id, 5);
    assert_int_equal(f.code, LAGOON_UNAVAILABLE);
    /* ...but the open one still finishes, and then the connection closes. */
    raw_send_frame(fd, WIRE_MESSAGE, WIRE_FLAG_END_STREAM | WIRE_FLAG_NO_MESSAGE, 1, 0, NULL, 0, NULL, 0);
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    assert_int_equal(f.code, LAGOON_OK);
    assert_true(raw_wait_closed(fd, 10000));
    close(fd);
    /* A new connection is served as usual. */
    fd = raw_connect(t.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    next_frame(fd, &f);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
    test_server_stop(&t);
}

static void test_max_age_grace_ends_open_calls(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_connection_age_ms = 1000;
    cfg.max_connection_age_grace_ms = 0;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = open_stream(t.port);
    wire_frame f;
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_GOAWAY);
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    assert_int_equal(f.code, LAGOON_UNAVAILABLE);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "maximum age"));
    assert_true(raw_wait_closed(fd, 10000));
    close(fd);
    test_server_stop(&t);
}

static void age_now(app_config *acfg, rpc_config *cfg)
{
    (void)acfg;
    cfg->max_connection_age_ms = 1000;
    cfg->max_connection_age_grace_ms = 0;
}

/* A write still in the store when the grace ends: the call is answered UNAVAILABLE once, the
 * connection closes, and the write's later completion (on a connection gone) neither answers
 * again nor touches freed memory (ASan); the server goes on serving. */
static void test_max_age_grace_ends_a_write_in_flight(void **state)
{
    (void)state;
    test_app t;
    test_app_start(&t, age_now);
    test_hold hold = TEST_HOLD_INIT;
    test_hold_writer(&t, &hold);
    int fd = raw_connect(t.srv.port, 1);
    lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
    snprintf(req.email, sizeof(req.email), "aged@example.com");
    snprintf(req.username, sizeof(req.username), "aged");
    snprintf(req.password, sizeof(req.password), "a long enough passphrase 7");
    raw_send_call(fd, 1, &lagoon_method_Auth_Register, NULL, NULL, 0, &lagoon_v1_RegisterRequest_info, &req);
    uint32_t id = 0;
    char msg[256];
    assert_int_equal(raw_read_reply(fd, &id, msg, sizeof(msg)), LAGOON_UNAVAILABLE);
    assert_int_equal(id, 1);
    assert_non_null(strstr(msg, "maximum age"));
    assert_true(raw_wait_closed(fd, 10000));
    close(fd);
    test_hold_release(&hold);
    assert_true(test_hold_wait(&hold, &hold.done));
    /* The write's completion has somewhere to go or not; the server still answers. */
    fd = raw_connect(t.srv.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    assert_int_equal(raw_read_reply(fd, &id, NULL, 0), LAGOON_OK);
    close(fd);
    test_app_stop(&t);
}

/* SETTINGS as the server sends it; its frame in *frame (pointing into buf). */
static void read_settings(uint16_t port, lagoon_v1_Settings *st, int *fd_out, wire_frame *frame)
{
    int fd = raw_connect(port, 0);
    raw_send(fd, WIRE_PREFACE, WIRE_PREFACE_LEN);
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_SETTINGS);
    wire_violation v;
    *st = (lagoon_v1_Settings)lagoon_v1_Settings_init_zero;
    assert_int_equal(wire_decode(&lagoon_v1_Settings_info, f.payload, f.payload_len, st, &v), 0);
    *fd_out = fd;
    *frame = f;
}

static void ping(int fd)
{
    uint8_t payload[WIRE_PING_PAYLOAD] = {1, 2, 3, 4, 5, 6, 7, 8};
    raw_send_frame(fd, WIRE_PING, 0, 0, 0, NULL, 0, payload, sizeof(payload));
}

static void test_ping_flood_gets_goaway(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.min_ping_interval_ms = 60000;
    cfg.max_connection_age_ms = 3600000;
    test_server_start(&t, &cfg, NULL, 0);
    lagoon_v1_Settings st;
    int fd;
    wire_frame f;
    read_settings(t.port, &st, &fd, &f);
    assert_int_equal(st.min_ping_interval_ms, 60000);
    assert_int_equal(st.max_connection_age_ms, 3600000);
    /* The bytes docs/PROTOCOL.md §8 gives for these two fields, and the frame length. */
    static const uint8_t policy[] = {0x48, 0xe0, 0xd4, 0x03, 0x50, 0x80, 0xdd, 0xdb, 0x01};
    assert_int_equal(f.length, 0x33);
    assert_true(f.payload_len >= sizeof(policy));
    assert_memory_equal(f.payload + f.payload_len - sizeof(policy), policy, sizeof(policy));
    /* The first PING and RPC_PING_STRIKES_MAX early ones are answered; the next is not. */
    for (int i = 0; i < RPC_PING_STRIKES_MAX + 2; i++)
        ping(fd);
    for (int i = 0; i < RPC_PING_STRIKES_MAX + 1; i++) {
        assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 10000), 1);
        assert_int_equal(f.type, WIRE_PONG);
    }
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 10000), 1);
    assert_int_equal(f.type, WIRE_GOAWAY);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "too_many_pings"));
    assert_non_null(strstr(msg, "60000 ms"));
    assert_true(raw_wait_closed(fd, 10000));
    close(fd);
    test_server_stop(&t);
}

static void test_pings_on_time_are_answered(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.min_ping_interval_ms = 100;
    test_server_start(&t, &cfg, NULL, 0);
    lagoon_v1_Settings st;
    int fd;
    wire_frame f;
    read_settings(t.port, &st, &fd, &f);
    assert_int_equal(st.min_ping_interval_ms, 100);
    assert_int_equal(st.max_connection_age_ms, 0);
    for (int i = 0; i < 2 * RPC_PING_STRIKES_MAX + 2; i++) {
        ping(fd);
        assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 10000), 1);
        assert_int_equal(f.type, WIRE_PONG);
        sleep_ms(150); /* at least the interval, whatever the scheduler does */
    }
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    next_frame(fd, &f);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
    test_server_stop(&t);
}

static void count_warning(void *arg, const char *msg)
{
    assert_non_null(strstr(msg, "another IDL"));
    (*(int *)arg)++;
}

/* Connects to a server sending hash (NULL: none), strict or not: the status, the match, and
 * how many warnings were reported. */
static int connect_with(const uint8_t *hash, int strict, int *matches, int *warnings)
{
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.schema_hash = hash;
    test_server_start(&t, &cfg, NULL, 0);
    *warnings = 0;
    lagoon_options o = {.strict_schema = strict, .warn = count_warning, .warn_arg = warnings};
    lagoon_client *c = NULL;
    lagoon_error err;
    int st = lagoon_connect("127.0.0.1", t.port, &o, &c, &err);
    *matches = c ? lagoon_schema_matches(c) : -2;
    if (st != LAGOON_OK)
        assert_non_null(strstr(err.detail.message, "another IDL"));
    lagoon_close(c);
    test_server_stop(&t);
    return st;
}

static void test_schema_hash_is_compared(void **state)
{
    (void)state;
    uint8_t other[LAGOON_SCHEMA_HASH_SIZE];
    memcpy(other, lagoon_schema_hash, sizeof(other));
    other[LAGOON_SCHEMA_HASH_SIZE - 1] ^= 1;
    int matches, warnings;
    /* The same IDL: nothing to say, strict or not. */
    assert_int_equal(connect_with(lagoon_schema_hash, 1, &matches, &warnings), LAGOON_OK);
    assert_int_equal(matches, 1);
    assert_int_equal(warnings, 0);
    /* Another IDL: a warning by default... */
    assert_int_equal(connect_with(other, 0, &matches, &warnings), LAGOON_OK);
    assert_int_equal(matches, 0);
    assert_int_equal(warnings, 1);
    /* ...an error in strict mode. */
    assert_int_equal(connect_with(other, 1, &matches, &warnings), LAGOON_FAILED_PRECONDITION);
    assert_int_equal(warnings, 0);
    /* A server that sends none is not checked. */
    assert_int_equal(connect_with(NULL, 1, &matches, &warnings), LAGOON_OK);
    assert_int_equal(matches, -1);
    assert_int_equal(warnings, 0);
}

typedef struct async_done {
    struct event_base *base;
    int status; /* -100 until done */
    char message[sizeof(((lagoon_v1_ResponseMeta *)0)->message)];
} async_done;

static void on_async_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    async_done *d = arg;
    d->status = status;
    snprintf(d->message, sizeof(d->message), "%s", meta ? meta->message : "");
    event_base_loopbreak(d->base);
}

/* One Health/Check through the async client against a server sending another IDL's hash. */
static void async_check(int strict, async_done *d, int *warnings)
{
    uint8_t other[LAGOON_SCHEMA_HASH_SIZE];
    memcpy(other, lagoon_schema_hash, sizeof(other));
    other[0] ^= 0x80;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.schema_hash = other;
    test_server_start(&t, &cfg, NULL, 0);
    struct event_base *base = event_base_new();
    assert_non_null(base);
    *warnings = 0;
    lagoon_async_options o = {.strict_schema = strict, .warn = count_warning, .warn_arg = warnings};
    lagoon_async *c;
    char err[256];
    assert_int_equal(lagoon_async_connect(base, "127.0.0.1", t.port, &o, &c, err, sizeof(err)), LAGOON_OK);
    d->base = base;
    d->status = -100;
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp = lagoon_v1_HealthCheckResponse_init_zero;
    assert_int_equal(lagoon_async_call(c, &lagoon_method_Health_Check, &req, &resp, on_async_done, d), LAGOON_OK);
    struct timeval ten = {10, 0};
    event_base_loopexit(base, &ten); /* bounded: the test fails below rather than hang */
    event_base_dispatch(base);
    lagoon_async_free(c);
    event_base_free(base);
    test_server_stop(&t);
}

static void test_async_client_compares_schema_hash(void **state)
{
    (void)state;
    async_done d;
    int warnings;
    async_check(0, &d, &warnings);
    assert_int_equal(d.status, LAGOON_OK);
    assert_int_equal(warnings, 1);
    async_check(1, &d, &warnings);
    assert_int_equal(d.status, LAGOON_UNAVAILABLE);
    assert_non_null(strstr(d.message, "another IDL"));
    assert_int_equal(warnings, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_age_goaway_lets_calls_finish),
        cmocka_unit_test(test_max_age_grace_ends_open_calls),
        cmocka_unit_test(test_max_age_grace_ends_a_write_in_flight),
        cmocka_unit_test(test_ping_flood_gets_goaway),
        cmocka_unit_test(test_pings_on_time_are_answered),
        cmocka_unit_test(test_schema_hash_is_compared),
        cmocka_unit_test(test_async_client_compares_schema_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
