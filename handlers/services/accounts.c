/* accounts: passwords, sign-in throttling, validation (the tables are in
 * idl/lagoon/v1/accounts.proto; tokens are in account_tokens.c). See accounts.h. */
#include "accounts.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "wire.h" /* wire_email_problem, wire_url_problem */
#include "media_sign.h" /* media_sign_marker: a profile image's signed URL */

/* ---- passwords ------------------------------------------------------------------------------ */

/* Argon2 is meant to eat CPU. Its callers run on the server's hash lane (RPC_LANE_HASH,
 * cores - 1 threads by default), which is what bounds how many hashes run at once and so the
 * CPU and memory they take; lagoon-admin hashes on its own thread. */
int account_hash_password(const app *a, const char *password, char out[ACCOUNT_HASH_MAX])
{
    return crypto_pwhash_str(out, password, strlen(password), a->cfg.pwhash_opslimit, a->cfg.pwhash_memlimit);
}

int account_verify_password(const char *hash, const char *password)
{
    return crypto_pwhash_str_verify(hash, password, strlen(password)) == 0;
}

int account_needs_rehash(const app *a, const char *hash)
{
    return crypto_pwhash_str_needs_rehash(hash, a->cfg.pwhash_opslimit, a->cfg.pwhash_memlimit) != 0;
}

static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static char dummy_hash[ACCOUNT_HASH_MAX];
static const app *dummy_app;

static void dummy_init(void)
{
    char pw[ACCOUNT_TOKEN_CHARS + 1];
    uint8_t h[ACCOUNT_HASH_BYTES];
    account_token_new(pw, h);
    if (account_hash_password(dummy_app, pw, dummy_hash) != 0)
        dummy_hash[0] = '\0';
}

const char *account_dummy_hash(const app *a)
{
    dummy_app = a;
    pthread_once(&dummy_once, dummy_init);
    return dummy_hash;
}

/* ---- failed sign-ins ------------------------------------------------------------------------ */

void account_signin_user(char out[ACCOUNT_SIGNIN_KEY_MAX], uint64_t user_id)
{
    snprintf(out, ACCOUNT_SIGNIN_KEY_MAX, "user:%llu", (unsigned long long)user_id);
}

/* The pair's key puts the address first: a limiter cuts long keys, and a cut must never make
 * two addresses one. */
#define PAIR_KEY_MAX (APP_PEER_KEY_MAX + ACCOUNT_SIGNIN_KEY_MAX) /* whole: the limiter cuts it */
static void pair_key(char *out, size_t cap, const char *account, const char *peer)
{
    snprintf(out, cap, "%s %s", peer, account);
}

/* A known pair is the owner's usual address: only its own failures hold it. */
static int pair_known(app *a, const char *pair, int64_t now)
{
    return limiter_count(account_limits_of(a)->login_known, pair, now) > 0;
}

/* The longest wait that applies to the attempt (0: none). */
static uint32_t signin_wait(app *a, const account_signin *s, const char *pair, int known, int64_t now)
{
    uint32_t w = limiter_wait(account_limits_of(a)->login_pair, pair, now);
    if (known)
        return w;
    uint32_t wa = limiter_wait(account_limits_of(a)->login_account, s->account, now);
    uint32_t wb = limiter_wait(account_limits_of(a)->login_address, s->address, now);
    if (wa > w)
        w = wa;
    return wb > w ? wb : w;
}

uint32_t account_signin_begin(app *a, account_signin *s, int64_t now)
{
    char pair[PAIR_KEY_MAX];
    pair_key(pair, sizeof(pair), s->account, s->address);
    s->pending = 0;
    s->started_ms = now;
    int known = pair_known(a, pair, now);
    /* Look first, so that a refused attempt touches no count; then take each count. A take
     * can still refuse when another attempt took the last room in between: the counts
     * already taken are given back. */
    uint32_t w = signin_wait(a, s, pair, known, now);
    if (w != 0)
        return w;
    if ((w = limiter_take(account_limits_of(a)->login_pair, pair, now)) != 0)
        return w;
    if (known) {
        limiter_hit(account_limits_of(a)->login_account, s->account, now);
        limiter_hit(account_limits_of(a)->login_address, s->address, now);
    } else if ((w = limiter_take(account_limits_of(a)->login_account, s->account, now)) != 0) {
        limiter_refund(account_limits_of(a)->login_pair, pair, now);
        return w;
    } else if ((w = limiter_take(account_limits_of(a)->login_address, s->address, now)) != 0) {
        limiter_refund(account_limits_of(a)->login_account, s->account, now);
        limiter_refund(account_limits_of(a)->login_pair, pair, now);
        return w;
    }
    s->pending = 1;
    return 0;
}

void account_signin_failed(app *a, account_signin *s)
{
    (void)a;
    s->pending = 0; /* begin counted it as a failure already */
}

void account_signin_ok(app *a, account_signin *s, int64_t now)
{
    if (!s->pending)
        return;
    s->pending = 0;
    char pair[PAIR_KEY_MAX];
    pair_key(pair, sizeof(pair), s->account, s->address);
    limiter_reset(account_limits_of(a)->login_pair, pair);
    limiter_refund(account_limits_of(a)->login_account, s->account, s->started_ms);
    limiter_refund(account_limits_of(a)->login_address, s->address, s->started_ms);
    limiter_hit(account_limits_of(a)->login_known, pair, now);
}

void account_signin_cancel(app *a, account_signin *s)
{
    if (!s->pending)
        return;
    s->pending = 0;
    char pair[PAIR_KEY_MAX];
    pair_key(pair, sizeof(pair), s->account, s->address);
    limiter_refund(account_limits_of(a)->login_pair, pair, s->started_ms);
    limiter_refund(account_limits_of(a)->login_account, s->account, s->started_ms);
    limiter_refund(account_limits_of(a)->login_address, s->address, s->started_ms);
}

/* ---- validation -------------------------------------------------------------------------- */

/* Common passwords of 10 or more characters (shorter ones fail the length rule anyway),
 * compared case-insensitively. */
static const char *const common_passwords[] = {
    "1234567890", "12345678910", "123456789a", "0123456789", "0987654321", "1111111111", "1234512345",
    "1q2w3e4r5t", "1qaz2wsx3edc", "abcdefghij", "abc1234567", "a123456789", "aaaaaaaaaa", "asdfghjkl1",
    "asdfghjkl;", "baseball123", "basketball", "football12", "football123", "iloveyou12", "iloveyou123",
    "letmein123", "lovelove12", "monkey1234", "passw0rd12", "password01", "password1!", "password12",
    "password123", "password1234", "passwordpassword", "princess12", "q1w2e3r4t5", "qazwsxedc1",
    "qazwsxedcrfv", "qwerty1234", "qwerty12345", "qwertyuiop", "qwertyuiop1", "qweasdzxc1", "sunshine12",
    "superman12", "trustno1trustno1", "welcome123", "welcome1234", "whatever12", "zaq12wsxcde", "zxcvbnm123",
    "zxcvbnmasd", "1234qwerasdf", "administrator", "changeme123", "iloveyou1234", "starwars12",
    "dragon12345", "master12345", "shadow12345", "michael123", "jennifer12", "jordan2323", "harley1234",
    "guitar1234", "pianopiano", "musiclover", "music12345", "lagoon1234", "lagoonlagoon", "videovideo",
};

const char *account_password_problem(const char *password, const char *email, const char *username)
{
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)password; *p; p++)
        if ((*p & 0xC0) != 0x80)
            chars++;
    if (chars < ACCOUNT_PASSWORD_MIN)
        return "must be at least 10 characters";
    for (size_t i = 0; i < sizeof(common_passwords) / sizeof(common_passwords[0]); i++)
        if (strcasecmp(password, common_passwords[i]) == 0)
            return "is one of the most common passwords";
    if ((email && email[0] && strcasecmp(password, email) == 0) ||
        (username && username[0] && strcasecmp(password, username) == 0))
        return "must not be the email address or the username";
    return NULL;
}

const char *account_username_problem(const char *u)
{
    size_t n = strlen(u);
    if (n < 3 || n > 50)
        return "must be 3 to 50 characters";
    if (!isalnum((unsigned char)u[0]))
        return "must start with a letter or a digit";
    for (const char *p = u; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return "may only contain A-Z, a-z, 0-9, '_', '.' and '-'";
    return NULL;
}

const char *account_text_problem(const char *s, size_t max_chars, int multiline)
{
    static _Thread_local char too_long[48];
    size_t chars = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        int n;
        if (*p < 0x80) {
            cp = *p;
            n = 1;
        } else if ((*p & 0xE0) == 0xC0) {
            cp = *p & 0x1Fu;
            n = 2;
        } else if ((*p & 0xF0) == 0xE0) {
            cp = *p & 0x0Fu;
            n = 3;
        } else if ((*p & 0xF8) == 0xF0) {
            cp = *p & 0x07u;
            n = 4;
        } else {
            goto bad_utf8;
        }
        for (int i = 1; i < n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                goto bad_utf8;
            cp = (cp << 6) | (p[i] & 0x3Fu);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are not UTF-8. */
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad_utf8;
        if ((cp < 0x20 && !(multiline && (cp == '\n' || cp == '\t'))) || cp == 0x7F)
            return "must not contain control characters";
        chars++;
        p += n;
    }
    if (chars > max_chars) {
        snprintf(too_long, sizeof(too_long), "must be at most %zu characters", max_chars);
        return too_long;
    }
    return NULL;
bad_utf8:
    return "is not valid UTF-8";
}

int account_check(rpc_call *c, const char *field, const char *problem)
{
    if (problem != NULL)
        rpc_call_violation(c, field, "%s", problem);
    return problem == NULL;
}

/* ---- rows ---------------------------------------------------------------------------------- */

/* What a PublicUser shows of a User; a UserProfile shows it too, and more. */
#define ACCOUNT_COPY_STR(f) APP_STRCPY(out->f, u->f);
#define ACCOUNT_COPY_VAL(f) out->f = u->f;
#define ACCOUNT_PUBLIC_FIELDS(STR, VAL)                                                                     \
    VAL(id) STR(username) STR(full_name) VAL(role) STR(profile_image_url) STR(experience_level) STR(bio)   \
    VAL(created_at) VAL(instruments_count)                                                                 \
    for (pb_size_t i = 0; i < u->instruments_count; i++)                                                   \
        STR(instruments[i])

void account_profile(const lagoon_v1_User *u, lagoon_v1_UserProfile *out)
{
    wire_init(&lagoon_v1_UserProfile_info, out);
    ACCOUNT_PUBLIC_FIELDS(ACCOUNT_COPY_STR, ACCOUNT_COPY_VAL)
    ACCOUNT_COPY_STR(email)
    ACCOUNT_COPY_VAL(updated_at)
    ACCOUNT_COPY_VAL(last_login)
    ACCOUNT_COPY_VAL(verified)
    ACCOUNT_COPY_VAL(active)
    media_sign_marker(out->profile_image_url, sizeof(out->profile_image_url));
}

/* An uploaded profile image is stored as a marker ("media:profile-images/..."), which becomes
 * a signed URL of the media listener here, on every way out (media_sign.h). */
void account_public(const lagoon_v1_User *u, lagoon_v1_PublicUser *out)
{
    wire_init(&lagoon_v1_PublicUser_info, out);
    ACCOUNT_PUBLIC_FIELDS(ACCOUNT_COPY_STR, ACCOUNT_COPY_VAL)
    media_sign_marker(out->profile_image_url, sizeof(out->profile_image_url));
}

int account_queue_email(store_txn *t, int64_t now, const char *to, const char *subject, const char *body,
                        store_error *err)
{
    lagoon_v1_OutboxEmail m = lagoon_v1_OutboxEmail_init_zero;
    snprintf(m.to, sizeof(m.to), "%s", to);
    snprintf(m.subject, sizeof(m.subject), "%s", subject);
    snprintf(m.body, sizeof(m.body), "%s", body);
    m.created_at = now;
    m.next_attempt_at = m.created_at;
    return store_insert(t, &lagoon_table_outbox, &m, NULL, err);
}

/* Full pages of user_id's sessions, by lagoon_index_sessions_by_user (prefix holds the key:
 * keep it alive while the query is used). */
static store_query sessions_of(store_key *prefix, uint64_t user_id)
{
    store_key_reset(prefix);
    store_key_u64(prefix, user_id);
    store_query q = {0};
    q.table = &lagoon_table_sessions;
    q.index = lagoon_index_sessions_by_user;
    q.prefix = prefix->buf;
    q.prefix_len = prefix->len;
    q.page_size = STORE_PAGE_SIZE_MAX;
    return q;
}

int account_revoke_sessions(store_txn *t, uint64_t user_id, uint64_t keep_session, store_error *err)
{
    store_key prefix;
    app_id_page *l = malloc(sizeof(*l));
    if (l == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    /* Pages of ids, deleting after each scan; every page starts from the beginning again
     * since the previous page's rows are gone, except the kept one. */
    int st = LAGOON_OK;
    for (;;) {
        store_query q = sessions_of(&prefix, user_id);
        st = app_scan_ids(t, &q, l, err);
        if (st != LAGOON_OK)
            break;
        uint32_t deleted = 0;
        for (uint32_t i = 0; i < l->n && st == LAGOON_OK; i++) {
            if (l->ids[i] == keep_session)
                continue;
            st = store_delete(t, &lagoon_table_sessions, l->ids[i], err);
            deleted++;
        }
        if (st != LAGOON_OK || deleted == 0 || l->next_page_token[0] == '\0')
            break;
    }
    free(l);
    return st;
}

/* A session whose refresh token has expired, as of *now. */
static int session_expired(void *arg, const void *row)
{
    return ((const lagoon_v1_Session *)row)->refresh_expires_at <= *(const int64_t *)arg;
}

int account_trim_sessions(store_txn *t, uint64_t user_id, int64_t now, uint32_t max, store_error *err)
{
    store_key prefix;
    app_id_page *l = malloc(sizeof(*l));
    if (l == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    /* One page, oldest first (the index orders a user's sessions by id); the cap keeps a user
     * within it. marked: expired. */
    store_query q = sessions_of(&prefix, user_id);
    int st = app_scan_marked(t, &q, session_expired, &now, l, err);
    uint32_t live = 0;
    for (uint32_t i = 0; i < l->n; i++)
        live += !l->marked[i];
    for (uint32_t i = 0; i < l->n && st == LAGOON_OK; i++) {
        if (!l->marked[i]) {
            if (live < max)
                continue;
            live--;
        }
        st = store_delete(t, &lagoon_table_sessions, l->ids[i], err);
    }
    free(l);
    return st;
}

int account_sync_sessions(store_txn *t, const lagoon_v1_User *u, store_error *err)
{
    store_key prefix;
    app_id_page *l = malloc(sizeof(*l));
    if (l == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    /* Pages of ids, updating after each scan. An update keeps the session's index key, so the
     * page token resumes where the page ended. */
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int st;
    do {
        store_query q = sessions_of(&prefix, u->id);
        q.page_token = token;
        st = app_scan_ids(t, &q, l, err);
        for (uint32_t i = 0; i < l->n && st == LAGOON_OK; i++) {
            lagoon_v1_Session s;
            st = store_get(t, &lagoon_table_sessions, l->ids[i], &s, err);
            if (st != LAGOON_OK)
                break;
            if (s.role == u->role && s.verified == u->verified)
                continue;
            s.role = u->role;
            s.verified = u->verified;
            st = store_update(t, &lagoon_table_sessions, &s, err);
        }
        if (st == LAGOON_OK)
            memcpy(token, l->next_page_token, sizeof(token));
    } while (st == LAGOON_OK && token[0] != '\0');
    free(l);
    return st;
}

/* ---- the first administrator ------------------------------------------------------------------ */

/* The row to insert, read-only (a replay of the batch inserts the same row again), and the id
 * it got. */
typedef struct admin_op {
    const lagoon_v1_User *user;
    uint64_t id;
} admin_op;

static int admin_write(store_txn *t, void *arg, store_error *err)
{
    admin_op *op = arg;
    lagoon_v1_User u = *op->user;
    return store_insert(t, &lagoon_table_users, &u, &op->id, err);
}

/* Not an app_write_call: there is no call (lagoon-admin and tests), so it waits in store_write. */
int account_create_admin(app *a, const char *email, const char *username, const char *password, uint64_t *id,
                         store_error *err)
{
    const char *why;
    if ((why = wire_email_problem(email)) != NULL)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "email", "email %s", why);
    if ((why = account_username_problem(username)) != NULL)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "username", "username %s", why);
    if ((why = account_password_problem(password, email, username)) != NULL)
        return store_fail(err, LAGOON_INVALID_ARGUMENT, "password", "password %s", why);
    lagoon_v1_User u = lagoon_v1_User_init_zero;
    snprintf(u.email, sizeof(u.email), "%s", email);
    snprintf(u.username, sizeof(u.username), "%s", username);
    snprintf(u.full_name, sizeof(u.full_name), "%s", "Administrator");
    u.role = lagoon_v1_Role_ADMIN;
    u.verified = true;
    u.active = true;
    u.created_at = u.updated_at = app_now(a);
    if (account_hash_password(a, password, u.password_hash) != 0)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory hashing the password");
    admin_op op = {.user = &u, .id = 0};
    int st = store_write(a->db, admin_write, &op, err);
    if (st == LAGOON_OK && id != NULL)
        *id = op.id;
    return st;
}

/* ---- the module ----------------------------------------------------------------------------- */

static void accounts_stop(app *a, void *state)
{
    (void)a;
    account_limits *l = state;
    if (l == NULL)
        return;
    limiter_free(l->login_pair);
    limiter_free(l->login_account);
    limiter_free(l->login_address);
    limiter_free(l->login_known);
    limiter_free(l->registrations);
    limiter_free(l->resets);
    free(l);
}

static int accounts_start(app *a, void **state, rpc_error *err)
{
    account_limits *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    /* Known pairs: never waiting, forgotten APP_KNOWN_ADDRESS_MS after their last sign-in. */
    limiter_policy known = {.kind = LIMITER_SEEN, .max_events = UINT32_MAX,
                            .window_ms = (uint32_t)APP_KNOWN_ADDRESS_MS};
    size_t keys = a->cfg.limiter_keys;
    l->login_pair = limiter_new(&a->cfg.login_failures, keys);
    l->login_account = limiter_new(&a->cfg.login_account_failures, keys);
    l->login_address = limiter_new(&a->cfg.login_address_failures, keys);
    l->login_known = limiter_new(&known, keys);
    l->registrations = limiter_new(&a->cfg.registrations, keys);
    l->resets = limiter_new(&a->cfg.resets, keys);
    if (!l->login_pair || !l->login_account || !l->login_address || !l->login_known || !l->registrations ||
        !l->resets) {
        accounts_stop(a, l);
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    *state = l;
    return RPC_OK;
}

const app_module accounts_module = {"accounts", accounts_start, NULL, accounts_stop};
