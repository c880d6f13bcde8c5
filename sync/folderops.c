/* Whole folders, between folder jobs: a folder renamed on one side is
 * renamed on the other before any job starts (see "renames" below); a
 * folder deleted on one side
 * (delete_folders) is deleted on the other only when the index shows
 * every message in it was synced (server_folder_delete checks with EXAMINE
 * and UID SEARCH, then DELETE; local_folder_delete removes the Maildir
 * copy); a folder created locally is created on the server (the CREATE's
 * answer, on_create_done, starts its sync); and a folder that is no longer
 * synced is forgotten in the index.
 *
 * What to do with each folder is decided by sync/folderplan.c (pure); this
 * file carries those decisions out. It is separate from the folder
 * executor (sync/folder.c) because none of it syncs messages, and from the
 * run (sync/engine.c), which only says whose turn it is. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/engine_int.h"
#include "sync/folderplan.h"
#include "sync/imap.h"
#include "sync/skiplist.h"

/* Forgets a folder in the index: its state, its message rows and the meta
 * values kept beside them (skip list, unsettled masks). Returns what
 * idx_folder_delete returns (-ENOENT for a folder it does not know). */
int forget_folder_records(struct idx_txn *txn, const char *folder)
{
    int r = idx_folder_delete(txn, folder);
    if (r < 0 && r != -ENOENT) {
        return r;
    }
    char key[512];
    skiplist_key(folder, key, sizeof(key));
    int m = idx_meta_delete(txn, key);
    if (m == 0) {
        unsettled_key(folder, key, sizeof(key));
        m = idx_meta_delete(txn, key);
    }
    if (m == 0) {
        skiplist_local_key(folder, key, sizeof(key));
        m = idx_meta_delete(txn, key);
    }
    return m < 0 ? m : r;
}

/* ---- folders deleted on one side (delete_folders) ------------------------------------------- */

struct uid_list {
    uint32_t *v;
    size_t n, cap;
};

static int collect_synced(const struct idx_msg *m, void *arg)
{
    struct uid_list *l = arg;
    if (m->state == IDX_MSG_SYNCED && m->uid != 0) {
        xgrow(&l->v, &l->cap, l->n + 1, sizeof(*l->v));
        l->v[l->n++] = m->uid;
    }
    return 0;
}

struct lid_list {
    char **v;
    size_t n, cap;
};

static int collect_synced_lids(const struct idx_msg *m, void *arg)
{
    struct lid_list *l = arg;
    if (m->state == IDX_MSG_SYNCED) {
        xgrow(&l->v, &l->cap, l->n + 1, sizeof(*l->v));
        l->v[l->n++] = xstrdup(m->lid);
    }
    return 0;
}

int forget_folder(struct session *e, const char *name)
{
    struct idx_txn *txn;
    int r = idx_begin(e->idx, true, &txn);
    if (r == 0) {
        r = forget_folder_records(txn, name);
        if (r < 0 && r != -ENOENT) {
            idx_abort(txn);
        } else {
            r = idx_commit(txn);
        }
    }
    return r;
}

/* The server deleted a folder that is still here: remove the local copy,
 * but only when every message in it is known to the index as synced (what
 * the server had, the user saw deleted with the folder). A message the
 * server never had keeps the folder, with a message saying why. */
void local_folder_delete(struct session *e, struct fjob *j)
{
    char *path = NULL, *err = NULL;
    struct md_folder *md = NULL;
    struct md_scan *scan = NULL;
    struct lid_list known = {0};
    struct idx_txn *txn = NULL;
    int r = md_folder_local_path(e->acct->maildir, e->acct->layout, j->name, &path);
    if (r == 0) {
        r = md_folder_open(path, false, false, &md, &err);
    }
    if (r == 0) {
        r = md_scan(md, &scan);
        if (r < 0) {
            err = xstrdup(md_folder_error(md));
        }
    }
    if (r == 0 && (r = idx_begin(e->idx, false, &txn)) == 0) {
        r = idx_msg_walk(txn, j->name, collect_synced_lids, &known);
        idx_abort(txn);
    }
    if (r < 0) {
        j->res->error = xasprintf("folder '%s' was deleted on the server; cannot read the local "
                                  "copy: %s",
                                  j->name, err != NULL ? err : strerror(-r));
        goto out;
    }
    qsort(known.v, known.n, sizeof(*known.v), strp_cmp);
    size_t unknown = 0;
    for (size_t i = 0; i < scan->count; i++) {
        const char *id = scan->msgs[i].id;
        if (known.n == 0 || bsearch(&id, known.v, known.n, sizeof(*known.v), strp_cmp) == NULL) {
            unknown++;
        }
    }
    if (unknown > 0) {
        j->res->error = xasprintf("folder '%s' was deleted on the server; the local copy holds %zu "
                                  "message(s) that were never synced, so it is kept (move them to "
                                  "another folder to upload them)",
                                  j->name, unknown);
        goto out;
    }
    if (e->opts.dry_run) {
        fprintf(e->plan_out,
                "%s: delete the local folder and its %zu message(s) (deleted on the "
                "server)\n",
                j->name, scan->count);
        j->res->counts.deleted_down += (unsigned)scan->count;
        goto out;
    }
    for (size_t i = 0; i < scan->count; i++) {
        r = md_remove(md, &scan->msgs[i]);
        if (r < 0) {
            /* -ESTALE: the user changed it meanwhile; decide again next run. */
            j->res->error = xasprintf("folder '%s' was deleted on the server; removing the local "
                                      "copy stopped: %s",
                                      j->name, md_folder_error(md));
            md_folder_sync(md);
            goto out;
        }
        j->res->counts.deleted_down++;
    }
    r = md_folder_sync(md);
    md_folder_close(md);
    md = NULL;
    if (r == 0) {
        r = md_folder_remove(path);
    }
    if (r < 0) {
        /* New mail arrived meanwhile, or the directory cannot go: the
         * records stay and the next run decides again. */
        j->res->error = xasprintf("folder '%s' was deleted on the server; the local copy could not "
                                  "be removed: %s",
                                  j->name, strerror(-r));
        goto out;
    }
    if (forget_folder(e, j->name) < 0) {
        j->res->error = xasprintf("folder '%s': index: %s", j->name, idx_error(e->idx));
        goto out;
    }
    j->notice = xasprintf("folder %s was deleted on the server: deleted here too (%u messages)",
                          j->name, j->res->counts.deleted_down);
    j->res->notice = j->notice;
out:
    for (size_t i = 0; i < known.n; i++) {
        free(known.v[i]);
    }
    free(known.v);
    if (scan != NULL) {
        md_scan_free(scan);
    }
    if (md != NULL) {
        md_folder_close(md);
    }
    free(err);
    free(path);
}

/* The local copy of a synced folder is gone: delete the folder on the
 * server, but only when it holds nothing the index does not know (same
 * UIDVALIDITY, every UID recorded as synced). EXAMINE + UID SEARCH ALL
 * check that; the folder is then left for INBOX (a server may drop the
 * connection when the selected folder is deleted) and deleted. */
struct sfdel {
    struct session *e;
    struct fjob *j;
    struct idx_folder st;
    struct uid_list known;
    size_t nsrv;
};

static void sfdel_end(struct sfdel *d)
{
    struct session *e = d->e;
    e->deleting = NULL;
    free(d->known.v);
    free(d);
    next_folder(e);
}

static void on_sfdel_delete(struct imap *im, const struct imap_result *res, void *arg)
{
    struct sfdel *d = arg;
    struct session *e = d->e;
    struct fjob *j = d->j;
    if (e->finished || (res->err < 0 && !refused_locally(e, res))) {
        /* on_imap_error reports the folder (e->deleting). */
        free(d->known.v);
        free(d);
        return;
    }
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        j->res->error = xasprintf("folder '%s': DELETE on the server failed: %s", j->name,
                                  res->text != NULL ? res->text : "");
    } else if (forget_folder(e, j->name) < 0) {
        j->res->error = xasprintf("folder '%s': index: %s", j->name, idx_error(e->idx));
    } else {
        j->res->counts.deleted_up += (unsigned)d->nsrv;
        j->notice = xasprintf("folder %s was deleted locally: deleted on the server too (%zu "
                              "messages)",
                              j->name, d->nsrv);
        j->res->notice = j->notice;
    }
    sfdel_end(d);
}

static void on_sfdel_leave(struct imap *im, const struct imap_result *res, void *arg)
{
    /* EXAMINE INBOX only moves away from the folder; its result does not
     * matter (the DELETE after it reports). */
}

static void sfdel_refuse(struct sfdel *d, const char *why)
{
    d->j->res->error = xasprintf("folder '%s' was deleted locally; %s, so it is not deleted on the "
                                 "server (run 'mailsync sync --force %s' to download it again)",
                                 d->j->name, why, d->e->acct->name);
    sfdel_end(d);
}

static void sfdel_check_done(struct sfdel *d)
{
    struct session *e = d->e;
    if (e->opts.dry_run) {
        fprintf(e->plan_out,
                "%s: delete the folder and its %zu message(s) on the server (deleted "
                "locally)\n",
                d->j->name, d->nsrv);
        d->j->res->counts.deleted_up += (unsigned)d->nsrv;
        sfdel_end(d);
        return;
    }
    struct imap_select_opts so = {.readonly = true};
    if (e->ro->select(e->im, "INBOX", &so, on_sfdel_leave, d) < 0 ||
        e->ro->delete (e->im, d->j->name, on_sfdel_delete, d) < 0) {
        sfdel_refuse(d, "the DELETE command could not be queued");
    }
}

static void on_sfdel_search(struct imap *im, const struct imap_result *res, void *arg)
{
    struct sfdel *d = arg;
    if (d->e->finished || (res->err < 0 && !refused_locally(d->e, res))) {
        free(d->known.v);
        free(d);
        return;
    }
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        sfdel_refuse(d, "its messages could not be listed");
        return;
    }
    size_t unknown = 0;
    for (size_t i = 0; i < res->nuids; i++) {
        if (d->known.n == 0 ||
            bsearch(&res->uids[i], d->known.v, d->known.n, sizeof(uint32_t), u32_cmp) == NULL) {
            unknown++;
        }
    }
    d->nsrv = res->nuids;
    if (unknown > 0) {
        char why[128];
        snprintf(why, sizeof(why), "the server copy holds %zu message(s) that were never synced",
                 unknown);
        sfdel_refuse(d, why);
        return;
    }
    sfdel_check_done(d);
}

static void on_sfdel_examine(struct imap *im, const struct imap_result *res, void *arg)
{
    struct sfdel *d = arg;
    if (d->e->finished || (res->err < 0 && !refused_locally(d->e, res))) {
        free(d->known.v);
        free(d);
        return;
    }
    if (res->err < 0 || res->status != IMAP_STATUS_OK || res->mailbox == NULL) {
        sfdel_refuse(d, "the server copy could not be examined");
        return;
    }
    if (res->mailbox->uidvalidity != d->st.uidvalidity) {
        sfdel_refuse(d, "the server renumbered the folder since the last sync (UIDVALIDITY "
                        "changed)");
        return;
    }
    if (res->mailbox->exists == 0) {
        d->nsrv = 0;
        sfdel_check_done(d);
        return;
    }
    if (d->e->ro->uid_search(d->e->im, "ALL", on_sfdel_search, d) < 0) {
        sfdel_refuse(d, "the search could not be queued");
    }
}

/* Starts the checks; returns 0 when the callbacks go on with next_folder,
 * or -1 when the folder is done (its error set). */
int server_folder_delete(struct session *e, struct fjob *j)
{
    struct sfdel *d = xcalloc(1, sizeof(*d));
    d->e = e;
    d->j = j;
    struct idx_txn *txn;
    int r = idx_begin(e->idx, false, &txn);
    if (r == 0) {
        r = idx_folder_get(txn, j->name, &d->st);
        if (r == 0) {
            r = idx_msg_walk(txn, j->name, collect_synced, &d->known);
        }
        idx_abort(txn);
    }
    if (r < 0) {
        j->res->error = xasprintf("folder '%s': index: %s", j->name, idx_error(e->idx));
        free(d->known.v);
        free(d);
        return -1;
    }
    if (d->known.n > 1) {
        qsort(d->known.v, d->known.n, sizeof(uint32_t), u32_cmp);
    }
    struct imap_select_opts so = {.readonly = true};
    if (e->ro->select(e->im, j->name, &so, on_sfdel_examine, d) < 0) {
        j->res->error = xasprintf("folder '%s': cannot queue EXAMINE", j->name);
        free(d->known.v);
        free(d);
        return -1;
    }
    e->deleting = j;
    return 0;
}

void on_create_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    struct fjob *j = e->creating;
    if (e->finished || j == NULL || (res->err < 0 && !refused_locally(e, res))) {
        /* After a drop e->creating stays, so that on_imap_error reports
         * the folder. */
        return;
    }
    e->creating = NULL;
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        j->res->error = xasprintf("folder '%s': CREATE on the server failed: %s", j->name,
                                  res->text != NULL ? res->text : "");
        next_folder(e);
        return;
    }
    j->res->started_ns = uv_hrtime(); /* as job_start does for the others */
    j->quiet_since_ns = 0;            /* a folder new on the server: its sync scans */
    local_changes_free(j->lchanges, j->nlchanges);
    j->lchanges = NULL;
    j->nlchanges = 0;
    start_folder(e, j);
}

/* ---- renames (issue 12) --------------------------------------------------------------------- */

/* A rename is found by sync/folderplan.c from facts this file gathers
 * (the messages of a local folder, the records of an indexed one, what the
 * index knows of a folder), checked on the server where the planner asks
 * for it (renames_verify: EXAMINE of the new name, then the sizes of a few
 * UIDs the index records for the old one), and carried out before any
 * folder job starts (renames_apply), on the lister's connection, one at a
 * time:
 *
 *   1. the intents of every rename are recorded in the index (meta key
 *      "renames", one "S\told\tnew\n" per server RENAME, "L\t..." per
 *      local rename), durably;
 *   2. the rename is made: RENAME on the server (then any child the local
 *      side did not rename along is renamed back), or rename(2) here;
 *   3. the index's records move to the new name (idx_folder_rename, and
 *      the meta values kept per folder name) in one transaction;
 *   4. when all are done, the intents go.
 *
 * A kill between 2 and 3 leaves the folder renamed on one side and the
 * index under the old name, which without the intent would read as a
 * folder deleted on the server plus a new one; renames_recover, run
 * before the next plan, sees which intents were carried out (the server
 * lists the new name and not the old one; the new directory exists here
 * and the old one does not) and moves their records. An intent that was
 * not carried out is dropped: the next plan finds the rename again from
 * the folders themselves. */

#define RENAMES_KEY "renames"

struct rn_ids {
    char *name;
    bool local; /* a local folder's messages; else the index's records */
    bool ok;
    char **v;
    size_t n;
};

struct rn_verdict {
    char *from, *to;
    int v;
};

struct rn_sample {
    uint32_t uid;
    uint64_t size;
    bool seen;
};

struct renames {
    struct engine *run;
    struct idx_txn *txn; /* while folderplan_build runs */
    struct rn_ids *ids;
    size_t nids, ids_cap;
    struct strindex ids_ix;
    struct rn_verdict *verdicts;
    size_t nverdicts, verdicts_cap;
    /* renames_verify and renames_apply: the session, the next job or
     * plan folder to look at, and the one in hand. */
    struct session *e;
    size_t at;
    const struct folderplan_folder *pf;
    struct fjob *job;
    uint32_t uidvalidity;
    struct rn_sample *samples;
    size_t nsamples;
    /* Children of a folder renamed on the server that the local side did
     * not rename: renamed back, one by one. */
    char **back;
    size_t nback, back_cap, back_at;
};

static uint64_t rn_hash(const char *name, bool local)
{
    return str_hash(name, strlen(name)) ^ (local ? 0x5bd1e995u : 0);
}

static struct rn_ids *rn_find(struct renames *rn, const char *name, bool local)
{
    size_t it = 0, i;
    while (strindex_next(&rn->ids_ix, rn_hash(name, local), &it, &i)) {
        if (rn->ids[i].local == local && strcmp(rn->ids[i].name, name) == 0) {
            return &rn->ids[i];
        }
    }
    return NULL;
}

static struct rn_ids *rn_add(struct renames *rn, const char *name, bool local)
{
    xgrow(&rn->ids, &rn->ids_cap, rn->nids + 1, sizeof(*rn->ids));
    struct rn_ids *x = &rn->ids[rn->nids];
    memset(x, 0, sizeof(*x));
    x->name = xstrdup(name);
    x->local = local;
    strindex_add(&rn->ids_ix, rn_hash(name, local), rn->nids++);
    return x;
}

static void ids_sort(struct rn_ids *x)
{
    if (x->n > 1) {
        qsort(x->v, x->n, sizeof(*x->v), strp_cmp);
    }
    size_t out = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (out > 0 && strcmp(x->v[out - 1], x->v[i]) == 0) {
            free(x->v[i]);
            continue;
        }
        x->v[out++] = x->v[i];
    }
    x->n = out;
}

static void ids_push(struct rn_ids *x, size_t *cap, const char *id)
{
    xgrow(&x->v, cap, x->n + 1, sizeof(*x->v));
    x->v[x->n++] = xstrdup(id);
}

/* The unique names of a local folder's messages: one directory listing
 * (on the loop thread; only candidates of a rename, and every local folder
 * when one vanished without a rename, are read). */
static bool rn_local_ids(const char *name, struct folderplan_ids *ids_r, void *arg)
{
    struct renames *rn = arg;
    struct rn_ids *x = rn_find(rn, name, true);
    if (x == NULL) {
        x = rn_add(rn, name, true);
        const struct sync_account *acct = rn->run->acct;
        char *path = NULL, *err = NULL;
        struct md_folder *md = NULL;
        struct md_scan *scan = NULL;
        if (md_folder_local_path(acct->maildir, acct->layout, name, &path) == 0 &&
            md_folder_open(path, false, false, &md, &err) == 0 && md_scan(md, &scan) == 0) {
            size_t cap = 0;
            for (size_t i = 0; i < scan->count; i++) {
                ids_push(x, &cap, scan->msgs[i].id);
            }
            ids_sort(x);
            x->ok = true;
        }
        if (scan != NULL) {
            md_scan_free(scan);
        }
        if (md != NULL) {
            md_folder_close(md);
        }
        free(err);
        free(path);
    }
    ids_r->v = (const char *const *)x->v;
    ids_r->n = x->n;
    return x->ok;
}

struct rn_walk {
    struct rn_ids *x;
    size_t cap;
};

static int rn_collect_lid(const struct idx_msg *m, void *arg)
{
    struct rn_walk *w = arg;
    if (m->lid[0] != '\0') {
        ids_push(w->x, &w->cap, m->lid);
    }
    return 0;
}

static bool rn_index_ids(const char *name, struct folderplan_ids *ids_r, void *arg)
{
    struct renames *rn = arg;
    struct rn_ids *x = rn_find(rn, name, false);
    if (x == NULL) {
        x = rn_add(rn, name, false);
        struct rn_walk w = {.x = x};
        x->ok = rn->txn != NULL && idx_msg_walk(rn->txn, name, rn_collect_lid, &w) == 0;
        ids_sort(x);
    }
    ids_r->v = (const char *const *)x->v;
    ids_r->n = x->n;
    return x->ok;
}

static bool rn_index_state(const char *name, struct folderplan_istate *st_r, void *arg)
{
    struct renames *rn = arg;
    struct idx_folder st;
    if (rn->txn == NULL || idx_folder_get(rn->txn, name, &st) < 0) {
        return false;
    }
    memset(st_r, 0, sizeof(*st_r));
    st_r->uidvalidity = st.uidvalidity;
    st_r->uidnext = st.uidnext;
    st_r->messages = st.messages;
    return true;
}

static int rn_verdict(const char *from, const char *to, void *arg)
{
    const struct renames *rn = arg;
    for (size_t i = 0; i < rn->nverdicts; i++) {
        if (strcmp(rn->verdicts[i].from, from) == 0 && strcmp(rn->verdicts[i].to, to) == 0) {
            return rn->verdicts[i].v;
        }
    }
    return FOLDERPLAN_UNCHECKED;
}

static struct renames *rn_get(struct engine *r)
{
    if (r->renames == NULL) {
        r->renames = xcalloc(1, sizeof(*r->renames));
        r->renames->run = r;
    }
    return r->renames;
}

void renames_facts(struct engine *r, struct idx_txn *txn, struct folderplan_input *in)
{
    struct renames *rn = rn_get(r);
    rn->txn = txn;
    in->local_ids = rn_local_ids;
    in->index_ids = rn_index_ids;
    in->index_state = rn_index_state;
    in->verdict = rn_verdict;
    in->facts_arg = rn;
}

void renames_free(struct engine *r)
{
    struct renames *rn = r->renames;
    if (rn == NULL) {
        return;
    }
    for (size_t i = 0; i < rn->nids; i++) {
        for (size_t k = 0; k < rn->ids[i].n; k++) {
            free(rn->ids[i].v[k]);
        }
        free(rn->ids[i].v);
        free(rn->ids[i].name);
    }
    free(rn->ids);
    strindex_free(&rn->ids_ix);
    for (size_t i = 0; i < rn->nverdicts; i++) {
        free(rn->verdicts[i].from);
        free(rn->verdicts[i].to);
    }
    free(rn->verdicts);
    free(rn->samples);
    for (size_t i = 0; i < rn->nback; i++) {
        free(rn->back[i]);
    }
    free(rn->back);
    free(rn);
    r->renames = NULL;
}

/* ---- moving the records ---- */

static int move_meta(struct idx_txn *txn, const char *from_key, const char *to_key)
{
    size_t len = 0;
    int r = idx_meta_get(txn, from_key, NULL, 0, &len);
    if (r == -ENOENT) {
        return 0;
    }
    if (r < 0) {
        return r;
    }
    char *buf = xmalloc(len + 1);
    r = idx_meta_get(txn, from_key, buf, len, &len);
    if (r == 0) {
        r = idx_meta_put(txn, to_key, buf, len);
    }
    if (r == 0) {
        r = idx_meta_delete(txn, from_key);
    }
    free(buf);
    return r;
}

/* The index's records of a folder, and the meta values kept under its
 * name (skip lists, unsettled masks), under its new name. */
static int move_folder_records(struct idx_txn *txn, const char *from, const char *to)
{
    int r = idx_folder_rename(txn, from, to);
    void (*const keys[])(const char *, char *, size_t) = {skiplist_key, unsettled_key,
                                                          skiplist_local_key};
    for (size_t i = 0; r == 0 && i < sizeof(keys) / sizeof(keys[0]); i++) {
        char a[512], b[512];
        keys[i](from, a, sizeof(a));
        keys[i](to, b, sizeof(b));
        r = move_meta(txn, a, b);
    }
    return r;
}

struct rn_move {
    const char *from, *to;
    bool drop_intents; /* the last rename: the intents go in the same transaction */
};

static int rn_move_fn(struct idx_txn *txn, void *arg)
{
    const struct rn_move *m = arg;
    int r = m->from != NULL ? move_folder_records(txn, m->from, m->to) : 0;
    if (r == 0 && m->drop_intents) {
        r = idx_meta_delete(txn, RENAMES_KEY);
    }
    return r;
}

/* ---- recovery ---- */

static bool server_lists(const struct engine *r, const char *name)
{
    for (size_t i = 0; i < r->nlisted; i++) {
        if (strcmp(r->listed[i].name, name) == 0) {
            return true;
        }
    }
    return false;
}

static bool local_exists(const struct sync_account *acct, const char *name)
{
    char *path = NULL;
    bool there = false;
    if (md_folder_local_path(acct->maildir, acct->layout, name, &path) == 0) {
        char *cur = path_join(path, "cur");
        there = access(cur, F_OK) == 0;
        free(cur);
    }
    free(path);
    return there;
}

struct rn_recover {
    struct engine *run;
    char *text;
    unsigned moved;
};

static int rn_recover_fn(struct idx_txn *txn, void *arg)
{
    struct rn_recover *c = arg;
    c->moved = 0;
    char *save = NULL;
    char *copy = xstrdup(c->text);
    int r = 0;
    for (char *line = strtok_r(copy, "\n", &save); line != NULL && r == 0;
         line = strtok_r(NULL, "\n", &save)) {
        char *from = strchr(line, '\t');
        char *to = from != NULL ? strchr(from + 1, '\t') : NULL;
        if (to == NULL) {
            continue;
        }
        *from++ = '\0';
        *to++ = '\0';
        bool done = line[0] == 'S'
                        ? server_lists(c->run, to) && !server_lists(c->run, from)
                        : local_exists(c->run->acct, to) && !local_exists(c->run->acct, from);
        if (!done) {
            continue; /* not carried out: the plan finds it again */
        }
        int m = move_folder_records(txn, from, to);
        if (m == 0) {
            log_info("%s: folder %s was renamed to %s %s by an interrupted run; its records "
                     "follow it now",
                     c->run->acct->name, from, to, line[0] == 'S' ? "on the server" : "here");
            c->moved++;
        } else if (m != -ENOENT && m != -EEXIST) {
            r = m; /* -ENOENT/-EEXIST: moved already */
        }
    }
    free(copy);
    if (r == 0) {
        r = idx_meta_delete(txn, RENAMES_KEY);
    }
    return r;
}

void renames_recover(struct session *e)
{
    if (e->opts.dry_run) {
        return; /* the real run finishes them */
    }
    struct idx_txn *txn;
    if (idx_begin(e->idx, false, &txn) != 0) {
        return;
    }
    size_t len = 0;
    int r = idx_meta_get(txn, RENAMES_KEY, NULL, 0, &len);
    char *text = NULL;
    if (r == 0) {
        text = xmalloc(len + 1);
        r = idx_meta_get(txn, RENAMES_KEY, text, len, &len);
        text[r == 0 ? len : 0] = '\0';
    }
    idx_abort(txn);
    if (r != 0) {
        free(text);
        return;
    }
    struct rn_recover c = {.run = e->run, .text = text};
    if (idx_write(e->idx, rn_recover_fn, &c) < 0) {
        log_warnx("%s: index: %s (renames of an interrupted run are looked at again next time)",
                  e->acct->name, idx_error(e->idx));
    }
    free(text);
}

/* ---- checking a rename on the server ---- */

static void verify_next(struct renames *rn);

static void rn_set_verdict(struct renames *rn, int v)
{
    xgrow(&rn->verdicts, &rn->verdicts_cap, rn->nverdicts + 1, sizeof(*rn->verdicts));
    struct rn_verdict *x = &rn->verdicts[rn->nverdicts++];
    x->from = xstrdup(rn->pf->rename_from);
    x->to = xstrdup(rn->pf->name);
    x->v = v;
    if (v == FOLDERPLAN_NOT_RENAMED) {
        log_debug("%s: folder %s is not %s renamed: the server's %s holds other messages",
                  rn->run->acct->name, rn->pf->rename_from, rn->pf->name, rn->pf->name);
    }
}

/* Whether the run can go on from a callback of the server. */
static bool rn_alive(const struct renames *rn, const struct imap_result *res)
{
    return !rn->e->finished && (res->err >= 0 || refused_locally(rn->e, res));
}

static void rn_on_message(struct imap *im, const struct imap_msg *msg, void *sink, void *arg)
{
    struct renames *rn = arg;
    for (size_t i = 0; i < rn->nsamples; i++) {
        struct rn_sample *s = &rn->samples[i];
        if (s->uid == msg->uid && (msg->have & IMAP_FETCH_SIZE) &&
            (s->size == 0 || s->size == msg->size)) {
            s->seen = true;
        }
    }
}

static void rn_on_fetch_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct renames *rn = arg;
    if (!rn_alive(rn, res)) {
        return;
    }
    bool all = res->err >= 0 && res->status == IMAP_STATUS_OK;
    for (size_t i = 0; all && i < rn->nsamples; i++) {
        all = rn->samples[i].seen;
    }
    rn_set_verdict(rn, all ? FOLDERPLAN_RENAMED : FOLDERPLAN_NOT_RENAMED);
    verify_next(rn);
}

static void rn_on_examine(struct imap *im, const struct imap_result *res, void *arg)
{
    struct renames *rn = arg;
    if (!rn_alive(rn, res)) {
        return;
    }
    if (res->err < 0 || res->status != IMAP_STATUS_OK || res->mailbox == NULL ||
        res->mailbox->uidvalidity != rn->uidvalidity) {
        rn_set_verdict(rn, FOLDERPLAN_NOT_RENAMED);
        verify_next(rn);
        return;
    }
    if (rn->nsamples == 0) {
        /* Nothing recorded to compare: the same UIDVALIDITY decides. */
        rn_set_verdict(rn, FOLDERPLAN_RENAMED);
        verify_next(rn);
        return;
    }
    struct sbuf set = {0};
    for (size_t i = 0; i < rn->nsamples; i++) {
        sbuf_addf(&set, "%s%u", i > 0 ? "," : "", (unsigned)rn->samples[i].uid);
    }
    static const struct imap_fetch_cb cb = {.on_message = rn_on_message, .done = rn_on_fetch_done};
    int r = rn->e->ro->uid_fetch(rn->e->im, set.buf, IMAP_FETCH_SIZE, 0, false, &cb, rn);
    sbuf_free(&set);
    if (r < 0) {
        rn_set_verdict(rn, FOLDERPLAN_NOT_RENAMED);
        verify_next(rn);
    }
}

struct rn_all {
    struct rn_sample *v;
    size_t n, cap;
};

static int rn_collect_sample(const struct idx_msg *m, void *arg)
{
    struct rn_all *a = arg;
    if (m->state == IDX_MSG_SYNCED && m->uid != 0) {
        xgrow(&a->v, &a->cap, a->n + 1, sizeof(*a->v));
        a->v[a->n++] = (struct rn_sample){.uid = m->uid, .size = m->size};
    }
    return 0;
}

/* How many recorded messages are compared: a few, spread over the UIDs,
 * are enough to tell the same folder from another one with the same
 * UIDVALIDITY (a server that numbers every folder alike). */
#define RN_SAMPLES 8

static void verify_next(struct renames *rn)
{
    struct session *e = rn->e;
    const struct folderplan *fp = rn->run->fplan;
    while (rn->at < fp->nfolders && !fp->folders[rn->at].rename_verify) {
        rn->at++;
    }
    if (e->finished) {
        return;
    }
    if (rn->at >= fp->nfolders) {
        plan_folders(e);
        return;
    }
    rn->pf = &fp->folders[rn->at++];
    struct idx_txn *txn;
    struct idx_folder st;
    struct rn_all all = {0};
    int r = idx_begin(e->idx, false, &txn);
    if (r == 0) {
        r = idx_folder_get(txn, rn->pf->rename_from, &st);
        if (r == 0) {
            r = idx_msg_walk(txn, rn->pf->rename_from, rn_collect_sample, &all);
        }
        idx_abort(txn);
    }
    free(rn->samples);
    rn->samples = NULL;
    rn->nsamples = 0;
    if (r < 0) {
        free(all.v);
        rn_set_verdict(rn, FOLDERPLAN_NOT_RENAMED);
        verify_next(rn);
        return;
    }
    rn->uidvalidity = st.uidvalidity;
    size_t n = all.n < RN_SAMPLES ? all.n : RN_SAMPLES;
    rn->samples = xcalloc(n + 1, sizeof(*rn->samples));
    for (size_t i = 0; i < n; i++) {
        rn->samples[rn->nsamples++] = all.v[n > 1 ? i * (all.n - 1) / (n - 1) : 0];
    }
    free(all.v);
    free(e->selected);
    e->selected = xstrdup(rn->pf->name);
    struct imap_select_opts so = {.readonly = true};
    if (e->ro->select(e->im, rn->pf->name, &so, rn_on_examine, rn) < 0) {
        rn_set_verdict(rn, FOLDERPLAN_NOT_RENAMED);
        verify_next(rn);
    }
}

void renames_verify(struct session *e)
{
    struct renames *rn = rn_get(e->run);
    rn->e = e;
    rn->at = 0;
    verify_next(rn);
}

/* ---- carrying renames out ---- */

static void apply_next(struct renames *rn);

static bool is_rename(const struct fjob *j)
{
    return j->plan->action == FOLDERPLAN_RENAME_SERVER ||
           j->plan->action == FOLDERPLAN_RENAME_LOCAL;
}

static const char *tail_after(const char *child, const char *parent)
{
    size_t n = strlen(parent);
    return strncmp(child, parent, n) == 0 && child[n] == '/' ? child + n + 1 : NULL;
}

/* The rename that carries j along (its parent's, same tail), or NULL. */
static struct fjob *carrier(struct engine *r, const struct fjob *j)
{
    for (size_t i = 0; i < r->njobs; i++) {
        struct fjob *q = &r->jobs[i];
        const char *t1, *t2;
        if (q != j && is_rename(q) && q->plan->action == j->plan->action &&
            (t1 = tail_after(j->plan->rename_from, q->plan->rename_from)) != NULL &&
            (t2 = tail_after(j->name, q->name)) != NULL && strcmp(t1, t2) == 0) {
            return q;
        }
    }
    return NULL;
}

/* The step's records follow the rename; the job then syncs as usual. */
static void rn_done(struct renames *rn)
{
    struct fjob *j = rn->job;
    struct rn_move m = {.from = j->plan->rename_from, .to = j->name};
    if (idx_write(rn->e->idx, rn_move_fn, &m) < 0) {
        /* The intent stays: the next run moves them. */
        j->res->error =
            xasprintf("folder '%s': renamed from %s, but the index could not follow: %s", j->name,
                      j->plan->rename_from, idx_error(rn->e->idx));
    } else {
        j->notice = xasprintf(
            "folder %s was renamed %s: renamed to %s %s", j->plan->rename_from,
            j->plan->action == FOLDERPLAN_RENAME_SERVER ? "here" : "on the server", j->name,
            j->plan->action == FOLDERPLAN_RENAME_SERVER ? "on the server" : "here too");
        j->res->notice = j->notice;
        j->on_server = true;
    }
    apply_next(rn);
}

static void rn_back_next(struct renames *rn);

static void rn_on_back(struct imap *im, const struct imap_result *res, void *arg)
{
    struct renames *rn = arg;
    if (!rn_alive(rn, res)) {
        return;
    }
    const char *child = rn->back[rn->back_at - 1];
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        log_warnx("%s: folder %s moved with its parent on the server (RENAME) and could not be "
                  "renamed back: %s",
                  rn->run->acct->name, child, res->text != NULL ? res->text : "");
    }
    rn_back_next(rn);
}

static void rn_back_next(struct renames *rn)
{
    if (rn->back_at >= rn->nback) {
        rn_done(rn);
        return;
    }
    const char *child = rn->back[rn->back_at++];
    const char *tail = tail_after(child, rn->job->plan->rename_from);
    char *now = xasprintf("%s/%s", rn->job->name, tail);
    int r = rn->e->ro->rename(rn->e->im, now, child, rn_on_back, rn);
    free(now);
    if (r < 0) {
        rn_back_next(rn);
    }
}

/* Children of the old name on the server that the local side did not
 * rename along (Maildir++ keeps .A and .A.b apart, so a user can rename
 * one without the other; and folders the patterns leave out): IMAP RENAME
 * moved them, so they are renamed back. */
static void rn_collect_back(struct renames *rn)
{
    struct engine *r = rn->run;
    const struct folderplan *fp = r->fplan;
    const char *from = rn->job->plan->rename_from;
    for (size_t i = 0; i < rn->nback; i++) {
        free(rn->back[i]);
    }
    rn->nback = rn->back_at = 0;
    for (size_t i = 0; i < fp->nfolders + fp->nskips; i++) {
        const char *name;
        if (i < fp->nfolders) {
            if (!fp->folders[i].on_server) {
                continue;
            }
            name = fp->folders[i].name;
        } else {
            if (fp->skips[i - fp->nfolders].server < 0) {
                continue;
            }
            name = fp->skips[i - fp->nfolders].name;
        }
        if (tail_after(name, from) == NULL) {
            continue;
        }
        bool along = false;
        for (size_t k = 0; k < r->njobs && !along; k++) {
            const struct fjob *q = &r->jobs[k];
            along = q->plan->action == FOLDERPLAN_RENAME_SERVER &&
                    strcmp(q->plan->rename_from, name) == 0 && carrier(r, q) != NULL;
        }
        if (!along) {
            xgrow(&rn->back, &rn->back_cap, rn->nback + 1, sizeof(*rn->back));
            rn->back[rn->nback++] = xstrdup(name);
        }
    }
}

static void rn_on_rename(struct imap *im, const struct imap_result *res, void *arg)
{
    struct renames *rn = arg;
    if (!rn_alive(rn, res)) {
        return; /* the intent stays for the next run */
    }
    struct fjob *j = rn->job;
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        j->res->error =
            xasprintf("folder '%s': renamed here from %s, but RENAME on the server "
                      "failed: %s",
                      j->name, j->plan->rename_from, res->text != NULL ? res->text : "");
        apply_next(rn);
        return;
    }
    rn_collect_back(rn);
    rn_back_next(rn);
}

static void rn_local(struct renames *rn)
{
    struct fjob *j = rn->job;
    const struct sync_account *acct = rn->run->acct;
    char *from = NULL, *to = NULL;
    int r = md_folder_local_path(acct->maildir, acct->layout, j->plan->rename_from, &from);
    if (r == 0) {
        r = md_folder_local_path(acct->maildir, acct->layout, j->name, &to);
    }
    if (r == 0 && !(local_exists(acct, j->name) && !local_exists(acct, j->plan->rename_from))) {
        /* Not moved along with a parent directory already (verbatim). */
        r = md_folder_rename(from, to);
    }
    free(from);
    free(to);
    if (r < 0) {
        j->res->error = xasprintf("folder '%s': renamed on the server from %s, but the local "
                                  "folder could not be renamed: %s",
                                  j->name, j->plan->rename_from, strerror(-r));
        apply_next(rn);
        return;
    }
    rn_done(rn);
}

static void apply_next(struct renames *rn)
{
    struct session *e = rn->e;
    struct engine *r = rn->run;
    if (e->finished) {
        return;
    }
    while (rn->at < r->njobs && !is_rename(&r->jobs[rn->at])) {
        rn->at++;
    }
    if (rn->at >= r->njobs) {
        struct rn_move m = {.drop_intents = true};
        if (idx_write(e->idx, rn_move_fn, &m) < 0) {
            log_warnx("%s: index: %s (the renames are looked at again next time)", e->acct->name,
                      idx_error(e->idx));
        }
        jobs_go(e);
        return;
    }
    struct fjob *j = rn->job = &r->jobs[rn->at++];
    if (j->plan->action == FOLDERPLAN_RENAME_LOCAL) {
        rn_local(rn);
        return;
    }
    struct fjob *parent = j->plan->rename_implied ? carrier(r, j) : NULL;
    if (parent != NULL) {
        if (parent->res->error != NULL) {
            j->res->error = xasprintf("folder '%s': renamed here from %s with its parent, whose "
                                      "rename on the server failed",
                                      j->name, j->plan->rename_from);
            apply_next(rn);
            return;
        }
        rn_done(rn); /* the parent's RENAME moved it */
        return;
    }
    if (e->ro->rename == NULL ||
        e->ro->rename(e->im, j->plan->rename_from, j->name, rn_on_rename, rn) < 0) {
        j->res->error = xasprintf("folder '%s': renamed here from %s, but RENAME could not be sent",
                                  j->name, j->plan->rename_from);
        apply_next(rn);
    }
}

static int rn_intents_fn(struct idx_txn *txn, void *arg)
{
    const struct sbuf *b = arg;
    return idx_meta_put(txn, RENAMES_KEY, b->buf, b->len);
}

void renames_apply(struct session *e)
{
    struct engine *r = e->run;
    struct renames *rn = rn_get(r);
    rn->e = e;
    rn->at = 0;
    struct sbuf intents = {0};
    for (size_t i = 0; i < r->njobs; i++) {
        const struct fjob *j = &r->jobs[i];
        if (!is_rename(j)) {
            continue;
        }
        bool up = j->plan->action == FOLDERPLAN_RENAME_SERVER;
        if (e->opts.dry_run) {
            fprintf(e->plan_out, "%s: rename the %sfolder %s to %s (renamed %s)\n", j->name,
                    up ? "server " : "local ", j->plan->rename_from, j->name,
                    up ? "here" : "on the server");
            continue;
        }
        sbuf_addf(&intents, "%c\t%s\t%s\n", up ? 'S' : 'L', j->plan->rename_from, j->name);
    }
    if (e->opts.dry_run) {
        jobs_go(e);
        return;
    }
    int w = idx_write(e->idx, rn_intents_fn, &intents);
    sbuf_free(&intents);
    if (w < 0) {
        for (size_t i = 0; i < r->njobs; i++) {
            if (is_rename(&r->jobs[i])) {
                r->jobs[i].res->error =
                    xasprintf("folder '%s': renamed from %s; index: %s", r->jobs[i].name,
                              r->jobs[i].plan->rename_from, idx_error(e->idx));
            }
        }
        jobs_go(e);
        return;
    }
    apply_next(rn);
}

/* --force on a folder that vanished here while some of its messages moved
 * to other local folders: the records of the others are forgotten (they
 * are downloaded again); those of the moved ones stay, so the sync deletes
 * them on the server as messages deleted here. */
int resync_moved(struct session *e, struct fjob *j)
{
    if (e->opts.dry_run || j->plan->nlost == 0) {
        return 0;
    }
    struct idx_ops o = {.folder = j->name,
                        .drop_lids = (const char *const *)j->plan->lost_ids,
                        .ndrop_lids = j->plan->nlost};
    if (idx_apply(e, &o) < 0) {
        j->res->error = xasprintf("folder '%s': index: %s", j->name, idx_error(e->idx));
        return -1;
    }
    return 0;
}
