/* Teaching end to end through the generated client against the real server and store: the
 * relationship state machine (every transition, allowed and refused, by each party), the
 * request refusals, the lists and Users/ListStudents, the records' authorization matrix
 * (student, author, another teacher, another user, administrator, no token), cascades, the
 * summaries against a recomputation after a seeded random sequence, notifications, the
 * request rate limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "accounts.h"
#include "lagoon_stubs.h"
#include "teaching.h"
#include "testserver.h"

static test_app *T;
static lagoon_client *C;

/* tom and tia teach; sam and sue are students; root administers. */
static uint64_t tom, tia, sam, sue, root;
static char tom_tok[65], tia_tok[65], sam_tok[65], sue_tok[65], root_tok[65];

/* Rows of ~20-40 KB: kept off the test's stack. */
static lagoon_v1_Video V;
static lagoon_v1_ProgressRecord REC;
static lagoon_v1_CreateRecordRequest CR;
static lagoon_v1_UpdateRecordRequest UR;
static lagoon_v1_ListRecordsResponse RLIST;
static lagoon_v1_ListRelationshipsResponse LIST;
static lagoon_v1_ListUsersResponse ULIST;
static lagoon_v1_ProgressSummary SUM;
static lagoon_v1_TeachingRelationship REL;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->teaching_requests.max_events = 100000; /* the tests ask often without moving the clock */
}

static void tweak_limited(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->teaching_requests.max_events = 2;
}

static void start(void (*tweak_fn)(app_config *, rpc_config *))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
    tom = test_verified_user(T, C, "tom", lagoon_v1_Role_TEACHER, tom_tok);
    tia = test_verified_user(T, C, "tia", lagoon_v1_Role_TEACHER, tia_tok);
    sam = test_verified_user(T, C, "sam", lagoon_v1_Role_STUDENT, sam_tok);
    sue = test_verified_user(T, C, "sue", lagoon_v1_Role_STUDENT, sue_tok);
    root = test_admin_user(T, C, "root", root_tok);
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int setup_limited(void **state)
{
    (void)state;
    start(tweak_limited);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pb_release(lagoon_v1_ListRecordsResponse_fields, &RLIST);
    pb_release(lagoon_v1_ListRelationshipsResponse_fields, &LIST);
    pb_release(lagoon_v1_ListUsersResponse_fields, &ULIST);
    memset(&RLIST, 0, sizeof(RLIST));
    memset(&LIST, 0, sizeof(LIST));
    memset(&ULIST, 0, sizeof(ULIST));
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* (test_has_violation, testserver.h, on this file's client) */
#define has_violation(field) test_has_violation(C, (field))

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

static int request(const char *tok, uint64_t teacher)
{
    lagoon_v1_TeacherRequest r = {teacher};
    lagoon_set_token(C, tok);
    return lagoon_Teaching_Request(C, &r, &REL);
}

static int invite(const char *tok, uint64_t student)
{
    lagoon_v1_StudentInvite r = {student};
    lagoon_set_token(C, tok);
    return lagoon_Teaching_Invite(C, &r, &REL);
}

enum op { ACCEPT, DECLINE, REMOVE };

static int answer(const char *tok, enum op op, uint64_t rel)
{
    lagoon_v1_RelationshipIdRequest r = {rel};
    lagoon_set_token(C, tok);
    if (op == ACCEPT)
        return lagoon_Teaching_Accept(C, &r, &REL);
    if (op == DECLINE)
        return lagoon_Teaching_Decline(C, &r, &REL);
    return lagoon_Teaching_Remove(C, &r, &REL);
}

/* sam and tom active: its relationship id. */
static uint64_t activate(const char *stok, uint64_t teacher, const char *ttok)
{
    EXPECT(request(stok, teacher), LAGOON_OK, NULL);
    uint64_t id = REL.id;
    EXPECT(answer(ttok, ACCEPT, id), LAGOON_OK, NULL);
    return id;
}

/* A video of the token's user through Videos/Create: its id. */
static uint64_t video(const char *tok, int pub)
{
    static lagoon_v1_CreateVideoRequest r;
    memset(&r, 0, sizeof(r));
    snprintf(r.title, sizeof(r.title), "Scales");
    snprintf(r.url, sizeof(r.url), "https://www.youtube.com/watch?v=abc");
    r.is_public = pub;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Videos_Create(C, &r, &V), LAGOON_OK, NULL);
    return V.id;
}

static int create(const char *tok, uint64_t student, uint64_t video_id, uint32_t rating, int technique)
{
    memset(&CR, 0, sizeof(CR));
    CR.student_id = student;
    CR.video_id = video_id;
    CR.rating = rating;
    CR.has_technique = technique > 0;
    CR.technique = technique > 0 ? (uint32_t)technique : 0;
    snprintf(CR.notes, sizeof(CR.notes), "steady tempo");
    lagoon_set_token(C, tok);
    return lagoon_Teaching_CreateRecord(C, &CR, &REC);
}

static uint64_t create_ok(const char *tok, uint64_t student, uint64_t video_id)
{
    EXPECT(create(tok, student, video_id, 3, 50), LAGOON_OK, NULL);
    return REC.id;
}

static int get_record(const char *tok, uint64_t id)
{
    lagoon_v1_RecordIdRequest r = {id};
    lagoon_set_token(C, tok);
    return lagoon_Teaching_GetRecord(C, &r, &REC);
}

static int update_rating(const char *tok, uint64_t id, uint32_t rating)
{
    memset(&UR, 0, sizeof(UR));
    UR.record_id = id;
    UR.has_rating = true;
    UR.rating = rating;
    lagoon_set_token(C, tok);
    return lagoon_Teaching_UpdateRecord(C, &UR, &REC);
}

static int delete_record(const char *tok, uint64_t id)
{
    lagoon_v1_RecordIdRequest r = {id};
    lagoon_v1_TeachingEmpty e;
    lagoon_set_token(C, tok);
    return lagoon_Teaching_DeleteRecord(C, &r, &e);
}

typedef int (*rel_list_fn)(lagoon_client *, const lagoon_v1_ListRelationshipsRequest *,
                           lagoon_v1_ListRelationshipsResponse *);

/* The relationships of one page of fn for tok. */
static pb_size_t rel_list(const char *tok, rel_list_fn fn, uint32_t page_size, const char *page_token)
{
    lagoon_v1_ListRelationshipsRequest r = lagoon_v1_ListRelationshipsRequest_init_zero;
    r.page_size = page_size;
    if (page_token)
        snprintf(r.page_token, sizeof(r.page_token), "%s", page_token);
    pb_release(lagoon_v1_ListRelationshipsResponse_fields, &LIST);
    memset(&LIST, 0, sizeof(LIST));
    lagoon_set_token(C, tok);
    EXPECT(fn(C, &r, &LIST), LAGOON_OK, NULL);
    return LIST.relationships_count;
}

/* Rows of table (whole) for which pred holds. */
typedef int (*row_pred)(const void *row, uint64_t arg);
typedef struct count_arg {
    row_pred pred;
    uint64_t arg;
    size_t n;
} count_arg;

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    count_arg *ca = arg;
    ca->n += ca->pred(row, ca->arg) ? 1 : 0;
    return LAGOON_OK;
}

static size_t count_rows(const store_table *tab, row_pred pred, uint64_t arg)
{
    count_arg ca = {pred, arg, 0};
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int pages = 0; pages < 1000; pages++) {
        store_query q = {.table = tab, .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        store_page page;
        assert_int_equal(store_scan(t, &q, count_row, &ca, &page, &err), LAGOON_OK);
        memcpy(token, page.next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    store_read_end(t);
    return ca.n;
}

static int rel_has(const void *row, uint64_t user)
{
    const lagoon_v1_TeachingRelationship *r = row;
    return r->student_id == user || r->teacher_id == user;
}

static int rec_has(const void *row, uint64_t user)
{
    const lagoon_v1_ProgressRecord *r = row;
    return r->student_id == user || r->teacher_id == user;
}

static int rec_of_video(const void *row, uint64_t video_id)
{
    return ((const lagoon_v1_ProgressRecord *)row)->video_id == video_id;
}

static int sum_has(const void *row, uint64_t user)
{
    const lagoon_v1_ProgressSummary *s = row;
    return s->student_id == user || s->teacher_id == user;
}

static int any_row(const void *row, uint64_t arg)
{
    (void)row;
    (void)arg;
    return 1;
}

typedef struct note_want {
    uint64_t user;
    lagoon_v1_Notification_Type type;
} note_want;

static note_want NOTE;

static int note_is(const void *row, uint64_t arg)
{
    (void)arg;
    const lagoon_v1_Notification *n = row;
    return n->user_id == NOTE.user && n->type == NOTE.type;
}

static size_t notes(uint64_t user, lagoon_v1_Notification_Type type)
{
    NOTE.user = user;
    NOTE.type = type;
    return count_rows(&lagoon_table_notifications, note_is, 0);
}

/* ---- the state machine ------------------------------------------------------------------------ */

static void test_request_accept_remove(void **state)
{
    (void)state;
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
    uint64_t id = REL.id;
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_PENDING);
    assert_int_equal(REL.initiator, lagoon_v1_TeachingRelationship_Initiator_STUDENT_REQUEST);
    assert_int_equal(REL.requester_id, sam);
    assert_int_equal(REL.addressee_id, tom);
    /* Pending: the requester cannot answer; a stranger does not see it; Remove needs ACTIVE. */
    EXPECT(answer(sam_tok, ACCEPT, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(answer(sam_tok, DECLINE, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(answer(tia_tok, ACCEPT, id), LAGOON_NOT_FOUND, "relationship_id");
    EXPECT(answer(sue_tok, DECLINE, id), LAGOON_NOT_FOUND, "relationship_id");
    EXPECT(answer(root_tok, ACCEPT, id), LAGOON_NOT_FOUND, "relationship_id");
    EXPECT(answer(sam_tok, REMOVE, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(tom_tok, REMOVE, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(request(sam_tok, tom), LAGOON_ALREADY_EXISTS, "teacher_id");
    EXPECT(invite(tom_tok, sam), LAGOON_ALREADY_EXISTS, "student_id");
    /* The addressee accepts; then nothing answers it again. */
    EXPECT(answer(tom_tok, ACCEPT, id), LAGOON_OK, NULL);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_ACTIVE);
    EXPECT(answer(tom_tok, ACCEPT, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(tom_tok, DECLINE, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(sam_tok, ACCEPT, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(request(sam_tok, tom), LAGOON_ALREADY_EXISTS, "teacher_id");
    EXPECT(answer(tia_tok, REMOVE, id), LAGOON_NOT_FOUND, "relationship_id");
    /* The student removes it; a second Remove is refused; asking again reuses the row. */
    EXPECT(answer(sam_tok, REMOVE, id), LAGOON_OK, NULL);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_REMOVED);
    EXPECT(answer(sam_tok, REMOVE, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(tom_tok, ACCEPT, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
    assert_int_equal(REL.id, id);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_PENDING);
    /* Accepted again, now the teacher removes it. */
    EXPECT(answer(tom_tok, ACCEPT, id), LAGOON_OK, NULL);
    EXPECT(answer(tom_tok, REMOVE, id), LAGOON_OK, NULL);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_REMOVED);
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, any_row, 0), 1);
}

static void test_invite_decline_rerequest(void **state)
{
    (void)state;
    EXPECT(invite(tom_tok, sam), LAGOON_OK, NULL);
    uint64_t id = REL.id;
    assert_int_equal(REL.initiator, lagoon_v1_TeachingRelationship_Initiator_TEACHER_INVITE);
    assert_int_equal(REL.student_id, sam);
    assert_int_equal(REL.teacher_id, tom);
    assert_int_equal(REL.addressee_id, sam);
    /* The inviting teacher cannot answer its own invitation. */
    EXPECT(answer(tom_tok, ACCEPT, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(answer(tom_tok, DECLINE, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(answer(sam_tok, DECLINE, id), LAGOON_OK, NULL);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_DECLINED);
    EXPECT(answer(sam_tok, ACCEPT, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(sam_tok, DECLINE, id), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(answer(sam_tok, REMOVE, id), LAGOON_FAILED_PRECONDITION, NULL);
    /* After a decline either side may ask again, on the same row: now the student asks. */
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
    assert_int_equal(REL.id, id);
    assert_int_equal(REL.initiator, lagoon_v1_TeachingRelationship_Initiator_STUDENT_REQUEST);
    assert_int_equal(REL.addressee_id, tom);
    EXPECT(answer(sam_tok, ACCEPT, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(answer(tom_tok, DECLINE, id), LAGOON_OK, NULL);
    EXPECT(invite(tom_tok, sam), LAGOON_OK, NULL);
    assert_int_equal(REL.id, id);
    EXPECT(answer(sam_tok, ACCEPT, id), LAGOON_OK, NULL);
    assert_int_equal(REL.status, lagoon_v1_TeachingRelationship_Status_ACTIVE);
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, any_row, 0), 1);
}

static void test_request_refusals(void **state)
{
    (void)state;
    EXPECT(request(sam_tok, sam), LAGOON_INVALID_ARGUMENT, "teacher_id");
    EXPECT(request(tom_tok, tom), LAGOON_INVALID_ARGUMENT, "teacher_id");
    EXPECT(request(sam_tok, sue), LAGOON_INVALID_ARGUMENT, "teacher_id");   /* not a teacher */
    EXPECT(request(sam_tok, root), LAGOON_INVALID_ARGUMENT, "teacher_id");  /* an admin is not one */
    EXPECT(request(sam_tok, 999999), LAGOON_NOT_FOUND, "teacher_id");
    EXPECT(request(sam_tok, 0), LAGOON_INVALID_ARGUMENT, "teacher_id");     /* the rule: required */
    EXPECT(invite(tom_tok, tom), LAGOON_INVALID_ARGUMENT, "student_id");
    EXPECT(invite(tom_tok, 999999), LAGOON_NOT_FOUND, "student_id");
    EXPECT(invite(sam_tok, sue), LAGOON_PERMISSION_DENIED, NULL);           /* students do not invite */
    EXPECT(invite(root_tok, sue), LAGOON_PERMISSION_DENIED, NULL);          /* nor administrators */
    lagoon_set_token(C, NULL);
    lagoon_v1_TeacherRequest anon = {tom};
    EXPECT(lagoon_Teaching_Request(C, &anon, &REL), LAGOON_UNAUTHENTICATED, NULL);
    /* A deactivated teacher (or student) is no one to ask. */
    lagoon_v1_SetActiveRequest sa = {tia, false};
    lagoon_v1_UserProfile p;
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_Users_SetActive(C, &sa, &p), LAGOON_OK, NULL);
    EXPECT(request(sam_tok, tia), LAGOON_NOT_FOUND, "teacher_id");
    sa.user_id = sue;
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_Users_SetActive(C, &sa, &p), LAGOON_OK, NULL);
    EXPECT(invite(tom_tok, sue), LAGOON_NOT_FOUND, "student_id");
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, any_row, 0), 0);
}

/* ---- lists ------------------------------------------------------------------------------------- */

static void test_lists_and_students(void **state)
{
    (void)state;
    uint64_t st_tom = activate(sam_tok, tom, tom_tok);
    EXPECT(request(sue_tok, tom), LAGOON_OK, NULL);  /* pending for tom */
    uint64_t sue_tom = REL.id;
    EXPECT(invite(tia_tok, sam), LAGOON_OK, NULL);   /* pending for sam */
    uint64_t tia_sam = REL.id;

    assert_int_equal(rel_list(sam_tok, lagoon_Teaching_ListMyTeachers, 0, NULL), 1);
    assert_int_equal(LIST.relationships[0].id, st_tom);
    assert_int_equal(rel_list(tom_tok, lagoon_Teaching_ListMyStudents, 0, NULL), 1);
    assert_int_equal(LIST.relationships[0].student_id, sam);
    assert_int_equal(rel_list(tom_tok, lagoon_Teaching_ListIncoming, 0, NULL), 1);
    assert_int_equal(LIST.relationships[0].id, sue_tom);
    assert_int_equal(rel_list(sam_tok, lagoon_Teaching_ListIncoming, 0, NULL), 1);
    assert_int_equal(LIST.relationships[0].id, tia_sam);
    assert_int_equal(rel_list(sue_tok, lagoon_Teaching_ListOutgoing, 0, NULL), 1);
    assert_int_equal(rel_list(tia_tok, lagoon_Teaching_ListOutgoing, 0, NULL), 1);
    assert_int_equal(rel_list(sam_tok, lagoon_Teaching_ListOutgoing, 0, NULL), 0);
    assert_int_equal(rel_list(tia_tok, lagoon_Teaching_ListMyStudents, 0, NULL), 0);

    /* Users/ListStudents: the caller's active students, as public users. */
    lagoon_v1_ListUsersRequest ur = lagoon_v1_ListUsersRequest_init_zero;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_ListStudents(C, &ur, &ULIST), LAGOON_OK, NULL);
    assert_int_equal(ULIST.users_count, 1);
    assert_int_equal(ULIST.users[0].id, sam);
    assert_string_equal(ULIST.users[0].username, "sam");
    pb_release(lagoon_v1_ListUsersResponse_fields, &ULIST);
    memset(&ULIST, 0, sizeof(ULIST));
    EXPECT(answer(tom_tok, ACCEPT, sue_tom), LAGOON_OK, NULL);
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_ListStudents(C, &ur, &ULIST), LAGOON_OK, NULL);
    assert_int_equal(ULIST.users_count, 2);
    assert_int_equal(ULIST.users[0].id, sue); /* the newest accepted first */
    pb_release(lagoon_v1_ListUsersResponse_fields, &ULIST);
    memset(&ULIST, 0, sizeof(ULIST));
    ur.page_size = 100000;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_ListStudents(C, &ur, &ULIST), LAGOON_INVALID_ARGUMENT, "page_size");
    /* A removed student leaves the list. */
    EXPECT(answer(tom_tok, REMOVE, st_tom), LAGOON_OK, NULL);
    ur.page_size = 0;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_ListStudents(C, &ur, &ULIST), LAGOON_OK, NULL);
    assert_int_equal(ULIST.users_count, 1);
    assert_int_equal(ULIST.users[0].id, sue);
    assert_int_equal(rel_list(sam_tok, lagoon_Teaching_ListMyTeachers, 0, NULL), 0);
}

static void test_relationship_paging(void **state)
{
    (void)state;
    /* tom invites 7 users; the pages of 3 cover them once each. */
    char tok[65];
    char name[16];
    for (int i = 0; i < 7; i++) {
        snprintf(name, sizeof(name), "pupil%d", i);
        uint64_t id = test_verified_user(T, C, name, lagoon_v1_Role_STUDENT, tok);
        EXPECT(invite(tom_tok, id), LAGOON_OK, NULL);
    }
    char token[801] = "";
    size_t seen = 0;
    int pages = 0;
    do {
        pb_size_t n = rel_list(tom_tok, lagoon_Teaching_ListOutgoing, 3, token);
        assert_true(n <= 3);
        seen += n;
        snprintf(token, sizeof(token), "%s", LIST.next_page_token);
    } while (token[0] != '\0' && ++pages < 10);
    assert_int_equal(seen, 7);
    assert_int_equal(pages, 2);
}

/* Sets the token's user's full name and instruments (Users/UpdateProfile). */
static void profile(const char *tok, const char *full_name, const char *i1, const char *i2)
{
    static lagoon_v1_UpdateProfileRequest r;
    static lagoon_v1_UserProfile p;
    memset(&r, 0, sizeof(r));
    r.has_full_name = true;
    snprintf(r.full_name, sizeof(r.full_name), "%s", full_name);
    r.set_instruments = true;
    snprintf(r.instruments[0], sizeof(r.instruments[0]), "%s", i1);
    snprintf(r.instruments[1], sizeof(r.instruments[1]), "%s", i2);
    r.instruments_count = 2;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Users_UpdateProfile(C, &r, &p), LAGOON_OK, NULL);
}

/* ListTeachers with a name and an instrument prefix: the ids found, in order, into ids. */
static size_t search(const char *name, const char *instrument, uint64_t ids[8])
{
    lagoon_v1_ListUsersRequest r = lagoon_v1_ListUsersRequest_init_zero;
    snprintf(r.name_prefix, sizeof(r.name_prefix), "%s", name);
    snprintf(r.instrument_prefix, sizeof(r.instrument_prefix), "%s", instrument);
    pb_release(lagoon_v1_ListUsersResponse_fields, &ULIST);
    memset(&ULIST, 0, sizeof(ULIST));
    lagoon_set_token(C, sue_tok);
    EXPECT(lagoon_Users_ListTeachers(C, &r, &ULIST), LAGOON_OK, NULL);
    for (pb_size_t i = 0; i < ULIST.users_count && i < 8; i++)
        ids[i] = ULIST.users[i].id;
    return ULIST.users_count;
}

static void test_teacher_search(void **state)
{
    (void)state;
    profile(tom_tok, "Thomas Keyes", "Piano", "Organ");
    profile(tia_tok, "Tia Bowman", "violin", "Piano");
    uint64_t ids[8];
    assert_int_equal(search("", "", ids), 2);
    assert_int_equal(search("TO", "", ids), 1); /* the username, any case */
    assert_int_equal(ids[0], tom);
    assert_int_equal(search("key", "", ids), 1); /* a word of the full name */
    assert_int_equal(ids[0], tom);
    assert_int_equal(search("eyes", "", ids), 0); /* not inside a word */
    assert_int_equal(search("", "pia", ids), 2);
    assert_int_equal(search("", "VIO", ids), 1);
    assert_int_equal(ids[0], tia);
    assert_int_equal(search("bow", "org", ids), 0); /* both must match */
    assert_int_equal(search("bow", "pi", ids), 1);
    assert_int_equal(search("sam", "", ids), 0);   /* students are not in the directory */
    /* ListStudents takes no search. */
    lagoon_v1_ListUsersRequest r = lagoon_v1_ListUsersRequest_init_zero;
    snprintf(r.name_prefix, sizeof(r.name_prefix), "s");
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_ListStudents(C, &r, &ULIST), LAGOON_INVALID_ARGUMENT, "name_prefix");
}

/* ---- records ------------------------------------------------------------------------------------- */

static void test_record_create_rules(void **state)
{
    (void)state;
    uint64_t pub = video(sam_tok, 1);
    uint64_t priv = video(sam_tok, 0);
    uint64_t other = video(sue_tok, 1);
    /* No relationship yet. */
    EXPECT(create(tom_tok, sam, pub, 3, 50), LAGOON_FAILED_PRECONDITION, NULL);
    uint64_t rel = activate(sam_tok, tom, tom_tok);
    EXPECT(create(tom_tok, sam, pub, 3, 0), LAGOON_INVALID_ARGUMENT, "technique");    /* no score */
    EXPECT(create(tom_tok, sam, pub, 6, 50), LAGOON_INVALID_ARGUMENT, "rating");
    EXPECT(create(tom_tok, sam, pub, 0, 50), LAGOON_INVALID_ARGUMENT, "rating");
    EXPECT(create(tom_tok, sam, pub, 3, 101), LAGOON_INVALID_ARGUMENT, "technique");
    EXPECT(create(tom_tok, sam, priv, 3, 50), LAGOON_NOT_FOUND, "video_id");         /* not readable */
    EXPECT(create(tom_tok, sam, other, 3, 50), LAGOON_INVALID_ARGUMENT, "video_id"); /* not sam's */
    EXPECT(create(tom_tok, sam, 999999, 3, 50), LAGOON_NOT_FOUND, "video_id");
    EXPECT(create(tia_tok, sam, pub, 3, 50), LAGOON_FAILED_PRECONDITION, NULL);      /* not sam's teacher */
    EXPECT(create(sam_tok, sam, pub, 3, 50), LAGOON_PERMISSION_DENIED, NULL);        /* not a teacher */
    /* Comments must be of the same video. */
    lagoon_v1_AddCommentRequest ac = lagoon_v1_AddCommentRequest_init_zero;
    static lagoon_v1_Comment cm;
    ac.video_id = other;
    snprintf(ac.content, sizeof(ac.content), "nice");
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Comments_Add(C, &ac, &cm), LAGOON_OK, NULL);
    uint64_t other_comment = cm.id;
    ac.video_id = pub;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Comments_Add(C, &ac, &cm), LAGOON_OK, NULL);
    uint64_t own_comment = cm.id;
    memset(&CR, 0, sizeof(CR));
    CR.student_id = sam;
    CR.video_id = pub;
    CR.rating = 4;
    CR.has_rhythm = true;
    CR.rhythm = 70;
    CR.comment_ids_count = 2;
    CR.comment_ids[0] = own_comment;
    CR.comment_ids[1] = other_comment;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_CreateRecord(C, &CR, &REC), LAGOON_INVALID_ARGUMENT, "comment_ids[1]");
    CR.comment_ids_count = 1;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_CreateRecord(C, &CR, &REC), LAGOON_OK, NULL);
    assert_int_equal(REC.comment_ids_count, 1);
    assert_true(REC.has_rhythm && !REC.has_technique);
    /* Shared with the teacher, a private video of the student's is fine. */
    lagoon_v1_ShareVideoRequest sh = lagoon_v1_ShareVideoRequest_init_zero;
    sh.video_id = priv;
    sh.user_id = tom;
    lagoon_v1_VideosEmpty ve;
    lagoon_set_token(C, sam_tok);
    EXPECT(lagoon_Videos_Share(C, &sh, &ve), LAGOON_OK, NULL);
    create_ok(tom_tok, sam, priv);
    /* A removed relationship keeps the records and stops new ones. */
    EXPECT(answer(sam_tok, REMOVE, rel), LAGOON_OK, NULL);
    EXPECT(create(tom_tok, sam, pub, 3, 50), LAGOON_FAILED_PRECONDITION, NULL);
    assert_int_equal(count_rows(&lagoon_table_progress_records, any_row, 0), 2);
    assert_int_equal(notes(sam, lagoon_v1_Notification_Type_PROGRESS_RECORD), 2);
}

static void test_record_matrix(void **state)
{
    (void)state;
    uint64_t pub = video(sam_tok, 1);
    activate(sam_tok, tom, tom_tok);
    activate(sam_tok, tia, tia_tok);
    uint64_t id = create_ok(tom_tok, sam, pub);
    /* Reading: the student and the author and an administrator; no one else. */
    EXPECT(get_record(sam_tok, id), LAGOON_OK, NULL);
    EXPECT(get_record(tom_tok, id), LAGOON_OK, NULL);
    EXPECT(get_record(root_tok, id), LAGOON_OK, NULL);
    EXPECT(get_record(tia_tok, id), LAGOON_NOT_FOUND, "record_id");
    EXPECT(get_record(sue_tok, id), LAGOON_NOT_FOUND, "record_id");
    EXPECT(get_record(sam_tok, 999999), LAGOON_NOT_FOUND, "record_id");
    lagoon_set_token(C, NULL);
    lagoon_v1_RecordIdRequest anon = {id};
    EXPECT(lagoon_Teaching_GetRecord(C, &anon, &REC), LAGOON_UNAUTHENTICATED, NULL);
    /* Changing: the author and an administrator. */
    EXPECT(update_rating(sam_tok, id, 5), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(update_rating(tia_tok, id, 5), LAGOON_NOT_FOUND, "record_id");
    EXPECT(update_rating(sue_tok, id, 5), LAGOON_NOT_FOUND, "record_id");
    EXPECT(update_rating(tom_tok, id, 5), LAGOON_OK, NULL);
    assert_int_equal(REC.rating, 5);
    EXPECT(update_rating(root_tok, id, 2), LAGOON_OK, NULL);
    assert_int_equal(REC.rating, 2);
    /* Clearing the last score is refused. */
    memset(&UR, 0, sizeof(UR));
    UR.record_id = id;
    UR.clear_technique = true;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_UpdateRecord(C, &UR, &REC), LAGOON_INVALID_ARGUMENT, "technique");
    EXPECT(delete_record(sam_tok, id), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(delete_record(tia_tok, id), LAGOON_NOT_FOUND, "record_id");
    EXPECT(delete_record(sue_tok, id), LAGOON_NOT_FOUND, "record_id");
    EXPECT(delete_record(tom_tok, id), LAGOON_OK, NULL);
    EXPECT(get_record(tom_tok, id), LAGOON_NOT_FOUND, "record_id");
    uint64_t id2 = create_ok(tom_tok, sam, pub);
    EXPECT(delete_record(root_tok, id2), LAGOON_OK, NULL);
    assert_int_equal(count_rows(&lagoon_table_progress_records, any_row, 0), 0);

    /* Lists: the student all, each teacher its own, a video's what the caller may see. */
    create_ok(tom_tok, sam, pub);
    create_ok(tia_tok, sam, pub);
    create_ok(tom_tok, sam, pub);
    lagoon_v1_ListRecordsRequest lr = lagoon_v1_ListRecordsRequest_init_zero;
#define LIST_RECORDS(fn, tok, want)                                                                                    \
    do {                                                                                                               \
        pb_release(lagoon_v1_ListRecordsResponse_fields, &RLIST);                                                      \
        memset(&RLIST, 0, sizeof(RLIST));                                                                              \
        lagoon_set_token(C, tok);                                                                                      \
        EXPECT(fn(C, &lr, &RLIST), LAGOON_OK, NULL);                                                                   \
        assert_int_equal(RLIST.records_count, want);                                                                   \
    } while (0)
    LIST_RECORDS(lagoon_Teaching_ListStudentRecords, sam_tok, 3);
    assert_true(RLIST.records[0].id > RLIST.records[2].id); /* newest first */
    lr.teacher_id = tia;
    LIST_RECORDS(lagoon_Teaching_ListStudentRecords, sam_tok, 1);
    lr.teacher_id = 0;
    lr.video_id = pub;
    LIST_RECORDS(lagoon_Teaching_ListStudentRecords, sam_tok, 3);
    LIST_RECORDS(lagoon_Teaching_ListVideoRecords, tom_tok, 2);
    LIST_RECORDS(lagoon_Teaching_ListVideoRecords, tia_tok, 1);
    LIST_RECORDS(lagoon_Teaching_ListVideoRecords, sue_tok, 0);
    LIST_RECORDS(lagoon_Teaching_ListVideoRecords, root_tok, 3);
    lr.video_id = 0;
    LIST_RECORDS(lagoon_Teaching_ListTeacherRecords, tom_tok, 2);
    lr.student_id = sam;
    LIST_RECORDS(lagoon_Teaching_ListTeacherRecords, tia_tok, 1);
    lr.student_id = sue;
    LIST_RECORDS(lagoon_Teaching_ListTeacherRecords, tom_tok, 0);
    LIST_RECORDS(lagoon_Teaching_ListStudentRecords, root_tok, 0);
    lr.student_id = sam;
    LIST_RECORDS(lagoon_Teaching_ListStudentRecords, root_tok, 3);
#undef LIST_RECORDS
    /* Another student's records are nobody else's. */
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_ListStudentRecords(C, &lr, &RLIST), LAGOON_NOT_FOUND, NULL);
    lagoon_set_token(C, sue_tok);
    EXPECT(lagoon_Teaching_ListStudentRecords(C, &lr, &RLIST), LAGOON_NOT_FOUND, NULL);
    /* Summaries: the student's, the pair's to its teacher, not to another. */
    lagoon_v1_GetSummaryRequest gs = {sam, 0};
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_NOT_FOUND, "student_id");
    gs.teacher_id = tom;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_OK, NULL);
    assert_int_equal(SUM.count, 2);
    lagoon_set_token(C, tia_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_NOT_FOUND, "student_id");
    lagoon_set_token(C, sue_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_NOT_FOUND, "student_id");
    gs.teacher_id = 0;
    lagoon_set_token(C, sam_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_OK, NULL);
    assert_int_equal(SUM.count, 3);
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_OK, NULL);
    assert_int_equal(SUM.count, 3);
}

/* The count of the summary of (student, teacher) as student_tok's user reads it. */
static uint32_t summary_count(const char *tok, uint64_t student, uint64_t teacher)
{
    lagoon_v1_GetSummaryRequest gs = {student, teacher};
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_OK, NULL);
    return SUM.count;
}

static void test_cascades(void **state)
{
    (void)state;
    uint64_t v1 = video(sam_tok, 1);
    uint64_t v2 = video(sam_tok, 1);
    activate(sam_tok, tom, tom_tok);
    activate(sam_tok, tia, tia_tok);
    activate(sue_tok, tom, tom_tok);
    create_ok(tom_tok, sam, v1);
    create_ok(tom_tok, sam, v1);
    create_ok(tom_tok, sam, v2);
    create_ok(tia_tok, sam, v2);
    assert_int_equal(summary_count(sam_tok, sam, 0), 4);
    /* A deleted video takes its records, and they leave the summaries. */
    lagoon_v1_DeleteVideoRequest dv = {v1};
    lagoon_v1_VideosEmpty ve;
    lagoon_set_token(C, sam_tok);
    EXPECT(lagoon_Videos_Delete(C, &dv, &ve), LAGOON_OK, NULL);
    assert_int_equal(count_rows(&lagoon_table_progress_records, rec_of_video, v1), 0);
    assert_int_equal(count_rows(&lagoon_table_progress_records, rec_of_video, v2), 2);
    assert_int_equal(summary_count(sam_tok, sam, 0), 2);
    assert_int_equal(summary_count(sam_tok, sam, tom), 1);
    assert_int_equal(SUM.scores[0].count, 1);
    /* A deleted teacher takes its relationships and records, and they leave the student's
     * summary over all teachers; the pair's summary goes. */
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &dr, &ue), LAGOON_OK, NULL);
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, rel_has, tom), 0);
    assert_int_equal(count_rows(&lagoon_table_progress_records, rec_has, tom), 0);
    assert_int_equal(count_rows(&lagoon_table_progress_summaries, sum_has, tom), 0);
    assert_int_equal(summary_count(sam_tok, sam, 0), 1);
    assert_int_equal(SUM.scores[0].count, 1);
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, any_row, 0), 1); /* sam and tia */
    /* A deleted student takes its relationships, records and summaries, and the kept response
     * of a record of theirs: the teacher's retry runs again (the student is gone). */
    assert_true(count_rows(&lagoon_table_progress_summaries, sum_has, sam) > 0);
    uint64_t v3 = video(sam_tok, 1);
    lagoon_set_idempotency_key(C, "rec-kept");
    create_ok(tia_tok, sam, v3);
    lagoon_set_token(C, sam_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &dr, &ue), LAGOON_OK, NULL);
    assert_int_equal(count_rows(&lagoon_table_teaching_relationships, any_row, 0), 0);
    assert_int_equal(count_rows(&lagoon_table_progress_records, any_row, 0), 0);
    assert_int_equal(count_rows(&lagoon_table_progress_summaries, any_row, 0), 0);
    lagoon_set_idempotency_key(C, "rec-kept");
    assert_true(create(tia_tok, sam, v3, 3, 50) != LAGOON_OK);
    assert_int_equal(count_rows(&lagoon_table_progress_records, any_row, 0), 0);
}

/* Record lists page like the others: cursor pages newest first that continue exactly, numbered
 * pages from 1; the cap is the .options' max_count; a retried CreateRecord adds nothing. */
static void test_record_pages_and_retries(void **state)
{
    (void)state;
    uint64_t v = video(sam_tok, 1);
    activate(sam_tok, tom, tom_tok);
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        test_clock_advance(T, 1000);
        ids[i] = create_ok(tom_tok, sam, v);
    }
    static lagoon_v1_ListRecordsResponse resp;
    lagoon_v1_ListRecordsRequest r = lagoon_v1_ListRecordsRequest_init_zero;
    r.page_size = 2;
    uint64_t seen[5];
    size_t n = 0;
    for (int page = 0; page < 4; page++) {
        lagoon_set_token(C, sam_tok);
        EXPECT(lagoon_Teaching_ListStudentRecords(C, &r, &resp), LAGOON_OK, NULL);
        for (pb_size_t i = 0; i < resp.records_count && n < 5; i++)
            seen[n++] = resp.records[i].id;
        snprintf(r.page_token, sizeof(r.page_token), "%s", resp.next_page_token);
        pb_release(lagoon_v1_ListRecordsResponse_fields, &resp);
        if (r.page_token[0] == '\0')
            break;
    }
    assert_int_equal(n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(seen[i], ids[4 - i]); /* newest first, each once */
    memset(&r, 0, sizeof(r));
    r.page_size = 2;
    r.page = 2;
    lagoon_set_token(C, tom_tok);
    EXPECT(lagoon_Teaching_ListTeacherRecords(C, &r, &resp), LAGOON_OK, NULL);
    assert_int_equal(resp.records_count, 2);
    assert_int_equal(resp.records[0].id, ids[2]);
    pb_release(lagoon_v1_ListRecordsResponse_fields, &resp);
    r.page = 0;
    r.page_size = 100000;
    EXPECT(lagoon_Teaching_ListTeacherRecords(C, &r, &resp), LAGOON_INVALID_ARGUMENT, "page_size");
    /* A retry with the same key answers the first record and adds none. */
    lagoon_set_idempotency_key(C, "rec-retry");
    uint64_t first = create_ok(tom_tok, sam, v);
    lagoon_set_idempotency_key(C, "rec-retry");
    assert_int_equal(create_ok(tom_tok, sam, v), first);
    assert_int_equal(count_rows(&lagoon_table_progress_records, any_row, 0), 6);
}

/* ---- summaries against a recomputation ---------------------------------------------------------- */

#define MODEL_MAX 200

/* The test's own copy of every live record: what the summaries must say. */
typedef struct model_rec {
    uint64_t id, teacher;
    int has[TEACHING_SCORES];
    uint32_t v[TEACHING_SCORES];
} model_rec;

static model_rec MODEL[MODEL_MAX];
static size_t NMODEL;

static uint32_t rnd(uint32_t *s, uint32_t n)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) % n;
}

/* Compares the summary of (sam, teacher) (0: all) with the model, oldest first by id. */
static void check_summary(uint64_t teacher)
{
    lagoon_v1_GetSummaryRequest gs = {sam, teacher};
    lagoon_set_token(C, sam_tok);
    EXPECT(lagoon_Teaching_GetSummary(C, &gs, &SUM), LAGOON_OK, NULL);
    uint32_t count = 0;
    for (size_t i = 0; i < NMODEL; i++)
        count += teacher == 0 || MODEL[i].teacher == teacher;
    assert_int_equal(SUM.count, count);
    assert_int_equal(SUM.scores_count, TEACHING_SCORES);
    for (int s = 0; s < TEACHING_SCORES; s++) {
        uint32_t vals[MODEL_MAX];
        size_t n = 0;
        uint64_t sum = 0;
        for (size_t i = 0; i < NMODEL; i++)
            if ((teacher == 0 || MODEL[i].teacher == teacher) && MODEL[i].has[s]) {
                vals[n++] = MODEL[i].v[s];
                sum += MODEL[i].v[s];
            }
        const lagoon_v1_ScoreSummary *ss = &SUM.scores[s];
        if (ss->count != n || ss->sum != sum)
            fail_msg("teacher %llu score %d: count %u sum %llu, expected %zu %llu", (unsigned long long)teacher, s,
                     ss->count, (unsigned long long)ss->sum, n, (unsigned long long)sum);
        double avg = n ? (double)sum / (double)n : 0.0;
        assert_true(ss->average > avg - 1e-9 && ss->average < avg + 1e-9);
        assert_int_equal(ss->latest, n ? vals[n - 1] : 0);
        assert_int_equal(ss->has_trend, n >= TEACHING_RECENT_MAX);
        if (n >= TEACHING_RECENT_MAX) {
            double older = 0, newer = 0;
            for (int k = 0; k < TEACHING_TREND_SPAN; k++) {
                older += vals[n - TEACHING_RECENT_MAX + k];
                newer += vals[n - TEACHING_TREND_SPAN + k];
            }
            double trend = (newer - older) / TEACHING_TREND_SPAN;
            if (!(ss->trend > trend - 1e-9 && ss->trend < trend + 1e-9))
                fail_msg("score %d: trend %f, expected %f", s, ss->trend, trend);
        }
    }
}

static void random_scores(uint32_t *seed, model_rec *m)
{
    m->has[0] = 1;
    m->v[0] = 1 + rnd(seed, 5);
    int any = 0;
    for (int s = 1; s < TEACHING_SCORES; s++) {
        m->has[s] = rnd(seed, 3) != 0;
        m->v[s] = m->has[s] ? 1 + rnd(seed, 100) : 0;
        any |= m->has[s];
    }
    if (!any) {
        m->has[1] = 1;
        m->v[1] = 1 + rnd(seed, 100);
    }
}

static void test_summary_random(void **state)
{
    (void)state;
    uint64_t vid = video(sam_tok, 1);
    activate(sam_tok, tom, tom_tok);
    activate(sam_tok, tia, tia_tok);
    uint32_t seed = 20261201;
    NMODEL = 0;
    for (int step = 0; step < 160; step++) {
        uint32_t op = rnd(&seed, 10);
        if (step % 2) /* every other record shares its created_at: ties go by id */
            test_clock_advance(T, 1000);
        if (op < 6 || NMODEL == 0) {
            if (NMODEL == MODEL_MAX)
                continue;
            model_rec *m = &MODEL[NMODEL];
            random_scores(&seed, m);
            m->teacher = rnd(&seed, 2) ? tom : tia;
            memset(&CR, 0, sizeof(CR));
            CR.student_id = sam;
            CR.video_id = vid;
            CR.rating = m->v[0];
            CR.has_technique = m->has[1], CR.technique = m->v[1];
            CR.has_musicality = m->has[2], CR.musicality = m->v[2];
            CR.has_rhythm = m->has[3], CR.rhythm = m->v[3];
            CR.has_overall = m->has[4], CR.overall = m->v[4];
            lagoon_set_token(C, m->teacher == tom ? tom_tok : tia_tok);
            EXPECT(lagoon_Teaching_CreateRecord(C, &CR, &REC), LAGOON_OK, NULL);
            m->id = REC.id;
            NMODEL++;
        } else if (op < 8) {
            model_rec *m = &MODEL[rnd(&seed, (uint32_t)NMODEL)];
            model_rec n = *m;
            random_scores(&seed, &n);
            memset(&UR, 0, sizeof(UR));
            UR.record_id = m->id;
            UR.has_rating = true, UR.rating = n.v[0];
            UR.has_technique = n.has[1], UR.technique = n.v[1], UR.clear_technique = !n.has[1];
            UR.has_musicality = n.has[2], UR.musicality = n.v[2], UR.clear_musicality = !n.has[2];
            UR.has_rhythm = n.has[3], UR.rhythm = n.v[3], UR.clear_rhythm = !n.has[3];
            UR.has_overall = n.has[4], UR.overall = n.v[4], UR.clear_overall = !n.has[4];
            lagoon_set_token(C, root_tok);
            EXPECT(lagoon_Teaching_UpdateRecord(C, &UR, &REC), LAGOON_OK, NULL);
            *m = n;
        } else {
            size_t i = rnd(&seed, (uint32_t)NMODEL);
            EXPECT(delete_record(root_tok, MODEL[i].id), LAGOON_OK, NULL);
            memmove(&MODEL[i], &MODEL[i + 1], (NMODEL - i - 1) * sizeof(MODEL[0]));
            NMODEL--;
        }
        if (step % 8 == 7) {
            check_summary(0);
            check_summary(tom);
            check_summary(tia);
        }
    }
    check_summary(0);
    check_summary(tom);
    check_summary(tia);
    assert_true(NMODEL >= TEACHING_RECENT_MAX); /* the trend was checked */
}

/* ---- notifications and the rate limit --------------------------------------------------------- */

static void test_notifications(void **state)
{
    (void)state;
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
    assert_int_equal(notes(tom, lagoon_v1_Notification_Type_TEACHING_REQUEST), 1);
    EXPECT(answer(tom_tok, DECLINE, REL.id), LAGOON_OK, NULL);
    assert_int_equal(notes(sam, lagoon_v1_Notification_Type_TEACHING_ANSWER), 1);
    EXPECT(invite(tia_tok, sam), LAGOON_OK, NULL);
    assert_int_equal(notes(sam, lagoon_v1_Notification_Type_TEACHING_REQUEST), 1);
    EXPECT(answer(sam_tok, ACCEPT, REL.id), LAGOON_OK, NULL);
    assert_int_equal(notes(tia, lagoon_v1_Notification_Type_TEACHING_ANSWER), 1);
    EXPECT(answer(sam_tok, REMOVE, REL.id), LAGOON_OK, NULL); /* a removal notifies no one */
    assert_int_equal(notes(tia, lagoon_v1_Notification_Type_TEACHING_ANSWER), 1);
    assert_int_equal(notes(sam, lagoon_v1_Notification_Type_TEACHING_ANSWER), 1);
}

static void relogin(const char *name, char *tok)
{
    lagoon_set_token(C, NULL);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "%s", name);
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    lagoon_v1_TokenPair tp;
    EXPECT(lagoon_Auth_Login(C, &lr, &tp), LAGOON_OK, NULL);
    snprintf(tok, 65, "%s", tp.access_token);
}

static void test_rate_limit(void **state)
{
    (void)state;
    EXPECT(request(sam_tok, sam), LAGOON_INVALID_ARGUMENT, "teacher_id"); /* refused: not counted */
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
    EXPECT(request(sam_tok, tia), LAGOON_OK, NULL);
    EXPECT(answer(tom_tok, DECLINE, REL.id - 1), LAGOON_OK, NULL);
    EXPECT(request(sam_tok, tom), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    /* Per user: another still may; a day later sam may again. */
    EXPECT(invite(tom_tok, sue), LAGOON_OK, NULL);
    test_clock_advance(T, 24 * 3600 * 1000 + 1000);
    relogin("sam", sam_tok); /* the access token expired meanwhile */
    EXPECT(request(sam_tok, tom), LAGOON_OK, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_request_accept_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invite_decline_rerequest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists_and_students, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relationship_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_teacher_search, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_create_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_pages_and_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_summary_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup_limited, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
