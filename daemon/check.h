/* `mailsync check --connect`: for each account, get the secret, connect,
 * verify TLS, log in, and print what the server offers (capabilities and
 * folders for IMAP, capabilities and mailbox size for POP3), or the precise
 * reason it could not: every failure is turned into its cause and the fix,
 * specific to the account's provider where one is set (the hints in
 * contrib/providers.yaml), using the server's response code and text.
 * Runs its own loop to completion; never prints the password.
 *
 * JSON (json = true) gives the same findings for scripts, one object per
 * account:
 *   {"account": NAME, "protocol": "imap"|"pop3", "provider": NAME|null,
 *    "host": H, "port": N, "tls": MODE, "ok": BOOL,
 *    "connected": BOOL, "logged_in": BOOL,
 *    "tls_version": S|null, "fingerprint": "sha256:..."|null,
 *    "capabilities": [S...], "folders": N|null (IMAP), "selected": N|null,
 *    "messages": N|null (POP3),
 *    "problems": [{"kind": K, "severity": "error"|"warning",
 *                  "message": S, "cause": S, "fix": [S...]}]}
 * where K is one of the kinds in check_kind_name(); check_run wraps them as
 * {"ok": BOOL, "accounts": [...]}. */
#ifndef MAILSYNC_CHECK_H
#define MAILSYNC_CHECK_H

#include <stdbool.h>
#include <stdio.h>

#include "daemon/config.h"

/* accounts: the names to check (all accounts when count is 0). Returns 0
 * when every account connected and logged in, 1 otherwise. */
int check_run(const struct cfg *cfg, char *const *accounts, int count, bool json, FILE *out);

/* check_run in text form. */
int check_connect(const struct cfg *cfg, char *const *accounts, int count, FILE *out);

/* One account, for callers that just wrote it (`mailsync init`): the same
 * report as check_run gives for it (json: the account's object alone).
 * Returns 0 when it connected and logged in, 1 otherwise. */
int check_account_connect(const struct cfg *cfg, const struct cfg_account *a, bool json, FILE *out);

#endif
