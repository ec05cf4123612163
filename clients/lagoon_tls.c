/* liblagoon's built-in TLS transport. See lagoon.h (lagoon_options.tls) and lagoon_tls.h. */
#include "lagoon_tls.h"

#include <stdio.h>

#ifdef LAGOON_CLIENT_NO_OPENSSL

int lagoon_tls_open(void *open_arg, int fd, const char *host, uint32_t timeout_ms, lagoon_transport *t, char *err,
                    size_t errlen)
{
    (void)open_arg;
    (void)fd;
    (void)host;
    (void)timeout_ms;
    (void)t;
    snprintf(err, errlen, "TLS: this library was built without OpenSSL; give lagoon_options.transport_open");
    return LAGOON_UNIMPLEMENTED;
}

struct ssl_st *lagoon_tls_ssl_new(const lagoon_tls_config *cfg, const char *host, char *err, size_t errlen)
{
    (void)cfg;
    (void)host;
    snprintf(err, errlen, "TLS: this library was built without OpenSSL");
    return NULL;
}

void lagoon_tls_why(struct ssl_st *ssl, unsigned long e, char *err, size_t errlen)
{
    (void)ssl;
    (void)e;
    snprintf(err, errlen, "TLS: this library was built without OpenSSL");
}

int lagoon_tls_check_alpn(struct ssl_st *ssl, char *err, size_t errlen)
{
    (void)ssl;
    snprintf(err, errlen, "TLS: this library was built without OpenSSL");
    return -1;
}

#else

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define TLS_ALPN "\x08lagoon/1"
#define TLS_ALPN_LEN 9
#define TLS_NAME "lagoon/1"
#define TLS_WHY_MAX 256

typedef struct tls_conn {
    SSL *ssl; /* holds its context */
    char why[TLS_WHY_MAX]; /* the last failure, for lagoon_transport.error */
} tls_conn;

/* ---- a socket BIO that never raises SIGPIPE ----------------------------------------------
 * OpenSSL's own socket BIO writes with write(2): a server that has gone would kill a client
 * that does not ignore SIGPIPE. A library must not change the signal's disposition, so its
 * BIO sends with MSG_NOSIGNAL. */

static int bio_fd(BIO *b) { return (int)(intptr_t)BIO_get_data(b); }

static int bio_write(BIO *b, const char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = send(bio_fd(b), buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = recv(bio_fd(b), buf, (size_t)len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* nothing buffered here; the rest is not supported */
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method(void)
{
    static BIO_METHOD *m;
    static int tried;
    /* Made once and kept for the process (OpenSSL frees nothing of it before exit either). A
     * race between two first connects would at worst make two. */
    if (!tried) {
        BIO_METHOD *n = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lagoon socket");
        if (n != NULL && (BIO_meth_set_write(n, bio_write) != 1 || BIO_meth_set_read(n, bio_read) != 1 ||
                          BIO_meth_set_ctrl(n, bio_ctrl) != 1 || BIO_meth_set_create(n, bio_create) != 1)) {
            BIO_meth_free(n);
            n = NULL;
        }
        m = n;
        tried = 1;
    }
    return m;
}

/* ---- the transport ------------------------------------------------------------------------- */

/* The first OpenSSL error queued (and clears the queue), after what failed; errno's text
 * when OpenSSL has none (a socket error). */
static void why_into(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, errlen, "TLS: %s: %s", what, reason ? reason : (e ? "error" : strerror(errno)));
    ERR_clear_error();
}

static void why_openssl(tls_conn *tc, const char *what) { why_into(tc->why, sizeof(tc->why), what); }

/* SSL_read/SSL_write's outcome as a LAGOON_IO_* code (or 0 for a close). */
static long io_result(tls_conn *tc, int r, const char *what)
{
    switch (SSL_get_error(tc->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return LAGOON_IO_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return LAGOON_IO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        why_openssl(tc, what);
        return LAGOON_IO_ERROR;
    }
}

static long tls_read(void *arg, void *buf, size_t len)
{
    tls_conn *tc = arg;
    ERR_clear_error();
    int r = SSL_read(tc->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : io_result(tc, r, "read failed");
}

static long tls_write(void *arg, const void *buf, size_t len)
{
    tls_conn *tc = arg;
    ERR_clear_error();
    int r = SSL_write(tc->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : io_result(tc, r, "write failed");
}

static const char *tls_error(void *arg)
{
    tls_conn *tc = arg;
    return tc->why[0] ? tc->why : NULL;
}

static void tls_close(void *arg)
{
    tls_conn *tc = arg;
    if (tc->ssl != NULL && SSL_is_init_finished(tc->ssl))
        (void)SSL_shutdown(tc->ssl); /* close_notify, best effort: the socket is non-blocking */
    SSL_free(tc->ssl);
    free(tc);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

SSL *lagoon_tls_ssl_new(const lagoon_tls_config *cfg, const char *host, char *err, size_t errlen)
{
    const char *name = cfg && cfg->server_name ? cfg->server_name : host;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        why_into(err, errlen, "cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A server that closes without close_notify has still ended its frames cleanly or not:
     * the frame layer, not TLS, says whether a reply was whole. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = cfg && cfg->ca_file ? SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char what[300];
        snprintf(what, sizeof(what), "cannot load the CA file %s", cfg && cfg->ca_file ? cfg->ca_file : "(system)");
        why_into(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (ssl == NULL) {
        why_into(err, errlen, "out of memory");
        return NULL;
    }
    unsigned char addr[16];
    int numeric = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
    if (numeric) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set1_host(ssl, name) == 1 && SSL_set_tlsext_host_name(ssl, name) == 1;
    }
    if (!ok || SSL_set_alpn_protos(ssl, (const unsigned char *)TLS_ALPN, TLS_ALPN_LEN) != 0) {
        why_into(err, errlen, "cannot set the server name");
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

void lagoon_tls_why(SSL *ssl, unsigned long e, char *err, size_t errlen)
{
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(err, errlen, "TLS: the server's certificate is refused: %s", X509_verify_cert_error_string(v));
    } else if (e != 0) {
        const char *reason = ERR_reason_error_string(e);
        snprintf(err, errlen, "TLS: handshake failed: %s", reason ? reason : "error");
    } else {
        snprintf(err, errlen, "TLS: the server closed the connection during the handshake");
    }
}

int lagoon_tls_check_alpn(SSL *ssl, char *err, size_t errlen)
{
    const unsigned char *proto = NULL;
    unsigned int plen = 0;
    SSL_get0_alpn_selected(ssl, &proto, &plen);
    /* No ALPN at all (a TLS terminator that does not forward it) is accepted; another
     * protocol is a server that is not Lagoon's. */
    if (plen == 0 || (plen == sizeof(TLS_NAME) - 1 && memcmp(proto, TLS_NAME, plen) == 0))
        return 0;
    snprintf(err, errlen, "TLS: the server selected ALPN protocol '%.*s', not %s", (int)plen, (const char *)proto,
             TLS_NAME);
    return -1;
}

/* Runs the handshake to its end or the deadline. */
static int handshake(tls_conn *tc, int fd, uint32_t timeout_ms)
{
    uint64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(tc->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(tc->ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            lagoon_tls_why(tc->ssl, ERR_peek_error(), tc->why, sizeof(tc->why));
            ERR_clear_error();
            return -1;
        }
        uint64_t now = mono_ms();
        if (now >= deadline) {
            snprintf(tc->why, sizeof(tc->why), "TLS: handshake timed out after %u ms", timeout_ms);
            return -1;
        }
        struct pollfd p = {fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, 0};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno != EINTR) {
            snprintf(tc->why, sizeof(tc->why), "TLS: poll: %s", strerror(errno));
            return -1;
        }
    }
}

int lagoon_tls_open(void *open_arg, int fd, const char *host, uint32_t timeout_ms, lagoon_transport *t, char *err,
                    size_t errlen)
{
    tls_conn *tc = calloc(1, sizeof(*tc));
    if (tc == NULL) {
        snprintf(err, errlen, "TLS: out of memory");
        return LAGOON_RESOURCE_EXHAUSTED;
    }
    tc->ssl = lagoon_tls_ssl_new(open_arg, host, err, errlen);
    if (tc->ssl == NULL) {
        free(tc);
        return LAGOON_UNAVAILABLE;
    }
    BIO_METHOD *m = bio_method();
    BIO *bio = m ? BIO_new(m) : NULL;
    if (bio == NULL) {
        snprintf(err, errlen, "TLS: out of memory");
        tls_close(tc);
        return LAGOON_UNAVAILABLE;
    }
    BIO_set_data(bio, (void *)(intptr_t)fd);
    SSL_set_bio(tc->ssl, bio, bio); /* the SSL owns it now */
    if (handshake(tc, fd, timeout_ms) != 0 || lagoon_tls_check_alpn(tc->ssl, tc->why, sizeof(tc->why)) != 0) {
        snprintf(err, errlen, "%s", tc->why);
        tls_close(tc);
        return LAGOON_UNAVAILABLE;
    }
    t->arg = tc;
    t->read = tls_read;
    t->write = tls_write;
    t->error = tls_error;
    t->close = tls_close;
    return LAGOON_OK;
}

#endif
