/* rpc internals shared by the files of the rpc module; not part of its public surface. */
#ifndef LAGOON_RPC_INTERNAL_H
#define LAGOON_RPC_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* A fixed set of worker threads fed from a bounded FIFO queue. */
typedef struct rpc_pool rpc_pool;
typedef void (*rpc_pool_fn)(void *arg);

/* nthreads >= 1, max_queue >= 1. NULL on failure. */
rpc_pool *rpc_pool_new(unsigned nthreads, size_t max_queue);
/* 0, or -1 if the queue is full or the pool is stopping (fn is not run). */
int rpc_pool_submit(rpc_pool *p, rpc_pool_fn fn, void *arg);
/* Runs every queued job, then joins and frees the threads. */
void rpc_pool_free(rpc_pool *p);

/* ---- metrics (server.c counts, metrics.c formats) ------------------------------------------ */

/* Upper bounds of the call latency histogram, in microseconds; a last bucket (+Inf) follows.
 * From 100 us (an echo on loopback) to 10 s (a slow write under a full disk). */
#define RPC_METRICS_BUCKETS_US 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, \
                               500000, 1000000, 2500000, 5000000, 10000000
#define RPC_METRICS_NBUCKETS 16
/* Status slots per method: every lagoon_status (0..LAGOON_STATUS_MAX). */
#define RPC_METRICS_NSTATUS (LAGOON_STATUS_MAX + 1)

/* One loop's counters. Only the loop's own thread writes them (a relaxed load and store: no
 * lock prefix, no contention), any thread reads them (relaxed loads), so a scrape sums the
 * loops without stopping them. Per-method arrays have nroutes + 1 slots: the last is for
 * calls to unknown methods. */
#define RPC_CACHE_LINE 64
typedef struct rpc_loop_stats {
    /* Aligned (and so sized) to a cache line: two loops' counters never share one. */
    _Alignas(RPC_CACHE_LINE) _Atomic uint64_t bytes_in; /* bytes read off the loop's connections (whole frames, prefaces) */
    _Atomic uint64_t bytes_out;      /* bytes handed to the kernel */
    _Atomic uint64_t conns_accepted; /* connections the loop took on */
    _Atomic uint64_t goaway_age;     /* GOAWAYs for max_connection_age_ms */
    _Atomic uint64_t goaway_pings;   /* GOAWAYs for PINGs faster than min_ping_interval_ms */
    _Atomic uint64_t *calls;         /* [slot * RPC_METRICS_NSTATUS + status]: calls answered */
    _Atomic uint64_t *latency;       /* [slot * (RPC_METRICS_NBUCKETS + 1) + bucket]: not cumulative */
    _Atomic uint64_t *latency_sum_us; /* [slot]: total time of the calls in the histogram */
} rpc_loop_stats;

/* Single-writer increment: the loop thread alone adds, so load + store is enough. */
static inline void rpc_stat_add(_Atomic uint64_t *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n, memory_order_relaxed);
}

/* Why accept_cb refused a connection (rpc_server_refused). */
enum rpc_refusal {
    RPC_REFUSED_MAX_CONNECTIONS,
    RPC_REFUSED_PER_ADDRESS,
    RPC_REFUSED_OUT_OF_MEMORY,
    RPC_REFUSALS
};

typedef struct rpc_server rpc_server;
struct rpc_route;
/* The loops' stats, once rpc_server_run has created them: NULL (and *n 0) before. Valid until
 * rpc_server_free. */
const rpc_loop_stats *rpc_server_loop_stats(const rpc_server *s, unsigned *n);
uint64_t rpc_server_refused(const rpc_server *s, int reason);
size_t rpc_server_memory_held(const rpc_server *s);

#endif
