/* Keep-on-server POP3 download engine: see popsync.h. */
#include "sync/popsync.h"
#include "sync/options.h"

#include <ctype.h>
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/diskq.h"
#include "sync/msgfacts.h"
#include "sync/pop3.h"
#include "sync/rfc5322.h"
#include "sync/secret.h"

/* A batch is committed (intents, fsync + rename, directory fsync, rows)
 * when it reaches any of these. */
#define BATCH_MAX_MSGS 50
#define BATCH_MAX_BYTES (16u * 1024 * 1024)
#define BATCH_MAX_MS 1000
/* RETRs kept in flight with PIPELINING (answers stream one after another,
 * so only one message is being written at a time). */
#define RETR_WINDOW 16
/* Message bytes queued for the thread pool's writes (sync/diskq.h) at most
 * before the connection stops reading until they are written. */
#define DISK_BACKLOG (8u * 1024 * 1024)
/* Messages per chunk of the listing, and bytes per chunk of its keys. */
#define MSG_CHUNK 1024
#define STR_CHUNK 65536
/* The index meta key of the Maildir's cur/ and new/ as last scanned, and
 * how old (seconds) their change times must be to be recorded: a change
 * within the same clock tick as an earlier one cannot be told from it. */
#define STAMP_KEY "pop:maildir_stamp"
#define STAMP_SETTLE_SECS 2
#define STAMP_MAX 160
/* Listing lines handled in one loop iteration before the listing yields
 * to the loop (pop3_pause, resumed from a timer): a whole listing sits in
 * the socket buffer at once, and parsing and matching 40,000 lines in one
 * go is a loop stall of tens of milliseconds. About 2 ms of work. */
#define LINES_PER_SLICE 4096
/* Header bytes kept from TOP for the Date header. */
#define MAX_HEADER_KEEP (256u * 1024)
/* Files of a batch are fsynced and renamed by this many threadpool jobs at
 * once: ext4 and xfs fold concurrent fsyncs into fewer journal commits, so
 * this is several times faster than one fsync after another. */
#define NSHARD 4

enum ps_phase {
    PS_START = 0,
    PS_CONNECT,  /* secret, connection, login (and the prepare job) */
    PS_LIST,     /* UIDL + LIST */
    PS_TOP,      /* TOP n 0 where needed */
    PS_DOWNLOAD, /* RETR, batches */
    PS_DELETE,   /* DELE */
    PS_QUIT,     /* QUIT */
    PS_FINISH,   /* final index transaction */
    PS_DONE,
};

static const char *const phase_names[] = {
    [PS_START] = "START", [PS_CONNECT] = "CONNECT",   [PS_LIST] = "LIST",
    [PS_TOP] = "TOP",     [PS_DOWNLOAD] = "DOWNLOAD", [PS_DELETE] = "DELETE",
    [PS_QUIT] = "QUIT",   [PS_FINISH] = "FINISH",     [PS_DONE] = "DONE",
};

/* What planning needs of an index record: all of it but the local
 * identity, whose one use (is the file still in the Maildir?) is answered
 * while the listing is matched against the index. Rows are changed by
 * reading them again in the write transaction (struct put). */
struct crec {
    int64_t first_seen;
    uint64_t size;
    uint8_t header_hash[16];
    uint8_t flags;      /* IDX_POP_* */
    bool intent : 1;    /* idx_pop_is_intent */
    bool file_here : 1; /* its local identity is in the Maildir scan */
};

/* One message of the server listing; one per listed message, so it is
 * kept small: the key lives in ps->strs, the flags are bits. */
struct smsg {
    struct popsync *ps;
    struct topctx *top; /* TOP in flight */
    struct dl *dl;      /* RETR in flight or in the batch */
    const char *uidl;   /* the key: "" when none, else in ps->strs */
    uint64_t size;
    struct crec rec; /* when has_rec */
    uint8_t hh[16];
    time_t date;
    int64_t first_seen;
    unsigned msgno;

    bool has_size : 1;
    bool has_rec : 1; /* the index has a row under uidl: rec */
    bool in_uidl : 1; /* seen in the UIDL listing */
    bool in_list : 1; /* seen in the LIST listing */
    bool need_top : 1;
    bool top_ok : 1;
    bool hh_valid : 1;
    bool date_ok : 1;

    bool download : 1;
    bool stored : 1; /* durably in the Maildir (before or during this run) */
    bool deleted_locally : 1;
    bool dele : 1;    /* DELE sent and answered +OK */
    bool replace : 1; /* a reused UIDL: the new message replaces the record */
    bool fetched : 1; /* downloaded and stored in this run */
    /* A DELE policy applies to a message not downloaded in this run whose
     * record has a header hash: TOP must confirm it is that message. */
    bool verify : 1;
    bool verified : 1; /* TOP's header hash matched the record's */
};

/* Strings that live as long as the run (the listing's keys), packed into
 * chunks that never move. */
struct strpool {
    char **chunks;
    size_t nchunks, chunks_cap;
    size_t used; /* in the last chunk */
};

/* An index row whose key is not in the listing: forgotten at the end of a
 * complete run, or taken over by a listed message under a new UIDL. */
struct vrec {
    char uidl[IDX_UIDL_MAX + 1];
    struct crec c;
    bool matched; /* taken over by a message under a new UIDL */
};

/* A change to one index row, applied in a write transaction. Rows that
 * exist are read there, changed and written back, so that the run never
 * holds whole rows (local identities included) for its messages. */
enum put_kind {
    PUT_UPDATE,  /* the row of m->uidl: flags |= or_flags, and the size when set_size */
    PUT_RENAME,  /* the row of vrecs[vrec] becomes m->uidl's, flags |= or_flags */
    PUT_SKIPPED, /* a new SKIPPED row for m (since) */
};

struct put {
    struct smsg *m;
    uint32_t vrec; /* PUT_RENAME: index into ps->vrecs */
    uint32_t or_flags;
    uint8_t kind; /* enum put_kind */
    bool set_size;
};

/* One of the parallel jobs that commit a batch's files. */
struct shard_job {
    uv_work_t work;
    struct popsync *ps;
    int k;
    int err;
    char *errmsg;
};

/* Complete, uncommitted downloads. */
struct batch {
    struct dl **v;
    size_t n, cap;
    uint64_t bytes;
    unsigned long long started;
};

/* A message being downloaded or waiting in the batch. */
struct dl {
    struct popsync *ps;
    struct smsg *m;
    struct md_writer *w;
    struct msgfacts_rawhash hh;
    int err; /* local write error */
    uint64_t bytes;
    bool in_batch;
    int shard; /* which handle of its set the writer belongs to */
    char lid[IDX_LID_MAX + 1];
    bool committed;
};

struct popsync {
    uv_loop_t *loop;
    const struct sync_account *acct;
    struct popsync_opts opts;
    popsync_done_cb done;
    void *done_arg;
    char *name; /* "pop3 ACCOUNT" for logs */
    time_t now;
    enum ps_phase phase;

    struct idx *idx;
    /* Two handles on the INBOX folder: see "downloads" below. */
    struct md_folder *folders[2][NSHARD];
    int wf;         /* the set of handles new writers use */
    int commit_set; /* the set of the batch being committed */
    int next_shard; /* round robin over the handles of a set */
    struct shard_job shards[NSHARD];
    unsigned shards_pending;
    int commit_err;
    char *commit_errmsg;
    /* The identities of the messages in the Maildir (all that is kept of
     * the scan, until the match has used them). */
    struct {
        char *buf;
        uint32_t *tab; /* 1 + offset into buf, open addressing, at most half full */
        size_t cap;
    } ids;
    /* cur/ and new/ (device, inode, change time) before the scan, and
     * whether this run skipped the scan because they are as recorded after
     * an earlier one, or must record them (see prep_work). */
    char stamp[STAMP_MAX];
    bool scan_skipped;
    bool stamp_record;
    bool need_scan; /* the scan was skipped, yet an intent row needs it */
    struct secret_req *secret_req;
    struct pop3 *pop;

    /* Matching while the UIDL listing arrives (live_match): a read
     * transaction and a cursor on the index, open from the UIDL command to
     * its end; the cursor's current row (its key points into the index's
     * map); the key of the last line. */
    struct idx_txn *live_txn;
    struct idx_pop_cursor *live_cur;
    struct idx_pop_brief live_row;
    const char *live_key;
    size_t live_klen;
    bool live_have; /* live_row is a row not yet matched */
    const char *live_last;
    bool live_ok;
    /* Listing lines since the last yield, and the timer that resumes the
     * connection after one (NULL when none is pending). */
    unsigned slice_lines;
    uv_timer_t *yield;
    /* The listed messages that have a key, in key order (then by number):
     * the index is walked against it in one pass. */
    struct smsg **order;
    size_t norder, mpos;
    bool match_done;
    /* Rows whose key is not listed (none when nothing changed). */
    struct vrec *vrecs;
    size_t nvrecs, vrecs_cap;
    /* Matchable vrecs by size (built only when there are some): new UIDLs
     * are matched against them without a pass over every row per
     * message. */
    struct size_ix *by_size;
    size_t nby_size;
    /* The listing, in the order the server sent it (msg_i), in chunks
     * of MSG_CHUNK: growing it never copies or moves a message. */
    struct smsg **mchunks;
    size_t nmsgs, mchunks_cap;
    struct strpool strs;
    /* Message number -> 1 + index into msgs (0: empty slot), open
     * addressing, a power of two at most half full: a hostile or odd
     * numbering costs no more than a dense one. Built only once the
     * numbering is not dense (below). */
    uint32_t *byno;
    size_t byno_cap;
    /* Every message so far was numbered one more than the one before,
     * from 1 (as servers number them): message n is msg_i(n - 1), and no
     * table is needed. The first message out of that order builds byno. */
    bool dense;
    unsigned max_listing;
    bool prep_done;
    bool pop_ready; /* the session is ready for commands */
    bool uidl_done, list_done;
    bool no_uidl;
    bool listing_complete;
    /* A listed message could not be keyed (TOP failed without UIDL, or no
     * UIDL line for it): its row would look unlisted, so no row is
     * forgotten in this run. */
    bool unkeyed;
    unsigned tops_pending;

    /* Downloads. */
    struct smsg **todo;
    size_t ntodo, todo_cap, todo_next;
    unsigned retr_inflight;
    struct dl *streaming; /* the RETR whose writer is open (answers are in order) */
    struct batch fill;    /* complete messages waiting for a commit */
    struct batch commit;  /* the batch the running job commits */
    bool committing;
    bool paused; /* the connection is paused until the commit finishes */
    /* The downloads' writes, on the thread pool (sync/diskq.h); reading
     * stops while too much waits there. */
    struct diskq *dq;
    bool disk_paused;
    bool pop_paused; /* what flow() last told the connection */
    unsigned dl_done;

    /* DELE / QUIT. */
    bool early_commit_done; /* see early_work */
    unsigned deles_pending;
    bool quit_ok;

    /* Changes for the final transaction. */
    struct put *puts;
    size_t nputs, puts_cap;

    /* One threadpool job at a time. */
    uv_work_t work;
    bool job_running;
    void (*job_fn)(struct popsync *ps);
    void (*job_after)(struct popsync *ps);
    int job_err;
    char *job_errmsg;

    bool cancelled;
    bool failed;
    enum sync_kind kind;
    char *error;
    struct popsync_result res;
};

static void advance(struct popsync *ps);
static void finish(struct popsync *ps);
static void start_listing(struct popsync *ps);

static void set_phase(struct popsync *ps, enum ps_phase ph)
{
    if (ps->phase == ph) {
        return;
    }
    log_debug("%s: phase %s -> %s", ps->name, phase_names[ps->phase], phase_names[ph]);
    ps->phase = ph;
}

/* Records the first fatal error; the run then winds down through finish. */
__attribute__((format(printf, 3, 4))) static void set_error(struct popsync *ps, enum sync_kind kind,
                                                            const char *fmt, ...)
{
    if (ps->failed) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    ps->error = xvasprintf(fmt, ap);
    va_end(ap);
    ps->failed = true;
    ps->kind = kind;
    log_debug("%s: error (%s): %s", ps->name, sync_kind_name(kind), ps->error);
}

/* ---- records ------------------------------------------------------------- */

static void add_put(struct popsync *ps, enum put_kind kind, struct smsg *m, size_t vrec,
                    uint32_t or_flags, bool set_size)
{
    xgrow(&ps->puts, &ps->puts_cap, ps->nputs + 1, sizeof(*ps->puts));
    ps->puts[ps->nputs++] = (struct put){
        .m = m,
        .vrec = (uint32_t)vrec,
        .or_flags = or_flags,
        .kind = (uint8_t)kind,
        .set_size = set_size,
    };
}

static struct smsg *msg_i(const struct popsync *ps, size_t i)
{
    return &ps->mchunks[i / MSG_CHUNK][i % MSG_CHUNK];
}

/* n bytes from the pool (n <= STR_CHUNK). */
static char *strpool_alloc(struct strpool *sp, size_t n)
{
    if (sp->nchunks == 0 || sp->used + n > STR_CHUNK) {
        xgrow(&sp->chunks, &sp->chunks_cap, sp->nchunks + 1, sizeof(*sp->chunks));
        sp->chunks[sp->nchunks++] = xmalloc(STR_CHUNK);
        sp->used = 0;
    }
    char *p = sp->chunks[sp->nchunks - 1] + sp->used;
    sp->used += n;
    return p;
}

static void strpool_free(struct strpool *sp)
{
    for (size_t i = 0; i < sp->nchunks; i++) {
        free(sp->chunks[i]);
    }
    free(sp->chunks);
    memset(sp, 0, sizeof(*sp));
}

/* ---- threadpool jobs ------------------------------------------------------ */

static void job_work(uv_work_t *w)
{
    struct popsync *ps = w->data;
    ps->job_fn(ps);
}

static void job_after(uv_work_t *w, int status)
{
    struct popsync *ps = w->data;
    ps->job_running = false;
    ps->job_after(ps);
}

static void run_job(struct popsync *ps, void (*fn)(struct popsync *),
                    void (*after)(struct popsync *))
{
    ps->job_fn = fn;
    ps->job_after = after;
    ps->job_err = 0;
    free(ps->job_errmsg);
    ps->job_errmsg = NULL;
    ps->job_running = true;
    ps->work.data = ps;
    int r = uv_queue_work(ps->loop, &ps->work, job_work, job_after);
    if (r < 0) {
        /* Cannot happen with a valid loop; run inline rather than stall. */
        fn(ps);
        ps->job_running = false;
        after(ps);
    }
}

__attribute__((format(printf, 3, 4))) static void job_fail(struct popsync *ps, int err,
                                                           const char *fmt, ...)
{
    if (ps->job_errmsg != NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    ps->job_errmsg = xvasprintf(fmt, ap);
    va_end(ap);
    ps->job_err = err;
}

static enum sync_kind local_kind(int err)
{
    /* A full disk may clear up; anything else needs the user. */
    return err == -ENOSPC || err == -EDQUOT || err == IDX_ERETRY ? SYNC_TRANSIENT : SYNC_PERMANENT;
}

/* The slot of id in the table of Maildir identities: where it is, or the
 * empty slot where it would go. */
static size_t ids_slot(const struct popsync *ps, const char *id)
{
    /* Eight bytes a step: a byte-wise hash of every identity cost as much
     * as the rest of matching a row. */
    const char *c = id;
    size_t len = strlen(c);
    uint64_t h = 14695981039346656037ull ^ len;
    for (; len >= 8; len -= 8, c += 8) {
        uint64_t w;
        memcpy(&w, c, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 29;
    }
    uint64_t w = 0;
    memcpy(&w, c, len);
    h = (h ^ w) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 32;
    size_t mask = ps->ids.cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        uint32_t e = ps->ids.tab[i];
        if (e == 0 || strcmp(ps->ids.buf + e - 1, id) == 0) {
            return i;
        }
    }
}

/* Prepare: scan the Maildir (pool thread), while the connection is set
 * up. The index is read once the listing is known (match_work). */
/* Reads the Maildir into ps->ids (pool thread). */
static int scan_ids(struct popsync *ps)
{
    struct md_scan *scan;
    int r = md_scan(ps->folders[0][0], &scan);
    if (r < 0) {
        job_fail(ps, r, "%s", md_folder_error(ps->folders[0][0]));
        return r;
    }
    /* The scan holds two strings and more per file; only the identities
     * are needed, packed in one block with a hash table over them. */
    size_t total = 0;
    for (size_t i = 0; i < scan->count; i++) {
        total += strlen(scan->msgs[i].id) + 1;
    }
    ps->ids.cap = 16;
    while (ps->ids.cap < 2 * scan->count) {
        ps->ids.cap *= 2;
    }
    ps->ids.buf = xmalloc(total > 0 ? total : 1);
    ps->ids.tab = xcalloc(ps->ids.cap, sizeof(*ps->ids.tab));
    size_t at = 0;
    for (size_t i = 0; i < scan->count && at < UINT32_MAX; i++) {
        const char *id = scan->msgs[i].id;
        size_t n = strlen(id) + 1;
        memcpy(ps->ids.buf + at, id, n);
        size_t h = ids_slot(ps, id);
        if (ps->ids.tab[h] == 0) {
            ps->ids.tab[h] = (uint32_t)(at + 1);
        }
        at += n;
    }
    md_scan_free(scan);
#ifdef __GLIBC__
    /* Give the scan's pages back before the listing arrives: freed memory
     * of a pool thread's arena otherwise stays resident next to it. */
    malloc_trim(0);
#endif
    return 0;
}

/* The stamp of cur/ and new/ into buf: device, inode and change time
 * (which no program can set back, unlike the modification time) of each.
 * False when it cannot be read, or says nothing: a change time under
 * STAMP_SETTLE_SECS old (a later change in the same tick would leave it
 * as it is), or a file system without sub-second times. */
static bool take_stamp(const struct popsync *ps, char *buf, size_t cap)
{
    static const char *const sub[2] = {"cur", "new"};
    struct stat st[2];
    for (int i = 0; i < 2; i++) {
        char *path = xasprintf("%s/%s", md_folder_path(ps->folders[0][0]), sub[i]);
        int r = stat(path, &st[i]);
        free(path);
        if (r != 0) {
            return false;
        }
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < 2; i++) {
        if (st[i].st_ctim.tv_sec > now.tv_sec - STAMP_SETTLE_SECS) {
            return false;
        }
    }
    if (st[0].st_ctim.tv_nsec == 0 && st[1].st_ctim.tv_nsec == 0) {
        return false;
    }
    snprintf(buf, cap, "1 %llu %llu %lld.%09ld %llu %llu %lld.%09ld",
             (unsigned long long)st[0].st_dev, (unsigned long long)st[0].st_ino,
             (long long)st[0].st_ctim.tv_sec, st[0].st_ctim.tv_nsec,
             (unsigned long long)st[1].st_dev, (unsigned long long)st[1].st_ino,
             (long long)st[1].st_ctim.tv_sec, st[1].st_ctim.tv_nsec);
    return true;
}

/* Prepare (pool thread, while the connection is set up): read the
 * Maildir, unless cur/ and new/ are as an earlier run recorded them after
 * its scan. Then every delivered row's file is where that run saw it
 * (rows whose file was gone were marked deleted locally in the same
 * transaction that recorded the stamp), and a deletion, a rename or a new
 * file since would have changed a change time. The stamp is taken before
 * the scan, so a change during it shows next time. The index is read once
 * the listing is known (match_work). */
static void prep_work(struct popsync *ps)
{
    char old[STAMP_MAX];
    size_t len = 0;
    bool have_stamp = take_stamp(ps, ps->stamp, sizeof(ps->stamp));
    if (have_stamp) {
        struct idx_txn *txn;
        int r = idx_begin(ps->idx, false, &txn);
        if (r < 0) {
            job_fail(ps, r, "%s", idx_error(ps->idx));
            return;
        }
        r = idx_meta_get(txn, STAMP_KEY, old, sizeof(old) - 1, &len);
        idx_abort(txn);
        if (r < 0 && r != -ENOENT) {
            job_fail(ps, r, "%s", idx_error(ps->idx));
            return;
        }
        old[r == 0 && len < sizeof(old) ? len : 0] = '\0';
        ps->scan_skipped = strcmp(old, ps->stamp) == 0;
        ps->stamp_record = !ps->scan_skipped;
    }
    if (ps->scan_skipped) {
        log_debug("%s: the Maildir is as the last scan left it: not reading it", ps->name);
    } else if (scan_ids(ps) < 0) {
        return;
    }
    if (!ps->opts.dry_run) {
        md_clean_tmp(ps->folders[0][0], ps->now);
    }
}

static void prep_after(struct popsync *ps)
{
    if (ps->job_errmsg != NULL) {
        set_error(ps, local_kind(ps->job_err), "%s", ps->job_errmsg);
    }
    ps->prep_done = true;
    start_listing(ps);
    advance(ps);
}

/* ---- connection --------------------------------------------------------- */

static void on_pop_error(struct pop3 *p, int err, enum pop3_errkind kind, const char *msg,
                         void *arg)
{
    struct popsync *ps = arg;
    if (ps->phase == PS_QUIT && ps->quit_ok) {
        return;
    }
    enum sync_kind k = kind == POP3_ERRKIND_AUTH        ? SYNC_AUTH
                       : kind == POP3_ERRKIND_PERMANENT ? SYNC_PERMANENT
                                                        : SYNC_TRANSIENT;
    set_error(ps, k, "%s", msg);
    pop3_free(ps->pop);
    ps->pop = NULL;
    advance(ps);
}

static void on_uidl_line(struct pop3 *p, const char *line, size_t len, void *arg);
static void on_uidl_done(struct pop3 *p, const struct pop3_status *st, void *arg);
static void on_list_line(struct pop3 *p, const char *line, size_t len, void *arg);
static void on_list_done(struct pop3 *p, const struct pop3_status *st, void *arg);
static void live_begin(struct popsync *ps);
static void live_match(struct popsync *ps, struct smsg *m);
static void live_end(struct popsync *ps, bool complete);

/* The listing is asked for once the session is ready and the prepare job
 * is done (it nearly always is by then), so that the live match has the
 * scan to answer "is the file still there?" from the first line on. */
static void start_listing(struct popsync *ps)
{
    if (!ps->pop_ready || !ps->prep_done || ps->phase != PS_CONNECT || ps->failed ||
        ps->cancelled) {
        return;
    }
    set_phase(ps, PS_LIST);
    /* Both go out together under PIPELINING: one round trip. */
    pop3_uidl(ps->pop, on_uidl_line, on_uidl_done, ps);
    pop3_list(ps->pop, on_list_line, on_list_done, ps);
    live_begin(ps);
}

static void on_pop_ready(struct pop3 *p, void *arg)
{
    struct popsync *ps = arg;
    ps->pop_ready = true;
    start_listing(ps);
}

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct popsync *ps = arg;
    ps->secret_req = NULL;
    if (err < 0) {
        set_error(ps, SYNC_PERMANENT, "%s", msg != NULL ? msg : "cannot get the password");
        advance(ps);
        return;
    }
    if (ps->cancelled || ps->failed) {
        advance(ps);
        return;
    }
    const struct sync_account *a = ps->acct;
    struct pop3_opts po;
    sync_pop3_opts(a, secret, &po);
    po.net.insecure_skip_verify = ps->opts.insecure_skip_verify;
    static const struct pop3_cb cb = {.on_ready = on_pop_ready, .on_error = on_pop_error};
    int r = pop3_connect(ps->loop, &po, &cb, ps, &ps->pop);
    if (r < 0) {
        ps->pop = NULL;
        set_error(ps, SYNC_PERMANENT, "%s:%u: cannot connect: %s", a->host, a->port,
                  uv_strerror(r));
        advance(ps);
    }
}

/* ---- listing --------------------------------------------------------------- */

static size_t byno_slot(const struct popsync *ps, unsigned msgno)
{
    size_t mask = ps->byno_cap - 1;
    size_t h = ((size_t)msgno * 2654435761u) & mask;
    while (ps->byno[h] != 0 && msg_i(ps, ps->byno[h] - 1)->msgno != msgno) {
        h = (h + 1) & mask;
    }
    return h;
}

static struct smsg *msg_at(struct popsync *ps, unsigned msgno)
{
    if (ps->dense) {
        return msgno >= 1 && msgno <= ps->nmsgs ? msg_i(ps, msgno - 1) : NULL;
    }
    if (ps->byno_cap == 0) {
        return NULL;
    }
    uint32_t e = ps->byno[byno_slot(ps, msgno)];
    return e != 0 ? msg_i(ps, e - 1) : NULL;
}

static void byno_grow(struct popsync *ps)
{
    free(ps->byno);
    ps->byno_cap = ps->byno_cap == 0 ? 64 : ps->byno_cap * 2;
    while (ps->byno_cap < (ps->nmsgs + 1) * 2) {
        ps->byno_cap *= 2;
    }
    ps->byno = xcalloc(ps->byno_cap, sizeof(*ps->byno));
    for (size_t i = 0; i < ps->nmsgs; i++) {
        ps->byno[byno_slot(ps, msg_i(ps, i)->msgno)] = (uint32_t)(i + 1);
    }
}

/* The entry for msgno, new or from the other listing; NULL (and the run
 * fails) when the listing is longer than the limit. */
static struct smsg *add_msg(struct popsync *ps, unsigned msgno)
{
    struct smsg *m = msg_at(ps, msgno);
    if (m != NULL) {
        return m;
    }
    if (ps->nmsgs >= ps->max_listing) {
        set_error(ps, SYNC_PERMANENT,
                  "%s: the server lists more than %u messages, more than mailsync handles in one "
                  "account; delete some on the server (or with another client) and sync again",
                  ps->name, ps->max_listing);
        return NULL;
    }
    if (ps->dense && msgno != ps->nmsgs + 1) {
        ps->dense = false;
    }
    if (!ps->dense && (ps->nmsgs + 1) * 2 > ps->byno_cap) {
        byno_grow(ps);
    }
    if (ps->nmsgs % MSG_CHUNK == 0) {
        size_t k = ps->nmsgs / MSG_CHUNK;
        xgrow(&ps->mchunks, &ps->mchunks_cap, k + 1, sizeof(*ps->mchunks));
        ps->mchunks[k] = xmalloc(MSG_CHUNK * sizeof(**ps->mchunks));
    }
    m = msg_i(ps, ps->nmsgs++);
    memset(m, 0, sizeof(*m));
    m->msgno = msgno;
    m->uidl = "";
    m->ps = ps;
    if (!ps->dense) {
        ps->byno[byno_slot(ps, msgno)] = (uint32_t)ps->nmsgs;
    }
    return m;
}

/* A listing line's message: NULL when the run must stop (over the limit,
 * or the number listed twice in this listing). A failed run drops the
 * connection at once, so the rest of a hostile listing is not read. */
static struct smsg *listed_msg(struct popsync *ps, unsigned msgno, bool uidl)
{
    struct smsg *m = add_msg(ps, msgno);
    if (m != NULL && (uidl ? m->in_uidl : m->in_list)) {
        set_error(ps, SYNC_TRANSIENT, "%s: message %u is listed twice in the %s listing", ps->name,
                  msgno, uidl ? "UIDL" : "LIST");
        m = NULL;
    }
    if (m == NULL) {
        advance(ps);
        return NULL;
    }
    if (uidl) {
        m->in_uidl = true;
    } else {
        m->in_list = true;
    }
    return m;
}

static bool uidl_valid(const char *u, size_t n)
{
    if (n == 0 || n > IDX_UIDL_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (u[i] < 0x21 || u[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

static void hex16(const uint8_t *h, char *out)
{
    for (int i = 0; i < 16; i++) {
        snprintf(out + 2 * i, 3, "%02x", h[i]);
    }
}

static void on_yield_closed(uv_handle_t *h)
{
    free(h);
}

static void on_yield(uv_timer_t *t)
{
    struct popsync *ps = t->data;
    ps->yield = NULL;
    uv_close((uv_handle_t *)t, on_yield_closed);
    if (ps->pop != NULL) {
        pop3_resume(ps->pop);
    }
}

/* Counts a listing line; after LINES_PER_SLICE of them, lets the loop run
 * (other accounts' connections and timers) before the next ones. */
static void listing_slice(struct popsync *ps)
{
    if (++ps->slice_lines < LINES_PER_SLICE || ps->yield != NULL || ps->pop == NULL) {
        return;
    }
    ps->slice_lines = 0;
    ps->yield = xcalloc(1, sizeof(*ps->yield));
    ps->yield->data = ps;
    uv_timer_init(ps->loop, ps->yield);
    pop3_pause(ps->pop);
    uv_timer_start(ps->yield, on_yield, 0, 0);
}

static void on_uidl_line(struct pop3 *p, const char *line, size_t len, void *arg)
{
    struct popsync *ps = arg;
    unsigned n;
    const char *rest;
    if (ps->failed) {
        return;
    }
    if (!pop3_parse_listing(line, &n, &rest)) {
        set_error(ps, SYNC_TRANSIENT, "%s: malformed UIDL line from the server", ps->name);
        return;
    }
    size_t ul = strcspn(rest, " \t");
    struct smsg *m = listed_msg(ps, n, true);
    if (m == NULL) {
        return;
    }
    if (uidl_valid(rest, ul)) {
        char *k = strpool_alloc(&ps->strs, ul + 1);
        memcpy(k, rest, ul);
        k[ul] = '\0';
        m->uidl = k;
    } else {
        /* RFC 1939 allows 1-70 characters 0x21-0x7E; anything else is kept
         * usable as a hash of what the server sent. */
        uint8_t md[MSGFACTS_HASH_LEN];
        msgfacts_digest(rest, ul, md);
        char *k = strpool_alloc(&ps->strs, 34);
        k[0] = 'X';
        hex16(md, k + 1);
        m->uidl = k;
    }
    if (ps->live_ok) {
        live_match(ps, m);
    }
    listing_slice(ps);
}

static void on_uidl_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct popsync *ps = arg;
    live_end(ps, st->err >= 0 && st->ok && !ps->failed);
    if (st->err < 0) {
        return;
    }
    if (!st->ok) {
        ps->no_uidl = true;
        log_warnx("%s: the server has no UIDL; identifying messages by a hash of their headers "
                  "(TOP), which is slower and cannot tell identical messages apart",
                  ps->name);
        for (size_t i = 0; i < ps->nmsgs; i++) {
            msg_i(ps, i)->uidl = "";
        }
    }
    ps->uidl_done = true;
    advance(ps);
}

static void on_list_line(struct pop3 *p, const char *line, size_t len, void *arg)
{
    struct popsync *ps = arg;
    unsigned n;
    const char *rest;
    char *end;
    if (ps->failed) {
        return;
    }
    if (!pop3_parse_listing(line, &n, &rest)) {
        set_error(ps, SYNC_TRANSIENT, "%s: malformed LIST line from the server", ps->name);
        return;
    }
    /* Plain digits, as servers send them, without strtoull's locale
     * machinery (it cost more than the rest of the line); anything else
     * as before. */
    unsigned long long sz = 0;
    end = (char *)rest;
    while (*end >= '0' && *end <= '9' && end - rest < 19) {
        sz = sz * 10 + (unsigned)(*end - '0');
        end++;
    }
    if (*end >= '0' && *end <= '9') {
        sz = strtoull(rest, &end, 10);
    } else if (end == rest) {
        sz = strtoull(rest, &end, 10);
    }
    struct smsg *m = listed_msg(ps, n, false);
    if (m == NULL) {
        return;
    }
    if (end != rest) {
        m->size = sz;
        m->has_size = true;
    }
    listing_slice(ps);
}

static void on_list_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct popsync *ps = arg;
    if (st->err < 0) {
        return;
    }
    if (!st->ok) {
        char *t = xstrdup(st->text);
        set_error(ps, SYNC_TRANSIENT, "%s: LIST failed: %s", ps->name, t);
        free(t);
    }
    ps->list_done = true;
    advance(ps);
}

/* ---- TOP ------------------------------------------------------------------ */

struct topctx {
    struct popsync *ps;
    struct smsg *m;
    struct msgfacts_rawhash hh;
    struct sbuf hdr;
};

static void on_top_data(struct pop3 *p, const char *data, size_t len, void *arg)
{
    struct topctx *t = arg;
    msgfacts_rawhash_feed(&t->hh, data, len);
    if (t->ps->acct->pop.has_since && t->hdr.len < MAX_HEADER_KEEP) {
        size_t n = MAX_HEADER_KEEP - t->hdr.len;
        sbuf_add(&t->hdr, data, len < n ? len : n);
    }
}

static void on_top_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct topctx *t = arg;
    struct popsync *ps = t->ps;
    struct smsg *m = t->m;
    if (st->err >= 0 && st->ok) {
        msgfacts_rawhash_final(&t->hh);
        memcpy(m->hh, t->hh.out, sizeof(m->hh));
        m->hh_valid = true;
        m->top_ok = true;
        if (ps->acct->pop.has_since) {
            char *d = rfc5322_find_header(t->hdr.buf != NULL ? t->hdr.buf : "", t->hdr.len, "Date");
            if (d != NULL && rfc5322_parse_date(d, &m->date)) {
                m->date_ok = true;
            } else if (d != NULL) {
                log_debug("%s: message %u: unparseable Date \"%.80s\": downloading it", ps->name,
                          m->msgno, d);
            }
            free(d);
        }
    } else if (st->err >= 0) {
        log_warnx("%s: TOP %u 0 failed: %s", ps->name, m->msgno, st->text);
    }
    msgfacts_rawhash_free(&t->hh);
    sbuf_free(&t->hdr);
    free(t);
    m->top = NULL;
    ps->tops_pending--;
    if (st->err >= 0) {
        advance(ps);
    }
}

static void send_top(struct popsync *ps, struct smsg *m)
{
    struct topctx *t = xcalloc(1, sizeof(*t));
    t->ps = ps;
    t->m = m;
    msgfacts_rawhash_init(&t->hh);
    if (pop3_top(ps->pop, m->msgno, 0, on_top_data, on_top_done, t) < 0) {
        msgfacts_rawhash_free(&t->hh);
        free(t);
        return;
    }
    m->top = t;
    ps->tops_pending++;
}

/* ---- planning -------------------------------------------------------------- */

static bool scan_has(const struct popsync *ps, const char *lid)
{
    return lid[0] != '\0' && ps->ids.cap > 0 && ps->ids.tab[ids_slot(ps, lid)] != 0;
}

static bool hash_is_zero(const uint8_t *h)
{
    for (int k = 0; k < 16; k++) {
        if (h[k] != 0) {
            return false;
        }
    }
    return true;
}

static int smsg_ptr_cmp(const void *a, const void *b)
{
    const struct smsg *x = *(const struct smsg *const *)a, *y = *(const struct smsg *const *)b;
    int c = strcmp(x->uidl, y->uidl);
    return c != 0 ? c : (x->msgno > y->msgno) - (x->msgno < y->msgno);
}

static void crec_fill(const struct popsync *ps, struct crec *c, int64_t first_seen, uint64_t size,
                      const uint8_t *header_hash, uint32_t flags, bool intent, const char *lid)
{
    c->first_seen = first_seen;
    c->size = size;
    memcpy(c->header_hash, header_hash, sizeof(c->header_hash));
    c->flags = (uint8_t)flags;
    c->intent = intent;
    /* Without a scan, a row's file is there unless the row says it was
     * deleted locally (see prep_work); an intent may have been left by a
     * crash, so it needs the scan. */
    c->file_here = ps->scan_skipped ? lid[0] != '\0' : scan_has(ps, lid);
}

static void crec_from(const struct popsync *ps, const struct idx_pop *p, struct crec *c)
{
    crec_fill(ps, c, p->first_seen, p->size, p->header_hash, p->flags, idx_pop_is_intent(p),
              p->lid);
}

/* The live match: the UIDL listing is merged with the index, in key order,
 * while it arrives, so that the rows are read while the server is still
 * sending, and the common resync (every row listed, in order) needs no
 * pass over the index afterwards. Servers that number their UIDLs
 * (Dovecot's default) list them in key order. The merge is given up, and
 * match_work walks the index once the listing is complete as it always
 * did, when the keys do not come in strictly ascending order (a key could
 * then be listed twice), when a row is not listed (it is to be forgotten
 * or matched under a new UIDL: match_work collects those), when a row is
 * an intent while the Maildir scan was skipped (match_work scans then), or
 * on an index error (which match_work then reports). A step reads the
 * memory map and costs less than parsing the line. */
static void live_stop(struct popsync *ps, const char *why)
{
    if (why != NULL) {
        log_debug("%s: matching after the listing instead of during it: %s", ps->name, why);
    }
    ps->live_ok = false;
    ps->live_have = false;
    idx_pop_cursor_close(ps->live_cur);
    ps->live_cur = NULL;
    if (ps->live_txn != NULL) {
        idx_abort(ps->live_txn);
        ps->live_txn = NULL;
    }
}

/* Moves the cursor to the next row. */
static void live_step(struct popsync *ps)
{
    int r = idx_pop_cursor_next(ps->live_cur, &ps->live_key, &ps->live_klen, &ps->live_row);
    ps->live_have = r == 0;
    if (r < 0 && r != -ENOENT) {
        live_stop(ps, idx_error(ps->idx));
    }
}

static void live_begin(struct popsync *ps)
{
    /* The scan's identities must be known to tell whether a row's file is
     * there: without them (the prepare job still running), no live match. */
    if (!ps->prep_done || ps->failed || ps->cancelled) {
        return;
    }
    if (idx_begin(ps->idx, false, &ps->live_txn) < 0) {
        ps->live_txn = NULL;
        return;
    }
    if (idx_pop_cursor_open(ps->live_txn, &ps->live_cur) < 0) {
        ps->live_cur = NULL;
        live_stop(ps, idx_error(ps->idx));
        return;
    }
    ps->live_ok = true;
    live_step(ps);
}

/* The order of LMDB keys: bytewise, a prefix first. */
static int live_cmp(const struct popsync *ps, const char *key, size_t len)
{
    size_t n = ps->live_klen < len ? ps->live_klen : len;
    int c = memcmp(ps->live_key, key, n);
    if (c != 0) {
        return c;
    }
    return (ps->live_klen > len) - (ps->live_klen < len);
}

static void live_match(struct popsync *ps, struct smsg *m)
{
    if (ps->live_last != NULL && strcmp(ps->live_last, m->uidl) >= 0) {
        live_stop(ps, "the UIDL listing is not in key order");
        return;
    }
    ps->live_last = m->uidl;
    if (!ps->live_have) {
        return; /* past the last row: a new message */
    }
    int c = live_cmp(ps, m->uidl, strlen(m->uidl));
    if (c < 0) {
        live_stop(ps, "a row of the index is not listed");
        return;
    }
    if (c > 0) {
        return; /* a new message */
    }
    bool intent = idx_pop_brief_is_intent(&ps->live_row);
    if (ps->scan_skipped && intent) {
        live_stop(ps, "an interrupted download is recorded");
        return;
    }
    const struct idx_pop_brief *b = &ps->live_row;
    crec_fill(ps, &m->rec, b->first_seen, b->size, b->header_hash, b->flags, intent, b->lid);
    m->has_rec = true;
    live_step(ps);
}

/* The end of the UIDL listing (complete: its terminating line came, and
 * the run has not failed), or of the run. */
static void live_end(struct popsync *ps, bool complete)
{
    if (!ps->live_ok) {
        return;
    }
    if (!complete) {
        live_stop(ps, "the UIDL listing did not complete");
        return;
    }
    if (ps->live_have) {
        live_stop(ps, "a row of the index is not listed");
        return;
    }
    live_stop(ps, NULL);
    /* Every row is listed, once: nothing to forget, nothing to rename. */
    ps->match_done = true;
    free(ps->ids.buf);
    free(ps->ids.tab);
    memset(&ps->ids, 0, sizeof(ps->ids));
}

/* One index row against the keyed listing; both come in key order, so
 * this is one step of a merge. */
static int match_row(const struct idx_pop *p, void *arg)
{
    struct popsync *ps = arg;
    if (ps->scan_skipped && idx_pop_is_intent(p)) {
        ps->need_scan = true;
        return 1;
    }
    while (ps->mpos < ps->norder && strcmp(ps->order[ps->mpos]->uidl, p->uidl) < 0) {
        ps->mpos++;
    }
    struct crec c;
    crec_from(ps, p, &c);
    bool listed = false;
    /* A key listed twice matches both; mark_duplicates keeps the first. */
    for (size_t k = ps->mpos; k < ps->norder && strcmp(ps->order[k]->uidl, p->uidl) == 0; k++) {
        ps->order[k]->has_rec = true;
        ps->order[k]->rec = c;
        listed = true;
    }
    if (!listed) {
        xgrow(&ps->vrecs, &ps->vrecs_cap, ps->nvrecs + 1, sizeof(*ps->vrecs));
        struct vrec *v = &ps->vrecs[ps->nvrecs++];
        memset(v, 0, sizeof(*v));
        snprintf(v->uidl, sizeof(v->uidl), "%s", p->uidl);
        v->c = c;
    }
    return 0;
}

/* Matches the keyed listing against the index (pool thread): one sorted
 * merge over the rows, keeping per listed message only what planning
 * needs, and the rows that are not listed (none when nothing changed).
 * Runs once the keys are known: after the listing, or without UIDL after
 * TOP. The scan's identities answer their questions here and are then
 * released. */
static void match_work(struct popsync *ps)
{
    ps->order = xcalloc(ps->nmsgs > 0 ? ps->nmsgs : 1, sizeof(*ps->order));
    bool sorted = true;
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        m->has_rec = false; /* from a live match that was given up */
        if (m->uidl[0] == '\0') {
            continue;
        }
        if (ps->norder > 0 && smsg_ptr_cmp(&ps->order[ps->norder - 1], &m) > 0) {
            sorted = false;
        }
        ps->order[ps->norder++] = m;
    }
    /* Servers that number their UIDLs (Dovecot's default) list them in
     * key order already. */
    if (!sorted) {
        qsort(ps->order, ps->norder, sizeof(*ps->order), smsg_ptr_cmp);
    }
    for (;;) {
        struct idx_txn *txn;
        int r = idx_begin(ps->idx, false, &txn);
        if (r < 0) {
            job_fail(ps, r, "%s", idx_error(ps->idx));
            return;
        }
        r = idx_pop_walk(txn, match_row, ps);
        idx_abort(txn);
        if (r < 0) {
            job_fail(ps, r, "%s", idx_error(ps->idx));
            return;
        }
        if (!ps->need_scan) {
            break;
        }
        /* An intent row (a crash during a download): read the Maildir
         * after all and match again from the start. */
        log_debug("%s: an interrupted download is recorded: reading the Maildir", ps->name);
        ps->need_scan = false;
        ps->scan_skipped = false;
        if (scan_ids(ps) < 0) {
            return;
        }
        for (size_t i = 0; i < ps->norder; i++) {
            ps->order[i]->has_rec = false;
        }
        ps->mpos = 0;
        ps->nvrecs = 0;
    }
    free(ps->ids.buf);
    free(ps->ids.tab);
    memset(&ps->ids, 0, sizeof(ps->ids));
}

static void match_after(struct popsync *ps)
{
    if (ps->job_errmsg != NULL) {
        set_error(ps, local_kind(ps->job_err), "%s", ps->job_errmsg);
    }
    ps->match_done = true;
    advance(ps);
}

/* Whether a DELE policy could delete the message of this record in this
 * run without downloading it (wants_dele decides for good). */
static bool policy_may_dele(const struct popsync *ps, const struct crec *p)
{
    const struct sync_pop *pc = &ps->acct->pop;
    bool delivered = (p->flags & IDX_POP_DELIVERED) != 0 || (p->intent && p->file_here);
    if (!delivered || (p->flags & IDX_POP_DELETED_ON_SERVER)) {
        return false;
    }
    if (!pc->keep_on_server) {
        return true;
    }
    if (pc->delete_after_days >= 0 &&
        p->first_seen + (int64_t)pc->delete_after_days * 86400 <= (int64_t)ps->now) {
        return true;
    }
    return pc->delete_when_deleted_locally &&
           ((p->flags & IDX_POP_DELETED_LOCALLY) || !p->file_here);
}

/* Whether an unlisted record may be the same message as a new UIDL (all
 * UIDLs renumbered): one that says something, or an intent whose file is
 * in the Maildir (stored just before a crash, then renumbered). */
static bool vrec_matchable(const struct vrec *rc)
{
    if (rc->matched) {
        return false;
    }
    return rc->c.flags != 0 || (rc->c.intent && rc->c.file_here);
}

struct size_ix {
    uint64_t size;
    size_t rec;
};

static int size_ix_cmp(const void *a, const void *b)
{
    const struct size_ix *x = a, *y = b;
    if (x->size != y->size) {
        return x->size < y->size ? -1 : 1;
    }
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

/* The first entry of by_size with this size, or nby_size. */
static size_t size_ix_first(const struct popsync *ps, uint64_t size)
{
    size_t lo = 0, hi = ps->nby_size;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ps->by_size[mid].size < size) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* An unlisted record that may be the message of a new UIDL with this size
 * (and, when hh is given, this header hash): its index in vrecs, or -1. */
static int find_vanished(const struct popsync *ps, uint64_t size, const uint8_t *hh)
{
    for (size_t k = size_ix_first(ps, size); k < ps->nby_size && ps->by_size[k].size == size; k++) {
        const struct vrec *rc = &ps->vrecs[ps->by_size[k].rec];
        if ((hh == NULL || memcmp(rc->c.header_hash, hh, 16) == 0) && vrec_matchable(rc)) {
            return (int)ps->by_size[k].rec;
        }
    }
    return -1;
}

/* First pass after the listing and the match: decide which messages need
 * TOP. */
static void plan_tops(struct popsync *ps)
{
    free(ps->by_size);
    ps->by_size = NULL;
    ps->nby_size = 0;
    for (size_t r = 0; r < ps->nvrecs; r++) {
        if (vrec_matchable(&ps->vrecs[r])) {
            if (ps->by_size == NULL) {
                ps->by_size = xcalloc(ps->nvrecs, sizeof(*ps->by_size));
            }
            ps->by_size[ps->nby_size++] = (struct size_ix){ps->vrecs[r].c.size, r};
        }
    }
    if (ps->nby_size > 1) {
        qsort(ps->by_size, ps->nby_size, sizeof(*ps->by_size), size_ix_cmp);
    }
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        if (ps->no_uidl || m->uidl[0] == '\0') {
            m->need_top = true;
            continue;
        }
        if (m->has_rec) {
            const struct crec *p = &m->rec;
            /* A known UIDL with another size: maybe a reused UIDL. */
            if (!p->intent && m->has_size && p->size != 0 && p->size != m->size) {
                m->need_top = true;
            }
            /* A UIDL reused with the same size is only caught by its
             * headers: a message is never deleted on the strength of its
             * UIDL alone when the record says what its headers were. */
            if (!hash_is_zero(p->header_hash) && policy_may_dele(ps, p)) {
                m->need_top = true;
                m->verify = true;
            }
            continue;
        }
        if (ps->acct->max_size > 0 && m->has_size && m->size > ps->acct->max_size) {
            continue;
        }
        if (ps->acct->pop.has_since) {
            m->need_top = true;
        } else if (ps->nby_size > 0) {
            /* Same size as a record that vanished from the listing: maybe
             * the same message under a new UIDL. */
            if (find_vanished(ps, m->size, NULL) >= 0) {
                m->need_top = true;
            }
        }
    }
}

/* No UIDL: the key is the header hash. The index is matched against the
 * keys afterwards. False (and the run fails) when no message has one. */
static bool key_from_hash(struct popsync *ps)
{
    bool any = false;
    for (size_t i = 0; i < ps->nmsgs && !any; i++) {
        any = msg_i(ps, i)->hh_valid;
    }
    if (ps->nmsgs > 0 && !any) {
        set_error(ps, SYNC_PERMANENT,
                  "%s: the server has neither UIDL nor TOP; there is no way to tell which "
                  "messages were downloaded already, so none is",
                  ps->name);
        return false;
    }
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        if (m->uidl[0] != '\0') {
            continue;
        }
        if (!m->hh_valid) {
            continue; /* TOP failed: cannot identify it, leave it alone */
        }
        /* Identical headers give the same key: mark_duplicates keeps the
         * first. */
        char *k = strpool_alloc(&ps->strs, 34);
        k[0] = 'H';
        hex16(m->hh, k + 1);
        m->uidl = k;
    }
    return true;
}

/* A UIDL listed twice (a server bug, or identical headers without UIDL)
 * cannot key two messages: only the first is handled, the others are
 * reported as failed. ps->order has them next to each other. */
static void mark_duplicates(struct popsync *ps)
{
    const struct smsg *first = NULL;
    for (size_t i = 0; i < ps->norder; i++) {
        struct smsg *m = ps->order[i];
        if (first != NULL && strcmp(m->uidl, first->uidl) == 0) {
            log_warnx("%s: message %u has the same UIDL as message %u (%s); skipping it", ps->name,
                      m->msgno, first->msgno, m->uidl);
            m->uidl = "";
            m->has_rec = false;
            continue;
        }
        first = m;
    }
}

/* DESIGN.md invariant 6: a Maildir that vanished (a moved disk, a changed
 * path, which md_folder_open then recreates empty) must not read as the
 * user deleting everything, least of all with delete_when_deleted_locally.
 * More local deletions at once than max_delete_ratio of the delivered
 * messages stops the run instead. */
static bool local_deletions_plausible(struct popsync *ps)
{
    unsigned present = 0, missing = 0;
    for (size_t i = 0; i < ps->nmsgs; i++) {
        const struct smsg *m = msg_i(ps, i);
        if (!m->has_rec || m->uidl[0] == '\0') {
            continue;
        }
        const struct crec *p = &m->rec;
        if (!(p->flags & IDX_POP_DELIVERED) || (p->flags & IDX_POP_DELETED_LOCALLY)) {
            continue;
        }
        if (p->file_here) {
            present++;
        } else {
            missing++;
        }
    }
    unsigned total = present + missing;
    if (!ps->opts.force && total >= 4 && (double)missing > ps->acct->max_delete_ratio * total) {
        set_error(ps, SYNC_PERMANENT,
                  "%s: %u of the %u downloaded messages are gone from %s; refusing to treat that "
                  "many as deleted locally (more than %.0f%%). If they were deleted on purpose, "
                  "sync this account once with --force",
                  ps->name, missing, total, md_folder_path(ps->folders[0][0]),
                  ps->acct->max_delete_ratio * 100);
        return false;
    }
    return true;
}

/* Second pass: decide per message. */
static void plan(struct popsync *ps)
{
    const struct sync_pop *pc = &ps->acct->pop;
    ps->res.listed = (unsigned)ps->nmsgs;
    for (size_t i = 0; i < ps->nmsgs && !ps->unkeyed; i++) {
        ps->unkeyed = msg_i(ps, i)->uidl[0] == '\0';
    }
    if (ps->unkeyed) {
        log_debug("%s: a listed message has no key in this run: forgetting no record", ps->name);
    }
    mark_duplicates(ps);
    if (!local_deletions_plausible(ps)) {
        return;
    }
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        if (m->uidl[0] == '\0') {
            ps->res.errors++;
            continue;
        }
        /* Skipped by a "since" that is no longer configured: the user now
         * wants it, so it counts as new. */
        if (m->has_rec && !pc->has_since &&
            (m->rec.flags & (IDX_POP_SKIPPED | IDX_POP_DELIVERED)) == IDX_POP_SKIPPED) {
            m->has_rec = false;
        }
        if (m->has_rec && (m->rec.flags & IDX_POP_DELETED_ON_SERVER)) {
            /* Deleted on the server by an earlier run (QUIT said +OK), yet
             * listed again: the server reused the UIDL for a new message. */
            log_info("%s: UIDL %s was deleted on the server and is listed again: downloading the "
                     "new message",
                     ps->name, m->uidl);
            m->download = true;
            m->replace = true;
            continue;
        }
        if (m->has_rec) {
            const struct crec *p = &m->rec;
            bool hash_known =
                m->need_top && m->hh_valid && !ps->no_uidl && !hash_is_zero(p->header_hash);
            if (hash_known && memcmp(p->header_hash, m->hh, 16) != 0) {
                /* The server reused the UIDL for a different message. An
                 * intent's file, if any, is the old message: it stays. */
                log_info("%s: UIDL %s now names a different message (size %llu, was %llu): "
                         "downloading it",
                         ps->name, m->uidl, (unsigned long long)m->size,
                         (unsigned long long)p->size);
                m->download = true;
                m->replace = true;
                continue;
            }
            m->verified = hash_known;
            if (p->intent) {
                if (p->file_here) {
                    /* Delivered before a crash, not yet recorded: adopt. */
                    add_put(ps, PUT_UPDATE, m, 0, IDX_POP_DELIVERED, false);
                    m->stored = true;
                    m->first_seen = p->first_seen;
                    ps->res.adopted++;
                    log_debug("%s: message %s was stored before an interruption", ps->name,
                              m->uidl);
                    continue;
                }
                m->download = true;
                continue;
            }
            if (m->need_top && m->hh_valid && !ps->no_uidl) {
                add_put(ps, PUT_UPDATE, m, 0, 0, true);
            }
            ps->res.known++;
            if (p->flags & IDX_POP_DELIVERED) {
                m->stored = true;
                m->first_seen = p->first_seen;
                m->deleted_locally = (p->flags & IDX_POP_DELETED_LOCALLY) != 0;
                if (!m->deleted_locally && !p->file_here) {
                    add_put(ps, PUT_UPDATE, m, 0, IDX_POP_DELETED_LOCALLY, false);
                    m->deleted_locally = true;
                    ps->res.deleted_locally++;
                    log_debug("%s: message %s was deleted locally", ps->name, m->uidl);
                }
            }
            continue;
        }
        /* New to us. */
        if (ps->acct->max_size > 0 && m->has_size && m->size > ps->acct->max_size) {
            ps->res.skipped_size++;
            log_info("%s: skipping message %u (%s): %llu bytes is over max_size %llu", ps->name,
                     m->msgno, m->uidl, (unsigned long long)m->size,
                     (unsigned long long)ps->acct->max_size);
            continue;
        }
        /* The same message under a new UIDL (all UIDLs renumbered)? */
        if (m->hh_valid && !ps->no_uidl) {
            int found = find_vanished(ps, m->size, m->hh);
            if (found >= 0) {
                struct vrec *rc = &ps->vrecs[found];
                uint32_t flags = rc->c.flags;
                if (rc->c.intent) {
                    /* Its file is here (vrec_matchable): adopt it. */
                    flags |= IDX_POP_DELIVERED;
                    ps->res.adopted++;
                } else {
                    ps->res.known++;
                }
                add_put(ps, PUT_RENAME, m, (size_t)found, flags & ~rc->c.flags, false);
                /* The old key is forgotten as no longer listed. */
                rc->matched = true;
                m->stored = (flags & IDX_POP_DELIVERED) != 0;
                m->verified = true; /* by size and header hash */
                m->first_seen = rc->c.first_seen;
                m->deleted_locally = (flags & IDX_POP_DELETED_LOCALLY) != 0;
                log_info("%s: message %s is %s under a new UIDL", ps->name, rc->uidl, m->uidl);
                continue;
            }
        }
        if (pc->has_since && m->date_ok && m->date < pc->since) {
            add_put(ps, PUT_SKIPPED, m, 0, IDX_POP_SKIPPED, false);
            ps->res.skipped_since++;
            continue;
        }
        m->download = true;
    }
    for (size_t i = 0; i < ps->nmsgs; i++) {
        if (msg_i(ps, i)->download) {
            xgrow(&ps->todo, &ps->todo_cap, ps->ntodo + 1, sizeof(*ps->todo));
            ps->todo[ps->ntodo++] = msg_i(ps, i);
        }
    }
    ps->listing_complete = true;
    if (ps->res.deleted_locally > 0) {
        log_info("%s: %u message%s deleted locally will not be downloaded again%s", ps->name,
                 ps->res.deleted_locally, ps->res.deleted_locally == 1 ? "" : "s",
                 ps->acct->pop.delete_when_deleted_locally ? " and are deleted on the server" : "");
    }
    if (ps->res.adopted > 0) {
        log_info("%s: %u message%s stored before an interruption %s recorded now", ps->name,
                 ps->res.adopted, ps->res.adopted == 1 ? "" : "s",
                 ps->res.adopted == 1 ? "is" : "are");
    }
}

/* ---- downloads ------------------------------------------------------------- */

/* Downloading and committing overlap: while a threadpool job commits one
 * batch (fsync, rename, index), the loop goes on receiving the next one.
 * Each batch's writers belong to one of two handles on the same folder,
 * so that no struct md_folder is ever used by two threads at once; a batch
 * is handed over only between two messages (no writer open outside it). */

static void commit_batch(struct popsync *ps);
static void issue_retrs(struct popsync *ps);

static void dl_free(struct dl *d)
{
    if (d->m->dl == d) {
        d->m->dl = NULL;
    }
    if (d->ps->streaming == d) {
        d->ps->streaming = NULL;
    }
    if (d->w != NULL) {
        if (d->ps->dq != NULL) {
            /* After its queued writes, on the thread pool. */
            diskq_abort(d->ps->dq, d->w);
        } else {
            md_writer_abort(d->w); /* the run's end: no job is left */
        }
        d->w = NULL;
    }
    msgfacts_rawhash_free(&d->hh);
    free(d);
}

static int dl_open(struct popsync *ps, struct dl *d)
{
    d->shard = ps->next_shard;
    ps->next_shard = (ps->next_shard + 1) % NSHARD;
    struct md_folder *f = ps->folders[ps->wf][d->shard];
    /* The file is created by the thread pool's first write to it; a
     * failure to write is reported by the batch's commit. */
    md_writer_new(f, false, &d->w);
    ps->streaming = d;
    return 0;
}

/* Pauses or resumes the connection for the two reasons a download waits:
 * a batch being committed while the next is full, or too many bytes
 * waiting for the thread pool's writes. */
static void flow(struct popsync *ps)
{
    if (ps->pop == NULL) {
        return;
    }
    bool want = ps->paused || ps->disk_paused;
    if (want != ps->pop_paused) {
        ps->pop_paused = want;
        if (want) {
            pop3_pause(ps->pop);
        } else {
            pop3_resume(ps->pop);
        }
    }
}

/* Reading resumes once the writes' backlog is below DISK_BACKLOG. Checked
 * after each job of the queue and after a commit job: its diskq_run may
 * take the queue from under the last queue job, whose on_drained then saw
 * the bytes still being written, with no job left to call back. */
static void disk_flow(struct popsync *ps)
{
    if (ps->disk_paused && diskq_bytes(ps->dq) < DISK_BACKLOG) {
        ps->disk_paused = false;
        flow(ps);
    }
}

/* A job of the write queue ended. */
static void on_drained(void *arg)
{
    struct popsync *ps = arg;
    disk_flow(ps);
    advance(ps);
}

static void on_retr_data(struct pop3 *p, const char *data, size_t len, void *arg)
{
    struct dl *d = arg;
    struct popsync *ps = d->ps;
    if (d->err < 0) {
        return;
    }
    if (d->w == NULL && dl_open(ps, d) < 0) {
        return;
    }
    msgfacts_rawhash_feed(&d->hh, data, len);
    d->bytes += len;
    diskq_write(ps->dq, d->w, data, len);
    if (!ps->disk_paused && diskq_bytes(ps->dq) >= DISK_BACKLOG) {
        ps->disk_paused = true;
        flow(ps);
    }
}

static void batch_add(struct batch *b, struct dl *d)
{
    xgrow(&b->v, &b->cap, b->n + 1, sizeof(*b->v));
    if (b->n == 0) {
        b->started = now_ms();
    }
    b->v[b->n++] = d;
    b->bytes += d->bytes; /* stored as received (no line-end conversion) */
    d->in_batch = true;
}

static bool batch_full(const struct batch *b)
{
    return b->n >= BATCH_MAX_MSGS || b->bytes >= BATCH_MAX_BYTES;
}

static void on_retr_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct dl *d = arg;
    struct popsync *ps = d->ps;
    ps->retr_inflight--;
    if (st->err < 0) {
        dl_free(d);
        return; /* on_pop_error follows and moves the run on */
    }
    if (d->err < 0 || ps->cancelled) {
        /* A local failure (set_error was called): wind down. */
        dl_free(d);
        advance(ps);
        return;
    }
    if (!st->ok) {
        log_warnx("%s: RETR %u (%s) failed: %s", ps->name, d->m->msgno, d->m->uidl, st->text);
        ps->res.errors++;
        dl_free(d);
        advance(ps);
        return;
    }
    /* An empty message is still a message. */
    if (d->w == NULL && dl_open(ps, d) < 0) {
        dl_free(d);
        advance(ps);
        return;
    }
    ps->streaming = NULL;
    msgfacts_rawhash_final(&d->hh);
    snprintf(d->lid, sizeof(d->lid), "%s", md_writer_id(d->w));
    /* Its last bytes are written by the next queue job or the batch's
     * commit job (commit_intents_work). */
    batch_add(&ps->fill, d);
    advance(ps);
}

static void issue_retrs(struct popsync *ps)
{
    unsigned window = (pop3_caps(ps->pop) & POP3_CAP_PIPELINING) ? RETR_WINDOW : 1;
    while (ps->todo_next < ps->ntodo && ps->retr_inflight < window && !ps->failed &&
           !ps->cancelled) {
        struct smsg *m = ps->todo[ps->todo_next++];
        struct dl *d = xcalloc(1, sizeof(*d));
        d->ps = ps;
        d->m = m;
        msgfacts_rawhash_init(&d->hh);
        if (pop3_retr(ps->pop, m->msgno, on_retr_data, on_retr_done, d) < 0) {
            dl_free(d);
            break;
        }
        m->dl = d;
        ps->retr_inflight++;
    }
}

static int put_rows(struct idx_txn *txn, struct popsync *ps, bool delivered)
{
    for (size_t i = 0; i < ps->commit.n; i++) {
        struct dl *d = ps->commit.v[i];
        if (delivered && !d->committed) {
            continue;
        }
        struct idx_pop p = {0};
        snprintf(p.uidl, sizeof(p.uidl), "%s", d->m->uidl);
        snprintf(p.lid, sizeof(p.lid), "%s", d->lid);
        p.first_seen = ps->now;
        p.size = d->m->size;
        memcpy(p.header_hash, d->hh.out, 16);
        /* Without DELIVERED the row is an intent: see idx_pop_is_intent. */
        p.flags = delivered ? IDX_POP_DELIVERED : 0;
        int r = idx_pop_put(txn, &p);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static int put_intents(struct idx_txn *txn, void *arg)
{
    return put_rows(txn, arg, false);
}

static int put_delivered(struct idx_txn *txn, void *arg)
{
    return put_rows(txn, arg, true);
}

/* A batch is committed in three steps, each on the threadpool: the intent
 * rows and the files' bytes made durable; the files renamed into new/
 * (fsynced one by one only when the batch is small), NSHARD jobs in parallel, each
 * with its own folder handle; then new/ is fsynced and the rows say
 * delivered. */

static void commit_intents_work(struct popsync *ps)
{
    /* Every byte queued for the batch's writers is written first. */
    diskq_run(ps->dq);
    int r = idx_write(ps->idx, put_intents, ps);
    if (r < 0) {
        job_fail(ps, r, "%s", idx_error(ps->idx));
        return;
    }
    /* The bytes of the whole batch are made durable at once (one syncfs),
     * so the shards only rename. */
    struct md_writer **ws = xcalloc(ps->commit.n, sizeof(*ws));
    for (size_t i = 0; i < ps->commit.n; i++) {
        ws[i] = ps->commit.v[i]->w;
    }
    struct md_folder *f = ps->folders[ps->commit_set][0];
    r = md_writers_sync(f, ws, ps->commit.n);
    free(ws);
    if (r < 0) {
        job_fail(ps, r, "%s", md_folder_error(f));
    }
}

static void shard_work(uv_work_t *w)
{
    struct shard_job *sj = w->data;
    struct popsync *ps = sj->ps;
    struct md_folder *f = ps->folders[ps->commit_set][sj->k];
    for (size_t i = 0; i < ps->commit.n; i++) {
        struct dl *d = ps->commit.v[i];
        if (d->shard != sj->k) {
            continue;
        }
        struct md_msg msg = {0};
        int r = md_writer_commit(d->w, false, 0, 0, 0, true, &msg);
        d->w = NULL; /* freed by commit either way */
        if (r < 0) {
            if (sj->errmsg == NULL) {
                sj->err = r;
                sj->errmsg = xstrdup(md_folder_error(f));
            }
            continue;
        }
        if (strcmp(msg.id, d->lid) != 0) {
            /* md_writer_id promised the identity; record what is there. */
            snprintf(d->lid, sizeof(d->lid), "%s", msg.id);
        }
        md_msg_clear(&msg);
        d->committed = true;
    }
}

static void commit_rows_work(struct popsync *ps)
{
    bool any = false;
    for (size_t i = 0; i < ps->commit.n; i++) {
        any = any || ps->commit.v[i]->committed;
    }
    if (!any) {
        return;
    }
    /* Every handle names the same directories. */
    struct md_folder *f = ps->folders[ps->commit_set][0];
    int r = md_folder_sync(f);
    if (r < 0) {
        /* Not durable: do not record; the intent rows make the next run
         * check for the files. */
        job_fail(ps, r, "%s", md_folder_error(f));
        for (size_t i = 0; i < ps->commit.n; i++) {
            ps->commit.v[i]->committed = false;
        }
        return;
    }
    r = idx_write(ps->idx, put_delivered, ps);
    if (r < 0) {
        job_fail(ps, r, "%s", idx_error(ps->idx));
    }
}

static void commit_after(struct popsync *ps);

static void shard_after(uv_work_t *w, int status)
{
    struct shard_job *sj = w->data;
    struct popsync *ps = sj->ps;
    if (sj->errmsg != NULL && ps->commit_errmsg == NULL) {
        ps->commit_err = sj->err;
        ps->commit_errmsg = sj->errmsg;
        sj->errmsg = NULL;
    }
    free(sj->errmsg);
    sj->errmsg = NULL;
    if (--ps->shards_pending > 0) {
        return;
    }
    ps->job_running = false;
    run_job(ps, commit_rows_work, commit_after);
}

static void commit_intents_after(struct popsync *ps)
{
    /* Its diskq_run wrote what was queued when it started. */
    disk_flow(ps);
    if (ps->job_errmsg != NULL) {
        /* No intent, no rename: commit_after aborts the writers. */
        commit_after(ps);
        return;
    }
    ps->job_running = true;
    ps->shards_pending = NSHARD;
    for (int k = 0; k < NSHARD; k++) {
        struct shard_job *sj = &ps->shards[k];
        sj->ps = ps;
        sj->k = k;
        sj->err = 0;
        sj->errmsg = NULL;
        sj->work.data = sj;
        if (uv_queue_work(ps->loop, &sj->work, shard_work, shard_after) < 0) {
            shard_work(&sj->work);
            shard_after(&sj->work, 0);
        }
    }
}

static void commit_after(struct popsync *ps)
{
    ps->committing = false;
    if (ps->commit_errmsg != NULL) {
        set_error(ps, local_kind(ps->commit_err), "%s", ps->commit_errmsg);
        free(ps->commit_errmsg);
        ps->commit_errmsg = NULL;
    }
    if (ps->job_errmsg != NULL) {
        set_error(ps, local_kind(ps->job_err), "%s", ps->job_errmsg);
    }
    for (size_t i = 0; i < ps->commit.n; i++) {
        struct dl *d = ps->commit.v[i];
        if (d->committed) {
            d->m->stored = true;
            d->m->fetched = true;
            d->m->first_seen = ps->now;
            ps->res.downloaded++;
            ps->res.bytes += d->bytes;
        }
        ps->dl_done++;
        dl_free(d);
    }
    ps->commit.n = 0;
    ps->commit.bytes = 0;
    if (ps->opts.progress != NULL) {
        ps->opts.progress(ps->dl_done, (unsigned)ps->ntodo, ps->res.bytes, ps->opts.progress_arg);
    }
    if (ps->paused) {
        ps->paused = false;
        flow(ps);
    }
    advance(ps);
}

/* Hands the filled batch to a job and switches the loop to the other
 * folder handle. Only between messages (ps->streaming is NULL). */
static void commit_batch(struct popsync *ps)
{
    struct batch tmp = ps->commit;
    ps->commit = ps->fill;
    ps->fill = tmp;
    ps->fill.n = 0;
    ps->fill.bytes = 0;
    ps->commit_set = ps->wf;
    ps->wf ^= 1;
    ps->committing = true;
    run_job(ps, commit_intents_work, commit_intents_after);
}

/* ---- deletion and QUIT ------------------------------------------------------- */

static void on_dele(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct smsg *m = arg;
    struct popsync *ps = m->ps;
    if (st->err >= 0 && st->ok) {
        m->dele = true;
    } else if (st->err >= 0) {
        log_warnx("%s: DELE %u failed: %s", ps->name, m->msgno, st->text);
        ps->res.errors++;
    }
    ps->deles_pending--;
    if (st->err >= 0) {
        advance(ps);
    }
}

static bool policy_wants_dele(struct popsync *ps, const struct smsg *m)
{
    const struct sync_pop *pc = &ps->acct->pop;
    if (!m->stored) {
        return false;
    }
    if (!pc->keep_on_server) {
        return true;
    }
    if (pc->delete_after_days >= 0 &&
        m->first_seen + (int64_t)pc->delete_after_days * 86400 <= (int64_t)ps->now) {
        return true;
    }
    return m->deleted_locally && pc->delete_when_deleted_locally;
}

static bool wants_dele(struct popsync *ps, const struct smsg *m)
{
    if (!policy_wants_dele(ps, m)) {
        return false;
    }
    if (!m->fetched && m->verify && !m->verified) {
        /* TOP failed: it cannot be told from a new message under a reused
         * UIDL, and deleting a message that was never downloaded loses it. */
        log_warnx("%s: not deleting message %u (%s): its headers could not be checked", ps->name,
                  m->msgno, m->uidl);
        return false;
    }
    return true;
}

static void send_deles(struct popsync *ps)
{
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        if (!wants_dele(ps, m)) {
            continue;
        }
        if (ps->opts.dry_run) {
            ps->res.deleted_on_server++;
            continue;
        }
        if (pop3_dele(ps->pop, m->msgno, on_dele, m) < 0) {
            continue;
        }
        ps->deles_pending++;
    }
}

static void on_quit(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct popsync *ps = arg;
    if (st->err >= 0 && st->ok) {
        ps->quit_ok = true;
    } else if (st->err >= 0) {
        /* RFC 1939 section 6: -ERR to QUIT means some deletions failed;
         * none is marked as done. */
        set_error(ps, SYNC_TRANSIENT, "%s: QUIT failed, deletions not committed: %s", ps->name,
                  st->text);
    }
    if (st->err >= 0) {
        pop3_free(ps->pop);
        ps->pop = NULL;
        advance(ps);
    }
}

/* ---- final transaction --------------------------------------------------- */

/* Writes one change: a new row from the message, or the row it starts
 * from read again and changed (the index is ours alone while the account
 * lock is held, so the row is the one planning saw). */
static int apply_put(struct idx_txn *txn, struct popsync *ps, const struct put *pt)
{
    const struct smsg *m = pt->m;
    struct idx_pop p;
    int r;
    if (pt->kind == PUT_SKIPPED) {
        memset(&p, 0, sizeof(p));
        p.first_seen = ps->now;
        p.size = m->size;
        if (m->hh_valid) {
            memcpy(p.header_hash, m->hh, 16);
        }
    } else {
        r = idx_pop_get(txn, pt->kind == PUT_RENAME ? ps->vrecs[pt->vrec].uidl : m->uidl, &p);
        if (r < 0) {
            return r;
        }
        if (pt->set_size) {
            p.size = m->size;
        }
    }
    snprintf(p.uidl, sizeof(p.uidl), "%s", m->uidl);
    p.flags |= pt->or_flags;
    return idx_pop_put(txn, &p);
}

static int put_puts(struct idx_txn *txn, void *arg)
{
    struct popsync *ps = arg;
    for (size_t i = 0; i < ps->nputs; i++) {
        int r = apply_put(txn, ps, &ps->puts[i]);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static int final_fn(struct idx_txn *txn, void *arg)
{
    struct popsync *ps = arg;
    /* The changes first: a renamed row is read under its old key, which
     * is then forgotten with the other unlisted ones. No change writes an
     * unlisted key. */
    int r = put_puts(txn, ps);
    if (r < 0) {
        return r;
    }
    if (ps->listing_complete && !ps->unkeyed) {
        for (size_t i = 0; i < ps->nvrecs; i++) {
            r = idx_pop_delete(txn, ps->vrecs[i].uidl);
            if (r < 0 && r != -ENOENT) {
                return r;
            }
        }
        /* Every row is now either listed and checked against the scan (its
         * local deletion recorded above) or forgotten. */
        if (ps->stamp_record) {
            r = idx_meta_put(txn, STAMP_KEY, ps->stamp, strlen(ps->stamp));
            if (r < 0) {
                return r;
            }
        }
    }
    if (ps->quit_ok) {
        for (size_t i = 0; i < ps->nmsgs; i++) {
            struct smsg *m = msg_i(ps, i);
            if (!m->dele) {
                continue;
            }
            struct idx_pop p;
            if (idx_pop_get(txn, m->uidl, &p) == 0) {
                p.flags |= IDX_POP_DELETED_ON_SERVER;
                r = idx_pop_put(txn, &p);
                if (r < 0) {
                    return r;
                }
            }
        }
    }
    return 0;
}

/* True when the final transaction would change something: a run that
 * found nothing new then costs no fsync at all. */
static bool final_needed(const struct popsync *ps)
{
    if (ps->nputs > 0) {
        return true;
    }
    if (ps->listing_complete && !ps->unkeyed && (ps->nvrecs > 0 || ps->stamp_record)) {
        return true;
    }
    for (size_t i = 0; ps->quit_ok && i < ps->nmsgs; i++) {
        if (msg_i(ps, i)->dele) {
            return true;
        }
    }
    return false;
}

/* Adopted files are made durable (new/ fsynced) before the index says
 * they are delivered; then fn writes the rows. False after a failure. */
static bool write_after_adoptions(struct popsync *ps, int (*fn)(struct idx_txn *, void *))
{
    if (ps->res.adopted > 0) {
        int r = md_folder_sync(ps->folders[0][0]);
        if (r < 0) {
            job_fail(ps, r, "%s", md_folder_error(ps->folders[0][0]));
            return false;
        }
    }
    int r = idx_write(ps->idx, fn, ps);
    if (r < 0) {
        job_fail(ps, r, "%s", idx_error(ps->idx));
        return false;
    }
    return true;
}

static void final_work(struct popsync *ps)
{
    if (!final_needed(ps)) {
        return;
    }
    write_after_adoptions(ps, final_fn);
}

/* Before the first DELE: the rows decided so far, adoptions above all,
 * are made durable (new/ fsynced, then the index), as commit_rows_work does
 * for downloads. A message adopted after a crash is otherwise deleted on
 * the server while its DELIVERED row exists only in memory, and a power
 * loss after QUIT would leave only the intent row, and perhaps no file. */
static void early_work(struct popsync *ps)
{
    if (ps->nputs == 0) {
        return;
    }
    if (!write_after_adoptions(ps, put_puts)) {
        return;
    }
    log_debug("%s: %u adopted message%s recorded before deleting on the server", ps->name,
              ps->res.adopted, ps->res.adopted == 1 ? "" : "s");
    /* Durable now; the final transaction need not write them again. */
    ps->nputs = 0;
}

static void early_after(struct popsync *ps)
{
    if (ps->job_errmsg != NULL) {
        set_error(ps, local_kind(ps->job_err), "%s", ps->job_errmsg);
    }
    advance(ps);
}

static void final_after(struct popsync *ps)
{
    if (ps->job_errmsg != NULL) {
        set_error(ps, local_kind(ps->job_err), "%s", ps->job_errmsg);
    }
    if (ps->quit_ok) {
        for (size_t i = 0; i < ps->nmsgs; i++) {
            if (msg_i(ps, i)->dele) {
                ps->res.deleted_on_server++;
            }
        }
    }
    set_phase(ps, PS_DONE);
    finish(ps);
}

/* ---- the driver ------------------------------------------------------------ */

/* After pop3_free no callback comes: release what the in-flight commands
 * owned. Downloads in the batch are complete and stay. */
static void drop_inflight(struct popsync *ps)
{
    for (size_t i = 0; i < ps->nmsgs; i++) {
        struct smsg *m = msg_i(ps, i);
        if (m->top != NULL) {
            msgfacts_rawhash_free(&m->top->hh);
            sbuf_free(&m->top->hdr);
            free(m->top);
            m->top = NULL;
        }
        if (m->dl != NULL && !m->dl->in_batch) {
            dl_free(m->dl);
        }
    }
    ps->streaming = NULL;
    ps->retr_inflight = 0;
    ps->tops_pending = 0;
    ps->deles_pending = 0;
}

/* Moves the run forward from wherever it is; called after every event. */
static void advance(struct popsync *ps)
{
    if (ps->job_running || ps->phase == PS_DONE || ps->phase == PS_FINISH) {
        return;
    }
    bool stop = ps->failed || ps->cancelled;
    if (stop) {
        /* Wind down: commit what is complete, drop the connection (no
         * QUIT, so the server deletes nothing), final bookkeeping. */
        if (ps->pop != NULL && ps->phase != PS_QUIT) {
            pop3_free(ps->pop);
            ps->pop = NULL;
            drop_inflight(ps);
        }
        live_end(ps, false);
        if (ps->secret_req != NULL) {
            secret_cancel(ps->secret_req);
            ps->secret_req = NULL;
        }
        if (ps->pop != NULL) {
            return; /* waiting for QUIT's answer */
        }
        if (ps->fill.n > 0 && !ps->opts.dry_run) {
            commit_batch(ps);
            return;
        }
        if (!ps->prep_done) {
            return; /* the prepare job is still running */
        }
        if (diskq_busy(ps->dq)) {
            return; /* the writes' job is still running: on_drained comes */
        }
        if (ps->idx != NULL && !ps->opts.dry_run &&
            (ps->listing_complete || ps->nputs > 0 || ps->quit_ok)) {
            set_phase(ps, PS_FINISH);
            run_job(ps, final_work, final_after);
            return;
        }
        set_phase(ps, PS_DONE);
        finish(ps);
        return;
    }
    switch (ps->phase) {
    case PS_START:
    case PS_CONNECT:
        return;
    case PS_LIST:
        if (!ps->uidl_done || !ps->list_done || !ps->prep_done) {
            return;
        }
        if (!ps->no_uidl && !ps->match_done) {
            run_job(ps, match_work, match_after);
            return;
        }
        plan_tops(ps);
        set_phase(ps, PS_TOP);
        for (size_t i = 0; i < ps->nmsgs; i++) {
            if (msg_i(ps, i)->need_top) {
                send_top(ps, msg_i(ps, i));
            }
        }
        /* fall through */
    case PS_TOP:
        if (ps->tops_pending > 0) {
            return;
        }
        if (!ps->match_done) {
            /* Without UIDL the keys are known only now. */
            if (key_from_hash(ps)) {
                run_job(ps, match_work, match_after);
            } else {
                advance(ps); /* to the stop path */
            }
            return;
        }
        plan(ps);
        if (ps->failed) {
            advance(ps); /* to the stop path */
            return;
        }
        set_phase(ps, PS_DOWNLOAD);
        if (ps->opts.dry_run) {
            ps->res.downloaded = (unsigned)ps->ntodo;
            ps->todo_next = ps->ntodo;
        }
        /* fall through */
    case PS_DOWNLOAD:
        if (ps->fill.n > 0 && !ps->committing && ps->streaming == NULL &&
            (batch_full(&ps->fill) || now_ms() - ps->fill.started >= BATCH_MAX_MS ||
             (ps->todo_next >= ps->ntodo && ps->retr_inflight == 0))) {
            commit_batch(ps);
        }
        if (ps->committing && batch_full(&ps->fill)) {
            /* Bound memory and open files: wait for the commit. */
            if (!ps->paused && ps->pop != NULL) {
                ps->paused = true;
                flow(ps);
            }
            return;
        }
        issue_retrs(ps);
        if (ps->todo_next < ps->ntodo || ps->retr_inflight > 0 || ps->fill.n > 0 ||
            ps->committing || diskq_busy(ps->dq)) {
            return;
        }
        if (!ps->early_commit_done && !ps->opts.dry_run && ps->res.adopted > 0) {
            ps->early_commit_done = true;
            run_job(ps, early_work, early_after);
            return;
        }
        set_phase(ps, PS_DELETE);
        send_deles(ps);
        /* fall through */
    case PS_DELETE:
        if (ps->deles_pending > 0) {
            return;
        }
        if (ps->pop == NULL || pop3_quit(ps->pop, on_quit, ps) < 0) {
            /* No QUIT, so nothing is deleted. The phase stays before
             * PS_QUIT, so that the stop path drops the connection instead
             * of waiting for an answer that never comes. */
            set_error(ps, SYNC_TRANSIENT, "%s: cannot send QUIT", ps->name);
            advance(ps);
            return;
        }
        set_phase(ps, PS_QUIT);
        return;
    case PS_QUIT:
        if (ps->pop != NULL) {
            return;
        }
        if (ps->opts.dry_run) {
            set_phase(ps, PS_DONE);
            finish(ps);
            return;
        }
        set_phase(ps, PS_FINISH);
        run_job(ps, final_work, final_after);
        return;
    case PS_FINISH:
    case PS_DONE:
        return;
    }
}

static void free_ps(struct popsync *ps)
{
    /* No job of it is in flight (advance waits for it before the end):
     * queued writes are dropped, and the writers below aborted here. */
    diskq_free(ps->dq);
    ps->dq = NULL;
    struct batch *bs[2] = {&ps->fill, &ps->commit};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < bs[k]->n; i++) {
            dl_free(bs[k]->v[i]);
        }
        bs[k]->n = 0;
        free(bs[k]->v);
    }
    drop_inflight(ps);
    live_end(ps, false);
    free(ps->ids.buf);
    free(ps->ids.tab);
    for (int set = 0; set < 2; set++) {
        for (int k = 0; k < NSHARD; k++) {
            if (ps->folders[set][k] != NULL) {
                md_folder_close(ps->folders[set][k]);
            }
        }
    }
    free(ps->commit_errmsg);
    if (ps->idx != NULL) {
        idx_close(ps->idx);
    }
    free(ps->order);
    free(ps->vrecs);
    free(ps->by_size);
    for (size_t k = 0; k * MSG_CHUNK < ps->nmsgs; k++) {
        free(ps->mchunks[k]);
    }
    free(ps->mchunks);
    strpool_free(&ps->strs);
    free(ps->byno);
    free(ps->todo);
    free(ps->puts);
    free(ps->job_errmsg);
    free(ps->error);
    free(ps->name);
    free(ps);
}

static void on_finish_timer_closed(uv_handle_t *h)
{
    struct popsync *ps = h->data;
    free(h);
    ps->res.kind = ps->failed ? ps->kind : SYNC_OK;
    ps->res.error = ps->failed ? ps->error : NULL;
    ps->res.account = ps->acct->name;
    ps->res.dry_run = ps->opts.dry_run;
    /* Release the account lock before telling the owner, who may start the
     * next run at once. */
    if (ps->idx != NULL) {
        idx_close(ps->idx);
        ps->idx = NULL;
    }
    ps->done(&ps->res, ps->done_arg);
    free_ps(ps);
}

/* Calls the owner from a fresh loop iteration (never from inside
 * popsync_start or a caller's call), then frees the run. */
static void finish(struct popsync *ps)
{
    if (ps->pop != NULL) {
        pop3_free(ps->pop);
        ps->pop = NULL;
    }
    if (ps->yield != NULL) {
        uv_close((uv_handle_t *)ps->yield, on_yield_closed);
        ps->yield = NULL;
    }
    uv_idle_t *h = xcalloc(1, sizeof(*h));
    h->data = ps;
    uv_idle_init(ps->loop, h);
    uv_close((uv_handle_t *)h, on_finish_timer_closed);
}

int popsync_start(uv_loop_t *loop, const struct sync_account *acct, const struct popsync_opts *opts,
                  popsync_done_cb done, void *arg, struct popsync **ps_r)
{
    if (acct->protocol != SYNC_PROTO_POP3) {
        return -EINVAL;
    }
    struct popsync *ps = xcalloc(1, sizeof(*ps));
    ps->loop = loop;
    ps->dq = diskq_new(loop, on_drained, ps);
    ps->acct = acct;
    if (opts != NULL) {
        ps->opts = *opts;
    }
    ps->done = done;
    ps->done_arg = arg;
    ps->name = xasprintf("pop3 %s", acct->name);
    ps->now = ps->opts.now != 0 ? ps->opts.now : time(NULL);
    ps->max_listing = ps->opts.max_listing != 0 ? ps->opts.max_listing : POPSYNC_MAX_LISTING;
    ps->phase = PS_START;
    ps->dense = true;
    *ps_r = ps;

    char *err = NULL;
    int r = idx_open(acct->state_dir, acct->name, &ps->idx, &err);
    if (r < 0) {
        ps->idx = NULL;
        set_error(ps, r == -EWOULDBLOCK ? SYNC_TRANSIENT : SYNC_PERMANENT, "%s",
                  err != NULL ? err : "cannot open the index");
        free(err);
        ps->prep_done = true;
        advance(ps);
        return 0;
    }
    char *path = NULL;
    r = md_folder_local_path(acct->maildir, acct->layout, "INBOX", &path);
    if (r == 0) {
        r = md_folder_open(path, true, false, &ps->folders[0][0], &err);
    }
    for (int i = 1; i < 2 * NSHARD && r == 0; i++) {
        r = md_folder_open(path, false, false, &ps->folders[i / NSHARD][i % NSHARD], &err);
    }
    if (r < 0) {
        set_error(ps, SYNC_PERMANENT, "%s", err != NULL ? err : "cannot open the Maildir INBOX");
        free(err);
        free(path);
        ps->prep_done = true;
        advance(ps);
        return 0;
    }
    free(path);
    run_job(ps, prep_work, prep_after);
    set_phase(ps, PS_CONNECT);
    r = secret_get_account(loop, acct, 0, on_secret, ps, &ps->secret_req);
    if (r < 0) {
        ps->secret_req = NULL;
        set_error(ps, SYNC_PERMANENT, "account '%s': no password or password_command", acct->name);
    }
    return 0;
}

void popsync_cancel(struct popsync *ps)
{
    if (ps->cancelled || ps->phase == PS_DONE) {
        return;
    }
    ps->cancelled = true;
    set_error(ps, SYNC_TRANSIENT, "cancelled");
    /* From the loop, like every other step. */
    advance(ps);
}

struct run_ctx {
    struct popsync_result *res;
    bool done;
};

static void on_run_done(const struct popsync_result *res, void *arg)
{
    struct run_ctx *c = arg;
    *c->res = *res;
    c->res->error = res->error != NULL ? xstrdup(res->error) : NULL;
    c->res->account = res->account != NULL ? xstrdup(res->account) : NULL;
    c->done = true;
}

int popsync_run(uv_loop_t *loop, const struct sync_account *acct, const struct popsync_opts *opts,
                struct popsync_result *res_r)
{
    memset(res_r, 0, sizeof(*res_r));
    struct run_ctx c = {.res = res_r};
    struct popsync *ps;
    int r = popsync_start(loop, acct, opts, on_run_done, &c, &ps);
    if (r < 0) {
        res_r->kind = SYNC_PERMANENT;
        res_r->error = xasprintf("account '%s' is not a POP3 account", acct->name);
        return -1;
    }
    while (!c.done) {
        uv_run(loop, UV_RUN_ONCE);
    }
    return res_r->kind == SYNC_OK ? 0 : -1;
}

void popsync_result_clear(struct popsync_result *res)
{
    free((char *)res->error);
    free((char *)res->account);
    memset(res, 0, sizeof(*res));
}

static void human_size(uint64_t n, char *buf, size_t cap)
{
    if (n >= 1024ull * 1024 * 1024) {
        snprintf(buf, cap, "%.1f GB", (double)n / (1024.0 * 1024 * 1024));
    } else if (n >= 1024 * 1024) {
        snprintf(buf, cap, "%.1f MB", (double)n / (1024.0 * 1024));
    } else if (n >= 1024) {
        snprintf(buf, cap, "%.1f kB", (double)n / 1024.0);
    } else {
        snprintf(buf, cap, "%llu bytes", (unsigned long long)n);
    }
}

char *popsync_summary(const struct popsync_result *res)
{
    struct sbuf s = {0};
    char sz[32];
    human_size(res->bytes, sz, sizeof(sz));
    sbuf_addf(&s, "%s: %u new", res->account != NULL ? res->account : "?", res->downloaded);
    if (res->dry_run) {
        sbuf_adds(&s, " (dry run)");
    } else if (res->downloaded > 0) {
        sbuf_addf(&s, " (%s)", sz);
    }
    unsigned skipped = res->skipped_size + res->skipped_since;
    if (skipped > 0) {
        sbuf_addf(&s, ", %u skipped (", skipped);
        if (res->skipped_size > 0) {
            sbuf_addf(&s, "over max_size: %u%s", res->skipped_size,
                      res->skipped_since > 0 ? ", " : "");
        }
        if (res->skipped_since > 0) {
            sbuf_addf(&s, "before since: %u", res->skipped_since);
        }
        sbuf_adds(&s, ")");
    }
    sbuf_addf(&s, ", %u deleted on the server", res->deleted_on_server);
    if (res->deleted_locally > 0) {
        sbuf_addf(&s, ", %u deleted locally", res->deleted_locally);
    }
    if (res->adopted > 0) {
        sbuf_addf(&s, ", %u recovered after an interruption", res->adopted);
    }
    sbuf_addf(&s, ", %u already here", res->known);
    if (res->errors > 0) {
        sbuf_addf(&s, ", %u failed", res->errors);
    }
    if (res->kind != SYNC_OK) {
        sbuf_addf(&s, "; error (%s): %s", sync_kind_name(res->kind),
                  res->error != NULL ? res->error : "?");
    }
    return sbuf_detach(&s);
}
