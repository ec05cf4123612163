/* store administration: verify, backup, stats, and the lagoon-admin command line. */
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Lines of detail printed by verify; problems beyond are counted, not printed, so a badly
 * damaged database gives a readable report. */
#define VERIFY_REPORT_LINES 1000

typedef struct verify_ctx {
    FILE *report;
    uint64_t problems;
} verify_ctx;

static void problem(verify_ctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(verify_ctx *v, const char *fmt, ...)
{
    v->problems++;
    if (!v->report || v->problems > VERIFY_REPORT_LINES)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("  ", v->report);
    vfprintf(v->report, fmt, ap);
    fputc('\n', v->report);
    va_end(ap);
}

static uint64_t be_get(const void *p)
{
    const uint8_t *b = p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

static void be_put(uint8_t *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int decode_row(const store_table *tab, kv_val v, void *row)
{
    memset(row, 0, tab->row_size);
    wire_violation viol;
    return wire_decode_trusted(tab->msg, v.data, v.len, row, &viol);
}

/* Rows -> index entries and foreign keys. */
static int verify_rows(store *s, kv_txn *txn, const store_table_rt *rt, void *row, verify_ctx *v,
                       uint64_t *max_id, uint64_t *nrows)
{
    const store_table *tab = rt->decl;
    kv_cursor *c;
    int rc = kv_cursor_open(txn, rt->rows, &c);
    if (rc)
        return rc;
    kv_val k, val;
    for (rc = kv_cursor_get(c, &k, &val, KV_FIRST); rc == KV_OK;
         rc = kv_cursor_get(c, &k, &val, KV_NEXT)) {
        (*nrows)++;
        if (k.len != 8) {
            problem(v, "%s: a row key is %zu bytes, not 8", tab->name, k.len);
            continue;
        }
        uint64_t id = be_get(k.data);
        if (id > *max_id)
            *max_id = id;
        if (decode_row(tab, val, row)) {
            problem(v, "%s %llu: the row cannot be decoded", tab->name, (unsigned long long)id);
            continue;
        }
        uint64_t rid;
        memcpy(&rid, (char *)row + tab->id_offset, 8);
        if (rid != id)
            problem(v, "%s %llu: the row says its id is %llu", tab->name, (unsigned long long)id,
                    (unsigned long long)rid);
        for (size_t x = 0; x < tab->nindexes; x++) {
            store_key key;
            int has = store_index_entry(tab, x, row, id, &key);
            if (has < 0) {
                problem(v, "%s %llu: its %s key is too long", tab->name, (unsigned long long)id,
                        tab->indexes[x].name);
                continue;
            }
            if (!has)
                continue;
            kv_val ev;
            int erc = kv_get(txn, rt->idx[x], (kv_val){key.buf, key.len}, &ev);
            if (erc == KV_NOTFOUND)
                problem(v, "%s %llu: missing from index %s", tab->name, (unsigned long long)id,
                        tab->indexes[x].name);
            else if (erc == KV_OK && (ev.len != 8 || be_get(ev.data) != id))
                problem(v, "%s %llu: index %s gives its key to row %llu", tab->name,
                        (unsigned long long)id, tab->indexes[x].name,
                        ev.len == 8 ? (unsigned long long)be_get(ev.data) : 0ull);
            else if (erc != KV_OK)
                problem(v, "%s %llu: index %s: %s", tab->name, (unsigned long long)id,
                        tab->indexes[x].name, kv_strerror(erc));
        }
        for (size_t f = 0; f < tab->nfkeys; f++) {
            const store_fkey *fk = &tab->fkeys[f];
            uint64_t pid;
            memcpy(&pid, (char *)row + fk->offset, 8);
            if (pid == 0 && fk->optional)
                continue;
            const store_table_rt *prt = store_rt(s, fk->parent);
            uint8_t pk[8];
            be_put(pk, pid);
            kv_val pv;
            if (kv_get(txn, prt->rows, (kv_val){pk, 8}, &pv) != KV_OK)
                problem(v, "%s %llu: %s = %llu, but there is no such %s row", tab->name,
                        (unsigned long long)id, fk->field, (unsigned long long)pid,
                        fk->parent->name);
        }
        store_row_release(tab, row);
    }
    kv_cursor_close(c);
    return rc == KV_NOTFOUND ? KV_OK : rc;
}

/* Index entries -> rows that produce them. */
static int verify_index(kv_txn *txn, const store_table_rt *rt, size_t x, void *row, verify_ctx *v)
{
    const store_table *tab = rt->decl;
    const store_index *ix = &tab->indexes[x];
    kv_cursor *c;
    int rc = kv_cursor_open(txn, rt->idx[x], &c);
    if (rc)
        return rc;
    kv_val k, val;
    uint64_t n = 0;
    for (rc = kv_cursor_get(c, &k, &val, KV_FIRST); rc == KV_OK;
         rc = kv_cursor_get(c, &k, &val, KV_NEXT)) {
        n++;
        if (val.len != 8) {
            problem(v, "%s.%s: entry #%llu has a %zu-byte value, not an id", tab->name, ix->name,
                    (unsigned long long)n, val.len);
            continue;
        }
        uint64_t id = be_get(val.data);
        uint8_t idk[8];
        be_put(idk, id);
        kv_val rv;
        if (kv_get(txn, rt->rows, (kv_val){idk, 8}, &rv) != KV_OK) {
            problem(v, "%s.%s: entry #%llu points at %s %llu, which does not exist", tab->name,
                    ix->name, (unsigned long long)n, tab->name, (unsigned long long)id);
            continue;
        }
        if (decode_row(tab, rv, row))
            continue; /* reported by verify_rows */
        store_key key;
        int has = store_index_entry(tab, x, row, id, &key);
        if (has != 1 || key.len != k.len || memcmp(key.buf, k.data, k.len) != 0)
            problem(v, "%s.%s: entry #%llu for %s %llu does not match the row's %s", tab->name,
                    ix->name, (unsigned long long)n, tab->name, (unsigned long long)id, ix->field);
        store_row_release(tab, row);
    }
    kv_cursor_close(c);
    return rc == KV_NOTFOUND ? KV_OK : rc;
}

int store_verify(store *s, FILE *report, uint64_t *problems, store_error *err)
{
    verify_ctx v = {report, 0};
    *problems = 0;
    store_txn *t;
    int st = store_read_begin(s, &t, err);
    if (st)
        return st;
    for (size_t i = 0; i < s->schema->ntables && st == LAGOON_OK; i++) {
        const store_table_rt *rt = &s->tables[i];
        const store_table *tab = rt->decl;
        void *row = calloc(1, tab->row_size);
        if (!row) {
            st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
            break;
        }
        uint64_t before = v.problems, max_id = 0, nrows = 0;
        int rc = verify_rows(s, t->kv, rt, row, &v, &max_id, &nrows);
        for (size_t x = 0; rc == KV_OK && x < tab->nindexes; x++)
            rc = verify_index(t->kv, rt, x, row, &v);
        free(row);
        if (rc) {
            st = store_kv_fail(NULL, rc, err, tab->name);
            break;
        }
        char key[sizeof(STORE_SEQ_PREFIX) + STORE_NAME_MAX];
        int kl = snprintf(key, sizeof(key), STORE_SEQ_PREFIX "%s", tab->name);
        kv_val sv;
        uint64_t seq = 0;
        if (kv_get(t->kv, s->meta, (kv_val){key, (size_t)kl}, &sv) == KV_OK && sv.len == 8)
            seq = be_get(sv.data);
        if (max_id > seq)
            problem(&v, "%s: row %llu is beyond the id sequence (%llu): ids could be reused",
                    tab->name, (unsigned long long)max_id, (unsigned long long)seq);
        if (report)
            fprintf(report, "%s: %llu rows, %s\n", tab->name, (unsigned long long)nrows,
                    v.problems == before ? "ok" : "INCONSISTENT");
    }
    store_read_end(t);
    if (report && v.problems > VERIFY_REPORT_LINES)
        fprintf(report, "  ... %llu more problems not shown\n",
                (unsigned long long)(v.problems - VERIFY_REPORT_LINES));
    *problems = v.problems;
    return st;
}

int store_backup(store *s, const char *dir, store_error *err)
{
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "out", "cannot create %s: %s", dir,
                          strerror(errno));
    DIR *d = opendir(dir);
    if (!d)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "out", "cannot open %s: %s", dir,
                          strerror(errno));
    int empty = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = 0;
    closedir(d);
    if (!empty)
        return STORE_FAIL(err, LAGOON_FAILED_PRECONDITION, "out",
                          "%s is not empty: a backup never overwrites", dir);
    /* The copy runs in a read transaction of its own: hold the gate like any read. */
    store_gate_enter_read(s);
    int rc = kv_env_backup(s->env, dir);
    store_gate_leave_read(s);
    return rc ? store_kv_fail(NULL, rc, err, "backup") : LAGOON_OK;
}

typedef struct name_list {
    char **v;
    size_t n, cap;
    int oom;
} name_list;

static void collect_name(void *arg, const char *name)
{
    name_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        l->oom = 1;
        return;
    }
    l->v[l->n++] = copy;
}

/* mdb_dbi_open must not run in two transactions of a process at once. */
static pthread_mutex_t stats_mu = PTHREAD_MUTEX_INITIALIZER;

int store_stats(store *s, FILE *out, store_error *err)
{
    store_txn *t;
    int st = store_read_begin(s, &t, err);
    if (st)
        return st;
    pthread_mutex_lock(&stats_mu);
    name_list names = {0};
    int rc = kv_db_names(t->kv, collect_name, &names);
    if (rc == KV_OK && names.oom)
        st = STORE_FAIL(err, LAGOON_RESOURCE_EXHAUSTED, NULL, "out of memory");
    else if (rc)
        st = store_kv_fail(NULL, rc, err, "listing databases");
    uint64_t total_bytes = 0;
    if (st == LAGOON_OK) {
        fprintf(out, "%-40s %12s %14s\n", "database", "entries", "bytes");
        for (size_t i = 0; i < names.n; i++) {
            kv_db db;
            kv_db_stat ds;
            if (kv_db_open(t->kv, names.v[i], 0, &db) != KV_OK ||
                kv_db_stat_get(t->kv, db, &ds) != KV_OK) {
                fprintf(out, "%-40s %12s %14s\n", names.v[i], "?", "?");
                continue;
            }
            total_bytes += ds.bytes;
            fprintf(out, "%-40s %12llu %14llu\n", names.v[i], (unsigned long long)ds.entries,
                    (unsigned long long)ds.bytes);
        }
    }
    kv_env_info info;
    if (st == LAGOON_OK && kv_env_info_get(s->env, &info) == KV_OK) {
        fprintf(out, "%-40s %12s %14llu\n", "total (named databases)", "",
                (unsigned long long)total_bytes);
        fprintf(out, "map size %zu bytes, in use %zu bytes (%.1f%%), page %u bytes, "
                     "readers %u/%u\n",
                info.map_size, info.used_bytes,
                info.map_size ? 100.0 * (double)info.used_bytes / (double)info.map_size : 0.0,
                info.page_size, info.readers_used, info.max_readers);
    }
    for (size_t i = 0; i < names.n; i++)
        free(names.v[i]);
    free(names.v);
    pthread_mutex_unlock(&stats_mu);
    store_read_end(t);
    return st;
}

/* ---- lagoon-admin ---------------------------------------------------------------------------- */

static void usage_text(FILE *f)
{
    fprintf(f, "usage: lagoon-admin COMMAND --data DIR [--out DIR]\n"
               "  verify   check every index entry, row and foreign key; exit 1 if any is wrong\n"
               "  backup   hot, consistent, compacted copy into --out DIR (empty or new)\n"
               "  stats    rows and bytes per table and index, map size and use\n"
               "  (all three only read: they run beside a live lagoond)\n");
}

static int usage(FILE *errout)
{
    usage_text(errout);
    return 2;
}

int store_admin_main(int argc, char **argv, const store_schema *schema, FILE *out, FILE *errout)
{
    if (argc < 2)
        return usage(errout);
    /* Asked for, the usage is the output and not an error. */
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage_text(out);
        return 0;
    }
    const char *cmd = argv[1], *data = NULL, *outdir = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--data") == 0 && i + 1 < argc)
            data = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            outdir = argv[++i];
        else
            return usage(errout);
    }
    int is_verify = strcmp(cmd, "verify") == 0, is_backup = strcmp(cmd, "backup") == 0,
        is_stats = strcmp(cmd, "stats") == 0;
    if (!data || !(is_verify || is_backup || is_stats) || (is_backup != (outdir != NULL)))
        return usage(errout);

    /* Read-only: the tool never migrates or writes, and it can run beside a live server. */
    store_config cfg = {.schema = schema, .read_only = 1};
    store *s;
    store_error err;
    if (store_open(data, &cfg, &s, &err)) {
        fprintf(errout, "lagoon-admin: %s\n", err.message); /* the message names the directory */
        return 1;
    }
    int status = 0;
    if (is_verify) {
        uint64_t problems;
        fprintf(out, "verifying %s\n", data);
        if (store_verify(s, out, &problems, &err)) {
            fprintf(errout, "lagoon-admin: verify failed: %s\n", err.message);
            status = 1;
        } else if (problems) {
            fprintf(out, "%llu problem(s) found: the database is inconsistent\n",
                    (unsigned long long)problems);
            status = 1;
        } else {
            fprintf(out, "no problems found\n");
        }
    } else if (is_backup) {
        if (store_backup(s, outdir, &err)) {
            fprintf(errout, "lagoon-admin: backup failed: %s\n", err.message);
            status = 1;
        } else {
            fprintf(out, "backup of %s written to %s\n", data, outdir);
        }
    } else {
        if (store_stats(s, out, &err)) {
            fprintf(errout, "lagoon-admin: stats failed: %s\n", err.message);
            status = 1;
        }
    }
    store_close(s);
    return status;
}
