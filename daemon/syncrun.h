/* `mailsync sync`: one pass over the selected accounts, all of them running
 * at once on one loop (as the daemon will), a summary line per account, and
 * an exit status for scripts. */
#ifndef MAILSYNC_SYNCRUN_H
#define MAILSYNC_SYNCRUN_H

#include <stdbool.h>

#include "daemon/config.h"

struct syncrun_opts {
    bool dry_run;
    bool force;
    bool quiet;    /* no progress display, no summaries (errors still shown) */
    bool progress; /* progress display on the terminal */
};

/* accounts: names to sync (all when count is 0; every name must exist).
 * Returns 0 when every account succeeded, 75 (EX_TEMPFAIL) when every
 * failure was transient (try again later), 1 otherwise. */
int syncrun(const struct cfg *cfg, char *const *accounts, int count,
            const struct syncrun_opts *opts);

#endif
