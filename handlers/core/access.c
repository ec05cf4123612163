/* access: app_check, the one evaluation of a service's access policy (access.h). */
#include "access.h"

#include "lagoon_idl.h" /* lagoon_v1_Role */

/* Which of the relations in `wanted` the caller holds: the cheap ones from the caller and
 * owner, the others through the policy's resolvers (only those still undecided). */
static int relations_held(store_txn *t, const rpc_caller *who, const app_policy *p, const void *resource,
                          uint64_t owner_id, uint32_t wanted, uint32_t *held, store_error *err)
{
    if ((wanted & APP_REL_OWNER) && who->user_id != 0 && who->user_id == owner_id)
        *held |= APP_REL_OWNER;
    if ((wanted & APP_REL_ADMIN) && who->role == lagoon_v1_Role_ADMIN)
        *held |= APP_REL_ADMIN;
    for (int bit = APP_REL_MEMBER_BIT; bit < APP_RELATIONS; bit++) {
        uint32_t rel = 1u << bit;
        if (!(wanted & rel) || p->resolve[bit] == NULL || (*held & wanted) != 0)
            continue;
        int holds = 0;
        int st = p->resolve[bit](t, who, resource, &holds, err);
        if (st != LAGOON_OK)
            return st;
        if (holds)
            *held |= rel;
    }
    return LAGOON_OK;
}

int app_check(store_txn *t, const rpc_caller *who, const app_policy *p, enum app_action action,
              const void *resource, uint64_t owner_id, store_error *err)
{
    uint32_t held = 0;
    int st = relations_held(t, who, p, resource, owner_id, p->grants[action], &held, err);
    if (st != LAGOON_OK)
        return st;
    if (held & p->grants[action])
        return LAGOON_OK;
    /* Refused: PERMISSION_DENIED to one who may see it, NOT_FOUND to anyone else. */
    if (action != APP_READ) {
        held = 0;
        st = relations_held(t, who, p, resource, owner_id, p->grants[APP_READ], &held, err);
        if (st != LAGOON_OK)
            return st;
        if (held & p->grants[APP_READ])
            return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "%s",
                              p->denied[action] ? p->denied[action] : "not allowed");
    }
    return store_fail(err, LAGOON_NOT_FOUND, NULL, "%s", p->not_found ? p->not_found : "not found");
}
