/* liblagoon's built-in TLS transport (OpenSSL); internal to the client libraries. */
#ifndef LAGOON_CLIENT_TLS_H
#define LAGOON_CLIENT_TLS_H

#include "lagoon.h"

/* What lagoon_tls_open checks (lagoon_options.tls_*). */
typedef struct lagoon_tls_config {
    const char *ca_file;     /* PEM CAs; NULL: the system's store */
    const char *server_name; /* the name the certificate must carry; NULL: the host */
} lagoon_tls_config;

/* A lagoon_transport_open_fn: open_arg is a const lagoon_tls_config *. */
int lagoon_tls_open(void *open_arg, int fd, const char *host, uint32_t timeout_ms, lagoon_transport *t, char *err,
                    size_t errlen);

/* The pieces the asynchronous client uses with an OpenSSL bufferevent (lagoon_async.c). */
struct ssl_st;
/* A client SSL for host, its context its own: TLS 1.2+, the peer verified against cfg's CA
 * file (or the system's store) and name, SNI for a name, ALPN lagoon/1 offered. No BIO yet.
 * NULL with a message in err (UNIMPLEMENTED's in a build without OpenSSL). Free with
 * SSL_free (or the bufferevent it is given to). */
struct ssl_st *lagoon_tls_ssl_new(const lagoon_tls_config *cfg, const char *host, char *err, size_t errlen);
/* Why a handshake on ssl failed (e: the OpenSSL error seen, 0 if none), into err. */
void lagoon_tls_why(struct ssl_st *ssl, unsigned long e, char *err, size_t errlen);
/* After the handshake: 0 if the server selected lagoon/1 or no ALPN, else -1 with err. */
int lagoon_tls_check_alpn(struct ssl_st *ssl, char *err, size_t errlen);

#endif
