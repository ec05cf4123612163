/* See bench_seed.h. */
#include "bench_seed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"

void bench_session_tokens(lagoon_v1_Session *s, char token[ACCOUNT_TOKEN_CHARS + 1])
{
    uint8_t refresh_hash[ACCOUNT_HASH_BYTES];
    char refresh[ACCOUNT_TOKEN_CHARS + 1];
    account_token_new(token, s->access_hash);
    account_token_new(refresh, refresh_hash);
    memcpy(s->refresh_hash, refresh_hash, sizeof(refresh_hash));
    s->access_expires_at = s->refresh_expires_at = INT64_MAX / 2;
}

int bench_seed_user(store_txn *t, const char *username, const char *email, lagoon_v1_Role role,
                    lagoon_v1_Session *s, uint64_t *id, store_error *err)
{
    lagoon_v1_User u = lagoon_v1_User_init_zero;
    snprintf(u.password_hash, sizeof(u.password_hash), "unused");
    snprintf(u.email, sizeof(u.email), "%s", email);
    snprintf(u.username, sizeof(u.username), "%s", username);
    u.role = role;
    u.active = u.verified = true;
    int st = store_insert(t, &lagoon_table_users, &u, id, err);
    s->user_id = *id;
    return st == LAGOON_OK ? store_insert(t, &lagoon_table_sessions, s, NULL, err) : st;
}

int bench_seed_group(store_txn *t, void *arg, store_error *err)
{
    bench_group_seed *sd = arg;
    for (int i = 0; i < sd->n; i++) {
        char email[64], name[32];
        snprintf(email, sizeof(email), "%s%d@bench.invalid", sd->prefix, i);
        snprintf(name, sizeof(name), "%s%d", sd->prefix, i);
        lagoon_v1_Session s = lagoon_v1_Session_init_zero;
        bench_session_tokens(&s, sd->tokens[i]); /* replays regenerate them: read after the commit */
        s.verified = true;
        int st = bench_seed_user(t, name, email, lagoon_v1_Role_STUDENT, &s, &sd->ids[i], err);
        if (st != LAGOON_OK)
            return st;
    }
    lagoon_v1_Group *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    g->owner_id = sd->ids[0];
    snprintf(g->name, sizeof(g->name), "bench group of %d", sd->n);
    g->visibility = lagoon_v1_Group_Visibility_PUBLIC;
    g->member_count = (uint32_t)sd->n;
    g->created_at = g->last_activity_at = 1;
    int st = store_insert(t, &lagoon_table_groups, g, &sd->group, err);
    free(g);
    lagoon_v1_Topic tp = {lagoon_v1_Topic_Kind_GROUP, sd->group};
    for (int i = 0; i < sd->n && st == LAGOON_OK; i++) {
        lagoon_v1_GroupMember m = lagoon_v1_GroupMember_init_zero;
        m.group_id = sd->group;
        m.user_id = sd->ids[i];
        m.role = i == 0 ? lagoon_v1_GroupMember_Role_OWNER : lagoon_v1_GroupMember_Role_MEMBER;
        m.state = lagoon_v1_GroupMember_State_ACTIVE;
        m.joined_at = 1;
        st = store_insert(t, &lagoon_table_group_members, &m, NULL, err);
        if (st == LAGOON_OK)
            st = events_topic_join(t, sd->a, sd->ids[i], &tp, err);
    }
    return st;
}
