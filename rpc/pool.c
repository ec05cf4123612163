/* pool: the worker threads behind rpc_call_defer. See rpc_internal.h. */
#include <pthread.h>
#include <stdlib.h>

#include "rpc_internal.h"

typedef struct pool_job {
    struct pool_job *next;
    rpc_pool_fn fn;
    void *arg;
} pool_job;

struct rpc_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pool_job *head, *tail;
    size_t queued, max_queue;
    int stopping;
    unsigned nthreads;
    pthread_t threads[];
};

static void *pool_main(void *arg)
{
    rpc_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        pool_job *j = p->head;
        if (j == NULL)
            break; /* stopping and drained */
        p->head = j->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        pthread_mutex_unlock(&p->mu);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

rpc_pool *rpc_pool_new(unsigned nthreads, size_t max_queue)
{
    rpc_pool *p = calloc(1, sizeof(*p) + nthreads * sizeof(pthread_t));
    if (p == NULL)
        return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max_queue = max_queue;
    for (unsigned i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0) {
            p->nthreads = i;
            rpc_pool_free(p);
            return NULL;
        }
        p->nthreads = i + 1;
    }
    return p;
}

int rpc_pool_submit(rpc_pool *p, rpc_pool_fn fn, void *arg)
{
    pool_job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&p->mu);
    if (p->stopping || p->queued >= p->max_queue) {
        pthread_mutex_unlock(&p->mu);
        free(j);
        return -1;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    p->queued++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void rpc_pool_free(rpc_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
