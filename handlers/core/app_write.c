/* app_write: the framework's durable writes (app.h, "durable writes for handlers"): a call's
 * write function run on the store's writer, its response filled in the transaction, and
 * generic idempotency for the methods marked (lagoon.v1.idempotent). */
#include <pb_common.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "lagoon_tables.h"
#include "log.h"

/* A call's write, in the call's own memory (rpc_call_alloc): nothing to free on any path. */
typedef struct write_call {
    rpc_call *call;
    app_write_in in;
    app_write_fn fn;
    app_after_fn after;
    void *resp;
    const wire_method *method;
    int idempotent;                   /* the caller's key is honoured for this call */
    const char *key;                  /* RequestMeta.idempotency_key (the call's) */
    uint8_t request_hash[16];         /* BLAKE2b-128 of the encoded request */
    store_error kept;                 /* app_refuse_kept's refusal (code 0: none) */
    uint64_t shows;                   /* app_result_shows's resource (0: none) */
} write_call;

/* The write_call around a write function's inputs: they are the framework's own. */
static write_call *call_of(const app_write_in *in)
{
    return (write_call *)((char *)in - offsetof(write_call, in));
}

static log_limiter oversize_log;

void *app_write_args(rpc_call *call, size_t size)
{
    return rpc_call_alloc(call, size, NULL);
}

int app_out_of_memory(rpc_call *call)
{
    rpc_call_retry_after(call, 100);
    return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "out of memory");
}

int app_refuse_kept(const app_write_in *in, int code, const char *field, const char *fmt, ...)
{
    /* The refusal goes into the framework's state, not into err, so that nothing a function
     * leaves in err by the way can pass for one. */
    store_error *err = &call_of(in)->kept;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
    err->code = code;
    return LAGOON_OK;
}

/* ---- idempotency ---------------------------------------------------------------------------- */

void app_result_shows(const app_write_in *in, uint64_t resource_id)
{
    call_of(in)->shows = resource_id;
}

int app_forget_results(store_txn *t, const wire_method *m, uint64_t resource_id, store_error *err)
{
    store_key prefix;
    store_key_reset(&prefix);
    store_key_u32(&prefix, m->id);
    store_key_u64(&prefix, resource_id);
    app_id_page *r = malloc(sizeof(*r));
    if (r == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    int st;
    do { /* a page at a time: each page's rows are deleted before the next is read */
        store_query q = {.table = &lagoon_table_idempotent_results,
                         .index = lagoon_index_idempotent_results_by_resource,
                         .prefix = prefix.buf, .prefix_len = prefix.len, .page_size = STORE_PAGE_SIZE_MAX};
        st = app_scan_ids(t, &q, r, err);
        for (size_t i = 0; i < r->n && st == LAGOON_OK; i++)
            st = store_delete(t, &lagoon_table_idempotent_results, r->ids[i], err);
    } while (st == LAGOON_OK && r->n == STORE_PAGE_SIZE_MAX);
    free(r);
    return st;
}

static bool hash_stream(pb_ostream_t *os, const pb_byte_t *buf, size_t n)
{
    crypto_generichash_update(os->state, buf, n);
    return true;
}

/* BLAKE2b-128 of req as encoded, streamed: nothing allocated whatever its size. */
static int request_hash(const wire_method *m, const void *req, uint8_t out[16])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 16);
    pb_ostream_t os = {hash_stream, &h, SIZE_MAX, 0, NULL};
    if (!pb_encode(&os, m->request->desc, req))
        return -1;
    crypto_generichash_final(&h, out, 16);
    return 0;
}

static void result_key(store_key *k, const write_call *w)
{
    store_key_reset(k);
    store_key_u64(k, w->in.who.user_id);
    store_key_u32(k, w->method->id);
    store_key_str(k, w->key);
}

/* The response kept for this key, into w->resp: LAGOON_OK, NOT_FOUND (none, or expired: then
 * deleted, so that this call records its own), FAILED_PRECONDITION (the key was used for
 * another request). */
static int result_find(store_txn *t, write_call *w, store_error *err)
{
    store_key k;
    result_key(&k, w);
    lagoon_v1_IdempotentResult r;
    uint64_t id;
    int st = store_get_by(t, &lagoon_table_idempotent_results, lagoon_index_idempotent_results_by_key, &k, &id, &r,
                          err);
    if (st != LAGOON_OK)
        return st;
    if (r.expires_at <= w->in.now) {
        store_row_release(&lagoon_table_idempotent_results, &r);
        st = store_delete(t, &lagoon_table_idempotent_results, id, err);
        return st == LAGOON_OK ? LAGOON_NOT_FOUND : st;
    }
    if (sodium_memcmp(r.request_hash, w->request_hash, sizeof(r.request_hash)) != 0) {
        store_row_release(&lagoon_table_idempotent_results, &r);
        return store_fail(err, LAGOON_FAILED_PRECONDITION, NULL,
                          "this idempotency key was already used for a different request");
    }
    wire_violation v;
    st = LAGOON_OK;
    if (wire_decode_trusted(w->method->response, r.response ? r.response->bytes : NULL,
                            r.response ? r.response->size : 0, w->resp, &v) != 0)
        st = store_fail(err, LAGOON_DATA_LOSS, NULL, "the kept response of this idempotency key cannot be read");
    store_row_release(&lagoon_table_idempotent_results, &r);
    return st;
}

/* An expired result: 1; the first one still kept ends the scan (the index is by expiry). */
static int result_expired(void *arg, const void *row)
{
    return ((const lagoon_v1_IdempotentResult *)row)->expires_at <= *(const int64_t *)arg ? 1 : -1;
}

/* Keeps w->resp for the key's retries, and deletes a few expired results. */
static int result_record(store_txn *t, write_call *w, store_error *err)
{
    long size = wire_encoded_size(w->method->response, w->resp);
    if (size < 0)
        return store_fail(err, LAGOON_INTERNAL, NULL, "the response cannot be encoded");
    if (size > APP_IDEMPOTENT_RESPONSE_MAX) {
        log_limited(&oversize_log, LOG_WARN, "%s: a %ld-byte response is not kept for idempotent retries",
                    w->method->path, size);
        return LAGOON_OK;
    }
    pb_bytes_array_t *bytes = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE((size_t)size));
    if (bytes == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    bytes->size = (pb_size_t)size;
    int st = LAGOON_OK;
    if (wire_encode(w->method->response, w->resp, bytes->bytes, (size_t)size, NULL) != size)
        st = store_fail(err, LAGOON_INTERNAL, NULL, "the response cannot be encoded");
    lagoon_v1_IdempotentResult r = lagoon_v1_IdempotentResult_init_zero;
    r.user_id = w->in.who.user_id;
    r.method_id = w->method->id;
    snprintf(r.key, sizeof(r.key), "%s", w->key);
    memcpy(r.request_hash, w->request_hash, sizeof(r.request_hash));
    r.expires_at = w->in.now + APP_IDEMPOTENCY_TTL_MS;
    r.response = bytes;
    r.resource_id = w->shows;
    if (st == LAGOON_OK)
        st = store_insert(t, &lagoon_table_idempotent_results, &r, NULL, err);
    free(bytes);
    if (st != LAGOON_OK)
        return st;
    app_id_page *page = malloc(sizeof(*page));
    if (page == NULL)
        return store_fail(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    store_query q = {.table = &lagoon_table_idempotent_results, .index = lagoon_index_idempotent_results_by_expiry,
                     .page_size = APP_IDEMPOTENT_PURGE};
    int64_t now = w->in.now;
    st = app_scan_marked(t, &q, result_expired, &now, page, err);
    for (size_t i = 0; i < page->n && st == LAGOON_OK; i++)
        st = store_delete(t, &lagoon_table_idempotent_results, page->ids[i], err);
    free(page);
    return st;
}

/* ---- the write -------------------------------------------------------------------------------- */

static void reset_response(write_call *w)
{
    const wire_msginfo *info = w->method->response;
    if (info->has_pointers)
        pb_release(info->desc, w->resp);
    wire_init(info, w->resp);
}

static int run_write(store_txn *t, void *arg, store_error *err)
{
    write_call *w = arg;
    reset_response(w); /* a replay starts from scratch */
    w->kept.code = 0;
    w->shows = 0;
    w->in.replayed = 0;
    int st;
    if (w->idempotent) {
        st = result_find(t, w, err);
        if (st == LAGOON_OK) {
            w->in.replayed = 1;
            return LAGOON_OK;
        }
        if (st != LAGOON_NOT_FOUND)
            return st;
    }
    app_now_pin(w->in.now);
    st = w->fn(t, &w->in, w->resp, err);
    app_now_pin(0);
    if (st != LAGOON_OK)
        return st;
    if (w->kept.code != LAGOON_OK) /* app_refuse_kept: the changes stay, the call fails */
        return LAGOON_OK;
    return w->idempotent ? result_record(t, w, err) : LAGOON_OK;
}

static void write_finished(void *p, int status, const store_error *err)
{
    write_call *w = p;
    const store_error *e = err;
    if (status == LAGOON_OK && w->kept.code != LAGOON_OK) {
        status = w->kept.code;
        e = &w->kept;
    }
    if (status != LAGOON_OK)
        status = app_store_error(w->call, status, e);
    if (w->after)
        status = w->after(w->call, &w->in, w->resp, status);
    rpc_call_finish(w->call, status);
}

int app_write_call_then(rpc_call *call, app_write_fn fn, const void *args, app_after_fn after)
{
    write_call *w = rpc_call_alloc(call, sizeof(*w), NULL);
    if (w == NULL)
        return app_out_of_memory(call);
    app *a = app_of(call);
    w->call = call;
    w->fn = fn;
    w->after = after;
    w->method = rpc_call_method(call);
    w->resp = rpc_call_response(call);
    w->in.a = a;
    w->in.who = *rpc_call_caller(call);
    w->in.now = app_now(a);
    w->in.req = rpc_call_request(call);
    w->in.args = args;
    w->key = rpc_call_idempotency_key(call);
    /* Keys are the caller's: an anonymous call has no one to keep them for. A method whose
     * messages hold secrets (tokens in the response; passwords in the request, whose unkeyed
     * hash could be guessed from) keeps nothing. */
    w->idempotent = w->method->idempotent && w->key[0] != '\0' && w->in.who.user_id != 0 && w->method->secrets == 0;
    if (w->idempotent && request_hash(w->method, w->in.req, w->request_hash) != 0)
        return rpc_call_error(call, LAGOON_INTERNAL, "the request cannot be encoded");
    store_error err;
    int st = store_submit(a->db, run_write, w, write_finished, w, &err);
    if (st != LAGOON_OK) {
        if (st == LAGOON_RESOURCE_EXHAUSTED)
            rpc_call_retry_after(call, 100);
        return app_store_error(call, st, &err);
    }
    return RPC_PENDING;
}

int app_write_call(rpc_call *call, app_write_fn fn, const void *args)
{
    return app_write_call_then(call, fn, args, NULL);
}

/* ---- writes counted against a per-caller budget ---------------------------------------------- */

typedef struct limited_args {
    limiter *l;
    char key[48];     /* the caller's key in l */
    int64_t taken_at; /* when the call was counted (given back if it stores nothing) */
} limited_args;

static int limited_after(rpc_call *call, const app_write_in *in, void *resp, int status)
{
    (void)call;
    (void)resp;
    const limited_args *la = in->args;
    if (status != LAGOON_OK || in->replayed)
        limiter_refund(la->l, la->key, la->taken_at);
    return status;
}

int app_write_call_limited(rpc_call *call, app_write_fn fn, limiter *l, const char *key_prefix, const char *what)
{
    app *a = app_of(call);
    limited_args *la = app_write_args(call, sizeof(*la));
    if (la == NULL)
        return app_out_of_memory(call);
    la->l = l;
    snprintf(la->key, sizeof(la->key), "%s:%llu", key_prefix, (unsigned long long)rpc_call_caller(call)->user_id);
    la->taken_at = app_now(a);
    uint32_t wait = limiter_take(l, la->key, la->taken_at);
    if (wait > 0) {
        rpc_call_retry_after(call, wait);
        return rpc_call_error(call, LAGOON_RESOURCE_EXHAUSTED, "too many %s; retry in %u s", what, (wait + 999) / 1000);
    }
    int st = app_write_call_then(call, fn, la, limited_after);
    if (st != RPC_PENDING) /* not queued: limited_after does not run */
        limiter_refund(l, la->key, la->taken_at);
    return st;
}
