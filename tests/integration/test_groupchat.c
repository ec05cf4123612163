/* GroupChat end to end through the generated client against the real server and store: Send,
 * List (cursor pages, numbered pages, since), Edit, Delete, MarkRead and the unread counts
 * (against a recount, and the 999+ cap), mentions (muted too), the authorization matrix
 * (owner, admin, member, non-member, anonymous; public and private), the cascades, the rows a
 * Send writes whatever the group's size, and realtime on the group's topic: send, edit, delete,
 * read and typing reach a subscribed member; join and leave act on a live subscription; a
 * resume with topic positions and a List with since lose nothing across a leave and a join. */
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

#include "events.h"
#include "groupchat.h"
#include "groups.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define WAIT_MS 5000

static test_app *T;
static lagoon_client *C;

/* own owns the groups; adm is an admin; mem a member; out stays outside. */
static uint64_t own, adm, mem, out;
static char own_tok[65], adm_tok[65], mem_tok[65], out_tok[65];

static lagoon_v1_Group G;
static lagoon_v1_GroupMember M;
static lagoon_v1_GroupsEmpty E;
static lagoon_v1_GroupMessage GM;
static lagoon_v1_GroupUnread GU;
static lagoon_v1_GroupChatEmpty GE;
static lagoon_v1_ListGroupMessagesResponse LM;
static lagoon_v1_ListGroupsResponse GL;

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->event_retention_count = 100000;
}

/* The sends-per-minute budget at GROUPCHAT_TEST_SENDS (BACKOFF: then a wait). */
#define GROUPCHAT_TEST_SENDS 5

static void tweak_sends(app_config *acfg, rpc_config *cfg)
{
    tweak(acfg, cfg);
    acfg->sends.max_events = GROUPCHAT_TEST_SENDS;
}

static int start_with(void (*tweak_fn)(app_config *acfg, rpc_config *cfg))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
    own = test_verified_user(T, C, "own", lagoon_v1_Role_STUDENT, own_tok);
    adm = test_verified_user(T, C, "adm", lagoon_v1_Role_STUDENT, adm_tok);
    mem = test_verified_user(T, C, "mem", lagoon_v1_Role_STUDENT, mem_tok);
    out = test_verified_user(T, C, "out", lagoon_v1_Role_STUDENT, out_tok);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return start_with(tweak);
}

static int setup_sends(void **state)
{
    (void)state;
    return start_with(tweak_sends);
}

static void release_lists(void)
{
    pb_release(lagoon_v1_ListGroupMessagesResponse_fields, &LM);
    memset(&LM, 0, sizeof(LM));
    pb_release(lagoon_v1_ListGroupsResponse_fields, &GL);
    memset(&GL, 0, sizeof(GL));
}

static int teardown(void **state)
{
    (void)state;
    release_lists();
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)
#define PUB lagoon_v1_Group_Visibility_PUBLIC
#define PRIV lagoon_v1_Group_Visibility_PRIVATE

static uint64_t create(const char *tok, const char *name, lagoon_v1_Group_Visibility vis)
{
    lagoon_v1_CreateGroupRequest r = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(r.name, sizeof(r.name), "%s", name);
    r.visibility = vis;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Groups_Create(C, &r, &G), LAGOON_OK, NULL);
    return G.id;
}

static int join(const char *tok, uint64_t g)
{
    lagoon_v1_GroupRequest r = {g};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Join(C, &r, &M);
}

static int leave(const char *tok, uint64_t g)
{
    lagoon_v1_GroupRequest r = {g};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Leave(C, &r, &E);
}

static int invite(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Invite(C, &r, &M);
}

static int accept_invite(const char *tok, uint64_t g)
{
    lagoon_v1_GroupRequest r = {g};
    lagoon_set_token(C, tok);
    return lagoon_Groups_AcceptInvite(C, &r, &M);
}

static int make_admin(uint64_t g, uint64_t u)
{
    lagoon_v1_SetGroupRoleRequest r = {g, u, lagoon_v1_GroupMember_Role_ADMIN};
    lagoon_set_token(C, own_tok);
    return lagoon_Groups_SetRole(C, &r, &M);
}

/* A group of own's with adm (admin) and mem (member). */
static uint64_t group_of_three(const char *name, lagoon_v1_Group_Visibility vis)
{
    uint64_t g = create(own_tok, name, vis);
    for (int i = 0; i < 2; i++) {
        EXPECT(invite(own_tok, g, i ? mem : adm), LAGOON_OK, NULL);
        EXPECT(accept_invite(i ? mem_tok : adm_tok, g), LAGOON_OK, NULL);
    }
    EXPECT(make_admin(g, adm), LAGOON_OK, NULL);
    return g;
}

static lagoon_v1_SendGroupMessageRequest SR;

static int send_text(const char *tok, uint64_t g, const char *text)
{
    memset(&SR, 0, sizeof(SR));
    SR.group_id = g;
    SR.which_content = lagoon_v1_SendGroupMessageRequest_text_tag;
    snprintf(SR.content.text.text, sizeof(SR.content.text.text), "%s", text);
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_Send(C, &SR, &GM);
}

/* Sends text and returns its id. */
static uint64_t said(const char *tok, uint64_t g, const char *text)
{
    EXPECT(send_text(tok, g, text), LAGOON_OK, NULL);
    return GM.id;
}

static int list(const char *tok, uint64_t g, uint32_t size, const char *token, uint32_t page, uint64_t anchor,
                uint64_t since)
{
    release_lists();
    lagoon_v1_ListGroupMessagesRequest r = lagoon_v1_ListGroupMessagesRequest_init_zero;
    r.group_id = g;
    if (page) {
        r.page = page;
        r.per_page = size;
    } else {
        r.page_size = size;
    }
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    r.anchor = anchor;
    r.since = since;
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_List(C, &r, &LM);
}

static int edit(const char *tok, uint64_t id, const char *text)
{
    lagoon_v1_EditGroupMessageRequest r = lagoon_v1_EditGroupMessageRequest_init_zero;
    r.message_id = id;
    snprintf(r.text, sizeof(r.text), "%s", text);
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_Edit(C, &r, &GM);
}

static int del(const char *tok, uint64_t id)
{
    lagoon_v1_DeleteGroupMessageRequest r = {id};
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_Delete(C, &r, &GE);
}

static int mark(const char *tok, uint64_t g, uint64_t up_to)
{
    lagoon_v1_MarkGroupReadRequest r = {g, up_to};
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_MarkRead(C, &r, &GU);
}

static int typing(const char *tok, uint64_t g)
{
    lagoon_v1_GroupTypingRequest r = {g};
    lagoon_set_token(C, tok);
    return lagoon_GroupChat_Typing(C, &r, &GE);
}

/* The caller's unread count of group g as ListMine shows it (display into disp). */
static uint32_t mine_unread(const char *tok, uint64_t g, char disp[16])
{
    release_lists();
    lagoon_v1_ListMyGroupsRequest r = lagoon_v1_ListMyGroupsRequest_init_zero;
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Groups_ListMine(C, &r, &GL), LAGOON_OK, NULL);
    for (pb_size_t i = 0; i < GL.groups_count; i++)
        if (GL.groups[i].id == g) {
            if (disp)
                snprintf(disp, 16, "%s", GL.groups[i].unread_display);
            return GL.groups[i].unread;
        }
    fail_msg("group %llu not in ListMine", (unsigned long long)g);
    return 0;
}


/* ---- Send, List, Edit, Delete --------------------------------------------------------------- */

static void test_send_list_edit_delete(void **state)
{
    (void)state;
    uint64_t g = group_of_three("chat", PRIV);
    /* Text, image and video, as direct messages; their rules too. */
    uint64_t a = said(own_tok, g, "hello");
    assert_int_equal(GM.group_id, g);
    assert_int_equal(GM.sender_id, own);
    assert_int_equal(GM.party_id, 0);
    assert_int_equal(GM.media_position_ms, 0);
    memset(&SR, 0, sizeof(SR));
    SR.group_id = g;
    SR.which_content = lagoon_v1_SendGroupMessageRequest_image_tag;
    snprintf(SR.content.image.url, sizeof(SR.content.image.url), "https://example.com/a.png");
    SR.content.image.width = SR.content.image.height = 10;
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    assert_int_equal(GM.which_content, lagoon_v1_GroupMessage_image_tag);
    uint64_t b = GM.id;
    SR.which_content = lagoon_v1_SendGroupMessageRequest_video_tag;
    snprintf(SR.content.video.url, sizeof(SR.content.video.url), "ftp://example.com/v");
    SR.content.video.length_seconds = 3;
    SR.content.video.source = lagoon_v1_VideoContent_Source_YOUTUBE;
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_INVALID_ARGUMENT, "video.url");
    snprintf(SR.content.video.url, sizeof(SR.content.video.url), "https://youtu.be/x");
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    uint64_t c = GM.id;
    SR.which_content = 0;
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_INVALID_ARGUMENT, "content");
    EXPECT(send_text(mem_tok, g, ""), LAGOON_INVALID_ARGUMENT, "text.text");
    assert_true(a < b && b < c);
    /* List: newest first in cursor pages; numbered pages from an anchor; since, oldest first. */
    EXPECT(list(adm_tok, g, 2, NULL, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 2);
    assert_int_equal(LM.messages[0].id, c);
    assert_int_equal(LM.messages[1].id, b);
    char token[801];
    snprintf(token, sizeof(token), "%s", LM.next_page_token);
    assert_true(token[0] != '\0');
    EXPECT(list(adm_tok, g, 2, token, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 1);
    assert_int_equal(LM.messages[0].id, a);
    assert_string_equal(LM.messages[0].content.text.text, "hello");
    EXPECT(list(adm_tok, g, 2, NULL, 1, 0, 0), LAGOON_OK, NULL);
    uint64_t anchor = LM.anchor;
    assert_int_equal(anchor, c);
    said(mem_tok, g, "later"); /* does not shift page 2 */
    EXPECT(list(adm_tok, g, 2, NULL, 2, anchor, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 1);
    assert_int_equal(LM.messages[0].id, a);
    EXPECT(list(adm_tok, g, 0, NULL, 0, 0, a), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 3);
    assert_int_equal(LM.messages[0].id, b);
    EXPECT(list(adm_tok, g, 0, NULL, 1, 0, a), LAGOON_INVALID_ARGUMENT, "since");
    EXPECT(list(adm_tok, g, 201, NULL, 0, 0, 0), LAGOON_INVALID_ARGUMENT, "page_size");
    EXPECT(list(adm_tok, g, 0, NULL, 0, 5, 0), LAGOON_INVALID_ARGUMENT, "anchor");
    /* Edit: the sender, text only, within the window, at most CHAT_EDITS_MAX times. */
    EXPECT(edit(mem_tok, a, "not mine"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(edit(adm_tok, a, "not mine"), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(edit(mem_tok, b, "an image"), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(edit(own_tok, a + 1000, "none"), LAGOON_NOT_FOUND, "message_id");
    for (int i = 0; i < 10; i++)
        EXPECT(edit(own_tok, a, "hello again"), LAGOON_OK, NULL);
    assert_int_equal(GM.edit_count, 10);
    assert_true(GM.edited_at > 0);
    EXPECT(edit(own_tok, a, "once more"), LAGOON_FAILED_PRECONDITION, NULL);
    uint64_t d = said(mem_tok, g, "typo");
    test_clock_advance(T, 15 * 60 * 1000 + 1);
    EXPECT(edit(mem_tok, d, "too late"), LAGOON_FAILED_PRECONDITION, NULL);
    /* Delete: the sender, or an admin (the owner too); not another member. */
    uint64_t e = said(adm_tok, g, "admin's");
    EXPECT(del(mem_tok, e), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(del(mem_tok, d), LAGOON_OK, NULL);
    EXPECT(del(adm_tok, b), LAGOON_OK, NULL);
    EXPECT(del(own_tok, e), LAGOON_OK, NULL);
    EXPECT(del(own_tok, e), LAGOON_NOT_FOUND, "message_id");
    EXPECT(list(mem_tok, g, 0, NULL, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 3); /* a, c, "later" */
    assert_string_equal(LM.messages[2].content.text.text, "hello again");
}

/* Send's retries: the same client_message_id (or idempotency key) answers the stored message. */
static void test_send_retries(void **state)
{
    (void)state;
    uint64_t g = group_of_three("retries", PUB);
    memset(&SR, 0, sizeof(SR));
    SR.group_id = g;
    SR.which_content = lagoon_v1_SendGroupMessageRequest_text_tag;
    snprintf(SR.content.text.text, sizeof(SR.content.text.text), "once");
    snprintf(SR.client_message_id, sizeof(SR.client_message_id), "c-1");
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    uint64_t first = GM.id;
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    assert_int_equal(GM.id, first);
    SR.client_message_id[0] = '\0';
    lagoon_set_idempotency_key(C, "k-1");
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    uint64_t second = GM.id;
    assert_true(second > first);
    lagoon_set_idempotency_key(C, "k-1");
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_OK, NULL);
    assert_int_equal(GM.id, second);
    EXPECT(list(mem_tok, g, 0, NULL, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 2);
    /* The same ids to another group: refused, never answered with the first group's message. */
    uint64_t h = group_of_three("elsewhere", PUB);
    SR.group_id = h;
    snprintf(SR.client_message_id, sizeof(SR.client_message_id), "c-1");
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_FAILED_PRECONDITION, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "client_message_id was already used"));
    SR.client_message_id[0] = '\0';
    lagoon_set_idempotency_key(C, "k-1");
    EXPECT(lagoon_GroupChat_Send(C, &SR, &GM), LAGOON_FAILED_PRECONDITION, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "idempotency_key was already used"));
    EXPECT(list(mem_tok, h, 0, NULL, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 0);
}

/* The sender's budget: refused Sends are given back; direct messages have a budget of their own. */
static void test_send_budget(void **state)
{
    (void)state;
    uint64_t g = group_of_three("budget", PUB);
    for (int i = 0; i < GROUPCHAT_TEST_SENDS + 2; i++)
        EXPECT(send_text(out_tok, g, "not a member"), LAGOON_PERMISSION_DENIED, NULL);
    for (int i = 0; i < GROUPCHAT_TEST_SENDS; i++)
        said(mem_tok, g, "counted");
    EXPECT(send_text(mem_tok, g, "one too many"), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    said(adm_tok, g, "another user's budget");
    test_send_text(C, mem_tok, own, "a direct message counts apart");
    test_clock_advance(T, 61 * 1000);
    said(mem_tok, g, "a minute later");
}

/* ---- the authorization matrix ------------------------------------------------------------- */

/* Every method for one caller: expected code (and, for NOT_FOUND, the field). */
static void matrix_row(const char *tok, uint64_t g, uint64_t msg, int code, const char *field)
{
    EXPECT(send_text(tok, g, "hi"), code, field);
    EXPECT(list(tok, g, 0, NULL, 0, 0, 0), code, field);
    EXPECT(mark(tok, g, 0), code, field);
    EXPECT(typing(tok, g), code, field);
    /* Edit and Delete name a message only: one of a group the caller may not see is missing. */
    const char *msg_field = field && strcmp(field, "group_id") == 0 ? "message_id" : field;
    EXPECT(edit(tok, msg, "x"), code, msg_field);
    EXPECT(del(tok, msg), code, msg_field);
}

static void test_authorization_matrix(void **state)
{
    (void)state;
    for (int vis = 0; vis < 2; vis++) {
        uint64_t g = group_of_three(vis ? "private matrix" : "public matrix", vis ? PRIV : PUB);
        uint64_t msg = said(own_tok, g, "the owner's");
        /* Anonymous: every method UNAUTHENTICATED. */
        matrix_row(NULL, g, msg, LAGOON_UNAUTHENTICATED, NULL);
        /* A non-member: a public group's chat is its members' (PERMISSION_DENIED); a private
         * group does not exist for it. An invitation (which shows the group) or a request is no
         * membership; nor is being a site administrator. */
        matrix_row(out_tok, g, msg, vis ? LAGOON_NOT_FOUND : LAGOON_PERMISSION_DENIED, vis ? "group_id" : NULL);
        if (vis) {
            EXPECT(join(out_tok, g), LAGOON_OK, NULL); /* a request */
            matrix_row(out_tok, g, msg, LAGOON_NOT_FOUND, "group_id");
            EXPECT(invite(own_tok, g, out), LAGOON_OK, NULL); /* inviting a requester lets it in */
            EXPECT(leave(out_tok, g), LAGOON_OK, NULL);
            EXPECT(invite(own_tok, g, out), LAGOON_OK, NULL);
            matrix_row(out_tok, g, msg, LAGOON_PERMISSION_DENIED, NULL);
        }
        char root_tok[65];
        char root_name[16];
        snprintf(root_name, sizeof(root_name), "root%d", vis);
        test_admin_user(T, C, root_name, root_tok);
        matrix_row(root_tok, g, msg, LAGOON_PERMISSION_DENIED, NULL);
        /* Members read, write, mark and type; each edits only its own, admins delete any. */
        EXPECT(send_text(mem_tok, g, "member"), LAGOON_OK, NULL);
        uint64_t mine = GM.id;
        EXPECT(list(mem_tok, g, 0, NULL, 0, 0, 0), LAGOON_OK, NULL);
        assert_int_equal(LM.messages_count, 2);
        EXPECT(mark(mem_tok, g, 0), LAGOON_OK, NULL);
        EXPECT(typing(mem_tok, g), LAGOON_OK, NULL);
        EXPECT(edit(mem_tok, msg, "x"), LAGOON_PERMISSION_DENIED, NULL);
        EXPECT(del(mem_tok, msg), LAGOON_PERMISSION_DENIED, NULL);
        EXPECT(edit(adm_tok, mine, "x"), LAGOON_PERMISSION_DENIED, NULL);
        EXPECT(edit(mem_tok, mine, "mine"), LAGOON_OK, NULL);
        EXPECT(del(adm_tok, mine), LAGOON_OK, NULL);
        EXPECT(del(adm_tok, msg), LAGOON_OK, NULL);
        /* A member who left is an outsider again. */
        uint64_t kept = said(own_tok, g, "after");
        EXPECT(leave(mem_tok, g), LAGOON_OK, NULL);
        matrix_row(mem_tok, g, kept, vis ? LAGOON_NOT_FOUND : LAGOON_PERMISSION_DENIED, vis ? "group_id" : NULL);
        /* No such group. */
        EXPECT(send_text(own_tok, g + 1000, "none"), LAGOON_NOT_FOUND, "group_id");
    }
}

/* ---- unread counts -------------------------------------------------------------------------- */

/* A tiny deterministic generator (the test must replay the same way). */
static uint32_t rnd(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

/* Random sends, reads and deletes by three members; after each step every member's count (from
 * ListMine and MarkRead) equals the test's own recount over the messages it knows of. */
static void test_unread_recount(void **state)
{
    (void)state;
    uint64_t g = group_of_three("counting", PRIV);
    const char *toks[3] = {own_tok, adm_tok, mem_tok};
    enum { STEPS = 150, MAXMSG = 200 };
    uint64_t ids[MAXMSG];
    int live[MAXMSG];
    int n = 0;
    uint64_t read_to[3] = {0, 0, 0};
    uint32_t seed = 12345;
    for (int step = 0; step < STEPS; step++) {
        uint32_t who = rnd(&seed) % 3, what = rnd(&seed) % 10;
        if (what < 6 && n < MAXMSG) { /* send: the sender has read up to it */
            ids[n] = said(toks[who], g, "m");
            live[n++] = 1;
            read_to[who] = ids[n - 1];
        } else if (what < 8 && n > 0) { /* read up to a random message, or everything */
            uint32_t k = rnd(&seed) % (uint32_t)(n + 1);
            uint64_t up = k == (uint32_t)n ? 0 : ids[k];
            EXPECT(mark(toks[who], g, up), LAGOON_OK, NULL);
            uint64_t newest = 0; /* the server's newest: deleted ones are gone */
            for (int j = 0; j < n; j++)
                newest = live[j] ? ids[j] : newest;
            uint64_t to = up == 0 || up > newest ? newest : up;
            if (to > read_to[who])
                read_to[who] = to;
            assert_int_equal(GU.read_up_to, read_to[who]);
        } else if (n > 0) { /* the owner deletes a random live message */
            uint32_t k = rnd(&seed) % (uint32_t)n;
            if (live[k]) {
                EXPECT(del(own_tok, ids[k]), LAGOON_OK, NULL);
                live[k] = 0;
            }
        }
        if (step % 10 != 9)
            continue;
        for (int u = 0; u < 3; u++) {
            uint32_t expect = 0;
            for (int k = 0; k < n; k++)
                expect += live[k] && ids[k] > read_to[u];
            char disp[16], want[16];
            assert_int_equal(mine_unread(toks[u], g, disp), expect);
            snprintf(want, sizeof(want), "%u", expect);
            assert_string_equal(disp, want);
        }
    }
}

/* Inserts n messages of sender into group g straight into the store (a thousand Sends through
 * the server would be slow here; the count reads the same index). */
typedef struct bulk {
    uint64_t g, sender;
    int n;
} bulk;

static int bulk_insert(store_txn *t, void *arg, store_error *err)
{
    const bulk *b = arg;
    lagoon_v1_GroupMessage *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (int i = 0; i < b->n && st == LAGOON_OK; i++) {
        memset(m, 0, sizeof(*m));
        m->group_id = b->g;
        m->sender_id = b->sender;
        m->which_content = lagoon_v1_GroupMessage_text_tag;
        snprintf(m->content.text.text, sizeof(m->content.text.text), "bulk %d", i);
        st = store_insert(t, &lagoon_table_group_messages, m, NULL, err);
    }
    free(m);
    return st;
}

static void bulk_send(uint64_t g, uint64_t sender, int n)
{
    bulk b = {g, sender, n};
    store_error err;
    assert_int_equal(store_write(T->app->db, bulk_insert, &b, &err), LAGOON_OK);
}

/* Exact to 999, then 1000 shown as "999+", however many more there are. */
static void test_unread_cap(void **state)
{
    (void)state;
    uint64_t g = group_of_three("busy", PUB);
    char disp[16];
    bulk_send(g, own, 998);
    uint64_t last = said(own_tok, g, "999th");
    assert_int_equal(mine_unread(mem_tok, g, disp), 999);
    assert_string_equal(disp, "999");
    said(own_tok, g, "1000th");
    assert_int_equal(mine_unread(mem_tok, g, disp), GROUPCHAT_UNREAD_CAP);
    assert_string_equal(disp, "999+");
    bulk_send(g, own, 600);
    assert_int_equal(mine_unread(mem_tok, g, disp), GROUPCHAT_UNREAD_CAP);
    assert_string_equal(disp, "999+");
    EXPECT(mark(mem_tok, g, last), LAGOON_OK, NULL);
    assert_int_equal(GU.unread, 601);
    assert_string_equal(GU.unread_display, "601");
    assert_int_equal(mine_unread(own_tok, g, disp), 600); /* the sender read to its own Send */
    /* A new member's count starts at 0: history is not unread. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    assert_int_equal(mine_unread(out_tok, g, disp), 0);
    assert_string_equal(disp, "0");
}

/* ---- mentions ------------------------------------------------------------------------------- */

/* The GROUP_MENTION notifications of user (counted in the store). */
typedef struct note_count {
    uint64_t user;
    int n;
} note_count;

static int note_cb(void *arg, uint64_t id, const void *row)
{
    (void)id;
    note_count *c = arg;
    const lagoon_v1_Notification *n = row;
    c->n += n->user_id == c->user && n->type == lagoon_v1_Notification_Type_GROUP_MENTION;
    return LAGOON_OK;
}

static int mentions_of(uint64_t user)
{
    note_count c = {user, 0};
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_query q = {.table = &lagoon_table_notifications, .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    assert_int_equal(store_scan(t, &q, note_cb, &c, &page, &err), LAGOON_OK);
    store_read_end(t);
    return c.n;
}

static void test_mentions(void **state)
{
    (void)state;
    uint64_t g = group_of_three("mentions", PUB);
    lagoon_v1_SetGroupMutedRequest mr = {g, true};
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Groups_SetMuted(C, &mr, &M), LAGOON_OK, NULL);
    /* A member (muted: notified all the same), once per message; not an email address, not the
     * sender, not a non-member. */
    said(own_tok, g, "hi @mem and @MEM, mail ann@adm.com, @own, @out and @nobody.");
    assert_int_equal(mentions_of(mem), 1);
    assert_int_equal(mentions_of(adm), 0);
    assert_int_equal(mentions_of(own), 0);
    assert_int_equal(mentions_of(out), 0);
    said(own_tok, g, "@adm: @mem");
    assert_int_equal(mentions_of(mem), 2);
    assert_int_equal(mentions_of(adm), 1);
    /* At most GROUPCHAT_MENTIONS_MAX distinct names a message: the later ones are text. */
    char text[200];
    size_t len = 0;
    for (int i = 0; i < GROUPCHAT_MENTIONS_MAX; i++) /* one distinct name, however often */
        len += (size_t)snprintf(text + len, sizeof(text) - len, "@ghost ");
    snprintf(text + len, sizeof(text) - len, "@ab1 @ab2 @ab3 @ab4 @ab5 @mem");
    said(adm_tok, g, text);
    assert_int_equal(mentions_of(mem), 2);
}

/* ---- cascades ------------------------------------------------------------------------------- */

static void test_cascades(void **state)
{
    (void)state;
    uint64_t g = group_of_three("going", PUB);
    uint64_t h = group_of_three("staying", PUB);
    said(own_tok, g, "one");
    uint64_t two = said(mem_tok, g, "two");
    said(mem_tok, h, "three");
    said(adm_tok, h, "four");
    assert_int_equal(test_count_rows(T, &lagoon_table_group_messages), 4);
    lagoon_set_idempotency_key(C, "edit-once");
    EXPECT(edit(mem_tok, two, "two, edited"), LAGOON_OK, NULL);
    lagoon_set_idempotency_key(C, "edit-once");
    EXPECT(edit(mem_tok, two, "two, edited"), LAGOON_OK, NULL); /* the kept response */
    /* A deleted group takes its chat, and the kept responses that show it. */
    lagoon_v1_DeleteGroupRequest dr = {g};
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_OK, NULL);
    assert_int_equal(test_count_rows(T, &lagoon_table_group_messages), 2);
    lagoon_set_idempotency_key(C, "edit-once");
    EXPECT(edit(mem_tok, two, "two, edited"), LAGOON_NOT_FOUND, "message_id");
    /* A deleted account takes the messages it sent; the others' counts follow. */
    assert_int_equal(mine_unread(own_tok, h, NULL), 2);
    lagoon_v1_DeleteAccountRequest ar = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(ar.password, sizeof(ar.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &ar, &ue), LAGOON_OK, NULL);
    assert_int_equal(test_count_rows(T, &lagoon_table_group_messages), 1);
    assert_int_equal(mine_unread(own_tok, h, NULL), 1);
    EXPECT(list(adm_tok, h, 0, NULL, 0, 0, 0), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 1);
    assert_string_equal(LM.messages[0].content.text.text, "four");
}

/* Every table a group's rows live in, counted. */
typedef struct row_counts {
    size_t groups, members, messages, topic_members, topic_logs;
} row_counts;

static row_counts count_group_rows(void)
{
    row_counts c = {test_count_rows(T, &lagoon_table_groups), test_count_rows(T, &lagoon_table_group_members),
                    test_count_rows(T, &lagoon_table_group_messages), test_count_rows(T, &lagoon_table_topic_members),
                    test_count_rows(T, &lagoon_table_topic_feeds)};
    return c;
}

/* topic_logs: the topics with a log (TopicFeed rows): here, the groups' whose chat has events. */
static void expect_rows(row_counts got, size_t groups, size_t members, size_t messages, size_t topic_members,
                        size_t topic_logs)
{
    assert_int_equal(got.groups, groups);
    assert_int_equal(got.members, members);
    assert_int_equal(got.messages, messages);
    assert_int_equal(got.topic_members, topic_members);
    assert_int_equal(got.topic_logs, topic_logs);
}

/* A group in every membership state, with messages, goes whole: by Groups/Delete, and by its
 * owner's account deletion, which also takes the owner's rows and messages in another group and
 * counts it out there. Counted in every table, so that no orphan row stays. */
static void test_no_orphan_rows(void **state)
{
    (void)state;
    char inv_tok[65];
    uint64_t inv = test_verified_user(T, C, "inv", lagoon_v1_Role_STUDENT, inv_tok);
    row_counts base = count_group_rows();
    expect_rows(base, 0, 0, 0, 0, 0);
    for (int by_account = 0; by_account < 2; by_account++) {
        /* own's group: own, adm, mem ACTIVE; out REQUESTED; inv INVITED. */
        uint64_t g = group_of_three(by_account ? "owner goes" : "group goes", PRIV);
        EXPECT(join(out_tok, g), LAGOON_OK, NULL);
        EXPECT(invite(own_tok, g, inv), LAGOON_OK, NULL);
        said(own_tok, g, "hello @mem");
        said(adm_tok, g, "two");
        uint64_t three = said(mem_tok, g, "three");
        EXPECT(edit(mem_tok, three, "three, edited"), LAGOON_OK, NULL);
        EXPECT(mark(adm_tok, g, 0), LAGOON_OK, NULL);
        /* adm's group with own as a member: own's row and message there go with own only. */
        uint64_t h = create(adm_tok, "stays", PUB);
        EXPECT(join(own_tok, h), LAGOON_OK, NULL);
        said(own_tok, h, "own in h");
        said(adm_tok, h, "adm in h");
        expect_rows(count_group_rows(), 2, 5 + 2, 3 + 2, 3 + 2, 2);
        if (by_account) {
            lagoon_v1_DeleteAccountRequest ar = lagoon_v1_DeleteAccountRequest_init_zero;
            snprintf(ar.password, sizeof(ar.password), "%s", TEST_PASSWORD);
            lagoon_v1_UsersEmpty ue;
            lagoon_set_token(C, own_tok);
            EXPECT(lagoon_Users_DeleteAccount(C, &ar, &ue), LAGOON_OK, NULL);
            expect_rows(count_group_rows(), 1, 1, 1, 1, 1);
            lagoon_v1_GetGroupRequest gr = {h};
            lagoon_set_token(C, adm_tok);
            EXPECT(lagoon_Groups_Get(C, &gr, &G), LAGOON_OK, NULL);
            assert_int_equal(G.member_count, 1);
        } else {
            lagoon_v1_DeleteGroupRequest dr = {g};
            lagoon_set_token(C, own_tok);
            EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_OK, NULL);
            expect_rows(count_group_rows(), 1, 2, 2, 2, 1);
            lagoon_v1_DeleteGroupRequest hr = {h};
            lagoon_set_token(C, adm_tok);
            EXPECT(lagoon_Groups_Delete(C, &hr, &E), LAGOON_OK, NULL);
            expect_rows(count_group_rows(), 0, 0, 0, 0, 0);
            assert_int_equal(test_count_rows(T, &lagoon_table_topic_events), 0);
        }
        /* None of them sees either group's chat now. */
        for (int i = 0; i < 2; i++)
            EXPECT(list(i ? inv_tok : mem_tok, g, 0, NULL, 0, 0, 0), LAGOON_NOT_FOUND, "group_id");
    }
    (void)inv;
}

/* ---- rows per Send ---------------------------------------------------------------------------- */

typedef struct change_count {
    pthread_mutex_t mu;
    unsigned rows;
} change_count;

static void count_changes(void *arg, const store_change *ch, size_t n)
{
    (void)ch;
    change_count *cc = arg;
    pthread_mutex_lock(&cc->mu);
    cc->rows += (unsigned)n;
    pthread_mutex_unlock(&cc->mu);
}

/* Seeds n users straight into the store, each an ACTIVE member of g (through the topic too). */
typedef struct seed {
    uint64_t g;
    int n;
} seed;

static int seed_members(store_txn *t, void *arg, store_error *err)
{
    const seed *sd = arg;
    lagoon_v1_User *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = LAGOON_OK;
    for (int i = 0; i < sd->n && st == LAGOON_OK; i++) {
        memset(u, 0, sizeof(*u));
        snprintf(u->username, sizeof(u->username), "many%d", i);
        snprintf(u->email, sizeof(u->email), "many%d@example.com", i);
        u->active = true;
        st = store_insert(t, &lagoon_table_users, u, NULL, err);
        lagoon_v1_GroupMember m = lagoon_v1_GroupMember_init_zero;
        m.group_id = sd->g;
        m.user_id = u->id;
        m.role = lagoon_v1_GroupMember_Role_MEMBER;
        m.state = lagoon_v1_GroupMember_State_ACTIVE;
        lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, sd->g};
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_group_members, &m, NULL, err);
        if (st == LAGOON_OK)
            st = events_topic_join(t, T->app, u->id, &tp, err);
    }
    free(u);
    return st;
}

/* The rows one Send changes, by the store's announcements (made before the call's reply). */
static unsigned rows_of_send(change_count *cc, uint64_t g)
{
    pthread_mutex_lock(&cc->mu);
    cc->rows = 0;
    pthread_mutex_unlock(&cc->mu);
    test_clock_advance(T, 1); /* a new time: the group's last_activity_at changes too */
    said(own_tok, g, "counted");
    pthread_mutex_lock(&cc->mu);
    unsigned n = cc->rows;
    pthread_mutex_unlock(&cc->mu);
    return n;
}

static void test_send_rows_bounded(void **state)
{
    (void)state;
    static change_count cc = {PTHREAD_MUTEX_INITIALIZER, 0}; /* subscribed until the store closes */
    store_error err;
    assert_int_equal(store_subscribe(T->app->db, count_changes, &cc, &err), LAGOON_OK);
    uint64_t small = create(own_tok, "two", PUB);
    EXPECT(join(mem_tok, small), LAGOON_OK, NULL);
    uint64_t big = create(own_tok, "many", PUB);
    seed sd = {big, 300};
    assert_int_equal(store_write(T->app->db, seed_members, &sd, &err), LAGOON_OK);
    rows_of_send(&cc, small); /* the first Sends of each (the topic's feed row is created) */
    rows_of_send(&cc, big);
    unsigned two = rows_of_send(&cc, small), many = rows_of_send(&cc, big);
    assert_true(two > 0);
    assert_int_equal(many, two);
    assert_int_equal(two, 5); /* message, member, group, topic event, topic feed: no row per member */
    /* A MarkRead writes the reader's member row only (its event is ephemeral); one that moves
     * nothing writes nothing. */
    said(own_tok, small, "to read");
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&cc.mu);
        cc.rows = 0;
        pthread_mutex_unlock(&cc.mu);
        EXPECT(mark(mem_tok, small, 0), LAGOON_OK, NULL);
        pthread_mutex_lock(&cc.mu);
        unsigned marked = cc.rows;
        pthread_mutex_unlock(&cc.mu);
        assert_int_equal(marked, i ? 0 : 1);
    }
}

/* ---- realtime --------------------------------------------------------------------------------- */

typedef struct device {
    lagoon_client *c;
    lagoon_stream *s;
    uint64_t current_seq; /* of the user's own log, when subscribed */
} device;

static lagoon_v1_Event *EV;

static void subscribe_at(device *d, const char *token, const lagoon_v1_SubscribeRequest *req)
{
    d->c = test_client(T);
    lagoon_set_token(d->c, token);
    assert_int_equal(lagoon_Events_Subscribe(d->c, req, &d->s), LAGOON_OK);
    if (lagoon_stream_recv_timeout(d->s, EV, WAIT_MS) != 1)
        fail_msg("no subscribed event: %s", lagoon_last_error(d->c)->detail.message);
    assert_int_equal(EV->which_payload, lagoon_v1_Event_subscribed_tag);
    d->current_seq = EV->payload.subscribed.current_seq;
}

static void subscribe(device *d, const char *token)
{
    lagoon_v1_SubscribeRequest req = lagoon_v1_SubscribeRequest_init_zero;
    subscribe_at(d, token, &req);
}

static void unsubscribe(device *d)
{
    lagoon_stream_cancel(d->s);
    lagoon_close(d->c);
}

/* The next event of d (of group g's topic, or its own log), into EV. */
static void next_event(device *d, uint64_t g, pb_size_t which)
{
    int r = lagoon_stream_recv_timeout(d->s, EV, WAIT_MS);
    if (r != 1)
        fail_msg("no event (%d): %s", r, lagoon_last_error(d->c)->detail.message);
    assert_int_equal(EV->which_payload, which);
    if (g) {
        assert_true(EV->has_topic);
        assert_int_equal(EV->topic.kind, lagoon_v1_Topic_Kind_GROUP);
        assert_int_equal(EV->topic.id, g);
    }
}

static void expect_message(device *d, uint64_t g, lagoon_v1_GroupMessageEvent_Action action, uint64_t id)
{
    next_event(d, g, lagoon_v1_Event_group_message_tag);
    assert_int_equal(EV->payload.group_message.action, action);
    assert_int_equal(EV->payload.group_message.message.id, id);
}

static void test_realtime(void **state)
{
    (void)state;
    EV = calloc(1, sizeof(*EV));
    assert_non_null(EV);
    uint64_t g = group_of_three("live", PUB);
    device d;
    subscribe(&d, mem_tok);
    next_event(&d, g, lagoon_v1_Event_membership_tag);
    assert_true(EV->payload.membership.joined);
    uint64_t a = said(own_tok, g, "live one");
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_SENT, a);
    assert_string_equal(EV->payload.group_message.message.content.text.text, "live one");
    uint64_t seen = EV->seq;
    EXPECT(edit(own_tok, a, "edited"), LAGOON_OK, NULL);
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_EDITED, a);
    assert_string_equal(EV->payload.group_message.message.content.text.text, "edited");
    /* A read mark reaches the live members and is never logged: clients mark as messages
     * arrive, so logged marks would outnumber a big group's messages in its topic's log. */
    size_t logged = test_count_rows(T, &lagoon_table_topic_events);
    EXPECT(mark(adm_tok, g, 0), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_group_read_tag);
    assert_int_equal(EV->payload.group_read.reader_id, adm);
    assert_int_equal(EV->payload.group_read.up_to_message_id, a);
    assert_int_equal(EV->seq, 0);
    assert_int_equal(test_count_rows(T, &lagoon_table_topic_events), logged);
    EXPECT(mark(adm_tok, g, 0), LAGOON_OK, NULL); /* nothing moves: no second receipt (the typing next) */
    EXPECT(typing(own_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_typing_tag);
    assert_int_equal(EV->payload.typing.user_id, own);
    assert_int_equal(EV->seq, 0);
    /* One indicator a second per member and group: the next one within it is dropped (the
     * next event is the delete below); another member's is not. */
    EXPECT(typing(own_tok, g), LAGOON_OK, NULL);
    EXPECT(typing(adm_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_typing_tag);
    assert_int_equal(EV->payload.typing.user_id, adm);
    EXPECT(del(own_tok, a), LAGOON_OK, NULL);
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_DELETED, a);
    assert_int_equal(EV->payload.group_message.message.which_content, 0);
    test_clock_advance(T, GROUPCHAT_TYPING_EVERY_MS);
    EXPECT(typing(own_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_typing_tag);
    assert_int_equal(EV->payload.typing.user_id, own);
    unsubscribe(&d);
    /* A resume from the first event replays the rest: a deleted message's events as DELETED. */
    lagoon_v1_SubscribeRequest rr = lagoon_v1_SubscribeRequest_init_zero;
    rr.since = d.current_seq; /* the user's own log: nothing new there */
    rr.topics_count = 1;
    rr.topics[0].has_topic = true;
    rr.topics[0].topic.kind = lagoon_v1_Topic_Kind_GROUP;
    rr.topics[0].topic.id = g;
    rr.topics[0].seq = seen;
    subscribe_at(&d, mem_tok, &rr);
    next_event(&d, g, lagoon_v1_Event_membership_tag);
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_DELETED, a); /* its EDITED, filled now */
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_DELETED, a);
    unsubscribe(&d);
    free(EV);
}

/* Join and leave act on a live subscription; what was sent while away comes back with since. */
static void test_join_leave_live(void **state)
{
    (void)state;
    EV = calloc(1, sizeof(*EV));
    assert_non_null(EV);
    uint64_t g = group_of_three("door", PUB);
    device d;
    subscribe(&d, out_tok); /* in no group */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_membership_tag);
    assert_true(EV->payload.membership.joined);
    uint64_t a = said(own_tok, g, "welcome");
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_SENT, a);
    EXPECT(leave(out_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_membership_tag);
    assert_false(EV->payload.membership.joined);
    uint64_t b = said(own_tok, g, "while away");
    /* Nothing of the group reaches it now: its next event is a direct message to it. */
    uint64_t dm = test_send_text(C, own_tok, out, "direct");
    next_event(&d, 0, lagoon_v1_Event_message_tag);
    assert_false(EV->has_topic);
    assert_int_equal(EV->payload.message.message.id, dm);
    next_event(&d, 0, lagoon_v1_Event_notification_tag);
    /* Back in: live again, and List with since catches up on what was sent while away. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    next_event(&d, g, lagoon_v1_Event_membership_tag);
    assert_true(EV->payload.membership.joined);
    uint64_t c = said(own_tok, g, "back");
    expect_message(&d, g, lagoon_v1_GroupMessageEvent_Action_SENT, c);
    EXPECT(list(out_tok, g, 0, NULL, 0, 0, a), LAGOON_OK, NULL);
    assert_int_equal(LM.messages_count, 2);
    assert_int_equal(LM.messages[0].id, b);
    assert_int_equal(LM.messages[1].id, c);
    unsubscribe(&d);
    free(EV);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_send_list_edit_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_budget, setup_sends, teardown),
        cmocka_unit_test_setup_teardown(test_authorization_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unread_recount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unread_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mentions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_orphan_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_rows_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_realtime, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_leave_live, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
