/* admin_http: see admin_http.h. */
#include "admin_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http_listener.h"
#include "lagoon_tables.h"
#include "media.h"
#include "realtime.h"
#include "scheduler.h"
#include "store.h"

/* A scrape of a busy server is a few tens of KiB; nothing a client sends is needed beyond the
 * request line, so headers and bodies are kept small. */
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_BODY 1024
#define ADMIN_TIMEOUT_S 10
/* Queue tables (outbox, scheduled jobs) are counted by their keys at each scrape, up to this
 * many pages of STORE_PAGE_SIZE_MAX: a backlog past 50 000 reads as 50 000, which is already
 * an alarm, and a scrape stays bounded however far behind a queue is. */
#define ADMIN_COUNT_PAGES_MAX 100

struct admin_http {
    rpc_server *srv;
    app *app;
    http_listener *listener; /* the thread, the event base and the connection limit */
};

int admin_listen_parse(const char *value, char *host, size_t cap, uint16_t *port, char *err, size_t errlen)
{
    const char *p = value;
    char h[ADMIN_LISTEN_MAX] = "127.0.0.1";
    const char *colon = strrchr(value, ':');
    if (value[0] == '[') {
        const char *close = strchr(value, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - value - 1) >= sizeof(h)) {
            snprintf(err, errlen, "'%s' is not [IPV6]:PORT", value);
            return -1;
        }
        memcpy(h, value + 1, (size_t)(close - value - 1));
        h[close - value - 1] = '\0';
        p = close + 2;
    } else if (colon != NULL) {
        if ((size_t)(colon - value) >= sizeof(h)) {
            snprintf(err, errlen, "'%s': the address is too long", value);
            return -1;
        }
        memcpy(h, value, (size_t)(colon - value));
        h[colon - value] = '\0';
        p = colon + 1;
    }
    unsigned char probe[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, h, probe) != 1 && inet_pton(AF_INET6, h, probe) != 1) {
        snprintf(err, errlen, "'%s' is not a numeric IP address", h);
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (p[0] == '\0' || *end != '\0' || errno != 0 || v > 65535) {
        snprintf(err, errlen, "'%s' is not a port (0-65535)", p);
        return -1;
    }
    if (strlen(h) >= cap) {
        snprintf(err, errlen, "'%s': the address is too long", h);
        return -1;
    }
    snprintf(host, cap, "%s", h);
    *port = (uint16_t)v;
    return 0;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain; charset=utf-8");
    evbuffer_add_printf(b, "%s\n", body);
    evhttp_send_reply(req, code, reason, b);
    evbuffer_free(b);
}

/* A histogram without labels. counts has n + 1 entries, per bucket (not cumulative), the last
 * one past the largest bound; scale turns a bound into the metric's unit (1e-6: us to seconds). */
static void histogram(struct evbuffer *out, const char *name, const char *help, const uint64_t *bounds,
                      const uint64_t *counts, unsigned n, double scale, double sum)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (unsigned b = 0; b < n; b++) {
        cum += counts[b];
        evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds[b] * scale, cum);
    }
    cum += counts[n];
    evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, cum, name, sum,
                        name, cum);
}

/* The app's numbers: the store's counters (what its writer already keeps). */
static void app_metrics(const admin_http *h, struct evbuffer *out)
{
    static const uint64_t commit_bounds[STORE_COMMIT_NBUCKETS] = {STORE_COMMIT_BUCKETS_US};
    static const uint64_t batch_bounds[STORE_BATCH_NBUCKETS] = {STORE_BATCH_BUCKETS};
    store_counters c;
    store_counters_get(h->app->db, &c);
    evbuffer_add_printf(out,
                        "# HELP lagoon_store_commits_total Write transactions (batches) committed.\n"
                        "# TYPE lagoon_store_commits_total counter\n"
                        "lagoon_store_commits_total %llu\n"
                        "# HELP lagoon_store_writes_total Writes committed; divided by commits, the mean batch size.\n"
                        "# TYPE lagoon_store_writes_total counter\n"
                        "lagoon_store_writes_total %llu\n"
                        "# HELP lagoon_store_writes_failed_total Writes that failed (their own error or their batch's).\n"
                        "# TYPE lagoon_store_writes_failed_total counter\n"
                        "lagoon_store_writes_failed_total %llu\n"
                        "# HELP lagoon_store_map_growths_total Times the LMDB map was enlarged.\n"
                        "# TYPE lagoon_store_map_growths_total counter\n"
                        "lagoon_store_map_growths_total %llu\n"
                        "# HELP lagoon_store_map_size_bytes The LMDB map's current size.\n"
                        "# TYPE lagoon_store_map_size_bytes gauge\n"
                        "lagoon_store_map_size_bytes %llu\n"
                        "# HELP lagoon_store_map_used_bytes Of the map, the pages in use up to the last one written.\n"
                        "# TYPE lagoon_store_map_used_bytes gauge\n"
                        "lagoon_store_map_used_bytes %llu\n",
                        (unsigned long long)c.batches, (unsigned long long)c.ops_ok, (unsigned long long)c.ops_failed,
                        (unsigned long long)c.map_growths, (unsigned long long)c.map_size,
                        (unsigned long long)c.map_used);
    histogram(out, "lagoon_store_commit_duration_seconds",
              "Committed batches by how long their commit took, from its start to durable (the fsync).",
              commit_bounds, c.commit_us, STORE_COMMIT_NBUCKETS, 1e-6, (double)c.commit_ns_sum / 1e9);
    histogram(out, "lagoon_store_batch_writes", "Committed batches by the writes they committed.", batch_bounds,
              c.batch_writes, STORE_BATCH_NBUCKETS, 1, (double)c.ops_ok);
}

/* Rows of tab counted by key (no row decoded), up to ADMIN_COUNT_PAGES_MAX pages; -1 on a
 * store error. */
static long long count_rows(store *db, const store_table *tab)
{
    store_txn *txn;
    store_error err;
    if (store_read_begin(db, &txn, &err) != LAGOON_OK)
        return -1;
    long long n = 0;
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    for (int pages = 0; pages < ADMIN_COUNT_PAGES_MAX; pages++) {
        store_query q = {.table = tab, .page_size = STORE_PAGE_SIZE_MAX, .page_token = token};
        store_page page;
        if (store_scan(txn, &q, NULL, NULL, &page, &err) != LAGOON_OK) {
            n = -1;
            break;
        }
        n += page.count;
        memcpy(token, page.next_page_token, sizeof(token));
        if (token[0] == '\0')
            break;
    }
    store_read_end(txn);
    return n;
}

/* The queues and the realtime router. */
static void queue_metrics(const admin_http *h, struct evbuffer *out)
{
    long long outbox = count_rows(h->app->db, &lagoon_table_outbox);
    long long jobs = count_rows(h->app->db, &lagoon_table_scheduled_jobs);
    if (outbox >= 0)
        evbuffer_add_printf(out,
                            "# HELP lagoon_mail_outbox_depth Emails waiting for delivery (counted up to 50000).\n"
                            "# TYPE lagoon_mail_outbox_depth gauge\n"
                            "lagoon_mail_outbox_depth %lld\n",
                            outbox);
    if (jobs >= 0)
        evbuffer_add_printf(out,
                            "# HELP lagoon_jobs_scheduled Durable jobs waiting for their due time, failed ones "
                            "awaiting a retry included (counted up to 50000).\n"
                            "# TYPE lagoon_jobs_scheduled gauge\n"
                            "lagoon_jobs_scheduled %lld\n",
                            jobs);
    uint64_t failed, dropped;
    sched_counts(h->app, &failed, &dropped);
    evbuffer_add_printf(out,
                        "# HELP lagoon_jobs_failed_total Scheduled job runs that failed (each then retried, or "
                        "dropped at its last attempt).\n"
                        "# TYPE lagoon_jobs_failed_total counter\n"
                        "lagoon_jobs_failed_total %llu\n"
                        "# HELP lagoon_jobs_dropped_total Scheduled jobs dropped after their last failed attempt.\n"
                        "# TYPE lagoon_jobs_dropped_total counter\n"
                        "lagoon_jobs_dropped_total %llu\n",
                        (unsigned long long)failed, (unsigned long long)dropped);
    if (h->app->rt != NULL) {
        unsigned subs, follows;
        size_t backlog, largest;
        realtime_counts(h->app->rt, &subs, &follows);
        realtime_backlog(h->app->rt, &backlog, &largest);
        evbuffer_add_printf(out,
                            "# HELP lagoon_realtime_subscribers Live Events/Subscribe streams.\n"
                            "# TYPE lagoon_realtime_subscribers gauge\n"
                            "lagoon_realtime_subscribers %u\n"
                            "# HELP lagoon_realtime_followings Topic followings of the live streams.\n"
                            "# TYPE lagoon_realtime_followings gauge\n"
                            "lagoon_realtime_followings %u\n"
                            "# HELP lagoon_realtime_backlog_bytes Bytes queued to the live streams, not yet "
                            "taken by the kernel (sampled every second or so).\n"
                            "# TYPE lagoon_realtime_backlog_bytes gauge\n"
                            "lagoon_realtime_backlog_bytes %zu\n"
                            "# HELP lagoon_realtime_backlog_max_bytes The largest backlog of one live stream.\n"
                            "# TYPE lagoon_realtime_backlog_max_bytes gauge\n"
                            "lagoon_realtime_backlog_max_bytes %zu\n"
                            "# HELP lagoon_realtime_backlog_limit_bytes The backlog past which a stream is ended as "
                            "too slow.\n"
                            "# TYPE lagoon_realtime_backlog_limit_bytes gauge\n"
                            "lagoon_realtime_backlog_limit_bytes %zu\n",
                            subs, follows, backlog, largest, h->app->cfg.subscriber_backlog);
    }
    uint64_t mj[MEDIA_JOB_STATES];
    if (media_job_counts(h->app, mj) == RPC_OK)
        evbuffer_add_printf(out,
                            "# HELP lagoon_media_jobs Media processing jobs by state (counted up to 50000 each).\n"
                            "# TYPE lagoon_media_jobs gauge\n"
                            "lagoon_media_jobs{state=\"queued\"} %llu\n"
                            "lagoon_media_jobs{state=\"running\"} %llu\n"
                            "lagoon_media_jobs{state=\"succeeded\"} %llu\n"
                            "lagoon_media_jobs{state=\"failed\"} %llu\n",
                            (unsigned long long)mj[lagoon_v1_MediaJob_State_QUEUED],
                            (unsigned long long)mj[lagoon_v1_MediaJob_State_RUNNING],
                            (unsigned long long)mj[lagoon_v1_MediaJob_State_SUCCEEDED],
                            (unsigned long long)mj[lagoon_v1_MediaJob_State_FAILED]);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    admin_http *h = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "only GET and HEAD");
        return;
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path == NULL)
        path = "";
    if (strcmp(path, "/healthz") == 0) {
        reply_text(req, HTTP_OK, "OK", "ok");
    } else if (strcmp(path, "/readyz") == 0) {
        if (h->app->db == NULL)
            reply_text(req, 503, "Service Unavailable", "store closed");
        else if (rpc_server_draining(h->srv))
            reply_text(req, 503, "Service Unavailable", "draining");
        else
            reply_text(req, HTTP_OK, "OK", "ready");
    } else if (strcmp(path, "/metrics") == 0) {
        struct evbuffer *b = evbuffer_new();
        if (b == NULL) {
            evhttp_send_error(req, HTTP_INTERNAL, NULL);
            return;
        }
        evbuffer_add_printf(b,
                            "# HELP lagoon_build_info The build's version (always 1).\n"
                            "# TYPE lagoon_build_info gauge\n"
                            "lagoon_build_info{version=\"%s\"} 1\n",
                            rpc_server_version(h->srv));
        rpc_server_metrics(h->srv, b);
        app_metrics(h, b);
        queue_metrics(h, b);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evhttp_send_reply(req, HTTP_OK, "OK", b);
        evbuffer_free(b);
    } else {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found: try /metrics, /healthz or /readyz");
    }
}

int admin_http_start(const char *host, uint16_t port, rpc_server *srv, app *a, admin_http **out, rpc_error *err)
{
    *out = NULL;
    admin_http *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    h->srv = srv;
    h->app = a;
    http_listener_config cfg = {.what = "admin listener",
                                .host = host,
                                .port = port,
                                .max_connections = ADMIN_MAX_CONNECTIONS,
                                .timeout_s = ADMIN_TIMEOUT_S,
                                .max_headers = ADMIN_MAX_HEADERS,
                                .max_body = ADMIN_MAX_BODY,
                                .on_request = on_request,
                                .arg = h};
    if (http_listener_start(&cfg, &h->listener, err) != RPC_OK) {
        free(h);
        return RPC_ERR;
    }
    *out = h;
    return RPC_OK;
}

uint16_t admin_http_port(const admin_http *h) { return http_listener_port(h->listener); }

void admin_http_stop(admin_http *h)
{
    if (h == NULL)
        return;
    http_listener_stop(h->listener);
    free(h);
}
