/* media_sign: signed media URLs (what the media HTTP listener serves, handlers/tools/media_http.h).
 *
 *   {media_url_base}/media/{relpath}?e={expiry, unix s}&k={key version}&s={signature}
 *
 * relpath is one of the forms media_video_relpath / media_profile_relpath produce
 * (media_files.h) and nothing else (media_relpath_parse). The signature is libsodium's
 * crypto_auth (HMAC-SHA-512-256) over "relpath\nexpiry\nkey_version" with the key in
 * <data>/media/signing.key (MEDIA_SIGN_KEY_FILE: 32 random bytes, created 0600 at the first start),
 * written in base64url without padding (43 characters). A URL names its key version so that
 * bumping a video's key_version (videos.c: made private, unshared, deleted) ends every link
 * handed out before at once, where an expiry alone would let them run to their end. A profile
 * image's key version is always 0: it is as public as the profile that shows it. */
#ifndef LAGOON_MEDIA_SIGN_H
#define LAGOON_MEDIA_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include "app.h"

#define MEDIA_SIGN_KEY_FILE "signing.key"
#define MEDIA_SIGN_KEY_BYTES crypto_auth_KEYBYTES
/* The signature in a URL: base64url of crypto_auth_BYTES (32) without padding, and the NUL. */
#define MEDIA_SIGN_SIG_MAX 44
/* The longest relpath media_relpath_parse accepts: "profile-images/" or "videos/{u}/{v}/" with two
 * 20-digit ids and the longest file name. */
#define MEDIA_RELPATH_MAX 64
/* A signed URL: the base (APP_MEDIA_URL_BASE_MAX), "/media/", the relpath, the query. Fits the
 * 512-byte profile_image_url and the 2048-byte thumbnail_url of the rows and responses. */
#define MEDIA_URL_MAX (APP_MEDIA_URL_BASE_MAX + 7 + MEDIA_RELPATH_MAX + 96)
/* The profile_image_url marker processing writes ("media:profile-images/{u}/profile.jpg"). */
#define MEDIA_MARKER "media:"

/* ---- relative paths --------------------------------------------------------------------- */

enum media_kind { MEDIA_KIND_VIDEO = 1, MEDIA_KIND_PROFILE = 2 };

/* A file a URL may name: whose it is and which of its files (name is one of the MEDIA_* names of
 * media_files.h: a static string). */
typedef struct media_ref {
    enum media_kind kind;
    uint64_t user_id;
    uint64_t video_id;  /* MEDIA_KIND_VIDEO only */
    const char *name;
    uint32_t file_bit;  /* the name's MEDIA_FILE_* bit (video files), 0 for a profile image */
} media_ref;

/* Parses path[0..len) (not NUL-terminated, never percent-decoded) as exactly a relpath of
 * media_video_relpath / media_profile_relpath: "videos/U/V/NAME" (NAME original, thumbnail.jpg,
 * sd.mp4, hd.mp4) or "profile-images/U/NAME" (original, profile.jpg, thumbnail.jpg), U and V
 * decimal without leading zeros, not 0, below 2^64. 0 with *out filled, -1 for anything else.
 * Pure: allocates nothing, reads no byte past len. */
int media_relpath_parse(const char *path, size_t len, media_ref *out);
/* The relpath of ref into buf (MEDIA_RELPATH_MAX): what the signature covers. LAGOON_OK or
 * LAGOON_INTERNAL. */
int media_ref_relpath(const media_ref *ref, char *buf, size_t cap);

/* ---- the key and signatures -------------------------------------------------------------- */

typedef struct media_key {
    unsigned char k[MEDIA_SIGN_KEY_BYTES];
} media_key;

/* Reads <data_dir>/media/signing.key into *key; when the file is absent, creates it first (random
 * bytes into a temporary file of mode 0600, fsynced, then link()ed to the name, so that two
 * processes starting at once end up with one key). A file of the wrong size is an error, never
 * replaced (that would end every link handed out). LAGOON_OK, or LAGOON_INTERNAL with err. */
int media_key_load(const char *data_dir, media_key *key, char *err, size_t errlen);

/* The signature of (relpath, expiry_s, key_version) into sig (MEDIA_SIGN_SIG_MAX). */
void media_sign(const media_key *key, const char *relpath, int64_t expiry_s, uint32_t key_version,
                char sig[MEDIA_SIGN_SIG_MAX]);
/* 1 if sig (NUL-terminated, from a URL) is the signature of the three, else 0 (constant time). */
int media_sign_check(const media_key *key, const char *relpath, int64_t expiry_s, uint32_t key_version,
                     const char *sig);

/* The whole URL of relpath into out (MEDIA_URL_MAX), valid until expiry_s: base "/media/" relpath
 * "?e=..&k=..&s=..". LAGOON_OK, or LAGOON_INTERNAL when it does not fit. */
int media_url(const media_key *key, const char *base, const char *relpath, int64_t expiry_s, uint32_t key_version,
              char *out, size_t cap);

/* ---- the process's signers: for output paths that have no app at hand --------------------
 * A profile is made into its wire form by account_public / account_profile, which see only the
 * row; they turn the "media:" marker into a URL with a signer the Videos module published at its
 * start (its key, cfg.media_url_base / media_url_ttl_s, app_now for the expiry). Each open app
 * has its own entry (up to MEDIA_SIGNERS_MAX); a path with its app at hand (Videos/GetPlayback)
 * signs with that app's, the others with the newest app's: only a process running several apps
 * at once (tests) can see another app's key there. */

/* Publishes a's signer (the key is copied), replacing a's earlier one. LAGOON_OK, or
 * LAGOON_RESOURCE_EXHAUSTED when MEDIA_SIGNERS_MAX apps have one already. */
int media_signer_publish(const app *a, const media_key *key);
/* Withdraws a's signer (none: nothing). Before a is freed. */
void media_signer_withdraw(const app *a);
/* When url holds a marker ("media:" and a profile image's relpath), replaces it in place (cap bytes) by a signed URL
 * with key version 0 (profile images), or by "" when nothing is published, no base URL is
 * configured or the relpath is not one. Anything else is left alone. */
void media_sign_marker(char *url, size_t cap);
/* The signer of a's URL of relpath with key_version into out (a NULL: the newest signer's), and
 * its expiry (ms since the epoch) into *expires_ms (may be NULL). LAGOON_OK, or
 * LAGOON_FAILED_PRECONDITION when there is no such signer or no base URL is configured (out is
 * then ""). */
int media_signed_url_of(const app *a, const char *relpath, uint32_t key_version, char *out, size_t cap,
                        int64_t *expires_ms);
int media_signed_url(const char *relpath, uint32_t key_version, char *out, size_t cap, int64_t *expires_ms);

#endif
