/* scenario: what lagoon-bench can ask the server, one table row per scenario.
 *
 * A scenario says which request to build and how to send one call of it. The driver (bench.c)
 * owns connections, timing, slots and statistics; a scenario never sees any of that. Adding a
 * scenario is one row in bench_scenarios[] (scenario.c) plus its functions.
 *
 * Scenarios whose services do not exist yet carry `unavailable`, the sentence printed instead
 * of running them.
 */
#ifndef LAGOON_BENCH_SCENARIO_H
#define LAGOON_BENCH_SCENARIO_H

#include <stddef.h>
#include <stdint.h>

#include "lagoon_async.h"

/* What a scenario may read from the command line. */
typedef struct bench_params {
    uint32_t payload; /* --payload: bytes of payload for echo */
} bench_params;

typedef struct bench_scenario {
    const char *name;
    const char *what;        /* one line for --help */
    const char *unavailable; /* NULL if it runs; else why not, printed as is */
    size_t req_size;         /* bytes of the request scratch, one per thread */
    size_t resp_size;        /* bytes of a decoded response (one buffer per thread) */
    /* Fills the thread's request scratch once, before any call. 0, or -1 with err filled. */
    int (*prepare)(const bench_params *p, void *req, char *err, size_t errlen);
    /* Sends call number seq (per thread, from 0) on c. req is the thread's scratch: it may be
     * changed per call (it is encoded before this returns); resp receives the response.
     * Returns LAGOON_OK if the call was queued, else done will not run. */
    int (*issue)(lagoon_async *c, void *req, void *resp, uint64_t seq, lagoon_async_done_fn done,
                 void *arg);
} bench_scenario;

extern const bench_scenario bench_scenarios[];
extern const size_t bench_nscenarios;

/* The row named name, or NULL. */
const bench_scenario *bench_scenario_find(const char *name);

#endif
