/* `mailsync mailboxes [--named] [ACCOUNT...]`: the neomutt (or mutt)
 * commands that declare every folder of the accounts' Maildirs, for
 * `source "mailsync mailboxes|"` in a muttrc.
 *
 * A folder is listed when its directory exists (a Maildir with cur/, new/
 * and tmp/) and the account's `folders` patterns select it: what the next
 * sync keeps in step with the server. POP3 accounts have INBOX only. Each
 * account's folders come INBOX first, then in name order; paths are
 * absolute, so the output does not depend on neomutt's $folder.
 *
 * Quoting follows neomutt's and mutt's muttrc parser: single quotes keep
 * every byte as it is (spaces, '"', '\', '$', '`', non-ASCII), so they are
 * used unless the text holds a single quote itself; then double quotes,
 * with '"', '\', '$' and '`' escaped by a backslash and control
 * characters written as \n, \t, \r or three octal digits. */
#ifndef MAILSYNC_MAILBOXES_H
#define MAILSYNC_MAILBOXES_H

#include <stdbool.h>
#include <stdio.h>

#include "daemon/config.h"

/* accounts: the names to list (all accounts when count is 0; every name
 * must exist). named: `named-mailboxes "ACCOUNT/FOLDER" PATH` lines instead
 * of `mailboxes PATH`. A Maildir that cannot be read is reported on stderr
 * (one that does not exist yet only when warn_missing). Returns 0, or 1
 * when a Maildir could not be read. */
int mailboxes_run(const struct cfg *cfg, char *const *accounts, int count, bool named,
                  bool warn_missing, FILE *out);

/* s quoted as one muttrc word (see above). Caller frees. */
char *mailboxes_quote(const char *s);

#endif
