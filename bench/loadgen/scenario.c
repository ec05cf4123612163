/* scenario: the scenario table. See scenario.h. */
#include "scenario.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb.h>
#include <pb_decode.h>

#include "lagoon_async_stubs.h"

/* Largest echo payload: the size of EchoRequest.payload, set in idl/lagoon/v1/debug.options. */
#define ECHO_MAX_PAYLOAD sizeof(((lagoon_v1_EchoRequest *)0)->payload.bytes)
/* list_messages reads the newest page of this many messages, the API's default page. */
#define LIST_PAGE 50
#define MIX_MAX_WEIGHT 1000000u

uint64_t bench_rand(bench_ctx *x, uint64_t n)
{
    /* xorshift64*: plenty for picking users, and a few instructions per call. */
    x->rng ^= x->rng >> 12;
    x->rng ^= x->rng << 25;
    x->rng ^= x->rng >> 27;
    return (x->rng * UINT64_C(2685821657736338717)) % n;
}

static int need_data(const bench_params *p, const char *name, char *err, size_t errlen)
{
    if (p->data != NULL)
        return 0;
    snprintf(err, errlen, "%s acts as seeded users: give --data DIR (seeded with lagoon-bench seed) or --tokens FILE",
             name);
    return -1;
}

/* Signs the connection's next call in as seeded user i. */
static void sign_in_as(lagoon_async *c, const bench_params *p, uint64_t i)
{
    lagoon_async_set_token(c, p->data->tokens[i]);
}

static uint64_t user_id(const bench_params *p, uint64_t i)
{
    return p->data->first_user_id + i;
}

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

static int echo_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg)
{
    (void)x;
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

static int health_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg)
{
    (void)x;
    /* Public: no token needed, and none sent (a mix may have left one on the connection). */
    lagoon_async_set_token(c, "");
    return lagoon_async_Health_Check(c, req, resp, done, arg);
}

/* ---- get_user: signed-in Users/Get of a random seeded user ------------------------------------ */

static int get_user_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    *(lagoon_v1_GetUserRequest *)req = (lagoon_v1_GetUserRequest)lagoon_v1_GetUserRequest_init_zero;
    return need_data(p, "get_user", err, errlen);
}

static int get_user_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done,
                          void *arg)
{
    lagoon_v1_GetUserRequest *r = req;
    sign_in_as(c, x->p, bench_rand(x, x->p->data->users));
    r->user_id = user_id(x->p, bench_rand(x, x->p->data->users));
    return lagoon_async_Users_Get(c, r, resp, done, arg);
}

static int get_user_finish(const bench_params *p, void *resp)
{
    (void)p;
    return strncmp(((const lagoon_v1_PublicUser *)resp)->username, "user", 4) != 0;
}

/* ---- login: Auth/Login of a random seeded user (Argon2id on a server worker) ------------------ */

static int login_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    lagoon_v1_LoginRequest *r = req;
    *r = (lagoon_v1_LoginRequest)lagoon_v1_LoginRequest_init_zero;
    if (need_data(p, "login", err, errlen) != 0)
        return -1;
    snprintf(r->password, sizeof(r->password), "%s", p->data->password);
    return 0;
}

static int login_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg)
{
    lagoon_v1_LoginRequest *r = req;
    lagoon_async_set_token(c, "");
    snprintf(r->login, sizeof(r->login), "user%llu", (unsigned long long)bench_rand(x, x->p->data->users));
    return lagoon_async_Auth_Login(c, r, resp, done, arg);
}

static int login_finish(const bench_params *p, void *resp)
{
    (void)p;
    return ((const lagoon_v1_TokenPair *)resp)->access_token[0] == '\0';
}

/* ---- send_message: durable Messages/Send from a random user to a random other one ------------- */

static int send_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    lagoon_v1_SendMessageRequest *r = req;
    *r = (lagoon_v1_SendMessageRequest)lagoon_v1_SendMessageRequest_init_zero;
    if (need_data(p, "send_message", err, errlen) != 0)
        return -1;
    r->which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(r->content.text.text, sizeof(r->content.text.text), "a lagoon-bench message, about as long as a chat line");
    return 0;
}

static int send_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg)
{
    lagoon_v1_SendMessageRequest *r = req;
    uint64_t n = x->p->data->users;
    uint64_t from = bench_rand(x, n);
    uint64_t to = (from + 1 + bench_rand(x, n - 1)) % n; /* anyone but the sender */
    sign_in_as(c, x->p, from);
    r->recipient_id = user_id(x->p, to);
    return lagoon_async_Messages_Send(c, r, resp, done, arg);
}

static int send_finish(const bench_params *p, void *resp)
{
    (void)p;
    return ((const lagoon_v1_DirectMessage *)resp)->id == 0;
}

/* ---- list_messages: Messages/List, the newest page of the long conversation ------------------- */

static int list_prepare(const bench_params *p, void *req, char *err, size_t errlen)
{
    lagoon_v1_ListMessagesRequest *r = req;
    *r = (lagoon_v1_ListMessagesRequest)lagoon_v1_ListMessagesRequest_init_zero;
    r->page_size = LIST_PAGE;
    return need_data(p, "list_messages", err, errlen);
}

static int list_issue(lagoon_async *c, bench_ctx *x, void *req, void *resp, lagoon_async_done_fn done, void *arg)
{
    lagoon_v1_ListMessagesRequest *r = req;
    const bench_data *d = x->p->data;
    int side = (int)bench_rand(x, 2); /* either participant reads */
    sign_in_as(c, x->p, side ? d->long_b : d->long_a);
    r->other_user_id = user_id(x->p, side ? d->long_a : d->long_b);
    return lagoon_async_Messages_List(c, r, resp, done, arg);
}

static int list_finish(const bench_params *p, void *resp)
{
    lagoon_v1_ListMessagesResponse *r = resp;
    /* A full page when the conversation is long enough (sends in a mix only add to it). */
    uint64_t want = p->data->long_messages ? (p->data->long_messages < LIST_PAGE ? p->data->long_messages : LIST_PAGE) : 1;
    int bad = r->messages_count < want;
    pb_release(lagoon_v1_ListMessagesResponse_fields, r);
    return bad;
}

/* ---- the table ---------------------------------------------------------------------------------- */

#define ROW(name, what, data, req_t, resp_t, prefix, finish)                                                  \
    {name, what, NULL, data, sizeof(req_t), sizeof(resp_t), prefix##_prepare, prefix##_issue, finish}

const bench_scenario bench_scenarios[] = {
    ROW("echo", "Debug/Echo of --payload bytes (default 16): the RPC framework's ceiling", 0,
        lagoon_v1_EchoRequest, lagoon_v1_EchoResponse, echo, NULL),
    ROW("health", "Health/Check: a unary call with a small response", 0, lagoon_v1_HealthCheckRequest,
        lagoon_v1_HealthCheckResponse, health, NULL),
    ROW("get_user", "signed-in Users/Get of a random seeded user, as a random seeded user", 1,
        lagoon_v1_GetUserRequest, lagoon_v1_PublicUser, get_user, get_user_finish),
    ROW("login", "Auth/Login of a random seeded user: Argon2id and a durable session write", 1,
        lagoon_v1_LoginRequest, lagoon_v1_TokenPair, login, login_finish),
    ROW("send_message", "durable Messages/Send of a text from a random user to a random other", 1,
        lagoon_v1_SendMessageRequest, lagoon_v1_DirectMessage, send, send_finish),
    ROW("list_messages", "Messages/List: the newest 50 of the long conversation (user0-user1)", 1,
        lagoon_v1_ListMessagesRequest, lagoon_v1_ListMessagesResponse, list, list_finish),
    {"mixed", "90 % reads (get_user 45, list_messages 45), 10 % writes (send_message)",
     "get_user:45,list_messages:45,send_message:10", 1, 0, 0, NULL, NULL, NULL},
};
const size_t bench_nscenarios = sizeof(bench_scenarios) / sizeof(bench_scenarios[0]);

const bench_scenario *bench_scenario_find(const char *name)
{
    for (size_t i = 0; i < bench_nscenarios; i++)
        if (strcmp(bench_scenarios[i].name, name) == 0)
            return &bench_scenarios[i];
    return NULL;
}

/* ---- mixes ---------------------------------------------------------------------------------------- */

int bench_mix_parse(const char *spec, bench_mix *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    char buf[256];
    if (strlen(spec) >= sizeof(buf)) {
        snprintf(err, errlen, "mix '%.40s...' is too long", spec);
        return -1;
    }
    snprintf(buf, sizeof(buf), "%s", spec);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        char *end = NULL;
        unsigned long w = colon ? strtoul(colon + 1, &end, 10) : 0;
        if (colon == NULL || end == colon + 1 || *end || w < 1 || w > MIX_MAX_WEIGHT) {
            snprintf(err, errlen, "mix item '%s': want NAME:WEIGHT, weight 1..%u", item, MIX_MAX_WEIGHT);
            return -1;
        }
        *colon = '\0';
        const bench_scenario *sc = bench_scenario_find(item);
        if (sc == NULL || sc->mix) {
            snprintf(err, errlen, "mix item '%s': not a single-kind scenario (--list)", item);
            return -1;
        }
        for (size_t i = 0; i < out->n; i++) {
            if (out->kind[i] == sc) {
                snprintf(err, errlen, "mix names %s twice", item);
                return -1;
            }
        }
        if (out->n == BENCH_MIX_MAX) {
            snprintf(err, errlen, "a mix has at most %d kinds", BENCH_MIX_MAX);
            return -1;
        }
        out->kind[out->n] = sc;
        out->weight[out->n++] = (uint32_t)w;
        out->total += (uint32_t)w;
    }
    if (out->n == 0) {
        snprintf(err, errlen, "empty mix");
        return -1;
    }
    return 0;
}

int bench_mix_of(const bench_scenario *sc, bench_mix *out, char *err, size_t errlen)
{
    if (sc->mix)
        return bench_mix_parse(sc->mix, out, err, errlen);
    memset(out, 0, sizeof(*out));
    out->kind[0] = sc;
    out->weight[0] = 1;
    out->total = 1;
    out->n = 1;
    return 0;
}

size_t bench_mix_pick(const bench_mix *m, bench_ctx *x)
{
    if (m->n == 1)
        return 0;
    uint64_t r = bench_rand(x, m->total);
    for (size_t i = 0; i < m->n; i++) {
        if (r < m->weight[i])
            return i;
        r -= m->weight[i];
    }
    return m->n - 1;
}
