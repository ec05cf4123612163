/* messages: the direct-message tables, for the schema and for features that build on them. */
#ifndef LAGOON_MESSAGES_H
#define LAGOON_MESSAGES_H

#include "app.h"

extern const store_table messages_conversations, messages_members, messages_messages;
extern const store_index *const conversations_by_pair, *const members_by_conv_user,
    *const members_by_activity, *const messages_by_conversation, *const messages_by_client_id;

#endif
