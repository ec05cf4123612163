/* chat_content: what direct messages (Messages) and group messages (GroupChat) share, kept in
 * one place so that both follow the same rules: the content of a message (text, image or
 * video: TextContent, ImageContent and VideoContent of messages.proto, each a member of a
 * oneof whose tags differ per message type), the snippet a notification shows, the edit rule
 * (window and count), Send's retry handling and per-user budget, and List's paging (cursor
 * pages, numbered pages with an anchor, `since` catch-up) over an index of messages by
 * (conversation or group, id).
 *
 * A service-level module (it knows messages.proto's content types); core stays without it. */
#ifndef LAGOON_CHAT_CONTENT_H
#define LAGOON_CHAT_CONTENT_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "lagoon_idl.h"
#include "paging.h"

/* How long after it was sent a text message may be edited by its sender. */
#define CHAT_EDIT_WINDOW_MS (15 * 60 * 1000)
/* Edits per message. Bounds what a Delete undoes (a direct message's edits each log the
 * recipient's notification again: DirectMessage.recipient_event_seqs in messages.options is
 * sized from it). */
#define CHAT_EDITS_MAX 10
/* Bytes of a text message shown in its notification (cut on a UTF-8 boundary, then "..."). */
#define CHAT_SNIPPET_MAX 100

/* The tags of one message type's content oneof (its text, image and video members). */
typedef struct chat_tags {
    pb_size_t text, image, video;
} chat_tags;

/* Copies the content src (the oneof union of a message with tags st, member which) into dst (of
 * a message with tags dt), setting *dst_which: strings by their length, never whole buffers
 * (a text is 16 KB of buffer for a few bytes). which 0 copies nothing and sets 0. */
void chat_content_copy(pb_size_t *dst_which, void *dst, const chat_tags *dt, pb_size_t which, const void *src,
                       const chat_tags *st);

/* What a notification shows of content (union src, member which, tags st): its text cut to
 * CHAT_SNIPPET_MAX bytes on a character boundary ("..." when cut), or "[image]" / "[video]". */
void chat_snippet(pb_size_t which, const void *src, const chat_tags *st, char *out, size_t cap);

/* Whether a message of content which (tags st), sent at created_at and edited edit_count times,
 * may be edited now: LAGOON_OK, or FAILED_PRECONDITION with the reason (not text, past the
 * window, too many edits). */
int chat_edit_check(pb_size_t which, const chat_tags *st, int64_t created_at, uint32_t edit_count, int64_t now,
                    store_error *err);

/* ---- mentions -------------------------------------------------------------------------------- */

/* The longest username (account_username_problem: 3 to 50 of [A-Za-z0-9_.-]). */
#define CHAT_USERNAME_MAX 50

/* The distinct @usernames of text (ASCII case ignored), in order of appearance, at most max of
 * them, into names; returns how many. A mention is an '@' not preceded by a name character (so
 * "ann@example.com" is none) followed by 3 to CHAT_USERNAME_MAX name characters, trailing '.'
 * and '-' left out (the end of a sentence). */
size_t chat_mentions(const char *text, char (*names)[CHAT_USERNAME_MAX + 1], size_t max);

/* ---- Send: retries and the per-user budget ---------------------------------------------------- */

/* A Send's write arguments (app_write_args; a service's own may follow in a larger struct that
 * starts with this one). */
typedef struct chat_send_args {
    limiter *budget;               /* the sender's Sends, per user */
    char limit_key[40];            /* the sender's key there */
    int64_t taken_at;              /* when the Send was counted (given back if refused) */
    const char *client_message_id; /* the request's, else the call's idempotency key (the call's) */
} chat_send_args;

/* The id a Send is deduplicated by: the request's client_message_id, else the call's
 * idempotency key, which is stored as the message's client_message_id: more than cap - 1
 * bytes is a violation on "idempotency_key" (what names the method). */
const char *chat_send_id(rpc_call *call, const char *client_message_id, size_t cap, const char *method);

/* The message sender stored with client id cid, by table tab's unique index ix on (sender_id,
 * client_message_id), into row: LAGOON_OK, NOT_FOUND, or a store error. */
int chat_stored_send(store_txn *t, const store_table *tab, const store_index *ix, uint64_t sender, const char *cid,
                     void *row, store_error *err);

/* A retry of a Send that was stored, answered from the store (no write, no budget):
 * chat_stored_send in a read transaction of its own, into resp. LAGOON_OK, NOT_FOUND (not a
 * retry: go on), or the call's error. */
int chat_answer_retry(rpc_call *call, const store_table *tab, const store_index *ix, const char *cid, void *resp);

/* Counts the Send in budget (key "<prefix>:<user id>") and submits fn with sa (the call's
 * app_write_args, sa->client_message_id set): spent, RESOURCE_EXHAUSTED "too many messages"
 * with retry-after. A Send that stores nothing (refused, failed, not queued) is given back. */
int chat_send_call(rpc_call *call, app_write_fn fn, chat_send_args *sa, limiter *budget, const char *prefix);

/* ---- List: cursor pages, numbered pages, catch-up -------------------------------------------- */

/* The paging fields of a list of messages (ListMessagesRequest, ListGroupMessagesRequest). */
typedef struct chat_page_req {
    uint32_t page_size; /* cursor pages */
    const char *page_token;
    uint32_t page;      /* numbered pages, from 1, per_page each, counted down from anchor */
    uint32_t per_page;
    uint64_t anchor;
    uint64_t since;     /* catch-up: the messages after this id, oldest first */
} chat_page_req;

/* Sets l's paging from r and checks it, the violations joining the call's others (size over the
 * cap, since with page, anchor without page): the caller sets l->resp, items_tag, item and
 * item_size first, and reads rpc_call_violations after. */
void chat_list_check(rpc_call *call, const chat_page_req *r, paging_list *l);

/* Reads the page in t: l->query names the table and its index of messages by (parent, id),
 * prefix the parent's key (kept alive by the caller). Newest first; with since, the messages
 * after it oldest first; numbered pages count down from the anchor (*anchor: the request's,
 * else the newest message's, so that later pages do not shift). */
int chat_list_scan(store_txn *t, paging_list *l, const store_key *prefix, const chat_page_req *r, uint64_t *anchor,
                   store_error *err);

/* The newest row id under prefix of index ix of tab (0 if none). */
int chat_newest(store_txn *t, const store_table *tab, const store_index *ix, const store_key *prefix, uint64_t *id,
                store_error *err);

#endif
