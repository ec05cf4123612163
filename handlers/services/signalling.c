/* Signalling service: WebRTC signalling relayed between the people of a live call, and their
 * ICE servers.
 *
 * Rooms. Each live chat someone is connected to has a room: the people whose Connect stream
 * joined it. Rooms and members live in the module's memory under one mutex; every handler
 * invocation and every cancel callback does its work under it, and the relay sends to the other
 * members' calls from the sender's loop thread (rpc_call_send is any-thread). Whoever takes a
 * member out of its room (its own leave or half-close, its cancel callback, an eviction for
 * backlog, the drain) is the one that ends its call, exactly once; the others find it gone.
 *
 * A call's first message must be join: the caller must be allowed in the chat's call now
 * (videochats_may_join, profchats_may_join: live, and a participant / the host or a registered
 * attendee). One stream per person per call (a second is ALREADY_EXISTS). The joiner first gets
 * a presence event (everyone in the call, itself included); everyone else a joined event. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lagoon_handlers.h"
#include "log.h"
#include "profchats.h"
#include "signalling.h"
#include "videochats.h"

_Static_assert(sizeof(((lagoon_v1_SignalSdp *)0)->sdp) == SIGNALLING_SDP_MAX + 1,
               "SIGNALLING_SDP_MAX is SignalSdp.sdp's max_length in signalling.options");
_Static_assert(sizeof(((lagoon_v1_SignalCandidate *)0)->candidate) == SIGNALLING_CANDIDATE_MAX + 1,
               "SIGNALLING_CANDIDATE_MAX is SignalCandidate.candidate's max_length in signalling.options");
_Static_assert(sizeof(((lagoon_v1_SignalCandidate *)0)->sdp_mid) == SIGNALLING_SDP_MID_MAX + 1,
               "SIGNALLING_SDP_MID_MAX is SignalCandidate.sdp_mid's max_length in signalling.options");
_Static_assert(sizeof(((lagoon_v1_SignalPresence *)0)->members) / sizeof(lagoon_v1_SignalMember) ==
                   SIGNALLING_ROOM_MAX,
               "SIGNALLING_ROOM_MAX is SignalPresence.members' max_count");

#define SIGNALLING_BUCKETS 1024 /* of the call -> member table */

typedef struct room room;

typedef struct member {
    rpc_call *call;
    room *room;
    uint64_t user_id;
    int audio_muted, video_muted;
    int64_t window_start;   /* ms, app clock: the current rate window's start */
    uint32_t window_count;  /* messages in it */
    struct member *next;    /* in the room */
    struct member *hnext;   /* in its bucket */
} member;

struct room {
    lagoon_v1_CallKind kind;
    uint64_t chat_id;
    member *members;
    uint32_t n;
    room *next;
};

typedef struct signalling {
    pthread_mutex_t mu;
    room *rooms;
    member *by_call[SIGNALLING_BUCKETS];
    uint32_t members;
} signalling;

static int signalling_start(app *a, void **state, rpc_error *err)
{
    (void)a;
    signalling *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    pthread_mutex_init(&s->mu, NULL);
    *state = s;
    return RPC_OK;
}

static size_t bucket(const rpc_call *call)
{
    return ((uintptr_t)call >> 4) % SIGNALLING_BUCKETS;
}

static room *room_find(signalling *s, lagoon_v1_CallKind kind, uint64_t chat_id)
{
    room *r = s->rooms;
    while (r != NULL && (r->kind != kind || r->chat_id != chat_id))
        r = r->next;
    return r;
}

static member *find(signalling *s, const rpc_call *call)
{
    member *m = s->by_call[bucket(call)];
    while (m != NULL && m->call != call)
        m = m->hnext;
    return m;
}

/* Takes m out of its room and the table (the room goes when empty); the caller ends m's call
 * and frees m. Under the mutex. */
static void unlink_member(signalling *s, member *m)
{
    member **pp = &s->by_call[bucket(m->call)];
    while (*pp != m)
        pp = &(*pp)->hnext;
    *pp = m->hnext;
    room *r = m->room;
    for (pp = &r->members; *pp != m; pp = &(*pp)->next)
        ;
    *pp = m->next;
    r->n--;
    s->members--;
    if (r->n == 0) {
        room **rp = &s->rooms;
        while (*rp != r)
            rp = &(*rp)->next;
        *rp = r->next;
        free(r);
    }
}

static void member_info(const member *m, lagoon_v1_SignalMember *out)
{
    out->user_id = m->user_id;
    out->audio_muted = m->audio_muted;
    out->video_muted = m->video_muted;
}

/* Sends ev to every member of r but except; with evict, members whose backlog is past the
 * limit are collected into it (at most SIGNALLING_ROOM_MAX; each member once). Under the mutex. */
static void broadcast(room *r, const member *except, const lagoon_v1_SignalEvent *ev, member **evict, uint32_t *nevict)
{
    for (member *m = r->members; m != NULL; m = m->next) {
        if (m == except)
            continue;
        rpc_call_send(m->call, ev);
        if (evict != NULL && rpc_call_backlog(m->call) > SIGNALLING_BACKLOG_MAX && *nevict < SIGNALLING_ROOM_MAX)
            evict[(*nevict)++] = m;
    }
}

static void left_event(const member *m, lagoon_v1_SignalEvent *ev)
{
    *ev = (lagoon_v1_SignalEvent)lagoon_v1_SignalEvent_init_zero;
    ev->from_user_id = m->user_id;
    ev->which_msg = lagoon_v1_SignalEvent_left_tag;
    member_info(m, &ev->msg.left);
}

/* Takes m out (the room hears it left), ends its call with status (-1: not here, the handler's
 * return ends it) and why, and frees it. Members the announcement finds too far behind are
 * left to the next relay, which drops them. Under the mutex. ev is scratch space. */
static void drop_member(signalling *s, member *m, int status, const char *why, lagoon_v1_SignalEvent *ev)
{
    room *r = m->room;
    int last = r->n == 1;
    unlink_member(s, m);
    if (!last) {
        left_event(m, ev);
        broadcast(r, NULL, ev, NULL, NULL);
    }
    if (status != -1) {
        if (status != LAGOON_OK)
            rpc_call_error(m->call, status, "%s", why);
        rpc_call_finish(m->call, status);
    }
    free(m);
}

static void signalling_drain(app *a, void *state)
{
    (void)a;
    signalling *s = state;
    lagoon_v1_SignalEvent *ev = malloc(sizeof(*ev));
    if (ev == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    while (s->rooms != NULL)
        drop_member(s, s->rooms->members, LAGOON_UNAVAILABLE, "the server is shutting down", ev);
    pthread_mutex_unlock(&s->mu);
    free(ev);
}

/* Ends the streams of (kind, chat_id)'s call with status and why: user_id's, or everyone's
 * (user_id 0), the others seeing each leave. */
static void end_streams(app *a, lagoon_v1_CallKind kind, uint64_t chat_id, uint64_t user_id, int status,
                        const char *why)
{
    signalling *s = app_state(a, &signalling_module);
    lagoon_v1_SignalEvent *ev = malloc(sizeof(*ev));
    if (s == NULL || ev == NULL) {
        free(ev);
        return;
    }
    pthread_mutex_lock(&s->mu);
    /* The last member's drop frees the room: looked up again after each. */
    for (room *r; (r = room_find(s, kind, chat_id)) != NULL;) {
        member *m = r->members;
        while (m != NULL && user_id != 0 && m->user_id != user_id)
            m = m->next;
        if (m == NULL)
            break;
        drop_member(s, m, status, why, ev);
        if (user_id != 0)
            break; /* one stream per person per call */
    }
    pthread_mutex_unlock(&s->mu);
    free(ev);
}

void signalling_user_removed(app *a, lagoon_v1_CallKind kind, uint64_t chat_id, uint64_t user_id, int status,
                             const char *why)
{
    if (user_id != 0)
        end_streams(a, kind, chat_id, user_id, status, why);
}

void signalling_call_ended(app *a, lagoon_v1_CallKind kind, uint64_t chat_id)
{
    end_streams(a, kind, chat_id, 0, LAGOON_OK, "");
}

static void signalling_stop(app *a, void *state)
{
    signalling_drain(a, state); /* nothing is left once the server has stopped; to be sure */
    signalling *s = state;
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const app_module signalling_module = {
    .name = "signalling",
    .start = signalling_start,
    .drain = signalling_drain,
    .stop = signalling_stop,
};

/* ---- Connect ---------------------------------------------------------------------------------- */

static void connect_cancelled(rpc_call *call, void *arg)
{
    signalling *s = arg;
    lagoon_v1_SignalEvent *ev = malloc(sizeof(*ev));
    pthread_mutex_lock(&s->mu);
    member *m = find(s, call);
    if (m != NULL && ev != NULL) {
        drop_member(s, m, LAGOON_CANCELLED, "cancelled", ev);
    } else if (m != NULL) {
        unlink_member(s, m); /* out of memory: leave without telling the room */
        free(m);
        rpc_call_finish(call, LAGOON_CANCELLED);
    }
    pthread_mutex_unlock(&s->mu);
    free(ev);
}

/* Sends the caller a SignalError; its stream stays open. */
static void send_error(rpc_call *call, lagoon_v1_SignalEvent *ev, int code, uint32_t retry_ms, const char *msg)
{
    *ev = (lagoon_v1_SignalEvent)lagoon_v1_SignalEvent_init_zero;
    ev->which_msg = lagoon_v1_SignalEvent_error_tag;
    ev->msg.error.code = (uint32_t)code;
    ev->msg.error.retry_after_ms = retry_ms;
    APP_STRCPY(ev->msg.error.message, msg);
    rpc_call_send(call, ev);
}

/* Whether user_id may be in the call of (kind, chat_id) now: at the join, and again at every
 * message it sends (an account deleted, a chat gone with its organizer's, an attendee who
 * unregistered: what it was allowed at the join it may no longer be). */
static int may_join(const app *a, uint64_t user_id, lagoon_v1_CallKind kind, uint64_t chat_id, store_error *err)
{
    store_txn *t;
    int st = store_read_begin(a->db, &t, err);
    if (st != LAGOON_OK)
        return st;
    st = kind == lagoon_v1_CallKind_VIDEO_CHAT ? videochats_may_join(t, user_id, chat_id, err)
                                               : profchats_may_join(t, user_id, chat_id, err);
    store_read_end(t);
    return st;
}

/* The first message: the caller enters the room of the chat. */
static int join(rpc_call *call, signalling *s, const lagoon_v1_SignalRequest *req, lagoon_v1_SignalEvent *ev)
{
    if (req->which_msg != lagoon_v1_SignalRequest_join_tag)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, "the first message must be join");
    const lagoon_v1_SignalJoin *j = &req->msg.join;
    uint64_t me = rpc_call_caller(call)->user_id;
    store_error err;
    int st = may_join(app_of(call), me, j->kind, j->chat_id, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    member *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    m->call = call;
    m->user_id = me;
    pthread_mutex_lock(&s->mu);
    room *r = room_find(s, j->kind, j->chat_id);
    int refused = 0;
    for (member *x = r ? r->members : NULL; x != NULL && !refused; x = x->next)
        if (x->user_id == me)
            refused = rpc_call_error(call, LAGOON_ALREADY_EXISTS, "you are already connected to this call");
    if (!refused && r != NULL && r->n >= SIGNALLING_ROOM_MAX)
        refused = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "the call has %d people connected", SIGNALLING_ROOM_MAX);
    if (!refused && s->members >= SIGNALLING_MEMBERS_MAX)
        refused = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many calls in progress; retry later");
    if (!refused && r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL) {
            refused = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            r->kind = j->kind;
            r->chat_id = j->chat_id;
            r->next = s->rooms;
            s->rooms = r;
        }
    }
    if (refused || r == NULL) {
        pthread_mutex_unlock(&s->mu);
        free(m);
        return refused;
    }
    m->room = r;
    m->next = r->members;
    r->members = m;
    r->n++;
    m->hnext = s->by_call[bucket(call)];
    s->by_call[bucket(call)] = m;
    s->members++;
    *ev = (lagoon_v1_SignalEvent)lagoon_v1_SignalEvent_init_zero;
    ev->from_user_id = me;
    ev->which_msg = lagoon_v1_SignalEvent_presence_tag;
    for (member *x = r->members; x != NULL; x = x->next)
        member_info(x, &ev->msg.presence.members[ev->msg.presence.members_count++]);
    rpc_call_send(call, ev);
    *ev = (lagoon_v1_SignalEvent)lagoon_v1_SignalEvent_init_zero;
    ev->from_user_id = me;
    ev->which_msg = lagoon_v1_SignalEvent_joined_tag;
    member_info(m, &ev->msg.joined);
    member *evict[SIGNALLING_ROOM_MAX];
    uint32_t nevict = 0;
    broadcast(r, m, ev, evict, &nevict);
    for (uint32_t i = 0; i < nevict; i++)
        drop_member(s, evict[i], LAGOON_RESOURCE_EXHAUSTED, "too far behind the call's messages", ev);
    pthread_mutex_unlock(&s->mu);
    rpc_call_on_cancel(call, connect_cancelled, s);
    /* Marks the call joined (the response struct is unused by a bidi method and the same on
     * every invocation): a later message that finds no member knows it was dropped. */
    ((lagoon_v1_SignalEvent *)rpc_call_response(call))->from_user_id = me;
    return RPC_PENDING;
}

/* Counts one message against m's window; 0 if it may go, else the ms until it may. */
static uint32_t rate_wait(member *m, int64_t now)
{
    if (now - m->window_start >= SIGNALLING_RATE_WINDOW_MS || now < m->window_start) {
        m->window_start = now;
        m->window_count = 0;
    }
    if (m->window_count >= SIGNALLING_RATE_MAX)
        return (uint32_t)(m->window_start + SIGNALLING_RATE_WINDOW_MS - now);
    m->window_count++;
    return 0;
}

/* A message of a joined member: relayed, or answered with an error event. Under the mutex. */
static int relay(signalling *s, member *m, const app *a, const lagoon_v1_SignalRequest *req, lagoon_v1_SignalEvent *ev)
{
    rpc_call *call = m->call;
    if (req == NULL || req->which_msg == lagoon_v1_SignalRequest_leave_tag) {
        drop_member(s, m, -1, "", ev); /* -1: the handler's return ends the call */
        return LAGOON_OK;
    }
    /* Every message counts, refused ones too: each refusal is an event the server sends. */
    uint32_t wait = rate_wait(m, app_now(a));
    if (wait) {
        char msg[96];
        snprintf(msg, sizeof(msg), "more than %d messages in %d ms; retry in %u ms", SIGNALLING_RATE_MAX,
                 SIGNALLING_RATE_WINDOW_MS, (unsigned)wait);
        send_error(call, ev, LAGOON_RESOURCE_EXHAUSTED, wait, msg);
        return RPC_CONTINUE;
    }
    if (req->which_msg == lagoon_v1_SignalRequest_join_tag) {
        send_error(call, ev, LAGOON_FAILED_PRECONDITION, 0, "already joined");
        return RPC_CONTINUE;
    }
    store_error err;
    int st = may_join(a, m->user_id, m->room->kind, m->room->chat_id, &err);
    if (st != LAGOON_OK) {
        drop_member(s, m, -1, "", ev); /* the others see it leave; the handler's return ends it */
        return app_store_error(call, st, &err);
    }
    *ev = (lagoon_v1_SignalEvent)lagoon_v1_SignalEvent_init_zero;
    ev->from_user_id = m->user_id;
    uint64_t to = req->to_user_id;
    switch (req->which_msg) {
    case lagoon_v1_SignalRequest_offer_tag:
        ev->which_msg = lagoon_v1_SignalEvent_offer_tag;
        ev->msg.offer = req->msg.offer;
        break;
    case lagoon_v1_SignalRequest_answer_tag:
        ev->which_msg = lagoon_v1_SignalEvent_answer_tag;
        ev->msg.answer = req->msg.answer;
        break;
    case lagoon_v1_SignalRequest_candidate_tag:
        ev->which_msg = lagoon_v1_SignalEvent_candidate_tag;
        ev->msg.candidate = req->msg.candidate;
        break;
    case lagoon_v1_SignalRequest_mute_tag:
        m->audio_muted = req->msg.mute.audio_muted;
        m->video_muted = req->msg.mute.video_muted;
        ev->which_msg = lagoon_v1_SignalEvent_mute_tag;
        member_info(m, &ev->msg.mute);
        to = 0;
        break;
    default:
        send_error(call, ev, LAGOON_INVALID_ARGUMENT, 0, "an empty message");
        return RPC_CONTINUE;
    }
    member *evict[SIGNALLING_ROOM_MAX];
    uint32_t nevict = 0;
    if (to == 0) {
        broadcast(m->room, m, ev, evict, &nevict);
    } else {
        member *target = m->room->members;
        while (target != NULL && (target->user_id != to || target == m))
            target = target->next;
        if (target == NULL) {
            send_error(call, ev, LAGOON_NOT_FOUND, 0, "to_user_id is not in the call");
            return RPC_CONTINUE;
        }
        rpc_call_send(target->call, ev);
        if (rpc_call_backlog(target->call) > SIGNALLING_BACKLOG_MAX)
            evict[nevict++] = target;
    }
    for (uint32_t i = 0; i < nevict; i++)
        drop_member(s, evict[i], LAGOON_RESOURCE_EXHAUSTED, "too far behind the call's messages", ev);
    return RPC_CONTINUE;
}

int handle_Signalling_Connect(rpc_call *call, const lagoon_v1_SignalRequest *req)
{
    app *a = app_of(call);
    signalling *s = app_state(a, &signalling_module);
    int joined = ((const lagoon_v1_SignalEvent *)rpc_call_response(call))->from_user_id != 0;
    lagoon_v1_SignalEvent *ev = malloc(sizeof(*ev)); /* 17 KiB */
    if (ev == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    int st;
    if (!joined) {
        st = req == NULL ? LAGOON_OK : join(call, s, req, ev);
    } else {
        pthread_mutex_lock(&s->mu);
        member *m = find(s, call);
        /* No member: dropped by another thread, which ended the call; what is returned here is
         * ignored. */
        st = m == NULL ? LAGOON_OK : relay(s, m, a, req, ev);
        pthread_mutex_unlock(&s->mu);
    }
    free(ev);
    return st;
}

/* ---- ICE servers ------------------------------------------------------------------------------ */

int signalling_turn_credential(const char *secret, int64_t expires_s, uint64_t user_id, char *username, size_t ucap,
                               char *password, size_t pcap)
{
    int n = snprintf(username, ucap, "%lld:%llu", (long long)expires_s, (unsigned long long)user_id);
    if (n < 0 || (size_t)n >= ucap || pcap < sodium_base64_ENCODED_LEN(20, sodium_base64_VARIANT_ORIGINAL))
        return -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (HMAC(EVP_sha1(), secret, (int)strlen(secret), (const unsigned char *)username, (size_t)n, mac, &maclen) ==
            NULL ||
        maclen != 20)
        return -1;
    sodium_bin2base64(password, pcap, mac, maclen, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(mac, sizeof(mac));
    return 0;
}

/* server (an item of the response's array, which wire_init leaves as it found it) as the
 * comma-separated list's URLs (spaces around items dropped), nothing else set. */
static void split_urls(const char *list, lagoon_v1_IceServer *server)
{
    *server = (lagoon_v1_IceServer)lagoon_v1_IceServer_init_zero;
    const size_t cap = sizeof(server->urls) / sizeof(server->urls[0]);
    const char *p = list;
    while (*p && server->urls_count < cap) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n > 0 && n < sizeof(server->urls[0])) {
            memcpy(server->urls[server->urls_count], p, n);
            server->urls[server->urls_count++][n] = '\0';
        } else if (n > 0) {
            log_msg(LOG_WARN, "signalling: an ICE server URL longer than %zu bytes is left out",
                    sizeof(server->urls[0]) - 1);
        }
        p += strcspn(p, ",");
    }
}

int handle_Signalling_GetIceServers(rpc_call *call, const lagoon_v1_IceServersRequest *req,
                                    lagoon_v1_IceServersResponse *resp)
{
    (void)req;
    const app *a = app_of(call);
    const app_config *cfg = &a->cfg;
    if (cfg->stun_urls[0]) {
        lagoon_v1_IceServer *srv = &resp->servers[resp->servers_count];
        split_urls(cfg->stun_urls, srv);
        if (srv->urls_count)
            resp->servers_count++;
    }
    if (cfg->turn_urls[0] && cfg->turn_secret[0]) {
        lagoon_v1_IceServer *srv = &resp->servers[resp->servers_count];
        split_urls(cfg->turn_urls, srv);
        int64_t expires_s = app_now(a) / 1000 + cfg->turn_ttl_s;
        if (signalling_turn_credential(cfg->turn_secret, expires_s, rpc_call_caller(call)->user_id, srv->username,
                                       sizeof(srv->username), srv->credential, sizeof(srv->credential)) != 0)
            return rpc_call_error(call, LAGOON_INTERNAL, "cannot compute the TURN credential");
        if (srv->urls_count)
            resp->servers_count++;
        resp->expires_at = expires_s * 1000;
    }
    return LAGOON_OK;
}
