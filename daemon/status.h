/* `mailsync status`: what mailsync knows of each account, read from the
 * configuration and the account's index alone. No network, no account lock
 * (a running sync is not disturbed and does not block it), and nothing is
 * created: an account never synced is reported as such. The JSON form is
 * described at the top of daemon/status.c. */
#ifndef MAILSYNC_STATUS_H
#define MAILSYNC_STATUS_H

#include <stdbool.h>
#include <stdio.h>

#include "daemon/config.h"

/* accounts: the names to show (all accounts when count is 0; every name
 * must exist). Writes the report to out, human-readable or as one JSON
 * object; an index that cannot be read is reported on stderr (and in the
 * account's "error" in JSON). Returns 0 when every selected account could
 * be read (never synced included), 1 otherwise. */
int status_run(const struct cfg *cfg, char *const *accounts, int count, bool json, FILE *out);

#endif
