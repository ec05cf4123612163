/* schema: the registry of Lagoon's tables. A feature declares its tables next to its code
 * (accounts.c, ...) and lists them here, once, so that the server and lagoon-admin (verify,
 * stats) see the same schema. */
#include "schema.h"

#include "accounts.h"
#include "events.h"
#include "messages.h"

/* The layout version stored in every database. */
#define APP_SCHEMA_VERSION 1

static const store_table *const app_tables[] = {
    &accounts_users, &accounts_sessions, &accounts_used_refresh, &accounts_tokens, &accounts_outbox,
    &messages_conversations, &messages_members, &messages_messages,
    &events_log, &events_feeds, &events_notifications,
};

static const store_schema app_schema_decl = {
    .tables = app_tables,
    .ntables = sizeof(app_tables) / sizeof(app_tables[0]),
    .version = APP_SCHEMA_VERSION,
    .migrate = NULL,
};

const store_schema *app_schema(void)
{
    return &app_schema_decl;
}
