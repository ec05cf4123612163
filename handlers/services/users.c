/* Users service: profiles, the teacher list, password change, account deletion, and the
 * administrators' role and activation switches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "accounts.h"
#include "lagoon_handlers.h"
#include "paging.h"

#define COPY_STR(dst, src) snprintf((dst), sizeof(dst), "%s", (src))

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

static int add_public(void *arg, void *item, const void *row)
{
    (void)arg;
    const lagoon_v1_User *u = row;
    if (!u->active)
        return 0;
    account_public(u, item);
    return 1;
}

/* The paging of ListTeachers and ListStudents: page_size, page_token | page. */
static paging_list list_paging(const lagoon_v1_ListUsersRequest *req)
{
    paging_list l = {.size = req->page_size, .token = req->page_token, .number = req->page,
                     .resp = &lagoon_v1_ListUsersResponse_info,
                     .items_tag = lagoon_v1_ListUsersResponse_users_tag,
                     .item = add_public, .item_size = sizeof(lagoon_v1_PublicUser)};
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
    COPY_STR(resp->next_page_token, l.next_page_token);
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
    /* A teacher's students come from student-teacher relationships, a later feature: until
     * they exist no teacher has any. The request is still validated as it will be then. */
    (void)resp;
    paging_list l = list_paging(req);
    return paging_check(call, &l);
}

/* ---- profile and admin updates: one read-modify-write of the user row -------------------------- */

typedef struct user_op {
    app *a;
    uint64_t user_id;
    uint64_t keep_session; /* ChangePassword: the caller's session survives */
    int64_t now;
    lagoon_v1_UpdateProfileRequest patch; /* UpdateProfile */
    int set_role, set_active;             /* SetRole, SetActive */
    lagoon_v1_Role role;
    bool active;
    char new_hash[ACCOUNT_HASH_MAX];   /* ChangePassword */
    char password[ACCOUNT_PASSWORD_MAX + 1];     /* the current one; wiped once checked */
    char new_password[ACCOUNT_PASSWORD_MAX + 1]; /* wiped once hashed */
    char current_hash[ACCOUNT_HASH_MAX];
    account_signin signin; /* ChangePassword, DeleteAccount: the attempt at the current password */
    void *resp;
    int public_resp;     /* resp is a PublicUser, not a UserProfile */
    lagoon_v1_User user; /* the row as written */
} user_op;

static void user_op_free(user_op *op)
{
    sodium_memzero(op->password, sizeof(op->password));
    sodium_memzero(op->new_password, sizeof(op->new_password));
    free(op);
}

/* The call ended before its hash: no password was tried. */
static void user_op_drop(void *arg)
{
    user_op *op = arg;
    account_signin_cancel(op->a, &op->signin);
    user_op_free(op);
}

static user_op *user_op_new(rpc_call *call, uint64_t user_id, void *resp)
{
    user_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    op->a = app_of(call);
    op->user_id = user_id;
    op->now = app_now(op->a);
    op->resp = resp;
    return op;
}

static int user_update_write(store_txn *t, void *arg, store_error *err)
{
    user_op *op = arg;
    lagoon_v1_User u;
    int st = store_get(t, &lagoon_table_users, op->user_id, &u, err);
    if (st != LAGOON_OK)
        return st;
    const lagoon_v1_UpdateProfileRequest *p = &op->patch;
    if (p->has_full_name)
        COPY_STR(u.full_name, p->full_name);
    if (p->has_profile_image_url)
        COPY_STR(u.profile_image_url, p->profile_image_url);
    if (p->set_instruments) {
        u.instruments_count = p->instruments_count;
        for (pb_size_t i = 0; i < p->instruments_count; i++)
            COPY_STR(u.instruments[i], p->instruments[i]);
    }
    if (p->has_experience_level)
        COPY_STR(u.experience_level, p->experience_level);
    if (p->has_bio)
        COPY_STR(u.bio, p->bio);
    if (op->set_role)
        u.role = op->role;
    if (op->set_active)
        u.active = op->active;
    if (op->new_hash[0])
        COPY_STR(u.password_hash, op->new_hash);
    u.updated_at = op->now;
    st = store_update(t, &lagoon_table_users, &u, err);
    /* A new password or a deactivation ends other sessions. */
    if (st == LAGOON_OK && (op->new_hash[0] || (op->set_active && !op->active)))
        st = account_revoke_sessions(t, u.id, op->keep_session, err);
    if (st == LAGOON_OK && op->set_role)
        st = account_sync_sessions(t, &u, err);
    if (st == LAGOON_OK)
        op->user = u;
    return st;
}

/* The updated user as the response: a UserProfile, or a PublicUser (op->public_resp). */
static int user_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    user_op *op = arg;
    if (status == LAGOON_OK && op->public_resp)
        account_public(&op->user, op->resp);
    else if (status == LAGOON_OK)
        account_profile(&op->user, op->resp);
    else
        status = status == LAGOON_NOT_FOUND ? rpc_call_error(call, status, "no such user")
                                            : app_store_error(call, status, err);
    user_op_free(op);
    return status;
}

static int empty_done(rpc_call *call, void *arg, int status, const store_error *err)
{
    user_op_free(arg);
    return status == LAGOON_OK ? LAGOON_OK : app_store_error(call, status, err);
}

static int submit(rpc_call *call, user_op *op, store_write_fn fn, app_done_fn done)
{
    int st = app_write(call, fn, op, done);
    if (st != RPC_PENDING)
        user_op_free(op);
    return st;
}

int handle_Users_UpdateProfile(rpc_call *call, const lagoon_v1_UpdateProfileRequest *req,
                               lagoon_v1_UserProfile *resp)
{
    if (req->has_full_name)
        account_check(call, "full_name", account_text_problem(req->full_name, 100, 0));
    if (req->has_profile_image_url)
        account_check(call, "profile_image_url", account_url_problem(req->profile_image_url));
    if (req->has_experience_level)
        account_check(call, "experience_level", account_experience_problem(req->experience_level));
    if (req->has_bio)
        account_check(call, "bio", account_text_problem(req->bio, 2000, 1));
    if (!req->set_instruments && req->instruments_count)
        rpc_call_violation(call, "set_instruments", "must be true to change instruments");
    for (pb_size_t i = 0; i < req->instruments_count; i++) {
        char field[32];
        snprintf(field, sizeof(field), "instruments[%u]", (unsigned)i);
        if (req->instruments[i][0] == '\0')
            rpc_call_violation(call, field, "must not be empty");
        else
            account_check(call, field, account_text_problem(req->instruments[i], 40, 0));
    }
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    user_op *op = user_op_new(call, rpc_call_caller(call)->user_id, resp);
    if (op == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    op->patch = *req;
    return submit(call, op, user_update_write, user_done);
}

int handle_Users_SetRole(rpc_call *call, const lagoon_v1_SetRoleRequest *req, lagoon_v1_PublicUser *resp)
{
    if (req->role != lagoon_v1_Role_STUDENT && req->role != lagoon_v1_Role_TEACHER &&
        req->role != lagoon_v1_Role_ADMIN)
        return rpc_call_violation(call, "role", "must be STUDENT, TEACHER or ADMIN");
    if (req->user_id == rpc_call_caller(call)->user_id && req->role != lagoon_v1_Role_ADMIN)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION,
                              "administrators cannot demote themselves (ask another administrator)");
    user_op *op = user_op_new(call, req->user_id, resp);
    if (op == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    op->set_role = 1;
    op->role = req->role;
    op->public_resp = 1;
    return submit(call, op, user_update_write, user_done);
}

int handle_Users_SetActive(rpc_call *call, const lagoon_v1_SetActiveRequest *req, lagoon_v1_UserProfile *resp)
{
    if (req->user_id == rpc_call_caller(call)->user_id && !req->active)
        return rpc_call_error(call, LAGOON_FAILED_PRECONDITION, "administrators cannot deactivate themselves");
    user_op *op = user_op_new(call, req->user_id, resp);
    if (op == NULL)
        return LAGOON_RESOURCE_EXHAUSTED;
    op->set_active = 1;
    op->active = req->active;
    return submit(call, op, user_update_write, user_done);
}

/* ---- password-checked changes --------------------------------------------------------------- */

/* On a worker: does op->password match the account's? It is wiped either way. A wrong one
 * stays counted as a failed sign-in of the account from the caller's address (so these
 * methods cannot be used to guess passwords) and ends the call with a violation of `field`:
 * returns that status; the caller frees op. LAGOON_OK if it matches (the attempt is given
 * back: it is not a sign-in, so the pair's failures stay and it does not become known). */
static int current_password_ok(rpc_call *call, user_op *op, const char *field)
{
    int ok = account_verify_password(op->current_hash, op->password);
    sodium_memzero(op->password, sizeof(op->password));
    if (ok) {
        account_signin_cancel(op->a, &op->signin);
        return LAGOON_OK;
    }
    account_signin_failed(op->a, &op->signin);
    return rpc_call_violation(call, field, "is wrong");
}

/* Runs on a worker: checks the current password, hashes the new one, writes. */
static int change_password_work(rpc_call *call, void *arg)
{
    user_op *op = arg;
    app *a = op->a;
    int st = current_password_ok(call, op, "current_password");
    if (st == LAGOON_OK && account_hash_password(a, op->new_password, op->new_hash) != 0)
        st = rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory hashing the password");
    sodium_memzero(op->new_password, sizeof(op->new_password));
    if (st != LAGOON_OK) {
        user_op_free(op);
        return st;
    }
    return submit(call, op, user_update_write, empty_done);
}

static int delete_write(store_txn *t, void *arg, store_error *err)
{
    const user_op *op = arg;
    return store_delete(t, &lagoon_table_users, op->user_id, err); /* sessions, tokens, ... cascade */
}

static int delete_account_work(rpc_call *call, void *arg)
{
    user_op *op = arg;
    int st = current_password_ok(call, op, "password");
    if (st != LAGOON_OK) {
        user_op_free(op);
        return st;
    }
    return submit(call, op, delete_write, empty_done);
}

/* Loads the caller's hash; NULL (status in *st) on failure. */
static user_op *password_op(rpc_call *call, void *resp, int *st)
{
    uint64_t uid = rpc_call_caller(call)->user_id;
    lagoon_v1_User *u = load_user(call, uid, st);
    if (u == NULL)
        return NULL;
    user_op *op = user_op_new(call, uid, resp);
    if (op == NULL) {
        free(u);
        *st = LAGOON_RESOURCE_EXHAUSTED;
        return NULL;
    }
    COPY_STR(op->current_hash, u->password_hash);
    account_signin_user(op->signin.account, uid);
    app_peer_key(call, op->signin.address);
    op->user = *u;
    free(u);
    return op;
}

/* The sign-in throttle, then fn on the hash lane. The attempt is counted before it is
 * deferred (attempts pipelined behind it see it) and given back if it never runs. Frees op
 * unless it is handed on. */
static int check_password_later(rpc_call *call, user_op *op, rpc_work_fn fn)
{
    uint32_t wait = account_signin_begin(op->a, &op->signin, app_now(op->a));
    if (wait) {
        user_op_free(op);
        rpc_call_retry_after(call, wait);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many wrong passwords; retry in %u s",
                              (wait + 999) / 1000);
    }
    int st = rpc_call_defer(call, RPC_LANE_HASH, fn, user_op_drop, op);
    if (st != RPC_PENDING) {
        account_signin_cancel(op->a, &op->signin);
        user_op_free(op);
    }
    return st;
}

int handle_Users_ChangePassword(rpc_call *call, const lagoon_v1_ChangePasswordRequest *req,
                                lagoon_v1_UsersEmpty *resp)
{
    int st;
    user_op *op = password_op(call, resp, &st);
    if (op == NULL)
        return st;
    if (!account_check(call, "new_password", account_password_problem(req->new_password, op->user.email, op->user.username))) {
        user_op_free(op);
        return LAGOON_INVALID_ARGUMENT;
    }
    op->keep_session = rpc_call_caller(call)->session_id;
    COPY_STR(op->password, req->current_password);
    COPY_STR(op->new_password, req->new_password);
    return check_password_later(call, op, change_password_work);
}

int handle_Users_DeleteAccount(rpc_call *call, const lagoon_v1_DeleteAccountRequest *req,
                               lagoon_v1_UsersEmpty *resp)
{
    int st;
    user_op *op = password_op(call, resp, &st);
    if (op == NULL)
        return st;
    COPY_STR(op->password, req->password);
    return check_password_later(call, op, delete_account_work);
}
