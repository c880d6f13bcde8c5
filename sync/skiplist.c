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

void skiplist_key(const char *folder, char *buf, size_t cap)
{
    if (strlen(folder) < 400) {
        snprintf(buf, cap, "skip:%s", folder);
        return;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(folder, strlen(folder), md, &len, EVP_sha256(), NULL) != 1 || len < 16) {
        memset(md, 0, 16);
    }
    size_t n = (size_t)snprintf(buf, cap, "skip#");
    for (size_t i = 0; i < 16 && n + 2 < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%02x", md[i]);
    }
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
    unsigned char *buf = small;
    size_t len = 0;
    if (idx_meta_get(txn, key, small, sizeof(small), &len) < 0) {
        return 0;
    }
    if (len > sizeof(small)) {
        buf = xmalloc(len);
        if (idx_meta_get(txn, key, buf, len, &len) < 0) {
            free(buf);
            return 0;
        }
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
