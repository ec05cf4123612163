/* media_sign: signed media URLs (media_sign.h). */
#define _XOPEN_SOURCE 700
#include "media_sign.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "media_files.h"

/* ---- relative paths --------------------------------------------------------------------- */

/* The file names a URL may name, per kind, with their MEDIA_FILE_* bits. */
typedef struct media_name {
    const char *name;
    uint32_t bit;
} media_name;

static const media_name video_names[] = {
    {MEDIA_ORIGINAL, MEDIA_FILE_ORIGINAL},
    {MEDIA_THUMBNAIL, MEDIA_FILE_THUMBNAIL},
    {MEDIA_SD, MEDIA_FILE_SD},
    {MEDIA_HD, MEDIA_FILE_HD},
};
static const media_name profile_names[] = {
    {MEDIA_ORIGINAL, 0},
    {MEDIA_PROFILE, 0},
    {MEDIA_PROFILE_THUMBNAIL, 0},
};

/* A decimal id at p[*i..len) up to the next '/' (or the end when last): no sign, no leading zero,
 * not 0, below 2^64. 0 with *i past it, or -1. */
static int parse_id(const char *p, size_t len, size_t *i, uint64_t *id)
{
    size_t b = *i;
    uint64_t v = 0;
    while (*i < len && p[*i] >= '0' && p[*i] <= '9') {
        unsigned d = (unsigned)(p[*i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        (*i)++;
    }
    if (*i == b || p[b] == '0' || *i >= len || p[*i] != '/')
        return -1;
    (*i)++; /* the '/' */
    *id = v;
    return 0;
}

static int parse_name(const char *p, size_t len, const media_name *names, size_t n, media_ref *out)
{
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i].name);
        if (l == len && memcmp(p, names[i].name, l) == 0) {
            out->name = names[i].name;
            out->file_bit = names[i].bit;
            return 0;
        }
    }
    return -1;
}

static int has_prefix(const char *p, size_t len, const char *prefix, size_t *i)
{
    size_t l = strlen(prefix);
    if (len < l || memcmp(p, prefix, l) != 0)
        return 0;
    *i = l;
    return 1;
}

int media_relpath_parse(const char *path, size_t len, media_ref *out)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    if (len > MEDIA_RELPATH_MAX)
        return -1;
    if (has_prefix(path, len, "videos/", &i)) {
        out->kind = MEDIA_KIND_VIDEO;
        if (parse_id(path, len, &i, &out->user_id) != 0 || parse_id(path, len, &i, &out->video_id) != 0)
            return -1;
        return parse_name(path + i, len - i, video_names, sizeof(video_names) / sizeof(video_names[0]), out);
    }
    if (has_prefix(path, len, "profile-images/", &i)) {
        out->kind = MEDIA_KIND_PROFILE;
        if (parse_id(path, len, &i, &out->user_id) != 0)
            return -1;
        return parse_name(path + i, len - i, profile_names, sizeof(profile_names) / sizeof(profile_names[0]), out);
    }
    return -1;
}

int media_ref_relpath(const media_ref *ref, char *buf, size_t cap)
{
    return ref->kind == MEDIA_KIND_VIDEO ? media_video_relpath(ref->user_id, ref->video_id, ref->name, buf, cap)
                                         : media_profile_relpath(ref->user_id, ref->name, buf, cap);
}

/* ---- the key ------------------------------------------------------------------------------ */

static int key_read(const char *path, media_key *key, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1; /* errno kept: ENOENT means create it */
    unsigned char extra;
    ssize_t n = read(fd, key->k, sizeof(key->k));
    ssize_t more = n == (ssize_t)sizeof(key->k) ? read(fd, &extra, 1) : 0;
    close(fd);
    if (n != (ssize_t)sizeof(key->k) || more != 0) {
        snprintf(err, errlen, "%s is not a %d-byte key: restore it from a backup, or delete it to make a new "
                              "one (which ends every media link handed out)", path, MEDIA_SIGN_KEY_BYTES);
        errno = EINVAL;
        return -2;
    }
    return 0;
}

/* A new key under a temporary name, fsynced, then linked to path: link fails when another process
 * made one first, and then theirs is the key. */
static int key_create(const char *path, char *err, size_t errlen)
{
    char tmp[MEDIA_PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp) || media_mkdirs(path) != LAGOON_OK) {
        snprintf(err, errlen, "cannot create the directory of %s: %s", path, strerror(errno));
        return -1;
    }
    int fd = mkstemp(tmp); /* mode 0600 */
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    media_key k;
    randombytes_buf(k.k, sizeof(k.k));
    int ok = write(fd, k.k, sizeof(k.k)) == (ssize_t)sizeof(k.k) && fsync(fd) == 0;
    sodium_memzero(&k, sizeof(k));
    close(fd);
    if (!ok || (link(tmp, path) != 0 && errno != EEXIST)) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    unlink(tmp);
    return 0;
}

int media_key_load(const char *data_dir, media_key *key, char *err, size_t errlen)
{
    char path[MEDIA_PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/" MEDIA_DIR "/" MEDIA_SIGN_KEY_FILE, data_dir) >= (int)sizeof(path)) {
        snprintf(err, errlen, "the data directory's path is too long");
        return LAGOON_INTERNAL;
    }
    int rc = key_read(path, key, err, errlen);
    if (rc == -1 && errno == ENOENT) {
        if (key_create(path, err, errlen) != 0)
            return LAGOON_INTERNAL;
        rc = key_read(path, key, err, errlen);
    }
    if (rc == -1)
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
    return rc == 0 ? LAGOON_OK : LAGOON_INTERNAL;
}

/* ---- signatures ----------------------------------------------------------------------------- */

static void mac(const media_key *key, const char *relpath, int64_t expiry_s, uint32_t key_version,
                unsigned char out[crypto_auth_BYTES])
{
    char msg[MEDIA_RELPATH_MAX + 48];
    int n = snprintf(msg, sizeof(msg), "%s\n%" PRId64 "\n%" PRIu32, relpath, expiry_s, key_version);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
    crypto_auth(out, (const unsigned char *)msg, len, key->k);
}

void media_sign(const media_key *key, const char *relpath, int64_t expiry_s, uint32_t key_version,
                char sig[MEDIA_SIGN_SIG_MAX])
{
    unsigned char m[crypto_auth_BYTES];
    mac(key, relpath, expiry_s, key_version, m);
    sodium_bin2base64(sig, MEDIA_SIGN_SIG_MAX, m, sizeof(m), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

int media_sign_check(const media_key *key, const char *relpath, int64_t expiry_s, uint32_t key_version,
                     const char *sig)
{
    unsigned char got[crypto_auth_BYTES];
    size_t n = 0;
    const char *end = NULL;
    size_t len = strnlen(sig, MEDIA_SIGN_SIG_MAX);
    if (len != MEDIA_SIGN_SIG_MAX - 1 ||
        sodium_base642bin(got, sizeof(got), sig, len, NULL, &n, &end, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        n != sizeof(got) || end != sig + len)
        return 0;
    unsigned char want[crypto_auth_BYTES];
    mac(key, relpath, expiry_s, key_version, want);
    return sodium_memcmp(got, want, sizeof(want)) == 0;
}

int media_url(const media_key *key, const char *base, const char *relpath, int64_t expiry_s, uint32_t key_version,
              char *out, size_t cap)
{
    char sig[MEDIA_SIGN_SIG_MAX];
    media_sign(key, relpath, expiry_s, key_version, sig);
    int n = snprintf(out, cap, "%s/media/%s?e=%" PRId64 "&k=%" PRIu32 "&s=%s", base, relpath, expiry_s, key_version,
                     sig);
    if (n < 0 || (size_t)n >= cap) {
        out[0] = '\0';
        return LAGOON_INTERNAL;
    }
    return LAGOON_OK;
}

/* ---- the process's signers ------------------------------------------------------------------
 * One entry per open app that published (lagoond has one; a test may run a few at once): an app
 * signs with its own entry when it is at hand (media_signed_url_of), and the output paths without
 * one use the newest (media_signed_url). Each app withdraws only its own entry. */

/* Apps open at once in one process with a signer: lagoond has one; tests a few. */
#define MEDIA_SIGNERS_MAX 8

typedef struct media_signer {
    const app *a; /* NULL: a free slot */
    media_key key;
    uint64_t order; /* publication order: the newest signs for paths without an app */
} media_signer;

static struct {
    pthread_mutex_t mu;
    media_signer s[MEDIA_SIGNERS_MAX];
    uint64_t published;
} signers = {.mu = PTHREAD_MUTEX_INITIALIZER};

int media_signer_publish(const app *a, const media_key *key)
{
    int st = LAGOON_RESOURCE_EXHAUSTED;
    pthread_mutex_lock(&signers.mu);
    media_signer *free_slot = NULL, *own = NULL;
    for (size_t i = 0; i < MEDIA_SIGNERS_MAX; i++) {
        if (signers.s[i].a == a)
            own = &signers.s[i];
        else if (signers.s[i].a == NULL && free_slot == NULL)
            free_slot = &signers.s[i];
    }
    media_signer *e = own ? own : free_slot;
    if (e != NULL) {
        e->a = a;
        e->key = *key;
        e->order = ++signers.published;
        st = LAGOON_OK;
    }
    pthread_mutex_unlock(&signers.mu);
    return st;
}

void media_signer_withdraw(const app *a)
{
    pthread_mutex_lock(&signers.mu);
    for (size_t i = 0; i < MEDIA_SIGNERS_MAX; i++) {
        if (signers.s[i].a == a) {
            signers.s[i].a = NULL;
            sodium_memzero(&signers.s[i].key, sizeof(signers.s[i].key));
        }
    }
    pthread_mutex_unlock(&signers.mu);
}

/* The default lifetime of a signed URL (app_config.media_url_ttl_s 0). */
#define MEDIA_URL_TTL_DEFAULT_S 3600

/* With signers.mu held: a's entry, or the newest when a is NULL; NULL when there is none. */
static const media_signer *signer_of(const app *a)
{
    const media_signer *best = NULL;
    for (size_t i = 0; i < MEDIA_SIGNERS_MAX; i++) {
        const media_signer *e = &signers.s[i];
        if (e->a != NULL && (a == NULL ? best == NULL || e->order > best->order : e->a == a))
            best = e;
    }
    return best;
}

int media_signed_url_of(const app *a, const char *relpath, uint32_t key_version, char *out, size_t cap,
                        int64_t *expires_ms)
{
    int st = LAGOON_FAILED_PRECONDITION;
    out[0] = '\0';
    pthread_mutex_lock(&signers.mu);
    const media_signer *e = signer_of(a);
    if (e != NULL && e->a->cfg.media_url_base[0] != '\0') {
        uint32_t ttl = e->a->cfg.media_url_ttl_s ? e->a->cfg.media_url_ttl_s : MEDIA_URL_TTL_DEFAULT_S;
        int64_t expiry_s = app_now(e->a) / 1000 + ttl;
        st = media_url(&e->key, e->a->cfg.media_url_base, relpath, expiry_s, key_version, out, cap);
        if (expires_ms)
            *expires_ms = expiry_s * 1000;
    }
    pthread_mutex_unlock(&signers.mu);
    return st;
}

int media_signed_url(const char *relpath, uint32_t key_version, char *out, size_t cap, int64_t *expires_ms)
{
    return media_signed_url_of(NULL, relpath, key_version, out, cap, expires_ms);
}

void media_sign_marker(char *url, size_t cap)
{
    size_t ml = sizeof(MEDIA_MARKER) - 1;
    if (strncmp(url, MEDIA_MARKER, ml) != 0)
        return;
    media_ref ref;
    char rel[MEDIA_RELPATH_MAX + 1];
    /* Only a profile image: a video's files are handed out by Videos/GetPlayback, with its key
     * version. */
    if (media_relpath_parse(url + ml, strnlen(url + ml, cap - ml), &ref) != 0 || ref.kind != MEDIA_KIND_PROFILE ||
        media_ref_relpath(&ref, rel, sizeof(rel)) != LAGOON_OK) {
        url[0] = '\0';
        return;
    }
    char out[MEDIA_URL_MAX];
    if (media_signed_url(rel, 0, out, sizeof(out), NULL) != LAGOON_OK) {
        url[0] = '\0';
        return;
    }
    app_copy_str(url, cap, out);
}
