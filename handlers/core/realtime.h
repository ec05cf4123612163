/* realtime: the router thread that delivers events to live subscriptions (Events/Subscribe).
 *
 * Part of the shared layer: app_open starts it after the store and app_close stops it before
 * the store closes, so app.c needs only these three declarations and nothing of the Events
 * service (events.h). The router itself is implemented in events.c, next to the event log it
 * reads. */
#ifndef LAGOON_REALTIME_H
#define LAGOON_REALTIME_H

#include "rpc.h"

typedef struct app app;
typedef struct realtime realtime;

/* Starts the router of app a (its store open). RPC_OK, or RPC_ERR with err filled. */
int realtime_start(app *a, realtime **out, rpc_error *err);
/* A subscription ends with UNAUTHENTICATED when its session ends (the Session row is deleted:
 * sign-out, revocation, password change or reset, deactivation, account deletion) and when the
 * access token it was opened with expires (checked every ROUTER_TICK_MS, see events.c). */
/* Ends every subscription with UNAVAILABLE ("reconnect"): for a draining server. Any thread. */
void realtime_shutdown_streams(realtime *rt);
void realtime_stop(realtime *rt);
/* Live subscriptions (Events/Subscribe streams) and the topic followings they hold, for
 * /metrics. Any thread; a relaxed snapshot. */
void realtime_counts(realtime *rt, unsigned *subscribers, unsigned *followings);
/* Bytes queued to the live subscriptions but not yet taken by the kernel (rpc_call_backlog):
 * their sum and the largest one (compare with app_config.subscriber_backlog, where a stream is
 * ended). Sampled by the router every ROUTER_TICK_MS (1 s) or so while it has subscribers, so
 * up to about 2 s old; 0 when there are none. Any thread. */
void realtime_backlog(realtime *rt, size_t *sum, size_t *max);

#endif
