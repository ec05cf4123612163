/* scheduler: durable due-time jobs. See scheduler.h. */
#include "scheduler.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lagoon_tables.h"
#include "log.h"

typedef lagoon_v1_ScheduledJob job;

static void job_key(store_key *k, lagoon_v1_JobKind kind, uint64_t owner_id)
{
    store_key_reset(k);
    store_key_u32(k, (uint32_t)kind);
    store_key_u64(k, owner_id);
}

int sched_get(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, job *out, store_error *err)
{
    store_key k;
    job_key(&k, kind, owner_id);
    store_key_u32(&k, slot);
    return store_get_by(t, &lagoon_table_scheduled_jobs, lagoon_index_scheduled_jobs_by_key, &k, NULL, out, err);
}

int sched_put(store_txn *t, int64_t now, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, int64_t due_at,
              store_error *err)
{
    job j;
    int st = sched_get(t, kind, owner_id, slot, &j, err);
    if (st == LAGOON_OK) {
        j.due_at = due_at;
        j.attempts = 0;
        return store_update(t, &lagoon_table_scheduled_jobs, &j, err);
    }
    if (st != LAGOON_NOT_FOUND)
        return st;
    j = (job)lagoon_v1_ScheduledJob_init_zero;
    j.kind = kind;
    j.owner_id = owner_id;
    j.slot = slot;
    j.due_at = due_at;
    j.created_at = now;
    return store_insert(t, &lagoon_table_scheduled_jobs, &j, NULL, err);
}

int sched_cancel(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, store_error *err)
{
    store_key k;
    job_key(&k, kind, owner_id);
    store_key_u32(&k, slot);
    uint64_t id;
    int st = store_get_by(t, &lagoon_table_scheduled_jobs, lagoon_index_scheduled_jobs_by_key, &k, &id, NULL, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    return st == LAGOON_OK ? store_delete(t, &lagoon_table_scheduled_jobs, id, err) : st;
}

static int delete_job(store_txn *t, uint64_t id, void *arg, store_error *err)
{
    (void)arg;
    return store_delete(t, &lagoon_table_scheduled_jobs, id, err);
}

int sched_cancel_owner(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, store_error *err)
{
    store_key prefix;
    job_key(&prefix, kind, owner_id);
    store_query q = {.table = &lagoon_table_scheduled_jobs, .index = lagoon_index_scheduled_jobs_by_key,
                     .prefix = prefix.buf, .prefix_len = prefix.len};
    return app_each_id(t, &q, delete_job, NULL, err);
}

/* ---- running due jobs ------------------------------------------------------------------------ */

/* The app's scheduler thread, and what /metrics reads of it (sched_counts). */
struct sched {
    app *a;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;
    uint32_t poll_ms;
    /* Relaxed atomics: bumped by whichever thread runs a tick (this one, or a test's
     * sched_run_due), read by the admin listener's. */
    _Atomic uint64_t failed;  /* runs whose write failed */
    _Atomic uint64_t dropped; /* jobs deleted at their SCHED_ATTEMPTS_MAX-th failure */
};

/* What one tick waits for: its jobs' completions. */
typedef struct tick {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t pending;
} tick;

/* One job of a tick: a write of its own, so that one job's failure drops only its changes. */
typedef struct run {
    app *a;
    tick *tk;
    uint64_t id;
    int64_t now;     /* the tick's clock: the job must be due by then */
    int ran;         /* out: a module ran it */
    int status;      /* out: the write's */
    int dropped;     /* out (retry_write): deleted for its failures */
    char message[STORE_ERROR_MESSAGE_MAX];
} run;

static int run_write(store_txn *t, void *arg, store_error *err)
{
    run *r = arg;
    r->ran = 0;
    job j;
    int st = store_get(t, &lagoon_table_scheduled_jobs, r->id, &j, err);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && j.due_at > r->now))
        return LAGOON_OK; /* ran (another tick), cancelled, or moved later meanwhile */
    if (st != LAGOON_OK)
        return st;
    /* Deleted before it runs, so that a job that schedules its own key again keeps the new row. */
    st = store_delete(t, &lagoon_table_scheduled_jobs, r->id, err);
    /* Events and notifications the job writes carry the tick's time (app_now is this write's). */
    app_now_pin(r->now);
    int claimed = 0;
    for (size_t i = 0; i < r->a->nmodules && st == LAGOON_OK && !claimed; i++) {
        const app_module *m = r->a->modules[i];
        if (m->run_job)
            st = m->run_job(t, r->a, &j, &claimed, err);
    }
    app_now_pin(0);
    if (st == LAGOON_OK && !claimed)
        log_msg(LOG_WARN, "scheduler: job %llu of kind %d has no module; dropped", (unsigned long long)j.id,
                (int)j.kind);
    if (st == LAGOON_OK)
        r->ran = claimed;
    return st;
}

static void run_done(void *arg, int status, const store_error *err)
{
    run *r = arg;
    r->status = status;
    if (status != LAGOON_OK)
        APP_STRCPY(r->message, err->message);
    pthread_mutex_lock(&r->tk->mu);
    r->tk->pending--;
    pthread_cond_signal(&r->tk->cv);
    pthread_mutex_unlock(&r->tk->mu);
}

/* A failed job, moved later (or dropped after SCHED_ATTEMPTS_MAX failures). */
static int retry_write(store_txn *t, void *arg, store_error *err)
{
    run *r = arg;
    r->dropped = 0; /* a replayed write starts over */
    job j;
    int st = store_get(t, &lagoon_table_scheduled_jobs, r->id, &j, err);
    if (st == LAGOON_NOT_FOUND)
        return LAGOON_OK;
    if (st != LAGOON_OK)
        return st;
    if (++j.attempts >= SCHED_ATTEMPTS_MAX) {
        log_msg(LOG_ERROR, "scheduler: job %llu of kind %d failed %d times (%s); dropped", (unsigned long long)j.id,
                (int)j.kind, SCHED_ATTEMPTS_MAX, r->message);
        r->dropped = 1;
        return store_delete(t, &lagoon_table_scheduled_jobs, j.id, err);
    }
    j.due_at = r->now + ((int64_t)SCHED_RETRY_BASE_MS << (j.attempts - 1));
    log_msg(LOG_WARN, "scheduler: job %llu of kind %d failed (%s); retried in %lld ms", (unsigned long long)j.id,
            (int)j.kind, r->message, (long long)(j.due_at - r->now));
    return store_update(t, &lagoon_table_scheduled_jobs, &j, err);
}

/* Ends the scan at the first job not due yet (the index is in due order). */
static int due_by(void *arg, const void *row)
{
    return ((const job *)row)->due_at <= *(const int64_t *)arg ? 0 : -1;
}

/* sched_run_due, counting into counts (NULL: not counted). */
static int run_due(app *a, sched *counts, uint32_t max, uint32_t *ran, store_error *err)
{
    if (ran)
        *ran = 0;
    if (max == 0 || max > SCHED_TICK_JOBS_MAX)
        max = SCHED_TICK_JOBS_MAX;
    int64_t now = app_now(a);
    app_id_page *page = malloc(sizeof(*page));
    run *runs = calloc(max, sizeof(*runs));
    if (page == NULL || runs == NULL) {
        free(page);
        free(runs);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    store_query q = {.table = &lagoon_table_scheduled_jobs, .index = lagoon_index_scheduled_jobs_by_due,
                     .page_size = max};
    store_txn *t;
    int st = store_read_begin(a->db, &t, err);
    if (st == LAGOON_OK) {
        st = app_scan_marked(t, &q, due_by, &now, page, err);
        store_read_end(t);
    }
    tick tk = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    uint32_t n = 0;
    for (uint32_t i = 0; st == LAGOON_OK && i < page->n; i++) {
        if (i > 0 && i % SCHED_GROUP_JOBS == 0) {
            /* A group at a time: others' writes get into the batches between groups. */
            pthread_mutex_lock(&tk.mu);
            while (tk.pending > 0)
                pthread_cond_wait(&tk.cv, &tk.mu);
            pthread_mutex_unlock(&tk.mu);
        }
        runs[n] = (run){.a = a, .tk = &tk, .id = page->ids[i], .now = now};
        pthread_mutex_lock(&tk.mu);
        tk.pending++;
        pthread_mutex_unlock(&tk.mu);
        store_error se;
        if (store_submit(a->db, run_write, &runs[n], run_done, &runs[n], &se) != LAGOON_OK) {
            /* The queue is full (or closing): the rest wait for the next tick. */
            pthread_mutex_lock(&tk.mu);
            tk.pending--;
            pthread_mutex_unlock(&tk.mu);
            break;
        }
        n++;
    }
    pthread_mutex_lock(&tk.mu);
    while (tk.pending > 0)
        pthread_cond_wait(&tk.cv, &tk.mu);
    pthread_mutex_unlock(&tk.mu);
    for (uint32_t i = 0; i < n; i++) {
        store_error se;
        if (runs[i].status == LAGOON_OK) {
            if (ran && runs[i].ran)
                (*ran)++;
        } else {
            int moved = store_write(a->db, retry_write, &runs[i], &se) == LAGOON_OK;
            if (!moved)
                log_msg(LOG_WARN, "scheduler: cannot move failed job %llu: %s", (unsigned long long)runs[i].id,
                        se.message);
            if (counts != NULL) {
                atomic_fetch_add_explicit(&counts->failed, 1, memory_order_relaxed);
                if (moved && runs[i].dropped)
                    atomic_fetch_add_explicit(&counts->dropped, 1, memory_order_relaxed);
            }
        }
    }
    pthread_mutex_destroy(&tk.mu);
    pthread_cond_destroy(&tk.cv);
    free(page);
    free(runs);
    return st;
}

int sched_run_due(app *a, uint32_t max, uint32_t *ran, store_error *err)
{
    return run_due(a, a->jobs, max, ran, err);
}

void sched_counts(const app *a, uint64_t *failed, uint64_t *dropped)
{
    const sched *s = a->jobs;
    *failed = s ? atomic_load_explicit(&s->failed, memory_order_relaxed) : 0;
    *dropped = s ? atomic_load_explicit(&s->dropped, memory_order_relaxed) : 0;
}

/* ---- the thread ------------------------------------------------------------------------------ */

static void *sched_main(void *arg)
{
    sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        pthread_mutex_unlock(&s->mu);
        uint32_t ran = 0;
        store_error err;
        if (run_due(s->a, s, SCHED_TICK_JOBS_MAX, &ran, &err) != LAGOON_OK)
            log_msg(LOG_WARN, "scheduler: %s", err.message);
        pthread_mutex_lock(&s->mu);
        if (ran == SCHED_TICK_JOBS_MAX || s->stopping)
            continue; /* a backlog: the next tick at once */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += s->poll_ms / 1000;
        ts.tv_nsec += (long)(s->poll_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int sched_start(app *a, sched **out, rpc_error *err)
{
    *out = NULL;
    sched *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    s->a = a;
    s->poll_ms = a->cfg.sched_poll_ms ? a->cfg.sched_poll_ms : SCHED_POLL_MS_DEFAULT;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        snprintf(err->message, sizeof(err->message), "cannot start the scheduler");
        return RPC_ERR;
    }
    *out = s;
    return RPC_OK;
}

void sched_stop(sched *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
