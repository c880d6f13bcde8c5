/* The sync index on LMDB 0.9.24. See store/index.h for the contract.
 *
 * Files, all under STATE_DIR/<account>/ (mode 0700):
 *   lock                 flock'ed by the process that owns the account; holds
 *                        its pid in decimal so that a second process can say
 *                        who is in the way (mode 0600).
 *   index.mdb/           the LMDB environment directory (mode 0700), opened
 *                        without MDB_NOSUBDIR, so LMDB names its files:
 *   index.mdb/data.mdb   the data file (mode 0600),
 *   index.mdb/lock.mdb   LMDB's reader table (mode 0600).
 *
 * Named databases (every integer in a value is little-endian; integers in
 * keys are big-endian so that LMDB's byte order is numeric order):
 *   meta         "schema_version" -> u32; "next_folder_id" -> u32; plus the
 *                caller's free-form keys from idx_meta_put.
 *   folders      folder key -> folder record. The key is the folder name when
 *                it is at most 400 bytes; a longer name (keys are limited to
 *                511 bytes) is keyed by its first 400 bytes, a NUL (which no
 *                real name contains, so the two forms cannot collide) and
 *                the SHA-256 of the whole name. The record always holds the
 *                full name, so foreach can report it.
 *   msg_uid      folder id (u32 BE) + uid (u32 BE) -> message record.
 *   msg_lid      folder id (u32 BE) + lid bytes -> {version, uid u32}, for
 *                every record that has a UID.
 *   msg_pending  folder id (u32 BE) + lid bytes -> message record, for records
 *                without a UID yet (APPENDING). Keeping them apart makes the
 *                "then APPENDING ones in lid order" walk a plain range scan.
 *   pop          uidl bytes -> pop record.
 *
 * Folders get a numeric id from the "next_folder_id" counter so that message
 * keys stay short; ids are never reused, so a deleted and re-created folder
 * can never see a leftover record of its predecessor.
 *
 * Every record starts with a version byte (REC_VERSION) followed by fixed
 * little-endian fields and length-prefixed strings; nothing is a raw struct
 * image. A record that is short, long, of an unknown version or otherwise
 * impossible is reported as -EBADMSG with a message naming the key. */
#include "store/index.h"

#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define IDX_INITIAL_MAP ((size_t)8 << 20)
/* idx_begin(write) doubles the map ahead of time once this share of it is
 * used, so that MDB_MAP_FULL (and redoing a transaction) stays rare. */
#define IDX_GROW_PERCENT 70
#define IDX_WRITE_ATTEMPTS 20
#define IDX_MAXDBS 8

#define FOLDER_NAME_MAX 4096
#define FOLDER_KEY_PLAIN_MAX 400
#define FOLDER_KEY_MAX (FOLDER_KEY_PLAIN_MAX + 1 + 32)
#define META_KEY_MAX 511
/* "Small" free-form values: a generous cap that still stops a caller bug
 * from filling the map. */
#define META_VAL_MAX ((size_t)1 << 20)
#define ACCOUNT_NAME_MAX 255

#define REC_VERSION 1
/* version + id + uidvalidity + uidnext + highestmodseq + last_full_sync +
 * messages + name length */
#define FOLDER_REC_FIXED (1 + 4 + 4 + 4 + 8 + 8 + 4 + 2)
#define FOLDER_REC_MAX (FOLDER_REC_FIXED + FOLDER_NAME_MAX)
/* version + uid + state + flags + size + msgid_hash + lid length + keywords
 * length */
#define MSG_REC_FIXED (1 + 4 + 1 + 1 + 8 + 16 + 1 + 2)
#define MSG_REC_MAX (MSG_REC_FIXED + IDX_LID_MAX + IDX_KEYWORDS_MAX)
#define LID_REC_LEN (1 + 4)
/* version + flags + first_seen + size + header_hash + lid length */
#define POP_REC_FIXED (1 + 4 + 8 + 8 + 16 + 1)
#define POP_REC_MAX (POP_REC_FIXED + IDX_LID_MAX)

#define META_SCHEMA_VERSION "schema_version"
#define META_NEXT_FOLDER_ID "next_folder_id"

enum idx_db {
    DB_META,
    DB_FOLDERS,
    DB_MSG_UID,
    DB_MSG_LID,
    DB_MSG_PENDING,
    DB_POP,
    DB_COUNT,
};

static const char *const db_names[DB_COUNT] = {
    [DB_META] = "meta",       [DB_FOLDERS] = "folders",         [DB_MSG_UID] = "msg_uid",
    [DB_MSG_LID] = "msg_lid", [DB_MSG_PENDING] = "msg_pending", [DB_POP] = "pop",
};

struct idx_txn {
    struct idx *idx;
    MDB_txn *txn;
    bool write;
    /* False once the LMDB transaction has ended. The write handle lives inside
     * struct idx (there is only ever one), so a caller that still calls
     * idx_abort after IDX_ERETRY has aborted the transaction does no harm. */
    bool active;
    /* The last folder a message call resolved, and its id: a sync touches
     * one folder at a time, so this saves a folder lookup per message.
     * Only idx_folder_delete can invalidate it within a transaction. */
    char *cached_folder;
    uint32_t cached_fid;
};

struct idx {
    char *account;
    char *dir;      /* STATE_DIR/<account> */
    char *env_path; /* STATE_DIR/<account>/index.mdb */
    int lock_fd;
    /* Opened by idx_open_readonly: no lock, no write transactions. */
    bool readonly;
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    unsigned psize;

    /* mu guards the transaction bookkeeping, the map size and err. Remapping
     * (mdb_env_set_mapsize) invalidates every pointer into the map, so it is
     * only done while this process has no transaction of any kind open. */
    pthread_mutex_t mu;
    unsigned readers; /* open read transactions */
    struct idx_txn wtxn;
    bool grow_pending; /* MDB_MAP_FULL seen while readers were open */
    size_t map_size;
    char err[2048];
};

/* Errors */

static void set_errv(struct idx *idx, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void set_errv(struct idx *idx, const char *fmt, va_list ap)
{
    pthread_mutex_lock(&idx->mu);
    vsnprintf(idx->err, sizeof(idx->err), fmt, ap);
    pthread_mutex_unlock(&idx->mu);
}

static int fail(struct idx *idx, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct idx *idx, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errv(idx, fmt, ap);
    va_end(ap);
    return rc;
}

/* Turns an LMDB result into a negative errno. MDB_MAP_FULL is not handled
 * here: write operations go through wr_result, which grows the map. */
static int mdb_to_errno(int rc)
{
    if (rc > 0) {
        return -rc;
    }
    switch (rc) {
    case MDB_NOTFOUND:
        return -ENOENT;
    case MDB_KEYEXIST:
        return -EEXIST;
    case MDB_TXN_FULL:
        return -E2BIG;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
        return -EBADMSG;
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
        return -EPROTO;
    case MDB_READERS_FULL:
        return -EUSERS;
    case MDB_DBS_FULL:
    case MDB_TLS_FULL:
        return -EMFILE;
    case MDB_MAP_RESIZED:
        return -ESTALE;
    case MDB_BAD_TXN:
        return -ECANCELED;
    case MDB_BAD_RSLOT:
        return -EBUSY;
    case MDB_BAD_VALSIZE:
        return -EINVAL;
    case MDB_BAD_DBI:
        return -EBADF;
    default:
        return -EIO;
    }
}

static int lmdb_fail(struct idx *idx, int rc, const char *what)
{
    if (rc == MDB_TXN_FULL) {
        return fail(idx, -E2BIG,
                    "index %s: %s: %s: the transaction touched too many pages; commit in "
                    "smaller batches",
                    idx->env_path, what, mdb_strerror(rc));
    }
    return fail(idx, mdb_to_errno(rc), "index %s: %s: %s", idx->env_path, what, mdb_strerror(rc));
}

/* Map growth */

/* Sets the map size; mu held, no transaction open in this process. */
static int set_map_locked(struct idx *idx, size_t size)
{
    int rc = mdb_env_set_mapsize(idx->env, size);
    if (rc != 0) {
        snprintf(idx->err, sizeof(idx->err), "index %s: cannot grow the map to %zu bytes: %s",
                 idx->env_path, size, mdb_strerror(rc));
        return mdb_to_errno(rc);
    }
    MDB_envinfo info;
    mdb_env_info(idx->env, &info);
    idx->map_size = info.me_mapsize;
    return 0;
}

static bool map_double_ok(size_t size)
{
    return size <= (SIZE_MAX / 2);
}

/* Grows the map when a pending growth is due or the used pages exceed
 * IDX_GROW_PERCENT of it. mu held, no transaction open in this process. */
static int grow_if_needed_locked(struct idx *idx)
{
    size_t target = idx->map_size;
    if (idx->grow_pending) {
        if (!map_double_ok(target)) {
            snprintf(idx->err, sizeof(idx->err), "index %s: map cannot grow beyond %zu bytes",
                     idx->env_path, target);
            return -ENOSPC;
        }
        target *= 2;
    }
    MDB_envinfo info;
    mdb_env_info(idx->env, &info);
    size_t used = ((size_t)info.me_last_pgno + 1) * idx->psize;
    while (used / IDX_GROW_PERCENT > target / 100 && map_double_ok(target)) {
        target *= 2;
    }
    if (target == idx->map_size) {
        return 0;
    }
    int rc = set_map_locked(idx, target);
    if (rc == 0) {
        idx->grow_pending = false;
    }
    return rc;
}

/* Transactions */

static int txn_begin_raw(struct idx *idx, unsigned flags, MDB_txn **txn_r, bool *resized)
{
    int rc = mdb_txn_begin(idx->env, NULL, flags, txn_r);
    *resized = rc == MDB_MAP_RESIZED;
    return rc;
}

int idx_begin(struct idx *idx, bool write, struct idx_txn **txn_r)
{
    *txn_r = NULL;
    if (write && idx->readonly) {
        return fail(idx, -EROFS, "index %s: opened read-only, cannot write", idx->env_path);
    }
    pthread_mutex_lock(&idx->mu);
    if (write) {
        if (idx->wtxn.active) {
            pthread_mutex_unlock(&idx->mu);
            /* A second write transaction from the same thread would deadlock
             * on LMDB's writer mutex; from another thread it is a misuse of
             * the one-writer design. Either way, say so. */
            return fail(idx, -EBUSY, "index %s: a write transaction is already open",
                        idx->env_path);
        }
        if (idx->readers == 0) {
            int rc = grow_if_needed_locked(idx);
            if (rc != 0) {
                pthread_mutex_unlock(&idx->mu);
                return rc;
            }
        } else if (idx->grow_pending) {
            pthread_mutex_unlock(&idx->mu);
            return fail(idx, -EBUSY,
                        "index %s: the map is full and cannot grow while %u read "
                        "transaction(s) are open; end them and retry",
                        idx->env_path, idx->readers);
        }
        idx->wtxn.active = true;
    } else {
        idx->readers++;
    }
    pthread_mutex_unlock(&idx->mu);

    MDB_txn *txn = NULL;
    bool resized;
    int rc = txn_begin_raw(idx, write ? 0 : MDB_RDONLY, &txn, &resized);
    if (resized) {
        /* Another process (an LMDB tool: we hold the account lock) grew the
         * map. Adopt its size when nothing of ours uses the map. */
        pthread_mutex_lock(&idx->mu);
        bool alone = idx->readers + (idx->wtxn.active ? 1u : 0u) == 1;
        if (alone && set_map_locked(idx, 0) == 0) {
            pthread_mutex_unlock(&idx->mu);
            rc = txn_begin_raw(idx, write ? 0 : MDB_RDONLY, &txn, &resized);
        } else {
            pthread_mutex_unlock(&idx->mu);
        }
    }
    if (rc != 0) {
        pthread_mutex_lock(&idx->mu);
        if (write) {
            idx->wtxn.active = false;
        } else {
            idx->readers--;
        }
        pthread_mutex_unlock(&idx->mu);
        return lmdb_fail(idx, rc,
                         write ? "cannot begin a write transaction"
                               : "cannot begin a read transaction");
    }
    struct idx_txn *t;
    if (write) {
        t = &idx->wtxn;
    } else {
        t = xcalloc(1, sizeof(*t));
        t->active = true;
    }
    t->idx = idx;
    t->txn = txn;
    t->write = write;
    *txn_r = t;
    return 0;
}

static void txn_forget_folder(struct idx_txn *t)
{
    free(t->cached_folder);
    t->cached_folder = NULL;
}

/* Ends the bookkeeping of a transaction whose MDB_txn is already gone.
 * Only read transactions are heap objects; the write transaction lives in
 * struct idx (gcc cannot see that the free below is guarded and warns). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
static void txn_release(struct idx_txn *t)
{
    struct idx *idx = t->idx;
    txn_forget_folder(t);
    pthread_mutex_lock(&idx->mu);
    t->txn = NULL;
    t->active = false;
    if (!t->write) {
        idx->readers--;
    }
    pthread_mutex_unlock(&idx->mu);
    if (!t->write) {
        free(t);
    }
}
#pragma GCC diagnostic pop

/* The write transaction hit MDB_MAP_FULL (its MDB_txn already aborted or to
 * be aborted here): grow the map now when no reader is in the way, or note
 * that the next idx_begin(write) must grow it. */
static int map_full(struct idx_txn *t, bool txn_alive)
{
    struct idx *idx = t->idx;
    if (txn_alive) {
        mdb_txn_abort(t->txn);
    }
    t->txn = NULL;
    txn_forget_folder(t);
    pthread_mutex_lock(&idx->mu);
    t->active = false;
    size_t old = idx->map_size;
    idx->grow_pending = true;
    int rc = 0;
    if (idx->readers == 0) {
        rc = grow_if_needed_locked(idx);
    }
    if (rc == 0 && idx->grow_pending) {
        snprintf(idx->err, sizeof(idx->err),
                 "index %s: map full at %zu bytes (%s); transaction aborted; the map will grow "
                 "once the %u open read transaction(s) end",
                 idx->env_path, old, mdb_strerror(MDB_MAP_FULL), idx->readers);
    } else if (rc == 0) {
        snprintf(idx->err, sizeof(idx->err),
                 "index %s: map full at %zu bytes (%s); transaction aborted, map now %zu bytes: "
                 "redo the transaction",
                 idx->env_path, old, mdb_strerror(MDB_MAP_FULL), idx->map_size);
    }
    pthread_mutex_unlock(&idx->mu);
    return rc != 0 ? rc : IDX_ERETRY;
}

int idx_commit(struct idx_txn *txn)
{
    if (txn == NULL) {
        return -EINVAL;
    }
    struct idx *idx = txn->idx;
    if (!txn->active) {
        return fail(idx, IDX_ERETRY,
                    "index %s: commit of a transaction already aborted because the map was "
                    "full: redo the transaction",
                    idx->env_path);
    }
    bool write = txn->write;
    int rc = mdb_txn_commit(txn->txn);
    /* mdb_txn_commit frees the transaction whether or not it succeeded. */
    if (rc == MDB_MAP_FULL && write) {
        return map_full(txn, false);
    }
    txn_release(txn);
    if (rc != 0) {
        return lmdb_fail(idx, rc, "commit failed");
    }
    return 0;
}

void idx_abort(struct idx_txn *txn)
{
    if (txn == NULL || !txn->active) {
        return;
    }
    mdb_txn_abort(txn->txn);
    txn_release(txn);
}

int idx_write(struct idx *idx, int (*fn)(struct idx_txn *txn, void *arg), void *arg)
{
    for (int attempt = 0; attempt < IDX_WRITE_ATTEMPTS; attempt++) {
        struct idx_txn *t;
        int rc = idx_begin(idx, true, &t);
        if (rc != 0) {
            return rc;
        }
        rc = fn(t, arg);
        if (rc != 0) {
            /* After IDX_ERETRY from an index call the transaction is already
             * gone and this does nothing. */
            idx_abort(t);
            if (rc == IDX_ERETRY) {
                continue;
            }
            return rc;
        }
        rc = idx_commit(t);
        if (rc != IDX_ERETRY) {
            return rc;
        }
    }
    return fail(idx, -ENOSPC,
                "index %s: transaction still did not fit after %d attempts (map %zu bytes)",
                idx->env_path, IDX_WRITE_ATTEMPTS, idx_map_size(idx));
}

/* Checks that txn can be used, and for writing when write is set. */
static int txn_check(struct idx_txn *t, bool write)
{
    if (t == NULL) {
        return -EINVAL;
    }
    if (!t->active) {
        return fail(t->idx, IDX_ERETRY,
                    "index %s: the transaction was aborted because the map was full: redo it",
                    t->idx->env_path);
    }
    if (write && !t->write) {
        return fail(t->idx, -EROFS, "index %s: write in a read-only transaction", t->idx->env_path);
    }
    return 0;
}

/* Results of LMDB calls that modify the database. */
static int wr_result(struct idx_txn *t, int rc, const char *what)
{
    if (rc == 0) {
        return 0;
    }
    if (rc == MDB_MAP_FULL) {
        return map_full(t, true);
    }
    return lmdb_fail(t->idx, rc, what);
}

static int db_get(struct idx_txn *t, enum idx_db db, const void *key, size_t klen, MDB_val *v_r)
{
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    int rc = mdb_get(t->txn, t->idx->dbi[db], &k, v_r);
    if (rc == MDB_NOTFOUND) {
        return -ENOENT;
    }
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    return 0;
}

static int db_put(struct idx_txn *t, enum idx_db db, const void *key, size_t klen, const void *val,
                  size_t vlen)
{
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    MDB_val v = {.mv_size = vlen, .mv_data = (void *)val};
    return wr_result(t, mdb_put(t->txn, t->idx->dbi[db], &k, &v, 0), db_names[db]);
}

/* Deletes a key; absent is not an error. */
static int db_del(struct idx_txn *t, enum idx_db db, const void *key, size_t klen)
{
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    int rc = mdb_del(t->txn, t->idx->dbi[db], &k, NULL);
    if (rc == MDB_NOTFOUND) {
        return 0;
    }
    return wr_result(t, rc, db_names[db]);
}

/* Positions a fresh cursor at the first key >= key (or > key when after),
 * copies nothing, and closes it again before returning, so that the caller
 * may run foreign code (which may write, or even lose the transaction)
 * between steps. The returned key and value point into the map and stay
 * valid until the next write in this transaction. */
static int db_seek(struct idx_txn *t, enum idx_db db, const void *key, size_t klen, bool after,
                   MDB_val *k_r, MDB_val *v_r)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[db], &c);
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    k_r->mv_size = klen;
    k_r->mv_data = (void *)key;
    rc = mdb_cursor_get(c, k_r, v_r, klen > 0 ? MDB_SET_RANGE : MDB_FIRST);
    if (rc == 0 && after && k_r->mv_size == klen && memcmp(k_r->mv_data, key, klen) == 0) {
        rc = mdb_cursor_get(c, k_r, v_r, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) {
        return -ENOENT;
    }
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    return 0;
}

static bool has_prefix(const MDB_val *k, const uint8_t *prefix, size_t plen)
{
    return k->mv_size >= plen && memcmp(k->mv_data, prefix, plen) == 0;
}

/* Serialization */

struct wr {
    uint8_t *p;
    size_t len;
};

static void put_u8(struct wr *w, uint8_t v)
{
    w->p[w->len++] = v;
}

static void put_u16(struct wr *w, uint16_t v)
{
    put_u8(w, (uint8_t)v);
    put_u8(w, (uint8_t)(v >> 8));
}

static void put_u32(struct wr *w, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        put_u8(w, (uint8_t)(v >> (8 * i)));
    }
}

static void put_u64(struct wr *w, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        put_u8(w, (uint8_t)(v >> (8 * i)));
    }
}

static void put_bytes(struct wr *w, const void *data, size_t len)
{
    if (len > 0) {
        memcpy(w->p + w->len, data, len);
    }
    w->len += len;
}

struct rd {
    const uint8_t *p;
    size_t len;
    size_t pos;
    bool bad;
};

static bool rd_need(struct rd *r, size_t n)
{
    if (r->bad || r->len - r->pos < n) {
        r->bad = true;
        return false;
    }
    return true;
}

static uint8_t get_u8(struct rd *r)
{
    return rd_need(r, 1) ? r->p[r->pos++] : 0;
}

static uint16_t get_u16(struct rd *r)
{
    uint16_t lo = get_u8(r);
    return (uint16_t)(lo | (uint16_t)get_u8(r) << 8);
}

static uint32_t get_u32(struct rd *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        v |= (uint32_t)get_u8(r) << (8 * i);
    }
    return v;
}

static uint64_t get_u64(struct rd *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v |= (uint64_t)get_u8(r) << (8 * i);
    }
    return v;
}

static void get_bytes(struct rd *r, void *out, size_t n)
{
    if (rd_need(r, n)) {
        memcpy(out, r->p + r->pos, n);
        r->pos += n;
    }
}

/* Reads a length-prefixed string of n bytes into out (n < cap), NUL
 * terminated; an embedded NUL makes the record bad since the caller could
 * not see past it. */
static void get_str(struct rd *r, char *out, size_t n, size_t cap)
{
    if (n >= cap || !rd_need(r, n)) {
        r->bad = true;
        return;
    }
    if (memchr(r->p + r->pos, '\0', n) != NULL) {
        r->bad = true;
        return;
    }
    memcpy(out, r->p + r->pos, n);
    out[n] = '\0';
    r->pos += n;
}

/* True when the whole record was consumed without a short read. */
static bool rd_done(const struct rd *r)
{
    return !r->bad && r->pos == r->len;
}

static void be32(uint8_t *out, uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

static uint32_t rd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Folder records */

struct folder_rec {
    uint32_t id;
    struct idx_folder st;
    char name[FOLDER_NAME_MAX + 1];
};

static size_t folder_encode(uint8_t *buf, uint32_t id, const char *name, size_t name_len,
                            const struct idx_folder *st)
{
    struct wr w = {.p = buf};
    put_u8(&w, REC_VERSION);
    put_u32(&w, id);
    put_u32(&w, st->uidvalidity);
    put_u32(&w, st->uidnext);
    put_u64(&w, st->highestmodseq);
    put_u64(&w, (uint64_t)st->last_full_sync);
    put_u32(&w, st->messages);
    put_u16(&w, (uint16_t)name_len);
    put_bytes(&w, name, name_len);
    return w.len;
}

static bool folder_decode(const MDB_val *v, struct folder_rec *f)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    memset(f, 0, sizeof(*f));
    if (get_u8(&r) != REC_VERSION) {
        return false;
    }
    f->id = get_u32(&r);
    f->st.uidvalidity = get_u32(&r);
    f->st.uidnext = get_u32(&r);
    f->st.highestmodseq = get_u64(&r);
    f->st.last_full_sync = (int64_t)get_u64(&r);
    f->st.messages = get_u32(&r);
    size_t n = get_u16(&r);
    if (n == 0) {
        return false;
    }
    get_str(&r, f->name, n, sizeof(f->name));
    return rd_done(&r) && f->id != 0;
}

static int check_folder_name(struct idx *idx, const char *folder, size_t *len_r)
{
    if (folder == NULL || folder[0] == '\0') {
        return fail(idx, -EINVAL, "index %s: empty folder name", idx->env_path);
    }
    size_t len = strnlen(folder, FOLDER_NAME_MAX + 1);
    if (len > FOLDER_NAME_MAX) {
        return fail(idx, -EINVAL, "index %s: folder name longer than %d bytes", idx->env_path,
                    FOLDER_NAME_MAX);
    }
    *len_r = len;
    return 0;
}

static size_t folder_key(uint8_t *key, const char *name, size_t len)
{
    if (len <= FOLDER_KEY_PLAIN_MAX) {
        memcpy(key, name, len);
        return len;
    }
    memcpy(key, name, FOLDER_KEY_PLAIN_MAX);
    key[FOLDER_KEY_PLAIN_MAX] = '\0';
    unsigned int n = 32;
    if (EVP_Digest(name, len, key + FOLDER_KEY_PLAIN_MAX + 1, &n, EVP_sha256(), NULL) != 1) {
        /* Without a hash the key cannot be built; this only happens when
         * OpenSSL itself is broken, which nothing else survives either. */
        abort();
    }
    return FOLDER_KEY_MAX;
}

/* Looks the folder up; -ENOENT (with a message) when it is not known. */
static int folder_lookup(struct idx_txn *t, const char *folder, struct folder_rec *f)
{
    size_t len = 0;
    int rc = check_folder_name(t->idx, folder, &len);
    if (rc != 0) {
        return rc;
    }
    uint8_t key[FOLDER_KEY_MAX];
    size_t klen = folder_key(key, folder, len);
    MDB_val v;
    rc = db_get(t, DB_FOLDERS, key, klen, &v);
    if (rc == -ENOENT) {
        return fail(t->idx, -ENOENT, "index %s: no folder '%s'", t->idx->env_path, folder);
    }
    if (rc != 0) {
        return rc;
    }
    if (!folder_decode(&v, f) || strcmp(f->name, folder) != 0) {
        return fail(t->idx, -EBADMSG, "index %s: corrupt record for folder '%s'", t->idx->env_path,
                    folder);
    }
    return 0;
}

static int next_folder_id(struct idx_txn *t, uint32_t *id_r)
{
    MDB_val v;
    uint32_t id = 1;
    int rc = db_get(t, DB_META, META_NEXT_FOLDER_ID, strlen(META_NEXT_FOLDER_ID), &v);
    if (rc == 0) {
        if (v.mv_size != 4) {
            return fail(t->idx, -EBADMSG, "index %s: corrupt meta value '%s'", t->idx->env_path,
                        META_NEXT_FOLDER_ID);
        }
        id = le32(v.mv_data);
    } else if (rc != -ENOENT) {
        return rc;
    }
    if (id == 0 || id == UINT32_MAX) {
        return fail(t->idx, -EOVERFLOW, "index %s: folder ids exhausted", t->idx->env_path);
    }
    uint8_t buf[4];
    struct wr w = {.p = buf};
    put_u32(&w, id + 1);
    rc = db_put(t, DB_META, META_NEXT_FOLDER_ID, strlen(META_NEXT_FOLDER_ID), buf, sizeof(buf));
    if (rc != 0) {
        return rc;
    }
    *id_r = id;
    return 0;
}

/* Writes the folder record, allocating an id for a new folder. With
 * only_if_new, an existing folder is left alone (the message functions use
 * that to create a folder on first use). */
static int folder_store(struct idx_txn *t, const char *folder, const struct idx_folder *st,
                        bool only_if_new, uint32_t *id_r)
{
    if (only_if_new && t->cached_folder != NULL && strcmp(t->cached_folder, folder) == 0) {
        *id_r = t->cached_fid;
        return 0;
    }
    struct folder_rec *f = xmalloc(sizeof(*f));
    int rc = folder_lookup(t, folder, f);
    uint32_t id = 0;
    if (rc == 0) {
        id = f->id;
        if (only_if_new) {
            goto out;
        }
    } else if (rc == -ENOENT) {
        rc = next_folder_id(t, &id);
        if (rc != 0) {
            goto out;
        }
    } else {
        goto out;
    }
    size_t len = strlen(folder);
    uint8_t key[FOLDER_KEY_MAX];
    size_t klen = folder_key(key, folder, len);
    uint8_t *buf = xmalloc(FOLDER_REC_MAX);
    size_t blen = folder_encode(buf, id, folder, len, st);
    rc = db_put(t, DB_FOLDERS, key, klen, buf, blen);
    free(buf);
out:
    free(f);
    if (rc == 0 && id_r != NULL) {
        *id_r = id;
    }
    if (rc == 0 && only_if_new) {
        txn_forget_folder(t);
        t->cached_folder = xstrdup(folder);
        t->cached_fid = id;
    }
    return rc;
}

int idx_folder_get(struct idx_txn *txn, const char *folder, struct idx_folder *st_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f = xmalloc(sizeof(*f));
    rc = folder_lookup(txn, folder, f);
    if (rc == 0) {
        *st_r = f->st;
    }
    free(f);
    return rc;
}

int idx_folder_put(struct idx_txn *txn, const char *folder, const struct idx_folder *st)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    if (st == NULL) {
        return fail(txn->idx, -EINVAL, "index %s: no folder state given", txn->idx->env_path);
    }
    return folder_store(txn, folder, st, false, NULL);
}

/* Deletes every key of db that starts with the 4-byte folder prefix. Each
 * step seeks afresh to the first key of the range rather than relying on
 * where mdb_cursor_del leaves the cursor. */
static int delete_prefix(struct idx_txn *t, enum idx_db db, const uint8_t prefix[4])
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[db], &c);
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    for (;;) {
        MDB_val k = {.mv_size = 4, .mv_data = (void *)prefix}, v;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND || (rc == 0 && !has_prefix(&k, prefix, 4))) {
            mdb_cursor_close(c);
            return 0;
        }
        if (rc == 0) {
            rc = mdb_cursor_del(c, 0);
        }
        if (rc != 0) {
            /* Close before wr_result: aborting a write transaction frees
             * its cursors. */
            mdb_cursor_close(c);
            return wr_result(t, rc, db_names[db]);
        }
    }
}

int idx_folder_delete(struct idx_txn *txn, const char *folder)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    txn_forget_folder(txn);
    struct folder_rec *f = xmalloc(sizeof(*f));
    rc = folder_lookup(txn, folder, f);
    if (rc != 0) {
        goto out;
    }
    uint8_t prefix[4];
    be32(prefix, f->id);
    static const enum idx_db dbs[] = {DB_MSG_UID, DB_MSG_LID, DB_MSG_PENDING};
    for (size_t i = 0; i < ARRAY_SIZE(dbs) && rc == 0; i++) {
        rc = delete_prefix(txn, dbs[i], prefix);
    }
    if (rc == 0) {
        uint8_t key[FOLDER_KEY_MAX];
        size_t klen = folder_key(key, folder, strlen(folder));
        rc = db_del(txn, DB_FOLDERS, key, klen);
    }
out:
    free(f);
    return rc;
}

struct folder_item {
    char *name;
    struct idx_folder st;
};

static int folder_item_cmp(const void *a, const void *b)
{
    const struct folder_item *x = a, *y = b;
    return strcmp(x->name, y->name);
}

int idx_folder_foreach(struct idx_txn *txn,
                       int (*fn)(const char *folder, const struct idx_folder *st, void *arg),
                       void *arg)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    /* Collect first: hashed keys of long names do not sort by name, and
     * calling fn with no cursor open lets it change folders as it goes. */
    struct folder_item *items = NULL;
    size_t count = 0, cap = 0;
    struct folder_rec *f = xmalloc(sizeof(*f));
    MDB_cursor *c;
    rc = mdb_cursor_open(txn->txn, txn->idx->dbi[DB_FOLDERS], &c);
    if (rc != 0) {
        free(f);
        return lmdb_fail(txn->idx, rc, db_names[DB_FOLDERS]);
    }
    MDB_val k, v;
    int mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; mrc == 0; mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t key[FOLDER_KEY_MAX];
        size_t klen = 0;
        bool ok = folder_decode(&v, f);
        if (ok) {
            klen = folder_key(key, f->name, strlen(f->name));
        }
        if (!ok || klen != k.mv_size || memcmp(key, k.mv_data, klen) != 0) {
            rc = fail(txn->idx, -EBADMSG, "index %s: corrupt folder record under key '%.*s'",
                      txn->idx->env_path, (int)(k.mv_size > 400 ? 400 : k.mv_size),
                      (const char *)k.mv_data);
            break;
        }
        xgrow(&items, &cap, count + 1, sizeof(*items));
        items[count].name = xstrdup(f->name);
        items[count].st = f->st;
        count++;
    }
    mdb_cursor_close(c);
    free(f);
    if (rc == 0 && mrc != MDB_NOTFOUND) {
        rc = lmdb_fail(txn->idx, mrc, db_names[DB_FOLDERS]);
    }
    if (rc == 0) {
        if (count > 1) {
            qsort(items, count, sizeof(*items), folder_item_cmp);
        }
        for (size_t i = 0; i < count && rc == 0; i++) {
            rc = fn(items[i].name, &items[i].st, arg);
        }
    }
    for (size_t i = 0; i < count; i++) {
        free(items[i].name);
    }
    free(items);
    return rc;
}

/* Message records */

static int check_lid(struct idx *idx, const char *lid, size_t *len_r)
{
    if (lid == NULL || lid[0] == '\0') {
        return fail(idx, -EINVAL, "index %s: empty local identity", idx->env_path);
    }
    size_t len = strnlen(lid, IDX_LID_MAX + 1);
    if (len > IDX_LID_MAX) {
        return fail(idx, -EINVAL, "index %s: local identity longer than %d bytes", idx->env_path,
                    IDX_LID_MAX);
    }
    *len_r = len;
    return 0;
}

static size_t msg_encode(uint8_t *buf, const struct idx_msg *m, size_t lid_len, size_t kw_len)
{
    struct wr w = {.p = buf};
    put_u8(&w, REC_VERSION);
    put_u32(&w, m->uid);
    put_u8(&w, m->state);
    put_u8(&w, m->flags);
    put_u64(&w, m->size);
    put_bytes(&w, m->msgid_hash, sizeof(m->msgid_hash));
    put_u8(&w, (uint8_t)lid_len);
    put_bytes(&w, m->lid, lid_len);
    put_u16(&w, (uint16_t)kw_len);
    put_bytes(&w, m->keywords, kw_len);
    return w.len;
}

static bool msg_decode(const MDB_val *v, struct idx_msg *m)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    memset(m, 0, sizeof(*m));
    if (get_u8(&r) != REC_VERSION) {
        return false;
    }
    m->uid = get_u32(&r);
    m->state = get_u8(&r);
    m->flags = get_u8(&r);
    m->size = get_u64(&r);
    get_bytes(&r, m->msgid_hash, sizeof(m->msgid_hash));
    size_t n = get_u8(&r);
    if (n == 0) {
        return false;
    }
    get_str(&r, m->lid, n, sizeof(m->lid));
    n = get_u16(&r);
    get_str(&r, m->keywords, n, sizeof(m->keywords));
    if (!rd_done(&r) || m->state > IDX_MSG_APPENDING) {
        return false;
    }
    return !(m->state == IDX_MSG_SYNCED && m->uid == 0);
}

static void uid_key(uint8_t key[8], uint32_t fid, uint32_t uid)
{
    be32(key, fid);
    be32(key + 4, uid);
}

static size_t lid_key(uint8_t *key, uint32_t fid, const char *lid, size_t len)
{
    be32(key, fid);
    memcpy(key + 4, lid, len);
    return 4 + len;
}

/* Reads the message stored under uid; -ENOENT without a message when
 * absent, -EBADMSG (with one) when corrupt. */
static int msg_read_uid(struct idx_txn *t, const char *folder, uint32_t fid, uint32_t uid,
                        struct idx_msg *m)
{
    uint8_t key[8];
    uid_key(key, fid, uid);
    MDB_val v;
    int rc = db_get(t, DB_MSG_UID, key, sizeof(key), &v);
    if (rc != 0) {
        return rc;
    }
    if (!msg_decode(&v, m) || m->uid != uid) {
        return fail(t->idx, -EBADMSG,
                    "index %s: corrupt message record for UID %" PRIu32 " in folder '%s'",
                    t->idx->env_path, uid, folder);
    }
    return 0;
}

/* Reads the uid that the lid key of a synced record points to; -ENOENT
 * without a message when absent. */
static int lid_read(struct idx_txn *t, const char *folder, const uint8_t *key, size_t klen,
                    uint32_t *uid_r)
{
    MDB_val v;
    int rc = db_get(t, DB_MSG_LID, key, klen, &v);
    if (rc != 0) {
        return rc;
    }
    const uint8_t *p = v.mv_data;
    if (v.mv_size != LID_REC_LEN || p[0] != REC_VERSION || le32(p + 1) == 0) {
        return fail(t->idx, -EBADMSG, "index %s: corrupt identity record for '%.*s' in folder '%s'",
                    t->idx->env_path, (int)(klen - 4), (const char *)key + 4, folder);
    }
    *uid_r = le32(p + 1);
    return 0;
}

static int pending_read(struct idx_txn *t, const char *folder, const uint8_t *key, size_t klen,
                        struct idx_msg *m)
{
    MDB_val v;
    int rc = db_get(t, DB_MSG_PENDING, key, klen, &v);
    if (rc != 0) {
        return rc;
    }
    if (!msg_decode(&v, m) || m->uid != 0 || strlen(m->lid) != klen - 4 ||
        memcmp(m->lid, key + 4, klen - 4) != 0) {
        return fail(t->idx, -EBADMSG, "index %s: corrupt pending record for '%.*s' in folder '%s'",
                    t->idx->env_path, (int)(klen - 4), (const char *)key + 4, folder);
    }
    return 0;
}

static int check_msg(struct idx *idx, const struct idx_msg *m, size_t *lid_len_r, size_t *kw_len_r)
{
    if (m == NULL) {
        return fail(idx, -EINVAL, "index %s: no message record given", idx->env_path);
    }
    int rc = check_lid(idx, m->lid, lid_len_r);
    if (rc != 0) {
        return rc;
    }
    size_t kw = strnlen(m->keywords, sizeof(m->keywords));
    if (kw > IDX_KEYWORDS_MAX) {
        return fail(idx, -EINVAL, "index %s: keywords of '%s' longer than %d bytes", idx->env_path,
                    m->lid, IDX_KEYWORDS_MAX);
    }
    *kw_len_r = kw;
    if (m->state != IDX_MSG_SYNCED && m->state != IDX_MSG_APPENDING) {
        return fail(idx, -EINVAL, "index %s: invalid state %u for '%s'", idx->env_path, m->state,
                    m->lid);
    }
    if (m->state == IDX_MSG_SYNCED && m->uid == 0) {
        return fail(idx, -EINVAL, "index %s: synced message '%s' without a UID", idx->env_path,
                    m->lid);
    }
    return 0;
}

int idx_msg_put(struct idx_txn *txn, const char *folder, const struct idx_msg *m)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    size_t lid_len = 0, kw_len = 0;
    rc = check_msg(txn->idx, m, &lid_len, &kw_len);
    if (rc != 0) {
        return rc;
    }
    static const struct idx_folder empty;
    uint32_t fid;
    rc = folder_store(txn, folder, &empty, true, &fid);
    if (rc != 0) {
        return rc;
    }

    struct idx_msg oldbuf, *old = &oldbuf;
    uint8_t buf[MSG_REC_MAX];
    uint8_t lkey[4 + IDX_LID_MAX], okey[4 + IDX_LID_MAX], ukey[8];
    size_t lklen = lid_key(lkey, fid, m->lid, lid_len);

    /* Where does this lid live now? */
    uint32_t old_uid = 0;
    rc = lid_read(txn, folder, lkey, lklen, &old_uid);
    if (rc != 0 && rc != -ENOENT) {
        goto out;
    }
    MDB_val pv;
    rc = db_get(txn, DB_MSG_PENDING, lkey, lklen, &pv);
    bool had_pending = rc == 0;
    if (rc != 0 && rc != -ENOENT) {
        goto out;
    }

    /* The lid moves off its old UID (or off UIDs altogether): drop that
     * record, but only if it really is this lid's (a stale pointer must not
     * take another message with it). */
    if (old_uid != 0 && old_uid != m->uid) {
        rc = msg_read_uid(txn, folder, fid, old_uid, old);
        if (rc == 0 && strcmp(old->lid, m->lid) == 0) {
            uid_key(ukey, fid, old_uid);
            rc = db_del(txn, DB_MSG_UID, ukey, sizeof(ukey));
        } else if (rc == -ENOENT) {
            rc = 0;
        }
        if (rc != 0) {
            goto out;
        }
    }

    if (m->uid != 0) {
        /* The UID may be held by another lid: that lid no longer has a
         * record. */
        rc = msg_read_uid(txn, folder, fid, m->uid, old);
        if (rc == 0 && strcmp(old->lid, m->lid) != 0) {
            size_t oklen = lid_key(okey, fid, old->lid, strlen(old->lid));
            uint32_t ouid = 0;
            rc = lid_read(txn, folder, okey, oklen, &ouid);
            if (rc == 0 && ouid == m->uid) {
                rc = db_del(txn, DB_MSG_LID, okey, oklen);
            } else if (rc == 0 || rc == -ENOENT) {
                rc = 0;
            }
        } else if (rc == -ENOENT) {
            rc = 0;
        }
        if (rc != 0) {
            goto out;
        }
        if (had_pending) {
            rc = db_del(txn, DB_MSG_PENDING, lkey, lklen);
            if (rc != 0) {
                goto out;
            }
        }
        uid_key(ukey, fid, m->uid);
        size_t blen = msg_encode(buf, m, lid_len, kw_len);
        rc = db_put(txn, DB_MSG_UID, ukey, sizeof(ukey), buf, blen);
        if (rc == 0 && old_uid != m->uid) {
            struct wr w = {.p = buf};
            put_u8(&w, REC_VERSION);
            put_u32(&w, m->uid);
            rc = db_put(txn, DB_MSG_LID, lkey, lklen, buf, w.len);
        }
    } else {
        if (old_uid != 0) {
            rc = db_del(txn, DB_MSG_LID, lkey, lklen);
            if (rc != 0) {
                goto out;
            }
        }
        size_t blen = msg_encode(buf, m, lid_len, kw_len);
        rc = db_put(txn, DB_MSG_PENDING, lkey, lklen, buf, blen);
    }
out:
    return rc;
}

/* Finds the folder for a message call; -ENOENT with a message when absent. */
static int msg_folder(struct idx_txn *t, const char *folder, uint32_t *fid_r)
{
    if (t->cached_folder != NULL && folder != NULL && strcmp(t->cached_folder, folder) == 0) {
        *fid_r = t->cached_fid;
        return 0;
    }
    struct folder_rec *f = xmalloc(sizeof(*f));
    int rc = folder_lookup(t, folder, f);
    if (rc == 0) {
        *fid_r = f->id;
        txn_forget_folder(t);
        t->cached_folder = xstrdup(folder);
        t->cached_fid = f->id;
    }
    free(f);
    return rc;
}

int idx_msg_get_uid(struct idx_txn *txn, const char *folder, uint32_t uid, struct idx_msg *m_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    if (uid == 0) {
        return fail(txn->idx, -EINVAL, "index %s: UID 0 does not exist", txn->idx->env_path);
    }
    uint32_t fid;
    rc = msg_folder(txn, folder, &fid);
    if (rc != 0) {
        return rc;
    }
    rc = msg_read_uid(txn, folder, fid, uid, m_r);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no UID %" PRIu32 " in folder '%s'",
                    txn->idx->env_path, uid, folder);
    }
    return rc;
}

int idx_msg_get_lid(struct idx_txn *txn, const char *folder, const char *lid, struct idx_msg *m_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    size_t len = 0;
    rc = check_lid(txn->idx, lid, &len);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid;
    rc = msg_folder(txn, folder, &fid);
    if (rc != 0) {
        return rc;
    }
    uint8_t key[4 + IDX_LID_MAX];
    size_t klen = lid_key(key, fid, lid, len);
    uint32_t uid;
    rc = lid_read(txn, folder, key, klen, &uid);
    if (rc == 0) {
        rc = msg_read_uid(txn, folder, fid, uid, m_r);
        if (rc == 0 && strcmp(m_r->lid, lid) != 0) {
            rc = -ENOENT;
        }
        if (rc == -ENOENT) {
            return fail(txn->idx, -EBADMSG,
                        "index %s: '%s' in folder '%s' points to UID %" PRIu32
                        " which is not its record",
                        txn->idx->env_path, lid, folder, uid);
        }
        return rc;
    }
    if (rc != -ENOENT) {
        return rc;
    }
    rc = pending_read(txn, folder, key, klen, m_r);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no message '%s' in folder '%s'",
                    txn->idx->env_path, lid, folder);
    }
    return rc;
}

int idx_msg_delete_lid(struct idx_txn *txn, const char *folder, const char *lid)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    size_t len = 0;
    rc = check_lid(txn->idx, lid, &len);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid;
    rc = msg_folder(txn, folder, &fid);
    if (rc != 0) {
        return rc;
    }
    uint8_t key[4 + IDX_LID_MAX];
    size_t klen = lid_key(key, fid, lid, len);
    uint32_t uid;
    rc = lid_read(txn, folder, key, klen, &uid);
    if (rc == 0) {
        struct idx_msg *m = xmalloc(sizeof(*m));
        rc = msg_read_uid(txn, folder, fid, uid, m);
        /* Remove the UID record only when it is this lid's; a corrupt one
         * goes too, so that deleting is a way out of corruption. */
        if ((rc == 0 && strcmp(m->lid, lid) == 0) || rc == -EBADMSG) {
            uint8_t ukey[8];
            uid_key(ukey, fid, uid);
            rc = db_del(txn, DB_MSG_UID, ukey, sizeof(ukey));
        } else if (rc == 0 || rc == -ENOENT) {
            rc = 0;
        }
        free(m);
        if (rc == 0) {
            rc = db_del(txn, DB_MSG_LID, key, klen);
        }
        return rc;
    }
    if (rc != -ENOENT && rc != -EBADMSG) {
        return rc;
    }
    bool lid_corrupt = rc == -EBADMSG;
    if (lid_corrupt) {
        rc = db_del(txn, DB_MSG_LID, key, klen);
        if (rc != 0) {
            return rc;
        }
    }
    MDB_val v;
    rc = db_get(txn, DB_MSG_PENDING, key, klen, &v);
    if (rc == 0) {
        return db_del(txn, DB_MSG_PENDING, key, klen);
    }
    if (rc == -ENOENT && !lid_corrupt) {
        return fail(txn->idx, -ENOENT, "index %s: no message '%s' in folder '%s'",
                    txn->idx->env_path, lid, folder);
    }
    return rc == -ENOENT ? 0 : rc;
}

int idx_msg_delete_uid(struct idx_txn *txn, const char *folder, uint32_t uid)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    if (uid == 0) {
        return fail(txn->idx, -EINVAL, "index %s: UID 0 does not exist", txn->idx->env_path);
    }
    uint32_t fid;
    rc = msg_folder(txn, folder, &fid);
    if (rc != 0) {
        return rc;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    rc = msg_read_uid(txn, folder, fid, uid, m);
    if (rc == -ENOENT) {
        rc = fail(txn->idx, -ENOENT, "index %s: no UID %" PRIu32 " in folder '%s'",
                  txn->idx->env_path, uid, folder);
        goto out;
    }
    if (rc == 0) {
        /* Drop the lid key if it points here (not if it was since moved). */
        uint8_t key[4 + IDX_LID_MAX];
        size_t klen = lid_key(key, fid, m->lid, strlen(m->lid));
        uint32_t luid;
        rc = lid_read(txn, folder, key, klen, &luid);
        if ((rc == 0 && luid == uid) || rc == -EBADMSG) {
            rc = db_del(txn, DB_MSG_LID, key, klen);
        } else if (rc == 0 || rc == -ENOENT) {
            rc = 0;
        }
        if (rc != 0) {
            goto out;
        }
    } else if (rc != -EBADMSG) {
        goto out;
    }
    /* A corrupt record is removed as well; its lid key, if any, is left to
     * idx_msg_delete_lid, which recognises it as stale. */
    uint8_t ukey[8];
    uid_key(ukey, fid, uid);
    rc = db_del(txn, DB_MSG_UID, ukey, sizeof(ukey));
out:
    free(m);
    return rc;
}

int idx_msg_foreach(struct idx_txn *txn, const char *folder,
                    int (*fn)(const struct idx_msg *m, void *arg), void *arg)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid;
    rc = msg_folder(txn, folder, &fid);
    if (rc != 0) {
        return rc;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    uint8_t prefix[4];
    be32(prefix, fid);

    /* Synced records in UID order. Each step seeks afresh from the last key
     * so fn may write to the index, even to this folder. */
    uint8_t ukey[8];
    uid_key(ukey, fid, 0);
    bool after = false;
    for (;;) {
        MDB_val k, v;
        rc = db_seek(txn, DB_MSG_UID, ukey, sizeof(ukey), after, &k, &v);
        if (rc == -ENOENT || (rc == 0 && !has_prefix(&k, prefix, 4))) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            goto out;
        }
        uint32_t uid = k.mv_size == 8 ? rd_be32((const uint8_t *)k.mv_data + 4) : 0;
        if (!msg_decode(&v, m) || uid == 0 || m->uid != uid) {
            rc = fail(txn->idx, -EBADMSG,
                      "index %s: corrupt message record for UID %" PRIu32 " in folder '%s'",
                      txn->idx->env_path, uid, folder);
            goto out;
        }
        memcpy(ukey, k.mv_data, 8);
        after = true;
        rc = fn(m, arg);
        if (rc != 0) {
            goto out;
        }
        rc = txn_check(txn, false);
        if (rc != 0) {
            goto out;
        }
    }

    /* Then records without a UID, in lid order. */
    uint8_t lkey[4 + IDX_LID_MAX];
    size_t lklen = 4;
    memcpy(lkey, prefix, 4);
    after = false;
    for (;;) {
        MDB_val k, v;
        rc = db_seek(txn, DB_MSG_PENDING, lkey, lklen, after, &k, &v);
        if (rc == -ENOENT || (rc == 0 && !has_prefix(&k, prefix, 4))) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            goto out;
        }
        if (k.mv_size <= 4 || k.mv_size > sizeof(lkey)) {
            rc = fail(txn->idx, -EBADMSG, "index %s: corrupt pending key in folder '%s'",
                      txn->idx->env_path, folder);
            goto out;
        }
        lklen = k.mv_size;
        memcpy(lkey, k.mv_data, lklen);
        if (!msg_decode(&v, m) || m->uid != 0 || strlen(m->lid) != lklen - 4 ||
            memcmp(m->lid, lkey + 4, lklen - 4) != 0) {
            rc = fail(txn->idx, -EBADMSG,
                      "index %s: corrupt pending record for '%.*s' in folder '%s'",
                      txn->idx->env_path, (int)(lklen - 4), (const char *)lkey + 4, folder);
            goto out;
        }
        after = true;
        rc = fn(m, arg);
        if (rc != 0) {
            goto out;
        }
        rc = txn_check(txn, false);
        if (rc != 0) {
            goto out;
        }
    }
out:
    free(m);
    return rc;
}

/* Counts the keys of db under the folder prefix. */
static int count_prefix(struct idx_txn *t, enum idx_db db, const uint8_t prefix[4], size_t *n_r)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[db], &c);
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    MDB_val k = {.mv_size = 4, .mv_data = (void *)prefix}, v;
    size_t n = 0;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && has_prefix(&k, prefix, 4)) {
        n++;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        return lmdb_fail(t->idx, rc, db_names[db]);
    }
    *n_r += n;
    return 0;
}

size_t idx_msg_count(struct idx_txn *txn, const char *folder)
{
    uint32_t fid;
    if (txn_check(txn, false) != 0 || msg_folder(txn, folder, &fid) != 0) {
        return 0;
    }
    uint8_t prefix[4];
    be32(prefix, fid);
    size_t n = 0;
    if (count_prefix(txn, DB_MSG_UID, prefix, &n) != 0 ||
        count_prefix(txn, DB_MSG_PENDING, prefix, &n) != 0) {
        return 0;
    }
    return n;
}

/* POP3 records */

static int check_uidl(struct idx *idx, const char *uidl, size_t *len_r)
{
    if (uidl == NULL) {
        return fail(idx, -EINVAL, "index %s: no UIDL given", idx->env_path);
    }
    size_t len = strnlen(uidl, IDX_UIDL_MAX + 1);
    if (len == 0 || len > IDX_UIDL_MAX) {
        return fail(idx, -EINVAL, "index %s: UIDL must be 1 to %d characters", idx->env_path,
                    IDX_UIDL_MAX);
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)uidl[i];
        if (ch < 0x21 || ch > 0x7e) {
            return fail(idx, -EINVAL,
                        "index %s: UIDL contains byte 0x%02x (only 0x21-0x7e are allowed)",
                        idx->env_path, ch);
        }
    }
    *len_r = len;
    return 0;
}

static bool pop_decode(const MDB_val *k, const MDB_val *v, struct idx_pop *p)
{
    memset(p, 0, sizeof(*p));
    if (k->mv_size == 0 || k->mv_size > IDX_UIDL_MAX) {
        return false;
    }
    for (size_t i = 0; i < k->mv_size; i++) {
        unsigned char ch = ((const unsigned char *)k->mv_data)[i];
        if (ch < 0x21 || ch > 0x7e) {
            return false;
        }
    }
    memcpy(p->uidl, k->mv_data, k->mv_size);
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    if (get_u8(&r) != REC_VERSION) {
        return false;
    }
    p->flags = get_u32(&r);
    p->first_seen = (int64_t)get_u64(&r);
    p->size = get_u64(&r);
    get_bytes(&r, p->header_hash, sizeof(p->header_hash));
    size_t n = get_u8(&r);
    get_str(&r, p->lid, n, sizeof(p->lid));
    return rd_done(&r);
}

int idx_pop_put(struct idx_txn *txn, const struct idx_pop *p)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    if (p == NULL) {
        return fail(txn->idx, -EINVAL, "index %s: no POP record given", txn->idx->env_path);
    }
    size_t ulen = 0;
    rc = check_uidl(txn->idx, p->uidl, &ulen);
    if (rc != 0) {
        return rc;
    }
    size_t lid_len = strnlen(p->lid, sizeof(p->lid));
    if (lid_len > IDX_LID_MAX) {
        return fail(txn->idx, -EINVAL, "index %s: local identity of UIDL %s longer than %d bytes",
                    txn->idx->env_path, p->uidl, IDX_LID_MAX);
    }
    uint8_t buf[POP_REC_MAX];
    struct wr w = {.p = buf};
    put_u8(&w, REC_VERSION);
    put_u32(&w, p->flags);
    put_u64(&w, (uint64_t)p->first_seen);
    put_u64(&w, p->size);
    put_bytes(&w, p->header_hash, sizeof(p->header_hash));
    put_u8(&w, (uint8_t)lid_len);
    put_bytes(&w, p->lid, lid_len);
    return db_put(txn, DB_POP, p->uidl, ulen, buf, w.len);
}

int idx_pop_get(struct idx_txn *txn, const char *uidl, struct idx_pop *p_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    size_t len = 0;
    rc = check_uidl(txn->idx, uidl, &len);
    if (rc != 0) {
        return rc;
    }
    MDB_val v;
    rc = db_get(txn, DB_POP, uidl, len, &v);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no POP record for UIDL %s", txn->idx->env_path,
                    uidl);
    }
    if (rc != 0) {
        return rc;
    }
    MDB_val k = {.mv_size = len, .mv_data = (void *)uidl};
    if (!pop_decode(&k, &v, p_r)) {
        return fail(txn->idx, -EBADMSG, "index %s: corrupt POP record for UIDL %s",
                    txn->idx->env_path, uidl);
    }
    return 0;
}

int idx_pop_delete(struct idx_txn *txn, const char *uidl)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    size_t len = 0;
    rc = check_uidl(txn->idx, uidl, &len);
    if (rc != 0) {
        return rc;
    }
    MDB_val v;
    rc = db_get(txn, DB_POP, uidl, len, &v);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no POP record for UIDL %s", txn->idx->env_path,
                    uidl);
    }
    if (rc != 0) {
        return rc;
    }
    return db_del(txn, DB_POP, uidl, len);
}

int idx_pop_foreach(struct idx_txn *txn, int (*fn)(const struct idx_pop *p, void *arg), void *arg)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct idx_pop p;
    char last[IDX_UIDL_MAX];
    size_t last_len = 0;
    bool after = false;
    for (;;) {
        MDB_val k, v;
        rc = db_seek(txn, DB_POP, last, last_len, after, &k, &v);
        if (rc == -ENOENT) {
            return 0;
        }
        if (rc != 0) {
            return rc;
        }
        if (!pop_decode(&k, &v, &p)) {
            return fail(txn->idx, -EBADMSG, "index %s: corrupt POP record under key '%.*s'",
                        txn->idx->env_path, (int)(k.mv_size > 70 ? 70 : k.mv_size),
                        (const char *)k.mv_data);
        }
        last_len = k.mv_size;
        memcpy(last, k.mv_data, last_len);
        after = true;
        rc = fn(&p, arg);
        if (rc != 0) {
            return rc;
        }
        rc = txn_check(txn, false);
        if (rc != 0) {
            return rc;
        }
    }
}

int idx_pop_walk(struct idx_txn *txn, int (*fn)(const struct idx_pop *p, void *arg), void *arg)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    /* One cursor for the whole walk: a step is a move to the next node,
     * where idx_pop_foreach pays a cursor and a descent from the root per
     * record. That is only safe because fn does not write. */
    MDB_cursor *c;
    rc = mdb_cursor_open(txn->txn, txn->idx->dbi[DB_POP], &c);
    if (rc != 0) {
        return lmdb_fail(txn->idx, rc, db_names[DB_POP]);
    }
    struct idx_pop p;
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (!pop_decode(&k, &v, &p)) {
            mdb_cursor_close(c);
            return fail(txn->idx, -EBADMSG, "index %s: corrupt POP record under key '%.*s'",
                        txn->idx->env_path, (int)(k.mv_size > 70 ? 70 : k.mv_size),
                        (const char *)k.mv_data);
        }
        int r = fn(&p, arg);
        if (r != 0) {
            mdb_cursor_close(c);
            return r;
        }
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) {
        return lmdb_fail(txn->idx, rc, db_names[DB_POP]);
    }
    return 0;
}

/* Meta */

static int check_meta_key(struct idx *idx, const char *key, size_t *len_r)
{
    if (key == NULL || key[0] == '\0') {
        return fail(idx, -EINVAL, "index %s: empty meta key", idx->env_path);
    }
    size_t len = strnlen(key, META_KEY_MAX + 1);
    if (len > META_KEY_MAX) {
        return fail(idx, -EINVAL, "index %s: meta key longer than %d bytes", idx->env_path,
                    META_KEY_MAX);
    }
    *len_r = len;
    return 0;
}

/* The checks of a meta write: a write transaction, a valid key, and not
 * one of the keys the index keeps for itself. */
static int meta_writable(struct idx_txn *txn, const char *key, size_t *klen_r)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    rc = check_meta_key(txn->idx, key, klen_r);
    if (rc != 0) {
        return rc;
    }
    if (strcmp(key, META_SCHEMA_VERSION) == 0 || strcmp(key, META_NEXT_FOLDER_ID) == 0) {
        return fail(txn->idx, -EINVAL, "index %s: meta key '%s' is reserved for the index itself",
                    txn->idx->env_path, key);
    }
    return 0;
}

int idx_meta_put(struct idx_txn *txn, const char *key, const void *val, size_t len)
{
    size_t klen = 0;
    int rc = meta_writable(txn, key, &klen);
    if (rc != 0) {
        return rc;
    }
    if (len > META_VAL_MAX || (val == NULL && len > 0)) {
        return fail(txn->idx, -EINVAL, "index %s: meta value for '%s' too large (%zu bytes)",
                    txn->idx->env_path, key, len);
    }
    return db_put(txn, DB_META, key, klen, val, len);
}

int idx_meta_delete(struct idx_txn *txn, const char *key)
{
    size_t klen = 0;
    int rc = meta_writable(txn, key, &klen);
    return rc != 0 ? rc : db_del(txn, DB_META, key, klen);
}

int idx_meta_get(struct idx_txn *txn, const char *key, void *buf, size_t cap, size_t *len_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    size_t klen = 0;
    rc = check_meta_key(txn->idx, key, &klen);
    if (rc != 0) {
        return rc;
    }
    if (buf == NULL && cap > 0) {
        return fail(txn->idx, -EINVAL, "index %s: no buffer for meta value", txn->idx->env_path);
    }
    MDB_val v;
    rc = db_get(txn, DB_META, key, klen, &v);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no meta value '%s'", txn->idx->env_path, key);
    }
    if (rc != 0) {
        return rc;
    }
    size_t n = v.mv_size < cap ? v.mv_size : cap;
    if (n > 0) {
        memcpy(buf, v.mv_data, n);
    }
    if (len_r != NULL) {
        *len_r = v.mv_size;
    }
    return 0;
}

/* Opening */

static int check_account(const char *account, char **err_r)
{
    if (account == NULL || account[0] == '\0') {
        *err_r = xstrdup("invalid account name: empty");
        return -EINVAL;
    }
    if (strchr(account, '/') != NULL) {
        *err_r = xasprintf("invalid account name '%s': must not contain '/'", account);
        return -EINVAL;
    }
    if (account[0] == '.') {
        *err_r = xasprintf("invalid account name '%s': must not start with '.'", account);
        return -EINVAL;
    }
    if (strlen(account) > ACCOUNT_NAME_MAX) {
        *err_r = xasprintf("invalid account name '%.40s...': longer than %d bytes", account,
                           ACCOUNT_NAME_MAX);
        return -EINVAL;
    }
    return 0;
}

/* Makes sure path has no permission bits beyond mode (state is private to
 * the user: DESIGN.md invariant 8). */
static int tighten(const char *path, mode_t mode, char **err_r)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        *err_r = xasprintf("cannot stat %s: %s", path, strerror(e));
        return -e;
    }
    if ((st.st_mode & 07777) != mode && chmod(path, mode) != 0) {
        int e = errno;
        *err_r = xasprintf("cannot chmod %s to %04o: %s", path, (unsigned)mode, strerror(e));
        return -e;
    }
    return 0;
}

static int make_dir(const char *path, char **err_r)
{
    int rc = mkdir_p(path, 0700);
    if (rc != 0) {
        *err_r = xasprintf("cannot create directory %s: %s", path, strerror(-rc));
        return rc;
    }
    return tighten(path, 0700, err_r);
}

static int take_lock(struct idx *idx, char **err_r)
{
    char *path = path_join(idx->dir, "lock");
    int rc = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        *err_r = xasprintf("cannot open lock file %s: %s", path, strerror(-rc));
        goto out;
    }
    rc = tighten(path, 0600, err_r);
    if (rc != 0) {
        goto out;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = -errno;
        if (rc != -EWOULDBLOCK) {
            *err_r = xasprintf("cannot lock %s: %s", path, strerror(-rc));
            goto out;
        }
        /* The holder writes its pid right after taking the lock: if we
         * looked in between, look once more. */
        char buf[32] = {0};
        long pid = 0;
        for (int i = 0; i < 2 && pid <= 0; i++) {
            ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
            buf[n > 0 ? n : 0] = '\0';
            pid = strtol(buf, NULL, 10);
            if (pid <= 0 && i == 0) {
                usleep(20000);
            }
        }
        if (pid > 0 && pid <= INT32_MAX && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            /* The pid is an earlier holder's: some other program holds the
             * lock now (e.g. flock(1) around a backup). */
            *err_r = xasprintf("account '%s' is locked by another process (%s is held)",
                               idx->account, path);
        } else if (pid > 0) {
            *err_r = xasprintf("account '%s' is already being synced by another mailsync "
                               "process (pid %ld)",
                               idx->account, pid);
        } else {
            *err_r = xasprintf("account '%s' is locked by another process (pid unknown; %s "
                               "is held)",
                               idx->account, path);
        }
        goto out;
    }
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)len, 0) != len) {
        rc = -errno;
        if (rc == 0) {
            rc = -EIO;
        }
        *err_r = xasprintf("cannot write lock file %s: %s", path, strerror(-rc));
        goto out;
    }
    idx->lock_fd = fd;
    fd = -1;
out:
    if (fd >= 0) {
        close(fd);
    }
    free(path);
    return rc;
}

/* Reads a stored schema version record: refuses a malformed one and one
 * written by a newer build (idx_open and idx_open_readonly say the same). */
static int schema_check(struct idx *idx, const MDB_val *v, uint32_t *version_r)
{
    uint32_t version = v->mv_size == 4 ? le32(v->mv_data) : 0;
    if (version == 0) {
        return fail(idx, -EBADMSG, "index %s: corrupt schema version record", idx->env_path);
    }
    if (version > IDX_SCHEMA_VERSION) {
        return fail(idx, -EPROTO,
                    "index %s was written by a newer mailsync (schema %" PRIu32
                    ", this build understands up to %u); upgrade mailsync or move the "
                    "index away",
                    idx->env_path, version, IDX_SCHEMA_VERSION);
    }
    *version_r = version;
    return 0;
}

/* Opens the named databases and checks or stamps the schema version; run
 * through idx_write so a full map is grown like anywhere else. */
static int open_schema(struct idx_txn *t, void *arg)
{
    struct idx *idx = t->idx;
    (void)arg;
    int rc = mdb_dbi_open(t->txn, db_names[DB_META], MDB_CREATE, &idx->dbi[DB_META]);
    if (rc != 0) {
        return wr_result(t, rc, "cannot open the meta database");
    }
    MDB_val v;
    rc = db_get(t, DB_META, META_SCHEMA_VERSION, strlen(META_SCHEMA_VERSION), &v);
    bool fresh = rc == -ENOENT;
    bool stamp = fresh;
    if (rc != 0 && !fresh) {
        return rc;
    }
    if (!fresh) {
        uint32_t version = 0;
        rc = schema_check(idx, &v, &version);
        if (rc != 0) {
            return rc;
        }
        /* Migrations go here: when IDX_SCHEMA_VERSION becomes 2, a version 1
         * index is converted in this transaction (so that a crash leaves
         * either the old or the new layout) and stamped with the new
         * version below. Version 1 is the first, so there is nothing to
         * convert yet. */
        stamp = version < IDX_SCHEMA_VERSION;
    }
    for (int i = 0; i < DB_COUNT; i++) {
        if (i == DB_META) {
            continue;
        }
        rc = mdb_dbi_open(t->txn, db_names[i], MDB_CREATE, &idx->dbi[i]);
        if (rc != 0) {
            return wr_result(t, rc, db_names[i]);
        }
    }
    if (stamp) {
        uint8_t buf[4];
        struct wr w = {.p = buf};
        put_u32(&w, IDX_SCHEMA_VERSION);
        return db_put(t, DB_META, META_SCHEMA_VERSION, strlen(META_SCHEMA_VERSION), buf,
                      sizeof(buf));
    }
    return 0;
}

static int open_env(struct idx *idx, char **err_r)
{
    int rc = make_dir(idx->env_path, err_r);
    if (rc != 0) {
        return rc;
    }
    char *data = path_join(idx->env_path, "data.mdb");
    char *lock = path_join(idx->env_path, "lock.mdb");
    struct stat st;
    bool fresh = stat(data, &st) != 0;
    rc = mdb_env_create(&idx->env);
    if (rc == 0) {
        rc = mdb_env_set_maxdbs(idx->env, IDX_MAXDBS);
    }
    /* An existing index keeps the map size stored in it (LMDB reads it from
     * the file when none is set before opening). */
    if (rc == 0 && fresh) {
        rc = mdb_env_set_mapsize(idx->env, IDX_INITIAL_MAP);
    }
    if (rc == 0) {
        /* MDB_NOTLS: read transactions belong to their txn object, not to
         * the thread, so threadpool jobs and nested reads work. */
        rc = mdb_env_open(idx->env, idx->env_path, MDB_NOTLS, 0600);
    }
    if (rc != 0) {
        *err_r = xasprintf("cannot open index %s: %s", idx->env_path, mdb_strerror(rc));
        rc = mdb_to_errno(rc);
        goto out;
    }
    if ((rc = tighten(data, 0600, err_r)) != 0 || (rc = tighten(lock, 0600, err_r)) != 0) {
        goto out;
    }
    int dead = 0;
    rc = mdb_reader_check(idx->env, &dead);
    if (rc != 0) {
        *err_r = xasprintf("index %s: reader check failed: %s", idx->env_path, mdb_strerror(rc));
        rc = mdb_to_errno(rc);
        goto out;
    }
    MDB_stat ms;
    MDB_envinfo info;
    mdb_env_stat(idx->env, &ms);
    mdb_env_info(idx->env, &info);
    idx->psize = ms.ms_psize;
    idx->map_size = info.me_mapsize;
    if (idx->map_size < IDX_INITIAL_MAP) {
        pthread_mutex_lock(&idx->mu);
        rc = set_map_locked(idx, IDX_INITIAL_MAP);
        pthread_mutex_unlock(&idx->mu);
        if (rc != 0) {
            *err_r = xstrdup(idx->err);
            goto out;
        }
    }
    rc = idx_write(idx, open_schema, NULL);
    if (rc != 0) {
        *err_r = xstrdup(idx->err);
    }
out:
    free(data);
    free(lock);
    return rc;
}

/* Checks the arguments of both open calls. */
static int open_args(const char *state_dir, const char *account, char **err_r)
{
    int rc = check_account(account, err_r);
    if (rc != 0) {
        return rc;
    }
    if (state_dir == NULL || state_dir[0] == '\0') {
        *err_r = xstrdup("no state directory given");
        return -EINVAL;
    }
    return 0;
}

static struct idx *idx_new(const char *state_dir, const char *account)
{
    struct idx *idx = xcalloc(1, sizeof(*idx));
    pthread_mutex_init(&idx->mu, NULL);
    idx->lock_fd = -1;
    idx->account = xstrdup(account);
    idx->dir = path_join(state_dir, account);
    idx->env_path = path_join(idx->dir, "index.mdb");
    idx->wtxn.idx = idx;
    idx->wtxn.write = true;
    return idx;
}

int idx_open(const char *state_dir, const char *account, struct idx **idx_r, char **err_r)
{
    *idx_r = NULL;
    *err_r = NULL;
    int rc = open_args(state_dir, account, err_r);
    if (rc != 0) {
        return rc;
    }
    struct idx *idx = idx_new(state_dir, account);
    rc = make_dir(idx->dir, err_r);
    if (rc == 0) {
        /* Lock before touching the environment: the lock, not LMDB's own
         * locking, is what keeps two daemons from syncing one account. */
        rc = take_lock(idx, err_r);
    }
    if (rc == 0) {
        rc = open_env(idx, err_r);
    }
    if (rc != 0) {
        idx_close(idx);
        return rc;
    }
    *idx_r = idx;
    return 0;
}

/* Opens the databases of an existing environment in one read transaction,
 * creating nothing: an environment that has no "meta" database yet was
 * never completely opened by idx_open (a first sync that is starting right
 * now, or one that died before its first commit), which is the same as no
 * index. */
static int ro_open_dbs(struct idx *idx, char **err_r)
{
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);
    if (rc == MDB_MAP_RESIZED) {
        /* The writer grew the map since mdb_env_open read its size. */
        rc = mdb_env_set_mapsize(idx->env, 0);
        if (rc == 0) {
            MDB_envinfo info;
            mdb_env_info(idx->env, &info);
            idx->map_size = info.me_mapsize;
            rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);
        }
    }
    if (rc != 0) {
        *err_r = xasprintf("index %s: cannot begin a read transaction: %s", idx->env_path,
                           mdb_strerror(rc));
        return mdb_to_errno(rc);
    }
    rc = mdb_dbi_open(txn, db_names[DB_META], 0, &idx->dbi[DB_META]);
    if (rc == MDB_NOTFOUND) {
        *err_r = xasprintf("index %s holds no data yet", idx->env_path);
        rc = -ENOENT;
        goto out;
    }
    if (rc != 0) {
        *err_r = xasprintf("index %s: cannot open the meta database: %s", idx->env_path,
                           mdb_strerror(rc));
        rc = mdb_to_errno(rc);
        goto out;
    }
    MDB_val k = {.mv_size = strlen(META_SCHEMA_VERSION), .mv_data = META_SCHEMA_VERSION}, v;
    rc = mdb_get(txn, idx->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        *err_r = xasprintf("index %s holds no data yet", idx->env_path);
        rc = -ENOENT;
        goto out;
    }
    if (rc != 0) {
        *err_r = xasprintf("index %s: meta: %s", idx->env_path, mdb_strerror(rc));
        rc = mdb_to_errno(rc);
        goto out;
    }
    uint32_t version = 0;
    rc = schema_check(idx, &v, &version);
    if (rc != 0) {
        *err_r = xstrdup(idx->err);
        goto out;
    }
    if (version < IDX_SCHEMA_VERSION) {
        /* Converting is idx_open's job, done under the account lock. */
        *err_r = xasprintf("index %s was written by an older mailsync (schema %" PRIu32
                           ", this build uses %u); run 'mailsync sync' once to convert it",
                           idx->env_path, version, IDX_SCHEMA_VERSION);
        rc = -EPROTO;
        goto out;
    }
    for (int i = 0; i < DB_COUNT; i++) {
        if (i == DB_META) {
            continue;
        }
        rc = mdb_dbi_open(txn, db_names[i], 0, &idx->dbi[i]);
        if (rc != 0) {
            *err_r = xasprintf("index %s: cannot open the %s database: %s", idx->env_path,
                               db_names[i], mdb_strerror(rc));
            rc = rc == MDB_NOTFOUND ? -EBADMSG : mdb_to_errno(rc);
            goto out;
        }
    }
    /* Handles opened in a transaction only outlive it once it commits. */
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        *err_r = xasprintf("index %s: %s", idx->env_path, mdb_strerror(rc));
        rc = mdb_to_errno(rc);
    }
out:
    if (txn != NULL) {
        mdb_txn_abort(txn);
    }
    return rc;
}

int idx_open_readonly(const char *state_dir, const char *account, struct idx **idx_r, char **err_r)
{
    *idx_r = NULL;
    *err_r = NULL;
    int rc = open_args(state_dir, account, err_r);
    if (rc != 0) {
        return rc;
    }
    struct idx *idx = idx_new(state_dir, account);
    idx->readonly = true;
    /* Without a data file LMDB would still create lock.mdb before failing,
     * and the data file is what says whether there is an index at all:
     * look first, so that a never synced account is left as it is. */
    char *data = path_join(idx->env_path, "data.mdb");
    struct stat st;
    if (stat(data, &st) != 0) {
        rc = -errno;
        if (rc == -ENOENT || rc == -ENOTDIR) {
            *err_r = xasprintf("no index at %s", idx->env_path);
            rc = -ENOENT;
        } else {
            *err_r = xasprintf("cannot read index %s: %s", data, strerror(-rc));
        }
        goto out;
    }
    if (st.st_size == 0) {
        /* A first idx_open is creating it at this very moment: LMDB would
         * try to write its first pages through our read-only descriptor. */
        *err_r = xasprintf("index %s holds no data yet", idx->env_path);
        rc = -ENOENT;
        goto out;
    }
    rc = mdb_env_create(&idx->env);
    if (rc == 0) {
        rc = mdb_env_set_maxdbs(idx->env, IDX_MAXDBS);
    }
    if (rc == 0) {
        /* No map size is set: LMDB takes the one stored in the file, and
         * idx_begin adopts a larger one when the writer grows it. MDB_RDONLY
         * still registers our readers in lock.mdb, which is what keeps the
         * writer from reusing the pages they read. */
        rc = mdb_env_open(idx->env, idx->env_path, MDB_RDONLY | MDB_NOTLS, 0600);
    }
    if (rc != 0) {
        *err_r = xasprintf("cannot open index %s: %s", idx->env_path, mdb_strerror(rc));
        rc = mdb_to_errno(rc);
        goto out;
    }
    MDB_stat ms;
    MDB_envinfo info;
    mdb_env_stat(idx->env, &ms);
    mdb_env_info(idx->env, &info);
    idx->psize = ms.ms_psize;
    idx->map_size = info.me_mapsize;
    rc = ro_open_dbs(idx, err_r);
out:
    free(data);
    if (rc != 0) {
        idx_close(idx);
        return rc;
    }
    *idx_r = idx;
    return 0;
}

char *idx_path(const char *state_dir, const char *account)
{
    char *dir = path_join(state_dir, account);
    char *path = path_join(dir, "index.mdb");
    free(dir);
    return path;
}

void idx_close(struct idx *idx)
{
    if (idx == NULL) {
        return;
    }
    idx_abort(&idx->wtxn);
    if (idx->env != NULL) {
        mdb_env_close(idx->env);
    }
    if (idx->lock_fd >= 0) {
        /* Closing the descriptor releases the flock. */
        close(idx->lock_fd);
    }
    pthread_mutex_destroy(&idx->mu);
    free(idx->account);
    free(idx->dir);
    free(idx->env_path);
    free(idx);
}

const char *idx_error(const struct idx *idx)
{
    return idx->err;
}

size_t idx_map_size(const struct idx *idx)
{
    pthread_mutex_lock((pthread_mutex_t *)&idx->mu);
    size_t n = idx->map_size;
    pthread_mutex_unlock((pthread_mutex_t *)&idx->mu);
    return n;
}

bool idx_pop_is_intent(const struct idx_pop *p)
{
    return p->lid[0] != '\0' &&
           !(p->flags & (IDX_POP_DELIVERED | IDX_POP_SKIPPED | IDX_POP_DELETED_LOCALLY));
}
