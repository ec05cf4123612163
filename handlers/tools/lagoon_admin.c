/* lagoon-admin: the administrator's tool. verify, backup and stats are the store's
 * (store_admin_main) with the application's schema; create-admin is the accounts feature's.
 *
 *   lagoon-admin create-admin --data DIR --email E --username U   (password: one line on stdin)
 *   lagoon-admin --help
 *
 * create-admin writes to the database, so it opens the store read-write, which takes the
 * directory's writer lock (store.h, STORE_WRITER_LOCK): while lagoond runs on DIR it is refused
 * before it reads the password, and lagoond cannot start while it runs. */
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "accounts.h"
#include "lagoon_tables.h"
#include "media_files.h"
#include "media_sign.h"
#include "schema.h"

/* After the store's usage ("usage: lagoon-admin COMMAND ..."), or alone after "usage:". */
#define ADMIN_USAGE                                                                                \
    "       lagoon-admin create-admin --data DIR --email E --username U\n"                         \
    "  create-admin  add an administrator (password: one line on stdin); refused while\n"          \
    "                lagoond runs on DIR: stop it first\n"

static int is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

static int create_admin(int argc, char **argv)
{
    if (argc == 3 && is_help(argv[2])) {
        printf("usage:\n" ADMIN_USAGE);
        return 0;
    }
    const char *data = NULL, *email = NULL, *username = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--email") == 0)
            email = argv[i + 1];
        else if (strcmp(argv[i], "--username") == 0)
            username = argv[i + 1];
        else
            data = NULL, email = NULL; /* unknown option: usage below */
    }
    if (data == NULL || email == NULL || username == NULL || argc % 2 != 0) {
        fprintf(stderr, "usage:\n" ADMIN_USAGE);
        return 2;
    }
    /* Opened first, so that a running lagoond is reported before anyone types a password. */
    app_config cfg = {.no_media_workers = 1};
    app *a;
    rpc_error err;
    if (app_open(data, &cfg, &a, &err) != RPC_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", err.message);
        return 1;
    }
    /* The password comes on stdin, so that it never shows in a process list or a history. */
    char password[ACCOUNT_PASSWORD_MAX + 2];
    if (fgets(password, sizeof(password), stdin) == NULL) {
        fprintf(stderr, "lagoon-admin: no password on standard input\n");
        app_close(a);
        return 2;
    }
    password[strcspn(password, "\r\n")] = '\0';
    uint64_t id = 0;
    store_error se;
    int st = account_create_admin(a, email, username, password, &id, &se);
    sodium_memzero(password, sizeof(password));
    app_close(a);
    if (st != LAGOON_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", se.message);
        return 1;
    }
    printf("administrator %s created (user id %llu)\n", username, (unsigned long long)id);
    return 0;
}

/* ---- verify: the media directory against the rows ----------------------------------------------
 * Files live beside the store (media_files.h), so the store's verify cannot see them: this walks
 * <data>/media and reports video directories whose video has no row or another owner, profile
 * images of users that do not exist, upload files without their upload row (files without a
 * row: a crash between a deletion's commit and the files' removal leaves those), and videos whose
 * media_files bits name files that are not there (rows without their files). Beside a live
 * server a video being deleted or processed at that moment may show up once. */

/* Lines printed for the media; problems beyond are counted, not printed. */
#define MEDIA_VERIFY_PRINT_MAX 1000

typedef struct media_verify {
    const char *data;
    store_txn *t;
    uint64_t problems;
    lagoon_v1_Video *video; /* ~37 KB: a row to read into */
    lagoon_v1_User *user;
} media_verify;

static void media_problem(media_verify *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void media_problem(media_verify *m, const char *fmt, ...)
{
    if (m->problems++ >= MEDIA_VERIFY_PRINT_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("media: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

/* A directory entry's name as an id (decimal, no leading zero, not 0); 0 when it is not one. */
static uint64_t entry_id(const char *name, const char *suffix)
{
    char *end;
    if (name[0] < '1' || name[0] > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(name, &end, 10);
    return errno == 0 && strcmp(end, suffix) == 0 ? (uint64_t)v : 0;
}

static int path_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* media/videos/{u}/{v}: each v must be a video of u's. */
static void verify_video_dirs(media_verify *m, const char *top, uint64_t user)
{
    char dir[MEDIA_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%" PRIu64, top, user);
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        uint64_t id = entry_id(e->d_name, "");
        store_error err;
        int st = id ? store_get(m->t, &lagoon_table_videos, id, m->video, &err) : LAGOON_NOT_FOUND;
        if (id == 0)
            media_problem(m, "videos/%" PRIu64 "/%s: not a video id", user, e->d_name);
        else if (st == LAGOON_NOT_FOUND)
            media_problem(m, "videos/%" PRIu64 "/%" PRIu64 ": files without a row (no such video)", user, id);
        else if (st != LAGOON_OK)
            media_problem(m, "videos/%" PRIu64 "/%" PRIu64 ": cannot read its row: %s", user, id, err.message);
        else if (m->video->owner_id != user)
            media_problem(m, "videos/%" PRIu64 "/%" PRIu64 ": files without a row (the video is user %" PRIu64 "'s)",
                          user, id, m->video->owner_id);
    }
    closedir(d);
}

/* Calls fn(m, top, id) for each entry of top named by an id with suffix; reports the others
 * (other_ok: names such as temporaries that are not problems). */
static void each_id_entry(media_verify *m, const char *rel, const char *suffix,
                          void (*fn)(media_verify *m, const char *rel, const char *top, uint64_t id))
{
    char top[MEDIA_PATH_MAX];
    snprintf(top, sizeof(top), "%s/" MEDIA_DIR "/%s", m->data, rel);
    DIR *d = opendir(top);
    if (d == NULL)
        return; /* nothing uploaded yet */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        uint64_t id = entry_id(e->d_name, suffix);
        if (id == 0 && suffix[0] == '\0')
            media_problem(m, "%s/%s: not a user id", rel, e->d_name);
        else if (id != 0)
            fn(m, rel, top, id);
    }
    closedir(d);
}

static void video_user(media_verify *m, const char *rel, const char *top, uint64_t user)
{
    (void)rel;
    verify_video_dirs(m, top, user);
}

static void profile_user(media_verify *m, const char *rel, const char *top, uint64_t user)
{
    (void)top;
    store_error err;
    int st = store_get(m->t, &lagoon_table_users, user, m->user, &err);
    if (st == LAGOON_NOT_FOUND)
        media_problem(m, "%s/%" PRIu64 ": files without a row (no such user)", rel, user);
    else if (st != LAGOON_OK)
        media_problem(m, "%s/%" PRIu64 ": cannot read its row: %s", rel, user, err.message);
}

#ifdef lagoon_v1_Upload_init_zero
static void upload_part(media_verify *m, const char *rel, const char *top, uint64_t id)
{
    (void)top;
    lagoon_v1_Upload *u = malloc(sizeof(*u));
    store_error err;
    int st = u ? store_get(m->t, &lagoon_table_uploads, id, u, &err) : LAGOON_RESOURCE_EXHAUSTED;
    if (st == LAGOON_NOT_FOUND)
        media_problem(m, "%s/%" PRIu64 ".part: a file without a row (no such upload)", rel, id);
    free(u);
}
#endif

/* Each video row's media_files bits: the files must exist. */
static int missing_files(void *arg, uint64_t id, const void *row)
{
    (void)id;
    media_verify *m = arg;
    const lagoon_v1_Video *v = row;
    static const struct {
        uint32_t bit;
        const char *name;
    } files[] = {{MEDIA_FILE_ORIGINAL, MEDIA_ORIGINAL},
                 {MEDIA_FILE_THUMBNAIL, MEDIA_THUMBNAIL},
                 {MEDIA_FILE_SD, MEDIA_SD},
                 {MEDIA_FILE_HD, MEDIA_HD}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char rel[128], path[MEDIA_PATH_MAX];
        if ((v->media_files & files[i].bit) == 0 ||
            media_video_relpath(v->owner_id, v->id, files[i].name, rel, sizeof(rel)) != LAGOON_OK)
            continue;
        snprintf(path, sizeof(path), "%s/" MEDIA_DIR "/%s", m->data, rel);
        if (!path_exists(path))
            media_problem(m, "%s: missing (video %" PRIu64 "'s row says it exists)", rel, v->id);
    }
    return LAGOON_OK;
}

/* Each user row whose profile_image_url is a marker ("media:profile-images/{u}/profile.jpg",
 * what processing writes): the file it names must exist. */
static int missing_profile_image(void *arg, uint64_t id, const void *row)
{
    (void)id;
    media_verify *m = arg;
    const lagoon_v1_User *u = row;
    size_t ml = sizeof(MEDIA_MARKER) - 1;
    if (strncmp(u->profile_image_url, MEDIA_MARKER, ml) != 0)
        return LAGOON_OK;
    const char *rel = u->profile_image_url + ml;
    media_ref ref;
    char path[MEDIA_PATH_MAX];
    if (media_relpath_parse(rel, strlen(rel), &ref) != 0 || ref.kind != MEDIA_KIND_PROFILE || ref.user_id != u->id)
        media_problem(m, "user %" PRIu64 ": profile image marker '%s' names no file of theirs", u->id,
                      u->profile_image_url);
    else if (snprintf(path, sizeof(path), "%s/" MEDIA_DIR "/%s", m->data, rel) < (int)sizeof(path) &&
             !path_exists(path))
        media_problem(m, "%s: missing (user %" PRIu64 "'s profile image)", rel, u->id);
    return LAGOON_OK;
}

/* Pages of a table: a bound far above any real table (STORE_PAGE_SIZE_MAX rows each). */
#define MEDIA_VERIFY_PAGES_MAX 100000000

/* fn over every row of table, page by page in m's read. */
static int verify_rows(media_verify *m, const store_table *table, store_row_fn fn, store_error *err)
{
    store_query q = {.table = table, .page_size = STORE_PAGE_SIZE_MAX};
    char token[STORE_PAGE_TOKEN_MAX + 1];
    store_page page;
    for (long pages = 0; pages < MEDIA_VERIFY_PAGES_MAX; pages++) {
        int st = store_scan(m->t, &q, fn, m, &page, err);
        if (st != LAGOON_OK)
            return st;
        if (page.next_page_token[0] == '\0')
            break;
        memcpy(token, page.next_page_token, sizeof(token));
        q.page_token = token;
    }
    return LAGOON_OK;
}

/* The media half of verify: 0 when clean, 1 with problems or when it could not look. */
static int verify_media(const char *data)
{
    store_config cfg = {.schema = app_schema(), .read_only = 1};
    store *s;
    store_error err;
    if (store_open(data, &cfg, &s, &err) != LAGOON_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", err.message);
        return 1;
    }
    media_verify m = {.data = data, .video = malloc(sizeof(lagoon_v1_Video)), .user = malloc(sizeof(lagoon_v1_User))};
    int st = m.video && m.user ? store_read_begin(s, &m.t, &err) : LAGOON_RESOURCE_EXHAUSTED;
    if (st == LAGOON_OK) {
        printf("verifying %s/" MEDIA_DIR "\n", data);
        each_id_entry(&m, "videos", "", video_user);
        each_id_entry(&m, "profile-images", "", profile_user);
#ifdef lagoon_v1_Upload_init_zero
        each_id_entry(&m, "uploads", ".part", upload_part);
#endif
        st = verify_rows(&m, &lagoon_table_videos, missing_files, &err);
        if (st == LAGOON_OK)
            st = verify_rows(&m, &lagoon_table_users, missing_profile_image, &err);
        store_read_end(m.t);
    }
    free(m.video);
    free(m.user);
    store_close(s);
    if (st != LAGOON_OK) {
        fprintf(stderr, "lagoon-admin: verify of the media failed: %s\n",
                st == LAGOON_RESOURCE_EXHAUSTED ? "out of memory" : err.message);
        return 1;
    }
    if (m.problems) {
        printf("%llu media problem(s) found\n", (unsigned long long)m.problems);
        return 1;
    }
    printf("no media problems found\n");
    return 0;
}

/* verify's --data DIR, or NULL. */
static const char *data_arg(int argc, char **argv)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], "--data") == 0)
            return argv[i + 1];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create-admin") == 0)
        return create_admin(argc, argv);
    int rc = store_admin_main(argc, argv, app_schema(), stdout, stderr);
    /* The store's verify ran (0: clean, 1: problems or a failure): the media's too. */
    if (rc != 2 && argc >= 2 && strcmp(argv[1], "verify") == 0 && data_arg(argc, argv) != NULL &&
        verify_media(data_arg(argc, argv)) != 0)
        rc = 1;
    /* The store's usage lists its commands; this tool adds its own, where that went. */
    if (rc == 2)
        fputs(ADMIN_USAGE, stderr);
    else if (argc == 2 && is_help(argv[1]))
        fputs(ADMIN_USAGE, stdout);
    return rc;
}
