/* Signalling end to end: two (and three) simulated clients, each on its own connection, set up
 * a call through Connect — presence, an offer, an answer and candidates both ways, mute, leave
 * and a dropped connection seen by the others — against the real server and store; who may
 * join (outsiders, a chat not live, a second stream, a first message that is not join), the
 * per-person message rate (refused with an error event, the stream open), and the ICE servers
 * with a TURN credential checked against the openssl command line. */
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
#include "signalling.h"
#include "testserver.h"

#define SECRET "north-sea-shared-secret"
#define TTL_S 600

static test_app *T;
static lagoon_client *C;

static uint64_t olga, ann, bob, cid;
static char olga_tok[65], ann_tok[65], bob_tok[65], cid_tok[65];

/* 17 KiB each: off the stack. */
static lagoon_v1_SignalRequest REQ;
static lagoon_v1_SignalEvent EV;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    snprintf(acfg->stun_urls, sizeof(acfg->stun_urls), "stun:stun.example.com:3478");
    snprintf(acfg->turn_urls, sizeof(acfg->turn_urls),
             " turn:turn.example.com:3478?transport=udp , turns:turn.example.com:5349");
    snprintf(acfg->turn_secret, sizeof(acfg->turn_secret), SECRET);
    acfg->turn_ttl_s = TTL_S;
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(tweak);
    C = test_client(T);
    olga = test_verified_user(T, C, "olga", lagoon_v1_Role_STUDENT, olga_tok);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_STUDENT, bob_tok);
    cid = test_verified_user(T, C, "cid", lagoon_v1_Role_STUDENT, cid_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

/* A live chat of olga's with ann and bob (StartNow): its id. */
static uint64_t live_chat(void)
{
    lagoon_v1_StartNowRequest r = lagoon_v1_StartNowRequest_init_zero;
    snprintf(r.title, sizeof(r.title), "Now");
    r.duration_minutes = 30;
    r.user_ids[0] = ann;
    r.user_ids[1] = bob;
    r.user_ids_count = 2;
    lagoon_v1_VideoChatView v = lagoon_v1_VideoChatView_init_zero;
    lagoon_set_token(C, olga_tok);
    EXPECT(lagoon_VideoChats_StartNow(C, &r, &v), LAGOON_OK, NULL);
    uint64_t id = v.chat.id;
    pb_release(lagoon_v1_VideoChatView_fields, &v);
    return id;
}

/* One simulated client: its own connection and its Connect stream. */
typedef struct peer {
    lagoon_client *c;
    lagoon_stream *s;
} peer;

static void join_req_kind(lagoon_v1_CallKind kind, uint64_t chat)
{
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = lagoon_v1_SignalRequest_join_tag;
    REQ.msg.join.kind = kind;
    REQ.msg.join.chat_id = chat;
}

static void join_req(uint64_t chat)
{
    join_req_kind(lagoon_v1_CallKind_VIDEO_CHAT, chat);
}

/* Opens tok's stream and sends join (REQ as join_req_kind set it); fails the test unless the
 * server answers presence. */
static void peer_join_req(peer *p, const char *tok, size_t expect_members)
{
    p->c = test_client(T);
    lagoon_set_token(p->c, tok);
    assert_int_equal(lagoon_Signalling_Connect(p->c, &REQ, &p->s), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(p->s, &EV, 10000), 1);
    assert_int_equal(EV.which_msg, lagoon_v1_SignalEvent_presence_tag);
    assert_int_equal(EV.msg.presence.members_count, expect_members);
}

static void peer_join(peer *p, const char *tok, uint64_t chat, size_t expect_members)
{
    join_req(chat);
    peer_join_req(p, tok, expect_members);
}

/* The next event of p within 10 s, which must be of kind `which` from `from`. */
static void expect_event(peer *p, pb_size_t which, uint64_t from)
{
    assert_int_equal(lagoon_stream_recv_timeout(p->s, &EV, 10000), 1);
    assert_int_equal(EV.which_msg, which);
    assert_int_equal(EV.from_user_id, from);
}

/* Nothing more for p (a short look: the server has nothing queued for it). */
static void expect_quiet(peer *p)
{
    assert_int_equal(lagoon_stream_recv_timeout(p->s, &EV, 200), -1);
}

static void send_sdp(peer *p, int offer, uint64_t to, const char *sdp)
{
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = offer ? lagoon_v1_SignalRequest_offer_tag : lagoon_v1_SignalRequest_answer_tag;
    snprintf(offer ? REQ.msg.offer.sdp : REQ.msg.answer.sdp, sizeof(REQ.msg.offer.sdp), "%s", sdp);
    REQ.to_user_id = to;
    assert_int_equal(lagoon_Signalling_Connect_send(p->s, &REQ), LAGOON_OK);
}

static void send_candidate(peer *p, uint64_t to, const char *cand)
{
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = lagoon_v1_SignalRequest_candidate_tag;
    snprintf(REQ.msg.candidate.candidate, sizeof(REQ.msg.candidate.candidate), "%s", cand);
    snprintf(REQ.msg.candidate.sdp_mid, sizeof(REQ.msg.candidate.sdp_mid), "0");
    REQ.to_user_id = to;
    assert_int_equal(lagoon_Signalling_Connect_send(p->s, &REQ), LAGOON_OK);
}

static void peer_close(peer *p)
{
    if (p->s)
        lagoon_stream_cancel(p->s);
    lagoon_close(p->c);
    p->s = NULL;
}

/* ---- the exchange ----------------------------------------------------------------------------- */

static void test_offer_answer_candidates(void **state)
{
    (void)state;
    uint64_t chat = live_chat();
    peer o = {0}, a = {0}, b = {0};
    peer_join(&o, olga_tok, chat, 1);
    peer_join(&a, ann_tok, chat, 2);
    expect_event(&o, lagoon_v1_SignalEvent_joined_tag, ann);
    assert_int_equal(EV.msg.joined.user_id, ann);

    /* olga offers to ann; ann answers; candidates both ways. */
    send_sdp(&o, 1, ann, "v=0\r\no=olga 1 1 IN IP4 127.0.0.1\r\ns=-\r\n");
    expect_event(&a, lagoon_v1_SignalEvent_offer_tag, olga);
    assert_string_equal(EV.msg.offer.sdp, "v=0\r\no=olga 1 1 IN IP4 127.0.0.1\r\ns=-\r\n");
    send_sdp(&a, 0, olga, "v=0\r\no=ann 2 2 IN IP4 127.0.0.1\r\ns=-\r\n");
    expect_event(&o, lagoon_v1_SignalEvent_answer_tag, ann);
    assert_string_equal(EV.msg.answer.sdp, "v=0\r\no=ann 2 2 IN IP4 127.0.0.1\r\ns=-\r\n");
    send_candidate(&o, ann, "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host");
    expect_event(&a, lagoon_v1_SignalEvent_candidate_tag, olga);
    assert_string_equal(EV.msg.candidate.candidate, "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host");
    assert_string_equal(EV.msg.candidate.sdp_mid, "0");
    send_candidate(&a, 0, "candidate:2 1 udp 2122260223 192.0.2.2 54401 typ host");
    expect_event(&o, lagoon_v1_SignalEvent_candidate_tag, ann);
    assert_string_equal(EV.msg.candidate.candidate, "candidate:2 1 udp 2122260223 192.0.2.2 54401 typ host");

    /* A third: presence lists all three; an SDP of the largest size goes through whole; a
     * message to one reaches only that one. */
    peer_join(&b, bob_tok, chat, 3);
    expect_event(&o, lagoon_v1_SignalEvent_joined_tag, bob);
    expect_event(&a, lagoon_v1_SignalEvent_joined_tag, bob);
    static char big[SIGNALLING_SDP_MAX + 1];
    memset(big, 'x', SIGNALLING_SDP_MAX);
    big[SIGNALLING_SDP_MAX] = '\0';
    send_sdp(&b, 1, olga, big);
    expect_event(&o, lagoon_v1_SignalEvent_offer_tag, bob);
    assert_int_equal(strlen(EV.msg.offer.sdp), SIGNALLING_SDP_MAX);
    expect_quiet(&a);

    /* Mute goes to everyone. */
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = lagoon_v1_SignalRequest_mute_tag;
    REQ.msg.mute.audio_muted = true;
    assert_int_equal(lagoon_Signalling_Connect_send(a.s, &REQ), LAGOON_OK);
    expect_event(&o, lagoon_v1_SignalEvent_mute_tag, ann);
    assert_true(EV.msg.mute.audio_muted);
    assert_false(EV.msg.mute.video_muted);
    expect_event(&b, lagoon_v1_SignalEvent_mute_tag, ann);

    /* ann leaves: her stream ends OK, the others see it. */
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = lagoon_v1_SignalRequest_leave_tag;
    assert_int_equal(lagoon_Signalling_Connect_send(a.s, &REQ), LAGOON_OK);
    assert_int_equal(lagoon_stream_recv_timeout(a.s, &EV, 10000), 0);
    assert_int_equal(lagoon_stream_finish(a.s, NULL), LAGOON_OK);
    a.s = NULL;
    expect_event(&o, lagoon_v1_SignalEvent_left_tag, ann);
    expect_event(&b, lagoon_v1_SignalEvent_left_tag, ann);
    /* bob's connection drops without a word: olga sees him leave. */
    peer_close(&b);
    expect_event(&o, lagoon_v1_SignalEvent_left_tag, bob);
    /* ann again, on a new stream: presence shows olga and her own mute state reset. */
    lagoon_close(a.c);
    peer_join(&a, ann_tok, chat, 2);
    expect_event(&o, lagoon_v1_SignalEvent_joined_tag, ann);
    assert_false(EV.msg.joined.audio_muted);
    peer_close(&a);
    expect_event(&o, lagoon_v1_SignalEvent_left_tag, ann);
    peer_close(&o);
}

/* ---- who may join ---------------------------------------------------------------------------- */

/* Opens tok's stream with REQ and returns the status it ends with (it must end). */
static int refused(const char *tok)
{
    lagoon_client *c = test_client(T);
    lagoon_set_token(c, tok);
    lagoon_stream *s;
    int st = lagoon_Signalling_Connect(c, &REQ, &s);
    if (st == LAGOON_OK) {
        assert_int_equal(lagoon_stream_recv_timeout(s, &EV, 10000), 0);
        st = lagoon_stream_finish(s, NULL);
    }
    lagoon_close(c);
    return st;
}

static void test_who_may_join(void **state)
{
    (void)state;
    uint64_t chat = live_chat();
    join_req(chat);
    assert_int_equal(refused(cid_tok), LAGOON_NOT_FOUND);
    assert_int_equal(refused(""), LAGOON_UNAUTHENTICATED);
    join_req(424242);
    assert_int_equal(refused(ann_tok), LAGOON_NOT_FOUND);
    join_req(chat);
    REQ.msg.join.kind = lagoon_v1_CallKind_PRO_CHAT; /* no such professional chat */
    assert_int_equal(refused(ann_tok), LAGOON_NOT_FOUND);
    memset(&REQ, 0, sizeof(REQ));
    REQ.which_msg = lagoon_v1_SignalRequest_candidate_tag;
    assert_int_equal(refused(ann_tok), LAGOON_FAILED_PRECONDITION);
    /* A scheduled chat is not live yet. */
    lagoon_v1_ScheduleChatRequest sr = lagoon_v1_ScheduleChatRequest_init_zero;
    snprintf(sr.title, sizeof(sr.title), "Later");
    sr.start_at = T->clock_ms + 3600 * 1000;
    sr.duration_minutes = 30;
    sr.user_ids[0] = ann;
    sr.user_ids_count = 1;
    lagoon_v1_VideoChatView v = lagoon_v1_VideoChatView_init_zero;
    lagoon_set_token(C, olga_tok);
    EXPECT(lagoon_VideoChats_Schedule(C, &sr, &v), LAGOON_OK, NULL);
    join_req(v.chat.id);
    pb_release(lagoon_v1_VideoChatView_fields, &v);
    assert_int_equal(refused(ann_tok), LAGOON_FAILED_PRECONDITION);
    /* One stream per person per call. */
    peer a = {0};
    peer_join(&a, ann_tok, chat, 1);
    join_req(chat);
    assert_int_equal(refused(ann_tok), LAGOON_ALREADY_EXISTS);
    /* A join on an open stream is an error event; the stream stays. */
    join_req(chat);
    assert_int_equal(lagoon_Signalling_Connect_send(a.s, &REQ), LAGOON_OK);
    expect_event(&a, lagoon_v1_SignalEvent_error_tag, 0);
    assert_int_equal(EV.msg.error.code, LAGOON_FAILED_PRECONDITION);
    /* To someone not in the call: NOT_FOUND, the stream stays. */
    send_candidate(&a, bob, "candidate:1");
    expect_event(&a, lagoon_v1_SignalEvent_error_tag, 0);
    assert_int_equal(EV.msg.error.code, LAGOON_NOT_FOUND);
    /* The chat ends: the open stream ends with OK, and nobody new joins. */
    lagoon_v1_ChatIdRequest idr = {chat};
    lagoon_set_token(C, olga_tok);
    EXPECT(lagoon_VideoChats_End(C, &idr, &v), LAGOON_OK, NULL);
    pb_release(lagoon_v1_VideoChatView_fields, &v);
    assert_int_equal(lagoon_stream_recv_timeout(a.s, &EV, 10000), 0);
    assert_int_equal(lagoon_stream_finish(a.s, NULL), LAGOON_OK);
    a.s = NULL;
    join_req(chat);
    assert_int_equal(refused(olga_tok), LAGOON_FAILED_PRECONDITION);
    peer_close(&a);
}

/* ---- hostile lengths, byte by byte ------------------------------------------------------------ */

/* An offer (to everyone) whose SDP is len bytes, encoded by hand: the client's struct cannot
 * hold a longer one than the bound. Into buf; its length. */
static size_t oversize_offer(uint8_t *buf, size_t len)
{
    size_t n = 0, inner = 1 + 3 + len; /* tag, a 3-byte varint length (len < 2^21), the bytes */
    buf[n++] = (2 << 3) | 2;           /* SignalRequest.offer */
    buf[n++] = (uint8_t)(0x80 | (inner & 0x7F));
    buf[n++] = (uint8_t)(0x80 | ((inner >> 7) & 0x7F));
    buf[n++] = (uint8_t)(inner >> 14);
    buf[n++] = (1 << 3) | 2; /* SignalSdp.sdp */
    buf[n++] = (uint8_t)(0x80 | (len & 0x7F));
    buf[n++] = (uint8_t)(0x80 | ((len >> 7) & 0x7F));
    buf[n++] = (uint8_t)(len >> 14);
    memset(buf + n, 'x', len);
    return n + len;
}

/* An SDP one byte over SIGNALLING_SDP_MAX (and a candidate over its bound) after a valid join:
 * the call ends INVALID_ARGUMENT and the room hears the sender leave. */
static void test_oversize_messages(void **state)
{
    (void)state;
    uint64_t chat = live_chat();
    peer o = {0};
    peer_join(&o, olga_tok, chat, 1);
    static uint8_t buf[SIGNALLING_SDP_MAX + 64], frame[1 << 16];
    for (int round = 0; round < 2; round++) {
        int fd = raw_connect(T->srv.port, 1);
        lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
        snprintf(meta.auth_token, sizeof(meta.auth_token), "%s", ann_tok);
        uint8_t mb[512];
        long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
        assert_true(ml > 0);
        join_req(chat);
        long jl = wire_encode(&lagoon_v1_SignalRequest_info, &REQ, buf, sizeof(buf), NULL);
        assert_true(jl > 0);
        raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Signalling_Connect.id, mb, (size_t)ml, buf, (size_t)jl);
        wire_frame f = {0};
        assert_int_equal(raw_read_frame(fd, frame, sizeof(frame), &f, 10000), 1);
        assert_int_equal(f.type, WIRE_MESSAGE); /* presence */
        expect_event(&o, lagoon_v1_SignalEvent_joined_tag, ann);
        size_t n;
        if (round == 0) {
            n = oversize_offer(buf, SIGNALLING_SDP_MAX + 1);
        } else {
            /* SignalRequest.candidate { candidate: SIGNALLING_CANDIDATE_MAX + 1 bytes } */
            size_t len = SIGNALLING_CANDIDATE_MAX + 1, inner = 1 + 2 + len;
            n = 0;
            buf[n++] = (4 << 3) | 2;
            buf[n++] = (uint8_t)(0x80 | (inner & 0x7F));
            buf[n++] = (uint8_t)(inner >> 7);
            buf[n++] = (1 << 3) | 2;
            buf[n++] = (uint8_t)(0x80 | (len & 0x7F));
            buf[n++] = (uint8_t)(len >> 7);
            memset(buf + n, 'c', len);
            n += len;
        }
        raw_send_frame(fd, WIRE_MESSAGE, 0, 1, 0, NULL, 0, buf, n);
        uint32_t id = 0;
        assert_int_equal(raw_read_reply(fd, &id, NULL, 0), LAGOON_INVALID_ARGUMENT);
        assert_int_equal(id, 1);
        expect_event(&o, lagoon_v1_SignalEvent_left_tag, ann);
        close(fd);
    }
    expect_quiet(&o);
    peer_close(&o);
}

/* ---- the rate ---------------------------------------------------------------------------------- */

/* A live chat with olga, then ann, connected (olga has seen ann join): its id. */
static uint64_t olga_and_ann(peer *o, peer *a)
{
    uint64_t chat = live_chat();
    peer_join(o, olga_tok, chat, 1);
    peer_join(a, ann_tok, chat, 2);
    expect_event(o, lagoon_v1_SignalEvent_joined_tag, ann);
    return chat;
}

static void test_message_rate(void **state)
{
    (void)state;
    peer o = {0}, a = {0};
    uint64_t chat = olga_and_ann(&o, &a);
    /* The clock stands still: the window's whole budget, then one too many. */
    for (int i = 0; i < SIGNALLING_RATE_MAX; i++)
        send_candidate(&a, olga, "candidate:rate");
    for (int i = 0; i < SIGNALLING_RATE_MAX; i++)
        expect_event(&o, lagoon_v1_SignalEvent_candidate_tag, ann);
    send_candidate(&a, olga, "candidate:one too many");
    expect_event(&a, lagoon_v1_SignalEvent_error_tag, 0);
    assert_int_equal(EV.msg.error.code, LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(EV.msg.error.retry_after_ms, SIGNALLING_RATE_WINDOW_MS);
    expect_quiet(&o);
    /* olga's own budget is hers. */
    send_candidate(&o, ann, "candidate:from olga");
    expect_event(&a, lagoon_v1_SignalEvent_candidate_tag, olga);
    /* A window later the stream, still open, carries messages again. */
    test_clock_advance(T, SIGNALLING_RATE_WINDOW_MS);
    send_candidate(&a, olga, "candidate:again");
    expect_event(&o, lagoon_v1_SignalEvent_candidate_tag, ann);
    assert_string_equal(EV.msg.candidate.candidate, "candidate:again");
    /* Refused messages count too (each is an error event to send): a window of joins, then the
     * next message is over the rate. */
    test_clock_advance(T, SIGNALLING_RATE_WINDOW_MS);
    join_req(chat);
    for (int i = 0; i < SIGNALLING_RATE_MAX; i++)
        assert_int_equal(lagoon_Signalling_Connect_send(a.s, &REQ), LAGOON_OK);
    for (int i = 0; i < SIGNALLING_RATE_MAX; i++) {
        expect_event(&a, lagoon_v1_SignalEvent_error_tag, 0);
        assert_int_equal(EV.msg.error.code, LAGOON_FAILED_PRECONDITION);
    }
    send_candidate(&a, olga, "candidate:over");
    expect_event(&a, lagoon_v1_SignalEvent_error_tag, 0);
    assert_int_equal(EV.msg.error.code, LAGOON_RESOURCE_EXHAUSTED);
    expect_quiet(&o);
    peer_close(&a);
    peer_close(&o);
}

/* ---- people who are no longer in the chat ------------------------------------------------------ */

/* An attendee who unregisters from a live session is out of its call at once (PERMISSION_DENIED),
 * the others seeing it leave. */
static void test_unregistered_mid_call(void **state)
{
    (void)state;
    char tess_tok[65], root_tok[65];
    uint64_t tess = test_verified_user(T, C, "tess", lagoon_v1_Role_TEACHER, tess_tok);
    test_admin_user(T, C, "root", root_tok);
    static lagoon_v1_CreateProChatRequest cr;
    memset(&cr, 0, sizeof(cr));
    snprintf(cr.title, sizeof(cr.title), "Sleep");
    snprintf(cr.topic, sizeof(cr.topic), "Sleep");
    snprintf(cr.category, sizeof(cr.category), "sleep");
    cr.capacity = 5;
    cr.start_at = T->clock_ms + 3600 * 1000;
    cr.duration_minutes = 60;
    static lagoon_v1_ProChatView v;
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Create(C, &cr, &v), LAGOON_OK, NULL);
    lagoon_v1_ProChatIdRequest id = {v.chat.id};
    EXPECT(lagoon_ProfessionalChats_Submit(C, &id, &v), LAGOON_OK, NULL);
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_ProfessionalChats_Approve(C, &id, &v), LAGOON_OK, NULL);
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_ProfessionalChats_Register(C, &id, &v), LAGOON_OK, NULL);
    lagoon_set_token(C, bob_tok);
    EXPECT(lagoon_ProfessionalChats_Register(C, &id, &v), LAGOON_OK, NULL);
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Start(C, &id, &v), LAGOON_OK, NULL);
    peer h = {0}, a = {0}, b = {0};
    join_req_kind(lagoon_v1_CallKind_PRO_CHAT, id.chat_id);
    peer_join_req(&h, tess_tok, 1);
    join_req_kind(lagoon_v1_CallKind_PRO_CHAT, id.chat_id);
    peer_join_req(&a, ann_tok, 2);
    expect_event(&h, lagoon_v1_SignalEvent_joined_tag, ann);
    join_req_kind(lagoon_v1_CallKind_PRO_CHAT, id.chat_id);
    peer_join_req(&b, bob_tok, 3);
    expect_event(&h, lagoon_v1_SignalEvent_joined_tag, bob);
    expect_event(&a, lagoon_v1_SignalEvent_joined_tag, bob);
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_ProfessionalChats_Unregister(C, &id, &v), LAGOON_OK, NULL);
    assert_int_equal(lagoon_stream_recv_timeout(a.s, &EV, 10000), 0);
    assert_int_equal(lagoon_stream_finish(a.s, NULL), LAGOON_PERMISSION_DENIED);
    a.s = NULL;
    expect_event(&h, lagoon_v1_SignalEvent_left_tag, ann);
    expect_event(&b, lagoon_v1_SignalEvent_left_tag, ann);
    /* The host's offer now reaches bob alone. */
    send_sdp(&h, 1, 0, "v=0\r\n");
    expect_event(&b, lagoon_v1_SignalEvent_offer_tag, tess);
    peer_close(&a);
    peer_close(&b);
    peer_close(&h);
}

/* A participant whose account is deleted during the call: its next message ends its stream
 * (NOT_FOUND: the chat is no longer its), and is not relayed. */
static void test_deleted_mid_call(void **state)
{
    (void)state;
    peer o = {0}, a = {0};
    olga_and_ann(&o, &a);
    lagoon_v1_DeleteAccountRequest d = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(d.password, sizeof(d.password), TEST_PASSWORD);
    lagoon_v1_UsersEmpty e;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &d, &e), LAGOON_OK, NULL);
    send_candidate(&a, olga, "candidate:from a deleted account");
    assert_int_equal(lagoon_stream_recv_timeout(a.s, &EV, 10000), 0);
    assert_int_equal(lagoon_stream_finish(a.s, NULL), LAGOON_NOT_FOUND);
    a.s = NULL;
    expect_event(&o, lagoon_v1_SignalEvent_left_tag, ann);
    expect_quiet(&o);
    peer_close(&a);
    peer_close(&o);
}

/* ---- ICE servers ------------------------------------------------------------------------------- */

/* base64(HMAC-SHA1(SECRET, username)) as the openssl command line computes it. */
static void openssl_credential(const char *username, char *out, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "printf '%%s' '%s' | openssl dgst -sha1 -hmac '%s' -binary | openssl base64 -A",
             username, SECRET);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, (int)cap, f));
    assert_int_equal(pclose(f), 0);
    out[strcspn(out, "\n")] = '\0';
    assert_int_equal(strlen(out), 28); /* 20 bytes */
}

static void test_ice_servers(void **state)
{
    (void)state;
    lagoon_v1_IceServersRequest r = lagoon_v1_IceServersRequest_init_zero;
    lagoon_v1_IceServersResponse resp = lagoon_v1_IceServersResponse_init_zero;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Signalling_GetIceServers(C, &r, &resp), LAGOON_OK, NULL);
    assert_int_equal(resp.servers_count, 2);
    assert_int_equal(resp.servers[0].urls_count, 1);
    assert_string_equal(resp.servers[0].urls[0], "stun:stun.example.com:3478");
    assert_string_equal(resp.servers[0].username, "");
    assert_int_equal(resp.servers[1].urls_count, 2);
    assert_string_equal(resp.servers[1].urls[0], "turn:turn.example.com:3478?transport=udp");
    assert_string_equal(resp.servers[1].urls[1], "turns:turn.example.com:5349");
    long long expiry = T->clock_ms / 1000 + TTL_S;
    char want_user[64], want_pass[64];
    snprintf(want_user, sizeof(want_user), "%lld:%llu", expiry, (unsigned long long)ann);
    assert_string_equal(resp.servers[1].username, want_user);
    assert_int_equal(resp.expires_at, expiry * 1000);
    openssl_credential(want_user, want_pass, sizeof(want_pass));
    assert_string_equal(resp.servers[1].credential, want_pass);
    /* The same function on a fixed input, against the same tool. */
    char user[64], pass[64];
    assert_int_equal(signalling_turn_credential(SECRET, 1800000000, 42, user, sizeof(user), pass, sizeof(pass)), 0);
    assert_string_equal(user, "1800000000:42");
    openssl_credential("1800000000:42", want_pass, sizeof(want_pass));
    assert_string_equal(pass, want_pass);
    /* Buffers too small are refused, not cut. */
    assert_int_equal(signalling_turn_credential(SECRET, 1800000000, 42, user, 5, pass, sizeof(pass)), -1);
    assert_int_equal(signalling_turn_credential(SECRET, 1800000000, 42, user, sizeof(user), pass, 28), -1);
    lagoon_set_token(C, "");
    EXPECT(lagoon_Signalling_GetIceServers(C, &r, &resp), LAGOON_UNAUTHENTICATED, NULL);
}

/* Without settings there are no servers (and no credential computed from an empty secret). */
static void test_ice_servers_unset(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_restart(T, test_tweak_shared);
    C = test_client(T);
    lagoon_v1_IceServersRequest r = lagoon_v1_IceServersRequest_init_zero;
    lagoon_v1_IceServersResponse resp = lagoon_v1_IceServersResponse_init_zero;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Signalling_GetIceServers(C, &r, &resp), LAGOON_OK, NULL);
    assert_int_equal(resp.servers_count, 0);
    assert_int_equal(resp.expires_at, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_offer_answer_candidates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_who_may_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregistered_mid_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_mid_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ice_servers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ice_servers_unset, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
