/* limiter: see limiter.h. A chained hash table under one mutex: the calls are rare (logins,
 * registrations), so contention is not a concern. */
#include "limiter.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMITER_BUCKETS 1024

typedef struct entry {
    struct entry *next;
    char key[LIMITER_KEY_MAX];
    uint32_t count;    /* events in the current window */
    int64_t first_ms;  /* first event of the window */
    int64_t last_ms;   /* last event */
} entry;

struct limiter {
    limiter_policy p;
    size_t max_keys, nkeys;
    pthread_mutex_t mu;
    entry *buckets[LIMITER_BUCKETS];
};

static uint32_t hash_key(const char *s)
{
    uint32_t h = 0x811C9DC5u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x01000193u;
    return h % LIMITER_BUCKETS;
}

limiter *limiter_new(const limiter_policy *p, size_t max_keys)
{
    limiter *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->p = *p;
    l->max_keys = max_keys;
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void limiter_free(limiter *l)
{
    if (l == NULL)
        return;
    for (int b = 0; b < LIMITER_BUCKETS; b++) {
        entry *e = l->buckets[b];
        while (e) {
            entry *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* The wait a key owes at now (0 if none). */
static uint32_t wait_of(const limiter *l, const entry *e, int64_t now)
{
    if (e->count < l->p.max_events)
        return 0;
    if (l->p.kind == LIMITER_BUDGET) {
        int64_t end = e->first_ms + (int64_t)l->p.window_ms;
        return end > now ? (uint32_t)(end - now) : 0;
    }
    uint64_t delay = l->p.base_delay_ms;
    for (uint32_t i = l->p.max_events; i < e->count && delay < l->p.max_delay_ms; i++)
        delay *= 2;
    if (delay > l->p.max_delay_ms)
        delay = l->p.max_delay_ms;
    int64_t until = e->last_ms + (int64_t)delay;
    return until > now ? (uint32_t)(until - now) : 0;
}

/* Forgets a key whose window is over and that owes no wait. */
static int stale(const limiter *l, const entry *e, int64_t now)
{
    return now - e->first_ms >= (int64_t)l->p.window_ms && wait_of(l, e, now) == 0;
}

static entry **find(limiter *l, const char *key)
{
    entry **p = &l->buckets[hash_key(key)];
    for (; *p; p = &(*p)->next)
        if (strcmp((*p)->key, key) == 0)
            break;
    return p;
}

uint32_t limiter_wait(limiter *l, const char *key, int64_t now_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    uint32_t w = 0;
    if (*p != NULL) {
        if (stale(l, *p, now_ms)) {
            entry *e = *p;
            *p = e->next;
            free(e);
            l->nkeys--;
        } else {
            w = wait_of(l, *p, now_ms);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return w;
}

void limiter_hit(limiter *l, const char *key, int64_t now_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    entry *e = *p;
    if (e != NULL && stale(l, e, now_ms)) {
        e->count = 0;
        e->first_ms = now_ms;
    }
    if (e == NULL && l->nkeys < l->max_keys) {
        e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->key, k, sizeof(e->key));
            e->first_ms = now_ms;
            *p = e;
            l->nkeys++;
        }
    }
    if (e != NULL) {
        e->count++;
        e->last_ms = now_ms;
    }
    pthread_mutex_unlock(&l->mu);
}

uint32_t limiter_count(limiter *l, const char *key, int64_t now_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    const entry *e = *find(l, k);
    uint32_t n = e != NULL && !stale(l, e, now_ms) ? e->count : 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void limiter_reset(limiter *l, const char *key)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    if (*p != NULL) {
        entry *e = *p;
        *p = e->next;
        free(e);
        l->nkeys--;
    }
    pthread_mutex_unlock(&l->mu);
}
