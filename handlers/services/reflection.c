/* Reflection service: every method the server routes, for tools and outside clients. */
#include "lagoon_handlers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_encode.h>

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

/* Writes the generated schema as the field (a callback field: see reflection.options). */
static bool encode_schema(pb_ostream_t *stream, const pb_field_t *field, void *const *arg)
{
    (void)arg;
    return pb_encode_tag_for_field(stream, field) && pb_encode_string(stream, lagoon_schema, lagoon_schema_size);
}

int handle_Reflection_GetSchema(rpc_call *call, const lagoon_v1_GetSchemaRequest *req,
                                lagoon_v1_GetSchemaResponse *resp)
{
    (void)call;
    (void)req;
    /* The schema is encoded straight from the generated array (no copy); its size is checked
     * against the field's max_size when it is generated. Both members are set: the response
     * struct may come from a reused block, and nothing else initialises a callback. */
    resp->file_descriptor_set.funcs.encode = encode_schema;
    resp->file_descriptor_set.arg = NULL;
    return LAGOON_OK;
}
