/* real: the soak's real users. See soak.h.
 *
 * Each thread holds one connection on the blocking client (clients/lagoon.h) and makes calls
 * at a steady rate (cfg->rate over all threads), as a seeded user picked at random per call:
 * Users/Get of a random user, Messages/Send to a random user (the recipients' open Subscribe
 * streams get the events), Messages/List of that conversation, in the shares of SOAK_OPS. Calls are due at fixed times and a call's latency runs from when it was due, so a
 * server that stalls is charged for every call that waited behind the stall. Only successful
 * calls go into the latency histograms; every outcome is counted by status. A lost connection
 * is reopened before the next call.
 */
#include "soak.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pb_decode.h>

#include "lagoon.h"
#include "lagoon_stubs.h"

#define REAL_CALL_TIMEOUT_MS 10000 /* a call's deadline: a stuck server costs at most this per call */
#define REAL_LIST_PAGE 20
#define REAL_IDLE_POLL_MS 100      /* how often a waiting thread looks at the phase */

typedef struct real_msgs {
    lagoon_v1_GetUserRequest get;
    lagoon_v1_PublicUser user;
    lagoon_v1_SendMessageRequest send;
    lagoon_v1_DirectMessage sent;
    lagoon_v1_ListMessagesRequest list;
    lagoon_v1_ListMessagesResponse listed;
} real_msgs;

static uint64_t real_rand(uint64_t *s, uint64_t n)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (*s * UINT64_C(2685821657736338717)) % n;
}

/* One call as a random seeded user; its status, and which call it was in *op. */
static int real_call(lagoon_client *c, real_msgs *m, const bench_data *d, uint64_t *rng, uint64_t seq, int *op)
{
    static const unsigned quarters[SOAK_NOPS] = {
#define SOAK_OP_QUARTERS(o, name, q) q,
        SOAK_OPS(SOAK_OP_QUARTERS)
#undef SOAK_OP_QUARTERS
    };
    size_t from = (size_t)real_rand(rng, d->users);
    size_t to = (from + 1 + (size_t)real_rand(rng, d->users - 1)) % d->users;
    lagoon_set_token(c, d->tokens[from]);
    uint64_t pick = real_rand(rng, 4);
    *op = 0;
    while (*op + 1 < SOAK_NOPS && pick >= quarters[*op])
        pick -= quarters[(*op)++];
    if (*op == SOAK_OP_GET) {
        m->get = (lagoon_v1_GetUserRequest)lagoon_v1_GetUserRequest_init_zero;
        m->get.user_id = d->first_user_id + to;
        return lagoon_Users_Get(c, &m->get, &m->user);
    }
    if (*op == SOAK_OP_SEND) {
        m->send = (lagoon_v1_SendMessageRequest)lagoon_v1_SendMessageRequest_init_zero;
        m->send.recipient_id = d->first_user_id + to;
        m->send.which_content = lagoon_v1_SendMessageRequest_text_tag;
        snprintf(m->send.content.text.text, sizeof(m->send.content.text.text), "soak message %llu",
                 (unsigned long long)seq);
        return lagoon_Messages_Send(c, &m->send, &m->sent);
    }
    m->list = (lagoon_v1_ListMessagesRequest)lagoon_v1_ListMessagesRequest_init_zero;
    m->list.other_user_id = d->first_user_id + to;
    m->list.page_size = REAL_LIST_PAGE;
    int st = lagoon_Messages_List(c, &m->list, &m->listed);
    if (st == LAGOON_OK)
        pb_release(lagoon_v1_ListMessagesResponse_fields, &m->listed);
    return st;
}

static lagoon_client *real_connect(soak_real *r)
{
    lagoon_options opts = {.connect_timeout_ms = 5000, .timeout_ms = REAL_CALL_TIMEOUT_MS};
    lagoon_client *c = NULL;
    lagoon_error err;
    if (lagoon_connect(r->cfg->host, r->cfg->port, &opts, &c, &err) != LAGOON_OK) {
        pthread_mutex_lock(&r->mu);
        snprintf(r->last_error, sizeof(r->last_error), "connect: %s %.120s", lagoon_status_name(err.status),
                 err.detail.message);
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    return c;
}

static void record(soak_real *r, int phase, int op, int st, uint64_t lat_ns, const lagoon_client *c)
{
    pthread_mutex_lock(&r->mu);
    if (st == LAGOON_OK) {
        hist_record(&r->interval, lat_ns);
        hist_record(&r->phase_lat[phase], lat_ns);
        hist_record(&r->op_lat[phase][op], lat_ns);
    } else {
        r->interval_errors++;
        r->op_errors[phase][op]++;
        if (c != NULL)
            snprintf(r->last_error, sizeof(r->last_error), "%s %.120s", lagoon_status_name(st),
                     lagoon_last_error(c)->detail.message);
    }
    r->status[phase][st >= 0 && st <= LAGOON_STATUS_MAX ? st : LAGOON_UNKNOWN]++;
    r->interval_calls++;
    pthread_mutex_unlock(&r->mu);
}

static void *real_main(void *arg)
{
    soak_real *r = arg;
    const soak_config *cfg = r->cfg;
    real_msgs *m = calloc(1, sizeof(*m));
    lagoon_client *c = real_connect(r);
    uint64_t rng = UINT64_C(0x2545f4914f6cdd1d) + r->index * UINT64_C(0x9e3779b97f4a7c15);
    uint64_t period = UINT64_C(1000000000) * cfg->real_conns / (cfg->rate ? cfg->rate : 1);
    uint64_t due = soak_now_ns() + period * r->index / cfg->real_conns; /* spread the threads */
    uint64_t seq = 0;
    while (m != NULL) {
        int phase = atomic_load(r->phase);
        if (phase >= SOAK_STOP)
            break;
        uint64_t now = soak_now_ns();
        if (now < due) {
            uint64_t wait = due - now, cap = (uint64_t)REAL_IDLE_POLL_MS * 1000000u;
            if (wait > cap)
                wait = cap;
            struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
            nanosleep(&ts, NULL);
            continue;
        }
        if (c == NULL && (c = real_connect(r)) == NULL) {
            record(r, phase, SOAK_OP_GET, LAGOON_UNAVAILABLE, 0, NULL); /* charged to no call in particular */
            due += period;
            soak_sleep_ms(REAL_IDLE_POLL_MS);
            continue;
        }
        int op;
        int st = real_call(c, m, cfg->data, &rng, ++seq, &op);
        record(r, phase, op, st, soak_now_ns() - due, c);
        if (st == LAGOON_UNAVAILABLE || lagoon_goaway(c)) {
            lagoon_close(c);
            c = NULL;
            pthread_mutex_lock(&r->mu);
            r->reconnects++;
            pthread_mutex_unlock(&r->mu);
        }
        due += period;
    }
    if (c != NULL)
        lagoon_close(c);
    free(m);
    return NULL;
}

unsigned soak_real_start(soak_real *r, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        r[i].index = i;
        pthread_mutex_init(&r[i].mu, NULL);
        hist_init(&r[i].interval);
        for (int p = 0; p < SOAK_NPHASES; p++) {
            hist_init(&r[i].phase_lat[p]);
            for (int o = 0; o < SOAK_NOPS; o++)
                hist_init(&r[i].op_lat[p][o]);
        }
        if (pthread_create(&r[i].thread, NULL, real_main, &r[i]) != 0) {
            fprintf(stderr, "lagoon-soak: cannot start real user thread %u\n", i);
            pthread_mutex_destroy(&r[i].mu);
            return i;
        }
    }
    return n;
}

void soak_real_join(soak_real *r, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        pthread_join(r[i].thread, NULL);
        pthread_mutex_destroy(&r[i].mu);
    }
}
