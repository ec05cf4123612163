/* Test tables of the store suite: declared in idl/lagoon/test/v1/store_test.proto, generated into
 * lagoon_test_tables.h (lagoon_test_table_users, lagoon_test_index_users_by_name, ...): a small
 * social schema with every index kind and both kinds of foreign key (users <- videos <- comments,
 * users/videos <- shares). */
#ifndef LAGOON_TEST_STORE_TABLES_H
#define LAGOON_TEST_STORE_TABLES_H

#include "lagoon_idl.h"
#include "lagoon_test_tables.h"
#include "store.h"

typedef lagoon_test_v1_TUser tuser;
typedef lagoon_test_v1_TVideo tvideo;
typedef lagoon_test_v1_TComment tcomment;
typedef lagoon_test_v1_TShare tshare;

/* The schema at version `version` (1 normally). */
const store_schema *test_schema(void);
extern store_schema test_schema_v2; /* same tables, version 2, migrate hook settable */

#endif
