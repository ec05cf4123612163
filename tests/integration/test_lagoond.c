/* The lagoond binary itself: flags, environment, the per-call log, and the SIGTERM drain. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lagoon_stubs.h"
#include "testserver.h"

typedef struct daemon {
    pid_t pid;
    int err_fd;      /* lagoond's stderr */
    char log[65536]; /* everything read from it so far */
    char data[64];   /* its own temporary data directory (removed by cleanup) */
    size_t log_len;
    uint16_t port;
} daemon_t;

/* Reads lagoond's stderr for up to timeout_ms, or until needle appears. 1 if found. */
static int read_log_until(daemon_t *d, const char *needle, uint32_t timeout_ms)
{
    for (uint32_t waited = 0;; waited += 50) {
        if (strstr(d->log, needle))
            return 1;
        if (waited >= timeout_ms)
            return 0;
        struct pollfd p = {d->err_fd, POLLIN, 0};
        if (poll(&p, 1, 50) == 1 && d->log_len < sizeof(d->log) - 1) {
            ssize_t n = read(d->err_fd, d->log + d->log_len, sizeof(d->log) - 1 - d->log_len);
            if (n > 0) {
                d->log_len += (size_t)n;
                d->log[d->log_len] = '\0';
            }
        }
    }
}

/* When not 0, the next start_daemon runs lagoond with this file descriptor limit. */
static rlim_t child_nofile;

static void start_daemon(daemon_t *d, const char *const *extra, const char *env)
{
    memset(d, 0, sizeof(*d));
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    snprintf(d->data, sizeof(d->data), "/tmp/lagoond-test-XXXXXX");
    assert_non_null(mkdtemp(d->data));
    const char *data = d->data;
    d->pid = fork();
    assert_true(d->pid >= 0);
    if (d->pid == 0) {
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        if (env)
            putenv((char *)env);
        if (child_nofile) {
            struct rlimit rl = {child_nofile, child_nofile};
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        const char *argv[32] = {LAGOOND_PATH, "--listen", "127.0.0.1:0", "--data", data, "--threads", "2",
                                "--debug-methods"};
        int n = 8;
        for (int i = 0; extra && extra[i] && n < 30; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        execv(LAGOOND_PATH, (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    d->err_fd = pipefd[0];
    if (!read_log_until(d, "listening on 127.0.0.1:", 10000))
        fail_msg("lagoond did not start; it said: %s", d->log);
    const char *p = strstr(d->log, "listening on 127.0.0.1:") + strlen("listening on 127.0.0.1:");
    d->port = (uint16_t)atoi(p);
    assert_true(d->port > 0);
}

static void cleanup(daemon_t *d)
{
    char cmd[128];
    close(d->err_fd);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->data);
    assert_int_equal(system(cmd), 0);
    free(d);
}

static int wait_exit(daemon_t *d, uint32_t timeout_ms)
{
    for (uint32_t waited = 0; waited < timeout_ms; waited += 20) {
        int status;
        pid_t r = waitpid(d->pid, &status, WNOHANG);
        if (r == d->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    return -1;
}

static void test_sigterm_drains_open_calls(void **state)
{
    (void)state;
    daemon_t *d = malloc(sizeof(*d));
    start_daemon(d, NULL, NULL);
    int fd = raw_connect(d->port, 1);
    /* A call in flight (answered from a worker after 700 ms), carrying a token that must never
     * be logged. */
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.auth_token, sizeof(meta.auth_token), "SECRET-TOKEN-0123456789");
    snprintf(meta.request_id, sizeof(meta.request_id), "drain-1");
    uint8_t mb[256], pb[64];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    req.delay_ms = 700;
    req.payload.size = 2;
    memcpy(req.payload.bytes, "hi", 2);
    long pl = wire_encode(&lagoon_v1_EchoRequest_info, &req, pb, sizeof(pb), NULL);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 41, lagoon_method_Debug_Echo.id, mb, (size_t)ml, pb,
                   (size_t)pl);
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(kill(d->pid, SIGTERM), 0);

    uint8_t buf[4096];
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_GOAWAY);
    assert_int_equal(f.code, 41); /* the last call it will still answer */
    /* A call started after GOAWAY is refused... */
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 42, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 42);
    assert_int_equal(f.code, LAGOON_UNAVAILABLE);
    /* ...the one in flight is finished... */
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(f.type, WIRE_RESPONSE);
    assert_int_equal(f.call_id, 41);
    assert_int_equal(f.code, LAGOON_OK);
    /* ...and then the connection closes and the process exits 0. */
    assert_true(raw_wait_closed(fd, 5000));
    close(fd);
    assert_int_equal(wait_exit(d, 10000), 0);
    read_log_until(d, "stopped", 2000);
    assert_non_null(strstr(d->log, "method=/lagoon.v1.Debug/Echo status=OK"));
    assert_non_null(strstr(d->log, "req_id=drain-1"));
    assert_null(strstr(d->log, "SECRET-TOKEN"));
    cleanup(d);
}

static void test_flags_and_environment(void **state)
{
    (void)state;
    /* A bad value is refused with a message and exit status 2. */
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], STDERR_FILENO);
        execl(LAGOOND_PATH, LAGOOND_PATH, "--max-frame-size", "12", (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    char out[1024] = {0};
    size_t got = 0;
    ssize_t n;
    while ((n = read(pipefd[0], out + got, sizeof(out) - 1 - got)) > 0)
        got += (size_t)n;
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
    assert_non_null(strstr(out, "max-frame-size"));

    /* Limits come from the environment too: SETTINGS shows them. */
    daemon_t *d = malloc(sizeof(*d));
    start_daemon(d, NULL, "LAGOON_MAX_CONCURRENT_CALLS=33");
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", d->port, NULL, &c, NULL), LAGOON_OK);
    assert_int_equal(lagoon_settings(c)->max_concurrent_calls, 33);
    lagoon_close(c);
    kill(d->pid, SIGINT);
    assert_int_equal(wait_exit(d, 10000), 0);
    cleanup(d);
}

/* The Debug service (delays, streams: load on demand) is served only with --debug-methods. */
static void test_debug_methods_off_by_default(void **state)
{
    (void)state;
    daemon_t *d = malloc(sizeof(*d));
    const char *extra[] = {"--debug-methods=0", NULL}; /* the last flag wins over start_daemon's */
    start_daemon(d, extra, NULL);
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", d->port, NULL, &c, NULL), LAGOON_OK);
    lagoon_v1_EchoRequest req = lagoon_v1_EchoRequest_init_zero;
    lagoon_v1_EchoResponse resp;
    assert_int_equal(lagoon_Debug_Echo(c, &req, &resp), LAGOON_UNIMPLEMENTED);
    lagoon_v1_HealthCheckRequest hreq = lagoon_v1_HealthCheckRequest_init_zero;
    lagoon_v1_HealthCheckResponse hresp;
    assert_int_equal(lagoon_Health_Check(c, &hreq, &hresp), LAGOON_OK);
    lagoon_close(c);
    kill(d->pid, SIGTERM);
    assert_int_equal(wait_exit(d, 10000), 0);
    cleanup(d);
}

/* A client's strings reach the log (request ids): a newline in one must not start a record. */
static void test_log_lines_cannot_be_forged(void **state)
{
    (void)state;
    daemon_t *d = malloc(sizeof(*d));
    start_daemon(d, NULL, NULL);
    int fd = raw_connect(d->port, 1);
    lagoon_v1_RequestMeta meta = lagoon_v1_RequestMeta_init_zero;
    snprintf(meta.request_id, sizeof(meta.request_id), "r1\n2099-01-01T00:00:00.000Z error FORGED");
    uint8_t mb[256], buf[4096];
    long ml = wire_encode(&lagoon_v1_RequestMeta_info, &meta, mb, sizeof(mb), NULL);
    assert_true(ml > 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 1, lagoon_method_Health_Check.id, mb, (size_t)ml, NULL, 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, 0x12345678u, mb, (size_t)ml, NULL, 0);
    wire_frame f;
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    assert_int_equal(raw_read_frame(fd, buf, sizeof(buf), &f, 5000), 1);
    close(fd);
    kill(d->pid, SIGTERM);
    assert_int_equal(wait_exit(d, 10000), 0);
    read_log_until(d, "stopped", 2000);
    /* Whether the server refused the id or logged it, no record starts with the forged text. */
    assert_null(strstr(d->log, "\n2099-01-01T00:00:00.000Z error FORGED"));
    assert_non_null(strstr(d->log, "req_id=r1?2099-01-01T00:00:00.000Z error FORGED"));
    cleanup(d);
}

static int count_lines_with(const char *log, const char *needle)
{
    int n = 0;
    for (const char *p = log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Under a small RLIMIT_NOFILE, max-connections is lowered to what fits; connections beyond it
 * are refused with GOAWAY (no EMFILE loop), the refusals are logged once a second at most, and
 * the server serves normally once they are gone. */
static void test_connections_fit_the_fd_limit(void **state)
{
    (void)state;
    daemon_t *d = malloc(sizeof(*d));
    child_nofile = 200;
    const char *extra[] = {"--max-connections", "20000", "--max-connections-per-address", "1000", NULL};
    start_daemon(d, extra, NULL);
    child_nofile = 0;
    assert_non_null(strstr(d->log, "max-connections lowered from 20000 to 128"));
    enum { N = 300 };
    int fds[N], refused = 0;
    uint8_t buf[1024];
    for (int i = 0; i < N; i++) {
        fds[i] = raw_connect(d->port, 0);
        raw_send(fds[i], WIRE_PREFACE, WIRE_PREFACE_LEN);
    }
    for (int i = 0; i < N; i++) {
        wire_frame f;
        if (raw_read_frame(fds[i], buf, sizeof(buf), &f, 5000) == 1 && f.type == WIRE_GOAWAY) {
            char msg[256];
            raw_meta_message(&f, msg, sizeof(msg));
            assert_non_null(strstr(msg, "too many connections (max 128)"));
            refused++;
        }
    }
    assert_int_equal(refused, N - 128);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    lagoon_client *c = NULL;
    int st = LAGOON_UNAVAILABLE;
    for (int i = 0; i < 100 && st != LAGOON_OK; i++) { /* until the server has seen the closes */
        st = lagoon_connect("127.0.0.1", d->port, NULL, &c, NULL);
        if (st == LAGOON_OK) {
            lagoon_v1_HealthCheckRequest req = lagoon_v1_HealthCheckRequest_init_zero;
            lagoon_v1_HealthCheckResponse resp;
            st = lagoon_Health_Check(c, &req, &resp);
            lagoon_close(c);
        }
        if (st != LAGOON_OK) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(st, LAGOON_OK);
    kill(d->pid, SIGTERM);
    assert_int_equal(wait_exit(d, 10000), 0);
    read_log_until(d, "stopped", 2000);
    /* 172 refusals within a second or two: a handful of lines, not one each. */
    assert_true(count_lines_with(d->log, "refused: max_connections") <= 5);
    cleanup(d);
}

/* Runs a shell command line, returns its exit status and output. */
static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_lagoon_admin(void **state)
{
    (void)state;
    /* lagoond creates the database; lagoon-admin works on it while lagoond is stopped. */
    daemon_t *d = malloc(sizeof(*d));
    start_daemon(d, NULL, NULL);
    kill(d->pid, SIGTERM);
    assert_int_equal(wait_exit(d, 10000), 0);
    static char out[65536];
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "echo 'an admin passphrase' | %s create-admin --data %s --email root@example.com "
             "--username root 2>&1", LAGOON_ADMIN_PATH, d->data);
    if (run(cmd, out, sizeof(out)) != 0)
        fail_msg("create-admin: %s", out);
    assert_non_null(strstr(out, "administrator root created"));
    /* A weak password is refused with the reason. */
    snprintf(cmd, sizeof(cmd), "echo 'short' | %s create-admin --data %s --email r2@example.com --username second 2>&1",
             LAGOON_ADMIN_PATH, d->data);
    assert_int_equal(run(cmd, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "password"));
    snprintf(cmd, sizeof(cmd), "%s verify --data %s 2>&1", LAGOON_ADMIN_PATH, d->data);
    if (run(cmd, out, sizeof(out)) != 0)
        fail_msg("verify: %s", out);
    snprintf(cmd, sizeof(cmd), "%s stats --data %s 2>&1", LAGOON_ADMIN_PATH, d->data);
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "t/users"));

    /* lagoond on that database: the administrator signs in and has the role. (A later --data
     * wins over the one start_daemon passes.) */
    const char *extra[] = {"--data", d->data, NULL};
    daemon_t *d2 = malloc(sizeof(*d2));
    start_daemon(d2, extra, NULL);
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", d2->port, NULL, &c, NULL), LAGOON_OK);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "root");
    snprintf(lr.password, sizeof(lr.password), "an admin passphrase");
    lagoon_v1_TokenPair tp;
    if (lagoon_Auth_Login(c, &lr, &tp) != LAGOON_OK)
        fail_msg("login: %s", lagoon_last_error(c)->detail.message);
    assert_int_equal(tp.user.role, lagoon_v1_Role_ADMIN);
    assert_true(tp.user.verified);
    lagoon_close(c);
    kill(d2->pid, SIGTERM);
    assert_int_equal(wait_exit(d2, 10000), 0);
    cleanup(d2);
    cleanup(d);
}

/* --help prints the application's settings (APP_SETTINGS) with their defaults and ranges, next
 * to the RPC layer's limits; a value out of an app setting's range is refused like a limit's. */
static void test_help_prints_app_settings(void **state)
{
    (void)state;
    static char out[65536];
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "%s --help 2>&1", LAGOOND_PATH);
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    const char *ms = strstr(out, "  --max-sessions\n");
    assert_non_null(ms);
    const char *next = strstr(ms + 3, "  --");
    const char *def = strstr(ms, "Default 100, range 1..500 (0: the default).");
    assert_non_null(def);
    assert_true(next == NULL || def < next); /* printed under --max-sessions, not another option */
    assert_non_null(strstr(out, "  --argon2-ops\n"));
    assert_non_null(strstr(out, "Default 2, range 1..16 (0: the default)."));
    assert_non_null(strstr(out, "One of: full none. Default full."));
    assert_non_null(strstr(out, "  --max-frame-size\n")); /* and the RPC layer's limits */

    snprintf(cmd, sizeof(cmd), "%s --max-sessions 501 2>&1", LAGOOND_PATH);
    assert_int_equal(run(cmd, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--max-sessions: '501' is not a whole number in 1..500"));
    snprintf(cmd, sizeof(cmd), "LAGOON_SYNC=sometimes %s 2>&1", LAGOOND_PATH);
    assert_int_equal(run(cmd, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "(from LAGOON_SYNC)"));
    /* Digits only: a sign or a blank would let strtoull wrap "-4294967295" round to 1. */
    snprintf(cmd, sizeof(cmd), "LAGOON_MAX_SESSIONS=' -4294967295' %s 2>&1", LAGOOND_PATH);
    assert_int_equal(run(cmd, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "(from LAGOON_MAX_SESSIONS)"));
    snprintf(cmd, sizeof(cmd), "%s --max-sessions +5 2>&1", LAGOOND_PATH);
    assert_int_equal(run(cmd, out, sizeof(out)), 2);
}

/* --max-sessions (an app_config field that became a flag): with 1, a second sign-in ends the
 * first session, which the default (100) would keep. */
static void test_max_sessions_flag(void **state)
{
    (void)state;
    daemon_t *d = malloc(sizeof(*d));
    const char *extra[] = {"--max-sessions", "1", "--argon2-ops", "1", "--argon2-mem-kib", "8", NULL};
    start_daemon(d, extra, NULL);
    lagoon_client *c;
    assert_int_equal(lagoon_connect("127.0.0.1", d->port, NULL, &c, NULL), LAGOON_OK);
    char first[65];
    test_user(c, "solo", lagoon_v1_Role_STUDENT, first);
    lagoon_set_token(c, first);
    lagoon_v1_GetProfileRequest gp = lagoon_v1_GetProfileRequest_init_zero;
    lagoon_v1_UserProfile p;
    assert_int_equal(lagoon_Users_GetProfile(c, &gp, &p), LAGOON_OK);

    lagoon_set_token(c, NULL);
    lagoon_v1_LoginRequest lr = lagoon_v1_LoginRequest_init_zero;
    snprintf(lr.login, sizeof(lr.login), "solo");
    snprintf(lr.password, sizeof(lr.password), "%s", TEST_PASSWORD);
    lagoon_v1_TokenPair tp;
    assert_int_equal(lagoon_Auth_Login(c, &lr, &tp), LAGOON_OK);
    lagoon_set_token(c, first);
    assert_int_equal(lagoon_Users_GetProfile(c, &gp, &p), LAGOON_UNAUTHENTICATED);
    lagoon_set_token(c, tp.access_token);
    assert_int_equal(lagoon_Users_GetProfile(c, &gp, &p), LAGOON_OK);
    lagoon_close(c);
    kill(d->pid, SIGTERM);
    assert_int_equal(wait_exit(d, 10000), 0);
    cleanup(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_drains_open_calls),
        cmocka_unit_test(test_flags_and_environment),
        cmocka_unit_test(test_debug_methods_off_by_default),
        cmocka_unit_test(test_connections_fit_the_fd_limit),
        cmocka_unit_test(test_log_lines_cannot_be_forged),
        cmocka_unit_test(test_lagoon_admin),
        cmocka_unit_test(test_help_prints_app_settings),
        cmocka_unit_test(test_max_sessions_flag),
    };
    return cmocka_run_group_tests_name("lagoond", tests, NULL, NULL);
}
