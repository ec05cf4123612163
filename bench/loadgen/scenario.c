/* scenario: the scenario table. See scenario.h. */
#include "scenario.h"

#include <stdio.h>
#include <string.h>

#include "lagoon_async_stubs.h"

/* Largest echo payload: the size of EchoRequest.payload, set in idl/lagoon/v1/debug.options. */
#define ECHO_MAX_PAYLOAD sizeof(((lagoon_v1_EchoRequest *)0)->payload.bytes)

#define NOT_YET "not available until the Users/Messages services exist (issue 7); " \
                "today lagoon-bench runs: echo, health"

/* ---- echo: Debug/Echo, the framework's ceiling ------------------------------------------------ */

static int echo_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    lagoon_v1_EchoRequest *r = req;
    if (p->payload > ECHO_MAX_PAYLOAD) {
        snprintf(err, errlen, "--payload %u: echo takes at most %zu bytes", p->payload, ECHO_MAX_PAYLOAD);
        return -1;
    }
    *r = (lagoon_v1_EchoRequest)lagoon_v1_EchoRequest_init_zero;
    r->payload.size = (pb_size_t)p->payload;
    for (uint32_t i = 0; i < p->payload; i++)
        r->payload.bytes[i] = (pb_byte_t)('a' + i % 26);
    return 0;
}

static int echo_issue(lagoon_async *c, void *req, void *resp, uint64_t seq, lagoon_async_done_fn done,
                      void *arg)
{
    (void)seq;
    return lagoon_async_Debug_Echo(c, req, resp, done, arg);
}

/* ---- health: Health/Check, the smallest call that reads server state -------------------------- */

static int health_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    (void)p;
    (void)err;
    (void)errlen;
    *(lagoon_v1_HealthCheckRequest *)req = (lagoon_v1_HealthCheckRequest)lagoon_v1_HealthCheckRequest_init_zero;
    return 0;
}

static int health_issue(lagoon_async *c, void *req, void *resp, uint64_t seq, lagoon_async_done_fn done,
                        void *arg)
{
    (void)seq;
    return lagoon_async_Health_Check(c, req, resp, done, arg);
}

/* ---- the table ---------------------------------------------------------------------------------- */

/* Rows without functions are the scenarios of issue 7 whose services come later: each will get
 * a prepare (seed data it needs: users, tokens) and an issue function here. */
const bench_scenario bench_scenarios[] = {
    {"echo", "Debug/Echo of --payload bytes (default 16): the RPC framework's ceiling", NULL,
     sizeof(lagoon_v1_EchoRequest), sizeof(lagoon_v1_EchoResponse), echo_prepare, echo_issue},
    {"health", "Health/Check: a unary call with a small response", NULL, sizeof(lagoon_v1_HealthCheckRequest),
     sizeof(lagoon_v1_HealthCheckResponse), health_prepare, health_issue},
    {"get_user", "signed-in point read of a user", NOT_YET, 0, 0, NULL, NULL},
    {"login", "password login (Argon2), while other calls stay fast", NOT_YET, 0, 0, NULL, NULL},
    {"send_message", "durable write of a direct message", NOT_YET, 0, 0, NULL, NULL},
    {"list_messages", "one page of a long conversation", NOT_YET, 0, 0, NULL, NULL},
    {"mixed", "90 % reads (get_user, list_messages), 10 % writes (send_message)", NOT_YET, 0, 0, NULL, NULL},
};
const size_t bench_nscenarios = sizeof(bench_scenarios) / sizeof(bench_scenarios[0]);

const bench_scenario *bench_scenario_find(const char *name)
{
    for (size_t i = 0; i < bench_nscenarios; i++)
        if (strcmp(bench_scenarios[i].name, name) == 0)
            return &bench_scenarios[i];
    return NULL;
}
