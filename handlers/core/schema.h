/* schema: every table of the application, for the store, the server and lagoon-admin. */
#ifndef LAGOON_SCHEMA_H
#define LAGOON_SCHEMA_H

#include "store.h"

/* Static; every table declared in idl/ (lagoon_tables[]). Bump APP_SCHEMA_VERSION (schema.c)
 * when existing databases need a migration step. */
const store_schema *app_schema(void);

#endif
