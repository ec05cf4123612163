/* The media listener (handlers/tools/media_http.c) and signed URLs, through curl against the
 * real server and store: Videos/GetPlayback's URLs serve the files byte for byte, whole and in
 * ranges (206, 416), HEAD, ETag / If-None-Match, Content-Type; a bad signature is 403, an
 * expired URL 410 (the injected clock), a revoked one 403 at once (made private, unshared,
 * deleted) while a new GetPlayback works for those still allowed; path tricks never reach a
 * file; deleting a video or an account removes its files after the commit; a profile's "media:"
 * marker becomes a URL; lagoon-admin verify reports files without rows and rows without files.
 *
 * The media files are real: a one-second 320x240 H.264 MP4 and a JPEG made with ffmpeg when the
 * tests start, put in place by the tests, with the video rows' media fields set by a test write
 * (as processing would). */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/http.h>

#include "http_listener.h"
#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "media_files.h"
#include "media_http.h"
#include "media_sign.h"
#include "testserver.h"

#define BODY_MAX (4 << 20)
#define HEADERS_MAX 8192
#define URL_MAX 1024

static test_app *T;
static lagoon_client *C;
static media_http *M;
static char base[128];
static char work[64];                   /* the generated files */
static char sd_path[128], jpg_path[128];
static unsigned char *sd_bytes, *jpg_bytes; /* their contents */
static size_t sd_size, jpg_size;

/* ann owns the videos; bob gets shares; cat is another user. */
static uint64_t ann, bob, cat;
static char ann_tok[65], bob_tok[65], cat_tok[65];

static lagoon_v1_Video V; /* ~37 KB: off the stack */
static lagoon_v1_Playback P;

/* ---- files ---------------------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *b = malloc(BODY_MAX);
    assert_non_null(b);
    *n = fread(b, 1, BODY_MAX, f);
    fclose(f);
    return b;
}

static void run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("'%s' exited %d", cmd, rc);
}

static void copy_file(const char *from, const char *to)
{
    assert_int_equal(media_mkdirs(to), LAGOON_OK);
    char cmd[2 * MEDIA_PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
    run(cmd);
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---- HTTP through curl ---------------------------------------------------------------------- */

typedef struct reply {
    int code;
    unsigned char *body;
    size_t len;
    char headers[HEADERS_MAX];
} reply;

static reply R;

/* method "GET" or "HEAD"; header (may be NULL) one extra request header. R gets the answer. */
static int http(const char *method, const char *url, const char *header)
{
    char body[] = "/tmp/lagoon-media-body-XXXXXX", hdrs[] = "/tmp/lagoon-media-hdrs-XXXXXX";
    int fd = mkstemp(body);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemp(hdrs);
    assert_true(fd >= 0);
    close(fd);
    char cmd[2 * URL_MAX];
    snprintf(cmd, sizeof(cmd), "curl -s -S --path-as-is --max-time 10 %s %s%s%s -o %s -D %s -w '%%{http_code}' '%s'",
             strcmp(method, "HEAD") == 0 ? "-I" : "", header ? "-H '" : "", header ? header : "", header ? "'" : "",
             body, hdrs, url);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char code[16] = "";
    size_t n = fread(code, 1, sizeof(code) - 1, p);
    code[n] = '\0';
    assert_int_equal(pclose(p), 0);
    free(R.body);
    R.body = slurp(body, &R.len);
    FILE *f = fopen(hdrs, "r");
    assert_non_null(f);
    size_t hl = fread(R.headers, 1, sizeof(R.headers) - 1, f);
    R.headers[hl] = '\0';
    fclose(f);
    unlink(body);
    unlink(hdrs);
    R.code = atoi(code);
    return R.code;
}

/* A connection to 127.0.0.1:port. */
static int connect_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* HEAD url over a plain socket with "Connection: close": the bytes that came after the headers
 * (curl would not tell a body it was not expecting). */
static size_t head_body_bytes(const char *url)
{
    const char *path = strstr(url + strlen("http://"), "/");
    assert_non_null(path);
    int fd = connect_to(media_http_port(M));
    char req[URL_MAX + 128];
    int n = snprintf(req, sizeof(req), "HEAD %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    static char got[HEADERS_MAX * 2];
    size_t len = 0;
    for (int reads = 0; reads < 1000 && len < sizeof(got) - 1; reads++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_true(poll(&p, 1, 10000) == 1);
        ssize_t r = read(fd, got + len, sizeof(got) - 1 - len);
        assert_true(r >= 0);
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    got[len] = '\0';
    assert_true(strncmp(got, "HTTP/1.1 200", 12) == 0);
    const char *end = strstr(got, "\r\n\r\n");
    assert_non_null(end);
    return len - (size_t)(end + 4 - got);
}

/* The value of response header name into out ("" when absent). */
static const char *header_of(const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = R.headers; *p != '\0'; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = strcspn(v, "\r\n");
            snprintf(out, cap, "%.*s", (int)(vl < cap ? vl : cap - 1), v);
            break;
        }
    }
    return out;
}

static void expect_header(const char *name, const char *want)
{
    char v[256];
    header_of(name, v, sizeof(v));
    if (strcmp(v, want) != 0)
        fail_msg("%s: '%s', expected '%s'", name, v, want);
}

/* ---- rows ------------------------------------------------------------------------------------ */

typedef struct media_fields {
    uint64_t id;
    uint32_t files;
    int status;
} media_fields;

/* What processing writes on success (media.c), set here directly. */
static int set_media_write(store_txn *t, void *arg, store_error *err)
{
    const media_fields *m = arg;
    int st = store_get(t, &lagoon_table_videos, m->id, &V, err);
    if (st != LAGOON_OK)
        return st;
    V.source = lagoon_v1_Video_Source_UPLOAD;
    V.status = m->status;
    V.media_files = m->files;
    V.width = 320;
    V.height = 240;
    V.duration_seconds = 1;
    V.media_bytes = sd_size * 2 + jpg_size;
    return store_update(t, &lagoon_table_videos, &V, err);
}

static void set_media(uint64_t id, uint32_t files, int status)
{
    media_fields m = {id, files, status};
    store_error err;
    assert_int_equal(store_write(T->app->db, set_media_write, &m, &err), LAGOON_OK);
}

/* An uploaded, processed video of the user of tok with its files in place: its id. */
static uint64_t uploaded_video(const char *tok, uint64_t owner, int pub)
{
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "scales");
    snprintf(r.url, sizeof(r.url), "https://example.com/placeholder");
    r.is_public = pub;
    lagoon_set_token(C, tok);
    int st = lagoon_Videos_Create(C, &r, &V);
    if (st != LAGOON_OK)
        fail_msg("Create: %s", lagoon_status_name(st));
    uint64_t id = V.id;
    char p[MEDIA_PATH_MAX];
    static const char *const names[] = {MEDIA_ORIGINAL, MEDIA_SD};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(media_video_path(T->app, owner, id, names[i], p, sizeof(p)), LAGOON_OK);
        copy_file(sd_path, p);
    }
    assert_int_equal(media_video_path(T->app, owner, id, MEDIA_THUMBNAIL, p, sizeof(p)), LAGOON_OK);
    copy_file(jpg_path, p);
    set_media(id, MEDIA_FILE_ORIGINAL | MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD, lagoon_v1_Video_Status_READY);
    return id;
}

static int playback(const char *tok, uint64_t id)
{
    lagoon_set_token(C, tok);
    lagoon_v1_GetPlaybackRequest r = {.video_id = id};
    memset(&P, 0, sizeof(P));
    return lagoon_Videos_GetPlayback(C, &r, &P);
}

/* The sd URL of video id for the user of tok (fails the test unless GetPlayback answers one). */
static void sd_url(const char *tok, uint64_t id, char *out)
{
    int st = playback(tok, id);
    if (st != LAGOON_OK)
        fail_msg("GetPlayback: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    assert_int_equal(P.renditions_count, 1);
    assert_string_equal(P.renditions[0].name, "sd");
    snprintf(out, URL_MAX, "%s", P.renditions[0].url);
}

static int update_public(const char *tok, uint64_t id, int pub)
{
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_is_public = true;
    r.is_public = pub;
    lagoon_set_token(C, tok);
    return lagoon_Videos_Update(C, &r, &V);
}

static int share(const char *tok, uint64_t id, uint64_t user, int on)
{
    lagoon_set_token(C, tok);
    lagoon_v1_VideosEmpty e;
    if (on) {
        lagoon_v1_ShareVideoRequest r = {.video_id = id, .user_id = user};
        return lagoon_Videos_Share(C, &r, &e);
    }
    lagoon_v1_UnshareVideoRequest r = {.video_id = id, .user_id = user};
    return lagoon_Videos_Unshare(C, &r, &e);
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    snprintf(work, sizeof(work), "/tmp/lagoon-media-XXXXXX");
    assert_non_null(mkdtemp(work));
    snprintf(sd_path, sizeof(sd_path), "%s/sd.mp4", work);
    snprintf(jpg_path, sizeof(jpg_path), "%s/thumb.jpg", work);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "ffmpeg -nostdin -loglevel error -f lavfi -i testsrc=duration=1:size=320x240:rate=10 -c:v libx264 "
             "-preset ultrafast -pix_fmt yuv420p -movflags +faststart -y '%s' && "
             "ffmpeg -nostdin -loglevel error -f lavfi -i testsrc=size=160x120 -frames:v 1 -y '%s'",
             sd_path, jpg_path);
    run(cmd);
    sd_bytes = slurp(sd_path, &sd_size);
    jpg_bytes = slurp(jpg_path, &jpg_size);
    assert_true(sd_size > 1000);
    T = test_app_new(test_tweak_shared);
    rpc_error err;
    assert_int_equal(media_http_start("127.0.0.1", 0, T->app, &M, &err), RPC_OK);
    snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)media_http_port(M));
    /* Set before any call signs a URL (lagoond derives it from --media-listen). */
    APP_STRCPY(T->app->cfg.media_url_base, base);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_TEACHER, bob_tok);
    cat = test_verified_user(T, C, "cat", lagoon_v1_Role_STUDENT, cat_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    media_http_stop(M);
    test_app_free(T);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    run(cmd);
    free(sd_bytes);
    free(jpg_bytes);
    free(R.body);
    return 0;
}

/* ---- serving ------------------------------------------------------------------------------------ */

static void test_whole_file(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    assert_true(strncmp(url, base, strlen(base)) == 0);
    assert_int_equal(P.status, lagoon_v1_Video_Status_READY);
    assert_int_equal(P.renditions[0].height, 240); /* never above the source's */
    assert_true(P.expires_at > T->clock_ms);
    assert_int_equal(http("GET", url, NULL), 200);
    assert_int_equal(R.len, sd_size);
    assert_memory_equal(R.body, sd_bytes, sd_size);
    expect_header("Content-Type", "video/mp4");
    expect_header("Accept-Ranges", "bytes");
    expect_header("X-Content-Type-Options", "nosniff");
    char v[256];
    assert_true(strncmp(header_of("Cache-Control", v, sizeof(v)), "private", 7) == 0);
    assert_true(header_of("ETag", v, sizeof(v))[0] == '"');
    /* The thumbnail, by its URL in GetPlayback and in Videos/Get. */
    char thumb[URL_MAX];
    snprintf(thumb, sizeof(thumb), "%s", P.thumbnail_url);
    assert_int_equal(http("GET", thumb, NULL), 200);
    expect_header("Content-Type", "image/jpeg");
    assert_int_equal(R.len, jpg_size);
    assert_memory_equal(R.body, jpg_bytes, jpg_size);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_GetVideoRequest g = {.video_id = id};
    assert_int_equal(lagoon_Videos_Get(C, &g, &V), LAGOON_OK);
    assert_true(strncmp(V.thumbnail_url, base, strlen(base)) == 0);
    assert_int_equal(http("GET", V.thumbnail_url, NULL), 200);
}

static void test_ranges(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX], want[128];
    sd_url(ann_tok, id, url);
    /* The first bytes. */
    assert_int_equal(http("GET", url, "Range: bytes=0-99"), 206);
    assert_int_equal(R.len, 100);
    assert_memory_equal(R.body, sd_bytes, 100);
    snprintf(want, sizeof(want), "bytes 0-99/%zu", sd_size);
    expect_header("Content-Range", want);
    expect_header("Content-Length", "100");
    /* A suffix. */
    assert_int_equal(http("GET", url, "Range: bytes=-50"), 206);
    assert_int_equal(R.len, 50);
    assert_memory_equal(R.body, sd_bytes + sd_size - 50, 50);
    snprintf(want, sizeof(want), "bytes %zu-%zu/%zu", sd_size - 50, sd_size - 1, sd_size);
    expect_header("Content-Range", want);
    /* Open-ended, from the middle. */
    assert_int_equal(http("GET", url, "Range: bytes=500-"), 206);
    assert_int_equal(R.len, sd_size - 500);
    assert_memory_equal(R.body, sd_bytes + 500, sd_size - 500);
    /* An end past the file is cut to it; a suffix longer than the file is the file. */
    assert_int_equal(http("GET", url, "Range: bytes=10-99999999"), 206);
    assert_int_equal(R.len, sd_size - 10);
    assert_int_equal(http("GET", url, "Range: bytes=-99999999"), 206);
    assert_int_equal(R.len, sd_size);
    /* Unsatisfiable. */
    char range[64];
    snprintf(range, sizeof(range), "Range: bytes=%zu-", sd_size);
    assert_int_equal(http("GET", url, range), 416);
    snprintf(want, sizeof(want), "bytes */%zu", sd_size);
    expect_header("Content-Range", want);
    /* One Cache-Control, the error's: not also the file's "private, max-age". */
    expect_header("Cache-Control", "no-store");
    assert_null(strstr(R.headers, "max-age"));
    assert_int_equal(http("GET", url, "Range: bytes=-0"), 416);
    /* Several ranges: the whole file; a malformed one is ignored (the whole file). */
    assert_int_equal(http("GET", url, "Range: bytes=0-1,5-6"), 200);
    assert_int_equal(R.len, sd_size);
    assert_int_equal(http("GET", url, "Range: bytes=9-3"), 200);
    assert_int_equal(http("GET", url, "Range: items=0-3"), 200);
    /* If-Range with another tag: the whole file; with the current one, the range. */
    assert_int_equal(http("GET", url, "If-Range: \"other\""), 200);
    char etag[128], cmd[URL_MAX];
    header_of("ETag", etag, sizeof(etag));
    snprintf(cmd, sizeof(cmd), "%s' -H 'If-Range: %s", "Range: bytes=0-9", etag);
    assert_int_equal(http("GET", url, cmd), 206);
    assert_int_equal(R.len, 10);
    /* A last position past any file is the rest of it; a Range sent twice is ignored. */
    assert_int_equal(http("GET", url, "Range: bytes=0-18446744073709551616"), 206);
    assert_int_equal(R.len, sd_size);
    assert_int_equal(http("GET", url, "Range: bytes=0-0' -H 'Range: bytes=5-6"), 200);
    assert_int_equal(R.len, sd_size);
    assert_int_equal(http("HEAD", url, "Range: bytes=0-9"), 206);
    expect_header("Content-Length", "10");
}

static void test_head_and_etag(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX], v[256], etag[128];
    sd_url(ann_tok, id, url);
    assert_int_equal(http("HEAD", url, NULL), 200);
    assert_int_equal(head_body_bytes(url), 0);
    snprintf(v, sizeof(v), "%zu", sd_size);
    expect_header("Content-Length", v);
    expect_header("Content-Type", "video/mp4");
    header_of("ETag", etag, sizeof(etag));
    assert_true(etag[0] == '"');
    char h[256];
    snprintf(h, sizeof(h), "If-None-Match: %s", etag);
    assert_int_equal(http("GET", url, h), 304);
    assert_int_equal(R.len, 0);
    snprintf(h, sizeof(h), "If-None-Match: \"x\", W/%s", etag);
    assert_int_equal(http("GET", url, h), 304);
    /* Several If-None-Match headers are one list. */
    assert_int_equal(http("GET", url, "If-None-Match: \"a\"' -H 'If-None-Match: *"), 304);
    assert_int_equal(http("GET", url, "If-None-Match: \"something-else\""), 200);
    assert_int_equal(R.len, sd_size);
    /* A new file under the name (a re-upload) has a new tag. */
    char p[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, ann, id, MEDIA_SD, p, sizeof(p)), LAGOON_OK);
    copy_file(jpg_path, p);
    assert_int_equal(http("HEAD", url, NULL), 200);
    assert_string_not_equal(header_of("ETag", v, sizeof(v)), etag);
}

/* ---- signatures ------------------------------------------------------------------------------- */

static void test_bad_signature(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    char bad[URL_MAX + 16];
    snprintf(bad, sizeof(bad), "%s", url);
    char *s = strstr(bad, "&s=");
    assert_non_null(s);
    s[3] = s[3] == 'A' ? 'B' : 'A';
    assert_int_equal(http("GET", bad, NULL), 403);
    /* Another expiry, key version or file under the same signature. */
    snprintf(bad, sizeof(bad), "%s", url);
    char *e = strstr(bad, "?e=");
    e[3] = e[3] == '9' ? '8' : (char)(e[3] + 1);
    assert_int_equal(http("GET", bad, NULL), 403);
    snprintf(bad, sizeof(bad), "%s", url);
    char *k = strstr(bad, "&k=");
    k[3] = '7';
    assert_int_equal(http("GET", bad, NULL), 403);
    char *q = strchr(url, '?');
    snprintf(bad, sizeof(bad), "%s/media/videos/%llu/%llu/original%s", base, (unsigned long long)ann,
             (unsigned long long)id, q);
    assert_int_equal(http("GET", bad, NULL), 403);
    /* The query's shape: missing or repeated parameters are 400. */
    snprintf(bad, sizeof(bad), "%.*s", (int)(strstr(url, "&s=") - url), url);
    assert_int_equal(http("GET", bad, NULL), 400);
    snprintf(bad, sizeof(bad), "%s&e=1", url);
    assert_int_equal(http("GET", bad, NULL), 400);
    snprintf(bad, sizeof(bad), "%.*s", (int)(q - url), url);
    assert_int_equal(http("GET", bad, NULL), 400);
    assert_int_equal(http("GET", url, NULL), 200);
}

static void test_expired(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    assert_int_equal(http("GET", url, NULL), 200);
    test_clock_advance(T, (3600 + 1) * 1000LL); /* media-url-ttl-s: an hour */
    assert_int_equal(http("GET", url, NULL), 410);
    sd_url(ann_tok, id, url);
    assert_int_equal(http("GET", url, NULL), 200);
}

/* ---- revocation --------------------------------------------------------------------------------- */

/* A retried Update (same idempotency key) answers its kept response with a thumbnail URL
 * signed now, not the first answer's, which may have expired meanwhile. */
static void test_update_retry_thumbnail(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    static lagoon_v1_UpdateVideoRequest r;
    memset(&r, 0, sizeof(r));
    r.video_id = id;
    r.has_title = true;
    snprintf(r.title, sizeof(r.title), "arpeggios");
    lagoon_set_token(C, ann_tok);
    lagoon_set_idempotency_key(C, "update-thumb-1");
    assert_int_equal(lagoon_Videos_Update(C, &r, &V), LAGOON_OK);
    char first[sizeof(V.thumbnail_url)];
    memcpy(first, V.thumbnail_url, sizeof(first));
    assert_true(strncmp(first, base, strlen(base)) == 0);
    assert_int_equal(http("GET", first, NULL), 200);
    test_clock_advance(T, (3600 + 1) * 1000LL);
    assert_int_equal(http("GET", first, NULL), 410);
    lagoon_set_token(C, ann_tok);
    lagoon_set_idempotency_key(C, "update-thumb-1");
    assert_int_equal(lagoon_Videos_Update(C, &r, &V), LAGOON_OK);
    assert_string_equal(V.title, "arpeggios");
    assert_string_not_equal(V.thumbnail_url, first);
    assert_int_equal(http("GET", V.thumbnail_url, NULL), 200);
    expect_header("Content-Type", "image/jpeg");
}

static void test_revoked_by_making_private(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 1);
    assert_int_equal(share(ann_tok, id, bob, 1), LAGOON_OK);
    char cat_url[URL_MAX], bob_url[URL_MAX];
    sd_url(cat_tok, id, cat_url); /* public: every signed-in user */
    sd_url(bob_tok, id, bob_url);
    assert_int_equal(http("GET", cat_url, NULL), 200);
    assert_int_equal(update_public(ann_tok, id, 0), LAGOON_OK);
    assert_int_equal(http("GET", cat_url, NULL), 403);
    assert_int_equal(http("GET", bob_url, NULL), 403);
    assert_int_equal(playback(cat_tok, id), LAGOON_NOT_FOUND);
    sd_url(bob_tok, id, bob_url); /* still shared with bob */
    assert_int_equal(http("GET", bob_url, NULL), 200);
    /* Making it public again takes nothing away: links stay. */
    assert_int_equal(update_public(ann_tok, id, 1), LAGOON_OK);
    assert_int_equal(http("GET", bob_url, NULL), 200);
}

static void test_revoked_by_unsharing(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    assert_int_equal(share(ann_tok, id, bob, 1), LAGOON_OK);
    assert_int_equal(share(ann_tok, id, cat, 1), LAGOON_OK);
    char cat_url[URL_MAX], bob_url[URL_MAX];
    sd_url(cat_tok, id, cat_url);
    sd_url(bob_tok, id, bob_url);
    assert_int_equal(http("GET", cat_url, NULL), 200);
    assert_int_equal(share(ann_tok, id, cat, 0), LAGOON_OK);
    assert_int_equal(http("GET", cat_url, NULL), 403);
    assert_int_equal(playback(cat_tok, id), LAGOON_NOT_FOUND);
    assert_int_equal(http("GET", bob_url, NULL), 403); /* every link of the video */
    sd_url(bob_tok, id, bob_url);
    assert_int_equal(http("GET", bob_url, NULL), 200);
}

/* A deactivated account's links to the videos shared with it stop; its shares stay. */
static void test_revoked_by_deactivating(void **state)
{
    (void)state;
    char admin_tok[65], tok[65];
    (void)test_admin_user(T, C, "root", admin_tok);
    uint64_t eve = test_verified_user(T, C, "eve", lagoon_v1_Role_STUDENT, tok);
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    assert_int_equal(share(ann_tok, id, eve, 1), LAGOON_OK);
    assert_int_equal(share(ann_tok, id, bob, 1), LAGOON_OK);
    char eve_url[URL_MAX], bob_url[URL_MAX];
    sd_url(tok, id, eve_url);
    sd_url(bob_tok, id, bob_url);
    assert_int_equal(http("GET", eve_url, NULL), 200);
    lagoon_set_token(C, admin_tok);
    static lagoon_v1_UserProfile prof;
    lagoon_v1_SetActiveRequest r = {.user_id = eve, .active = false};
    assert_int_equal(lagoon_Users_SetActive(C, &r, &prof), LAGOON_OK);
    assert_int_equal(http("GET", eve_url, NULL), 403);
    assert_int_equal(http("GET", bob_url, NULL), 403); /* every link of the video, as Unshare */
    sd_url(bob_tok, id, bob_url);
    assert_int_equal(http("GET", bob_url, NULL), 200);
    /* A reactivation goes through the same write, which bumps nothing for an active user. */
    r.active = true;
    lagoon_set_token(C, admin_tok);
    assert_int_equal(lagoon_Users_SetActive(C, &r, &prof), LAGOON_OK);
    assert_int_equal(prof.active, true);
}

/* Entries in <data>/media/trash (0 when it is absent). */
static int trash_entries(void)
{
    char p[MEDIA_PATH_MAX];
    snprintf(p, sizeof(p), "%s/" MEDIA_DIR "/" MEDIA_TRASH_DIR, T->dir);
    DIR *d = opendir(p);
    if (d == NULL)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Removed files' blocks are freed off the writer thread: the trash empties on its own. */
static void wait_trash_empty(void)
{
    for (int i = 0; i < 200 && trash_entries() != 0; i++)
        usleep(50 * 1000);
    assert_int_equal(trash_entries(), 0);
}

static void test_revoked_by_deleting(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX], dir[MEDIA_PATH_MAX];
    sd_url(ann_tok, id, url);
    assert_int_equal(media_video_path(T->app, ann, id, NULL, dir, sizeof(dir)), LAGOON_OK);
    assert_true(exists(dir));
    assert_int_equal(http("GET", url, NULL), 200);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_DeleteVideoRequest r = {.video_id = id};
    lagoon_v1_VideosEmpty e;
    assert_int_equal(lagoon_Videos_Delete(C, &r, &e), LAGOON_OK);
    /* The call ends after the commit and after the files have left their names; the trash
     * they went to empties. */
    assert_false(exists(dir));
    assert_int_equal(http("GET", url, NULL), 403);
    wait_trash_empty();
    /* What an exit left in the trash goes at the next start (media_trash_sweep). */
    char left[MEDIA_PATH_MAX];
    snprintf(left, sizeof(left), "%s/" MEDIA_DIR "/" MEDIA_TRASH_DIR "/1-1/sd.mp4", T->dir);
    copy_file(sd_path, left);
    assert_int_equal(trash_entries(), 1);
    assert_int_equal(media_trash_sweep(T->app), LAGOON_OK);
    assert_int_equal(trash_entries(), 0);
}

/* ---- GetPlayback ------------------------------------------------------------------------------- */

static void test_playback_access(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    assert_int_equal(playback(cat_tok, id), LAGOON_NOT_FOUND);
    assert_int_equal(playback(bob_tok, id), LAGOON_NOT_FOUND);
    assert_int_equal(share(ann_tok, id, bob, 1), LAGOON_OK);
    assert_int_equal(playback(bob_tok, id), LAGOON_OK);
    assert_int_equal(P.renditions_count, 1);
    assert_int_equal(P.width, 320);
    assert_int_equal(P.duration_seconds, 1);
    assert_true(P.thumbnail_url[0] != '\0');
    assert_int_equal(playback(ann_tok, id + 1000), LAGOON_NOT_FOUND);
    /* Not ready, no renditions, an external link: FAILED_PRECONDITION. */
    set_media(id, MEDIA_FILE_ORIGINAL | MEDIA_FILE_SD, lagoon_v1_Video_Status_PROCESSING);
    assert_int_equal(playback(ann_tok, id), LAGOON_FAILED_PRECONDITION);
    set_media(id, MEDIA_FILE_ORIGINAL, lagoon_v1_Video_Status_READY);
    assert_int_equal(playback(ann_tok, id), LAGOON_FAILED_PRECONDITION);
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "a link");
    snprintf(r.url, sizeof(r.url), "https://example.com/v");
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
    assert_int_equal(playback(ann_tok, V.id), LAGOON_FAILED_PRECONDITION);
    /* A file whose bit is not set is not served, though it is on disk. */
    set_media(id, MEDIA_FILE_ORIGINAL | MEDIA_FILE_SD, lagoon_v1_Video_Status_READY);
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    set_media(id, MEDIA_FILE_ORIGINAL, lagoon_v1_Video_Status_READY);
    assert_int_equal(http("GET", url, NULL), 404);
    /* A file whose bit is set but which is gone is 404 too. */
    set_media(id, MEDIA_FILE_ORIGINAL | MEDIA_FILE_SD, lagoon_v1_Video_Status_READY);
    char p[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, ann, id, MEDIA_SD, p, sizeof(p)), LAGOON_OK);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(http("GET", url, NULL), 404);
    copy_file(sd_path, p);
    assert_int_equal(http("GET", url, NULL), 200);
}

/* ---- path tricks ------------------------------------------------------------------------------- */

static void test_path_tricks(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    const char *q = strchr(url, '?');
    /* A secret beside the media, which no request may reach. */
    char secret[MEDIA_PATH_MAX];
    snprintf(secret, sizeof(secret), "%s/" MEDIA_DIR "/videos/%llu/%llu/passwd", T->dir, (unsigned long long)ann,
             (unsigned long long)id);
    FILE *f = fopen(secret, "w");
    assert_non_null(f);
    fputs("secret\n", f);
    fclose(f);
    unsigned long long u = (unsigned long long)ann, v = (unsigned long long)id;
    char paths[][160] = {
        "/media/videos/%llu/%llu/../%llu/sd.mp4", "/media/videos/%llu/%llu/%%2e%%2e/sd.mp4",
        "/media/videos/%llu/%llu/sd.mp4/extra",  "/media/videos/%llu/%llu/passwd",
        "/media/videos/0%llu/%llu/sd.mp4",       "/media/videos/%llu/0%llu/sd.mp4",
        "/media/videos/%llu/%llu/sd%%2emp4",     "/media/videos/%llu/%llu/./sd.mp4",
        "/media//videos/%llu/%llu/sd.mp4",       "/media/videos/%llu/%llu/",
        "/media/videos/%llu/%llu",               "/media/videos/+%llu/%llu/sd.mp4",
        "/media/../media/videos/%llu/%llu/sd.mp4", "/media/videos/%llu/%llu/SD.MP4",
        "/media/videos/%llu/%llu/sd.mp4%%00",    "/videos/%llu/%llu/sd.mp4",
        "/media/signing.key",                    "/media/uploads/1.part",
        "/media/videos/%llu/%llu/sd.mp4.tmp",    "/media/videos/18446744073709551616/%llu/sd.mp4",
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        char path[200], full[URL_MAX];
        /* (the formats take up to three ids; extra arguments are ignored) */
        snprintf(path, sizeof(path), paths[i], u, v, v);
        snprintf(full, sizeof(full), "%s%s%s", base, path, q);
        int code = http("GET", full, NULL);
        if (code != 404 && code != 400)
            fail_msg("%s: %d", path, code);
        assert_null(memmem(R.body, R.len, "secret", 6));
    }
    unlink(secret);
    /* Methods other than GET and HEAD. */
    char cmd[2 * URL_MAX];
    snprintf(cmd, sizeof(cmd), "curl -s -o /dev/null -w '%%{http_code}' -X POST '%s'", url);
    FILE *p = popen(cmd, "r");
    char code[8] = "";
    assert_true(fread(code, 1, sizeof(code) - 1, p) > 0);
    pclose(p);
    assert_string_equal(code, "405");
}

/* ---- slow clients ---------------------------------------------------------------------------- */

static void ok_reply(struct evhttp_request *req, void *arg)
{
    (void)arg;
    evhttp_send_reply(req, HTTP_OK, "OK", NULL);
}

/* Whether the server has closed fd: its answers read and dropped, up to EOF within wait_ms. */
static int closed_within(int fd, int wait_ms)
{
    char buf[4096];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (int reads = 0; reads < 100 && poll(&p, 1, wait_ms) == 1; reads++) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r <= 0)
            return 1;
    }
    return 0;
}

/* A client trickling a header a byte at a time keeps the connection "in progress" for evhttp's
 * timeout: the listener's request_timeout_s closes it anyway, and an idle keep-alive connection
 * too, so slow clients give their slots back. (A listener of its own with a 1 s bound.) */
static void test_slow_clients_closed(void **state)
{
    (void)state;
    http_listener *l;
    rpc_error err;
    http_listener_config cfg = {.what = "test listener", .host = "127.0.0.1", .max_connections = 4,
                                .timeout_s = 60, .request_timeout_s = 1, .max_headers = 8192,
                                .on_request = ok_reply};
    assert_int_equal(http_listener_start(&cfg, &l, &err), RPC_OK);
    uint16_t port = http_listener_port(l);
    int slow = connect_to(port);
    assert_int_equal(write(slow, "GET / HTTP/1.1\r\nHost: x\r\n", 25), 25);
    /* One header byte every 200 ms, far within evhttp's 60 s: closed by the request bound before
     * 50 of them (10 s) have gone. */
    int closed = 0;
    for (int i = 0; i < 50 && !closed; i++) {
        if (write(slow, "X", 1) != 1)
            closed = 1;
        else
            closed = closed_within(slow, 200);
    }
    assert_true(closed);
    close(slow);
    /* An answered request, then nothing: the idle connection is closed too. */
    int idle = connect_to(port);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(idle, req, strlen(req)), (ssize_t)strlen(req));
    char got[64] = "";
    struct pollfd p = {.fd = idle, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 10000), 1);
    assert_true(read(idle, got, sizeof(got) - 1) > 12);
    assert_true(strncmp(got, "HTTP/1.1 200", 12) == 0);
    assert_true(closed_within(idle, 10000));
    close(idle);
    /* Every slot given back. */
    for (int i = 0; i < 100 && http_listener_connections(l) != 0; i++)
        usleep(50 * 1000);
    assert_int_equal(http_listener_connections(l), 0);
    http_listener_stop(l);
}

/* media_range_parse over hostile values. */
static void test_range_table(void **state)
{
    (void)state;
    static const struct {
        const char *h;
        uint64_t size;
        enum media_range want;
        uint64_t off, len;
    } cases[] = {
        {NULL, 10, MEDIA_RANGE_NONE, 0, 10},
        {"", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=-", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=0-0", 10, MEDIA_RANGE_OK, 0, 1},
        {"bytes=9-9", 10, MEDIA_RANGE_OK, 9, 1},
        {"bytes=10-10", 10, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=0-", 0, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=-1", 0, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=-3", 10, MEDIA_RANGE_OK, 7, 3},
        {"BYTES=2-3", 10, MEDIA_RANGE_OK, 2, 2},
        {"bytes= 2-3", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=2-3 ", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=3-2", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=-2-3", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=0x1-2", 10, MEDIA_RANGE_NONE, 0, 10},
        /* Positions past any file are positions past the file, not malformed ones. */
        {"bytes=99999999999999999999-", 10, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=1-99999999999999999999", 10, MEDIA_RANGE_OK, 1, 9},
        {"bytes=0-18446744073709551615", 10, MEDIA_RANGE_OK, 0, 10},
        {"bytes=0-18446744073709551616", 10, MEDIA_RANGE_OK, 0, 10},
        {"bytes=18446744073709551615-18446744073709551615", 10, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=-18446744073709551615", 10, MEDIA_RANGE_OK, 0, 10},
        {"bytes=-9223372036854775806", 10, MEDIA_RANGE_OK, 0, 10},
        {"bytes=-99999999999999999999999999999999", 10, MEDIA_RANGE_OK, 0, 10},
        {"bytes=9223372036854775000-", 10, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=-0", 10, MEDIA_RANGE_UNSATISFIABLE, 0, 0},
        {"bytes=,", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=5-2", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=--1", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=1--2", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=1-2,3-4", 10, MEDIA_RANGE_NONE, 0, 10},
        {"bytes=1-2,", 10, MEDIA_RANGE_NONE, 0, 10},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t off = 99, len = 99;
        enum media_range r = media_range_parse(cases[i].h, cases[i].size, &off, &len);
        if (r != cases[i].want)
            fail_msg("'%s': %d, expected %d", cases[i].h ? cases[i].h : "(none)", (int)r, (int)cases[i].want);
        if (r == MEDIA_RANGE_OK && (off != cases[i].off || len != cases[i].len))
            fail_msg("'%s': %llu+%llu", cases[i].h, (unsigned long long)off, (unsigned long long)len);
    }
}

/* media_relpath_parse over hostile values: only the forms media_files.h makes. */
static void test_relpath_table(void **state)
{
    (void)state;
    static const struct {
        const char *p;
        int ok;
    } cases[] = {
        {"videos/1/2/sd.mp4", 1},
        {"videos/1/2/hd.mp4", 1},
        {"videos/1/2/original", 1},
        {"videos/1/2/thumbnail.jpg", 1},
        {"profile-images/7/profile.jpg", 1},
        {"profile-images/7/thumbnail.jpg", 1},
        {"videos/18446744073709551615/1/sd.mp4", 1},
        {"videos/18446744073709551616/1/sd.mp4", 0},
        {"videos/0/1/sd.mp4", 0},
        {"videos/01/1/sd.mp4", 0},
        {"videos/1/2/profile.jpg", 0},
        {"profile-images/7/sd.mp4", 0},
        {"profile-images/7/8/profile.jpg", 0},
        {"videos/1/2/sd.mp4/", 0},
        {"videos/1/2//sd.mp4", 0},
        {"videos/1//2/sd.mp4", 0},
        {"videos/1/2/", 0},
        {"videos/1/2", 0},
        {"videos/", 0},
        {"", 0},
        {"uploads/1.part", 0},
        {"videos/-1/2/sd.mp4", 0},
        {"videos/1/2/sd.mp", 0},
        {"videos/1/2/sd.mp4x", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        media_ref ref;
        int ok = media_relpath_parse(cases[i].p, strlen(cases[i].p), &ref) == 0;
        if (ok != cases[i].ok)
            fail_msg("'%s': %d", cases[i].p, ok);
        char back[MEDIA_RELPATH_MAX + 1];
        if (ok) { /* the parse is exact: the canonical form is the input */
            assert_int_equal(media_ref_relpath(&ref, back, sizeof(back)), LAGOON_OK);
            assert_string_equal(back, cases[i].p);
        }
    }
    /* A length that stops short of the NUL is honoured (the parser reads no byte past it). */
    media_ref ref;
    assert_int_equal(media_relpath_parse("videos/1/2/sd.mp4", 16, &ref), -1);
}

/* ---- profiles and accounts ---------------------------------------------------------------------- */

typedef struct marker_arg {
    uint64_t user;
    lagoon_v1_User u;
} marker_arg;

static int set_marker_write(store_txn *t, void *arg, store_error *err)
{
    marker_arg *m = arg;
    int st = store_get(t, &lagoon_table_users, m->user, &m->u, err);
    if (st != LAGOON_OK)
        return st;
    snprintf(m->u.profile_image_url, sizeof(m->u.profile_image_url),
             MEDIA_MARKER "profile-images/%llu/" MEDIA_PROFILE, (unsigned long long)m->user);
    return store_update(t, &lagoon_table_users, &m->u, err);
}

static void test_profile_image_and_account_deletion(void **state)
{
    (void)state;
    char tok[65];
    uint64_t dan = test_verified_user(T, C, "dan", lagoon_v1_Role_STUDENT, tok);
    uint64_t vid = uploaded_video(tok, dan, 0);
    char p[MEDIA_PATH_MAX], vdir[MEDIA_PATH_MAX], pdir[MEDIA_PATH_MAX];
    assert_int_equal(media_profile_path(T->app, dan, MEDIA_PROFILE, p, sizeof(p)), LAGOON_OK);
    copy_file(jpg_path, p);
    assert_int_equal(media_profile_path(T->app, dan, NULL, pdir, sizeof(pdir)), LAGOON_OK);
    assert_int_equal(media_video_path(T->app, dan, vid, NULL, vdir, sizeof(vdir)), LAGOON_OK);
    /* A video of ann's shared with dan, whose link dan holds. */
    uint64_t shared = uploaded_video(ann_tok, ann, 0);
    assert_int_equal(share(ann_tok, shared, dan, 1), LAGOON_OK);
    char shared_url[URL_MAX];
    sd_url(tok, shared, shared_url);
    assert_int_equal(http("GET", shared_url, NULL), 200);
    static marker_arg m;
    m.user = dan;
    store_error err;
    assert_int_equal(store_write(T->app->db, set_marker_write, &m, &err), LAGOON_OK);
    /* Users/Get (a PublicUser) shows a signed URL that serves the image. */
    static lagoon_v1_PublicUser pu;
    lagoon_set_token(C, cat_tok);
    lagoon_v1_GetUserRequest g = {.user_id = dan};
    assert_int_equal(lagoon_Users_Get(C, &g, &pu), LAGOON_OK);
    assert_true(strncmp(pu.profile_image_url, base, strlen(base)) == 0);
    assert_non_null(strstr(pu.profile_image_url, "&k=0&"));
    char url[URL_MAX];
    snprintf(url, sizeof(url), "%s", pu.profile_image_url);
    assert_int_equal(http("GET", url, NULL), 200);
    expect_header("Content-Type", "image/jpeg");
    assert_memory_equal(R.body, jpg_bytes, jpg_size);
    /* Deleting the account removes every file of it after the commit; its links end. */
    lagoon_set_token(C, tok);
    static lagoon_v1_DeleteAccountRequest d;
    snprintf(d.password, sizeof(d.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty e;
    assert_int_equal(lagoon_Users_DeleteAccount(C, &d, &e), LAGOON_OK);
    assert_false(exists(pdir));
    assert_false(exists(vdir));
    wait_trash_empty();
    assert_int_equal(http("GET", url, NULL), 403);
    assert_int_equal(http("GET", shared_url, NULL), 403); /* as if unshared */
    sd_url(ann_tok, shared, shared_url);
    assert_int_equal(http("GET", shared_url, NULL), 200);
}

/* Another app opened and closed in the same process (as tests do) takes nothing from this one:
 * GetPlayback signs with its own app's key and base while the other is open, and profiles keep
 * their signed URLs after the other closes. */
static void test_two_apps_in_one_process(void **state)
{
    (void)state;
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    static marker_arg m;
    m.user = ann;
    store_error err;
    char p[MEDIA_PATH_MAX];
    assert_int_equal(media_profile_path(T->app, ann, MEDIA_PROFILE, p, sizeof(p)), LAGOON_OK);
    copy_file(jpg_path, p);
    assert_int_equal(store_write(T->app->db, set_marker_write, &m, &err), LAGOON_OK);
    test_app *other = test_app_new(test_tweak_shared); /* newer, without a media URL base */
    char url[URL_MAX];
    sd_url(ann_tok, id, url);
    assert_int_equal(http("GET", url, NULL), 200);
    test_app_free(other);
    static lagoon_v1_PublicUser pu;
    lagoon_set_token(C, cat_tok);
    lagoon_v1_GetUserRequest g = {.user_id = ann};
    assert_int_equal(lagoon_Users_Get(C, &g, &pu), LAGOON_OK);
    assert_true(strncmp(pu.profile_image_url, base, strlen(base)) == 0);
    sd_url(ann_tok, id, url);
    assert_int_equal(http("GET", url, NULL), 200);
}

/* ---- lagoon-admin verify ------------------------------------------------------------------------- */

/* Runs lagoon-admin verify on the test's data directory (beside the live server: it only
 * reads): its exit status, its output into out. */
static int verify(char *out, size_t cap)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "%s verify --data %s 2>&1", LAGOON_ADMIN_PATH, T->dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_verify_media(void **state)
{
    (void)state;
    static char out[1 << 16];
    uint64_t id = uploaded_video(ann_tok, ann, 0);
    /* ann's processed profile image: the marker and its file. */
    char prof[MEDIA_PATH_MAX];
    assert_int_equal(media_profile_path(T->app, ann, MEDIA_PROFILE, prof, sizeof(prof)), LAGOON_OK);
    copy_file(jpg_path, prof);
    static marker_arg m;
    m.user = ann;
    store_error err;
    assert_int_equal(store_write(T->app->db, set_marker_write, &m, &err), LAGOON_OK);
    if (verify(out, sizeof(out)) != 0)
        fail_msg("verify of a consistent directory: %s", out);
    /* A video directory without a row, one under the wrong owner, a profile image of no user. */
    char p[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, ann, 999999, MEDIA_SD, p, sizeof(p)), LAGOON_OK);
    copy_file(sd_path, p);
    assert_int_equal(media_video_path(T->app, bob, id, MEDIA_SD, p, sizeof(p)), LAGOON_OK);
    copy_file(sd_path, p);
    assert_int_equal(media_profile_path(T->app, 888888, MEDIA_PROFILE, p, sizeof(p)), LAGOON_OK);
    copy_file(jpg_path, p);
    /* An upload's bytes without its upload. */
    char part[MEDIA_PATH_MAX];
    assert_int_equal(media_upload_path(T->app, 777777, part, sizeof(part)), LAGOON_OK);
    copy_file(jpg_path, part);
    /* A row whose file is missing; a profile whose marker names a missing image. */
    assert_int_equal(unlink(prof), 0);
    assert_int_equal(media_video_path(T->app, ann, id, MEDIA_THUMBNAIL, p, sizeof(p)), LAGOON_OK);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(verify(out, sizeof(out)), 1);
    char want[128];
    snprintf(want, sizeof(want), "videos/%llu/999999", (unsigned long long)ann);
    if (strstr(out, want) == NULL)
        fail_msg("no orphan %s in: %s", want, out);
    snprintf(want, sizeof(want), "videos/%llu/%llu", (unsigned long long)bob, (unsigned long long)id);
    if (strstr(out, want) == NULL)
        fail_msg("no orphan %s in: %s", want, out);
    if (strstr(out, "profile-images/888888") == NULL)
        fail_msg("no orphan profile image in: %s", out);
    if (strstr(out, "uploads/777777.part") == NULL)
        fail_msg("no orphan upload file in: %s", out);
    snprintf(want, sizeof(want), "videos/%llu/%llu/" MEDIA_THUMBNAIL, (unsigned long long)ann, (unsigned long long)id);
    if (strstr(out, want) == NULL)
        fail_msg("no missing %s in: %s", want, out);
    snprintf(want, sizeof(want), "profile-images/%llu/" MEDIA_PROFILE ": missing", (unsigned long long)ann);
    if (strstr(out, want) == NULL)
        fail_msg("no missing %s in: %s", want, out);
    /* Put right, it is clean again. */
    copy_file(jpg_path, p);
    copy_file(jpg_path, prof);
    assert_int_equal(unlink(part), 0);
    assert_int_equal(media_remove_video(T->app, ann, 999999), LAGOON_OK);
    assert_int_equal(media_remove_video(T->app, bob, id), LAGOON_OK);
    char cmd[MEDIA_PATH_MAX + 16];
    assert_int_equal(media_profile_path(T->app, 888888, NULL, p, sizeof(p)), LAGOON_OK);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p);
    run(cmd);
    if (verify(out, sizeof(out)) != 0)
        fail_msg("verify after the repairs: %s", out);
}

/* lagoond's media flags through --check-config (the real binary): what it refuses. */
static void test_lagoond_media_flags(void **state)
{
    (void)state;
    static const struct {
        const char *flags;
        int rc;
    } cases[] = {
        {"--media-listen 8081", 0},
        {"--media-listen 127.0.0.1:8081 --media-url-base https://media.example.com", 0},
        {"--media-listen [::1]:8081", 0},
        {"--media-listen 8081 --media-url-base https://media.example.com/", 2},
        {"--media-listen 8081 --media-url-base ftp://media.example.com", 2},
        {"--media-url-base https://media.example.com", 2},
        {"--media-listen 9100 --admin-listen 9100", 2},
        {"--listen 127.0.0.1:7000 --media-listen 7000", 2},
        {"--media-listen media.example.com:8081", 2},
        {"--media-listen 70000", 2},
        {"--media-url-ttl-s 30", 2},
        {"--media-url-ttl-s 900", 0},
        {"--media-listen 0", 2},
        {"--media-listen 0 --media-url-base https://media.example.com", 0},
        {"--media-listen 8081 --media-url-base https://media.example.com/a?b", 2},
        {"--media-listen 8081 --media-url-base https://media.example.com#x", 2},
        {"--media-listen 8081 --media-url-base 'https://media.example.com/a b'", 2},
        {"--media-listen 8081 --media-url-base https://media.example.com/cdn", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "%s --check-config --data %s/flags %s >/dev/null 2>&1", LAGOOND_PATH, work,
                 cases[i].flags);
        int rc = system(cmd);
        rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
        if (rc != cases[i].rc)
            fail_msg("lagoond %s: exit %d, expected %d", cases[i].flags, rc, cases[i].rc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range_table),
        cmocka_unit_test(test_slow_clients_closed),
        cmocka_unit_test(test_relpath_table),
        cmocka_unit_test(test_whole_file),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_head_and_etag),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_update_retry_thumbnail),
        cmocka_unit_test(test_revoked_by_making_private),
        cmocka_unit_test(test_revoked_by_unsharing),
        cmocka_unit_test(test_revoked_by_deactivating),
        cmocka_unit_test(test_revoked_by_deleting),
        cmocka_unit_test(test_playback_access),
        cmocka_unit_test(test_path_tricks),
        cmocka_unit_test(test_profile_image_and_account_deletion),
        cmocka_unit_test(test_two_apps_in_one_process),
        cmocka_unit_test(test_verify_media),
        cmocka_unit_test(test_lagoond_media_flags),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
