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

#endif
