/* limiter: see limiter.h. A chained hash table under one mutex, plus a list of the entries in
 * the order they were last counted (the oldest first to expire, so the first to evict). The
 * calls are rare (sign-ins, registrations, emails, sends), so contention is not a concern. */
#include "limiter.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

/* Entries looked at, oldest first, when a full table needs room for one key. Bounded work per
 * insertion; the oldest entry is the one most likely to have expired, so more rarely helps. */
#define LIMITER_EVICT_SCAN 8
/* Keys per bucket when the table is full (the bucket array is allocated up front). */
#define LIMITER_KEYS_PER_BUCKET 4
/* The wait of a new key that could not be tracked for want of memory: it fails closed, and
 * soon tries again. */
#define LIMITER_NO_MEMORY_WAIT_MS 1000

typedef struct entry {
    struct entry *next;           /* the bucket's chain */
    struct entry *older, *newer;  /* the list by last count; newer is NULL for the newest */
    uint32_t count;               /* events in the current window */
    int64_t first_ms;             /* first event of the window (ms) */
    int64_t last_ms;              /* last event (ms) */
    char key[LIMITER_KEY_MAX];
} entry;

struct limiter {
    limiter_policy p;
    size_t max_keys, nkeys;
    size_t mask;                  /* buckets - 1 (a power of two) */
    uint8_t seed[crypto_shorthash_KEYBYTES]; /* keyed hash: keys are chosen by clients, so
                                               * chains must not be */
    pthread_mutex_t mu;
    entry *oldest, *newest;
    entry **buckets;
};

static size_t bucket_of(const limiter *l, const char *key)
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)key, strlen(key), l->seed);
    uint64_t v;
    memcpy(&v, h, sizeof(v));
    return (size_t)v & l->mask;
}

limiter *limiter_new(const limiter_policy *p, size_t max_keys)
{
    if (max_keys == 0)
        return NULL;
    limiter *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    size_t n = 16;
    while (n < max_keys / LIMITER_KEYS_PER_BUCKET && n < ((size_t)1 << 30))
        n *= 2;
    l->buckets = calloc(n, sizeof(*l->buckets));
    if (l->buckets == NULL) {
        free(l);
        return NULL;
    }
    l->mask = n - 1;
    l->p = *p;
    l->max_keys = max_keys;
    randombytes_buf(l->seed, sizeof(l->seed));
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void limiter_free(limiter *l)
{
    if (l == NULL)
        return;
    entry *e = l->oldest;
    while (e) {
        entry *n = e->newer;
        free(e);
        e = n;
    }
    free(l->buckets);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ---- the list by last count ------------------------------------------------------------------ */

static void list_unlink(limiter *l, entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        l->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        l->newest = e->older;
    e->older = e->newer = NULL;
}

static void list_push_newest(limiter *l, entry *e)
{
    e->older = l->newest;
    e->newer = NULL;
    if (l->newest)
        l->newest->newer = e;
    else
        l->oldest = e;
    l->newest = e;
}

/* ---- entries ------------------------------------------------------------------------------ */

static entry **find(limiter *l, const char *key)
{
    entry **p = &l->buckets[bucket_of(l, key)];
    for (; *p; p = &(*p)->next)
        if (strcmp((*p)->key, key) == 0)
            break;
    return p;
}

/* Removes the entry *p points at (a slot of its chain). */
static void remove_at(limiter *l, entry **p)
{
    entry *e = *p;
    *p = e->next;
    list_unlink(l, e);
    free(e);
    l->nkeys--;
}

/* A clock that stepped back would leave timestamps in the future, and with them waits that
 * last until the clock catches up (or, cast to 32 bits, wrap): they are moved back to now. */
static void rebase(entry *e, int64_t now)
{
    if (e->first_ms > now)
        e->first_ms = now;
    if (e->last_ms > now)
        e->last_ms = now;
}

static uint64_t backoff_delay(const limiter_policy *p, uint32_t count)
{
    uint64_t delay = p->base_delay_ms;
    for (uint32_t i = p->max_events; i < count && delay != 0 && delay < p->max_delay_ms; i++)
        delay *= 2;
    return delay > p->max_delay_ms ? p->max_delay_ms : delay;
}

/* The wait e owes at now (0 if none). e is rebased, so every difference is within the
 * policy's window or delay, and fits. */
static uint32_t wait_of(const limiter *l, const entry *e, int64_t now)
{
    if (l->p.kind == LIMITER_SEEN || e->count < l->p.max_events)
        return 0;
    if (l->p.kind == LIMITER_BUDGET) {
        int64_t end = e->first_ms + (int64_t)l->p.window_ms;
        return end > now ? (uint32_t)(end - now) : 0;
    }
    int64_t until = e->last_ms + (int64_t)backoff_delay(&l->p, e->count);
    return until > now ? (uint32_t)(until - now) : 0;
}

/* How long until e may be forgotten (0: now): its window is over and it owes no wait. */
static uint32_t expires_in(const limiter *l, const entry *e, int64_t now)
{
    int64_t from = l->p.kind == LIMITER_SEEN ? e->last_ms : e->first_ms;
    int64_t end = from + (int64_t)l->p.window_ms;
    uint32_t w = end > now ? (uint32_t)(end - now) : 0;
    uint32_t owed = wait_of(l, e, now);
    return owed > w ? owed : w;
}

/* Room for one more key: 0, or (a BACKOFF or BUDGET table full of live keys) how long until
 * its oldest key expires, which is how long a new key waits. */
static uint32_t make_room(limiter *l, int64_t now)
{
    if (l->nkeys < l->max_keys)
        return 0;
    entry *e = l->oldest;
    for (int i = 0; i < LIMITER_EVICT_SCAN && e != NULL; i++) {
        entry *n = e->newer;
        rebase(e, now);
        if (expires_in(l, e, now) == 0)
            remove_at(l, find(l, e->key));
        e = n;
    }
    if (l->nkeys < l->max_keys || l->oldest == NULL) /* (never both full and empty: max_keys > 0) */
        return 0;
    if (l->p.kind == LIMITER_SEEN) {
        remove_at(l, find(l, l->oldest->key));
        return 0;
    }
    rebase(l->oldest, now);
    uint32_t w = expires_in(l, l->oldest, now);
    return w ? w : 1;
}

/* Counts one event for key at now; with check, only if key owes no wait. Returns the wait
 * (nothing counted), or 0 (counted, or: without check, not tracked for want of room). */
static uint32_t count_event(limiter *l, const char *key, int64_t now, int check)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    entry *e = *p;
    uint32_t w = 0;
    if (e != NULL) {
        rebase(e, now);
        if (expires_in(l, e, now) == 0) { /* a new window */
            e->count = 0;
            e->first_ms = now;
        }
        w = check ? wait_of(l, e, now) : 0;
        if (w == 0) {
            if (e->count < UINT32_MAX)
                e->count++;
            e->last_ms = now;
            list_unlink(l, e);
            list_push_newest(l, e);
        }
    } else {
        w = make_room(l, now); /* may remove entries of k's chain: p is not used after */
        e = w == 0 ? calloc(1, sizeof(*e)) : NULL;
        if (e == NULL && w == 0 && check)
            w = LIMITER_NO_MEMORY_WAIT_MS;
        if (e != NULL) {
            memcpy(e->key, k, sizeof(e->key));
            e->count = 1;
            e->first_ms = e->last_ms = now;
            size_t b = bucket_of(l, k);
            e->next = l->buckets[b];
            l->buckets[b] = e;
            list_push_newest(l, e);
            l->nkeys++;
        }
        if (!check)
            w = 0;
    }
    pthread_mutex_unlock(&l->mu);
    return w;
}

uint32_t limiter_take(limiter *l, const char *key, int64_t now_ms)
{
    return count_event(l, key, now_ms, 1);
}

void limiter_hit(limiter *l, const char *key, int64_t now_ms)
{
    (void)count_event(l, key, now_ms, 0);
}

void limiter_refund(limiter *l, const char *key, int64_t taken_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    entry *e = *p;
    if (e != NULL && e->first_ms <= taken_ms && e->count > 0) {
        e->count--;
        if (e->count == 0) /* nothing left to remember */
            remove_at(l, p);
    }
    pthread_mutex_unlock(&l->mu);
}

/* key's entry if it has not expired (an expired one is forgotten here), else NULL. */
static entry *live(limiter *l, const char *key, int64_t now)
{
    entry **p = find(l, key);
    if (*p == NULL)
        return NULL;
    rebase(*p, now);
    if (expires_in(l, *p, now) == 0) {
        remove_at(l, p);
        return NULL;
    }
    return *p;
}

uint32_t limiter_wait(limiter *l, const char *key, int64_t now_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    const entry *e = live(l, k, now_ms);
    /* A key that is not tracked acts only if it could be: when there is room for it. */
    uint32_t w = e != NULL ? wait_of(l, e, now_ms) : make_room(l, now_ms);
    pthread_mutex_unlock(&l->mu);
    return w;
}

uint32_t limiter_count(limiter *l, const char *key, int64_t now_ms)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    const entry *e = live(l, k, now_ms);
    uint32_t n = e != NULL ? e->count : 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void limiter_reset(limiter *l, const char *key)
{
    char k[LIMITER_KEY_MAX];
    snprintf(k, sizeof(k), "%s", key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, k);
    if (*p != NULL)
        remove_at(l, p);
    pthread_mutex_unlock(&l->mu);
}
