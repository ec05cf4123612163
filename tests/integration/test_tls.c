/* TLS on the client port, end to end: certificates made at test time with the openssl command
 * line (a CA, a server certificate for 127.0.0.1 and localhost, an expired one, one for
 * another host, and a second CA's for the reload), the real server with --tls-cert/--tls-key
 * (rpc_config.tls_*), the blocking client's OpenSSL transport, raw OpenSSL clients for the
 * handshake policy (ALPN, protocol versions), plain clients on the TLS port, a SIGHUP reload
 * with a connection from before it (in process, and the real lagoond), a transport of the
 * caller's own, the asynchronous client, and lagoonctl --tls. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "lagoon_async_stubs.h"
#include "lagoon_stubs.h"
#include "lagoon_tls.h"
#include "testserver.h"
#include "tls.h"

#define WAIT_MS 10000  /* bounded waits for the reload to be seen */
#define CMD_MAX 2048
/* The servers' handshake timeout: a silent client is closed after it. Not shorter: a client
 * loads its CAs (the system's store: some 140 certificates) after the TCP connection is up,
 * which took a second under ASan on a loaded machine. */
#define HANDSHAKE_MS 3000
#define TRICKLE_GAP_MS 40 /* between the bytes of a trickled ClientHello */

static char dir[64];         /* the certificates */
static const char *cert_name; /* the pair the next server starts with: DIR/<name>.pem, .key */
static test_app *T;

static void run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void run(const char *fmt, ...)
{
    char cmd[CMD_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && n < (int)sizeof(cmd));
    if (system(cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

/* A key and a certificate <name> signed by CA <ca>, with subjectAltName san, valid for days
 * (negative: expired). */
static void make_cert(const char *name, const char *ca, const char *san, int days)
{
    run("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s.key -out %s.csr "
        "-subj /CN=%s 2>/dev/null && printf 'subjectAltName=%s\\n' > %s.ext && openssl x509 -req -in %s.csr -CA "
        "%s.pem -CAkey %s.key -CAcreateserial -out %s.pem -days %d -extfile %s.ext 2>/dev/null",
        dir, name, name, name, san, name, name, ca, ca, name, days, name);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/lagoon-tls-test.XXXXXX");
    assert_non_null(mkdtemp(dir));
    for (int i = 1; i <= 2; i++)
        run("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca%d.key "
            "-out ca%d.pem -days 2 -subj /CN=Lagoon-test-CA-%d 2>/dev/null",
            dir, i, i, i);
    make_cert("server", "ca1", "DNS:localhost,IP:127.0.0.1", 2);
    make_cert("expired", "ca1", "DNS:localhost,IP:127.0.0.1", -1);
    make_cert("other", "ca1", "DNS:other.example", 2);
    make_cert("server2", "ca2", "DNS:localhost,IP:127.0.0.1", 2);
    /* A self-signed server certificate, as a quick test deployment would make. */
    run("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout self.key "
        "-out self.pem -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null",
        dir);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    run("rm -rf '%s'", dir);
    return 0;
}

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    snprintf(cfg->tls_cert, sizeof(cfg->tls_cert), "%s/live.pem", dir);
    snprintf(cfg->tls_key, sizeof(cfg->tls_key), "%s/live.key", dir);
    cfg->handle_signals = 1; /* SIGHUP reloads, as in lagoond */
    cfg->handshake_timeout_ms = HANDSHAKE_MS;
}

/* The server's files are copies, so that a reload can swap what they hold. */
static void install_pair(const char *name)
{
    run("cp %s/%s.key %s/live.key.new && mv %s/live.key.new %s/live.key && cp %s/%s.pem %s/live.pem.new && "
        "mv %s/live.pem.new %s/live.pem",
        dir, name, dir, dir, dir, dir, name, dir, dir, dir);
}

static int setup(void **state)
{
    (void)state;
    install_pair(cert_name);
    T = test_app_new(tweak);
    assert_true(rpc_server_tls(T->srv.server));
    return 0;
}

static int setup_server(void **state)
{
    cert_name = "server";
    return setup(state);
}

static int setup_expired(void **state)
{
    cert_name = "expired";
    return setup(state);
}

static int setup_self_signed(void **state)
{
    cert_name = "self";
    return setup(state);
}

static int setup_other(void **state)
{
    cert_name = "other";
    return setup(state);
}

static int teardown(void **state)
{
    (void)state;
    if (T != NULL) /* a test may have stopped it itself */
        test_app_free(T);
    T = NULL;
    return 0;
}

/* A TLS client of the library to port, checking against CA file ca (in dir) and name (NULL:
 * host). */
static int tls_connect_port(uint16_t port, const char *host, const char *ca, const char *name, lagoon_client **c,
                            lagoon_error *err)
{
    char ca_path[128];
    snprintf(ca_path, sizeof(ca_path), "%s/%s.pem", dir, ca);
    lagoon_options o = {0};
    o.tls = 1;
    o.tls_ca_file = ca_path;
    o.tls_server_name = name;
    o.connect_timeout_ms = 5000;
    memset(err, 0, sizeof(*err));
    return lagoon_connect(host, port, &o, c, err);
}

/* The same to the test's in-process server. */
static int tls_connect(const char *host, const char *ca, const char *name, lagoon_client **c, lagoon_error *err)
{
    return tls_connect_port(T->srv.port, host, ca, name, c, err);
}

static void health_ok(lagoon_client *c)
{
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp = lagoon_v1_HealthCheckResponse_init_zero;
    int st = lagoon_Health_Check(c, &req, &resp);
    if (st != LAGOON_OK)
        fail_msg("Health/Check: %s: %s", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
    assert_int_equal(resp.status, lagoon_v1_HealthCheckResponse_ServingStatus_SERVING);
}

/* A reply of many TLS records (the schema passes 64 KiB), byte for byte. */
static void schema_byte_for_byte(lagoon_client *c)
{
    lagoon_v1_GetSchemaRequest sreq = lagoon_v1_GetSchemaRequest_init_zero;
    lagoon_v1_GetSchemaResponse sresp = lagoon_v1_GetSchemaResponse_init_zero;
    lagoon_bytes set = {.max = lagoon_schema_max};
    sresp.file_descriptor_set.funcs.decode = lagoon_bytes_decode;
    sresp.file_descriptor_set.arg = &set;
    assert_int_equal(lagoon_Reflection_GetSchema(c, &sreq, &sresp), LAGOON_OK);
    assert_true(lagoon_schema_size > 65535);
    assert_int_equal(set.len, lagoon_schema_size);
    assert_memory_equal(set.data, lagoon_schema, lagoon_schema_size);
    free(set.data);
}

static void expect_refused(int st, const lagoon_error *err, const char *why)
{
    assert_int_equal(st, LAGOON_UNAVAILABLE);
    if (strstr(err->detail.message, why) == NULL)
        fail_msg("expected '%s' in: %s", why, err->detail.message);
}

/* ---- the library's TLS ---------------------------------------------------------------------- */

/* A handshake by address and by name, then real calls: the whole schema (a large reply), a
 * user registered and signed in, a PING. */
static void good_handshake_and_calls(void **state)
{
    (void)state;
    /* A connection left open while the server drains and stops: GOAWAY and the close go
     * through TLS (the sanitizer builds check that path), and the client hears of it. */
    lagoon_client *open_at_stop;
    lagoon_error e;
    assert_int_equal(tls_connect("127.0.0.1", "ca1", NULL, &open_at_stop, &e), LAGOON_OK);
    health_ok(open_at_stop);
    /* Checked by its address, then by its name (given as the server name: a test machine need
     * not resolve "localhost", a fresh Debian root does not). */
    const char *names[] = {NULL, "localhost"};
    for (size_t i = 0; i < 2; i++) {
        lagoon_client *c;
        lagoon_error err;
        int st = tls_connect("127.0.0.1", "ca1", names[i], &c, &err);
        if (st != LAGOON_OK)
            fail_msg("connect %s: %s", names[i] ? names[i] : "127.0.0.1", err.detail.message);
        health_ok(c);
        if (i == 0) {
            schema_byte_for_byte(c);
            char token[65];
            assert_true(test_user(c, "tlsann", 0, token) != 0);
            uint64_t rtt;
            assert_int_equal(lagoon_ping(c, &rtt), LAGOON_OK);
        }
        lagoon_close(c);
    }
    test_app_free(T);
    T = NULL;
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp = lagoon_v1_HealthCheckResponse_init_zero;
    assert_int_equal(lagoon_Health_Check(open_at_stop, &req, &resp), LAGOON_UNAVAILABLE);
    lagoon_close(open_at_stop);
}

static void wrong_host_name_refused(void **state)
{
    (void)state;
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(tls_connect("127.0.0.1", "ca1", "wrong.example", &c, &err), &err, "hostname mismatch");
    assert_null(c);
    /* An address is checked as one: the certificate names 127.0.0.1, not ::1 or 127.0.0.2. */
    expect_refused(tls_connect("127.0.0.1", "ca1", "127.0.0.2", &c, &err), &err, "IP address mismatch");
}

static void another_hosts_certificate_refused(void **state)
{
    (void)state;
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(tls_connect("127.0.0.1", "ca1", NULL, &c, &err), &err, "IP address mismatch");
    expect_refused(tls_connect("127.0.0.1", "ca1", "localhost", &c, &err), &err, "hostname mismatch");
    /* The name it does carry is accepted: only the name was wrong. */
    assert_int_equal(tls_connect("127.0.0.1", "ca1", "other.example", &c, &err), LAGOON_OK);
    health_ok(c);
    lagoon_close(c);
}

static void expired_certificate_refused(void **state)
{
    (void)state;
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(tls_connect("127.0.0.1", "ca1", NULL, &c, &err), &err, "certificate has expired");
    assert_null(c);
}

static void unknown_ca_refused(void **state)
{
    (void)state;
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(tls_connect("127.0.0.1", "ca2", NULL, &c, &err), &err, "the server's certificate is refused");
    /* Without a CA file the system's store is used, which does not know the test CA. */
    lagoon_options o = {0};
    o.tls = 1;
    expect_refused(lagoon_connect("127.0.0.1", T->srv.port, &o, &c, &err), &err,
                   "the server's certificate is refused");
}

/* ---- the handshake policy, with OpenSSL directly ---------------------------------------------- */

/* A raw handshake offering alpn (NULL: none), at most TLS version max_version (0: any).
 * 1 if it completed, 0 if refused. */
static int raw_handshake(const char *alpn, int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* the policy is under test, not the chain */
    SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION);
    SSL_CTX_set_security_level(ctx, 0); /* so that TLS 1.0/1.1 can be offered at all */
    if (max_version)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    if (alpn) {
        unsigned char wire[32];
        size_t n = strlen(alpn);
        wire[0] = (unsigned char)n;
        memcpy(wire + 1, alpn, n);
        assert_int_equal(SSL_set_alpn_protos(ssl, wire, (unsigned)(n + 1)), 0);
    }
    int fd = raw_connect(T->srv.port, 0);
    SSL_set_fd(ssl, fd);
    struct timeval tv = {5, 0}; /* a blocking socket: bounded by a receive timeout */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int ok = SSL_connect(ssl) == 1;
    if (ok) {
        const unsigned char *p = NULL;
        unsigned plen = 0;
        SSL_get0_alpn_selected(ssl, &p, &plen);
        if (alpn)
            assert_memory_equal(p, "lagoon/1", 8);
        /* Through TLS the protocol is the usual one: preface, then SETTINGS. */
        assert_int_equal(SSL_write(ssl, WIRE_PREFACE, WIRE_PREFACE_LEN), WIRE_PREFACE_LEN);
        uint8_t hdr[WIRE_HEADER_SIZE];
        int got = 0;
        for (int i = 0; i < 16 && got < (int)sizeof(hdr); i++) {
            int r = SSL_read(ssl, hdr + got, (int)sizeof(hdr) - got);
            if (r <= 0)
                break;
            got += r;
        }
        assert_int_equal(got, WIRE_HEADER_SIZE);
        assert_int_equal(hdr[4], WIRE_SETTINGS);
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return ok;
}

static void handshake_policy(void **state)
{
    (void)state;
    assert_int_equal(raw_handshake("lagoon/1", 0), 1);
    assert_int_equal(raw_handshake(NULL, 0), 1);            /* no ALPN: served */
    assert_int_equal(raw_handshake("h2", 0), 0);            /* another protocol only: refused */
    assert_int_equal(raw_handshake("lagoon/1", TLS1_2_VERSION), 1);
    assert_int_equal(raw_handshake("lagoon/1", TLS1_1_VERSION), 0);
    assert_int_equal(raw_handshake("lagoon/1", TLS1_VERSION), 0);
}

/* ---- plain clients on the TLS port ------------------------------------------------------------ */

static void plain_clients_closed_cleanly(void **state)
{
    (void)state;
    /* A Lagoon client without TLS: a GOAWAY it can read, then the close. */
    int fd = raw_connect(T->srv.port, 0);
    raw_send(fd, WIRE_PREFACE, WIRE_PREFACE_LEN);
    uint8_t buf[1024];
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_GOAWAY);
    char msg[256];
    raw_meta_message(&f, msg, sizeof(msg));
    assert_non_null(strstr(msg, "requires TLS"));
    assert_int_equal(raw_wait_closed(fd, 5000), 1);
    close(fd);

    /* The library without tls says the same. */
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(lagoon_connect("127.0.0.1", T->srv.port, NULL, &c, &err), &err, "requires TLS");

    /* An HTTP client: one line of text, then the close. */
    fd = raw_connect(T->srv.port, 0);
    static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(fd, get, sizeof(get) - 1);
    size_t got = 0;
    for (int i = 0; i < 64 && got < sizeof(buf) - 1; i++) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) != 1)
            break;
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    assert_non_null(strstr((char *)buf, "over TLS"));
    assert_int_equal(raw_wait_closed(fd, 5000), 1);
    close(fd);

    /* One that sends nothing is closed at the handshake timeout (waited for up to five times it). */
    fd = raw_connect(T->srv.port, 0);
    assert_int_equal(raw_wait_closed(fd, 5 * HANDSHAKE_MS), 1);
    close(fd);
    /* The server still serves. */
    lagoon_client *ok;
    assert_int_equal(tls_connect("127.0.0.1", "ca1", NULL, &ok, &err), LAGOON_OK);
    health_ok(ok);
    lagoon_close(ok);
}

/* A new TLS connection is served: what a test did left the server working. */
static void still_serves(void)
{
    lagoon_client *ok;
    lagoon_error err;
    assert_int_equal(tls_connect("127.0.0.1", "ca1", NULL, &ok, &err), LAGOON_OK);
    health_ok(ok);
    lagoon_close(ok);
}

/* ---- slow and stalled peers ------------------------------------------------------------------ */

/* A real ClientHello (from a client SSL on memory BIOs) into buf; its length. */
static size_t client_hello(uint8_t *buf, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    assert_true(rb != NULL && wb != NULL);
    SSL_set_bio(ssl, rb, wb);
    assert_true(SSL_connect(ssl) <= 0); /* it waits for the ServerHello: the hello is written */
    char *p = NULL;
    long n = BIO_get_mem_data(wb, &p);
    assert_true(n > 100 && (size_t)n <= cap);
    memcpy(buf, p, (size_t)n);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return (size_t)n;
}

/* 1 if the server has closed fd (EOF or a reset), 0 if it is still open. */
static int peer_closed(int fd)
{
    uint8_t b[256];
    ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* A ClientHello trickled a byte at a time: bytes arriving do not extend the handshake
 * timeout, so the server closes the connection long before the hello is whole (a byte per
 * TRICKLE_GAP_MS makes it at least three times HANDSHAKE_MS). */
static void trickled_client_hello_closed(void **state)
{
    (void)state;
    static uint8_t hello[4096];
    size_t n = client_hello(hello, sizeof(hello));
    assert_true(n * TRICKLE_GAP_MS >= 3 * HANDSHAKE_MS);
    int fd = raw_connect(T->srv.port, 0);
    size_t sent = 0;
    int closed = 0;
    while (sent < n && !closed) {
        if (send(fd, hello + sent, 1, MSG_NOSIGNAL) != 1) {
            closed = 1;
            break;
        }
        sent++;
        struct pollfd none = {-1, 0, 0};
        poll(&none, 0, TRICKLE_GAP_MS);
        closed = peer_closed(fd);
    }
    if (!closed)
        fail_msg("the server waited for all %zu bytes of a trickled ClientHello", n);
    close(fd);
    still_serves();
}

static void tweak_small_output(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    cfg->max_frame_size = 65536;
    cfg->max_output_buffer = 256 * 1024;
}

static int setup_small_output(void **state)
{
    (void)state;
    install_pair("server");
    T = test_app_new(tweak_small_output);
    return 0;
}

static int no_connections(void *arg)
{
    (void)arg;
    return rpc_server_connections(T->srv.server) == 0;
}

/* SSL_write of all len bytes (a blocking socket, bounded by its send timeout); 0 on failure. */
static int ssl_write_all(SSL *ssl, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        int w = SSL_write(ssl, p, (int)len);
        if (w <= 0)
            return 0;
        p += w;
        len -= (size_t)w;
    }
    return 1;
}

/* A raw TLS client on fd (a blocking socket, its waits bounded by 5 s timeouts), the chain
 * not checked (not under test where it is used), the preface sent. Free with SSL_free. */
static SSL *raw_tls_open(int fd)
{
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    assert_non_null(ssl);
    SSL_set_fd(ssl, fd);
    assert_int_equal(SSL_connect(ssl), 1);
    assert_int_equal(ssl_write_all(ssl, WIRE_PREFACE, WIRE_PREFACE_LEN), 1);
    return ssl;
}

/* A TLS client that sends and never reads: the output cap (max-output-buffer) still holds
 * through the OpenSSL bufferevent, and the server cuts the connection instead of buffering
 * the 32 MB of echoes. */
static void tls_slow_reader_cut_off(void **state)
{
    (void)state;
    int fd = raw_connect_small(T->srv.port, 0, 4096);
    SSL *ssl = raw_tls_open(fd);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.payload.size = 16384;
    memset(req.payload.bytes, 'z', 16384);
    static uint8_t frame[WIRE_HEADER_SIZE + 17000];
    long n = wire_encode(&lagoon_v1_EchoRequest_info, &req, frame + WIRE_HEADER_SIZE, 17000, NULL);
    assert_true(n > 16384);
    assert_int_equal(wire_header_encode(frame, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoChat.id, 0, (size_t)n), 0);
    assert_int_equal(ssl_write_all(ssl, frame, WIRE_HEADER_SIZE + (size_t)n), 1);
    assert_int_equal(wire_header_encode(frame, WIRE_MESSAGE, 0, 1, 0, 0, (size_t)n), 0);
    int i = 0;
    for (; i < 2000 && !no_connections(NULL); i++)
        if (!ssl_write_all(ssl, frame, WIRE_HEADER_SIZE + (size_t)n))
            break; /* cut off */
    assert_true(i < 2000);
    assert_true(test_wait_for(no_connections, NULL, WAIT_MS));
    SSL_free(ssl);
    close(fd);
    still_serves();
}

/* SSL_read exactly len bytes (a socket with a receive timeout); 0 on failure. */
static int ssl_read_all(SSL *ssl, uint8_t *buf, size_t len)
{
    for (size_t got = 0; got < len;) {
        int r = SSL_read(ssl, buf + got, (int)(len - got));
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

/* Reads one whole frame through ssl: its type (-1 if the connection failed). Frames here are
 * small (SETTINGS, a Health/Check reply). */
static int ssl_read_frame_type(SSL *ssl)
{
    uint8_t hdr[WIRE_HEADER_SIZE], body[4096];
    if (!ssl_read_all(ssl, hdr, sizeof(hdr)))
        return -1;
    uint32_t length = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    size_t rest = (size_t)length + 4 - WIRE_HEADER_SIZE; /* the length counts all but its own 4 bytes */
    assert_true(rest <= sizeof(body));
    if (rest && !ssl_read_all(ssl, body, rest))
        return -1;
    return hdr[4];
}

/* After the handshake, a record the server cannot decrypt (as a tampering middlebox would make)
 * right behind a call ends the connection at once, not at a timeout. A client's close_notify
 * right behind its call is a half-close: the call is still answered, then its close is one. */
static void bad_record_and_close_notify_close(void **state)
{
    (void)state;
    for (int round = 0; round < 2; round++) {
        int fd = raw_connect(T->srv.port, 0);
        SSL *ssl = raw_tls_open(fd);
        uint8_t hdr[WIRE_HEADER_SIZE];
        assert_int_equal(wire_header_encode(hdr, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id,
                                            0, 0),
                         0);
        assert_int_equal(ssl_write_all(ssl, hdr, sizeof(hdr)), 1);
        if (round == 0) {
            /* An application-data record of 32 bytes that no key made. */
            uint8_t junk[5 + 32] = {0x17, 0x03, 0x03, 0x00, 0x20};
            memset(junk + 5, 0xA5, 32);
            raw_send(fd, junk, sizeof(junk));
        } else {
            assert_true(SSL_shutdown(ssl) >= 0); /* close_notify */
            int responses = 0;
            for (int i = 0; i < 8 && responses == 0; i++) /* SETTINGS, then the RESPONSE */
                responses += ssl_read_frame_type(ssl) == WIRE_RESPONSE;
            assert_int_equal(responses, 1);
            shutdown(fd, SHUT_WR);
        }
        assert_int_equal(raw_wait_closed(fd, WAIT_MS), 1);
        SSL_free(ssl);
        close(fd);
    }
    assert_true(test_wait_for(no_connections, NULL, WAIT_MS));
    still_serves();
}

/* ---- reload -------------------------------------------------------------------------------- */

static int new_pair_served(void *arg)
{
    (void)arg;
    lagoon_client *c;
    lagoon_error err;
    if (tls_connect("127.0.0.1", "ca2", NULL, &c, &err) != LAGOON_OK)
        return 0;
    lagoon_close(c);
    return 1;
}

static void reload_keeps_connections(void **state)
{
    (void)state;
    lagoon_client *before;
    lagoon_error err;
    assert_int_equal(tls_connect("127.0.0.1", "ca1", NULL, &before, &err), LAGOON_OK);
    health_ok(before);

    /* A pair that does not load is refused and the old one kept. */
    run("echo 'not a certificate' > %s/live.pem", dir);
    rpc_error rerr;
    assert_int_equal(rpc_server_reload_tls(T->srv.server, &rerr), RPC_ERR);
    assert_non_null(strstr(rerr.message, "live.pem"));
    lagoon_client *c;
    assert_int_equal(tls_connect("127.0.0.1", "ca1", NULL, &c, &err), LAGOON_OK);
    health_ok(c);
    lagoon_close(c);

    /* Rotation: the new pair (another CA's) in the files, then SIGHUP. */
    install_pair("server2");
    assert_int_equal(kill(getpid(), SIGHUP), 0);
    assert_true(test_wait_for(new_pair_served, NULL, WAIT_MS));
    expect_refused(tls_connect("127.0.0.1", "ca1", NULL, &c, &err), &err, "the server's certificate is refused");
    /* The connection from before the reload still works, on its old session. */
    health_ok(before);
    char token[65];
    assert_true(test_user(before, "tlsbob", 0, token) != 0);
    lagoon_close(before);
}

/* Connections made on another thread while the pair is reloaded again and again, until the
 * last one is done: every one is served (an SSL taken from the context at the moment of a
 * swap keeps it alive; ASan checks the references). Bounded: RELOAD_CONNECTS connections,
 * at most RELOAD_ROUNDS reloads. */
#define RELOAD_ROUNDS 5000
#define RELOAD_CONNECTS 40

typedef struct connector {
    atomic_int done;
    int ok, failed;
    char why[sizeof(((lagoon_v1_ResponseMeta *)0)->message)];
} connector;

static void *connect_loop(void *arg)
{
    connector *k = arg;
    for (int i = 0; i < RELOAD_CONNECTS; i++) {
        lagoon_client *c;
        lagoon_error err;
        if (tls_connect("127.0.0.1", "ca1", NULL, &c, &err) != LAGOON_OK) {
            k->failed++;
            snprintf(k->why, sizeof(k->why), "%s", err.detail.message);
            continue;
        }
        lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
        lagoon_v1_HealthCheckResponse resp = lagoon_v1_HealthCheckResponse_init_zero;
        if (lagoon_Health_Check(c, &req, &resp) == LAGOON_OK)
            k->ok++;
        else
            k->failed++;
        lagoon_close(c);
    }
    atomic_store(&k->done, 1);
    return NULL;
}

static void reload_during_accepts(void **state)
{
    (void)state;
    connector k = {0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, connect_loop, &k), 0);
    int reloads = 0;
    for (; reloads < RELOAD_ROUNDS && !atomic_load(&k.done); reloads++) {
        rpc_error rerr;
        if (rpc_server_reload_tls(T->srv.server, &rerr) != RPC_OK)
            fail_msg("reload %d: %s", reloads, rerr.message);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    if (k.failed)
        fail_msg("%d of %d connections failed during reloads: %s", k.failed, RELOAD_CONNECTS, k.why);
    assert_int_equal(k.ok, RELOAD_CONNECTS);
    assert_true(reloads > 1); /* the connections did overlap reloads */
}

/* ---- a transport of the caller's own ------------------------------------------------------------ */

typedef struct counting {
    lagoon_transport inner; /* the built-in TLS, standing in for a platform's */
    size_t bytes_read, bytes_written;
    unsigned reads, writes, wants;
    int closed;
    /* Takes what the contract allows to the extreme: every other write says WANT_WRITE and
     * writes nothing, the others take one byte (so each byte is a TLS record of its own: the
     * server reassembles frames split across records); reads hand out at most CHOP_READ_MAX
     * bytes (the rest of a record stays in OpenSSL: the client must read before it polls). */
    int chop;
} counting;

#define CHOP_READ_MAX 3

static long counting_read(void *arg, void *buf, size_t len)
{
    counting *k = arg;
    k->reads++;
    long n = k->inner.read(k->inner.arg, buf, k->chop && len > CHOP_READ_MAX ? CHOP_READ_MAX : len);
    if (n > 0)
        k->bytes_read += (size_t)n;
    return n;
}

static long counting_write(void *arg, const void *buf, size_t len)
{
    counting *k = arg;
    if (k->chop && k->writes++ % 2 == 0) {
        k->wants++;
        return LAGOON_IO_WANT_WRITE; /* the socket is writable: the client's poll returns at once */
    }
    long n = k->inner.write(k->inner.arg, buf, k->chop && len > 1 ? 1 : len);
    if (n > 0)
        k->bytes_written += (size_t)n;
    return n;
}

static void counting_close(void *arg)
{
    counting *k = arg;
    k->inner.close(k->inner.arg);
    k->closed++;
}

static int counting_open(void *open_arg, int fd, const char *host, uint32_t timeout_ms, lagoon_transport *t, char *err,
                         size_t errlen)
{
    counting *k = open_arg;
    char ca_path[128];
    snprintf(ca_path, sizeof(ca_path), "%s/ca1.pem", dir);
    lagoon_tls_config cfg = {ca_path, NULL};
    int st = lagoon_tls_open(&cfg, fd, host, timeout_ms, &k->inner, err, errlen);
    if (st != LAGOON_OK)
        return st;
    *t = (lagoon_transport){.arg = k, .read = counting_read, .write = counting_write, .close = counting_close};
    return LAGOON_OK;
}

/* A client on the transport k. */
static lagoon_client *counting_connect(counting *k)
{
    lagoon_options o = {0};
    o.transport_open = counting_open;
    o.transport_arg = k;
    lagoon_client *c;
    lagoon_error err;
    if (lagoon_connect("127.0.0.1", T->srv.port, &o, &c, &err) != LAGOON_OK)
        fail_msg("connect: %s", err.detail.message);
    return c;
}

static void transport_hook(void **state)
{
    (void)state;
    counting k = {0};
    lagoon_client *c = counting_connect(&k);
    health_ok(c);
    assert_true(k.bytes_written >= WIRE_PREFACE_LEN + WIRE_HEADER_SIZE);
    assert_true(k.bytes_read > WIRE_HEADER_SIZE);
    lagoon_close(c);
    assert_int_equal(k.closed, 1);
}

static void transport_partial_io(void **state)
{
    (void)state;
    counting k = {.chop = 1};
    lagoon_client *c = counting_connect(&k);
    health_ok(c);
    char token[65];
    assert_true(test_user(c, "choppy", 0, token) != 0);
    /* A reply of many records, handed out three bytes at a time. */
    schema_byte_for_byte(c);
    assert_true(k.wants > 10);
    assert_true(k.reads > lagoon_schema_size / CHOP_READ_MAX);
    lagoon_close(c);
    assert_int_equal(k.closed, 1);
}

/* ---- the asynchronous client ----------------------------------------------------------------- */

typedef struct async_result {
    int done;
    int status;
    char message[sizeof(((lagoon_v1_ResponseMeta *)0)->message)];
    struct event_base *base;
} async_result;

static void async_done(int status, const lagoon_v1_ResponseMeta *meta, void *arg)
{
    async_result *r = arg;
    r->done = 1;
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", meta ? meta->message : "");
    event_base_loopbreak(r->base);
}

/* A Health/Check through the asynchronous client with TLS, name (NULL: the host) checked:
 * its status, the message into r. Bounded: the loop gives up after WAIT_MS. */
static int async_health(const char *name, async_result *r)
{
    struct event_base *base = event_base_new();
    assert_non_null(base);
    char ca_path[128], err[256] = "";
    snprintf(ca_path, sizeof(ca_path), "%s/ca1.pem", dir);
    lagoon_async_options o = {0};
    o.tls = 1;
    o.tls_ca_file = ca_path;
    o.tls_server_name = name;
    lagoon_async *c;
    assert_int_equal(lagoon_async_connect(base, "127.0.0.1", T->srv.port, &o, &c, err, sizeof(err)), LAGOON_OK);
    memset(r, 0, sizeof(*r));
    r->base = base;
    lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse resp = lagoon_v1_HealthCheckResponse_init_zero;
    assert_int_equal(lagoon_async_Health_Check(c, &req, &resp, async_done, r), LAGOON_OK);
    struct timeval limit = {WAIT_MS / 1000, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    assert_int_equal(r->done, 1);
    if (r->status == LAGOON_OK)
        assert_int_equal(resp.status, lagoon_v1_HealthCheckResponse_ServingStatus_SERVING);
    lagoon_async_free(c);
    event_base_free(base);
    return r->status;
}

static void async_client_tls(void **state)
{
    (void)state;
    async_result r;
    assert_int_equal(async_health(NULL, &r), LAGOON_OK);
    assert_int_equal(async_health("wrong.example", &r), LAGOON_UNAVAILABLE);
    if (strstr(r.message, "hostname mismatch") == NULL)
        fail_msg("expected a hostname mismatch, got: %s", r.message);
}

/* ---- lagoonctl ------------------------------------------------------------------------------- */

/* lagoonctl's exit status with args, its standard output into out. */
static int lagoonctl(const char *args, char *out, size_t cap)
{
    char cmd[CMD_MAX];
    snprintf(cmd, sizeof(cmd), "XDG_CONFIG_HOME=%s timeout 20 %s --addr 127.0.0.1:%u %s > %s/ctl.out 2> %s/ctl.err",
             dir, LAGOONCTL_PATH, (unsigned)T->srv.port, args, dir, dir);
    int r = system(cmd);
    char path[128];
    snprintf(path, sizeof(path), "%s/ctl.out", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static void lagoonctl_tls(void **state)
{
    (void)state;
    char out[4096], args[256];
    snprintf(args, sizeof(args), "--tls --cacert %s/ca1.pem call lagoon.v1.Health/Check", dir);
    assert_int_equal(lagoonctl(args, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "SERVING"));
    /* The environment form. */
    snprintf(args, sizeof(args), "call lagoon.v1.Health/Check");
    char env_args[512];
    snprintf(env_args, sizeof(env_args), "%s", args);
    char cmd_prefix[256];
    snprintf(cmd_prefix, sizeof(cmd_prefix), "%s/ca1.pem", dir);
    assert_int_equal(setenv("LAGOON_CACERT", cmd_prefix, 1), 0);
    assert_int_equal(lagoonctl(env_args, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "SERVING"));
    assert_int_equal(unsetenv("LAGOON_CACERT"), 0);
    /* The wrong CA: UNAVAILABLE (64 + 14). Without --tls: the server's GOAWAY, the same status. */
    snprintf(args, sizeof(args), "--cacert %s/ca2.pem call lagoon.v1.Health/Check", dir);
    assert_int_equal(lagoonctl(args, out, sizeof(out)), 64 + LAGOON_UNAVAILABLE);
    assert_int_equal(lagoonctl("call lagoon.v1.Health/Check", out, sizeof(out)), 64 + LAGOON_UNAVAILABLE);
}

/* Verification is on by default: a self-signed server is refused by the library without a CA
 * file and by lagoonctl --tls without --cacert (both then check against the system's CAs),
 * and served once its certificate is given as the CA. */
static void self_signed_refused_by_default(void **state)
{
    (void)state;
    lagoon_options o = {0};
    o.tls = 1;
    lagoon_client *c = NULL;
    lagoon_error err;
    expect_refused(lagoon_connect("127.0.0.1", T->srv.port, &o, &c, &err), &err, "self-signed certificate");
    assert_null(c);
    char out[4096], args[256], ctl_err[1024], path[128];
    assert_int_equal(lagoonctl("--tls call lagoon.v1.Health/Check", out, sizeof(out)), 64 + LAGOON_UNAVAILABLE);
    snprintf(path, sizeof(path), "%s/ctl.err", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(ctl_err, 1, sizeof(ctl_err) - 1, f);
    ctl_err[n] = '\0';
    fclose(f);
    if (strstr(ctl_err, "self-signed certificate") == NULL)
        fail_msg("lagoonctl --tls said: %s", ctl_err);
    snprintf(args, sizeof(args), "--cacert %s/self.pem call lagoon.v1.Health/Check", dir);
    assert_int_equal(lagoonctl(args, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "SERVING"));
}

/* ---- the real lagoond ---------------------------------------------------------------------- */

typedef struct daemon_log {
    int fd;          /* lagoond's stderr */
    size_t len;
    char text[32768]; /* what it said so far */
} daemon_log;

/* Reads lagoond's stderr until needle appears (1), or timeout_ms passes (0). */
static int log_until(daemon_log *d, const char *needle, uint32_t timeout_ms)
{
    for (uint32_t waited = 0;; waited += 50) {
        if (strstr(d->text, needle))
            return 1;
        if (waited >= timeout_ms)
            return 0;
        struct pollfd p = {d->fd, POLLIN, 0};
        if (poll(&p, 1, 50) == 1 && d->len < sizeof(d->text) - 1) {
            ssize_t n = read(d->fd, d->text + d->len, sizeof(d->text) - 1 - d->len);
            if (n > 0) {
                d->len += (size_t)n;
                d->text[d->len] = '\0';
            }
        }
    }
}

/* lagoond --tls-cert/--tls-key: a call, a rotation by SIGHUP with a connection from before it
 * still working, a bad pair refused by the next SIGHUP, and a clean SIGTERM. */
static void lagoond_sighup_rotation(void **state)
{
    (void)state;
    install_pair("server");
    char data[128], cert[128], key[128];
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(cert, sizeof(cert), "%s/live.pem", dir);
    snprintf(key, sizeof(key), "%s/live.key", dir);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Gone with the test, should a failed assertion leave it running: it holds the test's
         * stdout, which ctest waits on until its timeout. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        execl(LAGOOND_PATH, LAGOOND_PATH, "--listen", "127.0.0.1:0", "--data", data, "--threads", "2", "--tls-cert",
              cert, "--tls-key", key, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    static daemon_log d; /* static: 32 KiB */
    memset(&d, 0, sizeof(d));
    d.fd = pipefd[0];
    if (!log_until(&d, " with TLS ", WAIT_MS))
        fail_msg("lagoond did not start with TLS; it said: %s", d.text);
    uint16_t port = (uint16_t)atoi(strstr(d.text, "listening on 127.0.0.1:") + strlen("listening on 127.0.0.1:"));
    assert_true(port > 0);

    lagoon_client *before, *c;
    lagoon_error err;
    assert_int_equal(tls_connect_port(port, "127.0.0.1", "ca1", "localhost", &before, &err), LAGOON_OK);
    health_ok(before);

    install_pair("server2");
    assert_int_equal(kill(pid, SIGHUP), 0);
    if (!log_until(&d, "TLS certificate reloaded", WAIT_MS))
        fail_msg("no reload; lagoond said: %s", d.text);
    assert_int_equal(tls_connect_port(port, "127.0.0.1", "ca2", "localhost", &c, &err), LAGOON_OK);
    health_ok(c);
    lagoon_close(c);
    expect_refused(tls_connect_port(port, "127.0.0.1", "ca1", "localhost", &c, &err), &err,
                   "the server's certificate is refused");
    health_ok(before);

    run("echo 'not a key' > %s/live.key", dir);
    assert_int_equal(kill(pid, SIGHUP), 0);
    if (!log_until(&d, "TLS reload refused", WAIT_MS))
        fail_msg("the bad pair was not refused; lagoond said: %s", d.text);
    assert_int_equal(tls_connect_port(port, "127.0.0.1", "ca2", "localhost", &c, &err), LAGOON_OK);
    health_ok(c);
    lagoon_close(c);
    health_ok(before);
    lagoon_close(before);

    assert_int_equal(kill(pid, SIGTERM), 0);
    int status = -1;
    for (int i = 0; i < 500 && waitpid(pid, &status, WNOHANG) == 0; i++) {
        struct pollfd none = {-1, 0, 0};
        poll(&none, 0, 20); /* 10 s at most */
    }
    if (!WIFEXITED(status)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("lagoond did not exit after SIGTERM");
    }
    assert_int_equal(WEXITSTATUS(status), 0);
    close(d.fd);
    run("rm -rf '%s'", data);
}

/* ---- configuration --------------------------------------------------------------------------- */

static void config_checked(void **state)
{
    (void)state;
    rpc_config cfg;
    test_config(&cfg);
    rpc_error err;
    snprintf(cfg.tls_cert, sizeof(cfg.tls_cert), "%s/server.pem", dir);
    assert_int_equal(rpc_config_check(&cfg, &err), RPC_ERR); /* a certificate without its key */
    assert_non_null(strstr(err.message, "--tls-key"));
    snprintf(cfg.tls_key, sizeof(cfg.tls_key), "%s/other.key", dir);
    assert_int_equal(rpc_config_check(&cfg, &err), RPC_ERR); /* another certificate's key */
    assert_non_null(strstr(err.message, "other.key"));
    snprintf(cfg.tls_key, sizeof(cfg.tls_key), "%s/server.key", dir);
    assert_int_equal(rpc_config_check(&cfg, &err), RPC_OK);
    snprintf(cfg.tls_cert, sizeof(cfg.tls_cert), "%s/missing.pem", dir);
    assert_int_equal(rpc_config_check(&cfg, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "missing.pem"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_checked),
        cmocka_unit_test(lagoond_sighup_rotation),
        cmocka_unit_test_setup_teardown(good_handshake_and_calls, setup_server, teardown),
        cmocka_unit_test_setup_teardown(wrong_host_name_refused, setup_server, teardown),
        cmocka_unit_test_setup_teardown(unknown_ca_refused, setup_server, teardown),
        cmocka_unit_test_setup_teardown(handshake_policy, setup_server, teardown),
        cmocka_unit_test_setup_teardown(plain_clients_closed_cleanly, setup_server, teardown),
        cmocka_unit_test_setup_teardown(transport_hook, setup_server, teardown),
        cmocka_unit_test_setup_teardown(transport_partial_io, setup_server, teardown),
        cmocka_unit_test_setup_teardown(trickled_client_hello_closed, setup_server, teardown),
        cmocka_unit_test_setup_teardown(bad_record_and_close_notify_close, setup_server, teardown),
        cmocka_unit_test_setup_teardown(tls_slow_reader_cut_off, setup_small_output, teardown),
        cmocka_unit_test_setup_teardown(async_client_tls, setup_server, teardown),
        cmocka_unit_test_setup_teardown(lagoonctl_tls, setup_server, teardown),
        cmocka_unit_test_setup_teardown(reload_keeps_connections, setup_server, teardown),
        cmocka_unit_test_setup_teardown(reload_during_accepts, setup_server, teardown),
        cmocka_unit_test_setup_teardown(expired_certificate_refused, setup_expired, teardown),
        cmocka_unit_test_setup_teardown(self_signed_refused_by_default, setup_self_signed, teardown),
        cmocka_unit_test_setup_teardown(another_hosts_certificate_refused, setup_other, teardown),
    };
    return cmocka_run_group_tests_name("tls", tests, group_setup, group_teardown);
}
