/* Accounts end to end: the Auth and Users services through the generated client, against the
 * real server with a real store in a temporary directory, emails read from the maildir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "accounts.h"
#include "lagoon_stubs.h"
#include "testserver.h"

#define PASSWORD TEST_PASSWORD
#define MAIL_WAIT_MS 5000

static test_app *T;

static lagoon_client *client(void)
{
    return test_client(T);
}

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_app_free(T);
    return 0;
}

static int do_register(lagoon_client *c, const char *email, const char *username, const char *password,
                       lagoon_v1_Role role, lagoon_v1_UserProfile *out)
{
    lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
    snprintf(req.email, sizeof(req.email), "%s", email);
    snprintf(req.username, sizeof(req.username), "%s", username);
    snprintf(req.password, sizeof(req.password), "%s", password);
    snprintf(req.full_name, sizeof(req.full_name), "Test %s", username);
    req.role = role;
    lagoon_v1_UserProfile tmp;
    return lagoon_Auth_Register(c, &req, out ? out : &tmp);
}

static int do_login(lagoon_client *c, const char *login, const char *password, lagoon_v1_TokenPair *out)
{
    lagoon_v1_LoginRequest req = lagoon_v1_LoginRequest_init_zero;
    snprintf(req.login, sizeof(req.login), "%s", login);
    snprintf(req.password, sizeof(req.password), "%s", password);
    lagoon_v1_TokenPair tmp;
    return lagoon_Auth_Login(c, &req, out ? out : &tmp);
}

static int me(lagoon_client *c, const char *token, lagoon_v1_UserProfile *out)
{
    lagoon_set_token(c, token);
    lagoon_v1_AuthEmpty req = lagoon_v1_AuthEmpty_init_zero;
    lagoon_v1_UserProfile tmp;
    int st = lagoon_Auth_Me(c, &req, out ? out : &tmp);
    lagoon_set_token(c, NULL);
    return st;
}

static uint64_t new_user(lagoon_client *c, const char *name, lagoon_v1_Role role, char *token)
{
    return test_user(c, name, role, token);
}

static int count_row(void *arg, uint64_t id, const void *row)
{
    (void)id;
    (void)row;
    (*(int *)arg)++;
    return LAGOON_OK;
}

/* The rows of a table that belong to a user, counted by the table's user_id index. */
static int user_rows(const store_table *table, const store_index *by_user, uint64_t user_id)
{
    store_txn *t;
    store_error err;
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, user_id);
    store_query q = {.table = table, .index = by_user, .prefix = prefix.buf, .prefix_len = prefix.len,
                     .page_size = STORE_PAGE_SIZE_MAX};
    store_page page;
    int n = 0;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    assert_int_equal(store_scan(t, &q, count_row, &n, &page, &err), LAGOON_OK);
    store_read_end(t);
    return n;
}

static int has_violation(lagoon_client *c, const char *field)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(c)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0)
            return 1;
    return 0;
}

/* ---- Register ---------------------------------------------------------------------------- */

static void test_register_reports_every_violation(void **state)
{
    (void)state;
    lagoon_client *c = client();
    /* Everything wrong at once: all problems come back together. */
    lagoon_v1_RegisterRequest req = lagoon_v1_RegisterRequest_init_zero;
    snprintf(req.email, sizeof(req.email), "not-an-email");
    snprintf(req.username, sizeof(req.username), "x!");
    snprintf(req.password, sizeof(req.password), "short");
    snprintf(req.full_name, sizeof(req.full_name), "bad\nname");
    req.role = lagoon_v1_Role_ADMIN;
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Auth_Register(c, &req, &p), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(lagoon_last_error(c)->detail.violations_count, 5);
    assert_true(has_violation(c, "email"));
    assert_true(has_violation(c, "username"));
    assert_true(has_violation(c, "password"));
    assert_true(has_violation(c, "full_name"));
    assert_true(has_violation(c, "role"));

    static const struct {
        const char *email, *username, *password, *field;
    } bad[] = {
        {"a@b", "gooduser", PASSWORD, "email"},
        {"a..b@example.com", "gooduser", PASSWORD, "email"},
        {"a@example..com", "gooduser", PASSWORD, "email"},
        {"a b@example.com", "gooduser", PASSWORD, "email"},
        {"ok@example.com", "ab", PASSWORD, "username"},
        {"ok@example.com", "_starts_badly", PASSWORD, "username"},
        {"ok@example.com", "has space", PASSWORD, "username"},
        {"ok@example.com", "gooduser", "nine char", "password"},
        {"ok@example.com", "gooduser", "Password123", "password"},  /* common */
        {"ok@example.com", "gooduser", "qwertyuiop", "password"},   /* common */
        {"ok@example.com", "longusername1", "LongUserName1", "password"}, /* = username */
        {"someone.long@example.com", "gooduser", "someone.long@example.com", "password"}, /* = email */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(do_register(c, bad[i].email, bad[i].username, bad[i].password, 0, NULL),
                         LAGOON_INVALID_ARGUMENT);
        if (!has_violation(c, bad[i].field))
            fail_msg("case %zu: no violation of %s (%s)", i, bad[i].field, lagoon_last_error(c)->detail.message);
        assert_int_equal(lagoon_last_error(c)->detail.violations_count, 1);
    }

    /* A good registration: unverified student, with a verification email. */
    lagoon_v1_UserProfile u;
    assert_int_equal(do_register(c, "Ann@Example.com", "ann", PASSWORD, 0, &u), LAGOON_OK);
    assert_true(u.id > 0);
    assert_string_equal(u.email, "Ann@Example.com");
    assert_int_equal(u.role, lagoon_v1_Role_STUDENT);
    assert_false(u.verified);
    assert_true(u.active);
    char code[44];
    assert_true(test_mail_code(T, "Ann@Example.com", "Verify your email", code, MAIL_WAIT_MS));
    assert_int_equal(strlen(code), ACCOUNT_TOKEN_CHARS);

    /* Email and username are unique ignoring case; both conflicts are named. */
    assert_int_equal(do_register(c, "ann@EXAMPLE.com", "ANN", PASSWORD, 0, NULL), LAGOON_ALREADY_EXISTS);
    assert_true(has_violation(c, "email"));
    assert_true(has_violation(c, "username"));
    lagoon_close(c);
}

/* ---- Login, throttling -------------------------------------------------------------------- */

static void test_login_by_email_and_username(void **state)
{
    (void)state;
    lagoon_client *c = client();
    lagoon_v1_UserProfile u;
    assert_int_equal(do_register(c, "bob@example.com", "Bob", PASSWORD, lagoon_v1_Role_TEACHER, &u), LAGOON_OK);
    lagoon_v1_TokenPair tp;
    assert_int_equal(do_login(c, "BOB@example.com", PASSWORD, &tp), LAGOON_OK);
    assert_int_equal(strlen(tp.access_token), ACCOUNT_TOKEN_CHARS);
    assert_int_equal(strlen(tp.refresh_token), ACCOUNT_TOKEN_CHARS);
    assert_int_equal(tp.access_expires_at, T->clock_ms + 24LL * 3600 * 1000);
    assert_int_equal(tp.refresh_expires_at, T->clock_ms + 30LL * 24 * 3600 * 1000);
    assert_int_equal(tp.user.id, u.id);
    assert_int_equal(tp.user.last_login, T->clock_ms);
    lagoon_v1_UserProfile p;
    assert_int_equal(me(c, tp.access_token, &p), LAGOON_OK);
    assert_int_equal(p.id, u.id);
    assert_int_equal(p.role, lagoon_v1_Role_TEACHER);
    assert_int_equal(do_login(c, "bob", PASSWORD, &tp), LAGOON_OK);
    assert_int_equal(me(c, tp.access_token, NULL), LAGOON_OK);

    assert_int_equal(do_login(c, "bob", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "nobody", PASSWORD, NULL), LAGOON_UNAUTHENTICATED);
    /* The same message either way: an unknown login is not revealed. */
    assert_string_equal(lagoon_last_error(c)->detail.message, "wrong login or password");
    /* An access token expires after 24 hours. */
    test_clock_advance(T, 24LL * 3600 * 1000 + 1);
    assert_int_equal(me(c, tp.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(me(c, "not-a-token", NULL), LAGOON_UNAUTHENTICATED);
    lagoon_close(c);
}

static void test_login_throttling_and_expiry(void **state)
{
    (void)state;
    lagoon_client *c = client();
    assert_int_equal(do_register(c, "carl@example.com", "carl", PASSWORD, 0, NULL), LAGOON_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(do_login(c, "carl", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    /* The sixth attempt is refused before the password is looked at, even a right one. */
    assert_int_equal(do_login(c, "carl", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    uint32_t retry = lagoon_last_error(c)->detail.retry_after_ms;
    assert_true(retry > 0 && retry <= 1000);
    /* By email too: the account is throttled, whatever it is called. */
    assert_int_equal(do_login(c, "carl@example.com", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    test_clock_advance(T, retry);
    /* One more failure doubles the wait. */
    assert_int_equal(do_login(c, "carl", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "carl", PASSWORD, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_true(lagoon_last_error(c)->detail.retry_after_ms > 1000);
    /* After the window the account may sign in again, and success clears the count. */
    test_clock_advance(T, 16LL * 60 * 1000);
    assert_int_equal(do_login(c, "carl", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(do_login(c, "carl", "wrong password!", NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "carl", PASSWORD, NULL), LAGOON_OK);
    lagoon_close(c);
}

/* Points T at a server of its own, started with tweak; returns the shared one, for
 * private_end. */
static test_app *private_app(void (*tweak)(app_config *acfg, rpc_config *cfg))
{
    test_app *saved = T;
    T = calloc(1, sizeof(*T));
    assert_non_null(T);
    test_app_start(T, tweak);
    return saved;
}

static void private_end(test_app *saved)
{
    test_app_free(T);
    T = saved;
}

static void tweak_small_registration_limit(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->registrations.max_events = 3;
    acfg->resets.max_events = 2;
}

/* Registrations: 3 per hour here (20 by default). Every Register that passes validation
 * counts, a taken email or username too, so that which emails have accounts is learnt no
 * faster than accounts are made; the wait is until the hour from the first one ends. */
static void test_registration_limit_counts_taken_names(void **state)
{
    (void)state;
    test_app *saved = private_app(tweak_small_registration_limit);
    lagoon_client *c = client();
    /* Invalid requests are answered before the lookup and cost nothing. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(do_register(c, "bad", "r0", PASSWORD, 0, NULL), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(do_register(c, "r0@example.com", "rate0", PASSWORD, 0, NULL), LAGOON_OK);
    test_clock_advance(T, 1000);
    assert_int_equal(do_register(c, "R0@example.com", "other1", PASSWORD, 0, NULL), LAGOON_ALREADY_EXISTS);
    assert_true(has_violation(c, "email"));
    assert_int_equal(do_register(c, "r1@example.com", "RATE0", PASSWORD, 0, NULL), LAGOON_ALREADY_EXISTS);
    assert_true(has_violation(c, "username"));
    /* The fourth within the hour waits for the rest of it, whatever it asks. */
    assert_int_equal(do_register(c, "r2@example.com", "rate2", PASSWORD, 0, NULL), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 3600 * 1000 - 1000);
    assert_int_equal(do_register(c, "r0@example.com", "rate0", PASSWORD, 0, NULL), LAGOON_RESOURCE_EXHAUSTED);
    /* An invalid one is still told what is wrong. */
    assert_int_equal(do_register(c, "bad", "r0", PASSWORD, 0, NULL), LAGOON_INVALID_ARGUMENT);
    test_clock_advance(T, 3600 * 1000 - 1000);
    assert_int_equal(do_register(c, "r2@example.com", "rate2", PASSWORD, 0, NULL), LAGOON_OK);
    lagoon_close(c);
    private_end(saved);
}

/* Emails on request: 2 per hour here (10 by default). A ResendVerification counts only when it
 * sends one; its precondition (not yet verified) comes first and costs nothing. Every valid
 * ForgotPassword counts, for an address with an account or not, so the limit does not tell
 * which is which. */
static void test_email_budget_counts_what_sends(void **state)
{
    (void)state;
    test_app *saved = private_app(tweak_small_registration_limit);
    lagoon_client *c = client();
    char token[65], code[44];
    new_user(c, "budget", 0, token);
    assert_true(test_mail_code(T, "budget@example.com", "Verify", code, MAIL_WAIT_MS));
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_OK);
    lagoon_set_token(c, token);
    for (int i = 0; i < 5; i++)
        assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_FAILED_PRECONDITION);
    lagoon_set_token(c, NULL);
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    snprintf(fr.email, sizeof(fr.email), "not-an-email");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_INVALID_ARGUMENT);
    snprintf(fr.email, sizeof(fr.email), "nobody@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    test_clock_advance(T, 5000);
    snprintf(fr.email, sizeof(fr.email), "budget@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    assert_true(test_mail_code(T, "budget@example.com", "Reset your password", code, MAIL_WAIT_MS));
    /* The budget is spent: the third waits until the hour from the first ends. */
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 3600 * 1000 - 5000);
    /* A request that could not send anyway still says why. */
    lagoon_set_token(c, token);
    assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_FAILED_PRECONDITION);
    lagoon_set_token(c, NULL);
    test_clock_advance(T, 3600 * 1000 - 5000);
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);

    /* ResendVerification that sends counts like any email. */
    char token2[65];
    new_user(c, "budget2", 0, token2);
    lagoon_set_token(c, token2);
    assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_OK);
    assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 3600 * 1000);
    lagoon_close(c);
    private_end(saved);
}

/* ---- Refresh, logout ---------------------------------------------------------------------- */

static void test_refresh_rotation_and_reuse(void **state)
{
    (void)state;
    lagoon_client *c = client();
    assert_int_equal(do_register(c, "dora@example.com", "dora", PASSWORD, 0, NULL), LAGOON_OK);
    lagoon_v1_TokenPair first, second, third;
    assert_int_equal(do_login(c, "dora", PASSWORD, &first), LAGOON_OK);
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", first.refresh_token);
    test_clock_advance(T, 1000);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &second), LAGOON_OK);
    assert_string_not_equal(second.refresh_token, first.refresh_token);
    assert_string_not_equal(second.access_token, first.access_token);
    assert_int_equal(second.access_expires_at, T->clock_ms + 24LL * 3600 * 1000);
    /* The old access token is replaced; the new one works. */
    assert_int_equal(me(c, first.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(me(c, second.access_token, NULL), LAGOON_OK);
    /* The new refresh token rotates again. */
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", second.refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &third), LAGOON_OK);
    assert_int_equal(me(c, third.access_token, NULL), LAGOON_OK);
    /* Presenting an already-used refresh token (theft) revokes the whole session. */
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", first.refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &second), LAGOON_UNAUTHENTICATED);
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "revoked"));
    assert_int_equal(me(c, third.access_token, NULL), LAGOON_UNAUTHENTICATED);
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", third.refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &second), LAGOON_UNAUTHENTICATED);
    /* Malformed and unknown tokens. */
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "garbage");
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &second), LAGOON_UNAUTHENTICATED);
    /* A refresh token expires after 30 days. */
    lagoon_v1_TokenPair fresh;
    assert_int_equal(do_login(c, "dora", PASSWORD, &fresh), LAGOON_OK);
    test_clock_advance(T, 30LL * 24 * 3600 * 1000 + 1);
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", fresh.refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &second), LAGOON_UNAUTHENTICATED);
    assert_non_null(strstr(lagoon_last_error(c)->detail.message, "expired"));
    lagoon_close(c);
}

static void test_logout_and_logout_all(void **state)
{
    (void)state;
    lagoon_client *c = client();
    assert_int_equal(do_register(c, "eve@example.com", "eve", PASSWORD, 0, NULL), LAGOON_OK);
    lagoon_v1_TokenPair phone, tablet, laptop;
    assert_int_equal(do_login(c, "eve", PASSWORD, &phone), LAGOON_OK);
    assert_int_equal(do_login(c, "eve", PASSWORD, &tablet), LAGOON_OK);
    assert_int_equal(do_login(c, "eve", PASSWORD, &laptop), LAGOON_OK);
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    lagoon_set_token(c, phone.access_token);
    assert_int_equal(lagoon_Auth_Logout(c, &e, &out), LAGOON_OK);
    assert_int_equal(me(c, phone.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(me(c, tablet.access_token, NULL), LAGOON_OK);
    lagoon_set_token(c, tablet.access_token);
    assert_int_equal(lagoon_Auth_LogoutAll(c, &e, &out), LAGOON_OK);
    assert_int_equal(me(c, tablet.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(me(c, laptop.access_token, NULL), LAGOON_UNAUTHENTICATED);
    /* Their refresh tokens died with the sessions. */
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    lagoon_v1_TokenPair tp;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", laptop.refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &tp), LAGOON_UNAUTHENTICATED);
    lagoon_close(c);
}

/* ---- emails: verification and reset --------------------------------------------------------- */

static void test_email_verification(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char token[65], code[44], code2[44];
    new_user(c, "fay", 0, token);
    assert_true(test_mail_code(T, "fay@example.com", "Verify", code, MAIL_WAIT_MS));
    /* A new code replaces the old one. */
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    lagoon_set_token(c, token);
    assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_OK);
    assert_true(test_mail_code(T, "fay@example.com", "Verify", code2, MAIL_WAIT_MS));
    assert_string_not_equal(code, code2);
    lagoon_set_token(c, NULL);
    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "token"));
    /* What the server makes of her token (the caller every access check sees): unverified
     * until VerifyEmail, then verified on the same session. */
    rpc_caller who;
    assert_int_equal(app_authenticate(T->app, token, &who), 0);
    assert_false(who.verified);
    snprintf(vr.token, sizeof(vr.token), "%s", code2);
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_OK);
    assert_int_equal(app_authenticate(T->app, token, &who), 0);
    assert_true(who.verified);
    lagoon_v1_UserProfile p;
    assert_int_equal(me(c, token, &p), LAGOON_OK);
    assert_true(p.verified);
    /* Single use. */
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_INVALID_ARGUMENT);
    /* Nothing more to verify. */
    lagoon_set_token(c, token);
    assert_int_equal(lagoon_Auth_ResendVerification(c, &e, &out), LAGOON_FAILED_PRECONDITION);
    lagoon_set_token(c, NULL);

    /* A code expires after 24 hours. */
    char token_g[65];
    new_user(c, "gus", 0, token_g);
    assert_true(test_mail_code(T, "gus@example.com", "Verify", code, MAIL_WAIT_MS));
    test_clock_advance(T, 24LL * 3600 * 1000 + 1);
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_INVALID_ARGUMENT);
    snprintf(vr.token, sizeof(vr.token), "AAAA");
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_INVALID_ARGUMENT);
    lagoon_close(c);
}

static void test_password_reset(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char token[65], code[44];
    new_user(c, "hal", 0, token);
    assert_true(test_mail_code(T, "hal@example.com", "Verify", code, MAIL_WAIT_MS));
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    lagoon_v1_AuthEmpty out;
    /* The same answer for an address nobody has; and no email goes out. */
    snprintf(fr.email, sizeof(fr.email), "nobody@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    snprintf(fr.email, sizeof(fr.email), "HAL@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    assert_true(test_mail_code(T, "hal@example.com", "Reset your password", code, MAIL_WAIT_MS));
    assert_int_equal(test_mail_count(T, "nobody@example.com"), 0);

    lagoon_v1_ResetPasswordRequest rq = lagoon_v1_ResetPasswordRequest_init_zero;
    snprintf(rq.token, sizeof(rq.token), "%s", code);
    snprintf(rq.new_password, sizeof(rq.new_password), "hal");
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &out), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "new_password"));
    snprintf(rq.new_password, sizeof(rq.new_password), "a brand new passphrase");
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &out), LAGOON_OK);
    /* Every session is revoked; only the new password works. */
    assert_int_equal(me(c, token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "hal", PASSWORD, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "hal", "a brand new passphrase", NULL), LAGOON_OK);
    /* Single use. */
    snprintf(rq.new_password, sizeof(rq.new_password), "yet another passphrase");
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &out), LAGOON_INVALID_ARGUMENT);
    /* Reset codes expire after an hour. */
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    assert_true(test_mail_code(T, "hal@example.com", "Reset your password", code, MAIL_WAIT_MS));
    test_clock_advance(T, 3600LL * 1000 + 1);
    snprintf(rq.token, sizeof(rq.token), "%s", code);
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &out), LAGOON_INVALID_ARGUMENT);
    lagoon_close(c);
}

/* ---- Users ------------------------------------------------------------------------------------ */

static void test_profiles_and_teachers(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char tok[65];
    uint64_t me_id = new_user(c, "ida", lagoon_v1_Role_STUDENT, tok);
    lagoon_set_token(c, tok);
    lagoon_v1_UpdateProfileRequest up = lagoon_v1_UpdateProfileRequest_init_zero;
    up.has_bio = true;
    snprintf(up.bio, sizeof(up.bio), "Cellist.\nLoves Bach.");
    up.set_instruments = true;
    up.instruments_count = 2;
    snprintf(up.instruments[0], sizeof(up.instruments[0]), "cello");
    snprintf(up.instruments[1], sizeof(up.instruments[1]), "piano");
    up.has_experience_level = true;
    snprintf(up.experience_level, sizeof(up.experience_level), "advanced");
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_UpdateProfile(c, &up, &p), LAGOON_OK);
    assert_string_equal(p.bio, "Cellist.\nLoves Bach.");
    assert_int_equal(p.instruments_count, 2);
    assert_string_equal(p.full_name, "Test ida"); /* absent fields are kept */
    up.has_experience_level = true;
    snprintf(up.experience_level, sizeof(up.experience_level), "guru");
    up.has_profile_image_url = true;
    snprintf(up.profile_image_url, sizeof(up.profile_image_url), "ftp://x");
    assert_int_equal(lagoon_Users_UpdateProfile(c, &up, &p), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "experience_level"));
    assert_true(has_violation(c, "profile_image_url"));
    lagoon_v1_GetProfileRequest gp = lagoon_v1_GetProfileRequest_init_zero;
    assert_int_equal(lagoon_Users_GetProfile(c, &gp, &p), LAGOON_OK);
    assert_string_equal(p.experience_level, "advanced");

    /* Public info of another user: no email. */
    char tok2[65];
    uint64_t other = new_user(c, "jay", lagoon_v1_Role_TEACHER, tok2);
    lagoon_set_token(c, tok);
    lagoon_v1_GetUserRequest gr = {other};
    lagoon_v1_PublicUser pu;
    assert_int_equal(lagoon_Users_Get(c, &gr, &pu), LAGOON_OK);
    assert_string_equal(pu.username, "jay");
    assert_int_equal(pu.role, lagoon_v1_Role_TEACHER);
    gr.user_id = 999999;
    assert_int_equal(lagoon_Users_Get(c, &gr, &pu), LAGOON_NOT_FOUND);
    (void)me_id;

    /* Teachers, three to a page, alphabetical, with a teacher added between pages. */
    char t[65], name[32];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof(name), "teacher%c", 'a' + i);
        new_user(c, name, lagoon_v1_Role_TEACHER, t);
    }
    lagoon_set_token(c, tok);
    lagoon_v1_ListUsersRequest lr = lagoon_v1_ListUsersRequest_init_zero;
    lr.page_size = 3;
    lagoon_v1_ListUsersResponse resp = lagoon_v1_ListUsersResponse_init_zero;
    char seen[16][51];
    int nseen = 0;
    for (int page = 0; page < 10; page++) {
        assert_int_equal(lagoon_Users_ListTeachers(c, &lr, &resp), LAGOON_OK);
        for (pb_size_t i = 0; i < resp.users_count; i++) {
            assert_int_equal(resp.users[i].role, lagoon_v1_Role_TEACHER);
            snprintf(seen[nseen++], 51, "%s", resp.users[i].username);
        }
        snprintf(lr.page_token, sizeof(lr.page_token), "%s", resp.next_page_token);
        pb_release(lagoon_v1_ListUsersResponse_fields, &resp);
        if (page == 0) { /* "teacherzz" sorts last: it must show up, once */
            char t3[65];
            new_user(c, "teacherzz", lagoon_v1_Role_TEACHER, t3);
            lagoon_set_token(c, tok);
        }
        if (lr.page_token[0] == '\0')
            break;
    }
    /* Other tests' teachers may be listed too: what matters is strict alphabetical order (so
     * no duplicate) and each of this test's teachers exactly once, the late one included. */
    for (int i = 1; i < nseen; i++)
        assert_true(strcasecmp(seen[i - 1], seen[i]) < 0);
    static const char *const mine[] = {"jay", "teachera", "teacherb", "teacherc", "teacherd", "teachere",
                                       "teacherzz"};
    for (size_t m = 0; m < sizeof(mine) / sizeof(mine[0]); m++) {
        int found = 0;
        for (int i = 0; i < nseen; i++)
            found += strcmp(seen[i], mine[m]) == 0;
        if (found != 1)
            fail_msg("%s listed %d times", mine[m], found);
    }
    /* Numbered pages. */
    memset(&lr, 0, sizeof(lr));
    lr.page_size = 3;
    lr.page = 2;
    assert_int_equal(lagoon_Users_ListTeachers(c, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.users_count, 3);
    /* Page 2 of 3 starts with the fourth name of the full listing. */
    assert_string_equal(resp.users[0].username, seen[3]);
    pb_release(lagoon_v1_ListUsersResponse_fields, &resp);
    /* Forged tokens are refused. */
    memset(&lr, 0, sizeof(lr));
    snprintf(lr.page_token, sizeof(lr.page_token), "forged-token");
    assert_int_equal(lagoon_Users_ListTeachers(c, &lr, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "page_token"));
    lr.page_token[0] = '\0';
    lr.page_size = 501;
    assert_int_equal(lagoon_Users_ListTeachers(c, &lr, &resp), LAGOON_INVALID_ARGUMENT);
    lagoon_close(c);
}

static void test_change_password(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char tok[65];
    new_user(c, "kim", 0, tok);
    lagoon_v1_TokenPair other;
    assert_int_equal(do_login(c, "kim", PASSWORD, &other), LAGOON_OK);
    lagoon_set_token(c, tok);
    lagoon_v1_ChangePasswordRequest cp = lagoon_v1_ChangePasswordRequest_init_zero;
    lagoon_v1_UsersEmpty e;
    snprintf(cp.current_password, sizeof(cp.current_password), "wrong password!");
    snprintf(cp.new_password, sizeof(cp.new_password), "a different passphrase");
    assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &e), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "current_password"));
    snprintf(cp.current_password, sizeof(cp.current_password), PASSWORD);
    snprintf(cp.new_password, sizeof(cp.new_password), "kim");
    assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &e), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation(c, "new_password"));
    snprintf(cp.new_password, sizeof(cp.new_password), "a different passphrase");
    assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &e), LAGOON_OK);
    /* This session stays; the other is signed out. */
    assert_int_equal(me(c, tok, NULL), LAGOON_OK);
    assert_int_equal(me(c, other.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "kim", "a different passphrase", NULL), LAGOON_OK);
    lagoon_close(c);
}

static void test_delete_account_cascades(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char tok[65];
    uint64_t id = new_user(c, "lou", 0, tok);
    lagoon_v1_TokenPair second;
    assert_int_equal(do_login(c, "lou", PASSWORD, &second), LAGOON_OK);
    lagoon_set_token(c, tok);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    lagoon_v1_UsersEmpty e;
    snprintf(dr.password, sizeof(dr.password), "wrong password!");
    assert_int_equal(lagoon_Users_DeleteAccount(c, &dr, &e), LAGOON_INVALID_ARGUMENT);
    snprintf(dr.password, sizeof(dr.password), PASSWORD);
    assert_int_equal(lagoon_Users_DeleteAccount(c, &dr, &e), LAGOON_OK);
    assert_int_equal(me(c, tok, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(me(c, second.access_token, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "lou", PASSWORD, NULL), LAGOON_UNAUTHENTICATED);
    /* Nothing of the user is left: not the row, its sessions or its tokens. */
    store_txn *t;
    store_error err;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    lagoon_v1_User u;
    assert_int_equal(store_get(t, &lagoon_table_users, id, &u, &err), LAGOON_NOT_FOUND);
    store_read_end(t);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 0);
    assert_int_equal(user_rows(&lagoon_table_one_time_tokens, lagoon_index_one_time_tokens_by_user, id), 0);
    /* And the indexes agree with the rows. */
    uint64_t problems = 99;
    assert_int_equal(store_verify(T->app->db, NULL, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
    lagoon_close(c);
}

/* Stores a session as it was before sessions carried the user's role and verified flag. */
static int strip_session_claims(store_txn *t, void *arg, store_error *err)
{
    lagoon_v1_Session s;
    int st = store_get(t, &lagoon_table_sessions, *(const uint64_t *)arg, &s, err);
    if (st != LAGOON_OK)
        return st;
    s.role = lagoon_v1_Role_ROLE_UNSPECIFIED;
    s.verified = false;
    return store_update(t, &lagoon_table_sessions, &s, err);
}

static void test_admin_role_and_activation(void **state)
{
    (void)state;
    lagoon_client *c = client();
    store_error err;
    uint64_t admin_id;
    if (account_create_admin(T->app, "root@example.com", "root", "an admin passphrase", &admin_id, &err) !=
        LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    assert_int_equal(account_create_admin(T->app, "bad", "root2", "an admin passphrase", NULL, &err),
                     LAGOON_INVALID_ARGUMENT);
    assert_string_equal(err.field, "email");
    lagoon_v1_TokenPair at;
    assert_int_equal(do_login(c, "root", "an admin passphrase", &at), LAGOON_OK);
    assert_int_equal(at.user.role, lagoon_v1_Role_ADMIN);
    char tok[65];
    uint64_t mia = new_user(c, "mia", 0, tok);
    /* A student cannot use admin methods. */
    lagoon_set_token(c, tok);
    lagoon_v1_SetRoleRequest sr = {mia, lagoon_v1_Role_TEACHER};
    lagoon_v1_PublicUser pu;
    assert_int_equal(lagoon_Users_SetRole(c, &sr, &pu), LAGOON_PERMISSION_DENIED);
    lagoon_set_token(c, at.access_token);
    assert_int_equal(lagoon_Users_SetRole(c, &sr, &pu), LAGOON_OK);
    assert_int_equal(pu.role, lagoon_v1_Role_TEACHER);
    /* The new role applies to the next call of her existing session. */
    rpc_caller who;
    assert_int_equal(app_authenticate(T->app, tok, &who), 0);
    assert_int_equal(who.role, lagoon_v1_Role_TEACHER);
    assert_int_equal(who.user_id, mia);
    /* A session stored without role: the user's row supplies it. */
    assert_int_equal(store_write(T->app->db, strip_session_claims, &who.session_id, &err), LAGOON_OK);
    assert_int_equal(app_authenticate(T->app, tok, &who), 0);
    assert_int_equal(who.role, lagoon_v1_Role_TEACHER);
    lagoon_v1_ListUsersRequest lr = lagoon_v1_ListUsersRequest_init_zero;
    lagoon_v1_ListUsersResponse lresp = lagoon_v1_ListUsersResponse_init_zero;
    lagoon_set_token(c, tok);
    assert_int_equal(lagoon_Users_ListStudents(c, &lr, &lresp), LAGOON_OK);
    pb_release(lagoon_v1_ListUsersResponse_fields, &lresp);
    /* Deactivation ends her sessions and stops sign-in. */
    lagoon_set_token(c, at.access_token);
    lagoon_v1_SetActiveRequest sa = {mia, false};
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    assert_false(p.active);
    assert_int_equal(me(c, tok, NULL), LAGOON_UNAUTHENTICATED);
    assert_int_equal(do_login(c, "mia", PASSWORD, NULL), LAGOON_PERMISSION_DENIED);
    sa.active = true;
    lagoon_set_token(c, at.access_token);
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    assert_int_equal(do_login(c, "mia", PASSWORD, NULL), LAGOON_OK);
    /* Admins cannot lock themselves out. */
    lagoon_set_token(c, at.access_token);
    sa.user_id = admin_id;
    sa.active = false;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_FAILED_PRECONDITION);
    lagoon_close(c);
}

static void tweak_stronger_hash(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->pwhash_opslimit = 2; /* more than the tests' minimum: existing hashes are outdated */
}

static void stored_hash(uint64_t id, char *out, size_t cap)
{
    store_txn *t;
    store_error err;
    lagoon_v1_User u;
    assert_int_equal(store_read_begin(T->app->db, &t, &err), LAGOON_OK);
    assert_int_equal(store_get(t, &lagoon_table_users, id, &u, &err), LAGOON_OK);
    store_read_end(t);
    snprintf(out, cap, "%s", u.password_hash);
}

static void test_hash_upgraded_on_login(void **state)
{
    (void)state;
    lagoon_client *c = client();
    lagoon_v1_UserProfile u;
    assert_int_equal(do_register(c, "ned@example.com", "ned", PASSWORD, 0, &u), LAGOON_OK);
    lagoon_close(c);
    char before[160], after[160];
    stored_hash(u.id, before, sizeof(before));
    assert_non_null(strstr(before, "$argon2id$"));
    assert_non_null(strstr(before, ",t=1,"));
    /* The same database under a server configured with stronger limits. */
    test_app_restart(T, tweak_stronger_hash);
    c = client();
    assert_int_equal(do_login(c, "ned", PASSWORD, NULL), LAGOON_OK);
    stored_hash(u.id, after, sizeof(after));
    assert_non_null(strstr(after, ",t=2,"));
    /* The upgraded hash still verifies. */
    assert_int_equal(do_login(c, "ned", PASSWORD, NULL), LAGOON_OK);
    lagoon_close(c);
}


/* ---- sessions per user are bounded ---------------------------------------------------------------- */

static void tweak_three_sessions(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->max_sessions = 3;
}

static void test_sessions_per_user_bounded(void **state)
{
    (void)state;
    test_app_restart(T, tweak_three_sessions);
    lagoon_client *c = client();
    char first[65];
    uint64_t id = new_user(c, "pia", 0, first); /* sign-in 1 */
    lagoon_v1_TokenPair tp[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(do_login(c, "pia", PASSWORD, &tp[i]), LAGOON_OK);
    /* The fourth sign-in ended the oldest session; the three newest work. */
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 3);
    assert_int_equal(me(c, first, NULL), LAGOON_UNAUTHENTICATED);
    for (int i = 0; i < 3; i++)
        assert_int_equal(me(c, tp[i].access_token, NULL), LAGOON_OK);
    /* Sessions whose refresh token expired go at the next sign-in. */
    test_clock_advance(T, 31LL * 24 * 3600 * 1000);
    assert_int_equal(do_login(c, "pia", PASSWORD, NULL), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 1);
    lagoon_close(c);
    test_app_restart(T, test_tweak_shared);
}

/* ---- every end of a session deletes its row -------------------------------------------------- */

/* The realtime side ends a session's open streams when its row is deleted: each way a
 * session ends must delete the row, not only make the token fail. */
static void test_every_session_end_deletes_its_row(void **state)
{
    (void)state;
    lagoon_client *c = client();
    store_error err;
    if (account_create_admin(T->app, "ends@example.com", "ends_admin", "an admin passphrase", NULL, &err) !=
        LAGOON_OK)
        fail_msg("create admin: %s", err.message);
    lagoon_v1_TokenPair admin, tp[3];
    assert_int_equal(do_login(c, "ends_admin", "an admin passphrase", &admin), LAGOON_OK);
    char token[65];
    uint64_t id = new_user(c, "sam", 0, token);
    for (int i = 0; i < 3; i++)
        assert_int_equal(do_login(c, "sam", PASSWORD, &tp[i]), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 4);
    lagoon_v1_AuthEmpty e = lagoon_v1_AuthEmpty_init_zero, out;
    /* Logout: that one. */
    lagoon_set_token(c, tp[0].access_token);
    assert_int_equal(lagoon_Auth_Logout(c, &e, &out), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 3);
    /* ChangePassword: all but the caller's. */
    lagoon_set_token(c, token);
    lagoon_v1_ChangePasswordRequest cp = lagoon_v1_ChangePasswordRequest_init_zero;
    lagoon_v1_UsersEmpty ue;
    snprintf(cp.current_password, sizeof(cp.current_password), PASSWORD);
    snprintf(cp.new_password, sizeof(cp.new_password), "sam's new passphrase");
    assert_int_equal(lagoon_Users_ChangePassword(c, &cp, &ue), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 1);
    /* LogoutAll: every one. */
    assert_int_equal(lagoon_Auth_LogoutAll(c, &e, &out), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 0);
    /* A reused refresh token: its session. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(do_login(c, "sam", "sam's new passphrase", &tp[i]), LAGOON_OK);
    lagoon_set_token(c, NULL);
    lagoon_v1_RefreshRequest rr = lagoon_v1_RefreshRequest_init_zero;
    snprintf(rr.refresh_token, sizeof(rr.refresh_token), "%s", tp[0].refresh_token);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &tp[2]), LAGOON_OK);
    assert_int_equal(lagoon_Auth_Refresh(c, &rr, &tp[2]), LAGOON_UNAUTHENTICATED);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 1);
    /* A password reset: every one. */
    lagoon_v1_ForgotPasswordRequest fr = lagoon_v1_ForgotPasswordRequest_init_zero;
    snprintf(fr.email, sizeof(fr.email), "sam@example.com");
    assert_int_equal(lagoon_Auth_ForgotPassword(c, &fr, &out), LAGOON_OK);
    char code[44];
    assert_true(test_mail_code(T, "sam@example.com", "Reset your password", code, MAIL_WAIT_MS));
    lagoon_v1_ResetPasswordRequest rq = lagoon_v1_ResetPasswordRequest_init_zero;
    snprintf(rq.token, sizeof(rq.token), "%s", code);
    snprintf(rq.new_password, sizeof(rq.new_password), "%s", PASSWORD);
    assert_int_equal(lagoon_Auth_ResetPassword(c, &rq, &out), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 0);
    /* A deactivation: every one. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(do_login(c, "sam", PASSWORD, &tp[i]), LAGOON_OK);
    lagoon_set_token(c, admin.access_token);
    lagoon_v1_SetActiveRequest sa = {id, false};
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 0);
    sa.active = true;
    assert_int_equal(lagoon_Users_SetActive(c, &sa, &p), LAGOON_OK);
    /* Deleting the account: every one, by cascade. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(do_login(c, "sam", PASSWORD, &tp[i]), LAGOON_OK);
    lagoon_set_token(c, tp[0].access_token);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), PASSWORD);
    assert_int_equal(lagoon_Users_DeleteAccount(c, &dr, &ue), LAGOON_OK);
    assert_int_equal(user_rows(&lagoon_table_sessions, lagoon_index_sessions_by_user, id), 0);
    lagoon_close(c);
}

/* ---- the outbox survives failures and restarts --------------------------------------------------- */

static void break_maildir(const char *dir, int broken)
{
    char cmd[256];
    /* Root ignores permissions: a plain file where tmp/ should be makes every delivery fail. */
    snprintf(cmd, sizeof(cmd), broken ? "rm -rf '%s/mail/tmp' && touch '%s/mail/tmp'" : "rm -f '%s/mail/tmp' && mkdir '%s/mail/tmp'",
             dir, dir);
    assert_int_equal(system(cmd), 0);
}

static void test_outbox_retries_and_survives_restart(void **state)
{
    (void)state;
    break_maildir(T->dir, 1);
    lagoon_client *c = client();
    assert_int_equal(do_register(c, "olga@example.com", "olga", PASSWORD, 0, NULL), LAGOON_OK);
    lagoon_close(c);
    /* Delivery fails for now: nothing arrives, and the email waits in the outbox. */
    char code[44];
    assert_false(test_mail_code(T, "olga@example.com", "Verify", code, 300));
    /* Restart with the email still undelivered: it is in the store, not in memory. */
    test_app_restart(T, test_tweak_shared);
    break_maildir(T->dir, 0);
    /* Its retry is due after a backoff on the app's clock. */
    test_clock_advance(T, 60LL * 1000);
    assert_true(test_mail_code(T, "olga@example.com", "Verify", code, MAIL_WAIT_MS));
    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    lagoon_v1_AuthEmpty out;
    c = client();
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    assert_int_equal(lagoon_Auth_VerifyEmail(c, &vr, &out), LAGOON_OK);
    lagoon_close(c);
}

/* ---- the authorization matrix ------------------------------------------------------------------ */

enum { ANON, STUDENT, TEACHER, ADMIN, NCALLERS };

typedef struct matrix_row {
    const wire_method *m;
    void (*fill)(void *req, uint64_t target); /* NULL: the default (empty) request */
    int want[NCALLERS];
} matrix_row;

static uint64_t g_target; /* the "owner" of targeted rows */

static void fill_get_target(void *req, uint64_t target) { ((lagoon_v1_GetUserRequest *)req)->user_id = target; }
static void fill_role_target(void *req, uint64_t target)
{
    ((lagoon_v1_SetRoleRequest *)req)->user_id = target;
    ((lagoon_v1_SetRoleRequest *)req)->role = lagoon_v1_Role_TEACHER;
}
static void fill_active_target(void *req, uint64_t target)
{
    ((lagoon_v1_SetActiveRequest *)req)->user_id = target;
    ((lagoon_v1_SetActiveRequest *)req)->active = true;
}

#define U LAGOON_UNAUTHENTICATED
#define D LAGOON_PERMISSION_DENIED
#define OK LAGOON_OK
#define IA LAGOON_INVALID_ARGUMENT
#define NF LAGOON_NOT_FOUND
#define FP LAGOON_FAILED_PRECONDITION

/* Empty requests: what each caller gets. Access control answers first (U, D); past it, the
 * method's own validation. */
static const matrix_row matrix[] = {
    {&lagoon_method_Auth_Register, NULL, {IA, IA, IA, IA}},
    {&lagoon_method_Auth_Login, NULL, {IA, IA, IA, IA}},
    {&lagoon_method_Auth_Refresh, NULL, {U, U, U, U}}, /* public; the empty token is what fails */
    {&lagoon_method_Auth_Logout, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Auth_LogoutAll, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Auth_Me, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Auth_VerifyEmail, NULL, {IA, IA, IA, IA}},
    {&lagoon_method_Auth_ResendVerification, NULL, {U, OK, OK, FP}}, /* the admin is verified */
    {&lagoon_method_Auth_ForgotPassword, NULL, {IA, IA, IA, IA}},
    {&lagoon_method_Auth_ResetPassword, NULL, {IA, IA, IA, IA}},
    {&lagoon_method_Users_GetProfile, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Users_UpdateProfile, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Users_Get, NULL, {U, NF, NF, NF}},
    {&lagoon_method_Users_ListTeachers, NULL, {U, OK, OK, OK}},
    {&lagoon_method_Users_Search, NULL, {U, IA, IA, IA}}, /* query is required */
    {&lagoon_method_Users_ListStudents, NULL, {U, D, OK, OK}},
    {&lagoon_method_Users_ChangePassword, NULL, {U, IA, IA, IA}},
    {&lagoon_method_Users_DeleteAccount, NULL, {U, IA, IA, IA}},
    {&lagoon_method_Users_SetRole, NULL, {U, D, D, IA}},
    {&lagoon_method_Users_SetActive, NULL, {U, D, D, NF}},
};

/* Calls about one user (the target): by anonymous, another user, the owner, an admin. */
enum { T_ANON, T_OTHER, T_OWNER, T_ADMIN, NTARGET };
static const matrix_row targeted[] = {
    {&lagoon_method_Users_Get, fill_get_target, {U, OK, OK, OK}},
    {&lagoon_method_Users_SetRole, fill_role_target, {U, D, D, OK}},
    {&lagoon_method_Users_SetActive, fill_active_target, {U, D, D, OK}},
};

#undef U
#undef D
#undef OK
#undef IA
#undef NF
#undef FP

static int matrix_call(lagoon_client *c, const char *login, const matrix_row *row, uint64_t target)
{
    lagoon_set_token(c, NULL);
    if (login != NULL) {
        /* A fresh session per call: Logout and LogoutAll end the ones before. */
        lagoon_v1_TokenPair tp;
        const char *pw = strcmp(login, "root") == 0 ? "an admin passphrase" : PASSWORD;
        assert_int_equal(do_login(c, login, pw, &tp), LAGOON_OK);
        lagoon_set_token(c, tp.access_token);
    }
    void *req = calloc(1, row->m->request_size);
    void *resp = calloc(1, row->m->response_size);
    assert_non_null(req);
    assert_non_null(resp);
    if (row->fill)
        row->fill(req, target);
    int st = lagoon_call(c, row->m, req, resp);
    if (st == LAGOON_OK && row->m->response->has_pointers)
        pb_release(row->m->response->desc, resp);
    free(req);
    free(resp);
    lagoon_set_token(c, NULL);
    return st;
}

static void test_authorization_matrix(void **state)
{
    (void)state;
    lagoon_client *c = client();
    char tok[65];
    store_error err;
    if (account_create_admin(T->app, "root@example.com", "root", "an admin passphrase", NULL, &err) != LAGOON_OK)
        assert_int_equal(err.code, LAGOON_ALREADY_EXISTS); /* an earlier test made it */
    new_user(c, "mx_student", lagoon_v1_Role_STUDENT, tok);
    new_user(c, "mx_teacher", lagoon_v1_Role_TEACHER, tok);
    g_target = new_user(c, "mx_owner", lagoon_v1_Role_STUDENT, tok);
    const char *logins[NCALLERS] = {NULL, "mx_student", "mx_teacher", "root"};

    /* Every method of these services has a row: a new method cannot skip the matrix. */
    for (size_t i = 0; i < lagoon_methods_count; i++) {
        const wire_method *m = lagoon_methods[i];
        if (strncmp(m->path, "/lagoon.v1.Auth/", 16) != 0 && strncmp(m->path, "/lagoon.v1.Users/", 17) != 0)
            continue;
        int rows = 0;
        for (size_t r = 0; r < sizeof(matrix) / sizeof(matrix[0]); r++)
            rows += matrix[r].m == m;
        if (rows != 1)
            fail_msg("%s has %d rows in the authorization matrix", m->path, rows);
    }
    for (size_t r = 0; r < sizeof(matrix) / sizeof(matrix[0]); r++) {
        for (int who = 0; who < NCALLERS; who++) {
            int st = matrix_call(c, logins[who], &matrix[r], 0);
            if (st != matrix[r].want[who])
                fail_msg("%s as caller %d: %s, want %s (%s)", matrix[r].m->path, who, lagoon_status_name(st),
                         lagoon_status_name(matrix[r].want[who]), lagoon_last_error(c)->detail.message);
        }
    }
    const char *tlogins[NTARGET] = {NULL, "mx_student", "mx_owner", "root"};
    for (size_t r = 0; r < sizeof(targeted) / sizeof(targeted[0]); r++) {
        for (int who = 0; who < NTARGET; who++) {
            int st = matrix_call(c, tlogins[who], &targeted[r], g_target);
            if (st != targeted[r].want[who])
                fail_msg("%s on the owner, as caller %d: %s, want %s (%s)", targeted[r].m->path, who,
                         lagoon_status_name(st), lagoon_status_name(targeted[r].want[who]),
                         lagoon_last_error(c)->detail.message);
        }
    }
    lagoon_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_reports_every_violation),
        cmocka_unit_test(test_login_by_email_and_username),
        cmocka_unit_test(test_login_throttling_and_expiry),
        cmocka_unit_test(test_registration_limit_counts_taken_names),
        cmocka_unit_test(test_email_budget_counts_what_sends),
        cmocka_unit_test(test_refresh_rotation_and_reuse),
        cmocka_unit_test(test_logout_and_logout_all),
        cmocka_unit_test(test_email_verification),
        cmocka_unit_test(test_password_reset),
        cmocka_unit_test(test_profiles_and_teachers),
        cmocka_unit_test(test_change_password),
        cmocka_unit_test(test_delete_account_cascades),
        cmocka_unit_test(test_admin_role_and_activation),
        cmocka_unit_test(test_hash_upgraded_on_login),
        cmocka_unit_test(test_sessions_per_user_bounded),
        cmocka_unit_test(test_every_session_end_deletes_its_row),
        cmocka_unit_test(test_authorization_matrix),
        cmocka_unit_test(test_outbox_retries_and_survives_restart),
    };
    return cmocka_run_group_tests_name("accounts", tests, setup, teardown);
}
