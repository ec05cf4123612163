/* http_listener: an evhttp server on a thread and an event base of its own, with a bound on the
 * connections open at once: what lagoond's HTTP listeners (the media listener, media_http.h)
 * share. The owner supplies the request callback; it runs on the listener's thread.
 *
 * evhttp (libevent 2.1) has no connection limit, and every connection holds a descriptor of the
 * process's, which the RPC listener and the store need: past max_connections the listener stops
 * accepting (further clients wait in the kernel's backlog) until one closes. Its timeout counts
 * from the last byte, so request_timeout_s bounds how long a connection may take to send a whole
 * request (a client trickling headers, slowloris, or idling). A failed accept (out of descriptors)
 * pauses accepting for a second rather than spinning the loop on the waiting connection. */
#ifndef LAGOON_HTTP_LISTENER_H
#define LAGOON_HTTP_LISTENER_H

#include <stddef.h>
#include <stdint.h>

#include "rpc.h"

struct evhttp_request;
struct event_base;

typedef struct http_listener_config {
    const char *what;          /* "media listener": for error messages */
    const char *host;          /* numeric address */
    uint16_t port;             /* 0: an ephemeral one (http_listener_port) */
    unsigned max_connections;  /* open at once, at least 1 */
    int timeout_s;             /* evhttp's read/write timeout per connection: seconds without progress */
    int request_timeout_s;     /* a request's line and headers must arrive whole within this many
                                * seconds of the connection's start or of its previous answer (an
                                * idle keep-alive connection closes then too); 0 = no such bound */
    size_t max_headers;        /* bytes of a request's headers */
    size_t max_body;           /* bytes of a request's body */
    size_t max_single_write;   /* bytes a connection writes per wakeup; 0 = libevent's 16 KiB */
    void (*on_request)(struct evhttp_request *req, void *arg);
    void *arg;
} http_listener_config;

typedef struct http_listener http_listener;

/* Binds cfg->host:port and starts serving on a thread of its own; cfg's strings are used only
 * during the call. RPC_OK, or RPC_ERR with err filled. Sets libevent up for threads and ignores
 * SIGPIPE, as rpc_server_new does. */
int http_listener_start(const http_listener_config *cfg, http_listener **out, rpc_error *err);
/* The bound port. */
uint16_t http_listener_port(const http_listener *l);
/* Connections open now (for tests and metrics; read without a lock: a snapshot). */
unsigned http_listener_connections(const http_listener *l);
/* Stops the thread, closes the connections and the listener, frees. NULL allowed. Any thread but
 * the listener's own. */
void http_listener_stop(http_listener *l);

#endif
