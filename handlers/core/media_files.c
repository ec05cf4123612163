/* media_files: the media directory's layout and its durable file operations (media_files.h). */
#define _XOPEN_SOURCE 700
#include "media_files.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fits(int n, size_t cap)
{
    return n >= 0 && (size_t)n < cap ? LAGOON_OK : LAGOON_INTERNAL;
}

int media_video_relpath(uint64_t user_id, uint64_t video_id, const char *name, char *buf, size_t cap)
{
    int n = name ? snprintf(buf, cap, "videos/%" PRIu64 "/%" PRIu64 "/%s", user_id, video_id, name)
                 : snprintf(buf, cap, "videos/%" PRIu64 "/%" PRIu64, user_id, video_id);
    return fits(n, cap);
}

int media_profile_relpath(uint64_t user_id, const char *name, char *buf, size_t cap)
{
    int n = name ? snprintf(buf, cap, "profile-images/%" PRIu64 "/%s", user_id, name)
                 : snprintf(buf, cap, "profile-images/%" PRIu64, user_id);
    return fits(n, cap);
}

static int absolute(const app *a, const char *rel, char *buf, size_t cap)
{
    return fits(snprintf(buf, cap, "%s/" MEDIA_DIR "/%s", a->data_dir, rel), cap);
}

int media_video_path(const app *a, uint64_t user_id, uint64_t video_id, const char *name, char *buf, size_t cap)
{
    char rel[128];
    int st = media_video_relpath(user_id, video_id, name, rel, sizeof(rel));
    return st == LAGOON_OK ? absolute(a, rel, buf, cap) : st;
}

int media_profile_path(const app *a, uint64_t user_id, const char *name, char *buf, size_t cap)
{
    char rel[128];
    int st = media_profile_relpath(user_id, name, rel, sizeof(rel));
    return st == LAGOON_OK ? absolute(a, rel, buf, cap) : st;
}

int media_upload_path(const app *a, uint64_t upload_id, char *buf, size_t cap)
{
    return fits(snprintf(buf, cap, "%s/" MEDIA_DIR "/uploads/%" PRIu64 ".part", a->data_dir, upload_id), cap);
}

static int fsync_path(const char *path, int flags);

int media_mkdirs(const char *file_path)
{
    char p[MEDIA_PATH_MAX];
    size_t n = strnlen(file_path, sizeof(p));
    if (n == sizeof(p))
        return LAGOON_INTERNAL;
    memcpy(p, file_path, n + 1);
    /* Each '/' after the first byte ends a directory to create, the last one excepted (the
     * file's own name follows it). A directory made here is durable in its parent (fsynced)
     * before the next, so that a file published into it later survives a power loss with the
     * path to it. */
    size_t parent = 0;
    for (size_t i = 1; i < n; i++) {
        if (p[i] != '/')
            continue;
        p[i] = '\0';
        if (mkdir(p, 0750) == 0) {
            p[parent] = '\0';
            int rc = parent > 0 ? fsync_path(p, O_RDONLY | O_DIRECTORY) : 0;
            p[parent] = '/';
            if (rc != 0)
                return LAGOON_INTERNAL;
        } else if (errno != EEXIST) {
            return LAGOON_INTERNAL;
        }
        p[i] = '/';
        parent = i;
    }
    return LAGOON_OK;
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int io_status(int e)
{
    return e == ENOSPC || e == EDQUOT ? LAGOON_RESOURCE_EXHAUSTED : LAGOON_INTERNAL;
}

int media_publish(const char *tmp_path, const char *final_path)
{
    if (fsync_path(tmp_path, O_RDONLY) != 0 || rename(tmp_path, final_path) != 0) {
        int e = errno;
        unlink(tmp_path);
        errno = e;
        return io_status(e);
    }
    char dir[MEDIA_PATH_MAX];
    size_t n = strnlen(final_path, sizeof(dir) - 1);
    memcpy(dir, final_path, n);
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir)
        *slash = '\0';
    /* The rename is durable once the directory is: a crash after this keeps the new file. */
    if (fsync_path(dir, O_RDONLY | O_DIRECTORY) != 0)
        return io_status(errno);
    /* From another directory (an upload's .part): the old name's removal is made durable too,
     * so that a crash cannot bring it back beside the new one. */
    const char *tslash = strrchr(tmp_path, '/');
    size_t tn = tslash != NULL ? (size_t)(tslash - tmp_path) : 0;
    if (tn == 0 || tn >= sizeof(dir) || (strlen(dir) == tn && memcmp(dir, tmp_path, tn) == 0))
        return LAGOON_OK;
    memcpy(dir, tmp_path, tn);
    dir[tn] = '\0';
    return fsync_path(dir, O_RDONLY | O_DIRECTORY) == 0 ? LAGOON_OK : io_status(errno);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* Deletes the tree at path, bottom up, without following links; absent is fine. The trees
 * are a user's media: two levels of ids and a handful of files. */
static int remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? LAGOON_OK : LAGOON_INTERNAL;
    return nftw(path, remove_entry, 8, FTW_DEPTH | FTW_PHYS) == 0 ? LAGOON_OK : LAGOON_INTERNAL;
}

int media_remove_video(const app *a, uint64_t user_id, uint64_t video_id)
{
    char p[MEDIA_PATH_MAX];
    int st = media_video_path(a, user_id, video_id, NULL, p, sizeof(p));
    return st == LAGOON_OK ? remove_tree(p) : st;
}

int media_remove_user(const app *a, uint64_t user_id)
{
    char p[MEDIA_PATH_MAX];
    int st = fits(snprintf(p, sizeof(p), "%s/" MEDIA_DIR "/videos/%" PRIu64, a->data_dir, user_id), sizeof(p));
    if (st == LAGOON_OK)
        st = remove_tree(p);
    int st2 = media_profile_path(a, user_id, NULL, p, sizeof(p));
    if (st2 == LAGOON_OK)
        st2 = remove_tree(p);
    return st != LAGOON_OK ? st : st2;
}

/* ---- discarding: the names at once, the blocks off the caller's thread -------------------------- */

/* Removals running on their own threads at once; past it the caller removes (a burst of
 * deletions costs their own writes, as before, rather than a thread each). */
#define MEDIA_DISCARD_THREADS_MAX 4

static atomic_uint discard_threads;
static atomic_uint discard_seq;

static void *discard_main(void *arg)
{
    char *path = arg;
    (void)remove_tree(path);
    free(path);
    atomic_fetch_sub(&discard_threads, 1);
    return NULL;
}

/* Renames the tree at path to media/trash/{pid}-{n} (the same file system: one rename, so the
 * names are gone when this returns) and removes it on a detached thread; when any step fails,
 * removes it here instead. Freeing a large file's blocks takes long (0.35 s for 256 MiB on this
 * project's test machine), and the callers are after-commit callbacks on the store's writer
 * thread, which every write waits for. */
static int discard_tree(const app *a, const char *path)
{
    char trash[MEDIA_PATH_MAX];
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? LAGOON_OK : LAGOON_INTERNAL;
    if (fits(snprintf(trash, sizeof(trash), "%s/" MEDIA_DIR "/" MEDIA_TRASH_DIR "/%ld-%u", a->data_dir,
                      (long)getpid(), atomic_fetch_add(&discard_seq, 1)),
             sizeof(trash)) != LAGOON_OK ||
        media_mkdirs(trash) != LAGOON_OK || rename(path, trash) != 0)
        return remove_tree(path);
    char *copy = strdup(trash);
    pthread_t th;
    pthread_attr_t attr;
    int started = 0;
    if (copy != NULL && atomic_fetch_add(&discard_threads, 1) < MEDIA_DISCARD_THREADS_MAX &&
        pthread_attr_init(&attr) == 0) {
        started = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                  pthread_create(&th, &attr, discard_main, copy) == 0;
        pthread_attr_destroy(&attr);
    }
    if (started)
        return LAGOON_OK;
    if (copy != NULL)
        atomic_fetch_sub(&discard_threads, 1);
    free(copy);
    return remove_tree(trash);
}

int media_discard_video(const app *a, uint64_t user_id, uint64_t video_id)
{
    char p[MEDIA_PATH_MAX];
    int st = media_video_path(a, user_id, video_id, NULL, p, sizeof(p));
    return st == LAGOON_OK ? discard_tree(a, p) : st;
}

int media_discard_user(const app *a, uint64_t user_id)
{
    char p[MEDIA_PATH_MAX];
    int st = fits(snprintf(p, sizeof(p), "%s/" MEDIA_DIR "/videos/%" PRIu64, a->data_dir, user_id), sizeof(p));
    if (st == LAGOON_OK)
        st = discard_tree(a, p);
    int st2 = media_profile_path(a, user_id, NULL, p, sizeof(p));
    if (st2 == LAGOON_OK)
        st2 = discard_tree(a, p);
    return st != LAGOON_OK ? st : st2;
}

int media_trash_sweep(const app *a)
{
    char p[MEDIA_PATH_MAX];
    int st = fits(snprintf(p, sizeof(p), "%s/" MEDIA_DIR "/" MEDIA_TRASH_DIR, a->data_dir), sizeof(p));
    return st == LAGOON_OK ? remove_tree(p) : st;
}
