/* users: the Users service's module (its state: the Users/Search limiter). The users table is
 * accounts' (accounts.h). */
#ifndef LAGOON_USERS_H
#define LAGOON_USERS_H

#include "app.h"

extern const app_module users_module;

#endif
