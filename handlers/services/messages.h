/* messages: the direct-message tables, for features that build on them. They are declared in
 * idl/lagoon/v1/messages.proto (conversations, conversation_members, direct_messages) and
 * generated into lagoon_tables.h: lagoon_table_conversations, lagoon_index_conversations_by_pair, ... */
#ifndef LAGOON_MESSAGES_H
#define LAGOON_MESSAGES_H

#include "app.h"
#include "lagoon_tables.h"

/* The Messages module: its state is the per-user Send limiter (app_config.sends). */
extern const app_module messages_module;

#endif
