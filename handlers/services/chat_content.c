/* chat_content: the content, edit, Send and List rules that direct and group messages share
 * (chat_content.h). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "chat_content.h"

/* ---- content ------------------------------------------------------------------------------- */

void chat_content_copy(pb_size_t *dst_which, void *dst, const chat_tags *dt, pb_size_t which, const void *src,
                       const chat_tags *st)
{
    /* Each member of a oneof's union starts at the union's address. */
    if (which == st->text) {
        lagoon_v1_TextContent *d = dst;
        const lagoon_v1_TextContent *s = src;
        *dst_which = dt->text;
        APP_STRCPY(d->text, s->text);
    } else if (which == st->image) {
        lagoon_v1_ImageContent *d = dst;
        const lagoon_v1_ImageContent *s = src;
        *dst_which = dt->image;
        APP_STRCPY(d->url, s->url);
        d->width = s->width;
        d->height = s->height;
    } else if (which == st->video) {
        lagoon_v1_VideoContent *d = dst;
        const lagoon_v1_VideoContent *s = src;
        *dst_which = dt->video;
        APP_STRCPY(d->url, s->url);
        d->length_seconds = s->length_seconds;
        d->source = s->source;
    } else {
        *dst_which = 0;
    }
}

void chat_snippet(pb_size_t which, const void *src, const chat_tags *st, char *out, size_t cap)
{
    if (which == st->text) {
        const char *text = ((const lagoon_v1_TextContent *)src)->text;
        size_t n = strnlen(text, CHAT_SNIPPET_MAX + 1);
        size_t cut = n < CHAT_SNIPPET_MAX ? n : CHAT_SNIPPET_MAX;
        while (cut > 0 && cut < n && ((unsigned char)text[cut] & 0xC0) == 0x80)
            cut--;
        snprintf(out, cap, "%.*s%s", (int)cut, text, cut < n ? "..." : "");
    } else {
        snprintf(out, cap, which == st->image ? "[image]" : "[video]");
    }
}

int chat_edit_check(pb_size_t which, const chat_tags *st, int64_t created_at, uint32_t edit_count, int64_t now,
                    store_error *err)
{
    if (which != st->text)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "only text messages can be edited");
    if (now - created_at > CHAT_EDIT_WINDOW_MS)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "messages can be edited for 15 minutes");
    if (edit_count >= CHAT_EDITS_MAX)
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL, "a message can be edited at most %d times",
                          CHAT_EDITS_MAX);
    return LAGOON_OK;
}

/* ---- mentions ------------------------------------------------------------------------------ */

static int name_char(char c)
{
    return strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", c) != NULL && c != '\0';
}

size_t chat_mentions(const char *text, char (*names)[CHAT_USERNAME_MAX + 1], size_t max)
{
    size_t found = 0;
    const char *p = text;
    while (found < max && (p = strchr(p, '@')) != NULL) {
        int starts = p == text || !name_char(p[-1]);
        const char *q = ++p;
        while (name_char(*q))
            q++;
        size_t len = (size_t)(q - p);
        while (len > 0 && (p[len - 1] == '.' || p[len - 1] == '-'))
            len--;
        if (starts && len >= 3 && len <= CHAT_USERNAME_MAX) {
            int dup = 0;
            for (size_t i = 0; i < found && !dup; i++)
                dup = strlen(names[i]) == len && strncasecmp(names[i], p, len) == 0;
            if (!dup) {
                memcpy(names[found], p, len);
                names[found++][len] = '\0';
            }
        }
        p = q;
    }
    return found;
}

/* ---- Send ---------------------------------------------------------------------------------- */

const char *chat_send_id(rpc_call *call, const char *client_message_id, size_t cap, const char *method)
{
    const char *cid = client_message_id[0] ? client_message_id : rpc_call_idempotency_key(call);
    if (strlen(cid) >= cap)
        rpc_call_violation(call, "idempotency_key", "at most %zu bytes for %s (it becomes the message's client_message_id)",
                           cap - 1, method);
    return cid;
}

int chat_stored_send(store_txn *t, const store_table *tab, const store_index *ix, uint64_t sender, const char *cid,
                     void *row, store_error *err)
{
    store_key k;
    store_key_reset(&k);
    store_key_u64(&k, sender);
    store_key_str(&k, cid);
    return store_get_by(t, tab, ix, &k, NULL, row, err);
}

int chat_answer_retry(rpc_call *call, const store_table *tab, const store_index *ix, const char *cid, void *resp)
{
    store_txn *t;
    store_error err;
    int st = store_read_begin(app_of(call)->db, &t, &err);
    if (st != LAGOON_OK)
        return app_store_error(call, st, &err);
    st = chat_stored_send(t, tab, ix, rpc_call_caller(call)->user_id, cid, resp, &err);
    store_read_end(t);
    return st == LAGOON_OK || st == LAGOON_NOT_FOUND ? st : app_store_error(call, st, &err);
}

/* Only a Send that stores a message counts: a refused or failed one is given back, and so would
 * be a replayed response (in->replayed: the framework's idempotency, which Send does not use). */
static int send_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)call;
    (void)resp;
    const chat_send_args *sa = in->args;
    if (status != LAGOON_OK || in->replayed)
        limiter_refund(sa->budget, sa->limit_key, sa->taken_at);
    return status;
}

int chat_send_call(rpc_call *call, app_write_fn fn, chat_send_args *sa, limiter *budget, const char *prefix)
{
    app *a = app_of(call);
    sa->budget = budget;
    snprintf(sa->limit_key, sizeof(sa->limit_key), "%s:%llu", prefix,
             (unsigned long long)rpc_call_caller(call)->user_id);
    sa->taken_at = app_now(a);
    /* Checked and counted in one step, so that Sends pipelined at once cannot all pass a check
     * none has counted yet; given back when the Send turns out refused (send_after). */
    uint32_t wait = limiter_take(budget, sa->limit_key, sa->taken_at);
    if (wait > 0) {
        rpc_call_retry_after(call, wait);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many messages; retry in %u s", (wait + 999) / 1000);
    }
    int st = app_write_call_then(call, fn, sa, send_after);
    if (st != RPC_PENDING) /* not queued: send_after does not run */
        limiter_refund(budget, sa->limit_key, sa->taken_at);
    return st;
}

/* ---- List ---------------------------------------------------------------------------------- */

void chat_list_check(rpc_call *call, const chat_page_req *r, paging_list *l)
{
    int numbered = r->page != 0;
    l->size = numbered ? r->per_page : r->page_size;
    l->size_field = numbered ? "per_page" : "page_size";
    l->token = r->page_token;
    l->number = r->page;
    (void)paging_check(call, l); /* its violations join the others, read by the caller */
    if (r->since && numbered)
        rpc_call_violation(call, "since", "cannot be combined with page");
    if (!numbered && r->anchor)
        rpc_call_violation(call, "anchor", "only with page");
}

static int newest_id(void *arg, uint64_t id, const void *row)
{
    (void)row;
    *(uint64_t *)arg = id;
    return LAGOON_OK;
}

int chat_newest(store_txn *t, const store_table *tab, const store_index *ix, const store_key *prefix, uint64_t *id,
                store_error *err)
{
    store_query q = {.table = tab, .index = ix, .prefix = prefix->buf, .prefix_len = prefix->len, .reverse = 1,
                     .page_size = 1};
    store_page page;
    *id = 0;
    return store_scan(t, &q, newest_id, id, &page, err);
}

int chat_list_scan(store_txn *t, paging_list *l, const store_key *prefix, const chat_page_req *r, uint64_t *anchor,
                   store_error *err)
{
    int numbered = r->page != 0;
    *anchor = 0;
    /* Nothing is newer than the largest id (and since + 1 below would wrap to 0). */
    if (r->since == UINT64_MAX)
        return LAGOON_OK;
    l->query.prefix = prefix->buf;
    l->query.prefix_len = prefix->len;
    store_key start = *prefix;
    int st = LAGOON_OK;
    if (r->since) {
        /* Catch-up, oldest first, from the first id after `since` (index keys end in the id). */
        store_key_u64(&start, r->since + 1);
    } else {
        l->query.reverse = 1; /* newest first */
        /* Numbered pages count down from the anchor, so messages sent after page 1 was read do
         * not shift the later pages. */
        *anchor = r->anchor;
        if (numbered && *anchor == 0)
            st = chat_newest(t, l->query.table, l->query.index, prefix, anchor, err);
        if (numbered)
            store_key_u64(&start, *anchor);
    }
    if (start.len > prefix->len) {
        l->query.start = start.buf;
        l->query.start_len = start.len;
    }
    /* A numbered page of a list without messages (no anchor) is empty. */
    if (st == LAGOON_OK && (!numbered || *anchor))
        st = paging_scan(t, l, err);
    return st;
}
