/* lagoond: the Lagoon server.
 *
 * Reads options (flags, each also settable through the environment: the RPC layer's from
 * rpc_options_server, the application's from APP_SETTINGS, and its own), creates the data
 * directory, starts the RPC server with the generated routes and serves until SIGTERM/SIGINT,
 * then drains and exits 0. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin_http.h"
#include "app.h"
#include "app_settings.h"
#include "lagoon_handlers.h"
#include "log.h"
#include "media_http.h"
#include "rpc.h"
#include "rpc_options.h"

#define LAGOOND_DATA_DEFAULT "./var"
#define LAGOOND_PATH_MAX 1024
#define DEBUG_SERVICE_PREFIX "/lagoon.v1.Debug/"
#define LAGOOND_ENV_PREFIX "LAGOON_"

typedef struct lagoond_opts {
    rpc_config rpc;
    char data[LAGOOND_PATH_MAX];
    int log_level;
    uint32_t debug_methods; /* serve the Debug service (tests and benchmarks) */
    uint32_t check_config;  /* --check-config: validate the settings and exit */
    uint32_t settings[APP_SETTINGS_COUNT]; /* APP_SETTINGS, 0 = the default */
    char stun_urls[APP_ICE_URLS_MAX];      /* app_config's ICE servers */
    char turn_urls[APP_ICE_URLS_MAX];
    char turn_secret[APP_TURN_SECRET_MAX];
    char ffmpeg[APP_TOOL_PATH_MAX];        /* --ffmpeg, --ffprobe: "" = the names in PATH */
    char ffprobe[APP_TOOL_PATH_MAX];
    struct lagoond_admin {
        int on;                     /* --admin-listen given */
        char host[ADMIN_LISTEN_MAX];
        uint16_t port;
    } admin;
    struct lagoond_admin media;     /* --media-listen (the same [HOST:]PORT form) */
    char media_url_base[APP_MEDIA_URL_BASE_MAX]; /* --media-url-base; "" = from --media-listen */
} lagoond_opts;

static int parse_admin_listen(void *target, const char *value, char *err, size_t errlen)
{
    struct lagoond_admin *a = target;
    char why[160];
    if (admin_listen_parse(value, a->host, sizeof(a->host), &a->port, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "--admin-listen wants [HOST:]PORT: %s", why);
        return -1;
    }
    a->on = 1;
    return 0;
}

static int parse_media_listen(void *target, const char *value, char *err, size_t errlen)
{
    struct lagoond_admin *a = target;
    char why[160];
    if (admin_listen_parse(value, a->host, sizeof(a->host), &a->port, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "--media-listen wants [HOST:]PORT: %s", why);
        return -1;
    }
    a->on = 1;
    return 0;
}

/* The RPC layer's options (rpc_options_server), lagoond's own, then the app's settings. */
#define LAGOOND_OWN_OPTIONS 13
#define LAGOOND_OPTIONS (RPC_OPTIONS_SERVER_COUNT + LAGOOND_OWN_OPTIONS + APP_SETTINGS_COUNT)

static size_t lagoond_options(lagoond_opts *o, rpc_option out[LAGOOND_OPTIONS])
{
    size_t n = rpc_options_server(&o->rpc, &o->log_level, out, LAGOOND_OPTIONS);
    out[n++] = (rpc_option){.name = "data", .kind = RPC_OPTION_TEXT, .target = o->data, .size = sizeof(o->data),
                            .help = "Data directory (LMDB files). Default ./var; created if missing."};
    out[n++] = (rpc_option){
        .name = "debug-methods", .kind = RPC_OPTION_BOOL, .target = &o->debug_methods,
        .help = "Serve the Debug service (echo, delays, streams) for tests and benchmarks. Off by default: its "
                "methods exist to load the server and answer UNIMPLEMENTED when off. --debug-methods or =1 turns it on."};
    out[n++] = (rpc_option){.name = "stun-urls", .kind = RPC_OPTION_TEXT, .target = o->stun_urls,
                            .size = sizeof(o->stun_urls),
                            .help = "STUN servers handed to call participants (Signalling/GetIceServers), comma-separated "
                                    "URLs such as stun:stun.example.com:3478. Default none."};
    out[n++] = (rpc_option){.name = "turn-urls", .kind = RPC_OPTION_TEXT, .target = o->turn_urls,
                            .size = sizeof(o->turn_urls),
                            .help = "TURN servers handed to call participants, comma-separated URLs such as "
                                    "turn:turn.example.com:3478?transport=udp, with credentials from --turn-secret. "
                                    "Default none."};
    out[n++] = (rpc_option){.name = "turn-secret", .kind = RPC_OPTION_TEXT, .target = o->turn_secret,
                            .size = sizeof(o->turn_secret),
                            .help = "The shared secret of coturn's use-auth-secret (static-auth-secret): TURN "
                                    "credentials are username expiry:user id, password base64(HMAC-SHA1(secret, "
                                    "username)). Prefer LAGOON_TURN_SECRET in the environment to keep it out of ps."};
    out[n++] = (rpc_option){
        .name = "check-config", .kind = RPC_OPTION_BOOL, .target = &o->check_config,
        .help = "Validate the settings (flags and LAGOON_* environment: ranges, listen addresses, the data "
                "directory) without opening the store or binding a port, print \"configuration OK\" and exit 0, "
                "or the first problem and exit 2. For a service manager's ExecStartPre or after editing the "
                "environment file."};
    out[n++] = (rpc_option){
        .name = "admin-listen", .kind = RPC_OPTION_PARSE, .target = &o->admin, .parse = parse_admin_listen,
        .help = "Serve the HTTP admin listener on [HOST:]PORT (HOST numeric, 127.0.0.1 when left out): "
                "/metrics (Prometheus text format), /healthz (the process answers) and /readyz (the store is "
                "open and the server is not draining; 503 otherwise). Off by default: it has no "
                "authentication, so keep it on a loopback or management address (docs/OPERATIONS.md)."};
    out[n++] = (rpc_option){
        .name = "tls-cert", .kind = RPC_OPTION_TEXT, .target = o->rpc.tls_cert, .size = sizeof(o->rpc.tls_cert),
        .help = "PEM certificate chain (the server's certificate first): with --tls-key, the client port speaks "
                "only TLS 1.2/1.3 with ALPN lagoon/1 (no plain TCP beside it). SIGHUP reads both files again: new "
                "connections get the new pair, open ones keep theirs, a pair that does not load is logged and the "
                "old one kept. Default none: plain TCP."};
    out[n++] = (rpc_option){.name = "tls-key", .kind = RPC_OPTION_TEXT, .target = o->rpc.tls_key,
                            .size = sizeof(o->rpc.tls_key),
                            .help = "PEM private key of --tls-cert (unencrypted; keep it mode 0600)."};
    out[n++] = (rpc_option){
        .name = "media-listen", .kind = RPC_OPTION_PARSE, .target = &o->media, .parse = parse_media_listen,
        .help = "Serve media files (video renditions, thumbnails, profile images) over HTTP on [HOST:]PORT "
                "(HOST numeric, 127.0.0.1 when left out) to holders of the signed URLs Videos/GetPlayback and "
                "profiles hand out (docs/API.md). Off by default: no signed URLs are handed out then."};
    out[n++] = (rpc_option){
        .name = "media-url-base", .kind = RPC_OPTION_TEXT, .target = o->media_url_base,
        .size = sizeof(o->media_url_base),
        .help = "The address clients reach the media listener at, as the start of every signed URL, such as "
                "https://media.example.com behind a proxy (no trailing slash). Default http://HOST:PORT of "
                "--media-listen."};
    out[n++] = (rpc_option){.name = "ffmpeg", .kind = RPC_OPTION_TEXT, .target = o->ffmpeg, .size = sizeof(o->ffmpeg),
                            .help = "The ffmpeg that processes uploads (a path, or a name looked up in PATH). "
                                    "Default ffmpeg."};
    out[n++] = (rpc_option){.name = "ffprobe", .kind = RPC_OPTION_TEXT, .target = o->ffprobe,
                            .size = sizeof(o->ffprobe),
                            .help = "The ffprobe that checks uploads and reads their metadata. Default ffprobe."};
    n += app_settings_options(o->settings, out + n, LAGOOND_OPTIONS - n);
    return n;
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

/* The data directory as lagoond would use it: an existing writable directory, or one whose
 * nearest existing ancestor is a writable directory (make_dirs creates the rest). */
static int check_data_dir(const char *path, char *err, size_t errlen)
{
    char buf[LAGOOND_PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (int depth = 0; depth < LAGOOND_PATH_MAX; depth++) {
        struct stat st;
        if (stat(buf, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "data directory: '%s' is not a directory", buf);
                return -1;
            }
            if (access(buf, W_OK | X_OK) != 0) {
                snprintf(err, errlen, "data directory: '%s' is not writable: %s", buf, strerror(errno));
                return -1;
            }
            return 0;
        }
        char *slash = strrchr(buf, '/');
        if (slash == NULL) {
            snprintf(buf, sizeof(buf), ".");
        } else if (slash == buf) {
            buf[1] = '\0';
        } else {
            *slash = '\0';
        }
    }
    snprintf(err, errlen, "data directory: cannot check '%s'", path);
    return -1;
}

/* What is wrong with the media listener's flags, or NULL. */
static const char *media_config_problem(const lagoond_opts *o)
{
    const char *b = o->media_url_base;
    size_t n = strlen(b);
    if (o->media.on && o->media.port != 0 && strcmp(o->media.host, o->rpc.listen_host) == 0 &&
        o->media.port == o->rpc.listen_port)
        return "--media-listen and --listen are the same address";
    if (o->media.on && o->admin.on && o->media.port != 0 && strcmp(o->media.host, o->admin.host) == 0 &&
        o->media.port == o->admin.port)
        return "--media-listen and --admin-listen are the same address";
    if (n > 0 && !o->media.on)
        return "--media-url-base needs --media-listen (the URLs name this server's media listener)";
    if (n > 0 && ((strncmp(b, "http://", 7) != 0 && strncmp(b, "https://", 8) != 0) || b[n - 1] == '/'))
        return "--media-url-base must be an http:// or https:// URL without a trailing slash";
    /* "/media/..." and the query follow it as they are: a query, fragment, space or quote of its
     * own would break every URL. */
    if (strcspn(b, "?# \t\r\n\"'<>\\") != n)
        return "--media-url-base must not hold a query, a fragment, spaces, quotes or angle brackets";
    /* The default base names the port: an ephemeral one is not known before the bind. */
    if (o->media.on && o->media.port == 0 && n == 0)
        return "--media-listen with port 0 needs --media-url-base (the URLs name the port)";
    return NULL;
}

/* --check-config: everything that can be known without the store or the ports. */
static int check_config(const lagoond_opts *o)
{
    rpc_error rerr;
    char err[LAGOOND_PATH_MAX + 256];
    if (rpc_config_check(&o->rpc, &rerr) != RPC_OK) {
        fprintf(stderr, "lagoond: configuration: %s\n", rerr.message);
        return 2;
    }
    if (check_data_dir(o->data, err, sizeof(err)) != 0) {
        fprintf(stderr, "lagoond: configuration: %s\n", err);
        return 2;
    }
    if (o->admin.on && strcmp(o->admin.host, o->rpc.listen_host) == 0 && o->admin.port == o->rpc.listen_port &&
        o->admin.port != 0) {
        fprintf(stderr, "lagoond: configuration: --admin-listen and --listen are the same address\n");
        return 2;
    }
    if (media_config_problem(o) != NULL) {
        fprintf(stderr, "lagoond: configuration: %s\n", media_config_problem(o));
        return 2;
    }
    printf("configuration OK\n");
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

    rpc_option options[LAGOOND_OPTIONS];
    size_t noptions = lagoond_options(&o, options);
    char err[LAGOOND_PATH_MAX + 256];
    int r = rpc_options_parse(options, noptions, LAGOOND_ENV_PREFIX, argc, argv, err, sizeof(err));
    if (r == 1) {
        rpc_options_usage(stdout, "lagoond", LAGOOND_ENV_PREFIX, options, noptions);
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
    if (o.check_config)
        return check_config(&o);
    if (media_config_problem(&o) != NULL) {
        fprintf(stderr, "lagoond: %s\n", media_config_problem(&o));
        return 2;
    }
    if (make_dirs(o.data, err, sizeof(err)) != 0) {
        fprintf(stderr, "lagoond: %s\n", err);
        return 1;
    }

    app_config acfg = {0};
    app_settings_apply(o.settings, &acfg);
    APP_STRCPY(acfg.stun_urls, o.stun_urls);
    APP_STRCPY(acfg.turn_urls, o.turn_urls);
    APP_STRCPY(acfg.turn_secret, o.turn_secret);
    APP_STRCPY(acfg.ffmpeg, o.ffmpeg);
    APP_STRCPY(acfg.ffprobe, o.ffprobe);
    sodium_memzero(o.turn_secret, sizeof(o.turn_secret));
    if (o.media_url_base[0] != '\0')
        APP_STRCPY(acfg.media_url_base, o.media_url_base);
    else if (o.media.on && strchr(o.media.host, ':') != NULL)
        snprintf(acfg.media_url_base, sizeof(acfg.media_url_base), "http://[%s]:%u", o.media.host, o.media.port);
    else if (o.media.on)
        snprintf(acfg.media_url_base, sizeof(acfg.media_url_base), "http://%s:%u", o.media.host, o.media.port);
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
    o.rpc.schema_hash = lagoon_schema_hash;
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
    admin_http *admin = NULL;
    if (o.admin.on) {
        if (admin_http_start(o.admin.host, o.admin.port, server, a, &admin, &rerr) != RPC_OK) {
            fprintf(stderr, "lagoond: %s\n", rerr.message);
            rpc_server_free(server);
            app_close(a);
            free(routes);
            return 1;
        }
        log_msg(LOG_INFO, "admin listener on %s:%u", o.admin.host, admin_http_port(admin));
    }
    media_http *media = NULL;
    if (o.media.on) {
        if (media_http_start(o.media.host, o.media.port, a, &media, &rerr) != RPC_OK) {
            fprintf(stderr, "lagoond: %s\n", rerr.message);
            admin_http_stop(admin);
            rpc_server_free(server);
            app_close(a);
            free(routes);
            return 1;
        }
        log_msg(LOG_INFO, "media listener on %s:%u, URLs %s", o.media.host, media_http_port(media),
                acfg.media_url_base);
    }
    log_msg(LOG_INFO, "lagoond %s data=%s sync=%s", o.rpc.version, o.data,
            acfg.sync == STORE_SYNC_NONE ? "none" : "full");
    int rc = rpc_server_run(server, &rerr) == RPC_OK ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "lagoond: %s\n", rerr.message);
    /* /readyz answers 503 (draining) until here; the admin listener reads the server, so it
     * stops before the server is freed. */
    admin_http_stop(admin);
    media_http_stop(media); /* it reads the store: before app_close */
    /* Order matters: workers may still submit writes, and the store's completions finish
     * calls, which the server processes until it is freed. */
    rpc_server_join_workers(server);
    app_close(a);
    rpc_server_free(server);
    free(routes);
    return rc;
}
