/* lagoond: the Lagoon server.
 *
 * Reads options (flags, each also settable through the environment), creates the data
 * directory, starts the RPC server with the generated routes and serves until SIGTERM/SIGINT,
 * then drains and exits 0. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "lagoon_handlers.h"
#include "log.h"
#include "rpc.h"

#define LAGOOND_DATA_DEFAULT "./var"
#define LAGOOND_PATH_MAX 1024
#define DEBUG_SERVICE_PREFIX "/lagoon.v1.Debug/"

enum opt_kind { OPT_LISTEN, OPT_PATH, OPT_U32, OPT_LOGLEVEL, OPT_SYNC, OPT_BOOL };

typedef struct lagoond_opts {
    rpc_config rpc;
    char data[LAGOOND_PATH_MAX];
    int log_level;
    int sync; /* enum store_sync */
    uint32_t argon2_ops, argon2_mem_kib;
    uint32_t event_retention_count, event_retention_days;
    uint32_t debug_methods; /* serve the Debug service (tests and benchmarks) */
} lagoond_opts;

typedef struct opt {
    const char *name; /* flag without "--"; env is LAGOON_ + upper case, '-' -> '_' */
    int kind;
    size_t offset; /* into lagoond_opts */
    uint32_t min, max;
    const char *help;
    uint32_t def; /* OPT_U32 with has_def: the default, printed by --help */
    int has_def;
} opt;

#define OPT_RPC(field) (offsetof(lagoond_opts, rpc) + offsetof(rpc_config, field))

static const opt options[] = {
    {"listen", OPT_LISTEN, 0, 0, 0, "HOST:PORT to listen on (numeric address; [::1]:7420 for IPv6). Default 127.0.0.1:7420."},
    {"data", OPT_PATH, offsetof(lagoond_opts, data), 0, 0, "Data directory (LMDB files). Default ./var; created if missing."},
    {"threads", OPT_U32, OPT_RPC(threads), 0, 256, "Event-loop threads. Default 0 = one per core."},
    {"workers", OPT_U32, OPT_RPC(workers), 0, 256, "Worker threads for blocking work. Default 0 = 4."},
    {"hash-workers", OPT_U32, OPT_RPC(hash_workers), 0, 256,
     "Threads that hash passwords (their own queue: --hash-queue). Default 0 = cores - 1, at least 1."},
    {"debug-methods", OPT_BOOL, offsetof(lagoond_opts, debug_methods), 0, 1,
     "Serve the Debug service (echo, delays, streams) for tests and benchmarks. Off by default: its "
     "methods exist to load the server and answer UNIMPLEMENTED when off. --debug-methods or =1 turns it on."},
    {"log-level", OPT_LOGLEVEL, offsetof(lagoond_opts, log_level), 0, 0, "error, warn, info (default: one line per call) or debug."},
    {"sync", OPT_SYNC, offsetof(lagoond_opts, sync), 0, 0,
     "full (default): a write is acknowledged once it is on disk. none: for benchmarks only; a power "
     "loss or kernel crash loses the last seconds of acknowledged writes."},
    {"argon2-ops", OPT_U32, offsetof(lagoond_opts, argon2_ops), 0, 16,
     "Argon2id passes per password hash. Default 0 = libsodium's interactive limit (2)."},
    {"argon2-mem-kib", OPT_U32, offsetof(lagoond_opts, argon2_mem_kib), 0, 4u << 20,
     "Argon2id memory per hash, KiB. Default 0 = libsodium's interactive limit (64 MiB). Each hash worker "
     "hashes one password at a time, so hash-workers x this bounds the memory hashing takes."},
    {"event-retention-count", OPT_U32, offsetof(lagoond_opts, event_retention_count), 0, 1000000,
     "Realtime events kept per user for resuming subscriptions. Default 0 = 1000."},
    {"event-retention-days", OPT_U32, offsetof(lagoond_opts, event_retention_days), 0, 3650,
     "And for at most this many days. Default 0 = 7. A resume from before what is kept gets OUT_OF_RANGE."},
#define OPT_LIMIT(field, flag, def, min, max, why) {flag, OPT_U32, OPT_RPC(field), (min), (max), why, (def), 1},
    RPC_LIMITS(OPT_LIMIT)
#undef OPT_LIMIT
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: lagoond [--OPTION VALUE | --OPTION=VALUE ...]\n\n"
               "Every option can also be set with the environment variable LAGOON_<OPTION> (upper case,\n"
               "'-' as '_'); flags win over the environment.\n\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        fprintf(f, "  --%s\n      %s\n", options[i].name, options[i].help);
        if (options[i].kind == OPT_U32 && options[i].has_def)
            fprintf(f, "      Default %u, range %u..%u.\n", options[i].def, options[i].min, options[i].max);
        else if (options[i].kind == OPT_U32 && options[i].max)
            fprintf(f, "      Range %u..%u.\n", options[i].min, options[i].max);
    }
    fprintf(f, "  --help\n  --version\n");
}

static int parse_listen(const char *v, rpc_config *cfg, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    if (colon == NULL) {
        snprintf(err, errlen, "--listen wants HOST:PORT, got '%s'", v);
        return -1;
    }
    const char *host = v;
    size_t hlen = (size_t)(colon - v);
    if (hlen >= 2 && v[0] == '[' && v[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (hlen == 0 || hlen >= sizeof(cfg->listen_host) || *end || colon[1] == '\0' || port > 65535 || errno) {
        snprintf(err, errlen, "--listen wants HOST:PORT with a numeric address and port, got '%s'", v);
        return -1;
    }
    memcpy(cfg->listen_host, host, hlen);
    cfg->listen_host[hlen] = '\0';
    cfg->listen_port = (uint16_t)port;
    return 0;
}

static int set_opt(lagoond_opts *o, const opt *op, const char *v, char *err, size_t errlen)
{
    char *base = (char *)o;
    switch (op->kind) {
    case OPT_LISTEN:
        return parse_listen(v, &o->rpc, err, errlen);
    case OPT_PATH:
        if (strlen(v) == 0 || strlen(v) >= LAGOOND_PATH_MAX) {
            snprintf(err, errlen, "--%s: path empty or longer than %d bytes", op->name, LAGOOND_PATH_MAX - 1);
            return -1;
        }
        snprintf(base + op->offset, LAGOOND_PATH_MAX, "%s", v);
        return 0;
    case OPT_SYNC:
        if (strcmp(v, "full") == 0 || strcmp(v, "none") == 0) {
            *(int *)(base + op->offset) = strcmp(v, "none") == 0 ? STORE_SYNC_NONE : STORE_SYNC_FULL;
            return 0;
        }
        snprintf(err, errlen, "--%s: '%s' is neither full nor none", op->name, v);
        return -1;
    case OPT_LOGLEVEL: {
        int lvl = log_level_parse(v);
        if (lvl < 0) {
            snprintf(err, errlen, "--%s: unknown level '%s' (error, warn, info, debug)", op->name, v);
            return -1;
        }
        *(int *)(base + op->offset) = lvl;
        return 0;
    }
    case OPT_BOOL:
        if (strcmp(v, "1") == 0 || strcmp(v, "0") == 0) {
            *(uint32_t *)(base + op->offset) = v[0] == '1';
            return 0;
        }
        snprintf(err, errlen, "--%s: '%s' is neither 1 nor 0", op->name, v);
        return -1;
    case OPT_U32: {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (*v == '\0' || *end || errno || v[0] == '-' || n < op->min || n > op->max) {
            snprintf(err, errlen, "--%s: '%s' is not a whole number in %u..%u", op->name, v, op->min, op->max);
            return -1;
        }
        *(uint32_t *)(base + op->offset) = (uint32_t)n;
        return 0;
    }
    }
    return -1;
}

static const opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].name) == len && strncmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

static int parse_args(lagoond_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    /* Environment first, so that flags override it. */
    for (size_t i = 0; i < NOPTIONS; i++) {
        char env[64] = "LAGOON_";
        size_t n = strlen(env);
        for (const char *p = options[i].name; *p && n < sizeof(env) - 1; p++)
            env[n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        env[n] = '\0';
        const char *v = getenv(env);
        if (v && set_opt(o, &options[i], v, err, errlen) != 0) {
            size_t l = strlen(err);
            snprintf(err + l, errlen - l, " (from %s)", env);
            return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return 1;
        if (strcmp(a, "--version") == 0)
            return 2;
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt *op = find_opt(name, len);
        if (op == NULL) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", a);
            return -1;
        }
        const char *v = eq ? eq + 1 : op->kind == OPT_BOOL ? "1" : (i + 1 < argc ? argv[++i] : NULL);
        if (v == NULL) {
            snprintf(err, errlen, "option '%s' needs a value", a);
            return -1;
        }
        if (set_opt(o, op, v, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char buf[LAGOOND_PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "cannot create data directory '%s': %s", buf, strerror(errno));
                return -1;
            }
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    lagoond_opts o;
    memset(&o, 0, sizeof(o));
    rpc_config_defaults(&o.rpc);
    snprintf(o.data, sizeof(o.data), "%s", LAGOOND_DATA_DEFAULT);
    o.log_level = LOG_INFO;
    o.rpc.handle_signals = 1;

    char err[LAGOOND_PATH_MAX + 256];
    int r = parse_args(&o, argc, argv, err, sizeof(err));
    if (r == 1) {
        usage(stdout);
        return 0;
    }
    if (r == 2) {
        printf("lagoond %s\n", o.rpc.version);
        return 0;
    }
    if (r < 0) {
        fprintf(stderr, "lagoond: %s\n", err);
        return 2;
    }
    log_set_level(o.log_level);
    if (make_dirs(o.data, err, sizeof(err)) != 0) {
        fprintf(stderr, "lagoond: %s\n", err);
        return 1;
    }

    app_config acfg = {0};
    acfg.sync = (enum store_sync)o.sync;
    acfg.pwhash_opslimit = o.argon2_ops;
    acfg.pwhash_memlimit = (size_t)o.argon2_mem_kib * 1024;
    acfg.event_retention_count = o.event_retention_count;
    acfg.event_retention_s = o.event_retention_days * 24u * 3600u;
    app *a;
    rpc_error rerr;
    if (app_open(o.data, &acfg, &a, &rerr) != RPC_OK) {
        fprintf(stderr, "lagoond: %s\n", rerr.message);
        return 1;
    }
    o.rpc.app = a;
    o.rpc.authenticate = app_authenticate;
    o.rpc.authenticate_arg = a;
    o.rpc.access_denied = app_access_denied;
    o.rpc.naccess_denied = APP_ACCESS_LEVELS;
    o.rpc.on_drain = app_on_drain;
    /* Without --debug-methods the Debug service is not routed at all: its calls are unknown
     * methods, and Reflection does not list them. */
    rpc_route *routes = malloc(lagoon_routes_count * sizeof(*routes));
    if (routes == NULL) {
        fprintf(stderr, "lagoond: out of memory\n");
        app_close(a);
        return 1;
    }
    size_t nroutes = 0;
    for (size_t i = 0; i < lagoon_routes_count; i++)
        if (o.debug_methods || strncmp(lagoon_routes[i].method->path, DEBUG_SERVICE_PREFIX,
                                       sizeof(DEBUG_SERVICE_PREFIX) - 1) != 0)
            routes[nroutes++] = lagoon_routes[i];
    rpc_server *server;
    if (rpc_server_new(&o.rpc, routes, nroutes, &server, &rerr) != RPC_OK) {
        fprintf(stderr, "lagoond: %s\n", rerr.message);
        app_close(a);
        free(routes);
        return 1;
    }
    log_msg(LOG_INFO, "lagoond %s data=%s sync=%s", o.rpc.version, o.data, o.sync ? "none" : "full");
    int rc = rpc_server_run(server, &rerr) == RPC_OK ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "lagoond: %s\n", rerr.message);
    /* Order matters: workers may still submit writes, and the store's completions finish
     * calls, which the server processes until it is freed. */
    rpc_server_join_workers(server);
    app_close(a);
    rpc_server_free(server);
    free(routes);
    return rc;
}
