/* The sync layer's own copy of an account's options (sync/options.h),
 * made from the configuration: the one place where the configuration's
 * names meet the sync layer's. */
#ifndef MAILSYNC_DAEMON_SYNCOPTS_H
#define MAILSYNC_DAEMON_SYNCOPTS_H

#include "daemon/config.h"
#include "sync/options.h"

/* A new struct sync_account (free with sync_account_free) holding copies
 * of every value it needs from cfg and a: nothing in it points into the
 * configuration. */
/* The store's name for a configured layout. */
enum md_layout syncopts_layout(enum cfg_layout l);

struct sync_account *syncopts_account(const struct cfg *cfg, const struct cfg_account *a);

#endif
