/* rpc_tls: the server's TLS context (OpenSSL), internal to the rpc module.
 *
 * Policy, fixed here rather than configurable, so that no deployment ends up weaker by
 * accident: TLS 1.2 and 1.3 only; for 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
 * ChaCha20-Poly1305), for 1.3 OpenSSL's defaults (all AEAD); no renegotiation, no compression;
 * ALPN "lagoon/1" (RPC_TLS_ALPN): a client that offers ALPN without it is refused with the
 * no_application_protocol alert; a client that offers no ALPN at all is served.
 *
 * The context is swapped whole on a reload: connections made before keep the context they
 * were made with (an SSL holds a reference to its SSL_CTX), new ones get the new one.
 */
#ifndef LAGOON_RPC_TLS_H
#define LAGOON_RPC_TLS_H

#include "rpc.h"

struct ssl_st;

/* The ALPN protocol id, as it goes on the wire: a length byte, then the name. */
#define RPC_TLS_ALPN "\x08lagoon/1"
#define RPC_TLS_ALPN_LEN 9
/* The first byte of a TLS record carrying a handshake message (a ClientHello): how the server
 * tells a TLS client from a plain one before starting the handshake. */
#define RPC_TLS_RECORD_HANDSHAKE 0x16

typedef struct rpc_tls rpc_tls;

/* Loads the PEM certificate chain and private key into a new context. RPC_OK with *out set,
 * or RPC_ERR with err saying which file and why. Free with rpc_tls_free. */
int rpc_tls_new(const char *cert_file, const char *key_file, rpc_tls **out, rpc_error *err);

/* Loads the pair again and makes it the context of new connections. A pair that does not load
 * (missing file, bad PEM, a key that does not match the certificate) leaves the current
 * context in place: RPC_ERR with err filled. Any thread. */
int rpc_tls_reload(rpc_tls *t, const char *cert_file, const char *key_file, rpc_error *err);

/* Checks that the pair loads, without keeping it (rpc_config_check). */
int rpc_tls_check(const char *cert_file, const char *key_file, rpc_error *err);

/* A new server-side SSL on the current context, or NULL (out of memory). The caller owns it
 * (a bufferevent it is handed to frees it). Any thread. */
struct ssl_st *rpc_tls_ssl_new(rpc_tls *t);

/* One line describing OpenSSL's error e (bufferevent_get_openssl_error), into buf. */
void rpc_tls_error_string(unsigned long e, char *buf, size_t len);

void rpc_tls_free(rpc_tls *t);

#endif
