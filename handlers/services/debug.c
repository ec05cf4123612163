/* Debug service: echo in every streaming kind. Used by the tests and as the benchmark's
 * ceiling; every amount of work it can be asked for is bounded. */
#include "lagoon_handlers.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The bounds of delay_ms, count, interval_ms and fail_code are (rules) in debug.proto: the RPC
 * layer has applied them before a handler runs. */
/* With interval 0, EchoStream sends while the connection's output backlog is below this and
 * then waits a millisecond: it goes as fast as the client reads, never faster. */
#define DEBUG_STREAM_BACKLOG (256u << 10)

static int echo_fail(rpc_call *call, uint32_t code)
{
    return rpc_call_error(call, (int)code, "failure requested with fail_code");
}

/* Echo.delay_ms is a timer on the call's loop, not a sleeping thread: a client holding many
 * delayed calls costs a timer each and never takes a worker from real work. */
typedef struct echo_delay {
    rpc_call *call;
    struct event *timer;
} echo_delay;

static void echo_delay_cancel(rpc_call *call, void *arg)
{
    echo_delay *d = arg;
    event_free(d->timer);
    free(d);
    rpc_call_finish(call, LAGOON_CANCELLED);
}

static void echo_delay_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    echo_delay *d = arg;
    rpc_call *call = d->call;
    event_free(d->timer);
    free(d);
    rpc_call_finish(call, LAGOON_OK);
}

int handle_Debug_Echo(rpc_call *call, const lagoon_v1_EchoRequest *req, lagoon_v1_EchoResponse *resp)
{
    if (req->fail_code)
        return echo_fail(call, req->fail_code);
    resp->payload.size = req->payload.size;
    memcpy(resp->payload.bytes, req->payload.bytes, req->payload.size);
    if (req->delay_ms == 0)
        return LAGOON_OK;
    echo_delay *d = malloc(sizeof(*d));
    if (d == NULL || (d->timer = evtimer_new(rpc_call_base(call), echo_delay_fire, d)) == NULL) {
        free(d);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    d->call = call;
    rpc_call_on_cancel(call, echo_delay_cancel, d);
    struct timeval tv = {(time_t)(req->delay_ms / 1000), (suseconds_t)(req->delay_ms % 1000) * 1000};
    evtimer_add(d->timer, &tv);
    return RPC_PENDING;
}

/* ---- EchoStream ---------------------------------------------------------------------------- */

typedef struct echo_stream {
    rpc_call *call;
    struct event *timer;
    uint32_t left;
    struct timeval interval;
    lagoon_v1_EchoResponse msg;
} echo_stream;

static void echo_stream_free(echo_stream *st)
{
    event_free(st->timer);
    free(st);
}

static void echo_stream_cancel(rpc_call *call, void *arg)
{
    echo_stream_free(arg);
    rpc_call_finish(call, LAGOON_CANCELLED);
}

static void echo_stream_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    echo_stream *st = arg;
    rpc_call *call = st->call;
    int burst = st->interval.tv_sec == 0 && st->interval.tv_usec == 0;
    do {
        if (rpc_call_send(call, &st->msg) != 0 || --st->left == 0) {
            echo_stream_free(st);
            rpc_call_finish(call, LAGOON_OK);
            return;
        }
    } while (burst && rpc_call_backlog(call) < DEBUG_STREAM_BACKLOG);
    struct timeval pause = {0, 1000};
    evtimer_add(st->timer, burst ? &pause : &st->interval);
}

int handle_Debug_EchoStream(rpc_call *call, const lagoon_v1_EchoStreamRequest *req)
{
    lagoon_v1_EchoResponse msg = lagoon_v1_EchoResponse_init_zero;
    msg.payload.size = req->payload.size;
    memcpy(msg.payload.bytes, req->payload.bytes, req->payload.size);
    if (req->count == 0)
        return LAGOON_OK;
    echo_stream *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    st->call = call;
    st->left = req->count;
    st->msg = msg;
    st->interval.tv_sec = req->interval_ms / 1000;
    st->interval.tv_usec = (suseconds_t)(req->interval_ms % 1000) * 1000;
    st->timer = evtimer_new(rpc_call_base(call), echo_stream_tick, st);
    if (st->timer == NULL) {
        free(st);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    rpc_call_on_cancel(call, echo_stream_cancel, st);
    struct timeval now = {0, 0};
    evtimer_add(st->timer, req->interval_ms ? &st->interval : &now);
    return RPC_PENDING;
}

/* ---- EchoCollect and EchoChat --------------------------------------------------------------- */

int handle_Debug_EchoCollect(rpc_call *call, const lagoon_v1_EchoRequest *req,
                             lagoon_v1_EchoCollectResponse *resp)
{
    if (req == NULL)
        return LAGOON_OK; /* the client half-closed: resp holds the totals */
    if (req->fail_code)
        return echo_fail(call, req->fail_code);
    resp->count++;
    resp->total_bytes += req->payload.size;
    resp->last_payload.size = req->payload.size;
    memcpy(resp->last_payload.bytes, req->payload.bytes, req->payload.size);
    return RPC_CONTINUE;
}

int handle_Debug_EchoChat(rpc_call *call, const lagoon_v1_EchoRequest *req)
{
    if (req == NULL)
        return LAGOON_OK;
    if (req->fail_code)
        return echo_fail(call, req->fail_code);
    lagoon_v1_EchoResponse msg = lagoon_v1_EchoResponse_init_zero;
    msg.payload.size = req->payload.size;
    memcpy(msg.payload.bytes, req->payload.bytes, req->payload.size);
    rpc_call_send(call, &msg);
    return RPC_CONTINUE;
}
