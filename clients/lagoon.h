/* liblagoon: the blocking Lagoon client.
 *
 * Needs only libc, POSIX sockets and nanopb (no libevent), so it builds for phones. One
 * connection per lagoon_client; a client is not thread-safe (use one per thread, or the
 * asynchronous client in lagoon_async.h for many calls in flight).
 *
 * Typed functions for every method are generated into lagoon_stubs.h:
 *
 *   lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
 *   lagoon_v1_HealthCheckResponse resp;
 *   int st = lagoon_Health_Check(client, &req, &resp);
 *   if (st != LAGOON_OK)
 *       fprintf(stderr, "%s: %s\n", lagoon_status_name(st), lagoon_last_error(client)->detail.message);
 *
 * Every call returns its status: LAGOON_OK, a status the server sent, or one the client
 * made up for a local failure (UNAVAILABLE: connection lost; DEADLINE_EXCEEDED: the call's
 * timeout passed; INTERNAL: the server's reply could not be decoded; INVALID_ARGUMENT: the
 * request breaks a field bound and was not sent). The details of the last failed call are in
 * lagoon_last_error().
 *
 * Responses with pointer fields (large lists) are allocated by nanopb: release them with
 * pb_release(<Type>_fields, resp) after a call that returned LAGOON_OK (this header includes
 * <pb_decode.h>, which declares it); a failed call leaves nothing allocated in resp.
 */
#ifndef LAGOON_CLIENT_H
#define LAGOON_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <pb_decode.h>

#include "lagoon/v1/rpc.pb.h"
#include "wire.h"

typedef struct lagoon_client lagoon_client;
typedef struct lagoon_stream lagoon_stream;

/* The outcome of the last failed call: its status and the server's ResponseMeta (message,
 * field violations, retry-after, request id). */
typedef struct lagoon_error {
    int status;
    lagoon_v1_ResponseMeta detail;
} lagoon_error;

/* ---- transports: TLS, or the platform's own ---------------------------------------------
 *
 * The client reads and writes its connection through a transport: the plain socket by
 * default, OpenSSL when lagoon_options.tls is set, or one of the caller's own
 * (lagoon_options.transport_open), so that an app can use its platform's TLS (and its
 * certificate store, pinning and proxy rules) instead of OpenSSL. A transport sits on the
 * TCP socket lagoon_connect opened (non-blocking); the client polls that socket whenever a
 * callback says it must wait, so a transport must not keep bytes it has read from the
 * socket without handing them out on the next read (OpenSSL, reading a record at a time into
 * a large buffer, does not). */

/* Besides a byte count, what read and write return: cannot go on until the socket is readable
 * (WANT_READ) or writable (WANT_WRITE) — the client polls it and calls again with the same
 * arguments — or failed (ERROR: the connection is lost). */
#define LAGOON_IO_ERROR (-1)
#define LAGOON_IO_WANT_READ (-2)
#define LAGOON_IO_WANT_WRITE (-3)

typedef struct lagoon_transport {
    void *arg; /* the transport's own state, passed to every callback */
    /* Up to len bytes into buf: how many (> 0), 0 once the server has closed, or LAGOON_IO_*. */
    long (*read)(void *arg, void *buf, size_t len);
    /* Up to len bytes of buf: how many were taken (> 0), or LAGOON_IO_*. */
    long (*write)(void *arg, const void *buf, size_t len);
    /* Why the last LAGOON_IO_ERROR happened (NULL, or a NULL callback: "transport error").
     * Valid until the next callback. */
    const char *(*error)(void *arg);
    /* Frees arg. Called once, by lagoon_close (or by lagoon_connect when the connection fails
     * after the transport was opened); the library closes the socket afterwards. */
    void (*close)(void *arg);
} lagoon_transport;

/* Opens a transport on the connected, non-blocking socket fd to host (the name given to
 * lagoon_connect), its handshake done within timeout_ms (it may poll fd), and fills *t.
 * Returns LAGOON_OK, or a status (UNAVAILABLE for a failed handshake or a refused
 * certificate) with a message written into err (errlen bytes); then *t is not used and the
 * socket is closed by the library. */
typedef int (*lagoon_transport_open_fn)(void *open_arg, int fd, const char *host, uint32_t timeout_ms,
                                        lagoon_transport *t, char *err, size_t errlen);

typedef struct lagoon_options {
    uint32_t connect_timeout_ms; /* 0 = 5000 */
    uint32_t timeout_ms;         /* default per-call deadline; 0 = none */
    uint32_t max_frame_size;     /* largest frame accepted from the server; 0 = 16 MiB */
    /* A server whose Settings.schema_hash differs from this build's lagoon_schema_hash was built
     * from another IDL (methods or fields this client does not know, or the other way round).
     * 0: connect anyway and report it through warn; 1 (strict): refuse the connection with
     * FAILED_PRECONDITION. A server that sends no hash is not checked. */
    int strict_schema;
    /* Called (during lagoon_connect) with a warning such as a schema mismatch; NULL: written to
     * stderr as "lagoon: warning: ...". msg is valid during the call only. */
    void (*warn)(void *warn_arg, const char *msg);
    void *warn_arg;
    /* TLS through OpenSSL (TLS 1.2 or 1.3, ALPN lagoon/1) when not 0. The server's certificate
     * must chain to a CA of tls_ca_file (a PEM file; NULL: the system's store) and be valid
     * now, for tls_server_name (NULL: the host given to lagoon_connect; a numeric address is
     * matched against the certificate's IP addresses, a name against its DNS names, without
     * partial wildcards). Otherwise lagoon_connect fails with UNAVAILABLE and a message that
     * starts "TLS:" and says why ("certificate has expired", "hostname mismatch", ...). There
     * is no switch to turn verification off: test servers get a CA of their own. A server
     * that selects another ALPN protocol than lagoon/1 is refused. A library built with
     * -DLAGOON_CLIENT_OPENSSL=OFF (for a phone) fails tls with UNIMPLEMENTED: use a transport. */
    int tls;
    const char *tls_ca_file;
    const char *tls_server_name;
    /* The caller's own transport (above): when set, tls and its options are ignored and
     * transport_open(transport_arg, ...) is called once the TCP connection is up, before the
     * preface. NULL: the plain socket, or OpenSSL with tls. */
    lagoon_transport_open_fn transport_open;
    void *transport_arg;
} lagoon_options;

/* Connects, sends the preface and reads the server's SETTINGS. host is a name or a numeric
 * address. opts may be NULL. Returns LAGOON_OK, or a status with err filled (err may be NULL). */
int lagoon_connect(const char *host, uint16_t port, const lagoon_options *opts, lagoon_client **out,
                   lagoon_error *err);

/* Closes the connection (cancelling open streams) and frees everything, streams included. */
void lagoon_close(lagoon_client *c);

/* The access token sent with every following call (copied; NULL or "" for none). */
void lagoon_set_token(lagoon_client *c, const char *token);
/* The deadline of every following call, in ms; 0 = none. */
void lagoon_set_timeout(lagoon_client *c, uint32_t timeout_ms);
/* Idempotency key and request id of the next call only (copied; NULL clears). */
void lagoon_set_idempotency_key(lagoon_client *c, const char *key);
void lagoon_set_request_id(lagoon_client *c, const char *request_id);

/* The last failed call's status and details. Valid until the next call on c. */
const lagoon_error *lagoon_last_error(const lagoon_client *c);
/* 1 if the server sent the same schema hash as this build's, 0 if another, -1 if none. */
int lagoon_schema_matches(const lagoon_client *c);
/* The server's limits, from its SETTINGS frame. */
const lagoon_v1_Settings *lagoon_settings(const lagoon_client *c);
/* Non-zero once the server sent GOAWAY: new calls fail with UNAVAILABLE. */
int lagoon_goaway(const lagoon_client *c);
/* The connection's socket, to poll() beside other input: when it is readable, call
 * lagoon_stream_recv_timeout(s, msg, 0), which reads what arrived (a frame may also be queued
 * already from an earlier read: call it once before polling). Do not read or write it. With
 * TLS or a transport it is the TCP socket under it, and the same rules hold. */
int lagoon_fd(const lagoon_client *c);

/* Round trip of a PING, in microseconds, into *rtt_us. */
int lagoon_ping(lagoon_client *c, uint64_t *rtt_us);

/* ---- generic calls (the generated stubs call these) -------------------------------------- */

/* A message as its encoded bytes, for a method known only at run time (lagoonctl, from a
 * schema): give the calls below a wire_method whose request and response are NULL (path, id
 * and kind set). req and sent messages are then const lagoon_raw *; resp and received
 * messages are lagoon_raw * whose data the call mallocs (free it after LAGOON_OK or a 1). */
typedef struct lagoon_raw {
    uint8_t *data;
    size_t len;
} lagoon_raw;

/* A bytes field generated as a callback (FT_CALLBACK in its .options: a field that may pass
 * nanopb's 64 KiB bytes limit, such as GetSchemaResponse.file_descriptor_set) is read into a
 * lagoon_bytes: before the call set field.funcs.decode = lagoon_bytes_decode and field.arg = &b
 * (with b.max the most it accepts: the field's max_size); after it, free(b.data) whatever the
 * status. A longer field fails the decode (the call returns INTERNAL) before anything is
 * allocated. */
typedef struct lagoon_bytes {
    uint8_t *data;
    size_t len;
    size_t max;
} lagoon_bytes;
bool lagoon_bytes_decode(pb_istream_t *stream, const pb_field_t *field, void **arg);

/* Unary call: encodes req, waits for the reply, decodes it into resp (m->response type). */
int lagoon_call(lagoon_client *c, const wire_method *m, const void *req, void *resp);

/* Opens a streaming call with its first message (every streaming kind sends one).
 * Server-streaming: req is the only message. Client- and bidi-streaming: more can follow
 * with lagoon_stream_send. *out is freed by lagoon_stream_finish (or lagoon_close). */
int lagoon_stream_open(lagoon_client *c, const wire_method *m, const void *req, lagoon_stream **out);

/* Sends one more message (client- and bidi-streaming). */
int lagoon_stream_send(lagoon_stream *s, const void *msg);

/* Half-closes: tells the server no more messages follow. */
int lagoon_stream_close_send(lagoon_stream *s);

/* Waits for the next message (server- and bidi-streaming) and decodes it into msg.
 * Returns 1 with a message, or 0 once the stream has ended — by the server, the deadline or
 * a lost connection; lagoon_stream_finish then gives the final status. */
int lagoon_stream_recv(lagoon_stream *s, void *msg);

/* Like lagoon_stream_recv, but gives up after timeout_ms: returns -1 if nothing arrived. */
int lagoon_stream_recv_timeout(lagoon_stream *s, void *msg, uint32_t timeout_ms);

/* Ends the stream and frees it. Client-streaming: half-closes if needed, waits for the
 * response and decodes it into resp. Other kinds: resp is NULL; a stream the server has not
 * ended yet is cancelled (CANCEL is sent) and CANCELLED returned. Returns the final status. */
int lagoon_stream_finish(lagoon_stream *s, void *resp);

/* Sends CANCEL for the stream and frees it. */
void lagoon_stream_cancel(lagoon_stream *s);

#endif
