/* store: Lagoon's data, in LMDB tables with declarative secondary indexes and group commit.
 *
 * This header (with store_limits.h, which it includes) is the whole public surface of the
 * module. The storage engine is hidden behind store/kv.h; nothing here names LMDB.
 *
 * Tables. A feature declares each table once, in the IDL: the (lagoon.v1.table) option on its
 * row message (a nanopb message from idl/, stored protobuf-encoded so that adding a field needs
 * no migration) gives its name, the u64 id field, its indexes and its foreign keys, and
 * protoc-gen-lagoon generates the store_table below with a named handle for the table and each
 * index (lagoon_tables.h). Generic code does insert, get, update, delete and scans, and keeps
 * every index and relation consistent in the same transaction as the row. Ids come from a
 * per-table sequence and are never reused.
 *
 * Index keys. An index's extractor appends order-preserving bytes for a row with the
 * store_key_* helpers: big-endian unsigned integers, sign-flipped signed integers, escaped and
 * terminated strings (no encoded string is a prefix of another), case-folded strings.
 * A UNIQUE index maps its key to one row; a MULTI index keeps every row with the same key, in
 * key order and then id order (the id is appended to the stored key). A composite key is
 * several helpers in a row: (video_id, user_id) for a join table, (owner_id, -created_at) for
 * "videos of a user, newest first". The generator writes the extractor of an index declared by
 * its key fields; a key that is not a concatenation of fields names a hand-written store_key_fn
 * (key_fn), declared in the generated header.
 *
 * A whole table, for example (the row message lagoon.v1.Video has uint64 id, owner_id and int64
 * created_at fields; idl/lagoon/v1/options.proto documents every option):
 *
 *     message Video {
 *       option (table) = {
 *         name: "videos"
 *         // the owner's videos, newest first
 *         index: { name: "by_owner" key: { field: "owner_id" }
 *                  key: { field: "created_at" kind: I64_DESC } }
 *         reference: { field: "owner_id" parent: "User" index: "by_owner" on_delete: CASCADE }
 *       };
 *       ...
 *
 * generates, in lagoon_tables.c,
 *
 *     static int key_videos_by_owner(const void *row, store_key *k)
 *     {
 *         const lagoon_v1_Video *r = row;
 *         store_key_u64(k, r->owner_id);
 *         store_key_i64_desc(k, r->created_at);
 *         return 1;
 *     }
 *     static const store_index videos_indexes[] = {
 *         {"by_owner", "owner_id", STORE_MULTI, key_videos_by_owner},
 *     };
 *     const store_index *const lagoon_index_videos_by_owner = &videos_indexes[0];
 *     static const store_fkey videos_fkeys[] = {
 *         {"owner_id", offsetof(lagoon_v1_Video, owner_id), &lagoon_table_users, &videos_indexes[0],
 *          STORE_CASCADE, 0},
 *     };
 *     const store_table lagoon_table_videos = {
 *         "videos", &lagoon_v1_Video_info, sizeof(lagoon_v1_Video),
 *         offsetof(lagoon_v1_Video, id), videos_indexes, 1, videos_fkeys, 1,
 *     };
 *
 * and lists it in lagoon_tables[], the application's schema (store_schema). Code uses the
 * handles: store_get_by(t, &lagoon_table_videos, lagoon_index_videos_by_owner, ...).
 * idl/lagoon/test/v1/store_test.proto has the store tests' tables.
 *
 * Threads. One writer thread owns all writes. store_submit queues a write function; the writer
 * runs the queued functions of many callers in one transaction (each in its own nested
 * transaction, so a failing one leaves no trace and does not fail the others), commits once
 * (one round of fsyncs for the whole batch), and only then calls each caller's completion. Reads run on any
 * thread in short read transactions (store_read_begin / store_read_end): no transaction outlives
 * the call that opened it.
 *
 * Errors. Every fallible function returns an enum lagoon_status (rpc/wire.h: 0 = LAGOON_OK) and
 * fills the caller's store_error with a message and, for INVALID_ARGUMENT, ALREADY_EXISTS and
 * NOT_FOUND of a foreign key, the field name, ready to be sent to a client.
 */
#ifndef LAGOON_STORE_H
#define LAGOON_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store_limits.h"
#include "wire.h"

/* ---- Errors ---------------------------------------------------------------------------------- */

typedef struct store_error {
    int code;                            /* enum lagoon_status, equal to the return value */
    char field[STORE_ERROR_FIELD_MAX];   /* offending field ("email"), "" when none applies */
    char message[STORE_ERROR_MESSAGE_MAX]; /* one English sentence for the client or the log */
} store_error;

/* Fills err and returns code: for implementations of store_write_fn and migrations that fail
 * with their own reason. field may be NULL. */
int store_fail(store_error *err, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- Keys ------------------------------------------------------------------------------------ */

/* A key being built by an index extractor. The helpers append; one that would overflow
 * STORE_KEY_MAX marks the key overflowed instead (the write then fails with INVALID_ARGUMENT
 * naming the index field), so extractors need no length checks of their own. */
typedef struct store_key {
    uint8_t buf[STORE_KEY_MAX];
    size_t len;
    int overflow; /* 1 once an append did not fit */
} store_key;

void store_key_reset(store_key *k);
/* Big-endian: numeric order is byte order. */
void store_key_u64(store_key *k, uint64_t v);
void store_key_u32(store_key *k, uint32_t v);
/* Sign bit flipped, then big-endian: -5 < -1 < 0 < 7 in byte order. */
void store_key_i64(store_key *k, int64_t v);
/* Descending order for newest-first indexes: ~v of the sign-flipped value. */
void store_key_i64_desc(store_key *k, int64_t v);
/* A string (or byte string) that sorts in byte order and cannot run into what follows it:
 * 0x00 becomes 0x00 0xFF and the end is 0x00 0x01, so "ab" + "c" never equals "abc" + "". */
void store_key_str(store_key *k, const char *s);
void store_key_bytes(store_key *k, const void *p, size_t n);
/* store_key_str of the ASCII-lower-cased string, for lookups that ignore case (emails,
 * usernames). Bytes >= 0x80 are kept as they are. */
void store_key_str_fold(store_key *k, const char *s);
/* Raw bytes, no terminator: only as the last component of a prefix. */
void store_key_raw(store_key *k, const void *p, size_t n);

/* ---- Declarations ------------------------------------------------------------------------------ */

typedef struct store_table store_table;

enum store_index_kind {
    STORE_UNIQUE = 1, /* one row per key: a second is ALREADY_EXISTS naming `field` */
    STORE_MULTI = 2,  /* many rows per key, ordered by key then id */
};

/* Appends row's key to k (already reset). Returns 1 when the row has an entry, 0 when it has
 * none (a sparse index: an optional field left empty). Must be a pure function of the row. */
typedef int (*store_key_fn)(const void *row, store_key *k);

typedef struct store_index {
    const char *name;  /* [a-z0-9_]+, unique within the table: "by_email" */
    const char *field; /* what a client calls the indexed field(s), for error messages: "email" */
    enum store_index_kind kind;
    store_key_fn key;
} store_index;

enum store_on_delete {
    STORE_RESTRICT = 1, /* deleting the parent fails with FAILED_PRECONDITION while children exist */
    STORE_CASCADE = 2,  /* deleting the parent deletes the children (recursively) */
};

/* A reference from a row of this table to a row of `parent`. */
typedef struct store_fkey {
    const char *field;         /* the referencing field, for error messages: "owner_id" */
    size_t offset;             /* offsetof the uint64_t parent id in the row struct */
    const store_table *parent; /* the referenced table */
    /* An index of this table whose keys start with store_key_u64(parent id): the children of a
     * parent are found through it when the parent is deleted. */
    const store_index *by_parent;
    enum store_on_delete on_delete;
    int optional; /* 1: an id of 0 means "no reference" and is not checked */
} store_fkey;

struct store_table {
    const char *name;          /* [a-z0-9_]+: "videos" */
    const wire_msginfo *msg;   /* the row message: &lagoon_v1_Video_info */
    size_t row_size;           /* sizeof the nanopb struct */
    size_t id_offset;          /* offsetof its uint64_t id field */
    const store_index *indexes;
    size_t nindexes;
    const store_fkey *fkeys;
    size_t nfkeys;
};

struct store_txn;
typedef struct store_txn store_txn;

/* Runs old databases forward: called once per step, inside one write transaction at open, with
 * from = the stored schema version (from < to = schema->version). Returns a status. */
typedef int (*store_migrate_fn)(store_txn *t, uint32_t from, void *arg, store_error *err);

/* Every table of the application, and the version of their layout: the application's is
 * app_schema() (handlers/core/schema.c, over the generated lagoon_tables[]); tests pass their own. */
typedef struct store_schema {
    const store_table *const *tables;
    size_t ntables;
    uint32_t version;         /* the layout this build writes; stored in the database */
    store_migrate_fn migrate; /* NULL when there is nothing to migrate */
    void *migrate_arg;
} store_schema;

/* ---- Opening ----------------------------------------------------------------------------- */

enum store_sync {
    /* Each batch is fsynced before any of its callers hears about it: an acknowledged write
     * survives a crash of the process or of the machine. The default. */
    STORE_SYNC_FULL = 0,
    /* No fsync: for benchmarks and bulk loads only. A process crash loses nothing, but a power
     * loss or kernel crash loses the writes of the last seconds (the database stays
     * consistent, as of some earlier commit). */
    STORE_SYNC_NONE = 1,
};

typedef struct store_config {
    const store_schema *schema; /* required; must outlive the store */
    enum store_sync sync;
    uint64_t map_size_initial; /* bytes; 0 = STORE_MAP_SIZE_DEFAULT */
    uint64_t map_size_max;     /* bytes; 0 = STORE_MAP_SIZE_MAX_DEFAULT */
    unsigned max_batch;        /* 0 = STORE_MAX_BATCH_DEFAULT */
    unsigned max_queue;        /* 0 = STORE_MAX_QUEUE_DEFAULT */
    unsigned max_readers;      /* 0 = STORE_MAX_READERS_DEFAULT */
    int read_only;             /* 1: no writer thread, writes fail (tools on a live server) */
} store_config;

typedef struct store store;

/* The file in the data directory that a read-write store holds an exclusive flock(2) on for
 * as long as it is open. The kernel drops the lock when the process ends, however it ends
 * (kill -9 included), so it never needs cleaning up. */
#define STORE_WRITER_LOCK "writer.lock"

/* Opens the database in directory dir (created if missing, mode 0750), creates missing tables
 * and indexes, checks the stored schema version (FAILED_PRECONDITION when the database was
 * written by a newer version; runs schema->migrate when older), and starts the writer thread.
 * Read-write: FAILED_PRECONDITION at once when another store (in this or another process:
 * lagoond) has dir open read-write; read-only opens take no lock and run beside it.
 * *out is NULL on failure. */
int store_open(const char *dir, const store_config *cfg, store **out, store_error *err);

/* Waits for queued writes to finish (their completions run), stops the writer, closes the
 * database. No read may be open. NULL is allowed. */
void store_close(store *s);

/* ---- Writes ------------------------------------------------------------------------------ */

/* A write: runs on the writer thread inside a nested transaction t. Returns LAGOON_OK to keep
 * its changes, anything else (with err filled) to discard them all. (Each store_insert,
 * store_update and store_delete checks everything before its first change, so one that fails
 * leaves nothing behind even when fn handles the error and goes on.) It may run more than once
 * (when the batch is replayed after the map grew), so it must only touch the database and arg's
 * result fields, which it overwrites. It must not block or call store_write. */
typedef int (*store_write_fn)(store_txn *t, void *arg, store_error *err);

/* Completion of a submitted write, on the writer thread, after the batch is durable (or with
 * its error). status/err are the write's outcome (err valid during the call only). Must not
 * block: hand the result to another thread or event loop. */
typedef void (*store_done_fn)(void *done_arg, int status, const store_error *err);

/* Queues fn(arg) and returns at once: LAGOON_OK (done will be called exactly once), or
 * RESOURCE_EXHAUSTED (queue full) / FAILED_PRECONDITION (closing or read-only), in which case
 * done is never called. */
int store_submit(store *s, store_write_fn fn, void *arg, store_done_fn done, void *done_arg,
                 store_error *err);

/* store_submit and wait for the completion: for tools, tests and threads that may block. Must
 * not be called from the writer thread (FAILED_PRECONDITION), nor with a read open on this
 * thread (the map could not grow). */
int store_write(store *s, store_write_fn fn, void *arg, store_error *err);

/* ---- Reads ------------------------------------------------------------------------------- */

/* Opens a read transaction: a consistent snapshot until store_read_end. Keep it short (one
 * call's worth): the map cannot grow while it is open. Any thread; one read per thread at a
 * time. RESOURCE_EXHAUSTED when every reader slot is taken. */
int store_read_begin(store *s, store_txn **out, store_error *err);
void store_read_end(store_txn *t);

/* ---- Rows (inside a read or a write) ------------------------------------------------------- */

/* Inserts row: takes the next id of the table (written into the row's id field and *id_out,
 * which may be NULL), checks foreign keys (NOT_FOUND naming the field), adds every index entry
 * (ALREADY_EXISTS naming the field on a unique conflict). Write transactions only. */
int store_insert(store_txn *t, const store_table *tab, void *row, uint64_t *id_out,
                 store_error *err);

/* Reads row id into row (row_size bytes, overwritten). NOT_FOUND if absent. The row may hold
 * allocations (FT_POINTER fields): free with store_row_release. */
int store_get(store_txn *t, const store_table *tab, uint64_t id, void *row, store_error *err);

/* Looks a row up by a UNIQUE index key (built with the store_key_* helpers, as the extractor
 * would). *id_out (may be NULL) gets its id, row (may be NULL) the row. NOT_FOUND if absent. */
int store_get_by(store_txn *t, const store_table *tab, const store_index *idx, const store_key *key,
                 uint64_t *id_out, void *row, store_error *err);

/* Replaces the row with row's id by row, moving the index entries whose keys changed (NOT_FOUND
 * if there is no such row; ALREADY_EXISTS / NOT_FOUND naming the field as for insert). */
int store_update(store_txn *t, const store_table *tab, const void *row, store_error *err);

/* Deletes row id, its index entries, and follows foreign keys that point to it (cascade or
 * FAILED_PRECONDITION for restrict). NOT_FOUND if absent. */
int store_delete(store_txn *t, const store_table *tab, uint64_t id, store_error *err);

/* Frees what a row decoded by the store allocated (FT_POINTER fields); harmless otherwise. */
void store_row_release(const store_table *tab, void *row);

/* ---- Scans and pages ------------------------------------------------------------------------ */

typedef struct store_query {
    const store_table *table;
    const store_index *index; /* NULL: by id */
    /* Only entries whose key starts with these bytes (NULL/0: all). For an index, build them
     * with the store_key_* helpers; for ids, store_key_u64. */
    const uint8_t *prefix;
    size_t prefix_len;
    /* Where the first page starts (NULL: the first key of the prefix in scan order). Inclusive,
     * also of the keys that extend it: forward, the scan starts at the first key >= start;
     * in reverse, at the last key that is <= start or starts with it. Must itself start with the
     * prefix. Ignored when a page token is given. */
    const uint8_t *start;
    size_t start_len;
    int reverse;               /* 1: descending key order */
    uint32_t page_size;        /* 0: STORE_PAGE_SIZE_DEFAULT; above STORE_PAGE_SIZE_MAX: INVALID_ARGUMENT */
    const char *page_token;    /* NULL or "": the first page; else a next_page_token of the same query */
    uint32_t page_number;      /* offset paging: 1-based page; 0 = token paging. Not with a token. */
} store_query;

/* Called once per row of the page, in order. row is decoded into store-owned memory valid
 * during the call only. Return LAGOON_OK to go on; any other status stops the scan and is
 * returned by store_scan. It must not write (the scan's cursor would be invalidated): collect
 * ids and act after store_scan returns. */
typedef int (*store_row_fn)(void *arg, uint64_t id, const void *row);

typedef struct store_page {
    uint32_t count; /* rows delivered */
    /* Opaque: pass it back as page_token for the next page; "" when this was the last page.
     * It resumes right after the last delivered key, so rows inserted meanwhile cause neither
     * duplicates nor gaps. MACed with a key kept in the database: a forged or damaged token is
     * INVALID_ARGUMENT naming "page_token". */
    char next_page_token[STORE_PAGE_TOKEN_MAX + 1];
} store_page;

/* fn NULL counts the page's entries (page->count) without reading their rows: an index's keys
 * only, for a count that must not cost a row decode per entry. */
int store_scan(store_txn *t, const store_query *q, store_row_fn fn, void *arg, store_page *page,
               store_error *err);

/* ---- Change announcements -------------------------------------------------------------------- */

enum store_change_kind { STORE_INSERTED = 1, STORE_UPDATED = 2, STORE_DELETED = 3 };

typedef struct store_change {
    const store_table *table;
    uint64_t id;
    enum store_change_kind kind;
} store_change;

/* Called on the writer thread after each batch that changed something commits (durably), with
 * the batch's changes in order (cascaded deletes included), before the batch's callers hear
 * back. changes is valid during the call. Must not block, call store_write, or (un)subscribe. */
typedef void (*store_subscriber_fn)(void *arg, const store_change *changes, size_t n);

/* RESOURCE_EXHAUSTED beyond STORE_MAX_SUBSCRIBERS. */
int store_subscribe(store *s, store_subscriber_fn fn, void *arg, store_error *err);
void store_unsubscribe(store *s, store_subscriber_fn fn, void *arg);

/* ---- Introspection ------------------------------------------------------------------------------ */

/* Histograms of the group commit, for /metrics: the upper bounds of their buckets. Commit
 * latency spans an fsync on a fast SSD (about 100 us) to a stalled disk (seconds); batch sizes
 * go up to STORE_MAX_BATCH_LIMIT. The counts are per bucket (not cumulative), one more past the
 * largest bound. */
#define STORE_COMMIT_BUCKETS_US 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000
#define STORE_COMMIT_NBUCKETS 13
#define STORE_BATCH_BUCKETS 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096
#define STORE_BATCH_NBUCKETS 11

typedef struct store_counters {
    uint64_t batches;     /* write transactions committed */
    uint64_t ops_ok;      /* writes committed */
    uint64_t ops_failed;  /* writes that failed (their own error or their batch's) */
    uint64_t map_growths; /* times the map was enlarged */
    uint64_t map_size;    /* current map size, bytes */
    uint64_t map_used;    /* of it, the data file's pages in use (up to the last page written), bytes */
    /* Committed batches by how long their commit took (from its start to durable: LMDB's
     * commit with its fsync, none with STORE_SYNC_NONE), and that time summed in ns. */
    uint64_t commit_us[STORE_COMMIT_NBUCKETS + 1];
    uint64_t commit_ns_sum;
    /* Committed batches by their committed writes (their sum is ops_ok, their count batches). */
    uint64_t batch_writes[STORE_BATCH_NBUCKETS + 1];
} store_counters;
void store_counters_get(store *s, store_counters *c);

/* ---- Administration (lagoon-admin) ----------------------------------------------------------- */

/* Checks every table of the schema, in one read transaction (a consistent snapshot, held for
 * the whole check): every row decodes and carries its key's id; every index
 * entry points to an existing row whose fields produce it; every row has all its entries;
 * foreign keys resolve; sequences are ahead of every id. Prints one line per problem to report
 * (may be NULL) and stores their count in *problems. Returns LAGOON_OK when it could look (even
 * if it found problems), another status when it could not. */
int store_verify(store *s, FILE *report, uint64_t *problems, store_error *err);

/* A hot, consistent, compacted copy of the database into directory dir (created if missing;
 * must be empty; FAILED_PRECONDITION otherwise), openable as a store. Safe while writes go on
 * (also from another process: lagoon-admin backup). In this process the map cannot grow during
 * the copy, so a write that needs a bigger map waits for the copy to end. */
int store_backup(store *s, const char *dir, store_error *err);

/* Rows and bytes of every database of the environment (whatever schema created it), map size and
 * use, printed to out. Calls are serialised (LMDB opens database handles one at a time). */
int store_stats(store *s, FILE *out, store_error *err);

/* The lagoon-admin command line: `COMMAND --data DIR [--out DIR]`, COMMAND one of verify,
 * backup, stats (each opens the store read-only), or `--help` (usage to out, returns 0).
 * Returns the process exit status (0 ok, 1 inconsistency or failure, 2 usage, to errout).
 * schema is normally app_schema() (handlers/core/schema.c); tests pass theirs. */
int store_admin_main(int argc, char **argv, const store_schema *schema, FILE *out, FILE *errout);

#endif
