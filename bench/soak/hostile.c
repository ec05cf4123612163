/* hostile: the soak's hostile connections, on one epoll thread. See soak.h.
 *
 * Every connection is a raw non-blocking socket: what it sends is made here from the wire
 * codec (wire_header_encode, wire_encode), because the point is to send what a good client
 * never would. What each kind does, once connected:
 *
 *   preface-only    LGN1, then silence; reads (and drops) whatever the server sends.
 *   slow-echo       LGN1 + Debug/EchoStream {1 KiB, 100000 messages, every slow_interval_ms};
 *                   a 4 KiB receive buffer and never a read: the server's output queue grows.
 *   slow-subscribe  LGN1 + Events/Subscribe as a seeded user, never read; the real users' Sends
 *                   go to these users, so events pile up for a reader that does not read.
 *   open-collect    LGN1 + streams_per_conn Debug/EchoCollect calls, each with a 16 KiB first
 *                   message and a 16 KiB MESSAGE, never half-closed; one more MESSAGE every
 *                   SOAK_STREAM_MSG_MS on the next call in turn.
 *   partial-frame   LGN1 + a REQUEST header promising SOAK_PARTIAL_LENGTH bytes, partial_prefix
 *                   of them, then one byte every SOAK_TRICKLE_MS.
 *   header-trickle  LGN1, then a header promising SOAK_TRICKLE_LENGTH bytes one byte every
 *                   SOAK_TRICKLE_MS, then its body the same way.
 *   request-cancel  LGN1, then cancel_rate pairs a second: REQUEST Debug/Echo {delay_ms 1..5},
 *                   Events/Subscribe {since: 1} (a resume) or {since: 0} (live), in turn, and
 *                   CANCEL 0..2 ms later.
 *
 * A connection the server closes is counted and reopened SOAK_REOPEN_MS later while the LOAD
 * phase lasts, so the pressure holds for the whole phase. Frames read back are parsed only for
 * counting (RESPONSE statuses, GOAWAY reasons); a frame larger than SOAK_IN_BUF is skipped
 * after its header.
 */
#include "soak.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lagoon_idl.h"

#define SOAK_IN_BUF 512             /* a frame read back is parsed if it fits, else skipped */
#define SOAK_SCRATCH 512            /* per-connection frames made on the fly (Subscribe, cancel pairs) */
#define SOAK_REOPEN_MS 1000         /* a connection the server closed is reopened after this */
#define SOAK_TRICKLE_MS 1500        /* one byte this often: slower than any sane client, faster than timeouts */
#define SOAK_STREAM_MSG_MS 10000    /* open-collect: one more MESSAGE this often */
#define SOAK_SLOW_RCVBUF 4096       /* slow readers' receive buffer: the server's queue, not ours, fills */
#define SOAK_ECHO_PAYLOAD 16384     /* EchoRequest.payload's max_size (debug.options) */
#define SOAK_STREAM_PAYLOAD 1024    /* slow-echo message size */
#define SOAK_STREAM_COUNT 100000u   /* EchoStreamRequest.count's maximum */
/* Within the default max frame size (4 MiB): a legal frame that never completes. */
#define SOAK_PARTIAL_LENGTH ((4u << 20) - 64u)
#define SOAK_TRICKLE_LENGTH (1u << 20)
#define SOAK_MAX_CONNS 100000u
#define SOAK_MAX_STREAMS 1024u      /* the server's default max_concurrent_calls */
#define SOAK_PARTIAL_MAX (1u << 20) /* largest --partial-prefix */
#define SOAK_EVENTS 512

_Static_assert(SOAK_ECHO_PAYLOAD == sizeof(((lagoon_v1_EchoRequest *)0)->payload.bytes),
               "EchoRequest.payload's bound changed");

typedef struct hconn {
    int fd;                /* -1 while closed */
    uint8_t kind;          /* enum soak_kind */
    uint8_t connecting;    /* non-blocking connect in progress */
    uint8_t counted;       /* connected and counted in open[] */
    uint8_t got_goaway;    /* the server sent GOAWAY on this connection */
    uint32_t index;        /* slot number: picks the user token and the source address */
    const uint8_t *out;    /* bytes waiting to be written (a template or scratch), NULL none */
    size_t out_len, out_off;
    uint64_t next_ms;      /* next timed action (trickle byte, MESSAGE, cancel step) */
    uint64_t reopen_ms;    /* while closed: when to reopen; 0 never */
    uint32_t step;         /* trickle bytes or MESSAGEs sent so far */
    uint32_t next_id;      /* request-cancel: last call id used */
    uint32_t pending;      /* request-cancel: the call to cancel next, 0 none */
    uint32_t skip;         /* bytes of an oversize incoming frame still to drop */
    uint32_t in_len;       /* bytes in in[] */
    uint8_t in[SOAK_IN_BUF];
    uint8_t scratch[SOAK_SCRATCH];
} hconn;

struct soak_hostile {
    const soak_config *cfg;
    const atomic_int *phase;
    soak_hostile_stats *st;
    pthread_t thread;
    int ep;
    hconn *conns;
    uint32_t nconns;      /* slots: cancel_conns first, then the others shuffled */
    uint32_t started;     /* slots opened at least once */
    uint64_t load_start_ms;
    struct sockaddr_in server;
    uint64_t rng;
    /* Templates made once: every connection of a kind sends the same bytes (call ids are per
     * connection, so they can be equal across connections). */
    uint8_t *tpl_slow, *tpl_open, *tpl_msgs, *tpl_partial;
    size_t slow_len, open_len, msg_len, partial_len;
    uint8_t trickle_header[WIRE_HEADER_SIZE];
    lagoon_v1_EchoRequest *echo; /* request-cancel's Echo (a 16 KiB struct: one, reused) */
};

static uint64_t rnd(soak_hostile *h, uint64_t n)
{
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    return (h->rng * UINT64_C(2685821657736338717)) % n;
}

/* One frame into buf[0..cap): header, meta (may be NULL), payload (may be NULL). Its size, or
 * -1 if it does not fit. */
static long frame_put(uint8_t *buf, size_t cap, uint8_t type, uint8_t flags, uint32_t id, uint32_t code,
                      const wire_msginfo *meta_info, const void *meta, const wire_msginfo *info, const void *msg)
{
    if (cap < WIRE_HEADER_SIZE)
        return -1;
    long ml = 0, pl = 0;
    if (meta != NULL && (ml = wire_encode(meta_info, meta, buf + WIRE_HEADER_SIZE, cap - WIRE_HEADER_SIZE, NULL)) < 0)
        return -1;
    size_t used = WIRE_HEADER_SIZE + (size_t)ml;
    if (msg != NULL && (pl = wire_encode(info, msg, buf + used, cap - used, NULL)) < 0)
        return -1;
    if (wire_header_encode(buf, type, flags, id, code, (size_t)ml, (size_t)pl) != 0)
        return -1;
    return (long)(used + (size_t)pl);
}

static void put_preface(uint8_t *buf)
{
    memcpy(buf, WIRE_PREFACE, WIRE_PREFACE_LEN);
}

static int make_templates(soak_hostile *h)
{
    const soak_config *cfg = h->cfg;
    lagoon_v1_EchoStreamRequest *sreq = calloc(1, sizeof(*sreq));
    lagoon_v1_EchoRequest *ereq = calloc(1, sizeof(*ereq));
    size_t frame_cap = WIRE_HEADER_SIZE + SOAK_ECHO_PAYLOAD + 64;
    h->slow_len = WIRE_PREFACE_LEN;
    h->tpl_slow = malloc(WIRE_PREFACE_LEN + frame_cap);
    h->tpl_open = malloc(WIRE_PREFACE_LEN + 2 * frame_cap * cfg->streams_per_conn);
    h->tpl_msgs = malloc(frame_cap * cfg->streams_per_conn);
    h->partial_len = WIRE_PREFACE_LEN + WIRE_HEADER_SIZE + cfg->partial_prefix;
    h->tpl_partial = calloc(1, h->partial_len);
    if (sreq == NULL || ereq == NULL || h->tpl_slow == NULL || h->tpl_open == NULL || h->tpl_msgs == NULL ||
        h->tpl_partial == NULL) {
        free(sreq);
        free(ereq);
        return -1;
    }
    int rc = -1;
    /* slow-echo */
    put_preface(h->tpl_slow);
    sreq->payload.size = SOAK_STREAM_PAYLOAD;
    memset(sreq->payload.bytes, 's', SOAK_STREAM_PAYLOAD);
    sreq->count = SOAK_STREAM_COUNT;
    sreq->interval_ms = cfg->slow_interval_ms;
    long n = frame_put(h->tpl_slow + WIRE_PREFACE_LEN, frame_cap, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1,
                       lagoon_method_Debug_EchoStream.id, NULL, NULL, &lagoon_v1_EchoStreamRequest_info, sreq);
    if (n < 0)
        goto out;
    h->slow_len += (size_t)n;
    /* open-collect: each call's REQUEST and a first MESSAGE; later MESSAGEs from tpl_msgs */
    ereq->payload.size = SOAK_ECHO_PAYLOAD;
    memset(ereq->payload.bytes, 'c', SOAK_ECHO_PAYLOAD);
    put_preface(h->tpl_open);
    h->open_len = WIRE_PREFACE_LEN;
    for (uint32_t i = 1; i <= cfg->streams_per_conn; i++) {
        n = frame_put(h->tpl_open + h->open_len, frame_cap, WIRE_REQUEST, 0, i, lagoon_method_Debug_EchoCollect.id,
                      NULL, NULL, &lagoon_v1_EchoRequest_info, ereq);
        if (n < 0)
            goto out;
        h->open_len += (size_t)n;
        n = frame_put(h->tpl_open + h->open_len, frame_cap, WIRE_MESSAGE, 0, i, 0, NULL, NULL,
                      &lagoon_v1_EchoRequest_info, ereq);
        if (n < 0)
            goto out;
        h->open_len += (size_t)n;
        long m = frame_put(h->tpl_msgs + (size_t)(i - 1) * frame_cap, frame_cap, WIRE_MESSAGE, 0, i, 0, NULL, NULL,
                           &lagoon_v1_EchoRequest_info, ereq);
        if (m < 0 || (h->msg_len != 0 && (size_t)m != h->msg_len))
            goto out;
        h->msg_len = (size_t)m;
    }
    /* Every MESSAGE has the same size: pack them so that call i's is at (i-1) * msg_len. */
    for (uint32_t i = 1; i < cfg->streams_per_conn; i++)
        memmove(h->tpl_msgs + (size_t)i * h->msg_len, h->tpl_msgs + (size_t)i * frame_cap, h->msg_len);
    /* partial-frame: the body is zeros (never parsed: it never completes) */
    put_preface(h->tpl_partial);
    if (wire_header_encode(h->tpl_partial + WIRE_PREFACE_LEN, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1,
                           lagoon_method_Debug_Echo.id, 0, SOAK_PARTIAL_LENGTH - (WIRE_HEADER_SIZE - 4)) != 0 ||
        wire_header_encode(h->trickle_header, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Debug_Echo.id, 0,
                           SOAK_TRICKLE_LENGTH - (WIRE_HEADER_SIZE - 4)) != 0)
        goto out;
    rc = 0;
out:
    free(sreq);
    free(ereq);
    return rc;
}

/* A REQUEST signed in as seeded user `user`, into scratch at off. Its size or -1. */
static long put_subscribe(const soak_hostile *h, hconn *c, size_t off, uint32_t id, uint64_t since, size_t user)
{
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", h->cfg->data->tokens[user % h->cfg->data->users]);
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    req.since = since;
    return frame_put(c->scratch + off, SOAK_SCRATCH - off, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id,
                     lagoon_method_Events_Subscribe.id, &lagoon_v1_RequestMeta_info, &meta,
                     &lagoon_v1_SubscribeRequest_info, &req);
}

static void set_events(soak_hostile *h, hconn *c, int op)
{
    /* Slow readers never ask for input: only hang-ups (EPOLLHUP and EPOLLERR are implicit). */
    int reads = c->kind != SOAK_SLOW_STREAM && c->kind != SOAK_SLOW_SUB;
    struct epoll_event ev = {.events = EPOLLRDHUP | (reads ? EPOLLIN : 0) | (c->out != NULL ? EPOLLOUT : 0),
                             .data = {.ptr = c}};
    (void)epoll_ctl(h->ep, op, c->fd, &ev);
}

static void conn_close(soak_hostile *h, hconn *c, int by_server)
{
    if (c->fd < 0)
        return;
    if (c->counted) {
        atomic_fetch_sub(&h->st->open[c->kind], 1);
        if (by_server)
            atomic_fetch_add(&h->st->closed[c->kind], 1);
        if (by_server && c->got_goaway)
            atomic_fetch_add(&h->st->goaway_closed[c->kind], 1);
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->counted = 0;
    c->got_goaway = 0;
    c->connecting = 0;
    c->out = NULL;
    c->reopen_ms = by_server ? soak_now_ms() + SOAK_REOPEN_MS + c->index % 500 : 0;
}

/* Writes what is pending; 0, or -1 if the connection was lost (and closed). */
static int conn_flush(soak_hostile *h, hconn *c)
{
    while (c->out != NULL && c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(h, c, EPOLL_CTL_MOD);
                return 0;
            }
            conn_close(h, c, 1);
            return -1;
        }
        c->out_off += (size_t)w;
        atomic_fetch_add(&h->st->bytes_out, (long)w);
    }
    if (c->out != NULL) {
        c->out = NULL;
        set_events(h, c, EPOLL_CTL_MOD);
    }
    return 0;
}

static void conn_send(soak_hostile *h, hconn *c, const uint8_t *p, size_t n)
{
    c->out = p;
    c->out_len = n;
    c->out_off = 0;
    (void)conn_flush(h, c);
}

/* The first bytes of a connection of c's kind. */
static void conn_greet(soak_hostile *h, hconn *c, uint64_t now)
{
    c->step = 0;
    c->pending = 0;
    c->in_len = 0;
    c->skip = 0;
    switch (c->kind) {
    case SOAK_SLOW_STREAM:
        c->out = h->tpl_slow, c->out_len = h->slow_len;
        break;
    case SOAK_SLOW_SUB: {
        put_preface(c->scratch);
        long n = put_subscribe(h, c, WIRE_PREFACE_LEN, 1, 0, c->index);
        c->out = c->scratch, c->out_len = WIRE_PREFACE_LEN + (n > 0 ? (size_t)n : 0);
        break;
    }
    case SOAK_OPEN_STREAMS:
        c->out = h->tpl_open, c->out_len = h->open_len;
        c->next_ms = now + SOAK_STREAM_MSG_MS;
        break;
    case SOAK_PARTIAL:
        c->out = h->tpl_partial, c->out_len = h->partial_len;
        c->next_ms = now + SOAK_TRICKLE_MS;
        break;
    default: /* preface-only, header-trickle, request-cancel: the preface alone first */
        put_preface(c->scratch);
        c->out = c->scratch, c->out_len = WIRE_PREFACE_LEN;
        if (c->kind == SOAK_TRICKLE)
            c->next_ms = now + SOAK_TRICKLE_MS;
        else if (c->kind == SOAK_CANCEL)
            c->next_ms = now + rnd(h, 10);
        break;
    }
    c->out_off = 0;
}

static void conn_open(soak_hostile *h, hconn *c)
{
    const soak_config *cfg = h->cfg;
    c->reopen_ms = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        atomic_fetch_add(&h->st->failed[c->kind], 1);
        c->reopen_ms = soak_now_ms() + SOAK_REOPEN_MS;
        return;
    }
    if (c->kind == SOAK_SLOW_STREAM || c->kind == SOAK_SLOW_SUB) {
        int sz = SOAK_SLOW_RCVBUF; /* before connect: it sets the window the server sees */
        (void)setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    }
    if (cfg->sources > 0) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + c->index % cfg->sources);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
            atomic_fetch_add(&h->st->failed[c->kind], 1);
            close(c->fd);
            c->fd = -1;
            c->reopen_ms = soak_now_ms() + SOAK_REOPEN_MS;
            return;
        }
    }
    if (connect(c->fd, (struct sockaddr *)&h->server, sizeof(h->server)) != 0 && errno != EINPROGRESS) {
        atomic_fetch_add(&h->st->failed[c->kind], 1);
        close(c->fd);
        c->fd = -1;
        c->reopen_ms = soak_now_ms() + SOAK_REOPEN_MS;
        return;
    }
    c->connecting = 1;
    conn_greet(h, c, soak_now_ms());
    set_events(h, c, EPOLL_CTL_ADD); /* EPOLLOUT: the connect's end */
}

/* The connect finished (EPOLLOUT while connecting). */
static void conn_connected(soak_hostile *h, hconn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        atomic_fetch_add(&h->st->failed[c->kind], 1);
        conn_close(h, c, 0);
        c->reopen_ms = soak_now_ms() + SOAK_REOPEN_MS;
        return;
    }
    c->connecting = 0;
    c->counted = 1;
    atomic_fetch_add(&h->st->open[c->kind], 1);
    atomic_fetch_add(&h->st->opened[c->kind], 1);
    (void)conn_flush(h, c);
}

static void note_goaway(soak_hostile *h, const wire_frame *f)
{
    atomic_fetch_add(&h->st->goaways, 1);
    /* ResponseMeta.message is field 1 (tag byte 0x0a); its length is a varint, read here only
     * when it is one byte, and never past the metadata that arrived. */
    char why[SOAK_REASON_MAX] = "(no message)";
    if (f->meta_len >= 2 && f->meta[0] == 0x0a && f->meta[1] < 0x80) {
        size_t n = f->meta[1];
        if (n > (size_t)f->meta_len - 2)
            n = (size_t)f->meta_len - 2;
        if (n > sizeof(why) - 1)
            n = sizeof(why) - 1;
        memcpy(why, f->meta + 2, n);
        why[n] = '\0';
    }
    soak_hostile_stats *st = h->st;
    pthread_mutex_lock(&st->reasons_mu);
    int i = 0;
    for (; i < SOAK_GOAWAY_REASONS && st->reason[i][0] != '\0'; i++)
        if (strcmp(st->reason[i], why) == 0)
            break;
    if (i == SOAK_GOAWAY_REASONS) {
        st->reasons_other++;
    } else {
        if (st->reason[i][0] == '\0')
            snprintf(st->reason[i], sizeof(st->reason[i]), "%s", why);
        st->reason_count[i]++;
    }
    pthread_mutex_unlock(&st->reasons_mu);
}

static void on_frame(soak_hostile *h, hconn *c, const wire_frame *f)
{
    if (f->type == WIRE_RESPONSE)
        atomic_fetch_add(&h->st->status[c->kind][f->code <= LAGOON_STATUS_MAX ? f->code : LAGOON_UNKNOWN], 1);
    else if (f->type == WIRE_GOAWAY) {
        c->got_goaway = 1;
        note_goaway(h, f);
    }
}

/* Parses what arrived, for counting only. */
static void conn_input(soak_hostile *h, hconn *c, const uint8_t *p, size_t n)
{
    /* The frame size accepted from the server: anything larger is skipped after its header. */
    const wire_limits lim = {UINT32_MAX, UINT16_MAX};
    while (n > 0) {
        if (c->skip > 0) {
            size_t d = n < c->skip ? n : c->skip;
            c->skip -= (uint32_t)d, p += d, n -= d;
            continue;
        }
        size_t take = SOAK_IN_BUF - c->in_len;
        if (take > n)
            take = n;
        memcpy(c->in + c->in_len, p, take);
        c->in_len += (uint32_t)take, p += take, n -= take;
        for (;;) {
            wire_frame f;
            long used = wire_frame_parse(c->in, c->in_len, &lim, &f, NULL);
            if (used > 0) {
                on_frame(h, c, &f);
                memmove(c->in, c->in + used, c->in_len - (size_t)used);
                c->in_len -= (uint32_t)used;
                continue;
            }
            if (used == WIRE_PARTIAL && c->in_len >= WIRE_HEADER_SIZE && (uint64_t)f.length + 4 > SOAK_IN_BUF) {
                /* Too large to keep: count it from its header, drop the rest. */
                wire_frame hdr = {.length = f.length, .type = c->in[4], .code = wire_get32(c->in + 12)};
                on_frame(h, c, &hdr);
                c->skip = (uint32_t)((uint64_t)f.length + 4 - c->in_len);
                c->in_len = 0;
            } else if (used == WIRE_INVALID || used == WIRE_TOO_LARGE) {
                c->in_len = 0; /* not a frame we can follow: drop what we have */
            }
            break;
        }
    }
}

static void conn_readable(soak_hostile *h, hconn *c)
{
    uint8_t buf[4096];
    for (int rounds = 0; rounds < 16; rounds++) { /* bounded: one busy peer cannot hold the loop */
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        if (r > 0) {
            conn_input(h, c, buf, (size_t)r);
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(h, c, 1);
        return;
    }
}

/* A request-cancel step: a REQUEST (with its CANCEL right behind when the pause is 0), or the
 * CANCEL of the pending call. */
static void cancel_step(soak_hostile *h, hconn *c, uint64_t now)
{
    unsigned period = h->cfg->cancel_rate ? 1000u / h->cfg->cancel_rate : 1000u;
    if (period == 0)
        period = 1;
    uint8_t cancel[WIRE_HEADER_SIZE];
    if (c->pending != 0) {
        if (wire_header_encode(cancel, WIRE_CANCEL, 0, c->pending, 0, 0, 0) != 0)
            return;
        memcpy(c->scratch, cancel, sizeof(cancel));
        c->pending = 0;
        c->next_ms = now + period;
        atomic_fetch_add(&h->st->pairs, 1);
        conn_send(h, c, c->scratch, sizeof(cancel));
        return;
    }
    if (++c->next_id == 0)
        c->next_id = 1;
    uint32_t id = c->next_id;
    long n;
    if (h->cfg->debug && id % 3 == 1) {
        h->echo->delay_ms = 1 + (uint32_t)rnd(h, 5);
        n = frame_put(c->scratch, SOAK_SCRATCH, WIRE_REQUEST, WIRE_FLAG_END_STREAM, id, lagoon_method_Debug_Echo.id,
                      NULL, NULL, &lagoon_v1_EchoRequest_info, h->echo);
    } else {
        n = put_subscribe(h, c, 0, id, id % 3 == 2 ? 1 : 0, c->index * 7 + id);
    }
    if (n < 0)
        return;
    unsigned pause = (unsigned)rnd(h, 3); /* ms; 0: the CANCEL goes in the same write */
    if (pause == 0 && (size_t)n + WIRE_HEADER_SIZE <= SOAK_SCRATCH &&
        wire_header_encode(c->scratch + n, WIRE_CANCEL, 0, id, 0, 0, 0) == 0) {
        n += WIRE_HEADER_SIZE;
        c->next_ms = now + period;
        atomic_fetch_add(&h->st->pairs, 1);
    } else {
        c->pending = id;
        c->next_ms = now + (pause ? pause : 1);
    }
    conn_send(h, c, c->scratch, (size_t)n);
}

/* Timed actions of one open connection. */
static void conn_tick(soak_hostile *h, hconn *c, uint64_t now)
{
    if (c->fd < 0 || c->connecting || c->out != NULL || now < c->next_ms)
        return;
    switch (c->kind) {
    case SOAK_PARTIAL:
    case SOAK_TRICKLE: {
        uint8_t b = 0;
        if (c->kind == SOAK_TRICKLE && c->step < WIRE_HEADER_SIZE)
            b = h->trickle_header[c->step];
        c->step++;
        c->next_ms = now + SOAK_TRICKLE_MS;
        ssize_t w = send(c->fd, &b, 1, MSG_NOSIGNAL);
        if (w == 1)
            atomic_fetch_add(&h->st->bytes_out, 1);
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_close(h, c, 1);
        break;
    }
    case SOAK_OPEN_STREAMS:
        c->next_ms = now + SOAK_STREAM_MSG_MS;
        conn_send(h, c, h->tpl_msgs + (size_t)(c->step++ % h->cfg->streams_per_conn) * h->msg_len, h->msg_len);
        break;
    case SOAK_CANCEL:
        cancel_step(h, c, now);
        break;
    default:
        break;
    }
}

static void on_event(soak_hostile *h, hconn *c, uint32_t events)
{
    if (c->fd < 0)
        return;
    if (c->connecting) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            conn_connected(h, c);
        return;
    }
    if ((events & EPOLLIN) && c->fd >= 0)
        conn_readable(h, c);
    if (c->fd >= 0 && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        /* A reader has read all that was there (EOF closed it above); a slow reader learns of
         * the close only this way. */
        conn_close(h, c, 1);
        return;
    }
    if (c->fd >= 0 && (events & EPOLLOUT))
        (void)conn_flush(h, c);
}

/* Slot kinds: cancel connections first (they run from the start), then the shares of
 * cfg->connections shuffled, so that the ramp opens a mix. Without Debug, slow-echo becomes
 * slow-subscribe and open-collect becomes preface-only. */
static void assign_kinds(soak_hostile *h)
{
    static const unsigned share[SOAK_NKINDS] = {
#define SOAK_KIND_SHARE(k, name, s) s,
        SOAK_KINDS(SOAK_KIND_SHARE)
#undef SOAK_KIND_SHARE
    };
    const soak_config *cfg = h->cfg;
    uint32_t i = 0;
    for (; i < cfg->cancel_conns; i++)
        h->conns[i].kind = SOAK_CANCEL;
    uint32_t first = i;
    for (int k = 0; k < SOAK_NKINDS; k++) {
        int kind = k;
        if (!cfg->debug && kind == SOAK_SLOW_STREAM)
            kind = SOAK_SLOW_SUB;
        if (!cfg->debug && kind == SOAK_OPEN_STREAMS)
            kind = SOAK_PREFACE;
        uint32_t n = (uint32_t)((uint64_t)cfg->connections * share[k] / 1000);
        if (cfg->only >= 0) /* one kind alone: what it costs by itself */
            n = k == cfg->only ? cfg->connections : 0;
        for (uint32_t j = 0; j < n && i < h->nconns; j++)
            h->conns[i++].kind = (uint8_t)kind;
    }
    while (i < h->nconns) /* rounding */
        h->conns[i++].kind = (uint8_t)(cfg->only >= 0 ? cfg->only : SOAK_PREFACE);
    for (uint32_t j = h->nconns - 1; j > first; j--) { /* Fisher-Yates, fixed seed */
        uint32_t r = first + (uint32_t)rnd(h, j - first + 1);
        uint8_t t = h->conns[j].kind;
        h->conns[j].kind = h->conns[r].kind;
        h->conns[r].kind = t;
    }
    for (i = 0; i < h->nconns; i++) {
        h->conns[i].fd = -1;
        h->conns[i].index = i;
    }
}

static void *hostile_main(void *arg)
{
    soak_hostile *h = arg;
    struct epoll_event evs[SOAK_EVENTS];
    uint64_t next_scan = 0;
    int closed_all = 0;
    for (;;) {
        int phase = atomic_load(h->phase);
        if (phase == SOAK_STOP)
            break;
        if (phase > SOAK_LOAD) {
            if (!closed_all) {
                for (uint32_t i = 0; i < h->nconns; i++)
                    conn_close(h, &h->conns[i], 0);
                closed_all = 1;
            }
            soak_sleep_ms(50);
            continue;
        }
        int tick = h->cfg->cancel_conns > 0 && phase == SOAK_LOAD ? 1 : 10;
        int n = epoll_wait(h->ep, evs, SOAK_EVENTS, tick);
        for (int i = 0; i < n; i++)
            on_event(h, evs[i].data.ptr, evs[i].events);
        if (phase != SOAK_LOAD)
            continue;
        if (closed_all) { /* a new cycle: open everything again */
            closed_all = 0;
            h->started = 0;
            h->load_start_ms = 0;
        }
        uint64_t now = soak_now_ms();
        if (h->load_start_ms == 0)
            h->load_start_ms = now;
        /* The ramp: at most ramp_rate new slots a second since LOAD began. */
        uint64_t allowed = (now - h->load_start_ms + 1) * h->cfg->ramp_rate / 1000 + 1;
        while (h->started < h->nconns && h->started < allowed)
            conn_open(h, &h->conns[h->started++]);
        for (uint32_t i = 0; i < h->cfg->cancel_conns && i < h->started; i++)
            conn_tick(h, &h->conns[i], now);
        if (now >= next_scan) {
            next_scan = now + 10;
            for (uint32_t i = h->cfg->cancel_conns; i < h->started; i++) {
                hconn *c = &h->conns[i];
                if (c->fd < 0 && c->reopen_ms != 0 && now >= c->reopen_ms)
                    conn_open(h, c);
                else
                    conn_tick(h, c, now);
            }
            for (uint32_t i = 0; i < h->cfg->cancel_conns && i < h->started; i++)
                if (h->conns[i].fd < 0 && h->conns[i].reopen_ms != 0 && now >= h->conns[i].reopen_ms)
                    conn_open(h, &h->conns[i]);
        }
    }
    for (uint32_t i = 0; i < h->nconns; i++)
        conn_close(h, &h->conns[i], 0);
    return NULL;
}

static void hostile_free(soak_hostile *h)
{
    if (h->ep >= 0)
        close(h->ep);
    free(h->conns);
    free(h->tpl_slow);
    free(h->tpl_open);
    free(h->tpl_msgs);
    free(h->tpl_partial);
    free(h->echo);
    free(h);
}

int soak_hostile_start(const soak_config *cfg, const atomic_int *phase, soak_hostile_stats *st,
                       soak_hostile **out)
{
    *out = NULL;
    if ((uint64_t)cfg->connections + cfg->cancel_conns > SOAK_MAX_CONNS || cfg->streams_per_conn == 0 ||
        cfg->streams_per_conn > SOAK_MAX_STREAMS || cfg->partial_prefix > SOAK_PARTIAL_MAX) {
        fprintf(stderr, "lagoon-soak: at most %u connections, 1..%u streams per connection, a partial prefix of "
                        "at most %u bytes\n", SOAK_MAX_CONNS, SOAK_MAX_STREAMS, SOAK_PARTIAL_MAX);
        return -1;
    }
    soak_hostile *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->cfg = cfg;
    h->phase = phase;
    h->st = st;
    h->rng = UINT64_C(0x9e3779b97f4a7c15);
    h->nconns = cfg->connections + cfg->cancel_conns;
    h->conns = calloc(h->nconns ? h->nconns : 1, sizeof(*h->conns));
    h->ep = epoll_create1(EPOLL_CLOEXEC);
    h->echo = calloc(1, sizeof(*h->echo));
    h->server.sin_family = AF_INET;
    h->server.sin_port = htons(cfg->port);
    if (h->conns == NULL || h->ep < 0 || h->echo == NULL || inet_pton(AF_INET, cfg->host, &h->server.sin_addr) != 1 ||
        make_templates(h) != 0) {
        fprintf(stderr, "lagoon-soak: cannot set up the hostile connections (memory, epoll or --host)\n");
        hostile_free(h);
        return -1;
    }
    if (h->nconns > 0)
        assign_kinds(h);
    if (pthread_create(&h->thread, NULL, hostile_main, h) != 0) {
        hostile_free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void soak_hostile_join(soak_hostile *h)
{
    if (h == NULL)
        return;
    pthread_join(h->thread, NULL);
    hostile_free(h);
}
