/* mailer: see mailer.h. */
#include "mailer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lagoon_tables.h" /* lagoon_table_outbox */
#include "log.h"

#define MAILER_POLL_MS 1000     /* also woken at once by every commit that queues an email */
#define MAILER_BATCH 32         /* emails delivered per pass */
#define MAILER_RETRY_MAX_S 3600 /* retries back off from 1 s, doubling, up to this */

struct mailer {
    app *a;
    char dir[1100];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;
    int kicked;
};

/* Store subscriber: a commit queued an email. Must not block: signal and go. */
static void on_commit(void *arg, const store_change *ch, size_t n)
{
    mailer *m = arg;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].table == &lagoon_table_outbox && ch[i].kind == STORE_INSERTED) {
            pthread_mutex_lock(&m->mu);
            m->kicked = 1;
            pthread_cond_signal(&m->cv);
            pthread_mutex_unlock(&m->mu);
            return;
        }
    }
}

typedef struct due {
    lagoon_v1_OutboxEmail rows[MAILER_BATCH];
    uint32_t n;
    int64_t now;
} due;

static int collect_due(void *arg, uint64_t id, const void *row)
{
    (void)id;
    due *d = arg;
    const lagoon_v1_OutboxEmail *e = row;
    if (e->next_attempt_at > d->now || d->n == MAILER_BATCH)
        return LAGOON_CANCELLED; /* the index is in due order: nothing further is due */
    d->rows[d->n++] = *e;
    return LAGOON_OK;
}

/* Writes one message into the maildir. 0, or -1 with errno. */
static int deliver(mailer *m, const lagoon_v1_OutboxEmail *e)
{
    char name[128], tmp[1300], dst[1300];
    /* The row id makes the name unique and stable: a retry after a crash finds it in new/. */
    snprintf(name, sizeof(name), "%lld.M%lluP0.lagoon", (long long)(e->created_at / 1000),
             (unsigned long long)e->id);
    snprintf(dst, sizeof(dst), "%s/new/%s", m->dir, name);
    struct stat st;
    if (stat(dst, &st) == 0)
        return 0;
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s", m->dir, name);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    char date[64];
    time_t secs = (time_t)(e->created_at / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    /* to and subject come from validated input and our own text: no CR or LF can reach a
     * header line. */
    fprintf(f,
            "From: Lagoon <no-reply@lagoon.invalid>\n"
            "To: <%s>\n"
            "Subject: %s\n"
            "Date: %s\n"
            "Message-ID: <%llu.%lld@lagoon.invalid>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n"
            "\n"
            "%s\n",
            e->to, e->subject, date, (unsigned long long)e->id, (long long)e->created_at, e->body);
    int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, dst) != 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

typedef struct outcome {
    const due *d;
    int delivered[MAILER_BATCH];
    int64_t now;
} outcome;

static int record_outcome(store_txn *t, void *arg, store_error *err)
{
    outcome *o = arg;
    for (uint32_t i = 0; i < o->d->n; i++) {
        lagoon_v1_OutboxEmail e = o->d->rows[i];
        int st;
        if (o->delivered[i]) {
            st = store_delete(t, &lagoon_table_outbox, e.id, err);
        } else {
            e.attempts++;
            int64_t delay = 1000;
            for (uint32_t k = 1; k < e.attempts && delay < MAILER_RETRY_MAX_S * 1000LL; k++)
                delay *= 2;
            if (delay > MAILER_RETRY_MAX_S * 1000LL)
                delay = MAILER_RETRY_MAX_S * 1000LL;
            e.next_attempt_at = o->now + delay;
            st = store_update(t, &lagoon_table_outbox, &e, err);
        }
        if (st != LAGOON_OK && st != LAGOON_NOT_FOUND)
            return st;
    }
    return LAGOON_OK;
}

/* One pass: deliver what is due. Returns how many were due. */
static uint32_t pass(mailer *m, due *d, outcome *o)
{
    store_txn *t;
    store_error err;
    d->n = 0;
    d->now = app_now(m->a);
    if (store_read_begin(m->a->db, &t, &err) != LAGOON_OK)
        return 0;
    store_query q = {0};
    q.table = &lagoon_table_outbox;
    q.index = lagoon_index_outbox_by_due;
    q.page_size = MAILER_BATCH + 1;
    store_page page;
    store_scan(t, &q, collect_due, d, &page, &err);
    store_read_end(t);
    if (d->n == 0)
        return 0;
    o->d = d;
    o->now = d->now;
    for (uint32_t i = 0; i < d->n; i++) {
        o->delivered[i] = deliver(m, &d->rows[i]) == 0;
        if (!o->delivered[i])
            log_msg(LOG_WARN, "mail %llu: delivery failed (%s); will retry",
                    (unsigned long long)d->rows[i].id, strerror(errno));
    }
    if (store_write(m->a->db, record_outcome, o, &err) != LAGOON_OK)
        log_msg(LOG_WARN, "mail: cannot record deliveries: %s", err.message);
    return d->n;
}

static void *mailer_main(void *arg)
{
    mailer *m = arg;
    due *d = malloc(sizeof(*d));
    outcome *o = malloc(sizeof(*o));
    if (d == NULL || o == NULL) {
        log_msg(LOG_ERROR, "mail worker: out of memory");
        free(d);
        free(o);
        return NULL;
    }
    for (;;) {
        while (pass(m, d, o) == MAILER_BATCH)
            ; /* more may be due */
        pthread_mutex_lock(&m->mu);
        if (!m->stopping && !m->kicked) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += MAILER_POLL_MS / 1000;
            pthread_cond_timedwait(&m->cv, &m->mu, &ts);
        }
        int stop = m->stopping;
        m->kicked = 0;
        pthread_mutex_unlock(&m->mu);
        if (stop)
            break;
    }
    pass(m, d, o); /* what is due at shutdown */
    free(d);
    free(o);
    return NULL;
}

static int make_dir(const char *path, rpc_error *err)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        snprintf(err->message, sizeof(err->message), "cannot create %.200s: %s", path, strerror(errno));
        return RPC_ERR;
    }
    return RPC_OK;
}

int mailer_start(app *a, const char *maildir, mailer **out, rpc_error *err)
{
    *out = NULL;
    mailer *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    m->a = a;
    snprintf(m->dir, sizeof(m->dir), "%s", maildir);
    char sub[1200];
    int st = make_dir(maildir, err);
    for (int i = 0; i < 3 && st == RPC_OK; i++) {
        snprintf(sub, sizeof(sub), "%s/%s", maildir, (const char *[]){"tmp", "new", "cur"}[i]);
        st = make_dir(sub, err);
    }
    if (st != RPC_OK) {
        free(m);
        return RPC_ERR;
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    if (app_start_commit_worker(a, on_commit, m, mailer_main, &m->thread, "mail worker", err) != RPC_OK) {
        free(m);
        return RPC_ERR;
    }
    *out = m;
    return RPC_OK;
}

void mailer_stop(mailer *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->stopping = 1;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    store_unsubscribe(m->a->db, on_commit, m);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
