/* limiter: counts events per key (an account, a client address) and says how long a key
 * must wait. Thread-safe; memory bounded by max_keys. Time is passed in (ms), so tests can
 * drive it with their own clock.
 *
 * Three kinds of policy:
 * - LIMITER_BACKOFF (failed sign-ins): a key may have max_events within window_ms. Past that it
 *   waits base_delay_ms after its last event, doubling with each further event, up to
 *   max_delay_ms. It slows guessing down without a fixed lock-out period.
 * - LIMITER_BUDGET (emails, registrations: "N per hour"): a key may have max_events within
 *   window_ms, counted from its first event; past that it waits until that window ends.
 * - LIMITER_SEEN (addresses an account signed in from): remembers keys, never waits; a key is
 *   forgotten window_ms after its LAST event.
 * A BACKOFF or BUDGET key whose window has passed and that owes no wait is forgotten.
 *
 * Counting happens when an attempt starts, not when its outcome is known: limiter_take checks
 * and counts in one step under the limiter's lock, so that attempts in flight at once (calls
 * pipelined on a connection, or on several) cannot all pass a check that none has counted
 * yet. An attempt that turns out not to count (the password was right, no email went out) is
 * given back with limiter_refund.
 *
 * A full table first forgets keys that have expired (looking at the least recently counted
 * ones, a bounded number per insertion). If there is still no room, a BACKOFF or BUDGET
 * limiter fails closed: a key it does not track waits (limiter_take, limiter_wait) until the
 * oldest tracked key expires. A SEEN limiter forgets its least recently seen key instead
 * (a forgotten key is merely unknown, which grants nothing).
 *
 * Waits are clamped: a clock that steps back never makes one longer than the policy's longest
 * (window_ms for a budget, max_delay_ms for a backoff); timestamps found in the future are
 * moved back to now. */
#ifndef LAGOON_LIMITER_H
#define LAGOON_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#define LIMITER_KEY_MAX 160 /* longer keys are cut: they are ours (prefix + address or login) */

enum limiter_kind { LIMITER_BACKOFF = 0, LIMITER_BUDGET = 1, LIMITER_SEEN = 2 };

typedef struct limiter_policy {
    uint32_t kind;          /* enum limiter_kind */
    uint32_t max_events;    /* events allowed per window without waiting */
    uint32_t window_ms;     /* the window, from a key's first counted event (SEEN: its last) */
    uint32_t base_delay_ms; /* BACKOFF: first wait once max_events is reached */
    uint32_t max_delay_ms;  /* BACKOFF: waits double up to this */
} limiter_policy;

typedef struct limiter limiter;

/* NULL on allocation failure (or max_keys 0). max_keys bounds memory (about 230 bytes a key,
 * plus a pointer per 4 keys allocated up front); what happens when it is reached is in the
 * introduction. */
limiter *limiter_new(const limiter_policy *p, size_t max_keys);
void limiter_free(limiter *l);

/* 0 if key may act now, else the milliseconds it must still wait (at least 1). */
uint32_t limiter_wait(limiter *l, const char *key, int64_t now_ms);
/* Atomically: 0 and one event counted for key at now_ms, or the milliseconds key must wait
 * (nothing counted). */
uint32_t limiter_take(limiter *l, const char *key, int64_t now_ms);
/* Gives back one event limiter_take (or limiter_hit) counted for key at taken_ms. Nothing if
 * key is not tracked, or its window restarted after taken_ms (the event is not in it). */
void limiter_refund(limiter *l, const char *key, int64_t taken_ms);
/* Counts one event for key without a check (not counted if the table is full of live keys). */
void limiter_hit(limiter *l, const char *key, int64_t now_ms);
/* Events counted for key in its current window (0 if none, or if the window has passed). */
uint32_t limiter_count(limiter *l, const char *key, int64_t now_ms);
/* Forgets key (a successful login clears its failures). */
void limiter_reset(limiter *l, const char *key);

#endif
