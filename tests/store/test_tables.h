/* Test tables of the store suite: a small social schema with every index kind and both kinds
 * of foreign key (users <- videos <- comments, users/videos <- shares). */
#ifndef LAGOON_TEST_STORE_TABLES_H
#define LAGOON_TEST_STORE_TABLES_H

#include "lagoon_idl.h"
#include "store.h"

typedef lagoon_test_v1_TUser tuser;
typedef lagoon_test_v1_TVideo tvideo;
typedef lagoon_test_v1_TComment tcomment;
typedef lagoon_test_v1_TShare tshare;

extern const store_table t_users, t_videos, t_comments, t_shares;
/* Indexes, by position in their table's array. */
enum { USERS_BY_NAME, USERS_BY_EMAIL, USERS_BY_CREATED };
enum { VIDEOS_BY_OWNER };
enum { COMMENTS_BY_VIDEO, COMMENTS_BY_AUTHOR };
enum { SHARES_BY_VIDEO_USER, SHARES_BY_USER };

/* The schema at version `version` (1 normally). */
const store_schema *test_schema(void);
extern store_schema test_schema_v2; /* same tables, version 2, migrate hook settable */

#endif
