/* kv: the ordered, transactional key-value layer under the store.
 *
 * Internal to store/ (tables and the writer thread use it; nothing outside store/ may). It is
 * the only place that knows which engine holds the bytes: kv_lmdb.c implements it on LMDB, and
 * another ordered, transactional engine is added by writing another kv_<engine>.c against this
 * header and choosing it in store/CMakeLists.txt. Tables, indexes, pagination and the writer
 * never see an engine type.
 *
 * Model: one environment holds named databases (kv_db). Keys are byte strings in memcmp order.
 * A transaction is read-only or read-write; a read-write transaction may have one nested child
 * at a time, whose changes are folded into the parent on commit and vanish on abort.
 *
 * Every function returns 0 or a kv_status below (never an engine's own code); the engine's own
 * message for the calling thread's last failure is kept for kv_strerror.
 */
#ifndef LAGOON_STORE_KV_H
#define LAGOON_STORE_KV_H

#include <stddef.h>
#include <stdint.h>

enum kv_status {
    KV_OK = 0,
    KV_NOTFOUND = 1,   /* no such key / cursor moved past either end */
    KV_EXISTS = 2,     /* kv_put with KV_NOOVERWRITE on an existing key */
    KV_MAP_FULL = 3,   /* the environment's map is full: grow it (kv_env_grow) and retry */
    KV_NO_SPACE = 4,   /* the disk (or the configured maximum map) is full */
    KV_RESIZED = 5,    /* another process grew the map: kv_env_adopt_size, then retry */
    KV_READERS_FULL = 6, /* every reader slot is taken */
    KV_TOO_BIG = 7,    /* key or value over the engine's limits */
    KV_CORRUPT = 8,    /* the engine found damaged or incompatible files */
    KV_ERROR = 9,      /* anything else (I/O error, invalid use) */
};

typedef struct kv_env kv_env;       /* opaque: one open environment */
typedef struct kv_txn kv_txn;       /* opaque: one transaction */
typedef struct kv_cursor kv_cursor; /* opaque: one ordered cursor inside a transaction */
typedef uint32_t kv_db;             /* a named database, valid for the environment's life */

/* A byte string. Returned values point into the engine's memory and are valid until the next
 * write in the same transaction or the end of the transaction, whichever comes first. */
typedef struct kv_val {
    const void *data;
    size_t len;
} kv_val;

typedef struct kv_env_options {
    size_t map_size;      /* bytes of address space reserved for the data file */
    unsigned max_dbs;     /* named databases the environment may hold */
    unsigned max_readers; /* concurrent read transactions across all processes */
    int no_sync;          /* 1: commits do not fsync (recent commits lost on power loss) */
    int read_only;        /* 1: open without write access (tools) */
} kv_env_options;

/* Opens (creating when allowed) the environment in directory dir, which must exist.
 * Clears reader slots left behind by dead processes. */
int kv_env_open(const char *dir, const kv_env_options *opt, kv_env **out);
void kv_env_close(kv_env *env);

/* A sentence for status: the engine's own message when the calling thread's last failing kv
 * call returned status, a generic one otherwise. Thread-local storage valid until the thread's
 * next kv call; never NULL. */
const char *kv_strerror(int status);

/* Sets the map size to bytes. No transaction of this process may be active: the store
 * guarantees it with its resize gate. */
int kv_env_set_map_size(kv_env *env, size_t bytes);
/* Adopts the map size another process set (after KV_RESIZED). Same rule as above. */
int kv_env_adopt_size(kv_env *env);

typedef struct kv_env_info {
    size_t map_size;   /* bytes reserved */
    size_t used_bytes; /* bytes of the data file in use (last page number * page size) */
    unsigned page_size;
    unsigned readers_used; /* reader slots in use */
    unsigned max_readers;
} kv_env_info;
int kv_env_info_get(kv_env *env, kv_env_info *info);

/* A hot, consistent, compacted copy of the environment into the empty directory dir. */
int kv_env_backup(kv_env *env, const char *dir);

/* Flags for kv_txn_begin. */
#define KV_TXN_READ 0x1u
int kv_txn_begin(kv_env *env, kv_txn *parent, unsigned flags, kv_txn **out);
int kv_txn_commit(kv_txn *txn); /* frees txn whatever the outcome */
void kv_txn_abort(kv_txn *txn); /* frees txn, also a reset one */

/* Read transactions only, for reuse without an allocation per read. kv_txn_reset ends txn like
 * kv_txn_abort but keeps the handle, and with it the engine's reader slot: a reset txn holds no
 * snapshot, keeps no old pages alive and does not count as active for kv_env_set_map_size.
 * Values and cursors of txn must not be used after the reset. kv_txn_renew starts it again on
 * the latest commit; on failure (KV_RESIZED: adopt the size, then renew again) txn stays reset.
 * Any thread may reset or renew a txn, one at a time. */
void kv_txn_reset(kv_txn *txn);
int kv_txn_renew(kv_txn *txn);

/* Opens (and with create, creates) the named database. Must run in a read-write transaction
 * that commits before the handle is used elsewhere. */
int kv_db_open(kv_txn *txn, const char *name, int create, kv_db *out);

int kv_get(kv_txn *txn, kv_db db, kv_val key, kv_val *val);
#define KV_NOOVERWRITE 0x1u
int kv_put(kv_txn *txn, kv_db db, kv_val key, kv_val val, unsigned flags);
int kv_del(kv_txn *txn, kv_db db, kv_val key); /* KV_NOTFOUND if absent */
/* Removes every key of db (the database itself stays). */
int kv_drop(kv_txn *txn, kv_db db);

typedef struct kv_db_stat {
    uint64_t entries;
    uint64_t bytes; /* pages used by the database times the page size */
} kv_db_stat;
int kv_db_stat_get(kv_txn *txn, kv_db db, kv_db_stat *st);

enum kv_cursor_op {
    KV_FIRST,
    KV_LAST,
    KV_NEXT,
    KV_PREV,
    KV_SEEK, /* first key >= the given key */
};
int kv_cursor_open(kv_txn *txn, kv_db db, kv_cursor **out);
/* Moves the cursor and returns the key and value it lands on (KV_NOTFOUND past an end). For
 * KV_SEEK, *key is the key to seek to on entry. */
int kv_cursor_get(kv_cursor *c, kv_val *key, kv_val *val, enum kv_cursor_op op);
void kv_cursor_close(kv_cursor *c);

/* Names of every named database in the environment, for tools: calls fn once per name
 * (NUL-terminated copy, valid during the call). */
int kv_db_names(kv_txn *txn, void (*fn)(void *arg, const char *name), void *arg);

/* The engine's largest key, in bytes. */
size_t kv_max_key_size(kv_env *env);

#endif
