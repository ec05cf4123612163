/* Groups end to end through the generated client against the real server and store: create,
 * read, change and delete with their access (owner, admin, member, non-member, anonymous;
 * public and private), the membership state machine (every transition allowed and refused),
 * roles, member counts and the group topic's membership, the caps, the cascades. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "groups.h"
#include "lagoon_stubs.h"
#include "testserver.h"

static test_app *T;
static lagoon_client *C;

/* own owns the groups; adm becomes an admin; mem a member; out stays outside. */
static uint64_t own, adm, mem, out;
static char own_tok[65], adm_tok[65], mem_tok[65], out_tok[65];

static lagoon_v1_Group G;
static lagoon_v1_GroupMember M;
static lagoon_v1_GroupsEmpty E;
static lagoon_v1_ListGroupMembersResponse L;
static lagoon_v1_ListGroupsResponse GL;

/* A server with tweak, and the four users. */
static int start_with(void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    T = test_app_new(tweak);
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
    return start_with(test_tweak_shared);
}

/* Users/Search with a budget of USERS_TEST_SEARCHES a minute. */
#define USERS_TEST_SEARCHES 20

static void tweak_searches(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->user_searches.max_events = USERS_TEST_SEARCHES;
}

static int setup_searches(void **state)
{
    (void)state;
    return start_with(tweak_searches);
}

static lagoon_v1_ListUsersResponse UL;

static int teardown(void **state)
{
    (void)state;
    pb_release(lagoon_v1_ListGroupMembersResponse_fields, &L);
    memset(&L, 0, sizeof(L));
    pb_release(lagoon_v1_ListGroupsResponse_fields, &GL);
    memset(&GL, 0, sizeof(GL));
    pb_release(lagoon_v1_ListUsersResponse_fields, &UL);
    memset(&UL, 0, sizeof(UL));
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* (test_has_violation, testserver.h, on this file's client) */
#define has_violation(field) test_has_violation(C, (field))

#define EXPECT(st, code, field) test_expect(C, (st), (code), (field), __LINE__)

static uint64_t create(const char *tok, const char *name, lagoon_v1_Group_Visibility vis)
{
    lagoon_v1_CreateGroupRequest r = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(r.name, sizeof(r.name), "%s", name);
    snprintf(r.description, sizeof(r.description), "about %s", name);
    r.visibility = vis;
    test_clock_advance(T, 10); /* each group its own time: the orders by time are exact */
    lagoon_set_token(C, tok);
    EXPECT(lagoon_Groups_Create(C, &r, &G), LAGOON_OK, NULL);
    return G.id;
}

static int get(const char *tok, uint64_t g)
{
    lagoon_v1_GetGroupRequest r = {g};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Get(C, &r, &G);
}

static int own_call(const char *tok, uint64_t g,
                    int (*fn)(lagoon_client *, const lagoon_v1_GroupRequest *, void *), void *resp)
{
    lagoon_v1_GroupRequest r = {g};
    lagoon_set_token(C, tok);
    return fn(C, &r, resp);
}

/* The generated stubs each have their response type; these wrap them for own_call. */
static int join_fn(lagoon_client *c, const lagoon_v1_GroupRequest *r, void *resp)
{
    return lagoon_Groups_Join(c, r, resp);
}
static int leave_fn(lagoon_client *c, const lagoon_v1_GroupRequest *r, void *resp)
{
    return lagoon_Groups_Leave(c, r, resp);
}
static int accept_fn(lagoon_client *c, const lagoon_v1_GroupRequest *r, void *resp)
{
    return lagoon_Groups_AcceptInvite(c, r, resp);
}
static int decline_fn(lagoon_client *c, const lagoon_v1_GroupRequest *r, void *resp)
{
    return lagoon_Groups_DeclineInvite(c, r, resp);
}

static int join(const char *tok, uint64_t g)
{
    test_clock_advance(T, 10); /* each join its own time: join and activity orders are exact */
    return own_call(tok, g, join_fn, &M);
}
static int leave(const char *tok, uint64_t g)
{
    return own_call(tok, g, leave_fn, &E);
}
static int accept_invite(const char *tok, uint64_t g)
{
    return own_call(tok, g, accept_fn, &M);
}
static int decline(const char *tok, uint64_t g)
{
    return own_call(tok, g, decline_fn, &E);
}

static int approve(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Approve(C, &r, &M);
}
static int reject(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Reject(C, &r, &E);
}
static int invite(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Invite(C, &r, &M);
}
static int remove_member(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_Remove(C, &r, &E);
}
static int set_role(const char *tok, uint64_t g, uint64_t u, lagoon_v1_GroupMember_Role role)
{
    lagoon_v1_SetGroupRoleRequest r = {g, u, role};
    lagoon_set_token(C, tok);
    return lagoon_Groups_SetRole(C, &r, &M);
}
static int transfer(const char *tok, uint64_t g, uint64_t u)
{
    lagoon_v1_GroupUserRequest r = {g, u};
    lagoon_set_token(C, tok);
    return lagoon_Groups_TransferOwnership(C, &r, &G);
}

static int list_members(const char *tok, uint64_t g, lagoon_v1_GroupMember_State state, uint32_t size,
                        const char *token)
{
    pb_release(lagoon_v1_ListGroupMembersResponse_fields, &L);
    memset(&L, 0, sizeof(L));
    lagoon_v1_ListGroupMembersRequest r = lagoon_v1_ListGroupMembersRequest_init_zero;
    r.group_id = g;
    r.state = state;
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    return lagoon_Groups_ListMembers(C, &r, &L);
}

/* The group's member count as stored. */
static uint32_t member_count(uint64_t g)
{
    EXPECT(get(own_tok, g), LAGOON_OK, NULL);
    return G.member_count;
}

/* Whether user is a member of group g's topic (its TopicMember row). */
static int in_topic(uint64_t g, uint64_t user)
{
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    store_key k;
    store_key_reset(&k);
    store_key_u32(&k, (uint32_t)lagoon_v1_Topic_Kind_GROUP);
    store_key_u64(&k, g);
    store_key_u64(&k, user);
    int st = store_get_by(t, &lagoon_table_topic_members, lagoon_index_topic_members_by_topic, &k, NULL, NULL, &err);
    store_read_end(t);
    assert_true(st == LAGOON_OK || st == LAGOON_NOT_FOUND);
    return st == LAGOON_OK;
}

#define PUB lagoon_v1_Group_Visibility_PUBLIC
#define PRIV lagoon_v1_Group_Visibility_PRIVATE
#define ROLE(r) lagoon_v1_GroupMember_Role_##r
#define STATE(s) lagoon_v1_GroupMember_State_##s

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_create_get_update_delete(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "Fathers who play", PUB);
    assert_int_equal(G.owner_id, own);
    assert_int_equal(G.member_count, 1);
    assert_int_equal(G.visibility, PUB);
    assert_true(G.created_at > 0 && G.last_activity_at == G.created_at);
    assert_true(in_topic(g, own));
    /* The field rules. */
    lagoon_v1_CreateGroupRequest cr = lagoon_v1_CreateGroupRequest_init_zero;
    cr.visibility = PUB;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Create(C, &cr, &G), LAGOON_INVALID_ARGUMENT, "name");
    snprintf(cr.name, sizeof(cr.name), "%0101d", 0);
    EXPECT(lagoon_Groups_Create(C, &cr, &G), LAGOON_INVALID_ARGUMENT, "name");
    snprintf(cr.name, sizeof(cr.name), "ok");
    cr.visibility = 0;
    EXPECT(lagoon_Groups_Create(C, &cr, &G), LAGOON_INVALID_ARGUMENT, "visibility");
    /* Anyone signed in reads a public group; no token is UNAUTHENTICATED. */
    EXPECT(get(out_tok, g), LAGOON_OK, NULL);
    assert_string_equal(G.name, "Fathers who play");
    EXPECT(get(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(get(out_tok, g + 1000), LAGOON_NOT_FOUND, "group_id");
    /* Update: the present fields only; owner and admins only. */
    lagoon_v1_UpdateGroupRequest ur = lagoon_v1_UpdateGroupRequest_init_zero;
    ur.group_id = g;
    ur.has_name = true;
    snprintf(ur.name, sizeof(ur.name), "Dads who play");
    lagoon_set_token(C, out_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    lagoon_set_token(C, mem_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_PERMISSION_DENIED, NULL);
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_OK, NULL);
    assert_string_equal(G.name, "Dads who play");
    assert_string_equal(G.description, "about Fathers who play");
    EXPECT(join(adm_tok, g), LAGOON_OK, NULL);
    EXPECT(set_role(own_tok, g, adm, ROLE(ADMIN)), LAGOON_OK, NULL);
    ur.has_name = false;
    ur.has_visibility = true;
    ur.visibility = PRIV;
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_OK, NULL);
    assert_int_equal(G.visibility, PRIV);
    assert_string_equal(G.name, "Dads who play");
    /* Private now: members read it, the others are told it does not exist. */
    EXPECT(get(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(get(out_tok, g), LAGOON_NOT_FOUND, "group_id");
    lagoon_set_token(C, out_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_NOT_FOUND, "group_id");
    /* Delete: the owner only; the members and the topic memberships go with it. */
    lagoon_v1_DeleteGroupRequest dr = {g};
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_PERMISSION_DENIED, NULL);
    lagoon_set_token(C, out_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_NOT_FOUND, "group_id");
    assert_int_equal(test_count_rows(T, &lagoon_table_group_members), 3);
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_OK, NULL);
    EXPECT(get(own_tok, g), LAGOON_NOT_FOUND, "group_id");
    assert_int_equal(test_count_rows(T, &lagoon_table_group_members), 0);
    assert_false(in_topic(g, own));
    assert_false(in_topic(g, adm));
    assert_false(in_topic(g, mem));
}

/* A notification's title built from a long name of wide characters is cut on a character
 * boundary (a string that is not UTF-8 would stop every client's decoding). */
static void test_notification_titles_stay_utf8(void **state)
{
    (void)state;
    char name[401];
    for (int i = 0; i < 100; i++) /* 100 euro signs: 300 bytes */
        memcpy(name + 3 * i, "\xe2\x82\xac", 3);
    name[300] = '\0';
    uint64_t g = create(own_tok, name, PRIV);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL); /* a request: the owner is notified */
    lagoon_set_token(C, own_tok);
    lagoon_v1_ListNotificationsRequest r = lagoon_v1_ListNotificationsRequest_init_zero;
    lagoon_v1_ListNotificationsResponse resp;
    memset(&resp, 0, sizeof(resp));
    assert_int_equal(lagoon_Notifications_List(C, &r, &resp), LAGOON_OK);
    assert_true(resp.notifications_count >= 1);
    const char *title = resp.notifications[0].title;
    size_t n = strlen(title);
    assert_true(n > 0);
    /* Whole characters only: every lead byte has all its continuation bytes. */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)title[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        assert_true(i + len <= n);
        i += len;
    }
    pb_release(lagoon_v1_ListNotificationsResponse_fields, &resp);
}

static void test_owned_cap(void **state)
{
    (void)state;
    for (int i = 0; i < GROUPS_OWNED_MAX; i++) {
        char name[32];
        snprintf(name, sizeof(name), "group %d", i);
        create(own_tok, name, i % 2 ? PUB : PRIV);
    }
    lagoon_v1_CreateGroupRequest cr = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(cr.name, sizeof(cr.name), "one too many");
    cr.visibility = PUB;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Create(C, &cr, &G), LAGOON_RESOURCE_EXHAUSTED, NULL);
    /* Another user is not counted with them. */
    create(out_tok, "mine", PUB);
    /* A transfer to a user at the cap is refused too. */
    uint64_t g = G.id;
    EXPECT(join(own_tok, g), LAGOON_OK, NULL);
    EXPECT(transfer(out_tok, g, own), LAGOON_RESOURCE_EXHAUSTED, NULL);
}

/* Sets group *arg's member_count to GROUPS_MEMBERS_MAX - 1 in the store, as if that many had
 * joined (10 000 accounts are too slow to make here). */
static int nearly_full(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_Group *g = malloc(sizeof(*g));
    if (g == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_groups, *(const uint64_t *)arg, g, err);
    if (st == LAGOON_OK) {
        g->member_count = GROUPS_MEMBERS_MAX - 1;
        st = store_update(t, &lagoon_table_groups, g, err);
    }
    free(g);
    return st;
}

static void test_members_cap(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "full", PUB);
    uint64_t p = create(own_tok, "full too", PRIV);
    store_error err;
    assert_int_equal(store_write(T->app->db, nearly_full, &g, &err), LAGOON_OK);
    assert_int_equal(store_write(T->app->db, nearly_full, &p, &err), LAGOON_OK);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(member_count(g), GROUPS_MEMBERS_MAX);
    EXPECT(join(out_tok, g), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_false(in_topic(g, out));
    /* Every way in is refused at the cap: approval, an accepted invitation, inviting a requester. */
    EXPECT(join(mem_tok, p), LAGOON_OK, NULL);
    EXPECT(invite(own_tok, p, out), LAGOON_OK, NULL);
    EXPECT(approve(own_tok, p, mem), LAGOON_OK, NULL);
    EXPECT(accept_invite(out_tok, p), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(leave(mem_tok, g), LAGOON_OK, NULL); /* (another group: no room made in p) */
    EXPECT(leave(mem_tok, p), LAGOON_OK, NULL);
    EXPECT(accept_invite(out_tok, p), LAGOON_OK, NULL);
    assert_int_equal(member_count(p), GROUPS_MEMBERS_MAX);
    EXPECT(join(adm_tok, p), LAGOON_OK, NULL);
    EXPECT(approve(own_tok, p, adm), LAGOON_RESOURCE_EXHAUSTED, NULL);
    EXPECT(invite(own_tok, p, adm), LAGOON_RESOURCE_EXHAUSTED, NULL);
}

static void test_public_join_leave(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "open", PUB);
    EXPECT(join(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    assert_int_equal(M.role, ROLE(MEMBER));
    assert_int_equal(member_count(g), 2);
    assert_true(in_topic(g, mem));
    EXPECT(join(mem_tok, g), LAGOON_ALREADY_EXISTS, "group_id");
    EXPECT(join(mem_tok, g + 1000), LAGOON_NOT_FOUND, "group_id");
    /* The owner must transfer first. */
    EXPECT(leave(own_tok, g), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(leave(out_tok, g), LAGOON_NOT_FOUND, "group_id");
    EXPECT(leave(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(member_count(g), 1);
    assert_false(in_topic(g, mem));
    EXPECT(leave(mem_tok, g), LAGOON_NOT_FOUND, "group_id");
    /* Invitations and requests do not apply to a member. */
    EXPECT(accept_invite(own_tok, g), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(decline(own_tok, g), LAGOON_FAILED_PRECONDITION, NULL);
}

static void test_private_request_approve_reject(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "closed", PRIV);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(REQUESTED));
    assert_int_equal(member_count(g), 1);
    assert_false(in_topic(g, mem));
    EXPECT(get(mem_tok, g), LAGOON_NOT_FOUND, "group_id"); /* a request does not show it */
    EXPECT(join(mem_tok, g), LAGOON_ALREADY_EXISTS, "group_id");
    /* Only admins decide; a non-member is told there is no such group. */
    EXPECT(approve(out_tok, g, mem), LAGOON_NOT_FOUND, "group_id");
    EXPECT(approve(own_tok, g, out), LAGOON_NOT_FOUND, "user_id");
    EXPECT(approve(own_tok, g, mem), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    assert_int_equal(member_count(g), 2);
    assert_true(in_topic(g, mem));
    EXPECT(approve(own_tok, g, mem), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(reject(own_tok, g, mem), LAGOON_FAILED_PRECONDITION, NULL);
    /* A member who is not an admin cannot decide on requests. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    EXPECT(approve(mem_tok, g, out), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(reject(mem_tok, g, out), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(reject(own_tok, g, out), LAGOON_OK, NULL);
    EXPECT(approve(own_tok, g, out), LAGOON_NOT_FOUND, "user_id");
    assert_int_equal(member_count(g), 2);
    /* Asking again after a rejection, then withdrawing with Leave. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    EXPECT(leave(out_tok, g), LAGOON_OK, NULL);
    EXPECT(approve(own_tok, g, out), LAGOON_NOT_FOUND, "user_id");
    assert_int_equal(member_count(g), 2);
}

static void test_invite_accept_decline(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "band", PRIV);
    EXPECT(invite(own_tok, g, own), LAGOON_INVALID_ARGUMENT, "user_id");
    EXPECT(invite(own_tok, g, out + 1000), LAGOON_NOT_FOUND, "user_id");
    EXPECT(invite(out_tok, g, mem), LAGOON_NOT_FOUND, "group_id");
    EXPECT(invite(own_tok, g, mem), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(INVITED));
    assert_int_equal(M.invited_by, own);
    EXPECT(invite(own_tok, g, mem), LAGOON_ALREADY_EXISTS, "user_id");
    /* The invitee sees the group, and only the invitee answers. */
    EXPECT(get(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(accept_invite(out_tok, g), LAGOON_NOT_FOUND, "group_id");
    EXPECT(decline(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(get(mem_tok, g), LAGOON_NOT_FOUND, "group_id");
    EXPECT(accept_invite(mem_tok, g), LAGOON_NOT_FOUND, "group_id");
    EXPECT(invite(own_tok, g, mem), LAGOON_OK, NULL);
    EXPECT(accept_invite(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    assert_int_equal(member_count(g), 2);
    assert_true(in_topic(g, mem));
    EXPECT(accept_invite(mem_tok, g), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(invite(own_tok, g, mem), LAGOON_ALREADY_EXISTS, "user_id");
    /* A member who is not an admin cannot invite. */
    EXPECT(invite(mem_tok, g, out), LAGOON_PERMISSION_DENIED, NULL);
    /* Inviting a user who asked approves the request; joining when invited accepts. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    EXPECT(invite(own_tok, g, out), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    EXPECT(invite(own_tok, g, adm), LAGOON_OK, NULL);
    EXPECT(join(adm_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    assert_int_equal(member_count(g), 4);
}

static void test_roles_remove_transfer(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "roles", PUB);
    EXPECT(join(adm_tok, g), LAGOON_OK, NULL);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    /* SetRole: the owner makes admins; members and admins cannot. */
    EXPECT(set_role(mem_tok, g, adm, ROLE(ADMIN)), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_role(own_tok, g, adm, ROLE(OWNER)), LAGOON_INVALID_ARGUMENT, "role");
    EXPECT(set_role(own_tok, g, own, ROLE(ADMIN)), LAGOON_INVALID_ARGUMENT, "user_id");
    EXPECT(set_role(own_tok, g, adm, ROLE(ADMIN)), LAGOON_OK, NULL);
    assert_int_equal(M.role, ROLE(ADMIN));
    EXPECT(set_role(adm_tok, g, own, ROLE(MEMBER)), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_role(adm_tok, g, mem, ROLE(MEMBER)), LAGOON_OK, NULL);
    /* An admin changes members' roles only: makes a member an admin, never unmakes one. */
    EXPECT(set_role(adm_tok, g, mem, ROLE(ADMIN)), LAGOON_OK, NULL);
    assert_int_equal(M.role, ROLE(ADMIN));
    EXPECT(set_role(adm_tok, g, mem, ROLE(MEMBER)), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_role(mem_tok, g, adm, ROLE(MEMBER)), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(set_role(own_tok, g, mem, ROLE(MEMBER)), LAGOON_OK, NULL);
    assert_int_equal(M.role, ROLE(MEMBER));
    EXPECT(set_role(own_tok, g, out + 1000, ROLE(ADMIN)), LAGOON_NOT_FOUND, "user_id");
    /* Remove: admins remove members, only the owner removes admins, no one the owner. */
    EXPECT(remove_member(mem_tok, g, out), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(remove_member(adm_tok, g, own), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(remove_member(adm_tok, g, adm), LAGOON_INVALID_ARGUMENT, "user_id");
    EXPECT(remove_member(adm_tok, g, out), LAGOON_OK, NULL);
    assert_false(in_topic(g, out));
    assert_int_equal(member_count(g), 3);
    EXPECT(remove_member(adm_tok, g, out), LAGOON_NOT_FOUND, "user_id");
    EXPECT(set_role(own_tok, g, mem, ROLE(ADMIN)), LAGOON_OK, NULL);
    EXPECT(remove_member(adm_tok, g, mem), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(remove_member(own_tok, g, mem), LAGOON_OK, NULL);
    assert_int_equal(member_count(g), 2);
    /* Transfer: the owner to an active member only; then the old owner may leave. */
    EXPECT(transfer(adm_tok, g, adm), LAGOON_INVALID_ARGUMENT, "user_id");
    EXPECT(transfer(adm_tok, g, own), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(transfer(own_tok, g, mem), LAGOON_NOT_FOUND, "user_id");
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(transfer(own_tok, g, adm), LAGOON_OK, NULL);
    assert_int_equal(G.owner_id, adm);
    EXPECT(get(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(G.owner_id, adm);
    EXPECT(leave(adm_tok, g), LAGOON_FAILED_PRECONDITION, NULL);
    EXPECT(remove_member(own_tok, g, adm), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(leave(own_tok, g), LAGOON_OK, NULL);
    assert_int_equal(member_count(g) , 2);
    lagoon_v1_DeleteGroupRequest dr = {g};
    lagoon_set_token(C, adm_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_OK, NULL);
}

static void test_list_members(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "list", PRIV);
    EXPECT(invite(own_tok, g, adm), LAGOON_OK, NULL);
    EXPECT(accept_invite(adm_tok, g), LAGOON_OK, NULL);
    EXPECT(invite(own_tok, g, mem), LAGOON_OK, NULL);
    EXPECT(accept_invite(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(set_role(own_tok, g, mem, ROLE(ADMIN)), LAGOON_OK, NULL);
    EXPECT(join(out_tok, g), LAGOON_OK, NULL); /* a request */
    /* By role, then join time: the owner, the admin mem, then the member adm... */
    EXPECT(list_members(mem_tok, g, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 3);
    assert_int_equal(L.members[0].user_id, own);
    assert_int_equal(L.members[1].user_id, mem);
    assert_int_equal(L.members[2].user_id, adm);
    /* ...in cursor pages, each once. */
    EXPECT(list_members(adm_tok, g, 0, 2, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 2);
    char token[801];
    snprintf(token, sizeof(token), "%s", L.next_page_token);
    assert_true(token[0] != '\0');
    EXPECT(list_members(adm_tok, g, 0, 2, token), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 1);
    assert_int_equal(L.members[0].user_id, adm);
    assert_string_equal(L.next_page_token, "");
    EXPECT(list_members(adm_tok, g, 0, 201, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    /* Requests: admins only; the private group is hidden from the requester. */
    EXPECT(list_members(adm_tok, g, STATE(REQUESTED), 0, NULL), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(list_members(mem_tok, g, STATE(REQUESTED), 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 1);
    assert_int_equal(L.members[0].user_id, out);
    EXPECT(list_members(out_tok, g, 0, 0, NULL), LAGOON_NOT_FOUND, "group_id");
    EXPECT(list_members(NULL, g, 0, 0, NULL), LAGOON_UNAUTHENTICATED, NULL);
}

static int list_public(const char *tok, const char *prefix, uint32_t size, const char *token)
{
    pb_release(lagoon_v1_ListGroupsResponse_fields, &GL);
    memset(&GL, 0, sizeof(GL));
    lagoon_v1_ListPublicGroupsRequest r = lagoon_v1_ListPublicGroupsRequest_init_zero;
    snprintf(r.name_prefix, sizeof(r.name_prefix), "%s", prefix ? prefix : "");
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    return lagoon_Groups_ListPublic(C, &r, &GL);
}

static int list_mine(const char *tok)
{
    pb_release(lagoon_v1_ListGroupsResponse_fields, &GL);
    memset(&GL, 0, sizeof(GL));
    lagoon_v1_ListMyGroupsRequest r = lagoon_v1_ListMyGroupsRequest_init_zero;
    lagoon_set_token(C, tok);
    return lagoon_Groups_ListMine(C, &r, &GL);
}

static void test_list_public_and_mine(void **state)
{
    (void)state;
    uint64_t a = create(own_tok, "Jazz Dads", PUB);
    uint64_t b = create(own_tok, "jazz kids", PUB);
    uint64_t hidden = create(own_tok, "Jazz secret", PRIV);
    uint64_t c = create(adm_tok, "Choir", PUB);
    /* Newest first, private groups left out, in cursor pages. */
    EXPECT(list_public(out_tok, NULL, 2, NULL), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 2);
    assert_int_equal(GL.groups[0].id, c);
    assert_int_equal(GL.groups[1].id, b);
    char token[801];
    snprintf(token, sizeof(token), "%s", GL.next_page_token);
    EXPECT(list_public(out_tok, NULL, 2, token), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 1);
    assert_int_equal(GL.groups[0].id, a);
    /* By name prefix, ignoring case, in name order. */
    EXPECT(list_public(out_tok, "JAZZ", 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 2);
    assert_int_equal(GL.groups[0].id, a);
    assert_int_equal(GL.groups[1].id, b);
    EXPECT(list_public(out_tok, "jazz k", 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 1);
    assert_int_equal(GL.groups[0].id, b);
    EXPECT(list_public(out_tok, "x", 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 0);
    EXPECT(list_public(out_tok, NULL, 129, NULL), LAGOON_INVALID_ARGUMENT, "page_size");
    EXPECT(list_public(NULL, NULL, 0, NULL), LAGOON_UNAUTHENTICATED, NULL);
    /* A group made private leaves both lists; renamed, it moves in the name order. */
    lagoon_v1_UpdateGroupRequest ur = lagoon_v1_UpdateGroupRequest_init_zero;
    ur.group_id = a;
    ur.has_visibility = true;
    ur.visibility = PRIV;
    test_clock_advance(T, 10);
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_OK, NULL);
    EXPECT(list_public(out_tok, "jazz", 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 1);
    assert_int_equal(GL.groups[0].id, b);
    /* Mine: the ACTIVE memberships, by last activity (a join is activity). */
    EXPECT(join(mem_tok, c), LAGOON_OK, NULL);
    EXPECT(list_mine(own_tok), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 3);
    assert_int_equal(GL.groups[0].id, a); /* updated last */
    assert_int_equal(GL.groups[1].id, hidden);
    assert_int_equal(GL.groups[2].id, b);
    EXPECT(join(mem_tok, b), LAGOON_OK, NULL);
    EXPECT(invite(own_tok, hidden, mem), LAGOON_OK, NULL); /* not a membership yet */
    EXPECT(list_mine(mem_tok), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 2);
    assert_int_equal(GL.groups[0].id, b);
    assert_int_equal(GL.groups[1].id, c);
    EXPECT(list_mine(out_tok), LAGOON_OK, NULL);
    assert_int_equal(GL.groups_count, 0);
}

/* The notifications of user of type, as stored. */
typedef struct note_arg {
    uint64_t user;
    lagoon_v1_Notification_Type type;
    size_t n;
} note_arg;

static int note_cb(void *arg, uint64_t id, const void *row)
{
    (void)id;
    note_arg *a = arg;
    const lagoon_v1_Notification *n = row;
    if (n->user_id == a->user && n->type == a->type)
        a->n++;
    return LAGOON_OK;
}

static size_t notes(uint64_t user, lagoon_v1_Notification_Type type)
{
    note_arg a = {user, type, 0};
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int pages = 0; pages < 1000; pages++) {
        store_query q = {.table = &lagoon_table_notifications, .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        store_page page;
        assert_int_equal(store_scan(t, &q, note_cb, &a, &page, &err), LAGOON_OK);
        memcpy(token, page.next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    store_read_end(t);
    return a.n;
}

static int set_muted(const char *tok, uint64_t g, int muted)
{
    lagoon_v1_SetGroupMutedRequest r = {g, muted};
    lagoon_set_token(C, tok);
    return lagoon_Groups_SetMuted(C, &r, &M);
}

#define NT(x) lagoon_v1_Notification_Type_GROUP_##x

static void test_notifications_and_mute(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "notes", PRIV);
    EXPECT(invite(own_tok, g, adm), LAGOON_OK, NULL);
    assert_int_equal(notes(adm, NT(INVITATION)), 1);
    EXPECT(accept_invite(adm_tok, g), LAGOON_OK, NULL);
    EXPECT(set_role(own_tok, g, adm, ROLE(ADMIN)), LAGOON_OK, NULL);
    assert_int_equal(notes(adm, NT(ROLE_CHANGED)), 1);
    /* A request reaches the owner and the admins, but not a muted one. */
    EXPECT(set_muted(out_tok, g, 1), LAGOON_NOT_FOUND, "group_id");
    EXPECT(set_muted(adm_tok, g, 1), LAGOON_OK, NULL);
    assert_true(M.muted);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(notes(own, NT(JOIN_REQUEST)), 1);
    assert_int_equal(notes(adm, NT(JOIN_REQUEST)), 0);
    EXPECT(set_muted(mem_tok, g, 1), LAGOON_FAILED_PRECONDITION, NULL); /* only members */
    EXPECT(approve(own_tok, g, mem), LAGOON_OK, NULL);
    assert_int_equal(notes(mem, NT(REQUEST_APPROVED)), 1);
    /* Role changes and removal reach the member unless muted. */
    EXPECT(set_role(own_tok, g, adm, ROLE(MEMBER)), LAGOON_OK, NULL);
    assert_int_equal(notes(adm, NT(ROLE_CHANGED)), 1);
    EXPECT(set_muted(adm_tok, g, 0), LAGOON_OK, NULL);
    assert_false(M.muted);
    EXPECT(set_role(own_tok, g, adm, ROLE(ADMIN)), LAGOON_OK, NULL);
    assert_int_equal(notes(adm, NT(ROLE_CHANGED)), 2);
    EXPECT(remove_member(adm_tok, g, mem), LAGOON_OK, NULL);
    assert_int_equal(notes(mem, NT(REMOVED)), 1);
    /* A rejected request, and a request to a public group (joined at once), tell no one. */
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    assert_int_equal(notes(own, NT(JOIN_REQUEST)), 2);
    assert_int_equal(notes(adm, NT(JOIN_REQUEST)), 1);
    EXPECT(reject(own_tok, g, out), LAGOON_OK, NULL);
    assert_int_equal(notes(out, NT(REQUEST_APPROVED)), 0);
    assert_int_equal(notes(out, NT(REMOVED)), 0);
}

/* ---- the pending caps and the Join/Invite budget -------------------------------------------- */

/* What seed_pending inserts: n users (seeded straight into the store: hundreds of accounts
 * through Register are too slow here), each with a row of `state` in group g, or, with g 0,
 * n groups of owner `owner` each with a row of `state` for user `user`. */
typedef struct seed {
    uint64_t g, owner, user;
    lagoon_v1_GroupMember_State state;
    uint32_t n;
    int base;
} seed;

static int seed_pending(store_txn *t, void *arg, store_error *err)
{
    const seed *sd = arg;
    lagoon_v1_User *u = calloc(1, sizeof(*u));
    lagoon_v1_Group *g = calloc(1, sizeof(*g));
    if (u == NULL || g == NULL) {
        free(u);
        free(g);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = LAGOON_OK;
    for (uint32_t i = 0; i < sd->n && st == LAGOON_OK; i++) {
        lagoon_v1_GroupMember m = lagoon_v1_GroupMember_init_zero;
        m.role = ROLE(MEMBER);
        m.state = sd->state;
        if (sd->g) {
            memset(u, 0, sizeof(*u));
            snprintf(u->username, sizeof(u->username), "seed%d_%u", sd->base, i);
            snprintf(u->email, sizeof(u->email), "seed%d_%u@example.com", sd->base, i);
            u->active = true;
            st = store_insert(t, &lagoon_table_users, u, NULL, err);
            m.group_id = sd->g;
            m.user_id = u->id;
        } else {
            memset(g, 0, sizeof(*g));
            snprintf(g->name, sizeof(g->name), "seeded %d %u", sd->base, i);
            g->owner_id = sd->owner;
            g->visibility = PRIV;
            g->member_count = 1;
            st = store_insert(t, &lagoon_table_groups, g, NULL, err);
            m.group_id = g->id;
            m.user_id = sd->user;
        }
        if (st == LAGOON_OK)
            st = store_insert(t, &lagoon_table_group_members, &m, NULL, err);
    }
    free(u);
    free(g);
    return st;
}

static void seed_rows(uint64_t g, uint64_t owner, uint64_t user, lagoon_v1_GroupMember_State state, uint32_t n, int base)
{
    seed sd = {g, owner, user, state, n, base};
    store_error err;
    assert_int_equal(store_write(T->app->db, seed_pending, &sd, &err), LAGOON_OK);
}

/* A group's waiting requests and invitations, and a user's, are capped: past each cap Join or
 * Invite is RESOURCE_EXHAUSTED and stores nothing, and a decision makes room. */
static void test_pending_caps(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "wanted", PRIV);
    seed_rows(g, 0, 0, STATE(REQUESTED), GROUPS_PENDING_REQUESTS_MAX - 1, 1);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL); /* the last place */
    assert_int_equal(M.state, STATE(REQUESTED));
    EXPECT(join(out_tok, g), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "join requests waiting"));
    EXPECT(reject(own_tok, g, mem), LAGOON_OK, NULL);
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    /* Invitations per group. */
    uint64_t h = create(own_tok, "inviting", PRIV);
    seed_rows(h, 0, 0, STATE(INVITED), GROUPS_PENDING_INVITATIONS_MAX, 2);
    EXPECT(invite(own_tok, h, mem), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "invitations waiting"));
    /* Admins make room by withdrawing an invitation (Remove); a member cannot. */
    EXPECT(list_members(own_tok, h, STATE(INVITED), 1, NULL), LAGOON_OK, NULL);
    uint64_t unanswered = L.members[0].user_id;
    EXPECT(remove_member(mem_tok, h, unanswered), LAGOON_NOT_FOUND, "group_id");
    EXPECT(remove_member(own_tok, h, unanswered), LAGOON_OK, NULL);
    EXPECT(remove_member(own_tok, h, unanswered), LAGOON_NOT_FOUND, "user_id");
    EXPECT(invite(own_tok, h, mem), LAGOON_OK, NULL);
    EXPECT(remove_member(own_tok, h, mem), LAGOON_OK, NULL);
    EXPECT(get(mem_tok, h), LAGOON_NOT_FOUND, "group_id"); /* the invitation showed it */
    EXPECT(accept_invite(mem_tok, h), LAGOON_NOT_FOUND, "group_id");
    /* Invitations per invitee, from every group together. */
    uint64_t k = create(own_tok, "one more", PRIV);
    seed_rows(0, adm, mem, STATE(INVITED), GROUPS_USER_INVITATIONS_MAX, 3);
    EXPECT(invite(own_tok, k, mem), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "the user has"));
    EXPECT(invite(own_tok, k, adm), LAGOON_OK, NULL);
    /* Requests per requester. */
    seed_rows(0, adm, out, STATE(REQUESTED), GROUPS_USER_REQUESTS_MAX - 1, 4); /* and g's */
    EXPECT(join(out_tok, k), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_non_null(strstr(lagoon_last_error(C)->detail.message, "you have"));
    EXPECT(list_members(own_tok, k, STATE(REQUESTED), 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 0);
}

/* Join and Invite count against the caller's hourly budget; refused calls do not. */
#define GROUPS_TEST_REQUESTS 6

static void tweak_requests(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->group_requests.max_events = GROUPS_TEST_REQUESTS;
}

static int setup_requests(void **state)
{
    (void)state;
    return start_with(tweak_requests);
}

static void test_request_budget(void **state)
{
    (void)state;
    uint64_t g[GROUPS_TEST_REQUESTS + 1];
    for (int i = 0; i <= GROUPS_TEST_REQUESTS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "private %d", i);
        g[i] = create(adm_tok, name, PRIV);
    }
    /* Refused calls are given back: a second request to the same group, an unknown group. */
    EXPECT(join(mem_tok, g[0]), LAGOON_OK, NULL);
    for (int i = 0; i < GROUPS_TEST_REQUESTS + 2; i++)
        EXPECT(join(mem_tok, g[0]), LAGOON_ALREADY_EXISTS, "group_id");
    EXPECT(join(mem_tok, g[0] + 1000), LAGOON_NOT_FOUND, "group_id");
    for (int i = 1; i < GROUPS_TEST_REQUESTS; i++)
        EXPECT(join(mem_tok, g[i]), LAGOON_OK, NULL);
    EXPECT(join(mem_tok, g[GROUPS_TEST_REQUESTS]), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    /* Invite shares the budget; another user's is its own; an hour later it is back. */
    for (int i = 0; i < GROUPS_TEST_REQUESTS; i++)
        EXPECT(invite(adm_tok, g[i], out), LAGOON_OK, NULL);
    EXPECT(invite(adm_tok, g[GROUPS_TEST_REQUESTS], out), LAGOON_RESOURCE_EXHAUSTED, NULL);
    test_clock_advance(T, 3601 * 1000);
    EXPECT(join(mem_tok, g[GROUPS_TEST_REQUESTS]), LAGOON_OK, NULL);
    EXPECT(invite(adm_tok, g[GROUPS_TEST_REQUESTS], out), LAGOON_OK, NULL);
}

/* A request to a private group made public since: the requester's Join makes it a member (as
 * any Join of a public group), and an admin may still approve the others. */
static void test_request_then_public(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "opening", PRIV);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(join(out_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(REQUESTED));
    lagoon_v1_UpdateGroupRequest ur = lagoon_v1_UpdateGroupRequest_init_zero;
    ur.group_id = g;
    ur.has_visibility = true;
    ur.visibility = PUB;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_OK, NULL);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    assert_int_equal(M.state, STATE(ACTIVE));
    assert_true(in_topic(g, mem));
    EXPECT(join(mem_tok, g), LAGOON_ALREADY_EXISTS, "group_id");
    EXPECT(approve(own_tok, g, out), LAGOON_OK, NULL);
    assert_int_equal(member_count(g), 3);
    EXPECT(list_members(own_tok, g, STATE(REQUESTED), 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 0);
}

static int search(const char *tok, const char *query, uint32_t size, const char *token)
{
    pb_release(lagoon_v1_ListUsersResponse_fields, &UL);
    memset(&UL, 0, sizeof(UL));
    lagoon_v1_SearchUsersRequest r = lagoon_v1_SearchUsersRequest_init_zero;
    snprintf(r.query, sizeof(r.query), "%s", query);
    r.page_size = size;
    snprintf(r.page_token, sizeof(r.page_token), "%s", token ? token : "");
    lagoon_set_token(C, tok);
    return lagoon_Users_Search(C, &r, &UL);
}

static void test_users_search(void **state)
{
    (void)state;
    char root_tok[65];
    test_admin_user(T, C, "root", root_tok);
    lagoon_v1_UpdateProfileRequest pr = lagoon_v1_UpdateProfileRequest_init_zero;
    pr.has_full_name = true;
    snprintf(pr.full_name, sizeof(pr.full_name), "Otto Memling");
    lagoon_v1_UserProfile prof;
    lagoon_set_token(C, out_tok);
    EXPECT(lagoon_Users_UpdateProfile(C, &pr, &prof), LAGOON_OK, NULL);
    int used = 0;
    /* A username prefix, or a word of the full name, ignoring case; username order. */
    EXPECT(search(own_tok, "MEM", 0, NULL), LAGOON_OK, NULL);
    used++;
    assert_int_equal(UL.users_count, 2);
    assert_int_equal(UL.users[0].id, mem);
    assert_int_equal(UL.users[1].id, out); /* "Memling" */
    assert_string_equal(UL.users[1].full_name, "Otto Memling");
    EXPECT(search(own_tok, "otto m", 0, NULL), LAGOON_OK, NULL);
    used++;
    assert_int_equal(UL.users_count, 1);
    assert_int_equal(UL.users[0].id, out);
    /* Cursor pages: each user once. */
    EXPECT(search(own_tok, "o", 1, NULL), LAGOON_OK, NULL);
    used++;
    size_t seen = UL.users_count;
    char token[801];
    snprintf(token, sizeof(token), "%s", UL.next_page_token);
    for (int i = 0; i < 10 && token[0]; i++) {
        EXPECT(search(own_tok, "o", 1, token), LAGOON_OK, NULL);
        used++;
        seen += UL.users_count;
        snprintf(token, sizeof(token), "%s", UL.next_page_token);
    }
    assert_int_equal(seen, 2); /* own and out ("Otto"); root's username starts with r */
    /* A deactivated account is not found. */
    lagoon_v1_SetActiveRequest ar = {mem, false};
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_Users_SetActive(C, &ar, &prof), LAGOON_OK, NULL);
    EXPECT(search(own_tok, "mem", 0, NULL), LAGOON_OK, NULL);
    used++;
    assert_int_equal(UL.users_count, 1);
    assert_int_equal(UL.users[0].id, out);
    /* The rules, and no token (neither counts). */
    EXPECT(search(own_tok, "", 0, NULL), LAGOON_INVALID_ARGUMENT, "query");
    EXPECT(search(NULL, "mem", 0, NULL), LAGOON_UNAUTHENTICATED, NULL);
    /* The budget: the rest of the minute's searches, then RESOURCE_EXHAUSTED with a retry. */
    assert_true(used < USERS_TEST_SEARCHES);
    for (; used < USERS_TEST_SEARCHES; used++)
        EXPECT(search(own_tok, "a", 0, NULL), LAGOON_OK, NULL);
    EXPECT(search(own_tok, "a", 0, NULL), LAGOON_RESOURCE_EXHAUSTED, NULL);
    assert_true(lagoon_last_error(C)->detail.retry_after_ms > 0);
    EXPECT(search(adm_tok, "a", 0, NULL), LAGOON_OK, NULL); /* another user's budget */
    test_clock_advance(T, 61 * 1000);
    EXPECT(search(own_tok, "a", 0, NULL), LAGOON_OK, NULL);
}

/* Every method without a token is UNAUTHENTICATED; a site administrator reads a private group
 * and may delete it, but acts in it only as what its row makes it. */
static void test_anonymous_and_site_admin(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "hidden", PRIV);
    lagoon_v1_GroupUserRequest ur = {g, mem};
    lagoon_v1_GetGroupRequest gr = {g};
    lagoon_v1_UpdateGroupRequest upr = lagoon_v1_UpdateGroupRequest_init_zero;
    upr.group_id = g;
    lagoon_v1_DeleteGroupRequest dr = {g};
    lagoon_v1_CreateGroupRequest cr = lagoon_v1_CreateGroupRequest_init_zero;
    snprintf(cr.name, sizeof(cr.name), "x");
    cr.visibility = PUB;
    lagoon_v1_SetGroupRoleRequest sr = {g, mem, ROLE(ADMIN)};
    lagoon_v1_SetGroupMutedRequest mr = {g, true};
    lagoon_v1_ListGroupMembersRequest lr = lagoon_v1_ListGroupMembersRequest_init_zero;
    lr.group_id = g;
    lagoon_v1_ListPublicGroupsRequest pr = lagoon_v1_ListPublicGroupsRequest_init_zero;
    lagoon_v1_ListMyGroupsRequest myr = lagoon_v1_ListMyGroupsRequest_init_zero;
    lagoon_set_token(C, NULL);
    EXPECT(lagoon_Groups_Create(C, &cr, &G), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Get(C, &gr, &G), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Update(C, &upr, &G), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(join(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(leave(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(accept_invite(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(decline(NULL, g), LAGOON_UNAUTHENTICATED, NULL);
    lagoon_set_token(C, NULL);
    EXPECT(lagoon_Groups_Approve(C, &ur, &M), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Reject(C, &ur, &E), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Invite(C, &ur, &M), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_Remove(C, &ur, &E), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_SetRole(C, &sr, &M), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_TransferOwnership(C, &ur, &G), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_SetMuted(C, &mr, &M), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_ListMembers(C, &lr, &L), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_ListPublic(C, &pr, &GL), LAGOON_UNAUTHENTICATED, NULL);
    EXPECT(lagoon_Groups_ListMine(C, &myr, &GL), LAGOON_UNAUTHENTICATED, NULL);
    /* The site administrator. */
    char root_tok[65];
    test_admin_user(T, C, "root", root_tok);
    EXPECT(get(root_tok, g), LAGOON_OK, NULL);
    EXPECT(invite(root_tok, g, mem), LAGOON_PERMISSION_DENIED, NULL);
    EXPECT(list_members(root_tok, g, 0, 0, NULL), LAGOON_OK, NULL);
    assert_int_equal(L.members_count, 1);
    lagoon_set_token(C, root_tok);
    EXPECT(lagoon_Groups_Delete(C, &dr, &E), LAGOON_OK, NULL);
    EXPECT(get(own_tok, g), LAGOON_NOT_FOUND, "group_id");
}

static void test_cascades(void **state)
{
    (void)state;
    uint64_t g = create(own_tok, "cascade", PUB);
    uint64_t g2 = create(mem_tok, "another", PUB);
    EXPECT(join(mem_tok, g), LAGOON_OK, NULL);
    EXPECT(join(own_tok, g2), LAGOON_OK, NULL);
    assert_int_equal(test_count_rows(T, &lagoon_table_group_members), 4);
    /* An admin's kept Update response must not outlive the group. */
    EXPECT(set_role(own_tok, g, mem, ROLE(ADMIN)), LAGOON_OK, NULL);
    lagoon_v1_UpdateGroupRequest ur = lagoon_v1_UpdateGroupRequest_init_zero;
    ur.group_id = g;
    ur.has_description = true;
    snprintf(ur.description, sizeof(ur.description), "kept");
    lagoon_set_token(C, mem_tok);
    lagoon_set_idempotency_key(C, "update-once");
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_OK, NULL);
    /* A deleted owner takes its groups and their members; its memberships elsewhere go. */
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty ue;
    lagoon_set_token(C, own_tok);
    EXPECT(lagoon_Users_DeleteAccount(C, &dr, &ue), LAGOON_OK, NULL);
    EXPECT(get(mem_tok, g), LAGOON_NOT_FOUND, "group_id");
    EXPECT(get(mem_tok, g2), LAGOON_OK, NULL);
    assert_int_equal(G.member_count, 1); /* own counted out */
    assert_int_equal(test_count_rows(T, &lagoon_table_group_members), 1);
    assert_false(in_topic(g, mem));
    lagoon_set_token(C, mem_tok);
    lagoon_set_idempotency_key(C, "update-once");
    EXPECT(lagoon_Groups_Update(C, &ur, &G), LAGOON_NOT_FOUND, "group_id");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_get_update_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notification_titles_stay_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owned_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_members_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_public_join_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_private_request_approve_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invite_accept_decline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roles_remove_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_members, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_public_and_mine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notifications_and_mute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anonymous_and_site_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users_search, setup_searches, teardown),
        cmocka_unit_test_setup_teardown(test_pending_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_budget, setup_requests, teardown),
        cmocka_unit_test_setup_teardown(test_request_then_public, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
