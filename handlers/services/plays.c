/* Plays service: what players report and what is derived from it, designed for volume.
 *
 * A play is one user watching one video: a Lagoon video (video_id) or an external one
 * (external_id, the seed's string ids). Start makes it (the same session_id again is the same
 * play: a retried Start); its interactions follow with consecutive sequence numbers from 1,
 * one at a time (Record) or in batches over one long bidirectional call (Report: one PlayAck
 * per batch, in order, once the batch is durable).
 *
 * Idempotency is the sequence numbers: the play keeps the next one it expects (next_seq), so a
 * retried batch (after a lost ack or a dropped connection) finds its interactions below it and
 * stores nothing twice (PlayAck.duplicates); a batch that starts past it is refused (a gap).
 *
 * Rows. A batch is one PlayBatch row (not a row per interaction) and, in the same transaction,
 * updates of the play (its state: position, playing, rate, watch time), the user's position for
 * the video (resume position, watched, the history entry) and the video's figures (PlayStats):
 * one insert and three updates per batch whatever its size, the video's view once per play.
 * Every figure is a counter kept in that transaction, so it is exact and read as one row.
 *
 * Watch time: while the play is playing, the media time advanced from one interaction to the
 * next, at most the client time elapsed times the playback rate (so a jump forward without a
 * seek counts what could have been played, no more). A play counts as a view of a Lagoon video
 * through Videos' rules (videos_count_view) once its watch time qualifies.
 *
 * Retention: each write trims a few batches older than plays-retention-days (and plays that
 * can no longer take interactions and are older than that, with what is left of them), and a
 * durable hourly job (PLAYS_RETENTION) trims a page of each, so that rows nobody writes after
 * go too; the positions, history and figures stay. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lagoon_handlers.h"
#include "paging.h"
#include "plays.h"
#include "scheduler.h"
#include "videos.h"

/* Interactions in one Record or Report message: ReportRequest.interactions' and
 * PlayBatch.interactions' max_count in plays.options. A batch of them is one row of about
 * 25 bytes each encoded: 100 stay well inside an LMDB page. */
#define PLAYS_BATCH_MAX 100
/* Positions, in ms: Videos' longest duration (CreateVideoRequest.duration_seconds, 86 400 s). */
#define PLAYS_POSITION_MAX_MS 86400000u
/* Playback rates, in percent of normal speed (RATE interactions). */
#define PLAYS_RATE_MIN 25
#define PLAYS_RATE_MAX 400
/* A client time may be this far from the server's clock, either way: players batch what
 * happened over the last seconds and resend after a reconnect, but a time from another day
 * is a wrong clock, and would put the interaction out of order in the playbook. */
#define PLAYS_CLOCK_SKEW_MS (10LL * 60 * 1000)
/* A play takes interactions for this long after its Start; a longer viewing starts a new play. */
#define PLAYS_OPEN_MS (24LL * 3600 * 1000)
/* Interactions one play may store (sequence numbers up to this): a day of a report every
 * second, with room to spare; bounds what a play's deletion cascades to. */
#define PLAYS_PLAY_INTERACTIONS_MAX 100000u
/* Report batches of one stream submitted and not yet acknowledged. A client waits for acks
 * beyond it; one that does not is refused (RESOURCE_EXHAUSTED), so that a stream cannot queue
 * unbounded work on the writer. */
#define PLAYS_REPORT_INFLIGHT_MAX 16
/* Retention's work per write: batches, and plays, deleted at most (more than a write adds,
 * so the tables shrink back to the retention window). */
#define PLAYS_TRIM_BATCHES 4
#define PLAYS_TRIM_PLAYS 2
/* Retention also runs as a durable job (JobKind PLAYS_RETENTION, scheduler.h), so that what
 * nobody writes after is trimmed too (a quiet server, a user who stopped playing): every hour,
 * or a second after a run that found a full page (a backlog drains in steps). Its work per
 * run: a page of batches and of plays (STORE_PAGE_SIZE_MAX, app_id_page's room). */
#define PLAYS_TRIM_JOB_EVERY_MS (3600LL * 1000)
#define PLAYS_TRIM_JOB_AGAIN_MS 1000LL
#define PLAYS_TRIM_JOB_BATCHES STORE_PAGE_SIZE_MAX
#define PLAYS_TRIM_JOB_PLAYS STORE_PAGE_SIZE_MAX
/* Drop-off histogram: buckets of 10 % (PlayStats.dropoff's max_count). */
#define PLAYS_BUCKETS 10
/* History entries one ClearHistory call removes (one page of ids); more: call again. */
#define PLAYS_CLEAR_MAX STORE_PAGE_SIZE_MAX
/* The per-user budget's window (the budget is APP_SETTINGS plays-per-minute). */
#define PLAYS_WINDOW_MS 60000u

_Static_assert(sizeof(((lagoon_v1_ReportRequest *)0)->interactions) ==
                   PLAYS_BATCH_MAX * sizeof(lagoon_v1_PlayInteraction),
               "PLAYS_BATCH_MAX is ReportRequest.interactions' max_count");
_Static_assert(sizeof(((lagoon_v1_PlayBatch *)0)->interactions) ==
                   PLAYS_BATCH_MAX * sizeof(lagoon_v1_PlayInteraction),
               "PLAYS_BATCH_MAX is PlayBatch.interactions' max_count");
_Static_assert(sizeof(((lagoon_v1_PlayStats *)0)->dropoff) == PLAYS_BUCKETS * sizeof(uint64_t),
               "PLAYS_BUCKETS is PlayStats.dropoff's max_count");

typedef lagoon_v1_PlayInteraction interaction;

/* ---- the module: the per-user budget ------------------------------------------------------------ */

static int plays_start(app *a, void **state, rpc_error *err)
{
    return app_budget_start(a, a->cfg.plays, 1200, PLAYS_WINDOW_MS, state, err);
}

static int plays_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err);

const app_module plays_module = {
    .name = "plays",
    .start = plays_start,
    .stop = app_budget_stop,
    .run_job = plays_run_job,
};

/* The caller's key in the budget's limiter. */
static void budget_key(const rpc_call *call, char *key, size_t cap)
{
    snprintf(key, cap, "plays:%llu", (unsigned long long)rpc_call_caller(call)->user_id);
}

/* Counts n interactions of the caller against its budget at now: 0, or the ms to wait
 * (nothing counted then). */
static uint32_t budget_take(rpc_call *call, uint32_t n, int64_t now)
{
    limiter *l = app_state(app_of(call), &plays_module);
    char key[40];
    budget_key(call, key, sizeof(key));
    for (uint32_t i = 0; i < n; i++) {
        uint32_t wait = limiter_take(l, key, now);
        if (wait > 0) {
            for (uint32_t j = 0; j < i; j++)
                limiter_refund(l, key, now);
            return wait;
        }
    }
    return 0;
}

/* Gives back n of what budget_take counted at taken_at. Any thread (the limiter locks). */
static void budget_refund(rpc_call *call, uint32_t n, int64_t taken_at)
{
    limiter *l = app_state(app_of(call), &plays_module);
    char key[40];
    budget_key(call, key, sizeof(key));
    for (uint32_t i = 0; i < n; i++)
        limiter_refund(l, key, taken_at);
}

/* Of n interactions from sequence number first, those the play has not stored yet as a read
 * sees it now: the budget counts only them, so that a retry of a stored batch (a lost ack, a
 * dropped connection, a restart) is not refused for what it already spent. A batch still in
 * the writer is not seen yet and is counted again; its write's ack trues that up (the
 * duplicates are given back). An unknown play, or another's, counts whole (the write refuses it). */
static uint32_t budget_unstored(rpc_call *call, uint64_t play_id, uint32_t first, uint32_t n)
{
    const app *a = app_of(call);
    store_txn *t;
    store_error err;
    lagoon_v1_Play p;
    if (store_read_begin(a->db, &t, &err) != LAGOON_OK)
        return n;
    int st = store_get(t, &lagoon_table_plays, play_id, &p, &err);
    store_read_end(t);
    if (st != LAGOON_OK || p.user_id != rpc_call_caller(call)->user_id || p.next_seq <= first)
        return n;
    uint64_t stored = (uint64_t)p.next_seq - first;
    return stored >= n ? 0 : n - (uint32_t)stored;
}

static int budget_refused(rpc_call *call, uint32_t wait)
{
    rpc_call_retry_after(call, wait);
    return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many play interactions; retry in %u s",
                          (wait + 999) / 1000);
}

/* ---- keys and access ---------------------------------------------------------------------------- */

/* A video is a Lagoon id or an external id string, exactly one of them. */
static int video_ref_check(rpc_call *call, uint64_t id, const char *external)
{
    if ((id != 0) == (external[0] != '\0'))
        return rpc_call_violation(call, "video_id", "give either video_id or external_id");
    return LAGOON_OK;
}

/* (user, video, external id): the position row's key and the playbook's prefix; user 0: the
 * video's alone (its figures). */
static void video_key(store_key *k, uint64_t user, uint64_t video, const char *external)
{
    store_key_reset(k);
    if (user)
        store_key_u64(k, user);
    store_key_u64(k, video);
    store_key_str(k, external);
}

static int is_admin(const rpc_caller *who)
{
    return who->role == lagoon_v1_Role_ADMIN;
}

/* Whose history, positions and playbook a read or a change is about: user_id, 0 for the
 * caller; another user's only for an administrator. */
static int plays_user(rpc_call *call, uint64_t user_id, uint64_t *out)
{
    const rpc_caller *who = rpc_call_caller(call);
    *out = user_id ? user_id : who->user_id;
    if (*out != who->user_id && !is_admin(who))
        return rpc_call_error(call, LAGOON_PERMISSION_DENIED, "a user's plays are theirs alone");
    return LAGOON_OK;
}

/* The drop-off bucket of a position, plus 1; 0 when the duration is unknown. */
static uint32_t bucket_of(uint32_t position, uint32_t duration)
{
    if (duration == 0)
        return 0;
    uint64_t b = (uint64_t)position * PLAYS_BUCKETS / duration;
    return (uint32_t)(b >= PLAYS_BUCKETS ? PLAYS_BUCKETS - 1 : b) + 1;
}

/* ---- derived rows ------------------------------------------------------------------------------- */

/* The user's position row for the video, into pos; *created when there was none (then pos is
 * a new row, not yet inserted). */
static int position_get(store_txn *t, uint64_t user, uint64_t video, const char *external,
                        lagoon_v1_PlayPosition *pos, int *created, store_error *err)
{
    store_key k;
    video_key(&k, user, video, external);
    int st = store_get_by(t, &lagoon_table_play_positions, lagoon_index_play_positions_by_user_video, &k, NULL, pos,
                          err);
    *created = st == LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_PlayPosition_info, pos);
        pos->user_id = user;
        pos->video_id = video;
        APP_STRCPY(pos->external_id, external);
        return LAGOON_OK;
    }
    return st;
}

static int row_put(store_txn *t, const store_table *tab, void *row, int created, store_error *err)
{
    return created ? store_insert(t, tab, row, NULL, err) : store_update(t, tab, row, err);
}

/* The video's figures, into s (a new row when there was none: *created). */
static int stats_get(store_txn *t, uint64_t video, const char *external, lagoon_v1_PlayStats *s, int *created,
                     store_error *err)
{
    store_key k;
    video_key(&k, 0, video, external);
    int st = store_get_by(t, &lagoon_table_play_stats, lagoon_index_play_stats_by_video, &k, NULL, s, err);
    *created = st == LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND) {
        memset(s, 0, sizeof(*s)); /* wire_init leaves array items as they were: dropoff's are counted here */
        wire_init(&lagoon_v1_PlayStats_info, s);
        s->video_id = video;
        APP_STRCPY(s->external_id, external);
        st = LAGOON_OK;
    }
    s->dropoff_count = PLAYS_BUCKETS;
    return st;
}

/* Moves a play from drop-off bucket `from` to `to` (each plus 1; 0: none). */
static void stats_move(lagoon_v1_PlayStats *s, uint32_t from, uint32_t to)
{
    if (from == to)
        return;
    if (from && s->dropoff[from - 1] > 0)
        s->dropoff[from - 1]--;
    if (to)
        s->dropoff[to - 1]++;
}

/* Jellyfin's rules on where a play got to (its last position): before plays-resume-min-percent
 * of a known duration nothing is saved (the position is 0: from the start); past
 * plays-resume-max-percent, or after a COMPLETE, the video is watched and the position reset;
 * between the two, and for an unknown duration, the position is saved. Watched stays set. */
static void resume_rules(const app *a, const lagoon_v1_Play *p, int ended_complete, lagoon_v1_PlayPosition *pos)
{
    uint64_t d = p->duration_ms, x = p->position_ms;
    if (ended_complete || (d && x * 100 > d * a->cfg.plays_resume_max_pct)) {
        pos->position_ms = 0;
        pos->watched = true;
    } else if (d && x * 100 < d * a->cfg.plays_resume_min_pct) {
        pos->position_ms = 0;
    } else {
        pos->position_ms = (uint32_t)x;
    }
}

/* ---- retention ----------------------------------------------------------------------------------- */

typedef struct trim_cut {
    int64_t before; /* rows older than this go */
    int plays;      /* 1: the rows are plays (started_at), else batches (created_at) */
} trim_cut;

static int trim_mark(void *arg, const void *row)
{
    const trim_cut *c = arg;
    int64_t at = c->plays ? ((const lagoon_v1_Play *)row)->started_at : ((const lagoon_v1_PlayBatch *)row)->created_at;
    return at < c->before ? 1 : -1; /* the index is by time: the first row kept ends the page */
}

/* Deletes up to n rows of tab older than cut, oldest first; *full (may be NULL): n were. */
static int trim_some(store_txn *t, const store_table *tab, const store_index *idx, trim_cut *cut, uint32_t n,
                     int *full, store_error *err)
{
    app_id_page *page = malloc(sizeof(*page));
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    store_query q = {.table = tab, .index = idx, .page_size = n};
    int st = app_scan_marked(t, &q, trim_mark, cut, page, err);
    uint32_t deleted = 0;
    for (uint32_t i = 0; i < page->n && st == LAGOON_OK; i++)
        if (page->marked[i]) {
            st = store_delete(t, tab, page->ids[i], err);
            deleted++;
        }
    if (full && deleted == n)
        *full = 1;
    free(page);
    return st;
}

/* Up to nbatches batches older than the retention at now, and up to nplays plays that can no
 * longer take interactions and are older than it (their remaining batches go with them);
 * *full (may be NULL) is set when either limit was reached. */
static int trim_upto(store_txn *t, const app *a, int64_t now, uint32_t nbatches, uint32_t nplays, int *full,
                     store_error *err)
{
    int64_t keep = (int64_t)a->cfg.plays_retention_s * 1000;
    trim_cut cut = {now - keep, 0};
    int st = trim_some(t, &lagoon_table_play_batches, lagoon_index_play_batches_by_time, &cut, nbatches, full, err);
    cut.before -= PLAYS_OPEN_MS;
    cut.plays = 1;
    return st == LAGOON_OK ? trim_some(t, &lagoon_table_plays, lagoon_index_plays_by_started, &cut, nplays, full, err)
                           : st;
}

/* Bounded work in every write. */
static int trim(store_txn *t, const app_write_in *in, store_error *err)
{
    return trim_upto(t, in->a, in->now, PLAYS_TRIM_BATCHES, PLAYS_TRIM_PLAYS, NULL, err);
}

/* The retention job, scheduled by the first Start that finds none (so a store with plays has
 * one, for good: each run schedules the next). */
static int trim_job_ensure(store_txn *t, int64_t now, store_error *err)
{
    lagoon_v1_ScheduledJob job;
    int st = sched_get(t, lagoon_v1_JobKind_PLAYS_RETENTION, 0, 0, &job, err);
    if (st == LAGOON_NOT_FOUND)
        st = sched_put(t, now, lagoon_v1_JobKind_PLAYS_RETENTION, 0, 0, now + PLAYS_TRIM_JOB_EVERY_MS, err);
    return st;
}

static int plays_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err)
{
    if (job->kind != lagoon_v1_JobKind_PLAYS_RETENTION)
        return LAGOON_OK;
    *ran = 1;
    int64_t now = app_now(a);
    int full = 0;
    int st = trim_upto(t, a, now, PLAYS_TRIM_JOB_BATCHES, PLAYS_TRIM_JOB_PLAYS, &full, err);
    int64_t next = now + (full ? PLAYS_TRIM_JOB_AGAIN_MS : PLAYS_TRIM_JOB_EVERY_MS);
    return st == LAGOON_OK ? sched_put(t, now, lagoon_v1_JobKind_PLAYS_RETENTION, 0, 0, next, err) : st;
}

/* ---- Start ------------------------------------------------------------------------------------- */

/* The rows a write of Start or of a batch works on: on the heap (a Video is ~37 KB). */
typedef struct play_work {
    lagoon_v1_Play p, old;
    lagoon_v1_Video v;
    lagoon_v1_PlayBatch row;
    lagoon_v1_PlayPosition pos;
    lagoon_v1_PlayStats stats;
} play_work;

typedef int (*play_rows_fn)(store_txn *t, const app_write_in *in, play_work *w, void *resp, store_error *err);

static int with_work(store_txn *t, const app_write_in *in, void *resp, play_rows_fn fn, store_error *err)
{
    play_work *w = malloc(sizeof(*w));
    if (w == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = fn(t, in, w, resp, err);
    free(w);
    return st;
}

/* A play's key in by_session: its user and the client's session id. */
static void session_key(store_key *k, uint64_t user, const char *session_id)
{
    store_key_reset(k);
    store_key_u64(k, user);
    store_key_str(k, session_id);
}

static int start_rows(store_txn *t, const app_write_in *in, play_work *w, void *resp, store_error *err)
{
    const lagoon_v1_StartPlayRequest *req = in->req;
    lagoon_v1_Play *p = resp;
    uint32_t duration = req->duration_ms;
    int st;
    if (req->video_id) {
        st = videos_readable(t, &in->who, req->video_id, "video_id", &w->v, NULL, err);
        if (st != LAGOON_OK)
            return st;
        if (w->v.duration_seconds)
            duration = w->v.duration_seconds * 1000u;
    }
    store_key k;
    session_key(&k, in->who.user_id, req->session_id);
    st = store_get_by(t, &lagoon_table_plays, lagoon_index_plays_by_session, &k, NULL, &w->old, err);
    if (st == LAGOON_OK) { /* a retried Start: the play it made */
        if (w->old.video_id != req->video_id || strcmp(w->old.external_id, req->external_id) != 0)
            return store_fail(err, LAGOON_ALREADY_EXISTS, "session_id", "is the session of a play of another video");
        *p = w->old;
        return LAGOON_OK;
    }
    if (st != LAGOON_NOT_FOUND)
        return st;
    if (duration && req->position_ms > duration)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "position_ms", "must be at most the video's duration (%u ms)",
                          duration);
    p->user_id = in->who.user_id;
    p->video_id = req->video_id;
    APP_STRCPY(p->external_id, req->external_id);
    APP_STRCPY(p->session_id, req->session_id);
    p->duration_ms = duration;
    p->started_at = p->updated_at = in->now;
    p->next_seq = 1;
    p->position_ms = req->position_ms;
    p->rate_percent = 100;
    p->bucket = bucket_of(p->position_ms, duration);
    st = store_insert(t, &lagoon_table_plays, p, NULL, err);
    int new_viewer = 0, new_stats = 0;
    if (st == LAGOON_OK)
        st = position_get(t, p->user_id, p->video_id, p->external_id, &w->pos, &new_viewer, err);
    if (st == LAGOON_OK) {
        w->pos.plays++;
        w->pos.duration_ms = duration;
        w->pos.last_played_at = in->now;
        w->pos.hidden = false;
        st = row_put(t, &lagoon_table_play_positions, &w->pos, new_viewer, err);
    }
    if (st == LAGOON_OK)
        st = stats_get(t, p->video_id, p->external_id, &w->stats, &new_stats, err);
    if (st == LAGOON_OK) {
        w->stats.plays++;
        w->stats.unique_viewers += (uint64_t)new_viewer;
        stats_move(&w->stats, 0, p->bucket);
        st = row_put(t, &lagoon_table_play_stats, &w->stats, new_stats, err);
    }
    if (st == LAGOON_OK)
        st = trim_job_ensure(t, in->now, err);
    return st == LAGOON_OK ? trim(t, in, err) : st;
}

static int start_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    return with_work(t, in, resp, start_rows, err);
}

/* Whether the caller's play of session_id exists (a retried Start): it costs no budget again. */
static int start_made(rpc_call *call, const char *session_id)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(app_of(call)->db, &t, &err) != LAGOON_OK)
        return 0;
    store_key k;
    session_key(&k, rpc_call_caller(call)->user_id, session_id);
    int st = store_get_by(t, &lagoon_table_plays, lagoon_index_plays_by_session, &k, NULL, NULL, &err);
    store_read_end(t);
    return st == LAGOON_OK;
}

int handle_Plays_Start(rpc_call *call, const lagoon_v1_StartPlayRequest *req, lagoon_v1_Play *resp)
{
    (void)resp;
    if (video_ref_check(call, req->video_id, req->external_id) != LAGOON_OK)
        return LAGOON_INVALID_ARGUMENT;
    int64_t now = app_now(app_of(call));
    uint32_t charged = start_made(call, req->session_id) ? 0 : 1;
    uint32_t wait = budget_take(call, charged, now);
    if (wait)
        return budget_refused(call, wait);
    int st = app_write_call(call, start_write, NULL);
    if (st != RPC_PENDING) /* not queued */
        budget_refund(call, charged, now);
    return st;
}

/* ---- a batch of interactions: Record and Report ------------------------------------------------ */

/* What a batch write reads (in->args): a copy of the message's interactions, checked. */
typedef struct batch_args {
    uint64_t play_id;
    uint32_t n;
    int single; /* Record: the violations name "interaction.<field>" */
    uint32_t charged; /* counted against the budget at taken_at (budget_unstored) */
    int64_t taken_at;
    interaction x[PLAYS_BATCH_MAX];
} batch_args;

/* Counts a checked batch's unstored interactions against the caller's budget (b->charged): 0,
 * or the ms to wait (nothing counted). */
static uint32_t batch_budget(rpc_call *call, batch_args *b, int64_t now)
{
    b->charged = budget_unstored(call, b->play_id, b->x[0].seq, b->n);
    b->taken_at = now;
    uint32_t wait = budget_take(call, b->charged, now);
    if (wait)
        b->charged = 0;
    return wait;
}

/* After a batch's write: what it was charged beyond what it stored goes back to the budget
 * (duplicates a read could not see yet; everything, when the write refused the batch). */
static void batch_settle(rpc_call *call, const batch_args *b, const lagoon_v1_PlayAck *ack, int status)
{
    uint32_t stored = status == LAGOON_OK ? ack->stored : 0;
    if (b->charged > stored)
        budget_refund(call, b->charged - stored, b->taken_at);
}

/* The name of a field of interaction i in a violation. */
static void x_field(char *out, size_t cap, int single, uint32_t i, const char *name)
{
    if (single)
        snprintf(out, cap, "interaction.%s", name);
    else
        snprintf(out, cap, "interactions[%u].%s", i, name);
}

/* What needs no row: every problem of every interaction, as violations on the call. (The
 * client times' skew is the write's to check: a retry of what is stored is acknowledged however
 * late it comes.) */
static int batch_check(rpc_call *call, const interaction *x, uint32_t n, int single)
{
    char f[48];
    if (n == 0)
        return rpc_call_violation(call, "interactions", "is required (at least one item)");
    for (uint32_t i = 0; i < n; i++) {
        const interaction *y = &x[i];
        if (y->seq == 0 || (uint64_t)y->seq != (uint64_t)x[0].seq + i) {
            x_field(f, sizeof(f), single, i, "seq");
            rpc_call_violation(call, f, i == 0 ? "must be positive" : "must follow the previous interaction's (%llu)",
                               (unsigned long long)x[0].seq + i);
        }
        if (y->type < lagoon_v1_PlayInteraction_Type_PLAY || y->type > lagoon_v1_PlayInteraction_Type_PROGRESS) {
            x_field(f, sizeof(f), single, i, "type");
            rpc_call_violation(call, f, "must be PLAY, PAUSE, RESUME, SEEK, STOP, COMPLETE, RATE or PROGRESS");
        }
        if (y->position_ms > PLAYS_POSITION_MAX_MS) {
            x_field(f, sizeof(f), single, i, "position_ms");
            rpc_call_violation(call, f, "must be at most %u", PLAYS_POSITION_MAX_MS);
        }
        int seek = y->type == lagoon_v1_PlayInteraction_Type_SEEK, rate = y->type == lagoon_v1_PlayInteraction_Type_RATE;
        if (y->from_ms > (seek ? PLAYS_POSITION_MAX_MS : 0)) {
            x_field(f, sizeof(f), single, i, "from_ms");
            rpc_call_violation(call, f, seek ? "must be at most %u" : "is for SEEK only", PLAYS_POSITION_MAX_MS);
        }
        if (rate ? y->rate_percent < PLAYS_RATE_MIN || y->rate_percent > PLAYS_RATE_MAX : y->rate_percent != 0) {
            x_field(f, sizeof(f), single, i, "rate_percent");
            if (rate)
                rpc_call_violation(call, f, "must be from %d to %d", PLAYS_RATE_MIN, PLAYS_RATE_MAX);
            else
                rpc_call_violation(call, f, "is for RATE only");
        }
        if (y->client_time_ms <= 0) {
            x_field(f, sizeof(f), single, i, "client_time_ms");
            rpc_call_violation(call, f, "is required");
        }
    }
    return rpc_call_violations(call) ? LAGOON_INVALID_ARGUMENT : LAGOON_OK;
}

/* What a batch changed in its play. */
typedef struct batch_effect {
    uint64_t watched_ms;  /* watch time added */
    int completed_now;    /* the play became completed */
    int ended_complete;   /* its last interaction is a COMPLETE */
} batch_effect;

/* Applies interactions from..n of b to the play (checked against it first: the duration and
 * the order of client times). */
static int batch_apply(const app_write_in *in, const batch_args *b, uint32_t from, lagoon_v1_Play *p,
                       batch_effect *e, store_error *err)
{
    uint64_t dur = p->duration_ms;
    uint64_t max_pct = in->a->cfg.plays_resume_max_pct;
    char f[48];
    for (uint32_t i = from; i < b->n; i++) {
        const interaction *x = &b->x[i];
        int seek = x->type == lagoon_v1_PlayInteraction_Type_SEEK;
        if (dur && (x->position_ms > dur || (seek && x->from_ms > dur))) {
            x_field(f, sizeof(f), b->single, i, x->position_ms > dur ? "position_ms" : "from_ms");
            return store_fail(err, LAGOON_INVALID_ARGUMENT, f, "must be at most the video's duration (%llu ms)",
                              (unsigned long long)dur);
        }
        if (x->client_time_ms < in->now - PLAYS_CLOCK_SKEW_MS || x->client_time_ms > in->now + PLAYS_CLOCK_SKEW_MS) {
            x_field(f, sizeof(f), b->single, i, "client_time_ms");
            return store_fail(err, LAGOON_INVALID_ARGUMENT, f, "must be within %lld s of the server's clock",
                              (long long)(PLAYS_CLOCK_SKEW_MS / 1000));
        }
        if (x->client_time_ms < p->last_client_ms) {
            x_field(f, sizeof(f), b->single, i, "client_time_ms");
            return store_fail(err, LAGOON_INVALID_ARGUMENT, f, "must not be earlier than the play's previous interaction");
        }
        uint32_t at = seek ? x->from_ms : x->position_ms; /* where the player was when it happened */
        if (p->playing && p->last_client_ms != 0 && at > p->position_ms) {
            uint64_t advanced = at - p->position_ms;
            uint64_t could = (uint64_t)(x->client_time_ms - p->last_client_ms) * p->rate_percent / 100;
            e->watched_ms += advanced < could ? advanced : could;
        }
        switch (x->type) {
        case lagoon_v1_PlayInteraction_Type_PLAY:
        case lagoon_v1_PlayInteraction_Type_RESUME:
            p->playing = true;
            break;
        case lagoon_v1_PlayInteraction_Type_PAUSE:
        case lagoon_v1_PlayInteraction_Type_STOP:
        case lagoon_v1_PlayInteraction_Type_COMPLETE:
            p->playing = false;
            break;
        case lagoon_v1_PlayInteraction_Type_RATE:
            p->rate_percent = x->rate_percent;
            break;
        default: /* SEEK, PROGRESS: the state stays */
            break;
        }
        p->position_ms = x->position_ms;
        p->last_client_ms = x->client_time_ms;
        int complete = x->type == lagoon_v1_PlayInteraction_Type_COMPLETE;
        if (!p->completed && (complete || (dur && (uint64_t)p->position_ms * 100 > dur * max_pct))) {
            p->completed = true;
            e->completed_now = 1;
        }
        e->ended_complete = complete;
    }
    p->watched_ms += e->watched_ms;
    p->next_seq = b->x[b->n - 1].seq + 1;
    return LAGOON_OK;
}

/* The rows a batch changes once its interactions from..n are applied to w->p. */
static int batch_derive(store_txn *t, const app_write_in *in, const batch_args *b, uint32_t from, play_work *w,
                        lagoon_v1_PlayAck *ack, store_error *err)
{
    lagoon_v1_Play *p = &w->p;
    uint32_t old_bucket = p->bucket;
    batch_effect e = {0};
    int st = batch_apply(in, b, from, p, &e, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_PlayBatch *row = &w->row;
    wire_init(&lagoon_v1_PlayBatch_info, row);
    row->play_id = p->id;
    row->user_id = p->user_id;
    row->video_id = p->video_id;
    APP_STRCPY(row->external_id, p->external_id);
    row->first_seq = b->x[from].seq;
    row->created_at = in->now;
    row->interactions_count = (pb_size_t)(b->n - from);
    memcpy(row->interactions, &b->x[from], (b->n - from) * sizeof(interaction));
    st = store_insert(t, &lagoon_table_play_batches, row, NULL, err);
    int created = 0;
    if (st == LAGOON_OK)
        st = position_get(t, p->user_id, p->video_id, p->external_id, &w->pos, &created, err);
    if (st == LAGOON_OK) {
        resume_rules(in->a, p, e.ended_complete, &w->pos);
        w->pos.duration_ms = p->duration_ms;
        w->pos.last_played_at = in->now;
        w->pos.hidden = false; /* still playing: back in the history */
        st = row_put(t, &lagoon_table_play_positions, &w->pos, created, err);
    }
    if (st == LAGOON_OK)
        st = stats_get(t, p->video_id, p->external_id, &w->stats, &created, err);
    if (st == LAGOON_OK) {
        p->bucket = bucket_of(p->position_ms, p->duration_ms);
        w->stats.total_watch_ms += e.watched_ms;
        w->stats.completed_plays += (uint64_t)e.completed_now;
        stats_move(&w->stats, old_bucket, p->bucket);
        st = row_put(t, &lagoon_table_play_stats, &w->stats, created, err);
    }
    /* A view of the video through Videos' rules, once per play, when its watch time is enough. */
    uint32_t watched_s = (uint32_t)(p->watched_ms / 1000 < UINT32_MAX ? p->watched_ms / 1000 : UINT32_MAX);
    if (st == LAGOON_OK && p->video_id && !p->view_checked && videos_view_long_enough(&w->v, watched_s)) {
        int counted = 0;
        st = videos_count_view(t, &w->v, p->user_id, watched_s, in->now, &counted, err);
        p->view_checked = true;
        ack->view_counted = counted;
    }
    p->updated_at = in->now;
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_plays, p, err);
    ack->stored = b->n - from;
    return st;
}

static int batch_rows(store_txn *t, const app_write_in *in, play_work *w, void *resp, store_error *err)
{
    const batch_args *b = in->args;
    lagoon_v1_PlayAck *ack = resp;
    lagoon_v1_Play *p = &w->p;
    int st = store_get(t, &lagoon_table_plays, b->play_id, p, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && p->user_id != in->who.user_id))
        return store_fail(err, LAGOON_NOT_FOUND, "play_id", "no such play");
    if (st != LAGOON_OK)
        return st;
    ack->play_id = p->id;
    ack->first_seq = b->x[0].seq;
    /* Recording needs the right to read the video now: made private, it takes no more. */
    if (p->video_id && (st = videos_readable(t, &in->who, p->video_id, "play_id", &w->v, NULL, err)) != LAGOON_OK)
        return st;
    uint32_t from = 0;
    while (from < b->n && b->x[from].seq < p->next_seq)
        from++;
    ack->duplicates = from;
    char f[48];
    if (from < b->n) {
        if (b->x[from].seq != p->next_seq) {
            x_field(f, sizeof(f), b->single, from, "seq");
            return store_fail(err, LAGOON_INVALID_ARGUMENT, f, "must be %u, the play's next sequence number", p->next_seq);
        }
        if (in->now - p->started_at > PLAYS_OPEN_MS)
            return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL,
                              "the play started more than %lld hours ago: start a new one",
                              (long long)(PLAYS_OPEN_MS / 3600000));
        if ((uint64_t)b->x[b->n - 1].seq > PLAYS_PLAY_INTERACTIONS_MAX)
            return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL,
                              "a play holds at most %u interactions: start a new one", PLAYS_PLAY_INTERACTIONS_MAX);
        st = batch_derive(t, in, b, from, w, ack, err);
        if (st == LAGOON_OK)
            st = trim(t, in, err);
    } else { /* a retry of what is stored: nothing changes, the ack says where things are */
        int created;
        st = position_get(t, p->user_id, p->video_id, p->external_id, &w->pos, &created, err);
    }
    ack->next_seq = p->next_seq;
    ack->resume_ms = w->pos.position_ms;
    ack->watched = w->pos.watched;
    ack->watched_ms = p->watched_ms;
    return st;
}

static int batch_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    return with_work(t, in, resp, batch_rows, err);
}

static int record_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    batch_settle(call, in->args, resp, status);
    return status;
}

int handle_Plays_Record(rpc_call *call, const lagoon_v1_RecordRequest *req, lagoon_v1_PlayAck *resp)
{
    (void)resp;
    int64_t now = app_now(app_of(call));
    if (batch_check(call, &req->interaction, 1, 1) != LAGOON_OK)
        return LAGOON_INVALID_ARGUMENT;
    batch_args *b = app_write_args(call, sizeof(*b));
    if (b == NULL)
        return app_out_of_memory(call);
    b->play_id = req->play_id;
    b->n = 1;
    b->single = 1;
    b->x[0] = req->interaction;
    uint32_t wait = batch_budget(call, b, now);
    if (wait)
        return budget_refused(call, wait);
    int st = app_write_call_then(call, batch_write, b, record_after);
    if (st != RPC_PENDING) /* not queued: record_after does not run */
        budget_refund(call, b->charged, now);
    return st;
}

/* ---- Report: a bidirectional stream of batches ---------------------------------------------------- */

/* One Report call. Its handler runs on the call's loop for each message; the acks are sent
 * from the store's writer as batches become durable. The lock orders the two, and exactly one
 * of them ends the call: the last completion after the client half-closed (or after a
 * failure), or the handler itself when nothing is in flight. */
typedef struct report_stream {
    pthread_mutex_t mu;
    rpc_call *call;
    uint32_t inflight; /* batches submitted, not yet completed */
    int closed;        /* the client half-closed */
    int failed;        /* the status that ends the call (0: none yet); its details are on the call */
    int cancelled;     /* the call ended under us (client cancel, disconnect, deadline) */
    int finished;      /* the call's end is decided */
} report_stream;

/* One batch of a stream, from its submission to its completion (malloc'd: a stream may carry
 * any number of them, so not the call's memory). */
typedef struct report_batch {
    report_stream *rs;
    app_write_in in;
    batch_args args;
    lagoon_v1_PlayAck ack;
} report_batch;

/* A bidi method's response struct is not used by the RPC layer (rpc.h): Report keeps a pointer
 * to its stream's state there, to find it again at each message. */
_Static_assert(sizeof(lagoon_v1_PlayAck) >= sizeof(report_stream *), "PlayAck holds the stream's pointer");

static report_stream **stream_slot(rpc_call *call)
{
    return (report_stream **)rpc_call_response(call);
}

static void stream_destroy(void *p)
{
    pthread_mutex_destroy(&((report_stream *)p)->mu);
}

/* The end of the call, if it is decided now (under the lock): its status, or RPC_PENDING. */
static int stream_end(report_stream *rs)
{
    if (rs->finished || rs->inflight > 0 || !(rs->closed || rs->failed || rs->cancelled))
        return RPC_PENDING;
    rs->finished = 1;
    return rs->cancelled ? LAGOON_CANCELLED : rs->failed ? rs->failed : LAGOON_OK;
}

static int report_run(store_txn *t, void *arg, store_error *err)
{
    report_batch *b = arg;
    memset(&b->ack, 0, sizeof(b->ack)); /* a replayed batch starts over */
    return batch_write(t, &b->in, &b->ack, err);
}

static void report_done(void *arg, int status, const store_error *err)
{
    report_batch *b = arg;
    report_stream *rs = b->rs;
    rpc_call *call = rs->call;
    batch_settle(call, &b->args, &b->ack, status); /* before the end may be decided elsewhere */
    pthread_mutex_lock(&rs->mu);
    /* A stored batch is acknowledged even when a later message has failed the stream: the
     * acks tell the client what was stored, and the first batch without one is the one that
     * failed (a batch cannot be stored past a failed one: its sequence numbers would leave a gap). */
    if (status == LAGOON_OK && !rs->cancelled)
        rpc_call_send(call, &b->ack);
    else if (status != LAGOON_OK && !rs->failed && !rs->cancelled)
        rs->failed = app_store_error(call, status, err);
    rs->inflight--;
    int end = stream_end(rs);
    pthread_mutex_unlock(&rs->mu);
    free(b);
    if (end != RPC_PENDING)
        rpc_call_finish(call, end);
}

static void report_cancelled(rpc_call *call, void *arg)
{
    report_stream *rs = arg;
    pthread_mutex_lock(&rs->mu);
    rs->cancelled = 1;
    int end = stream_end(rs);
    pthread_mutex_unlock(&rs->mu);
    if (end != RPC_PENDING)
        rpc_call_finish(call, end);
}

/* Checks and submits one message's batch (under the stream's lock): LAGOON_OK, or the status
 * that ends the stream, its details set on the call. */
static int report_submit(rpc_call *call, report_stream *rs, const lagoon_v1_ReportRequest *req)
{
    app *a = app_of(call);
    int64_t now = app_now(a);
    if (rs->inflight >= PLAYS_REPORT_INFLIGHT_MAX) {
        rpc_call_retry_after(call, 100);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED,
                              "more than %d batches unacknowledged: wait for their acks", PLAYS_REPORT_INFLIGHT_MAX);
    }
    if (batch_check(call, req->interactions, req->interactions_count, 0) != LAGOON_OK)
        return LAGOON_INVALID_ARGUMENT;
    report_batch *b = calloc(1, sizeof(*b)); /* (zeroed: the analyzer cannot see a batch is never empty) */
    if (b == NULL)
        return app_out_of_memory(call);
    b->rs = rs;
    b->in = (app_write_in){.a = a, .who = *rpc_call_caller(call), .now = now, .req = NULL, .args = &b->args};
    b->args.play_id = req->play_id;
    b->args.n = req->interactions_count;
    b->args.single = 0;
    memcpy(b->args.x, req->interactions, req->interactions_count * sizeof(interaction));
    uint32_t wait = batch_budget(call, &b->args, now);
    if (wait) {
        free(b);
        return budget_refused(call, wait);
    }
    store_error err;
    int st = store_submit(a->db, report_run, b, report_done, b, &err);
    if (st != LAGOON_OK) {
        budget_refund(call, b->args.charged, now);
        free(b);
        if (st == LAGOON_RESOURCE_EXHAUSTED)
            rpc_call_retry_after(call, 100);
        return app_store_error(call, st, &err);
    }
    rs->inflight++;
    return LAGOON_OK;
}

int handle_Plays_Report(rpc_call *call, const lagoon_v1_ReportRequest *req)
{
    report_stream **slot = stream_slot(call);
    report_stream *rs = *slot;
    if (rs == NULL) { /* the first message */
        rs = rpc_call_alloc(call, sizeof(*rs), stream_destroy);
        if (rs == NULL)
            return app_out_of_memory(call);
        pthread_mutex_init(&rs->mu, NULL);
        rs->call = call;
        *slot = rs;
        rpc_call_on_cancel(call, report_cancelled, rs);
    }
    pthread_mutex_lock(&rs->mu);
    if (req == NULL)
        rs->closed = 1;
    else if (!rs->failed && !rs->cancelled && !rs->finished)
        rs->failed = report_submit(call, rs, req);
    int end = stream_end(rs);
    pthread_mutex_unlock(&rs->mu);
    /* Ended through rpc_call_finish, never by returning the status: acks the writer sent are
     * still in the loop's mailbox, and a finish posted after them is answered after them, where
     * a returned status would end the call at once and drop them. */
    if (end != RPC_PENDING)
        rpc_call_finish(call, end);
    return RPC_PENDING;
}

/* ---- reads and history changes ------------------------------------------------------------------- */

/* The user and the video a request is about: plays_user's refusal, or INVALID_ARGUMENT when
 * it names no video or two. */
static int user_and_video(rpc_call *call, uint64_t user_id, uint64_t video_id, const char *external, uint64_t *user)
{
    if (plays_user(call, user_id, user) != LAGOON_OK)
        return LAGOON_PERMISSION_DENIED;
    return video_ref_check(call, video_id, external);
}

int handle_Plays_GetPosition(rpc_call *call, const lagoon_v1_PlaysVideoRequest *req, lagoon_v1_PlayPosition *resp)
{
    uint64_t user;
    int st = user_and_video(call, req->user_id, req->video_id, req->external_id, &user);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    store_key k;
    video_key(&k, user, req->video_id, req->external_id);
    st = store_get_by(t, &lagoon_table_play_positions, lagoon_index_play_positions_by_user_video, &k, NULL, resp, &err);
    store_read_end(t);
    if (st == LAGOON_NOT_FOUND)
        st = store_fail(&err, LAGOON_NOT_FOUND, "video_id", "the user has not played this video");
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* A list's row is its item as it is (arg: the item's size). */
static int add_row(void *arg, void *item, const void *row)
{
    memcpy(item, row, *(const size_t *)arg);
    return 1;
}

/* One page of l (paging fields, response and item size set) of idx's rows under prefix, newest
 * first; the items, their count and the next token are the caller's to hand to the response. */
static int list_newest(rpc_call *call, paging_list *l, const store_table *tab, const store_index *idx,
                       const store_key *prefix)
{
    l->item = add_row;
    l->arg = &l->item_size;
    l->query.table = tab;
    l->query.index = idx;
    l->query.prefix = prefix->buf;
    l->query.prefix_len = prefix->len;
    l->query.reverse = 1;
    return paging_read(call, l);
}

int handle_Plays_ListHistory(rpc_call *call, const lagoon_v1_ListHistoryRequest *req,
                             lagoon_v1_ListHistoryResponse *resp)
{
    uint64_t user;
    if (plays_user(call, req->user_id, &user) != LAGOON_OK)
        return LAGOON_PERMISSION_DENIED;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListHistoryResponse_info,
                     .items_tag = lagoon_v1_ListHistoryResponse_entries_tag,
                     .item_size = sizeof(lagoon_v1_PlayPosition)};
    /* (a hidden entry has no key in by_user_played) */
    int st = list_newest(call, &l, &lagoon_table_play_positions, lagoon_index_play_positions_by_user_played, &prefix);
    resp->entries = l.items; /* FT_POINTER: freed with the call */
    resp->entries_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

/* RemoveHistory's and ClearHistory's user (in->args). */
static int remove_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_PlaysVideoRequest *req = in->req;
    lagoon_v1_PlayPosition pos;
    int created;
    int st = position_get(t, *(const uint64_t *)in->args, req->video_id, req->external_id, &pos, &created, err);
    if (st == LAGOON_OK && created)
        return store_fail(err, LAGOON_NOT_FOUND, "video_id", "the user has not played this video");
    if (st != LAGOON_OK || pos.hidden) /* (removed already: a retry) */
        return st;
    pos.hidden = true;
    return store_update(t, &lagoon_table_play_positions, &pos, err);
}

int handle_Plays_RemoveHistory(rpc_call *call, const lagoon_v1_PlaysVideoRequest *req, lagoon_v1_PlaysEmpty *resp)
{
    (void)resp;
    uint64_t *user = app_write_args(call, sizeof(*user));
    if (user == NULL)
        return app_out_of_memory(call);
    int st = user_and_video(call, req->user_id, req->video_id, req->external_id, user);
    return st == LAGOON_OK ? app_write_call(call, remove_write, user) : st;
}

static int clear_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    lagoon_v1_ClearHistoryResponse *out = resp;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, *(const uint64_t *)in->args);
    store_query q = {.table = &lagoon_table_play_positions, .index = lagoon_index_play_positions_by_user_played,
                     .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = PLAYS_CLEAR_MAX};
    app_id_page *page = malloc(sizeof(*page));
    lagoon_v1_PlayPosition *pos = malloc(sizeof(*pos));
    if (page == NULL || pos == NULL) {
        free(page);
        free(pos);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = app_scan_ids(t, &q, page, err);
    for (uint32_t i = 0; i < page->n && st == LAGOON_OK; i++) {
        st = store_get(t, &lagoon_table_play_positions, page->ids[i], pos, err);
        pos->hidden = true;
        if (st == LAGOON_OK)
            st = store_update(t, &lagoon_table_play_positions, pos, err);
    }
    if (st == LAGOON_OK) {
        out->cleared = page->n;
        q.page_size = 1; /* the entries left, if any (the ones hidden have no entry now) */
        st = app_scan_ids(t, &q, page, err);
        out->more = st == LAGOON_OK && page->n > 0;
    }
    free(page);
    free(pos);
    return st;
}

int handle_Plays_ClearHistory(rpc_call *call, const lagoon_v1_PlaysUserRequest *req,
                              lagoon_v1_ClearHistoryResponse *resp)
{
    (void)resp;
    uint64_t *user = app_write_args(call, sizeof(*user));
    if (user == NULL)
        return app_out_of_memory(call);
    if (plays_user(call, req->user_id, user) != LAGOON_OK)
        return LAGOON_PERMISSION_DENIED;
    return app_write_call(call, clear_write, user);
}

int handle_Plays_ListPlaybook(rpc_call *call, const lagoon_v1_ListPlaybookRequest *req,
                              lagoon_v1_ListPlaybookResponse *resp)
{
    uint64_t user;
    int st = user_and_video(call, req->user_id, req->video_id, req->external_id, &user);
    if (st != LAGOON_OK)
        return st;
    store_key prefix;
    video_key(&prefix, user, req->video_id, req->external_id);
    paging_list l = {.size = req->page_size, .token = req->page_token, .resp = &lagoon_v1_ListPlaybookResponse_info,
                     .items_tag = lagoon_v1_ListPlaybookResponse_batches_tag, .item_size = sizeof(lagoon_v1_PlayBatch)};
    st = list_newest(call, &l, &lagoon_table_play_batches, lagoon_index_play_batches_by_user_video_time, &prefix);
    resp->batches = l.items; /* FT_POINTER: freed with the call */
    resp->batches_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

/* The figures of a Lagoon video are its owner's (and administrators'); of an external one,
 * administrators' only (no one owns it here). */
static int stats_read(store_txn *t, const rpc_caller *who, const lagoon_v1_GetPlayStatsRequest *req,
                      lagoon_v1_Video *v, lagoon_v1_VideoPlayStats *out, store_error *err)
{
    int owner = is_admin(who);
    if (req->video_id) {
        int st = videos_readable(t, who, req->video_id, "video_id", v, &owner, err);
        if (st != LAGOON_OK)
            return st;
        out->view_count = v->view_count;
    }
    if (!owner)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the video's owner can read its figures");
    lagoon_v1_PlayStats s;
    int created;
    int st = stats_get(t, req->video_id, req->external_id, &s, &created, err);
    if (st != LAGOON_OK)
        return st;
    out->video_id = req->video_id;
    APP_STRCPY(out->external_id, req->external_id);
    out->plays = s.plays;
    out->unique_viewers = s.unique_viewers;
    out->total_watch_ms = s.total_watch_ms;
    out->average_watch_ms = s.plays ? s.total_watch_ms / s.plays : 0;
    out->completed_plays = s.completed_plays;
    out->completion_rate = s.plays ? (double)s.completed_plays / (double)s.plays : 0;
    out->dropoff_count = PLAYS_BUCKETS;
    memcpy(out->dropoff, s.dropoff, sizeof(out->dropoff));
    return LAGOON_OK;
}

int handle_Plays_GetStats(rpc_call *call, const lagoon_v1_GetPlayStatsRequest *req, lagoon_v1_VideoPlayStats *resp)
{
    if (video_ref_check(call, req->video_id, req->external_id) != LAGOON_OK)
        return LAGOON_INVALID_ARGUMENT;
    lagoon_v1_Video *v = malloc(sizeof(*v)); /* ~37 KB: not for a loop thread's stack */
    if (v == NULL)
        return app_out_of_memory(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        st = stats_read(t, rpc_call_caller(call), req, v, resp, &err);
        store_read_end(t);
    }
    free(v);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}
