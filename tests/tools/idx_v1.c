/* Schema 1 writer: see idx_v1.h. The encodings below are copies of what
 * store/index.c wrote under IDX_SCHEMA_VERSION 1 (little-endian fixed
 * fields, length-prefixed strings; big-endian integers in keys). */
#include "tests/tools/idx_v1.h"

#include <lmdb.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define V1_VERSION 1
#define V1_KEY_PLAIN_MAX 400

struct buf {
    uint8_t p[8192];
    size_t len;
};

static void put8(struct buf *b, uint8_t v)
{
    b->p[b->len++] = v;
}

static void put_le(struct buf *b, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        put8(b, (uint8_t)(v >> (8 * i)));
    }
}

static void put_raw(struct buf *b, const void *data, size_t len)
{
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void be32(uint8_t *out, uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

/* The folder key: the name, or for a long one its first 400 bytes, a NUL
 * and the SHA-256 of the whole name. */
static size_t folder_key(uint8_t *key, const char *name)
{
    size_t len = strlen(name);
    if (len <= V1_KEY_PLAIN_MAX) {
        memcpy(key, name, len);
        return len;
    }
    memcpy(key, name, V1_KEY_PLAIN_MAX);
    key[V1_KEY_PLAIN_MAX] = '\0';
    unsigned int n = 32;
    EVP_Digest(name, len, key + V1_KEY_PLAIN_MAX + 1, &n, EVP_sha256(), NULL);
    return V1_KEY_PLAIN_MAX + 1 + 32;
}

struct w {
    MDB_txn *txn;
    int rc;
    const char *what;
};

static void wput(struct w *w, MDB_dbi dbi, const void *key, size_t klen, const void *val,
                 size_t vlen, const char *what)
{
    if (w->rc != 0) {
        return;
    }
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    MDB_val v = {.mv_size = vlen, .mv_data = (void *)val};
    w->rc = mdb_put(w->txn, dbi, &k, &v, 0);
    w->what = what;
}

enum wdb_mode {
    WDB_OPEN,  /* open, creating it when missing */
    WDB_EMPTY, /* open and remove every record */
    WDB_DROP,  /* delete it when present */
};

static MDB_dbi wdb(struct w *w, const char *name, enum wdb_mode mode)
{
    MDB_dbi dbi = 0;
    if (w->rc != 0) {
        return dbi;
    }
    int rc = mdb_dbi_open(w->txn, name, mode == WDB_DROP ? 0 : MDB_CREATE, &dbi);
    if (rc == MDB_NOTFOUND && mode == WDB_DROP) {
        return dbi;
    }
    if (rc == 0 && mode != WDB_OPEN) {
        rc = mdb_drop(w->txn, dbi, mode == WDB_DROP ? 1 : 0);
    }
    w->rc = rc;
    w->what = name;
    return dbi;
}

static void write_msg(struct w *w, MDB_dbi uid_db, MDB_dbi lid_db, MDB_dbi pending_db, uint32_t fid,
                      const struct idx_msg *m)
{
    struct buf b = {.len = 0};
    size_t lid_len = strlen(m->lid), kw_len = strlen(m->keywords);
    put8(&b, V1_VERSION);
    put_le(&b, m->uid, 4);
    put8(&b, m->state);
    put8(&b, m->flags);
    put_le(&b, m->size, 8);
    put_raw(&b, m->msgid_hash, sizeof(m->msgid_hash));
    put8(&b, (uint8_t)lid_len);
    put_raw(&b, m->lid, lid_len);
    put_le(&b, kw_len, 2);
    put_raw(&b, m->keywords, kw_len);
    uint8_t lkey[4 + IDX_LID_MAX];
    be32(lkey, fid);
    memcpy(lkey + 4, m->lid, lid_len);
    if (m->uid == 0) {
        wput(w, pending_db, lkey, 4 + lid_len, b.p, b.len, "msg_pending");
        return;
    }
    uint8_t ukey[8];
    be32(ukey, fid);
    be32(ukey + 4, m->uid);
    wput(w, uid_db, ukey, sizeof(ukey), b.p, b.len, "msg_uid");
    struct buf l = {.len = 0};
    put8(&l, V1_VERSION);
    put_le(&l, m->uid, 4);
    wput(w, lid_db, lkey, 4 + lid_len, l.p, l.len, "msg_lid");
}

int idx_v1_write(const char *env_path, const struct idx_v1_folder *folders, size_t nfolders,
                 char **err_r)
{
    *err_r = NULL;
    MDB_env *env = NULL;
    struct w w = {.rc = mdb_env_create(&env), .what = "mdb_env_create"};
    if (w.rc == 0) {
        w.rc = mdb_env_set_maxdbs(env, 16);
    }
    if (w.rc == 0) {
        w.rc = mdb_env_set_mapsize(env, (size_t)1 << 30);
    }
    if (w.rc == 0) {
        w.what = "mdb_env_open";
        w.rc = mdb_env_open(env, env_path, MDB_NOTLS, 0600);
    }
    if (w.rc == 0) {
        w.what = "mdb_txn_begin";
        w.rc = mdb_txn_begin(env, NULL, 0, &w.txn);
    }
    static const char *const v2_dbs[] = {"messages", "message_lids", "messages_appending",
                                         "keyword_sets"};
    for (size_t i = 0; i < sizeof(v2_dbs) / sizeof(v2_dbs[0]); i++) {
        wdb(&w, v2_dbs[i], WDB_DROP);
    }
    MDB_dbi meta = wdb(&w, "meta", WDB_OPEN);
    MDB_dbi fdb = wdb(&w, "folders", WDB_EMPTY);
    MDB_dbi uid_db = wdb(&w, "msg_uid", WDB_EMPTY);
    MDB_dbi lid_db = wdb(&w, "msg_lid", WDB_EMPTY);
    MDB_dbi pending_db = wdb(&w, "msg_pending", WDB_EMPTY);
    wdb(&w, "pop", WDB_OPEN);
    for (size_t i = 0; i < nfolders && w.rc == 0; i++) {
        const struct idx_v1_folder *f = &folders[i];
        uint32_t fid = (uint32_t)(i + 1);
        struct buf b = {.len = 0};
        size_t name_len = strlen(f->name);
        put8(&b, V1_VERSION);
        put_le(&b, fid, 4);
        put_le(&b, f->st.uidvalidity, 4);
        put_le(&b, f->st.uidnext, 4);
        put_le(&b, f->st.highestmodseq, 8);
        put_le(&b, (uint64_t)f->st.last_full_sync, 8);
        put_le(&b, f->st.messages, 4);
        put_le(&b, name_len, 2);
        put_raw(&b, f->name, name_len);
        uint8_t key[V1_KEY_PLAIN_MAX + 1 + 32];
        wput(&w, fdb, key, folder_key(key, f->name), b.p, b.len, "folders");
        for (size_t j = 0; j < f->nmsgs; j++) {
            write_msg(&w, uid_db, lid_db, pending_db, fid, &f->msgs[j]);
        }
    }
    struct buf b = {.len = 0};
    put_le(&b, nfolders + 1, 4);
    wput(&w, meta, "next_folder_id", 14, b.p, b.len, "meta");
    b.len = 0;
    put_le(&b, 1, 4);
    wput(&w, meta, "schema_version", 14, b.p, b.len, "meta");
    if (w.rc == 0) {
        w.what = "commit";
        w.rc = mdb_txn_commit(w.txn);
        w.txn = NULL;
    }
    if (w.txn != NULL) {
        mdb_txn_abort(w.txn);
    }
    if (env != NULL) {
        mdb_env_close(env);
    }
    if (w.rc != 0) {
        *err_r = xasprintf("%s: %s: %s", env_path, w.what, mdb_strerror(w.rc));
        return -1;
    }
    return 0;
}
