/* server: loops, connections, frames and calls. See rpc.h for the contract.
 *
 * Ownership in one paragraph. A connection (rpc_conn) belongs to one loop and is touched only
 * on that loop's thread. A call (rpc_call) is reference-counted: the connection's call table
 * holds one reference while the call id is in use, the handler holds one from the moment it is
 * invoked until it returns (or, if it returned RPC_PENDING, until rpc_call_finish), and every
 * operation queued to the loop from another thread holds one. `done` is set (on the loop
 * thread) when the call has been answered or abandoned; after that nothing is written for it
 * and `conn` must not be used. Who ends a kept call is decided by one atomic exchange on
 * `hstate`: the handler's finish, or the cancel path — never both.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pb_decode.h>

#include "lagoon/v1/access.pb.h"
#include "lagoon/v1/rpc.pb.h"
#include "lagoon_idl.h"
#include "log.h"
#include "rpc.h"
#include "rpc_internal.h"
#include "tls.h"

#define CALL_BUCKETS 64           /* per-connection call table, allocated on first call */
#define CLOSE_FLUSH_TIMEOUT_MS 2000 /* time a closing connection gets to flush its last frames */
#define SMALL_FRAME 512           /* frames up to this size are built on the stack */
#define SWEEP_INTERVAL_MS 1000    /* each loop checks frame and stream timeouts this often */
#define ADDR_BUCKETS 1024         /* per-address connection counts, by hash of the address */
/* File descriptors kept out of max_connections: the store's files, the log, the mail spool,
 * the listener, and each loop's epoll and wake-up descriptors. */
#define FD_RESERVE_BASE 64
#define FD_RESERVE_PER_LOOP 4
/* Bytes a connection on the TLS port reads before the handshake when its client is not a TLS
 * client: what the plain-text refusal discards so that closing sends FIN, not RST. */
#define PLAIN_DISCARD_MAX 4096
/* Plaintext a TLS connection's read callback pulls from OpenSSL beyond what libevent handed
 * it (conn_tls_pull), and in what pieces: about what a plain connection reads per wakeup. */
#define TLS_READ_BURST_MAX 16384
#define TLS_READ_CHUNK 4096
/* Memory freed by closing connections that makes a loop hand free heap pages back to the
 * kernel (malloc_trim): without it the process keeps its peak size after an attack ends. */
#define TRIM_AFTER_BYTES (4u << 20)
#define TRIM_INTERVAL_MS 10000 /* malloc_trim walks the heap: not more often than this per loop */
#define ACCEPT_BACKOFF_MIN_MS 50   /* accept paused this long after EMFILE/ENFILE, doubling */
#define ACCEPT_BACKOFF_MAX_MS 1000
#define RETRY_BUSY_MS 100         /* retry_after_ms of a call refused by a per-connection limit */
#define RETRY_DRAINING_MS 1000    /* retry_after_ms of UNAVAILABLE after GOAWAY: on a new connection */
#define CONN_AGE_JITTER_PCT 10    /* max_connection_age_ms is applied give or take this much */

enum conn_state { CONN_PREFACE, CONN_OPEN, CONN_CLOSING, CONN_DEAD };
enum hstate { H_NONE, H_HELD, H_FINISHED, H_CANCELLED };
enum op_kind { OP_NEW_CONN, OP_SEND, OP_FINISH, OP_DRAIN, OP_CANCELLED };

typedef struct rpc_loop rpc_loop;
typedef struct rpc_conn rpc_conn;

/* Open connections from one client address. */
typedef struct addr_count {
    struct addr_count *next;
    uint32_t n;
    char host[52];
} addr_count;

/* Work handed to a loop from another thread. */
typedef struct rpc_op {
    struct rpc_op *next;
    int kind;
    rpc_call *call; /* holds a reference (SEND, FINISH, CANCELLED) */
    int status;     /* FINISH */
    int fd;         /* NEW_CONN */
    char peer[64];  /* NEW_CONN: "host:port" */
    char host[52];  /* NEW_CONN: the address (an IPv6 /64) the per-address count uses */
    size_t len;     /* SEND: bytes in data, a whole frame */
    uint8_t data[];
} rpc_op;

struct rpc_loop {
    rpc_server *server;
    unsigned index;
    pthread_t thread;
    struct event_base *base;
    struct event *wake;        /* mailbox has ops */
    struct event *drain_timer; /* force-close at the end of the drain */
    pthread_mutex_t mu;        /* guards head/tail */
    rpc_op *head, *tail;
    rpc_conn *conns; /* doubly linked list of live connections */
    uint32_t nconns;
    int draining;
    struct event *flush; /* writes the output of the connections on `dirty` */
    rpc_conn *dirty;     /* connections with output to write, each holding a reference */
    struct event *sweep; /* every SWEEP_INTERVAL_MS: frame and stream timeouts, heap trim */
    rpc_loop_stats *stats;   /* this loop's counters (server->stats[index]) */
    uint64_t rng;            /* xorshift64 state: the jitter of connection ages */
    size_t freed_since_trim; /* bytes closed connections held since the last malloc_trim */
    uint64_t last_trim_ms;   /* when it last ran: at most once per TRIM_INTERVAL_MS */
};

struct rpc_conn {
    rpc_loop *loop;
    struct bufferevent *bev; /* NULL on the TLS port until the first byte says it is TLS */
    int fd;                  /* the socket; owned by bev once bev exists */
    struct event *peek;      /* TLS port: waits for the first byte (conn_peek_cb) */
    int tls;                 /* bev is an OpenSSL bufferevent */
    rpc_conn *prev, *next;
    int state;             /* enum conn_state */
    int goaway_sent;       /* no new calls are accepted */
    char peer[64];         /* "host:port" of the client */
    char host[52];         /* the client's address, or IPv6 /64 (per-address connection count) */
    rpc_call **buckets;    /* call table: chains by call id, NULL until the first call */
    uint32_t ncalls;       /* entries in the table, tombstones included */
    uint32_t live_calls;   /* calls not yet answered: what keeps a connection from being idle */
    uint32_t last_call_id; /* id of the last REQUEST accepted: GOAWAY's code */
    struct event *timer;   /* handshake, idle or close-flush deadline */
    struct event *reaper;  /* frees a dead connection outside its own callbacks */
    uint64_t last_frame_ms;   /* monotonic time of the last whole frame (or the preface) */
    uint64_t partial_since_ms; /* when the first byte of the incomplete frame in the input
                                * arrived; 0 if the input holds no partial frame */
    uint64_t age_deadline_ms;  /* monotonic time of the max-connection-age GOAWAY; 0 = none */
    uint64_t age_goaway_ms;    /* when that GOAWAY was sent (its grace runs from here); 0 = not yet */
    uint64_t last_ping_ms;     /* monotonic time of the client's last PING; 0 = none yet */
    uint32_t ping_strikes;     /* PINGs in a row sooner than min_ping_interval_ms */
    atomic_size_t calls_mem;  /* bytes of this connection's calls still allocated (any thread) */
    atomic_size_t out_len; /* output buffer length, for rpc_call_backlog from other threads */
    struct evbuffer_cb_entry *out_cb; /* conn_output_cb: keeps out_len and server->held */
    atomic_int refs;       /* the loop's (until reaped) and one per call: the struct outlives them */
    /* Output is written by the loop's flush event at the end of a burst of work, so replies to
     * pipelined calls leave in one write and a write needs no epoll_ctl. EV_WRITE is enabled
     * (`writing`) only while the kernel's buffer is full. */
    rpc_conn *dirty_next;
    int dirty;
    int writing;
};

struct rpc_call {
    rpc_loop *loop;
    rpc_conn *conn; /* valid while !done */
    rpc_server *server;
    rpc_call *hnext; /* chain in the connection's call table */
    const rpc_route *route; /* NULL for a refused call kept only to swallow its MESSAGEs */
    uint32_t id;
    atomic_int refs;
    atomic_int done;   /* answered or abandoned: nothing more is written */
    atomic_int hstate; /* enum hstate: who ends a kept call */
    atomic_int cancel_claimed; /* the cancel callback has run, or may no longer run (finished) */
    int held;           /* loop thread: handler returned RPC_PENDING at least once */
    int in_handler;     /* loop thread: handler is running now */
    int client_closed;  /* client sent END_STREAM (or the method takes one message) */
    int in_table;
    rpc_cancel_fn cancel_fn;
    void *cancel_arg;
    struct event *deadline;
    uint64_t start_us;
    uint64_t last_msg_ms; /* monotonic time of the client's last message (stream timeout) */
    size_t mem;           /* bytes of this allocation, counted in conn->calls_mem */
    uint32_t bytes_in, bytes_out;
    atomic_size_t posted; /* bytes of SEND ops queued to the loop, not yet written */
    rpc_caller caller;
    char request_id[65];
    char idempotency_key[129];
    lagoon_v1_ResponseMeta *rmeta; /* allocated on first error detail */
    struct call_block *blocks;     /* rpc_call_alloc's, newest first: freed with the call */
    void *req, *resp;             /* nanopb structs, in the same allocation */
};

/* A block of a call's own memory (rpc_call_alloc). */
struct call_block {
    struct call_block *next;
    void (*destroy)(void *p);
    size_t size;
    _Alignas(16) unsigned char data[];
};

struct rpc_server {
    rpc_config cfg;
    const rpc_route *routes;
    size_t nroutes;
    int listen_fd;
    uint16_t port;
    struct event_base *control;
    struct evconnlistener *listener;
    struct event *stop_event;
    struct event *sigterm, *sigint, *sighup;
    rpc_tls *tls;               /* NULL: plain TCP */
    rpc_loop *loops;
    unsigned nloops;
    unsigned next_loop;
    rpc_pool *pools[RPC_LANES]; /* by enum rpc_lane */
    struct event *accept_retry; /* re-enables accepting after EMFILE/ENFILE */
    uint32_t accept_backoff_ms; /* current pause; 0 while accepting works */
    pthread_mutex_t addr_mu;    /* guards addr_buckets */
    struct addr_count *addr_buckets[ADDR_BUCKETS];
    atomic_uint connections;
    atomic_uint active_calls;
    atomic_size_t held; /* bytes all calls and all queued output hold: max_server_memory_mib */
    atomic_int draining;
    atomic_int stop_requested; /* rpc_server_stop was called (any thread, any time) */
    atomic_int stop_ready;     /* stop_event exists: a stop can be delivered to the control loop */
    atomic_uint loops_running;
    rpc_loop_stats *stats;          /* one per loop; published by stats_ready */
    atomic_uint stats_ready;        /* loops whose stats a scrape may read (0 until run) */
    _Atomic uint64_t refused[RPC_REFUSALS]; /* connections accept_cb refused, by enum rpc_refusal */
    /* When rpc_server_run started (0 before): atomic, since the admin listener's thread may read
     * it (rpc_server_uptime_ms) before and while rpc_server_run sets it. */
    _Atomic uint64_t started_ms;
    int ran;
};

static _Thread_local rpc_loop *current_loop;

/* Records a client can cause at will are rate-limited (log.h). */
static log_limiter refused_log, accept_log, timeout_log, violation_log, close_log, slow_reader_log, tls_log;

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_close(rpc_conn *c);
static void conn_close_after_flush(rpc_conn *c);
static void conn_violation(rpc_conn *c, const char *why);
static void call_complete(rpc_call *call, int status);
static void call_abandon(rpc_call *call, int status, int reply, const char *message);
static void call_reply_own(rpc_call *call, int status, const char *message, const wire_violation *v);
static void call_tell_holder(rpc_call *call);
static void call_unref(rpc_call *call);
static void loop_maybe_exit(rpc_loop *l);
static void loop_post(rpc_loop *l, rpc_op *op);

/* ---- small helpers -------------------------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct timeval ms_tv(uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

void rpc_config_defaults(rpc_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->listen_host, sizeof(cfg->listen_host), "127.0.0.1");
    cfg->listen_port = 7420;
#define RPC_LIMIT_DEFAULT(field, flag, def, min, max, why) cfg->field = (def);
    RPC_LIMITS(RPC_LIMIT_DEFAULT)
#undef RPC_LIMIT_DEFAULT
    cfg->version = "0.1.0";
}

static const rpc_route *route_find(const rpc_server *s, uint32_t id)
{
    size_t lo = 0, hi = s->nroutes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t m = s->routes[mid].method->id;
        if (m == id)
            return &s->routes[mid];
        if (m < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- frame output --------------------------------------------------------------------- */

static int conn_can_write(const rpc_conn *c)
{
    return c->state == CONN_OPEN || c->state == CONN_CLOSING || c->state == CONN_PREFACE;
}

/* Enforces the output cap after n bytes were queued: a client that does not read is cut off
 * rather than allowed to grow server memory. Returns n, or 0 if the connection was closed. */
static void conn_mark_dirty(rpc_conn *c)
{
    if (c->dirty || c->writing)
        return; /* already queued for the flush, or libevent is draining it */
    rpc_loop *l = c->loop;
    c->dirty = 1;
    atomic_fetch_add(&c->refs, 1);
    c->dirty_next = l->dirty;
    if (l->dirty == NULL)
        event_active(l->flush, EV_TIMEOUT, 0);
    l->dirty = c;
}

static size_t conn_queued(rpc_conn *c, size_t n)
{
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) <= c->loop->server->cfg.max_output_buffer) {
        conn_mark_dirty(c);
        return n;
    }
    log_limited(&slow_reader_log, LOG_WARN, "peer=%s closed: output buffer above %u bytes (client not reading)", c->peer,
            c->loop->server->cfg.max_output_buffer);
    conn_close(c);
    return 0;
}

#define WRITE_UNENCODABLE ((size_t)-1)

/* Appends a whole frame (metadata already encoded, msg encoded straight into the output
 * buffer), then enforces the output cap. Returns the frame size; 0 if the connection cannot
 * take it (closed, or closed now for exceeding the cap); WRITE_UNENCODABLE if msg breaks a
 * bound, in which case nothing was written. */
static size_t conn_write_frame(rpc_conn *c, uint8_t type, uint8_t flags, uint32_t call_id,
                               uint32_t code, const uint8_t *meta, size_t meta_len,
                               const wire_msginfo *info, const void *msg)
{
    if (!conn_can_write(c))
        return 0;
    long body_len = msg ? wire_encoded_size(info, msg) : 0;
    if (body_len < 0 || meta_len > UINT16_MAX)
        return WRITE_UNENCODABLE;
    size_t total = WIRE_HEADER_SIZE + meta_len + (size_t)body_len;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct evbuffer_iovec vec;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &vec, 1) < 1 || vec.iov_len < total)
        return 0;
    uint8_t *p = vec.iov_base;
    wire_header_encode(p, type, flags, call_id, code, meta_len, (size_t)body_len);
    if (meta_len)
        memcpy(p + WIRE_HEADER_SIZE, meta, meta_len);
    if (msg && wire_encode(info, msg, p + WIRE_HEADER_SIZE + meta_len, (size_t)body_len, NULL) < 0)
        return WRITE_UNENCODABLE; /* not committed: the reservation is simply dropped */
    vec.iov_len = total;
    evbuffer_commit_space(out, &vec, 1);
    return conn_queued(c, total);
}

/* The largest encoded ResponseMeta (message, 16 violations, request id) fits easily. */
#define META_BUF 8192

/* Encodes a ResponseMeta into buf (META_BUF bytes); its length, 0 if it cannot be encoded. */
static size_t meta_encode(const lagoon_v1_ResponseMeta *meta, uint8_t *buf)
{
    long n = wire_encode(&lagoon_v1_ResponseMeta_info, meta, buf, META_BUF, NULL);
    return n > 0 ? (size_t)n : 0;
}

/* A frame whose metadata is a ResponseMeta with just a message (GOAWAY, refusals). */
static size_t conn_write_message_frame(rpc_conn *c, uint8_t type, uint8_t flags, uint32_t call_id,
                                       uint32_t code, const char *message, const char *request_id,
                                       uint32_t retry_after_ms)
{
    lagoon_v1_ResponseMeta *meta = calloc(1, sizeof(*meta));
    uint8_t *buf = malloc(META_BUF);
    size_t n = 0;
    if (meta != NULL && buf != NULL) {
        snprintf(meta->message, sizeof(meta->message), "%s", message);
        snprintf(meta->request_id, sizeof(meta->request_id), "%s", request_id ? request_id : "");
        meta->retry_after_ms = retry_after_ms;
        n = meta_encode(meta, buf);
    }
    size_t w = conn_write_frame(c, type, flags, call_id, code, buf, n, NULL, NULL);
    free(meta);
    free(buf);
    return w == WRITE_UNENCODABLE ? 0 : w;
}

static size_t conn_write_bytes(rpc_conn *c, const uint8_t *data, size_t len)
{
    if (!conn_can_write(c))
        return 0;
    evbuffer_add(bufferevent_get_output(c->bev), data, len);
    return conn_queued(c, len);
}

static void conn_send_goaway(rpc_conn *c, const char *message)
{
    conn_write_message_frame(c, WIRE_GOAWAY, 0, 0, c->last_call_id, message, NULL, 0);
    c->goaway_sent = 1;
}

/* ---- call table ------------------------------------------------------------------------ */

/* ---- per-address connection counts ------------------------------------------------------- */

static unsigned addr_hash(const char *h)
{
    uint32_t x = 2166136261u; /* FNV-1a */
    for (; *h; h++)
        x = (x ^ (uint8_t)*h) * 16777619u;
    return x % ADDR_BUCKETS;
}

/* Counts one more connection from host: 0, or -1 (nothing counted) if that would pass
 * max_connections_per_address or memory is short. */
static int addr_acquire(rpc_server *s, const char *host)
{
    int rc = 0;
    pthread_mutex_lock(&s->addr_mu);
    addr_count **b = &s->addr_buckets[addr_hash(host)], *a = *b;
    while (a && strcmp(a->host, host) != 0)
        a = a->next;
    if (a == NULL) {
        a = calloc(1, sizeof(*a));
        if (a == NULL) {
            rc = -1;
        } else {
            snprintf(a->host, sizeof(a->host), "%s", host);
            a->next = *b;
            *b = a;
        }
    }
    if (a != NULL) {
        if (a->n >= s->cfg.max_connections_per_address)
            rc = -1;
        else
            a->n++;
    }
    pthread_mutex_unlock(&s->addr_mu);
    return rc;
}

static void addr_release(rpc_server *s, const char *host)
{
    pthread_mutex_lock(&s->addr_mu);
    for (addr_count **p = &s->addr_buckets[addr_hash(host)]; *p; p = &(*p)->next) {
        if (strcmp((*p)->host, host) == 0) {
            addr_count *a = *p;
            if (--a->n == 0) {
                *p = a->next;
                free(a);
            }
            break;
        }
    }
    pthread_mutex_unlock(&s->addr_mu);
}

/* A counted connection is gone (closed, or never opened): its slots are free. Any thread. */
static void server_conn_gone(rpc_server *s, const char *host)
{
    atomic_fetch_sub(&s->connections, 1);
    addr_release(s, host);
}

/* Bytes a connection holds now: buffered input, its calls, queued output. Loop thread. */
static size_t conn_memory(rpc_conn *c)
{
    if (c->bev == NULL)
        return 0;
    return evbuffer_get_length(bufferevent_get_input(c->bev)) + atomic_load(&c->calls_mem) +
           evbuffer_get_length(bufferevent_get_output(c->bev));
}

static rpc_call *table_find(rpc_conn *c, uint32_t id)
{
    if (c->buckets == NULL)
        return NULL;
    for (rpc_call *k = c->buckets[id % CALL_BUCKETS]; k; k = k->hnext)
        if (k->id == id)
            return k;
    return NULL;
}

static int table_insert(rpc_conn *c, rpc_call *call)
{
    if (c->buckets == NULL) {
        c->buckets = calloc(CALL_BUCKETS, sizeof(*c->buckets));
        if (c->buckets == NULL)
            return -1;
    }
    rpc_call **b = &c->buckets[call->id % CALL_BUCKETS];
    call->hnext = *b;
    *b = call;
    call->in_table = 1;
    c->ncalls++;
    return 0;
}

/* Removes the call from its connection's table and drops the table's reference. */
static void table_remove(rpc_conn *c, rpc_call *call)
{
    if (!call->in_table)
        return;
    for (rpc_call **p = &c->buckets[call->id % CALL_BUCKETS]; *p; p = &(*p)->hnext) {
        if (*p == call) {
            *p = call->hnext;
            break;
        }
    }
    call->in_table = 0;
    c->ncalls--;
    if (c->ncalls == 0 && c->goaway_sent && c->state == CONN_OPEN)
        conn_close_after_flush(c);
    call_unref(call);
}

/* ---- calls ------------------------------------------------------------------------------ */

#define CALL_HEAD ((sizeof(rpc_call) + 15) & ~(size_t)15)

/* Counts bytes a call holds against its connection's budget and the server's. Any thread
 * that holds the call (rmeta is allocated by whoever sets the first error detail). */
static void call_mem_add(rpc_call *call, size_t n)
{
    call->mem += n;
    atomic_fetch_add(&call->conn->calls_mem, n);
    atomic_fetch_add(&call->server->held, n);
}

void *rpc_call_alloc(rpc_call *c, size_t size, void (*destroy)(void *p))
{
    if (size > RPC_CALL_ALLOC_MAX)
        return NULL;
    size_t n = sizeof(struct call_block) + size;
    /* The same budget as the call's own allocation: a handler's per-call memory counts
     * against max-connection-memory and max-server-memory-mib like its request does. */
    if (atomic_load(&c->conn->calls_mem) + n > (size_t)c->server->cfg.max_connection_memory ||
        atomic_load(&c->server->held) + n > (size_t)c->server->cfg.max_server_memory_mib << 20)
        return NULL;
    struct call_block *b = calloc(1, n);
    if (b == NULL)
        return NULL;
    b->destroy = destroy;
    b->size = size;
    b->next = c->blocks;
    c->blocks = b;
    call_mem_add(c, n);
    return b->data;
}

/* One allocation holds the call, its request and its response struct. */
static size_t call_alloc_size(const rpc_route *route)
{
    size_t req_size = route ? route->method->request_size : 0;
    size_t resp_size = route ? route->method->response_size : 0;
    return CALL_HEAD + ((req_size + 15) & ~(size_t)15) + resp_size;
}

static rpc_call *call_new(rpc_conn *c, const rpc_route *route, uint32_t id)
{
    size_t req_size = route ? route->method->request_size : 0;
    size_t req_off = CALL_HEAD, resp_off = CALL_HEAD + ((req_size + 15) & ~(size_t)15);
    size_t size = call_alloc_size(route);
    rpc_call *call = malloc(size);
    if (call == NULL)
        return NULL;
    memset(call, 0, sizeof(*call));
    call->loop = c->loop;
    call->conn = c;
    call->server = c->loop->server;
    call_mem_add(call, size);
    call->route = route;
    call->id = id;
    atomic_init(&call->refs, 1); /* the call table's */
    atomic_init(&call->done, 0);
    atomic_init(&call->hstate, H_NONE);
    call->req = route ? (char *)call + req_off : NULL;
    call->resp = route ? (char *)call + resp_off : NULL;
    if (call->resp)
        wire_init(route->method->response, call->resp); /* what the handler leaves is a default */
    call->start_us = now_us();
    call->last_msg_ms = call->start_us / 1000;
    atomic_fetch_add(&c->refs, 1);
    return call;
}

static void conn_unref(rpc_conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

static void call_ref(rpc_call *call)
{
    atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
}

static void call_unref(rpc_call *call)
{
    if (atomic_fetch_sub_explicit(&call->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (call->deadline)
        event_free(call->deadline);
    if (call->route) {
        const wire_method *m = call->route->method;
        if (m->request->has_pointers)
            pb_release(m->request->desc, call->req);
        if (m->response->has_pointers)
            pb_release(m->response->desc, call->resp);
        /* Passwords and tokens do not outlive their call in freed memory. */
        if (m->secrets & WIRE_SECRET_REQUEST)
            explicit_bzero(call->req, m->request_size);
        if (m->secrets & WIRE_SECRET_RESPONSE)
            explicit_bzero(call->resp, m->response_size);
    }
    free(call->rmeta);
    while (call->blocks) {
        struct call_block *b = call->blocks;
        call->blocks = b->next;
        if (b->destroy)
            b->destroy(b->data);
        free(b);
    }
    rpc_conn *conn = call->conn;
    atomic_fetch_sub(&conn->calls_mem, call->mem);
    atomic_fetch_sub(&call->server->held, call->mem);
    free(call);
    conn_unref(conn);
}

static lagoon_v1_ResponseMeta *call_rmeta(rpc_call *call)
{
    if (call->rmeta == NULL) {
        call->rmeta = calloc(1, sizeof(*call->rmeta));
        if (call->rmeta != NULL)
            call_mem_add(call, sizeof(*call->rmeta)); /* held as long as the call: in its budget */
    }
    return call->rmeta;
}

/* The slot of a route in the per-method stats: its index, or nroutes for an unknown method. */
static size_t stats_slot(const rpc_server *s, const rpc_route *r)
{
    return r ? (size_t)(r - s->routes) : s->nroutes;
}

/* Counts an answered call on its loop: by method and status, and (dur_us != UINT64_MAX) in
 * the method's latency histogram. Loop thread. */
static void stats_call(rpc_loop *l, const rpc_route *r, int status, uint64_t dur_us)
{
    static const uint64_t bounds[RPC_METRICS_NBUCKETS] = {RPC_METRICS_BUCKETS_US};
    rpc_loop_stats *st = l->stats;
    size_t slot = stats_slot(l->server, r);
    unsigned code = status >= 0 && status <= LAGOON_STATUS_MAX ? (unsigned)status : (unsigned)LAGOON_UNKNOWN;
    rpc_stat_add(&st->calls[slot * RPC_METRICS_NSTATUS + code], 1);
    if (dur_us == UINT64_MAX)
        return;
    unsigned b = 0;
    while (b < RPC_METRICS_NBUCKETS && dur_us > bounds[b])
        b++;
    rpc_stat_add(&st->latency[slot * (RPC_METRICS_NBUCKETS + 1) + b], 1);
    rpc_stat_add(&st->latency_sum_us[slot], dur_us);
}

static void call_log(const rpc_call *call, const char *peer, int status, const char *path)
{
    if (!log_enabled(LOG_INFO))
        return;
    uint64_t dur = now_us() - call->start_us;
    log_msg(LOG_INFO, "call peer=%s method=%s status=%s dur_us=%llu in=%u out=%u req_id=%s", peer,
            path, lagoon_status_name(status), (unsigned long long)dur, call->bytes_in, call->bytes_out,
            call->request_id[0] ? call->request_id : "-");
}

/* Marks the call answered/abandoned: frees its place in the active count and, once the client
 * has also ended its side, its call id. Loop thread. */
static void call_mark_done(rpc_call *call, int status)
{
    stats_call(call->loop, call->route, status, now_us() - call->start_us);
    atomic_store(&call->done, 1);
    atomic_fetch_sub(&call->server->active_calls, 1);
    call->conn->live_calls--;
    if (call->deadline)
        event_del(call->deadline);
    call_log(call, call->conn->peer, status, call->route ? call->route->method->path : "?");
    if (call->client_closed)
        table_remove(call->conn, call);
}

/* Writes the RESPONSE that ends the call. Loop thread, call not yet done. meta is the
 * handler's (read only once the handler has finished) or one the RPC layer built itself; NULL
 * when there are no details. The common case (OK, no details) builds no metadata struct. */
static void call_reply(rpc_call *call, int status, lagoon_v1_ResponseMeta *meta)
{
    if (atomic_load(&call->done))
        return;
    rpc_conn *c = call->conn;
    const wire_method *m = call->route ? call->route->method : NULL;
    int with_body = m && status == LAGOON_OK && call->resp &&
                    (m->kind == WIRE_UNARY || m->kind == WIRE_CLIENT_STREAMING);
    uint8_t small[2 + sizeof(call->request_id)] = {0};
    uint8_t *mbuf = small;
    size_t mlen = 0;
    if (meta != NULL) {
        snprintf(meta->request_id, sizeof(meta->request_id), "%s", call->request_id);
        mbuf = malloc(META_BUF);
        mlen = mbuf ? meta_encode(meta, mbuf) : 0;
    } else if (call->request_id[0]) {
        /* ResponseMeta{request_id = 4}: a tag, a one-byte length (at most 64), the bytes. */
        size_t n = strlen(call->request_id);
        small[0] = (4 << 3) | 2;
        small[1] = (uint8_t)n;
        memcpy(small + 2, call->request_id, n);
        mlen = n + 2;
    }
    size_t w = conn_write_frame(c, WIRE_RESPONSE, WIRE_FLAG_END_STREAM, call->id, (uint32_t)status, mbuf, mlen,
                                with_body ? m->response : NULL, with_body ? call->resp : NULL);
    if (mbuf != small)
        free(mbuf);
    if (w == WRITE_UNENCODABLE) {
        log_msg(LOG_ERROR, "method=%s response breaks a field bound", m ? m->path : "?");
        status = LAGOON_INTERNAL;
        w = conn_write_message_frame(c, WIRE_RESPONSE, WIRE_FLAG_END_STREAM, call->id, (uint32_t)status,
                                     "the server could not encode its response", call->request_id, 0);
    }
    call->bytes_out += (uint32_t)w;
    if (!atomic_load(&call->done)) /* conn_write_frame may have closed the connection */
        call_mark_done(call, status);
}

/* The handler's reply: status with the details it set (rpc_call_error, _violation). */
static void call_complete(rpc_call *call, int status)
{
    call_reply(call, status, call->rmeta);
}

/* A reply the RPC layer makes on its own (deadline, undecodable input): its details never
 * touch the handler's, which another thread may still be writing. */
static void call_reply_own(rpc_call *call, int status, const char *message, const wire_violation *v)
{
    lagoon_v1_ResponseMeta *meta = calloc(1, sizeof(*meta));
    if (meta != NULL) {
        snprintf(meta->message, sizeof(meta->message), "%s", message);
        if (v != NULL && v->field[0]) {
            meta->violations_count = 1;
            snprintf(meta->violations[0].field, sizeof(meta->violations[0].field), "%s", v->field);
            snprintf(meta->violations[0].description, sizeof(meta->violations[0].description), "%s",
                     v->description);
        }
    }
    call_reply(call, status, meta);
    free(meta);
}

/* Ends a call without the handler: deadline, bad input, cancel, disconnect, shutdown. With
 * reply (a message), the client gets a RESPONSE with status. If the handler kept the call, it
 * is told (cancel callback) and still owes rpc_call_finish. */
static void call_abandon(rpc_call *call, int status, int reply, const char *message)
{
    if (atomic_load(&call->done))
        return;
    call_ref(call); /* marking it done may drop the table's reference, which may be the last */
    if (reply) {
        call_reply_own(call, status, message ? message : lagoon_status_name(status), NULL);
    } else {
        call_mark_done(call, status);
    }
    call_tell_holder(call);
    call_unref(call);
}

/* If the handler keeps the call, queues its cancel callback. The handler hears of it from a
 * fresh loop callback, never from inside whatever ended the call (it may hold its own locks
 * there, e.g. while sending to this call). */
static void call_tell_holder(rpc_call *call)
{
    /* The op's reference is taken before the state changes hands: the moment hstate reads
     * H_CANCELLED, the handler's finish (on a worker, the writer, the router) may drop the
     * last other reference and free the call. A reference taken after the exchange would
     * touch freed memory. Whoever switches a call's state for another thread holds a
     * reference of its own first; that is the rule for every hand-off in this file. */
    rpc_op *op = calloc(1, sizeof(*op));
    call_ref(call);
    int expected = H_HELD;
    if (!atomic_compare_exchange_strong(&call->hstate, &expected, H_CANCELLED)) {
        free(op);
        call_unref(call);
        return;
    }
    if (op == NULL) {
        /* Out of memory: the holder cannot be told, but it still finishes the call (its
         * finish sees H_CANCELLED and only releases it). */
        call_unref(call);
        return;
    }
    op->kind = OP_CANCELLED;
    op->call = call;
    loop_post(call->loop, op);
}

static void call_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_call *call = arg;
    call_ref(call); /* the reply may close the connection, dropping the table's reference */
    call_abandon(call, LAGOON_DEADLINE_EXCEEDED, 1, "deadline exceeded");
    call_unref(call);
}

/* Applies a handler's return value. Loop thread. The handler's reference was taken before
 * it ran; here it is kept (PENDING), given back (CONTINUE), or spent ending the call. */
static void call_handled(rpc_call *call, int rc)
{
    call->in_handler = 0;
    if (rc == RPC_PENDING) {
        call->held = 1;
        return;
    }
    if (rc == RPC_CONTINUE) {
        const wire_method *m = call->route->method;
        if (m->kind != WIRE_CLIENT_STREAMING && m->kind != WIRE_BIDI_STREAMING) {
            log_msg(LOG_ERROR, "method=%s handler returned RPC_CONTINUE on a single-message call", m->path);
            rc = LAGOON_INTERNAL;
        } else if (call->held) {
            return;
        } else {
            /* Give the invocation's reference back. If the call was cancelled meanwhile the
             * handler owes nothing either; if it called finish itself, the op owns the ref. */
            int expected = H_HELD;
            if (atomic_compare_exchange_strong(&call->hstate, &expected, H_NONE)) {
                call_unref(call);
            } else if (expected == H_CANCELLED) {
                atomic_store(&call->cancel_claimed, 1); /* it no longer holds the call */
                call_unref(call);
            }
            return;
        }
    }
    if (rc < 0 || rc > LAGOON_STATUS_MAX) {
        log_msg(LOG_ERROR, "handler returned invalid status %d", rc);
        rc = LAGOON_INTERNAL;
    }
    /* Returning a status is the handler's finish. */
    int prev = atomic_exchange(&call->hstate, H_FINISHED);
    if (prev == H_HELD) {
        call_complete(call, rc);
        call_unref(call);
    } else if (prev == H_CANCELLED) {
        atomic_store(&call->cancel_claimed, 1); /* its return was its finish: nothing to tell it */
        call_unref(call);
    } /* H_FINISHED: rpc_call_finish ran inside the handler; its op owns the reference */
}

/* Runs the handler for one message (or req == NULL: the client half-closed). */
static void call_invoke(rpc_call *call, const void *req)
{
    /* A handler that finished the call (from another thread; its OP_FINISH not yet run) hears
     * nothing more about it. */
    if (atomic_load(&call->hstate) == H_FINISHED)
        return;
    if (!call->held) {
        int expected = H_NONE;
        if (!atomic_compare_exchange_strong(&call->hstate, &expected, H_HELD))
            return; /* finished or cancelled meanwhile */
        call_ref(call);
    }
    call->in_handler = 1;
    int rc = call->route->handler(call, req, call->resp);
    call_handled(call, rc);
}

/* ---- the mailbox: work from other threads ----------------------------------------------- */

static void loop_post(rpc_loop *l, rpc_op *op)
{
    op->next = NULL;
    pthread_mutex_lock(&l->mu);
    if (l->tail)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
    pthread_mutex_unlock(&l->mu);
    event_active(l->wake, EV_READ, 0);
}

static void conn_accept_fd(rpc_loop *l, int fd, const char *peer, const char *host);

static void op_run(rpc_loop *l, rpc_op *op, int live)
{
    switch (op->kind) {
    case OP_NEW_CONN:
        if (live && !l->draining)
            conn_accept_fd(l, op->fd, op->peer, op->host);
        else {
            close(op->fd);
            server_conn_gone(l->server, op->host);
        }
        break;
    case OP_SEND:
        atomic_fetch_sub(&op->call->posted, op->len);
        if (live && !atomic_load(&op->call->done))
            op->call->bytes_out += (uint32_t)conn_write_bytes(op->call->conn, op->data, op->len);
        call_unref(op->call);
        break;
    case OP_FINISH:
        if (live)
            call_complete(op->call, op->status);
        call_unref(op->call);
        break;
    case OP_CANCELLED: {
        /* Runs even when the server is being torn down: the handler frees its state here. Not
         * if the handler has finished the call meanwhile (it has freed that state itself). */
        rpc_cancel_fn fn = op->call->cancel_fn;
        if (fn && atomic_exchange(&op->call->cancel_claimed, 1) == 0)
            fn(op->call, op->call->cancel_arg);
        call_unref(op->call);
        break;
    }
    case OP_DRAIN:
        break;
    }
}

static void loop_drain_start(rpc_loop *l);

static void loop_wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_loop *l = arg;
    pthread_mutex_lock(&l->mu);
    rpc_op *op = l->head;
    l->head = l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (op) {
        rpc_op *next = op->next;
        if (op->kind == OP_DRAIN)
            loop_drain_start(l);
        else
            op_run(l, op, 1);
        free(op);
        op = next;
    }
    loop_maybe_exit(l);
}

/* ---- public call API ---------------------------------------------------------------------- */

rpc_server *rpc_call_server(const rpc_call *c) { return c->server; }
void *rpc_call_app(const rpc_call *c) { return c->server->cfg.app; }
const rpc_caller *rpc_call_caller(const rpc_call *c) { return &c->caller; }
const wire_method *rpc_call_method(const rpc_call *c) { return c->route ? c->route->method : NULL; }
const char *rpc_call_request_id(const rpc_call *c) { return c->request_id; }
const char *rpc_call_idempotency_key(const rpc_call *c) { return c->idempotency_key; }
const void *rpc_call_request(const rpc_call *c) { return c->req; }
void *rpc_call_response(rpc_call *c) { return c->resp; }
struct event_base *rpc_call_base(const rpc_call *c) { return c->loop->base; }
int rpc_call_done(const rpc_call *c) { return atomic_load(&c->done); }

const char *rpc_call_peer(const rpc_call *c)
{
    return atomic_load(&c->done) ? "-" : c->conn->peer;
}

size_t rpc_call_backlog(const rpc_call *c)
{
    if (atomic_load(&c->done))
        return 0;
    /* conn may be closing on its loop right now; its counter stays readable until the call
     * is released, which the caller's hold prevents. */
    return atomic_load(&((rpc_call *)c)->posted) + atomic_load(&c->conn->out_len);
}

int rpc_call_error(rpc_call *c, int status, const char *fmt, ...)
{
    lagoon_v1_ResponseMeta *m = call_rmeta(c);
    if (m != NULL) {
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(m->message, sizeof(m->message), fmt, ap);
        va_end(ap);
    }
    return status;
}

int rpc_call_violation(rpc_call *c, const char *field, const char *fmt, ...)
{
    lagoon_v1_ResponseMeta *m = call_rmeta(c);
    if (m == NULL)
        return LAGOON_INVALID_ARGUMENT;
    if (m->violations_count < sizeof(m->violations) / sizeof(m->violations[0])) {
        lagoon_v1_FieldViolation *v = &m->violations[m->violations_count++];
        snprintf(v->field, sizeof(v->field), "%s", field);
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(v->description, sizeof(v->description), fmt, ap);
        va_end(ap);
    }
    if (m->message[0] == '\0')
        snprintf(m->message, sizeof(m->message), "invalid argument: see violations");
    return LAGOON_INVALID_ARGUMENT;
}

int rpc_call_violations(const rpc_call *c)
{
    return c->rmeta ? (int)c->rmeta->violations_count : 0;
}

void rpc_call_retry_after(rpc_call *c, uint32_t ms)
{
    lagoon_v1_ResponseMeta *m = call_rmeta(c);
    if (m)
        m->retry_after_ms = ms;
}

int rpc_call_send(rpc_call *c, const void *msg)
{
    if (atomic_load(&c->done) || c->route == NULL)
        return -1;
    const wire_method *m = c->route->method;
    if (current_loop == c->loop) {
        size_t n = conn_write_frame(c->conn, WIRE_MESSAGE, 0, c->id, 0, NULL, 0, m->response, msg);
        if (n == WRITE_UNENCODABLE || n == 0)
            return -1;
        c->bytes_out += (uint32_t)n;
        return 0;
    }
    long body = wire_encoded_size(m->response, msg);
    if (body < 0)
        return -1;
    rpc_op *op = malloc(sizeof(*op) + WIRE_HEADER_SIZE + (size_t)body);
    if (op == NULL)
        return -1;
    op->kind = OP_SEND;
    op->len = WIRE_HEADER_SIZE + (size_t)body;
    wire_header_encode(op->data, WIRE_MESSAGE, 0, c->id, 0, 0, (size_t)body);
    wire_encode(m->response, msg, op->data + WIRE_HEADER_SIZE, (size_t)body, NULL);
    call_ref(c);
    op->call = c;
    atomic_fetch_add(&c->posted, op->len);
    loop_post(c->loop, op);
    return 0;
}

void rpc_call_finish(rpc_call *c, int status)
{
    if (status < 0 || status > LAGOON_STATUS_MAX) {
        log_msg(LOG_ERROR, "rpc_call_finish with invalid status %d", status);
        status = LAGOON_INTERNAL;
    }
    /* Only a kept call (H_HELD, or H_CANCELLED once the cancel path ended it) can be finished;
     * any other state is a handler bug, and is left as it is rather than made worse. */
    int prev = atomic_load(&c->hstate);
    while ((prev == H_HELD || prev == H_CANCELLED) && !atomic_compare_exchange_weak(&c->hstate, &prev, H_FINISHED))
        ;
    if (prev != H_HELD) {
        /* Already ended by the cancel path: only the handler's reference is left to drop, and
         * a cancel callback still queued must not run for a handler that is done. */
        if (prev == H_CANCELLED) {
            atomic_store(&c->cancel_claimed, 1);
            call_unref(c);
        } else {
            log_msg(LOG_ERROR, "rpc_call_finish on a call not kept by its handler (finished twice, or never kept)");
        }
        return;
    }
    if (current_loop == c->loop && !c->in_handler) {
        call_complete(c, status);
        call_unref(c);
        return;
    }
    rpc_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        log_msg(LOG_ERROR, "out of memory finishing a call; it is abandoned");
        return;
    }
    op->kind = OP_FINISH;
    op->call = c; /* the handler's reference moves to the op */
    op->status = status;
    loop_post(c->loop, op);
}

void rpc_call_on_cancel(rpc_call *c, rpc_cancel_fn fn, void *arg)
{
    c->cancel_fn = fn;
    c->cancel_arg = arg;
}

typedef struct defer_job {
    rpc_call *call;
    rpc_work_fn fn;
    rpc_drop_fn drop;
    void *arg;
} defer_job;

static void defer_run(void *arg)
{
    defer_job *j = arg;
    rpc_call *call = j->call;
    int rc;
    if (atomic_load(&call->done)) {
        /* Abandoned while queued: the work is skipped, what it owned is freed all the same. */
        if (j->drop)
            j->drop(j->arg);
        rc = LAGOON_CANCELLED;
    } else {
        rc = j->fn(call, j->arg);
    }
    free(j);
    if (rc != RPC_PENDING)
        rpc_call_finish(call, rc);
}

int rpc_call_defer(rpc_call *c, int lane, rpc_work_fn fn, rpc_drop_fn drop, void *arg)
{
    if (lane < 0 || lane >= RPC_LANES) {
        log_msg(LOG_ERROR, "rpc_call_defer to lane %d, which does not exist", lane);
        return rpc_call_error(c, LAGOON_INTERNAL, "internal error");
    }
    defer_job *j = malloc(sizeof(*j));
    if (j != NULL) {
        j->call = c;
        j->fn = fn;
        j->drop = drop;
        j->arg = arg;
        if (rpc_pool_submit(c->server->pools[lane], defer_run, j) == 0)
            return RPC_PENDING;
        free(j);
    }
    rpc_call_retry_after(c, 100);
    return rpc_call_error(c, LAGOON_RESOURCE_EXHAUSTED, "server busy: %s queue full",
                          lane == RPC_LANE_HASH ? "password hashing" : "worker");
}

/* ---- frames in ---------------------------------------------------------------------------- */

/* Answers a REQUEST that never becomes a call (unknown method, refused, bad metadata). If the
 * client may still send MESSAGEs on it, a tombstone keeps the id until the client ends. */
static void conn_refuse(rpc_conn *c, const wire_frame *f, int client_open, int status,
                        const char *request_id, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void conn_refuse(rpc_conn *c, const wire_frame *f, int client_open, int status,
                        const char *request_id, const char *fmt, ...)
{
    char message[sizeof(((lagoon_v1_ResponseMeta *)0)->message)];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    /* The RPC layer's own refusals that a retry can cure say when: a busy connection soon, a
     * draining server once the client has reconnected (here or elsewhere). */
    uint32_t retry = status == LAGOON_RESOURCE_EXHAUSTED ? RETRY_BUSY_MS
                     : status == LAGOON_UNAVAILABLE      ? RETRY_DRAINING_MS
                                                         : 0;
    conn_write_message_frame(c, WIRE_RESPONSE, WIRE_FLAG_END_STREAM, f->call_id, (uint32_t)status, message,
                             request_id, retry);
    stats_call(c->loop, f->type == WIRE_REQUEST ? route_find(c->loop->server, f->code) : NULL, status, UINT64_MAX);
    if (log_enabled(LOG_INFO))
        log_msg(LOG_INFO, "call peer=%s method=0x%08x status=%s dur_us=0 in=%u out=0 req_id=%s msg=\"%s\"",
                c->peer, f->code, lagoon_status_name(status), f->length + 4,
                request_id && request_id[0] ? request_id : "-", message);
    if (client_open && c->state == CONN_OPEN) {
        rpc_call *t = call_new(c, NULL, f->call_id);
        if (t == NULL || table_insert(c, t) != 0) {
            if (t)
                call_unref(t);
            conn_violation(c, "out of memory");
            return;
        }
        atomic_store(&t->done, 1);
    }
}

static int access_check(rpc_conn *c, const rpc_route *r, lagoon_v1_RequestMeta *meta, rpc_caller *who,
                        const char **why)
{
    rpc_server *s = c->loop->server;
    memset(who, 0, sizeof(*who));
    int authed = 0, had_token = meta->auth_token[0] != '\0';
    if (had_token && s->cfg.authenticate)
        authed = s->cfg.authenticate(s->cfg.authenticate_arg, meta->auth_token, who) == 0;
    /* The token is not needed past this point and must not linger in memory or logs. */
    memset(meta->auth_token, 0, sizeof(meta->auth_token));
    if (!authed)
        memset(who, 0, sizeof(*who));
    else
        who->grants |= RPC_GRANT(lagoon_v1_Access_ACCESS_USER);
    uint8_t need = r->method->access;
    if (need == lagoon_v1_Access_ACCESS_PUBLIC)
        return LAGOON_OK;
    if (!authed) {
        *why = had_token ? "invalid or expired access token" : "this method needs a signed-in user (auth_token)";
        return LAGOON_UNAUTHENTICATED;
    }
    /* What each level means is the application's: it says, per caller, which it grants. */
    if (need >= 32 || !(who->grants & RPC_GRANT(need))) {
        const rpc_config *cfg = &s->cfg;
        *why = cfg->access_denied && need < cfg->naccess_denied && cfg->access_denied[need]
                   ? cfg->access_denied[need]
                   : "this method needs an access level the caller does not have";
        return LAGOON_PERMISSION_DENIED;
    }
    return LAGOON_OK;
}

/* INVALID_ARGUMENT for a request message that does not decode, naming the field. */
static void call_reply_bad_input(rpc_call *call, const wire_violation *v)
{
    char msg[400];
    snprintf(msg, sizeof(msg), "invalid %s: %s%s%s", call->route->method->request_type, v->field,
             v->field[0] ? ": " : "", v->description);
    call_reply_own(call, LAGOON_INVALID_ARGUMENT, msg, v);
}

static void rule_violation(void *arg, const char *field, const char *description)
{
    lagoon_v1_ResponseMeta *meta = arg;
    const size_t cap = sizeof(meta->violations) / sizeof(meta->violations[0]);
    if (meta->violations_count >= cap)
        return;
    lagoon_v1_FieldViolation *fv = &meta->violations[meta->violations_count++];
    snprintf(fv->field, sizeof(fv->field), "%s", field);
    snprintf(fv->description, sizeof(fv->description), "%s", description);
}

static void rule_ignore(void *arg, const char *field, const char *description)
{
    (void)arg;
    (void)field;
    (void)description;
}

/* The request's field rules from the IDL (wire_check_rules), before the handler sees it:
 * every broken rule in one INVALID_ARGUMENT. 1 if the call was answered so. */
static int call_reply_if_rules_broken(rpc_call *call)
{
    const wire_msginfo *info = call->route->method->request;
    if (info->nrules == 0 || wire_check_rules(info, call->req, rule_ignore, NULL) == 0)
        return 0; /* the common case: nothing broken, nothing allocated */
    lagoon_v1_ResponseMeta *meta = calloc(1, sizeof(*meta));
    if (meta == NULL) {
        call_reply_own(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory", NULL);
        return 1;
    }
    int n = wire_check_rules(info, call->req, rule_violation, meta);
    if (n > 0) {
        snprintf(meta->message, sizeof(meta->message), "invalid %s: %s: %s%s", call->route->method->request_type,
                 meta->violations[0].field, meta->violations[0].description,
                 n > 1 ? " (and more: see violations)" : "");
        call_reply(call, LAGOON_INVALID_ARGUMENT, meta);
    }
    free(meta);
    return n > 0;
}

static void on_request(rpc_conn *c, const wire_frame *f)
{
    rpc_server *s = c->loop->server;
    if (table_find(c, f->call_id) != NULL) {
        conn_violation(c, "REQUEST reuses the id of an open call");
        return;
    }
    const rpc_route *r = route_find(s, f->code);
    int streaming_in = r ? (r->method->kind == WIRE_CLIENT_STREAMING || r->method->kind == WIRE_BIDI_STREAMING)
                         : 1;
    int client_open = streaming_in && !(f->flags & WIRE_FLAG_END_STREAM);

    /* The limit first: refused calls whose client side stays open keep an entry too. */
    if (c->ncalls >= s->cfg.max_concurrent_calls) {
        if (client_open)
            conn_violation(c, "more open calls than max_concurrent_calls");
        else
            conn_refuse(c, f, 0, LAGOON_RESOURCE_EXHAUSTED, NULL,
                        "more than %u concurrent calls on this connection", s->cfg.max_concurrent_calls);
        return;
    }
    if (c->goaway_sent) {
        conn_refuse(c, f, client_open, LAGOON_UNAVAILABLE, NULL, "server is shutting down: no new calls");
        return;
    }
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    wire_violation v;
    if (f->meta_len && wire_decode(&lagoon_v1_RequestMeta_info, f->meta, f->meta_len, &meta, &v) != 0) {
        conn_refuse(c, f, client_open, LAGOON_INVALID_ARGUMENT, NULL, "malformed request metadata: %s%s%s",
                    v.field, v.field[0] ? ": " : "", v.description);
        return;
    }
    if (r == NULL) {
        conn_refuse(c, f, client_open, LAGOON_UNIMPLEMENTED, meta.request_id,
                    "unknown method id 0x%08x", f->code);
        return;
    }
    rpc_caller who;
    const char *why = NULL;
    int st = access_check(c, r, &meta, &who, &why);
    if (st != LAGOON_OK) {
        conn_refuse(c, f, client_open, st, meta.request_id, "%s", why);
        return;
    }

    /* The budget counts calls' state and queued output; the frame being handled is drained
     * right after, so its input bytes are not held against the call it starts. */
    size_t held = atomic_load(&c->calls_mem) + evbuffer_get_length(bufferevent_get_output(c->bev));
    if (held + call_alloc_size(r) > s->cfg.max_connection_memory) {
        conn_refuse(c, f, client_open, LAGOON_RESOURCE_EXHAUSTED, meta.request_id,
                    "connection memory budget: %zu of %u bytes held by open calls and queued output; "
                    "finish some calls or use another connection",
                    held, s->cfg.max_connection_memory);
        return;
    }
    if (atomic_load(&s->held) + call_alloc_size(r) > (size_t)s->cfg.max_server_memory_mib << 20) {
        log_limited(&refused_log, LOG_WARN, "server memory budget (%u MiB) reached: refusing new calls",
                    s->cfg.max_server_memory_mib);
        conn_refuse(c, f, client_open, LAGOON_RESOURCE_EXHAUSTED, meta.request_id,
                    "server memory budget: %u MiB held by open calls and queued output; retry later",
                    s->cfg.max_server_memory_mib);
        return;
    }
    rpc_call *call = call_new(c, r, f->call_id);
    if (call == NULL || table_insert(c, call) != 0) {
        if (call)
            call_unref(call);
        conn_refuse(c, f, 0, LAGOON_RESOURCE_EXHAUSTED, meta.request_id, "out of memory");
        return;
    }
    call->caller = who;
    call->bytes_in = f->length + 4;
    call->client_closed = !client_open;
    memcpy(call->request_id, meta.request_id, sizeof(call->request_id));
    memcpy(call->idempotency_key, meta.idempotency_key, sizeof(call->idempotency_key));
    c->last_call_id = f->call_id;
    atomic_fetch_add(&s->active_calls, 1);
    c->live_calls++;

    if (meta.timeout_ms) {
        uint32_t ms = meta.timeout_ms < s->cfg.max_timeout_ms ? meta.timeout_ms : s->cfg.max_timeout_ms;
        call->deadline = evtimer_new(c->loop->base, call_deadline_cb, call);
        if (call->deadline) {
            struct timeval tv = ms_tv(ms);
            evtimer_add(call->deadline, &tv);
        }
    }
    const wire_method *m = r->method;
    if (wire_decode(m->request, f->payload, f->payload_len, call->req, &v) != 0) {
        call_ref(call); /* the reply may close the connection, dropping the table's reference */
        call_reply_bad_input(call, &v);
        call_unref(call);
        return;
    }
    if (m->request->nrules) {
        call_ref(call);
        int answered = call_reply_if_rules_broken(call);
        call_unref(call);
        if (answered)
            return;
    }
    call_ref(call); /* keep it across the handler even if the connection dies inside */
    call_invoke(call, call->req);
    /* A streaming-input call that the client ended in this same frame gets its end now. */
    if (streaming_in && !client_open && !atomic_load(&call->done))
        call_invoke(call, NULL);
    call_unref(call);
}

static void on_message(rpc_conn *c, const wire_frame *f)
{
    rpc_call *call = table_find(c, f->call_id);
    if (call == NULL) {
        conn_violation(c, "MESSAGE on a call that is not open");
        return;
    }
    if (call->client_closed) {
        conn_violation(c, "MESSAGE after END_STREAM on the same call");
        return;
    }
    int end = (f->flags & WIRE_FLAG_END_STREAM) != 0;
    int has_msg = !(f->flags & WIRE_FLAG_NO_MESSAGE);
    if (end)
        call->client_closed = 1;
    if (atomic_load(&call->done)) {
        /* Answered already (or refused): swallow what the client had in flight. */
        call->last_msg_ms = now_us() / 1000; /* the id stays taken while the client sends */
        if (end)
            table_remove(c, call);
        return;
    }
    call->bytes_in += f->length + 4;
    call->last_msg_ms = now_us() / 1000;
    const wire_method *m = call->route->method;
    call_ref(call);
    if (has_msg) {
        wire_violation v;
        if (m->request->has_pointers) /* the previous message's allocations */
            pb_release(m->request->desc, call->req);
        if (wire_decode(m->request, f->payload, f->payload_len, call->req, &v) != 0) {
            call_reply_bad_input(call, &v);
            call_tell_holder(call); /* a handler that kept it must learn the call is over */
            call_unref(call);
            return;
        }
        if (m->request->nrules && call_reply_if_rules_broken(call)) {
            call_tell_holder(call);
            call_unref(call);
            return;
        }
        call_invoke(call, call->req);
    }
    if (end && !atomic_load(&call->done))
        call_invoke(call, NULL);
    call_unref(call);
}

static void on_cancel(rpc_conn *c, const wire_frame *f)
{
    rpc_call *call = table_find(c, f->call_id);
    if (call == NULL)
        return; /* raced with our RESPONSE: nothing to do */
    call->client_closed = 1;
    if (atomic_load(&call->done)) {
        table_remove(c, call);
        return;
    }
    call_abandon(call, LAGOON_CANCELLED, 0, NULL);
}

/* The keepalive policy (min_ping_interval_ms): a PING sooner than the interval after the
 * previous one is a strike, one on time clears them; past RPC_PING_STRIKES_MAX in a row the
 * client is told why in a GOAWAY and closed. 1 if the connection is being closed. */
static int ping_too_soon(rpc_conn *c)
{
    uint32_t min = c->loop->server->cfg.min_ping_interval_ms;
    if (min == 0)
        return 0;
    uint64_t now = now_us() / 1000;
    if (c->last_ping_ms != 0 && now - c->last_ping_ms < min)
        c->ping_strikes++;
    else
        c->ping_strikes = 0;
    c->last_ping_ms = now;
    if (c->ping_strikes <= RPC_PING_STRIKES_MAX)
        return 0;
    char msg[128];
    snprintf(msg, sizeof(msg), "too_many_pings: PING at most every %u ms (Settings.min_ping_interval_ms)", min);
    log_limited(&violation_log, LOG_INFO, "peer=%s closed: %s", c->peer, msg);
    rpc_stat_add(&c->loop->stats->goaway_pings, 1);
    conn_send_goaway(c, msg);
    conn_close_after_flush(c);
    return 1;
}

static void on_frame(rpc_conn *c, const wire_frame *f)
{
    switch (f->type) {
    case WIRE_REQUEST:
        on_request(c, f);
        break;
    case WIRE_MESSAGE:
        on_message(c, f);
        break;
    case WIRE_CANCEL:
        on_cancel(c, f);
        break;
    case WIRE_PING: {
        if (ping_too_soon(c))
            break;
        uint8_t pong[WIRE_HEADER_SIZE + WIRE_PING_PAYLOAD];
        wire_header_encode(pong, WIRE_PONG, 0, 0, 0, 0, WIRE_PING_PAYLOAD);
        memcpy(pong + WIRE_HEADER_SIZE, f->payload, WIRE_PING_PAYLOAD);
        conn_write_bytes(c, pong, sizeof(pong));
        break;
    }
    case WIRE_PONG:
    case WIRE_SETTINGS: /* reserved for client settings; nothing to apply yet */
    case WIRE_GOAWAY:   /* the client is leaving; it closes when it is done */
        break;
    case WIRE_RESPONSE:
    default:
        conn_violation(c, "RESPONSE frames are sent by the server only");
        break;
    }
}

/* ---- connections --------------------------------------------------------------------------- */

static void conn_violation(rpc_conn *c, const char *why)
{
    if (c->state != CONN_OPEN && c->state != CONN_PREFACE)
        return;
    log_limited(&violation_log, LOG_WARN, "peer=%s protocol violation: %s", c->peer, why);
    char msg[300];
    snprintf(msg, sizeof(msg), "protocol violation: %s", why);
    conn_send_goaway(c, msg);
    conn_close_after_flush(c);
}

static void conn_timer_arm(rpc_conn *c, uint32_t ms)
{
    struct timeval tv = ms_tv(ms);
    evtimer_add(c->timer, &tv);
}

static void conn_send_settings(rpc_conn *c)
{
    const rpc_config *cfg = &c->loop->server->cfg;
    lagoon_v1_Settings st = lagoon_v1_Settings_init_zero;
    st.protocol_version = WIRE_PROTOCOL_VERSION;
    st.max_frame_size = cfg->max_frame_size;
    st.max_concurrent_calls = cfg->max_concurrent_calls;
    st.idle_timeout_ms = cfg->idle_timeout_ms;
    st.max_metadata_size = cfg->max_metadata_size;
    st.max_connection_memory = cfg->max_connection_memory;
    st.frame_timeout_ms = cfg->frame_timeout_ms;
    st.stream_idle_timeout_ms = cfg->stream_idle_timeout_ms;
    st.min_ping_interval_ms = cfg->min_ping_interval_ms;   /* 0 (none) is not encoded */
    st.max_connection_age_ms = cfg->max_connection_age_ms; /* likewise */
    if (cfg->schema_hash != NULL) {
        st.schema_hash.size = sizeof(st.schema_hash.bytes);
        memcpy(st.schema_hash.bytes, cfg->schema_hash, sizeof(st.schema_hash.bytes));
    }
    conn_write_frame(c, WIRE_SETTINGS, 0, 0, 0, NULL, 0, &lagoon_v1_Settings_info, &st);
}

static const char not_lagoon[] =
    "This port speaks Lagoon RPC: send the preface LGN1, then frames (see docs/PROTOCOL.md).\n";

/* Consumes the preface. Returns 1 when the connection is open, 0 to wait, -1 if closed. */
static int conn_preface(rpc_conn *c, struct evbuffer *in)
{
    uint8_t got[WIRE_PREFACE_LEN];
    size_t n = evbuffer_get_length(in);
    if (n > WIRE_PREFACE_LEN)
        n = WIRE_PREFACE_LEN;
    evbuffer_copyout(in, got, n);
    /* Judge every byte as it arrives: an HTTP client is turned away at its first byte. */
    if (memcmp(got, WIRE_PREFACE, n) != 0) {
        log_limited(&close_log, LOG_INFO, "peer=%s closed: not a Lagoon client (bad preface)", c->peer);
        conn_write_bytes(c, (const uint8_t *)not_lagoon, sizeof(not_lagoon) - 1);
        conn_close_after_flush(c);
        return -1;
    }
    if (n < WIRE_PREFACE_LEN)
        return 0;
    evbuffer_drain(in, WIRE_PREFACE_LEN);
    c->state = CONN_OPEN;
    conn_send_settings(c);
    if (c->loop->draining) {
        conn_send_goaway(c, "server is shutting down");
        conn_close_after_flush(c);
        return -1;
    }
    conn_timer_arm(c, c->loop->server->cfg.idle_timeout_ms);
    return 1;
}

/* Wipes a handled call frame's bytes in the input buffer before they are drained (and the
 * buffer reused or freed): the metadata always (it carries the access token), the message if
 * its method marks it secret. */
static void frame_wipe(rpc_conn *c, const wire_frame *f)
{
    if (f->type != WIRE_REQUEST && f->type != WIRE_MESSAGE)
        return;
    if (f->meta_len)
        explicit_bzero((uint8_t *)(uintptr_t)f->meta, f->meta_len);
    const rpc_route *r = NULL;
    if (f->type == WIRE_REQUEST) {
        r = route_find(c->loop->server, f->code);
    } else {
        rpc_call *call = table_find(c, f->call_id);
        r = call ? call->route : NULL;
    }
    if (r != NULL && (r->method->secrets & WIRE_SECRET_REQUEST) && f->payload_len)
        explicit_bzero((uint8_t *)(uintptr_t)f->payload, f->payload_len);
}

/* libevent's OpenSSL bufferevent hands over one or two TLS records per wakeup, and a client
 * with many calls in flight sends a record per frame: the loop would turn, and flush its
 * replies, once per frame (a fifteenth of plain TCP's echo rate, measured). So the read
 * callback takes the records the socket already holds too, up to TLS_READ_BURST_MAX bytes,
 * and the frames that arrived together are answered together. OpenSSL reads no further than
 * the record it returns (no read-ahead), so whatever is left stays in the socket and wakes
 * the loop again. 0, or -1 if the connection was closed (a TLS error, which libevent would
 * not see again once its bytes are consumed). */
static int conn_tls_pull(rpc_conn *c, struct evbuffer *in)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    for (size_t got = 0; ssl != NULL && got < TLS_READ_BURST_MAX;) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(in, TLS_READ_CHUNK, &v, 1) < 1)
            return 0;
        ERR_clear_error();
        int n = SSL_read(ssl, v.iov_base, (int)(v.iov_len < TLS_READ_CHUNK ? v.iov_len : TLS_READ_CHUNK));
        if (n <= 0) {
            int e = SSL_get_error(ssl, n);
            /* Drained (libevent resumes on the next wakeup), or the peer's close_notify: the
             * calls read before it are still answered (TLS allows a half-close), and its
             * socket's end, or the idle timeout, closes the connection as without TLS. */
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_ZERO_RETURN)
                return 0;
            char why[200];
            rpc_tls_error_string(ERR_peek_error(), why, sizeof(why));
            ERR_clear_error();
            log_limited(&tls_log, LOG_INFO, "peer=%s closed: TLS error: %s", c->peer, why);
            conn_close(c);
            return -1;
        }
        v.iov_len = (size_t)n;
        evbuffer_commit_space(in, &v, 1);
        got += (size_t)n;
    }
    return 0;
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    rpc_conn *c = arg;
    rpc_server *s = c->loop->server;
    struct evbuffer *in = bufferevent_get_input(bev);
    uint64_t now = now_us() / 1000;
    if (c->tls && conn_tls_pull(c, in) != 0)
        return;
    if (c->state == CONN_PREFACE) {
        if (conn_preface(c, in) <= 0)
            return;
        c->last_frame_ms = now;
    }
    const wire_limits lim = {s->cfg.max_frame_size, s->cfg.max_metadata_size};
    while (c->state == CONN_OPEN) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        uint8_t hdr[WIRE_HEADER_SIZE];
        size_t hn = avail < WIRE_HEADER_SIZE ? avail : WIRE_HEADER_SIZE;
        evbuffer_copyout(in, hdr, hn);
        wire_frame f;
        const char *why = NULL;
        long r = wire_frame_parse(hdr, hn, &lim, &f, &why);
        if (r == WIRE_TOO_LARGE || r == WIRE_INVALID) {
            conn_violation(c, why);
            break;
        }
        if (r == WIRE_PARTIAL) {
            if (hn == WIRE_HEADER_SIZE && avail < (size_t)f.length + 4 &&
                (size_t)f.length + 4 + atomic_load(&c->calls_mem) +
                        evbuffer_get_length(bufferevent_get_output(c->bev)) >
                    s->cfg.max_connection_memory) {
                char why_mem[160];
                snprintf(why_mem, sizeof(why_mem),
                         "a frame of %u bytes does not fit the connection memory budget (%u bytes)",
                         f.length + 4, s->cfg.max_connection_memory);
                conn_violation(c, why_mem);
                break;
            }
            if (hn < WIRE_HEADER_SIZE || avail < (size_t)f.length + 4)
                break; /* wait; the length was already checked against the limit */
            size_t need = (size_t)f.length + 4;
            const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)need);
            if (p == NULL) {
                conn_close(c);
                break;
            }
            r = wire_frame_parse(p, need, &lim, &f, &why);
            if (r < 0) {
                conn_violation(c, why ? why : "malformed frame");
                break;
            }
        } else {
            f.meta = f.payload = hdr + WIRE_HEADER_SIZE; /* header-only frame */
        }
        /* The frame's bytes stay valid until drained: drain after handling it. */
        c->last_frame_ms = now;
        c->partial_since_ms = 0;
        on_frame(c, &f);
        if (c->state == CONN_DEAD)
            return;
        frame_wipe(c, &f);
        evbuffer_drain(in, (size_t)r);
        rpc_stat_add(&c->loop->stats->bytes_in, (uint64_t)r);
    }
    /* What is left is the start of a frame: it has frame_timeout_ms from its first byte. */
    if (evbuffer_get_length(in) == 0)
        c->partial_since_ms = 0;
    else if (c->partial_since_ms == 0)
        c->partial_since_ms = now;
}

/* Writes what the connection has queued, straight to the socket; what the kernel does not
 * take is left to libevent (EV_WRITE on) until it has drained. */
static void conn_flush(rpc_conn *c)
{
    if (c->state == CONN_DEAD || c->writing)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->tls) {
        /* Bytes must go through OpenSSL: the bufferevent writes them while EV_WRITE is on, and
         * conn_write_cb turns it off again once the output is out. */
        if (evbuffer_get_length(out) > 0) {
            c->writing = 1;
            bufferevent_enable(c->bev, EV_WRITE);
        } else if (c->state == CONN_CLOSING) {
            conn_close(c);
        }
        return;
    }
    if (evbuffer_get_length(out) > 0) {
        /* A bufferevent keeps the front of its output frozen so that only it drains it; its
         * own writer unfreezes it around each write, and so does this one. */
        evbuffer_unfreeze(out, 1);
        int n = evbuffer_write(out, bufferevent_getfd(c->bev));
        evbuffer_freeze(out, 1);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            log_msg(LOG_DEBUG, "peer=%s write failed: %s", c->peer, strerror(errno));
            conn_close(c);
            return;
        }
    }
    if (evbuffer_get_length(out) > 0) {
        c->writing = 1;
        bufferevent_enable(c->bev, EV_WRITE);
    } else if (c->state == CONN_CLOSING) {
        conn_close(c);
    }
}

static void loop_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_loop *l = arg;
    while (l->dirty) {
        rpc_conn *c = l->dirty;
        l->dirty = c->dirty_next;
        c->dirty = 0;
        conn_flush(c);
        conn_unref(c);
    }
}

/* libevent drained the output (EV_WRITE was on): back to flushing ourselves. */
static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    rpc_conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    c->writing = 0;
    bufferevent_disable(bev, EV_WRITE);
    if (c->state == CONN_CLOSING)
        conn_close(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    rpc_conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        unsigned long e = c->tls ? bufferevent_get_openssl_error(bev) : 0;
        if (e != 0) {
            char why[200];
            rpc_tls_error_string(e, why, sizeof(why));
            log_limited(&tls_log, LOG_INFO, "peer=%s closed: TLS %s: %s", c->peer,
                        c->state == CONN_PREFACE ? "handshake failed" : "error", why);
        } else {
            log_msg(LOG_DEBUG, "peer=%s disconnected", c->peer);
        }
        conn_close(c);
    }
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_conn *c = arg;
    const rpc_config *cfg = &c->loop->server->cfg;
    switch (c->state) {
    case CONN_PREFACE:
        log_limited(&close_log, LOG_INFO, "peer=%s closed: no preface within %u ms", c->peer, cfg->handshake_timeout_ms);
        conn_close(c);
        break;
    case CONN_OPEN: {
        /* Only whole frames are activity, and only calls still running keep a connection:
         * tombstones of answered calls and a trickle of bytes do not. */
        uint64_t idle = now_us() / 1000 - c->last_frame_ms;
        if (c->live_calls > 0 || idle < cfg->idle_timeout_ms) {
            conn_timer_arm(c, c->live_calls > 0 ? cfg->idle_timeout_ms : cfg->idle_timeout_ms - (uint32_t)idle);
            break;
        }
        log_limited(&close_log, LOG_INFO, "peer=%s closed: idle for %u ms", c->peer, cfg->idle_timeout_ms);
        conn_send_goaway(c, "idle timeout");
        conn_close_after_flush(c);
        break;
    }
    case CONN_CLOSING:
        conn_close(c);
        break;
    default:
        break;
    }
}

static void conn_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_conn *c = arg;
    rpc_loop *l = c->loop;
    event_free(c->reaper);
    free(c->buckets);
    c->buckets = NULL;
    conn_unref(c); /* calls still held elsewhere keep the struct, never its resources */
    loop_maybe_exit(l);
}

/* Stops reading, lets the output drain (bounded by CLOSE_FLUSH_TIMEOUT_MS), then closes. */
static void conn_close_after_flush(rpc_conn *c)
{
    if (c->state == CONN_CLOSING || c->state == CONN_DEAD)
        return;
    c->state = CONN_CLOSING;
    bufferevent_disable(c->bev, EV_READ);
    conn_timer_arm(c, CLOSE_FLUSH_TIMEOUT_MS);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_close(c);
    else
        conn_mark_dirty(c); /* the flush closes it once the output is out */
}

/* Closes now: every open call is abandoned, the socket closed; the struct is freed from a
 * fresh callback so that callers up the stack may still look at c->state. */
static void conn_close(rpc_conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    c->state = CONN_DEAD;
    rpc_loop *l = c->loop;
    l->freed_since_trim += conn_memory(c);
    if (c->buckets) {
        for (int b = 0; b < CALL_BUCKETS; b++) {
            rpc_call *call;
            while ((call = c->buckets[b]) != NULL) {
                /* Detach first, so that nothing the abandon triggers can touch the table. */
                c->buckets[b] = call->hnext;
                call->in_table = 0;
                c->ncalls--;
                call->client_closed = 1;
                call_abandon(call, LAGOON_CANCELLED, 0, NULL); /* no-op if already answered */
                /* The table's reference. The analyzer reports a use after free here because it
                 * does not count references: call_abandon takes one of its own before anything
                 * that could drop one and gives back only that, so this one is still held (ASan
                 * runs of connections closed with calls open, held and answered agree). */
                call_unref(call); /* NOLINT(clang-analyzer-unix.Malloc) */
            }
        }
    }
    if (c->peek != NULL) {
        event_free(c->peek);
        c->peek = NULL;
    }
    if (c->bev != NULL) {
        /* Output never written leaves the server's count here; freeing it runs no callback. */
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (c->out_cb != NULL)
            evbuffer_remove_cb_entry(out, c->out_cb);
        atomic_fetch_sub(&l->server->held, evbuffer_get_length(out));
        if (c->tls) {
            /* close_notify, best effort (the socket is non-blocking), so that the client can
             * tell our close from a cut connection; the bufferevent does not send it. */
            SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
            if (ssl != NULL && SSL_is_init_finished(ssl))
                (void)SSL_shutdown(ssl);
        }
        bufferevent_free(c->bev);
        c->bev = NULL;
    } else if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    event_free(c->timer);
    c->timer = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    l->nconns--;
    server_conn_gone(l->server, c->host);
    c->reaper = event_new(l->base, -1, 0, conn_reap_cb, c);
    event_active(c->reaper, EV_TIMEOUT, 0);
}

/* Keeps conn->out_len current for other threads (rpc_call_backlog). */
static void conn_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    rpc_conn *c = arg;
    atomic_store(&c->out_len, evbuffer_get_length(buf));
    rpc_server *s = c->loop->server;
    if (info->n_added)
        atomic_fetch_add(&s->held, info->n_added);
    if (info->n_deleted) {
        atomic_fetch_sub(&s->held, info->n_deleted);
        rpc_stat_add(&c->loop->stats->bytes_out, info->n_deleted);
    }
}

/* Gives c its bufferevent's callbacks and starts reading: the preface comes next. */
static void conn_start(rpc_conn *c)
{
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    c->out_cb = evbuffer_add_cb(bufferevent_get_output(c->bev), conn_output_cb, c);
    bufferevent_enable(c->bev, EV_READ); /* EV_WRITE only while the kernel is full: conn_flush */
}

static void send_raw_goaway(int fd, const char *message);

static const char not_tls[] =
    "This port speaks Lagoon RPC over TLS (ALPN lagoon/1): connect with TLS (see docs/PROTOCOL.md).\n";

/* A client on the TLS port whose first byte is not a TLS handshake record: a Lagoon client
 * without TLS (its preface starts with 'L') hears why in a GOAWAY it can read, anything else
 * a line of text; then the connection closes. What it sent is read first, so that the close
 * is a FIN the client sees after our words, not a reset that may discard them. */
static void conn_refuse_plain(rpc_conn *c, uint8_t first)
{
    uint8_t discard[PLAIN_DISCARD_MAX];
    ssize_t r = recv(c->fd, discard, sizeof(discard), MSG_DONTWAIT);
    (void)r;
    log_limited(&tls_log, LOG_INFO, "peer=%s closed: not a TLS client on the TLS port", c->peer);
    if (first == (uint8_t)WIRE_PREFACE[0]) {
        send_raw_goaway(c->fd, "this port requires TLS (ALPN lagoon/1)");
    } else {
        ssize_t w = send(c->fd, not_tls, sizeof(not_tls) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    shutdown(c->fd, SHUT_WR);
    conn_close(c);
}

/* TLS port: the first byte of a new connection has arrived (or the peer closed). A TLS
 * ClientHello starts the handshake, inside the handshake timeout already running; anything
 * else is refused at once rather than left waiting for a handshake that never comes. */
static void conn_peek_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    rpc_conn *c = arg;
    uint8_t first = 0;
    ssize_t n = recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        event_add(c->peek, NULL);
        return;
    }
    if (n <= 0) {
        log_msg(LOG_DEBUG, "peer=%s disconnected before the TLS handshake", c->peer);
        conn_close(c);
        return;
    }
    if (first != RPC_TLS_RECORD_HANDSHAKE) {
        conn_refuse_plain(c, first);
        return;
    }
    event_free(c->peek);
    c->peek = NULL;
    rpc_loop *l = c->loop;
    SSL *ssl = rpc_tls_ssl_new(l->server->tls);
    if (ssl != NULL)
        c->bev = bufferevent_openssl_socket_new(l->base, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        /* No SSL_free here: with BEV_OPT_CLOSE_ON_FREE, libevent (2.1.9 and later) frees the
         * SSL itself when it fails to make the bufferevent; the socket stays ours to close. */
        log_limited(&tls_log, LOG_WARN, "peer=%s closed: out of memory for TLS", c->peer);
        conn_close(c);
        return;
    }
    c->tls = 1;
    /* A client that just goes away is an EOF, not an error, with or without close_notify:
     * Lagoon's frames say where a message ends, so a truncation cannot pass for one. */
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    conn_start(c);
}

static void conn_accept_fd(rpc_loop *l, int fd, const char *peer, const char *host)
{
    rpc_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        server_conn_gone(l->server, host);
        return;
    }
    c->loop = l;
    c->fd = fd;
    atomic_init(&c->refs, 1);
    c->state = CONN_PREFACE;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    snprintf(c->host, sizeof(c->host), "%s", host);
    if (l->server->tls != NULL)
        c->peek = event_new(l->base, fd, EV_READ, conn_peek_cb, c);
    else
        c->bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(l->base, conn_timer_cb, c);
    if ((c->bev == NULL && c->peek == NULL) || c->timer == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->peek)
            event_free(c->peek);
        if (c->timer)
            event_free(c->timer);
        free(c);
        server_conn_gone(l->server, host);
        return;
    }
    c->next = l->conns;
    if (l->conns)
        l->conns->prev = c;
    l->conns = c;
    l->nconns++;
    if (c->peek != NULL)
        event_add(c->peek, NULL);
    else
        conn_start(c);
    /* On the TLS port this covers the handshake too: a client gets one budget for both. */
    conn_timer_arm(c, l->server->cfg.handshake_timeout_ms);
    rpc_stat_add(&l->stats->conns_accepted, 1);
    uint32_t age = l->server->cfg.max_connection_age_ms;
    if (age) {
        /* Jitter, so that connections made together (after a deploy) do not all leave together. */
        l->rng ^= l->rng << 13;
        l->rng ^= l->rng >> 7;
        l->rng ^= l->rng << 17;
        uint64_t span = (uint64_t)age * CONN_AGE_JITTER_PCT / 100;
        uint64_t jittered = (uint64_t)age - span + (span ? l->rng % (2 * span + 1) : 0);
        c->age_deadline_ms = now_us() / 1000 + (jittered ? jittered : 1);
    }
}

/* ---- loops ---------------------------------------------------------------------------------- */

static void loop_maybe_exit(rpc_loop *l)
{
    if (l->draining && l->nconns == 0)
        event_base_loopexit(l->base, NULL);
}

/* Ends every call of c still open with UNAVAILABLE and message (one reply per call). */
static void conn_end_open_calls(rpc_conn *c, const char *message)
{
    for (int b = 0; c->buckets && b < CALL_BUCKETS && c->state != CONN_DEAD; b++) {
        rpc_call *call = c->buckets[b];
        while (call && c->state != CONN_DEAD) {
            if (atomic_load(&call->done)) {
                call = call->hnext;
                continue;
            }
            call_abandon(call, LAGOON_UNAVAILABLE, 1, message);
            call = c->buckets ? c->buckets[b] : NULL; /* the chain may have changed: again */
        }
    }
}

static void loop_drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_loop *l = arg;
    if (l->nconns)
        log_msg(LOG_WARN, "drain timeout: closing %u connection(s) with calls still open", l->nconns);
    while (l->conns) {
        rpc_conn *c = l->conns;
        /* Every call still open hears why it ends (one reply per call, even now), in one
         * last best-effort write before the close. */
        conn_end_open_calls(c, "the server shut down before the call finished");
        if (c->state != CONN_DEAD) {
            /* Not through TLS: OpenSSL may hold a record half written, and writing around the
             * bufferevent would corrupt the stream; its close_notify still goes out. */
            if (c->bev != NULL && !c->tls) {
                struct evbuffer *out = bufferevent_get_output(c->bev);
                evbuffer_unfreeze(out, 1);
                int n = evbuffer_write(out, bufferevent_getfd(c->bev));
                (void)n;
                evbuffer_freeze(out, 1);
            }
            conn_close(c);
        }
    }
    loop_maybe_exit(l);
}

static void loop_drain_start(rpc_loop *l)
{
    if (l->draining)
        return;
    l->draining = 1;
    for (rpc_conn *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == CONN_OPEN) {
            conn_send_goaway(c, "server is shutting down");
            if (c->ncalls == 0)
                conn_close_after_flush(c);
        } else if (c->state == CONN_PREFACE) {
            conn_close(c);
        }
    }
    struct timeval tv = ms_tv(l->server->cfg.drain_timeout_ms);
    evtimer_add(l->drain_timer, &tv);
}

/* Hands glibc's free heap pages back to the kernel. Not under a sanitizer: its allocator
 * replaces glibc's, and glibc's malloc_trim there only confuses glibc's per-thread arena
 * accounting (an abort at thread exit: "a->attached_threads > 0"). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define LAGOON_SANITIZED_HEAP 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LAGOON_SANITIZED_HEAP 1
#endif
static void heap_trim(void)
{
#ifndef LAGOON_SANITIZED_HEAP
    malloc_trim(0);
#endif
}

/* Ends a client stream that has sent nothing for stream_idle_timeout_ms. Its id stays taken by
 * a small tombstone until the client ends it, and the call's own memory goes now (or when its
 * handler lets go). */
static void call_stream_timeout(rpc_conn *c, rpc_call *call, uint32_t ms)
{
    uint32_t id = call->id;
    char msg[160];
    snprintf(msg, sizeof(msg), "no message from the client for %u ms (stream-idle-timeout-ms)", ms);
    call_ref(call);
    call_abandon(call, LAGOON_DEADLINE_EXCEEDED, 1, msg);
    if (c->state == CONN_OPEN && call->in_table && atomic_load(&call->done)) {
        table_remove(c, call);
        rpc_call *t = call_new(c, NULL, id);
        if (t == NULL || table_insert(c, t) != 0) {
            if (t)
                call_unref(t);
            conn_violation(c, "out of memory");
        } else {
            atomic_store(&t->done, 1);
        }
    }
    call_unref(call);
}

/* Runs each SWEEP_INTERVAL_MS: frames that do not complete, client streams that make no
 * progress, and the heap left behind by closed connections. */
/* max_connection_age_ms has passed for c: GOAWAY first, then, once the grace is over, the
 * calls still open end with UNAVAILABLE and the connection closes (it closes by itself as
 * soon as its last call ends: table_remove). 1 if c is closing. */
static int conn_age_out(rpc_conn *c, uint64_t now)
{
    const rpc_config *cfg = &c->loop->server->cfg;
    if (c->age_goaway_ms == 0) {
        c->age_goaway_ms = now;
        rpc_stat_add(&c->loop->stats->goaway_age, 1);
        conn_send_goaway(c, "max_connection_age: reconnect (max-connection-age-ms)");
        if (c->ncalls == 0)
            conn_close_after_flush(c);
    } else if (now - c->age_goaway_ms >= cfg->max_connection_age_grace_ms) {
        conn_end_open_calls(c, "the connection reached its maximum age before the call finished: retry on a new connection");
        conn_close_after_flush(c);
    }
    return c->state != CONN_OPEN;
}

static void loop_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_loop *l = arg;
    const rpc_config *cfg = &l->server->cfg;
    uint64_t now = now_us() / 1000;
    for (rpc_conn *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->state != CONN_OPEN)
            continue;
        if (c->age_deadline_ms && now >= c->age_deadline_ms && !l->draining && conn_age_out(c, now))
            continue;
        if (c->partial_since_ms && now - c->partial_since_ms >= cfg->frame_timeout_ms) {
            log_limited(&timeout_log, LOG_INFO, "peer=%s closed: a frame incomplete for %u ms", c->peer,
                        cfg->frame_timeout_ms);
            char msg[96];
            snprintf(msg, sizeof(msg), "a frame did not arrive whole within %u ms (frame-timeout-ms)",
                     cfg->frame_timeout_ms);
            conn_send_goaway(c, msg);
            conn_close_after_flush(c);
            continue;
        }
        if (c->buckets == NULL || c->ncalls == 0)
            continue;
        for (int b = 0; b < CALL_BUCKETS && c->state == CONN_OPEN; b++) {
            for (rpc_call *call = c->buckets[b], *hn; call && c->state == CONN_OPEN; call = hn) {
                hn = call->hnext;
                if (call->client_closed || now - call->last_msg_ms < cfg->stream_idle_timeout_ms)
                    continue;
                if (!atomic_load(&call->done) && call->route)
                    call_stream_timeout(c, call, cfg->stream_idle_timeout_ms);
                else /* answered or refused, and the client has said nothing since: free its id */
                    table_remove(c, call);
                /* If that closed the connection the table is gone: the loop condition stops. */
            }
        }
    }
    if (l->freed_since_trim >= TRIM_AFTER_BYTES && now - l->last_trim_ms >= TRIM_INTERVAL_MS) {
        l->freed_since_trim = 0;
        l->last_trim_ms = now;
        heap_trim();
    }
}

static void *loop_main(void *arg)
{
    rpc_loop *l = arg;
    current_loop = l;
    event_base_loop(l->base, EVLOOP_NO_EXIT_ON_EMPTY);
    current_loop = NULL;
    atomic_fetch_sub(&l->server->loops_running, 1);
    return NULL;
}

/* ---- server --------------------------------------------------------------------------------- */

/* Best effort, without a bufferevent: tells the client why in a GOAWAY, then closes. On the
 * TLS port it only closes: a refusal there would cost a handshake, the very work the limit
 * is there to spare, and plain bytes would only confuse the client's TLS. */
static void refuse_fd(const rpc_server *s, int fd, const char *message)
{
    if (s->tls == NULL)
        send_raw_goaway(fd, message);
    close(fd);
}

/* A GOAWAY with message, straight to the socket (no bufferevent yet), best effort. */
static void send_raw_goaway(int fd, const char *message)
{
    lagoon_v1_ResponseMeta meta = lagoon_v1_ResponseMeta_init_zero;
    snprintf(meta.message, sizeof(meta.message), "%s", message);
    uint8_t buf[WIRE_HEADER_SIZE + 160];
    long n = wire_encode(&lagoon_v1_ResponseMeta_info, &meta, buf + WIRE_HEADER_SIZE, 160, NULL);
    if (n > 0) {
        wire_header_encode(buf, WIRE_GOAWAY, 0, 0, 0, (size_t)n, 0);
        ssize_t w = send(fd, buf, WIRE_HEADER_SIZE + (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
}

static void accept_cb(struct evconnlistener *lst, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)lst;
    (void)salen;
    rpc_server *s = arg;
    s->accept_backoff_ms = 0; /* accepting works again */
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    /* One IPv6 host has a whole /64 to pick addresses from: that is what is counted. */
    char key[INET6_ADDRSTRLEN + 4];
    snprintf(key, sizeof(key), "%s", host);
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            struct in6_addr net = in6->sin6_addr;
            memset(net.s6_addr + 8, 0, 8);
            char nb[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, &net, nb, sizeof(nb));
            snprintf(key, sizeof(key), "%s/64", nb);
        }
    }
    char message[128];
    if (atomic_fetch_add(&s->connections, 1) >= s->cfg.max_connections) {
        atomic_fetch_sub(&s->connections, 1);
        atomic_fetch_add(&s->refused[RPC_REFUSED_MAX_CONNECTIONS], 1);
        snprintf(message, sizeof(message), "too many connections (max %u)", s->cfg.max_connections);
        log_limited(&refused_log, LOG_WARN, "peer=%s:%u refused: max_connections (%u) reached", host, port,
                    s->cfg.max_connections);
        refuse_fd(s, fd, message);
        return;
    }
    if (addr_acquire(s, key) != 0) {
        atomic_fetch_sub(&s->connections, 1);
        atomic_fetch_add(&s->refused[RPC_REFUSED_PER_ADDRESS], 1);
        snprintf(message, sizeof(message), "too many connections from %s (max %u per address)", key,
                 s->cfg.max_connections_per_address);
        log_limited(&refused_log, LOG_WARN, "peer=%s:%u refused: max_connections_per_address (%u) reached", host,
                    port, s->cfg.max_connections_per_address);
        refuse_fd(s, fd, message);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    rpc_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        atomic_fetch_add(&s->refused[RPC_REFUSED_OUT_OF_MEMORY], 1);
        server_conn_gone(s, key);
        close(fd);
        return;
    }
    op->kind = OP_NEW_CONN;
    op->fd = fd;
    snprintf(op->peer, sizeof(op->peer), sa->sa_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
    snprintf(op->host, sizeof(op->host), "%s", key);
    rpc_loop *l = &s->loops[s->next_loop++ % s->nloops];
    loop_post(l, op);
}

/* accept() failed. Out of descriptors or memory, the pending connection stays in the kernel's
 * queue and the listener would be woken for it again at once, for ever: pause accepting,
 * longer while it keeps failing, and say so once a second at most. */
static void accept_error_cb(struct evconnlistener *lst, void *arg)
{
    rpc_server *s = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
        log_limited(&accept_log, LOG_WARN, "accept: %s", strerror(e));
        return;
    }
    s->accept_backoff_ms = s->accept_backoff_ms == 0 ? ACCEPT_BACKOFF_MIN_MS
                           : s->accept_backoff_ms * 2 > ACCEPT_BACKOFF_MAX_MS ? ACCEPT_BACKOFF_MAX_MS
                                                                               : s->accept_backoff_ms * 2;
    log_limited(&accept_log, LOG_ERROR, "accept: %s; not accepting for %u ms (%u connections open)", strerror(e),
                s->accept_backoff_ms, atomic_load(&s->connections));
    evconnlistener_disable(lst);
    struct timeval tv = ms_tv(s->accept_backoff_ms);
    evtimer_add(s->accept_retry, &tv);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_server *s = arg;
    if (s->listener != NULL)
        evconnlistener_enable(s->listener);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_server *s = arg;
    if (atomic_exchange(&s->draining, 1))
        return;
    log_msg(LOG_INFO, "draining: no new connections, open calls get %u ms", s->cfg.drain_timeout_ms);
    /* Close the listening socket, so new connects are refused at once rather than left in
     * the kernel's backlog. */
    if (s->listener) {
        evconnlistener_free(s->listener);
        s->listener = NULL;
    }
    if (s->cfg.on_drain)
        s->cfg.on_drain(s->cfg.app);
    for (unsigned i = 0; i < s->nloops; i++) {
        rpc_op *op = calloc(1, sizeof(*op));
        if (op) {
            op->kind = OP_DRAIN;
            loop_post(&s->loops[i], op);
        }
    }
}

int rpc_server_tls(const rpc_server *s) { return s->tls != NULL; }

int rpc_server_reload_tls(rpc_server *s, rpc_error *err)
{
    if (s->tls == NULL) {
        snprintf(err->message, sizeof(err->message), "TLS is off (no --tls-cert): nothing to reload");
        return RPC_ERR;
    }
    if (rpc_tls_reload(s->tls, s->cfg.tls_cert, s->cfg.tls_key, err) != RPC_OK) {
        log_msg(LOG_ERROR, "TLS reload refused, the current certificate stays: %s", err->message);
        return RPC_ERR;
    }
    log_msg(LOG_INFO, "TLS certificate reloaded from %s (new connections use it)", s->cfg.tls_cert);
    return RPC_OK;
}

static void sighup_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    rpc_server *s = arg;
    log_msg(LOG_INFO, "received SIGHUP");
    rpc_error err;
    if (s->tls == NULL)
        log_msg(LOG_INFO, "SIGHUP: TLS is off, nothing to reload");
    else
        (void)rpc_server_reload_tls(s, &err); /* it logs either way */
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    log_msg(LOG_INFO, "received %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    stop_cb(-1, 0, arg);
}

static void server_watch_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rpc_server *s = arg;
    if (atomic_load(&s->loops_running) == 0)
        event_base_loopexit(s->control, NULL);
}

static int bind_listener(rpc_server *s, rpc_error *err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s->cfg.listen_host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(s->cfg.listen_port);
        len = sizeof(*in4);
    } else if (inet_pton(AF_INET6, s->cfg.listen_host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(s->cfg.listen_port);
        len = sizeof(*in6);
    } else {
        snprintf(err->message, sizeof(err->message), "listen address '%s' is not a numeric IP address",
                 s->cfg.listen_host);
        return RPC_ERR;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err->message, sizeof(err->message), "socket: %s", strerror(errno));
        return RPC_ERR;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        snprintf(err->message, sizeof(err->message), "cannot listen on %s:%u: %s", s->cfg.listen_host,
                 s->cfg.listen_port, strerror(errno));
        close(fd);
        return RPC_ERR;
    }
    getsockname(fd, (struct sockaddr *)&ss, &len);
    s->port = ntohs(ss.ss_family == AF_INET ? in4->sin_port : in6->sin6_port);
    s->listen_fd = fd;
    return RPC_OK;
}

static int limit_ok(unsigned long long v, unsigned long long min, unsigned long long max)
{
    return v >= min && v <= max;
}

/* Each connection is a descriptor: max_connections must leave room under RLIMIT_NOFILE for
 * what else the process opens, or accept() fails with EMFILE while the store or the log need
 * one. The soft limit is raised towards the hard one if that is what it takes. */
static int fit_connections_to_fd_limit(rpc_config *cfg, rpc_error *err)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return RPC_OK; /* nothing known: leave it as configured */
    rlim_t reserve = FD_RESERVE_BASE + (rlim_t)FD_RESERVE_PER_LOOP * cfg->threads;
    rlim_t want = (rlim_t)cfg->max_connections + reserve;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return RPC_OK;
    if (rl.rlim_cur <= reserve) {
        snprintf(err->message, sizeof(err->message),
                 "the file descriptor limit (%llu) leaves no room for connections after a reserve of %llu",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)reserve);
        return RPC_ERR;
    }
    uint32_t fit = (uint32_t)(rl.rlim_cur - reserve);
    log_msg(LOG_WARN, "max-connections lowered from %u to %u: the file descriptor limit is %llu (ulimit -n) and %llu are kept for the store, the log and the loops",
            cfg->max_connections, fit, (unsigned long long)rl.rlim_cur, (unsigned long long)reserve);
    cfg->max_connections = fit;
    return RPC_OK;
}

int rpc_config_check(const rpc_config *cfg, rpc_error *err)
{
#define RPC_LIMIT_CHECK(field, flag, def, min, max, why)                                         \
    if (!limit_ok(cfg->field, (min), (max))) {                                              \
        snprintf(err->message, sizeof(err->message), "%s = %u is outside [%u, %u]", flag,        \
                 cfg->field, (unsigned)(min), (unsigned)(max));                                  \
        return RPC_ERR;                                                                          \
    }
    RPC_LIMITS(RPC_LIMIT_CHECK)
#undef RPC_LIMIT_CHECK
    if (cfg->max_output_buffer <= cfg->max_frame_size) {
        snprintf(err->message, sizeof(err->message), "max-output-buffer must exceed max-frame-size");
        return RPC_ERR;
    }
    if (cfg->max_connection_memory <= cfg->max_frame_size) {
        snprintf(err->message, sizeof(err->message), "max-connection-memory must exceed max-frame-size");
        return RPC_ERR;
    }
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, cfg->listen_host, addr) != 1 && inet_pton(AF_INET6, cfg->listen_host, addr) != 1) {
        snprintf(err->message, sizeof(err->message), "listen address '%s' is not a numeric IP address",
                 cfg->listen_host);
        return RPC_ERR;
    }
    if ((cfg->tls_cert[0] == '\0') != (cfg->tls_key[0] == '\0')) {
        snprintf(err->message, sizeof(err->message), "--tls-cert and --tls-key go together: give both or neither");
        return RPC_ERR;
    }
    if (cfg->tls_cert[0] != '\0' && rpc_tls_check(cfg->tls_cert, cfg->tls_key, err) != RPC_OK)
        return RPC_ERR;
    return RPC_OK;
}

int rpc_server_new(const rpc_config *cfg, const rpc_route *routes, size_t nroutes, rpc_server **out,
                   rpc_error *err)
{
    *out = NULL;
    if (rpc_config_check(cfg, err) != RPC_OK)
        return RPC_ERR;
    for (size_t i = 1; i < nroutes; i++) {
        if (routes[i - 1].method->id >= routes[i].method->id) {
            snprintf(err->message, sizeof(err->message), "routes are not sorted by unique method id");
            return RPC_ERR;
        }
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    /* A peer that resets while we write must not kill the process. */
    signal(SIGPIPE, SIG_IGN);

    rpc_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    s->cfg = *cfg;
    s->routes = routes;
    s->nroutes = nroutes;
    s->listen_fd = -1;
    if (s->cfg.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->cfg.threads = n > 0 ? (unsigned)n : 1;
    }
    if (s->cfg.workers == 0)
        s->cfg.workers = 4;
    if (fit_connections_to_fd_limit(&s->cfg, err) != RPC_OK) {
        free(s);
        return RPC_ERR;
    }
    pthread_mutex_init(&s->addr_mu, NULL);
    if (s->cfg.hash_workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->cfg.hash_workers = n > 1 ? (unsigned)(n - 1) : 1;
    }
    if (s->cfg.tls_cert[0] != '\0' && rpc_tls_new(s->cfg.tls_cert, s->cfg.tls_key, &s->tls, err) != RPC_OK) {
        pthread_mutex_destroy(&s->addr_mu);
        free(s);
        return RPC_ERR;
    }
    if (bind_listener(s, err) != RPC_OK) {
        rpc_tls_free(s->tls);
        pthread_mutex_destroy(&s->addr_mu);
        free(s);
        return RPC_ERR;
    }
    *out = s;
    return RPC_OK;
}

uint16_t rpc_server_port(const rpc_server *s) { return s->port; }
uint32_t rpc_server_connections(const rpc_server *s) { return atomic_load(&((rpc_server *)s)->connections); }
uint32_t rpc_server_active_calls(const rpc_server *s) { return atomic_load(&((rpc_server *)s)->active_calls); }
int rpc_server_draining(const rpc_server *s) { return atomic_load(&((rpc_server *)s)->draining); }
const char *rpc_server_version(const rpc_server *s) { return s->cfg.version ? s->cfg.version : ""; }

uint64_t rpc_server_uptime_ms(const rpc_server *s)
{
    uint64_t started = atomic_load(&((rpc_server *)s)->started_ms);
    return started ? now_us() / 1000 - started : 0; /* not serving yet: 0 */
}

const rpc_route *rpc_server_routes(const rpc_server *s, size_t *count)
{
    *count = s->nroutes;
    return s->routes;
}

void rpc_server_stop(rpc_server *s)
{
    /* Request, then deliver if the loop can take it; run() checks the request after making
     * the loop ready, so one of the two always sees the other (stop_cb is idempotent). */
    atomic_store(&s->stop_requested, 1);
    if (atomic_load(&s->stop_ready))
        event_active(s->stop_event, EV_TIMEOUT, 0);
}

static void server_teardown_loops(rpc_server *s)
{
    for (unsigned i = 0; i < s->nloops; i++) {
        rpc_loop *l = &s->loops[i];
        if (l->base == NULL)
            continue;
        while (l->conns)
            conn_close(l->conns);
        event_base_loop(l->base, EVLOOP_NONBLOCK); /* run the reapers */
    }
}

/* Every loop's per-method arrays, in one allocation per loop. */
static int stats_alloc(rpc_server *s)
{
    size_t slots = s->nroutes + 1;
    size_t per = slots * (RPC_METRICS_NSTATUS + RPC_METRICS_NBUCKETS + 1 + 1);
    for (unsigned i = 0; i < s->cfg.threads; i++) {
        _Atomic uint64_t *p = calloc(per, sizeof(*p));
        if (p == NULL)
            return RPC_ERR;
        s->stats[i].calls = p;
        s->stats[i].latency = p + slots * RPC_METRICS_NSTATUS;
        s->stats[i].latency_sum_us = p + slots * (RPC_METRICS_NSTATUS + RPC_METRICS_NBUCKETS + 1);
    }
    return RPC_OK;
}

static void stats_free(rpc_server *s)
{
    if (s->stats == NULL)
        return;
    for (unsigned i = 0; i < s->cfg.threads; i++)
        free(s->stats[i].calls);
    free(s->stats);
    s->stats = NULL;
}

const rpc_loop_stats *rpc_server_loop_stats(const rpc_server *s, unsigned *n)
{
    *n = atomic_load_explicit(&((rpc_server *)s)->stats_ready, memory_order_acquire);
    return *n ? s->stats : NULL;
}

uint64_t rpc_server_refused(const rpc_server *s, int reason)
{
    return reason >= 0 && reason < RPC_REFUSALS ? atomic_load(&((rpc_server *)s)->refused[reason]) : 0;
}

size_t rpc_server_memory_held(const rpc_server *s)
{
    return atomic_load(&((rpc_server *)s)->held);
}

int rpc_server_run(rpc_server *s, rpc_error *err)
{
    if (s->ran) {
        snprintf(err->message, sizeof(err->message), "rpc_server_run called twice");
        return RPC_ERR;
    }
    s->ran = 1;
    atomic_store(&s->started_ms, now_us() / 1000);
    s->control = event_base_new();
    s->pools[RPC_LANE_WORK] = rpc_pool_new(s->cfg.workers, s->cfg.worker_queue);
    s->pools[RPC_LANE_HASH] = rpc_pool_new(s->cfg.hash_workers, s->cfg.hash_queue);
    s->loops = calloc(s->cfg.threads, sizeof(rpc_loop));
    s->stats = aligned_alloc(RPC_CACHE_LINE, s->cfg.threads * sizeof(rpc_loop_stats)); /* a multiple of it */
    if (s->stats != NULL)
        memset(s->stats, 0, s->cfg.threads * sizeof(rpc_loop_stats));
    if (s->control == NULL || s->pools[RPC_LANE_WORK] == NULL || s->pools[RPC_LANE_HASH] == NULL ||
        s->loops == NULL || s->stats == NULL || stats_alloc(s) != RPC_OK) {
        snprintf(err->message, sizeof(err->message), "out of memory starting the server");
        return RPC_ERR;
    }
    s->nloops = s->cfg.threads;
    for (unsigned i = 0; i < s->nloops; i++) {
        rpc_loop *l = &s->loops[i];
        l->server = s;
        l->index = i;
        l->stats = &s->stats[i];
        l->rng = (now_us() ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull)) | 1; /* xorshift: never 0 */
        pthread_mutex_init(&l->mu, NULL);
        l->base = event_base_new();
        if (l->base == NULL) {
            snprintf(err->message, sizeof(err->message), "event_base_new failed");
            return RPC_ERR;
        }
        l->wake = event_new(l->base, -1, EV_PERSIST, loop_wake_cb, l);
        l->flush = event_new(l->base, -1, 0, loop_flush_cb, l);
        l->drain_timer = evtimer_new(l->base, loop_drain_timeout_cb, l);
        l->sweep = event_new(l->base, -1, EV_PERSIST, loop_sweep_cb, l);
        struct timeval every = ms_tv(SWEEP_INTERVAL_MS);
        event_add(l->sweep, &every);
    }
    s->stop_event = event_new(s->control, -1, 0, stop_cb, s);
    struct event *watch = event_new(s->control, -1, EV_PERSIST, server_watch_cb, s);
    struct timeval tick = ms_tv(50);
    event_add(watch, &tick);
    if (s->cfg.handle_signals) {
        s->sigterm = evsignal_new(s->control, SIGTERM, signal_cb, s);
        s->sigint = evsignal_new(s->control, SIGINT, signal_cb, s);
        event_add(s->sigterm, NULL);
        event_add(s->sigint, NULL);
        /* SIGHUP would end the process by default: a reload signal must never do that. */
        s->sighup = evsignal_new(s->control, SIGHUP, sighup_cb, s);
        event_add(s->sighup, NULL);
    }
    s->listener = evconnlistener_new(s->control, accept_cb, s, LEV_OPT_CLOSE_ON_FREE, 0, s->listen_fd);
    if (s->listener == NULL) {
        snprintf(err->message, sizeof(err->message), "evconnlistener_new failed");
        return RPC_ERR;
    }
    s->listen_fd = -1; /* owned by the listener now */
    evconnlistener_set_error_cb(s->listener, accept_error_cb);
    s->accept_retry = evtimer_new(s->control, accept_retry_cb, s);
    atomic_store_explicit(&s->stats_ready, s->nloops, memory_order_release);
    atomic_store(&s->loops_running, s->nloops);
    for (unsigned i = 0; i < s->nloops; i++)
        pthread_create(&s->loops[i].thread, NULL, loop_main, &s->loops[i]);
    log_msg(LOG_INFO, "listening on %s:%u%s (%u loops, %u workers, %u hash workers)", s->cfg.listen_host, s->port,
            s->tls ? " with TLS" : "", s->nloops, s->cfg.workers, s->cfg.hash_workers);
    atomic_store(&s->stop_ready, 1);
    if (atomic_load(&s->stop_requested)) /* stopped before (or while) it started */
        stop_cb(-1, 0, s);
    event_base_dispatch(s->control);
    for (unsigned i = 0; i < s->nloops; i++)
        pthread_join(s->loops[i].thread, NULL);
    event_free(watch);
    if (s->listener)
        evconnlistener_free(s->listener);
    s->listener = NULL;
    log_msg(LOG_INFO, "stopped");
    return RPC_OK;
}

void rpc_server_join_workers(rpc_server *s)
{
    for (int i = 0; i < RPC_LANES; i++) {
        rpc_pool_free(s->pools[i]);
        s->pools[i] = NULL;
    }
}

void rpc_server_free(rpc_server *s)
{
    if (s == NULL)
        return;
    /* Workers may still finish kept calls: let them, then run what they posted. */
    rpc_server_join_workers(s);
    server_teardown_loops(s);
    for (unsigned i = 0; i < s->nloops; i++) {
        rpc_loop *l = &s->loops[i];
        pthread_mutex_lock(&l->mu);
        rpc_op *op = l->head;
        l->head = l->tail = NULL;
        pthread_mutex_unlock(&l->mu);
        while (op) {
            rpc_op *next = op->next;
            op_run(l, op, 0);
            free(op);
            op = next;
        }
        if (l->wake)
            event_free(l->wake);
        loop_flush_cb(-1, 0, l); /* drops the references of connections still listed */
        if (l->flush)
            event_free(l->flush);
        if (l->drain_timer)
            event_free(l->drain_timer);
        if (l->sweep)
            event_free(l->sweep);
        if (l->base)
            event_base_free(l->base);
        pthread_mutex_destroy(&l->mu);
    }
    free(s->loops);
    stats_free(s);
    if (s->stop_event)
        event_free(s->stop_event);
    if (s->sigterm)
        event_free(s->sigterm);
    if (s->sigint)
        event_free(s->sigint);
    if (s->sighup)
        event_free(s->sighup);
    rpc_tls_free(s->tls);
    if (s->accept_retry)
        event_free(s->accept_retry);
    if (s->control)
        event_base_free(s->control);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    for (int b = 0; b < ADDR_BUCKETS; b++) {
        while (s->addr_buckets[b]) {
            addr_count *a = s->addr_buckets[b];
            s->addr_buckets[b] = a->next;
            free(a);
        }
    }
    pthread_mutex_destroy(&s->addr_mu);
    free(s);
}
