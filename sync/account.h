/* One account as it lives across runs and sessions: what outlasts a
 * connection. The daemon keeps one per configured account for as long as
 * the account runs; `mailsync sync` makes one per account for its single
 * pass; an engine run (sync/engine.h) given none makes its own.
 *
 * It holds:
 * - the sync layer's options (struct sync_account), borrowed or owned, so a
 *   configuration reload can replace the configuration while it runs;
 * - the index handle and with it the account lock (opened on first use,
 *   shared by every session of the account: one thread, writes never
 *   overlap);
 * - the secret: a password_command runs once, the answer stays in memory
 *   (wiped when forgotten or freed) and is asked for again only after the
 *   server refused it (account_secret_refused);
 * - what the server last said: its capabilities, its folder list with each
 *   folder's last STATUS;
 * - the set of folders known to have changed and not synced since
 *   ("dirty"), and counts since the account started.
 *
 * Everything runs on the loop thread. */
#ifndef MAILSYNC_ACCOUNT_H
#define MAILSYNC_ACCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "store/index.h"
#include "sync/imap.h"
#include "sync/options.h"
#include "sync/secret.h"

struct account;
struct account_wait;

/* Totals since the account started (one-shot: this run). */
struct account_totals {
    unsigned runs;         /* folder syncs finished */
    unsigned folder_fails; /* ... of them with an error */
    unsigned new_down, new_up, flags_down, flags_up, deleted_down, deleted_up;
    unsigned moved; /* messages moved between folders (carried out as moves) */
    uint64_t bytes_down, bytes_up;
    unsigned logins;         /* connections that logged in */
    unsigned secret_fetches; /* times the password / password_command was asked */
};

/* One folder as the server last listed it. */
struct account_folder {
    char *name;
    unsigned attrs; /* IMAP_LIST_* */
    bool has_status;
    struct imap_status_info status; /* status.folder is name */
};

/* acct must outlive the account unless owned (then account_free frees it
 * with sync_account_free). */
struct account *account_new(uv_loop_t *loop, struct sync_account *acct, bool owned);
void account_free(struct account *a);
const struct sync_account *account_opts(const struct account *a);

/* The index, opened (and the account lock taken) on the first call.
 * Returns 0 and the handle (owned by the account), or a negative errno
 * (-EWOULDBLOCK: another process holds the lock) with a message in *err_r
 * (caller frees). A failed open is tried again on the next call. */
int account_index(struct account *a, struct idx **idx_r, char **err_r);

/* The secret, through cb (from the loop, never synchronously, exactly once
 * unless account_secret_cancel). The first call runs password_command (or
 * takes the configured password); later calls get the kept answer without
 * running anything; calls while the command runs wait for its answer. A
 * failure is not kept: the next call asks again. Returns 0 and a handle
 * valid until the callback or the cancel, or a negative errno (no password
 * and no password_command). */
int account_secret(struct account *a, secret_cb cb, void *arg, struct account_wait **w_r);
void account_secret_cancel(struct account_wait *w);
/* The server refused the secret: forget it (wiped), so the next
 * account_secret asks the command again. */
void account_secret_refused(struct account *a);

/* What the server says. */
void account_note_login(struct account *a, unsigned caps);
unsigned account_caps(const struct account *a); /* IMAP_CAP_*, 0 before a login */
/* Replaces the folder list (a new LIST answer): call account_list_begin,
 * then account_list_add per folder. Dirty marks of folders still listed
 * are kept. */
void account_list_begin(struct account *a);
void account_list_add(struct account *a, const char *name, unsigned attrs, bool has_status,
                      const struct imap_status_info *status);
const struct account_folder *account_folder(const struct account *a, const char *name);
size_t account_nfolders(const struct account *a);
const struct account_folder *account_folder_at(const struct account *a, size_t i);

/* Dirty folders: marked when server data or a local change says a folder
 * changed; cleared when a sync of that folder starts (what changes after
 * the start is marked again). Returns whether the mark is new. A folder
 * not listed yet is kept too (a NOTIFY STATUS for a new folder). */
bool account_mark_dirty(struct account *a, const char *name);
void account_clear_dirty(struct account *a, const char *name);
bool account_is_dirty(const struct account *a, const char *name);
size_t account_ndirty(const struct account *a);
/* The dirty folders' names, in the order they were marked; *n_r of them,
 * valid until the next change of the set. */
const char *const *account_dirty(const struct account *a, size_t *n_r);

/* Counts since start. */
struct account_totals *account_totals(struct account *a);

#endif
