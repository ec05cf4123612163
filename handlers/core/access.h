/* access: who may do what to a resource, as data.
 *
 * The RPC layer only checks a method's access level against rpc_caller.grants (app_grants in
 * app.c says who holds which level). What a caller may do to one resource — this message,
 * that notification, a group's video — is decided here, by one function over relations:
 *
 *   APP_REL_OWNER    the caller owns it (resource owner id == caller)
 *   APP_REL_ADMIN    the caller is an administrator
 *   APP_REL_MEMBER   the caller is a member of what holds it (a group, a conversation, a party)
 *   APP_REL_SHARED   it was shared with the caller (a message's recipient, a shared video)
 *   APP_REL_TEACHER  the caller teaches its owner
 *
 * A service declares a policy — which relations grant which action — and, for the relations
 * that need data, a resolver that looks them up in the caller's transaction:
 *
 *     static const app_policy message_policy = {
 *         .grants = {[APP_READ] = APP_REL_OWNER | APP_REL_SHARED, [APP_CHANGE] = APP_REL_OWNER},
 *         .resolve = {[APP_REL_SHARED_BIT] = message_is_to_caller},
 *     };
 *     st = app_check(t, &in->who, &message_policy, APP_CHANGE, &m, m.sender_id, err);
 *
 * Outcomes: granted → LAGOON_OK; not granted but the caller may read it → PERMISSION_DENIED;
 * neither → NOT_FOUND, so that a resource's existence does not leak to those who may not see it.
 * Resolvers run only when a cheaper relation has not already decided, and only for relations the
 * policy names for the action (or for reading, to choose between the two refusals). */
#ifndef LAGOON_ACCESS_H
#define LAGOON_ACCESS_H

#include <stdint.h>

#include "rpc.h"
#include "store.h"

enum app_relation_bit {
    APP_REL_OWNER_BIT = 0,
    APP_REL_ADMIN_BIT,
    APP_REL_MEMBER_BIT,
    APP_REL_SHARED_BIT,
    APP_REL_TEACHER_BIT,
    APP_RELATIONS
};
#define APP_REL_OWNER (1u << APP_REL_OWNER_BIT)
#define APP_REL_ADMIN (1u << APP_REL_ADMIN_BIT)
#define APP_REL_MEMBER (1u << APP_REL_MEMBER_BIT)
#define APP_REL_SHARED (1u << APP_REL_SHARED_BIT)
#define APP_REL_TEACHER (1u << APP_REL_TEACHER_BIT)

enum app_action {
    APP_READ = 0, /* see it */
    APP_CHANGE,   /* edit, delete, mark */
    APP_ACTIONS
};

/* Does the caller hold the relation to resource? Sets *holds (0/1); returns a status (a read
 * that failed). Runs inside the caller's transaction t (read or write). */
typedef int (*app_relation_fn)(store_txn *t, const rpc_caller *who, const void *resource, int *holds,
                               store_error *err);

typedef struct app_policy {
    uint32_t grants[APP_ACTIONS];            /* APP_REL_* that grant each action */
    app_relation_fn resolve[APP_RELATIONS];  /* for MEMBER, SHARED, TEACHER: NULL = never held */
    const char *not_found;                   /* the NOT_FOUND message: "no such message" */
    const char *denied[APP_ACTIONS];         /* the PERMISSION_DENIED message of each action */
} app_policy;

/* May `who` do `action` to resource (owned by owner_id; 0 = nobody's)? See above for the
 * outcomes; a refusal fills err with the policy's message (store_fail), so that a write
 * function or a read can return it as it is. */
int app_check(store_txn *t, const rpc_caller *who, const app_policy *p, enum app_action action,
              const void *resource, uint64_t owner_id, store_error *err);

#endif
