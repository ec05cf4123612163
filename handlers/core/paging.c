/* Paged reads for list methods (paging.h). */
#include "paging.h"

#include <stdlib.h>
#include <string.h>

#include "app.h"

uint32_t paging_cap(const wire_msginfo *resp, uint32_t items_tag)
{
    uint32_t bound = 0;
    for (size_t i = 0; i < resp->nfields; i++)
        if (resp->fields[i].tag == items_tag)
            bound = resp->fields[i].bound;
    return bound == 0 ? 1 : bound < STORE_PAGE_SIZE_MAX ? bound : STORE_PAGE_SIZE_MAX;
}

int paging_check(rpc_call *call, paging_list *l)
{
    uint32_t cap = paging_cap(l->resp, l->items_tag);
    int bad = 0;
    if (l->size > cap) {
        rpc_call_violation(call, l->size_field ? l->size_field : "page_size", "at most %u", cap);
        bad = 1;
    }
    if (l->number && l->token && l->token[0]) {
        rpc_call_violation(call, "page", "use either page or page_token, not both");
        bad = 1;
    }
    l->limit = l->size ? l->size : PAGING_SIZE_DEFAULT < cap ? PAGING_SIZE_DEFAULT : cap;
    /* The store skips (page - 1) * size rows one by one: deeper pages must use tokens. Checked
     * here so that the violation names the request's field. */
    if (!bad && l->number && (uint64_t)(l->number - 1) * l->limit > STORE_OFFSET_MAX) {
        rpc_call_violation(call, "page",
                           "page %u is too deep for offset paging (at most %d rows are skipped): use page tokens",
                           l->number, STORE_OFFSET_MAX);
        bad = 1;
    }
    return bad ? LAGOON_INVALID_ARGUMENT : LAGOON_OK;
}

/* store_scan's row function: one item per kept row, never more than limit. */
static int collect(void *arg, uint64_t id, const void *row)
{
    (void)id;
    paging_list *l = arg;
    if (l->count >= l->limit)
        return LAGOON_OK;
    void *item = (char *)l->items + (size_t)l->count * l->item_size;
    if (l->item(l->arg, item, row))
        l->count++;
    else
        memset(item, 0, l->item_size); /* the slot is reused: nothing of the skipped row stays */
    return LAGOON_OK;
}

int paging_scan(store_txn *t, paging_list *l, store_error *err)
{
    l->count = 0;
    l->next_page_token[0] = '\0';
    l->items = calloc(l->limit, l->item_size);
    if (l->items == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    store_query q = l->query;
    q.page_size = l->limit;
    q.page_number = l->number;
    q.page_token = l->number ? NULL : l->token;
    store_page page;
    int st = store_scan(t, &q, collect, l, &page, err);
    /* Numbered pages need no token; cursor pages get the next one. */
    if (st == LAGOON_OK && l->number == 0)
        memcpy(l->next_page_token, page.next_page_token, sizeof(l->next_page_token));
    return st;
}

int paging_read(rpc_call *call, paging_list *l)
{
    int st = paging_check(call, l);
    if (st != LAGOON_OK)
        return st;
    store_txn *t;
    store_error err;
    st = store_read_begin(app_of(call)->db, &t, &err);
    if (st == LAGOON_OK) {
        st = paging_scan(t, l, &err);
        store_read_end(t);
    }
    return st == LAGOON_OK ? LAGOON_OK : app_store_error(call, st, &err);
}
