/* Whole folders, between folder jobs: a folder deleted on one side
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

#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/engine_int.h"
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
    start_folder(e, j);
}
