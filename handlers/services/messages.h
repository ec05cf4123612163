/* messages: the direct-message tables, for features that build on them. They are declared in
 * idl/lagoon/v1/messages.proto (conversations, conversation_members, direct_messages) and
 * generated into lagoon_tables.h: lagoon_table_conversations, lagoon_index_conversations_by_pair, ... */
#ifndef LAGOON_MESSAGES_H
#define LAGOON_MESSAGES_H

#include "app.h"
#include "lagoon_tables.h"

#endif
