/* Media processing: the subprocess runner (limits, timeouts, captured output, inherited
 * descriptors closed), ffprobe's reading of real files made with ffmpeg at test time, and the
 * durable job queue with its workers through the real server and store. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "media.h"
#include "media_files.h"
#include "subprocess.h"
#include "testserver.h"
#include "uploads.h"
#include "videos.h"

static char Dir[64]; /* inputs generated for the whole file */

/* Runs a shell command line built by the test itself (inputs for ffmpeg); fails the test
 * unless it succeeds. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(cmd));
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("command failed (%d): %s", rc, cmd);
}

static void in_dir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", Dir, name);
    assert_true(n > 0 && (size_t)n < cap);
}

/* ---- subprocess ----------------------------------------------------------------------------- */

static subprocess_limits lim_default(void)
{
    return (subprocess_limits){.timeout_ms = 10000, .cpu_s = 10, .memory_bytes = 1ull << 30, .file_bytes = 1 << 20};
}

static void test_subprocess_output(void **state)
{
    (void)state;
    const char *argv[] = {"/bin/sh", "-c", "printf 'hello\\n'; echo err line >&2; exit 3", NULL};
    subprocess_limits lim = lim_default();
    char out[64];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.exited);
    assert_int_equal(res.exit_code, 3);
    assert_false(res.timed_out);
    assert_string_equal(out, "hello\n");
    assert_int_equal(res.out_len, 6);
    assert_false(res.out_truncated);
}

static void test_subprocess_truncates(void **state)
{
    (void)state;
    /* 100 000 bytes of stdout into 16: the rest is drained (the child is not blocked on a
     * full pipe) and dropped. */
    const char *argv[] = {"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x", NULL};
    subprocess_limits lim = lim_default();
    char out[16];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.exited);
    assert_int_equal(res.exit_code, 0);
    assert_int_equal(res.out_len, 15);
    assert_true(res.out_truncated);
    assert_string_equal(out, "xxxxxxxxxxxxxxx");
}

static void test_subprocess_timeout_kills_group(void **state)
{
    (void)state;
    /* A child that starts a grandchild and both sleep: the wall-clock limit kills the group,
     * so the grandchild (holding the pipes) goes too and the run returns. */
    const char *argv[] = {"/bin/sh", "-c", "sleep 30 & sleep 30; echo never", NULL};
    subprocess_limits lim = lim_default();
    lim.timeout_ms = 200;
    char out[16];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.timed_out);
    assert_false(res.exited);
    assert_int_equal(res.signal, SIGKILL);
    assert_string_equal(out, "");
    /* No zombie left: the child was reaped. */
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

static void test_subprocess_closes_fds(void **state)
{
    (void)state;
    /* A descriptor the parent holds open without close-on-exec (as a library might) is not
     * inherited; stdin is /dev/null. */
    int fd = open("/dev/null", O_RDONLY);
    assert_true(fd >= 3);
    const char *argv[] = {"/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '; cat", NULL};
    subprocess_limits lim = lim_default();
    char out[256];
    subprocess_result res;
    rpc_error err = {{0}};
    int st = subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err);
    close(fd);
    assert_int_equal(st, RPC_OK);
    assert_int_equal(res.exit_code, 0);
    /* 0 1 2, and ls's own directory descriptor (3): nothing of the parent's. */
    assert_string_equal(out, "0 1 2 3 ");
}

static void test_subprocess_limits(void **state)
{
    (void)state;
    /* RLIMIT_FSIZE: writing past it kills with SIGXFSZ (dd's write fails: it is ignored by
     * no one here). */
    char path[128];
    in_dir(path, sizeof(path), "big");
    char script[256];
    snprintf(script, sizeof(script), "head -c 200000 /dev/zero > %s", path);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    subprocess_limits lim = lim_default();
    lim.file_bytes = 4096;
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", NULL, 0, &res, &err), RPC_OK);
    assert_false(res.exited && res.exit_code == 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size <= 4096);
    /* RLIMIT_CORE is 0 and RLIMIT_AS is what was asked. */
    const char *argv2[] = {"/bin/sh", "-c", "ulimit -c; ulimit -v", NULL};
    lim = lim_default();
    lim.memory_bytes = 512ull << 20;
    char out[64];
    assert_int_equal(subprocess_run(argv2, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_string_equal(out, "0\n524288\n");
}

/* Whether pid has ended (gone, or a zombie waiting for whoever adopted it). */
static int pid_ended(void *arg)
{
    char path[64], stat_line[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", *(const int *)arg);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 1;
    size_t n = fread(stat_line, 1, sizeof(stat_line) - 1, f);
    fclose(f);
    stat_line[n] = '\0';
    const char *close_paren = strrchr(stat_line, ')');
    return close_paren != NULL && close_paren[1] == ' ' && close_paren[2] == 'Z';
}

static int file_has_pid(void *arg)
{
    FILE *f = fopen(arg, "r");
    int pid = 0;
    if (f != NULL) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return pid > 0;
}

/* A server killed with SIGKILL takes its tool with it: a process running subprocess_run
 * (sleep 60, no wall-clock limit) is killed, and the sleep ends too. */
static void test_subprocess_dies_with_server(void **state)
{
    (void)state;
    char pidfile[128], script[512];
    in_dir(pidfile, sizeof(pidfile), "tool.pid");
    (void)unlink(pidfile);
    snprintf(script, sizeof(script), "echo $$ > %s.part && mv %s.part %s && exec sleep 60", pidfile, pidfile,
             pidfile);
    pid_t server = fork();
    assert_true(server >= 0);
    if (server == 0) {
        const char *argv[] = {"/bin/sh", "-c", script, NULL};
        subprocess_limits lim = {0};
        subprocess_result res;
        rpc_error err;
        (void)subprocess_run(argv, &lim, "test", NULL, 0, &res, &err);
        _exit(0);
    }
    assert_true(test_wait_for(file_has_pid, pidfile, 10000));
    FILE *f = fopen(pidfile, "r");
    assert_non_null(f);
    int tool = 0;
    assert_int_equal(fscanf(f, "%d", &tool), 1);
    fclose(f);
    assert_false(pid_ended(&tool));
    assert_int_equal(kill(server, SIGKILL), 0);
    assert_int_equal(waitpid(server, NULL, 0), server);
    assert_true(test_wait_for(pid_ended, &tool, 10000));
}

static void test_subprocess_cannot_start(void **state)
{
    (void)state;
    const char *argv[] = {"/nonexistent/tool", "-x", NULL};
    subprocess_limits lim = lim_default();
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", NULL, 0, &res, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "cannot run /nonexistent/tool"));
    /* A name is looked up in PATH: found ("sh"), or not. */
    const char *found[] = {"sh", "-c", "exit 0", NULL};
    assert_int_equal(subprocess_run(found, &lim, "test", NULL, 0, &res, &err), RPC_OK);
    assert_true(res.exited && res.exit_code == 0);
    const char *absent[] = {"lagoon-no-such-tool", NULL};
    assert_int_equal(subprocess_run(absent, &lim, "test", NULL, 0, &res, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "cannot run lagoon-no-such-tool"));
    /* Too many arguments. */
    const char *many[SUBPROCESS_ARGS_MAX + 1];
    for (size_t i = 0; i < SUBPROCESS_ARGS_MAX; i++)
        many[i] = "true";
    many[SUBPROCESS_ARGS_MAX] = NULL;
    assert_int_equal(subprocess_run(many, &lim, "test", NULL, 0, &res, &err), RPC_ERR);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

/* ---- probe ---------------------------------------------------------------------------------- */

/* An app that only carries the tool settings media_probe reads. */
static app Probe_app;

static void test_probe_files(void **state)
{
    (void)state;
    char path[128];
    media_probe_info info;
    rpc_error err = {{0}};

    in_dir(path, sizeof(path), "av.mp4");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_true(info.has_video);
    assert_true(info.has_audio);
    assert_int_equal(info.width, 320);
    assert_int_equal(info.height, 240);
    assert_string_equal(info.video_codec, "h264");
    assert_string_equal(info.audio_codec, "aac");
    assert_true(info.duration_ms >= 900 && info.duration_ms <= 1200);
    assert_non_null(strstr(info.format_name, "mp4"));

    in_dir(path, sizeof(path), "still.jpg");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_false(info.has_video);
    assert_false(info.has_audio);
    assert_string_equal(info.video_codec, "mjpeg");
    assert_int_equal(info.width, 64);

    in_dir(path, sizeof(path), "still.png");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_false(info.has_video);
    assert_string_equal(info.video_codec, "png");

    in_dir(path, sizeof(path), "text.txt");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "not a media file"));

    in_dir(path, sizeof(path), "missing");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_ERR);
}

static void test_probe_parse_table(void **state)
{
    (void)state;
    static const struct {
        const char *out;
        int st, has_video, has_audio;
        const char *vcodec;
    } cases[] = {
        /* cover art in an audio file is no video */
        {"streams.stream.0.codec_name=\"mp3\"\nstreams.stream.0.codec_type=\"audio\"\n"
         "streams.stream.1.codec_name=\"mjpeg\"\nstreams.stream.1.codec_type=\"video\"\n"
         "streams.stream.1.disposition.attached_pic=1\nformat.format_name=\"mp3\"\nformat.duration=\"3.0\"\n",
         RPC_OK, 0, 1, "mjpeg"},
        /* a video stream without a duration (a still) */
        {"streams.stream.0.codec_name=\"h264\"\nstreams.stream.0.codec_type=\"video\"\n"
         "format.format_name=\"mov,mp4\"\nformat.duration=\"N/A\"\n",
         RPC_OK, 0, 0, "h264"},
        /* no format at all */
        {"", RPC_ERR, 0, 0, ""},
        {"garbage\n=\n==\nstreams.stream.x.codec_type=video\n", RPC_ERR, 0, 0, ""},
        /* an oversized width is unknown, not wrapped */
        {"streams.stream.0.codec_name=\"vp9\"\nstreams.stream.0.codec_type=\"video\"\n"
         "streams.stream.0.width=99999999999999999999\nformat.format_name=\"matroska,webm\"\n"
         "format.duration=\"1e30\"\n",
         RPC_OK, 1, 0, "vp9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        media_probe_info info;
        assert_int_equal(media_probe_parse(cases[i].out, &info), cases[i].st);
        assert_int_equal(info.has_video, cases[i].has_video);
        assert_int_equal(info.has_audio, cases[i].has_audio);
        assert_string_equal(info.video_codec, cases[i].vcodec);
        assert_true(info.width <= MEDIA_DIMENSION_MAX);
    }
}

/* ---- processing through the server ---------------------------------------------------------- */

static test_app *T;
static lagoon_client *C;
/* ann uploads; bob has ann's videos shared with him; root administers. */
static uint64_t ann, bob, root;
static char ann_tok[65], bob_tok[65], root_tok[65];
/* The ffmpeg the next (re)start uses: "" = the real one; and its time limit (0: the default). */
static char Ffmpeg[128];
static char Ffprobe[128]; /* likewise for ffprobe */
static uint32_t Timeout_s;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->media_workers = 1; /* jobs run one after another, in queue order */
    APP_STRCPY(acfg->ffmpeg, Ffmpeg);
    APP_STRCPY(acfg->ffprobe, Ffprobe);
    acfg->media_job_timeout_s = Timeout_s;
}

static void use_ffmpeg(const char *script)
{
    if (script)
        in_dir(Ffmpeg, sizeof(Ffmpeg), script);
    else
        Ffmpeg[0] = '\0';
    lagoon_close(C); /* its connection ends with the server */
    test_app_restart(T, tweak);
    C = test_client(T);
}

/* The next runs' ffmpeg is the stand-in that writes held when it starts, then waits for flag:
 * a test changes the world while a job is RUNNING, then touches flag. Both paths (cap bytes
 * each) are filled in and removed. */
static void hold_ffmpeg(char *flag, char *held, size_t cap)
{
    in_dir(flag, cap, "go");
    in_dir(held, cap, "held");
    (void)unlink(flag);
    (void)unlink(held);
    use_ffmpeg("ffmpeg-holds");
}

/* The ffprobe of the next restart: a stand-in script of Dir, or NULL for the real one. */
static void use_ffprobe(const char *script)
{
    if (script)
        in_dir(Ffprobe, sizeof(Ffprobe), script);
    else
        Ffprobe[0] = '\0';
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
}

typedef struct put_args {
    const app *a;
    int64_t now;
    uint64_t owner, video_id, upload_id;
    int kind;
    uint32_t attempts; /* mark_running_fn: the attempts the RUNNING row has (0: 1) */
} put_args;

static int insert_video_fn(store_txn *t, void *arg, store_error *err)
{
    put_args *p = arg;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    v->owner_id = p->owner;
    snprintf(v->title, sizeof(v->title), "Scales in G");
    v->status = lagoon_v1_Video_Status_PROCESSING;
    v->source = lagoon_v1_Video_Source_UPLOAD;
    v->upload_id = p->upload_id;
    v->media_files = MEDIA_FILE_ORIGINAL;
    v->created_at = v->updated_at = p->now;
    int st = videos_insert(t, v, err);
    p->video_id = v->id;
    if (st == LAGOON_OK && p->owner == ann) {
        lagoon_v1_VideoShare sh = {.video_id = v->id, .user_id = bob, .created_at = p->now};
        st = store_insert(t, &lagoon_table_video_shares, &sh, NULL, err);
    }
    free(v);
    return st;
}

/* What Uploads' completing write does for media: queue the job. */
static int enqueue_fn(store_txn *t, void *arg, store_error *err)
{
    put_args *p = arg;
    return media_enqueue(t, p->a, p->now, (enum media_job_kind)p->kind, p->owner,
                         p->kind == MEDIA_JOB_VIDEO ? p->video_id : p->owner, err);
}

static void put_original(const char *path, const char *src)
{
    assert_int_equal(media_mkdirs(path), LAGOON_OK);
    sh("cp %s/%s %s", Dir, src, path);
}

/* A video of ann's (shared with bob) whose original is src, queued for processing. */
static uint64_t queue_video(const char *src)
{
    static uint64_t uploads;
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = ann, .upload_id = ++uploads, .kind = MEDIA_JOB_VIDEO};
    store_error err;
    assert_int_equal(store_write(T->app->db, insert_video_fn, &p, &err), LAGOON_OK);
    char path[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, ann, p.video_id, MEDIA_ORIGINAL, path, sizeof(path)), LAGOON_OK);
    put_original(path, src);
    assert_int_equal(store_write(T->app->db, enqueue_fn, &p, &err), LAGOON_OK);
    media_kick(T->app);
    return p.video_id;
}

static lagoon_v1_Video Vid; /* ~37 KB: off the stack */

static void read_video(uint64_t id, lagoon_v1_Video *v)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = store_get(t, &lagoon_table_videos, id, v, &err);
    store_read_end(t);
    assert_int_equal(st, LAGOON_OK);
}

/* The video's job through Media/GetJob as ann. */
static int get_job(uint64_t video_id, lagoon_v1_MediaJob *j)
{
    lagoon_v1_GetMediaJobRequest r = {.video_id = video_id};
    lagoon_set_token(C, ann_tok);
    return lagoon_Media_GetJob(C, &r, j);
}

typedef struct job_wait {
    uint64_t video_id;
    int state;
    uint32_t attempts; /* 0: any */
    lagoon_v1_MediaJob job;
} job_wait;

static int job_reached(void *arg)
{
    job_wait *w = arg;
    return get_job(w->video_id, &w->job) == LAGOON_OK && (int)w->job.state == w->state &&
           (w->attempts == 0 || w->job.attempts == w->attempts);
}

/* Waits (bounded: 30 s, far above the few seconds a run takes) for the video's job to reach state. */
static lagoon_v1_MediaJob wait_job(uint64_t video_id, int state, uint32_t attempts)
{
    job_wait w = {.video_id = video_id, .state = state, .attempts = attempts};
    if (!test_wait_for(job_reached, &w, 30000))
        fail_msg("job of video %llu: state %d attempts %u (%s), wanted state %d attempts %u",
                 (unsigned long long)video_id, (int)w.job.state, (unsigned)w.job.attempts, w.job.last_error, state,
                 (unsigned)attempts);
    return w.job;
}

static void video_file(uint64_t video_id, const char *name, char *buf, size_t cap)
{
    assert_int_equal(media_video_path(T->app, ann, video_id, name, buf, cap), LAGOON_OK);
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int file_exists(void *path)
{
    return exists(path);
}

static uint64_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (uint64_t)sb.st_size;
}

/* Whether the MP4's top-level moov box comes before its mdat (+faststart). */
static int moov_first(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    int moov = 0, mdat = 0, order = 0;
    for (int boxes = 0; boxes < 64 && !(moov && mdat); boxes++) {
        unsigned char h[16];
        if (fread(h, 1, 8, f) != 8)
            break;
        uint64_t size = ((uint64_t)h[0] << 24) | ((uint64_t)h[1] << 16) | ((uint64_t)h[2] << 8) | h[3];
        uint64_t head = 8;
        if (size == 1) { /* a 64-bit size follows */
            if (fread(h + 8, 1, 8, f) != 8)
                break;
            size = 0;
            for (int i = 8; i < 16; i++)
                size = (size << 8) | h[i];
            head = 16;
        }
        if (memcmp(h + 4, "moov", 4) == 0)
            moov = ++order;
        else if (memcmp(h + 4, "mdat", 4) == 0)
            mdat = ++order;
        if (size < head || fseeko(f, (off_t)(size - head), SEEK_CUR) != 0)
            break;
    }
    fclose(f);
    return moov && mdat && moov < mdat;
}

/* Whether user has a notification of type about related. */
typedef struct note_find {
    int type;
    uint64_t related;
    int found;
} note_find;

static int note_match(void *arg, uint64_t id, const void *row)
{
    (void)id;
    note_find *f = arg;
    const lagoon_v1_Notification *n = row;
    if ((int)n->type == f->type && n->related_id == f->related)
        f->found = 1;
    return LAGOON_OK;
}

static int notified(uint64_t user, int type, uint64_t related)
{
    store_key p;
    store_key_reset(&p);
    store_key_u64(&p, user);
    store_query q = {.table = &lagoon_table_notifications, .index = lagoon_index_notifications_by_user_time,
                     .prefix = p.buf, .prefix_len = p.len, .page_size = STORE_PAGE_SIZE_MAX};
    note_find f = {.type = type, .related = related};
    store_txn *t;
    store_error err;
    store_page pg;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = store_scan(t, &q, note_match, &f, &pg, &err);
    store_read_end(t);
    assert_int_equal(st, LAGOON_OK);
    return f.found;
}

static void test_video_ready(void **state)
{
    (void)state;
    uint64_t id = queue_video("hd.mp4");
    lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
    assert_int_equal(j.kind, lagoon_v1_MediaJob_Kind_VIDEO);
    assert_int_equal(j.user_id, ann);
    assert_string_equal(j.last_error, "");
    read_video(id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
    assert_int_equal(Vid.width, 1280);
    assert_int_equal(Vid.height, 720);
    assert_int_equal(Vid.duration_seconds, 2);
    assert_string_equal(Vid.video_codec, "h264");
    assert_string_equal(Vid.audio_codec, "aac");
    assert_string_equal(Vid.error_reason, "");
    assert_int_equal(Vid.media_files, MEDIA_FILE_ORIGINAL | MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD | MEDIA_FILE_HD);

    char orig[MEDIA_PATH_MAX], thumb[MEDIA_PATH_MAX], sd[MEDIA_PATH_MAX], hd[MEDIA_PATH_MAX];
    video_file(id, MEDIA_ORIGINAL, orig, sizeof(orig));
    video_file(id, MEDIA_THUMBNAIL, thumb, sizeof(thumb));
    video_file(id, MEDIA_SD, sd, sizeof(sd));
    video_file(id, MEDIA_HD, hd, sizeof(hd));
    assert_int_equal(Vid.media_bytes, file_size(orig) + file_size(thumb) + file_size(sd) + file_size(hd));

    media_probe_info info;
    rpc_error err;
    assert_int_equal(media_probe(&Probe_app, sd, &info, &err), RPC_OK);
    assert_true(info.has_video && info.has_audio);
    assert_int_equal(info.height, 480);
    assert_int_equal(info.width, 854);
    assert_string_equal(info.video_codec, "h264");
    assert_string_equal(info.audio_codec, "aac");
    assert_true(info.duration_ms >= 1900 && info.duration_ms <= 2200);
    assert_true(moov_first(sd));
    assert_int_equal(media_probe(&Probe_app, hd, &info, &err), RPC_OK);
    assert_int_equal(info.height, 720);
    assert_int_equal(info.width, 1280);
    assert_true(info.has_audio);
    assert_true(info.duration_ms >= 1900 && info.duration_ms <= 2200);
    assert_true(moov_first(hd));
    assert_int_equal(media_probe(&Probe_app, thumb, &info, &err), RPC_OK);
    assert_string_equal(info.video_codec, "mjpeg");
    assert_int_equal(info.width, 640);
    assert_int_equal(info.height, 360);
    /* No temporaries left. */
    char tmp[MEDIA_PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", sd);
    assert_false(exists(tmp));

    /* The owner and the user it is shared with are told. */
    assert_true(notified(ann, lagoon_v1_Notification_Type_MEDIA_READY, id));
    assert_true(notified(bob, lagoon_v1_Notification_Type_MEDIA_READY, id));
    assert_false(notified(root, lagoon_v1_Notification_Type_MEDIA_READY, id));
}

static void test_small_without_audio(void **state)
{
    (void)state;
    uint64_t id = queue_video("small-silent.mp4");
    wait_job(id, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
    read_video(id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
    assert_int_equal(Vid.height, 240);
    assert_string_equal(Vid.audio_codec, "");
    /* Never above the source: sd at the source's 240, no hd. */
    assert_int_equal(Vid.media_files, MEDIA_FILE_ORIGINAL | MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD);
    char sd[MEDIA_PATH_MAX], hd[MEDIA_PATH_MAX], thumb[MEDIA_PATH_MAX];
    video_file(id, MEDIA_SD, sd, sizeof(sd));
    video_file(id, MEDIA_HD, hd, sizeof(hd));
    video_file(id, MEDIA_THUMBNAIL, thumb, sizeof(thumb));
    assert_false(exists(hd));
    media_probe_info info;
    rpc_error err;
    assert_int_equal(media_probe(&Probe_app, sd, &info, &err), RPC_OK);
    assert_int_equal(info.width, 320);
    assert_int_equal(info.height, 240);
    assert_true(info.has_video);
    assert_false(info.has_audio);
    assert_true(moov_first(sd));
    assert_int_equal(media_probe(&Probe_app, thumb, &info, &err), RPC_OK);
    assert_int_equal(info.width, 320);
}

static void test_not_a_video(void **state)
{
    (void)state;
    /* Unreadable, and a still image: no retry will help, so they fail at the first attempt. */
    static const struct {
        const char *src, *reason;
    } cases[] = {{"text.txt", "not a video"}, {"still.jpg", "no video"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t id = queue_video(cases[i].src);
        lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_FAILED, 1);
        assert_non_null(strstr(j.last_error, cases[i].reason));
        read_video(id, &Vid);
        assert_int_equal(Vid.status, lagoon_v1_Video_Status_ERROR);
        assert_non_null(strstr(Vid.error_reason, cases[i].reason));
        assert_int_equal(Vid.media_files, MEDIA_FILE_ORIGINAL);
        char orig[MEDIA_PATH_MAX];
        video_file(id, MEDIA_ORIGINAL, orig, sizeof(orig));
        assert_int_equal(Vid.media_bytes, file_size(orig));
        assert_true(notified(ann, lagoon_v1_Notification_Type_MEDIA_FAILED, id));
        assert_true(notified(bob, lagoon_v1_Notification_Type_MEDIA_FAILED, id));
        assert_false(notified(ann, lagoon_v1_Notification_Type_MEDIA_READY, id));
    }
}

static void test_retried_then_error(void **state)
{
    (void)state;
    use_ffmpeg("ffmpeg-fails");
    uint64_t id = queue_video("small-silent.mp4");
    for (uint32_t n = 1; n < MEDIA_ATTEMPTS_MAX; n++) {
        lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_QUEUED, n);
        assert_non_null(strstr(j.last_error, "exit status 1"));
        /* The next attempt waits: 10 s, doubling. */
        assert_int_equal(j.next_attempt_at, T->clock_ms + ((int64_t)MEDIA_RETRY_BASE_MS << (n - 1)));
        read_video(id, &Vid);
        assert_int_equal(Vid.status, lagoon_v1_Video_Status_PROCESSING);
        test_clock_advance(T, (int64_t)MEDIA_RETRY_BASE_MS << (n - 1));
        media_kick(T->app);
    }
    lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_FAILED, MEDIA_ATTEMPTS_MAX);
    assert_non_null(strstr(j.last_error, "exit status 1"));
    read_video(id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_ERROR);
    assert_non_null(strstr(Vid.error_reason, "failed 5 times"));
    assert_true(notified(ann, lagoon_v1_Notification_Type_MEDIA_FAILED, id));
    char thumb[MEDIA_PATH_MAX];
    video_file(id, MEDIA_THUMBNAIL, thumb, sizeof(thumb));
    assert_false(exists(thumb));
    use_ffmpeg(NULL);
}

/* A hostile header (ffprobe's word, here a stand-in's): a video said to last 25 hours, or
 * 100000 pixels wide, fails at its first attempt without an ffmpeg run (the real ffmpeg would
 * make a READY video of the 1 s file: 90000 s long, or scaled up to 480p). */
static void test_hostile_headers_fail_at_once(void **state)
{
    (void)state;
    static const struct {
        const char *script, *reason;
    } cases[] = {{"ffprobe-long", "longer than 24 hours"}, {"ffprobe-huge", "picture size is unknown or above"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        use_ffprobe(cases[i].script);
        uint64_t id = queue_video("small-silent.mp4");
        lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_FAILED, 1);
        assert_non_null(strstr(j.last_error, cases[i].reason));
        read_video(id, &Vid);
        assert_int_equal(Vid.status, lagoon_v1_Video_Status_ERROR);
        assert_non_null(strstr(Vid.error_reason, cases[i].reason));
        char sd[MEDIA_PATH_MAX];
        video_file(id, MEDIA_SD, sd, sizeof(sd));
        assert_false(exists(sd));
    }
    use_ffprobe(NULL);
}

static void test_time_limit(void **state)
{
    (void)state;
    /* An ffmpeg that would run for a minute, under a 1 s limit: killed, the attempt failed and
     * queued again. */
    Timeout_s = 1;
    use_ffmpeg("ffmpeg-sleeps");
    uint64_t id = queue_video("small-silent.mp4");
    lagoon_v1_MediaJob j = wait_job(id, lagoon_v1_MediaJob_State_QUEUED, 1);
    assert_non_null(strstr(j.last_error, "took longer than 1 s"));
    Timeout_s = 0;
    use_ffmpeg(NULL);
}

/* A RUNNING job row as a crash leaves it: written by the test while the one worker is busy. */
static int mark_running_fn(store_txn *t, void *arg, store_error *err)
{
    put_args *p = arg;
    int st = enqueue_fn(t, arg, err);
    if (st != LAGOON_OK)
        return st;
    store_key k;
    store_key_reset(&k);
    store_key_u32(&k, lagoon_v1_MediaJob_Kind_VIDEO);
    store_key_u64(&k, p->owner);
    store_key_u64(&k, p->video_id);
    lagoon_v1_MediaJob j;
    st = store_get_by(t, &lagoon_table_media_jobs, lagoon_index_media_jobs_by_subject, &k, NULL, &j, err);
    if (st != LAGOON_OK)
        return st;
    j.state = lagoon_v1_MediaJob_State_RUNNING;
    j.attempts = p->attempts ? p->attempts : 1;
    return store_update(t, &lagoon_table_media_jobs, &j, err);
}

/* A job the server died during at its last attempt (as a file that kills it would leave it):
 * the next start fails it without running it again; its video shows ERROR. */
static void test_crash_at_last_attempt_fails(void **state)
{
    (void)state;
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = ann, .upload_id = 9100, .kind = MEDIA_JOB_VIDEO,
                  .attempts = MEDIA_ATTEMPTS_MAX};
    store_error err;
    assert_int_equal(store_write(T->app->db, insert_video_fn, &p, &err), LAGOON_OK);
    char path[MEDIA_PATH_MAX];
    video_file(p.video_id, MEDIA_ORIGINAL, path, sizeof(path));
    put_original(path, "small-silent.mp4");
    assert_int_equal(store_write(T->app->db, mark_running_fn, &p, &err), LAGOON_OK);
    use_ffmpeg(NULL); /* a restart: RUNNING re-queued */
    lagoon_v1_MediaJob j = wait_job(p.video_id, lagoon_v1_MediaJob_State_FAILED, MEDIA_ATTEMPTS_MAX);
    assert_non_null(strstr(j.last_error, "cut short 5 times"));
    read_video(p.video_id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_ERROR);
    assert_int_equal(Vid.media_files, MEDIA_FILE_ORIGINAL);
    assert_int_equal(Vid.media_bytes, file_size(path));
    char sd[MEDIA_PATH_MAX];
    video_file(p.video_id, MEDIA_SD, sd, sizeof(sd));
    assert_false(exists(sd));
}

static void test_restart_requeues(void **state)
{
    (void)state;
    /* The one worker holds job a in an ffmpeg that waits (for a file never made); job b is
     * RUNNING as a crash would leave it. A restart ends a's ffmpeg (a given back) and
     * re-queues b; both then finish, each to success once. */
    use_ffmpeg("ffmpeg-holds");
    uint64_t a = queue_video("small-silent.mp4");
    wait_job(a, lagoon_v1_MediaJob_State_RUNNING, 1);
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = ann, .upload_id = 9000, .kind = MEDIA_JOB_VIDEO};
    store_error err;
    assert_int_equal(store_write(T->app->db, insert_video_fn, &p, &err), LAGOON_OK);
    char path[MEDIA_PATH_MAX];
    video_file(p.video_id, MEDIA_ORIGINAL, path, sizeof(path));
    put_original(path, "small-silent.mp4");
    assert_int_equal(store_write(T->app->db, mark_running_fn, &p, &err), LAGOON_OK);
    use_ffmpeg(NULL);
    wait_job(a, lagoon_v1_MediaJob_State_SUCCEEDED, 1); /* the stopped run gave its attempt back */
    wait_job(p.video_id, lagoon_v1_MediaJob_State_SUCCEEDED, 2);
    read_video(p.video_id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
}

static int delete_row_fn(store_txn *t, void *arg, store_error *err)
{
    return store_delete(t, &lagoon_table_videos, *(const uint64_t *)arg, err);
}

static void test_deleted_video_leaves_no_files(void **state)
{
    (void)state;
    char flag[128], held[128];
    /* Through Videos/Delete (which removes the files after its commit: the run then fails on
     * its missing input), and as a row deletion alone (the files still there: the run makes
     * its outputs, then finds the job gone and removes the directory). */
    for (int through_api = 1; through_api >= 0; through_api--) {
        hold_ffmpeg(flag, held, sizeof(flag));
        uint64_t id = queue_video("small-silent.mp4");
        wait_job(id, lagoon_v1_MediaJob_State_RUNNING, 1);
        assert_true(test_wait_for(file_exists, held, 30000)); /* probed; the thumbnail's ffmpeg started */
        /* Deleted while its thumbnail is being made: the job goes with the row. */
        if (through_api) {
            lagoon_v1_DeleteVideoRequest dr = {.video_id = id};
            lagoon_v1_VideosEmpty empty;
            lagoon_set_token(C, ann_tok);
            assert_int_equal(lagoon_Videos_Delete(C, &dr, &empty), LAGOON_OK);
        } else {
            store_error err;
            assert_int_equal(store_write(T->app->db, delete_row_fn, &id, &err), LAGOON_OK);
        }
        lagoon_v1_MediaJob j;
        assert_int_equal(get_job(id, &j), LAGOON_NOT_FOUND);
        /* The next job runs once the deleted one's run is over: then nothing of it is left. */
        uint64_t next = queue_video("small-silent.mp4");
        sh("touch %s", flag);
        wait_job(next, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
        char dir[MEDIA_PATH_MAX];
        assert_int_equal(media_video_path(T->app, ann, id, NULL, dir, sizeof(dir)), LAGOON_OK);
        assert_false(exists(dir));
    }
    use_ffmpeg(NULL);
}

/* Media/ListJobs into *r (its earlier jobs released first: FT_POINTER). */
static int list_jobs(const char *tok, const lagoon_v1_ListMediaJobsRequest *req, lagoon_v1_ListMediaJobsResponse *r)
{
    pb_release(lagoon_v1_ListMediaJobsResponse_fields, r);
    lagoon_set_token(C, tok);
    return lagoon_Media_ListJobs(C, req, r);
}

static void list_free(lagoon_v1_ListMediaJobsResponse *r)
{
    pb_release(lagoon_v1_ListMediaJobsResponse_fields, r);
    free(r);
}

/* A new upload of the video: its upload_id moves and its job is queued again, in one write
 * (as Uploads' completion does). */
static int reupload_fn(store_txn *t, void *arg, store_error *err)
{
    put_args *p = arg;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_videos, p->video_id, v, err);
    if (st == LAGOON_OK) {
        v->upload_id = p->upload_id;
        st = store_update(t, &lagoon_table_videos, v, err);
    }
    free(v);
    return st == LAGOON_OK ? enqueue_fn(t, p, err) : st;
}

static void test_reupload_during_run(void **state)
{
    (void)state;
    char flag[128], held[128];
    hold_ffmpeg(flag, held, sizeof(flag));
    uint64_t id = queue_video("small-silent.mp4");
    lagoon_v1_MediaJob first = wait_job(id, lagoon_v1_MediaJob_State_RUNNING, 1);
    assert_true(test_wait_for(file_exists, held, 30000));
    /* A newer file arrives while the old one is being processed: the job stays RUNNING (two
     * runs never write the same files), and when the old run ends it is queued again. */
    char path[MEDIA_PATH_MAX];
    video_file(id, MEDIA_ORIGINAL, path, sizeof(path));
    put_original(path, "av.mp4");
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = ann, .video_id = id, .upload_id = 7777,
                  .kind = MEDIA_JOB_VIDEO};
    store_error err;
    assert_int_equal(store_write(T->app->db, reupload_fn, &p, &err), LAGOON_OK);
    lagoon_v1_MediaJob j;
    assert_int_equal(get_job(id, &j), LAGOON_OK);
    assert_int_equal(j.state, lagoon_v1_MediaJob_State_RUNNING);
    assert_int_equal(j.generation, first.generation + 1);
    assert_int_equal(j.upload_id, 7777);
    sh("touch %s", flag);
    j = wait_job(id, lagoon_v1_MediaJob_State_SUCCEEDED, 1); /* the new file's run */
    assert_int_equal(j.generation, first.generation + 1);
    read_video(id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
    assert_string_equal(Vid.audio_codec, "aac"); /* av.mp4's, not small-silent's */
    char sd[MEDIA_PATH_MAX];
    video_file(id, MEDIA_SD, sd, sizeof(sd));
    media_probe_info info;
    rpc_error perr;
    assert_int_equal(media_probe(&Probe_app, sd, &info, &perr), RPC_OK);
    assert_true(info.has_audio);
    use_ffmpeg(NULL);
}

/* What the owner changes while the video is processed survives the finishing write (it reads
 * the row in its own transaction), and a share removed meanwhile is not notified. */
static void test_edits_during_run_survive(void **state)
{
    (void)state;
    char flag[128], held[128];
    hold_ffmpeg(flag, held, sizeof(flag));
    uint64_t id = queue_video("small-silent.mp4");
    wait_job(id, lagoon_v1_MediaJob_State_RUNNING, 1);
    assert_true(test_wait_for(file_exists, held, 30000));
    static lagoon_v1_Video upd; /* ~37 KB */
    lagoon_v1_UpdateVideoRequest ur = {.video_id = id, .has_title = true};
    APP_STRCPY(ur.title, "Scales in A, retitled");
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Update(C, &ur, &upd), LAGOON_OK);
    pb_release(lagoon_v1_Video_fields, &upd);
    lagoon_v1_UnshareVideoRequest un = {.video_id = id, .user_id = bob};
    lagoon_v1_VideosEmpty empty;
    assert_int_equal(lagoon_Videos_Unshare(C, &un, &empty), LAGOON_OK);
    sh("touch %s", flag);
    wait_job(id, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
    read_video(id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
    assert_string_equal(Vid.title, "Scales in A, retitled");
    assert_true(notified(ann, lagoon_v1_Notification_Type_MEDIA_READY, id));
    assert_false(notified(bob, lagoon_v1_Notification_Type_MEDIA_READY, id));
    (void)unlink(flag);
    use_ffmpeg(NULL);
}

/* An account deleted while its video is processed: the job goes with it (cascade), the run's
 * outputs are not kept and no directory of the video is left. */
static void test_account_deleted_during_run(void **state)
{
    (void)state;
    char flag[128], held[128];
    hold_ffmpeg(flag, held, sizeof(flag));
    char cal_tok[65];
    uint64_t cal = test_verified_user(T, C, "cal", lagoon_v1_Role_STUDENT, cal_tok);
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = cal, .upload_id = 4242, .kind = MEDIA_JOB_VIDEO};
    store_error err;
    assert_int_equal(store_write(T->app->db, insert_video_fn, &p, &err), LAGOON_OK);
    char path[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, cal, p.video_id, MEDIA_ORIGINAL, path, sizeof(path)), LAGOON_OK);
    put_original(path, "small-silent.mp4");
    assert_int_equal(store_write(T->app->db, enqueue_fn, &p, &err), LAGOON_OK);
    media_kick(T->app);
    assert_true(test_wait_for(file_exists, held, 30000)); /* probed; its thumbnail's ffmpeg started */
    lagoon_v1_DeleteAccountRequest dr;
    APP_STRCPY(dr.password, TEST_PASSWORD);
    lagoon_v1_UsersEmpty empty;
    lagoon_set_token(C, cal_tok);
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &empty), LAGOON_OK);
    /* The one worker takes the next job once the deleted account's run is over. */
    uint64_t next = queue_video("small-silent.mp4");
    sh("touch %s", flag);
    wait_job(next, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
    char dir[MEDIA_PATH_MAX];
    assert_int_equal(media_video_path(T->app, cal, p.video_id, NULL, dir, sizeof(dir)), LAGOON_OK);
    assert_false(exists(dir));
    store_txn *t;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, p.video_id);
    store_query q = {.table = &lagoon_table_media_jobs,
                     .index = lagoon_index_media_jobs_by_video,
                     .prefix = k.buf,
                     .prefix_len = k.len,
                     .page_size = 1};
    store_page pg;
    assert_int_equal(store_scan(t, &q, NULL, NULL, &pg, &err), LAGOON_OK);
    store_read_end(t);
    assert_int_equal(pg.count, 0);
    (void)unlink(flag);
    use_ffmpeg(NULL);
}

static int profile_done(void *arg)
{
    lagoon_v1_ListMediaJobsResponse *r = arg;
    lagoon_v1_ListMediaJobsRequest req = {0};
    if (list_jobs(ann_tok, &req, r) != LAGOON_OK)
        return 0;
    for (pb_size_t i = 0; i < r->jobs_count; i++)
        if (r->jobs[i].kind == lagoon_v1_MediaJob_Kind_PROFILE_IMAGE)
            return r->jobs[i].state == lagoon_v1_MediaJob_State_SUCCEEDED;
    return 0;
}

static void test_profile_image(void **state)
{
    (void)state;
    char path[MEDIA_PATH_MAX];
    assert_int_equal(media_profile_path(T->app, ann, MEDIA_ORIGINAL, path, sizeof(path)), LAGOON_OK);
    put_original(path, "wide.png");
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = ann, .kind = MEDIA_JOB_PROFILE_IMAGE};
    store_error err;
    assert_int_equal(store_write(T->app->db, enqueue_fn, &p, &err), LAGOON_OK);
    media_kick(T->app);
    lagoon_v1_ListMediaJobsResponse *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    assert_true(test_wait_for(profile_done, r, 30000));
    list_free(r);
    static const struct {
        const char *name;
        uint32_t size;
    } out[] = {{MEDIA_PROFILE, MEDIA_PROFILE_SIZE}, {MEDIA_PROFILE_THUMBNAIL, MEDIA_PROFILE_THUMBNAIL_SIZE}};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(media_profile_path(T->app, ann, out[i].name, path, sizeof(path)), LAGOON_OK);
        media_probe_info info;
        rpc_error perr;
        assert_int_equal(media_probe(&Probe_app, path, &info, &perr), RPC_OK);
        assert_string_equal(info.video_codec, "mjpeg");
        assert_int_equal(info.width, out[i].size);
        assert_int_equal(info.height, out[i].size);
    }
    lagoon_v1_User *u = calloc(1, sizeof(*u));
    assert_non_null(u);
    store_txn *t;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = store_get(t, &lagoon_table_users, ann, u, &err);
    store_read_end(t);
    assert_int_equal(st, LAGOON_OK);
    char want[128];
    snprintf(want, sizeof(want), "media:profile-images/%llu/profile.jpg", (unsigned long long)ann);
    assert_string_equal(u->profile_image_url, want);
    store_row_release(&lagoon_table_users, u);
    free(u);
}

typedef struct profile_wait {
    const char *tok;
    int state;
    uint32_t attempts;
    lagoon_v1_MediaJob job;
} profile_wait;

static int profile_reached(void *arg)
{
    profile_wait *w = arg;
    lagoon_v1_ListMediaJobsResponse *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    lagoon_v1_ListMediaJobsRequest req = {0};
    int done = 0;
    if (list_jobs(w->tok, &req, r) == LAGOON_OK)
        for (pb_size_t i = 0; i < r->jobs_count; i++)
            if (r->jobs[i].kind == lagoon_v1_MediaJob_Kind_PROFILE_IMAGE) {
                w->job = r->jobs[i];
                done = (int)w->job.state == w->state && w->job.attempts == w->attempts;
                break;
            }
    list_free(r);
    return done;
}

/* A profile image whose every ffmpeg run fails: retried with the growing delay, then FAILED;
 * the profile keeps its (empty) image URL and no output is left. */
static void test_profile_image_fails(void **state)
{
    (void)state;
    use_ffmpeg("ffmpeg-fails");
    char path[MEDIA_PATH_MAX];
    assert_int_equal(media_profile_path(T->app, bob, MEDIA_ORIGINAL, path, sizeof(path)), LAGOON_OK);
    put_original(path, "wide.png");
    put_args p = {.a = T->app, .now = T->clock_ms, .owner = bob, .kind = MEDIA_JOB_PROFILE_IMAGE};
    store_error err;
    assert_int_equal(store_write(T->app->db, enqueue_fn, &p, &err), LAGOON_OK);
    media_kick(T->app);
    profile_wait w = {.tok = bob_tok, .state = lagoon_v1_MediaJob_State_QUEUED};
    for (w.attempts = 1; w.attempts < MEDIA_ATTEMPTS_MAX; w.attempts++) {
        assert_true(test_wait_for(profile_reached, &w, 30000));
        assert_non_null(strstr(w.job.last_error, "exit status 1"));
        test_clock_advance(T, (int64_t)MEDIA_RETRY_BASE_MS << (w.attempts - 1));
        media_kick(T->app);
    }
    w.state = lagoon_v1_MediaJob_State_FAILED;
    assert_true(test_wait_for(profile_reached, &w, 30000));
    assert_non_null(strstr(w.job.last_error, "the profile image"));
    lagoon_v1_User *u = calloc(1, sizeof(*u));
    assert_non_null(u);
    store_txn *t;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = store_get(t, &lagoon_table_users, bob, u, &err);
    store_read_end(t);
    assert_int_equal(st, LAGOON_OK);
    assert_string_equal(u->profile_image_url, "");
    store_row_release(&lagoon_table_users, u);
    free(u);
    for (const char *const *name = (const char *const[]){MEDIA_PROFILE, MEDIA_PROFILE_THUMBNAIL, NULL}; *name;
         name++) {
        char out[MEDIA_PATH_MAX], tmp[MEDIA_PATH_MAX + 8];
        assert_int_equal(media_profile_path(T->app, bob, *name, out, sizeof(out)), LAGOON_OK);
        snprintf(tmp, sizeof(tmp), "%s.tmp", out);
        assert_false(exists(out));
        assert_false(exists(tmp));
    }
    use_ffmpeg(NULL);
}

static void test_job_visibility(void **state)
{
    (void)state;
    uint64_t id = queue_video("text.txt");
    wait_job(id, lagoon_v1_MediaJob_State_FAILED, 1);
    lagoon_v1_MediaJob j;
    lagoon_v1_GetMediaJobRequest gr = {.video_id = id};
    lagoon_set_token(C, bob_tok); /* shared with him, but the job is the owner's */
    assert_int_equal(lagoon_Media_GetJob(C, &gr, &j), LAGOON_NOT_FOUND);
    lagoon_set_token(C, root_tok);
    assert_int_equal(lagoon_Media_GetJob(C, &gr, &j), LAGOON_OK);
    assert_int_equal(j.video_id, id);

    lagoon_v1_ListMediaJobsResponse *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    lagoon_v1_ListMediaJobsRequest lr = {.page_size = 100};
    assert_int_equal(list_jobs(bob_tok, &lr, r), LAGOON_OK);
    assert_int_equal(r->jobs_count, 0);
    lr.all = true;
    assert_int_equal(list_jobs(bob_tok, &lr, r), LAGOON_PERMISSION_DENIED);
    assert_int_equal(list_jobs(root_tok, &lr, r), LAGOON_OK);
    assert_true(r->jobs_count >= 1);
    assert_int_equal(r->jobs[0].video_id, id); /* newest first */
    lr.all = false;
    assert_int_equal(list_jobs(ann_tok, &lr, r), LAGOON_OK);
    assert_true(r->jobs_count >= 1);
    for (pb_size_t i = 0; i < r->jobs_count; i++)
        assert_int_equal(r->jobs[i].user_id, ann);
    list_free(r);
}

/* The whole path: Uploads/Create and one Send chunk of a real file, completion (probe, publish,
 * media_enqueue in the completing write, media_kick), then the job to READY. */
static void test_through_uploads(void **state)
{
    (void)state;
    char path[128];
    in_dir(path, sizeof(path), "av.mp4");
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t data[UPLOADS_CHUNK_PIECES * UPLOADS_PIECE_MAX];
    size_t len = fread(data, 1, sizeof(data), f);
    assert_true(feof(f) && len > 0);
    fclose(f);

    lagoon_v1_CreateUploadRequest r = lagoon_v1_CreateUploadRequest_init_zero;
    r.kind = lagoon_v1_Upload_Kind_VIDEO;
    r.size = len;
    snprintf(r.content_type, sizeof(r.content_type), "video/mp4");
    r.checksum_algorithm = lagoon_v1_Upload_Checksum_SHA256;
    r.checksum.size = 32;
    crypto_hash_sha256(r.checksum.bytes, data, len);
    r.which_video = lagoon_v1_CreateUploadRequest_new_video_tag;
    snprintf(r.video.new_video.title, sizeof(r.video.new_video.title), "Etude no. 2");
    lagoon_v1_Upload u;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Uploads_Create(C, &r, &u), LAGOON_OK);

    lagoon_v1_UploadChunk m;
    memset(&m, 0, sizeof(m));
    m.upload_id = u.id;
    size_t pieces = (len + UPLOADS_PIECE_MAX - 1) / UPLOADS_PIECE_MAX;
    assert_true(pieces > 0 && pieces <= UPLOADS_CHUNK_PIECES);
    m.data = calloc(pieces ? pieces : 1, sizeof(*m.data));
    assert_non_null(m.data);
    for (size_t i = 0; i < pieces; i++) {
        size_t n = len - i * UPLOADS_PIECE_MAX < UPLOADS_PIECE_MAX ? len - i * UPLOADS_PIECE_MAX : UPLOADS_PIECE_MAX;
        m.data[i] = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(n));
        assert_non_null(m.data[i]);
        m.data[i]->size = (pb_size_t)n;
        memcpy(m.data[i]->bytes, data + i * UPLOADS_PIECE_MAX, n);
    }
    m.data_count = (pb_size_t)pieces;
    m.sha256.size = 32;
    crypto_hash_sha256(m.sha256.bytes, data, len);
    lagoon_stream *st = NULL;
    int rc = lagoon_Uploads_Send(C, &m, &st);
    for (size_t i = 0; i < pieces; i++)
        free(m.data[i]);
    free(m.data);
    assert_int_equal(rc, LAGOON_OK);
    lagoon_v1_UploadAck ack;
    memset(&ack, 0, sizeof(ack));
    lagoon_stream_close_send(st);
    /* One ack (complete), then the server ends the stream. */
    lagoon_v1_UploadAck more;
    for (int i = 0; i < 4 && lagoon_Uploads_Send_recv(st, &more) == 1; i++)
        ack = more;
    assert_int_equal(lagoon_stream_finish(st, NULL), LAGOON_OK);
    assert_true(ack.complete);
    assert_int_equal(ack.video_id, u.video_id);

    wait_job(u.video_id, lagoon_v1_MediaJob_State_SUCCEEDED, 1);
    read_video(u.video_id, &Vid);
    assert_int_equal(Vid.status, lagoon_v1_Video_Status_READY);
    assert_int_equal(Vid.upload_id, u.id);
    assert_int_equal(Vid.media_files, MEDIA_FILE_ORIGINAL | MEDIA_FILE_THUMBNAIL | MEDIA_FILE_SD);
    assert_string_equal(Vid.audio_codec, "aac");
    char sd[MEDIA_PATH_MAX];
    video_file(u.video_id, MEDIA_SD, sd, sizeof(sd));
    media_probe_info info;
    rpc_error err;
    assert_int_equal(media_probe(&Probe_app, sd, &info, &err), RPC_OK);
    assert_int_equal(info.height, 240);
    assert_true(info.has_audio);
    assert_true(notified(ann, lagoon_v1_Notification_Type_MEDIA_READY, u.video_id));
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void script(const char *name, const char *body)
{
    char path[128];
    in_dir(path, sizeof(path), name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(Dir, sizeof(Dir), "/tmp/lagoon-media-XXXXXX");
    assert_non_null(mkdtemp(Dir));
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440 -t 1 "
       "-c:v libx264 -preset ultrafast -c:a aac -shortest %s/av.mp4",
       Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=1280x720:rate=25 -f lavfi -i sine=frequency=440 -t 2 "
       "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -shortest %s/hd.mp4",
       Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=320x240:rate=25 -t 1 -c:v libx264 -preset ultrafast "
       "-pix_fmt yuv420p %s/small-silent.mp4",
       Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x64 -frames:v 1 -f image2 %s/still.jpg", Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x64 -frames:v 1 -f image2 %s/still.png", Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=300x200 -frames:v 1 -f image2 %s/wide.png", Dir);
    sh("echo 'not a video' > %s/text.txt", Dir);
    static const char flat[] = "echo 'format.format_name=\"mov,mp4,m4a,3gp,3g2,mj2\"'\n"
                               "echo 'format.duration=\"%s\"'\n"
                               "echo 'streams.stream.0.codec_type=\"video\"'\n"
                               "echo 'streams.stream.0.codec_name=\"h264\"'\n"
                               "echo 'streams.stream.0.width=%s'\n"
                               "echo 'streams.stream.0.height=240'\n";
    char body[512];
    snprintf(body, sizeof(body), flat, "90000.000000", "320");
    script("ffprobe-long", body);
    snprintf(body, sizeof(body), flat, "1.000000", "100000");
    script("ffprobe-huge", body);
    script("ffmpeg-sleeps", "exec sleep 60");
    script("ffmpeg-fails", "echo 'stand-in ffmpeg: failing on purpose' >&2\nexit 1");
    char hold[512];
    snprintf(hold, sizeof(hold),
             "touch %s/held\ni=0\nwhile [ ! -e %s/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
             "exec ffmpeg \"$@\"",
             Dir, Dir);
    script("ffmpeg-holds", hold);
    T = test_app_new(tweak);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_TEACHER, bob_tok);
    root = test_admin_user(T, C, "root", root_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    sh("rm -rf %s", Dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subprocess_output),
        cmocka_unit_test(test_subprocess_truncates),
        cmocka_unit_test(test_subprocess_timeout_kills_group),
        cmocka_unit_test(test_subprocess_closes_fds),
        cmocka_unit_test(test_subprocess_limits),
        cmocka_unit_test(test_subprocess_dies_with_server),
        cmocka_unit_test(test_subprocess_cannot_start),
        cmocka_unit_test(test_probe_files),
        cmocka_unit_test(test_probe_parse_table),
        cmocka_unit_test(test_video_ready),
        cmocka_unit_test(test_small_without_audio),
        cmocka_unit_test(test_not_a_video),
        cmocka_unit_test(test_retried_then_error),
        cmocka_unit_test(test_hostile_headers_fail_at_once),
        cmocka_unit_test(test_time_limit),
        cmocka_unit_test(test_restart_requeues),
        cmocka_unit_test(test_crash_at_last_attempt_fails),
        cmocka_unit_test(test_deleted_video_leaves_no_files),
        cmocka_unit_test(test_reupload_during_run),
        cmocka_unit_test(test_edits_during_run_survive),
        cmocka_unit_test(test_account_deleted_during_run),
        cmocka_unit_test(test_profile_image),
        cmocka_unit_test(test_job_visibility),
        cmocka_unit_test(test_profile_image_fails), /* bob's first job: after test_job_visibility */
        cmocka_unit_test(test_through_uploads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
