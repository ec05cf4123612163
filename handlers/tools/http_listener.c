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
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>

/* A counted connection, from claim_cb to closed_cb. */
typedef struct http_conn {
    struct http_listener *l;
    struct evhttp_connection *evcon;
    int64_t waiting_since; /* monotonic s since which it owes a whole request; 0 while answered */
    unsigned slot;         /* its index in l->records */
} http_conn;

struct http_listener {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop;              /* activated by http_listener_stop: leaves the loop */
    struct evconnlistener *listener; /* evhttp's; NULL once it is being freed */
    struct event *claim;             /* claim_cb: attaches the close callbacks of new connections */
    struct event *sweep;             /* sweep_cb, each second: closes connections past request_timeout_s */
    struct event *resume;            /* resume_cb: accepts again after an accept error (EMFILE) */
    http_conn **records;             /* the counted connections' records: max slots */
    int request_timeout_s;           /* cfg.request_timeout_s */
    void (*on_request)(struct evhttp_request *req, void *arg); /* cfg's */
    void *arg;
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

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

static void closed_cb(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    http_conn *c = arg;
    http_listener *l = c->l;
    l->records[c->slot] = NULL;
    free(c);
    count_down(l);
    limit(l);
}

/* The record of a new connection in a free slot (there is one: at most max are counted), with
 * its close callback; 0, or -1 (out of memory: the connection is closed, never counted down). */
static int conn_track(http_listener *l, struct evhttp_connection *evcon)
{
    http_conn *c = calloc(1, sizeof(*c));
    unsigned slot = 0;
    while (c != NULL && slot < l->max && l->records[slot] != NULL)
        slot++;
    if (c == NULL || slot == l->max) {
        free(c);
        evhttp_connection_free(evcon);
        return -1;
    }
    *c = (http_conn){.l = l, .evcon = evcon, .waiting_since = mono_s(), .slot = slot};
    l->records[slot] = c;
    evhttp_connection_set_closecb(evcon, closed_cb, c);
    return 0;
}

static http_conn *conn_of(const http_listener *l, const struct evhttp_connection *evcon)
{
    for (unsigned i = 0; i < l->max; i++)
        if (l->records[i] != NULL && l->records[i]->evcon == evcon)
            return l->records[i];
    return NULL;
}

/* The answer is written: the connection owes its next request from now. */
static void answered_cb(struct evhttp_request *req, void *arg)
{
    (void)req;
    http_conn *c = arg;
    c->waiting_since = mono_s();
}

/* Every request: no deadline while it is answered (the write timeout applies), then the next. */
static void request_cb(struct evhttp_request *req, void *arg)
{
    http_listener *l = arg;
    http_conn *c = conn_of(l, evhttp_request_get_connection(req));
    if (c != NULL) {
        c->waiting_since = 0;
        evhttp_request_set_on_complete_cb(req, answered_cb, c);
    }
    l->on_request(req, l->arg);
}

/* evhttp's timeout counts from the last byte, so a client trickling a header a byte at a time
 * (or idling between requests) would hold its slot for ever: a request must arrive whole within
 * request_timeout_s of the connection's start or of its previous answer. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_listener *l = arg;
    int64_t now = mono_s();
    for (unsigned i = 0; i < l->max; i++) {
        http_conn *c = l->records[i];
        if (c == NULL || c->waiting_since == 0 || now - c->waiting_since < l->request_timeout_s)
            continue;
        evhttp_connection_free(c->evcon); /* closed_cb frees c */
        if (l->records[i] == c) {           /* (no close callback for a connection not yet connected) */
            l->records[i] = NULL;
            free(c);
            count_down(l);
            limit(l);
        }
    }
}

/* An accept failed (out of descriptors: EMFILE, ENFILE, ENOBUFS): the pending connection stays in
 * the backlog, so accepting again at once would spin the loop; a second later. */
static _Thread_local http_listener *this_thread; /* the listener whose loop runs on this thread */

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    (void)arg; /* (evhttp's: the listener's own argument) */
    http_listener *l = this_thread;
    evconnlistener_disable(lev);
    if (l == NULL)
        return;
    struct timeval tv = {1, 0};
    event_add(l->resume, &tv);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    limit(arg);
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
        if (evcon == NULL || conn_track(l, evcon) != 0)
            count_down(l); /* not evhttp's after all, or closed: never counted down otherwise */
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
    this_thread = l;
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
    if (l->sweep)
        event_free(l->sweep);
    if (l->resume)
        event_free(l->resume);
    free(l->records);
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
    l->records = calloc(l->max, sizeof(*l->records));
    l->request_timeout_s = cfg->request_timeout_s;
    l->on_request = cfg->on_request;
    l->arg = cfg->arg;
    l->base = event_base_new();
    l->http = l->base ? evhttp_new(l->base) : NULL;
    l->stop = l->base ? event_new(l->base, -1, 0, stop_cb, l) : NULL;
    l->claim = l->base ? event_new(l->base, -1, 0, claim_cb, l) : NULL;
    l->sweep = l->base ? event_new(l->base, -1, EV_PERSIST, sweep_cb, l) : NULL;
    l->resume = l->base ? event_new(l->base, -1, 0, resume_cb, l) : NULL;
    if (l->pending == NULL || l->records == NULL || l->http == NULL || l->stop == NULL || l->claim == NULL ||
        l->sweep == NULL || l->resume == NULL)
        return fail(err, l, "cannot create the %s", cfg->what);
    evhttp_set_max_headers_size(l->http, (ev_ssize_t)cfg->max_headers);
    evhttp_set_max_body_size(l->http, (ev_ssize_t)cfg->max_body);
    evhttp_set_timeout(l->http, cfg->timeout_s);
    /* The others are answered 405 by the callback, rather than 501 by evhttp. */
    evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(l->http, request_cb, l);
    evhttp_set_bevcb(l->http, new_bev, l);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(l->http, cfg->host, cfg->port);
    if (bound == NULL) {
        snprintf(err->message, sizeof(err->message), "cannot listen on %s:%u for the %s: %s", cfg->host,
                 (unsigned)cfg->port, cfg->what, strerror(errno));
        listener_free(l);
        return RPC_ERR;
    }
    l->listener = evhttp_bound_socket_get_listener(bound);
    evconnlistener_set_error_cb(l->listener, accept_error_cb);
    struct timeval second = {1, 0};
    if (l->request_timeout_s > 0)
        event_add(l->sweep, &second);
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
