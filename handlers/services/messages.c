/* Messages service: direct messages between two users.
 *
 * Storage. A conversation is one row per pair of users (unique on the ordered pair), with one
 * member row per participant carrying that participant's view: last activity (indexed, for
 * ListConversations newest first), the last message, the read position and the unread count.
 * Each message is stored once, indexed by (conversation, id): a page costs the same in a
 * conversation of ten messages or ten million. Message ids come from the table's sequence, so
 * they grow monotonically within every conversation (realtime resumes from them). A Send
 * writes the message and both member rows in one transaction. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "chat_content.h"
#include "events.h"
#include "lagoon_handlers.h"
#include "messages.h"
#include "paging.h"

/* The edit window, the edit cap and the snippet are chat_content's (CHAT_EDIT_WINDOW_MS,
 * CHAT_EDITS_MAX, CHAT_SNIPPET_MAX), shared with group messages. An edit logs the recipient's
 * notification again when it shows the message (its snippet: message events are references,
 * publish_message), and Delete rewrites each of those events on the single writer: the edit cap
 * bounds that work (and the row's list of them, recipient_event_seqs in messages.options). */
/* MarkRead looks at no more than this many messages on each side of the new read position, so
 * that one call costs the single writer well under a millisecond whatever the conversation's
 * length (the unread count is kept up to date by Send and Delete, never recounted). */
#define MESSAGES_READ_SCAN_MAX 200
/* A conversation from before ConversationMember.other_wrote has it false for both members. An
 * unverified sender's first Send there looks for a message from the other user among this many
 * of the oldest and this many of the newest messages (the first one is its creator's), and
 * records other_wrote when it finds one: cheap, once per member, and it errs on refusing. */
#define MESSAGES_WROTE_SCAN 20

/* ---- the module: the Send limiter ------------------------------------------------------------- */

static int messages_start(app *a, void **state, rpc_error *err)
{
    *state = limiter_new(&a->cfg.sends, a->cfg.limiter_keys);
    if (*state == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return RPC_ERR;
    }
    return RPC_OK;
}

static void messages_stop(app *a, void *state)
{
    (void)a;
    limiter_free(state);
}

static int messages_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                               store_error *err);

const app_module messages_module = {
    .name = "messages",
    .start = messages_start,
    .stop = messages_stop,
    .fill_event = messages_fill_event, /* message events are logged as references */
};

/* Sends per user that store a message (APP_SETTINGS sends-per-minute). */
static limiter *send_limiter(const app *a)
{
    return app_state(a, &messages_module);
}

/* ---- lookups (any transaction) ----------------------------------------------------------------- */

static void pair_key(store_key *k, uint64_t a, uint64_t b)
{
    store_key_reset(k);
    store_key_u64(k, a < b ? a : b);
    store_key_u64(k, a < b ? b : a);
}

/* The conversation of a and b: LAGOON_OK with *out, or NOT_FOUND. */
static int find_conversation(store_txn *t, uint64_t a, uint64_t b, lagoon_v1_Conversation *out, store_error *err)
{
    store_key k;
    pair_key(&k, a, b);
    return store_get_by(t, &lagoon_table_conversations, lagoon_index_conversations_by_pair, &k, NULL, out, err);
}

static int find_member(store_txn *t, uint64_t conv, uint64_t user, lagoon_v1_ConversationMember *out,
                       store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, conv);
    store_key_u64(&k, user);
    return store_get_by(t, &lagoon_table_conversation_members, lagoon_index_conversation_members_by_conv_user, &k,
                        NULL, out, err);
}

/* A query over conversation conv's messages in id order (prefix holds its key: keep it alive). */
static void conv_messages_query(store_query *q, store_key *prefix, uint64_t conv)
{
    store_key_reset(prefix);
    store_key_u64(prefix, conv);
    memset(q, 0, sizeof(*q));
    q->table = &lagoon_table_direct_messages;
    q->index = lagoon_index_direct_messages_by_conversation;
    q->prefix = prefix->buf;
    q->prefix_len = prefix->len;
}

/* ---- events ------------------------------------------------------------------------------------ */

/* m as clients see it: without the server's bookkeeping of where its words are. */
static void message_public(lagoon_v1_DirectMessage *m)
{
    m->notification_id = 0;
    m->sender_event_seqs_count = 0;
    m->recipient_event_seqs_count = 0;
    m->events_tracked = false;
}

/* The content oneofs of a stored message and of a Send (chat_content). */
static const chat_tags message_tags = {lagoon_v1_DirectMessage_text_tag, lagoon_v1_DirectMessage_image_tag,
                                       lagoon_v1_DirectMessage_video_tag};
static const chat_tags send_tags = {lagoon_v1_SendMessageRequest_text_tag, lagoon_v1_SendMessageRequest_image_tag,
                                    lagoon_v1_SendMessageRequest_video_tag};

/* Records on m's row that the event seq in the recipient's log carries its words (its
 * notification's events: message events carry none, see publish_message). A full list (not
 * expected: the edit cap sizes it) stops the tracking: Delete then scans the log instead, as
 * for rows stored before it. */
static void track_event(lagoon_v1_DirectMessage *m, uint64_t seq)
{
    size_t cap = sizeof(m->recipient_event_seqs) / sizeof(m->recipient_event_seqs[0]);
    if (!m->events_tracked || seq == 0)
        return;
    if (m->recipient_event_seqs_count >= cap) {
        m->events_tracked = false;
        return;
    }
    m->recipient_event_seqs[m->recipient_event_seqs_count++] = seq;
}

/* A message event in both participants' logs (every device of each sees it). It is logged as
 * a reference: the message's ids, which messages_fill_event turns into the message as it is
 * when the event is sent. So a Send stores its text once (in the message row), an event
 * replayed after an Edit shows the edited text, and a deleted message's events have no words
 * to scrub. One event row serves both logs: built once in place (events_row_init). */
static int publish_message(store_txn *t, const app *a, const lagoon_v1_DirectMessage *m,
                           lagoon_v1_MessageEvent_Action action, store_error *err)
{
    lagoon_v1_UserEvent *row = malloc(sizeof(*row)); /* 17 KiB: its type holds a whole message */
    if (row == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    events_row_init(row, m->sender_id, lagoon_v1_Event_message_tag, &lagoon_v1_MessageEvent_info);
    lagoon_v1_MessageEvent *me = &row->event.payload.message;
    me->action = action;
    me->has_message = true;
    me->message.id = m->id;
    me->message.conversation_id = m->conversation_id;
    me->message.sender_id = m->sender_id;
    me->message.recipient_id = m->recipient_id;
    int st = LAGOON_OK;
    for (int i = 0; i < 2 && st == LAGOON_OK; i++) {
        row->user_id = i ? m->recipient_id : m->sender_id;
        st = events_append_row(t, a, row, err);
    }
    free(row);
    return st;
}

/* The router's side of publish_message (app_module.fill_event): a SENT or EDITED event, which
 * is logged as the message's ids, goes out with the message as it is now; a message deleted
 * since (or with its conversation) goes out as DELETED with its ids, as its own DELETED event
 * does. Events logged before they were references hold the message whole: they are filled the
 * same way, so every replay shows the stored message. */
static int messages_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                               store_error *err)
{
    /* Only publish_message's: a user's own log (never a topic's), and below, only the message
     * the reference names whole (its conversation and participants too), so that an event of
     * another kind with a colliding id cannot show a direct message. */
    if (ev->which_payload != lagoon_v1_Event_message_tag || !ev->payload.message.has_message || ev->has_topic ||
        ev->payload.message.action == lagoon_v1_MessageEvent_Action_DELETED)
        return LAGOON_OK;
    const lagoon_v1_DirectMessage *ref = &ev->payload.message.message;
    out->seq = ev->seq;
    out->created_at = ev->created_at;
    out->has_topic = ev->has_topic;
    out->topic = ev->topic;
    out->which_payload = lagoon_v1_Event_message_tag;
    lagoon_v1_MessageEvent *me = &out->payload.message;
    me->action = ev->payload.message.action;
    me->has_message = true;
    int st = store_get(t, &lagoon_table_direct_messages, ref->id, &me->message, err);
    if (st == LAGOON_OK && (me->message.conversation_id != ref->conversation_id ||
                            me->message.sender_id != ref->sender_id || me->message.recipient_id != ref->recipient_id))
        st = LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_DirectMessage_info, &me->message);
        me->action = lagoon_v1_MessageEvent_Action_DELETED;
        me->message.id = ref->id;
        me->message.conversation_id = ref->conversation_id;
        me->message.sender_id = ref->sender_id;
        me->message.recipient_id = ref->recipient_id;
        st = LAGOON_OK;
    } else if (st == LAGOON_OK) {
        message_public(&me->message);
    }
    *filled = st == LAGOON_OK;
    return st;
}

static void dm_collapse_key(char *out, size_t cap, uint64_t conversation_id)
{
    snprintf(out, cap, "dm:%llu", (unsigned long long)conversation_id);
}

/* What m's notification shows of it: a snippet of its text, cut on a UTF-8 character boundary,
 * or what kind of media it is. */
static void message_snippet(const lagoon_v1_DirectMessage *m, char *out, size_t cap)
{
    chat_snippet(m->which_content, &m->content, &message_tags, out, cap);
}

/* "New message from X", one per conversation while unread; recorded on m (the notification
 * that counts it, and its event). */
static int notify_recipient(store_txn *t, const app *a, lagoon_v1_DirectMessage *m, store_error *err)
{
    lagoon_v1_User *sender = malloc(sizeof(*sender));
    if (sender == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, m->sender_id, sender, err);
    if (st == LAGOON_OK) {
        char title[200], content[CHAT_SNIPPET_MAX + 20], key[40];
        snprintf(title, sizeof(title), "New message from %s", sender->username);
        message_snippet(m, content, sizeof(content));
        dm_collapse_key(key, sizeof(key), m->conversation_id);
        events_noted noted = {0, 0};
        st = events_notify(t, a, m->recipient_id, lagoon_v1_Notification_Type_DIRECT_MESSAGE, title, content,
                           m->conversation_id, key, m->id, &noted, err);
        m->notification_id = noted.notification_id;
        track_event(m, noted.seq);
    }
    free(sender);
    return st;
}

/* ---- validation ------------------------------------------------------------------------------ */

/* Each field's own bounds are rules in messages.proto (text 1-4000 characters, http(s) URLs,
 * positive sizes, a defined video source), checked before the handler runs; what spans fields
 * or needs the caller stays here. */

/* ---- Send ------------------------------------------------------------------------------------- */

static int other_has_written(store_txn *t, uint64_t conv, uint64_t other, int *wrote, store_error *err);


/* Creates the conversation of the message's two users; its two members, views of it as they
 * will be stored, go in mine and theirs (inserted by the caller with the first message, so that
 * a first message writes each member row once). */
static int conversation_create(store_txn *t, const lagoon_v1_DirectMessage *m, int64_t now,
                               lagoon_v1_Conversation *conv, lagoon_v1_ConversationMember *mine,
                               lagoon_v1_ConversationMember *theirs, store_error *err)
{
    memset(conv, 0, sizeof(*conv));
    conv->user_low = m->sender_id < m->recipient_id ? m->sender_id : m->recipient_id;
    conv->user_high = m->sender_id < m->recipient_id ? m->recipient_id : m->sender_id;
    conv->created_at = now;
    int st = store_insert(t, &lagoon_table_conversations, conv, NULL, err);
    for (int i = 0; i < 2; i++) {
        lagoon_v1_ConversationMember *mem = i ? theirs : mine;
        memset(mem, 0, sizeof(*mem));
        mem->conversation_id = conv->id;
        mem->user_id = i ? m->recipient_id : m->sender_id;
        mem->other_user_id = i ? m->sender_id : m->recipient_id;
        mem->last_activity_at = now;
    }
    return st;
}

/* Stores both members: inserted for a new conversation, the lower user id first (as they always
 * were), else updated. */
static int members_put(store_txn *t, int fresh, lagoon_v1_ConversationMember *mine,
                       lagoon_v1_ConversationMember *theirs, store_error *err)
{
    const store_table *tab = &lagoon_table_conversation_members;
    if (!fresh) {
        int st = store_update(t, tab, mine, err);
        return st == LAGOON_OK ? store_update(t, tab, theirs, err) : st;
    }
    lagoon_v1_ConversationMember *low = mine->user_id < theirs->user_id ? mine : theirs;
    lagoon_v1_ConversationMember *high = low == mine ? theirs : mine;
    int st = store_insert(t, tab, low, NULL, err);
    return st == LAGOON_OK ? store_insert(t, tab, high, NULL, err) : st;
}

/* The request as the message to store, built in m (the call's response, at its defaults). */
static void message_from_request(lagoon_v1_DirectMessage *m, const app_write_in *in)
{
    const lagoon_v1_SendMessageRequest *req = in->req;
    const chat_send_args *sa = in->args;
    m->sender_id = in->who.user_id;
    m->recipient_id = req->recipient_id;
    APP_STRCPY(m->client_message_id, sa->client_message_id);
    chat_content_copy(&m->which_content, &m->content, &message_tags, req->which_content, &req->content, &send_tags);
}

static int refuse_unverified(store_error *err)
{
    return store_fail(err, LAGOON_PERMISSION_DENIED, NULL,
                      "verify your email address to message someone who has not written to you "
                      "(replying is allowed)");
}

/* The message sender stored with client_message_id cid, as clients see it, into m; NOT_FOUND if
 * none. */
static int stored_send(store_txn *t, uint64_t sender, const char *cid, lagoon_v1_DirectMessage *m, store_error *err)
{
    int st = chat_stored_send(t, &lagoon_table_direct_messages, lagoon_index_direct_messages_by_client_id, sender, cid,
                              m, err);
    if (st == LAGOON_OK)
        message_public(m);
    return st;
}

/* The message is built in the response and stored from there: the row keeps the bookkeeping
 * (message_public clears it from the reply at the end). */
static int send_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    lagoon_v1_DirectMessage *m = resp;
    const chat_send_args *sa = in->args;
    int verified = in->who.verified;
    /* A retry that raced its first Send (the handler answers the others): the message stored
     * the first time. */
    if (sa->client_message_id[0]) {
        int st = stored_send(t, in->who.user_id, sa->client_message_id, m, err);
        if (st != LAGOON_NOT_FOUND)
            return st;
    }
    message_from_request(m, in);
    lagoon_v1_User *u = malloc(sizeof(*u));
    if (u == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_users, m->recipient_id, u, err);
    int active = st == LAGOON_OK && u->active;
    free(u);
    if (st == LAGOON_NOT_FOUND || (st == LAGOON_OK && !active))
        return store_fail(err, LAGOON_NOT_FOUND, "recipient_id", "no such user");
    if (st != LAGOON_OK)
        return st;
    /* An unverified account may only answer: someone must have written to it first. This keeps
     * throwaway accounts from messaging strangers. */
    lagoon_v1_Conversation conv;
    st = find_conversation(t, m->sender_id, m->recipient_id, &conv, err);
    if (st == LAGOON_NOT_FOUND && !verified)
        return refuse_unverified(err);
    int fresh = st == LAGOON_NOT_FOUND;
    lagoon_v1_ConversationMember mine, theirs;
    if (fresh) {
        st = conversation_create(t, m, in->now, &conv, &mine, &theirs, err);
    } else if (st == LAGOON_OK) {
        st = find_member(t, conv.id, m->sender_id, &mine, err);
        if (st == LAGOON_OK)
            st = find_member(t, conv.id, m->recipient_id, &theirs, err);
    }
    if (st != LAGOON_OK)
        return st;
    if (!verified && !mine.other_wrote) { /* (a new conversation needs a verified sender) */
        int wrote = mine.unread > 0; /* unread counts the other's messages */
        if (!wrote)
            st = other_has_written(t, conv.id, m->recipient_id, &wrote, err);
        if (st != LAGOON_OK)
            return st;
        if (!wrote)
            return refuse_unverified(err);
        mine.other_wrote = true; /* stored with mine below */
    }
    m->conversation_id = conv.id;
    m->created_at = in->now;
    uint64_t id;
    st = store_insert(t, &lagoon_table_direct_messages, m, &id, err);
    /* Both views move; the recipient has one more unread (the sender's own messages never
     * count, and sending does not read what the other wrote: MarkRead does). */
    mine.last_activity_at = theirs.last_activity_at = in->now;
    mine.last_message_id = theirs.last_message_id = id;
    theirs.other_wrote = true;
    if (theirs.unread < UINT32_MAX)
        theirs.unread++;
    if (st == LAGOON_OK)
        st = members_put(t, fresh, &mine, &theirs, err);
    if (st == LAGOON_OK) {
        m->events_tracked = true; /* from here, its row lists the events that carry its words */
        st = publish_message(t, in->a, m, lagoon_v1_MessageEvent_Action_SENT, err);
    }
    if (st == LAGOON_OK)
        st = notify_recipient(t, in->a, m, err);
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_direct_messages, m, err);
    message_public(m);
    return st;
}

int handle_Messages_Send(rpc_call *call, const lagoon_v1_SendMessageRequest *req, lagoon_v1_DirectMessage *resp)
{
    uint64_t me = rpc_call_caller(call)->user_id;
    if (req->recipient_id == me)
        rpc_call_violation(call, "recipient_id", "cannot be yourself");
    if (req->which_content == 0)
        rpc_call_violation(call, "content", "one of text, image or video is required");
    /* The call's idempotency key stands in for a missing client_message_id, and is stored as
     * it: it must fit there. */
    const char *cid = chat_send_id(call, req->client_message_id, sizeof(resp->client_message_id), "Messages/Send");
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    /* A retry of a stored Send is answered from the store, whatever the budget says (one that
     * raced its first Send counts once more). */
    if (cid[0]) {
        int st = chat_answer_retry(call, &lagoon_table_direct_messages, lagoon_index_direct_messages_by_client_id, cid,
                                   resp);
        if (st == LAGOON_OK)
            message_public(resp);
        if (st != LAGOON_NOT_FOUND)
            return st;
    }
    /* Every Send is a write on the single writer: a per-user budget keeps one account from
     * flooding it (and its recipients). After validation, as for Register: an invalid request
     * is told what is wrong, costs no write and does not count. */
    chat_send_args *sa = app_write_args(call, sizeof(*sa));
    if (sa == NULL)
        return app_out_of_memory(call);
    sa->client_message_id = cid;
    return chat_send_call(call, send_write, sa, send_limiter(app_of(call)), "send");
}

/* ---- List ------------------------------------------------------------------------------------ */

static int add_message(void *arg, void *item, const void *row)
{
    (void)arg;
    lagoon_v1_DirectMessage *m = item;
    *m = *(const lagoon_v1_DirectMessage *)row;
    message_public(m);
    return 1;
}

/* The newest message of a conversation, 0 if none. */
static int newest_in(store_txn *t, uint64_t conv, uint64_t *id, store_error *err)
{
    store_key prefix;
    store_query q;
    conv_messages_query(&q, &prefix, conv);
    return chat_newest(t, q.table, q.index, &prefix, id, err);
}

int handle_Messages_List(rpc_call *call, const lagoon_v1_ListMessagesRequest *req,
                         lagoon_v1_ListMessagesResponse *resp)
{
    uint64_t me = rpc_call_caller(call)->user_id;
    paging_list l = {.resp = &lagoon_v1_ListMessagesResponse_info,
                     .items_tag = lagoon_v1_ListMessagesResponse_messages_tag, .item = add_message,
                     .item_size = sizeof(*resp->messages)};
    chat_page_req pr = {req->page_size, req->page_token, req->page, req->per_page, req->anchor, req->since};
    if (req->other_user_id == 0 || req->other_user_id == me)
        rpc_call_violation(call, "other_user_id", "must be another user");
    chat_list_check(call, &pr, &l);
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;

    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    lagoon_v1_Conversation conv;
    st = find_conversation(t, me, req->other_user_id, &conv, &err);
    if (st == LAGOON_NOT_FOUND) {
        /* No conversation yet: an empty one, whether or not the other user exists. */
        store_read_end(t);
        return LAGOON_OK;
    }
    store_key prefix;
    conv_messages_query(&l.query, &prefix, conv.id);
    st = chat_list_scan(t, &l, &prefix, &pr, &resp->anchor, &err);
    store_read_end(t);
    resp->messages = l.items;
    resp->messages_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- ListConversations -------------------------------------------------------------------------- */

static int add_member(void *arg, void *item, const void *row)
{
    (void)arg;
    *(lagoon_v1_ConversationMember *)item = *(const lagoon_v1_ConversationMember *)row;
    return 1;
}

int handle_Messages_ListConversations(rpc_call *call, const lagoon_v1_ListConversationsRequest *req,
                                      lagoon_v1_ListConversationsResponse *resp)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u64(&prefix, rpc_call_caller(call)->user_id);
    /* The page is of member rows (the caller's view of each conversation, most recent first);
     * each becomes a summary below. */
    paging_list l = {.size = req->page_size, .token = req->page_token,
                     .resp = &lagoon_v1_ListConversationsResponse_info,
                     .items_tag = lagoon_v1_ListConversationsResponse_conversations_tag,
                     .query = {.table = &lagoon_table_conversation_members,
                               .index = lagoon_index_conversation_members_by_activity,
                               .prefix = prefix.buf, .prefix_len = prefix.len, .reverse = 1},
                     .item = add_member, .item_size = sizeof(lagoon_v1_ConversationMember)};
    int st = paging_check(call, &l);
    if (st != LAGOON_OK)
        return st;
    lagoon_v1_User *u = malloc(sizeof(*u));
    resp->conversations = calloc(l.limit, sizeof(*resp->conversations));
    if (u == NULL || resp->conversations == NULL) {
        free(u);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
    }
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        st = paging_scan(t, &l, &err);
        const lagoon_v1_ConversationMember *rows = l.items;
        /* The other users and the last messages, read after the scan (one transaction). */
        for (uint32_t i = 0; i < l.count && st == LAGOON_OK; i++) {
            lagoon_v1_ConversationSummary *s = &resp->conversations[resp->conversations_count];
            s->conversation_id = rows[i].conversation_id;
            s->unread = rows[i].unread;
            s->last_activity_at = rows[i].last_activity_at;
            if (store_get(t, &lagoon_table_users, rows[i].other_user_id, u, &err) == LAGOON_OK) {
                s->has_other_user = true;
                account_public(u, &s->other_user);
            }
            if (rows[i].last_message_id &&
                store_get(t, &lagoon_table_direct_messages, rows[i].last_message_id, &s->last_message, &err) ==
                    LAGOON_OK) {
                s->has_last_message = true;
                message_public(&s->last_message);
            }
            resp->conversations_count++;
        }
        if (st == LAGOON_OK)
            APP_STRCPY(resp->next_page_token, l.next_page_token);
        store_read_end(t);
    }
    free(l.items);
    free(u);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- MarkRead ------------------------------------------------------------------------------------ */

/* One bounded look at a conversation's messages in id order, for MarkRead. */
typedef struct read_scan {
    uint64_t from;    /* count this user's messages... */
    uint64_t until;   /* ...with ids up to this one */
    uint32_t count;   /* messages from `from` seen, ids <= until */
    uint64_t last_id; /* the last id seen <= until */
    int passed;       /* an id > until was seen: every message <= until was */
} read_scan;

static int scan_row(void *arg, uint64_t id, const void *row)
{
    read_scan *rs = arg;
    if (id > rs->until) {
        rs->passed = 1;
        return LAGOON_OK;
    }
    rs->last_id = id;
    if (((const lagoon_v1_DirectMessage *)row)->sender_id == rs->from)
        rs->count++;
    return LAGOON_OK;
}

/* At most MESSAGES_READ_SCAN_MAX messages of the conversation, from id `first` on. *complete:
 * the scan reached the end of the conversation or passed rs->until. */
static int scan_messages(store_txn *t, uint64_t conv, uint64_t first, read_scan *rs, int *complete,
                         store_error *err)
{
    store_key prefix, start;
    store_key_reset(&prefix);
    store_key_u64(&prefix, conv);
    start = prefix;
    store_key_u64(&start, first);
    store_query q = {0};
    q.table = &lagoon_table_direct_messages;
    q.index = lagoon_index_direct_messages_by_conversation;
    q.prefix = prefix.buf;
    q.prefix_len = prefix.len;
    q.start = start.buf;
    q.start_len = start.len;
    q.page_size = MESSAGES_READ_SCAN_MAX;
    store_page page;
    int st = store_scan(t, &q, scan_row, rs, &page, err);
    *complete = rs->passed || page.next_page_token[0] == '\0';
    return st;
}

/* Whether other has a message among the MESSAGES_WROTE_SCAN oldest and as many newest of conv. */
static int other_has_written(store_txn *t, uint64_t conv, uint64_t other, int *wrote, store_error *err)
{
    read_scan rs = {other, UINT64_MAX, 0, 0, 0};
    store_key prefix;
    store_query q;
    conv_messages_query(&q, &prefix, conv);
    q.page_size = MESSAGES_WROTE_SCAN;
    store_page page;
    int st = store_scan(t, &q, scan_row, &rs, &page, err);
    if (st == LAGOON_OK && rs.count == 0 && page.next_page_token[0] != '\0') {
        q.reverse = 1;
        st = store_scan(t, &q, scan_row, &rs, &page, err);
    }
    *wrote = rs.count > 0;
    return st;
}

/* Moves mem's read position forward to `to` (< the last message) and its unread count with it.
 * The count is kept exact without a recount: the messages after `to` are counted when they are
 * few, else the newly read ones are subtracted. When both are many (a position deep inside a
 * long unread stretch), the position moves MESSAGES_READ_SCAN_MAX messages only: *to says where
 * it stopped, and the client calls again to go further. */
static int read_part(store_txn *t, uint64_t other, lagoon_v1_ConversationMember *mem, uint64_t *to,
                     store_error *err)
{
    /* to < last_message_id and read_up_to < to: neither + 1 wraps. */
    read_scan after = {other, UINT64_MAX, 0, 0, 0};
    int complete;
    int st = scan_messages(t, mem->conversation_id, *to + 1, &after, &complete, err);
    if (st != LAGOON_OK)
        return st;
    if (complete) {
        mem->unread = after.count;
        return LAGOON_OK;
    }
    read_scan now = {other, *to, 0, mem->read_up_to, 0};
    st = scan_messages(t, mem->conversation_id, mem->read_up_to + 1, &now, &complete, err);
    if (st != LAGOON_OK)
        return st;
    if (!complete)
        *to = now.last_id;
    mem->unread = mem->unread > now.count ? mem->unread - now.count : 0;
    return LAGOON_OK;
}

static int mark_read_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_MarkReadRequest *req = in->req;
    lagoon_v1_MarkReadResponse *out = resp;
    uint64_t me = in->who.user_id, other = req->other_user_id;
    lagoon_v1_Conversation conv;
    int st = find_conversation(t, me, other, &conv, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, NULL, "no conversation with this user");
    lagoon_v1_ConversationMember mem;
    if (st == LAGOON_OK)
        st = find_member(t, conv.id, me, &mem, err);
    if (st != LAGOON_OK)
        return st;
    uint64_t up_to = req->up_to_message_id;
    uint64_t to = up_to == 0 || up_to > mem.last_message_id ? mem.last_message_id : up_to;
    /* Reading everything so far also clears a count left behind by older versions, where a
     * reply moved the sender's read position but not its count. */
    if (to > mem.read_up_to || (to == mem.last_message_id && mem.unread > 0)) {
        if (to == mem.last_message_id)
            mem.unread = 0; /* everything so far */
        else
            st = read_part(t, other, &mem, &to, err);
        if (to > mem.read_up_to)
            mem.read_up_to = to;
        if (st == LAGOON_OK)
            st = store_update(t, &lagoon_table_conversation_members, &mem, err);
        /* Read receipts: the other participant and the reader's own devices (one event row,
         * appended to each log in turn). */
        lagoon_v1_UserEvent *row = st == LAGOON_OK ? malloc(sizeof(*row)) : NULL;
        if (st == LAGOON_OK && row == NULL)
            st = store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
        if (row != NULL) {
            events_row_init(row, me, lagoon_v1_Event_read_tag, &lagoon_v1_ReadEvent_info);
            row->event.payload.read.conversation_id = conv.id;
            row->event.payload.read.reader_id = me;
            row->event.payload.read.up_to_message_id = to;
            for (int i = 0; i < 2 && st == LAGOON_OK; i++) {
                row->user_id = i ? other : me;
                st = events_append_row(t, in->a, row, err);
            }
            free(row);
        }
        if (st == LAGOON_OK && mem.unread == 0) {
            char key[40];
            dm_collapse_key(key, sizeof(key), conv.id);
            st = events_notification_read(t, in->a, me, key, err);
        }
    }
    out->unread = mem.unread;
    out->read_up_to = mem.read_up_to;
    return st;
}

int handle_Messages_MarkRead(rpc_call *call, const lagoon_v1_MarkReadRequest *req, lagoon_v1_MarkReadResponse *resp)
{
    (void)resp;
    if (req->other_user_id == 0 || req->other_user_id == rpc_call_caller(call)->user_id)
        return rpc_call_violation(call, "other_user_id", "must be another user");
    return app_write_call(call, mark_read_write, NULL);
}

/* ---- Edit, Delete ---------------------------------------------------------------------------------- */

/* Who may do what to a direct message: its sender changes it; its recipient sees it; to
 * anyone else it does not exist. No administrator override: direct messages are private. */
static int is_recipient(store_txn *t, const rpc_caller *who, const void *res, int *holds, store_error *err)
{
    (void)t;
    (void)err;
    *holds = ((const lagoon_v1_DirectMessage *)res)->recipient_id == who->user_id;
    return LAGOON_OK;
}

static const app_policy message_policy = {
    .grants = {[APP_READ] = APP_REL_OWNER | APP_REL_SHARED, [APP_CHANGE] = APP_REL_OWNER},
    .resolve = {[APP_REL_SHARED_BIT] = is_recipient},
    .not_found = "no such message",
    .denied = {[APP_CHANGE] = "only the sender can change a message"},
};

/* Reads message id into m if the caller may change it as its sender; else the refusal. */
static int own_message(store_txn *t, const app_write_in *in, uint64_t id, lagoon_v1_DirectMessage *m,
                       store_error *err)
{
    int st = store_get(t, &lagoon_table_direct_messages, id, m, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, NULL, "%s", message_policy.not_found);
    if (st != LAGOON_OK)
        return st;
    return app_check(t, &in->who, &message_policy, APP_CHANGE, m, m->sender_id, err);
}

/* The message is read into the response and stored from there (message_public clears the
 * bookkeeping from the reply at the end). */
static int edit_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_EditMessageRequest *req = in->req;
    lagoon_v1_DirectMessage *m = resp;
    int st = own_message(t, in, req->message_id, m, err);
    if (st != LAGOON_OK)
        return st;
    st = chat_edit_check(m->which_content, &message_tags, m->created_at, m->edit_count, in->now, err);
    if (st != LAGOON_OK)
        return st;
    APP_STRCPY(m->content.text.text, req->text);
    m->edited_at = in->now;
    m->edit_count++;
    /* The notification's event first: the row records its seq. */
    st = publish_message(t, in->a, m, lagoon_v1_MessageEvent_Action_EDITED, err);
    if (st == LAGOON_OK) {
        /* The recipient's notification shows the new words if it showed this message's. */
        char snippet[CHAT_SNIPPET_MAX + 20];
        uint64_t seq;
        message_snippet(m, snippet, sizeof(snippet));
        st = events_message_edited(t, in->a, m, snippet, &seq, err);
        track_event(m, seq);
    }
    if (st == LAGOON_OK)
        st = store_update(t, &lagoon_table_direct_messages, m, err);
    message_public(m);
    /* A retry with the call's key gets this response while the message lasts; Delete drops
     * it with the message, so that a retry cannot bring back deleted words. */
    app_result_shows(in, m->id);
    return st;
}

int handle_Messages_Edit(rpc_call *call, const lagoon_v1_EditMessageRequest *req, lagoon_v1_DirectMessage *resp)
{
    (void)req; /* (its rules in messages.proto checked it) */
    (void)resp;
    return app_write_call(call, edit_write, NULL);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_DeleteMessageRequest *req = in->req;
    lagoon_v1_DirectMessage *m = malloc(sizeof(*m));
    if (m == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = own_message(t, in, req->message_id, m, err);
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_direct_messages, m->id, err);
    uint64_t newest = 0;
    if (st == LAGOON_OK)
        st = newest_in(t, m->conversation_id, &newest, err);
    /* Both views forget it: the summary falls back to the previous message, and an unread
     * message stops counting. */
    for (int i = 0; i < 2 && st == LAGOON_OK; i++) {
        lagoon_v1_ConversationMember mem;
        st = find_member(t, m->conversation_id, i ? m->recipient_id : m->sender_id, &mem, err);
        if (st != LAGOON_OK)
            break;
        if (mem.last_message_id == m->id)
            mem.last_message_id = newest;
        if (i == 1 && m->id > mem.read_up_to && mem.unread > 0)
            mem.unread--;
        st = store_update(t, &lagoon_table_conversation_members, &mem, err);
    }
    if (st == LAGOON_OK) /* its words leave the logs and the recipient's notification */
        st = events_message_deleted(t, in->a, m, err);
    if (st == LAGOON_OK) /* and the kept responses of its edits (app_result_shows) */
        st = app_forget_results(t, &lagoon_method_Messages_Edit, m->id, err);
    if (st == LAGOON_OK)
        st = publish_message(t, in->a, m, lagoon_v1_MessageEvent_Action_DELETED, err);
    free(m);
    return st;
}

int handle_Messages_Delete(rpc_call *call, const lagoon_v1_DeleteMessageRequest *req, lagoon_v1_MessagesEmpty *resp)
{
    (void)req; /* (its rules in messages.proto checked it) */
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}
