/* Messages moved locally between folders, carried out on the server with
 * UID MOVE (see sync/moves.h for the design and its crash safety).
 *
 * Per folder job, before its SELECT: find the candidates (loop thread: the
 * base, the scan and index key lookups), check the Maildirs (thread pool:
 * directory listings), keep the moves (loop thread: the index and the
 * run's claims), then one group per (source, destination): intent rows in
 * the destination, SELECT source, UID MOVE, one index transaction. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/account.h"
#include "sync/engine_int.h"
#include "sync/folderplan.h"
#include "sync/imap.h"
#include "sync/moves.h"
#include "sync/msgfacts.h"
#include "sync/plan.h"

/* A move: the message rec.lid of folder src (UID rec.uid there) now lives
 * in dst's Maildir. */
struct mv_item {
    char *src, *dst;
    struct idx_msg rec; /* the source folder's record */
    uint32_t new_uid;   /* from COPYUID */
    bool out;           /* src is the job's folder (found from its base) */
    bool drop;          /* not a move after all */
};

struct moves {
    struct mv_item *items;
    size_t n, cap;
    /* Left out of this job's plan: uploads (by unique name) and server
     * deletions (by UID) of messages that are moves. */
    char **skip_lids;
    size_t nskip, skip_cap;
    uint32_t *keep_uids;
    size_t nkeep, keep_cap;
    void (*cont)(struct session *e);
    /* The group being carried out: items[g0, g1). */
    size_t g0, g1;
    unsigned pending;
    bool group_failed;
    uint32_t src_uidvalidity; /* the source's, as the index knows it; 0 unknown */
    uint32_t dst_uidvalidity;
};

void moves_free(struct moves *mv)
{
    if (mv == NULL) {
        return;
    }
    for (size_t i = 0; i < mv->n; i++) {
        free(mv->items[i].src);
        free(mv->items[i].dst);
    }
    free(mv->items);
    for (size_t i = 0; i < mv->nskip; i++) {
        free(mv->skip_lids[i]);
    }
    free(mv->skip_lids);
    free(mv->keep_uids);
    free(mv);
}

/* ---- the run's claims ------------------------------------------------------------------ */

static bool claimed(const struct engine *r, const char *lid)
{
    uint64_t h = str_hash(lid, strlen(lid));
    size_t it = 0, i;
    while (strindex_next(&r->claim_ix, h, &it, &i)) {
        if (strcmp(r->claims[i], lid) == 0) {
            return true;
        }
    }
    return false;
}

static void claim(struct engine *r, const char *lid)
{
    xgrow(&r->claims, &r->claims_cap, r->nclaims + 1, sizeof(*r->claims));
    r->claims[r->nclaims] = xstrdup(lid);
    strindex_add(&r->claim_ix, str_hash(lid, strlen(lid)), r->nclaims);
    r->nclaims++;
}

/* A move not carried out: later jobs of the run treat the message as they
 * would have without it (upload it, or move it themselves). */
static void unclaim(struct engine *r, const char *lid)
{
    uint64_t h = str_hash(lid, strlen(lid));
    size_t it = 0, i;
    while (strindex_next(&r->claim_ix, h, &it, &i)) {
        if (strcmp(r->claims[i], lid) == 0) {
            r->claims[i][0] = '\0'; /* the index has no removal: the entry matches nothing */
        }
    }
}

void moves_claims_free(struct engine *r)
{
    for (size_t i = 0; i < r->nclaims; i++) {
        free(r->claims[i]);
    }
    free(r->claims);
    r->claims = NULL;
    r->nclaims = r->claims_cap = 0;
    strindex_free(&r->claim_ix);
}

/* ---- candidates ---------------------------------------------------------------------- */

static void skip_lid(struct moves *mv, const char *lid)
{
    xgrow(&mv->skip_lids, &mv->skip_cap, mv->nskip + 1, sizeof(*mv->skip_lids));
    mv->skip_lids[mv->nskip++] = xstrdup(lid);
}

static void keep_uid(struct moves *mv, uint32_t uid)
{
    xgrow(&mv->keep_uids, &mv->keep_cap, mv->nkeep + 1, sizeof(*mv->keep_uids));
    mv->keep_uids[mv->nkeep++] = uid;
}

static struct mv_item *add_item(struct moves *mv)
{
    xgrow(&mv->items, &mv->cap, mv->n + 1, sizeof(*mv->items));
    struct mv_item *it = &mv->items[mv->n++];
    memset(it, 0, sizeof(*it));
    return it;
}

struct names {
    char **v;
    size_t n, cap;
    const char *self;
};

static int collect_folder(const char *folder, const struct idx_folder *st, void *arg)
{
    (void)st;
    struct names *nm = arg;
    if (strcmp(folder, nm->self) != 0) {
        xgrow(&nm->v, &nm->cap, nm->n + 1, sizeof(*nm->v));
        nm->v[nm->n++] = xstrdup(folder);
    }
    return 0;
}

/* Whether another job of the run can take part in a move: the folder is
 * synced by this run and exists on the server. */
static bool folder_usable(struct engine *r, const char *name)
{
    struct fjob *j = find_job(r, name);
    return j != NULL && j->on_server;
}

/* Which base rows have their file in the scan (has_file) and which files
 * have a base row (known): one look-up per row in the sorted scan, the
 * work find_incoming and find_outgoing share (at 100,000 messages, sorting
 * the base's names for it held the loop thread for tens of ms). */
static void match_scan(const struct fstate *f, bool **has_file_r, bool **known_r)
{
    size_t nscan = f->scan != NULL ? f->scan->count : 0;
    bool *has_file = xcalloc(f->base.n + 1, sizeof(*has_file));
    bool *known = xcalloc(nscan + 1, sizeof(*known));
    size_t hint = 0;
    for (size_t i = 0; i < f->base.n && nscan > 0; i++) {
        if (f->base.v[i].lid_len == 0) {
            continue;
        }
        const struct md_msg *m = md_scan_find_near(f->scan, idx_rows_lid(&f->base, i), &hint);
        if (m != NULL) {
            has_file[i] = true;
            known[m - f->scan->msgs] = true;
        }
    }
    *has_file_r = has_file;
    *known_r = known;
}

/* Moves into the job's folder: local files the base does not know (or
 * that only a move's intent names) that another folder's index records.
 * Returns the number of candidates added. */
static size_t find_incoming(struct session *e, struct moves *mv, const bool *known)
{
    struct fstate *f = e->f;
    struct fjob *j = f->job;
    if (f->scan == NULL || f->scan->count == 0) {
        return 0;
    }
    if (f->base.n == 0 && f->nintents == 0 && j->has_status &&
        (j->status.have & IMAP_STATUS_MESSAGES) && j->status.messages > 0) {
        /* A folder the index knows nothing of, with mail on both sides:
         * its files are matched with the server first (the adopt path of
         * on_select), which records that would come from moves would
         * prevent. */
        return 0;
    }
    const char **cand = NULL;
    size_t ncand = 0, cap = 0;
    for (size_t i = 0; i < f->scan->count; i++) {
        const char *lid = f->scan->msgs[i].id;
        if (known[i]) {
            continue;
        }
        bool plain_intent = false;
        for (size_t k = 0; k < f->nintents; k++) {
            if (strcmp(f->intents[k].lid, lid) == 0) {
                /* An APPEND's intent may have stored the message here
                 * already: only a move's intent is a move again. */
                plain_intent = !(f->intents[k].flags & IDX_FLAGS_MOVING);
                break;
            }
        }
        if (!plain_intent) {
            xgrow(&cand, &cap, ncand + 1, sizeof(*cand));
            cand[ncand++] = lid;
        }
    }
    size_t added = 0;
    if (ncand == 0) {
        free(cand);
        return 0;
    }
    struct idx_txn *txn;
    if (idx_begin(e->idx, false, &txn) < 0) {
        free(cand);
        return 0; /* uploaded as new: today's behaviour */
    }
    struct names nm = {.self = j->name};
    idx_folder_foreach(txn, collect_folder, &nm);
    for (size_t i = 0; i < ncand && nm.n > 0; i++) {
        for (size_t k = 0; k < nm.n; k++) {
            struct idx_msg rec;
            if (idx_msg_get_lid(txn, nm.v[k], cand[i], &rec) != 0 || rec.state != IDX_MSG_SYNCED ||
                rec.uid == 0) {
                continue;
            }
            if (!folder_usable(e->run, nm.v[k])) {
                break;
            }
            struct mv_item *it = add_item(mv);
            it->src = xstrdup(nm.v[k]);
            it->dst = xstrdup(j->name);
            it->rec = rec;
            added++;
            break;
        }
    }
    idx_abort(txn);
    for (size_t k = 0; k < nm.n; k++) {
        free(nm.v[k]);
    }
    free(nm.v);
    free(cand);
    return added;
}

/* Moves out of the job's folder: synced records whose file is gone from
 * the Maildir (their destination is looked for on the thread pool). */
static size_t find_outgoing(struct session *e, struct moves *mv, const bool *has_file)
{
    struct fstate *f = e->f;
    size_t added = 0;
    for (size_t i = 0; i < f->base.n; i++) {
        const struct idx_row *m = &f->base.v[i];
        if (m->state != IDX_MSG_SYNCED || m->uid == 0 || m->lid_len == 0 || has_file[i]) {
            continue;
        }
        struct mv_item *it = add_item(mv);
        it->src = xstrdup(f->job->name);
        idx_rows_get(&f->base, i, &it->rec);
        it->out = true;
        added++;
    }
    return added;
}

/* ---- the Maildirs, on the thread pool --------------------------------------------------- */

struct look_job {
    uv_work_t req;
    struct session *e;
    char *root;
    enum md_layout layout;
    char *self;
    struct mv_item *items; /* e->f->mv's, untouched by the loop meanwhile */
    size_t n;
};

struct lid_ref {
    const char *lid;
    size_t ix; /* into look_job.items */
};

static int lid_ref_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lid_ref *)a)->lid, ((const struct lid_ref *)b)->lid);
}

/* Looks for the messages refs[0..n) in the folder at path: found[k] for
 * refs[k] (refs are sorted here). */
static void look_in(const char *path, struct lid_ref *refs, size_t n, bool *found)
{
    qsort(refs, n, sizeof(*refs), lid_ref_cmp);
    const char **ids = xcalloc(n + 1, sizeof(*ids));
    for (size_t k = 0; k < n; k++) {
        ids[k] = refs[k].lid;
        found[k] = false;
    }
    (void)md_find_ids(path, ids, n, found, NULL);
    free(ids);
}

static void look_work(uv_work_t *req)
{
    struct look_job *lj = req->data;
    struct lid_ref *refs = xcalloc(lj->n + 1, sizeof(*refs));
    bool *found = xcalloc(lj->n + 1, sizeof(*found));
    bool *done = xcalloc(lj->n + 1, sizeof(*done));
    /* Into the folder: the source's Maildir must no longer hold the file
     * (else it is a copy, uploaded as new). One listing per source. */
    for (size_t i = 0; i < lj->n; i++) {
        const struct mv_item *it = &lj->items[i];
        if (it->out || done[i]) {
            continue;
        }
        size_t n = 0;
        for (size_t k = i; k < lj->n; k++) {
            const struct mv_item *o = &lj->items[k];
            if (!o->out && !done[k] && strcmp(o->src, it->src) == 0) {
                refs[n++] = (struct lid_ref){o->rec.lid, k};
                done[k] = true;
            }
        }
        char *path = NULL;
        if (md_folder_local_path(lj->root, lj->layout, it->src, &path) < 0) {
            for (size_t k = 0; k < n; k++) {
                lj->items[refs[k].ix].drop = true;
            }
            continue;
        }
        look_in(path, refs, n, found);
        free(path);
        for (size_t k = 0; k < n; k++) {
            lj->items[refs[k].ix].drop = found[k];
        }
    }
    /* Out of the folder: where the file went, if anywhere. One listing per
     * local folder, while some are still unaccounted for. */
    size_t nout = 0;
    for (size_t i = 0; i < lj->n; i++) {
        nout += lj->items[i].out;
    }
    char **names = NULL;
    size_t nnames = 0;
    if (nout > 0 && md_list_folders(lj->root, lj->layout, &names, &nnames) == 0) {
        for (size_t fi = 0; fi < nnames; fi++) {
            if (folderplan_same_local(names[fi], lj->self)) {
                continue;
            }
            size_t n = 0;
            for (size_t i = 0; i < lj->n; i++) {
                if (lj->items[i].out && lj->items[i].dst == NULL) {
                    refs[n++] = (struct lid_ref){lj->items[i].rec.lid, i};
                }
            }
            if (n == 0) {
                break;
            }
            char *path = NULL;
            if (md_folder_local_path(lj->root, lj->layout, names[fi], &path) == 0) {
                look_in(path, refs, n, found);
                for (size_t k = 0; k < n; k++) {
                    if (found[k]) {
                        lj->items[refs[k].ix].dst = xstrdup(names[fi]);
                    }
                }
            }
            free(path);
        }
        md_free_names(names, nnames);
    }
    for (size_t i = 0; i < lj->n; i++) {
        if (lj->items[i].out && lj->items[i].dst == NULL) {
            lj->items[i].drop = true; /* deleted, not moved */
        }
    }
    free(refs);
    free(found);
    free(done);
}

/* ---- keeping the moves ------------------------------------------------------------------ */

static int item_cmp(const void *a, const void *b)
{
    const struct mv_item *x = a, *y = b;
    if (x->drop != y->drop) {
        return x->drop ? 1 : -1;
    }
    int c = x->drop ? 0 : strcmp(x->src, y->src);
    if (c == 0 && !x->drop) {
        c = strcmp(x->dst, y->dst);
    }
    if (c == 0) {
        c = x->rec.uid < y->rec.uid ? -1 : x->rec.uid > y->rec.uid;
    }
    return c;
}

/* Decides, on the loop thread, which candidates are moves this job carries
 * out; the others are uploaded or deleted as before, or left alone. */
static void keep_moves(struct session *e, struct moves *mv)
{
    struct engine *r = e->run;
    struct idx_txn *txn = NULL;
    if (idx_begin(e->idx, false, &txn) < 0) {
        txn = NULL;
    }
    for (size_t i = 0; i < mv->n; i++) {
        struct mv_item *it = &mv->items[i];
        if (it->drop) {
            continue;
        }
        if (claimed(r, it->rec.lid)) {
            /* Another job of this run has it: it neither goes up from
             * here nor is deleted from here in this run. */
            if (it->out) {
                keep_uid(mv, it->rec.uid);
            } else {
                skip_lid(mv, it->rec.lid);
            }
            it->drop = true;
            continue;
        }
        if (it->out) {
            struct idx_msg there;
            if (txn != NULL && idx_msg_get_lid(txn, it->dst, it->rec.lid, &there) == 0 &&
                there.state == IDX_MSG_SYNCED) {
                /* The destination knows it already (an earlier run uploaded
                 * the copy): deleting the original is right. */
                it->drop = true;
                continue;
            }
            if (!folder_usable(r, it->dst)) {
                /* Not on the server yet (a folder created locally, whose
                 * job creates it): that job moves it; nothing is deleted
                 * here meanwhile. */
                keep_uid(mv, it->rec.uid);
                it->drop = true;
                continue;
            }
        }
        claim(r, it->rec.lid);
        if (e->opts.dry_run) {
            /* Listed as a move, not as an upload and a deletion. (A real
             * run's moves leave the plan by themselves: the moved record
             * is in the destination's base and no longer in the source's.) */
            if (it->out) {
                keep_uid(mv, it->rec.uid);
            } else {
                skip_lid(mv, it->rec.lid);
            }
        }
    }
    if (txn != NULL) {
        idx_abort(txn);
    }
    qsort(mv->items, mv->n, sizeof(*mv->items), item_cmp);
    while (mv->n > 0 && mv->items[mv->n - 1].drop) {
        mv->n--;
        free(mv->items[mv->n].src);
        free(mv->items[mv->n].dst);
    }
}

/* ---- carrying them out ------------------------------------------------------------------ */

static void next_group(struct session *e);

static void done_all(struct session *e)
{
    struct moves *mv = e->f->mv;
    void (*cont)(struct session *) = mv->cont;
    mv->cont = NULL;
    cont(e);
}

/* Expands an IMAP set ("3:5,9") in its order, at most max UIDs. */
static size_t expand_set(const char *s, uint32_t *out, size_t max)
{
    size_t n = 0;
    while (s != NULL && *s != '\0' && n < max) {
        char *end;
        unsigned long a = strtoul(s, &end, 10), b = a;
        if (end == s) {
            break;
        }
        if (*end == ':') {
            const char *p = end + 1;
            b = strtoul(p, &end, 10);
            if (end == p) {
                break;
            }
        }
        unsigned long lo = a < b ? a : b, hi = a < b ? b : a;
        for (unsigned long u = lo; u <= hi && n < max; u++) {
            out[n++] = (uint32_t)u;
        }
        s = *end == ',' ? end + 1 : end;
        if (*end != ',') {
            break;
        }
    }
    return n;
}

/* Records the messages of the group that arrived (one transaction: the
 * source's records go, the destination's come), and keeps the rest out of
 * the plan until a later run knows more. */
static void record_group(struct session *e)
{
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    struct mv_item *g = &mv->items[mv->g0];
    size_t n = mv->g1 - mv->g0;
    uint32_t *drops = xcalloc(n + 1, sizeof(*drops));
    struct idx_msg *puts = xcalloc(n + 1, sizeof(*puts));
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i].new_uid == 0) {
            continue;
        }
        drops[np] = g[i].rec.uid;
        puts[np] = g[i].rec;
        puts[np].uid = g[i].new_uid;
        puts[np].state = IDX_MSG_SYNCED;
        puts[np].flags &= (uint8_t)(MD_FLAGS_ALL);
        np++;
    }
    int r = 0;
    if (np > 0) {
        struct idx_ops o[2] = {
            {.folder = g[0].src, .drops = drops, .ndrops = np},
            {.folder = g[0].dst, .puts = puts, .nputs = np},
        };
        r = idx_apply_many(e, o, 2);
    }
    if (r == 0 && np > 0) {
        bool into = strcmp(g[0].dst, f->job->name) == 0;
        for (size_t i = 0; i < np; i++) {
            if (into) {
                /* The new record is this folder's base; its intent goes. */
                for (size_t k = 0; k < f->nintents; k++) {
                    if (strcmp(f->intents[k].lid, puts[i].lid) == 0) {
                        memmove(&f->intents[k], &f->intents[k + 1],
                                (f->nintents - k - 1) * sizeof(*f->intents));
                        f->nintents--;
                        break;
                    }
                }
                idx_rows_add(&f->base, &puts[i]);
            } else {
                for (size_t k = 0; k < f->base.n; k++) {
                    if (f->base.v[k].uid == drops[i]) {
                        idx_rows_remove(&f->base, k);
                        break;
                    }
                }
            }
        }
        fcounts(e)->moved += (unsigned)np;
        log_info("%s: moved %zu message%s from %s to %s on the server (moved locally)",
                 e->acct->name, np, np == 1 ? "" : "s", g[0].src, g[0].dst);
        struct fjob *dj = find_job(e->run, g[0].dst);
        if (dj != NULL && dj != f->job) {
            /* Its LIST-STATUS counters predate the move: were it still to
             * be synced in this run, they would say it did not change, and
             * the moved messages' flags would merge only next run. */
            dj->has_status = false;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (g[i].new_uid != 0 && r == 0) {
            continue;
        }
        unclaim(e->run, g[i].rec.lid);
        if (g[i].out) {
            /* Not deleted here in this run either: the destination's intent
             * row stands for the message until its job finds it there or
             * uploads it, and the next run then deletes the original. */
            keep_uid(mv, g[i].rec.uid);
        }
    }
    if (np < n) {
        log_info("%s: %zu message%s moved locally from %s to %s not moved on the server (%s): "
                 "found there or uploaded by its sync",
                 e->acct->name, n - np, n - np == 1 ? "" : "s", g[0].src, g[0].dst,
                 mv->group_failed ? "the MOVE failed" : "no longer in the source folder");
    }
    free(drops);
    free(puts);
}

static void on_move_done(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct session *e = arg;
    if (e->finished || (res->err < 0 && !refused_locally(e, res))) {
        return; /* the connection failed: on_imap_error ends the folder */
    }
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        mv->group_failed = true;
        folder_note(e, "moving messages from %s to %s: %s", mv->items[mv->g0].src,
                    mv->items[mv->g0].dst, res->text != NULL ? res->text : "failed");
    } else if (res->copy_src != NULL && res->copy_dst != NULL &&
               (mv->dst_uidvalidity == 0 || res->copy_uidvalidity == mv->dst_uidvalidity)) {
        size_t n = mv->g1 - mv->g0;
        uint32_t *src = xcalloc(n + 1, sizeof(*src)), *dst = xcalloc(n + 1, sizeof(*dst));
        size_t ns = expand_set(res->copy_src, src, n), nd = expand_set(res->copy_dst, dst, n);
        for (size_t k = 0; k < ns && k < nd; k++) {
            for (size_t i = mv->g0; i < mv->g1; i++) {
                if (mv->items[i].rec.uid == src[k]) {
                    mv->items[i].new_uid = dst[k];
                    break;
                }
            }
        }
        free(src);
        free(dst);
    }
    if (--mv->pending == 0) {
        record_group(e);
        mv->g0 = mv->g1;
        next_group(e);
    }
}

static void on_source_selected(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct session *e = arg;
    if (e->finished || (res->err < 0 && !refused_locally(e, res))) {
        return;
    }
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    struct mv_item *g = &mv->items[mv->g0];
    if (res->err < 0 || res->status != IMAP_STATUS_OK || res->mailbox == NULL ||
        (mv->src_uidvalidity != 0 && res->mailbox->uidvalidity != mv->src_uidvalidity)) {
        /* A source that cannot be selected, or that the server renumbered
         * (the records' UIDs name other messages now): no move. */
        mv->group_failed = true;
        record_group(e);
        mv->g0 = mv->g1;
        next_group(e);
        return;
    }
    size_t n = mv->g1 - mv->g0;
    uint32_t *uids = xcalloc(n + 1, sizeof(*uids));
    for (size_t i = 0; i < n; i++) {
        uids[i] = g[i].rec.uid;
    }
    qsort(uids, n, sizeof(*uids), u32_cmp);
    char **sets;
    size_t nsets = imap_uidset_format(uids, n, 0, &sets);
    free(uids);
    mv->pending = 1;
    for (size_t k = 0; k < nsets; k++) {
        mv->pending++;
        int r = e->ro->uid_move(e->im, sets[k], g[0].dst, on_move_done, e);
        if (r < 0) {
            mv->pending--;
            mv->group_failed = true;
            if (r == -ENOTCONN || conn_lost(e)) {
                queue_failed(e, r, "UID MOVE");
            }
        }
        free(sets[k]);
    }
    free(sets);
    if (conn_lost(e)) {
        return;
    }
    if (--mv->pending == 0) {
        record_group(e);
        mv->g0 = mv->g1;
        next_group(e);
    }
}

/* Starts the next group: items of one source and one destination. */
static void next_group(struct session *e)
{
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    if (mv->g0 >= mv->n || f->failed || conn_lost(e)) {
        if (!conn_lost(e)) {
            done_all(e);
        }
        return;
    }
    struct mv_item *g = &mv->items[mv->g0];
    mv->g1 = mv->g0 + 1;
    while (mv->g1 < mv->n && strcmp(mv->items[mv->g1].src, g->src) == 0 &&
           strcmp(mv->items[mv->g1].dst, g->dst) == 0) {
        mv->g1++;
    }
    mv->group_failed = false;
    size_t n = mv->g1 - mv->g0;
    /* The intents, durable before the MOVE goes out. */
    struct idx_msg *rows = xcalloc(n + 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        rows[i] = g[i].rec;
        rows[i].uid = 0;
        rows[i].state = IDX_MSG_APPENDING;
        rows[i].flags = (uint8_t)((g[i].rec.flags & MD_FLAGS_ALL) | IDX_FLAGS_MOVING);
    }
    struct idx_ops o = {.folder = g->dst, .puts = rows, .nputs = n};
    int r = idx_apply(e, &o);
    if (r == 0 && strcmp(g->dst, f->job->name) == 0) {
        for (size_t i = 0; i < n; i++) {
            bool have = false;
            for (size_t k = 0; k < f->nintents && !have; k++) {
                have = strcmp(f->intents[k].lid, rows[i].lid) == 0;
            }
            if (!have) {
                xgrow(&f->intents, &f->intents_cap, f->nintents + 1, sizeof(*f->intents));
                f->intents[f->nintents++] = rows[i];
            }
        }
    }
    free(rows);
    if (r < 0) {
        return; /* folder_fail_idx said why; nothing went out */
    }
    mv->src_uidvalidity = mv->dst_uidvalidity = 0;
    struct idx_txn *txn;
    if (idx_begin(e->idx, false, &txn) == 0) {
        struct idx_folder st;
        if (idx_folder_get(txn, g->src, &st) == 0) {
            mv->src_uidvalidity = st.uidvalidity;
        }
        if (idx_folder_get(txn, g->dst, &st) == 0) {
            mv->dst_uidvalidity = st.uidvalidity;
        }
        idx_abort(txn);
    }
    free(e->selected);
    e->selected = xstrdup(g->src);
    struct imap_select_opts so = {0};
    if (e->ro->condstore_enabled(e->im)) {
        so.condstore = true;
    }
    r = e->ro->select(e->im, g->src, &so, on_source_selected, e);
    if (r < 0) {
        queue_failed(e, r, "SELECT");
        if (!conn_lost(e)) {
            mv->group_failed = true;
            record_group(e);
            mv->g0 = mv->g1;
            next_group(e);
        }
    }
}

/* ---- the entry points -------------------------------------------------------------------- */

static void look_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct look_job *lj = req->data;
    struct session *e = lj->e;
    free(lj->root);
    free(lj->self);
    free(lj);
    struct fstate *f = e->f;
    f->reading = false;
    if (!pool_job_back(e)) {
        return;
    }
    struct moves *mv = f->mv;
    keep_moves(e, mv);
    if (mv->n == 0) {
        done_all(e);
        return;
    }
    if (e->opts.dry_run) {
        for (size_t i = 0; i < mv->n; i++) {
            const struct mv_item *it = &mv->items[i];
            fprintf(e->plan_out, "%s: move uid %u to %s (%s moved locally)\n", it->src,
                    (unsigned)it->rec.uid, it->dst, it->rec.lid);
        }
        fcounts(e)->moved += (unsigned)mv->n;
        done_all(e);
        return;
    }
    mv->g0 = 0;
    next_group(e);
}

/* match_scan on the thread pool: a look-up per base row in the scan is
 * tens of milliseconds at 100,000 messages. The folder waits meanwhile
 * (fstate.reading), so its scan and base stay as they are. */
struct match_job {
    uv_work_t req;
    struct session *e;
    bool *has_file, *known;
};

static void match_work(uv_work_t *req)
{
    struct match_job *mj = req->data;
    match_scan(mj->e->f, &mj->has_file, &mj->known);
}

static void moves_matched(struct session *e, bool *has_file, bool *known);

static void match_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct match_job *mj = req->data;
    struct session *e = mj->e;
    bool *has_file = mj->has_file, *known = mj->known;
    free(mj);
    e->f->reading = false;
    if (!pool_job_back(e)) {
        free(has_file);
        free(known);
        return;
    }
    moves_matched(e, has_file, known);
}

void moves_start(struct session *e, void (*cont)(struct session *e))
{
    struct fstate *f = e->f;
    if (f->md == NULL || !f->job->on_server || f->mv != NULL || e->im == NULL ||
        !(e->ro->caps(e->im) & IMAP_CAP_UIDPLUS)) {
        /* Without UIDPLUS no COPYUID tells the new UIDs: copied and
         * deleted as before. */
        cont(e);
        return;
    }
    struct engine *r = e->run;
    bool alone = true;
    for (size_t i = 0; i < r->nsessions && alone; i++) {
        alone = r->sessions[i] == NULL || r->sessions[i] == e || r->sessions[i]->f == NULL;
    }
    if (alone && !e->opts.dry_run) {
        /* No other job is in the middle of its folder: every move claimed
         * so far is recorded in the index (or was given up), which tells
         * every later job what it needs. A session that stays open (the
         * daemon's) would otherwise keep a message claimed for good, and
         * never move it again. A dry run records nothing: its claims are
         * what keeps a move from being listed by both folders. */
        moves_claims_free(r);
    }
    struct moves *mv = xcalloc(1, sizeof(*mv));
    f->mv = mv;
    mv->cont = cont;
    struct match_job *mj = xcalloc(1, sizeof(*mj));
    mj->req.data = mj;
    mj->e = e;
    f->reading = true;
    if (uv_queue_work(e->loop, &mj->req, match_work, match_done) != 0) {
        match_work(&mj->req);
        match_done(&mj->req, 0);
    }
}

/* moves_start, once the scan and the base are matched. */
static void moves_matched(struct session *e, bool *has_file, bool *known)
{
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    size_t n = find_incoming(e, mv, known) + find_outgoing(e, mv, has_file);
    free(has_file);
    free(known);
    if (n == 0) {
        done_all(e);
        return;
    }
    struct look_job *lj = xcalloc(1, sizeof(*lj));
    lj->req.data = lj;
    lj->e = e;
    lj->root = xstrdup(e->acct->maildir);
    lj->layout = e->acct->layout;
    lj->self = xstrdup(f->job->name);
    lj->items = mv->items;
    lj->n = mv->n;
    f->reading = true;
    if (uv_queue_work(e->loop, &lj->req, look_work, look_done) != 0) {
        look_work(&lj->req);
        look_done(&lj->req, 0);
    }
}

size_t moves_moved_uids(const struct session *e, const uint32_t **uids_r)
{
    const struct moves *mv = e->f != NULL ? e->f->mv : NULL;
    *uids_r = mv != NULL ? mv->keep_uids : NULL;
    return mv != NULL ? mv->nkeep : 0;
}

void moves_filter_plan(struct session *e)
{
    struct fstate *f = e->f;
    struct moves *mv = f->mv;
    struct plan *p = f->plan;
    if (mv == NULL || p == NULL) {
        return;
    }
    for (size_t i = p->nuploads; i-- > 0;) {
        for (size_t k = 0; k < mv->nskip; k++) {
            if (strcmp(p->uploads[i].lid, mv->skip_lids[k]) == 0) {
                plan_drop_upload(p, i);
                break;
            }
        }
    }
}

/* ---- messages moved on the server by another client ----------------------------------- */

static struct orphan *find_orphan(struct engine *r, const char *folder, uint32_t uid)
{
    for (size_t i = 0; i < r->norphans; i++) {
        if (r->orphans[i].rec.uid == uid && strcmp(r->orphans[i].folder, folder) == 0) {
            return &r->orphans[i];
        }
    }
    return NULL;
}

bool moves_pairing_pending(const struct session *e)
{
    const struct engine *r = e->run;
    if (r->closing) {
        return false;
    }
    if (r->next_job < r->njobs || r->ndemand > 0) {
        return true;
    }
    for (size_t i = 0; i < r->nsessions; i++) {
        if (r->sessions[i] != NULL && r->sessions[i] != e && r->sessions[i]->f != NULL) {
            return true;
        }
    }
    /* A run that stays open syncs the folders the server (NOTIFY, IDLE,
     * STATUS) or the watcher marked dirty next: a move by another client
     * announces its destination's new mail with the source's expunge. A
     * mark for a folder the run does not sync brings no job. */
    size_t n = 0;
    const char *const *dirty =
        e->opts.stay_open && e->account != NULL ? account_dirty(e->account, &n) : NULL;
    for (size_t i = 0; i < n; i++) {
        if (find_job((struct engine *)r, dirty[i]) != NULL) {
            return true;
        }
    }
    return false;
}

void moves_park_orphans(struct session *e)
{
    struct fstate *f = e->f;
    const struct plan *p = f->plan;
    struct engine *r = e->run;
    if (p == NULL || p->norphans == 0) {
        return;
    }
    f->parked = true;
    struct idx_msg *rows = xcalloc(p->norphans, sizeof(*rows));
    size_t n = 0;
    for (size_t i = 0; i < p->norphans; i++) {
        const struct plan_orphan *po = &p->orphans[i];
        size_t b = f->base.n;
        for (size_t k = 0; k < f->base.n && b == f->base.n; k++) {
            if (f->base.v[k].uid == po->uid) {
                b = k;
            }
        }
        if (b == f->base.n) {
            continue;
        }
        if (!po->parked) {
            idx_rows_get(&f->base, b, &rows[n]);
            rows[n].state = IDX_MSG_ORPHAN;
            n++;
        }
        struct orphan *o = find_orphan(r, f->job->name, po->uid);
        if (o == NULL) {
            xgrow(&r->orphans, &r->orphans_cap, r->norphans + 1, sizeof(*r->orphans));
            o = &r->orphans[r->norphans++];
            memset(o, 0, sizeof(*o));
            o->folder = xstrdup(f->job->name);
        }
        idx_rows_get(&f->base, b, &o->rec);
        o->rec.state = IDX_MSG_ORPHAN;
        o->changed = po->changed;
        o->gone = false;
    }
    if (n > 0 && !e->opts.dry_run) {
        struct idx_ops o = {.folder = f->job->name, .puts = rows, .nputs = n};
        if (idx_apply(e, &o) == 0) {
            log_info("%s: %s: %zu message%s gone from the server kept locally for now: moved to "
                     "another folder, or else deleted at the end of the run",
                     e->acct->name, f->job->name, n, n == 1 ? "" : "s");
        }
    }
    free(rows);
}

static int u32_bsearch_cmp(const void *a, const void *b)
{
    return u32_cmp(a, b);
}

bool moves_want_msgids(const struct session *e)
{
    const struct fstate *f = e->f;
    if (e->run->norphans > 0 || f->lbase.n > 0) {
        /* (lbase: the base of a full listing, read apart: see ldiff_start
         * in sync/folder.c.) */
        return true;
    }
    /* A message of the base gone from the server may be back under a new
     * UID (moved out and back by another client, or parked by a run that
     * was killed): with QRESYNC the SELECT said what vanished; without, the
     * expunges are known with the listing, so any known message counts. */
    for (size_t i = 0; i < f->base.n; i++) {
        if (f->base.v[i].uid != 0 &&
            (f->base.v[i].state == IDX_MSG_ORPHAN || !f->delta || !f->qresync)) {
            return true;
        }
    }
    return f->nvanished > 0;
}

/* Whether a record (its EMAILID hash eid, size and Message-ID hash mh)
 * and new server message s (whose Message-ID hashes to h) are the same
 * message: by EMAILID when both are known (RFC 8474: it names the
 * message's content, and stays across a MOVE), else by Message-ID and
 * RFC822.SIZE, never on a zero hash. */
static bool same_message(const uint8_t eid[8], uint64_t size, const uint8_t mh[16],
                         const struct smsg *s, const uint8_t h[16])
{
    static const uint8_t zero[16];
    if (memcmp(eid, zero, 8) != 0 && memcmp(s->eid, zero, sizeof(s->eid)) != 0) {
        return memcmp(eid, s->eid, sizeof(s->eid)) == 0;
    }
    return s->size != 0 && size == s->size && memcmp(h, zero, 16) != 0 && memcmp(mh, h, 16) == 0;
}

/* The records of the folder whose UID the server lost while the file stays
 * (indexes into f->base, the first nbase of them): they may be back under
 * a new UID. Computed once per folder sync, when a new message with a
 * Message-ID is listed. */
static size_t *lost_rows(struct fstate *f, size_t nbase, size_t *n_r)
{
    /* The listing is sorted by UID (dedupe_server, before the pairing):
     * find_smsg looks a record up in it. */
    uint32_t *van = xcalloc(f->nvanished + 1, sizeof(*van));
    if (f->nvanished > 0) {
        memcpy(van, f->vanished, f->nvanished * sizeof(*van));
    }
    qsort(van, f->nvanished, sizeof(*van), u32_cmp);
    static const uint8_t zero[16];
    size_t *v = NULL, n = 0, cap = 0;
    for (size_t k = 0; k < nbase; k++) {
        const struct idx_row *b = &f->base.v[k];
        if (b->uid == 0 || (b->state != IDX_MSG_SYNCED && b->state != IDX_MSG_ORPHAN) ||
            (memcmp(b->msgid_hash, zero, sizeof(zero)) == 0 &&
             memcmp(b->emailid_hash, zero, sizeof(b->emailid_hash)) == 0) ||
            f->scan == NULL || md_scan_find(f->scan, idx_rows_lid(&f->base, k)) == NULL) {
            continue;
        }
        /* Listed: on the server (a delta's VANISHED may name it too: a
         * CONDSTORE search of the recorded range misses records written
         * past the recorded UIDNEXT by a killed run). */
        if (find_smsg(f, b->uid) != NULL) {
            continue;
        }
        /* Missing from a full listing, or in VANISHED. An orphan's UID is
         * gone for good (UIDs are not reused) even when QRESYNC's
         * VANISHED no longer names it: it vanished before the recorded
         * HIGHESTMODSEQ (a run killed after the folder's state went in,
         * or an earlier job of a run that stays open). */
        if (!f->delta || b->state == IDX_MSG_ORPHAN ||
            bsearch(&b->uid, van, f->nvanished, sizeof(*van), u32_bsearch_cmp) != NULL) {
            xgrow(&v, &cap, n + 1, sizeof(*v));
            v[n++] = k;
        }
    }
    free(van);
    *n_r = n;
    return v;
}

void moves_pair_server(struct session *e)
{
    struct fstate *f = e->f;
    struct engine *r = e->run;
    if (f->md == NULL || !moves_want_msgids(e)) {
        return;
    }
    uint32_t *known = xcalloc(f->base.n + 1, sizeof(*known));
    for (size_t i = 0; i < f->base.n; i++) {
        known[i] = f->base.v[i].uid;
    }
    qsort(known, f->base.n, sizeof(*known), u32_cmp);
    size_t nbase0 = f->base.n;
    char *dst = NULL;
    md_folder_local_path(e->acct->maildir, e->acct->layout, f->job->name, &dst);
    struct plan_local_msg *extra = NULL;
    size_t nextra = 0, extra_cap = 0;
    size_t *lost = NULL, nlost = 0;
    /* A dry run gives keywords no letters (assign_letters): a name
     * without one gets one in the real run while the folder has a free
     * letter, and the dry run pairs as that run does. */
    int dry_free = 0;
    if (e->opts.dry_run) {
        const char *table[26];
        dry_free = md_keyword_table(f->md, table);
    }
    for (size_t i = 0; i < f->nsmsgs && dst != NULL; i++) {
        struct smsg *s = &f->smsgs[i];
        if (bsearch(&s->uid, known, nbase0, sizeof(*known), u32_bsearch_cmp) != NULL) {
            continue;
        }
        uint8_t h[16];
        msgfacts_msgid_hash(s->msgid, h);
        static const uint8_t zero[16];
        if (memcmp(s->eid, zero, sizeof(s->eid)) == 0 &&
            (s->size == 0 || memcmp(h, zero, sizeof(h)) == 0)) {
            continue; /* nothing to know it by */
        }
        /* Back in this folder: the record is keyed anew with the base it
         * had, so the planner merges both sides' flag changes three-way;
         * nothing moves, nothing is downloaded, nothing deleted. */
        if (lost == NULL) {
            lost = lost_rows(f, nbase0, &nlost);
            lost = lost != NULL ? lost : xcalloc(1, sizeof(*lost));
        }
        size_t own = f->base.n;
        for (size_t k = 0; k < nlost && own == f->base.n; k++) {
            const struct idx_row *b = &f->base.v[lost[k]];
            if (same_message(b->emailid_hash, b->size, b->msgid_hash, s, h)) {
                own = lost[k];
                lost[k] = lost[--nlost]; /* one new UID each */
            }
        }
        if (own != f->base.n) {
            struct orphan *mine = find_orphan(r, f->job->name, f->base.v[own].uid);
            if (mine != NULL) {
                mine->gone = true; /* registered by an earlier job: not to expire */
            }
            struct idx_msg rec;
            idx_rows_get(&f->base, own, &rec);
            rec.uid = s->uid;
            rec.state = IDX_MSG_SYNCED;
            struct idx_ops io = {.folder = f->job->name, .puts = &rec, .nputs = 1};
            if (e->opts.dry_run) {
                fprintf(e->plan_out,
                        "%s: keep local %s (back on the server under uid %u: not downloaded)\n",
                        f->job->name, rec.lid, (unsigned)rec.uid);
            } else if (idx_apply(e, &io) < 0) {
                break;
            } else {
                log_info("%s: %s: %s back on the server under UID %u: file kept, not downloaded",
                         e->acct->name, f->job->name, rec.lid, (unsigned)rec.uid);
            }
            idx_rows_set(&f->base, own, &rec);
            continue;
        }
        struct orphan *o = NULL;
        for (size_t k = 0; k < r->norphans && o == NULL; k++) {
            struct orphan *c = &r->orphans[k];
            if (!c->gone && strcmp(c->folder, f->job->name) != 0 &&
                same_message(c->rec.emailid_hash, c->rec.size, c->rec.msgid_hash, s, h)) {
                o = c;
            }
        }
        if (o == NULL) {
            continue;
        }
        /* The server's keywords need letters here, or the file would lose
         * them; without one the message is downloaded as before. */
        md_keywords kw = 0;
        bool letters = true;
        for (size_t k = 0; k < s->nkw && letters; k++) {
            int ix = md_keyword_index(f->md, s->kw[k], false);
            if (ix == -ENOENT && dry_free > 0) {
                continue; /* nothing is written: its bit is not needed */
            }
            letters = ix >= 0 && ix < 26;
            if (letters) {
                kw |= (md_keywords)1u << ix;
            }
        }
        char *src = NULL;
        if (!letters ||
            md_folder_local_path(e->acct->maildir, e->acct->layout, o->folder, &src) < 0) {
            free(src);
            continue;
        }
        /* The record B gets: the server's flags and keywords as the base,
         * so that a change made to the file meanwhile goes up. */
        struct idx_msg rec = o->rec;
        rec.uid = s->uid;
        rec.state = IDX_MSG_APPENDING; /* a download intent: adopted if the file gets here */
        rec.flags = (uint8_t)(s->flags & MD_FLAGS_ALL);
        struct plan_kw pk;
        plan_kw_from((const char *const *)s->kw, s->nkw, &pk);
        plan_kw_format(&pk, rec.keywords, sizeof(rec.keywords));
        plan_kw_free(&pk);
        struct idx_ops io = {.folder = f->job->name, .puts = &rec, .nputs = 1};
        if (!e->opts.dry_run && idx_apply(e, &io) < 0) {
            free(src);
            break;
        }
        /* Three-way per flag: what the file changed since the base wins,
         * else the server's. The file's flags are read as it is moved. */
        unsigned lflags = 0, base = o->rec.flags & MD_FLAGS_ALL;
        unsigned merged = s->flags & MD_FLAGS_ALL;
        if (o->changed) {
            unsigned cur = 0;
            (void)md_find_ids(src, (const char *const[]){o->rec.lid}, 1, (bool[]){false}, &cur);
            merged = (cur & (cur ^ base)) | (merged & ~(cur ^ base));
        }
        int mr = 0;
        if (e->opts.dry_run) {
            /* What the real run does, said and counted, nothing done. */
            fprintf(e->plan_out,
                    "%s: move local %s here from %s (moved on the server by another client: "
                    "not downloaded)\n",
                    f->job->name, o->rec.lid, o->folder);
        } else {
            mr = md_move_between(src, dst, o->rec.lid, merged, kw, false, &lflags);
        }
        free(src);
        if (mr < 0) {
            /* Not moved: the intent is forgotten by the next run (no file
             * here) and the message downloaded. */
            log_debug("%s: %s: pairing %s failed: %s", e->acct->name, f->job->name, o->rec.lid,
                      strerror(-mr));
            if (mr == -ENOENT) {
                o->gone = true;
            }
            continue;
        }
        rec.state = IDX_MSG_SYNCED;
        uint32_t drop = o->rec.uid;
        struct idx_ops ops[2] = {
            {.folder = o->folder, .drops = &drop, .ndrops = 1},
            {.folder = f->job->name, .puts = &rec, .nputs = 1},
        };
        o->gone = true;
        if (!e->opts.dry_run) {
            if (idx_apply_many(e, ops, 2) < 0) {
                break;
            }
            log_info("%s: %s moved from %s to %s on the server: file moved, not downloaded",
                     e->acct->name, o->rec.lid, o->folder, f->job->name);
        }
        fcounts(e)->moved++;
        idx_rows_add(&f->base, &rec);
        xgrow(&extra, &extra_cap, nextra + 1, sizeof(*extra));
        extra[nextra++] = (struct plan_local_msg){
            .lid = NULL, .flags = merged, .kw = (const char *const *)s->kw, .nkw = s->nkw};
    }
    free(dst);
    free(known);
    free(lost);
    if (nextra > 0) {
        /* The moved files, in the planner's local view (the scan predates
         * them): with the base above, the plan sends up what the file
         * changed and changes nothing locally. */
        struct plan_local_msg *v = xcalloc(f->nlview + nextra + 1, sizeof(*v));
        memcpy(v, f->lview, f->nlview * sizeof(*v));
        for (size_t k = 0; k < nextra; k++) {
            extra[k].lid = idx_rows_lid(&f->base, nbase0 + k);
            v[f->nlview + k] = extra[k];
        }
        if (f->lview != f->lmsgs) {
            free(f->lview);
        }
        f->lview = v;
        f->nlview += nextra;
    }
    free(extra);
}

static int drop_orphan_fn(struct idx_txn *txn, void *arg)
{
    const struct orphan *o = arg;
    int r = idx_msg_delete_uid(txn, o->folder, o->rec.uid);
    return r == -ENOENT ? 0 : r;
}

void moves_orphans_expire(struct session *e)
{
    struct engine *r = e->run;
    for (size_t i = 0; i < r->norphans; i++) {
        struct orphan *o = &r->orphans[i];
        if (!o->gone && e->opts.dry_run) {
            /* Said and counted as the real run does it below. */
            struct fjob *j = find_job(r, o->folder);
            if (o->changed) {
                fprintf(e->plan_out,
                        "%s: keep local %s (uid %u gone from the server, in no other folder, "
                        "changed here): uploaded again by the next run\n",
                        o->folder, o->rec.lid, (unsigned)o->rec.uid);
            } else {
                fprintf(e->plan_out,
                        "%s: delete local %s (uid %u gone from the server, in no other folder)\n",
                        o->folder, o->rec.lid, (unsigned)o->rec.uid);
            }
            if (!o->changed && j != NULL) {
                j->res->counts.deleted_down++;
            }
        } else if (!o->gone) {
            char *path = NULL;
            struct fjob *j = find_job(r, o->folder);
            int rr = md_folder_local_path(e->acct->maildir, e->acct->layout, o->folder, &path);
            /* Edited here meanwhile: the record goes and the file stays,
             * to be uploaded again as a new message (an edit racing an
             * expunge loses nothing). Else the file goes, then the record. */
            if (rr == 0 && !o->changed) {
                rr = md_remove_id(path, o->rec.lid, o->rec.flags & MD_FLAGS_ALL);
            }
            if (rr == 0 || rr == -ESTALE) {
                if (idx_write(e->idx, drop_orphan_fn, o) == 0 && rr == 0 && !o->changed &&
                    j != NULL) {
                    /* The job's result, and the account's counts (its job
                     * ended before this). */
                    j->res->counts.deleted_down++;
                    account_totals(e->account)->deleted_down++;
                }
            }
            log_info("%s: %s: %s gone from the server and found in no other folder: %s",
                     e->acct->name, o->folder, o->rec.lid,
                     rr == 0 && !o->changed ? "deleted" : "kept, to be uploaded again");
            free(path);
        }
        free(o->folder);
    }
    r->norphans = 0;
}

void moves_orphans_free(struct engine *r)
{
    for (size_t i = 0; i < r->norphans; i++) {
        free(r->orphans[i].folder);
    }
    free(r->orphans);
    r->orphans = NULL;
    r->norphans = r->orphans_cap = 0;
}
