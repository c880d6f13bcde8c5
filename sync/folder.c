/* The folder executor: one folder job on one session, from its Maildir
 * scan to its final index record. It is separate from the run
 * (sync/engine.c) because it knows one folder only: which folder comes
 * next, and on which connection, is not its business.
 *
 * Per folder the phases are: prepare (Maildir scan, index base, skip list,
 * adopt download intents), SELECT, server state (QRESYNC delta, CONDSTORE
 * delta, or a full FLAGS listing; with Message-IDs when UIDVALIDITY
 * changed), header blocks where only a header hash can match a message
 * (sync/rematch.c; upload intents without a Message-ID, sync/upload.c),
 * resolve upload intents left by a crash (sync/upload.c), plan, then
 * apply: local flag changes and deletions, server flag changes and
 * deletions, downloads (batched: intent rows, commit + rename, one
 * directory fsync, records), uploads (intent rows, APPEND, records; without
 * APPENDUID one FETCH of the new UIDs finds them, sync/upload.c), and the
 * folder's new state. folder_advance moves a folder from one phase to the
 * next.
 *
 * The server is reached through sync/remote.h (the IMAP client, or the
 * unit tests' fake). Maildir scans, batch durability and reading local
 * files run on the libuv thread pool; LMDB commits run on the loop thread,
 * grouped so that a batch of 64 downloads costs two index commits, one
 * syncfs and one directory fsync. */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/account.h"
#include "sync/diskq.h"
#include "sync/engine_int.h"
#include "sync/imap.h"
#include "sync/msgfacts.h"
#include "sync/plan.h"
#include "sync/skiplist.h"

/* Downloads: UIDs per UID FETCH command, and a batch is committed (intent
 * rows, fsync + rename, directory fsync, records) at this many messages or
 * bytes. The commands go one at a time (issue_downloads): Dovecot runs
 * pipelined FETCH commands side by side and interleaves their answers, and
 * records that arrive out of UID order half-fill the index's pages (each
 * run inserted before keys already on a page splits that page in half).
 * 500 UIDs always format as one set (at most 11 bytes each, the limit is
 * 8,000), and cost one round trip per 500 messages. */
#define DL_UIDS_PER_CMD 500
#define DL_BATCH_MSGS 64
/* Header bytes of a download kept for its Message-ID at most. */
#define DL_HEADER_MAX (64u * 1024)
#define DL_BATCH_BYTES (16u * 1024 * 1024)
/* While a batch is made durable on the thread pool, downloads go on into
 * the next one, up to this many batches' worth in all (in flight and
 * waiting); then the connection stops reading until the batch in flight is
 * done. Without the bound a fast
 * server and a slow disk pile up open files in tmp/ (each download holds
 * one) until the process runs out of descriptors, and memory with them. */
#define DL_BACKLOG_BATCHES 2
/* Message bytes queued for the thread pool's writes (sync/diskq.h) at most
 * before the connection stops reading until they are written. */
#define DL_DISK_BACKLOG (8u * 1024 * 1024)
/* APPENDs in flight at once (each holds an open file). */
#define UL_WINDOW 8

static void folder_end(struct session *e);
static void folder_advance(struct session *e);
static void job_ended_early(struct session *e, struct fjob *j);
static void job_totals(struct session *e, const struct fjob *j);

/* ---- flag mapping ------------------------------------------------------------ */

bool is_forwarded(const char *k)
{
    return strcasecmp(k, "$Forwarded") == 0;
}

unsigned imap_to_md(unsigned f)
{
    unsigned m = 0;
    m |= (f & IMAP_FLAG_SEEN) ? MD_FLAG_SEEN : 0;
    m |= (f & IMAP_FLAG_ANSWERED) ? MD_FLAG_REPLIED : 0;
    m |= (f & IMAP_FLAG_FLAGGED) ? MD_FLAG_FLAGGED : 0;
    m |= (f & IMAP_FLAG_DELETED) ? MD_FLAG_TRASHED : 0;
    m |= (f & IMAP_FLAG_DRAFT) ? MD_FLAG_DRAFT : 0;
    return m;
}

static unsigned md_to_imap(unsigned m)
{
    unsigned f = 0;
    f |= (m & MD_FLAG_SEEN) ? IMAP_FLAG_SEEN : 0;
    f |= (m & MD_FLAG_REPLIED) ? IMAP_FLAG_ANSWERED : 0;
    f |= (m & MD_FLAG_FLAGGED) ? IMAP_FLAG_FLAGGED : 0;
    f |= (m & MD_FLAG_TRASHED) ? IMAP_FLAG_DELETED : 0;
    f |= (m & MD_FLAG_DRAFT) ? IMAP_FLAG_DRAFT : 0;
    return f;
}

/* IMAP keywords for a plan's flags and keywords: $Forwarded for P plus the
 * names. The array points into kw; caller frees the array only. */
static const char **imap_keywords(unsigned flags, const struct plan_kw *kw, size_t *n_r)
{
    const char **v = xmalloc((kw->n + 1) * sizeof(*v));
    size_t n = 0;
    if (flags & MD_FLAG_PASSED) {
        v[n++] = "$Forwarded";
    }
    for (size_t i = 0; i < kw->n; i++) {
        v[n++] = kw->names[i];
    }
    *n_r = n;
    return v;
}

static bool kw_ok(const char *name, void *arg)
{
    struct session *e = arg;
    return md_keyword_index(e->f->md, name, false) >= 0 || e->f->free_letters > 0;
}

/* Membership in a short unsorted list. */
static bool u32_in(const uint32_t *v, size_t n, uint32_t x)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] == x) {
            return true;
        }
    }
    return false;
}

/* ---- a folder's state, freed ------------------------------------------------------------- */

/* The keywords of a local file that has no keyword letter (most files):
 * shared, where each file with letters has an array of its own. */
static const char *const no_kw[1] = {NULL};

void fstate_free(struct fstate *f)
{
    if (f == NULL) {
        return;
    }
    /* Not busy (the session's teardown and the folder's end wait for its
     * jobs): queued writes are dropped, queued aborts carried out, and the
     * writers below are no longer in any queue. */
    diskq_free(f->dq);
    if (f->cur != NULL) {
        if (f->cur->w != NULL) {
            md_writer_abort(f->cur->w);
        }
        free(f->cur->hdr);
        free(f->cur);
    }
    for (size_t i = 0; i < f->nbatch; i++) {
        if (f->batch[i]->w != NULL) {
            md_writer_abort(f->batch[i]->w);
        }
        free(f->batch[i]->hdr);
        free(f->batch[i]);
    }
    free(f->batch);
    if (f->lf != NULL) {
        for (size_t i = 0; i < f->scan->count; i++) {
            free(f->lf[i].msgid);
        }
        free(f->lf);
    }
    if (f->scan != NULL && f->lmsgs != NULL) {
        for (size_t i = 0; i < f->scan->count; i++) {
            /* The names local_view_build made for the file. */
            if (f->lmsgs[i].kw != no_kw) {
                for (size_t j = 0; j < f->lmsgs[i].nkw; j++) {
                    free((char *)f->lmsgs[i].kw[j]);
                }
                free((void *)f->lmsgs[i].kw);
            }
        }
    }
    md_scan_free(f->scan);
    idx_rows_free(&f->base_old);
    free(f->lmsgs);
    for (size_t i = 0; i < f->nsmsgs; i++) {
        for (size_t j = 0; j < f->smsgs[i].nkw; j++) {
            free(f->smsgs[i].kw[j]);
        }
        free(f->smsgs[i].kw);
        free(f->smsgs[i].msgid);
    }
    free(f->smsgs);
    free(f->rm_s);
    free(f->rm_l);
    free(f->skips);
    free(f->unskip);
    for (size_t i = 0; i < f->nlnames; i++) {
        free(f->lnames[i]);
    }
    free(f->lnames);
    idx_rows_free(&f->lbase);
    skiplist_local_free(f->lskips, f->nlskips);
    if (f->lview != f->lmsgs) {
        free(f->lview);
    }
    if (f->ulf != NULL) {
        for (size_t i = 0; i < f->nulf; i++) {
            free(f->ulf[i].msgid);
        }
        free(f->ulf);
    }
    free(f->ul_pend);
    free(f->ul_pend_ix);
    for (size_t i = 0; i < f->nul_srv; i++) {
        free(f->ul_srv[i].msgid);
    }
    free(f->ul_srv);
    free(f->ul_ms);
    free(f->ul_ml);
    if (f->itf != NULL) {
        for (size_t i = 0; i < f->nitf; i++) {
            free(f->itf[i].msgid);
        }
        free(f->itf);
    }
    free(f->it_s);
    free(f->it_l);
    free(f->vanished);
    free(f->search);
    idx_rows_free(&f->base);
    free(f->intents);
    moves_free(f->mv);
    free(f->modified);
    free(f->sdel_ok);
    free(f->recs);
    free(f->ul_done);
    plan_free(f->plan);
    if (f->md != NULL) {
        md_folder_close(f->md);
    }
    free(f);
}

/* A large folder's state is freed on the thread pool: at 100,000 messages
 * its scan alone is 200,000 small blocks, tens of milliseconds of the loop
 * thread. Nothing else refers to it once its folder ended. */
#define FREE_LATER_MIN 4096

static void free_work(uv_work_t *req)
{
    fstate_free(req->data);
}

static void free_done(uv_work_t *req, int status)
{
    (void)status;
    free(req);
}

static void fstate_free_later(uv_loop_t *loop, struct fstate *f)
{
    size_t n = f->scan != NULL ? f->scan->count : 0;
    if (n < FREE_LATER_MIN && f->base.n < FREE_LATER_MIN && f->nsmsgs < FREE_LATER_MIN) {
        fstate_free(f);
        return;
    }
    uv_work_t *req = xcalloc(1, sizeof(*req));
    req->data = f;
    if (uv_queue_work(loop, req, free_work, free_done) != 0) {
        fstate_free(f);
        free(req);
    }
}

/* ---- skipped messages ------------------------------------------------------------------ */

/* The skip list of a folder lives in the index as the meta value
 * "skip:FOLDER" ("skip#" and a hash for very long names): the UIDVALIDITY
 * it belongs to, a count, then per message UID, reason, size and date.
 * It is what lets a CONDSTORE/QRESYNC resync, which only hears about
 * changed messages, keep skipping them (a flag change on one must not
 * download it) and report them on every run. */
/* Reads the folder's skip list; a missing or malformed value is none. */
static void skips_load(struct fstate *f, struct idx_txn *txn)
{
    f->nskips = skiplist_load(txn, f->job->name, &f->skips, &f->skip_uv);
    f->skips_cap = f->nskips;
}

static struct skip_ent *find_skip(const struct fstate *f, uint32_t uid)
{
    struct skip_ent key = {.uid = uid};
    return f->nskips > 0 ? bsearch(&key, f->skips, f->nskips, sizeof(*f->skips), skiplist_cmp)
                         : NULL;
}

/* Whether today's limits still skip this message. */
static bool still_skipped(const struct session *e, const struct skip_ent *s)
{
    const struct sync_account *a = e->acct;
    if (a->max_size > 0 && s->size > a->max_size) {
        return true;
    }
    return s->too_old && a->max_age_days > 0 && s->date > 0 &&
           s->date < (int64_t)e->now - (int64_t)a->max_age_days * 86400;
}

/* Whether a skipped message is no longer kept away by today's limits (the
 * folder must then be selected even when nothing else changed). */
static bool skips_released(const struct session *e)
{
    for (size_t i = 0; i < e->f->nskips; i++) {
        if (!still_skipped(e, &e->f->skips[i])) {
            return true;
        }
    }
    return false;
}

static void count_skips(struct session *e, const struct skip_ent *v, size_t n)
{
    struct engine_counts *c = &e->f->job->res->counts;
    c->skipped_size = c->skipped_age = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].too_old) {
            c->skipped_age++;
        } else {
            c->skipped_size++;
        }
    }
    c->skipped = c->skipped_size + c->skipped_age;
}

/* ---- folder: prepare ---------------------------------------------------------------- */

/* Takes the intents (APPENDING rows without UID, few) out of the rows
 * just read, as complete records; the base keeps the others compact. */
static void load_base(struct fstate *f, size_t from)
{
    size_t out = from;
    for (size_t i = from; i < f->base.n; i++) {
        const struct idx_row *m = &f->base.v[i];
        if (m->state == IDX_MSG_APPENDING && m->uid == 0) {
            xgrow(&f->intents, &f->intents_cap, f->nintents + 1, sizeof(*f->intents));
            idx_rows_get(&f->base, i, &f->intents[f->nintents++]);
        } else {
            f->base.v[out++] = *m;
        }
    }
    f->base.n = out;
}

static bool scan_has(const struct fstate *f, const char *lid)
{
    return md_scan_find(f->scan, lid) != NULL;
}

/* ---- local files no server can store (empty files) -------------------------------- */

/* Whether a local file is empty (zero bytes). A file that cannot be opened
 * is not: it is left to the upload, which reports it. */
static bool local_file_empty(struct fstate *f, struct md_msg *m)
{
    int fd = md_open_msg(f->md, m);
    if (fd < 0) {
        return false;
    }
    struct stat sb;
    bool empty = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0;
    close(fd);
    return empty;
}

/* The list of files left out, as the folder holds them now: a file
 * deleted since, or given content, leaves the list (the second is
 * uploaded by this run). The planner gets the folder without the others:
 * a file left out once is neither tried nor reported as an error again,
 * only mentioned in the summary. */
static void lskips_prune(struct session *e)
{
    struct fstate *f = e->f;
    size_t out = 0;
    for (size_t i = 0; i < f->nlskips; i++) {
        struct skip_local *s = &f->lskips[i];
        struct md_msg *m = f->md != NULL ? md_scan_find(f->scan, s->lid) : NULL;
        bool in_base = false;
        for (size_t k = 0; k < f->base.n && m != NULL; k++) {
            in_base = in_base || strcmp(idx_rows_lid(&f->base, k), s->lid) == 0;
        }
        if (m == NULL || in_base || !local_file_empty(f, m)) {
            free(s->lid);
            free(s->path);
            f->lskips_dirty = true;
            continue;
        }
        f->lskips[out++] = *s;
    }
    f->nlskips = out;
    f->lview = f->lmsgs;
    f->nlview = f->scan->count;
    if (f->nlskips == 0) {
        return;
    }
    f->lview = xcalloc(f->scan->count + 1, sizeof(*f->lview));
    f->nlview = 0;
    for (size_t i = 0; i < f->scan->count; i++) {
        bool left_out = false;
        for (size_t k = 0; k < f->nlskips && !left_out; k++) {
            left_out = strcmp(f->lskips[k].lid, f->lmsgs[i].lid) == 0;
        }
        if (!left_out) {
            f->lview[f->nlview++] = f->lmsgs[i];
        }
    }
    struct fjob *j = f->job;
    free(j->notice);
    j->notice = xasprintf("%s: %zu empty file%s not uploaded (see 'mailsync status')", j->name,
                          f->nlskips, f->nlskips == 1 ? "" : "s");
    j->res->notice = j->notice;
}

/* Writes the list when it changed (with the next index write that must be
 * durable: lost in a crash, it is only made again). */
static void lskips_save(struct session *e)
{
    struct fstate *f = e->f;
    if (!f->lskips_dirty || e->opts.dry_run) {
        return;
    }
    char key[512];
    skiplist_local_key(f->job->name, key, sizeof(key));
    struct idx_ops o = {.folder = f->job->name, .meta_key = key};
    unsigned char *packed = skiplist_local_pack(f->lskips, f->nlskips, &o.meta_len);
    o.meta_val = packed;
    idx_apply_later(e, &o);
    free(packed);
    f->lskips_dirty = false;
}

/* Takes the planned uploads of empty files out of the plan: an IMAP
 * server refuses to store an empty message (Dovecot answers NO), which
 * failed the folder on every run without saying which file it was. Each is
 * named once, as the folder's error, and left out of later runs (see
 * lskips_prune). A --dry-run says the same, so its plan stays the real
 * run's. */
static void drop_empty_uploads(struct session *e)
{
    struct fstate *f = e->f;
    struct plan *p = f->plan;
    if (f->md == NULL || p->nuploads == 0) {
        return;
    }
    bool *empty = xcalloc(p->nuploads, sizeof(*empty));
    size_t nempty = 0;
    char *first = NULL;
    for (size_t i = 0; i < p->nuploads; i++) {
        struct md_msg *m = md_scan_find(f->scan, p->uploads[i].lid);
        if (m == NULL || !local_file_empty(f, m)) {
            continue;
        }
        empty[i] = true;
        nempty++;
        char *path =
            xasprintf("%s/%s/%s", md_folder_path(f->md), m->in_new ? "new" : "cur", md_msg_name(m));
        if (e->opts.dry_run) {
            fprintf(e->plan_out, "%s: leave out %s: an empty file (0 bytes)\n", f->job->name, path);
        }
        xgrow(&f->lskips, &f->lskips_cap, f->nlskips + 1, sizeof(*f->lskips));
        f->lskips[f->nlskips++] =
            (struct skip_local){.lid = xstrdup(m->id), .path = path, .reason = SKIP_LOCAL_EMPTY};
        f->lskips_dirty = true;
        if (first == NULL) {
            first = path;
        }
    }
    if (nempty > 0) {
        /* Not temporary: waiting mends nothing, the user must act. */
        char more[64] = "";
        if (nempty > 1) {
            snprintf(more, sizeof(more), " (and %zu more empty files)", nempty - 1);
        }
        folder_note(e,
                    "%s%s: an empty file (0 bytes), which an IMAP server cannot store, so it is "
                    "not uploaded, in this run or later ones ('mailsync status' lists it); "
                    "delete it, or it is uploaded once it has content",
                    first, more);
        for (size_t i = p->nuploads; i-- > 0;) {
            if (empty[i]) {
                plan_drop_upload(p, i);
            }
        }
    }
    free(empty);
}

/* Opens the Maildir, scans it, reads the base and adopts downloads that
 * were renamed into place before a crash recorded them. */
/* folder_prepare went on to scan the folder on the thread pool, or put
 * the scan and the base off (local_quiet). */
#define PREPARE_SCANNING 1
#define PREPARE_LAZY 2

static unsigned char *unsettled_read(struct session *e, struct idx_txn *txn, size_t *len_r);

/* ---- the change-time shortcut ------------------------------------------------------ */

/* The stamp the folder's record holds (store/maildir.h, md_stamp). */
static struct md_stamp recorded_stamp(const struct idx_folder *st)
{
    return (struct md_stamp){
        .cur_ns = st->cur_ctime_ns, .new_ns = st->new_ctime_ns, .taken_ns = st->scan_time_ns};
}

static void record_stamp(struct idx_folder *st, const struct md_stamp *s)
{
    st->cur_ctime_ns = s->cur_ns;
    st->new_ctime_ns = s->new_ns;
    st->scan_time_ns = s->taken_ns;
}

/* Whether LIST-STATUS (or STATUS) says the server holds the folder as the
 * record says the last complete sync left it. Only with HIGHESTMODSEQ
 * (without CONDSTORE a flag changed on the server moves none of these
 * figures, and only a FLAGS listing shows it), unless the folder was empty
 * and still is. */
static bool status_unchanged(const struct idx_folder *st, const struct imap_status_info *s)
{
    if (st->uidvalidity == 0 || !(s->have & IMAP_STATUS_UIDVALIDITY) ||
        s->uidvalidity != st->uidvalidity || !(s->have & IMAP_STATUS_UIDNEXT) ||
        s->uidnext != st->uidnext || !(s->have & IMAP_STATUS_MESSAGES) ||
        s->messages != st->messages) {
        return false;
    }
    /* A folder that was empty and still is, with the same UIDNEXT, has no
     * flag that could have changed: no HIGHESTMODSEQ needed (a server
     * without CONDSTORE is not asked to list nothing). */
    if (s->messages == 0) {
        return true;
    }
    return (s->have & IMAP_STATUS_HIGHESTMODSEQ) && st->highestmodseq != 0 &&
           s->highestmodseq == st->highestmodseq;
}

/* The same question asked of the SELECT answer: CONDSTORE in use for the
 * folder, and a QRESYNC SELECT that reported no change either. */
static bool mailbox_unchanged(struct session *e)
{
    const struct fstate *f = e->f;
    const struct imap_mailbox *mb = &f->mb;
    return f->st.uidvalidity != 0 && mb->uidvalidity == f->st.uidvalidity && mb->uidnext != 0 &&
           mb->uidnext == f->st.uidnext && mb->exists == f->st.messages &&
           e->ro->condstore_enabled(e->im) && !mb->nomodseq && f->st.highestmodseq != 0 &&
           mb->highestmodseq == f->st.highestmodseq && f->nsmsgs == 0 && f->nvanished == 0;
}

/* Whether every row the folder's marks name (see unsettled_key) is
 * settled: put again without IDX_FLAGS_UNSETTLED, as the final record of
 * the run that marked it does once its renames and STOREs are done. The
 * marks' value itself is emptied only by the next sync that reads the
 * whole base (settle_base), so a completed run leaves it behind; a run
 * stopped before its record leaves a row marked. Key lookups: as many as
 * the last run changed. */
static bool marks_settled(struct idx_txn *txn, const char *folder, const unsigned char *masks,
                          size_t len)
{
    for (size_t k = 0; k + 5 <= len; k += 5) {
        uint32_t uid;
        memcpy(&uid, masks + k, 4);
        struct idx_msg m;
        int r = idx_msg_get_uid(txn, folder, uid, &m);
        if (r == -ENOENT) {
            continue; /* gone from the base: nothing to settle */
        }
        if (r < 0 || (m.flags & IDX_FLAGS_UNSETTLED)) {
            return false;
        }
    }
    return true;
}

/* The other programs' changes the owner named (engine_opts.
 * local_quiet_since) that came after the recorded scan began: an event
 * is taken after the change it reports (on a clock never behind
 * CLOCK_REALTIME), so one taken before that scan reports a change the
 * scan saw. */
static void local_names_take(struct fstate *f, int64_t taken_ns)
{
    const struct fjob *j = f->job;
    f->lnames = xcalloc(j->nlchanges + 1, sizeof(*f->lnames));
    for (size_t i = 0; i < j->nlchanges; i++) {
        if (j->lchanges[i].at_ns >= taken_ns) {
            f->lnames[f->nlnames++] = xstrdup(j->lchanges[i].name);
        }
    }
}

static bool is_file(const char *path);

static void local_names_drop(struct fstate *f)
{
    for (size_t i = 0; i < f->nlnames; i++) {
        free(f->lnames[i]);
    }
    free(f->lnames);
    f->lnames = NULL;
    f->nlnames = 0;
}

/* Whether each file another program changed (fstate.lnames) is plainly a
 * file of the folder renamed: its identity has a row, and exactly one of
 * the names it was seen under is a file now. A few stat calls on the
 * loop, as many as the names (at most the owner's bound). */
static bool local_names_plain(struct session *e, struct idx_txn *txn)
{
    struct fstate *f = e->f;
    const char *path = md_folder_path(f->md);
    bool plain = true;
    struct idx_msg *m = xmalloc(sizeof(*m));
    char **ids = xcalloc(f->nlnames + 1, sizeof(*ids));
    for (size_t i = 0; i < f->nlnames; i++) {
        const char *rel = f->lnames[i];
        bool in_new = strncmp(rel, "new/", 4) == 0;
        struct md_msg msg;
        if ((in_new || strncmp(rel, "cur/", 4) == 0) && md_parse_name(rel + 4, in_new, &msg)) {
            ids[i] = msg.id;
            msg.id = NULL;
            md_msg_clear(&msg);
        }
    }
    for (size_t i = 0; i < f->nlnames && plain; i++) {
        bool first = ids[i] != NULL;
        for (size_t k = 0; k < i && first; k++) {
            first = ids[k] == NULL || strcmp(ids[k], ids[i]) != 0;
        }
        if (!first) {
            continue; /* not a message, or its identity was checked */
        }
        int r = idx_msg_get_lid(txn, f->job->name, ids[i], m);
        unsigned there = 0;
        for (size_t k = i; k < f->nlnames && (r == 0 || r == -ENOENT); k++) {
            bool dup = false;
            for (size_t d = i; d < k && !dup; d++) {
                dup = strcmp(f->lnames[d], f->lnames[k]) == 0;
            }
            if (!dup && ids[k] != NULL && strcmp(ids[k], ids[i]) == 0) {
                char *full = path_join(path, f->lnames[k]);
                there += is_file(full);
                free(full);
            }
        }
        if (r == -ENOENT && there == 0) {
            /* No row, and none of its names a file: delivered and removed
             * again, or removed with its row by this process (the server
             * expunged it) after another program renamed it. Nothing of it
             * is here to sync; a file that turns up later is named too. */
            continue;
        }
        plain = r == 0 && m->uid != 0 && there == 1;
    }
    for (size_t i = 0; i < f->nlnames; i++) {
        free(ids[i]);
    }
    free(ids);
    free(m);
    return plain;
}

/* Whether the folder's Maildir is as the last complete sync left it: cur/
 * and new/ carry the change times recorded with the folder's state (see
 * md_unchanged_since for when that is believed). Then the scan that sync
 * made is still the truth, that sync handled all of it, and so a sync now
 * has nothing to do locally: the Maildir and the base need not be read
 * unless the server moved. Reads the folder's record and skip list only
 * (one read transaction, no message rows), into f->st and f->skips.
 *
 * Why the recorded stamp vouches for that: it is taken before the scan of
 * the sync that records it (folder_prepare), so whatever changed after it
 * moved a change time, including this engine's own downloads and renames,
 * which therefore make the next sync scan once more; and it is recorded
 * only with a folder state that says the sync completed (folder_final) or
 * that it found nothing to do (start_folder_scanned). A sync that failed
 * half-way records nothing, and what it changed moved a change time or
 * the server's figures (which never come back to a recorded value). Not
 * covered: a file's bytes rewritten in place (Maildir files are
 * immutable), and dovecot-keywords rewritten with other letters for the
 * same names without any file being renamed. */
static bool local_quiet(struct session *e)
{
    struct fstate *f = e->f;
    const struct fjob *j = f->job;
    if (j->reset || !j->on_server || f->stamp.taken_ns == 0) {
        return false;
    }
    struct idx_txn *txn;
    if (idx_begin(e->idx, false, &txn) < 0) {
        return false; /* the full path reads the index again and reports it */
    }
    struct idx_folder st;
    struct md_stamp rec = {0};
    bool vouched = false;
    bool quiet = idx_folder_get(txn, j->name, &st) == 0 && st.uidvalidity != 0;
    if (quiet) {
        rec = recorded_stamp(&st);
        /* The owner's word (engine_opts.local_quiet_since): nothing but
         * this process changed new/ and cur/ since before the recorded
         * scan, and what this process changed is in the base. Not while
         * the clock reads earlier than that scan (stepped back). */
        vouched = j->quiet_since_ns > 0 && rec.taken_ns > j->quiet_since_ns && rec.cur_ns > 0 &&
                  rec.new_ns > 0 && f->stamp.taken_ns >= rec.taken_ns &&
                  !md_unchanged_since(&rec, &f->stamp);
        quiet = vouched || md_unchanged_since(&rec, &f->stamp);
    }
    if (quiet) {
        /* Rows marked unsettled by a run that was stopped (a STORE or a
         * rename that may or may not have happened) are settled against
         * this run's listing and scan: skipped now, a later change on the
         * server would be taken for the STORE's outcome (settle_base). */
        size_t len;
        unsigned char *masks = unsettled_read(e, txn, &len);
        quiet = marks_settled(txn, j->name, masks, len);
        free(masks);
    }
    if (quiet && vouched) {
        local_names_take(f, rec.taken_ns);
        if (!local_names_plain(e, txn)) {
            /* A file removed, new here or copied: it may be half of a move
             * between folders, which the full path pairs (moves_start)
             * before it selects. */
            log_debug("%s: %s: another program removed, added or copied a file: scanning",
                      e->acct->name, j->name);
            local_names_drop(f);
            quiet = false;
        }
    }
    if (quiet) {
        f->st = st;
        skips_load(f, txn);
        if (vouched) {
            /* This run scans nothing, so it vouches for nothing newer: the
             * state it records keeps the recorded scan's stamp, and once
             * the owner's word no longer covers it, a sync scans. */
            f->stamp_fresh = f->stamp;
            f->stamp = rec;
            if (f->nlnames > 0) {
                log_debug("%s: %s: only this process and another program's changes to %zu "
                          "file name%s changed the Maildir since its last scan (the owner's "
                          "inotify watches say)",
                          e->acct->name, j->name, f->nlnames, f->nlnames == 1 ? "" : "s");
            } else {
                log_debug("%s: %s: only this process changed the Maildir since its last scan "
                          "(the owner's inotify watches say)",
                          e->acct->name, j->name);
            }
        }
    }
    idx_abort(txn);
    return quiet;
}

/* A folder that nothing changed on either side: no scan, no base, no
 * index write. */
static void quiet_done(struct session *e)
{
    struct fstate *f = e->f;
    log_debug("%s: %s: unchanged on both sides, not scanned", e->acct->name, f->job->name);
    /* Reported on every run, as the full path does. */
    count_skips(e, f->skips, f->nskips);
    folder_end(e);
}

/* The Maildir scan of a folder (and its tmp/ cleanup) on the thread
 * pool: a folder of 100,000 messages is a large directory to read and
 * sort. The folder waits for it (fstate.reading). */
struct scan_job {
    uv_work_t req;
    struct session *e;
    struct fstate *f;
    struct idx *idx;
    struct md_scan *scan;
    int r;
    bool clean;
    time_t now;
};

static int base_read(struct idx *idx, struct fstate *f);

/* The local view, keyword letters turned into names: built on the thread
 * pool with the scan (100,000 files are tens of milliseconds), or by
 * folder_prepare_index when there was no scan job. Touches only f. */
static void local_view_build(struct fstate *f, const struct md_scan *scan)
{
    size_t n = scan->count;
    f->lmsgs = xcalloc(n + 1, sizeof(*f->lmsgs));
    const char *letters[26] = {0};
    f->free_letters = f->md != NULL ? md_keyword_table(f->md, letters) : 0;
    for (size_t i = 0; i < n; i++) {
        const struct md_msg *m = &scan->msgs[i];
        f->lmsgs[i].lid = m->id;
        f->lmsgs[i].flags = m->flags;
        if (m->keywords == 0) {
            /* Most files carry no keyword letter: no array of their own
             * (27 pointers each, 21 MiB at 100,000 messages). */
            f->lmsgs[i].kw = no_kw;
            f->lmsgs[i].nkw = 0;
            continue;
        }
        char **kw = xcalloc(27, sizeof(char *));
        size_t k = 0;
        for (int b = 0; b < 26 && m->keywords != 0; b++) {
            /* A name in dovecot-keywords that is no IMAP keyword (another
             * program wrote "bogus line") cannot go to the server: it is
             * left out, as a letter without a name is. */
            if ((m->keywords & ((md_keywords)1u << b)) && letters[b] != NULL &&
                imap_is_atom(letters[b], strlen(letters[b])) && letters[b][0] != '\\') {
                kw[k++] = xstrdup(letters[b]);
            }
        }
        f->lmsgs[i].kw = (const char *const *)kw;
        f->lmsgs[i].nkw = k;
    }
    f->lview_ready = true;
}

/* Gives back the pages a large job on the thread pool freed (the scan's
 * directory buffer, sort space and copied identities; the planner's
 * sorted views): glibc keeps them in that thread's arena, where the next
 * job, run by another thread, cannot use them, so they would only add to
 * the run's peak (100,000 messages: 2-3 MiB). A few hundred microseconds;
 * small folders do not pay it. */
static void pool_trim_if(size_t n)
{
#ifdef __GLIBC__
    if (n >= FREE_LATER_MIN) {
        malloc_trim(0);
    }
#else
    (void)n;
#endif
}

static const char *base_lid_at(size_t i, void *arg)
{
    return idx_rows_lid(arg, i);
}

static void scan_work(uv_work_t *req)
{
    struct scan_job *j = req->data;
    struct md_folder *md = j->f->md;
    j->r = md_scan(md, &j->scan);
    if (j->r == 0 && j->clean) {
        md_clean_tmp(md, j->now);
    }
    if (j->r == 0 && j->idx != NULL) {
        /* The loop leaves f alone while it is read (fstate.reading). */
        j->f->base_rc = base_read(j->idx, j->f);
        j->f->base_read = true;
        /* Nearly every file is a base row: its identity is held once, in
         * the base's lids (5 MiB at 100,000 messages). Their blocks stay
         * until fstate_free (base_old keeps a base rematch_finish
         * replaces); the local view is built below, from the shared ids. */
        if (j->f->base_rc == 0) {
            md_scan_share_ids(j->scan, j->f->base.n, base_lid_at, &j->f->base);
        }
    }
    if (j->r == 0) {
        local_view_build(j->f, j->scan);
    }
    pool_trim_if(j->r == 0 ? j->scan->count : 0);
}

static void start_folder_scanned(struct session *e);
static void scanned_decide(struct session *e, bool unchanged);

static void scan_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct scan_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = e->f;
    f->reading = false;
    f->scan = j->scan;
    int r = j->r;
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    if (r < 0) {
        folder_fail(e, "%s", md_folder_error(f->md));
        struct fjob *job = f->job;
        fstate_free(f);
        e->f = NULL;
        job_ended_early(e, job);
        next_folder(e);
        return;
    }
    start_folder_scanned(e);
}

static void scan_start(struct session *e)
{
    struct scan_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->f = e->f;
    /* The base is read with the scan, also for a lazy folder (whose
     * scan comes after the SELECT): its state and skip list, read by
     * local_quiet, are read again, unchanged (on_select dropped the skip
     * list), and the loop is spared a read of the whole base. */
    j->idx = e->idx;
    j->clean = !e->opts.dry_run;
    j->now = e->now;
    e->f->reading = true;
    if (uv_queue_work(e->loop, &j->req, scan_work, scan_done) != 0) {
        scan_work(&j->req);
        scan_done(&j->req, 0);
    }
}

/* Opens the folder's Maildir directory (creating it for a real run) and
 * reads it, on the thread pool unless there is nothing to read: returns
 * 0 when done, PREPARE_SCANNING when scan_done goes on, or a negative
 * errno after folder_fail. */
static int folder_prepare(struct session *e)
{
    struct fstate *f = e->f;
    struct fjob *j = f->job;
    char *path = NULL;
    int r = md_folder_local_path(e->acct->maildir, e->acct->layout, j->name, &path);
    if (r < 0) {
        folder_fail(e, "cannot map the folder name to a directory: %s", strerror(-r));
        return r;
    }
    bool sub = e->acct->layout == MD_LAYOUT_MAILDIRPP && strcasecmp(j->name, "INBOX") != 0;
    char *err = NULL;
    struct md_dirsync ds = {0};
    r = md_folder_open_ds(path, !e->opts.dry_run, sub, e->opts.dry_run ? NULL : &ds, &f->md, &err);
    free(path);
    engine_dirsync_add(e->run, &ds);
    if (r == -ENOENT && e->opts.dry_run) {
        free(err);
        f->md = NULL;
    } else if (r < 0) {
        folder_fail(e, "%s", err != NULL ? err : strerror(-r));
        free(err);
        return r;
    }
    if (f->md != NULL && md_folder_created(f->md)) {
        /* Created an instant ago by this open: three empty directories,
         * nothing to read (a delivery racing in is seen by the next sync,
         * as if the scan had run a moment earlier). */
        f->scan = xcalloc(1, sizeof(*f->scan));
    } else if (f->md != NULL) {
        /* Before the scan: a change made while it runs moves a time past
         * this stamp, and the sync that records it scans again. */
        if (md_folder_stamp(f->md, &f->stamp) < 0) {
            memset(&f->stamp, 0, sizeof(f->stamp));
        }
        if (local_quiet(e)) {
            f->lazy = true;
            return PREPARE_LAZY;
        }
        scan_start(e);
        return PREPARE_SCANNING;
    } else {
        f->scan = xcalloc(1, sizeof(*f->scan));
    }
    return 0;
}

/* The index's side of a folder about to be synced: its state, base,
 * intents and skip lists. */
/* Reads the folder's state, base and skip lists from the index into f.
 * Touches nothing but f and the index: it runs on the thread pool after
 * the scan (a base of 100,000 records is too long a read for the loop
 * thread), or on the loop when there was no scan. */
static int base_read(struct idx *idx, struct fstate *f)
{
    struct fjob *j = f->job;
    int r;
    struct idx_txn *txn;
    r = idx_begin(idx, false, &txn);
    if (r < 0) {
        return r;
    }
    r = idx_folder_get(txn, j->name, &f->st);
    if (r == -ENOENT) {
        /* Never synced: no records either (idx_msg_put creates the folder). */
        memset(&f->st, 0, sizeof(f->st));
        r = 0;
    } else if (r == 0) {
        /* One allocation for the whole base instead of repeated growth. */
        size_t from = f->base.n;
        idx_rows_reserve(&f->base, from + idx_msg_count(txn, j->name));
        r = idx_msg_walk_rows(txn, j->name, &f->base);
        load_base(f, from);
        skips_load(f, txn);
    }
    /* Kept apart from the folder state: a first run that failed still
     * remembers the files it left out. */
    f->nlskips = skiplist_local_load(txn, j->name, &f->lskips);
    f->lskips_cap = f->nlskips;
    idx_abort(txn);
    return r;
}

static int folder_prepare_index(struct session *e)
{
    struct fstate *f = e->f;
    struct fjob *j = f->job;
    int r = f->base_read ? f->base_rc : base_read(e->idx, f);
    f->base_read = false; /* a lazy folder's later scan reads it afresh */
    if (r < 0) {
        folder_fail_idx(e, r);
        return r;
    }
    if (j->reset) {
        /* The local folder vanished and --force says to fetch it again:
         * forget what was in sync, or every message would look deleted
         * locally and be deleted on the server. */
        f->base.n = 0;
        f->nintents = 0;
        f->nskips = 0;
        skiplist_local_free(f->lskips, f->nlskips);
        f->lskips = NULL;
        f->nlskips = f->lskips_cap = 0;
        memset(&f->st, 0, sizeof(f->st));
        if (!e->opts.dry_run) {
            struct idx_txn *w;
            if (idx_begin(e->idx, true, &w) == 0) {
                int fr = forget_folder_records(w, j->name);
                if (fr < 0 && fr != -ENOENT) {
                    idx_abort(w);
                } else {
                    idx_commit(w);
                }
            }
        }
    }

    /* Download intents (APPENDING with a UID): the file made it into the
     * Maildir -> adopt it; else forget the intent and download again. */
    struct idx_msg *adopt = NULL;
    size_t nadopt = 0, adopt_cap = 0;
    char **fl = NULL;
    size_t nforget = 0, forget_cap = 0;
    size_t out = 0;
    for (size_t i = 0; i < f->base.n; i++) {
        struct idx_row *m = &f->base.v[i];
        const char *lid = idx_rows_lid(&f->base, i);
        if (m->state == IDX_MSG_APPENDING) {
            if (scan_has(f, lid)) {
                m->state = IDX_MSG_SYNCED;
                xgrow(&adopt, &adopt_cap, nadopt + 1, sizeof(*adopt));
                idx_rows_get(&f->base, i, &adopt[nadopt++]);
                f->job->res->counts.adopted++;
            } else {
                /* A copy of the name, taken now: the list outlives the
                 * compaction below, and a wrong name dropped would forget
                 * a synced message. */
                xgrow(&fl, &forget_cap, nforget + 1, sizeof(*fl));
                fl[nforget++] = xstrdup(lid);
                continue;
            }
        }
        f->base.v[out++] = *m;
    }
    f->base.n = out;
    if (nadopt > 0 || nforget > 0) {
        struct idx_ops o = {.folder = j->name,
                            .puts = adopt,
                            .nputs = nadopt,
                            .drop_lids = (const char *const *)fl,
                            .ndrop_lids = nforget};
        r = idx_apply(e, &o);
    }
    for (size_t i = 0; i < nforget; i++) {
        free(fl[i]);
    }
    free(fl);
    free(adopt);
    if (r < 0) {
        return r;
    }

    /* Reported on every run, also when the folder turns out unchanged. */
    count_skips(e, f->skips, f->nskips);

    if (!f->lview_ready) {
        local_view_build(f, f->scan);
    }
    f->lview_ready = false;
    lskips_prune(e);
    return 0;
}

/* What a local deletion does on the server in this run: on_local_delete,
 * unless the server cannot do that here (no trash folder known, or no UID
 * EXPUNGE without UIDPLUS), in which case the message is only flagged
 * \Deleted. The planner is given this mode rather than the configured one:
 * a message left flagged keeps its record, marked \Deleted, and only the
 * flag mode knows such a record as handled. Planned as 'trash', it was
 * listed for deletion (and counted) again on every later run. */
static enum plan_local_delete local_delete_mode(const struct session *e)
{
    enum plan_local_delete mode = e->acct->on_local_delete;
    if (mode == PLAN_LOCAL_DELETE_TRASH && e->run->trash == NULL) {
        return PLAN_LOCAL_DELETE_FLAG;
    }
    if (mode == PLAN_LOCAL_DELETE_TRASH && e->f != NULL &&
        strcmp(e->run->trash, e->f->job->name) == 0) {
        mode = PLAN_LOCAL_DELETE_EXPUNGE; /* deleted in the trash itself */
    }
    if (mode == PLAN_LOCAL_DELETE_EXPUNGE && e->im != NULL &&
        !(e->ro->caps(e->im) & IMAP_CAP_UIDPLUS)) {
        mode = PLAN_LOCAL_DELETE_FLAG;
    }
    return mode;
}

static void fill_input(struct session *e, struct plan_input *in, struct plan_server_msg **sm_r)
{
    struct fstate *f = e->f;
    memset(in, 0, sizeof(*in));
    struct plan_server_msg *sm = xcalloc(f->nsmsgs + 1, sizeof(*sm));
    for (size_t i = 0; i < f->nsmsgs; i++) {
        sm[i].uid = f->smsgs[i].uid;
        sm[i].flags = f->smsgs[i].flags;
        sm[i].kw = (const char *const *)f->smsgs[i].kw;
        sm[i].nkw = f->smsgs[i].nkw;
        sm[i].size = f->smsgs[i].size;
        sm[i].internaldate = f->smsgs[i].internaldate;
    }
    *sm_r = sm;
    in->server.complete = !f->delta;
    in->server.msgs = sm;
    in->server.nmsgs = f->nsmsgs;
    in->server.vanished = f->vanished;
    in->server.nvanished = f->nvanished;
    in->local.msgs = f->lview;
    in->local.nmsgs = f->nlview;
    in->local.kw_ok = f->md != NULL ? kw_ok : NULL;
    in->local.kw_arg = e;
    in->base = &f->base;
    if (f->lazy && f->selected) {
        /* Only the rows the delta named (delta_done): the guard counts
         * the folder's records. */
        in->nbase_total = f->nbase_total;
    }
    in->on_local_delete = local_delete_mode(e);
    in->max_delete_ratio = e->acct->max_delete_ratio;
    in->max_size = e->acct->max_size;
    in->max_age_days = e->acct->max_age_days;
    in->now = e->now;
    in->force = e->opts.force;
    in->nmoved = moves_moved_uids(e, &in->moved);
    /* A dry run parks them in memory only (sync/moves.c), and pairs
     * them as the real run does. */
    in->park_orphans = moves_pairing_pending(e);
    in->folder = f->job->name;
    in->account = e->acct->name;
}

/* Whether the local side changed since the base (a plan against a server
 * delta that reports nothing is empty). */
/* The common case of local_unchanged, without building a plan: the folder
 * holds exactly the messages of the base, each with the flags last synced
 * and no keywords on either side. */
static bool local_same_as_base(const struct fstate *f)
{
    if (f->scan == NULL || f->scan->count != f->base.n) {
        return false;
    }
    size_t hint = 0;
    for (size_t i = 0; i < f->base.n; i++) {
        const struct idx_row *m = &f->base.v[i];
        if (m->state != IDX_MSG_SYNCED || m->lid_len == 0 ||
            idx_rows_keywords(&f->base, i)[0] != '\0') {
            return false;
        }
        const struct md_msg *l = md_scan_find_near(f->scan, idx_rows_lid(&f->base, i), &hint);
        if (l == NULL || l->keywords != 0 || l->flags != m->flags) {
            return false;
        }
    }
    return true;
}

/* The cheap half of local_unchanged: a row a killed run left unsettled or
 * parked, or an intent, means the folder must be synced whatever the
 * files say. */
static bool local_rows_settled(const struct fstate *f)
{
    if (f->nintents > 0) {
        return false;
    }
    for (size_t i = 0; i < f->base.n; i++) {
        if (f->base.v[i].flags & IDX_FLAGS_UNSETTLED) {
            return false; /* settled from a listing (settle_base) */
        }
        if (f->base.v[i].state == IDX_MSG_ORPHAN) {
            return false; /* left by a run stopped before its pass ended */
        }
    }
    return true;
}

/* The rest of local_unchanged runs on the thread pool: at 100,000
 * messages the comparison of every file with its base row, and the plan
 * against an empty server delta when they differ, take the loop thread
 * hundreds of milliseconds. The folder waits meanwhile (fstate.reading). */
struct unchanged_job {
    uv_work_t req;
    struct session *e;
    struct plan_input in;
    struct plan_server_msg *sm;
    bool saved_delta;
    size_t saved_n, saved_v;
    bool unchanged;
    void (*cont)(struct session *e, bool unchanged);
};

static void unchanged_work(uv_work_t *req)
{
    struct unchanged_job *j = req->data;
    const struct fstate *f = j->e->f;
    if (local_same_as_base(f)) {
        j->unchanged = true;
        return;
    }
    struct plan *p = plan_build(&j->in);
    j->unchanged = plan_empty(p);
    plan_free(p);
}

static void unchanged_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct unchanged_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = e->f;
    void (*cont)(struct session *, bool) = j->cont;
    bool unchanged = j->unchanged;
    f->reading = false;
    f->delta = j->saved_delta;
    f->nsmsgs = j->saved_n;
    f->nvanished = j->saved_v;
    free(j->sm);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    cont(e, unchanged);
}

/* Whether the local side changed since the base (a plan against a server
 * delta that reports nothing is empty): cont is called with the answer,
 * from a later loop turn unless the rows alone say no. */
static void local_unchanged_then(struct session *e, void (*cont)(struct session *e, bool unchanged))
{
    struct fstate *f = e->f;
    if (!local_rows_settled(f)) {
        cont(e, false);
        return;
    }
    struct unchanged_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->cont = cont;
    j->saved_delta = f->delta;
    j->saved_n = f->nsmsgs;
    j->saved_v = f->nvanished;
    f->delta = true;
    f->nsmsgs = 0;
    f->nvanished = 0;
    fill_input(e, &j->in, &j->sm);
    j->in.force = true;
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, unchanged_work, unchanged_done) != 0) {
        unchanged_work(&j->req);
        unchanged_done(&j->req, 0);
    }
}

/* ---- folder: server state --------------------------------------------------------- */

static void on_fetch_msg(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    if (f == NULL || m->uid == 0 || !(m->have & IMAP_FETCH_FLAGS)) {
        return;
    }
    /* UID n:* returns the last message even below n: keep only what the
     * command asked for (the new range starts at the old UIDNEXT, and
     * skipped messages listed again lie below it). */
    if ((m->have & IMAP_FETCH_SIZE) && f->delta && m->uid < f->st.uidnext &&
        !u32_in(f->unskip, f->nunskip, m->uid)) {
        return;
    }
    xgrow(&f->smsgs, &f->smsgs_cap, f->nsmsgs + 1, sizeof(*f->smsgs));
    struct smsg *s = &f->smsgs[f->nsmsgs++];
    memset(s, 0, sizeof(*s));
    s->uid = m->uid;
    s->flags = imap_to_md(m->flags);
    s->size = m->size;
    s->internaldate = m->internaldate;
    s->msgid = m->message_id != NULL ? xstrdup(m->message_id) : NULL;
    if (m->emailid != NULL) {
        msgfacts_emailid_hash(m->emailid, s->eid);
    }
    s->kw = xcalloc(m->nkeywords + 1, sizeof(char *));
    for (size_t i = 0; i < m->nkeywords; i++) {
        if (is_forwarded(m->keywords[i])) {
            s->flags |= MD_FLAG_PASSED;
        } else if (m->keywords[i][0] != '\\') {
            s->kw[s->nkw++] = xstrdup(m->keywords[i]);
        }
    }
}

/* A command the client refused before sending it (a folder name that
 * cannot be given to the server, a capability the server lacks) ends with
 * err < 0 while the connection stays up: that command failed, and nothing
 * else will report it. After a connection failure on_imap_error does. */
bool refused_locally(const struct session *e, const struct imap_result *res)
{
    if (res->err >= 0 || e->im == NULL || conn_lost(e)) {
        return false;
    }
    enum imap_state s = e->ro->state(e->im);
    return s != IMAP_STATE_FAILED && s != IMAP_STATE_CLOSED;
}

bool cmd_ok(struct session *e, const struct imap_result *res, const char *what)
{
    if (res->err < 0) {
        if (refused_locally(e, res)) {
            folder_fail(e, "%s: %s", what, res->text != NULL ? res->text : "refused");
        } else {
            /* The connection broke before the tagged answer: whatever the
             * command listed so far is not the whole answer. The folder
             * fails at once, so nothing is planned from it; on_imap_error
             * follows for the account. */
            folder_fail_transient(e, "%s cut short: %s", what,
                                  res->text != NULL ? res->text : "connection failed");
        }
        return false;
    }
    if (res->status != IMAP_STATUS_OK) {
        /* The response code says why in a word ([OVERQUOTA], [TOOBIG],
         * [NOPERM], [LIMIT]...): keep it with the text. */
        if (res->code != NULL &&
            (strcasecmp(res->code, "UNAVAILABLE") == 0 || strcasecmp(res->code, "INUSE") == 0 ||
             strcasecmp(res->code, "EXPUNGEISSUED") == 0)) {
            /* RFC 5530: the server cannot do it now, but will later; or
             * another client expunged messages meanwhile, which the next
             * sync sees. */
            folder_fail_transient(e, "%s: [%s] %s", what, res->code,
                                  res->text != NULL ? res->text : "failed");
        } else if (res->code != NULL) {
            folder_fail(e, "%s: [%s] %s", what, res->code,
                        res->text != NULL ? res->text : "failed");
        } else {
            folder_fail(e, "%s: %s", what, res->text != NULL ? res->text : "failed");
        }
        return false;
    }
    return true;
}

/* A command of the current folder could not be queued (r < 0): its answer
 * will never come, so the folder fails instead of planning without it.
 * After a drop that is the connection's doing, and temporary. */
void queue_failed(struct session *e, int r, const char *what)
{
    if (r == -ENOTCONN || conn_lost(e)) {
        const char *why = e->im != NULL ? e->ro->error(e->im) : NULL;
        folder_fail_transient(e, "%s not sent, the connection failed: %s", what,
                              why != NULL ? why : "not connected");
    } else {
        folder_fail(e, "cannot queue %s: %s", what, strerror(-r));
    }
}

void phase_cmd_done(struct session *e)
{
    if (e->f != NULL && e->f->pending > 0) {
        e->f->pending--;
    }
    if (e->f != NULL && e->f->pending == 0 && !conn_lost(e)) {
        folder_advance(e);
    }
}

void on_fetch_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    cmd_ok(e, res, "UID FETCH");
    phase_cmd_done(e);
}

static void on_search_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    if (cmd_ok(e, res, "UID SEARCH")) {
        struct fstate *f = e->f;
        f->search = xmalloc((res->nuids + 1) * sizeof(uint32_t));
        memcpy(f->search, res->uids, res->nuids * sizeof(uint32_t));
        f->nsearch = res->nuids;
        f->have_search = true;
    }
    phase_cmd_done(e);
}

static const struct imap_fetch_cb flags_cb = {.on_message = on_fetch_msg, .done = on_fetch_done};

void fetch_uids(struct session *e, const uint32_t *uids, size_t n, unsigned items,
                const struct imap_fetch_cb *cb, const char *what)
{
    char **sets = NULL;
    size_t nsets = n > 0 ? imap_uidset_format(uids, n, 0, &sets) : 0;
    for (size_t k = 0; k < nsets; k++) {
        e->f->pending++;
        int r = e->ro->uid_fetch(e->im, sets[k], items, 0, false, cb, e);
        if (r < 0) {
            e->f->pending--;
            queue_failed(e, r, what);
        }
        free(sets[k]);
    }
    free(sets);
}

/* Queues one listing command of the FETCH phase; a command that cannot be
 * queued fails the folder (its part of the listing would be missing). */
static void listing_fetch(struct session *e, const char *set, unsigned items, uint64_t changedsince)
{
    e->f->pending++;
    int r = e->ro->uid_fetch(e->im, set, items, changedsince, false, &flags_cb, e);
    if (r < 0) {
        e->f->pending--;
        queue_failed(e, r, "UID FETCH");
    }
}

static void issue_fetch(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_FETCH;
    const struct imap_mailbox *mb = &f->mb;
    bool known = f->st.uidvalidity != 0 && f->st.uidvalidity == mb->uidvalidity;
    f->condstore = e->ro->condstore_enabled(e->im) && !mb->nomodseq && mb->highestmodseq > 0;
    f->delta = known && f->condstore && f->st.highestmodseq > 0 && f->st.uidnext > 0;
    f->pending = 1; /* held until all are queued */
    unsigned items = IMAP_FETCH_FLAGS | IMAP_FETCH_SIZE | IMAP_FETCH_INTERNALDATE;
    if (f->rematch) {
        items |= IMAP_FETCH_MESSAGE_ID;
    }
    /* Where the server offers OBJECTID, every listed message's EMAILID:
     * recorded with a download, it pairs a move by another client surer
     * than a Message-ID (messages without one included). Only the
     * messages new since the last complete sync are listed with it. */
    if (e->ro->caps(e->im) & IMAP_CAP_OBJECTID) {
        items |= IMAP_FETCH_EMAILID;
    }
    /* Orphans wait for a pair (sync/moves.c): the new messages' Message-ID
     * comes with their listing (in the full listing's case, a listing of
     * the new UIDs of its own). */
    bool pair = moves_want_msgids(e);
    if (mb->exists == 0) {
        /* Nothing there: every known message is gone. */
        f->delta = false;
    } else if (!f->delta) {
        /* Without CONDSTORE every message is listed for its flags. Those
         * below the UIDNEXT of the last complete sync need nothing else:
         * each is in the base, or skipped with its size and date (see
         * find_skip below), and a size and a date matter only to a
         * download. At 100,000 messages that spares the server a size and
         * a date per message, and the parser half the bytes. */
        char old_set[32], set[32];
        if (known && !f->rematch && f->st.uidnext > 1 &&
            imap_uid_range_format(1, f->st.uidnext - 1, old_set, sizeof(old_set)) == 0 &&
            imap_uid_range_format(f->st.uidnext, IMAP_UID_STAR, set, sizeof(set)) == 0) {
            listing_fetch(e, old_set, IMAP_FETCH_FLAGS, 0);
            /* N:* names the last message even below N: listed twice, the
             * entry with a size wins (dedupe_server). */
            listing_fetch(e, set, pair ? items | IMAP_FETCH_MESSAGE_ID : items, 0);
        } else {
            listing_fetch(e, "1:*", items, 0);
            if (pair && known && f->st.uidnext > 0 && mb->uidnext > f->st.uidnext &&
                imap_uid_range_format(f->st.uidnext, IMAP_UID_STAR, set, sizeof(set)) == 0) {
                listing_fetch(e, set, items | IMAP_FETCH_MESSAGE_ID, 0);
            }
        }
    } else {
        if (!f->qresync) {
            /* Flags changed since the stored HIGHESTMODSEQ. */
            if (mb->highestmodseq != f->st.highestmodseq) {
                listing_fetch(e, "1:*", IMAP_FETCH_FLAGS, f->st.highestmodseq);
            }
            /* Expunges: what is still there of the known range. A folder
             * that never held a message (UIDNEXT 1 when last synced) has
             * no known range, and "UID 1:0" is no valid set. */
            char crit[64];
            if (imap_uid_range_format(1, f->st.uidnext - 1, crit + 4, sizeof(crit) - 4) == 0) {
                memcpy(crit, "UID ", 4);
                f->pending++;
                int r = e->ro->uid_search(e->im, crit, on_search_done, e);
                if (r < 0) {
                    f->pending--;
                    queue_failed(e, r, "UID SEARCH");
                }
            } else {
                f->have_search = true;
                f->nsearch = 0;
            }
        }
        char set[32];
        if ((mb->uidnext == 0 || mb->uidnext > f->st.uidnext) &&
            imap_uid_range_format(f->st.uidnext, IMAP_UID_STAR, set, sizeof(set)) == 0) {
            listing_fetch(e, set, pair ? items | IMAP_FETCH_MESSAGE_ID : items, 0);
        }
        /* Skipped before but not under today's limits (max_size raised,
         * max_age_days changed): list them again so they are downloaded. */
        for (size_t i = 0; i < f->nskips; i++) {
            if (!still_skipped(e, &f->skips[i])) {
                xgrow(&f->unskip, &f->unskip_cap, f->nunskip + 1, sizeof(*f->unskip));
                f->unskip[f->nunskip++] = f->skips[i].uid;
            }
        }
        char **sets = NULL;
        size_t nsets = f->nunskip > 0 ? imap_uidset_format(f->unskip, f->nunskip, 0, &sets) : 0;
        for (size_t k = 0; k < nsets; k++) {
            listing_fetch(e, sets[k], items, 0);
            free(sets[k]);
        }
        free(sets);
    }
    phase_cmd_done(e);
}

static void select_continue(struct session *e);

/* ---- a quiet Maildir and a server delta ------------------------------------------- */

/* A lazy folder (local_quiet) whose server sent a QRESYNC delta: the
 * delta names the UIDs that changed or vanished, and the Maildir is as
 * the last complete sync left it, so only those UIDs' rows and files
 * matter. They are looked up by key, their files found by the names the
 * rows imply, and the plan is made from them alone, without reading the
 * whole base or the whole directory (at 100,000 messages tens of MiB and
 * a tenth of a second). Anything that would need more than the rows and
 * files named (a row not plainly synced, an intent, a record past the
 * recorded UIDNEXT, a file not found as its row says) takes the full path,
 * scan and base, as before. */
struct delta_job {
    uv_work_t req;
    struct session *e;
    struct fstate *f;
    struct idx *idx;
    char *folder;
    uint32_t uidnext; /* as recorded: a record at or past it is unexpected */
    uint32_t *uids;   /* the delta's changed and vanished UIDs */
    size_t nuids;
    struct idx_rows base;
    struct md_scan *scan;
    size_t total; /* the folder's records */
    size_t nby_name, nby_id;
    /* The files another program changed (fstate.lnames), by identity
     * (sorted), and how many of their rows were found. */
    struct lname *lnames;
    size_t nlnames;
    size_t nlocal;
    const char *why; /* NULL, or why the full path is taken */
};

/* One of fstate.lnames: the identity of the file it names. */
struct lname {
    char *id;
    const char *rel; /* "new/NAME" or "cur/NAME", in fstate.lnames */
};

static int lname_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lname *)a)->id, ((const struct lname *)b)->id);
}

/* Whether any of the names of j->lnames[i]'s identity is a file. */
static bool lname_any_file(const struct delta_job *j, size_t i)
{
    const char *path = md_folder_path(j->f->md);
    for (size_t k = i; k < j->nlnames && strcmp(j->lnames[k].id, j->lnames[i].id) == 0; k++) {
        char *full = path_join(path, j->lnames[k].rel);
        bool there = is_file(full);
        free(full);
        if (there) {
            return true;
        }
    }
    return false;
}

/* The rows of the files another program changed, found by identity, go
 * into the delta's UIDs; a file whose identity has no row (new here:
 * delivered, or moved from another folder, which sync/moves.c pairs
 * against the whole folder), or a row not plainly synced, takes the full
 * path. Names that are no Maildir message (dotfiles) are left out, as a
 * scan leaves them. */
static void delta_local(struct delta_job *j)
{
    const struct fstate *f = j->f;
    j->lnames = xcalloc(f->nlnames + 1, sizeof(*j->lnames));
    for (size_t i = 0; i < f->nlnames; i++) {
        const char *rel = f->lnames[i];
        bool in_new = strncmp(rel, "new/", 4) == 0;
        struct md_msg m;
        if ((!in_new && strncmp(rel, "cur/", 4) != 0) || !md_parse_name(rel + 4, in_new, &m)) {
            continue;
        }
        j->lnames[j->nlnames].id = m.id;
        j->lnames[j->nlnames].rel = rel;
        j->nlnames++;
        m.id = NULL;
        md_msg_clear(&m);
    }
    qsort(j->lnames, j->nlnames, sizeof(*j->lnames), lname_cmp);
    if (j->nlnames == 0) {
        return;
    }
    struct idx_txn *txn;
    if (idx_begin(j->idx, false, &txn) < 0) {
        j->why = "index not readable";
        return;
    }
    struct idx_msg *m = xmalloc(sizeof(*m));
    for (size_t i = 0; i < j->nlnames && j->why == NULL; i++) {
        if (i > 0 && strcmp(j->lnames[i - 1].id, j->lnames[i].id) == 0) {
            continue;
        }
        int r = idx_msg_get_lid(txn, j->folder, j->lnames[i].id, m);
        if (r == -ENOENT) {
            /* Gone with its row (local_names_plain), or new here. */
            if (lname_any_file(j, i)) {
                j->why = "a file new to the folder";
            }
        } else if (r < 0) {
            j->why = "index not readable";
        } else if (m->uid == 0) {
            j->why = "a row not plainly synced";
        } else {
            j->uids[j->nuids++] = m->uid;
            j->nlocal++;
        }
    }
    free(m);
    idx_abort(txn);
}

/* The names another program gave the identity lid (delta_local), or
 * NULL; *n_r of them from the one returned on. */
static const struct lname *lnames_of(const struct delta_job *j, const char *lid, size_t *n_r)
{
    struct lname key = {.id = (char *)lid};
    *n_r = 0;
    if (j->nlnames == 0) {
        return NULL; /* (the full listing's rows: ldiff_work) */
    }
    const struct lname *hit = bsearch(&key, j->lnames, j->nlnames, sizeof(*j->lnames), lname_cmp);
    if (hit == NULL) {
        return NULL;
    }
    while (hit > j->lnames && strcmp(hit[-1].id, lid) == 0) {
        hit--;
    }
    while (hit + *n_r < j->lnames + j->nlnames && strcmp(hit[*n_r].id, lid) == 0) {
        (*n_r)++;
    }
    return hit;
}

/* A file another program changed: of the names its row implies and the
 * names the owner saw it take, exactly one must be a file, which is then
 * the truth for the plan (its flags and keywords as they are now). None
 * (removed, or moved to another folder) or two (a copy) take the full
 * path: deletions and moves are decided against the whole folder. */
static bool delta_local_file(struct delta_job *j, const char *path, const char *row_cur,
                             const char *row_new, const struct lname *ln, size_t nln,
                             struct md_msg *m_r)
{
    const char *cands[2 + 64];
    size_t nc = 0;
    cands[nc++] = row_cur;
    if (row_new != NULL) {
        cands[nc++] = row_new;
    }
    for (size_t k = 0; k < nln && nc < sizeof(cands) / sizeof(*cands); k++) {
        cands[nc++] = ln[k].rel;
    }
    if (nln > 64) {
        return false;
    }
    const char *found = NULL;
    for (size_t c = 0; c < nc; c++) {
        bool seen = false;
        for (size_t d = 0; d < c && !seen; d++) {
            seen = strcmp(cands[d], cands[c]) == 0;
        }
        if (seen) {
            continue;
        }
        char *full = path_join(path, cands[c]);
        bool there = is_file(full);
        free(full);
        if (there && found != NULL) {
            return false;
        }
        if (there) {
            found = cands[c];
        }
    }
    bool in_new = found != NULL && strncmp(found, "new/", 4) == 0;
    return found != NULL && md_parse_name(found + 4, in_new, m_r);
}

/* A lazy folder after all scanned and read whole: the skip list is read
 * again with the base, and the stamp recorded is the one taken before
 * this scan, not the one a vouched run kept (local_quiet), so that
 * the changes this scan sees are behind the next run. */
static void lazy_scan(struct session *e)
{
    struct fstate *f = e->f;
    f->lazy = false;
    if (f->stamp_fresh.taken_ns != 0) {
        f->stamp = f->stamp_fresh;
    }
    free(f->skips);
    f->skips = NULL;
    f->nskips = f->skips_cap = 0;
    scan_start(e);
}

/* What moved, for a lazy folder's log lines. */
static const char *delta_what(struct session *e)
{
    struct fstate *f = e->f;
    if (f->nlnames == 0) {
        return "unchanged locally, changed on the server";
    }
    return mailbox_unchanged(e) ? "unchanged on the server, files changed by another program"
                                : "changed on the server, and files by another program";
}

static int md_msg_id_cmp(const void *a, const void *b)
{
    return strcmp(((const struct md_msg *)a)->id, ((const struct md_msg *)b)->id);
}

/* Why the folder's records cannot be synced from some rows alone (NULL:
 * they can): an upload intent waiting, or a record at or past the
 * recorded UIDNEXT, written by a run stopped before its folder state (the
 * new mail's listing would not know it). */
static const char *rows_tail_why(struct idx_txn *txn, const char *folder, uint32_t uidnext)
{
    uint32_t last = 0;
    bool pending = false;
    if (idx_msg_uid_last(txn, folder, &last, &pending) < 0) {
        return "index not readable";
    }
    if (pending) {
        return "an upload intent waits";
    }
    return last >= uidnext ? "a record past the recorded UIDNEXT" : NULL;
}

/* Whether a row is plainly synced: intents, orphans and unsettled rows
 * are settled against the whole folder (settle_base, moves, intents). */
static bool row_plain(uint32_t uid, unsigned state, unsigned flags, bool has_lid)
{
    return uid != 0 && state == IDX_MSG_SYNCED && !(flags & IDX_FLAGS_UNSETTLED) && has_lid;
}

/* The rows of the delta's UIDs, read in one read transaction. */
static void delta_rows(struct delta_job *j)
{
    struct idx_txn *txn;
    if (idx_begin(j->idx, false, &txn) < 0) {
        j->why = "index not readable";
        return;
    }
    j->why = rows_tail_why(txn, j->folder, j->uidnext);
    j->total = idx_msg_count(txn, j->folder);
    struct idx_msg *m = xmalloc(sizeof(*m));
    for (size_t i = 0; i < j->nuids && j->why == NULL; i++) {
        int r = idx_msg_get_uid(txn, j->folder, j->uids[i], m);
        if (r == -ENOENT) {
            continue; /* new on the server, or never known here */
        }
        if (r < 0) {
            j->why = "index not readable";
        } else if (!row_plain(m->uid, m->state, m->flags, m->lid[0] != '\0')) {
            j->why = "a row not plainly synced";
        } else {
            idx_rows_add(&j->base, m);
        }
    }
    free(m);
    idx_abort(txn);
    /* A thousand lookups spread over the folder map a few MiB of the
     * data file that no walk or write would give back before the end. */
    idx_map_drop(j->idx);
}

/* The keyword letters the row's names have in the folder's table; names
 * without one are not on the file (a scan would not see them either). */
static md_keywords delta_kw_bits(const char *text, const char *const table[26])
{
    md_keywords kw = 0;
    while (*text != '\0') {
        const char *end = strchr(text, ' ');
        size_t len = end != NULL ? (size_t)(end - text) : strlen(text);
        for (int b = 0; b < 26; b++) {
            if (table[b] != NULL && strlen(table[b]) == len && memcmp(table[b], text, len) == 0) {
                kw |= (md_keywords)1u << b;
                break;
            }
        }
        text += len;
        while (*text == ' ') {
            text++;
        }
    }
    return kw;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Each row's file, by the name its row implies (the quiet stamp vouches
 * that no client renamed it since the scan the row was recorded from):
 * cur/<lid>:2,<flags and keyword letters>, or new/<lid> for a row without
 * any. A file not there (a name another client wrote in another form) is
 * looked for by identity, once for all of them; found with other flags,
 * or not found at all, the full path decides. */
static void delta_files(struct delta_job *j)
{
    struct md_folder *md = j->f->md;
    const char *path = md_folder_path(md);
    const char *table[26] = {0};
    md_keyword_table(md, table);
    size_t n = j->base.n;
    struct md_scan *scan = xcalloc(1, sizeof(*scan));
    scan->msgs = xcalloc(n + 1, sizeof(*scan->msgs));
    const char **missing = xcalloc(n + 1, sizeof(*missing));
    size_t nmissing = 0;
    for (size_t i = 0; i < n && j->why == NULL; i++) {
        const char *lid = idx_rows_lid(&j->base, i);
        unsigned flags = j->base.v[i].flags & MD_FLAGS_ALL;
        md_keywords kw = delta_kw_bits(idx_rows_keywords(&j->base, i), table);
        char *suffix = md_info_suffix(flags, kw, NULL);
        char *row_cur = xasprintf("cur/%s%s", lid, suffix);
        char *row_new = flags == 0 && kw == 0 ? xasprintf("new/%s", lid) : NULL;
        free(suffix);
        struct md_msg *m = &scan->msgs[scan->count];
        size_t nln;
        const struct lname *ln = lnames_of(j, lid, &nln);
        if (ln != NULL) {
            /* Changed by another program: as the file is now. */
            if (delta_local_file(j, path, row_cur, row_new, ln, nln, m)) {
                scan->count++;
                j->nby_name++;
            } else {
                j->why = "a file another program changed is gone or doubled";
            }
            free(row_cur);
            free(row_new);
            continue;
        }
        char *name = path_join(path, row_cur);
        bool in_new = false, found = is_file(name);
        free(name);
        if (!found && row_new != NULL) {
            name = path_join(path, row_new);
            found = in_new = is_file(name);
            free(name);
        }
        free(row_cur);
        free(row_new);
        if (found) {
            j->nby_name++;
        } else {
            missing[nmissing++] = lid;
        }
        scan->count++;
        m->id = xstrdup(lid);
        m->flags = (uint8_t)flags;
        m->keywords = kw;
        m->in_new = in_new;
    }
    qsort(scan->msgs, scan->count, sizeof(*scan->msgs), md_msg_id_cmp);
    if (nmissing > 0 && j->why == NULL) {
        /* One read of the directory for all of them. Their names are left
         * to be made (md_msg_name): a rename or removal finds a file by
         * identity when it is not under that name. */
        qsort(missing, nmissing, sizeof(*missing), strp_cmp);
        bool *found = xcalloc(nmissing, sizeof(*found));
        unsigned *fl = xcalloc(nmissing, sizeof(*fl));
        int r = md_find_ids(path, missing, nmissing, found, fl);
        for (size_t k = 0; k < nmissing && j->why == NULL; k++) {
            const struct md_msg *m = md_scan_find(scan, missing[k]);
            if (r < 0 || !found[k] || m == NULL || fl[k] != m->flags) {
                j->why = "a file not where its row says";
            }
        }
        j->nby_id = nmissing;
        free(found);
        free(fl);
    }
    free(missing);
    j->scan = scan;
}

/* The rows and files a delta named become the folder's base and scan.
 * f->lazy stays set: the planner is told the base is partial, and how
 * large the folder is (fill_input). */
static void delta_take(struct fstate *f, struct idx_rows *base, struct md_scan *scan, size_t total)
{
    f->base = *base;
    f->scan = scan;
    f->nbase_total = total;
    f->lview = f->lmsgs;
    f->nlview = scan->count;
    f->lview_ready = false;
}

static void delta_work(uv_work_t *req)
{
    struct delta_job *j = req->data;
    delta_local(j);
    qsort(j->uids, j->nuids, sizeof(*j->uids), u32_cmp);
    size_t out = 0;
    for (size_t i = 0; i < j->nuids; i++) {
        if (out == 0 || j->uids[out - 1] != j->uids[i]) {
            j->uids[out++] = j->uids[i];
        }
    }
    j->nuids = out;
    /* Looked up in UID order, the rows come out in the base's order
     * (base_find searches them). */
    if (j->why == NULL) {
        delta_rows(j);
    }
    if (j->why == NULL) {
        delta_files(j);
    }
    if (j->why == NULL) {
        /* The loop leaves f alone while it is read (fstate.reading). */
        local_view_build(j->f, j->scan);
    }
}

static void delta_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct delta_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = j->f;
    f->reading = false;
    if (j->why == NULL) {
        delta_take(f, &j->base, j->scan, j->total);
    } else {
        idx_rows_free(&j->base);
        md_scan_free(j->scan);
    }
    bool back = pool_job_back(e);
    if (back && j->why != NULL) {
        log_debug("%s: %s: %s: scanning (%s)", e->acct->name, f->job->name, delta_what(e), j->why);
    } else if (back) {
        log_debug("%s: %s: %s: scanning only what the delta names: delta: %zu rows looked up "
                  "(%zu for files another program changed), %zu found (%zu files by name, %zu by "
                  "identity) of %zu",
                  e->acct->name, f->job->name, delta_what(e), j->nuids, j->nlocal, f->base.n,
                  j->nby_name, j->nby_id, j->total);
    }
    const char *why = j->why;
    for (size_t i = 0; i < j->nlnames; i++) {
        free(j->lnames[i].id);
    }
    free(j->lnames);
    free(j->uids);
    free(j->folder);
    free(j);
    if (!back) {
        return;
    }
    if (why != NULL) {
        lazy_scan(e);
        return;
    }
    /* Reported on every run, as folder_prepare_index does. */
    count_skips(e, f->skips, f->nskips);
    select_continue(e);
}

/* Whether the delta alone can be planned: a QRESYNC SELECT of the same
 * UIDVALIDITY that issue_fetch will complete as a delta, nothing that
 * needs the whole folder (released skips, other folders' orphans waiting
 * to pair, a dry run's printed plan). */
static bool delta_possible(struct session *e)
{
    const struct fstate *f = e->f;
    const struct imap_mailbox *mb = &f->mb;
    return f->md != NULL && !e->opts.dry_run && f->qresync && f->st.uidvalidity != 0 &&
           mb->uidvalidity == f->st.uidvalidity && e->ro->condstore_enabled(e->im) &&
           !mb->nomodseq && mb->highestmodseq > 0 && f->st.highestmodseq > 0 && f->st.uidnext > 0 &&
           mb->exists > 0 && e->run->norphans == 0 && !skips_released(e);
}

/* Starts the lookups of a delta on the thread pool; false when the full
 * path must be taken. */
static bool delta_start(struct session *e)
{
    struct fstate *f = e->f;
    if (!delta_possible(e)) {
        return false;
    }
    struct delta_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->f = f;
    j->idx = e->idx;
    j->folder = xstrdup(f->job->name);
    j->uidnext = f->st.uidnext;
    j->uids = xcalloc(f->nsmsgs + f->nvanished + f->nlnames + 1, sizeof(*j->uids));
    for (size_t i = 0; i < f->nsmsgs; i++) {
        j->uids[j->nuids++] = f->smsgs[i].uid;
    }
    for (size_t i = 0; i < f->nvanished; i++) {
        j->uids[j->nuids++] = f->vanished[i];
    }
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, delta_work, delta_done) != 0) {
        delta_work(&j->req);
        delta_done(&j->req, 0);
    }
    return true;
}

static void smsg_clear(struct smsg *s);

/* ---- a quiet Maildir and a full listing ----------------------------------------- */

/* A lazy folder (local_quiet) on a server without CONDSTORE: every
 * message is listed with its flags (issue_fetch), and what the server
 * changed is what differs from the base. The base is read whole on the
 * thread pool while the listing comes (48 bytes a row, the lids apart),
 * compared with the listing (ldiff_work), and the folder is then synced
 * from the rows that differ or vanished, as from a QRESYNC delta: their
 * files found by the names the rows imply (delta_files), without reading
 * the directory. Anything the delta path would refuse takes the full
 * path, scan and base, as before. */
struct lbase_job {
    uv_work_t req;
    struct session *e;
    struct fstate *f;
    struct idx *idx;
    char *folder;
    uint32_t uidnext;
    struct idx_rows rows;
    size_t total;
    const char *why;
};

static bool lbase_possible(struct session *e)
{
    const struct fstate *f = e->f;
    const struct imap_mailbox *mb = &f->mb;
    bool condstore = e->ro->condstore_enabled(e->im) && !mb->nomodseq && mb->highestmodseq > 0;
    return f->md != NULL && !e->opts.dry_run && !condstore && f->nlnames == 0 &&
           f->st.uidvalidity != 0 && mb->uidvalidity == f->st.uidvalidity && f->st.uidnext > 1 &&
           mb->exists > 0 && e->run->norphans == 0 && !skips_released(e);
}

static void lbase_work(uv_work_t *req)
{
    struct lbase_job *j = req->data;
    struct idx_txn *txn;
    if (idx_begin(j->idx, false, &txn) < 0) {
        j->why = "index not readable";
        return;
    }
    j->why = rows_tail_why(txn, j->folder, j->uidnext);
    if (j->why == NULL) {
        j->total = idx_msg_count(txn, j->folder);
        idx_rows_reserve(&j->rows, j->total);
        if (idx_msg_walk_rows(txn, j->folder, &j->rows) < 0) {
            j->why = "index not readable";
        }
    }
    idx_abort(txn);
    idx_map_drop(j->idx);
    for (size_t i = 0; i < j->rows.n && j->why == NULL; i++) {
        const struct idx_row *r = &j->rows.v[i];
        if (!row_plain(r->uid, r->state, r->flags, r->lid_len > 0) ||
            (i > 0 && r->uid <= j->rows.v[i - 1].uid)) {
            j->why = "a row not plainly synced";
        }
    }
}

static void lbase_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct lbase_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = j->f;
    f->reading = false;
    const char *why = j->why;
    if (why == NULL) {
        f->lbase = j->rows;
        f->lbase_total = j->total;
        f->lbase_set = true;
    } else {
        idx_rows_free(&j->rows);
    }
    free(j->folder);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    if (why != NULL) {
        log_debug("%s: %s: unchanged locally, changed on the server: scanning (%s)", e->acct->name,
                  f->job->name, why);
        lazy_scan(e);
        return;
    }
    select_continue(e);
}

/* Starts reading the base whole for a full listing to be compared with;
 * false when the full path must be taken. */
static bool lbase_start(struct session *e)
{
    struct fstate *f = e->f;
    if (!lbase_possible(e)) {
        return false;
    }
    struct lbase_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->f = f;
    j->idx = e->idx;
    j->folder = xstrdup(f->job->name);
    j->uidnext = f->st.uidnext;
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, lbase_work, lbase_done) != 0) {
        lbase_work(&j->req);
        lbase_done(&j->req, 0);
    }
    return true;
}

/* Whether the server's flags and keywords of a message are its row's. */
static bool smsg_same_as_row(const struct smsg *s, const struct idx_rows *rows, size_t k)
{
    if ((s->flags & MD_FLAGS_ALL) != (rows->v[k].flags & MD_FLAGS_ALL)) {
        return false;
    }
    const char *text = idx_rows_keywords(rows, k);
    size_t nrow = 0;
    for (const char *p = text; *p != '\0';) {
        while (*p == ' ') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        const char *end = strchr(p, ' ');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        bool found = false;
        for (size_t i = 0; i < s->nkw && !found; i++) {
            found = strlen(s->kw[i]) == len && memcmp(s->kw[i], p, len) == 0;
        }
        if (!found) {
            return false;
        }
        nrow++;
        p += len;
    }
    /* Every row keyword is listed; the listing has no other (duplicates
     * in either are counted once). */
    for (size_t i = 0; i < s->nkw; i++) {
        bool dup = false;
        for (size_t d = 0; d < i && !dup; d++) {
            dup = strcmp(s->kw[d], s->kw[i]) == 0;
        }
        if (!dup && nrow-- == 0) {
            return false;
        }
    }
    return true;
}

struct ldiff_job {
    uv_work_t req;
    struct delta_job dj; /* the rows that differ, their files (delta_files) */
    size_t *keep;        /* indices of f->smsgs that differ from the base */
    size_t nkeep;
    uint32_t *vanished;
    size_t nvanished;
};

static void ldiff_work(uv_work_t *req)
{
    struct ldiff_job *j = req->data;
    struct delta_job *dj = &j->dj;
    struct fstate *f = dj->f;
    dedupe_server(f);
    const struct idx_rows *lb = &f->lbase;
    j->keep = xcalloc(f->nsmsgs + 1, sizeof(*j->keep));
    j->vanished = xcalloc(lb->n + 1, sizeof(*j->vanished));
    struct idx_msg *m = xmalloc(sizeof(*m));
    size_t i = 0, k = 0;
    while (i < f->nsmsgs || k < lb->n) {
        if (k < lb->n && (i == f->nsmsgs || lb->v[k].uid < f->smsgs[i].uid)) {
            /* Not listed: expunged. Its row and file go to the plan. */
            j->vanished[j->nvanished++] = lb->v[k].uid;
            idx_rows_get(lb, k, m);
            idx_rows_add(&dj->base, m);
            k++;
        } else if (k == lb->n || f->smsgs[i].uid < lb->v[k].uid) {
            j->keep[j->nkeep++] = i++; /* new, or skipped: no row */
        } else {
            if (!smsg_same_as_row(&f->smsgs[i], lb, k)) {
                j->keep[j->nkeep++] = i;
                idx_rows_get(lb, k, m);
                idx_rows_add(&dj->base, m);
            }
            i++;
            k++;
        }
    }
    free(m);
    dj->total = f->lbase_total;
    delta_files(dj);
    if (dj->why == NULL) {
        local_view_build(f, dj->scan);
    }
}

static void ldiff_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct ldiff_job *j = req->data;
    struct delta_job *dj = &j->dj;
    struct session *e = dj->e;
    struct fstate *f = dj->f;
    f->reading = false;
    idx_rows_free(&f->lbase);
    f->lbase_set = false;
    const char *why = dj->why;
    if (why == NULL) {
        /* The listing keeps what differs from the base; the rest is as
         * the base says, which a delta means. */
        size_t out = 0;
        for (size_t i = 0, k = 0; i < f->nsmsgs; i++) {
            if (k < j->nkeep && j->keep[k] == i) {
                f->smsgs[out++] = f->smsgs[i];
                k++;
            } else {
                smsg_clear(&f->smsgs[i]);
            }
        }
        f->nsmsgs = out;
        free(f->vanished);
        f->vanished = j->vanished;
        f->nvanished = f->vanished_cap = j->nvanished;
        j->vanished = NULL;
        f->delta = true;
        delta_take(f, &dj->base, dj->scan, dj->total);
    } else {
        idx_rows_free(&dj->base);
        md_scan_free(dj->scan);
    }
    size_t nrows = f->base.n, total = dj->total, nkeep = j->nkeep, nvan = f->nvanished;
    free(j->keep);
    free(j->vanished);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    if (why != NULL) {
        log_debug("%s: %s: unchanged locally, changed on the server: scanning (%s)", e->acct->name,
                  f->job->name, why);
        /* The listing stands; the scan and the base go on to it
         * (start_folder_scanned). */
        f->listed = true;
        lazy_scan(e);
        return;
    }
    log_debug("%s: %s: unchanged locally, changed on the server: scanning only what the listing "
              "changed: %zu listed messages differ from the base, %zu vanished, %zu rows of %zu",
              e->acct->name, f->job->name, nkeep, nvan, nrows, total);
    count_skips(e, f->skips, f->nskips);
    fetch_headers(e);
}

static void ldiff_start(struct session *e)
{
    struct fstate *f = e->f;
    struct ldiff_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->dj.e = e;
    j->dj.f = f;
    j->dj.idx = e->idx;
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, ldiff_work, ldiff_done) != 0) {
        ldiff_work(&j->req);
        ldiff_done(&j->req, 0);
    }
}

static void on_select(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    struct fstate *f = e->f;
    if (res->err < 0 && !refused_locally(e, res)) {
        return;
    }
    if (res->err < 0 || res->status != IMAP_STATUS_OK || res->mailbox == NULL) {
        folder_fail(e, "SELECT: %s", res->text != NULL ? res->text : "failed");
        folder_advance(e);
        return;
    }
    f->mb = *res->mailbox;
    f->selected = true;
    if (f->qresync && f->mb.closed_unsure) {
        /* The server sent no [CLOSED]: what it reported with the SELECT
         * cannot be told from the previous folder's and was dropped. The
         * changes are listed the CONDSTORE way instead (CHANGEDSINCE and a
         * search for expunges), which needs nothing from the SELECT. */
        log_debug("%s: %s: no [CLOSED] from the server; listing changes without QRESYNC",
                  e->acct->name, f->job->name);
        f->qresync = false;
    }
    if (f->lazy) {
        if (mailbox_unchanged(e) && !skips_released(e) && f->nlnames == 0) {
            quiet_done(e);
            return;
        }
        /* The server moved and said how (QRESYNC), or another program
         * changed files the owner named: only the rows and files named
         * are read (delta_start). */
        if (delta_start(e) || lbase_start(e)) {
            return;
        }
        /* Otherwise the folder is synced the whole way, from a
         * scan and the base read now (start_folder_scanned goes on with
         * select_continue). What the SELECT reported is kept. */
        log_debug("%s: %s: %s: scanning", e->acct->name, f->job->name, delta_what(e));
        lazy_scan(e);
        return;
    }
    select_continue(e);
}

/* on_select, once the folder's local side and base are read. */
static void select_continue(struct session *e)
{
    struct fstate *f = e->f;
    if (f->st.uidvalidity != 0 && f->mb.uidvalidity != f->st.uidvalidity &&
        (f->base.n > 0 || f->nintents > 0)) {
        /* The server renumbered the folder (RFC 7162 section 6: forget its
         * UIDs and HIGHESTMODSEQ). The messages are matched to the local
         * files by Message-ID and size instead of being downloaded again. */
        f->rematch = true;
        log_info("%s: UIDVALIDITY of %s changed (%u -> %u): matching messages again", e->acct->name,
                 f->job->name, (unsigned)f->st.uidvalidity, (unsigned)f->mb.uidvalidity);
    } else if (f->base.n == 0 && f->nintents == 0 && f->scan != NULL && f->scan->count > 0 &&
               f->mb.exists > 0) {
        /* The index knows nothing of a folder that holds mail on both
         * sides: a lost index, or a Maildir that mbsync or OfflineIMAP
         * kept. The local files are matched to the server's messages
         * first, over a full listing, so that only what one side alone
         * holds is copied. */
        f->rematch = true;
        f->adopt = true;
        f->st.highestmodseq = 0;
        f->st.uidnext = 0;
        f->nvanished = 0;
        log_info("%s: %s: %zu local messages the index does not know: matching them with the "
                 "server",
                 e->acct->name, f->job->name, f->scan->count);
    }
    if (f->skip_uv != f->mb.uidvalidity) {
        f->nskips = 0; /* UIDs of another numbering */
    }
    if (f->st.uidvalidity != f->mb.uidvalidity) {
        /* A new folder, or a changed UIDVALIDITY with nothing known:
         * forget the old state. */
        f->st.highestmodseq = 0;
        f->st.uidnext = 0;
        f->nvanished = 0;
    }
    issue_fetch(e);
}

static void do_select(struct session *e)
{
    struct fstate *f = e->f;
    free(e->selected);
    e->selected = xstrdup(f->job->name);
    struct imap_select_opts so = {0};
    so.readonly = e->opts.dry_run;
    if (e->ro->qresync_enabled(e->im) && f->st.uidvalidity != 0 && f->st.highestmodseq > 0 &&
        f->st.uidnext > 0) {
        so.qresync_uidvalidity = f->st.uidvalidity;
        so.qresync_modseq = f->st.highestmodseq;
        f->qresync = true;
    } else if (e->ro->condstore_enabled(e->im)) {
        so.condstore = true;
    }
    f->phase = FP_SELECT;
    int r = e->ro->select(e->im, f->job->name, &so, on_select, e);
    if (r < 0) {
        queue_failed(e, r, "SELECT");
        folder_advance(e);
    }
}

struct smsg *find_smsg(struct fstate *f, uint32_t uid)
{
    size_t lo = 0, hi = f->nsmsgs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->smsgs[mid].uid == uid) {
            return &f->smsgs[mid];
        }
        if (f->smsgs[mid].uid < uid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

/* ---- folder: apply locally and on the server -------------------------------------------- */

static bool is_modified(const struct fstate *f, uint32_t uid)
{
    return imap_uidset_contains(f->modified, f->nmodified, uid);
}

/* Local flag changes and deletions, then one directory fsync. */
/* Every UID the plan's STOREs name, sorted, duplicates kept (caller frees). */
static uint32_t *store_uids(const struct plan *p, size_t *n_r)
{
    size_t n = 0;
    for (size_t i = 0; i < p->nstores; i++) {
        n += p->stores[i].nuids;
    }
    uint32_t *su = xcalloc(n + 1, sizeof(*su));
    n = 0;
    for (size_t i = 0; i < p->nstores; i++) {
        for (size_t k = 0; k < p->stores[i].nuids; k++) {
            su[n++] = p->stores[i].uids[k];
        }
    }
    qsort(su, n, sizeof(*su), u32_cmp);
    *n_r = n;
    return su;
}

/* Records the new base of messages whose merged flags are now on both
 * sides as soon as that is so, not at the end of the folder: after a kill
 * later in the folder the old base would make the next run take this run's
 * own renames and STOREs for changes made on the other side, and undo a
 * change made in between. stored false: the messages that needed no STORE
 * (once the local renames are durable); true: the rest (once the STOREs
 * answered, except [MODIFIED] ones). */
/* The plan's updates for the messages a STORE of this run changed
 * (stored) or the others; NULL when there are none to write. */
static struct idx_msg *updates_rows(const struct fstate *f, bool dry_run, bool stored, size_t *np_r)
{
    const struct plan *p = f->plan;
    *np_r = 0;
    if (p->nupdates == 0 || dry_run) {
        return NULL;
    }
    size_t nsu;
    uint32_t *su = store_uids(p, &nsu);
    struct idx_msg *puts = xcalloc(p->nupdates, sizeof(*puts));
    size_t np = 0;
    for (size_t i = 0; i < p->nupdates; i++) {
        uint32_t uid = p->updates[i].uid;
        bool in_store = nsu > 0 && bsearch(&uid, su, nsu, sizeof(*su), u32_cmp) != NULL;
        if (in_store != stored) {
            continue;
        }
        if (stored && (f->failed || f->stores_failed || is_modified(f, uid))) {
            continue;
        }
        puts[np++] = p->updates[i];
    }
    free(su);
    if (np == 0) {
        free(puts);
        return NULL;
    }
    *np_r = np;
    return puts;
}

/* The updates of the messages STOREd, with the write on the thread pool (a durable
 * commit of up to a whole folder's rows), then cont. */
struct rec_job {
    uv_work_t req;
    struct session *e;
    struct engine *run;
    char *folder;
    struct idx_msg *puts;
    size_t np;
    int r;
    char *dserr;
    void (*cont)(struct session *e);
};

static void rec_work(uv_work_t *req)
{
    struct rec_job *j = req->data;
    struct idx_ops o = {.folder = j->folder, .puts = j->puts, .nputs = j->np};
    j->r = engine_write(j->run, &o, 1, &j->dserr);
}

/* In the completion of a thread-pool job of e's folder that wrote with
 * engine_write (result r, dserr): reports a failure for the folder, or
 * for the run when the session ended meanwhile, and frees dserr. True to
 * go on (pool_job_back). */
static bool write_job_back(struct session *e, struct engine *run, int r, char *dserr)
{
    e->f->reading = false;
    if (!pool_job_back(e)) {
        if (r < 0) {
            engine_write_lost(run, r, dserr);
        } else {
            free(dserr);
        }
        return false;
    }
    if (r < 0) {
        engine_write_failed(e, r, dserr);
    } else {
        free(dserr);
    }
    return true;
}

static void rec_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct rec_job *j = req->data;
    struct session *e = j->e;
    void (*cont)(struct session *) = j->cont;
    int r = j->r;
    char *dserr = j->dserr;
    struct engine *run = j->run;
    free(j->folder);
    free(j->puts);
    free(j);
    if (write_job_back(e, run, r, dserr)) {
        cont(e);
    }
}

static void record_stored_then(struct session *e, void (*cont)(struct session *e))
{
    struct fstate *f = e->f;
    size_t np;
    struct idx_msg *puts = updates_rows(f, e->opts.dry_run, true, &np);
    f->updates_recorded = true;
    if (np == 0) {
        cont(e);
        return;
    }
    struct rec_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->run = e->run;
    j->folder = xstrdup(f->job->name);
    j->puts = puts;
    j->np = np;
    j->cont = cont;
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, rec_work, rec_done) != 0) {
        rec_work(&j->req);
        rec_done(&j->req, 0);
    }
}

/* The local side of the plan, once renames_marks' marks are written: the
 * renames, the deletions, the directories' fsync, then the index write
 * that forgets the deleted and records the renamed, all on the thread pool
 * (at 1% of 100,000 messages, a thousand renames held the loop thread for
 * tens of milliseconds). Only the folder's own files and state are
 * touched; the loop leaves them alone meanwhile (fstate.reading). */
struct local_job {
    uv_work_t req;
    struct session *e;
    struct engine *run;
    struct fstate *f;
    char *folder;
    bool dry_run;
    void (*cont)(struct session *e);
    unsigned flags_down, deleted_down;
    bool no_letters; /* a keyword letter could not be had */
    int md_r;        /* a rename, deletion or fsync failed */
    int idx_r;       /* engine_write */
    char *dserr;
};

static void local_work(uv_work_t *req)
{
    struct local_job *j = req->data;
    struct fstate *f = j->f;
    const struct plan *p = f->plan;
    bool touched = false;
    for (size_t i = 0; i < p->nlocal_flags; i++) {
        const struct plan_local_flags *lf = &p->local_flags[i];
        struct md_msg *m = md_scan_find(f->scan, lf->lid);
        if (m == NULL) {
            continue;
        }
        md_keywords kw = 0;
        for (size_t k = 0; k < lf->kw.n; k++) {
            /* assign_letters gave the folder's names their letters already;
             * after one failure here the lock is not waited for again. */
            int ix = f->kw_failed ? -EAGAIN : md_keyword_index(f->md, lf->kw.names[k], !j->dry_run);
            if (ix >= 0 && ix < 26) {
                kw |= (md_keywords)1u << ix;
            } else if (ix != MD_EKWFULL && ix != -ENOENT && ix != -EINVAL) {
                f->kw_failed = true;
                j->no_letters = true;
                return;
            }
        }
        int r = md_set_flags(f->md, m, lf->flags, kw, lf->flags != 0 || kw != 0 || !m->in_new);
        if (r < 0) {
            j->md_r = r;
            return;
        }
        touched = true;
        j->flags_down++;
    }
    for (size_t i = 0; i < p->nlocal_deletes; i++) {
        struct md_msg *m = md_scan_find(f->scan, p->local_deletes[i].lid);
        if (m == NULL) {
            continue;
        }
        int r = md_remove(f->md, m);
        if (r < 0) {
            j->md_r = r;
            return;
        }
        touched = true;
        j->deleted_down++;
    }
    if (touched) {
        int r = md_folder_sync(f->md);
        if (r < 0) {
            j->md_r = r;
            return;
        }
    }
    if (j->dry_run) {
        return;
    }
    /* Local deletions are durable: forget them. Local renames are durable:
     * their new base goes in now. One transaction. */
    struct idx_ops o[2];
    size_t no = 0;
    uint32_t *d = NULL;
    if (p->nlocal_deletes > 0) {
        d = xcalloc(p->nlocal_deletes, sizeof(*d));
        for (size_t i = 0; i < p->nlocal_deletes; i++) {
            d[i] = p->local_deletes[i].uid;
        }
        o[no++] = (struct idx_ops){.folder = j->folder, .drops = d, .ndrops = p->nlocal_deletes};
    }
    size_t np;
    struct idx_msg *puts = updates_rows(f, j->dry_run, false, &np);
    if (np > 0) {
        o[no++] = (struct idx_ops){.folder = j->folder, .puts = puts, .nputs = np};
    }
    if (no > 0) {
        j->idx_r = engine_write(j->run, o, no, &j->dserr);
    }
    free(d);
    free(puts);
    pool_trim_if(f->base.n);
}

static void local_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct local_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = e->f;
    void (*cont)(struct session *) = j->cont;
    f->reading = false;
    bool back = pool_job_back(e);
    if (back) {
        fcounts(e)->flags_down += j->flags_down;
        fcounts(e)->deleted_down += j->deleted_down;
        if (j->no_letters) {
            folder_fail(e, "%s", md_folder_error(f->md));
        } else if (j->md_r < 0) {
            folder_fail_md(e, j->md_r);
        } else if (j->idx_r < 0) {
            engine_write_failed(e, j->idx_r, j->dserr);
            j->dserr = NULL;
        }
    } else if (j->idx_r < 0) {
        engine_write_lost(j->run, j->idx_r, j->dserr);
        j->dserr = NULL;
    }
    free(j->dserr);
    free(j->folder);
    free(j);
    if (back) {
        cont(e);
    }
}

static void apply_local_then(struct session *e, void (*cont)(struct session *e))
{
    struct fstate *f = e->f;
    moves_park_orphans(e);
    const struct plan *p = f->plan;
    if (p->nlocal_flags == 0 && p->nlocal_deletes == 0 && p->nupdates == 0) {
        cont(e);
        return;
    }
    struct local_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->run = e->run;
    j->f = f;
    j->folder = xstrdup(f->job->name);
    j->dry_run = e->opts.dry_run;
    j->cont = cont;
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, local_work, local_done) != 0) {
        local_work(&j->req);
        local_done(&j->req, 0);
    }
}

static void on_store_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    struct fstate *f = e->f;
    bool ok = cmd_ok(e, res, "UID STORE");
    if (!ok) {
        f->stores_failed = true;
    }
    if (ok && res->nmodified > 0) {
        /* Changed meanwhile by someone else: leave the base alone so the
         * next run merges again. */
        for (size_t i = 0; i < res->nmodified; i++) {
            xgrow(&f->modified, &f->modified_cap, f->nmodified + 1, sizeof(*f->modified));
            f->modified[f->nmodified++] = res->modified[i];
        }
    }
    phase_cmd_done(e);
}

struct del_ctx {
    struct session *e;
    bool last; /* the command whose success completes the deletions */
};

static void on_delete_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct del_ctx *dc = arg;
    struct session *e = dc->e;
    bool last = dc->last;
    free(dc);
    if (e->finished) {
        return;
    }
    struct fstate *f = e->f;
    if (res->err >= 0 && res->status == IMAP_STATUS_OK) {
        if (last && !f->sdel_failed) {
            for (size_t i = 0; i < f->plan->nserver_deletes; i++) {
                f->sdel_ok[i] = true;
            }
        }
    } else if (res->err >= 0 || refused_locally(e, res)) {
        /* Retried next run (the records stay); the rest goes on. */
        f->sdel_failed = true;
        folder_note(e, "deleting on the server: %s", res->text != NULL ? res->text : "failed");
    }
    phase_cmd_done(e);
}

static void queue_del(struct session *e, int r, struct del_ctx *dc)
{
    if (r < 0) {
        free(dc);
        e->f->pending--;
        e->f->sdel_failed = true;
        if (r == -ENOTCONN || conn_lost(e)) {
            queue_failed(e, r, "deleting on the server");
        } else {
            folder_note(e, "deleting on the server: cannot be sent (%s)", strerror(-r));
        }
    }
}

/* Which flags a STORE of this run changes on a message (MD_FLAG_* bits, and
 * UNSETTLED_KW for keywords) is kept per folder in the meta value
 * "unsettled:FOLDER" as (UID, mask) pairs beside the marked rows: settle_base
 * takes the server's value only for what the STORE touched and keeps the
 * base for the rest, so a flag another client set meanwhile stays a change
 * on the server. */
#define UNSETTLED_KW 0x40
/* In an entry's mask: the entry is for a local rename (renames_marks), not
 * for a STORE; settle_base takes the local file's value for its bits. */
#define UNSETTLED_LOCAL 0x80

/* Before the STOREs go out, their messages' base rows are marked unsettled:
 * a STORE can reach the server and the run die before its answer is read.
 * The next run then takes the server's flags as the base for them (see
 * settle_base), so neither a change this run made nor one the user makes
 * afterwards on either side is mistaken for the other and undone. */
void unsettled_key(const char *folder, char *buf, size_t cap)
{
    if (strlen(folder) < 400) {
        snprintf(buf, cap, "unsettled:%s", folder);
        return;
    }
    uint8_t h[16];
    msgfacts_msgid_hash(folder, h);
    size_t n = (size_t)snprintf(buf, cap, "unsettled#");
    for (size_t i = 0; i < sizeof(h) && n + 2 < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%02x", h[i]);
    }
}

/* The folder's (UID, mask) entries, 5 bytes each, read in txn (or in a
 * read transaction of its own when txn is NULL): NULL with *len_r 0 when
 * there are none. An empty value is none: settle_base empties it once
 * every marked row is settled, and a folder whose value is not empty may
 * hold rows whose flags no side has vouched for yet (local_quiet). */
static unsigned char *unsettled_read(struct session *e, struct idx_txn *txn, size_t *len_r)
{
    char key[512];
    unsettled_key(e->f->job->name, key, sizeof(key));
    *len_r = 0;
    struct idx_txn *own = NULL;
    if (txn == NULL) {
        if (idx_begin(e->idx, false, &own) < 0) {
            return NULL;
        }
        txn = own;
    }
    unsigned char *v = NULL;
    size_t len = 0;
    unsigned char probe[1];
    if (idx_meta_get(txn, key, probe, sizeof(probe), &len) == 0 && len >= 5) {
        v = xmalloc(len);
        if (idx_meta_get(txn, key, v, len, &len) < 0) {
            free(v);
            v = NULL;
            len = 0;
        }
    }
    if (own != NULL) {
        idx_abort(own);
    }
    *len_r = v != NULL ? len - len % 5 : 0;
    return v;
}

static bool kw_same(const char *const *a, size_t na, const struct plan_kw *b)
{
    struct plan_kw ka;
    plan_kw_from(a, na, &ka);
    bool same = ka.n == b->n;
    for (size_t i = 0; same && i < ka.n; i++) {
        same = strcmp(ka.names[i], b->names[i]) == 0;
    }
    plan_kw_free(&ka);
    return same;
}

/* (UID, mask) entries by UID: the UID is unaligned in them. */
static int mark_cmp(const void *a, const void *b)
{
    uint32_t x, y;
    memcpy(&x, a, 4);
    memcpy(&y, b, 4);
    return x < y ? -1 : x > y;
}

/* The entries for this run's local renames (UNSETTLED_LOCAL set): per
 * message the flag bits the rename changes on the file, and UNSETTLED_KW
 * when it changes the keywords. Bits the user changed locally are not
 * among them (the merge keeps the file's value there), so settling never
 * takes a local change for the base. Returns the count; *v_r (5 bytes an
 * entry, sorted by UID) is the caller's. */
static size_t rename_marks(const struct fstate *f, unsigned char **v_r)
{
    const struct plan *p = f->plan;
    unsigned char *v = xcalloc(p->nlocal_flags + 1, 5);
    size_t n = 0;
    for (size_t i = 0; i < p->nlocal_flags; i++) {
        const struct plan_local_flags *lf = &p->local_flags[i];
        const struct md_msg *m = md_scan_find(f->scan, lf->lid);
        if (m == NULL || lf->uid == 0) {
            continue;
        }
        const struct plan_local_msg *lm = &f->lmsgs[m - f->scan->msgs];
        unsigned mask = (lf->flags ^ m->flags) & MD_FLAGS_ALL;
        if (!kw_same(lm->kw, lm->nkw, &lf->kw)) {
            mask |= UNSETTLED_KW;
        }
        if (mask != 0) {
            memcpy(v + n * 5, &lf->uid, 4);
            v[n * 5 + 4] = (unsigned char)(mask | UNSETTLED_LOCAL);
            n++;
        }
    }
    qsort(v, n, 5, mark_cmp);
    *v_r = v;
    return n;
}

static int base_uid_cmp(const void *key, const void *elem)
{
    uint32_t uid = *(const uint32_t *)key, other = ((const struct idx_row *)elem)->uid;
    return uid < other ? -1 : uid > other;
}

/* The base row of uid (the synced rows are in UID order), or NULL. */
static const struct idx_row *base_find(const struct fstate *f, uint32_t uid)
{
    return f->base.n > 0 ? bsearch(&uid, f->base.v, f->base.n, sizeof(*f->base.v), base_uid_cmp)
                         : NULL;
}

/* What renames_marked and unsettled_marked wait for: the marked base rows and the
 * folder's value of marks. Built from the folder's plan and base alone, on
 * the thread pool. */
struct marks {
    struct idx_msg *puts;
    size_t np;
    unsigned char *val;
    size_t vlen;
};

static void renames_marks(const struct fstate *f, enum plan_local_delete mode, struct marks *o)
{
    (void)mode;
    unsigned char *marks;
    size_t n = rename_marks(f, &marks);
    o->puts = xcalloc(n + 1, sizeof(*o->puts));
    for (size_t i = 0; i < n; i++) {
        uint32_t uid;
        memcpy(&uid, marks + i * 5, 4);
        const struct idx_row *m = base_find(f, uid);
        if (m != NULL && m->state == IDX_MSG_SYNCED) {
            idx_rows_get(&f->base, (size_t)(m - f->base.v), &o->puts[o->np]);
            o->puts[o->np++].flags |= IDX_FLAGS_UNSETTLED;
        }
    }
    o->val = marks;
    o->vlen = n * 5;
}

/* Deletions by STORE +\Deleted (then UID EXPUNGE, or alone without
 * UIDPLUS) are flag changes too: one that lands while the run dies before
 * its end would otherwise read as the server's new \Deleted next time,
 * and "deleted here, changed there" copies the message back. Unsettled,
 * the next run takes the server's \Deleted as the base and deletes again.
 * (A MOVE leaves the folder at once.) */
static bool unsettled_needed(const struct plan *p, enum plan_local_delete mode, bool *del_stores)
{
    *del_stores = p->nserver_deletes > 0 && mode != PLAN_LOCAL_DELETE_TRASH;
    return p->nstores > 0 || *del_stores;
}

static void unsettled_marks(const struct fstate *f, enum plan_local_delete mode, struct marks *o)
{
    const struct plan *p = f->plan;
    bool del_stores;
    unsettled_needed(p, mode, &del_stores);
    uint32_t *dels = NULL;
    if (del_stores) {
        dels = xcalloc(p->nserver_deletes, sizeof(*dels));
        for (size_t i = 0; i < p->nserver_deletes; i++) {
            dels[i] = p->server_deletes[i].uid;
        }
        qsort(dels, p->nserver_deletes, sizeof(*dels), u32_cmp);
    }
    /* Grown as rows are found: sized by the base, they took 1,320 bytes
     * a message of address space for the few rows a run usually marks. */
    struct idx_msg *puts = NULL;
    unsigned char *masks = NULL;
    size_t np = 0, cap = 0, mcap = 0;
    for (size_t i = 0; i < f->base.n; i++) {
        const struct idx_row *m = &f->base.v[i];
        uint8_t mask = 0;
        for (size_t k = 0; k < p->nstores; k++) {
            const struct plan_store *st = &p->stores[k];
            if (st->nuids > 0 &&
                bsearch(&m->uid, st->uids, st->nuids, sizeof(uint32_t), u32_cmp) != NULL) {
                mask |= (uint8_t)(st->flags & MD_FLAGS_ALL);
                if (st->kw.n > 0) {
                    mask |= UNSETTLED_KW;
                }
            }
        }
        if (dels != NULL &&
            bsearch(&m->uid, dels, p->nserver_deletes, sizeof(*dels), u32_cmp) != NULL) {
            mask |= MD_FLAG_TRASHED;
        }
        if (mask != 0 && m->state == IDX_MSG_SYNCED) {
            xgrow(&puts, &cap, np + 1, sizeof(*puts));
            xgrow(&masks, &mcap, (np + 1) * 5, 1);
            memcpy(masks + np * 5, &m->uid, 4);
            masks[np * 5 + 4] = mask;
            idx_rows_get(&f->base, i, &puts[np]);
            puts[np++].flags |= IDX_FLAGS_UNSETTLED;
        }
    }
    free(dels);
    o->puts = puts;
    o->np = np;
    if (np > 0) {
        /* The value replaces the one renames_marks wrote: its entries go
         * along, for the rows a STORE keeps unsettled after their rename. */
        unsigned char *rm;
        size_t nrm = rename_marks(f, &rm);
        masks = xrealloc(masks, (np + nrm + 1) * 5);
        memcpy(masks + np * 5, rm, nrm * 5);
        free(rm);
        o->vlen = (np + nrm) * 5;
    }
    o->val = masks;
}

/* The marks are written on the thread pool, rows and all: at 100,000
 * messages finding them in the base and the durable commit held the loop
 * thread for tens of milliseconds. The folder waits (fstate.reading); the
 * loop leaves its base and plan alone meanwhile. */
struct marks_job {
    uv_work_t req;
    struct session *e;
    struct engine *run;
    const struct fstate *f;
    char *folder;
    enum plan_local_delete mode;
    void (*build)(const struct fstate *f, enum plan_local_delete mode, struct marks *o);
    int r;
    char *dserr;
    void (*cont)(struct session *e, bool ok);
};

static void marks_work(uv_work_t *req)
{
    struct marks_job *j = req->data;
    struct marks m = {0};
    j->build(j->f, j->mode, &m);
    if (m.np > 0) {
        char key[512];
        unsettled_key(j->folder, key, sizeof(key));
        struct idx_ops o = {.folder = j->folder,
                            .puts = m.puts,
                            .nputs = m.np,
                            .meta_key = key,
                            .meta_val = m.val,
                            .meta_len = m.vlen};
        j->r = engine_write(j->run, &o, 1, &j->dserr);
    }
    free(m.puts);
    free(m.val);
    pool_trim_if(j->f->base.n);
}

static void marks_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct marks_job *j = req->data;
    struct session *e = j->e;
    void (*cont)(struct session *, bool) = j->cont;
    int r = j->r;
    char *dserr = j->dserr;
    struct engine *run = j->run;
    free(j->folder);
    free(j);
    if (write_job_back(e, run, r, dserr)) {
        cont(e, r >= 0);
    }
}

/* Writes the marks build makes, then cont(e, written) on a later turn of
 * the loop. */
static void marks_then(struct session *e,
                       void (*build)(const struct fstate *f, enum plan_local_delete mode,
                                     struct marks *o),
                       void (*cont)(struct session *e, bool ok))
{
    struct marks_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->run = e->run;
    j->f = e->f;
    j->folder = xstrdup(e->f->job->name);
    j->mode = local_delete_mode(e);
    j->build = build;
    j->cont = cont;
    e->f->reading = true;
    if (uv_queue_work(e->loop, &j->req, marks_work, marks_done) != 0) {
        marks_work(&j->req);
        marks_done(&j->req, 0);
    }
}

/* The other half of unsettled_marks and renames_marks. A base row whose
 * STORE may or may not have landed takes the server's flags for the bits
 * the STORE changes when the server listed the message (a full listing, or
 * a delta since the state before that STORE, which reports it when it
 * landed), else keeps its recorded flags; a row whose rename may or may not
 * have happened takes the file's flags for the bits the rename changes
 * (the file is renamed or not, and says which; a user who changed those
 * very bits back in between is taken at the file's word). The settled rows
 * are written at once, with the value emptied: the folder state may move
 * past that STORE in this run, after which no delta would list the message
 * again. */
static void settle_base(struct session *e)
{
    struct fstate *f = e->f;
    struct idx_msg *puts = NULL;
    size_t np = 0, cap = 0;
    size_t len;
    unsigned char *masks = unsettled_read(e, NULL, &len);
    size_t nmasks = len / 5;
    for (size_t i = 0; i < f->base.n; i++) {
        if (!(f->base.v[i].flags & IDX_FLAGS_UNSETTLED)) {
            continue;
        }
        /* Few rows: each is settled as a complete record, then put back. */
        xgrow(&puts, &cap, np + 1, sizeof(*puts));
        struct idx_msg *m = &puts[np++];
        idx_rows_get(&f->base, i, m);
        /* A row may have a rename entry and a STORE entry (a merge of
         * changes from both sides): their bits never overlap. */
        unsigned smask = 0, lmask = 0;
        for (size_t k = 0; k < nmasks; k++) {
            uint32_t uid;
            memcpy(&uid, masks + k * 5, 4);
            if (uid == m->uid) {
                unsigned mk = masks[k * 5 + 4];
                if (mk & UNSETTLED_LOCAL) {
                    lmask |= mk & ~(unsigned)UNSETTLED_LOCAL;
                } else {
                    smask |= mk;
                }
            }
        }
        m->flags &= (uint8_t)~IDX_FLAGS_UNSETTLED;
        const struct md_msg *lm =
            lmask != 0 && f->md != NULL ? md_scan_find(f->scan, m->lid) : NULL;
        if (lm != NULL) {
            unsigned fm = lmask & MD_FLAGS_ALL;
            m->flags = (uint8_t)((m->flags & ~fm) | (lm->flags & fm));
            if (lmask & UNSETTLED_KW) {
                const struct plan_local_msg *l = &f->lmsgs[lm - f->scan->msgs];
                struct plan_kw kw;
                plan_kw_from(l->kw, l->nkw, &kw);
                plan_kw_format(&kw, m->keywords, sizeof(m->keywords));
                plan_kw_free(&kw);
            }
        }
        const struct smsg *sm = find_smsg(f, m->uid);
        if (sm != NULL) {
            /* Only what the STORE touched takes the server's value. */
            unsigned fm = smask & MD_FLAGS_ALL;
            m->flags = (uint8_t)((m->flags & ~fm) | (sm->flags & fm));
            if (smask & UNSETTLED_KW) {
                struct plan_kw kw;
                plan_kw_from((const char *const *)sm->kw, sm->nkw, &kw);
                plan_kw_format(&kw, m->keywords, sizeof(m->keywords));
                plan_kw_free(&kw);
            }
        }
        idx_rows_set(&f->base, i, m);
    }
    free(masks);
    if ((np > 0 || nmasks > 0) && !e->opts.dry_run) {
        char key[512];
        unsettled_key(f->job->name, key, sizeof(key));
        /* An empty value (never a NULL one: it is copied). */
        struct idx_ops o = {
            .folder = f->job->name, .puts = puts, .nputs = np, .meta_key = key, .meta_val = ""};
        if (np > 0) {
            idx_apply(e, &o);
        } else {
            /* Only the value is left from rows settled before: emptied
             * with the next write, it lets the folder be skipped again. */
            idx_apply_later(e, &o);
        }
    }
    free(puts);
}

/* The server side of the plan, once unsettled_marks' marks are written. */
static void apply_server(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    f->phase = FP_APPLY_SERVER;
    f->pending = 1;
    f->stores_sent = p->nstores > 0;
    uint64_t unchanged = f->condstore ? f->mb.highestmodseq : 0;
    /* UIDs already in an earlier STORE of this run: our own first STORE
     * raised their MODSEQ, so UNCHANGEDSINCE would refuse the second one
     * ([MODIFIED]) although nobody else touched them. The first STORE
     * carries the conflict check for them. */
    uint32_t *touched = xcalloc(1, sizeof(*touched));
    size_t ntouched = 0;
    for (size_t i = 0; i < p->nstores; i++) {
        const struct plan_store *st = &p->stores[i];
        size_t nkw;
        const char **kw = imap_keywords(st->flags, &st->kw, &nkw);
        uint32_t *first = xcalloc(st->nuids + 1, sizeof(*first));
        uint32_t *again = xcalloc(st->nuids + 1, sizeof(*again));
        size_t nfirst = 0, nagain = 0;
        for (size_t k = 0; k < st->nuids; k++) {
            if (ntouched > 0 &&
                bsearch(&st->uids[k], touched, ntouched, sizeof(*touched), u32_cmp) != NULL) {
                again[nagain++] = st->uids[k];
            } else {
                first[nfirst++] = st->uids[k];
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            char **sets;
            size_t nsets = imap_uidset_format(pass == 0 ? first : again,
                                              pass == 0 ? nfirst : nagain, 0, &sets);
            for (size_t k = 0; k < nsets; k++) {
                f->pending++;
                int sr = e->ro->uid_store(e->im, sets[k], st->op, md_to_imap(st->flags), kw, nkw,
                                          pass == 0 ? unchanged : 0, on_store_done, e);
                if (sr < 0) {
                    /* Refused before it was sent: its flags did not go up,
                     * so the base must not advance as if they had. */
                    f->pending--;
                    f->stores_failed = true;
                    if (sr != -ENOTCONN) {
                        folder_fail(e, "UID STORE %s: cannot be sent (%s)", sets[k], strerror(-sr));
                    } else {
                        queue_failed(e, sr, "UID STORE");
                    }
                }
                free(sets[k]);
            }
            free(sets);
        }
        touched = xrealloc(touched, (ntouched + nfirst + 1) * sizeof(*touched));
        memcpy(touched + ntouched, first, nfirst * sizeof(*first));
        ntouched += nfirst;
        qsort(touched, ntouched, sizeof(*touched), u32_cmp);
        free(first);
        free(again);
        free(kw);
    }
    free(touched);
    f->sdel_ok = xcalloc(p->nserver_deletes + 1, sizeof(bool));
    if (p->nserver_deletes > 0) {
        uint32_t *uids = xcalloc(p->nserver_deletes, sizeof(*uids));
        for (size_t i = 0; i < p->nserver_deletes; i++) {
            uids[i] = p->server_deletes[i].uid;
        }
        char **sets;
        size_t nsets = imap_uidset_format(uids, p->nserver_deletes, 0, &sets);
        enum plan_local_delete mode = local_delete_mode(e);
        if (e->acct->on_local_delete == PLAN_LOCAL_DELETE_TRASH && e->run->trash == NULL) {
            /* Said once per run, as a warning: the deletions are done (as
             * \Deleted flags, which the plan then knows as done), and only
             * the configuration can change this, so failing every run
             * would mend nothing. */
            if (!e->run->trash_warned) {
                e->run->trash_warned = true;
                log_warnx("%s: on_local_delete is 'trash', but the server marks no folder as "
                          "\\Trash (SPECIAL-USE) and has no folder named Trash: messages "
                          "deleted locally are only flagged \\Deleted on the server. Set "
                          "'trash: FOLDER' in account '%s' to move them to that folder",
                          e->acct->name, e->acct->name);
            }
        } else if (mode == PLAN_LOCAL_DELETE_FLAG &&
                   e->acct->on_local_delete != PLAN_LOCAL_DELETE_FLAG) {
            folder_note(e, "the server lacks UIDPLUS: deleted messages were only flagged "
                           "\\Deleted (expunge them with your mail client)");
        }
        f->sdel_flag_mode = mode == PLAN_LOCAL_DELETE_FLAG;
        struct fjob *tj = mode == PLAN_LOCAL_DELETE_TRASH ? find_job(e->run, e->run->trash) : NULL;
        if (tj != NULL) {
            /* Its LIST-STATUS counters predate the moves: were the trash
             * still to be synced in this run, they would say it did not
             * change, and the moved messages would wait for the next run. */
            tj->has_status = false;
        }
        for (size_t k = 0; k < nsets; k++) {
            bool last = k + 1 == nsets;
            struct del_ctx *dc;
            if (mode == PLAN_LOCAL_DELETE_TRASH) {
                dc = xmalloc(sizeof(*dc));
                *dc = (struct del_ctx){e, last};
                f->pending++;
                queue_del(e, e->ro->uid_move(e->im, sets[k], e->run->trash, on_delete_done, dc),
                          dc);
            } else {
                dc = xmalloc(sizeof(*dc));
                *dc = (struct del_ctx){e, last && mode == PLAN_LOCAL_DELETE_FLAG};
                f->pending++;
                queue_del(e,
                          e->ro->uid_store(e->im, sets[k], '+', IMAP_FLAG_DELETED, NULL, 0, 0,
                                           on_delete_done, dc),
                          dc);
                if (mode == PLAN_LOCAL_DELETE_EXPUNGE) {
                    dc = xmalloc(sizeof(*dc));
                    *dc = (struct del_ctx){e, last};
                    f->pending++;
                    queue_del(e, e->ro->uid_expunge(e->im, sets[k], on_delete_done, dc), dc);
                }
            }
            free(sets[k]);
        }
        free(sets);
        free(uids);
    }
    phase_cmd_done(e);
}

/* ---- downloads -------------------------------------------------------------------------- */

/* Account-wide progress: every session adds to the run's counters. */
static void progress_add(struct session *e, unsigned msgs, uint64_t bytes)
{
    struct engine *r = e->run;
    r->prog_done += msgs;
    r->prog_bytes += bytes;
    if (e->opts.progress != NULL && e->f != NULL) {
        e->opts.progress(e->f->job->name, r->prog_done, r->prog_total, r->prog_bytes,
                         e->opts.progress_arg);
    }
}

/* A batch of downloads made durable and renamed into place on the thread
 * pool (fsync or syncfs, keyword letters with dovecot-keywords' lock,
 * renames), so that the loop goes on serving the connections meanwhile.
 * The loop thread keeps filling the next batch's writers of the same
 * folder (see store/maildir.h, Threads). */
struct flush_job {
    uv_work_t req;
    struct session *e;
    struct engine *run;
    char *folder; /* the folder's name */
    bool intents; /* write rows as download intents first */
    int idx_r;    /* engine_write's result */
    char *dserr;  /* and its directory error */
    struct md_folder *md;
    struct diskq *dq; /* the writes of the folder's downloads */
    struct dl **batch;
    size_t n;
    struct idx_msg *rows; /* per message: the record, SYNCED once done */
    int *res;             /* per message: 0 done, FLUSH_NO_LETTERS, or -errno */
    int sync_r;           /* md_writers_sync */
    bool dry_run;
    bool kw_failed; /* in: a letter could not be had before; out: now */
};

#define FLUSH_NO_LETTERS 1
#define FLUSH_NO_INTENT 2

static bool batch_full(const struct fstate *f)
{
    return f->nbatch >= DL_BATCH_MSGS || f->batch_bytes >= DL_BATCH_BYTES;
}

/* Too many bytes wait for the thread pool's writes. */
static bool disk_backlog(const struct fstate *f)
{
    return f->dq != NULL && diskq_bytes(f->dq) >= DL_DISK_BACKLOG;
}

/* Too many messages wait to be made durable. */
static bool batch_backlog(const struct fstate *f)
{
    return f->flushing != NULL &&
           (f->nbatch + f->flushing->n >= DL_BATCH_MSGS * DL_BACKLOG_BATCHES ||
            f->batch_bytes >= (uint64_t)DL_BATCH_BYTES * DL_BACKLOG_BATCHES);
}

/* The downloads ended while their last batch or writes were on the thread
 * pool: the folder goes on once both are back. */
static void dl_advance_when_done(struct session *e)
{
    struct fstate *f = e->f;
    if (f->advance_after_flush && f->flushing == NULL && !diskq_busy(f->dq)) {
        f->advance_after_flush = false;
        folder_advance(e);
    }
}

/* A job of the folder's write queue ended (sync/diskq.h). */
static void dl_drained(void *arg)
{
    struct session *e = arg;
    if (!pool_job_back(e)) {
        return;
    }
    struct fstate *f = e->f;
    if (f->dl_paused && e->im != NULL && !disk_backlog(f) && !batch_backlog(f)) {
        f->dl_paused = false;
        e->ro->resume(e->im);
    }
    dl_advance_when_done(e);
}

static void flush_work(uv_work_t *req)
{
    struct flush_job *j = req->data;
    /* Every byte queued for the batch's writers (and for later ones) is
     * written first: they are finished or aborted below. */
    diskq_run(j->dq);
    if (j->intents && !j->dry_run) {
        /* The intents (and what was deferred) go in first: on this thread,
         * since a durable index commit is milliseconds of the loop's time. */
        struct idx_ops o = {.folder = j->folder, .puts = j->rows, .nputs = j->n};
        j->idx_r = engine_write(j->run, &o, 1, &j->dserr);
        if (j->idx_r < 0) {
            for (size_t i = 0; i < j->n; i++) {
                md_writer_abort(j->batch[i]->w);
                j->batch[i]->w = NULL;
                j->res[i] = FLUSH_NO_INTENT;
            }
            return;
        }
    }
    struct md_writer **ws = xcalloc(j->n, sizeof(*ws));
    for (size_t i = 0; i < j->n; i++) {
        ws[i] = j->batch[i]->w;
        /* The received date goes with the bytes; a failure stays on the
         * writer and its commit reports it. */
        md_writer_finish(ws[i], j->batch[i]->pd->internaldate);
    }
    j->sync_r = md_writers_sync(j->md, ws, j->n);
    free(ws);
    for (size_t i = 0; i < j->n; i++) {
        struct dl *d = j->batch[i];
        if (j->sync_r < 0) {
            md_writer_abort(d->w);
            j->res[i] = j->sync_r;
            d->w = NULL;
            continue;
        }
        md_keywords kw = 0;
        bool letters = true;
        for (size_t k = 0; k < d->pd->kw.n && letters; k++) {
            /* assign_letters gave the folder's names their letters already;
             * after one failure here the lock is not waited for again. */
            int ix =
                j->kw_failed ? -EAGAIN : md_keyword_index(j->md, d->pd->kw.names[k], !j->dry_run);
            if (ix >= 0 && ix < 26) {
                kw |= (md_keywords)1u << ix;
            } else if (ix != MD_EKWFULL && ix != -ENOENT && ix != -EINVAL) {
                j->kw_failed = true;
                letters = false;
            }
        }
        if (!letters) {
            /* Nothing recorded: the next run downloads it again. */
            md_writer_abort(d->w);
            j->res[i] = FLUSH_NO_LETTERS;
        } else {
            bool to_cur = d->pd->flags != 0 || kw != 0;
            j->res[i] =
                md_writer_commit(d->w, to_cur, d->pd->flags, kw, d->pd->internaldate, true, NULL);
        }
        d->w = NULL;
    }
}

static void flush_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct flush_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = e->f;
    f->flushing = NULL;
    f->kw_failed = f->kw_failed || j->kw_failed;
    if (j->idx_r < 0) {
        engine_write_failed(e, j->idx_r, j->dserr);
        j->dserr = NULL;
    } else if (j->sync_r < 0) {
        folder_fail_md(e, j->sync_r);
    }
    size_t ok = 0;
    uint64_t ok_bytes = 0;
    for (size_t i = 0; i < j->n; i++) {
        struct dl *d = j->batch[i];
        if (j->res[i] == FLUSH_NO_LETTERS) {
            folder_fail(e, "%s", md_folder_error(f->md));
        } else if (j->res[i] == FLUSH_NO_INTENT) {
            /* Not written: downloaded again next time. */
        } else if (j->res[i] < 0 && j->sync_r >= 0) {
            folder_fail_md(e, j->res[i]); /* the intent stays: the next run forgets it */
        } else if (j->res[i] == 0) {
            j->rows[i].state = IDX_MSG_SYNCED;
            j->rows[ok++] = j->rows[i];
            fcounts(e)->new_down++;
            fcounts(e)->bytes_down += d->wire_size;
            ok_bytes += d->wire_size;
        }
        free(d->hdr);
        free(d);
    }
    if (ok > 0) {
        /* new/ and cur/ are fsynced (with other folders' directories)
         * before these records are written. */
        struct md_dirsync ds = {0};
        md_folder_sync_later(f->md, &ds);
        engine_dirsync_add(e->run, &ds);
        struct idx_ops o = {.folder = f->job->name, .puts = j->rows, .nputs = ok};
        idx_apply_later(e, &o);
    }
    progress_add(e, (unsigned)ok, ok_bytes);
    free(j->folder);
    free(j->batch);
    free(j->rows);
    free(j->res);
    free(j);
    /* What came in meanwhile: the next batch when it is full, or all of it
     * when the folder's downloads ended (or the connection did). */
    if (f->nbatch > 0 && (e->finished || f->advance_after_flush || batch_full(f))) {
        flush_batch(e);
    }
    if (f->dl_paused && !e->finished && e->im != NULL && !disk_backlog(f)) {
        /* The backlog went to the thread pool: read on. */
        f->dl_paused = false;
        e->ro->resume(e->im);
    }
    if (f->flushing != NULL) {
        return;
    }
    if (!pool_job_back(e)) {
        return;
    }
    dl_advance_when_done(e);
}

/* Commits the batch: intent rows (see below), then on the thread pool the
 * fsync + rename of every file (flush_work), then the records with the
 * next index write, after the directories' fsync. One batch at a time per
 * folder: a call while one is in flight leaves the messages for the next
 * (flush_done starts it). */
int flush_batch(struct session *e)
{
    struct fstate *f = e->f;
    if (f->nbatch == 0 || f->flushing != NULL) {
        return 0;
    }
    struct idx_msg *rows = xcalloc(f->nbatch, sizeof(*rows));
    for (size_t i = 0; i < f->nbatch; i++) {
        struct dl *d = f->batch[i];
        struct idx_msg *m = &rows[i];
        m->uid = d->pd->uid;
        m->state = IDX_MSG_APPENDING; /* a download intent (uid set) */
        m->flags = (uint8_t)d->pd->flags;
        m->size = d->wire_size;
        memcpy(m->msgid_hash, d->msgid_hash, sizeof(m->msgid_hash));
        const struct smsg *sm = find_smsg(f, m->uid);
        if (sm != NULL) {
            /* A move by another client is paired by it later. */
            memcpy(m->emailid_hash, sm->eid, sizeof(m->emailid_hash));
        }
        snprintf(m->lid, sizeof(m->lid), "%s", d->lid);
        plan_kw_format(&d->pd->kw, m->keywords, sizeof(m->keywords));
    }
    /* The intents keep a crash between the renames below and the records
     * from leaving files the index does not know beside records it does
     * (which the next run would upload as new). The first batch of a
     * folder the index knows nothing of needs none: its records are
     * written in one transaction, and until then a crash leaves a folder
     * the index has no trace of, with mail on both sides, which the next
     * run matches file to message (the adopt path of on_select), copying
     * nothing. That saves a durable index commit per folder on a first
     * sync of many small folders. */
    bool intents = f->dl_flushed || f->st.uidvalidity != 0 || f->base.n != 0 || f->nintents != 0 ||
                   f->adopt || f->rematch;
    f->dl_flushed = true;
    struct flush_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->run = e->run;
    j->folder = xstrdup(f->job->name);
    j->intents = intents;
    j->md = f->md;
    j->dq = f->dq;
    j->batch = f->batch;
    j->n = f->nbatch;
    j->rows = rows;
    j->res = xcalloc(j->n, sizeof(*j->res));
    j->dry_run = e->opts.dry_run;
    j->kw_failed = f->kw_failed;
    f->batch = NULL;
    f->nbatch = f->batch_cap = 0;
    f->batch_bytes = 0;
    f->flushing = j;
    if (uv_queue_work(e->loop, &j->req, flush_work, flush_done) != 0) {
        /* Cannot happen with a valid loop; do it here then. */
        flush_work(&j->req);
        flush_done(&j->req, 0);
    }
    return 0;
}

static const struct plan_download *find_download(struct fstate *f, uint32_t uid)
{
    const struct plan *p = f->plan;
    size_t lo = 0, hi = p->ndownloads;
    /* Downloads are in ascending UID order (plan_build sorts the server
     * listing). */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->downloads[mid].uid == uid) {
            return &p->downloads[mid];
        }
        if (p->downloads[mid].uid < uid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (size_t i = 0; i < p->ndownloads; i++) {
        if (p->downloads[i].uid == uid) {
            return &p->downloads[i];
        }
    }
    return NULL;
}

static void *dl_begin(struct imap *im, uint32_t seq, uint32_t uid, uint64_t size, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    if (f == NULL || f->md == NULL) {
        return NULL;
    }
    struct dl *d = xcalloc(1, sizeof(*d));
    d->e = e;
    d->wire_size = size;
    if (f->dq == NULL) {
        f->dq = diskq_new(e->loop, dl_drained, e);
    }
    /* The file is created by the thread pool's first write to it. */
    md_writer_new(f->md, true, &d->w);
    snprintf(d->lid, sizeof(d->lid), "%s", md_writer_id(d->w));
    f->cur = d;
    return d;
}

static int dl_data(struct imap *im, void *sink, const char *data, size_t len, void *arg)
{
    struct dl *d = sink;
    struct session *e = arg;
    struct fstate *f = e->f;
    if (d == NULL || d->w == NULL || d->err < 0) {
        return 0;
    }
    diskq_write(f->dq, d->w, data, len);
    if (!d->hdone) {
        size_t take = len < DL_HEADER_MAX - d->hlen ? len : DL_HEADER_MAX - d->hlen;
        d->hdr = xrealloc(d->hdr, d->hlen + take + 1);
        memcpy(d->hdr + d->hlen, data, take);
        size_t from = d->hlen > 2 ? d->hlen - 2 : 0;
        d->hlen += take;
        size_t end = msgfacts_header_end(d->hdr, d->hlen, from);
        if (end > 0 || d->hlen >= DL_HEADER_MAX) {
            char *id = imap_header_message_id(d->hdr, end > 0 ? end : d->hlen);
            if (id != NULL) {
                msgfacts_msgid_hash(id, d->msgid_hash);
            }
            free(id);
            free(d->hdr);
            d->hdr = NULL;
            d->hdone = true;
        }
    }
    /* Counted with the batch in flight (which may hold more than one
     * batch's worth: what waited when it started). */
    if (f != NULL && e->ro->resume != NULL && (batch_backlog(f) || disk_backlog(f))) {
        f->dl_paused = true;
        return IMAP_SINK_PAUSE;
    }
    return 0;
}

static void dl_end(struct imap *im, void *sink, bool complete, void *arg)
{
    struct dl *d = sink;
    if (d != NULL) {
        d->complete = complete;
    }
}

static void dl_message(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    struct dl *d = sink;
    if (d == NULL) {
        return;
    }
    if (f->cur == d) {
        f->cur = NULL;
    }
    d->pd = m->uid != 0 ? find_download(f, m->uid) : NULL;
    if (d->pd == NULL || !d->complete || d->err < 0 || d->w == NULL) {
        if (d->err == -ENOSPC || d->err == -EDQUOT) {
            folder_fail_transient(e, "writing a message: %s", strerror(-d->err));
        } else if (d->err < 0) {
            folder_fail(e, "writing a message: %s", strerror(-d->err));
        }
        if (d->w != NULL) {
            /* After its queued writes, on the thread pool. */
            diskq_abort(f->dq, d->w);
        }
        free(d->hdr);
        free(d);
        return;
    }
    /* Its last bytes are written by the next queue job, or by the batch's
     * commit job (flush_work), whichever comes first. */
    xgrow(&f->batch, &f->batch_cap, f->nbatch + 1, sizeof(*f->batch));
    f->batch[f->nbatch++] = d;
    f->batch_bytes += d->wire_size;
    if (batch_full(f)) {
        flush_batch(e);
    }
}

static void issue_download_cmd(struct session *e);

static void on_dl_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    /* A NO fails the folder, but the other messages still come down, as
     * they did when every command was sent at once; after a failure of
     * this side (a full disk, the index) nothing more is asked for. */
    bool local_failure = e->f->failed && !e->f->dl_refused;
    if (!cmd_ok(e, res, "UID FETCH BODY") && !local_failure) {
        e->f->dl_refused = true;
    }
    if (!conn_lost(e) && !(e->f->failed && !e->f->dl_refused)) {
        issue_download_cmd(e);
    }
    phase_cmd_done(e);
}

static const struct imap_fetch_cb body_cb = {
    .body_begin = dl_begin,
    .body_data = dl_data,
    .body_end = dl_end,
    .on_message = dl_message,
    .done = on_dl_done,
};

/* The next DL_UIDS_PER_CMD downloads of the plan, from f->dl_next on. */
static void issue_download_cmd(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    if (f->dl_next >= p->ndownloads) {
        return;
    }
    size_t i = f->dl_next;
    size_t n = p->ndownloads - i < DL_UIDS_PER_CMD ? p->ndownloads - i : DL_UIDS_PER_CMD;
    f->dl_next += n;
    uint32_t *uids = xcalloc(n, sizeof(*uids));
    for (size_t k = 0; k < n; k++) {
        uids[k] = p->downloads[i + k].uid;
    }
    fetch_uids(e, uids, n, IMAP_FETCH_BODY, &body_cb, "UID FETCH BODY");
    free(uids);
}

static void issue_downloads(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_DOWNLOAD;
    f->pending = 1;
    f->dl_next = 0;
    if (f->md != NULL) {
        issue_download_cmd(e);
    }
    phase_cmd_done(e);
}

/* ---- uploads ------------------------------------------------------------------------------ */

struct ul {
    struct session *e;
    size_t index;
    int fd;
    struct idx_msg rec;
};

static void issue_uploads(struct session *e);

static void on_append_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct ul *u = arg;
    struct session *e = u->e;
    if (u->fd >= 0) {
        close(u->fd);
    }
    if (e->finished) {
        free(u);
        return;
    }
    struct fstate *f = e->f;
    f->ul_inflight--;
    if (cmd_ok(e, res, "APPEND")) {
        fcounts(e)->new_up++;
        fcounts(e)->bytes_up += u->rec.size;
        progress_add(e, 1, u->rec.size);
        /* APPENDUID counts only where UIDPLUS is announced (decide from
         * CAPABILITY, as for CONDSTORE: a server that hides it, like the
         * test Dovecot, may still send the code). */
        if (res->append_uid != 0 && res->append_uidvalidity == f->mb.uidvalidity &&
            (e->ro->caps(e->im) & IMAP_CAP_UIDPLUS)) {
            u->rec.uid = res->append_uid;
            u->rec.state = IDX_MSG_SYNCED;
            xgrow(&f->ul_done, &f->ul_done_cap, f->nul_done + 1, sizeof(*f->ul_done));
            f->ul_done[f->nul_done++] = u->rec;
        } else {
            /* No APPENDUID (no UIDPLUS): the intent row stays until the
             * UID is found among the new ones after the last APPEND. */
            xgrow(&f->ul_pend, &f->ul_pend_cap, f->nul_pend + 1, sizeof(*f->ul_pend));
            xgrow(&f->ul_pend_ix, &f->ul_pend_ix_cap, f->nul_pend + 1, sizeof(*f->ul_pend_ix));
            f->ul_pend[f->nul_pend] = u->rec;
            f->ul_pend_ix[f->nul_pend++] = u->index;
        }
    }
    free(u);
    if (!conn_lost(e)) {
        issue_uploads(e);
    }
    phase_cmd_done(e);
}

/* Wire size of an LF file: its size plus one CR per LF not preceded by CR. */
int wire_size(int fd, uint64_t *size_r)
{
    char buf[65536];
    uint64_t n = 0;
    char prev = 0;
    off_t off = 0;
    for (;;) {
        ssize_t r = pread(fd, buf, sizeof(buf), off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            break;
        }
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] == '\n' && prev != '\r') {
                n++;
            }
            prev = buf[i];
        }
        n += (uint64_t)r;
        off += r;
    }
    *size_r = n;
    return 0;
}

static void issue_uploads(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    while (f->ul_next < p->nuploads && f->ul_inflight < UL_WINDOW && !f->failed) {
        size_t i = f->ul_next++;
        const struct plan_upload *pu = &p->uploads[i];
        struct md_msg *m = md_scan_find(f->scan, pu->lid);
        if (m == NULL) {
            continue;
        }
        const struct lfact *lf = &f->ulf[i];
        if (!lf->have_wire) {
            continue; /* unreadable when the intents were written */
        }
        int fd = md_open_msg(f->md, m);
        if (fd < 0) {
            continue; /* gone meanwhile: the next run sees it deleted */
        }
        struct ul *u = xcalloc(1, sizeof(*u));
        u->e = e;
        u->index = i;
        u->fd = fd;
        struct stat stbuf;
        uint64_t size = lf->wire;
        if (fstat(fd, &stbuf) < 0) {
            close(fd);
            free(u);
            continue;
        }
        snprintf(u->rec.lid, sizeof(u->rec.lid), "%s", pu->lid);
        u->rec.flags = (uint8_t)pu->flags;
        u->rec.size = size;
        plan_kw_format(&pu->kw, u->rec.keywords, sizeof(u->rec.keywords));
        if (lf->msgid != NULL) {
            msgfacts_msgid_hash(lf->msgid, u->rec.msgid_hash);
        } else if (lf->have_hh) {
            memcpy(u->rec.msgid_hash, lf->hh, sizeof(u->rec.msgid_hash));
        }
        size_t nkw;
        const char **kw = imap_keywords(pu->flags, &pu->kw, &nkw);
        struct imap_append a = {
            .folder = f->job->name,
            .flags = md_to_imap(pu->flags),
            .keywords = kw,
            .nkeywords = nkw,
            .internaldate = stbuf.st_mtime,
            .size = size,
            .fd = fd,
            .lf_to_crlf = true,
        };
        f->ul_inflight++;
        f->pending++;
        int r = e->ro->append(e->im, &a, on_append_done, u);
        free(kw);
        if (r < 0) {
            f->ul_inflight--;
            f->pending--;
            close(fd);
            free(u);
            queue_failed(e, r, "APPEND");
            if (conn_lost(e)) {
                break;
            }
        }
    }
}

/* Records the intents (APPENDING rows) durably, then starts the APPENDs. */
static void start_uploads(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    f->phase = FP_UPLOAD;
    f->pending = 1;
    if (p->nuploads > 0 && f->md != NULL) {
        f->ulf = xcalloc(p->nuploads, sizeof(*f->ulf));
        f->nulf = p->nuploads;
        struct idx_msg *rows = xcalloc(p->nuploads, sizeof(*rows));
        for (size_t i = 0; i < p->nuploads; i++) {
            const struct plan_upload *pu = &p->uploads[i];
            struct idx_msg *m = &rows[i];
            m->state = IDX_MSG_APPENDING;
            m->flags = (uint8_t)pu->flags;
            snprintf(m->lid, sizeof(m->lid), "%s", pu->lid);
            plan_kw_format(&pu->kw, m->keywords, sizeof(m->keywords));
            /* What finds the message on the server again without APPENDUID
             * or after a crash: Message-ID, header hash and wire size. */
            struct lfact *lf = &f->ulf[i];
            struct md_msg *lm = md_scan_find(f->scan, pu->lid);
            int fd = lm != NULL ? md_open_msg(f->md, lm) : -ENOENT;
            if (fd >= 0) {
                if (msgfacts_read_file(fd, &lf->msgid, lf->hh, &lf->have_hh, NULL) == 0 &&
                    wire_size(fd, &lf->wire) == 0) {
                    lf->have_wire = true;
                }
                close(fd);
            }
            m->size = lf->wire;
            if (lf->msgid != NULL) {
                msgfacts_msgid_hash(lf->msgid, m->msgid_hash);
            } else if (lf->have_hh) {
                memcpy(m->msgid_hash, lf->hh, sizeof(m->msgid_hash));
            }
        }
        struct idx_ops o = {.folder = f->job->name, .puts = rows, .nputs = p->nuploads};
        int r = idx_apply(e, &o);
        free(rows);
        if (r == 0) {
            issue_uploads(e);
        }
    }
    phase_cmd_done(e);
}

/* ---- folder: final record ------------------------------------------------------------------ */

/* Messages whose flags the plan's STOREs change on the server. Messages,
 * not commands: one that gained one flag and lost another is in two stores
 * but counts once; one left alone by UNCHANGEDSINCE ([MODIFIED]) does not
 * count. */
static unsigned flags_up_count(const struct fstate *f)
{
    size_t nsu;
    uint32_t *su = store_uids(f->plan, &nsu);
    unsigned n = 0;
    for (size_t i = 0; i < nsu; i++) {
        if ((i == 0 || su[i] != su[i - 1]) && !is_modified(f, su[i])) {
            n++;
        }
    }
    free(su);
    return n;
}

/* The folder's skip list after its plan: the plan's, plus (for a delta)
 * the old entries the delta did not mention and that were not expunged.
 * Caller frees. */
static struct skip_ent *next_skips(struct fstate *f, size_t *n_r)
{
    const struct plan *p = f->plan;
    struct skip_ent *sk = xcalloc(f->nskips + p->nskips + 1, sizeof(*sk));
    size_t nsk = 0;
    for (size_t i = 0; i < f->nskips && f->delta; i++) {
        uint32_t uid = f->skips[i].uid;
        bool gone = u32_in(f->vanished, f->nvanished, uid) || find_smsg(f, uid) != NULL ||
                    (f->have_search &&
                     bsearch(&uid, f->search, f->nsearch, sizeof(uint32_t), u32_cmp) == NULL);
        if (!gone) {
            sk[nsk++] = f->skips[i];
        }
    }
    for (size_t i = 0; i < p->nskips; i++) {
        const struct smsg *sm = find_smsg(f, p->skips[i].uid);
        sk[nsk++] = (struct skip_ent){.uid = p->skips[i].uid,
                                      .too_old = p->skips[i].too_old,
                                      .size = p->skips[i].size,
                                      .date = sm != NULL ? (int64_t)sm->internaldate : 0};
    }
    *n_r = nsk;
    return sk;
}

/* --dry-run: the folder's counts are what the plan would do, counted as
 * the real run counts what it did (apply_local, folder_final, the
 * transfers), so that the summary of a dry run is the one the real run
 * then prints. */
static void count_planned(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    struct engine_counts *c = fcounts(e);
    c->new_down = (unsigned)p->ndownloads;
    c->bytes_down = 0;
    for (size_t i = 0; i < p->ndownloads; i++) {
        c->bytes_down += p->downloads[i].size;
    }
    c->new_up = (unsigned)p->nuploads;
    c->flags_down = (unsigned)p->nlocal_flags;
    c->flags_up = flags_up_count(f);
    /* Orphans are counted where the real run counts them: as moves when
     * paired, as deletions when the pass ends (sync/moves.c). */
    c->deleted_down = (unsigned)p->nlocal_deletes;
    c->deleted_up = (unsigned)p->nserver_deletes;
    size_t nsk;
    struct skip_ent *sk = next_skips(f, &nsk);
    count_skips(e, sk, nsk);
    free(sk);
}

static void folder_final(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    struct idx_msg *puts = NULL;
    size_t np = 0, cap = 0;
    uint32_t *drops = NULL;
    size_t nd = 0, dcap = 0;
    bool stores_ok = !f->failed && !f->updates_recorded;
    for (size_t i = 0; i < p->nupdates; i++) {
        /* Base advances only where both sides now hold the merged state. */
        if (!stores_ok || is_modified(f, p->updates[i].uid)) {
            continue;
        }
        xgrow(&puts, &cap, np + 1, sizeof(*puts));
        puts[np++] = p->updates[i];
    }
    for (size_t i = 0; i < f->nul_done; i++) {
        xgrow(&puts, &cap, np + 1, sizeof(*puts));
        puts[np++] = f->ul_done[i];
    }
    for (size_t i = 0; i < p->ndrops; i++) {
        xgrow(&drops, &dcap, nd + 1, sizeof(*drops));
        drops[nd++] = p->drops[i];
    }
    for (size_t i = 0; i < p->nserver_deletes; i++) {
        /* A folder that ended before apply_server sent no deletion. */
        if (f->sdel_ok == NULL || !f->sdel_ok[i]) {
            continue;
        }
        uint32_t uid = p->server_deletes[i].uid;
        if (f->sdel_flag_mode) {
            /* Flag mode: keep the record, marked \Deleted, so the message
             * left on the server is not fetched again. */
            for (size_t k = 0; k < f->base.n; k++) {
                if (f->base.v[k].uid == uid) {
                    xgrow(&puts, &cap, np + 1, sizeof(*puts));
                    idx_rows_get(&f->base, k, &puts[np]);
                    puts[np++].flags |= MD_FLAG_TRASHED;
                    break;
                }
            }
        } else {
            xgrow(&drops, &dcap, nd + 1, sizeof(*drops));
            drops[nd++] = uid;
        }
        fcounts(e)->deleted_up++;
    }
    /* STOREs that never went out, or were refused, changed nothing. */
    fcounts(e)->flags_up = f->stores_sent && !f->stores_failed ? flags_up_count(f) : 0;
    size_t nsk;
    struct skip_ent *sk = next_skips(f, &nsk);
    count_skips(e, sk, nsk);

    /* The folder's state: only when everything it covers is done, so a
     * failed step is retried from the same HIGHESTMODSEQ. */
    struct idx_folder st = f->st;
    bool complete = !f->failed && p->error == NULL && f->ul_next >= p->nuploads &&
                    f->ul_unresolved == 0 && fcounts(e)->new_down == p->ndownloads;
    struct idx_folder *stp = NULL;
    if (complete && f->selected) {
        st.uidvalidity = f->mb.uidvalidity;
        st.uidnext = f->mb.uidnext;
        st.highestmodseq = f->condstore ? f->mb.highestmodseq : 0;
        st.messages = f->mb.exists;
        st.last_full_sync = (int64_t)e->now;
        /* Everything the scan after this stamp saw is handled (unknown when
         * no stamp was taken, or orphans wait: the next sync scans). */
        record_stamp(&st, f->parked ? &(struct md_stamp){0} : &f->stamp);
        stp = &st;
    }
    struct idx_ops o = {
        .folder = f->job->name, .puts = puts, .nputs = np, .drops = drops, .ndrops = nd, .st = stp};
    char key[512];
    unsigned char *packed = NULL;
    if (stp != NULL && (nsk > 0 || f->nskips > 0)) {
        /* Stored with the folder state it belongs to. */
        skiplist_key(f->job->name, key, sizeof(key));
        packed = skiplist_pack(sk, nsk, st.uidvalidity, &o.meta_len);
        o.meta_key = key;
        o.meta_val = packed;
    }
    if (np > 0 || nd > 0 || stp != NULL) {
        idx_apply_later(e, &o);
    }
    free(packed);
    free(sk);
    free(puts);
    free(drops);
}

/* ---- folder driver ------------------------------------------------------------------------- */

static int smsg_cmp(const void *a, const void *b)
{
    const struct smsg *x = a, *y = b;
    if (x->uid != y->uid) {
        return x->uid < y->uid ? -1 : 1;
    }
    /* Entries with a size (from the new-mail FETCH) sort last, and of
     * those the ones with a Message-ID (the orphans' listing). */
    if ((x->size != 0) != (y->size != 0)) {
        return (x->size != 0) - (y->size != 0);
    }
    return (x->msgid != NULL) - (y->msgid != NULL);
}

static void smsg_clear(struct smsg *s)
{
    for (size_t j = 0; j < s->nkw; j++) {
        free(s->kw[j]);
    }
    free(s->kw);
    free(s->msgid);
}

/* QRESYNC/CHANGEDSINCE report new messages too, and the new-mail FETCH
 * lists them again: keep one entry per UID, the later (fuller) one. */
void dedupe_server(struct fstate *f)
{
    if (f->nsmsgs < 2) {
        return;
    }
    qsort(f->smsgs, f->nsmsgs, sizeof(*f->smsgs), smsg_cmp);
    size_t out = 0;
    for (size_t i = 0; i < f->nsmsgs; i++) {
        if (i + 1 < f->nsmsgs && f->smsgs[i + 1].uid == f->smsgs[i].uid) {
            smsg_clear(&f->smsgs[i]);
            continue;
        }
        f->smsgs[out++] = f->smsgs[i];
    }
    f->nsmsgs = out;
}

/* Gives every keyword the server has in this folder a letter before the
 * plan is made, in one take of dovecot-uidlist.lock (which may have to be
 * waited for) instead of one per message. Names that find no free letter
 * stay without one, and the plan then treats them as keywords the local
 * side cannot hold. */
static int assign_letters(struct session *e)
{
    struct fstate *f = e->f;
    const char **names = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < f->nsmsgs; i++) {
        for (size_t k = 0; k < f->smsgs[i].nkw; k++) {
            xgrow(&names, &cap, n + 1, sizeof(*names));
            names[n++] = f->smsgs[i].kw[k];
        }
    }
    int r = 0;
    if (n > 0) {
        qsort(names, n, sizeof(*names), strp_cmp);
        size_t u = 0;
        for (size_t i = 0; i < n; i++) {
            if (u == 0 || strcmp(names[u - 1], names[i]) != 0) {
                names[u++] = names[i];
            }
        }
        r = md_keywords_assign(f->md, names, u);
        if (r >= 0) {
            const char *table[26];
            f->free_letters = md_keyword_table(f->md, table);
        }
    }
    free(names);
    return r;
}

/* Everything before plan_build: the server side completed, the base
 * settled, keyword letters assigned, server moves paired, the planner's
 * input filled. False when the folder failed (nothing to plan). */
static bool plan_prepare(struct session *e, struct plan_input *in, struct plan_server_msg **sm)
{
    struct fstate *f = e->f;
    if (!f->delta && f->mb.exists == 0) {
        f->nsmsgs = 0;
    }
    if (f->have_search) {
        /* CONDSTORE without QRESYNC: known UIDs missing from the search
         * were expunged. */
        for (size_t i = 0; i < f->base.n; i++) {
            uint32_t uid = f->base.v[i].uid;
            bool found = false;
            size_t lo = 0, hi = f->nsearch;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (f->search[mid] == uid) {
                    found = true;
                    break;
                }
                if (f->search[mid] < uid) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if (!found) {
                xgrow(&f->vanished, &f->vanished_cap, f->nvanished + 1, sizeof(*f->vanished));
                f->vanished[f->nvanished++] = uid;
            }
        }
    }
    dedupe_server(f);
    /* A skipped message reported by a delta (a flag change) comes without
     * size and date: give it the ones it was skipped for, so the planner
     * skips it again instead of downloading it. */
    for (size_t i = 0; i < f->nsmsgs && f->nskips > 0; i++) {
        struct smsg *s = &f->smsgs[i];
        const struct skip_ent *sk = s->size == 0 ? find_skip(f, s->uid) : NULL;
        if (sk != NULL) {
            s->size = sk->size;
            s->internaldate = (time_t)sk->date;
        }
    }
    settle_base(e);
    int ar;
    if (!e->opts.dry_run && f->md != NULL && (ar = assign_letters(e)) < 0) {
        /* Nothing planned, nothing changed: the next run tries again. */
        folder_fail_md(e, ar);
        return false;
    }
    moves_pair_server(e);
    fill_input(e, in, sm);
    return true;
}

/* Everything after plan_build. */
static void plan_finish(struct session *e)
{
    struct fstate *f = e->f;
    drop_empty_uploads(e);
    moves_filter_plan(e);
    if (!e->opts.dry_run) {
        e->run->prog_total += (unsigned)(f->plan->ndownloads + f->plan->nuploads);
    }
    if (f->plan->error != NULL) {
        folder_note(e, "%s", f->plan->error); /* the rest (no deletions) still runs */
    }
    if (e->opts.dry_run) {
        plan_print(f->plan, f->job->name, e->plan_out);
        count_planned(e);
        moves_park_orphans(e); /* in memory: the folders after it pair them */
    }
}

static void plan_folder(struct session *e)
{
    struct plan_input in;
    struct plan_server_msg *sm;
    if (plan_prepare(e, &in, &sm)) {
        e->f->plan = plan_build(&in);
        free(sm);
        plan_finish(e);
    }
}

/* plan_build runs on the thread pool: at 100,000 messages it takes a few
 * hundred milliseconds the loop thread (every other account's connections
 * and timers) must not wait for. Small folders go the same way (the
 * hand-off costs tens of microseconds), so that one path is the tested
 * one. */
struct plan_job {
    uv_work_t req;
    struct session *e;
    struct plan_input in;
    struct plan_server_msg *sm;
    struct plan *plan;
    void (*cont)(struct session *e);
};

static void plan_work(uv_work_t *req)
{
    struct plan_job *j = req->data;
    /* plan_build reads the listing, base and local view, which the loop
     * leaves alone while the folder waits (fstate.reading; the listing is
     * complete, so server data goes to note_dirty), and calls kw_ok,
     * which only reads the folder's keyword table. */
    j->plan = plan_build(&j->in);
    pool_trim_if(j->in.local.nmsgs + j->in.server.nmsgs + j->in.base->n);
}

static void plan_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct plan_job *j = req->data;
    struct session *e = j->e;
    struct fstate *f = e->f;
    void (*cont)(struct session *) = j->cont;
    f->reading = false;
    f->plan = j->plan;
    free(j->sm);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    plan_finish(e);
    cont(e);
}

/* plan_folder, then cont (also when the folder failed before a plan). */
static void plan_folder_then(struct session *e, void (*cont)(struct session *e))
{
    struct plan_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->cont = cont;
    if (!plan_prepare(e, &j->in, &j->sm)) {
        free(j);
        cont(e);
        return;
    }
    e->f->reading = true;
    if (uv_queue_work(e->loop, &j->req, plan_work, plan_done) == 0) {
        return;
    }
    plan_work(&j->req);
    plan_done(&j->req, 0);
}

/* The folder's changes carried out, once planned. */
static void renames_marked(struct session *e, bool ok);
static void unsettled_marked(struct session *e, bool ok);

static void after_plan(struct session *e)
{
    struct fstate *f = e->f;
    /* An index that cannot take the settled rows (settle_base) cannot
     * take this run's changes either. */
    if (e->opts.dry_run || f->md == NULL || f->failed) {
        folder_end(e);
        return;
    }
    /* Without the marks a kill between a rename and the record of its new
     * base could have the next run take the server's change, already on
     * the file, for the user's: nothing is renamed then. */
    if (f->plan->nlocal_flags > 0) {
        marks_then(e, renames_marks, renames_marked);
        return;
    }
    renames_marked(e, true);
}

/* Before the local renames, their messages' base rows are marked
 * unsettled, as unsettled_marks does before the STOREs: a kill after a
 * rename and before its new base is recorded left a file that already
 * carries the server's change over the old base, and the next run took
 * that for the user's change and sent the old flags back up, undoing a
 * change made on the server meanwhile (test_sync_crash lost one so). The
 * next run takes the file's flags as the base for the bits the rename
 * changes (settle_base): renamed or not, the file then says which. */
static void locals_applied(struct session *e);

static void renames_marked(struct session *e, bool ok)
{
    if (!ok) {
        folder_end(e);
        return;
    }
    apply_local_then(e, locals_applied);
}

static void locals_applied(struct session *e)
{
    struct fstate *f = e->f;
    if (f->failed) {
        folder_end(e);
        return;
    }
    /* Without the marks a STORE whose answer a crash loses could be taken
     * for the user's change next time: no STORE then (the folder failed;
     * the next run plans them again). */
    bool del_stores;
    if (unsettled_needed(f->plan, local_delete_mode(e), &del_stores)) {
        marks_then(e, unsettled_marks, unsettled_marked);
        return;
    }
    apply_server(e);
}

static void unsettled_marked(struct session *e, bool ok)
{
    if (!ok) {
        /* Nothing has gone out yet: end the folder here rather than
         * send deletions and fetch bodies the index could not record. */
        folder_end(e);
        return;
    }
    apply_server(e);
}

static void folder_end(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_DONE;
    lskips_save(e);
    if (f->plan != NULL && !e->opts.dry_run && f->md != NULL) {
        folder_final(e);
    }
    if (f->rm_done) {
        struct fjob *j = f->job;
        char *what =
            f->adopt ? xasprintf("%s: %u matched with the server", j->name, f->rm_matched)
                     : xasprintf("UIDVALIDITY of %s changed: %u matched", j->name, f->rm_matched);
        char *old = j->notice; /* the empty files left out, if any */
        if (e->opts.dry_run) {
            j->notice = xasprintf("%s, %zu to download, %zu to upload", what,
                                  f->plan != NULL ? f->plan->ndownloads : 0,
                                  f->plan != NULL ? f->plan->nuploads : 0);
        } else {
            j->notice = xasprintf("%s, %u downloaded, %u uploaded", what, fcounts(e)->new_down,
                                  fcounts(e)->new_up);
        }
        if (old != NULL) {
            char *both = xasprintf("%s; %s", j->notice, old);
            free(j->notice);
            j->notice = both;
            free(old);
        }
        free(what);
        j->res->notice = j->notice;
    }
    struct fjob *j = f->job;
    fstate_free_later(e->loop, f);
    e->f = NULL;
    job_totals(e, j);
    if (j->on_demand || e->opts.report_every_folder) {
        j->on_demand = false;
        if (e->opts.on_folder_done != NULL) {
            e->opts.on_folder_done(j->res, e->opts.session_arg);
        }
    }
    next_folder(e);
}

/* Moves the current folder to its next phase when the previous one has
 * nothing in flight. */
static void folder_advance(struct session *e)
{
    struct fstate *f = e->f;
    if (e->finished || conn_lost(e) || f == NULL) {
        return;
    }
    if (e->cancelled) {
        folder_fail_transient(e, "cancelled");
    }
    if (f->failed && f->phase < FP_APPLY_SERVER) {
        folder_end(e);
        return;
    }
    switch (f->phase) {
    case FP_SELECT:
        folder_end(e);
        return;
    case FP_FETCH:
        if (f->lbase_set) {
            ldiff_start(e); /* fetch_headers follows */
            return;
        }
        fetch_headers(e);
        return;
    case FP_HEADERS:
        if (f->rematch && rematch_finish(e) < 0) {
            folder_end(e);
            return;
        }
        intents_finish(e);
        recover_intents(e);
        return;
    case FP_RECOVER:
        if (settle_intents(e) < 0) {
            folder_end(e);
            return;
        }
        plan_folder_then(e, after_plan);
        return;
    case FP_APPLY_SERVER:
        /* The STOREs answered: their new base goes in before the downloads. */
        record_stored_then(e, issue_downloads);
        return;
    case FP_DOWNLOAD:
        flush_batch(e);
        if (f->flushing != NULL || diskq_busy(f->dq)) {
            /* Uploads start once every download is in place. */
            f->advance_after_flush = true;
            return;
        }
        start_uploads(e);
        return;
    case FP_UPLOAD:
        if (f->nul_pend > 0) {
            ul_resolve_fetch(e);
            return;
        }
        folder_end(e);
        return;
    case FP_UL_FETCH:
    case FP_UL_HEADERS:
        if (f->ul_lookup_failed) {
            /* Their intent rows stay; the next run finds them. */
            f->ul_unresolved = (unsigned)f->nul_pend;
            folder_end(e);
            return;
        }
        if (f->phase == FP_UL_FETCH) {
            ul_resolve_headers(e);
            return;
        }
        ul_resolve_finish(e);
        folder_end(e);
        return;
    case FP_DONE:
        folder_end(e);
        return;
    }
}

/* A folder job ended without folder_end (it failed to start, or had
 * nothing to do): an on-demand job's owner hears of it all the same. */
/* A folder job ended: the account's counts since start. */
static void job_totals(struct session *e, const struct fjob *j)
{
    struct account_totals *t = account_totals(e->account);
    const struct engine_counts *c = &j->res->counts;
    t->runs++;
    t->folder_fails += j->res->error != NULL;
    t->new_down += c->new_down;
    t->new_up += c->new_up;
    t->flags_down += c->flags_down;
    t->flags_up += c->flags_up;
    t->deleted_down += c->deleted_down;
    t->deleted_up += c->deleted_up;
    t->moved += c->moved;
    t->bytes_down += c->bytes_down;
    t->bytes_up += c->bytes_up;
}

static void job_ended_early(struct session *e, struct fjob *j)
{
    job_totals(e, j);
    if (j->on_demand || e->opts.report_every_folder) {
        j->on_demand = false;
        if (e->opts.on_folder_done != NULL) {
            e->opts.on_folder_done(j->res, e->opts.session_arg);
        }
    }
}

void start_folder(struct session *e, struct fjob *j)
{
    struct fstate *f = xcalloc(1, sizeof(*f));
    f->job = j;
    e->f = f;
    /* What changes from here on is seen by this sync or marked again. */
    account_clear_dirty(e->account, j->name);
    int r = folder_prepare(e);
    if (r < 0) {
        fstate_free(f);
        e->f = NULL;
        job_ended_early(e, j);
        next_folder(e);
        return;
    }
    if (r == PREPARE_SCANNING) {
        return; /* scan_done goes on */
    }
    if (r == PREPARE_LAZY) {
        /* The Maildir is as the last complete sync left it: the server
         * decides whether anything is to be done. */
        if (j->has_status && status_unchanged(&f->st, &j->status) && !skips_released(e) &&
            f->nlnames == 0) {
            quiet_done(e);
            return;
        }
        do_select(e);
        return;
    }
    start_folder_scanned(e);
}

/* start_folder, once the folder's Maildir side is read. */
static void start_folder_scanned(struct session *e)
{
    struct fstate *f = e->f;
    struct fjob *j = f->job;
    if (folder_prepare_index(e) < 0) {
        fstate_free(f);
        e->f = NULL;
        job_ended_early(e, j);
        next_folder(e);
        return;
    }
    if (f->listed) {
        /* A lazy folder whose full listing differed from the base in a
         * way only the whole folder settles (ldiff_done): the listing
         * stands. */
        fetch_headers(e);
        return;
    }
    if (f->selected) {
        /* A lazy folder (local_quiet) the server turned out to change. */
        select_continue(e);
        return;
    }
    if (e->opts.dry_run && f->md == NULL) {
        fprintf(e->plan_out, "%s: create the folder locally\n", j->name);
    }
    if (!j->on_server) {
        /* --dry-run of a folder created locally (a real run creates it on
         * the server first): there is nothing to SELECT, and the folder
         * the real run creates is empty, so the plan is made against an
         * empty server listing. */
        plan_folder(e);
        folder_end(e);
        return;
    }
    /* Skip the SELECT when nothing moved on either side. */
    if (j->has_status && status_unchanged(&f->st, &j->status)) {
        local_unchanged_then(e, scanned_decide);
        return;
    }
    /* Messages moved here from another folder, or from here to another,
     * go first (UID MOVE), so that the listing already has them where
     * they are now. */
    moves_start(e, do_select);
}

/* start_folder_scanned, once the server said nothing changed: whether the
 * local side did. */
static void scanned_decide(struct session *e, bool unchanged)
{
    struct fstate *f = e->f;
    struct fjob *j = f->job;
    if (unchanged && !skips_released(e)) {
        lskips_save(e);
        /* This scan found nothing to do either: its stamp spares the next
         * sync the scan, unless the record's does already (or this one is
         * too fresh to be believed, and would only be written again). */
        struct md_stamp rec = recorded_stamp(&f->st);
        bool stamp =
            md_unchanged_since(&f->stamp, &f->stamp) && !md_unchanged_since(&rec, &f->stamp);
        /* No row is unsettled (local_rows_settled): what is left of the
         * marks' value goes, or local_quiet would never believe a stamp. */
        size_t len = 0;
        if (!e->opts.dry_run) {
            free(unsettled_read(e, NULL, &len));
        }
        if (!e->opts.dry_run && (stamp || len > 0)) {
            struct idx_folder st = f->st;
            record_stamp(&st, &f->stamp);
            char key[512];
            unsettled_key(j->name, key, sizeof(key));
            idx_apply_later(e, &(struct idx_ops){.folder = j->name,
                                                 .st = stamp ? &st : NULL,
                                                 .meta_key = len > 0 ? key : NULL,
                                                 .meta_val = ""});
        }
        fstate_free_later(e->loop, f);
        e->f = NULL;
        job_ended_early(e, j);
        next_folder(e);
        return;
    }
    /* Messages moved here from another folder, or from here to another,
     * go first (UID MOVE), so that the listing already has them where
     * they are now. */
    moves_start(e, do_select);
}
