/* Cross-thread hand-offs of a call, raced on purpose for a bounded time: a client CANCEL, a
 * deadline and a disconnect against a finish from a worker thread (rpc_call_defer) and from the
 * realtime router (Events/Subscribe). Each of these once freed a call another thread was about
 * to touch; under ASan (and TSan, scripts/test.sh) a regression is a crash or a report, in the
 * release build usually an abort. After the storm the server must still answer and hold no
 * call. */
#include <errno.h>
#include <pthread.h>
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

#define RACE_THREADS 2
#define RACE_SECONDS 2      /* per scenario: bounded, whatever the machine's speed */
#define RACE_MAX_PAIRS 4000 /* per thread and scenario */

/* ---- a handler that finishes from a worker the moment the call ends ------------------------ */

/* The worker watches for the call's end (a CANCEL, the deadline, the connection closing) and
 * finishes it at once, so that its rpc_call_finish lands right inside the loop thread's
 * abandon of the same call: the window where a reference taken too late touches freed memory.
 * Bounded: it finishes anyway after arg microseconds. */
static int finish_on_end_work(rpc_call *call, void *arg)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long limit_ns = (long)(uintptr_t)arg * 1000L;
    do {
        if (rpc_call_done(call))
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < limit_ns);
    return LAGOON_OK;
}

static int slow_echo(rpc_call *call, const void *req, void *resp)
{
    (void)resp;
    const lagoon_v1_EchoRequest *r = req;
    return rpc_call_defer(call, RPC_LANE_WORK, finish_on_end_work, NULL, (void *)(uintptr_t)(r->delay_ms * 100u));
}

static const rpc_route worker_routes[] = {
    {&lagoon_method_Debug_Echo, slow_echo},
};

/* ---- the client side: REQUEST, a random pause, CANCEL (or close) --------------------------- */

typedef struct racer {
    uint16_t port;
    uint32_t method;
    const uint8_t *meta; /* RequestMeta with a token, or NULL */
    size_t meta_len;
    const uint8_t *payload;
    size_t payload_len;
    int mode; /* 0: CANCEL, 1: deadline of 1 ms, 2: close the connection mid-call */
    unsigned seed;
    unsigned pairs;
} racer;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void drain_input(int fd)
{
    uint8_t scratch[16384];
    while (recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT) > 0)
        ;
}

static void pause_up_to_1500us(unsigned *seed)
{
    struct timespec ts = {0, (long)(rand_r(seed) % 1500) * 1000L};
    nanosleep(&ts, NULL);
}

static void *race_main(void *arg)
{
    racer *r = arg;
    uint64_t end = now_ms() + RACE_SECONDS * 1000u;
    int fd = raw_connect(r->port, 1);
    uint32_t id = 1;
    while (now_ms() < end && r->pairs < RACE_MAX_PAIRS) {
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, r->method, r->meta, r->meta_len, r->payload,
                       r->payload_len);
        pause_up_to_1500us(&r->seed);
        if (r->mode == 0) {
            raw_send_frame(fd, WIRE_CANCEL, 0, id, 0, NULL, 0, NULL, 0);
        } else if (r->mode == 2 && r->pairs % 8 == 7) {
            close(fd);
            fd = raw_connect(r->port, 1);
        }
        drain_input(fd);
        id += 2;
        r->pairs++;
    }
    close(fd);
    return NULL;
}

static int no_active_calls(void *arg)
{
    /* This check itself is a call; nothing else may remain. */
    return rpc_server_active_calls(((test_server *)arg)->server) == 0;
}

/* Lets every racer loose on the server, then checks it is idle and still answers (probe: the
 * Echo of worker_routes, else Health/Check). */
static void storm(test_server *srv, racer *proto, int probe_echo)
{
    pthread_t th[RACE_THREADS];
    racer rs[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++) {
        rs[i] = *proto;
        rs[i].seed = (unsigned)(i * 7919 + proto->mode);
        rs[i].pairs = 0;
        assert_int_equal(pthread_create(&th[i], NULL, race_main, &rs[i]), 0);
    }
    unsigned total = 0;
    for (int i = 0; i < RACE_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += rs[i].pairs;
    }
    assert_true(total > 0);
    /* The server survived and is idle again: no call leaked a reference or its slot. */
    assert_true(test_wait_for(no_active_calls, srv, 10000));
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", srv->port, NULL, &c, NULL), LAGOON_OK);
    if (probe_echo) {
        lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
        lagoon_v1_EchoResponse resp;
        assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_OK);
    } else {
        lagoon_v1_HealthCheckRequest hreq = lagoon_v1_HealthCheckRequest_init_zero;
        lagoon_v1_HealthCheckResponse hresp;
        assert_int_equal(lagoon_Health_Check(c, &hreq, &hresp), LAGOON_OK);
    }
    lagoon_close(c);
}

static size_t echo_payload(uint8_t *buf, size_t cap, uint32_t delay)
{
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.delay_ms = delay; /* slow_echo: tenths of a millisecond on a worker */
    long n = wire_encode(&lagoon_v1_EchoRequest_info, &req, buf, cap, NULL);
    assert_true(n >= 0);
    return (size_t)n;
}

static size_t meta_with(uint8_t *buf, size_t cap, const char *token, uint32_t timeout_ms)
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    if (token)
        snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", token);
    meta.timeout_ms = timeout_ms;
    long n = wire_encode(&lagoon_v1_RequestMeta_info, &meta, buf, cap, NULL);
    assert_true(n >= 0);
    return (size_t)n;
}

/* CANCEL, deadline and disconnect against a worker's rpc_call_finish. */
static void test_worker_finish_races(void **state)
{
    (void)state;
    test_server srv;
    rpc_config cfg;
    test_config(&cfg);
    cfg.workers = 2;
    test_server_start(&srv, &cfg, worker_routes, 1);
    uint8_t pb[32], mb[64];
    racer r = {.port = srv.port, .method = lagoon_method_Debug_Echo.id, .payload = pb};
    r.payload_len = echo_payload(pb, sizeof(pb), 20); /* at most 2 ms on a worker */
    for (int mode = 0; mode < 3; mode++) {
        r.mode = mode;
        r.meta = mode == 1 ? mb : NULL;
        r.meta_len = mode == 1 ? meta_with(mb, sizeof(mb), NULL, 1) : 0;
        storm(&srv, &r, 1);
    }
    test_server_stop(&srv);
}

/* CANCEL and disconnect against the realtime router, which finishes and sends from its own
 * thread: Subscribe with since = 1 replays, then goes live. */
static void test_router_finish_races(void **state)
{
    (void)state;
    test_app t;
    test_app_start(&t, NULL);
    lagoon_client *c = test_client(&t);
    char token[65];
    test_user(c, "racer", 0, token);
    lagoon_close(c);
    uint8_t pb[16], mb[256];
    lagoon_v1_SubscribeRequest sub = lagoon_v1_SubscribeRequest_init_zero;
    sub.since = 1;
    long pl = wire_encode(&lagoon_v1_SubscribeRequest_info, &sub, pb, sizeof(pb), NULL);
    assert_true(pl >= 0);
    racer r = {.port = t.srv.port, .method = lagoon_method_Events_Subscribe.id, .payload = pb,
               .payload_len = (size_t)pl, .meta = mb};
    r.meta_len = meta_with(mb, sizeof(mb), token, 0);
    for (int mode = 0; mode < 3; mode += 2) {
        r.mode = mode;
        storm(&t.srv, &r, 0);
    }
    test_app_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_finish_races),
        cmocka_unit_test(test_router_finish_races),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
