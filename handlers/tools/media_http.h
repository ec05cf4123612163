/* media_http: lagoond's media listener (--media-listen): serves the files under <data>/media to
 * holders of a signed URL (media_sign.h), with byte ranges so that players can seek.
 *
 *   GET|HEAD /media/{relpath}?e={expiry, unix s}&k={key version}&s={signature}
 *
 * Checks, in order: relpath is exactly one of the forms media_files.h names (else 404; the
 * file's path is built from the parsed ids, never from the request's text); the query has e, k
 * and s once each, well formed (else 400); the signature (else 403); the expiry, against the
 * app's clock (else 410); the key version against the row's (the video's key_version, read now in
 * a store read; 0 for a profile image, whose user must exist and be active), and a video's owner
 * against the path's user (else 403: a link revoked, or a deleted video); the file (its
 * Video.media_files bit and the file itself, else 404).
 *
 * Answers: 200 with the whole file; a single range (bytes=a-b, a-, -n) 206 with Content-Range,
 * an unsatisfiable one 416 with a Content-Range of the size alone ("bytes", a star, "/size"); several
 * ranges are answered 200
 * with the whole file (RFC 9110 lets a server ignore Range; players ask for one), and so are a
 * Range or If-Range header sent twice; positions past any file are held at the file's end. If-Range
 * that is not the current ETag also gets the whole file; several If-None-Match headers are one list. Accept-Ranges: bytes; ETag from the file's
 * inode, size and mtime, If-None-Match → 304; Content-Type video/mp4, image/jpeg, and
 * application/octet-stream for an original (never the uploader's claim); Cache-Control private
 * with max-age up to the URL's expiry. Files go out with evbuffer_add_file (sendfile: the bytes
 * do not pass through the process).
 *
 * One thread and event base of its own (http_listener.h), at most MEDIA_HTTP_MAX_CONNECTIONS
 * connections, MEDIA_HTTP_TIMEOUT_S without progress closes one, and so does a request not
 * whole within MEDIA_HTTP_REQUEST_TIMEOUT_S. */
#ifndef LAGOON_MEDIA_HTTP_H
#define LAGOON_MEDIA_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "rpc.h"

/* Connections open at once. A player keeps one or two per viewer; past this many the listener
 * stops accepting until one closes (http_listener.h). A few hundred descriptors of the default
 * 1024-descriptor limit, so the RPC port and the store keep theirs. */
#define MEDIA_HTTP_MAX_CONNECTIONS 256
/* Seconds without progress (reading a request, or the client taking bytes) before a connection
 * is closed: long enough for a paused phone on a slow network, short enough that idle
 * connections give their slot back. */
#define MEDIA_HTTP_TIMEOUT_S 60
/* Seconds a connection has to send a whole request line and headers, from its start or from its
 * previous answer (http_listener.h): a client trickling a header a byte at a time, or idling
 * between requests, gives its slot back then. A player asks for its next range well within it. */
#define MEDIA_HTTP_REQUEST_TIMEOUT_S 30
/* A request is a line and a few headers; nothing of a body is read. */
#define MEDIA_HTTP_MAX_HEADERS 8192
#define MEDIA_HTTP_MAX_BODY 0
/* Bytes a connection hands the kernel per wakeup. libevent's default, 16 KiB, makes a 256 KiB range
 * sixteen sendfile calls and loop turns; the socket's buffer bounds what one call sends anyway. */
#define MEDIA_HTTP_WRITE_MAX (1u << 20)
/* The query (e, k, s): about 80 bytes; anything longer is refused (400) before it is parsed. */
#define MEDIA_HTTP_QUERY_MAX 256

typedef struct media_http media_http;

/* Loads the signing key (media_key_load: created at the first start), binds host:port (port 0: an
 * ephemeral one) and serves a's media directory on a thread of its own. a must outlive
 * media_http_stop. RPC_OK, or RPC_ERR with err filled. */
int media_http_start(const char *host, uint16_t port, app *a, media_http **out, rpc_error *err);
uint16_t media_http_port(const media_http *h);
/* Stops the thread and closes the listener and its connections. NULL allowed. */
void media_http_stop(media_http *h);

/* What a Range header asks of a file of size bytes. Pure (for the listener and its tests). */
enum media_range {
    MEDIA_RANGE_NONE = 0,      /* no range, or one this server ignores (malformed, several): 200 */
    MEDIA_RANGE_OK = 1,        /* *off, *len: the one satisfiable range: 206 */
    MEDIA_RANGE_UNSATISFIABLE = 2, /* 416 */
};
/* h: the header's value (NULL: none). */
enum media_range media_range_parse(const char *h, uint64_t size, uint64_t *off, uint64_t *len);

#endif
