/* GroupChat service: the chat of a group (groups.c), for its ACTIVE members.
 *
 * Storage. Each message is stored once, indexed by (group, id): a page, a catch-up and an
 * unread count cost the same in a group of two members or ten thousand. Message ids come from
 * the table's sequence, so they grow within every group. A member's read position is its
 * GroupMember.read_up_to; its unread count is the number of the group's messages after it,
 * counted (up to GROUPCHAT_UNREAD_CAP) when asked, so a Send writes a bounded number of rows
 * whatever the group's size: the message, the sender's member row (sending reads the chat up to
 * the new message), the group's last activity, and one event on the group's topic.
 *
 * Content, the edit rule, Send's retries and budget, and List's paging are the direct
 * messages' (chat_content.h).
 *
 * Events. Sends, edits and deletes go to the group's topic (Topic.GROUP, the group's id), whose
 * members are the group's ACTIVE members (groups.c joins and leaves them): one row per event,
 * whatever the member count. Message events are references (the message's ids), which
 * groupchat_fill_event turns into the message as it is when sent; read marks and typing are
 * ephemeral (events_topic_ephemeral: live subscriptions only, never logged). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_content.h"
#include "events.h"
#include "groupchat.h"
#include "groups.h"
#include "lagoon_handlers.h"
#include "messages.h"
#include "paging.h"
#include "party.h"

typedef lagoon_v1_GroupMessage message;
typedef lagoon_v1_GroupMember member;

/* The content oneofs of a stored message and of a Send (chat_content). */
static const chat_tags message_tags = {lagoon_v1_GroupMessage_text_tag, lagoon_v1_GroupMessage_image_tag,
                                       lagoon_v1_GroupMessage_video_tag};
static const chat_tags send_tags = {lagoon_v1_SendGroupMessageRequest_text_tag,
                                    lagoon_v1_SendGroupMessageRequest_image_tag,
                                    lagoon_v1_SendGroupMessageRequest_video_tag};

/* A mention's title before events_notify cuts it: a username (50) and a group name (400 bytes). */
#define GROUPCHAT_TITLE_MAX 600

/* How long a typing indicator shows (as a direct message's). */
#define GROUPCHAT_TYPING_MS 5000

/* ---- the module: the event filler, the typing limiter ----------------------------------------- */

static int groupchat_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                                store_error *err);

/* The router holds at most a few hundred ephemeral events waiting, for every topic together:
 * one member's Typing calls in a loop would keep it full (and each goes to every live member),
 * so that nobody else's indicator or read mark got through. */
static int groupchat_start(app *a, void **state, rpc_error *err)
{
    limiter_policy p = {.max_events = 1, .window_ms = GROUPCHAT_TYPING_EVERY_MS};
    return app_budget_start(a, p, 0, 0, state, err);
}

const app_module groupchat_module = {
    .name = "groupchat",
    .start = groupchat_start,
    .stop = app_budget_stop,
    .fill_event = groupchat_fill_event, /* group message events are logged as references */
};

/* Sends per user: the Messages module's limiter (sends-per-minute), under keys of their own
 * ("gsend:<user>"), so that group and direct messages each have the budget. */
static limiter *send_limiter(const app *a)
{
    return app_state(a, &messages_module);
}

static lagoon_v1_Topic group_topic(uint64_t id)
{
    lagoon_v1_Topic topic = {.kind = lagoon_v1_Topic_Kind_GROUP, .id = id};
    return topic;
}

/* ---- counts ------------------------------------------------------------------------------------ */

static void group_prefix(store_key *k, uint64_t gid)
{
    store_key_reset(k);
    store_key_u64(k, gid);
}

int groupchat_newest(store_txn *t, uint64_t gid, uint64_t *id, store_error *err)
{
    store_key prefix;
    group_prefix(&prefix, gid);
    return chat_newest(t, &lagoon_table_group_messages, lagoon_index_group_messages_by_group, &prefix, id, err);
}

int groupchat_unread(store_txn *t, uint64_t gid, uint64_t read_up_to, uint32_t *n, store_error *err)
{
    *n = 0;
    if (read_up_to == UINT64_MAX)
        return LAGOON_OK;
    store_key prefix, start;
    group_prefix(&prefix, gid);
    start = prefix;
    store_key_u64(&start, read_up_to + 1);
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int st = LAGOON_OK;
    /* Pages of at most STORE_PAGE_SIZE_MAX until the cap: two pages at the default sizes. */
    while (st == LAGOON_OK && *n < GROUPCHAT_UNREAD_CAP) {
        uint32_t want = GROUPCHAT_UNREAD_CAP - *n;
        store_query q = {.table = &lagoon_table_group_messages, .index = lagoon_index_group_messages_by_group,
                         .prefix = prefix.buf, .prefix_len = prefix.len, .start = start.buf,
                         .start_len = start.len, .page_token = token,
                         .page_size = want < STORE_PAGE_SIZE_MAX ? want : STORE_PAGE_SIZE_MAX};
        store_page page;
        st = store_scan(t, &q, NULL, NULL, &page, err); /* keys only: no row read */
        *n += page.count;
        if (st != LAGOON_OK || page.next_page_token[0] == '\0')
            break;
        memcpy(token, page.next_page_token, sizeof(token));
    }
    return st;
}

void groupchat_unread_display(uint32_t n, char *out, size_t cap)
{
    if (n >= GROUPCHAT_UNREAD_CAP)
        snprintf(out, cap, "%u+", GROUPCHAT_UNREAD_CAP - 1);
    else
        snprintf(out, cap, "%u", n);
}

/* ---- a group going ------------------------------------------------------------------------------ */

static int was_edited(void *arg, const void *row)
{
    (void)arg;
    return ((const message *)row)->edit_count > 0;
}

int groupchat_group_deleting(store_txn *t, uint64_t gid, store_error *err)
{
    store_key prefix;
    group_prefix(&prefix, gid);
    app_id_page *page = malloc(sizeof(*page)); /* 4 KiB */
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    char token[STORE_PAGE_TOKEN_MAX + 1] = "";
    int st;
    do { /* the pages' rows stay (only kept responses go), so the token stays good */
        store_query q = {.table = &lagoon_table_group_messages, .index = lagoon_index_group_messages_by_group,
                         .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX,
                         .page_token = token};
        st = app_scan_marked(t, &q, was_edited, NULL, page, err);
        for (uint32_t i = 0; i < page->n && st == LAGOON_OK; i++)
            if (page->marked[i])
                st = app_forget_results(t, &lagoon_method_GroupChat_Edit, page->ids[i], err);
        memcpy(token, page->next_page_token, sizeof(token));
    } while (st == LAGOON_OK && token[0] != '\0');
    free(page);
    return st;
}

/* ---- who may ----------------------------------------------------------------------------------- */

/* Whether the caller sees group gid without being an ACTIVE member (as Groups/Get decides: a
 * public group, an invitation to a private one, a site administrator); *exists: the group. */
static int sees_group(store_txn *t, const rpc_caller *who, uint64_t gid, int *sees, int *exists, store_error *err)
{
    lagoon_v1_Group *g = malloc(sizeof(*g));
    if (g == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_groups, gid, g, err);
    *exists = st == LAGOON_OK;
    *sees = *exists && (g->visibility == lagoon_v1_Group_Visibility_PUBLIC || who->role == lagoon_v1_Role_ADMIN);
    free(g);
    if (st != LAGOON_OK || *sees)
        return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, gid);
    store_key_u64(&k, who->user_id);
    member row;
    st = store_get_by(t, &lagoon_table_group_members, lagoon_index_group_members_by_group_user, &k, NULL, &row, err);
    *sees = st == LAGOON_OK && row.state == lagoon_v1_GroupMember_State_INVITED;
    return st == LAGOON_NOT_FOUND ? LAGOON_OK : st;
}

/* The caller's ACTIVE row of group gid into m. Anyone else: PERMISSION_DENIED when it sees the
 * group (its chat is its members'), else NOT_FOUND as for a group that does not exist. */
static int chat_member(store_txn *t, const rpc_caller *who, uint64_t gid, member *m, store_error *err)
{
    int st = groups_active_member(t, who, gid, "group_id", m, err);
    if (st != LAGOON_NOT_FOUND)
        return st;
    int sees = 0, exists = 0;
    st = sees_group(t, who, gid, &sees, &exists, err);
    if (st != LAGOON_OK)
        return st;
    if (sees)
        return store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the group's members can use its chat");
    return store_fail(err, LAGOON_NOT_FOUND, "group_id", "no such group");
}

/* Message id into m, and the caller's row of its group into me (chat_member's refusals, but a
 * message of a group the caller may not see is as missing as a message that is not there: the
 * request names no group, and its answer must not tell the two apart). */
static int message_in_my_group(store_txn *t, const rpc_caller *who, uint64_t id, message *m, member *me,
                               store_error *err)
{
    int st = store_get(t, &lagoon_table_group_messages, id, m, err);
    if (st == LAGOON_OK)
        st = chat_member(t, who, m->group_id, me, err);
    if (st == LAGOON_NOT_FOUND)
        return store_fail(err, LAGOON_NOT_FOUND, "message_id", "no such message");
    return st;
}

/* ---- events ------------------------------------------------------------------------------------ */

static void message_ids(message *dst, const message *src)
{
    dst->id = src->id;
    dst->group_id = src->group_id;
    dst->sender_id = src->sender_id;
}

/* m's change on its group's topic, as a reference (groupchat_fill_event fills it in). */
static int publish(store_txn *t, const app *a, const message *m, lagoon_v1_GroupMessageEvent_Action action,
                   store_error *err)
{
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* ~17 KiB: its type can hold a whole message */
    if (ev == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    ev->which_payload = lagoon_v1_Event_group_message_tag;
    ev->payload.group_message.action = action;
    ev->payload.group_message.has_message = true;
    message_ids(&ev->payload.group_message.message, m);
    lagoon_v1_Topic tp = group_topic(m->group_id);
    int st = events_topic_publish(t, a, &tp, ev, err);
    free(ev);
    return st;
}

/* The router's side of publish (app_module.fill_event): SENT and EDITED go out with the message
 * as it is now; a message deleted since (or with its group or sender) as DELETED with its ids.
 * Only publish's events: a group message payload on the GROUP topic of its own group, and a row
 * that matches the whole reference. */
static int groupchat_fill_event(store_txn *t, const lagoon_v1_Event *ev, lagoon_v1_Event *out, int *filled,
                                store_error *err)
{
    if (ev->which_payload != lagoon_v1_Event_group_message_tag || !ev->payload.group_message.has_message ||
        !ev->has_topic || ev->topic.kind != lagoon_v1_Topic_Kind_GROUP ||
        ev->topic.id != ev->payload.group_message.message.group_id ||
        ev->payload.group_message.action == lagoon_v1_GroupMessageEvent_Action_DELETED)
        return LAGOON_OK;
    const message *ref = &ev->payload.group_message.message;
    out->seq = ev->seq;
    out->created_at = ev->created_at;
    out->has_topic = true;
    out->topic = ev->topic;
    out->which_payload = lagoon_v1_Event_group_message_tag;
    lagoon_v1_GroupMessageEvent *ge = &out->payload.group_message;
    ge->action = ev->payload.group_message.action;
    ge->has_message = true;
    int st = store_get(t, &lagoon_table_group_messages, ref->id, &ge->message, err);
    if (st == LAGOON_OK && (ge->message.group_id != ref->group_id || ge->message.sender_id != ref->sender_id))
        st = LAGOON_NOT_FOUND;
    if (st == LAGOON_NOT_FOUND) {
        wire_init(&lagoon_v1_GroupMessage_info, &ge->message);
        ge->action = lagoon_v1_GroupMessageEvent_Action_DELETED;
        message_ids(&ge->message, ref);
        st = LAGOON_OK;
    }
    *filled = st == LAGOON_OK;
    return st;
}

/* ---- mentions ---------------------------------------------------------------------------------- */

/* GROUP_MENTION to each active member m's text names (the first GROUPCHAT_MENTIONS_MAX distinct
 * names), the sender aside; a muted group notifies them too. The notification shows who and
 * where, never the words (which an Edit or Delete would leave behind in it). */
static int notify_mentions(store_txn *t, const app_write_in *in, const message *m, store_error *err)
{
    if (m->which_content != lagoon_v1_GroupMessage_text_tag || strchr(m->content.text.text, '@') == NULL)
        return LAGOON_OK;
    char names[GROUPCHAT_MENTIONS_MAX][CHAT_USERNAME_MAX + 1];
    size_t n = chat_mentions(m->content.text.text, names, GROUPCHAT_MENTIONS_MAX);
    if (n == 0)
        return LAGOON_OK;
    lagoon_v1_User *u = malloc(sizeof(*u));
    lagoon_v1_Group *g = malloc(sizeof(*g));
    char *title = malloc(GROUPCHAT_TITLE_MAX); /* events_notify cuts it to a notification's title */
    if (u == NULL || g == NULL || title == NULL) {
        free(title);
        free(g);
        free(u);
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    }
    int st = store_get(t, &lagoon_table_groups, m->group_id, g, err);
    if (st == LAGOON_OK)
        st = store_get(t, &lagoon_table_users, m->sender_id, u, err);
    if (st == LAGOON_OK)
        snprintf(title, GROUPCHAT_TITLE_MAX, "%s mentioned you in %s", u->username, g->name);
    for (size_t i = 0; i < n && st == LAGOON_OK; i++) {
        store_key k;
        store_key_reset(&k);
        store_key_str_fold(&k, names[i]);
        st = store_get_by(t, &lagoon_table_users, lagoon_index_users_by_username, &k, NULL, u, err);
        if (st == LAGOON_NOT_FOUND) {
            st = LAGOON_OK;
            continue;
        }
        if (st != LAGOON_OK || !u->active || u->id == m->sender_id)
            continue;
        rpc_caller them = {.user_id = u->id};
        st = groups_active_member(t, &them, m->group_id, NULL, NULL, err);
        if (st == LAGOON_NOT_FOUND) { /* not a member: plain text */
            st = LAGOON_OK;
            continue;
        }
        if (st == LAGOON_OK)
            st = events_notify(t, in->a, u->id, lagoon_v1_Notification_Type_GROUP_MENTION, title, "", m->group_id, "",
                               0, NULL, err);
    }
    free(title);
    free(g);
    free(u);
    return st;
}

/* ---- Send ---------------------------------------------------------------------------------------- */

/* The Party service's spot: a message sent while a party of the group runs gets that party's
 * id and media position (m->party_id, m->media_position_ms), in Send's transaction, before the
 * message is stored (party.h: party_position_now). None running: both stay 0. */
static int party_stamp(store_txn *t, const app_write_in *in, message *m, store_error *err)
{
    return party_position_now(t, m->group_id, in->now, &m->party_id, &m->media_position_ms, err);
}

/* The group's last activity moves to now (ListMine's order). */
static int group_touch(store_txn *t, const app_write_in *in, uint64_t gid, store_error *err)
{
    lagoon_v1_Group *g = malloc(sizeof(*g));
    if (g == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st = store_get(t, &lagoon_table_groups, gid, g, err);
    if (st == LAGOON_OK && g->last_activity_at != in->now) {
        g->last_activity_at = in->now;
        st = store_update(t, &lagoon_table_groups, g, err);
    }
    free(g);
    return st;
}

/* A Send's client id (the request's, else the idempotency key: field) names a message the sender
 * stored in another group: refused as the framework refuses a key reused for another request,
 * so that a client that reuses an id across groups is told instead of answered with the other
 * group's message as if this one had been sent. */
static int sent_elsewhere(const message *stored, uint64_t gid, const char *field, store_error *err)
{
    if (stored->group_id == gid)
        return LAGOON_OK;
    return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "this %s was already used for a message to another group",
                      field);
}

static const char *send_id_field(const lagoon_v1_SendGroupMessageRequest *req)
{
    return req->client_message_id[0] ? "client_message_id" : "idempotency_key";
}

/* The message is built in the response and stored from there. */
static int send_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_SendGroupMessageRequest *req = in->req;
    const chat_send_args *sa = in->args;
    message *m = resp;
    /* A retry that raced its first Send (the handler answers the others). */
    if (sa->client_message_id[0]) {
        int st = chat_stored_send(t, &lagoon_table_group_messages, lagoon_index_group_messages_by_client_id,
                                  in->who.user_id, sa->client_message_id, m, err);
        if (st == LAGOON_OK)
            st = sent_elsewhere(m, req->group_id, send_id_field(req), err);
        if (st != LAGOON_NOT_FOUND)
            return st;
    }
    member me;
    int st = chat_member(t, &in->who, req->group_id, &me, err);
    if (st != LAGOON_OK)
        return st;
    m->group_id = req->group_id;
    m->sender_id = in->who.user_id;
    m->created_at = in->now;
    APP_STRCPY(m->client_message_id, sa->client_message_id);
    chat_content_copy(&m->which_content, &m->content, &message_tags, req->which_content, &req->content, &send_tags);
    st = party_stamp(t, in, m, err);
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_group_messages, m, NULL, err);
    /* Sending reads the chat up to the new message: the sender's own messages never count. */
    if (st == LAGOON_OK) {
        me.read_up_to = m->id;
        st = store_update(t, &lagoon_table_group_members, &me, err);
    }
    if (st == LAGOON_OK)
        st = group_touch(t, in, m->group_id, err);
    if (st == LAGOON_OK)
        st = publish(t, in->a, m, lagoon_v1_GroupMessageEvent_Action_SENT, err);
    if (st == LAGOON_OK)
        st = notify_mentions(t, in, m, err);
    return st;
}

int handle_GroupChat_Send(rpc_call *call, const lagoon_v1_SendGroupMessageRequest *req, lagoon_v1_GroupMessage *resp)
{
    if (req->which_content == 0)
        rpc_call_violation(call, "content", "one of text, image or video is required");
    const char *cid = chat_send_id(call, req->client_message_id, sizeof(resp->client_message_id), "GroupChat/Send");
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    /* A retry of a stored Send is answered from the store, whatever the budget says. */
    if (cid[0]) {
        int st = chat_answer_retry(call, &lagoon_table_group_messages, lagoon_index_group_messages_by_client_id, cid,
                                   resp);
        store_error err;
        if (st == LAGOON_OK && sent_elsewhere(resp, req->group_id, send_id_field(req), &err) != LAGOON_OK)
            return app_store_error(call, err.code, &err);
        if (st != LAGOON_NOT_FOUND)
            return st;
    }
    chat_send_args *sa = app_write_args(call, sizeof(*sa));
    if (sa == NULL)
        return app_out_of_memory(call);
    sa->client_message_id = cid;
    return chat_send_call(call, send_write, sa, send_limiter(app_of(call)), "gsend");
}

/* ---- List ---------------------------------------------------------------------------------------- */

static int add_message(void *arg, void *item, const void *row)
{
    (void)arg;
    *(message *)item = *(const message *)row;
    return 1;
}

int handle_GroupChat_List(rpc_call *call, const lagoon_v1_ListGroupMessagesRequest *req,
                          lagoon_v1_ListGroupMessagesResponse *resp)
{
    paging_list l = {.resp = &lagoon_v1_ListGroupMessagesResponse_info,
                     .items_tag = lagoon_v1_ListGroupMessagesResponse_messages_tag, .item = add_message,
                     .item_size = sizeof(*resp->messages)};
    l.query.table = &lagoon_table_group_messages;
    l.query.index = lagoon_index_group_messages_by_group;
    chat_page_req pr = {req->page_size, req->page_token, req->page, req->per_page, req->anchor, req->since};
    chat_list_check(call, &pr, &l);
    if (rpc_call_violations(call))
        return LAGOON_INVALID_ARGUMENT;
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    member me;
    st = chat_member(t, rpc_call_caller(call), req->group_id, &me, &err);
    store_key prefix;
    group_prefix(&prefix, req->group_id);
    if (st == LAGOON_OK)
        st = chat_list_scan(t, &l, &prefix, &pr, &resp->anchor, &err);
    store_read_end(t);
    resp->messages = l.items; /* FT_POINTER: freed with the call */
    resp->messages_count = (pb_size_t)l.count;
    APP_STRCPY(resp->next_page_token, l.next_page_token);
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}

/* ---- Edit, Delete -------------------------------------------------------------------------------- */

static int edit_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_EditGroupMessageRequest *req = in->req;
    message *m = resp;
    member me;
    int st = message_in_my_group(t, &in->who, req->message_id, m, &me, err);
    if (st == LAGOON_OK && m->sender_id != in->who.user_id)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the sender can edit a message");
    if (st == LAGOON_OK)
        st = chat_edit_check(m->which_content, &message_tags, m->created_at, m->edit_count, in->now, err);
    if (st != LAGOON_OK)
        return st;
    APP_STRCPY(m->content.text.text, req->text);
    m->edited_at = in->now;
    m->edit_count++;
    st = store_update(t, &lagoon_table_group_messages, m, err);
    if (st == LAGOON_OK)
        st = publish(t, in->a, m, lagoon_v1_GroupMessageEvent_Action_EDITED, err);
    /* A retry with the call's key gets this response while the message lasts; Delete drops it. */
    app_result_shows(in, m->id);
    return st;
}

int handle_GroupChat_Edit(rpc_call *call, const lagoon_v1_EditGroupMessageRequest *req, lagoon_v1_GroupMessage *resp)
{
    (void)req; /* (its rules in groupchat.proto checked it) */
    (void)resp;
    return app_write_call(call, edit_write, NULL);
}

static int delete_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    (void)resp;
    const lagoon_v1_DeleteGroupMessageRequest *req = in->req;
    message *m = malloc(sizeof(*m));
    if (m == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    member me = lagoon_v1_GroupMember_init_zero;
    int st = message_in_my_group(t, &in->who, req->message_id, m, &me, err);
    int admin = me.role == lagoon_v1_GroupMember_Role_OWNER || me.role == lagoon_v1_GroupMember_Role_ADMIN;
    if (st == LAGOON_OK && m->sender_id != in->who.user_id && !admin)
        st = store_fail(err, LAGOON_PERMISSION_DENIED, NULL, "only the sender or the group's admins can delete a message");
    if (st == LAGOON_OK)
        st = store_delete(t, &lagoon_table_group_messages, m->id, err);
    if (st == LAGOON_OK) /* the kept responses of its edits (app_result_shows) */
        st = app_forget_results(t, &lagoon_method_GroupChat_Edit, m->id, err);
    if (st == LAGOON_OK)
        st = publish(t, in->a, m, lagoon_v1_GroupMessageEvent_Action_DELETED, err);
    free(m);
    return st;
}

int handle_GroupChat_Delete(rpc_call *call, const lagoon_v1_DeleteGroupMessageRequest *req,
                            lagoon_v1_GroupChatEmpty *resp)
{
    (void)req;
    (void)resp;
    return app_write_call(call, delete_write, NULL);
}

/* ---- MarkRead, Typing ---------------------------------------------------------------------------- */

/* The read position moves forward only, to the message named (0 or past the newest: the newest).
 * Nothing but the member row is written: the read mark reaches the group in mark_read_after. */
static int mark_read_write(store_txn *t, const app_write_in *in, void *resp, store_error *err)
{
    const lagoon_v1_MarkGroupReadRequest *req = in->req;
    lagoon_v1_GroupUnread *out = resp;
    member me;
    uint64_t newest = 0;
    int st = chat_member(t, &in->who, req->group_id, &me, err);
    if (st == LAGOON_OK)
        st = groupchat_newest(t, req->group_id, &newest, err);
    if (st != LAGOON_OK)
        return st;
    uint64_t to = req->up_to_message_id == 0 || req->up_to_message_id > newest ? newest : req->up_to_message_id;
    if (to > me.read_up_to) {
        me.read_up_to = to;
        st = store_update(t, &lagoon_table_group_members, &me, err);
    }
    if (st == LAGOON_OK)
        st = groupchat_unread(t, req->group_id, me.read_up_to, &out->unread, err);
    groupchat_unread_display(out->unread, out->unread_display, sizeof(out->unread_display));
    out->read_up_to = me.read_up_to;
    return st;
}

/* Once stored: the read mark to the live subscriptions of the group's members (read receipts,
 * the reader's other devices) as an ephemeral event, never logged. Clients mark a group read as
 * messages arrive, so in a group of N live members one message brings up to N marks, each to N
 * subscriptions: logged, those marks would outnumber the messages in the topic's log (its
 * retention is a count) and flood the topic's lane, which switches every live subscriber to a
 * replay of that log; ephemeral, a flood is dropped at the lane's bound and the log keeps the
 * messages. A member who was away reads its position and counts from MarkRead and
 * Groups/ListMine. */
static int mark_read_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    if (status != LAGOON_OK || in->replayed)
        return status;
    const lagoon_v1_MarkGroupReadRequest *req = in->req;
    const lagoon_v1_GroupUnread *out = resp;
    /* The same position again within GROUPCHAT_TYPING_EVERY_MS (a MarkRead that moved nothing):
     * no second receipt, so that a loop of them is bounded as Typing is; a move is a new key. */
    app *a = app_of(call);
    char key[80];
    snprintf(key, sizeof(key), "r:%llu:%llu:%llu", (unsigned long long)in->who.user_id,
             (unsigned long long)req->group_id, (unsigned long long)out->read_up_to);
    if (limiter_take(app_state(a, &groupchat_module), key, app_now(a)) > 0)
        return status;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev)); /* ~17 KiB: its type can hold a whole message */
    if (ev == NULL)
        return status; /* ephemeral: dropped, as a full lane would */
    ev->which_payload = lagoon_v1_Event_group_read_tag;
    ev->payload.group_read.group_id = req->group_id;
    ev->payload.group_read.reader_id = in->who.user_id;
    ev->payload.group_read.up_to_message_id = out->read_up_to;
    lagoon_v1_Topic tp = group_topic(req->group_id);
    (void)events_topic_ephemeral(a, &tp, ev); /* 0 also when dropped */
    free(ev);
    return status;
}

int handle_GroupChat_MarkRead(rpc_call *call, const lagoon_v1_MarkGroupReadRequest *req, lagoon_v1_GroupUnread *resp)
{
    (void)req;
    (void)resp;
    return app_write_call_then(call, mark_read_write, NULL, mark_read_after);
}

/* To the live subscriptions of the group's members, never stored (events_topic_ephemeral: its
 * own bounds drop a flood), at most one per member and group each GROUPCHAT_TYPING_EVERY_MS:
 * more are answered and dropped, as the indicator still shows. */
int handle_GroupChat_Typing(rpc_call *call, const lagoon_v1_GroupTypingRequest *req, lagoon_v1_GroupChatEmpty *resp)
{
    (void)resp;
    app *a = app_of(call);
    const rpc_caller *who = rpc_call_caller(call);
    store_txn *t;
    store_error err;
    int st = store_read_begin(a->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    member me;
    st = chat_member(t, who, req->group_id, &me, &err);
    store_read_end(t);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    char key[48];
    snprintf(key, sizeof(key), "%llu:%llu", (unsigned long long)who->user_id, (unsigned long long)req->group_id);
    if (limiter_take(app_state(a, &groupchat_module), key, app_now(a)) > 0)
        return LAGOON_OK;
    lagoon_v1_Event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return app_out_of_memory(call);
    ev->which_payload = lagoon_v1_Event_typing_tag;
    ev->payload.typing.user_id = who->user_id;
    ev->payload.typing.expires_in_ms = GROUPCHAT_TYPING_MS;
    lagoon_v1_Topic tp = group_topic(req->group_id);
    st = events_topic_ephemeral(a, &tp, ev);
    free(ev);
    return st == 0 ? LAGOON_OK : app_out_of_memory(call);
}
