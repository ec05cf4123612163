/* media: processing uploaded media with ffprobe and ffmpeg (a durable queue of jobs and the
 * workers that run them), and what Uploads needs of it: the probe that tells whether a file
 * really is a video, and the queueing of a finished upload's processing. */
#ifndef LAGOON_MEDIA_H
#define LAGOON_MEDIA_H

#include <stdint.h>

#include "app.h"

/* Limits of the tool runs (ffprobe, ffmpeg), each a child process (subprocess.h).
 * MEDIA_JOB_TIMEOUT_S_DEFAULT: one run's wall clock when app_config.media_job_timeout_s is 0
 * (lagoond --media-job-timeout-s): a 2 GiB upload transcoded to 720p with x264's veryfast
 * preset takes minutes on one core; past it the run is killed and the attempt fails.
 * MEDIA_PROBE_TIMEOUT_S: ffprobe reads headers only; it gets at most this (or the job timeout
 * if smaller). MEDIA_TOOL_CPU_PER_WALL: CPU seconds per wall-clock second of the limit
 * (RLIMIT_CPU counts every thread; ffmpeg decodes with MEDIA_FFMPEG_THREADS and encodes
 * with as many: left to itself it starts one per core). MEDIA_TOOL_MEMORY_BYTES:
 * the address space (RLIMIT_AS) of a run: x264 at 720p with two threads stays well under
 * 1 GiB; a hostile file that makes a decoder allocate without end is stopped here.
 * MEDIA_TOOL_FILE_BYTES: the largest file a run may write (RLIMIT_FSIZE): renditions of a
 * 2 GiB source are smaller than it unless the source is far below their bit rate. */
#define MEDIA_JOB_TIMEOUT_S_DEFAULT APP_MEDIA_JOB_TIMEOUT_S_DEFAULT
#define MEDIA_PROBE_TIMEOUT_S 60u
#define MEDIA_TOOL_CPU_PER_WALL 4u
#define MEDIA_FFMPEG_THREADS "2"
#define MEDIA_TOOL_MEMORY_BYTES (2ull << 30)
#define MEDIA_TOOL_FILE_BYTES (8ull << 30)
/* ffprobe's output kept (the rest is dropped: a file with thousands of streams) and the lines
 * of it parsed; a width or height above MEDIA_DIMENSION_MAX is read as unknown (0), and a
 * video of unknown size fails at once (no decoder is let loose on it). */
#define MEDIA_PROBE_OUT_MAX 16384
#define MEDIA_PROBE_LINES_MAX 512
#define MEDIA_DIMENSION_MAX 16384u
/* The longest video processed: Videos' own limit on duration_seconds (videos.proto). A source
 * whose header says longer fails at once; the renditions are cut there too (ffmpeg -t), so a
 * header that lies about a longer stream still makes no longer output. */
#define MEDIA_DURATION_MAX_S 86400
/* The queue. A job is tried at most MEDIA_ATTEMPTS_MAX times (each claim by a worker counts
 * one, a run cut short by a stop included): a failed attempt is queued again
 * MEDIA_RETRY_BASE_MS later, doubling per attempt (10, 20, 40, 80 s), and after the last one
 * it is FAILED and its video ERROR with the reason. A file that is no video fails at once: a
 * retry would find the same. Idle workers look at the queue when kicked (media_kick) and at
 * least every MEDIA_POLL_MS (a retry falling due). At most MEDIA_WORKERS_MAX workers: each
 * runs one ffmpeg at a time. MEDIA_ERROR_MAX: bytes of a job's last_error (media.options). */
#define MEDIA_ATTEMPTS_MAX 5u
#define MEDIA_RETRY_BASE_MS 10000
#define MEDIA_POLL_MS 1000
#define MEDIA_WORKERS_MAX 64u
#define MEDIA_ERROR_MAX 256

/* What processing makes: a thumbnail at most MEDIA_THUMBNAIL_WIDTH wide, taken at a tenth of
 * the duration but at most MEDIA_THUMBNAIL_AT_MS in; renditions MEDIA_SD_HEIGHT and
 * MEDIA_HD_HEIGHT high (never above the source: hd only for a source taller than sd), H.264
 * (x264 MEDIA_X264_PRESET, MEDIA_X264_CRF) with AAC at MEDIA_AAC_BITRATE, the index first
 * (+faststart) so that playback starts before the whole file has arrived; profile images
 * MEDIA_PROFILE_SIZE and MEDIA_PROFILE_THUMBNAIL_SIZE square (cropped to fill). */
#define MEDIA_THUMBNAIL_WIDTH 640
#define MEDIA_THUMBNAIL_AT_MS 10000u
#define MEDIA_SD_HEIGHT 480u
#define MEDIA_HD_HEIGHT 720u
#define MEDIA_X264_PRESET "veryfast"
#define MEDIA_X264_CRF "23"
#define MEDIA_AAC_BITRATE "128k"
#define MEDIA_PROFILE_SIZE 512
#define MEDIA_PROFILE_THUMBNAIL_SIZE 128

/* What ffprobe says of a file. */
typedef struct media_probe_info {
    int has_video;            /* a video stream (not a still image: a duration > 0) was found */
    int has_audio;
    uint32_t width, height;   /* of the first video stream */
    uint32_t duration_ms;
    char video_codec[33];     /* ffprobe's codec_name, "" when absent */
    char audio_codec[33];
    char format_name[64];     /* ffprobe's format_name ("mov,mp4,m4a,3gp,3g2,mj2", ...) */
} media_probe_info;

/* Runs ffprobe (app_config.ffprobe) on path within the tool limits and fills *info. Blocks
 * (a work lane, a worker). RPC_OK with *info filled (has_video 0 when it is no video: the
 * caller refuses it), or RPC_ERR with err filled when ffprobe could not run, timed out or
 * rejected the file as unreadable. */
int media_probe(const app *a, const char *path, media_probe_info *info, rpc_error *err);

/* Parses ffprobe's "-of flat" output (NUL-terminated) into *info: RPC_OK, or RPC_ERR when it
 * names no format. Pure (media_probe's parser; tests call it directly). */
int media_probe_parse(const char *out, media_probe_info *info);

enum media_job_kind {
    MEDIA_JOB_VIDEO = 1,         /* subject: a video id; media/videos/{user}/{video}/original */
    MEDIA_JOB_PROFILE_IMAGE = 2, /* subject: the user id; media/profile-images/{user}/original */
};

/* Queues the processing of subject, owned by user_id, in the caller's write t (the write that
 * completes an upload): the job exists if and only if t commits. A job of the same subject
 * already queued is replaced (a new upload supersedes the old). Call media_kick after the
 * commit so that a worker starts it at once rather than at its next poll. */
int media_enqueue(store_txn *t, const app *a, int64_t now, enum media_job_kind kind, uint64_t user_id,
                  uint64_t subject_id, store_error *err);
/* Wakes the workers (any thread; cheap). */
void media_kick(const app *a);

/* The jobs in each state (counts[lagoon_v1_MediaJob_State_QUEUED] ... [FAILED]; [0] unused),
 * for /metrics. Kept by the module: counted (index keys only, each state up to
 * MEDIA_JOB_COUNT_MAX) at the first call, and again at the first call after a commit changed a
 * job (the module's writes, Uploads' enqueue, a cascade), so a scrape of an idle queue reads
 * no row.
 * RPC_OK, or RPC_ERR when the module is not running or the store could not be read. */
#define MEDIA_JOB_STATES 5
#define MEDIA_JOB_COUNT_MAX 50000u
int media_job_counts(const app *a, uint64_t counts[MEDIA_JOB_STATES]);

/* The media module: its worker pool and queue (started by app_open, after the store). */
extern const app_module media_module;

#endif
