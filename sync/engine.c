/* The two-way IMAP <-> Maildir sync engine (see engine.h): a run and its
 * sessions. The folder executor is sync/folder.c; engine_int.h says which
 * file holds what.
 *
 * A run (struct engine) is one pass over an account; it owns the folder
 * jobs, their results and the account-wide state, and works through them
 * with up to max_connections sessions (struct session, one logged-in
 * connection each), all alike. The first session lists the folders and
 * builds the jobs; when two or more folders changed on the server the run
 * opens more sessions, and every session takes the next job from the
 * shared list, so several folders are synced at once. Each folder is
 * synced by exactly one session from start to end, so the per-folder steps
 * and their crash safety are the same as with one connection. The sessions
 * share the account's index handle (one thread: writes never overlap);
 * the run ends when the last session has ended. With stay_open the first
 * session stays logged in and takes folder jobs asked for by name.
 *
 * This file is the part that knows about more than one folder: the public
 * API, connecting and logging in (the account's secret), LIST and the
 * folder plan, which job comes next, more sessions, the end of a session
 * and of the run with its result. It also holds what every part reports
 * through (the errors of the run, a session and a folder) and the index
 * writes, which the run groups: those that may wait are deferred and go in
 * with the next one that must be durable, or at the end of the run. */
#include "sync/engine.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/account.h"
#include "sync/diskq.h"
#include "sync/engine_int.h"
#include "sync/folderplan.h"
#include "sync/imap.h"
#include "sync/net.h"
#include "sync/options.h"
#include "sync/remote.h"

/* How long the end of a run waits for the server's answer to LOGOUT. */
#define LOGOUT_TIMEOUT_MS 5000
/* New messages on the server (over the folders that have some) below which
 * a run keeps to one connection. */
#define LANE_MIN_MSGS 64
/* Without CONDSTORE, folders that held at least this many messages at
 * their last sync are not asked STATUS (see statuses_ask). */
#define STATUS_SKIP_MIN 10000

static void session_connect(struct session *e);
static void listed_free(struct engine *r);

/* ---- errors and counts ---------------------------------------------------- */

/* The run's first account-level error (the result's error and kind). */
__attribute__((format(printf, 3, 0))) static void run_verror(struct engine *r, enum sync_kind k,
                                                             const char *fmt, va_list ap)
{
    if (r->error != NULL) {
        return;
    }
    r->error = xvasprintf(fmt, ap);
    r->kind = k;
}

__attribute__((format(printf, 3, 4))) static void run_error(struct engine *r, enum sync_kind k,
                                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    run_verror(r, k, fmt, ap);
    va_end(ap);
}

/* A session's trouble. The lister's is the account's (it could not log
 * in, LIST failed, the index failed); another session's own trouble (it
 * could not connect, say) is not: the folder it held carries any error,
 * and the other sessions do the remaining folders. */
__attribute__((format(printf, 3, 4))) static void set_error(struct session *e, enum sync_kind k,
                                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e == e->run->lister) {
        run_verror(e->run, k, fmt, ap);
    } else if (!e->errored) {
        e->errored = true;
        char *msg = xvasprintf(fmt, ap);
        log_debug("%s: extra connection: %s", e->acct->name, msg);
        free(msg);
    }
    va_end(ap);
}

__attribute__((format(printf, 3, 0))) static void
folder_vmsg(struct session *e, bool fatal_for_folder, const char *fmt, va_list ap)
{
    struct fstate *f = e->f;
    if (f == NULL) {
        return;
    }
    if (fatal_for_folder) {
        f->failed = true;
    }
    if (f->job->res->error == NULL) {
        f->job->res->error = xvasprintf(fmt, ap);
    }
}

/* The folder stops at the next phase boundary, with this error. */
__attribute__((format(printf, 2, 3))) void folder_fail(struct session *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    folder_vmsg(e, true, fmt, ap);
    va_end(ap);
}

/* The folder reports this error but the rest of its plan still runs. */
__attribute__((format(printf, 2, 3))) void folder_note(struct session *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    folder_vmsg(e, false, fmt, ap);
    va_end(ap);
    if (e->f != NULL) {
        e->f->noted = true;
    }
}

/* folder_fail for an error that clears up by itself when trying again
 * later (see engine_folder_result.transient). Only the first error of a
 * folder decides. */
__attribute__((format(printf, 2, 3))) void folder_fail_transient(struct session *e, const char *fmt,
                                                                 ...)
{
    struct fstate *f = e->f;
    bool first = f != NULL && f->job->res->error == NULL;
    va_list ap;
    va_start(ap, fmt);
    folder_vmsg(e, true, fmt, ap);
    va_end(ap);
    if (first) {
        f->job->res->transient = true;
    }
}

/* A Maildir operation failed with r: a full disk or quota clears up by
 * itself, anything else needs the user. */
void folder_fail_md(struct session *e, int r)
{
    if (r == -ENOSPC || r == -EDQUOT || r == -EAGAIN) {
        /* -EAGAIN: dovecot-keywords locked by another program. */
        folder_fail_transient(e, "%s", md_folder_error(e->f->md));
    } else {
        folder_fail(e, "%s", md_folder_error(e->f->md));
    }
}

/* An index write failed with r: a full disk, quota or a map that could
 * not grow clears up by itself. LMDB reports a short write (what a full
 * disk gives it part-way through a commit) as EIO, so EIO counts as a
 * full disk when the state directory's file system has no room left. */
static bool idx_err_transient(const struct sync_account *acct, int r)
{
    if (r == -ENOSPC || r == -EDQUOT || r == IDX_ERETRY) {
        return true;
    }
    struct statvfs sv;
    if (r == -EIO && statvfs(acct->state_dir, &sv) == 0) {
        /* Less than a megabyte free, or no inodes left, is full. */
        return (uint64_t)sv.f_bavail * sv.f_frsize < ((uint64_t)1 << 20) ||
               (sv.f_files > 0 && sv.f_favail == 0);
    }
    return false;
}

/* An index operation failed with r: see idx_err_transient. */
void folder_fail_idx(struct session *e, int r)
{
    if (idx_err_transient(e->acct, r)) {
        folder_fail_transient(e, "index: %s%s", idx_error(e->idx),
                              r == -EIO ? " (the file system holding it is full)" : "");
    } else {
        folder_fail(e, "index: %s", idx_error(e->idx));
    }
}

struct engine_counts *fcounts(struct session *e)
{
    return &e->f->job->res->counts;
}

/* ---- index writes ------------------------------------------------------------------------ */

static int ops_fn(struct idx_txn *txn, void *arg)
{
    const struct idx_ops *o = arg;
    int r;
    for (size_t i = 0; i < o->ndrops; i++) {
        r = idx_msg_delete_uid(txn, o->folder, o->drops[i]);
        if (r < 0 && r != -ENOENT) {
            return r;
        }
    }
    for (size_t i = 0; i < o->ndrop_lids; i++) {
        r = idx_msg_delete_lid(txn, o->folder, o->drop_lids[i]);
        if (r < 0 && r != -ENOENT) {
            return r;
        }
    }
    for (size_t i = 0; i < o->nputs; i++) {
        r = idx_msg_put(txn, o->folder, &o->puts[i]);
        if (r < 0) {
            return r;
        }
    }
    if (o->st != NULL) {
        r = idx_folder_put(txn, o->folder, o->st);
        if (r < 0) {
            return r;
        }
    }
    if (o->meta_key != NULL) {
        r = idx_meta_put(txn, o->meta_key, o->meta_val, o->meta_len);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* Index writes that may wait: the records of a batch of downloads (their
 * intent rows are durable already, so a record lost in a crash is adopted
 * from its intent by the next run) and a folder's final state and updates
 * (lost, they only make the next run compare again, and both sides already
 * agree). They are copied here and written in the same transaction as the
 * next write that must be durable (an intent, an unsettled mark), at most
 * DEFER_MAX_ROWS rows later, or at the end of the run: a first sync of
 * many small folders then commits once per folder instead of three times,
 * and a run where nothing changed hardly at all. */
#define DEFER_MAX_ROWS 4096
#define DEFER_MAX_FOLDERS 256

struct deferred_ops {
    char *folder;
    struct idx_msg *puts;
    size_t nputs;
    uint32_t *drops;
    size_t ndrops;
    bool has_st;
    struct idx_folder st;
    char *meta_key;
    void *meta_val;
    size_t meta_len;
    char *mailboxid; /* the server's MAILBOXID of the folder, with st; NULL: none said */
};

/* Frees the first n deferred writes (dmu held, or no other thread). */
static void deferred_drop(struct engine *r, size_t n)
{
    size_t rows = 0;
    for (size_t i = 0; i < n; i++) {
        struct deferred_ops *d = &r->defer[i];
        rows += d->nputs + d->ndrops + 1;
        free(d->folder);
        free(d->mailboxid);
        free(d->puts);
        free(d->drops);
        free(d->meta_key);
        free(d->meta_val);
    }
    if (n == 0) {
        return;
    }
    memmove(r->defer, r->defer + n, (r->ndefer - n) * sizeof(*r->defer));
    r->ndefer -= n;
    r->defer_rows = rows < r->defer_rows ? r->defer_rows - rows : 0;
}

static void deferred_free(struct engine *r)
{
    deferred_drop(r, r->ndefer);
    r->ndefer = 0;
    r->defer_rows = 0;
}

struct apply_ctx {
    const struct deferred_ops *defer; /* a copy of the first ndefer of run->defer */
    size_t ndefer;
    const struct idx_ops *o; /* NULL: the deferred writes alone */
    size_t no;
};

/* The deferred writes first (they are older), then the new one. */
static int apply_fn(struct idx_txn *txn, void *arg)
{
    const struct apply_ctx *c = arg;
    for (size_t i = 0; i < c->ndefer; i++) {
        const struct deferred_ops *d = &c->defer[i];
        struct idx_ops o = {.folder = d->folder,
                            .puts = d->puts,
                            .nputs = d->nputs,
                            .drops = d->drops,
                            .ndrops = d->ndrops,
                            .st = d->has_st ? &d->st : NULL,
                            .meta_key = d->meta_key,
                            .meta_val = d->meta_val,
                            .meta_len = d->meta_len};
        int r = ops_fn(txn, &o);
        if (r == 0 && d->mailboxid != NULL) {
            /* With the state it was read with: a rename found by it next
             * time is one of the folder the index describes. */
            r = idx_folder_mailboxid_put(txn, d->folder, d->mailboxid);
        }
        if (r < 0) {
            return r;
        }
    }
    for (size_t i = 0; c->o != NULL && i < c->no; i++) {
        int r = ops_fn(txn, (void *)&c->o[i]);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

void engine_dirsync_add(struct engine *run, struct md_dirsync *ds)
{
    pthread_mutex_lock(&run->dmu);
    md_dirsync_take(&run->dirsync, ds);
    pthread_mutex_unlock(&run->dmu);
}

int engine_write(struct engine *run, const struct idx_ops *o, size_t n, char **dserr_r)
{
    *dserr_r = NULL;
    /* One engine write at a time (the loop's, or a flush job's on the
     * thread pool), so that the deferred writes go in in their order and
     * before anything written after them. */
    pthread_mutex_lock(&run->wmu);
    pthread_mutex_lock(&run->dmu);
    size_t nd = run->ndefer;
    struct deferred_ops *snap = NULL;
    struct md_dirsync ds = {0};
    if (nd > 0) {
        /* The entries' buffers stay put until deferred_drop below (only a
         * writer drops them, under wmu); the loop may append meanwhile. */
        snap = xmalloc(nd * sizeof(*snap));
        memcpy(snap, run->defer, nd * sizeof(*snap));
        md_dirsync_take(&ds, &run->dirsync);
    }
    pthread_mutex_unlock(&run->dmu);
    int r = 0;
    if (ds.n > 0) {
        /* The directories the deferred writes depend on, made durable
         * first (invariant 4: the directory before the index records it). */
        r = md_dirsync_run(&ds, dserr_r);
        if (r < 0) {
            pthread_mutex_lock(&run->dmu);
            md_dirsync_take(&run->dirsync, &ds);
            pthread_mutex_unlock(&run->dmu);
        }
    }
    md_dirsync_free(&ds);
    if (r == 0 && (nd > 0 || n > 0)) {
        struct apply_ctx c = {.defer = snap, .ndefer = nd, .o = o, .no = n};
        r = idx_write(run->idx, apply_fn, &c);
        if (r == 0 && nd > 0) {
            pthread_mutex_lock(&run->dmu);
            deferred_drop(run, nd);
            pthread_mutex_unlock(&run->dmu);
        }
    }
    free(snap);
    pthread_mutex_unlock(&run->wmu);
    return r;
}

/* Reports engine_write's failure for e's folder (NULL: none) and the run. */
static void write_failed(struct engine *run, struct session *e, int r, const char *dserr)
{
    if (dserr != NULL) {
        bool full = r == -ENOSPC || r == -EDQUOT;
        if (e != NULL && full) {
            folder_fail_transient(e, "%s", dserr);
        } else if (e != NULL) {
            folder_fail(e, "%s", dserr);
        }
        run_error(run, full ? SYNC_TRANSIENT : SYNC_PERMANENT, "%s", dserr);
    } else if (e != NULL) {
        folder_fail_idx(e, r);
    }
}

void engine_write_failed(struct session *e, int r, char *dserr)
{
    write_failed(e->run, e, r, dserr);
    free(dserr);
}

void engine_write_lost(struct engine *run, int r, char *dserr)
{
    if (dserr != NULL) {
        write_failed(run, NULL, r, dserr);
    } else {
        bool tr = idx_err_transient(run->acct, r);
        run_error(run, tr ? SYNC_TRANSIENT : SYNC_PERMANENT, "index: %s", idx_error(run->idx));
    }
    free(dserr);
}

int idx_apply(struct session *e, const struct idx_ops *o)
{
    return idx_apply_many(e, o, 1);
}

int idx_apply_many(struct session *e, const struct idx_ops *o, size_t n)
{
    if (e->opts.dry_run) {
        return 0;
    }
    char *dserr;
    int r = engine_write(e->run, o, n, &dserr);
    if (r < 0) {
        engine_write_failed(e, r, dserr);
    }
    return r;
}

/* Writes what was deferred. Returns 0 or the error: the directories' (said
 * for e's folder and the run, *idx_failed false) or the index's (*idx_failed
 * true, reported by the caller). */
static int deferred_flush(struct engine *run, struct session *e, bool *idx_failed)
{
    *idx_failed = false;
    pthread_mutex_lock(&run->dmu);
    size_t nd = run->ndefer;
    pthread_mutex_unlock(&run->dmu);
    if (nd == 0 || run->idx == NULL) {
        return 0;
    }
    char *dserr;
    int r = engine_write(run, NULL, 0, &dserr);
    if (r < 0 && dserr != NULL) {
        write_failed(run, e, r, dserr);
    } else if (r < 0) {
        *idx_failed = true;
    }
    free(dserr);
    return r;
}

/* The MAILBOXID (RFC 8474) the server gave for the folder e is syncing,
 * when o writes that folder's state: the SELECT's, else LIST-STATUS's;
 * NULL when it gave none (the index keeps what it had). */
static const char *synced_mailboxid(const struct session *e, const struct idx_ops *o)
{
    const struct fstate *f = e->f;
    if (o->st == NULL || f == NULL || f->job == NULL || strcmp(f->job->name, o->folder) != 0) {
        return NULL;
    }
    if (f->selected && f->mb.mailboxid[0] != '\0') {
        return f->mb.mailboxid;
    }
    const struct fjob *j = f->job;
    if (j->has_status && (j->status.have & IMAP_STATUS_MAILBOXID)) {
        return j->status.mailboxid;
    }
    return NULL;
}

/* idx_apply for a write that may wait (see above); o has no drop_lids. */
void idx_apply_later(struct session *e, const struct idx_ops *o)
{
    if (e->opts.dry_run) {
        return;
    }
    struct engine *run = e->run;
    struct deferred_ops dd = {0}, *d = &dd;
    d->folder = xstrdup(o->folder);
    if (o->nputs > 0) {
        d->puts = xmalloc(o->nputs * sizeof(*d->puts));
        memcpy(d->puts, o->puts, o->nputs * sizeof(*d->puts));
        d->nputs = o->nputs;
    }
    if (o->ndrops > 0) {
        d->drops = xmalloc(o->ndrops * sizeof(*d->drops));
        memcpy(d->drops, o->drops, o->ndrops * sizeof(*d->drops));
        d->ndrops = o->ndrops;
    }
    if (o->st != NULL) {
        d->has_st = true;
        d->st = *o->st;
        const char *id = synced_mailboxid(e, o);
        d->mailboxid = id != NULL ? xstrdup(id) : NULL;
    }
    if (o->meta_key != NULL) {
        d->meta_key = xstrdup(o->meta_key);
        d->meta_val = xmalloc(o->meta_len + 1);
        memcpy(d->meta_val, o->meta_val, o->meta_len);
        d->meta_len = o->meta_len;
    }
    pthread_mutex_lock(&run->dmu);
    xgrow(&run->defer, &run->defer_cap, run->ndefer + 1, sizeof(*run->defer));
    run->defer[run->ndefer++] = dd;
    run->defer_rows += o->nputs + o->ndrops + 1;
    bool full = run->defer_rows >= DEFER_MAX_ROWS || run->ndefer >= DEFER_MAX_FOLDERS;
    pthread_mutex_unlock(&run->dmu);
    if (full) {
        bool idx_failed;
        int r = deferred_flush(run, e, &idx_failed);
        if (r < 0 && idx_failed) {
            folder_fail_idx(e, r); /* the directories went, the index write did not */
        }
    }
}

/* ---- the end of a session and of the run ------------------------------------------------- */

static void on_run_closed(uv_handle_t *h)
{
    struct engine *r = h->data;
    free(r->demand);
    free(r->sessions);
    for (size_t i = 0; i < r->njobs; i++) {
        free(r->jobs[i].name);
        free(r->jobs[i].notice);
        local_changes_free(r->jobs[i].lchanges, r->jobs[i].nlchanges);
        if (r->jobs[i].res != NULL) {
            /* res is NULL when LIST failed before the folders were set up. */
            free((char *)r->jobs[i].res->error);
        }
    }
    free(r->jobs);
    free(r->order);
    free(r->fres);
    free(r->trash);
    listed_free(r);
    free(r->plan_srv);
    free(r->plan_loc);
    md_free_names(r->plan_names, r->plan_nloc);
    md_free_names(r->plan_bad, r->plan_nbad);
    renames_free(r);
    folderplan_free(r->fplan);
    strindex_free(&r->job_ix);
    moves_claims_free(r);
    moves_orphans_free(r);
    free(r->error);
    pthread_mutex_destroy(&r->wmu);
    pthread_mutex_destroy(&r->dmu);
    free(r);
}

static void on_wake_closed(uv_handle_t *h)
{
    struct engine *r = h->data;
    uv_close((uv_handle_t *)&r->timer, on_run_closed);
}

/* The run's last deferred writes, once every session ended: on the thread
 * pool, like a session's (dflush_job), so that the directories' fsync and
 * the durable commit do not hold up the loop and every other account on
 * it (the longest stall of a first download was this write). */
struct final_job {
    uv_work_t req;
    struct engine *r;
    int rc;
    char *dserr;
};

static void run_report(struct engine *r);

static void final_work(uv_work_t *req)
{
    struct final_job *j = req->data;
    j->rc = engine_write(j->r, NULL, 0, &j->dserr);
}

static void final_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct final_job *j = req->data;
    struct engine *r = j->r;
    if (j->rc < 0 && j->dserr != NULL) {
        write_failed(r, NULL, j->rc, j->dserr);
    } else if (j->rc < 0) {
        /* The folders' last records are lost; the next run compares them
         * again (nothing is lost or copied twice), but this run did not
         * finish. */
        bool tr = idx_err_transient(r->acct, j->rc);
        run_error(r, tr ? SYNC_TRANSIENT : SYNC_PERMANENT, "index: %s%s", idx_error(r->idx),
                  tr && j->rc == -EIO ? " (the file system holding it is full)" : "");
    }
    free(j->dserr);
    free(j);
    run_report(r);
}

/* The last session ended: the deferred index writes go in (final_work),
 * the result is reported, and the run is freed. */
static void on_run_timer(uv_timer_t *t)
{
    struct engine *r = t->data;
    pthread_mutex_lock(&r->dmu);
    size_t nd = r->ndefer;
    pthread_mutex_unlock(&r->dmu);
    if (r->idx != NULL && nd > 0) {
        struct final_job *j = xcalloc(1, sizeof(*j));
        j->req.data = j;
        j->r = r;
        if (uv_queue_work(r->loop, &j->req, final_work, final_done) != 0) {
            final_work(&j->req); /* cannot happen with a valid loop */
            final_done(&j->req, 0);
        }
        return;
    }
    run_report(r);
}

static void run_report(struct engine *r)
{
    r->idx = NULL;
    if (r->own_account) {
        account_free(r->account); /* closes the index */
        r->account = NULL;
    }
    deferred_free(r);
    free(r->defer);
    r->defer = NULL;
    md_dirsync_free(&r->dirsync);
    struct engine_result *res = &r->res;
    res->account = r->acct->name;
    res->kind = r->error != NULL ? r->kind : SYNC_OK;
    res->error = r->error;
    res->dry_run = r->opts.dry_run;
    res->folders = r->fres;
    res->nfolders = r->njobs;
    memset(&res->total, 0, sizeof(res->total));
    res->folder_errors = 0;
    for (size_t i = 0; i < r->njobs; i++) {
        const struct engine_counts *c = &r->fres[i].counts;
        struct engine_counts *t2 = &res->total;
        t2->new_down += c->new_down;
        t2->new_up += c->new_up;
        t2->flags_down += c->flags_down;
        t2->flags_up += c->flags_up;
        t2->deleted_down += c->deleted_down;
        t2->deleted_up += c->deleted_up;
        t2->skipped += c->skipped;
        t2->skipped_size += c->skipped_size;
        t2->skipped_age += c->skipped_age;
        t2->adopted += c->adopted;
        t2->moved += c->moved;
        t2->bytes_down += c->bytes_down;
        t2->bytes_up += c->bytes_up;
        if (r->fres[i].error != NULL) {
            res->folder_errors++;
        }
    }
    res->folders_transient = true;
    for (size_t i = 0; i < r->njobs; i++) {
        if (r->fres[i].error != NULL && !r->fres[i].transient) {
            res->folders_transient = false;
        }
    }
    if (res->kind == SYNC_OK && res->folder_errors > 0) {
        /* A folder that needs the user (guard, vanished folder) makes the
         * run fail without hiding the folders that did sync; a full disk
         * alone is a reason to try again later. */
        res->kind = res->folders_transient ? SYNC_TRANSIENT : SYNC_PERMANENT;
    }
    r->done(res, r->done_arg);
    uv_close((uv_handle_t *)&r->wake, on_wake_closed);
}

static void on_session_closed(uv_handle_t *h)
{
    struct session *e = h->data;
    struct engine *r = e->run;
    for (size_t i = 0; i < r->nsessions; i++) {
        if (r->sessions[i] == e) {
            r->sessions[i] = NULL;
        }
    }
    if (r->lister == e) {
        r->lister = NULL;
    }
    free(e->selected);
    free(e->log_name);
    free(e);
    if (--r->sessions_running == 0) {
        /* The index and the folder results stay until the last session
         * ends. */
        uv_timer_start(&r->timer, on_run_timer, 0, 0);
    }
}

/* A session ended (from the loop, after finish). */
static void on_timer(uv_timer_t *t)
{
    struct session *e = t->data;
    uv_close((uv_handle_t *)&e->timer, on_session_closed);
}

/* A job of the folder that the teardown waits for is on the thread pool:
 * a batch being made durable, local files read, or the downloads' writes
 * (each job calls pool_job_back when it is back). */
static bool folder_on_pool(const struct fstate *f)
{
    return f != NULL && (f->flushing != NULL || f->reading || diskq_busy(f->dq));
}

/* The same for the session: its folder's jobs, or the run's deferred
 * writes it started (dflush_start). */
static bool session_on_pool(const struct session *e)
{
    return e->dflushing || folder_on_pool(e->f);
}

static void finish(struct session *e)
{
    if (e->finished) {
        return;
    }
    e->finished = true;
    if (e->secret_wait != NULL) {
        account_secret_cancel(e->secret_wait);
        e->secret_wait = NULL;
    }
    if (e->im != NULL) {
        e->ro->free(e->im);
        e->im = NULL;
    }
    if (session_on_pool(e)) {
        /* The thread pool still writes the folder's batch: flush_done
         * records it and then ends the run. */
        e->teardown_pending = true;
        return;
    }
    finish_teardown(e);
}

bool pool_job_back(struct session *e)
{
    if (!e->finished) {
        return true;
    }
    if (e->teardown_pending && !session_on_pool(e)) {
        finish_teardown(e);
    }
    return false;
}

void finish_teardown(struct session *e)
{
    e->teardown_pending = false;
    fstate_free(e->f);
    e->f = NULL;
    uv_timer_stop(&e->timer);
    uv_timer_start(&e->timer, on_timer, 0, 0);
}

/* ---- connection ------------------------------------------------------------------- */

/* Whether the connection is gone. imap_fail completes every command still
 * queued or in flight with an error before it calls on_imap_error, so
 * inside those completions conn_dead is not set yet: the connection's own
 * state says it. Nothing may advance a folder then: a listing cut short
 * would look complete (invariant 9). */
bool conn_lost(const struct session *e)
{
    return e->conn_dead || (e->im != NULL && e->ro->state(e->im) == IMAP_STATE_FAILED);
}

/* How a connection failure is reported: a refused login needs the user, and
 * so does a certificate that fails verification or a port that does not
 * speak TLS (nothing changes by waiting); the rest (drops, resets,
 * timeouts, malformed replies, a BYE) clears up by trying again. */
static enum sync_kind conn_error_kind(int err)
{
    if (err == IMAP_EAUTH) {
        return SYNC_AUTH;
    }
    if (err == IMAP_ENOTLS || net_err_permanent(err)) {
        return SYNC_PERMANENT;
    }
    return SYNC_TRANSIENT;
}

static void on_imap_error(struct imap *im, int err, const char *msg, void *arg)
{
    struct session *e = arg;
    e->conn_dead = true;
    if (e->logged_out) {
        /* Every folder had finished and LOGOUT was on its way. */
        return;
    }
    if (e->f != NULL && e->f->nbatch > 0 && !e->opts.dry_run) {
        /* Messages received whole before the drop are kept (durable, then
         * recorded), so that a flaky connection still makes progress. */
        flush_batch(e);
    }
    const char *why = msg != NULL ? msg : "connection failed";
    if (conn_error_kind(err) == SYNC_AUTH) {
        account_secret_refused(e->account);
    }
    set_error(e, conn_error_kind(err), "%s", why);
    /* A folder job this connection had taken (synced, created on the
     * server, or deleted there) is unfinished. */
    struct fjob *held = e->f != NULL ? e->f->job : e->creating != NULL ? e->creating : e->deleting;
    if (held != NULL) {
        /* A session lost a folder half-way: the run is incomplete for a
         * transient reason. */
        run_error(e->run, SYNC_TRANSIENT, "%s", why);
    }
    if (e->f != NULL) {
        folder_fail_transient(e, "%s", why);
    } else if (held != NULL && held->res != NULL && held->res->error == NULL) {
        held->res->error = xasprintf("folder '%s': %s", held->name, why);
        held->res->transient = true;
    }
    finish(e);
}

/* Server data that the folder being listed does not take: the owner of a
 * session hears which folder it concerns, to sync it again. */
static void note_dirty(struct session *e, const struct imap_event *ev, const char *current)
{
    if (e->finished) {
        return;
    }
    const char *name = NULL;
    if (ev->type == IMAP_EV_STATUS && ev->status != NULL) {
        name = ev->status->folder;
    } else if (ev->type == IMAP_EV_EXISTS || ev->type == IMAP_EV_EXPUNGE ||
               ev->type == IMAP_EV_VANISHED || ev->type == IMAP_EV_FETCH) {
        name = current;
    }
    if (name != NULL) {
        account_mark_dirty(e->account, name);
        if (e->opts.on_dirty != NULL) {
            e->opts.on_dirty(name, e->opts.session_arg);
        }
    }
}

static void on_imap_event(struct imap *im, const struct imap_event *ev, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    if (f == NULL) {
        /* Between folder jobs: the last selected folder's. */
        note_dirty(e, ev, e->selected);
        return;
    }
    if (f->phase > FP_FETCH) {
        /* After the folder's listing: new mail or an expunge this sync
         * does not see. (A FETCH may be the echo of this sync's own
         * STORE.) */
        if (ev->type != IMAP_EV_FETCH) {
            note_dirty(e, ev, f->job->name);
        }
        return;
    }
    if (ev->type == IMAP_EV_STATUS) {
        note_dirty(e, ev, NULL);
        return;
    }
    if (f->phase == FP_SELECT && !f->qresync) {
        /* Only a QRESYNC SELECT reports changes with its answer; anything
         * else before the SELECT ends may be the previous folder's, or the
         * SELECT's own counts. */
        return;
    }
    if (ev->type == IMAP_EV_VANISHED) {
        for (size_t i = 0; i < ev->nranges; i++) {
            for (uint64_t u = ev->ranges[i].lo; u <= ev->ranges[i].hi; u++) {
                /* Only UIDs we know matter; huge ranges of unknown UIDs
                 * are common (VANISHED (EARLIER) 1:1000) and are cut to
                 * what the base holds. */
                if (u > f->st.uidnext && f->st.uidnext != 0) {
                    break;
                }
                xgrow(&f->vanished, &f->vanished_cap, f->nvanished + 1, sizeof(*f->vanished));
                f->vanished[f->nvanished++] = (uint32_t)u;
            }
        }
    } else if (ev->type == IMAP_EV_FETCH && ev->msg != NULL && ev->msg->uid != 0 &&
               (ev->msg->have & IMAP_FETCH_FLAGS)) {
        const struct imap_msg *m = ev->msg;
        xgrow(&f->smsgs, &f->smsgs_cap, f->nsmsgs + 1, sizeof(*f->smsgs));
        struct smsg *s = &f->smsgs[f->nsmsgs++];
        memset(s, 0, sizeof(*s));
        s->uid = m->uid;
        s->flags = imap_to_md(m->flags);
        s->kw = xcalloc(m->nkeywords + 1, sizeof(char *));
        for (size_t i = 0; i < m->nkeywords; i++) {
            if (is_forwarded(m->keywords[i])) {
                s->flags |= MD_FLAG_PASSED;
            } else if (m->keywords[i][0] != '\\') {
                s->kw[s->nkw++] = xstrdup(m->keywords[i]);
            }
        }
    }
}

/* ---- folder list ------------------------------------------------------------------------------
 */

/* The job syncing a folder's local directory (INBOX in any case), through
 * a hash: an account may have 50,000 folders. */
struct fjob *find_job(struct engine *r, const char *name)
{
    uint64_t h = folderplan_local_hash(name);
    size_t it = 0, i;
    while (strindex_next(&r->job_ix, h, &it, &i)) {
        if (folderplan_same_local(r->jobs[i].name, name)) {
            return &r->jobs[i];
        }
    }
    return NULL;
}

static void listed_free(struct engine *r)
{
    for (size_t i = 0; i < r->nlisted; i++) {
        free(r->listed[i].name);
    }
    free(r->listed);
    r->listed = NULL;
    r->nlisted = r->listed_cap = 0;
}

/* Every folder is kept as listed; which of them are synced is the folder
 * planner's decision, once the whole list is in (on_list_done). */
static void on_list_folder(struct imap *im, const struct imap_folder *fo, void *arg)
{
    struct session *e = arg;
    if (fo->name == NULL) {
        /* Said on every run, so the user knows why it never appears. */
        log_warnx("%s: folder %s is not synced: %s", e->acct->name, fo->raw_name,
                  fo->unsyncable != NULL ? fo->unsyncable : "unusable name");
        return;
    }
    xgrow(&e->run->listed, &e->run->listed_cap, e->run->nlisted + 1, sizeof(*e->run->listed));
    struct listed *l = &e->run->listed[e->run->nlisted++];
    l->name = xstrdup(fo->name);
    l->attrs = fo->attrs;
    l->has_status = fo->has_status;
    l->status_skipped = false;
    l->status = fo->status;
    l->status.folder = NULL;
}

/* ---- sessions: the job order, logging in and out ----------------------------------------- */

static void on_logout_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (res->err < 0 && res->err != IMAP_EBYE) {
        log_debug("%s: LOGOUT: %s", e->acct->name, res->text != NULL ? res->text : "failed");
    }
    finish(e);
}

static void on_logout_timeout(uv_timer_t *t)
{
    struct session *e = t->data;
    log_debug("%s: no answer to LOGOUT; closing the connection", e->acct->name);
    finish(e);
}

static void phase(struct session *e, enum engine_phase p)
{
    if (e == e->run->lister && e->opts.on_phase != NULL && !e->finished) {
        e->opts.on_phase(p, e->opts.session_arg);
    }
}

/* A folder synced again on demand starts from a clean result, and always
 * SELECTs: the LIST-STATUS figures the run started with are old now. */
static void demand_reset(struct fjob *j)
{
    struct engine_folder_result *res = j->res;
    free((char *)res->error);
    res->error = NULL;
    res->notice = NULL;
    free(j->notice);
    j->notice = NULL;
    res->transient = false;
    memset(&res->counts, 0, sizeof(res->counts));
    /* The pass's LIST-STATUS is old news; a sweep's is not (see
     * fresh_status). */
    j->has_status = j->fresh_status;
    j->fresh_status = false;
    j->server_lost = false; /* it goes now: the next note is news */
    j->on_demand = true;
}

void local_changes_free(struct local_change *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(c[i].name);
    }
    free(c);
}

/* Starts a folder job, noting when (engine_folder_result.started_ns). */
static void job_start(struct session *e, struct fjob *j)
{
    j->res->started_ns = uv_hrtime();
    local_changes_free(j->lchanges, j->nlchanges);
    j->lchanges = NULL;
    j->nlchanges = 0;
    j->quiet_since_ns =
        e->opts.local_quiet_since != NULL
            ? e->opts.local_quiet_since(j->name, e->opts.session_arg, &j->lchanges, &j->nlchanges)
            : 0;
    e->dflush_failed = false;
    start_folder(e, j);
}

static void wake_idle(struct engine *r);
static bool status_lost(const struct idx_folder *was, const struct imap_status_info *now);

static void on_wake(uv_timer_t *t)
{
    wake_idle(t->data);
}

/* A session waiting for folder jobs (stay_open) goes on: the next job
 * asked for, or, when closing, LOGOUT. */
static void wake_idle(struct engine *r)
{
    for (size_t i = 0; i < r->nsessions; i++) {
        struct session *e = r->sessions[i];
        if (e != NULL && e->idle) {
            e->idle = false;
            if (!r->closing) {
                phase(e, ENGINE_PHASE_SYNCING);
            }
            next_folder(e);
            return;
        }
    }
}

int engine_sync_folder(struct engine *r, const char *folder)
{
    if (!r->opts.stay_open) {
        return -EINVAL;
    }
    struct session *e = r->lister;
    if (r->closing || e == NULL || e->finished || conn_lost(e)) {
        return -ESHUTDOWN;
    }
    struct fjob *j = find_job(r, folder);
    if (j == NULL || j->res == NULL) {
        return -ENOENT;
    }
    switch (j->plan->action) {
    case FOLDERPLAN_SYNC:
    case FOLDERPLAN_CREATE_LOCAL:
    case FOLDERPLAN_CREATE_SERVER:
    case FOLDERPLAN_RESYNC:
    case FOLDERPLAN_RENAME_SERVER:
    case FOLDERPLAN_RENAME_LOCAL:
        break;
    default:
        return -ENOENT; /* not a folder this account syncs */
    }
    if (!j->on_server) {
        return -ENOENT; /* its CREATE failed */
    }
    if (j->queued) {
        /* Asked for again after a sweep listed it: the server may have
         * moved since that listing. */
        j->fresh_status = false;
    } else {
        j->queued = true;
        xgrow(&r->demand, &r->demand_cap, r->ndemand + 1, sizeof(*r->demand));
        r->demand[r->ndemand++] = (size_t)(j - r->jobs);
    }
    if (!uv_is_active((uv_handle_t *)&r->wake)) {
        uv_timer_start(&r->wake, on_wake, 0, 0);
    }
    return 0;
}

void engine_note_server(struct engine *r, const char *folder, const struct imap_status_info *st,
                        bool expunged)
{
    struct fjob *j = find_job(r, folder);
    if (j == NULL || j->server_lost || r->idx == NULL) {
        return;
    }
    if (expunged) {
        j->server_lost = true;
        return;
    }
    const unsigned need = IMAP_STATUS_MESSAGES | IMAP_STATUS_UIDNEXT | IMAP_STATUS_UIDVALIDITY;
    if (st == NULL || (st->have & need) != need) {
        return;
    }
    struct idx_txn *txn;
    struct idx_folder was;
    if (idx_begin(r->idx, false, &txn) != 0) {
        return;
    }
    if (idx_folder_get(txn, j->name, &was) == 0) {
        j->server_lost = status_lost(&was, st);
    }
    idx_abort(txn);
}

/* ---- STATUS where LIST-STATUS is not offered ----------------------------------------------- */

/* A server without LIST-STATUS (RFC 5819) is asked STATUS of each folder
 * the account syncs, all pipelined: one round trip for the lot. What it
 * tells is what LIST-STATUS would have told: the order of the pass
 * (folders that lost messages first, see struct engine's order), the
 * folders to skip without a SELECT (with HIGHESTMODSEQ), whether more
 * connections pay off, and renames by UIDVALIDITY. */
struct statfill {
    struct session *e;
    struct listed *v;
    size_t pending;
    bool failed; /* the connection went: the caller's own check ends it */
    void (*cont)(struct session *e, bool failed, void *arg);
    void *arg;
};

struct statask {
    struct statfill *sf;
    size_t i;
};

static void on_fill_status(struct imap *im, const struct imap_status_info *st, void *arg)
{
    (void)im;
    struct statask *q = arg;
    struct listed *l = &q->sf->v[q->i];
    l->status = *st;
    l->status.folder = NULL;
    l->has_status = (st->have & IMAP_STATUS_UIDVALIDITY) && (st->have & IMAP_STATUS_UIDNEXT) &&
                    (st->have & IMAP_STATUS_MESSAGES);
}

static void fill_release(struct statfill *sf)
{
    if (--sf->pending == 0) {
        struct session *e = sf->e;
        bool failed = sf->failed;
        void (*cont)(struct session *, bool, void *) = sf->cont;
        void *cont_arg = sf->arg;
        free(sf);
        cont(e, failed, cont_arg);
    }
}

static void on_fill_done(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct statask *q = arg;
    struct statfill *sf = q->sf;
    free(q);
    /* A NO (the folder deleted since the LIST), or a STATUS the client
     * refused to send (a name it cannot give this server), leaves it
     * without figures: its job finds out, as without STATUS. Only a dead
     * connection fails the lot (on_imap_error ends the session). */
    sf->failed |= res->err < 0 && !refused_locally(sf->e, res);
    fill_release(sf);
}

/* Asks STATUS of the folders of v (n listed) that the account syncs when
 * the server listed them without one. Returns true when it did: cont
 * follows once every answer is in (failed if the connection went); false
 * when there is nothing to ask, and cont is not called. */
static bool statuses_ask(struct session *e, struct listed *v, size_t n,
                         void (*cont)(struct session *e, bool failed, void *arg), void *arg)
{
    unsigned caps = e->ro->caps(e->im);
    if (e->ro->status == NULL || (caps & IMAP_CAP_LIST_STATUS)) {
        return false;
    }
    unsigned items = IMAP_STATUS_MESSAGES | IMAP_STATUS_UIDNEXT | IMAP_STATUS_UIDVALIDITY;
    if (caps & IMAP_CAP_CONDSTORE) {
        items |= IMAP_STATUS_HIGHESTMODSEQ;
    }
    if (caps & IMAP_CAP_OBJECTID) {
        items |= IMAP_STATUS_MAILBOXID;
    }
    struct statfill *sf = xcalloc(1, sizeof(*sf));
    sf->e = e;
    sf->v = v;
    sf->cont = cont;
    sf->arg = arg;
    /* Without CONDSTORE only a folder that is empty can be known unchanged
     * without a SELECT (status_unchanged); one that held messages at its
     * last sync is selected whatever its STATUS says. For a large one the
     * STATUS costs what the SELECT does (Dovecot opens the folder for
     * either: 48 ms at 100,000 messages), and the SELECT tells the same,
     * so it is not asked. What it would have told the pass is unknown then
     * (status_skipped): see the order in plan_folders and start_sessions. */
    struct idx_txn *txn = NULL;
    if (!(caps & (IMAP_CAP_CONDSTORE | IMAP_CAP_OBJECTID)) && e->idx != NULL &&
        idx_begin(e->idx, false, &txn) != 0) {
        txn = NULL;
    }
    sf->pending = 1; /* held until every command is queued */
    for (size_t i = 0; i < n; i++) {
        struct listed *l = &v[i];
        if (l->has_status || (l->attrs & (IMAP_LIST_NOSELECT | IMAP_LIST_NONEXISTENT)) ||
            !sync_folder_selected(e->acct, l->name)) {
            continue;
        }
        struct idx_folder was;
        if (txn != NULL && idx_folder_get(txn, l->name, &was) == 0 && was.uidvalidity != 0 &&
            was.messages >= STATUS_SKIP_MIN) {
            l->status_skipped = true;
            log_debug("%s: %s: no STATUS asked (no CONDSTORE, %u messages at the last sync): "
                      "its SELECT tells",
                      e->log_name != NULL ? e->log_name : e->acct->name, l->name, was.messages);
            continue;
        }
        struct statask *q = xcalloc(1, sizeof(*q));
        q->sf = sf;
        q->i = i;
        if (e->ro->status(e->im, l->name, items, on_fill_status, on_fill_done, q) < 0) {
            free(q);
            sf->failed = true;
            break;
        }
        sf->pending++;
    }
    if (txn != NULL) {
        idx_abort(txn);
    }
    if (sf->pending == 1 && !sf->failed) {
        free(sf);
        return false;
    }
    fill_release(sf); /* cont follows the last answer (or now, if queueing failed) */
    return true;
}

/* ---- sweeps on the open connection --------------------------------------------------------- */

struct sweep {
    struct engine *r;
    struct session *e;
    struct listed *v;
    size_t n, cap;
    engine_sweep_cb cb;
    void *arg;
};

static void sweep_free(struct sweep *sw)
{
    for (size_t i = 0; i < sw->n; i++) {
        free(sw->v[i].name);
    }
    free(sw->v);
    free(sw);
}

static void on_sweep_folder(struct imap *im, const struct imap_folder *fo, void *arg)
{
    (void)im;
    struct sweep *sw = arg;
    if (fo->name == NULL) {
        return; /* said by the pass's own listing */
    }
    xgrow(&sw->v, &sw->cap, sw->n + 1, sizeof(*sw->v));
    struct listed *l = &sw->v[sw->n++];
    l->name = xstrdup(fo->name);
    l->attrs = fo->attrs;
    l->has_status = fo->has_status;
    l->status_skipped = false;
    l->status = fo->status;
    l->status.folder = NULL;
}

static const struct listed *sweep_find(const struct listed *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].name, name) == 0) {
            return &v[i];
        }
    }
    return NULL;
}

/* Whether the server lists the same folders, with the same attributes, as
 * when the pass began (the folder plan holds for them). */
static bool sweep_same_folders(const struct engine *r, const struct sweep *sw)
{
    if (sw->n != r->nlisted) {
        return false;
    }
    for (size_t i = 0; i < sw->n; i++) {
        const struct listed *was = sweep_find(r->listed, r->nlisted, sw->v[i].name);
        /* \Marked, \Unmarked and \HasChildren come and go with the mail
         * and the children; what the folder plan decided on does not. */
        unsigned keep = ~(unsigned)(IMAP_LIST_MARKED | IMAP_LIST_UNMARKED | IMAP_LIST_HASCHILDREN |
                                    IMAP_LIST_HASNOCHILDREN);
        if (was == NULL || (was->attrs & keep) != (sw->v[i].attrs & keep)) {
            return false;
        }
    }
    return true;
}

static void sweep_queue(struct session *e, bool failed, void *arg);

static void on_sweep_done(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct sweep *sw = arg;
    struct session *e = sw->e;
    struct engine *r = sw->r;
    r->sweeping = false;
    if (res->err < 0 || e->finished || r->closing) {
        sweep_free(sw); /* the session ends: its done callback follows */
        return;
    }
    if (res->status != IMAP_STATUS_OK || !sweep_same_folders(r, sw)) {
        log_debug("%s: sweep: %s; a new pass", e->acct->name,
                  res->status != IMAP_STATUS_OK ? "LIST refused" : "the folder list changed");
        engine_sweep_cb cb = sw->cb;
        void *cb_arg = sw->arg;
        sweep_free(sw);
        cb(ENGINE_SWEEP_NEW_PASS, 0, cb_arg);
        return;
    }
    r->sweeping = true;
    if (!statuses_ask(e, sw->v, sw->n, sweep_queue, sw)) {
        sweep_queue(e, false, sw);
    }
}

/* The sweep, once every folder's figures are in. */
static void sweep_queue(struct session *e, bool failed, void *arg)
{
    struct sweep *sw = arg;
    struct engine *r = sw->r;
    r->sweeping = false;
    if (failed || e->finished || r->closing) {
        sweep_free(sw);
        return;
    }
    /* Every folder is queued, with the status just listed: one that moved
     * on neither side ends without a SELECT or a directory read (the
     * change-time shortcut), the others sync as usual. Those not asked
     * STATUS (statuses_ask) are queued first: they may have lost messages,
     * and only the folders STATUS says lost some jump the queue. */
    unsigned queued = 0;
    for (size_t k = 0; k < 2 * r->njobs; k++) {
        struct fjob *j = &r->jobs[k % r->njobs];
        const struct listed *l = sweep_find(sw->v, sw->n, j->name);
        if (l == NULL || j->res == NULL || j->queued || l->status_skipped != (k < r->njobs)) {
            continue;
        }
        /* Set first: the job may start inside engine_sync_folder. The
         * folder this connection has selected is not trusted: a server
         * answers STATUS for it from the session's own view, which has
         * not seen new mail yet (Dovecot does), so it is selected again. */
        j->status = l->status;
        j->fresh_status =
            l->has_status && (e->selected == NULL || strcmp(e->selected, j->name) != 0);
        if (j->fresh_status) {
            engine_note_server(r, j->name, &l->status, false);
        }
        if (engine_sync_folder(r, j->name) == 0) {
            queued++;
        } else {
            j->fresh_status = false;
        }
    }
    log_debug("%s: sweep: %u folder%s queued", e->acct->name, queued, queued == 1 ? "" : "s");
    engine_sweep_cb cb = sw->cb;
    void *cb_arg = sw->arg;
    sweep_free(sw);
    cb(ENGINE_SWEEP_QUEUED, queued, cb_arg);
}

bool engine_is_idle(const struct engine *r)
{
    return r->lister != NULL && r->lister->idle && r->ndemand == 0;
}

int engine_sweep(struct engine *r, engine_sweep_cb cb, void *arg)
{
    if (!r->opts.stay_open) {
        return -EINVAL;
    }
    struct session *e = r->lister;
    if (r->closing || e == NULL || e->finished || conn_lost(e)) {
        return -ESHUTDOWN;
    }
    if (!e->idle || r->sweeping || r->ndemand > 0) {
        return -EBUSY;
    }
    struct sweep *sw = xcalloc(1, sizeof(*sw));
    sw->r = r;
    sw->e = e;
    sw->cb = cb;
    sw->arg = arg;
    if (e->ro->list(e->im, on_sweep_folder, on_sweep_done, sw) < 0) {
        sweep_free(sw);
        return -ESHUTDOWN;
    }
    r->sweeping = true;
    return 0;
}

void engine_close(struct engine *r)
{
    if (r == NULL || r->closing || r->lister == NULL || r->lister->finished) {
        return;
    }
    r->closing = true;
    for (size_t i = 0; i < r->ndemand; i++) {
        r->jobs[r->demand[i]].queued = false;
    }
    r->ndemand = 0;
    wake_idle(r);
}

/* The run's deferred writes, on the thread pool for a session that stays
 * open: a durable index commit (and the directories' fsync before it)
 * takes milliseconds, more while other writes fill the disk, and the loop
 * serves every account meanwhile. The session goes on (next_folder) when
 * it is back. */
struct dflush_job {
    uv_work_t req;
    struct session *e;
    struct engine *run;
    int r;
    char *dserr;
};

static void dflush_work(uv_work_t *req)
{
    struct dflush_job *j = req->data;
    j->r = engine_write(j->run, NULL, 0, &j->dserr);
}

static void dflush_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct dflush_job *j = req->data;
    struct session *e = j->e;
    struct engine *run = j->run;
    e->dflushing = false;
    /* The records stay deferred (engine_write keeps them): the next try
     * is after the next folder job, not at once. */
    e->dflush_failed = j->r < 0;
    if (j->r < 0 && j->dserr != NULL) {
        write_failed(run, NULL, j->r, j->dserr);
    } else if (j->r < 0) {
        log_error("%s: index: %s (the next sync of those folders matches them again)",
                  e->acct->name, idx_error(run->idx));
    }
    free(j->dserr);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    next_folder(e);
}

static void dflush_start(struct session *e)
{
    struct dflush_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->run = e->run;
    e->dflushing = true;
    if (uv_queue_work(e->loop, &j->req, dflush_work, dflush_done) != 0) {
        /* Cannot happen with a valid loop; do it here then. */
        dflush_work(&j->req);
        dflush_done(&j->req, 0);
    }
}

void next_folder(struct session *e)
{
    if (e->finished) {
        return;
    }
    if (e->cancelled) {
        set_error(e, SYNC_TRANSIENT, "cancelled");
        finish(e);
        return;
    }
    struct engine *r = e->run;
    while (r->next_job < r->njobs) {
        struct fjob *j = &r->jobs[r->order[r->next_job++]];
        j->server_lost = false; /* its turn came */
        switch (j->plan->action) {
        case FOLDERPLAN_SYNC:
        case FOLDERPLAN_CREATE_LOCAL:
            job_start(e, j);
            return;
        case FOLDERPLAN_RESYNC:
            /* Messages of it that live in other local folders now keep
             * their records (and are deleted on the server); the rest is
             * downloaded again. */
            if (j->plan->moved_msgs == 0) {
                j->reset = true;
            } else if (resync_moved(e, j) < 0) {
                continue;
            }
            job_start(e, j);
            return;
        case FOLDERPLAN_RENAME_SERVER:
        case FOLDERPLAN_RENAME_LOCAL:
            /* renames_apply carried the rename out before the jobs began
             * (or set the folder's error); a dry run printed it, and the
             * sync of the renamed folder is planned by the real run. */
            if (e->opts.dry_run || j->res->error != NULL) {
                continue;
            }
            job_start(e, j);
            return;
        case FOLDERPLAN_DELETE_SERVER:
            if (server_folder_delete(e, j) == 0) {
                return; /* goes on from the callbacks */
            }
            continue;
        case FOLDERPLAN_CREATE_SERVER:
            if (e->opts.dry_run) {
                /* The real run creates it (empty) and then uploads what it
                 * holds: the plan says both. */
                fprintf(e->plan_out, "%s: create the folder on the server\n", j->name);
                job_start(e, j);
                return;
            }
            j->on_server = true;
            e->creating = j;
            if (e->ro->create(e->im, j->name, on_create_done, e) < 0) {
                j->res->error = xasprintf("folder '%s': cannot create it on the server", j->name);
                e->creating = NULL;
                continue;
            }
            return;
        case FOLDERPLAN_DELETE_LOCAL:
            local_folder_delete(e, j);
            continue;
        case FOLDERPLAN_REFUSE:
            /* Set when the folder's turn comes, as its result would be if
             * it were synced: a run that ends early does not report it. */
            j->res->error = xstrdup(j->plan->error);
            j->res->transient = !j->plan->user_fix;
            continue;
        case FOLDERPLAN_FORGET:
            /* A write transaction left open would block every later write
             * of this process; forget_folder ends it, and the next run
             * retries a failure. */
            (void)forget_folder(e, j->name);
            continue;
        case FOLDERPLAN_NONE:
            continue;
        }
    }
    if (r->norphans > 0 && !moves_pairing_pending(e)) {
        /* The pass (or the burst of jobs on demand) is over: orphans no
         * folder paired are deletions after all. */
        moves_orphans_expire(e);
    }
    if (e == r->lister && e->opts.stay_open && !r->closing && !conn_lost(e)) {
        /* A run that stays open does not end, and its deferred records
         * would wait for that: they go in now, before a folder job reads
         * its base again (else it would match its own downloads as files
         * it does not know) and before the session waits. */
        pthread_mutex_lock(&r->dmu);
        size_t nd = r->ndefer;
        pthread_mutex_unlock(&r->dmu);
        if (nd > 0 && !e->opts.dry_run && r->idx != NULL && !e->dflush_failed) {
            dflush_start(e); /* next_folder again when it is back */
            return;
        }
        if (r->ndemand > 0) {
            /* A folder the server lost messages from first: a message
             * another client moved is parked there before its new folder
             * lists it (struct engine's order). */
            size_t k = 0;
            while (!r->jumped && k < r->ndemand && !r->jobs[r->demand[k]].server_lost) {
                k++;
            }
            k = k < r->ndemand && !r->jumped ? k : 0;
            /* One that jumped the queue lets the head go next: a folder
             * that loses mail during each of its syncs starves no other. */
            r->jumped = k > 0;
            struct fjob *j = &r->jobs[r->demand[k]];
            memmove(r->demand + k, r->demand + k + 1, (--r->ndemand - k) * sizeof(*r->demand));
            j->queued = false;
            demand_reset(j);
            job_start(e, j);
            return;
        }
        /* A session stays logged in for the next folder job. */
        e->idle = true;
        phase(e, ENGINE_PHASE_IDLE);
        if (e->opts.on_idle != NULL) {
            e->opts.on_idle(e->opts.session_arg);
        }
        return;
    }
    /* All folders are taken: a lane still logging in has nothing left to
     * do, so it is dropped rather than waited for. */
    for (size_t i = 0; i < r->nsessions; i++) {
        struct session *l = r->sessions[i];
        if (l != NULL && l != e && !l->ready && !l->finished) {
            finish(l);
        }
    }
    /* All folders done: log out cleanly (the server sees a LOGOUT, not a
     * dropped connection), but do not wait long for its BYE. */
    if (e->im != NULL && !conn_lost(e) && !e->logged_out) {
        phase(e, ENGINE_PHASE_LOGGING_OUT);
        e->logged_out = true;
        if (e->ro->logout(e->im, on_logout_done, e) == 0) {
            uv_timer_start(&e->timer, on_logout_timeout, LOGOUT_TIMEOUT_MS, 0);
            return;
        }
    }
    finish(e);
}

static void on_imap_ready(struct imap *im, void *arg);

static const struct imap_cb lane_cb = {
    .on_ready = on_imap_ready,
    .on_error = on_imap_error,
    .on_event = on_imap_event,
};

/* Opens up to max_connections - 1 more connections when at least two
 * folders have new mail on the server and there is enough of it: a
 * connection costs a TLS handshake and a login (tens of milliseconds), which
 * pays off for downloads, not for a few flag changes. Not for --dry-run,
 * whose plans print in folder order. */
/* A new session of the run, not connected yet. */
static struct session *session_new(struct engine *r)
{
    struct session *e = xcalloc(1, sizeof(*e));
    e->run = r;
    e->loop = r->loop;
    e->acct = r->acct;
    e->opts = r->opts;
    e->now = r->now;
    e->plan_out = r->plan_out;
    e->account = r->account;
    e->idx = r->idx;
    e->ro = r->ro;
    uv_timer_init(r->loop, &e->timer);
    e->timer.data = e;
    if (r->nsessions > 0) {
        e->log_name = xasprintf("%s#%zu", r->acct->name, r->nsessions + 1);
    }
    xgrow(&r->sessions, &r->sessions_cap, r->nsessions + 1, sizeof(*r->sessions));
    r->sessions[r->nsessions++] = e;
    r->sessions_running++;
    return e;
}

static void start_sessions(struct session *e)
{
    unsigned busy = 0;
    uint64_t est = 0;
    for (size_t i = 0; i < e->run->njobs; i++) {
        const struct fjob *j = &e->run->jobs[i];
        bool syncs =
            j->plan->action == FOLDERPLAN_SYNC || j->plan->action == FOLDERPLAN_CREATE_LOCAL;
        /* A folder not asked STATUS has unknown new mail, but its SELECT
         * and full flag listing are work another connection can overlap. */
        if (syncs && j->server_moved && (j->est_new > 0 || j->status_skipped)) {
            busy++;
            est += j->est_new;
        }
    }
    unsigned held = 1 + e->opts.reserved_connections; /* this session, the owner's */
    unsigned want = e->acct->max_connections > held ? e->acct->max_connections - held : 0;
    if (busy < 2 || est < LANE_MIN_MSGS || e->opts.dry_run || e->cancelled) {
        want = 0;
    } else if (want > busy - 1) {
        want = busy - 1;
    }
    for (unsigned i = 0; i < want; i++) {
        session_connect(session_new(e->run));
    }
}

/* Which folders the index knows (a lookup per folder rather than
 * idx_folder_foreach, which trips UBSan on an empty index: qsort of NULL;
 * reported in notes/requests-engine.md). */
static bool index_knows(const char *name, void *arg)
{
    struct idx_folder st;
    return idx_folder_get(arg, name, &st) == 0;
}

static int any_folder(const char *folder, const struct idx_folder *st, void *arg)
{
    (void)folder;
    (void)st;
    *(bool *)arg = true;
    return 1; /* one is enough */
}

static void list_continue(struct session *e, bool failed, void *arg);

static void on_list_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished || res->err < 0) {
        return;
    }
    if (res->status != IMAP_STATUS_OK) {
        set_error(e, SYNC_TRANSIENT, "LIST failed: %s", res->text != NULL ? res->text : "");
        finish(e);
        return;
    }
    if (!statuses_ask(e, e->run->listed, e->run->nlisted, list_continue, NULL)) {
        list_continue(e, false, NULL);
    }
}

/* on_list_done, once every folder's figures are in. */
static void list_continue(struct session *e, bool failed, void *arg)
{
    (void)arg;
    if (failed || e->finished) {
        return; /* on_imap_error ends the session */
    }
    account_list_begin(e->account);
    for (size_t i = 0; i < e->run->nlisted; i++) {
        const struct listed *l = &e->run->listed[i];
        account_list_add(e->account, l->name, l->attrs, l->has_status, &l->status);
    }
    char **names = NULL, **bad = NULL;
    size_t n = 0, nbad = 0;
    int lr = md_list_folders_unusable(e->acct->maildir, e->acct->layout, &names, &n, &bad, &nbad);
    struct idx_txn *txn;
    int ir = idx_begin(e->idx, false, &txn);
    if (ir != 0) {
        /* Without the index every folder would look new: nothing is
         * planned from that. */
        set_error(e, idx_err_transient(e->acct, ir) ? SYNC_TRANSIENT : SYNC_PERMANENT, "index: %s",
                  idx_error(e->idx));
        md_free_names(names, n);
        md_free_names(bad, nbad);
        finish(e);
        return;
    }
    bool known_any = false;
    if (lr == -ENOENT || (lr == 0 && n == 0)) {
        idx_folder_foreach(txn, any_folder, &known_any);
    }
    bool gone = lr == -ENOENT || (lr == 0 && n == 0);
    if ((lr < 0 && lr != -ENOENT) || (gone && known_any && !e->opts.force)) {
        /* A Maildir that is unmounted (an empty mount point), moved or
         * unreadable would read as every folder deleted locally: with
         * delete_folders, a DELETE of each on the server. A missing or
         * empty one the index never synced into is only a first run. */
        if (lr == 0 || lr == -ENOENT) {
            set_error(e, SYNC_PERMANENT,
                      "the Maildir %s %s, but the index knows folders synced into it: if it "
                      "is unmounted or was moved, mount it or set maildir: to its new place; "
                      "to download everything into a new one, run 'mailsync sync --force %s'",
                      e->acct->maildir, lr == 0 ? "holds no folder" : "is missing", e->acct->name);
        } else {
            set_error(e, SYNC_PERMANENT, "cannot list the Maildir %s: %s", e->acct->maildir,
                      strerror(-lr));
        }
        idx_abort(txn);
        md_free_names(names, n);
        md_free_names(bad, nbad);
        finish(e);
        return;
    }
    idx_abort(txn);
    struct engine *r = e->run;
    r->plan_srv = xcalloc(r->nlisted + 1, sizeof(*r->plan_srv));
    for (size_t i = 0; i < r->nlisted; i++) {
        struct folderplan_server *s = &r->plan_srv[i];
        const struct listed *l = &r->listed[i];
        s->name = l->name;
        s->attrs = l->attrs;
        s->selected = sync_folder_selected(e->acct, s->name);
        /* For renames: what LIST-STATUS said. */
        s->has_status = l->has_status && (l->status.have & IMAP_STATUS_UIDVALIDITY) &&
                        (l->status.have & IMAP_STATUS_UIDNEXT);
        s->uidvalidity = l->status.uidvalidity;
        s->uidnext = l->status.uidnext;
        s->messages = l->status.messages;
        s->mailboxid = (l->has_status && (l->status.have & IMAP_STATUS_MAILBOXID))
                           ? l->status.mailboxid
                           : NULL;
    }
    r->plan_loc = xcalloc(n + 1, sizeof(*r->plan_loc));
    for (size_t i = 0; i < n; i++) {
        r->plan_loc[i].name = names[i];
        r->plan_loc[i].selected = sync_folder_selected(e->acct, names[i]);
    }
    r->plan_names = names;
    r->plan_nloc = n;
    r->plan_bad = bad;
    r->plan_nbad = nbad;
    /* Renames a killed run left half done are finished (or dropped) first:
     * the plan then sees the folders where they are. */
    renames_recover(e);
    plan_folders(e);
}

/* The MAILBOXIDs the index records, for the folder planner: each answer
 * is kept until the plan is built. */
struct recorded_ids {
    struct idx_txn *txn;
    char **v;
    size_t n, cap;
};

static const char *recorded_mailboxid(const char *name, void *arg)
{
    struct recorded_ids *ri = arg;
    char id[IDX_MAILBOXID_MAX + 1];
    if (idx_folder_mailboxid_get(ri->txn, name, id) < 0 || id[0] == '\0') {
        return NULL;
    }
    xgrow(&ri->v, &ri->cap, ri->n + 1, sizeof(*ri->v));
    ri->v[ri->n] = xstrdup(id);
    return ri->v[ri->n++];
}

struct adopt {
    char **names;
    const char **ids;
    size_t n;
};

static int adopt_fn(struct idx_txn *txn, void *arg)
{
    const struct adopt *a = arg;
    for (size_t i = 0; i < a->n; i++) {
        int r = idx_folder_mailboxid_put(txn, a->names[i], a->ids[i]);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* A folder synced before this version recorded MAILBOXIDs, or whose SELECT
 * is skipped because nothing changed, gets the one LIST-STATUS gives when
 * its UIDVALIDITY says it is the folder the index knows. One whose
 * MAILBOXID changed under the same name was deleted and created again on
 * the server: that is said here, and the folder sync handles it as the
 * UIDVALIDITY change a server must make then (RFC 3501 section 2.3.1.1),
 * recording the new id afterwards. */
static void mailboxids_adopt(struct session *e)
{
    struct engine *r = e->run;
    if (e->opts.dry_run) {
        return;
    }
    struct idx_txn *txn;
    if (idx_begin(e->idx, false, &txn) != 0) {
        return; /* the planner's own read reports index failures */
    }
    char **names = NULL;
    const char **ids = NULL;
    size_t n = 0, cap = 0, icap = 0;
    for (size_t i = 0; i < r->njobs; i++) {
        const struct fjob *j = &r->jobs[i];
        if (j->plan->action != FOLDERPLAN_SYNC || !j->has_status ||
            !(j->status.have & IMAP_STATUS_MAILBOXID)) {
            continue;
        }
        struct idx_folder st;
        char known[IDX_MAILBOXID_MAX + 1];
        if (idx_folder_get(txn, j->name, &st) < 0 ||
            idx_folder_mailboxid_get(txn, j->name, known) < 0) {
            continue;
        }
        if (known[0] != '\0' && strcmp(known, j->status.mailboxid) != 0) {
            log_info("%s: folder %s has another MAILBOXID (%s, was %s): it was deleted and "
                     "created again on the server",
                     e->acct->name, j->name, j->status.mailboxid, known);
        } else if (known[0] == '\0' && st.uidvalidity != 0 &&
                   (j->status.have & IMAP_STATUS_UIDVALIDITY) &&
                   j->status.uidvalidity == st.uidvalidity) {
            xgrow(&names, &cap, n + 1, sizeof(*names));
            xgrow(&ids, &icap, n + 1, sizeof(*ids));
            names[n] = j->name;
            ids[n++] = j->status.mailboxid;
        }
    }
    idx_abort(txn);
    struct adopt a = {.names = names, .ids = ids, .n = n};
    if (n > 0 && idx_write(e->idx, adopt_fn, &a) < 0) {
        /* Only a shortcut is lost: the folder's next sync records it. */
        log_debug("%s: index: %s", e->acct->name, idx_error(e->idx));
    }
    free(names);
    free(ids);
}

/* Whether STATUS says the server lost messages the index knows of the
 * folder: fewer than it had plus every UID given since (expunged, or moved
 * away by another client). */
static bool status_lost(const struct idx_folder *was, const struct imap_status_info *now)
{
    return was->uidvalidity != 0 && now->uidvalidity == was->uidvalidity &&
           (uint64_t)now->messages + was->uidnext < (uint64_t)was->messages + now->uidnext;
}

/* Plans the folders from the listing kept in the run (again after renames
 * were checked on the server), and goes on: to those checks, or to the
 * folder jobs. */
void plan_folders(struct session *e)
{
    struct engine *r = e->run;
    if (e->finished) {
        return;
    }
    struct idx_txn *txn;
    int ir = idx_begin(e->idx, false, &txn);
    if (ir != 0) {
        set_error(e, idx_err_transient(e->acct, ir) ? SYNC_TRANSIENT : SYNC_PERMANENT, "index: %s",
                  idx_error(e->idx));
        finish(e);
        return;
    }
    struct folderplan_input in = {
        .server = r->plan_srv,
        .nserver = r->nlisted,
        .local = r->plan_loc,
        .nlocal = r->plan_nloc,
        .known = index_knows,
        .known_arg = txn,
        .delete_folders = e->acct->delete_folders,
        .moves = (e->ro->caps(e->im) & IMAP_CAP_UIDPLUS) != 0,
        .force = e->opts.force,
        .dry_run = e->opts.dry_run,
        .subscribed_only = e->acct->subscribed_only,
        .trash = e->acct->trash,
        .account = e->acct->name,
    };
    renames_facts(r, txn, &in);
    struct recorded_ids ri = {.txn = txn};
    in.index_mailboxid = recorded_mailboxid;
    in.mailboxid_arg = &ri;
    folderplan_free(r->fplan);
    r->fplan = folderplan_build(&in);
    idx_abort(txn);
    for (size_t i = 0; i < ri.n; i++) {
        free(ri.v[i]);
    }
    free(ri.v);
    if (r->fplan->nverify > 0) {
        renames_verify(e); /* plans again when the server has answered */
        return;
    }
    const struct folderplan *fp = r->fplan;
    free(r->trash);
    r->trash = fp->trash != NULL ? xstrdup(fp->trash) : NULL;
    for (size_t i = 0; i < fp->nskips; i++) {
        if (fp->skips[i].warning != NULL) {
            log_warnx("%s: %s", e->acct->name, fp->skips[i].warning);
        }
    }
    for (size_t i = 0; i < r->plan_nbad; i++) {
        /* Said on every run: its mail goes nowhere until it is renamed. */
        log_warnx("%s: local directory %s is not synced: its name maps to no folder name "
                  "(rename it to sync its messages)",
                  e->acct->name, r->plan_bad[i]);
    }
    r->jobs = xcalloc(fp->nfolders + 1, sizeof(*r->jobs));
    r->jobs_cap = fp->nfolders + 1;
    for (size_t i = 0; i < fp->nfolders; i++) {
        const struct folderplan_folder *pf = &fp->folders[i];
        struct fjob *j = &r->jobs[r->njobs++];
        j->name = xstrdup(pf->name);
        j->plan = pf;
        j->on_server = pf->on_server;
        if (pf->server >= 0) {
            const struct listed *l = &r->listed[pf->server];
            j->attrs = l->attrs;
            j->has_status = l->has_status;
            j->status_skipped = l->status_skipped;
            j->status = l->status;
        }
        strindex_add(&r->job_ix, folderplan_local_hash(j->name), i);
    }
    free(r->plan_srv);
    r->plan_srv = NULL;
    free(r->plan_loc);
    r->plan_loc = NULL;
    md_free_names(r->plan_names, r->plan_nloc);
    md_free_names(r->plan_bad, r->plan_nbad);
    r->plan_names = r->plan_bad = NULL;
    /* Whether the server moved since the last sync, and how much new mail
     * it holds, as LIST-STATUS tells: for more sessions. */
    ir = idx_begin(e->idx, false, &txn);
    for (size_t i = 0; i < r->njobs; i++) {
        struct fjob *j = &r->jobs[i];
        struct idx_folder st;
        const struct imap_status_info *si = &j->status;
        if (ir == 0 && idx_folder_get(txn, j->name, &st) == 0) {
            j->server_moved = !j->has_status || si->uidvalidity != st.uidvalidity ||
                              si->uidnext != st.uidnext || si->messages != st.messages ||
                              si->highestmodseq != st.highestmodseq;
            /* Fewer messages than the index knew plus every UID given
             * since: some were expunged (or moved away). */
            j->server_lost = j->has_status && status_lost(&st, si);
            if (j->status_skipped) {
                /* Unknown, but its SELECT and listing are work: see
                 * start_sessions. */
                j->est_new = 0;
            } else if (!j->has_status) {
                j->est_new = LANE_MIN_MSGS; /* unknown: assume worth a connection */
            } else if (si->uidvalidity == st.uidvalidity && si->uidnext >= st.uidnext) {
                j->est_new = si->uidnext - st.uidnext;
            } else {
                j->est_new = si->messages;
            }
        } else {
            j->server_moved = true;
            j->est_new = j->has_status ? si->messages : LANE_MIN_MSGS;
        }
    }
    if (ir == 0) {
        idx_abort(txn);
    }
    /* Sources of moves first (struct engine's order): the folders STATUS
     * says lost messages, then those not asked (which may have), then the
     * rest; within each, the planner's order (INBOX, then by name). */
    r->order = xcalloc(r->njobs + 1, sizeof(*r->order));
    size_t no = 0;
    for (int tier = 0; tier < 3; tier++) {
        for (size_t i = 0; i < r->njobs; i++) {
            const struct fjob *j = &r->jobs[i];
            bool skipped = j->status_skipped && j->plan->action == FOLDERPLAN_SYNC;
            int t = j->server_lost ? 0 : skipped ? 1 : 2;
            if (t == tier) {
                r->order[no++] = i;
            }
        }
    }
    mailboxids_adopt(e);
    r->fres = xcalloc(r->njobs + 1, sizeof(*r->fres));
    for (size_t i = 0; i < r->njobs; i++) {
        r->jobs[i].res = &r->fres[i];
        r->fres[i].name = r->jobs[i].name;
    }
    if (fp->nrenames > 0) {
        renames_apply(e); /* jobs_go when they are done; it needs the listing */
        return;
    }
    jobs_go(e);
}

/* The folder jobs start, on this session and on more connections. */
void jobs_go(struct session *e)
{
    if (!e->opts.stay_open) {
        listed_free(e->run); /* a stay-open run's sweeps compare with it */
    }
    if (e->finished) {
        return;
    }
    phase(e, ENGINE_PHASE_SYNCING);
    start_sessions(e);
    next_folder(e);
}

static void on_imap_ready(struct imap *im, void *arg)
{
    struct session *e = arg;
    e->ready = true;
    account_note_login(e->account, e->ro->caps(e->im));
    if (e != e->run->lister) {
        /* An extra lane: the folders are listed already. */
        next_folder(e);
        return;
    }
    phase(e, ENGINE_PHASE_LISTING);
    if (e->ro->list(e->im, on_list_folder, on_list_done, e) < 0) {
        set_error(e, SYNC_TRANSIENT, "cannot queue LIST");
        finish(e);
    }
}

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct session *e = arg;
    e->secret_wait = NULL;
    if (err < 0) {
        set_error(e, SYNC_PERMANENT, "%s", msg != NULL ? msg : "cannot get the password");
        finish(e);
        return;
    }
    if (e->cancelled) {
        set_error(e, SYNC_TRANSIENT, "cancelled");
        finish(e);
        return;
    }
    struct imap_opts io;
    sync_imap_opts(e->acct, secret, &io);
    if (e->log_name != NULL) {
        io.log_name = e->log_name;
    }
    int r = e->ro->connect(e->loop, &io, &lane_cb, e, e->opts.remote_arg, &e->im);
    if (r < 0) {
        e->im = NULL;
        set_error(e, SYNC_PERMANENT, "%s:%u: cannot connect: %s", e->acct->host,
                  (unsigned)e->acct->port, strerror(-r));
        finish(e);
    }
}

/* A connection of the account (the first or an extra one): the secret
 * from the account (the password_command runs once per account, not per
 * connection), then connect and log in. */
static void session_connect(struct session *e)
{
    int r = account_secret(e->account, on_secret, e, &e->secret_wait);
    if (r < 0) {
        e->secret_wait = NULL;
        set_error(e, SYNC_PERMANENT, "account '%s': no password or password_command",
                  e->acct->name);
        finish(e);
    }
}

/* ---- public ------------------------------------------------------------------------------------
 */

int engine_start(uv_loop_t *loop, const struct sync_account *acct, const struct engine_opts *opts,
                 engine_done_cb done, void *arg, struct engine **e_r)
{
    if (acct->protocol != SYNC_PROTO_IMAP) {
        return -EINVAL;
    }
    struct engine *r = xcalloc(1, sizeof(*r));
    pthread_mutex_init(&r->wmu, NULL);
    pthread_mutex_init(&r->dmu, NULL);
    r->ro = opts->remote != NULL ? opts->remote : &remote_imap;
    r->loop = loop;
    r->acct = acct;
    r->opts = *opts;
    r->done = done;
    r->done_arg = arg;
    r->now = opts->now != 0 ? opts->now : time(NULL);
    r->plan_out = opts->plan_out != NULL ? opts->plan_out : stdout;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    uv_timer_init(loop, &r->wake);
    r->wake.data = r;
    if (opts->account != NULL) {
        r->account = opts->account;
    } else {
        r->account = account_new(loop, (struct sync_account *)acct, false);
        r->own_account = true;
    }
    *e_r = r;

    char *err = NULL;
    int rc = account_index(r->account, &r->idx, &err);
    struct session *e = session_new(r);
    r->lister = e;
    if (rc < 0) {
        r->idx = e->idx = NULL;
        set_error(e, rc == -EWOULDBLOCK ? SYNC_TRANSIENT : SYNC_PERMANENT, "%s",
                  err != NULL ? err : "cannot open the index");
        free(err);
        finish(e);
        return 0;
    }
    session_connect(e);
    return 0;
}

void engine_cancel(struct engine *r)
{
    if (r == NULL) {
        return;
    }
    r->cancelled = true;
    for (size_t i = 0; i < r->nsessions; i++) {
        struct session *e = r->sessions[i];
        if (e == NULL || e->finished) {
            continue;
        }
        e->cancelled = true;
        if (e->secret_wait != NULL) {
            account_secret_cancel(e->secret_wait);
            e->secret_wait = NULL;
            set_error(e, SYNC_TRANSIENT, "cancelled");
            finish(e);
        } else if (e->ready && e->f != NULL && !e->logged_out) {
            /* In the middle of a folder (a large download, say): stop
             * now, as a dropped connection would: messages received whole
             * are kept and recorded, the one in transfer is dropped, and
             * every step left is safe to redo (invariant 9); the next run
             * finishes the folder. Waiting for the folder's end could take
             * minutes. */
            if (e->f->nbatch > 0 && !e->opts.dry_run) {
                flush_batch(e);
            }
            set_error(e, SYNC_TRANSIENT, "cancelled");
            folder_fail_transient(e, "cancelled");
            finish(e);
        } else if (!e->ready && e != r->lister) {
            /* Still connecting, and nothing of its own to finish; the
             * lister stops at the next safe point once logged in. */
            finish(e);
        }
    }
}

char *engine_summary(const struct engine_result *res)
{
    struct sbuf sb = {0};
    const struct engine_counts *c = &res->total;
    sbuf_addf(&sb, "%s: %s%u new, %u flags, %u deleted; \xe2\x86\x91 %u new, %u flags, %u deleted",
              res->account, "\xe2\x86\x93 ", c->new_down, c->flags_down, c->deleted_down, c->new_up,
              c->flags_up, c->deleted_up);
    if (c->skipped_size > 0) {
        sbuf_addf(&sb, "; %u skipped over max_size", c->skipped_size);
    }
    if (c->skipped_age > 0) {
        sbuf_addf(&sb, "; %u skipped older than max_age_days", c->skipped_age);
    }
    if (c->moved > 0) {
        sbuf_addf(&sb, "; %u moved between folders", c->moved);
    }
    if (c->adopted > 0) {
        sbuf_addf(&sb, "; %u adopted after an interruption", c->adopted);
    }
    for (size_t i = 0; i < res->nfolders; i++) {
        if (res->folders[i].notice != NULL) {
            sbuf_addf(&sb, "; %s", res->folders[i].notice);
        }
    }
    if (res->folder_errors > 0) {
        sbuf_addf(&sb, "; %u folder error%s", res->folder_errors,
                  res->folder_errors == 1 ? "" : "s");
    }
    if (res->dry_run) {
        sbuf_adds(&sb, " (dry run: nothing changed)");
    }
    if (res->error != NULL) {
        sbuf_addf(&sb, "; error: %s", res->error);
    }
    for (size_t i = 0; i < res->nfolders; i++) {
        if (res->folders[i].error != NULL) {
            sbuf_addf(&sb, "\n  %s: %s", res->folders[i].name, res->folders[i].error);
        }
    }
    return sbuf_detach(&sb);
}
