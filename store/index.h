/* The sync index: an LMDB environment per account holding what both sides
 * last agreed on (the merge base of DESIGN.md invariant 3).
 *
 * Layout: STATE_DIR/<account>/ (mode 0700) holds index.mdb (data.mdb,
 * lock.mdb, mode 0600) and a lock file "lock" that one process holds with
 * flock while it writes the account.
 *
 * Ownership: idx_open returns a struct idx closed by idx_close. A struct
 * idx_txn belongs to one thread (LMDB write transactions stay on the thread
 * that began them) and ends with idx_commit or idx_abort, which free it.
 * Records returned by the getters are copied into caller storage.
 *
 * Errors: negative errno values. IDX_ERETRY (-EAGAIN) from a put or commit
 * means the map was full: the transaction has been aborted and freed, the
 * map has been grown, and the caller must redo the whole transaction;
 * idx_write does that loop for you. idx_error() returns the text of the last
 * failure on that index (file names and LMDB's message). */
#ifndef MAILSYNC_INDEX_H
#define MAILSYNC_INDEX_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define IDX_ERETRY (-EAGAIN)
#define IDX_SCHEMA_VERSION 2u
#define IDX_LID_MAX 255       /* longest local identity stored */
#define IDX_KEYWORDS_MAX 1024 /* space-separated keyword names */
#define IDX_UIDL_MAX 70       /* RFC 1939 */
#define IDX_MAILBOXID_MAX 255 /* RFC 8474 objectid */

struct idx;
struct idx_txn;

/* Opens (creating when needed) the index for one account in
 * STATE_DIR/<account>. Takes the account's exclusive lock: when another
 * process holds it, returns -EWOULDBLOCK and *err_r says "account 'NAME' is
 * already being synced by another mailsync process (pid N)". A database
 * written by a newer schema version is refused with -EPROTO and a message
 * naming both versions. An index written by an older schema is converted
 * on the spot (one transaction per folder, so a crash leaves every folder
 * either converted or not, and the next idx_open carries on; the version is
 * stamped only once all are), with one info line when it is done. *err_r
 * (caller frees) is set on every failure. */
int idx_open(const char *state_dir, const char *account, struct idx **idx_r, char **err_r);
/* Opens an existing index for reading only, for `mailsync status` while a
 * sync of the account may be running in another process: it takes no
 * account lock, creates and changes no file or directory (LMDB's reader
 * table, index.mdb/lock.mdb, excepted when it is missing), and never
 * blocks the writer (LMDB readers do not). No index yet (no state
 * directory, no data file, or one that no idx_open ever finished setting
 * up) is -ENOENT with *err_r "no index at PATH" or "index PATH holds no
 * data yet". The schema version is checked as idx_open does, with the
 * same message; an older one is -EPROTO too, since only idx_open converts.
 * idx_begin(write) on it fails with -EROFS. *err_r (caller frees) is set
 * on every failure. */
int idx_open_readonly(const char *state_dir, const char *account, struct idx **idx_r, char **err_r);
/* STATE_DIR/<account>/index.mdb, the environment idx_open uses (caller
 * frees). Computes the name only: it does not check the account name. */
char *idx_path(const char *state_dir, const char *account);
void idx_close(struct idx *idx);
const char *idx_error(const struct idx *idx);
/* Current LMDB map size in bytes (it grows on demand). */
size_t idx_map_size(const struct idx *idx);
/* For tests and diagnostics: the range of LMDB's mapping of data.mdb whose
 * pages the index drops from this process's memory as it reads (at the end
 * of a write transaction, every few thousand records of a walk, every 128
 * idx_msg_put), and how many times it did. False, *len_r 0, when it was not
 * found (not Linux, or not certain which mapping it is): then nothing is
 * dropped. */
bool idx_map_range(struct idx *idx, const void **start_r, size_t *len_r, uint64_t *drops_r);

int idx_begin(struct idx *idx, bool write, struct idx_txn **txn_r);
int idx_commit(struct idx_txn *txn);
void idx_abort(struct idx_txn *txn);
/* Runs fn in a write transaction and commits it, redoing it from the start
 * after growing the map when it hits IDX_ERETRY. fn returns 0 or a negative
 * errno (which aborts). fn must only touch the index, since it may run more
 * than once. */
int idx_write(struct idx *idx, int (*fn)(struct idx_txn *txn, void *arg), void *arg);

/* Per folder state. Folder names are the server-style UTF-8 names. */
struct idx_folder {
    uint32_t uidvalidity; /* 0 = never synced */
    uint32_t uidnext;
    uint64_t highestmodseq; /* 0 = unknown / NOMODSEQ */
    int64_t last_full_sync; /* unix time of the last complete sync, 0 = never */
    uint32_t messages;      /* message count at last sync */
    /* For the engine's "nothing changed here" shortcut: the change times of
     * the folder's cur/ and new/ directories and the time of the scan that
     * saw them, in nanoseconds since the epoch; 0 = unknown (a folder
     * written before schema 2, or one never scanned). Callers that build a
     * struct idx_folder from zero leave them unknown. */
    int64_t cur_ctime_ns;
    int64_t new_ctime_ns;
    int64_t scan_time_ns;
};

int idx_folder_get(struct idx_txn *txn, const char *folder, struct idx_folder *st_r);
/* Creates or replaces the folder's state. */
int idx_folder_put(struct idx_txn *txn, const char *folder, const struct idx_folder *st);
/* Removes the folder's state and all of its message records. */
int idx_folder_delete(struct idx_txn *txn, const char *folder);
/* Moves the folder's state and every record of it (messages, intents,
 * keyword sets) from one name to another, as one change of txn. -ENOENT
 * when from is not known, -EEXIST when to is. */
int idx_folder_rename(struct idx_txn *txn, const char *from, const char *to);
/* The folder's MAILBOXID (RFC 8474) as the server last said it: the
 * identity that survives a RENAME on the server. It is kept beside the
 * folder's state rather than in struct idx_folder, so idx_folder_put
 * leaves it as it is; idx_folder_rename moves it and idx_folder_delete
 * removes it. It lives in the meta database under a key made of the
 * folder's id, which an index written before it lacks (that folder then
 * has none) and older versions of mailsync never read.
 * _put: id NULL or "" forgets it; an id longer than IDX_MAILBOXID_MAX is
 * -EINVAL; an unknown folder is -ENOENT (the id is set after the folder's
 * state). _get: 0 with id_r "" when none is recorded; -ENOENT for an
 * unknown folder. */
int idx_folder_mailboxid_put(struct idx_txn *txn, const char *folder, const char *id);
int idx_folder_mailboxid_get(struct idx_txn *txn, const char *folder,
                             char id_r[IDX_MAILBOXID_MAX + 1]);
/* Calls fn for each known folder in name order; a non-zero return stops the
 * walk and is returned. */
int idx_folder_foreach(struct idx_txn *txn,
                       int (*fn)(const char *folder, const struct idx_folder *st, void *arg),
                       void *arg);

/* Per message state: what both sides agreed on at the last sync. */
enum idx_msg_state {
    IDX_MSG_SYNCED = 0,    /* on both sides with this UID and these flags */
    IDX_MSG_APPENDING = 1, /* local message being appended: uid is 0 until
                              APPENDUID (or a search) gives it */
    /* Gone from the server under this UID while the local file stays: a
     * message another client may have moved to another folder of the
     * account, parked until a new server message there pairs with it (by
     * msgid_hash and size; sync/moves.c) or the pass ends. Keyed by its
     * old UID like a synced record; the file is left in place. */
    IDX_MSG_ORPHAN = 2,
};

/* In idx_msg.flags, beside the MD_FLAG_* bits: a flag change was being
 * sent to the server for this message when the record was written, and
 * may or may not have landed; the sync engine takes the server's flags as
 * the base the next time it lists the message. */
#define IDX_FLAGS_UNSETTLED 0x80
/* In idx_msg.flags of an APPENDING row without UID: the row is the intent
 * of a UID MOVE from another folder of the account (sync/moves.c), not of
 * an APPEND. Until the move is recorded, the source folder's record of the
 * message stays, so a move cut short by a crash is found and done again
 * (a MOVE of a UID that is gone moves nothing), while an APPEND's intent
 * is never taken for a move, which could store the message twice. */
#define IDX_FLAGS_MOVING 0x40

struct idx_msg {
    uint32_t uid; /* 0 while APPENDING */
    uint8_t state;
    uint8_t flags;                       /* MD_FLAG_* bits, as last synced */
    uint64_t size;                       /* size on the wire (CRLF), 0 if unknown */
    char lid[IDX_LID_MAX + 1];           /* local identity (Maildir unique name) */
    char keywords[IDX_KEYWORDS_MAX + 1]; /* sorted, space-separated, "" for none */
    uint8_t msgid_hash[16]; /* truncated SHA-256 of Message-ID (or header block); zero if unknown */
    /* Truncated SHA-256 of the server's EMAILID (RFC 8474), which stays
     * with the message across a MOVE; zero if unknown. */
    uint8_t emailid_hash[8];
};

/* Stores or replaces a message record, keyed both by UID (when non-zero) and
 * by local identity. Replacing a record whose lid or uid changed removes the
 * old keys. */
int idx_msg_put(struct idx_txn *txn, const char *folder, const struct idx_msg *m);
int idx_msg_get_uid(struct idx_txn *txn, const char *folder, uint32_t uid, struct idx_msg *m_r);
int idx_msg_get_lid(struct idx_txn *txn, const char *folder, const char *lid, struct idx_msg *m_r);
/* Removes the record (both keys) with that local identity / UID. Absent is
 * -ENOENT. */
int idx_msg_delete_lid(struct idx_txn *txn, const char *folder, const char *lid);
int idx_msg_delete_uid(struct idx_txn *txn, const char *folder, uint32_t uid);
/* Every message of the folder: UID order for synced ones, then APPENDING
 * ones in lid order. fn may write to the index (each step looks its place
 * up afresh). A non-zero return of fn stops the walk and is returned. */
int idx_msg_foreach(struct idx_txn *txn, const char *folder,
                    int (*fn)(const struct idx_msg *m, void *arg), void *arg);
/* The same records in the same order with one cursor, a step being a move
 * to the next record rather than a lookup from the root: for reading a
 * large folder. fn must not write to the index (use it in a read
 * transaction). A non-zero return of fn stops the walk and is returned. */
int idx_msg_walk(struct idx_txn *txn, const char *folder,
                 int (*fn)(const struct idx_msg *m, void *arg), void *arg);
/* A folder's records held compactly in memory, for a large folder read
 * whole (the sync's base): a struct idx_row is 48 bytes where a struct
 * idx_msg is 1,320, because the lid is kept once in a string arena and
 * the keywords as a reference to the folder's keyword sets, each held once
 * as text (the index stores them once per folder too). */
struct idx_row {
    uint32_t uid; /* 0 while APPENDING */
    uint8_t state;
    uint8_t flags;    /* as struct idx_msg */
    uint16_t lid_len; /* strlen of the lid */
    uint32_t lid_off; /* the lid, NUL-terminated: see idx_rows_lid */
    uint32_t kwset;   /* the keywords: idx_rows.kwsets[kwset]; 0 is "" */
    uint64_t size;
    uint8_t msgid_hash[16];
    uint8_t emailid_hash[8];
};

/* Rows v[0..n) with their strings. Rows may be reordered, overwritten or
 * dropped in place (their strings stay where they are); a row added with
 * idx_rows_add or changed with idx_rows_set gets its strings interned.
 * The lids live in blocks that never move, so a lid's pointer stays valid
 * until idx_rows_free, whatever is added meanwhile (the engine's local
 * view points at some). Zero-initialised is empty; idx_rows_free frees it
 * all. */
#define IDX_ROWS_BLOCK_BITS 16 /* 64 KiB blocks of lids */
struct idx_rows {
    struct idx_row *v;
    size_t n, cap;
    char **lids; /* blocks; a lid_off is block << IDX_ROWS_BLOCK_BITS | offset */
    size_t nblocks, blocks_cap, block_used;
    char **kwsets; /* distinct keyword texts; [0] is "" once any row exists */
    size_t nkwsets, kwsets_cap;
};

/* Appends every record of the folder to rows, in idx_msg_walk's order,
 * with one cursor and without building a struct idx_msg per record; each
 * keyword set is read once. Same rules as idx_msg_walk (a read
 * transaction is enough). On failure rows holds the records read so far. */
int idx_msg_walk_rows(struct idx_txn *txn, const char *folder, struct idx_rows *rows);
/* Room for n rows in all, so a walk of a known count grows nothing. */
void idx_rows_reserve(struct idx_rows *rows, size_t n);
/* Appends m (its lid and keywords copied). */
void idx_rows_add(struct idx_rows *rows, const struct idx_msg *m);
/* Replaces row i by m. */
void idx_rows_set(struct idx_rows *rows, size_t i, const struct idx_msg *m);
/* The complete record of row i, as idx_msg_get_uid would give it. */
void idx_rows_get(const struct idx_rows *rows, size_t i, struct idx_msg *m_r);
/* Removes row i, keeping the order of the others. */
void idx_rows_remove(struct idx_rows *rows, size_t i);
void idx_rows_free(struct idx_rows *rows);

static inline const char *idx_rows_lid(const struct idx_rows *rows, size_t i)
{
    uint32_t off = rows->v[i].lid_off;
    return rows->lids[off >> IDX_ROWS_BLOCK_BITS] + (off & ((1u << IDX_ROWS_BLOCK_BITS) - 1));
}

static inline const char *idx_rows_keywords(const struct idx_rows *rows, size_t i)
{
    return rows->kwsets[rows->v[i].kwset];
}

/* The folder's message records (synced and APPENDING), read from a count
 * kept in the folder's record: it costs one lookup, not a walk. 0 for an
 * unknown folder or on error. */
size_t idx_msg_count(struct idx_txn *txn, const char *folder);

/* The highest UID the folder holds a record under (0 when none), and
 * whether it holds a record without UID (an APPENDING intent): two cursor
 * seeks, no record read. A sync that looks single rows up by UID (the
 * server's delta) asks it to know that no record lies past the UIDs it
 * was told of and no intent waits. An unknown folder is -ENOENT. */
int idx_msg_uid_last(struct idx_txn *txn, const char *folder, uint32_t *uid_r, bool *pending_r);
/* Gives back the data file's pages mapped so far (as the walks and puts
 * do on their own): for a caller that made many single lookups, whose
 * pages are otherwise kept until the next write transaction ends. Safe at
 * any time (the map is read-only: a later access reads the page again). */
void idx_map_drop(struct idx *idx);

/* POP3 keep-on-server state, per account. */
enum {
    IDX_POP_DELIVERED = 1 << 0,         /* stored in the Maildir */
    IDX_POP_SKIPPED = 1 << 1,           /* deliberately not downloaded (since, max_size) */
    IDX_POP_DELETED_ON_SERVER = 1 << 2, /* DELE sent and QUIT succeeded */
    IDX_POP_DELETED_LOCALLY = 1 << 3,   /* user removed the local copy */
};

struct idx_pop {
    char uidl[IDX_UIDL_MAX + 1];
    char lid[IDX_LID_MAX + 1]; /* "" when not delivered */
    int64_t first_seen;        /* unix time */
    uint64_t size;             /* LIST size */
    uint8_t header_hash[16];   /* truncated SHA-256 of the TOP n 0 header block, zero if unknown */
    uint32_t flags;            /* IDX_POP_* */
};

int idx_pop_put(struct idx_txn *txn, const struct idx_pop *p);
int idx_pop_get(struct idx_txn *txn, const char *uidl, struct idx_pop *p_r);
int idx_pop_delete(struct idx_txn *txn, const char *uidl);
int idx_pop_foreach(struct idx_txn *txn, int (*fn)(const struct idx_pop *p, void *arg), void *arg);
/* Every record in key order (bytewise, which is strcmp's order of UIDLs)
 * with one cursor, several times faster than idx_pop_foreach over a large
 * account; fn must not write to the index (use it in a read transaction).
 * A non-zero return of fn stops the walk and is returned. */
int idx_pop_walk(struct idx_txn *txn, int (*fn)(const struct idx_pop *p, void *arg), void *arg);
/* A download intent: the row names a Maildir file but says neither
 * delivered nor skipped nor deleted locally; it is written before the file
 * is renamed into place and confirmed afterwards. */
bool idx_pop_is_intent(const struct idx_pop *p);

/* What planning a POP3 run needs of a record: everything but the key,
 * decoded without clearing or copying more than the record holds. */
struct idx_pop_brief {
    uint32_t flags; /* IDX_POP_* */
    int64_t first_seen;
    uint64_t size;
    uint8_t header_hash[16];
    char lid[IDX_LID_MAX + 1];
};
/* A cursor over the POP3 records in key order (bytewise, strcmp's order
 * of UIDLs), stepped by the caller: for matching a listing that arrives
 * in key order against the index while it arrives, a step at a time. It
 * belongs to its transaction (a read transaction: it sees the index as it
 * was when that began) and is closed before the transaction ends. */
struct idx_pop_cursor;
int idx_pop_cursor_open(struct idx_txn *txn, struct idx_pop_cursor **c_r);
/* The next record (the first one on the first call): its key (*len_r
 * bytes at *uidl_r, not NUL-terminated, valid until the transaction
 * ends) and its brief. -ENOENT after the last record; -EBADMSG for a
 * damaged one. */
int idx_pop_cursor_next(struct idx_pop_cursor *c, const char **uidl_r, size_t *len_r,
                        struct idx_pop_brief *b_r);
void idx_pop_cursor_close(struct idx_pop_cursor *c);
/* idx_pop_is_intent for a brief record. */
bool idx_pop_brief_is_intent(const struct idx_pop_brief *b);

/* Small free-form values (e.g. "pop:last_run"). */
int idx_meta_put(struct idx_txn *txn, const char *key, const void *val, size_t len);
/* Copies up to cap bytes into buf and sets *len_r to the stored length. */
int idx_meta_get(struct idx_txn *txn, const char *key, void *buf, size_t cap, size_t *len_r);
/* Removes a meta value (write transaction); absent is not an error. */
int idx_meta_delete(struct idx_txn *txn, const char *key);

#endif
