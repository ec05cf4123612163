/* Direct messages end to end through the generated client against the real server and store.
 * The users who write first are verified (an unverified account may only reply: see
 * test_unverified_may_only_reply). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>

#include "lagoon_stubs.h"
#include "messages.h"
#include "testserver.h"

static test_app *T;
static lagoon_client *C;

/* Three users: ann and bob talk; cat is a third party. */
static uint64_t ann, bob, cat;
static char ann_tok[65], bob_tok[65], cat_tok[65];

static int setup(void **state)
{
    (void)state;
    T = test_app_new(test_tweak_shared);
    C = test_client(T);
    ann = test_verified_user(T, C, "ann", lagoon_v1_Role_STUDENT, ann_tok);
    bob = test_verified_user(T, C, "bob", lagoon_v1_Role_TEACHER, bob_tok);
    cat = test_verified_user(T, C, "cat", lagoon_v1_Role_STUDENT, cat_tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lagoon_close(C);
    test_app_free(T);
    return 0;
}

/* (test_has_violation, testserver.h, on this file's client) */
#define has_violation(field) test_has_violation(C, (field))

/* The violation of field says exactly desc. */
static int violation_says(const char *field, const char *desc)
{
    const lagoon_v1_ResponseMeta *m = &lagoon_last_error(C)->detail;
    for (pb_size_t i = 0; i < m->violations_count; i++)
        if (strcmp(m->violations[i].field, field) == 0)
            return strcmp(m->violations[i].description, desc) == 0;
    return 0;
}

static int send_text(const char *token, uint64_t to, const char *text, lagoon_v1_DirectMessage *out)
{
    lagoon_set_token(C, token);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = to;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "%s", text);
    lagoon_v1_DirectMessage tmp;
    return lagoon_Messages_Send(C, &req, out ? out : &tmp);
}

/* Lists a conversation into resp (release with pb_release). */
static int list(const char *token, const lagoon_v1_ListMessagesRequest *req, lagoon_v1_ListMessagesResponse *resp)
{
    lagoon_set_token(C, token);
    memset(resp, 0, sizeof(*resp));
    int st = lagoon_Messages_List(C, req, resp);
    if (st != LAGOON_OK && getenv("LAGOON_TEST_VERBOSE"))
        fprintf(stderr, "List: %s %s [%s: %s]\n", lagoon_status_name(st), lagoon_last_error(C)->detail.message,
                lagoon_last_error(C)->detail.violations[0].field, lagoon_last_error(C)->detail.violations[0].description);
    return st;
}

/* Messages on the first page (the default size) of the caller's conversation with other. */
static pb_size_t first_page_count(const char *token, uint64_t other)
{
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = other;
    lagoon_v1_ListMessagesResponse resp;
    assert_int_equal(list(token, &lr, &resp), LAGOON_OK);
    pb_size_t n = resp.messages_count;
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    return n;
}

static void test_content_types_and_violations(void **state)
{
    (void)state;
    lagoon_v1_DirectMessage m;
    assert_int_equal(send_text(ann_tok, bob, "hello bob", &m), LAGOON_OK);
    assert_true(m.id > 0);
    assert_int_equal(m.sender_id, ann);
    assert_int_equal(m.recipient_id, bob);
    assert_int_equal(m.created_at, T->clock_ms);
    assert_string_equal(m.content.text.text, "hello bob");

    lagoon_set_token(C, ann_tok);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = bob;
    req.which_content = lagoon_v1_SendMessageRequest_image_tag;
    snprintf(req.content.image.url, sizeof(req.content.image.url), "https://img.example.com/a.png");
    req.content.image.width = 640;
    req.content.image.height = 480;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_OK);
    assert_int_equal(m.which_content, lagoon_v1_DirectMessage_image_tag);
    assert_int_equal(m.content.image.width, 640);
    memset(&req.content, 0, sizeof(req.content));
    req.which_content = lagoon_v1_SendMessageRequest_video_tag;
    snprintf(req.content.video.url, sizeof(req.content.video.url), "https://youtu.be/xyz");
    req.content.video.length_seconds = 212;
    req.content.video.source = lagoon_v1_VideoContent_Source_YOUTUBE;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_OK);
    assert_int_equal(m.content.video.source, lagoon_v1_VideoContent_Source_YOUTUBE);

    /* Each violation, and all of one request at once. */
    req.content.video.url[0] = '\0';
    req.content.video.length_seconds = 0;
    req.content.video.source = 0;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("video.url", "is required"));
    assert_true(violation_says("video.length_seconds", "must be positive"));
    assert_true(violation_says("video.source", "must be YOUTUBE, VEVO or OTHER"));
    memset(&req.content, 0, sizeof(req.content));
    req.which_content = lagoon_v1_SendMessageRequest_image_tag;
    snprintf(req.content.image.url, sizeof(req.content.image.url), "javascript:alert(1)");
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("image.url", "must be an http:// or https:// URL without spaces"));
    assert_true(violation_says("image.width", "must be positive"));
    assert_true(violation_says("image.height", "must be positive"));
    req.which_content = 0;
    assert_int_equal(lagoon_Messages_Send(C, &req, &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("content", "one of text, image or video is required"));
    assert_int_equal(send_text(ann_tok, bob, "", &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("text.text", "must not be empty"));
    assert_int_equal(send_text(ann_tok, bob, "a\r\nb", &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("text.text", "must not contain control characters"));
    assert_int_equal(send_text(ann_tok, 0, "to whom", &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("recipient_id", "is required"));
    char *big = malloc(4002);
    memset(big, 'x', 4001);
    big[4001] = '\0';
    assert_int_equal(send_text(ann_tok, bob, big, &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("text.text", "must be at most 4000 characters"));
    big[4000] = '\0'; /* exactly 4000 characters is fine; so is 4000 multi-byte ones */
    assert_int_equal(send_text(ann_tok, bob, big, &m), LAGOON_OK);
    free(big);
    assert_int_equal(send_text(ann_tok, bob, "bad \xff utf-8", &m), LAGOON_INVALID_ARGUMENT);
    assert_int_equal(send_text(ann_tok, ann, "to myself", &m), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("recipient_id", "cannot be yourself"));
    assert_int_equal(send_text(ann_tok, 987654, "to nobody", &m), LAGOON_NOT_FOUND);
    assert_int_equal(send_text("", bob, "anonymous", &m), LAGOON_UNAUTHENTICATED);
}

static void test_idempotent_retry(void **state)
{
    (void)state;
    lagoon_set_token(C, ann_tok);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.recipient_id = cat;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "only once");
    snprintf(req.client_message_id, sizeof(req.client_message_id), "phone-42");
    lagoon_v1_DirectMessage first, again;
    assert_int_equal(lagoon_Messages_Send(C, &req, &first), LAGOON_OK);
    test_clock_advance(T, 5000);
    assert_int_equal(lagoon_Messages_Send(C, &req, &again), LAGOON_OK);
    assert_int_equal(again.id, first.id);
    assert_int_equal(again.created_at, first.created_at);
    /* The same through the call's idempotency key. */
    req.client_message_id[0] = '\0';
    lagoon_set_idempotency_key(C, "retry-key-1");
    assert_int_equal(lagoon_Messages_Send(C, &req, &first), LAGOON_OK);
    lagoon_set_idempotency_key(C, "retry-key-1");
    assert_int_equal(lagoon_Messages_Send(C, &req, &again), LAGOON_OK);
    assert_int_equal(again.id, first.id);
    /* Stored once each. */
    assert_int_equal(first_page_count(ann_tok, cat), 2);
}

/* Edit, Delete and MarkRead are (idempotent): a retry with the same RequestMeta.idempotency_key
 * gets the first response and changes nothing; the key with another request is refused. */
static void test_edit_retried_with_key(void **state)
{
    (void)state;
    char tok_i[65], tok_j[65];
    uint64_t i = test_verified_user(T, C, "ivy", lagoon_v1_Role_STUDENT, tok_i);
    uint64_t j = test_verified_user(T, C, "jay", lagoon_v1_Role_STUDENT, tok_j);
    lagoon_v1_DirectMessage m, first, again;
    assert_int_equal(send_text(tok_i, j, "first words", &m), LAGOON_OK);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = m.id;
    snprintf(er.text, sizeof(er.text), "second words");
    lagoon_set_token(C, tok_i);
    lagoon_set_idempotency_key(C, "edit-key-1");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &first), LAGOON_OK);
    assert_int_equal(first.edit_count, 1);
    test_clock_advance(T, 1000);
    lagoon_set_idempotency_key(C, "edit-key-1");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &again), LAGOON_OK);
    assert_int_equal(again.id, m.id);
    assert_int_equal(again.edit_count, 1);
    assert_int_equal(again.edited_at, first.edited_at);
    assert_string_equal(again.content.text.text, "second words");
    /* The key with another request. */
    snprintf(er.text, sizeof(er.text), "third words");
    lagoon_set_idempotency_key(C, "edit-key-1");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &again), LAGOON_FAILED_PRECONDITION);
    /* What the recipient reads: the first edit, once. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = i;
    lr.page_size = 1;
    lagoon_v1_ListMessagesResponse resp;
    assert_int_equal(list(tok_j, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 1);
    assert_int_equal(resp.messages[0].id, m.id);
    assert_string_equal(resp.messages[0].content.text.text, "second words");
    assert_int_equal(resp.messages[0].edit_count, 1);
    assert_int_equal(resp.messages[0].edited_at, first.edited_at);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    /* Another key is another edit. */
    lagoon_set_token(C, tok_i);
    lagoon_set_idempotency_key(C, "edit-key-2");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &again), LAGOON_OK);
    assert_int_equal(again.edit_count, 2);
    assert_string_equal(again.content.text.text, "third words");

    /* A retried Delete answers as the first did; without the key the message is gone. */
    lagoon_v1_DeleteMessageRequest dr = {m.id};
    lagoon_v1_MessagesEmpty empty;
    lagoon_set_idempotency_key(C, "delete-key-1");
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
    lagoon_set_idempotency_key(C, "delete-key-1");
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_NOT_FOUND);
    /* The deleted words do not come back through a kept Edit response: the retry runs again. */
    snprintf(er.text, sizeof(er.text), "second words");
    memset(&again, 0, sizeof(again));
    lagoon_set_idempotency_key(C, "edit-key-1");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &again), LAGOON_NOT_FOUND);
    assert_string_equal(again.content.text.text, "");
}

/* A conversation of its own for the paging tests: dan and eve. */
static uint64_t dan, eve;
static char dan_tok[65], eve_tok[65];

static void fill_conversation(int n, uint64_t *ids)
{
    char text[32];
    for (int i = 0; i < n; i++) {
        lagoon_v1_DirectMessage m;
        snprintf(text, sizeof(text), "message %d", i);
        assert_int_equal(send_text(i % 2 ? eve_tok : dan_tok, i % 2 ? dan : eve, text, &m), LAGOON_OK);
        ids[i] = m.id;
        test_clock_advance(T, 10);
    }
}

static void test_cursor_and_numbered_pages(void **state)
{
    (void)state;
    dan = test_verified_user(T, C, "dan", lagoon_v1_Role_STUDENT, dan_tok);
    eve = test_verified_user(T, C, "eve", lagoon_v1_Role_STUDENT, eve_tok);
    uint64_t ids[25];
    fill_conversation(25, ids);
    for (int i = 1; i < 25; i++)
        assert_true(ids[i] > ids[i - 1]); /* ids grow within the conversation */

    /* Cursor pages, newest first, with a message sent between pages: no repeat, no gap. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = eve;
    lr.page_size = 10;
    lagoon_v1_ListMessagesResponse resp;
    uint64_t seen[64];
    int n = 0;
    for (int page = 0; page < 10; page++) {
        assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
        for (pb_size_t i = 0; i < resp.messages_count; i++)
            seen[n++] = resp.messages[i].id;
        snprintf(lr.page_token, sizeof(lr.page_token), "%s", resp.next_page_token);
        pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
        if (page == 0)
            assert_int_equal(send_text(eve_tok, dan, "between pages", NULL), LAGOON_OK);
        if (lr.page_token[0] == '\0')
            break;
    }
    assert_int_equal(n, 25); /* the new message is newer than page 1: not in this walk */
    for (int i = 0; i < 25; i++)
        assert_int_equal(seen[i], ids[24 - i]);

    /* Numbered pages: anchored at page 1, so a message sent meanwhile shifts nothing. */
    memset(&lr, 0, sizeof(lr));
    lr.other_user_id = dan;
    lr.per_page = 10;
    lr.page = 1;
    assert_int_equal(list(eve_tok, &lr, &resp), LAGOON_OK);
    uint64_t anchor = resp.anchor;
    assert_int_equal(resp.messages_count, 10);
    uint64_t page1_last = resp.messages[9].id;
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    assert_int_equal(send_text(dan_tok, eve, "meanwhile", NULL), LAGOON_OK);
    lr.page = 2;
    lr.anchor = anchor;
    assert_int_equal(list(eve_tok, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 10);
    assert_true(resp.messages[0].id < page1_last);
    assert_int_equal(resp.messages[0].id, ids[24 - 10 + 1]); /* "between pages" was page 1's top */
    assert_int_equal(resp.anchor, anchor);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    lr.page = 3;
    assert_int_equal(list(eve_tok, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 6); /* 26 messages up to the anchor */
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);

    /* Bounds: the cap is the max_count of ListMessagesResponse.messages in messages.options
     * (what the .proto comment and API.md quote), for both kinds of page. */
    uint32_t cap = lagoon_v1_ListMessagesResponse_info.fields[0].bound;
    assert_int_equal(lagoon_v1_ListMessagesResponse_info.fields[0].tag, lagoon_v1_ListMessagesResponse_messages_tag);
    assert_int_equal(cap, 200);
    memset(&lr, 0, sizeof(lr));
    lr.other_user_id = eve;
    lr.page_size = cap;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 27);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    lr.page_size = cap + 1;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_size"));
    lr.page_size = 0;
    lr.page = 1;
    lr.per_page = cap;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    lr.per_page = cap + 1;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("per_page"));
    memset(&lr, 0, sizeof(lr));
    lr.other_user_id = eve;
    lr.page_size = 0;
    snprintf(lr.page_token, sizeof(lr.page_token), "bogus");
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_token"));
}

static void test_since_catch_up(void **state)
{
    (void)state;
    /* Dan saw everything up to now; then five messages arrive while he is offline. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = eve;
    lr.page_size = 1;
    lagoon_v1_ListMessagesResponse resp;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
    uint64_t last_seen = resp.messages[0].id;
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    uint64_t ids[5];
    char text[16];
    for (int i = 0; i < 5; i++) {
        lagoon_v1_DirectMessage m;
        snprintf(text, sizeof(text), "offline %d", i);
        assert_int_equal(send_text(eve_tok, dan, text, &m), LAGOON_OK);
        ids[i] = m.id;
    }
    memset(&lr, 0, sizeof(lr));
    lr.other_user_id = eve;
    lr.since = last_seen;
    lr.page_size = 3;
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(resp.messages[i].id, ids[i]); /* oldest first */
    snprintf(lr.page_token, sizeof(lr.page_token), "%s", resp.next_page_token);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 2);
    assert_int_equal(resp.messages[1].id, ids[4]);
    assert_string_equal(resp.next_page_token, "");
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    /* Nothing is after the largest ids (since + 1 once wrapped to 0: the whole conversation). */
    const uint64_t huge[] = {UINT64_MAX, UINT64_MAX - 1, ids[4]};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        memset(&lr, 0, sizeof(lr));
        lr.other_user_id = eve;
        lr.since = huge[i];
        assert_int_equal(list(dan_tok, &lr, &resp), LAGOON_OK);
        assert_int_equal(resp.messages_count, 0);
        assert_string_equal(resp.next_page_token, "");
        pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    }
}

static lagoon_v1_ListConversationsResponse conv_resp;

/* Lists the caller's conversations into conv_resp (released by the next call or by
 * conversations_release). */
static lagoon_v1_ListConversationsResponse *conversations(const char *token)
{
    lagoon_v1_ListConversationsResponse *r = &conv_resp;
#define resp (*r)
    pb_release(lagoon_v1_ListConversationsResponse_fields, &resp);
    memset(&resp, 0, sizeof(resp));
    lagoon_set_token(C, token);
    lagoon_v1_ListConversationsRequest req = lagoon_v1_ListConversationsRequest_init_zero;
    int st = lagoon_Messages_ListConversations(C, &req, &resp);
    if (st != LAGOON_OK)
        fail_msg("ListConversations: %s %s", lagoon_status_name(st), lagoon_last_error(C)->detail.message);
#undef resp
    return r;
}

static void conversations_release(void)
{
    pb_release(lagoon_v1_ListConversationsResponse_fields, &conv_resp);
    memset(&conv_resp, 0, sizeof(conv_resp));
}

static const lagoon_v1_ConversationSummary *with(const lagoon_v1_ListConversationsResponse *r, uint64_t other)
{
    for (pb_size_t i = 0; i < r->conversations_count; i++)
        if (r->conversations[i].other_user.id == other)
            return &r->conversations[i];
    fail_msg("no conversation with user %llu", (unsigned long long)other);
    return NULL;
}

static void test_conversations_and_unread(void **state)
{
    (void)state;
    char tok_f[65], tok_g[65], tok_h[65];
    uint64_t f = test_verified_user(T, C, "fred", 1, tok_f), g = test_verified_user(T, C, "gina", 1, tok_g);
    uint64_t h = test_verified_user(T, C, "hugo", 1, tok_h);
    lagoon_v1_DirectMessage m1, m2, m3;
    assert_int_equal(send_text(tok_g, f, "g1", &m1), LAGOON_OK);
    test_clock_advance(T, 100);
    assert_int_equal(send_text(tok_h, f, "h1", &m2), LAGOON_OK);
    test_clock_advance(T, 100);
    assert_int_equal(send_text(tok_g, f, "g2", &m3), LAGOON_OK);
    /* Most recent first, each with the other user, the last message and the unread count. */
    lagoon_v1_ListConversationsResponse *r = conversations(tok_f);
    assert_int_equal(r->conversations_count, 2);
    assert_int_equal(r->conversations[0].other_user.id, g);
    assert_string_equal(r->conversations[0].other_user.username, "gina");
    assert_true(r->conversations[0].has_last_message);
    assert_string_equal(r->conversations[0].last_message.content.text.text, "g2");
    assert_int_equal(r->conversations[0].unread, 2);
    assert_int_equal(r->conversations[1].other_user.id, h);
    assert_int_equal(r->conversations[1].unread, 1);
    /* The sender has nothing unread. */
    assert_int_equal(with(conversations(tok_g), f)->unread, 0);
    /* Read up to the first: one left; then all. */
    lagoon_set_token(C, tok_f);
    lagoon_v1_MarkReadRequest mr = {g, m1.id};
    lagoon_v1_MarkReadResponse mresp;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    assert_int_equal(mresp.unread, 1);
    mr.up_to_message_id = 0;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    assert_int_equal(mresp.unread, 0);
    assert_int_equal(with(conversations(tok_f), g)->unread, 0);
    assert_int_equal(with(conversations(tok_f), h)->unread, 1);
    /* Reading backwards changes nothing. */
    mr.up_to_message_id = m1.id;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_OK);
    assert_int_equal(mresp.unread, 0);
    /* No conversation, no read position. */
    lagoon_set_token(C, tok_h);
    mr.other_user_id = g;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &mresp), LAGOON_NOT_FOUND);
    conversations_release();
    lagoon_set_token(C, NULL);
    (void)tok_h;
}

static void test_edit_window_and_delete(void **state)
{
    (void)state;
    lagoon_v1_DirectMessage m, e;
    assert_int_equal(send_text(ann_tok, bob, "typo here", &m), LAGOON_OK);
    lagoon_v1_EditMessageRequest er = lagoon_v1_EditMessageRequest_init_zero;
    er.message_id = m.id;
    /* The request's own bounds (its rules). */
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("text", "must not be empty"));
    er.message_id = 0;
    snprintf(er.text, sizeof(er.text), "no typo");
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("message_id", "is required"));
    er.message_id = m.id;
    /* Only the sender edits; a third party does not even learn it exists. */
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_PERMISSION_DENIED);
    lagoon_set_token(C, cat_tok);
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_NOT_FOUND);
    lagoon_set_token(C, ann_tok);
    test_clock_advance(T, 60 * 1000);
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_OK);
    assert_string_equal(e.content.text.text, "no typo");
    assert_int_equal(e.edited_at, T->clock_ms);
    /* The edit is what both sides now read. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = ann;
    lr.page_size = 1;
    lagoon_v1_ListMessagesResponse resp;
    assert_int_equal(list(bob_tok, &lr, &resp), LAGOON_OK);
    assert_string_equal(resp.messages[0].content.text.text, "no typo");
    assert_true(resp.messages[0].edited_at > 0);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    /* 15 minutes after sending, editing is over. */
    test_clock_advance(T, 15 * 60 * 1000);
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_Edit(C, &er, &e), LAGOON_FAILED_PRECONDITION);

    /* Delete: the other side sees it removed, its unread count and summary follow. */
    lagoon_v1_DirectMessage last;
    assert_int_equal(send_text(ann_tok, bob, "regret", &last), LAGOON_OK);
    lagoon_v1_ListConversationsResponse *r = conversations(bob_tok);
    uint32_t unread = with(r, ann)->unread;
    assert_string_equal(with(r, ann)->last_message.content.text.text, "regret");
    lagoon_v1_DeleteMessageRequest dr = {0};
    lagoon_v1_MessagesEmpty empty;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_INVALID_ARGUMENT);
    assert_true(violation_says("message_id", "is required"));
    dr.message_id = last.id;
    lagoon_set_token(C, cat_tok);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_NOT_FOUND);
    lagoon_set_token(C, bob_tok);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_PERMISSION_DENIED);
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_NOT_FOUND);
    r = conversations(bob_tok);
    assert_int_equal(with(r, ann)->unread, unread - 1);
    assert_string_equal(with(r, ann)->last_message.content.text.text, "no typo");
    assert_int_equal(list(bob_tok, &lr, &resp), LAGOON_OK);
    assert_int_not_equal(resp.messages[0].id, last.id);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    conversations_release();
}

static void test_third_party_sees_nothing(void **state)
{
    (void)state;
    /* Cat asking for "her conversation with ann" gets hers (one message), never ann and bob's. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = ann;
    lagoon_v1_ListMessagesResponse resp;
    assert_int_equal(list(cat_tok, &lr, &resp), LAGOON_OK);
    for (pb_size_t i = 0; i < resp.messages_count; i++) {
        assert_true(resp.messages[i].sender_id == cat || resp.messages[i].recipient_id == cat);
    }
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    lr.other_user_id = cat;
    assert_int_equal(list(cat_tok, &lr, &resp), LAGOON_INVALID_ARGUMENT);
}

static void test_account_deletion_removes_conversations(void **state)
{
    (void)state;
    char tok_x[65];
    uint64_t x = test_verified_user(T, C, "xena", 1, tok_x);
    assert_int_equal(send_text(tok_x, ann, "bye", NULL), LAGOON_OK);
    assert_int_equal(send_text(ann_tok, x, "bye too", NULL), LAGOON_OK);
    lagoon_set_token(C, tok_x);
    lagoon_v1_DeleteAccountRequest dr = lagoon_v1_DeleteAccountRequest_init_zero;
    snprintf(dr.password, sizeof(dr.password), "%s", TEST_PASSWORD);
    lagoon_v1_UsersEmpty e;
    assert_int_equal(lagoon_Users_DeleteAccount(C, &dr, &e), LAGOON_OK);
    /* Ann's list no longer has the conversation; nothing dangles in the store. */
    lagoon_v1_ListConversationsResponse *r = conversations(ann_tok);
    for (pb_size_t i = 0; i < r->conversations_count; i++)
        assert_int_not_equal(r->conversations[i].other_user.id, x);
    conversations_release();
    uint64_t problems = 99;
    store_error err;
    assert_int_equal(store_verify(T->app->db, stderr, &problems, &err), LAGOON_OK);
    assert_int_equal(problems, 0);
}

/* ---- unread counts: exact across Send, Delete and MarkRead ------------------------------------ */

/* What the server should say, from the outside: the conversation's live messages and each side's
 * read position. */
#define MODEL_MAX 512
typedef struct model {
    uint64_t user[2];
    const char *tok[2];
    uint64_t id[MODEL_MAX];
    int sender[MODEL_MAX]; /* 0 or 1 */
    int live[MODEL_MAX];
    int n;
    uint64_t read[2];
} model;

static uint64_t model_last(const model *md)
{
    for (int i = md->n - 1; i >= 0; i--)
        if (md->live[i])
            return md->id[i];
    return 0;
}

static uint32_t model_unread(const model *md, int who)
{
    uint32_t n = 0;
    for (int i = 0; i < md->n; i++)
        n += md->live[i] && md->sender[i] != who && md->id[i] > md->read[who];
    return n;
}

/* Both sides' counts, as ListConversations shows them, equal the model's. */
static void model_check(const model *md)
{
    for (int who = 0; who < 2; who++) {
        const lagoon_v1_ConversationSummary *cs = with(conversations(md->tok[who]), md->user[!who]);
        if (cs->unread != model_unread(md, who))
            fail_msg("user %d: unread %u, expected %u", who, (unsigned)cs->unread, (unsigned)model_unread(md, who));
    }
}

static int model_send(model *md, int who)
{
    lagoon_v1_DirectMessage m;
    char text[24];
    snprintf(text, sizeof(text), "model %d", md->n);
    assert_true(md->n < MODEL_MAX);
    assert_int_equal(send_text(md->tok[who], md->user[!who], text, &m), LAGOON_OK);
    md->id[md->n] = m.id;
    md->sender[md->n] = who;
    md->live[md->n] = 1;
    return md->n++;
}

static void model_delete(model *md, int k)
{
    lagoon_set_token(C, md->tok[md->sender[k]]);
    lagoon_v1_DeleteMessageRequest dr = {md->id[k]};
    lagoon_v1_MessagesEmpty empty;
    assert_int_equal(lagoon_Messages_Delete(C, &dr, &empty), LAGOON_OK);
    md->live[k] = 0;
}

/* who marks read up to message k (-1: everything so far); returns the response. The model moves
 * as the API says, or to `expect_stop` (a message index) when the call stops short. */
static lagoon_v1_MarkReadResponse model_mark(model *md, int who, int k, int expect_stop)
{
    lagoon_set_token(C, md->tok[who]);
    lagoon_v1_MarkReadRequest mr = {md->user[!who], k < 0 ? 0 : md->id[k]};
    lagoon_v1_MarkReadResponse resp;
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &resp), LAGOON_OK);
    uint64_t last = model_last(md);
    uint64_t to = k < 0 || md->id[k] > last ? last : md->id[k];
    if (expect_stop >= 0)
        to = md->id[expect_stop];
    if (to > md->read[who])
        md->read[who] = to;
    assert_int_equal(resp.read_up_to, md->read[who]);
    assert_int_equal(resp.unread, model_unread(md, who));
    return resp;
}

static void test_unread_stays_exact(void **state)
{
    (void)state;
    static model md;
    memset(&md, 0, sizeof(md));
    char tok[2][65];
    md.user[0] = test_verified_user(T, C, "pia", 1, tok[0]);
    md.user[1] = test_verified_user(T, C, "quin", 1, tok[1]);
    md.tok[0] = tok[0];
    md.tok[1] = tok[1];
    /* Short sequences: every kind of step, checked after each. */
    int a0 = model_send(&md, 0), a1 = model_send(&md, 0), a2 = model_send(&md, 0);
    model_check(&md);
    int b0 = model_send(&md, 1); /* a reply reads nothing */
    model_check(&md);
    model_mark(&md, 1, a0, -1);
    model_check(&md);
    model_delete(&md, a2); /* unread, and the last from pia */
    model_check(&md);
    model_delete(&md, a0); /* already read: the count stays */
    model_check(&md);
    int a3 = model_send(&md, 0);
    model_mark(&md, 1, b0, -1); /* up to quin's own message: a1 becomes read */
    model_check(&md);
    model_mark(&md, 1, a0, -1); /* backwards: nothing changes */
    model_check(&md);
    model_mark(&md, 0, -1, -1);
    model_check(&md);
    model_delete(&md, a3);
    model_delete(&md, b0);
    model_mark(&md, 1, -1, -1); /* everything so far is a1 now, already read */
    model_check(&md);
    (void)a1;

    /* A long unread stretch: 450 messages from pia. MarkRead looks at no more than 200 messages
     * on each side of the new position, so a position deep inside it is reached in steps. */
    int first = md.n;
    for (int i = 0; i < 450; i++)
        model_send(&md, 0);
    model_check(&md);
    model_mark(&md, 1, first + 224, first + 199); /* 225 before and 225 after: stops at 200 */
    model_check(&md);
    model_mark(&md, 1, first + 224, -1); /* the remaining 25 */
    model_check(&md);
    model_delete(&md, first + 300);
    model_delete(&md, first + 100);
    model_check(&md);
    model_mark(&md, 1, first + 400, -1); /* few after it: counted */
    model_check(&md);
    model_send(&md, 1);
    model_check(&md);
    model_mark(&md, 1, -1, -1);
    model_check(&md);
    assert_int_equal(model_unread(&md, 1), 0);
    conversations_release();
}

/* Sets a member row's unread count behind the API's back (arg: uint64_t[3] conversation, user,
 * count): the state an older version left after a reply. */
static int set_unread(store_txn *t, void *arg, store_error *err)
{
    const uint64_t *a = arg;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, a[0]);
    store_key_u64(&k, a[1]);
    lagoon_v1_ConversationMember m;
    int st = store_get_by(t, &lagoon_table_conversation_members, lagoon_index_conversation_members_by_conv_user, &k,
                          NULL, &m, err);
    m.unread = (uint32_t)a[2];
    return st == LAGOON_OK ? store_update(t, &lagoon_table_conversation_members, &m, err) : st;
}

static void test_mark_all_read_clears_old_counts(void **state)
{
    (void)state;
    /* Ann replied last to bob; a count left over from before is cleared by reading everything,
     * although her read position does not move. */
    assert_int_equal(send_text(ann_tok, bob, "last word", NULL), LAGOON_OK);
    lagoon_v1_MarkReadRequest mr = {bob, 0};
    lagoon_v1_MarkReadResponse resp;
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &resp), LAGOON_OK);
    assert_int_equal(resp.unread, 0);
    uint64_t arg[3] = {with(conversations(ann_tok), bob)->conversation_id, ann, 3};
    store_error err;
    assert_int_equal(store_write(T->app->db, set_unread, arg, &err), LAGOON_OK);
    assert_int_equal(with(conversations(ann_tok), bob)->unread, 3);
    lagoon_set_token(C, ann_tok);
    assert_int_equal(lagoon_Messages_MarkRead(C, &mr, &resp), LAGOON_OK);
    assert_int_equal(resp.unread, 0);
    assert_int_equal(with(conversations(ann_tok), bob)->unread, 0);
    conversations_release();
}

/* ---- what email verification unlocks ------------------------------------------------------------- */

/* A conversation of the two users of arg (uint64_t[2]) with its members, straight into the store:
 * what a conversation looks like where neither has received a message. */
static int seed_conversation(store_txn *t, void *arg, store_error *err)
{
    const uint64_t *u = arg;
    lagoon_v1_Conversation conv = lagoon_v1_Conversation_init_zero;
    conv.user_low = u[0] < u[1] ? u[0] : u[1];
    conv.user_high = u[0] < u[1] ? u[1] : u[0];
    int st = store_insert(t, &lagoon_table_conversations, &conv, NULL, err);
    for (int i = 0; i < 2 && st == LAGOON_OK; i++) {
        lagoon_v1_ConversationMember m = lagoon_v1_ConversationMember_init_zero;
        m.conversation_id = conv.id;
        m.user_id = u[i];
        m.other_user_id = u[!i];
        st = store_insert(t, &lagoon_table_conversation_members, &m, NULL, err);
    }
    return st;
}

static void test_unverified_may_only_reply(void **state)
{
    (void)state;
    char una_tok[65], vic_tok[65];
    uint64_t una = test_user(C, "una", 1, una_tok); /* unverified */
    uint64_t vic = test_verified_user(T, C, "vic", 1, vic_tok);
    /* Writing first to anyone is refused, with what to do about it; nothing is created. */
    const uint64_t strangers[] = {bob, vic};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(send_text(una_tok, strangers[i], "hello stranger", NULL), LAGOON_PERMISSION_DENIED);
        assert_non_null(strstr(lagoon_last_error(C)->detail.message, "verify your email"));
    }
    assert_int_equal(first_page_count(bob_tok, una), 0);
    /* Once vic has written to her, she may answer him (and go on), but still not write to bob. */
    assert_int_equal(send_text(vic_tok, una, "welcome", NULL), LAGOON_OK);
    assert_int_equal(send_text(una_tok, vic, "thanks", NULL), LAGOON_OK);
    assert_int_equal(send_text(una_tok, vic, "and more", NULL), LAGOON_OK);
    assert_int_equal(send_text(una_tok, bob, "hello bob", NULL), LAGOON_PERMISSION_DENIED);
    /* Vic writing to her opens that one conversation only. */
    assert_int_equal(send_text(una_tok, cat, "hi cat", NULL), LAGOON_PERMISSION_DENIED);
    /* A conversation row alone (one that only she has written in, or from before members
     * recorded who wrote) does not let her write: the other user must have. */
    uint64_t pair[2] = {una, cat};
    store_error err;
    assert_int_equal(store_write(T->app->db, seed_conversation, pair, &err), LAGOON_OK);
    assert_int_equal(send_text(una_tok, cat, "hi cat", NULL), LAGOON_PERMISSION_DENIED);
    assert_int_equal(send_text(cat_tok, una, "hi una", NULL), LAGOON_OK);
    assert_int_equal(send_text(una_tok, cat, "hi cat", NULL), LAGOON_OK);
    /* Verifying unlocks writing first, on the session she already has. */
    char code[44];
    assert_true(test_mail_code(T, "una@example.com", "Verify", code, 5000));
    lagoon_v1_VerifyEmailRequest vr = lagoon_v1_VerifyEmailRequest_init_zero;
    snprintf(vr.token, sizeof(vr.token), "%s", code);
    lagoon_v1_AuthEmpty out;
    lagoon_set_token(C, NULL);
    assert_int_equal(lagoon_Auth_VerifyEmail(C, &vr, &out), LAGOON_OK);
    assert_int_equal(send_text(una_tok, bob, "hello bob", NULL), LAGOON_OK);
}

/* ---- the per-user Send limit ------------------------------------------------------------------------ */

/* The shared tweak, with the Send limit back at its defaults. */
static void tweak_default_sends(app_config *acfg, rpc_config *cfg)
{
    test_tweak_shared(acfg, cfg);
    memset(&acfg->sends, 0, sizeof(acfg->sends));
}

static void test_send_rate_limit(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_default_sends);
    lagoon_client *c = test_client(t);
    char wen_tok[65], xia_tok[65];
    uint64_t wen = test_verified_user(t, c, "wen", 1, wen_tok), xia = test_verified_user(t, c, "xia", 1, xia_tok);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "flood");
    lagoon_v1_DirectMessage m;
    /* 60 a minute (the clock stands still here), then RESOURCE_EXHAUSTED saying when to retry. */
    lagoon_set_token(c, wen_tok);
    req.recipient_id = xia;
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 1000);
    /* An invalid request is still told what is wrong (and does not count). */
    req.content.text.text[0] = '\0';
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_INVALID_ARGUMENT);
    snprintf(req.content.text.text, sizeof(req.content.text.text), "flood");
    /* Another user is not held back by wen's flood. */
    lagoon_set_token(c, xia_tok);
    req.recipient_id = wen;
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    /* After the wait one more, then a wait twice as long. */
    lagoon_set_token(c, wen_tok);
    req.recipient_id = xia;
    test_clock_advance(t, 999);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_RESOURCE_EXHAUSTED);
    test_clock_advance(t, 1);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_RESOURCE_EXHAUSTED);
    assert_int_equal(lagoon_last_error(c)->detail.retry_after_ms, 2000);
    /* A refused Send stored nothing: 61 from wen. */
    lagoon_v1_ListMessagesRequest lr = lagoon_v1_ListMessagesRequest_init_zero;
    lr.other_user_id = xia;
    lr.page_size = 100;
    lagoon_v1_ListMessagesResponse resp = lagoon_v1_ListMessagesResponse_init_zero;
    assert_int_equal(lagoon_Messages_List(c, &lr, &resp), LAGOON_OK);
    assert_int_equal(resp.messages_count, 62);
    pb_release(lagoon_v1_ListMessagesResponse_fields, &resp);
    /* Once the minute is over and the wait served, the count starts again. */
    test_clock_advance(t, 60 * 1000);
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_RESOURCE_EXHAUSTED);
    lagoon_close(c);
    test_app_free(t);
}

/* Retries of a stored Send (its client_message_id, or the call's idempotency key standing in
 * for it) do not count against the budget and are answered even past it; a key too long to be
 * a client_message_id is refused naming the key. */
static void test_send_retries_do_not_count(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_default_sends);
    lagoon_client *c = test_client(t);
    char ada_tok[65], bo_tok[65];
    test_verified_user(t, c, "ada", 1, ada_tok); /* usernames: at least 3 characters */
    uint64_t bo = test_verified_user(t, c, "bob", 1, bo_tok);
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    req.recipient_id = bo;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "once");
    snprintf(req.client_message_id, sizeof(req.client_message_id), "cm-1");
    lagoon_set_token(c, ada_tok);
    lagoon_v1_DirectMessage first, m;
    assert_int_equal(lagoon_Messages_Send(c, &req, &first), LAGOON_OK);
    /* 100 retries, then 59 new messages: the 60th of the minute is the first. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
        assert_int_equal(m.id, first.id);
    }
    lagoon_v1_SendMessageRequest fresh = req;
    fresh.client_message_id[0] = '\0';
    for (int i = 0; i < 59; i++)
        assert_int_equal(lagoon_Messages_Send(c, &fresh, &m), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Send(c, &fresh, &m), LAGOON_RESOURCE_EXHAUSTED);
    /* Past the budget, the retry still gets its message. */
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    assert_int_equal(m.id, first.id);
    assert_string_equal(m.content.text.text, "once");
    /* The idempotency key as client_message_id: at most 64 bytes, refused naming the key. */
    char key[100];
    memset(key, 'k', 80);
    key[80] = '\0';
    lagoon_set_idempotency_key(c, key);
    assert_int_equal(lagoon_Messages_Send(c, &fresh, &m), LAGOON_INVALID_ARGUMENT);
    const lagoon_v1_ResponseMeta *meta = &lagoon_last_error(c)->detail;
    assert_int_equal(meta->violations_count, 1);
    assert_string_equal(meta->violations[0].field, "idempotency_key");
    lagoon_close(c);
    test_app_free(t);
}

/* Refused Sends (no such recipient, or an unverified sender writing first) store nothing and do
 * not count against the sender's budget: 60 of them, then 60 real ones still pass. */
static void test_refused_sends_do_not_count(void **state)
{
    (void)state;
    test_app *t = test_app_new(tweak_default_sends);
    lagoon_client *c = test_client(t);
    char yan_tok[65], zoe_tok[65], una_tok[65];
    uint64_t yan = test_verified_user(t, c, "yan", 1, yan_tok);
    uint64_t zoe = test_verified_user(t, c, "zoe", 1, zoe_tok);
    uint64_t uma = test_user(c, "uma", 1, una_tok); /* unverified */
    lagoon_v1_SendMessageRequest req = lagoon_v1_SendMessageRequest_init_zero;
    req.which_content = lagoon_v1_SendMessageRequest_text_tag;
    snprintf(req.content.text.text, sizeof(req.content.text.text), "hello");
    lagoon_v1_DirectMessage m;
    lagoon_set_token(c, yan_tok);
    req.recipient_id = 999999;
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_NOT_FOUND);
    req.recipient_id = zoe;
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_RESOURCE_EXHAUSTED);
    lagoon_set_token(c, una_tok);
    req.recipient_id = yan;
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_PERMISSION_DENIED);
    /* Once yan writes to her she may answer: her budget is whole. */
    lagoon_set_token(c, yan_tok);
    test_clock_advance(t, 2 * 60 * 1000); /* yan's own wait */
    req.recipient_id = uma;
    assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    lagoon_set_token(c, una_tok);
    req.recipient_id = yan;
    for (int i = 0; i < 60; i++)
        assert_int_equal(lagoon_Messages_Send(c, &req, &m), LAGOON_OK);
    lagoon_close(c);
    test_app_free(t);
}

/* A member row of arg's pair (uint64_t[2]: the member, the other) as rows from before
 * other_wrote look: false, and nothing unread. */
static int forget_other_wrote(store_txn *t, void *arg, store_error *err)
{
    const uint64_t *u = arg;
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, u[0] < u[1] ? u[0] : u[1]);
    store_key_u64(&k, u[0] < u[1] ? u[1] : u[0]);
    lagoon_v1_Conversation conv;
    int st = store_get_by(t, &lagoon_table_conversations, lagoon_index_conversations_by_pair, &k, NULL, &conv, err);
    store_key_reset(&k);
    store_key_u64(&k, conv.id);
    store_key_u64(&k, u[0]);
    lagoon_v1_ConversationMember mem;
    if (st == LAGOON_OK)
        st = store_get_by(t, &lagoon_table_conversation_members, lagoon_index_conversation_members_by_conv_user, &k,
                          NULL, &mem, err);
    mem.other_wrote = false;
    mem.unread = 0;
    return st == LAGOON_OK ? store_update(t, &lagoon_table_conversation_members, &mem, err) : st;
}

/* In a conversation from before other_wrote existed, an unverified member whose partner has
 * written may reply: it is derived from the messages (and then recorded). */
static void test_other_wrote_derived_for_old_conversations(void **state)
{
    (void)state;
    char ola_tok[65], pat_tok[65];
    uint64_t ola = test_user(C, "ola", 1, ola_tok); /* unverified */
    uint64_t pat = test_verified_user(T, C, "pat", 1, pat_tok);
    assert_int_equal(send_text(pat_tok, ola, "hi ola", NULL), LAGOON_OK);
    uint64_t pair[2] = {ola, pat};
    store_error err;
    assert_int_equal(store_write(T->app->db, forget_other_wrote, pair, &err), LAGOON_OK);
    assert_int_equal(send_text(ola_tok, pat, "hello pat", NULL), LAGOON_OK);
    assert_int_equal(store_write(T->app->db, forget_other_wrote, pair, &err), LAGOON_OK);
    assert_int_equal(send_text(ola_tok, pat, "again", NULL), LAGOON_OK);
}

static void test_conversation_page_cap(void **state)
{
    (void)state;
    /* The cap is ListConversationsResponse.conversations' max_count in messages.options. */
    uint32_t cap = lagoon_v1_ListConversationsResponse_info.fields[0].bound;
    assert_int_equal(lagoon_v1_ListConversationsResponse_info.fields[0].tag,
                     lagoon_v1_ListConversationsResponse_conversations_tag);
    assert_int_equal(cap, 100);
    lagoon_set_token(C, ann_tok);
    lagoon_v1_ListConversationsRequest req = lagoon_v1_ListConversationsRequest_init_zero;
    lagoon_v1_ListConversationsResponse resp = lagoon_v1_ListConversationsResponse_init_zero;
    req.page_size = cap;
    assert_int_equal(lagoon_Messages_ListConversations(C, &req, &resp), LAGOON_OK);
    assert_true(resp.conversations_count > 0);
    pb_release(lagoon_v1_ListConversationsResponse_fields, &resp);
    req.page_size = cap + 1;
    assert_int_equal(lagoon_Messages_ListConversations(C, &req, &resp), LAGOON_INVALID_ARGUMENT);
    assert_true(has_violation("page_size"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_types_and_violations),
        cmocka_unit_test(test_idempotent_retry),
        cmocka_unit_test(test_edit_retried_with_key),
        cmocka_unit_test(test_cursor_and_numbered_pages),
        cmocka_unit_test(test_since_catch_up),
        cmocka_unit_test(test_conversations_and_unread),
        cmocka_unit_test(test_edit_window_and_delete),
        cmocka_unit_test(test_third_party_sees_nothing),
        cmocka_unit_test(test_account_deletion_removes_conversations),
        cmocka_unit_test(test_unread_stays_exact),
        cmocka_unit_test(test_mark_all_read_clears_old_counts),
        cmocka_unit_test(test_unverified_may_only_reply),
        cmocka_unit_test(test_send_rate_limit),
        cmocka_unit_test(test_refused_sends_do_not_count),
        cmocka_unit_test(test_send_retries_do_not_count),
        cmocka_unit_test(test_other_wrote_derived_for_old_conversations),
        cmocka_unit_test(test_conversation_page_cap),
    };
    return cmocka_run_group_tests_name("messages", tests, setup, teardown);
}
