/* Users service: profiles, the teacher list, password change, account deletion, and the
 * administrators' role and activation switches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "accounts.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "log.h"
#include "media_files.h"
#include "paging.h"
#include "teaching.h"
#include "threads.h"
#include "users.h"
#include "videos.h"

/* ---- reads ---------------------------------------------------------------------------------- */

/* Reads user id into a heap row (rows are a few KiB: not for a loop thread's stack). */
static lagoon_v1_User *load_user(rpc_call *call, uint64_t id, int *status)
{
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL) {
        *status = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        st = store_get(t, &lagoon_table_users, id, u, &err);
        store_read_end(t);
    }
    if (st != LAGOON_OK) {
        free(u);
        *status = st == LAGOON_NOT_FOUND ? rpc_call_error(call, st, "no such user") : app_store_error(call, st, &err);
        return NULL;
    }
    *status = LAGOON_OK;
    return u;
}

int handle_Users_GetProfile(rpc_call *call, const lagoon_v1_GetProfileRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)req;
    int st;
    lagoon_v1_User *u = load_user(call, rpc_call_caller(call)->user_id, &st);
    if (u == NULL)
        return st;
    account_profile(u, resp);
    free(u);
    return LAGOON_OK;
}

int handle_Users_Get(rpc_call *call, const lagoon_v1_GetUserRequest *req, lagoon_v1_PublicUser *resp)
{
    int st;
    lagoon_v1_User *u = load_user(call, req->user_id, &st);
    if (u == NULL)
        return st;
    /* Deactivated accounts are hidden from everyone but administrators. */
    if (!u->active && rpc_call_caller(call)->role != lagoon_v1_Role_ADMIN) {
        free(u);
        return rpc_call_error(call, LAGOON_NOT_FOUND, "no such user");
    }
    account_public(u, resp);
    free(u);
    return LAGOON_OK;
}

/* ---- lists ------------------------------------------------------------------------------------ */

/* Case-insensitive (ASCII) prefix tests for ListTeachers' search: "" matches everything. */
static int name_matches(const lagoon_v1_User *u, const char *prefix)
{
    size_t n = strlen(prefix);
    if (n == 0 || strncasecmp(u->username, prefix, n) == 0)
        return 1;
    for (size_t i = 0; u->full_name[i] != '\0'; i++) /* each word of full_name */
        if ((i == 0 || u->full_name[i - 1] == ' ') && strncasecmp(u->full_name + i, prefix, n) == 0)
            return 1;
    return 0;
}

static int instrument_matches(const lagoon_v1_User *u, const char *prefix)
{
    size_t n = strlen(prefix);
    if (n == 0)
        return 1;
    for (pb_size_t i = 0; i < u->instruments_count; i++)
        if (strncasecmp(u->instruments[i], prefix, n) == 0)
            return 1;
    return 0;
}

/* arg: the request, whose search fields filter the rows. */
static int add_public(void *arg, void *item, const void *row)
{
    const lagoon_v1_ListUsersRequest *req = arg;
    const lagoon_v1_User *u = row;
    if (!u->active || !name_matches(u, req->name_prefix) || !instrument_matches(u, req->instrument_prefix))
        return 0;
    account_public(u, item);
    return 1;
}

/* ---- Search: the module's limiter ------------------------------------------------------------ */

static int users_start(app *a, void **state, rpc_error *err)
{
    /* "N per minute" from the first: past N, wait until that minute is over. */
    return app_budget_start(a, a->cfg.user_searches, 30, 60 * 1000, state, err);
}

const app_module users_module = {
    .name = "users",
    .start = users_start,
    .stop = app_budget_stop,
};

static int add_found(void *arg, void *item, const void *row)
{
    const lagoon_v1_SearchUsersRequest *req = arg;
    const lagoon_v1_User *u = row;
    if (!u->active || !name_matches(u, req->query))
        return 0;
    account_public(u, item);
    return 1;
}

/* Every user in username order, filtered (as ListTeachers' search): a page may hold fewer than
 * page_size users while next_page_token is not "". The limiter makes it no enumeration tool. */
int handle_Users_Search(rpc_call *call, const lagoon_v1_SearchUsersRequest *req, lagoon_v1_ListUsersResponse *resp)
{
    app *a = app_of(call);
    char key[48];
    snprintf(key, sizeof(key), "user-search:%llu", (unsigned long long)rpc_call_caller(call)->user_id);
    uint32_t wait = limiter_take(app_state(a, &users_module), key, app_now(a));
    if (wait > 0) {
        rpc_call_retry_after(call, wait);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many searches; retry in %u s", (wait + 999) / 1000);
    }
    paging_list l = {.size = req->page_size, .token = req->page_token,
                     .resp = &lagoon_v1_ListUsersResponse_info,
                     .items_tag = lagoon_v1_ListUsersResponse_users_tag,
                     .item = add_found, .arg = (void *)req, .item_size = sizeof(lagoon_v1_PublicUser)};
    l.query.table = &lagoon_table_users;
    l.query.index = lagoon_index_users_by_username;
    int st = paging_read(call, &l);
    resp->users = l.items; /* FT_POINTER: freed with the call */
    resp->users_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

/* The paging of ListTeachers: page_size, page_token | page. */
static paging_list list_paging(const lagoon_v1_ListUsersRequest *req)
{
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListUsersResponse_info,
                     .items_tag = lagoon_v1_ListUsersResponse_users_tag,
                     .item = add_public, .arg = (void *)req, .item_size = sizeof(lagoon_v1_PublicUser)};
    return l;
}

static int list_role(rpc_call *call, const lagoon_v1_ListUsersRequest *req, lagoon_v1_ListUsersResponse *resp,
                     lagoon_v1_Role role)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, (uint32_t)role);
    paging_list l = list_paging(req);
    l.query.table = &lagoon_table_users;
    l.query.index = lagoon_index_users_by_role;
    l.query.prefix = prefix.buf;
    l.query.prefix_len = prefix.len;
    int st = paging_read(call, &l);
    resp->users = l.items;
    resp->users_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st;
}

int handle_Users_ListTeachers(rpc_call *call, const lagoon_v1_ListUsersRequest *req,
                              lagoon_v1_ListUsersResponse *resp)
{
    return list_role(call, req, resp, lagoon_v1_Role_TEACHER);
}

int handle_Users_ListStudents(rpc_call *call, const lagoon_v1_ListUsersRequest *req,
                              lagoon_v1_ListUsersResponse *resp)
{
    /* A teacher's students are its ACTIVE teaching relationships (teaching.c). */
    return teaching_list_students(call, req, resp);
}

/* ---- profile and admin updates: one read-modify-write of the user row -------------------------- */

/* User id's row into u, or NOT_FOUND "no such user". */
static int user_load(store_txn *t, uint64_t id, lagoon_v1_User *u, store_error *err)
{
    int st = store_get(t, &lagoon_table_users, id, u, err);
    return st == LAGOON_NOT_FOUND ? store_fail(err, st, NULL, "no such user") : st;
}

/* One read-modify-write of user id's row into *u: edit(u, in->req) changes it, then it is
 * stored with its updated_at. NOT_FOUND "no such user". */
typedef void (*user_edit_fn)(lagoon_v1_User *u, const void *req, const void *args);

static int user_edit(store_txn *t, const app_write_in *in, uint64_t id, user_edit_fn edit, lagoon_v1_User *u,
                     store_error *err)
{
    int st = user_load(t, id, u, err);
    if (st != LAGOON_OK)
        return st;
    edit(u, in->req, in->args);
    u->updated_at = in->now;
    return store_update(t, &lagoon_table_users, u, err);
}

static void apply_profile(lagoon_v1_User *u, const void *req, const void *args)
{
    (void)args;
    const lagoon_v1_UpdateProfileRequest *p = req;
    if (p->has_full_name)
        APP_STRCPY(u->full_name, p->full_name);
    if (p->has_profile_image_url)
        APP_STRCPY(u->profile_image_url, p->profile_image_url);
    if (p->set_instruments) {
        u->instruments_count = p->instruments_count;
        for (pb_size_t i = 0; i < p->instruments_count; i++)
            APP_STRCPY(u->instruments[i], p->instruments[i]);
    }
    if (p->has_experience_level)
        APP_STRCPY(u->experience_level, p->experience_level);
    if (p->has_bio)
        APP_STRCPY(u->bio, p->bio);
}

static int profile_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    lagoon_v1_User u;
    int st = user_edit(t, in, in->who.user_id, apply_profile, &u, err);
    if (st == LAGOON_OK)
        account_profile(&u, resp);
    return st;
}

int handle_Users_UpdateProfile(rpc_call *call, const lagoon_v1_UpdateProfileRequest *req,
                               lagoon_v1_UserProfile *resp)
{
    (void)resp;
    /* The per-field rules are in users.proto; this one spans two fields. */
    if (!req->set_instruments && req->instruments_count)
        return rpc_call_violation(call, "set_instruments", "must be true to change instruments");
    return app_write_call(call, profile_write, NULL);
}

/* ---- an administrator's change to one user: SetRole, SetActive -------------------------------- */

typedef struct admin_change {
    uint64_t user_id;
    user_edit_fn edit; /* what changes in the row */
    /* then what it means for the user's sessions */
    int (*sessions)(store_txn *t, const lagoon_v1_User *u, store_error *err);
    int public_resp; /* the response is a PublicUser, else a UserProfile */
} admin_change;

static int admin_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const admin_change *c = in->args;
    lagoon_v1_User u;
    int st = user_edit(t, in, c->user_id, c->edit, &u, err);
    if (st == LAGOON_OK)
        st = c->sessions(t, &u, err);
    if (st == LAGOON_OK && c->public_resp)
        account_public(&u, resp);
    else if (st == LAGOON_OK)
        account_profile(&u, resp);
    return st;
}

static int admin_submit(rpc_call *call, const admin_change *change)
{
    admin_change *c = app_write_args(call, sizeof(*c));
    if (c == NULL)
        return app_out_of_memory(call);
    *c = *change;
    return app_write_call(call, admin_write, c);
}

static void apply_role(lagoon_v1_User *u, const void *req, const void *args)
{
    (void)args;
    u->role = ((const lagoon_v1_SetRoleRequest *)req)->role;
}

int handle_Users_SetRole(rpc_call *call, const lagoon_v1_SetRoleRequest *req, lagoon_v1_PublicUser *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id && req->role != lagoon_v1_Role_ADMIN)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION,
                              "administrators cannot demote themselves (ask another administrator)");
    /* The sessions keep copies of the role. */
    admin_change c = {req->user_id, apply_role, account_sync_sessions, 1};
    return admin_submit(call, &c);
}

static void apply_active(lagoon_v1_User *u, const void *req, const void *args)
{
    (void)args;
    u->active = ((const lagoon_v1_SetActiveRequest *)req)->active;
}

/* A deactivation ends every session, and the media links of the videos shared with the user
 * (their shares stay, for a reactivation; links to public videos run to their expiry). */
static int end_sessions_if_inactive(store_txn *t, const lagoon_v1_User *u, store_error *err)
{
    if (u->active)
        return LAGOON_OK;
    int st = account_revoke_sessions(t, u->id, 0, err);
    return st == LAGOON_OK ? videos_reader_revoke(t, u->id, err) : st;
}

int handle_Users_SetActive(rpc_call *call, const lagoon_v1_SetActiveRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)resp;
    if (req->user_id == rpc_call_caller(call)->user_id && !req->active)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, "administrators cannot deactivate themselves");
    admin_change c = {req->user_id, apply_active, end_sessions_if_inactive, 0};
    return admin_submit(call, &c);
}

/* ---- password-checked changes --------------------------------------------------------------- */

/* A ChangePassword or DeleteAccount between its handler and its write, in the call's memory.
 * The passwords themselves stay in the request (wiped with the call: (lagoon.v1.secret)). */
typedef struct password_op {
    app *a;
    char current_hash[ACCOUNT_HASH_MAX];
    char new_hash[ACCOUNT_HASH_MAX]; /* ChangePassword: the write's argument */
    account_signin signin;           /* the attempt at the current password */
} password_op;

static void password_op_wipe(void *p)
{
    sodium_memzero(p, sizeof(password_op));
}

/* The call ended before its hash: no password was tried. */
static void password_op_drop(void *arg)
{
    password_op *op = arg;
    account_signin_cancel(op->a, &op->signin);
}

/* On the hash lane: does `password` match the account's? A wrong one stays counted as a
 * failed sign-in of the account from the caller's address (so these methods cannot be used to
 * guess passwords) and is a violation of `field`. LAGOON_OK if it matches (the attempt is
 * given back: it is not a sign-in, so the pair's failures stay and it does not become known). */
static int current_password_ok(rpc_call *call, password_op *op, const char *password, const char *field)
{
    if (account_verify_password(op->current_hash, password)) {
        account_signin_cancel(op->a, &op->signin);
        return LAGOON_OK;
    }
    account_signin_failed(op->a, &op->signin);
    return rpc_call_violation(call, field, "is wrong");
}

static void apply_password(lagoon_v1_User *u, const void *req, const void *args)
{
    (void)req;
    APP_STRCPY(u->password_hash, ((const password_op *)args)->new_hash);
}

static int password_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    lagoon_v1_User u;
    int st = user_edit(t, in, in->who.user_id, apply_password, &u, err);
    /* A new password ends the other sessions; the caller's survives. */
    if (st == LAGOON_OK)
        st = account_revoke_sessions(t, u.id, in->who.session_id, err);
    return st;
}

/* On the hash lane: checks the current password, hashes the new one, writes. */
static int change_password_work(rpc_call *call, void *arg)
{
    password_op *op = arg;
    const lagoon_v1_ChangePasswordRequest *req = rpc_call_request(call);
    int st = current_password_ok(call, op, req->current_password, "current_password");
    if (st == LAGOON_OK && account_hash_password(op->a, req->new_password, op->new_hash) != 0)
        st = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    return st == LAGOON_OK ? app_write_call(call, password_write, op) : st;
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    /* Its progress records as a teacher leave its students' summaries before the cascade, and
     * its videos' followers stop following them. */
    int st = teaching_user_deleting(t, in->now, in->who.user_id, err);
    if (st == LAGOON_OK)
        st = videos_user_deleting(t, in->a, in->who.user_id, err);
    if (st == LAGOON_OK) /* its groups' member counts and topics */
        st = groups_user_deleting(t, in, in->who.user_id, err);
    if (st == LAGOON_OK) /* its replies and reactions off the counts of others' threads */
        st = threads_user_deleting(t, in, in->who.user_id, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_users, in->who.user_id, err); /* sessions, tokens, ... cascade */
    return st == LAGOON_NOT_FOUND ? store_fail(err, st, NULL, "no such user") : st;
}

/* The account's media files go once its deletion is durable (as a video's, videos.c). */
static int delete_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)call;
    (void)resp;
    if (status == LAGOON_OK && media_discard_user(in->a, in->who.user_id) != LAGOON_OK)
        log_msg(LOG_WARN, "users: cannot remove the media files of deleted user %llu: %s",
                (unsigned long long)in->who.user_id, strerror(errno));
    return status;
}

static int delete_account_work(rpc_call *call, void *arg)
{
    const lagoon_v1_DeleteAccountRequest *req = rpc_call_request(call);
    int st = current_password_ok(call, arg, req->password, "password");
    return st == LAGOON_OK ? app_write_call_then(call, delete_write, NULL, delete_after) : st;
}

/* A password_op for the caller in the call's memory, with new_password (when not NULL)
 * checked against the account first; NULL with the call's status in *st. */
static password_op *password_op_new(rpc_call *call, const char *new_password, int *st)
{
    uint64_t uid = rpc_call_caller(call)->user_id;
    lagoon_v1_User *u = load_user(call, uid, st);
    if (u == NULL)
        return NULL;
    password_op *op = NULL;
    if (new_password && !account_check(call, "new_password", account_password_problem(new_password, u->email, u->username)))
        *st = LAGOON_INVALID_ARGUMENT;
    else if ((op = rpc_call_alloc(call, sizeof(*op), password_op_wipe)) == NULL)
        *st = app_out_of_memory(call);
    if (op != NULL) {
        op->a = app_of(call);
        APP_STRCPY(op->current_hash, u->password_hash);
        account_signin_user(op->signin.account, uid);
        app_peer_key(call, op->signin.address);
    }
    free(u);
    return op;
}

/* The sign-in throttle, then fn on the hash lane. The attempt is counted before it is
 * deferred (attempts pipelined behind it see it) and given back if it never runs. */
static int check_password_later(rpc_call *call, password_op *op, rpc_work_fn fn)
{
    uint32_t wait = account_signin_begin(op->a, &op->signin, app_now(op->a));
    if (wait) {
        rpc_call_retry_after(call, wait);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many wrong passwords; retry in %u s",
                              (wait + 999) / 1000);
    }
    int st = rpc_call_defer(call, RPC_LANE_HASH, fn, password_op_drop, op);
    if (st != RPC_PENDING)
        account_signin_cancel(op->a, &op->signin);
    return st;
}

int handle_Users_ChangePassword(rpc_call *call, const lagoon_v1_ChangePasswordRequest *req,
                                lagoon_v1_UsersEmpty *resp)
{
    (void)resp;
    int st;
    password_op *op = password_op_new(call, req->new_password, &st);
    return op ? check_password_later(call, op, change_password_work) : st;
}

int handle_Users_DeleteAccount(rpc_call *call, const lagoon_v1_DeleteAccountRequest *req,
                               lagoon_v1_UsersEmpty *resp)
{
    (void)req;
    (void)resp;
    int st;
    password_op *op = password_op_new(call, NULL, &st);
    return op ? check_password_later(call, op, delete_account_work) : st;
}
