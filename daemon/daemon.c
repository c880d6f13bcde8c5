/* `mailsync daemon`: see daemon.h. */
#include "daemon/daemon.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/control.h"
#include "daemon/hooks.h"
#include "daemon/pidlock.h"
#include "daemon/sdnotify.h"
#include "daemon/supervisor.h"
#include "daemon/syncopts.h"
#include "daemon/wake.h"
#include "store/echo.h"
#include "store/maildir.h"
#include "sync/account.h"
#include "sync/engine.h"
#include "sync/imap.h"
#include "sync/popsync.h"

/* Back-off after a failed session: from 1 s, doubled each time, at most
 * 5 min, each wait moved by up to a fifth either way so that accounts on
 * one server do not come back in step. */
#define BACKOFF_MIN_MS 1000u
#define BACKOFF_MAX_MS (5u * 60 * 1000)
/* How long SIGTERM waits for sessions to end at a safe point. */
#define STOP_DEADLINE_MS 5000
/* How long after the last folder job the heap is trimmed. */
#define TRIM_DELAY_MS 1000
/* A sweep that finds the session busy tries again after this long. */
#define SWEEP_BUSY_RETRY_MS 5000
/* More folders than this are not watched one by one (each costs two
 * inotify watches): the root is, and the poll sweep finds the rest. */
#define MAX_WATCHED_FOLDERS 2000
/* Other programs' changed file names a watch keeps (note_foreign): a
 * mutt session's flag changes between two syncs, one rename two names. */
#define LOCAL_NAMES_MAX 128

struct daemon;
struct dacct;

/* The most watcher connections of one account (the configuration allows
 * as many idle folders). */
#define WATCH_MAX 8

/* One watcher connection: IDLE on one folder, or (the primary, slot 0)
 * NOTIFY on every folder. */
struct watcher {
    struct dacct *a;
    unsigned slot;
    char *folder; /* EXAMINEd and IDLEd on */
    char *name;   /* in log lines: ACCOUNT/watch, ACCOUNT/watch2, ... */
    struct imap *im;
    struct account_wait *wait;
    uv_timer_t timer; /* IDLE restart, or the reconnect after a failure */
    unsigned backoff_ms;
    bool idling;
};

/* One inotify watch: a folder's new/ or cur/, or the Maildir root
 * (folder NULL). */
struct fswatch {
    uv_fs_event_t h;
    struct dacct *a;
    char *folder;
    char *path;      /* the directory watched */
    const char *sub; /* "new" or "cur"; NULL for the root */
    /* CLOCK_REALTIME ns: since when it watches, and when it last lost
     * track of which files another program changed (an event without a
     * name, or more names than it keeps). local_quiet_since */
    int64_t since_ns;
    int64_t foreign_ns;
    /* The names other programs created, renamed or removed since, at
     * most LOCAL_NAMES_MAX, none older than the window (local_window). */
    struct local_change *names;
    size_t nnames, names_cap;
    /* The directory the watch follows (inotify follows the inode, not the
     * path), and whether it may have missed events (an error): then it
     * vouches for nothing. */
    dev_t dev;
    ino_t ino;
    bool blind;
};

/* A control request waiting for a sync: of one folder, or (folder NULL)
 * of the account's next complete pass. */
struct waiter {
    struct ctl_req *req;
    char *folder;
    struct account_totals before; /* the account's counts when it came */
};

struct dacct {
    struct daemon *d;
    const struct cfg_account *ca;
    struct sync_account *sa; /* owned by account */
    struct account *account;
    struct sup sup;
    bool imap;
    bool paused;
    /* Reload: removed or changed, stopping; freed once stopped, and then
     * its successor (the changed account) starts: both would take the
     * same index lock. */
    bool retiring;
    struct dacct *successor;
    bool start_pending; /* waits for its predecessor to stop */
    /* A login of this account succeeded since the daemon started (its
     * credentials worked); a refusal after that was answered with one
     * retry with a fresh secret (reset by the next success). */
    bool logged_in_once;
    bool auth_refetched;

    /* The sync session. */
    struct engine *run;
    bool run_idle;      /* its first pass is done */
    bool restart_after; /* it was closed for a new pass: start again at once */
    unsigned backoff_ms;
    uv_timer_t retry_timer;
    uv_timer_t poll_timer;
    uv_timer_t local_timer;

    /* The watchers: one per `idle:` folder (INBOX by default). */
    struct watcher *w[WATCH_MAX];
    unsigned nw;
    /* How many watcher connections the server allows: unlimited until it
     * refuses one for its limit ([LIMIT]), then what was open; back to
     * unlimited on a recheck or a reload. */
    unsigned watch_budget;
    bool watch_budget_noted; /* the idle folders beyond the budget were logged */
    /* NOTIFY (RFC 5465) took on the primary watcher: it hears of every
     * folder; notify_try counts the event sets tried. */
    bool watch_notify;
    unsigned notify_try;
    /* Whether NOTIFY really reports (some servers accept it and then stay
     * silent): the folders the watcher announced since the pass began; a
     * sweep pass that brings down new mail from a folder it never
     * announced, while NOTIFY was up all along, is a miss; two sweeps in
     * a row with misses and NOTIFY is not used again (notify_off). */
    char **announced;
    size_t nannounced, announced_cap;
    bool sweep_pass; /* the current pass or sweep was started by poll_interval */
    /* A sweep on the open session (engine_sweep) runs: its LIST is out
     * (sweeping), or its folders are queued (sweep_listed). */
    bool sweeping;
    bool sweep_listed;
    bool fs_partial;   /* more folders than inotify watches: sweeps are full passes */
    bool sweep_missed; /* ... and found new mail NOTIFY did not announce */
    unsigned notify_misses;
    bool notify_off;
    time_t notify_since;    /* when NOTIFY last took */
    time_t prev_pass_start; /* when the pass before this one started */
    time_t pass_start;

    struct fswatch **fsw;
    size_t nfsw, fsw_cap;

    struct popsync *pop;
    struct hook *hook;

    /* What status says. */
    time_t last_ok;
    char *last_error;
    time_t last_error_at;
    unsigned passes;

    struct waiter *waiters;
    size_t nwaiters, waiters_cap;
    /* The first folder error of the pass in progress: a `sync ACCOUNT`
     * waiting for the pass hears it (never "ok" over a failed folder). */
    char *pass_error;
    bool pass_error_temporary;
    unsigned open_handles; /* timers still to close when stopping */
};

struct daemon {
    uv_loop_t loop;
    struct cfg *cfg;
    struct pidlock *lock;
    struct ctl_server *ctl;
    struct sdn_watchdog *wd;
    struct wake *wake;
    uv_signal_t sig_term, sig_int;
    uv_timer_t stop_timer;
    uv_timer_t trim_timer; /* malloc_trim once the accounts are quiet */
    struct dacct **accts;
    size_t naccts;
    struct dacct **retired; /* stopping after a reload */
    size_t nretired, retired_cap;
    struct cfg **old_cfgs; /* configurations replaced by a reload, still referenced */
    size_t nold_cfgs;
    uv_signal_t sig_hup;
    bool stopping;
    int exit_code;
};

static void acct_start(struct dacct *a);
static unsigned watch_reserved(const struct dacct *a);
static void acct_maybe_done(struct dacct *a);
static void watch_start(struct dacct *a);
static void watch_stop(struct dacct *a);
static void fs_watch_all(struct dacct *a);
static void fs_unwatch_all(struct dacct *a);
static void daemon_maybe_done(struct daemon *d);
static void all_accounts_recheck(struct daemon *d, const char *why, bool reopen);

/* ---- helpers ------------------------------------------------------------------------------- */

/* The account is being stopped: the daemon stops, or a reload removed or
 * changed it. */
static bool acct_ending(const struct dacct *a)
{
    return a->d->stopping || a->retiring;
}

static void set_last_error(struct dacct *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_last_error(struct dacct *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(a->last_error);
    a->last_error = xvasprintf(fmt, ap);
    va_end(ap);
    a->last_error_at = time(NULL);
}

static unsigned jitter(unsigned ms)
{
    /* ±20 %: no need for a strong generator, only for accounts not to
     * move in step. */
    unsigned span = ms / 5;
    return span == 0 ? ms : ms - span + (unsigned)(rand() % (int)(2 * span + 1));
}

static void status_line(struct daemon *d)
{
    unsigned idle = 0, busy = 0, down = 0;
    for (size_t i = 0; i < d->naccts; i++) {
        if (d->accts[i] == NULL) {
            continue; /* a reload is building the new list */
        }
        enum sup_state s = d->accts[i]->sup.state;
        if (s == SUP_IDLE) {
            idle++;
        } else if (s == SUP_CONNECTING || s == SUP_LISTING || s == SUP_SYNCING) {
            busy++;
        } else {
            down++;
        }
    }
    sdn_status("%zu accounts: %u in sync, %u syncing, %u waiting or failed", d->naccts, idle, busy,
               down);
}

static void acct_state(struct dacct *a, enum sup_state to, const char *why)
{
    if (a->sup.state == to) {
        return;
    }
    sup_set(&a->sup, to, why);
    status_line(a->d);
}

/* ---- control requests waiting for a sync --------------------------------------------------- */

static void waiter_add(struct dacct *a, struct ctl_req *req, const char *folder)
{
    xgrow(&a->waiters, &a->waiters_cap, a->nwaiters + 1, sizeof(*a->waiters));
    a->waiters[a->nwaiters++] =
        (struct waiter){req, folder != NULL ? xstrdup(folder) : NULL, *account_totals(a->account)};
}

/* {"ok":..,"account":..,["folder":..,]["error":..,"temporary":..,]counts}:
 * the counts of what was synced while the request waited. */
static void reply_result(struct dacct *a, const struct waiter *w, const char *error, bool temporary)
{
    const struct account_totals *now = account_totals(a->account), *was = &w->before;
    struct sbuf sb = {0};
    sbuf_addf(&sb, "{\"ok\":%s,\"account\":", error == NULL ? "true" : "false");
    sbuf_add_json(&sb, a->ca->name);
    if (w->folder != NULL) {
        sbuf_adds(&sb, ",\"folder\":");
        sbuf_add_json(&sb, w->folder);
    }
    if (error != NULL) {
        sbuf_adds(&sb, ",\"error\":");
        sbuf_add_json(&sb, error);
        sbuf_addf(&sb, ",\"temporary\":%s", temporary ? "true" : "false");
    }
    sbuf_addf(&sb,
              ",\"new_down\":%u,\"flags_down\":%u,\"deleted_down\":%u,\"new_up\":%u,"
              "\"flags_up\":%u,\"deleted_up\":%u,\"moved\":%u}",
              now->new_down - was->new_down, now->flags_down - was->flags_down,
              now->deleted_down - was->deleted_down, now->new_up - was->new_up,
              now->flags_up - was->flags_up, now->deleted_up - was->deleted_up,
              now->moved - was->moved);
    ctl_reply(w->req, sb.buf);
    sbuf_free(&sb);
}

/* Answers the waiters of folder (NULL: of a whole pass) with error (NULL:
 * done). */
static void waiters_answer(struct dacct *a, const char *folder, const char *error, bool temporary)
{
    size_t out = 0;
    for (size_t i = 0; i < a->nwaiters; i++) {
        struct waiter *w = &a->waiters[i];
        bool match = folder == NULL ? w->folder == NULL
                                    : (w->folder != NULL && strcmp(w->folder, folder) == 0);
        if (match) {
            reply_result(a, w, error, temporary);
            free(w->folder);
        } else {
            a->waiters[out++] = *w;
        }
    }
    a->nwaiters = out;
}

static void waiters_fail_all(struct dacct *a, const char *error, bool temporary)
{
    for (size_t i = 0; i < a->nwaiters; i++) {
        reply_result(a, &a->waiters[i], error, temporary);
        free(a->waiters[i].folder);
    }
    a->nwaiters = 0;
}

/* ---- syncing one folder, or a new pass ------------------------------------------------------ */

/* A new pass: the session logs out after the folder in progress and a new
 * one starts at once (LIST again: new folders on either side, and
 * LIST-STATUS tells which folders changed). */
static void acct_new_pass(struct dacct *a)
{
    if (acct_ending(a) || a->paused) {
        return;
    }
    if (a->run != NULL) {
        a->restart_after = true;
        engine_close(a->run);
    } else if (a->sup.state == SUP_BACKING_OFF) {
        /* Try now rather than at the end of the back-off. */
        uv_timer_stop(&a->retry_timer);
        acct_start(a);
    }
}

/* Syncs folder on the open session as soon as it can. */
static int64_t local_quiet_since(const char *folder, void *arg, struct local_change **changes_r,
                                 size_t *nchanges_r);

/* CLOCK_REALTIME stepped back (the monotonic clock moved further than it
 * since the last call, t being the real time now): the times recorded
 * before the step, a scan's stamp among them, lie ahead of the clock, so a
 * time taken from then on counts as no earlier than what the clock would
 * have read without the step. Returns that floor (0: no step seen). */
static int64_t clock_floor(int64_t t)
{
    static int64_t last_real, last_mono, floor;
    int64_t mono = (int64_t)uv_hrtime();
    if (last_mono != 0 && t - last_real < mono - last_mono - 1000000000LL) {
        int64_t was = last_real + (mono - last_mono);
        floor = was > floor ? was : floor;
    }
    last_real = t;
    last_mono = mono;
    return floor;
}

/* The real time now, raised to clock_floor. */
static int64_t stepless_now(void)
{
    int64_t t = realtime_ns();
    int64_t floor = clock_floor(t);
    return t > floor ? t : floor;
}

static void acct_want(struct dacct *a, const char *folder)
{
    if (!sync_folder_selected(a->sa, folder)) {
        /* NOTIFY reports every personal folder; one this account does not
         * sync is none of its business (it must not start a new pass). */
        log_debug("%s: %s changed; not a folder this account syncs", a->ca->name, folder);
        return;
    }
    account_mark_dirty(a->account, folder);
    if (a->run == NULL || a->restart_after) {
        return; /* the next pass syncs every folder */
    }
    int r = engine_sync_folder(a->run, folder);
    if (r == -ENOENT && a->run_idle) {
        /* A folder this pass does not know: new on one side. */
        log_debug("%s: %s is not known to this pass; starting a new one", a->ca->name, folder);
        acct_new_pass(a);
    }
}

/* ---- the sync session ----------------------------------------------------------------------- */

static void on_run_phase(enum engine_phase p, void *arg)
{
    struct dacct *a = arg;
    acct_state(a, sup_from_phase(p), NULL);
}

/* glibc keeps memory freed by a job (a folder's base and scan, buffers of
 * the pool threads' own arenas) for reuse; in a process that lives for
 * months and does short bursts of work, that reads as growth (measured:
 * private RSS +2.2 MiB after 1,000 pushed messages, +0.8 MiB with the
 * trim). Trimming once the bursts settle costs well under a millisecond. */
static void on_trim(uv_timer_t *t)
{
    (void)t;
    malloc_trim(0);
}

/* After a sweep (a pass started by poll_interval, or a sweep on the open
 * session): NOTIFY missed new mail in two sweeps in a row -> IDLE. */
static void sweep_verdict(struct dacct *a)
{
    a->notify_misses = a->sweep_missed ? a->notify_misses + 1 : 0;
    if (a->notify_misses >= 2 && !a->notify_off) {
        log_warnx("%s: the server accepted NOTIFY but did not announce new mail, twice: "
                  "IDLE on %s%s from now on, other folders every %u s",
                  a->ca->name, a->nw > 0 ? a->w[0]->folder : "INBOX",
                  a->nw > 1 ? " and the other idle folders" : "", a->ca->poll_interval);
        a->notify_off = true;
        watch_stop(a);
        watch_start(a);
    }
    a->sweep_pass = false;
    a->sweep_missed = false;
}

static void sweep_end(struct dacct *a)
{
    a->sweeping = false;
    a->sweep_listed = false;
    a->passes++;
    a->last_ok = time(NULL);
    sweep_verdict(a);
    log_debug("%s: sweep done", a->ca->name);
}

static void on_run_idle(void *arg)
{
    struct dacct *a = arg;
    bool first = !a->run_idle;
    a->logged_in_once = true;
    a->auth_refetched = false;
    a->run_idle = true;
    a->backoff_ms = 0;
    a->last_ok = time(NULL);
    if (first && a->sweep_pass) {
        sweep_verdict(a);
    }
    if (a->sweeping && a->sweep_listed) {
        sweep_end(a); /* the folders the sweep queued are done */
    }
    if (first) {
        a->sweep_pass = false;
        a->sweep_missed = false;
        a->passes++;
        log_info("%s: in sync; waiting for changes", a->ca->name);
        waiters_answer(a, NULL, a->pass_error, a->pass_error_temporary);
        free(a->pass_error);
        a->pass_error = NULL;
        fs_watch_all(a);
        watch_start(a);
    }
    /* Folders marked while the pass ran and not synced since. */
    size_t n;
    const char *const *dirty = account_dirty(a->account, &n);
    char **copy = xcalloc(n + 1, sizeof(*copy));
    for (size_t i = 0; i < n; i++) {
        copy[i] = xstrdup(dirty[i]);
    }
    for (size_t i = 0; i < n && a->run != NULL && !a->restart_after; i++) {
        int r = engine_sync_folder(a->run, copy[i]);
        if (r == -ENOENT) {
            account_clear_dirty(a->account, copy[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(copy[i]);
    }
    free(copy); /* Memory freed by the jobs goes back to the system once things are
                 * quiet (see on_trim). */
    if (!a->d->stopping) {
        uv_timer_start(&a->d->trim_timer, on_trim, TRIM_DELAY_MS, 0);
    }
}

static void on_poll(uv_timer_t *t);

static bool was_announced(const struct dacct *a, const char *folder)
{
    for (size_t i = 0; i < a->nannounced; i++) {
        if (strcmp(a->announced[i], folder) == 0) {
            return true;
        }
    }
    return false;
}

static void note_announced(struct dacct *a, const char *folder)
{
    if (!a->watch_notify || was_announced(a, folder)) {
        return;
    }
    xgrow(&a->announced, &a->announced_cap, a->nannounced + 1, sizeof(*a->announced));
    a->announced[a->nannounced++] = xstrdup(folder);
}

static void announced_clear(struct dacct *a)
{
    for (size_t i = 0; i < a->nannounced; i++) {
        free(a->announced[i]);
    }
    a->nannounced = 0;
}

static void on_run_folder(const struct engine_folder_result *res, void *arg)
{
    struct dacct *a = arg;
    if (res->started_ns != 0) {
        /* The client's time for the folder, from its job's start on the
         * session to here (tests/bench/push.py reads it). */
        log_debug("%s: %s: folder job took %.1f ms", a->ca->name, res->name,
                  (double)(uv_hrtime() - res->started_ns) / 1e6);
    }
    if (a->sweep_pass && (!a->run_idle || a->sweeping) && a->watch_notify && res->error == NULL &&
        res->counts.new_down > 0 && a->notify_since != 0 && a->notify_since <= a->prev_pass_start &&
        !was_announced(a, res->name)) {
        log_info("%s: %s: %u new message(s) NOTIFY did not announce", a->ca->name, res->name,
                 res->counts.new_down);
        a->sweep_missed = true;
    }
    if (res->error != NULL) {
        log_error("%s: %s", a->ca->name, res->error);
        set_last_error(a, "%s", res->error);
        if (!a->run_idle && a->pass_error == NULL) {
            a->pass_error = xasprintf("%s", res->error);
            a->pass_error_temporary = res->transient;
        }
    } else {
        a->last_ok = time(NULL);
        const struct engine_counts *c = &res->counts;
        if (c->new_down + c->new_up + c->flags_down + c->flags_up + c->deleted_down +
                c->deleted_up + c->moved >
            0) {
            char moved[48] = "";
            if (c->moved > 0) {
                snprintf(moved, sizeof(moved), "; %u moved between folders", c->moved);
            }
            log_info("%s: %s: \xe2\x86\x93 %u new, %u flags, %u deleted; \xe2\x86\x91 %u new, %u "
                     "flags, %u deleted%s",
                     a->ca->name, res->name, c->new_down, c->flags_down, c->deleted_down, c->new_up,
                     c->flags_up, c->deleted_up, moved);
        }
        if (a->hook != NULL && c->new_down > 0) {
            hook_note(a->hook, res->name, c->new_down);
        }
    }
    waiters_answer(a, res->name, res->error, res->transient);
}

static void on_run_dirty(const char *folder, void *arg)
{
    acct_want(arg, folder);
}

static void on_retry(uv_timer_t *t)
{
    acct_start(t->data);
}

static void on_run_done(const struct engine_result *res, void *arg)
{
    struct dacct *a = arg;
    a->run = NULL;
    bool was_idle = a->run_idle;
    a->run_idle = false;
    a->sweeping = false; /* a sweep ends with its session */
    a->sweep_listed = false;
    bool restart = a->restart_after;
    a->restart_after = false;
    /* Folder errors were logged as each folder ended (on_run_folder). */
    if (!was_idle && res->kind == SYNC_OK && res->folder_errors == 0) {
        /* A pass that ended without reaching idle (a new pass asked for
         * during the first one) still counts. */
        a->last_ok = time(NULL);
    }
    if (res->error != NULL) {
        log_error("%s: %s", a->ca->name, res->error);
        set_last_error(a, "%s", res->error);
    }
    if (acct_ending(a)) {
        waiters_fail_all(a, a->retiring ? "the account was reconfigured" : "the daemon is stopping",
                         true);
        acct_state(a, SUP_DISCONNECTED, "stopping");
        acct_maybe_done(a);
        return;
    }
    if (a->paused) {
        waiters_fail_all(a, "paused", false);
        acct_state(a, SUP_PAUSED, NULL);
        return;
    }
    if (res->kind == SYNC_AUTH && a->sa->password_command != NULL && a->logged_in_once &&
        !a->auth_refetched) {
        /* Credentials that worked before, from a command: an OAuth2 access
         * token expires within the hour, a password manager's entry may
         * have changed. The refused secret is forgotten (the engine said
         * so to the account): one new attempt with a fresh one, at once;
         * refused again, the account waits for the user. */
        a->auth_refetched = true;
        log_info("%s: the server refused credentials that worked before; running "
                 "password_command again and retrying once",
                 a->ca->name);
        acct_start(a);
        return;
    }
    if (res->kind == SYNC_AUTH) {
        waiters_fail_all(a, res->error != NULL ? res->error : "login refused", false);
        watch_stop(a);
        acct_state(a, SUP_FAILED_AUTH,
                   "the server refused the credentials; 'mailsync' control command 'retry' "
                   "tries again");
        log_error("%s: not retrying: the server refused the login (fix the password, then "
                  "send 'retry %s' on the control socket or restart the daemon)",
                  a->ca->name, a->ca->name);
        return;
    }
    if (restart && res->kind == SYNC_OK) {
        acct_start(a); /* its first pass answers the waiters */
        return;
    }
    /* The session ended by itself: a dropped connection, a server that
     * went away, a failure the next attempt may not have. Every request
     * waiting for it hears so now, not when the network comes back. */
    waiters_fail_all(a, res->error != NULL ? res->error : "the session ended",
                     res->kind == SYNC_TRANSIENT || res->kind == SYNC_OK);
    a->backoff_ms = a->backoff_ms == 0 ? BACKOFF_MIN_MS : a->backoff_ms * 2;
    if (a->backoff_ms > BACKOFF_MAX_MS) {
        a->backoff_ms = BACKOFF_MAX_MS;
    }
    unsigned wait = jitter(a->backoff_ms);
    char why[96];
    snprintf(why, sizeof(why), "trying again in %.1f s", wait / 1000.0);
    acct_state(a, SUP_BACKING_OFF, why);
    uv_timer_start(&a->retry_timer, on_retry, wait, 0);
}

static void on_pop_done(const struct popsync_result *res, void *arg)
{
    struct dacct *a = arg;
    a->pop = NULL;
    if (!a->d->stopping) {
        uv_timer_start(&a->d->trim_timer, on_trim, TRIM_DELAY_MS, 0);
    }
    if (res->kind == SYNC_OK) {
        a->last_ok = time(NULL);
        a->backoff_ms = 0;
        if (res->downloaded > 0) {
            log_info("%s: \xe2\x86\x93 %u new", a->ca->name, res->downloaded);
            if (a->hook != NULL) {
                hook_note(a->hook, "INBOX", res->downloaded);
            }
        }
    } else {
        log_error("%s: %s", a->ca->name, res->error != NULL ? res->error : "failed");
        set_last_error(a, "%s", res->error != NULL ? res->error : "failed");
    }
    waiters_answer(a, NULL, res->kind == SYNC_OK ? NULL : (res->error ? res->error : "failed"),
                   res->kind == SYNC_TRANSIENT);
    if (acct_ending(a)) {
        acct_state(a, SUP_DISCONNECTED, "stopping");
        acct_maybe_done(a);
        return;
    }
    if (res->kind == SYNC_AUTH) {
        acct_state(a, SUP_FAILED_AUTH, "the server refused the credentials");
        return;
    }
    a->passes++;
    acct_state(a, SUP_IDLE, NULL);
    uv_timer_start(&a->poll_timer, on_poll, (uint64_t)a->ca->poll_interval * 1000, 0);
}

static void acct_start(struct dacct *a)
{
    if (acct_ending(a) || a->paused || a->run != NULL || a->pop != NULL) {
        return;
    }
    uv_timer_stop(&a->retry_timer);
    acct_state(a, SUP_CONNECTING, NULL);
    a->prev_pass_start = a->pass_start;
    a->pass_start = time(NULL);
    free(a->pass_error);
    a->pass_error = NULL;
    announced_clear(a);
    if (!a->imap) {
        struct popsync_opts po = {0};
        int r = popsync_start(&a->d->loop, a->sa, &po, on_pop_done, a, &a->pop);
        if (r < 0) {
            a->pop = NULL;
            set_last_error(a, "cannot start: %s", strerror(-r));
            acct_state(a, SUP_BACKING_OFF, NULL);
            uv_timer_start(&a->retry_timer, on_retry, BACKOFF_MAX_MS, 0);
        }
        return;
    }
    struct engine_opts eo = {
        .stay_open = true,
        /* Watchers stay up across passes: lanes fit in what they leave. */
        .reserved_connections = watch_reserved(a),
        .on_idle = on_run_idle,
        .on_folder_done = on_run_folder,
        .report_every_folder = true, /* new mail of the first pass runs the hook too */
        .on_dirty = on_run_dirty,
        .on_phase = on_run_phase,
        .local_quiet_since = local_quiet_since,
        .session_arg = a,
        .account = a->account,
    };
    int r = engine_start(&a->d->loop, a->sa, &eo, on_run_done, a, &a->run);
    if (r < 0) {
        a->run = NULL;
        set_last_error(a, "cannot start: %s", strerror(-r));
        acct_state(a, SUP_BACKING_OFF, NULL);
        uv_timer_start(&a->retry_timer, on_retry, BACKOFF_MAX_MS, 0);
        return;
    }
    uv_timer_start(&a->poll_timer, on_poll, (uint64_t)a->ca->poll_interval * 1000, 0);
}

static void on_sweep(enum engine_sweep_result res, unsigned n, void *arg)
{
    struct dacct *a = arg;
    if (res == ENGINE_SWEEP_NEW_PASS) {
        a->sweeping = false;
        log_debug("%s: poll_interval: the folder list changed; a new pass", a->ca->name);
        acct_new_pass(a); /* sweep_pass stays: the pass is the sweep */
        return;
    }
    if (n == 0 || (a->run != NULL && engine_is_idle(a->run))) {
        sweep_end(a); /* nothing queued, or all of it done already */
    } else {
        a->sweep_listed = true; /* ends when the session is idle again */
    }
}

static void on_poll(uv_timer_t *t)
{
    struct dacct *a = t->data;
    if (a->imap && a->run != NULL && a->run_idle && !a->restart_after && !a->fs_partial &&
        !a->sweeping) {
        /* On the open session: LIST-STATUS tells which folders moved. */
        uv_timer_start(&a->poll_timer, on_poll, (uint64_t)a->ca->poll_interval * 1000, 0);
        int r = engine_sweep(a->run, on_sweep, a);
        if (r == 0) {
            log_debug("%s: poll_interval: a sweep on the open session", a->ca->name);
            a->sweeping = true;
            a->sweep_pass = true;
            a->sweep_missed = false;
            a->prev_pass_start = a->pass_start;
            a->pass_start = time(NULL);
            announced_clear(a);
            return;
        }
        if (r == -EBUSY) {
            /* Folders are being synced: sweep once they are done. */
            uv_timer_start(&a->poll_timer, on_poll, SWEEP_BUSY_RETRY_MS, 0);
            return;
        }
    }
    if (a->imap) {
        /* Re-armed by acct_start; a session in back-off keeps its timer. */
        log_debug("%s: poll_interval: a new pass", a->ca->name);
        a->sweep_pass = a->run != NULL;
        acct_new_pass(a);
        if (a->run == NULL) {
            uv_timer_start(&a->poll_timer, on_poll, (uint64_t)a->ca->poll_interval * 1000, 0);
        }
    } else {
        acct_start(a);
    }
}

/* ---- local changes -------------------------------------------------------------------------- */

static void on_local_timer(uv_timer_t *t)
{
    struct dacct *a = t->data;
    size_t n;
    const char *const *dirty = account_dirty(a->account, &n);
    char **copy = xcalloc(n + 1, sizeof(*copy));
    for (size_t i = 0; i < n; i++) {
        copy[i] = xstrdup(dirty[i]);
    }
    for (size_t i = 0; i < n; i++) {
        acct_want(a, copy[i]);
        free(copy[i]);
    }
    free(copy);
}

/* How far back the watches vouch for a folder (local_quiet_since): the
 * poll interval, a minute at least. inotify drops events when its queue
 * overflows, without a word through libuv, so a change it lost is found
 * by a scan within that time. */
static int64_t local_window_ns(const struct dacct *a)
{
    unsigned window = a->ca->poll_interval > 60 ? a->ca->poll_interval : 60;
    return (int64_t)window * 1000000000LL;
}

static bool names_have(const struct fswatch *w, const char *filename)
{
    size_t ls = strlen(w->sub);
    for (size_t i = 0; i < w->nnames; i++) {
        const char *n = w->names[i].name;
        if (strncmp(n, w->sub, ls) == 0 && n[ls] == '/' && strcmp(n + ls + 1, filename) == 0) {
            return true;
        }
    }
    return false;
}

/* Another program changed the file name in w's directory: kept for
 * local_quiet_since, which names it to the folder job so that only that
 * file is looked at. Names older than the window go; past
 * LOCAL_NAMES_MAX, or without a name, the watch vouches only for the time
 * after this change (foreign_ns) and the job scans. */
static void note_foreign(struct fswatch *w, const char *filename)
{
    int64_t now = stepless_now();
    int64_t oldest = now - local_window_ns(w->a);
    size_t keep = 0;
    for (size_t i = 0; i < w->nnames; i++) {
        if (w->names[i].at_ns >= oldest) {
            w->names[keep++] = w->names[i];
        } else {
            free(w->names[i].name);
        }
    }
    w->nnames = keep;
    if (filename == NULL || *filename == '\0' ||
        (w->nnames >= LOCAL_NAMES_MAX && !names_have(w, filename))) {
        if (w->nnames > 0) {
            log_debug("%s: %s: more files in %s/ changed by another program than a watch keeps the "
                      "names of (%d): the next sync reads the folder",
                      w->a->ca->name, w->folder, w->sub, LOCAL_NAMES_MAX);
        }
        w->foreign_ns = now;
        local_changes_free(w->names, w->nnames);
        w->names = NULL;
        w->nnames = w->names_cap = 0;
        return;
    }
    char *name = xasprintf("%s/%s", w->sub, filename);
    for (size_t i = 0; i < w->nnames; i++) {
        if (strcmp(w->names[i].name, name) == 0) {
            /* Named again (mutt toggling a flag): once, at its latest. */
            w->names[i].at_ns = now;
            free(name);
            return;
        }
    }
    xgrow(&w->names, &w->names_cap, w->nnames + 1, sizeof(*w->names));
    w->names[w->nnames].at_ns = now;
    w->names[w->nnames].name = name;
    w->nnames++;
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct fswatch *w = h->data;
    struct dacct *a = w->a;
    if (status < 0) {
        w->blind = true; /* events may be missing from now on */
    }
    if (status < 0 || acct_ending(a)) {
        return;
    }
    if (w->folder == NULL) {
        /* The Maildir root: a folder created or removed locally. Files
         * there (INBOX's own new/ and cur/ in the Maildir++ layout) are
         * watched on their own. */
        if (filename != NULL && (strcmp(filename, "new") == 0 || strcmp(filename, "cur") == 0 ||
                                 strcmp(filename, "tmp") == 0)) {
            return;
        }
        log_debug("%s: the Maildir root changed (%s); a new pass", a->ca->name,
                  filename != NULL ? filename : "?");
        acct_new_pass(a);
        return;
    }
    /* A file this daemon's own folder job created, renamed or removed
     * (store/echo.h): the job that did it has the folder as it is. */
    if (md_echo_take(w->path, filename, (events & UV_RENAME) != 0)) {
        return;
    }
    note_foreign(w, filename);
    account_mark_dirty(a->account, w->folder);
    if (!uv_is_active((uv_handle_t *)&a->local_timer)) {
        uv_timer_start(&a->local_timer, on_local_timer,
                       a->ca->local_delay > 0 ? (uint64_t)a->ca->local_delay * 1000 : 50, 0);
    }
}

static void on_fswatch_closed(uv_handle_t *h)
{
    struct fswatch *w = h->data;
    struct dacct *a = w->a;
    free(w->folder);
    free(w->path);
    local_changes_free(w->names, w->nnames);
    free(w);
    a->open_handles--;
    acct_maybe_done(a);
}

static void fs_watch(struct dacct *a, const char *path, const char *folder, const char *sub)
{
    struct fswatch *w = xcalloc(1, sizeof(*w));
    w->a = a;
    w->sub = sub;
    w->folder = folder != NULL ? xstrdup(folder) : NULL;
    w->path = xstrdup(path);
    uv_fs_event_init(&a->d->loop, &w->h);
    w->h.data = w;
    a->open_handles++;
    struct stat before, after;
    bool known = stat(path, &before) == 0;
    int r = uv_fs_event_start(&w->h, on_fs_event, path, 0);
    w->since_ns = stepless_now();
    /* The directory watched is the one the path names before and after
     * the watch began, or the watch vouches for nothing. */
    w->blind = !known || stat(path, &after) != 0 || after.st_dev != before.st_dev ||
               after.st_ino != before.st_ino;
    w->dev = before.st_dev;
    w->ino = before.st_ino;
    if (r < 0) {
        log_warnx("%s: cannot watch %s for changes (%s); the poll sweep every %u s finds them",
                  a->ca->name, path, uv_strerror(r), a->ca->poll_interval);
        uv_close((uv_handle_t *)&w->h, on_fswatch_closed);
        return;
    }
    xgrow(&a->fsw, &a->fsw_cap, a->nfsw + 1, sizeof(*a->fsw));
    a->fsw[a->nfsw++] = w;
}

static void fs_unwatch_all(struct dacct *a)
{
    for (size_t i = 0; i < a->nfsw; i++) {
        uv_fs_event_stop(&a->fsw[i]->h);
        uv_close((uv_handle_t *)&a->fsw[i]->h, on_fswatch_closed);
    }
    a->nfsw = 0;
}

/* engine_opts.local_quiet_since: the folder's new/ and cur/ have been
 * watched since, and no other program changed them after, the time
 * returned, except the files named in *changes_r. Never further back than
 * the poll interval, a minute at least (local_window_ns). */
static int64_t local_quiet_since(const char *folder, void *arg, struct local_change **changes_r,
                                 size_t *nchanges_r)
{
    struct dacct *a = arg;
    int64_t since = 0;
    unsigned found = 0;
    bool stale = false;
    *changes_r = NULL;
    *nchanges_r = 0;
    for (size_t i = 0; i < a->nfsw; i++) {
        const struct fswatch *w = a->fsw[i];
        if (w->folder != NULL && strcmp(w->folder, folder) == 0) {
            struct stat st;
            if (w->blind || stat(w->path, &st) != 0 || st.st_dev != w->dev || st.st_ino != w->ino) {
                /* The directory was replaced (another program's mv or
                 * restore): the watch follows the old one. */
                stale = !w->blind;
                found = 0;
                break;
            }
            found++;
            since = w->since_ns > since ? w->since_ns : since;
            since = w->foreign_ns > since ? w->foreign_ns : since;
        }
    }
    if (stale) {
        log_debug("%s: %s: a watched directory was replaced; watching again", a->ca->name, folder);
        fs_watch_all(a);
    }
    if (found != 2) {
        return 0; /* new/ or cur/ not watched, or not as it is now */
    }
    int64_t now = realtime_ns();
    int64_t oldest = now - local_window_ns(a);
    since = since > oldest ? since : oldest;
    int64_t floor = clock_floor(now);
    since = since > floor ? since : floor;
    struct local_change *c = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < a->nfsw; i++) {
        const struct fswatch *w = a->fsw[i];
        if (w->folder == NULL || strcmp(w->folder, folder) != 0) {
            continue;
        }
        for (size_t k = 0; k < w->nnames; k++) {
            if (w->names[k].at_ns >= since) {
                xgrow(&c, &cap, n + 1, sizeof(*c));
                c[n].at_ns = w->names[k].at_ns;
                c[n].name = xstrdup(w->names[k].name);
                n++;
            }
        }
    }
    *changes_r = c;
    *nchanges_r = n;
    return since;
}

/* Watches the Maildir root and every selected local folder's new/ and
 * cur/ (again after each new pass: folders come and go). */
static void fs_watch_all(struct dacct *a)
{
    fs_unwatch_all(a);
    /* The store's notes of its changes so far: their events went to no
     * watch (the first pass ran before any), and must not take another
     * program's change to the same path for its own. */
    md_echo_drop(a->sa->maildir);
    fs_watch(a, a->sa->maildir, NULL, NULL);
    char **names = NULL;
    size_t n = 0;
    if (md_list_folders(a->sa->maildir, a->sa->layout, &names, &n) < 0) {
        return;
    }
    size_t watched = 0;
    for (size_t i = 0; i < n && watched < MAX_WATCHED_FOLDERS; i++) {
        if (!sync_folder_selected(a->sa, names[i])) {
            continue;
        }
        char *path = NULL;
        if (md_folder_local_path(a->sa->maildir, a->sa->layout, names[i], &path) < 0) {
            continue;
        }
        /* Joined as the store joins them (store/echo.h compares paths). */
        char *sub = path_join(path, "new");
        fs_watch(a, sub, names[i], "new");
        free(sub);
        sub = path_join(path, "cur");
        fs_watch(a, sub, names[i], "cur");
        free(sub);
        free(path);
        watched++;
    }
    a->fs_partial = watched == MAX_WATCHED_FOLDERS;
    if (a->fs_partial) {
        log_info("%s: more than %d folders: local changes beyond them are found by the sweep "
                 "every %u s",
                 a->ca->name, MAX_WATCHED_FOLDERS, a->ca->poll_interval);
    }
    md_free_names(names, n);
}

/* ---- the watchers --------------------------------------------------------------------------- */

/* Watcher slot 0 is the primary: NOTIFY when the server offers it (then it
 * alone hears every folder), else IDLE on the first `idle:` folder. Slots 1
 * and up IDLE on the other `idle:` folders, only while NOTIFY is not in use
 * and only within the account's budget (max_connections less the sync
 * session, lowered when the server refuses a connection for its limit). */

static void watch_retry_later(struct watcher *w)
{
    w->backoff_ms = w->backoff_ms == 0 ? BACKOFF_MIN_MS : w->backoff_ms * 2;
    if (w->backoff_ms > BACKOFF_MAX_MS) {
        w->backoff_ms = BACKOFF_MAX_MS;
    }
}

static void on_watch_timer(uv_timer_t *t);
static void w_start(struct watcher *w);
static void w_stop(struct watcher *w);

/* How many watchers the account may run now. */
static unsigned watch_allowed(const struct dacct *a)
{
    unsigned n = a->sa->max_connections > 1 ? a->sa->max_connections - 1 : 0;
    if (n > a->watch_budget) {
        n = a->watch_budget;
    }
    if (a->watch_notify || a->nw == 0 || !a->w[0]->idling) {
        /* NOTIFY on the primary hears every folder; until the primary is
         * up it is not known whether the others are needed. */
        n = n > 1 ? 1 : n;
    }
    return n < a->nw ? n : a->nw;
}

static void watch_start(struct dacct *a)
{
    if (acct_ending(a) || a->paused) {
        return;
    }
    unsigned allowed = watch_allowed(a);
    for (unsigned i = 0; i < a->nw; i++) {
        if (i < allowed) {
            w_start(a->w[i]);
        } else if (i > 0) {
            w_stop(a->w[i]);
        }
    }
    if (!a->watch_budget_noted && !a->watch_notify && allowed < a->nw && allowed > 0 && a->nw > 1) {
        a->watch_budget_noted = true;
        log_info(
            "%s: idle names %u folders but %u connection%s left for watchers "
            "(max_connections %u, less the sync session): %s and the rest are swept every %u s",
            a->ca->name, a->nw, allowed, allowed == 1 ? " is" : "s are", a->sa->max_connections,
            a->w[allowed]->folder, a->ca->poll_interval);
    }
}

static void watch_stop(struct dacct *a)
{
    for (unsigned i = 0; i < a->nw; i++) {
        w_stop(a->w[i]);
    }
    a->watch_notify = false;
}

static void w_drop(struct watcher *w, const char *why)
{
    struct dacct *a = w->a;
    if (w->im != NULL) {
        imap_free(w->im);
        w->im = NULL;
    }
    w->idling = false;
    if (w->slot == 0) {
        a->watch_notify = false; /* asked again on the next connection */
    }
    if (acct_ending(a) || a->paused || a->sup.state == SUP_FAILED_AUTH) {
        return;
    }
    watch_retry_later(w);
    unsigned wait = jitter(w->backoff_ms);
    log_info("%s: %s; again in %.1f s (the poll sweep covers the gap)", w->name, why,
             wait / 1000.0);
    uv_timer_start(&w->timer, on_watch_timer, wait, 0);
}

static void on_watch_idle_done(struct imap *im, const struct imap_result *res, void *arg);

static void w_idle(struct watcher *w)
{
    if (imap_idle_start(w->im, on_watch_idle_done, w) < 0) {
        w_drop(w, "cannot start IDLE");
        return;
    }
    w->idling = true;
    w->backoff_ms = 0;
    uv_timer_start(&w->timer, on_watch_timer, (uint64_t)w->a->ca->idle_restart * 1000, 0);
}

static void on_watch_idle_done(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct watcher *w = arg;
    w->idling = false;
    if (res->err < 0 || w->im == NULL) {
        return; /* on_watch_error follows */
    }
    if (res->status != IMAP_STATUS_OK) {
        w_drop(w, "IDLE refused");
        return;
    }
    if (!acct_ending(w->a)) {
        w_idle(w); /* ended for the restart timer, or by the server */
    }
}

static void on_watch_timer(uv_timer_t *t)
{
    struct watcher *w = t->data;
    if (w->im == NULL) {
        w_start(w);
    } else if (w->idling) {
        /* NAT boxes drop silent flows; RFC 2177 servers end IDLE after
         * 30 min: DONE (answered within IMAP_QUICK_REPLY_MS, or the
         * connection is reopened) and IDLE again. */
        imap_idle_stop(w->im);
    }
}

static void on_watch_select(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct watcher *w = arg;
    if (res->err < 0 || w->im == NULL) {
        return;
    }
    if (res->status != IMAP_STATUS_OK) {
        char why[128];
        snprintf(why, sizeof(why), "EXAMINE %s refused", w->folder);
        w_drop(w, why);
        return;
    }
    w_idle(w);
    if (w->slot == 0 && !w->a->watch_notify) {
        watch_start(w->a); /* no NOTIFY: the other idle folders get theirs */
    }
}

static void w_examine(struct watcher *w)
{
    struct imap_select_opts so = {.readonly = true};
    if (imap_select(w->im, w->folder, &so, on_watch_select, w) < 0) {
        w_drop(w, "cannot EXAMINE its folder");
    }
}

/* The NOTIFY event sets, tried in order: a server may refuse FlagChange
 * outside the selected folder ([BADEVENT]), or MailboxName. */
static const char *const notify_specs[] = {
    "SET (SELECTED (MessageNew MessageExpunge FlagChange)) (PERSONAL (MessageNew MessageExpunge "
    "FlagChange MailboxName))",
    "SET (SELECTED (MessageNew MessageExpunge FlagChange)) (PERSONAL (MessageNew "
    "MessageExpunge))",
};

static void w_notify(struct watcher *w);

static void on_watch_notify(struct imap *im, const struct imap_result *res, void *arg)
{
    (void)im;
    struct watcher *w = arg;
    struct dacct *a = w->a;
    if (res->err < 0 || w->im == NULL) {
        return;
    }
    if (res->status == IMAP_STATUS_OK) {
        a->watch_notify = true;
        a->notify_since = time(NULL);
        log_debug("%s: NOTIFY set: every folder is announced", w->name);
        watch_start(a); /* the IDLE-only watchers are not needed */
        w_examine(w);
        return;
    }
    a->notify_try++;
    if (a->notify_try < ARRAY_SIZE(notify_specs)) {
        w_notify(w);
        return;
    }
    log_info("%s: the server refused NOTIFY (%s): IDLE on %s%s, other folders every %u s",
             a->ca->name, res->text != NULL ? res->text : "", w->folder,
             a->nw > 1 ? " and the other idle folders" : "", a->ca->poll_interval);
    w_examine(w);
}

static void w_notify(struct watcher *w)
{
    if (imap_notify(w->im, notify_specs[w->a->notify_try], on_watch_notify, w) < 0) {
        w_examine(w);
    }
}

static void on_watch_ready(struct imap *im, void *arg)
{
    struct watcher *w = arg;
    struct dacct *a = w->a;
    if (!(imap_caps(im) & IMAP_CAP_IDLE)) {
        if (w->slot == 0) {
            log_info("%s: the server has no IDLE: changes are found by the sweep every %u s",
                     a->ca->name, a->ca->poll_interval);
        }
        imap_free(w->im);
        w->im = NULL;
        return;
    }
    if (w->slot == 0 && (imap_caps(im) & IMAP_CAP_NOTIFY) && !a->notify_off) {
        a->notify_try = 0;
        w_notify(w);
        return;
    }
    w_examine(w);
}

static void on_watch_error(struct imap *im, int err, const char *msg, void *arg)
{
    (void)im;
    struct watcher *w = arg;
    struct dacct *a = w->a;
    if (err == IMAP_EAUTH) {
        account_secret_refused(a->account);
    }
    if (err == IMAP_ELIMIT) {
        /* Retrying would only take a connection the user's other clients
         * (or the sync session) need: the budget is what is open now. */
        a->watch_budget = w->slot;
        imap_free(w->im);
        w->im = NULL;
        w->idling = false;
        if (w->slot == 0) {
            a->watch_notify = false;
            log_warnx("%s: %s: no watcher connection; changes on the server are found by the "
                      "sweep every %u s (raise the server's limit, or set max_connections: 1 to "
                      "say so)",
                      a->ca->name, msg != NULL ? msg : "connection refused", a->ca->poll_interval);
        } else {
            log_warnx("%s: %s: the server allows %u watcher connection%s: %s is swept every %u s",
                      w->name, msg != NULL ? msg : "connection refused", a->watch_budget,
                      a->watch_budget == 1 ? "" : "s", w->folder, a->ca->poll_interval);
        }
        watch_start(a); /* stops the slots above the budget */
        return;
    }
    w_drop(w, msg != NULL ? msg : "connection lost");
}

static void on_watch_event(struct imap *im, const struct imap_event *ev, void *arg)
{
    (void)im;
    struct watcher *w = arg;
    struct dacct *a = w->a;
    switch (ev->type) {
    case IMAP_EV_EXISTS:
    case IMAP_EV_EXPUNGE:
    case IMAP_EV_VANISHED:
    case IMAP_EV_FETCH:
    case IMAP_EV_UIDVALIDITY:
        log_debug("%s: %s changed", w->name, w->folder);
        note_announced(a, w->folder);
        if (a->run != NULL && (ev->type == IMAP_EV_EXPUNGE || ev->type == IMAP_EV_VANISHED)) {
            engine_note_server(a->run, w->folder, NULL, true);
        }
        acct_want(a, w->folder);
        break;
    case IMAP_EV_STATUS:
        /* NOTIFY: another folder changed. */
        if (ev->status != NULL && ev->status->folder != NULL) {
            log_debug("%s: %s changed", w->name, ev->status->folder);
            note_announced(a, ev->status->folder);
            if (a->run != NULL) {
                engine_note_server(a->run, ev->status->folder, ev->status, false);
            }
            acct_want(a, ev->status->folder);
        }
        break;
    case IMAP_EV_MAILBOX:
        /* NOTIFY: a folder was created, renamed or deleted. */
        log_debug("%s: folder %s created, renamed or deleted; a new pass", w->name, ev->text);
        acct_new_pass(a);
        break;
    default:
        break;
    }
}

static const struct imap_cb watch_cb = {
    .on_ready = on_watch_ready,
    .on_error = on_watch_error,
    .on_event = on_watch_event,
};

static void on_watch_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct watcher *w = arg;
    w->wait = NULL;
    if (err < 0) {
        w_drop(w, msg != NULL ? msg : "no password");
        return;
    }
    struct imap_opts io;
    sync_imap_opts(w->a->sa, secret, &io);
    io.log_name = w->name;
    if (imap_connect(&w->a->d->loop, &io, &watch_cb, w, &w->im) < 0) {
        w->im = NULL;
        w_drop(w, "cannot connect");
    }
}

static void w_start(struct watcher *w)
{
    struct dacct *a = w->a;
    if (w->im != NULL || w->wait != NULL || acct_ending(a) || a->paused) {
        return;
    }
    uv_timer_stop(&w->timer);
    if (account_secret(a->account, on_watch_secret, w, &w->wait) < 0) {
        w->wait = NULL;
    }
}

static void w_stop(struct watcher *w)
{
    uv_timer_stop(&w->timer);
    if (w->wait != NULL) {
        account_secret_cancel(w->wait);
        w->wait = NULL;
    }
    if (w->im != NULL) {
        imap_free(w->im);
        w->im = NULL;
    }
    w->idling = false;
}

/* Whether any watcher is set up or waiting to be (for a recheck). */
static bool watch_any(const struct dacct *a)
{
    for (unsigned i = 0; i < a->nw; i++) {
        const struct watcher *w = a->w[i];
        if (w->im != NULL || w->wait != NULL || uv_is_active((const uv_handle_t *)&w->timer)) {
            return true;
        }
    }
    return false;
}

/* What status says of push: "notify", "idle" or "poll", and (text) the
 * folders IDLEd on. */
static const char *watch_push(const struct dacct *a, struct sbuf *folders)
{
    if (!a->imap) {
        return "poll";
    }
    if (a->nw > 0 && a->w[0]->idling && a->watch_notify) {
        return "notify";
    }
    const char *push = "poll";
    for (unsigned i = 0; i < a->nw; i++) {
        if (a->w[i]->idling) {
            if (folders != NULL) {
                sbuf_adds(folders, push[0] == 'i' ? ", " : "");
                sbuf_adds(folders, a->w[i]->folder);
            }
            push = "idle";
        }
    }
    return push;
}

/* Watcher connections open, opening or waiting to reopen: what a new
 * pass's lanes must leave of max_connections. */
static unsigned watch_reserved(const struct dacct *a)
{
    unsigned n = 0;
    for (unsigned i = 0; i < a->nw; i++) {
        const struct watcher *w = a->w[i];
        n += w->im != NULL || w->wait != NULL || uv_is_active((const uv_handle_t *)&w->timer);
    }
    return n;
}

static unsigned watch_connections(const struct dacct *a)
{
    unsigned n = 0;
    for (unsigned i = 0; i < a->nw; i++) {
        n += a->w[i]->im != NULL;
    }
    return n;
}

/* ---- control requests ----------------------------------------------------------------------- */

static struct dacct *find_acct(struct daemon *d, const char *name)
{
    for (size_t i = 0; i < d->naccts; i++) {
        if (strcmp(d->accts[i]->ca->name, name) == 0) {
            return d->accts[i];
        }
    }
    return NULL;
}

static void json_time(struct sbuf *sb, const char *key, time_t t)
{
    if (t == 0) {
        sbuf_addf(sb, ",\"%s\":null", key);
    } else {
        sbuf_addf(sb, ",\"%s\":%lld", key, (long long)t);
    }
}

static void fmt_when(char *buf, size_t cap, time_t t)
{
    if (t == 0) {
        snprintf(buf, cap, "never");
        return;
    }
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

/* `status text`: the same as lines for a terminal, in {"ok":true,"text":...}. */
static void ctl_status_text(struct daemon *d, struct ctl_req *req)
{
    struct sbuf t = {0};
    sbuf_addf(&t, "daemon running (pid %d)\n", (int)getpid());
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        const struct account_totals *tt = account_totals(a->account);
        char when[32];
        fmt_when(when, sizeof(when), a->last_ok);
        struct sbuf idled = {0};
        const char *push = watch_push(a, &idled);
        sbuf_addf(
            &t, "%s: %s, %s%s, last sync %s; since start \xe2\x86\x93 %u new, \xe2\x86\x91 %u new",
            a->ca->name, sup_name(a->sup.state),
            push[0] == 'n'   ? "NOTIFY on every folder"
            : push[0] == 'i' ? "IDLE on "
                             : "polling",
            push[0] == 'i' ? idled.buf : "", when, tt->new_down, tt->new_up);
        sbuf_free(&idled);
        if (account_ndirty(a->account) > 0) {
            sbuf_addf(&t, "; %zu folders waiting", account_ndirty(a->account));
        }
        sbuf_addc(&t, '\n');
        if (a->last_error != NULL) {
            fmt_when(when, sizeof(when), a->last_error_at);
            sbuf_addf(&t, "  last error (%s): %s\n", when, a->last_error);
        }
    }
    struct sbuf sb = {0};
    sbuf_adds(&sb, "{\"ok\":true,\"text\":");
    sbuf_add_json(&sb, t.buf);
    sbuf_addc(&sb, '}');
    ctl_reply(req, sb.buf);
    sbuf_free(&sb);
    sbuf_free(&t);
}

static void ctl_status(struct daemon *d, struct ctl_req *req)
{
    struct sbuf sb = {0};
    sbuf_addf(&sb, "{\"ok\":true,\"daemon\":true,\"pid\":%d,\"accounts\":[", (int)getpid());
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        const struct account_totals *t = account_totals(a->account);
        sbuf_adds(&sb, i > 0 ? ",{\"name\":" : "{\"name\":");
        sbuf_add_json(&sb, a->ca->name);
        sbuf_addf(&sb, ",\"protocol\":\"%s\",\"state\":", a->imap ? "imap" : "pop3");
        sbuf_add_json(&sb, sup_name(a->sup.state));
        sbuf_addf(&sb, ",\"push\":\"%s\",\"connections\":%u", watch_push(a, NULL),
                  (a->run != NULL || a->pop != NULL ? 1u : 0u) + watch_connections(a));
        json_time(&sb, "last_sync", a->last_ok);
        sbuf_adds(&sb, ",\"last_error\":");
        if (a->last_error != NULL) {
            sbuf_add_json(&sb, a->last_error);
        } else {
            sbuf_adds(&sb, "null");
        }
        json_time(&sb, "last_error_at", a->last_error_at);
        sbuf_addf(&sb,
                  ",\"pending_local\":%zu,\"passes\":%u,\"folder_syncs\":%u,\"logins\":%u,"
                  "\"new_down\":%u,\"new_up\":%u,\"flags_down\":%u,\"flags_up\":%u,"
                  "\"deleted_down\":%u,\"deleted_up\":%u,\"moved\":%u}",
                  account_ndirty(a->account), a->passes, t->runs, t->logins, t->new_down, t->new_up,
                  t->flags_down, t->flags_up, t->deleted_down, t->deleted_up, t->moved);
    }
    sbuf_adds(&sb, "]}");
    ctl_reply(req, sb.buf);
    sbuf_free(&sb);
}

/* Starts an account that is stopped (a refused login, or backing off) at
 * once; one that runs is left alone. */
static void acct_retry(struct dacct *a)
{
    if (a->run == NULL && a->pop == NULL && !acct_ending(a) && !a->paused) {
        a->backoff_ms = 0;
        uv_timer_stop(&a->retry_timer);
        acct_start(a);
    }
}

static void ctl_sync(struct daemon *d, struct ctl_req *req, int argc, char *const *argv)
{
    if (argc == 1) {
        /* Every account: answered at once; the passes run. */
        for (size_t i = 0; i < d->naccts; i++) {
            acct_new_pass(d->accts[i]);
            if (d->accts[i]->run == NULL && !d->accts[i]->imap) {
                acct_start(d->accts[i]);
            }
        }
        ctl_reply(req, "{\"ok\":true,\"started\":true}");
        return;
    }
    struct dacct *a = find_acct(d, argv[1]);
    if (a == NULL) {
        ctl_reply_error(req, "no account named '%s'", argv[1]);
        return;
    }
    if (a->paused) {
        ctl_reply_error(req, "account '%s' is %s", a->ca->name, sup_name(a->sup.state));
        return;
    }
    if (a->sup.state == SUP_FAILED_AUTH) {
        /* `mailsync sync ACCOUNT` after fixing the password: try again,
         * answered when the new pass is done (or refused again). */
        log_info("%s: asked to sync after a refused login: trying again", a->ca->name);
        waiter_add(a, req, argc >= 3 && a->imap ? argv[2] : NULL);
        acct_retry(a);
        return;
    }
    if (argc >= 3 && a->imap) {
        waiter_add(a, req, argv[2]);
        if (a->run != NULL && a->run_idle) {
            int r = engine_sync_folder(a->run, argv[2]);
            if (r < 0) {
                waiters_answer(a, argv[2], r == -ENOENT ? "no such folder is synced" : strerror(-r),
                               NULL);
            }
        } else {
            acct_want(a, argv[2]);
        }
        return;
    }
    waiter_add(a, req, NULL);
    if (a->imap) {
        acct_new_pass(a);
    } else {
        uv_timer_stop(&a->poll_timer);
        acct_start(a);
    }
}

static void ctl_reload(struct daemon *d, struct ctl_req *req);

static void on_ctl(struct ctl_req *req, void *arg)
{
    struct daemon *d = arg;
    int argc = ctl_req_argc(req);
    char *const *argv = ctl_req_argv(req);
    if (d->stopping) {
        ctl_reply_error(req, "the daemon is stopping");
        return;
    }
    if (strcmp(argv[0], "status") == 0) {
        if (argc >= 2 && strcmp(argv[1], "text") == 0) {
            ctl_status_text(d, req);
        } else {
            ctl_status(d, req);
        }
        return;
    }
    if (strcmp(argv[0], "sync") == 0) {
        ctl_sync(d, req, argc, argv);
        return;
    }
    if (strcmp(argv[0], "reload") == 0) {
        ctl_reload(d, req);
        return;
    }
    if (strcmp(argv[0], "recheck") == 0) {
        /* What a suspend or a network change does, on request (after
         * fixing a VPN, say). */
        all_accounts_recheck(d, "asked on the control socket", false);
        ctl_reply(req, "{\"ok\":true}");
        return;
    }
    bool pause = strcmp(argv[0], "pause") == 0, resume = strcmp(argv[0], "resume") == 0,
         retry = strcmp(argv[0], "retry") == 0;
    if (!pause && !resume && !retry) {
        ctl_reply_error(
            req, "unknown request '%s' (status, sync, pause, resume, retry, recheck, reload)",
            argv[0]);
        return;
    }
    if (argc != 2) {
        ctl_reply_error(req, "usage: %s ACCOUNT", argv[0]);
        return;
    }
    struct dacct *a = find_acct(d, argv[1]);
    if (a == NULL) {
        ctl_reply_error(req, "no account named '%s'", argv[1]);
        return;
    }
    if (pause) {
        a->paused = true;
        watch_stop(a);
        fs_unwatch_all(a);
        uv_timer_stop(&a->poll_timer);
        uv_timer_stop(&a->retry_timer);
        if (a->run != NULL) {
            engine_close(a->run);
        } else if (a->pop == NULL) {
            acct_state(a, SUP_PAUSED, NULL);
        }
    } else {
        a->paused = false;
        acct_retry(a);
    }
    struct sbuf sb = {0};
    sbuf_adds(&sb, "{\"ok\":true,\"account\":");
    sbuf_add_json(&sb, a->ca->name);
    sbuf_adds(&sb, ",\"state\":");
    sbuf_add_json(&sb, sup_name(a->sup.state));
    sbuf_addc(&sb, '}');
    ctl_reply(req, sb.buf);
    sbuf_free(&sb);
}

static void on_ctl_gone(struct ctl_req *req, void *arg)
{
    /* The client left: drop its waiter, answering it frees the request. */
    struct daemon *d = arg;
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        for (size_t k = 0; k < a->nwaiters; k++) {
            if (a->waiters[k].req == req) {
                ctl_reply(req, "{}");
                free(a->waiters[k].folder);
                memmove(&a->waiters[k], &a->waiters[k + 1],
                        (a->nwaiters - k - 1) * sizeof(*a->waiters));
                a->nwaiters--;
                return;
            }
        }
    }
}

/* ---- stopping ------------------------------------------------------------------------------- */

static void on_acct_timer_closed(uv_handle_t *h)
{
    struct dacct *a = h->data;
    a->open_handles--;
    acct_maybe_done(a);
}

static void on_hook_closed(void *arg)
{
    struct dacct *a = arg;
    a->open_handles--;
    acct_maybe_done(a);
}

static void acct_free(struct dacct *a);

/* A retired account has stopped: it goes, and its successor starts. */
static void retire_done(struct dacct *a)
{
    struct daemon *d = a->d;
    for (size_t i = 0; i < d->nretired; i++) {
        if (d->retired[i] == a) {
            d->retired[i] = d->retired[--d->nretired];
            break;
        }
    }
    struct dacct *next = a->successor;
    log_info("%s: stopped (reload)", a->ca->name);
    acct_free(a);
    if (next != NULL && next->start_pending && !d->stopping) {
        next->start_pending = false;
        acct_start(next);
    }
    daemon_maybe_done(d);
}

/* An account is done stopping when its session and handles are gone. */
static void acct_maybe_done(struct dacct *a)
{
    struct daemon *d = a->d;
    if (!acct_ending(a) || a->run != NULL || a->pop != NULL || a->open_handles > 0) {
        return;
    }
    if (a->retiring) {
        retire_done(a);
        return;
    }
    daemon_maybe_done(d);
}

static void acct_stop(struct dacct *a)
{
    watch_stop(a);
    fs_unwatch_all(a);
    uv_timer_t *timers[3 + WATCH_MAX] = {&a->retry_timer, &a->poll_timer, &a->local_timer};
    size_t ntimers = 3;
    for (unsigned i = 0; i < a->nw; i++) {
        a->w[i]->timer.data = a; /* stopped: on_acct_timer_closed reads it */
        timers[ntimers++] = &a->w[i]->timer;
    }
    for (size_t i = 0; i < ntimers; i++) {
        uv_timer_stop(timers[i]);
        a->open_handles++;
        uv_close((uv_handle_t *)timers[i], on_acct_timer_closed);
    }
    if (a->hook != NULL) {
        a->open_handles++;
        hook_close(a->hook, 2000, on_hook_closed, a);
        a->hook = NULL;
    }
    if (a->run != NULL) {
        /* An idle session logs out; a busy one stops at the next safe
         * point: what is written is kept and recorded, nothing half-done
         * is left behind. */
        engine_close(a->run);
        engine_cancel(a->run);
    }
    if (a->pop != NULL) {
        popsync_cancel(a->pop);
    }
    acct_maybe_done(a);
}

static bool all_done(struct daemon *d)
{
    if (d->nretired > 0) {
        return false;
    }
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        if (a->run != NULL || a->pop != NULL || a->open_handles > 0) {
            return false;
        }
    }
    return true;
}

static void daemon_maybe_done(struct daemon *d)
{
    if (!d->stopping || !all_done(d)) {
        return;
    }
    uv_timer_stop(&d->stop_timer);
    uv_close((uv_handle_t *)&d->stop_timer, NULL);
    uv_timer_stop(&d->trim_timer);
    uv_close((uv_handle_t *)&d->trim_timer, NULL);
    if (d->ctl != NULL) {
        ctl_server_close(d->ctl);
        d->ctl = NULL;
    }
    if (d->wd != NULL) {
        sdn_watchdog_stop(d->wd);
        d->wd = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&d->sig_term)) {
        uv_close((uv_handle_t *)&d->sig_term, NULL);
        uv_close((uv_handle_t *)&d->sig_int, NULL);
        uv_close((uv_handle_t *)&d->sig_hup, NULL);
    }
    log_info("stopped");
}

static void on_stop_deadline(uv_timer_t *t)
{
    struct daemon *d = t->data;
    log_error("sessions did not end within %d s; exiting anyway (the index and the Maildir "
              "are consistent at every step; the next start finishes)",
              STOP_DEADLINE_MS / 1000);
    d->exit_code = 1;
    uv_stop(&d->loop);
}

static void daemon_stop(struct daemon *d, const char *why)
{
    if (d->stopping) {
        return;
    }
    d->stopping = true;
    log_info("stopping (%s)", why);
    sdn_stopping();
    if (d->wake != NULL) {
        wake_close(d->wake);
        d->wake = NULL;
    }
    uv_timer_start(&d->stop_timer, on_stop_deadline, STOP_DEADLINE_MS, 0);
    for (size_t i = 0; i < d->naccts; i++) {
        acct_stop(d->accts[i]);
    }
    daemon_maybe_done(d);
}

/* After a suspend or a network change every connection may be dead
 * without knowing it yet (no RST reached us): the watcher is reopened at
 * once, every session starts a new pass (one stuck on a dead connection
 * gives up after the LOGOUT deadline), and a back-off is cut short. */
/* A watcher that idles is probed: DONE, answered within
 * IMAP_QUICK_REPLY_MS by a live server (then IDLE again), or the
 * connection is failed and reopened. One that does not idle (connecting,
 * backing off) is started at once. */
static void watch_probe(struct dacct *a)
{
    for (unsigned k = 0; k < a->nw; k++) {
        struct watcher *w = a->w[k];
        w->backoff_ms = 0;
        if (w->im != NULL && w->idling) {
            imap_idle_stop(w->im);
        } else if (w->im == NULL && w->wait == NULL && uv_is_active((uv_handle_t *)&w->timer)) {
            w_start(w);
        }
    }
}

/* After a suspend (reopen: connections that slept through a server's
 * timeouts are presumed dead) or a network change, `recheck` on the
 * control socket (probe: the live ones are kept): every account's
 * watchers reopened or probed, and a new pass, which logs the sync session
 * in again and looks at every folder. */
static void all_accounts_recheck(struct daemon *d, const char *why, bool reopen)
{
    if (d->stopping) {
        return;
    }
    log_info("%s: checking every account (%s)", why,
             reopen ? "every connection reopened" : "watchers probed");
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        if (a->paused || a->sup.state == SUP_FAILED_AUTH) {
            continue;
        }
        if (a->imap) {
            bool had_watch = watch_any(a) || a->watch_budget < WATCH_MAX;
            bool over_budget = a->watch_budget < WATCH_MAX;
            a->watch_budget = WATCH_MAX; /* the limit may have changed */
            a->watch_budget_noted = false;
            if (reopen) {
                watch_stop(a);
                for (unsigned k = 0; k < a->nw; k++) {
                    a->w[k]->backoff_ms = 0;
                }
                if (had_watch && a->run_idle) {
                    watch_start(a);
                }
            } else {
                watch_probe(a);
                if (over_budget && a->run_idle) {
                    watch_start(a); /* the watchers the limit kept out, again */
                }
            }
            acct_new_pass(a);
        } else if (a->pop == NULL) {
            uv_timer_stop(&a->poll_timer);
            acct_start(a);
        }
    }
}

static void on_sleep(struct wake *w, uint64_t slept_ms, void *arg)
{
    (void)w;
    char why[64];
    snprintf(why, sizeof(why), "the machine slept for %.0f s", (double)slept_ms / 1000.0);
    all_accounts_recheck(arg, why, true);
}

static void on_net_change(struct wake *w, void *arg)
{
    (void)w;
    all_accounts_recheck(arg, "the network changed", false);
}

static struct dacct *acct_new(struct daemon *d, const struct cfg_account *ca);

/* What a reload compares: the account as `check` shows it, plus the
 * password it redacts. */
static char *acct_fingerprint(const struct cfg_account *ca)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    if (fp == NULL) {
        return xstrdup("");
    }
    cfg_print_account(fp, ca);
    fprintf(fp, "password=%s\n", ca->password != NULL ? ca->password : "");
    fclose(fp);
    return buf;
}

static bool acct_same(const struct cfg_account *a, const struct cfg_account *b)
{
    char *fa = acct_fingerprint(a), *fb = acct_fingerprint(b);
    bool same = strcmp(fa, fb) == 0;
    explicit_bzero(fa, strlen(fa));
    explicit_bzero(fb, strlen(fb));
    free(fa);
    free(fb);
    return same;
}

static void acct_retire(struct dacct *a, struct dacct *successor)
{
    struct daemon *d = a->d;
    a->retiring = true;
    a->successor = successor;
    xgrow(&d->retired, &d->retired_cap, d->nretired + 1, sizeof(*d->retired));
    d->retired[d->nretired++] = a;
    acct_stop(a);
}

/* What a reload did, for the control socket's answer. */
struct reload_counts {
    unsigned added, changed, removed, kept;
};

/* Reads the configuration file again and applies it (SIGHUP, or `reload` on
 * the control socket): accounts added start, removed ones stop cleanly,
 * changed ones restart, unchanged ones keep their connections. On failure the running configuration
 * stays, the reason is logged and returned in *err_r (allocated) and -1 returned. */
static int daemon_reload(struct daemon *d, struct reload_counts *rc_r, char **err_r)
{
    *err_r = NULL;
    if (d->stopping) {
        *err_r = xstrdup("the daemon is stopping");
        return -1;
    }
    sdn_reloading();
    struct cfg *n = NULL;
    char *err = NULL;
    if (cfg_load(d->cfg->path, &n, &err) < 0) {
        *err_r = xasprintf("%s; the running configuration stays",
                           err != NULL ? err : "the configuration could not be read");
        log_error("reload: %s", *err_r);
        free(err);
        sdn_ready();
        return -1;
    }
    if (strcmp(n->state_dir, d->cfg->state_dir) != 0) {
        *err_r = xasprintf("state_dir changed (%s -> %s): restart the daemon for that; the "
                           "running configuration stays",
                           d->cfg->state_dir, n->state_dir);
        log_error("reload: %s", *err_r);
        cfg_free(n);
        sdn_ready();
        return -1;
    }
    struct dacct **next = xcalloc(n->naccounts + 1, sizeof(*next));
    unsigned added = 0, changed = 0, kept = 0, removed = 0;
    for (size_t i = 0; i < n->naccounts; i++) {
        const struct cfg_account *ca = &n->accounts[i];
        struct dacct *old = NULL;
        for (size_t k = 0; k < d->naccts; k++) {
            if (d->accts[k] != NULL && strcmp(d->accts[k]->ca->name, ca->name) == 0) {
                old = d->accts[k];
                d->accts[k] = NULL;
                break;
            }
        }
        if (old != NULL && acct_same(old->ca, ca)) {
            old->ca = ca; /* the same values, in the new configuration */
            old->sup.account = ca->name;
            next[i] = old;
            kept++;
            if (old->sup.state == SUP_FAILED_AUTH) {
                /* The password may have changed outside the file (a
                 * password manager): a reload is a reason to try again. */
                acct_retry(old);
            }
            continue;
        }
        struct cfg *keep = d->cfg;
        d->cfg = n; /* acct_new reads the new configuration */
        next[i] = acct_new(d, ca);
        d->cfg = keep;
        if (old != NULL) {
            next[i]->start_pending = true;
            acct_retire(old, next[i]);
            changed++;
        } else {
            added++;
        }
    }
    for (size_t k = 0; k < d->naccts; k++) {
        if (d->accts[k] != NULL) {
            acct_retire(d->accts[k], NULL);
            removed++;
        }
    }
    free(d->accts);
    d->accts = next;
    d->naccts = n->naccounts;
    d->old_cfgs = xrealloc(d->old_cfgs, (d->nold_cfgs + 1) * sizeof(*d->old_cfgs));
    d->old_cfgs[d->nold_cfgs++] = d->cfg;
    d->cfg = n;
    log_info("reloaded %s: %u added, %u changed, %u removed, %u unchanged", n->path, added, changed,
             removed, kept);
    for (size_t i = 0; i < d->naccts; i++) {
        struct dacct *a = d->accts[i];
        if (!a->start_pending && a->run == NULL && a->pop == NULL &&
            a->sup.state == SUP_DISCONNECTED) {
            acct_start(a);
        }
    }
    sdn_ready();
    status_line(d);
    if (rc_r != NULL) {
        *rc_r = (struct reload_counts){added, changed, removed, kept};
    }
    return 0;
}

/* `reload`: what SIGHUP does, answered with what changed or why nothing
 * did (a broken file names its line), so `mailsync ctl reload` can exit 1. */
static void ctl_reload(struct daemon *d, struct ctl_req *req)
{
    struct reload_counts rc = {0};
    char *err = NULL;
    if (daemon_reload(d, &rc, &err) < 0) {
        ctl_reply_error(req, "reload: %s", err);
        free(err);
        return;
    }
    char buf[160];
    snprintf(buf, sizeof(buf),
             "{\"ok\":true,\"added\":%u,\"changed\":%u,\"removed\":%u,\"unchanged\":%u}", rc.added,
             rc.changed, rc.removed, rc.kept);
    ctl_reply(req, buf);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    char *err = NULL;
    (void)daemon_reload(h->data, NULL, &err); /* logged there */
    free(err);
}

static void on_signal(uv_signal_t *h, int signum)
{
    daemon_stop(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- start ---------------------------------------------------------------------------------- */

static struct dacct *acct_new(struct daemon *d, const struct cfg_account *ca)
{
    struct dacct *a = xcalloc(1, sizeof(*a));
    a->d = d;
    a->ca = ca;
    a->sa = syncopts_account(d->cfg, ca);
    a->account = account_new(&d->loop, a->sa, true);
    a->sup.account = ca->name;
    a->imap = ca->protocol == CFG_PROTO_IMAP;
    uv_timer_t *timers[] = {&a->retry_timer, &a->poll_timer, &a->local_timer};
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++) {
        uv_timer_init(&d->loop, timers[i]);
        timers[i]->data = a;
    }
    a->watch_budget = WATCH_MAX;
    static const char *const inbox_only[] = {"INBOX", NULL};
    const char *const *idle = ca->idle != NULL ? (const char *const *)ca->idle : inbox_only;
    for (unsigned i = 0; a->imap && idle[i] != NULL && i < WATCH_MAX; i++) {
        struct watcher *w = xcalloc(1, sizeof(*w));
        w->a = a;
        w->slot = i;
        w->folder = xstrdup(idle[i]);
        w->name =
            i == 0 ? xasprintf("%s/watch", ca->name) : xasprintf("%s/watch%u", ca->name, i + 1);
        uv_timer_init(&d->loop, &w->timer);
        w->timer.data = w;
        a->w[a->nw++] = w;
    }
    if (ca->on_new_mail != NULL) {
        struct hook_opts ho = {.account = ca->name, .argv = (const char *const *)ca->on_new_mail};
        if (hook_new(&d->loop, &ho, &a->hook) < 0) {
            a->hook = NULL;
        }
    }
    return a;
}

static void acct_free(struct dacct *a)
{
    waiters_fail_all(a, "the daemon stopped", true);
    free(a->waiters);
    free(a->fsw);
    announced_clear(a);
    free(a->announced);
    free(a->pass_error);
    free(a->last_error);
    for (unsigned i = 0; i < a->nw; i++) {
        free(a->w[i]->folder);
        free(a->w[i]->name);
        free(a->w[i]);
    }
    account_free(a->account);
    free(a);
}

int daemon_run(struct cfg *cfg)
{
    /* One malloc arena for every thread: the pool threads' own arenas
     * (four, of up to a megabyte each after a day of pushes) are memory the
     * trim cannot give back, and the threads allocate too little for the
     * shared arena's lock to matter. */
    mallopt(M_ARENA_MAX, 1);
    /* The folder jobs' own changes to new/ and cur/ are told apart from
     * other programs' (on_fs_event). */
    md_echo_enable(true);
    struct daemon d = {.cfg = cfg};
    char *err = NULL;
    pid_t holder = 0;
    if (pidlock_take(cfg->state_dir, &d.lock, &holder, &err) < 0) {
        log_error("%s", err != NULL ? err : "cannot take the daemon lock");
        free(err);
        return 1;
    }
    if (uv_loop_init(&d.loop) != 0) {
        log_error("cannot initialise the event loop");
        pidlock_release(d.lock);
        return 1;
    }
    char path[CTL_PATH_MAX];
    if (ctl_socket_path(cfg->state_dir, path, sizeof(path)) < 0) {
        log_error("the control socket path under %s is too long for a socket", cfg->state_dir);
        uv_loop_close(&d.loop);
        pidlock_release(d.lock);
        return 1;
    }
    struct ctl_opts co = {.on_gone = on_ctl_gone};
    if (ctl_server_start(&d.loop, path, &co, on_ctl, &d, &d.ctl, &err) < 0) {
        log_error("%s", err != NULL ? err : "cannot start the control socket");
        free(err);
        uv_run(&d.loop, UV_RUN_NOWAIT);
        uv_loop_close(&d.loop);
        pidlock_release(d.lock);
        return 1;
    }
    srand((unsigned)(time(NULL) ^ getpid()));
    uv_signal_init(&d.loop, &d.sig_term);
    uv_signal_init(&d.loop, &d.sig_int);
    d.sig_term.data = d.sig_int.data = &d;
    uv_signal_start(&d.sig_term, on_signal, SIGTERM);
    uv_signal_start(&d.sig_int, on_signal, SIGINT);
    uv_signal_init(&d.loop, &d.sig_hup);
    d.sig_hup.data = &d;
    uv_signal_start(&d.sig_hup, on_sighup, SIGHUP);
    uv_timer_init(&d.loop, &d.stop_timer);
    d.stop_timer.data = &d;
    uv_timer_init(&d.loop, &d.trim_timer);
    d.naccts = cfg->naccounts;
    d.accts = xcalloc(d.naccts + 1, sizeof(*d.accts));
    for (size_t i = 0; i < d.naccts; i++) {
        d.accts[i] = acct_new(&d, &cfg->accounts[i]);
    }
    for (size_t i = 0; i < d.naccts; i++) {
        acct_start(d.accts[i]);
    }
    log_info("running: %zu account%s, control socket %s", d.naccts, d.naccts == 1 ? "" : "s", path);
    struct wake_opts wo = {.net = WAKE_NET_NETLINK};
    struct wake_cb wc = {.on_sleep = on_sleep, .on_net_change = on_net_change};
    if (wake_start(&d.loop, &wo, &wc, &d, &d.wake) < 0) {
        /* Netlink refused (some sandboxes): sleep detection alone. */
        log_debug("network changes cannot be watched here; sleep detection only");
        wo.net = WAKE_NET_NONE;
        if (wake_start(&d.loop, &wo, &wc, &d, &d.wake) < 0) {
            d.wake = NULL;
        }
    }
    sdn_watchdog_start(&d.loop, &d.wd);
    sdn_ready();
    status_line(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    if (d.exit_code != 0) {
        /* The stop deadline passed with handles still open: nothing is
         * freed under them (the index and the Maildir are consistent at
         * every step; the operating system closes the rest). */
        pidlock_release(d.lock);
        return d.exit_code;
    }
    /* Close callbacks still pending after the last handle closed. */
    uv_run(&d.loop, UV_RUN_NOWAIT);
    for (size_t i = 0; i < d.naccts; i++) {
        acct_free(d.accts[i]);
    }
    free(d.accts);
    for (size_t i = 0; i < d.nretired; i++) {
        acct_free(d.retired[i]); /* only after a forced exit */
    }
    free(d.retired);
    /* The caller's configuration is the caller's to free; those read by
     * reloads are ours. */
    for (size_t i = 0; i < d.nold_cfgs; i++) {
        if (d.old_cfgs[i] != cfg) {
            cfg_free(d.old_cfgs[i]);
        }
    }
    free(d.old_cfgs);
    if (d.cfg != cfg) {
        cfg_free(d.cfg);
    }
    if (uv_loop_close(&d.loop) != 0) {
        log_warnx("event loop did not close cleanly");
    }
    pidlock_release(d.lock);
    return d.exit_code;
}
