/* scheduler: durable due-time jobs, for every service (reminders, retries).
 *
 * A job is a row of scheduled_jobs (idl/lagoon/v1/jobs.proto) named by its key (kind, owner id,
 * slot): a service schedules, moves and cancels its jobs inside the write transaction of the
 * change that causes them (sched_put, sched_cancel), so a job exists if and only if its change
 * committed, and it survives restarts because it is a row.
 *
 * Running. A thread of the app wakes every app_config.sched_poll_ms (SCHED_POLL_MS_DEFAULT) and
 * runs the jobs due on the app's clock (sched_run_due): at most SCHED_TICK_JOBS_MAX per tick,
 * oldest due first; a full tick is followed at once by the next one. Each job runs in a write of
 * its own, SCHED_GROUP_JOBS of them submitted at a time (a group shares a batch): the job's row is read and deleted, then the module that
 * owns its kind runs it (app_module.run_job), in the same transaction — so a job's effect and
 * its removal commit together, and it runs once even when two ticks race for it (the second
 * finds no row). A job moved later since the tick read it is left alone. A job whose run fails
 * keeps its row (the failed write left no trace) and is moved SCHED_RETRY_BASE_MS later,
 * doubling per failure, up to SCHED_ATTEMPTS_MAX failures; then it is dropped with an error log.
 * A job of a kind no module claims is dropped when due (logged).
 *
 * Tests and benchmarks drive it deterministically with sched_run_due on an injected clock. */
#ifndef LAGOON_SCHEDULER_H
#define LAGOON_SCHEDULER_H

#include <stdint.h>

#include "app.h"

/* Jobs one tick runs: one batch of writes of that many, so one tick holds the writer for a
 * bounded time and a backlog (a restart after a long stop) drains in steps others' writes
 * interleave with. */
#define SCHED_TICK_JOBS_MAX 256
/* Jobs submitted to the writer at once; the tick waits for them before the next group. A job
 * may notify a whole chat (up to VIDEOCHATS_GROUP_MEMBERS_MAX people, a few ms of work): a tick
 * of such jobs in one batch would hold every other write behind it for about a second, a group
 * for a few hundred ms at most. Light jobs (a few notifications) cost a commit per group. */
#define SCHED_GROUP_JOBS 32
/* How often the thread looks for due jobs when app_config.sched_poll_ms is 0: a reminder is
 * sent at most about this late. */
#define SCHED_POLL_MS_DEFAULT 1000
/* A failed run moves the job this much later, doubling per failure, and is dropped after this
 * many failures (a bug or a permanently missing row would otherwise retry forever). */
#define SCHED_RETRY_BASE_MS 1000
#define SCHED_ATTEMPTS_MAX 5

/* Schedules the job (kind, owner_id, slot) at due_at (ms on the app's clock) in t: inserted, or
 * moved when it exists (its failure count reset). now is the write's time. */
int sched_put(store_txn *t, int64_t now, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, int64_t due_at,
              store_error *err);
/* Deletes the job (kind, owner_id, slot) in t; absent is LAGOON_OK. */
int sched_cancel(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, store_error *err);
/* Deletes every job of (kind, owner_id) in t, whatever its slot. */
int sched_cancel_owner(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, store_error *err);
/* Reads the job (kind, owner_id, slot) into *out: LAGOON_OK or NOT_FOUND. */
int sched_get(store_txn *t, lagoon_v1_JobKind kind, uint64_t owner_id, uint32_t slot, lagoon_v1_ScheduledJob *out,
              store_error *err);

/* Runs the jobs due at app_now(a) now, at most max of them (0 or above: SCHED_TICK_JOBS_MAX),
 * and waits until they are durable; *ran (may be NULL) gets how many ran (failed runs are not
 * counted). Blocks: not on a loop thread nor the store's writer. LAGOON_OK, or the store's error
 * reading the due jobs. */
int sched_run_due(app *a, uint32_t max, uint32_t *ran, store_error *err);

/* Runs that failed (each retried or, at the SCHED_ATTEMPTS_MAX-th failure, dropped) and jobs
 * dropped since the app opened, whoever ran the tick; 0 without a scheduler. For /metrics: any
 * thread, a relaxed snapshot. */
void sched_counts(const app *a, uint64_t *failed, uint64_t *dropped);

/* The app's scheduler thread (app_open / app_close). */
typedef struct sched sched;
int sched_start(app *a, sched **out, rpc_error *err);
void sched_stop(sched *s);

#endif
