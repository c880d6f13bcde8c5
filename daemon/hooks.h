/* The on_new_mail hook of one account: a command (argv, no shell) run on
 * the daemon's libuv loop after new mail is durable in the Maildir.
 *
 * Usage: hook_new once per account; hook_note(h, folder, n) each time n
 * new messages of a folder are durable (in their final place and fsynced);
 * hook_close when the account stops.
 *
 * Coalescing: the first note after a quiet spell starts a window of
 * delay_ms; every note within it joins the same run. The window is not
 * extended by later notes, so a steady trickle of mail still runs the
 * hook every delay_ms rather than never.
 *
 * One run at a time per account: notes that arrive while the command runs
 * are kept and give exactly one more run after it ends (at the end of its
 * own window, or at once when that has passed already).
 *
 * The command's environment is the daemon's, without NOTIFY_SOCKET,
 * WATCHDOG_USEC and WATCHDOG_PID (a hook must not be able to speak for the
 * daemon to systemd), plus:
 *   MAILSYNC_ACCOUNT  the account's name
 *   MAILSYNC_NEW      new messages since the last run, in decimal
 *   MAILSYNC_FOLDERS  the folders they are in, in the order first noted,
 *                     each once, separated by newlines (no newline after
 *                     the last). A backslash in a name is written "\\"
 *                     and a newline "\n" (backslash, n), so the list can
 *                     always be split on newlines; no folder name
 *                     mailsync syncs holds either in practice.
 * stdin is /dev/null. stdout and stderr share one pipe, so their lines
 * keep their order; each line goes to the log at the info level as
 * "ACCOUNT: on_new_mail: LINE", cut after max_line bytes (marked
 * "[cut]"). The command runs in a process group of its own (a session:
 * setsid), so a timeout stops what it started too.
 *
 * Timeout: a run still going after timeout_ms gets SIGTERM (its process
 * group does), and SIGKILL kill_after_ms later if it is still there.
 * A command that cannot be started (missing, not executable), that exits
 * with a status other than 0, or that is killed by a signal is logged as a
 * warning naming the account and the command; the next note runs it again.
 *
 * Ownership: hook_new returns a struct hook owned by the caller, who calls
 * hook_close exactly once; the memory goes once the child (if any) has
 * been reaped and every handle closed, and the loop then closes clean.
 * Callbacks come from the loop, never from inside a hook_* call. */
#ifndef MAILSYNC_HOOKS_H
#define MAILSYNC_HOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct hook;

/* How one run ended, for the owner's status and tests. */
struct hook_result {
    uint64_t n_new;      /* MAILSYNC_NEW of the run */
    int spawn_err;       /* 0, or the UV_* code of a command that never started */
    int64_t exit_status; /* when spawn_err == 0 and term_signal == 0 */
    int term_signal;     /* the signal that ended it, or 0 */
    bool timed_out;      /* it ran past timeout_ms and was stopped */
};

struct hook_opts {
    const char *account;     /* copied */
    const char *const *argv; /* NULL-terminated, copied; argv[0] searched in PATH */
    unsigned delay_ms;       /* coalescing window; 0 = 2 s */
    unsigned timeout_ms;     /* 0 = 60 s */
    unsigned kill_after_ms;  /* from SIGTERM to SIGKILL; 0 = 5 s */
    size_t max_line;         /* bytes of one output line logged; 0 = 1000 */
    /* Called when a run has ended and been logged; may be NULL. The owner
     * may call hook_note or hook_close from inside it. */
    void (*on_done)(struct hook *h, const struct hook_result *r, void *arg);
    void *arg;
};

/* Returns 0, or -EINVAL (no account, or no argv[0]). Nothing runs until
 * the first note. */
int hook_new(uv_loop_t *loop, const struct hook_opts *opts, struct hook **h_r);
/* n_new messages of folder are durable. n_new == 0 is ignored, as is any
 * note after hook_close. */
void hook_note(struct hook *h, const char *folder, unsigned n_new);
/* Whether the command is running now. */
bool hook_running(const struct hook *h);
/* Stops the hook: notes not yet run are dropped. A running command gets
 * grace_ms more (never more than its timeout left) to finish, then SIGTERM
 * and SIGKILL as for a timeout; grace_ms = 0 sends SIGTERM at once.
 * on_closed (may be NULL) is called from the loop once the child is
 * reaped and the memory is gone. */
void hook_close(struct hook *h, unsigned grace_ms, void (*on_closed)(void *arg), void *arg);

/* Hooks run with child_env (core/util.h): no NOTIFY_SOCKET or WATCHDOG_*. */

#endif
