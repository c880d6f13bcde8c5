/* The IMAP two-way engine's private types, and the functions its files
 * share. sync/engine.h is its public interface; nothing outside the
 * engine's files includes this header.
 *
 * A run (struct engine) is one pass over an account: the folder jobs
 * (struct fjob), their results, account-wide state and deferred index
 * writes. A session (struct session, "e" in the code) is one logged-in
 * connection of a run, working through folder jobs; the folder it is
 * syncing is its struct fstate (e->f).
 *
 * Which file holds what:
 * - sync/engine.c: the run and its sessions: the public API, connecting
 *   (the account's secret), LIST and the folder plan, the job order
 *   (next_folder), more sessions, the end of a session and of the run
 *   with its result; the errors of a run, session and folder; the index
 *   writes, at once or deferred (idx_apply, idx_apply_later).
 * - sync/folder.c: the folder executor: prepare (scan, base), SELECT, the
 *   server's listing, plan, apply locally and on the server, downloads
 *   (batches made durable on the thread pool), uploads, the final record;
 *   folder_advance drives the phases.
 * - sync/rematch.c: a new UIDVALIDITY, or a folder the index does not
 *   know (adopt): server messages matched to local files; the header
 *   phase (fetch_headers).
 * - sync/upload.c: uploads without a known UID: APPENDs answered without
 *   APPENDUID (ul_resolve_*), upload intents left by a crash (intents_*,
 *   recover_intents, settle_intents).
 * - sync/folderops.c: whole folders between jobs: deleted on one side,
 *   created on the server, forgotten in the index, renamed on one side
 *   (checked, carried out and recovered after a crash before the jobs
 *   start).
 * - sync/moves.c: messages moved locally from one folder to another,
 *   carried out on the server with UID MOVE (see sync/moves.h).
 */
#ifndef MAILSYNC_SYNC_ENGINE_INT_H
#define MAILSYNC_SYNC_ENGINE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/engine.h"
#include "sync/imap.h"
#include "sync/moves.h"
#include "sync/plan.h"
#include "sync/remote.h"
#include "sync/skiplist.h"

enum fphase {
    FP_SELECT = 0,
    FP_FETCH,
    FP_HEADERS, /* BODY.PEEK[HEADER] of messages a Message-ID cannot tell apart */
    FP_RECOVER,
    FP_APPLY_SERVER,
    FP_DOWNLOAD,
    FP_UPLOAD,
    FP_UL_FETCH,   /* without APPENDUID: the new UIDs with their Message-ID and size */
    FP_UL_HEADERS, /* ... and header blocks where the Message-ID cannot decide */
    FP_DONE,
};

struct engine;

/* One server message as listed by FETCH. */
struct smsg {
    uint32_t uid;
    unsigned flags; /* MD_FLAG_* */
    char **kw;
    size_t nkw;
    uint64_t size;
    time_t internaldate;
    char *msgid; /* IMAP_FETCH_MESSAGE_ID (re-match only), NULL when absent */
    /* EMAILID (OBJECTID servers), hashed as idx_msg.emailid_hash; all
     * zero when not listed. */
    uint8_t eid[8];
    uint8_t hh[16]; /* hash of the header block, when have_hh */
    bool have_hh;
    uint64_t hstrip; /* wire bytes of the header lines the hash leaves out */
};

/* What the re-match knows of a local file (parallel to the scan). */
struct lfact {
    char *msgid;
    uint8_t hh[16];
    bool have_hh;
    uint64_t strip; /* wire bytes of the header lines the hash leaves out */
    uint64_t wire;  /* size on the wire, when have_wire */
    bool have_wire;
};

/* A download in flight or waiting in the batch. */
struct dl {
    struct session *e;
    const struct plan_download *pd;
    struct md_writer *w;
    char lid[IDX_LID_MAX + 1];
    uint64_t wire_size;
    bool complete;
    int err;
    /* The header block as it streams in (at most DL_HEADER_MAX bytes), for
     * the record's msgid_hash: a message another client moves to another
     * folder later is paired by it instead of downloaded again. */
    char *hdr;
    size_t hlen;
    bool hdone;
    uint8_t msgid_hash[16];
};

/* A server message gone from its folder while its local file stays
 * (IDX_MSG_ORPHAN), waiting for a new message of another folder to pair
 * with (sync/moves.c). */
struct orphan {
    char *folder;
    struct idx_msg rec;
    bool changed; /* its file's flags changed since the base */
    bool gone;    /* paired or dealt with */
};

/* One folder to sync. */
struct fjob {
    char *name;
    char *notice; /* engine_folder_result.notice */
    /* What sync/folderplan.c decided (one of e->run->fplan's folders), and
     * whether the folder is on the server (listed, or created by this run). */
    const struct folderplan_folder *plan;
    bool on_server;
    bool reset; /* --force on a vanished local folder: forget the base */
    unsigned attrs;
    bool has_status;
    bool status_skipped; /* not asked STATUS (struct listed) */
    bool server_moved;   /* STATUS differs from the index: it will be selected */
    bool server_lost;    /* STATUS says messages the index knows were expunged */
    uint32_t est_new;    /* messages the server has that the index does not, as STATUS tells */
    struct imap_status_info status;
    struct engine_folder_result *res;
    bool on_demand; /* queued by engine_sync_folder: on_folder_done follows */
    bool queued;    /* in demand[] */
    /* status was listed by a sweep after the job's last sync and nothing
     * asked for the folder since: the job may trust it (a quiet folder
     * then needs no SELECT). */
    bool fresh_status;
    /* engine_opts.local_quiet_since, asked when the job started, and the
     * other programs' changes it named. */
    int64_t quiet_since_ns;
    struct local_change *lchanges;
    size_t nlchanges;
};

/* One folder of the LIST answer, until the folder planner has it. */
struct listed {
    char *name;
    unsigned attrs;
    bool has_status;
    /* Not asked STATUS: without CONDSTORE, a large folder that held
     * messages at its last sync is selected anyway (statuses_ask). */
    bool status_skipped;
    struct imap_status_info status;
};

/* The state of the folder being synced. */
struct fstate {
    struct fjob *job;
    enum fphase phase;
    unsigned pending; /* commands in flight for this phase */
    bool failed;
    bool noted; /* an error was reported but the plan went on */
    struct md_folder *md;
    struct md_scan *scan;
    /* cur/ and new/ as read before the scan (taken_ns 0: unknown), recorded
     * with the folder's state when the sync completes. lazy: they are as
     * the last complete sync recorded them, so the scan and the base are
     * put off until the server turns out to have moved (see local_quiet in
     * sync/folder.c). */
    struct md_stamp stamp;
    struct md_stamp stamp_fresh; /* the stamp taken, where a vouched run kept an older one */
    bool lazy;
    /* lazy and synced from a delta's rows alone: the folder's record count,
     * which the planner's guard measures deletions against (fill_input). */
    size_t nbase_total;
    /* lazy, but for the files another program changed since the recorded
     * scan (local_quiet: the owner's word): "new/NAME" or "cur/NAME",
     * looked at by identity with the server's delta (delta_start). */
    char **lnames;
    size_t nlnames;
    /* lazy on a server without CONDSTORE: the base read whole while the
     * full listing comes, to be compared with it (ldiff_start); listed:
     * that listing stands while the folder is scanned after all. */
    struct idx_rows lbase;
    size_t lbase_total;
    bool lbase_set;
    bool listed;
    /* The job parked orphans (sync/moves.c): the stamp is not recorded, so
     * that the next sync reads the folder and its orphan rows whatever the
     * end of this run does with them (a file kept to be uploaded again is
     * no change to the Maildir). */
    bool parked;
    struct idx_folder st; /* index state at the start */
    struct idx_rows base; /* compact: 48 bytes a record, names apart */
    /* The lids of a base rematch_finish replaced: the scan's identities
     * point into them (md_scan_share_ids), so they go with the scan. */
    struct idx_rows base_old;
    struct idx_msg *intents; /* APPENDING rows with uid 0 */
    size_t nintents, intents_cap;
    /* Messages moved between this folder and another (sync/moves.c). */
    struct moves *mv;
    /* Local view. */
    /* Parallel to the scan; each file's kw array and names are its own
     * (fstate_free), except a file without keyword letters, whose kw is
     * one array shared by all of them. */
    struct plan_local_msg *lmsgs;
    int free_letters;
    /* Server view. */
    struct imap_mailbox mb;
    bool selected;
    bool delta;
    bool qresync;
    bool condstore;
    struct smsg *smsgs;
    size_t nsmsgs, smsgs_cap;
    uint32_t *vanished;
    size_t nvanished, vanished_cap;
    uint32_t *search; /* CONDSTORE without QRESYNC: UIDs still there */
    size_t nsearch;
    bool have_search;
    struct plan *plan;
    /* Messages skipped for max_size / max_age_days (what the index holds
     * for them under "skip:FOLDER"; see sync/skiplist.h), sorted by UID. */
    struct skip_ent *skips;
    size_t nskips, skips_cap;
    uint32_t skip_uv;
    uint32_t *unskip; /* skipped before, but not under today's limits */
    size_t nunskip, unskip_cap;
    /* Local files left out of uploads (empty files; "lskip:FOLDER", see
     * sync/skiplist.h), and whether the list changed in this run. */
    struct skip_local *lskips;
    size_t nlskips, lskips_cap;
    bool lskips_dirty;
    /* The local view the planner gets: lmsgs without the files of lskips
     * (lmsgs itself stays parallel to the scan). */
    struct plan_local_msg *lview;
    size_t nlview;
    /* UIDVALIDITY changed, or the index knows nothing of a folder that
     * holds mail locally (adopt): the server listing is matched to local
     * files. */
    bool rematch;
    bool adopt;
    bool rm_done; /* the matches are the new base */
    unsigned rm_matched;
    struct lfact *lf;
    struct plan_match *rm_s, *rm_l;
    size_t rm_ns, rm_nl;
    /* Apply. */
    struct imap_uid_range *modified; /* [MODIFIED] UIDs: base not advanced */
    size_t nmodified, modified_cap;
    bool *sdel_ok;      /* per server delete: done (NULL until apply_server) */
    bool kw_failed;     /* a keyword letter could not be assigned */
    bool stores_sent;   /* the plan's STOREs went out */
    bool stores_failed; /* one of them was not answered OK */
    bool sdel_failed;
    bool updates_recorded; /* record_updates(e, true) ran */
    /* Downloads. */
    bool dl_flushed;            /* a batch of this folder was committed */
    struct flush_job *flushing; /* a batch on the thread pool (flush_work) */
    struct diskq *dq;           /* the downloads' writes, on the thread pool (sync/diskq.h) */
    bool reading;               /* local files read on the thread pool (rematch) */
    /* The index side (st, base, intents, skip lists) was read on the
     * thread pool with the scan; base_rc is that read's result. */
    bool base_read;
    int base_rc;
    bool lview_ready;         /* lmsgs built from the scan already */
    bool advance_after_flush; /* folder_advance waits for it */
    bool dl_paused;           /* reading stopped until the batch in flight is durable */
    bool dl_refused;          /* the folder failed because a body FETCH was refused */
    size_t dl_next;
    struct dl **batch;
    size_t nbatch, batch_cap;
    uint64_t batch_bytes;
    struct dl *cur;
    struct idx_msg *recs; /* records to write with the batch */
    size_t nrecs, recs_cap;
    /* Uploads. */
    size_t ul_next;
    unsigned ul_inflight;
    struct idx_msg *ul_done; /* SYNCED rows from APPENDUID */
    size_t nul_done, ul_done_cap;
    struct lfact *ulf; /* per upload: Message-ID, header hash, wire size */
    size_t nulf;
    /* APPENDs answered without APPENDUID, found again by a FETCH of the new
     * UIDs before the run ends. */
    struct idx_msg *ul_pend;
    size_t *ul_pend_ix; /* index into plan->uploads */
    size_t nul_pend, ul_pend_cap, ul_pend_ix_cap;
    uint32_t ul_first; /* the lowest UID an APPEND of this run can have */
    struct smsg *ul_srv;
    size_t nul_srv, ul_srv_cap;
    struct plan_match *ul_ms, *ul_ml;
    size_t ul_nms, ul_nml;
    unsigned ul_unresolved; /* still without a UID: the folder state waits */
    bool ul_lookup_failed;  /* a FETCH that finds them did not end OK */
    bool sdel_flag_mode;    /* server deletions only set \Deleted */
    /* Upload intents left by an interrupted run: header facts per intent,
     * used to find those without a Message-ID by size and header hash. */
    struct lfact *itf;
    size_t nitf;
    struct plan_match *it_s, *it_l;
    size_t it_ns, it_nl;
};

/* One pass over an account, from engine_start to the done callback (the
 * public struct engine): the folder jobs and their results, the folder
 * plan, account-wide progress and deferred index writes, and the sessions
 * that work through the jobs. */
struct engine {
    uv_loop_t *loop;
    const struct sync_account *acct;
    struct engine_opts opts;
    engine_done_cb done;
    void *done_arg;
    time_t now;
    FILE *plan_out;
    /* The account (sync/account.h): the index handle and lock, the kept
     * secret, what the server said. The owner's (opts.account), or one of
     * this run's own. */
    struct account *account;
    bool own_account;
    struct idx *idx; /* the account's; shared by the sessions */
    const struct remote_ops *ro;
    /* The sessions (connections), all alike. Each takes the next job from
     * jobs; the run ends when the last one has ended. The first one lists
     * the folders (the lister); with stay_open it is also the one that
     * stays logged in and takes the folder jobs asked for. */
    struct session **sessions;
    size_t nsessions, sessions_cap;
    unsigned sessions_running;
    struct session *lister;
    /* Account-wide progress over every session (messages transferred
     * either way, of those planned so far; bytes). */
    unsigned prog_done, prog_total;
    uint64_t prog_bytes;
    char *trash;       /* trash folder name, NULL when unknown */
    bool trash_warned; /* the missing trash folder was reported */
    /* The LIST answer, kept until on_list_done hands it to the folder
     * planner, and the plan (each job points at its decision). */
    struct listed *listed;
    size_t nlisted, listed_cap;
    struct folderplan *fplan;
    /* The plan's other inputs, kept while renames are checked on the
     * server and carried out (sync/folderops.c), which plan again; and
     * what those steps know (struct renames, folderops.c). */
    struct folderplan_server *plan_srv;
    struct folderplan_local *plan_loc;
    char **plan_names, **plan_bad;
    size_t plan_nloc, plan_nbad;
    struct renames *renames;
    /* Index writes that need not be durable at once, written with the next
     * one that must be (see idx_apply_later). The loop adds to them while a
     * download batch's write on the thread pool may take and drop them:
     * dmu guards defer and dirsync; wmu makes engine_write one at a time. */
    pthread_mutex_t wmu, dmu;
    struct deferred_ops *defer;
    size_t ndefer, defer_cap, defer_rows;
    /* Directories to fsync before the deferred writes go in: new folders'
     * entries and their new/ and cur/ after downloads. */
    struct md_dirsync dirsync;

    /* Messages a folder job of this run moves (or leaves for the job that
     * moves them) between folders, by Maildir unique name (sync/moves.c):
     * two sessions never both act on one, and a job that meets one another
     * job took neither uploads nor deletes it. */
    char **claims;
    size_t nclaims, claims_cap;
    struct strindex claim_ix;
    /* Orphans the run's jobs parked or found (sync/moves.c). */
    struct orphan *orphans;
    size_t norphans, orphans_cap;

    struct fjob *jobs;
    size_t njobs, jobs_cap;
    struct strindex job_ix; /* local folder of a job -> position in jobs */
    /* The order the pass takes the jobs in (indexes into jobs): folders
     * the server lost messages from first, so that a message another
     * client moved out of one is parked as an orphan before the job of the
     * folder it went to lists it (sync/moves.c), whatever the names. */
    size_t *order;
    /* engine_sync_folder starts an idle session on the next loop turn, so
     * that the changes one server reply announced are all queued first
     * and the folders that lost messages go before the others. */
    uv_timer_t wake;
    bool jumped;     /* the last demand job taken jumped the queue (server_lost) */
    size_t next_job; /* into order */
    struct engine_folder_result *fres;
    /* stay_open: folder jobs asked for (indexes into jobs), and the end
     * asked for. */
    size_t *demand;
    size_t ndemand, demand_cap;
    bool closing;
    bool sweeping; /* engine_sweep's LIST is in flight */
    bool cancelled;
    enum sync_kind kind;
    char *error; /* first account-level error */
    struct engine_result res;
    uv_timer_t timer;
};

/* One logged-in connection of a run, working through folder jobs (e in
 * this file). The run's options are copied in for short access; nothing
 * here belongs to one particular session of the run. */
struct session {
    struct engine *run;
    uv_loop_t *loop;
    const struct sync_account *acct;
    struct engine_opts opts;
    time_t now;
    FILE *plan_out;
    struct account *account;
    struct idx *idx;
    struct account_wait *secret_wait;
    /* The connection, through the server interface (sync/remote.h): the
     * IMAP client, or the unit tests' fake. */
    const struct remote_ops *ro;
    struct remote *im;
    bool conn_dead;
    bool logged_out;
    bool ready;            /* logged in */
    struct fjob *creating; /* CREATE in flight for this job */
    struct fjob *deleting; /* the checks and DELETE of a folder deleted locally, in flight */
    char *log_name;        /* "ACCOUNT#N" in log lines, for every session after the first */
    struct fstate *f;      /* current folder, NULL between folders */
    bool cancelled;
    bool finished;
    bool teardown_pending; /* finish waits for the folder's batch on the thread pool */
    bool dflushing;        /* the run's deferred writes on the thread pool, for this session */
    bool dflush_failed;    /* and they failed: not again before the next folder job */
    bool idle;             /* stay_open: waiting for a folder job */
    bool errored;          /* its own trouble was logged (see set_error) */
    char *selected;        /* the folder this connection selected last */
    uv_timer_t timer;
};

/* Index writes for one folder, applied in one transaction (idx_apply,
 * idx_apply_later): rows to put, rows to drop by UID or local id, the
 * folder state, and one meta value. */
struct idx_ops {
    const char *folder;
    const struct idx_msg *puts;
    size_t nputs;
    const uint32_t *drops;
    size_t ndrops;
    const char *const *drop_lids;
    size_t ndrop_lids;
    const struct idx_folder *st;
    const char *meta_key; /* with meta_val/meta_len: one meta value to store */
    const void *meta_val;
    size_t meta_len;
};

/* qsort and bsearch comparators: uint32_t, and char * by strcmp. */
static inline int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static inline int strp_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* sync/engine.c: errors, index writes, connection, the job order. */
__attribute__((format(printf, 2, 3))) void folder_fail(struct session *e, const char *fmt, ...);
__attribute__((format(printf, 2, 3))) void folder_note(struct session *e, const char *fmt, ...);
__attribute__((format(printf, 2, 3))) void folder_fail_transient(struct session *e, const char *fmt,
                                                                 ...);
void folder_fail_md(struct session *e, int r);
void folder_fail_idx(struct session *e, int r);
struct engine_counts *fcounts(struct session *e);
int idx_apply(struct session *e, const struct idx_ops *o);
/* Several folders' writes in one transaction (a move: a record leaves one
 * folder and arrives in another, or neither happens). */
int idx_apply_many(struct session *e, const struct idx_ops *o, size_t n);
void idx_apply_later(struct session *e, const struct idx_ops *o);
/* The deferred writes (after the directories they need are fsynced), then
 * o[0..n), in one transaction. Safe on the thread pool: it touches only
 * the run's deferred writes and the index. Returns 0, or a negative errno
 * with *dserr_r (to free) when the directories' fsync failed, NULL when
 * the index write did (idx_error says why). */
int engine_write(struct engine *run, const struct idx_ops *o, size_t n, char **dserr_r);
/* Reports engine_write's failure for e's folder (and the run); frees dserr. */
void engine_write_failed(struct session *e, int r, char *dserr);
/* The same when the session ended meanwhile: reported for the run. */
void engine_write_lost(struct engine *run, int r, char *dserr);
/* Directories to fsync before the next deferred write goes in (ds is
 * emptied into the run's set). */
void engine_dirsync_add(struct engine *run, struct md_dirsync *ds);
void finish_teardown(struct session *e);
/* In the completion of a thread-pool job of e's folder (scan, plan,
 * batch, matching reads): true to go on; false when the session ended
 * while the job ran, its teardown (held for the job) then done here. */
bool pool_job_back(struct session *e);
bool conn_lost(const struct session *e);
struct fjob *find_job(struct engine *r, const char *name);
void next_folder(struct session *e);
void plan_folders(struct session *e);
void jobs_go(struct session *e);

/* sync/folder.c: the folder executor. */
bool is_forwarded(const char *k);
unsigned imap_to_md(unsigned f);
void fstate_free(struct fstate *f);
bool refused_locally(const struct session *e, const struct imap_result *res);
bool cmd_ok(struct session *e, const struct imap_result *res, const char *what);
void queue_failed(struct session *e, int r, const char *what);
/* Queues UID FETCH items of uids (n of them, any order; none: nothing) as
 * one command per UID set, each counted in the phase's pending commands; a
 * command that cannot be queued fails the folder (queue_failed, what). */
void fetch_uids(struct session *e, const uint32_t *uids, size_t n, unsigned items,
                const struct imap_fetch_cb *cb, const char *what);
void phase_cmd_done(struct session *e);
void on_fetch_done(struct imap *im, const struct imap_result *res, void *arg);
struct smsg *find_smsg(struct fstate *f, uint32_t uid);
void unsettled_key(const char *folder, char *buf, size_t cap);
int flush_batch(struct session *e);
int wire_size(int fd, uint64_t *size_r);
void dedupe_server(struct fstate *f);
void start_folder(struct session *e, struct fjob *j);

/* sync/rematch.c: the re-match and the header phase. */
int rematch_finish(struct session *e);
void fetch_headers(struct session *e);

/* sync/upload.c: uploads without a known UID. */
void recover_intents(struct session *e);
int settle_intents(struct session *e);
void intents_prepare(struct session *e);
void intents_finish(struct session *e);
void ul_resolve_fetch(struct session *e);
void ul_resolve_headers(struct session *e);
void ul_resolve_finish(struct session *e);

/* sync/folderops.c: whole folders between jobs. */
int forget_folder_records(struct idx_txn *txn, const char *folder);
int forget_folder(struct session *e, const char *name);
void local_folder_delete(struct session *e, struct fjob *j);
int server_folder_delete(struct session *e, struct fjob *j);
void on_create_done(struct imap *im, const struct imap_result *res, void *arg);
struct folderplan_input;
void renames_facts(struct engine *r, struct idx_txn *txn, struct folderplan_input *in);
void renames_recover(struct session *e);
void renames_verify(struct session *e);
void renames_apply(struct session *e);
void renames_free(struct engine *r);
int resync_moved(struct session *e, struct fjob *j);

#endif
