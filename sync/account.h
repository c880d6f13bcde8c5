/* Maps a configured account onto the option structs of the protocol
 * clients, so that `check --connect`, `sync` and the daemon connect the same
 * way. The structs point into acct (and into secret for the IMAP options):
 * they are valid as long as those are. */
#ifndef MAILSYNC_SYNC_ACCOUNT_H
#define MAILSYNC_SYNC_ACCOUNT_H

#include "daemon/config.h"
#include "sync/imap.h"
#include "sync/net.h"
#include "sync/pop3.h"

void account_net_opts(const struct cfg_account *acct, struct net_opts *o_r);
void account_imap_opts(const struct cfg_account *acct, const char *secret, struct imap_opts *o_r);
void account_pop3_opts(const struct cfg_account *acct, const char *secret, struct pop3_opts *o_r);

#endif
