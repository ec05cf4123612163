/* Health service: is the server up, and how busy. */
#include "lagoon_handlers.h"

#include <stdio.h>

int handle_Health_Check(rpc_call *call, const lagoon_v1_HealthCheckRequest *req,
                        lagoon_v1_HealthCheckResponse *resp)
{
    (void)req;
    const rpc_server *s = rpc_call_server(call);
    resp->status = rpc_server_draining(s) ? lagoon_v1_HealthCheckResponse_ServingStatus_DRAINING
                                          : lagoon_v1_HealthCheckResponse_ServingStatus_SERVING;
    snprintf(resp->version, sizeof(resp->version), "%s", rpc_server_version(s));
    resp->uptime_ms = rpc_server_uptime_ms(s);
    resp->connections = rpc_server_connections(s);
    resp->active_calls = rpc_server_active_calls(s);
    return LAGOON_OK;
}
