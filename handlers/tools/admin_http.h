/* admin_http: lagoond's HTTP admin listener (libevent evhttp), for operators and load balancers.
 *
 *   GET /metrics  the Prometheus text format (0.0.4): the RPC layer's (rpc_server_metrics),
 *                 the store's counters, the build's version
 *   GET /healthz  200 "ok" while the process answers
 *   GET /readyz   200 "ready" while the store is open and the server is not draining, else 503:
 *                 a load balancer stops sending new connections as soon as a drain starts
 *
 * It runs on a thread and an event base of its own, so a slow scraper never delays a call,
 * and it reads only counters that the loops keep without locks. It is meant for a loopback
 * or management address: it has no authentication. */
#ifndef LAGOON_ADMIN_HTTP_H
#define LAGOON_ADMIN_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "rpc.h"

/* Longest --admin-listen value ("[v6 address]:port"). */
#define ADMIN_LISTEN_MAX 64

/* Admin connections open at once. evhttp (libevent 2.1) has no such limit, and every connection
 * holds a descriptor of the process's, which the RPC listener and the store need: past this many
 * the listener stops accepting (further clients wait in the kernel's backlog) until one closes.
 * A scraper and a load balancer's probes need a handful. */
#define ADMIN_MAX_CONNECTIONS 64

typedef struct admin_http admin_http;

/* Parses "PORT", "HOST:PORT" or "[V6]:PORT" (HOST numeric; 127.0.0.1 when left out) into
 * host (cap bytes) and *port. 0, or -1 with err filled. For rpc_option's PARSE kind. */
int admin_listen_parse(const char *value, char *host, size_t cap, uint16_t *port, char *err, size_t errlen);

/* Binds host:port (port 0: an ephemeral one, see admin_http_port) and starts serving srv's and
 * a's numbers on a thread of its own. srv and a must outlive admin_http_stop. RPC_OK, or RPC_ERR
 * with err filled. Call after rpc_server_new (which sets libevent up for threads). */
int admin_http_start(const char *host, uint16_t port, rpc_server *srv, app *a, admin_http **out, rpc_error *err);
/* The bound port. */
uint16_t admin_http_port(const admin_http *h);
/* Stops the thread and closes the listener. NULL allowed. Any thread but its own. */
void admin_http_stop(admin_http *h);

#endif
