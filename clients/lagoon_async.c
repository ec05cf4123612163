/* liblagoon-async: see lagoon_async.h. */
#include "lagoon_async.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <pb_decode.h>

#include "lagoon_idl.h"
#include "lagoon_tls.h"

#ifndef LAGOON_CLIENT_NO_OPENSSL
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define ASYNC_BUCKETS 256
#define ASYNC_MAX_FRAME (16u << 20)
#define ASYNC_CONNECT_TIMEOUT_MS 5000

struct lagoon_acall {
    lagoon_async *c;
    const wire_method *m;
    uint32_t id;
    void *resp;
    lagoon_async_done_fn done;
    void (*on_message)(lagoon_acall *, const void *, void *);
    void *arg;
    int sent;          /* REQUEST written */
    struct evbuffer *pending; /* frames written before the call got a slot */
    lagoon_acall *next;       /* queue, or hash chain once sent */
};

struct lagoon_async {
    struct event_base *base;
    struct bufferevent *bev;
    lagoon_v1_Settings settings;
    int have_settings;
    int broken;
    int tls;                                      /* bev is an OpenSSL bufferevent */
    int tls_up;                                   /* its handshake has completed */
    int strict_schema;                            /* lagoon_async_options */
    void (*warn)(void *warn_arg, const char *msg); /* lagoon_async_options; NULL: stderr */
    void *warn_arg;
    wire_limits lim;
    char token[sizeof(((lagoon_v1_RequestMeta *)0)->auth_token)];
    uint32_t timeout_ms;
    uint32_t next_id;
    lagoon_acall *buckets[ASYNC_BUCKETS];
    size_t in_flight, queued;
    lagoon_acall *qhead, *qtail;
};

static lagoon_acall *table_find(lagoon_async *c, uint32_t id)
{
    for (lagoon_acall *k = c->buckets[id % ASYNC_BUCKETS]; k; k = k->next)
        if (k->id == id)
            return k;
    return NULL;
}

static void table_remove(lagoon_async *c, lagoon_acall *call)
{
    for (lagoon_acall **p = &c->buckets[call->id % ASYNC_BUCKETS]; *p; p = &(*p)->next) {
        if (*p == call) {
            *p = call->next;
            c->in_flight--;
            return;
        }
    }
}

static void call_free(lagoon_acall *call)
{
    if (call->pending)
        evbuffer_free(call->pending);
    free(call);
}

static void call_end(lagoon_acall *call, int status, const lagoon_v1_ResponseMeta *meta)
{
    static const lagoon_v1_ResponseMeta empty = lagoon_v1_ResponseMeta_init_zero;
    if (call->done)
        call->done(status, meta ? meta : &empty, call->arg);
    call_free(call);
}

static void end_with(lagoon_acall *call, int status, const char *message)
{
    lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
    snprintf(meta.message, sizeof(meta.message), "%s", message);
    call_end(call, status, &meta);
}

/* Sends queued calls while the server's concurrency limit allows. */
static void launch(lagoon_async *c)
{
    if (!c->have_settings || c->broken)
        return;
    while (c->qhead && c->in_flight < c->settings.max_concurrent_calls) {
        lagoon_acall *call = c->qhead;
        c->qhead = call->next;
        if (c->qhead == NULL)
            c->qtail = NULL;
        c->queued--;
        while (table_find(c, call->id)) /* ids wrap; skip any still open */
            call->id = ++c->next_id ? c->next_id : ++c->next_id;
        /* Frames written while queued carry the provisional id: patch them all. */
        size_t off = 0, len = evbuffer_get_length(call->pending);
        while (off + WIRE_HEADER_SIZE <= len) {
            uint8_t *h = evbuffer_pullup(call->pending, (ev_ssize_t)(off + WIRE_HEADER_SIZE)) + off;
            wire_put32(h + 8, call->id);
            off += 4 + wire_get32(h);
        }
        bufferevent_write_buffer(c->bev, call->pending);
        evbuffer_free(call->pending);
        call->pending = NULL;
        call->sent = 1;
        call->next = c->buckets[call->id % ASYNC_BUCKETS];
        c->buckets[call->id % ASYNC_BUCKETS] = call;
        c->in_flight++;
    }
}

static void fail_all(lagoon_async *c, const char *why)
{
    c->broken = 1;
    for (int b = 0; b < ASYNC_BUCKETS; b++) {
        while (c->buckets[b]) {
            lagoon_acall *call = c->buckets[b];
            c->buckets[b] = call->next;
            c->in_flight--;
            end_with(call, LAGOON_UNAVAILABLE, why);
        }
    }
    while (c->qhead) {
        lagoon_acall *call = c->qhead;
        c->qhead = call->next;
        c->queued--;
        end_with(call, LAGOON_UNAVAILABLE, why);
    }
    c->qtail = NULL;
}

/* Compares the server's Settings.schema_hash with this build's (lagoon.h's lagoon_connect does
 * the same): 1 if the connection was given up (strict mode). */
static int schema_differs(lagoon_async *c)
{
    const lagoon_v1_Settings *st = &c->settings;
    if (st->schema_hash.size == 0 || (st->schema_hash.size == LAGOON_SCHEMA_HASH_SIZE &&
                                      memcmp(st->schema_hash.bytes, lagoon_schema_hash, LAGOON_SCHEMA_HASH_SIZE) == 0))
        return 0;
    static const char mismatch[] =
        "the server was built from another IDL than this client (Settings.schema_hash differs): "
        "methods or fields may be unknown to one side";
    if (c->strict_schema) {
        fail_all(c, mismatch);
        return 1;
    }
    if (c->warn != NULL)
        c->warn(c->warn_arg, mismatch);
    else
        fprintf(stderr, "lagoon: warning: %s\n", mismatch);
    return 0;
}

static void on_call_frame(lagoon_async *c, const wire_frame *f)
{
    lagoon_acall *call = table_find(c, f->call_id);
    if (call == NULL)
        return; /* cancelled */
    wire_violation v;
    if (f->type == WIRE_MESSAGE) {
        if (call->on_message == NULL)
            return;
        void *msg = calloc(1, call->m->response_size ? call->m->response_size : 1);
        if (msg == NULL)
            return;
        if (wire_decode_trusted(call->m->response, f->payload, f->payload_len, msg, &v) == 0) {
            call->on_message(call, msg, call->arg);
            if (call->m->response->has_pointers)
                pb_release(call->m->response->desc, msg);
        }
        free(msg);
        return;
    }
    if (f->type != WIRE_RESPONSE)
        return;
    table_remove(c, call);
    int status = (int)f->code;
    int bad_body = status == LAGOON_OK && call->resp &&
                   wire_decode_trusted(call->m->response, f->payload, f->payload_len, call->resp, &v) != 0;
    if (f->meta_len == 0 && !bad_body) {
        call_end(call, status, NULL); /* the common case: no details to decode */
        return;
    }
    /* Details: a ResponseMeta is 7 KiB, so it is only built when there are some. */
    lagoon_v1_ResponseMeta *meta = calloc(1, sizeof(*meta));
    wire_violation mv;
    if (meta && f->meta_len && wire_decode_trusted(&lagoon_v1_ResponseMeta_info, f->meta, f->meta_len, meta, &mv) != 0)
        memset(meta, 0, sizeof(*meta));
    if (bad_body) {
        status = LAGOON_INTERNAL;
        if (meta)
            snprintf(meta->message, sizeof(meta->message), "cannot decode %s: %s %s", call->m->response_type,
                     v.field, v.description);
    }
    call_end(call, status, meta);
    free(meta);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    lagoon_async *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        uint8_t hdr[WIRE_HEADER_SIZE];
        size_t hn = avail < WIRE_HEADER_SIZE ? avail : WIRE_HEADER_SIZE;
        if (hn == 0)
            return;
        evbuffer_copyout(in, hdr, hn);
        wire_frame f;
        long r = wire_frame_parse(hdr, hn, &c->lim, &f, NULL);
        if (r == WIRE_PARTIAL && hn == WIRE_HEADER_SIZE && avail >= (size_t)f.length + 4) {
            const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)f.length + 4);
            r = wire_frame_parse(p, (size_t)f.length + 4, &c->lim, &f, NULL);
        } else if (r > 0) {
            f.meta = f.payload = hdr + WIRE_HEADER_SIZE;
        }
        if (r == WIRE_PARTIAL)
            return;
        if (r < 0) {
            fail_all(c, "bad frame from server");
            return;
        }
        if (f.call_id == 0) {
            if (f.type == WIRE_SETTINGS) {
                lagoon_v1_Settings st;
                wire_violation v;
                if (wire_decode_trusted(&lagoon_v1_Settings_info, f.payload, f.payload_len, &st, &v) == 0) {
                    c->settings = st;
                    c->have_settings = 1;
                    if (schema_differs(c)) { /* strict: given up; nothing more is read */
                        bufferevent_disable(bev, EV_READ);
                        return;
                    }
                }
            } else if (f.type == WIRE_GOAWAY) {
                c->broken = 1; /* open calls still finish; new ones are refused */
            } else if (f.type == WIRE_PING) {
                uint8_t pong[WIRE_HEADER_SIZE + WIRE_PING_PAYLOAD];
                wire_header_encode(pong, WIRE_PONG, 0, 0, 0, 0, WIRE_PING_PAYLOAD);
                memcpy(pong + WIRE_HEADER_SIZE, f.payload, WIRE_PING_PAYLOAD);
                bufferevent_write(bev, pong, sizeof(pong));
            }
        } else {
            on_call_frame(c, &f);
        }
        evbuffer_drain(in, (size_t)r);
        launch(c);
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    lagoon_async *c = arg;
#ifndef LAGOON_CLIENT_NO_OPENSSL
    if (c->tls && (what & BEV_EVENT_CONNECTED)) {
        c->tls_up = 1;
        char why[256];
        if (lagoon_tls_check_alpn(bufferevent_openssl_get_ssl(bev), why, sizeof(why)) != 0) {
            bufferevent_disable(bev, EV_READ | EV_WRITE);
            fail_all(c, why);
        }
        return;
    }
    if (c->tls && !c->tls_up && (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))) {
        /* The handshake failed: say what OpenSSL refused. */
        char why[256];
        lagoon_tls_why(bufferevent_openssl_get_ssl(bev), bufferevent_get_openssl_error(bev), why, sizeof(why));
        fail_all(c, why);
        return;
    }
#else
    (void)bev;
#endif
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        fail_all(c, what & BEV_EVENT_EOF ? "server closed the connection" : "connection error");
}

/* The connection's bufferevent: a socket's, or with tls an OpenSSL one that starts the
 * handshake. NULL with err filled. */
static struct bufferevent *async_bev(lagoon_async *c, int fd, const char *host, const lagoon_async_options *opts,
                                     char *err, size_t errlen)
{
    if (opts == NULL || !opts->tls)
        return bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
    char why[256];
    lagoon_tls_config cfg = {opts->tls_ca_file, opts->tls_server_name};
    struct ssl_st *ssl = lagoon_tls_ssl_new(&cfg, host, why, sizeof(why));
    if (ssl == NULL) {
        if (err)
            snprintf(err, errlen, "%s", why);
        return NULL;
    }
#ifndef LAGOON_CLIENT_NO_OPENSSL
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(c->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        /* No SSL_free: with BEV_OPT_CLOSE_ON_FREE, libevent (2.1.9 and later) frees the SSL
         * itself when it fails to make the bufferevent. */
        if (err)
            snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    /* The frames say where a message ends: a close without close_notify is just a close. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->tls = 1;
    return bev;
#else
    return NULL; /* not reached: lagoon_tls_ssl_new fails without OpenSSL */
#endif
}

int lagoon_async_connect(struct event_base *base, const char *host, uint16_t port,
                         const lagoon_async_options *opts, lagoon_async **out, char *err, size_t errlen)
{
    *out = NULL;
    char ports[8];
    snprintf(ports, sizeof(ports), "%u", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, ports, &hints, &res) != 0 || res == NULL) {
        if (err)
            snprintf(err, errlen, "cannot resolve %s", host);
        return LAGOON_UNAVAILABLE;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int ok = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
    freeaddrinfo(res);
    if (!ok) {
        if (err)
            snprintf(err, errlen, "cannot connect to %s:%u: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return LAGOON_UNAVAILABLE;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    evutil_make_socket_nonblocking(fd);
    lagoon_async *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return LAGOON_RESOURCE_EXHAUSTED;
    }
    c->base = base;
    c->lim.max_frame_size = opts && opts->max_frame_size ? opts->max_frame_size : ASYNC_MAX_FRAME;
    c->lim.max_meta_size = UINT16_MAX;
    c->timeout_ms = opts ? opts->timeout_ms : 0;
    if (opts != NULL) {
        c->strict_schema = opts->strict_schema;
        c->warn = opts->warn;
        c->warn_arg = opts->warn_arg;
    }
    c->bev = async_bev(c, fd, host, opts, err, errlen);
    if (c->bev == NULL) {
        int st = opts && opts->tls ? LAGOON_UNAVAILABLE : LAGOON_RESOURCE_EXHAUSTED;
        close(fd);
        free(c);
        return st;
    }
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    bufferevent_write(c->bev, WIRE_PREFACE, WIRE_PREFACE_LEN);
    *out = c;
    return LAGOON_OK;
}

void lagoon_async_free(lagoon_async *c)
{
    if (c == NULL)
        return;
    for (int b = 0; b < ASYNC_BUCKETS; b++) {
        while (c->buckets[b]) {
            lagoon_acall *call = c->buckets[b];
            c->buckets[b] = call->next;
            call_free(call);
        }
    }
    while (c->qhead) {
        lagoon_acall *call = c->qhead;
        c->qhead = call->next;
        call_free(call);
    }
    bufferevent_free(c->bev);
    free(c);
}

void lagoon_async_set_token(lagoon_async *c, const char *token)
{
    snprintf(c->token, sizeof(c->token), "%s", token ? token : "");
}

/* Appends one frame to buf. -1 if a message breaks its bounds. */
static int frame_append(struct evbuffer *buf, uint8_t type, uint8_t flags, uint32_t id, uint32_t code,
                        const lagoon_v1_RequestMeta *meta, const wire_msginfo *info, const void *msg)
{
    long ml = meta ? wire_encoded_size(&lagoon_v1_RequestMeta_info, meta) : 0;
    long bl = msg ? wire_encoded_size(info, msg) : 0;
    if (ml < 0 || bl < 0)
        return -1;
    size_t total = WIRE_HEADER_SIZE + (size_t)ml + (size_t)bl;
    struct evbuffer_iovec vec;
    if (evbuffer_reserve_space(buf, (ev_ssize_t)total, &vec, 1) < 1)
        return -1;
    uint8_t *p = vec.iov_base;
    wire_header_encode(p, type, flags, id, code, (size_t)ml, (size_t)bl);
    if (meta)
        wire_encode(&lagoon_v1_RequestMeta_info, meta, p + WIRE_HEADER_SIZE, (size_t)ml, NULL);
    if (msg)
        wire_encode(info, msg, p + WIRE_HEADER_SIZE + ml, (size_t)bl, NULL);
    vec.iov_len = total;
    evbuffer_commit_space(buf, &vec, 1);
    return 0;
}

static lagoon_acall *start(lagoon_async *c, const wire_method *m, const void *req, void *resp,
                           lagoon_async_done_fn done, void (*on_message)(lagoon_acall *, const void *, void *),
                           void *arg)
{
    if (c->broken)
        return NULL;
    lagoon_acall *call = calloc(1, sizeof(*call));
    if (call == NULL)
        return NULL;
    call->c = c;
    call->m = m;
    call->resp = resp;
    call->done = done;
    call->on_message = on_message;
    call->arg = arg;
    call->id = ++c->next_id ? c->next_id : ++c->next_id;
    call->pending = evbuffer_new();
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", c->token);
    meta.timeout_ms = c->timeout_ms;
    int single = m->kind == WIRE_UNARY || m->kind == WIRE_SERVER_STREAMING;
    if (call->pending == NULL ||
        frame_append(call->pending, WIRE_REQUEST, single ? WIRE_FLAG_END_STREAM : 0, call->id, m->id,
                     meta.auth_token[0] || meta.timeout_ms ? &meta : NULL, m->request, req) != 0) {
        call_free(call);
        return NULL;
    }
    if (c->qtail)
        c->qtail->next = call;
    else
        c->qhead = call;
    c->qtail = call;
    c->queued++;
    launch(c);
    return call;
}

int lagoon_async_call(lagoon_async *c, const wire_method *m, const void *req, void *resp,
                      lagoon_async_done_fn done, void *arg)
{
    return start(c, m, req, resp, done, NULL, arg) ? LAGOON_OK : LAGOON_UNAVAILABLE;
}

lagoon_acall *lagoon_async_open(lagoon_async *c, const wire_method *m, const void *req,
                                const lagoon_async_handlers *h, void *arg)
{
    return start(c, m, req, NULL, h->on_done, h->on_message, arg);
}

static int call_write(lagoon_acall *call, uint8_t flags, const void *msg)
{
    lagoon_async *c = call->c;
    struct evbuffer *buf = call->sent ? bufferevent_get_output(c->bev) : call->pending;
    return frame_append(buf, WIRE_MESSAGE, flags, call->id, 0, NULL, call->m->request, msg);
}

int lagoon_async_send(lagoon_acall *call, const void *msg)
{
    return call_write(call, 0, msg);
}

int lagoon_async_close_send(lagoon_acall *call)
{
    return call_write(call, WIRE_FLAG_END_STREAM | WIRE_FLAG_NO_MESSAGE, NULL);
}

void lagoon_async_cancel(lagoon_acall *call)
{
    lagoon_async *c = call->c;
    if (call->sent) {
        uint8_t cancel[WIRE_HEADER_SIZE];
        wire_header_encode(cancel, WIRE_CANCEL, 0, call->id, 0, 0, 0);
        bufferevent_write(c->bev, cancel, sizeof(cancel));
        table_remove(c, call);
    } else {
        for (lagoon_acall **p = &c->qhead; *p; p = &(*p)->next) {
            if (*p == call) {
                *p = call->next;
                break;
            }
        }
        c->qtail = NULL;
        for (lagoon_acall *k = c->qhead; k; k = k->next)
            c->qtail = k;
        c->queued--;
    }
    end_with(call, LAGOON_CANCELLED, "cancelled by the client");
    launch(c);
}

size_t lagoon_async_in_flight(const lagoon_async *c) { return c->in_flight; }
size_t lagoon_async_queued(const lagoon_async *c) { return c->queued; }
int lagoon_async_broken(const lagoon_async *c) { return c->broken; }
