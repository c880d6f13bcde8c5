/* `mailsync check --connect`: for each account, get the secret, connect,
 * verify TLS, log in, and print what the server offers (capabilities and
 * folders for IMAP, capabilities and mailbox size for POP3), or the precise
 * reason it could not. Runs its own loop to completion. */
#ifndef MAILSYNC_CHECK_H
#define MAILSYNC_CHECK_H

#include <stdio.h>

#include "daemon/config.h"

/* accounts: the names to check (all accounts when count is 0). Returns 0
 * when every account connected and logged in, 1 otherwise. */
int check_connect(const struct cfg *cfg, char *const *accounts, int count, FILE *out);

#endif
