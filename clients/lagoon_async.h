/* liblagoon-async: the asynchronous Lagoon client, on libevent.
 *
 * One connection, many calls in flight, answered in any order. Everything runs on the
 * caller's event_base thread: callbacks are invoked from event_base_dispatch, and no function
 * here may be called from another thread. Calls beyond the server's max_concurrent_calls are
 * queued locally and sent as earlier ones finish.
 *
 * Typed functions for every method are generated into lagoon_async_stubs.h.
 */
#ifndef LAGOON_ASYNC_H
#define LAGOON_ASYNC_H

#include <stddef.h>
#include <stdint.h>

#include "lagoon/v1/rpc.pb.h"
#include "wire.h"

struct event_base;

typedef struct lagoon_async lagoon_async;
typedef struct lagoon_acall lagoon_acall;

/* The end of a call. meta holds the server's message and violations (all empty on success);
 * it is valid during the callback only. */
typedef void (*lagoon_async_done_fn)(int status, const lagoon_v1_ResponseMeta *meta, void *arg);

typedef struct lagoon_async_handlers {
    /* A streamed message, decoded into a struct of the method's response type, valid during
     * the callback only. May be NULL. */
    void (*on_message)(lagoon_acall *call, const void *msg, void *arg);
    /* The call ended (always called exactly once, unless lagoon_async_free came first). */
    lagoon_async_done_fn on_done;
} lagoon_async_handlers;

typedef struct lagoon_async_options {
    uint32_t timeout_ms;     /* deadline sent with every call; 0 = none */
    uint32_t max_frame_size; /* largest frame accepted from the server; 0 = 16 MiB */
    /* As lagoon_options (lagoon.h): a server whose Settings.schema_hash differs from this
     * build's is reported through warn (NULL: a line on stderr), or with strict_schema the
     * connection is given up: every call ends with UNAVAILABLE naming the mismatch. */
    int strict_schema;
    void (*warn)(void *warn_arg, const char *msg);
    void *warn_arg;
    /* TLS, as lagoon_options (lagoon.h): when not 0, an OpenSSL bufferevent with the
     * server's certificate verified against tls_ca_file (NULL: the system's store) and the
     * name tls_server_name (NULL: host), ALPN lagoon/1. The handshake runs on the event base
     * after lagoon_async_connect returns; if it fails, every call made meanwhile ends with
     * UNAVAILABLE and a message that starts "TLS:" and says why. */
    int tls;
    const char *tls_ca_file;
    const char *tls_server_name;
} lagoon_async_options;

/* Connects (blocking, bounded by 5 s) and sends the preface (with tls: queues it behind the
 * handshake); the server's SETTINGS are read
 * asynchronously (calls made before they arrive are queued). opts may be NULL. Returns
 * LAGOON_OK or LAGOON_UNAVAILABLE with a message in err (256 bytes, may be NULL). */
int lagoon_async_connect(struct event_base *base, const char *host, uint16_t port,
                         const lagoon_async_options *opts, lagoon_async **out, char *err, size_t errlen);

/* Closes the connection. Calls still open are dropped without callbacks. */
void lagoon_async_free(lagoon_async *c);

/* The token sent with every following call (copied). */
void lagoon_async_set_token(lagoon_async *c, const char *token);

/* Unary call. req is encoded before returning (the caller keeps it); resp must stay valid
 * until done runs, which decodes the response into it. Returns LAGOON_OK if the call was
 * queued; otherwise done is not called. */
int lagoon_async_call(lagoon_async *c, const wire_method *m, const void *req, void *resp,
                      lagoon_async_done_fn done, void *arg);

/* Opens a streaming call with its first message. The handle stays valid until on_done has
 * returned. NULL if it could not be queued. */
lagoon_acall *lagoon_async_open(lagoon_async *c, const wire_method *m, const void *req,
                                const lagoon_async_handlers *h, void *arg);

/* More messages (client- and bidi-streaming); then half-close. 0 or -1. */
int lagoon_async_send(lagoon_acall *call, const void *msg);
int lagoon_async_close_send(lagoon_acall *call);

/* Abandons the call: CANCEL is sent, on_done runs with LAGOON_CANCELLED. */
void lagoon_async_cancel(lagoon_acall *call);

/* Calls sent and not yet answered, and calls waiting for a free slot. */
size_t lagoon_async_in_flight(const lagoon_async *c);
size_t lagoon_async_queued(const lagoon_async *c);
/* Non-zero once the connection failed or the server sent GOAWAY. */
int lagoon_async_broken(const lagoon_async *c);

#endif
