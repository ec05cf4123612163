/* scenario: what lagoon-bench can ask the server, one table row per scenario.
 *
 * A scenario says which request to build and how to send one call of it. The driver (bench.c)
 * owns connections, timing, slots and statistics; a scenario never sees any of that. Adding a
 * scenario is one row in bench_scenarios[] (scenario.c) plus its functions.
 *
 * A row is either a single kind of call (functions set) or a mix of other rows (`mix` set, no
 * functions): each call of a mix picks a kind at random by weight, and the driver reports every
 * kind's latency apart as well as the whole. `--mix SPEC` on the command line builds the same
 * from any rows ("login:10,get_user:90").
 *
 * Scenarios that act as seeded users (needs_data) read the tokens that `lagoon-bench seed`
 * wrote (bench_params.data). Identity is per call: issue sets the connection's token before
 * each call (the client copies it into that call's metadata), so one connection speaks for many
 * users, as a busy front-end's pooled connections would.
 */
#ifndef LAGOON_BENCH_SCENARIO_H
#define LAGOON_BENCH_SCENARIO_H

#include <stddef.h>
#include <stdint.h>

#include "lagoon_async.h"
#include "seed.h"

/* What a scenario may read from the command line. */
typedef struct bench_params {
    uint32_t payload;       /* --payload: bytes of payload for echo */
    const bench_data *data; /* --data / --tokens: the seeded users; NULL when not given */
} bench_params;

/* One thread's state as a scenario sees it: only the thread ever touches it. */
typedef struct bench_ctx {
    const bench_params *p;
    uint64_t rng; /* xorshift64* state, never 0 */
    uint64_t seq; /* calls issued by this thread, warm-up included */
} bench_ctx;

/* Uniform in [0, n), n > 0. */
uint64_t bench_rand(bench_ctx *x, uint64_t n);

typedef struct bench_scenario {
    const char *name;
    const char *what;  /* one line for --help */
    const char *mix;   /* a mix of other rows, "name:weight,..."; NULL for a single kind */
    int needs_data;    /* 1: needs --data DIR or --tokens FILE (seeded users) */
    size_t req_size;   /* bytes of the request scratch, one per thread */
    size_t resp_size;  /* bytes of a decoded response (one buffer per thread) */
    /* Fills the thread's request scratch once, before any call. 0, or -1 with err filled. */
    int (*prepare)(const bench_params *p, void *req, char *err, size_t errlen);
    /* Sends one call on c. req is the thread's scratch for this row: it may be changed per call
     * (it is encoded before this returns); resp receives the response. Returns LAGOON_OK if the
     * call was queued, else done will not run. */
    int (*issue)(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg);
    /* After a successful call whose response was decoded: checks it and frees what decoding
     * allocated (FT_POINTER fields). 0 if the answer is what the scenario expected (counted OK),
     * else 1 (counted as BAD_ANSWER). NULL: nothing to check or free. */
    int (*finish)(const bench_params *p, void *resp);
} bench_scenario;

extern const bench_scenario bench_scenarios[];
extern const size_t bench_nscenarios;

/* The row named name, or NULL. */
const bench_scenario *bench_scenario_find(const char *name);

/* A weighted choice among single-kind rows. */
#define BENCH_MIX_MAX 8
typedef struct bench_mix {
    const bench_scenario *kind[BENCH_MIX_MAX];
    uint32_t weight[BENCH_MIX_MAX];
    uint32_t total; /* sum of weights */
    size_t n;
} bench_mix;

/* The mix of row sc: its own `mix`, or sc alone. 0, or -1 with err filled. */
int bench_mix_of(const bench_scenario *sc, bench_mix *out, char *err, size_t errlen);
/* Parses "name:weight,name:weight" (weights 1..1000000, single-kind rows, each once). */
int bench_mix_parse(const char *spec, bench_mix *out, char *err, size_t errlen);
/* Index of the kind for the next call: by weight, at random. */
size_t bench_mix_pick(const bench_mix *m, bench_ctx *x);

#endif
