/* store limits: every limit of the store, with its default, its hard maximum and why.
 *
 * Part of store.h's public surface (store.h includes it). A limit that a caller may change is a
 * field of store_config whose default and maximum are here; store_open refuses values above the
 * maximum with INVALID_ARGUMENT naming the field.
 */
#ifndef LAGOON_STORE_LIMITS_H
#define LAGOON_STORE_LIMITS_H

/* Initial map size (store_config.map_size_initial). The map grows by itself when full, so
 * the initial value only saves a few early resizes; 64 MiB costs nothing but address space.
 * Minimum 64 KiB: LMDB needs a few pages for its meta pages and the main database. */
#define STORE_MAP_SIZE_DEFAULT (64ull << 20)
#define STORE_MAP_SIZE_MIN (64ull << 10)

/* Largest map (store_config.map_size_max). The map is address space, not disk: 1 TiB fits any
 * 64-bit process many times over, and reaching it means RESOURCE_EXHAUSTED for writes while
 * reads go on. The hard maximum is 64 TiB, well inside a 47-bit user address space. */
#define STORE_MAP_SIZE_MAX_DEFAULT (1ull << 40)
#define STORE_MAP_SIZE_MAX_LIMIT (64ull << 40)

/* Operations per group-commit batch (store_config.max_batch). A batch is one LMDB transaction
 * and one fsync: more operations amortise the fsync further, but every caller in the batch waits
 * for the slowest operation of it, and a map-full retry replays the whole batch. 256 ops keeps a
 * batch in the low milliseconds for typical rows. */
#define STORE_MAX_BATCH_DEFAULT 256
#define STORE_MAX_BATCH_LIMIT 4096

/* Operations waiting for the writer (store_config.max_queue). Beyond this store_submit says
 * RESOURCE_EXHAUSTED at once instead of letting memory and latency grow without bound when the
 * disk cannot keep up. */
#define STORE_MAX_QUEUE_DEFAULT 65536
#define STORE_MAX_QUEUE_LIMIT (1 << 22)

/* Concurrent read transactions, all threads and processes (store_config.max_readers). Each
 * takes one slot of LMDB's lock file for the duration of a read; reads are short, so this only
 * has to exceed the number of threads that read at the same time. */
#define STORE_MAX_READERS_DEFAULT 510
#define STORE_MAX_READERS_LIMIT 8190

/* Tables in one schema, and indexes and foreign keys per table: named databases are allocated
 * at open from these counts and LMDB looks them up linearly, so keep them modest. */
#define STORE_MAX_TABLES 64
#define STORE_MAX_INDEXES 16
#define STORE_MAX_FKEYS 8

/* Names of tables and indexes: short ASCII identifiers, [a-z0-9_], so that database names
 * ("t/<table>", "i/<table>/<index>") stay well under LMDB's key size. */
#define STORE_NAME_MAX 48

/* An index key, extractor output included (the row id is appended to MULTI keys: 8 bytes).
 * LMDB's default build limits keys to 511 bytes; the encoding of one string costs its length
 * plus escapes plus 2. */
#define STORE_KEY_MAX 500

/* An encoded row. Rows are nanopb structs (each under 64 KiB by construction) plus pointer
 * fields; 4 MiB keeps a single row from eating a batch's memory. */
#define STORE_ROW_MAX (4u << 20)

/* Pagination (store_query.page_size): 0 means the default; more than the maximum is
 * INVALID_ARGUMENT, so a client cannot make one call read the whole table. */
#define STORE_PAGE_SIZE_DEFAULT 50
#define STORE_PAGE_SIZE_MAX 500

/* A page token, in characters (without the terminating NUL). It carries one index key (up to
 * STORE_KEY_MAX) and a query fingerprint, sealed (a 24-byte nonce and a 16-byte tag: see
 * store_table.c), base64url encoded; a longer token is refused before it is decoded. */
#define STORE_PAGE_TOKEN_MAX 800

/* Offset pagination skips (page_number - 1) * page_size entries one by one (LMDB keeps no
 * counts), so the skip is bounded: deeper pages must use page tokens. */
#define STORE_OFFSET_MAX 100000

/* Cascading deletes follow foreign keys at most this deep, which also stops a cycle of
 * cascading declarations from recursing forever. */
#define STORE_CASCADE_DEPTH_MAX 8

/* In-process change subscribers (store_subscribe). */
#define STORE_MAX_SUBSCRIBERS 16

/* Error message and field name in store_error: the same sizes as wire_violation, so the RPC
 * layer copies them without truncation. */
#define STORE_ERROR_MESSAGE_MAX 256
#define STORE_ERROR_FIELD_MAX 128

#endif
