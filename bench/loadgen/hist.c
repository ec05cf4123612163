/* hist: see hist.h. */
#include "hist.h"

#include <string.h>

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* v >= 128, so e >= HIST_SUB_BITS */
    unsigned shift = e - HIST_SUB_BITS;
    return (e - HIST_SUB_BITS + 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* Lowest value of bucket i and its width. */
static void hist_bucket(unsigned i, uint64_t *lo, uint64_t *width)
{
    if (i < HIST_SUB) {
        *lo = i;
        *width = 1;
        return;
    }
    unsigned e = i / HIST_SUB - 1 + HIST_SUB_BITS;
    unsigned shift = e - HIST_SUB_BITS;
    *lo = ((uint64_t)(i % HIST_SUB) + HIST_SUB) << shift;
    *width = UINT64_C(1) << shift;
}

void hist_init(hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

void hist_record(hist *h, uint64_t ns)
{
    if (ns > HIST_MAX_NS) {
        ns = HIST_MAX_NS;
        h->clamped++;
    }
    h->counts[hist_index(ns)]++;
    h->total++;
    h->sum_ns += (double)ns;
    if (ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

void hist_merge(hist *dst, const hist *src)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum_ns += src->sum_ns;
    dst->clamped += src->clamped;
    if (src->min_ns < dst->min_ns)
        dst->min_ns = src->min_ns;
    if (src->max_ns > dst->max_ns)
        dst->max_ns = src->max_ns;
}

uint64_t hist_quantile(const hist *h, double q)
{
    if (h->total == 0)
        return 0;
    if (q >= 1.0)
        return h->max_ns;
    /* The rank of the value wanted, 1-based: the smallest value with at least q of all at or
     * below it. */
    uint64_t rank = (uint64_t)(q * (double)h->total);
    if ((double)rank < q * (double)h->total)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo, width;
            hist_bucket(i, &lo, &width);
            uint64_t v = lo + width / 2;
            if (v < h->min_ns)
                v = h->min_ns;
            if (v > h->max_ns)
                v = h->max_ns;
            return v;
        }
    }
    return h->max_ns;
}

double hist_mean(const hist *h)
{
    return h->total ? h->sum_ns / (double)h->total : 0.0;
}
