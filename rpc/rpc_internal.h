/* rpc internals shared by the files of the rpc module; not part of its public surface. */
#ifndef LAGOON_RPC_INTERNAL_H
#define LAGOON_RPC_INTERNAL_H

#include <stddef.h>

/* A fixed set of worker threads fed from a bounded FIFO queue. */
typedef struct rpc_pool rpc_pool;
typedef void (*rpc_pool_fn)(void *arg);

/* nthreads >= 1, max_queue >= 1. NULL on failure. */
rpc_pool *rpc_pool_new(unsigned nthreads, size_t max_queue);
/* 0, or -1 if the queue is full or the pool is stopping (fn is not run). */
int rpc_pool_submit(rpc_pool *p, rpc_pool_fn fn, void *arg);
/* Runs every queued job, then joins and frees the threads. */
void rpc_pool_free(rpc_pool *p);

#endif
