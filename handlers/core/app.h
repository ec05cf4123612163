/* app: what the handlers share — the store, the clock, the settings, the realtime router and
 * the mail outbox worker, the service modules — and the write framework between a call and a
 * durable write (app_write_call).
 *
 * lagoond (and the tests) create one app with app_open, hand it to the RPC server as
 * rpc_config.app / .authenticate, and close it after the server has stopped. Handlers reach
 * it with app_of(call). */
#ifndef LAGOON_APP_H
#define LAGOON_APP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "access.h"       /* app_check: resource access as relations */
#include "app_settings.h" /* APP_SETTINGS: the fields below that lagoond takes as flags */
#include "lagoon_idl.h" /* lagoon_v1_Role: what rpc_caller.role holds (app_grants) */
#include "limiter.h"
#include "rpc.h"
#include "store.h"

/* Every field is 0 for its default (app_config_defaults). The fields named in APP_SETTINGS
 * (app_settings.h) are lagoond's flags too: their defaults, ranges and meaning are declared
 * there, once; the others are set by tests and tools.
 * Argon2id cost (libsodium crypto_pwhash_str): the defaults are libsodium's "interactive"
 * limits, about 64 MiB and a few tens of milliseconds per hash, on a worker thread; the number
 * of workers bounds the memory used at once. Tests lower them through app_config. */
typedef struct app app;
typedef struct app_module app_module;

/* Room for lagoond's --stun-urls / --turn-urls (each a comma-separated list) and --turn-secret,
 * with the NUL. */
#define APP_ICE_URLS_MAX 512
#define APP_TURN_SECRET_MAX 256
/* Room for the media listener's public base URL and for a tool's path, with the NUL. */
#define APP_MEDIA_URL_BASE_MAX 256
#define APP_TOOL_PATH_MAX 256

typedef struct app_config {
    uint64_t pwhash_opslimit;  /* APP_SETTINGS argon2-ops */
    size_t pwhash_memlimit;    /* bytes; APP_SETTINGS argon2-mem-kib */
    uint32_t access_ttl_s;     /* access token lifetime; 0 = 24 h */
    uint32_t refresh_ttl_s;    /* refresh token lifetime; 0 = 30 days */
    uint32_t verify_ttl_s;     /* email verification token; 0 = 24 h */
    uint32_t reset_ttl_s;      /* password reset token; 0 = 1 h */
    uint32_t max_sessions;     /* per user; APP_SETTINGS max-sessions (at most STORE_PAGE_SIZE_MAX) */
    /* Failed sign-ins (a wrong password in Login, ChangePassword or DeleteAccount), backoff
     * policies. An attempt counts as a failure from when it starts until its password is
     * found right. An address the account last signed in from less than APP_KNOWN_ADDRESS_MS
     * ago is held only by the first: others' failures cannot lock the owner out there.
     * "Address" is app_peer_key's: an IPv4 address, or an IPv6 /64. */
    limiter_policy login_failures;         /* per account and client address; 0s = 5 per 15 min,
                                            * then 1 s doubling to 15 min */
    limiter_policy login_account_failures; /* per account, every address together (a spread-out
                                            * attack); 0s = 100 per 15 min, then 1 s doubling to 15 min */
    limiter_policy login_address_failures; /* per client address, every account together (one
                                            * address spraying many accounts; a NAT shares it);
                                            * 0s = 50 per 15 min, then 1 s doubling to 15 min */
    limiter_policy registrations;  /* Register calls past validation (created or taken), per
                                    * address; budget, 0s = 20 per hour */
    limiter_policy resets;         /* emails on request (ForgotPassword, a ResendVerification that
                                    * sends), per address; budget, 0s = 10 per hour; counted
                                    * before the email is queued */
    limiter_policy sends;          /* Messages/Send per user; 0s = 60 (APP_SETTINGS sends-per-minute)
                                    * per minute, then 1 s doubling to 1 min */
    limiter_policy comments;       /* Comments/Add and Reply per user; budget, 0s = 30
                                    * (APP_SETTINGS comments-per-minute) per minute */
    limiter_policy user_searches;  /* Users/Search per user; budget, 0s = 30
                                    * (APP_SETTINGS user-searches-per-minute) per minute */
    limiter_policy teaching_requests; /* Teaching/Request and Invite per user; budget, 0s = 20
                                    * (APP_SETTINGS teaching-requests-per-day) per day */
    limiter_policy group_requests; /* Groups/Join and Invite per user; budget, 0s =
                                    * GROUPS_REQUESTS_PER_HOUR (60) per hour (groups.h) */
    limiter_policy plays;          /* Plays interactions (a Start counts one) per user; budget,
                                    * 0s = 1200 (APP_SETTINGS plays-per-minute) per minute */
    uint32_t plays_resume_min_pct; /* APP_SETTINGS plays-resume-min-percent (plays.c) */
    uint32_t plays_resume_max_pct; /* APP_SETTINGS plays-resume-max-percent */
    uint32_t plays_retention_s;    /* raw interactions kept; APP_SETTINGS plays-retention-days */
    enum store_sync sync;          /* APP_SETTINGS sync: STORE_SYNC_FULL unless benchmarking */
    limiter_policy video_chats;    /* VideoChats/Schedule and StartNow per user; budget, 0s = 50
                                    * (APP_SETTINGS video-chats-per-day) per day */
    limiter_policy pro_chats;      /* ProfessionalChats/Create per user; budget, 0s = 20
                                    * (APP_SETTINGS pro-chats-per-day) per day */
    uint32_t sched_poll_ms;        /* how often the scheduler looks for due jobs; 0 = 1 s (scheduler.h) */
    uint32_t party_members_max;    /* tests only: members a party may have; 0 (or more) = PARTY_MEMBERS_MAX */
    uint32_t reminder_lead_ms;     /* a video chat's reminder this long before its start;
                                    * APP_SETTINGS video-chat-reminder-minutes */
    uint32_t turn_ttl_s;           /* TURN credentials' lifetime; APP_SETTINGS turn-credential-ttl-s */
    /* ICE servers handed to call participants (Signalling/GetIceServers): comma-separated
     * stun:/turn: URLs, and coturn's use-auth-secret shared secret ("" = no TURN credentials).
     * lagoond's --stun-urls, --turn-urls, --turn-secret. */
    char stun_urls[APP_ICE_URLS_MAX];
    char turn_urls[APP_ICE_URLS_MAX];
    char turn_secret[APP_TURN_SECRET_MAX];
    /* Media (handlers/core/media_files.h; uploads.c, media.c, the media HTTP listener). Zero
     * fields take the defaults named in the file that uses them. */
    uint64_t upload_max_bytes;     /* the largest video upload; 0 = UPLOADS_MAX_BYTES_DEFAULT (uploads.h) */
    uint64_t media_quota_bytes;    /* bytes a user's uploads and media may hold; 0 = the default (uploads.h) */
    uint32_t upload_expiry_s;      /* an upload untouched this long is deleted; 0 = 24 h (uploads.h) */
    uint32_t media_workers;        /* processing jobs run at once (ffmpeg children); 0 = cores - 1, at least 1 */
    uint32_t media_job_timeout_s;  /* one ffmpeg/ffprobe run's wall-clock limit; 0 = the default (media.h) */
    uint32_t media_url_ttl_s;      /* signed media URLs' lifetime; 0 = 1 h */
    char media_url_base[APP_MEDIA_URL_BASE_MAX]; /* "http://host:port" clients reach the media
                                    * listener at; "" = no signed URLs (no listener configured) */
    char ffmpeg[APP_TOOL_PATH_MAX];  /* the ffmpeg and ffprobe to run; "" = "ffmpeg" / "ffprobe" in */
    char ffprobe[APP_TOOL_PATH_MAX]; /* PATH. Tests point them at failing stand-ins */
    /* A tool opening the store for administration (lagoon-admin): no media workers start
     * (and no interrupted job is re-queued): the next lagoond does that. */
    int no_media_workers;
    uint32_t event_retention_count; /* events kept per user; APP_SETTINGS event-retention-count */
    uint32_t event_retention_s;     /* and for at most this long; APP_SETTINGS event-retention-days */
    size_t subscriber_backlog;      /* bytes a subscription may fall behind before it is ended; 0 = 1 MiB */
    uint32_t limiter_keys;          /* keys each rate limiter tracks; APP_SETTINGS limiter-keys.
                                     * A full limiter forgets expired keys, then makes new keys
                                     * wait (limiter.h) */
    /* The clock, ms since the epoch; NULL = the real one. Tests inject theirs. */
    int64_t (*clock)(void *arg);
    void *clock_arg;
    /* Tests only (NULL in lagoond): called at the points of enum app_hook, on the thread doing
     * the work, so that a test can hold a call there and change the world under it. */
    void (*hook)(void *arg, int point);
    void *hook_arg;
    /* Tests only: modules started after the application's (app_modules), as if listed there. */
    const app_module *const *extra_modules;
    size_t nextra_modules;
} app_config;

/* Where app_config.hook is called. */
enum app_hook {
    APP_HOOK_HASH = 1,         /* a Login or Register job starts on the hash lane */
    APP_HOOK_LOGIN_VERIFIED,   /* Login: the password matched, the session is not yet written */
    APP_HOOK_ROUTER_TURN,      /* the realtime router is about to take its next batch of commands */
};

/* How long after its last successful sign-in an (account, address) pair stays known. */
#define APP_KNOWN_ADDRESS_MS (30LL * 24 * 3600 * 1000)
typedef struct mailer mailer;
typedef struct realtime realtime;

/* ---- service modules ------------------------------------------------------------------------ */

/* A service with state of its own (rate limiters, a worker, caches) declares a module; the
 * tables it uses are declared in the IDL. app_open starts the modules in order once the shared
 * layer is up (store, realtime router, mail worker); the server's drain calls their drain hooks
 * in reverse order; app_close stops them in reverse order before the shared layer stops. Every
 * hook may be NULL. A module's state is its own: app_state(a, &its_module). */
struct app_module {
    const char *name;
    /* Sets *state (may stay NULL). RPC_OK, or RPC_ERR with err filled: app_open then stops the
     * modules already started and fails. */
    int (*start)(app *a, void **state, rpc_error *err);
    /* The server is draining (SIGTERM): end what would hold the drain open. Any thread. */
    void (*drain)(app *a, void *state);
    /* After the server has stopped; frees the state. Also after a failed start of a later module. */
    void (*stop)(app *a, void *state);
    /* A service whose events are logged as references (the ids of the change, whose data is in
     * the service's own rows: text is stored once, not once per log) fills them in here. The
     * realtime router calls it for every event right before sending it, live or replayed, in
     * its read transaction t: when ev is one of the service's references, it writes the event
     * as clients see it into out and sets *filled; otherwise it leaves both alone. LAGOON_OK,
     * or a store error with err set (the router then resends from the log, and ends the
     * stream with the reason if that fails too). It keeps no state: the router may call it
     * before start or after stop. */
    int (*fill_event)(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                      store_error *err);
    /* A service that schedules jobs (scheduler.h) runs the due ones of its kinds here, on the
     * store's writer inside the transaction that deletes the job (app_now is the tick's time):
     * when job->kind is one of its own it does the job's work in t and sets *ran; otherwise it
     * leaves both alone. LAGOON_OK, or a store error (the write is dropped and the job retried
     * later, scheduler.h). Must not block. */
    int (*run_job)(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err);
};

/* The application's modules, in start order: handlers/services/modules.c. */
extern const app_module *const app_modules[];
extern const size_t app_modules_count;
#define APP_MODULES_MAX 32 /* application's and tests' together */

/* What the shared layer holds; each service's own state is its module's. */
struct app {
    store *db;
    app_config cfg;
    mailer *mail;
    realtime *rt;
    struct sched *jobs; /* the scheduler's thread (scheduler.h) */
    char data_dir[1024];
    const app_module *modules[APP_MODULES_MAX]; /* started, in order */
    void *module_state[APP_MODULES_MAX];
    size_t nmodules;
};

/* The state module m's start set; NULL if m is not started. */
void *app_state(const app *a, const app_module *m);

/* ev as it is sent to a subscriber: *sent is ev, or out when a module filled it (fill_event).
 * LAGOON_OK, or the module's store error. */
int app_fill_event(const app *a, store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out,
                   const lagoon_v1_Event **sent, store_error *err);

/* Fills defaults for every zero field. */
void app_config_defaults(app_config *cfg);

/* Opens the store under data_dir (creating it), the realtime router, the outbox worker
 * delivering into data_dir/mail (a maildir), and starts the modules. RPC_OK, or RPC_ERR with
 * err filled. */
int app_open(const char *data_dir, const app_config *cfg, app **out, rpc_error *err);
/* Stops the modules (reverse order), the mail worker and the router, and closes the store.
 * After the RPC server has stopped. */
void app_close(app *a);

/* Copies string src into the char array dst (a nanopb string field), cut to fit (as snprintf
 * would, at a fraction of its cost: rows and responses copy many strings). */
static inline void app_copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}
#define APP_STRCPY(dst, src) app_copy_str((dst), sizeof(dst), (src))

/* app_copy_str for text that may be longer than dst: cut on a UTF-8 character boundary, so
 * that a cut never leaves half a character (clients reject a string that is not UTF-8). */
static inline void app_copy_utf8(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The shared state of the call's server. */
static inline app *app_of(const rpc_call *c)
{
    return (app *)rpc_call_app(c);
}

/* The app's clock, ms since the epoch. Inside a write function it is the write's in->now, on
 * every path below it (events, notifications, outbox rows): one time for the whole write and
 * for its replays. */
int64_t app_now(const app *a);
/* The write framework's: pins app_now on this thread to now while a write function runs
 * (0 unpins). */
void app_now_pin(int64_t now);

/* Calls the test hook, if any. */
static inline void app_hook_point(const app *a, enum app_hook point)
{
    if (a->cfg.hook)
        a->cfg.hook(a->cfg.hook_arg, (int)point);
}

/* Starts the thread main(arg) of a worker that learns of commits through on_commit
 * (store_subscribe, before the thread exists, so that it misses none): the mail worker and the
 * realtime router. RPC_OK, or RPC_ERR with err "cannot start the <what>" and the subscription
 * undone (the caller frees arg). */
int app_start_commit_worker(app *a, store_subscriber_fn on_commit, void *arg, void *(*main)(void *),
                            pthread_t *thread, const char *what, rpc_error *err);

/* The RPC layer's drain hook (rpc_config.on_drain, arg = the app): ends the subscriptions,
 * which would otherwise hold the drain open, and calls the modules' drain hooks. */
void app_on_drain(void *arg);

/* The token check of the RPC layer (rpc_config.authenticate, arg = the app). */
int app_authenticate(void *arg, const char *token, rpc_caller *out);
/* The access levels a user with this role and verified flag holds (rpc_caller.grants). */
uint32_t app_grants(uint8_t role, int verified);
/* rpc_config.access_denied: why a level is refused. */
#define APP_ACCESS_LEVELS 5
extern const char *const app_access_denied[APP_ACCESS_LEVELS];

/* "1.2.3.4" of "1.2.3.4:5678" (or "[::1]" of "[::1]:5678"), into out: the client's whole
 * address, as a session records it. */
void app_peer_address(const rpc_call *c, char *out, size_t cap);

/* The client's address as the rate limits count it (the key of every per-address limit):
 * an IPv4 address as such ("1.2.3.4"); an IPv6 address by its /64 ("2001:db8:1:2::/64"),
 * since one IPv6 host has a whole /64 to pick addresses from (the RPC layer counts
 * connections the same way); an IPv4-mapped IPv6 address as the IPv4 address. At most
 * APP_PEER_KEY_MAX bytes with the NUL. */
#define APP_PEER_KEY_MAX 64
void app_peer_key(const rpc_call *c, char out[APP_PEER_KEY_MAX]);
/* The same from a peer string as rpc_call_peer gives it ("host:port" or "[v6]:port"); a host
 * that is not an IP address is used as it is (cut to fit). Pure: tests call it directly. */
void app_address_key(const char *peer, char out[APP_PEER_KEY_MAX]);

/* ---- resource checks ----------------------------------------------------------------------
 * app_check and the policies of relations: access.h (included above). */

/* ---- durable writes for handlers --------------------------------------------------------- */

/* A write method is its write function and a handler of a few lines (Users/UpdateProfile,
 * users.c):
 *
 *     static int profile_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
 *     {
 *         lagoon_v1_User u;     // in->req is the UpdateProfileRequest, resp the UserProfile
 *         int st = user_edit(t, in, in->who.user_id, apply_profile, &u, err);  // get, change, update
 *         if (st == LAGOON_OK)
 *             account_profile(&u, resp);
 *         return st;
 *     }
 *     int handle_Users_UpdateProfile(rpc_call *c, const lagoon_v1_UpdateProfileRequest *req,
 *                                    lagoon_v1_UserProfile *resp)
 *     {
 *         (void)resp;           // the field rules in users.proto have been checked
 *         if (!req->set_instruments && req->instruments_count)
 *             return rpc_call_violation(c, "set_instruments", "must be true to change instruments");
 *         return app_write_call(c, profile_write, NULL);
 *     }
 *
 * The framework owns the write's state: it runs the function on the store's writer inside the
 * transaction, with every input read-only (the store replays a batch after the map grew: a
 * function that only reads `in` and rewrites `resp` redoes the same work by construction), and
 * ends the call once the write is durable — with the response, or with the function's refusal
 * (store_fail: its changes are dropped; message, and a violation when it names a field).
 * Handler state that does not fit in the request goes in app_write_args (the call's memory:
 * freed with the call on every path). Idempotency is the framework's too: a method marked
 * (lagoon.v1.idempotent) in its .proto runs once per (caller, method, RequestMeta.
 * idempotency_key) for APP_IDEMPOTENCY_TTL_MS; a retry gets the first response. */

/* What a write function reads. Filled by app_write_call; the function must not change it. */
typedef struct app_write_in {
    const app *a;
    rpc_caller who;    /* the caller, as the handler saw it */
    int64_t now;       /* app_now when the handler submitted: one time for the write and its replays */
    const void *req;   /* the call's request (decoded, rules checked) */
    const void *args;  /* the handler's app_write_args, or NULL */
    int replayed;      /* for app_after_fn: the response is an earlier call's (same idempotency key) */
} app_write_in;

/* Runs inside the write transaction: reads in, writes the store, fills resp (the call's response
 * struct, set to its defaults before each run). LAGOON_OK keeps the changes and answers resp;
 * any other status (store_fail) drops them and is the call's error. app_refuse_kept refuses
 * the call but keeps the changes. Must not block. */
typedef int (*app_write_fn)(store_txn *t, const app_write_in *in, void *resp, store_error *err);

/* Optional, on the writer thread once the write is durable or failed: side effects outside the
 * store (give back a rate-limit token, queue a mail). status is the write's, with its error
 * already set on the call (app_store_error); returns the call's final status. */
typedef int (*app_after_fn)(rpc_call *call, const app_write_in *in, void *resp, int status);

/* Submits fn to the store's group commit and keeps the call. Returns RPC_PENDING for the
 * handler to return, or an error status (RESOURCE_EXHAUSTED with retry-after when the write
 * queue is full; nothing ran). Any thread that holds the call. */
int app_write_call(rpc_call *call, app_write_fn fn, const void *args);
int app_write_call_then(rpc_call *call, app_write_fn fn, const void *args, app_after_fn after);

/* A module whose state is one per-user budget (the limiter app_write_call_limited takes from):
 * app_budget_start is its start, from policy p with kind LIMITER_BUDGET, where a 0 max_events
 * or window_ms takes max_default or window_default (0: leave it); app_budget_stop its stop. */
int app_budget_start(const app *a, limiter_policy p, uint32_t max_default, uint32_t window_default, void **state,
                     rpc_error *err);
void app_budget_stop(app *a, void *state);

/* app_write_call counted against the caller's budget in limiter l (key "<key_prefix>:<user
 * id>"): spent, the call is refused at once with RESOURCE_EXHAUSTED "too many <what>; retry in
 * N s" and retry-after; otherwise it is counted when it starts and given back when it stores
 * nothing (refused, failed, or a retry answered with its kept response: in->replayed). fn gets
 * no args. Checked after the request's rules, so an invalid request costs nothing. */
int app_write_call_limited(rpc_call *call, app_write_fn fn, limiter *l, const char *key_prefix, const char *what);

/* size zeroed bytes of the call's own memory for a write's arguments (rpc_call_alloc): read
 * through in->args, freed with the call. NULL when memory is short: answer
 * app_out_of_memory(call). */
void *app_write_args(rpc_call *call, size_t size);
int app_out_of_memory(rpc_call *call);

/* For a write function: refuse the call with code (and a violation naming field, when not
 * NULL, as store_fail) while keeping what the write changed — a stolen refresh token that
 * revokes its session, say. Returns LAGOON_OK for the function to return. (What a function
 * leaves in err when it returns LAGOON_OK is ignored: a lookup it found empty is no refusal.) */
int app_refuse_kept(const app_write_in *in, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* For a write function of an idempotent method whose response shows a resource that can be
 * deleted (the message an Edit returns): ties the kept response to it, so that deleting the
 * resource can drop it (app_forget_results) and a retry cannot bring back what was deleted —
 * it runs again instead. */
void app_result_shows(const app_write_in *in, uint64_t resource_id);
/* In a write that deletes resource_id: drops the kept responses of method m that show it. */
int app_forget_results(store_txn *t, const wire_method *m, uint64_t resource_id, store_error *err);

/* How long the response of an idempotent call is kept for its retries. */
#define APP_IDEMPOTENCY_TTL_MS (24LL * 3600 * 1000)
/* Responses larger than this (encoded) are not kept: a retry runs again. No idempotent
 * method's response comes near it (IdempotentResult.response in writes.options). */
#define APP_IDEMPOTENT_RESPONSE_MAX 65536
/* Expired results a write that records one deletes: more than it adds, so the table stays
 * at about what one TTL of idempotent calls leaves. */
#define APP_IDEMPOTENT_PURGE 4

/* One page of q's row ids (q->page_size of them at most; 0 = the store's default). A scan's
 * callback must not write, so a write that changes or deletes what it finds takes the ids
 * first, then acts, page after page. 4 KiB: fine on the writer thread's stack. */
typedef struct app_id_page {
    uint64_t ids[STORE_PAGE_SIZE_MAX];
    uint8_t marked[STORE_PAGE_SIZE_MAX]; /* app_scan_marked's verdict on each row */
    uint32_t n;
    char next_page_token[STORE_PAGE_TOKEN_MAX + 1]; /* "" on the last page */
} app_id_page;
int app_scan_ids(store_txn *t, const store_query *q, app_id_page *page, store_error *err);
/* The same, with mark(arg, row) deciding each row: 1 or 0 its marked[] (an expired session),
 * -1 to end the page there without it (the first of an index's rows not expired yet). */
typedef int (*app_mark_fn)(void *arg, const void *row);
int app_scan_marked(store_txn *t, const store_query *q, app_mark_fn mark, void *arg, app_id_page *page,
                    store_error *err);
/* Calls fn(t, id, arg, err) for every row id of q, a page of ids at a time (so fn may write),
 * until one fails: its status, or LAGOON_OK. q's paging fields are this function's. */
typedef int (*app_id_fn)(store_txn *t, uint64_t id, void *arg, store_error *err);
int app_each_id(store_txn *t, store_query *q, app_id_fn fn, void *arg, store_error *err);

/* The store's error as the call's: message, and a field violation when it names a field. */
int app_store_error(rpc_call *call, int status, const store_error *err);

#endif
