/* media: processing uploaded media (media.h). Placeholder until the queue and workers land:
 * everything refuses, so nothing is queued that would never run. */
#include "media.h"

#include <stdio.h>

int media_probe(const app *a, const char *path, media_probe_info *info, rpc_error *err)
{
    (void)a;
    (void)path;
    *info = (media_probe_info){0};
    snprintf(err->message, sizeof(err->message), "media processing is not built yet");
    return RPC_ERR;
}

int media_enqueue(store_txn *t, const app *a, int64_t now, enum media_job_kind kind, uint64_t user_id,
                  uint64_t subject_id, store_error *err)
{
    (void)t, (void)a, (void)now, (void)kind, (void)user_id, (void)subject_id;
    return store_fail(err, LAGOON_UNIMPLEMENTED, NULL, "media processing is not built yet");
}

void media_kick(const app *a)
{
    (void)a;
}

const app_module media_module = {.name = "media"};
