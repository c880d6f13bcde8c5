#include "sync/account.h"

#include <string.h>

void account_net_opts(const struct cfg_account *acct, struct net_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    o_r->host = acct->host;
    o_r->port = acct->port;
    switch (acct->tls) {
    case CFG_TLS_IMPLICIT:
        o_r->tls = NET_TLS_IMPLICIT;
        break;
    case CFG_TLS_STARTTLS:
        o_r->tls = NET_TLS_LATER;
        break;
    case CFG_TLS_NONE:
        o_r->tls = NET_TLS_NONE;
        break;
    }
    o_r->ca_file = acct->ca_file;
    o_r->fingerprint = acct->tls_fingerprint;
    o_r->connect_timeout_ms = acct->timeout_seconds * 1000u;
    o_r->idle_timeout_ms = acct->timeout_seconds * 1000u;
}

void account_imap_opts(const struct cfg_account *acct, const char *secret, struct imap_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    account_net_opts(acct, &o_r->net);
    o_r->user = acct->user;
    o_r->secret = secret;
    switch (acct->auth) {
    case CFG_AUTH_PLAIN:
        o_r->auth = IMAP_AUTH_PLAIN;
        break;
    case CFG_AUTH_LOGIN:
        o_r->auth = IMAP_AUTH_LOGIN;
        break;
    case CFG_AUTH_XOAUTH2:
        o_r->auth = IMAP_AUTH_XOAUTH2;
        break;
    case CFG_AUTH_OAUTHBEARER:
        o_r->auth = IMAP_AUTH_OAUTHBEARER;
        break;
    case CFG_AUTH_AUTO:
    case CFG_AUTH_APOP:
        o_r->auth = IMAP_AUTH_AUTO;
        break;
    }
    o_r->allow_plaintext = acct->allow_plaintext;
    o_r->compress = acct->compress != CFG_COMPRESS_NEVER;
    o_r->compress_local = acct->compress == CFG_COMPRESS_ALWAYS;
    o_r->log_name = acct->name;
}

void account_pop3_opts(const struct cfg_account *acct, const char *secret, struct pop3_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    account_net_opts(acct, &o_r->net);
    o_r->user = acct->user;
    o_r->secret = secret;
    switch (acct->auth) {
    case CFG_AUTH_PLAIN:
        o_r->auth = POP3_AUTH_PLAIN;
        break;
    case CFG_AUTH_LOGIN:
        o_r->auth = POP3_AUTH_USER;
        break;
    case CFG_AUTH_XOAUTH2:
        o_r->auth = POP3_AUTH_XOAUTH2;
        break;
    case CFG_AUTH_OAUTHBEARER:
        o_r->auth = POP3_AUTH_OAUTHBEARER;
        break;
    case CFG_AUTH_APOP:
        o_r->auth = POP3_AUTH_APOP;
        break;
    case CFG_AUTH_AUTO:
        o_r->auth = POP3_AUTH_AUTO;
        break;
    }
    o_r->allow_plaintext = acct->allow_plaintext;
    o_r->log_name = acct->name;
}
