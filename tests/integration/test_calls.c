/* Calls through the generated clients against the real server: every streaming kind,
 * multiplexing, cancel, deadline, unknown method, authorization. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <pb_decode.h>

#include "lagoon_async_stubs.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "testserver.h"

static lagoon_client *connect_to(const test_server *t)
{
    lagoon_client *c = NULL;
    lagoon_error err;
    int st = lagoon_connect("127.0.0.1", t->port, NULL, &c, &err);
    if (st != LAGOON_OK)
        fail_msg("connect: %s", err.detail.message);
    return c;
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

static void fill_payload(pb_bytes_array_t *b, size_t n, uint8_t seed)
{
    b->size = (pb_size_t)n;
    for (size_t i = 0; i < n; i++)
        b->bytes[i] = (uint8_t)(seed + i * 7);
}

static void test_health_and_settings(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    const lagoon_v1_Settings *st = lagoon_settings(c);
    assert_int_equal(st->protocol_version, 1);
    assert_int_equal(st->max_frame_size, 4u << 20);
    assert_int_equal(st->max_concurrent_calls, 1024);
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp;
    assert_int_equal(lagoon_Health_Check(c, &req, &resp), LAGOON_OK);
    assert_int_equal(resp.status, lagoon_v1_HealthCheckResponse_ServingStatus_SERVING);
    assert_string_equal(resp.version, "0.1.0");
    assert_int_equal(resp.connections, 1);
    assert_int_equal(resp.active_calls, 1); /* this call */
    uint64_t rtt = 0;
    assert_int_equal(lagoon_ping(c, &rtt), LAGOON_OK);
    assert_true(rtt > 0);
    lagoon_close(c);
}

static void test_reflection_lists_every_method(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_ListMethodsRequest req = lagoon_v1_ListMethodsRequest_init_zero;
    lagoon_v1_ListMethodsResponse resp = lagoon_v1_ListMethodsResponse_init_zero;
    assert_int_equal(lagoon_Reflection_ListMethods(c, &req, &resp), LAGOON_OK);
    assert_int_equal(resp.methods_count, lagoon_methods_count);
    int seen_stream = 0;
    for (size_t i = 0; i < resp.methods_count; i++) {
        const lagoon_v1_MethodInfo *mi = &resp.methods[i];
        assert_int_equal(mi->id, wire_method_id(mi->path));
        const wire_method *m = lagoon_methods[0];
        int found = 0;
        for (size_t j = 0; j < lagoon_methods_count; j++)
            if (lagoon_methods[j]->id == mi->id) {
                m = lagoon_methods[j];
                found = 1;
            }
        assert_true(found);
        assert_string_equal(mi->path, m->path);
        assert_string_equal(mi->request_type, m->request_type);
        assert_string_equal(mi->response_type, m->response_type);
        assert_int_equal(mi->kind, m->kind);
        assert_int_equal(mi->access, m->access);
        if (strcmp(mi->path, "/lagoon.v1.Debug/EchoStream") == 0) {
            assert_int_equal(mi->kind, lagoon_v1_MethodInfo_Kind_SERVER_STREAMING);
            seen_stream = 1;
        }
    }
    assert_true(seen_stream);
    pb_release(lagoon_v1_ListMethodsResponse_fields, &resp);
    lagoon_close(c);
}

/* GetSchema: the schema built in, whole, with the bounds and options PROTOCOL.md quotes. */
static void test_reflection_serves_the_schema(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    assert_int_equal(lagoon_method_Reflection_GetSchema.id, 0x2353c26cu); /* PROTOCOL.md, method ids */
    lagoon_v1_GetSchemaRequest req = lagoon_v1_GetSchemaRequest_init_zero;
    lagoon_v1_GetSchemaResponse resp = lagoon_v1_GetSchemaResponse_init_zero;
    lagoon_bytes set = {.max = lagoon_schema_max};
    resp.file_descriptor_set.funcs.decode = lagoon_bytes_decode;
    resp.file_descriptor_set.arg = &set;
    assert_int_equal(lagoon_Reflection_GetSchema(c, &req, &resp), LAGOON_OK);
    assert_non_null(set.data);
    assert_true(lagoon_schema_size > 65535); /* past nanopb's 16-bit bytes sizes: why it is a callback */
    assert_int_equal(set.len, lagoon_schema_size);
    assert_memory_equal(set.data, lagoon_schema, lagoon_schema_size);
    free(set.data);
    /* A client that accepts less refuses the reply instead of reading a cut schema. */
    lagoon_v1_GetSchemaResponse small = lagoon_v1_GetSchemaResponse_init_zero;
    lagoon_bytes cut = {.max = 65535};
    small.file_descriptor_set.funcs.decode = lagoon_bytes_decode;
    small.file_descriptor_set.arg = &cut;
    assert_int_equal(lagoon_Reflection_GetSchema(c, &req, &small), LAGOON_INTERNAL);
    assert_null(cut.data);
    /* TextContent.text's options: the bounds option, field 50006, max_length 16000. */
    static const uint8_t bounds[] = {0xb2, 0xb5, 0x18, 0x03, 0x08, 0x80, 0x7d};
    int found = 0;
    for (size_t i = 0; i + sizeof(bounds) <= lagoon_schema_size && !found; i++)
        found = memcmp(lagoon_schema + i, bounds, sizeof(bounds)) == 0;
    assert_true(found);
    assert_true(lagoon_schema_size <= lagoon_schema_max); /* reflection.options' max_size */
    lagoon_close(c);
}

static void test_unary_echo_and_errors(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse resp;
    fill_payload((pb_bytes_array_t *)&req.payload, 16384, 3);
    lagoon_set_request_id(c, "req-42");
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_OK);
    assert_int_equal(resp.payload.size, 16384);
    assert_memory_equal(resp.payload.bytes, req.payload.bytes, 16384);

    /* A handler's error status, message and request id reach the client. */
    req.fail_code = LAGOON_NOT_FOUND;
    lagoon_set_request_id(c, "req-43");
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_NOT_FOUND);
    assert_string_equal(lagoon_last_error(c)->detail.message, "failure requested with fail_code");
    assert_string_equal(lagoon_last_error(c)->detail.request_id, "req-43");

    /* The fields' rules from the IDL ((lagoon.v1.rules) in debug.proto) are checked before the
     * handler runs, and every broken one comes back at once, in field order. */
    req.fail_code = 99;
    req.delay_ms = 20000;
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(lagoon_last_error(c)->detail.violations_count, 2);
    assert_string_equal(lagoon_last_error(c)->detail.violations[0].field, "delay_ms");
    assert_string_equal(lagoon_last_error(c)->detail.violations[0].description, "must be at most 10000");
    assert_string_equal(lagoon_last_error(c)->detail.violations[1].field, "fail_code");
    assert_string_equal(lagoon_last_error(c)->detail.violations[1].description, "must be at most 16");
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "invalid lagoon.v1.EchoRequest: delay_ms"));
    req.delay_ms = 0;

    /* A unary call that completes from a worker thread. */
    req.fail_code = 0;
    req.delay_ms = 20;
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_OK);
    assert_int_equal(resp.payload.size, 16384);
    lagoon_close(c);
}

/* The violations of one EchoStream call with this probe: count, then pairs of field (under probe.)
 * and description. */
static void expect_probe(lagoon_client *c, const lagoon_v1_EchoProbe *probe, int n, const char *const *want)
{
    lagoon_v1_EchoStreamRequest req = lagoon_v1_EchoStreamRequest_init_zero;
    req.has_probe = true;
    req.probe = *probe;
    lagoon_stream *s;
    assert_int_equal(lagoon_Debug_EchoStream(c, &req, &s), LAGOON_OK);
    lagoon_v1_EchoResponse msg;
    assert_int_equal(lagoon_Debug_EchoStream_recv(s, &msg), 0); /* count 0: no message */
    int st = lagoon_stream_finish(s, NULL);
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    if (n == 0) {
        assert_int_equal(st, LAGOON_OK);
        return;
    }
    assert_int_equal(st, LAGOON_INVALID_ARGUMENT);
    if ((int)m->violations_count != n)
        fail_msg("%u violations (first %s: %s), want %d", (unsigned)m->violations_count,
                 m->violations_count ? m->violations[0].field : "-",
                 m->violations_count ? m->violations[0].description : "-", n);
    /* The probe is EchoStreamRequest.probe: every path starts there. */
    char path[128];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "probe.%s", want[2 * i]);
        assert_string_equal(m->violations[i].field, path);
        assert_string_equal(m->violations[i].description, want[2 * i + 1]);
    }
    char first[300];
    snprintf(first, sizeof(first), "invalid lagoon.v1.EchoStreamRequest: probe.%s: %s", want[0], want[1]);
    assert_non_null(strstr(m->message, first));
}

/* Rules inside a request's submessages (debug.proto's EchoProbe, in EchoStreamRequest): checked by the server before
 * the method runs, named by dotted path, items by index, optional fields only when present. */
static void test_rules_inside_submessages(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoProbe p = lagoon_v1_EchoProbe_init_zero;
    expect_probe(c, &p, 0, NULL); /* nothing set: no member, no email, no tags */

    p.which_content = lagoon_v1_EchoProbe_text_tag;
    expect_probe(c, &p, 1, (const char *const[]){"text.text", "must not be empty"});
    snprintf(p.content.text.text, sizeof(p.content.text.text), "line\r\nnext");
    expect_probe(c, &p, 1, (const char *const[]){"text.text", "must not contain control characters"});
    snprintf(p.content.text.text, sizeof(p.content.text.text), "eleven char");
    expect_probe(c, &p, 1, (const char *const[]){"text.text", "must be at most 10 characters"});
    snprintf(p.content.text.text, sizeof(p.content.text.text), "two\nlines");
    expect_probe(c, &p, 0, NULL);

    memset(&p.content, 0, sizeof(p.content));
    p.which_content = lagoon_v1_EchoProbe_image_tag;
    expect_probe(c, &p, 2, (const char *const[]){"image.url", "is required", "image.width", "must be positive"});
    snprintf(p.content.image.url, sizeof(p.content.image.url), "https://example.org/a b");
    p.content.image.width = 1;
    expect_probe(c, &p, 1,
                 (const char *const[]){"image.url", "must be an http:// or https:// URL without spaces"});
    snprintf(p.content.image.url, sizeof(p.content.image.url), "https://example.org/a.png");

    p.has_email = true; /* present: checked, "" included */
    expect_probe(c, &p, 1, (const char *const[]){"email", "is not a valid email address"});
    snprintf(p.email, sizeof(p.email), "ana@example.org");
    expect_probe(c, &p, 0, NULL);

    /* Every broken field at once, in field order; each item by its index. */
    p.content.image.width = 0;
    p.email[0] = '\0';
    p.tags_count = 5;
    snprintf(p.tags[0], sizeof(p.tags[0]), "piano");
    p.tags[1][0] = '\0';
    snprintf(p.tags[2], sizeof(p.tags[2]), "violoncello");
    snprintf(p.tags[3], sizeof(p.tags[3]), "a\tb");
    snprintf(p.tags[4], sizeof(p.tags[4]), "drums");
    expect_probe(c, &p, 6,
                 (const char *const[]){"image.width", "must be positive", "email", "is not a valid email address",
                                       "tags", "must have at most 4 items (has 5)", "tags[1]", "must not be empty",
                                       "tags[2]", "must be at most 8 characters", "tags[3]",
                                       "must not contain control characters"});
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "(and more: see violations)"));

    /* In a client-streaming call, every message is checked: a broken second one ends it. */
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_stream *s;
    assert_int_equal(lagoon_Debug_EchoCollect(c, &req, &s), LAGOON_OK);
    req.fail_code = 17;
    assert_int_equal(lagoon_Debug_EchoCollect_send(s, &req), LAGOON_OK);
    lagoon_v1_EchoCollectResponse resp;
    assert_int_equal(lagoon_Debug_EchoCollect_finish(s, &resp), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(lagoon_last_error(c)->detail.violations[0].field, "fail_code");
    lagoon_close(c);
}

static void test_server_streaming(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoStreamRequest req = lagoon_v1_EchoStreamRequest_init_zero;
    fill_payload((pb_bytes_array_t *)&req.payload, 100, 9);
    req.count = 25;
    for (int interval = 0; interval <= 1; interval++) {
        req.interval_ms = (uint32_t)interval;
        lagoon_stream *s;
        assert_int_equal(lagoon_Debug_EchoStream(c, &req, &s), LAGOON_OK);
        lagoon_v1_EchoResponse msg;
        int n = 0;
        while (lagoon_Debug_EchoStream_recv(s, &msg) == 1) {
            assert_int_equal(msg.payload.size, 100);
            assert_memory_equal(msg.payload.bytes, req.payload.bytes, 100);
            n++;
        }
        assert_int_equal(n, 25);
        assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_OK);
    }
    /* Bounds are enforced on the request. */
    req.count = 100001;
    lagoon_stream *s;
    assert_int_equal(lagoon_Debug_EchoStream(c, &req, &s), LAGOON_OK);
    lagoon_v1_EchoResponse msg;
    assert_int_equal(lagoon_Debug_EchoStream_recv(s, &msg), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(lagoon_last_error(c)->detail.violations[0].field, "count");
    lagoon_close(c);
}

static void test_client_streaming(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_stream *s;
    fill_payload((pb_bytes_array_t *)&req.payload, 10, 1);
    assert_int_equal(lagoon_Debug_EchoCollect(c, &req, &s), LAGOON_OK);
    for (int i = 2; i <= 5; i++) {
        fill_payload((pb_bytes_array_t *)&req.payload, (size_t)i * 10, (uint8_t)i);
        assert_int_equal(lagoon_Debug_EchoCollect_send(s, &req), LAGOON_OK);
    }
    lagoon_v1_EchoCollectResponse resp;
    assert_int_equal(lagoon_Debug_EchoCollect_finish(s, &resp), LAGOON_OK);
    assert_int_equal(resp.count, 5);
    assert_int_equal(resp.total_bytes, 10 + 20 + 30 + 40 + 50);
    assert_int_equal(resp.last_payload.size, 50);
    assert_memory_equal(resp.last_payload.bytes, req.payload.bytes, 50);

    /* The server ends the call early (an error on the second message); the client's
     * further messages are absorbed and finish reports the server's status. */
    req.fail_code = 0;
    assert_int_equal(lagoon_Debug_EchoCollect(c, &req, &s), LAGOON_OK);
    req.fail_code = LAGOON_ABORTED;
    assert_int_equal(lagoon_Debug_EchoCollect_send(s, &req), LAGOON_OK);
    req.fail_code = 0;
    lagoon_Debug_EchoCollect_send(s, &req); /* may race with the server's RESPONSE */
    assert_int_equal(lagoon_Debug_EchoCollect_finish(s, &resp), LAGOON_ABORTED);
    /* The connection is still healthy. */
    lagoon_v1_HealthCheckRequest hreq = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse hresp;
    assert_int_equal(lagoon_Health_Check(c, &hreq, &hresp), LAGOON_OK);
    lagoon_close(c);
}

static void test_bidi_streaming(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse msg;
    lagoon_stream *s;
    fill_payload((pb_bytes_array_t *)&req.payload, 5, 0);
    assert_int_equal(lagoon_Debug_EchoChat(c, &req, &s), LAGOON_OK);
    assert_int_equal(lagoon_Debug_EchoChat_recv(s, &msg), 1);
    assert_int_equal(msg.payload.size, 5);
    for (int i = 1; i < 10; i++) {
        fill_payload((pb_bytes_array_t *)&req.payload, (size_t)i + 5, (uint8_t)i);
        assert_int_equal(lagoon_Debug_EchoChat_send(s, &req), LAGOON_OK);
        assert_int_equal(lagoon_Debug_EchoChat_recv(s, &msg), 1);
        assert_int_equal(msg.payload.size, (size_t)i + 5);
        assert_memory_equal(msg.payload.bytes, req.payload.bytes, (size_t)i + 5);
    }
    assert_int_equal(lagoon_stream_close_send(s), LAGOON_OK);
    assert_int_equal(lagoon_Debug_EchoChat_recv(s, &msg), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_OK);
    lagoon_close(c);
}

/* ---- 1000 calls on one connection, answered out of order ----------------------------------- */

#define MUX_CALLS 1000

typedef struct mux_state {
    struct event_base *base;
    lagoon_v1_EchoRequest req[MUX_CALLS];
    lagoon_v1_EchoResponse resp[MUX_CALLS];
    int status[MUX_CALLS];
    int order[MUX_CALLS]; /* completion position of call i */
    int done;
} mux_state;

typedef struct mux_arg {
    mux_state *st;
    int i;
} mux_arg;

static void mux_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    (void)meta;
    mux_arg *a = arg;
    a->st->status[a->i] = status;
    a->st->order[a->i] = a->st->done++;
    if (a->st->done == MUX_CALLS)
        event_base_loopexit(a->st->base, NULL);
}

static void test_thousand_calls_multiplexed(void **state)
{
    test_server *t = *state;
    mux_state *st = calloc(1, sizeof(*st));
    mux_arg *args = calloc(MUX_CALLS, sizeof(*args));
    st->base = event_base_new();
    lagoon_async *c;
    char err[256];
    assert_int_equal(lagoon_async_connect(st->base, "127.0.0.1", t->port, NULL, &c, err, sizeof(err)), LAGOON_OK);
    for (int i = 0; i < MUX_CALLS; i++) {
        args[i].st = st;
        args[i].i = i;
        st->req[i].payload.size = 4;
        memcpy(st->req[i].payload.bytes, &i, 4);
        /* Every fifth call is answered later, from a worker: answers overtake requests. */
        st->req[i].delay_ms = i % 5 == 0 ? 3 : 0;
        st->status[i] = -1;
        assert_int_equal(lagoon_async_Debug_Echo(c, &st->req[i], &st->resp[i], mux_done, &args[i]), LAGOON_OK);
    }
    assert_true(lagoon_async_in_flight(c) + lagoon_async_queued(c) == MUX_CALLS);
    struct timeval limit = {30, 0};
    event_base_loopexit(st->base, &limit);
    event_base_dispatch(st->base);
    assert_int_equal(st->done, MUX_CALLS);
    int out_of_order = 0;
    for (int i = 0; i < MUX_CALLS; i++) {
        assert_int_equal(st->status[i], LAGOON_OK);
        assert_int_equal(st->resp[i].payload.size, 4);
        assert_memory_equal(st->resp[i].payload.bytes, &i, 4); /* each answer matches its call */
        if (i > 0 && st->order[i] < st->order[i - 1])
            out_of_order++;
    }
    assert_true(out_of_order > 0);
    lagoon_async_free(c);
    event_base_free(st->base);
    free(args);
    free(st);
}

/* ---- cancel and deadline ------------------------------------------------------------------ */

static test_server *g_server;

static int only_one_call_active(void *arg)
{
    (void)arg;
    return rpc_server_active_calls(g_server->server) == 0;
}

static void test_cancel_stops_the_call(void **state)
{
    test_server *t = *state;
    g_server = t;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoStreamRequest req = lagoon_v1_EchoStreamRequest_init_zero;
    req.count = 1000;
    req.interval_ms = 20;
    lagoon_stream *s;
    assert_int_equal(lagoon_Debug_EchoStream(c, &req, &s), LAGOON_OK);
    lagoon_v1_EchoResponse msg;
    assert_int_equal(lagoon_Debug_EchoStream_recv(s, &msg), 1);
    assert_int_equal(rpc_server_active_calls(t->server), 1);
    lagoon_stream_cancel(s);
    /* The server ends the call (its timer and state are freed: ASan would see a leak). */
    assert_true(test_wait_for(only_one_call_active, NULL, 5000));
    /* The connection stays usable. */
    lagoon_v1_HealthCheckRequest hreq = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse hresp;
    assert_int_equal(lagoon_Health_Check(c, &hreq, &hresp), LAGOON_OK);
    assert_int_equal(hresp.active_calls, 1);
    lagoon_close(c);
}

static void test_deadline(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse resp;
    req.delay_ms = 3000;
    lagoon_set_timeout(c, 100);
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_DEADLINE_EXCEEDED);
    /* A stream whose deadline passes ends with DEADLINE_EXCEEDED too. */
    lagoon_v1_EchoStreamRequest sreq = lagoon_v1_EchoStreamRequest_init_zero;
    sreq.count = 100;
    sreq.interval_ms = 50;
    lagoon_stream *s;
    assert_int_equal(lagoon_Debug_EchoStream(c, &sreq, &s), LAGOON_OK);
    lagoon_v1_EchoResponse msg;
    while (lagoon_Debug_EchoStream_recv(s, &msg) == 1)
        ;
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_DEADLINE_EXCEEDED);
    lagoon_set_timeout(c, 0);
    req.delay_ms = 0;
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_OK);
    lagoon_close(c);
}

static void test_unknown_method(void **state)
{
    test_server *t = *state;
    lagoon_client *c = connect_to(t);
    wire_method fake = lagoon_method_Debug_Echo;
    fake.path = "/lagoon.v1.Nope/Nothing";
    fake.id = wire_method_id(fake.path);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse resp;
    assert_int_equal(lagoon_call(c, &fake, &req, &resp), LAGOON_UNIMPLEMENTED);
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "unknown method"));
    /* An unknown streaming call is refused too, and its later messages are absorbed. */
    fake.kind = WIRE_CLIENT_STREAMING;
    lagoon_stream *s;
    assert_int_equal(lagoon_stream_open(c, &fake, &req, &s), LAGOON_OK);
    lagoon_stream_send(s, &req);
    assert_int_equal(lagoon_stream_finish(s, &resp), LAGOON_UNIMPLEMENTED);
    lagoon_v1_HealthCheckRequest hreq = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse hresp;
    assert_int_equal(lagoon_Health_Check(c, &hreq, &hresp), LAGOON_OK);
    lagoon_close(c);
}

/* ---- authorization ------------------------------------------------------------------------ */

static int fake_auth(void *arg, const char *token, rpc_caller *out)
{
    (void)arg;
    if (strcmp(token, "student-token") == 0) {
        out->user_id = 7;
        out->role = lagoon_v1_Role_STUDENT;
        out->grants = app_grants(out->role, 0);
        return 0;
    }
    if (strcmp(token, "admin-token") == 0) {
        out->user_id = 1;
        out->role = lagoon_v1_Role_ADMIN;
        out->verified = 1;
        out->grants = app_grants(out->role, 1);
        return 0;
    }
    return -1;
}

static void test_access_levels(void **state)
{
    (void)state;
    /* The same handler behind methods that need a user, a verified user, and an admin. */
    static wire_method m_user, m_verified, m_admin;
    m_user = lagoon_method_Debug_Echo;
    m_user.path = "/test.Auth/User";
    m_user.id = wire_method_id(m_user.path);
    m_user.access = lagoon_v1_Access_ACCESS_USER;
    m_verified = m_user;
    m_verified.path = "/test.Auth/Verified";
    m_verified.id = wire_method_id(m_verified.path);
    m_verified.access = lagoon_v1_Access_ACCESS_VERIFIED;
    m_admin = m_user;
    m_admin.path = "/test.Auth/Admin";
    m_admin.id = wire_method_id(m_admin.path);
    m_admin.access = lagoon_v1_Access_ACCESS_ADMIN;
    const wire_method *ms[3] = {&m_user, &m_verified, &m_admin};
    /* routes must be sorted by id */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (ms[j]->id < ms[i]->id) {
                const wire_method *x = ms[i];
                ms[i] = ms[j];
                ms[j] = x;
            }
    rpc_route routes[3];
    for (int i = 0; i < 3; i++) {
        routes[i].method = ms[i];
        routes[i].handler = NULL;
        for (size_t k = 0; k < lagoon_routes_count; k++)
            if (lagoon_routes[k].method == &lagoon_method_Debug_Echo)
                routes[i].handler = lagoon_routes[k].handler;
    }
    rpc_config cfg;
    test_config(&cfg);
    cfg.authenticate = fake_auth;
    cfg.access_denied = app_access_denied;
    cfg.naccess_denied = APP_ACCESS_LEVELS;
    test_server t;
    test_server_start(&t, &cfg, routes, 3);
    lagoon_client *c = connect_to(&t);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse resp;
    static const struct {
        const char *token;
        int user, verified, admin;
    } matrix[] = {
        {"", LAGOON_UNAUTHENTICATED, LAGOON_UNAUTHENTICATED, LAGOON_UNAUTHENTICATED},
        {"forged-token", LAGOON_UNAUTHENTICATED, LAGOON_UNAUTHENTICATED, LAGOON_UNAUTHENTICATED},
        {"student-token", LAGOON_OK, LAGOON_PERMISSION_DENIED, LAGOON_PERMISSION_DENIED},
        {"admin-token", LAGOON_OK, LAGOON_OK, LAGOON_OK},
    };
    for (size_t i = 0; i < sizeof(matrix) / sizeof(matrix[0]); i++) {
        lagoon_set_token(c, matrix[i].token);
        assert_int_equal(lagoon_call(c, &m_user, &req, &resp), matrix[i].user);
        assert_int_equal(lagoon_call(c, &m_verified, &req, &resp), matrix[i].verified);
        assert_int_equal(lagoon_call(c, &m_admin, &req, &resp), matrix[i].admin);
    }
    lagoon_close(c);
    test_server_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_and_settings),
        cmocka_unit_test(test_reflection_lists_every_method),
        cmocka_unit_test(test_reflection_serves_the_schema),
        cmocka_unit_test(test_unary_echo_and_errors),
        cmocka_unit_test(test_rules_inside_submessages),
        cmocka_unit_test(test_server_streaming),
        cmocka_unit_test(test_client_streaming),
        cmocka_unit_test(test_bidi_streaming),
        cmocka_unit_test(test_thousand_calls_multiplexed),
        cmocka_unit_test(test_cancel_stops_the_call),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_unknown_method),
    };
    const struct CMUnitTest solo[] = {
        cmocka_unit_test(test_access_levels),
    };
    int failed = cmocka_run_group_tests_name("calls", tests, setup, teardown);
    failed += cmocka_run_group_tests_name("access", solo, NULL, NULL);
    return failed;
}
