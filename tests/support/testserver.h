/* Test support: a real Lagoon server on an ephemeral loopback port, in a thread of the test
 * process, and raw-socket helpers for speaking the protocol byte by byte. */
#ifndef LAGOON_TESTSERVER_H
#define LAGOON_TESTSERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "wire.h"

typedef struct test_server {
    rpc_server *server;
    uint16_t port;
    void *thread; /* pthread_t, opaque here */
    int run_status;
} test_server;

/* rpc_config with test defaults: 127.0.0.1, port 0, 2 loops, 2 workers, warn-level logs. */
void test_config(rpc_config *cfg);
/* Starts a server with cfg (NULL: test_config) and routes (NULL: the generated lagoon_routes).
 * Fails the test on error. */
void test_server_start(test_server *t, const rpc_config *cfg, const rpc_route *routes, size_t nroutes);
/* Graceful stop, join, free. */
void test_server_stop(test_server *t);

/* Polls cond(arg) every 10 ms for up to timeout_ms; returns its last value. Bounded waits
 * instead of sleeps keep tests fast and free of timing assertions. */
int test_wait_for(int (*cond)(void *), void *arg, uint32_t timeout_ms);

/* ---- raw protocol ------------------------------------------------------------------------ */

/* Connects to 127.0.0.1:port; with preface, sends LGN1 and consumes the SETTINGS frame. */
int raw_connect(uint16_t port, int preface);
/* The same with a small receive buffer, set before connecting (so that the TCP window is
 * negotiated for it: shrinking it afterwards can stall the connection in both directions). */
int raw_connect_small(uint16_t port, int preface, int rcvbuf);
void raw_send(int fd, const void *buf, size_t len);
/* Sends one frame built from the arguments (meta/payload may be NULL). */
void raw_send_frame(int fd, uint8_t type, uint8_t flags, uint32_t call_id, uint32_t code,
                    const void *meta, size_t meta_len, const void *payload, size_t payload_len);
/* Reads one whole frame within timeout_ms into buf (cap bytes); 1 = frame, 0 = EOF,
 * -1 = timeout or error. f's pointers point into buf. */
int raw_read_frame(int fd, uint8_t *buf, size_t cap, wire_frame *f, uint32_t timeout_ms);
/* Reads until EOF (or timeout): 1 if the server closed the connection. */
int raw_wait_closed(int fd, uint32_t timeout_ms);
/* The message of a GOAWAY or RESPONSE frame's ResponseMeta ("" if none). */
void raw_meta_message(const wire_frame *f, char *out, size_t cap);
/* Sends call id of method m as one REQUEST with END_STREAM: RequestMeta with token, key
 * (idempotency) and timeout_ms (NULL/0: none), body of type info (NULL: empty). */
void raw_send_call(int fd, uint32_t id, const wire_method *m, const char *token, const char *key, uint32_t timeout_ms,
                   const wire_msginfo *info, const void *body);
/* The status of the next RESPONSE within 10 s (other frames skipped), its call id, and its
 * message into msg (may be NULL). Fails the test if none comes. */
uint32_t raw_read_reply(int fd, uint32_t *id, char *msg, size_t cap);

#endif

/* ---- a whole server: store, accounts, mail --------------------------------------------------- */

#include "app.h"

typedef struct test_app {
    test_server srv;
    app *app;
    char dir[64];     /* temporary data directory, removed by test_app_stop */
    int64_t clock_ms; /* the app's clock (ms since the epoch); tests advance it */
} test_app;

/* Starts lagoond's full stack on a fresh temporary directory, with Argon2 at its minimum cost
 * (tests only) and the clock at t->clock_ms (set by this call to a fixed date). tweak, if not
 * NULL, may change the app config (and cfg for the RPC layer) first. */
void test_app_start(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg));
void test_app_stop(test_app *t);
/* test_app_start into a test_app of its own, on the heap; test_app_free stops and frees it. */
test_app *test_app_new(void (*tweak)(app_config *acfg, rpc_config *cfg));
void test_app_free(test_app *t);
/* Stops the server and the app and starts them again on the same data (tweak as above). */
void test_app_restart(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg));
void test_clock_advance(test_app *t, int64_t ms);

/* *ts = now (CLOCK_REALTIME) + ms, for pthread_cond_timedwait. */
struct timespec;
void test_deadline_in(struct timespec *ts, uint32_t ms);

/* The store's writer held, so that calls queue behind it and commit in one batch. */
typedef struct test_hold {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, released, done;
    /* 1: held until test_hold_stopping() (at most 10 s), then 400 ms more (past a drain of
     * 100 ms), instead of until test_hold_release(). */
    int until_stopping;
    int stopping; /* atomic */
} test_hold;
#define TEST_HOLD_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0}
/* Submits the holding write to t's store and waits until the writer runs it. */
void test_hold_writer(test_app *t, test_hold *h);
/* Waits until *flag (h->running, h->done) is set; 1 if it was within 10 s. */
int test_hold_wait(test_hold *h, const int *flag);
void test_hold_release(test_hold *h);
void test_hold_stopping(test_hold *h);

/* Waits (up to timeout_ms) for a delivered email to `to` whose subject contains `subject`,
 * copies the one-time code from its body into code (44 bytes), and deletes the file. 1 if
 * found. */
int test_mail_code(test_app *t, const char *to, const char *subject, char *code, uint32_t timeout_ms);
/* Number of delivered emails to `to`. */
int test_mail_count(test_app *t, const char *to);

/* ---- users through the real API ---------------------------------------------------------------- */

#include "lagoon.h"

#define TEST_PASSWORD "correct horse battery"

/* A blocking client connected to t (fails the test otherwise). */
lagoon_client *test_client(test_app *t);
/* Registers <name>@example.com / name with TEST_PASSWORD and the role, signs in, and returns
 * the user id; the access token goes to token (65 bytes). */
uint64_t test_user(lagoon_client *c, const char *name, int role, char *token);
/* test_user, then the emailed code through Auth/VerifyEmail: a verified account (its session
 * too), which may write to users who have not written to it first. */
uint64_t test_verified_user(test_app *t, lagoon_client *c, const char *name, int role, char *token);
/* Whether c's last failed call named field in a violation. */
int test_has_violation(lagoon_client *c, const char *field);
/* Fails the test (naming line) unless st is code and, with field, a violation names it. */
void test_expect(lagoon_client *c, int st, int code, const char *field, int line);

/* An administrator name (email name@example.com) made in the store, as lagoon-admin does, then
 * signed in through c: its id, and its access token into token (65 bytes). */
uint64_t test_admin_user(test_app *t, lagoon_client *c, const char *name, char *token);

/* A text message from the user of token to user `to`, through c (its token is set to token):
 * the message's id. Fails the test unless the Send succeeds. */
uint64_t test_send_text(lagoon_client *c, const char *token, uint64_t to, const char *text);
/* The rows of table tab in t's store, counted by scanning it (at most 1 000 pages of
 * STORE_PAGE_SIZE_MAX: the tests' tables are small). Fails the test on a store error. */
size_t test_count_rows(test_app *t, const store_table *tab);
/* test_app_start tweak for a server shared by many tests: every test connects from 127.0.0.1,
 * so the per-address limits (registrations, emails, failed sign-ins) are lifted, and so is the
 * per-user limit on Messages/Send (tests send many messages without moving the clock). */
void test_tweak_shared(app_config *acfg, rpc_config *cfg);
