/* lagoonctl end to end: the real binary (LAGOONCTL_PATH) against the real server on an
 * ephemeral port: list and describe, register, verify and sign in, send and list messages, a
 * server stream followed and stopped, a client stream, bad JSON and an unknown field, statuses
 * mapped to exit codes, the token refreshed after a short lifetime, a method found only through
 * the server's schema, and bash completion. Each run gets its own credentials directory. */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lagoon_stubs.h"
#include "testserver.h"

#define RUN_MS 20000 /* one lagoonctl run, at most */
#define OUT_MAX 65536

static test_app *T;
static lagoon_client *C;
static char config_dir[64]; /* XDG_CONFIG_HOME of the runs */
static char addr[32];

static void tweak(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
}

/* Access tokens of 2 s, for the refresh test. */
static void tweak_short_tokens(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->access_ttl_s = 2;
}

static void start(void (*tweak_fn)(app_config *, rpc_config *))
{
    T = test_app_new(tweak_fn);
    C = test_client(T);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)T->srv.port);
    snprintf(config_dir, sizeof(config_dir), "/tmp/lagoonctl-test.XXXXXX");
    assert_non_null(mkdtemp(config_dir));
}

static int setup(void **state)
{
    (void)state;
    start(tweak);
    return 0;
}

static int setup_short_tokens(void **state)
{
    (void)state;
    start(tweak_short_tokens);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", config_dir);
    assert_int_equal(system(cmd), 0);
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* ---- running lagoonctl ---- */

typedef struct child {
    pid_t pid;
    int in, out, err; /* our ends of its standard streams */
} child;

/* Starts prog with argv args (args[0] is its name), in the test's environment. */
static void spawn_prog(child *ch, const char *prog, const char *const *args)
{
    int pin[2], pout[2], perr[2];
    assert_int_equal(pipe(pin), 0);
    assert_int_equal(pipe(pout), 0);
    assert_int_equal(pipe(perr), 0);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        for (int fd = 3; fd < 64; fd++)
            close(fd);
        setenv("XDG_CONFIG_HOME", config_dir, 1);
        setenv("LAGOON_ADDR", addr, 1);
        unsetenv("LAGOON_TOKEN");
        execv(prog, (char *const *)args);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    ch->in = pin[1];
    ch->out = pout[0];
    ch->err = perr[0];
}

/* Starts lagoonctl with args (NULL-terminated, without argv[0]). */
static void spawn(child *ch, const char *const *args)
{
    const char *argv[32] = {"lagoonctl"};
    int n = 1;
    for (; args[n - 1] && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    spawn_prog(ch, LAGOONCTL_PATH, argv);
}

/* Reads what fd has into buf (NUL-terminated) until EOF or the deadline. */
static void collect(int fds[2], char *bufs[2], size_t caps[2], int64_t deadline_ms)
{
    size_t lens[2] = {0, 0};
    int open_fds = 2;
    bufs[0][0] = bufs[1][0] = '\0';
    while (open_fds > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t left = deadline_ms - ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
        if (left <= 0)
            fail_msg("lagoonctl did not finish in time; stdout so far: %s", bufs[0]);
        struct pollfd p[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        int r = poll(p, 2, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        for (int i = 0; i < 2; i++) {
            if (fds[i] < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(fds[i], bufs[i] + lens[i], caps[i] - 1 - lens[i]);
            if (n <= 0) {
                close(fds[i]);
                fds[i] = -1;
                open_fds--;
                continue;
            }
            lens[i] += (size_t)n;
            bufs[i][lens[i]] = '\0';
            assert_true(lens[i] < caps[i] - 1); /* the test's buffers are large enough */
        }
    }
}

static int64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int finish(child *ch)
{
    int status;
    assert_int_equal(waitpid(ch->pid, &status, 0), ch->pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static char out[OUT_MAX], err[OUT_MAX];

/* What is left of ch's standard output and error, into o[oc] and e[ec]: its exit status. */
static int rest_of(child *ch, char *o, size_t oc, char *e, size_t ec)
{
    int fds[2] = {ch->out, ch->err};
    char *bufs[2] = {o, e};
    size_t caps[2] = {oc, ec};
    collect(fds, bufs, caps, mono_now_ms() + RUN_MS);
    return finish(ch);
}

/* Feeds input to ch, collects its output into out and err: its exit status. */
static int complete_run(child *ch, const char *input)
{
    if (input) {
        size_t len = strlen(input);
        assert_int_equal(write(ch->in, input, len), (ssize_t)len);
    }
    close(ch->in);
    return rest_of(ch, out, sizeof(out), err, sizeof(err));
}

/* Runs lagoonctl ARGS... (NULL-terminated) with input on its standard input: its exit status;
 * its output in out and err. */
static int run(const char *input, ...)
{
    const char *args[32];
    va_list ap;
    va_start(ap, input);
    int n = 0;
    while (n < 31 && (args[n] = va_arg(ap, const char *)) != NULL)
        n++;
    args[n] = NULL;
    va_end(ap);
    child ch;
    spawn(&ch, args);
    return complete_run(&ch, input);
}

static void expect_in(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("expected \"%s\" in:\n%s\n(stderr: %s)", needle, haystack, err);
}

/* The credentials file's text into buf. */
static void read_creds(char *buf, size_t cap)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/lagoon/credentials", config_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Writes text into name, a file of the run's configuration directory. */
static void write_config_file(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", config_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void write_creds(const char *text)
{
    write_config_file("lagoon/credentials", text);
}

/* The stored profile's access token. */
static void stored_token(char *token, size_t cap)
{
    char text[4096];
    read_creds(text, sizeof(text));
    const char *p = strstr(text, "\"access_token\": \"");
    assert_non_null(p);
    p += strlen("\"access_token\": \"");
    size_t n = strcspn(p, "\"");
    assert_true(n < cap);
    memcpy(token, p, n);
    token[n] = '\0';
}

/* A verified user signed in through lagoonctl (its profile stored); their id. */
static uint64_t signed_in(const char *name)
{
    char token[65];
    uint64_t id = test_verified_user(T, C, name, 1, token);
    char line[64];
    snprintf(line, sizeof(line), "%s\n", TEST_PASSWORD);
    assert_int_equal(run(line, "login", name, NULL), 0);
    expect_in(out, "signed in at");
    return id;
}

/* ---- the tests ---- */

static void test_list_and_describe(void **state)
{
    (void)state;
    assert_int_equal(run(NULL, "-v", "list", NULL), 0);
    expect_in(err, "* read the server's schema"); /* not the built-in one */
    expect_in(out, "lagoon.v1.Messages/Send");
    expect_in(out, "lagoon.v1.Events/Subscribe               server-streaming  user\n");
    expect_in(out, "lagoon.v1.Messages/Edit");
    expect_in(out, "idempotent");
    assert_int_equal(run(NULL, "list", "Auth", NULL), 0);
    expect_in(out, "lagoon.v1.Auth/Login");
    assert_null(strstr(out, "Messages"));
    assert_int_equal(run(NULL, "list", "NoSuchService", NULL), 2);
    expect_in(err, "no service NoSuchService");
    assert_int_equal(run(NULL, "describe", "lagoon.v1.Messages/Send", NULL), 0);
    expect_in(out, "unary, access user");
    expect_in(out, "message lagoon.v1.SendMessageRequest {");
    expect_in(out, "  oneof content {\n    lagoon.v1.TextContent text = 2;");
    expect_in(out, "string client_message_id = 5;  // json: clientMessageId, at most 64 bytes");
    assert_int_equal(run(NULL, "describe", "lagoon.v1.TextContent", NULL), 0);
    expect_in(out, "at most 16000 bytes");
    assert_int_equal(run(NULL, "describe", "lagoon.v1.Role", NULL), 0);
    expect_in(out, "enum lagoon.v1.Role {");
    assert_int_equal(run(NULL, "describe", "lagoon.v1.Nothing", NULL), 2);
    expect_in(err, "no method, message or enum lagoon.v1.Nothing");
}

static void test_register_login_send_list_logout(void **state)
{
    (void)state;
    /* Register and verify through lagoonctl, then sign in with the password on stdin. */
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/Register",
                         "{\"email\": \"cora@example.com\", \"username\": \"cora\", \"password\": \"" TEST_PASSWORD
                         "\", \"fullName\": \"Cora Ctl\"}",
                         NULL),
                     0);
    expect_in(out, "\"username\": \"cora\"");
    expect_in(out, "\"fullName\": \"Cora Ctl\"");
    char code[64];
    assert_true(test_mail_code(T, "cora@example.com", "Verify", code, 5000));
    char body[128];
    snprintf(body, sizeof(body), "{\"token\": \"%s\"}", code);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/VerifyEmail", body, NULL), 0);
    assert_int_equal(run(TEST_PASSWORD "\n", "login", "cora", NULL), 0);
    expect_in(out, "signed in at 127.0.0.1:");
    char path[128];
    snprintf(path, sizeof(path), "%s/lagoon/credentials", config_dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/Me", NULL), 0);
    expect_in(out, "\"username\": \"cora\"");
    /* A message to another user, then the conversation's list. */
    char dt[65];
    uint64_t dan = test_verified_user(T, C, "dan", 1, dt);
    snprintf(body, sizeof(body), "{\"recipientId\": \"%llu\", \"text\": {\"text\": \"hello dan \\u00e9\"}}",
             (unsigned long long)dan);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Messages/Send", body, NULL), 0);
    expect_in(out, "\"text\": \"hello dan \xc3\xa9\"");
    snprintf(body, sizeof(body), "{\"other_user_id\": %llu}", (unsigned long long)dan); /* original name, a number */
    assert_int_equal(run(NULL, "call", "lagoon.v1.Messages/List", body, NULL), 0);
    expect_in(out, "\"messages\": [");
    expect_in(out, "hello dan");
    /* The same from a file and from standard input. */
    write_config_file("list.json", body);
    char at_file[140];
    snprintf(at_file, sizeof(at_file), "@%s/list.json", config_dir);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Messages/List", at_file, NULL), 0);
    expect_in(out, "hello dan");
    assert_int_equal(run(body, "call", "lagoon.v1.Messages/List", "-", NULL), 0);
    expect_in(out, "hello dan");
    /* Signed out: the stored session ends on the server (its token no longer works) and
     * leaves the file. */
    char old_token[128];
    stored_token(old_token, sizeof(old_token));
    assert_int_equal(run(NULL, "logout", NULL), 0);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/Me", NULL), 64 + LAGOON_UNAUTHENTICATED);
    expect_in(err, "ERROR: UNAUTHENTICATED");
    assert_int_equal(run(NULL, "--token", old_token, "call", "lagoon.v1.Auth/Me", NULL), 64 + LAGOON_UNAUTHENTICATED);
    assert_int_equal(run(NULL, "logout", NULL), 2);
    expect_in(err, "not signed in at");
}

/* Reads from fd until buf holds needle (or the deadline): the bytes read so far are in buf. */
static void read_until(int fd, char *buf, size_t cap, size_t *len, const char *needle)
{
    int64_t deadline = mono_now_ms() + RUN_MS;
    while (strstr(buf, needle) == NULL) {
        int64_t left = deadline - mono_now_ms();
        if (left <= 0)
            fail_msg("no \"%s\" from the stream; got: %s", needle, buf);
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        ssize_t n = read(fd, buf + *len, cap - 1 - *len);
        if (n <= 0)
            fail_msg("the stream's output ended before \"%s\": %s", needle, buf);
        *len += (size_t)n;
        buf[*len] = '\0';
    }
}

static void test_server_stream_followed_and_stopped(void **state)
{
    (void)state;
    uint64_t eve = signed_in("eve");
    char ft[65];
    test_verified_user(T, C, "fay", 1, ft);
    child ch;
    const char *args[] = {"call", "lagoon.v1.Events/Subscribe", NULL};
    spawn(&ch, args);
    close(ch.in);
    size_t len = 0;
    out[0] = '\0';
    read_until(ch.out, out, sizeof(out), &len, "\"subscribed\""); /* the stream's first message */
    test_send_text(C, ft, eve, "live to the terminal");
    read_until(ch.out, out, sizeof(out), &len, "live to the terminal");
    /* One JSON object a line. */
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_int_equal(out[0], '{');
    assert_int_equal(nl[-1], '}');
    /* Stopped with SIGINT: the stream is cancelled and lagoonctl ends with 0. */
    assert_int_equal(kill(ch.pid, SIGINT), 0);
    char rest[4096];
    assert_int_equal(rest_of(&ch, rest, sizeof(rest), err, sizeof(err)), 0);
    /* --count stops it too: the subscribed event, then the stored message replayed. */
    char since[48];
    snprintf(since, sizeof(since), "{\"since\": \"%d\"}", 0);
    assert_int_equal(run(NULL, "--count", "1", "call", "lagoon.v1.Events/Subscribe", since, NULL), 0);
    expect_in(out, "\"currentSeq\"");
}

static void test_client_stream_reads_lines(void **state)
{
    (void)state;
    /* EchoCollect counts the messages and keeps the last payload (bytes as base64). */
    assert_int_equal(run("{\"payload\": \"YWJj\"}\n\n{\"payload\": \"ZGVm\"}\n", "call", "lagoon.v1.Debug/EchoCollect",
                         NULL),
                     0);
    expect_in(out, "\"count\": 2");
    expect_in(out, "\"totalBytes\": \"6\"");
    expect_in(out, "\"lastPayload\": \"ZGVm\"");
    /* A bad line names itself. */
    assert_int_equal(run("{\"payload\": \"YWJj\"}\n{\"payload\": 5}\n", "call", "lagoon.v1.Debug/EchoCollect", NULL),
                     2);
    expect_in(err, "line 2 of standard input");
    expect_in(err, "payload");
    /* Bidirectional: one answer per line. */
    assert_int_equal(run("{\"payload\": \"YQ==\"}\n{\"payload\": \"Yg==\"}\n", "call", "lagoon.v1.Debug/EchoChat", NULL),
                     0);
    expect_in(out, "{\"payload\":\"YQ==\"}\n{\"payload\":\"Yg==\"}\n");
}

static void test_bad_input_and_status_codes(void **state)
{
    (void)state;
    assert_int_equal(run(NULL, "call", "lagoon.v1.Users/Get", "{\"userId\": ", NULL), 2);
    expect_in(err, "bad JSON in the request at line 1");
    assert_int_equal(run(NULL, "call", "lagoon.v1.Users/Get", "{\"nope\": 1}", NULL), 2);
    expect_in(err, "unknown field \"nope\" in lagoon.v1.GetUserRequest");
    assert_int_equal(run(NULL, "call", "lagoon.v1.Users/Get", "{\"userId\": \"-3\"}", NULL), 2);
    expect_in(err, "userId");
    assert_int_equal(run(NULL, "call", "lagoon.v1.Nope/Nothing", NULL), 2);
    expect_in(err, "no method lagoon.v1.Nope/Nothing");
    assert_int_equal(run(NULL, "--timeout", "soon", "list", NULL), 2);
    /* Statuses from the server: 64 + the code, with the message and the field violations. */
    signed_in("gus");
    assert_int_equal(run(NULL, "call", "lagoon.v1.Users/Get", "{\"userId\": \"999999\"}", NULL),
                     64 + LAGOON_NOT_FOUND);
    expect_in(err, "ERROR: NOT_FOUND");
    assert_int_equal(run(NULL, "call", "lagoon.v1.Messages/Send", "{\"recipientId\": \"1\"}", NULL),
                     64 + LAGOON_INVALID_ARGUMENT);
    expect_in(err, "ERROR: INVALID_ARGUMENT");
    expect_in(err, "  content: one of text, image or video is required");
    /* Nothing listens there: UNAVAILABLE. */
    assert_int_equal(run(NULL, "--addr", "127.0.0.1:1", "call", "lagoon.v1.Health/Check", NULL),
                     64 + LAGOON_UNAVAILABLE);
    /* -v, the request id and the deadline. */
    assert_int_equal(run(NULL, "-v", "--request-id", "req-42", "--timeout", "5s", "call", "lagoon.v1.Health/Check",
                         NULL),
                     0);
    expect_in(err, "> /lagoon.v1.Health/Check (unary)");
    expect_in(err, "> request id req-42");
    expect_in(err, "< OK in");
}

static void test_idempotency_key_replays(void **state)
{
    (void)state;
    signed_in("hal");
    const char *body = "{\"fullName\": \"Hal First\"}";
    assert_int_equal(run(NULL, "--idempotency-key", "k-1", "call", "lagoon.v1.Users/UpdateProfile", body, NULL), 0);
    expect_in(out, "Hal First");
    /* The same key with another request: refused, nothing changed. */
    assert_int_equal(run(NULL, "--idempotency-key", "k-1", "call", "lagoon.v1.Users/UpdateProfile",
                         "{\"fullName\": \"Hal Second\"}", NULL),
                     64 + LAGOON_FAILED_PRECONDITION);
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/Me", NULL), 0);
    expect_in(out, "Hal First");
}

static void test_token_refreshed_after_expiry(void **state)
{
    (void)state;
    signed_in("ivy");
    char path[128], before[4096], after[4096];
    snprintf(path, sizeof(path), "%s/lagoon/credentials", config_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(before, 1, sizeof(before) - 1, f);
    before[n] = '\0';
    fclose(f);
    sleep(3); /* the 2 s access token has expired: the server would refuse it */
    assert_int_equal(run(NULL, "-v", "call", "lagoon.v1.Auth/Me", NULL), 0);
    expect_in(err, "refreshed the access token");
    expect_in(out, "\"username\": \"ivy\"");
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(after, 1, sizeof(after) - 1, f);
    after[n] = '\0';
    fclose(f);
    assert_string_not_equal(before, after); /* the new tokens are stored */
}

/* The server refuses the stored access token (it expired by the server's clock, long before
 * lagoonctl's margin): lagoonctl renews it and calls once more. */
static void test_refused_token_renewed_and_retried(void **state)
{
    (void)state;
    signed_in("kim");
    char before[128], after[128];
    stored_token(before, sizeof(before));
    /* lagoonctl would renew a token due by its own clock first: make it look good for years. */
    char text[4096];
    read_creds(text, sizeof(text));
    char *exp = strstr(text, "\"access_expires_at\": ");
    assert_non_null(exp);
    exp += strlen("\"access_expires_at\": ");
    assert_true(strspn(exp, "0123456789") == 13);
    memcpy(exp, "4102444800000", 13); /* 2100-01-01 */
    write_creds(text);
    test_clock_advance(T, 25LL * 3600 * 1000); /* past the 24 h access token, within the refresh token */
    assert_int_equal(run(NULL, "-v", "call", "lagoon.v1.Auth/Me", NULL), 0);
    expect_in(err, "UNAUTHENTICATED with the stored token: renewing it");
    expect_in(out, "\"username\": \"kim\"");
    stored_token(after, sizeof(after));
    assert_string_not_equal(before, after);
    /* A server stream too. */
    read_creds(text, sizeof(text));
    exp = strstr(text, "\"access_expires_at\": ") + strlen("\"access_expires_at\": ");
    assert_true(strspn(exp, "0123456789") == 13);
    memcpy(exp, "4102444800000", 13);
    write_creds(text);
    test_clock_advance(T, 25LL * 3600 * 1000);
    assert_int_equal(run(NULL, "-v", "--count", "1", "call", "lagoon.v1.Events/Subscribe", NULL), 0);
    expect_in(err, "UNAUTHENTICATED with the stored token: renewing it");
    expect_in(out, "\"subscribed\"");
}

/* Runs due for a refresh at once renew the session once between them: the server would revoke a
 * session whose refresh token came twice. */
static void test_parallel_refresh_keeps_the_session(void **state)
{
    (void)state;
    signed_in("lou");
    char text[4096];
    read_creds(text, sizeof(text));
    char *exp = strstr(text, "\"access_expires_at\": ");
    assert_non_null(exp);
    exp += strlen("\"access_expires_at\": ");
    size_t digits = strspn(exp, "0123456789");
    memset(exp, ' ', digits);
    exp[0] = '1'; /* expired long ago by lagoonctl's clock */
    write_creds(text);
    enum { RUNS = 4 };
    child ch[RUNS];
    const char *args[] = {"call", "lagoon.v1.Auth/Me", NULL};
    for (int i = 0; i < RUNS; i++) {
        spawn(&ch[i], args);
        close(ch[i].in);
    }
    for (int i = 0; i < RUNS; i++) {
        if (rest_of(&ch[i], out, sizeof(out), err, sizeof(err)) != 0)
            fail_msg("run %d: %s", i, err);
        expect_in(out, "\"username\": \"lou\"");
    }
    assert_int_equal(run(NULL, "call", "lagoon.v1.Auth/Me", NULL), 0); /* the session lives on */
}

/* Ctrl-C ends a unary call at once (the default action), and cancels a client stream whose
 * requests did not all go (exit 65, CANCELLED), instead of sending what was read so far. */
static void test_signals(void **state)
{
    (void)state;
    child ch;
    const char *slow[] = {"call", "lagoon.v1.Debug/Echo", "{\"delayMs\": 8000}", NULL};
    spawn(&ch, slow);
    close(ch.in);
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
    assert_int_equal(kill(ch.pid, SIGINT), 0);
    int status;
    assert_int_equal(waitpid(ch.pid, &status, 0), ch.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
    close(ch.out);
    close(ch.err);
    const char *collect_args[] = {"-v", "call", "lagoon.v1.Debug/EchoCollect", NULL};
    spawn(&ch, collect_args);
    const char *line = "{\"payload\": \"YWJj\"}\n";
    assert_int_equal(write(ch.in, line, strlen(line)), (ssize_t)strlen(line));
    size_t len = 0;
    err[0] = '\0';
    read_until(ch.err, err, sizeof(err), &len, "> /lagoon.v1.Debug/EchoCollect"); /* streaming now */
    assert_int_equal(kill(ch.pid, SIGINT), 0);
    close(ch.in);
    char rest[4096];
    assert_int_equal(rest_of(&ch, out, sizeof(out), rest, sizeof(rest)), 64 + LAGOON_CANCELLED);
    expect_in(rest, "cancelled");
    assert_null(strstr(out, "count"));
}

/* A bidirectional stream prints each answer as it comes, before the next line is typed. */
static void test_bidi_answers_as_they_come(void **state)
{
    (void)state;
    child ch;
    const char *args[] = {"call", "lagoon.v1.Debug/EchoChat", NULL};
    spawn(&ch, args);
    size_t len = 0;
    out[0] = '\0';
    const char *l1 = "{\"payload\": \"YQ==\"}\n", *l2 = "{\"payload\": \"Yg==\"}\n";
    assert_int_equal(write(ch.in, l1, strlen(l1)), (ssize_t)strlen(l1));
    read_until(ch.out, out, sizeof(out), &len, "{\"payload\":\"YQ==\"}\n"); /* stdin still open */
    assert_int_equal(write(ch.in, l2, strlen(l2)), (ssize_t)strlen(l2));
    read_until(ch.out, out, sizeof(out), &len, "{\"payload\":\"Yg==\"}\n");
    close(ch.in);
    char rest[4096];
    assert_int_equal(rest_of(&ch, rest, sizeof(rest), err, sizeof(err)), 0);
}

static void test_method_only_in_server_schema(void **state)
{
    (void)state;
    /* An older lagoonctl: a schema of health.proto alone. */
    assert_int_equal(run(NULL, "--schema", OLD_SCHEMA_PATH, "list", "--names", NULL), 0);
    expect_in(out, "lagoon.v1.Health/Check");
    assert_null(strstr(out, "Users"));
    uint64_t jo = signed_in("joe");
    char body[64];
    snprintf(body, sizeof(body), "{\"userId\": \"%llu\"}", (unsigned long long)jo);
    assert_int_equal(run(NULL, "-v", "--schema", OLD_SCHEMA_PATH, "call", "lagoon.v1.Users/Get", body, NULL), 0);
    expect_in(err, "found only in the server's schema");
    expect_in(out, "\"username\": \"joe\"");
    /* What neither schema has. */
    assert_int_equal(run(NULL, "--schema", OLD_SCHEMA_PATH, "call", "lagoon.v1.Users/Nothing", NULL), 2);
}

static void test_bash_completion(void **state)
{
    (void)state;
    char dir[256], script[1024];
    snprintf(dir, sizeof(dir), "%s", LAGOONCTL_PATH);
    *strrchr(dir, '/') = '\0';
    snprintf(script, sizeof(script),
             "PATH='%s':$PATH; source <(lagoonctl completion bash); "
             "COMP_WORDS=(lagoonctl call lagoon.v1.Messages/Se); COMP_CWORD=2; _lagoonctl; echo \"${COMPREPLY[*]}\"; "
             "COMP_WORDS=(lagoonctl --addr x lo); COMP_CWORD=3; _lagoonctl; echo \"${COMPREPLY[*]}\"",
             dir);
    assert_int_equal(run(NULL, "completion", "bash", NULL), 0);
    expect_in(out, "complete -F _lagoonctl lagoonctl");
    child ch;
    const char *args[] = {"bash", "-c", script, NULL};
    spawn_prog(&ch, "/bin/bash", args);
    assert_int_equal(complete_run(&ch, NULL), 0);
    /* A method name, then the subcommands after an option with its value. */
    assert_string_equal(out, "lagoon.v1.Messages/Send\nlogin logout\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_list_and_describe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_login_send_list_logout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_stream_followed_and_stopped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_stream_reads_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_and_status_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_key_replays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_refreshed_after_expiry, setup_short_tokens, teardown),
        cmocka_unit_test_setup_teardown(test_refused_token_renewed_and_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel_refresh_keeps_the_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidi_answers_as_they_come, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_only_in_server_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bash_completion, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
