/* rpc_options: flags and environment variables. See rpc_options.h. */
#include "rpc_options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rpc_limits.h"

/* Longest environment variable name built (prefix + option name); longer names are cut, and
 * no option name comes near it. */
#define RPC_OPTIONS_ENV_MAX 64

static int parse_listen(void *target, const char *v, char *err, size_t errlen)
{
    rpc_config *cfg = target;
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

static int parse_log_level(void *target, const char *v, char *err, size_t errlen)
{
    int lvl = log_level_parse(v);
    if (lvl < 0) {
        snprintf(err, errlen, "--log-level: unknown level '%s' (error, warn, info, debug)", v);
        return -1;
    }
    *(int *)target = lvl;
    return 0;
}

size_t rpc_options_server(rpc_config *cfg, int *log_level, rpc_option *out, size_t cap)
{
    /* rpc_config's counts are unsigned, which is uint32_t wherever the server builds. */
    _Static_assert(sizeof(unsigned) == sizeof(uint32_t), "thread counts are parsed as uint32_t");
    const rpc_option fixed[] = {
        {.name = "listen", .kind = RPC_OPTION_PARSE, .target = cfg, .parse = parse_listen,
         .help = "HOST:PORT to listen on (numeric address; [::1]:7420 for IPv6). Default 127.0.0.1:7420."},
        {.name = "threads", .kind = RPC_OPTION_U32, .target = &cfg->threads, .max = 256,
         .help = "Event-loop threads. Default 0 = one per core."},
        {.name = "workers", .kind = RPC_OPTION_U32, .target = &cfg->workers, .max = 256,
         .help = "Worker threads for blocking work. Default 0 = 4."},
        {.name = "hash-workers", .kind = RPC_OPTION_U32, .target = &cfg->hash_workers, .max = 256,
         .help = "Threads that hash passwords (their own queue: --hash-queue). Default 0 = cores - 1, at least 1."},
        {.name = "log-level", .kind = RPC_OPTION_PARSE, .target = log_level, .parse = parse_log_level,
         .help = "error, warn, info (default: one line per call) or debug."},
#define RPC_OPTION_LIMIT(field, flag, d, lo, hi, why)                                                      \
    {.name = flag, .kind = RPC_OPTION_U32, .target = &cfg->field, .min = (lo), .max = (hi), .def = (d),     \
     .flags = RPC_OPTION_SHOW_DEFAULT, .help = why},
        RPC_LIMITS(RPC_OPTION_LIMIT)
#undef RPC_OPTION_LIMIT
    };
    _Static_assert(sizeof(fixed) / sizeof(fixed[0]) == RPC_OPTIONS_SERVER_COUNT, "RPC_OPTIONS_SERVER_COUNT");
    size_t n = 0;
    for (; n < sizeof(fixed) / sizeof(fixed[0]) && n < cap; n++)
        out[n] = fixed[n];
    return n;
}

static int set_option(const rpc_option *op, const char *v, char *err, size_t errlen)
{
    switch (op->kind) {
    case RPC_OPTION_PARSE:
        return op->parse(op->target, v, err, errlen) == 0 ? 0 : -1;
    case RPC_OPTION_TEXT:
        if (strlen(v) == 0 || strlen(v) >= op->size) {
            snprintf(err, errlen, "--%s: empty or longer than %zu bytes", op->name, op->size - 1);
            return -1;
        }
        memcpy(op->target, v, strlen(v) + 1);
        return 0;
    case RPC_OPTION_CHOICE:
        for (uint32_t i = 0; op->choices[i]; i++)
            if (strcmp(v, op->choices[i]) == 0) {
                *(uint32_t *)op->target = i;
                return 0;
            }
        snprintf(err, errlen, "--%s: '%s' is not one of the choices (see --help)", op->name, v);
        return -1;
    case RPC_OPTION_BOOL:
        if (strcmp(v, "1") == 0 || strcmp(v, "0") == 0) {
            *(uint32_t *)op->target = v[0] == '1';
            return 0;
        }
        snprintf(err, errlen, "--%s: '%s' is neither 1 nor 0", op->name, v);
        return -1;
    case RPC_OPTION_U32: {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        int zero_ok = (op->flags & RPC_OPTION_ZERO_DEFAULT) && n == 0;
        /* Digits only: strtoull would skip blanks and accept a sign ("-4294967295" is 1). */
        if (v[0] < '0' || v[0] > '9' || *end || errno || ((n < op->min || n > op->max) && !zero_ok)) {
            snprintf(err, errlen, "--%s: '%s' is not a whole number in %u..%u%s", op->name, v, op->min, op->max,
                     op->flags & RPC_OPTION_ZERO_DEFAULT ? " (or 0 for the default)" : "");
            return -1;
        }
        *(uint32_t *)op->target = (uint32_t)n;
        return 0;
    }
    }
    snprintf(err, errlen, "--%s: unknown option kind %d", op->name, op->kind);
    return -1;
}

static const rpc_option *find_option(const rpc_option *opts, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

static void env_name(const char *prefix, const char *name, char out[RPC_OPTIONS_ENV_MAX])
{
    size_t n = 0;
    for (const char *p = prefix; *p && n < RPC_OPTIONS_ENV_MAX - 1; p++)
        out[n++] = *p;
    for (const char *p = name; *p && n < RPC_OPTIONS_ENV_MAX - 1; p++)
        out[n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    out[n] = '\0';
}

int rpc_options_parse(const rpc_option *opts, size_t n, const char *env_prefix, int argc, char **argv, char *err,
                      size_t errlen)
{
    /* Environment first, so that flags override it. */
    for (size_t i = 0; i < n; i++) {
        char env[RPC_OPTIONS_ENV_MAX];
        env_name(env_prefix, opts[i].name, env);
        const char *v = getenv(env);
        if (v && set_option(&opts[i], v, err, errlen) != 0) {
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
        const rpc_option *op = find_option(opts, n, name, len);
        if (op == NULL) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", a);
            return -1;
        }
        const char *v = eq ? eq + 1 : op->kind == RPC_OPTION_BOOL ? "1" : (i + 1 < argc ? argv[++i] : NULL);
        if (v == NULL) {
            snprintf(err, errlen, "option '%s' needs a value", a);
            return -1;
        }
        if (set_option(op, v, err, errlen) != 0)
            return -1;
    }
    return 0;
}

void rpc_options_usage(FILE *f, const char *program, const char *env_prefix, const rpc_option *opts, size_t n)
{
    fprintf(f,
            "usage: %s [--OPTION VALUE | --OPTION=VALUE ...]\n\n"
            "Every option can also be set with the environment variable %s<OPTION> (upper case,\n"
            "'-' as '_'); flags win over the environment.\n\n",
            program, env_prefix);
    for (size_t i = 0; i < n; i++) {
        const rpc_option *o = &opts[i];
        fprintf(f, "  --%s\n      %s\n", o->name, o->help);
        if (o->kind == RPC_OPTION_U32 && (o->flags & RPC_OPTION_SHOW_DEFAULT))
            fprintf(f, "      Default %u, range %u..%u%s.\n", o->def, o->min, o->max,
                    o->flags & RPC_OPTION_ZERO_DEFAULT ? " (0: the default)" : "");
        else if (o->kind == RPC_OPTION_U32 && o->max)
            fprintf(f, "      Range %u..%u.\n", o->min, o->max);
        else if (o->kind == RPC_OPTION_CHOICE) {
            fprintf(f, "      One of:");
            for (size_t c = 0; o->choices[c]; c++)
                fprintf(f, " %s", o->choices[c]);
            if (o->flags & RPC_OPTION_SHOW_DEFAULT)
                fprintf(f, ". Default %s", o->choices[o->def]);
            fprintf(f, ".\n");
        }
    }
    fprintf(f, "  --help\n  --version\n");
}
