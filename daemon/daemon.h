/* `mailsync daemon`: every configured account on one libuv loop, kept in
 * sync as changes happen, until SIGTERM or SIGINT.
 *
 * Per IMAP account (an account object of sync/account.h, which keeps the
 * index, the lock and the secret for the daemon's life):
 * - a sync session (a stay_open engine run): its first pass lists and
 *   syncs every selected folder, then it stays logged in and syncs one
 *   folder at a time when asked;
 * - a watcher connection, kept apart from the sync session so that no
 *   change is missed while a sync runs: IDLE on INBOX (EXAMINE, never
 *   changing anything), re-issued every idle_restart seconds; what it
 *   announces is synced at once on the sync session;
 * - inotify (uv_fs_event) on every synced folder's new/ and cur/ and on
 *   the Maildir root: local changes are coalesced for local_delay seconds,
 *   then that folder alone is synced (a new local folder starts a new
 *   pass);
 * - every poll_interval seconds a new pass (LIST-STATUS tells which
 *   folders changed; the others are not selected), which catches changes
 *   in folders the watcher does not watch;
 * - a dropped connection or a server that went away: the session ends and
 *   a new one starts after a back-off (1 s doubling to 5 min, with
 *   jitter); a refused login stops the account in "failed (auth)" until
 *   `retry` (no retries that could lock the account).
 * POP3 accounts are polled every poll_interval (default 15 min).
 *
 * After a suspend (CLOCK_BOOTTIME gaining on CLOCK_MONOTONIC) or a network
 * change (netlink), every account is checked again: the watcher reopened,
 * a new pass started, a back-off cut short (daemon/wake.h).
 *
 * The control socket (daemon/control.h) answers `status`, `sync [ACCOUNT
 * [FOLDER]]`, `pause ACCOUNT`, `resume ACCOUNT`, `retry ACCOUNT` and
 * `recheck` (what a network change does). Under
 * systemd (Type=notify) it sends READY=1 once the accounts are started,
 * STATUS= lines, WATCHDOG=1 from the loop and STOPPING=1. One daemon per
 * state_dir (daemon/pidlock.h). */
#ifndef MAILSYNC_DAEMON_H
#define MAILSYNC_DAEMON_H

#include "daemon/config.h"

/* Runs until stopped. SIGHUP reads cfg->path again: accounts added start,
 * removed ones stop cleanly, changed ones restart, unchanged ones keep
 * their connections; a file that does not load changes nothing (the error
 * is logged). cfg stays the caller's. Returns the exit status: 0 after
 * SIGTERM/SIGINT, 1 when it cannot start (another daemon, the control
 * socket). */
int daemon_run(struct cfg *cfg);

#endif
