/* rpc_tls: the server's TLS context. See tls.h. */
#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* TLS 1.2 suites: ECDHE for forward secrecy, AEAD only (no CBC, no RSA key exchange). */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"    \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct rpc_tls {
    pthread_mutex_t mu; /* guards ctx: loops take SSLs from it while a reload swaps it */
    SSL_CTX *ctx;
};

/* The first OpenSSL error queued (and clears the queue), with what failed. */
static void tls_fail(rpc_error *err, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char why[200];
    rpc_tls_error_string(e, why, sizeof(why));
    ERR_clear_error();
    snprintf(err->message, sizeof(err->message), "TLS: %s%s%s: %s", what, file ? " " : "", file ? file : "", why);
}

void rpc_tls_error_string(unsigned long e, char *buf, size_t len)
{
    if (e == 0) {
        snprintf(buf, len, "unknown error");
        return;
    }
    const char *reason = ERR_reason_error_string(e);
    if (reason != NULL)
        snprintf(buf, len, "%s", reason);
    else
        ERR_error_string_n(e, buf, len);
}

/* Chooses lagoon/1 among the client's ALPN offers, or refuses the handshake. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                          unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, (const unsigned char *)RPC_TLS_ALPN, RPC_TLS_ALPN_LEN, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol: it wants another protocol */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *ctx_load(const char *cert_file, const char *key_file, rpc_error *err)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_fail(err, "cannot create a context", NULL);
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        tls_fail(err, "cannot set the protocol policy", NULL);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* A client that closes without close_notify has closed: frames say where messages end, so
     * a cut cannot pass for a whole one. (libevent 2.1's "dirty shutdown" does not know
     * OpenSSL 3's unexpected-EOF error, which would otherwise be logged as a TLS error.) */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Idle connections give their read and write buffers (about 34 KiB each) back: the server
     * holds up to max-connections of them, most idle at any time. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tls_fail(err, "cannot load the certificate", cert_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        tls_fail(err, "cannot load the private key", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_fail(err, "the private key does not match the certificate", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int rpc_tls_new(const char *cert_file, const char *key_file, rpc_tls **out, rpc_error *err)
{
    *out = NULL;
    SSL_CTX *ctx = ctx_load(cert_file, key_file, err);
    if (ctx == NULL)
        return RPC_ERR;
    rpc_tls *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        SSL_CTX_free(ctx);
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    pthread_mutex_init(&t->mu, NULL);
    t->ctx = ctx;
    *out = t;
    return RPC_OK;
}

int rpc_tls_reload(rpc_tls *t, const char *cert_file, const char *key_file, rpc_error *err)
{
    SSL_CTX *ctx = ctx_load(cert_file, key_file, err);
    if (ctx == NULL)
        return RPC_ERR;
    pthread_mutex_lock(&t->mu);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    pthread_mutex_unlock(&t->mu);
    SSL_CTX_free(old); /* its connections hold references: freed when the last one closes */
    return RPC_OK;
}

int rpc_tls_check(const char *cert_file, const char *key_file, rpc_error *err)
{
    SSL_CTX *ctx = ctx_load(cert_file, key_file, err);
    if (ctx == NULL)
        return RPC_ERR;
    SSL_CTX_free(ctx);
    return RPC_OK;
}

SSL *rpc_tls_ssl_new(rpc_tls *t)
{
    pthread_mutex_lock(&t->mu);
    SSL *ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->mu);
    return ssl;
}

void rpc_tls_free(rpc_tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
