/* Reflection service: every method the server routes, for tools and outside clients. */
#include "lagoon_handlers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int handle_Reflection_ListMethods(rpc_call *call, const lagoon_v1_ListMethodsRequest *req,
                                  lagoon_v1_ListMethodsResponse *resp)
{
    (void)req;
    size_t n;
    const rpc_route *routes = rpc_server_routes(rpc_call_server(call), &n);
    if (n == 0)
        return LAGOON_OK;
    /* A pointer field: the RPC layer frees it with pb_release after encoding. */
    resp->methods = calloc(n, sizeof(*resp->methods));
    if (resp->methods == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const wire_method *m = routes[i].method;
        lagoon_v1_MethodInfo *out = &resp->methods[i];
        snprintf(out->path, sizeof(out->path), "%s", m->path);
        out->id = m->id;
        snprintf(out->request_type, sizeof(out->request_type), "%s", m->request_type);
        snprintf(out->response_type, sizeof(out->response_type), "%s", m->response_type);
        out->kind = (lagoon_v1_MethodInfo_Kind)m->kind;
        out->access = (lagoon_v1_Access)m->access;
        out->idempotent = m->idempotent != 0;
    }
    resp->methods_count = (pb_size_t)n;
    return LAGOON_OK;
}

int handle_Reflection_GetSchema(rpc_call *call, const lagoon_v1_GetSchemaRequest *req,
                                lagoon_v1_GetSchemaResponse *resp)
{
    (void)req;
    /* A pointer field, freed with the response (pb_release): a copy of the generated schema,
     * whose size the build checks against the field's max_size. */
    resp->file_descriptor_set = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(lagoon_schema_size));
    if (resp->file_descriptor_set == NULL)
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    resp->file_descriptor_set->size = (pb_size_t)lagoon_schema_size;
    memcpy(resp->file_descriptor_set->bytes, lagoon_schema, lagoon_schema_size);
    return LAGOON_OK;
}
