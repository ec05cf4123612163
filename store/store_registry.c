/* The registry of Lagoon's tables: every feature adds its table declarations here, once, so
 * that the server and lagoon-admin (verify, stats) see the same schema.
 *
 * To add a table: declare it as a `const store_table` next to the feature's code (with its
 * indexes and foreign keys), declare it `extern` in the feature's header, list it below, and
 * bump LAGOON_SCHEMA_VERSION if existing databases need a migration step (see store_schema).
 */
#include "store.h"

/* The application schema version, stored in every database (store_schema.version). */
#define LAGOON_SCHEMA_VERSION 1

/* No feature tables exist yet (users, videos, ... come in later issues). A zero-length array
 * is not C, so the list holds one NULL sentinel that ntables excludes. */
static const store_table *const lagoon_tables[] = {
    NULL,
};

static const store_schema lagoon_schema_decl = {
    .tables = lagoon_tables,
    .ntables = sizeof(lagoon_tables) / sizeof(lagoon_tables[0]) - 1,
    .version = LAGOON_SCHEMA_VERSION,
    .migrate = NULL,
};

const store_schema *lagoon_schema(void)
{
    return &lagoon_schema_decl;
}
