/* Paged reads for list methods: one helper serves cursor pages (page_token, MACed by the
 * store) and numbered pages (page, from 1) over any table or index, key prefix and direction.
 *
 * A list method fills a paging_list with its request's paging fields, the store_query of
 * what to read and a function that turns one row into one item of its response, then calls
 * paging_read. The page cap is the max_count (.options) of the response's repeated field,
 * read from the generated wire_fieldinfo bound: the IDL is its one source of truth. */
#ifndef LAGOON_PAGING_H
#define LAGOON_PAGING_H

#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "store.h"
#include "wire.h"

/* The page size when a request leaves it 0 (or the cap, if that is lower). */
#define PAGING_SIZE_DEFAULT STORE_PAGE_SIZE_DEFAULT

/* Turns row (decoded by the store, valid during the call only) into *item (item_size bytes,
 * zeroed). Returns 1 if it is an item of the page, 0 to leave the row out (the slot is reused). */
typedef int (*paging_item_fn)(void *arg, void *item, const void *row);

typedef struct paging_list {
    /* In: the request's paging fields, as sent. */
    uint32_t size;          /* page_size (or per_page): 0 = the default */
    const char *size_field; /* its name in violations; NULL = "page_size" */
    const char *token;      /* page_token: NULL or "" = the first page */
    uint32_t number;        /* page, from 1; 0 = cursor pages */
    /* In: the response's repeated field; its max_count in the .options caps `size`. */
    const wire_msginfo *resp;
    uint32_t items_tag;
    /* In: what to read. Only table, index, prefix, start and reverse are used; paging_read
     * sets the paging fields from the ones above. */
    store_query query;
    /* In: how a row becomes an item. */
    paging_item_fn item;
    void *arg;
    size_t item_size;
    /* Out (paging_check): the page size used, never above the cap. */
    uint32_t limit;
    /* Out (paging_read): `limit` items of item_size bytes (calloc'd: hand them to the
     * response's pointer field, which the RPC layer frees), `count` of them filled, and the
     * token of the next cursor page ("" on the last page and for numbered pages). */
    void *items;
    uint32_t count;
    char next_page_token[STORE_PAGE_TOKEN_MAX + 1];
} paging_list;

/* The cap of a page of resp's repeated field items_tag: its bound (max_count in the
 * .options), at most STORE_PAGE_SIZE_MAX. The generator refuses a repeated field without
 * max_count, so the fallback of 1 (still a valid page) is never used. */
uint32_t paging_cap(const wire_msginfo *resp, uint32_t items_tag);

/* Checks the paging fields and sets l->limit. Each problem is a violation on the call, all
 * of them at once: the size above the cap ("<size_field>": "at most N"), a page together
 * with a token ("page": "use either page or page_token, not both"), a page too deep for
 * offset paging ("page", the store's text). Returns LAGOON_OK or LAGOON_INVALID_ARGUMENT;
 * a handler with checks of its own may call it first and look at rpc_call_violations. */
int paging_check(rpc_call *call, paging_list *l);

/* Reads one page in t: paging_check must have passed. Allocates l->items (freed by the
 * caller, normally through the response) and fills count and next_page_token. A forged or
 * damaged token is INVALID_ARGUMENT with *err naming "page_token". */
int paging_scan(store_txn *t, paging_list *l, store_error *err);

/* paging_check, then paging_scan in a read transaction of its own; a failure is the call's
 * error (app_store_error). The usual list method is this call and a few lines. */
int paging_read(rpc_call *call, paging_list *l);

#endif
