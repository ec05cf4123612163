/* uploads: resumable uploads of a video's file or a profile image (Uploads service,
 * idl/lagoon/v1/uploads.proto), in chunks over one bidirectional call, each chunk durable
 * (fsynced, then its offset committed) before it is acknowledged. A finished upload's file
 * becomes the video's (or the profile's) `original` (media_files.h) and is queued for
 * processing (media.h). */
#ifndef LAGOON_UPLOADS_H
#define LAGOON_UPLOADS_H

#include <stdint.h>

#include "app.h"

/* The largest video upload when app_config.upload_max_bytes is 0 (APP_SETTINGS upload-max-mib). */
#define UPLOADS_MAX_BYTES_DEFAULT ((uint64_t)APP_UPLOAD_MAX_MIB_DEFAULT << 20)
/* A user's storage when app_config.media_quota_bytes is 0 (media-quota-mib): their videos'
 * media_bytes plus their open uploads' declared sizes. */
#define UPLOADS_QUOTA_BYTES_DEFAULT ((uint64_t)APP_MEDIA_QUOTA_MIB_DEFAULT << 20)
/* An upload untouched this long is deleted when app_config.upload_expiry_s is 0. */
#define UPLOADS_EXPIRY_S_DEFAULT (APP_UPLOAD_EXPIRY_HOURS_DEFAULT * 3600u)
/* A profile image: it is resized to 512x512 anyway, so a phone photo's size is plenty. */
#define UPLOADS_PROFILE_IMAGE_MAX (5u << 20)
/* One chunk's bytes: UploadChunk.data's items together (uploads.options: 32 of 32 KiB). Under
 * the default 4 MiB frame with room to spare; large enough that a chunk's fsync and commit
 * are a small part of its time on a fast link, small enough that a dropped mobile connection
 * loses little. */
#define UPLOADS_CHUNK_MAX (1u << 20)
#define UPLOADS_CHUNK_PIECES 32
#define UPLOADS_PIECE_MAX (32u << 10)
/* A user's uploads open at once: far more than a client uploading in parallel needs. It bounds
 * the rows each Create's quota reads and an account's upload rows (each Create's size counts
 * in the quota, but uploads of a byte each would otherwise pile up without limit). */
#define UPLOADS_OPEN_MAX 32
/* Chunks of one Send stream received and not yet acknowledged: a client keeps this many in
 * flight and waits for acks beyond it; one that does not is refused (RESOURCE_EXHAUSTED), so a
 * stream holds at most this many chunks' memory. The chunks that arrive while the server
 * writes are written next together, with one fsync and one commit (an fsync costs about as
 * much as writing 1 MiB on this machine's disk), so a window of 8 keeps batches of 3 to 5. */
#define UPLOADS_SEND_INFLIGHT_MAX 8

/* The Uploads module: the expiry jobs (JobKind UPLOAD_EXPIRY), and the sweeper that deletes
 * the bytes of uploads whose rows are gone (at start-up, and after each commit that deleted
 * one: cancelled, expired, completed, or with their video or owner). */
extern const app_module uploads_module;

#endif
