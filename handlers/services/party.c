/* Party service: watch parties (party.h has the model and the limits; docs/API.md the client's
 * side). Threads: commands arrive on the loop threads of their streams; the durable writes
 * complete on the store's writer, which sends the changes out. One mutex (party_state.mu)
 * guards every party and stream; no store write runs under it (store_submit only queues). */
#include "party.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "log.h"
#include "scheduler.h"
#include "videos.h"

/* Buckets of the stream table (calls -> streams): a power of two. */
#define PARTY_STREAM_BUCKETS 1024
/* How long stop waits for the writes still queued (their completions touch the parties). */
#define PARTY_STOP_WAIT_MS 10000

typedef struct party party;

/* One member's Join stream, in the call's own memory (rpc_call_alloc). */
typedef struct party_stream {
    rpc_call *call;
    struct party_stream *next_in_bucket;
    party *p;          /* NULL once detached (the call is being finished) */
    uint64_t user_id;
    double tokens;     /* the command bucket */
    int64_t refill_at; /* server time the bucket was last refilled */
    int64_t report_at; /* server time of the last accepted position report (0: none) */
} party_stream;

typedef struct party_member {
    lagoon_v1_PartyMember m; /* as members see it */
    party_stream *stream;    /* NULL: not present */
} party_member;

struct party {
    party *next;
    lagoon_v1_PartyState st;
    lagoon_v1_PartyItem *items; /* st.queue_count of them */
    party_member *members;
    uint32_t nmembers, cap;
    int pending; /* snapshots submitted and not yet done */
    int gone;    /* ended (or dropped): freed when pending is 0; a Join of it waits until then */
    int dropped; /* gone without ending: a change could not be stored (party_drop) */
};

typedef struct party_state {
    pthread_mutex_t mu;
    pthread_cond_t idle; /* signalled when a snapshot completes */
    app *a;
    party *parties;
    int pending; /* every party's */
    party_stream *buckets[PARTY_STREAM_BUCKETS];
} party_state;

/* A change as stored and sent: the party's state at that version, and the member that changed. */
typedef struct party_snapshot {
    party_state *ps;
    party *p;
    lagoon_v1_PartyState st;
    int end;                   /* the party ended: its rows go */
    int member_op;             /* SNAP_MEMBER_* */
    lagoon_v1_PartyMember member;
    uint64_t joiner;           /* this member just joined: it gets the whole state */
    int row_gone;              /* set by the write: the party's row is gone (its group or its
                                * starter was deleted, or its grace job ended it) */
} party_snapshot;

enum { SNAP_MEMBER_NONE = 0, SNAP_MEMBER_PUT, SNAP_MEMBER_DELETE };

static party_state *state_of(const app *a)
{
    return app_state(a, &party_module);
}

/* ---- the model ------------------------------------------------------------------------------ */

static uint32_t item_duration(const party *p)
{
    return p->st.index < p->st.queue_count ? p->items[p->st.index].duration_ms : 0;
}

int64_t party_position_at(const lagoon_v1_PartyState *s, int64_t t)
{
    if (!s->playing || t <= s->position_at)
        return s->position_ms;
    double moved = (double)(t - s->position_at) * s->rate; /* rounded to the nearest ms */
    return s->position_ms + (int64_t)(moved + 0.5);
}

/* The position at t, within the current item. */
static int64_t position(const party *p, int64_t t)
{
    int64_t pos = party_position_at(&p->st, t);
    int64_t end = item_duration(p);
    return pos < 0 ? 0 : pos > end ? end : pos;
}

static party_member *member_of(party *p, uint64_t user_id)
{
    for (uint32_t i = 0; i < p->nmembers; i++)
        if (p->members[i].m.user_id == user_id)
            return &p->members[i];
    return NULL;
}

/* How far ahead a start is scheduled (party.h). */
static int64_t start_lead(const party *p)
{
    uint32_t rtt = 0;
    for (uint32_t i = 0; i < p->nmembers; i++)
        if (p->members[i].m.present && p->members[i].m.rtt_ms > rtt)
            rtt = p->members[i].m.rtt_ms;
    int64_t lead = (int64_t)rtt + PARTY_START_MARGIN_MS;
    return lead < PARTY_START_LEAD_MIN_MS ? PARTY_START_LEAD_MIN_MS : lead;
}

static int all_ready(const party *p)
{
    for (uint32_t i = 0; i < p->nmembers; i++)
        if (p->members[i].m.present && !p->members[i].m.ready)
            return 0;
    return 1;
}

static void start_playing(party *p, int64_t now)
{
    p->st.position_ms = position(p, now);
    p->st.position_at = now + start_lead(p);
    p->st.playing = true;
    p->st.waiting = false;
}

static void stop_at(party *p, int64_t now)
{
    p->st.position_ms = position(p, now);
    p->st.position_at = now;
    p->st.playing = false;
}

/* WAIT_FOR_EVERYONE: hold a playing party while someone is not ready; resume when all are. */
static void apply_policy(party *p, int64_t now)
{
    if (p->st.policy != lagoon_v1_PartyState_Policy_WAIT_FOR_EVERYONE) {
        if (p->st.waiting)
            start_playing(p, now);
        return;
    }
    if (p->st.playing && !all_ready(p)) {
        stop_at(p, now);
        p->st.waiting = true;
    } else if (p->st.waiting && all_ready(p)) {
        start_playing(p, now);
    }
}

/* The present member that has been present longest hosts. */
static void pick_host(party *p)
{
    const party_member *best = NULL;
    for (uint32_t i = 0; i < p->nmembers; i++) {
        const party_member *m = &p->members[i];
        if (m->m.present && (best == NULL || m->m.present_since < best->m.present_since))
            best = m;
    }
    if (best)
        p->st.host_id = best->m.user_id;
}

static int may_control(const party *p, uint64_t user_id)
{
    if (!p->st.control_restricted || user_id == p->st.starter_id)
        return 1;
    for (pb_size_t i = 0; i < p->st.controllers_count; i++)
        if (p->st.controllers[i] == user_id)
            return 1;
    return 0;
}

/* ---- frames ----------------------------------------------------------------------------------- */

static void send_frame(party_state *ps, party_stream *s, lagoon_v1_PartyServerFrame *f)
{
    f->server_time = app_now(ps->a);
    rpc_call_send(s->call, f);
}

static void send_state(party_state *ps, party_stream *s, const lagoon_v1_PartyState *st)
{
    lagoon_v1_PartyServerFrame f = lagoon_v1_PartyServerFrame_init_zero;
    f.which_body = lagoon_v1_PartyServerFrame_state_tag;
    f.body.state = *st;
    send_frame(ps, s, &f);
}

static void send_member(party_state *ps, party_stream *s, const lagoon_v1_PartyMember *m, int left)
{
    lagoon_v1_PartyServerFrame f = lagoon_v1_PartyServerFrame_init_zero;
    f.which_body = left ? lagoon_v1_PartyServerFrame_left_tag : lagoon_v1_PartyServerFrame_member_tag;
    f.body.member = *m; /* member and left are the same type, in the same union */
    send_frame(ps, s, &f);
}

/* A refusal; the stream stays open. A stale command's is followed by the current state. */
static void refuse(party_state *ps, party_stream *s, int code, const char *field, uint32_t retry_ms, const char *fmt,
                   ...) __attribute__((format(printf, 6, 7)));
static void refuse(party_state *ps, party_stream *s, int code, const char *field, uint32_t retry_ms, const char *fmt,
                   ...)
{
    lagoon_v1_PartyServerFrame f = lagoon_v1_PartyServerFrame_init_zero;
    f.which_body = lagoon_v1_PartyServerFrame_refusal_tag;
    lagoon_v1_PartyRefusal *r = &f.body.refusal;
    r->code = (uint32_t)code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    if (field)
        APP_STRCPY(r->field, field);
    r->version = s->p ? s->p->st.version : 0;
    r->retry_after_ms = retry_ms;
    send_frame(ps, s, &f);
    if (code == LAGOON_ABORTED && s->p)
        send_state(ps, s, &s->p->st);
}

/* ---- the stream table ---------------------------------------------------------------------- */

static size_t bucket_of(const rpc_call *call)
{
    uintptr_t v = (uintptr_t)call;
    return (size_t)((v >> 4) ^ (v >> 14)) & (PARTY_STREAM_BUCKETS - 1);
}

static party_stream *stream_find(party_state *ps, const rpc_call *call)
{
    for (party_stream *s = ps->buckets[bucket_of(call)]; s; s = s->next_in_bucket)
        if (s->call == call)
            return s;
    return NULL;
}

static void stream_remove(party_state *ps, party_stream *s)
{
    party_stream **pp = &ps->buckets[bucket_of(s->call)];
    while (*pp && *pp != s)
        pp = &(*pp)->next_in_bucket;
    if (*pp)
        *pp = s->next_in_bucket;
}

/* Detaches s from its party and the table: after this only its finish may touch the call. */
static void stream_detach(party_state *ps, party_stream *s)
{
    if (s->p) {
        party_member *m = member_of(s->p, s->user_id);
        if (m && m->stream == s)
            m->stream = NULL;
    }
    s->p = NULL;
    stream_remove(ps, s);
}

/* ---- storing and sending a change ------------------------------------------------------------- */

static int member_row_find(store_txn *t, uint64_t party_id, uint64_t user_id, lagoon_v1_PartyMemberRow *row,
                           store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, party_id);
    store_key_u64(&k, user_id);
    return store_get_by(t, &lagoon_table_party_members, lagoon_index_party_members_by_party_user, &k, NULL, row, err);
}

static int publish_ended(store_txn *t, const app *a, uint64_t party_id, uint64_t group_id, store_error *err)
{
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* an Event can hold a whole message */
    if (ev == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    ev->which_payload = lagoon_v1_Event_party_ended_tag;
    ev->payload.party_ended.party_id = party_id;
    ev->payload.party_ended.group_id = group_id;
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, group_id};
    int st = events_topic_publish(t, a, &tp, ev, err);
    free(ev);
    return st;
}

/* The party's grace job (PARTY_GRACE): due when the party has had nobody present for
 * PARTY_GRACE_MS. now is the write's time. */
static int grace_put(store_txn *t, int64_t now, uint64_t party_id, int64_t due_at, store_error *err)
{
    return sched_put(t, now, lagoon_v1_JobKind_PARTY_GRACE, party_id, 0, due_at, err);
}

/* Reads only the snapshot (and sets row_gone): a replay redoes the same. A party whose row is
 * gone stores nothing. The grace job moves when the party becomes empty; while members are
 * present it stays where it is and, when it runs, looks again a grace period later. */
static int snapshot_write(store_txn *t, void *arg, store_error *err)
{
    party_snapshot *snap = arg;
    lagoon_v1_PartyState old;
    snap->row_gone = 0;
    int st = store_get(t, &lagoon_table_parties, snap->st.id, &old, err);
    if (st == LAGOON_NOT_FOUND) {
        snap->row_gone = 1;
        return LAGOON_OK;
    }
    if (st != LAGOON_OK)
        return st;
    if (snap->end) {
        st = store_delete(t, &lagoon_table_parties, snap->st.id, err); /* items and members cascade */
        if (st == LAGOON_OK)
            st = sched_cancel(t, lagoon_v1_JobKind_PARTY_GRACE, snap->st.id, 0, err);
        return st == LAGOON_OK ? publish_ended(t, snap->ps->a, snap->st.id, snap->st.group_id, err) : st;
    }
    st = store_update(t, &lagoon_table_parties, &snap->st, err);
    if (st == LAGOON_OK && snap->st.members_present == 0 &&
        (old.members_present != 0 || old.empty_since != snap->st.empty_since))
        st = grace_put(t, snap->st.changed_at, snap->st.id, snap->st.empty_since + PARTY_GRACE_MS, err);
    if (st != LAGOON_OK || snap->member_op == SNAP_MEMBER_NONE)
        return st;
    lagoon_v1_PartyMemberRow row = lagoon_v1_PartyMemberRow_init_zero;
    st = member_row_find(t, snap->st.id, snap->member.user_id, &row, err);
    if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
        return st;
    int found = st == LAGOON_OK;
    if (snap->member_op == SNAP_MEMBER_DELETE)
        return found ? store_delete(t, &lagoon_table_party_members, row.id, err) : LAGOON_OK;
    row.party_id = snap->st.id;
    row.user_id = snap->member.user_id;
    row.has_member = true;
    row.member = snap->member;
    row.member.reported_position_ms = 0; /* reports are not stored */
    row.member.reported_at = 0;
    if (found)
        return store_update(t, &lagoon_table_party_members, &row, err);
    st = store_insert(t, &lagoon_table_party_members, &row, NULL, err);
    /* NOT_FOUND: the member's account was deleted while it was in the party (its rows went with
     * it): it gets no row, and the party's state is stored all the same (a failed insert leaves
     * nothing behind). */
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

static void party_free(party *p)
{
    free(p->items);
    free(p->members);
    free(p);
}

static void party_unlink(party_state *ps, party *p)
{
    party **pp = &ps->parties;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
}

/* The whole state, to a member that just joined: the queue, the members, then the state. */
static void send_everything(party_state *ps, party *p, party_stream *s, const lagoon_v1_PartyState *st)
{
    lagoon_v1_PartyServerFrame *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        send_state(ps, s, st);
        return;
    }
    for (uint32_t i = 0; i < p->st.queue_count; i++) {
        memset(f, 0, sizeof(*f));
        f->which_body = lagoon_v1_PartyServerFrame_item_tag;
        f->body.item = p->items[i];
        f->item_index = i;
        send_frame(ps, s, f);
    }
    free(f);
    for (uint32_t i = 0; i < p->nmembers; i++)
        send_member(ps, s, &p->members[i].m, 0);
    send_state(ps, s, st);
}

/* Ends every stream of p with status. ps->mu held. */
static void finish_streams(party_state *ps, party *p, int status)
{
    for (uint32_t i = 0; i < p->nmembers; i++) {
        party_stream *s = p->members[i].stream;
        if (s == NULL)
            continue;
        rpc_call *call = s->call;
        stream_detach(ps, s);
        rpc_call_finish(call, status);
    }
}

/* Drops p from memory without ending it: a change could not be stored, so every stream ends
 * (UNAVAILABLE: reconnect) rather than keep a state the store does not have, and the next Join
 * reads the party back as stored (refused with UNAVAILABLE while p's writes are pending).
 * ps->mu held; p is freed here, or by its last pending write. */
static void party_drop_streams(party_state *ps, party *p)
{
    p->gone = 1;
    p->dropped = 1;
    finish_streams(ps, p, LAGOON_UNAVAILABLE);
}

static void party_drop(party_state *ps, party *p)
{
    party_drop_streams(ps, p);
    if (p->pending == 0) {
        party_unlink(ps, p);
        party_free(p);
    }
}

/* Sends snap to the party's streams (when `send`: it is durable) and finishes them when it
 * ended; counts the write done. ps->mu held. 1 if that freed the party (gone, nothing pending). */
static int snapshot_deliver(party_state *ps, party_snapshot *snap, int send)
{
    party *p = snap->p;
    for (uint32_t i = 0; send && i < p->nmembers; i++) {
        party_stream *s = p->members[i].stream;
        if (s == NULL)
            continue;
        if (s->user_id == snap->joiner && !snap->end) {
            send_everything(ps, p, s, &snap->st);
            continue;
        }
        if (snap->member_op != SNAP_MEMBER_NONE)
            send_member(ps, s, &snap->member, snap->member_op == SNAP_MEMBER_DELETE);
        send_state(ps, s, &snap->st);
    }
    if (snap->end && send)
        finish_streams(ps, p, LAGOON_OK);
    p->pending--;
    ps->pending--;
    pthread_cond_broadcast(&ps->idle);
    if (p->gone && p->pending == 0) {
        party_unlink(ps, p);
        party_free(p);
        return 1;
    }
    return 0;
}

static void snapshot_done(void *arg, int status, const store_error *err)
{
    party_snapshot *snap = arg;
    party_state *ps = snap->ps;
    if (status != LAGOON_OK)
        log_msg(LOG_ERROR, "party %llu: version %llu not stored: %s", (unsigned long long)snap->st.id,
                (unsigned long long)snap->st.version, err ? err->message : "");
    pthread_mutex_lock(&ps->mu);
    party *p = snap->p;
    if (status != LAGOON_OK) {
        party_drop_streams(ps, p); /* freed by the deliver below once nothing is pending */
    } else if (snap->row_gone && !p->gone) { /* deleted under it: it ends for its members too */
        p->gone = 1;
        p->st.ended = true;
        snap->end = 1;
        snap->st.ended = true;
    }
    if (!snapshot_deliver(ps, snap, status == LAGOON_OK) && p->pending == 0 && p->st.members_present == 0) {
        /* Nobody connected and every change stored: the next Join reads it back. */
        party_unlink(ps, p);
        party_free(p);
    }
    pthread_mutex_unlock(&ps->mu);
    free(snap);
}

/* The party changed: the next version, stored and then sent (never before it is durable). m
 * (may be NULL) is the member that changed (op SNAP_MEMBER_*). ps->mu held. 0 when the change is
 * on its way (an ended p may be freed by then); -1 when it could not be queued: p was dropped
 * (party_drop; it may be freed). */
static int party_changed(party_state *ps, party *p, int64_t now, const party_member *m, int op, uint64_t joiner)
{
    p->st.version++;
    p->st.changed_at = now;
    party_snapshot *snap = calloc(1, sizeof(*snap));
    if (snap == NULL) {
        log_msg(LOG_ERROR, "party %llu: out of memory for version %llu", (unsigned long long)p->st.id,
                (unsigned long long)p->st.version);
        party_drop(ps, p);
        return -1;
    }
    snap->ps = ps;
    snap->p = p;
    snap->st = p->st;
    snap->end = p->st.ended;
    snap->member_op = m ? op : SNAP_MEMBER_NONE;
    if (m)
        snap->member = m->m;
    snap->joiner = joiner;
    p->pending++;
    ps->pending++;
    store_error err;
    int st = store_submit(ps->a->db, snapshot_write, snap, snapshot_done, snap, &err);
    if (st != LAGOON_OK) { /* the queue is full: nothing is sent that is not stored */
        log_msg(LOG_WARN, "party %llu: version %llu not stored: %s", (unsigned long long)p->st.id,
                (unsigned long long)p->st.version, err.message);
        p->pending--;
        ps->pending--;
        free(snap);
        party_drop(ps, p);
        return -1;
    }
    return 0;
}

/* A controller's end (or its grace period passed at a Join): on failure party_changed dropped
 * p, whose rows stay, and a later Join or its grace job ends it. */
static void party_end(party_state *ps, party *p, int64_t now)
{
    p->st.ended = true;
    p->gone = 1;
    (void)party_changed(ps, p, now, NULL, SNAP_MEMBER_NONE, 0);
}

/* ---- loading ------------------------------------------------------------------------------------ */

typedef struct load_ctx {
    party *p;
    int status;
} load_ctx;

static int load_item(void *arg, uint64_t id, const void *row)
{
    (void)id;
    load_ctx *c = arg;
    const lagoon_v1_PartyItemRow *r = row;
    if (r->pos < c->p->st.queue_count)
        c->p->items[r->pos] = r->item;
    return LAGOON_OK;
}

static int load_member(void *arg, uint64_t id, const void *row)
{
    (void)id;
    load_ctx *c = arg;
    const lagoon_v1_PartyMemberRow *r = row;
    party *p = c->p;
    if (p->nmembers == p->cap)
        return LAGOON_OK; /* never more than PARTY_MEMBERS_MAX were stored */
    party_member *m = &p->members[p->nmembers++];
    memset(m, 0, sizeof(*m));
    m->m = r->member;
    m->m.present = false; /* nobody is connected to a party read back */
    m->m.rtt_ms = 0;
    return LAGOON_OK;
}

/* Every page of q through fn. */
static int scan_all(store_txn *t, store_query *q, store_row_fn fn, void *arg, uint32_t max_pages, store_error *err)
{
    store_page page;
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    q->page_size = STORE_PAGE_SIZE_MAX;
    for (uint32_t i = 0; i < max_pages; i++) {
        q->page_token = token;
        int st = store_scan(t, q, fn, arg, &page, err);
        if (st != LAGOON_OK || page.next_page_token[0] == '\0')
            return st;
        APP_STRCPY(token, page.next_page_token);
    }
    return LAGOON_OK;
}

/* The stored party row st, with its items and members, as a live party (not yet linked). */
static int party_load(store_txn *t, const lagoon_v1_PartyState *st, int64_t now, party **out, store_error *err)
{
    party *p = calloc(1, sizeof(*p));
    uint32_t n = st->queue_count ? st->queue_count : 1;
    if (p == NULL || (p->items = calloc(n, sizeof(*p->items))) == NULL ||
        (p->members = calloc(PARTY_MEMBERS_MAX, sizeof(*p->members))) == NULL) {
        if (p)
            party_free(p);
        (void)store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        return LAGOON_RESOURCE_EXHAUSTED;
    }
    p->cap = PARTY_MEMBERS_MAX;
    p->st = *st;
    p->st.members_present = 0;
    if (p->st.empty_since == 0)
        p->st.empty_since = now; /* read back after a restart: the grace period starts now */
    load_ctx c = {p, LAGOON_OK};
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, st->id);
    store_query q = {.table = &lagoon_table_party_items, .index = lagoon_index_party_items_by_party_pos,
                     .prefix = k.buf, .prefix_len = k.len};
    uint32_t pages = PARTY_QUEUE_MAX / STORE_PAGE_SIZE_MAX + 2;
    int rc = scan_all(t, &q, load_item, &c, pages, err);
    store_query qm = {.table = &lagoon_table_party_members, .index = lagoon_index_party_members_by_party_user,
                      .prefix = k.buf, .prefix_len = k.len};
    if (rc == LAGOON_OK)
        rc = scan_all(t, &qm, load_member, &c, PARTY_MEMBERS_MAX / STORE_PAGE_SIZE_MAX + 2, err);
    if (rc != LAGOON_OK) {
        party_free(p);
        return rc;
    }
    *out = p;
    return LAGOON_OK;
}

/* The party in memory, gone or not (there is never more than one: a Join of a gone one waits). */
static party *party_find(party_state *ps, uint64_t id)
{
    for (party *p = ps->parties; p; p = p->next)
        if (p->st.id == id)
            return p;
    return NULL;
}

static int expired(const lagoon_v1_PartyState *st, int64_t now)
{
    return st->members_present == 0 && st->empty_since != 0 && now - st->empty_since >= PARTY_GRACE_MS;
}

/* ---- presence ---------------------------------------------------------------------------------- */

/* Member m is no longer present (disconnected, or leaving when `leaving`). ps->mu held. */
static void member_gone(party_state *ps, party *p, party_member *m, int leaving, int64_t now)
{
    if (m->m.present) {
        m->m.present = false;
        p->st.members_present--;
    }
    m->stream = NULL;
    if (p->st.members_present == 0)
        p->st.empty_since = now;
    if (p->st.host_id == m->m.user_id)
        pick_host(p);
    apply_policy(p, now); /* the one not ready may have been the one who left */
    lagoon_v1_PartyMember gone = m->m;
    if (leaving) {
        *m = p->members[--p->nmembers];
        p->members[p->nmembers].stream = NULL;
        party_member tmp = {.m = gone};
        party_changed(ps, p, now, &tmp, SNAP_MEMBER_DELETE, 0);
        return;
    }
    party_member tmp = {.m = gone};
    party_changed(ps, p, now, &tmp, SNAP_MEMBER_PUT, 0);
}

static void join_cancelled(rpc_call *call, void *arg)
{
    party_stream *s = arg;
    party_state *ps = state_of(app_of(call));
    pthread_mutex_lock(&ps->mu);
    party *p = s->p;
    if (p) {
        party_member *m = member_of(p, s->user_id);
        stream_detach(ps, s);
        if (m)
            member_gone(ps, p, m, 0, app_now(ps->a));
    }
    pthread_mutex_unlock(&ps->mu);
    /* Detached already: whoever detached it (an end, a drain, a newer Join) finished it while
     * this callback waited for the lock. */
    if (p)
        rpc_call_finish(call, LAGOON_CANCELLED);
}

/* ---- Join: the first frame ------------------------------------------------------------------------ */

static int join_first(rpc_call *call, const lagoon_v1_PartyClientFrame *req)
{
    if (req->which_command != lagoon_v1_PartyClientFrame_join_tag)
        return rpc_call_violation(call, "join", "the first frame of Party/Join must be join");
    uint64_t party_id = req->command.join.party_id;
    if (party_id == 0)
        return rpc_call_violation(call, "join.party_id", "is required");
    app *a = app_of(call);
    party_state *ps = state_of(a);
    const rpc_caller *who = rpc_call_caller(call);
    party_stream *s = rpc_call_alloc(call, sizeof(*s), NULL);
    if (s == NULL)
        return app_out_of_memory(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(a->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    lagoon_v1_PartyState row;
    st = store_get(t, &lagoon_table_parties, party_id, &row, &err);
    if (st == LAGOON_NOT_FOUND)
        st = store_fail(&err, LAGOON_NOT_FOUND, "join.party_id", "no party %llu", (unsigned long long)party_id);
    if (st == LAGOON_OK) /* non-members of the group see no party at all */
        st = groups_active_member(t, who, row.group_id, "join.party_id", NULL, &err);
    if (st == LAGOON_NOT_FOUND)
        st = store_fail(&err, LAGOON_NOT_FOUND, "join.party_id", "no party %llu", (unsigned long long)party_id);
    int64_t now = app_now(a);
    pthread_mutex_lock(&ps->mu);
    party *p = st == LAGOON_OK ? party_find(ps, party_id) : NULL;
    if (p && p->gone) { /* its end (or its drop) is still being written: not read back meanwhile */
        st = p->dropped ? LAGOON_UNAVAILABLE : LAGOON_NOT_FOUND;
        if (p->dropped)
            (void)store_fail(&err, st, NULL, "party %llu is being stored; retry", (unsigned long long)party_id);
        else
            (void)store_fail(&err, st, "join.party_id", "party %llu has ended", (unsigned long long)party_id);
        p = NULL;
    }
    if (st == LAGOON_OK && p == NULL) {
        st = party_load(t, &row, now, &p, &err);
        if (st == LAGOON_OK) {
            p->next = ps->parties;
            ps->parties = p;
        }
    }
    store_read_end(t);
    if (st == LAGOON_OK && expired(&p->st, now)) {
        party_end(ps, p, now); /* p may be gone */
        p = NULL;
        (void)store_fail(&err, LAGOON_NOT_FOUND, "join.party_id", "party %llu has ended", (unsigned long long)party_id);
        st = LAGOON_NOT_FOUND;
    }
    party_member *m = st == LAGOON_OK ? member_of(p, who->user_id) : NULL;
    uint32_t cap = a->cfg.party_members_max && a->cfg.party_members_max < PARTY_MEMBERS_MAX ? a->cfg.party_members_max
                                                                                          : PARTY_MEMBERS_MAX;
    if (st == LAGOON_OK && m == NULL && p->nmembers >= cap)
        st = store_fail(&err, LAGOON_RESOURCE_EXHAUSTED, NULL, "the party has %u members, the most it may have",
                        (unsigned)cap);
    if (st != LAGOON_OK) {
        pthread_mutex_unlock(&ps->mu);
        return app_store_error(call, st, &err);
    }
    if (m == NULL) {
        m = &p->members[p->nmembers++];
        memset(m, 0, sizeof(*m));
        m->m.user_id = who->user_id;
        m->m.joined_at = now;
    } else if (m->stream) { /* joined again (another device, a reconnect the server missed) */
        party_stream *old = m->stream;
        rpc_call *oc = old->call;
        stream_detach(ps, old);
        refuse(ps, old, LAGOON_ABORTED, NULL, 0, "joined again from another stream");
        rpc_call_finish(oc, LAGOON_ABORTED);
        if (m->m.present) {
            m->m.present = false;
            p->st.members_present--;
        }
    }
    s->call = call;
    s->p = p;
    s->user_id = who->user_id;
    s->tokens = PARTY_COMMANDS_BURST;
    s->refill_at = now;
    s->next_in_bucket = ps->buckets[bucket_of(call)];
    ps->buckets[bucket_of(call)] = s;
    m->stream = s;
    m->m.present = true;
    m->m.present_since = now;
    m->m.ready = false; /* loading until it says ready */
    m->m.rtt_ms = 0;
    p->st.members_present++;
    p->st.empty_since = 0;
    if (p->st.host_id == 0 || member_of(p, p->st.host_id) == NULL || !member_of(p, p->st.host_id)->m.present)
        pick_host(p);
    apply_policy(p, now);
    party_changed(ps, p, now, m, SNAP_MEMBER_PUT, who->user_id);
    rpc_call_on_cancel(call, join_cancelled, s);
    pthread_mutex_unlock(&ps->mu);
    return RPC_PENDING;
}

/* ---- Join: commands ------------------------------------------------------------------------------- */

/* Takes a token of s's bucket: 1, or 0 with the refusal sent. */
static int spend(party_state *ps, party_stream *s, int64_t now)
{
    if (now > s->refill_at) {
        s->tokens += (double)(now - s->refill_at) * PARTY_COMMANDS_PER_SECOND / 1000.0;
        if (s->tokens > PARTY_COMMANDS_BURST)
            s->tokens = PARTY_COMMANDS_BURST;
        s->refill_at = now;
    }
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        return 1;
    }
    uint32_t wait = (uint32_t)((1.0 - s->tokens) * 1000.0 / PARTY_COMMANDS_PER_SECOND) + 1;
    refuse(ps, s, LAGOON_RESOURCE_EXHAUSTED, NULL, wait, "more than %d commands a second; retry in %u ms",
           PARTY_COMMANDS_PER_SECOND, (unsigned)wait);
    return 0;
}

static void pong(party_state *ps, party_stream *s, const lagoon_v1_PartyPing *ping, int64_t received)
{
    party_member *m = member_of(s->p, s->user_id);
    if (ping->rtt_ms > PARTY_RTT_MAX_MS) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "ping.rtt_ms", 0, "must be at most %d", PARTY_RTT_MAX_MS);
        return;
    }
    if (m && ping->rtt_ms)
        m->m.rtt_ms = ping->rtt_ms;
    lagoon_v1_PartyServerFrame f = lagoon_v1_PartyServerFrame_init_zero;
    f.which_body = lagoon_v1_PartyServerFrame_pong_tag;
    f.body.pong.client_time = ping->client_time;
    f.body.pong.received_at = received;
    f.body.pong.version = s->p->st.version;
    f.body.pong.sent_at = app_now(ps->a);
    send_frame(ps, s, &f);
}

/* A position report: kept for the member list, and checked for drift. */
static void report(party_state *ps, party_stream *s, const lagoon_v1_PartyReport *r, int64_t now)
{
    party *p = s->p;
    if (s->report_at && now - s->report_at < PARTY_REPORT_INTERVAL_MS) {
        uint32_t wait = (uint32_t)(PARTY_REPORT_INTERVAL_MS - (now - s->report_at));
        refuse(ps, s, LAGOON_RESOURCE_EXHAUSTED, "report", wait, "at most one position report every %d ms",
               PARTY_REPORT_INTERVAL_MS);
        return;
    }
    if (r->position_ms < 0 || r->position_ms > (int64_t)item_duration(p)) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "report.position_ms", 0, "must be within the item (0..%u ms)",
               (unsigned)item_duration(p));
        return;
    }
    s->report_at = now;
    party_member *m = member_of(p, s->user_id);
    if (m == NULL)
        return;
    m->m.reported_position_ms = r->position_ms;
    m->m.reported_at = r->measured_at;
    /* measured_at is any int64 from the wire: compared with bounds around now, never
     * subtracted from it (that could overflow) */
    if (!p->st.playing || !m->m.ready || r->measured_at < p->st.position_at ||
        r->measured_at < now - PARTY_REPORT_MAX_AGE_MS || r->measured_at > now + PARTY_REPORT_MAX_AGE_MS)
        return; /* nothing to compare with */
    int64_t drift = r->position_ms - position(p, r->measured_at);
    int64_t mag = drift < 0 ? -drift : drift;
    if (mag <= (int64_t)p->st.rate_threshold_ms)
        return;
    lagoon_v1_PartyServerFrame f = lagoon_v1_PartyServerFrame_init_zero;
    f.which_body = lagoon_v1_PartyServerFrame_correction_tag;
    lagoon_v1_PartyCorrection *c = &f.body.correction;
    c->drift_ms = drift;
    c->version = p->st.version;
    if (mag > (int64_t)p->st.seek_threshold_ms) {
        c->kind = lagoon_v1_PartyCorrection_Kind_SEEK;
    } else {
        /* Jellyfin's SpeedToSync: lose (or make up) the drift over PARTY_RATE_CORRECTION_MS. */
        double rate = p->st.rate * (1.0 - (double)drift / PARTY_RATE_CORRECTION_MS);
        c->kind = lagoon_v1_PartyCorrection_Kind_RATE;
        c->rate = rate < PARTY_RATE_MIN ? PARTY_RATE_MIN : rate > PARTY_RATE_MAX ? PARTY_RATE_MAX : rate;
        c->duration_ms = PARTY_RATE_CORRECTION_MS;
    }
    send_frame(ps, s, &f);
}

/* A command that needs control: 1, or 0 with PERMISSION_DENIED sent. */
static int controls(party_state *ps, party_stream *s, const char *field)
{
    if (may_control(s->p, s->user_id))
        return 1;
    refuse(ps, s, LAGOON_PERMISSION_DENIED, field, 0, "only the party's controllers may %s", field);
    return 0;
}

/* A command based on a version older than `since` (the last change of what it acts on) is
 * stale: refused with ABORTED and the state. 1 if it may go on. */
static int fresh(party_state *ps, party_stream *s, uint64_t base, uint64_t since, const char *what)
{
    if (base >= since)
        return 1;
    refuse(ps, s, LAGOON_ABORTED, NULL, 0, "stale: %s changed at version %llu, after version %llu", what,
           (unsigned long long)since, (unsigned long long)base);
    return 0;
}

static void set_item(party *p, uint32_t index, int64_t now)
{
    p->st.index = index;
    p->st.position_ms = 0;
    p->st.position_at = p->st.playing ? now + start_lead(p) : now;
    p->st.index_version = p->st.position_version = p->st.version + 1;
}

static int settings(party_state *ps, party_stream *s, const lagoon_v1_PartySettings *r, int64_t now)
{
    party *p = s->p;
    uint32_t seek = r->seek_threshold_ms ? r->seek_threshold_ms : p->st.seek_threshold_ms;
    uint32_t rate = r->rate_threshold_ms ? r->rate_threshold_ms : p->st.rate_threshold_ms;
    if (r->policy != lagoon_v1_PartyState_Policy_POLICY_UNSPECIFIED &&
        r->policy != lagoon_v1_PartyState_Policy_DONT_WAIT && r->policy != lagoon_v1_PartyState_Policy_WAIT_FOR_EVERYONE) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "settings.policy", 0, "must be DONT_WAIT or WAIT_FOR_EVERYONE");
        return 0;
    }
    if (seek < PARTY_THRESHOLD_MIN_MS || seek > PARTY_THRESHOLD_MAX_MS) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "settings.seek_threshold_ms", 0, "must be %d..%d", PARTY_THRESHOLD_MIN_MS,
               PARTY_THRESHOLD_MAX_MS);
        return 0;
    }
    if (rate < PARTY_THRESHOLD_MIN_MS || rate > seek) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "settings.rate_threshold_ms", 0,
               "must be %d..seek_threshold_ms (%u)", PARTY_THRESHOLD_MIN_MS, (unsigned)seek);
        return 0;
    }
    if (r->policy)
        p->st.policy = r->policy;
    p->st.seek_threshold_ms = seek;
    p->st.rate_threshold_ms = rate;
    apply_policy(p, now);
    return 1;
}

/* Applies one command to s's party. 1 if the party changed (m: the member that did, if any). */
static int command(party_state *ps, party_stream *s, const lagoon_v1_PartyClientFrame *req, int64_t now,
                   party_member **changed)
{
    party *p = s->p;
    lagoon_v1_PartyState *st = &p->st;
    party_member *me = member_of(p, s->user_id);
    *changed = NULL;
    if (req->base_version > st->version) {
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "base_version", 0, "is after the party's version %llu",
               (unsigned long long)st->version);
        return 0;
    }
    switch (req->which_command) {
    case lagoon_v1_PartyClientFrame_play_tag:
        if (!controls(ps, s, "play") || st->playing || st->waiting)
            return 0; /* applied on top: already playing changes nothing */
        if (st->policy == lagoon_v1_PartyState_Policy_WAIT_FOR_EVERYONE && !all_ready(p))
            st->waiting = true;
        else
            start_playing(p, now);
        return 1;
    case lagoon_v1_PartyClientFrame_pause_tag:
        if (!controls(ps, s, "pause") || (!st->playing && !st->waiting))
            return 0;
        if (st->playing)
            stop_at(p, now);
        st->waiting = false;
        return 1;
    case lagoon_v1_PartyClientFrame_seek_tag: {
        int64_t to = req->command.seek.position_ms;
        if (!controls(ps, s, "seek") || !fresh(ps, s, req->base_version, st->position_version, "the position"))
            return 0;
        if (to < 0 || to > (int64_t)item_duration(p)) {
            refuse(ps, s, LAGOON_INVALID_ARGUMENT, "seek.position_ms", 0, "must be within the item (0..%u ms)",
                   (unsigned)item_duration(p));
            return 0;
        }
        st->position_ms = to;
        st->position_at = st->playing ? now + start_lead(p) : now;
        st->position_version = st->version + 1;
        return 1;
    }
    case lagoon_v1_PartyClientFrame_set_rate_tag: {
        double r = req->command.set_rate.rate;
        if (!controls(ps, s, "set_rate"))
            return 0;
        if (!(r >= PARTY_RATE_MIN && r <= PARTY_RATE_MAX)) { /* NaN too */
            refuse(ps, s, LAGOON_INVALID_ARGUMENT, "set_rate.rate", 0, "must be %.2f..%.1f", PARTY_RATE_MIN,
                   PARTY_RATE_MAX);
            return 0;
        }
        if (st->playing && now > st->position_at) { /* rebased now; a start still ahead keeps its time */
            st->position_ms = position(p, now);
            st->position_at = now;
        }
        st->rate = r;
        return 1;
    }
    case lagoon_v1_PartyClientFrame_next_tag:
    case lagoon_v1_PartyClientFrame_previous_tag: {
        int next = req->which_command == lagoon_v1_PartyClientFrame_next_tag;
        const char *field = next ? "next" : "previous";
        if (!controls(ps, s, field) || !fresh(ps, s, req->base_version, st->index_version, "the item"))
            return 0;
        if (next ? st->index + 1 >= st->queue_count : st->index == 0) {
            refuse(ps, s, LAGOON_INVALID_ARGUMENT, field, 0, next ? "no item after the last" : "no item before the first");
            return 0;
        }
        set_item(p, next ? st->index + 1 : st->index - 1, now);
        return 1;
    }
    case lagoon_v1_PartyClientFrame_jump_tag:
        if (!controls(ps, s, "jump"))
            return 0;
        if (req->command.jump.index >= st->queue_count) {
            refuse(ps, s, LAGOON_INVALID_ARGUMENT, "jump.index", 0, "the queue has %u items", (unsigned)st->queue_count);
            return 0;
        }
        set_item(p, req->command.jump.index, now);
        return 1;
    case lagoon_v1_PartyClientFrame_ready_tag:
    case lagoon_v1_PartyClientFrame_buffering_tag:
        if (me == NULL)
            return 0;
        me->m.ready = req->which_command == lagoon_v1_PartyClientFrame_ready_tag;
        apply_policy(p, now);
        *changed = me;
        return 1;
    case lagoon_v1_PartyClientFrame_control_tag: {
        const lagoon_v1_PartyControl *c = &req->command.control;
        if (s->user_id != st->starter_id) {
            refuse(ps, s, LAGOON_PERMISSION_DENIED, "control", 0, "only the party's starter may restrict control");
            return 0;
        }
        st->control_restricted = c->restricted;
        st->controllers_count = c->controllers_count;
        memcpy(st->controllers, c->controllers, sizeof(c->controllers[0]) * c->controllers_count);
        return 1;
    }
    case lagoon_v1_PartyClientFrame_settings_tag:
        return controls(ps, s, "settings") && settings(ps, s, &req->command.settings, now);
    case lagoon_v1_PartyClientFrame_join_tag:
        refuse(ps, s, LAGOON_FAILED_PRECONDITION, "join", 0, "already joined");
        return 0;
    default:
        refuse(ps, s, LAGOON_INVALID_ARGUMENT, "command", 0, "a command is required");
        return 0;
    }
}

/* Whether the caller is still an ACTIVE member of group_id (removed, or left the group, since
 * it joined the party: its commands are refused). */
static int still_member(rpc_call *call, uint64_t group_id)
{
    store_txn *t;
    store_error err;
    if (store_read_begin(app_of(call)->db, &t, &err) != LAGOON_OK)
        return 1; /* the store will say more at the write */
    int st = groups_active_member(t, rpc_call_caller(call), group_id, NULL, NULL, &err);
    store_read_end(t);
    return st != LAGOON_NOT_FOUND;
}

int handle_Party_Join(rpc_call *call, const lagoon_v1_PartyClientFrame *req)
{
    app *a = app_of(call);
    party_state *ps = state_of(a);
    pthread_mutex_lock(&ps->mu);
    party_stream *s = stream_find(ps, call);
    if (s == NULL) {
        pthread_mutex_unlock(&ps->mu);
        if (req == NULL)
            return LAGOON_OK;
        return join_first(call, req);
    }
    int which = req ? (int)req->which_command : lagoon_v1_PartyClientFrame_leave_tag;
    if (which != lagoon_v1_PartyClientFrame_leave_tag && which != lagoon_v1_PartyClientFrame_report_tag &&
        which != lagoon_v1_PartyClientFrame_ping_tag) {
        uint64_t group_id = s->p->st.group_id; /* never changes */
        pthread_mutex_unlock(&ps->mu);
        int member = still_member(call, group_id);
        pthread_mutex_lock(&ps->mu);
        s = stream_find(ps, call);
        if (s == NULL) { /* ended meanwhile: finished by whoever ended it */
            pthread_mutex_unlock(&ps->mu);
            return RPC_CONTINUE;
        }
        if (!member) { /* out of the group: out of the party */
            party *p = s->p;
            party_member *m = member_of(p, s->user_id);
            stream_detach(ps, s);
            if (m)
                member_gone(ps, p, m, 1, app_now(a));
            pthread_mutex_unlock(&ps->mu);
            return rpc_call_error(call, LAGOON_NOT_FOUND, "you are no longer a member of the party's group");
        }
    }
    party *p = s->p;
    int64_t now = app_now(a);
    if (which == lagoon_v1_PartyClientFrame_leave_tag || which == lagoon_v1_PartyClientFrame_end_tag) {
        if (which == lagoon_v1_PartyClientFrame_end_tag && (!spend(ps, s, now) || !controls(ps, s, "end"))) {
            pthread_mutex_unlock(&ps->mu);
            return RPC_CONTINUE;
        }
        if (which == lagoon_v1_PartyClientFrame_end_tag) { /* every stream, this one too, gets the end */
            party_end(ps, p, now);
            pthread_mutex_unlock(&ps->mu);
            return RPC_CONTINUE;
        }
        party_member *m = member_of(p, s->user_id);
        stream_detach(ps, s);
        if (m)
            member_gone(ps, p, m, 1, now);
        pthread_mutex_unlock(&ps->mu);
        return LAGOON_OK;
    }
    if (which == lagoon_v1_PartyClientFrame_report_tag) {
        report(ps, s, &req->command.report, now);
    } else if (spend(ps, s, now)) {
        if (which == lagoon_v1_PartyClientFrame_ping_tag) {
            pong(ps, s, &req->command.ping, now);
        } else {
            party_member *m;
            if (command(ps, s, req, now, &m))
                party_changed(ps, p, now, m, SNAP_MEMBER_PUT, 0);
            else if (which == lagoon_v1_PartyClientFrame_play_tag || which == lagoon_v1_PartyClientFrame_pause_tag)
                send_state(ps, s, &p->st); /* nothing to change: the sender learns where the party is */
        }
    }
    pthread_mutex_unlock(&ps->mu);
    return RPC_CONTINUE;
}

/* ---- Start and Get -------------------------------------------------------------------------------- */

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Counts the group's parties, ending those past their grace period: LAGOON_OK with *live. */
static int group_parties(store_txn *t, const app *a, uint64_t group_id, int64_t now, uint32_t *live, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, group_id);
    store_query q = {.table = &lagoon_table_parties, .index = lagoon_index_parties_by_group, .prefix = k.buf,
                     .prefix_len = k.len, .page_size = STORE_PAGE_SIZE_MAX};
    app_id_page page;
    int st = app_scan_ids(t, &q, &page, err);
    *live = 0;
    for (uint32_t i = 0; st == LAGOON_OK && i < page.n; i++) {
        lagoon_v1_PartyState row;
        st = store_get(t, &lagoon_table_parties, page.ids[i], &row, err);
        if (st != LAGOON_OK)
            break;
        if (!expired(&row, now)) {
            (*live)++;
            continue;
        }
        st = store_delete(t, &lagoon_table_parties, row.id, err);
        if (st == LAGOON_OK)
            st = sched_cancel(t, lagoon_v1_JobKind_PARTY_GRACE, row.id, 0, err);
        if (st == LAGOON_OK)
            st = publish_ended(t, a, row.id, group_id, err);
    }
    return st;
}

/* Item i of the request as stored: a Lagoon video must be one the group may watch (public, or
 * the starter's own: one shared with the starter alone is not the group's), and gives its
 * duration and title when the item has none. */
static int start_item(store_txn *t, const app_write_in *in, pb_size_t i, lagoon_v1_Video *v, lagoon_v1_PartyItem *it,
                      store_error *err)
{
    const lagoon_v1_StartPartyRequest *req = in->req;
    *it = req->items[i];
    if (it->video_id == 0)
        return LAGOON_OK;
    char field[40];
    snprintf(field, sizeof(field), "items[%u].video_id", (unsigned)i);
    int owner = 0;
    int st = videos_readable(t, &in->who, it->video_id, field, v, &owner, err);
    if (st != LAGOON_OK)
        return st;
    if (!v->is_public && !owner)
        return store_fail(err, LAGOON_NOT_FOUND, field, "no video %llu the group may watch",
                          (unsigned long long)it->video_id);
    if (it->duration_ms == 0)
        it->duration_ms = v->duration_seconds * 1000u; /* at most 86 400 s (videos.proto) */
    if (it->title[0] == '\0')
        app_copy_utf8(it->title, sizeof(it->title), v->title);
    if (it->duration_ms == 0) {
        snprintf(field, sizeof(field), "items[%u].duration_ms", (unsigned)i);
        return store_fail(err, LAGOON_INVALID_ARGUMENT, field, "video %llu has no known duration: give it",
                          (unsigned long long)it->video_id);
    }
    return LAGOON_OK;
}

static int start_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_StartPartyRequest *req = in->req;
    lagoon_v1_PartyState *p = resp;
    int st = groups_active_member(t, &in->who, req->group_id, "group_id", NULL, err);
    uint32_t live = 0;
    if (st == LAGOON_OK)
        st = group_parties(t, in->a, req->group_id, in->now, &live, err);
    if (st == LAGOON_OK && live >= PARTY_GROUP_PARTIES_MAX)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "the group has %u parties running, the most it may have",
                          (unsigned)PARTY_GROUP_PARTIES_MAX);
    if (st != LAGOON_OK)
        return st;
    p->group_id = req->group_id;
    p->starter_id = in->who.user_id;
    p->created_at = in->now;
    p->version = 1;
    p->queue_count = req->items_count;
    p->index = req->index;
    p->position_at = in->now;
    p->rate = 1.0;
    p->policy = req->policy ? req->policy : lagoon_v1_PartyState_Policy_DONT_WAIT;
    p->control_restricted = req->control_restricted;
    p->controllers_count = req->controllers_count;
    memcpy(p->controllers, req->controllers, sizeof(req->controllers[0]) * req->controllers_count);
    p->seek_threshold_ms = PARTY_SEEK_THRESHOLD_DEFAULT_MS;
    p->rate_threshold_ms = PARTY_RATE_THRESHOLD_DEFAULT_MS;
    p->empty_since = in->now; /* nobody has joined yet: the grace period runs */
    p->position_version = p->index_version = 1;
    p->changed_at = in->now;
    st = store_insert(t, &lagoon_table_parties, p, &p->id, err);
    if (st == LAGOON_OK) /* ends it if nobody joins */
        st = grace_put(t, in->now, p->id, in->now + PARTY_GRACE_MS, err);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_Video *v = malloc(sizeof(*v));           /* tens of KiB */
    lagoon_v1_PartyItemRow *row = malloc(sizeof(*row)); /* and the event below ~20 */
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    if (v == NULL || row == NULL || ev == NULL) {
        free(v);
        free(row);
        free(ev);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    for (pb_size_t i = 0; st == LAGOON_OK && i < req->items_count; i++) {
        memset(row, 0, sizeof(*row));
        row->party_id = p->id;
        row->pos = i;
        row->has_item = true;
        st = start_item(t, in, i, v, &row->item, err);
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_party_items, row, NULL, err);
        if (st == LAGOON_OK && i == req->index)
            ev->payload.party_started.item = row->item;
    }
    if (st == LAGOON_OK) {
        ev->which_payload = lagoon_v1_Event_party_started_tag;
        lagoon_v1_PartyStartedEvent *e = &ev->payload.party_started;
        e->party_id = p->id;
        e->group_id = p->group_id;
        e->starter_id = p->starter_id;
        e->has_item = true;
        lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, p->group_id};
        st = events_topic_publish(t, in->a, &tp, ev, err);
    }
    free(v);
    free(row);
    free(ev);
    return st;
}

int handle_Party_Start(rpc_call *call, const lagoon_v1_StartPartyRequest *req, lagoon_v1_PartyState *resp)
{
    (void)resp; /* group_id, the item count and the policy are checked by the rules in party.proto */
    if (req->index >= req->items_count)
        return rpc_call_violation(call, "index", "the queue has %u items", (unsigned)req->items_count);
    for (pb_size_t i = 0; i < req->items_count; i++) {
        const lagoon_v1_PartyItem *it = &req->items[i];
        char field[40];
        if ((it->video_id != 0) == (it->url[0] != '\0')) {
            snprintf(field, sizeof(field), "items[%u].url", (unsigned)i);
            rpc_call_violation(call, field, "an item is a video_id or a url, one of them");
        } else if (it->url[0] && strncmp(it->url, "https://", 8) != 0 && strncmp(it->url, "http://", 7) != 0) {
            snprintf(field, sizeof(field), "items[%u].url", (unsigned)i);
            rpc_call_violation(call, field, "must be an http or https URL");
        }
        if ((it->duration_ms == 0 && it->video_id == 0) || it->duration_ms > PARTY_ITEM_DURATION_MAX_MS) {
            snprintf(field, sizeof(field), "items[%u].duration_ms", (unsigned)i);
            rpc_call_violation(call, field, "must be 1..%u (0: a video's own)", PARTY_ITEM_DURATION_MAX_MS);
        }
        if (utf8_chars(it->title) > PARTY_TITLE_MAX_CHARS) {
            snprintf(field, sizeof(field), "items[%u].title", (unsigned)i);
            rpc_call_violation(call, field, "must be at most %d characters", PARTY_TITLE_MAX_CHARS);
        }
    }
    for (pb_size_t i = 0; i < req->controllers_count; i++)
        if (req->controllers[i] == 0)
            return rpc_call_violation(call, "controllers", "must be user ids");
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    return app_write_call(call, start_write, NULL);
}

int handle_Party_Get(rpc_call *call, const lagoon_v1_PartyIdRequest *req, lagoon_v1_PartyState *resp)
{
    app *a = app_of(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(a->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = store_get(t, &lagoon_table_parties, req->party_id, resp, &err);
    if (st == LAGOON_OK)
        st = groups_active_member(t, rpc_call_caller(call), resp->group_id, "party_id", NULL, &err);
    store_read_end(t);
    if (st == LAGOON_OK) {
        /* A live party's state is the same as stored, or changes ahead of their writes. */
        party_state *ps = state_of(a);
        pthread_mutex_lock(&ps->mu);
        party *p = ps->parties;
        while (p && p->st.id != req->party_id)
            p = p->next;
        if (p && p->gone)
            st = LAGOON_NOT_FOUND; /* ended; its rows are on their way out */
        else if (p)
            *resp = p->st;
        else if (expired(resp, app_now(a))) /* its rows go with the next Join or Start */
            st = LAGOON_NOT_FOUND;
        pthread_mutex_unlock(&ps->mu);
    }
    if (st == LAGOON_NOT_FOUND) /* non-members of its group see no party at all */
        st = store_fail(&err, LAGOON_NOT_FOUND, "party_id", "no party %llu", (unsigned long long)req->party_id);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    return LAGOON_OK;
}

/* ---- for the group's chat --------------------------------------------------------------------------- */

typedef struct newest_ctx {
    int64_t now;
    lagoon_v1_PartyState best;
    int found;
} newest_ctx;

static int newest_live(void *arg, uint64_t id, const void *row)
{
    (void)id;
    newest_ctx *c = arg;
    const lagoon_v1_PartyState *p = row;
    if (!expired(p, c->now) && (!c->found || p->created_at >= c->best.created_at)) {
        c->best = *p;
        c->found = 1;
    }
    return LAGOON_OK;
}

int party_position_now(store_txn *t, uint64_t group_id, int64_t now, uint64_t *party_id, int64_t *position_ms,
                       store_error *err)
{
    *party_id = 0;
    *position_ms = 0;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, group_id);
    store_query q = {.table = &lagoon_table_parties, .index = lagoon_index_parties_by_group, .prefix = k.buf,
                     .prefix_len = k.len, .page_size = PARTY_GROUP_PARTIES_MAX + 1};
    newest_ctx c = {.now = now};
    store_page page;
    int st = store_scan(t, &q, newest_live, &c, &page, err);
    if (st != LAGOON_OK || !c.found)
        return st;
    *party_id = c.best.id;
    *position_ms = party_position_at(&c.best, now);
    return LAGOON_OK;
}

/* ---- the grace job ------------------------------------------------------------------------------------ */

/* PARTY_GRACE: ends the party once nobody was present for PARTY_GRACE_MS, whether or not anyone
 * comes back to Join or Start. A party in memory is judged by its state there (newer than its
 * row); one with members present is looked at again a grace period later. A row that counts
 * members present while the party is not in memory was left by a server that stopped with
 * members connected (killed, or drained): nobody is connected now, so its grace period starts
 * now. Runs on the store's writer (ps->mu is never held across a wait for it). */
static int party_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err)
{
    if (job->kind != lagoon_v1_JobKind_PARTY_GRACE)
        return LAGOON_OK;
    *ran = 1;
    lagoon_v1_PartyState row;
    int st = store_get(t, &lagoon_table_parties, job->owner_id, &row, err);
    if (st != LAGOON_OK)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st; /* ended, or went with its group or starter */
    party_state *ps = state_of(a);
    int64_t now = app_now(a);
    int64_t due = 0;
    int end = 0, stale = 0;
    pthread_mutex_lock(&ps->mu);
    party *p = party_find(ps, row.id);
    if (p && p->gone) {
        due = now + PARTY_GRACE_MS; /* its end's write cancels this; a dropped one's rows stay */
    } else if (p && p->st.members_present > 0) {
        due = now + PARTY_GRACE_MS;
    } else if (p && expired(&p->st, now)) {
        end = 1;
        p->gone = 1; /* nobody is connected: no stream to tell */
        p->st.ended = true;
        if (p->pending == 0) {
            party_unlink(ps, p);
            party_free(p);
        }
    } else if (p) {
        due = p->st.empty_since + PARTY_GRACE_MS;
    } else if (row.members_present > 0 || row.empty_since == 0) {
        stale = 1;
        due = now + PARTY_GRACE_MS;
    } else if (expired(&row, now)) {
        end = 1;
    } else {
        due = row.empty_since + PARTY_GRACE_MS;
    }
    pthread_mutex_unlock(&ps->mu);
    if (end) {
        st = store_delete(t, &lagoon_table_parties, row.id, err); /* items and members cascade */
        return st == LAGOON_OK ? publish_ended(t, a, row.id, row.group_id, err) : st;
    }
    if (stale) { /* a Join that reads it back meanwhile stores its whole state after this */
        row.members_present = 0;
        row.empty_since = now;
        st = store_update(t, &lagoon_table_parties, &row, err);
        if (st != LAGOON_OK)
            return st;
    }
    return grace_put(t, now, row.id, due, err);
}

/* ---- the module ----------------------------------------------------------------------------------- */

static int party_start(app *a, void **state, rpc_error *err)
{
    party_state *ps = calloc(1, sizeof(*ps));
    if (ps == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    pthread_mutex_init(&ps->mu, NULL);
    pthread_cond_init(&ps->idle, NULL);
    ps->a = a;
    *state = ps;
    return RPC_OK;
}

/* A draining server ends every stream (UNAVAILABLE: reconnect); the parties stay stored. */
static void party_drain(app *a, void *state)
{
    (void)a;
    party_state *ps = state;
    pthread_mutex_lock(&ps->mu);
    for (party *p = ps->parties; p; p = p->next)
        finish_streams(ps, p, LAGOON_UNAVAILABLE);
    pthread_mutex_unlock(&ps->mu);
}

static void party_stop(app *a, void *state)
{
    party_drain(a, state);
    party_state *ps = state;
    pthread_mutex_lock(&ps->mu);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += PARTY_STOP_WAIT_MS / 1000;
    while (ps->pending > 0 && pthread_cond_timedwait(&ps->idle, &ps->mu, &until) == 0)
        ;
    int left = ps->pending;
    party *p = ps->parties;
    ps->parties = NULL;
    pthread_mutex_unlock(&ps->mu);
    if (left) { /* their completions would touch freed parties: leak them instead */
        log_msg(LOG_ERROR, "party: %d writes still pending at stop", left);
        return;
    }
    while (p) {
        party *next = p->next;
        party_free(p);
        p = next;
    }
    pthread_mutex_destroy(&ps->mu);
    pthread_cond_destroy(&ps->idle);
    free(ps);
}

const app_module party_module = {
    .name = "party",
    .start = party_start,
    .drain = party_drain,
    .stop = party_stop,
    .run_job = party_run_job,
};
