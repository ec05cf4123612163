/* The limits that keep one client from exhausting the server: connections per address, the
 * per-connection memory budget, frames that never complete, client streams that make no
 * progress. Each through the real server with the raw protocol, with the limit set small. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/resource.h>
#include <time.h>

#include <cmocka.h>

#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "testserver.h"

static uint8_t buf[1 << 17];

/* The next frame that is not SETTINGS/PONG, within timeout_ms; fails the test on EOF. */
static void read_reply(int fd, wire_frame *f, uint32_t timeout_ms)
{
    for (;;) {
        int r = raw_read_frame(fd, buf, sizeof(buf), f, timeout_ms);
        assert_int_equal(r, 1);
        if (f->type != WIRE_SETTINGS && f->type != WIRE_PONG)
            return;
    }
}

static uint32_t retry_after(const wire_frame *f)
{
    lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
    wire_violation v;
    assert_int_equal(wire_decode(&lagoon_v1_ResponseMeta_info, f->meta, f->meta_len, &meta, &v), 0);
    return meta.retry_after_ms;
}

/* Waits ms, reading (and dropping) whatever arrives meanwhile, such as PONGs. */
static void read_reply_or_pong_wait(int fd, uint32_t ms)
{
    wire_frame f;
    while (raw_read_frame(fd, buf, sizeof(buf), &f, ms) == 1)
        assert_int_equal(f.type, WIRE_PONG);
}

typedef struct conns_at_most {
    test_server *t;
    uint32_t n;
} conns_at_most;

static int connections_at_most(void *arg)
{
    conns_at_most *c = arg;
    return rpc_server_connections(c->t->server) <= c->n;
}

static void test_connections_per_address(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_connections_per_address = 3;
    test_server_start(&t, &cfg, NULL, 0);
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = raw_connect(t.port, 1);
    /* The fourth from 127.0.0.1 is told why and closed, before any SETTINGS. */
    int extra = raw_connect(t.port, 0);
    wire_frame f;
    assert_int_equal(raw_read_frame(extra, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_GOAWAY);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "too many connections from 127.0.0.1"));
    assert_true(raw_wait_closed(extra, 5000));
    close(extra);
    /* A slot freed is a slot for the same address again. */
    close(fds[0]);
    conns_at_most w = {&t, 2};
    assert_true(test_wait_for(connections_at_most, &w, 5000));
    fds[0] = raw_connect(t.port, 1);
    raw_send_frame(fds[0], WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    read_reply(fds[0], &f, 5000);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.code, LAGOON_OK);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    test_server_stop(&t);
}

/* One header byte at a time, each well inside the idle timeout: bytes are not activity, and
 * the frame they never finish ends the connection after frame_timeout_ms. */
static void test_trickled_frame_is_closed(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.idle_timeout_ms = 60000;
    cfg.frame_timeout_ms = 1000;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    uint8_t hdr[WIRE_HEADER_SIZE];
    wire_header_encode(hdr, WIRE_PING, 0, 0, 0, 0, WIRE_PING_PAYLOAD);
    int closed = 0;
    /* The header's bytes but its last, 250 ms apart: never a whole frame, each byte well
     * inside the idle timeout. */
    for (int i = 0; i < WIRE_HEADER_SIZE - 1 && !closed; i++) {
        if (send(fd, &hdr[i], 1, MSG_NOSIGNAL) != 1)
            break;
        closed = raw_wait_closed(fd, 250);
    }
    if (!closed)
        closed = raw_wait_closed(fd, 3000);
    assert_true(closed);
    close(fd);
    test_server_stop(&t);
}

/* A client stream left open with nothing sent is ended; the connection stays usable. */
static void test_idle_client_stream_times_out(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.stream_idle_timeout_ms = 1000;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoCollect.id, NULL, 0, NULL, 0);
    wire_frame f;
    read_reply(fd, &f, 10000);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 1);
    assert_int_equal(f.code, LAGOON_DEADLINE_EXCEEDED);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "stream-idle-timeout-ms"));
    /* The id stays taken until the client ends it; what it sends meanwhile is swallowed. */
    raw_send_frame(fd, WIRE_MESSAGE, WIRE_FLAG_END_STREAM, 1, 0, NULL, 0, NULL, 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    read_reply(fd, &f, 5000);
    assert_int_equal(f.call_id, 3);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
    test_server_stop(&t);
}

/* Refused calls whose client side stays open keep their id as a tombstone, but not for ever:
 * with no MESSAGE for stream_idle_timeout_ms the id is freed, even while PINGs keep the
 * connection itself alive. */
static void test_tombstones_expire(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.stream_idle_timeout_ms = 1000;
    cfg.max_concurrent_calls = 64;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    wire_frame f;
    for (uint32_t k = 0; k < 64; k++) {
        raw_send_frame(fd, WIRE_REQUEST, 0, 1 + 2 * k, 0x12345678u, NULL, 0, NULL, 0); /* unknown method */
        read_reply(fd, &f, 5000);
        assert_int_equal(f.code, LAGOON_UNIMPLEMENTED);
    }
    uint32_t id = 1001;
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    read_reply(fd, &f, 5000);
    assert_int_equal(f.code, LAGOON_RESOURCE_EXHAUSTED); /* every slot is a tombstone */
    int ok = 0;
    uint8_t ping[WIRE_PING_PAYLOAD] = {0};
    for (int i = 0; i < 20 && !ok; i++) { /* at most 10 s */
        raw_send_frame(fd, WIRE_PING, 0, 0, 0, NULL, 0, ping, sizeof(ping));
        read_reply_or_pong_wait(fd, 500);
        id += 2;
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
        read_reply(fd, &f, 5000);
        ok = f.code == LAGOON_OK;
    }
    assert_true(ok);
    close(fd);
    test_server_stop(&t);
}

/* Open client streams hold their decoded state: past the connection's budget new calls are
 * refused (not the connection), and a frame that cannot fit ends the connection. */
static void test_connection_memory_budget(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.max_frame_size = 64u << 10;
    cfg.max_connection_memory = 1u << 20;
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    /* SETTINGS announces the budget. */
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", t.port, NULL, &c, NULL), LAGOON_OK);
    assert_int_equal(lagoon_settings(c)->max_connection_memory, 1u << 20);
    lagoon_close(c);

    uint32_t id = 1, refused = 0;
    wire_frame f;
    for (; id < 2 * 1024 && !refused; id += 2) {
        raw_send_frame(fd, WIRE_REQUEST, 0, id, lagoon_method_Debug_EchoCollect.id, NULL, 0, NULL, 0);
        /* Health after each: its reply (or the refusal before it) shows where the budget ends. */
        raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id + 1, lagoon_method_Health_Check.id, NULL, 0,
                       NULL, 0);
        for (;;) {
            read_reply(fd, &f, 5000);
            if (f.call_id == id) {
                assert_int_equal(f.code, LAGOON_RESOURCE_EXHAUSTED);
                char msg[256];
                raw_meta_message(&f, msg, sizeof(msg));
                assert_non_null(strstr(msg, "connection memory budget"));
                assert_true(retry_after(&f) > 0);
                refused = id;
            } else {
                assert_int_equal(f.call_id, id + 1);
                break;
            }
        }
    }
    assert_true(refused > 0);
    assert_true(refused < 2 * 1024); /* far fewer than max_concurrent_calls */
    /* A frame that cannot fit beside what the open streams hold ends the connection. */
    uint8_t hdr[WIRE_HEADER_SIZE];
    wire_header_encode(hdr, WIRE_REQUEST, 0, id + 100, lagoon_method_Debug_Echo.id, 0, (60u << 10));
    raw_send(fd, hdr, sizeof(hdr));
    read_reply(fd, &f, 5000);
    assert_int_equal(f.type, WIRE_GOAWAY);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "memory budget"));
    assert_true(raw_wait_closed(fd, 5000));
    close(fd);
    test_server_stop(&t);
}

/* A drain: new calls get UNAVAILABLE with a retry_after_ms; a call still open when the drain
 * times out gets its one reply (UNAVAILABLE) before the connection closes. */
static void test_drain_answers_every_call(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.drain_timeout_ms = 1500; /* long enough for call 5 to be refused first on a busy machine */
    test_server_start(&t, &cfg, NULL, 0);
    int fd = raw_connect(t.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoCollect.id, NULL, 0, NULL, 0);
    /* Known to be open once a later call on the same connection has been answered. */
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    wire_frame f;
    read_reply(fd, &f, 5000);
    assert_int_equal(f.call_id, 3);
    rpc_server_stop(t.server);
    read_reply(fd, &f, 5000);
    assert_int_equal(f.type, WIRE_GOAWAY);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 5, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    int seen = 0;
    while (seen != 3) { /* the refusal of 5 and the end of 1, whichever the server writes first */
        read_reply(fd, &f, 5000);
        assert_int_equal(f.type, WIRE_RESPONSE);
        assert_int_equal(f.code, LAGOON_UNAVAILABLE);
        if (f.call_id == 5) {
            assert_true(retry_after(&f) > 0);
            seen |= 1;
        } else {
            assert_int_equal(f.call_id, 1);
            char msg[256];
            raw_meta_message(&f, msg, sizeof(msg));
            assert_non_null(strstr(msg, "shut down before the call finished"));
            seen |= 2;
        }
    }
    assert_true(raw_wait_closed(fd, 5000));
    close(fd);
    test_server_stop(&t);
}

/* Thousands of delayed Debug/Echo calls (timers, not workers) and a sign-in beside them: the
 * sign-in is served at once, neither refused ("worker queue full") nor left to wait for them. */
static void test_delayed_calls_do_not_starve_sign_in(void **state)
{
    (void)state;
    test_app t;
    test_app_start(&t, NULL);
    lagoon_client *c = test_client(&t);
    char token[65];
    test_user(c, "patient", 0, token);
    enum { CONNS = 10, PER_CONN = 512 }; /* 5120 calls: more than the old worker queue, within each connection's memory budget */
    int fds[CONNS];
    uint8_t pb[16];
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.delay_ms = 10000;
    long pl = wire_encode(&lagoon_v1_EchoRequest_info, &req, pb, sizeof(pb), NULL);
    assert_true(pl > 0);
    for (int i = 0; i < CONNS; i++) {
        fds[i] = raw_connect(t.srv.port, 1);
        for (uint32_t k = 0; k < PER_CONN; k++)
            raw_send_frame(fds[i], WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1 + 2 * k, lagoon_method_Debug_Echo.id, NULL,
                           0, pb, (size_t)pl);
    }
    /* Every one of them is in: a call on each connection behind them is answered first. */
    for (int i = 0; i < CONNS; i++) {
        raw_send_frame(fds[i], WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1 + 2 * PER_CONN, lagoon_method_Health_Check.id,
                       NULL, 0, NULL, 0);
        wire_frame f;
        read_reply(fds[i], &f, 10000);
        assert_int_equal(f.call_id, 1 + 2 * PER_CONN);
    }
    assert_true(rpc_server_active_calls(t.srv.server) >= CONNS * PER_CONN);
    /* Well inside the delayed calls' 10 s: with them on worker threads this waited or failed. */
    lagoon_set_timeout(c, 5000);
    lagoon_v1_LoginRequest lreq = lagoon_v1_LoginRequest_init_zero;
    snprintf(lreq.login, sizeof(lreq.login), "patient@example.com");
    snprintf(lreq.password, sizeof(lreq.password), "%s", TEST_PASSWORD);
    lagoon_v1_TokenPair pair;
    assert_int_equal(lagoon_Auth_Login(c, &lreq, &pair), LAGOON_OK);
    lagoon_close(c);
    for (int i = 0; i < CONNS; i++)
        close(fds[i]);
    test_app_stop(&t);
}

/* ---- accept() out of descriptors -------------------------------------------------------- */

typedef struct err_capture {
    int fd;             /* read end of the pipe standing in for stderr */
    char text[1 << 16]; /* what was written to stderr meanwhile */
    size_t len;
} err_capture;

static void *capture_main(void *arg)
{
    err_capture *c = arg;
    ssize_t n;
    while ((n = read(c->fd, c->text + c->len, sizeof(c->text) - 1 - c->len)) > 0)
        c->len += (size_t)n;
    return NULL;
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2; /* . and .. */
}

static int count_in(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* With every descriptor of the process taken while connections wait in the listen queue,
 * accept() fails with EMFILE each time the listener wakes: the server pauses accepting (and
 * logs it once a second at most) instead of spinning on it, and accepts again once
 * descriptors are free. The test's clients and the server share one process, so one
 * RLIMIT_NOFILE makes both run out. */
static void test_accept_backs_off_when_out_of_descriptors(void **state)
{
    (void)state;
    test_server t;
    rpc_config cfg;
    test_config(&cfg);
    cfg.threads = 1;
    test_server_start(&t, &cfg, NULL, 0);
    /* Serving already (its event bases need descriptors of their own): a connection is answered. */
    close(raw_connect(t.port, 1));
    int saved_err = dup(STDERR_FILENO), pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    static err_capture cap;
    memset(&cap, 0, sizeof(cap));
    cap.fd = pipefd[0];
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, capture_main, &cap), 0);
    dup2(pipefd[1], STDERR_FILENO);
    close(pipefd[1]);

    /* Nothing may fail the test while stderr is the pipe (cmocka would report into it): the
     * results are kept and judged after it is restored. */
    struct rlimit old;
    int got_limit = getrlimit(RLIMIT_NOFILE, &old) == 0;
    struct rlimit low = old;
    low.rlim_cur = (rlim_t)open_fds() + 24;
    int lowered = got_limit && setrlimit(RLIMIT_NOFILE, &low) == 0;
    enum { MAX_CLIENTS = 64 };
    int fds[MAX_CLIENTS], n = 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(t.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    while (lowered && n < MAX_CLIENTS) { /* until the process has no descriptor left for a client */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            break;
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            close(fd);
            break;
        }
        fds[n++] = fd;
    }
    struct timespec hold = {1, 500 * 1000 * 1000}; /* out of descriptors for 1.5 s */
    nanosleep(&hold, NULL);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    if (lowered)
        setrlimit(RLIMIT_NOFILE, &old);
    dup2(saved_err, STDERR_FILENO);
    close(saved_err);
    assert_true(lowered);
    assert_true(n > 0 && n < MAX_CLIENTS);
    /* Accepting again: a new connection gets its SETTINGS and a call is answered. */
    int fd = raw_connect(t.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    wire_frame f;
    read_reply(fd, &f, 10000);
    assert_int_equal(f.code, LAGOON_OK);
    close(fd);
    test_server_stop(&t);
    pthread_join(reader, NULL);
    close(pipefd[0]);
    cap.text[cap.len] = '\0';
    int lines = count_in(cap.text, "Too many open files");
    if (lines < 1 || lines > 5)
        fail_msg("%d log lines about EMFILE in 1.5 s (want 1 to 5): %.400s", lines, cap.text);
    assert_non_null(strstr(cap.text, "not accepting for"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connections_per_address),
        cmocka_unit_test(test_trickled_frame_is_closed),
        cmocka_unit_test(test_idle_client_stream_times_out),
        cmocka_unit_test(test_tombstones_expire),
        cmocka_unit_test(test_connection_memory_budget),
        cmocka_unit_test(test_drain_answers_every_call),
        cmocka_unit_test(test_delayed_calls_do_not_starve_sign_in),
        cmocka_unit_test(test_accept_backs_off_when_out_of_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
