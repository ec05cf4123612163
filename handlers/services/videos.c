/* Videos service: placeholder handlers until the service is written (every method answers
 * UNIMPLEMENTED). */
#include "lagoon_handlers.h"
#include "videos.h"

int videos_public_key(const void *row, store_key *k)
{
    const lagoon_v1_Video *v = row;
    if (!v->is_public)
        return 0;
    store_key_i64(k, v->created_at);
    return 1;
}

int videos_readable(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, lagoon_v1_Video *v,
                    int *owner, store_error *err)
{
    (void)t;
    (void)who;
    (void)id;
    (void)v;
    (void)owner;
    return store_fail(err, LAGOON_NOT_FOUND, field, "no such video");
}

const app_module videos_module = {.name = "videos"};


int handle_Videos_Create(rpc_call *call, const lagoon_v1_CreateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Get(rpc_call *call, const lagoon_v1_GetVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Update(rpc_call *call, const lagoon_v1_UpdateVideoRequest *req, lagoon_v1_Video *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Delete(rpc_call *call, const lagoon_v1_DeleteVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListMine(rpc_call *call, const lagoon_v1_ListMyVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListByUser(rpc_call *call, const lagoon_v1_ListUserVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListSharedWithMe(rpc_call *call, const lagoon_v1_ListSharedWithMeRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListPublic(rpc_call *call, const lagoon_v1_ListPublicVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Search(rpc_call *call, const lagoon_v1_SearchVideosRequest *req, lagoon_v1_ListVideosResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Share(rpc_call *call, const lagoon_v1_ShareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_Unshare(rpc_call *call, const lagoon_v1_UnshareVideoRequest *req, lagoon_v1_VideosEmpty *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_ListShares(rpc_call *call, const lagoon_v1_ListVideoSharesRequest *req, lagoon_v1_ListVideoSharesResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}

int handle_Videos_RecordView(rpc_call *call, const lagoon_v1_RecordViewRequest *req, lagoon_v1_RecordViewResponse *resp)
{
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not yet");
}
