/* media: processing uploaded media (media.h). */
#include "media.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "lagoon_handlers.h"
#include "lagoon_tables.h"
#include "log.h"
#include "media_files.h"
#include "paging.h"
#include "subprocess.h"

#define MEDIA_STR_(x) #x
#define MEDIA_STR(x) MEDIA_STR_(x)

/* ---- tools ---------------------------------------------------------------------------------- */

static const char *ffprobe_path(const app *a)
{
    return a->cfg.ffprobe[0] ? a->cfg.ffprobe : "ffprobe";
}

static uint32_t job_timeout_s(const app *a)
{
    return a->cfg.media_job_timeout_s ? a->cfg.media_job_timeout_s : MEDIA_JOB_TIMEOUT_S_DEFAULT;
}

/* The limits of one tool run taking at most timeout_s of wall clock. */
static subprocess_limits tool_limits(uint32_t timeout_s)
{
    return (subprocess_limits){.timeout_ms = timeout_s * 1000u,
                               .cpu_s = timeout_s * MEDIA_TOOL_CPU_PER_WALL,
                               .memory_bytes = MEDIA_TOOL_MEMORY_BYTES,
                               .file_bytes = MEDIA_TOOL_FILE_BYTES};
}

/* ---- probe ---------------------------------------------------------------------------------- */

/* One stream of ffprobe's flat output, gathered line by line. */
typedef struct probe_stream {
    long index; /* -1: none yet */
    char codec_type[16];
    char codec_name[sizeof(((media_probe_info *)0)->video_codec)];
    uint32_t width, height;
    int attached_pic; /* cover art in an audio file: not a video */
} probe_stream;

/* Copies a flat value (quoted or not) into dst: printable ASCII only, cut to fit. */
static void probe_value(char *dst, size_t cap, const char *v)
{
    size_t n = 0;
    if (*v == '"')
        v++;
    for (; *v && *v != '"' && n + 1 < cap; v++)
        if ((unsigned char)*v >= 0x20 && (unsigned char)*v < 0x7f)
            dst[n++] = *v;
    dst[n] = '\0';
}

static uint32_t probe_u32(const char *v)
{
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    return end != v && x <= MEDIA_DIMENSION_MAX ? (uint32_t)x : 0;
}

/* A demuxer of single pictures (image2, png_pipe, jpeg_pipe, ...): what it holds is an image. */
static int image_format(const char *format_name)
{
    size_t n = strlen(format_name);
    return strcmp(format_name, "image2") == 0 || (n > 5 && strcmp(format_name + n - 5, "_pipe") == 0);
}

static void probe_take(media_probe_info *info, const probe_stream *s, int *video_real)
{
    if (s->index < 0)
        return;
    if (strcmp(s->codec_type, "audio") == 0 && !info->has_audio) {
        info->has_audio = 1;
        APP_STRCPY(info->audio_codec, s->codec_name);
    } else if (strcmp(s->codec_type, "video") == 0 && !s->attached_pic && !*video_real) {
        /* The first video stream, or a later one replacing a still picture taken before. */
        APP_STRCPY(info->video_codec, s->codec_name);
        info->width = s->width;
        info->height = s->height;
        *video_real = 1;
    } else if (strcmp(s->codec_type, "video") == 0 && !info->video_codec[0]) {
        APP_STRCPY(info->video_codec, s->codec_name); /* cover art: known, but no video */
        info->width = s->width;
        info->height = s->height;
    }
}

int media_probe_parse(const char *out, media_probe_info *info)
{
    *info = (media_probe_info){0};
    probe_stream cur = {.index = -1};
    int video_real = 0;
    double duration = 0;
    const char *line = out;
    for (int lines = 0; *line && lines < MEDIA_PROBE_LINES_MAX; lines++) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[256];
        if (len < sizeof(buf)) {
            memcpy(buf, line, len);
            buf[len] = '\0';
            char *eq = strchr(buf, '=');
            if (eq) {
                *eq = '\0';
                const char *key = buf, *val = eq + 1;
                if (strncmp(key, "streams.stream.", 15) == 0) {
                    char *end;
                    long idx = strtol(key + 15, &end, 10);
                    if (end != key + 15 && *end == '.') {
                        if (idx != cur.index) {
                            probe_take(info, &cur, &video_real);
                            cur = (probe_stream){.index = idx};
                        }
                        const char *f = end + 1;
                        if (strcmp(f, "codec_type") == 0)
                            probe_value(cur.codec_type, sizeof(cur.codec_type), val);
                        else if (strcmp(f, "codec_name") == 0)
                            probe_value(cur.codec_name, sizeof(cur.codec_name), val);
                        else if (strcmp(f, "width") == 0)
                            cur.width = probe_u32(val);
                        else if (strcmp(f, "height") == 0)
                            cur.height = probe_u32(val);
                        else if (strcmp(f, "disposition.attached_pic") == 0)
                            cur.attached_pic = val[0] == '1';
                    }
                } else if (strcmp(key, "format.format_name") == 0) {
                    probe_value(info->format_name, sizeof(info->format_name), val);
                } else if (strcmp(key, "format.duration") == 0) {
                    char d[32];
                    probe_value(d, sizeof(d), val);
                    char *end;
                    duration = strtod(d, &end);
                    if (end == d || !(duration > 0))
                        duration = 0;
                }
            }
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    probe_take(info, &cur, &video_real);
    if (duration > 0)
        info->duration_ms = duration * 1000.0 >= (double)UINT32_MAX ? UINT32_MAX : (uint32_t)(duration * 1000.0);
    /* A still picture (a JPEG, a PNG: an image demuxer, or no duration) is no video. */
    info->has_video = video_real && info->duration_ms > 0 && !image_format(info->format_name);
    return info->format_name[0] ? RPC_OK : RPC_ERR;
}

/* media_probe; *unreadable set when ffprobe ran and refused the file (no retry will help). */
static int probe_file(const app *a, const char *path, const _Atomic int *cancel, media_probe_info *info,
                      int *unreadable, rpc_error *err)
{
    *info = (media_probe_info){0};
    *unreadable = 0;
    const char *argv[] = {ffprobe_path(a),
                          "-v",
                          "error",
                          "-show_entries",
                          "format=duration,format_name:stream=codec_type,codec_name,width,height"
                          ":stream_disposition=attached_pic",
                          "-of",
                          "flat",
                          /* "file:" so that a path is never read as another protocol */
                          NULL,
                          NULL};
    char target[MEDIA_PATH_MAX + 8];
    int n = snprintf(target, sizeof(target), "file:%s", path);
    if (n < 0 || (size_t)n >= sizeof(target)) {
        snprintf(err->message, sizeof(err->message), "media path too long");
        return RPC_ERR;
    }
    argv[7] = target;
    uint32_t t = job_timeout_s(a);
    subprocess_limits lim = tool_limits(t < MEDIA_PROBE_TIMEOUT_S ? t : MEDIA_PROBE_TIMEOUT_S);
    lim.cancel = cancel;
    char *out = malloc(MEDIA_PROBE_OUT_MAX);
    if (!out) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    subprocess_result res;
    int st = subprocess_run(argv, &lim, "ffprobe", out, MEDIA_PROBE_OUT_MAX, &res, err);
    if (st == RPC_OK) {
        if (res.cancelled) {
            snprintf(err->message, sizeof(err->message), "ffprobe was stopped (the server is stopping)");
            st = RPC_ERR;
        } else if (res.timed_out) {
            snprintf(err->message, sizeof(err->message), "ffprobe took longer than %u s", (unsigned)lim.timeout_ms / 1000);
            st = RPC_ERR;
        } else if (!res.exited || res.exit_code != 0) {
            snprintf(err->message, sizeof(err->message), "not a media file ffprobe can read");
            *unreadable = res.exited;
            st = RPC_ERR;
        } else if (media_probe_parse(out, info) != RPC_OK) {
            snprintf(err->message, sizeof(err->message), "ffprobe found no media format in the file");
            *unreadable = 1;
            st = RPC_ERR;
        }
    }
    free(out);
    return st;
}

int media_probe(const app *a, const char *path, media_probe_info *info, rpc_error *err)
{
    int unreadable;
    return probe_file(a, path, NULL, info, &unreadable, err);
}


/* ---- the queue's rows ----------------------------------------------------------------------- */

static void subject_key(store_key *k, uint32_t kind, uint64_t user_id, uint64_t video_id)
{
    store_key_reset(k);
    store_key_u32(k, kind);
    store_key_u64(k, user_id);
    store_key_u64(k, video_id);
}

static void state_key(store_key *k, lagoon_v1_MediaJob_State state)
{
    store_key_reset(k);
    store_key_u32(k, (uint32_t)state);
}

int media_enqueue(store_txn *t, const app *a, int64_t now, enum media_job_kind kind, uint64_t user_id,
                  uint64_t subject_id, store_error *err)
{
    (void)a;
    uint64_t video_id = 0, upload_id = 0;
    if (kind == MEDIA_JOB_VIDEO) {
        lagoon_v1_Video *v = malloc(sizeof(*v)); /* ~37 KB */
        if (v == NULL)
            return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        int st = store_get(t, &lagoon_table_videos, subject_id, v, err);
        if (st == LAGOON_OK && v->owner_id != user_id)
            st = store_fail(err, LAGOON_INVALID_ARGUMENT, "video_id", "is not the user's video");
        upload_id = v->upload_id;
        free(v);
        if (st != LAGOON_OK)
            return st;
        video_id = subject_id;
    } else if (kind != MEDIA_JOB_PROFILE_IMAGE || subject_id != user_id) {
        return store_fail(err, LAGOON_INVALID_ARGUMENT, NULL, "no such media job kind or subject");
    }
    store_key k;
    subject_key(&k, (uint32_t)kind, user_id, video_id);
    lagoon_v1_MediaJob j;
    int st = store_get_by(t, &lagoon_table_media_jobs, lagoon_index_media_jobs_by_subject, &k, NULL, &j, err);
    int found = st == LAGOON_OK;
    if (st == LAGOON_NOT_FOUND) {
        j = (lagoon_v1_MediaJob)lagoon_v1_MediaJob_init_zero;
        j.kind = (lagoon_v1_MediaJob_Kind)kind;
        j.user_id = user_id;
        j.video_id = video_id;
        j.created_at = now;
    } else if (st != LAGOON_OK) {
        return st;
    }
    /* A running job stays RUNNING: its worker sees the generation changed when it ends and
     * queues it again, so two runs of one subject never write the same files at once. */
    if (j.state != lagoon_v1_MediaJob_State_RUNNING)
        j.state = lagoon_v1_MediaJob_State_QUEUED;
    j.generation++;
    j.attempts = 0;
    j.next_attempt_at = now;
    j.last_error[0] = '\0';
    j.upload_id = upload_id;
    j.updated_at = now;
    return found ? store_update(t, &lagoon_table_media_jobs, &j, err)
                 : store_insert(t, &lagoon_table_media_jobs, &j, NULL, err);
}

/* ---- the module's state --------------------------------------------------------------------- */

typedef struct media_state {
    app *a;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* kicks and stopping; CLOCK_MONOTONIC */
    int stopping;           /* under mu: no more claims */
    uint64_t kicks;         /* under mu: media_kick calls so far */
    _Atomic int cancel;     /* running tools are killed (subprocess_limits.cancel) */
    unsigned nthreads;
    pthread_t threads[MEDIA_WORKERS_MAX];
    /* media_job_counts: the jobs per state, counted again when a commit touched the table. */
    pthread_mutex_t count_mu;
    _Atomic int counts_stale;           /* set by on_commit (the store's writer thread) */
    uint64_t counts[MEDIA_JOB_STATES];  /* under count_mu */
    int subscribed;
} media_state;

void media_kick(const app *a)
{
    media_state *s = app_state(a, &media_module);
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->kicks++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int is_stopping(media_state *s)
{
    pthread_mutex_lock(&s->mu);
    int stop = s->stopping;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* ---- counts per state ----------------------------------------------------------------------- */

/* A commit that changed a job (this module's writes, Uploads' enqueue, a cascade from a deleted
 * video or account) makes the counts stale: counted again at the next read, not per commit. */
static void on_commit(void *arg, const store_change *changes, size_t n)
{
    media_state *s = arg;
    for (size_t i = 0; i < n; i++) {
        if (changes[i].table == &lagoon_table_media_jobs) {
            atomic_store(&s->counts_stale, 1);
            return;
        }
    }
}

/* Under count_mu: each state's jobs by the keys of by_state_due, up to MEDIA_JOB_COUNT_MAX. */
static int recount(media_state *s)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(s->a->db, &t, &err) != LAGOON_OK)
        return RPC_ERR;
    int st = LAGOON_OK;
    for (int state = 1; state < MEDIA_JOB_STATES && st == LAGOON_OK; state++) {
        store_key p;
        state_key(&p, (lagoon_v1_MediaJob_State)state);
        char token[STORE_PAGE_TOKEN_MAX + 1] = "";
        uint64_t n = 0;
        while (st == LAGOON_OK && n < MEDIA_JOB_COUNT_MAX) {
            store_query q = {.table = &lagoon_table_media_jobs,
                             .index = lagoon_index_media_jobs_by_state_due,
                             .prefix = p.buf,
                             .prefix_len = p.len,
                             .page_size = STORE_PAGE_SIZE_MAX,
                             .page_token = token};
            store_page pg;
            st = store_scan(t, &q, NULL, NULL, &pg, &err);
            if (st != LAGOON_OK)
                break;
            n += pg.count;
            memcpy(token, pg.next_page_token, sizeof(token));
            if (token[0] == '\0')
                break;
        }
        s->counts[state] = n < MEDIA_JOB_COUNT_MAX ? n : MEDIA_JOB_COUNT_MAX;
    }
    store_read_end(t);
    return st == LAGOON_OK ? RPC_OK : RPC_ERR;
}

int media_job_counts(const app *a, uint64_t counts[MEDIA_JOB_STATES])
{
    memset(counts, 0, sizeof(uint64_t) * MEDIA_JOB_STATES);
    media_state *s = app_state(a, &media_module);
    if (s == NULL)
        return RPC_ERR;
    pthread_mutex_lock(&s->count_mu);
    int st = RPC_OK;
    /* Cleared before the read begins: a commit after this point marks them stale again. */
    if (atomic_exchange(&s->counts_stale, 0)) {
        st = recount(s);
        if (st != RPC_OK)
            atomic_store(&s->counts_stale, 1);
    }
    if (st == RPC_OK)
        memcpy(counts, s->counts, sizeof(s->counts));
    pthread_mutex_unlock(&s->count_mu);
    return st;
}

/* ---- claiming ------------------------------------------------------------------------------- */

typedef struct claim_args {
    int64_t now;
    int found;          /* out: job is claimed (RUNNING) */
    int exhausted;      /* out: it already had MEDIA_ATTEMPTS_MAX attempts (the server died
                         * during the last ones): it fails without another run */
    int64_t next_due;   /* out, when none was due: the next QUEUED job's time (0: none) */
    lagoon_v1_MediaJob job;
} claim_args;

static int copy_job(void *arg, uint64_t id, const void *row)
{
    (void)id;
    *(lagoon_v1_MediaJob *)arg = *(const lagoon_v1_MediaJob *)row;
    return LAGOON_OK;
}

/* The oldest due QUEUED job becomes RUNNING, one more attempt. */
static int claim_fn(store_txn *t, void *arg, store_error *err)
{
    claim_args *c = arg;
    c->found = 0;
    c->exhausted = 0;
    c->next_due = 0;
    store_key p;
    state_key(&p, lagoon_v1_MediaJob_State_QUEUED);
    store_query q = {.table = &lagoon_table_media_jobs,
                     .index = lagoon_index_media_jobs_by_state_due,
                     .prefix = p.buf,
                     .prefix_len = p.len,
                     .page_size = 1};
    lagoon_v1_MediaJob j;
    store_page pg;
    int st = store_scan(t, &q, copy_job, &j, &pg, err);
    if (st != LAGOON_OK || pg.count == 0)
        return st;
    if (j.next_attempt_at > c->now) {
        c->next_due = j.next_attempt_at;
        return LAGOON_OK;
    }
    j.state = lagoon_v1_MediaJob_State_RUNNING;
    /* Only a crash re-queues a job at its last attempt (a failed attempt at it is FAILED): a
     * file that kills the server each time it runs is not run again and again. */
    if (j.attempts >= MEDIA_ATTEMPTS_MAX)
        c->exhausted = 1;
    else
        j.attempts++;
    j.updated_at = c->now;
    st = store_update(t, &lagoon_table_media_jobs, &j, err);
    if (st == LAGOON_OK) {
        c->job = j;
        c->found = 1;
    }
    return st;
}

/* j queued to run at now. */
static void job_requeue(lagoon_v1_MediaJob *j, int64_t now)
{
    j->state = lagoon_v1_MediaJob_State_QUEUED;
    j->next_attempt_at = now;
    j->updated_at = now;
}

/* At start: a RUNNING job is one whose server stopped mid-run (a crash): it runs again. */
static int requeue_one(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    int64_t now = *(const int64_t *)arg;
    lagoon_v1_MediaJob j;
    int st = store_get(t, &lagoon_table_media_jobs, id, &j, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    job_requeue(&j, now);
    return store_update(t, &lagoon_table_media_jobs, &j, err);
}

static int requeue_fn(store_txn *t, void *arg, store_error *err)
{
    store_key p;
    state_key(&p, lagoon_v1_MediaJob_State_RUNNING);
    store_query q = {.table = &lagoon_table_media_jobs,
                     .index = lagoon_index_media_jobs_by_state_due,
                     .prefix = p.buf,
                     .prefix_len = p.len};
    return app_each_id(t, &q, requeue_one, arg, err);
}

/* A run cut short by a stop gives its attempt back: it runs again at the next start, as if it
 * had not begun (unless a newer upload changed the job meanwhile: then that one runs). */
typedef struct giveback_args {
    int64_t now;
    const lagoon_v1_MediaJob *claimed;
} giveback_args;

static int giveback_fn(store_txn *t, void *arg, store_error *err)
{
    const giveback_args *g = arg;
    lagoon_v1_MediaJob j;
    int st = store_get(t, &lagoon_table_media_jobs, g->claimed->id, &j, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    if (j.state != lagoon_v1_MediaJob_State_RUNNING)
        return LAGOON_OK;
    if (j.generation == g->claimed->generation && j.attempts > 0)
        j.attempts--;
    job_requeue(&j, g->now);
    return store_update(t, &lagoon_table_media_jobs, &j, err);
}

/* ---- running a job -------------------------------------------------------------------------- */

enum run_status {
    RUN_OK = 0,
    RUN_RETRY,   /* this attempt failed; another may not (a tool crashed, timed out; I/O) */
    RUN_FAIL,    /* the input is at fault: no attempt will do better */
    RUN_STOPPED, /* the server is stopping: the job is given back */
};

typedef struct run_outcome {
    enum run_status status;
    char reason[MEDIA_ERROR_MAX]; /* status RETRY/FAIL: for the owner */
    media_probe_info info;        /* VIDEO: the source */
    uint32_t files;               /* MEDIA_FILE_* published (besides the original) */
    uint64_t bytes;               /* of the original and the published outputs */
    uint64_t original_bytes;      /* VIDEO: of the original alone */
    int published;                /* outputs were put under their final names */
    int discarded;                /* the job changed during the run: nothing was published */
} run_outcome;

static const char *ffmpeg_path(const app *a)
{
    return a->cfg.ffmpeg[0] ? a->cfg.ffmpeg : "ffmpeg";
}

static int run_set(run_outcome *o, enum run_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run_set(run_outcome *o, enum run_status st, const char *fmt, ...)
{
    o->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->reason, sizeof(o->reason), fmt, ap);
    va_end(ap);
    return st;
}

/* "file:<path>": a path is never read as another of ffmpeg's protocols. */
static int file_url(char *buf, size_t cap, const char *path)
{
    int n = snprintf(buf, cap, "file:%s", path);
    return n >= 0 && (size_t)n < cap ? LAGOON_OK : LAGOON_INTERNAL;
}

/* ffmpeg [-ss seek] -i input <out_args> output, within the job's limits. RUN_OK, or the
 * outcome set. what names the output for the reason ("the 480p rendition"). */
static int run_ffmpeg(media_state *s, const char *what, const char *seek, const char *input,
                      const char *const *out_args, const char *output, run_outcome *o)
{
    const app *a = s->a;
    char in_url[MEDIA_PATH_MAX + 8], out_url[MEDIA_PATH_MAX + 8];
    if (file_url(in_url, sizeof(in_url), input) != LAGOON_OK || file_url(out_url, sizeof(out_url), output) != LAGOON_OK)
        return run_set(o, RUN_RETRY, "internal error: media path too long");
    const char *argv[SUBPROCESS_ARGS_MAX];
    size_t n = 0;
    static const char *const head[] = {"-nostdin", "-hide_banner", "-nostats", "-v", "error", "-y"};
    argv[n++] = ffmpeg_path(a);
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++)
        argv[n++] = head[i];
    if (seek) {
        argv[n++] = "-ss";
        argv[n++] = seek;
    }
    argv[n++] = "-threads"; /* the decoder's: by default one per core, each under RLIMIT_AS */
    argv[n++] = MEDIA_FFMPEG_THREADS;
    argv[n++] = "-i";
    argv[n++] = in_url;
    for (size_t i = 0; out_args[i] && n + 4 < SUBPROCESS_ARGS_MAX; i++)
        argv[n++] = out_args[i];
    argv[n++] = "-threads";
    argv[n++] = MEDIA_FFMPEG_THREADS;
    argv[n++] = out_url;
    argv[n] = NULL;
    uint32_t timeout = job_timeout_s(a);
    subprocess_limits lim = tool_limits(timeout);
    lim.cancel = &s->cancel;
    subprocess_result res;
    rpc_error err;
    if (subprocess_run(argv, &lim, "ffmpeg", NULL, 0, &res, &err) != RPC_OK)
        return run_set(o, RUN_RETRY, "%s", err.message);
    if (res.cancelled)
        return run_set(o, RUN_STOPPED, "the server stopped");
    if (res.timed_out)
        return run_set(o, RUN_RETRY, "making %s took longer than %u s", what, (unsigned)timeout);
    if (!res.exited)
        return run_set(o, RUN_RETRY, "ffmpeg was killed by signal %d making %s", res.signal, what);
    if (res.exit_code != 0)
        return run_set(o, RUN_RETRY, "ffmpeg failed making %s (exit status %d)", what, res.exit_code);
    struct stat sb;
    if (stat(output, &sb) != 0 || sb.st_size == 0)
        return run_set(o, RUN_RETRY, "ffmpeg made no %s", what);
    return RUN_OK;
}

/* Whether the job is still the one claimed: its row, its generation and (a video) the video's
 * upload. A read error says yes: the finishing write decides for sure. */
static int still_current(const app *a, const lagoon_v1_MediaJob *claimed)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(a->db, &t, &err) != LAGOON_OK)
        return 1;
    lagoon_v1_MediaJob j;
    int st = store_get(t, &lagoon_table_media_jobs, claimed->id, &j, &err);
    int current = st != LAGOON_OK ? st != LAGOON_NOT_FOUND : j.generation == claimed->generation;
    if (current && st == LAGOON_OK && claimed->kind == lagoon_v1_MediaJob_Kind_VIDEO) {
        lagoon_v1_Video *v = malloc(sizeof(*v));
        if (v != NULL) {
            st = store_get(t, &lagoon_table_videos, claimed->video_id, v, &err);
            current = st != LAGOON_OK ? st != LAGOON_NOT_FOUND : v->upload_id == claimed->upload_id;
            free(v);
        }
    }
    store_read_end(t);
    return current;
}

/* One output of a run: its final path, its temporary one beside it, its bit. */
typedef struct run_file {
    char final[MEDIA_PATH_MAX];
    char tmp[MEDIA_PATH_MAX + 8];
    uint32_t bit;
    int made;
} run_file;

static int run_file_paths(run_file *f, const char *final, uint32_t bit)
{
    f->bit = bit;
    f->made = 0;
    APP_STRCPY(f->final, final);
    int n = snprintf(f->tmp, sizeof(f->tmp), "%s.tmp", final);
    return n >= 0 && (size_t)n < sizeof(f->tmp) && strlen(final) < sizeof(f->final) ? LAGOON_OK : LAGOON_INTERNAL;
}

/* Publishes the made outputs (after a last look that the job is still current) and counts the
 * bytes; removes the temporaries on every path. */
static void run_publish(media_state *s, const lagoon_v1_MediaJob *j, const char *original, run_file *files,
                        size_t n, run_outcome *o)
{
    if (o->status == RUN_OK && !still_current(s->a, j))
        o->discarded = 1;
    struct stat sb;
    if (o->status == RUN_OK && !o->discarded)
        o->bytes = stat(original, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    for (size_t i = 0; i < n; i++) {
        if (!files[i].made)
            continue;
        if (o->status != RUN_OK || o->discarded) {
            (void)unlink(files[i].tmp);
            continue;
        }
        int st = media_publish(files[i].tmp, files[i].final);
        if (st != LAGOON_OK) {
            run_set(o, RUN_RETRY, "cannot store the processed file: %s",
                    st == LAGOON_RESOURCE_EXHAUSTED ? "the disk is full" : "an I/O error");
            continue;
        }
        o->published = 1;
        o->files |= files[i].bit;
        if (stat(files[i].final, &sb) == 0)
            o->bytes += (uint64_t)sb.st_size;
    }
}

/* Probes the original: RUN_OK with o->info, or the outcome set. */
static int run_probe(media_state *s, const char *original, const char *what, run_outcome *o)
{
    rpc_error err;
    int unreadable;
    if (probe_file(s->a, original, &s->cancel, &o->info, &unreadable, &err) == RPC_OK)
        return RUN_OK;
    if (atomic_load(&s->cancel))
        return run_set(o, RUN_STOPPED, "the server stopped");
    if (unreadable)
        return run_set(o, RUN_FAIL, "the file is not %s ffprobe can read", what);
    return run_set(o, RUN_RETRY, "%s", err.message);
}

/* An even height for a rendition: the target, or the source's when that is smaller (never
 * scaled up). */
static uint32_t rendition_height(uint32_t target, uint32_t source)
{
    uint32_t h = source && source < target ? source : target;
    h &= ~1u;
    return h < 2 ? 2 : h;
}

static void run_video(media_state *s, const lagoon_v1_MediaJob *j, run_outcome *o)
{
    const app *a = s->a;
    char original[MEDIA_PATH_MAX], p[MEDIA_PATH_MAX];
    run_file files[3];
    static const char *const names[3] = {MEDIA_THUMBNAIL, MEDIA_SD, MEDIA_HD};
    static const uint32_t bits[3] = {MEDIA_FILE_THUMBNAIL, MEDIA_FILE_SD, MEDIA_FILE_HD};
    if (media_video_path(a, j->user_id, j->video_id, MEDIA_ORIGINAL, original, sizeof(original)) != LAGOON_OK) {
        run_set(o, RUN_FAIL, "internal error: media path too long");
        return;
    }
    for (size_t i = 0; i < 3; i++) {
        if (media_video_path(a, j->user_id, j->video_id, names[i], p, sizeof(p)) != LAGOON_OK ||
            run_file_paths(&files[i], p, bits[i]) != LAGOON_OK) {
            run_set(o, RUN_FAIL, "internal error: media path too long");
            return;
        }
    }
    struct stat sb;
    o->original_bytes = stat(original, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    if (run_probe(s, original, "a video", o) != RUN_OK)
        return;
    const media_probe_info *info = &o->info;
    if (!info->has_video) {
        run_set(o, RUN_FAIL, "the file has no video in it (a still image or sound only)");
        return;
    }
    if (!info->width || !info->height) {
        run_set(o, RUN_FAIL, "the video's picture size is unknown or above %ux%u", MEDIA_DIMENSION_MAX,
                MEDIA_DIMENSION_MAX);
        return;
    }
    if (info->duration_ms > MEDIA_DURATION_MAX_S * 1000u) {
        run_set(o, RUN_FAIL, "the video is longer than %u hours", (unsigned)MEDIA_DURATION_MAX_S / 3600u);
        return;
    }
    /* A run killed mid-way (kill -9) left its temporaries: none is taken for this run's. */
    for (size_t i = 0; i < 3; i++)
        (void)unlink(files[i].tmp);
    /* The thumbnail: a tenth of the way in (past a fade from black), at most
     * MEDIA_THUMBNAIL_AT_MS. */
    uint32_t at = info->duration_ms / 10 < MEDIA_THUMBNAIL_AT_MS ? info->duration_ms / 10 : MEDIA_THUMBNAIL_AT_MS;
    char seek[24];
    snprintf(seek, sizeof(seek), "%u.%03u", at / 1000, at % 1000);
    static const char *const thumb_args[] = {"-frames:v", "1", "-an", "-vf",
                                             "scale='min(" MEDIA_STR(MEDIA_THUMBNAIL_WIDTH) ",iw)':-2", "-c:v",
                                             "mjpeg", "-q:v", "3", "-update", "1", "-f", "image2", NULL};
    if (run_ffmpeg(s, "the thumbnail", seek, original, thumb_args, files[0].tmp, o) != RUN_OK)
        goto out;
    files[0].made = 1;
    /* The renditions: the first video stream and the first audio one (none without). */
    for (size_t i = 1; i < 3; i++) {
        uint32_t target = i == 1 ? MEDIA_SD_HEIGHT : MEDIA_HD_HEIGHT;
        if (i == 2 && info->height <= MEDIA_SD_HEIGHT)
            break; /* hd only above sd: sd is then the source's own height */
        char scale[32];
        snprintf(scale, sizeof(scale), "scale=-2:%u", rendition_height(target, info->height));
        const char *args[32];
        size_t n = 0;
        args[n++] = "-map";
        args[n++] = "0:v:0";
        if (info->has_audio) {
            args[n++] = "-map";
            args[n++] = "0:a:0";
            args[n++] = "-c:a";
            args[n++] = "aac";
            args[n++] = "-b:a";
            args[n++] = MEDIA_AAC_BITRATE;
        } else {
            args[n++] = "-an";
        }
        static const char *const video_args[] = {"-t", MEDIA_STR(MEDIA_DURATION_MAX_S), "-sn", "-dn", "-vf", NULL,
                                                 "-c:v", "libx264", "-preset",
                                                 MEDIA_X264_PRESET, "-crf", MEDIA_X264_CRF, "-pix_fmt", "yuv420p",
                                                 "-movflags", "+faststart", "-f", "mp4"};
        for (size_t k = 0; k < sizeof(video_args) / sizeof(video_args[0]); k++)
            args[n++] = video_args[k] ? video_args[k] : scale;
        args[n] = NULL;
        if (run_ffmpeg(s, i == 1 ? "the 480p rendition" : "the 720p rendition", NULL, original, args, files[i].tmp,
                       o) != RUN_OK)
            goto out;
        files[i].made = 1;
    }
out:
    run_publish(s, j, original, files, 3, o);
}

static void run_profile(media_state *s, const lagoon_v1_MediaJob *j, run_outcome *o)
{
    const app *a = s->a;
    char original[MEDIA_PATH_MAX], p[MEDIA_PATH_MAX];
    run_file files[2];
    static const char *const names[2] = {MEDIA_PROFILE, MEDIA_PROFILE_THUMBNAIL};
    if (media_profile_path(a, j->user_id, MEDIA_ORIGINAL, original, sizeof(original)) != LAGOON_OK) {
        run_set(o, RUN_FAIL, "internal error: media path too long");
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        if (media_profile_path(a, j->user_id, names[i], p, sizeof(p)) != LAGOON_OK ||
            run_file_paths(&files[i], p, 0) != LAGOON_OK) {
            run_set(o, RUN_FAIL, "internal error: media path too long");
            return;
        }
    }
    if (run_probe(s, original, "an image", o) != RUN_OK)
        return;
    if (!o->info.video_codec[0] || !o->info.width || !o->info.height) {
        run_set(o, RUN_FAIL, "the file is not an image");
        return;
    }
    for (size_t i = 0; i < 2; i++)
        (void)unlink(files[i].tmp); /* left by a run killed mid-way */
    /* Square: scaled to cover the square, then the middle cut out. */
    static const char *const filters[2] = {
        "scale=" MEDIA_STR(MEDIA_PROFILE_SIZE) ":" MEDIA_STR(MEDIA_PROFILE_SIZE) ":force_original_aspect_ratio="
        "increase,crop=" MEDIA_STR(MEDIA_PROFILE_SIZE) ":" MEDIA_STR(MEDIA_PROFILE_SIZE),
        "scale=" MEDIA_STR(MEDIA_PROFILE_THUMBNAIL_SIZE) ":" MEDIA_STR(MEDIA_PROFILE_THUMBNAIL_SIZE)
        ":force_original_aspect_ratio=increase,crop=" MEDIA_STR(MEDIA_PROFILE_THUMBNAIL_SIZE) ":" MEDIA_STR(
            MEDIA_PROFILE_THUMBNAIL_SIZE)};
    for (size_t i = 0; i < 2; i++) {
        const char *args[] = {"-frames:v", "1", "-an", "-vf", filters[i], "-c:v", "mjpeg",
                              "-q:v",      "3", "-update", "1", "-f", "image2", NULL};
        if (run_ffmpeg(s, i == 0 ? "the profile image" : "the profile thumbnail", NULL, original, args,
                       files[i].tmp, o) != RUN_OK)
            break;
        files[i].made = 1;
    }
    run_publish(s, j, original, files, 2, o);
}

/* ---- finishing ------------------------------------------------------------------------------ */

/* What the worker does with the files once the finishing write has committed. */
enum finish_after {
    AFTER_NONE = 0,
    AFTER_DISCARD,        /* remove the outputs: the job changed during the run, or failed for good */
    AFTER_REMOVE_VIDEO,   /* the video is gone: its whole directory */
    AFTER_REMOVE_PROFILE, /* the user is gone: the profile images */
};

typedef struct finish_args {
    const app *a;
    int64_t now;
    const lagoon_v1_MediaJob *claimed;
    const run_outcome *o;
    enum finish_after after; /* out */
    int drop_hd;             /* out: a 720p rendition of an earlier upload is to be removed */
    int requeued;            /* out: queued again at once (wake a worker) */
} finish_args;

typedef struct notify_ctx {
    const app *a;
    lagoon_v1_Notification_Type type;
    const char *title, *content, *key;
} notify_ctx;

static int notify_share(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    const notify_ctx *c = arg;
    lagoon_v1_VideoShare sh;
    int st = store_get(t, &lagoon_table_video_shares, id, &sh, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    return events_notify(t, c->a, sh.user_id, c->type, c->title, c->content, sh.video_id, c->key, 0, NULL, err);
}

/* MEDIA_READY / MEDIA_FAILED to the owner and to every user the video is shared with. */
static int notify_video(store_txn *t, const app *a, const lagoon_v1_Video *v, int ready, store_error *err)
{
    char title[200], content[520], key[40];
    app_copy_utf8(title, sizeof(title), v->title);
    if (ready)
        APP_STRCPY(content, title);
    else
        snprintf(content, sizeof(content), "%s: %.300s", title, v->error_reason); /* reasons are ASCII */
    /* One per video while unread: a re-upload processed again does not pile them up. */
    snprintf(key, sizeof(key), "%s:%llu", ready ? "mr" : "mf", (unsigned long long)v->id);
    notify_ctx c = {.a = a,
                    .type = ready ? lagoon_v1_Notification_Type_MEDIA_READY : lagoon_v1_Notification_Type_MEDIA_FAILED,
                    .title = ready ? "Your video is ready" : "Your video could not be processed",
                    .content = content,
                    .key = key};
    int st = events_notify(t, a, v->owner_id, c.type, c.title, content, v->id, key, 0, NULL, err);
    if (st != LAGOON_OK)
        return st;
    c.title = ready ? "A video shared with you is ready" : "A video shared with you could not be processed";
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, v->id);
    store_query q = {.table = &lagoon_table_video_shares,
                     .index = lagoon_index_video_shares_by_video_user,
                     .prefix = p.buf,
                     .prefix_len = p.len};
    return app_each_id(t, &q, notify_share, &c, err);
}

/* The delay before attempt n + 1 after n attempts failed: MEDIA_RETRY_BASE_MS doubling. */
static int64_t retry_delay_ms(uint32_t attempts)
{
    uint32_t shift = attempts > 1 ? attempts - 1 : 0;
    return (int64_t)MEDIA_RETRY_BASE_MS << (shift < 16 ? shift : 16);
}

/* The job's state after the run (a video's or profile's row aside): SUCCEEDED, QUEUED for a
 * retry, or FAILED. Returns whether it failed for good. */
static int job_outcome(lagoon_v1_MediaJob *j, const run_outcome *o, int64_t now)
{
    j->updated_at = now;
    if (o->status == RUN_OK) {
        j->state = lagoon_v1_MediaJob_State_SUCCEEDED;
        j->last_error[0] = '\0';
        return 0;
    }
    APP_STRCPY(j->last_error, o->reason);
    if (o->status == RUN_RETRY && j->attempts < MEDIA_ATTEMPTS_MAX) {
        j->state = lagoon_v1_MediaJob_State_QUEUED;
        j->next_attempt_at = now + retry_delay_ms(j->attempts);
        return 0;
    }
    j->state = lagoon_v1_MediaJob_State_FAILED;
    return 1;
}

static int finish_video(store_txn *t, finish_args *f, lagoon_v1_MediaJob *j, store_error *err)
{
    const run_outcome *o = f->o;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_videos, j->video_id, v, err);
    if (st == LAGOON_NOT_FOUND) {
        f->after = AFTER_REMOVE_VIDEO;
        st = store_delete(t, &lagoon_table_media_jobs, j->id, err);
        goto out;
    }
    if (st != LAGOON_OK)
        goto out;
    if (v->upload_id != j->upload_id) {
        /* Re-uploaded without a new job (cannot happen through Uploads): process the new file. */
        f->after = o->published ? AFTER_DISCARD : AFTER_NONE;
        j->upload_id = v->upload_id;
        job_requeue(j, f->now);
        f->requeued = 1;
        st = store_update(t, &lagoon_table_media_jobs, j, err);
        goto out;
    }
    int failed = job_outcome(j, o, f->now);
    if (o->status == RUN_OK) {
        const media_probe_info *info = &o->info;
        v->status = lagoon_v1_Video_Status_READY;
        v->duration_seconds = (info->duration_ms + 999) / 1000;
        v->width = info->width;
        v->height = info->height;
        APP_STRCPY(v->video_codec, info->video_codec);
        APP_STRCPY(v->audio_codec, info->audio_codec);
        v->media_files = (v->media_files & ~(MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD | MEDIA_FILE_HD)) | o->files;
        v->media_bytes = o->bytes;
        v->error_reason[0] = '\0';
        f->drop_hd = !(o->files & MEDIA_FILE_HD);
    } else if (failed) {
        /* Only the original stays: outputs of an earlier upload, or of a failed attempt that
         * got as far as publishing some, are not of this file. */
        v->status = lagoon_v1_Video_Status_ERROR;
        v->media_files &= ~(MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD | MEDIA_FILE_HD);
        if (o->original_bytes)
            v->media_bytes = o->original_bytes;
        f->after = AFTER_DISCARD;
        if (o->status == RUN_RETRY)
            snprintf(v->error_reason, sizeof(v->error_reason), "processing failed %u times; the last time: %s",
                     (unsigned)j->attempts, o->reason);
        else
            APP_STRCPY(v->error_reason, o->reason);
    }
    if (o->status == RUN_OK || failed) {
        v->updated_at = f->now;
        st = store_update(t, &lagoon_table_videos, v, err);
        if (st == LAGOON_OK)
            st = notify_video(t, f->a, v, o->status == RUN_OK, err);
    }
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_media_jobs, j, err);
out:
    free(v);
    return st;
}

static int finish_profile(store_txn *t, finish_args *f, lagoon_v1_MediaJob *j, store_error *err)
{
    const run_outcome *o = f->o;
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, j->user_id, u, err);
    if (st == LAGOON_NOT_FOUND) {
        f->after = AFTER_REMOVE_PROFILE;
        st = LAGOON_OK;
        goto out;
    }
    if (st != LAGOON_OK)
        goto out;
    (void)job_outcome(j, o, f->now);
    if (o->status == RUN_OK) {
        char rel[128];
        st = media_profile_relpath(u->id, MEDIA_PROFILE, rel, sizeof(rel));
        if (st == LAGOON_OK) {
            /* A marker, not a URL: the output paths sign it (media_sign.h). */
            snprintf(u->profile_image_url, sizeof(u->profile_image_url), "media:%s", rel);
            u->updated_at = f->now;
            st = store_update(t, &lagoon_table_users, u, err);
        } else {
            st = store_fail(err, LAGOON_INTERNAL, NULL, "media path too long");
        }
    }
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_media_jobs, j, err);
out:
    store_row_release(&lagoon_table_users, u);
    free(u);
    return st;
}

static int finish_fn(store_txn *t, void *arg, store_error *err)
{
    finish_args *f = arg;
    f->after = AFTER_NONE;
    f->drop_hd = 0;
    f->requeued = 0;
    lagoon_v1_MediaJob j;
    int st = store_get(t, &lagoon_table_media_jobs, f->claimed->id, &j, err);
    if (st == LAGOON_NOT_FOUND) {
        /* Its video or user was deleted (the job went with it): nothing of the run stays. */
        f->after = f->claimed->kind == lagoon_v1_MediaJob_Kind_VIDEO ? AFTER_REMOVE_VIDEO : AFTER_REMOVE_PROFILE;
        return LAGOON_OK;
    }
    if (st != LAGOON_OK)
        return st;
    if (j.generation != f->claimed->generation || j.state != lagoon_v1_MediaJob_State_RUNNING || f->o->discarded) {
        /* A newer upload came during the run: its file is processed next, this run's outputs
         * (of the older file) are removed. */
        f->after = f->o->published ? AFTER_DISCARD : AFTER_NONE;
        if (j.state != lagoon_v1_MediaJob_State_RUNNING)
            return LAGOON_OK;
        job_requeue(&j, f->now);
        f->requeued = 1;
        return store_update(t, &lagoon_table_media_jobs, &j, err);
    }
    app_now_pin(f->now); /* notifications' time is the write's */
    st = j.kind == lagoon_v1_MediaJob_Kind_VIDEO ? finish_video(t, f, &j, err) : finish_profile(t, f, &j, err);
    app_now_pin(0);
    return st;
}

/* Removes the files the finishing write said to remove (after it committed). */
static void finish_files(const app *a, const lagoon_v1_MediaJob *j, const finish_args *f)
{
    char p[MEDIA_PATH_MAX];
    if (f->after == AFTER_REMOVE_VIDEO) {
        (void)media_remove_video(a, j->user_id, j->video_id);
        return;
    }
    if (j->kind == lagoon_v1_MediaJob_Kind_VIDEO) {
        static const char *const names[3] = {MEDIA_THUMBNAIL, MEDIA_SD, MEDIA_HD};
        for (size_t i = 0; i < 3; i++)
            if ((f->after == AFTER_DISCARD || (i == 2 && f->drop_hd)) &&
                media_video_path(a, j->user_id, j->video_id, names[i], p, sizeof(p)) == LAGOON_OK)
                (void)unlink(p);
        return;
    }
    if (f->after == AFTER_DISCARD || f->after == AFTER_REMOVE_PROFILE) {
        static const char *const names[3] = {MEDIA_PROFILE, MEDIA_PROFILE_THUMBNAIL, MEDIA_ORIGINAL};
        size_t n = f->after == AFTER_REMOVE_PROFILE ? 3 : 2;
        for (size_t i = 0; i < n; i++)
            if (media_profile_path(a, j->user_id, names[i], p, sizeof(p)) == LAGOON_OK)
                (void)unlink(p);
        if (f->after == AFTER_REMOVE_PROFILE && media_profile_path(a, j->user_id, NULL, p, sizeof(p)) == LAGOON_OK)
            (void)rmdir(p);
    }
}

/* A finishing write that fails (the write queue full, the disk full) is tried again this many
 * times, MEDIA_FINISH_RETRY_MS apart; after that the job stays RUNNING until the next start
 * re-queues it. */
#define MEDIA_FINISH_TRIES 5
#define MEDIA_FINISH_RETRY_MS 1000

static void run_claimed(media_state *s, const lagoon_v1_MediaJob *j, int exhausted)
{
    app *a = s->a;
    run_outcome *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        log_msg(LOG_ERROR, "media: job %llu: out of memory", (unsigned long long)j->id);
        return;
    }
    if (exhausted) {
        char original[MEDIA_PATH_MAX];
        struct stat sb;
        if (j->kind == lagoon_v1_MediaJob_Kind_VIDEO &&
            media_video_path(a, j->user_id, j->video_id, MEDIA_ORIGINAL, original, sizeof(original)) == LAGOON_OK &&
            stat(original, &sb) == 0)
            o->original_bytes = (uint64_t)sb.st_size;
        run_set(o, RUN_FAIL, "processing was cut short %u times (the server stopped during it)",
                (unsigned)j->attempts);
    } else if (j->kind == lagoon_v1_MediaJob_Kind_VIDEO) {
        run_video(s, j, o);
    } else {
        run_profile(s, j, o);
    }
    store_error err;
    if (o->status == RUN_STOPPED) {
        giveback_args g = {.now = app_now(a), .claimed = j};
        if (store_write(a->db, giveback_fn, &g, &err) != LAGOON_OK)
            log_msg(LOG_WARN, "media: job %llu stays RUNNING until the next start: %s", (unsigned long long)j->id,
                    err.message);
        free(o);
        return;
    }
    if (o->status != RUN_OK)
        log_msg(LOG_WARN, "media: job %llu attempt %u: %s", (unsigned long long)j->id, (unsigned)j->attempts,
                o->reason);
    finish_args f = {.a = a, .claimed = j, .o = o};
    int st = LAGOON_INTERNAL;
    for (int tries = 0; tries < MEDIA_FINISH_TRIES; tries++) {
        f.now = app_now(a);
        st = store_write(a->db, finish_fn, &f, &err);
        if (st == LAGOON_OK || is_stopping(s))
            break;
        struct timespec nap = {MEDIA_FINISH_RETRY_MS / 1000, 0};
        (void)nanosleep(&nap, NULL);
    }
    if (st == LAGOON_OK) {
        finish_files(a, j, &f);
        if (f.requeued)
            media_kick(a);
    } else {
        log_msg(LOG_ERROR, "media: job %llu: cannot record its result: %s", (unsigned long long)j->id, err.message);
    }
    free(o);
}

/* ---- the workers ---------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    media_state *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int stop = s->stopping;
        uint64_t seen = s->kicks;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        claim_args c = {.now = app_now(s->a)};
        store_error err;
        int st = store_write(s->a->db, claim_fn, &c, &err);
        if (st == LAGOON_OK && c.found) {
            run_claimed(s, &c.job, c.exhausted);
            continue;
        }
        if (st != LAGOON_OK)
            log_msg(LOG_WARN, "media: cannot claim a job: %s", err.message);
        /* Nothing due: sleep until kicked, the next job's time, or MEDIA_POLL_MS. */
        int64_t wait_ms = MEDIA_POLL_MS;
        if (st == LAGOON_OK && c.next_due && c.next_due - c.now < wait_ms)
            wait_ms = c.next_due - c.now > 0 ? c.next_due - c.now : 1;
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += (time_t)(wait_ms / 1000);
        dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&s->mu);
        int rc = 0;
        while (!s->stopping && s->kicks == seen && rc == 0)
            rc = pthread_cond_timedwait(&s->cv, &s->mu, &dl);
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

static unsigned worker_count(const app *a)
{
    unsigned n = a->cfg.media_workers;
    if (n == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 1 ? (unsigned)(cores - 1) : 1u;
    }
    return n < MEDIA_WORKERS_MAX ? n : MEDIA_WORKERS_MAX;
}

static void media_drain(app *a, void *state)
{
    (void)a;
    media_state *s = state;
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    atomic_store(&s->cancel, 1);
}

static void media_stop(app *a, void *state)
{
    media_state *s = state;
    if (s == NULL)
        return;
    media_drain(a, s);
    for (unsigned i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i], NULL);
    if (s->subscribed)
        store_unsubscribe(a->db, on_commit, s);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->count_mu);
    free(s);
}

static int media_start(app *a, void **state, rpc_error *err)
{
    *state = NULL;
    media_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err->message, sizeof(err->message), "media: out of memory");
        return RPC_ERR;
    }
    s->a = a;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->count_mu, NULL);
    atomic_store(&s->counts_stale, 1); /* counted at the first media_job_counts */
    store_error serr;
    if (store_subscribe(a->db, on_commit, s, &serr) != LAGOON_OK) {
        snprintf(err->message, sizeof(err->message), "media: %.160s", serr.message);
        media_stop(a, s);
        return RPC_ERR;
    }
    s->subscribed = 1;
    if (a->cfg.no_media_workers) {
        *state = s; /* an administration tool: the queue stays as it is for the next lagoond */
        return RPC_OK;
    }
    int64_t now = app_now(a);
    if (store_write(a->db, requeue_fn, &now, &serr) != LAGOON_OK) {
        snprintf(err->message, sizeof(err->message), "media: cannot re-queue interrupted jobs: %.160s", serr.message);
        media_stop(a, s);
        return RPC_ERR;
    }
    unsigned n = worker_count(a);
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&s->threads[i], NULL, worker_main, s) != 0) {
            snprintf(err->message, sizeof(err->message), "media: cannot start worker threads");
            media_stop(a, s);
            return RPC_ERR;
        }
        s->nthreads++;
    }
    *state = s;
    return RPC_OK;
}

const app_module media_module = {.name = "media", .start = media_start, .drain = media_drain, .stop = media_stop};

/* ---- the Media service ---------------------------------------------------------------------- */

static int job_item(void *arg, void *item, const void *row)
{
    (void)arg;
    *(lagoon_v1_MediaJob *)item = *(const lagoon_v1_MediaJob *)row;
    return 1;
}

int handle_Media_ListJobs(rpc_call *call, const lagoon_v1_ListMediaJobsRequest *req,
                          lagoon_v1_ListMediaJobsResponse *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    if (req->all && who->role != lagoon_v1_Role_ADMIN)
        return rpc_call_error(call, LAGOON_PERMISSION_DENIED, "only administrators may list every user's jobs");
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListMediaJobsResponse_info,
                     .items_tag = lagoon_v1_ListMediaJobsResponse_jobs_tag, .item = job_item,
                     .item_size = sizeof(lagoon_v1_MediaJob)};
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, who->user_id);
    l.query.table = &lagoon_table_media_jobs;
    l.query.reverse = 1;
    if (!req->all) {
        l.query.index = lagoon_index_media_jobs_by_user;
        l.query.prefix = prefix.buf;
        l.query.prefix_len = prefix.len;
    }
    int st = paging_read(call, &l);
    resp->jobs = l.items; /* FT_POINTER: freed with the call */
    resp->jobs_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

int handle_Media_GetJob(rpc_call *call, const lagoon_v1_GetMediaJobRequest *req, lagoon_v1_MediaJob *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, req->video_id);
    store_query q = {.table = &lagoon_table_media_jobs,
                     .index = lagoon_index_media_jobs_by_video,
                     .prefix = p.buf,
                     .prefix_len = p.len,
                     .page_size = 1};
    store_page pg;
    st = store_scan(t, &q, copy_job, resp, &pg, &err);
    store_read_end(t);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    if (pg.count == 0 || (resp->user_id != who->user_id && who->role != lagoon_v1_Role_ADMIN))
        return rpc_call_error(call, LAGOON_NOT_FOUND, "no processing job for this video");
    return LAGOON_OK;
}
