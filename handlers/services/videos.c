/* Videos service: a video's metadata and where it plays from, who may see it (owner, shares,
 * public), the lists, the word index for search, and view counting.
 *
 * Access is one policy (video_policy): the owner and administrators change a video; they, the
 * users it is shared with and, for a public video, every signed-in user read it. Everyone else
 * is told there is no such video. Every call reads the rows it decides on (no caches), so a
 * removed share or a video made private takes effect at the next call. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "comments.h"
#include "events.h"
#include "lagoon_handlers.h"
#include "log.h"
#include "media_files.h"
#include "media_sign.h"
#include "paging.h"
#include "teaching.h"
#include "videos.h"

/* The longest word prefix the search index keeps, in bytes (VideoWord.prefix's max_length in
 * videos.options). A query word longer than this is looked up by its first VIDEOS_PREFIX_MAX
 * bytes (cut on a UTF-8 character boundary) and then checked whole against the video. */
#define VIDEOS_PREFIX_MAX 32

/* ---- access ------------------------------------------------------------------------------------ */

/* The SHARED relation: a public video is shared with every signed-in user; a private one with
 * the users of its VideoShare rows (read now, at every call). */
static int shared_with_caller(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    const lagoon_v1_Video *v = res;
    *holds = 0;
    if (who->user_id == 0)
        return LAGOON_OK;
    if (v->is_public) {
        *holds = 1;
        return LAGOON_OK;
    }
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, v->id);
    store_key_u64(&k, who->user_id);
    int st = store_get_by(t, &lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, &k, NULL, NULL, err);
    *holds = st == LAGOON_OK;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

static const app_policy video_policy = {
    .grants = {[APP_READ] = APP_REL_OWNER | APP_REL_ADMIN | APP_REL_SHARED,
               [APP_CHANGE] = APP_REL_OWNER | APP_REL_ADMIN},
    .resolve = {[APP_REL_SHARED_BIT] = shared_with_caller},
    .not_found = "no such video",
    .denied = {[APP_CHANGE] = "only the video's owner can change it"},
};

/* Reads video id into v when who may do action to it; else the refusal: NOT_FOUND naming
 * field (for a missing video too), or PERMISSION_DENIED for a reader who may not change it. */
static int video_load(store_txn *t, const rpc_caller *who, uint64_t id, enum app_action action, const char *field,
                      lagoon_v1_Video *v, store_error *err)
{
    int st = store_get(t, &lagoon_table_videos, id, v, err);
    if (st == LAGOON_OK)
        st = app_check(t, who, &video_policy, action, v, v->owner_id, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, field, "%s", video_policy.not_found);
    return st;
}

static int may_change(const rpc_caller *who, const lagoon_v1_Video *v)
{
    return who->user_id == v->owner_id || who->role == lagoon_v1_Role_ADMIN;
}

/* The signed URL of v's file name (media_files.h) with v's key version into out, and its expiry
 * (may be NULL), signed by a's signer (NULL: the process's newest, media_sign.h). LAGOON_OK, or
 * FAILED_PRECONDITION without a media listener (out ""). */
static int video_file_url(const app *a, const lagoon_v1_Video *v, const char *name, char *out, size_t cap,
                          int64_t *expires_ms)
{
    char rel[MEDIA_RELPATH_MAX + 1];
    int st = media_video_relpath(v->owner_id, v->id, name, rel, sizeof(rel));
    return st == LAGOON_OK ? media_signed_url_of(a, rel, v->key_version, out, cap, expires_ms) : st;
}

/* An uploaded video's thumbnail as a signed URL (one HMAC), so that lists can show it; its
 * renditions come from Videos/GetPlayback. Without a media listener it is left "". */
static void thumbnail_shown(const app *a, lagoon_v1_Video *v)
{
    if (v->source != lagoon_v1_Video_Source_UPLOAD)
        return;
    v->thumbnail_url[0] = '\0';
    if ((v->media_files & MEDIA_FILE_THUMBNAIL) != 0)
        (void)video_file_url(a, v, MEDIA_THUMBNAIL, v->thumbnail_url, sizeof(v->thumbnail_url), NULL);
}

/* v as the caller sees it: how many users it is shared with is its owner's business. */
static void video_shown(lagoon_v1_Video *v, const rpc_caller *who)
{
    if (!may_change(who, v))
        v->share_count = 0;
    thumbnail_shown(NULL, v); /* (the lists have no app at hand) */
}

int videos_readable(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, lagoon_v1_Video *v,
                    int *owner, store_error *err)
{
    lagoon_v1_Video *row = v ? v : malloc(sizeof(*row)); /* ~37 KB: not for a loop thread's stack */
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = video_load(t, who, id, APP_READ, field, row, err);
    if (owner)
        *owner = st == LAGOON_OK && may_change(who, row);
    if (row != v)
        free(row);
    return st;
}

int videos_public_key(const void *row, store_key *k)
{
    const lagoon_v1_Video *v = row;
    if (!v->is_public)
        return 0;
    store_key_i64(k, v->created_at);
    return 1;
}

/* The module's start: the media signing key (created at the first start), published for the
 * output paths that sign URLs without an app at hand (media_sign.h). */
static int videos_start(app *a, void **state, rpc_error *err)
{
    *state = NULL;
    media_key key;
    if (media_key_load(a->data_dir, &key, err->message, sizeof(err->message)) != LAGOON_OK)
        return RPC_ERR;
    /* Deleted videos' files whose removal an exit cut short (media_discard_video). */
    if (media_trash_sweep(a) != LAGOON_OK)
        log_msg(LOG_WARN, "videos: cannot empty %s/" MEDIA_DIR "/" MEDIA_TRASH_DIR ": %s", a->data_dir, strerror(errno));
    int st = media_signer_publish(a, &key);
    sodium_memzero(&key, sizeof(key));
    if (st != LAGOON_OK) {
        snprintf(err->message, sizeof(err->message), "too many apps open in this process to sign media URLs");
        return RPC_ERR;
    }
    return RPC_OK;
}

static void videos_stop(app *a, void *state)
{
    (void)state;
    media_signer_withdraw(a);
}

const app_module videos_module = {.name = "videos", .start = videos_start, .stop = videos_stop};

/* ---- the word index ----------------------------------------------------------------------------- */

/* Words are runs of ASCII letters and digits and of bytes >= 0x80 (so a UTF-8 letter, accented
 * or not, is part of a word, compared as its bytes); every other byte separates them. */
static int word_byte(unsigned char c)
{
    return c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static unsigned char fold(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* The next word of s[0..n) from *pos: its start and length, or 0 at the end. */
static int next_word(const char *s, size_t n, size_t *pos, const char **word, size_t *len)
{
    size_t i = *pos;
    while (i < n && !word_byte((unsigned char)s[i]))
        i++;
    size_t b = i;
    while (i < n && word_byte((unsigned char)s[i]))
        i++;
    *pos = i;
    *word = s + b;
    *len = i - b;
    return i > b;
}

/* Whether a prefix of len bytes of word ends on a UTF-8 character boundary. */
static int char_boundary(const char *word, size_t wlen, size_t len)
{
    return len == wlen || ((unsigned char)word[len] & 0xC0) != 0x80;
}

/* The text fields whose words are searched. */
static void searched_fields(const lagoon_v1_Video *v, const char *f[3])
{
    f[0] = v->title;
    f[1] = v->piece_name;
    f[2] = v->composer;
}

/* One prefix of a word of the video, pointing into the video's folded text. */
typedef struct prefix_ref {
    const char *p;
    uint8_t len;
} prefix_ref;

/* A video's distinct word prefixes. Their number is bounded by the bytes of the three fields
 * (each byte ends at most one prefix of its word): at most the sum of the fields' bounds. */
typedef struct prefix_set {
    char *text; /* the three fields, ASCII-lower-cased, NUL between them */
    prefix_ref *refs;
    size_t n;
} prefix_set;

static int prefix_cmp(const void *a, const void *b)
{
    const prefix_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (int)x->len - (int)y->len;
}

static void prefix_set_free(prefix_set *s)
{
    free(s->text);
    free(s->refs);
    s->text = NULL;
    s->refs = NULL;
    s->n = 0;
}

/* Fills s with v's distinct prefixes, sorted. LAGOON_OK or RESOURCE_EXHAUSTED. */
static int prefix_set_of(const lagoon_v1_Video *v, prefix_set *s, store_error *err)
{
    const char *f[3];
    searched_fields(v, f);
    size_t lens[3], total = 0;
    for (int i = 0; i < 3; i++)
        total += lens[i] = strlen(f[i]);
    s->n = 0;
    s->text = malloc(total + 3);
    s->refs = malloc((total + 1) * sizeof(*s->refs));
    if (s->text == NULL || s->refs == NULL) {
        prefix_set_free(s);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    char *o = s->text;
    for (int i = 0; i < 3; i++) {
        for (size_t j = 0; j < lens[i]; j++)
            o[j] = (char)fold((unsigned char)f[i][j]);
        o[lens[i]] = '\0';
        size_t pos = 0, wlen;
        const char *w;
        while (next_word(o, lens[i], &pos, &w, &wlen))
            for (size_t len = 1; len <= wlen && len <= VIDEOS_PREFIX_MAX; len++)
                if (char_boundary(w, wlen, len))
                    s->refs[s->n++] = (prefix_ref){w, (uint8_t)len};
        o += lens[i] + 1;
    }
    qsort(s->refs, s->n, sizeof(*s->refs), prefix_cmp);
    size_t u = 0;
    for (size_t i = 0; i < s->n; i++)
        if (u == 0 || prefix_cmp(&s->refs[u - 1], &s->refs[i]) != 0)
            s->refs[u++] = s->refs[i];
    s->n = u;
    return LAGOON_OK;
}

/* Inserts v's VideoWord rows (one per distinct prefix), in the caller's write. */
static int words_insert(store_txn *t, const lagoon_v1_Video *v, store_error *err)
{
    prefix_set s;
    int st = prefix_set_of(v, &s, err);
    for (size_t i = 0; i < s.n && st == LAGOON_OK; i++) {
        lagoon_v1_VideoWord w = lagoon_v1_VideoWord_init_zero;
        w.video_id = v->id;
        w.created_at = v->created_at;
        memcpy(w.prefix, s.refs[i].p, s.refs[i].len);
        w.prefix[s.refs[i].len] = '\0';
        st = store_insert(t, &lagoon_table_video_words, &w, NULL, err);
    }
    prefix_set_free(&s);
    return st;
}

/* ---- Create, Get --------------------------------------------------------------------------------- */

static int create_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_CreateVideoRequest *req = in->req;
    lagoon_v1_Video *v = resp;
    v->owner_id = in->who.user_id;
    APP_STRCPY(v->title, req->title);
    APP_STRCPY(v->description, req->description);
    APP_STRCPY(v->url, req->url);
    APP_STRCPY(v->thumbnail_url, req->thumbnail_url);
    v->duration_seconds = req->duration_seconds;
    APP_STRCPY(v->piece_name, req->piece_name);
    APP_STRCPY(v->composer, req->composer);
    APP_STRCPY(v->practice_goals, req->practice_goals);
    v->is_public = req->is_public;
    /* An external URL plays at once; an upload (Uploads/Create) starts UPLOADING. */
    v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
    v->status = lagoon_v1_Video_Status_READY;
    v->created_at = v->updated_at = in->now;
    int st = videos_insert(t, v, err);
    if (st == LAGOON_OK)
        app_result_shows(in, v->id); /* a retried Create answers this video while it lasts */
    return st;
}

int videos_insert(store_txn *t, lagoon_v1_Video *v, store_error *err)
{
    int st = store_insert(t, &lagoon_table_videos, v, NULL, err);
    return st == LAGOON_OK ? words_insert(t, v, err) : st;
}

int handle_Videos_Create(rpc_call *call, const lagoon_v1_CreateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req; /* (its rules in videos.proto checked it) */
    (void)resp;
    return app_write_call(call, create_write, NULL);
}

/* Video id into v, in a read of its own, when the caller may read it; else the call's error. */
static int video_read(rpc_call *call, uint64_t id, lagoon_v1_Video *v)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = video_load(t, rpc_call_caller(call), id, APP_READ, "video_id", v, &err);
    store_read_end(t);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

int handle_Videos_Get(rpc_call *call, const lagoon_v1_GetVideoRequest *req, lagoon_v1_Video *resp)
{
    int st = video_read(call, req->video_id, resp);
    if (st == LAGOON_OK)
        video_shown(resp, rpc_call_caller(call));
    return st;
}

/* ---- Update, Delete -------------------------------------------------------------------------------- */

/* The most VideoWord rows a video has: each byte of its searched fields ends at most one prefix
 * (prefix_set_of). Bounds the loops that delete them. */
#define VIDEOS_WORDS_MAX                                                                                   \
    (sizeof(((lagoon_v1_Video *)0)->title) + sizeof(((lagoon_v1_Video *)0)->piece_name) +                 \
     sizeof(((lagoon_v1_Video *)0)->composer))

/* A VideoWord row of the video as stored: its id and prefix. */
typedef struct stored_word {
    uint64_t id;
    char prefix[VIDEOS_PREFIX_MAX + 1];
} stored_word;

typedef struct stored_words {
    stored_word *w;
    size_t n;
} stored_words;

static int collect_word(void *arg, uint64_t id, const void *row)
{
    stored_words *sw = arg;
    if (sw->n >= VIDEOS_WORDS_MAX) /* NEVER: prefix_set_of writes no more */
        return LAGOON_OK;
    sw->w[sw->n].id = id;
    APP_STRCPY(sw->w[sw->n].prefix, ((const lagoon_v1_VideoWord *)row)->prefix);
    sw->n++;
    return LAGOON_OK;
}

static int stored_cmp(const void *a, const void *b)
{
    return strcmp(((const stored_word *)a)->prefix, ((const stored_word *)b)->prefix);
}

/* Video id's VideoWord rows, sorted by prefix (a page of rows at a time). */
static int words_stored(store_txn *t, uint64_t id, stored_words *sw, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, id);
    store_query q = {.table = &lagoon_table_video_words, .index = lagoon_index_video_words_by_video,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    char token[STORE_PAGE_TOKEN_MAX + 1];
    int st = LAGOON_OK;
    for (size_t round = 0; round <= VIDEOS_WORDS_MAX / STORE_PAGE_SIZE_MAX + 1; round++) {
        st = store_scan(t, &q, collect_word, sw, &page, err);
        if (st != LAGOON_OK || page.next_page_token[0] == '\0')
            break;
        memcpy(token, page.next_page_token, sizeof(token));
        q.page_token = token;
    }
    qsort(sw->w, sw->n, sizeof(*sw->w), stored_cmp);
    return st;
}

/* Whether the sorted set s holds prefix p. */
static int set_has(const prefix_set *s, const char *p)
{
    prefix_ref key = {p, (uint8_t)strlen(p)};
    if (s->n == 0)
        return 0;
    return bsearch(&key, s->refs, s->n, sizeof(*s->refs), prefix_cmp) != NULL;
}

/* After the searched text of v changed: deletes the rows of prefixes it no longer has and
 * inserts those it gains, so that an edit of one word writes that word's rows only. */
static int words_replace(store_txn *t, const lagoon_v1_Video *v, store_error *err)
{
    stored_words sw = {malloc(VIDEOS_WORDS_MAX * sizeof(stored_word)), 0};
    prefix_set s;
    if (sw.w == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = words_stored(t, v->id, &sw, err);
    if (st == LAGOON_OK)
        st = prefix_set_of(v, &s, err);
    if (st != LAGOON_OK) {
        free(sw.w);
        return st;
    }
    for (size_t i = 0; i < sw.n && st == LAGOON_OK; i++)
        if (!set_has(&s, sw.w[i].prefix))
            st = store_delete(t, &lagoon_table_video_words, sw.w[i].id, err);
    for (size_t i = 0; i < s.n && st == LAGOON_OK; i++) {
        stored_word key = {0, ""};
        memcpy(key.prefix, s.refs[i].p, s.refs[i].len);
        key.prefix[s.refs[i].len] = '\0';
        if (bsearch(&key, sw.w, sw.n, sizeof(*sw.w), stored_cmp) != NULL)
            continue;
        lagoon_v1_VideoWord w = {.video_id = v->id, .created_at = v->created_at};
        APP_STRCPY(w.prefix, key.prefix);
        st = store_insert(t, &lagoon_table_video_words, &w, NULL, err);
    }
    prefix_set_free(&s);
    free(sw.w);
    return st;
}

/* A present field that differs from the stored one. */
static int str_changes(bool has, const char *to, const char *from)
{
    return has && strcmp(to, from) != 0;
}

/* The video is read into the response and stored from there. */
static int update_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_UpdateVideoRequest *req = in->req;
    lagoon_v1_Video *v = resp;
    int st = video_load(t, &in->who, req->video_id, APP_CHANGE, "video_id", v, err);
    if (st != LAGOON_OK)
        return st;
    int words = str_changes(req->has_title, req->title, v->title) ||
                str_changes(req->has_piece_name, req->piece_name, v->piece_name) ||
                str_changes(req->has_composer, req->composer, v->composer);
    if (req->has_title)
        APP_STRCPY(v->title, req->title);
    if (req->has_description)
        APP_STRCPY(v->description, req->description);
    if (req->has_url)
        APP_STRCPY(v->url, req->url);
    if (req->has_thumbnail_url)
        APP_STRCPY(v->thumbnail_url, req->thumbnail_url);
    if (req->has_duration_seconds)
        v->duration_seconds = req->duration_seconds;
    if (req->has_piece_name)
        APP_STRCPY(v->piece_name, req->piece_name);
    if (req->has_composer)
        APP_STRCPY(v->composer, req->composer);
    if (req->has_practice_goals)
        APP_STRCPY(v->practice_goals, req->practice_goals);
    int narrowed = req->has_is_public && v->is_public && !req->is_public;
    if (req->has_is_public)
        v->is_public = req->is_public;
    if (narrowed) /* every media link handed out stops: readers who still may ask again */
        v->key_version++;
    v->updated_at = in->now;
    st = store_update(t, &lagoon_table_videos, v, err);
    /* Made private: the followers of its comments who no longer read it stop following. */
    if (st == LAGOON_OK && narrowed)
        st = comments_video_readers_changed(t, in->a, v->id, err);
    /* The words move only when the searched text does: most edits write no VideoWord row. */
    if (st == LAGOON_OK && words)
        st = words_replace(t, v, err);
    /* (The caller may change it, so share_count stays.) No signed URL in the response: a retry
     * with the call's key gets this response while the video lasts (Delete drops it), possibly
     * past a URL's expiry; update_after signs the thumbnail at each answer instead. */
    if (v->source == lagoon_v1_Video_Source_UPLOAD)
        v->thumbnail_url[0] = '\0';
    app_result_shows(in, v->id);
    return st;
}

/* The thumbnail's URL, signed now, for the first answer and a retry's kept one alike (with the
 * key version the response holds: revoked since, it answers 403 and the client asks again). */
static int update_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)call;
    if (status == LAGOON_OK)
        thumbnail_shown(in->a, resp);
    return status;
}

int handle_Videos_Update(rpc_call *call, const lagoon_v1_UpdateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)resp;
    /* The url rule accepts "" (an optional address); a video always has one. */
    if (req->has_url && req->url[0] == '\0')
        return rpc_call_violation(call, "url", "must not be empty");
    return app_write_call_then(call, update_write, NULL, update_after);
}

/* The video's topic (its comments' events: Comments/Follow) outlives no video. */
static int video_topic_forget(store_txn *t, const app *a, uint64_t id, store_error *err)
{
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_VIDEO, id};
    return events_topic_forget(t, a, &tp, err);
}

/* Videos/Delete's arguments: where the write leaves the deleted video's owner, for the files'
 * removal after the commit (a replay writes the same value). */
typedef struct delete_args {
    uint64_t *owner; /* the call's memory (rpc_call_alloc) */
} delete_args;

/* Deleting the row deletes what refers to it (the cascades declared in the IDL: shares, views,
 * words, comments), in this transaction; its files go after the commit (delete_after). */
static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_DeleteVideoRequest *req = in->req;
    const delete_args *args = in->args;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = video_load(t, &in->who, req->video_id, APP_CHANGE, "video_id", v, err);
    if (st == LAGOON_OK) /* before the cascade takes its progress records: out of the summaries */
        st = teaching_video_deleting(t, in->now, v->id, err);
    if (st == LAGOON_OK) /* before the cascade takes the comments: their kept responses go too */
        st = comments_video_deleting(t, v->id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_videos, v->id, err);
    if (st == LAGOON_OK) /* no one reads it now: every follower of its comments stops following */
        st = comments_video_readers_changed(t, in->a, v->id, err);
    if (st == LAGOON_OK) /* and its topic's log goes with it */
        st = video_topic_forget(t, in->a, v->id, err);
    if (st == LAGOON_OK) /* a retried Update must not bring it back (app_result_shows) */
        st = app_forget_results(t, &lagoon_method_Videos_Update, v->id, err);
    if (st == LAGOON_OK)
        st = app_forget_results(t, &lagoon_method_Videos_Create, v->id, err);
    if (st == LAGOON_OK)
        *args->owner = v->owner_id;
    free(v);
    return st;
}

/* The files go once the row's deletion is durable: a crash before leaves files without a row
 * (lagoon-admin verify reports them), never a row without its files. A media job running on
 * the video meanwhile finds the row gone and drops its outputs (media.c). */
static int delete_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)call;
    (void)resp;
    const delete_args *args = in->args;
    const lagoon_v1_DeleteVideoRequest *req = in->req;
    if (status == LAGOON_OK && *args->owner != 0 &&
        media_discard_video(in->a, *args->owner, req->video_id) != LAGOON_OK)
        log_msg(LOG_WARN, "videos: cannot remove the files of deleted video %llu: %s",
                (unsigned long long)req->video_id, strerror(errno));
    return status;
}

static int video_going(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    int st = comments_video_going(t, arg, id, err);
    return st == LAGOON_OK ? video_topic_forget(t, arg, id, err) : st;
}

/* A video shared with an account being deleted: its share goes by the cascade, and the media
 * links the account was handed go now (as Unshare's do). */
static int reader_going(store_txn *t, uint64_t share_id, void *arg, store_error *err)
{
    (void)arg;
    lagoon_v1_VideoShare sh;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_video_shares, share_id, &sh, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_videos, sh.video_id, v, err);
    if (st == LAGOON_OK) {
        v->key_version++;
        st = store_update(t, &lagoon_table_videos, v, err);
    }
    free(v);
    return st;
}

int videos_user_deleting(store_txn *t, const app *a, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = &lagoon_table_videos, .index = lagoon_index_videos_by_owner_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    int st = app_each_id(t, &q, video_going, (void *)a, err);
    return st == LAGOON_OK ? videos_reader_revoke(t, user_id, err) : st;
}

int videos_reader_revoke(store_txn *t, uint64_t user_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query shared = {.table = &lagoon_table_video_shares, .index = lagoon_index_video_shares_by_user_time,
                          .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &shared, reader_going, NULL, err);
}

int handle_Videos_Delete(rpc_call *call, const lagoon_v1_DeleteVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req; /* (its rules in videos.proto checked it) */
    (void)resp;
    delete_args *args = app_write_args(call, sizeof(*args));
    uint64_t *owner = rpc_call_alloc(call, sizeof(*owner), NULL);
    if (args == NULL || owner == NULL)
        return app_out_of_memory(call);
    *owner = 0; /* a retry answered from the kept response removes nothing */
    args->owner = owner;
    return app_write_call_then(call, delete_write, args, delete_after);
}

/* ---- lists ------------------------------------------------------------------------------------------ */

/* What a list's row functions need: the read they run in, the caller, and the first error of a
 * lookup they made (a row function can only keep or drop its row). */
typedef struct list_ctx {
    store_txn *t;
    const rpc_caller *who;
    int st;            /* LAGOON_OK, or the first lookup's failure */
    store_error err;
    lagoon_v1_User *user; /* ListShares: a row to read users into */
} list_ctx;

static int add_video(void *arg, void *item, const void *row)
{
    list_ctx *c = arg;
    memcpy(item, row, sizeof(lagoon_v1_Video));
    video_shown(item, c->who);
    return 1;
}

/* ListSharedWithMe: a share row becomes its video. */
static int add_shared(void *arg, void *item, const void *row)
{
    list_ctx *c = arg;
    const lagoon_v1_VideoShare *sh = row;
    if (c->st != LAGOON_OK)
        return 0;
    int st = store_get(c->t, &lagoon_table_videos, sh->video_id, item, &c->err);
    if (st != LAGOON_OK) {
        c->st = st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* (a share goes with its video) */
        return 0;
    }
    video_shown(item, c->who);
    return 1;
}

/* The paging fields of a list request: page_size | page_token, or page with per_page. */
static paging_list videos_paging(uint32_t page_size, const char *token, uint32_t page, uint32_t per_page)
{
    paging_list l = {.size = per_page ? per_page : page_size,
                     .size_field = per_page ? "per_page" : "page_size",
                     .token = token,
                     .number = page,
                     .resp = &lagoon_v1_ListVideosResponse_info,
                     .items_tag = lagoon_v1_ListVideosResponse_videos_tag,
                     .item_size = sizeof(lagoon_v1_Video)};
    return l;
}

/* Before the scan, in its read: ListByUser's user must exist (and be active, unless the caller
 * administers) — the same answer as Users/Get. */
typedef int (*list_pre_fn)(list_ctx *c, uint64_t user_id);

static int user_visible(list_ctx *c, uint64_t user_id)
{
    int st = store_get(c->t, &lagoon_table_users, user_id, c->user, &c->err);
    if (st == LAGOON_OK && !c->user->active && c->who->role != lagoon_v1_Role_ADMIN)
        st = LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND)
        return store_fail(&c->err, LAGOON_NOT_FOUND, "user_id", "no such user");
    return st;
}

/* One page of l (query and row function set) in a read of its own, into items/count/token. */
static int list_read(rpc_call *call, paging_list *l, list_ctx *c, list_pre_fn pre, uint64_t user_id)
{
    int st = paging_check(call, l);
    if (st != LAGOON_OK)
        return st;
    c->who = rpc_call_caller(call);
    c->st = LAGOON_OK;
    c->user = malloc(sizeof(*c->user));
    if (c->user == NULL)
        return app_out_of_memory(call);
    l->arg = c;
    st = store_read_begin(app_of(call)->db, &c->t, &c->err);
    if (st == LAGOON_OK) {
        if (pre)
            st = pre(c, user_id);
        if (st == LAGOON_OK)
            st = paging_scan(c->t, l, &c->err);
        if (st == LAGOON_OK && c->st != LAGOON_OK)
            st = c->st; /* c->err holds it */
        store_read_end(c->t);
    }
    free(c->user);
    c->user = NULL;
    if (st != LAGOON_OK) {
        free(l->items);
        l->items = NULL;
        l->count = 0;
        return app_store_error(call, st, &c->err);
    }
    return LAGOON_OK;
}

static int list_videos(rpc_call *call, paging_list *l, list_ctx *c, lagoon_v1_ListVideosResponse *resp,
                       list_pre_fn pre, uint64_t user_id)
{
    int st = list_read(call, l, c, pre, user_id);
    resp->videos = l->items; /* FT_POINTER: freed with the call */
    resp->videos_count = (pb_size_t)l->count;
    APP_STRCPY(resp->next_page_token, l->next_page_token);
    return st;
}

/* A query over index idx of table tab, newest first, for the keys that start with u64 id. */
static void newest_first(paging_list *l, const store_table *tab, const store_index *idx, store_key *prefix,
                         uint64_t id)
{
    store_key_reset(prefix);
    store_key_u64(prefix, id);
    l->query.table = tab;
    l->query.index = idx;
    l->query.prefix = prefix->buf;
    l->query.prefix_len = prefix->len;
    l->query.reverse = 1;
}

int handle_Videos_ListMine(rpc_call *call, const lagoon_v1_ListMyVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    paging_list l = videos_paging(req->page_size, req->page_token, req->page, req->per_page);
    store_key prefix;
    newest_first(&l, &lagoon_table_videos, lagoon_index_videos_by_owner_time, &prefix, rpc_call_caller(call)->user_id);
    l.item = add_video;
    list_ctx c = {0};
    return list_videos(call, &l, &c, resp, NULL, 0);
}

/* ListByUser for a caller who may read only some of the user's videos. Pages are built by
 * hand, as Search's are: the user's videos are read newest first in chunks of what the page
 * still needs, and those the caller may not read are passed over without being counted, so a
 * page is full unless the user's videos end or VIDEOS_LIST_SCAN_MAX were looked at (its token
 * then resumes there; the store seals tokens, so one never shows which row it stopped at). A
 * numbered page passes over the visible videos of the pages before it within the same budget:
 * deeper than that, use cursor pages. Nothing of an invisible video reaches the caller. */
#define VIDEOS_LIST_SCAN_MAX 2000

typedef struct visible_ctx {
    store_txn *t;
    const rpc_caller *who;
    lagoon_v1_Video *items; /* limit of them */
    uint32_t count, limit;
    uint64_t skip;          /* visible videos still to pass over (numbered pages) */
    int st;
    store_error err;
} visible_ctx;

static int visible_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    visible_ctx *c = arg;
    const lagoon_v1_Video *v = row;
    if (c->st != LAGOON_OK || c->count >= c->limit)
        return LAGOON_OK;
    int holds = 0;
    int st = shared_with_caller(c->t, c->who, v, &holds, &c->err);
    if (st != LAGOON_OK || !holds) {
        c->st = st;
        return LAGOON_OK;
    }
    if (c->skip > 0) {
        c->skip--;
        return LAGOON_OK;
    }
    memcpy(&c->items[c->count], v, sizeof(*v));
    video_shown(&c->items[c->count], c->who);
    c->count++;
    return LAGOON_OK;
}

static int list_visible(visible_ctx *c, uint64_t owner, const char *token, char *next, size_t next_cap)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, owner);
    store_query q = {.table = &lagoon_table_videos, .index = lagoon_index_videos_by_owner_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .reverse = 1, .page_token = token};
    store_page page;
    char resume[STORE_PAGE_TOKEN_MAX + 1] = "";
    uint32_t budget = VIDEOS_LIST_SCAN_MAX;
    next[0] = '\0';
    while (c->count < c->limit && budget > 0) {
        uint64_t want = c->limit - c->count + c->skip;
        q.page_size = (uint32_t)(want < budget ? want : budget);
        if (q.page_size > STORE_PAGE_SIZE_MAX)
            q.page_size = STORE_PAGE_SIZE_MAX;
        int st = store_scan(c->t, &q, visible_row, c, &page, &c->err);
        if (st == LAGOON_OK)
            st = c->st;
        if (st != LAGOON_OK)
            return st;
        budget -= page.count < budget ? page.count : budget;
        APP_STRCPY(resume, page.next_page_token);
        if (resume[0] == '\0')
            return LAGOON_OK; /* the user's videos end */
        q.page_token = resume;
    }
    app_copy_str(next, next_cap, resume);
    return LAGOON_OK;
}

int handle_Videos_ListByUser(rpc_call *call, const lagoon_v1_ListUserVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    paging_list l = videos_paging(req->page_size, req->page_token, req->page, req->per_page);
    if (who->user_id == req->user_id || who->role == lagoon_v1_Role_ADMIN) {
        /* Every video of the user: the paging helper, cursor and numbered pages alike. */
        store_key prefix;
        newest_first(&l, &lagoon_table_videos, lagoon_index_videos_by_owner_time, &prefix, req->user_id);
        l.item = add_video;
        list_ctx c = {0};
        return list_videos(call, &l, &c, resp, user_visible, req->user_id);
    }
    int st = paging_check(call, &l);
    if (st != LAGOON_OK)
        return st;
    visible_ctx *c = rpc_call_alloc(call, sizeof(*c), NULL);
    if (c == NULL)
        return app_out_of_memory(call);
    memset(c, 0, sizeof(*c));
    c->who = who;
    c->limit = l.limit;
    c->skip = req->page > 1 ? (uint64_t)(req->page - 1) * l.limit : 0;
    c->items = calloc(c->limit, sizeof(*c->items));
    if (c->items == NULL)
        return app_out_of_memory(call);
    resp->videos = c->items; /* FT_POINTER: freed with the call */
    list_ctx uc = {.who = who, .user = malloc(sizeof(lagoon_v1_User))};
    if (uc.user == NULL)
        return app_out_of_memory(call);
    st = store_read_begin(app_of(call)->db, &c->t, &c->err);
    if (st == LAGOON_OK) {
        uc.t = c->t;
        st = user_visible(&uc, req->user_id);
        if (st != LAGOON_OK)
            c->err = uc.err;
        else
            st = list_visible(c, req->user_id, req->page ? NULL : req->page_token, resp->next_page_token,
                              req->page ? 1 : sizeof(resp->next_page_token));
        store_read_end(c->t);
    }
    free(uc.user);
    resp->videos_count = (pb_size_t)c->count;
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &c->err);
}

int handle_Videos_ListSharedWithMe(rpc_call *call, const lagoon_v1_ListSharedWithMeRequest *req,
                                   lagoon_v1_ListVideosResponse *resp)
{
    paging_list l = videos_paging(req->page_size, req->page_token, req->page, req->per_page);
    store_key prefix;
    newest_first(&l, &lagoon_table_video_shares, lagoon_index_video_shares_by_user_time, &prefix,
                 rpc_call_caller(call)->user_id);
    l.item = add_shared;
    list_ctx c = {0};
    return list_videos(call, &l, &c, resp, NULL, 0);
}

int handle_Videos_ListPublic(rpc_call *call, const lagoon_v1_ListPublicVideosRequest *req,
                             lagoon_v1_ListVideosResponse *resp)
{
    paging_list l = videos_paging(req->page_size, req->page_token, req->page, req->per_page);
    l.query.table = &lagoon_table_videos;
    l.query.index = lagoon_index_videos_public_by_time; /* only public videos have an entry */
    l.query.reverse = 1;
    l.item = add_video;
    list_ctx c = {0};
    return list_videos(call, &l, &c, resp, NULL, 0);
}

/* ---- Search ---------------------------------------------------------------------------------------- */

/* Words in a query: each one past the first is checked against every candidate. */
#define VIDEOS_QUERY_WORDS_MAX 8
/* Candidates (index rows of the query's longest word) one Search call looks at. A page holds
 * the candidates the caller may read and whose words match every query word; when this many
 * were looked at first, the page is shorter than asked (even empty) and next_page_token goes
 * on from there. Bounds the work of a call whatever the index holds. */
#define VIDEOS_SEARCH_SCAN_MAX 1000

typedef struct query_word {
    const char *p; /* into search_ctx.folded */
    size_t len;
} query_word;

/* One Search call: its words, the read, and the page being built. */
typedef struct search_ctx {
    char folded[sizeof(((lagoon_v1_SearchVideosRequest *)0)->query)];
    query_word words[VIDEOS_QUERY_WORDS_MAX];
    size_t nwords;
    size_t longest;          /* the word whose index range is scanned */
    store_txn *t;
    const rpc_caller *who;
    lagoon_v1_Video *items;  /* limit of them */
    uint32_t count, limit;
    int st;                  /* the first failed lookup */
    store_error err;
} search_ctx;

/* Whether a word of s starts with the (folded) query word q. */
static int field_has_prefix(const char *s, const query_word *q)
{
    size_t n = strlen(s), pos = 0, wlen;
    const char *w;
    while (next_word(s, n, &pos, &w, &wlen)) {
        if (wlen < q->len)
            continue;
        size_t i = 0;
        while (i < q->len && fold((unsigned char)w[i]) == (unsigned char)q->p[i])
            i++;
        if (i == q->len)
            return 1;
    }
    return 0;
}

static int video_matches(const lagoon_v1_Video *v, const search_ctx *c)
{
    const char *f[3];
    searched_fields(v, f);
    for (size_t i = 0; i < c->nwords; i++)
        if (!field_has_prefix(f[0], &c->words[i]) && !field_has_prefix(f[1], &c->words[i]) &&
            !field_has_prefix(f[2], &c->words[i]))
            return 0;
    return 1;
}

/* A candidate: its video, read into the next slot of the page, kept if it matches and the
 * caller may read it. */
static int search_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    search_ctx *c = arg;
    const lagoon_v1_VideoWord *w = row;
    if (c->st != LAGOON_OK || c->count >= c->limit)
        return LAGOON_OK;
    lagoon_v1_Video *v = &c->items[c->count];
    int st = store_get(c->t, &lagoon_table_videos, w->video_id, v, &c->err);
    if (st == LAGOON_OK && video_matches(v, c)) {
        st = app_check(c->t, c->who, &video_policy, APP_READ, v, v->owner_id, &c->err);
        if (st == LAGOON_OK) {
            video_shown(v, c->who);
            c->count++;
            return LAGOON_OK;
        }
    }
    if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
        c->st = st;
    memset(v, 0, sizeof(*v)); /* the slot is reused */
    return LAGOON_OK;
}

/* The query's words, folded; INVALID_ARGUMENT on query when it has none or too many. */
static int search_words(rpc_call *call, const char *query, search_ctx *c)
{
    size_t n = strlen(query), pos = 0, wlen;
    for (size_t i = 0; i < n; i++)
        c->folded[i] = (char)fold((unsigned char)query[i]);
    c->folded[n] = '\0';
    const char *w;
    c->nwords = 0;
    while (next_word(c->folded, n, &pos, &w, &wlen)) {
        if (c->nwords == VIDEOS_QUERY_WORDS_MAX)
            return rpc_call_violation(call, "query", "at most %d words", VIDEOS_QUERY_WORDS_MAX);
        if (wlen > c->words[c->longest].len || c->nwords == 0)
            c->longest = c->nwords;
        c->words[c->nwords++] = (query_word){w, wlen};
    }
    if (c->nwords == 0)
        return rpc_call_violation(call, "query", "must contain a word (letters or digits)");
    return LAGOON_OK;
}

/* Pages by hand: the paging helper fills a page from page_size rows, and here most rows may be
 * left out. The longest word's range is scanned newest first in chunks of what the page still
 * needs, so that each chunk's token resumes right after the last row looked at, until the page
 * is full, the range ends or VIDEOS_SEARCH_SCAN_MAX rows were looked at. */
static int search_scan(search_ctx *c, const char *token, char *next, size_t next_cap)
{
    const query_word *lw = &c->words[c->longest];
    char lookup[VIDEOS_PREFIX_MAX + 1];
    size_t len = lw->len < VIDEOS_PREFIX_MAX ? lw->len : VIDEOS_PREFIX_MAX;
    while (len > 0 && !char_boundary(lw->p, lw->len, len))
        len--; /* (0 only for bytes that are not UTF-8, which the wire refuses: no row has "") */
    memcpy(lookup, lw->p, len);
    lookup[len] = '\0';
    store_key prefix;
    store_key_reset(&prefix);
    store_key_str(&prefix, lookup);
    store_query q = {.table = &lagoon_table_video_words, .index = lagoon_index_video_words_by_prefix_time,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_token = token};
    store_page page;
    char resume[STORE_PAGE_TOKEN_MAX + 1];
    uint32_t budget = VIDEOS_SEARCH_SCAN_MAX;
    next[0] = '\0';
    while (c->count < c->limit && budget > 0) {
        uint32_t want = c->limit - c->count;
        q.page_size = want < budget ? want : budget;
        int st = store_scan(c->t, &q, search_row, c, &page, &c->err);
        if (st == LAGOON_OK)
            st = c->st;
        if (st != LAGOON_OK)
            return st;
        budget -= page.count;
        APP_STRCPY(resume, page.next_page_token);
        if (resume[0] == '\0')
            return LAGOON_OK; /* the end of the range */
        q.page_token = resume;
    }
    app_copy_str(next, next_cap, resume);
    return LAGOON_OK;
}

int handle_Videos_Search(rpc_call *call, const lagoon_v1_SearchVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    search_ctx *c = rpc_call_alloc(call, sizeof(*c), NULL);
    if (c == NULL)
        return app_out_of_memory(call);
    memset(c, 0, sizeof(*c));
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListVideosResponse_info,
                     .items_tag = lagoon_v1_ListVideosResponse_videos_tag};
    int bad = paging_check(call, &l);
    if (search_words(call, req->query, c) != LAGOON_OK || bad != LAGOON_OK)
        return LAGOON_INVALID_ARGUMENT;
    c->who = rpc_call_caller(call);
    c->limit = l.limit;
    c->items = calloc(c->limit, sizeof(*c->items));
    if (c->items == NULL)
        return app_out_of_memory(call);
    resp->videos = c->items; /* FT_POINTER: freed with the call */
    int st = store_read_begin(app_of(call)->db, &c->t, &c->err);
    if (st == LAGOON_OK) {
        st = search_scan(c, req->page_token, resp->next_page_token, sizeof(resp->next_page_token));
        store_read_end(c->t);
    }
    resp->videos_count = (pb_size_t)c->count;
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &c->err);
}

/* ---- Share, Unshare, ListShares ------------------------------------------------------------------- */

/* Shares per video: each is a row read by every access check of its users and a ListShares
 * entry; a class or a group is far below this, a video for everyone should be public. */
#define VIDEOS_SHARES_MAX 1000

/* The video's share rows: a key of (video, user), or of the video alone (prefix). */
static void share_key(store_key *k, uint64_t video, uint64_t user)
{
    store_key_reset(k);
    store_key_u64(k, video);
    if (user)
        store_key_u64(k, user);
}

/* Counts video's shares (at most VIDEOS_SHARES_MAX + STORE_PAGE_SIZE_MAX are looked at). */
static int shares_count(store_txn *t, uint64_t video, uint32_t *n, store_error *err)
{
    store_key prefix;
    share_key(&prefix, video, 0);
    store_query q = {.table = &lagoon_table_video_shares, .index = lagoon_index_video_shares_by_video_user,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
    app_id_page *page = malloc(sizeof(*page));
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    char token[STORE_PAGE_TOKEN_MAX + 1]; /* the next page's, apart from the page it is read into */
    int st = LAGOON_OK;
    *n = 0;
    for (uint32_t round = 0; round <= VIDEOS_SHARES_MAX / STORE_PAGE_SIZE_MAX; round++) {
        st = app_scan_ids(t, &q, page, err);
        if (st != LAGOON_OK)
            break;
        *n += page->n;
        if (page->next_page_token[0] == '\0')
            break;
        memcpy(token, page->next_page_token, sizeof(token));
        q.page_token = token;
    }
    free(page);
    return st;
}

/* "ann shared a video with you", the video's title as its content, related_id the video. */
static int notify_shared(store_txn *t, const app_write_in *in, const lagoon_v1_Video *v, uint64_t to,
                         lagoon_v1_User *u, store_error *err)
{
    int st = store_get(t, &lagoon_table_users, in->who.user_id, u, err);
    if (st != LAGOON_OK)
        return st;
    char title[200], content[500], key[40];
    snprintf(title, sizeof(title), "%s shared a video with you", u->username);
    app_copy_utf8(content, sizeof(content), v->title);
    /* One per video while unread: sharing, unsharing and sharing again does not pile them up. */
    snprintf(key, sizeof(key), "vs:%llu", (unsigned long long)v->id);
    return events_notify(t, in->a, to, lagoon_v1_Notification_Type_VIDEO_SHARED, title, content, v->id, key, 0,
                         NULL, err);
}

static int share_rows(store_txn *t, const app_write_in *in, lagoon_v1_Video *v, lagoon_v1_User *u, store_error *err)
{
    const lagoon_v1_ShareVideoRequest *req = in->req;
    int st = video_load(t, &in->who, req->video_id, APP_CHANGE, "video_id", v, err);
    if (st != LAGOON_OK)
        return st;
    if (req->user_id == v->owner_id) /* (an administrator sharing someone's video) */
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "user_id", "is the video's owner");
    st = store_get(t, &lagoon_table_users, req->user_id, u, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !u->active))
        return store_fail(err, LAGOON_NOT_FOUND, "user_id", "no such user");
    if (st != LAGOON_OK)
        return st;
    /* share_count is kept by Share and Unshare; the shares that went with a deleted account
     * are still in it, so a video at the limit is recounted before it is refused. */
    if (v->share_count >= VIDEOS_SHARES_MAX) {
        st = shares_count(t, v->id, &v->share_count, err);
        if (st == LAGOON_OK && v->share_count >= VIDEOS_SHARES_MAX)
            st = store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "a video can be shared with at most %d users",
                            VIDEOS_SHARES_MAX);
        if (st != LAGOON_OK)
            return st;
    }
    lagoon_v1_VideoShare sh = {.video_id = v->id, .user_id = req->user_id, .created_at = in->now};
    st = store_insert(t, &lagoon_table_video_shares, &sh, NULL, err);
    if (st == LAGOON_ALREADY_EXISTS) /* the unique (video, user) index: say it in the service's words */
        return store_fail(err, LAGOON_ALREADY_EXISTS, "user_id", "the video is already shared with this user");
    if (st != LAGOON_OK)
        return st;
    v->share_count++;
    st = store_update(t, &lagoon_table_videos, v, err);
    return st == LAGOON_OK ? notify_shared(t, in, v, req->user_id, u, err) : st;
}

static int share_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    lagoon_v1_User *u = malloc(sizeof(*u));
    int st = v && u ? share_rows(t, in, v, u, err) : store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    free(v);
    free(u);
    return st;
}

int handle_Videos_Share(rpc_call *call, const lagoon_v1_ShareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "user_id", "cannot be yourself");
    return app_write_call(call, share_write, NULL);
}

static int unshare_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_UnshareVideoRequest *req = in->req;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = video_load(t, &in->who, req->video_id, APP_CHANGE, "video_id", v, err);
    uint64_t id = 0;
    if (st == LAGOON_OK) {
        store_key k;
        share_key(&k, v->id, req->user_id);
        st = store_get_by(t, &lagoon_table_video_shares, lagoon_index_video_shares_by_video_user, &k, &id, NULL, err);
        if (st == LAGOON_NOT_FOUND)
            st = store_fail(err, LAGOON_NOT_FOUND, "user_id", "the video is not shared with this user");
    }
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_video_shares, id, err);
    if (st == LAGOON_OK) {
        if (v->share_count > 0)
            v->share_count--;
        v->key_version++; /* the user's media links stop now, not at their expiry */
        st = store_update(t, &lagoon_table_videos, v, err);
    }
    if (st == LAGOON_OK) /* the user, if following its comments and no longer a reader, stops */
        st = comments_video_readers_changed(t, in->a, v->id, err);
    free(v);
    return st;
}

int handle_Videos_Unshare(rpc_call *call, const lagoon_v1_UnshareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req; /* (its rules in videos.proto checked it) */
    (void)resp;
    return app_write_call(call, unshare_write, NULL);
}

/* ListShares: only the video's owner and administrators see who has it. */
static int own_video(list_ctx *c, uint64_t video_id)
{
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(&c->err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = video_load(c->t, c->who, video_id, APP_CHANGE, "video_id", v, &c->err);
    free(v);
    return st;
}

static int add_share(void *arg, void *item, const void *row)
{
    list_ctx *c = arg;
    const lagoon_v1_VideoShare *sh = row;
    lagoon_v1_VideoShareInfo *info = item;
    if (c->st != LAGOON_OK)
        return 0;
    int st = store_get(c->t, &lagoon_table_users, sh->user_id, c->user, &c->err);
    if (st != LAGOON_OK) {
        c->st = st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* (a share goes with its user) */
        return 0;
    }
    info->has_user = true;
    account_public(c->user, &info->user);
    info->shared_at = sh->created_at;
    return 1;
}

int handle_Videos_ListShares(rpc_call *call, const lagoon_v1_ListVideoSharesRequest *req,
                             lagoon_v1_ListVideoSharesResponse *resp)
{
    paging_list l = {.size = req->page_size, .token = req->page_token,
                     .resp = &lagoon_v1_ListVideoSharesResponse_info,
                     .items_tag = lagoon_v1_ListVideoSharesResponse_shares_tag,
                     .item = add_share, .item_size = sizeof(lagoon_v1_VideoShareInfo)};
    store_key prefix;
    share_key(&prefix, req->video_id, 0);
    l.query.table = &lagoon_table_video_shares;
    l.query.index = lagoon_index_video_shares_by_video_user; /* by user id */
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    list_ctx c = {0};
    int st = list_read(call, &l, &c, own_video, req->video_id);
    resp->shares = l.items; /* FT_POINTER: freed with the call */
    resp->shares_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

/* ---- RecordView ------------------------------------------------------------------------------------ */

/* A view counts when this much was watched... */
#define VIDEOS_VIEW_MIN_S 10
/* ...or, for a video whose duration is known and shorter than this, half of it. */
#define VIDEOS_VIEW_SHORT_S 20
/* A user's views of a video count once in this long (VideoView.counted_at). */
#define VIDEOS_VIEW_INTERVAL_MS (3600LL * 1000)

int videos_view_long_enough(const lagoon_v1_Video *v, uint32_t watched_s)
{
    if (watched_s >= VIDEOS_VIEW_MIN_S)
        return 1;
    return v->duration_seconds > 0 && v->duration_seconds < VIDEOS_VIEW_SHORT_S &&
           (uint64_t)watched_s * 2 >= v->duration_seconds;
}

int videos_view_counts_again(int64_t counted_at, int64_t now)
{
    return now - counted_at >= VIDEOS_VIEW_INTERVAL_MS;
}

/* The one place a view is counted (videos.h): RecordView's, and Plays' for a qualifying play. */
int videos_count_view(store_txn *t, lagoon_v1_Video *v, uint64_t user, uint32_t watched_s, int64_t now, int *counted,
                      store_error *err)
{
    *counted = 0;
    if (!videos_view_long_enough(v, watched_s))
        return LAGOON_OK;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, v->id);
    store_key_u64(&k, user);
    lagoon_v1_VideoView vw = lagoon_v1_VideoView_init_zero;
    int st = store_get_by(t, &lagoon_table_video_views, lagoon_index_video_views_by_video_user, &k, NULL, &vw, err);
    if (st == LAGOON_OK && !videos_view_counts_again(vw.counted_at, now))
        return LAGOON_OK;
    if (st == LAGOON_OK) {
        vw.counted_at = now;
        st = store_update(t, &lagoon_table_video_views, &vw, err);
    } else if (st == LAGOON_NOT_FOUND) {
        vw = (lagoon_v1_VideoView){.video_id = v->id, .user_id = user, .counted_at = now};
        st = store_insert(t, &lagoon_table_video_views, &vw, NULL, err);
    }
    if (st != LAGOON_OK)
        return st;
    v->view_count++;
    *counted = 1;
    return store_update(t, &lagoon_table_videos, v, err);
}

static int view_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_RecordViewRequest *req = in->req;
    lagoon_v1_RecordViewResponse *out = resp;
    lagoon_v1_Video *v = malloc(sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int counted = 0;
    int st = video_load(t, &in->who, req->video_id, APP_READ, "video_id", v, err);
    if (st == LAGOON_OK)
        st = videos_count_view(t, v, in->who.user_id, req->watched_seconds, in->now, &counted, err);
    out->counted = counted;
    out->view_count = v->view_count;
    free(v);
    return st;
}

int handle_Videos_RecordView(rpc_call *call, const lagoon_v1_RecordViewRequest *req, lagoon_v1_RecordViewResponse *resp)
{
    (void)req; /* (its rules in videos.proto checked it) */
    (void)resp;
    return app_write_call(call, view_write, NULL);
}

/* ---- GetPlayback ------------------------------------------------------------------------------------ */

/* The nominal height of a rendition: processing never scales above the source (media.c). */
static uint32_t rendition_height(uint32_t nominal, uint32_t source)
{
    return source != 0 && source < nominal ? source : nominal;
}

static int add_rendition(const app *a, lagoon_v1_Playback *p, const lagoon_v1_Video *v, const char *label,
                         const char *file, uint32_t height)
{
    lagoon_v1_PlaybackRendition *r = &p->renditions[p->renditions_count];
    int st = video_file_url(a, v, file, r->url, sizeof(r->url), &p->expires_at);
    if (st == LAGOON_OK) {
        APP_STRCPY(r->name, label);
        r->height = height;
        p->renditions_count++;
    }
    return st;
}

/* The renditions' nominal heights (media.c makes sd at 480p, hd at 720p). */
#define VIDEOS_SD_HEIGHT 480
#define VIDEOS_HD_HEIGHT 720

int handle_Videos_GetPlayback(rpc_call *call, const lagoon_v1_GetPlaybackRequest *req, lagoon_v1_Playback *resp)
{
    const app *a = app_of(call);
    if (a->cfg.media_url_base[0] == '\0')
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION,
                              "this server hands out no media URLs: it has no media listener (--media-listen)");
    lagoon_v1_Video *v = rpc_call_alloc(call, sizeof(*v), NULL);
    if (v == NULL)
        return app_out_of_memory(call);
    int st = video_read(call, req->video_id, v);
    if (st != LAGOON_OK)
        return st;
    if (v->source != lagoon_v1_Video_Source_UPLOAD || (v->media_files & (MEDIA_FILE_SD | MEDIA_FILE_HD)) == 0)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION,
                              v->source != lagoon_v1_Video_Source_UPLOAD
                                  ? "the video is an external link: it plays from its url"
                                  : "the video has no uploaded media to play yet");
    if (v->status != lagoon_v1_Video_Status_READY)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, "the video is not ready to play (its status is %s)",
                              v->status == lagoon_v1_Video_Status_PROCESSING ? "PROCESSING"
                              : v->status == lagoon_v1_Video_Status_UPLOADING ? "UPLOADING"
                              : v->status == lagoon_v1_Video_Status_ERROR     ? "ERROR"
                                                                             : "unknown");
    resp->video_id = v->id;
    resp->status = v->status;
    resp->duration_seconds = v->duration_seconds;
    resp->width = v->width;
    resp->height = v->height;
    if (v->media_files & MEDIA_FILE_SD)
        st = add_rendition(a, resp, v, "sd", MEDIA_SD, rendition_height(VIDEOS_SD_HEIGHT, v->height));
    if (st == LAGOON_OK && (v->media_files & MEDIA_FILE_HD))
        st = add_rendition(a, resp, v, "hd", MEDIA_HD, rendition_height(VIDEOS_HD_HEIGHT, v->height));
    if (st == LAGOON_OK && (v->media_files & MEDIA_FILE_THUMBNAIL))
        st = video_file_url(a, v, MEDIA_THUMBNAIL, resp->thumbnail_url, sizeof(resp->thumbnail_url), NULL);
    if (st != LAGOON_OK)
        return rpc_call_error(call, st == LAGOON_FAILED_PRECONDITION ? st : LAGOON_INTERNAL,
                              "cannot sign the media URLs");
    return LAGOON_OK;
}
