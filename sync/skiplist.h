/* The messages an IMAP folder leaves on the server for max_size or
 * max_age_days, as the index keeps them (one meta value per folder, written
 * with the folder state by the sync engine, read by the engine and by
 * `mailsync status`).
 *
 * The value is little-endian-as-stored (this machine's order): UIDVALIDITY
 * (4 bytes), count (4), then per message UID (4), reason (1: 0 too large,
 * 1 too old), size (8), INTERNALDATE (8, 0 when unknown). */
#ifndef MAILSYNC_SYNC_SKIPLIST_H
#define MAILSYNC_SYNC_SKIPLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/index.h"

struct skip_ent {
    uint32_t uid;
    bool too_old; /* else too large */
    uint64_t size;
    int64_t date;
};

/* The meta key of a folder's list (names of 400 bytes or more are hashed). */
void skiplist_key(const char *folder, char *buf, size_t cap);
/* Reads a folder's list, sorted by UID, into *v_r (caller frees; NULL when
 * empty). A missing or malformed value is an empty list. Returns the count;
 * *uv_r is the UIDVALIDITY it belongs to (0 when none). */
size_t skiplist_load(struct idx_txn *txn, const char *folder, struct skip_ent **v_r,
                     uint32_t *uv_r);
/* Serialises a list (caller frees), at most what one meta value holds: the
 * rest is listed again by the next full listing. */
unsigned char *skiplist_pack(const struct skip_ent *v, size_t n, uint32_t uv, size_t *len_r);
int skiplist_cmp(const void *a, const void *b); /* by UID, for qsort/bsearch */

#endif
