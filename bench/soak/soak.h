/* lagoon-soak: thousands of hostile connections and a few real users against one lagoond, for
 * a bounded time, with the server's memory sampled throughout. See soak.c for the whole story;
 * this header is what the three parts share:
 *
 *   soak.c     options, phases, the RSS timeline and the final report (main thread)
 *   hostile.c  the hostile connections: one epoll thread over raw sockets (hand-made frames,
 *              because a well-behaved client library cannot misbehave on purpose)
 *   real.c     the real users: one thread per connection on the blocking client, calls at a
 *              steady rate, latency into histograms (bench/loadgen/hist.c)
 *
 * Counters written by one thread and read by the sampler are C11 atomics; histograms are
 * guarded by their thread's mutex.
 */
#ifndef LAGOON_BENCH_SOAK_H
#define LAGOON_BENCH_SOAK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "seed.h"
#include "wire.h"

/* Kinds of hostile connection. The X-list gives each a name (for the report) and its share of
 * --connections in per mille; CANCEL is not in the shares: it is --cancel-conns connections. */
#define SOAK_KINDS(X)                                                                              \
    X(PREFACE, "preface-only", 250)    /* sends LGN1 and nothing else */                          \
    X(SLOW_STREAM, "slow-echo", 150)   /* Debug/EchoStream trickling to a reader that never reads */ \
    X(SLOW_SUB, "slow-subscribe", 100) /* Events/Subscribe never read, fed by the real users' Sends */ \
    X(OPEN_STREAMS, "open-collect", 200) /* Debug/EchoCollect calls with payloads, never half-closed */ \
    X(PARTIAL, "partial-frame", 150)   /* a header promising a large body, part of it, then a trickle */ \
    X(TRICKLE, "header-trickle", 150)  /* the header itself one byte at a time */                 \
    X(CANCEL, "request-cancel", 0)     /* Echo{delay_ms} and Subscribe{since:1}, each then CANCEL */

enum soak_kind {
#define SOAK_KIND_ENUM(k, name, share) SOAK_##k,
    SOAK_KINDS(SOAK_KIND_ENUM)
#undef SOAK_KIND_ENUM
        SOAK_NKINDS
};

/* Phases, in order; the main thread moves them on, the other threads follow. */
enum soak_phase {
    SOAK_BASELINE = 0, /* real users alone: the reference latency */
    SOAK_LOAD,         /* hostile connections opened, held, reopened when the server closes them */
    SOAK_AFTER,        /* hostile connections closed: does the memory come back? */
    SOAK_STOP,
};
#define SOAK_NPHASES 3

/* Distinct GOAWAY reasons remembered, and how much of each. */
#define SOAK_GOAWAY_REASONS 16
#define SOAK_REASON_MAX 96

typedef struct soak_config {
    const char *host;          /* numeric IPv4 of the server (127.0.0.1) */
    uint16_t port;
    long pid;                  /* lagoond's pid, for /proc */
    unsigned seconds;          /* length of the LOAD phase */
    unsigned cycles;           /* LOAD + AFTER, this many times */
    unsigned baseline_s;       /* BASELINE */
    unsigned after_s;          /* AFTER */
    unsigned interval_s;       /* timeline sampling period */
    unsigned connections;      /* hostile connections, CANCEL excluded */
    unsigned cancel_conns;     /* REQUEST+CANCEL loop connections */
    unsigned cancel_rate;      /* pairs per second per cancel connection */
    unsigned ramp_rate;        /* hostile connections opened per second at most */
    unsigned streams_per_conn; /* EchoCollect calls held open per OPEN_STREAMS connection */
    unsigned slow_interval_ms; /* EchoStream interval for SLOW_STREAM */
    unsigned partial_prefix;   /* body bytes a PARTIAL connection sends before trickling */
    unsigned sources;          /* 0: hostile connections from 127.0.0.1; N: bound to 127.0.0.2..N+1 */
    unsigned real_conns;       /* real users' connections (threads) */
    unsigned rate;             /* real calls per second, all real connections together */
    int debug;                 /* the server serves Debug (--debug-methods); 0 = avoid Debug calls */
    int only;                  /* -1, or the one kind every hostile connection is (--only) */
    const bench_data *data;    /* seeded users: tokens and ids */
} soak_config;

/* What the hostile thread tells the sampler. */
typedef struct soak_hostile_stats {
    atomic_long open[SOAK_NKINDS];     /* connected right now */
    atomic_long opened[SOAK_NKINDS];   /* connections made, reopenings included */
    atomic_long closed[SOAK_NKINDS];   /* closed by the server (or reset) while we held them */
    atomic_long goaway_closed[SOAK_NKINDS]; /* of those, closed after a GOAWAY (refusals included) */
    atomic_long failed[SOAK_NKINDS];   /* connect() refused or failed */
    atomic_long status[SOAK_NKINDS][LAGOON_STATUS_MAX + 1]; /* RESPONSE statuses read */
    atomic_long goaways;               /* GOAWAY frames read */
    atomic_long pairs;                 /* REQUEST+CANCEL pairs sent */
    atomic_long bytes_out;             /* bytes written by hostile connections */
    pthread_mutex_t reasons_mu;        /* guards the reason table */
    char reason[SOAK_GOAWAY_REASONS][SOAK_REASON_MAX];
    long reason_count[SOAK_GOAWAY_REASONS];
    long reasons_other;                /* GOAWAYs past the table's size */
} soak_hostile_stats;

/* The real users' calls, with their share of the calls in quarters. */
#define SOAK_OPS(X)                                                                                \
    X(GET, "Users/Get", 2)                                                                         \
    X(SEND, "Messages/Send", 1)                                                                    \
    X(LIST, "Messages/List", 1)

enum soak_op {
#define SOAK_OP_ENUM(o, name, quarters) SOAK_OP_##o,
    SOAK_OPS(SOAK_OP_ENUM)
#undef SOAK_OP_ENUM
        SOAK_NOPS
};

/* One real user's connection. */
typedef struct soak_real {
    pthread_t thread;
    const soak_config *cfg;
    const atomic_int *phase;
    unsigned index;
    pthread_mutex_t mu;                          /* guards everything below */
    hist interval;                               /* since the sampler last took it */
    hist phase_lat[SOAK_NPHASES];
    hist op_lat[SOAK_NPHASES][SOAK_NOPS];        /* the same, by call */
    uint64_t op_errors[SOAK_NPHASES][SOAK_NOPS];
    uint64_t status[SOAK_NPHASES][LAGOON_STATUS_MAX + 1];
    uint64_t interval_calls, interval_errors;
    uint64_t reconnects;
    char last_error[160];                        /* the last failure's status and message */
} soak_real;

/* hostile.c: the hostile thread. It follows *phase: opens connections in LOAD (at most
 * cfg->ramp_rate a second), reopens those the server closes, closes all of them when the phase
 * passes LOAD (and opens them anew if LOAD comes back: the next cycle) and returns at STOP. 0, or -1 if it could not start. */
typedef struct soak_hostile soak_hostile;
int soak_hostile_start(const soak_config *cfg, const atomic_int *phase, soak_hostile_stats *st,
                       soak_hostile **out);
void soak_hostile_join(soak_hostile *h);

/* real.c: starts one thread per real connection (r[0..n) zeroed by the caller, cfg and phase
 * set); returns how many started (n unless a thread could not be created). The threads end
 * once *phase is SOAK_STOP; soak_real_join(r, started) waits for them. */
unsigned soak_real_start(soak_real *r, unsigned n);
void soak_real_join(soak_real *r, unsigned n);

/* Monotonic time in ns and ms. */
uint64_t soak_now_ns(void);
uint64_t soak_now_ms(void);
void soak_sleep_ms(unsigned ms);

#endif
