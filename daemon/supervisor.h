/* Where an account's connection is: the supervisor state shared by the
 * run-once policy of `mailsync sync` (daemon/syncrun.c) and the always-on
 * policy of `mailsync daemon` (daemon/daemon.c). Every change goes through
 * sup_set, which logs it ("ACCOUNT: state X -> Y: why", at -v), so a log
 * reads as the account's history. The model is OpenSMTPD's smtp_client.c:
 * one enum, one name table, one transition function. */
#ifndef MAILSYNC_SUPERVISOR_H
#define MAILSYNC_SUPERVISOR_H

#include "sync/engine.h"
#include "sync/result.h"

enum sup_state {
    SUP_DISCONNECTED = 0,
    SUP_CONNECTING,
    SUP_LISTING,
    SUP_SYNCING,
    SUP_IDLE,
    SUP_LOGGING_OUT,
    SUP_BACKING_OFF,
    SUP_FAILED_AUTH,
    SUP_PAUSED, /* daemon: stopped by the control command `pause` */
    SUP_COUNT,
};

struct sup {
    const char *account; /* for log lines; borrowed */
    enum sup_state state;
};

const char *sup_name(enum sup_state s);
/* Moves to `to` (nothing when already there) and logs it; why may be NULL. */
void sup_set(struct sup *s, enum sup_state to, const char *why);
/* The state an engine phase means. */
enum sup_state sup_from_phase(enum engine_phase p);

#endif
