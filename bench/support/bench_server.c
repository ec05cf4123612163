/* See bench_server.h. */
#include "bench_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lagoon_handlers.h"

int bench_stack_dir(bench_stack *s, const char *tmpl)
{
    memset(s, 0, sizeof(*s));
    size_t len = strlen(tmpl);
    if (len >= sizeof(s->dir)) {
        fprintf(stderr, "bench: directory template longer than %d\n", BENCH_DIR_MAX - 1);
        return -1;
    }
    memcpy(s->dir, tmpl, len + 1);
    if (mkdtemp(s->dir) == NULL) {
        perror("mkdtemp");
        s->dir[0] = '\0';
        return -1;
    }
    return 0;
}

int bench_stack_open(bench_stack *s, const char *tmpl, const app_config *acfg)
{
    if (s->dir[0] == '\0' && bench_stack_dir(s, tmpl) != 0)
        return -1;
    app_config fast = {0};
    fast.sync = STORE_SYNC_NONE;
    rpc_error err;
    if (app_open(s->dir, acfg != NULL ? acfg : &fast, &s->app, &err) != RPC_OK) {
        fprintf(stderr, "app: %s\n", err.message);
        s->app = NULL;
        return -1;
    }
    return 0;
}

void bench_stack_config(const bench_stack *s, rpc_config *cfg)
{
    rpc_config_defaults(cfg);
    cfg->listen_port = 0;
    cfg->app = s->app;
    cfg->authenticate = app_authenticate;
    cfg->authenticate_arg = s->app;
}

static void *serve(void *arg)
{
    rpc_error err;
    if (rpc_server_run(arg, &err) != RPC_OK)
        fprintf(stderr, "server: %s\n", err.message);
    return NULL;
}

int bench_stack_serve(bench_stack *s, const rpc_config *cfg)
{
    rpc_config defaults;
    if (cfg == NULL) {
        bench_stack_config(s, &defaults);
        cfg = &defaults;
    }
    rpc_error err;
    if (rpc_server_new(cfg, lagoon_routes, lagoon_routes_count, &s->srv, &err) != RPC_OK) {
        fprintf(stderr, "server: %s\n", err.message);
        s->srv = NULL;
        return -1;
    }
    if (pthread_create(&s->th, NULL, serve, s->srv) != 0) {
        fprintf(stderr, "server: no thread\n");
        rpc_server_free(s->srv);
        s->srv = NULL;
        return -1;
    }
    return 0;
}

uint16_t bench_stack_port(const bench_stack *s)
{
    return rpc_server_port(s->srv);
}

int bench_stack_connect(const bench_stack *s, const char *token, lagoon_client **out)
{
    lagoon_error err;
    if (lagoon_connect("127.0.0.1", bench_stack_port(s), NULL, out, &err) != LAGOON_OK) {
        fprintf(stderr, "connect: %s\n", err.detail.message);
        return -1;
    }
    if (token != NULL)
        lagoon_set_token(*out, token);
    return 0;
}

int bench_stack_stop(bench_stack *s)
{
    if (s->srv != NULL) {
        rpc_server_stop(s->srv);
        pthread_join(s->th, NULL);
        rpc_server_join_workers(s->srv);
    }
    if (s->app != NULL)
        app_close(s->app);
    if (s->srv != NULL)
        rpc_server_free(s->srv);
    s->srv = NULL;
    s->app = NULL;
    if (s->dir[0] == '\0')
        return 0;
    /* The path is mkdtemp's: no quote in it. */
    char cmd[BENCH_DIR_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
    s->dir[0] = '\0';
    return system(cmd) == 0 ? 0 : -1;
}

uint64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int bench_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int bench_stats_init(bench_stats *s, size_t cap)
{
    memset(s, 0, sizeof(*s));
    s->us = calloc(cap > 0 ? cap : 1, sizeof(*s->us));
    if (s->us == NULL)
        return -1;
    s->cap = cap;
    return 0;
}

void bench_stats_free(bench_stats *s)
{
    free(s->us);
    memset(s, 0, sizeof(*s));
}

void bench_stats_reset(bench_stats *s)
{
    s->n = 0;
    s->total_us = 0;
}

void bench_stats_add(bench_stats *s, uint64_t us)
{
    if (s->n >= s->cap)
        return;
    s->us[s->n++] = (uint32_t)(us > UINT32_MAX ? UINT32_MAX : us);
    s->total_us += us;
}

void bench_stats_ms(bench_stats *s, double out[3])
{
    out[0] = out[1] = out[2] = 0;
    if (s->n == 0)
        return;
    qsort(s->us, s->n, sizeof(s->us[0]), bench_cmp_u32);
    out[0] = (double)s->total_us / (double)s->n / 1000.0;
    out[1] = s->us[(size_t)(0.50 * (double)(s->n - 1))] / 1000.0;
    out[2] = s->us[(size_t)(0.99 * (double)(s->n - 1))] / 1000.0;
}

int bench_sweep_args(bench_sweep *sw, int argc, char **argv, const char *prog, const char *count_opt)
{
    char opt[64];
    snprintf(opt, sizeof(opt), "--%s", count_opt);
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && strcmp(argv[i], "--sizes") == 0) {
            snprintf(sw->sizes, sizeof(sw->sizes), "%s", argv[i + 1]);
        } else if (i + 1 < argc && strcmp(argv[i], opt) == 0) {
            sw->count = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "usage: %s [--sizes N,N] [%s N]\n", prog, opt);
            return 2;
        }
    }
    if (sw->count < 1 || sw->count > BENCH_COUNT_MAX) {
        fprintf(stderr, "%s: %s 1..%d\n", prog, count_opt, BENCH_COUNT_MAX);
        return 2;
    }
    return 0;
}

int bench_sweep_run(bench_sweep *sw, const char *prog, uint64_t min, uint64_t max, bench_size_fn fn)
{
    sw->n = 0;
    sw->first_size = sw->last_size = 0;
    bench_stats us;
    if (bench_stats_init(&us, (size_t)sw->count) != 0)
        return 1;
    int rc = 0;
    char *save = NULL;
    /* strtok_r consumes at least one character a token: bounded by the list's length. */
    for (char *tok = strtok_r(sw->sizes, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        uint64_t size = strtoull(tok, NULL, 10);
        if (size < min || size > max) {
            fprintf(stderr, "%s: sizes from %llu to %llu\n", prog, (unsigned long long)min, (unsigned long long)max);
            rc = 2;
        } else if (fn(size, sw->count, &us, sw->n == 0 ? sw->first : sw->last) != 0) {
            rc = 1;
        } else {
            if (sw->n++ == 0)
                sw->first_size = size;
            sw->last_size = size;
        }
    }
    bench_stats_free(&us);
    return rc;
}
