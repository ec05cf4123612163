/* signalling: the Signalling service (idl/lagoon/v1/signalling.proto): Connect, a bidirectional
 * stream per person in a live call that relays WebRTC signalling between the people of the call
 * (a room per chat, in memory: nothing of it is stored, so a restart ends every call's streams
 * and clients join again), and GetIceServers.
 *
 * Limits. A message past the rate is answered with a SignalError event and the stream stays
 * open; one longer than a length bound does not decode and ends the stream INVALID_ARGUMENT. */
#ifndef LAGOON_SIGNALLING_H
#define LAGOON_SIGNALLING_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"

/* An SDP offer or answer, and one ICE candidate, in bytes: the .options bounds (a longer one
 * does not decode, and the call ends with INVALID_ARGUMENT). Real SDPs of a few tracks are 2-8
 * KiB; candidates about 100 bytes. */
#define SIGNALLING_SDP_MAX 16384
#define SIGNALLING_CANDIDATE_MAX 1024
/* A candidate's sdp_mid (a media section's tag, "0" or "audio" in practice). */
#define SIGNALLING_SDP_MID_MAX 64
/* Messages one person may send per window (offers, answers, candidates, mute changes): trickle
 * ICE sends a few dozen candidates at the start of a call, so 100 per second leaves room for it
 * with several peers while bounding what one stream makes the server relay (up to
 * SIGNALLING_ROOM_MAX copies each). Past it: SignalError RESOURCE_EXHAUSTED with retry_after_ms,
 * the message dropped, the stream open. On the app's clock. */
#define SIGNALLING_RATE_MAX 100
#define SIGNALLING_RATE_WINDOW_MS 1000
/* People in one call (SignalPresence.members' max_count): a group's video chat is at most
 * VIDEOCHATS_GROUP_MEMBERS_MAX, a professional chat's capacity at most PROFCHATS_CAPACITY_MAX. */
#define SIGNALLING_ROOM_MAX 256
/* Streams open at once on the server, every call together: each is a few hundred bytes of
 * state, and the relay's fan-out is bounded by the room. Beyond: RESOURCE_EXHAUSTED. */
#define SIGNALLING_MEMBERS_MAX 20000
/* A person whose connection has this many bytes not yet sent (a reader that cannot keep up)
 * is dropped from the call: its stream ends with RESOURCE_EXHAUSTED and the others see it leave. */
#define SIGNALLING_BACKLOG_MAX (4u << 20)

extern const app_module signalling_module;

/* The chat (kind, chat_id) has ended: every stream of its call ends with OK, the others seeing
 * each leave. Any thread but inside the module's own callbacks (End's after hook). */
void signalling_call_ended(app *a, lagoon_v1_CallKind kind, uint64_t chat_id);

/* user_id is no longer in the chat (kind, chat_id) (an attendee who unregistered from a live
 * session): its stream of the call, if any, ends with status and why, the others seeing it
 * leave. Any thread but inside the module's own callbacks (a write's after hook). A change that
 * calls nothing here is still seen at the person's next message, which checks the right again. */
void signalling_user_removed(app *a, lagoon_v1_CallKind kind, uint64_t chat_id, uint64_t user_id, int status,
                             const char *why);

/* coturn's use-auth-secret credential for user_id, valid until expires_s (seconds since the
 * epoch): username "<expires_s>:<user_id>" into username (cap bytes) and
 * base64(HMAC-SHA1(secret, username)) into password (cap bytes; 29 with the NUL). 0, or -1
 * when a buffer is too small or the HMAC fails. */
int signalling_turn_credential(const char *secret, int64_t expires_s, uint64_t user_id, char *username, size_t ucap,
                               char *password, size_t pcap);

#endif
