/* teaching-bench: Teaching/GetSummary (the student's summary over all teachers) of a student
 * with 10 progress records and of one with 10 000, through the real server and a blocking
 * client on loopback.
 *
 *   teaching-bench [--sizes 10,10000] [--calls 2000]
 *
 * For each size: a fresh store in a temporary directory (sync none: seeding speed; the calls
 * measured are reads), a student and a teacher with sessions made in the store, an ACTIVE
 * relationship and a public video of the student's, then `size` records written through
 * Teaching/CreateRecord (so that the summary is the one the service maintains). The summary is
 * one row whatever the history: its time should not grow with the records. Then the video is
 * deleted (one Videos/Delete, timed once): its records leave the summaries in that
 * transaction, the write side's worst case. Every loop is bounded; everything it creates is
 * removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account_tokens.h"
#include "accounts.h"
#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_handlers.h"
#include "lagoon_stubs.h"
#include "log.h"
#include "teaching.h"

#define WARMUP 20                   /* unmeasured calls before each measurement */
#define SIZE_MAX_RECORDS 1000000ull

/* ---- seeding (not measured) ---------------------------------------------------------------------- */

typedef struct seed {
    uint64_t student, teacher, video;
    lagoon_v1_Session sessions[2]; /* the student's, the teacher's */
    lagoon_v1_Video *v;            /* ~37 KB: on the heap */
} seed;

static int seed_user(store_txn *t, const char *name, lagoon_v1_Role role, lagoon_v1_Session *s, uint64_t *id,
                     store_error *err)
{
    char email[64];
    snprintf(email, sizeof(email), "%s@bench.invalid", name);
    s->role = role;
    s->verified = true;
    return bench_seed_user(t, name, email, role, s, id, err);
}

static int seed_rows(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    int st = seed_user(t, "bench_student", lagoon_v1_Role_STUDENT, &sd->sessions[0], &sd->student, err);
    if (st == LAGOON_OK)
        st = seed_user(t, "bench_teacher", lagoon_v1_Role_TEACHER, &sd->sessions[1], &sd->teacher, err);
    lagoon_v1_TeachingRelationship r = lagoon_v1_TeachingRelationship_init_zero;
    r.student_id = sd->student;
    r.teacher_id = sd->teacher;
    r.status = lagoon_v1_TeachingRelationship_Status_ACTIVE;
    r.initiator = lagoon_v1_TeachingRelationship_Initiator_STUDENT_REQUEST;
    r.requester_id = sd->student;
    r.addressee_id = sd->teacher;
    r.created_at = r.updated_at = 1;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_teaching_relationships, &r, NULL, err);
    memset(sd->v, 0, sizeof(*sd->v));
    sd->v->owner_id = sd->student;
    snprintf(sd->v->title, sizeof(sd->v->title), "Scales");
    snprintf(sd->v->url, sizeof(sd->v->url), "https://www.youtube.com/watch?v=scales");
    sd->v->is_public = true;
    sd->v->source = lagoon_v1_Video_Source_EXTERNAL_URL;
    sd->v->status = lagoon_v1_Video_Status_READY;
    sd->v->created_at = sd->v->updated_at = 1;
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_videos, sd->v, &sd->video, err) : st;
}

/* Sessions for both users, their access tokens into tokens[2]. */
static int seed_store(app *a, seed *sd, char tokens[2][ACCOUNT_TOKEN_CHARS + 1])
{
    for (int i = 0; i < 2; i++) {
        bench_session_tokens(&sd->sessions[i], tokens[i]);
    }
    store_error err;
    if (store_write(a->db, seed_rows, sd, &err) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* size records through CreateRecord, as the teacher. */
static int seed_records(lagoon_client *c, const seed *sd, uint64_t size)
{
    static lagoon_v1_CreateRecordRequest r;
    static lagoon_v1_ProgressRecord rec;
    uint64_t t0 = bench_now_us();
    for (uint64_t i = 0; i < size; i++) {
        memset(&r, 0, sizeof(r));
        r.student_id = sd->student;
        r.video_id = sd->video;
        r.rating = 1 + (uint32_t)(i % 5);
        r.has_technique = true;
        r.technique = 1 + (uint32_t)(i * 7 % 100);
        r.has_overall = i % 2 == 0;
        r.overall = 1 + (uint32_t)(i * 13 % 100);
        int st = lagoon_Teaching_CreateRecord(c, &r, &rec);
        if (st != LAGOON_OK) {
            fprintf(stderr, "CreateRecord: %s %s\n", lagoon_status_name(st), lagoon_last_error(c)->detail.message);
            return -1;
        }
    }
    fprintf(stderr, "seeded %llu records in %.1f s\n", (unsigned long long)size, (double)(bench_now_us() - t0) / 1e6);
    return 0;
}

/* ---- through the server ----------------------------------------------------------------------------- */

/* Mean, p50 and p99 of `calls` GetSummary calls, in ms, into out[3]. */
static int bench_summary(lagoon_client *c, uint64_t size, int calls, bench_stats *us, double out[3])
{
    static lagoon_v1_ProgressSummary s;
    lagoon_v1_GetSummaryRequest r = lagoon_v1_GetSummaryRequest_init_zero;
    bench_stats_reset(us);
    for (int i = -WARMUP; i < calls; i++) {
        uint64_t t = bench_now_us();
        int st = lagoon_Teaching_GetSummary(c, &r, &s);
        uint64_t d = bench_now_us() - t;
        if (st != LAGOON_OK || s.count != size) {
            fprintf(stderr, "GetSummary: %s, %u records, expected %llu\n", lagoon_status_name(st), s.count,
                    (unsigned long long)size);
            return -1;
        }
        if (i >= 0)
            bench_stats_add(us, d);
    }
    bench_stats_ms(us, out);
    return 0;
}

/* One store of a student with size records: res[0][mean, p50, p99]. */
static int run_size(uint64_t size, int calls, bench_stats *us, double res[][3])
{
    bench_stack stack;
    memset(&stack, 0, sizeof(stack)); /* bench_stack_stop undoes only what was done */
    seed sd;
    memset(&sd, 0, sizeof(sd));
    sd.v = malloc(sizeof(*sd.v));
    char tokens[2][ACCOUNT_TOKEN_CHARS + 1];
    lagoon_client *c = NULL;
    if (sd.v == NULL || bench_stack_open(&stack, "/tmp/lagoon-teachingbench-XXXXXX", NULL) != 0 ||
        seed_store(stack.app, &sd, tokens) != 0 || bench_stack_serve(&stack, NULL) != 0 ||
        bench_stack_connect(&stack, tokens[1], &c) != 0) {
        free(sd.v);
        bench_stack_stop(&stack);
        return -1;
    }
    int failed = seed_records(c, &sd, size) != 0;
    lagoon_set_token(c, tokens[0]);
    if (!failed)
        failed = bench_summary(c, size, calls, us, res[0]) != 0;
    if (!failed)
        printf("| GetSummary | %9llu | %7d | %8.3f | %7.3f | %7.3f |\n", (unsigned long long)size, calls, res[0][0],
               res[0][1], res[0][2]);
    /* The write side: deleting the video takes every record out of the summaries first. */
    if (!failed) {
        lagoon_v1_DeleteVideoRequest dv = {sd.video};
        lagoon_v1_VideosEmpty ve;
        uint64_t t0 = bench_now_us();
        int dst = lagoon_Videos_Delete(c, &dv, &ve);
        if (dst != LAGOON_OK) {
            fprintf(stderr, "Videos/Delete: %s %s\n", lagoon_status_name(dst), lagoon_last_error(c)->detail.message);
            failed = 1;
        } else {
            printf("| DeleteVideo (its %llu records leave the summaries) | %.1f ms |\n", (unsigned long long)size,
                   (double)(bench_now_us() - t0) / 1000.0);
        }
    }
    fflush(stdout);
    lagoon_close(c);
    free(sd.v);
    return bench_stack_stop(&stack) == 0 && !failed ? 0 : -1;
}

int main(int argc, char **argv)
{
    bench_sweep sw = {.sizes = "10,10000", .count = 2000};
    if (bench_sweep_args(&sw, argc, argv, "teaching-bench", "calls") != 0)
        return 2;
    log_set_level(LOG_WARN);
    printf("| %-10s | %9s | %7s | %8s | %7s | %7s |\n", "call", "records", "calls", "mean ms", "p50 ms", "p99 ms");
    printf("|------------|-----------|---------|----------|---------|---------|\n");
    int rc = bench_sweep_run(&sw, "teaching-bench", 1, SIZE_MAX_RECORDS, run_size);
    if (rc == 0 && sw.n > 1)
        printf("\nmean time at %llu records / at %llu: %.2fx\n", (unsigned long long)sw.last_size,
               (unsigned long long)sw.first_size, sw.last[0][0] / sw.first[0][0]);
    return rc;
}
