/* The messages an IMAP folder leaves on the server for max_size or
 * max_age_days (and, below, the local files it cannot upload), as the index keeps them (one meta
 * value per folder, written with the folder state by the sync engine, read by the engine and by
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

/* The local files a folder leaves out of uploads because no server can
 * store them (today: empty files), one meta value per folder beside the
 * list above, written and pruned by the sync engine (an entry goes when its
 * file is deleted or has content), read by `mailsync status`.
 *
 * The value: count (4 bytes, this machine's order), then per file reason
 * (1), identity length (2), identity (the Maildir unique name), path length
 * (2), path (the file as it was found, for the user). */
enum skip_local_reason {
    SKIP_LOCAL_EMPTY = 0, /* zero bytes: an IMAP server refuses to store it */
};

struct skip_local {
    char *lid;  /* the file's identity (unique name) */
    char *path; /* where it was when it was left out */
    enum skip_local_reason reason;
};

/* The meta key of a folder's local list. */
void skiplist_local_key(const char *folder, char *buf, size_t cap);
/* Reads a folder's local list into *v_r (caller frees with
 * skiplist_local_free; NULL when empty). A missing or malformed value is an
 * empty list. Returns the count. */
size_t skiplist_local_load(struct idx_txn *txn, const char *folder, struct skip_local **v_r);
/* Serialises a list (caller frees). */
unsigned char *skiplist_local_pack(const struct skip_local *v, size_t n, size_t *len_r);
void skiplist_local_free(struct skip_local *v, size_t n);

#endif
