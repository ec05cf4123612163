/* The test schema over the generated tables, and the one hand-written key function they use. */
#include "test_tables.h"

#include <string.h>

/* users.by_domain: the email's domain, case-folded; no entry without an '@'. A key that is not
 * a concatenation of fields, so it is declared with key_fn in store_test.proto. */
int test_user_email_domain(const void *row, store_key *k)
{
    const char *at = strchr(((const tuser *)row)->email, '@');
    if (at == NULL)
        return 0;
    store_key_str_fold(k, at + 1);
    return 1;
}

static const store_schema schema_v1 = {lagoon_test_tables, LAGOON_TEST_TABLES_COUNT, 1, NULL, NULL};
store_schema test_schema_v2 = {lagoon_test_tables, LAGOON_TEST_TABLES_COUNT, 2, NULL, NULL};

const store_schema *test_schema(void)
{
    return &schema_v1;
}
