/* The long-lived account: see account.h. */
#include "sync/account.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "core/log.h"
#include "core/util.h"

/* A caller of account_secret. */
struct account_wait {
    struct account *a;
    secret_cb cb;
    void *arg;
    /* Served from the kept secret: a request that hands it back from the
     * loop (secret_get with the secret as its password). */
    struct secret_req *req;
    bool queued; /* waits for the command in flight (a->waiters) */
};

struct account {
    uv_loop_t *loop;
    struct sync_account *acct;
    bool owned;
    struct idx *idx;
    /* The secret. */
    char *secret;
    struct secret_req *fetch; /* password_command running */
    struct account_wait **waiters;
    size_t nwaiters, waiters_cap;
    /* The server. */
    unsigned caps;
    struct account_folder *folders;
    size_t nfolders, folders_cap;
    struct strindex folder_ix;
    char **dirty;
    size_t ndirty, dirty_cap;
    struct account_totals totals;
};

struct account *account_new(uv_loop_t *loop, struct sync_account *acct, bool owned)
{
    struct account *a = xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->acct = acct;
    a->owned = owned;
    return a;
}

static void secret_forget(struct account *a)
{
    if (a->secret != NULL) {
        OPENSSL_cleanse(a->secret, strlen(a->secret));
        free(a->secret);
        a->secret = NULL;
    }
}

static void folders_clear(struct account *a)
{
    for (size_t i = 0; i < a->nfolders; i++) {
        free(a->folders[i].name);
    }
    a->nfolders = 0;
    strindex_reset(&a->folder_ix);
}

void account_free(struct account *a)
{
    if (a == NULL) {
        return;
    }
    /* Waiters are owned by their callers' cancels; a caller that frees
     * the account first has ended its runs. */
    for (size_t i = 0; i < a->nwaiters; i++) {
        free(a->waiters[i]);
    }
    free(a->waiters);
    if (a->fetch != NULL) {
        secret_cancel(a->fetch);
    }
    secret_forget(a);
    if (a->idx != NULL) {
        idx_close(a->idx);
    }
    folders_clear(a);
    free(a->folders);
    strindex_free(&a->folder_ix);
    for (size_t i = 0; i < a->ndirty; i++) {
        free(a->dirty[i]);
    }
    free(a->dirty);
    if (a->owned) {
        sync_account_free(a->acct);
    }
    free(a);
}

const struct sync_account *account_opts(const struct account *a)
{
    return a->acct;
}

int account_index(struct account *a, struct idx **idx_r, char **err_r)
{
    *err_r = NULL;
    if (a->idx == NULL) {
        int r = idx_open(a->acct->state_dir, a->acct->name, &a->idx, err_r);
        if (r < 0) {
            a->idx = NULL;
            if (*err_r == NULL) {
                *err_r = xasprintf("account '%s': cannot open the index: %s", a->acct->name,
                                   strerror(-r));
            }
            return r;
        }
    }
    *idx_r = a->idx;
    return 0;
}

/* ---- the secret ---------------------------------------------------------------------------- */

static void on_kept(int err, const char *secret, const char *msg, void *arg)
{
    struct account_wait *w = arg;
    secret_cb cb = w->cb;
    void *cb_arg = w->arg;
    free(w);
    cb(err, secret, msg, cb_arg);
}

static void on_fetched(int err, const char *secret, const char *msg, void *arg)
{
    struct account *a = arg;
    a->fetch = NULL;
    if (err == 0) {
        secret_forget(a);
        a->secret = xstrdup(secret);
    }
    /* Every waiter hears the same answer; a callback may start another
     * account_secret (a new waiter then goes through the kept secret, or,
     * after a failure, a new fetch), so the list is taken first. */
    struct account_wait **ws = a->waiters;
    size_t n = a->nwaiters;
    a->waiters = NULL;
    a->nwaiters = a->waiters_cap = 0;
    for (size_t i = 0; i < n; i++) {
        struct account_wait *w = ws[i];
        if (w == NULL) {
            continue; /* cancelled */
        }
        secret_cb cb = w->cb;
        void *cb_arg = w->arg;
        free(w);
        ws[i] = NULL;
        cb(err, secret, msg, cb_arg);
    }
    free(ws);
}

int account_secret(struct account *a, secret_cb cb, void *arg, struct account_wait **w_r)
{
    const struct sync_account *o = a->acct;
    if (o->password == NULL && o->password_command == NULL) {
        return -EINVAL;
    }
    struct account_wait *w = xcalloc(1, sizeof(*w));
    w->a = a;
    w->cb = cb;
    w->arg = arg;
    if (a->secret != NULL) {
        int r = secret_get(a->loop, a->secret, NULL, 0, on_kept, w, &w->req);
        if (r < 0) {
            free(w);
            return r;
        }
        *w_r = w;
        return 0;
    }
    if (a->fetch == NULL) {
        int r = secret_get_account(a->loop, o, 0, on_fetched, a, &a->fetch);
        if (r < 0) {
            a->fetch = NULL;
            free(w);
            return r;
        }
        a->totals.secret_fetches++;
    }
    w->queued = true;
    if (a->nwaiters == a->waiters_cap) {
        a->waiters_cap = a->waiters_cap ? a->waiters_cap * 2 : 4;
        a->waiters = xrealloc(a->waiters, a->waiters_cap * sizeof(*a->waiters));
    }
    a->waiters[a->nwaiters++] = w;
    *w_r = w;
    return 0;
}

void account_secret_cancel(struct account_wait *w)
{
    if (w == NULL) {
        return;
    }
    struct account *a = w->a;
    if (!w->queued) {
        secret_cancel(w->req);
        free(w);
        return;
    }
    bool others = false;
    for (size_t i = 0; i < a->nwaiters; i++) {
        if (a->waiters[i] == w) {
            a->waiters[i] = NULL;
        } else if (a->waiters[i] != NULL) {
            others = true;
        }
    }
    free(w);
    if (!others && a->fetch != NULL) {
        /* Nobody waits for the command any more. */
        secret_cancel(a->fetch);
        a->fetch = NULL;
        free(a->waiters);
        a->waiters = NULL;
        a->nwaiters = a->waiters_cap = 0;
    }
}

void account_secret_refused(struct account *a)
{
    if (a->secret != NULL) {
        log_debug("%s: the server refused the secret; it is asked for again next time",
                  a->acct->name);
    }
    secret_forget(a);
}

/* ---- what the server says ------------------------------------------------------------------ */

void account_note_login(struct account *a, unsigned caps)
{
    a->caps = caps;
    a->totals.logins++;
}

unsigned account_caps(const struct account *a)
{
    return a->caps;
}

void account_list_begin(struct account *a)
{
    folders_clear(a);
}

void account_list_add(struct account *a, const char *name, unsigned attrs, bool has_status,
                      const struct imap_status_info *status)
{
    if (a->nfolders == a->folders_cap) {
        a->folders_cap = a->folders_cap ? a->folders_cap * 2 : 16;
        a->folders = xrealloc(a->folders, a->folders_cap * sizeof(*a->folders));
    }
    struct account_folder *f = &a->folders[a->nfolders];
    memset(f, 0, sizeof(*f));
    f->name = xstrdup(name);
    f->attrs = attrs;
    f->has_status = has_status;
    if (has_status && status != NULL) {
        f->status = *status;
    }
    f->status.folder = f->name;
    strindex_add(&a->folder_ix, str_hash(name, strlen(name)), a->nfolders);
    a->nfolders++;
}

const struct account_folder *account_folder(const struct account *a, const char *name)
{
    size_t it = 0, pos;
    uint64_t h = str_hash(name, strlen(name));
    while (strindex_next(&a->folder_ix, h, &it, &pos)) {
        if (strcmp(a->folders[pos].name, name) == 0) {
            return &a->folders[pos];
        }
    }
    return NULL;
}

size_t account_nfolders(const struct account *a)
{
    return a->nfolders;
}

const struct account_folder *account_folder_at(const struct account *a, size_t i)
{
    return i < a->nfolders ? &a->folders[i] : NULL;
}

/* ---- dirty folders ------------------------------------------------------------------------- */

static ssize_t dirty_find(const struct account *a, const char *name)
{
    for (size_t i = 0; i < a->ndirty; i++) {
        if (strcmp(a->dirty[i], name) == 0) {
            return (ssize_t)i;
        }
    }
    return -1;
}

bool account_mark_dirty(struct account *a, const char *name)
{
    if (dirty_find(a, name) >= 0) {
        return false;
    }
    if (a->ndirty == a->dirty_cap) {
        a->dirty_cap = a->dirty_cap ? a->dirty_cap * 2 : 8;
        a->dirty = xrealloc(a->dirty, a->dirty_cap * sizeof(*a->dirty));
    }
    a->dirty[a->ndirty++] = xstrdup(name);
    return true;
}

void account_clear_dirty(struct account *a, const char *name)
{
    ssize_t i = dirty_find(a, name);
    if (i < 0) {
        return;
    }
    free(a->dirty[i]);
    memmove(&a->dirty[i], &a->dirty[i + 1], (a->ndirty - (size_t)i - 1) * sizeof(*a->dirty));
    a->ndirty--;
}

bool account_is_dirty(const struct account *a, const char *name)
{
    return dirty_find(a, name) >= 0;
}

size_t account_ndirty(const struct account *a)
{
    return a->ndirty;
}

const char *const *account_dirty(const struct account *a, size_t *n_r)
{
    *n_r = a->ndirty;
    return (const char *const *)a->dirty;
}

struct account_totals *account_totals(struct account *a)
{
    return &a->totals;
}
