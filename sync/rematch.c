/* Matching a folder's server messages to its local files, when the
 * index cannot say which is which: the server renumbered the folder (a new
 * UIDVALIDITY), or the index knows nothing of a folder that holds mail on
 * both sides (adopt: a lost index, or a Maildir another tool kept). Pairs
 * are made by Message-ID and size, then by header hash where those do not
 * decide; the matches become the folder's new base in one transaction, so
 * nothing already on both sides is copied again.
 *
 * Also the folder's header phase (fetch_headers): the header blocks of the
 * server messages that only a header hash can tell apart, for the re-match
 * here and for upload intents without a Message-ID (sync/upload.c).
 *
 * Separate from the folder executor (sync/folder.c) because it is a detour
 * most folder syncs never take, with its own state (fstate.lf, rm_s, rm_l)
 * and its own reading of local files on the thread pool. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/engine_int.h"
#include "sync/imap.h"
#include "sync/msgfacts.h"
#include "sync/plan.h"

static void on_header_msg(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    if (f == NULL || m->uid == 0 || m->header == NULL) {
        return;
    }
    struct smsg *s = find_smsg(f, m->uid);
    if (s != NULL) {
        msgfacts_header_hash(m->header, m->header_len, s->hh, &s->hstrip);
        s->have_hh = true;
    }
}

static const struct imap_fetch_cb header_cb = {.on_message = on_header_msg, .done = on_fetch_done};

/* Reads the header of every local file (its wire size only where a server
 * message could match it) and pairs what the Message-ID and size decide. */
/* Reading the local files' header blocks for the re-match (a Maildir of
 * thousands of messages is thousands of opens and reads) runs on the
 * thread pool; the folder waits for it (fstate.reading). */
struct read_job {
    uv_work_t req;
    struct session *e;
    const char **ids; /* the server's Message-IDs, sorted */
    size_t nids;
    bool srv_noid; /* a server message has none */
};

static void rematch_read_work(uv_work_t *req)
{
    struct read_job *j = req->data;
    struct fstate *f = j->e->f;
    size_t n = f->scan->count;
    for (size_t i = 0; i < n && f->md != NULL; i++) {
        struct lfact *lf = &f->lf[i];
        int fd = md_open_msg(f->md, &f->scan->msgs[i]);
        if (fd < 0) {
            continue; /* gone meanwhile: it cannot match */
        }
        if (msgfacts_read_file(fd, &lf->msgid, lf->hh, &lf->have_hh, &lf->strip) == 0) {
            bool maybe = lf->msgid != NULL ? bsearch(&lf->msgid, j->ids, j->nids, sizeof(*j->ids),
                                                     strp_cmp) != NULL
                                           : j->srv_noid;
            if (maybe && wire_size(fd, &lf->wire) == 0) {
                lf->have_wire = true;
            }
        }
        close(fd);
    }
}

static void rematch_match(struct session *e);
static void fetch_headers_send(struct session *e);

static void rematch_read_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct read_job *j = req->data;
    struct session *e = j->e;
    e->f->reading = false;
    free(j->ids);
    free(j);
    if (!pool_job_back(e)) {
        return;
    }
    rematch_match(e);
    fetch_headers_send(e);
}

/* Reads every local file's Message-ID, header hash and wire size (on the
 * thread pool), then matches them to the server's listing. */
static void rematch_prepare(struct session *e)
{
    struct fstate *f = e->f;
    size_t n = f->scan->count;
    f->lf = xcalloc(n + 1, sizeof(*f->lf));
    struct read_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->e = e;
    j->ids = xcalloc(f->nsmsgs + 1, sizeof(*j->ids));
    for (size_t i = 0; i < f->nsmsgs; i++) {
        if (f->smsgs[i].msgid != NULL) {
            j->ids[j->nids++] = f->smsgs[i].msgid;
        } else {
            j->srv_noid = true;
        }
    }
    qsort(j->ids, j->nids, sizeof(*j->ids), strp_cmp);
    f->reading = true;
    if (uv_queue_work(e->loop, &j->req, rematch_read_work, rematch_read_done) != 0) {
        rematch_read_work(&j->req);
        rematch_read_done(&j->req, 0);
    }
}

static void rematch_match(struct session *e)
{
    struct fstate *f = e->f;
    size_t n = f->scan->count;
    f->rm_s = xcalloc(f->nsmsgs + 1, sizeof(*f->rm_s));
    for (size_t i = 0; i < f->nsmsgs; i++) {
        f->rm_s[i] = (struct plan_match){
            .msgid = f->smsgs[i].msgid, .size = f->smsgs[i].size, .ix = i, .pair = -1};
    }
    f->rm_ns = f->nsmsgs;
    f->rm_l = xcalloc(n + 1, sizeof(*f->rm_l));
    f->rm_nl = 0;
    for (size_t i = 0; i < n; i++) {
        const struct lfact *lf = &f->lf[i];
        /* Compared without the lines another tool added (mbsync's X-TUID):
         * the server's copy usually lacks them. When it has them too, the
         * sizes differ and the header blocks decide (plan_match_loose). */
        if (lf->have_wire && lf->strip <= lf->wire) {
            f->rm_l[f->rm_nl++] = (struct plan_match){.msgid = lf->msgid,
                                                      .size = lf->wire - lf->strip,
                                                      .hh = lf->have_hh ? lf->hh : NULL,
                                                      .ix = i,
                                                      .pair = -1};
        }
    }
    plan_match_ids(f->rm_s, f->rm_ns, f->rm_l, f->rm_nl);
    plan_match_loose(f->rm_s, f->rm_ns, f->rm_l, f->rm_nl);
}

/* A base row by its lid, for finding a match's old record. */
struct lid_ix {
    const char *lid;
    size_t ix;
};

static int lid_ix_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lid_ix *)a)->lid, ((const struct lid_ix *)b)->lid);
}

struct rematch_write {
    const char *folder;
    const struct idx_rows *recs;
    const struct idx_folder *st;
};

/* Replaces every record of the folder (old UIDs, intents) with the matches
 * and the new UIDVALIDITY, in one transaction: a crash leaves either the old
 * state (and the next run matches again) or the new one. */
static int rematch_fn(struct idx_txn *txn, void *arg)
{
    const struct rematch_write *w = arg;
    int r = idx_folder_delete(txn, w->folder);
    if (r < 0 && r != -ENOENT) {
        return r;
    }
    r = 0;
    struct idx_msg *m = xmalloc(sizeof(*m));
    for (size_t i = 0; i < w->recs->n && r >= 0; i++) {
        idx_rows_get(w->recs, i, m);
        r = idx_msg_put(txn, w->folder, m);
    }
    free(m);
    return r < 0 ? r : idx_folder_put(txn, w->folder, w->st);
}

/* Pairs what the header hashes decide, then makes the matches the new base.
 * A match keeps the flags of its old record when the local file had one
 * (what both sides last agreed on), else the local flags: either way the
 * three-way merge keeps local changes and applies the server's. Messages
 * left unmatched are downloaded or uploaded by the plan as new ones, so
 * nothing is lost and nothing already here is fetched twice. */
int rematch_finish(struct session *e)
{
    struct fstate *f = e->f;
    for (size_t i = 0; i < f->rm_ns; i++) {
        struct smsg *sm = &f->smsgs[f->rm_s[i].ix];
        f->rm_s[i].hh = sm->have_hh ? sm->hh : NULL;
        if (sm->have_hh && sm->hstrip <= sm->size) {
            f->rm_s[i].size = sm->size - sm->hstrip; /* as the local side counts it */
        }
    }
    plan_match_headers(f->rm_s, f->rm_ns, f->rm_l, f->rm_nl);

    struct lid_ix *old_v = xcalloc(f->base.n + 1, sizeof(*old_v));
    for (size_t i = 0; i < f->base.n; i++) {
        old_v[i] = (struct lid_ix){.lid = idx_rows_lid(&f->base, i), .ix = i};
    }
    qsort(old_v, f->base.n, sizeof(*old_v), lid_ix_cmp);
    /* The new base built compact, one complete record at a time. */
    struct idx_rows recs = {0};
    struct idx_msg *r = xmalloc(sizeof(*r));
    for (size_t i = 0; i < f->rm_ns; i++) {
        if (f->rm_s[i].pair < 0) {
            continue;
        }
        const struct smsg *sm = &f->smsgs[f->rm_s[i].ix];
        size_t li = (size_t)f->rm_s[i].pair;
        memset(r, 0, sizeof(*r));
        r->uid = sm->uid;
        r->state = IDX_MSG_SYNCED;
        r->size = sm->size;
        snprintf(r->lid, sizeof(r->lid), "%s", f->scan->msgs[li].id);
        struct lid_ix key = {.lid = r->lid};
        const struct lid_ix *old =
            f->base.n > 0 ? bsearch(&key, old_v, f->base.n, sizeof(*old_v), lid_ix_cmp) : NULL;
        if (old != NULL) {
            r->flags = f->base.v[old->ix].flags & (uint8_t)~IDX_FLAGS_UNSETTLED;
            snprintf(r->keywords, sizeof(r->keywords), "%s", idx_rows_keywords(&f->base, old->ix));
        } else {
            /* Nothing tells which side changed what since they last
             * agreed: the base is what both sides hold, so the merge keeps
             * every flag and keyword either side has set and takes none
             * away. */
            r->flags = (uint8_t)(f->lmsgs[li].flags & sm->flags & MD_FLAGS_ALL);
            const char **both = xcalloc(f->lmsgs[li].nkw + 1, sizeof(*both));
            size_t nboth = 0;
            for (size_t k = 0; k < f->lmsgs[li].nkw; k++) {
                for (size_t q = 0; q < sm->nkw; q++) {
                    if (strcmp(f->lmsgs[li].kw[k], sm->kw[q]) == 0) {
                        both[nboth++] = f->lmsgs[li].kw[k];
                        break;
                    }
                }
            }
            struct plan_kw kw;
            plan_kw_from(both, nboth, &kw);
            plan_kw_format(&kw, r->keywords, sizeof(r->keywords));
            plan_kw_free(&kw);
            free(both);
        }
        if (sm->msgid != NULL) {
            msgfacts_msgid_hash(sm->msgid, r->msgid_hash);
        } else if (f->lf[li].have_hh) {
            memcpy(r->msgid_hash, f->lf[li].hh, sizeof(r->msgid_hash));
        }
        idx_rows_add(&recs, r);
    }
    free(r);
    free(old_v);
    struct idx_folder st = f->st;
    st.uidvalidity = f->mb.uidvalidity;
    st.uidnext = 0;
    st.highestmodseq = 0;
    st.messages = 0;
    if (!e->opts.dry_run) {
        struct rematch_write w = {.folder = f->job->name, .recs = &recs, .st = &st};
        int rc = idx_write(e->idx, rematch_fn, &w);
        if (rc < 0) {
            folder_fail_idx(e, rc);
            idx_rows_free(&recs);
            return rc;
        }
    }
    /* The scan's identities may point at the old rows' lids: those stay
     * until the folder's state is freed; the rows themselves go. */
    idx_rows_free(&f->base_old);
    f->base_old = f->base;
    free(f->base_old.v);
    f->base_old.v = NULL;
    f->base_old.n = f->base_old.cap = 0;
    f->base = recs;
    f->nintents = 0; /* their records are gone; their files took part */
    f->st = st;
    f->rm_matched = (unsigned)recs.n;
    f->rm_done = true;
    return 0;
}

/* Fetches the header block of the server messages that only a header hash
 * can tell apart, then goes on. */
void fetch_headers(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_HEADERS;
    f->pending = 1;
    dedupe_server(f);
    if (f->rematch) {
        rematch_prepare(e); /* goes on in fetch_headers_send */
        return;
    }
    if (f->nintents > 0 && f->md != NULL) {
        intents_prepare(e);
    }
    fetch_headers_send(e);
}

static void fetch_headers_send(struct session *e)
{
    struct fstate *f = e->f;
    uint32_t *uids = NULL;
    size_t n = 0, cap = 0;
    if (f->rematch) {
        for (size_t i = 0; i < f->rm_ns; i++) {
            if (f->rm_s[i].need_hh) {
                xgrow(&uids, &cap, n + 1, sizeof(*uids));
                uids[n++] = f->smsgs[f->rm_s[i].ix].uid;
            }
        }
    } else if (f->nintents > 0 && f->md != NULL) {
        for (size_t i = 0; i < f->it_ns; i++) {
            if (f->it_s[i].need_hh) {
                xgrow(&uids, &cap, n + 1, sizeof(*uids));
                uids[n++] = f->smsgs[f->it_s[i].ix].uid;
            }
        }
    }
    fetch_uids(e, uids, n, IMAP_FETCH_HEADER, &header_cb, "UID FETCH");
    free(uids);
    phase_cmd_done(e);
}
