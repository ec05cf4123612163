/* rpc: Lagoon's RPC server — event loops, connections, calls, dispatch.
 *
 * This header is the whole public surface of the server side. The wire format is in wire.h and
 * docs/PROTOCOL.md; the limits are in rpc_limits.h.
 *
 * Threads. rpc_server_run() runs a control thread (accept, signals, shutdown) and `threads` loop
 * threads, each with its own libevent base. A connection lives on one loop for its whole life;
 * every handler invocation for its calls happens on that loop's thread, and must not block it.
 * Blocking work goes to a lane of worker threads with rpc_call_defer() (password hashing has
 * its own), or to another thread of the handler's own (the store's writer, through the
 * application's write framework), which completes the call with rpc_call_finish().
 *
 * Handlers. protoc-gen-lagoon declares one function per method in lagoon_handlers.h:
 *
 *   unary             int handle_S_M(rpc_call *c, const Req *req, Resp *resp);
 *   server-streaming  int handle_S_M(rpc_call *c, const Req *req);
 *   client-streaming  int handle_S_M(rpc_call *c, const Req *req, Resp *resp);
 *   bidi-streaming    int handle_S_M(rpc_call *c, const Req *req);
 *
 * A handler returns a status (LAGOON_OK or an error code from wire.h), which ends the call now,
 * or one of:
 *   RPC_PENDING   the handler keeps the call and ends it later with rpc_call_finish(), exactly
 *                 once, from any thread. Until then req and resp stay valid (req only until the
 *                 next message of a streaming-input call).
 *   RPC_CONTINUE  (streaming-input methods only) waiting for more messages.
 * For client- and bidi-streaming methods the handler is called once per incoming message and
 * once more with req == NULL when the client half-closes; resp is the same zeroed struct on
 * every invocation, so it can accumulate. Returning RPC_PENDING for one message and
 * RPC_CONTINUE later is fine: the call is still finished once.
 * For unary and client-streaming methods resp is encoded only when the status is LAGOON_OK.
 *
 * Every call gets exactly one reply: the RPC layer alone encodes and sends it.
 */
#ifndef LAGOON_RPC_H
#define LAGOON_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "rpc_limits.h"
#include "wire.h"

struct event_base;

/* Longest certificate or key path, terminator included. */
#define RPC_TLS_PATH_MAX 1024

#define RPC_PENDING (-1)
#define RPC_CONTINUE (-2)

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;
typedef struct rpc_route rpc_route;

/* Module status pair; details go in an rpc_error the caller supplies. */
#define RPC_OK 0
#define RPC_ERR (-1)

typedef struct rpc_error {
    char message[256];
} rpc_error;

/* ---- Authorization ------------------------------------------------------------------------ */

/* Who is calling. user_id 0 means anonymous. Roles and levels are the application's: the RPC
 * layer reads only `grants`, and carries the rest to the handlers. */
typedef struct rpc_caller {
    uint64_t user_id;
    uint8_t role;     /* the application's role (lagoon.v1.Role) */
    uint8_t verified; /* email verified */
    uint64_t session_id;
    uint32_t grants;  /* RPC_GRANT(level) for each access level (lagoon.v1.Access) held */
} rpc_caller;

/* The bit of an access level in rpc_caller.grants. */
#define RPC_GRANT(level) (1u << (level))

/* Resolves an access token to a caller. Runs on a loop thread for every call that carries a
 * token, so it must be fast and must not block (a read transaction is fine). Returns 0 and
 * fills *out — grants included: which access levels above ACCESS_USER this caller holds (any
 * caller it accepts holds ACCESS_USER) — or -1 if the token is unknown, expired or revoked. */
typedef int (*rpc_authenticate_fn)(void *arg, const char *token, rpc_caller *out);

/* ---- Configuration -------------------------------------------------------------------------- */

typedef struct rpc_config {
    char listen_host[64];   /* numeric IPv4 or IPv6 address */
    uint16_t listen_port;   /* 0 = an ephemeral port (see rpc_server_port) */
    unsigned threads;       /* loop threads; 0 = number of cores */
    unsigned workers;       /* RPC_LANE_WORK threads; 0 = 4 */
    unsigned hash_workers;  /* RPC_LANE_HASH threads; 0 = cores - 1 (at least 1), so that
                             * hashing never takes the core the loops need */
    int handle_signals;     /* SIGTERM/SIGINT start a graceful drain; SIGHUP reloads the TLS
                             * pair (rpc_server_reload_tls); SIGPIPE ignored */
#define RPC_LIMIT_FIELD(field, flag, def, min, max, why) uint32_t field;
    RPC_LIMITS(RPC_LIMIT_FIELD)
#undef RPC_LIMIT_FIELD
    rpc_authenticate_fn authenticate; /* NULL: every token is rejected */
    void *authenticate_arg;
    /* Why a signed-in caller without a level's grant is refused (PERMISSION_DENIED), by
     * lagoon.v1.Access level; NULL or a NULL entry: "this method needs an access level the
     * caller does not have". */
    const char *const *access_denied;
    unsigned naccess_denied;
    const char *version;    /* reported by Health/Check */
    /* Sent as Settings.schema_hash (32 bytes: lagoon_schema_hash, SHA-256 of the IDL the
     * routes come from) so that clients can tell they were built from another IDL; NULL: not
     * sent. */
    const uint8_t *schema_hash;
    void *app;              /* handlers' shared state (store, settings): rpc_call_app() */
    /* Called (control thread) when a drain starts, so that long-lived streams can be ended
     * instead of holding the drain open until its timeout. NULL: none. */
    void (*on_drain)(void *app);
    /* TLS on the client port (rpc/tls.h has the policy): the PEM certificate chain and its
     * private key, both set or both empty. Empty: plain TCP. With TLS on, the port speaks
     * only TLS (there is no plain listener beside it); the handshake and the preface
     * together must complete within handshake_timeout_ms. The files are read again by
     * rpc_server_reload_tls (SIGHUP when handle_signals). */
    char tls_cert[RPC_TLS_PATH_MAX];
    char tls_key[RPC_TLS_PATH_MAX];
} rpc_config;

/* Fills every field with its default (127.0.0.1:7420, limits from rpc_limits.h). */
void rpc_config_defaults(rpc_config *cfg);

/* Checks cfg as rpc_server_new would, without binding anything: every limit in its range, the
 * limits that must exceed max_frame_size, a numeric listen address. RPC_OK, or RPC_ERR with err
 * filled (lagoond --check-config). */
int rpc_config_check(const rpc_config *cfg, rpc_error *err);

/* ---- Server lifecycle ----------------------------------------------------------------------- */

/* Creates the server and binds its listening socket (so rpc_server_port is known at once).
 * routes must stay valid for the server's life. Returns RPC_OK, or RPC_ERR with err filled. */
int rpc_server_new(const rpc_config *cfg, const rpc_route *routes, size_t nroutes,
                   rpc_server **out, rpc_error *err);

/* The bound port (useful with listen_port 0). */
uint16_t rpc_server_port(const rpc_server *s);

/* Serves until stopped: returns after a graceful drain, RPC_OK. Blocks the calling thread. */
int rpc_server_run(rpc_server *s, rpc_error *err);

/* Starts a graceful drain: GOAWAY to every connection, no new calls, open calls get
 * drain_timeout_ms to finish, then everything closes and rpc_server_run returns.
 * Safe from any thread; idempotent. */
void rpc_server_stop(rpc_server *s);

/* Reads rpc_config.tls_cert and tls_key again: connections accepted from now on use the new
 * pair, open ones keep theirs. A pair that does not load is refused (RPC_ERR, err filled, and
 * logged) and the current one stays. RPC_ERR too when the server was made without TLS. Any
 * thread; with handle_signals, SIGHUP calls it. */
int rpc_server_reload_tls(rpc_server *s, rpc_error *err);
/* 1 if the client port speaks TLS. */
int rpc_server_tls(const rpc_server *s);

/* Runs the jobs still queued for the worker pool and stops it. After rpc_server_run returns
 * and before closing what those jobs use (the store); rpc_server_free does it if not done. */
void rpc_server_join_workers(rpc_server *s);

/* Frees a server whose rpc_server_run has returned (or was never called). Completions that
 * arrive after rpc_server_run returned (from the store's writer, say) are processed here. */
void rpc_server_free(rpc_server *s);

/* Server-wide counters, for Health/Check and tests. */
uint32_t rpc_server_connections(const rpc_server *s);
uint32_t rpc_server_active_calls(const rpc_server *s);
int rpc_server_draining(const rpc_server *s);
uint64_t rpc_server_uptime_ms(const rpc_server *s);
const char *rpc_server_version(const rpc_server *s);
/* Appends the RPC layer's metrics to out in the Prometheus text format (metrics.c): connections,
 * calls by method and status, latency histograms by method, bytes, calls in flight. Summed from
 * per-loop counters the loops keep without locks; any thread, while the server exists. RPC_OK. */
struct evbuffer;
int rpc_server_metrics(const rpc_server *s, struct evbuffer *out);
/* The routes the server was created with (for Reflection). */
const rpc_route *rpc_server_routes(const rpc_server *s, size_t *count);

/* ---- Dispatch table ------------------------------------------------------------------------ */

typedef int (*rpc_handler_fn)(rpc_call *call, const void *req, void *resp);

/* One row per method; protoc-gen-lagoon emits lagoon_routes[] sorted by method id. */
struct rpc_route {
    const wire_method *method;
    rpc_handler_fn handler;
};

/* ---- Calls: what handlers use ------------------------------------------------------------- */

/* All of these may be used from the handler's invocation and, for a call the handler keeps
 * (RPC_PENDING), from the one thread that will finish it, until rpc_call_finish. The details
 * set by rpc_call_error/_violation/_retry_after are read only after the handler's finish, so
 * a worker may set them before it finishes. Returned strings live as long as the call. */
rpc_server *rpc_call_server(const rpc_call *c);
void *rpc_call_app(const rpc_call *c); /* rpc_config.app */
const rpc_caller *rpc_call_caller(const rpc_call *c);
const wire_method *rpc_call_method(const rpc_call *c);
const char *rpc_call_peer(const rpc_call *c);            /* "127.0.0.1:51234" */
const char *rpc_call_request_id(const rpc_call *c);      /* "" if none */
const char *rpc_call_idempotency_key(const rpc_call *c); /* "" if none */
/* The structs the handler was given: the decoded request (the latest message of a
 * streaming-input call), and the response struct (what a unary or client-streaming method
 * answers; unused by the others). */
const void *rpc_call_request(const rpc_call *c);
void *rpc_call_response(rpc_call *c);
/* The loop the call lives on: for timers of a streaming handler. Loop thread only. */
struct event_base *rpc_call_base(const rpc_call *c);
/* Non-zero once the call has ended (cancelled, deadline, disconnect, finished). Any thread. */
int rpc_call_done(const rpc_call *c);
/* Bytes not yet handed to the kernel for this call's connection (its output buffer, plus
 * messages sent from other threads still on their way): lets a streaming handler notice a
 * reader that cannot keep up. Any thread that holds the call. */
size_t rpc_call_backlog(const rpc_call *c);

/* Memory of the call's own: size bytes, zeroed and 16-byte aligned, that live until the call is
 * freed (after rpc_call_finish and whatever still holds the call), when destroy(p) runs first
 * (NULL: nothing to run). For a handler's per-call state, so that no path of a kept call has
 * to free it. Counted against max-connection-memory and max-server-memory-mib like the call
 * itself. NULL when size exceeds RPC_CALL_ALLOC_MAX, a memory limit would be passed, or out of
 * memory. The thread that holds the call. */
void *rpc_call_alloc(rpc_call *c, size_t size, void (*destroy)(void *p));

/* Sets the status message sent with the reply and returns status, so handlers can write
 * `return rpc_call_error(c, LAGOON_NOT_FOUND, "no user %llu", id);`. */
int rpc_call_error(rpc_call *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Adds a field violation (at most 16 are kept) and returns LAGOON_INVALID_ARGUMENT, so that
 * validation can report every problem at once before returning. */
int rpc_call_violation(rpc_call *c, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Number of violations added so far. */
int rpc_call_violations(const rpc_call *c);

/* Asks the client to retry after ms (with RESOURCE_EXHAUSTED or UNAVAILABLE). */
void rpc_call_retry_after(rpc_call *c, uint32_t ms);

/* Streams one message to the client (server- and bidi-streaming methods). msg is the
 * method's response type; it is encoded before returning, so the caller keeps ownership.
 * Any thread. Returns 0, or -1 if the call has ended (stop producing) or msg could not be
 * encoded. */
int rpc_call_send(rpc_call *c, const void *msg);

/* Ends a call the handler kept with RPC_PENDING, with status (and, for unary and
 * client-streaming methods, the response the handler filled in resp). Any thread, exactly
 * once. After it returns the handler must not touch the call. If the call had already ended
 * (cancel, deadline, disconnect), this only releases it. */
void rpc_call_finish(rpc_call *c, int status);

/* Called on the loop thread if the call ends while the handler keeps it (client CANCEL,
 * deadline, disconnect, shutdown). It runs from its own loop event, never from inside another
 * rpc_ function, so it may take locks the handler holds while sending. The handler must still
 * call rpc_call_finish, which it may do from inside the callback. Set it before returning
 * RPC_PENDING. */
typedef void (*rpc_cancel_fn)(rpc_call *c, void *arg);
void rpc_call_on_cancel(rpc_call *c, rpc_cancel_fn fn, void *arg);

/* Work lanes: each is its own set of threads with its own bounded queue, so that slow work of
 * one kind cannot starve another. */
enum rpc_lane {
    RPC_LANE_WORK = 0, /* blocking work in general: rpc_config.workers threads, worker_queue */
    RPC_LANE_HASH = 1, /* password hashing: rpc_config.hash_workers threads, hash_queue */
    RPC_LANES
};

/* Runs fn(c, arg) on a thread of the lane; its return value (a status, or RPC_PENDING if fn
 * hands the call on again) ends the call as if the handler had returned it. If the call has
 * ended before the job's turn comes (cancel, deadline, disconnect), fn is not run: drop(arg)
 * is (when not NULL), on the lane's thread, so that whatever arg owns is freed either way.
 * Returns RPC_PENDING for the handler to return, or LAGOON_RESOURCE_EXHAUSTED (with message
 * and retry-after) if the lane's queue is full; then neither fn nor drop runs and arg is
 * still the caller's. */
typedef int (*rpc_work_fn)(rpc_call *c, void *arg);
typedef void (*rpc_drop_fn)(void *arg);
int rpc_call_defer(rpc_call *c, int lane, rpc_work_fn fn, rpc_drop_fn drop, void *arg);

#endif
