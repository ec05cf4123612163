/* limiter: counts events per key (an account, a client address) and says how long a key
 * must wait. Thread-safe; memory bounded by max_keys. Time is passed in (ms), so tests can
 * drive it with their own clock.
 *
 * Two kinds of policy:
 * - LIMITER_BACKOFF (failed sign-ins): a key may have max_events within window_ms. Past that it
 *   waits base_delay_ms after its last event, doubling with each further event, up to
 *   max_delay_ms. It slows guessing down without a fixed lock-out period.
 * - LIMITER_BUDGET (emails, registrations: "N per hour"): a key may have max_events within
 *   window_ms, counted from its first event; past that it waits until that window ends.
 * A key whose window has passed and that is not waiting is forgotten. */
#ifndef LAGOON_LIMITER_H
#define LAGOON_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#define LIMITER_KEY_MAX 160 /* longer keys are cut: they are ours (prefix + address or login) */

enum limiter_kind { LIMITER_BACKOFF = 0, LIMITER_BUDGET = 1 };

typedef struct limiter_policy {
    uint32_t kind;          /* enum limiter_kind */
    uint32_t max_events;    /* events allowed per window without waiting */
    uint32_t window_ms;     /* the window, from a key's first counted event */
    uint32_t base_delay_ms; /* BACKOFF: first wait once max_events is reached */
    uint32_t max_delay_ms;  /* BACKOFF: waits double up to this */
} limiter_policy;

typedef struct limiter limiter;

/* NULL on allocation failure. max_keys bounds memory: when full, new keys are not tracked
 * (failing open for them) rather than evicting keys that are being throttled. */
limiter *limiter_new(const limiter_policy *p, size_t max_keys);
void limiter_free(limiter *l);

/* 0 if key may act now, else the milliseconds it must still wait. */
uint32_t limiter_wait(limiter *l, const char *key, int64_t now_ms);
/* Counts one event for key. */
void limiter_hit(limiter *l, const char *key, int64_t now_ms);
/* Events counted for key in its current window (0 if none, or if the window has passed). */
uint32_t limiter_count(limiter *l, const char *key, int64_t now_ms);
/* Forgets key (a successful login clears its failures). */
void limiter_reset(limiter *l, const char *key);

#endif
