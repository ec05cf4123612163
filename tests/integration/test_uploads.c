/* Uploads end to end through the generated client against the real server and store, with
 * files made by ffmpeg at test time: an upload in several chunks to completion (the video
 * PROCESSING with its original), resumed after a dropped connection and after a SIGKILL of a
 * real lagoond, a bad chunk checksum, a wrong offset (the expected one reported), the size
 * limits, the quota, a file that is not a video, Cancel, expiry on the injected clock, and a
 * profile image. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "scheduler.h"
#include "testserver.h"
#include "uploads.h"

#define HOUR_MS (3600LL * 1000)

static test_app *T;
static lagoon_client *C;
static uint64_t ann, bob;
static char ann_tok[65], bob_tok[65];
static lagoon_v1_Video V; /* big: off the stack */

/* The files ffmpeg made (main): a 1 s video and a PNG image; and random bytes. */
static char media_dir[64];
static uint8_t *video_bytes, *image_bytes, *noise_bytes;
static size_t video_len, image_len, noise_len;

/* ---- helpers ------------------------------------------------------------------------------------ */

static uint8_t *read_whole(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->access_ttl_s = 30u * 24 * 3600; /* the expiry tests move the clock by days */
    acfg->sched_poll_ms = 3600 * 1000;    /* expiry runs when a test calls sched_run_due */
}

static void tweak_small(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->upload_max_bytes = 1u << 20; /* lagoond --upload-max-mib 1 */
    acfg->media_quota_bytes = 3u << 20; /* --media-quota-mib 3 */
}

static void start(void (*tw)(app_config *, rpc_config *))
{
    T = test_app_new(tw);
    C = test_client(T);
    ann = test_user(C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_user(C, "bob", lagoon_v1_Role_STUDENT, bob_tok);
    lagoon_set_token(C, ann_tok);
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int setup_small(void **state)
{
    (void)state;
    start(tweak_small);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

static void part_path(const char *data_dir, uint64_t id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/media/uploads/%llu.part", data_dir, (unsigned long long)id);
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Creates an upload of data for a new video (kind VIDEO) or a profile image. */
static int create(lagoon_client *c, int kind, const uint8_t *data, size_t len, uint64_t size, lagoon_v1_Upload *u)
{
    lagoon_v1_CreateUploadRequest r = lagoon_v1_CreateUploadRequest_init_zero;
    r.kind = (lagoon_v1_Upload_Kind)kind;
    r.size = size;
    snprintf(r.content_type, sizeof(r.content_type), kind == lagoon_v1_Upload_Kind_VIDEO ? "video/mp4" : "image/png");
    r.checksum_algorithm = lagoon_v1_Upload_Checksum_SHA256;
    r.checksum.size = 32;
    crypto_hash_sha256(r.checksum.bytes, data, len);
    if (kind == lagoon_v1_Upload_Kind_VIDEO) {
        r.which_video = lagoon_v1_CreateUploadRequest_new_video_tag;
        snprintf(r.video.new_video.title, sizeof(r.video.new_video.title), "Etude no. 1");
    }
    return lagoon_Uploads_Create(c, &r, u);
}

/* A chunk message over data[off, off+len), its pieces allocated (chunk_free). */
static void chunk_make(lagoon_v1_UploadChunk *m, uint64_t id, const uint8_t *data, uint64_t off, size_t len)
{
    memset(m, 0, sizeof(*m));
    m->upload_id = id;
    m->offset = off;
    size_t pieces = (len + UPLOADS_PIECE_MAX - 1) / UPLOADS_PIECE_MAX;
    m->data = calloc(pieces ? pieces : 1, sizeof(*m->data));
    assert_non_null(m->data);
    for (size_t i = 0; i < pieces; i++) {
        size_t n = len - i * UPLOADS_PIECE_MAX < UPLOADS_PIECE_MAX ? len - i * UPLOADS_PIECE_MAX : UPLOADS_PIECE_MAX;
        m->data[i] = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(n));
        assert_non_null(m->data[i]);
        m->data[i]->size = (pb_size_t)n;
        memcpy(m->data[i]->bytes, data + off + i * UPLOADS_PIECE_MAX, n);
    }
    m->data_count = (pb_size_t)pieces;
    m->sha256.size = 32;
    crypto_hash_sha256(m->sha256.bytes, data + off, len);
}

static void chunk_free(lagoon_v1_UploadChunk *m)
{
    for (pb_size_t i = 0; i < m->data_count; i++)
        free(m->data[i]);
    free(m->data);
}

/* Sends data[from, len) of upload id in chunks of chunk bytes, up to `window` of them
 * unacknowledged, then half-closes; stops after `stop_after` acks when not 0 (the stream is
 * then left to the caller in *open). *last gets the last ack. The stream's final status. */
static int send_range(lagoon_client *c, uint64_t id, const uint8_t *data, size_t from, size_t len, size_t chunk,
                      uint32_t window, uint32_t stop_after, lagoon_stream **open, lagoon_v1_UploadAck *last)
{
    lagoon_stream *s = NULL;
    size_t next = from;
    uint32_t inflight = 0, acks = 0;
    memset(last, 0, sizeof(*last));
    for (uint32_t round = 0; round < 100000; round++) {
        while (next < len && inflight < window) {
            lagoon_v1_UploadChunk m;
            size_t n = len - next < chunk ? len - next : chunk;
            chunk_make(&m, id, data, next, n);
            int st = s == NULL ? lagoon_Uploads_Send(c, &m, &s) : lagoon_Uploads_Send_send(s, &m);
            chunk_free(&m);
            if (st != LAGOON_OK)
                return s ? lagoon_stream_finish(s, NULL) : st;
            next += n;
            inflight++;
        }
        if (next >= len && inflight == 0)
            break;
        lagoon_v1_UploadAck a;
        if (lagoon_Uploads_Send_recv(s, &a) != 1)
            return lagoon_stream_finish(s, NULL);
        *last = a;
        inflight--;
        if (stop_after && ++acks == stop_after) {
            *open = s;
            return LAGOON_OK;
        }
        if (a.complete)
            break;
    }
    lagoon_stream_close_send(s);
    lagoon_v1_UploadAck a;
    for (int i = 0; i < 8 && lagoon_Uploads_Send_recv(s, &a) == 1; i++)
        *last = a;
    return lagoon_stream_finish(s, NULL);
}

static int upload_status(lagoon_client *c, uint64_t id, lagoon_v1_Upload *u)
{
    lagoon_v1_GetUploadRequest r = {.upload_id = id};
    return lagoon_Uploads_Status(c, &r, u);
}

static void get_video(lagoon_client *c, uint64_t id)
{
    lagoon_v1_GetVideoRequest r = {.video_id = id};
    assert_int_equal(lagoon_Videos_Get(c, &r, &V), LAGOON_OK);
}

/* The completed upload's original is data, byte for byte. */
static void expect_original(const char *data_dir, uint64_t user, uint64_t video, const uint8_t *data, size_t len)
{
    char p[512];
    if (video)
        snprintf(p, sizeof(p), "%s/media/videos/%llu/%llu/original", data_dir, (unsigned long long)user,
                 (unsigned long long)video);
    else
        snprintf(p, sizeof(p), "%s/media/profile-images/%llu/original", data_dir, (unsigned long long)user);
    size_t n;
    uint8_t *b = read_whole(p, &n);
    assert_non_null(b);
    assert_int_equal(n, len);
    assert_memory_equal(b, data, len);
    free(b);
}

static void expect_completed(const char *data_dir, uint64_t id, const lagoon_v1_UploadAck *last, uint64_t user)
{
    assert_true(last->complete);
    assert_true(last->video_id != 0);
    char p[512];
    part_path(data_dir, id, p, sizeof(p));
    assert_false(exists(p));
    expect_original(data_dir, user, last->video_id, video_bytes, video_len);
}

/* ---- the tests ------------------------------------------------------------------------------------ */

static void test_upload_in_chunks(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    assert_int_equal(u.offset, 0);
    assert_int_equal(u.size, video_len);
    assert_true(u.expires_at > u.created_at);
    get_video(C, u.video_id);
    assert_int_equal(V.status, lagoon_v1_Video_Status_UPLOADING);
    assert_int_equal(V.source, lagoon_v1_Video_Source_UPLOAD);
    assert_int_equal(V.upload_id, u.id);
    lagoon_v1_UploadAck last;
    size_t chunk = video_len / 5 + 1; /* five or six chunks */
    int st = send_range(C, u.id, video_bytes, 0, video_len, chunk, 2, 0, NULL, &last);
    if (st != LAGOON_OK)
        fail_msg("send: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    expect_completed(T->dir, u.id, &last, ann);
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND); /* done: the row is gone */
    get_video(C, last.video_id);
    assert_int_equal(V.status, lagoon_v1_Video_Status_PROCESSING);
    assert_true(V.media_files & 1u);
    assert_int_equal(V.media_bytes, video_len);
    assert_int_equal(V.width, 320);
    assert_int_equal(V.height, 240);
}

static void test_existing_video(void **state)
{
    (void)state;
    lagoon_v1_CreateVideoRequest vr = lagoon_v1_CreateVideoRequest_init_zero;
    snprintf(vr.title, sizeof(vr.title), "Scales");
    snprintf(vr.url, sizeof(vr.url), "https://example.com/v.mp4");
    assert_int_equal(lagoon_Videos_Create(C, &vr, &V), LAGOON_OK);
    uint64_t vid = V.id;
    lagoon_v1_CreateUploadRequest r = lagoon_v1_CreateUploadRequest_init_zero;
    r.kind = lagoon_v1_Upload_Kind_VIDEO;
    r.size = video_len;
    r.checksum_algorithm = lagoon_v1_Upload_Checksum_BLAKE2B_256;
    r.checksum.size = 32;
    crypto_generichash(r.checksum.bytes, 32, video_bytes, video_len, NULL, 0);
    r.which_video = lagoon_v1_CreateUploadRequest_video_id_tag;
    r.video.video_id = vid;
    /* Not bob's. */
    lagoon_set_token(C, bob_tok);
    lagoon_v1_Upload u;
    assert_int_equal(lagoon_Uploads_Create(C, &r, &u), LAGOON_NOT_FOUND); /* private: not even seen */
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Uploads_Create(C, &r, &u), LAGOON_OK);
    assert_int_equal(u.video_id, vid);
    /* One upload per video at a time. */
    lagoon_v1_Upload u2;
    assert_int_equal(lagoon_Uploads_Create(C, &r, &u2), LAGOON_FAILED_PRECONDITION);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "has an upload in progress"));
    get_video(C, vid);
    assert_int_equal(V.status, lagoon_v1_Video_Status_READY); /* unchanged until completion */
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, 16384, 4, 0, NULL, &last), LAGOON_OK);
    expect_completed(T->dir, u.id, &last, ann);
    get_video(C, vid);
    assert_int_equal(V.status, lagoon_v1_Video_Status_PROCESSING);
    assert_int_equal(V.source, lagoon_v1_Video_Source_UPLOAD);
    assert_int_equal(V.upload_id, u.id);
}

static void test_dropped_connection_resumes(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    size_t chunk = video_len / 6 + 1;
    lagoon_stream *s = NULL;
    lagoon_v1_UploadAck last;
    /* Two chunks acknowledged (a third and a fourth, sent after the first ack, may be in
     * flight), then the connection drops. */
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, chunk, 3, 2, &s, &last), LAGOON_OK);
    assert_int_equal(last.offset, 2 * chunk);
    lagoon_close(C);
    C = test_client(T);
    lagoon_set_token(C, ann_tok);
    /* The server may still be writing the third chunk: Status tells where to go on. */
    lagoon_v1_Upload now;
    assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
    assert_true(now.offset == 2 * chunk || now.offset == 3 * chunk || now.offset == 4 * chunk);
    assert_int_equal(now.size, video_len);
    int st = LAGOON_UNAVAILABLE;
    for (int attempt = 0; attempt < 50; attempt++) { /* a retry while the old stream writes */
        assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
        st = send_range(C, u.id, video_bytes, now.offset, video_len, chunk, 3, 0, NULL, &last);
        if (st != LAGOON_RESOURCE_EXHAUSTED && st != LAGOON_FAILED_PRECONDITION)
            break;
        usleep(20000);
    }
    assert_int_equal(st, LAGOON_OK);
    expect_completed(T->dir, u.id, &last, ann);
}

static void test_bad_chunk_checksum(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, 4096, 1, 1, &(lagoon_stream *){0}, &last),
                     LAGOON_OK);
    /* (the stream above is closed with the client at teardown) */
    lagoon_client *c2 = test_client(T);
    lagoon_set_token(c2, ann_tok);
    lagoon_v1_UploadChunk m;
    chunk_make(&m, u.id, video_bytes, 4096, 4096);
    m.sha256.bytes[0] ^= 1;
    lagoon_stream *s;
    assert_int_equal(lagoon_Uploads_Send(c2, &m, &s), LAGOON_OK);
    chunk_free(&m);
    lagoon_v1_UploadAck a;
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0); /* no ack: the stream ends */
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    assert_non_null(strstr(lagoon_last_error(c2)->detail.message, "sha256"));
    assert_int_equal(upload_status(c2, u.id, &u), LAGOON_OK);
    assert_int_equal(u.offset, 4096);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    assert_int_equal(file_size(p), 4096); /* not kept */
    /* Pipelined (the server may write the three in one batch): the two good chunks count, the
     * bad third ends the stream, and nothing of it is kept. */
    lagoon_v1_UploadChunk ms[3];
    for (int i = 0; i < 3; i++)
        chunk_make(&ms[i], u.id, video_bytes, 4096 + 1000 * (uint64_t)i, 1000);
    ms[2].sha256.bytes[5] ^= 0x40;
    assert_int_equal(lagoon_Uploads_Send(c2, &ms[0], &s), LAGOON_OK);
    assert_int_equal(lagoon_Uploads_Send_send(s, &ms[1]), LAGOON_OK);
    assert_int_equal(lagoon_Uploads_Send_send(s, &ms[2]), LAGOON_OK);
    for (int i = 0; i < 3; i++)
        chunk_free(&ms[i]);
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 1);
    assert_int_equal(a.offset, 5096);
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 1);
    assert_int_equal(a.offset, 6096);
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(upload_status(c2, u.id, &u), LAGOON_OK);
    assert_int_equal(u.offset, 6096);
    assert_int_equal(file_size(p), 6096);
    lagoon_close(c2);
}

/* Sends one chunk message m on a new stream of c: the stream's status (no ack expected). */
static int send_one_refused(lagoon_client *c, lagoon_v1_UploadChunk *m)
{
    lagoon_stream *s;
    int st = lagoon_Uploads_Send(c, m, &s);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_UploadAck a;
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0);
    return lagoon_stream_finish(s, NULL);
}

/* A chunk of more than UPLOADS_CHUNK_PIECES items (refused as it is decoded), or with an item
 * over UPLOADS_PIECE_MAX (uploads.options' max_size does not bind a pointer field's decoding:
 * the handler checks it), is INVALID_ARGUMENT on `data` and nothing of it is kept. */
static void test_chunk_shape_limits(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    /* UPLOADS_CHUNK_PIECES + 1 items of 100 bytes. */
    lagoon_v1_UploadChunk m;
    memset(&m, 0, sizeof(m));
    m.upload_id = u.id;
    size_t n = UPLOADS_CHUNK_PIECES + 1;
    m.data = calloc(n, sizeof(*m.data));
    assert_non_null(m.data);
    for (size_t i = 0; i < n; i++) {
        m.data[i] = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(100));
        assert_non_null(m.data[i]);
        m.data[i]->size = 100;
        memcpy(m.data[i]->bytes, video_bytes + 100 * i, 100);
    }
    m.data_count = (pb_size_t)n;
    m.sha256.size = 32;
    crypto_hash_sha256(m.sha256.bytes, video_bytes, 100 * n);
    assert_int_equal(send_one_refused(C, &m), LAGOON_INVALID_ARGUMENT);
    assert_string_equal(lagoon_last_error(C)->detail.violations[0].field, "data");
    chunk_free(&m);
    /* One item of UPLOADS_PIECE_MAX + 1 bytes. */
    size_t big = UPLOADS_PIECE_MAX + 1;
    memset(&m, 0, sizeof(m));
    m.upload_id = u.id;
    m.data = calloc(1, sizeof(*m.data));
    assert_non_null(m.data);
    m.data[0] = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(big));
    assert_non_null(m.data[0]);
    m.data[0]->size = (pb_size_t)big;
    assert_true(noise_len >= big);
    memcpy(m.data[0]->bytes, noise_bytes, big);
    m.data_count = 1;
    m.sha256.size = 32;
    crypto_hash_sha256(m.sha256.bytes, noise_bytes, big);
    assert_int_equal(send_one_refused(C, &m), LAGOON_INVALID_ARGUMENT);
    assert_non_null(strstr(lagoon_last_error(C)->detail.violations[0].description, "UPLOADS_PIECE_MAX"));
    assert_string_equal(lagoon_last_error(C)->detail.violations[0].field, "data");
    chunk_free(&m);
    lagoon_v1_Upload now;
    assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
    assert_int_equal(now.offset, 0);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    assert_true(file_size(p) <= 0);
}

static void test_wrong_offset(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_v1_UploadChunk m;
    chunk_make(&m, u.id, video_bytes, 1000, 2000);
    lagoon_stream *s;
    assert_int_equal(lagoon_Uploads_Send(C, &m, &s), LAGOON_OK);
    chunk_free(&m);
    lagoon_v1_UploadAck a;
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 1);
    assert_true(a.refused);
    assert_int_equal(a.offset, 0); /* the machine-readable expected offset */
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0); /* then the end */
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_FAILED_PRECONDITION);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "expected_offset 0"));
    /* Past the declared size. */
    uint8_t *big = calloc(1, video_len + 10);
    memcpy(big, video_bytes, video_len);
    chunk_make(&m, u.id, big, 0, video_len + 10);
    assert_int_equal(lagoon_Uploads_Send(C, &m, &s), LAGOON_OK);
    chunk_free(&m);
    free(big);
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    /* Another user's upload does not exist for them. */
    lagoon_set_token(C, bob_tok);
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND);
    chunk_make(&m, u.id, video_bytes, 0, 100);
    assert_int_equal(lagoon_Uploads_Send(C, &m, &s), LAGOON_OK);
    chunk_free(&m);
    assert_int_equal(lagoon_Uploads_Send_recv(s, &a), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_NOT_FOUND);
}

static void test_size_limits(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    /* upload-max-mib 1 */
    test_expect(C, create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, (1u << 20) + 1, &u),
                LAGOON_INVALID_ARGUMENT, "size", __LINE__);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, 1u << 20, &u), LAGOON_OK);
    /* A profile image: UPLOADS_PROFILE_IMAGE_MAX whatever the video limit. */
    test_expect(C, create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, UPLOADS_PROFILE_IMAGE_MAX + 1, &u),
                LAGOON_INVALID_ARGUMENT, "size", __LINE__);
    /* A video needs its video; a profile image has none; the checksum is 32 bytes. */
    lagoon_v1_CreateUploadRequest r = lagoon_v1_CreateUploadRequest_init_zero;
    r.kind = lagoon_v1_Upload_Kind_VIDEO;
    r.size = 10;
    r.checksum_algorithm = lagoon_v1_Upload_Checksum_SHA256;
    r.checksum.size = 16;
    test_expect(C, lagoon_Uploads_Create(C, &r, &u), LAGOON_INVALID_ARGUMENT, "video_id", __LINE__);
    assert_true(test_has_violation(C, "checksum"));
}

static void test_quota(void **state)
{
    (void)state;
    /* media-quota-mib 3: two uploads of 1 MiB, and one of a byte more than what is left. */
    lagoon_v1_Upload u1, u2, u3;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, 1u << 20, &u1), LAGOON_OK);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, 1u << 20, &u2), LAGOON_OK);
    uint64_t left = (3u << 20) - (2u << 20) - video_len; /* room beside a completed video of video_len */
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u3), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u3.id, video_bytes, 0, video_len, 65536, 4, 0, NULL, &last), LAGOON_OK);
    assert_true(last.complete); /* its media_bytes count now, instead of its declared size */
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, left + 1, &u3),
                     LAGOON_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "quota"));
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, left, &u3), LAGOON_OK);
    /* Per user: bob's are his own. */
    lagoon_set_token(C, bob_tok);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, 1u << 20, &u3), LAGOON_OK);
    lagoon_set_token(C, ann_tok);
    /* A cancelled upload gives its room back. */
    lagoon_v1_CancelUploadRequest cr = {.upload_id = u1.id};
    lagoon_v1_UploadsEmpty e;
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_OK);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, 1u << 20, &u1), LAGOON_OK);
    (void)u2;
    /* Full to the byte; deleting the completed video gives its bytes back. */
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, 1, &u3),
                     LAGOON_RESOURCE_EXHAUSTED);
    lagoon_v1_DeleteVideoRequest dr = {.video_id = last.video_id};
    lagoon_v1_VideosEmpty ve;
    assert_int_equal(lagoon_Videos_Delete(C, &dr, &ve), LAGOON_OK);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, video_len, &u3), LAGOON_OK);
}

/* A user has at most UPLOADS_OPEN_MAX uploads open (however small): one more is
 * RESOURCE_EXHAUSTED; another user is not affected; a cancel makes room. */
static void test_open_uploads_limit(void **state)
{
    (void)state;
    lagoon_v1_Upload u, first = {0};
    for (int i = 0; i < UPLOADS_OPEN_MAX; i++) {
        assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, 1, 1, &u), LAGOON_OK);
        if (i == 0)
            first = u;
    }
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, 1, 1, &u), LAGOON_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "UPLOADS_OPEN_MAX"));
    lagoon_set_token(C, bob_tok);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, 1, 1, &u), LAGOON_OK);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_CancelUploadRequest cr = {.upload_id = first.id};
    lagoon_v1_UploadsEmpty e;
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_OK);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, 1, 1, &u), LAGOON_OK);
}

static void test_not_a_video(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, noise_bytes, noise_len, noise_len, &u), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, noise_bytes, 0, noise_len, 8192, 4, 0, NULL, &last),
                     LAGOON_INVALID_ARGUMENT);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "not a video"));
    assert_false(last.complete);
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    assert_false(exists(p));
    get_video(C, u.video_id); /* the video made for it says why */
    assert_int_equal(V.status, lagoon_v1_Video_Status_ERROR);
    assert_non_null(strstr(V.error_reason, "not a video"));
}

static void test_whole_checksum_mismatch(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    /* The checksum of other bytes than those sent. */
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, noise_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, 65536, 4, 0, NULL, &last),
                     LAGOON_INVALID_ARGUMENT);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "SHA-256"));
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND);
}

/* Create with an idempotency key: a retry answers the same upload while it lasts; once it is
 * cancelled, the retry makes a new one. */
static void test_create_retry(void **state)
{
    (void)state;
    lagoon_v1_Upload u1, u2, u3;
    lagoon_set_idempotency_key(C, "upload-etude-1");
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u1), LAGOON_OK);
    lagoon_set_idempotency_key(C, "upload-etude-1");
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u2), LAGOON_OK);
    assert_int_equal(u2.id, u1.id);
    assert_int_equal(u2.video_id, u1.video_id);
    lagoon_v1_CancelUploadRequest cr = {.upload_id = u1.id};
    lagoon_v1_UploadsEmpty e;
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_OK);
    lagoon_set_idempotency_key(C, "upload-etude-1");
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u3), LAGOON_OK);
    assert_true(u3.id != u1.id);
}

static int part_gone(void *arg);

static void test_cancel(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_stream *s = NULL;
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, 4096, 1, 1, &s, &last), LAGOON_OK);
    lagoon_stream_cancel(s);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    assert_int_equal(file_size(p), 4096);
    lagoon_v1_CancelUploadRequest cr = {.upload_id = u.id};
    lagoon_v1_UploadsEmpty e;
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_NOT_FOUND);
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_OK);
    assert_true(test_wait_for(part_gone, p, 5000)); /* the sweeper, woken by the commit */
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND);
    get_video(C, u.video_id);
    assert_int_equal(V.status, lagoon_v1_Video_Status_ERROR);
    assert_int_equal(lagoon_Uploads_Cancel(C, &cr, &e), LAGOON_NOT_FOUND);
}

/* No room: the process's file size limit (RLIMIT_FSIZE; EFBIG, as a full disk's ENOSPC) stops
 * a chunk half-way through its write. RESOURCE_EXHAUSTED, the offset unmoved, the file cut
 * back to it; with room again the same chunk goes. */
static void test_no_room(void **state)
{
    (void)state;
    size_t len = 3u << 20;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    randombytes_buf(data, len);
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, data, len, len, &u), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, data, 0, 1u << 20, 1u << 20, 1, 0, NULL, &last), LAGOON_OK);
    char p[512], mdb[512];
    part_path(T->dir, u.id, p, sizeof(p));
    snprintf(mdb, sizeof(mdb), "%s/data.mdb", T->dir);
    long limit = (3l << 20) / 2; /* half-way through the second chunk */
    assert_true(file_size(mdb) < limit); /* the store writes no further than that meanwhile */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)limit;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int st = send_range(C, u.id, data, 1u << 20, 2u << 20, 1u << 20, 1, 0, NULL, &last);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(st, LAGOON_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "file size limit"));
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_OK);
    assert_int_equal(u.offset, 1u << 20);
    assert_int_equal(file_size(p), 1l << 20); /* nothing half-written */
    assert_int_equal(send_range(C, u.id, data, 1u << 20, 2u << 20, 1u << 20, 1, 0, NULL, &last), LAGOON_OK);
    assert_int_equal(last.offset, 2u << 20);
    free(data);
}

static int part_gone(void *arg)
{
    return !exists((const char *)arg);
}

static void run_due(void)
{
    uint32_t ran;
    store_error err;
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
}

static void test_expiry(void **state)
{
    (void)state;
    lagoon_v1_Upload u, kept;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &kept), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, 4096, 4096, 1, 0, NULL, &last), LAGOON_OK);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    assert_true(exists(p));
    /* 23 hours on, `kept` is touched: its expiry moves a day past that. */
    test_clock_advance(T, 23 * HOUR_MS);
    run_due();
    assert_int_equal(send_range(C, kept.id, video_bytes, 0, 4096, 4096, 1, 0, NULL, &last), LAGOON_OK);
    test_clock_advance(T, 2 * HOUR_MS);
    run_due();
    assert_int_equal(upload_status(C, u.id, &u), LAGOON_NOT_FOUND);
    assert_int_equal(upload_status(C, kept.id, &kept), LAGOON_OK);
    assert_int_equal(kept.offset, 4096);
    assert_true(test_wait_for(part_gone, p, 5000)); /* the sweeper, after the job's commit */
    get_video(C, u.video_id);
    assert_int_equal(V.status, lagoon_v1_Video_Status_ERROR);
    assert_non_null(strstr(V.error_reason, "expired"));
    test_clock_advance(T, 23 * HOUR_MS);
    run_due();
    assert_int_equal(upload_status(C, kept.id, &kept), LAGOON_NOT_FOUND);
}

static void test_orphan_bytes_swept_at_start(void **state)
{
    (void)state;
    char p[512];
    part_path(T->dir, 987654, p, sizeof(p));
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/media", T->dir);
    mkdir(dir, 0750); /* (absent until a first chunk: made here, either may exist) */
    snprintf(dir, sizeof(dir), "%s/media/uploads", T->dir);
    mkdir(dir, 0750);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("left by a crash", f);
    fclose(f);
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
    assert_false(exists(p));
}

static void test_profile_image(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, image_bytes, image_len, image_len, &u), LAGOON_OK);
    assert_int_equal(u.video_id, 0);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, image_bytes, 0, image_len, 1u << 20, 4, 0, NULL, &last), LAGOON_OK);
    assert_true(last.complete);
    assert_int_equal(last.video_id, 0);
    expect_original(T->dir, ann, 0, image_bytes, image_len);
    /* A video is no profile image. */
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_PROFILE_IMAGE, video_bytes, video_len, video_len, &u), LAGOON_OK);
    assert_int_equal(send_range(C, u.id, video_bytes, 0, video_len, 1u << 20, 4, 0, NULL, &last),
                     LAGOON_INVALID_ARGUMENT);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "not a still image"));
}

/* Two Send streams of one upload at once (a reconnect racing the old connection), each with
 * its window full of the same chunks, and a third user's stream naming the upload: the
 * stranger is NOT_FOUND; of the two, each ack is kept (the committed offset is never below
 * any offset either acknowledged), a stream either goes on or is refused (busy, or a wrong
 * offset), and the file is exactly the committed bytes; the upload then completes with the
 * right file. Several rounds, so that the streams really overlap. */
static void test_two_streams_at_once(void **state)
{
    (void)state;
    const size_t piece = 512; /* 8 rounds of 4: about half the video */
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_client *c2 = test_client(T), *cb = test_client(T);
    lagoon_set_token(c2, ann_tok);
    lagoon_set_token(cb, bob_tok);
    char p[512];
    part_path(T->dir, u.id, p, sizeof(p));
    uint64_t acked = 0;
    for (int round = 0; round < 8; round++) {
        lagoon_v1_Upload now;
        assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
        assert_true(now.offset >= acked);
        if (now.offset + 4 * piece > video_len)
            break;
        lagoon_stream *s[3] = {NULL, NULL, NULL};
        lagoon_client *cs[3] = {C, c2, cb};
        for (int k = 0; k < 4; k++) {
            for (int j = 0; j < 3; j++) {
                lagoon_v1_UploadChunk m;
                chunk_make(&m, u.id, video_bytes, now.offset + piece * (uint64_t)k, piece);
                if (s[j] == NULL)
                    (void)lagoon_Uploads_Send(cs[j], &m, &s[j]);
                else
                    (void)lagoon_Uploads_Send_send(s[j], &m);
                chunk_free(&m);
            }
        }
        for (int j = 0; j < 3; j++) {
            lagoon_stream_close_send(s[j]);
            lagoon_v1_UploadAck a;
            for (int i = 0; i < 8 && lagoon_Uploads_Send_recv(s[j], &a) == 1; i++) {
                if (j == 2)
                    fail_msg("another user's stream got an ack");
                if (!a.refused && a.offset > acked)
                    acked = a.offset;
            }
            int st = lagoon_stream_finish(s[j], NULL);
            if (j == 2)
                assert_int_equal(st, LAGOON_NOT_FOUND);
            else if (st != LAGOON_OK && st != LAGOON_RESOURCE_EXHAUSTED && st != LAGOON_FAILED_PRECONDITION)
                fail_msg("stream %d: %s (%s)", j, lagoon_status_name(st), lagoon_last_error(cs[j])->detail.message);
        }
        assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
        assert_true(now.offset >= acked);
        assert_int_equal(file_size(p), (long)now.offset);
    }
    assert_true(acked > 0);
    lagoon_v1_Upload now;
    assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(C, u.id, video_bytes, now.offset, video_len, 8192, 4, 0, NULL, &last), LAGOON_OK);
    expect_completed(T->dir, u.id, &last, ann);
    lagoon_close(c2);
    lagoon_close(cb);
}

/* test_completion_after_publish: the upload's offset at its size, as its last chunk's commit. */
static int offset_to_end(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_Upload row;
    int st = store_get(t, &lagoon_table_uploads, *(uint64_t *)arg, &row, err);
    if (st != LAGOON_OK)
        return st;
    row.offset = row.size;
    return store_update(t, &lagoon_table_uploads, &row, err);
}

/* A crash after the file was published and before the completing write committed: every byte
 * committed, the .part already renamed to the video's original. Made here by hand (the upload
 * acknowledged but for its last 100 bytes, which are written, fsynced and committed the way
 * the server would, then the rename), then the server restarts. The client's chunk with no
 * data at offset == size completes it from the published file. */
static void test_completion_after_publish(void **state)
{
    (void)state;
    lagoon_v1_Upload u;
    assert_int_equal(create(C, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    lagoon_v1_UploadAck last;
    size_t head = video_len - 100;
    assert_int_equal(send_range(C, u.id, video_bytes, 0, head, 8192, 4, 0, NULL, &last), LAGOON_OK);
    assert_int_equal(last.offset, head);
    char p[512], fin[600], dir[512];
    part_path(T->dir, u.id, p, sizeof(p));
    FILE *f = fopen(p, "ab");
    assert_non_null(f);
    assert_int_equal(fwrite(video_bytes + head, 1, 100, f), 100);
    assert_int_equal(fsync(fileno(f)), 0);
    fclose(f);
    uint64_t id = u.id;
    store_error err;
    assert_int_equal(store_write(T->app->db, offset_to_end, &id, &err), LAGOON_OK);
    snprintf(dir, sizeof(dir), "%s/media/videos", T->dir);
    mkdir(dir, 0750); /* (each may exist already) */
    snprintf(dir, sizeof(dir), "%s/media/videos/%llu", T->dir, (unsigned long long)ann);
    mkdir(dir, 0750);
    snprintf(dir, sizeof(dir), "%s/media/videos/%llu/%llu", T->dir, (unsigned long long)ann,
             (unsigned long long)u.video_id);
    mkdir(dir, 0750);
    snprintf(fin, sizeof(fin), "%s/original", dir);
    assert_int_equal(rename(p, fin), 0);
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_Upload now;
    assert_int_equal(upload_status(C, u.id, &now), LAGOON_OK);
    assert_int_equal(now.offset, video_len);
    lagoon_v1_UploadChunk m;
    memset(&m, 0, sizeof(m));
    m.upload_id = u.id;
    m.offset = video_len;
    lagoon_stream *s;
    assert_int_equal(lagoon_Uploads_Send(C, &m, &s), LAGOON_OK);
    lagoon_stream_close_send(s);
    int got = lagoon_Uploads_Send_recv(s, &last);
    lagoon_v1_UploadAck more;
    assert_int_equal(lagoon_Uploads_Send_recv(s, &more), 0); /* then the end */
    int st = lagoon_stream_finish(s, NULL);
    if (st != LAGOON_OK)
        fail_msg("got %d, %s: %s", got, lagoon_status_name(st), lagoon_last_error(C)->detail.message);
    assert_int_equal(got, 1);
    assert_true(last.complete);
    assert_int_equal(last.video_id, u.video_id);
    expect_completed(T->dir, u.id, &last, ann);
    assert_int_equal(upload_status(C, u.id, &now), LAGOON_NOT_FOUND);
    get_video(C, u.video_id);
    assert_int_equal(V.status, lagoon_v1_Video_Status_PROCESSING);
}

/* ---- a real lagoond, killed ------------------------------------------------------------------------ */

typedef struct daemon {
    pid_t pid;
    FILE *err; /* lagoond's stderr */
    uint16_t port;
} daemon_t;

/* Starts lagoond on data and reads its stderr up to the line that names its port. */
static void daemon_start(daemon_t *d, const char *data)
{
    memset(d, 0, sizeof(*d));
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    d->pid = fork();
    assert_true(d->pid >= 0);
    if (d->pid == 0) {
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        execl(LAGOOND_PATH, LAGOOND_PATH, "--listen", "127.0.0.1:0", "--data", data, "--threads", "1",
              "--argon2-ops", "1", "--argon2-mem-kib", "8", (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    d->err = fdopen(pipefd[0], "r");
    assert_non_null(d->err);
    char line[512];
    const char *mark = "listening on 127.0.0.1:";
    /* Bounded: lagoond writes a handful of lines before it listens, and EOF ends the loop. */
    for (int n = 0; n < 1000 && d->port == 0 && fgets(line, sizeof(line), d->err) != NULL; n++) {
        const char *p = strstr(line, mark);
        if (p != NULL)
            d->port = (uint16_t)atoi(p + strlen(mark));
    }
    if (d->port == 0)
        fail_msg("lagoond did not start");
}

static void daemon_kill(daemon_t *d)
{
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    fclose(d->err);
}

static lagoon_client *daemon_client(const daemon_t *d, const char *token)
{
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", d->port, NULL, &c, NULL), LAGOON_OK);
    if (token)
        lagoon_set_token(c, token);
    return c;
}

static void test_sigkill_resumes(void **state)
{
    (void)state;
    char data[64];
    snprintf(data, sizeof(data), "/tmp/lagoon-uploads-XXXXXX");
    assert_non_null(mkdtemp(data));
    daemon_t *d = malloc(sizeof(*d));
    assert_non_null(d);
    daemon_start(d, data);
    lagoon_client *c = daemon_client(d, NULL);
    char tok[65];
    uint64_t me = test_user(c, "kim", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(c, tok);
    lagoon_v1_Upload u;
    assert_int_equal(create(c, lagoon_v1_Upload_Kind_VIDEO, video_bytes, video_len, video_len, &u), LAGOON_OK);
    size_t chunk = video_len / 4 + 1;
    lagoon_stream *s = NULL;
    lagoon_v1_UploadAck last;
    assert_int_equal(send_range(c, u.id, video_bytes, 0, video_len, chunk, 1, 1, &s, &last), LAGOON_OK);
    assert_int_equal(last.offset, chunk);
    daemon_kill(d); /* right after the ack */
    lagoon_close(c);
    daemon_start(d, data);
    c = daemon_client(d, tok); /* (tokens survive: sessions are rows) */
    lagoon_v1_Upload now;
    assert_int_equal(upload_status(c, u.id, &now), LAGOON_OK);
    assert_int_equal(now.offset, chunk);
    assert_int_equal(send_range(c, u.id, video_bytes, now.offset, video_len, chunk, 2, 0, NULL, &last), LAGOON_OK);
    expect_completed(data, u.id, &last, me);
    lagoon_close(c);
    daemon_kill(d);
    free(d);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", data);
    assert_int_equal(system(cmd), 0);
}

/* ---- main ---------------------------------------------------------------------------------------- */

static void make_media(void)
{
    snprintf(media_dir, sizeof(media_dir), "/tmp/lagoon-upfiles-XXXXXX");
    if (mkdtemp(media_dir) == NULL)
        abort();
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && ffmpeg -loglevel error -nostdin -f lavfi -i testsrc=duration=1:size=320x240:rate=10 "
             "-f lavfi -i sine=duration=1 -c:v libx264 -preset ultrafast -c:a aac -shortest out.mp4 && "
             "ffmpeg -loglevel error -nostdin -f lavfi -i testsrc=size=96x96 -frames:v 1 out.png",
             media_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "ffmpeg could not make the test media\n");
        exit(1);
    }
    char p[128];
    snprintf(p, sizeof(p), "%s/out.mp4", media_dir);
    video_bytes = read_whole(p, &video_len);
    snprintf(p, sizeof(p), "%s/out.png", media_dir);
    image_bytes = read_whole(p, &image_len);
    if (video_bytes == NULL || image_bytes == NULL || video_len < 8192)
        abort();
    noise_len = 50000;
    noise_bytes = malloc(noise_len);
    randombytes_buf(noise_bytes, noise_len);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    make_media();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload_in_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_existing_video, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection_resumes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_chunk_checksum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunk_shape_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_limits, setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_quota, setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_open_uploads_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_video, setup, teardown),
        cmocka_unit_test_setup_teardown(test_whole_checksum_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphan_bytes_swept_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_profile_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_streams_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completion_after_publish, setup, teardown),
        cmocka_unit_test(test_sigkill_resumes),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", media_dir);
    if (system(cmd) != 0)
        failed++;
    free(video_bytes);
    free(image_bytes);
    free(noise_bytes);
    return failed;
}
