/* schema: Lagoon's tables, for the store, the server and lagoon-admin (verify, stats). The
 * tables are declared in idl/ (option (lagoon.v1.table) on each row message) and listed by the
 * generator in lagoon_tables[]; what stays here is the layout version and its migrations. */
#include "schema.h"

#include "lagoon_tables.h"

/* The layout version stored in every database. */
#define APP_SCHEMA_VERSION 1

static const store_schema app_schema_decl = {
    .tables = lagoon_tables,
    .ntables = LAGOON_TABLES_COUNT,
    .version = APP_SCHEMA_VERSION,
    .migrate = NULL,
};

const store_schema *app_schema(void)
{
    return &app_schema_decl;
}
