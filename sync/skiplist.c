/* Messages skipped for max_size / max_age_days: see skiplist.h. */
#include "sync/skiplist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/util.h"

#define SKIP_HDR 8
#define SKIP_ENT 21
/* One meta value holds at most this much. */
#define SKIP_MAX_BYTES ((size_t)1 << 20)

/* "PREFIX:FOLDER", or "PREFIX#HASH" for names too long for an LMDB key. */
static void folder_key(const char *prefix, const char *folder, char *buf, size_t cap)
{
    if (strlen(folder) < 400) {
        snprintf(buf, cap, "%s:%s", prefix, folder);
        return;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(folder, strlen(folder), md, &len, EVP_sha256(), NULL) != 1 || len < 16) {
        memset(md, 0, 16);
    }
    size_t n = (size_t)snprintf(buf, cap, "%s#", prefix);
    for (size_t i = 0; i < 16 && n + 2 < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%02x", md[i]);
    }
}

void skiplist_key(const char *folder, char *buf, size_t cap)
{
    folder_key("skip", folder, buf, cap);
}

void skiplist_local_key(const char *folder, char *buf, size_t cap)
{
    folder_key("lskip", folder, buf, cap);
}

/* A meta value of any length into *buf_r (small, or malloc'd when larger);
 * -1 when there is none. */
static int meta_read(struct idx_txn *txn, const char *key, unsigned char *small, size_t cap,
                     unsigned char **buf_r, size_t *len_r)
{
    size_t len = 0;
    *buf_r = small;
    if (idx_meta_get(txn, key, small, cap, &len) < 0) {
        return -1;
    }
    if (len > cap) {
        *buf_r = xmalloc(len);
        if (idx_meta_get(txn, key, *buf_r, len, &len) < 0) {
            free(*buf_r);
            *buf_r = small;
            return -1;
        }
    }
    *len_r = len;
    return 0;
}

int skiplist_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct skip_ent *)a)->uid, y = ((const struct skip_ent *)b)->uid;
    return x < y ? -1 : x > y;
}

size_t skiplist_load(struct idx_txn *txn, const char *folder, struct skip_ent **v_r, uint32_t *uv_r)
{
    *v_r = NULL;
    *uv_r = 0;
    char key[512];
    skiplist_key(folder, key, sizeof(key));
    unsigned char small[4096];
    unsigned char *buf;
    size_t len = 0;
    if (meta_read(txn, key, small, sizeof(small), &buf, &len) < 0) {
        return 0;
    }
    uint32_t count = 0, uv = 0;
    if (len >= SKIP_HDR) {
        memcpy(&uv, buf, 4);
        memcpy(&count, buf + 4, 4);
    }
    size_t n = 0;
    if (len >= SKIP_HDR && len == SKIP_HDR + (size_t)count * SKIP_ENT && count > 0) {
        struct skip_ent *v = xcalloc(count, sizeof(*v));
        for (uint32_t i = 0; i < count; i++) {
            const unsigned char *p = buf + SKIP_HDR + (size_t)i * SKIP_ENT;
            struct skip_ent *s = &v[n++];
            memcpy(&s->uid, p, 4);
            s->too_old = p[4] != 0;
            memcpy(&s->size, p + 5, 8);
            memcpy(&s->date, p + 13, 8);
        }
        qsort(v, n, sizeof(*v), skiplist_cmp);
        *v_r = v;
        *uv_r = uv;
    }
    if (buf != small) {
        free(buf);
    }
    return n;
}

unsigned char *skiplist_pack(const struct skip_ent *v, size_t n, uint32_t uv, size_t *len_r)
{
    size_t max = SKIP_MAX_BYTES / SKIP_ENT - 1;
    if (n > max) {
        n = max;
    }
    unsigned char *buf = xmalloc(SKIP_HDR + n * SKIP_ENT);
    uint32_t count = (uint32_t)n;
    memcpy(buf, &uv, 4);
    memcpy(buf + 4, &count, 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = buf + SKIP_HDR + i * SKIP_ENT;
        memcpy(p, &v[i].uid, 4);
        p[4] = v[i].too_old ? 1 : 0;
        memcpy(p + 5, &v[i].size, 8);
        memcpy(p + 13, &v[i].date, 8);
    }
    *len_r = SKIP_HDR + n * SKIP_ENT;
    return buf;
}

size_t skiplist_local_load(struct idx_txn *txn, const char *folder, struct skip_local **v_r)
{
    *v_r = NULL;
    char key[512];
    skiplist_local_key(folder, key, sizeof(key));
    unsigned char small[4096];
    unsigned char *buf;
    size_t len = 0;
    if (meta_read(txn, key, small, sizeof(small), &buf, &len) < 0) {
        return 0;
    }
    uint32_t count = 0;
    if (len >= 4) {
        memcpy(&count, buf, 4);
    }
    /* Each entry takes at least 5 bytes: a count beyond that is damage. */
    struct skip_local *v = count > 0 && count <= len / 5 ? xcalloc(count, sizeof(*v)) : NULL;
    size_t n = 0, off = 4;
    bool ok = v != NULL;
    while (ok && n < count) {
        uint16_t ll, pl;
        ok = off + 3 <= len;
        if (ok) {
            memcpy(&ll, buf + off + 1, 2);
            ok = ll > 0 && off + 3 + ll + 2 <= len;
        }
        if (ok) {
            memcpy(&pl, buf + off + 3 + ll, 2);
            ok = off + 5 + (size_t)ll + pl <= len;
        }
        if (ok) {
            struct skip_local *s = &v[n++];
            s->reason = (enum skip_local_reason)buf[off];
            s->lid = xstrndup((const char *)buf + off + 3, ll);
            s->path = xstrndup((const char *)buf + off + 5 + ll, pl);
            off += 5 + (size_t)ll + pl;
        }
    }
    if (!ok || off != len) {
        skiplist_local_free(v, n);
        v = NULL;
        n = 0;
    }
    if (buf != small) {
        free(buf);
    }
    *v_r = v;
    return n;
}

/* The bytes entry s takes in a value that holds total bytes so far; 0 when
 * it cannot be stored (what does not fit is found again by the next run). */
static size_t local_entry_len(const struct skip_local *s, size_t total)
{
    size_t ll = strlen(s->lid), pl = strlen(s->path);
    if (ll == 0 || ll > UINT16_MAX || pl > UINT16_MAX || total + 5 + ll + pl > SKIP_MAX_BYTES) {
        return 0;
    }
    return 5 + ll + pl;
}

unsigned char *skiplist_local_pack(const struct skip_local *v, size_t n, size_t *len_r)
{
    size_t len = 4;
    uint32_t count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t el = local_entry_len(&v[i], len);
        len += el;
        count += el > 0;
    }
    unsigned char *buf = xmalloc(len);
    memcpy(buf, &count, 4);
    size_t off = 4;
    for (size_t i = 0; i < n; i++) {
        if (local_entry_len(&v[i], off) == 0) {
            continue;
        }
        uint16_t ll = (uint16_t)strlen(v[i].lid), pl = (uint16_t)strlen(v[i].path);
        buf[off] = (unsigned char)v[i].reason;
        memcpy(buf + off + 1, &ll, 2);
        memcpy(buf + off + 3, v[i].lid, ll);
        memcpy(buf + off + 3 + ll, &pl, 2);
        memcpy(buf + off + 5 + ll, v[i].path, pl);
        off += 5 + (size_t)ll + pl;
    }
    *len_r = off;
    return buf;
}

void skiplist_local_free(struct skip_local *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].lid);
        free(v[i].path);
    }
    free(v);
}
