/* Videos service: a video's metadata and where it plays from, who may see it (owner, shares,
 * public), the lists, the word index for search, and view counting.
 *
 * Access is one policy (video_policy): the owner and administrators change a video; they, the
 * users it is shared with and, for a public video, every signed-in user read it. Everyone else
 * is told there is no such video. Every call reads the rows it decides on (no caches), so a
 * removed share or a video made private takes effect at the next call. */
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "events.h"
#include "lagoon_handlers.h"
#include "paging.h"
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

/* v as the caller sees it: how many users it is shared with is its owner's business. */
static void video_shown(lagoon_v1_Video *v, const rpc_caller *who)
{
    if (!may_change(who, v))
        v->share_count = 0;
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

const app_module videos_module = {.name = "videos"};

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
    /* An external URL plays at once; an upload (later) starts PROCESSING. */
    v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
    v->status = lagoon_v1_Video_Status_READY;
    v->created_at = v->updated_at = in->now;
    int st = store_insert(t, &lagoon_table_videos, v, NULL, err);
    return st == LAGOON_OK ? words_insert(t, v, err) : st;
}

int handle_Videos_Create(rpc_call *call, const lagoon_v1_CreateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req; /* (its rules in videos.proto checked it) */
    (void)resp;
    return app_write_call(call, create_write, NULL);
}

int handle_Videos_Get(rpc_call *call, const lagoon_v1_GetVideoRequest *req, lagoon_v1_Video *resp)
{
    const rpc_caller *who = rpc_call_caller(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = video_load(t, who, req->video_id, APP_READ, "video_id", resp, &err);
    store_read_end(t);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    video_shown(resp, who);
    return LAGOON_OK;
}

int handle_Videos_Update(rpc_call *call, const lagoon_v1_UpdateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Delete(rpc_call *call, const lagoon_v1_DeleteVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListMine(rpc_call *call, const lagoon_v1_ListMyVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListByUser(rpc_call *call, const lagoon_v1_ListUserVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListSharedWithMe(rpc_call *call, const lagoon_v1_ListSharedWithMeRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListPublic(rpc_call *call, const lagoon_v1_ListPublicVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Search(rpc_call *call, const lagoon_v1_SearchVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Share(rpc_call *call, const lagoon_v1_ShareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Unshare(rpc_call *call, const lagoon_v1_UnshareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListShares(rpc_call *call, const lagoon_v1_ListVideoSharesRequest *req, lagoon_v1_ListVideoSharesResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_RecordView(rpc_call *call, const lagoon_v1_RecordViewRequest *req, lagoon_v1_RecordViewResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}
