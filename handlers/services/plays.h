/* plays: the Plays service's tables (idl/lagoon/v1/plays.proto: plays, play_batches,
 * play_positions, play_stats, generated into lagoon_tables.h) and its module: the per-user
 * limiter of interactions (APP_SETTINGS plays-per-minute). Nothing else of it is public: other
 * services reach plays only through their cascades (a deleted user or video takes its rows). */
#ifndef LAGOON_PLAYS_H
#define LAGOON_PLAYS_H

#include "app.h"
#include "lagoon_tables.h"

extern const app_module plays_module;

#endif
