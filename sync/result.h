/* How a sync run ended, the same for the IMAP and the POP3 engine.
 *
 * The kind says what it takes to recover, which is what a caller acts on:
 * retry later, ask for new credentials, or tell the user. The one-line text
 * of the error travels beside it in each engine's result. */
#ifndef MAILSYNC_RESULT_H
#define MAILSYNC_RESULT_H

enum sync_kind {
    SYNC_OK = 0,
    /* Try again later: network, server busy ([IN-USE], [LOGIN-DELAY],
     * [SYS/TEMP]), account locked, disk full, cancelled. */
    SYNC_TRANSIENT,
    SYNC_AUTH, /* credentials refused */
    /* Needs the user: configuration, certificates, [SYS/PERM], disk, a
     * safety guard tripped. */
    SYNC_PERMANENT,
};

/* Exit statuses (sysexits.h values): EX_TEMPFAIL tells a scheduler (cron,
 * systemd) that running again later is all it takes; EX_NOPERM that the
 * credentials were refused. */
#define SYNC_EXIT_TEMPFAIL 75
#define SYNC_EXIT_NOPERM 77

/* "ok", "transient", "auth" or "permanent" (as printed in summaries and
 * error lines). */
const char *sync_kind_name(enum sync_kind k);

/* The exit status of a program that ran one account: 0, SYNC_EXIT_TEMPFAIL
 * for SYNC_TRANSIENT, SYNC_EXIT_NOPERM for SYNC_AUTH, 1 otherwise. */
int sync_kind_exit(enum sync_kind k);

#endif
