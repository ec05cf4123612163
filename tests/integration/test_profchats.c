/* ProfessionalChats end to end against the real server and store: who may host (teachers, users
 * an administrator marked expert), the curation state machine (every action from every state,
 * by host, administrator and others), visibility and the recording, capacity and the waiting
 * list under concurrent registrations (never over capacity, promotion in line order, each
 * promoted attendee notified), the lists, reminders, and who may join the live call. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "profchats.h"
#include "scheduler.h"
#include "testserver.h"

#include "chats_support.h"

#define MIN (60LL * 1000)
#define CROWD 10

static lagoon_client *C;

/* tess teaches; sam is a student an administrator may mark expert; root administers; the crowd
 * attends. */
static uint64_t tess, sam, root, crowd[CROWD];
static char tess_tok[65], sam_tok[65], root_tok[65], crowd_tok[CROWD][65];

static lagoon_v1_ProChatView VIEW;
static lagoon_v1_ListProChatsResponse LIST;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->sched_poll_ms = 3600 * 1000; /* the tests run due jobs themselves */
    acfg->pro_chats.max_events = 1000;  /* test_every_transition creates 77 sessions */
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(tweak);
    C = test_client(T);
    tess = test_verified_user(T, C, "tess", lagoon_v1_Role_TEACHER, tess_tok);
    sam = test_verified_user(T, C, "sam", lagoon_v1_Role_STUDENT, sam_tok);
    root = test_admin_user(T, C, "root", root_tok);
    for (int i = 0; i < CROWD; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fan%d", i);
        crowd[i] = test_user(C, name, lagoon_v1_Role_STUDENT, crowd_tok[i]);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pb_release(lagoon_v1_ListProChatsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)
#define P(s) lagoon_v1_ProChat_State_##s
#define SEAT(s) lagoon_v1_ProChatSeat_Status_##s

static int create(const char *tok, const char *category, uint32_t capacity, int64_t in)
{
    static lagoon_v1_CreateProChatRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "Sleep and the first year");
    snprintf(r.topic, sizeof(r.topic), "Sleep");
    snprintf(r.category, sizeof(r.category), "%s", category);
    r.capacity = capacity;
    r.start_at = T->clock_ms + in;
    r.duration_minutes = 60;
    lagoon_set_token(C, tok);
    return lagoon_ProfessionalChats_Create(C, &r, &VIEW);
}

typedef int (*id_fn)(lagoon_client *, const lagoon_v1_ProChatIdRequest *, lagoon_v1_ProChatView *);

static int act(id_fn fn, const char *tok, uint64_t id)
{
    lagoon_v1_ProChatIdRequest r = {id};
    lagoon_set_token(C, tok);
    return fn(C, &r, &VIEW);
}

static int reject(const char *tok, uint64_t id, const char *reason)
{
    lagoon_v1_RejectProChatRequest r = lagoon_v1_RejectProChatRequest_init_zero;
    r.chat_id = id;
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    lagoon_set_token(C, tok);
    return lagoon_ProfessionalChats_Reject(C, &r, &VIEW);
}

static int feature(const char *tok, uint64_t id, int on)
{
    lagoon_v1_FeatureProChatRequest r = {id, on};
    lagoon_set_token(C, tok);
    return lagoon_ProfessionalChats_SetFeatured(C, &r, &VIEW);
}

static int recording(const char *tok, uint64_t id, const char *url)
{
    lagoon_v1_SetRecordingRequest r = lagoon_v1_SetRecordingRequest_init_zero;
    r.chat_id = id;
    snprintf(r.recording_url, sizeof(r.recording_url), "%s", url);
    lagoon_set_token(C, tok);
    return lagoon_ProfessionalChats_SetRecording(C, &r, &VIEW);
}

static int set_expert(const char *tok, uint64_t user, int on)
{
    lagoon_v1_SetExpertRequest r = {user, on};
    lagoon_v1_ExpertStatus out;
    lagoon_set_token(C, tok);
    return lagoon_ProfessionalChats_SetExpert(C, &r, &out);
}

static int list(int (*fn)(lagoon_client *, const lagoon_v1_ListProChatsRequest *, lagoon_v1_ListProChatsResponse *),
                const char *tok, const char *category)
{
    lagoon_v1_ListProChatsRequest r = lagoon_v1_ListProChatsRequest_init_zero;
    snprintf(r.category, sizeof(r.category), "%s", category);
    lagoon_set_token(C, tok);
    pb_release(lagoon_v1_ListProChatsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
    return fn(C, &r, &LIST);
}

/* A session of tess's taken to PUBLISHED: its id. */
static uint64_t published(const char *category, uint32_t capacity, int64_t in)
{
    EXPECT(create(tess_tok, category, capacity, in), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(PUBLISHED));
    return id;
}


/* ---- hosts ------------------------------------------------------------------------------------ */

static void test_who_hosts(void **state)
{
    (void)state;
    EXPECT(create(sam_tok, "sleep", 10, 60 * MIN), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_expert(sam_tok, sam, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_expert(root_tok, 999999, 1), LAGOON_NOT_FOUND, "user_id");
    EXPECT(set_expert(root_tok, sam, 1), LAGOON_OK, NULL);
    EXPECT(set_expert(root_tok, sam, 1), LAGOON_OK, NULL); /* already: unchanged */
    EXPECT(create(sam_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(DRAFT));
    assert_int_equal(VIEW.chat.host_id, sam);
    EXPECT(set_expert(root_tok, sam, 0), LAGOON_OK, NULL);
    EXPECT(create(sam_tok, "sleep", 10, 60 * MIN), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(create(tess_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL);
    EXPECT(create(tess_tok, "sleep", 10, 0), LAGOON_INVALID_ARGUMENT, "start_at");
    EXPECT(create(tess_tok, "sleep", 0, 60 * MIN), LAGOON_INVALID_ARGUMENT, "capacity");
    EXPECT(create(tess_tok, "sleep", PROFCHATS_CAPACITY_MAX + 1, 60 * MIN), LAGOON_INVALID_ARGUMENT, "capacity");
    EXPECT(create(tess_tok, "", 10, 60 * MIN), LAGOON_INVALID_ARGUMENT, "category");
}

/* ---- the curation state machine ---------------------------------------------------------------- */

static void test_curation(void **state)
{
    (void)state;
    EXPECT(create(tess_tok, "sleep", 2, 60 * MIN), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    /* A draft: the host's and the administrators' only. */
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(act(lagoon_ProfessionalChats_Get, root_tok, id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(act(lagoon_ProfessionalChats_Submit, crowd_tok[0], id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Start, tess_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Submit, root_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Approve, tess_tok, id), LAGOON_PERMISSION_DENIED, NULL); /* admin method */
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(SUBMITTED));
    /* Submitted: frozen for the host; in the review queue. */
    lagoon_v1_UpdateProChatRequest u = lagoon_v1_UpdateProChatRequest_init_zero;
    u.chat_id = id;
    u.has_capacity = true;
    u.capacity = 3;
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Update(C, &u, &VIEW), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(list(lagoon_ProfessionalChats_ListSubmitted, root_tok, ""), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    assert_int_equal(LIST.chats[0].chat.id, id);
    EXPECT(list(lagoon_ProfessionalChats_ListSubmitted, tess_tok, ""), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    /* Rejected with a reason; changed; submitted again; approved. */
    EXPECT(reject(root_tok, id, ""), LAGOON_INVALID_ARGUMENT, "reason");
    EXPECT(reject(root_tok, id, "Please say who it is for"), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(REJECTED));
    assert_string_equal(VIEW.chat.reject_reason, "Please say who it is for");
    assert_int_equal(notes(tess, lagoon_v1_Notification_Type_PRO_CHAT_REVIEWED, id), 1);
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Update(C, &u, &VIEW), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.capacity, 3);
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_OK, NULL);
    assert_string_equal(VIEW.chat.reject_reason, "");
    EXPECT(feature(root_tok, id, 1), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(PUBLISHED));
    assert_int_equal(notes(tess, lagoon_v1_Notification_Type_PRO_CHAT_REVIEWED, id), 2);
    EXPECT(feature(tess_tok, id, 1), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(feature(root_tok, id, 1), LAGOON_OK, NULL);
    assert_true(VIEW.chat.featured);
    /* Published: public, open for registration, no longer changed nor approved. */
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.seats_left, 3);
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Update(C, &u, &VIEW), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, tess_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, SEAT(REGISTERED));
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_ALREADY_EXISTS, "chat_id");
    EXPECT(recording(tess_tok, id, "https://videos.example.com/r/1"), LAGOON_FAILED_PRECONDITION, NULL);
    /* Live, then ended. */
    EXPECT(act(lagoon_ProfessionalChats_Start, crowd_tok[0], id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Start, root_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Start, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(LIVE));
    assert_int_equal(notes(crowd[0], lagoon_v1_Notification_Type_PRO_CHAT_STARTED, id), 1);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_End, crowd_tok[0], id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_End, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(ENDED));
    EXPECT(act(lagoon_ProfessionalChats_End, tess_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Unregister, crowd_tok[0], id), LAGOON_FAILED_PRECONDITION, NULL);
    /* The recording: the host and registered attendees see it, no one else. */
    EXPECT(recording(tess_tok, id, "not a url"), LAGOON_INVALID_ARGUMENT, "recording_url");
    EXPECT(recording(crowd_tok[0], id, "https://videos.example.com/r/1"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(recording(tess_tok, id, "https://videos.example.com/r/1"), LAGOON_OK, NULL);
    assert_string_equal(VIEW.chat.recording_url, "https://videos.example.com/r/1");
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], id), LAGOON_OK, NULL);
    assert_string_equal(VIEW.chat.recording_url, "https://videos.example.com/r/1");
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[1], id), LAGOON_OK, NULL);
    assert_string_equal(VIEW.chat.recording_url, "");
    EXPECT(act(lagoon_ProfessionalChats_Get, root_tok, id), LAGOON_OK, NULL);
    assert_string_equal(VIEW.chat.recording_url, "");
    EXPECT(list(lagoon_ProfessionalChats_ListRegistered, crowd_tok[0], ""), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    assert_string_equal(LIST.chats[0].chat.recording_url, "https://videos.example.com/r/1");
    EXPECT(list(lagoon_ProfessionalChats_ListHosted, tess_tok, ""), LAGOON_OK, NULL);
    assert_string_equal(LIST.chats[0].chat.recording_url, "https://videos.example.com/r/1");

    /* Cancelled: from any state before live, by the host or an administrator, attendees told. */
    uint64_t c2 = published("sleep", 1, 60 * MIN);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], c2), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], c2), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, SEAT(WAITING));
    EXPECT(act(lagoon_ProfessionalChats_Cancel, crowd_tok[0], c2), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, root_tok, c2), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(CANCELLED));
    assert_int_equal(notes(crowd[0], lagoon_v1_Notification_Type_PRO_CHAT_CANCELLED, c2), 1);
    assert_int_equal(notes(crowd[1], lagoon_v1_Notification_Type_PRO_CHAT_CANCELLED, c2), 1);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, c2), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(create(tess_tok, "sleep", 1, 60 * MIN), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, VIEW.chat.id), LAGOON_OK, NULL);
    /* Without a token: nothing. */
    EXPECT(act(lagoon_ProfessionalChats_Get, "", id), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, "", id), LAGOON_UNAUTHENTICATED, NULL);
}

/* ---- capacity and the waiting list ------------------------------------------------------------- */

typedef struct racer {
    uint64_t chat;
    pthread_barrier_t *go;
    int i;
    int status;
} racer;

static void *register_racer(void *arg)
{
    racer *r = arg;
    lagoon_client *c = test_client(T);
    lagoon_set_token(c, crowd_tok[r->i]);
    lagoon_v1_ProChatIdRequest req = {r->chat};
    lagoon_v1_ProChatView v = lagoon_v1_ProChatView_init_zero;
    pthread_barrier_wait(r->go);
    r->status = lagoon_ProfessionalChats_Register(c, &req, &v);
    lagoon_close(c);
    return NULL;
}

/* The seats of chat in the store: registered ones, and the waiting users in line order. */
static void seats(uint64_t chat, uint32_t *registered, uint64_t *line, uint32_t *nline)
{
    *registered = 0;
    *nline = 0;
    for (int i = 0; i < CROWD; i++) {
        EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[i], chat), LAGOON_OK, NULL);
        if (VIEW.my_status == SEAT(REGISTERED))
            (*registered)++;
        else if (VIEW.my_status == SEAT(WAITING)) {
            assert_true(VIEW.my_place >= 1 && VIEW.my_place <= CROWD);
            line[VIEW.my_place - 1] = crowd[i];
            (*nline)++;
        }
    }
}

static int crowd_index(uint64_t user)
{
    for (int i = 0; i < CROWD; i++)
        if (crowd[i] == user)
            return i;
    fail();
    return -1;
}

static void test_capacity_and_waiting_list(void **state)
{
    (void)state;
    const uint32_t cap = 3;
    uint64_t id = published("sleep", cap, 60 * MIN);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, CROWD);
    racer rs[CROWD];
    pthread_t th[CROWD];
    for (int i = 0; i < CROWD; i++) {
        rs[i] = (racer){id, &go, i, -1};
        assert_int_equal(pthread_create(&th[i], NULL, register_racer, &rs[i]), 0);
    }
    for (int i = 0; i < CROWD; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    for (int i = 0; i < CROWD; i++)
        assert_int_equal(rs[i].status, LAGOON_OK);
    EXPECT(act(lagoon_ProfessionalChats_Get, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.registered, cap);
    assert_int_equal(VIEW.chat.waiting, CROWD - cap);
    assert_int_equal(VIEW.seats_left, 0);
    uint32_t registered, nline;
    uint64_t line[CROWD];
    seats(id, &registered, line, &nline);
    assert_int_equal(registered, cap);
    assert_int_equal(nline, CROWD - cap); /* places 1..7, each once */

    /* A waiting one leaves: no promotion; the line closes up. */
    int leaver = crowd_index(line[1]);
    EXPECT(act(lagoon_ProfessionalChats_Unregister, crowd_tok[leaver], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, lagoon_v1_ProChatSeat_Status_STATUS_UNSPECIFIED);
    memmove(&line[1], &line[2], (nline - 2) * sizeof(line[0]));
    nline--;
    uint32_t r2, n2;
    uint64_t line2[CROWD];
    seats(id, &r2, line2, &n2);
    assert_int_equal(r2, cap);
    assert_int_equal(n2, nline);
    assert_memory_equal(line2, line, nline * sizeof(line[0]));

    /* Each registered one who leaves makes room for the first in line, who is told. */
    for (int round = 0; round < (int)cap; round++) {
        int out = -1;
        for (int i = 0; i < CROWD && out < 0; i++) {
            EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[i], id), LAGOON_OK, NULL);
            if (VIEW.my_status == SEAT(REGISTERED))
                out = i;
        }
        uint64_t next = line[0];
        assert_int_equal(notes(next, lagoon_v1_Notification_Type_PRO_CHAT_SEAT, id), 0);
        EXPECT(act(lagoon_ProfessionalChats_Unregister, crowd_tok[out], id), LAGOON_OK, NULL);
        assert_int_equal(VIEW.chat.registered, cap);
        assert_int_equal(notes(next, lagoon_v1_Notification_Type_PRO_CHAT_SEAT, id), 1);
        EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[crowd_index(next)], id), LAGOON_OK, NULL);
        assert_int_equal(VIEW.my_status, SEAT(REGISTERED));
        memmove(&line[0], &line[1], (nline - 1) * sizeof(line[0]));
        nline--;
        seats(id, &r2, line2, &n2);
        assert_int_equal(r2, cap);
        assert_int_equal(n2, nline);
        assert_memory_equal(line2, line, nline * sizeof(line[0]));
        /* Back in, at the end of the line. */
        EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[out], id), LAGOON_OK, NULL);
        assert_int_equal(VIEW.my_status, SEAT(WAITING));
        assert_int_equal(VIEW.my_place, nline + 1);
        line[nline++] = crowd[out];
    }
    EXPECT(act(lagoon_ProfessionalChats_Get, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.registered, cap);
    assert_int_equal(VIEW.chat.waiting, nline);
}

/* A seat freed by a deleted account goes to the first in line at the next Register. */
static void test_deleted_attendee_frees_a_seat(void **state)
{
    (void)state;
    uint64_t id = published("sleep", 1, 60 * MIN);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, SEAT(WAITING));
    lagoon_v1_DeleteAccountRequest d = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(d.password, sizeof(d.password), TEST_PASSWORD);
    lagoon_v1_UsersEmpty e;
    lagoon_set_token(C, crowd_tok[0]);
    EXPECT(lagoon_Users_DeleteAccount(C, &d, &e), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[2], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, SEAT(WAITING));
    assert_int_equal(VIEW.my_place, 1);
    assert_int_equal(VIEW.chat.registered, 1);
    assert_int_equal(VIEW.chat.waiting, 1);
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[1], id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_status, SEAT(REGISTERED));
    assert_int_equal(notes(crowd[1], lagoon_v1_Notification_Type_PRO_CHAT_SEAT, id), 1);
}

/* ---- lists and reminders ------------------------------------------------------------------------ */

static void test_lists(void **state)
{
    (void)state;
    uint64_t late = published("sleep", 5, 120 * MIN);
    uint64_t soon = published("sleep", 5, 60 * MIN);
    uint64_t food = published("food", 5, 90 * MIN);
    EXPECT(create(tess_tok, "sleep", 5, 30 * MIN), LAGOON_OK, NULL); /* a draft: not listed */
    uint64_t draft = VIEW.chat.id;
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], late), LAGOON_OK, NULL);
    EXPECT(list(lagoon_ProfessionalChats_ListPublished, crowd_tok[1], "sleep"), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 2);
    assert_int_equal(LIST.chats[0].chat.id, soon);
    assert_int_equal(LIST.chats[1].chat.id, late);
    assert_int_equal(LIST.chats[1].seats_left, 4);
    EXPECT(list(lagoon_ProfessionalChats_ListPublished, crowd_tok[1], ""), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 3);
    assert_int_equal(LIST.chats[1].chat.id, food);
    EXPECT(list(lagoon_ProfessionalChats_ListHosted, tess_tok, ""), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 4);
    assert_int_equal(LIST.chats[0].chat.id, late); /* newest start first */
    assert_int_equal(LIST.chats[3].chat.id, draft);
    EXPECT(list(lagoon_ProfessionalChats_ListRegistered, crowd_tok[0], ""), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    assert_int_equal(LIST.chats[0].my_status, SEAT(REGISTERED));
    /* An hour on, the one that started (its time passed) is no longer upcoming. */
    test_clock_advance(T, 61 * MIN);
    EXPECT(list(lagoon_ProfessionalChats_ListPublished, crowd_tok[1], "sleep"), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    assert_int_equal(LIST.chats[0].chat.id, late);
}


static void test_reminders(void **state)
{
    (void)state;
    uint64_t id = published("sleep", 1, 60 * MIN);
    uint64_t gone = published("sleep", 1, 60 * MIN);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], id), LAGOON_OK, NULL); /* waiting */
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], gone), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, gone), LAGOON_OK, NULL);
    test_clock_advance(T, 45 * MIN);
    assert_int_equal(run_due(), 1); /* the cancelled one's are gone */
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(crowd[0], lagoon_v1_Notification_Type_PRO_CHAT_REMINDER, id), 1);
    assert_int_equal(notes(tess, lagoon_v1_Notification_Type_PRO_CHAT_REMINDER, id), 1);
    assert_int_equal(notes(crowd[1], lagoon_v1_Notification_Type_PRO_CHAT_REMINDER, id), 0);
    assert_int_equal(notes(crowd[0], lagoon_v1_Notification_Type_PRO_CHAT_REMINDER, gone), 0);
    /* Started early: no reminder at the start. */
    EXPECT(act(lagoon_ProfessionalChats_Start, tess_tok, id), LAGOON_OK, NULL);
    test_clock_advance(T, 15 * MIN);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(crowd[0], lagoon_v1_Notification_Type_PRO_CHAT_STARTED, id), 1); /* Start's own */
}

/* ---- the live call ------------------------------------------------------------------------------ */

static int join(const char *tok, uint64_t chat)
{
    static lagoon_v1_SignalRequest req;
    static lagoon_v1_SignalEvent ev;
    memset(&req, 0, sizeof(req));
    req.which_msg = lagoon_v1_SignalRequest_join_tag;
    req.msg.join.kind = lagoon_v1_CallKind_PRO_CHAT;
    req.msg.join.chat_id = chat;
    lagoon_client *c = test_client(T);
    lagoon_set_token(c, tok);
    lagoon_stream *s;
    int st = lagoon_Signalling_Connect(c, &req, &s);
    if (st == LAGOON_OK) {
        int got = lagoon_stream_recv_timeout(s, &ev, 10000);
        if (got == 1) {
            assert_int_equal(ev.which_msg, lagoon_v1_SignalEvent_presence_tag);
            lagoon_stream_cancel(s);
        } else {
            assert_int_equal(got, 0);
            st = lagoon_stream_finish(s, NULL);
        }
    }
    lagoon_close(c);
    return st;
}

static void test_who_joins_the_call(void **state)
{
    (void)state;
    uint64_t id = published("sleep", 1, 60 * MIN);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], id), LAGOON_OK, NULL); /* waiting */
    assert_int_equal(join(tess_tok, id), LAGOON_FAILED_PRECONDITION); /* not live */
    EXPECT(act(lagoon_ProfessionalChats_Start, tess_tok, id), LAGOON_OK, NULL);
    assert_int_equal(join(tess_tok, id), LAGOON_OK);
    assert_int_equal(join(crowd_tok[0], id), LAGOON_OK);
    assert_int_equal(join(crowd_tok[1], id), LAGOON_PERMISSION_DENIED);
    assert_int_equal(join(crowd_tok[2], id), LAGOON_PERMISSION_DENIED);
    assert_int_equal(join(root_tok, id), LAGOON_PERMISSION_DENIED);
    EXPECT(create(tess_tok, "sleep", 1, 60 * MIN), LAGOON_OK, NULL);
    assert_int_equal(join(crowd_tok[0], VIEW.chat.id), LAGOON_NOT_FOUND); /* a draft */
}

/* ---- every action from every state --------------------------------------------------------------- */

/* A new session of tess's in state st (crowd[0] registered from publication on): its id. */
static uint64_t in_state(lagoon_v1_ProChat_State st)
{
    EXPECT(create(tess_tok, "sleep", 5, 60 * MIN), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    if (st == P(CANCELLED)) {
        EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, id), LAGOON_OK, NULL);
        return id;
    }
    if (st == P(DRAFT))
        return id;
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_OK, NULL);
    if (st == P(SUBMITTED))
        return id;
    if (st == P(REJECTED)) {
        EXPECT(reject(root_tok, id, "Not yet"), LAGOON_OK, NULL);
        return id;
    }
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    if (st != P(PUBLISHED))
        EXPECT(act(lagoon_ProfessionalChats_Start, tess_tok, id), LAGOON_OK, NULL);
    if (st == P(ENDED))
        EXPECT(act(lagoon_ProfessionalChats_End, tess_tok, id), LAGOON_OK, NULL);
    return id;
}

enum { A_UPDATE, A_SUBMIT, A_APPROVE, A_REJECT, A_FEATURE, A_CANCEL, A_START, A_END, A_RECORDING, A_REGISTER,
       A_UNREGISTER, A_COUNT };

/* Action a on id by the one who may do it (the host, an administrator, or an attendee). */
static int do_action(int a, uint64_t id)
{
    lagoon_v1_UpdateProChatRequest u = lagoon_v1_UpdateProChatRequest_init_zero;
    switch (a) {
    case A_UPDATE:
        u.chat_id = id;
        u.has_duration_minutes = true;
        u.duration_minutes = 90;
        lagoon_set_token(C, tess_tok);
        return lagoon_ProfessionalChats_Update(C, &u, &VIEW);
    case A_SUBMIT: return act(lagoon_ProfessionalChats_Submit, tess_tok, id);
    case A_APPROVE: return act(lagoon_ProfessionalChats_Approve, root_tok, id);
    case A_REJECT: return reject(root_tok, id, "No");
    case A_FEATURE: return feature(root_tok, id, 1);
    case A_CANCEL: return act(lagoon_ProfessionalChats_Cancel, tess_tok, id);
    case A_START: return act(lagoon_ProfessionalChats_Start, tess_tok, id);
    case A_END: return act(lagoon_ProfessionalChats_End, tess_tok, id);
    case A_RECORDING: return recording(tess_tok, id, "https://videos.example.com/r/2");
    case A_REGISTER: return act(lagoon_ProfessionalChats_Register, crowd_tok[1], id);
    default: return act(lagoon_ProfessionalChats_Unregister, crowd_tok[0], id);
    }
}

/* Each action from each of the seven states, on a session of its own: allowed ones give the
 * state of the table in docs/API.md, the others FAILED_PRECONDITION (or NOT_FOUND for an
 * attendee who may not see the session). */
static void test_every_transition(void **state)
{
    (void)state;
    enum { UNCH = 0, HIDDEN = -1, REFUSED = -2 };
    static const lagoon_v1_ProChat_State states[] = {P(DRAFT), P(SUBMITTED), P(REJECTED), P(PUBLISHED),
                                                     P(LIVE),  P(ENDED),     P(CANCELLED)};
    /* [action][state]: the state after, UNCH (allowed, unchanged), REFUSED, or HIDDEN. */
    static const int want[A_COUNT][7] = {
        [A_UPDATE] = {UNCH, REFUSED, UNCH, REFUSED, REFUSED, REFUSED, REFUSED},
        [A_SUBMIT] = {P(SUBMITTED), REFUSED, P(SUBMITTED), REFUSED, REFUSED, REFUSED, REFUSED},
        [A_APPROVE] = {REFUSED, P(PUBLISHED), REFUSED, REFUSED, REFUSED, REFUSED, REFUSED},
        [A_REJECT] = {REFUSED, P(REJECTED), REFUSED, REFUSED, REFUSED, REFUSED, REFUSED},
        [A_FEATURE] = {REFUSED, REFUSED, REFUSED, UNCH, UNCH, REFUSED, REFUSED},
        [A_CANCEL] = {P(CANCELLED), P(CANCELLED), P(CANCELLED), P(CANCELLED), REFUSED, REFUSED, REFUSED},
        [A_START] = {REFUSED, REFUSED, REFUSED, P(LIVE), REFUSED, REFUSED, REFUSED},
        [A_END] = {REFUSED, REFUSED, REFUSED, REFUSED, P(ENDED), REFUSED, REFUSED},
        [A_RECORDING] = {REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, UNCH, REFUSED},
        [A_REGISTER] = {HIDDEN, HIDDEN, HIDDEN, UNCH, REFUSED, REFUSED, HIDDEN},
        [A_UNREGISTER] = {HIDDEN, HIDDEN, HIDDEN, UNCH, UNCH, REFUSED, HIDDEN},
    };
    for (int a = 0; a < A_COUNT; a++) {
        for (int i = 0; i < 7; i++) {
            uint64_t id = in_state(states[i]);
            int st = do_action(a, id);
            int w = want[a][i];
            if (w == HIDDEN) {
                EXPECT(st, LAGOON_NOT_FOUND, "chat_id");
                continue;
            }
            if (w == REFUSED) {
                EXPECT(st, LAGOON_FAILED_PRECONDITION, NULL);
                EXPECT(act(lagoon_ProfessionalChats_Get, tess_tok, id), LAGOON_OK, NULL);
                assert_int_equal(VIEW.chat.state, states[i]); /* nothing changed */
                continue;
            }
            EXPECT(st, LAGOON_OK, NULL);
            assert_int_equal(VIEW.chat.state, w == UNCH ? (int)states[i] : w);
        }
    }
}

/* ---- visibility of a cancelled session, long titles, the budget ------------------------------- */

/* A draft (or a rejected session) cancelled stays the host's and the administrators'; one
 * cancelled after it was published stays public. */
static void test_cancelled_visibility(void **state)
{
    (void)state;
    EXPECT(create(tess_tok, "sleep", 2, 60 * MIN), LAGOON_OK, NULL);
    uint64_t draft = VIEW.chat.id;
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, draft), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(CANCELLED));
    assert_int_equal(VIEW.chat.published_at, 0);
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], draft), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(act(lagoon_ProfessionalChats_Get, tess_tok, draft), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Get, root_tok, draft), LAGOON_OK, NULL);
    EXPECT(create(tess_tok, "sleep", 2, 60 * MIN), LAGOON_OK, NULL);
    uint64_t rejected = VIEW.chat.id;
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, rejected), LAGOON_OK, NULL);
    EXPECT(reject(root_tok, rejected, "Not this month"), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, root_tok, rejected), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], rejected), LAGOON_NOT_FOUND, "chat_id");
    uint64_t pub = published("sleep", 2, 60 * MIN);
    assert_int_equal(VIEW.chat.published_at, T->clock_ms);
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, pub), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Get, crowd_tok[0], pub), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.state, P(CANCELLED));
}

/* A title of 200 four-byte characters: the notifications' titles are cut on a character
 * boundary. */
static void test_long_title_notifications(void **state)
{
    (void)state;
    static lagoon_v1_CreateProChatRequest r;
    memset(&r, 0, sizeof(r));
    for (int i = 0; i < 200; i++)
        memcpy(r.title + 4 * i, "\xF0\x9F\x98\x80", 4); /* U+1F600 */
    snprintf(r.topic, sizeof(r.topic), "Sleep");
    snprintf(r.category, sizeof(r.category), "sleep");
    r.capacity = 1;
    r.start_at = T->clock_ms + 60 * MIN;
    r.duration_minutes = 60;
    lagoon_set_token(C, tess_tok);
    EXPECT(lagoon_ProfessionalChats_Create(C, &r, &VIEW), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    EXPECT(act(lagoon_ProfessionalChats_Submit, tess_tok, id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Approve, root_tok, id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[0], id), LAGOON_OK, NULL);
    EXPECT(act(lagoon_ProfessionalChats_Register, crowd_tok[1], id), LAGOON_OK, NULL); /* waiting */
    EXPECT(act(lagoon_ProfessionalChats_Unregister, crowd_tok[0], id), LAGOON_OK, NULL); /* crowd[1] seated */
    EXPECT(act(lagoon_ProfessionalChats_Cancel, tess_tok, id), LAGOON_OK, NULL);
    size_t n = 0;
    assert_int_equal(bad_titles(tess, &n), 0);
    assert_int_equal(n, 1); /* published */
    assert_int_equal(bad_titles(crowd[1], &n), 0);
    assert_int_equal(n, 2); /* a seat, the cancellation */
}

static void tweak_budget(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->pro_chats.max_events = 2;
    acfg->access_ttl_s = 7 * 24 * 3600; /* the test waits out a day */
}

static int setup_budget(void **state)
{
    (void)state;
    T = test_app_new(tweak_budget);
    C = test_client(T);
    tess = test_verified_user(T, C, "tess", lagoon_v1_Role_TEACHER, tess_tok);
    sam = test_verified_user(T, C, "sam", lagoon_v1_Role_TEACHER, sam_tok);
    return 0;
}

/* pro-chats-per-day: only calls that store a session count; past it RESOURCE_EXHAUSTED with
 * retry_after_ms until the day from the first is over. */
static void test_budget(void **state)
{
    (void)state;
    EXPECT(create(tess_tok, "sleep", 10, 0), LAGOON_INVALID_ARGUMENT, "start_at"); /* not counted */
    EXPECT(create(tess_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL);
    EXPECT(create(tess_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL);
    EXPECT(create(tess_tok, "sleep", 10, 60 * MIN), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    EXPECT(create(sam_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL); /* per user */
    test_clock_advance(T, 24LL * 60 * MIN);
    EXPECT(create(tess_tok, "sleep", 10, 60 * MIN), LAGOON_OK, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_who_hosts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capacity_and_waiting_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_attendee_frees_a_seat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_who_joins_the_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_transition, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_visibility, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_title_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup_budget, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
