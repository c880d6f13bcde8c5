/* The systemd service notification protocol (sd_notify(3)), spoken
 * directly, without libsystemd.
 *
 * systemd passes NOTIFY_SOCKET to a Type=notify service: the path of a
 * Unix datagram socket, or an abstract socket name written with a leading
 * '@'. Each notification is one datagram of newline-separated VAR=VALUE
 * assignments. Every function here reads NOTIFY_SOCKET when it is called
 * and is a no-op returning 0 when it is unset or empty, so the daemon can
 * call them unconditionally (run by hand, from a terminal, in tests).
 *
 * Sending never blocks the loop: the socket is non-blocking and a
 * datagram systemd's queue has no room for is dropped with -EAGAIN.
 *
 * Errors: negative errno (-EAFNOSUPPORT for a NOTIFY_SOCKET that is
 * neither a path nor '@name', e.g. systemd's "vsock:" form; -ENAMETOOLONG
 * for one that does not fit a sockaddr_un). The caller decides whether to
 * log: a failed notification never stops the daemon.
 *
 * Child processes (hooks, password commands) must not inherit
 * NOTIFY_SOCKET or WATCHDOG_*: a child that notified would speak for the
 * daemon, and one that pinged the watchdog would hide a hung daemon.
 * child_env (core/util.h) builds their environment. */
#ifndef MAILSYNC_SDNOTIFY_H
#define MAILSYNC_SDNOTIFY_H

#include <stdint.h>
#include <uv.h>

/* Sends msg (e.g. "READY=1\nSTATUS=syncing") as one datagram. */
int sdn_notify(const char *msg);

/* READY=1: the configuration is loaded and the accounts are started. */
int sdn_ready(void);

/* STATUS=<text>: a one-line summary shown by `systemctl status`. Newlines
 * in the text are sent as spaces (a newline would start another
 * assignment). */
int sdn_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STOPPING=1: shutdown has begun. */
int sdn_stopping(void);

/* RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC in microseconds>, as
 * Type=notify-reload services send it (systemd 253 and later match the
 * timestamp; older ones ignore it). Send READY=1 when the reload is done. */
int sdn_reloading(void);

/* The watchdog: when systemd set WATCHDOG_USEC (WatchdogSec=) and
 * WATCHDOG_PID is unset or our pid, WATCHDOG=1 is sent every half
 * interval from a timer on the caller's loop, so the pings stop when the
 * loop hangs, which is the point: systemd then restarts the daemon.
 *
 * Returns 1 with *wd_r set when the watchdog runs; 0 with *wd_r NULL when
 * none is asked for (NOTIFY_SOCKET or WATCHDOG_USEC unset, or WATCHDOG_PID
 * names another process, e.g. the shell that started us); -EINVAL with
 * *wd_r NULL for a WATCHDOG_USEC or WATCHDOG_PID that is not a positive
 * number. The timer is unreferenced: it never keeps the loop alive alone.
 *
 * Ownership: sdn_watchdog_stop (exactly once, NULL allowed) stops the
 * pings at once and frees the timer from its close callback; the loop
 * then closes clean. */
struct sdn_watchdog;
int sdn_watchdog_start(uv_loop_t *loop, struct sdn_watchdog **wd_r);
/* The ping interval in microseconds (half of WATCHDOG_USEC). */
uint64_t sdn_watchdog_interval_usec(const struct sdn_watchdog *wd);
void sdn_watchdog_stop(struct sdn_watchdog *wd);

#endif
