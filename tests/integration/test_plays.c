/* Plays end to end through the generated client against the real server and store: the
 * derived figures (watch time, completion, drop-off, plays, viewers, views) against a
 * recomputation from the raw events read back from the playbook after randomized sessions; the
 * resume and watched rules at their boundaries; idempotent retries (a Record again, a streamed
 * batch again after a dropped connection); history (distinct, newest first, paged, remove,
 * clear); retention with the injected clock; the access matrix; bad input, each field named. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "scheduler.h"
#include "testserver.h"

static test_app *T;
static lagoon_client *C;

/* ann owns the videos; bob and cat watch; root administers. */
static uint64_t ann, bob, cat, root;
static char ann_tok[65], bob_tok[65], cat_tok[65], root_tok[65];

/* Big rows kept off the test's stack. */
static lagoon_v1_Video V;
static lagoon_v1_ListPlaybookResponse BOOK;
static lagoon_v1_ListHistoryResponse HIST;
static lagoon_v1_PlayAck ack_sink; /* an ack the test does not look at */

#define DAY_MS (24LL * 3600 * 1000)

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->plays.max_events = 1000000; /* the tests report much without moving the clock */
    acfg->access_ttl_s = 400u * 24 * 3600; /* test_retention moves the clock by months */
    acfg->sched_poll_ms = 3600 * 1000; /* the retention job runs when a test calls sched_run_due */
}

static void tweak_limited(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->plays.max_events = 20;
}

static void tweak_resume(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->plays_resume_min_pct = 20; /* lagoond --plays-resume-min-percent 20 */
    acfg->plays_resume_max_pct = 60; /* --plays-resume-max-percent 60 */
}

static void start(void (*tweak_fn)(app_config *, rpc_config *))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_STUDENT, bob_tok);
    cat = test_verified_user(T, C, "cat", lagoon_v1_Role_STUDENT, cat_tok);
    root = test_admin_user(T, C, "root", root_tok);
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int setup_resume(void **state)
{
    (void)state;
    start(tweak_resume);
    return 0;
}

static int setup_limited(void **state)
{
    (void)state;
    start(tweak_limited);
    return 0;
}

static void release_lists(void)
{
    pb_release(lagoon_v1_ListPlaybookResponse_fields, &BOOK);
    pb_release(lagoon_v1_ListHistoryResponse_fields, &HIST);
    memset(&BOOK, 0, sizeof(BOOK));
    memset(&HIST, 0, sizeof(HIST));
}

static int teardown(void **state)
{
    (void)state;
    release_lists();
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

typedef lagoon_v1_PlayInteraction ix;

/* ---- helpers -------------------------------------------------------------------------------- */

static uint64_t video(const char *tok, uint32_t seconds, int public)
{
    lagoon_v1_CreateVideoRequest r = lagoon_v1_CreateVideoRequest_init_zero;
    snprintf(r.title, sizeof(r.title), "Etude");
    snprintf(r.url, sizeof(r.url), "https://example.com/etude");
    r.duration_seconds = seconds;
    r.is_public = public;
    lagoon_set_token(C, tok);
    assert_int_equal(lagoon_Videos_Create(C, &r, &V), LAGOON_OK);
    return V.id;
}

static int start_play(const char *tok, uint64_t vid, const char *ext, const char *session, uint32_t duration_ms,
                      uint32_t position_ms, lagoon_v1_Play *p)
{
    lagoon_v1_StartPlayRequest r = lagoon_v1_StartPlayRequest_init_zero;
    r.video_id = vid;
    snprintf(r.external_id, sizeof(r.external_id), "%s", ext ? ext : "");
    snprintf(r.session_id, sizeof(r.session_id), "%s", session);
    r.duration_ms = duration_ms;
    r.position_ms = position_ms;
    lagoon_set_token(C, tok);
    return lagoon_Plays_Start(C, &r, p);
}

static uint64_t play(const char *tok, uint64_t vid, const char *ext, const char *session, uint32_t duration_ms)
{
    lagoon_v1_Play p;
    assert_int_equal(start_play(tok, vid, ext, session, duration_ms, 0, &p), LAGOON_OK);
    return p.id;
}

static ix mk(uint32_t seq, lagoon_v1_PlayInteraction_Type type, uint32_t pos, int64_t at)
{
    ix x = lagoon_v1_PlayInteraction_init_zero;
    x.seq = seq;
    x.type = type;
    x.position_ms = pos;
    x.client_time_ms = at;
    return x;
}

/* x[0..n): a PLAY at 0, then a PROGRESS every second of media and of client time from at. */
static void viewing(ix *x, uint32_t n, int64_t at)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = mk(i + 1, i ? lagoon_v1_PlayInteraction_Type_PROGRESS : lagoon_v1_PlayInteraction_Type_PLAY, i * 1000,
                  at + i * 1000);
}

static int record(const char *tok, uint64_t play_id, ix x, lagoon_v1_PlayAck *ack)
{
    lagoon_v1_RecordRequest r = lagoon_v1_RecordRequest_init_zero;
    r.play_id = play_id;
    r.has_interaction = true;
    r.interaction = x;
    lagoon_set_token(C, tok);
    return lagoon_Plays_Record(C, &r, ack);
}

/* Streams x[0..n) over one Report call on c in batches of `batch`; the acks into acks (room for
 * one per batch, may be NULL). The call's final status. */
static int report(lagoon_client *c, const char *tok, uint64_t play_id, const ix *x, uint32_t n, uint32_t batch,
                  lagoon_v1_PlayAck *acks, uint32_t *nacks)
{
    static lagoon_v1_ReportRequest r;
    lagoon_set_token(c, tok);
    lagoon_stream *s = NULL;
    uint32_t sent = 0, got = 0;
    int st = LAGOON_OK;
    lagoon_v1_PlayAck a;
    for (uint32_t i = 0; i < n; i += batch) {
        /* At most 8 batches unacknowledged (the server takes 16). */
        if (sent - got >= 8) {
            if (lagoon_Plays_Report_recv(s, &a) != 1)
                break;
            if (acks)
                acks[got] = a;
            got++;
        }
        memset(&r, 0, sizeof(r));
        r.play_id = play_id;
        r.interactions_count = (pb_size_t)(n - i < batch ? n - i : batch);
        memcpy(r.interactions, x + i, r.interactions_count * sizeof(ix));
        st = s == NULL ? lagoon_Plays_Report(c, &r, &s) : lagoon_Plays_Report_send(s, &r);
        if (st != LAGOON_OK)
            break;
        sent++;
    }
    if (s == NULL)
        return st;
    lagoon_stream_close_send(s);
    for (uint32_t i = 0; i <= sent && lagoon_Plays_Report_recv(s, &a) == 1; i++) {
        if (acks && got < sent)
            acks[got] = a;
        got++;
    }
    if (nacks)
        *nacks = got;
    return lagoon_stream_finish(s, NULL);
}

static void playbook(const char *tok, uint64_t user, uint64_t vid, const char *ext, uint32_t size, const char *token)
{
    lagoon_v1_ListPlaybookRequest r = lagoon_v1_ListPlaybookRequest_init_zero;
    r.user_id = user;
    r.video_id = vid;
    snprintf(r.external_id, sizeof(r.external_id), "%s", ext ? ext : "");
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    pb_release(lagoon_v1_ListPlaybookResponse_fields, &BOOK);
    memset(&BOOK, 0, sizeof(BOOK));
    lagoon_set_token(C, tok);
    assert_int_equal(lagoon_Plays_ListPlaybook(C, &r, &BOOK), LAGOON_OK);
}

static int history(const char *tok, uint64_t user, uint32_t size, const char *token)
{
    lagoon_v1_ListHistoryRequest r = lagoon_v1_ListHistoryRequest_init_zero;
    r.user_id = user;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    pb_release(lagoon_v1_ListHistoryResponse_fields, &HIST);
    memset(&HIST, 0, sizeof(HIST));
    lagoon_set_token(C, tok);
    return lagoon_Plays_ListHistory(C, &r, &HIST);
}

static int position(const char *tok, uint64_t user, uint64_t vid, const char *ext, lagoon_v1_PlayPosition *p)
{
    lagoon_v1_PlaysVideoRequest r = lagoon_v1_PlaysVideoRequest_init_zero;
    r.user_id = user;
    r.video_id = vid;
    snprintf(r.external_id, sizeof(r.external_id), "%s", ext ? ext : "");
    lagoon_set_token(C, tok);
    return lagoon_Plays_GetPosition(C, &r, p);
}

static int stats(const char *tok, uint64_t vid, const char *ext, lagoon_v1_VideoPlayStats *s)
{
    lagoon_v1_GetPlayStatsRequest r = lagoon_v1_GetPlayStatsRequest_init_zero;
    r.video_id = vid;
    snprintf(r.external_id, sizeof(r.external_id), "%s", ext ? ext : "");
    lagoon_set_token(C, tok);
    return lagoon_Plays_GetStats(C, &r, s);
}

/* ---- the figures against a recomputation ------------------------------------------------------ */

/* What the test knows of a play it started: the rest comes back from the playbook. */
typedef struct known_play {
    uint64_t id, user;
    int video;            /* index into the test's videos */
    uint32_t duration, start;
    uint32_t n;           /* interactions sent */
    uint32_t digest;      /* of what was sent (digest_of): the playbook must give it back */
} known_play;

/* A digest of x[0..n)'s fields, so that what the playbook returns is what was sent. */
static uint32_t digest_of(const ix *x, uint32_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t f[6] = {x[i].seq, (uint64_t)x[i].type, x[i].position_ms, x[i].from_ms, x[i].rate_percent,
                         (uint64_t)x[i].client_time_ms};
        for (int j = 0; j < 6; j++)
            h = (h ^ f[j]) * 1099511628211ULL;
    }
    return (uint32_t)(h ^ (h >> 32));
}

/* The rules of docs/API.md ("watch time", completion, drop-off), written again from the text. */
typedef struct replay {
    uint64_t watched;
    int completed;
    uint32_t pos;
} replay;

static void replay_play(const known_play *kp, const ix *x, uint32_t n, replay *r)
{
    int playing = 0;
    int64_t last = 0;
    uint32_t rate = 100;
    r->watched = 0;
    r->completed = 0;
    r->pos = kp->start;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t at = x[i].type == lagoon_v1_PlayInteraction_Type_SEEK ? x[i].from_ms : x[i].position_ms;
        if (playing && last != 0 && at > r->pos) {
            uint64_t adv = at - r->pos, could = (uint64_t)(x[i].client_time_ms - last) * rate / 100;
            r->watched += adv < could ? adv : could;
        }
        if (x[i].type == lagoon_v1_PlayInteraction_Type_PLAY || x[i].type == lagoon_v1_PlayInteraction_Type_RESUME)
            playing = 1;
        if (x[i].type == lagoon_v1_PlayInteraction_Type_PAUSE || x[i].type == lagoon_v1_PlayInteraction_Type_STOP ||
            x[i].type == lagoon_v1_PlayInteraction_Type_COMPLETE)
            playing = 0;
        if (x[i].type == lagoon_v1_PlayInteraction_Type_RATE)
            rate = x[i].rate_percent;
        r->pos = x[i].position_ms;
        last = x[i].client_time_ms;
        if (x[i].type == lagoon_v1_PlayInteraction_Type_COMPLETE ||
            (kp->duration && (uint64_t)r->pos * 100 > (uint64_t)kp->duration * 90))
            r->completed = 1;
    }
}

#define NPLAYS 24
#define NIX 120

/* A random viewing of duration d (0 unknown: positions up to 10 minutes), client times from at. */
static uint32_t random_session(ix *x, uint32_t d, uint32_t start, int64_t at, unsigned *seed)
{
    uint32_t n = 5 + (uint32_t)rand_r(seed) % (NIX - 5), span = d ? d : 600000, pos = start;
    x[0] = mk(1, lagoon_v1_PlayInteraction_Type_PLAY, pos, at);
    for (uint32_t i = 1; i < n; i++) {
        at += rand_r(seed) % 3000;
        uint32_t step = (uint32_t)rand_r(seed) % 4000;
        pos = pos + step > span ? span : pos + step;
        int k = rand_r(seed) % 20;
        lagoon_v1_PlayInteraction_Type t = k < 10  ? lagoon_v1_PlayInteraction_Type_PROGRESS
                                           : k < 12 ? lagoon_v1_PlayInteraction_Type_PAUSE
                                           : k < 14 ? lagoon_v1_PlayInteraction_Type_RESUME
                                           : k < 16 ? lagoon_v1_PlayInteraction_Type_SEEK
                                           : k < 17 ? lagoon_v1_PlayInteraction_Type_RATE
                                           : k < 18 ? lagoon_v1_PlayInteraction_Type_PLAY
                                                    : lagoon_v1_PlayInteraction_Type_PROGRESS;
        if (i == n - 1 && rand_r(seed) % 3 == 0)
            t = rand_r(seed) % 2 ? lagoon_v1_PlayInteraction_Type_COMPLETE : lagoon_v1_PlayInteraction_Type_STOP;
        x[i] = mk(i + 1, t, pos, at);
        if (t == lagoon_v1_PlayInteraction_Type_SEEK) {
            x[i].from_ms = pos;
            pos = (uint32_t)rand_r(seed) % (span + 1);
            x[i].position_ms = pos;
        }
        if (t == lagoon_v1_PlayInteraction_Type_RATE)
            x[i].rate_percent = 50 + (uint32_t)rand_r(seed) % 151;
        if (t == lagoon_v1_PlayInteraction_Type_COMPLETE && d)
            x[i].position_ms = pos = d;
    }
    return n;
}

/* The interactions of play kp, sorted by seq, from the playbook of its user and video. */
static uint32_t from_playbook(const known_play *kp, uint64_t vid, const char *ext, ix *out)
{
    uint32_t n = 0;
    char token[801] = "";
    for (int page = 0; page < 100; page++) {
        playbook(root_tok, kp->user, vid, ext, 7, token);
        for (pb_size_t b = 0; b < BOOK.batches_count; b++)
            if (BOOK.batches[b].play_id == kp->id)
                for (pb_size_t i = 0; i < BOOK.batches[b].interactions_count; i++) {
                    const ix *y = &BOOK.batches[b].interactions[i];
                    assert_true(y->seq >= 1 && y->seq <= NIX);
                    assert_int_equal(out[y->seq - 1].seq, 0); /* stored once */
                    out[y->seq - 1] = *y;
                    n++;
                }
        snprintf(token, sizeof(token), "%s", BOOK.next_page_token);
        if (token[0] == '\0')
            break;
    }
    return n;
}

static void test_figures_match_recomputation(void **state)
{
    (void)state;
    const char *ext = "yt:dQw4w9WgXcQ";
    uint64_t vids[3] = {video(ann_tok, 120, 1), video(ann_tok, 0, 1), 0}; /* known, unknown, external */
    static known_play kps[NPLAYS];
    static ix sent[NIX], back[NIX];
    const char *toks[3] = {bob_tok, cat_tok, ann_tok};
    uint64_t users[3] = {bob, cat, ann};
    unsigned seed = 20261201;
    for (int i = 0; i < NPLAYS; i++) {
        known_play *kp = &kps[i];
        int u = rand_r(&seed) % 3;
        kp->video = rand_r(&seed) % 3;
        kp->user = users[u];
        kp->duration = kp->video == 0 ? 120000 : kp->video == 2 && i % 2 ? 300000 : 0;
        kp->start = rand_r(&seed) % 4 == 0 ? 30000 : 0;
        char session[32];
        snprintf(session, sizeof(session), "s%d", i);
        lagoon_v1_Play p;
        assert_int_equal(start_play(toks[u], vids[kp->video], kp->video == 2 ? ext : "", session,
                                    kp->video == 2 ? kp->duration : 0, kp->start, &p),
                         LAGOON_OK);
        /* An external video's duration is the one its first play gave (later plays may differ). */
        kp->id = p.id;
        kp->duration = p.duration_ms;
        uint32_t n = random_session(sent, kp->duration, kp->start, T->clock_ms - 9 * 60 * 1000, &seed);
        kp->n = n;
        kp->digest = digest_of(sent, n);
        if (i % 3 == 0) { /* some through Record, one at a time */
            for (uint32_t j = 0; j < n; j++) {
                lagoon_v1_PlayAck ack;
                assert_int_equal(record(toks[u], kp->id, sent[j], &ack), LAGOON_OK);
            }
        } else {
            assert_int_equal(report(C, toks[u], kp->id, sent, n, 1 + (uint32_t)rand_r(&seed) % 40, NULL, NULL),
                             LAGOON_OK);
        }
    }
    /* Per video: plays, viewers, watch time, completions, drop-off, from the raw events. */
    for (int v = 0; v < 3; v++) {
        uint64_t plays = 0, watched = 0, completed = 0, dropoff[10] = {0};
        int viewer[3] = {0};
        for (int i = 0; i < NPLAYS; i++) {
            if (kps[i].video != v)
                continue;
            memset(back, 0, sizeof(back));
            uint32_t n = from_playbook(&kps[i], vids[v], v == 2 ? ext : "", back);
            assert_int_equal(n, kps[i].n); /* every interaction sent, as sent */
            assert_int_equal(digest_of(back, n), kps[i].digest);
            for (uint32_t j = 0; j < n; j++)
                assert_int_equal(back[j].seq, j + 1); /* no gap */
            replay r;
            replay_play(&kps[i], back, n, &r);
            plays++;
            watched += r.watched;
            completed += (uint64_t)r.completed;
            if (kps[i].duration) {
                uint64_t b = (uint64_t)r.pos * 10 / kps[i].duration;
                dropoff[b > 9 ? 9 : b]++;
            }
            for (int u = 0; u < 3; u++)
                viewer[u] |= kps[i].user == users[u];
        }
        lagoon_v1_VideoPlayStats s;
        assert_int_equal(stats(v == 2 ? root_tok : ann_tok, vids[v], v == 2 ? ext : "", &s), LAGOON_OK);
        assert_int_equal(s.plays, plays);
        assert_int_equal(s.unique_viewers, (uint64_t)(viewer[0] + viewer[1] + viewer[2]));
        assert_int_equal(s.total_watch_ms, watched);
        assert_int_equal(s.average_watch_ms, plays ? watched / plays : 0);
        assert_int_equal(s.completed_plays, completed);
        assert_int_equal(s.dropoff_count, 10);
        for (int b = 0; b < 10; b++)
            assert_int_equal(s.dropoff[b], dropoff[b]);
        assert_true(plays > 0);
    }
}

/* ---- resume and watched at the boundaries -------------------------------------------------------- */

static void stop_at(const char *tok, uint64_t vid, const char *session, uint32_t pos, lagoon_v1_PlayAck *ack)
{
    uint64_t p = play(tok, vid, "", session, 0);
    int64_t at = T->clock_ms;
    assert_int_equal(record(tok, p, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, at - 200000), ack), LAGOON_OK);
    assert_int_equal(record(tok, p, mk(2, lagoon_v1_PlayInteraction_Type_STOP, pos, at), ack), LAGOON_OK);
}

static void test_resume_boundaries(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1); /* 100 000 ms: 1 % is 1 000 ms */
    lagoon_v1_PlayAck ack;
    lagoon_v1_PlayPosition pos;
    struct {
        uint32_t at;
        uint32_t resume;
        int watched;
    } cases[] = {
        {4999, 0, 0},      /* below 5 %: not saved */
        {5000, 5000, 0},   /* at 5 %: saved */
        {50000, 50000, 0}, /* between */
        {90000, 90000, 0}, /* at 90 %: still a resume position */
        {90001, 0, 1},     /* past 90 %: reset, watched */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char session[16];
        snprintf(session, sizeof(session), "b%zu", i);
        uint64_t vi = i == 4 ? vid : video(ann_tok, 100, 1); /* a video each: watched stays set */
        stop_at(bob_tok, vi, session, cases[i].at, &ack);
        assert_int_equal(ack.resume_ms, cases[i].resume);
        assert_int_equal(ack.watched, cases[i].watched);
        assert_int_equal(position(bob_tok, 0, vi, NULL, &pos), LAGOON_OK);
        assert_int_equal(pos.position_ms, cases[i].resume);
        assert_int_equal(pos.watched, cases[i].watched);
    }
    /* Watched stays after a later play that stops midway, which saves its position. */
    stop_at(bob_tok, vid, "again", 40000, &ack);
    assert_int_equal(position(bob_tok, 0, vid, NULL, &pos), LAGOON_OK);
    assert_int_equal(pos.position_ms, 40000);
    assert_true(pos.watched);
    assert_int_equal(pos.plays, 2);
    /* COMPLETE marks watched whatever the duration; unknown: the position is kept as it is. */
    uint64_t p = play(cat_tok, 0, "ext:1", "c1", 0);
    assert_int_equal(record(cat_tok, p, mk(1, lagoon_v1_PlayInteraction_Type_STOP, 2000, T->clock_ms), &ack), LAGOON_OK);
    assert_int_equal(ack.resume_ms, 2000);
    assert_false(ack.watched);
    assert_int_equal(record(cat_tok, p, mk(2, lagoon_v1_PlayInteraction_Type_COMPLETE, 3000, T->clock_ms), &ack),
                     LAGOON_OK);
    assert_int_equal(ack.resume_ms, 0);
    assert_true(ack.watched);
}

/* The same rules with the settings moved: 20 % and 60 %. */
static void test_resume_settings(void **state)
{
    (void)state;
    lagoon_v1_PlayAck ack;
    struct {
        uint32_t at, resume;
        int watched;
    } cases[] = {{19999, 0, 0}, {20000, 20000, 0}, {60000, 60000, 0}, {60001, 0, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char session[16];
        snprintf(session, sizeof(session), "m%zu", i);
        stop_at(bob_tok, video(ann_tok, 100, 1), session, cases[i].at, &ack);
        assert_int_equal(ack.resume_ms, cases[i].resume);
        assert_int_equal(ack.watched, cases[i].watched);
    }
}

/* ---- idempotency ---------------------------------------------------------------------------- */

static int batches_stored(void *arg)
{
    const uint64_t *ids = arg; /* play, video */
    playbook(bob_tok, 0, ids[1], NULL, 100, NULL);
    uint32_t n = 0;
    for (pb_size_t b = 0; b < BOOK.batches_count; b++)
        n += BOOK.batches[b].interactions_count;
    return n == (uint32_t)ids[2];
}

static void test_retries_store_nothing_twice(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 600, 1);
    lagoon_v1_Play p1, p2;
    assert_int_equal(start_play(bob_tok, vid, NULL, "phone-1", 0, 0, &p1), LAGOON_OK);
    /* A retried Start is the same play. */
    assert_int_equal(start_play(bob_tok, vid, NULL, "phone-1", 0, 0, &p2), LAGOON_OK);
    assert_int_equal(p1.id, p2.id);
    EXPECT(start_play(bob_tok, 0, "other", "phone-1", 0, 0, &p2), LAGOON_ALREADY_EXISTS, "session_id");
    static ix x[40];
    viewing(x, 40, T->clock_ms - 60000);
    /* A Record again: stored once. */
    lagoon_v1_PlayAck ack;
    assert_int_equal(record(bob_tok, p1.id, x[0], &ack), LAGOON_OK);
    assert_int_equal(ack.stored, 1);
    assert_int_equal(record(bob_tok, p1.id, x[0], &ack), LAGOON_OK);
    assert_int_equal(ack.stored, 0);
    assert_int_equal(ack.duplicates, 1);
    assert_int_equal(ack.next_seq, 2);
    /* A stream: batch 2-10 acknowledged, then 11-20 and 21-30 sent and the connection dropped
     * before their acks are read. */
    lagoon_client *c2 = test_client(T);
    lagoon_set_token(c2, bob_tok);
    static lagoon_v1_ReportRequest r;
    memset(&r, 0, sizeof(r));
    r.play_id = p1.id;
    r.interactions_count = 9;
    memcpy(r.interactions, x + 1, 9 * sizeof(ix));
    lagoon_stream *s;
    assert_int_equal(lagoon_Plays_Report(c2, &r, &s), LAGOON_OK);
    assert_int_equal(lagoon_Plays_Report_recv(s, &ack), 1);
    assert_int_equal(ack.stored, 9);
    assert_int_equal(ack.next_seq, 11);
    for (uint32_t b = 10; b < 30; b += 10) {
        r.interactions_count = 10;
        memcpy(r.interactions, x + b, 10 * sizeof(ix));
        assert_int_equal(lagoon_Plays_Report_send(s, &r), LAGOON_OK);
    }
    lagoon_close(c2); /* the stream with it */
    uint64_t ids[3] = {p1.id, vid, 30};
    assert_true(test_wait_for(batches_stored, ids, 5000));
    /* The player comes back on another connection and resends from its last ack (11), with
     * one overlapping batch (26-35) and a new one. */
    lagoon_v1_PlayAck acks[4];
    uint32_t nacks = 0;
    assert_int_equal(report(C, bob_tok, p1.id, x + 10, 20, 10, acks, &nacks), LAGOON_OK);
    assert_int_equal(nacks, 2);
    assert_int_equal(acks[0].duplicates, 10);
    assert_int_equal(acks[0].stored, 0);
    assert_int_equal(acks[1].duplicates, 10);
    assert_int_equal(acks[1].next_seq, 31);
    assert_int_equal(report(C, bob_tok, p1.id, x + 25, 15, 10, acks, &nacks), LAGOON_OK);
    assert_int_equal(nacks, 2);
    assert_int_equal(acks[0].duplicates, 5);
    assert_int_equal(acks[0].stored, 5);
    assert_int_equal(acks[1].stored, 5);
    assert_int_equal(acks[1].next_seq, 41);
    /* Every interaction once. */
    ids[2] = 40;
    assert_true(batches_stored(ids));
    int seen[41] = {0};
    for (pb_size_t b = 0; b < BOOK.batches_count; b++)
        for (pb_size_t i = 0; i < BOOK.batches[b].interactions_count; i++)
            seen[BOOK.batches[b].interactions[i].seq]++;
    for (int i = 1; i <= 40; i++)
        assert_int_equal(seen[i], 1);
    /* Newest first. */
    for (pb_size_t b = 1; b < BOOK.batches_count; b++)
        assert_true(BOOK.batches[b - 1].first_seq > BOOK.batches[b].first_seq);
    /* A retry however late is acknowledged: what is stored is not checked again (20 minutes
     * on, its client times are past the skew a new interaction may have). */
    test_clock_advance(T, 20 * 60 * 1000);
    assert_int_equal(report(C, bob_tok, p1.id, x + 30, 10, 10, acks, &nacks), LAGOON_OK);
    assert_int_equal(acks[0].duplicates, 10);
    EXPECT(record(bob_tok, p1.id, mk(41, lagoon_v1_PlayInteraction_Type_PAUSE, 1000, T->clock_ms - 11 * 60 * 1000), &ack),
           LAGOON_INVALID_ARGUMENT, "interaction.client_time_ms");
    /* A gap is refused, naming the sequence number. */
    EXPECT(record(bob_tok, p1.id, mk(43, lagoon_v1_PlayInteraction_Type_PAUSE, 1000, T->clock_ms), &ack),
           LAGOON_INVALID_ARGUMENT, "interaction.seq");
    /* The play's 39 s of watch time made one view of the video; a second play within the hour
     * makes none (Videos' rule: one source of views). */
    lagoon_v1_GetVideoRequest g = {vid};
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Videos_Get(C, &g, &V), LAGOON_OK);
    assert_int_equal(V.view_count, 1);
    uint64_t p3 = play(bob_tok, vid, NULL, "phone-2", 0);
    for (uint32_t i = 0; i < 20; i++)
        x[i].client_time_ms = T->clock_ms - 60000 + i * 1000;
    assert_int_equal(report(C, bob_tok, p3, x, 20, 20, acks, &nacks), LAGOON_OK);
    assert_false(acks[0].view_counted);
    assert_int_equal(lagoon_Videos_Get(C, &g, &V), LAGOON_OK);
    assert_int_equal(V.view_count, 1);
    lagoon_v1_RecordViewRequest rv = {vid, 30};
    lagoon_v1_RecordViewResponse rvr;
    assert_int_equal(lagoon_Videos_RecordView(C, &rv, &rvr), LAGOON_OK);
    assert_false(rvr.counted);
}

/* ---- history --------------------------------------------------------------------------------- */

static void test_history(void **state)
{
    (void)state;
    uint64_t vids[5];
    for (int i = 0; i < 5; i++)
        vids[i] = video(ann_tok, 60, 1);
    /* Played in order 0..4, then 1 again: distinct, newest first: 1 4 3 2 0. */
    char session[16];
    for (int i = 0; i < 6; i++) {
        snprintf(session, sizeof(session), "h%d", i);
        play(bob_tok, vids[i < 5 ? i : 1], NULL, session, 0);
        test_clock_advance(T, 1000);
    }
    play(cat_tok, vids[0], NULL, "cat", 0);
    uint64_t want[5] = {vids[1], vids[4], vids[3], vids[2], vids[0]};
    char token[801] = "";
    int k = 0;
    for (int page = 0; page < 5; page++) {
        assert_int_equal(history(bob_tok, 0, 2, token), LAGOON_OK);
        for (pb_size_t i = 0; i < HIST.entries_count; i++)
            assert_int_equal(HIST.entries[i].video_id, want[k++]);
        snprintf(token, sizeof(token), "%s", HIST.next_page_token);
        if (token[0] == '\0')
            break;
    }
    assert_int_equal(k, 5);
    assert_int_equal(history(bob_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries[0].plays, 2);
    /* Remove one; the position stays readable. */
    lagoon_v1_PlaysVideoRequest rm = lagoon_v1_PlaysVideoRequest_init_zero;
    rm.video_id = vids[4];
    lagoon_v1_PlaysEmpty e;
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Plays_RemoveHistory(C, &rm, &e), LAGOON_OK);
    assert_int_equal(lagoon_Plays_RemoveHistory(C, &rm, &e), LAGOON_OK); /* again: nothing to do */
    assert_int_equal(history(bob_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 4);
    for (pb_size_t i = 0; i < HIST.entries_count; i++)
        assert_true(HIST.entries[i].video_id != vids[4]);
    lagoon_v1_PlayPosition pos;
    assert_int_equal(position(bob_tok, 0, vids[4], NULL, &pos), LAGOON_OK);
    rm.video_id = video(ann_tok, 60, 1);
    EXPECT(lagoon_Plays_RemoveHistory(C, &rm, &e), LAGOON_NOT_FOUND, "video_id");
    /* Clear; cat's history is untouched; a new play comes back. */
    lagoon_v1_PlaysUserRequest cr = lagoon_v1_PlaysUserRequest_init_zero;
    lagoon_v1_ClearHistoryResponse cresp;
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Plays_ClearHistory(C, &cr, &cresp), LAGOON_OK);
    assert_int_equal(cresp.cleared, 4);
    assert_false(cresp.more);
    assert_int_equal(history(bob_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 0);
    assert_int_equal(history(cat_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 1);
    play(bob_tok, vids[2], NULL, "h9", 0);
    assert_int_equal(history(bob_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 1);
    assert_int_equal(HIST.entries[0].video_id, vids[2]);
}

/* ---- retention --------------------------------------------------------------------------------- */

static void test_retention(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(bob_tok, vid, NULL, "old", 0);
    static ix x[30];
    viewing(x, 30, T->clock_ms - 60000);
    assert_int_equal(report(C, bob_tok, p, x, 30, 5, NULL, NULL), LAGOON_OK); /* 6 batches */
    playbook(bob_tok, 0, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 6);
    lagoon_v1_VideoPlayStats before, after;
    assert_int_equal(stats(ann_tok, vid, NULL, &before), LAGOON_OK);
    /* 89 days on: kept. */
    test_clock_advance(T, 89 * DAY_MS);
    play(cat_tok, vid, NULL, "new", 0);
    playbook(bob_tok, 0, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 6);
    /* Past 90 days: each write trims a few, the figures stay. */
    test_clock_advance(T, 2 * DAY_MS);
    uint64_t q = play(cat_tok, vid, NULL, "new2", 0);
    lagoon_v1_PlayAck ack;
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(record(cat_tok, q, mk(i + 1, lagoon_v1_PlayInteraction_Type_PROGRESS, i, T->clock_ms), &ack),
                         LAGOON_OK);
    playbook(bob_tok, 0, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 0);
    lagoon_v1_PlayPosition pos;
    assert_int_equal(position(bob_tok, 0, vid, NULL, &pos), LAGOON_OK);
    assert_int_equal(stats(ann_tok, vid, NULL, &after), LAGOON_OK);
    assert_int_equal(after.total_watch_ms, before.total_watch_ms);
    assert_int_equal(after.plays, before.plays + 2);
    assert_int_equal(history(bob_tok, 0, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 1);
    /* The old play itself is gone once it can take no more interactions (a day later). */
    test_clock_advance(T, 2 * DAY_MS);
    uint64_t q2 = play(cat_tok, vid, NULL, "newer", 0);
    (void)q2;
    EXPECT(record(bob_tok, p, mk(31, lagoon_v1_PlayInteraction_Type_PAUSE, 1, T->clock_ms), &ack), LAGOON_NOT_FOUND,
           "play_id");
}

/* Retention holds without any write: the durable job (scheduled by the first Start) trims
 * what is past it when the scheduler runs, a page at a time; the figures and positions stay. */
static void test_retention_job(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(bob_tok, vid, NULL, "quiet", 0);
    static ix x[30];
    viewing(x, 30, T->clock_ms - 60000);
    assert_int_equal(report(C, bob_tok, p, x, 30, 1, NULL, NULL), LAGOON_OK); /* 30 batches */
    lagoon_v1_VideoPlayStats before, after;
    assert_int_equal(stats(ann_tok, vid, NULL, &before), LAGOON_OK);
    store_error err;
    uint32_t ran = 0;
    test_clock_advance(T, 2 * 3600 * 1000);
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
    assert_int_equal(ran, 1);
    playbook(bob_tok, 0, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 30); /* within the retention: kept */
    /* 92 days on, nobody writes; the job runs. */
    test_clock_advance(T, 92 * DAY_MS);
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
    assert_int_equal(ran, 1);
    playbook(bob_tok, 0, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 0);
    EXPECT(record(bob_tok, p, mk(31, lagoon_v1_PlayInteraction_Type_PAUSE, 1, T->clock_ms), &ack_sink), LAGOON_NOT_FOUND,
           "play_id"); /* the play went too */
    lagoon_v1_PlayPosition pos;
    assert_int_equal(position(bob_tok, 0, vid, NULL, &pos), LAGOON_OK);
    assert_int_equal(stats(ann_tok, vid, NULL, &after), LAGOON_OK);
    assert_int_equal(after.plays, before.plays);
    assert_int_equal(after.total_watch_ms, before.total_watch_ms);
    /* The job goes on: it ran again, an hour later. */
    test_clock_advance(T, 3600 * 1000);
    assert_int_equal(sched_run_due(T->app, 0, &ran, &err), LAGOON_OK);
    assert_int_equal(ran, 1);
}

/* ---- access ---------------------------------------------------------------------------------- */

static void test_access(void **state)
{
    (void)state;
    uint64_t pub = video(ann_tok, 100, 1), priv = video(ann_tok, 100, 0);
    lagoon_v1_Play p;
    lagoon_v1_PlayAck ack;
    lagoon_v1_PlayPosition pos;
    lagoon_v1_VideoPlayStats s;
    /* Recording needs the right to read the video. */
    EXPECT(start_play(bob_tok, priv, NULL, "x", 0, 0, &p), LAGOON_NOT_FOUND, "video_id");
    assert_int_equal(start_play(ann_tok, priv, NULL, "mine", 0, 0, &p), LAGOON_OK);
    /* A private video shared with cat: cat may play it, bob still may not. */
    lagoon_v1_ShareVideoRequest sh = {priv, cat};
    lagoon_v1_VideosEmpty se;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Share(C, &sh, &se), LAGOON_OK);
    assert_int_equal(start_play(cat_tok, priv, NULL, "shared", 0, 0, &p), LAGOON_OK);
    EXPECT(start_play(bob_tok, priv, NULL, "x", 0, 0, &p), LAGOON_NOT_FOUND, "video_id");
    uint64_t bp = play(bob_tok, pub, NULL, "bob", 0);
    /* A play is its user's. */
    EXPECT(record(cat_tok, bp, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, T->clock_ms), &ack), LAGOON_NOT_FOUND,
           "play_id");
    assert_int_equal(report(C, cat_tok, bp, (ix[]){mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, T->clock_ms)}, 1, 1,
                            NULL, NULL),
                     LAGOON_NOT_FOUND);
    /* History, positions and playbook: the user's and an administrator's. */
    assert_int_equal(history(bob_tok, 0, 10, NULL), LAGOON_OK);
    assert_int_equal(history(bob_tok, bob, 10, NULL), LAGOON_OK);
    assert_int_equal(history(cat_tok, bob, 10, NULL), LAGOON_PERMISSION_DENIED);
    assert_int_equal(history(root_tok, bob, 10, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 1);
    assert_int_equal(position(cat_tok, bob, pub, NULL, &pos), LAGOON_PERMISSION_DENIED);
    assert_int_equal(position(root_tok, bob, pub, NULL, &pos), LAGOON_OK);
    lagoon_v1_ListPlaybookRequest br = lagoon_v1_ListPlaybookRequest_init_zero;
    br.user_id = bob;
    br.video_id = pub;
    lagoon_set_token(C, cat_tok);
    assert_int_equal(lagoon_Plays_ListPlaybook(C, &br, &BOOK), LAGOON_PERMISSION_DENIED);
    lagoon_v1_PlaysUserRequest cr = {bob};
    lagoon_v1_ClearHistoryResponse cresp;
    assert_int_equal(lagoon_Plays_ClearHistory(C, &cr, &cresp), LAGOON_PERMISSION_DENIED);
    /* Figures: the owner's and an administrator's; a reader who does not own it is refused,
     * one who cannot read it is told there is no such video; external: administrators only. */
    assert_int_equal(stats(ann_tok, pub, NULL, &s), LAGOON_OK);
    assert_int_equal(s.plays, 1);
    assert_int_equal(stats(root_tok, pub, NULL, &s), LAGOON_OK);
    assert_int_equal(stats(bob_tok, pub, NULL, &s), LAGOON_PERMISSION_DENIED);
    EXPECT(stats(bob_tok, priv, NULL, &s), LAGOON_NOT_FOUND, "video_id");
    assert_int_equal(stats(bob_tok, 0, "ext", &s), LAGOON_PERMISSION_DENIED);
    assert_int_equal(stats(root_tok, 0, "ext", &s), LAGOON_OK);
    /* Made private, the video takes no more interactions from bob. */
    lagoon_v1_UpdateVideoRequest u = lagoon_v1_UpdateVideoRequest_init_zero;
    u.video_id = pub;
    u.has_is_public = true;
    u.is_public = false;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Update(C, &u, &V), LAGOON_OK);
    EXPECT(record(bob_tok, bp, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, T->clock_ms), &ack), LAGOON_NOT_FOUND,
           "play_id");
    /* Deleting the video takes its plays, positions and figures. */
    lagoon_v1_DeleteVideoRequest d = {pub};
    lagoon_v1_VideosEmpty ve;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Videos_Delete(C, &d, &ve), LAGOON_OK);
    assert_int_equal(position(bob_tok, 0, pub, NULL, &pos), LAGOON_NOT_FOUND);
    assert_int_equal(history(bob_tok, 0, 10, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 0);
    /* Without a token: nothing. */
    lagoon_set_token(C, NULL);
    assert_int_equal(history(NULL, 0, 10, NULL), LAGOON_UNAUTHENTICATED);
}

/* ---- bad input ---------------------------------------------------------------------------------- */

static void test_bad_input(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(bob_tok, vid, NULL, "bad", 0);
    lagoon_v1_Play pl;
    lagoon_v1_PlayAck ack;
    int64_t now = T->clock_ms;
    EXPECT(start_play(bob_tok, 0, "", "s", 0, 0, &pl), LAGOON_INVALID_ARGUMENT, "video_id");
    EXPECT(start_play(bob_tok, vid, "ext", "s", 0, 0, &pl), LAGOON_INVALID_ARGUMENT, "video_id");
    EXPECT(start_play(bob_tok, vid, NULL, "", 0, 0, &pl), LAGOON_INVALID_ARGUMENT, "session_id");
    EXPECT(start_play(bob_tok, vid, NULL, "s", 0, 100001, &pl), LAGOON_INVALID_ARGUMENT, "position_ms");
    EXPECT(start_play(bob_tok, 0, "ext", "s", 86400001, 0, &pl), LAGOON_INVALID_ARGUMENT, "duration_ms");
    struct {
        ix x;
        const char *field;
    } cases[] = {
        {mk(0, lagoon_v1_PlayInteraction_Type_PLAY, 0, now), "interaction.seq"},
        {mk(1, lagoon_v1_PlayInteraction_Type_TYPE_UNSPECIFIED, 0, now), "interaction.type"},
        {mk(1, 99, 0, now), "interaction.type"},
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 86400001, now), "interaction.position_ms"},
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 100001, now), "interaction.position_ms"}, /* the duration */
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now + 601000), "interaction.client_time_ms"},
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now - 601000), "interaction.client_time_ms"},
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, 0), "interaction.client_time_ms"},
        {mk(1, lagoon_v1_PlayInteraction_Type_RATE, 0, now), "interaction.rate_percent"},
        {mk(1, lagoon_v1_PlayInteraction_Type_PAUSE, 0, now), "interaction.rate_percent"}, /* set below */
        {mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now), "interaction.from_ms"},       /* set below */
        {mk(1, lagoon_v1_PlayInteraction_Type_SEEK, 0, now), "interaction.from_ms"},       /* set below */
    };
    cases[9].x.rate_percent = 100;
    cases[10].x.from_ms = 5;
    cases[11].x.from_ms = 100001;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        EXPECT(record(bob_tok, p, cases[i].x, &ack), LAGOON_INVALID_ARGUMENT, cases[i].field);
    EXPECT(record(bob_tok, 0, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now), &ack), LAGOON_INVALID_ARGUMENT,
           "play_id");
    EXPECT(record(bob_tok, p + 1000, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now), &ack), LAGOON_NOT_FOUND,
           "play_id");
    /* A Report message: every interaction's problem at once, by index; the stream ends there. */
    static lagoon_v1_ReportRequest r;
    memset(&r, 0, sizeof(r));
    r.play_id = p;
    r.interactions_count = 3;
    r.interactions[0] = mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now);
    r.interactions[1] = mk(3, lagoon_v1_PlayInteraction_Type_PAUSE, 0, now);
    r.interactions[2] = mk(3, lagoon_v1_PlayInteraction_Type_SEEK, 0, now);
    r.interactions[2].from_ms = 86400001;
    lagoon_set_token(C, bob_tok);
    lagoon_stream *s;
    assert_int_equal(lagoon_Plays_Report(C, &r, &s), LAGOON_OK);
    assert_int_equal(lagoon_Plays_Report_recv(s, &ack), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    assert_true(test_has_violation(C, "interactions[1].seq"));
    assert_true(test_has_violation(C, "interactions[2].from_ms"));
    assert_false(test_has_violation(C, "interactions[2].seq"));
    /* Out of order client times, against the play's last: refused in the write, named. */
    assert_int_equal(record(bob_tok, p, mk(1, lagoon_v1_PlayInteraction_Type_PLAY, 0, now), &ack), LAGOON_OK);
    EXPECT(record(bob_tok, p, mk(2, lagoon_v1_PlayInteraction_Type_PAUSE, 0, now - 1), &ack), LAGOON_INVALID_ARGUMENT,
           "interaction.client_time_ms");
    memset(&r, 0, sizeof(r));
    r.play_id = p;
    lagoon_set_token(C, bob_tok);
    /* An empty batch names interactions. */
    assert_int_equal(lagoon_Plays_Report(C, &r, &s), LAGOON_OK);
    assert_int_equal(lagoon_Plays_Report_recv(s, &ack), 0);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_INVALID_ARGUMENT);
    assert_true(test_has_violation(C, "interactions"));
}

/* More batches unacknowledged than a stream may have (16): the 17th ends the stream with
 * RESOURCE_EXHAUSTED, after the 16 before it are stored and acknowledged in order. */
static void test_report_window(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 600, 1);
    uint64_t p = play(bob_tok, vid, NULL, "w", 0);
    static lagoon_v1_ReportRequest r;
    test_hold h = TEST_HOLD_INIT;
    test_hold_writer(T, &h); /* nothing commits: every batch stays unacknowledged */
    lagoon_set_token(C, bob_tok);
    lagoon_stream *s = NULL;
    for (uint32_t b = 0; b < 17; b++) {
        memset(&r, 0, sizeof(r));
        r.play_id = p;
        r.interactions_count = 1;
        r.interactions[0] = mk(b + 1, b ? lagoon_v1_PlayInteraction_Type_PROGRESS : lagoon_v1_PlayInteraction_Type_PLAY,
                               b * 1000, T->clock_ms);
        assert_int_equal(b ? lagoon_Plays_Report_send(s, &r) : lagoon_Plays_Report(C, &r, &s), LAGOON_OK);
    }
    usleep(300000); /* the server reads the 17 while the writer is held */
    test_hold_release(&h);
    assert_true(test_hold_wait(&h, &h.done));
    lagoon_v1_PlayAck ack;
    uint32_t n = 0;
    while (n < 20 && lagoon_Plays_Report_recv(s, &ack) == 1) {
        assert_int_equal(ack.first_seq, n + 1);
        assert_int_equal(ack.stored, 1);
        n++;
    }
    assert_int_equal(n, 16);
    assert_int_equal(lagoon_stream_finish(s, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    /* The 17th again: stored. */
    assert_int_equal(record(bob_tok, p, r.interactions[0], &ack), LAGOON_OK);
    assert_int_equal(ack.stored, 1);
    assert_int_equal(ack.next_seq, 18);
}

/* Deleting an account takes its plays, their batches and its positions; the figures stay. */
static void test_account_deleted(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(cat_tok, vid, NULL, "gone", 0);
    static ix x[20];
    viewing(x, 20, T->clock_ms - 60000);
    assert_int_equal(report(C, cat_tok, p, x, 20, 5, NULL, NULL), LAGOON_OK);
    lagoon_v1_VideoPlayStats before, after;
    assert_int_equal(stats(ann_tok, vid, NULL, &before), LAGOON_OK);
    lagoon_v1_DeleteAccountRequest d = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(d.password, sizeof(d.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, cat_tok);
    assert_int_equal(lagoon_Users_DeleteAccount(C, &d, &ue), LAGOON_OK);
    playbook(root_tok, cat, vid, NULL, 100, NULL);
    assert_int_equal(BOOK.batches_count, 0);
    assert_int_equal(history(root_tok, cat, 50, NULL), LAGOON_OK);
    assert_int_equal(HIST.entries_count, 0);
    assert_int_equal(stats(ann_tok, vid, NULL, &after), LAGOON_OK);
    assert_int_equal(after.plays, before.plays);
    assert_int_equal(after.total_watch_ms, before.total_watch_ms);
    assert_true(after.total_watch_ms > 0);
}

static void test_rate_limit(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(bob_tok, vid, NULL, "r", 0); /* 1 of 20 */
    static ix x[25];
    for (uint32_t i = 0; i < 25; i++)
        x[i] = mk(i + 1, lagoon_v1_PlayInteraction_Type_PROGRESS, i, T->clock_ms);
    lagoon_v1_PlayAck acks[4];
    uint32_t n = 0;
    /* The first batch of 10 fits, the second does not: the stream ends with RESOURCE_EXHAUSTED
     * after the first's ack. */
    assert_int_equal(report(C, bob_tok, p, x, 25, 10, acks, &n), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(n, 1);
    assert_int_equal(acks[0].stored, 10);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    /* The others' budgets are their own. */
    uint64_t q = play(cat_tok, vid, NULL, "r", 0);
    lagoon_v1_PlayAck ack;
    assert_int_equal(record(cat_tok, q, x[0], &ack), LAGOON_OK);
    /* A minute later bob goes on. */
    test_clock_advance(T, 61000);
    for (uint32_t i = 0; i < 25; i++)
        x[i].client_time_ms = T->clock_ms;
    assert_int_equal(record(bob_tok, p, x[0], &ack), LAGOON_OK);
}

/* A retry is not refused for budget it already spent: the budget counts only what is not
 * stored yet (20 a minute here). Before, a retried batch counted again and was refused. */
static void test_budget_spares_retries(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 100, 1);
    uint64_t p = play(bob_tok, vid, NULL, "rr", 0); /* 1 of 20 */
    lagoon_v1_Play again;
    assert_int_equal(start_play(bob_tok, vid, NULL, "rr", 0, 0, &again), LAGOON_OK); /* a retried Start: free */
    assert_int_equal(again.id, p);
    static ix x[25];
    for (uint32_t i = 0; i < 25; i++)
        x[i] = mk(i + 1, lagoon_v1_PlayInteraction_Type_PROGRESS, i * 1000, T->clock_ms);
    lagoon_v1_PlayAck acks[4], ack;
    uint32_t n = 0;
    assert_int_equal(report(C, bob_tok, p, x, 15, 15, acks, &n), LAGOON_OK); /* 16 of 20 */
    assert_int_equal(acks[0].stored, 15);
    /* The same batch again on a new connection (its ack was lost), and a Record of a stored one. */
    lagoon_client *c2 = test_client(T);
    assert_int_equal(report(c2, bob_tok, p, x, 15, 15, acks, &n), LAGOON_OK);
    lagoon_close(c2);
    assert_int_equal(n, 1);
    assert_int_equal(acks[0].duplicates, 15);
    assert_int_equal(acks[0].stored, 0);
    assert_int_equal(record(bob_tok, p, x[3], &ack), LAGOON_OK);
    assert_int_equal(ack.duplicates, 1);
    /* An overlapping batch pays for its new part only: 5 stored, 4 new, 20 of 20. */
    assert_int_equal(report(C, bob_tok, p, x + 10, 9, 9, acks, &n), LAGOON_OK);
    assert_int_equal(acks[0].duplicates, 5);
    assert_int_equal(acks[0].stored, 4);
    /* The budget is spent for new interactions, and still not for retries. */
    EXPECT(record(bob_tok, p, x[19], &ack), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_int_equal(record(bob_tok, p, x[18], &ack), LAGOON_OK);
    assert_int_equal(ack.duplicates, 1);
    assert_int_equal(ack.next_seq, 20);
}

/* A batch stored before a restart is a duplicate after it: the sequence numbers are rows. */
static void test_retry_after_restart(void **state)
{
    (void)state;
    uint64_t vid = video(ann_tok, 600, 1);
    uint64_t p = play(bob_tok, vid, NULL, "boot", 0);
    static ix x[20];
    viewing(x, 20, T->clock_ms - 60000);
    lagoon_v1_PlayAck acks[4];
    memset(acks, 0, sizeof(acks));
    uint32_t n = 0;
    assert_int_equal(report(C, bob_tok, p, x, 10, 10, acks, &n), LAGOON_OK);
    assert_int_equal(acks[0].stored, 10);
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
    assert_int_equal(report(C, bob_tok, p, x, 20, 10, acks, &n), LAGOON_OK);
    assert_int_equal(n, 2);
    assert_int_equal(acks[0].duplicates, 10);
    assert_int_equal(acks[0].stored, 0);
    assert_int_equal(acks[1].stored, 10);
    assert_int_equal(acks[1].next_seq, 21);
    assert_int_equal(acks[1].watched_ms, 19000);
    lagoon_v1_VideoPlayStats s;
    assert_int_equal(stats(ann_tok, vid, NULL, &s), LAGOON_OK);
    assert_int_equal(s.total_watch_ms, 19000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_figures_match_recomputation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_boundaries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_settings, setup_resume, teardown),
        cmocka_unit_test_setup_teardown(test_retries_store_nothing_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_access, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_report_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_account_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup_limited, teardown),
        cmocka_unit_test_setup_teardown(test_budget_spares_retries, setup_limited, teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
