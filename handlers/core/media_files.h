/* media_files: where media bytes live. Video and image bytes are files under the data
 * directory, never LMDB rows (a 2 GiB value would pin the map and every reader):
 *
 *   media/videos/{user_id}/{video_id}/original        the uploaded file, as uploaded
 *   media/videos/{user_id}/{video_id}/thumbnail.jpg   processing's outputs
 *   media/videos/{user_id}/{video_id}/sd.mp4          480p
 *   media/videos/{user_id}/{video_id}/hd.mp4          720p
 *   media/profile-images/{user_id}/original           an uploaded profile image
 *   media/profile-images/{user_id}/profile.jpg        512x512
 *   media/profile-images/{user_id}/thumbnail.jpg      128x128
 *   media/uploads/{upload_id}.part                    an upload's bytes until it completes
 *
 * A file appears under its final name only complete: it is written under a temporary name in
 * the same directory, fsynced and renamed (media_publish), so a crash leaves either the old
 * file or the new one, never half of one. Paths are built from ids only, never from client
 * strings. */
#ifndef LAGOON_MEDIA_FILES_H
#define LAGOON_MEDIA_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"

#define MEDIA_DIR "media"
#define MEDIA_ORIGINAL "original"
#define MEDIA_THUMBNAIL "thumbnail.jpg"
#define MEDIA_SD "sd.mp4"
#define MEDIA_HD "hd.mp4"
#define MEDIA_PROFILE "profile.jpg"
#define MEDIA_PROFILE_THUMBNAIL "thumbnail.jpg"

/* Video.media_files bits: which of a video's files exist. */
#define MEDIA_FILE_ORIGINAL 1u
#define MEDIA_FILE_THUMBNAIL 2u
#define MEDIA_FILE_SD 4u
#define MEDIA_FILE_HD 8u

/* Room for any media path: the data directory (app.data_dir) plus the longest relative path. */
#define MEDIA_PATH_MAX (sizeof(((app *)0)->data_dir) + 128)

/* Each writes the absolute path into buf (cap bytes) and returns LAGOON_OK, or
 * LAGOON_INTERNAL when it does not fit. name NULL gives the directory. */
int media_video_path(const app *a, uint64_t user_id, uint64_t video_id, const char *name, char *buf, size_t cap);
int media_profile_path(const app *a, uint64_t user_id, const char *name, char *buf, size_t cap);
int media_upload_path(const app *a, uint64_t upload_id, char *buf, size_t cap);
/* The path of a video's file relative to media/ ("videos/{u}/{v}/{name}"): what media URLs name. */
int media_video_relpath(uint64_t user_id, uint64_t video_id, const char *name, char *buf, size_t cap);
int media_profile_relpath(uint64_t user_id, const char *name, char *buf, size_t cap);

/* Creates the directories above the file path (mode 0750); existing ones are fine. LAGOON_OK,
 * or LAGOON_INTERNAL (errno kept). */
int media_mkdirs(const char *file_path);

/* Makes tmp_path's complete contents durable under final_path: fsyncs the file, renames it
 * over final_path and fsyncs the directory (and tmp_path's, when it is another one: an
 * upload's .part). LAGOON_OK, or
 * LAGOON_RESOURCE_EXHAUSTED (disk full: ENOSPC/EDQUOT) or LAGOON_INTERNAL; tmp_path is removed
 * on failure. */
int media_publish(const char *tmp_path, const char *final_path);

/* Deletes a video's directory and the files in it (names above and their temporaries);
 * absent is fine. For after the row's deletion has committed. */
int media_remove_video(const app *a, uint64_t user_id, uint64_t video_id);
/* Deletes media/videos/{user_id}/ and media/profile-images/{user_id}/ wholly (account deletion,
 * after its commit). */
int media_remove_user(const app *a, uint64_t user_id);

/* The same, for the store's writer thread (after-commit callbacks): the directories leave their
 * names at once (renamed into media/trash/), and their files are removed on a thread of their own
 * (at most a few at once; past them, here). LAGOON_OK, or LAGOON_INTERNAL. */
#define MEDIA_TRASH_DIR "trash"
int media_discard_video(const app *a, uint64_t user_id, uint64_t video_id);
int media_discard_user(const app *a, uint64_t user_id);
/* Removes media/trash/ wholly: what a discard cut short by an exit left. At start, before any
 * discard. */
int media_trash_sweep(const app *a);

#endif
