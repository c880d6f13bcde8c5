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
 * Named databases (schema 2). Integers in keys are big-endian, so that
 * LMDB's byte order is numeric order; in values they are little-endian
 * fixed-size fields or LEB128 varints (zigzag for signed ones):
 *   meta           "schema_version" -> u32; "next_folder_id" -> u32; plus the
 *                  caller's free-form keys from idx_meta_put; and per
 *                  folder, NUL "mailboxid" + folder id (big-endian u32) ->
 *                  the folder's RFC 8474 MAILBOXID (no NUL). A caller's key
 *                  is a non-empty C string, so it never starts with NUL and
 *                  cannot collide; schema 2 indexes written before it
 *                  simply lack these keys.
 *   folders        folder key -> folder record. The key is the folder name
 *                  when it is at most 400 bytes; a longer name (keys are
 *                  limited to 511 bytes) is keyed by its first 400 bytes, a
 *                  NUL (which no real name contains, so the two forms cannot
 *                  collide) and the SHA-256 of the whole name. The record:
 *                  version 2, then varints id, uidvalidity, uidnext,
 *                  highestmodseq, last_full_sync, messages, the number of
 *                  message records, the next keyword-set id, cur_ctime_ns,
 *                  new_ctime_ns, scan_time_ns, and the full name (varint
 *                  length, bytes).
 *   messages       folder id + uid (8 bytes) -> message record: a header byte
 *                  (version 2 in the high nibble; APPENDING, has-hash and
 *                  has-keywords bits), the flags byte, varint size, [varint
 *                  keyword-set id], [16-byte msgid_hash] (left out when
 *                  zero), the lid's length (u8) and the lid; version 3
 *                  (a record with an EMAILID) adds the 8-byte
 *                  emailid_hash after the lid. Nothing is stored twice:
 *                  UID and folder are the key.
 *   message_lids   folder id (4 bytes) -> sorted duplicates
 *                  (MDB_DUPSORT | MDB_DUPFIXED) of 12 bytes each: the lid's
 *                  tag (see lid_tag: its leading time and a hash) and the
 *                  UID. Fixed-size duplicates are packed without LMDB's
 *                  per-node header, so finding a record by lid costs about
 *                  12 bytes a message instead of a second copy of the name;
 *                  every candidate's record is compared, so tag collisions
 *                  only cost a read.
 *   messages_appending  folder id + lid -> message record with an empty
 *                  lid (it is in the key), for records without a UID yet
 *                  (APPENDING). Keeping them apart makes the "then APPENDING
 *                  ones in lid order" walk a plain range scan.
 *   keyword_sets   folder id + 0x00 + set id (u32) -> varint reference count
 *                  and the keyword string (varint length, bytes); folder id
 *                  + 0x01 + 64-bit hash of the string -> the ids (u32 each)
 *                  of the sets with that hash. A message stores only the
 *                  id; a set goes when its last message does. Ids are never
 *                  reused within a folder, so an id names one string for as
 *                  long as it lives.
 *   pop            uidl bytes -> pop record (version 1, unchanged since
 *                  schema 1).
 *
 * Folders get a numeric id from the "next_folder_id" counter so that message
 * keys stay short; ids are never reused, so a deleted and re-created folder
 * can never see a leftover record of its predecessor.
 *
 * Schema 1 kept the messages in msg_uid (folder id + uid -> version 1 record
 * with lid and keywords inline), msg_lid (folder id + lid -> uid) and
 * msg_pending; idx_open converts such an index folder by folder (see
 * convert_v1 below).
 *
 * Nothing is a raw struct image. A record that is short, long, of an unknown
 * version or otherwise impossible is reported as -EBADMSG with a message
 * naming the key. */
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
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#include <sys/sysmacros.h>
#endif

#include "core/log.h"
#include "core/util.h"

#define IDX_INITIAL_MAP ((size_t)8 << 20)
/* idx_begin(write) doubles the map ahead of time once this share of it is
 * used, so that MDB_MAP_FULL (and redoing a transaction) stays rare. */
#define IDX_GROW_PERCENT 70
#define IDX_WRITE_ATTEMPTS 20
/* How long a write waits for other threads' read transactions to end when
 * the map must grow first, before it gives up with -EBUSY. */
#define IDX_GROW_WAIT_MS 5000
#define IDX_MAXDBS 12
/* How often the data file's mapped pages are dropped (map_drop): every so
 * many records of a bulk walk, and every so many idx_msg_put of a write
 * transaction. A put's lookups are random, and the kernel maps 16
 * neighbouring pages per fault, so a few hundred puts map the whole file:
 * at 128 puts a drop, 3.9 MiB of it was mapped at the peak of a resync
 * that stores 1,000 rows of a 100,000-message folder, at 32 0.9 MiB (a
 * drop costs a madvise and the refault of the few pages every lookup
 * passes through). */
#define IDX_DROP_WALK 2048
#define IDX_DROP_PUTS 32

#define FOLDER_NAME_MAX 4096
#define FOLDER_KEY_PLAIN_MAX 400
#define FOLDER_KEY_MAX (FOLDER_KEY_PLAIN_MAX + 1 + 32)
#define META_KEY_MAX 511
/* "Small" free-form values: a generous cap that still stops a caller bug
 * from filling the map. */
#define META_VAL_MAX ((size_t)1 << 20)
#define ACCOUNT_NAME_MAX 255

/* Record versions: folder and message records changed with schema 2, POP
 * records did not. */
#define V1_REC_VERSION 1
#define POP_REC_VERSION 1
#define FOLDER_REC_VERSION 2
#define MSG_REC_VERSION 2
/* A varint takes at most 10 bytes. */
#define VARINT_MAX 10
/* version, 4 u32 and 1 u64 varints, 4 signed ones, the count: then the name */
#define FOLDER_REC_MAX (1 + 4 * 5 + 11 * VARINT_MAX + FOLDER_NAME_MAX)
/* Message record header bits (low nibble; the version is the high one). */
#define MSG_APPENDING 0x01
#define MSG_HAS_HASH 0x02
#define MSG_HAS_KW 0x04
#define MSG_ORPHAN 0x08 /* IDX_MSG_ORPHAN (a UID, kept in DB_MESSAGES) */
#define MSG_BITS_KNOWN (MSG_APPENDING | MSG_HAS_HASH | MSG_HAS_KW | MSG_ORPHAN)
/* Version 3: a version 2 record followed by the 8-byte emailid_hash (a
 * record without one stays version 2, as older mailsync wrote it). */
#define MSG_REC_V3 3
#define MSG_REC_MAX (2 + VARINT_MAX + 5 + 16 + 1 + IDX_LID_MAX + 8)
#define LIDX_ITEM_LEN 12
#define KW_ID_KEY_LEN 9
#define KW_HASH_KEY_LEN 13
#define KW_REC_MAX (2 * VARINT_MAX + IDX_KEYWORDS_MAX)
/* Schema 1 records, read only while converting. */
#define V1_FOLDER_REC_FIXED (1 + 4 + 4 + 4 + 8 + 8 + 4 + 2)
#define V1_MSG_REC_FIXED (1 + 4 + 1 + 1 + 8 + 16 + 1 + 2)
/* version + flags + first_seen + size + header_hash + lid length */
#define POP_REC_FIXED (1 + 4 + 8 + 8 + 16 + 1)
#define POP_REC_MAX (POP_REC_FIXED + IDX_LID_MAX)

#define META_SCHEMA_VERSION "schema_version"
#define META_NEXT_FOLDER_ID "next_folder_id"

enum idx_db {
    DB_META,
    DB_FOLDERS,
    DB_MESSAGES,
    DB_LIDS,
    DB_APPENDING,
    DB_KWSETS,
    DB_POP,
    DB_COUNT,
    /* Schema 1's message databases: opened only to convert them. */
    DB_V1_UID = DB_COUNT,
    DB_V1_LID,
    DB_V1_PENDING,
    DB_ALL,
};

static const char *const db_names[DB_ALL] = {
    [DB_META] = "meta",
    [DB_FOLDERS] = "folders",
    [DB_MESSAGES] = "messages",
    [DB_LIDS] = "message_lids",
    [DB_APPENDING] = "messages_appending",
    [DB_KWSETS] = "keyword_sets",
    [DB_POP] = "pop",
    [DB_V1_UID] = "msg_uid",
    [DB_V1_LID] = "msg_lid",
    [DB_V1_PENDING] = "msg_pending",
};

static const unsigned db_flags[DB_ALL] = {
    [DB_LIDS] = MDB_DUPSORT | MDB_DUPFIXED,
};

/* A test seam: tests/unit/test_index.c defines this function to kill the
 * process at a chosen point of a conversion (done: folders this idx_open
 * converted and committed so far; committed false: its folder done + 1 is
 * written but not yet committed). mailsync itself does not define it, so the weak reference is
 * NULL and nothing is called. */
void idx_convert_test_point(unsigned done, bool committed) __attribute__((weak));

struct idx_txn {
    struct idx *idx;
    MDB_txn *txn;
    bool write;
    /* False once the LMDB transaction has ended. The write handle lives inside
     * struct idx (there is only ever one), so a caller that still calls
     * idx_abort after IDX_ERETRY has aborted the transaction does no harm. */
    bool active;
    /* The record of the last folder a call resolved: a sync touches one
     * folder at a time, so this saves a folder lookup per message, and the
     * message calls keep its record count (written through) here. Every
     * change to the folder's record goes through it; a failed write forgets
     * it. cf is allocated on first use and kept until the transaction ends. */
    struct folder_rec *cf;
    bool cf_valid;
    unsigned puts; /* idx_msg_put calls, for map_drop */
};

struct idx {
    char *account;
    char *dir;      /* STATE_DIR/<account> */
    char *env_path; /* STATE_DIR/<account>/index.mdb */
    int lock_fd;
    /* Opened by idx_open_readonly: no lock, no write transactions. */
    bool readonly;
    MDB_env *env;
    MDB_dbi dbi[DB_ALL];
    bool has_v1[3]; /* which of schema 1's message databases exist */
    unsigned psize;

    /* mu guards the transaction bookkeeping, the map size and err. Remapping
     * (mdb_env_set_mapsize) invalidates every pointer into the map, so it is
     * only done while this process has no transaction of any kind open. */
    pthread_mutex_t mu;
    unsigned readers; /* open read transactions */
    struct idx_txn wtxn;
    /* The thread whose write transaction wtxn is (while wtxn.active): a
     * write begun by another thread waits for it on wcond, which is also
     * signalled when the last reader ends (a map growth waits for that). */
    pthread_t wowner;
    pthread_cond_t wcond;
    bool grow_pending; /* MDB_MAP_FULL seen while readers were open */
    size_t map_size;
    /* LMDB's mapping of data.mdb as found by map_locate (map_len 0: not
     * found, and nothing is dropped), and how often map_drop dropped it.
     * Guarded by mu, like the remapping that moves it. */
    uintptr_t map_start;
    size_t map_len;
    uint64_t map_drops;
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

/* Dropping the map's pages
 *
 * LMDB reads through a read-only MAP_SHARED mapping of data.mdb, and those
 * file-backed pages count in the process's RSS (ru_maxrss) like the heap
 * does: a walk of a 100,000-message folder maps every page of its records
 * and keeps them mapped to the end of the run (about 20 MiB; a million
 * messages would be about 200). map_drop gives them back with
 * madvise(MADV_DONTNEED) at the end of a write transaction, every
 * IDX_DROP_WALK records of a bulk walk and every IDX_DROP_PUTS puts.
 *
 * Why this is safe:
 * - The environment is never opened with MDB_WRITEMAP (open_env,
 *   idx_open_readonly): LMDB writes with pwrite() from its own heap pages
 *   and maps the file PROT_READ, so the mapping never holds data that is
 *   not in the file's page cache. madvise(2), MADV_DONTNEED, for a shared
 *   file mapping: later accesses "will succeed, but will result in ...
 *   repopulating the memory contents from the up-to-date contents of the
 *   underlying mapped file" (and "the resident set size (RSS) of the
 *   calling process will be immediately reduced"). A dropped page refaults
 *   as the same page cache page (a minor fault, no I/O while it stays
 *   cached), so pointers LMDB or a caller holds into the map stay valid and
 *   read the same bytes. With MDB_WRITEMAP a write transaction's pages
 *   would live in the map until written back: map_locate accepts only a
 *   read-only mapping ("r--s"), so such a change turns dropping off rather
 *   than losing data.
 * - Other threads (the loop and thread-pool jobs, MDB_NOTLS read
 *   transactions, a write transaction on a pool thread while the loop reads)
 *   may be reading those very pages while they are dropped: their next
 *   access simply refaults the same file page (the page tables are what is
 *   dropped; the page cache is not touched). Nothing here is locked memory
 *   (MADV_DONTNEED refuses locked pages; it would only fail).
 * - The range must be LMDB's mapping and nothing else: dropping anonymous
 *   memory (the heap) would zero live data. LMDB 0.9 does not expose its
 *   map address (me_mapaddr is NULL without MDB_FIXEDMAP), so map_locate
 *   reads /proc/self/maps for the mapping whose device and inode are the
 *   data file's (fstat of LMDB's own descriptor), at offset 0, read-only
 *   and shared, and exactly as long as LMDB's map size; anything else,
 *   including two such mappings (the same file opened twice in this
 *   process, where the other one can move under its own lock), leaves
 *   map_len 0 and nothing is ever dropped.
 * - mdb_env_set_mapsize unmaps the file and maps it again elsewhere, after
 *   which the old range may hold anything. It is only called with mu held
 *   (set_map_locked) or before the idx is shared (ro_open_dbs, then
 *   map_locate), the range is forgotten before and found again after it,
 *   and map_drop reads the range and calls madvise with mu held.
 * A filesystem whose stat() device differs from the one /proc/self/maps
 * shows (btrfs subvolumes, older overlayfs) finds nothing: then the pages
 * simply stay mapped, as before. Other systems do nothing. */

/* Finds the data file's mapping; mu held or the idx not yet shared. */
static void map_locate_locked(struct idx *idx)
{
    idx->map_start = 0;
    idx->map_len = 0;
#ifdef __linux__
    mdb_filehandle_t fd;
    struct stat st;
    MDB_envinfo info;
    if (idx->env == NULL || mdb_env_get_fd(idx->env, &fd) != 0 || fstat(fd, &st) != 0 ||
        mdb_env_info(idx->env, &info) != 0) {
        return;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t want = info.me_mapsize;
    if (page > 0 && want % (size_t)page != 0) {
        want += (size_t)page - want % (size_t)page;
    }
    FILE *maps = fopen("/proc/self/maps", "re");
    if (maps == NULL) {
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    unsigned found = 0;
    bool usable = true;
    unsigned long start = 0, end = 0;
    while (getline(&line, &cap, maps) > 0) {
        unsigned long s, e;
        unsigned long long off, ino;
        unsigned maj, min;
        char perms[5];
        int nf = sscanf(line, "%lx-%lx %4s %llx %x:%x %llu", &s, &e, perms, &off, &maj, &min, &ino);
        if (nf != 7 || ino != (unsigned long long)st.st_ino || maj != major(st.st_dev) ||
            min != minor(st.st_dev)) {
            continue;
        }
        found++;
        start = s;
        end = e;
        usable = usable && off == 0 && strcmp(perms, "r--s") == 0;
    }
    free(line);
    fclose(maps);
    if (found == 1 && usable && end > start && end - start == want) {
        idx->map_start = start;
        idx->map_len = want;
    }
#endif
}

static void map_locate(struct idx *idx)
{
    pthread_mutex_lock(&idx->mu);
    map_locate_locked(idx);
    pthread_mutex_unlock(&idx->mu);
}

/* Drops the data file's mapped pages (see above); mu held. */
static void map_drop_locked(struct idx *idx)
{
#ifdef __linux__
    if (idx->map_len != 0 && madvise((void *)idx->map_start, idx->map_len, MADV_DONTNEED) == 0) {
        idx->map_drops++;
    }
#else
    (void)idx;
#endif
}

static void map_drop(struct idx *idx)
{
    pthread_mutex_lock(&idx->mu);
    map_drop_locked(idx);
    pthread_mutex_unlock(&idx->mu);
}

void idx_map_drop(struct idx *idx)
{
    map_drop(idx);
}

bool idx_map_range(struct idx *idx, const void **start_r, size_t *len_r, uint64_t *drops_r)
{
    pthread_mutex_lock(&idx->mu);
    *start_r = (const void *)idx->map_start;
    *len_r = idx->map_len;
    *drops_r = idx->map_drops;
    pthread_mutex_unlock(&idx->mu);
    return *len_r != 0;
}

/* Map growth */

/* Sets the map size; mu held, no transaction open in this process. */
static int set_map_locked(struct idx *idx, size_t size)
{
    /* The file is unmapped and mapped again, most likely elsewhere: forget
     * the old range first, and find the new one whatever the outcome. */
    idx->map_start = 0;
    idx->map_len = 0;
    int rc = mdb_env_set_mapsize(idx->env, size);
    map_locate_locked(idx);
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

/* Read transactions this thread has open (any index): a write that must
 * wait for every reader to end cannot wait for its own thread's. */
static __thread unsigned tl_readers;

/* mu held. */
static void reader_ended_locked(struct idx *idx)
{
    idx->readers--;
    if (tl_readers > 0) {
        tl_readers--;
    }
}

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
        struct timespec deadline = {0};
        bool timed = false;
        for (;;) {
            if (idx->wtxn.active) {
                if (pthread_equal(idx->wowner, pthread_self())) {
                    pthread_mutex_unlock(&idx->mu);
                    /* A second write transaction from the same thread would
                     * deadlock on LMDB's writer mutex. */
                    return fail(idx, -EBUSY, "index %s: a write transaction is already open",
                                idx->env_path);
                }
                /* Another thread's (a flush on the thread pool, or the loop):
                 * one writer at a time, as LMDB has it. */
                pthread_cond_wait(&idx->wcond, &idx->mu);
                continue;
            }
            if (idx->readers == 0) {
                int rc = grow_if_needed_locked(idx);
                if (rc != 0) {
                    pthread_mutex_unlock(&idx->mu);
                    return rc;
                }
                break;
            }
            if (!idx->grow_pending) {
                break;
            }
            /* The map must grow, which needs every read transaction ended.
             * Readers on other threads end soon; one of this thread's own
             * never would while it waits here. */
            if (!timed) {
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                deadline.tv_sec += IDX_GROW_WAIT_MS / 1000;
                timed = true;
            }
            if (tl_readers > 0 || pthread_cond_timedwait(&idx->wcond, &idx->mu, &deadline) != 0) {
                pthread_mutex_unlock(&idx->mu);
                return fail(idx, -EBUSY,
                            "index %s: the map is full and cannot grow while %u read "
                            "transaction(s) are open; end them and retry",
                            idx->env_path, idx->readers);
            }
        }
        idx->wtxn.active = true;
        idx->wtxn.puts = 0;
        idx->wowner = pthread_self();
    } else {
        idx->readers++;
        tl_readers++;
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
            reader_ended_locked(idx);
        }
        pthread_cond_broadcast(&idx->wcond);
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
    t->cf_valid = false;
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
    free(t->cf);
    t->cf = NULL;
    pthread_mutex_lock(&idx->mu);
    t->txn = NULL;
    t->active = false;
    if (!t->write) {
        reader_ended_locked(idx);
    }
    if (t->write || idx->readers == 0) {
        pthread_cond_broadcast(&idx->wcond);
    }
    if (t->write) {
        /* The end of idx_commit / idx_abort of a write transaction: what its
         * lookups mapped goes. */
        map_drop_locked(idx);
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
    pthread_cond_broadcast(&idx->wcond);
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

/* LEB128: seven bits a byte, low bits first. */
static void put_varint(struct wr *w, uint64_t v)
{
    while (v >= 0x80) {
        put_u8(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_u8(w, (uint8_t)v);
}

/* Zigzag, so that small negative numbers stay short too. */
static void put_svarint(struct wr *w, int64_t v)
{
    uint64_t u = (uint64_t)v << 1;
    put_varint(w, v < 0 ? ~u : u);
}

/* Reads a varint; only the shortest form of a value is accepted, so that a
 * record has one encoding and damage is more likely to show. */
static uint64_t get_varint(struct rd *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t b = get_u8(r);
        if (r->bad || (shift == 63 && b > 1)) {
            r->bad = true;
            return 0;
        }
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift > 0) {
                r->bad = true;
            }
            return v;
        }
    }
    r->bad = true;
    return 0;
}

static uint32_t get_varint32(struct rd *r)
{
    uint64_t v = get_varint(r);
    if (v > UINT32_MAX) {
        r->bad = true;
        return 0;
    }
    return (uint32_t)v;
}

static int64_t get_svarint(struct rd *r)
{
    uint64_t u = get_varint(r);
    return (int64_t)(u & 1 ? ~(u >> 1) : u >> 1);
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

static void be64(uint8_t *out, uint64_t v)
{
    be32(out, (uint32_t)(v >> 32));
    be32(out + 4, (uint32_t)v);
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
    uint64_t count;   /* message records: synced and APPENDING */
    uint32_t next_kw; /* the id the folder's next new keyword set gets */
    struct idx_folder st;
    size_t name_len;
    char name[FOLDER_NAME_MAX + 1];
};

static size_t folder_encode(uint8_t *buf, const struct folder_rec *f)
{
    struct wr w = {.p = buf};
    put_u8(&w, FOLDER_REC_VERSION);
    put_varint(&w, f->id);
    put_varint(&w, f->st.uidvalidity);
    put_varint(&w, f->st.uidnext);
    put_varint(&w, f->st.highestmodseq);
    put_svarint(&w, f->st.last_full_sync);
    put_varint(&w, f->st.messages);
    put_varint(&w, f->count);
    put_varint(&w, f->next_kw);
    put_svarint(&w, f->st.cur_ctime_ns);
    put_svarint(&w, f->st.new_ctime_ns);
    put_svarint(&w, f->st.scan_time_ns);
    put_varint(&w, f->name_len);
    put_bytes(&w, f->name, f->name_len);
    return w.len;
}

static bool folder_decode(const MDB_val *v, struct folder_rec *f)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    memset(&f->st, 0, sizeof(f->st));
    f->name[0] = '\0';
    f->name_len = 0;
    if (get_u8(&r) != FOLDER_REC_VERSION) {
        return false;
    }
    f->id = get_varint32(&r);
    f->st.uidvalidity = get_varint32(&r);
    f->st.uidnext = get_varint32(&r);
    f->st.highestmodseq = get_varint(&r);
    f->st.last_full_sync = get_svarint(&r);
    f->st.messages = get_varint32(&r);
    f->count = get_varint(&r);
    f->next_kw = get_varint32(&r);
    f->st.cur_ctime_ns = get_svarint(&r);
    f->st.new_ctime_ns = get_svarint(&r);
    f->st.scan_time_ns = get_svarint(&r);
    uint64_t n = get_varint(&r);
    if (n == 0 || n > FOLDER_NAME_MAX) {
        return false;
    }
    get_str(&r, f->name, (size_t)n, sizeof(f->name));
    if (!rd_done(&r) || f->id == 0 || f->next_kw == 0) {
        return false;
    }
    f->name_len = (size_t)n;
    return true;
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

/* The transaction's cached record of folder, read when another one is
 * cached; -ENOENT (with a message) when the folder is not known. The
 * pointer stays valid until the next folder call in this transaction. */
static int folder_cached(struct idx_txn *t, const char *folder, struct folder_rec **f_r)
{
    if (t->cf_valid && folder != NULL && strcmp(t->cf->name, folder) == 0) {
        *f_r = t->cf;
        return 0;
    }
    if (t->cf == NULL) {
        t->cf = xmalloc(sizeof(*t->cf));
    }
    t->cf_valid = false;
    int rc = folder_lookup(t, folder, t->cf);
    if (rc == 0) {
        t->cf_valid = true;
        *f_r = t->cf;
    }
    return rc;
}

/* Writes f (the cached record) under its key; a failure forgets the cache,
 * whose contents then no longer match the database. */
static int folder_save(struct idx_txn *t, const struct folder_rec *f)
{
    uint8_t key[FOLDER_KEY_MAX];
    size_t klen = folder_key(key, f->name, f->name_len);
    uint8_t *buf = xmalloc(FOLDER_REC_MAX);
    int rc = db_put(t, DB_FOLDERS, key, klen, buf, folder_encode(buf, f));
    free(buf);
    if (rc != 0) {
        txn_forget_folder(t);
    }
    return rc;
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

/* The folder's cached record, created (never synced, no messages) when the
 * folder is not known yet: the message calls create a folder on first use. */
static int folder_use(struct idx_txn *t, const char *folder, struct folder_rec **f_r)
{
    int rc = folder_cached(t, folder, f_r);
    if (rc != -ENOENT) {
        return rc;
    }
    uint32_t id = 0;
    rc = next_folder_id(t, &id);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f = t->cf;
    memset(&f->st, 0, sizeof(f->st));
    f->id = id;
    f->count = 0;
    f->next_kw = 1;
    f->name_len = strlen(folder);
    memcpy(f->name, folder, f->name_len + 1);
    rc = folder_save(t, f);
    if (rc == 0) {
        t->cf_valid = true;
        *f_r = f;
    }
    return rc;
}

int idx_folder_get(struct idx_txn *txn, const char *folder, struct idx_folder *st_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = folder_cached(txn, folder, &f);
    if (rc == 0) {
        *st_r = f->st;
    }
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
    struct folder_rec *f;
    rc = folder_use(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    /* The id, the record count and the keyword-set counter are the index's
     * own and stay. */
    f->st = *st;
    return folder_save(txn, f);
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

/* The meta key of a folder's MAILBOXID: see the layout above. */
#define MAILBOXID_KEY_LEN (1 + 9 + 4)
static void mailboxid_key(uint8_t key[MAILBOXID_KEY_LEN], uint32_t id)
{
    key[0] = '\0';
    memcpy(key + 1, "mailboxid", 9);
    be32(key + 10, id);
}

/* The key of a known folder's MAILBOXID, in a transaction fit for it. */
static int mailboxid_key_of(struct idx_txn *txn, const char *folder, bool write,
                            uint8_t key[MAILBOXID_KEY_LEN])
{
    int rc = txn_check(txn, write);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = folder_cached(txn, folder, &f);
    if (rc == 0) {
        mailboxid_key(key, f->id);
    }
    return rc;
}

int idx_folder_mailboxid_put(struct idx_txn *txn, const char *folder, const char *id)
{
    size_t len = id != NULL ? strnlen(id, IDX_MAILBOXID_MAX + 1) : 0;
    if (txn != NULL && len > IDX_MAILBOXID_MAX) {
        return fail(txn->idx, -EINVAL, "index %s: MAILBOXID of folder '%s' longer than %d bytes",
                    txn->idx->env_path, folder, IDX_MAILBOXID_MAX);
    }
    uint8_t key[MAILBOXID_KEY_LEN];
    int rc = mailboxid_key_of(txn, folder, true, key);
    if (rc != 0) {
        return rc;
    }
    if (len == 0) {
        return db_del(txn, DB_META, key, sizeof(key));
    }
    return db_put(txn, DB_META, key, sizeof(key), id, len);
}

int idx_folder_mailboxid_get(struct idx_txn *txn, const char *folder,
                             char id_r[IDX_MAILBOXID_MAX + 1])
{
    id_r[0] = '\0';
    uint8_t key[MAILBOXID_KEY_LEN];
    int rc = mailboxid_key_of(txn, folder, false, key);
    if (rc != 0) {
        return rc;
    }
    MDB_val v;
    rc = db_get(txn, DB_META, key, sizeof(key), &v);
    if (rc == -ENOENT) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (v.mv_size == 0 || v.mv_size > IDX_MAILBOXID_MAX || memchr(v.mv_data, '\0', v.mv_size)) {
        return fail(txn->idx, -EBADMSG, "index %s: corrupt MAILBOXID of folder '%s'",
                    txn->idx->env_path, folder);
    }
    memcpy(id_r, v.mv_data, v.mv_size);
    id_r[v.mv_size] = '\0';
    return 0;
}

int idx_folder_delete(struct idx_txn *txn, const char *folder)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = folder_cached(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    txn_forget_folder(txn);
    uint8_t prefix[4];
    be32(prefix, f->id);
    static const enum idx_db dbs[] = {DB_MESSAGES, DB_APPENDING, DB_KWSETS};
    for (size_t i = 0; i < ARRAY_SIZE(dbs) && rc == 0; i++) {
        rc = delete_prefix(txn, dbs[i], prefix);
    }
    if (rc == 0) {
        /* One key holds all of the folder's identity entries. */
        rc = db_del(txn, DB_LIDS, prefix, sizeof(prefix));
    }
    if (rc == 0) {
        uint8_t mkey[MAILBOXID_KEY_LEN];
        mailboxid_key(mkey, f->id);
        rc = db_del(txn, DB_META, mkey, sizeof(mkey));
    }
    if (rc == 0) {
        uint8_t key[FOLDER_KEY_MAX];
        size_t klen = folder_key(key, folder, strlen(folder));
        rc = db_del(txn, DB_FOLDERS, key, klen);
    }
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
            klen = folder_key(key, f->name, f->name_len);
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

/* Keyword sets */

/* FNV-1a. Both hashes below only narrow a search whose candidates are all
 * compared in full, so they need to spread real names well, not to resist
 * anyone: a collision costs a read, never a wrong answer. */
static uint64_t fnv1a64(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* What a lid is filed under in the identity index. Maildir names start with
 * their delivery time in seconds, and most writers (Dovecot, Courier,
 * notmuch, mailsync itself) go on with ".M" and the microseconds: the tag
 * puts the seconds in its high half and the microseconds above a 12-bit
 * hash of the whole name in the low one, so that new mail sorts after old
 * and is appended to full pages. A name without microseconds gets a 32-bit
 * hash there instead, one without leading seconds 0 as its high half. */
static uint64_t lid_tag(const char *lid, size_t len)
{
    uint64_t secs = 0, usecs = 0;
    size_t i = 0;
    for (; i < len && i < 10 && lid[i] >= '0' && lid[i] <= '9'; i++) {
        secs = secs * 10 + (uint64_t)(lid[i] - '0');
    }
    bool have_usecs = i > 0 && i + 2 < len && lid[i] == '.' && lid[i + 1] == 'M';
    size_t j = i + 2;
    for (; have_usecs && j < len && j < i + 8 && lid[j] >= '0' && lid[j] <= '9'; j++) {
        usecs = usecs * 10 + (uint64_t)(lid[j] - '0');
    }
    have_usecs = have_usecs && j > i + 2 && usecs < 1000000;
    uint64_t h = fnv1a64(lid, len);
    uint32_t low = (uint32_t)(h ^ (h >> 32));
    if (have_usecs) {
        low = (uint32_t)(usecs << 12) | (low & 0xfff);
    }
    return (secs > UINT32_MAX ? UINT32_MAX : secs) << 32 | low;
}

static void kw_id_key(uint8_t key[KW_ID_KEY_LEN], uint32_t fid, uint32_t id)
{
    be32(key, fid);
    key[4] = 0;
    be32(key + 5, id);
}

static void kw_hash_key(uint8_t key[KW_HASH_KEY_LEN], uint32_t fid, const char *names, size_t len)
{
    be32(key, fid);
    key[4] = 1;
    be64(key + 5, fnv1a64(names, len));
}

/* Reads keyword set id: its reference count and its string (into names of
 * IDX_KEYWORDS_MAX + 1 bytes). -ENOENT or -EBADMSG without a message: the
 * callers say what it means for them. */
static int kw_read(struct idx_txn *t, uint32_t fid, uint32_t id, uint64_t *refs_r, char *names)
{
    uint8_t key[KW_ID_KEY_LEN];
    kw_id_key(key, fid, id);
    MDB_val v;
    int rc = db_get(t, DB_KWSETS, key, sizeof(key), &v);
    if (rc != 0) {
        return rc;
    }
    struct rd r = {.p = v.mv_data, .len = v.mv_size};
    *refs_r = get_varint(&r);
    uint64_t n = get_varint(&r);
    if (n == 0 || n > IDX_KEYWORDS_MAX) {
        return -EBADMSG;
    }
    get_str(&r, names, (size_t)n, IDX_KEYWORDS_MAX + 1);
    return rd_done(&r) && *refs_r > 0 ? 0 : -EBADMSG;
}

static int kw_write(struct idx_txn *t, uint32_t fid, uint32_t id, uint64_t refs, const char *names,
                    size_t len)
{
    uint8_t key[KW_ID_KEY_LEN], buf[KW_REC_MAX];
    kw_id_key(key, fid, id);
    struct wr w = {.p = buf};
    put_varint(&w, refs);
    put_varint(&w, len);
    put_bytes(&w, names, len);
    return db_put(t, DB_KWSETS, key, sizeof(key), buf, w.len);
}

/* The ids stored under names' hash (a list of u32), into a fresh array. A
 * malformed list counts as empty: it is rewritten by the next kw_link. */
static int kw_ids(struct idx_txn *t, const uint8_t hkey[KW_HASH_KEY_LEN], uint32_t **ids_r,
                  size_t *n_r)
{
    *ids_r = NULL;
    *n_r = 0;
    MDB_val v;
    int rc = db_get(t, DB_KWSETS, hkey, KW_HASH_KEY_LEN, &v);
    if (rc == -ENOENT) {
        return 0;
    }
    if (rc != 0 || v.mv_size == 0 || v.mv_size % 4 != 0) {
        return rc;
    }
    size_t n = v.mv_size / 4;
    uint32_t *ids = xmalloc(n * sizeof(*ids));
    for (size_t i = 0; i < n; i++) {
        ids[i] = le32((const uint8_t *)v.mv_data + 4 * i);
    }
    *ids_r = ids;
    *n_r = n;
    return 0;
}

static int kw_ids_put(struct idx_txn *t, const uint8_t hkey[KW_HASH_KEY_LEN], const uint32_t *ids,
                      size_t n)
{
    if (n == 0) {
        return db_del(t, DB_KWSETS, hkey, KW_HASH_KEY_LEN);
    }
    uint8_t *buf = xmalloc(4 * n);
    struct wr w = {.p = buf};
    for (size_t i = 0; i < n; i++) {
        put_u32(&w, ids[i]);
    }
    int rc = db_put(t, DB_KWSETS, hkey, KW_HASH_KEY_LEN, buf, w.len);
    free(buf);
    return rc;
}

/* Adds one reference to the folder's set with exactly these keywords,
 * creating it (with the folder's next id, which the caller saves) when
 * there is none. */
static int kw_ref(struct idx_txn *t, struct folder_rec *f, const char *names, size_t len,
                  uint32_t *id_r)
{
    uint8_t hkey[KW_HASH_KEY_LEN];
    kw_hash_key(hkey, f->id, names, len);
    uint32_t *ids;
    size_t n;
    int rc = kw_ids(t, hkey, &ids, &n);
    if (rc != 0) {
        return rc;
    }
    char *have = xmalloc(IDX_KEYWORDS_MAX + 1);
    size_t live = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t refs;
        rc = kw_read(t, f->id, ids[i], &refs, have);
        if (rc == 0 && strcmp(have, names) == 0) {
            *id_r = ids[i];
            rc = kw_write(t, f->id, ids[i], refs + 1, names, len);
            goto out;
        }
        if (rc == 0) {
            ids[live++] = ids[i];
        } else if (rc != -ENOENT && rc != -EBADMSG) {
            goto out;
        }
        /* A missing or damaged set is dropped from the list below. */
    }
    if (f->next_kw == UINT32_MAX) {
        rc = fail(t->idx, -EOVERFLOW, "index %s: keyword-set ids of folder '%s' exhausted",
                  t->idx->env_path, f->name);
        goto out;
    }
    uint32_t id = f->next_kw++;
    rc = kw_write(t, f->id, id, 1, names, len);
    if (rc == 0) {
        xgrow(&ids, &n, live + 1, sizeof(*ids));
        ids[live++] = id;
        rc = kw_ids_put(t, hkey, ids, live);
    }
    if (rc == 0) {
        *id_r = id;
    }
out:
    free(have);
    free(ids);
    return rc;
}

/* Drops one reference to set id; the set goes with its last one. A set that
 * is missing or damaged is removed as far as it can be found: deleting a
 * message must stay a way out of corruption. */
static int kw_unref(struct idx_txn *t, uint32_t fid, uint32_t id)
{
    if (id == 0) {
        return 0;
    }
    char *names = xmalloc(IDX_KEYWORDS_MAX + 1);
    uint64_t refs = 0;
    uint8_t key[KW_ID_KEY_LEN];
    kw_id_key(key, fid, id);
    int rc = kw_read(t, fid, id, &refs, names);
    if (rc == -ENOENT) {
        rc = 0;
    } else if (rc == -EBADMSG) {
        rc = db_del(t, DB_KWSETS, key, sizeof(key));
    } else if (rc == 0 && refs > 1) {
        rc = kw_write(t, fid, id, refs - 1, names, strlen(names));
    } else if (rc == 0) {
        rc = db_del(t, DB_KWSETS, key, sizeof(key));
        uint8_t hkey[KW_HASH_KEY_LEN];
        kw_hash_key(hkey, fid, names, strlen(names));
        uint32_t *ids = NULL;
        size_t n = 0, live = 0;
        if (rc == 0) {
            rc = kw_ids(t, hkey, &ids, &n);
        }
        for (size_t i = 0; i < n; i++) {
            if (ids[i] != id) {
                ids[live++] = ids[i];
            }
        }
        if (rc == 0 && live != n) {
            rc = kw_ids_put(t, hkey, ids, live);
        }
        free(ids);
    }
    free(names);
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

/* Encodes m with keyword set kw; lid_len 0 leaves the lid out (it is the
 * key of an APPENDING record). */
static size_t msg_encode(uint8_t *buf, const struct idx_msg *m, uint32_t kw, size_t lid_len)
{
    static const uint8_t zero[sizeof(m->msgid_hash)];
    bool hash = memcmp(m->msgid_hash, zero, sizeof(zero)) != 0;
    bool eid = memcmp(m->emailid_hash, zero, sizeof(m->emailid_hash)) != 0;
    struct wr w = {.p = buf};
    put_u8(&w, (uint8_t)((eid ? MSG_REC_V3 : MSG_REC_VERSION) << 4 |
                         (m->state == IDX_MSG_APPENDING ? MSG_APPENDING : 0) |
                         (m->state == IDX_MSG_ORPHAN ? MSG_ORPHAN : 0) | (hash ? MSG_HAS_HASH : 0) |
                         (kw != 0 ? MSG_HAS_KW : 0)));
    put_u8(&w, m->flags);
    put_varint(&w, m->size);
    if (kw != 0) {
        put_varint(&w, kw);
    }
    if (hash) {
        put_bytes(&w, m->msgid_hash, sizeof(m->msgid_hash));
    }
    put_u8(&w, (uint8_t)lid_len);
    put_bytes(&w, m->lid, lid_len);
    if (eid) {
        put_bytes(&w, m->emailid_hash, sizeof(m->emailid_hash));
    }
    return w.len;
}

/* A record as stored, its lid not copied: lid points into the value, or
 * into the key of an APPENDING record (valid while the transaction is). */
struct msg_view {
    uint32_t uid;
    uint8_t state, flags;
    uint64_t size;
    uint32_t kw; /* the keyword set's id, 0 for none */
    uint8_t msgid_hash[16];
    uint8_t emailid_hash[8];
    const char *lid;
    size_t lid_len;
};

/* Decodes a record stored under uid. The lid is the rest of the record, or,
 * when key_lid is given, the lid from an APPENDING record's key. */
static bool msg_view_decode(const MDB_val *v, uint32_t uid, const char *key_lid, size_t key_lid_len,
                            struct msg_view *m)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    uint8_t hdr = get_u8(&r);
    if (r.bad || (hdr >> 4 != MSG_REC_VERSION && hdr >> 4 != MSG_REC_V3) ||
        (hdr & 0x0f & ~MSG_BITS_KNOWN) != 0) {
        return false;
    }
    m->uid = uid;
    if ((hdr & MSG_APPENDING) && (hdr & MSG_ORPHAN)) {
        return false;
    }
    m->state = hdr & MSG_APPENDING ? IDX_MSG_APPENDING
               : hdr & MSG_ORPHAN  ? IDX_MSG_ORPHAN
                                   : IDX_MSG_SYNCED;
    m->flags = get_u8(&r);
    m->size = get_varint(&r);
    m->kw = 0;
    if (hdr & MSG_HAS_KW) {
        m->kw = get_varint32(&r);
        if (m->kw == 0) {
            return false;
        }
    }
    if (hdr & MSG_HAS_HASH) {
        get_bytes(&r, m->msgid_hash, sizeof(m->msgid_hash));
    } else {
        memset(m->msgid_hash, 0, sizeof(m->msgid_hash));
    }
    size_t n = get_u8(&r);
    if (key_lid == NULL) {
        if (n == 0 || n > IDX_LID_MAX || !rd_need(&r, n) || memchr(r.p + r.pos, '\0', n) != NULL) {
            return false;
        }
        m->lid = (const char *)r.p + r.pos;
        m->lid_len = n;
        r.pos += n;
    } else if (n != 0) {
        return false;
    } else if (key_lid_len == 0 || key_lid_len > IDX_LID_MAX ||
               memchr(key_lid, '\0', key_lid_len) != NULL) {
        return false;
    } else {
        m->lid = key_lid;
        m->lid_len = key_lid_len;
    }
    if (hdr >> 4 == MSG_REC_V3) {
        get_bytes(&r, m->emailid_hash, sizeof(m->emailid_hash));
    } else {
        memset(m->emailid_hash, 0, sizeof(m->emailid_hash));
    }
    if (!rd_done(&r)) {
        return false;
    }
    return !((m->state == IDX_MSG_SYNCED || m->state == IDX_MSG_ORPHAN) && m->uid == 0);
}

static void view_to_msg(const struct msg_view *mv, struct idx_msg *m)
{
    m->uid = mv->uid;
    m->state = mv->state;
    m->flags = mv->flags;
    m->size = mv->size;
    memcpy(m->msgid_hash, mv->msgid_hash, sizeof(m->msgid_hash));
    memcpy(m->emailid_hash, mv->emailid_hash, sizeof(m->emailid_hash));
    memcpy(m->lid, mv->lid, mv->lid_len);
    m->lid[mv->lid_len] = '\0';
}

/* msg_view_decode into a struct idx_msg. The keywords are not filled in:
 * *kw_r is the set's id (0 for none). */
static bool msg_decode(const MDB_val *v, uint32_t uid, const char *key_lid, size_t key_lid_len,
                       struct idx_msg *m, uint32_t *kw_r)
{
    struct msg_view mv;
    if (!msg_view_decode(v, uid, key_lid, key_lid_len, &mv)) {
        return false;
    }
    view_to_msg(&mv, m);
    *kw_r = mv.kw;
    return true;
}

/* The text of keyword set kw into names (IDX_KEYWORDS_MAX + 1 bytes), for
 * the record of lid (lid_len bytes, for the message when the set is
 * missing or corrupt). */
static int kw_text(struct idx_txn *t, const char *folder, uint32_t fid, uint32_t kw,
                   const char *lid, size_t lid_len, char *names)
{
    uint64_t refs;
    int rc = kw_read(t, fid, kw, &refs, names);
    if (rc == -ENOENT || rc == -EBADMSG) {
        names[0] = '\0';
        return fail(
            t->idx, -EBADMSG, "index %s: keyword set %" PRIu32 " of '%.*s' in folder '%s' is %s",
            t->idx->env_path, kw, (int)lid_len, lid, folder, rc == -ENOENT ? "missing" : "corrupt");
    }
    return rc;
}

/* Fills in m->keywords from set kw. *last is the set whose string
 * m->keywords already holds (0: none), so a walk over messages that share
 * a set reads it once. */
static int msg_keywords(struct idx_txn *t, const char *folder, uint32_t fid, uint32_t kw,
                        uint32_t *last, struct idx_msg *m)
{
    if (kw == 0) {
        m->keywords[0] = '\0';
        *last = 0;
        return 0;
    }
    if (kw == *last) {
        return 0;
    }
    *last = 0;
    int rc = kw_text(t, folder, fid, kw, m->lid, strlen(m->lid), m->keywords);
    if (rc == 0) {
        *last = kw;
    }
    return rc;
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

/* Reads the message stored under uid, keywords not filled in; -ENOENT
 * without a message when absent, -EBADMSG (with one) when corrupt. */
static int msg_read_uid(struct idx_txn *t, const char *folder, uint32_t fid, uint32_t uid,
                        struct idx_msg *m, uint32_t *kw_r)
{
    uint8_t key[8];
    uid_key(key, fid, uid);
    MDB_val v;
    int rc = db_get(t, DB_MESSAGES, key, sizeof(key), &v);
    if (rc != 0) {
        return rc;
    }
    if (!msg_decode(&v, uid, NULL, 0, m, kw_r)) {
        return fail(t->idx, -EBADMSG,
                    "index %s: corrupt message record for UID %" PRIu32 " in folder '%s'",
                    t->idx->env_path, uid, folder);
    }
    return 0;
}

/* Reads the APPENDING record under key; as msg_read_uid. */
static int pending_read(struct idx_txn *t, const char *folder, const uint8_t *key, size_t klen,
                        struct idx_msg *m, uint32_t *kw_r)
{
    MDB_val v;
    int rc = db_get(t, DB_APPENDING, key, klen, &v);
    if (rc != 0) {
        return rc;
    }
    if (!msg_decode(&v, 0, (const char *)key + 4, klen - 4, m, kw_r)) {
        return fail(t->idx, -EBADMSG, "index %s: corrupt pending record for '%.*s' in folder '%s'",
                    t->idx->env_path, (int)(klen - 4), (const char *)key + 4, folder);
    }
    return 0;
}

/* The identity index */

static void lidx_item(uint8_t item[LIDX_ITEM_LEN], uint64_t tag, uint32_t uid)
{
    be64(item, tag);
    be32(item + 8, uid);
}

/* Files uid under tag. An entry that sorts after all of the folder's
 * others (a new message: its name starts with the current time) goes in
 * with MDB_APPENDDUP, which fills pages completely where LMDB would
 * otherwise split them in half. */
static int lidx_add(struct idx_txn *t, uint32_t fid, uint64_t tag, uint32_t uid)
{
    uint8_t key[4], item[LIDX_ITEM_LEN];
    be32(key, fid);
    lidx_item(item, tag, uid);
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[DB_LIDS], &c);
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[DB_LIDS]);
    }
    MDB_val k = {.mv_size = sizeof(key), .mv_data = key}, v;
    unsigned flags = MDB_NODUPDATA;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY);
    if (rc == 0) {
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST_DUP);
    }
    if (rc == 0 && v.mv_size == LIDX_ITEM_LEN && memcmp(v.mv_data, item, LIDX_ITEM_LEN) < 0) {
        flags = MDB_APPENDDUP;
    }
    k.mv_size = sizeof(key);
    k.mv_data = key;
    v.mv_size = sizeof(item);
    v.mv_data = item;
    rc = mdb_cursor_put(c, &k, &v, flags);
    /* Close before wr_result: aborting a write transaction frees its
     * cursors. */
    mdb_cursor_close(c);
    return rc == MDB_KEYEXIST ? 0 : wr_result(t, rc, db_names[DB_LIDS]);
}

static int lidx_del(struct idx_txn *t, uint32_t fid, uint64_t tag, uint32_t uid)
{
    uint8_t key[4], item[LIDX_ITEM_LEN];
    be32(key, fid);
    lidx_item(item, tag, uid);
    MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
    MDB_val v = {.mv_size = sizeof(item), .mv_data = item};
    int rc = mdb_del(t->txn, t->idx->dbi[DB_LIDS], &k, &v);
    return rc == MDB_NOTFOUND ? 0 : wr_result(t, rc, db_names[DB_LIDS]);
}

/* The UIDs filed under tag, into a fresh array. */
static int lidx_candidates(struct idx_txn *t, uint32_t fid, uint64_t tag, uint32_t **uids_r,
                           size_t *n_r)
{
    *uids_r = NULL;
    *n_r = 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[DB_LIDS], &c);
    if (rc != 0) {
        return lmdb_fail(t->idx, rc, db_names[DB_LIDS]);
    }
    uint8_t key[4], item[LIDX_ITEM_LEN];
    be32(key, fid);
    lidx_item(item, tag, 0);
    MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
    MDB_val v = {.mv_size = sizeof(item), .mv_data = item};
    size_t n = 0, cap = 0;
    uint32_t *uids = NULL;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_GET_BOTH_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP)) {
        if (v.mv_size != LIDX_ITEM_LEN) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (memcmp(v.mv_data, item, 8) != 0) {
            break;
        }
        xgrow(&uids, &cap, n + 1, sizeof(*uids));
        uids[n++] = rd_be32((const uint8_t *)v.mv_data + 8);
    }
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        free(uids);
        return lmdb_fail(t->idx, rc, db_names[DB_LIDS]);
    }
    *uids_r = uids;
    *n_r = n;
    return 0;
}

/* Finds the synced record of lid: its UID, the record (keywords not filled
 * in) and its keyword set. -ENOENT (no message) when it has none;
 * -EBADMSG when it has none that is readable but an entry of its tag
 * points at a corrupt record, which may be its own (*uid_r names it). With
 * clean, entries that no longer lead to a record of their tag are
 * removed on the way. */
static int lid_find(struct idx_txn *t, const char *folder, uint32_t fid, const char *lid,
                    size_t len, bool clean, uint32_t *uid_r, struct idx_msg *m, uint32_t *kw_r)
{
    uint64_t tag = lid_tag(lid, len);
    uint32_t *uids;
    size_t n;
    int rc = lidx_candidates(t, fid, tag, &uids, &n);
    if (rc != 0) {
        return rc;
    }
    uint32_t bad = 0;
    rc = -ENOENT;
    for (size_t i = 0; i < n && rc == -ENOENT; i++) {
        int r = msg_read_uid(t, folder, fid, uids[i], m, kw_r);
        if (r == 0 && strcmp(m->lid, lid) == 0) {
            *uid_r = uids[i];
            rc = 0;
        } else if (r == -EBADMSG) {
            bad = bad != 0 ? bad : uids[i];
        } else if (r != 0 && r != -ENOENT) {
            rc = r;
        } else if (clean && (r == -ENOENT || lid_tag(m->lid, strlen(m->lid)) != tag)) {
            rc = lidx_del(t, fid, tag, uids[i]);
            rc = rc == 0 ? -ENOENT : rc;
        }
    }
    free(uids);
    if (rc == -ENOENT && bad != 0) {
        *uid_r = bad;
        return -EBADMSG;
    }
    return rc;
}

/* Messages */

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
    if (m->state != IDX_MSG_SYNCED && m->state != IDX_MSG_APPENDING && m->state != IDX_MSG_ORPHAN) {
        return fail(idx, -EINVAL, "index %s: invalid state %u for '%s'", idx->env_path, m->state,
                    m->lid);
    }
    if ((m->state == IDX_MSG_SYNCED || m->state == IDX_MSG_ORPHAN) && m->uid == 0) {
        return fail(idx, -EINVAL, "index %s: synced message '%s' without a UID", idx->env_path,
                    m->lid);
    }
    return 0;
}

/* What a put replaces, found before anything is written. */
struct put_old {
    uint32_t lid_uid; /* the synced record of this lid: its UID, 0 for none */
    uint32_t lid_kw;
    bool lid_indexed; /* lid_uid was found through the identity index */
    bool pending;     /* this lid has an APPENDING record */
    uint32_t pending_kw;
    bool displaced; /* another lid's record holds the new UID */
    uint64_t displaced_tag;
    uint32_t displaced_kw;
};

static int put_find_old(struct idx_txn *t, const char *folder, uint32_t fid,
                        const struct idx_msg *m, size_t lid_len, const uint8_t *lkey, size_t lklen,
                        struct put_old *o)
{
    struct idx_msg *scratch = xmalloc(sizeof(*scratch));
    memset(o, 0, sizeof(*o));
    int rc = lid_find(t, folder, fid, m->lid, lid_len, true, &o->lid_uid, scratch, &o->lid_kw);
    if (rc == 0) {
        o->lid_indexed = true;
    } else if (rc == -ENOENT) {
        o->lid_uid = 0;
        rc = 0;
    } else {
        /* Replacing over a corrupt record is refused rather than guessed
         * at (idx_msg_delete_lid removes it). */
        goto out;
    }
    rc = pending_read(t, folder, lkey, lklen, scratch, &o->pending_kw);
    o->pending = rc == 0;
    if (rc == -ENOENT) {
        rc = 0;
    }
    if (rc != 0 || m->uid == 0 || o->lid_uid == m->uid) {
        goto out;
    }
    uint32_t kw;
    rc = msg_read_uid(t, folder, fid, m->uid, scratch, &kw);
    if (rc == -ENOENT) {
        rc = 0;
    } else if (rc == 0 && strcmp(scratch->lid, m->lid) == 0) {
        /* This lid's own record, missing from the identity index (which
         * the put below mends); any other one found by the index loses. */
        if (o->lid_uid != 0) {
            o->displaced = true;
            o->displaced_tag = lid_tag(m->lid, lid_len);
            o->displaced_kw = kw;
        } else {
            o->lid_uid = m->uid;
            o->lid_kw = kw;
        }
    } else if (rc == 0) {
        o->displaced = true;
        o->displaced_tag = lid_tag(scratch->lid, strlen(scratch->lid));
        o->displaced_kw = kw;
    }
out:
    free(scratch);
    return rc;
}

/* Whether keyword set id holds exactly names. */
static int kw_is(struct idx_txn *t, uint32_t fid, uint32_t id, const char *names, bool *same_r)
{
    char *have = xmalloc(IDX_KEYWORDS_MAX + 1);
    uint64_t refs;
    int rc = kw_read(t, fid, id, &refs, have);
    *same_r = rc == 0 && strcmp(have, names) == 0;
    free(have);
    return rc == -ENOENT || rc == -EBADMSG ? 0 : rc;
}

static uint64_t count_less(uint64_t n)
{
    return n > 0 ? n - 1 : 0;
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
    struct folder_rec *f;
    rc = folder_use(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid = f->id, next_kw = f->next_kw;
    uint8_t lkey[4 + IDX_LID_MAX], ukey[8], buf[MSG_REC_MAX];
    size_t lklen = lid_key(lkey, fid, m->lid, lid_len);
    uint64_t tag = lid_tag(m->lid, lid_len);
    struct put_old o;
    rc = put_find_old(txn, folder, fid, m, lid_len, lkey, lklen, &o);
    if (rc != 0) {
        return rc;
    }

    /* The record replaced in place (same lid, same UID or still without
     * one) keeps its keyword set when the keywords did not change, which is
     * the common case of a flag change. */
    bool in_place = m->uid != 0 ? o.lid_uid == m->uid : o.pending;
    uint32_t in_place_kw = m->uid != 0 ? o.lid_kw : o.pending_kw;
    uint32_t kw = 0;
    bool keep_kw = false;
    if (in_place && in_place_kw != 0 && kw_len > 0) {
        rc = kw_is(txn, fid, in_place_kw, m->keywords, &keep_kw);
        kw = keep_kw ? in_place_kw : 0;
    }
    /* A reference to the new set before any old one goes, so that a set
     * that stays is never deleted and made again. */
    if (rc == 0 && kw_len > 0 && !keep_kw) {
        rc = kw_ref(txn, f, m->keywords, kw_len, &kw);
    }

    uint64_t count = f->count;
    if (rc == 0 && o.lid_uid != 0 && o.lid_uid != m->uid) {
        /* The lid moves off its old UID (or off UIDs altogether). */
        uid_key(ukey, fid, o.lid_uid);
        rc = db_del(txn, DB_MESSAGES, ukey, sizeof(ukey));
        if (rc == 0) {
            rc = lidx_del(txn, fid, tag, o.lid_uid);
        }
        if (rc == 0) {
            rc = kw_unref(txn, fid, o.lid_kw);
        }
        count = count_less(count);
    }
    if (rc == 0 && o.pending && m->uid != 0) {
        rc = db_del(txn, DB_APPENDING, lkey, lklen);
        if (rc == 0) {
            rc = kw_unref(txn, fid, o.pending_kw);
        }
        count = count_less(count);
    }
    if (rc == 0 && o.displaced) {
        /* Another lid held this UID: that lid no longer has a record. */
        rc = lidx_del(txn, fid, o.displaced_tag, m->uid);
        if (rc == 0) {
            rc = kw_unref(txn, fid, o.displaced_kw);
        }
        count = count_less(count);
    }
    if (rc == 0 && in_place) {
        if (!keep_kw) {
            rc = kw_unref(txn, fid, in_place_kw);
        }
        count = count_less(count);
    }
    if (rc == 0 && m->uid != 0) {
        uid_key(ukey, fid, m->uid);
        rc = db_put(txn, DB_MESSAGES, ukey, sizeof(ukey), buf, msg_encode(buf, m, kw, lid_len));
        if (rc == 0 && !(in_place && o.lid_indexed)) {
            rc = lidx_add(txn, fid, tag, m->uid);
        }
    } else if (rc == 0) {
        rc = db_put(txn, DB_APPENDING, lkey, lklen, buf, msg_encode(buf, m, kw, 0));
    }
    count++;
    if (rc == 0 && (count != f->count || f->next_kw != next_kw)) {
        f->count = count;
        rc = folder_save(txn, f);
    }
    if (rc != 0) {
        txn_forget_folder(txn);
    } else if (++txn->puts % IDX_DROP_PUTS == 0) {
        /* Each put's lookups (the lid index, the old record) fault in
         * random pages of the whole file; a transaction of 1,000 puts would
         * map all of it. */
        map_drop(txn->idx);
    }
    return rc;
}

/* Finds the folder for a message call that does not create it; -ENOENT
 * with a message when absent. */
static int msg_folder(struct idx_txn *t, const char *folder, struct folder_rec **f_r)
{
    return folder_cached(t, folder, f_r);
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
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid = f->id, kw, last = 0;
    rc = msg_read_uid(txn, folder, fid, uid, m_r, &kw);
    if (rc == -ENOENT) {
        return fail(txn->idx, -ENOENT, "index %s: no UID %" PRIu32 " in folder '%s'",
                    txn->idx->env_path, uid, folder);
    }
    return rc != 0 ? rc : msg_keywords(txn, folder, fid, kw, &last, m_r);
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
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid = f->id, uid, kw, last = 0;
    rc = lid_find(txn, folder, fid, lid, len, false, &uid, m_r, &kw);
    if (rc == -ENOENT) {
        uint8_t key[4 + IDX_LID_MAX];
        size_t klen = lid_key(key, fid, lid, len);
        rc = pending_read(txn, folder, key, klen, m_r, &kw);
        if (rc == -ENOENT) {
            return fail(txn->idx, -ENOENT, "index %s: no message '%s' in folder '%s'",
                        txn->idx->env_path, lid, folder);
        }
    }
    return rc != 0 ? rc : msg_keywords(txn, folder, fid, kw, &last, m_r);
}

/* Removes the record under uid, its identity entry (tag given, or 0 with
 * no entry to remove) and its keyword reference, and counts it out. */
static int msg_remove_uid(struct idx_txn *t, struct folder_rec *f, uint32_t uid, bool indexed,
                          uint64_t tag, uint32_t kw)
{
    uint8_t ukey[8];
    uid_key(ukey, f->id, uid);
    int rc = db_del(t, DB_MESSAGES, ukey, sizeof(ukey));
    if (rc == 0 && indexed) {
        rc = lidx_del(t, f->id, tag, uid);
    }
    if (rc == 0) {
        rc = kw_unref(t, f->id, kw);
    }
    if (rc == 0) {
        f->count = count_less(f->count);
        rc = folder_save(t, f);
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
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    uint32_t uid = 0, kw = 0;
    uint64_t tag = lid_tag(lid, len);
    rc = lid_find(txn, folder, f->id, lid, len, true, &uid, m, &kw);
    if (rc == 0 || rc == -EBADMSG) {
        /* A corrupt record that this lid's entry leads to goes too, so that
         * deleting is a way out of corruption. */
        rc = msg_remove_uid(txn, f, uid, true, tag, rc == 0 ? kw : 0);
        goto out;
    }
    if (rc != -ENOENT) {
        goto out;
    }
    uint8_t key[4 + IDX_LID_MAX];
    size_t klen = lid_key(key, f->id, lid, len);
    rc = pending_read(txn, folder, key, klen, m, &kw);
    if (rc == -ENOENT) {
        rc = fail(txn->idx, -ENOENT, "index %s: no message '%s' in folder '%s'", txn->idx->env_path,
                  lid, folder);
        goto out;
    }
    if (rc == 0 || rc == -EBADMSG) {
        int del = db_del(txn, DB_APPENDING, key, klen);
        if (del == 0) {
            del = kw_unref(txn, f->id, rc == 0 ? kw : 0);
        }
        if (del == 0) {
            f->count = count_less(f->count);
            del = folder_save(txn, f);
        }
        rc = del;
    }
out:
    free(m);
    return rc;
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
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    uint32_t kw = 0;
    rc = msg_read_uid(txn, folder, f->id, uid, m, &kw);
    if (rc == -ENOENT) {
        rc = fail(txn->idx, -ENOENT, "index %s: no UID %" PRIu32 " in folder '%s'",
                  txn->idx->env_path, uid, folder);
    } else if (rc == 0) {
        rc = msg_remove_uid(txn, f, uid, true, lid_tag(m->lid, strlen(m->lid)), kw);
    } else if (rc == -EBADMSG) {
        /* A corrupt record goes as well. Its lid is unknown, so its
         * identity entry stays; lookups skip such an entry, and the next
         * write that meets it removes it. */
        rc = msg_remove_uid(txn, f, uid, false, 0, 0);
    }
    free(m);
    return rc;
}

/* Decodes the record at a walk position, lid not copied: a synced one
 * (8-byte key) or an APPENDING one (folder id + lid). */
static int walk_view(struct idx_txn *t, const char *folder, bool pending, const MDB_val *k,
                     const MDB_val *v, struct msg_view *mv)
{
    if (!pending) {
        uint32_t uid = k->mv_size == 8 ? rd_be32((const uint8_t *)k->mv_data + 4) : 0;
        if (uid == 0 || !msg_view_decode(v, uid, NULL, 0, mv)) {
            return fail(t->idx, -EBADMSG,
                        "index %s: corrupt message record for UID %" PRIu32 " in folder '%s'",
                        t->idx->env_path, uid, folder);
        }
    } else if (k->mv_size <= 4 || k->mv_size > 4 + IDX_LID_MAX ||
               !msg_view_decode(v, 0, (const char *)k->mv_data + 4, k->mv_size - 4, mv)) {
        return fail(t->idx, -EBADMSG, "index %s: corrupt pending record for '%.*s' in folder '%s'",
                    t->idx->env_path, (int)(k->mv_size > 4 ? k->mv_size - 4 : 0),
                    (const char *)k->mv_data + 4, folder);
    }
    return 0;
}

/* walk_view into a complete struct idx_msg. */
static int walk_decode(struct idx_txn *t, const char *folder, uint32_t fid, bool pending,
                       const MDB_val *k, const MDB_val *v, uint32_t *last_kw, struct idx_msg *m)
{
    struct msg_view mv;
    int rc = walk_view(t, folder, pending, k, v, &mv);
    if (rc != 0) {
        return rc;
    }
    view_to_msg(&mv, m);
    return msg_keywords(t, folder, fid, mv.kw, last_kw, m);
}

int idx_msg_foreach(struct idx_txn *txn, const char *folder,
                    int (*fn)(const struct idx_msg *m, void *arg), void *arg)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid = f->id, last_kw = 0;
    struct idx_msg *m = xmalloc(sizeof(*m));
    uint8_t prefix[4];
    be32(prefix, fid);

    /* Synced records in UID order, then the others in lid order. Each step
     * seeks afresh from the last key, so fn may write to the index, even to
     * this folder; keyword-set ids are never reused, so the string
     * remembered for last_kw stays right across its writes. */
    static const enum idx_db dbs[] = {DB_MESSAGES, DB_APPENDING};
    for (size_t d = 0; d < ARRAY_SIZE(dbs) && rc == 0; d++) {
        uint8_t key[4 + IDX_LID_MAX];
        size_t klen = 4;
        memcpy(key, prefix, 4);
        bool after = false;
        for (;;) {
            MDB_val k, v;
            rc = db_seek(txn, dbs[d], key, klen, after, &k, &v);
            if (rc == -ENOENT || (rc == 0 && !has_prefix(&k, prefix, 4))) {
                rc = 0;
                break;
            }
            if (rc == 0 && k.mv_size > sizeof(key)) {
                rc = fail(txn->idx, -EBADMSG, "index %s: corrupt key in folder '%s'",
                          txn->idx->env_path, folder);
            }
            if (rc == 0) {
                rc = walk_decode(txn, folder, fid, dbs[d] == DB_APPENDING, &k, &v, &last_kw, m);
            }
            if (rc != 0) {
                break;
            }
            klen = k.mv_size;
            memcpy(key, k.mv_data, klen);
            after = true;
            rc = fn(m, arg);
            if (rc == 0) {
                rc = txn_check(txn, false);
            }
            if (rc != 0) {
                break;
            }
        }
    }
    free(m);
    return rc;
}

/* One step of walk_cursor: the record at k, v of folder fid. */
typedef int (*walk_step_fn)(struct idx_txn *t, const char *folder, uint32_t fid, bool pending,
                            const MDB_val *k, const MDB_val *v, void *ctx);

/* The folder's records in idx_msg_walk's order, one cursor per database
 * for the whole walk: that is only safe because step does not write. */
static int walk_cursor(struct idx_txn *txn, const char *folder, walk_step_fn step, void *ctx)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    uint32_t fid = f->id;
    uint8_t prefix[4];
    be32(prefix, fid);
    size_t seen = 0;
    static const enum idx_db dbs[] = {DB_MESSAGES, DB_APPENDING};
    for (size_t d = 0; d < ARRAY_SIZE(dbs) && rc == 0; d++) {
        MDB_cursor *c;
        int mrc = mdb_cursor_open(txn->txn, txn->idx->dbi[dbs[d]], &c);
        if (mrc != 0) {
            rc = lmdb_fail(txn->idx, mrc, db_names[dbs[d]]);
            break;
        }
        MDB_val k = {.mv_size = sizeof(prefix), .mv_data = prefix}, v;
        for (mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); mrc == 0 && rc == 0;
             mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            if (!has_prefix(&k, prefix, 4)) {
                break;
            }
            rc = step(txn, folder, fid, dbs[d] == DB_APPENDING, &k, &v, ctx);
            if (++seen % IDX_DROP_WALK == 0) {
                /* The cursor's pages stay valid: they refault when read. */
                map_drop(txn->idx);
            }
        }
        mdb_cursor_close(c);
        if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
            rc = lmdb_fail(txn->idx, mrc, db_names[dbs[d]]);
        }
    }
    map_drop(txn->idx);
    return rc;
}

struct msg_walk {
    int (*fn)(const struct idx_msg *m, void *arg);
    void *arg;
    uint32_t last_kw;
    struct idx_msg *m;
};

static int msg_walk_step(struct idx_txn *t, const char *folder, uint32_t fid, bool pending,
                         const MDB_val *k, const MDB_val *v, void *ctx)
{
    struct msg_walk *w = ctx;
    int rc = walk_decode(t, folder, fid, pending, k, v, &w->last_kw, w->m);
    return rc != 0 ? rc : w->fn(w->m, w->arg);
}

int idx_msg_walk(struct idx_txn *txn, const char *folder,
                 int (*fn)(const struct idx_msg *m, void *arg), void *arg)
{
    struct msg_walk w = {.fn = fn, .arg = arg, .m = xmalloc(sizeof(*w.m))};
    int rc = walk_cursor(txn, folder, msg_walk_step, &w);
    free(w.m);
    return rc;
}

/* Compact rows */

/* Keyword set ids of the index -> the rows' set index, for one walk (open
 * addressing; id 0 marks a free slot, as no set has it). */
struct kw_map {
    uint32_t *ids, *ix;
    size_t cap, n;
};

static size_t kw_map_slot(const struct kw_map *km, uint32_t id)
{
    size_t i = (size_t)(id * 2654435761u) & (km->cap - 1);
    while (km->ids[i] != 0 && km->ids[i] != id) {
        i = (i + 1) & (km->cap - 1);
    }
    return i;
}

static void kw_map_put(struct kw_map *km, uint32_t id, uint32_t ix)
{
    if ((km->n + 1) * 2 > km->cap) {
        struct kw_map old = *km;
        km->cap = old.cap != 0 ? old.cap * 2 : 16;
        km->ids = xcalloc(km->cap, sizeof(*km->ids));
        km->ix = xcalloc(km->cap, sizeof(*km->ix));
        km->n = 0;
        for (size_t i = 0; i < old.cap; i++) {
            if (old.ids[i] != 0) {
                kw_map_put(km, old.ids[i], old.ix[i]);
            }
        }
        free(old.ids);
        free(old.ix);
    }
    size_t i = kw_map_slot(km, id);
    km->ids[i] = id;
    km->ix[i] = ix;
    km->n++;
}

/* The lid copied into the rows' blocks; returns its offset. A lid never
 * straddles two blocks. */
static uint32_t rows_lid(struct idx_rows *r, const char *lid, size_t len)
{
    const size_t block = (size_t)1 << IDX_ROWS_BLOCK_BITS;
    if (r->nblocks == 0 || r->block_used + len + 1 > block) {
        /* Offsets are 32 bits: 65,536 blocks of 64 KiB, far beyond any
         * folder the index can describe. */
        if (r->nblocks >= ((size_t)1 << (32 - IDX_ROWS_BLOCK_BITS))) {
            abort();
        }
        xgrow(&r->lids, &r->blocks_cap, r->nblocks + 1, sizeof(*r->lids));
        r->lids[r->nblocks++] = xmalloc(block);
        r->block_used = 0;
    }
    char *p = r->lids[r->nblocks - 1] + r->block_used;
    memcpy(p, lid, len);
    p[len] = '\0';
    uint32_t off = (uint32_t)((r->nblocks - 1) << IDX_ROWS_BLOCK_BITS | r->block_used);
    r->block_used += len + 1;
    return off;
}

/* Appends a keyword text (len bytes) as a new set; returns its index. */
static uint32_t rows_kwset_new(struct idx_rows *r, const char *text, size_t len)
{
    xgrow(&r->kwsets, &r->kwsets_cap, r->nkwsets + 1, sizeof(*r->kwsets));
    char *t = xmalloc(len + 1);
    memcpy(t, text, len);
    t[len] = '\0';
    r->kwsets[r->nkwsets] = t;
    return (uint32_t)r->nkwsets++;
}

static void rows_init(struct idx_rows *r)
{
    if (r->nkwsets == 0) {
        rows_kwset_new(r, "", 0);
    }
}

/* The index of a keyword text, added when new. A folder has few distinct
 * sets, and rows are added one by one only for what a run writes. */
static uint32_t rows_kwset(struct idx_rows *r, const char *text)
{
    size_t len = strnlen(text, IDX_KEYWORDS_MAX + 1);
    rows_init(r);
    for (size_t i = 0; i < r->nkwsets; i++) {
        if (strncmp(r->kwsets[i], text, len) == 0 && r->kwsets[i][len] == '\0') {
            return (uint32_t)i;
        }
    }
    return rows_kwset_new(r, text, len);
}

/* Fills row from mv, its keywords being set kwix; keep_lid leaves the
 * row's lid as it is (the same name: not copied into the arena again). */
static void row_fill(struct idx_rows *r, struct idx_row *row, const struct msg_view *mv,
                     uint32_t kwix, bool keep_lid)
{
    row->uid = mv->uid;
    row->state = mv->state;
    row->flags = mv->flags;
    row->size = mv->size;
    memcpy(row->msgid_hash, mv->msgid_hash, sizeof(row->msgid_hash));
    memcpy(row->emailid_hash, mv->emailid_hash, sizeof(row->emailid_hash));
    if (!keep_lid) {
        row->lid_off = rows_lid(r, mv->lid, mv->lid_len);
        row->lid_len = (uint16_t)mv->lid_len;
    }
    row->kwset = kwix;
}

static void row_from_msg(struct idx_rows *r, struct idx_row *row, const struct idx_msg *m,
                         bool keep_lid)
{
    struct msg_view mv = {.uid = m->uid,
                          .state = m->state,
                          .flags = m->flags,
                          .size = m->size,
                          .lid = m->lid,
                          .lid_len = strnlen(m->lid, sizeof(m->lid) - 1)};
    memcpy(mv.msgid_hash, m->msgid_hash, sizeof(mv.msgid_hash));
    memcpy(mv.emailid_hash, m->emailid_hash, sizeof(mv.emailid_hash));
    row_fill(r, row, &mv, rows_kwset(r, m->keywords), keep_lid);
}

void idx_rows_reserve(struct idx_rows *rows, size_t n)
{
    if (n > rows->cap) {
        rows->v = xrealloc(rows->v, n * sizeof(*rows->v));
        rows->cap = n;
    }
}

void idx_rows_add(struct idx_rows *rows, const struct idx_msg *m)
{
    xgrow(&rows->v, &rows->cap, rows->n + 1, sizeof(*rows->v));
    row_from_msg(rows, &rows->v[rows->n], m, false);
    rows->n++;
}

void idx_rows_set(struct idx_rows *rows, size_t i, const struct idx_msg *m)
{
    /* A row changed in place (flags settled, a state) mostly keeps its
     * name: it is not copied into the arena again. */
    struct idx_row *row = &rows->v[i];
    row_from_msg(rows, row, m, strcmp(idx_rows_lid(rows, i), m->lid) == 0);
}

void idx_rows_get(const struct idx_rows *rows, size_t i, struct idx_msg *m_r)
{
    const struct idx_row *row = &rows->v[i];
    m_r->uid = row->uid;
    m_r->state = row->state;
    m_r->flags = row->flags;
    m_r->size = row->size;
    memcpy(m_r->msgid_hash, row->msgid_hash, sizeof(m_r->msgid_hash));
    memcpy(m_r->emailid_hash, row->emailid_hash, sizeof(m_r->emailid_hash));
    memcpy(m_r->lid, idx_rows_lid(rows, i), row->lid_len);
    m_r->lid[row->lid_len] = '\0';
    snprintf(m_r->keywords, sizeof(m_r->keywords), "%s", rows->kwsets[row->kwset]);
}

void idx_rows_remove(struct idx_rows *rows, size_t i)
{
    memmove(&rows->v[i], &rows->v[i + 1], (rows->n - i - 1) * sizeof(*rows->v));
    rows->n--;
}

void idx_rows_free(struct idx_rows *rows)
{
    for (size_t i = 0; i < rows->nkwsets; i++) {
        free(rows->kwsets[i]);
    }
    free(rows->kwsets);
    for (size_t i = 0; i < rows->nblocks; i++) {
        free(rows->lids[i]);
    }
    free(rows->lids);
    free(rows->v);
    memset(rows, 0, sizeof(*rows));
}

struct rows_walk {
    struct idx_rows *rows;
    struct kw_map sets;
    uint32_t last_kw, last_ix; /* the set of the previous row */
};

static int rows_walk_step(struct idx_txn *t, const char *folder, uint32_t fid, bool pending,
                          const MDB_val *k, const MDB_val *v, void *ctx)
{
    struct rows_walk *w = ctx;
    struct msg_view mv;
    int rc = walk_view(t, folder, pending, k, v, &mv);
    if (rc != 0) {
        return rc;
    }
    struct idx_rows *r = w->rows;
    uint32_t ix = 0;
    if (mv.kw != 0 && mv.kw == w->last_kw) {
        ix = w->last_ix;
    } else if (mv.kw != 0) {
        size_t slot = w->sets.cap != 0 ? kw_map_slot(&w->sets, mv.kw) : 0;
        if (w->sets.cap != 0 && w->sets.ids[slot] == mv.kw) {
            ix = w->sets.ix[slot];
        } else {
            char names[IDX_KEYWORDS_MAX + 1];
            rc = kw_text(t, folder, fid, mv.kw, mv.lid, mv.lid_len, names);
            if (rc != 0) {
                return rc;
            }
            ix = rows_kwset_new(r, names, strlen(names));
            kw_map_put(&w->sets, mv.kw, ix);
        }
        w->last_kw = mv.kw;
        w->last_ix = ix;
    }
    xgrow(&r->v, &r->cap, r->n + 1, sizeof(*r->v));
    row_fill(r, &r->v[r->n++], &mv, ix, false);
    return 0;
}

int idx_msg_walk_rows(struct idx_txn *txn, const char *folder, struct idx_rows *rows)
{
    rows_init(rows);
    struct rows_walk w = {.rows = rows};
    int rc = walk_cursor(txn, folder, rows_walk_step, &w);
    free(w.sets.ids);
    free(w.sets.ix);
    return rc;
}

size_t idx_msg_count(struct idx_txn *txn, const char *folder)
{
    struct folder_rec *f;
    if (txn_check(txn, false) != 0 || msg_folder(txn, folder, &f) != 0) {
        return 0;
    }
    return f->count > SIZE_MAX ? SIZE_MAX : (size_t)f->count;
}

int idx_msg_uid_last(struct idx_txn *txn, const char *folder, uint32_t *uid_r, bool *pending_r)
{
    *uid_r = 0;
    *pending_r = false;
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = msg_folder(txn, folder, &f);
    if (rc != 0) {
        return rc;
    }
    /* The folder's UID keys are (fid, uid) big-endian, so its highest is
     * the last key before (fid, UINT32_MAX] ends: one seek and one step
     * back, without reading any record between. */
    uint8_t key[8];
    uid_key(key, f->id, UINT32_MAX);
    MDB_cursor *c;
    int mrc = mdb_cursor_open(txn->txn, txn->idx->dbi[DB_MESSAGES], &c);
    if (mrc != 0) {
        return lmdb_fail(txn->idx, mrc, db_names[DB_MESSAGES]);
    }
    MDB_val k = {.mv_size = sizeof(key), .mv_data = key}, v;
    mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (mrc == 0 && !(k.mv_size == sizeof(key) && memcmp(k.mv_data, key, sizeof(key)) == 0)) {
        mrc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    } else if (mrc == MDB_NOTFOUND) {
        mrc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    }
    if (mrc == 0 && k.mv_size == sizeof(key) && has_prefix(&k, key, 4)) {
        const uint8_t *p = k.mv_data;
        *uid_r = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    }
    mdb_cursor_close(c);
    if (mrc != 0 && mrc != MDB_NOTFOUND) {
        return lmdb_fail(txn->idx, mrc, db_names[DB_MESSAGES]);
    }
    /* Records without a UID are keyed (fid, lid) in their own table. */
    rc = db_seek(txn, DB_APPENDING, key, 4, false, &k, &v);
    if (rc == 0) {
        *pending_r = has_prefix(&k, key, 4);
    } else if (rc != -ENOENT) {
        return rc;
    }
    return 0;
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

/* See idx_pop_is_intent. */
static bool pop_is_intent(uint32_t flags, const char *lid)
{
    return lid[0] != '\0' &&
           !(flags & (IDX_POP_DELIVERED | IDX_POP_SKIPPED | IDX_POP_DELETED_LOCALLY));
}

/* A POP record's value (everything but its key) into the given fields;
 * lid gets a NUL-terminated copy. */
static bool pop_decode_value(const MDB_val *v, uint32_t *flags, int64_t *first_seen, uint64_t *size,
                             uint8_t *header_hash, char *lid, size_t lid_cap)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    if (get_u8(&r) != POP_REC_VERSION) {
        return false;
    }
    *flags = get_u32(&r);
    *first_seen = (int64_t)get_u64(&r);
    *size = get_u64(&r);
    get_bytes(&r, header_hash, 16);
    size_t n = get_u8(&r);
    get_str(&r, lid, n, lid_cap);
    return rd_done(&r);
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
    return pop_decode_value(v, &p->flags, &p->first_seen, &p->size, p->header_hash, p->lid,
                            sizeof(p->lid));
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
    put_u8(&w, POP_REC_VERSION);
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
    size_t seen = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (++seen % IDX_DROP_WALK == 0) {
            map_drop(txn->idx);
        }
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
    map_drop(txn->idx);
    if (rc != MDB_NOTFOUND) {
        return lmdb_fail(txn->idx, rc, db_names[DB_POP]);
    }
    return 0;
}

/* The fields of a POP record that planning reads, decoded in place: the
 * key is neither copied nor checked again (the caller looked it up by it),
 * and nothing is cleared beyond what the record fills. */
static bool pop_decode_brief(const MDB_val *v, struct idx_pop_brief *b)
{
    return pop_decode_value(v, &b->flags, &b->first_seen, &b->size, b->header_hash, b->lid,
                            sizeof(b->lid));
}

struct idx_pop_cursor {
    struct idx_txn *txn;
    struct idx *idx; /* for idx_pop_cursor_close, which may come after txn ended */
    MDB_cursor *c;
    bool started;
    size_t seen; /* records returned, for map_drop */
};

int idx_pop_cursor_open(struct idx_txn *txn, struct idx_pop_cursor **c_r)
{
    int rc = txn_check(txn, false);
    if (rc != 0) {
        return rc;
    }
    struct idx_pop_cursor *pc = xcalloc(1, sizeof(*pc));
    pc->txn = txn;
    pc->idx = txn->idx;
    rc = mdb_cursor_open(txn->txn, txn->idx->dbi[DB_POP], &pc->c);
    if (rc != 0) {
        free(pc);
        return lmdb_fail(txn->idx, rc, db_names[DB_POP]);
    }
    *c_r = pc;
    return 0;
}

int idx_pop_cursor_next(struct idx_pop_cursor *pc, const char **uidl_r, size_t *len_r,
                        struct idx_pop_brief *b_r)
{
    MDB_val k, v;
    if (++pc->seen % IDX_DROP_WALK == 0) {
        /* The key the caller was given last points into the map and stays
         * valid: a dropped page refaults with the same bytes. */
        map_drop(pc->idx);
    }
    int rc = mdb_cursor_get(pc->c, &k, &v, pc->started ? MDB_NEXT : MDB_FIRST);
    pc->started = true;
    if (rc == MDB_NOTFOUND) {
        return -ENOENT;
    }
    if (rc != 0) {
        return lmdb_fail(pc->txn->idx, rc, db_names[DB_POP]);
    }
    if (k.mv_size == 0 || k.mv_size > IDX_UIDL_MAX || !pop_decode_brief(&v, b_r)) {
        return fail(pc->txn->idx, -EBADMSG, "index %s: corrupt POP record under key '%.*s'",
                    pc->txn->idx->env_path, (int)(k.mv_size > 70 ? 70 : k.mv_size),
                    (const char *)k.mv_data);
    }
    *uidl_r = k.mv_data;
    *len_r = k.mv_size;
    return 0;
}

void idx_pop_cursor_close(struct idx_pop_cursor *pc)
{
    if (pc == NULL) {
        return;
    }
    mdb_cursor_close(pc->c);
    map_drop(pc->idx);
    free(pc);
}

bool idx_pop_brief_is_intent(const struct idx_pop_brief *b)
{
    return pop_is_intent(b->flags, b->lid);
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
 * through idx_write so a full map is grown like anywhere else. *arg is set
 * to the version found (that of a fresh index is the current one). */
static int open_schema(struct idx_txn *t, void *arg)
{
    struct idx *idx = t->idx;
    uint32_t *version_r = arg;
    int rc = mdb_dbi_open(t->txn, db_names[DB_META], MDB_CREATE, &idx->dbi[DB_META]);
    if (rc != 0) {
        return wr_result(t, rc, "cannot open the meta database");
    }
    MDB_val v;
    rc = db_get(t, DB_META, META_SCHEMA_VERSION, strlen(META_SCHEMA_VERSION), &v);
    bool fresh = rc == -ENOENT;
    if (rc != 0 && !fresh) {
        return rc;
    }
    uint32_t version = IDX_SCHEMA_VERSION;
    if (!fresh) {
        rc = schema_check(idx, &v, &version);
        if (rc != 0) {
            return rc;
        }
    }
    *version_r = version;
    for (int i = 0; i < DB_COUNT; i++) {
        if (i == DB_META) {
            continue;
        }
        rc = mdb_dbi_open(t->txn, db_names[i], db_flags[i] | MDB_CREATE, &idx->dbi[i]);
        if (rc != 0) {
            return wr_result(t, rc, db_names[i]);
        }
    }
    if (version < IDX_SCHEMA_VERSION) {
        /* Schema 1's message databases, for convert_v1; any of them may be
         * gone already. */
        for (int i = DB_V1_UID; i < DB_ALL; i++) {
            rc = mdb_dbi_open(t->txn, db_names[i], 0, &idx->dbi[i]);
            idx->has_v1[i - DB_V1_UID] = rc == 0;
            if (rc != 0 && rc != MDB_NOTFOUND) {
                return lmdb_fail(idx, rc, db_names[i]);
            }
        }
    }
    if (fresh) {
        uint8_t buf[4];
        struct wr w = {.p = buf};
        put_u32(&w, IDX_SCHEMA_VERSION);
        return db_put(t, DB_META, META_SCHEMA_VERSION, strlen(META_SCHEMA_VERSION), buf,
                      sizeof(buf));
    }
    return 0;
}

/* Converting a schema 1 index.
 *
 * Each folder is converted in a transaction of its own, which writes the
 * folder's records into the schema 2 databases and replaces its folder
 * record by a schema 2 one (whose version byte is the folder's "done"
 * mark); a last transaction drops the schema 1 databases and stamps the
 * schema version. A crash therefore leaves every folder either untouched or
 * wholly converted; the schema stays 1 until the end, so idx_open_readonly
 * keeps refusing the index, and the next idx_open carries on with the
 * folders still to do. No other write comes in between, since idx_open
 * returns only once the conversion is complete. Schema 1 records of a
 * converted folder are ignored until they are dropped. A transaction per
 * folder, rather than one for everything, bounds the memory LMDB needs
 * for its dirty pages by the largest folder rather than by the account. */

struct v1_folder {
    uint32_t id;
    struct idx_folder st;
    char name[FOLDER_NAME_MAX + 1];
};

static bool v1_folder_decode(const MDB_val *v, struct v1_folder *f)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    memset(f, 0, sizeof(*f));
    if (get_u8(&r) != V1_REC_VERSION) {
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

static bool v1_msg_decode(const MDB_val *v, struct idx_msg *m)
{
    struct rd r = {.p = v->mv_data, .len = v->mv_size};
    memset(m, 0, sizeof(*m));
    if (get_u8(&r) != V1_REC_VERSION) {
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

struct convert {
    unsigned folders;  /* converted and committed */
    uint64_t messages; /* in those folders */
    /* Set by one convert_folder round (which idx_write may redo): */
    bool converted;
    uint64_t step_messages;
};

static int convert_fail(struct idx_txn *t, const char *what, const char *folder)
{
    return fail(t->idx, -EBADMSG,
                "index %s: cannot convert it from schema 1: corrupt %s in folder '%s'; move the "
                "index away and sync again (the next sync matches the local files to the "
                "server's messages)",
                t->idx->env_path, what, folder);
}

/* Copies the schema 1 records of one folder (the UID records of db
 * DB_V1_UID, or the APPENDING ones of DB_V1_PENDING) into schema 2 through
 * idx_msg_put, which keeps the identity index, the keyword sets and the
 * count. */
static int convert_records(struct idx_txn *t, struct convert *c, const struct v1_folder *f,
                           enum idx_db db)
{
    if (!t->idx->has_v1[db - DB_V1_UID]) {
        return 0;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    uint8_t prefix[4], key[4 + IDX_LID_MAX];
    be32(prefix, f->id);
    memcpy(key, prefix, 4);
    size_t klen = 4;
    bool after = false;
    int rc;
    for (;;) {
        MDB_val k, v;
        /* A fresh cursor per record: the puts in between may abort the
         * transaction, which frees the cursors of a write transaction. */
        rc = db_seek(t, db, key, klen, after, &k, &v);
        if (rc == -ENOENT || (rc == 0 && !has_prefix(&k, prefix, 4))) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            break;
        }
        if (k.mv_size > sizeof(key) || !v1_msg_decode(&v, m) ||
            (db == DB_V1_UID ? k.mv_size != 8 || rd_be32((const uint8_t *)k.mv_data + 4) != m->uid
                             : m->uid != 0 || strlen(m->lid) != k.mv_size - 4 ||
                                   memcmp(m->lid, (const uint8_t *)k.mv_data + 4, k.mv_size - 4))) {
            char what[80];
            snprintf(what, sizeof(what),
                     db == DB_V1_UID ? "message record for UID %" PRIu32 : "pending record",
                     k.mv_size == 8 ? rd_be32((const uint8_t *)k.mv_data + 4) : 0);
            rc = convert_fail(t, what, f->name);
            break;
        }
        klen = k.mv_size;
        memcpy(key, k.mv_data, klen);
        after = true;
        rc = idx_msg_put(t, f->name, m);
        if (rc != 0) {
            break;
        }
        c->step_messages++;
    }
    free(m);
    return rc;
}

/* Converts the first folder whose record is still schema 1; c->converted
 * says whether there was one. */
static int convert_folder(struct idx_txn *t, void *arg)
{
    struct convert *c = arg;
    c->converted = false;
    c->step_messages = 0;
    struct v1_folder *f = xmalloc(sizeof(*f));
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->idx->dbi[DB_FOLDERS], &cur);
    if (rc != 0) {
        free(f);
        return lmdb_fail(t->idx, rc, db_names[DB_FOLDERS]);
    }
    MDB_val k, v;
    bool found = false, bad = false;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (v.mv_size > 0 && ((const uint8_t *)v.mv_data)[0] == FOLDER_REC_VERSION) {
            continue;
        }
        found = true;
        bad = !v1_folder_decode(&v, f);
        if (bad) {
            snprintf(f->name, sizeof(f->name), "%.*s", (int)(k.mv_size > 400 ? 400 : k.mv_size),
                     (const char *)k.mv_data);
        }
        break;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        free(f);
        return lmdb_fail(t->idx, rc, db_names[DB_FOLDERS]);
    }
    rc = 0;
    if (!found) {
        goto out;
    }
    if (bad) {
        rc = convert_fail(t, "folder record", f->name);
        goto out;
    }
    if (t->cf == NULL) {
        t->cf = xmalloc(sizeof(*t->cf));
    }
    struct folder_rec *nf = t->cf;
    nf->id = f->id;
    nf->count = 0;
    nf->next_kw = 1;
    nf->st = f->st;
    nf->name_len = strlen(f->name);
    memcpy(nf->name, f->name, nf->name_len + 1);
    rc = folder_save(t, nf);
    if (rc == 0) {
        t->cf_valid = true;
        rc = convert_records(t, c, f, DB_V1_UID);
    }
    if (rc == 0) {
        rc = convert_records(t, c, f, DB_V1_PENDING);
    }
    if (rc == 0) {
        c->converted = true;
        if (idx_convert_test_point != NULL) {
            idx_convert_test_point(c->folders, false);
        }
    }
out:
    free(f);
    return rc;
}

static int convert_finish(struct idx_txn *t, void *arg)
{
    (void)arg;
    for (int i = DB_V1_UID; i < DB_ALL; i++) {
        /* Opened again by name: a dropped handle is closed at once, even
         * when its transaction is then aborted and redone. */
        MDB_dbi dbi;
        int rc = mdb_dbi_open(t->txn, db_names[i], 0, &dbi);
        if (rc == 0) {
            rc = mdb_drop(t->txn, dbi, 1);
        }
        if (rc != 0 && rc != MDB_NOTFOUND) {
            return wr_result(t, rc, db_names[i]);
        }
    }
    uint8_t buf[4];
    struct wr w = {.p = buf};
    put_u32(&w, IDX_SCHEMA_VERSION);
    return db_put(t, DB_META, META_SCHEMA_VERSION, strlen(META_SCHEMA_VERSION), buf, sizeof(buf));
}

static int convert_v1(struct idx *idx, char **err_r)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct convert c = {.folders = 0};
    int rc;
    for (;;) {
        rc = idx_write(idx, convert_folder, &c);
        if (rc != 0 || !c.converted) {
            break;
        }
        c.folders++;
        c.messages += c.step_messages;
        if (idx_convert_test_point != NULL) {
            idx_convert_test_point(c.folders, true);
        }
    }
    if (rc == 0) {
        rc = idx_write(idx, convert_finish, NULL);
    }
    if (rc != 0) {
        *err_r = xstrdup(idx->err);
        return rc;
    }
    memset(idx->has_v1, 0, sizeof(idx->has_v1));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    log_info(
        "index %s converted from schema 1 to %u (%u folder%s, %" PRIu64 " message records, %.1f s)",
        idx->env_path, IDX_SCHEMA_VERSION, c.folders, c.folders == 1 ? "" : "s", c.messages, secs);
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
        /* Never MDB_WRITEMAP: map_drop relies on LMDB writing nothing
         * through the map (see "Dropping the map's pages"). */
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
    map_locate(idx);
    if (idx->map_size < IDX_INITIAL_MAP) {
        pthread_mutex_lock(&idx->mu);
        rc = set_map_locked(idx, IDX_INITIAL_MAP);
        pthread_mutex_unlock(&idx->mu);
        if (rc != 0) {
            *err_r = xstrdup(idx->err);
            goto out;
        }
    }
    uint32_t version = 0;
    rc = idx_write(idx, open_schema, &version);
    if (rc != 0) {
        *err_r = xstrdup(idx->err);
    } else if (version < IDX_SCHEMA_VERSION) {
        rc = convert_v1(idx, err_r);
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
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&idx->wcond, &ca);
    pthread_condattr_destroy(&ca);
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
        rc = mdb_dbi_open(txn, db_names[i], db_flags[i], &idx->dbi[i]);
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
    /* After ro_open_dbs, which may have mapped the file again. */
    map_locate(idx);
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
    /* A write transaction that ended on a full map keeps its folder cache
     * for the next one; nothing else frees it then. */
    free(idx->wtxn.cf);
    if (idx->env != NULL) {
        mdb_env_close(idx->env);
    }
    if (idx->lock_fd >= 0) {
        /* Closing the descriptor releases the flock. */
        close(idx->lock_fd);
    }
    pthread_mutex_destroy(&idx->mu);
    pthread_cond_destroy(&idx->wcond);
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
    return pop_is_intent(p->flags, p->lid);
}

/* A folder renamed on one side (issue 12): the records stay where they
 * are, keyed by the folder's id; only the name record moves, so the whole
 * folder follows in one step of the caller's transaction. */
int idx_folder_rename(struct idx_txn *txn, const char *from, const char *to)
{
    int rc = txn_check(txn, true);
    if (rc != 0) {
        return rc;
    }
    size_t to_len = 0;
    rc = check_folder_name(txn->idx, to, &to_len);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec *f;
    rc = folder_cached(txn, to, &f);
    if (rc == 0) {
        return fail(txn->idx, -EEXIST, "index %s: folder '%s' is known already", txn->idx->env_path,
                    to);
    }
    if (rc != -ENOENT) {
        return rc;
    }
    rc = folder_cached(txn, from, &f);
    if (rc != 0) {
        return rc;
    }
    struct folder_rec moved = *f;
    txn_forget_folder(txn);
    uint8_t key[FOLDER_KEY_MAX];
    size_t klen = folder_key(key, from, strlen(from));
    rc = db_del(txn, DB_FOLDERS, key, klen);
    if (rc != 0) {
        return rc;
    }
    moved.name_len = to_len;
    memcpy(moved.name, to, to_len + 1);
    return folder_save(txn, &moved);
}
