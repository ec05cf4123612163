/* hist: a log-bucketed latency histogram in the style of HdrHistogram.
 *
 * Values are nanoseconds. Below 2^HIST_SUB_BITS every value has its own bucket; above, each
 * power of two is split into 2^HIST_SUB_BITS equal buckets, so a bucket is at most 1/128 of
 * its value wide: every reported quantile is within 0.8 % of the true one. Recording is an
 * index computation and one increment: no allocation, no lock (one histogram per thread,
 * merged at the end). Values above HIST_MAX_NS are clamped and counted in `clamped`.
 */
#ifndef LAGOON_BENCH_HIST_H
#define LAGOON_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
/* Largest power of two covered: 2^40 ns is about 18 minutes, far beyond any run. */
#define HIST_MAX_EXP 40
#define HIST_MAX_NS ((UINT64_C(1) << (HIST_MAX_EXP + 1)) - 1)
#define HIST_BUCKETS ((HIST_MAX_EXP - HIST_SUB_BITS + 2) * HIST_SUB)

typedef struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;   /* values recorded */
    uint64_t min_ns;  /* exact smallest value (UINT64_MAX when empty) */
    uint64_t max_ns;  /* exact largest value */
    double sum_ns;    /* for the mean */
    uint64_t clamped; /* values above HIST_MAX_NS, recorded as HIST_MAX_NS */
} hist;

void hist_init(hist *h);
void hist_record(hist *h, uint64_t ns);
/* dst += src */
void hist_merge(hist *dst, const hist *src);
/* The value at quantile q (0..1], as the midpoint of its bucket (exact min/max at the ends);
 * 0 for an empty histogram. */
uint64_t hist_quantile(const hist *h, double q);
double hist_mean(const hist *h);

#endif
