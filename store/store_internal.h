/* store internals shared by the files of store/ (never included outside it). */
#ifndef LAGOON_STORE_INTERNAL_H
#define LAGOON_STORE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "kv.h"
#include "store.h"

/* The layout of the store's own records (meta database, key formats). Independent of the
 * application's schema version; bumped when store/ itself changes how it stores things. */
#define STORE_FORMAT_VERSION 1

/* Keys of the meta database. */
#define STORE_META_KEY "meta"      /* lagoon.v1.StoreMeta */
#define STORE_SEQ_PREFIX "seq/"    /* "seq/<table>": last id handed out, u64 big-endian */
#define STORE_TOKEN_KEY_BYTES 32   /* crypto_secretbox_KEYBYTES: page tokens are sealed */

/* Runtime side of one declared table. */
typedef struct store_table_rt {
    const store_table *decl;
    kv_db rows;                      /* "t/<name>": u64 BE id -> encoded row */
    kv_db idx[STORE_MAX_INDEXES];    /* "i/<name>/<index>": key [+ id] -> u64 BE id */
    /* Foreign keys of other tables that point at this one (filled at open). */
    struct store_ref {
        const struct store_table_rt *child;
        const store_fkey *fk;
    } refs[STORE_MAX_TABLES];
    size_t nrefs;
} store_table_rt;

typedef struct store_op store_op;
typedef struct store_reader store_reader;

/* Reused read transactions (store.c, "Reads"). A thread keeps a reset read transaction for each
 * of at most this many stores it read from lately; a thread reading from more stores at once
 * gives up the least recently used one. The server reads from one store. */
#define STORE_THREAD_READERS 4

/* Of the reader table (max_readers, shared by every process on the database), a store keeps at
 * most 1/STORE_READERS_CACHED_SHARE in idle reset transactions: the rest stays free for second
 * reads on a thread, backups and other processes (lagoon-admin). Threads beyond the share read
 * with a transaction of their own per read, as without reuse. */
#define STORE_READERS_CACHED_SHARE 2

struct store {
    kv_env *env;
    const store_schema *schema;
    store_config cfg;            /* with defaults filled in */
    char dir[4096];
    /* STORE_WRITER_LOCK in dir, flock'ed exclusively while the store is open read-write, so a
     * second writer (lagoon-admin create-admin beside lagoond) is refused; -1 when read-only. */
    int lock_fd;
    kv_db meta;
    store_table_rt *tables;      /* schema->ntables entries, in schema order */
    uint8_t token_key[STORE_TOKEN_KEY_BYTES];
    int have_token_key;

    /* Resize gate: reads hold it shared; the writer takes it exclusively to change the map
     * size, which LMDB allows only with no transaction active in the process. Writer-preferring,
     * so a stream of reads cannot starve a resize. */
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cv;
    unsigned gate_readers;  /* open read transactions */
    int gate_resizing;      /* a resize waits or runs: new reads wait */

    /* Reused read transactions, all under the process-wide readers mutex of store.c. */
    uint64_t reader_id;      /* never reused in the process: threads name the store by it */
    store *next_open;        /* in the list of open stores */
    int listed;              /* 1 while in that list */
    store_reader *readers;   /* the cached transactions of every thread, a list */
    unsigned readers_cached; /* its length */
    unsigned readers_cap;    /* its limit: the reader table / STORE_READERS_CACHED_SHARE */

    /* Writer queue. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    store_op *q_head, *q_tail;
    unsigned q_len;
    int closing;
    int writer_started;
    pthread_t writer;
    store_op **batch;            /* the writer's batch, max_batch slots */

    /* Subscribers: changed only under sub_mu, read by the writer under sub_mu. */
    pthread_mutex_t sub_mu;
    struct {
        store_subscriber_fn fn;
        void *arg;
    } subs[STORE_MAX_SUBSCRIBERS];
    size_t nsubs;

    /* Rows are encoded here (store_table.c, row_encode) before they are put: one pass, no
     * allocation per row. Used by the thread in the write transaction (one at a time: the
     * opening, then the writer), trimmed after each batch to STORE_ENCODE_BUF_KEEP. */
    uint8_t *enc;
    size_t enc_cap;

    /* Counters, under q_mu. */
    store_counters counters;
    int64_t commit_ns;           /* writer only: how long the last batch's commit took (batch_commit) */
    uint64_t map_size;
};

/* What a write remembers of the row it wrote last in a table (store_table.c, "recent rows"):
 * its foreign keys and index entries, so that writing that row again (a row inserted, then
 * updated with what the insert made, as a message and its event seqs) reads and decodes
 * nothing. Only rows whose index entries fit keys[]. */
#define STORE_RECENT_KEYS 512
typedef struct store_recent {
    uint64_t id;                         /* 0: nothing remembered */
    uint64_t fk[STORE_MAX_FKEYS];        /* the foreign keys' values */
    int8_t has[STORE_MAX_INDEXES];       /* store_index_entry's result for each index */
    uint16_t off[STORE_MAX_INDEXES];     /* where its entry's key is in keys[] */
    uint16_t len[STORE_MAX_INDEXES];
    uint16_t used;                       /* bytes of keys[] in use */
    uint8_t full;                        /* the entries did not fit: not remembered */
    uint8_t keys[STORE_RECENT_KEYS];
} store_recent;

/* A transaction as tables see it. */
struct store_txn {
    store *s;
    kv_txn *kv;
    int writable;
    /* Reads only: the thread's cached transaction this is (reset, not freed, at the end), or
     * NULL for a transaction of its own. */
    store_reader *reader;
    /* Write transactions only: set when any kv call hit the map size, so that the writer
     * replays the batch after growing even if the write function hid the error. */
    int map_full;
    int no_space;
    /* Changes of this write (kept only if it commits). */
    store_change *changes;
    size_t nchanges, cap_changes;
    /* Write transactions only: per table (schema order), the row written last, or NULL. */
    store_recent **recent;
};

/* Frees what a write transaction's store_txn holds (its changes, its recent rows). */
void store_txn_free(store_txn *t);

/* store_fail as an expression whose value is visibly `code`: the static analyzer cannot see
 * into store_fail from other files and would otherwise explore "failed, but returned OK" paths
 * that cannot happen. */
#define STORE_FAIL(err, code, ...) (store_fail((err), (code), __VA_ARGS__), (code))

/* The encode buffer (struct store.enc): its first size, and the most kept between batches (a
 * row larger than this, up to STORE_ROW_MAX, gets a buffer of its own size until the batch
 * ends). Most rows are far smaller; a message or an event with a full text is about 16 KiB. */
#define STORE_ENCODE_BUF_MIN 4096
#define STORE_ENCODE_BUF_KEEP (256u << 10)

/* Helpers shared between files. */
const store_table_rt *store_rt(const store *s, const store_table *tab);
int store_load_token_key(store *s, kv_txn *txn);
/* Hold the resize gate as a reader around any engine read not made through store_read_begin
 * (backup). */
void store_gate_enter_read(store *s);
void store_gate_leave_read(store *s);
/* Read transactions kept for reuse by the threads that read from s (for tests). */
unsigned store_readers_cached(store *s);
/* k = the entry of index x for row (id appended for MULTI). 1: has an entry, 0: none (sparse),
 * -1: the key overflowed STORE_KEY_MAX. */
int store_index_entry(const store_table *tab, size_t x, const void *row, uint64_t id, store_key *k);

/* Turns a kv status into a store status (RESOURCE_EXHAUSTED for a full map or disk, ...) with
 * err filled, and flags t (may be NULL) so that the writer knows to grow the map. */
static inline int store_kv_fail(store_txn *t, int kvst, store_error *err, const char *what)
{
    int code;
    const char *msg = kv_strerror(kvst);
    switch (kvst) {
    case KV_MAP_FULL:
        if (t)
            t->map_full = 1;
        code = LAGOON_RESOURCE_EXHAUSTED;
        msg = "the database is full (map size at its configured maximum)";
        break;
    case KV_NO_SPACE:
        if (t)
            t->no_space = 1;
        code = LAGOON_RESOURCE_EXHAUSTED;
        msg = "no space left on the data disk";
        break;
    case KV_READERS_FULL:
        code = LAGOON_RESOURCE_EXHAUSTED;
        break;
    case KV_TOO_BIG:
        code = LAGOON_INVALID_ARGUMENT;
        break;
    case KV_CORRUPT:
        code = LAGOON_DATA_LOSS;
        break;
    case KV_NOTFOUND:
        code = LAGOON_NOT_FOUND;
        break;
    case KV_EXISTS:
        code = LAGOON_ALREADY_EXISTS;
        break;
    default:
        code = LAGOON_INTERNAL;
        break;
    }
    return STORE_FAIL(err, code, NULL, "%s: %s", what, msg);
}

#endif
