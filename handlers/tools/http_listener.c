/* http_listener: see http_listener.h. */
#include "http_listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>

struct http_listener {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop;              /* activated by http_listener_stop: leaves the loop */
    struct evconnlistener *listener; /* evhttp's; NULL once it is being freed */
    struct event *claim;             /* claim_cb: attaches the close callbacks of new connections */
    unsigned max;                    /* cfg.max_connections */
    size_t max_single_write;         /* cfg.max_single_write */
    atomic_uint conns;               /* counted connections open (changed on the thread only) */
    struct bufferevent **pending;    /* accepted, close callback not set yet: max of them */
    unsigned npending;
    pthread_t thread;
    int started;
    uint16_t port;
};

/* ---- the connection limit ----------------------------------------------------------------
 * evhttp hands out no connection until a request has been read, so a connection is counted
 * from its bufferevent: new_bev (evhttp's bevcb, at accept) makes and counts it and schedules
 * claim_cb, which runs right after the accept callback, once evhttp has attached the
 * bufferevent to its evhttp_connection (the callbacks' argument), and sets the close callback
 * that counts it down. */

static void limit(http_listener *l)
{
    if (l->listener == NULL)
        return;
    if (atomic_load(&l->conns) >= l->max)
        evconnlistener_disable(l->listener);
    else
        evconnlistener_enable(l->listener);
}

static void count_down(http_listener *l)
{
    if (atomic_load(&l->conns) > 0)
        atomic_fetch_sub(&l->conns, 1);
}

static void closed_cb(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    http_listener *l = arg;
    count_down(l);
    limit(l);
}

static void claim_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_listener *l = arg;
    for (unsigned i = 0; i < l->npending; i++) {
        void *evcon = NULL;
        bufferevent_getcb(l->pending[i], NULL, NULL, NULL, &evcon);
        /* An answer is written whole (its head, then its body by sendfile): Nagle would hold its
         * last segment for the client's delayed ACK, 40 ms per answer on Linux. */
        evutil_socket_t s = bufferevent_getfd(l->pending[i]);
        int one = 1;
        if (s >= 0)
            (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (evcon != NULL)
            evhttp_connection_set_closecb(evcon, closed_cb, l);
        else
            count_down(l); /* not evhttp's after all: never counted down otherwise */
    }
    l->npending = 0;
    limit(l);
}

/* Counted at once: evconnlistener accepts until the backlog is empty unless its callback (this
 * one, through evhttp's) disables it. */
static struct bufferevent *new_bev(struct event_base *base, void *arg)
{
    http_listener *l = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev != NULL && l->max_single_write != 0)
        bufferevent_set_max_single_write(bev, l->max_single_write);
    /* The listener stops at max counted, so the list never fills. */
    if (bev != NULL && l->npending < l->max) {
        l->pending[l->npending++] = bev;
        atomic_fetch_add(&l->conns, 1);
        event_active(l->claim, EV_TIMEOUT, 0);
        limit(l);
    }
    return bev;
}

/* ---- the thread ------------------------------------------------------------------------------ */

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_listener *l = arg;
    event_base_loopbreak(l->base);
}

static void *listener_main(void *arg)
{
    http_listener *l = arg;
    event_base_dispatch(l->base);
    return NULL;
}

static void listener_free(http_listener *l)
{
    l->listener = NULL; /* evhttp_free frees it before the connections, whose close calls come after */
    if (l->http)
        evhttp_free(l->http);
    if (l->stop)
        event_free(l->stop);
    if (l->claim)
        event_free(l->claim);
    if (l->base)
        event_base_free(l->base);
    free(l->pending);
    free(l);
}

static int fail(rpc_error *err, http_listener *l, const char *fmt, const char *what)
{
    snprintf(err->message, sizeof(err->message), fmt, what);
    if (l)
        listener_free(l);
    return RPC_ERR;
}

int http_listener_start(const http_listener_config *cfg, http_listener **out, rpc_error *err)
{
    *out = NULL;
    /* What rpc_server_new does, for a process without one (a benchmark): http_listener_stop
     * wakes the loop from another thread, and a client that closes while a file goes out must
     * not kill the process. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    signal(SIGPIPE, SIG_IGN);
    http_listener *l = calloc(1, sizeof(*l));
    if (l == NULL || cfg->max_connections == 0)
        return fail(err, l, "cannot create the %s: out of memory or no connections allowed", cfg->what);
    l->max = cfg->max_connections;
    l->max_single_write = cfg->max_single_write;
    l->pending = calloc(l->max, sizeof(*l->pending));
    l->base = event_base_new();
    l->http = l->base ? evhttp_new(l->base) : NULL;
    l->stop = l->base ? event_new(l->base, -1, 0, stop_cb, l) : NULL;
    l->claim = l->base ? event_new(l->base, -1, 0, claim_cb, l) : NULL;
    if (l->pending == NULL || l->http == NULL || l->stop == NULL || l->claim == NULL)
        return fail(err, l, "cannot create the %s", cfg->what);
    evhttp_set_max_headers_size(l->http, (ev_ssize_t)cfg->max_headers);
    evhttp_set_max_body_size(l->http, (ev_ssize_t)cfg->max_body);
    evhttp_set_timeout(l->http, cfg->timeout_s);
    /* The others are answered 405 by the callback, rather than 501 by evhttp. */
    evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(l->http, cfg->on_request, cfg->arg);
    evhttp_set_bevcb(l->http, new_bev, l);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(l->http, cfg->host, cfg->port);
    if (bound == NULL) {
        snprintf(err->message, sizeof(err->message), "cannot listen on %s:%u for the %s: %s", cfg->host,
                 (unsigned)cfg->port, cfg->what, strerror(errno));
        listener_free(l);
        return RPC_ERR;
    }
    l->listener = evhttp_bound_socket_get_listener(bound);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &len) == 0)
        l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    if (pthread_create(&l->thread, NULL, listener_main, l) != 0)
        return fail(err, l, "cannot start the %s's thread", cfg->what);
    l->started = 1;
    *out = l;
    return RPC_OK;
}

uint16_t http_listener_port(const http_listener *l) { return l->port; }

unsigned http_listener_connections(const http_listener *l) { return atomic_load(&l->conns); }

void http_listener_stop(http_listener *l)
{
    if (l == NULL)
        return;
    if (l->started) {
        event_active(l->stop, EV_TIMEOUT, 0);
        pthread_join(l->thread, NULL);
    }
    listener_free(l);
}
