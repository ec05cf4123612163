/* groups: the Groups service's tables (idl/lagoon/v1/groups.proto: groups, group_members,
 * generated into lagoon_tables.h) and what services that hang off a group (its chat, later)
 * need of it. A group's ACTIVE members are the members of its topic (Topic.GROUP, the group's
 * id), so a service publishes to the group with events_topic_publish and every member's live
 * subscription receives it. */
#ifndef LAGOON_GROUPS_H
#define LAGOON_GROUPS_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Groups one user may own (Create refuses more: RESOURCE_EXHAUSTED). */
#define GROUPS_OWNED_MAX 100
/* ACTIVE members of one group, the owner included (a join, approval or accepted invitation
 * beyond it is RESOURCE_EXHAUSTED). */
#define GROUPS_MEMBERS_MAX 10000

/* Pending join requests (REQUESTED rows) one private group may hold: each notifies its admins
 * and waits in their list, so an unbounded number would let strangers flood them. Past it,
 * Join is RESOURCE_EXHAUSTED until admins decide some. */
#define GROUPS_PENDING_REQUESTS_MAX 200
/* Pending invitations (INVITED rows) one group may hold, and one user may hold from all groups
 * together: an invitation notifies its invitee and shows the group, so neither a group's admins
 * nor many groups may bury a user (or the group's lists) in them. Invite is RESOURCE_EXHAUSTED
 * past either. */
#define GROUPS_PENDING_INVITATIONS_MAX 200
#define GROUPS_USER_INVITATIONS_MAX 50
/* Pending join requests of one user, to all private groups together (Join RESOURCE_EXHAUSTED
 * past it): a requester cannot reach the admins of hundreds of groups at once. */
#define GROUPS_USER_REQUESTS_MAX 50
/* Join and Invite calls per user per hour that store something (the budget of
 * app_config.group_requests when left 0): every one may notify other users. */
#define GROUPS_REQUESTS_PER_HOUR 60

/* The Groups module: the per-user Join/Invite limiter. */
extern const app_module groups_module;

/* The key of the public_by_time index (groups.proto): public groups only. */
int groups_public_time_key(const void *row, store_key *k);
/* The key of the public_by_name index: public groups only, by ASCII-lower-cased name. */
int groups_public_name_key(const void *row, store_key *k);

/* Reads the caller's ACTIVE membership of group id into *m (may be NULL) in t: LAGOON_OK, or
 * NOT_FOUND (no such group, or not an active member) naming field. */
int groups_active_member(store_txn *t, const rpc_caller *who, uint64_t id, const char *field, lagoon_v1_GroupMember *m,
                         store_error *err);

/* Call in the transaction that deletes account user_id (in: that write's), before the delete:
 * its memberships go by the account's cascade, so each is counted out of its group and the
 * other members of the groups it owns (which go with it) leave their topics. */
int groups_user_deleting(store_txn *t, const app_write_in *in, uint64_t user_id, store_error *err);

#endif
