/* The admin listener (handlers/tools/admin_http.c) through curl against the real server: the
 * /metrics page parses as the Prometheus text format, its counters follow the calls made,
 * /healthz and /readyz answer, and /readyz turns 503 as soon as a drain starts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "admin_http.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "media.h"
#include "scheduler.h"
#include "testserver.h"
#include "videos.h"

#define PAGE_MAX (1 << 20)
#define LINE_MAX_LEN 4096
#define FAMILIES_MAX 256

static char page[PAGE_MAX];

/* GET (or method) http://127.0.0.1:port/path with curl into page; the HTTP status, or -1. */
static int http(uint16_t port, const char *method, const char *path)
{
    char out[] = "/tmp/lagoon-metrics-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "curl -s -S --max-time 10 -X %s -o %s -w '%%{http_code}' http://127.0.0.1:%u%s", method,
             out, (unsigned)port, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char code[16] = "";
    size_t n = fread(code, 1, sizeof(code) - 1, p);
    code[n] = '\0';
    assert_int_equal(pclose(p), 0);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    size_t len = fread(page, 1, sizeof(page) - 1, f);
    page[len] = '\0';
    fclose(f);
    unlink(out);
    return n ? atoi(code) : -1;
}

/* ---- a parser of the text exposition format (0.0.4), strict enough to catch a bad line ---- */

typedef struct family {
    char name[128];
    char type[16];
} family;

static int is_name_char(char ch, int first)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch == ':' ||
           (!first && ch >= '0' && ch <= '9');
}

/* Length of the metric or label name at p, 0 if there is none. */
static size_t name_len(const char *p)
{
    size_t n = 0;
    while (is_name_char(p[n], n == 0))
        n++;
    return n;
}

/* Parses {name="value",...} at p; returns what follows, or NULL if malformed. */
static const char *parse_labels(const char *p)
{
    if (*p != '{')
        return p;
    p++;
    while (*p != '}') {
        size_t n = name_len(p);
        if (n == 0 || p[n] != '=' || p[n + 1] != '"')
            return NULL;
        p += n + 2;
        while (*p != '"') {
            if (*p == '\0' || *p == '\n')
                return NULL;
            if (*p == '\\') {
                if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                    return NULL;
                p++;
            }
            p++;
        }
        p++;
        if (*p == ',')
            p++;
        else if (*p != '}')
            return NULL;
    }
    return p + 1;
}

static const family *family_of(const family *fams, size_t n, const char *sample, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        size_t fl = strlen(fams[i].name);
        if (fl == len && memcmp(fams[i].name, sample, len) == 0)
            return &fams[i];
        if (strcmp(fams[i].type, "histogram") == 0 && len > fl && memcmp(fams[i].name, sample, fl) == 0) {
            const char *suffix = sample + fl;
            size_t sl = len - fl;
            if ((sl == 7 && memcmp(suffix, "_bucket", 7) == 0) || (sl == 4 && memcmp(suffix, "_sum", 4) == 0) ||
                (sl == 6 && memcmp(suffix, "_count", 6) == 0))
                return &fams[i];
        }
    }
    return NULL;
}

/* Checks every line of text; fails the test naming the first bad one. Returns the sample count. */
static size_t check_exposition(const char *text)
{
    static family fams[FAMILIES_MAX];
    size_t nfams = 0, samples = 0;
    const char *p = text;
    assert_true(*p != '\0');
    while (*p) {
        const char *eol = strchr(p, '\n');
        assert_non_null(eol); /* every line ends with a newline, the last one too */
        char line[LINE_MAX_LEN] = {0};
        size_t len = (size_t)(eol - p);
        assert_true(len > 0 && len < sizeof(line));
        memcpy(line, p, len);
        line[len] = '\0';
        if (strncmp(line, "# TYPE ", 7) == 0) {
            size_t n = name_len(line + 7);
            assert_true(n > 0 && n < sizeof(fams[0].name) && line[7 + n] == ' ');
            const char *type = line + 8 + n;
            if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram") && strcmp(type, "summary") &&
                strcmp(type, "untyped"))
                fail_msg("bad TYPE line: %s", line);
            assert_null(family_of(fams, nfams, line + 7, n)); /* declared once */
            assert_true(nfams < FAMILIES_MAX);
            memcpy(fams[nfams].name, line + 7, n);
            fams[nfams].name[n] = '\0';
            snprintf(fams[nfams].type, sizeof(fams[nfams].type), "%s", type);
            if (strcmp(type, "counter") == 0 && (n < 6 || memcmp(line + 7 + n - 6, "_total", 6) != 0))
                fail_msg("a counter's name should end in _total: %s", line);
            nfams++;
        } else if (strncmp(line, "# HELP ", 7) == 0) {
            size_t n = name_len(line + 7);
            assert_true(n > 0 && line[7 + n] == ' ' && line[8 + n] != '\0');
        } else if (line[0] == '#') {
            fail_msg("unknown comment line: %s", line);
        } else {
            size_t n = name_len(line);
            if (n == 0)
                fail_msg("no metric name: %s", line);
            if (family_of(fams, nfams, line, n) == NULL)
                fail_msg("sample before (or without) its TYPE: %s", line);
            const char *v = parse_labels(line + n);
            if (v == NULL || *v != ' ') {
                fail_msg("bad labels: %s", line);
                return samples; /* not reached: fail_msg ends the test */
            }
            v++;
            char *end;
            if (strcmp(v, "+Inf") && strcmp(v, "-Inf") && strcmp(v, "NaN")) {
                (void)strtod(v, &end);
                if (end == v || *end != '\0')
                    fail_msg("bad value: %s", line);
            }
            samples++;
        }
        p = eol + 1;
    }
    return samples;
}

/* The value of the sample whose name and labels are exactly series ("name{a=\"b\"}"), 0 if
 * the page has none (per-method series appear once the method has been called). */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    const char *p = text;
    while ((p = strstr(p, series)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p += n;
    }
    return 0;
}

/* The buckets of histogram name (of one label set: labels is "" or "method=\"...\"") rise with
 * le, end with le="+Inf", and that one equals _count, which is returned. */
static double check_histogram_of(const char *text, const char *name, const char *labels)
{
    char key[256];
    snprintf(key, sizeof(key), "%s_bucket{%s%sle=\"", name, labels, labels[0] ? "," : "");
    double last = 0;
    int buckets = 0, inf = 0;
    for (const char *p = strstr(text, key); p != NULL; p = strstr(p + 1, key)) {
        const char *sp = strchr(p, ' ');
        assert_non_null(sp);
        assert_false(inf); /* +Inf is the last bucket */
        inf = strncmp(p + strlen(key), "+Inf\"", 5) == 0;
        double v = strtod(sp + 1, NULL);
        assert_true(v >= last);
        last = v;
        buckets++;
    }
    assert_true(buckets >= 2 && inf);
    snprintf(key, sizeof(key), "%s_count%s%s%s", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "");
    assert_true(sample(text, key) == last);
    return last;
}

/* Every histogram's buckets of one method rise with le and end at +Inf == _count. */
static void check_histogram(const char *text, const char *method)
{
    char labels[200];
    snprintf(labels, sizeof(labels), "method=\"%s\"", method);
    check_histogram_of(text, "lagoon_rpc_call_duration_seconds", labels);
}

static admin_http *start_admin(test_app *t)
{
    admin_http *h;
    rpc_error err;
    assert_int_equal(admin_http_start("127.0.0.1", 0, t->srv.server, t->app, &h, &err), RPC_OK);
    assert_true(admin_http_port(h) != 0);
    return h;
}

/* Starts the app (tweak may be NULL) and its admin listener, and scrapes /metrics once into page,
 * checked. Returns the admin port. */
static uint16_t start_scraped(test_app *t, void (*tweak)(app_config *acfg, rpc_config *cfg), admin_http **h)
{
    test_app_start(t, tweak);
    *h = start_admin(t);
    uint16_t port = admin_http_port(*h);
    assert_int_equal(http(port, "GET", "/metrics"), 200);
    check_exposition(page);
    return port;
}

#define CHECK_SERIES "lagoon_rpc_calls_total{method=\"/lagoon.v1.Health/Check\",status=\"OK\"}"
#define UNKNOWN_SERIES "lagoon_rpc_calls_total{method=\"unknown\",status=\"UNIMPLEMENTED\"}"

static void test_metrics_page_parses_and_counts_calls(void **state)
{
    (void)state;
    test_app t;
    admin_http *h;
    uint16_t port = start_scraped(&t, NULL, &h);
    assert_non_null(strstr(page, "lagoon_build_info{version=\""));
    double checks0 = sample(page, CHECK_SERIES);
    double unknown0 = sample(page, UNKNOWN_SERIES);
    double accepted0 = sample(page, "lagoon_rpc_connections_accepted_total");
    double in0 = sample(page, "lagoon_rpc_received_bytes_total");
    double out0 = sample(page, "lagoon_rpc_sent_bytes_total");
    double commits0 = sample(page, "lagoon_store_commits_total");

    enum { CALLS = 7 };
    uint32_t id;
    int fd = raw_connect(t.srv.port, 1);
    for (uint32_t i = 0; i < CALLS; i++) {
        raw_send_call(fd, 1 + 2 * i, &lagoon_method_Health_Check, NULL, NULL, 0, NULL, NULL);
        assert_int_equal(raw_read_reply(fd, &id, NULL, 0), LAGOON_OK);
    }
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 101, 0x7fff0001u, NULL, 0, NULL, 0);
    assert_int_equal(raw_read_reply(fd, &id, NULL, 0), LAGOON_UNIMPLEMENTED);
    /* A write, so that the store's counters move too. */
    lagoon_client *c = test_client(&t);
    char token[65];
    test_user(c, "counted", 0, token);

    assert_int_equal(http(port, "GET", "/metrics"), 200);
    size_t samples = check_exposition(page);
    assert_true(samples > 20);
    assert_true(sample(page, CHECK_SERIES) == checks0 + CALLS);
    assert_true(sample(page, UNKNOWN_SERIES) == unknown0 + 1);
    assert_true(sample(page, "lagoon_rpc_connections_accepted_total") >= accepted0 + 2);
    assert_true(sample(page, "lagoon_rpc_connections_open") >= 2);
    assert_true(sample(page, "lagoon_rpc_received_bytes_total") > in0 + CALLS * WIRE_HEADER_SIZE);
    assert_true(sample(page, "lagoon_rpc_sent_bytes_total") > out0 + CALLS * WIRE_HEADER_SIZE);
    assert_true(sample(page, "lagoon_store_commits_total") > commits0);
    assert_true(sample(page, "lagoon_store_map_size_bytes") > 0);
    /* The users just registered are on pages: some are in use, and never more than the map. */
    assert_true(sample(page, "lagoon_store_map_used_bytes") > 0);
    assert_true(sample(page, "lagoon_store_map_used_bytes") <= sample(page, "lagoon_store_map_size_bytes"));
    for (const char *const *name = (const char *const[]){"\nlagoon_mail_outbox_depth ", "\nlagoon_jobs_scheduled ",
                                                          "\nlagoon_realtime_subscribers ", NULL};
         *name; name++)
        if (strstr(page, *name) == NULL)
            fail_msg("no%s", *name);
    check_histogram(page, "/lagoon.v1.Health/Check");
    assert_true(sample(page, "lagoon_rpc_call_duration_seconds_count{method=\"/lagoon.v1.Health/Check\"}") >= CALLS);

    assert_int_equal(http(port, "GET", "/healthz"), 200);
    assert_string_equal(page, "ok\n");
    assert_int_equal(http(port, "GET", "/readyz"), 200);
    assert_string_equal(page, "ready\n");
    assert_int_equal(http(port, "GET", "/nothing-here"), 404);
    assert_int_equal(http(port, "POST", "/metrics"), 405);

    lagoon_close(c);
    close(fd);
    admin_http_stop(h);
    test_app_stop(&t);
}

/* ---- media jobs by state --------------------------------------------------------------------- */

static void no_media_workers(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->no_media_workers = 1;
}

typedef struct media_job_put {
    uint64_t owner, video_id;
    int64_t now;
    const app *a;
} media_job_put;

/* A video of owner's and its job, as Uploads' completing write makes them (no original file:
 * its probe fails, so the job fails at its first attempt). */
static int media_job_put_fn(store_txn *t, void *arg, store_error *err)
{
    media_job_put *p = arg;
    lagoon_v1_Video *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    v->owner_id = p->owner;
    snprintf(v->title, sizeof(v->title), "Counted");
    v->status = lagoon_v1_Video_Status_PROCESSING;
    v->source = lagoon_v1_Video_Source_UPLOAD;
    v->upload_id = 1;
    v->created_at = v->updated_at = p->now;
    int st = videos_insert(t, v, err);
    p->video_id = v->id;
    free(v);
    if (st == LAGOON_OK)
        st = media_enqueue(t, p->a, p->now, MEDIA_JOB_VIDEO, p->owner, p->video_id, err);
    return st;
}

static int media_video_delete_fn(store_txn *t, void *arg, store_error *err)
{
    return store_delete(t, &lagoon_table_videos, *(uint64_t *)arg, err);
}

#define MJ(state) "lagoon_media_jobs{state=\"" state "\"}"

typedef struct media_scrape {
    uint16_t port;
    double failed;
} media_scrape;

static int media_failed_reached(void *arg)
{
    media_scrape *m = arg;
    return http(m->port, "GET", "/metrics") == 200 && sample(page, MJ("failed")) == m->failed;
}

/* lagoon_media_jobs{state}: a job queued with no worker to run it (an administration tool's
 * app), then failed by the workers of the next start, then gone with its video. */
static void test_media_jobs_by_state(void **state)
{
    (void)state;
    test_app t;
    admin_http *h;
    uint16_t port = start_scraped(&t, no_media_workers, &h);
    for (const char *const *s = (const char *const[]){MJ("queued"), MJ("running"), MJ("succeeded"), MJ("failed"), NULL};
         *s; s++) {
        if (strstr(page, *s) == NULL)
            fail_msg("no %s", *s);
        assert_true(sample(page, *s) == 0);
    }
    lagoon_client *c = test_client(&t);
    char token[65];
    media_job_put p = {.owner = test_user(c, "mediacounted", 0, token), .now = t.clock_ms, .a = t.app};
    lagoon_close(c);
    store_error err;
    assert_int_equal(store_write(t.app->db, media_job_put_fn, &p, &err), LAGOON_OK);
    media_kick(t.app);
    assert_int_equal(http(port, "GET", "/metrics"), 200);
    check_exposition(page);
    /* No worker ran it (no_media_workers): still queued. */
    assert_true(sample(page, MJ("queued")) == 1);
    assert_true(sample(page, MJ("running")) == 0);
    admin_http_stop(h);

    test_app_restart(&t, NULL);
    h = start_admin(&t);
    media_scrape m = {.port = admin_http_port(h), .failed = 1};
    assert_true(test_wait_for(media_failed_reached, &m, 30000));
    assert_true(sample(page, MJ("queued")) == 0);
    assert_true(sample(page, MJ("running")) == 0);
    /* The video's deletion takes its job (a cascade, not a write of the media module's). */
    assert_int_equal(store_write(t.app->db, media_video_delete_fn, &p.video_id, &err), LAGOON_OK);
    assert_int_equal(http(m.port, "GET", "/metrics"), 200);
    assert_true(sample(page, MJ("failed")) == 0);
    admin_http_stop(h);
    test_app_stop(&t);
}

/* ---- the store's group commit ---------------------------------------------------------------- */

typedef struct counted_writes {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, failed;
} counted_writes;

static int empty_write(store_txn *t, void *arg, store_error *err)
{
    (void)t;
    (void)arg;
    (void)err;
    return LAGOON_OK; /* commits nothing, yet is a committed write of its batch */
}

static void counted_done(void *arg, int status, const store_error *err)
{
    (void)err;
    counted_writes *w = arg;
    pthread_mutex_lock(&w->mu);
    w->done++;
    w->failed += status != LAGOON_OK;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Batches in the bucket (lo, hi] of lagoon_store_batch_writes. */
static double batches_between(const char *text, const char *lo, const char *hi)
{
    char a[128], b[128];
    snprintf(a, sizeof(a), "lagoon_store_batch_writes_bucket{le=\"%s\"}", lo);
    snprintf(b, sizeof(b), "lagoon_store_batch_writes_bucket{le=\"%s\"}", hi);
    return sample(text, b) - sample(text, a);
}

/* Writes queued behind a held writer commit as one batch: the batch-size histogram counts it in
 * its bucket, and both histograms count exactly the committed batches. */
static void test_store_commit_histograms(void **state)
{
    (void)state;
    enum { QUEUED = 20 }; /* lands in the bucket (16, 32] */
    test_app t;
    admin_http *h;
    uint16_t port = start_scraped(&t, NULL, &h);
    double commits0 = check_histogram_of(page, "lagoon_store_commit_duration_seconds", "");
    assert_true(commits0 == sample(page, "lagoon_store_commits_total"));
    assert_true(check_histogram_of(page, "lagoon_store_batch_writes", "") == commits0);
    double sum0 = sample(page, "lagoon_store_commit_duration_seconds_sum");
    double between0 = batches_between(page, "16", "32");

    test_hold hold = TEST_HOLD_INIT;
    test_hold_writer(&t, &hold);
    counted_writes w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    store_error err;
    for (int i = 0; i < QUEUED; i++)
        assert_int_equal(store_submit(t.app->db, empty_write, NULL, counted_done, &w, &err), LAGOON_OK);
    test_hold_release(&hold);
    assert_true(test_hold_wait(&hold, &hold.done));
    struct timespec ts;
    test_deadline_in(&ts, 10000);
    pthread_mutex_lock(&w.mu);
    while (w.done < QUEUED && pthread_cond_timedwait(&w.cv, &w.mu, &ts) == 0)
        ;
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(w.done, QUEUED);
    assert_int_equal(w.failed, 0);

    assert_int_equal(http(port, "GET", "/metrics"), 200);
    check_exposition(page);
    double commits = check_histogram_of(page, "lagoon_store_commit_duration_seconds", "");
    assert_true(commits >= commits0 + 2); /* the holding write's batch, then the queued ones' */
    assert_true(commits == sample(page, "lagoon_store_commits_total"));
    assert_true(check_histogram_of(page, "lagoon_store_batch_writes", "") == commits);
    assert_true(sample(page, "lagoon_store_batch_writes_sum") == sample(page, "lagoon_store_writes_total"));
    assert_true(sample(page, "lagoon_store_commit_duration_seconds_sum") > sum0);
    assert_true(batches_between(page, "16", "32") >= between0 + 1);
    admin_http_stop(h);
    test_app_stop(&t);
}

/* ---- failed and dropped jobs ------------------------------------------------------------------- */

#define FAILING_KIND ((lagoon_v1_JobKind)97) /* a kind of the test's own, whose every run fails */

static int failing_run_job(store_txn *t, const app *a, const lagoon_v1_ScheduledJob *job, int *ran, store_error *err)
{
    (void)t;
    (void)a;
    if (job->kind != FAILING_KIND)
        return LAGOON_OK;
    *ran = 1;
    return store_fail(err, LAGOON_INTERNAL, NULL, "the test's failure %u", (unsigned)job->attempts);
}

static const app_module failing_jobs_module = {.name = "failing-jobs", .run_job = failing_run_job};
static const app_module *const failing_modules[] = {&failing_jobs_module};

static void failing_jobs(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->extra_modules = failing_modules;
    acfg->nextra_modules = 1;
    acfg->sched_poll_ms = 3600 * 1000; /* the test runs the ticks (sched_run_due) */
}

typedef struct job_at {
    test_app *t;
    int64_t due;
} job_at;

static int put_failing_job(store_txn *t, void *arg, store_error *err)
{
    const job_at *j = arg;
    return sched_put(t, j->t->clock_ms, FAILING_KIND, 1, 0, j->due, err);
}

/* When the failing job is next due; 0 once it is gone. */
static int64_t failing_job_due(test_app *t)
{
    store_txn *txn;
    store_error err;
    lagoon_v1_ScheduledJob j;
    assert_int_equal(store_read_begin(t->app->db, &txn, &err), LAGOON_OK);
    int st = sched_get(txn, FAILING_KIND, 1, 0, &j, &err);
    store_read_end(txn);
    assert_true(st == LAGOON_OK || st == LAGOON_NOT_FOUND);
    return st == LAGOON_OK ? j.due_at : 0;
}

/* Every failed run counts once in lagoon_jobs_failed_total; the job is dropped, and counted in
 * lagoon_jobs_dropped_total, at its SCHED_ATTEMPTS_MAX-th failure. */
static void test_failed_and_dropped_jobs(void **state)
{
    (void)state;
    test_app t;
    admin_http *h;
    uint16_t port = start_scraped(&t, failing_jobs, &h);
    assert_non_null(strstr(page, "\nlagoon_jobs_failed_total 0\n"));
    assert_non_null(strstr(page, "\nlagoon_jobs_dropped_total 0\n"));

    job_at j = {&t, t.clock_ms + 1000};
    store_error err;
    assert_int_equal(store_write(t.app->db, put_failing_job, &j, &err), LAGOON_OK);
    int runs = 0;
    for (int64_t due = failing_job_due(&t); due != 0 && runs < 2 * SCHED_ATTEMPTS_MAX; due = failing_job_due(&t)) {
        test_clock_advance(&t, due - t.clock_ms);
        uint32_t ran = 0;
        assert_int_equal(sched_run_due(t.app, 0, &ran, &err), LAGOON_OK);
        assert_int_equal(ran, 0); /* failed runs are not counted as run */
        runs++;
        if (runs == 1) {
            assert_int_equal(http(port, "GET", "/metrics"), 200);
            assert_true(sample(page, "lagoon_jobs_failed_total") == 1);
            assert_true(sample(page, "lagoon_jobs_dropped_total") == 0);
            assert_true(sample(page, "lagoon_jobs_scheduled") == 1); /* waiting for its retry */
        }
    }
    assert_int_equal(runs, SCHED_ATTEMPTS_MAX);
    assert_int_equal(http(port, "GET", "/metrics"), 200);
    check_exposition(page);
    assert_true(sample(page, "lagoon_jobs_failed_total") == SCHED_ATTEMPTS_MAX);
    assert_true(sample(page, "lagoon_jobs_dropped_total") == 1);
    assert_true(sample(page, "lagoon_jobs_scheduled") == 0);
    admin_http_stop(h);
    test_app_stop(&t);
}

/* ---- the realtime subscribers' backlog --------------------------------------------------------- */

#define BACKLOG_LIMIT (64u << 20) /* far above what the test queues: the stream is never cut off */

static void roomy_backlog(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    acfg->subscriber_backlog = BACKLOG_LIMIT;
}

typedef struct backlog_seen {
    uint16_t port;
    int zero; /* 1: wait for no backlog (and no subscriber); 0: for some */
} backlog_seen;

static int backlog_is(void *arg)
{
    const backlog_seen *b = arg;
    if (http(b->port, "GET", "/metrics") != 200)
        return 0;
    double bytes = sample(page, "lagoon_realtime_backlog_bytes");
    return b->zero ? bytes == 0 && sample(page, "lagoon_realtime_subscribers") == 0 : bytes > 0;
}

/* A subscriber that reads nothing: what the server queues for it shows as its backlog (the sum
 * and the largest one), and goes back to 0 when it disconnects. */
static void test_realtime_backlog(void **state)
{
    (void)state;
    enum { SENDS_MAX = 600, SCRAPE_EVERY = 25 }; /* 16 KB each: 9.6 MB at most, far past the socket buffers */
    test_app t;
    admin_http *h;
    uint16_t port = start_scraped(&t, roomy_backlog, &h);
    assert_true(sample(page, "lagoon_realtime_backlog_bytes") == 0);
    assert_true(sample(page, "lagoon_realtime_backlog_max_bytes") == 0);
    assert_true(sample(page, "lagoon_realtime_backlog_limit_bytes") == BACKLOG_LIMIT);
    lagoon_client *c = test_client(&t);
    char reader_tok[65], writer_tok[65];
    uint64_t reader = test_verified_user(&t, c, "reader", 1, reader_tok);
    test_verified_user(&t, c, "writer", 1, writer_tok);

    /* A small receive buffer, so that the server's output queues up early. */
    int fd = raw_connect_small(t.srv.port, 1, 4096);
    raw_send_call(fd, 1, &lagoon_method_Events_Subscribe, reader_tok, NULL, 0, NULL, NULL);
    char *big = malloc(16001);
    assert_non_null(big);
    for (int i = 0; i < 4000; i++)
        memcpy(big + 4 * i, "\xF0\x9F\x98\x80", 4); /* U+1F600: 4000 characters, 16 KB */
    big[16000] = '\0';
    lagoon_set_token(c, writer_tok);
    backlog_seen some = {port, 0};
    int seen = 0;
    for (int i = 0; i < SENDS_MAX && !seen; i++) {
        lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
        req.recipient_id = reader;
        req.which_content = lagoon_v1_SendMessageRequest_text_tag;
        snprintf(req.content.text.text, sizeof(req.content.text.text), "%s", big);
        lagoon_v1_DirectMessage m;
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
        if (i % SCRAPE_EVERY == SCRAPE_EVERY - 1)
            seen = backlog_is(&some);
    }
    free(big);
    assert_true(seen || test_wait_for(backlog_is, &some, 10000));
    check_exposition(page);
    double sum = sample(page, "lagoon_realtime_backlog_bytes");
    double largest = sample(page, "lagoon_realtime_backlog_max_bytes");
    assert_true(sample(page, "lagoon_realtime_subscribers") == 1);
    assert_true(largest > 0 && largest <= sum);
    assert_true(sum < BACKLOG_LIMIT);

    close(fd);
    backlog_seen none = {port, 1};
    assert_true(test_wait_for(backlog_is, &none, 10000));
    assert_true(sample(page, "lagoon_realtime_backlog_max_bytes") == 0);
    lagoon_close(c);
    admin_http_stop(h);
    test_app_stop(&t);
}

static void long_drain(app_config *acfg, rpc_config *cfg)
{
    (void)acfg;
    cfg->drain_timeout_ms = 20000; /* the open stream below holds the drain until it is closed */
}

static int readyz_is_503(void *arg)
{
    return http(*(uint16_t *)arg, "GET", "/readyz") == 503;
}

static void test_readyz_turns_503_on_drain(void **state)
{
    (void)state;
    test_app t;
    test_app_start(&t, long_drain);
    admin_http *h = start_admin(&t);
    uint16_t port = admin_http_port(h);
    assert_int_equal(http(port, "GET", "/readyz"), 200);

    /* A client stream left open keeps the server draining while /readyz is asked. */
    uint32_t id;
    int fd = raw_connect(t.srv.port, 1);
    raw_send_frame(fd, WIRE_REQUEST, 0, 1, lagoon_method_Debug_EchoCollect.id, NULL, 0, NULL, 0);
    raw_send_frame(fd, WIRE_REQUEST, WIRE_FLAG_END_STREAM, 3, lagoon_method_Health_Check.id, NULL, 0, NULL, 0);
    assert_int_equal(raw_read_reply(fd, &id, NULL, 0), LAGOON_OK);
    rpc_server_stop(t.srv.server);
    assert_true(test_wait_for(readyz_is_503, &port, 10000));
    assert_string_equal(page, "draining\n");
    assert_int_equal(http(port, "GET", "/healthz"), 200); /* the process still answers */
    assert_int_equal(http(port, "GET", "/metrics"), 200);
    assert_true(sample(page, "lagoon_rpc_draining") == 1);
    assert_true(sample(page, "lagoon_rpc_calls_in_flight") >= 1);
    close(fd);
    admin_http_stop(h);
    test_app_stop(&t);
}

/* A scrape between rpc_server_new and rpc_server_run (lagoond starts the admin listener
 * there): the server is not serving yet, so its uptime is 0, not the time since boot. */
static void test_metrics_before_the_server_runs(void **state)
{
    (void)state;
    test_app t;
    test_app_start(&t, NULL);
    rpc_config cfg;
    test_config(&cfg);
    rpc_server *idle = NULL;
    rpc_error err;
    assert_int_equal(rpc_server_new(&cfg, NULL, 0, &idle, &err), RPC_OK);
    admin_http *h;
    assert_int_equal(admin_http_start("127.0.0.1", 0, idle, t.app, &h, &err), RPC_OK);
    assert_int_equal(http(admin_http_port(h), "GET", "/metrics"), 200);
    check_exposition(page);
    assert_true(sample(page, "lagoon_up_seconds") == 0);
    assert_true(sample(page, "lagoon_rpc_connections_accepted_total") == 0);
    admin_http_stop(h);
    rpc_server_free(idle);
    test_app_stop(&t);
}

/* Descriptors this process has open (the server runs in it, so both ends of a connection). */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d) != NULL && n < 1000000)
        n++;
    closedir(d);
    return n;
}

typedef struct fds_at_least {
    int want;
} fds_at_least;

static int fds_reached(void *arg)
{
    return count_fds() >= ((fds_at_least *)arg)->want;
}

/* Connects to the admin port without sending anything. */
static int tcp_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Idle connections past ADMIN_MAX_CONNECTIONS are not accepted (they would hold the process's
 * descriptors): a request behind them waits until some close, then is answered. */
static void test_admin_connections_are_bounded(void **state)
{
    (void)state;
    enum { IDLE = ADMIN_MAX_CONNECTIONS + 16 };
    test_app t;
    test_app_start(&t, NULL);
    admin_http *h = start_admin(&t);
    uint16_t port = admin_http_port(h);
    int base = count_fds();
    int idle[IDLE];
    for (int i = 0; i < IDLE; i++)
        idle[i] = tcp_connect(port);
    int late = tcp_connect(port);
    static const char get[] = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_int_equal(send(late, get, sizeof(get) - 1, 0), (ssize_t)(sizeof(get) - 1));
    /* The listener has taken as many as it may... */
    fds_at_least cap = {base + IDLE + 1 + ADMIN_MAX_CONNECTIONS};
    assert_true(test_wait_for(fds_reached, &cap, 10000));
    /* ...and the request behind them is not served (without the limit it is, at once). */
    struct pollfd pfd = {.fd = late, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 1000), 0);
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    char reply[256];
    ssize_t n = recv(late, reply, sizeof(reply) - 1, 0);
    assert_true(n > 0);
    reply[n] = '\0';
    assert_non_null(strstr(reply, " 200 "));
    close(late);
    assert_int_equal(http(port, "GET", "/healthz"), 200);
    admin_http_stop(h);
    test_app_stop(&t);
}

static void test_admin_listen_values(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *host; /* NULL: refused */
        uint16_t port;
    } cases[] = {
        {"9100", "127.0.0.1", 9100},   {"0.0.0.0:9100", "0.0.0.0", 9100}, {"[::1]:9", "::1", 9},
        {"127.0.0.1:0", "127.0.0.1", 0}, {"", NULL, 0},                  {"65536", NULL, 0},
        {"localhost:9100", NULL, 0},   {"127.0.0.1:", NULL, 0},          {"[::1]9100", NULL, 0},
        {"[::1", NULL, 0},             {"1.2.3.4:9x", NULL, 0},          {"-1", NULL, 0},
        {"127.0.0.1:99999999999999999999", NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char host[ADMIN_LISTEN_MAX] = "", err[128] = "";
        uint16_t port = 1;
        int r = admin_listen_parse(cases[i].value, host, sizeof(host), &port, err, sizeof(err));
        if (cases[i].host != NULL) {
            assert_int_equal(r, 0);
            assert_string_equal(host, cases[i].host);
            assert_int_equal(port, cases[i].port);
        } else {
            if (r == 0)
                fail_msg("'%s' accepted", cases[i].value);
            assert_true(err[0] != '\0');
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_listen_values),
        cmocka_unit_test(test_metrics_before_the_server_runs),
        cmocka_unit_test(test_admin_connections_are_bounded),
        cmocka_unit_test(test_metrics_page_parses_and_counts_calls),
        cmocka_unit_test(test_store_commit_histograms),
        cmocka_unit_test(test_failed_and_dropped_jobs),
        cmocka_unit_test(test_realtime_backlog),
        cmocka_unit_test(test_media_jobs_by_state),
        cmocka_unit_test(test_readyz_turns_503_on_drain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
