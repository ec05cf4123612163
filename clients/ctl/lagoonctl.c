/* lagoonctl: the command-line client. Lists and describes what a server offers, calls any
 * method with JSON in and out (streams as one JSON object a line), and keeps sign-in tokens
 * per server. docs/LAGOONCTL.md is its manual; `lagoonctl help` its summary.
 *
 * Messages are encoded and decoded from a schema read at run time (ctl_schema.h): the one built
 * in (the IDL lagoonctl was built from), or, for a method that one does not have, the server's
 * own (Reflection/GetSchema), so an older lagoonctl still calls a newer server's methods. The
 * calls go through the blocking client library with messages as bytes (lagoon_raw). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl_schema.h"
#include "lagoon.h"
#include "lagoon_idl.h"
#include "lagoon_stubs.h"

#define CTL_DEFAULT_ADDR "127.0.0.1:7420"
#define CTL_DEFAULT_PORT 7420
/* A stored access token this close to its expiry is refreshed before a call uses it. */
#define CTL_REFRESH_MARGIN_MS 30000
/* How often a stream waiting for messages looks at SIGINT / SIGTERM. */
#define CTL_POLL_MS 200
/* Largest request file or standard input read as one JSON document. */
#define CTL_INPUT_MAX (16u * 1024 * 1024)
/* Longest line of a client stream on standard input (one JSON message). */
#define CTL_LINE_MAX (4u * 1024 * 1024)
#define CTL_PASSWORD_MAX 1024

/* Exit statuses (docs/LAGOONCTL.md): a status from the server (or the client library's own,
 * such as UNAVAILABLE when the server cannot be reached) is CTL_EXIT_STATUS + its code. */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAILURE = 1, /* a local failure: a file that cannot be read or written */
    CTL_EXIT_USAGE = 2,   /* bad arguments, bad JSON, an unknown method, field or message */
    CTL_EXIT_STATUS = 64,
};

typedef struct ctl {
    const char *addr;
    char host[256];
    uint16_t port;
    const char *token_flag; /* --token or LAGOON_TOKEN */
    const char *schema_file;
    uint32_t timeout_ms;
    const char *idempotency_key;
    const char *request_id;
    int verbose;
    long count; /* streams: stop after this many messages (0: until the end) */
    int names;  /* list --names: method names only, from the built-in schema (completion) */
    int strict_schema; /* --strict-schema: refuse a server built from another IDL */
    int tls;             /* --tls (LAGOON_TLS=1), or implied by --cacert */
    const char *cacert;  /* --cacert FILE (LAGOON_CACERT): the CA the server's certificate must chain to */
    lagoon_client *client;
    ctl_schema *builtin, *server;
    json_t *creds;       /* the credentials file, loaded on first use */
    char creds_path[1024];
} ctl;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("lagoonctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CTL_EXIT_USAGE;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ---- the server's address --------------------------------------------------------------- */

/* "host:port", "[v6]:port" or "host" (port 7420). 0, or -1 if malformed. */
static int parse_addr(ctl *x)
{
    const char *a = x->addr, *colon;
    size_t hl;
    if (a[0] == '[') {
        const char *end = strchr(a, ']');
        if (end == NULL)
            return -1;
        a++;
        hl = (size_t)(end - a);
        colon = end[1] == ':' ? end + 1 : NULL;
        if (end[1] != '\0' && colon == NULL)
            return -1;
    } else {
        colon = strrchr(a, ':');
        hl = colon ? (size_t)(colon - a) : strlen(a);
    }
    if (hl == 0 || hl >= sizeof(x->host))
        return -1;
    memcpy(x->host, a, hl);
    x->host[hl] = '\0';
    x->port = CTL_DEFAULT_PORT;
    if (colon) {
        char *end;
        errno = 0;
        long p = strtol(colon + 1, &end, 10);
        if (errno || *end != '\0' || end == colon + 1 || p < 1 || p > 65535)
            return -1;
        x->port = (uint16_t)p;
    }
    return 0;
}

/* "250ms", "5s", "2m" or a number of seconds, in ms. 0, or -1 if malformed. */
static int parse_duration(const char *s, uint32_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    double scale = strcmp(end, "ms") == 0 ? 1 : strcmp(end, "s") == 0 || *end == '\0' ? 1000
                                                : strcmp(end, "m") == 0              ? 60000
                                                                                     : -1;
    if (scale < 0 || v * scale > 86400000.0)
        return -1;
    *ms = (uint32_t)(v * scale);
    return 0;
}

/* ---- status output ------------------------------------------------------------------------ */

/* The failed call's status on standard error (name, message, field violations, retry-after,
 * request id); the exit status that maps it. */
static int report_status(const ctl *x, int st)
{
    const lagoon_error *e = x->client ? lagoon_last_error(x->client) : NULL;
    fprintf(stderr, "ERROR: %s", lagoon_status_name(st));
    if (e && e->detail.message[0])
        fprintf(stderr, ": %s", e->detail.message);
    fputc('\n', stderr);
    if (e) {
        for (pb_size_t i = 0; i < e->detail.violations_count; i++)
            fprintf(stderr, "  %s: %s\n", e->detail.violations[i].field, e->detail.violations[i].description);
        if (e->detail.retry_after_ms)
            fprintf(stderr, "  retry after %u ms\n", e->detail.retry_after_ms);
        if (x->verbose && e->detail.request_id[0])
            fprintf(stderr, "  request id %s\n", e->detail.request_id);
    }
    return CTL_EXIT_STATUS + (st > 0 && st <= LAGOON_STATUS_MAX ? st : LAGOON_UNKNOWN);
}

/* ---- connection and schema ------------------------------------------------------------- */

/* Connects once (--timeout bounds the connect and every call). quiet: a failure is not
 * reported (the caller says what it does instead). */
static int connect_quietly(ctl *x, int quiet)
{
    if (x->client)
        return LAGOON_OK;
    lagoon_options o = {0};
    o.timeout_ms = x->timeout_ms;
    o.strict_schema = x->strict_schema; /* otherwise a mismatch is a warning on stderr */
    o.tls = x->tls;
    o.tls_ca_file = x->cacert; /* NULL: the system's CAs */
    if (x->timeout_ms)
        o.connect_timeout_ms = x->timeout_ms;
    lagoon_error err;
    memset(&err, 0, sizeof(err));
    int st = lagoon_connect(x->host, x->port, &o, &x->client, &err);
    if (st != LAGOON_OK) {
        x->client = NULL;
        if (quiet)
            fprintf(stderr, "lagoonctl: %s unreachable (%s): showing the built-in schema\n", x->addr,
                    err.detail.message);
        else
            fprintf(stderr, "ERROR: %s: cannot reach %s: %s\n", lagoon_status_name(st), x->addr, err.detail.message);
        return st;
    }
    lagoon_set_timeout(x->client, x->timeout_ms);
    if (x->verbose)
        fprintf(stderr, "* connected to %s\n", x->addr);
    return LAGOON_OK;
}

static int connect_server(ctl *x)
{
    return connect_quietly(x, 0);
}

static int read_file(const char *path, FILE *f, char **out, size_t *len)
{
    FILE *in = f ? f : fopen(path, "rb");
    if (in == NULL)
        return -1;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, in);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            if (cap >= CTL_INPUT_MAX) {
                free(buf);
                buf = NULL;
                errno = EFBIG;
                break;
            }
            cap *= 2;
            char *b = realloc(buf, cap + 1);
            if (b == NULL) {
                free(buf);
            }
            buf = b;
        }
    }
    int bad = buf == NULL || ferror(in);
    if (f == NULL)
        fclose(in);
    if (bad) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* The schema lagoonctl was built with, or --schema's file. */
static int builtin_schema(ctl *x, ctl_schema **out)
{
    if (x->builtin == NULL) {
        char err[256];
        const uint8_t *data = lagoon_schema;
        size_t len = lagoon_schema_size;
        char *file = NULL;
        if (x->schema_file) {
            if (read_file(x->schema_file, NULL, &file, &len) != 0) {
                fprintf(stderr, "lagoonctl: cannot read %s: %s\n", x->schema_file, strerror(errno));
                return CTL_EXIT_FAILURE;
            }
            data = (const uint8_t *)file;
        }
        int r = ctl_schema_load(data, len, &x->builtin, err, sizeof(err));
        free(file);
        if (r != 0)
            return usage_error("schema %s: %s", x->schema_file ? x->schema_file : "(built in)", err);
    }
    *out = x->builtin;
    return 0;
}

/* The server's schema (Reflection/GetSchema). 0, or an exit status (reported). */
static int server_schema(ctl *x, ctl_schema **out)
{
    if (x->server == NULL) {
        int st = connect_server(x);
        if (st != LAGOON_OK)
            return CTL_EXIT_STATUS + st;
        lagoon_v1_GetSchemaRequest req = lagoon_v1_GetSchemaRequest_init_zero;
        lagoon_v1_GetSchemaResponse resp = lagoon_v1_GetSchemaResponse_init_zero;
        /* A callback field (reflection.options), bounded by its max_size there. */
        lagoon_bytes set = {.max = lagoon_schema_max};
        resp.file_descriptor_set.funcs.decode = lagoon_bytes_decode;
        resp.file_descriptor_set.arg = &set;
        st = lagoon_Reflection_GetSchema(x->client, &req, &resp);
        if (st != LAGOON_OK) {
            free(set.data);
            return report_status(x, st);
        }
        char err[256];
        int r = set.data ? ctl_schema_load(set.data, set.len, &x->server, err, sizeof(err))
                         : (snprintf(err, sizeof(err), "empty"), -1);
        free(set.data);
        if (r != 0) {
            fprintf(stderr, "lagoonctl: the server's schema: %s\n", err);
            return CTL_EXIT_FAILURE;
        }
        if (x->verbose)
            fprintf(stderr, "* read the server's schema\n");
    }
    *out = x->server;
    return 0;
}

/* The schema to show for list and describe: the server's, or when it cannot be reached the
 * built-in one (said on standard error). */
static int shown_schema(ctl *x, ctl_schema **out)
{
    if (x->schema_file == NULL) {
        if (connect_quietly(x, 1) != LAGOON_OK)
            return builtin_schema(x, out);
        if (server_schema(x, out) == 0)
            return 0;
        fprintf(stderr, "lagoonctl: showing the built-in schema\n");
    }
    return builtin_schema(x, out);
}

/* The method named, from the built-in schema, else the server's. */
static int find_method(ctl *x, const char *name, const ctl_method **out)
{
    ctl_schema *s = NULL;
    int r = builtin_schema(x, &s);
    if (r != 0)
        return r;
    *out = ctl_schema_method(s, name);
    if (*out)
        return 0;
    r = server_schema(x, &s);
    if (r != 0)
        return r;
    *out = ctl_schema_method(s, name);
    if (*out == NULL)
        return usage_error("no method %s on %s (lagoonctl list shows them)", name, x->addr);
    if (x->verbose)
        fprintf(stderr, "* %s found only in the server's schema\n", (*out)->path);
    return 0;
}

/* ---- credentials: $XDG_CONFIG_HOME/lagoon/credentials, one profile per address ---------- */

static int creds_path(ctl *x)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0])
        n = snprintf(x->creds_path, sizeof(x->creds_path), "%s/lagoon/credentials", xdg);
    else if (home && home[0])
        n = snprintf(x->creds_path, sizeof(x->creds_path), "%s/.config/lagoon/credentials", home);
    else
        return -1;
    return n > 0 && (size_t)n < sizeof(x->creds_path) ? 0 : -1;
}

static json_t *creds_load(ctl *x)
{
    if (x->creds)
        return x->creds;
    if (creds_path(x) != 0) {
        fprintf(stderr, "lagoonctl: neither XDG_CONFIG_HOME nor HOME is set: no credentials file\n");
        return NULL;
    }
    json_error_t je;
    x->creds = json_load_file(x->creds_path, JSON_REJECT_DUPLICATES, &je);
    if ((x->creds == NULL && access(x->creds_path, F_OK) == 0) || (x->creds && !json_is_object(x->creds))) {
        /* Kept aside, not overwritten: it may hold other servers' sessions. */
        char bad[sizeof(x->creds_path) + 8];
        snprintf(bad, sizeof(bad), "%s.bad", x->creds_path);
        int moved = rename(x->creds_path, bad) == 0;
        fprintf(stderr, "lagoonctl: %s is damaged (%s)%s%s: starting a new one\n", x->creds_path,
                x->creds ? "not a JSON object" : je.text, moved ? "; moved to " : "", moved ? bad : "");
    }
    if (x->creds == NULL || !json_is_object(x->creds)) {
        json_decref(x->creds);
        x->creds = json_object();
    }
    json_t *p = json_object_get(x->creds, "profiles");
    if (!json_is_object(p))
        json_object_set_new(x->creds, "profiles", json_object());
    return x->creds;
}

static json_t *profile(ctl *x)
{
    json_t *c = creds_load(x);
    json_t *p = c ? json_object_get(json_object_get(c, "profiles"), x->addr) : NULL;
    return json_is_object(p) ? p : NULL;
}

/* Locks the credentials (an flock on credentials.lock beside them) while a refresh reads,
 * renews and stores the tokens: parallel runs must not present one refresh token twice, which
 * the server takes for a stolen token (it revokes the session). The lock's fd, or -1. */
static int creds_lock(ctl *x)
{
    char path[sizeof(x->creds_path) + 8];
    if (creds_load(x) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s.lock", x->creds_path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX) != 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        fprintf(stderr, "lagoonctl: cannot lock %s: %s\n", path, strerror(errno));
    return fd;
}

/* Drops what was read of the credentials: the next profile() reads the file again. */
static void creds_forget(ctl *x)
{
    json_decref(x->creds);
    x->creds = NULL;
}

/* Writes the credentials file with mode 0600 (its directory 0700), through a new file renamed
 * over the old one, so that a crash leaves one or the other. */
static int creds_save(ctl *x)
{
    if (creds_load(x) == NULL)
        return -1;
    char dir[sizeof(x->creds_path)], tmp[sizeof(x->creds_path) + 16];
    snprintf(dir, sizeof(dir), "%s", x->creds_path);
    for (char *p = dir + 1; *p; p++) { /* mkdir -p of its directory */
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            break;
        *p = '/';
    }
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", x->creds_path);
    int fd = mkstemp(tmp); /* a new file of mode 0600, never an existing one or a link */
    char *text = json_dumps(x->creds, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    int ok = fd >= 0 && text != NULL;
    if (ok) {
        size_t n = strlen(text);
        ok = write(fd, text, n) == (ssize_t)n && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    }
    if (text) {
        wipe(text, strlen(text));
        free(text);
    }
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, x->creds_path) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "lagoonctl: cannot write %s: %s\n", x->creds_path, strerror(errno));
        if (fd >= 0)
            unlink(tmp);
        return -1;
    }
    return 0;
}

static void profile_store(ctl *x, const lagoon_v1_TokenPair *tp)
{
    json_t *p = json_object();
    char id[24];
    snprintf(id, sizeof(id), "%" PRIu64, tp->user.id);
    json_object_set_new(p, "user_id", json_string(id));
    json_object_set_new(p, "username", json_string(tp->user.username));
    json_object_set_new(p, "access_token", json_string(tp->access_token));
    json_object_set_new(p, "access_expires_at", json_integer(tp->access_expires_at));
    json_object_set_new(p, "refresh_token", json_string(tp->refresh_token));
    json_object_set_new(p, "refresh_expires_at", json_integer(tp->refresh_expires_at));
    json_object_set_new(json_object_get(x->creds, "profiles"), x->addr, p);
}

/* Trades the profile's refresh token for new tokens and stores them. LAGOON_OK or a status
 * (reported). */
static int refresh(ctl *x, json_t *p)
{
    const char *rt = json_string_value(json_object_get(p, "refresh_token"));
    if (rt == NULL || strlen(rt) >= sizeof(((lagoon_v1_RefreshRequest *)0)->refresh_token)) {
        fprintf(stderr, "lagoonctl: the stored session of %s has no refresh token (calling without a token): "
                        "lagoonctl login\n", x->addr);
        return LAGOON_UNAUTHENTICATED;
    }
    lagoon_v1_RefreshRequest req = lagoon_v1_RefreshRequest_init_zero;
    lagoon_v1_TokenPair tp = lagoon_v1_TokenPair_init_zero;
    snprintf(req.refresh_token, sizeof(req.refresh_token), "%s", rt);
    lagoon_set_token(x->client, NULL);
    int st = lagoon_Auth_Refresh(x->client, &req, &tp);
    wipe(&req, sizeof(req));
    if (st != LAGOON_OK) {
        report_status(x, st);
        fprintf(stderr, "lagoonctl: the stored session of %s could not be renewed (calling without a token): "
                        "lagoonctl login\n", x->addr);
        return st;
    }
    profile_store(x, &tp);
    wipe(&tp, sizeof(tp));
    if (x->verbose)
        fprintf(stderr, "* refreshed the access token\n");
    creds_save(x);
    return LAGOON_OK;
}

/* Sets the token of the next call: --token / LAGOON_TOKEN, else the stored profile's, renewed
 * first when it expires within CTL_REFRESH_MARGIN_MS or (rejected) when the server refused it.
 * rejected is the token the server answered UNAUTHENTICATED to (NULL: none). *stored says the
 * profile's token was set. A session that cannot be renewed is said on standard error and the
 * call goes without a token (public methods still work): LAGOON_OK either way. */
static int use_token(ctl *x, const char *rejected, int *stored)
{
    *stored = 0;
    if (x->token_flag) {
        lagoon_set_token(x->client, x->token_flag);
        return LAGOON_OK;
    }
    lagoon_set_token(x->client, NULL);
    json_t *p = profile(x);
    if (p == NULL)
        return LAGOON_OK;
    json_int_t exp = json_integer_value(json_object_get(p, "access_expires_at"));
    const char *tok = json_string_value(json_object_get(p, "access_token"));
    if (rejected != NULL || exp - now_ms() < CTL_REFRESH_MARGIN_MS) {
        int lock = creds_lock(x);
        creds_forget(x); /* another run may have renewed them meanwhile */
        p = profile(x);
        exp = p ? json_integer_value(json_object_get(p, "access_expires_at")) : 0;
        tok = p ? json_string_value(json_object_get(p, "access_token")) : NULL;
        int renewed_elsewhere = tok && (rejected ? strcmp(tok, rejected) != 0 : exp - now_ms() >= CTL_REFRESH_MARGIN_MS);
        int st = p == NULL ? LAGOON_UNAUTHENTICATED : renewed_elsewhere ? LAGOON_OK : refresh(x, p);
        if (lock >= 0)
            close(lock);
        if (st != LAGOON_OK)
            return LAGOON_OK; /* said by refresh: without a token */
        p = profile(x);
        tok = p ? json_string_value(json_object_get(p, "access_token")) : NULL;
        if (x->verbose && renewed_elsewhere)
            fprintf(stderr, "* the access token was renewed by another run\n");
    }
    if (tok == NULL)
        return LAGOON_OK;
    lagoon_set_token(x->client, tok);
    *stored = 1;
    return LAGOON_OK;
}

/* The stored access token the next call sends (to recognise it after a refusal); "" if none. */
static void current_token(ctl *x, char *out, size_t cap)
{
    json_t *p = x->token_flag ? NULL : profile(x);
    const char *t = p ? json_string_value(json_object_get(p, "access_token")) : NULL;
    snprintf(out, cap, "%s", t ? t : "");
}

/* ---- calls ------------------------------------------------------------------------------- */

static void print_json(const json_t *j, int compact)
{
    char *text = json_dumps(j, (compact ? JSON_COMPACT : JSON_INDENT(2)) | JSON_PRESERVE_ORDER);
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
    }
}

/* Prints one received message as JSON. 0, or an exit status. */
static int print_message(const ctl_message *m, const lagoon_raw *raw, int compact)
{
    char err[256];
    json_t *j = ctl_json_decode(m, raw->data, raw->len, err, sizeof(err));
    if (j == NULL) {
        fprintf(stderr, "lagoonctl: cannot decode the %s the server sent: %s\n", m->full_name, err);
        return CTL_EXIT_FAILURE;
    }
    print_json(j, compact);
    json_decref(j);
    return 0;
}

/* text (name says where it came from) as JSON, encoded as a message of type m into out. */
static int encode_request(const ctl_message *m, const char *text, const char *name, ctl_buf *out)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
        return usage_error("bad JSON in %s at line %d, column %d: %s", name, je.line, je.column, je.text);
    char err[512];
    int r = 0;
    if (!json_is_object(j))
        r = usage_error("%s: a %s must be a JSON object", name, m->full_name);
    else if (ctl_json_encode(m, j, out, err, sizeof(err)) != 0)
        r = usage_error("%s: %s", name, err);
    json_decref(j);
    return r;
}

static void verbose_start(const ctl *x, const ctl_method *m)
{
    if (!x->verbose)
        return;
    fprintf(stderr, "> %s (%s%s%s)\n", m->path,
            m->client_streaming && m->server_streaming ? "bidi-streaming"
            : m->client_streaming                      ? "client-streaming"
            : m->server_streaming                      ? "server-streaming"
                                                       : "unary",
            x->idempotency_key ? ", idempotency key " : "", x->idempotency_key ? x->idempotency_key : "");
    if (x->request_id)
        fprintf(stderr, "> request id %s\n", x->request_id);
    if (x->timeout_ms)
        fprintf(stderr, "> timeout %u ms\n", x->timeout_ms);
}

static void per_call_meta(const ctl *x)
{
    lagoon_set_idempotency_key(x->client, x->idempotency_key);
    lagoon_set_request_id(x->client, x->request_id);
}

static int call_unary(ctl *x, const ctl_method *m, const wire_method *wm, const lagoon_raw *req)
{
    int stored;
    use_token(x, NULL, &stored);
    lagoon_raw resp = {NULL, 0};
    double t0 = mono_ms();
    per_call_meta(x);
    int st = lagoon_call(x->client, wm, req, &resp);
    if (st == LAGOON_UNAUTHENTICATED && stored) {
        /* Refused before it ran: renew the session's token once and call again. */
        char rejected[256];
        current_token(x, rejected, sizeof(rejected));
        if (x->verbose)
            fprintf(stderr, "* UNAUTHENTICATED with the stored token: renewing it\n");
        use_token(x, rejected, &stored);
        if (stored) {
            per_call_meta(x);
            st = lagoon_call(x->client, wm, req, &resp);
        }
    }
    if (x->verbose)
        fprintf(stderr, "< %s in %.1f ms\n", lagoon_status_name(st), mono_ms() - t0);
    if (st != LAGOON_OK)
        return report_status(x, st);
    int r = print_message(m->output, &resp, 0);
    free(resp.data);
    return r;
}

/* Prints the stream's messages as they come: until its end (wait), or only those already
 * here. *counted counts them (for --count and -v); *failed gets the exit status of one that
 * could not be decoded. 1 when the stream is over, --count is reached or a signal asked to
 * stop; 0 if it goes on. */
static int drain(ctl *x, const ctl_method *m, lagoon_stream *s, int wait, long *counted, int *failed)
{
    for (;;) {
        if (stop_requested)
            return 1;
        lagoon_raw msg = {NULL, 0};
        int r = lagoon_stream_recv_timeout(s, &msg, wait ? CTL_POLL_MS : 0);
        if (r == -1) {
            if (!wait)
                return 0;
            continue;
        }
        if (r == 0)
            return 1;
        int pr = print_message(m->output, &msg, 1);
        free(msg.data);
        if (pr != 0)
            *failed = pr;
        ++*counted;
        if (x->count > 0 && *counted >= x->count)
            return 1;
    }
}

/* Standard input as lines, read with read(2) so that it can be polled beside the connection;
 * a line is at most CTL_LINE_MAX bytes. */
typedef struct line_reader {
    char *buf;
    size_t len, cap, start; /* buf[start, len) not yet taken */
    int eof;
    long lineno;            /* of the last line taken */
} line_reader;

/* The next non-blank line in *line (NUL-terminated, without its newline; valid until the next
 * call): 1; 0 if none is complete yet (call lr_fill); -1 at the end; -2 for a line over
 * CTL_LINE_MAX. */
static int lr_take(line_reader *r, char **line)
{
    for (;;) {
        char *p = r->buf ? memchr(r->buf + r->start, '\n', r->len - r->start) : NULL;
        if (p == NULL && !(r->eof && r->len > r->start)) {
            if (r->len - r->start > CTL_LINE_MAX)
                return -2;
            return r->eof ? -1 : 0;
        }
        char *end = p ? p : r->buf + r->len;
        char *begin = r->buf + r->start;
        r->start = (size_t)(end - r->buf) + (p ? 1 : 0);
        r->lineno++;
        if ((size_t)(end - begin) > CTL_LINE_MAX)
            return -2;
        *end = '\0';
        if (end > begin && end[-1] == '\r')
            end[-1] = '\0';
        if (strspn(begin, " \t\r") != strlen(begin)) {
            *line = begin;
            return 1;
        }
    }
}

/* Reads what standard input has (one read). 0, or -1 when out of memory. */
static int lr_fill(line_reader *r)
{
    if (r->start > 0) { /* keep only what is not taken */
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->start = 0;
    }
    if (r->cap - r->len < 65536) {
        size_t cap = r->cap ? r->cap * 2 : 131072;
        if (cap > 2 * (size_t)CTL_LINE_MAX + 131072)
            cap = 2 * (size_t)CTL_LINE_MAX + 131072;
        char *b = cap > r->cap ? realloc(r->buf, cap + 1) : r->buf;
        if (b == NULL)
            return -1;
        r->buf = b;
        r->cap = cap;
    }
    ssize_t n = read(STDIN_FILENO, r->buf + r->len, r->cap - r->len);
    if (n < 0 && errno == EINTR)
        return 0;
    if (n <= 0)
        r->eof = 1;
    else
        r->len += (size_t)n;
    return 0;
}

/* Blocks until a line, the end or a signal: lr_take's results (-3: a signal). */
static int lr_wait(line_reader *r, char **line)
{
    for (;;) {
        int got = lr_take(r, line);
        if (got != 0)
            return got;
        if (stop_requested)
            return -3;
        if (lr_fill(r) != 0)
            return -2;
    }
}

/* SIGINT and SIGTERM during a stream: stop it (cancel) instead of dying, so that a followed
 * stream ends cleanly. Outside streams they keep their default action. */
static void stop_on_signals(int on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on ? on_signal : SIG_DFL;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Sends the lines of standard input as messages of stream s, printing what comes back as it
 * comes (bidi). 0 at the end of input; 1 when the stream is over first; -1 on a signal; else an
 * exit status (a bad line). */
static int send_lines(ctl *x, const ctl_method *m, lagoon_stream *s, line_reader *lr, long *counted, int *failed)
{
    ctl_buf buf = {0};
    int r = 0;
    for (;;) {
        if (drain(x, m, s, 0, counted, failed)) {
            r = stop_requested ? -1 : 1;
            break;
        }
        char *line;
        int got = lr_take(lr, &line);
        if (got == 0) {
            struct pollfd p[2] = {{STDIN_FILENO, POLLIN, 0}, {lagoon_fd(x->client), POLLIN, 0}};
            if (poll(p, 2, CTL_POLL_MS) > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) && lr_fill(lr) != 0)
                got = -2;
            else if (stop_requested)
                got = -3;
            else
                continue;
        }
        if (got == -1)
            break;
        if (got == -3) {
            r = -1;
            break;
        }
        if (got == -2) {
            r = usage_error("line %ld of standard input is longer than %u bytes", lr->lineno, CTL_LINE_MAX);
            break;
        }
        char where[64];
        snprintf(where, sizeof(where), "line %ld of standard input", lr->lineno);
        buf.len = 0;
        r = encode_request(m->input, line, where, &buf);
        if (r != 0)
            break;
        lagoon_raw more = {buf.data, buf.len};
        if (lagoon_stream_send(s, &more) != LAGOON_OK) {
            r = 1; /* the server ended the call: its status comes from finish */
            break;
        }
    }
    ctl_buf_free(&buf);
    return r;
}

/* A stream call. A server stream refused as UNAUTHENTICATED before its first message, with the
 * stored token, is opened once more with a renewed one; client and bidi streams are not (their
 * input is read once). */
static int call_stream(ctl *x, const ctl_method *m, const wire_method *wm, const char *first_text)
{
    int stored;
    use_token(x, NULL, &stored);
    int sends = m->client_streaming;
    line_reader lr;
    memset(&lr, 0, sizeof(lr));
    ctl_buf first = {0};
    int r = 0;
    if (first_text == NULL && sends) {
        char *line = NULL;
        int got = lr_wait(&lr, &line);
        if (got == -2)
            r = usage_error("line %ld of standard input is longer than %u bytes", lr.lineno, CTL_LINE_MAX);
        else if (got == -3)
            r = (fprintf(stderr, "lagoonctl: cancelled before the first request\n"), CTL_EXIT_STATUS + LAGOON_CANCELLED);
        else if (got < 0)
            r = usage_error("%s streams its requests: give at least one (the protocol's REQUEST frame carries "
                            "the first), one JSON object a line on standard input",
                            m->path);
        else
            r = encode_request(m->input, line, "line 1 of standard input", &first);
    } else {
        r = encode_request(m->input, first_text ? first_text : "{}", "the request", &first);
    }
    long counted = 0;
    int failed = 0, st = LAGOON_OK, retried = 0;
    double t0 = mono_ms();
    lagoon_stream *s = NULL;
    while (r == 0) {
        lagoon_raw req = {first.data, first.len};
        per_call_meta(x);
        st = lagoon_stream_open(x->client, wm, &req, &s);
        if (st != LAGOON_OK) {
            r = report_status(x, st);
            break;
        }
        int over = 0;
        if (sends) {
            int sr = send_lines(x, m, s, &lr, &counted, &failed);
            if (sr == -1) { /* a signal: the requests did not all go */
                lagoon_stream_cancel(s);
                fprintf(stderr, "lagoonctl: cancelled\n");
                r = CTL_EXIT_STATUS + LAGOON_CANCELLED;
                break;
            }
            if (sr > 1) {
                lagoon_stream_cancel(s);
                r = sr;
                break;
            }
            over = sr == 1;
        }
        lagoon_raw resp = {NULL, 0};
        if (m->client_streaming && !m->server_streaming) {
            st = lagoon_stream_finish(s, &resp);
        } else {
            if (sends)
                lagoon_stream_close_send(s);
            if (!over)
                drain(x, m, s, 1, &counted, &failed);
            st = lagoon_stream_finish(s, NULL);
            /* Stopped by the user (a signal or --count): not a failure for a server stream. */
            if (st == LAGOON_CANCELLED && (stop_requested || (x->count > 0 && counted >= x->count)))
                st = sends && stop_requested ? LAGOON_CANCELLED : LAGOON_OK;
        }
        s = NULL;
        if (st == LAGOON_UNAUTHENTICATED && stored && !sends && counted == 0 && !retried) {
            char rejected[256];
            current_token(x, rejected, sizeof(rejected));
            if (x->verbose)
                fprintf(stderr, "* UNAUTHENTICATED with the stored token: renewing it\n");
            use_token(x, rejected, &stored);
            retried = 1;
            if (stored)
                continue;
        }
        if (x->verbose)
            fprintf(stderr, "< %s after %.1f ms, %ld messages\n", lagoon_status_name(st), mono_ms() - t0, counted);
        if (st != LAGOON_OK)
            r = report_status(x, st);
        else if (resp.data)
            r = print_message(m->output, &resp, 0);
        free(resp.data);
        if (r == 0)
            r = failed;
        break;
    }
    ctl_buf_free(&first);
    free(lr.buf);
    return r;
}

static int cmd_call(ctl *x, int argc, char **argv)
{
    if (argc < 1 || argc > 2)
        return usage_error("usage: lagoonctl call METHOD [JSON | @FILE | -]");
    const ctl_method *m;
    int r = find_method(x, argv[0], &m);
    if (r != 0)
        return r;
    char *text = NULL, *owned = NULL;
    const char *name = "the request";
    if (argc == 2 && strcmp(argv[1], "-") == 0 && !m->client_streaming) {
        size_t n;
        if (read_file(NULL, stdin, &owned, &n) != 0) {
            if (errno == EFBIG)
                return usage_error("standard input holds more than %u bytes", CTL_INPUT_MAX);
            fprintf(stderr, "lagoonctl: cannot read standard input: %s\n", strerror(errno));
            return CTL_EXIT_FAILURE;
        }
        text = owned;
        name = "standard input";
    } else if (argc == 2 && argv[1][0] == '@') {
        size_t n;
        if (read_file(argv[1] + 1, NULL, &owned, &n) != 0) {
            if (errno == EFBIG)
                return usage_error("%s holds more than %u bytes", argv[1] + 1, CTL_INPUT_MAX);
            fprintf(stderr, "lagoonctl: cannot read %s: %s\n", argv[1] + 1, strerror(errno));
            return CTL_EXIT_FAILURE;
        }
        text = owned;
        name = argv[1] + 1;
    } else if (argc == 2 && strcmp(argv[1], "-") != 0) {
        text = argv[1];
    }
    /* A unary request is encoded first: bad JSON is refused whether the server is up or not. */
    ctl_buf buf = {0};
    if (!m->client_streaming && !m->server_streaming) {
        r = encode_request(m->input, text ? text : "{}", name, &buf);
        if (r != 0) {
            free(owned);
            return r;
        }
    }
    int st = connect_server(x);
    if (st != LAGOON_OK) {
        free(owned);
        ctl_buf_free(&buf);
        return CTL_EXIT_STATUS + st;
    }
    wire_method wm = {0};
    wm.path = m->path;
    wm.id = wire_method_id(m->path);
    wm.request_type = m->input->full_name;
    wm.response_type = m->output->full_name;
    wm.kind = (uint8_t)(m->client_streaming && m->server_streaming ? WIRE_BIDI_STREAMING
                        : m->client_streaming                      ? WIRE_CLIENT_STREAMING
                        : m->server_streaming                      ? WIRE_SERVER_STREAMING
                                                                   : WIRE_UNARY);
    if (m->client_streaming || m->server_streaming) {
        stop_on_signals(1); /* before -v's first line: from there a signal stops the stream */
        verbose_start(x, m);
        r = call_stream(x, m, &wm, text);
        stop_on_signals(0);
    } else {
        verbose_start(x, m);
        lagoon_raw req = {buf.data, buf.len};
        r = call_unary(x, m, &wm, &req);
    }
    ctl_buf_free(&buf);
    free(owned);
    return r;
}

/* ---- list and describe -------------------------------------------------------------------- */

static const char *kind_name(const ctl_method *m)
{
    return m->client_streaming && m->server_streaming ? "bidi-streaming"
           : m->client_streaming                      ? "client-streaming"
           : m->server_streaming                      ? "server-streaming"
                                                      : "unary";
}

/* "public", "user", ... from lagoon.v1.Access's value names. */
static void access_name(const ctl_schema *s, int access, char *out, size_t cap)
{
    const ctl_enum *e = ctl_schema_enum(s, "lagoon.v1.Access");
    snprintf(out, cap, access < 0 ? "none declared" : "access %d", access);
    for (size_t i = 0; e && i < e->nvalues; i++) {
        if (e->values[i].number != access)
            continue;
        const char *n = e->values[i].name;
        if (strncmp(n, "ACCESS_", 7) == 0)
            n += 7;
        size_t k = 0;
        for (; n[k] && k + 1 < cap; k++)
            out[k] = (char)(n[k] >= 'A' && n[k] <= 'Z' ? n[k] - 'A' + 'a' : n[k]);
        out[k] = '\0';
    }
}

static int service_matches(const ctl_method *m, const char *want)
{
    if (want == NULL || strcmp(m->service, want) == 0)
        return 1;
    const char *dot = strrchr(m->service, '.');
    return dot && strcmp(dot + 1, want) == 0;
}

/* 1 if the server routes path (routes: its ListMethods, or NULL when it was not asked). */
static int routed(const lagoon_v1_ListMethodsResponse *routes, const char *path)
{
    if (routes == NULL)
        return 1;
    for (pb_size_t i = 0; i < routes->methods_count; i++)
        if (strcmp(routes->methods[i].path, path) == 0)
            return 1;
    return 0;
}

static int cmd_list(ctl *x, int argc, char **argv)
{
    int names = x->names;
    if (argc > 1)
        return usage_error("usage: lagoonctl list [--names] [SERVICE]");
    ctl_schema *s = NULL;
    int r = names ? builtin_schema(x, &s) : shown_schema(x, &s);
    if (r != 0)
        return r;
    /* From the server: only what it serves (its schema is the whole IDL; a server started
     * without --debug-methods does not route Debug). */
    lagoon_v1_ListMethodsResponse routes = lagoon_v1_ListMethodsResponse_init_zero;
    int asked = 0;
    if (s == x->server) {
        lagoon_v1_ListMethodsRequest lreq = lagoon_v1_ListMethodsRequest_init_zero;
        int st = lagoon_Reflection_ListMethods(x->client, &lreq, &routes);
        if (st != LAGOON_OK)
            return report_status(x, st);
        asked = 1;
    }
    const ctl_method *const *ms;
    size_t n = ctl_schema_methods(s, &ms), shown = 0;
    for (size_t i = 0; i < n; i++) {
        const ctl_method *m = ms[i];
        if (!service_matches(m, argc ? argv[0] : NULL) || !routed(asked ? &routes : NULL, m->path))
            continue;
        shown++;
        if (names) {
            printf("%s/%s\n", m->service, m->name);
            continue;
        }
        char acc[32];
        access_name(s, m->access, acc, sizeof(acc));
        char full[256];
        snprintf(full, sizeof(full), "%s/%s", m->service, m->name);
        printf("%-40s %-17s %s%s\n", full, kind_name(m), acc, m->idempotent ? ", idempotent" : "");
    }
    if (asked)
        pb_release(lagoon_v1_ListMethodsResponse_fields, &routes);
    if (shown == 0 && argc)
        return usage_error("no service %s (lagoonctl list shows them)", argv[0]);
    return 0;
}

static const char *type_label(const ctl_field *f)
{
    static const char *const names[] = {NULL,     "double", "float",   "int64",    "uint64",  "int32",  "fixed64",
                                        "fixed32", "bool",   "string",  "group",    NULL,      "bytes",  "uint32",
                                        NULL,      "sfixed32", "sfixed64", "sint32", "sint64"};
    if (f->type == CTL_TYPE_MESSAGE || f->type == CTL_TYPE_ENUM)
        return f->type_name;
    return f->type > 0 && f->type < (int)(sizeof(names) / sizeof(names[0])) && names[f->type] ? names[f->type] : "?";
}

static void describe_field(const ctl_field *f, const char *indent)
{
    if (f->type == CTL_TYPE_MESSAGE && f->message && f->message->map_entry && f->message->nfields == 2)
        printf("%smap<%s, %s> %s = %u;", indent, type_label(&f->message->fields[0]),
               type_label(&f->message->fields[1]), f->name, f->number);
    else
        printf("%s%s%s%s %s = %u;", indent, f->repeated ? "repeated " : "", f->proto3_optional ? "optional " : "",
               type_label(f), f->name, f->number);
    char bounds[160] = "";
    size_t n = 0;
    if (f->max_length)
        n += (size_t)snprintf(bounds + n, sizeof(bounds) - n, ", at most %u bytes", f->max_length);
    if (f->max_size && n < sizeof(bounds))
        n += (size_t)snprintf(bounds + n, sizeof(bounds) - n, ", at most %u bytes", f->max_size);
    if (f->max_count && n < sizeof(bounds))
        snprintf(bounds + n, sizeof(bounds) - n, ", at most %u items", f->max_count);
    printf("  // json: %s%s\n", f->json_name, bounds);
}

static void describe_message(const ctl_message *m)
{
    printf("message %s {\n", m->full_name);
    int32_t open = -1;
    for (size_t i = 0; i < m->nfields; i++) {
        const ctl_field *f = &m->fields[i];
        int32_t o = f->proto3_optional ? -1 : f->oneof_index;
        if (o != open && open >= 0)
            printf("  }\n");
        if (o != open && o >= 0)
            printf("  oneof %s {\n", m->oneofs[o]);
        open = o;
        describe_field(f, open >= 0 ? "    " : "  ");
    }
    if (open >= 0)
        printf("  }\n");
    printf("}\n");
}

static void describe_enum(const ctl_enum *e)
{
    printf("enum %s {\n", e->full_name);
    for (size_t i = 0; i < e->nvalues; i++)
        printf("  %s = %d;\n", e->values[i].name, e->values[i].number);
    printf("}\n");
}

static int cmd_describe(ctl *x, int argc, char **argv)
{
    if (argc != 1)
        return usage_error("usage: lagoonctl describe METHOD | MESSAGE | ENUM");
    ctl_schema *s = NULL;
    int r = shown_schema(x, &s);
    if (r != 0)
        return r;
    const ctl_method *m = ctl_schema_method(s, argv[0]);
    if (m) {
        char acc[32];
        access_name(s, m->access, acc, sizeof(acc));
        printf("%s\n  %s, access %s%s\n  request  %s\n  response %s\n\n", m->path, kind_name(m), acc,
               m->idempotent ? ", idempotent (honours --idempotency-key)" : "", m->input->full_name,
               m->output->full_name);
        describe_message(m->input);
        printf("\n");
        describe_message(m->output);
        return 0;
    }
    const ctl_message *msg = ctl_schema_message(s, argv[0]);
    if (msg) {
        describe_message(msg);
        return 0;
    }
    const ctl_enum *e = ctl_schema_enum(s, argv[0]);
    if (e) {
        describe_enum(e);
        return 0;
    }
    return usage_error("no method, message or enum %s", argv[0]);
}

/* ---- login and logout ---------------------------------------------------------------------- */

/* A line from the terminal (without echo when secret), or from standard input when that is
 * not a terminal. 0, or -1 at the end of input. */
static int prompt(const char *what, int secret, char *out, size_t cap)
{
    FILE *in = stdin;
    FILE *tty = NULL;
    struct termios old, quiet;
    int echo_off = 0;
    if (isatty(STDIN_FILENO)) {
        tty = fopen("/dev/tty", "r+");
        if (tty) {
            in = tty;
            fprintf(tty, "%s: ", what);
            fflush(tty);
            if (secret && tcgetattr(fileno(tty), &old) == 0) {
                quiet = old;
                quiet.c_lflag &= ~(tcflag_t)ECHO;
                echo_off = tcsetattr(fileno(tty), TCSAFLUSH, &quiet) == 0;
            }
        }
    }
    int r = fgets(out, (int)cap, in) ? 0 : -1;
    if (echo_off) {
        tcsetattr(fileno(tty), TCSAFLUSH, &old);
        fputc('\n', tty);
    }
    if (tty)
        fclose(tty);
    if (r == 0)
        out[strcspn(out, "\r\n")] = '\0';
    return r;
}

static int cmd_login(ctl *x, int argc, char **argv)
{
    if (argc > 1)
        return usage_error("usage: lagoonctl login [LOGIN]");
    lagoon_v1_LoginRequest req = lagoon_v1_LoginRequest_init_zero;
    char password[CTL_PASSWORD_MAX];
    if (argc == 1) {
        if (strlen(argv[0]) >= sizeof(req.login))
            return usage_error("a login has at most %zu bytes", sizeof(req.login) - 1);
        snprintf(req.login, sizeof(req.login), "%s", argv[0]);
    } else if (prompt("login (email or username)", 0, req.login, sizeof(req.login)) != 0) {
        return usage_error("no login given");
    }
    if (prompt("password", 1, password, sizeof(password)) != 0)
        return usage_error("no password given (on the terminal, or a line of standard input)");
    if (strlen(password) >= sizeof(req.password)) {
        wipe(password, sizeof(password));
        return usage_error("a password has at most %zu bytes", sizeof(req.password) - 1);
    }
    memcpy(req.password, password, strlen(password) + 1);
    wipe(password, sizeof(password));
    int st = connect_server(x);
    if (st != LAGOON_OK) {
        wipe(&req, sizeof(req));
        return CTL_EXIT_STATUS + st;
    }
    lagoon_v1_TokenPair tp = lagoon_v1_TokenPair_init_zero;
    st = lagoon_Auth_Login(x->client, &req, &tp);
    wipe(&req, sizeof(req));
    if (st != LAGOON_OK)
        return report_status(x, st);
    if (creds_load(x) == NULL) {
        wipe(&tp, sizeof(tp));
        return CTL_EXIT_FAILURE;
    }
    profile_store(x, &tp);
    int saved = creds_save(x);
    printf("signed in at %s as %s (user %" PRIu64 ")%s%s\n", x->addr, tp.user.username, tp.user.id,
           saved == 0 ? "; tokens in " : "", saved == 0 ? x->creds_path : "");
    wipe(&tp, sizeof(tp));
    return saved == 0 ? 0 : CTL_EXIT_FAILURE;
}

static int cmd_logout(ctl *x, int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return usage_error("usage: lagoonctl logout");
    if (profile(x) == NULL)
        return usage_error("not signed in at %s", x->addr);
    int st = connect_server(x);
    if (st != LAGOON_OK)
        return CTL_EXIT_STATUS + st;
    const char *flag = x->token_flag;
    x->token_flag = NULL; /* the stored session is the one that ends */
    int stored;
    use_token(x, NULL, &stored);
    lagoon_v1_AuthEmpty req = lagoon_v1_AuthEmpty_init_zero, resp;
    st = stored ? lagoon_Auth_Logout(x->client, &req, &resp) : LAGOON_UNAUTHENTICATED;
    if (st == LAGOON_UNAUTHENTICATED && stored) {
        /* A stale access token: renew it, so that the session really ends on the server. */
        char rejected[256];
        current_token(x, rejected, sizeof(rejected));
        use_token(x, rejected, &stored);
        if (stored)
            st = lagoon_Auth_Logout(x->client, &req, &resp);
    }
    x->token_flag = flag;
    /* UNAUTHENTICATED now: the session is no longer valid on the server (ended, expired). */
    if (st != LAGOON_OK && st != LAGOON_UNAUTHENTICATED)
        return report_status(x, st);
    /* Ended, or no longer valid: forget it either way. */
    json_object_del(json_object_get(x->creds, "profiles"), x->addr);
    if (creds_save(x) != 0)
        return CTL_EXIT_FAILURE;
    printf("signed out at %s\n", x->addr);
    return 0;
}

/* ---- completion and help -------------------------------------------------------------------- */

static const char completion_bash[] =
    "# bash completion for lagoonctl: source <(lagoonctl completion bash)\n"
    "_lagoonctl() {\n"
    "  local cur=${COMP_WORDS[COMP_CWORD]} cmd= i w\n"
    "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
    "    w=${COMP_WORDS[i]}\n"
    "    case $w in\n"
    "      --addr|--token|--timeout|--idempotency-key|--request-id|--schema|--count|--cacert) ((i++)) ;;\n"
    "      -*) ;;\n"
    "      *) cmd=$w; break ;;\n"
    "    esac\n"
    "  done\n"
    "  case $cmd in\n"
    "    '') COMPREPLY=($(compgen -W 'list describe call login logout completion help' -- \"$cur\")) ;;\n"
    "    call|describe) COMPREPLY=($(compgen -W \"$(lagoonctl list --names 2>/dev/null)\" -- \"$cur\")) ;;\n"
    "    list) COMPREPLY=($(compgen -W \"$(lagoonctl list --names 2>/dev/null | sed 's,/.*,,' | sort -u)\" -- "
    "\"$cur\")) ;;\n"
    "    completion) COMPREPLY=($(compgen -W bash -- \"$cur\")) ;;\n"
    "  esac\n"
    "}\n"
    "complete -F _lagoonctl lagoonctl\n";

static int cmd_completion(int argc, char **argv)
{
    if (argc != 1 || strcmp(argv[0], "bash") != 0)
        return usage_error("usage: lagoonctl completion bash");
    fputs(completion_bash, stdout);
    return 0;
}

static void help(FILE *out)
{
    fprintf(out,
            "usage: lagoonctl [OPTIONS] COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  list [--names] [SERVICE]        methods, their streaming kind and access level\n"
            "  describe METHOD|MESSAGE|ENUM    a method's messages, or a message's fields and bounds\n"
            "  call METHOD [JSON|@FILE|-]      call a method with a JSON request (default {}); server streams\n"
            "                                  print one JSON object a line, client streams read one a line\n"
            "  login [LOGIN]                   sign in (password from the terminal, or a line of stdin)\n"
            "  logout                          end the stored session\n"
            "  completion bash                 print the bash completion script\n"
            "\n"
            "options:\n"
            "  --addr HOST:PORT        server (LAGOON_ADDR; default %s)\n"
            "  --token TOKEN           access token (LAGOON_TOKEN); default: the stored session\n"
            "  --timeout DURATION      deadline of the call: 500ms, 5s, 2m\n"
            "  --idempotency-key KEY   RequestMeta.idempotency_key of the call\n"
            "  --request-id ID         RequestMeta.request_id of the call\n"
            "  --count N               streams: stop after N messages\n"
            "  --schema FILE           use this FileDescriptorSet instead of the built-in schema\n"
            "  --tls                   TLS (LAGOON_TLS=1): the server's certificate is verified and must\n"
            "                          name the HOST of --addr\n"
            "  --cacert FILE           PEM CA file the certificate must chain to (LAGOON_CACERT; implies\n"
            "                          --tls); default: the system's CAs\n"
            "  --strict-schema         refuse a server built from another IDL (its SETTINGS schema hash\n"
            "                          differs from this build's; by default: a warning on stderr)\n"
            "  -v                      metadata, status and timing on standard error\n"
            "\n"
            "exit status: 0 OK, 1 local failure, 2 usage or bad input, 64 + the status code otherwise\n"
            "(65 CANCELLED ... 67 INVALID_ARGUMENT, 69 NOT_FOUND, 78 UNAVAILABLE, 80 UNAUTHENTICATED)\n",
            CTL_DEFAULT_ADDR);
}

/* ---- main ------------------------------------------------------------------------------------- */

/* Takes the options out of argv (anywhere before "--"), leaving the command and its arguments. */
static int parse_options(ctl *x, int *argc, char **argv)
{
    int out = 0, literal = 0;
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        if (literal || a[0] != '-' || strcmp(a, "-") == 0) {
            argv[out++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            literal = 1;
            continue;
        }
        if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            x->verbose = 1;
            continue;
        }
        if (strcmp(a, "--names") == 0) {
            x->names = 1;
            continue;
        }
        if (strcmp(a, "--strict-schema") == 0) {
            x->strict_schema = 1;
            continue;
        }
        if (strcmp(a, "--tls") == 0) {
            x->tls = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            help(stdout);
            exit(0);
        }
        static const char *const with_value[] = {"--addr", "--token", "--timeout", "--idempotency-key",
                                                 "--request-id", "--schema", "--count", "--cacert"};
        const char *name = NULL, *value = NULL;
        for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++) {
            size_t n = strlen(with_value[k]);
            if (strncmp(a, with_value[k], n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                name = with_value[k];
                value = a[n] == '=' ? a + n + 1 : NULL;
            }
        }
        if (name == NULL)
            return usage_error("unknown option %s (lagoonctl help)", a);
        if (value == NULL) {
            if (i + 1 >= *argc)
                return usage_error("%s needs a value", name);
            value = argv[++i];
        }
        if (strcmp(name, "--addr") == 0) {
            x->addr = value;
        } else if (strcmp(name, "--token") == 0) {
            x->token_flag = value;
        } else if (strcmp(name, "--timeout") == 0) {
            if (parse_duration(value, &x->timeout_ms) != 0)
                return usage_error("--timeout %s: a duration such as 500ms, 5s or 2m (at most a day)", value);
        } else if (strcmp(name, "--idempotency-key") == 0) {
            x->idempotency_key = value;
        } else if (strcmp(name, "--request-id") == 0) {
            x->request_id = value;
        } else if (strcmp(name, "--schema") == 0) {
            x->schema_file = value;
        } else if (strcmp(name, "--cacert") == 0) {
            x->cacert = value;
            x->tls = 1;
        } else {
            char *end;
            errno = 0;
            x->count = strtol(value, &end, 10);
            if (errno || *end || x->count < 1)
                return usage_error("--count %s: a number of messages, at least 1", value);
        }
    }
    *argc = out;
    return 0;
}

int main(int argc, char **argv)
{
    ctl x;
    memset(&x, 0, sizeof(x));
    const char *env_addr = getenv("LAGOON_ADDR"), *env_token = getenv("LAGOON_TOKEN");
    x.addr = env_addr && env_addr[0] ? env_addr : CTL_DEFAULT_ADDR;
    x.token_flag = env_token && env_token[0] ? env_token : NULL;
    const char *env_tls = getenv("LAGOON_TLS"), *env_cacert = getenv("LAGOON_CACERT");
    x.tls = env_tls != NULL && strcmp(env_tls, "1") == 0;
    if (env_cacert && env_cacert[0]) {
        x.cacert = env_cacert;
        x.tls = 1;
    }
    argc--;
    argv++;
    int r = parse_options(&x, &argc, argv);
    if (r != 0)
        return r;
    if (argc == 0 || strcmp(argv[0], "help") == 0) {
        help(argc == 0 ? stderr : stdout);
        return argc == 0 ? CTL_EXIT_USAGE : 0;
    }
    if (parse_addr(&x) != 0)
        return usage_error("--addr %s: HOST:PORT, [IPv6]:PORT or HOST", x.addr);
    signal(SIGPIPE, SIG_IGN); /* (SIGINT and SIGTERM: stop_on_signals, around streams) */
    const char *cmd = argv[0];
    argc--;
    argv++;
    if (strcmp(cmd, "call") == 0)
        r = cmd_call(&x, argc, argv);
    else if (strcmp(cmd, "list") == 0)
        r = cmd_list(&x, argc, argv);
    else if (strcmp(cmd, "describe") == 0)
        r = cmd_describe(&x, argc, argv);
    else if (strcmp(cmd, "login") == 0)
        r = cmd_login(&x, argc, argv);
    else if (strcmp(cmd, "logout") == 0)
        r = cmd_logout(&x, argc, argv);
    else if (strcmp(cmd, "completion") == 0)
        r = cmd_completion(argc, argv);
    else
        r = usage_error("unknown command %s (lagoonctl help)", cmd);
    if (x.client)
        lagoon_close(x.client);
    ctl_schema_free(x.builtin);
    ctl_schema_free(x.server);
    json_decref(x.creds);
    return r;
}
