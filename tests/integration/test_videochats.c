/* VideoChats end to end through the generated client against the real server and store, with
 * the injected clock: scheduling rules and refusals, invitation answers (and their reset by a
 * time change), the reminders (fire once, move with an update, vanish on cancel, survive a
 * restart, driven by the scheduler's own thread too), start now, start early, end, delete, the
 * lists in order with pages, a group's chat, and the authorization matrix (organizer,
 * participant, outsider, administrator, no token). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "events.h"
#include "lagoon_stubs.h"
#include "lagoon_tables.h"
#include "scheduler.h"
#include "testserver.h"

#include "chats_support.h"

#define MIN (60LL * 1000)
#define LEAD_MIN 15 /* the default video-chat-reminder-minutes */

static lagoon_client *C;

/* olga organizes; ann and bob are invited; cid is an outsider; root administers. */
static uint64_t olga, ann, bob, cid, root;
static char olga_tok[65], ann_tok[65], bob_tok[65], cid_tok[65], root_tok[65];

static lagoon_v1_VideoChatView VIEW;
static lagoon_v1_ListChatsResponse LIST;

/* The scheduler's thread idles (an hour between looks): the tests run due jobs themselves with
 * sched_run_due, so what ran when is decided by the test alone. */
static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->sched_poll_ms = 3600 * 1000;
}

/* The thread looks every 20 ms: for the test that waits for it. */
static void tweak_polling(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->sched_poll_ms = 20;
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
    root = test_admin_user(T, C, "root", root_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pb_release(lagoon_v1_VideoChatView_fields, &VIEW);
    pb_release(lagoon_v1_ListChatsResponse_fields, &LIST);
    memset(&VIEW, 0, sizeof(VIEW));
    memset(&LIST, 0, sizeof(LIST));
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

/* ---- helpers -------------------------------------------------------------------------------- */

static void view_reset(void)
{
    pb_release(lagoon_v1_VideoChatView_fields, &VIEW);
    memset(&VIEW, 0, sizeof(VIEW));
}

static int schedule_at(const char *tok, int64_t start_at, const uint64_t *users, size_t n)
{
    static lagoon_v1_ScheduleChatRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "Sunday call");
    r.start_at = start_at;
    r.duration_minutes = 30;
    for (size_t i = 0; i < n; i++)
        r.user_ids[i] = users[i];
    r.user_ids_count = (pb_size_t)n;
    lagoon_set_token(C, tok);
    view_reset();
    return lagoon_VideoChats_Schedule(C, &r, &VIEW);
}

/* olga's chat with ann and bob, starting in `in` ms: its id. */
static uint64_t olga_chat(int64_t in)
{
    uint64_t users[] = {ann, bob};
    EXPECT(schedule_at(olga_tok, T->clock_ms + in, users, 2), LAGOON_OK, NULL);
    return VIEW.chat.id;
}

static int by_id(int (*fn)(lagoon_client *, const lagoon_v1_ChatIdRequest *, lagoon_v1_VideoChatView *),
                 const char *tok, uint64_t id)
{
    lagoon_v1_ChatIdRequest r = {id};
    lagoon_set_token(C, tok);
    view_reset();
    return fn(C, &r, &VIEW);
}

static int answer(const char *tok, uint64_t id, lagoon_v1_VideoChatParticipant_Answer a)
{
    lagoon_v1_AnswerChatRequest r = {id, a};
    lagoon_set_token(C, tok);
    view_reset();
    return lagoon_VideoChats_Answer(C, &r, &VIEW);
}

static int del(const char *tok, uint64_t id)
{
    lagoon_v1_ChatIdRequest r = {id};
    lagoon_v1_VideoChatsEmpty e;
    lagoon_set_token(C, tok);
    return lagoon_VideoChats_Delete(C, &r, &e);
}

static int list(const char *tok, int past, uint32_t size, const char *token)
{
    lagoon_v1_ListChatsRequest r = {0};
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    pb_release(lagoon_v1_ListChatsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
    return past ? lagoon_VideoChats_ListPast(C, &r, &LIST) : lagoon_VideoChats_ListUpcoming(C, &r, &LIST);
}



/* Whether chat's reminder job of slot is stored, and when it is due. */
static int job_due(uint64_t chat, uint32_t slot, int64_t *due)
{
    store_txn *t;
    store_error err;
    lagoon_v1_ScheduledJob j;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = sched_get(t, lagoon_v1_JobKind_VIDEO_CHAT_REMINDER, chat, slot, &j, &err);
    store_read_end(t);
    if (st == LAGOON_OK && due)
        *due = j.due_at;
    return st == LAGOON_OK;
}

#define REMINDER lagoon_v1_Notification_Type_VIDEO_CHAT_REMINDER
#define STARTED lagoon_v1_Notification_Type_VIDEO_CHAT_STARTED
#define A(x) lagoon_v1_VideoChatParticipant_Answer_##x
#define S(x) lagoon_v1_VideoChat_Status_##x

/* ---- scheduling rules --------------------------------------------------------------------- */

static void test_schedule_refusals(void **state)
{
    (void)state;
    uint64_t users[] = {ann, bob};
    EXPECT(schedule_at(olga_tok, T->clock_ms, users, 2), LAGOON_INVALID_ARGUMENT, "start_at");
    EXPECT(schedule_at(olga_tok, T->clock_ms + 400LL * 24 * 60 * MIN, users, 2), LAGOON_INVALID_ARGUMENT, "start_at");
    uint64_t self[] = {ann, olga};
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, self, 2), LAGOON_INVALID_ARGUMENT, "user_ids[1]");
    uint64_t twice[] = {ann, bob, ann};
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, twice, 3), LAGOON_INVALID_ARGUMENT, "user_ids[2]");
    uint64_t nobody[] = {ann, 999999};
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, nobody, 2), LAGOON_NOT_FOUND, "user_ids[1]");

    lagoon_v1_ScheduleChatRequest r = lagoon_v1_ScheduleChatRequest_init_zero;
    snprintf(r.title, sizeof(r.title), "x");
    r.start_at = T->clock_ms + MIN;
    r.duration_minutes = 4;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_INVALID_ARGUMENT, "duration_minutes");
    r.duration_minutes = 481;
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_INVALID_ARGUMENT, "duration_minutes");
    r.duration_minutes = 5;
    r.group_id = 1;
    r.user_ids[0] = ann;
    r.user_ids_count = 1;
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_INVALID_ARGUMENT, "group_id");
    r.user_ids_count = 0;
    r.group_id = 424242;
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_NOT_FOUND, "group_id");
    /* Nothing of these was stored: nobody was invited. */
    assert_int_equal(notes(ann, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, 1), 0);
    EXPECT(list(ann_tok, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 0);
}

static void test_answers(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    assert_int_equal(VIEW.chat.status, S(SCHEDULED));
    assert_int_equal(VIEW.chat.participant_count, 3);
    assert_int_equal(VIEW.participants_count, 3);
    assert_int_equal(VIEW.my_answer, A(ACCEPTED));
    assert_int_equal(notes(ann, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, id), 1);
    assert_int_equal(notes(bob, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, id), 1);
    assert_int_equal(notes(olga, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, id), 0);

    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(PENDING));
    EXPECT(answer(ann_tok, id, A(ACCEPTED)), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(ACCEPTED));
    EXPECT(answer(bob_tok, id, A(TENTATIVE)), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(TENTATIVE));
    EXPECT(answer(bob_tok, id, A(DECLINED)), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(DECLINED));
    EXPECT(answer(bob_tok, id, A(PENDING)), LAGOON_INVALID_ARGUMENT, "answer");
    EXPECT(answer(bob_tok, id, (lagoon_v1_VideoChatParticipant_Answer)9), LAGOON_INVALID_ARGUMENT, "answer");
    EXPECT(answer(olga_tok, id, A(ACCEPTED)), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(cid_tok, id, A(ACCEPTED)), LAGOON_NOT_FOUND, "chat_id");
    /* Everyone's answer, as the organizer sees it. */
    EXPECT(by_id(lagoon_VideoChats_Get, olga_tok, id), LAGOON_OK, NULL);
    for (pb_size_t i = 0; i < VIEW.participants_count; i++) {
        const lagoon_v1_VideoChatParticipant *p = &VIEW.participants[i];
        assert_int_equal(p->answer, p->user_id == olga ? A(ACCEPTED) : p->user_id == ann ? A(ACCEPTED) : A(DECLINED));
    }
    /* A time change resets the answers; a change of details does not. */
    lagoon_v1_UpdateChatRequest u = lagoon_v1_UpdateChatRequest_init_zero;
    u.chat_id = id;
    u.has_title = true;
    snprintf(u.title, sizeof(u.title), "Sunday call, again");
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_OK, NULL);
    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(ACCEPTED));
    assert_string_equal(VIEW.chat.title, "Sunday call, again");
    u.has_title = false;
    u.has_start_at = true;
    u.start_at = T->clock_ms + 90 * MIN;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(ACCEPTED)); /* the organizer's stays */
    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(PENDING));
    EXPECT(by_id(lagoon_VideoChats_Get, bob_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.my_answer, A(PENDING));
    assert_int_equal(notes(ann, lagoon_v1_Notification_Type_VIDEO_CHAT_UPDATED, id), 2);
    assert_int_equal(notes(olga, lagoon_v1_Notification_Type_VIDEO_CHAT_UPDATED, id), 0);
    u.start_at = T->clock_ms - 1;
    lagoon_set_token(C, olga_tok);
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_INVALID_ARGUMENT, "start_at");
}

/* ---- reminders ------------------------------------------------------------------------------- */

static void test_reminders_fire_once(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    EXPECT(answer(bob_tok, id, A(DECLINED)), LAGOON_OK, NULL);
    int64_t due = 0;
    assert_true(job_due(id, 0, &due));
    assert_int_equal(due, VIEW.chat.start_at - LEAD_MIN * MIN);
    assert_true(job_due(id, 1, &due));
    assert_int_equal(due, VIEW.chat.start_at);

    test_clock_advance(T, 60 * MIN - LEAD_MIN * MIN - 1);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, id), 0);
    test_clock_advance(T, 1);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(ann, REMINDER, id), 1);
    assert_int_equal(notes(olga, REMINDER, id), 1);
    assert_int_equal(notes(bob, REMINDER, id), 0); /* declined */
    assert_false(job_due(id, 0, NULL));
    for (int i = 0; i < 3; i++)
        assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, id), 1);
    assert_int_equal(notes(ann, STARTED, id), 0);

    test_clock_advance(T, LEAD_MIN * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, STARTED, id), 1);
    assert_int_equal(notes(olga, STARTED, id), 1);
    assert_int_equal(notes(bob, STARTED, id), 0);
    assert_int_equal(notes(ann, REMINDER, id), 1);
    assert_false(job_due(id, 1, NULL));

    /* A chat that starts sooner than the lead time gets the reminder at the start only. */
    uint64_t soon = olga_chat(5 * MIN);
    assert_false(job_due(soon, 0, NULL));
    assert_true(job_due(soon, 1, NULL));
    test_clock_advance(T, 5 * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(ann, REMINDER, soon), 0);
    assert_int_equal(notes(ann, STARTED, soon), 1);
}

static void test_reminders_move_with_update(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    lagoon_v1_UpdateChatRequest u = lagoon_v1_UpdateChatRequest_init_zero;
    u.chat_id = id;
    u.has_start_at = true;
    u.start_at = T->clock_ms + 120 * MIN;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_OK, NULL);
    int64_t due = 0;
    assert_true(job_due(id, 0, &due));
    assert_int_equal(due, u.start_at - LEAD_MIN * MIN);
    /* Past the old times: nothing. */
    test_clock_advance(T, 61 * MIN);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, id), 0);
    assert_int_equal(notes(ann, STARTED, id), 0);
    /* At the new ones: once each. */
    test_clock_advance(T, 120 * MIN - LEAD_MIN * MIN - 61 * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(ann, REMINDER, id), 1);
    test_clock_advance(T, LEAD_MIN * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(ann, STARTED, id), 1);
    /* Moving earlier works the same: a second chat moved from +3 h to +30 min. */
    uint64_t later = olga_chat(180 * MIN);
    u.chat_id = later;
    u.start_at = T->clock_ms + 30 * MIN;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_OK, NULL);
    test_clock_advance(T, 15 * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(bob, REMINDER, later), 1);
}

static void test_reminders_vanish_on_cancel(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    EXPECT(by_id(lagoon_VideoChats_Cancel, ann_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(by_id(lagoon_VideoChats_Cancel, cid_tok, id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(by_id(lagoon_VideoChats_Cancel, olga_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.status, S(CANCELLED));
    assert_false(job_due(id, 0, NULL));
    assert_false(job_due(id, 1, NULL));
    assert_int_equal(notes(ann, lagoon_v1_Notification_Type_VIDEO_CHAT_CANCELLED, id), 1);
    assert_int_equal(notes(bob, lagoon_v1_Notification_Type_VIDEO_CHAT_CANCELLED, id), 1);
    assert_int_equal(notes(olga, lagoon_v1_Notification_Type_VIDEO_CHAT_CANCELLED, id), 0);
    test_clock_advance(T, 61 * MIN);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, id), 0);
    assert_int_equal(notes(ann, STARTED, id), 0);
    EXPECT(by_id(lagoon_VideoChats_Cancel, olga_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(by_id(lagoon_VideoChats_Start, olga_tok, id), LAGOON_FAILED_PRECONDITION, NULL);
}

static int has_reminder(void *arg)
{
    return notes(ann, REMINDER, *(uint64_t *)arg) == 1;
}

/* The jobs are rows: a restart keeps them, and the scheduler's own thread runs them. */
static void test_reminders_survive_restart(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    lagoon_close(C);
    test_app_restart(T, tweak_polling);
    C = test_client(T);
    assert_true(job_due(id, 0, NULL));
    assert_int_equal(notes(ann, REMINDER, id), 0);
    test_clock_advance(T, 45 * MIN);
    assert_true(test_wait_for(has_reminder, &id, 10000));
    assert_false(job_due(id, 0, NULL));
    /* Again after a restart: still once. */
    lagoon_close(C);
    test_app_restart(T, tweak);
    C = test_client(T);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, id), 1);
    assert_true(job_due(id, 1, NULL));
    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_OK, NULL);
}

/* ---- start, end, delete ---------------------------------------------------------------------- */

static void test_start_now_early_end_delete(void **state)
{
    (void)state;
    lagoon_v1_StartNowRequest sn = lagoon_v1_StartNowRequest_init_zero;
    snprintf(sn.title, sizeof(sn.title), "Quick call");
    sn.duration_minutes = 15;
    sn.user_ids[0] = ann;
    sn.user_ids_count = 1;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_StartNow(C, &sn, &VIEW), LAGOON_OK, NULL);
    uint64_t now_id = VIEW.chat.id;
    assert_int_equal(VIEW.chat.status, S(LIVE));
    assert_int_equal(VIEW.chat.started_at, T->clock_ms);
    assert_int_equal(notes(ann, STARTED, now_id), 1);
    assert_false(job_due(now_id, 1, NULL));
    EXPECT(del(olga_tok, now_id), LAGOON_FAILED_PRECONDITION, NULL); /* live */
    EXPECT(by_id(lagoon_VideoChats_End, ann_tok, now_id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(by_id(lagoon_VideoChats_End, olga_tok, now_id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.status, S(ENDED));
    assert_int_equal(VIEW.chat.ended_at, T->clock_ms);
    EXPECT(by_id(lagoon_VideoChats_End, olga_tok, now_id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(ann_tok, now_id, A(ACCEPTED)), LAGOON_FAILED_PRECONDITION, NULL);

    /* Early: its start becomes now, its reminders go. */
    uint64_t id = olga_chat(60 * MIN);
    EXPECT(del(olga_tok, id), LAGOON_FAILED_PRECONDITION, NULL); /* still to come */
    test_clock_advance(T, 10 * MIN);
    EXPECT(by_id(lagoon_VideoChats_Start, bob_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(by_id(lagoon_VideoChats_Start, olga_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.status, S(LIVE));
    assert_int_equal(VIEW.chat.start_at, T->clock_ms);
    assert_false(job_due(id, 0, NULL));
    assert_false(job_due(id, 1, NULL));
    assert_int_equal(notes(ann, STARTED, id), 1);
    test_clock_advance(T, 60 * MIN);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, STARTED, id), 1);
    assert_int_equal(notes(ann, REMINDER, id), 0);
    EXPECT(by_id(lagoon_VideoChats_End, olga_tok, id), LAGOON_OK, NULL);
    EXPECT(del(ann_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del(cid_tok, id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(del(olga_tok, id), LAGOON_OK, NULL);
    EXPECT(by_id(lagoon_VideoChats_Get, olga_tok, id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_NOT_FOUND, "chat_id");
    /* A cancelled one, and one whose planned end has passed, may go too. */
    uint64_t c1 = olga_chat(60 * MIN);
    EXPECT(by_id(lagoon_VideoChats_Cancel, olga_tok, c1), LAGOON_OK, NULL);
    EXPECT(del(olga_tok, c1), LAGOON_OK, NULL);
    uint64_t c2 = olga_chat(60 * MIN);
    test_clock_advance(T, 91 * MIN);
    EXPECT(del(olga_tok, c2), LAGOON_OK, NULL);
    assert_false(job_due(c2, 1, NULL));
}

/* ---- lists --------------------------------------------------------------------------------- */

static void test_lists(void **state)
{
    (void)state;
    uint64_t ids[5];
    int64_t in[5] = {180 * MIN, 60 * MIN, 240 * MIN, 120 * MIN, 300 * MIN}; /* out of order */
    for (int i = 0; i < 5; i++)
        ids[i] = olga_chat(in[i]);
    uint64_t users[] = {olga};
    EXPECT(schedule_at(cid_tok, T->clock_ms + 30 * MIN, users, 1), LAGOON_OK, NULL); /* olga invited */
    uint64_t cids = VIEW.chat.id;
    /* Soonest first, two at a time. */
    uint64_t want[] = {ids[1], ids[3], ids[0], ids[2], ids[4]};
    char token[801] = "";
    size_t seen = 0;
    for (int page = 0; page < 5; page++) {
        EXPECT(list(ann_tok, 0, 2, token), LAGOON_OK, NULL);
        for (pb_size_t i = 0; i < LIST.chats_count; i++) {
            assert_true(seen < 5);
            assert_int_equal(LIST.chats[i].chat.id, want[seen++]);
            assert_int_equal(LIST.chats[i].my_answer, A(PENDING));
        }
        snprintf(token, sizeof(token), "%s", LIST.next_page_token);
        if (!token[0])
            break;
    }
    assert_int_equal(seen, 5);
    /* olga: as organizer and as participant. */
    EXPECT(list(olga_tok, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 6);
    assert_int_equal(LIST.chats[0].chat.id, cids);
    assert_int_equal(LIST.chats[0].my_answer, A(PENDING));
    assert_int_equal(LIST.chats[1].my_answer, A(ACCEPTED));
    EXPECT(list(cid_tok, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    /* 2.5 h on: three in the past, newest first; two to come. */
    test_clock_advance(T, 150 * MIN);
    EXPECT(list(ann_tok, 1, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 2);
    assert_int_equal(LIST.chats[0].chat.id, ids[3]);
    assert_int_equal(LIST.chats[1].chat.id, ids[1]);
    EXPECT(list(ann_tok, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 3);
    assert_int_equal(LIST.chats[0].chat.id, ids[0]);
    EXPECT(list(olga_tok, 1, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 3);
    assert_int_equal(LIST.chats[2].chat.id, cids);
    EXPECT(list(root_tok, 1, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 0);
}

/* ---- a group's chat ------------------------------------------------------------------------- */

static void test_group_chat(void **state)
{
    (void)state;
    lagoon_v1_CreateGroupRequest g = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(g.name, sizeof(g.name), "Dads of the north");
    g.visibility = lagoon_v1_Group_Visibility_PUBLIC;
    lagoon_v1_Group grp;
    lagoon_set_token(C, olga_tok);
    EXPECT(lagoon_Groups_Create(C, &g, &grp), LAGOON_OK, NULL);
    lagoon_v1_GroupRequest gr = lagoon_v1_GroupRequest_init_zero;
    gr.group_id = grp.id;
    lagoon_v1_GroupMember gm;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_Groups_Join(C, &gr, &gm), LAGOON_OK, NULL);
    lagoon_set_token(C, bob_tok);
    EXPECT(lagoon_Groups_Join(C, &gr, &gm), LAGOON_OK, NULL);

    lagoon_v1_ScheduleChatRequest r = lagoon_v1_ScheduleChatRequest_init_zero;
    snprintf(r.title, sizeof(r.title), "Group call");
    r.start_at = T->clock_ms + 60 * MIN;
    r.duration_minutes = 60;
    r.group_id = grp.id;
    lagoon_set_token(C, cid_tok); /* not a member */
    view_reset();
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_NOT_FOUND, "group_id");
    lagoon_set_token(C, ann_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    assert_int_equal(VIEW.chat.group_id, grp.id);
    assert_int_equal(VIEW.participants_count, 3);
    assert_int_equal(notes(olga, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, id), 1);
    assert_int_equal(notes(bob, lagoon_v1_Notification_Type_VIDEO_CHAT_INVITATION, id), 1);
    EXPECT(by_id(lagoon_VideoChats_Get, cid_tok, id), LAGOON_NOT_FOUND, "chat_id");
    test_clock_advance(T, 45 * MIN);
    assert_int_equal(run_due(), 1);
    assert_int_equal(notes(bob, REMINDER, id), 1);
}

/* ---- authorization matrix ---------------------------------------------------------------------- */

/* Every method: what the organizer, a participant, an outsider, an administrator and no token
 * get, on a scheduled chat. */
static void test_authorization_matrix(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    typedef int (*fn)(lagoon_client *, const lagoon_v1_ChatIdRequest *, lagoon_v1_VideoChatView *);
    struct {
        fn f;
        int participant, outsider, admin;
    } rows[] = {
        {lagoon_VideoChats_Get, LAGOON_OK, LAGOON_NOT_FOUND, LAGOON_NOT_FOUND},
        {lagoon_VideoChats_Cancel, LAGOON_PERMISSION_DENIED, LAGOON_NOT_FOUND, LAGOON_NOT_FOUND},
        {lagoon_VideoChats_Start, LAGOON_PERMISSION_DENIED, LAGOON_NOT_FOUND, LAGOON_NOT_FOUND},
        {lagoon_VideoChats_End, LAGOON_PERMISSION_DENIED, LAGOON_NOT_FOUND, LAGOON_NOT_FOUND},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        EXPECT(by_id(rows[i].f, ann_tok, id), rows[i].participant, NULL);
        EXPECT(by_id(rows[i].f, cid_tok, id), rows[i].outsider, rows[i].outsider == LAGOON_NOT_FOUND ? "chat_id" : NULL);
        EXPECT(by_id(rows[i].f, root_tok, id), rows[i].admin, "chat_id");
        EXPECT(by_id(rows[i].f, "", id), LAGOON_UNAUTHENTICATED, NULL);
    }
    EXPECT(answer(root_tok, id, A(ACCEPTED)), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(answer("", id, A(ACCEPTED)), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(del(root_tok, id), LAGOON_NOT_FOUND, "chat_id");
    EXPECT(del("", id), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(list("", 0, 0, NULL), LAGOON_UNAUTHENTICATED, NULL);
    lagoon_v1_UpdateChatRequest u = lagoon_v1_UpdateChatRequest_init_zero;
    u.chat_id = id;
    u.has_duration_minutes = true;
    u.duration_minutes = 45;
    lagoon_set_token(C, ann_tok);
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_PERMISSION_DENIED, NULL);
    lagoon_set_token(C, cid_tok);
    EXPECT(lagoon_VideoChats_Update(C, &u, &VIEW), LAGOON_NOT_FOUND, "chat_id");
    /* Schedule needs a verified address. */
    char tok[65];
    test_user(C, "newbie", lagoon_v1_Role_STUDENT, tok);
    uint64_t users[] = {ann};
    EXPECT(schedule_at(tok, T->clock_ms + MIN, users, 1), LAGOON_PERMISSION_DENIED, NULL);
    /* Nothing the refused calls tried changed the chat. */
    EXPECT(by_id(lagoon_VideoChats_Get, olga_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.chat.status, S(SCHEDULED));
    assert_int_equal(VIEW.chat.duration_minutes, 30);
}

/* ---- the budget ------------------------------------------------------------------------------- */

static void tweak_budget(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->video_chats.max_events = 2;
    acfg->access_ttl_s = 7 * 24 * 3600; /* the test waits out a day */
}

static int setup_budget(void **state)
{
    (void)state;
    T = test_app_new(tweak_budget);
    C = test_client(T);
    olga = test_verified_user(T, C, "olga", lagoon_v1_Role_STUDENT, olga_tok);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    return 0;
}

/* video-chats-per-day: only calls that store a chat count; past it RESOURCE_EXHAUSTED with
 * retry_after_ms until the day from the first is over. */
static void test_budget(void **state)
{
    (void)state;
    uint64_t users[] = {ann};
    EXPECT(schedule_at(olga_tok, T->clock_ms - 1, users, 1), LAGOON_INVALID_ARGUMENT, "start_at"); /* not counted */
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, users, 1), LAGOON_OK, NULL);
    lagoon_v1_StartNowRequest sn = lagoon_v1_StartNowRequest_init_zero;
    snprintf(sn.title, sizeof(sn.title), "Now");
    sn.duration_minutes = 5;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_StartNow(C, &sn, &VIEW), LAGOON_OK, NULL);
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, users, 1), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    EXPECT(schedule_at(ann_tok, T->clock_ms + MIN, NULL, 0), LAGOON_OK, NULL); /* per user */
    test_clock_advance(T, 24LL * 60 * MIN);
    EXPECT(schedule_at(olga_tok, T->clock_ms + MIN, users, 1), LAGOON_OK, NULL);
}

/* ---- what outlives a participant or an organizer ------------------------------------------------ */

static void delete_account(const char *tok)
{
    lagoon_v1_DeleteAccountRequest d = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(d.password, sizeof(d.password), TEST_PASSWORD);
    lagoon_v1_UsersEmpty e;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &d, &e), LAGOON_OK, NULL);
}

/* A participant's account deleted: the count follows the rows (it was stored, and stayed 3). */
static void test_participant_count_after_deletion(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    assert_int_equal(VIEW.chat.participant_count, 3);
    delete_account(bob_tok);
    EXPECT(by_id(lagoon_VideoChats_Get, olga_tok, id), LAGOON_OK, NULL);
    assert_int_equal(VIEW.participants_count, 2);
    assert_int_equal(VIEW.chat.participant_count, 2);
    EXPECT(list(ann_tok, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(LIST.chats_count, 1);
    assert_int_equal(LIST.chats[0].chat.participant_count, 2);
}

/* The organizer's account deleted: the chat goes with it, and its reminders, when due, run (and
 * are removed) without notifying anyone. */
static void test_reminders_of_a_deleted_organizer(void **state)
{
    (void)state;
    uint64_t id = olga_chat(60 * MIN);
    delete_account(olga_tok);
    EXPECT(by_id(lagoon_VideoChats_Get, ann_tok, id), LAGOON_NOT_FOUND, "chat_id");
    test_clock_advance(T, 60 * MIN);
    assert_int_equal(run_due(), 2);
    assert_false(job_due(id, 0, NULL));
    assert_false(job_due(id, 1, NULL));
    assert_int_equal(notes(ann, REMINDER, id), 0);
    assert_int_equal(notes(ann, STARTED, id), 0);
    assert_int_equal(run_due(), 0);
}

/* A title of 200 four-byte characters: every notification's title is cut on a character
 * boundary (a byte count would split one). */
static void test_long_title_notifications(void **state)
{
    (void)state;
    lagoon_v1_ScheduleChatRequest r = lagoon_v1_ScheduleChatRequest_init_zero;
    for (int i = 0; i < 200; i++)
        memcpy(r.title + 4 * i, "\xF0\x9F\x98\x80", 4); /* U+1F600 */
    r.start_at = T->clock_ms + 60 * MIN;
    r.duration_minutes = 30;
    r.user_ids[0] = ann;
    r.user_ids_count = 1;
    lagoon_set_token(C, olga_tok);
    view_reset();
    EXPECT(lagoon_VideoChats_Schedule(C, &r, &VIEW), LAGOON_OK, NULL);
    uint64_t id = VIEW.chat.id;
    test_clock_advance(T, 45 * MIN);
    assert_int_equal(run_due(), 1);
    EXPECT(by_id(lagoon_VideoChats_Cancel, olga_tok, id), LAGOON_OK, NULL);
    size_t n = 0;
    assert_int_equal(bad_titles(ann, &n), 0);
    assert_int_equal(n, 3); /* invitation, reminder, cancellation */
}

/* ---- the scheduler itself: a job kind of the test's own --------------------------------------- */

/* Owner id = how many runs fail before one succeeds. Its effect is a notification to ann, made
 * before the failure: a failed run must leave no trace of it. */
#define TEST_KIND ((lagoon_v1_JobKind)99)
#define UNCLAIMED_KIND ((lagoon_v1_JobKind)98)

static int test_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err)
{
    if (job->kind != TEST_KIND)
        return LAGOON_OK;
    *ran = 1;
    int st = events_notify(t, a, ann, REMINDER, "test job", "", job->owner_id, "", 0, NULL, err);
    if (st == LAGOON_OK && job->attempts < job->owner_id)
        return store_fail(err, LAGOON_INTERNAL, NULL, "the test's failure %u", (unsigned)job->attempts);
    return st;
}

static const app_module test_jobs_module = {.name = "test-jobs", .run_job = test_run_job};
static const app_module *const test_modules[] = {&test_jobs_module};

static void tweak_jobs(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->extra_modules = test_modules;
    acfg->nextra_modules = 1;
}

static int setup_jobs(void **state)
{
    (void)state;
    T = test_app_new(tweak_jobs);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    return 0;
}

typedef struct put_arg {
    lagoon_v1_JobKind kind;
    uint64_t owner;
    int64_t due;
} put_arg;

static int put_write(store_txn *t, void *arg, store_error *err)
{
    const put_arg *p = arg;
    return sched_put(t, T->clock_ms, p->kind, p->owner, 0, p->due, err);
}

static void put_job(lagoon_v1_JobKind kind, uint64_t owner, int64_t due)
{
    put_arg p = {kind, owner, due};
    store_error err;
    assert_int_equal(store_write(T->app->db, put_write, &p, &err), LAGOON_OK);
}

static int test_job(uint64_t owner, lagoon_v1_ScheduledJob *j)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    int st = sched_get(t, TEST_KIND, owner, 0, j, &err);
    store_read_end(t);
    return st == LAGOON_OK;
}

/* A failed run keeps the job (its effect undone) and moves it SCHED_RETRY_BASE_MS later,
 * doubling; the run that succeeds happens once; SCHED_ATTEMPTS_MAX failures drop it; a kind no
 * module claims is dropped when due. */
static void test_scheduler_retries(void **state)
{
    (void)state;
    put_job(TEST_KIND, 2, T->clock_ms + MIN);  /* fails twice, then runs */
    put_job(TEST_KIND, 99, T->clock_ms + MIN); /* always fails */
    put_job(UNCLAIMED_KIND, 1, T->clock_ms + MIN);
    test_clock_advance(T, MIN);
    lagoon_v1_ScheduledJob j;
    int64_t wait = SCHED_RETRY_BASE_MS;
    for (uint32_t attempt = 1; attempt <= 2; attempt++) {
        assert_int_equal(run_due(), 0); /* failed runs are not counted */
        assert_true(test_job(2, &j));
        assert_int_equal(j.attempts, attempt);
        assert_int_equal(j.due_at, T->clock_ms + wait);
        assert_int_equal(notes(ann, REMINDER, 2), 0);
        assert_int_equal(run_due(), 0); /* not due again yet: no run */
        assert_true(test_job(2, &j));
        assert_int_equal(j.attempts, attempt);
        test_clock_advance(T, wait);
        wait *= 2;
    }
    assert_int_equal(run_due(), 1);
    assert_false(test_job(2, &j));
    assert_int_equal(notes(ann, REMINDER, 2), 1);
    assert_int_equal(run_due(), 0);
    assert_int_equal(notes(ann, REMINDER, 2), 1);
    /* The one that always fails is dropped at its SCHED_ATTEMPTS_MAX-th failure. */
    for (int i = 0; i < 2 * SCHED_ATTEMPTS_MAX && test_job(99, &j); i++) {
        assert_true(j.attempts < SCHED_ATTEMPTS_MAX);
        test_clock_advance(T, j.due_at - T->clock_ms);
        assert_int_equal(run_due(), 0);
    }
    assert_false(test_job(99, &j));
    assert_int_equal(notes(ann, REMINDER, 99), 0);
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    assert_int_equal(sched_get(t, UNCLAIMED_KIND, 1, 0, &j, &err), LAGOON_NOT_FOUND);
    store_read_end(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schedule_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders_fire_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders_move_with_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders_vanish_on_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders_survive_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_now_early_end_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_chat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorization_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup_budget, teardown),
        cmocka_unit_test_setup_teardown(test_participant_count_after_deletion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reminders_of_a_deleted_organizer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_title_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scheduler_retries, setup_jobs, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
