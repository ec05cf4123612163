/* Test support: a real Lagoon server on an ephemeral loopback port, in a thread of the test
 * process, and raw-socket helpers for speaking the protocol byte by byte. */
#ifndef LAGOON_TESTSERVER_H
#define LAGOON_TESTSERVER_H

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
/* Stops the server and the app and starts them again on the same data (tweak as above). */
void test_app_restart(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg));
void test_clock_advance(test_app *t, int64_t ms);

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
/* test_app_start tweak for a server shared by many tests: every test connects from 127.0.0.1,
 * so the per-address limits (registrations, emails, failed sign-ins) are lifted, and so is the
 * per-user limit on Messages/Send (tests send many messages without moving the clock). */
void test_tweak_shared(app_config *acfg, rpc_config *cfg);
