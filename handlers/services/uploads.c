/* Uploads service: resumable uploads, modelled on tus (docs/API.md says how its headers map).
 *
 * Create records the upload (an Upload row: declared size, whole-file checksum, the video it
 * is for; a new video is made at once with status UPLOADING) after the size limits and the
 * owner's storage quota. Send is one bidirectional call of chunks: each chunk is checked
 * against its own SHA-256, written with pwrite at its offset into media/uploads/{id}.part,
 * fsynced, and only then is the upload's offset moved forward in the store and the chunk
 * acknowledged (the chunks that arrived together share the fsync and the commit). So an acknowledged offset survives a crash of the process or the machine, and
 * a dropped connection loses at most the chunks not yet acknowledged: Status says where to
 * resume. A chunk at any other offset is FAILED_PRECONDITION, after an ack marked `refused`
 * whose offset is the one expected.
 *
 * File work never runs on a loop thread: a stream's chunks are handed to the work lane
 * (rpc_call_defer), one job at a time per stream, which drains them in order. Two streams of
 * the same upload (a reconnect while the old connection's last chunk is still being written)
 * take turns (writing[] below): the one that finds the upload busy is told to retry, and the
 * holder reads the committed offset only once it holds it, so the file is never cut back below
 * what another stream committed.
 *
 * Completion, when the committed offset reaches the size, on the lane: the whole file's digest
 * (the stream hashes as it goes when it saw the file from byte 0; a resumed upload's file is
 * read again), media_probe (a video needs a video stream, a profile image a still image), then
 * media_publish to the video's (profile's) `original`, and ONE write that sets the video
 * PROCESSING with its upload_id, media files and bytes, deletes the upload and queues the
 * processing (media_enqueue); media_kick after it commits. A file that fails the checks is
 * INVALID_ARGUMENT and its upload is deleted with its bytes; a video Create made for it is set
 * to ERROR with the reason (an existing video stays as it was).
 *
 * Bytes whose row is gone are deleted by the module's sweeper: the rows go in transactions
 * (Cancel, expiry, completion, a deleted video or account cascading), the files after the
 * commit, so the sweeper runs at start-up and after every commit that deleted an upload, and
 * deletes each .part without a row. A crash between the two leaves nothing that outlives the
 * next start. */
#define _GNU_SOURCE /* sync_file_range */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "lagoon_handlers.h"
#include "log.h"
#include "media.h"
#include "media_files.h"
#include "scheduler.h"
#include "uploads.h"
#include "videos.h"

/* Digests: SHA-256 and BLAKE2b-256 are both 32 bytes. */
#define UPLOADS_DIGEST_BYTES 32
/* Uploads whose chunk is being written at once, all streams together (at most one chunk per
 * upload at a time): one per work-lane thread is all that can happen; the rest is room. */
#define UPLOADS_WRITING_MAX 256
/* Pages of a user's videos, and of their uploads, the quota reads at most (STORE_PAGE_SIZE_MAX
 * rows each): far more videos than anyone records. */
#define UPLOADS_QUOTA_PAGES_MAX 10000
/* The block a file is read back in (a resumed upload's digest at completion). */
#define UPLOADS_READ_BLOCK (1u << 20)
/* Directory entries one sweep looks at, at most: uploads open at once are far fewer. */
#define UPLOADS_SWEEP_MAX 1000000
/* Bytes of chunks received and not yet written, all streams together: each stream holds at
 * most UPLOADS_SEND_INFLIGHT_MAX chunks, which the RPC layer's memory limits do not count (they
 * are the handler's), so this bounds them all: 32 streams' full windows. Past it a chunk is
 * RESOURCE_EXHAUSTED with retry-after. */
#define UPLOADS_QUEUED_BYTES_MAX (256u << 20)
/* A client retrying a chunk that another stream of the same upload is writing waits this long. */
#define UPLOADS_BUSY_RETRY_MS 100
/* Completions running at once, server-wide. A completion holds a work-lane thread for seconds
 * (a resumed 2 GiB upload is read back whole to hash it, then ffprobe runs), and the work lane
 * (rpc_config.workers, 4 by default) is also where every stream's chunks are written: without
 * a bound, a handful of uploads finishing together would stop every other upload's chunks.
 * Past it the last chunk is still acknowledged (its bytes are committed) and the stream ends
 * RESOURCE_EXHAUSTED with retry-after; the client asks again with a chunk with no data at
 * offset == size. */
#define UPLOADS_COMPLETING_MAX 2
/* A client whose completion found UPLOADS_COMPLETING_MAX running waits this long. */
#define UPLOADS_COMPLETING_RETRY_MS 1000

_Static_assert(UPLOADS_CHUNK_PIECES * UPLOADS_PIECE_MAX == UPLOADS_CHUNK_MAX,
               "a chunk is UploadChunk.data's max_count items of its max_size (uploads.options)");
_Static_assert(sizeof(((lagoon_v1_UploadChunk *)0)->sha256.bytes) == UPLOADS_DIGEST_BYTES, "UploadChunk.sha256");
_Static_assert(sizeof(((lagoon_v1_Upload *)0)->checksum.bytes) == UPLOADS_DIGEST_BYTES, "Upload.checksum");
_Static_assert(crypto_hash_sha256_BYTES == UPLOADS_DIGEST_BYTES, "SHA-256 is 32 bytes");

/* ---- the module: expiry, the sweeper, the uploads being written ---------------------------------- */

typedef struct uploads_state {
    app *a;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int stop;  /* the sweeper ends */
    int dirty; /* an upload's row was deleted since the last sweep */
    uint64_t writing[UPLOADS_WRITING_MAX]; /* uploads with a chunk being written (0 = free) */
    atomic_size_t queued_bytes;            /* chunks' bytes held by the streams (UPLOADS_QUEUED_BYTES_MAX) */
    atomic_uint completing;                /* completions running (UPLOADS_COMPLETING_MAX) */
} uploads_state;

static uint64_t expiry_ms(const app *a)
{
    return (uint64_t)(a->cfg.upload_expiry_s ? a->cfg.upload_expiry_s : UPLOADS_EXPIRY_S_DEFAULT) * 1000u;
}

static uint64_t max_bytes(const app *a)
{
    return a->cfg.upload_max_bytes ? a->cfg.upload_max_bytes : UPLOADS_MAX_BYTES_DEFAULT;
}

static uint64_t quota_bytes(const app *a)
{
    return a->cfg.media_quota_bytes ? a->cfg.media_quota_bytes : UPLOADS_QUOTA_BYTES_DEFAULT;
}

/* Deletes every media/uploads/N.part whose upload N has no row. Runs where it may block (the
 * sweeper's thread, the module's start). */
static void sweep(app *a)
{
    char dir[MEDIA_PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s/" MEDIA_DIR "/uploads", a->data_dir) >= (int)sizeof(dir))
        return;
    DIR *d = opendir(dir);
    if (d == NULL)
        return; /* none yet */
    struct dirent *e;
    for (uint32_t seen = 0; seen < UPLOADS_SWEEP_MAX && (e = readdir(d)) != NULL; seen++) {
        char *end;
        errno = 0;
        unsigned long long id = strtoull(e->d_name, &end, 10);
        if (errno != 0 || id == 0 || end == e->d_name || strcmp(end, ".part") != 0)
            continue; /* not one of ours: left alone */
        store_txn *t;
        store_error err;
        if (store_read_begin(a->db, &t, &err) != LAGOON_OK)
            break; /* the next sweep will do it */
        lagoon_v1_Upload u;
        int st = store_get(t, &lagoon_table_uploads, id, &u, &err);
        store_read_end(t);
        if (st != LAGOON_NOT_FOUND)
            continue;
        char p[MEDIA_PATH_MAX];
        if (media_upload_path(a, id, p, sizeof(p)) == LAGOON_OK && unlink(p) == 0)
            log_msg(LOG_INFO, "uploads: deleted the bytes of upload %llu, which has no row", id);
    }
    closedir(d);
}

/* The store's commit announcements (writer thread; must not block): an upload's row deleted
 * wakes the sweeper. */
static void on_commit(void *arg, const store_change *changes, size_t n)
{
    uploads_state *s = arg;
    for (size_t i = 0; i < n; i++) {
        if (changes[i].table == &lagoon_table_uploads && changes[i].kind == STORE_DELETED) {
            pthread_mutex_lock(&s->mu);
            s->dirty = 1;
            pthread_cond_signal(&s->cv);
            pthread_mutex_unlock(&s->mu);
            return;
        }
    }
}

static void *sweeper_main(void *arg)
{
    uploads_state *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (!s->dirty) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        s->dirty = 0;
        pthread_mutex_unlock(&s->mu);
        sweep(s->a);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int uploads_start(app *a, void **state, rpc_error *err)
{
    uploads_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err->message, sizeof(err->message), "uploads: out of memory");
        return RPC_ERR;
    }
    s->a = a;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    sweep(a); /* what a crash left between a row's deletion and its file's */
    if (app_start_commit_worker(a, on_commit, s, sweeper_main, &s->thread, "upload sweeper", err) != RPC_OK) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return RPC_ERR;
    }
    *state = s;
    return RPC_OK;
}

static void uploads_stop(app *a, void *state)
{
    uploads_state *s = state;
    if (s == NULL)
        return;
    store_unsubscribe(a->db, on_commit, s);
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int uploads_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err);

const app_module uploads_module = {
    .name = "uploads",
    .start = uploads_start,
    .stop = uploads_stop,
    .run_job = uploads_run_job,
};

/* Takes the right to write upload id's next chunk: 1, or 0 when another stream has it. */
static int writing_claim(app *a, uint64_t id)
{
    uploads_state *s = app_state(a, &uploads_module);
    if (s == NULL)
        return 0;
    int got = 0;
    pthread_mutex_lock(&s->mu);
    int free_slot = -1;
    for (int i = 0; i < UPLOADS_WRITING_MAX; i++) {
        if (s->writing[i] == id) {
            free_slot = -2;
            break;
        }
        if (s->writing[i] == 0 && free_slot == -1)
            free_slot = i;
    }
    if (free_slot >= 0) {
        s->writing[free_slot] = id;
        got = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

static void writing_release(app *a, uint64_t id)
{
    uploads_state *s = app_state(a, &uploads_module);
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < UPLOADS_WRITING_MAX; i++)
        if (s->writing[i] == id)
            s->writing[i] = 0;
    pthread_mutex_unlock(&s->mu);
}

/* ---- rows -------------------------------------------------------------------------------------- */

/* A video Create made for an upload that ends without a file (cancelled, expired, refused)
 * becomes ERROR with why, so that its owner sees what happened (and may delete it). A video
 * that already had a file, or that another upload has taken since, is left as it is. */
static int video_upload_failed(store_txn *t, const lagoon_v1_Upload *u, int64_t now, const char *why,
                               store_error *err)
{
    if (!u->created_video || u->video_id == 0)
        return LAGOON_OK;
    lagoon_v1_Video *v = malloc(sizeof(*v)); /* ~37 KB: not on the writer's stack */
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_videos, u->video_id, v, err);
    if (st == LAGOON_NOT_FOUND) {
        st = LAGOON_OK;
    } else if (st == LAGOON_OK && v->upload_id == u->id && v->status == lagoon_v1_Video_Status_UPLOADING) {
        v->status = lagoon_v1_Video_Status_ERROR;
        APP_STRCPY(v->error_reason, why);
        v->updated_at = now;
        st = store_update(t, &lagoon_table_videos, v, err);
    }
    free(v);
    return st;
}

/* Deletes upload u's row and expiry job in t (its bytes go after the commit: the sweeper). */
static int upload_delete(store_txn *t, const lagoon_v1_Upload *u, int64_t now, const char *why, store_error *err)
{
    int st = store_delete(t, &lagoon_table_uploads, u->id, err);
    if (st == LAGOON_OK)
        st = sched_cancel(t, lagoon_v1_JobKind_UPLOAD_EXPIRY, u->id, 0, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_Uploads_Create, u->id, err);
    return st == LAGOON_OK ? video_upload_failed(t, u, now, why, err) : st;
}

/* The caller's upload id into *u: NOT_FOUND naming field when there is none of theirs. */
static int upload_load(store_txn *t, uint64_t owner, uint64_t id, const char *field, lagoon_v1_Upload *u,
                       store_error *err)
{
    int st = store_get(t, &lagoon_table_uploads, id, u, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && u->owner_id != owner))
        return store_fail(err, LAGOON_NOT_FOUND, field, "no such upload (it completed, was cancelled or expired)");
    return st;
}

static int uploads_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err)
{
    if (job->kind != lagoon_v1_JobKind_UPLOAD_EXPIRY)
        return LAGOON_OK;
    *ran = 1;
    int64_t now = app_now(a);
    lagoon_v1_Upload u;
    int st = store_get(t, &lagoon_table_uploads, job->owner_id, &u, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK; /* gone with its video or owner; the sweeper has its bytes */
    if (st != LAGOON_OK)
        return st;
    /* Chunks move expires_at, not the job (one write less per chunk): a job that finds the
     * upload touched since is moved to the new expiry. */
    if (u.expires_at > now)
        return sched_put(t, now, lagoon_v1_JobKind_UPLOAD_EXPIRY, u.id, 0, u.expires_at, err);
    return upload_delete(t, &u, now, "the upload expired before its file was complete", err);
}

/* ---- Create ------------------------------------------------------------------------------------ */

typedef struct quota_sum {
    uint64_t bytes;
    uint64_t found_upload; /* by_video: an upload of the video */
    uint32_t uploads;      /* the user's open uploads */
} quota_sum;

static int add_video_bytes(void *arg, uint64_t id, const void *row)
{
    (void)id;
    ((quota_sum *)arg)->bytes += ((const lagoon_v1_Video *)row)->media_bytes;
    return LAGOON_OK;
}

static int add_upload_size(void *arg, uint64_t id, const void *row)
{
    (void)id;
    ((quota_sum *)arg)->bytes += ((const lagoon_v1_Upload *)row)->size;
    ((quota_sum *)arg)->uploads++;
    return LAGOON_OK;
}

static int note_upload(void *arg, uint64_t id, const void *row)
{
    (void)row;
    ((quota_sum *)arg)->found_upload = id;
    return LAGOON_OK;
}

/* Adds fn's figure of every row of idx under the u64 prefix id into *sum. */
static int sum_rows(store_txn *t, const store_table *tab, const store_index *idx, uint64_t id, store_row_fn fn,
                    quota_sum *sum, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, id);
    store_page page;
    page.next_page_token[0] = '\0';
    for (uint32_t n = 0; n < UPLOADS_QUOTA_PAGES_MAX; n++) {
        char token[STORE_PAGE_TOKEN_MAX + 1];
        memcpy(token, page.next_page_token, sizeof(token));
        store_query q = {.table = tab, .index = idx, .prefix = k.buf, .prefix_len = k.len,
                         .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        int st = store_scan(t, &q, fn, sum, &page, err);
        if (st != LAGOON_OK)
            return st;
        if (page.next_page_token[0] == '\0')
            return LAGOON_OK;
    }
    return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "too many videos to count the storage they use");
}

/* Create's arguments: what the user's videos hold, counted before the write. */
typedef struct create_args {
    uint64_t video_bytes;
} create_args;

/* Refuses (RESOURCE_EXHAUSTED) an upload of size bytes that would take user past the quota,
 * with video_bytes (the user's videos' media_bytes) counted before the write, on the work
 * lane: a user's videos have no bound but UPLOADS_QUOTA_PAGES_MAX pages, each row decoded
 * whole, and on the writer thread that read would hold up every other write of the server;
 * their uploads are at most UPLOADS_OPEN_MAX, read here. A completion or a deletion between the two moves video_bytes a little; the declared
 * sizes, which a completion turns into media_bytes, are exact. */
static int quota_check(store_txn *t, const app *a, uint64_t user, uint64_t video_bytes, uint64_t size,
                       store_error *err)
{
    quota_sum sum = {.bytes = video_bytes};
    int st = sum_rows(t, &lagoon_table_uploads, lagoon_index_uploads_by_owner_time, user, add_upload_size, &sum, err);
    if (st != LAGOON_OK)
        return st;
    if (sum.uploads >= UPLOADS_OPEN_MAX)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          "%u uploads in progress (UPLOADS_OPEN_MAX): complete or cancel one first", UPLOADS_OPEN_MAX);
    uint64_t quota = quota_bytes(a);
    if (sum.bytes > quota || size > quota - sum.bytes)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL,
                          "storage quota: %" PRIu64 " of %" PRIu64 " bytes in use (videos and open uploads); "
                          "this upload needs %" PRIu64 " more",
                          sum.bytes, quota, size);
    return LAGOON_OK;
}

/* The video an upload is for: the caller's existing one (nothing changes until completion), or
 * a new one made now, UPLOADING. Fills u->video_id and u->created_video. */
static int create_video(store_txn *t, const app_write_in *in, lagoon_v1_Upload *u, lagoon_v1_Video *v,
                        store_error *err)
{
    const lagoon_v1_CreateUploadRequest *req = in->req;
    if (req->which_video == lagoon_v1_CreateUploadRequest_video_id_tag) {
        int owner = 0;
        int st = videos_readable(t, &in->who, req->video.video_id, "video_id", v, &owner, err);
        if (st != LAGOON_OK)
            return st;
        if (v->owner_id != in->who.user_id)
            return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the video's owner can upload its file");
        quota_sum found = {0};
        store_key k;
        store_key_reset(&k);
        store_key_u64(&k, v->id);
        store_query q = {.table = &lagoon_table_uploads, .index = lagoon_index_uploads_by_video, .prefix = k.buf,
                         .prefix_len = k.len, .page_size = 1};
        store_page page;
        if ((st = store_scan(t, &q, note_upload, &found, &page, err)) != LAGOON_OK)
            return st;
        if (found.found_upload)
            return store_fail(err, LAGOON_FAILED_PRECONDITION, "video_id",
                              "the video has an upload in progress (upload %" PRIu64 "): resume or cancel it",
                              found.found_upload);
        u->video_id = v->id;
        return LAGOON_OK;
    }
    const lagoon_v1_NewUploadVideo *nv = &req->video.new_video;
    memset(v, 0, sizeof(*v));
    v->owner_id = in->who.user_id;
    APP_STRCPY(v->title, nv->title);
    APP_STRCPY(v->description, nv->description);
    APP_STRCPY(v->piece_name, nv->piece_name);
    APP_STRCPY(v->composer, nv->composer);
    APP_STRCPY(v->practice_goals, nv->practice_goals);
    v->is_public = nv->is_public;
    v->source = lagoon_v1_Video_Source_UPLOAD;
    v->status = lagoon_v1_Video_Status_UPLOADING;
    v->created_at = v->updated_at = in->now;
    int st = videos_insert(t, v, err);
    u->video_id = v->id;
    u->created_video = 1;
    return st;
}

static int create_rows(store_txn *t, const app_write_in *in, lagoon_v1_Upload *u, lagoon_v1_Video *v,
                       store_error *err)
{
    const lagoon_v1_CreateUploadRequest *req = in->req;
    const create_args *ca = in->args;
    int st = quota_check(t, in->a, in->who.user_id, ca->video_bytes, req->size, err);
    if (st == LAGOON_OK && req->kind == lagoon_v1_Upload_Kind_VIDEO)
        st = create_video(t, in, u, v, err);
    if (st != LAGOON_OK)
        return st;
    u->owner_id = in->who.user_id;
    u->kind = req->kind;
    u->size = req->size;
    APP_STRCPY(u->content_type, req->content_type);
    u->checksum_algorithm = req->checksum_algorithm;
    u->checksum.size = UPLOADS_DIGEST_BYTES;
    memcpy(u->checksum.bytes, req->checksum.bytes, UPLOADS_DIGEST_BYTES);
    u->created_at = u->updated_at = in->now;
    u->expires_at = in->now + (int64_t)expiry_ms(in->a);
    if ((st = store_insert(t, &lagoon_table_uploads, u, NULL, err)) != LAGOON_OK)
        return st;
    if (u->created_video) { /* the new video names its upload from the start */
        v->upload_id = u->id;
        if ((st = store_update(t, &lagoon_table_videos, v, err)) != LAGOON_OK)
            return st;
    }
    app_result_shows(in, u->id); /* a retried Create answers this upload while it lasts */
    return sched_put(t, in->now, lagoon_v1_JobKind_UPLOAD_EXPIRY, u->id, 0, u->expires_at, err);
}

static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = create_rows(t, in, resp, v, err);
    free(v);
    return st;
}

/* The lane job of Create: the user's videos' bytes, read outside the write (quota_check), then
 * the write. */
static int create_count(rpc_call *call, void *arg)
{
    create_args *ca = arg;
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        quota_sum sum = {0};
        st = sum_rows(t, &lagoon_table_videos, lagoon_index_videos_by_owner_time, rpc_call_caller(call)->user_id,
                      add_video_bytes, &sum, &err);
        store_read_end(t);
        ca->video_bytes = sum.bytes;
    }
    return st == LAGOON_OK ? app_write_call(call, create_write, ca) : app_store_error(call, st, &err);
}

int handle_Uploads_Create(rpc_call *call, const lagoon_v1_CreateUploadRequest *req, lagoon_v1_Upload *resp)
{
    (void)resp;
    const app *a = app_of(call);
    if (req->checksum.size != UPLOADS_DIGEST_BYTES)
        rpc_call_violation(call, "checksum", "must be %d bytes (the whole file's digest)", UPLOADS_DIGEST_BYTES);
    int has_video = req->which_video == lagoon_v1_CreateUploadRequest_video_id_tag ||
                    req->which_video == lagoon_v1_CreateUploadRequest_new_video_tag;
    if (req->kind == lagoon_v1_Upload_Kind_VIDEO) {
        if (!has_video)
            rpc_call_violation(call, "video_id", "is required for a video: an existing video's id, or new_video");
        else if (req->which_video == lagoon_v1_CreateUploadRequest_video_id_tag && req->video.video_id == 0)
            rpc_call_violation(call, "video_id", "is required");
        if (req->size > max_bytes(a))
            rpc_call_violation(call, "size", "must be at most %" PRIu64 " bytes (upload-max-mib)", max_bytes(a));
    } else {
        if (has_video)
            rpc_call_violation(call, req->which_video == lagoon_v1_CreateUploadRequest_video_id_tag ? "video_id"
                                                                                                     : "new_video",
                               "must not be set for a profile image");
        if (req->size > UPLOADS_PROFILE_IMAGE_MAX)
            rpc_call_violation(call, "size", "must be at most %u bytes for a profile image (UPLOADS_PROFILE_IMAGE_MAX)",
                               UPLOADS_PROFILE_IMAGE_MAX);
    }
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    create_args *ca = app_write_args(call, sizeof(*ca));
    if (ca == NULL)
        return app_out_of_memory(call);
    return rpc_call_defer(call, RPC_LANE_WORK, create_count, NULL, ca);
}

/* ---- Status, Cancel ----------------------------------------------------------------------------- */

int handle_Uploads_Status(rpc_call *call, const lagoon_v1_GetUploadRequest *req, lagoon_v1_Upload *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = upload_load(t, rpc_call_caller(call)->user_id, req->upload_id, "upload_id", resp, &err);
    store_read_end(t);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

static int cancel_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_CancelUploadRequest *req = in->req;
    lagoon_v1_Upload u;
    int st = upload_load(t, in->who.user_id, req->upload_id, "upload_id", &u, err);
    return st == LAGOON_OK ? upload_delete(t, &u, in->now, "the upload was cancelled", err) : st;
}

/* The bytes go with the sweeper, which the deletion's commit wakes: not here on the writer
 * thread, where unlinking a 2 GiB file (freeing its extents, tens of milliseconds) would hold
 * up every other write of the server. */
int handle_Uploads_Cancel(rpc_call *call, const lagoon_v1_CancelUploadRequest *req, lagoon_v1_UploadsEmpty *resp)
{
    (void)req, (void)resp;
    return app_write_call(call, cancel_write, NULL);
}

/* ---- Send: the chunks ----------------------------------------------------------------------------- */

/* A chunk received and not yet written (malloc'd with its bytes). */
typedef struct send_chunk {
    struct send_chunk *next;
    uint64_t upload_id;
    uint64_t offset;
    uint32_t len;
    uint8_t sha256[UPLOADS_DIGEST_BYTES];
    uint8_t data[];
} send_chunk;

/* The whole file's digest as the stream's chunks go by: valid while the stream has seen every
 * byte from 0 (aligned_alloc'd: libsodium's BLAKE2b state wants 64-byte alignment). SHA-256 is
 * OpenSSL's, which uses the CPU's SHA instructions: libsodium's portable SHA-256 runs at about
 * 180 MiB/s on this machine, OpenSSL's at 1.4 GB/s, and every byte is hashed twice (the chunk's
 * own checksum, the whole file's). */
typedef struct send_hash {
    int valid;
    lagoon_v1_Upload_Checksum alg;
    uint64_t upto;       /* bytes hashed */
    EVP_MD_CTX *sha256;  /* made at the first SHA-256 use */
    crypto_generichash_state blake2b;
} send_hash;

/* One Send call. The handler runs on the call's loop for each message and queues the chunk;
 * one work-lane job at a time (running) writes the queue in order and sends the acks. The lock
 * orders the two, and exactly one of them ends the call: the job when it stops with the end
 * decided, or the handler / the cancel callback when no job runs (as Plays/Report). */
typedef struct send_stream {
    pthread_mutex_t mu;
    rpc_call *call;
    app *a;
    rpc_caller who;
    uint64_t upload_id; /* of the first chunk: a stream carries one upload */
    send_chunk *head, *tail;
    uint32_t queued;    /* chunks received, not yet acknowledged (queued or being written) */
    int running;        /* a lane job owns the queue (and the call's end while it runs) */
    int closed;         /* the client half-closed */
    int failed;         /* the status that ends the call (0: none yet); its details are on the call */
    int cancelled;      /* the call ended under us */
    int completed;      /* the upload completed: the stream ends OK */
    int finished;       /* the end is decided */
    send_hash *hash;
} send_stream;

_Static_assert(sizeof(lagoon_v1_UploadAck) >= sizeof(send_stream *), "UploadAck holds the stream's pointer");

/* Frees chunk c of ss, giving its bytes back to the budget. */
static void chunk_free(send_stream *ss, send_chunk *c)
{
    uploads_state *s = app_state(ss->a, &uploads_module);
    if (s != NULL)
        atomic_fetch_sub(&s->queued_bytes, c->len);
    free(c);
}

static void chunks_free(send_stream *ss)
{
    while (ss->head) {
        send_chunk *c = ss->head;
        ss->head = c->next;
        chunk_free(ss, c);
    }
    ss->tail = NULL;
    ss->queued = 0;
}

static void stream_destroy(void *p)
{
    send_stream *ss = p;
    chunks_free(ss);
    if (ss->hash)
        EVP_MD_CTX_free(ss->hash->sha256);
    free(ss->hash);
    pthread_mutex_destroy(&ss->mu);
}

/* The end of the call, if it is decided now (under the lock): its status, or RPC_PENDING. */
static int stream_end(send_stream *ss)
{
    if (ss->finished || ss->running || !(ss->closed || ss->failed || ss->cancelled || ss->completed))
        return RPC_PENDING;
    ss->finished = 1;
    return ss->cancelled ? LAGOON_CANCELLED : ss->failed ? ss->failed : LAGOON_OK;
}

/* The outcome of one chunk, for the stream. */
typedef struct chunk_result {
    int status;            /* LAGOON_OK, or the stream's end (message set on the call) */
    lagoon_v1_UploadAck ack;
    int send_ack;          /* ack (possibly refused) goes out */
    int completed;         /* the upload completed: the stream ends OK after the ack */
} chunk_result;

/* ---- writing one chunk ---- */

/* A failed write or sync of an upload's file (errno e) as the call's error: no room (a full
 * disk, a quota, the process's file size limit) is RESOURCE_EXHAUSTED — the client may retry
 * later —, anything else INTERNAL. */
static int io_error(rpc_call *call, int e, const char *what)
{
    if (e == ENOSPC || e == EDQUOT)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "the server's disk is full: retry later");
    if (e == EFBIG)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "the upload's file passes the server's file size limit");
    return rpc_call_error(call, LAGOON_INTERNAL, "cannot %s the upload's file: %s", what, strerror(e));
}

static void hash_chunks(send_hash *h, lagoon_v1_Upload_Checksum alg, send_chunk *const *cs, size_t k);

/* fsyncs the directory that holds path: 0, or -1 with errno. */
static int dir_sync(const char *path)
{
    char dir[MEDIA_PATH_MAX];
    size_t n = strnlen(path, sizeof(dir) - 1);
    memcpy(dir, path, n);
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Writes chunks cs[0..k) one after the other from offset into the upload's file (created at
 * the first chunk) and fsyncs it once; on failure cuts the file back to offset (nothing
 * half-written stays past the committed offset). Each chunk's writeback is started as soon as
 * it is written (sync_file_range), and the whole file's digest (h, by alg) takes the chunks
 * while the disk writes them, so that the fsync mostly waits for what is already under way
 * instead of the disk idling through the copies and the hashing. LAGOON_OK, RESOURCE_EXHAUSTED
 * (disk full) or INTERNAL, message on call; on failure h no longer counts. */
static int chunks_write(rpc_call *call, const char *path, uint64_t offset, send_chunk *const *cs, size_t k,
                        send_hash *h, lagoon_v1_Upload_Checksum alg)
{
    if (media_mkdirs(path) != LAGOON_OK)
        return rpc_call_error(call, LAGOON_INTERNAL, "cannot create the uploads directory");
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return io_error(call, errno, "open");
    struct stat sb;
    int st = LAGOON_OK;
    if (fstat(fd, &sb) != 0) {
        st = rpc_call_error(call, LAGOON_INTERNAL, "cannot read the upload's file: %s", strerror(errno));
    } else if ((uint64_t)sb.st_size < offset) {
        /* NEVER: bytes were acknowledged, so they were fsynced. */
        st = rpc_call_error(call, LAGOON_DATA_LOSS, "the upload's file holds %lld bytes of %" PRIu64 " acknowledged",
                            (long long)sb.st_size, offset);
    } else {
        /* A crash (or a failed commit) after a write left bytes past the offset: not ours. */
        if ((uint64_t)sb.st_size > offset && ftruncate(fd, (off_t)offset) != 0)
            st = io_error(call, errno, "cut back");
        uint64_t at = offset;
        for (size_t i = 0; st == LAGOON_OK && i < k; i++) {
            for (uint32_t done = 0; done < cs[i]->len;) {
                ssize_t n = pwrite(fd, cs[i]->data + done, cs[i]->len - done, (off_t)(at + done));
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0) {
                    st = io_error(call, n < 0 ? errno : ENOSPC, "write");
                    break;
                }
                done += (uint32_t)n;
            }
            /* (advice: fsync below is what counts, so a failure here changes nothing) */
            if (st == LAGOON_OK)
                (void)sync_file_range(fd, (off_t)at, (off_t)cs[i]->len, SYNC_FILE_RANGE_WRITE);
            at += cs[i]->len;
        }
        if (st == LAGOON_OK)
            hash_chunks(h, alg, cs, k);
        if (st == LAGOON_OK && fsync(fd) != 0)
            st = io_error(call, errno, "sync");
        /* The first bytes: the file's name must be as durable as they are, or a power loss
         * could leave an offset committed for a file that is not there. */
        if (st == LAGOON_OK && offset == 0 && dir_sync(path) != 0)
            st = io_error(call, errno, "sync the directory of");
        if (st != LAGOON_OK && ftruncate(fd, (off_t)offset) == 0)
            (void)fsync(fd);
    }
    close(fd);
    if (st != LAGOON_OK)
        h->valid = 0;
    return st;
}

/* Cuts path back to offset (a chunk whose commit failed). */
static void chunk_undo(const char *path, uint64_t offset)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (ftruncate(fd, (off_t)offset) == 0)
        (void)fsync(fd);
    close(fd);
}

typedef struct commit_args {
    uint64_t owner, id, offset, len;
    int64_t now, expires_at;
    lagoon_v1_Upload u; /* out: the row as committed */
} commit_args;

static int commit_fn(store_txn *t, void *arg, store_error *err)
{
    commit_args *c = arg;
    int st = upload_load(t, c->owner, c->id, "upload_id", &c->u, err);
    if (st != LAGOON_OK)
        return st;
    if (c->u.offset != c->offset) /* another stream's chunk counted first */
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL,
                          "chunk at offset %" PRIu64 ": the upload's committed offset is now %" PRIu64, c->offset,
                          c->u.offset);
    c->u.offset += c->len;
    c->u.updated_at = c->now;
    c->u.expires_at = c->expires_at;
    return store_update(t, &lagoon_table_uploads, &c->u, err);
}

/* The SHA-256 of one chunk: 0, or -1 (OpenSSL out of memory). */
static int chunk_sha256(const uint8_t *data, size_t len, uint8_t out[UPLOADS_DIGEST_BYTES])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == UPLOADS_DIGEST_BYTES ? 0 : -1;
}

/* A failure of OpenSSL leaves the digest invalid: completion then reads the file again. */
static void hash_update(send_hash *h, const uint8_t *data, size_t len)
{
    if (h->alg == lagoon_v1_Upload_Checksum_SHA256) {
        if (EVP_DigestUpdate(h->sha256, data, len) != 1)
            h->valid = 0;
    } else {
        crypto_generichash_update(&h->blake2b, data, len);
    }
    h->upto += len;
}

static void hash_init(send_hash *h, lagoon_v1_Upload_Checksum alg)
{
    h->alg = alg;
    h->upto = 0;
    h->valid = 1;
    if (alg == lagoon_v1_Upload_Checksum_SHA256) {
        if (h->sha256 == NULL)
            h->sha256 = EVP_MD_CTX_new();
        if (h->sha256 == NULL || EVP_DigestInit_ex(h->sha256, EVP_sha256(), NULL) != 1)
            h->valid = 0;
    } else {
        crypto_generichash_init(&h->blake2b, NULL, 0, UPLOADS_DIGEST_BYTES);
    }
}

/* The digest into out: 0, or -1 when it is not known (an OpenSSL failure on the way). */
static int hash_final(send_hash *h, uint8_t out[UPLOADS_DIGEST_BYTES])
{
    int ok = h->valid;
    h->valid = 0;
    if (h->alg == lagoon_v1_Upload_Checksum_SHA256) {
        unsigned int n = 0;
        return ok && EVP_DigestFinal_ex(h->sha256, out, &n) == 1 && n == UPLOADS_DIGEST_BYTES ? 0 : -1;
    }
    crypto_generichash_final(&h->blake2b, out, UPLOADS_DIGEST_BYTES);
    return ok ? 0 : -1;
}

static int complete_upload(send_stream *ss, lagoon_v1_Upload *u, chunk_result *r);

/* The whole file's digest takes chunks cs[0..k), written from the committed offset: it goes on
 * while the stream has seen every byte from 0 (a stream whose first chunk is at 0 starts it);
 * otherwise completion reads the file again. */
static void hash_chunks(send_hash *h, lagoon_v1_Upload_Checksum alg, send_chunk *const *cs, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        const send_chunk *c = cs[i];
        if (h->valid && h->upto == c->offset) {
            hash_update(h, c->data, c->len);
        } else if (!h->valid && c->offset == 0) {
            hash_init(h, alg);
            hash_update(h, c->data, c->len);
        } else {
            h->valid = 0;
        }
    }
}

/* Checks chunk c against the upload as it will be once the chunks before it are written (its
 * offset `expected`): 1 when it is good, else 0 with its refusal in r (status, message on the
 * call; a refused ack for a wrong offset). */
static int chunk_check(rpc_call *call, const send_chunk *c, const lagoon_v1_Upload *u, uint64_t expected,
                       chunk_result *r)
{
    if (c->offset != expected) {
        r->ack.offset = expected;
        r->ack.refused = 1;
        r->send_ack = 1;
        r->status = rpc_call_error(call, LAGOON_FAILED_PRECONDITION,
                                   "chunk at offset %" PRIu64 ": the upload expects offset %" PRIu64
                                   " (expected_offset %" PRIu64 "); resume from there",
                                   c->offset, expected, expected);
        return 0;
    }
    if (c->len == 0) {
        r->status = rpc_call_error(call, LAGOON_INVALID_ARGUMENT, "a chunk needs data before the end of the file");
        return 0;
    }
    if (c->len > u->size - expected) {
        r->status = rpc_call_error(call, LAGOON_INVALID_ARGUMENT,
                                   "chunk of %u bytes at offset %" PRIu64 " passes the declared size %" PRIu64, c->len,
                                   c->offset, u->size);
        return 0;
    }
    uint8_t digest[UPLOADS_DIGEST_BYTES];
    if (chunk_sha256(c->data, c->len, digest) != 0) {
        r->status = rpc_call_error(call, LAGOON_INTERNAL, "out of memory");
        return 0;
    }
    if (sodium_memcmp(digest, c->sha256, sizeof(digest)) != 0) {
        r->status = rpc_call_error(call, LAGOON_INVALID_ARGUMENT,
                                   "chunk at offset %" PRIu64 ": its bytes do not match its sha256; not kept",
                                   c->offset);
        return 0;
    }
    return 1;
}

/* A batch none of whose chunks counts: no ack, status (its message on the call) ends the stream. */
static void batch_failed(chunk_result *r, size_t n, int status)
{
    for (size_t i = 0; i < n; i++)
        r[i] = (chunk_result){0};
    r[0].status = status;
}

/* batch_run's work, with the upload's writing claimed: the offset read here cannot move until
 * the claim is released, since only its holder writes the file or commits an offset. */
static void batch_claimed(send_stream *ss, send_chunk *const *cs, size_t n, chunk_result *r)
{
    rpc_call *call = ss->call;
    app *a = ss->a;
    lagoon_v1_Upload u;
    store_txn *t;
    store_error err;
    int st = store_read_begin(a->db, &t, &err);
    if (st == LAGOON_OK) {
        st = upload_load(t, ss->who.user_id, cs[0]->upload_id, "upload_id", &u, &err);
        store_read_end(t);
    }
    if (st != LAGOON_OK) {
        r[0].status = app_store_error(call, st, &err);
        return;
    }
    for (size_t i = 0; i < n; i++)
        r[i].ack.size = u.size;
    if (cs[0]->len == 0 && cs[0]->offset == u.offset && u.offset == u.size) {
        r[0].status = complete_upload(ss, &u, &r[0]); /* a completion asked again */
        return;
    }
    /* The good chunks: up to the first refusal, or to the end of the file. */
    size_t k = 0;
    uint64_t expected = u.offset;
    int refused = 0;
    while (k < n && expected < u.size) {
        if (!chunk_check(call, cs[k], &u, expected, &r[k])) {
            refused = 1;
            break;
        }
        expected += cs[k++]->len;
    }
    if (k == 0) {
        if (!refused) /* a chunk after a complete file: refused as past its size (or at a wrong offset) */
            (void)chunk_check(call, cs[0], &u, expected, &r[0]);
        return;
    }
    /* From here a failure fails the whole batch: no ack, the first chunk says why. */
    char path[MEDIA_PATH_MAX];
    if (media_upload_path(a, u.id, path, sizeof(path)) != LAGOON_OK) {
        batch_failed(r, n, rpc_call_error(call, LAGOON_INTERNAL, "internal error"));
        return;
    }
    uint64_t from = u.offset;
    st = chunks_write(call, path, from, cs, k, ss->hash, u.checksum_algorithm);
    if (st == LAGOON_OK) {
        int64_t now = app_now(a);
        commit_args ca = {.owner = ss->who.user_id, .id = u.id, .offset = from, .len = expected - from, .now = now,
                          .expires_at = now + (int64_t)expiry_ms(a)};
        st = store_write(a->db, commit_fn, &ca, &err);
        if (st == LAGOON_OK) {
            u = ca.u;
        } else {
            if (st == LAGOON_NOT_FOUND) /* cancelled meanwhile: these bytes have no row */
                (void)unlink(path);
            else
                chunk_undo(path, from);
            ss->hash->valid = 0; /* it took bytes that do not count */
            st = app_store_error(call, st, &err);
        }
    }
    if (st != LAGOON_OK) {
        batch_failed(r, n, st);
        return;
    }
    uint64_t at = from;
    for (size_t i = 0; i < k; i++) {
        at += cs[i]->len;
        r[i].ack.offset = at;
        r[i].send_ack = 1;
    }
    if (u.offset == u.size) /* (the checks stopped there: nothing after it was refused) */
        r[k - 1].status = complete_upload(ss, &u, &r[k - 1]);
}

/* Writes the chunks cs[0..n) of stream ss that arrived together and commits them (lane thread,
 * no lock held): the good ones up to the first refused share one fsync and one commit (a
 * group commit: the disk's flush, not the bytes, is what a chunk costs), then each gets its
 * ack; the last byte's completes the upload. Fills r[i] for each (the first refusal ends the
 * stream; nothing after it is looked at). One stream at a time works on an upload (writing[]):
 * another stream of it (a reconnect while the old connection's last batch is still being
 * written) is told to retry. */
static void batch_run(send_stream *ss, send_chunk *const *cs, size_t n, chunk_result *r)
{
    for (size_t i = 0; i < n; i++)
        r[i].ack.upload_id = cs[i]->upload_id;
    uint64_t id = cs[0]->upload_id;
    /* Whose it is, before the claim: a stream naming another user's upload must not hold its
     * claim even briefly, or the owner's own stream would be told it is busy and end. */
    lagoon_v1_Upload u;
    store_txn *t;
    store_error err;
    int st = store_read_begin(ss->a->db, &t, &err);
    if (st == LAGOON_OK) {
        st = upload_load(t, ss->who.user_id, id, "upload_id", &u, &err);
        store_read_end(t);
    }
    if (st != LAGOON_OK) {
        r[0].status = app_store_error(ss->call, st, &err);
        return;
    }
    if (!writing_claim(ss->a, id)) {
        rpc_call_retry_after(ss->call, UPLOADS_BUSY_RETRY_MS);
        batch_failed(r, n,
                     rpc_call_error(ss->call, LAGOON_RESOURCE_EXHAUSTED,
                                    "another Send of this upload is writing a chunk (a dropped connection's last): "
                                    "retry, from the offset Status gives"));
        return;
    }
    batch_claimed(ss, cs, n, r);
    writing_release(ss->a, id);
}

/* ---- completion ---- */

/* The digest of path's first size bytes into out: LAGOON_OK, or INTERNAL. */
static int hash_file(const char *path, uint64_t size, lagoon_v1_Upload_Checksum alg, send_hash *h,
                     uint8_t out[UPLOADS_DIGEST_BYTES])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return LAGOON_INTERNAL;
    uint8_t *buf = malloc(UPLOADS_READ_BLOCK);
    int st = buf ? LAGOON_OK : LAGOON_INTERNAL;
    hash_init(h, alg);
    for (uint64_t off = 0; st == LAGOON_OK && off < size;) {
        size_t want = size - off < UPLOADS_READ_BLOCK ? (size_t)(size - off) : UPLOADS_READ_BLOCK;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            st = LAGOON_INTERNAL;
            break;
        }
        hash_update(h, buf, (size_t)n);
        off += (uint64_t)n;
    }
    free(buf);
    close(fd);
    if (hash_final(h, out) != 0)
        st = LAGOON_INTERNAL;
    return st;
}

typedef struct reject_args {
    uint64_t owner, id;
    int64_t now;
    const char *why;
} reject_args;

static int reject_fn(store_txn *t, void *arg, store_error *err)
{
    reject_args *r = arg;
    lagoon_v1_Upload u;
    int st = upload_load(t, r->owner, r->id, "upload_id", &u, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK; /* gone already */
    return st == LAGOON_OK ? upload_delete(t, &u, r->now, r->why, err) : st;
}

/* Ends upload u for good with status and why (the file is not what it claims to be): the row
 * deleted (a new video set to ERROR), its bytes deleted. Returns status, message on the call. */
static int reject_upload(send_stream *ss, const lagoon_v1_Upload *u, const char *path, int status, const char *why)
{
    reject_args ra = {.owner = u->owner_id, .id = u->id, .now = app_now(ss->a), .why = why};
    store_error err;
    if (store_write(ss->a->db, reject_fn, &ra, &err) != LAGOON_OK)
        log_msg(LOG_WARN, "uploads: cannot delete refused upload %" PRIu64 ": %s", u->id, err.message);
    else
        (void)unlink(path);
    return rpc_call_error(ss->call, status, "%s: the upload is deleted", why);
}

/* Codecs ffprobe names for still images a profile may show. */
static int still_image(const media_probe_info *p)
{
    static const char *const codecs[] = {"mjpeg", "png", "webp", "bmp", "tiff"};
    if (p->has_video || p->width == 0 || p->height == 0)
        return 0;
    for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++)
        if (strcmp(p->video_codec, codecs[i]) == 0)
            return 1;
    return 0;
}

typedef struct finish_args {
    const app *a;
    uint64_t owner, id;
    int64_t now;
    uint64_t file_bytes; /* the published original */
    uint64_t old_bytes;  /* the original it replaced (0: none) */
    const media_probe_info *probe;
    uint64_t video_id;   /* out */
} finish_args;

static void video_finished(lagoon_v1_Video *v, const finish_args *f, const lagoon_v1_Upload *u)
{
    const media_probe_info *p = f->probe;
    v->status = lagoon_v1_Video_Status_PROCESSING;
    v->source = lagoon_v1_Video_Source_UPLOAD;
    v->upload_id = u->id;
    v->media_files |= MEDIA_FILE_ORIGINAL;
    v->media_bytes = (v->media_bytes > f->old_bytes ? v->media_bytes - f->old_bytes : 0) + f->file_bytes;
    v->width = p->width;
    v->height = p->height;
    v->duration_seconds = (p->duration_ms + 999) / 1000;
    APP_STRCPY(v->video_codec, p->video_codec);
    APP_STRCPY(v->audio_codec, p->audio_codec);
    v->error_reason[0] = '\0';
    v->updated_at = f->now;
}

/* The one write of a completion: the video PROCESSING with its file, the upload gone, the
 * processing queued — all or nothing. */
static int finish_fn(store_txn *t, void *arg, store_error *err)
{
    finish_args *f = arg;
    lagoon_v1_Upload u;
    int st = upload_load(t, f->owner, f->id, "upload_id", &u, err);
    if (st != LAGOON_OK)
        return st;
    enum media_job_kind kind = MEDIA_JOB_PROFILE_IMAGE;
    uint64_t subject = u.owner_id;
    if (u.kind == lagoon_v1_Upload_Kind_VIDEO) {
        lagoon_v1_Video *v = malloc(sizeof(*v));
        if (v == NULL)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        st = store_get(t, &lagoon_table_videos, u.video_id, v, err);
        if (st == LAGOON_OK) {
            video_finished(v, f, &u);
            st = store_update(t, &lagoon_table_videos, v, err);
        }
        free(v);
        kind = MEDIA_JOB_VIDEO;
        subject = u.video_id;
        f->video_id = u.video_id;
    }
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_uploads, u.id, err);
    if (st == LAGOON_OK)
        st = sched_cancel(t, lagoon_v1_JobKind_UPLOAD_EXPIRY, u.id, 0, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_Uploads_Create, u.id, err);
    return st == LAGOON_OK ? media_enqueue(t, f->a, f->now, kind, u.owner_id, subject, err) : st;
}

/* complete_upload's work, counted in UPLOADS_COMPLETING_MAX. */
static int complete_counted(send_stream *ss, lagoon_v1_Upload *u, chunk_result *r)
{
    app *a = ss->a;
    rpc_call *call = ss->call;
    char part[MEDIA_PATH_MAX], final[MEDIA_PATH_MAX];
    if (media_upload_path(a, u->id, part, sizeof(part)) != LAGOON_OK ||
        (u->kind == lagoon_v1_Upload_Kind_VIDEO
             ? media_video_path(a, u->owner_id, u->video_id, MEDIA_ORIGINAL, final, sizeof(final))
             : media_profile_path(a, u->owner_id, MEDIA_ORIGINAL, final, sizeof(final))) != LAGOON_OK)
        return rpc_call_error(call, LAGOON_INTERNAL, "internal error");
    /* A crash (or a failed commit whose file could not be put back) after media_publish and
     * before finish_fn committed left the file published and the upload still here: the
     * published file is checked as the part would have been, and stays where it is. */
    struct stat sb;
    int published = stat(part, &sb) != 0 && errno == ENOENT && stat(final, &sb) == 0 && (uint64_t)sb.st_size == u->size;
    const char *file = published ? final : part;
    uint8_t digest[UPLOADS_DIGEST_BYTES];
    send_hash *h = ss->hash;
    int known = !published && h->valid && h->upto == u->size && h->alg == u->checksum_algorithm &&
                hash_final(h, digest) == 0;
    if (!known && hash_file(file, u->size, u->checksum_algorithm, h, digest) != LAGOON_OK)
        return rpc_call_error(call, LAGOON_INTERNAL, "cannot read the upload's file back");
    const char *alg = u->checksum_algorithm == lagoon_v1_Upload_Checksum_SHA256 ? "SHA-256" : "BLAKE2b-256";
    if (u->checksum.size != UPLOADS_DIGEST_BYTES || sodium_memcmp(digest, u->checksum.bytes, sizeof(digest)) != 0) {
        char why[96];
        snprintf(why, sizeof(why), "the file's %s differs from the checksum Create declared", alg);
        return reject_upload(ss, u, part, LAGOON_INVALID_ARGUMENT, why);
    }
    media_probe_info probe;
    rpc_error perr;
    int video = u->kind == lagoon_v1_Upload_Kind_VIDEO;
    if (media_probe(a, file, &probe, &perr) != RPC_OK) {
        log_msg(LOG_INFO, "uploads: upload %" PRIu64 " refused by the probe: %s", u->id, perr.message);
        return reject_upload(ss, u, part, LAGOON_INVALID_ARGUMENT,
                             video ? "the file is not a video (ffprobe cannot read it)"
                                   : "the file is not an image (ffprobe cannot read it)");
    }
    if (video && !probe.has_video)
        return reject_upload(ss, u, part, LAGOON_INVALID_ARGUMENT, "the file is not a video (no video stream)");
    if (!video && !still_image(&probe))
        return reject_upload(ss, u, part, LAGOON_INVALID_ARGUMENT,
                             "the file is not a still image (JPEG, PNG, WebP, BMP or TIFF)");
    /* The original this one replaces, whose bytes the video's media_bytes counts. Published
     * already: that size is gone, so it stays counted until processing recounts the files. */
    uint64_t old_bytes = !published && stat(final, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    int st = published ? LAGOON_OK : media_mkdirs(final);
    if (st == LAGOON_OK && !published)
        st = media_publish(part, final); /* (removes part on failure) */
    if (st != LAGOON_OK)
        return reject_upload(ss, u, part, st,
                             st == LAGOON_RESOURCE_EXHAUSTED ? "the server's disk is full" : "cannot store the file");
    finish_args fa = {.a = a, .owner = u->owner_id, .id = u->id, .now = app_now(a), .file_bytes = u->size,
                      .old_bytes = old_bytes, .probe = &probe};
    store_error err;
    st = store_write(a->db, finish_fn, &fa, &err);
    if (st != LAGOON_OK) {
        /* The upload stays complete: its file goes back, and a chunk with no data at offset ==
         * size asks again. Gone (cancelled, its video deleted): its file goes. */
        if (st == LAGOON_NOT_FOUND || rename(final, part) != 0)
            (void)unlink(final);
        return app_store_error(call, st, &err);
    }
    media_kick(a);
    r->ack.offset = u->size;
    r->ack.size = u->size;
    r->ack.complete = 1;
    r->ack.video_id = fa.video_id;
    r->send_ack = 1;
    r->completed = 1;
    return LAGOON_OK;
}

/* Upload u has all its bytes: checks, publishes and hands it to processing (lane thread).
 * LAGOON_OK with the final ack in r, or the stream's end. At most UPLOADS_COMPLETING_MAX at
 * once; past it RESOURCE_EXHAUSTED with retry-after (the bytes stay committed). */
static int complete_upload(send_stream *ss, lagoon_v1_Upload *u, chunk_result *r)
{
    uploads_state *s = app_state(ss->a, &uploads_module);
    if (s == NULL)
        return rpc_call_error(ss->call, LAGOON_INTERNAL, "internal error");
    if (atomic_fetch_add(&s->completing, 1) >= UPLOADS_COMPLETING_MAX) {
        atomic_fetch_sub(&s->completing, 1);
        rpc_call_retry_after(ss->call, UPLOADS_COMPLETING_RETRY_MS);
        return rpc_call_error(ss->call, LAGOON_RESOURCE_EXHAUSTED,
                              "the server is completing %d uploads (UPLOADS_COMPLETING_MAX): every byte is "
                              "committed; send a chunk with no data at offset %" PRIu64 " to complete it",
                              UPLOADS_COMPLETING_MAX, u->size);
    }
    int st = complete_counted(ss, u, r);
    atomic_fetch_sub(&s->completing, 1);
    return st;
}

/* ---- the stream ---- */

static void send_dropped(void *arg);

/* The lane job: writes the queued chunks in order, all those queued at a time (batch_run),
 * until the queue is empty or the stream has ended. Its return ends the call when the end is
 * decided here (defer_run finishes it). After each batch with more chunks waiting it queues
 * itself again and gives its thread back: a client that keeps its window full would otherwise
 * hold a lane thread for its whole upload, and rpc_config.workers such clients would stop
 * every other stream (their jobs waiting behind) until they finished. */
static int send_drain(rpc_call *call, void *arg)
{
    (void)call;
    send_stream *ss = arg;
    for (int batches = 0;; batches++) {
        send_chunk *batch[UPLOADS_SEND_INFLIGHT_MAX];
        size_t n = 0;
        pthread_mutex_lock(&ss->mu);
        while (!ss->failed && !ss->cancelled && !ss->completed && ss->head != NULL && n < UPLOADS_SEND_INFLIGHT_MAX) {
            batch[n++] = ss->head;
            ss->head = ss->head->next;
            if (ss->head == NULL)
                ss->tail = NULL;
        }
        if (n == 0) {
            chunks_free(ss); /* what an ended stream still held */
            ss->running = 0;
            int end = stream_end(ss);
            pthread_mutex_unlock(&ss->mu);
            return end;
        }
        /* A full lane queue keeps the stream here: it goes on with the thread it has. */
        if (batches > 0 && rpc_call_defer(ss->call, RPC_LANE_WORK, send_drain, send_dropped, ss) == RPC_PENDING) {
            for (size_t i = n; i > 0; i--) { /* back, in order, for the next turn */
                batch[i - 1]->next = ss->head;
                if (ss->head == NULL)
                    ss->tail = batch[i - 1];
                ss->head = batch[i - 1];
            }
            pthread_mutex_unlock(&ss->mu);
            return RPC_PENDING;
        }
        pthread_mutex_unlock(&ss->mu);
        chunk_result r[UPLOADS_SEND_INFLIGHT_MAX];
        memset(r, 0, sizeof(r));
        batch_run(ss, batch, n, r);
        pthread_mutex_lock(&ss->mu);
        ss->queued -= (uint32_t)n;
        for (size_t i = 0; i < n; i++) {
            if (r[i].send_ack && !ss->cancelled)
                rpc_call_send(ss->call, &r[i].ack);
            if (r[i].status != LAGOON_OK && !ss->failed)
                ss->failed = r[i].status;
            if (r[i].completed)
                ss->completed = 1;
            chunk_free(ss, batch[i]);
        }
        pthread_mutex_unlock(&ss->mu);
    }
}

/* The job was dropped (the call ended before its turn): defer_run ends the call. */
static void send_dropped(void *arg)
{
    send_stream *ss = arg;
    pthread_mutex_lock(&ss->mu);
    chunks_free(ss);
    ss->running = 0;
    ss->finished = 1;
    pthread_mutex_unlock(&ss->mu);
}

static void send_cancelled(rpc_call *call, void *arg)
{
    send_stream *ss = arg;
    pthread_mutex_lock(&ss->mu);
    ss->cancelled = 1;
    int end = stream_end(ss);
    pthread_mutex_unlock(&ss->mu);
    if (end != RPC_PENDING)
        rpc_call_finish(call, end);
}

/* Checks and queues one message's chunk (under the lock): LAGOON_OK, or the status that ends
 * the stream, its details set on the call. */
static int send_queue(rpc_call *call, send_stream *ss, const lagoon_v1_UploadChunk *req)
{
    if (ss->upload_id == 0)
        ss->upload_id = req->upload_id;
    else if (req->upload_id != ss->upload_id)
        return rpc_call_violation(call, "upload_id", "must be the stream's first chunk's (%" PRIu64 ")",
                                  ss->upload_id);
    if (ss->queued >= UPLOADS_SEND_INFLIGHT_MAX) {
        rpc_call_retry_after(call, UPLOADS_BUSY_RETRY_MS);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED,
                              "more than %d chunks unacknowledged (UPLOADS_SEND_INFLIGHT_MAX): wait for their acks",
                              UPLOADS_SEND_INFLIGHT_MAX);
    }
    /* The item count is checked as the message is decoded (uploads.options' max_count), an
     * item's size is not (max_size does not bind a pointer field: nanopb allocates what the
     * message holds): both here. */
    if (req->data_count > UPLOADS_CHUNK_PIECES) /* NEVER: the decoding refuses more */
        return rpc_call_violation(call, "data", "must be at most %d items (UPLOADS_CHUNK_PIECES)", UPLOADS_CHUNK_PIECES);
    size_t len = 0;
    for (pb_size_t i = 0; i < req->data_count; i++) {
        if (req->data[i] != NULL && req->data[i]->size > UPLOADS_PIECE_MAX)
            return rpc_call_violation(call, "data", "items must be at most %u bytes each (UPLOADS_PIECE_MAX)",
                                      UPLOADS_PIECE_MAX);
        len += req->data[i] ? req->data[i]->size : 0;
    }
    if (len > UPLOADS_CHUNK_MAX) /* NEVER: UPLOADS_CHUNK_PIECES items of UPLOADS_PIECE_MAX at most */
        return rpc_call_violation(call, "data", "must be at most %u bytes together (UPLOADS_CHUNK_MAX)",
                                  UPLOADS_CHUNK_MAX);
    if (len > 0 && req->sha256.size != UPLOADS_DIGEST_BYTES)
        return rpc_call_violation(call, "sha256", "must be the chunk's SHA-256 (%d bytes)", UPLOADS_DIGEST_BYTES);
    uploads_state *s = app_state(ss->a, &uploads_module);
    if (s != NULL && atomic_fetch_add(&s->queued_bytes, len) + len > UPLOADS_QUEUED_BYTES_MAX) {
        atomic_fetch_sub(&s->queued_bytes, len);
        rpc_call_retry_after(call, UPLOADS_BUSY_RETRY_MS);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "server busy: too many chunks waiting to be written");
    }
    send_chunk *c = malloc(sizeof(*c) + len);
    if (c == NULL) {
        if (s != NULL)
            atomic_fetch_sub(&s->queued_bytes, len);
        return app_out_of_memory(call);
    }
    c->next = NULL;
    c->upload_id = req->upload_id;
    c->offset = req->offset;
    c->len = (uint32_t)len;
    memcpy(c->sha256, req->sha256.bytes, sizeof(c->sha256));
    size_t at = 0;
    for (pb_size_t i = 0; i < req->data_count; i++) {
        if (req->data[i] == NULL)
            continue;
        memcpy(c->data + at, req->data[i]->bytes, req->data[i]->size);
        at += req->data[i]->size;
    }
    if (ss->tail)
        ss->tail->next = c;
    else
        ss->head = c;
    ss->tail = c;
    ss->queued++;
    if (ss->running)
        return LAGOON_OK;
    ss->running = 1;
    int st = rpc_call_defer(call, RPC_LANE_WORK, send_drain, send_dropped, ss);
    if (st == RPC_PENDING)
        return LAGOON_OK;
    ss->running = 0; /* not queued: neither send_drain nor send_dropped runs */
    chunks_free(ss);
    return st;
}

int handle_Uploads_Send(rpc_call *call, const lagoon_v1_UploadChunk *req)
{
    send_stream **slot = (send_stream **)rpc_call_response(call);
    send_stream *ss = *slot;
    if (ss == NULL) { /* the first message */
        ss = rpc_call_alloc(call, sizeof(*ss), stream_destroy);
        if (ss == NULL)
            return app_out_of_memory(call);
        pthread_mutex_init(&ss->mu, NULL);
        ss->hash = aligned_alloc(64, (sizeof(send_hash) + 63) / 64 * 64);
        if (ss->hash == NULL)
            return app_out_of_memory(call);
        memset(ss->hash, 0, sizeof(*ss->hash));
        ss->call = call;
        ss->a = app_of(call);
        ss->who = *rpc_call_caller(call);
        *slot = ss;
        rpc_call_on_cancel(call, send_cancelled, ss);
    }
    pthread_mutex_lock(&ss->mu);
    if (req == NULL)
        ss->closed = 1;
    else if (!ss->failed && !ss->cancelled && !ss->finished && !ss->completed)
        ss->failed = send_queue(call, ss, req);
    int end = stream_end(ss);
    pthread_mutex_unlock(&ss->mu);
    /* Ended through rpc_call_finish, never by returning the status: acks sent from the lane are
     * still in the loop's mailbox, and a finish posted after them is answered after them. */
    if (end != RPC_PENDING)
        rpc_call_finish(call, end);
    return RPC_PENDING;
}
