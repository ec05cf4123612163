/* app_settings: every application setting lagoond takes, declared once.
 *
 * X(field, flag, choices, default, minimum, maximum, scale, why)
 *
 * `field` is the member of app_config (a nested member such as sends.max_events works), in
 * units of the flag's value times `scale` (argon2-mem-kib is KiB, pwhash_memlimit bytes).
 * `flag` is the lagoond option (--flag, and the environment variable LAGOON_FLAG in upper case
 * with '-' as '_'); `choices` is NULL for a whole number, else the NULL-terminated names whose
 * index is the value (app_settings.c). A zero field means the default (app_config_defaults
 * fills it), so 0 is also accepted from the flag and means the default; other values outside
 * [minimum, maximum] are refused at start-up. The "why" text is printed by lagoond --help with
 * the default and the range. Settings that exist only for tests (the clock, hooks) and the
 * policies without a flag stay plain app_config fields. */
#ifndef LAGOON_APP_SETTINGS_H
#define LAGOON_APP_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

#include <sodium.h>
#include <unistd.h>

#include "rpc_options.h"
#include "store.h"

/* Keys tracked per rate limiter by default: about 230 bytes each, so about 23 MB for a full
 * one; 100 000 distinct accounts or addresses acting within one window (15 minutes for
 * sign-ins, an hour for emails) before new ones wait. */
#define APP_LIMITER_KEYS 100000
/* Uploads' defaults (uploads.h names them UPLOADS_*_DEFAULT): a 2 GiB video, 10 GiB of media
 * per user, an abandoned upload deleted after a day. */
#define APP_UPLOAD_MAX_MIB_DEFAULT 2048u
#define APP_MEDIA_QUOTA_MIB_DEFAULT 10240u
#define APP_UPLOAD_EXPIRY_HOURS_DEFAULT 24u
/* Media workers: the cores less one (at least one), so that processing leaves the server a
 * core (media.h). */
#define APP_MEDIA_WORKERS_DEFAULT                                                                  \
    (sysconf(_SC_NPROCESSORS_ONLN) > 1 ? (uint32_t)sysconf(_SC_NPROCESSORS_ONLN) - 1u : 1u)
/* One ffmpeg run's wall-clock limit (media.h, MEDIA_JOB_TIMEOUT_S_DEFAULT). */
#define APP_MEDIA_JOB_TIMEOUT_S_DEFAULT 600u

#define APP_SETTINGS(X)                                                                             \
    X(sync, "sync", app_sync_choices, STORE_SYNC_FULL, 0u, 1u, 1u,                                 \
      "full: a write is acknowledged once it is on disk. none: for benchmarks only; a power "     \
      "loss or kernel crash loses the last seconds of acknowledged writes.")                       \
    X(pwhash_opslimit, "argon2-ops", NULL, crypto_pwhash_OPSLIMIT_INTERACTIVE, 1u, 16u, 1u,        \
      "Argon2id passes per password hash. The default is libsodium's interactive limit.")         \
    X(pwhash_memlimit, "argon2-mem-kib", NULL, crypto_pwhash_MEMLIMIT_INTERACTIVE / 1024u, 8u,     \
      4u << 20, 1024u,                                                                              \
      "Argon2id memory per hash, KiB (the default is libsodium's interactive limit, 64 MiB). "    \
      "Each hash worker hashes one password at a time, so hash-workers x this bounds the memory " \
      "hashing takes.")                                                                             \
    X(event_retention_count, "event-retention-count", NULL, 1000u, 1u, 1000000u, 1u,              \
      "Realtime events kept per user for resuming subscriptions.")                                 \
    X(event_retention_s, "event-retention-days", NULL, 7u, 1u, 3650u, 24u * 3600u,                \
      "And for at most this many days. A resume from before what is kept gets OUT_OF_RANGE.")     \
    X(max_sessions, "max-sessions", NULL, 100u, 1u, STORE_PAGE_SIZE_MAX, 1u,                      \
      "Sessions per user (signed-in devices). A sign-in beyond it ends the user's oldest "         \
      "session; at most one page of the user's sessions, so that trimming reads one page.")       \
    X(sends.max_events, "sends-per-minute", NULL, 60u, 1u, 100000u, 1u,                           \
      "Messages/Send calls that store a message, per user and minute. Past it each further Send " \
      "waits 1 s after the previous one (RESOURCE_EXHAUSTED with retry_after_ms), doubling up to " \
      "a minute, until the minute is over.")                                                      \
    X(comments.max_events, "comments-per-minute", NULL, 30u, 1u, 100000u, 1u,                     \
      "Comments/Add and Comments/Reply calls that store a comment, per user and minute. Past it "  \
      "each further one waits until the minute (from the first) is over (RESOURCE_EXHAUSTED "      \
      "with retry_after_ms).")                                                                      \
    X(user_searches.max_events, "user-searches-per-minute", NULL, 30u, 1u, 100000u, 1u,          \
      "Users/Search calls per user and minute. Past it each further one waits until the minute "  \
      "(from the first) is over (RESOURCE_EXHAUSTED with retry_after_ms).")                       \
    X(teaching_requests.max_events, "teaching-requests-per-day", NULL, 20u, 1u, 100000u, 1u,      \
      "Teaching/Request and Teaching/Invite calls that store a request, per user and day. Past "   \
      "it each further one waits until the day (from the first) is over (RESOURCE_EXHAUSTED "      \
      "with retry_after_ms).")                                                                      \
    X(video_chats.max_events, "video-chats-per-day", NULL, 50u, 1u, 100000u, 1u,                   \
      "VideoChats/Schedule and StartNow calls that store a chat, per user and day (each invites "  \
      "up to 50 people, who are notified). Past it each further one waits until the day (from "   \
      "the first) is over (RESOURCE_EXHAUSTED with retry_after_ms).")                             \
    X(pro_chats.max_events, "pro-chats-per-day", NULL, 20u, 1u, 100000u, 1u,                      \
      "ProfessionalChats/Create calls that store a session, per user and day (each draft can "    \
      "be submitted to the administrators' review queue). Past it each further one waits until " \
      "the day (from the first) is over (RESOURCE_EXHAUSTED with retry_after_ms).")              \
    X(reminder_lead_ms, "video-chat-reminder-minutes", NULL, 15u, 1u, 1440u, 60u * 1000u,          \
      "Participants of a scheduled video chat and attendees of a professional chat are reminded " \
      "this many minutes before its start (and again at the start). A chat scheduled to start "   \
      "sooner than that gets only the reminder at the start.")                                    \
    X(turn_ttl_s, "turn-credential-ttl-s", NULL, 3600u, 60u, 604800u, 1u,                          \
      "Lifetime of the TURN credentials Signalling/GetIceServers hands out, seconds (the expiry " \
      "in their username, coturn's use-auth-secret form).")                                      \
    X(media_url_ttl_s, "media-url-ttl-s", NULL, 3600u, 60u, 604800u, 1u,                           \
      "Lifetime of the signed media URLs Videos/GetPlayback and profiles hand out, seconds. A "   \
      "link also stops at once when its video's key version moves (made private, unshared, "     \
      "deleted).")                                                                                 \
    X(plays.max_events, "plays-per-minute", NULL, 1200u, 1u, 10000000u, 1u,                       \
      "Plays interactions (Record, each interaction of a Report batch; a Start counts one) per "  \
      "user and minute. Past it the call (or the Report stream) is refused with "                 \
      "RESOURCE_EXHAUSTED and retry_after_ms until the minute (from the first) is over.")         \
    X(plays_resume_min_pct, "plays-resume-min-percent", NULL, 5u, 1u, 50u, 1u,                    \
      "A play stopped before this percentage of a video of known duration saves no resume "       \
      "position (Jellyfin's MinResumePct).")                                                       \
    X(plays_resume_max_pct, "plays-resume-max-percent", NULL, 90u, 50u, 99u, 1u,                  \
      "A play past this percentage marks the video watched and resets its resume position; it "   \
      "also counts as completed in the video's figures (Jellyfin's MaxResumePct).")                \
    X(plays_retention_s, "plays-retention-days", NULL, 90u, 1u, 3650u, 24u * 3600u,               \
      "Raw play interactions (the playbook) are kept this many days, then trimmed a few at each " \
      "write; resume positions, history and the per-video figures stay.")                          \
    X(upload_max_bytes, "upload-max-mib", NULL, APP_UPLOAD_MAX_MIB_DEFAULT, 1u, 1u << 20, 1u << 20,         \
      "Largest video file Uploads/Create accepts, MiB (a profile image: 5 MiB, "                 \
      "UPLOADS_PROFILE_IMAGE_MAX).")                                                              \
    X(media_quota_bytes, "media-quota-mib", NULL, APP_MEDIA_QUOTA_MIB_DEFAULT, 1u, 1u << 30, 1u << 20,      \
      "Storage per user, MiB: the media files of their videos plus the declared sizes of their "  \
      "open uploads. An upload that would pass it is refused (RESOURCE_EXHAUSTED).")              \
    X(upload_expiry_s, "upload-expiry-hours", NULL, APP_UPLOAD_EXPIRY_HOURS_DEFAULT, 1u, 720u, 3600u,        \
      "An upload that receives no chunk for this many hours is deleted with its bytes.")         \
    X(media_workers, "media-workers", NULL, APP_MEDIA_WORKERS_DEFAULT, 1u, 64u, 1u,               \
      "Uploads processed at once (each runs one ffmpeg at a time, with up to 2 decoding and 2 "   \
      "encoding threads). The "                                                                 \
      "default is the number of cores less one, at least 1, so that the server keeps a core.")   \
    X(media_job_timeout_s, "media-job-timeout-s", NULL, APP_MEDIA_JOB_TIMEOUT_S_DEFAULT, 10u, 86400u, 1u, \
      "Wall-clock limit of one ffmpeg or ffprobe run, seconds; past it the run is killed and the " \
      "attempt fails (retried later, up to 5 attempts). ffprobe gets at most 60 s.")             \
    X(limiter_keys, "limiter-keys", NULL, APP_LIMITER_KEYS, 1000u, 10000000u, 1u,                 \
      "Keys (accounts, client addresses, users) each rate limiter tracks, about 230 bytes each. " \
      "A full limiter forgets expired keys, then makes new keys wait, so this bounds the "         \
      "limiters' memory; raise it when more distinct callers act within one window.")

#define APP_SETTING_COUNT_ONE(...) +1
#define APP_SETTINGS_COUNT (0 APP_SETTINGS(APP_SETTING_COUNT_ONE))

struct app_config;

/* The flags of APP_SETTINGS, in order: writes APP_SETTINGS_COUNT options into out (room for
 * cap; fewer only when cap is too small) whose values go into values[], and returns how many.
 * values[] starts at zero (the defaults). */
size_t app_settings_options(uint32_t values[APP_SETTINGS_COUNT], rpc_option *out, size_t cap);
/* Sets each field of cfg whose value was given (not zero), in the field's units. */
void app_settings_apply(const uint32_t values[APP_SETTINGS_COUNT], struct app_config *cfg);
/* Fills every zero field of APP_SETTINGS with its default (part of app_config_defaults). */
void app_settings_defaults(struct app_config *cfg);

#endif
