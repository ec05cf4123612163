/* liblagoon: the blocking client. See lagoon.h. */
#include "lagoon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>

#include "lagoon_idl.h"
#include "lagoon_tls.h"

#define CLIENT_CONNECT_TIMEOUT_MS 5000u
#define CLIENT_MAX_FRAME (16u << 20)    /* largest frame accepted from the server by default */
#define CLIENT_INBOX_MAX (64u << 20)    /* bytes held for streams nobody is reading right now */
#define CLIENT_READ_CHUNK 65536u

/* A frame kept for a stream until it is read. */
typedef struct frame_copy {
    struct frame_copy *next;
    uint8_t type, flags;
    uint32_t code;
    size_t meta_len, payload_len;
    uint8_t data[]; /* meta then payload */
} frame_copy;

struct lagoon_stream {
    lagoon_client *c;
    const wire_method *m;
    uint32_t id;
    int local_closed;  /* we sent END_STREAM */
    int remote_closed; /* RESPONSE received (or the connection failed) */
    int status;
    lagoon_v1_ResponseMeta meta;
    frame_copy *head, *tail;
    lagoon_stream *next;
    uint64_t deadline_us; /* 0 = none */
};

struct lagoon_client {
    int fd;
    lagoon_transport t; /* read == NULL: the plain socket */
    uint8_t *in;
    size_t in_len, in_cap;
    lagoon_v1_Settings settings;
    wire_limits lim;
    char token[sizeof(((lagoon_v1_RequestMeta *)0)->auth_token)];
    char idem[sizeof(((lagoon_v1_RequestMeta *)0)->idempotency_key)];
    char reqid[sizeof(((lagoon_v1_RequestMeta *)0)->request_id)];
    uint32_t timeout_ms;
    uint32_t next_id;
    lagoon_stream *streams;
    size_t inbox_bytes;
    int broken; /* the connection failed: every call fails with UNAVAILABLE */
    int goaway;
    char broken_why[128];
    lagoon_error last;
};

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int fail(lagoon_error *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(lagoon_error *e, int status, const char *fmt, ...)
{
    if (e == NULL)
        return status;
    memset(e, 0, sizeof(*e));
    e->status = status;
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(e->detail.message, sizeof(e->detail.message), fmt, ap);
    va_end(ap);
    return status;
}

static void client_break(lagoon_client *c, const char *why)
{
    if (!c->broken) {
        c->broken = 1;
        snprintf(c->broken_why, sizeof(c->broken_why), "%s", why);
    }
}

/* Milliseconds until deadline for poll(): -1 = forever, 0 = passed. */
static int poll_ms(uint64_t deadline_us)
{
    if (deadline_us == 0)
        return -1;
    uint64_t now = mono_us();
    if (now >= deadline_us)
        return 0;
    uint64_t ms = (deadline_us - now + 999) / 1000;
    return ms > 60000 ? 60000 : (int)ms;
}

/* ---- socket I/O ------------------------------------------------------------------------- */

/* Reads through the transport, or the plain socket: bytes, 0 at EOF, or LAGOON_IO_*. */
static long io_read(lagoon_client *c, uint8_t *buf, size_t len)
{
    if (c->t.read != NULL)
        return c->t.read(c->t.arg, buf, len);
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0)
        return (long)n;
    return errno == EINTR || errno == EAGAIN ? LAGOON_IO_WANT_READ : LAGOON_IO_ERROR;
}

static long io_write(lagoon_client *c, const uint8_t *buf, size_t len)
{
    if (c->t.write != NULL)
        return c->t.write(c->t.arg, buf, len);
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (long)n;
    return errno == EINTR || errno == EAGAIN ? LAGOON_IO_WANT_WRITE : LAGOON_IO_ERROR;
}

/* Why the last read or write failed (after LAGOON_IO_ERROR). */
static const char *io_error(lagoon_client *c)
{
    if (c->t.read == NULL)
        return strerror(errno);
    const char *why = c->t.error ? c->t.error(c->t.arg) : NULL;
    return why ? why : "transport error";
}

/* Reads what is available (waiting until deadline for at least one byte). 1 = got bytes,
 * 0 = deadline passed, -1 = connection failed. */
static int fill(lagoon_client *c, uint64_t deadline_us)
{
    if (c->broken)
        return -1;
    if (c->in_cap - c->in_len < CLIENT_READ_CHUNK) {
        size_t cap = c->in_cap ? c->in_cap * 2 : CLIENT_READ_CHUNK * 2;
        while (cap - c->in_len < CLIENT_READ_CHUNK)
            cap *= 2;
        uint8_t *n = realloc(c->in, cap);
        if (n == NULL) {
            client_break(c, "out of memory");
            return -1;
        }
        c->in = n;
        c->in_cap = cap;
    }
    /* The plain socket is polled first (a frame is usually not there yet); a transport is read
     * first, since it may hold bytes already (a TLS record's rest) that poll cannot see. */
    int must_wait = c->t.read == NULL;
    short want = POLLIN;
    for (;;) {
        if (must_wait) {
            struct pollfd p = {c->fd, want, 0};
            int r = poll(&p, 1, poll_ms(deadline_us));
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0) {
                if (deadline_us && mono_us() >= deadline_us)
                    return 0;
                continue;
            }
        }
        long n = io_read(c, c->in + c->in_len, c->in_cap - c->in_len);
        if (n > 0) {
            c->in_len += (size_t)n;
            return 1;
        }
        if (n == LAGOON_IO_WANT_READ || n == LAGOON_IO_WANT_WRITE) {
            want = n == LAGOON_IO_WANT_WRITE ? POLLOUT : POLLIN;
            must_wait = 1;
            continue;
        }
        client_break(c, n == 0 ? "server closed the connection" : io_error(c));
        return -1;
    }
}

static int send_all(lagoon_client *c, const uint8_t *p, size_t n)
{
    if (c->broken)
        return -1;
    while (n > 0) {
        long w = io_write(c, p, n);
        if (w == LAGOON_IO_WANT_READ || w == LAGOON_IO_WANT_WRITE) {
            struct pollfd pf = {c->fd, w == LAGOON_IO_WANT_READ ? POLLIN : POLLOUT, 0};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0) {
            client_break(c, io_error(c));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Encodes and sends one frame. meta and msg may be NULL. */
static int send_frame(lagoon_client *c, uint8_t type, uint8_t flags, uint32_t id, uint32_t code,
                      const lagoon_v1_RequestMeta *meta, const wire_msginfo *info, const void *msg)
{
    const lagoon_raw *raw = info == NULL ? msg : NULL; /* a message already encoded */
    long ml = meta ? wire_encoded_size(&lagoon_v1_RequestMeta_info, meta) : 0;
    long bl = raw ? (raw->len <= (size_t)LONG_MAX ? (long)raw->len : -1) : msg ? wire_encoded_size(info, msg) : 0;
    if (ml < 0 || bl < 0)
        return fail(&c->last, LAGOON_INVALID_ARGUMENT, "the request breaks a field bound of %s",
                    msg && info ? info->name : msg ? "the message" : "RequestMeta");
    size_t total = WIRE_HEADER_SIZE + (size_t)ml + (size_t)bl;
    if (total - 4 > c->settings.max_frame_size)
        return fail(&c->last, LAGOON_INVALID_ARGUMENT, "request of %zu bytes exceeds the server's max frame size %u",
                    total, c->settings.max_frame_size);
    uint8_t small[1024];
    uint8_t *buf = total <= sizeof(small) ? small : malloc(total);
    if (buf == NULL)
        return fail(&c->last, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    wire_header_encode(buf, type, flags, id, code, (size_t)ml, (size_t)bl);
    if (meta)
        wire_encode(&lagoon_v1_RequestMeta_info, meta, buf + WIRE_HEADER_SIZE, (size_t)ml, NULL);
    if (raw && raw->len)
        memcpy(buf + WIRE_HEADER_SIZE + ml, raw->data, raw->len);
    else if (msg && info)
        wire_encode(info, msg, buf + WIRE_HEADER_SIZE + ml, (size_t)bl, NULL);
    int r = send_all(c, buf, total);
    if (buf != small)
        free(buf);
    if (r != 0)
        return fail(&c->last, LAGOON_UNAVAILABLE, "connection lost: %s", c->broken_why);
    return LAGOON_OK;
}

/* ---- frames in ---------------------------------------------------------------------------- */

static lagoon_stream *find_stream(lagoon_client *c, uint32_t id)
{
    for (lagoon_stream *s = c->streams; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void handle_conn_frame(lagoon_client *c, const wire_frame *f)
{
    switch (f->type) {
    case WIRE_PING: {
        uint8_t pong[WIRE_HEADER_SIZE + WIRE_PING_PAYLOAD];
        wire_header_encode(pong, WIRE_PONG, 0, 0, 0, 0, WIRE_PING_PAYLOAD);
        memcpy(pong + WIRE_HEADER_SIZE, f->payload, WIRE_PING_PAYLOAD);
        send_all(c, pong, sizeof(pong));
        break;
    }
    case WIRE_GOAWAY:
        c->goaway = 1;
        break;
    case WIRE_SETTINGS: {
        lagoon_v1_Settings st;
        wire_violation v;
        if (wire_decode_trusted(&lagoon_v1_Settings_info, f->payload, f->payload_len, &st, &v) == 0)
            c->settings = st;
        break;
    }
    default:
        break;
    }
}

/* Reads one frame off the wire and files it: connection frames are handled, call frames are
 * queued on their stream. Returns 1, 0 on deadline, -1 on connection failure. */
static int pump_one(lagoon_client *c, uint64_t deadline_us)
{
    for (;;) {
        wire_frame f;
        const char *why = NULL;
        long r = wire_frame_parse(c->in, c->in_len, &c->lim, &f, &why);
        if (r == WIRE_TOO_LARGE || r == WIRE_INVALID) {
            char msg[128];
            snprintf(msg, sizeof(msg), "bad frame from server: %s", why);
            client_break(c, msg);
            return -1;
        }
        if (r == WIRE_PARTIAL) {
            int got = fill(c, deadline_us);
            if (got <= 0)
                return got;
            continue;
        }
        if (f.call_id == 0) {
            handle_conn_frame(c, &f);
        } else {
            lagoon_stream *s = find_stream(c, f.call_id);
            if (s != NULL && !s->remote_closed) {
                size_t n = (size_t)f.meta_len + f.payload_len;
                if (c->inbox_bytes + n > CLIENT_INBOX_MAX) {
                    client_break(c, "too many unread stream messages buffered");
                    return -1;
                }
                frame_copy *fc = malloc(sizeof(*fc) + n);
                if (fc == NULL) {
                    client_break(c, "out of memory");
                    return -1;
                }
                fc->next = NULL;
                fc->type = f.type;
                fc->flags = f.flags;
                fc->code = f.code;
                fc->meta_len = f.meta_len;
                fc->payload_len = f.payload_len;
                memcpy(fc->data, f.meta, n);
                if (s->tail)
                    s->tail->next = fc;
                else
                    s->head = fc;
                s->tail = fc;
                c->inbox_bytes += n;
                if (f.type == WIRE_RESPONSE)
                    s->remote_closed = 1; /* nothing more will come for this id */
            }
            /* else: a stream we cancelled or closed; late frames are dropped */
        }
        memmove(c->in, c->in + r, c->in_len - (size_t)r);
        c->in_len -= (size_t)r;
        return 1;
    }
}

/* The next frame of stream s (caller frees), waiting until its deadline. NULL with *status
 * set if none comes. */
static frame_copy *next_frame(lagoon_stream *s, uint64_t deadline_us, int *status)
{
    lagoon_client *c = s->c;
    while (s->head == NULL) {
        if (s->remote_closed && s->head == NULL) {
            *status = LAGOON_INTERNAL; /* already consumed the RESPONSE */
            return NULL;
        }
        int r = pump_one(c, deadline_us);
        if (r == 0) {
            *status = LAGOON_DEADLINE_EXCEEDED;
            return NULL;
        }
        if (r < 0) {
            *status = LAGOON_UNAVAILABLE;
            return NULL;
        }
    }
    frame_copy *fc = s->head;
    s->head = fc->next;
    if (s->head == NULL)
        s->tail = NULL;
    c->inbox_bytes -= fc->meta_len + fc->payload_len;
    return fc;
}

/* ---- streams ------------------------------------------------------------------------------ */

static void stream_unlink(lagoon_stream *s)
{
    lagoon_client *c = s->c;
    if (s->remote_closed && !s->local_closed) {
        /* The server ended a call whose client side is still open (a refused first message of
         * a bidi stream, say): the id stays in use on the server, counted against
         * max_concurrent_calls, until the client ends its side too (PROTOCOL.md). A CANCEL does,
         * and is harmless if the server has forgotten the id already. */
        uint8_t cancel[WIRE_HEADER_SIZE];
        wire_header_encode(cancel, WIRE_CANCEL, 0, s->id, 0, 0, 0);
        send_all(c, cancel, sizeof(cancel));
        s->local_closed = 1;
    }
    for (lagoon_stream **p = &c->streams; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    while (s->head) {
        frame_copy *fc = s->head;
        s->head = fc->next;
        c->inbox_bytes -= fc->meta_len + fc->payload_len;
        free(fc);
    }
    s->tail = NULL;
}

static uint32_t next_call_id(lagoon_client *c)
{
    for (;;) {
        uint32_t id = ++c->next_id;
        if (id != 0 && find_stream(c, id) == NULL)
            return id;
    }
}

/* Opens call s (already allocated) with its first message. */
static int stream_start(lagoon_client *c, lagoon_stream *s, const wire_method *m, const void *req, int end)
{
    memset(s, 0, sizeof(*s));
    s->c = c;
    s->m = m;
    if (c->broken)
        return fail(&c->last, LAGOON_UNAVAILABLE, "connection lost: %s", c->broken_why);
    if (c->goaway)
        return fail(&c->last, LAGOON_UNAVAILABLE, "server sent GOAWAY: no new calls on this connection");
    s->id = next_call_id(c);
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", c->token);
    snprintf(meta.idempotency_key, sizeof(meta.idempotency_key), "%s", c->idem);
    snprintf(meta.request_id, sizeof(meta.request_id), "%s", c->reqid);
    meta.timeout_ms = c->timeout_ms;
    c->idem[0] = c->reqid[0] = '\0'; /* they apply to one call */
    if (c->timeout_ms)
        s->deadline_us = mono_us() + (uint64_t)c->timeout_ms * 1000u;
    int st = send_frame(c, WIRE_REQUEST, end ? WIRE_FLAG_END_STREAM : 0, s->id, m->id, &meta, m->request, req);
    if (st != LAGOON_OK)
        return st;
    s->local_closed = end;
    s->next = c->streams;
    c->streams = s;
    return LAGOON_OK;
}

/* A message's bytes into raw (m->response NULL: a method known only at run time). 0, or -1
 * when out of memory. */
static int take_raw(lagoon_raw *raw, const uint8_t *p, size_t n)
{
    raw->data = malloc(n ? n : 1);
    raw->len = raw->data ? n : 0;
    if (raw->data == NULL)
        return -1;
    if (n)
        memcpy(raw->data, p, n);
    return 0;
}

bool lagoon_bytes_decode(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    (void)field;
    lagoon_bytes *b = *arg;
    size_t n = stream->bytes_left;
    if (b == NULL || n > b->max || b->data != NULL) /* a second occurrence is refused too */
        return false;
    b->data = malloc(n ? n : 1);
    if (b->data == NULL)
        return false;
    b->len = n;
    return pb_read(stream, b->data, n);
}

/* Decodes a RESPONSE frame: status, meta, and (if OK and resp) the body. */
static int take_response(lagoon_stream *s, const frame_copy *fc, void *resp)
{
    lagoon_client *c = s->c;
    s->remote_closed = 1;
    s->status = (int)fc->code;
    memset(&s->meta, 0, sizeof(s->meta));
    wire_violation v;
    if (fc->meta_len &&
        wire_decode_trusted(&lagoon_v1_ResponseMeta_info, fc->data, fc->meta_len, &s->meta, &v) != 0)
        memset(&s->meta, 0, sizeof(s->meta));
    if (s->status == LAGOON_OK && resp != NULL && s->m->response == NULL) {
        if (take_raw(resp, fc->data + fc->meta_len, fc->payload_len) != 0)
            return fail(&c->last, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    } else if (s->status == LAGOON_OK && resp != NULL) {
        if (wire_decode_trusted(s->m->response, fc->data + fc->meta_len, fc->payload_len, resp, &v) != 0)
            return fail(&c->last, LAGOON_INTERNAL, "cannot decode %s from the server: %s %s", s->m->response_type,
                        v.field, v.description);
    }
    if (s->status != LAGOON_OK) {
        c->last.status = s->status;
        c->last.detail = s->meta;
    }
    return s->status;
}

static int stream_deadline_hit(lagoon_stream *s)
{
    uint8_t cancel[WIRE_HEADER_SIZE];
    wire_header_encode(cancel, WIRE_CANCEL, 0, s->id, 0, 0, 0);
    send_all(s->c, cancel, sizeof(cancel));
    s->remote_closed = 1;
    s->local_closed = 1; /* the CANCEL ended our side */
    s->status = LAGOON_DEADLINE_EXCEEDED;
    return fail(&s->c->last, LAGOON_DEADLINE_EXCEEDED, "deadline exceeded (%u ms)", s->c->timeout_ms);
}

int lagoon_call(lagoon_client *c, const wire_method *m, const void *req, void *resp)
{
    lagoon_stream s;
    memset(&c->last, 0, sizeof(c->last));
    int st = stream_start(c, &s, m, req, 1);
    if (st != LAGOON_OK)
        return st;
    for (;;) {
        frame_copy *fc = next_frame(&s, s.deadline_us, &st);
        if (fc == NULL) {
            if (st == LAGOON_DEADLINE_EXCEEDED)
                st = stream_deadline_hit(&s);
            else
                st = fail(&c->last, st, "connection lost: %s", c->broken_why);
            break;
        }
        if (fc->type == WIRE_RESPONSE) {
            st = take_response(&s, fc, resp);
            free(fc);
            break;
        }
        free(fc); /* a MESSAGE on a unary call: ignore */
    }
    stream_unlink(&s);
    return st;
}

int lagoon_stream_open(lagoon_client *c, const wire_method *m, const void *req, lagoon_stream **out)
{
    *out = NULL;
    memset(&c->last, 0, sizeof(c->last));
    lagoon_stream *s = malloc(sizeof(*s));
    if (s == NULL)
        return fail(&c->last, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    int st = stream_start(c, s, m, req, m->kind == WIRE_SERVER_STREAMING || m->kind == WIRE_UNARY);
    if (st != LAGOON_OK) {
        free(s);
        return st;
    }
    *out = s;
    return LAGOON_OK;
}

int lagoon_stream_send(lagoon_stream *s, const void *msg)
{
    lagoon_client *c = s->c;
    if (s->local_closed)
        return fail(&c->last, LAGOON_FAILED_PRECONDITION, "stream already half-closed");
    if (s->remote_closed)
        return fail(&c->last, s->status ? s->status : LAGOON_FAILED_PRECONDITION, "the server ended the call");
    return send_frame(c, WIRE_MESSAGE, 0, s->id, 0, NULL, s->m->request, msg);
}

int lagoon_stream_close_send(lagoon_stream *s)
{
    if (s->local_closed)
        return LAGOON_OK;
    s->local_closed = 1;
    if (s->remote_closed && s->head == NULL)
        return LAGOON_OK;
    return send_frame(s->c, WIRE_MESSAGE, WIRE_FLAG_END_STREAM | WIRE_FLAG_NO_MESSAGE, s->id, 0, NULL, NULL, NULL);
}

static int stream_recv(lagoon_stream *s, void *msg, uint64_t wait_until)
{
    lagoon_client *c = s->c;
    for (;;) {
        if (s->remote_closed && s->head == NULL)
            return 0;
        uint64_t deadline = s->deadline_us;
        if (wait_until && (deadline == 0 || wait_until < deadline))
            deadline = wait_until;
        int st;
        frame_copy *fc = next_frame(s, deadline, &st);
        if (fc == NULL) {
            if (st == LAGOON_DEADLINE_EXCEEDED && wait_until && (s->deadline_us == 0 || mono_us() < s->deadline_us))
                return -1; /* only the caller's wait ran out */
            if (st == LAGOON_DEADLINE_EXCEEDED)
                stream_deadline_hit(s);
            else {
                s->remote_closed = 1;
                s->status = st;
                fail(&c->last, st, "connection lost: %s", c->broken_why);
            }
            return 0;
        }
        if (fc->type == WIRE_RESPONSE) {
            take_response(s, fc, NULL);
            free(fc);
            return 0;
        }
        if (fc->type == WIRE_MESSAGE) {
            wire_violation v;
            int ok = s->m->response == NULL
                         ? take_raw(msg, fc->data + fc->meta_len, fc->payload_len) == 0
                         : wire_decode_trusted(s->m->response, fc->data + fc->meta_len, fc->payload_len, msg, &v) == 0;
            free(fc);
            if (ok)
                return 1;
            fail(&c->last, LAGOON_INTERNAL, "cannot decode a %s from the server", s->m->response_type);
            continue;
        }
        free(fc);
    }
}

int lagoon_stream_recv(lagoon_stream *s, void *msg)
{
    return stream_recv(s, msg, 0);
}

int lagoon_stream_recv_timeout(lagoon_stream *s, void *msg, uint32_t timeout_ms)
{
    return stream_recv(s, msg, mono_us() + (uint64_t)timeout_ms * 1000u);
}

void lagoon_stream_cancel(lagoon_stream *s)
{
    if (!s->remote_closed) {
        uint8_t cancel[WIRE_HEADER_SIZE];
        wire_header_encode(cancel, WIRE_CANCEL, 0, s->id, 0, 0, 0);
        send_all(s->c, cancel, sizeof(cancel));
    }
    stream_unlink(s);
    free(s);
}

int lagoon_stream_finish(lagoon_stream *s, void *resp)
{
    lagoon_client *c = s->c;
    int st;
    if (s->m->kind == WIRE_CLIENT_STREAMING) {
        st = lagoon_stream_close_send(s);
        if (st != LAGOON_OK && !s->remote_closed) {
            stream_unlink(s);
            free(s);
            return st;
        }
        for (;;) {
            if (s->remote_closed && s->head == NULL) {
                st = s->status;
                break;
            }
            frame_copy *fc = next_frame(s, s->deadline_us, &st);
            if (fc == NULL) {
                st = st == LAGOON_DEADLINE_EXCEEDED ? stream_deadline_hit(s)
                                                     : fail(&c->last, st, "connection lost: %s", c->broken_why);
                break;
            }
            int is_resp = fc->type == WIRE_RESPONSE;
            if (is_resp)
                st = take_response(s, fc, resp);
            free(fc);
            if (is_resp)
                break;
        }
    } else if (s->remote_closed && s->head == NULL) {
        st = s->status;
    } else {
        /* Drain what is already here: the server may have ended the stream meanwhile. */
        while (s->head && !(s->head->type == WIRE_RESPONSE)) {
            frame_copy *fc = s->head;
            s->head = fc->next;
            if (s->head == NULL)
                s->tail = NULL;
            c->inbox_bytes -= fc->meta_len + fc->payload_len;
            free(fc);
        }
        if (s->head) {
            frame_copy *fc = next_frame(s, 0, &st);
            st = take_response(s, fc, NULL);
            free(fc);
        } else {
            uint8_t cancel[WIRE_HEADER_SIZE];
            wire_header_encode(cancel, WIRE_CANCEL, 0, s->id, 0, 0, 0);
            send_all(c, cancel, sizeof(cancel));
            st = fail(&c->last, LAGOON_CANCELLED, "stream cancelled by the client");
        }
    }
    stream_unlink(s);
    free(s);
    return st;
}

/* ---- connection ----------------------------------------------------------------------------- */

static int dial(const char *host, uint16_t port, uint32_t timeout_ms, lagoon_error *err)
{
    char ports[8];
    snprintf(ports, sizeof(ports), "%u", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    int gr = getaddrinfo(host, ports, &hints, &res);
    if (gr != 0) {
        fail(err, LAGOON_UNAVAILABLE, "cannot resolve %s: %s", host, gai_strerror(gr));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            r = poll(&p, 1, (int)timeout_ms) == 1 ? 0 : -1;
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (r == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)) {
                errno = soerr;
                r = -1;
            } else if (r != 0) {
                errno = ETIMEDOUT;
            }
        }
        if (r == 0)
            break;
        fail(err, LAGOON_UNAVAILABLE, "cannot connect to %s:%u: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int lagoon_connect(const char *host, uint16_t port, const lagoon_options *opts, lagoon_client **out,
                   lagoon_error *err)
{
    *out = NULL;
    lagoon_options o = {0};
    if (opts)
        o = *opts;
    if (o.connect_timeout_ms == 0)
        o.connect_timeout_ms = CLIENT_CONNECT_TIMEOUT_MS;
    if (o.max_frame_size == 0)
        o.max_frame_size = CLIENT_MAX_FRAME;
    int fd = dial(host, port, o.connect_timeout_ms, err);
    if (fd < 0)
        return LAGOON_UNAVAILABLE;
    lagoon_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return fail(err, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    c->fd = fd;
    lagoon_tls_config tls = {o.tls_ca_file, o.tls_server_name};
    lagoon_transport_open_fn topen = o.transport_open ? o.transport_open : o.tls ? lagoon_tls_open : NULL;
    if (topen != NULL) {
        char why[256] = "";
        lagoon_transport t = {0};
        int st = topen(o.transport_open ? o.transport_arg : &tls, fd, host, o.connect_timeout_ms, &t, why, sizeof(why));
        if (st == LAGOON_OK && (t.read == NULL || t.write == NULL)) {
            if (t.close)
                t.close(t.arg);
            st = LAGOON_INTERNAL;
            snprintf(why, sizeof(why), "the transport has no read or write callback");
        }
        if (st != LAGOON_OK) {
            fail(err, st, "%s", why[0] ? why : "the transport could not be opened");
            lagoon_close(c);
            return st;
        }
        c->t = t;
    }
    c->lim.max_frame_size = o.max_frame_size;
    c->lim.max_meta_size = UINT16_MAX;
    c->timeout_ms = o.timeout_ms;
    c->settings.max_frame_size = WIRE_LENGTH_MIN + 1; /* until SETTINGS says otherwise */
    if (send_all(c, (const uint8_t *)WIRE_PREFACE, WIRE_PREFACE_LEN) != 0) {
        int st = fail(err, LAGOON_UNAVAILABLE, "cannot send preface: %s", c->broken_why);
        lagoon_close(c);
        return st;
    }
    /* The first frame must be SETTINGS (or GOAWAY, when the server refuses the connection). */
    uint64_t deadline = mono_us() + (uint64_t)o.connect_timeout_ms * 1000u;
    for (;;) {
        wire_frame f;
        const char *why = NULL;
        long r = wire_frame_parse(c->in, c->in_len, &c->lim, &f, &why);
        if (r == WIRE_PARTIAL) {
            int got = fill(c, deadline);
            if (got <= 0) {
                int st = fail(err, LAGOON_UNAVAILABLE, "no SETTINGS from the server: %s",
                              got == 0 ? "timed out" : c->broken_why);
                lagoon_close(c);
                return st;
            }
            continue;
        }
        if (r < 0 || (f.type != WIRE_SETTINGS && f.type != WIRE_GOAWAY)) {
            int st = fail(err, LAGOON_UNAVAILABLE, "not a Lagoon server (first frame is not SETTINGS)");
            lagoon_close(c);
            return st;
        }
        if (f.type == WIRE_GOAWAY) {
            lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
            wire_violation v;
            if (wire_decode_trusted(&lagoon_v1_ResponseMeta_info, f.meta, f.meta_len, &meta, &v) != 0)
                meta.message[0] = '\0';
            int st = fail(err, LAGOON_UNAVAILABLE, "server refused the connection: %s", meta.message);
            lagoon_close(c);
            return st;
        }
        handle_conn_frame(c, &f);
        if (c->in != NULL) {
            memmove(c->in, c->in + r, c->in_len - (size_t)r);
            c->in_len -= (size_t)r;
        }
        break;
    }
    if (lagoon_schema_matches(c) == 0) {
        static const char mismatch[] =
            "the server was built from another IDL than this client (Settings.schema_hash differs): "
            "methods or fields may be unknown to one side";
        if (o.strict_schema) {
            int st = fail(err, LAGOON_FAILED_PRECONDITION, "%s", mismatch);
            lagoon_close(c);
            return st;
        }
        if (o.warn != NULL)
            o.warn(o.warn_arg, mismatch);
        else
            fprintf(stderr, "lagoon: warning: %s\n", mismatch);
    }
    *out = c;
    return LAGOON_OK;
}

int lagoon_schema_matches(const lagoon_client *c)
{
    const lagoon_v1_Settings *st = &c->settings;
    if (st->schema_hash.size == 0)
        return -1;
    return st->schema_hash.size == LAGOON_SCHEMA_HASH_SIZE &&
           memcmp(st->schema_hash.bytes, lagoon_schema_hash, LAGOON_SCHEMA_HASH_SIZE) == 0;
}

void lagoon_close(lagoon_client *c)
{
    if (c == NULL)
        return;
    /* Only streams from lagoon_stream_open are listed here: lagoon_call unlinks its own
     * before returning. */
    lagoon_stream *s;
    while ((s = c->streams) != NULL) {
        c->streams = s->next;
        s->next = NULL;
        stream_unlink(s); /* frees its queued frames */
        free(s);
    }
    if (c->t.close != NULL)
        c->t.close(c->t.arg);
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c);
}

void lagoon_set_token(lagoon_client *c, const char *token)
{
    snprintf(c->token, sizeof(c->token), "%s", token ? token : "");
}

void lagoon_set_timeout(lagoon_client *c, uint32_t timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

void lagoon_set_idempotency_key(lagoon_client *c, const char *key)
{
    snprintf(c->idem, sizeof(c->idem), "%s", key ? key : "");
}

void lagoon_set_request_id(lagoon_client *c, const char *request_id)
{
    snprintf(c->reqid, sizeof(c->reqid), "%s", request_id ? request_id : "");
}

const lagoon_error *lagoon_last_error(const lagoon_client *c) { return &c->last; }
const lagoon_v1_Settings *lagoon_settings(const lagoon_client *c) { return &c->settings; }
int lagoon_goaway(const lagoon_client *c) { return c->goaway; }
int lagoon_fd(const lagoon_client *c) { return c->fd; }

int lagoon_ping(lagoon_client *c, uint64_t *rtt_us)
{
    uint8_t ping[WIRE_HEADER_SIZE + WIRE_PING_PAYLOAD];
    uint64_t t0 = mono_us();
    wire_header_encode(ping, WIRE_PING, 0, 0, 0, 0, WIRE_PING_PAYLOAD);
    for (int i = 0; i < 8; i++)
        ping[WIRE_HEADER_SIZE + i] = (uint8_t)(t0 >> (56 - 8 * i));
    if (send_all(c, ping, sizeof(ping)) != 0)
        return fail(&c->last, LAGOON_UNAVAILABLE, "connection lost: %s", c->broken_why);
    uint64_t deadline = t0 + (c->timeout_ms ? c->timeout_ms : 10000u) * 1000ull;
    /* PONGs are connection frames; look at the raw stream until ours comes back. */
    for (;;) {
        wire_frame f;
        long r = wire_frame_parse(c->in, c->in_len, &c->lim, &f, NULL);
        if (r == WIRE_PARTIAL) {
            int got = fill(c, deadline);
            if (got == 0)
                return fail(&c->last, LAGOON_DEADLINE_EXCEEDED, "no PONG");
            if (got < 0)
                return fail(&c->last, LAGOON_UNAVAILABLE, "connection lost: %s", c->broken_why);
            continue;
        }
        if (r < 0) {
            client_break(c, "bad frame from server");
            return fail(&c->last, LAGOON_UNAVAILABLE, "bad frame from server");
        }
        int mine = f.type == WIRE_PONG && memcmp(f.payload, ping + WIRE_HEADER_SIZE, WIRE_PING_PAYLOAD) == 0;
        if (!mine) {
            /* Not ours: let the normal path file it (copy first, pump_one re-parses). */
            int pr = pump_one(c, deadline);
            if (pr < 0)
                return fail(&c->last, LAGOON_UNAVAILABLE, "connection lost: %s", c->broken_why);
            continue;
        }
        memmove(c->in, c->in + r, c->in_len - (size_t)r);
        c->in_len -= (size_t)r;
        if (rtt_us)
            *rtt_us = mono_us() - t0;
        return LAGOON_OK;
    }
}
