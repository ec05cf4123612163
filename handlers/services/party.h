/* party: watch parties (idl/lagoon/v1/party.proto: the tables parties, party_items,
 * party_members; the Party service). A party belongs to a group; its members watch the same item
 * at the same moment over one bidirectional Party/Join stream each.
 *
 * While a party has members on the server its state lives in this module (one lock for all
 * parties); every change is applied there in arrival order, given the next version, stored
 * (the whole PartyState row, and the member's row when a member changed) and, once durable,
 * sent to every member's stream in version order (nothing is sent before it is durable: a change
 * that cannot be stored ends the party's streams with UNAVAILABLE, and the party is read back as
 * stored at the next Join). A party no one is connected to leaves memory
 * once its last change is stored, and is read back from the store at the next Join, so a
 * restart loses nothing but the position reports. */
#ifndef LAGOON_PARTY_H
#define LAGOON_PARTY_H

#include <stdint.h>

#include "app.h"
#include "lagoon_tables.h"

/* Items in a party's queue (StartPartyRequest.items' max_count in party.options). */
#define PARTY_QUEUE_MAX 250
/* Members of one party (a Join beyond it: RESOURCE_EXHAUSTED). Each change is one send per
 * present member from the writer thread: the bench measures 1 000. */
#define PARTY_MEMBERS_MAX 1000
/* Parties running at once in one group (Start beyond it: RESOURCE_EXHAUSTED). One is the usual
 * case; a few let a large group split into rooms. */
#define PARTY_GROUP_PARTIES_MAX 3
/* Members a restricted party's starter may give control to (the .options max_count). */
#define PARTY_CONTROLLERS_MAX 16
/* An item's title, in characters; its duration at most 24 h. */
#define PARTY_TITLE_MAX_CHARS 200
#define PARTY_ITEM_DURATION_MAX_MS 86400000u

/* Commands per member: a bucket of PARTY_COMMANDS_BURST refilled at PARTY_COMMANDS_PER_SECOND
 * (pings count; position reports have their own interval). Beyond: a RESOURCE_EXHAUSTED refusal
 * with retry_after_ms, and the stream stays open. A person presses a few buttons a second; a
 * client's clock exchange at join is 8 pings. */
#define PARTY_COMMANDS_PER_SECOND 10
#define PARTY_COMMANDS_BURST 20
/* Position reports at most one per this interval per member (closer ones: RESOURCE_EXHAUSTED):
 * drift of less than the rate threshold in half a second is corrected in time. */
#define PARTY_REPORT_INTERVAL_MS 500
/* A report older than this (measured_at against the server's clock) is not used for drift. */
#define PARTY_REPORT_MAX_AGE_MS 10000

/* The playback rate. */
#define PARTY_RATE_MIN 0.25
#define PARTY_RATE_MAX 4.0

/* A start (play, a seek or an item change while playing) is scheduled this far ahead of the
 * server's clock: the largest round trip a present member reported (PartyPing.rtt_ms, at most
 * PARTY_RTT_MAX_MS) plus PARTY_START_MARGIN_MS, and never less than PARTY_START_LEAD_MIN_MS,
 * so that every member hears of it before it happens and all start on the same frame. */
#define PARTY_START_LEAD_MIN_MS 300
#define PARTY_START_MARGIN_MS 100
#define PARTY_RTT_MAX_MS 5000

/* Drift correction defaults (party settings, PartySettings): beyond seek_threshold_ms a member
 * is told to seek; beyond rate_threshold_ms (up to the seek threshold) to play at a nudged rate
 * for PARTY_RATE_CORRECTION_MS. The numbers are Jellyfin SyncPlay's (MaxAcceptedDelaySkipToSync
 * 400 ms, MaxAcceptedDelaySpeedToSync 60 ms, SpeedToSyncTime 1000 ms); Syncplay's own are
 * coarser (it rewinds past seconds) and its slowdown is a fixed 0.95. */
#define PARTY_SEEK_THRESHOLD_DEFAULT_MS 400
#define PARTY_RATE_THRESHOLD_DEFAULT_MS 60
#define PARTY_THRESHOLD_MIN_MS 10
#define PARTY_THRESHOLD_MAX_MS 10000
#define PARTY_RATE_CORRECTION_MS 1000

/* A party with no member present ends once this long has passed: room for a reconnect, a
 * restart, a page reload. Its durable grace job (scheduler.h, JobKind PARTY_GRACE) ends it within
 * a scheduler poll of that time; a Join of it, a Start in its group, Get and the chat's stamp
 * treat it as ended from that time on already. After a restart the period starts again for a
 * party whose members were connected when the server stopped. */
#define PARTY_GRACE_MS 60000

/* The media position of state s at server time t (ms): position_ms, advanced by rate per ms
 * after position_at while playing. Pure: clients compute the same (docs/API.md). */
int64_t party_position_at(const lagoon_v1_PartyState *s, int64_t t);

/* For a message sent at server time now in group group_id (inside the sender's transaction t):
 * the party running in the group (the newest, when several) and its position then, so that a
 * chat message can read "at 2:31". *party_id = 0 and *position_ms = 0 when none runs (also a
 * party whose grace period has passed). LAGOON_OK, or a store error. */
int party_position_now(store_txn *t, uint64_t group_id, int64_t now, uint64_t *party_id, int64_t *position_ms,
                       store_error *err);

/* The module: the live parties, their member streams, the per-member budgets. */
extern const app_module party_module;

#endif
