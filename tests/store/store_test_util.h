/* Helpers shared by the store tests: temporary directories and one-line writes. */
#ifndef LAGOON_TEST_STORE_UTIL_H
#define LAGOON_TEST_STORE_UTIL_H

#include <stdint.h>

#include "test_tables.h"

/* A fresh directory under $TMPDIR (or /tmp); malloc'ed path. */
char *tmpdir_make(void);
/* Removes dir and everything in it, and frees the path. */
void tmpdir_remove(char *dir);

/* Opens dir with the test schema; cfg may be NULL for defaults. Fails the test on error. */
store *open_test_store(const char *dir, const store_config *cfg);

/* One write each, through store_write. Return the status; *id (may be NULL) gets the id. */
int add_row(store *s, const store_table *tab, void *row, uint64_t *id, store_error *err);
int add_user(store *s, const char *name, const char *email, int64_t created, uint64_t *id,
             store_error *err);
int add_video(store *s, uint64_t owner, int64_t created, size_t blob_len, uint64_t *id,
              store_error *err);
int add_comment(store *s, uint64_t video, uint64_t author, uint64_t *id, store_error *err);
int add_share(store *s, uint64_t video, uint64_t user, uint64_t *id, store_error *err);
int del_row(store *s, const store_table *tab, uint64_t id, store_error *err);
int row_exists(store *s, const store_table *tab, uint64_t id);

/* Every id of a scan, following page tokens; returns how many (at most max). */
size_t scan_all(store *s, const store_query *q, uint64_t *ids, size_t max);

#endif
