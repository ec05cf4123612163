/* media_http: see media_http.h. */
#define _XOPEN_SOURCE 700
#include "media_http.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http_listener.h"
#include "lagoon_tables.h"
#include "media_files.h"
#include "media_sign.h"
#include "store.h"

#define MEDIA_URL_PREFIX "/media/"
/* "\"" inode "-" size "-" mtime s "." ns "\"": four 16-digit hex numbers at most. */
#define MEDIA_ETAG_MAX 80

struct media_http {
    app *app;
    media_key key;
    http_listener *listener;
    /* Rows read by the checks: one request at a time on the listener's thread, and a video row
     * (~37 KB) is not for a loop's stack. */
    lagoon_v1_Video video;
    lagoon_v1_User user;
};

/* ---- Range ---------------------------------------------------------------------------------- */

/* A decimal number at *p (digits only); advances *p. One past UINT64_MAX / 10 digits' worth is
 * held at UINT64_MAX: every such position is past any file, so "bytes=0-18446744073709551616"
 * is the whole file from 0 and "bytes=-99999999999999999999" the whole file, as RFC 9110 reads
 * them, and a first position that large is past the end (416). The digits are bounded by the
 * header's size (MEDIA_HTTP_MAX_HEADERS). 0, or -1. */
static int range_number(const char **p, uint64_t *v)
{
    const char *s = *p;
    uint64_t n = 0;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        n = n > (UINT64_MAX - d) / 10 ? UINT64_MAX : n * 10 + d;
        s++;
    }
    if (s == *p)
        return -1;
    *p = s;
    *v = n;
    return 0;
}

enum media_range media_range_parse(const char *h, uint64_t size, uint64_t *off, uint64_t *len)
{
    *off = 0;
    *len = size;
    if (h == NULL || strncasecmp(h, "bytes=", 6) != 0)
        return MEDIA_RANGE_NONE;
    const char *p = h + 6;
    if (strchr(p, ',') != NULL)
        return MEDIA_RANGE_NONE; /* several: the whole file (media_http.h) */
    uint64_t a = 0, b = 0;
    if (*p == '-') { /* the last b bytes */
        p++;
        if (range_number(&p, &b) != 0 || *p != '\0')
            return MEDIA_RANGE_NONE;
        if (b == 0 || size == 0)
            return MEDIA_RANGE_UNSATISFIABLE;
        *len = b < size ? b : size;
        *off = size - *len;
        return MEDIA_RANGE_OK;
    }
    if (range_number(&p, &a) != 0 || *p != '-')
        return MEDIA_RANGE_NONE;
    p++;
    if (*p == '\0') {
        b = UINT64_MAX;
    } else if (range_number(&p, &b) != 0 || *p != '\0' || b < a) {
        return MEDIA_RANGE_NONE;
    }
    if (a >= size)
        return MEDIA_RANGE_UNSATISFIABLE;
    if (b >= size)
        b = size - 1;
    *off = a;
    *len = b - a + 1;
    return MEDIA_RANGE_OK;
}

/* ---- replies -------------------------------------------------------------------------------- */

static int is_head(struct evhttp_request *req)
{
    return evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
}

/* A short text reply (an error): the body is left out for HEAD, whose reply evhttp would
 * otherwise send with it. */
static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *body)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
    /* A 416 comes after the file's own headers were set: one Cache-Control, this one. */
    evhttp_remove_header(out, "Cache-Control");
    evhttp_add_header(out, "Cache-Control", "no-store");
    struct evbuffer *b = is_head(req) ? NULL : evbuffer_new();
    if (b != NULL)
        evbuffer_add_printf(b, "%s\n", body);
    evhttp_send_reply(req, code, reason, b);
    if (b != NULL)
        evbuffer_free(b);
}

/* ---- the query ------------------------------------------------------------------------------- */

typedef struct media_query {
    int64_t expiry_s;
    uint32_t key_version;
    char sig[MEDIA_SIGN_SIG_MAX];
} media_query;

/* A decimal value of value[0..n) up to max (no sign, no leading zero but "0"). 0, or -1. */
static int query_number(const char *value, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || (n > 1 && value[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (value[i] < '0' || value[i] > '9' || v > (max - (uint64_t)(value[i] - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(value[i] - '0');
    }
    *out = v;
    return 0;
}

/* e, k and s, once each; other parameters are ignored (a proxy may add its own). 0, or -1. */
static int query_parse(const char *query, media_query *q)
{
    if (query == NULL || strnlen(query, MEDIA_HTTP_QUERY_MAX + 1) > MEDIA_HTTP_QUERY_MAX)
        return -1;
    int seen_e = 0, seen_k = 0, seen_s = 0;
    const char *p = query;
    for (int params = 0; *p != '\0' && params < MEDIA_HTTP_QUERY_MAX; params++) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        if (eq != NULL && eq - p == 1) {
            const char *v = eq + 1;
            size_t vn = n - 2;
            uint64_t x;
            if (p[0] == 'e') {
                if (seen_e++ || query_number(v, vn, INT64_MAX / 1000, &x) != 0)
                    return -1;
                q->expiry_s = (int64_t)x;
            } else if (p[0] == 'k') {
                if (seen_k++ || query_number(v, vn, UINT32_MAX, &x) != 0)
                    return -1;
                q->key_version = (uint32_t)x;
            } else if (p[0] == 's') {
                if (seen_s++ || vn != MEDIA_SIGN_SIG_MAX - 1)
                    return -1;
                memcpy(q->sig, v, vn);
                q->sig[vn] = '\0';
            }
        }
        p += n;
        if (*p == '&')
            p++;
    }
    return seen_e && seen_k && seen_s ? 0 : -1;
}

/* ---- the row's word -------------------------------------------------------------------------- */

/* Why a signed request may not have its file, once the signature and expiry are good. */
enum media_verdict { MEDIA_ALLOWED, MEDIA_REVOKED, MEDIA_NO_FILE, MEDIA_STORE_DOWN };

/* Reads the row the URL depends on, now: a link is only as good as the row's current key
 * version (videos.c bumps it when someone may lose access). */
static enum media_verdict row_verdict(media_http *h, const media_ref *ref, uint32_t key_version)
{
    store_txn *t;
    store_error err;
    if (h->app->db == NULL || store_read_begin(h->app->db, &t, &err) != LAGOON_OK)
        return MEDIA_STORE_DOWN;
    enum media_verdict v = MEDIA_ALLOWED;
    int st;
    if (ref->kind == MEDIA_KIND_VIDEO) {
        st = store_get(t, &lagoon_table_videos, ref->video_id, &h->video, &err);
        if (st == LAGOON_OK && (h->video.owner_id != ref->user_id || h->video.key_version != key_version))
            v = MEDIA_REVOKED;
        else if (st == LAGOON_OK && (h->video.media_files & ref->file_bit) == 0)
            v = MEDIA_NO_FILE;
    } else {
        st = store_get(t, &lagoon_table_users, ref->user_id, &h->user, &err);
        if (st == LAGOON_OK && (!h->user.active || key_version != 0))
            v = MEDIA_REVOKED;
    }
    store_read_end(t);
    if (st == LAGOON_NOT_FOUND)
        return MEDIA_REVOKED; /* deleted: its links end with it */
    return st == LAGOON_OK ? v : MEDIA_STORE_DOWN;
}

/* ---- serving a file -------------------------------------------------------------------------- */

static const char *content_type(const char *name)
{
    size_t n = strlen(name);
    if (n > 4 && strcmp(name + n - 4, ".mp4") == 0)
        return "video/mp4";
    if (n > 4 && strcmp(name + n - 4, ".jpg") == 0)
        return "image/jpeg";
    return "application/octet-stream";
}

/* Whether If-None-Match (a list of entity tags, or "*") names etag; weak tags compare weakly. */
static int etag_listed(const char *list, const char *etag)
{
    size_t el = strlen(etag);
    const char *p = list;
    for (int items = 0; *p != '\0' && items < MEDIA_HTTP_MAX_HEADERS; items++) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return 1;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        size_t n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == el && memcmp(p, etag, el) == 0)
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

/* The value of header name when the request has it once; NULL when it has none and *several
 * when it has it more than once (a Range or If-Range sent twice is not one request: ignored). */
static const char *header_once(struct evkeyvalq *in, const char *name, int *several)
{
    const char *v = NULL;
    int n = 0;
    for (struct evkeyval *h = in->tqh_first; h != NULL; h = h->next.tqe_next) {
        if (strcasecmp(h->key, name) == 0) {
            v = h->value;
            n++;
        }
    }
    if (n > 1)
        *several = 1;
    return n == 1 ? v : NULL;
}

/* Whether any If-None-Match header names etag: several are one list (RFC 9110 5.3). */
static int none_match(struct evkeyvalq *in, const char *etag)
{
    for (struct evkeyval *h = in->tqh_first; h != NULL; h = h->next.tqe_next)
        if (strcasecmp(h->key, "If-None-Match") == 0 && etag_listed(h->value, etag))
            return 1;
    return 0;
}

/* Answers the request from the open file fd (taken: closed on every path). */
static void serve_file(struct evhttp_request *req, int fd, const struct stat *sb, const char *name,
                       int64_t max_age_s)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    char etag[MEDIA_ETAG_MAX], value[96];
    snprintf(etag, sizeof(etag), "\"%jx-%jx-%jx.%lx\"", (uintmax_t)sb->st_ino, (uintmax_t)sb->st_size,
             (uintmax_t)sb->st_mtim.tv_sec, (unsigned long)sb->st_mtim.tv_nsec);
    evhttp_add_header(out, "ETag", etag);
    evhttp_add_header(out, "Accept-Ranges", "bytes");
    /* An original is the uploader's bytes (probed, but a file can be a video and an HTML page at
     * once): a browser must take the Content-Type as given, never sniff one. */
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    snprintf(value, sizeof(value), "private, max-age=%" PRId64, max_age_s > 0 ? max_age_s : 0);
    evhttp_add_header(out, "Cache-Control", value);
    if (none_match(in, etag)) {
        close(fd);
        evhttp_send_reply(req, HTTP_NOTMODIFIED, "Not Modified", NULL);
        return;
    }
    uint64_t size = (uint64_t)sb->st_size, off = 0, len = size;
    int several = 0;
    const char *range = header_once(in, "Range", &several);
    const char *if_range = header_once(in, "If-Range", &several);
    if (several || (if_range != NULL && strcmp(if_range, etag) != 0))
        range = NULL; /* the file changed since the client's first part (or a doubled header): all of it */
    enum media_range r = media_range_parse(range, size, &off, &len);
    if (r == MEDIA_RANGE_UNSATISFIABLE) {
        close(fd);
        snprintf(value, sizeof(value), "bytes */%" PRIu64, size);
        evhttp_add_header(out, "Content-Range", value);
        reply_text(req, 416, "Range Not Satisfiable", "range not satisfiable");
        return;
    }
    evhttp_add_header(out, "Content-Type", content_type(name));
    snprintf(value, sizeof(value), "%" PRIu64, len);
    evhttp_add_header(out, "Content-Length", value);
    int code = HTTP_OK;
    const char *reason = "OK";
    if (r == MEDIA_RANGE_OK) {
        code = 206;
        reason = "Partial Content";
        snprintf(value, sizeof(value), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off, off + len - 1, size);
        evhttp_add_header(out, "Content-Range", value);
    }
    struct evbuffer *b = NULL;
    if (!is_head(req) && len > 0) {
        b = evbuffer_new();
        /* The body only ever moves whole into the connection's output (evbuffer_add_buffer), which
         * writes to the socket: so marked, the file goes out with sendfile, where an unmarked
         * buffer would mmap it for each answer. evbuffer_add_file owns fd from here, on success
         * and failure alike. */
        if (b != NULL)
            evbuffer_set_flags(b, EVBUFFER_FLAG_DRAINS_TO_FD);
        if (b == NULL || evbuffer_add_file(b, fd, (ev_off_t)off, (ev_off_t)len) != 0) {
            if (b == NULL)
                close(fd);
            else
                evbuffer_free(b);
            evhttp_send_error(req, HTTP_INTERNAL, NULL);
            return;
        }
    } else {
        close(fd);
    }
    evhttp_send_reply(req, code, reason, b);
    if (b != NULL)
        evbuffer_free(b);
}

static int open_file(const media_http *h, const media_ref *ref, struct stat *sb)
{
    char path[MEDIA_PATH_MAX];
    int st = ref->kind == MEDIA_KIND_VIDEO
                 ? media_video_path(h->app, ref->user_id, ref->video_id, ref->name, path, sizeof(path))
                 : media_profile_path(h->app, ref->user_id, ref->name, path, sizeof(path));
    if (st != LAGOON_OK)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0 && (fstat(fd, sb) != 0 || !S_ISREG(sb->st_mode))) {
        close(fd);
        return -1;
    }
    return fd;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    media_http *h = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "only GET and HEAD");
        return;
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = evhttp_uri_get_path(uri); /* as sent: never decoded, so %2e%2e is no dot */
    size_t plen = sizeof(MEDIA_URL_PREFIX) - 1;
    media_ref ref;
    if (path == NULL || strncmp(path, MEDIA_URL_PREFIX, plen) != 0 ||
        media_relpath_parse(path + plen, strlen(path + plen), &ref) != 0) {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found");
        return;
    }
    media_query q = {0};
    if (query_parse(evhttp_uri_get_query(uri), &q) != 0) {
        reply_text(req, HTTP_BADREQUEST, "Bad Request", "a media URL needs e, k and s (Videos/GetPlayback)");
        return;
    }
    char rel[MEDIA_RELPATH_MAX + 1];
    if (media_ref_relpath(&ref, rel, sizeof(rel)) != LAGOON_OK ||
        !media_sign_check(&h->key, rel, q.expiry_s, q.key_version, q.sig)) {
        reply_text(req, 403, "Forbidden", "bad signature");
        return;
    }
    int64_t now_s = app_now(h->app) / 1000;
    if (q.expiry_s < now_s) {
        reply_text(req, 410, "Gone", "the link has expired: ask for a new one");
        return;
    }
    switch (row_verdict(h, &ref, q.key_version)) {
    case MEDIA_REVOKED:
        reply_text(req, 403, "Forbidden", "the link was revoked: ask for a new one");
        return;
    case MEDIA_NO_FILE:
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found");
        return;
    case MEDIA_STORE_DOWN:
        reply_text(req, HTTP_SERVUNAVAIL, "Service Unavailable", "the store is not available");
        return;
    case MEDIA_ALLOWED:
        break;
    }
    struct stat sb;
    int fd = open_file(h, &ref, &sb);
    if (fd < 0) {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found");
        return;
    }
    serve_file(req, fd, &sb, ref.name, q.expiry_s - now_s);
}

int media_http_start(const char *host, uint16_t port, app *a, media_http **out, rpc_error *err)
{
    *out = NULL;
    media_http *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    h->app = a;
    if (media_key_load(a->data_dir, &h->key, err->message, sizeof(err->message)) != LAGOON_OK) {
        free(h);
        return RPC_ERR;
    }
    http_listener_config cfg = {.what = "media listener",
                                .host = host,
                                .port = port,
                                .max_connections = MEDIA_HTTP_MAX_CONNECTIONS,
                                .timeout_s = MEDIA_HTTP_TIMEOUT_S,
                                .request_timeout_s = MEDIA_HTTP_REQUEST_TIMEOUT_S,
                                .max_headers = MEDIA_HTTP_MAX_HEADERS,
                                .max_body = MEDIA_HTTP_MAX_BODY,
                                .max_single_write = MEDIA_HTTP_WRITE_MAX,
                                .on_request = on_request,
                                .arg = h};
    if (http_listener_start(&cfg, &h->listener, err) != RPC_OK) {
        sodium_memzero(&h->key, sizeof(h->key));
        free(h);
        return RPC_ERR;
    }
    *out = h;
    return RPC_OK;
}

uint16_t media_http_port(const media_http *h) { return http_listener_port(h->listener); }

void media_http_stop(media_http *h)
{
    if (h == NULL)
        return;
    http_listener_stop(h->listener);
    sodium_memzero(&h->key, sizeof(h->key));
    free(h);
}
