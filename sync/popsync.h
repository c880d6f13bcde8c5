/* The keep-on-server download engine for one POP3 account.
 *
 * One run: open the account's index (which takes the account lock) and its
 * Maildir INBOX, get the secret, log in, list the server (UIDL and LIST in
 * one round trip with PIPELINING), decide, download what is new, delete
 * what the configuration says may go, QUIT, and report a summary.
 *
 * Semantics (issue 5, shared/PROTOCOLS.md):
 *   - New = UIDL listing minus what the index knows. Each new message is
 *     streamed by RETR into tmp/ (md_writer, LF line endings), and in
 *     batches (50 messages, 16 MiB or 1 s): an "intent" row (UIDL, planned
 *     local identity, size) is committed to the index, the files are
 *     fsynced and renamed into new/, new/ is fsynced, and only then the
 *     rows are marked delivered. After a crash, an intent row whose file is
 *     in the Maildir is adopted (no duplicate); one whose file is not is
 *     downloaded again (no loss).
 *   - Entries no longer listed are forgotten, which makes UIDL reuse after
 *     deletion safe; a listed UIDL whose LIST size differs from the stored
 *     one is checked with TOP n 0: a different header hash means a new
 *     message under a reused UIDL, which is downloaded. A new UIDL whose
 *     size and header hash equal those of an entry that vanished from the
 *     listing in the same run (servers that renumber all UIDLs, e.g. after a
 *     Dovecot UIDVALIDITY change) takes that entry over instead of being
 *     downloaded again.
 *   - pop.since: TOP n 0, Date header (RFC 5322, obsolete forms accepted);
 *     older messages are recorded as skipped and not read again (until
 *     "since" is removed from the configuration: then they are downloaded);
 *     an unparseable date downloads the message.
 *   - max_size: messages larger by LIST size are skipped and reported on
 *     every run (not recorded, so raising the limit fetches them).
 *   - No UIDL on the server: messages are identified by "H" + the hex
 *     header hash from TOP n 0 (logged once per run).
 *   - A delivered message whose file is gone from the Maildir (identity not
 *     found by md_scan) is marked deleted locally and never downloaded
 *     again.
 *   - Safety (DESIGN.md invariant 6): when more delivered messages are gone
 *     from the Maildir at once than max_delete_ratio (0.5) of them (at least
 *     4 delivered), the run stops with a permanent error instead of marking
 *     them deleted locally (a vanished or moved Maildir); opts.force
 *     accepts it.
 *   - Deletion on the server (DELE, committed by QUIT) only for messages
 *     durably stored: keep_on_server false (all of them), delete_after_days
 *     N (first seen N days before opts.now), delete_when_deleted_locally
 *     (those deleted locally). Marked deleted on the server only after
 *     QUIT's "+OK".
 *
 * Threads: network and decisions run on the loop; Maildir commits and
 * index transactions run in threadpool jobs while the connection is paused.
 *
 * Ownership: popsync_start returns a struct popsync that is freed by the
 * engine itself after the done callback returns (the callback is always
 * called exactly once, from the loop). popsync_cancel stops a run early;
 * the done callback still follows, with kind POPSYNC_TRANSIENT and error
 * "cancelled". Strings in the result are valid during the callback only. */
#ifndef MAILSYNC_POPSYNC_H
#define MAILSYNC_POPSYNC_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "sync/options.h"

enum popsync_kind {
    POPSYNC_OK = 0,
    POPSYNC_TRANSIENT, /* try again later (network, [IN-USE], [LOGIN-DELAY], [SYS/TEMP], lock) */
    POPSYNC_AUTH,      /* credentials refused */
    POPSYNC_PERMANENT, /* needs the user: configuration, certificates, [SYS/PERM], disk */
};

const char *popsync_kind_name(enum popsync_kind k);

struct popsync_result {
    enum popsync_kind kind;
    const char *error; /* NULL when kind is POPSYNC_OK */
    const char *account;
    unsigned listed;            /* messages on the server */
    unsigned known;             /* already here (or deliberately not wanted) */
    unsigned downloaded;        /* new messages stored (or, dry run, that would be) */
    unsigned adopted;           /* delivered before a crash and recorded now */
    unsigned skipped_size;      /* over max_size */
    unsigned skipped_since;     /* Date before pop.since (newly recorded) */
    unsigned deleted_on_server; /* DELE committed by QUIT (or, dry run, that would be) */
    unsigned deleted_locally;   /* newly noticed local deletions */
    unsigned errors;            /* messages that failed (e.g. RETR -ERR); the run goes on */
    uint64_t bytes;             /* bytes stored (LF line endings) */
    bool dry_run;
};

struct popsync_opts {
    bool dry_run; /* list and decide, change nothing (no RETR, DELE or index writes) */
    /* The clock for delete_after_days and first-seen times; 0 = time(NULL).
     * The caller may take it from MAILSYNC_NOW (unix seconds) for tests. */
    time_t now;
    /* Called after each stored message, for a progress display; may be
     * NULL. total is the number to download in this run. */
    void (*progress)(unsigned done, unsigned total, uint64_t bytes, void *arg);
    void *progress_arg;
    /* Accept more local deletions at once than max_delete_ratio (the user
     * says they were on purpose); see "Safety" above. */
    bool force;
    /* Tests only: skip certificate verification. Never from configuration. */
    bool insecure_skip_verify;
    /* The most messages a UIDL or LIST listing may have; 0 means
     * POPSYNC_MAX_LISTING. A longer listing fails the run. */
    unsigned max_listing;
};

/* The default bound on a listing: what a peer can make the client hold. */
#define POPSYNC_MAX_LISTING 1000000u

typedef void (*popsync_done_cb)(const struct popsync_result *res, void *arg);

struct popsync;

/* Starts a run. Returns 0 (the callback follows from the loop) or a
 * negative errno for arguments that cannot work (account not POP3), with
 * no callback. */
int popsync_start(uv_loop_t *loop, const struct sync_account *acct, const struct popsync_opts *opts,
                  popsync_done_cb done, void *arg, struct popsync **ps_r);
/* Stops the run at the next safe point: what is fully downloaded is still
 * committed. The done callback follows. */
void popsync_cancel(struct popsync *ps);

/* Runs one account to completion on loop (uv_run until the run is over)
 * and copies the result into *res_r (strings malloc'd: free with
 * popsync_result_clear). Returns 0 when the run succeeded, else -1 (the
 * reason is in res_r). For `mailsync sync`. */
int popsync_run(uv_loop_t *loop, const struct sync_account *acct, const struct popsync_opts *opts,
                struct popsync_result *res_r);
void popsync_result_clear(struct popsync_result *res);

/* The one-line summary, e.g. "work: 12 new (3.4 MB), 2 skipped (over
 * max_size: 1, before since: 1), 1 deleted on the server, 40 already here".
 * Caller frees. */
char *popsync_summary(const struct popsync_result *res);

/* Exposed for tests. */

/* Parses an RFC 5322 date (obsolete forms and asctime accepted). Returns
 * false when it cannot. */
bool popsync_parse_date(const char *s, time_t *t_r);
/* Finds the Date header's value in a header block (LF endings, folded
 * lines unfolded); malloc'd, NULL when absent. */
char *popsync_find_header(const char *headers, size_t len, const char *name);

#endif
