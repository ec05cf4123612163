/* kv on LMDB. The only file of the store that includes lmdb.h. */
#include "kv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <lmdb.h>

/* Below this much room for the data file to grow, a failed write is taken for "disk full".
 * A batch rarely writes more; a genuine I/O error with so little room left is reported as
 * out of space, which is also true. */
#define KV_LOW_SPACE (16ull << 20)

struct kv_env {
    MDB_env *env;
};

struct kv_txn {
    MDB_txn *txn;
};

struct kv_cursor {
    MDB_cursor *cur;
};

/* The engine's message for this thread's last failure, kept so that kv_strerror can say more
 * than the generic kv_status sentence. */
static _Thread_local struct {
    int status;
    char msg[160];
} last_err;

static int map_err(int rc, const char *what)
{
    int st;
    switch (rc) {
    case MDB_SUCCESS:
        return KV_OK;
    case MDB_NOTFOUND:
        return KV_NOTFOUND;
    case MDB_KEYEXIST:
        return KV_EXISTS;
    case MDB_MAP_FULL:
        st = KV_MAP_FULL;
        break;
    case MDB_MAP_RESIZED:
        st = KV_RESIZED;
        break;
    case MDB_READERS_FULL:
        st = KV_READERS_FULL;
        break;
    case MDB_BAD_VALSIZE:
        st = KV_TOO_BIG;
        break;
    case MDB_CORRUPTED:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_PAGE_NOTFOUND:
        st = KV_CORRUPT;
        break;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: /* the file size limit (RLIMIT_FSIZE): the file cannot grow either */
        st = KV_NO_SPACE;
        break;
    default:
        st = KV_ERROR;
        break;
    }
    last_err.status = st;
    snprintf(last_err.msg, sizeof(last_err.msg), "%s: %s", what, mdb_strerror(rc));
    return st;
}

const char *kv_strerror(int status)
{
    if (status != KV_OK && last_err.status == status && last_err.msg[0])
        return last_err.msg;
    switch (status) {
    case KV_OK: return "success";
    case KV_NOTFOUND: return "not found";
    case KV_EXISTS: return "key exists";
    case KV_MAP_FULL: return "map full";
    case KV_NO_SPACE: return "no space left on device";
    case KV_RESIZED: return "map resized by another process";
    case KV_READERS_FULL: return "too many concurrent readers";
    case KV_TOO_BIG: return "key or value too large";
    case KV_CORRUPT: return "database files are damaged or of an incompatible format";
    default: return "storage engine error";
    }
}

int kv_env_open(const char *dir, const kv_env_options *opt, kv_env **out)
{
    *out = NULL;
    kv_env *e = calloc(1, sizeof(*e));
    if (!e)
        return map_err(ENOMEM, "kv_env_open");
    int rc = mdb_env_create(&e->env);
    if (rc) {
        free(e);
        return map_err(rc, "mdb_env_create");
    }
    /* Read transactions are not tied to threads: a reset one keeps its own reader slot, and a
     * thread may hold a second one (store.c, "Reads"). */
    unsigned flags = MDB_NOTLS;
    if (opt->no_sync)
        flags |= MDB_NOSYNC;
    if (opt->read_only)
        flags |= MDB_RDONLY;
    /* Random point reads on a big file gain nothing from read-ahead and pollute the cache. */
    flags |= MDB_NORDAHEAD;
    if ((rc = mdb_env_set_maxdbs(e->env, opt->max_dbs)) ||
        (rc = mdb_env_set_maxreaders(e->env, opt->max_readers)) ||
        (rc = mdb_env_set_mapsize(e->env, opt->map_size)) ||
        (rc = mdb_env_open(e->env, dir, flags, 0640))) {
        int st = map_err(rc, "mdb_env_open");
        mdb_env_close(e->env);
        free(e);
        return st;
    }
    /* Reader slots of processes that died (SIGKILL, crash) pin old pages forever otherwise. */
    int dead = 0;
    rc = mdb_reader_check(e->env, &dead);
    if (rc) {
        int st = map_err(rc, "mdb_reader_check");
        mdb_env_close(e->env);
        free(e);
        return st;
    }
    *out = e;
    return KV_OK;
}

void kv_env_close(kv_env *env)
{
    if (!env)
        return;
    mdb_env_close(env->env);
    free(env);
}

int kv_env_set_map_size(kv_env *env, size_t bytes)
{
    return map_err(mdb_env_set_mapsize(env->env, bytes), "mdb_env_set_mapsize");
}

int kv_env_adopt_size(kv_env *env)
{
    return map_err(mdb_env_set_mapsize(env->env, 0), "mdb_env_set_mapsize");
}

int kv_env_info_get(kv_env *env, kv_env_info *info)
{
    MDB_envinfo ei;
    MDB_stat st;
    int rc = mdb_env_info(env->env, &ei);
    if (!rc)
        rc = mdb_env_stat(env->env, &st);
    if (rc)
        return map_err(rc, "mdb_env_info");
    info->map_size = ei.me_mapsize;
    info->page_size = st.ms_psize;
    info->used_bytes = (ei.me_last_pgno + 1) * (size_t)st.ms_psize;
    info->readers_used = ei.me_numreaders;
    info->max_readers = ei.me_maxreaders;
    return KV_OK;
}

int kv_env_backup(kv_env *env, const char *dir)
{
    return map_err(mdb_env_copy2(env->env, dir, MDB_CP_COMPACT), "mdb_env_copy2");
}

int kv_txn_begin(kv_env *env, kv_txn *parent, unsigned flags, kv_txn **out)
{
    *out = NULL;
    kv_txn *t = malloc(sizeof(*t));
    if (!t)
        return map_err(ENOMEM, "kv_txn_begin");
    int rc = mdb_txn_begin(env->env, parent ? parent->txn : NULL,
                           (flags & KV_TXN_READ) ? MDB_RDONLY : 0, &t->txn);
    if (rc) {
        free(t);
        return map_err(rc, "mdb_txn_begin");
    }
    *out = t;
    return KV_OK;
}

/* LMDB reports a short write as EIO, losing the ENOSPC or EFBIG behind it; so after a failed
 * commit, look whether the data file could grow at all. */
static int cannot_grow(MDB_env *env)
{
    const char *dir;
    struct statvfs vfs;
    if (mdb_env_get_path(env, &dir) == 0 && statvfs(dir, &vfs) == 0 &&
        (unsigned long long)vfs.f_bavail * vfs.f_frsize < KV_LOW_SPACE)
        return 1;
    struct rlimit rl;
    int fd;
    struct stat st;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        mdb_env_get_fd(env, &fd) == 0 && fstat(fd, &st) == 0 &&
        (unsigned long long)st.st_size + KV_LOW_SPACE > (unsigned long long)rl.rlim_cur)
        return 1;
    return 0;
}

int kv_txn_commit(kv_txn *txn)
{
    MDB_env *env = mdb_txn_env(txn->txn);
    int rc = mdb_txn_commit(txn->txn);
    free(txn);
    if (rc == EIO && cannot_grow(env))
        rc = ENOSPC;
    return map_err(rc, "mdb_txn_commit");
}

void kv_txn_abort(kv_txn *txn)
{
    if (!txn)
        return;
    mdb_txn_abort(txn->txn);
    free(txn);
}

/* With MDB_NOTLS (kv_env_open) the reader slot belongs to the MDB_txn, so a reset txn keeps its
 * slot until kv_txn_abort, and renewing it takes no lock of the reader table. */
void kv_txn_reset(kv_txn *txn)
{
    mdb_txn_reset(txn->txn);
}

int kv_txn_renew(kv_txn *txn)
{
    return map_err(mdb_txn_renew(txn->txn), "mdb_txn_renew");
}

int kv_db_open(kv_txn *txn, const char *name, int create, kv_db *out)
{
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn->txn, name, create ? MDB_CREATE : 0, &dbi);
    if (rc)
        return map_err(rc, name);
    *out = dbi;
    return KV_OK;
}

static MDB_val to_mdb(kv_val v)
{
    MDB_val m = {v.len, (void *)(uintptr_t)v.data};
    return m;
}

int kv_get(kv_txn *txn, kv_db db, kv_val key, kv_val *val)
{
    MDB_val k = to_mdb(key), v;
    int rc = mdb_get(txn->txn, db, &k, &v);
    if (rc)
        return map_err(rc, "mdb_get");
    val->data = v.mv_data;
    val->len = v.mv_size;
    return KV_OK;
}

int kv_put(kv_txn *txn, kv_db db, kv_val key, kv_val val, unsigned flags)
{
    MDB_val k = to_mdb(key), v = to_mdb(val);
    return map_err(mdb_put(txn->txn, db, &k, &v, (flags & KV_NOOVERWRITE) ? MDB_NOOVERWRITE : 0),
                   "mdb_put");
}

int kv_del(kv_txn *txn, kv_db db, kv_val key)
{
    MDB_val k = to_mdb(key);
    return map_err(mdb_del(txn->txn, db, &k, NULL), "mdb_del");
}

int kv_drop(kv_txn *txn, kv_db db)
{
    return map_err(mdb_drop(txn->txn, db, 0), "mdb_drop");
}

int kv_db_stat_get(kv_txn *txn, kv_db db, kv_db_stat *out)
{
    MDB_stat st;
    int rc = mdb_stat(txn->txn, db, &st);
    if (rc)
        return map_err(rc, "mdb_stat");
    out->entries = st.ms_entries;
    out->bytes = (uint64_t)st.ms_psize * (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages);
    return KV_OK;
}

int kv_cursor_open(kv_txn *txn, kv_db db, kv_cursor **out)
{
    *out = NULL;
    kv_cursor *c = malloc(sizeof(*c));
    if (!c)
        return map_err(ENOMEM, "kv_cursor_open");
    int rc = mdb_cursor_open(txn->txn, db, &c->cur);
    if (rc) {
        free(c);
        return map_err(rc, "mdb_cursor_open");
    }
    *out = c;
    return KV_OK;
}

int kv_cursor_get(kv_cursor *c, kv_val *key, kv_val *val, enum kv_cursor_op op)
{
    static const MDB_cursor_op ops[] = {
        [KV_FIRST] = MDB_FIRST, [KV_LAST] = MDB_LAST, [KV_NEXT] = MDB_NEXT,
        [KV_PREV] = MDB_PREV,   [KV_SEEK] = MDB_SET_RANGE,
    };
    MDB_val k = {0, NULL}, v = {0, NULL};
    if (op == KV_SEEK)
        k = to_mdb(*key);
    int rc = mdb_cursor_get(c->cur, &k, &v, ops[op]);
    if (rc)
        return map_err(rc, "mdb_cursor_get");
    key->data = k.mv_data;
    key->len = k.mv_size;
    if (val) {
        val->data = v.mv_data;
        val->len = v.mv_size;
    }
    return KV_OK;
}

void kv_cursor_close(kv_cursor *c)
{
    if (!c)
        return;
    mdb_cursor_close(c->cur);
    free(c);
}

int kv_db_names(kv_txn *txn, void (*fn)(void *arg, const char *name), void *arg)
{
    MDB_dbi main_db;
    MDB_cursor *cur;
    int rc = mdb_dbi_open(txn->txn, NULL, 0, &main_db);
    if (!rc)
        rc = mdb_cursor_open(txn->txn, main_db, &cur);
    if (rc)
        return map_err(rc, "main database");
    MDB_val k, v;
    char name[512];
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size >= sizeof(name))
            continue; /* not one of ours: our names are short */
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        fn(arg, name);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? KV_OK : map_err(rc, "mdb_cursor_get");
}

size_t kv_max_key_size(kv_env *env)
{
    return (size_t)mdb_env_get_maxkeysize(env->env);
}
