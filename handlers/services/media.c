/* media: processing uploaded media (media.h). */
#include "media.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "media_files.h"
#include "subprocess.h"

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

int media_probe(const app *a, const char *path, media_probe_info *info, rpc_error *err)
{
    *info = (media_probe_info){0};
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
    char *out = malloc(MEDIA_PROBE_OUT_MAX);
    if (!out) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    subprocess_result res;
    int st = subprocess_run(argv, &lim, "ffprobe", out, MEDIA_PROBE_OUT_MAX, &res, err);
    if (st == RPC_OK) {
        if (res.timed_out) {
            snprintf(err->message, sizeof(err->message), "ffprobe took longer than %u s", (unsigned)lim.timeout_ms / 1000);
            st = RPC_ERR;
        } else if (!res.exited || res.exit_code != 0) {
            snprintf(err->message, sizeof(err->message), "not a media file ffprobe can read");
            st = RPC_ERR;
        } else if (media_probe_parse(out, info) != RPC_OK) {
            snprintf(err->message, sizeof(err->message), "ffprobe found no media format in the file");
            st = RPC_ERR;
        }
    }
    free(out);
    return st;
}

/* ---- queue (placeholder until the workers land) ------------------------------------------- */

int media_enqueue(store_txn *t, const app *a, int64_t now, enum media_job_kind kind, uint64_t user_id,
                  uint64_t subject_id, store_error *err)
{
    (void)t, (void)a, (void)now, (void)kind, (void)user_id, (void)subject_id;
    return store_fail(err, LAGOON_UNIMPLEMENTED, NULL, "media processing is not built yet");
}

void media_kick(const app *a)
{
    (void)a;
}

const app_module media_module = {.name = "media"};
