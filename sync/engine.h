/* The two-way IMAP <-> Maildir sync engine for one account (issue 4).
 *
 * One run: open the account's index (taking the account lock), get the
 * secret, connect (up to max_connections connections), LIST with STATUS,
 * decide which folders to sync and create missing ones on either side, then
 * for every selected folder compute a plan from three states (server, read
 * fresh; local Maildir, read fresh; index = the merge base) and apply it both
 * ways: downloads streamed to disk, APPENDs, flag changes (three-way merge
 * per flag), deletions (only for messages the index knows), and record the
 * new agreed state in the index. The invariants of shared/DESIGN.md hold at
 * every instant: a kill -9 anywhere leaves a state that the next run
 * finishes without loss or duplicates.
 *
 * The pure planning step is in sync/plan.h; this module executes plans.
 *
 * Ownership: engine_start returns a struct engine that frees itself after
 * the done callback returns (always called exactly once, from the loop).
 * engine_cancel stops at the next safe point; done still follows. Strings in
 * the result are valid during the callback only. */
#ifndef MAILSYNC_ENGINE_H
#define MAILSYNC_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <uv.h>

#include "sync/options.h"
#include "sync/remote.h"
#include "sync/result.h"

struct account;

struct engine_counts {
    unsigned new_down, new_up;          /* messages copied server->local, local->server */
    unsigned flags_down, flags_up;      /* messages whose flags changed on that side */
    unsigned deleted_down, deleted_up;  /* removed locally / on the server */
    unsigned skipped;                   /* over max_size / older than max_age_days */
    unsigned skipped_size, skipped_age; /* the same, by reason (skipped is their sum): every
                                           message the server holds and the limits keep
                                           away, counted on every run */
    unsigned adopted;                   /* found already present after a crash, not copied again */
    unsigned moved;                     /* messages moved from one folder to another on the
                                           other side (a local move made a UID MOVE on the
                                           server), counted in the folder that received them;
                                           not in new_* or deleted_* */
    uint64_t bytes_down, bytes_up;
};

struct engine_folder_result {
    const char *name;
    const char *error; /* NULL when the folder synced */
    struct engine_counts counts;
    /* Something the user should know although the folder synced, e.g.
     * "UIDVALIDITY of INBOX changed: 95 matched, 3 downloaded, 2 uploaded";
     * NULL when nothing happened worth telling. */
    const char *notice;
    /* The error clears up by itself (connection lost, disk full): trying
     * again later is all it takes. */
    bool transient;
    /* uv_hrtime() when the folder's job started on its session (0 when not
     * known): the owner times the job from it when it is reported. */
    uint64_t started_ns;
};

struct engine_result {
    const char *account;
    enum sync_kind kind;
    const char *error; /* first account-level error, NULL when OK */
    struct engine_counts total;
    const struct engine_folder_result *folders;
    size_t nfolders;
    unsigned folder_errors;
    bool folders_transient; /* every folder error is transient (or there is none) */
    bool dry_run;
};

/* The steps of a run (or a session) on its first connection. */
enum engine_phase {
    ENGINE_PHASE_CONNECTING = 0, /* password, connection, TLS, login */
    ENGINE_PHASE_LISTING,        /* LIST, and the folders decided */
    ENGINE_PHASE_SYNCING,        /* folder jobs */
    ENGINE_PHASE_IDLE,           /* stay_open: logged in, nothing to do */
    ENGINE_PHASE_LOGGING_OUT,
};

/* A name in a folder's new/ or cur/ that another program created, renamed
 * or removed (engine_opts.local_quiet_since). */
struct local_change {
    int64_t at_ns; /* CLOCK_REALTIME ns, when the owner learned of it */
    char *name;    /* "new/NAME" or "cur/NAME" */
};
void local_changes_free(struct local_change *c, size_t n);

struct engine_opts {
    bool dry_run; /* compute and print the plans; change nothing anywhere */
    bool force;   /* override the mass-deletion and vanished-folder guards */
    time_t now;   /* clock for max_age_days; 0 = time(NULL) */
    /* Progress for a terminal display, account-wide over every connection:
     * messages transferred either way of those planned so far (folders are
     * planned as they start, so total grows), bytes, and the folder that
     * moved. May be NULL. */
    void (*progress)(const char *folder, unsigned done, unsigned total, uint64_t bytes, void *arg);
    void *progress_arg;
    /* Where --dry-run prints its plan; NULL = stdout. */
    FILE *plan_out;
    /* A session that stays logged in (the daemon's): when every folder of
     * the run is done, on_idle is called instead of logging out;
     * engine_sync_folder then syncs one folder again on the same
     * connection, and engine_close ends the session (done follows). The
     * run's extra connections still end after the first pass. */
    bool stay_open;
    /* Connections the owner holds to the same account besides the run's
     * (the daemon's watchers): the run's extra connections stay within
     * max_connections counting these. */
    unsigned reserved_connections;
    void (*on_idle)(void *arg);
    /* A folder job queued by engine_sync_folder ended (with
     * report_every_folder: any folder job of the run, the first pass's
     * too); res is valid during the call. */
    void (*on_folder_done)(const struct engine_folder_result *res, void *arg);
    bool report_every_folder;
    /* Server data outside a folder's listing said that folder changed
     * (EXISTS, EXPUNGE, FETCH, VANISHED after its sync, or an unasked
     * STATUS): the owner syncs it again when it likes. */
    void (*on_dirty)(const char *folder, void *arg);
    /* Where the run or session is, for its owner's state machine (see
     * enum engine_phase); may be NULL. */
    void (*on_phase)(enum engine_phase phase, void *arg);
    /* The owner's word that nothing but this process changed the folder's
     * new/ and cur/ since the time returned (CLOCK_REALTIME, ns; 0: no such
     * word), except the files it names in *changes_r (malloc'd, with their
     * names; the engine frees them): the daemon's inotify watches, which
     * tell its own changes from other programs' (store/echo.h). A folder
     * whose last complete sync scanned after that time needs no scan and no
     * base read, whatever its change times say (its own renames moved
     * them); the files named are looked at alone, by their identities
     * (sync/folder.c, local_quiet). Asked as each folder job starts; may
     * be NULL. */
    int64_t (*local_quiet_since)(const char *folder, void *arg, struct local_change **changes_r,
                                 size_t *nchanges_r);
    void *session_arg; /* the argument of the six callbacks above */
    /* The server (sync/remote.h): NULL = the IMAP client; the unit tests
     * pass their in-memory fake, with remote_arg its server state. */
    const struct remote_ops *remote;
    void *remote_arg;
    /* The long-lived account (sync/account.h) whose index, lock and kept
     * secret the run uses; it must be made from the same sync_account and
     * outlive the run. NULL: the run makes its own and frees it. */
    struct account *account;
};

typedef void (*engine_done_cb)(const struct engine_result *res, void *arg);

struct engine;

int engine_start(uv_loop_t *loop, const struct sync_account *acct, const struct engine_opts *opts,
                 engine_done_cb done, void *arg, struct engine **e_r);
/* Stops soon: a session in the middle of a folder stops at once (what
 * arrived whole is kept and recorded; the rest is redone by the next run),
 * one between folders at the next one; done still follows. */
void engine_cancel(struct engine *e);
/* stay_open sessions: queue one folder (a name the run listed) to be
 * synced again on the session's connection, after the folder in progress.
 * Returns 0, -ENOENT for a folder the run does not know, -ESHUTDOWN when
 * the session is ending or ended, -EINVAL without stay_open. */
int engine_sync_folder(struct engine *e, const char *folder);
/* stay_open sessions: what the server said of a folder between jobs (a
 * NOTIFY STATUS, or an EXPUNGE or VANISHED on a watcher): a folder that
 * lost messages is synced before the others queued with it, so that a
 * message another client moved is found as a move (no download). */
void engine_note_server(struct engine *e, const char *folder, const struct imap_status_info *st,
                        bool expunged);
/* stay_open sessions: log out once the folder in progress (if any) is
 * done; queued folders are dropped; done follows. */
void engine_close(struct engine *e);

/* What a sweep found (engine_sweep). */
enum engine_sweep_result {
    ENGINE_SWEEP_QUEUED,   /* the folders that moved are queued (n of them, maybe 0) */
    ENGINE_SWEEP_NEW_PASS, /* the server's folder list changed: a new pass is needed */
};
typedef void (*engine_sweep_cb)(enum engine_sweep_result res, unsigned n, void *arg);
/* stay_open sessions, while idle: LIST (with LIST-STATUS where offered)
 * on the open connection; every folder whose status differs from what the
 * index recorded at its last sync (or every folder, without LIST-STATUS)
 * is queued as by engine_sync_folder. cb follows from the loop, unless the
 * session ends first (done then follows as usual). Returns 0, -EBUSY
 * while the session works or a sweep runs, -ESHUTDOWN when it is ending,
 * -EINVAL without stay_open. */
int engine_sweep(struct engine *e, engine_sweep_cb cb, void *arg);
/* stay_open sessions: whether the session waits for folder jobs with none
 * queued (folders that needed nothing can finish inside engine_sweep's
 * callback chain, before cb). */
bool engine_is_idle(const struct engine *e);

/* One summary line: "work: ↓ 12 new, 3 flags, 1 deleted; ↑ 2 new ...". Caller frees. */
char *engine_summary(const struct engine_result *res);

#endif
