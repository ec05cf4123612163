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
 * (RLIMIT_CPU counts every thread; ffmpeg runs MEDIA_FFMPEG_THREADS). MEDIA_TOOL_MEMORY_BYTES:
 * the address space (RLIMIT_AS) of a run: x264 at 720p with two threads stays well under
 * 1 GiB; a hostile file that makes a decoder allocate without end is stopped here.
 * MEDIA_TOOL_FILE_BYTES: the largest file a run may write (RLIMIT_FSIZE): renditions of a
 * 2 GiB source are smaller than it unless the source is far below their bit rate. */
#define MEDIA_JOB_TIMEOUT_S_DEFAULT 600u
#define MEDIA_PROBE_TIMEOUT_S 60u
#define MEDIA_TOOL_CPU_PER_WALL 4u
#define MEDIA_FFMPEG_THREADS "2"
#define MEDIA_TOOL_MEMORY_BYTES (2ull << 30)
#define MEDIA_TOOL_FILE_BYTES (8ull << 30)
/* ffprobe's output kept (the rest is dropped: a file with thousands of streams) and the lines
 * of it parsed; a width or height above MEDIA_DIMENSION_MAX is read as unknown (0). */
#define MEDIA_PROBE_OUT_MAX 16384
#define MEDIA_PROBE_LINES_MAX 512
#define MEDIA_DIMENSION_MAX 16384u

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

/* The media module: its worker pool and queue (started by app_open, after the store). */
extern const app_module media_module;

#endif
